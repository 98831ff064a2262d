//! The client side of SMTP (RFC 5321) as a sans-IO machine: what
//! qmail-remote says to a server, with ESMTP (EHLO, falling back to HELO;
//! PIPELINING, RFC 2920; SIZE, RFC 1870; 8BITMIME, RFC 6152) and several
//! transactions per connection.
//!
//! The host makes the TCP connection, creates a [`Client`], hands it an
//! [`Envelope`] with [`Client::send`] (kept until the greeting and EHLO
//! are done), feeds the message on [`ClientEvent::WantBody`], and gets one
//! [`Delivery`] per envelope: every failure, from a refused greeting to a
//! dead connection, ends as a Delivery whose texts are qmail-remote's, so
//! the host never composes one. Every wait for the server has a deadline
//! of `timeout` after the last progress, as qmail's `timeoutremote`.

mod body;
mod replies;
mod report;

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use body::BodyEncoder;
use replies::ReplyReader;
pub use replies::{ServerReply, MAX_LINE, MAX_TEXT};
pub use report::{Delivery, Status};

/// The session's fixed parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// The name in EHLO/HELO (`helohost`, else `me`).
    pub helo: String,
    /// How long to wait for the server each time (`timeoutremote`).
    pub timeout: Duration,
    /// The server's address, for the report texts.
    pub peer: IpAddr,
}

/// One message's envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The return path; empty for a bounce.
    pub sender: Vec<u8>,
    pub recipients: Vec<Vec<u8>>,
    /// The message's size as sent (with CRLF line ends), for SIZE.
    pub size: u64,
    /// Whether the message has 8-bit bytes (BODY=8BITMIME when offered).
    pub eight_bit: bool,
}

/// What the machine tells its host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// The session can take an envelope: the greeting and EHLO are done,
    /// or the last transaction finished and left the session healthy.
    Ready,
    /// The server takes the message: feed it with [`Client::body`] while
    /// [`Client::wants_body`], then [`Client::end_body`].
    WantBody,
    /// The envelope's results.
    Done(Delivery),
    /// Send what is left to transmit, then close; nothing more follows.
    Closed,
}

/// The host used the machine wrongly (a bug in the host, not the peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misuse {
    /// An envelope is already being sent or waiting.
    Busy,
    NoRecipients,
    /// Body bytes when the server has not asked for them.
    NotInData,
}

/// What the server's extensions allow (EHLO's keywords).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    pub eight_bit_mime: bool,
    /// SIZE offered; `Some(0)` means no fixed limit.
    pub size: Option<u64>,
}

impl Extensions {
    fn parse(keywords: &[String]) -> Extensions {
        let mut ext = Extensions::default();
        for line in keywords {
            let mut words = line.split_ascii_whitespace();
            let keyword = words.next().unwrap_or("").to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => ext.pipelining = true,
                "8BITMIME" => ext.eight_bit_mime = true,
                "SIZE" => ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                _ => {}
            }
        }
        ext
    }
}

/// Bytes of message kept in the transmit buffer before the host should
/// wait for the socket ([`Client::wants_body`]).
const BODY_HIGH_WATER: usize = 64 * 1024;

/// A reply the session waits for, in the order the commands went out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awaited {
    Greeting,
    Ehlo,
    Helo,
    Mail,
    Rcpt(usize),
    Data,
    /// The reply to the final dot.
    Message,
    /// The reply to the lone dot sent when no recipient was accepted.
    EmptyMessage,
    Rset,
    Quit,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Greeting and EHLO/HELO under way.
    Opening,
    Ready,
    Transaction,
    /// The message is being fed.
    Data,
    /// QUIT sent.
    Quitting,
    Closed,
}

/// One transaction's state.
#[derive(Debug)]
struct Transaction {
    envelope: Envelope,
    /// The MAIL reply, when it refused.
    mail_refused: Option<ServerReply>,
    recipients: Vec<(Status, String)>,
    /// The next RCPT to send without PIPELINING.
    next_rcpt: usize,
}

#[derive(Debug)]
pub struct Client {
    config: Arc<ClientConfig>,
    phase: Phase,
    extensions: Extensions,
    reader: ReplyReader,
    awaited: VecDeque<Awaited>,
    transmit: Vec<u8>,
    events: VecDeque<ClientEvent>,
    /// An envelope handed in before the session was ready for it.
    queued: Option<Envelope>,
    txn: Option<Transaction>,
    body: BodyEncoder,
    deadline: Option<Instant>,
    /// The host asked to QUIT while replies were outstanding: QUIT goes
    /// out when the session is next idle, never before a command it owes.
    quit_wanted: bool,
}

impl Client {
    /// A session on a connection just made: it waits for the greeting.
    pub fn new(config: Arc<ClientConfig>, now: Instant) -> Client {
        let mut client = Client {
            config,
            phase: Phase::Opening,
            extensions: Extensions::default(),
            reader: ReplyReader::default(),
            awaited: VecDeque::from([Awaited::Greeting]),
            transmit: Vec::new(),
            events: VecDeque::new(),
            queued: None,
            txn: None,
            body: BodyEncoder::default(),
            deadline: None,
            quit_wanted: false,
        };
        client.progress(now);
        client
    }

    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Whether another envelope can follow on this connection.
    pub fn is_reusable(&self) -> bool {
        !matches!(self.phase, Phase::Closed | Phase::Quitting | Phase::Data)
            && self.txn.is_none()
            && self.queued.is_none()
            && !self.quit_wanted
    }

    pub fn transmit(&self) -> &[u8] {
        &self.transmit
    }

    pub fn advance_transmit(&mut self, now: Instant, n: usize) {
        self.transmit.drain(..n.min(self.transmit.len()));
        if n > 0 {
            self.progress(now);
        }
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When [`Client::handle_timeout`] is due: while a reply is awaited or
    /// bytes wait to go out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Closed {
            return None;
        }
        if self.awaited.is_empty() && self.transmit.is_empty() {
            return None;
        }
        self.deadline
    }

    /// Sends `envelope` now, or as soon as the session is ready. On a
    /// closed session the Delivery says the connection died.
    pub fn send(&mut self, now: Instant, envelope: Envelope) -> Result<(), Misuse> {
        if envelope.recipients.is_empty() {
            return Err(Misuse::NoRecipients);
        }
        if self.queued.is_some() || self.txn.is_some() {
            return Err(Misuse::Busy);
        }
        match self.phase {
            Phase::Closed | Phase::Quitting => {
                self.events.push_back(ClientEvent::Done(Delivery::whole(
                    Status::Temporary,
                    report::died(self.config.peer, false),
                )));
            }
            Phase::Ready => self.start(now, envelope),
            _ => self.queued = Some(envelope),
        }
        Ok(())
    }

    /// Whether the host should feed more of the message now.
    pub fn wants_body(&self) -> bool {
        self.phase == Phase::Data && self.transmit.len() < BODY_HIGH_WATER
    }

    /// More of the message, as the queue stores it (LF line ends).
    pub fn body(&mut self, _now: Instant, chunk: &[u8]) -> Result<(), Misuse> {
        if self.phase != Phase::Data {
            return Err(Misuse::NotInData);
        }
        self.body.encode(chunk, &mut self.transmit);
        Ok(())
    }

    /// The message is complete. One whose last line has no LF cannot be
    /// sent faithfully: it fails, and the session closes without the
    /// final dot, so the server discards what it got (qmail-remote).
    pub fn end_body(&mut self, now: Instant) -> Result<(), Misuse> {
        if self.phase != Phase::Data {
            return Err(Misuse::NotInData);
        }
        if !self.body.ends_a_line() {
            self.finish(Status::Permanent, report::partial_line());
            self.close();
            return Ok(());
        }
        self.transmit.extend_from_slice(b".\r\n");
        self.phase = Phase::Transaction;
        self.expect(now, Awaited::Message);
        Ok(())
    }

    /// Ends the session politely: QUIT, then Closed on its reply. With
    /// replies still awaited (the greeting, a transaction under way, an
    /// RSET), QUIT waits for them, so no command the session owes follows
    /// it; an envelope not yet started is not sent, and ends as a dead
    /// connection.
    pub fn quit(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Closed | Phase::Quitting) {
            return;
        }
        if self.phase == Phase::Data {
            // Never QUIT inside DATA: that would be message text.
            self.close();
            return;
        }
        if !self.awaited.is_empty() {
            self.quit_wanted = true;
            return;
        }
        self.phase = Phase::Quitting;
        self.transmit.extend_from_slice(b"QUIT\r\n");
        self.expect(now, Awaited::Quit);
    }

    pub fn handle_input(&mut self, now: Instant, data: &[u8]) {
        if self.phase == Phase::Closed {
            return;
        }
        self.progress(now);
        let mut replies = Vec::new();
        self.reader.feed(data, &mut replies);
        for reply in replies {
            if self.phase == Phase::Closed {
                return;
            }
            self.on_reply(now, reply);
        }
    }

    pub fn handle_eof(&mut self, _now: Instant) {
        if self.phase == Phase::Quitting {
            self.close();
        } else {
            self.fail_session(report::died(self.config.peer, self.critical()));
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|d| now >= d) {
            if self.phase == Phase::Quitting {
                self.close();
            } else {
                self.fail_session(report::timed_out(self.config.peer, self.critical()));
            }
        }
    }

    /// The final dot was sent and its reply not yet read: if the
    /// connection dies now, the message may have been delivered.
    fn critical(&self) -> bool {
        self.awaited.contains(&Awaited::Message)
    }

    fn progress(&mut self, now: Instant) {
        self.deadline = Some(now + self.config.timeout);
    }

    fn expect(&mut self, now: Instant, what: Awaited) {
        if self.awaited.is_empty() {
            self.progress(now);
        }
        self.awaited.push_back(what);
    }

    fn command(&mut self, now: Instant, line: &[u8], what: Awaited) {
        self.transmit.extend_from_slice(line);
        self.transmit.extend_from_slice(b"\r\n");
        self.expect(now, what);
    }

    fn on_reply(&mut self, now: Instant, reply: ServerReply) {
        let Some(what) = self.awaited.pop_front() else {
            // Nothing was asked: a server closing on us (421) or confused.
            self.fail_session(report::died(self.config.peer, false));
            return;
        };
        let peer = self.config.peer;
        match what {
            Awaited::Greeting => {
                if !reply.is_positive() {
                    // qmail-remote defers whatever the code: a 554 from
                    // one MX (or a transient one) must not bounce mail.
                    let text = report::connected_but(&reply, peer, "greeting failed");
                    return self.refuse_session((Status::Temporary, text.1));
                }
                let helo = format!("EHLO {}", self.config.helo);
                self.command(now, helo.as_bytes(), Awaited::Ehlo);
            }
            Awaited::Ehlo if reply.is_positive() => {
                self.extensions = Extensions::parse(&reply.rest);
                self.opened(now);
            }
            // A server that knows no EHLO says 5xx (RFC 5321 4.1.4, 3.2).
            Awaited::Ehlo if reply.code >= 500 => {
                let helo = format!("HELO {}", self.config.helo);
                self.command(now, helo.as_bytes(), Awaited::Helo);
            }
            Awaited::Ehlo | Awaited::Helo if !reply.is_positive() => {
                // qmail-remote defers whatever the code.
                let text = report::connected_but(&reply, peer, "my name was rejected");
                self.refuse_session((Status::Temporary, text.1));
            }
            Awaited::Ehlo | Awaited::Helo => self.opened(now),
            Awaited::Mail => self.on_mail(now, reply),
            Awaited::Rcpt(i) => self.on_rcpt(now, i, reply),
            Awaited::Data => self.on_data(now, reply),
            Awaited::Message => {
                let result = if reply.is_positive() {
                    (Status::Accepted, report::accepted(&reply, peer))
                } else {
                    (
                        Status::of(&reply),
                        report::host_said(&reply, peer, "failed after I sent the message"),
                    )
                };
                self.finish(result.0, result.1);
                self.ready(now);
            }
            Awaited::EmptyMessage => self.ready(now),
            Awaited::Rset if reply.is_positive() => self.ready(now),
            Awaited::Rset => self.close(),
            Awaited::Quit => self.close(),
        }
    }

    fn opened(&mut self, now: Instant) {
        self.phase = Phase::Ready;
        self.ready(now);
    }

    /// The session is idle: start what waits, or say so.
    fn ready(&mut self, now: Instant) {
        if !self.awaited.is_empty() || self.phase == Phase::Closed {
            return;
        }
        self.phase = Phase::Ready;
        if self.quit_wanted {
            return self.quit(now);
        }
        match self.queued.take() {
            Some(envelope) => self.start(now, envelope),
            None => self.events.push_back(ClientEvent::Ready),
        }
    }

    fn start(&mut self, now: Instant, envelope: Envelope) {
        let peer = self.config.peer;
        let too_big = self.extensions.size.filter(|&l| l > 0 && envelope.size > l);
        // A line break in an address would end the command early and let
        // the rest be read as commands (injected from a queued address).
        let unsendable = std::iter::once(&envelope.sender)
            .chain(&envelope.recipients)
            .any(|a| a.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)));
        let refusal = match (too_big, unsendable) {
            (_, true) => Some(report::unsendable_address()),
            (Some(limit), false) => Some(report::too_big(peer, limit)),
            (None, false) => None,
        };
        if let Some(text) = refusal {
            self.events
                .push_back(ClientEvent::Done(Delivery::whole(Status::Permanent, text)));
            self.events.push_back(ClientEvent::Ready);
            return;
        }
        self.phase = Phase::Transaction;
        let mut mail = b"MAIL FROM:<".to_vec();
        mail.extend_from_slice(&envelope.sender);
        mail.push(b'>');
        if self.extensions.size.is_some() {
            mail.extend_from_slice(format!(" SIZE={}", envelope.size).as_bytes());
        }
        if self.extensions.eight_bit_mime && envelope.eight_bit {
            mail.extend_from_slice(b" BODY=8BITMIME");
        }
        self.command(now, &mail, Awaited::Mail);
        let count = envelope.recipients.len();
        self.txn = Some(Transaction {
            envelope,
            mail_refused: None,
            recipients: Vec::with_capacity(count),
            next_rcpt: 0,
        });
        if self.extensions.pipelining {
            // RFC 2920: MAIL, every RCPT and DATA in one group.
            for i in 0..count {
                self.send_rcpt(now, i);
            }
            self.command(now, b"DATA", Awaited::Data);
        }
    }

    fn send_rcpt(&mut self, now: Instant, i: usize) {
        let Some(txn) = &mut self.txn else { return };
        let mut rcpt = b"RCPT TO:<".to_vec();
        rcpt.extend_from_slice(&txn.envelope.recipients[i]);
        rcpt.push(b'>');
        txn.next_rcpt = i + 1;
        self.command(now, &rcpt, Awaited::Rcpt(i));
    }

    fn on_mail(&mut self, now: Instant, reply: ServerReply) {
        if reply.is_positive() {
            if !self.extensions.pipelining {
                self.send_rcpt(now, 0);
            }
            return;
        }
        let text = report::connected_but(&reply, self.config.peer, "sender was rejected");
        if let Some(txn) = &mut self.txn {
            txn.mail_refused = Some(reply);
        }
        if !self.extensions.pipelining {
            self.finish(text.0, text.1);
            self.reset(now);
        }
        // Pipelined: the RCPT and DATA replies are still to come.
    }

    fn on_rcpt(&mut self, now: Instant, i: usize, reply: ServerReply) {
        let peer = self.config.peer;
        let Some(txn) = &mut self.txn else { return };
        let result = if reply.is_positive() {
            (Status::Accepted, String::new())
        } else {
            (
                Status::of(&reply),
                report::host_said(&reply, peer, "does not like recipient"),
            )
        };
        if txn.recipients.len() == i {
            txn.recipients.push(result);
        }
        if self.extensions.pipelining {
            return;
        }
        let (next, count) = (txn.next_rcpt, txn.envelope.recipients.len());
        let accepted = txn.recipients.iter().any(|r| r.0 == Status::Accepted);
        if next < count {
            self.send_rcpt(now, next);
        } else if accepted {
            self.command(now, b"DATA", Awaited::Data);
        } else {
            self.give_up();
            self.reset(now);
        }
    }

    fn on_data(&mut self, now: Instant, reply: ServerReply) {
        let peer = self.config.peer;
        let Some(txn) = &self.txn else { return };
        if let Some(refused) = &txn.mail_refused {
            let text = report::connected_but(refused, peer, "sender was rejected");
            // The RCPT replies only echo the refusal: the message's stands.
            if let Some(txn) = &mut self.txn {
                txn.recipients.clear();
            }
            self.finish(text.0, text.1);
            return self.after_refused_data(now, &reply);
        }
        if !txn.recipients.iter().any(|r| r.0 == Status::Accepted) {
            self.give_up();
            return self.after_refused_data(now, &reply);
        }
        if reply.code == 354 {
            self.phase = Phase::Data;
            self.body = BodyEncoder::default();
            self.events.push_back(ClientEvent::WantBody);
            return;
        }
        let text = report::host_said(&reply, peer, "failed on DATA command");
        self.finish(Status::of(&reply), text);
        self.reset(now);
    }

    /// The transaction failed but DATA was sent (pipelined): a server that
    /// still said 354 gets a lone dot (RFC 2920 section 3.1), which ends
    /// the transaction; otherwise RSET.
    fn after_refused_data(&mut self, now: Instant, reply: &ServerReply) {
        if reply.code == 354 {
            self.command(now, b".", Awaited::EmptyMessage);
        } else {
            self.reset(now);
        }
    }

    /// No recipient was accepted.
    fn give_up(&mut self) {
        let text = report::giving_up(self.config.peer);
        self.finish(Status::Permanent, text);
    }

    fn reset(&mut self, now: Instant) {
        self.command(now, b"RSET", Awaited::Rset);
    }

    /// The transaction's Delivery, with the message's `status` and `text`.
    fn finish(&mut self, status: Status, text: String) {
        if let Some(txn) = self.txn.take() {
            self.events.push_back(ClientEvent::Done(Delivery {
                recipients: txn.recipients,
                message: (status, text),
            }));
        }
    }

    /// The session failed before or during a transaction: the envelope in
    /// hand (or waiting) gets `failure`, and the connection closes.
    fn fail_session_with(&mut self, failure: (Status, String)) {
        self.settle(failure);
        self.close();
    }

    /// The server refused the session itself (greeting, EHLO/HELO): QUIT
    /// before closing, as qmail-remote does and as RFC 5321 section 3.1
    /// expects of a client greeted with 554.
    fn refuse_session(&mut self, failure: (Status, String)) {
        self.transmit.extend_from_slice(b"QUIT\r\n");
        self.fail_session_with(failure);
    }

    fn fail_session(&mut self, text: String) {
        self.fail_session_with((Status::Temporary, text));
    }

    /// Ends the envelope in hand (or waiting), if any, with `failure`.
    fn settle(&mut self, failure: (Status, String)) {
        if self.txn.is_none() {
            if let Some(envelope) = self.queued.take() {
                self.txn = Some(Transaction {
                    envelope,
                    mail_refused: None,
                    recipients: Vec::new(),
                    next_rcpt: 0,
                });
            }
        }
        if let Some(txn) = &mut self.txn {
            // Results read before the failure stand only with a full set.
            if txn.recipients.len() != txn.envelope.recipients.len() {
                txn.recipients.clear();
            }
        }
        self.finish(failure.0, failure.1);
    }

    /// Closes the session; an envelope still in hand or waiting ends as
    /// a dead connection, so every envelope gets its Delivery.
    fn close(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        let text = report::died(self.config.peer, self.critical());
        self.settle((Status::Temporary, text));
        self.phase = Phase::Closed;
        self.awaited.clear();
        self.events.push_back(ClientEvent::Closed);
    }
}

#[cfg(test)]
mod tests;
