use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use sqmail_core::service::{Admission, Runtime, ServeLimits, SessionFactory, Shutdown};
use sqmail_core::smtp::host::{Decision, SmtpHost};
use sqmail_core::smtp::{Config, Reply, Request, Verdict};

const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Default)]
struct Message {
    sender: String,
    recipients: Vec<String>,
    body: Vec<u8>,
}

type Store = Arc<Mutex<Vec<Message>>>;

/// Accepts everything; commits in a job that sleeps, as an fsync would.
struct MemoryHost {
    store: Store,
    open: Option<Message>,
}

impl SmtpHost for MemoryHost {
    fn decide(&mut self, request: Request) -> Decision {
        match request {
            Request::Mail { sender, .. } => {
                self.open = Some(Message {
                    sender,
                    ..Message::default()
                });
            }
            Request::Rcpt { recipient, .. } => {
                if let Some(m) = &mut self.open {
                    m.recipients.push(recipient);
                }
            }
            Request::Data { .. } => {}
            Request::EndOfData => {
                let message = self.open.take().unwrap_or_default();
                let store = Arc::clone(&self.store);
                return Decision::Later(Box::new(move || {
                    thread::sleep(Duration::from_millis(5));
                    store.lock().unwrap().push(message);
                    Verdict::AcceptWith(Reply::new(250, "2.0.0", "ok queued"))
                }));
            }
        }
        Decision::Now(Verdict::Accept)
    }

    fn message_data(&mut self, data: &[u8]) {
        if let Some(m) = &mut self.open {
            m.body.extend_from_slice(data);
        }
    }

    fn abort_message(&mut self) {
        self.open = None;
    }
}

struct Factory {
    store: Store,
    config: Arc<Config>,
    deny: bool,
}

impl SessionFactory for Factory {
    fn admit(&self, _peer: SocketAddr, _local: SocketAddr) -> Admission {
        if self.deny {
            return Admission::Deny;
        }
        Admission::Accept {
            config: Arc::clone(&self.config),
            host: Box::new(MemoryHost {
                store: Arc::clone(&self.store),
                open: None,
            }),
        }
    }
}

/// A daemon on 127.0.0.1 and, where the host has it, [::1].
struct Daemon {
    addr: SocketAddr,
    addr6: Option<SocketAddr>,
    store: Store,
    shutdown: Shutdown,
    finished: mpsc::Receiver<std::io::Result<()>>,
}

fn config() -> Config {
    let mut config = Config::new("test.example");
    config.idle_timeout = Duration::from_secs(30);
    config
}

fn start(limits: ServeLimits, config: Config, deny: bool) -> Daemon {
    let shutdown = Shutdown::new();
    start_with(limits, config, deny, shutdown)
}

fn start_with(limits: ServeLimits, config: Config, deny: bool, shutdown: Shutdown) -> Daemon {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut listeners = vec![listener];
    let mut addr6 = None;
    if let Ok(l6) = TcpListener::bind("[::1]:0") {
        addr6 = Some(l6.local_addr().unwrap());
        listeners.push(l6);
    }
    let store = Store::default();
    let factory = Arc::new(Factory {
        store: Arc::clone(&store),
        config: Arc::new(config),
        deny,
    });
    let shutdown = shutdown.with_grace(Duration::from_secs(1));
    let (tx, finished) = mpsc::channel();
    let sd = shutdown.clone();
    thread::spawn(move || {
        let _ = tx.send(Rt::serve_smtp(listeners, limits, factory, sd));
    });
    Daemon {
        addr,
        addr6,
        store,
        shutdown,
        finished,
    }
}

impl Daemon {
    fn stop(&self) {
        self.shutdown.trigger();
        let result = self
            .finished
            .recv_timeout(WAIT)
            .expect("serve_smtp returned");
        result.unwrap();
    }

    fn messages(&self) -> Vec<Message> {
        self.store.lock().unwrap().clone()
    }
}

struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Client {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    /// One whole reply, its lines joined; "" at end of stream.
    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return all;
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    fn send(&mut self, data: &str) {
        self.writer.write_all(data.as_bytes()).unwrap();
    }

    fn cmd(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n"));
        self.reply()
    }

    /// Reads to end of stream, with the read timeout as the bound.
    fn rest(&mut self) -> String {
        let mut rest = String::new();
        let _ = self.reader.read_to_string(&mut rest);
        rest
    }
}

fn transaction(c: &mut Client, from: &str, to: &str, body: &str) {
    assert!(c.cmd(&format!("MAIL FROM:<{from}>")).starts_with("250"));
    assert!(c.cmd(&format!("RCPT TO:<{to}>")).starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    let reply = c.cmd(&format!("{body}\r\n."));
    assert!(reply.starts_with("250 2.0.0 ok queued"), "{reply}");
}

#[test]
fn full_transaction() {
    let d = start(ServeLimits::default(), config(), false);
    let mut c = Client::connect(d.addr);
    assert!(c.reply().starts_with("220 test.example ESMTP"));
    let ehlo = c.cmd("EHLO client.example");
    assert!(ehlo.contains("250-PIPELINING"), "{ehlo}");
    transaction(
        &mut c,
        "a@example.com",
        "b@example.org",
        "Subject: hi\r\n\r\n..dot",
    );
    assert!(c.cmd("QUIT").starts_with("221"));
    assert_eq!(c.rest(), "");
    let m = d.messages();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].sender, "a@example.com");
    assert_eq!(m[0].recipients, ["b@example.org"]);
    assert_eq!(m[0].body, b"Subject: hi\n\n.dot\n");
    d.stop();
}

#[test]
fn ipv6_listener() {
    let d = start(ServeLimits::default(), config(), false);
    if let Some(addr6) = d.addr6 {
        let mut c = Client::connect(addr6);
        assert!(c.reply().starts_with("220"));
        assert!(c.cmd("HELO v6").starts_with("250"));
        transaction(&mut c, "a@x", "b@y", "v6");
        assert!(c.cmd("QUIT").starts_with("221"));
        assert_eq!(d.messages().len(), 1);
    }
    d.stop();
}

#[test]
fn twenty_concurrent_sessions() {
    let limits = ServeLimits {
        blocking_threads: 4,
        ..ServeLimits::default()
    };
    let d = start(limits, config(), false);
    let clients: Vec<_> = (0..20)
        .map(|i| {
            let addr = d.addr;
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                assert!(c.reply().starts_with("220"));
                assert!(c.cmd("EHLO c").starts_with("250"));
                for j in 0..5 {
                    transaction(&mut c, &format!("s{i}@x"), "r@y", &format!("m {i} {j}"));
                }
                assert!(c.cmd("QUIT").starts_with("221"));
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let m = d.messages();
    assert_eq!(m.len(), 100);
    for i in 0..20 {
        let from = format!("s{i}@x");
        assert_eq!(m.iter().filter(|m| m.sender == from).count(), 5);
    }
    d.stop();
}

#[test]
fn whole_transaction_in_one_write() {
    let d = start(ServeLimits::default(), config(), false);
    let mut c = Client::connect(d.addr);
    c.send(
        "EHLO p\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\n\
         Subject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n",
    );
    let all = c.rest();
    let codes: Vec<&str> = all
        .lines()
        .filter(|l| l.as_bytes().get(3) != Some(&b'-'))
        .map(|l| &l[..3])
        .collect();
    assert_eq!(
        codes,
        ["220", "250", "250", "250", "250", "354", "250", "221"],
        "{all}"
    );
    let m = d.messages();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].recipients, ["b@y", "c@y"]);
    d.stop();
}

#[test]
fn disconnect_mid_data_keeps_nothing() {
    let d = start(ServeLimits::default(), config(), false);
    let mut c = Client::connect(d.addr);
    assert!(c.reply().starts_with("220"));
    assert!(c.cmd("HELO x").starts_with("250"));
    transaction(&mut c, "first@x", "r@y", "kept");
    assert!(c.cmd("MAIL FROM:<lost@x>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<r@y>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send("Subject: half\r\n\r\nonly half of it");
    drop(c);
    // The session is gone once a new one is served and time has passed.
    let mut probe = Client::connect(d.addr);
    assert!(probe.reply().starts_with("220"));
    thread::sleep(Duration::from_millis(100));
    let m = d.messages();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].sender, "first@x");
    d.stop();
}

#[test]
fn disconnect_during_commit_still_commits() {
    let d = start(ServeLimits::default(), config(), false);
    let mut c = Client::connect(d.addr);
    c.send("HELO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nbody\r\n.\r\n");
    // The end of data has gone out; leave before the job can answer.
    drop(c);
    let deadline = Instant::now() + WAIT;
    while d.messages().is_empty() {
        assert!(Instant::now() < deadline, "the job was not run");
        thread::sleep(Duration::from_millis(10));
    }
    d.stop();
}

#[test]
fn slow_reader_gets_every_reply() {
    const N: usize = 50_000;
    let d = start(ServeLimits::default(), config(), false);
    let mut c = Client::connect(d.addr);
    let mut writer = c.writer.try_clone().unwrap();
    let sender = thread::spawn(move || {
        let mut all = Vec::new();
        for _ in 0..N {
            all.extend_from_slice(b"NOOP\r\n");
        }
        all.extend_from_slice(b"QUIT\r\n");
        writer.write_all(&all).unwrap();
    });
    // Let the replies pile up until the server must wait for us.
    thread::sleep(Duration::from_millis(300));
    let all = c.rest();
    sender.join().unwrap();
    assert_eq!(all.matches("250 2.0.0 ok\r\n").count(), N);
    assert!(all.ends_with("221 2.0.0 test.example closing connection\r\n"));
    d.stop();
}

#[test]
fn per_ip_limit_closes_extra_connections() {
    let limits = ServeLimits {
        max_per_ip: 2,
        ..ServeLimits::default()
    };
    let d = start(limits, config(), false);
    let mut a = Client::connect(d.addr);
    let mut b = Client::connect(d.addr);
    assert!(a.reply().starts_with("220"));
    assert!(b.reply().starts_with("220"));
    let mut extra = Client::connect(d.addr);
    assert_eq!(extra.rest(), "", "the third connection is closed unserved");
    assert!(a.cmd("QUIT").starts_with("221"));
    assert_eq!(a.rest(), "");
    // Once one has gone, a new one is served (the loop may lag a little).
    let deadline = Instant::now() + WAIT;
    loop {
        let mut c = Client::connect(d.addr);
        if c.reply().starts_with("220") {
            break;
        }
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(20));
    }
    d.stop();
}

#[test]
fn max_connections_stops_accepting() {
    let limits = ServeLimits {
        max_connections: 2,
        ..ServeLimits::default()
    };
    let d = start(limits, config(), false);
    let mut a = Client::connect(d.addr);
    let mut b = Client::connect(d.addr);
    assert!(a.reply().starts_with("220"));
    assert!(b.reply().starts_with("220"));
    // The third waits in the backlog: no greeting yet.
    let mut c = Client::connect(d.addr);
    c.writer
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = (&c.writer).read(&mut byte);
    assert!(early.is_err(), "no greeting while at the limit: {early:?}");
    c.writer.set_read_timeout(Some(WAIT)).unwrap();
    assert!(a.cmd("QUIT").starts_with("221"));
    assert!(c.reply().starts_with("220"));
    d.stop();
}

#[test]
fn deny_closes_silently() {
    let d = start(ServeLimits::default(), config(), true);
    let mut c = Client::connect(d.addr);
    assert_eq!(c.rest(), "");
    d.stop();
}

#[test]
fn idle_client_times_out() {
    let mut cfg = config();
    cfg.idle_timeout = Duration::from_millis(200);
    let d = start(ServeLimits::default(), cfg, false);
    let mut c = Client::connect(d.addr);
    assert!(c.reply().starts_with("220"));
    let started = Instant::now();
    assert!(c.reply().starts_with("421 4.4.2"));
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(c.rest(), "");
    d.stop();
}

#[test]
fn shutdown_returns_and_closes_idle_sessions() {
    let d = start(ServeLimits::default(), config(), false);
    let mut c = Client::connect(d.addr);
    assert!(c.reply().starts_with("220"));
    assert!(c.cmd("HELO x").starts_with("250"));
    let started = Instant::now();
    d.stop();
    assert!(started.elapsed() < Duration::from_secs(5));
    let rest = c.rest();
    assert!(rest.is_empty() || rest.starts_with("421 4.3.2"), "{rest}");
    assert!(TcpStream::connect(d.addr).is_err(), "listener closed");
}

#[test]
fn shutdown_triggered_from_another_thread_stops_the_daemon() {
    let d = start(ServeLimits::default(), config(), false);
    let mut c = Client::connect(d.addr);
    assert!(c.reply().starts_with("220"));
    let shutdown = d.shutdown.clone();
    thread::spawn(move || shutdown.trigger()).join().unwrap();
    d.finished.recv_timeout(WAIT).unwrap().unwrap();
    assert!(c.rest().starts_with("421 4.3.2"));
}

#[test]
fn shutdown_triggered_before_serving_returns_at_once() {
    let shutdown = Shutdown::new();
    shutdown.trigger();
    let started = Instant::now();
    let d = start_with(ServeLimits::default(), config(), false, shutdown);
    d.finished.recv_timeout(WAIT).unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn shutdown_lets_a_session_finish_within_grace() {
    let d = start(ServeLimits::default(), config(), false);
    let mut c = Client::connect(d.addr);
    assert!(c.reply().starts_with("220"));
    assert!(c.cmd("HELO x").starts_with("250"));
    d.shutdown.trigger();
    transaction(&mut c, "late@x", "r@y", "in the grace period");
    assert!(c.cmd("QUIT").starts_with("221"));
    d.finished.recv_timeout(WAIT).unwrap().unwrap();
    assert_eq!(d.messages().len(), 1);
}

#[test]
fn stdio_mode_on_a_socket() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let store = Store::default();
    let host = Box::new(MemoryHost {
        store: Arc::clone(&store),
        open: None,
    });
    let (tx, done) = mpsc::channel();
    thread::spawn(move || {
        let fd = ours.as_fd();
        let _ = tx.send(Rt::serve_smtp_fds(fd, fd, Arc::new(config()), host));
    });
    theirs.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(theirs.try_clone().unwrap());
    let mut writer = theirs;
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("220"));
    writer
        .write_all(b"HELO s\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n")
        .unwrap();
    let mut rest = String::new();
    // The server keeps its end open until the thread returns, so read lines.
    for _ in 0..6 {
        line.clear();
        reader.read_line(&mut line).unwrap();
        rest.push_str(&line);
    }
    assert!(
        rest.ends_with("221 2.0.0 test.example closing connection\r\n"),
        "{rest}"
    );
    done.recv_timeout(WAIT).unwrap().unwrap();
    assert_eq!(store.lock().unwrap()[0].body, b"hello\n");
}

#[test]
fn stdio_mode_on_pipes_times_out() {
    let (in_ours, mut in_theirs) = UnixStream::pair().unwrap();
    let (out_ours, out_theirs) = UnixStream::pair().unwrap();
    let mut cfg = config();
    cfg.idle_timeout = Duration::from_millis(100);
    let host = Box::new(MemoryHost {
        store: Store::default(),
        open: None,
    });
    let (tx, done) = mpsc::channel();
    thread::spawn(move || {
        let result = Rt::serve_smtp_fds(in_ours.as_fd(), out_ours.as_fd(), Arc::new(cfg), host);
        let _ = tx.send(result);
    });
    in_theirs.write_all(b"NOOP\r\n").unwrap();
    done.recv_timeout(WAIT).unwrap().unwrap();
    out_theirs.set_read_timeout(Some(WAIT)).unwrap();
    let mut all = String::new();
    let _ = (&out_theirs).read_to_string(&mut all);
    assert!(all.starts_with("220"), "{all}");
    assert!(all.contains("250 2.0.0 ok"), "{all}");
    assert!(
        all.ends_with("421 4.4.2 test.example timeout; closing connection\r\n"),
        "{all}"
    );
}

#[test]
fn python_smtplib_sends_a_message() {
    let d = start(ServeLimits::default(), config(), false);
    let script = format!(
        "import smtplib\n\
         s = smtplib.SMTP('127.0.0.1', {}, timeout=10)\n\
         s.ehlo('py.example')\n\
         r = s.sendmail('py@example.com', ['a@example.org', 'b@example.org'], 'Subject: py\\r\\n\\r\\n.leading dot\\r\\n')\n\
         assert r == {{}}, r\n\
         s.quit()\n",
        d.addr.port()
    );
    let status = match std::process::Command::new("python3")
        .args(["-c", &script])
        .status()
    {
        Ok(status) => status,
        Err(_) => {
            eprintln!("python3 not found; skipped");
            return d.stop();
        }
    };
    assert!(status.success());
    let m = d.messages();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].recipients, ["a@example.org", "b@example.org"]);
    assert_eq!(m[0].body, b"Subject: py\n\n.leading dot\n");
    d.stop();
}
