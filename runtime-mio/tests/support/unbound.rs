//! DNS lookups against a real nameserver: unbound on loopback serving a
//! static `test.` zone. Shared by both runtimes' tests (included with
//! `#[path]`), which pass their own `resolve`.

use std::fmt::Write as _;
use std::fs;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use sqmail_core::dns::{Destination, Error, Query, Resolver, ResolverConfig};

pub type Resolve = fn(&Resolver, Query) -> Result<Vec<Destination>, Error>;

/// A records of `big.test`: their answer is over 512 bytes, so it comes
/// truncated over UDP (queries carry no EDNS) and whole only over TCP.
const BIG: u8 = 40;

/// A running unbound, killed and its directory removed on drop.
pub struct Unbound {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

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
    data.lines()
        .map(|l| format!("  local-data: \"{l}\"\n"))
        .collect()
}

/// A loopback port free for both UDP and TCP, as far as one can tell.
fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port");
}

fn unbound_exe() -> Option<&'static Path> {
    [
        "/usr/sbin/unbound",
        "/usr/bin/unbound",
        "/usr/local/sbin/unbound",
    ]
    .into_iter()
    .map(Path::new)
    .find(|p| p.exists())
}

/// Starts unbound and waits until it answers; None (after saying so)
/// when it is not installed.
pub fn start(resolve: Resolve) -> Option<Unbound> {
    let Some(exe) = unbound_exe() else {
        eprintln!("skipping: unbound is not installed");
        return None;
    };
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("sqmail-unbound-{}-{port}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "server:
  interface: 127.0.0.1
  port: {port}
  do-daemonize: no
  chroot: \"\"
  username: \"\"
  directory: \"{dir}\"
  pidfile: \"\"
  use-syslog: no
  logfile: \"\"
  verbosity: 1
  num-threads: 1
  do-ip6: no
  do-not-query-localhost: yes
  module-config: \"iterator\"
  access-control: 127.0.0.0/8 allow
  local-zone: \"test.\" static
{zone}remote-control:
  control-enable: no
",
        dir = dir.display(),
        zone = zone(),
    );
    let conf = dir.join("unbound.conf");
    fs::write(&conf, config).unwrap();
    let log = fs::File::create(dir.join("log")).unwrap();
    let child = Command::new(exe)
        .arg("-d")
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut unbound = Unbound {
        child,
        dir,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    let probe = resolver(unbound.addr, Duration::from_millis(100), 1);
    for _ in 0..100 {
        if resolve(&probe, Query::Host("plain.test".into())).is_ok() {
            return Some(unbound);
        }
        if let Some(status) = unbound.child.try_wait().unwrap() {
            let log = fs::read_to_string(unbound.dir.join("log")).unwrap_or_default();
            panic!("unbound exited ({status}):\n{log}");
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("unbound did not answer");
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
    let Some(unbound) = start(resolve) else {
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
