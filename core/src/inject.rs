//! qmail-inject's header processing, as a pure function from a message's
//! start and settings to the header to queue, the envelope, and where the
//! body starts. The body passes through untouched but for a final LF. The
//! host reads stdin (the header by `in_header`, then streams the body), the
//! environment and the controls, and queues; see `bins/src/inject.rs`.
//!
//! It follows qmail-inject(8): `Date:`, `Message-ID:` and `From:` are added
//! only when missing, addresses in address fields are rewritten with
//! `defaulthost`, `defaultdomain` and `plusdomain`, `Bcc:`, `Resent-Bcc:`,
//! `Return-Path:` and `Content-Length:` are removed, and recipients come
//! from the arguments, the header (`-t`), or both.

mod header;
mod token;

use std::fmt;

pub use header::{in_header, split_header, Split};
use token::Tok;

/// qmail folds rewritten address fields at this width.
const LINELEN: usize = 80;

/// `QMAILINJECT` letters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// `c`: the full name as a comment, not a phrase.
    pub name_comment: bool,
    /// `s`: ignore `Return-Path:`.
    pub delete_sender: bool,
    /// `f`: delete `From:` (one is made).
    pub delete_from: bool,
    /// `i`: delete `Message-ID:` (one is made).
    pub delete_messageid: bool,
    /// `r`: VERP, per-recipient return paths (`user-@host-@[]`).
    pub hack_recip: bool,
    /// `m`: per-message return paths (`user-TIME.PID@host`).
    pub hack_mess: bool,
}

impl Flags {
    pub fn parse(s: &str) -> Flags {
        Flags {
            name_comment: s.contains('c'),
            delete_sender: s.contains('s'),
            delete_from: s.contains('f'),
            delete_messageid: s.contains('i'),
            hack_recip: s.contains('r'),
            hack_mess: s.contains('m'),
        }
    }
}

/// Everything qmail-inject reads from controls and the environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub defaulthost: String,
    pub defaultdomain: String,
    pub plusdomain: String,
    pub idhost: String,
    pub flags: Flags,
    /// Host of the default `From:` (QMAILHOST, MAILHOST).
    pub mailhost: Option<String>,
    /// User of the default `From:` (QMAILUSER, MAILUSER, USER, LOGNAME).
    pub mailuser: String,
    /// Host of the default return path (QMAILSHOST, else `mailhost`).
    pub mailrhost: Option<String>,
    /// User of the default return path (QMAILSUSER, else `mailuser`).
    pub mailruser: String,
    /// QMAILNAME, MAILNAME, NAME.
    pub fullname: Option<String>,
    /// The mailing lists of `QMAILMFTFILE`, when set and readable.
    pub mft: Option<Vec<String>>,
}

impl Settings {
    /// From `control(name)` (a control file's text, `None` if missing) and
    /// `env(name)`, with qmail-inject's defaults and precedence.
    pub fn load(
        control: &dyn Fn(&str) -> Option<String>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Settings {
        let first =
            |name: &str| control(name).and_then(|t| t.lines().next().map(|l| l.trim().to_string()));
        let me = first("me");
        let rldef = |name: &str, var: &str| {
            env(var)
                .or_else(|| first(name))
                .or_else(|| me.clone())
                .unwrap_or_else(|| name.to_string())
        };
        let any = |vars: &[&str]| vars.iter().find_map(|v| env(v));
        let mailhost = any(&["QMAILHOST", "MAILHOST"]);
        let mailuser = any(&["QMAILUSER", "MAILUSER", "USER", "LOGNAME"])
            .unwrap_or_else(|| "anonymous".into());
        Settings {
            defaulthost: rldef("defaulthost", "QMAILDEFAULTHOST"),
            defaultdomain: rldef("defaultdomain", "QMAILDEFAULTDOMAIN"),
            plusdomain: rldef("plusdomain", "QMAILPLUSDOMAIN"),
            idhost: rldef("idhost", "QMAILIDHOST"),
            flags: env("QMAILINJECT")
                .map(|s| Flags::parse(&s))
                .unwrap_or_default(),
            mailrhost: env("QMAILSHOST").or_else(|| mailhost.clone()),
            mailruser: env("QMAILSUSER").unwrap_or_else(|| mailuser.clone()),
            mailhost,
            mailuser,
            fullname: any(&["QMAILNAME", "MAILNAME", "NAME"]),
            mft: None,
        }
    }
}

/// Where recipients come from (`-a`, `-h`, `-H`, `-A`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recipients {
    /// `-A` (default): the arguments, or the header if there are none.
    #[default]
    Default,
    /// `-a`: the arguments only.
    Args,
    /// `-h`: the header only.
    Header,
    /// `-H`: both.
    Both,
}

/// One run of qmail-inject.
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub recipients: Recipients,
    pub args: Vec<String>,
    /// `-f`.
    pub sender: Option<String>,
    /// Unix time of the start (Date, Message-ID).
    pub now: i64,
    /// Our pid (Message-ID, the `m` flag).
    pub pid: u32,
    /// `-n`: print instead of queueing, with a `Return-Path:` first.
    pub print: bool,
}

/// The message to queue: `header`, then the input from `body_start` (the
/// body), then its `final_newline`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injected {
    pub header: Vec<u8>,
    pub body_start: usize,
    pub sender: String,
    pub recipients: Vec<String>,
}

impl Injected {
    /// The whole message, given the input it was made from.
    pub fn message(&self, input: &[u8]) -> Vec<u8> {
        let body = &input[self.body_start.min(input.len())..];
        [&self.header[..], body, final_newline(body.last().copied())].concat()
    }
}

/// What follows a body whose last byte is `last`: qmail ends the message
/// in LF when the input did not.
pub fn final_newline(last: Option<u8>) -> &'static [u8] {
    match last {
        Some(b) if b != b'\n' => b"\n",
        _ => b"",
    }
}

/// Why a message is refused; `Display` is the text after
/// `qmail-inject: fatal: `. All are permanent (exit 100).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InjectError {
    /// A sender-type header field (or `-f`) that does not parse.
    Line(String),
    /// A recipient argument that does not parse.
    Address(String),
    /// Nothing to deliver to.
    NoRecipients,
}

impl fmt::Display for InjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InjectError::Line(l) => write!(f, "unable to parse this line:\n{}", l.trim_end()),
            InjectError::Address(a) => write!(f, "unable to parse address: {a}"),
            InjectError::NoRecipients => write!(f, "no recipients"),
        }
    }
}

impl std::error::Error for InjectError {}

/// Process `input` (LF line ends) for `req`: a whole message, or its start
/// up to the line that ends the header (see `in_header`).
pub fn inject(input: &[u8], s: &Settings, req: &Request) -> Result<Injected, InjectError> {
    let rw = Rewriter::new(s)?;
    let mut sender = match &req.sender {
        Some(f) => {
            let q = quote2(f);
            let mut toks = token::parse(q.as_bytes()).ok_or(InjectError::Line(q.clone()))?;
            rw.rewrite(&mut toks);
            Some(lossy(&token::unquote(&toks)))
        }
        None => None,
    };
    let strategy = match req.recipients {
        Recipients::Default if req.args.is_empty() => Recipients::Header,
        Recipients::Default => Recipients::Args,
        other => other,
    };
    let mut recipients = Vec::new();
    if strategy != Recipients::Header {
        for a in &req.args {
            let q = quote2(a);
            let mut toks = token::parse(q.as_bytes()).ok_or(InjectError::Address(a.clone()))?;
            rw.rewrite(&mut toks);
            recipients.push(lossy(&token::unquote(&toks)));
        }
    }
    let split = split_header(input);
    let mut h = header::Headers::default();
    for field in &split.fields {
        h.field(field, &rw, s.flags, &mut sender)?;
    }
    let mut out = Vec::new();
    let sender = match sender {
        Some(sender) => sender,
        None => default_return_path(&rw, s, req)?,
    };
    if req.print {
        out.extend_from_slice(format!("Return-Path: <{}>\n", quote2(&sender)).as_bytes());
    }
    h.new_fields(&mut out, &rw, s, req)?;
    for f in &h.saved {
        out.extend_from_slice(f);
    }
    if split.insert_blank {
        out.push(b'\n');
    }
    if strategy != Recipients::Args {
        recipients.extend(if h.resent() { h.hrr } else { h.hr });
    }
    recipients.retain(|r| !r.is_empty());
    if recipients.is_empty() && !req.print {
        return Err(InjectError::NoRecipients);
    }
    Ok(Injected {
        header: out,
        body_start: split.body_start,
        sender,
        recipients,
    })
}

fn default_return_path(rw: &Rewriter, s: &Settings, req: &Request) -> Result<String, InjectError> {
    let mut user = s.mailruser.clone();
    if s.flags.hack_mess {
        user.push_str(&format!("-{}.{}", req.now, req.pid));
    }
    if s.flags.hack_recip {
        user.push('-');
    }
    let mut toks = vec![
        Tok::Atom(b"Return-Path".to_vec()),
        Tok::Colon,
        Tok::Quote(user.into_bytes()),
    ];
    if let Some(host) = &s.mailrhost {
        toks.extend([Tok::At, Tok::Atom(host.clone().into_bytes())]);
    }
    let mut sender = None;
    reparse(&toks, &mut |a| {
        rw.rewrite(a);
        set_return(&mut sender, a, s.flags);
    })?;
    Ok(sender.unwrap_or_default())
}

/// Print, parse again and rewrite, as qmail does with the fields it makes,
/// so a host such as `a.b` becomes tokens the rewriting rules can see.
fn reparse(toks: &[Tok], each: &mut dyn FnMut(&mut Vec<Tok>)) -> Result<Vec<u8>, InjectError> {
    let text = token::unparse(toks, LINELEN);
    let bad = || InjectError::Line(lossy(&text));
    let parsed = token::parse(&text).ok_or_else(bad)?;
    let list = header::addr_list(&parsed[2..], each).ok_or_else(bad)?;
    Ok(token::unparse(&[&parsed[..2], &list[..]].concat(), LINELEN))
}

fn set_return(sender: &mut Option<String>, addr: &[Tok], flags: Flags) {
    if sender.is_none() {
        let mut s = lossy(&token::unquote(addr));
        if flags.hack_recip {
            s.push_str("-@[]");
        }
        *sender = Some(s);
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// qmail-inject's address rewriting (`rwgeneric`).
struct Rewriter {
    defaulthost: Vec<Tok>,
    defaultdomain: Vec<Tok>,
    plusdomain: Vec<Tok>,
}

impl Rewriter {
    fn new(s: &Settings) -> Result<Self, InjectError> {
        let toks = |prefix: &str, v: &str| {
            let text = format!("{prefix}{v}");
            token::parse(text.as_bytes()).ok_or(InjectError::Line(text))
        };
        Ok(Rewriter {
            defaulthost: toks("@", &s.defaulthost)?,
            defaultdomain: toks(".", &s.defaultdomain)?,
            plusdomain: toks(".", &s.plusdomain)?,
        })
    }

    fn rewrite(&self, a: &mut Vec<Tok>) {
        let n = a.len();
        if n == 0 || (n >= 2 && a[n - 2] == Tok::At && a[n - 1] == Tok::Literal(vec![])) {
            return; // <> and <foo@[]> stay as they are
        }
        if a[0] == Tok::At {
            // drop a source route: <@a,@b:user@host> → <user@host>
            match a.iter().position(|t| *t == Tok::Colon) {
                Some(p) => drop(a.drain(..=p)),
                None => a.clear(),
            }
        }
        for extra in [Tok::Dot, Tok::At] {
            if a.last() == Some(&extra) {
                a.pop();
            }
        }
        if a.is_empty() {
            return;
        }
        if !a.contains(&Tok::At) {
            a.extend(self.defaulthost.iter().cloned());
        }
        if let Some(Tok::Atom(last)) = a.last_mut() {
            if last.last() == Some(&b'+') {
                last.pop();
                a.extend(self.plusdomain.iter().cloned());
            }
        }
        let host = a.iter().rposition(|t| *t == Tok::At).map_or(0, |p| p + 1);
        if !a[host..]
            .iter()
            .any(|t| matches!(t, Tok::Dot | Tok::Literal(_)))
        {
            a.extend(self.defaultdomain.iter().cloned());
        }
    }
}

/// Does `s` need quoting as a local part (qmail's `quote_need`)?
fn quote_need(s: &str) -> bool {
    let ok = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b);
    s.is_empty() || !s.bytes().all(ok) || s.starts_with('.') || s.ends_with('.') || s.contains("..")
}

/// `s` as an RFC 822 local part, quoted if it must be (qmail's `quote`).
pub fn quote(s: &str) -> String {
    if !quote_need(s) {
        return s.to_string();
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        // qmail's quote.c escapes CR and LF too.
        if matches!(c, '"' | '\\' | '\r' | '\n') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// An address with its local part quoted if need be (qmail's `quote2`).
pub fn quote2(addr: &str) -> String {
    if addr.is_empty() {
        return String::new();
    }
    match addr.rfind('@') {
        Some(at) => format!("{}{}", quote(&addr[..at]), &addr[at..]),
        None => quote(addr),
    }
}

#[cfg(test)]
mod tests;
