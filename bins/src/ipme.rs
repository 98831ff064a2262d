//! qmail's `ipme`: the addresses of this machine's interfaces, so remote
//! delivery never connects to itself as an MX (a mail loop). Read again
//! when a minute old, since interfaces come and go.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_AGE: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Ipme {
    cached: Mutex<Option<(Instant, Vec<IpAddr>)>>,
}

impl Ipme {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = matches!(&*cached, Some((at, _)) if at.elapsed() < MAX_AGE);
        if !fresh {
            *cached = Some((Instant::now(), interfaces()));
        }
        // qmail counts 0.0.0.0 as me: connecting to it reaches this host.
        ip.is_unspecified() || cached.as_ref().is_some_and(|(_, ips)| ips.contains(&ip))
    }
}

/// Every interface address (none when the system will not say: then only
/// the check against ourselves is lost, never a delivery).
fn interfaces() -> Vec<IpAddr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Vec::new();
    }
    let mut ips = Vec::new();
    let mut at = list;
    while !at.is_null() {
        // SAFETY: `at` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*at };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it names.
            match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    ips.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))));
                }
                libc::AF_INET6 => {
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    ips.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
        at = ifa.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_me_and_a_documentation_address_is_not() {
        let ipme = Ipme::default();
        assert!(ipme.contains("127.0.0.1".parse().unwrap()));
        assert!(ipme.contains("0.0.0.0".parse().unwrap()));
        assert!(!ipme.contains("192.0.2.77".parse().unwrap()));
    }
}
