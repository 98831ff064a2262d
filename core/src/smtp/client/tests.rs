use super::*;
use proptest::prelude::*;

const PEER: &str = "192.0.2.25";

fn config(timeout: u64) -> Arc<ClientConfig> {
    Arc::new(ClientConfig {
        helo: "me.example".into(),
        timeout: Duration::from_secs(timeout),
        peer: PEER.parse().unwrap(),
    })
}

fn envelope(recipients: &[&str], size: u64) -> Envelope {
    Envelope {
        sender: b"joe@me.example".to_vec(),
        recipients: recipients.iter().map(|r| r.as_bytes().to_vec()).collect(),
        size,
        eight_bit: true,
    }
}

/// A host that answers WantBody with `message` at once and keeps what the
/// client sent and said.
struct Host {
    client: Client,
    now: Instant,
    message: Vec<u8>,
    sent: Vec<u8>,
    events: Vec<ClientEvent>,
}

impl Host {
    fn new(message: &[u8]) -> Host {
        let now = Instant::now();
        Host {
            client: Client::new(config(60), now),
            now,
            message: message.to_vec(),
            sent: Vec::new(),
            events: Vec::new(),
        }
    }

    fn pump(&mut self) {
        loop {
            let out = self.client.transmit().to_vec();
            self.sent.extend_from_slice(&out);
            self.client.advance_transmit(self.now, out.len());
            match self.client.poll_event() {
                Some(ClientEvent::WantBody) => {
                    self.events.push(ClientEvent::WantBody);
                    let message = self.message.clone();
                    self.client.body(self.now, &message).unwrap();
                    self.client.end_body(self.now).unwrap();
                }
                Some(e) => self.events.push(e),
                None if self.client.transmit().is_empty() => return,
                None => {}
            }
        }
    }

    fn server(&mut self, bytes: &str) {
        self.client.handle_input(self.now, bytes.as_bytes());
        self.pump();
    }

    /// What the client sent since the last call.
    fn said(&mut self) -> String {
        String::from_utf8(std::mem::take(&mut self.sent)).unwrap()
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Done(d) => Some(d.clone()),
                _ => None,
            })
            .collect()
    }
}

const EHLO_FULL: &str = "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 8BITMIME\r\n";

#[test]
fn a_pipelined_transaction_with_one_refused_recipient() {
    let mut h = Host::new(b"Subject: x\n\n.dot\nend\n");
    h.client.send(h.now, envelope(&["a@x", "b@x"], 30)).unwrap();
    h.server("220 mx.example ESMTP\r\n");
    assert_eq!(h.said(), "EHLO me.example\r\n");
    h.server(EHLO_FULL);
    assert_eq!(
        h.said(),
        "MAIL FROM:<joe@me.example> SIZE=30 BODY=8BITMIME\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n"
    );
    h.server("250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n354 go\r\n");
    assert_eq!(h.said(), "Subject: x\r\n\r\n..dot\r\nend\r\n.\r\n");
    h.server("250 2.0.0 queued as 12\r\n");
    let d = &h.deliveries()[0];
    assert_eq!(
        d.report(),
        format!(
            "r\0h{PEER} does not like recipient.\nRemote host said: 550 5.1.1 no such user\n\0\
             K{PEER} accepted message.\nRemote host said: 250 2.0.0 queued as 12\n\0"
        )
        .into_bytes()
    );
    assert_eq!(h.events.last(), Some(&ClientEvent::Ready));
    assert!(h.client.is_reusable());
    assert_eq!(h.client.poll_timeout(), None, "idle: no deadline");
}

#[test]
fn without_pipelining_one_command_at_a_time() {
    let mut h = Host::new(b"x\n");
    h.client.send(h.now, envelope(&["a@x", "b@x"], 2)).unwrap();
    h.server("220 hi\r\n");
    h.said();
    h.server("250 mx.example\r\n");
    assert_eq!(h.said(), "MAIL FROM:<joe@me.example>\r\n");
    h.server("250 ok\r\n");
    assert_eq!(h.said(), "RCPT TO:<a@x>\r\n");
    h.server("451 later\r\n");
    assert_eq!(h.said(), "RCPT TO:<b@x>\r\n");
    h.server("250 ok\r\n");
    assert_eq!(h.said(), "DATA\r\n");
    h.server("354 go\r\n");
    assert_eq!(h.said(), "x\r\n.\r\n");
    h.server("250 ok\r\n");
    let d = &h.deliveries()[0];
    assert_eq!(d.recipients[0].0, Status::Temporary);
    assert_eq!(d.recipients[1].0, Status::Accepted);
    assert_eq!(d.message.0, Status::Accepted);
}

#[test]
fn ehlo_refused_falls_back_to_helo() {
    let mut h = Host::new(b"x\n");
    h.client.send(h.now, envelope(&["a@x"], 2)).unwrap();
    h.server("220 old\r\n");
    h.said();
    h.server("502 what?\r\n");
    assert_eq!(h.said(), "HELO me.example\r\n");
    h.server("250 old\r\n");
    // No extensions: plain MAIL, no parameters.
    assert_eq!(h.said(), "MAIL FROM:<joe@me.example>\r\n");
    let mut h = Host::new(b"x\n");
    h.client.send(h.now, envelope(&["a@x"], 2)).unwrap();
    h.server("220 old\r\n502 no\r\n550 not you\r\n");
    let d = &h.deliveries()[0];
    assert_eq!(d.message.0, Status::Temporary);
    assert!(d
        .message
        .1
        .starts_with(&format!("Connected to {PEER} but my name was rejected.\n")));
    assert!(h.client.is_closed());
}

#[test]
fn a_refused_greeting_defers_the_envelope_and_closes() {
    // qmail-remote: `if (smtpcode() != 220) quit("ZConnected to ...`
    for (greeting, status, letter) in [
        ("554 no\r\n", Status::Temporary, b'Z'),
        ("421 busy\r\n", Status::Temporary, b'Z'),
    ] {
        let mut h = Host::new(b"x\n");
        h.client.send(h.now, envelope(&["a@x"], 2)).unwrap();
        h.server(greeting);
        let d = &h.deliveries()[0];
        assert_eq!(d.message.0, status);
        assert_eq!(d.report()[0], letter);
        assert!(d.message.1.starts_with(&format!(
            "Connected to {PEER} but greeting failed.\nRemote host said: "
        )));
        assert_eq!(h.events.last(), Some(&ClientEvent::Closed));
        // qmail-remote's quit(); RFC 5321 section 3.1 after a 554.
        assert_eq!(h.said(), "QUIT\r\n");
    }
}

#[test]
fn a_message_over_the_servers_size_fails_unsent() {
    let mut h = Host::new(b"x\n");
    h.client.send(h.now, envelope(&["a@x"], 1001)).unwrap();
    h.server("220 hi\r\n");
    h.said();
    h.server(EHLO_FULL);
    assert_eq!(h.said(), "");
    let d = &h.deliveries()[0];
    assert_eq!(d.message.0, Status::Permanent);
    assert!(d.message.1.ends_with("limit of 1000 bytes. (#5.3.4)\n"));
    assert_eq!(h.events.last(), Some(&ClientEvent::Ready));
    // The session goes on.
    h.client.send(h.now, envelope(&["a@x"], 10)).unwrap();
    h.pump();
    assert!(h.said().starts_with("MAIL FROM:<joe@me.example> SIZE=10 "));
}

#[test]
fn an_address_with_a_line_break_is_never_sent() {
    let mut h = Host::new(b"x\n");
    h.client
        .send(h.now, envelope(&["a@x>\r\nRCPT TO:<evil@y"], 2))
        .unwrap();
    h.server("220 hi\r\n250 mx\r\n");
    assert_eq!(h.said(), "EHLO me.example\r\n");
    let d = &h.deliveries()[0];
    assert_eq!(d.message.0, Status::Permanent);
    assert!(d.message.1.ends_with("(#5.1.3)\n"));
    assert_eq!(h.events.last(), Some(&ClientEvent::Ready));
}

#[test]
fn a_refused_sender_then_rset_and_the_next_message() {
    let mut h = Host::new(b"x\n");
    h.client.send(h.now, envelope(&["a@x"], 2)).unwrap();
    h.server("220 hi\r\n250 mx\r\n");
    h.said();
    h.server("553 sender refused\r\n");
    assert_eq!(h.said(), "RSET\r\n");
    let d = &h.deliveries()[0];
    assert_eq!(d.message.0, Status::Permanent);
    assert!(d
        .message
        .1
        .starts_with(&format!("Connected to {PEER} but sender was rejected.\n")));
    // The next envelope waits for the RSET reply.
    h.client.send(h.now, envelope(&["b@x"], 2)).unwrap();
    h.pump();
    assert_eq!(h.said(), "");
    h.server("250 reset\r\n");
    assert_eq!(h.said(), "MAIL FROM:<joe@me.example>\r\n");
}

#[test]
fn pipelined_refusals_keep_the_mail_reply() {
    // MAIL refused: the RCPT and DATA replies only echo it.
    let mut h = Host::new(b"x\n");
    h.client.send(h.now, envelope(&["a@x"], 2)).unwrap();
    h.server("220 hi\r\n");
    h.server(EHLO_FULL);
    h.said();
    h.server("451 try later\r\n503 no sender\r\n503 no valid recipients\r\n");
    let d = &h.deliveries()[0];
    assert!(d.recipients.is_empty());
    assert_eq!(d.message.0, Status::Temporary);
    assert_eq!(h.said(), "RSET\r\n");
}

#[test]
fn no_recipient_accepted_but_data_accepted_sends_a_lone_dot() {
    let mut h = Host::new(b"never sent\n");
    h.client.send(h.now, envelope(&["a@x", "b@x"], 2)).unwrap();
    h.server("220 hi\r\n");
    h.server(EHLO_FULL);
    h.said();
    h.server("250 ok\r\n550 no\r\n450 later\r\n354 go\r\n");
    assert_eq!(h.said(), ".\r\n", "RFC 2920 3.1: a single dot");
    let d = &h.deliveries()[0];
    assert_eq!(
        d.message,
        (Status::Permanent, format!("Giving up on {PEER}.\n"))
    );
    assert_eq!(
        d.recipients.iter().map(|r| r.0).collect::<Vec<_>>(),
        [Status::Permanent, Status::Temporary]
    );
    h.server("554 no valid recipients\r\n");
    assert_eq!(h.events.last(), Some(&ClientEvent::Ready));
}

#[test]
fn a_partial_final_line_fails_without_the_dot() {
    let mut h = Host::new(b"no newline at the end");
    h.client.send(h.now, envelope(&["a@x"], 2)).unwrap();
    h.server("220 hi\r\n250 mx\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    let said = h.said();
    assert!(said.ends_with("DATA\r\nno newline at the end"), "{said:?}");
    let d = &h.deliveries()[0];
    assert_eq!(
        d.message,
        (
            Status::Permanent,
            "SMTP cannot transfer messages with partial final lines. (#5.6.2)\n".into()
        )
    );
    assert_eq!(h.events.last(), Some(&ClientEvent::Closed));
}

#[test]
fn silence_after_the_dot_is_a_possible_duplicate() {
    let mut h = Host::new(b"x\n");
    h.client.send(h.now, envelope(&["a@x"], 2)).unwrap();
    h.server("220 hi\r\n250 mx\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    let deadline = h.client.poll_timeout().unwrap();
    assert_eq!(deadline, h.now + Duration::from_secs(60));
    h.client.handle_timeout(deadline - Duration::from_secs(1));
    assert!(h.deliveries().is_empty());
    h.client.handle_timeout(deadline);
    h.pump();
    let d = &h.deliveries()[0];
    assert_eq!(d.message.0, Status::Temporary);
    assert!(
        d.message.1.contains("Possible duplicate! (#4.4.2)"),
        "{}",
        d.message.1
    );
    assert_eq!(d.recipients, [(Status::Accepted, String::new())]);
    assert!(h.client.is_closed());
}

#[test]
fn a_dead_connection_before_the_dot_is_a_plain_deferral() {
    let mut h = Host::new(b"x\n");
    h.client.send(h.now, envelope(&["a@x"], 2)).unwrap();
    h.server("220 hi\r\n250 mx\r\n");
    h.client.handle_eof(h.now);
    h.pump();
    let d = &h.deliveries()[0];
    assert_eq!(
        d.message,
        (
            Status::Temporary,
            format!("Connected to {PEER} but connection died. (#4.4.2)\n")
        )
    );
    // A closed session answers the next envelope at once.
    h.client.send(h.now, envelope(&["a@x"], 2)).unwrap();
    h.pump();
    assert_eq!(h.deliveries().len(), 2);
    assert!(!h.client.is_reusable());
}

#[test]
fn two_messages_then_quit() {
    let mut h = Host::new(b"x\n");
    h.client.send(h.now, envelope(&["a@x"], 2)).unwrap();
    h.server("220 hi\r\n");
    h.server(EHLO_FULL);
    h.server("250 ok\r\n250 ok\r\n354 go\r\n");
    h.server("250 one\r\n");
    h.client.send(h.now, envelope(&["b@x"], 2)).unwrap();
    h.pump();
    h.server("250 ok\r\n250 ok\r\n354 go\r\n");
    h.server("250 two\r\n");
    let d = h.deliveries();
    assert_eq!(d.len(), 2);
    assert!(d[1].message.1.ends_with("250 two\n"));
    h.said();
    h.client.quit(h.now);
    h.pump();
    assert_eq!(h.said(), "QUIT\r\n");
    h.server("221 bye\r\n");
    assert_eq!(h.events.last(), Some(&ClientEvent::Closed));
    assert_eq!(h.client.poll_timeout(), None);
}

#[test]
fn misuse_is_refused() {
    let mut h = Host::new(b"x\n");
    assert_eq!(
        h.client.send(h.now, envelope(&[], 2)),
        Err(Misuse::NoRecipients)
    );
    h.client.send(h.now, envelope(&["a@x"], 2)).unwrap();
    assert_eq!(
        h.client.send(h.now, envelope(&["a@x"], 2)),
        Err(Misuse::Busy)
    );
    assert_eq!(h.client.body(h.now, b"x"), Err(Misuse::NotInData));
    assert_eq!(h.client.end_body(h.now), Err(Misuse::NotInData));
}

/// A whole session's server side, in rounds: each round answers what the
/// client sent in the previous one.
fn session_rounds() -> Vec<&'static str> {
    vec![
        "220 mx.example ESMTP\r\n",
        EHLO_FULL,
        "250 ok\r\n250 ok\r\n451 4.2.1 later\r\n354 go\r\n",
        "250-queued\r\n250 as 7\r\n",
    ]
}

fn run_split(rounds: &[&str], cuts: &[usize]) -> (Vec<u8>, Vec<ClientEvent>) {
    let mut h = Host::new(b"a\n.b\n\nc\r\n");
    h.client.send(h.now, envelope(&["a@x", "b@x"], 30)).unwrap();
    for (i, round) in rounds.iter().enumerate() {
        let bytes = round.as_bytes();
        let cut = cuts.get(i).map_or(0, |c| c % (bytes.len() + 1));
        for part in [&bytes[..cut], &bytes[cut..]] {
            for piece in part.chunks(if i % 2 == 0 { 1 } else { part.len().max(1) }) {
                h.client.handle_input(h.now, piece);
                h.pump();
            }
        }
    }
    (h.sent, h.events)
}

proptest! {
    #[test]
    fn any_split_of_each_round_gives_the_same_session(cuts in proptest::collection::vec(any::<usize>(), 4)) {
        let rounds = session_rounds();
        let whole = run_split(&rounds, &[]);
        prop_assert_eq!(run_split(&rounds, &cuts), whole);
    }

    #[test]
    fn arbitrary_server_bytes_never_panic_nor_grow_buffers(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 0..20),
        prefix in 0usize..4,
    ) {
        let mut h = Host::new(b"x\n");
        h.client.send(h.now, envelope(&["a@x"], 2)).unwrap();
        let valid = ["220 hi\r\n", EHLO_FULL, "250 ok\r\n250 ok\r\n354 go\r\n"];
        for v in &valid[..prefix.min(valid.len())] {
            h.server(v);
        }
        for c in &chunks {
            h.client.handle_input(h.now, c);
            prop_assert!(h.client.reader.buffered() <= MAX_LINE);
            prop_assert!(h.client.transmit().len() <= BODY_HIGH_WATER + 4096);
            h.pump();
        }
        h.client.handle_eof(h.now);
        h.pump();
        // Every envelope gets exactly one Delivery.
        prop_assert_eq!(h.deliveries().len(), 1);
        prop_assert!(h.client.is_closed());
    }
}

#[test]
fn quit_with_a_transaction_in_flight_waits_for_it_and_sends_nothing_after() {
    let mut h = Host::new(b"x\n");
    h.client.send(h.now, envelope(&["a@x"], 2)).unwrap();
    h.server("220 hi\r\n250 mx\r\n");
    assert_eq!(
        h.said(),
        "EHLO me.example\r\nMAIL FROM:<joe@me.example>\r\n"
    );
    h.client.quit(h.now);
    h.pump();
    assert!(!h.client.is_reusable());
    h.server("250 ok\r\n");
    h.server("250 ok\r\n");
    h.server("354 go\r\n");
    assert_eq!(h.said(), "RCPT TO:<a@x>\r\nDATA\r\nx\r\n.\r\n");
    h.server("250 ok\r\n");
    assert_eq!(h.said(), "QUIT\r\n");
    assert_eq!(h.deliveries()[0].message.0, Status::Accepted);
    h.server("221 bye\r\n");
    assert!(h.client.is_closed());
    assert_eq!(h.deliveries().len(), 1);
    assert!(!h.events.contains(&ClientEvent::Ready));
}

#[test]
fn quit_before_the_greeting_sends_no_ehlo_after_it() {
    let mut h = Host::new(b"x\n");
    h.client.send(h.now, envelope(&["a@x"], 2)).unwrap();
    h.client.quit(h.now);
    h.pump();
    assert_eq!(h.said(), "");
    h.server("220 hi\r\n");
    assert_eq!(h.said(), "EHLO me.example\r\n");
    h.server("250 mx\r\n");
    // The envelope waiting is not started: the session only quits.
    assert_eq!(h.said(), "QUIT\r\n");
    h.server("221 bye\r\n");
    assert!(h.client.is_closed());
    let d = h.deliveries();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].message.0, Status::Temporary);
}
