//! A 250 is a promise: messages injected while `sqmail smtpd` is killed
//! with SIGKILL at random moments must all be in the queue afterwards,
//! whole, and no half-written message may ever be queued.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Daemon, TestHome};

const ROUNDS: usize = 6;
const CLIENTS: usize = 6;

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
                std::thread::spawn(move || {
                    common::client_loop(
                        addr,
                        "b@example.org",
                        &format!("r{round}-c{client}"),
                        &acked,
                        &stop,
                    )
                })
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
