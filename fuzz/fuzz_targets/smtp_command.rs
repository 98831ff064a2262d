//! `command::parse` and the MAIL/RCPT parameter parsers on one line.
//!
//! Invariants: no panic; a parsed argument is a subslice of the line
//! without surrounding blanks; parameter errors are 501 or 555.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sqmail_core::smtp::command::{parse, parse_mail_params, parse_rcpt_params, Command};

fuzz_target!(|line: &[u8]| {
    let arg = match parse(line) {
        Command::Helo(a)
        | Command::Ehlo(a)
        | Command::Mail(a)
        | Command::Rcpt(a)
        | Command::Data(a)
        | Command::Rset(a)
        | Command::Quit(a)
        | Command::Vrfy(a) => Some(a),
        Command::BadSyntax(reply) => {
            assert_eq!(reply.code, 501);
            None
        }
        _ => None,
    };
    if let Some(a) = arg {
        assert!(a.len() <= line.len());
        assert!(!a.starts_with(b" ") && !a.ends_with(b" "));
    }
    match parse_mail_params(line) {
        Ok(_) => {}
        Err(reply) => assert!(matches!(reply.code, 501 | 555), "{reply:?}"),
    }
    if let Err(reply) = parse_rcpt_params(line) {
        assert!(matches!(reply.code, 501 | 555), "{reply:?}");
    }
});
