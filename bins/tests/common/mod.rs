//! Helpers for tests that run the real `sqmail` binary.
#![allow(dead_code)] // each test file uses its own part of this module

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test, without a queue program or inject flags from
/// the environment the tests run in (a test sets its own).
pub fn sqmail() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sqmail"));
    cmd.env_remove("QMAILQUEUE").env_remove("QMAILINJECT");
    cmd
}

/// A fresh qmail home made by `sqmail setup`, removed when dropped.
pub struct TestHome {
    pub path: PathBuf,
}

impl TestHome {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("sqmail-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        let status = sqmail()
            .arg("setup")
            .arg("--home")
            .arg(&path)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "sqmail setup failed");
        TestHome { path }
    }

    pub fn control(&self, name: &str, contents: &str) {
        std::fs::write(self.path.join("control").join(name), contents).unwrap();
    }

    /// The queued messages: (envelope records, message text), by todo/.
    pub fn queued(&self) -> Vec<(Vec<String>, String)> {
        let todo = self.path.join("queue/todo");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&todo).unwrap() {
            let entry = entry.unwrap();
            let id: u64 = entry.file_name().to_str().unwrap().parse().unwrap();
            let envelope = std::fs::read(entry.path()).unwrap();
            let records = envelope
                .split(|&b| b == 0)
                .filter(|r| !r.is_empty())
                .map(|r| String::from_utf8_lossy(r).into_owned())
                .collect();
            let mess = self.path.join(format!("queue/mess/{}/{id}", id % 23));
            let text = String::from_utf8_lossy(&std::fs::read(mess).unwrap()).into_owned();
            out.push((records, text));
        }
        out
    }
}

impl Drop for TestHome {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// One `sqmail smtpd` session in ucspi mode: `input` on stdin, with `env`
/// as tcpserver would set it; returns what it wrote and whether it exited 0.
pub fn ucspi(home: &Path, env: &[(&str, &str)], input: &[u8]) -> (String, bool) {
    use std::io::Read;
    let mut child = sqmail()
        .args(["smtpd", "--home"])
        .arg(home)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    (out, child.wait().unwrap().success())
}

/// A loopback port no other test of this process is given. Ports the
/// kernel hands out (bind to port 0) can be handed out again to a parallel
/// test before our daemon binds it, which then talks to the wrong daemon;
/// so ports come from a counter below the ephemeral range, checked free.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id().wrapping_mul(97);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20000 + (base.wrapping_add(n) % 12000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `sqmail smtpd --listen` on a free loopback port, killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Daemon {
    pub fn start(home: &Path, extra: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = sqmail()
            .args(["smtpd", "--home"])
            .arg(home)
            .args(["--listen", &addr.to_string()])
            .args(extra)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let daemon = Daemon { child, addr };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        while TcpStream::connect(self.addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "smtpd did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A line-oriented SMTP client with a read timeout.
pub struct Client {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            stream,
        })
    }

    /// One whole reply (all its lines); empty when the server closed.
    pub fn reply(&mut self) -> std::io::Result<String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Ok(all);
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(all);
            }
        }
    }

    pub fn send(&mut self, text: &str) -> std::io::Result<()> {
        self.stream.write_all(text.as_bytes())
    }

    /// Sends a command and returns the reply's code.
    pub fn cmd(&mut self, line: &str) -> std::io::Result<u16> {
        self.send(&format!("{line}\r\n"))?;
        code(&self.reply()?)
    }
}

pub fn code(reply: &str) -> std::io::Result<u16> {
    reply
        .get(..3)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no reply code in {reply:?}")))
}

/// Polls `done` every 10 ms until it holds or `timeout` passes; says which.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Collects everything `from` writes, on a thread, into a shared string.
fn collect(
    mut from: impl std::io::Read + Send + 'static,
) -> (Arc<Mutex<String>>, std::thread::JoinHandle<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let to = Arc::clone(&text);
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => to
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    });
    (text, thread)
}

/// A long-running `sqmail` program (`send`, `up`) whose stdout and stderr
/// are read by threads as it writes them; SIGKILLed when dropped.
pub struct Proc {
    pub child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr piped to us and stdin empty.
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (out, t1) = collect(child.stdout.take().unwrap());
        let (err, t2) = collect(child.stderr.take().unwrap());
        Proc {
            child,
            out,
            err,
            readers: vec![t1, t2],
            exited: None,
        }
    }

    /// `sqmail send --home HOME ARGS`.
    pub fn send(home: &Path, args: &[&str]) -> Proc {
        let mut cmd = sqmail();
        cmd.args(["send", "--home"]).arg(home).args(args);
        Proc::spawn(cmd)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// What it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Both, for assertion messages.
    pub fn output(&self) -> String {
        format!(
            "--- stdout:\n{}--- stderr:\n{}",
            self.stdout(),
            self.stderr()
        )
    }

    pub fn signal(&self, signal: i32) {
        if self.exited.is_none() {
            // SAFETY: kill(2) on our own child, which has not been reaped.
            assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0, "kill");
        }
    }

    /// Waits (at most 20 s) until stdout satisfies `done`; panics with the
    /// output so far, saying it waited for `what`, if it never does.
    pub fn wait_stdout(&self, what: &str, done: impl Fn(&str) -> bool) {
        let ok = wait_until(Duration::from_secs(20), || done(&self.out.lock().unwrap()));
        assert!(ok, "timed out waiting for {what}\n{}", self.output());
    }

    /// Waits (at most 20 s) until stdout contains `text`.
    pub fn wait_for(&self, text: &str) {
        self.wait_stdout(&format!("{text:?}"), |out| out.contains(text));
    }

    /// Waits (at most `timeout`) for it to exit, then (briefly) for its
    /// output to be read to the end; `None` if it is still running.
    pub fn try_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            let child = &mut self.child;
            let mut status = None;
            wait_until(timeout, || {
                status = child.try_wait().unwrap();
                status.is_some()
            });
            self.exited = status;
        }
        if self.exited.is_some() {
            // Its children may hold the pipes a little longer.
            wait_until(Duration::from_secs(5), || {
                self.readers.iter().all(|t| t.is_finished())
            });
        }
        self.exited
    }

    /// Waits (at most 20 s) for it to exit; panics if it does not.
    pub fn exit(&mut self) -> ExitStatus {
        match self.try_exit(Duration::from_secs(20)) {
            Some(status) => status,
            None => panic!("did not exit\n{}", self.output()),
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `sqmail user add ADDRESS --home HOME` with no password; returns the
/// new mailbox's Maildir (as `sqmail user` reports it).
pub fn add_mailbox(home: &Path, address: &str) -> PathBuf {
    let out = sqmail()
        .args(["user", "add", address, "--home"])
        .arg(home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "sqmail user add {address}: {out:?}");
    let said = String::from_utf8(out.stdout).unwrap();
    let maildir = said
        .trim_end()
        .rsplit_once(", mail in ")
        .unwrap_or_else(|| panic!("no Maildir in {said:?}"))
        .1;
    PathBuf::from(maildir)
}

/// Runs `sqmail PROGRAM --home HOME ARGS` (`inject`, `sendmail`) with
/// `message` on stdin; panics unless it exits 0.
pub fn inject_with(program: &str, home: &Path, args: &[&str], message: &str) {
    let mut cmd = sqmail();
    cmd.arg(program).arg("--home").arg(home).args(args);
    run_with_input(cmd, message);
}

/// Runs `cmd` with `message` on stdin; panics unless it exits 0.
pub fn run_with_input(mut cmd: Command, message: &str) {
    let out = output_with_input(&mut cmd, message);
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}

/// Runs `cmd` as [`run_with_input`] does and returns how it went.
pub fn output_with_input(cmd: &mut Command, message: &str) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(message.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The messages delivered to `maildir` (its `new/` and `cur/`).
pub fn maildir_messages(maildir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        let Ok(entries) = std::fs::read_dir(maildir.join(sub)) else {
            continue;
        };
        for entry in entries {
            // A file can only be read whole: Maildir delivery links it
            // into new/ once it is complete.
            if let Ok(text) = std::fs::read_to_string(entry.unwrap().path()) {
                out.push(text);
            }
        }
    }
    out
}

/// The `Subject:` of a delivered message.
pub fn subject(message: &str) -> Option<&str> {
    message.lines().find_map(|l| l.strip_prefix("Subject: "))
}

/// Every file left in the queue's message directories (todo, info,
/// local, remote, mess, bounce), by path below `queue/`. Not `intd/`: a
/// crash between preprocessing's unlinks of `todo/N` and `intd/N` leaves
/// an `intd/N` that only the 36-hour cleanup removes, as in qmail.
pub fn queue_files(home: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let queue = home.join("queue");
    let mut out = Vec::new();
    for dir in ["todo", "info", "local", "remote", "mess", "bounce"] {
        walk(&queue.join(dir), &queue, &mut out);
    }
    out.sort();
    out
}

/// Sends messages to `rcpt` until the server goes away or `stop` is set,
/// three per session; records in `acked` the ids (`{tag}-m{n}`, also the
/// Subject, and the last line as `END-{id}`) that got 250.
pub fn client_loop(
    addr: SocketAddr,
    rcpt: &str,
    tag: &str,
    acked: &Mutex<Vec<String>>,
    stop: &std::sync::atomic::AtomicBool,
) {
    let mut seq = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let Ok(mut c) = Client::connect(addr) else {
            return;
        };
        let session = (|| -> std::io::Result<bool> {
            if code(&c.reply()?)? != 220 || c.cmd("HELO crash.test")? != 250 {
                return Ok(false);
            }
            for _ in 0..3 {
                seq += 1;
                let id = format!("{tag}-m{seq}");
                if c.cmd("MAIL FROM:<a@crash.test>")? != 250
                    || c.cmd(&format!("RCPT TO:<{rcpt}>"))? != 250
                    || c.cmd("DATA")? != 354
                {
                    return Ok(false);
                }
                // A body big enough that a kill can land in the middle of it.
                let filler = "x".repeat(70);
                let mut body = format!("Subject: {id}\r\n\r\n");
                for line in 0..60 {
                    body.push_str(&format!("{line:03} {filler}\r\n"));
                }
                body.push_str(&format!("END-{id}\r\n.\r\n"));
                c.send(&body)?;
                if code(&c.reply()?)? == 250 {
                    acked.lock().unwrap().push(id);
                } else {
                    return Ok(false);
                }
            }
            Ok(true)
        })();
        if !matches!(session, Ok(true)) {
            return;
        }
    }
}

/// One round of a crash test: `clients` sessions of [`client_loop`] to
/// `rcpt` at `addr` (tags `r{round}-c{i}`) until `kill`, which runs at a
/// random moment 50 to 450 ms in (from `seed`, an xorshift state: a
/// different moment every round and every run); returns once every
/// client has ended.
pub fn load_then_kill(
    addr: SocketAddr,
    rcpt: &str,
    round: usize,
    clients: usize,
    acked: &Arc<Mutex<Vec<String>>>,
    seed: &mut u64,
    kill: impl FnOnce(),
) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..clients)
        .map(|client| {
            let (acked, stop, rcpt) = (acked.clone(), stop.clone(), rcpt.to_string());
            std::thread::spawn(move || {
                client_loop(addr, &rcpt, &format!("r{round}-c{client}"), &acked, &stop)
            })
        })
        .collect();
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    std::thread::sleep(Duration::from_millis(50 + *seed % 400));
    kill();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
}

/// A seed for [`load_then_kill`] that differs from run to run.
pub fn kill_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1
}

/// The id of a message [`client_loop`] sent, asserting that it is whole.
pub fn whole_message_id(text: &str) -> String {
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or_else(|| panic!("a message without its header: {text:?}"))
        .to_string();
    assert!(
        text.ends_with(&format!("END-{id}\n")),
        "a partial message: {id}"
    );
    id
}
