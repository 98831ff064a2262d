//! The SMTP client machine against an arbitrary server, with the host the
//! conformance client traces assume: the first envelope at once, the next
//! on each `Ready` (three in all), QUIT when none is left, the message fed
//! whole on `WantBody`.
//!
//! Input: one configuration byte (bit 0: two recipients; bit 1: 8-bit
//! message; bit 2: a big SIZE; bit 3: the host quits early, after the
//! server's write number `config >> 4`, whatever the session is doing), then the message up to the first `0xFF`,
//! then the server's writes separated by `0xFF`; an empty write stands for
//! a server silent past the timeout. `fuzz/gen-corpus.py` writes the
//! client traces in this form.
//!
//! Invariants: no panic; what the client sends stays within a bound set by
//! the server's lines and the message; reports are bounded; every envelope
//! handed over gets exactly one Delivery; the session ends closed after
//! the server's end of stream; no command follows QUIT; feeding each write one byte at a time gives
//! the same bytes sent and the same events.

#![no_main]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sqmail_core::smtp::client::{Client, ClientConfig, ClientEvent, Envelope, MAX_TEXT};

const SEP: u8 = 0xFF;
const ENVELOPES: usize = 3;

#[derive(Debug, PartialEq, Eq)]
struct Run {
    sent: Vec<u8>,
    /// What was sent outside the message (commands and a lone dot).
    commands: Vec<u8>,
    events: Vec<ClientEvent>,
}

fn take_transmit(client: &mut Client, now: Instant, into: &mut [&mut Vec<u8>]) {
    let n = client.transmit().len();
    for out in into.iter_mut() {
        out.extend_from_slice(client.transmit());
    }
    client.advance_transmit(now, n);
}

fn envelope(config: u8, message: &[u8]) -> Envelope {
    let mut recipients = vec![b"b@mx.example".to_vec()];
    if config & 1 != 0 {
        recipients.push(b"c@mx.example".to_vec());
    }
    Envelope {
        sender: b"a@me.example".to_vec(),
        recipients,
        size: if config & 4 != 0 {
            1 << 40
        } else {
            message.len() as u64
        },
        eight_bit: config & 2 != 0,
    }
}

fn run(config: u8, message: &[u8], writes: &[&[u8]], bytewise: bool) -> Run {
    let mut now = Instant::now();
    let timeout = Duration::from_secs(60);
    let client_config = ClientConfig {
        helo: "me.example".into(),
        timeout,
        peer: IpAddr::from([192, 0, 2, 1]),
    };
    let mut client = Client::new(Arc::new(client_config), now);
    let mut left = ENVELOPES - 1;
    let mut handed = 1;
    client
        .send(now, envelope(config, message))
        .expect("first send");
    let mut run = Run {
        sent: Vec::new(),
        commands: Vec::new(),
        events: Vec::new(),
    };
    let quit_after = (config & 8 != 0).then_some(usize::from(config >> 4));
    let mut lines = 0usize;

    let drive =
        |client: &mut Client, run: &mut Run, left: &mut usize, handed: &mut usize, now: Instant| {
            while let Some(event) = client.poll_event() {
                match &event {
                    // Stale when later input in the same call closed the session.
                    ClientEvent::WantBody if client.wants_body() => {
                        take_transmit(client, now, &mut [&mut run.sent, &mut run.commands]);
                        client.body(now, message).expect("body while wants_body");
                        client.end_body(now).expect("end_body while wants_body");
                        take_transmit(client, now, &mut [&mut run.sent]);
                    }
                    ClientEvent::WantBody => {
                        assert!(client.is_closed(), "WantBody, yet no body taken")
                    }
                    ClientEvent::Ready if *left > 0 => {
                        *left -= 1;
                        *handed += 1;
                        client
                            .send(now, envelope(config, message))
                            .expect("send on Ready");
                    }
                    ClientEvent::Ready => client.quit(now),
                    ClientEvent::Done(d) => {
                        let bound = (d.recipients.len() + 1) * (MAX_TEXT + 256);
                        assert!(
                            d.report().len() <= bound,
                            "report of {} bytes",
                            d.report().len()
                        );
                    }
                    ClientEvent::Closed => {}
                }
                run.events.push(event);
            }
            take_transmit(client, now, &mut [&mut run.sent, &mut run.commands]);
        };

    drive(&mut client, &mut run, &mut left, &mut handed, now);
    for (i, write) in writes.iter().enumerate() {
        if write.is_empty() {
            now += timeout;
            client.handle_timeout(now);
        }
        let piece = if bytewise { 1 } else { write.len().max(1) };
        for chunk in write.chunks(piece) {
            client.handle_input(now, chunk);
        }
        lines += write.iter().filter(|&&b| b == b'\n').count();
        drive(&mut client, &mut run, &mut left, &mut handed, now);
        // Each reply line makes at most a few commands; the message goes
        // out at most once an envelope, at most doubled by dot-stuffing.
        let bound = ENVELOPES * (2 * message.len() + 8) + 256 * (lines + 2);
        assert!(
            run.sent.len() <= bound,
            "sent {} bytes, bound {bound}",
            run.sent.len()
        );
        if quit_after == Some(i) {
            client.quit(now);
            drive(&mut client, &mut run, &mut left, &mut handed, now);
        }
        now += Duration::from_secs(1);
    }
    client.handle_eof(now);
    drive(&mut client, &mut run, &mut left, &mut handed, now);
    assert!(client.is_closed(), "end of stream must close the session");
    let done = run
        .events
        .iter()
        .filter(|e| matches!(e, ClientEvent::Done(_)))
        .count();
    assert_eq!(done, handed, "every envelope gets exactly one Delivery");
    if let Some(at) = find(&run.commands, b"QUIT\r\n") {
        let after = &run.commands[at + 6..];
        assert!(
            after.is_empty(),
            "sent {:?} after QUIT",
            String::from_utf8_lossy(after)
        );
    }
    run
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.split(|&b| b == SEP);
    let message = parts.next().unwrap_or_default();
    let writes: Vec<&[u8]> = parts.collect();
    let whole = run(config, message, &writes, false);
    let split = run(config, message, &writes, true);
    assert_eq!(whole, split, "one byte per call changed the session");
});
