//! `.qmail` files and qmail-local's pure helpers (core/src/dotqmail.rs).
//! The whole input is parsed as a `.qmail` file; it is also cut at `\x00`
//! into dash, ext, host, sender and a message for the other helpers.
//!
//! Invariants: no panic; `parse` fails only with `BLANK_FIRST_LINE`, and
//! exactly when the first line (cut at NUL, trailing blanks stripped) is
//! empty; otherwise one instruction per line, classified by its first byte
//! as dot-qmail(5) says, its text the line without the marker;
//! `check_forward_only` rejects exactly files with a file or program
//! delivery when forwards only are allowed; `search_order` is qmesearch's
//! order (`.qmail<dash><safe ext>` first, `.qmail<dash>default` last,
//! `$DEFAULT` the cut-off rest of ext); `safe_ext` keeps the length and
//! leaves no `.` or ASCII capital; the header lines end in their only LF;
//! `looping` only when the message holds the line.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sqmail_core::dotqmail::{
    check_forward_only, looping, myctime, needs_from_quote, owner_files, parse, program_exit,
    quote2, safe_ext, search_order, Context, Instruction, ProgramExit, BLANK_FIRST_LINE,
    FILE_WITH_X_BIT, PROG_WITH_X_BIT,
};

/// The line as qmail-local sees it: up to a NUL, trailing blanks gone.
fn clean(raw: &[u8]) -> &[u8] {
    let raw = raw.split(|&b| b == 0).next().unwrap_or_default();
    let end = raw
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    &raw[..end]
}

fn check_instruction(n: usize, line: &[u8], ins: &Instruction) {
    use Instruction::*;
    let ok = match ins {
        Comment => line.is_empty() || line[0] == b'#',
        List => line == b"+list",
        Ignored => line.first() == Some(&b'+') && line != b"+list",
        Program(p) => line[0] == b'|' && &line[1..] == p,
        Forward(p) if line.first() == Some(&b'&') => &line[1..] == p,
        Forward(p) => line == p && !b"#./|+&".contains(&line[0]),
        Mbox(p) => line == p && b"./".contains(&line[0]) && !line.ends_with(b"/"),
        Maildir(p) => line == p && b"./".contains(&line[0]) && line.ends_with(b"/"),
    };
    assert!(ok, "line {n} {line:?} read as {ins:?}");
    if let Program(p) | Forward(p) | Mbox(p) | Maildir(p) = ins {
        assert!(!p.contains(&b'\n') && !p.contains(&0), "{ins:?}");
    }
}

fn one_lf_at_end(line: &[u8]) {
    assert!(line.ends_with(b"\n"), "{line:?}");
    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "{line:?}");
}

fuzz_target!(|data: &[u8]| {
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').map(clean).collect();
    match parse(data) {
        Err(e) => {
            assert_eq!(e, BLANK_FIRST_LINE);
            assert!(lines[0].is_empty(), "{:?} is not blank", lines[0]);
        }
        Ok(ins) => {
            assert!(!lines[0].is_empty());
            assert_eq!(ins.len(), lines.len());
            for (n, (line, i)) in lines.iter().zip(&ins).enumerate() {
                check_instruction(n + 1, line, i);
            }
            let delivers = |i: &Instruction| {
                matches!(
                    i,
                    Instruction::Mbox(_) | Instruction::Maildir(_) | Instruction::Program(_)
                )
            };
            let r = check_forward_only(&ins, true);
            assert_eq!(r.is_ok(), !ins.iter().any(delivers));
            if let Err(e) = r {
                assert!(e == FILE_WITH_X_BIT || e == PROG_WITH_X_BIT);
            }
            if !ins.contains(&Instruction::List) {
                assert_eq!(check_forward_only(&ins, false), Ok(()));
            }
        }
    }

    let mut parts = data.splitn(5, |&b| b == 0);
    let dash = parts.next().unwrap_or_default();
    let ext = parts.next().unwrap_or_default();
    let host = parts.next().unwrap_or_default();
    let sender = parts.next().unwrap_or_default();
    let message = parts.next().unwrap_or_default();

    let safe = safe_ext(ext);
    assert_eq!(safe.len(), ext.len());
    assert!(!safe.contains(&b'.') && !safe.iter().any(u8::is_ascii_uppercase));

    let order = search_order(dash, ext);
    let stem = |s: &[u8]| [b".qmail", dash, s].concat();
    assert_eq!(order[0].name, stem(&safe));
    if let Some(d) = &order[0].default {
        assert!(safe.ends_with(b"default") && ext.ends_with(d) && d.len() == 7);
    }
    let last = order.last().unwrap();
    assert!(order.len() >= 2);
    assert_eq!(last.name, stem(b"default"));
    assert_eq!(last.default.as_deref(), Some(ext));
    for c in &order[1..] {
        let d = c.default.as_ref().expect("a -default file sets $DEFAULT");
        assert!(ext.ends_with(d));
        let cut = &safe[..ext.len() - d.len()];
        assert!(cut.is_empty() || cut.ends_with(b"-"), "{c:?}");
        assert_eq!(c.name, [&stem(cut)[..], b"default"].concat());
    }
    let (o, od) = owner_files(dash, ext);
    assert_eq!(o, [&stem(&safe)[..], b"-owner"].concat());
    assert_eq!(od, [&o[..], b"-default"].concat());

    let q = quote2(sender);
    if q != sender {
        assert!(q.starts_with(b"\""), "{q:?}");
        let at = sender
            .iter()
            .rposition(|&b| b == b'@')
            .unwrap_or(sender.len());
        assert!(q.ends_with(&sender[at..]));
    }

    let ctx = Context {
        user: dash.to_vec(),
        home: ext.to_vec(),
        local: [dash, ext].concat(),
        dash: dash.to_vec(),
        ext: ext.to_vec(),
        host: host.to_vec(),
        sender: sender.to_vec(),
    };
    let now = u64::from_le_bytes(
        data.iter()
            .copied()
            .chain([0; 8])
            .take(8)
            .collect::<Vec<u8>>()
            .try_into()
            .unwrap(),
    );
    let dt = ctx.dtline();
    one_lf_at_end(&dt);
    one_lf_at_end(&ctx.rpline());
    let uf = ctx.ufline(now);
    one_lf_at_end(&uf);
    assert!(uf.starts_with(b"From "));
    one_lf_at_end(myctime(now).as_bytes());
    for (owner, owner_default) in [(false, false), (true, false), (true, true)] {
        let ns = ctx.newsender(owner, owner_default);
        if !owner || sender.is_empty() || sender == b"#@[]" {
            assert_eq!(ns, sender);
        }
    }
    let env = ctx.environment(now, sender, Some(ext));
    let var = |k: &str| env.iter().find(|e| e.0 == k).map(|e| e.1.clone());
    assert_eq!(var("EXT").as_deref(), Some(ext));
    assert_eq!(var("DEFAULT").as_deref(), Some(ext));
    assert_eq!(var("DTLINE"), Some(dt.clone()));
    for h in ["HOST2", "HOST3", "HOST4"] {
        assert!(host.starts_with(&var(h).unwrap()));
    }
    for e in ["EXT2", "EXT3", "EXT4"] {
        assert!(ext.ends_with(&var(e).unwrap()));
    }
    assert!(ctx
        .environment(now, b"", None)
        .iter()
        .all(|e| e.0 != "DEFAULT"));

    if looping(message, &dt) {
        assert!(message.windows(dt.len()).any(|w| w == dt.as_slice()));
    }
    assert!(looping(&[&dt[..], b"\n", message].concat(), &dt));
    for line in message.split(|&b| b == b'\n') {
        let stripped = &line[line.iter().position(|&b| b != b'>').unwrap_or(line.len())..];
        assert_eq!(needs_from_quote(line), stripped.starts_with(b"From "));
    }
    let code = i32::from_le_bytes([dash.len() as u8, ext.len() as u8, 0, 0]);
    let want = match code {
        0 => ProgramExit::Ok,
        99 => ProgramExit::Stop,
        64 | 65 | 70 | 76 | 77 | 78 | 100 | 112 => ProgramExit::Hard,
        _ => ProgramExit::Soft,
    };
    assert_eq!(program_exit(code), want);
});
