//! DNS lookups against a real nameserver: unbound on loopback serving a
//! static `test.` zone. Shared by both runtimes' tests (included with
//! `#[path]`), which pass their own `resolve`.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use sqmail_conformance::peers::Unbound;
use sqmail_core::dns::{Destination, Error, Query, Resolver, ResolverConfig};

pub type Resolve = fn(&Resolver, Query) -> Result<Vec<Destination>, Error>;

/// A records of `big.test`: their answer is over 512 bytes, so it comes
/// truncated over UDP (queries carry no EDNS) and whole only over TCP.
const BIG: u8 = 40;

fn zone() -> String {
    let mut data = String::from(
        "test. 3600 IN SOA ns.test. host.test. 1 3600 600 86400 60
mx.test. 300 IN MX 10 a.mx.test.
mx.test. 300 IN MX 10 b.mx.test.
mx.test. 300 IN MX 20 c.mx.test.
a.mx.test. 300 IN A 127.0.0.10
a.mx.test. 300 IN AAAA ::10
b.mx.test. 300 IN A 127.0.0.11
c.mx.test. 300 IN AAAA ::12
plain.test. 300 IN A 127.0.0.20
plain.test. 300 IN AAAA ::20
alias.test. 300 IN CNAME plain.test.
nullmx.test. 300 IN MX 0 .
bigmx.test. 300 IN MX 10 big.test.
",
    );
    for i in 0..BIG {
        writeln!(data, "big.test. 300 IN A 127.0.1.{i}").unwrap();
    }
    data
}

/// Starts unbound serving the test zone; None (after saying so) when it
/// is not installed.
fn start() -> Option<Unbound> {
    let records: Vec<String> = zone().lines().map(str::to_string).collect();
    Unbound::start("test.", &records)
}

pub fn resolver(server: SocketAddr, timeout: Duration, attempts: u32) -> Resolver {
    let mut config = ResolverConfig::with_nameservers(vec![server]);
    config.timeout = timeout;
    config.attempts = attempts;
    Resolver::new(config, 0x5eed)
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

/// Every case against unbound.
pub fn cases(resolve: Resolve) {
    let Some(unbound) = start() else {
        return;
    };
    let r = resolver(unbound.addr, Duration::from_secs(2), 2);

    let mx = resolve(&r, Query::Mx("MX.test.".into())).unwrap();
    let mut hosts: Vec<(&str, u16, Vec<IpAddr>)> = mx
        .iter()
        .map(|d| (&d.host[..], d.preference, d.addrs.clone()))
        .collect();
    assert_eq!(hosts[2], ("c.mx.test", 20, ips(&["::12"])));
    hosts[..2].sort();
    assert_eq!(hosts[0], ("a.mx.test", 10, ips(&["127.0.0.10", "::10"])));
    assert_eq!(hosts[1], ("b.mx.test", 10, ips(&["127.0.0.11"])));

    let plain = [Destination {
        host: "plain.test".into(),
        preference: 0,
        addrs: ips(&["127.0.0.20", "::20"]),
    }];
    assert_eq!(
        resolve(&r, Query::Mx("plain.test".into())),
        Ok(plain.to_vec())
    );
    assert_eq!(
        resolve(&r, Query::Host("plain.test".into())),
        Ok(plain.to_vec())
    );
    let alias = resolve(&r, Query::Host("alias.test".into())).unwrap();
    assert_eq!(
        (&alias[0].host[..], &alias[0].addrs),
        ("alias.test", &plain[0].addrs)
    );

    assert_eq!(
        resolve(&r, Query::Mx("nullmx.test".into())),
        Err(Error::NullMx)
    );
    assert_eq!(
        resolve(&r, Query::Mx("nowhere.test".into())),
        Err(Error::NotFound)
    );
    assert_eq!(
        resolve(&r, Query::Host("nowhere.test".into())),
        Err(Error::NotFound)
    );

    // All of them: only TCP carries more than a 512-byte UDP answer holds.
    for query in [
        Query::Host("big.test".into()),
        Query::Mx("bigmx.test".into()),
    ] {
        let big = resolve(&r, query).unwrap();
        assert_eq!(big.len(), 1);
        assert_eq!(big[0].addrs.len(), usize::from(BIG));
    }
}

/// A nameserver that never answers: a temporary failure once every try
/// timed out.
pub fn silent_server(resolve: Resolve) {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let r = resolver(silent.local_addr().unwrap(), Duration::from_millis(100), 2);
    let answer = resolve(&r, Query::Mx("example.test".into()));
    assert!(
        matches!(answer, Err(Error::Temporary(ref why)) if why.contains("timed out")),
        "{answer:?}"
    );
}
