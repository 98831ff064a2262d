//! s/qmail's `control/recipients`: which recipients exist, checked at RCPT
//! time so that mail for an unknown user is refused during the session
//! instead of accepted and bounced later (backscatter).
//!
//! Lines, tried in order; the first whose domain matches decides:
//! - `cdbpath`: every domain is checked against this cdb (s/qmail's legacy
//!   form);
//! - `domain:cdbpath`: recipients in `domain`;
//! - `*:cdbpath`: recipients in any domain;
//! - `!domain:` or `!*`: pass-through, recipients in `domain` (any domain)
//!   are not checked.
//!
//! A recipient whose domain no line matches, or without `@`, is not
//! checked. The cdbs are fastforward-style, as `qmail-recipients` and
//! `setforward` write them: the key `:` plus the lowercased address, or
//! `:@domain`, which accepts every local part of the domain.
//!
//! The core does no I/O: the host opens each cdb named here and hands it
//! in as a [`Lookup`] ([`Recipients::build`]).
//!
//! Not supported, and refused at load rather than misread: s/qmail's PAM
//! lines (`domain|program args`).

use std::fmt;

use crate::address::{is_address_literal, is_domain};
use crate::control::ControlError;
use crate::policy::{Lookup, LookupError};

/// Which recipients a line applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainMatch {
    /// `*`, or a bare cdb path: every domain.
    Any,
    /// One domain, lowercased.
    Domain(String),
}

impl DomainMatch {
    fn matches(&self, domain: &str) -> bool {
        match self {
            DomainMatch::Any => true,
            DomainMatch::Domain(d) => d == domain,
        }
    }
}

/// What a matching line does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `!`: accept without looking.
    PassThrough,
    /// Accept if the address (or `@domain`) is in this cdb; the path is as
    /// written, the host resolves it (relative to the qmail home).
    Cdb(String),
}

/// One line of `control/recipients`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// 1-based line number, for errors about the cdb it names.
    pub line: usize,
    pub domain: DomainMatch,
    pub action: Action,
}

/// Parses `control/recipients`; `file` names it in errors. Blank lines and
/// lines starting with `#` are skipped; whitespace around a line is not
/// part of it.
pub fn parse(file: &str, contents: &[u8]) -> Result<Vec<Rule>, ControlError> {
    let mut rules = Vec::new();
    for (i, raw) in contents.split(|&b| b == b'\n').enumerate() {
        let err = |m: String| ControlError::new(file, i + 1, m);
        if raw.contains(&0) {
            return Err(err("NUL byte in line".into()));
        }
        let line = std::str::from_utf8(raw)
            .map_err(|_| err("invalid UTF-8".into()))?
            .trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (domain, action) = parse_line(line).map_err(err)?;
        rules.push(Rule {
            line: i + 1,
            domain,
            action,
        });
    }
    Ok(rules)
}

fn parse_line(line: &str) -> Result<(DomainMatch, Action), String> {
    if let Some(rest) = line.strip_prefix('!') {
        let domain = rest.strip_suffix(':').unwrap_or(rest);
        if domain.contains(':') {
            return Err(format!(
                "a pass-through line names no cdb (write `!{}:`)",
                domain.split(':').next().unwrap_or_default()
            ));
        }
        return Ok((domain_match(domain)?, Action::PassThrough));
    }
    let colon = line.find(':');
    if line[..colon.unwrap_or(line.len())].contains('|') {
        return Err("PAM lines (`domain|program`) are not supported".into());
    }
    match colon {
        None => Ok((DomainMatch::Any, Action::Cdb(line.to_string()))),
        Some(i) => {
            let path = line[i + 1..].trim();
            if path.is_empty() {
                return Err(format!(
                    "no cdb after `{}:` (a pass-through line starts with `!`)",
                    &line[..i]
                ));
            }
            Ok((
                domain_match(line[..i].trim())?,
                Action::Cdb(path.to_string()),
            ))
        }
    }
}

fn domain_match(domain: &str) -> Result<DomainMatch, String> {
    if domain == "*" {
        return Ok(DomainMatch::Any);
    }
    if is_domain(domain.as_bytes()) || is_address_literal(domain.as_bytes()) {
        Ok(DomainMatch::Domain(domain.to_ascii_lowercase()))
    } else {
        Err(format!("not a domain: {domain:?}"))
    }
}

/// The host's way to open a cdb named in `control/recipients`: the
/// lookup, or why it cannot be opened.
pub type OpenCdb<'a> = dyn FnMut(&str) -> Result<Box<dyn Lookup>, String> + 'a;

/// The recipient check, with each line's cdb opened by the host.
/// The default checks nothing (no `control/recipients`).
#[derive(Default)]
pub struct Recipients {
    /// `None` for a pass-through line.
    checks: Vec<(DomainMatch, Option<Box<dyn Lookup>>)>,
}

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.checks.iter().map(|(d, l)| (d, l.is_some())))
            .finish()
    }
}

impl Recipients {
    /// Builds the check from parsed `rules`, calling `open` with each cdb
    /// path. An `open` error is reported as `file` at that rule's line.
    pub fn build(file: &str, rules: &[Rule], open: &mut OpenCdb<'_>) -> Result<Self, ControlError> {
        let checks = rules
            .iter()
            .map(|rule| {
                let lookup =
                    match &rule.action {
                        Action::PassThrough => None,
                        Action::Cdb(path) => Some(open(path).map_err(|e| {
                            ControlError::new(file, rule.line, format!("{path}: {e}"))
                        })?),
                    };
                Ok((rule.domain.clone(), lookup))
            })
            .collect::<Result<_, ControlError>>()?;
        Ok(Recipients { checks })
    }

    /// No line at all: nothing is checked.
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// Whether `address` may be accepted: the first line matching its
    /// domain decides; no matching line, or no `@`, accepts.
    pub fn accepts(&self, address: &str) -> Result<bool, LookupError> {
        let Some(at) = address.rfind('@') else {
            return Ok(true);
        };
        let address = address.to_ascii_lowercase();
        let domain = &address[at + 1..];
        let Some((_, lookup)) = self.checks.iter().find(|(d, _)| d.matches(domain)) else {
            return Ok(true);
        };
        let Some(lookup) = lookup else {
            return Ok(true);
        };
        Ok(lookup.contains(format!(":{address}").as_bytes())?
            || lookup.contains(format!(":@{domain}").as_bytes())?)
    }
}

/// `users/recipients` (one address per line, `@domain` for a whole domain,
/// `#` comments) as the keys of `users/recipients.cdb`: `:` plus the
/// lowercased entry, each once, in file order. `file` names it in errors.
pub fn users_recipients_keys(file: &str, contents: &[u8]) -> Result<Vec<Vec<u8>>, ControlError> {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, raw) in contents.split(|&b| b == b'\n').enumerate() {
        let err = |m: &str| ControlError::new(file, i + 1, m);
        if raw.contains(&0) {
            return Err(err("NUL byte in line"));
        }
        let line = std::str::from_utf8(raw)
            .map_err(|_| err("invalid UTF-8"))?
            .trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.contains(char::is_whitespace) {
            return Err(err("an address has no whitespace"));
        }
        if !line.contains('@') {
            // The check looks up only addresses with a domain; a bare local
            // part in the cdb would never match.
            return Err(err("not an address: local@domain or @domain"));
        }
        let key = format!(":{}", line.to_ascii_lowercase()).into_bytes();
        if seen.insert(key.clone()) {
            keys.push(key);
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn set(keys: &[&str]) -> Box<dyn Lookup> {
        Box::new(
            keys.iter()
                .map(|k| k.as_bytes().to_vec())
                .collect::<HashSet<Vec<u8>>>(),
        )
    }

    struct Broken;
    impl Lookup for Broken {
        fn contains(&self, _: &[u8]) -> Result<bool, LookupError> {
            Err(LookupError("read error".into()))
        }
    }

    /// Builds from `text`, the cdb named `name` holding `cdbs[name]`.
    fn build(text: &str, cdbs: &[(&str, &[&str])]) -> Recipients {
        let rules = parse("recipients", text.as_bytes()).unwrap();
        Recipients::build("recipients", &rules, &mut |path| {
            cdbs.iter()
                .find(|(n, _)| *n == path)
                .map(|(_, keys)| set(keys))
                .ok_or_else(|| "No such file or directory".to_string())
        })
        .unwrap()
    }

    #[test]
    fn parses_every_form() {
        let text = "# comment\n\nusers/recipients.cdb\nExample.COM:a.cdb\n  *:b.cdb  \n!skip.example:\n!*\n!Other.example\n";
        let rules = parse("recipients", text.as_bytes()).unwrap();
        let got: Vec<(usize, DomainMatch, Action)> = rules
            .into_iter()
            .map(|r| (r.line, r.domain, r.action))
            .collect();
        let d = |s: &str| DomainMatch::Domain(s.into());
        let cdb = |s: &str| Action::Cdb(s.into());
        assert_eq!(
            got,
            vec![
                (3, DomainMatch::Any, cdb("users/recipients.cdb")),
                (4, d("example.com"), cdb("a.cdb")),
                (5, DomainMatch::Any, cdb("b.cdb")),
                (6, d("skip.example"), Action::PassThrough),
                (7, DomainMatch::Any, Action::PassThrough),
                (8, d("other.example"), Action::PassThrough),
            ]
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases: &[(&[u8], usize)] = &[
            (b"ok.cdb\nexample.com:\n", 2),
            (b"!example.com:x.cdb\n", 1),
            (b"a\nb\nexample.com|/bin/pam arg\n", 3),
            (b"@example.com:x.cdb\n", 1),
            (b":x.cdb\n", 1),
            (b"!\n", 1),
            (b"ok\n\xff\n", 2),
            (b"ok\nx\0y\n", 2),
        ];
        for &(text, line) in cases {
            let e = parse("recipients", text).unwrap_err();
            assert_eq!((e.file.as_str(), e.line), ("recipients", line), "{text:?}");
            assert!(e
                .to_string()
                .starts_with(&format!("control/recipients:{line}: ")));
        }
    }

    #[test]
    fn a_cdb_that_cannot_be_opened_names_its_line() {
        let rules = parse("recipients", b"# c\n!x.example:\nmissing.cdb\n").unwrap();
        let e = Recipients::build("recipients", &rules, &mut |_| Err("gone".into())).unwrap_err();
        assert_eq!(e.to_string(), "control/recipients:3: missing.cdb: gone");
    }

    #[test]
    fn first_matching_line_decides() {
        let r = build(
            "!open.example:\nexample.com:a.cdb\n*:b.cdb\n",
            &[
                ("a.cdb", &[":alice@example.com", ":@catchall.example"]),
                ("b.cdb", &[":bob@other.example", ":@catchall.example"]),
            ],
        );
        let cases: &[(&str, bool)] = &[
            ("alice@example.com", true),
            ("Alice@EXAMPLE.com", true),
            ("bob@example.com", false),
            ("bob@other.example", true),
            ("BOB@Other.Example", true),
            ("carol@other.example", false),
            ("anyone@open.example", true),
            ("anyone@OPEN.example", true),
            ("anyone@catchall.example", true),
            ("postmaster", true),
            ("nodomain", true),
            ("alice@sub.example.com", false),
        ];
        for &(addr, want) in cases {
            assert_eq!(r.accepts(addr), Ok(want), "{addr}");
        }
    }

    #[test]
    fn unmatched_domains_are_not_checked() {
        let r = build("example.com:a.cdb\n", &[("a.cdb", &[":alice@example.com"])]);
        assert_eq!(r.accepts("anyone@elsewhere.example"), Ok(true));
        assert_eq!(r.accepts("bob@example.com"), Ok(false));
        assert!(Recipients::default().is_empty());
        assert_eq!(Recipients::default().accepts("x@y.z"), Ok(true));
    }

    #[test]
    fn pass_through_after_a_domain_line() {
        let r = build(
            "example.com:a.cdb\n!*\n",
            &[("a.cdb", &[":alice@example.com"])],
        );
        assert_eq!(r.accepts("bob@example.com"), Ok(false));
        assert_eq!(r.accepts("bob@example.org"), Ok(true));
    }

    #[test]
    fn lookup_errors_are_errors() {
        let rules = parse("recipients", b"x.cdb\n").unwrap();
        let r = Recipients::build("recipients", &rules, &mut |_| Ok(Box::new(Broken))).unwrap();
        assert!(r.accepts("a@b.example").is_err());
        assert_eq!(r.accepts("nodomain"), Ok(true), "no lookup without @");
    }

    #[test]
    fn users_recipients_keys_are_lowercased_and_unique() {
        let text = b"# users\nAlice@Example.COM\n\n  bob@example.com \n@Catchall.example\nalice@example.com\n";
        let keys = users_recipients_keys("users/recipients", text).unwrap();
        assert_eq!(
            keys,
            vec![
                b":alice@example.com".to_vec(),
                b":bob@example.com".to_vec(),
                b":@catchall.example".to_vec(),
            ]
        );
        for (text, line) in [(&b"a@b\nnoat\n"[..], 2), (b"a b@c\n", 1), (b"\xff", 1)] {
            let e = users_recipients_keys("/h/users/recipients", text).unwrap_err();
            assert_eq!(e.line, line);
            assert!(e.to_string().starts_with("/h/users/recipients:"), "{e}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse("recipients", &bytes);
            let _ = users_recipients_keys("recipients", &bytes);
        }

        #[test]
        fn listed_addresses_pass_in_any_case(local in "[a-zA-Z0-9.]{1,10}", dom in "[a-z]{1,8}") {
            let addr = format!("{local}@{dom}.example");
            let keys = users_recipients_keys("r", addr.as_bytes()).unwrap();
            let lookup: HashSet<Vec<u8>> = keys.into_iter().collect();
            let rules = parse("recipients", b"users/recipients.cdb").unwrap();
            let mut lookup = Some(lookup);
            let r = Recipients::build("recipients", &rules, &mut |_| {
                Ok(Box::new(lookup.take().unwrap_or_default()))
            })
            .unwrap();
            prop_assert_eq!(r.accepts(&addr.to_uppercase()), Ok(true));
            prop_assert_eq!(r.accepts(&format!("x{addr}")), Ok(false));
        }
    }
}
