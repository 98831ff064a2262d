//! The control-file parsers and `SmtpdControls::load_with` over files cut
//! from the input (`\x00` separates the files, in the order of `NAMES`).
//!
//! Invariants: no panic; list entries are non-empty, not comments and
//! without trailing blanks; a loaded timeout is at least 1; a loaded
//! greeting is never empty.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sqmail_core::control::{parse_int, parse_line, parse_list, scan_ulong, SmtpdControls};

const NAMES: [&str; 7] = [
    "me",
    "smtpgreeting",
    "localiphost",
    "rcpthosts",
    "badmailfrom",
    "databytes",
    "timeoutsmtpd",
];

fuzz_target!(|data: &[u8]| {
    if let Ok(list) = parse_list("x", data) {
        for entry in list {
            assert!(!entry.is_empty());
            assert!(!entry.starts_with('#'));
            assert!(!entry.ends_with([' ', '\t', '\r', '\n']));
        }
    }
    if let Ok(Some(line)) = parse_line("x", data) {
        assert!(!line.is_empty() && !line.contains('\n'));
    }
    let _ = parse_int("x", data);
    let _ = scan_ulong(&String::from_utf8_lossy(data));

    let files: Vec<&[u8]> = data.splitn(NAMES.len(), |&b| b == 0).collect();
    let loaded = SmtpdControls::load_with(&mut |name| {
        let i = NAMES.iter().position(|n| *n == name);
        Ok(i.and_then(|i| files.get(i)).map(|f| f.to_vec()))
    });
    if let Ok(c) = loaded {
        assert!(c.timeoutsmtpd >= 1);
        assert!(!c.smtpgreeting.is_empty());
    }
});
