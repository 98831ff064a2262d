//! A 250 is a promise: messages injected while `sqmail smtpd` is killed
//! with SIGKILL at random moments must all be in the queue afterwards,
//! whole, and no half-written message may ever be queued.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use common::{Daemon, TestHome};

const ROUNDS: usize = 6;
const CLIENTS: usize = 6;

#[test]
fn no_acknowledged_message_is_lost_and_none_is_partial() {
    let home = TestHome::new("crash");
    home.control("rcpthosts", "example.org\n");
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut seed = common::kill_seed();
    for round in 0..ROUNDS {
        let mut daemon = Daemon::start(&home.path, &[]);
        let addr = daemon.addr;
        common::load_then_kill(
            addr,
            "b@example.org",
            round,
            CLIENTS,
            &acked,
            &mut seed,
            || daemon.kill(),
        );
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
        queued.insert(common::whole_message_id(&text));
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
