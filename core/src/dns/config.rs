//! Which nameservers to ask and how patiently: `/etc/resolv.conf` as glibc
//! reads it, for the parts a mail sender needs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

const DNS_PORT: u16 = 53;
/// glibc's MAXNS: later `nameserver` lines are ignored.
const MAX_NAMESERVERS: usize = 3;
/// glibc's RES_MAXRETRANS (seconds) and RES_MAXRETRY: larger values are cut.
const MAX_TIMEOUT: u64 = 30;
const MAX_ATTEMPTS: u32 = 5;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverConfig {
    pub nameservers: Vec<SocketAddr>,
    /// How long one try waits for its answer (glibc: 5 s).
    pub timeout: Duration,
    /// Rounds over all the nameservers (glibc: 2).
    pub attempts: u32,
    /// Each lookup starts at the next nameserver instead of the first.
    pub rotate: bool,
}

impl Default for ResolverConfig {
    /// glibc without a resolv.conf: the local nameserver.
    fn default() -> Self {
        ResolverConfig::with_nameservers(vec![SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            DNS_PORT,
        )])
    }
}

impl ResolverConfig {
    /// These nameservers, with glibc's default patience (the `--dns`
    /// override).
    pub fn with_nameservers(nameservers: Vec<SocketAddr>) -> ResolverConfig {
        ResolverConfig {
            nameservers,
            timeout: Duration::from_secs(5),
            attempts: 2,
            rotate: false,
        }
    }

    /// Reads `nameserver` and `options` lines (`timeout:N`, `attempts:N`,
    /// `rotate`) as glibc does: a keyword starts its line, anything it does
    /// not understand is skipped, and no usable nameserver means
    /// 127.0.0.1. Link-local IPv6 with a `%zone` is skipped too.
    pub fn from_resolv_conf(text: &[u8]) -> ResolverConfig {
        let mut config = ResolverConfig::with_nameservers(Vec::new());
        for line in text.split(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(line);
            if !line.starts_with(|c: char| c.is_ascii_alphabetic()) {
                continue;
            }
            let mut words = line.split_ascii_whitespace();
            match words.next() {
                Some("nameserver") => {
                    let addr = words.next().and_then(|w| w.parse::<IpAddr>().ok());
                    if let Some(addr) = addr {
                        if config.nameservers.len() < MAX_NAMESERVERS {
                            config.nameservers.push(SocketAddr::new(addr, DNS_PORT));
                        }
                    }
                }
                Some("options") => words.for_each(|w| config.option(w)),
                _ => {}
            }
        }
        if config.nameservers.is_empty() {
            config.nameservers = ResolverConfig::default().nameservers;
        }
        config
    }

    fn option(&mut self, word: &str) {
        let number = |prefix| word.strip_prefix(prefix)?.parse::<u64>().ok();
        if word == "rotate" {
            self.rotate = true;
        } else if let Some(n) = number("timeout:") {
            self.timeout = Duration::from_secs(n.clamp(1, MAX_TIMEOUT));
        } else if let Some(n) = number("attempts:") {
            self.attempts = n.clamp(1, MAX_ATTEMPTS.into()) as u32;
        }
    }
}
