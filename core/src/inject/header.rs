//! The header as qmail-inject reads it (`headerbody`, `hfield`), and what
//! it does with each field.

use std::collections::HashSet;

use super::token::{self, Tok};
use super::LINELEN;
use super::{lossy, quote2, reparse, set_return, Flags, InjectError, Request, Rewriter, Settings};

/// A message split into header fields and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// Each field with its continuation lines, ending in LF.
    pub fields: Vec<Vec<u8>>,
    /// Offset of the body (its separating blank line included).
    pub body_start: usize,
    /// The header ended at a line that is not a field: qmail adds the
    /// blank line that should have been there.
    pub insert_blank: bool,
}

/// `name:` with a name of printable non-space ASCII (`hfield_valid`).
fn valid_field(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let name = name_of(&line[..colon]);
    !name.is_empty() && name.iter().all(|&b| (33..=126).contains(&b))
}

fn name_of(before_colon: &[u8]) -> &[u8] {
    let end = before_colon
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |p| p + 1);
    &before_colon[..end]
}

/// A line starting with a space or tab continues the field before it.
fn continues(line: &[u8]) -> bool {
    matches!(line.first(), Some(b' ' | b'\t'))
}

/// Does `line` (with its LF, if it has one) belong to the header, after
/// `open` (whether a field came before it)? It does as a field's
/// continuation, an mbox `From ` line, or a field; the header ends at the
/// first line that does not (qmail's `headerbody`). A host reading a
/// message line by line needs the header and that line, no more.
pub fn in_header(line: &[u8], open: bool) -> bool {
    (open && continues(line)) || line.starts_with(b"From ") || valid_field(line)
}

/// Split `input` as qmail's `headerbody` does: continuation lines join
/// their field, a `From ` line becomes `MBOX-Line: From ...`, and the
/// header ends at a blank line, at a line that is not a field, or at EOF.
pub fn split_header(input: &[u8]) -> Split {
    let mut fields: Vec<Vec<u8>> = Vec::new();
    let mut pos = 0;
    while pos < input.len() {
        let end = input[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(input.len(), |p| pos + p + 1);
        let mut line = input[pos..end].to_vec();
        if !line.ends_with(b"\n") {
            line.push(b'\n');
        }
        if !in_header(&line, !fields.is_empty()) {
            return Split {
                fields,
                body_start: pos,
                insert_blank: line != b"\n",
            };
        }
        match fields.last_mut() {
            Some(field) if continues(&line) => field.extend_from_slice(&line),
            _ if line.starts_with(b"From ") => fields.push([&b"MBOX-Line: "[..], &line].concat()),
            _ => fields.push(line),
        }
        pos = end;
    }
    Split {
        fields,
        body_start: input.len(),
        insert_blank: false,
    }
}

/// What the fields seen so far told us.
#[derive(Default)]
pub(super) struct Headers {
    seen: HashSet<String>,
    /// Fields to print, in order.
    pub saved: Vec<Vec<u8>>,
    /// To, Cc, Bcc, Apparently-To addresses.
    pub hr: Vec<String>,
    /// Resent-To, Resent-Cc, Resent-Bcc addresses.
    pub hrr: Vec<String>,
    /// To and Cc addresses (for Mail-Followup-To).
    tocc: Vec<String>,
}

#[derive(PartialEq)]
enum Kind {
    ToCc,
    Hr,
    Hrr,
    Return,
    Sender,
    Other,
}

fn kind(name: &str) -> Kind {
    match name {
        "to" | "cc" => Kind::ToCc,
        "bcc" | "apparently-to" => Kind::Hr,
        "resent-to" | "resent-cc" | "resent-bcc" => Kind::Hrr,
        "return-path" => Kind::Return,
        "sender" | "from" | "reply-to" | "return-receipt-to" | "errors-to" | "resent-sender"
        | "resent-from" | "resent-reply-to" => Kind::Sender,
        _ => Kind::Other,
    }
}

impl Headers {
    pub fn resent(&self) -> bool {
        [
            "resent-sender",
            "resent-from",
            "resent-reply-to",
            "resent-to",
            "resent-cc",
            "resent-bcc",
            "resent-date",
            "resent-message-id",
        ]
        .iter()
        .any(|n| self.seen.contains(*n))
    }

    /// One field (`doheaderfield`).
    pub fn field(
        &mut self,
        field: &[u8],
        rw: &Rewriter,
        flags: Flags,
        sender: &mut Option<String>,
    ) -> Result<(), InjectError> {
        let colon = field.iter().position(|&b| b == b':').unwrap_or(0);
        let name = lossy(name_of(&field[..colon])).to_ascii_lowercase();
        if (flags.delete_from && name == "from")
            || (flags.delete_messageid && name == "message-id")
            || (flags.delete_sender && name == "return-path")
        {
            return Ok(());
        }
        let kind = kind(&name);
        let mut field = field.to_vec();
        if kind != Kind::Other {
            let may_fail = matches!(kind, Kind::ToCc | Kind::Hr | Kind::Hrr);
            let mut found = Vec::new();
            let rewritten = token::parse(&field).and_then(|toks| {
                let list = addr_list(toks.get(2..)?, &mut |a| {
                    rw.rewrite(a);
                    if kind == Kind::Return {
                        set_return(sender, a, flags);
                    }
                    found.push(lossy(&token::unquote(a)));
                })?;
                Some(token::unparse(&[&toks[..2], &list[..]].concat(), LINELEN))
            });
            match rewritten {
                Some(text) => {
                    field = text;
                    match kind {
                        Kind::ToCc => {
                            self.hr.extend(found.iter().cloned());
                            self.tocc.extend(found);
                        }
                        Kind::Hr => self.hr.extend(found),
                        Kind::Hrr => self.hrr.extend(found),
                        _ => {}
                    }
                }
                None if may_fail => {}
                None => return Err(InjectError::Line(lossy(&field))),
            }
        }
        let dropped = ["bcc", "resent-bcc", "return-path", "content-length"];
        if !dropped.contains(&name.as_str()) {
            self.saved.push(field);
        }
        self.seen.insert(name);
        Ok(())
    }

    /// The fields qmail-inject adds (`finishheader`).
    pub fn new_fields(
        &self,
        out: &mut Vec<u8>,
        rw: &Rewriter,
        s: &Settings,
        req: &Request,
    ) -> Result<(), InjectError> {
        let resent = self.resent();
        let pre = if resent { "Resent-" } else { "" };
        let seen = |n: &str| {
            self.seen
                .contains(&format!("{}{n}", pre.to_ascii_lowercase()))
        };
        if !seen("date") {
            let date = crate::received::rfc822_date(req.now);
            out.extend_from_slice(format!("{pre}Date: {date}\n").as_bytes());
        }
        if !seen("message-id") {
            let id = message_id(req.now, req.pid, &s.idhost);
            out.extend_from_slice(format!("{pre}Message-ID: {id}\n").as_bytes());
        }
        if !seen("from") {
            out.extend_from_slice(pre.as_bytes());
            out.extend(default_from(rw, s)?);
        }
        if !seen("to") && !seen("cc") {
            out.extend_from_slice(format!("{pre}Cc: recipient list not shown: ;\n").as_bytes());
        }
        if !resent {
            self.followup_to(out, s);
        }
        Ok(())
    }

    fn followup_to(&self, out: &mut Vec<u8>, s: &Settings) {
        let Some(lists) = &s.mft else { return };
        if self.seen.contains("mail-followup-to") || !self.tocc.iter().any(|a| lists.contains(a)) {
            return;
        }
        let all: Vec<String> = self.tocc.iter().map(|a| quote2(a)).collect();
        out.extend_from_slice(format!("Mail-Followup-To: {}\n", all.join(",\n  ")).as_bytes());
    }
}

/// `<YYYYMMDDHHMMSS.PID.qmail@IDHOST>`, as qmail's `newfield_msgidmake`.
fn message_id(now: i64, pid: u32, idhost: &str) -> String {
    let days = now.div_euclid(86_400);
    let secs = now.rem_euclid(86_400);
    let (year, month, day) = crate::received::civil_from_days(days);
    format!(
        "<{year}{month:02}{day:02}{:02}{:02}{:02}.{pid}.qmail@{idhost}>",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `From: "Full Name" <user@host>`, rewritten (`defaultfrommake`).
fn default_from(rw: &Rewriter, s: &Settings) -> Result<Vec<u8>, InjectError> {
    let user = s.mailuser.clone().into_bytes();
    let user = if super::quote_need(&s.mailuser) {
        Tok::Quote(user)
    } else {
        Tok::Atom(user)
    };
    let mut t = vec![Tok::Atom(b"From".to_vec()), Tok::Colon];
    let name = s.fullname.as_ref().map(|n| n.clone().into_bytes());
    let phrase = name.is_some() && !s.flags.name_comment;
    if let (Some(n), true) = (&name, phrase) {
        t.extend([Tok::Quote(n.clone()), Tok::Left]);
    }
    t.push(user);
    if let Some(host) = &s.mailhost {
        t.extend([Tok::At, Tok::Atom(host.clone().into_bytes())]);
    }
    match name {
        Some(_) if phrase => t.push(Tok::Right),
        Some(n) => t.push(Tok::Comment(n)),
        None => {}
    }
    reparse(&t, &mut |a| rw.rewrite(a))
}

/// Find each address in an address list (after `name:`), let `each`
/// rewrite it, and return the list with phrases, comments and groups kept.
/// `None` when the list does not parse.
pub(super) fn addr_list(toks: &[Tok], each: &mut dyn FnMut(&mut Vec<Tok>)) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    let mut seg: Vec<Tok> = Vec::new();
    let mut in_group = false;
    // Within `<...>`, where `,`, `:` and `;` belong to a source route.
    let mut in_angle = false;
    for t in toks {
        match t {
            Tok::Comma if !in_angle => {
                segment(&seg, &mut out, each)?;
                seg.clear();
                out.push(Tok::Comma);
            }
            Tok::Colon if !in_angle => {
                if in_group {
                    return None;
                }
                out.append(&mut seg); // the group's name
                out.push(Tok::Colon);
                in_group = true;
            }
            Tok::Semi if !in_angle => {
                if !in_group {
                    return None;
                }
                segment(&seg, &mut out, each)?;
                seg.clear();
                out.push(Tok::Semi);
                in_group = false;
            }
            t => {
                in_angle = match t {
                    Tok::Left => true,
                    Tok::Right => false,
                    _ => in_angle,
                };
                seg.push(t.clone());
            }
        }
    }
    segment(&seg, &mut out, each)?;
    (!in_group).then_some(out)
}

/// One comma-separated element: `phrase <addr>` or bare addresses. Each
/// step consumes what it scanned, so a header-long `<a> <b> ...` is
/// linear.
fn segment(seg: &[Tok], out: &mut Vec<Tok>, each: &mut dyn FnMut(&mut Vec<Tok>)) -> Option<()> {
    let mut rest = seg;
    loop {
        let left = rest.iter().position(|t| *t == Tok::Left);
        let right = rest.iter().position(|t| *t == Tok::Right);
        match (left, right) {
            (None, None) => return bare(rest, out, each),
            (Some(l), Some(r)) if l < r => {
                out.extend_from_slice(&rest[..l]);
                out.push(Tok::Left);
                let mut addr = rest[l + 1..r].to_vec();
                each(&mut addr);
                out.extend(addr);
                out.push(Tok::Right);
                rest = &rest[r + 1..];
                if rest.iter().all(|t| matches!(t, Tok::Comment(_))) {
                    out.extend_from_slice(rest);
                    return Some(());
                }
                out.push(Tok::Comma);
            }
            _ => return None,
        }
    }
}

/// Bare addresses: a word right after a word starts a new one; comments
/// move after their address.
fn bare(seg: &[Tok], out: &mut Vec<Tok>, each: &mut dyn FnMut(&mut Vec<Tok>)) -> Option<()> {
    let mut addr = Vec::new();
    let mut comments = Vec::new();
    let mut last_word = false;
    let emit = |addr: &mut Vec<Tok>,
                comments: &mut Vec<Tok>,
                out: &mut Vec<Tok>,
                each: &mut dyn FnMut(&mut Vec<Tok>)| {
        if !addr.is_empty() {
            each(addr);
            out.append(addr);
        }
        out.append(comments);
    };
    for t in seg.iter().cloned() {
        match t {
            Tok::Comment(_) => comments.push(t),
            Tok::Atom(_) | Tok::Quote(_) | Tok::Literal(_) => {
                if last_word {
                    emit(&mut addr, &mut comments, out, each);
                    out.push(Tok::Comma);
                }
                addr.push(t);
                last_word = true;
            }
            t => {
                addr.push(t);
                last_word = false;
            }
        }
    }
    emit(&mut addr, &mut comments, out, each);
    Some(())
}
