//! The SMTP server machine with qmail-smtpd's host over a memory store,
//! driven by `pump` exactly as the runtimes drive it.
//!
//! Input: one configuration byte, then a program over the SMTP alphabet
//! (so the fuzzer reaches the grammar fast, as smtp-proto's target does):
//! a byte `0x80 + i` is `ALPHABET[i]`, `0xFF` ends the current write, and
//! any other byte is itself. `fuzz/gen-corpus.py` writes the trace corpus
//! in this form.
//!
//! Invariants: no panic; the machine's output stays bounded when the
//! client never reads; feeding the same bytes one at a time gives the
//! same replies and the same queue; a queued message never holds a CR
//! (every line ending was CRLF); after a 451 for a bare line ending the
//! session is closed and nothing more is queued.

#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sqmail_core::conn::ConnInfo;
use sqmail_core::control::SmtpdControls;
use sqmail_core::policy::SmtpPolicy;
use sqmail_core::smtp::host::{pump, Step};
use sqmail_core::smtp::reception::{Envelope, MemoryStore, Reception};
use sqmail_core::smtp::{Config, Server};

/// Kept in step with `ALPHABET` in fuzz/gen-corpus.py.
const ALPHABET: &[&[u8]] = &[
    b"EHLO bar.com\r\n",
    b"HELO bar.com\r\n",
    b"MAIL FROM:<a@bar.com>",
    b"MAIL FROM:<>",
    b"RCPT TO:<b@foo.com>",
    b"RCPT TO:<x@elsewhere.example>",
    b"RCPT TO:<postmaster>",
    b"DATA\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"VRFY x\r\n",
    b"HELP\r\n",
    b" SIZE=",
    b" BODY=8BITMIME",
    b" BODY=BINARYMIME",
    b"\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r.\r",
    b"Received: x\r\n",
    b"Subject: s\r\n\r\n",
    b"<@foo.com:",
    b"%elsewhere.example",
    b"@foo.com>",
    b"@[127.0.0.1]>",
    b"\"q u\"",
    b"AUTH=<>",
    b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    b"MAIL",
    b"RCPT",
    b"FROM:",
    b"TO:",
    b"1000",
];

const FLUSH: u8 = 0xFF;

/// The writes a program stands for.
fn decode(program: &[u8]) -> Vec<Vec<u8>> {
    let mut writes = vec![Vec::new()];
    for &b in program {
        match b {
            FLUSH => writes.push(Vec::new()),
            0x80..=0xFE if usize::from(b - 0x80) < ALPHABET.len() => writes
                .last_mut()
                .unwrap()
                .extend_from_slice(ALPHABET[usize::from(b - 0x80)]),
            _ => writes.last_mut().unwrap().push(b),
        }
    }
    writes.retain(|w| !w.is_empty());
    writes
}

struct Settings {
    databytes: u64,
    relay: bool,
    max_recipients: usize,
    max_errors: usize,
    max_line: usize,
    /// The client never reads: output must stay bounded anyway.
    never_reads: bool,
}

fn settings(b: u8) -> Settings {
    Settings {
        databytes: [0, 10, 100, 1000][usize::from(b & 3)],
        relay: b & 4 != 0,
        max_recipients: if b & 8 != 0 { 2 } else { 1000 },
        max_errors: if b & 16 != 0 { 3 } else { 20 },
        max_line: if b & 32 != 0 { 40 } else { 2048 },
        never_reads: b & 64 != 0,
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Run {
    output: Vec<u8>,
    committed: Vec<(Envelope, Vec<u8>)>,
    closed: bool,
}

const MAX_OUTPUT: usize = 4096;

fn run(s: &Settings, writes: &[Vec<u8>], bytewise: bool) -> Run {
    let controls = SmtpdControls {
        me: Some("foo.com".into()),
        smtpgreeting: "foo.com".into(),
        localiphost: Some("foo.com".into()),
        rcpthosts: Some(vec!["foo.com".into()]),
        badmailfrom: vec!["@bad.example".into()],
        databytes: s.databytes,
        timeoutsmtpd: 1200,
    };
    let mut config = Config::new("foo.com");
    config.databytes = s.databytes;
    config.max_recipients = s.max_recipients;
    config.max_errors = s.max_errors;
    config.max_line = s.max_line;
    config.max_pipelined = 8192;
    config.max_output = MAX_OUTPUT;
    let conn = ConnInfo {
        remote_ip: "192.0.2.1".into(),
        local_ip: "127.0.0.1".into(),
        relay_client: s.relay.then(String::new),
        ..ConnInfo::default()
    };
    let policy = Arc::new(SmtpPolicy::new(&controls, None));
    let mut host = Reception::new(policy, conn, MemoryStore::default());
    let mut now = Instant::now();
    let mut server = Server::new(Arc::new(config), now);
    let mut output = Vec::new();
    let mut closed = false;
    let mut bare_451_at: Option<usize> = None;

    let settle = |server: &mut Server,
                  host: &mut Reception<MemoryStore>,
                  output: &mut Vec<u8>,
                  closed: &mut bool,
                  now: Instant| {
        for _ in 0..10_000 {
            match pump(server, host, now) {
                Step::Wait => {}
                Step::Close => *closed = true,
                Step::Blocked(ticket, job) => {
                    server.answer(now, ticket, job()).expect("answer");
                    continue;
                }
            }
            let pending = server.transmit().len();
            // One reply may go past the limit; the machine then stops.
            assert!(pending <= MAX_OUTPUT + 1024, "output grew to {pending}");
            if s.never_reads && !*closed {
                return;
            }
            if pending == 0 {
                return;
            }
            output.extend_from_slice(server.transmit());
            server.advance_transmit(pending);
        }
        panic!("the machine did not settle");
    };

    settle(&mut server, &mut host, &mut output, &mut closed, now);
    for write in writes {
        let chunks: Vec<&[u8]> = if bytewise {
            write.chunks(1).collect()
        } else {
            vec![&write[..]]
        };
        for mut chunk in chunks {
            while !chunk.is_empty() && !closed {
                let room = server.input_capacity();
                if room == 0 {
                    break;
                }
                let n = room.min(chunk.len());
                server.handle_input(now, &chunk[..n]);
                chunk = &chunk[n..];
                settle(&mut server, &mut host, &mut output, &mut closed, now);
                if bare_451_at.is_none() && contains(&output, b"451 4.6.0") {
                    bare_451_at = Some(host.store().committed.len());
                    assert!(closed, "451 for a bare line ending must close");
                }
            }
            if closed || server.input_capacity() == 0 {
                break;
            }
        }
        now += Duration::from_secs(1);
    }
    if !closed {
        server.handle_eof(now);
        settle(&mut server, &mut host, &mut output, &mut closed, now);
        assert!(closed, "end of stream must close the session");
    }
    let committed = host.store().committed.clone();
    if let Some(n) = bare_451_at {
        assert_eq!(committed.len(), n, "queued after a bare line ending");
    }
    for (_, data) in &committed {
        assert!(!data.contains(&b'\r'), "a queued message holds a CR");
    }
    Run {
        output,
        committed,
        closed,
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, program)) = data.split_first() else {
        return;
    };
    let s = settings(config);
    let writes = decode(program);
    if writes.iter().map(Vec::len).sum::<usize>() > 64 * 1024 {
        return;
    }
    let whole = run(&s, &writes, false);
    // A client that never reads may see the machine stop at different
    // points depending on the split; compare only clients that read.
    if !s.never_reads {
        let split = run(&s, &writes, true);
        assert_eq!(whole, split, "one byte per write changed the session");
    }
});
