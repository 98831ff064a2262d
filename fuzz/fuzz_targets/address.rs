//! `address::parse_path`: the first byte picks the path kind and whether
//! SMTPUTF8 is on; the rest is the text after `MAIL FROM:`/`RCPT TO:`.
//!
//! Invariants: no panic; the rest is a suffix of the input that is empty
//! or starts with a space; an address never exceeds the limit and never
//! holds a control byte (it goes into the queue envelope, where NUL ends
//! it and CR/LF would break log lines and headers).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sqmail_core::address::{parse_path, PathKind, MAX_ADDRESS};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let kind = if flags & 1 == 0 {
        PathKind::Reverse
    } else {
        PathKind::Forward
    };
    let utf8 = flags & 2 != 0;
    if let Ok((path, rest)) = parse_path(input, kind, utf8) {
        assert!(input.ends_with(rest));
        assert!(rest.is_empty() || rest[0] == b' ', "rest {rest:?}");
        assert!(path.address.len() <= MAX_ADDRESS);
        assert!(
            !path.address.bytes().any(|b| b < 0x20 || b == 0x7f),
            "control byte in {:?}",
            path.address
        );
        if !utf8 {
            assert!(path.address.is_ascii());
        }
        if path.address.is_empty() {
            assert_eq!(kind, PathKind::Reverse, "only MAIL FROM may be <>");
        }
    }
});
