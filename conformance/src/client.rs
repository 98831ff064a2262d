//! Client traces: what our SMTP client ([`sqmail_core::smtp::client`])
//! says to a scripted server, and the qmail-remote reports it gives.
//!
//! ```text
//! # RFC 2920 section 3.1: MAIL, RCPT and DATA in one group
//! @mail <a@me.example> <b@mx.example>
//! @body Subject: x\n\nhi\n
//! S: 220 mx.example ESMTP
//! C: EHLO me.example
//! S: 250-mx.example
//! S: 250 PIPELINING
//! C: MAIL FROM:<a@me.example>
//! C: RCPT TO:<b@mx.example>
//! C: DATA
//! ...
//! R: r\0K192.0.2.1 accepted message.\nRemote host said: 250 ok\n\0
//! ```
//!
//! Lines, in order:
//! - `# ...` a comment; the first line names the RFC section or the
//!   qmail-remote behaviour the case pins. Blank lines are ignored.
//! - `@helo NAME` (default `me.example`), `@peer IP` (default
//!   `192.0.2.1`), `@timeout SECS` (default 1200): the
//!   [`ClientConfig`].
//! - `@mail <sender> <rcpt>... [size=N] [8bit]` one envelope; the host
//!   hands the first to the machine at once and each next one on `Ready`,
//!   then quits. `@body TEXT` is the last envelope's message (escapes as
//!   `C~` lines of the server traces; default `Subject: test\n\nhello\n`);
//!   `size` defaults to the message's size with CRLF line ends.
//! - `S: text` the server sends `text` and CRLF; consecutive `S:` lines go
//!   out in one write. `S~ text` sends `text` raw, with escapes. `S: closed`
//!   the server closes the connection.
//! - `C: text` the client's next bytes are `text` and CRLF; `C~ text` are
//!   exactly `text` (escapes).
//! - `W: N` N seconds pass without a word from the server.
//! - `R: text` the next Delivery's report (qmail-remote's, escapes).
//!
//! At the end the client must have closed, with nothing more sent or
//! reported than the trace says. Every trace also runs with the server's
//! bytes one per call and the message fed one byte per call.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqmail_core::smtp::client::{Client, ClientConfig, ClientEvent, Envelope};

use crate::run::Failure;
use crate::trace::{trace_paths, unescape, TraceError};
use crate::Report;

/// `conformance/traces/smtp-client`.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("traces")
        .join("smtp-client")
}

#[derive(Clone, Debug)]
pub struct ClientTrace {
    pub path: PathBuf,
    /// The first comment.
    pub title: String,
    pub config: ClientConfig,
    /// Each envelope with its message.
    pub messages: Vec<(Envelope, Vec<u8>)>,
    /// With their line numbers.
    pub steps: Vec<(usize, Step)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// One write from the server.
    Server(Vec<u8>),
    ServerCloses,
    /// The client's next bytes.
    Client(Vec<u8>),
    Wait(u64),
    Report(Vec<u8>),
}

const DEFAULT_BODY: &[u8] = b"Subject: test\n\nhello\n";

impl ClientTrace {
    pub fn load(path: &Path) -> Result<ClientTrace, TraceError> {
        let text = std::fs::read_to_string(path).map_err(|e| TraceError {
            file: path.to_path_buf(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        ClientTrace::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<ClientTrace, TraceError> {
        let err = |line: usize, message: String| TraceError {
            file: path.to_path_buf(),
            line,
            message,
        };
        let mut trace = ClientTrace {
            path: path.to_path_buf(),
            title: String::new(),
            config: ClientConfig {
                helo: "me.example".into(),
                timeout: Duration::from_secs(1200),
                peer: IpAddr::from([192, 0, 2, 1]),
            },
            messages: Vec::new(),
            steps: Vec::new(),
        };
        // Sizes given with `size=`, per message: the rest follow the body.
        let mut sizes: Vec<Option<u64>> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                if trace.title.is_empty() {
                    trace.title = comment.trim().to_string();
                }
                continue;
            }
            if trace.title.is_empty() {
                return Err(err(
                    n,
                    "the first line must be a comment naming the case".into(),
                ));
            }
            if let Some(directive) = line.strip_prefix('@') {
                if !trace.steps.is_empty() {
                    return Err(err(n, "setup directives come before the dialog".into()));
                }
                let (name, args) = directive.split_once(' ').unwrap_or((directive, ""));
                match name {
                    "helo" => trace.config.helo = args.to_string(),
                    "peer" => {
                        trace.config.peer =
                            args.parse().map_err(|e| err(n, format!("@peer: {e}")))?
                    }
                    "timeout" => {
                        let secs = args.parse().map_err(|e| err(n, format!("@timeout: {e}")))?;
                        trace.config.timeout = Duration::from_secs(secs);
                    }
                    "mail" => {
                        let (envelope, size) = parse_mail(args).map_err(|e| err(n, e))?;
                        trace.messages.push((envelope, DEFAULT_BODY.to_vec()));
                        sizes.push(size);
                    }
                    "body" => {
                        let Some(last) = trace.messages.last_mut() else {
                            return Err(err(n, "@body before any @mail".into()));
                        };
                        last.1 = unescape(args).map_err(|e| err(n, e))?;
                    }
                    _ => return Err(err(n, format!("unknown directive @{name}"))),
                }
                continue;
            }
            let (tag, rest) = line.split_at(line.len().min(2));
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            let step = match tag {
                "S:" if rest == "closed" => Step::ServerCloses,
                "S:" => Step::Server(format!("{rest}\r\n").into_bytes()),
                "S~" => Step::Server(unescape(rest).map_err(|e| err(n, e))?),
                "C:" => Step::Client(format!("{rest}\r\n").into_bytes()),
                "C~" => Step::Client(unescape(rest).map_err(|e| err(n, e))?),
                "W:" => Step::Wait(rest.parse().map_err(|e| err(n, format!("W: {e}")))?),
                "R:" => Step::Report(unescape(rest).map_err(|e| err(n, e))?),
                _ => return Err(err(n, format!("not a trace line: {line}"))),
            };
            // Consecutive server lines are one write.
            match (trace.steps.last_mut(), step) {
                (Some((_, Step::Server(write))), Step::Server(more)) => write.extend(more),
                (_, step) => trace.steps.push((n, step)),
            }
        }
        if trace.messages.is_empty() {
            return Err(err(0, "no @mail: the client has nothing to send".into()));
        }
        for ((envelope, body), size) in trace.messages.iter_mut().zip(sizes) {
            envelope.size = size.unwrap_or_else(|| wire_size(body));
        }
        Ok(trace)
    }

    pub fn name(&self) -> String {
        self.path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// `<sender> <rcpt>... [size=N] [8bit]`.
fn parse_mail(args: &str) -> Result<(Envelope, Option<u64>), String> {
    let mut envelope = Envelope {
        sender: Vec::new(),
        recipients: Vec::new(),
        size: 0,
        eight_bit: false,
    };
    let mut size = None;
    for (i, word) in args.split_ascii_whitespace().enumerate() {
        if let Some(path) = word.strip_prefix('<').and_then(|w| w.strip_suffix('>')) {
            match i {
                0 => envelope.sender = path.as_bytes().to_vec(),
                _ => envelope.recipients.push(path.as_bytes().to_vec()),
            }
        } else if let Some(n) = word.strip_prefix("size=") {
            size = Some(n.parse().map_err(|e| format!("size=: {e}"))?);
        } else if word == "8bit" {
            envelope.eight_bit = true;
        } else {
            return Err(format!("@mail: what is {word:?}?"));
        }
    }
    if envelope.recipients.is_empty() {
        return Err("@mail needs a sender and a recipient".into());
    }
    Ok((envelope, size))
}

/// The size as sent: every LF becomes CRLF.
fn wire_size(body: &[u8]) -> u64 {
    (body.len() + body.iter().filter(|&&b| b == b'\n').count()) as u64
}

pub fn load_dir(dir: &Path) -> Result<Vec<ClientTrace>, TraceError> {
    trace_paths(dir)?
        .iter()
        .map(|p| ClientTrace::load(p))
        .collect()
}

/// The host a trace assumes: the first envelope at once, each next one on
/// `Ready`, QUIT when none is left; the message fed whole or a byte a call.
struct Host {
    client: Client,
    now: Instant,
    bytewise: bool,
    waiting: VecDeque<(Envelope, Vec<u8>)>,
    message: Vec<u8>,
    sent: Vec<u8>,
    reports: VecDeque<Vec<u8>>,
    transcript: Vec<String>,
}

impl Host {
    fn new(trace: &ClientTrace, bytewise: bool) -> Host {
        let now = Instant::now();
        let mut host = Host {
            client: Client::new(Arc::new(trace.config.clone()), now),
            now,
            bytewise,
            waiting: trace.messages.iter().cloned().collect(),
            message: Vec::new(),
            sent: Vec::new(),
            reports: VecDeque::new(),
            transcript: Vec::new(),
        };
        host.next_envelope();
        host.drive();
        host
    }

    fn next_envelope(&mut self) {
        match self.waiting.pop_front() {
            Some((envelope, message)) => {
                self.message = message;
                if let Err(misuse) = self.client.send(self.now, envelope) {
                    self.transcript
                        .push(format!("   (send refused: {misuse:?})"));
                }
            }
            None => self.client.quit(self.now),
        }
    }

    /// Carries out what the machine asks, and collects what it sends.
    fn drive(&mut self) {
        while let Some(event) = self.client.poll_event() {
            match event {
                ClientEvent::WantBody => {
                    let message = std::mem::take(&mut self.message);
                    let piece = if self.bytewise {
                        1
                    } else {
                        message.len().max(1)
                    };
                    for chunk in message.chunks(piece) {
                        let _ = self.client.body(self.now, chunk);
                    }
                    let _ = self.client.end_body(self.now);
                }
                ClientEvent::Done(delivery) => {
                    let report = delivery.report();
                    self.transcript.push(format!("R: {}", show(&report)));
                    self.reports.push_back(report);
                }
                ClientEvent::Ready => self.next_envelope(),
                ClientEvent::Closed => self.transcript.push("   (client closed)".into()),
            }
        }
        let n = self.client.transmit().len();
        if n > 0 {
            for line in self.client.transmit().split_inclusive(|&b| b == b'\n') {
                self.transcript.push(format!("C~ {}", show(line)));
            }
            self.sent.extend_from_slice(self.client.transmit());
            self.client.advance_transmit(self.now, n);
        }
    }

    fn step(&mut self, step: &Step) -> Result<(), String> {
        match step {
            Step::Server(write) => {
                self.transcript.push(format!("S~ {}", show(write)));
                let piece = if self.bytewise { 1 } else { write.len().max(1) };
                for chunk in write.chunks(piece) {
                    self.client.handle_input(self.now, chunk);
                    self.drive();
                }
            }
            Step::ServerCloses => {
                self.transcript.push("S: closed".into());
                self.client.handle_eof(self.now);
                self.drive();
            }
            Step::Wait(secs) => {
                self.transcript.push(format!("W: {secs}"));
                self.now += Duration::from_secs(*secs);
                self.client.handle_timeout(self.now);
                self.drive();
            }
            Step::Client(expected) => {
                if !self.sent.starts_with(expected) {
                    return Err(format!(
                        "expected the client to send {}, it sent {}",
                        show(expected),
                        show(&self.sent)
                    ));
                }
                self.sent.drain(..expected.len());
            }
            Step::Report(expected) => match self.reports.pop_front() {
                Some(report) if report == *expected => {}
                Some(report) => {
                    return Err(format!(
                        "expected the report {}, got {}",
                        show(expected),
                        show(&report)
                    ))
                }
                None => return Err(format!("expected the report {}, got none", show(expected))),
            },
        }
        Ok(())
    }

    fn finish(&self) -> Result<(), String> {
        if !self.sent.is_empty() {
            return Err(format!("the client also sent {}", show(&self.sent)));
        }
        if let Some(report) = self.reports.front() {
            return Err(format!("an unexpected report {}", show(report)));
        }
        if !self.client.is_closed() {
            return Err("the client did not close the session".into());
        }
        Ok(())
    }
}

/// Bytes as a trace writes them: printable ASCII, the rest escaped.
fn show(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\0' => out.push_str("\\0"),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// Plays `trace` against the bare machine.
pub fn run(trace: &ClientTrace, bytewise: bool) -> Result<(), Failure> {
    let mut host = Host::new(trace, bytewise);
    let fail = |host: &Host, line: usize, message: String| Failure {
        trace: trace.path.display().to_string(),
        line,
        message,
        transcript: host.transcript.clone(),
    };
    for (line, step) in &trace.steps {
        host.step(step).map_err(|m| fail(&host, *line, m))?;
    }
    let last = trace.steps.last().map_or(0, |s| s.0);
    host.finish().map_err(|m| fail(&host, last, m))
}

/// Every trace, whole and byte-split.
pub fn run_corpus(traces: &[ClientTrace]) -> Report {
    let mut report = Report::default();
    for trace in traces {
        for bytewise in [false, true] {
            match run(trace, bytewise) {
                Ok(()) => report.passed += 1,
                Err(f) => {
                    let mode = if bytewise { "byte-split" } else { "whole" };
                    report.problems.push(format!("[client {mode}] {f}"));
                }
            }
        }
    }
    report
}
