//! Helpers for tests that run the real `sqmail` binary.
#![allow(dead_code)] // each test file uses its own part of this module

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn sqmail() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sqmail"))
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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
