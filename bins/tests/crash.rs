//! A 250 is a promise: messages injected while `sqmail smtpd` is killed
//! with SIGKILL at random moments must all be in the queue afterwards,
//! whole, and no half-written message may ever be queued.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Client, Daemon, TestHome};

const ROUNDS: usize = 6;
const CLIENTS: usize = 6;

/// Sends messages until the server goes away; records the ids that got 250.
fn client_loop(
    addr: std::net::SocketAddr,
    round: usize,
    client: usize,
    acked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) {
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut c) = Client::connect(addr) else {
            return;
        };
        let session = (|| -> std::io::Result<bool> {
            if common::code(&c.reply()?)? != 220 || c.cmd("HELO crash.test")? != 250 {
                return Ok(false);
            }
            for _ in 0..3 {
                seq += 1;
                let id = format!("r{round}-c{client}-m{seq}");
                if c.cmd("MAIL FROM:<a@crash.test>")? != 250
                    || c.cmd("RCPT TO:<b@example.org>")? != 250
                    || c.cmd("DATA")? != 354
                {
                    return Ok(false);
                }
                // A body big enough that a kill can land in the middle of it.
                let filler = "x".repeat(70);
                let mut body = format!("Subject: {id}\r\n\r\n");
                for line in 0..60 {
                    body.push_str(&format!("{line:03} {filler}\r\n"));
                }
                body.push_str(&format!("END-{id}\r\n.\r\n"));
                c.send(&body)?;
                if common::code(&c.reply()?)? == 250 {
                    acked.lock().unwrap().push(id);
                } else {
                    return Ok(false);
                }
            }
            Ok(true)
        })();
        if !matches!(session, Ok(true)) {
            return;
        }
    }
}

#[test]
fn no_acknowledged_message_is_lost_and_none_is_partial() {
    let home = TestHome::new("crash");
    home.control("rcpthosts", "example.org\n");
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    for round in 0..ROUNDS {
        let mut daemon = Daemon::start(&home.path, &[]);
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let (acked, stop, addr) = (acked.clone(), stop.clone(), daemon.addr);
                std::thread::spawn(move || client_loop(addr, round, client, acked, stop))
            })
            .collect();
        // xorshift: a different kill moment every round and every run.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(50 + seed % 400));
        daemon.kill();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > ROUNDS,
        "the load reached the server ({} acked)",
        acked.len()
    );
    let mut queued = HashSet::new();
    for (envelope, text) in home.queued() {
        assert!(
            envelope.iter().any(|r| r == "Tb@example.org"),
            "whole envelope: {envelope:?}"
        );
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or_else(|| panic!("a queued message without its header: {text:?}"))
            .to_string();
        assert!(
            text.ends_with(&format!("END-{id}\n")),
            "a partial message was queued: {id}"
        );
        queued.insert(id);
    }
    for id in &acked {
        assert!(queued.contains(id), "message {id} got 250 and was lost");
    }
    eprintln!(
        "{} messages acknowledged across {ROUNDS} kills, {} queued",
        acked.len(),
        queued.len()
    );
}
