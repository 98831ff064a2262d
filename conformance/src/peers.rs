//! Real, independent servers for interop tests, each a private instance on
//! a free loopback port in a folder of its own, stopped and removed when
//! dropped. A test that gets `None` says why and skips: CI installs them.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (free when asked; the server binds it).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Debian's Postfix as a receiving MTA: SMTP on 127.0.0.1:`port`, mail for
/// `domain` (any local part) into one Maildir, `maillog_file` for the log.
pub struct Postfix {
    dir: PathBuf,
    pub port: u16,
}

impl Postfix {
    /// Starts one, with `extra` lines appended to its main.cf; `None` (and a
    /// note on stderr) when Postfix is not installed or we are not root.
    pub fn start(domain: &str, extra: &[&str]) -> Option<Postfix> {
        if !Path::new("/usr/sbin/postfix").exists() || !is_root() {
            eprintln!("SKIPPED: needs root and Debian's postfix (/usr/sbin/postfix)");
            return None;
        }
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("sqmail-postfix-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pf = Postfix { dir, port };
        pf.configure(domain, extra);
        let ok = Command::new("postfix")
            .arg("-c")
            .arg(pf.dir.join("etc"))
            .arg("start")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "postfix did not start; its log:\n{}", pf.log());
        let start = Instant::now();
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "postfix does not listen on {port}; its log:\n{}",
                pf.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(pf)
    }

    fn configure(&self, domain: &str, extra: &[&str]) {
        let d = self.dir.display();
        for sub in ["etc", "spool", "data", "mail"] {
            std::fs::create_dir_all(self.dir.join(sub)).unwrap();
        }
        // Postfix's daemons run as `postfix` and must reach their folders.
        let mut perms = std::fs::metadata(&self.dir).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&self.dir, perms).unwrap();
        for sub in ["data", "mail"] {
            let ok = Command::new("chown")
                .arg("postfix:postfix")
                .arg(self.dir.join(sub))
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown postfix {d}/{sub}");
        }
        let id = |flag: &str| {
            let out = Command::new("id").args([flag, "postfix"]).output().unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        let mut main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {d}/spool\n\
             data_directory = {d}/data\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             syslog_name = postfix-{port}\n\
             maillog_file_prefixes = {d}\n\
             maillog_file = {d}/maillog\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             myhostname = {domain}\n\
             mydestination =\n\
             mynetworks = 127.0.0.0/8\n\
             smtpd_banner = $myhostname ESMTP\n\
             virtual_mailbox_domains = {domain}\n\
             virtual_mailbox_base = {d}/mail\n\
             virtual_mailbox_maps = static:box/\n\
             virtual_uid_maps = static:{uid}\n\
             virtual_gid_maps = static:{gid}\n\
             smtp_dns_support_level = disabled\n\
             alias_maps =\n\
             alias_database =\n",
            port = self.port,
            uid = id("-u"),
            gid = id("-g"),
        );
        for line in extra {
            main_cf.push_str(line);
            main_cf.push('\n');
        }
        std::fs::write(self.dir.join("etc/main.cf"), main_cf).unwrap();
        // Debian's master.cf as shipped (the live one may be edited, e.g.
        // by bench/setup_postfix.sh), with the SMTP listener on our port
        // and no service chrooted (a chroot would need resolver files).
        let master = [
            "/usr/share/postfix/master.cf.dist",
            "/etc/postfix/master.cf.proto",
        ]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .or_else(|| std::fs::read_to_string("/etc/postfix/master.cf").ok())
        .expect("no Postfix master.cf to start from");
        let master: String = master
            .lines()
            .map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let service = !line.starts_with('#');
                if service && fields.get(1) == Some(&"inet") && fields.last() == Some(&"smtpd") {
                    format!("127.0.0.1:{} inet n - n - - smtpd\n", self.port)
                } else if fields.len() >= 8 && !line.starts_with([' ', '\t', '#']) {
                    let mut f = fields.clone();
                    if f[4] == "y" {
                        f[4] = "n";
                    }
                    f.join(" ") + "\n"
                } else {
                    format!("{line}\n")
                }
            })
            .collect();
        std::fs::write(self.dir.join("etc/master.cf"), master).unwrap();
    }

    /// The Maildir every message for the domain lands in.
    pub fn maildir(&self) -> PathBuf {
        self.dir.join("mail/box")
    }

    /// The messages delivered so far, oldest first.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let new = self.maildir().join("new");
        let mut files: Vec<PathBuf> = std::fs::read_dir(new)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        files.iter().filter_map(|f| std::fs::read(f).ok()).collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// smtpd's summary of each finished session (`ehlo=1 mail=3 ...`),
    /// but for sessions without a command (such as `start`'s own probe).
    pub fn sessions(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("/smtpd[") && l.contains(" disconnect from "))
            .filter(|l| !l.ends_with(" commands=0/0"))
            .map(|l| {
                l.split(" disconnect from ")
                    .nth(1)
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let etc = self.dir.join("etc");
        let stopped = Command::new("postfix")
            .arg("-c")
            .arg(&etc)
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            let _ = Command::new("postfix")
                .arg("-c")
                .arg(&etc)
                .arg("abort")
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Debian's unbound as an authoritative server for a static zone: the
/// `local-data` records given, on 127.0.0.1 (UDP and TCP), nothing
/// forwarded anywhere.
pub struct Unbound {
    child: Child,
    dir: PathBuf,
    pub addr: SocketAddr,
}

impl Unbound {
    /// Serves `records` (zone-file lines such as `mx.test. 300 IN MX 10
    /// a.mx.test.`) for `zone` (e.g. `test.`); `None` (and a note on stderr)
    /// when unbound is not installed.
    pub fn start(zone: &str, records: &[String]) -> Option<Unbound> {
        let Some(exe) = [
            "/usr/sbin/unbound",
            "/usr/bin/unbound",
            "/usr/local/sbin/unbound",
        ]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists()) else {
            eprintln!("SKIPPED: needs Debian's unbound (/usr/sbin/unbound)");
            return None;
        };
        let port = free_udp_and_tcp_port();
        let dir =
            std::env::temp_dir().join(format!("sqmail-unbound-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data: String = records
            .iter()
            .map(|r| format!("  local-data: \"{r}\"\n"))
            .collect();
        let config = format!(
            "server:\n  interface: 127.0.0.1\n  port: {port}\n  do-daemonize: no\n  chroot: \"\"\n  \
             username: \"\"\n  directory: \"{dir}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n  \
             verbosity: 1\n  num-threads: 1\n  do-ip6: no\n  do-not-query-localhost: yes\n  \
             module-config: \"iterator\"\n  access-control: 127.0.0.0/8 allow\n  \
             local-zone: \"{zone}\" static\n{data}remote-control:\n  control-enable: no\n",
            dir = dir.display(),
        );
        let conf = dir.join("unbound.conf");
        std::fs::write(&conf, config).unwrap();
        let log = std::fs::File::create(dir.join("log")).unwrap();
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
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        };
        // It binds UDP and TCP together, so a TCP connection means ready.
        let start = Instant::now();
        while TcpStream::connect(unbound.addr).is_err() {
            if let Some(status) = unbound.child.try_wait().unwrap() {
                panic!("unbound exited ({status}):\n{}", unbound.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "unbound does not listen:\n{}",
                unbound.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(unbound)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port free for both UDP and TCP, as far as one can tell.
fn free_udp_and_tcp_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port for UDP and TCP");
}
