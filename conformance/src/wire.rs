//! The `sqmail` binary as a [`Peer`]: `sqmail smtpd --listen` over TCP, or
//! `sqmail smtpd` as a ucspi child on stdin/stdout, each with a qmail home
//! whose control files are made from the trace's directives.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use crate::run::{take_reply, Next, Peer, QueuedMessage};
use crate::trace::{ExpectedEnvelope, Setup, DEFAULT_IP};

/// The longest wait for one reply or for the close.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait for a daemon to listen, or a child to exit.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// `W:` steps longer than this are refused over the wire.
const MAX_WAIT: u64 = 30;

/// The `sqmail` binary: `$SQMAIL_BIN`, else `sqmail` in the target
/// directory the running test executable lives in (`target/debug/deps/x`
/// → `target/debug/sqmail`).
pub fn find_binary() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("SQMAIL_BIN") {
        let bin = PathBuf::from(bin);
        return bin.is_file().then_some(bin);
    }
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.parent()?.join("sqmail");
    candidate.is_file().then_some(candidate)
}

/// A scratch qmail home, removed when dropped.
pub struct Home {
    pub path: PathBuf,
}

static HOMES: AtomicU64 = AtomicU64::new(0);

/// Control files the setup may write; any of them `sqmail setup` made
/// that the trace does not name is removed, so defaults are qmail's.
const MANAGED: [&str; 7] = [
    "me",
    "localiphost",
    "rcpthosts",
    "badmailfrom",
    "databytes",
    "timeoutsmtpd",
    "smtpgreeting",
];

impl Home {
    /// `sqmail setup --home DIR`, then the control files of `setup`.
    pub fn create(bin: &Path, setup: &Setup) -> Result<Home, String> {
        let n = HOMES.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("sqmail-conformance-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        let home = Home { path };
        let out = Command::new(bin)
            .arg("setup")
            .arg("--home")
            .arg(&home.path)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {} setup: {e}", bin.display()))?;
        if !out.status.success() {
            return Err(format!(
                "`sqmail setup --home {}` failed ({}): {}",
                home.path.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let control = home.path.join("control");
        for name in MANAGED {
            let _ = std::fs::remove_file(control.join(name));
        }
        for (name, text) in setup.control_files() {
            std::fs::write(control.join(name), text)
                .map_err(|e| format!("writing control/{name}: {e}"))?;
        }
        Ok(home)
    }

    /// Every committed message: `queue/todo/N` (its envelope) with
    /// `queue/mess/*/N` (its data), oldest first.
    pub fn queued(&self) -> Result<Vec<QueuedMessage>, String> {
        let queue = self.path.join("queue");
        let todo = queue.join("todo");
        let mut found = Vec::new();
        let entries = std::fs::read_dir(&todo).map_err(|e| format!("{}: {e}", todo.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| e.to_string())?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(entry.path()).map_err(|e| e.to_string())?;
            let envelope =
                parse_todo(&bytes).ok_or_else(|| format!("malformed queue/todo/{name}"))?;
            let mtime = entry
                .metadata()
                .and_then(|m| m.modified())
                .map_err(|e| e.to_string())?;
            let data = find_mess(&queue, &name)?;
            found.push((mtime, name, QueuedMessage { envelope, data }));
        }
        // Messages in mess/ without todo/ are not committed; they must not
        // exist once a session is over, but mid-session one may be open.
        found.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        Ok(found.into_iter().map(|(_, _, m)| m).collect())
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `u<uid>\0p<pid>\0F<sender>\0T<rcpt>\0...` (qmail's todo/N).
fn parse_todo(bytes: &[u8]) -> Option<ExpectedEnvelope> {
    let mut sender = None;
    let mut recipients = Vec::new();
    for record in bytes.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        let text = String::from_utf8_lossy(&record[1..]).into_owned();
        match record[0] {
            b'F' => sender = Some(text),
            b'T' => recipients.push(text),
            _ => {}
        }
    }
    Some(ExpectedEnvelope {
        sender: sender?,
        recipients,
    })
}

fn find_mess(queue: &Path, name: &str) -> Result<Vec<u8>, String> {
    let mess = queue.join("mess");
    let dirs = std::fs::read_dir(&mess).map_err(|e| format!("{}: {e}", mess.display()))?;
    for dir in dirs.flatten() {
        let file = dir.path().join(name);
        if file.is_file() {
            return std::fs::read(&file).map_err(|e| e.to_string());
        }
    }
    Err(format!("queue/todo/{name} has no queue/mess/*/{name}"))
}

/// Bytes from the server, read on a thread so waits can time out.
struct Reader {
    rx: Receiver<Option<Vec<u8>>>,
    buf: Vec<u8>,
    eof: bool,
}

impl Reader {
    fn spawn<R: Read + Send + 'static>(mut source: R) -> Reader {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match source.read(&mut chunk) {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(None);
                        return;
                    }
                    Ok(n) => {
                        if tx.send(Some(chunk[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Reader {
            rx,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Waits up to `until` for more bytes; false when none came.
    fn fill(&mut self, until: Instant) -> bool {
        if self.eof {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(Some(bytes)) => {
                self.buf.extend_from_slice(&bytes);
                true
            }
            Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                self.eof = true;
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
        }
    }

    fn next(&mut self) -> Result<Next, String> {
        let until = Instant::now() + REPLY_TIMEOUT;
        loop {
            if let Some(reply) = take_reply(&mut self.buf)? {
                return Ok(Next::Reply(reply));
            }
            if self.eof {
                return Ok(Next::Closed(std::mem::take(&mut self.buf)));
            }
            if !self.fill(until) {
                return Err(format!(
                    "no reply within {}s{}",
                    REPLY_TIMEOUT.as_secs(),
                    if self.buf.is_empty() {
                        String::new()
                    } else {
                        format!(" (partial: {:?})", String::from_utf8_lossy(&self.buf))
                    }
                ));
            }
        }
    }

    /// Everything until the server closes.
    fn drain(&mut self) -> Result<Vec<u8>, String> {
        let until = Instant::now() + REPLY_TIMEOUT;
        while !self.eof {
            if !self.fill(until) {
                return Err(format!(
                    "the server did not close within {}s",
                    REPLY_TIMEOUT.as_secs()
                ));
            }
        }
        Ok(std::mem::take(&mut self.buf))
    }
}

fn write_all(w: &mut dyn Write, bytes: &[u8], bytewise: bool) -> Result<(), String> {
    let result = if bytewise {
        bytes
            .chunks(1)
            .try_for_each(|b| w.write_all(b).and_then(|_| w.flush()))
    } else {
        w.write_all(bytes).and_then(|_| w.flush())
    };
    match result {
        Ok(()) => Ok(()),
        // The server may close mid-write (smuggling, 421); the trace
        // says whether it should have, through its next expectation.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Waits for `child` to exit, killing it past the timeout.
fn reap(child: &mut Child, timeout: Duration) -> Result<(), String> {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(format!(
        "the server process did not exit within {}s",
        timeout.as_secs()
    ))
}

fn wait_real(secs: u64) -> Result<(), String> {
    if secs > MAX_WAIT {
        return Err(format!(
            "W: {secs} is too long for a real clock (at most {MAX_WAIT})"
        ));
    }
    thread::sleep(Duration::from_secs(secs));
    Ok(())
}

fn stderr_file(home: &Home) -> Result<(std::fs::File, PathBuf), String> {
    let path = home.path.join("smtpd.stderr");
    let file = std::fs::File::create(&path).map_err(|e| e.to_string())?;
    Ok((file, path))
}

/// `sqmail smtpd --home DIR` with the ucspi environment, on a pipe pair.
pub struct UcspiPeer {
    home: Home,
    child: Child,
    stdin: Option<ChildStdin>,
    reader: Reader,
    stderr: PathBuf,
}

impl UcspiPeer {
    pub fn start(bin: &Path, setup: &Setup) -> Result<UcspiPeer, String> {
        let home = Home::create(bin, setup)?;
        let (err, stderr) = stderr_file(&home)?;
        let mut cmd = Command::new(bin);
        cmd.arg("smtpd")
            .arg("--home")
            .arg(&home.path)
            .env_remove("RELAYCLIENT")
            .env_remove("DATABYTES")
            .env("PROTO", "TCP")
            .env(
                "TCPREMOTEIP",
                setup.remote_ip.as_deref().unwrap_or(DEFAULT_IP),
            )
            .env(
                "TCPLOCALIP",
                setup.local_ip.as_deref().unwrap_or(DEFAULT_IP),
            )
            .env("TCPREMOTEPORT", "40000")
            .env("TCPLOCALPORT", "25")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err);
        if let Some(suffix) = &setup.relayclient {
            cmd.env("RELAYCLIENT", suffix);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        Ok(UcspiPeer {
            home,
            child,
            stdin,
            reader: Reader::spawn(stdout),
            stderr,
        })
    }

    /// What the server logged, for a failure report.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for UcspiPeer {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = reap(&mut self.child, Duration::from_secs(2));
    }
}

impl Peer for UcspiPeer {
    fn send(&mut self, bytes: &[u8], bytewise: bool) -> Result<(), String> {
        match &mut self.stdin {
            Some(w) => write_all(w, bytes, bytewise),
            None => Err("stdin already closed".into()),
        }
    }

    fn next(&mut self) -> Result<Next, String> {
        self.reader.next()
    }

    fn client_close(&mut self) -> Result<Vec<u8>, String> {
        self.stdin = None;
        let rest = self.reader.drain()?;
        reap(&mut self.child, START_TIMEOUT)?;
        Ok(rest)
    }

    fn wait(&mut self, secs: u64) -> Result<(), String> {
        wait_real(secs)
    }

    fn queued(&mut self) -> Result<Vec<QueuedMessage>, String> {
        self.home.queued()
    }
}

/// Compiles tcprules text with the core's compiler into a cdb file.
fn write_rules(path: &Path, text: &str) -> Result<(), String> {
    let records = sqmail_core::tcprules::compile(text).map_err(|e| format!("rules: {e}"))?;
    let name = path.display().to_string();
    let mut writer = cdb::CDBWriter::create(&name).map_err(|e| format!("{name}: {e}"))?;
    for (key, value) in &records {
        writer.add(key, value).map_err(|e| format!("{name}: {e}"))?;
    }
    writer.finish().map_err(|e| format!("{name}: {e}"))
}

/// A free loopback port, as far as the kernel can tell right now.
fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// `sqmail smtpd --home DIR --listen 127.0.0.1:PORT`, one TCP connection.
pub struct SocketPeer {
    home: Home,
    daemon: Child,
    stream: TcpStream,
    reader: Reader,
    stderr: PathBuf,
}

impl SocketPeer {
    pub fn start(bin: &Path, setup: &Setup) -> Result<SocketPeer, String> {
        let home = Home::create(bin, setup)?;
        let (err, stderr) = stderr_file(&home)?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(bin);
        cmd.arg("smtpd")
            .arg("--home")
            .arg(&home.path)
            .arg("--listen")
            .arg(&addr)
            .env_remove("RELAYCLIENT")
            .env_remove("DATABYTES")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        if let Some(suffix) = &setup.relayclient {
            // The daemon, as tcpserver, takes RELAYCLIENT from its rules.
            let rules = home.path.join("tcp.smtp.cdb");
            write_rules(
                &rules,
                &format!("{DEFAULT_IP}:allow,RELAYCLIENT=\"{suffix}\"\n"),
            )?;
            cmd.arg("-x").arg(&rules);
        }
        let mut daemon = cmd
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
        let until = Instant::now() + START_TIMEOUT;
        let stream = loop {
            match TcpStream::connect(&addr) {
                Ok(s) => break s,
                Err(e) => {
                    let exited = daemon.try_wait().ok().flatten();
                    if exited.is_some() || Instant::now() >= until {
                        let _ = daemon.kill();
                        let _ = daemon.wait();
                        let log = std::fs::read_to_string(&stderr).unwrap_or_default();
                        return Err(format!(
                            "cannot connect to the daemon on {addr}: {e}; its log: {log}"
                        ));
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            }
        };
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let read_half = stream.try_clone().map_err(|e| e.to_string())?;
        Ok(SocketPeer {
            home,
            daemon,
            stream,
            reader: Reader::spawn(read_half),
            stderr,
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for SocketPeer {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

impl Peer for SocketPeer {
    fn send(&mut self, bytes: &[u8], bytewise: bool) -> Result<(), String> {
        write_all(&mut self.stream, bytes, bytewise)
    }

    fn next(&mut self) -> Result<Next, String> {
        self.reader.next()
    }

    fn client_close(&mut self) -> Result<Vec<u8>, String> {
        let _ = self.stream.shutdown(Shutdown::Write);
        self.reader.drain()
    }

    fn wait(&mut self, secs: u64) -> Result<(), String> {
        wait_real(secs)
    }

    fn queued(&mut self) -> Result<Vec<QueuedMessage>, String> {
        self.home.queued()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn todo_files_parse() {
        let env = parse_todo(b"u0\0p42\0F\0Ta@b\0Tc@d\0").unwrap();
        assert_eq!(env.sender, "");
        assert_eq!(env.recipients, vec!["a@b", "c@d"]);
        assert!(parse_todo(b"u0\0p1\0").is_none());
    }
}
