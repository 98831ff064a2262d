//! The server side of RFC 5321 as a sans-IO machine.
//!
//! The host feeds it bytes (`handle_input`), the peer's end of stream
//! (`handle_eof`) and time (`handle_timeout`), and after each call drains
//! what it wants done: bytes to send (`transmit` / `advance_transmit`),
//! events (`poll_event`) and the next deadline (`poll_timeout`). Decisions
//! that belong to the host (may this sender send? is this recipient ours?
//! was the message queued?) leave as [`Event::Decide`] with a [`Ticket`];
//! until the host answers, the machine reads no further command, so replies
//! stay in order however deeply the client pipelines (RFC 2920).
//!
//! Where qmail 1.03 is laxer than RFC 5321 this machine follows the RFC:
//! HELO/EHLO must name the client (501 otherwise) and must come before MAIL
//! (503); unknown MAIL/RCPT parameters are refused (555) rather than
//! ignored; a client that keeps sending bad commands is disconnected after
//! `max_errors` of them (421).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::command::{self, BodyType, Command, MailParams};
use super::data::{BodyDecoder, BodyFailure, Decoded};
use super::Reply;
use crate::address::{self, PathError, PathKind};

/// The limits and texts of one server. Shared by all its connections.
#[derive(Clone, Debug)]
pub struct Config {
    /// `smtpgreeting` (default `me`): the text after `220 ` and `250 `.
    pub greeting: String,
    /// `databytes`: the largest message as stored, 0 for no limit.
    pub databytes: u64,
    /// The longest command line, in bytes without its line ending.
    pub max_line: usize,
    /// Recipients per message; more get 452 (RFC 5321 section 4.5.3.1.10).
    pub max_recipients: usize,
    /// Input buffered while the host decides; the host should stop reading
    /// when [`Server::input_capacity`] is 0; past it the session is closed.
    pub max_pipelined: usize,
    /// Replies buffered for a client that does not read them; past this the
    /// machine stops reading its commands until the host sends some.
    pub max_output: usize,
    /// Bad commands (5xx for syntax or order) before the session is closed.
    pub max_errors: usize,
    /// `Received:` and `Delivered-To:` lines a message may carry (qmail: 100).
    pub max_hops: usize,
    /// `timeoutsmtpd`: the longest wait for the client.
    pub idle_timeout: Duration,
}

impl Config {
    pub fn new(greeting: impl Into<String>) -> Self {
        Config {
            greeting: greeting.into(),
            databytes: 0,
            max_line: 2048,
            max_recipients: 1000,
            max_pipelined: 64 * 1024,
            max_output: 64 * 1024,
            max_errors: 20,
            max_hops: 100,
            idle_timeout: Duration::from_secs(1200),
        }
    }
}

/// Identifies one outstanding host decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ticket(u64);

/// What the machine asks its host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// May this sender start a transaction? `sender` is empty for `<>`.
    Mail {
        sender: String,
        size: Option<u64>,
        body: BodyType,
    },
    /// Is this recipient accepted? The host returns the address to queue.
    Rcpt {
        recipient: String,
        had_source_route: bool,
    },
    /// The client wants to send the message: open it in the queue (writing
    /// the `Received:` line, for which the HELO name and protocol are given).
    Data {
        helo: String,
        protocol: &'static str,
    },
    /// The whole message has been handed over as `Event::Body`: commit it.
    EndOfData,
}

/// The host's answer to a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go on, with the machine's usual reply.
    Accept,
    /// Go on, with this reply (for instance `250 ok 1700000000 qp 42`).
    AcceptWith(Reply),
    /// Refuse with this reply. A 421 also closes the session.
    Reject(Reply),
}

/// What the machine wants its host to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Decide, then call [`Server::answer`] with the ticket.
    Decide(Ticket, Request),
    /// Message bytes are waiting in [`Server::body`]; store them and call
    /// [`Server::consume_body`].
    Body,
    /// The message being received will not be committed: discard it.
    AbortMessage,
    /// Send what is left in the transmit buffer, then close the connection.
    /// A message opened and not yet committed is discarded.
    Close,
}

/// The host used the machine wrongly (a bug in the host, not the peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misuse {
    NoDecisionPending,
    WrongTicket,
}

#[derive(Debug)]
enum Phase {
    Command,
    Data(BodyDecoder),
    Closed,
}

#[derive(Debug, Default)]
struct Transaction {
    active: bool,
    recipients: usize,
    recipient_attempts: usize,
}

#[derive(Debug)]
pub struct Server {
    config: Arc<Config>,
    phase: Phase,
    input: Vec<u8>,
    transmit: Vec<u8>,
    body: Vec<u8>,
    events: VecDeque<Event>,
    pending: Option<(Ticket, Request)>,
    next_ticket: u64,
    deadline: Option<Instant>,
    helo: Option<String>,
    esmtp: bool,
    txn: Transaction,
    errors: usize,
    /// Discarding the rest of a command line that was too long.
    overlong: bool,
    /// The host was told to discard the message in DATA.
    message_aborted: bool,
}

impl Server {
    /// A new session; the greeting is ready to send.
    pub fn new(config: Arc<Config>, now: Instant) -> Self {
        let mut server = Server {
            phase: Phase::Command,
            input: Vec::new(),
            transmit: Vec::new(),
            body: Vec::new(),
            events: VecDeque::new(),
            pending: None,
            next_ticket: 0,
            deadline: Some(now + config.idle_timeout),
            helo: None,
            esmtp: false,
            txn: Transaction::default(),
            errors: 0,
            overlong: false,
            message_aborted: false,
            config,
        };
        let greeting = format!("{} ESMTP", server.config.greeting);
        server.reply(&Reply::owned(220, "", greeting));
        server
    }

    // ----- getters -----

    /// The name the client gave in HELO/EHLO.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// How many more input bytes the machine takes now. The host reads no
    /// more than this; 0 means wait for an answer or for output to drain.
    pub fn input_capacity(&self) -> usize {
        if self.is_closed() {
            return 0;
        }
        self.config.max_pipelined.saturating_sub(self.input.len())
    }

    // ----- what happens to the machine -----

    /// Bytes from the client.
    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if self.is_closed() {
            return;
        }
        self.deadline = Some(now + self.config.idle_timeout);
        self.input.extend_from_slice(data);
        self.process();
        if self.input.len() > self.config.max_pipelined && !self.is_closed() {
            self.abort_message();
            self.close_with(&Reply::new(
                421,
                "4.7.0",
                "too much pipelined input; closing connection",
            ));
        }
    }

    /// The client closed its side.
    pub fn handle_eof(&mut self, _now: Instant) {
        if !self.is_closed() {
            self.abort_message();
            self.close();
        }
    }

    /// Time has passed; a call before the deadline does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.pending.is_some() || self.is_closed() {
            return;
        }
        if self.deadline.is_some_and(|d| now >= d) {
            self.abort_message();
            let text = format!("{} timeout; closing connection", self.config.greeting);
            self.close_with(&Reply::owned(421, "4.4.2", text));
        }
    }

    /// The host's decision on an [`Event::Decide`].
    pub fn answer(&mut self, now: Instant, ticket: Ticket, verdict: Verdict) -> Result<(), Misuse> {
        let (expected, request) = self.pending.take().ok_or(Misuse::NoDecisionPending)?;
        if expected != ticket {
            self.pending = Some((expected, request));
            return Err(Misuse::WrongTicket);
        }
        self.deadline = Some(now + self.config.idle_timeout);
        if !self.is_closed() {
            self.apply(request, verdict);
            self.process();
        }
        Ok(())
    }

    // ----- what the machine wants done -----

    /// Bytes to send to the client.
    pub fn transmit(&self) -> &[u8] {
        &self.transmit
    }

    /// `n` bytes of [`Server::transmit`] were sent.
    pub fn advance_transmit(&mut self, n: usize) {
        let blocked = self.output_full();
        self.transmit.drain(..n.min(self.transmit.len()));
        shrink_if_idle(&mut self.transmit);
        if blocked && !self.output_full() {
            self.process();
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        if !self.body.is_empty() {
            return Some(Event::Body);
        }
        self.events.pop_front()
    }

    /// Message bytes, with CRLF turned into LF and dots unstuffed.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    pub fn consume_body(&mut self) {
        self.body.clear();
        shrink_if_idle(&mut self.body);
    }

    /// When the host must call [`Server::handle_timeout`]; none while a
    /// decision is pending (the host, not the client, is slow then).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (&self.pending, &self.phase) {
            (Some(_), _) | (_, Phase::Closed) => None,
            _ => self.deadline,
        }
    }

    // ----- internals -----

    fn output_full(&self) -> bool {
        self.transmit.len() >= self.config.max_output
    }

    /// Works through buffered input until it runs out or must wait.
    fn process(&mut self) {
        let input = std::mem::take(&mut self.input);
        let mut used = 0;
        while used < input.len() && self.pending.is_none() && !self.output_full() {
            let rest = &input[used..];
            used += match &mut self.phase {
                Phase::Closed => input.len() - used,
                Phase::Data(decoder) => {
                    let (n, how) = decoder.decode(rest, &mut self.body);
                    self.after_decode(how);
                    n
                }
                Phase::Command => match rest.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        self.command_line(&rest[..i]);
                        i + 1
                    }
                    None => {
                        // The limit is without the line ending: a CR last
                        // may be the start of CRLF, so it does not count
                        // yet (or a line of exactly `max_line` split before
                        // its LF would be refused and taken whole).
                        let partial = rest.strip_suffix(b"\r").unwrap_or(rest);
                        if partial.len() > self.config.max_line {
                            self.overlong = true;
                            rest.len()
                        } else {
                            break;
                        }
                    }
                },
            };
        }
        self.input = input;
        self.input.drain(..used);
        shrink_if_idle(&mut self.input);
    }

    fn after_decode(&mut self, how: Decoded) {
        let Phase::Data(decoder) = &self.phase else {
            return;
        };
        let failure = decoder.failure();
        if failure.is_some() {
            // Stop storing at once; the client is told when it finishes.
            self.abort_message_once();
        }
        match how {
            Decoded::NeedMore => {}
            Decoded::BareLineEnding => {
                self.abort_message();
                self.close_with(&Reply::new(
                    451,
                    "4.6.0",
                    "bare LF, CR or NUL in message; see https://cr.yp.to/docs/smtplf.html",
                ));
            }
            Decoded::End => {
                self.phase = Phase::Command;
                let Some(why) = failure else {
                    return self.ask(Request::EndOfData);
                };
                self.txn = Transaction::default();
                self.reply(&match why {
                    BodyFailure::TooBig => Reply::new(
                        552,
                        "5.3.4",
                        "sorry, that message size exceeds my databytes limit",
                    ),
                    BodyFailure::Looping => {
                        Reply::new(554, "5.4.6", "too many hops, this message is looping")
                    }
                });
            }
        }
    }

    fn command_line(&mut self, line: &[u8]) {
        if std::mem::take(&mut self.overlong) {
            return self.error(Reply::new(500, "5.5.2", "line too long"));
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > self.config.max_line {
            return self.error(Reply::new(500, "5.5.2", "line too long"));
        }
        if line.iter().any(|&b| b == b'\r' || b == 0) {
            return self.error(Reply::new(500, "5.5.2", "bare CR or NUL in command"));
        }
        match command::parse(line) {
            Command::Helo(arg) => self.hello(arg, false),
            Command::Ehlo(arg) => self.hello(arg, true),
            Command::Mail(arg) => self.mail(arg),
            Command::Rcpt(arg) => self.rcpt(arg),
            Command::Data(arg) => self.data(arg),
            Command::Rset(b"") => {
                self.txn = Transaction::default();
                self.reply(&Reply::new(250, "2.0.0", "flushed"));
            }
            Command::Noop => self.reply(&Reply::new(250, "2.0.0", "ok")),
            Command::Quit(b"") => {
                let text = format!("{} closing connection", self.config.greeting);
                self.close_with(&Reply::owned(221, "2.0.0", text));
            }
            Command::Vrfy(arg) if !arg.is_empty() => {
                self.reply(&Reply::new(252, "2.1.5", "send some mail, i'll try my best"))
            }
            Command::Rset(_) | Command::Quit(_) | Command::Vrfy(_) => {
                self.error(Reply::new(501, "5.5.4", "syntax error in arguments"))
            }
            Command::Help => self.reply(&Reply::new(
                214,
                "2.0.0",
                "sqmail, a qmail-compatible MTA\ncommands: HELO EHLO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT",
            )),
            Command::NotImplemented => self.error(Reply::new(502, "5.5.1", "command not implemented")),
            Command::BadSyntax(reply) => self.error(reply),
            Command::Unknown => self.error(Reply::new(500, "5.5.2", "unrecognized command")),
        }
    }

    fn hello(&mut self, arg: &[u8], extended: bool) {
        if arg.is_empty() {
            let verb = if extended { "EHLO" } else { "HELO" };
            return self.error(Reply::owned(
                501,
                "5.5.4",
                format!("{verb} requires a domain or address"),
            ));
        }
        self.helo = Some(String::from_utf8_lossy(arg).into_owned());
        self.esmtp = extended;
        self.txn = Transaction::default();
        let text = if extended {
            let size = match self.config.databytes {
                0 => "SIZE".to_string(),
                n => format!("SIZE {n}"),
            };
            format!(
                "{}\nPIPELINING\n8BITMIME\n{size}\nENHANCEDSTATUSCODES",
                self.config.greeting
            )
        } else {
            self.config.greeting.clone()
        };
        self.reply(&Reply::owned(250, "", text));
    }

    fn mail(&mut self, arg: &[u8]) {
        if self.helo.is_none() {
            return self.error(Reply::new(503, "5.5.1", "send HELO or EHLO first"));
        }
        if self.txn.active {
            return self.error(Reply::new(503, "5.5.1", "nested MAIL command"));
        }
        let (path, rest) = match address::parse_path(arg, PathKind::Reverse, false) {
            Ok(parsed) => parsed,
            Err(e) => return self.error(path_error(e, "5.1.7", "bad sender address syntax")),
        };
        let params = match command::parse_mail_params(rest) {
            Ok(p) => p,
            Err(reply) => return self.error(reply),
        };
        let MailParams { size, body } = params;
        if let Some(size) = size {
            if self.config.databytes > 0 && size > self.config.databytes {
                return self.reply(&Reply::new(
                    552,
                    "5.3.4",
                    "message size exceeds fixed maximum message size",
                ));
            }
        }
        self.ask(Request::Mail {
            sender: path.address,
            size,
            body,
        });
    }

    fn rcpt(&mut self, arg: &[u8]) {
        if !self.txn.active {
            return self.error(Reply::new(503, "5.5.1", "MAIL first"));
        }
        let (path, rest) = match address::parse_path(arg, PathKind::Forward, false) {
            Ok(parsed) => parsed,
            Err(e) => return self.error(path_error(e, "5.1.3", "bad recipient address syntax")),
        };
        if let Err(reply) = command::parse_rcpt_params(rest) {
            return self.error(reply);
        }
        self.txn.recipient_attempts += 1;
        if self.txn.recipients >= self.config.max_recipients {
            return self.reply(&Reply::new(452, "4.5.3", "too many recipients"));
        }
        self.ask(Request::Rcpt {
            recipient: path.address,
            had_source_route: path.had_source_route,
        });
    }

    fn data(&mut self, arg: &[u8]) {
        if !arg.is_empty() {
            return self.error(Reply::new(501, "5.5.4", "syntax error in arguments"));
        }
        if !self.txn.active {
            return self.error(Reply::new(503, "5.5.1", "MAIL first"));
        }
        if self.txn.recipients == 0 {
            return match self.txn.recipient_attempts {
                0 => self.error(Reply::new(503, "5.5.1", "RCPT first")),
                _ => self.reply(&Reply::new(554, "5.5.1", "no valid recipients")),
            };
        }
        let helo = self.helo.clone().unwrap_or_default();
        let protocol = if self.esmtp { "ESMTP" } else { "SMTP" };
        self.ask(Request::Data { helo, protocol });
    }

    /// Carries out the host's verdict on `request`.
    fn apply(&mut self, request: Request, verdict: Verdict) {
        let (accepted, reply) = match verdict {
            Verdict::Accept => (true, None),
            Verdict::AcceptWith(reply) => (true, Some(reply)),
            Verdict::Reject(reply) => (false, Some(reply)),
        };
        let default = match (&request, accepted) {
            (Request::Mail { .. }, true) => {
                self.txn.active = true;
                Reply::new(250, "2.1.0", "ok")
            }
            (Request::Rcpt { .. }, true) => {
                self.txn.recipients += 1;
                Reply::new(250, "2.1.5", "ok")
            }
            (Request::Data { .. }, true) => {
                self.phase = Phase::Data(BodyDecoder::new(
                    self.config.databytes,
                    self.config.max_hops,
                ));
                self.message_aborted = false;
                Reply::new(354, "", "go ahead, end with <CRLF>.<CRLF>")
            }
            (Request::EndOfData, true) => {
                self.txn = Transaction::default();
                Reply::new(250, "2.0.0", "ok")
            }
            (Request::Data { .. } | Request::EndOfData, false) => {
                self.txn = Transaction::default();
                Reply::new(451, "4.3.0", "message not accepted")
            }
            (_, false) => Reply::new(550, "5.7.1", "refused"),
        };
        let reply = reply.unwrap_or(default);
        if reply.closes() {
            self.abort_message();
            self.close_with(&reply);
        } else {
            self.reply(&reply);
        }
    }

    fn ask(&mut self, request: Request) {
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        self.pending = Some((ticket, request.clone()));
        self.events.push_back(Event::Decide(ticket, request));
    }

    fn reply(&mut self, reply: &Reply) {
        reply.write_to(&mut self.transmit);
    }

    /// A reply to a bad command; too many of them end the session.
    fn error(&mut self, reply: Reply) {
        self.reply(&reply);
        self.errors += 1;
        if self.errors >= self.config.max_errors {
            self.close_with(&Reply::new(
                421,
                "4.7.0",
                "too many errors; closing connection",
            ));
        }
    }

    /// Drops the message being received, if any, and leaves DATA.
    fn abort_message(&mut self) {
        if matches!(self.phase, Phase::Data(_)) {
            self.abort_message_once();
            self.phase = Phase::Command;
        }
    }

    /// Tells the host, once per message, to discard it.
    fn abort_message_once(&mut self) {
        self.body.clear();
        if !std::mem::replace(&mut self.message_aborted, true) {
            self.events.push_back(Event::AbortMessage);
        }
    }

    fn close_with(&mut self, reply: &Reply) {
        self.reply(reply);
        self.close();
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.input.clear();
        self.events.push_back(Event::Close);
    }
}

fn path_error(e: PathError, enhanced: &'static str, syntax: &'static str) -> Reply {
    match e {
        PathError::Syntax => Reply::new(501, enhanced, syntax),
        PathError::TooLong => Reply::new(501, enhanced, "path too long"),
        PathError::NonAscii => Reply::new(553, "5.6.7", "non-ASCII address needs SMTPUTF8"),
    }
}

/// Idle sessions keep no large buffers: memory per idle connection matters.
fn shrink_if_idle(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > 4096 {
        *buf = Vec::new();
    }
}
