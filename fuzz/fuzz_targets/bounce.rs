//! Bounces (core/src/bounce.rs): `paragraph` and `compose`.
//!
//! Input: 17 bytes (message length u64 LE, `bouncemaxbytes` u64 LE, a flag
//! byte: bit 0 sets the limit), then `\x00`-separated strings: sender, date,
//! bouncefrom, bouncehost, doublebounceto, doublebouncehost, then pairs of
//! failed recipient and report.
//!
//! Invariants: no panic; a paragraph is `<recipient>:` (LFs in the
//! recipient made `_`), then the report, and ends in an empty line, which
//! is its only empty line unless the report itself ends in one (qmail's
//! `addbounce` leaves the report's last LF alone); `compose` discards
//! exactly a (VERP-stripped) `#@[]` sender and a bounce's bounce with
//! double bounces off; otherwise `copy_len` ≤ the message length and ≤ a
//! non-zero limit, the recipient is the stripped sender (or doublebounceto@
//! doublebouncehost), the text has every paragraph and ends in the
//! `Return-Path:` line (its own last line when the sender has no CR or LF),
//! and `with_message` appends `copy_len` bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sqmail_core::bounce::{compose, paragraph, Bounce, BounceInput, BounceSettings, Failure};

fn check_paragraph(recipient: &str, report: &str, p: &str) {
    let head = format!("<{}>:\n", recipient.replace('\n', "_"));
    assert!(p.starts_with(&head), "{p:?}");
    assert!(p.ends_with("\n\n"), "{p:?}");
    let mut body = format!("{head}{report}");
    if !report.is_empty() && !report.ends_with('\n') {
        body.push('\n');
    }
    // Same length: blank lines inside became `/`, nothing else changed.
    assert_eq!(p.len(), body.len() + 1);
    for (a, b) in p.bytes().zip(body.bytes()) {
        assert!(a == b || (a == b'/' && b == b'\n'), "{p:?} from {body:?}");
    }
    if !body.ends_with("\n\n") {
        assert_eq!(p.find("\n\n"), Some(p.len() - 2), "empty line inside {p:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut fixed = [0u8; 17];
    let n = data.len().min(17);
    fixed[..n].copy_from_slice(&data[..n]);
    let message_len = u64::from_le_bytes(fixed[0..8].try_into().unwrap());
    let limit = u64::from_le_bytes(fixed[8..16].try_into().unwrap());
    let max_bytes = (fixed[16] & 1 != 0).then_some(limit);
    let text = String::from_utf8_lossy(&data[n..]);
    let mut parts = text.split('\0');
    let mut next = || parts.next().unwrap_or_default().to_string();
    let sender = next();
    let date = next();
    let settings = BounceSettings {
        bouncefrom: next(),
        bouncehost: next(),
        doublebounceto: next(),
        doublebouncehost: next(),
        max_bytes,
    };
    let mut failures = Vec::new();
    loop {
        let recipient = next();
        let report = next();
        if recipient.is_empty() && report.is_empty() {
            break;
        }
        let p = paragraph(&recipient, &report);
        check_paragraph(&recipient, &report, &p);
        failures.push(Failure { recipient, report });
    }

    let input = BounceInput {
        sender: &sender,
        failures: &failures,
        date: &date,
        message_len,
    };
    let stripped = sender.strip_suffix("-@[]").unwrap_or(&sender);
    let discard = stripped == "#@[]" || (stripped.is_empty() && settings.doublebounceto.is_empty());
    let c = match compose(&input, &settings) {
        Bounce::Discard => {
            assert!(discard, "discarded a bounce for {sender:?}");
            return;
        }
        Bounce::Send(c) => c,
    };
    assert!(!discard, "kept a bounce for {sender:?}");
    assert!(c.copy_len <= message_len, "{} > {message_len}", c.copy_len);
    if let Some(m) = max_bytes.filter(|&m| m > 0) {
        assert!(c.copy_len <= m);
    }
    if stripped.is_empty() {
        assert_eq!(c.sender, "#@[]");
        assert_eq!(
            c.recipient,
            format!("{}@{}", settings.doublebounceto, settings.doublebouncehost)
        );
    } else {
        assert_eq!(c.sender, "");
        assert_eq!(c.recipient, stripped);
    }
    let prefix = String::from_utf8(c.prefix.clone()).expect("the prefix is UTF-8");
    assert!(prefix.starts_with(&format!("Date: {date}\n")));
    assert!(prefix.ends_with(">\n"));
    if !sender.contains(['\n', '\r']) {
        // An LF in the sender is copied into To: and Return-Path: (qmail
        // escapes it with a backslash, still breaking the line).
        let last = prefix[..prefix.len() - 1].rfind('\n').map_or(0, |i| i + 1);
        assert!(prefix[last..].starts_with("Return-Path: <"), "{prefix:?}");
    }
    let mut at = 0;
    for f in &failures {
        let p = paragraph(&f.recipient, &f.report);
        let i = prefix[at..].find(&p).expect("each paragraph, in order");
        at += i + p.len();
    }
    let message = vec![b'm'; (message_len % 4096) as usize];
    let whole = c.with_message(&message);
    assert!(whole.starts_with(&c.prefix));
    assert_eq!(
        whole.len() - c.prefix.len(),
        (c.copy_len as usize).min(message.len())
    );
});
