//! The SMTP server machine, driven through `pump` by an in-memory host.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use sqmail_core::smtp::host::{pump, Decision, SmtpHost, Step};
use sqmail_core::smtp::{Config, Reply, Request, Server, Verdict};

/// A committed message: sender, recipients, body.
type Committed = (String, Vec<String>, Vec<u8>);

/// Accepts everyone except recipients whose address contains "nobody",
/// and keeps committed messages in memory.
#[derive(Default)]
struct Host {
    open: Option<Vec<u8>>,
    sender: String,
    recipients: Vec<String>,
    committed: Vec<Committed>,
    aborted: usize,
}

impl SmtpHost for Host {
    fn decide(&mut self, request: Request) -> Decision {
        Decision::Now(match request {
            Request::Mail { sender, .. } => {
                self.sender = sender;
                self.recipients.clear();
                Verdict::Accept
            }
            Request::Rcpt { recipient, .. } if recipient.contains("nobody") => {
                Verdict::Reject(Reply::new(550, "5.1.1", "no such user"))
            }
            Request::Rcpt { recipient, .. } => {
                self.recipients.push(recipient);
                Verdict::Accept
            }
            Request::Data { .. } => {
                self.open = Some(Vec::new());
                Verdict::Accept
            }
            Request::EndOfData => {
                let body = self.open.take().expect("a message is open");
                self.committed
                    .push((self.sender.clone(), self.recipients.clone(), body));
                Verdict::AcceptWith(Reply::new(250, "2.0.0", "ok queued"))
            }
        })
    }
    fn message_data(&mut self, data: &[u8]) {
        self.open
            .as_mut()
            .expect("data only while a message is open")
            .extend_from_slice(data);
    }
    fn abort_message(&mut self) {
        if self.open.take().is_some() {
            self.aborted += 1;
        }
    }
}

struct Session {
    server: Server,
    host: Host,
    out: Vec<u8>,
    closed: bool,
    now: Instant,
}

impl Session {
    fn new(config: Config) -> Self {
        let now = Instant::now();
        let mut s = Session {
            server: Server::new(Arc::new(config), now),
            host: Host::default(),
            out: Vec::new(),
            closed: false,
            now,
        };
        s.drain();
        s
    }

    fn send(&mut self, bytes: &[u8]) -> &mut Self {
        self.server.handle_input(self.now, bytes);
        self.drain();
        self
    }

    fn drain(&mut self) {
        if let Step::Close = pump(&mut self.server, &mut self.host, self.now) {
            self.closed = true;
        }
        self.out.extend_from_slice(self.server.transmit());
        let n = self.server.transmit().len();
        self.server.advance_transmit(n);
    }

    /// The reply codes sent so far, one per reply (continuation lines skipped).
    fn codes(&self) -> Vec<u16> {
        String::from_utf8_lossy(&self.out)
            .lines()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| l[..3].parse().unwrap())
            .collect()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out).into_owned()
    }
}

fn session() -> Session {
    Session::new(Config::new("mx.example.org"))
}

const TXN: &[u8] = b"EHLO c.org\r\nMAIL FROM:<a@c.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n";

#[test]
fn greeting_and_ehlo_keywords() {
    let mut s = session();
    s.send(b"EHLO client.example\r\n");
    assert_eq!(
        s.text(),
        "220 mx.example.org ESMTP\r\n250-mx.example.org\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE\r\n250 ENHANCEDSTATUSCODES\r\n"
    );
}

#[test]
fn size_is_advertised_with_the_limit() {
    let mut config = Config::new("mx");
    config.databytes = 1000;
    let mut s = Session::new(config);
    s.send(b"ehlo x\r\n");
    assert!(s.text().contains("250-SIZE 1000\r\n"));
}

#[test]
fn a_whole_transaction() {
    let mut s = session();
    s.send(b"HELO c.org\r\nMAIL FROM:<a@c.org>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<c@example.org>\r\nDATA\r\n");
    s.send(b"Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n");
    assert_eq!(s.codes(), [220, 250, 250, 250, 250, 354, 250, 221]);
    assert!(s.closed);
    let (sender, rcpts, body) = &s.host.committed[0];
    assert_eq!(sender, "a@c.org");
    assert_eq!(rcpts, &["b@example.org", "c@example.org"]);
    assert_eq!(body, b"Subject: hi\n\n.dot\nbody\n");
}

#[test]
fn a_whole_pipelined_transaction_in_one_write() {
    let mut s = session();
    s.send(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@y.org>\r\nRCPT TO:<nobody@y.org>\r\nDATA\r\nhi\r\n.\r\nRSET\r\nQUIT\r\n");
    assert_eq!(s.codes(), [220, 250, 250, 250, 550, 354, 250, 250, 221]);
    assert_eq!(s.host.committed[0].0, "");
    assert_eq!(s.host.committed[0].1, ["x@y.org"]);
}

#[test]
fn enhanced_status_codes_on_replies() {
    let mut s = session();
    s.send(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nNOOP\r\n");
    let text = s.text();
    assert!(text.contains("250 2.1.0 ok\r\n"), "{text}");
    assert!(text.contains("250 2.0.0 ok\r\n"), "{text}");
}

#[test]
fn order_of_commands_is_enforced() {
    let mut s = session();
    s.send(b"MAIL FROM:<a@b.c>\r\nHELO c\r\nRCPT TO:<a@b.c>\r\nDATA\r\nMAIL FROM:<a@b.c>\r\nDATA\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<nobody@b.c>\r\nDATA\r\n");
    assert_eq!(
        s.codes(),
        [220, 503, 250, 503, 503, 250, 503, 503, 550, 554]
    );
}

#[test]
fn helo_needs_an_argument_and_verbs_ignore_case() {
    let mut s = session();
    s.send(b"HELO\r\nEHLO \r\nhElO x\r\nmail from:<a@b.c>\r\nRcPt To:<d@e.f>\r\n");
    assert_eq!(s.codes(), [220, 501, 501, 250, 250, 250]);
}

#[test]
fn addresses_and_parameters() {
    let mut s = session();
    s.send(b"EHLO c\r\nMAIL FROM:<a@b.c> FOO=1\r\nMAIL FROM:<bad address>\r\nMAIL FROM:<a@b.c> BODY=8BITMIME SIZE=10\r\n");
    s.send(b"RCPT TO:<>\r\nRCPT TO:<x@y.z> NOTIFY=NEVER\r\nRCPT TO:<postmaster>\r\nRCPT TO:<@r.org:u@y.z>\r\n");
    assert_eq!(s.codes(), [220, 250, 555, 501, 250, 501, 555, 250, 250]);
    assert_eq!(s.host.recipients, ["postmaster", "u@y.z"]);
}

#[test]
fn declared_size_over_the_limit() {
    let mut config = Config::new("mx");
    config.databytes = 100;
    let mut s = Session::new(config);
    s.send(b"EHLO c\r\nMAIL FROM:<a@b.c> SIZE=101\r\nMAIL FROM:<a@b.c> SIZE=100\r\n");
    assert_eq!(s.codes(), [220, 250, 552, 250]);
}

#[test]
fn message_over_databytes_is_refused_after_the_end() {
    let mut config = Config::new("mx");
    config.databytes = 10;
    let mut s = Session::new(config);
    s.send(TXN)
        .send(b"0123456789abcdef\r\n")
        .send(b"more\r\n.\r\nNOOP\r\n");
    assert_eq!(s.codes(), [220, 250, 250, 250, 354, 552, 250]);
    assert!(s.host.committed.is_empty());
    assert_eq!(s.host.aborted, 1);
    assert!(!s.closed);
}

#[test]
fn looping_message_is_refused() {
    let mut s = session();
    s.send(TXN)
        .send("Received: x\r\n".repeat(101).as_bytes())
        .send(b"\r\nbody\r\n.\r\n");
    assert_eq!(s.codes(), [220, 250, 250, 250, 354, 554]);
    assert!(s.host.committed.is_empty());
}

#[test]
fn bare_lf_in_data_closes_and_queues_nothing() {
    let mut s = session();
    s.send(TXN)
        .send(b"one\r\ntwo\n.\nMAIL FROM:<evil@x.org>\r\n");
    assert_eq!(s.codes(), [220, 250, 250, 250, 354, 451]);
    assert!(s.text().contains("451 4.6.0 bare LF"));
    assert!(s.closed);
    assert!(s.host.committed.is_empty());
    assert_eq!(s.host.aborted, 1);
}

#[test]
fn bare_cr_in_data_closes() {
    let mut s = session();
    s.send(TXN).send(b"one\rtwo\r\n.\r\n");
    assert_eq!(s.codes(), [220, 250, 250, 250, 354, 451]);
    assert!(s.closed);
}

#[test]
fn commands_may_end_in_bare_lf_but_not_hold_cr_or_nul() {
    let mut s = session();
    s.send(b"EHLO c\nNOOP\rx\r\nNO\0OP\r\nNOOP\n");
    assert_eq!(s.codes(), [220, 250, 500, 500, 250]);
}

#[test]
fn overlong_lines_are_refused_and_skipped() {
    let mut config = Config::new("mx");
    config.max_line = 20;
    let mut s = Session::new(config);
    s.send(b"NOOP ")
        .send(&[b'x'; 30])
        .send(&[b'y'; 30])
        .send(b"\r\nNOOP\r\n");
    s.send(b"NOOP 1234567890123456789\r\n");
    assert_eq!(s.codes(), [220, 500, 250, 500]);
}

/// Fuzz regression (smtp_server): a line of exactly `max_line` bytes sent
/// in pieces was refused once its CR had arrived without its LF, though
/// taken when sent whole.
#[test]
fn a_line_of_max_line_bytes_is_taken_however_split() {
    let mut line = b"NOOP ".to_vec();
    line.resize(20, b'x');
    line.extend_from_slice(b"\r\n");
    for split in [None, Some(21), Some(20), Some(1)] {
        let mut config = Config::new("mx");
        config.max_line = 20;
        let mut s = Session::new(config);
        match split {
            None => {
                s.send(&line);
            }
            Some(1) => line.iter().for_each(|b| {
                s.send(&[*b]);
            }),
            Some(at) => {
                s.send(&line[..at]).send(&line[at..]);
            }
        }
        // One byte more is too long, however split.
        s.send(b"NOOP 1234567890123456\r").send(b"\n");
        assert_eq!(s.codes(), [220, 250, 500], "split at {split:?}");
    }
}

#[test]
fn too_many_errors_close_the_session() {
    let mut config = Config::new("mx");
    config.max_errors = 3;
    let mut s = Session::new(config);
    s.send(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n");
    assert_eq!(s.codes(), [220, 500, 500, 500, 421]);
    assert!(s.closed);
}

#[test]
fn recipient_limit() {
    let mut config = Config::new("mx");
    config.max_recipients = 2;
    let mut s = Session::new(config);
    s.send(
        b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<1@b.c>\r\nRCPT TO:<2@b.c>\r\nRCPT TO:<3@b.c>\r\n",
    );
    assert_eq!(s.codes(), [220, 250, 250, 250, 250, 452]);
}

#[test]
fn misc_commands() {
    let mut s = session();
    s.send(b"VRFY x\r\nVRFY\r\nHELP\r\nEXPN x\r\nSTARTTLS\r\nRSET x\r\nRSET\r\nQUIT x\r\nQUIT\r\n");
    assert_eq!(
        s.codes(),
        [220, 252, 501, 214, 502, 502, 501, 250, 501, 221]
    );
}

#[test]
fn idle_timeout_closes_with_421() {
    let mut s = session();
    let deadline = s.server.poll_timeout().unwrap();
    assert_eq!(deadline, s.now + Duration::from_secs(1200));
    s.server.handle_timeout(deadline - Duration::from_secs(1));
    s.drain();
    assert!(!s.closed);
    s.server.handle_timeout(deadline);
    s.drain();
    assert_eq!(s.codes(), [220, 421]);
    assert!(s.closed);
}

#[test]
fn eof_in_data_discards_the_message() {
    let mut s = session();
    s.send(TXN).send(b"partial");
    s.server.handle_eof(s.now);
    s.drain();
    assert!(s.closed);
    assert!(s.host.committed.is_empty());
    assert_eq!(s.host.aborted, 1);
}

#[test]
fn pending_decision_holds_pipelined_commands() {
    let mut server = Server::new(Arc::new(Config::new("mx")), Instant::now());
    let now = Instant::now();
    server.handle_input(now, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nNOOP\r\nNOOP\r\n");
    let Some(sqmail_core::smtp::Event::Decide(ticket, Request::Mail { .. })) = server.poll_event()
    else {
        panic!("expected a MAIL decision");
    };
    assert!(server.poll_event().is_none());
    assert_eq!(server.poll_timeout(), None);
    let before = server.transmit().len();
    server.answer(now, ticket, Verdict::Accept).unwrap();
    let after = String::from_utf8_lossy(&server.transmit()[before..]).into_owned();
    assert_eq!(after, "250 2.1.0 ok\r\n250 2.0.0 ok\r\n250 2.0.0 ok\r\n");
    assert!(server.answer(now, ticket, Verdict::Accept).is_err());
}

#[test]
fn pipelined_input_is_bounded() {
    let mut config = Config::new("mx");
    config.max_pipelined = 100;
    let now = Instant::now();
    let mut server = Server::new(Arc::new(config), now);
    server.handle_input(now, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\n");
    assert!(matches!(
        server.poll_event(),
        Some(sqmail_core::smtp::Event::Decide(..))
    ));
    server.handle_input(now, &b"NOOP\r\n".repeat(10));
    assert_eq!(server.input_capacity(), 40);
    server.handle_input(now, &b"NOOP\r\n".repeat(10));
    assert!(server.is_closed());
    assert!(String::from_utf8_lossy(server.transmit())
        .ends_with("421 4.7.0 too much pipelined input; closing connection\r\n"));
}

#[test]
fn unread_replies_stop_command_processing() {
    let mut config = Config::new("mx");
    config.max_output = 64;
    let now = Instant::now();
    let mut server = Server::new(Arc::new(config), now);
    server.handle_input(now, &b"NOOP\r\n".repeat(20));
    assert!(server.transmit().len() < 64 + 20);
    let n = server.transmit().len();
    server.advance_transmit(n);
    assert!(
        !server.transmit().is_empty(),
        "processing resumed after output drained"
    );
}

/// Runs a whole session feeding the input in the given chunks.
fn run_chunks(chunks: &[&[u8]]) -> (Vec<u8>, Vec<Committed>, bool) {
    let mut config = Config::new("mx");
    config.databytes = 200;
    config.max_recipients = 3;
    config.max_errors = 8;
    let mut s = Session::new(config);
    for chunk in chunks {
        s.send(chunk);
    }
    (s.out, s.host.committed, s.closed)
}

fn session_bytes() -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop::sample::select(vec![
        &b"EHLO c\r\n"[..],
        b"HELO c\n",
        b"MAIL FROM:<a@b.c>\r\n",
        b"MAIL FROM:<>\r\n",
        b"RCPT TO:<x@y.z>\r\n",
        b"RCPT TO:<nobody@y.z>\r\n",
        b"DATA\r\n",
        b"line\r\n",
        b"..\r\n",
        b".\r\n",
        b"\r\n",
        b"\n",
        b"\r",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"x",
        b"QUIT\r\n",
    ]);
    prop::collection::vec(pieces, 0..40).prop_map(|v| v.concat())
}

proptest! {
    /// Any split of the input gives the same replies and the same messages.
    #[test]
    fn split_invariance(input in session_bytes(), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
        let whole = run_chunks(&[&input]);
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.sort();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points.into_iter().chain([input.len()]) {
            chunks.push(&input[last..p]);
            last = p;
        }
        prop_assert_eq!(&whole, &run_chunks(&chunks));
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        prop_assert_eq!(&whole, &run_chunks(&bytes));
    }

    /// Lines around `max_line`, split anywhere (byte by byte included),
    /// get the same replies as sent whole.
    #[test]
    fn split_invariance_at_the_line_limit(
        input in prop::collection::vec(prop::sample::select(vec![
            &b"NOOP"[..], b" ", b"x", b"xxxx", b"\r", b"\n", b"\r\n", b"RSET\r\n",
        ]), 0..30).prop_map(|v| v.concat()),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let run = |chunks: &[&[u8]]| {
            let mut config = Config::new("mx");
            config.max_line = 10;
            config.max_errors = 1000;
            let mut s = Session::new(config);
            for chunk in chunks {
                s.send(chunk);
            }
            (s.out, s.closed)
        };
        let whole = run(&[&input]);
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        points.sort();
        let mut chunks = Vec::new();
        let mut last = 0;
        for p in points.into_iter().chain([input.len()]) {
            chunks.push(&input[last..p]);
            last = p;
        }
        prop_assert_eq!(&whole, &run(&chunks));
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        prop_assert_eq!(&whole, &run(&bytes));
    }

    /// Arbitrary bytes never panic the machine and never grow its buffers
    /// past the configured limits, even when the host never sends replies.
    #[test]
    fn arbitrary_input_is_bounded(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..20)) {
        let mut config = Config::new("mx");
        config.max_pipelined = 512;
        config.max_output = 256;
        config.max_line = 64;
        let now = Instant::now();
        let mut server = Server::new(Arc::new(config), now);
        let mut host = Host::default();
        for chunk in &chunks {
            let take = chunk.len().min(server.input_capacity());
            server.handle_input(now, &chunk[..take]);
            let _ = pump(&mut server, &mut host, now);
            prop_assert!(server.input_capacity() <= 512);
            prop_assert!(server.transmit().len() <= 256 + 512);
            prop_assert!(server.body().is_empty());
        }
    }

    /// Whatever the body, what is stored is the body with CRLF as LF.
    #[test]
    fn bodies_round_trip(lines in prop::collection::vec("[ -~]{0,30}", 0..6)) {
        let mut wire = TXN.to_vec();
        let mut expected = Vec::new();
        for line in &lines {
            if line.starts_with('.') { wire.push(b'.'); }
            wire.extend_from_slice(line.as_bytes());
            wire.extend_from_slice(b"\r\n");
            expected.extend_from_slice(line.as_bytes());
            expected.push(b'\n');
        }
        wire.extend_from_slice(b".\r\n");
        let (_, committed, _) = run_chunks(&[&wire]);
        prop_assert_eq!(&committed[0].2, &expected);
    }
}
