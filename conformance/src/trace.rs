//! The trace format: a dialog script that reads like the protocol.
//!
//! ```text
//! # RFC 5321 Appendix D.1: a typical SMTP transaction scenario
//! @me foo.com
//! @rcpthosts foo.com
//! S: 220 foo.com
//! C: EHLO bar.com
//! S: 250
//! S+ PIPELINING
//! C: MAIL FROM:<Smith@bar.com>
//! S: 250 2.1.0
//! Q: 1 from <Smith@bar.com> to <Jones@foo.com>
//! ```
//!
//! Lines, in order:
//! - `# ...` a comment. The first line of every trace is a comment naming
//!   the RFC section or CVE the case pins (for a delivery trace, the qmail
//!   document and section). Blank lines are ignored. Two comments mean
//!   something to the Postfix cross-check (`tests/postfix.rs`) and to no
//!   other run:
//!   - `# rfc-required` the dialog's reply codes are what the RFCs require
//!     of any server, so another MTA must give the same first digits;
//!     `# rfc-required codes`: the same three-digit codes.
//!   - `# postfix: text` Postfix disagrees, and why (a known disagreement).
//! - `@name args` a setup directive (before the first dialog line):
//!   `me`, `rcpthosts`, `badmailfrom`, `databytes`, `timeout` and
//!   `localiphost` become control files; `relayclient [suffix]`,
//!   `remote-ip` and `local-ip` the connection's facts (ucspi variables);
//!   `max-recipients`, `max-errors` and `max-line` the machine's
//!   [`Config`](sqmail_core::smtp::Config), which only the bare machine can
//!   change (over the binary such a trace is skipped);
//!   `xfail TARGET reason` marks a known disagreement (reported, not hidden:
//!   the run must then fail on TARGET, so a fix is noticed).
//! - `C: text` the client sends `text` and CRLF. Consecutive `C` lines go
//!   out in one write (pipelining). `C*N: text` sends the line N times.
//! - `C~ text` the client sends `text` raw, with no CRLF added and the
//!   escapes `\r \n \t \0 \\ \xNN` and `\{N*text}` (text repeated N times).
//! - `S: NNN [prefix]` the next reply (multi-line counts as one) has code
//!   NNN and its first line's text starts with `prefix` (for instance an
//!   RFC 3463 code: `S: 250 2.1.0`). `S*N: NNN [prefix]` expects N such.
//! - `S+ text` / `S! text` some line / no line of the last reply starts
//!   with `text` (EHLO keywords).
//! - `S: closed` the server closes the connection, with no further reply.
//! - `Q: N [from <sender> to <rcpt>...]` N messages have been queued so
//!   far in this session, the last one with this envelope.
//! - `Q~ text` the last queued message contains `text` (escapes as `C~`;
//!   the queue stores LF line endings).
//! - `W: N` N seconds pass without a word from the client.
//!
//! A trace without `S: closed` ends with the client closing its side; the
//! server must then close without another reply.
//!
//! # Delivery traces
//!
//! A trace in `traces/delivery/` goes on where the SMTP dialog ends: every
//! message the session queued is put into a real queue on disk (as
//! qmail-queue does, invoked from network), and the scheduler and local
//! delivery run on a virtual clock that starts at
//! [`T0`](crate::delivery::T0); nothing sleeps. The dialog runs on the bare
//! machine only, whole and byte-split. `@me` is also the queue's host: its
//! one `locals` entry, `bouncehost` and `doublebouncehost`. Remote
//! delivery is held, as in the daemon: mail for other hosts stays queued.
//!
//! ```text
//! # qmail-local(8): a message delivered to a Maildir
//! @me foo.com
//! @mailbox joe
//! @dotqmail joe-later |exit 111\n
//! S: 220 foo.com
//! ...
//! C: QUIT
//! S: 221 2.0.0
//! S: closed
//! T: 0
//! M: joe 1 Return-Path: <a@bar.com>\nDelivered-To: joe@foo.com\n
//! L: delivery 1: success
//! ```
//!
//! Setup directives, only in delivery traces:
//! - `@mailbox NAME` a local user NAME with a home and `Maildir/`, given
//!   mail through `users/assign` lines `=NAME` and `+NAME-` (dash `-`), so
//!   `NAME` and `NAME-ext` reach him. Every other local part goes through
//!   a `+` catch-all line to an alias home with no `.qmail-default`, so it
//!   bounces: `Sorry, no mailbox here by that name. (#5.1.1)`. As root,
//!   NAME is a made-up uid, since deliveries never run as uid 0. NAME is
//!   lowercase letters, digits, `_` and `.`.
//! - `@dotqmail NAME-EXT text` writes `.qmail-EXT` in the home of NAME (a
//!   `@mailbox` declared before), mode 0644; `text` takes the escapes of
//!   `C~`, so `|exit 111\n` is one program line.
//!
//! Lines after the dialog (no dialog line may follow them):
//! - `T: N` the queue runs at virtual time T0+N seconds: new messages are
//!   taken from `todo/`, and every action of the scheduler is carried out
//!   at once, its answer fed back, until nothing is left to do at that
//!   time (messages that deliveries queue, bounces and forwards, included).
//!   N never goes down from one `T:` to the next.
//! - `M: NAME N [text]` NAME's `Maildir/new` holds N messages, one of them
//!   containing `text` (escapes as `C~`).
//! - `L: text` / `L! text` some log line of qmail-send's so far / no log
//!   line contains `text`.
//! - `B: N [text]` N bounces (messages with the sender `<>`) are in the
//!   queue, the last one queued containing `text` (escapes as `C~`).
//!
//! A delivery trace runs the queue (`T:`) at least once; before the first
//! `T:` the dialog's messages wait in `todo/`.

use std::fmt;
use std::path::{Path, PathBuf};

/// A trace that cannot be read, with the file and line that say why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

impl std::error::Error for TraceError {}

/// Where a run goes: which targets a setting or an `xfail` applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// `Server` + `Reception<MemoryStore>` in memory.
    Machine,
    /// `sqmail smtpd --listen` over TCP.
    Socket,
    /// `sqmail smtpd` as a ucspi child on stdin/stdout.
    Ucspi,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Machine => "machine",
            Target::Socket => "socket",
            Target::Ucspi => "ucspi",
        }
    }

    fn parse(s: &str) -> Option<Target> {
        [Target::Machine, Target::Socket, Target::Ucspi]
            .into_iter()
            .find(|t| t.name() == s)
    }
}

/// The setup a trace asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Setup {
    pub me: Option<String>,
    pub localiphost: Option<String>,
    /// `None`: no rcpthosts file (qmail 1.03 then accepts every recipient).
    pub rcpthosts: Option<Vec<String>>,
    pub badmailfrom: Vec<String>,
    pub databytes: Option<u64>,
    /// `timeoutsmtpd` in seconds.
    pub timeout: Option<u64>,
    /// `RELAYCLIENT`, with its suffix.
    pub relayclient: Option<String>,
    pub remote_ip: Option<String>,
    pub local_ip: Option<String>,
    pub max_recipients: Option<usize>,
    pub max_errors: Option<usize>,
    pub max_line: Option<usize>,
    /// Targets on which this trace is known to fail, and why.
    pub xfail: Vec<(Target, String)>,
    /// `@mailbox` users, in order (delivery traces).
    pub mailboxes: Vec<String>,
    /// `@dotqmail` files (delivery traces).
    pub dotqmails: Vec<DotQmail>,
}

/// A `.qmail-EXT` file in a `@mailbox` user's home.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DotQmail {
    /// The `@mailbox` user whose home holds it.
    pub user: String,
    /// The file is `.qmail-` followed by this.
    pub ext: String,
    pub contents: Vec<u8>,
}

/// Which corpus a trace belongs to, and so which lines it may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corpus {
    /// `traces/smtp/`: an SMTP dialog only.
    Smtp,
    /// `traces/delivery/`: a dialog, then the queue and local delivery.
    Delivery,
}

impl Corpus {
    /// The corpus of a trace file: those in a directory named `delivery`
    /// are delivery traces, all others SMTP traces.
    pub fn of(path: &Path) -> Corpus {
        match path.parent().and_then(Path::file_name) {
            Some(dir) if dir == "delivery" => Corpus::Delivery,
            _ => Corpus::Smtp,
        }
    }
}

/// The name the traces' server has unless `@me` says otherwise.
pub const DEFAULT_ME: &str = "mx.test.example";
/// The client's and server's addresses unless the trace says otherwise.
pub const DEFAULT_IP: &str = "127.0.0.1";

impl Setup {
    pub fn me(&self) -> &str {
        self.me.as_deref().unwrap_or(DEFAULT_ME)
    }

    /// The control files, by name below `control/`, that express this setup.
    pub fn control_files(&self) -> Vec<(&'static str, String)> {
        let mut files = vec![("me", format!("{}\n", self.me()))];
        if let Some(l) = &self.localiphost {
            files.push(("localiphost", format!("{l}\n")));
        }
        if let Some(hosts) = &self.rcpthosts {
            files.push(("rcpthosts", lines(hosts)));
        }
        if !self.badmailfrom.is_empty() {
            files.push(("badmailfrom", lines(&self.badmailfrom)));
        }
        if let Some(n) = self.databytes {
            files.push(("databytes", format!("{n}\n")));
        }
        if let Some(n) = self.timeout {
            files.push(("timeoutsmtpd", format!("{n}\n")));
        }
        files
    }

    /// Why this setup cannot be expressed on `target`, if it cannot.
    pub fn unsupported_on(&self, target: Target) -> Option<String> {
        if target == Target::Machine {
            return None;
        }
        let mut knobs = Vec::new();
        if self.max_recipients.is_some() {
            knobs.push("@max-recipients");
        }
        if self.max_errors.is_some() {
            knobs.push("@max-errors");
        }
        if self.max_line.is_some() {
            knobs.push("@max-line");
        }
        if target == Target::Socket {
            // The daemon learns the addresses from the socket (loopback).
            if self.remote_ip.as_deref().is_some_and(|ip| ip != DEFAULT_IP) {
                knobs.push("@remote-ip");
            }
            if self.local_ip.as_deref().is_some_and(|ip| ip != DEFAULT_IP) {
                knobs.push("@local-ip");
            }
        }
        (!knobs.is_empty()).then(|| format!("{} only apply to the bare machine", knobs.join(", ")))
    }

    pub fn xfail(&self, target: Target) -> Option<&str> {
        self.xfail
            .iter()
            .find(|(t, _)| *t == target)
            .map(|(_, why)| why.as_str())
    }
}

fn lines(v: &[String]) -> String {
    v.iter().map(|l| format!("{l}\n")).collect()
}

/// An envelope as a trace names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedEnvelope {
    pub sender: String,
    pub recipients: Vec<String>,
}

/// One dialog step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Bytes the client sends in one write.
    Send(Vec<u8>),
    /// The next reply's code and first-line text prefix.
    Reply { code: u16, prefix: String },
    /// Some line (`present`) or no line of the last reply starts with `text`.
    ReplyLine { text: String, present: bool },
    /// The server closes the connection.
    Closed,
    /// Messages queued so far, and the last one's envelope.
    Queued {
        count: usize,
        envelope: Option<ExpectedEnvelope>,
    },
    /// The last queued message contains these bytes.
    QueuedContains(Vec<u8>),
    /// Seconds pass.
    Wait(u64),
    /// After the dialog of a delivery trace: the queue runs, or a check.
    Delivery(DeliveryStep),
}

/// The lines that follow the dialog in a delivery trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryStep {
    /// `T: N`: the queue runs at virtual time T0 + N seconds.
    Run(u64),
    /// `M: NAME N [text]`.
    Maildir {
        user: String,
        count: usize,
        text: Option<Vec<u8>>,
    },
    /// `L: text` (`present`) or `L! text`.
    Log { text: String, present: bool },
    /// `B: N [text]`.
    Bounces { count: usize, text: Option<Vec<u8>> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// 1-based line in the trace file (the first line of a merged write).
    pub line: usize,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    pub path: PathBuf,
    /// The first comment line, without `#`.
    pub title: String,
    pub corpus: Corpus,
    pub setup: Setup,
    pub steps: Vec<Step>,
    /// `# rfc-required [codes]`: how another MTA's replies must match.
    pub rfc_required: Option<CodeMatch>,
    /// `# postfix: text` lines, without the prefix.
    pub postfix_notes: Vec<String>,
}

/// How much of a reply code another MTA must share with the trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeMatch {
    /// `# rfc-required`: the first digit (success, more input, transient,
    /// permanent).
    FirstDigit,
    /// `# rfc-required codes`: all three digits.
    Exact,
}

impl CodeMatch {
    pub fn agrees(self, expected: u16, got: u16) -> bool {
        match self {
            CodeMatch::FirstDigit => expected / 100 == got / 100,
            CodeMatch::Exact => expected == got,
        }
    }
}

impl Trace {
    pub fn name(&self) -> String {
        self.path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn load(path: &Path) -> Result<Trace, TraceError> {
        let text = std::fs::read_to_string(path).map_err(|e| TraceError {
            file: path.to_path_buf(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        Trace::parse(path, &text)
    }

    /// Parses a trace of the corpus its path says ([`Corpus::of`]).
    pub fn parse(path: &Path, text: &str) -> Result<Trace, TraceError> {
        Trace::parse_in(path, text, Corpus::of(path))
    }

    /// Parses a trace of `corpus`, whatever its path.
    pub fn parse_in(path: &Path, text: &str, corpus: Corpus) -> Result<Trace, TraceError> {
        let mut parser = Parser {
            path,
            corpus,
            setup: Setup::default(),
            steps: Vec::new(),
            title: None,
            last_was_send: false,
            seen_reply: false,
            last_run: None,
            rfc_required: None,
            postfix_notes: Vec::new(),
        };
        for (i, line) in text.lines().enumerate() {
            parser.line(i + 1, line)?;
        }
        let Some(title) = parser.title.take() else {
            return Err(parser.err(0, "empty trace"));
        };
        if !parser
            .steps
            .iter()
            .any(|s| !matches!(s.action, Action::Wait(_) | Action::Delivery(_)))
        {
            return Err(parser.err(0, "trace has no dialog"));
        }
        if corpus == Corpus::Delivery && parser.last_run.is_none() {
            return Err(parser.err(0, "a delivery trace runs the queue (`T: N`) at least once"));
        }
        Ok(Trace {
            path: path.to_path_buf(),
            title,
            corpus,
            setup: parser.setup,
            steps: parser.steps,
            rfc_required: parser.rfc_required,
            postfix_notes: parser.postfix_notes,
        })
    }
}

/// Every `*.trace` file under `dir`, sorted by name.
pub fn load_dir(dir: &Path) -> Result<Vec<Trace>, TraceError> {
    trace_paths(dir)?.iter().map(|p| Trace::load(p)).collect()
}

/// The `*.trace` files in `dir`, sorted.
pub fn trace_paths(dir: &Path) -> Result<Vec<PathBuf>, TraceError> {
    let entries = std::fs::read_dir(dir).map_err(|e| TraceError {
        file: dir.to_path_buf(),
        line: 0,
        message: format!("cannot list: {e}"),
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "trace"))
        .collect();
    paths.sort();
    Ok(paths)
}

struct Parser<'a> {
    path: &'a Path,
    corpus: Corpus,
    setup: Setup,
    steps: Vec<Step>,
    title: Option<String>,
    last_was_send: bool,
    seen_reply: bool,
    /// The last `T: N`'s N.
    last_run: Option<u64>,
    rfc_required: Option<CodeMatch>,
    postfix_notes: Vec<String>,
}

impl Parser<'_> {
    fn err(&self, line: usize, message: impl Into<String>) -> TraceError {
        TraceError {
            file: self.path.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    fn line(&mut self, n: usize, line: &str) -> Result<(), TraceError> {
        if self.title.is_none() {
            return match line.strip_prefix('#') {
                Some(t) if !t.trim().is_empty() => {
                    self.title = Some(t.trim().to_string());
                    Ok(())
                }
                _ => Err(self.err(
                    n,
                    "a trace starts with a comment naming its RFC section or CVE",
                )),
            };
        }
        if let Some(comment) = line.strip_prefix('#') {
            return self.comment(n, comment.trim());
        }
        if line.trim().is_empty() {
            return Ok(());
        }
        if let Some(directive) = line.strip_prefix('@') {
            if !self.steps.is_empty() {
                return Err(self.err(n, "setup directives come before the dialog"));
            }
            return self.directive(n, directive);
        }
        let (tag, rest) = split_tag(line).ok_or_else(|| {
            let expected = match self.corpus {
                Corpus::Smtp => "C:, C~, S:, S+, S!, Q:, Q~, W: or @",
                Corpus::Delivery => "C:, C~, S:, S+, S!, Q:, Q~, W:, T:, M:, L:, L!, B: or @",
            };
            self.err(n, format!("unknown line {line:?}: expected {expected}"))
        })?;
        let after_dialog = matches!(
            self.steps.last(),
            Some(Step {
                action: Action::Delivery(_),
                ..
            })
        );
        if after_dialog && !matches!(tag, Tag::Delivery(_)) {
            return Err(self.err(
                n,
                "the dialog comes first: no dialog line after `T:`, `M:`, `L:` or `B:`",
            ));
        }
        match tag {
            Tag::Delivery(tag) => {
                if self.corpus != Corpus::Delivery {
                    return Err(self.err(
                        n,
                        format!(
                            "`{tag}` lines belong to delivery traces: only a trace in \
                             traces/delivery/ runs the queue"
                        ),
                    ));
                }
                let step = self.delivery(n, tag, rest)?;
                self.push(n, Action::Delivery(step));
            }
            Tag::Send(repeat) => {
                let mut bytes = Vec::new();
                for _ in 0..repeat {
                    bytes.extend_from_slice(rest.as_bytes());
                    bytes.extend_from_slice(b"\r\n");
                }
                self.send(n, bytes);
            }
            Tag::Raw => {
                let bytes = unescape(rest).map_err(|m| self.err(n, m))?;
                if bytes.is_empty() {
                    return Err(self.err(n, "C~ sends nothing"));
                }
                self.send(n, bytes);
            }
            Tag::Reply(repeat) => {
                let action = self.reply(n, rest)?;
                if action == Action::Closed && repeat != 1 {
                    return Err(self.err(n, "S*N: closed makes no sense"));
                }
                for _ in 0..repeat {
                    self.push(n, action.clone());
                }
                self.seen_reply |= matches!(action, Action::Reply { .. });
            }
            Tag::ReplyLine(present) => {
                if !self.seen_reply {
                    return Err(self.err(n, "S+/S! refer to a reply, but none was expected yet"));
                }
                if rest.is_empty() {
                    return Err(self.err(n, "S+/S! need a text"));
                }
                let text = rest.to_string();
                self.push(n, Action::ReplyLine { text, present });
            }
            Tag::Queued => {
                let action = self.queued(n, rest)?;
                self.push(n, action);
            }
            Tag::QueuedContains => {
                let bytes = unescape(rest).map_err(|m| self.err(n, m))?;
                if bytes.is_empty() {
                    return Err(self.err(n, "Q~ needs a text"));
                }
                self.push(n, Action::QueuedContains(bytes));
            }
            Tag::Wait => {
                let secs = rest
                    .strip_suffix('s')
                    .unwrap_or(rest)
                    .parse()
                    .map_err(|_| self.err(n, format!("W: wants seconds, got {rest:?}")))?;
                self.push(n, Action::Wait(secs));
            }
        }
        Ok(())
    }

    /// A comment after the title: free text, but for `rfc-required` and
    /// `postfix:`.
    fn comment(&mut self, n: usize, text: &str) -> Result<(), TraceError> {
        if let Some(note) = text.strip_prefix("postfix:") {
            if note.trim().is_empty() {
                return Err(self.err(n, "`# postfix:` needs the disagreement and why"));
            }
            self.postfix_notes.push(note.trim().to_string());
            return Ok(());
        }
        let Some(rest) = text.strip_prefix("rfc-required") else {
            return Ok(());
        };
        let how = match rest.trim() {
            "" => CodeMatch::FirstDigit,
            "codes" => CodeMatch::Exact,
            // `# rfc-required-ish ...`: some other word, a plain comment.
            _ if !rest.starts_with(' ') => return Ok(()),
            other => {
                return Err(self.err(n, format!("`# rfc-required [codes]`: unknown {other:?}")))
            }
        };
        if self.corpus != Corpus::Smtp {
            return Err(self.err(n, "`# rfc-required` marks SMTP traces only"));
        }
        if self.rfc_required.replace(how).is_some() {
            return Err(self.err(n, "`# rfc-required` twice"));
        }
        Ok(())
    }

    fn delivery(&mut self, n: usize, tag: DTag, rest: &str) -> Result<DeliveryStep, TraceError> {
        let text = |t: &str| -> Result<Option<Vec<u8>>, TraceError> {
            if t.is_empty() {
                return Ok(None);
            }
            unescape(t).map(Some).map_err(|m| self.err(n, m))
        };
        let count = |w: &str, text: &Option<Vec<u8>>| -> Result<usize, TraceError> {
            let count = w.parse().map_err(|_| {
                self.err(
                    n,
                    format!("`{}` wants a message count, got {w:?}", tag.name()),
                )
            })?;
            if count == 0 && text.is_some() {
                return Err(self.err(
                    n,
                    format!("`{tag} 0 text`: no message can contain the text"),
                ));
            }
            Ok(count)
        };
        Ok(match tag {
            DTag::Run => {
                let secs: u64 = rest
                    .trim()
                    .parse()
                    .map_err(|_| self.err(n, format!("T: wants seconds after T0, got {rest:?}")))?;
                if let Some(last) = self.last_run.filter(|&last| secs < last) {
                    return Err(self.err(
                        n,
                        format!("time does not go back: T: {secs} after T: {last}"),
                    ));
                }
                self.last_run = Some(secs);
                DeliveryStep::Run(secs)
            }
            DTag::Maildir => {
                let (user, rest) = first_word(rest);
                if !self.setup.mailboxes.iter().any(|m| m == user) {
                    return Err(self.err(
                        n,
                        format!("M: NAME N [text]: NAME must be a @mailbox, got {user:?}"),
                    ));
                }
                let (n_msgs, rest) = first_word(rest);
                let text = text(rest)?;
                DeliveryStep::Maildir {
                    user: user.to_string(),
                    count: count(n_msgs, &text)?,
                    text,
                }
            }
            DTag::Log(present) => {
                if rest.is_empty() {
                    return Err(self.err(n, format!("`{}` needs a text", tag.name())));
                }
                DeliveryStep::Log {
                    text: rest.to_string(),
                    present,
                }
            }
            DTag::Bounces => {
                let (n_msgs, rest) = first_word(rest);
                let text = text(rest)?;
                DeliveryStep::Bounces {
                    count: count(n_msgs, &text)?,
                    text,
                }
            }
        })
    }

    fn send(&mut self, n: usize, bytes: Vec<u8>) {
        if self.last_was_send {
            if let Some(Step {
                action: Action::Send(prev),
                ..
            }) = self.steps.last_mut()
            {
                prev.extend_from_slice(&bytes);
                return;
            }
        }
        self.steps.push(Step {
            line: n,
            action: Action::Send(bytes),
        });
        self.last_was_send = true;
    }

    fn push(&mut self, n: usize, action: Action) {
        self.last_was_send = false;
        self.steps.push(Step { line: n, action });
    }

    fn reply(&self, n: usize, rest: &str) -> Result<Action, TraceError> {
        if rest == "closed" {
            return Ok(Action::Closed);
        }
        let (code, prefix) = rest.split_once(' ').unwrap_or((rest, ""));
        let code = match code.parse::<u16>() {
            Ok(c) if code.len() == 3 && (200..=599).contains(&c) => c,
            _ => {
                return Err(self.err(
                    n,
                    format!("S: wants a reply code 200..599 or `closed`, got {code:?}"),
                ))
            }
        };
        Ok(Action::Reply {
            code,
            prefix: prefix.to_string(),
        })
    }

    fn queued(&self, n: usize, rest: &str) -> Result<Action, TraceError> {
        let mut words = rest.split_whitespace();
        let count = words
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| self.err(n, format!("Q: wants a message count, got {rest:?}")))?;
        let Some(from) = words.next() else {
            return Ok(Action::Queued {
                count,
                envelope: None,
            });
        };
        let bad = |what: &str| {
            self.err(
                n,
                format!("Q: {what}; the form is `Q: N from <s> to <r>...`"),
            )
        };
        if from != "from" {
            return Err(bad("expected `from`"));
        }
        let sender = words
            .next()
            .and_then(angle)
            .ok_or_else(|| bad("expected <sender>"))?;
        if words.next() != Some("to") {
            return Err(bad("expected `to`"));
        }
        let recipients = words
            .map(|w| angle(w).ok_or_else(|| bad("recipients are written <addr>")))
            .collect::<Result<Vec<_>, _>>()?;
        if recipients.is_empty() {
            return Err(bad("a queued message has recipients"));
        }
        Ok(Action::Queued {
            count,
            envelope: Some(ExpectedEnvelope { sender, recipients }),
        })
    }

    fn directive(&mut self, n: usize, text: &str) -> Result<(), TraceError> {
        let (name, args) = text.split_once(' ').unwrap_or((text, ""));
        let args = args.trim();
        let words: Vec<String> = args.split_whitespace().map(str::to_string).collect();
        let path = self.path;
        let err = |message: String| TraceError {
            file: path.to_path_buf(),
            line: n,
            message,
        };
        let one = |what: &str| -> Result<String, TraceError> {
            match words.as_slice() {
                [w] => Ok(w.clone()),
                _ => Err(err(format!("@{name} takes one {what}"))),
            }
        };
        let number = |what: &str| -> Result<u64, TraceError> {
            one(what)?
                .parse()
                .map_err(|_| err(format!("@{name} takes a number")))
        };
        let s = &mut self.setup;
        match name {
            "me" => s.me = Some(one("host name")?),
            "localiphost" => s.localiphost = Some(one("host name")?),
            "rcpthosts" => s.rcpthosts = Some(words.clone()),
            "badmailfrom" => {
                if words.is_empty() {
                    return Err(err("@badmailfrom needs addresses".into()));
                }
                s.badmailfrom.extend(words.iter().cloned());
            }
            "databytes" => s.databytes = Some(number("size")?),
            "timeout" => s.timeout = Some(number("seconds")?),
            "relayclient" => match words.as_slice() {
                [] => s.relayclient = Some(String::new()),
                [suffix] => s.relayclient = Some(suffix.clone()),
                _ => return Err(err("@relayclient takes at most a suffix".into())),
            },
            "remote-ip" => s.remote_ip = Some(one("address")?),
            "local-ip" => s.local_ip = Some(one("address")?),
            "max-recipients" => s.max_recipients = Some(number("count")? as usize),
            "max-errors" => s.max_errors = Some(number("count")? as usize),
            "max-line" => s.max_line = Some(number("length")? as usize),
            "xfail" => {
                let (target, why) = args.split_once(' ').unwrap_or((args, ""));
                let target = Target::parse(target).ok_or_else(|| {
                    err("@xfail TARGET reason: TARGET is machine, socket or ucspi".into())
                })?;
                if why.trim().is_empty() {
                    return Err(err("@xfail needs the reason (the disagreement)".into()));
                }
                s.xfail.push((target, why.trim().to_string()));
            }
            "mailbox" | "dotqmail" if self.corpus != Corpus::Delivery => {
                return Err(err(format!(
                    "@{name} belongs to delivery traces: only a trace in traces/delivery/ \
                     has mailboxes"
                )))
            }
            "mailbox" => {
                let user = one("user name")?;
                let fine =
                    |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.';
                if !user.bytes().all(fine) || user.starts_with('.') {
                    return Err(err(format!(
                        "@mailbox {user:?}: a name is lowercase letters, digits, _ and . \
                         (not first), so that users/assign can hold it"
                    )));
                }
                if s.mailboxes.contains(&user) {
                    return Err(err(format!("@mailbox {user} twice")));
                }
                s.mailboxes.push(user);
            }
            "dotqmail" => {
                let (file, text) = first_word(args);
                let Some((user, ext)) = file.split_once('-') else {
                    return Err(err("@dotqmail NAME-EXT text: no - in NAME-EXT".into()));
                };
                if !s.mailboxes.iter().any(|m| m == user) {
                    return Err(err(format!(
                        "@dotqmail: {user:?} is no @mailbox declared before it"
                    )));
                }
                if ext.is_empty() || ext.contains('/') {
                    return Err(err(format!("@dotqmail: bad extension {ext:?}")));
                }
                let contents = unescape(text).map_err(err)?;
                if contents.is_empty() {
                    return Err(err("@dotqmail NAME-EXT text: the text is missing".into()));
                }
                s.dotqmails.push(DotQmail {
                    user: user.to_string(),
                    ext: ext.to_string(),
                    contents,
                });
            }
            _ => return Err(err(format!("unknown directive @{name}"))),
        }
        Ok(())
    }
}

/// The lines of a delivery trace after its dialog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DTag {
    Run,
    Maildir,
    Log(bool),
    Bounces,
}

impl DTag {
    fn name(self) -> &'static str {
        match self {
            DTag::Run => "T:",
            DTag::Maildir => "M:",
            DTag::Log(true) => "L:",
            DTag::Log(false) => "L!",
            DTag::Bounces => "B:",
        }
    }
}

impl fmt::Display for DTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A word, and the rest of `text` after the spaces that follow it.
fn first_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.split_once(' ') {
        Some((word, rest)) => (word, rest.trim_start()),
        None => (text, ""),
    }
}

enum Tag {
    Delivery(DTag),
    Send(usize),
    Raw,
    Reply(usize),
    ReplyLine(bool),
    Queued,
    QueuedContains,
    Wait,
}

/// `C: x`, `C*3: x`, `C~ x`, `S: x`, `S*3: x`, `S+ x`, `S! x`, `Q: x`,
/// `Q~ x`, `W: x`, and `T: x`, `M: x`, `L: x`, `L! x`, `B: x`. One space
/// after the tag is optional padding.
fn split_tag(line: &str) -> Option<(Tag, &str)> {
    let mut chars = line.char_indices();
    let (_, letter) = chars.next()?;
    let rest = &line[1..];
    let (tag, after) = match (letter, rest.chars().next()?) {
        ('C', ':') => (Tag::Send(1), &rest[1..]),
        ('C', '~') => (Tag::Raw, &rest[1..]),
        ('S', ':') => (Tag::Reply(1), &rest[1..]),
        ('S', '+') => (Tag::ReplyLine(true), &rest[1..]),
        ('S', '!') => (Tag::ReplyLine(false), &rest[1..]),
        ('Q', ':') => (Tag::Queued, &rest[1..]),
        ('Q', '~') => (Tag::QueuedContains, &rest[1..]),
        ('W', ':') => (Tag::Wait, &rest[1..]),
        ('T', ':') => (Tag::Delivery(DTag::Run), &rest[1..]),
        ('M', ':') => (Tag::Delivery(DTag::Maildir), &rest[1..]),
        ('L', ':') => (Tag::Delivery(DTag::Log(true)), &rest[1..]),
        ('L', '!') => (Tag::Delivery(DTag::Log(false)), &rest[1..]),
        ('B', ':') => (Tag::Delivery(DTag::Bounces), &rest[1..]),
        ('C' | 'S', '*') => {
            let colon = rest.find(':')?;
            let n: usize = rest[1..colon].parse().ok().filter(|&n| n > 0)?;
            let tag = if letter == 'C' {
                Tag::Send(n)
            } else {
                Tag::Reply(n)
            };
            (tag, &rest[colon + 1..])
        }
        _ => return None,
    };
    Some((tag, after.strip_prefix(' ').unwrap_or(after)))
}

fn angle(word: &str) -> Option<String> {
    word.strip_prefix('<')?
        .strip_suffix('>')
        .map(str::to_string)
}

/// The escapes of `C~` and `Q~` lines.
pub fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some(&e) = bytes.get(i) else {
            return Err("a lone \\ at the end of the line".into());
        };
        i += 1;
        match e {
            b'r' => out.push(b'\r'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'0' => out.push(0),
            b'\\' => out.push(b'\\'),
            b'x' => {
                let hex = text
                    .get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or("\\x wants two hex digits")?;
                out.push(hex);
                i += 2;
            }
            b'{' => {
                let end = text[i..].find('}').ok_or("\\{ without its }")? + i;
                let (count, what) = text[i..end]
                    .split_once('*')
                    .ok_or("\\{N*text}: missing *")?;
                let count: usize = count.parse().map_err(|_| "\\{N*text}: N is a number")?;
                if count > 1_000_000 || what.is_empty() {
                    return Err("\\{N*text}: N up to 1000000, text not empty".into());
                }
                out.extend(what.as_bytes().repeat(count));
                i = end + 1;
            }
            other => return Err(format!("unknown escape \\{}", other as char)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Trace, TraceError> {
        Trace::parse(Path::new("t.trace"), text)
    }

    #[test]
    fn rfc_required_and_postfix_notes() {
        let t = parse("# x\n# rfc-required\n# postfix: answers 250; allowed\nS: 220\n").unwrap();
        assert_eq!(t.rfc_required, Some(CodeMatch::FirstDigit));
        assert_eq!(t.postfix_notes, ["answers 250; allowed"]);
        assert_eq!(t.steps.len(), 1);
        let t = parse("# x\n# rfc-required codes\nS: 220\n").unwrap();
        assert_eq!(t.rfc_required, Some(CodeMatch::Exact));
        let t = parse("# x\n# other words, rfc-requiredness\nS: 220\n").unwrap();
        assert_eq!(t.rfc_required, None);
        assert!(t.postfix_notes.is_empty());
        assert!(parse("# x\n# rfc-required all\nS: 220\n").is_err());
        assert!(parse("# x\n# rfc-required\n# rfc-required\nS: 220\n").is_err());
        assert!(parse("# x\n# postfix:\nS: 220\n").is_err());
        // The title is only a title.
        assert_eq!(
            parse("# rfc-required\nS: 220\n").unwrap().rfc_required,
            None
        );
        assert!(CodeMatch::FirstDigit.agrees(550, 554));
        assert!(!CodeMatch::Exact.agrees(550, 554));
    }

    #[test]
    fn consecutive_client_lines_are_one_write() {
        let t = parse("# x\nS: 220\nC: EHLO a\nC~ NOOP\\r\\n\nC*2: RSET\nS: 250 2.0.0\nS+ SIZE\n")
            .unwrap();
        assert_eq!(t.steps.len(), 4);
        assert_eq!(
            t.steps[1].action,
            Action::Send(b"EHLO a\r\nNOOP\r\nRSET\r\nRSET\r\n".to_vec())
        );
        assert_eq!(t.steps[1].line, 3);
        assert_eq!(
            t.steps[2].action,
            Action::Reply {
                code: 250,
                prefix: "2.0.0".into()
            }
        );
    }

    #[test]
    fn escapes() {
        assert_eq!(unescape("a\\r\\n.\\x41\\0\\\\").unwrap(), b"a\r\n.A\0\\");
        assert_eq!(unescape("<\\{3*ab}>").unwrap(), b"<ababab>");
        assert!(unescape("\\q").is_err());
        assert!(unescape("\\x4").is_err());
        assert!(unescape("\\{3ab}").is_err());
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = parse("# x\nS: 220\nX: what\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.to_string().starts_with("t.trace:3: unknown line"), "{e}");
        assert_eq!(parse("S: 220\n").unwrap_err().line, 1);
        assert_eq!(parse("# x\nS: 22\n").unwrap_err().line, 2);
        assert_eq!(parse("# x\nS: 220\n@me x\n").unwrap_err().line, 3);
        assert_eq!(parse("# x\n@bogus 1\n").unwrap_err().line, 2);
        assert_eq!(parse("# x\nS+ SIZE\n").unwrap_err().line, 2);
        assert_eq!(parse("# x\nQ: 1 from <a> to\n").unwrap_err().line, 2);
        assert_eq!(parse("# x\n@xfail nowhere why\n").unwrap_err().line, 2);
        assert_eq!(parse("# x\n").unwrap_err().line, 0);
    }

    #[test]
    fn queue_checks() {
        let t = parse("# x\nQ: 1 from <> to <a@b> <c@d>\nQ: 0\n").unwrap();
        assert_eq!(
            t.steps[0].action,
            Action::Queued {
                count: 1,
                envelope: Some(ExpectedEnvelope {
                    sender: String::new(),
                    recipients: vec!["a@b".into(), "c@d".into()]
                })
            }
        );
    }

    fn parse_delivery(text: &str) -> Result<Trace, TraceError> {
        Trace::parse(Path::new("traces/delivery/t.trace"), text)
    }

    #[test]
    fn the_corpus_comes_from_the_directory() {
        assert_eq!(
            Corpus::of(Path::new("a/delivery/x.trace")),
            Corpus::Delivery
        );
        assert_eq!(Corpus::of(Path::new("a/smtp/x.trace")), Corpus::Smtp);
        assert_eq!(Corpus::of(Path::new("x.trace")), Corpus::Smtp);
        assert_eq!(parse("# x\nS: 220\n").unwrap().corpus, Corpus::Smtp);
    }

    #[test]
    fn delivery_lines_only_in_delivery_traces() {
        for (text, line) in [
            ("# x\nS: 220\nT: 0\n", 3),
            ("# x\nS: 220\nM: joe 1\n", 3),
            ("# x\nS: 220\nL: new msg\n", 3),
            ("# x\nS: 220\nL! new msg\n", 3),
            ("# x\nS: 220\nB: 0\n", 3),
            ("# x\n@mailbox joe\nS: 220\n", 2),
            ("# x\n@dotqmail joe-x |exit 0\nS: 220\n", 2),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains("traces/delivery/"), "{text:?}: {e}");
        }
    }

    #[test]
    fn delivery_steps() {
        let t = parse_delivery(
            "# x\n@mailbox joe\n@mailbox bob.2\n@dotqmail joe-a-b |echo hi there; exit 111\\n./Maildir/\\n\n\
             S: 220\nT: 0\nM: joe 1 Delivered-To: joe@x\\n\nM: bob.2 0\n\
             L: delivery 1: success\nL! starting delivery 2\nB: 2  a\\tb\nT: 100\nT: 100\n",
        )
        .unwrap();
        assert_eq!(t.corpus, Corpus::Delivery);
        assert_eq!(t.setup.mailboxes, ["joe", "bob.2"]);
        assert_eq!(
            t.setup.dotqmails,
            [DotQmail {
                user: "joe".into(),
                ext: "a-b".into(),
                contents: b"|echo hi there; exit 111\n./Maildir/\n".to_vec(),
            }]
        );
        let steps: Vec<Action> = t.steps.into_iter().map(|s| s.action).collect();
        let d = |step| Action::Delivery(step);
        assert_eq!(
            steps[1..],
            [
                d(DeliveryStep::Run(0)),
                d(DeliveryStep::Maildir {
                    user: "joe".into(),
                    count: 1,
                    text: Some(b"Delivered-To: joe@x\n".to_vec()),
                }),
                d(DeliveryStep::Maildir {
                    user: "bob.2".into(),
                    count: 0,
                    text: None,
                }),
                d(DeliveryStep::Log {
                    text: "delivery 1: success".into(),
                    present: true,
                }),
                d(DeliveryStep::Log {
                    text: "starting delivery 2".into(),
                    present: false,
                }),
                d(DeliveryStep::Bounces {
                    count: 2,
                    text: Some(b"a\tb".to_vec()),
                }),
                d(DeliveryStep::Run(100)),
                d(DeliveryStep::Run(100)),
            ]
        );
    }

    #[test]
    fn delivery_errors() {
        for (text, line, what) in [
            ("# x\nS: 220\nT: 0\nS: 250\n", 4, "the dialog comes first"),
            ("# x\nS: 220\nB: 0\nC: QUIT\n", 4, "the dialog comes first"),
            ("# x\nS: 220\nT: 10\nT: 9\n", 4, "time does not go back"),
            ("# x\nS: 220\nT: soon\n", 3, "T: wants seconds"),
            ("# x\nS: 220\nT: 0\nM: joe 1\n", 4, "must be a @mailbox"),
            (
                "# x\n@mailbox joe\nS: 220\nT: 0\nM: joe one\n",
                5,
                "message count",
            ),
            (
                "# x\n@mailbox joe\nS: 220\nT: 0\nM: joe 0 hi\n",
                5,
                "no message",
            ),
            ("# x\nS: 220\nT: 0\nB: 0 hi\n", 4, "no message"),
            ("# x\nS: 220\nT: 0\nL:\n", 4, "needs a text"),
            ("# x\n@dotqmail joe-x |exit 0\n", 2, "no @mailbox"),
            ("# x\n@mailbox joe\n@dotqmail joe |exit 0\n", 3, "no -"),
            ("# x\n@mailbox joe\n@dotqmail joe-x\n", 3, "text is missing"),
            (
                "# x\n@mailbox joe\n@dotqmail joe-a/b x\n",
                3,
                "bad extension",
            ),
            ("# x\n@mailbox Joe\n", 2, "lowercase"),
            ("# x\n@mailbox jo-e\n", 2, "lowercase"),
            ("# x\n@mailbox joe\n@mailbox joe\n", 3, "twice"),
            ("# x\nS: 220\n", 0, "at least once"),
            ("# x\nT: 0\n", 0, "no dialog"),
        ] {
            let e = parse_delivery(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(what), "{text:?}: {e}");
        }
    }

    #[test]
    fn setup_becomes_control_files() {
        let t = parse(
            "# x\n@me foo.com\n@rcpthosts foo.com .foo.com\n@databytes 100\n@relayclient\nS: 220\n",
        )
        .unwrap();
        let files = t.setup.control_files();
        assert!(files.contains(&("rcpthosts", "foo.com\n.foo.com\n".into())));
        assert!(files.contains(&("databytes", "100\n".into())));
        assert_eq!(t.setup.relayclient.as_deref(), Some(""));
        assert_eq!(t.setup.unsupported_on(Target::Ucspi), None);
        let t = parse("# x\n@max-recipients 2\nS: 220\n").unwrap();
        assert!(t.setup.unsupported_on(Target::Socket).is_some());
        assert!(t.setup.unsupported_on(Target::Machine).is_none());
    }
}
