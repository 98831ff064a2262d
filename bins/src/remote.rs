//! Remote delivery (qmail-remote): `sqmail remote HOST SENDER RECIP...`,
//! and the transport `sqmail send` delivers remote recipients through.
//!
//! The decisions (controls, routes, which addresses, the report texts) are
//! [`sqmail_core::remote`]'s and the SMTP session is the core's client
//! machine; this module does the I/O around them through the runtime:
//! DNS, connections, `lock/tcpto`, and a cache of idle connections so a
//! burst of messages to one host travels over one connection.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;
use sqmail_core::dns::{Query, Resolver, ResolverConfig};
use sqmail_core::remote::{self, RemoteControls, Target};
use sqmail_core::service::{ConnectError, Runtime, SmtpConnection};
use sqmail_core::smtp::client::{ClientConfig, Delivery, Envelope, Status};
use sqmail_core::smtproutes::SMTP_PORT;
use sqmail_queue::scheduler::Outcome;
use sqmail_queue::send::remote::{RemoteJob, RemoteResult, Transport};
use sqmail_queue::send::unix_now;
use sqmail_queue::tcpto::Tcpto;

use crate::cli::HomeArgs;
use crate::home::Home;
use crate::ipme::Ipme;
use crate::runtime::Chosen;

type Connection = <Chosen as Runtime>::SmtpConnection;

/// Idle connections kept at most, all hosts together.
const MAX_IDLE: usize = 64;

/// Where remote mail goes, for tests and unusual sites.
#[derive(Args, Clone, Debug)]
pub struct RemoteOptions {
    /// Name servers to ask instead of /etc/resolv.conf's (ADDR or ADDR:PORT;
    /// may be repeated).
    #[arg(long = "dns", value_name = "ADDR[:PORT]", value_parser = parse_nameserver)]
    pub dns: Vec<SocketAddr>,
    /// The port of MX hosts (25); for test networks on loopback.
    #[arg(long, value_name = "PORT", default_value_t = SMTP_PORT)]
    pub mx_port: u16,
    /// How long an idle connection waits for the next message to its host
    /// (0: a connection per message, as qmail-remote). Short, as Postfix's
    /// cache: enough for a burst, and servers time idle clients out later.
    #[arg(long, value_name = "SECS", default_value_t = 3)]
    pub reuse_for: u64,
}

fn parse_nameserver(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("not an address or address:port: {s:?}"))
}

#[derive(Args, Debug)]
pub struct RemoteArgs {
    #[command(flatten)]
    pub home: HomeArgs,
    #[command(flatten)]
    pub options: RemoteOptions,
    /// The recipients' domain (or `[ip]`), as qmail-rspawn passes it.
    pub host: String,
    /// The envelope sender; empty for a bounce.
    #[arg(allow_hyphen_values = true)]
    pub sender: String,
    /// The recipients, all at HOST.
    #[arg(required = true, allow_hyphen_values = true)]
    pub recipients: Vec<String>,
}

/// qmail-remote: the message on stdin, the report on stdout; exits 0
/// whatever happened (the report says), 111 only if it cannot report.
pub fn main(args: RemoteArgs) -> ExitCode {
    let remote = match Remote::new(args.home.home(), &args.options) {
        Ok(r) => r,
        Err(e) => {
            // qmail-remote's own trouble is a deferral of the whole message.
            return report(&Delivery {
                recipients: Vec::new(),
                message: (Status::Temporary, format!("{e} (#4.3.0)")),
            });
        }
    };
    let recipients: Vec<Vec<u8>> = args
        .recipients
        .into_iter()
        .map(String::into_bytes)
        .collect();
    // A pipe is copied to a temporary file first, since the message is
    // read twice: on disk, not in memory, whatever its size.
    let message = seekable_stdin().map_or_else(|| spool(&mut io::stdin().lock()), Ok);
    let delivery = match message {
        Ok(mut file) => remote.deliver(&args.host, args.sender.as_bytes(), &recipients, &mut file),
        Err(_) => remote::unreadable(),
    };
    remote.close_idle();
    report(&delivery)
}

/// Stdin as a file when it is one (qmail-rspawn gives the queue file).
fn seekable_stdin() -> Option<std::fs::File> {
    use std::os::fd::AsFd;
    let file = std::fs::File::from(io::stdin().as_fd().try_clone_to_owned().ok()?);
    let mut probe = &file;
    probe.stream_position().ok()?;
    Some(file)
}

/// `input`, copied into a file with no name in the temporary directory
/// (`O_TMPFILE`; where there is none, a new file unlinked at once).
fn spool(input: &mut impl Read) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir();
    let anonymous = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(&dir);
    let mut file = match anonymous {
        Ok(file) => file,
        Err(_) => {
            let path = dir.join(format!("sqmail-remote.{}", std::process::id()));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            std::fs::remove_file(&path)?;
            file
        }
    };
    io::copy(input, &mut file)?;
    file.rewind()?;
    Ok(file)
}

fn report(delivery: &Delivery) -> ExitCode {
    let mut out = io::stdout().lock();
    match out.write_all(&delivery.report()).and_then(|_| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(111),
    }
}

/// Remote delivery for one qmail home.
pub struct Remote {
    home: Home,
    mx_port: u16,
    resolver: Resolver,
    tcpto: Tcpto,
    ipme: Ipme,
    idle_time: Duration,
    idle: Mutex<Vec<Idle>>,
}

/// A connection between messages.
struct Idle {
    key: Key,
    since: Instant,
    connection: Connection,
}

/// What a connection can be reused for: the same peer, from the same
/// local address, under the same name.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Key {
    peer: SocketAddr,
    bind: Option<IpAddr>,
    helo: String,
}

impl Remote {
    pub fn new(home: Home, options: &RemoteOptions) -> Result<Remote, String> {
        let config = if options.dns.is_empty() {
            let path = "/etc/resolv.conf";
            match std::fs::read(path) {
                Ok(text) => ResolverConfig::from_resolv_conf(&text),
                // No file means the local resolver, as glibc assumes.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    ResolverConfig::from_resolv_conf(b"")
                }
                Err(e) => return Err(format!("unable to read {path}: {e}")),
            }
        } else {
            ResolverConfig::with_nameservers(options.dns.clone())
        };
        let seed = u64::from(std::process::id()) ^ unix_now().rotate_left(20);
        Ok(Remote {
            tcpto: Tcpto::new(home.path()),
            home,
            mx_port: options.mx_port,
            resolver: Resolver::new(config, seed),
            ipme: Ipme::default(),
            idle_time: Duration::from_secs(options.reuse_for),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// A transport for `sqmail send`, closing its idle connections as they
    /// age (a thread that ends when the transport is dropped).
    pub fn transport(self) -> io::Result<Arc<Remote>> {
        let remote = Arc::new(self);
        let weak: Weak<Remote> = Arc::downgrade(&remote);
        thread::Builder::new()
            .name("sqmail-idle".into())
            .spawn(move || loop {
                thread::sleep(Duration::from_millis(500));
                match weak.upgrade() {
                    Some(remote) => remote.close_stale(Instant::now()),
                    None => return,
                }
            })?;
        Ok(remote)
    }

    /// One qmail-remote run: `message` for `recipients`, all at `host`.
    pub fn deliver<M: Read + Seek>(
        &self,
        host: &str,
        sender: &[u8],
        recipients: &[Vec<u8>],
        message: &mut M,
    ) -> Delivery {
        let controls = match RemoteControls::load_with(&mut |name| self.home.control_bytes(name)) {
            Ok(c) => c,
            Err(e) => {
                return Delivery {
                    recipients: Vec::new(),
                    message: (
                        Status::Temporary,
                        format!("Unable to read controls: {e}. (#4.3.0)"),
                    ),
                }
            }
        };
        let target = match remote::target(&controls.routes, host, self.mx_port) {
            Ok(t) => t,
            Err(failed) => return failed,
        };
        let (ips, port) = match self.addresses(&target) {
            Ok(found) => found,
            Err(failed) => return failed,
        };
        let Ok(envelope) = envelope(sender, recipients, message) else {
            return remote::unreadable();
        };
        for ip in ips {
            let key = Key {
                peer: SocketAddr::new(ip, port),
                bind: controls.outgoing_ip,
                helo: controls.helohost.clone(),
            };
            if let Some(mut connection) = self.take_idle(&key) {
                let delivery = send(&mut connection, envelope.clone(), message);
                // A connection the server closed meanwhile fails before
                // any recipient was tried: then nothing was sent, and a
                // fresh connection below tries again.
                if !(delivery.recipients.is_empty() && delivery.message.0 == Status::Temporary) {
                    self.keep(key, connection);
                    return delivery;
                }
            }
            let now = unix_now();
            if self.tcpto.skip(ip, now) {
                continue;
            }
            let config = Arc::new(ClientConfig {
                helo: controls.helohost.clone(),
                timeout: controls.timeout_remote,
                peer: ip,
            });
            let connected = start_connect(key.peer, key.bind).map_err(ConnectError::Failed);
            match connected.and_then(|s| Chosen::connect_smtp(s, controls.timeout_connect, config))
            {
                Ok(mut connection) => {
                    let _ = self.tcpto.record(ip, now, false);
                    let delivery = send(&mut connection, envelope, message);
                    self.keep(key, connection);
                    return delivery;
                }
                Err(ConnectError::TimedOut) => {
                    let _ = self.tcpto.record(ip, now, true);
                }
                Err(ConnectError::Failed(e)) => {
                    if let (Some(bind), io::ErrorKind::AddrNotAvailable) = (key.bind, e.kind()) {
                        return remote::cannot_bind(bind);
                    }
                    // Refused or unreachable: an answer, so not a timeout.
                    let _ = self.tcpto.record(ip, now, false);
                }
            }
        }
        remote::no_connection()
    }

    /// The addresses to try and their port.
    fn addresses(&self, target: &Target) -> Result<(Vec<IpAddr>, u16), Delivery> {
        match target {
            Target::Literal { ip, port } => Ok((vec![*ip], *port)),
            Target::Lookup { query, port, .. } => {
                let name = match query {
                    Query::Mx(name) | Query::Host(name) => name,
                };
                let found = Chosen::resolve(&self.resolver, query.clone())
                    .map_err(|e| remote::dns_failure(name, &e))?;
                let ips = remote::addresses(&found, target, &|ip| self.ipme.contains(ip))?;
                Ok((ips, *port))
            }
        }
    }

    fn take_idle(&self, key: &Key) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let at = idle
            .iter()
            .position(|i| i.key == *key && i.since.elapsed() < self.idle_time)?;
        Some(idle.swap_remove(at).connection)
    }

    fn keep(&self, key: Key, connection: Connection) {
        if !connection.is_reusable() || self.idle_time.is_zero() {
            connection.quit();
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= MAX_IDLE {
            let oldest = idle.remove(0);
            drop(idle);
            oldest.connection.quit();
            idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        }
        idle.push(Idle {
            key,
            since: Instant::now(),
            connection,
        });
    }

    fn close_stale(&self, now: Instant) {
        let stale: Vec<Idle> = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let (stale, fresh) = idle
                .drain(..)
                .partition(|i| now.duration_since(i.since) >= self.idle_time);
            *idle = fresh;
            stale
        };
        for i in stale {
            i.connection.quit();
        }
    }

    /// QUIT on every idle connection (when delivery stops).
    pub fn close_idle(&self) {
        let all: Vec<Idle> =
            std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        for i in all {
            i.connection.quit();
        }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.close_idle();
    }
}

impl Transport for Remote {
    fn deliver(&self, job: &RemoteJob, mut message: std::fs::File) -> Vec<RemoteResult> {
        let recipients: Vec<Vec<u8>> = job.recipients.iter().map(|(_, r)| r.clone()).collect();
        let delivery = match std::str::from_utf8(&job.domain) {
            Ok(domain) => Remote::deliver(self, domain, &job.sender, &recipients, &mut message),
            Err(_) => Delivery {
                recipients: Vec::new(),
                message: (
                    Status::Permanent,
                    "Sorry, the recipient's domain is not valid UTF-8. (#5.1.2)".into(),
                ),
            },
        };
        remote::per_recipient(&delivery, recipients.len())
            .into_iter()
            .map(|(status, text)| RemoteResult {
                outcome: match status {
                    Status::Accepted => Outcome::Success,
                    Status::Temporary => Outcome::Deferral,
                    Status::Permanent => Outcome::Failure,
                },
                report: text.as_bytes().to_vec(),
            })
            .collect()
    }
}

/// The envelope for `message`: its size as sent (CRLF line ends) for
/// SIZE, and whether it has 8-bit bytes for BODY=8BITMIME. Leaves the
/// message at its start.
fn envelope<M: Read + Seek>(
    sender: &[u8],
    recipients: &[Vec<u8>],
    message: &mut M,
) -> io::Result<Envelope> {
    message.seek(SeekFrom::Start(0))?;
    let (mut size, mut eight_bit) = (0u64, false);
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = message.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        let lines = chunk.iter().filter(|&&b| b == b'\n').count();
        size += (n + lines) as u64;
        eight_bit |= chunk.iter().any(|&b| b >= 0x80);
    }
    message.seek(SeekFrom::Start(0))?;
    Ok(Envelope {
        sender: sender.to_vec(),
        recipients: recipients.to_vec(),
        size,
        eight_bit,
    })
}

/// A socket connecting to `peer` (from `bind`, `control/outgoingip`),
/// without waiting: the runtime waits for it.
fn start_connect(peer: SocketAddr, bind: Option<IpAddr>) -> io::Result<std::net::TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(peer), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    // The machine writes whole command groups; Nagle would only delay them.
    socket.set_tcp_nodelay(true)?;
    if let Some(ip) = bind {
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match socket.connect(&peer.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(socket.into())
}

/// One transaction, the message read from its start.
fn send<M: Read + Seek>(
    connection: &mut Connection,
    envelope: Envelope,
    message: &mut M,
) -> Delivery {
    match message.seek(SeekFrom::Start(0)) {
        Ok(_) => connection.send(envelope, message),
        Err(_) => remote::unreadable(),
    }
}
