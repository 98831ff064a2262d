//! SMTP envelope addresses (RFC 5321 section 4.1.2).
//!
//! A path is parsed into the form qmail stores in its envelope: the
//! local part with quoting and escapes removed, `@`, and the domain as
//! given. A source route (`<@a,@b:user@c>`) is accepted as RFC 5321
//! section 4.1.1.3 requires and dropped, but remembered, because the
//! relay policy refuses routed addresses from untrusted clients.

/// The longest address accepted, as s/qmail does (qmail-queue itself takes
/// up to 1002 bytes). RFC 5321 asks for at least 256.
pub const MAX_ADDRESS: usize = 900;

/// A parsed reverse-path or forward-path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    /// `local@domain` unquoted, `postmaster` alone, or empty for `<>`.
    pub address: String,
    /// The path carried an RFC 5321 source route, now removed.
    pub had_source_route: bool,
}

/// Why a path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    Syntax,
    TooLong,
    /// Non-ASCII in the address and the session did not announce SMTPUTF8.
    NonAscii,
}

/// What a path may be, besides a full mailbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// MAIL FROM: `<>` is allowed.
    Reverse,
    /// RCPT TO: `<postmaster>` without a domain is allowed.
    Forward,
}

/// Parses a path at the start of `input`; returns it and the rest of the
/// input (the ESMTP parameters). Angle brackets may be missing, as many
/// old clients send `MAIL FROM:user@host`; the address then ends at the
/// first space.
pub fn parse_path(input: &[u8], kind: PathKind, utf8: bool) -> Result<(Path, &[u8]), PathError> {
    let (inner, rest) = match input.first() {
        Some(b'<') => {
            let end = find_closing_bracket(&input[1..]).ok_or(PathError::Syntax)?;
            (&input[1..1 + end], &input[2 + end..])
        }
        _ => {
            let end = input.iter().position(|&b| b == b' ').unwrap_or(input.len());
            (&input[..end], &input[end..])
        }
    };
    if !rest.is_empty() && rest[0] != b' ' {
        return Err(PathError::Syntax);
    }
    if inner.len() > MAX_ADDRESS {
        return Err(PathError::TooLong);
    }
    if inner.is_empty() {
        return match kind {
            PathKind::Reverse if input.first() == Some(&b'<') => Ok((
                Path {
                    address: String::new(),
                    had_source_route: false,
                },
                rest,
            )),
            _ => Err(PathError::Syntax),
        };
    }
    let (had_source_route, mailbox) = strip_source_route(inner)?;
    let address = parse_mailbox(mailbox, kind, utf8)?;
    Ok((
        Path {
            address,
            had_source_route,
        },
        rest,
    ))
}

/// The `>` that closes a path, skipping any inside a quoted local part.
fn find_closing_bracket(s: &[u8]) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in s.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// `@a,@b:mailbox` → (true, mailbox). Each hop must be a valid domain.
fn strip_source_route(s: &[u8]) -> Result<(bool, &[u8]), PathError> {
    if s.first() != Some(&b'@') {
        return Ok((false, s));
    }
    let colon = s.iter().position(|&b| b == b':').ok_or(PathError::Syntax)?;
    for hop in s[..colon].split(|&b| b == b',') {
        match hop.split_first() {
            Some((b'@', domain)) if is_domain(domain) => {}
            _ => return Err(PathError::Syntax),
        }
    }
    Ok((true, &s[colon + 1..]))
}

/// `local@domain` (or `postmaster` for a forward path) → its unquoted form.
fn parse_mailbox(s: &[u8], kind: PathKind, utf8: bool) -> Result<String, PathError> {
    if !utf8 && !s.is_ascii() {
        return Err(PathError::NonAscii);
    }
    let (local, domain) = split_local_domain(s)?;
    let local = unquote_local(local, utf8)?;
    let Some(domain) = domain else {
        return match kind {
            PathKind::Forward if local.eq_ignore_ascii_case("postmaster") => Ok(local),
            _ => Err(PathError::Syntax),
        };
    };
    if !(is_domain_utf8(domain, utf8) || is_address_literal(domain)) {
        return Err(PathError::Syntax);
    }
    let domain = std::str::from_utf8(domain).map_err(|_| PathError::Syntax)?;
    Ok(format!("{local}@{domain}"))
}

/// Splits at the `@` that follows the local part (quoted parts may hold `@`).
fn split_local_domain(s: &[u8]) -> Result<(&[u8], Option<&[u8]>), PathError> {
    let local_end = if s.first() == Some(&b'"') {
        1 + find_closing_quote(&s[1..]).ok_or(PathError::Syntax)? + 1
    } else {
        s.iter().position(|&b| b == b'@').unwrap_or(s.len())
    };
    match s.get(local_end) {
        None => Ok((s, None)),
        Some(b'@') => Ok((&s[..local_end], Some(&s[local_end + 1..]))),
        Some(_) => Err(PathError::Syntax),
    }
}

fn find_closing_quote(s: &[u8]) -> Option<usize> {
    let mut escaped = false;
    for (i, &b) in s.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' => escaped = true,
            b'"' => return Some(i),
            _ => {}
        }
    }
    None
}

/// A Dot-string or a Quoted-string, returned without quotes or escapes.
fn unquote_local(local: &[u8], utf8: bool) -> Result<String, PathError> {
    if local.is_empty() {
        return Err(PathError::Syntax);
    }
    let bytes = if local[0] == b'"' {
        let inner = &local[1..local.len() - 1];
        let mut out = Vec::with_capacity(inner.len());
        let mut escaped = false;
        for &b in inner {
            if escaped {
                if !(0x20..0x7f).contains(&b) {
                    return Err(PathError::Syntax);
                }
                out.push(b);
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if is_qtext(b) || (utf8 && b >= 0x80) {
                out.push(b);
            } else {
                return Err(PathError::Syntax);
            }
        }
        out
    } else {
        // Dots are checked loosely (qmail takes `a..b`); atext is enforced.
        if !local
            .iter()
            .all(|&b| is_atext(b) || b == b'.' || (utf8 && b >= 0x80))
        {
            return Err(PathError::Syntax);
        }
        local.to_vec()
    };
    String::from_utf8(bytes).map_err(|_| PathError::Syntax)
}

fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

fn is_qtext(b: u8) -> bool {
    b == b' ' || b == b'!' || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b)
}

/// RFC 5321 Domain: dot-separated labels of letters, digits and hyphens
/// (underscores too, which real host names carry), no empty label.
pub fn is_domain(d: &[u8]) -> bool {
    is_domain_utf8(d, false)
}

fn is_domain_utf8(d: &[u8], utf8: bool) -> bool {
    !d.is_empty()
        && d.len() <= 255
        && d.split(|&b| b == b'.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label[0] != b'-'
                && label[label.len() - 1] != b'-'
                && label.iter().all(|&b| {
                    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (utf8 && b >= 0x80)
                })
        })
}

/// `[1.2.3.4]` or `[IPv6:...]` (RFC 5321 section 4.1.3), checked by the
/// standard library's address parsers.
pub fn is_address_literal(d: &[u8]) -> bool {
    let Some(inner) = d.strip_prefix(b"[").and_then(|d| d.strip_suffix(b"]")) else {
        return false;
    };
    let Ok(inner) = std::str::from_utf8(inner) else {
        return false;
    };
    match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
            inner[5..].parse::<std::net::Ipv6Addr>().is_ok()
        }
        _ => inner.parse::<std::net::Ipv4Addr>().is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(s: &str) -> Result<(Path, &[u8]), PathError> {
        parse_path(s.as_bytes(), PathKind::Reverse, false)
    }
    fn fwd(s: &str) -> Result<String, PathError> {
        parse_path(s.as_bytes(), PathKind::Forward, false).map(|(p, _)| p.address)
    }

    #[test]
    fn plain_and_null_paths() {
        assert_eq!(rev("<a@b.c>").unwrap().0.address, "a@b.c");
        assert_eq!(rev("<>").unwrap().0.address, "");
        assert_eq!(fwd("<>"), Err(PathError::Syntax));
        assert_eq!(rev("").map(|p| p.0), Err(PathError::Syntax));
    }

    #[test]
    fn parameters_follow_the_path() {
        let (p, rest) = rev("<a@b.c> SIZE=10 BODY=8BITMIME").unwrap();
        assert_eq!(p.address, "a@b.c");
        assert_eq!(rest, b" SIZE=10 BODY=8BITMIME");
        assert_eq!(rev("<a@b.c>SIZE=1").map(|p| p.0), Err(PathError::Syntax));
    }

    #[test]
    fn missing_brackets_are_tolerated() {
        let (p, rest) = rev("a@b.c SIZE=5").unwrap();
        assert_eq!(p.address, "a@b.c");
        assert_eq!(rest, b" SIZE=5");
    }

    #[test]
    fn postmaster_needs_no_domain_only_as_recipient() {
        assert_eq!(fwd("<Postmaster>").unwrap(), "Postmaster");
        assert_eq!(fwd("<bob>"), Err(PathError::Syntax));
        assert_eq!(rev("<postmaster>").map(|p| p.0), Err(PathError::Syntax));
    }

    #[test]
    fn quoted_local_parts_are_unquoted() {
        assert_eq!(fwd(r#"<"john doe"@x.org>"#).unwrap(), "john doe@x.org");
        assert_eq!(fwd(r#"<"a\"b@c>"@x.org>"#).unwrap(), "a\"b@c>@x.org");
        assert_eq!(fwd(r#"<"unterminated@x.org>"#), Err(PathError::Syntax));
    }

    #[test]
    fn source_routes_are_dropped_and_remembered() {
        let (p, _) = parse_path(b"<@a.org,@b.org:u@c.org>", PathKind::Forward, false).unwrap();
        assert_eq!(p.address, "u@c.org");
        assert!(p.had_source_route);
        assert!(parse_path(b"<@a.org:u@c.org>", PathKind::Forward, false).is_ok());
        assert!(parse_path(b"<@:u@c.org>", PathKind::Forward, false).is_err());
    }

    #[test]
    fn domains_and_literals() {
        assert!(fwd("<u@[127.0.0.1]>").is_ok());
        assert!(fwd("<u@[IPv6:::1]>").is_ok());
        assert!(fwd("<u@[999.0.0.1]>").is_err());
        assert!(fwd("<u@-bad.org>").is_err());
        assert!(fwd("<u@a..org>").is_err());
        assert!(fwd("<u@>").is_err());
        assert!(fwd("<u v@x.org>").is_err());
        assert!(fwd("<u@x.org").is_err());
    }

    #[test]
    fn length_and_eight_bit_limits() {
        let long = format!("<{}@x.org>", "a".repeat(MAX_ADDRESS));
        assert_eq!(fwd(&long), Err(PathError::TooLong));
        assert_eq!(fwd("<j\u{f6}rg@x.org>"), Err(PathError::NonAscii));
        let (p, _) = parse_path(
            "<j\u{f6}rg@b\u{fc}cher.de>".as_bytes(),
            PathKind::Forward,
            true,
        )
        .unwrap();
        assert_eq!(p.address, "j\u{f6}rg@b\u{fc}cher.de");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(input in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = parse_path(&input, PathKind::Reverse, false);
            let _ = parse_path(&input, PathKind::Forward, true);
        }

        #[test]
        fn simple_mailboxes_round_trip(local in "[a-z0-9+._-]{1,20}", domain in "[a-z0-9]{1,10}(\\.[a-z]{2,5}){1,2}") {
            let addr = format!("{local}@{domain}");
            proptest::prop_assume!(!local.starts_with('.'));
            let parsed = fwd(&format!("<{addr}>"));
            proptest::prop_assert_eq!(parsed, Ok(addr));
        }
    }
}
