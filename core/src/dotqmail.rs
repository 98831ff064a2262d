//! `.qmail` files and the rest of qmail-local's pure logic (dot-qmail(5),
//! qmail-command(8), qmail-local.c): parsing delivery instructions, which
//! file to read for an extension, the lines it adds to a message, the
//! environment programs get, and what a program's exit code means.
//!
//! Everything is bytes: local parts, paths and commands need not be UTF-8.

/// One line of a `.qmail` file, classified by its first byte exactly as
/// qmail-local does after stripping trailing blanks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Instruction {
    /// `#...`, or a blank line after the first.
    Comment,
    /// `+list`: from here on only forwards are allowed (ezmlm's marker).
    List,
    /// Another `+` line, ignored.
    Ignored,
    /// `|command`, run by `/bin/sh -c` (the `|` removed).
    Program(Vec<u8>),
    /// `&address`, or any other line (dot-qmail(5) says "a letter or
    /// number", but qmail-local forwards whatever is not `#./|+`).
    Forward(Vec<u8>),
    /// A path starting with `.` or `/` and not ending in `/`.
    Mbox(Vec<u8>),
    /// A path starting with `.` or `/` and ending in `/`.
    Maildir(Vec<u8>),
}

/// qmail-local's temporary errors for a bad `.qmail`.
pub const BLANK_FIRST_LINE: &str = "Uh-oh: first line of .qmail file is blank. (#4.2.1)";
pub const FILE_WITH_X_BIT: &str = "Uh-oh: .qmail has file delivery but has x bit set. (#4.7.0)";
pub const PROG_WITH_X_BIT: &str = "Uh-oh: .qmail has prog delivery but has x bit set. (#4.7.0)";
/// A missing `.qmail-ext` (and no `-default`) for an address with a dash.
pub const NO_MAILBOX: &str = "Sorry, no mailbox here by that name. (#5.1.1)";
/// An identical `Delivered-To:` line is already in the header.
pub const LOOPING: &str = "This message is looping: it already has my Delivered-To line. (#5.4.6)";

/// Parse a `.qmail` file (or the default delivery, used when the file is
/// empty or absent). The only error is a blank first line, a temporary
/// failure in qmail so that a half-written file is not taken as "nothing".
/// A NUL ends a line's text, as in qmail's C strings.
pub fn parse(contents: &[u8]) -> Result<Vec<Instruction>, &'static str> {
    let mut out = Vec::new();
    let body = contents.strip_suffix(b"\n").unwrap_or(contents);
    for (n, raw) in body.split(|&b| b == b'\n').enumerate() {
        let raw = raw.split(|&b| b == 0).next().unwrap_or_default();
        let end = raw
            .iter()
            .rposition(|&b| b != b' ' && b != b'\t')
            .map_or(0, |i| i + 1);
        let line = &raw[..end];
        let ins = match line.first() {
            None if n == 0 => return Err(BLANK_FIRST_LINE),
            None | Some(b'#') => Instruction::Comment,
            Some(b'.' | b'/') if line.ends_with(b"/") => Instruction::Maildir(line.to_vec()),
            Some(b'.' | b'/') => Instruction::Mbox(line.to_vec()),
            Some(b'|') => Instruction::Program(line[1..].to_vec()),
            Some(b'+') if &line[1..] == b"list" => Instruction::List,
            Some(b'+') => Instruction::Ignored,
            Some(b'&') => Instruction::Forward(line[1..].to_vec()),
            Some(_) => Instruction::Forward(line.to_vec()),
        };
        out.push(ins);
    }
    Ok(out)
}

/// An executable `.qmail` (or one after `+list`) may only forward. qmail
/// finds this mid-file, after earlier lines were delivered; checking first
/// gives the same deferral without the duplicate deliveries.
pub fn check_forward_only(ins: &[Instruction], executable: bool) -> Result<(), &'static str> {
    let mut only = executable;
    for i in ins {
        match i {
            Instruction::List => only = true,
            Instruction::Mbox(_) | Instruction::Maildir(_) if only => return Err(FILE_WITH_X_BIT),
            Instruction::Program(_) if only => return Err(PROG_WITH_X_BIT),
            _ => {}
        }
    }
    Ok(())
}

/// The extension as it appears in file names: ASCII lowercase, `.` → `:`.
pub fn safe_ext(ext: &[u8]) -> Vec<u8> {
    ext.iter()
        .map(|&b| {
            if b == b'.' {
                b':'
            } else {
                b.to_ascii_lowercase()
            }
        })
        .collect()
}

/// A `.qmail` file name to try, and `$DEFAULT` if it is the one found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub name: Vec<u8>,
    pub default: Option<Vec<u8>>,
}

/// qmail-local's `qmesearch` order for `dash` and `ext`: `.qmail-a-b`,
/// then `.qmail-a-b-default`? (only if ext ends in `-`), `.qmail-a-default`,
/// `.qmail-default`. (With an empty dash and ext, qmail's loop also tries
/// `.qmaildefault`; kept.)
pub fn search_order(dash: &[u8], ext: &[u8]) -> Vec<Candidate> {
    let safe = safe_ext(ext);
    let name = |stem: &[u8], tail: &[u8]| [b".qmail", dash, stem, tail].concat();
    let mut out = vec![Candidate {
        name: name(&safe, b""),
        default: safe
            .strip_suffix(b"default")
            .map(|s| ext[s.len()..].to_vec()),
    }];
    for i in (0..=safe.len()).rev() {
        if i == 0 || safe[i - 1] == b'-' {
            out.push(Candidate {
                name: name(&safe[..i], b"default"),
                default: Some(ext[i..].to_vec()),
            });
        }
    }
    out
}

/// The files whose existence makes forwards use an owner sender:
/// `.qmail<dash><ext>-owner` and `...-owner-default`.
pub fn owner_files(dash: &[u8], ext: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let base = [b".qmail", dash, &safe_ext(ext)].concat();
    (
        [&base[..], b"-owner"].concat(),
        [&base[..], b"-owner-default"].concat(),
    )
}

/// What qmail-local knows about one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Context {
    pub user: Vec<u8>,
    pub home: Vec<u8>,
    pub local: Vec<u8>,
    pub dash: Vec<u8>,
    pub ext: Vec<u8>,
    pub host: Vec<u8>,
    pub sender: Vec<u8>,
}

fn replace(mut v: Vec<u8>, from: &[u8], to: u8) -> Vec<u8> {
    v.iter_mut()
        .filter(|b| from.contains(b))
        .for_each(|b| *b = to);
    v
}

impl Context {
    /// `local@host`, `$RECIPIENT`.
    pub fn recipient(&self) -> Vec<u8> {
        [&self.local[..], b"@", &self.host].concat()
    }

    /// `Delivered-To: local@host\n` (newlines in the address become `_`).
    pub fn dtline(&self) -> Vec<u8> {
        let v = replace(
            [&b"Delivered-To: "[..], &self.recipient()].concat(),
            b"\n",
            b'_',
        );
        [v, b"\n".to_vec()].concat()
    }

    /// `Return-Path: <sender>\n`, the box quoted as qmail's `quote2` does.
    pub fn rpline(&self) -> Vec<u8> {
        let v = replace(
            [&b"Return-Path: <"[..], &quote2(&self.sender)].concat(),
            b"\n",
            b'_',
        );
        [v, b">\n".to_vec()].concat()
    }

    /// The mbox `From ` line for a delivery at `now` (Unix seconds).
    pub fn ufline(&self, now: u64) -> Vec<u8> {
        let sender = if self.sender.is_empty() {
            b"MAILER-DAEMON".to_vec()
        } else {
            replace(self.sender.clone(), b" \t\n", b'-')
        };
        [&b"From "[..], &sender, b" ", myctime(now).as_bytes()].concat()
    }

    /// The envelope sender for forwards: the sender, or an owner address
    /// when `.qmail-ext-owner` exists (VERP with `-owner-default` too);
    /// bounces (`<>`, `#@[]`) keep their sender.
    pub fn newsender(&self, owner: bool, owner_default: bool) -> Vec<u8> {
        if self.sender.is_empty() || self.sender == b"#@[]" || !owner {
            return self.sender.clone();
        }
        if owner_default {
            [&self.local[..], b"-owner-@", &self.host, b"-@[]"].concat()
        } else {
            [&self.local[..], b"-owner@", &self.host].concat()
        }
    }

    /// The environment qmail-local gives programs, in its order. `default`
    /// is `$DEFAULT` from the matched [`Candidate`] (unset when `None`).
    pub fn environment(
        &self,
        now: u64,
        newsender: &[u8],
        default: Option<&[u8]>,
    ) -> Vec<(&'static str, Vec<u8>)> {
        let mut env = vec![
            ("HOST", self.host.clone()),
            ("HOME", self.home.clone()),
            ("USER", self.user.clone()),
            ("LOCAL", self.local.clone()),
            ("RECIPIENT", self.recipient()),
            ("DTLINE", self.dtline()),
            ("SENDER", self.sender.clone()),
            ("RPLINE", self.rpline()),
            ("UFLINE", self.ufline(now)),
        ];
        let mut x: &[u8] = &self.ext;
        for name in ["EXT", "EXT2", "EXT3", "EXT4"] {
            env.push((name, x.to_vec()));
            x = x
                .iter()
                .position(|&b| b == b'-')
                .map_or(&x[x.len()..], |i| &x[i + 1..]);
        }
        let mut h: &[u8] = &self.host;
        for name in ["HOST2", "HOST3", "HOST4"] {
            h = &h[..h.iter().rposition(|&b| b == b'.').unwrap_or(h.len())];
            env.push((name, h.to_vec()));
        }
        env.push(("NEWSENDER", newsender.to_vec()));
        if let Some(d) = default {
            env.push(("DEFAULT", d.to_vec()));
        }
        env
    }
}

/// qmail's `quote2`: quote the local part of `addr` (before its last `@`)
/// when RFC 821/822 need it.
pub fn quote2(addr: &[u8]) -> Vec<u8> {
    if addr.is_empty() {
        return Vec::new();
    }
    let at = addr.iter().rposition(|&b| b == b'@').unwrap_or(addr.len());
    let (boxpart, domain) = addr.split_at(at);
    if !quote_need(boxpart) {
        return addr.to_vec();
    }
    let mut out = vec![b'"'];
    for &c in boxpart {
        if matches!(c, b'\r' | b'\n' | b'"' | b'\\') {
            out.push(b'\\');
        }
        out.push(c);
    }
    out.push(b'"');
    out.extend_from_slice(domain);
    out
}

fn quote_need(s: &[u8]) -> bool {
    let atom = |c: u8| c.is_ascii_graphic() && !b"\"(),.:;<>@[\\]".contains(&c) || c == b'.';
    s.is_empty()
        || !s.iter().all(|&c| atom(c))
        || s.starts_with(b".")
        || s.ends_with(b".")
        || s.windows(2).any(|w| w == b"..")
}

/// What a program's exit code means for the delivery (qmail-command(8)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramExit {
    /// 0: delivered, go on with the next line.
    Ok,
    /// 99: delivered, ignore the rest of the file (forwards so far still go).
    Stop,
    /// 100, 64, 65, 70, 76, 77, 78, 112: permanent failure.
    Hard,
    /// Anything else (111 by convention): try again later.
    Soft,
}

pub fn program_exit(code: i32) -> ProgramExit {
    match code {
        0 => ProgramExit::Ok,
        99 => ProgramExit::Stop,
        100 | 64 | 65 | 70 | 76 | 77 | 78 | 112 => ProgramExit::Hard,
        _ => ProgramExit::Soft,
    }
}

/// qmail-local's loop check over the header (stops at the first line of
/// at most one byte, or at an unterminated line): is `dtline` (with its
/// `\n`) one of its lines, byte for byte?
pub fn looping(message: &[u8], dtline: &[u8]) -> bool {
    let mut rest = message;
    while let Some(i) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..=i];
        if line.len() <= 1 {
            return false;
        }
        if line == dtline {
            return true;
        }
        rest = &rest[i + 1..];
    }
    false
}

/// Must this mbox line get a `>`? (`From ` after any number of `>`.)
pub fn needs_from_quote(line: &[u8]) -> bool {
    let s = &line[line.iter().position(|&b| b != b'>').unwrap_or(line.len())..];
    s.starts_with(b"From ")
}

/// qmail's `myctime`: `Thu Jan 01 00:00:00 1970\n`, in UTC.
pub fn myctime(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86400;
    let rem = secs % 86400;
    let (y, m, d) = crate::received::civil_from_days(days as i64);
    format!(
        "{} {} {:02} {:02}:{:02}:{:02} {}\n",
        DAYS[(days % 7) as usize],
        MONTHS[(m - 1) as usize],
        d,
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        y
    )
}

/// The last line of a successful report: `did files+forwards+programs`.
pub fn did_line(files: usize, forwards: usize, programs: usize) -> String {
    format!("did {files}+{forwards}+{programs}\n")
}

#[cfg(test)]
#[path = "dotqmail_tests.rs"]
mod tests;
