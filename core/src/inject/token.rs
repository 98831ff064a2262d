//! RFC 822 tokens as qmail's `token822` sees them: enough to find, rewrite
//! and re-print the addresses in a header field while keeping its phrases,
//! comments and groups. Re-printing folds at 80 columns after commas.

/// One lexical token. Text is unescaped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tok {
    Atom(Vec<u8>),
    Quote(Vec<u8>),
    Literal(Vec<u8>),
    Comment(Vec<u8>),
    Dot,
    Comma,
    At,
    Left,
    Right,
    Colon,
    Semi,
}

impl Tok {
    fn is_word(&self) -> bool {
        matches!(
            self,
            Tok::Atom(_) | Tok::Quote(_) | Tok::Literal(_) | Tok::Comment(_)
        )
    }
}

fn atom_ok(b: u8) -> bool {
    !b" \t\r\n([\"<>;:@,.".contains(&b)
}

/// Text up to the `close` byte matching an opening one at `*i`; nested
/// only for comments. `None` when unterminated.
fn delimited(s: &[u8], i: &mut usize, close: u8, nests: bool) -> Option<Vec<u8>> {
    let open = s[*i];
    let mut level = 1;
    let mut text = Vec::new();
    loop {
        *i += 1;
        let b = *s.get(*i)?;
        match b {
            b'\\' => {
                *i += 1;
                text.push(*s.get(*i)?);
                continue;
            }
            _ if b == close => level -= 1,
            _ if nests && b == open => level += 1,
            _ => {}
        }
        if level == 0 {
            return Some(text);
        }
        text.push(b);
    }
}

/// Split `s` into tokens; `None` for an unbalanced `)`/`]` or an
/// unterminated comment, quoted string or literal.
pub fn parse(s: &[u8]) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let t = match s[i] {
            b'.' => Tok::Dot,
            b',' => Tok::Comma,
            b'@' => Tok::At,
            b'<' => Tok::Left,
            b'>' => Tok::Right,
            b':' => Tok::Colon,
            b';' => Tok::Semi,
            b' ' | b'\t' | b'\r' | b'\n' => {
                i += 1;
                continue;
            }
            b')' | b']' => return None,
            b'(' => Tok::Comment(delimited(s, &mut i, b')', true)?),
            b'"' => Tok::Quote(delimited(s, &mut i, b'"', false)?),
            b'[' => Tok::Literal(delimited(s, &mut i, b']', false)?),
            _ => {
                let (text, end) = atom(s, i);
                i = end;
                if text.is_empty() {
                    continue; // a lone backslash
                }
                // An atom holding what an atom may not print is a quote.
                let bad = text
                    .iter()
                    .any(|&b| !(32..=126).contains(&b) || b")]\\".contains(&b));
                out.push(if bad {
                    Tok::Quote(text)
                } else {
                    Tok::Atom(text)
                });
                continue;
            }
        };
        out.push(t);
        i += 1;
    }
    Some(out)
}

/// The text of the atom at `s[i]`, unescaped, and where it ends. A backslash
/// quotes the next byte, but not an LF: qmail's token822 takes an escaped
/// LF into the atom and prints it back as a quoted string ending in a bare
/// LF, which ends the header there. In a header field an LF is folding or
/// the field's end, so such a backslash, like one at the very end, quotes
/// nothing and is dropped. (In a quoted string, comment or literal an LF
/// is kept as text either way; there the fold's whitespace follows it, so
/// it prints back as a fold.)
fn atom(s: &[u8], mut i: usize) -> (Vec<u8>, usize) {
    let mut text = Vec::new();
    while i < s.len() && atom_ok(s[i]) {
        match (s[i], s.get(i + 1)) {
            (b'\\', Some(&b)) if b != b'\n' => {
                text.push(b);
                i += 2;
            }
            (b'\\', _) => {
                i += 1;
                break;
            }
            (b, _) => {
                text.push(b);
                i += 1;
            }
        }
    }
    (text, i)
}

/// The address as a plain string: comments dropped, quoting removed
/// (`token822_unquote`).
pub fn unquote(toks: &[Tok]) -> Vec<u8> {
    let mut out = Vec::new();
    for t in toks {
        match t {
            Tok::Atom(s) | Tok::Quote(s) => out.extend_from_slice(s),
            Tok::Literal(s) => {
                out.push(b'[');
                out.extend_from_slice(s);
                out.push(b']');
            }
            Tok::Comment(_) => {}
            special => out.push(special_byte(special)),
        }
    }
    out
}

fn special_byte(t: &Tok) -> u8 {
    match t {
        Tok::Dot => b'.',
        Tok::Comma => b',',
        Tok::At => b'@',
        Tok::Left => b'<',
        Tok::Right => b'>',
        Tok::Colon => b':',
        _ => b';',
    }
}

fn need_space(last: Option<&Tok>, next: &Tok) -> bool {
    match last {
        None => false,
        Some(Tok::Colon | Tok::Comma) => true,
        Some(_) if *next == Tok::Left => true,
        Some(l) => l.is_word() && next.is_word(),
    }
}

/// Print tokens as a header field ending in LF, breaking lines after
/// commas only where a line would pass `width` columns
/// (`token822_unparse`).
pub fn unparse(toks: &[Tok], width: usize) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::new();
    let mut line_start = 0;
    let mut pending: Option<usize> = None;
    // A tentative "\n " after each comma; dropped again when the line
    // up to the next break still fits.
    let mut brk = |out: &mut Vec<u8>| {
        if let Some(p) = pending {
            if out.len() - line_start <= width {
                out.drain(p..p + 2);
            } else {
                line_start = p + 1;
            }
        }
        pending = Some(out.len());
        out.extend_from_slice(b"\n ");
    };
    let mut last: Option<&Tok> = None;
    for t in toks {
        if need_space(last, t) {
            out.push(b' ');
        }
        last = Some(t);
        let (open, close, s) = match t {
            Tok::Atom(s) => (None, None, s),
            Tok::Quote(s) => (Some(b'"'), Some(b'"'), s),
            Tok::Literal(s) => (Some(b'['), Some(b']'), s),
            Tok::Comment(s) => (Some(b'('), Some(b')'), s),
            Tok::Comma => {
                out.push(b',');
                brk(&mut out);
                continue;
            }
            special => {
                out.push(special_byte(special));
                continue;
            }
        };
        out.extend(open);
        for &b in s {
            if b"\"[]()\\\r\n".contains(&b) {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.extend(close);
    }
    brk(&mut out);
    out.pop();
    out
}
