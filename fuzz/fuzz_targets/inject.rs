//! qmail-inject's header processing (core/src/inject/): `Settings::load`
//! from a made-up environment and controls, then `inject` of a message.
//!
//! Input: one option byte (bits 0-1: `-A`/`-a`/`-h`/`-H`, bit 2: `-n`,
//! bit 3: `-f` given, bit 4: `QMAILMFTFILE` lists), then `\x00`-separated:
//! the environment (`NAME=value` lines; `NOW` and `PID` set the request's
//! time and pid), the controls (`name=value` lines, `\x01` for a newline
//! inside a file), the recipient arguments (one a line), the `-f` sender,
//! the mailing lists (one a line), and the message (the rest, NULs kept).
//!
//! The header qmail-inject writes does not itself end in a blank line: the
//! input's own blank line is kept at `body_start`, or one is added only
//! when the header ended at a non-field line. Invariants: no panic; the
//! whole message ends in LF; the header ends in LF; `body_start` is in the
//! input; without `-n` there is at least one recipient and none is empty;
//! the header read back as a header (`split_header`) is all fields and ends
//! where the body starts, so nothing in the header can end it early or move
//! text into the body. That last one is checked only when the environment,
//! controls, `-f` and lists have no control bytes (qmail passes them on
//! unchanged).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sqmail_core::inject::{inject, split_header, Recipients, Request, Settings};

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn pairs(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace('\x01', "\n")))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&opts, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(6, |&b| b == 0);
    let mut next = || parts.next().unwrap_or_default();
    let env = pairs(&lossy(next()));
    let controls = pairs(&lossy(next()));
    let args = lossy(next());
    let sender = lossy(next());
    let lists = lossy(next());
    let input = next();

    let lookup = |list: &[(String, String)], name: &str| {
        list.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    };
    let mut s = Settings::load(&|n| lookup(&controls, n), &|n| lookup(&env, n));
    if opts & 16 != 0 {
        s.mft = Some(lists.lines().map(str::to_string).collect());
    }
    let req = Request {
        recipients: match opts & 3 {
            0 => Recipients::Default,
            1 => Recipients::Args,
            2 => Recipients::Header,
            _ => Recipients::Both,
        },
        args: args.lines().map(str::to_string).collect(),
        sender: (opts & 8 != 0).then(|| sender.clone()),
        now: lookup(&env, "NOW")
            .and_then(|v| v.parse().ok())
            .unwrap_or(811_485_414),
        pid: lookup(&env, "PID")
            .and_then(|v| v.parse().ok())
            .unwrap_or(42),
        print: opts & 4 != 0,
    };

    let Ok(out) = inject(input, &s, &req) else {
        return;
    };
    assert!(out.body_start <= input.len());
    assert!(out.header.ends_with(b"\n"), "{:?}", lossy(&out.header));
    let message = out.message(input);
    assert!(message.ends_with(b"\n"));
    if !req.print {
        assert!(!out.recipients.is_empty());
    }
    assert!(out.recipients.iter().all(|r| !r.is_empty()));

    let clean = |v: &str| !v.bytes().any(|b| b.is_ascii_control() && b != b'\t');
    let tame = env.iter().all(|(_, v)| clean(v))
        && controls
            .iter()
            .all(|(_, v)| clean(v.lines().next().unwrap_or("")))
        && clean(&sender)
        && s.mft.iter().flatten().all(|l| clean(l));
    if !tame {
        return;
    }
    let split = split_header(input);
    let header = if split.insert_blank {
        let h = out
            .header
            .strip_suffix(b"\n")
            .expect("the added blank line");
        assert!(h.ends_with(b"\n") || h.is_empty());
        h
    } else {
        &out.header[..]
    };
    let again = split_header(&message);
    assert_eq!(
        (again.body_start, lossy(&again.fields.concat())),
        (header.len(), lossy(header)),
        "the header read back is not the header written"
    );
});
