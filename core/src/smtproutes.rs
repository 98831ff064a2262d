//! `control/smtproutes`: where qmail-remote sends mail for a domain.
//!
//! Lines are `domain:relay`, read afresh for every delivery. qmail 1.03
//! writes a port as `relay:port`; s/qmail as `relay;port` (so an IPv6
//! literal can carry one) and may append `|user|password` for SMTP AUTH.
//! An empty relay means "look up the domain's MX", an empty domain is the
//! default route, and `.example.com` matches every name below
//! `example.com` (but not `example.com` itself). Lookup follows
//! qmail-remote: the whole name first, then each `.suffix` from the
//! longest, then the empty domain; the first line of a key wins.
//!
//! Deliberate difference: a line without `:` or with a port that is not a
//! number is an error naming the line (qmail ignores the line, or reads
//! the port's leading digits, so a typo silently routes mail elsewhere).

use std::collections::HashMap;

use crate::control::ControlError;

/// SMTP's port (qmail-remote's default).
pub const SMTP_PORT: u16 = 25;

const FILE: &str = "smtproutes";

/// Where to send, from one `smtproutes` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// An empty relay: deliver to the domain's MX hosts.
    Mx,
    /// A relay: a host name (looked up by A/AAAA, never MX) or an address
    /// literal in brackets, as written.
    Relay {
        host: String,
        port: u16,
        /// s/qmail's `|user|password`: credentials for SMTP AUTH.
        auth: Option<(String, String)>,
    },
}

/// A parsed `smtproutes`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SmtpRoutes {
    routes: HashMap<String, Route>,
}

impl SmtpRoutes {
    /// Parses the file's bytes (blank and `#` lines skipped, as qmail's
    /// `control_readfile`; keys compare ASCII case-insensitively).
    pub fn parse(contents: &[u8]) -> Result<SmtpRoutes, ControlError> {
        let mut routes = HashMap::new();
        for (i, raw) in contents.split(|&b| b == b'\n').enumerate() {
            let number = i + 1;
            let line = std::str::from_utf8(raw)
                .map_err(|_| ControlError::new(FILE, number, "invalid UTF-8"))?
                .trim_end_matches([' ', '\t', '\r']);
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (domain, relay) = line.split_once(':').ok_or_else(|| {
                ControlError::new(FILE, number, "no ':' between domain and relay")
            })?;
            let route = parse_relay(relay).map_err(|m| ControlError::new(FILE, number, m))?;
            routes.entry(domain.to_ascii_lowercase()).or_insert(route);
        }
        Ok(SmtpRoutes { routes })
    }

    /// The route for mail to `domain`, if any line covers it.
    pub fn lookup(&self, domain: &str) -> Option<&Route> {
        let domain = domain.to_ascii_lowercase();
        let suffixes = domain
            .char_indices()
            .filter(|&(_, c)| c == '.')
            .map(|(i, _)| &domain[i..]);
        std::iter::once(domain.as_str())
            .chain(suffixes)
            .chain(std::iter::once(""))
            .find_map(|key| self.routes.get(key))
    }
}

fn parse_relay(relay: &str) -> Result<Route, String> {
    let (relay, auth) = match relay.split_once('|') {
        None => (relay, None),
        Some((relay, creds)) => {
            let (user, password) = creds
                .split_once('|')
                .ok_or("AUTH credentials must be |user|password")?;
            (relay, Some((user.to_string(), password.to_string())))
        }
    };
    if relay.is_empty() {
        return match auth {
            None => Ok(Route::Mx),
            Some(_) => Err("AUTH credentials need a relay".into()),
        };
    }
    let (host, port) = split_port(relay)?;
    if host.is_empty() {
        return Err("a port without a relay".into());
    }
    if host.starts_with('[') && !host.ends_with(']') {
        return Err(format!("unclosed address literal {host:?}"));
    }
    Ok(Route::Relay {
        host: host.to_string(),
        port,
        auth,
    })
}

/// `host`, `host:port` (qmail) or `host;port` (s/qmail); a bracketed
/// literal keeps its colons.
fn split_port(relay: &str) -> Result<(&str, u16), String> {
    let host_end = if relay.starts_with('[') {
        relay.find(']').map_or(relay.len(), |i| i + 1)
    } else {
        relay.find([':', ';']).unwrap_or(relay.len())
    };
    let (host, rest) = relay.split_at(host_end);
    let Some(port) = rest.strip_prefix([':', ';']) else {
        return match rest {
            "" => Ok((host, SMTP_PORT)),
            _ => Err(format!("unexpected {rest:?} after the relay")),
        };
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok((host, p)),
        _ => Err(format!("bad port {port:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(host: &str, port: u16) -> Route {
        Route::Relay {
            host: host.into(),
            port,
            auth: None,
        }
    }

    #[test]
    fn the_seed_examples() {
        // The null client and the smart-host examples of the qmail talk.
        let r = SmtpRoutes::parse(b":mailhost.devel.domain.com\n").unwrap();
        assert_eq!(
            r.lookup("irs.gov"),
            Some(&relay("mailhost.devel.domain.com", 25))
        );
        let r = SmtpRoutes::parse(b":[123.45.67.89]\n").unwrap();
        assert_eq!(r.lookup("x.y"), Some(&relay("[123.45.67.89]", 25)));
        let r = SmtpRoutes::parse(
            b"devel.domain.com:mailhost.devel.domain.com\nsales.domain.com:mailhost.sales.domain.com\n",
        )
        .unwrap();
        assert_eq!(
            r.lookup("SALES.domain.com"),
            Some(&relay("mailhost.sales.domain.com", 25))
        );
        assert_eq!(r.lookup("domain.com"), None);
        assert_eq!(r.lookup("x.sales.domain.com"), None);
    }

    #[test]
    fn lookup_order_is_qmail_remotes() {
        let r = SmtpRoutes::parse(
            b"a.b.c:exact\n.b.c:sub\n.c:top\n:default\nempty.example:\n# comment\n\n",
        )
        .unwrap();
        assert_eq!(r.lookup("a.b.c"), Some(&relay("exact", 25)));
        assert_eq!(r.lookup("x.a.b.c"), Some(&relay("sub", 25)));
        assert_eq!(r.lookup("b.c"), Some(&relay("top", 25)));
        assert_eq!(r.lookup("c"), Some(&relay("default", 25)));
        assert_eq!(r.lookup("empty.example"), Some(&Route::Mx));
        assert_eq!(r.lookup("elsewhere"), Some(&relay("default", 25)));
    }

    #[test]
    fn first_line_of_a_key_wins() {
        let r = SmtpRoutes::parse(b"x.org:one\nX.ORG:two\n").unwrap();
        assert_eq!(r.lookup("x.org"), Some(&relay("one", 25)));
    }

    #[test]
    fn ports_and_credentials() {
        let r = SmtpRoutes::parse(
            b"q:relay.example:2525\ns:relay.example;587|joe|se:cr|et\nv6:[IPv6:2001:db8::1];26\nv4:[10.0.0.1]:27\nbare:[::1]\n",
        )
        .unwrap();
        assert_eq!(r.lookup("q"), Some(&relay("relay.example", 2525)));
        assert_eq!(
            r.lookup("s"),
            Some(&Route::Relay {
                host: "relay.example".into(),
                port: 587,
                auth: Some(("joe".into(), "se:cr|et".into())),
            })
        );
        assert_eq!(r.lookup("v6"), Some(&relay("[IPv6:2001:db8::1]", 26)));
        assert_eq!(r.lookup("v4"), Some(&relay("[10.0.0.1]", 27)));
        assert_eq!(r.lookup("bare"), Some(&relay("[::1]", 25)));
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line) in [
            (&b"ok:relay\nnocolon\n"[..], 2),
            (b"x:relay:port\n", 1),
            (b"x:relay:0\n", 1),
            (b"x:relay:99999\n", 1),
            (b"x:relay:+25\n", 1),
            (b"x::25\n", 1),
            (b"x:[::1\n", 1),
            (b"x:[::1]junk\n", 1),
            (b"x:|user|pw\n", 1),
            (b"x:relay|user\n", 1),
            (b"\n\nx:\xff\n", 3),
        ] {
            let e = SmtpRoutes::parse(text).unwrap_err();
            assert_eq!(
                (e.file.as_str(), e.line),
                ("smtproutes", line),
                "{text:?}: {e}"
            );
        }
    }
}
