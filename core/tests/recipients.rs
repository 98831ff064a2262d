//! s/qmail's `control/recipients` through the whole machine: `Server` +
//! `Reception` + `SmtpPolicy`, as `sqmail smtpd` builds them, with the cdb
//! as an in-memory `Lookup`. (The conformance traces cannot name a cdb, so
//! this is where the check meets the wire format.)

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use sqmail_core::conn::ConnInfo;
use sqmail_core::control::SmtpdControls;
use sqmail_core::policy::{Lookup, SmtpPolicy};
use sqmail_core::recipients::{self, Recipients};
use sqmail_core::smtp::host::{pump, Step};
use sqmail_core::smtp::reception::{Envelope, MemoryStore, Reception};
use sqmail_core::smtp::{Config, Server};

type Committed = Vec<(Envelope, Vec<u8>)>;

fn policy(recipients_text: &str, keys: &[&str]) -> Arc<SmtpPolicy> {
    let controls = SmtpdControls::load(&mut |name| match name {
        "me" => Some("mx.example.org\n".into()),
        "rcpthosts" => Some("example.org\nvirtual.example\n".into()),
        _ => None,
    })
    .unwrap();
    let rules = recipients::parse("recipients", recipients_text.as_bytes()).unwrap();
    let set: HashSet<Vec<u8>> = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
    let recipients = Recipients::build("recipients", &rules, &mut |_| {
        Ok(Box::new(set.clone()) as Box<dyn Lookup>)
    })
    .unwrap();
    Arc::new(SmtpPolicy::new(&controls, None).with_recipients(recipients))
}

/// One session: everything the server said, and what it queued.
fn session(policy: Arc<SmtpPolicy>, conn: ConnInfo, input: &[u8]) -> (String, Committed) {
    let now = Instant::now();
    let mut server = Server::new(Arc::new(Config::new("mx.example.org")), now);
    let mut host = Reception::new(policy, conn, MemoryStore::default());
    let mut out = Vec::new();
    let mut drain = |server: &mut Server, host: &mut Reception<MemoryStore>| loop {
        match pump(server, host, now) {
            Step::Blocked(ticket, job) => server.answer(now, ticket, job()).unwrap(),
            Step::Wait | Step::Close => {}
        }
        let n = server.transmit().len();
        if n == 0 {
            break;
        }
        out.extend_from_slice(server.transmit());
        server.advance_transmit(n);
    };
    drain(&mut server, &mut host);
    server.handle_input(now, input);
    drain(&mut server, &mut host);
    (
        String::from_utf8(out).unwrap(),
        host.store().committed.clone(),
    )
}

fn conn() -> ConnInfo {
    ConnInfo {
        remote_ip: "192.0.2.1".into(),
        local_ip: "127.0.0.1".into(),
        ..ConnInfo::default()
    }
}

const SESSION: &[u8] = b"EHLO c.example\r\nMAIL FROM:<s@c.example>\r\n\
RCPT TO:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\n\
RCPT TO:<anyone@virtual.example>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n";

#[test]
fn unknown_recipients_are_refused_on_the_wire() {
    let p = policy(
        "users/recipients.cdb\n",
        &[":alice@example.org", ":@virtual.example"],
    );
    let (out, store) = session(p, conn(), SESSION);
    assert!(
        out.contains("\r\n550 5.1.1 sorry, no mailbox here by that name\r\n"),
        "{out}"
    );
    let envelopes: Vec<_> = store.iter().map(|(e, _)| e.clone()).collect();
    assert_eq!(envelopes.len(), 1);
    assert_eq!(
        envelopes[0].recipients,
        ["alice@example.org", "anyone@virtual.example"]
    );
}

#[test]
fn recipients450_makes_it_temporary() {
    let p = policy(
        "example.org:users/recipients.cdb\n",
        &[":alice@example.org"],
    );
    let c = ConnInfo {
        recipients_450: true,
        ..conn()
    };
    let (out, store) = session(p, c, SESSION);
    assert!(
        out.contains("\r\n450 4.1.1 sorry, no mailbox here by that name\r\n"),
        "{out}"
    );
    // virtual.example has no line: not checked.
    assert_eq!(
        store[0].0.recipients,
        ["alice@example.org", "anyone@virtual.example"]
    );
}

#[test]
fn relay_clients_are_not_checked() {
    let p = policy("users/recipients.cdb\n", &[]);
    let c = ConnInfo {
        relay_client: Some(String::new()),
        ..conn()
    };
    let (out, store) = session(p, c, SESSION);
    assert!(!out.contains("550"), "{out}");
    assert_eq!(store[0].0.recipients.len(), 3);
}
