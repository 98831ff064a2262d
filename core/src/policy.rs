//! Policy: the pure decisions qmail-smtpd makes from its control files and
//! the connection's facts (qmail 1.03 `qmail-smtpd.c`, `rcpthosts.c`).
//!
//! On top of qmail 1.03, clients without `RELAYCLIENT` may not use
//! sender-specified routing towards our own domains: a `%` or `!` or a
//! second `@` in the local part, or an RFC 5321 source route, is refused
//! even when the domain is in rcpthosts. This is Postfix's
//! `allow_untrusted_routing = no`: a backup MX (or a host that applies
//! `control/percenthack`, or a UUCP gateway) that accepts
//! `user%victim.example@our.example` hands the message on to
//! `victim.example`, which makes it an open relay through a second hop.
//! `postmaster` is exempt (RFC 5321 section 4.5.1 wants it reachable).
//! The refusals belong to the rcpthosts gate.
//!
//! Unlike qmail 1.03, a missing rcpthosts file does not make an open
//! relay: it lists no domain, so only `RELAYCLIENT` clients, addresses
//! without a domain and `postmaster` pass (and morercpthosts.cdb, if it
//! exists). qmail's default has turned many forgotten installations into
//! open relays; `sqmail setup` writes an rcpthosts file, and `sqmail smtpd`
//! warns at start when there is none.
//!
//! As in qmail, badmailfrom is checked first and for everyone, relay
//! clients and `postmaster` included.
//!
//! As in s/qmail, clients without `RELAYCLIENT` then meet
//! `control/recipients` ([`crate::recipients`]) after rcpthosts: an unknown
//! recipient is refused with 550 (450 with `RECIPIENTS450`). `postmaster`
//! is exempt here too, as RFC 5321 section 4.5.1 wants.

use std::fmt;
use std::net::IpAddr;

use crate::conn::ConnInfo;
use crate::control::SmtpdControls;
use crate::recipients::Recipients;
use crate::smtp::Reply;

/// A set of keys held outside the core, such as a cdb file
/// (`morercpthosts.cdb`, `recipients` cdbs). The host opens the file; the
/// core only asks whether a key is in it.
pub trait Lookup: Send + Sync {
    /// Is `key` present? An I/O error reading the set counts as absent
    /// only if the implementation says so; it may instead report it via
    /// `Err`, which the policy turns into a temporary failure.
    fn contains(&self, key: &[u8]) -> Result<bool, LookupError>;
}

/// The backing store of a `Lookup` could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupError(pub String);

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LookupError {}

impl<S: std::hash::BuildHasher + Send + Sync> Lookup for std::collections::HashSet<Vec<u8>, S> {
    fn contains(&self, key: &[u8]) -> Result<bool, LookupError> {
        Ok(std::collections::HashSet::contains(self, key))
    }
}

/// qmail's `err_bmf`, reported at RCPT time.
pub const REPLY_BADMAILFROM: Reply = Reply::new(
    553,
    "5.7.1",
    "sorry, your envelope sender is in my badmailfrom list",
);
/// qmail's `err_nogateway`.
pub const REPLY_NOT_RCPTHOST: Reply = Reply::new(
    553,
    "5.7.1",
    "sorry, that domain isn't in my list of allowed rcpthosts",
);
/// A `%`, `!` or `@` in the local part from an untrusted client.
pub const REPLY_ROUTED_LOCALPART: Reply = Reply::new(
    553,
    "5.7.1",
    "sorry, I don't accept %, ! or @ routing in the local part",
);
/// An RFC 5321 source route from an untrusted client.
pub const REPLY_SOURCE_ROUTE: Reply = Reply::new(
    553,
    "5.7.1",
    "sorry, I don't accept source-routed addresses",
);
/// s/qmail's answer for a recipient `control/recipients` does not know.
pub const REPLY_NO_MAILBOX: Reply = Reply::new(550, "5.1.1", "sorry, no mailbox here by that name");
/// The same with `RECIPIENTS450`: the sender should try again later.
pub const REPLY_NO_MAILBOX_YET: Reply =
    Reply::new(450, "4.1.1", "sorry, no mailbox here by that name");
/// morercpthosts.cdb (or another lookup) could not be read.
pub const REPLY_CONTROLS: Reply = Reply::new(451, "4.3.0", "unable to read controls");

/// The domain after the last `@`, if there is an `@` (qmail `byte_rchr`).
fn domain_of(address: &str) -> Option<&str> {
    address.rfind('@').map(|i| &address[i + 1..])
}

/// Everything before the last `@`, or all of an address without one.
fn local_part(address: &str) -> &str {
    address.rfind('@').map_or(address, |i| &address[..i])
}

/// `<postmaster>` or `postmaster@...`, in any case (RFC 5321 4.5.1).
fn is_postmaster(address: &str) -> bool {
    local_part(address).eq_ignore_ascii_case("postmaster")
}

/// The keys qmail tries for a domain: the domain itself, then every
/// suffix starting at a `.` (so a `.example.com` line covers subdomains).
fn domain_keys(domain: &str) -> impl Iterator<Item = &str> {
    let suffixes = domain
        .char_indices()
        .filter(|&(i, c)| c == '.' && i > 0)
        .map(move |(i, _)| &domain[i..]);
    std::iter::once(domain).chain(suffixes)
}

/// `control/rcpthosts` plus `control/morercpthosts.cdb`: the domains this
/// host accepts mail for from clients without `RELAYCLIENT`.
pub struct RcptHosts {
    /// Lowercased lines; empty when rcpthosts does not exist.
    hosts: std::collections::HashSet<String>,
    more: Option<Box<dyn Lookup>>,
}

impl fmt::Debug for RcptHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RcptHosts")
            .field("hosts", &self.hosts)
            .field("more", &self.more.is_some())
            .finish()
    }
}

impl RcptHosts {
    /// `lines` is `None` when rcpthosts does not exist: no domain is
    /// listed then (qmail 1.03 would accept every recipient; see above).
    pub fn new(lines: Option<&[String]>, more: Option<Box<dyn Lookup>>) -> Self {
        let hosts = lines
            .unwrap_or_default()
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        RcptHosts { hosts, more }
    }

    /// qmail's `rcpthosts()`: an address without `@` always passes (it
    /// gets `envnoathost`); otherwise its domain must be listed.
    pub fn allows(&self, address: &str) -> Result<bool, LookupError> {
        match domain_of(address) {
            None => Ok(true),
            Some(domain) => self.allows_domain(domain),
        }
    }

    /// Whether `domain` (any case) is listed, directly or by a `.suffix`
    /// line, in rcpthosts or morercpthosts.cdb.
    pub fn allows_domain(&self, domain: &str) -> Result<bool, LookupError> {
        let domain = domain.to_ascii_lowercase();
        if domain_keys(&domain).any(|k| self.hosts.contains(k)) {
            return Ok(true);
        }
        if let Some(more) = &self.more {
            for key in domain_keys(&domain) {
                if more.contains(key.as_bytes())? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

/// `control/badmailfrom`: refused envelope senders.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BadMailFrom {
    /// Lowercased lines: full addresses and `@domain` entries.
    entries: std::collections::HashSet<String>,
}

impl BadMailFrom {
    pub fn new(lines: &[String]) -> Self {
        let entries = lines.iter().map(|l| l.to_ascii_lowercase()).collect();
        BadMailFrom { entries }
    }

    /// qmail's `bmfcheck`: the whole address, or `@` plus the part after
    /// its last `@`, matched without regard to case. The null sender
    /// never matches.
    pub fn matches(&self, sender: &str) -> bool {
        if sender.is_empty() {
            return false;
        }
        let sender = sender.to_ascii_lowercase();
        self.entries.contains(&sender)
            || sender
                .rfind('@')
                .is_some_and(|i| self.entries.contains(&sender[i..]))
    }
}

/// Parses an address literal domain: `[1.2.3.4]` or `[IPv6:...]`.
pub fn parse_address_literal(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => inner[5..]
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(IpAddr::V6),
        _ => inner.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

/// An address as text, IPv4-mapped IPv6 folded to IPv4 (what the socket
/// reports for an IPv4 client of a dual-stack listener).
fn parse_ip(text: &str) -> Option<IpAddr> {
    text.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// The qmail-smtpd policy: rcpthosts, badmailfrom, RELAYCLIENT,
/// localiphost and s/qmail's recipients, plus the untrusted-routing
/// refusals described above.
#[derive(Debug)]
pub struct SmtpPolicy {
    pub rcpthosts: RcptHosts,
    pub badmailfrom: BadMailFrom,
    /// `control/recipients`, its cdbs opened by the host; empty (nothing
    /// checked) unless the host sets it.
    pub recipients: Recipients,
    /// `localiphost` (or `me`): replaces our own address literals.
    pub localiphost: Option<String>,
    /// More addresses that count as "this host" for the localiphost
    /// rewrite, besides the connection's local address. qmail uses every
    /// interface address (`ipme`); the host may supply them here.
    pub local_ips: Vec<IpAddr>,
}

impl SmtpPolicy {
    /// Builds the policy from the controls and the host's handle on
    /// `control/morercpthosts.cdb`, if that file exists.
    pub fn new(controls: &SmtpdControls, morercpthosts: Option<Box<dyn Lookup>>) -> Self {
        SmtpPolicy {
            rcpthosts: RcptHosts::new(controls.rcpthosts.as_deref(), morercpthosts),
            badmailfrom: BadMailFrom::new(&controls.badmailfrom),
            recipients: Recipients::default(),
            localiphost: controls.localiphost.clone(),
            local_ips: Vec::new(),
        }
    }

    /// The policy with `control/recipients` in force.
    pub fn with_recipients(mut self, recipients: Recipients) -> Self {
        self.recipients = recipients;
        self
    }

    /// qmail's `addrparse` tail: `box@[our IP]` becomes `box@localiphost`,
    /// so mail to our own literal is delivered like mail to our name.
    pub fn rewrite_literal(&self, conn: &ConnInfo, address: &str) -> String {
        let (Some(host), Some(at)) = (&self.localiphost, address.rfind('@')) else {
            return address.to_string();
        };
        let Some(ip) = parse_address_literal(&address[at + 1..]) else {
            return address.to_string();
        };
        let ip = ip.to_canonical();
        if parse_ip(&conn.local_ip) == Some(ip)
            || self.local_ips.iter().any(|l| l.to_canonical() == ip)
        {
            format!("{}{}", &address[..=at], host)
        } else {
            address.to_string()
        }
    }

    /// Whether the sender is in badmailfrom (after the literal rewrite,
    /// which qmail applies before its check).
    pub fn is_badmailfrom(&self, conn: &ConnInfo, sender: &str) -> bool {
        self.badmailfrom
            .matches(&self.rewrite_literal(conn, sender))
    }

    /// MAIL FROM: returns the sender to put in the envelope. qmail 1.03
    /// refuses nothing here; badmailfrom is reported at RCPT time.
    pub fn check_mail(&self, conn: &ConnInfo, sender: &str) -> Result<String, Reply> {
        Ok(self.rewrite_literal(conn, sender))
    }

    /// RCPT TO: returns the recipient to queue (rewritten, with
    /// `RELAYCLIENT` appended) or the reply refusing it. `sender` is the
    /// envelope sender as given to [`SmtpPolicy::check_mail`];
    /// `had_source_route` tells whether the parser removed a source route.
    pub fn check_rcpt(
        &self,
        conn: &ConnInfo,
        sender: &str,
        rcpt: &str,
        had_source_route: bool,
    ) -> Result<String, Reply> {
        let rcpt = self.rewrite_literal(conn, rcpt);
        if self.is_badmailfrom(conn, sender) {
            return Err(REPLY_BADMAILFROM);
        }
        if let Some(suffix) = &conn.relay_client {
            return Ok(rcpt + suffix);
        }
        let allowed = self.rcpthosts.allows(&rcpt).map_err(|_| REPLY_CONTROLS)?;
        if !allowed {
            return Err(REPLY_NOT_RCPTHOST);
        }
        if is_postmaster(&rcpt) {
            return Ok(rcpt);
        }
        check_routing(&rcpt, had_source_route)?;
        match self.recipients.accepts(&rcpt) {
            Ok(true) => Ok(rcpt),
            Ok(false) if conn.recipients_450 => Err(REPLY_NO_MAILBOX_YET),
            Ok(false) => Err(REPLY_NO_MAILBOX),
            Err(_) => Err(REPLY_CONTROLS),
        }
    }
}

/// The untrusted-routing refusals (see the module documentation).
fn check_routing(rcpt: &str, had_source_route: bool) -> Result<(), Reply> {
    if had_source_route {
        return Err(REPLY_SOURCE_ROUTE);
    }
    if local_part(rcpt).contains(['%', '!', '@']) {
        return Err(REPLY_ROUTED_LOCALPART);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

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
            Err(LookupError("cdb read error".into()))
        }
    }

    fn policy(rcpthosts: Option<&[&str]>, bmf: &[&str]) -> SmtpPolicy {
        let controls = SmtpdControls {
            me: Some("mx.example.com".into()),
            smtpgreeting: "mx.example.com".into(),
            localiphost: Some("example.com".into()),
            rcpthosts: rcpthosts.map(lines),
            badmailfrom: lines(bmf),
            databytes: 0,
            timeoutsmtpd: 1200,
        };
        SmtpPolicy::new(&controls, None)
    }

    fn conn() -> ConnInfo {
        ConnInfo {
            remote_ip: "192.0.2.9".into(),
            local_ip: "198.51.100.1".into(),
            ..ConnInfo::default()
        }
    }

    fn relay_conn(suffix: &str) -> ConnInfo {
        ConnInfo {
            relay_client: Some(suffix.into()),
            ..conn()
        }
    }

    #[test]
    fn rcpthosts_table() {
        let rh = RcptHosts::new(
            Some(&lines(&["example.com", ".example.net", "Mixed.Example"])),
            None,
        );
        let cases: &[(&str, bool)] = &[
            ("joe@example.com", true),
            ("joe@EXAMPLE.COM", true),
            ("joe@sub.example.com", false),
            ("joe@example.net", false),
            ("joe@a.example.net", true),
            ("joe@a.b.EXAMPLE.net", true),
            ("joe@mixed.example", true),
            ("joe@example.com.", false),
            ("joe@", false),
            ("joe@other.org", false),
            ("joe", true),
            ("postmaster", true),
            ("a@b@example.com", true),
            ("joe@example.com@evil.org", false),
            ("joe@[192.0.2.1]", false),
        ];
        for &(addr, want) in cases {
            assert_eq!(rh.allows(addr), Ok(want), "{addr}");
        }
    }

    #[test]
    fn no_rcpthosts_is_no_open_relay() {
        let rh = RcptHosts::new(None, None);
        assert_eq!(rh.allows("joe@anywhere.example"), Ok(false));
        assert_eq!(rh.allows("postmaster"), Ok(true));
        let rh = RcptHosts::new(None, Some(set(&["more.example"])));
        assert_eq!(rh.allows("joe@more.example"), Ok(true));
        let rh = RcptHosts::new(Some(&[]), None);
        assert_eq!(rh.allows("joe@anywhere.example"), Ok(false));
    }

    #[test]
    fn morercpthosts_uses_the_same_keys() {
        let rh = RcptHosts::new(Some(&[]), Some(set(&["more.example", ".wild.example"])));
        assert_eq!(rh.allows("a@MORE.example"), Ok(true));
        assert_eq!(rh.allows("a@x.more.example"), Ok(false));
        assert_eq!(rh.allows("a@x.y.wild.example"), Ok(true));
        assert_eq!(rh.allows("a@nope.example"), Ok(false));
    }

    #[test]
    fn lookup_error_is_temporary() {
        let p = SmtpPolicy {
            rcpthosts: RcptHosts::new(Some(&lines(&["example.com"])), Some(Box::new(Broken))),
            ..policy(None, &[])
        };
        // A hit in rcpthosts never reaches the cdb.
        assert_eq!(
            p.check_rcpt(&conn(), "", "a@example.com", false),
            Ok("a@example.com".into())
        );
        let err = p
            .check_rcpt(&conn(), "", "a@other.example", false)
            .unwrap_err();
        assert_eq!((err.code, err.enhanced), (451, "4.3.0"));
    }

    fn with_recipients(text: &str, keys: &[&str]) -> SmtpPolicy {
        let rules = crate::recipients::parse("recipients", text.as_bytes()).unwrap();
        let mut keys = Some(set(keys));
        let r = Recipients::build("recipients", &rules, &mut |_| {
            Ok(keys.take().unwrap_or_else(|| Box::new(Broken)))
        })
        .unwrap();
        policy(Some(&["example.com", "open.example"]), &[]).with_recipients(r)
    }

    #[test]
    fn recipients_refuse_unknown_mailboxes_after_rcpthosts() {
        let p = with_recipients(
            "!open.example:\nusers/recipients.cdb\n",
            &[":alice@example.com"],
        );
        let c450 = ConnInfo {
            recipients_450: true,
            ..conn()
        };
        let ok = |a: &str| Ok::<String, Reply>(a.to_string());
        let cases: &[(&ConnInfo, &str, Result<String, Reply>)] = &[
            (&conn(), "alice@example.com", ok("alice@example.com")),
            (&conn(), "ALICE@Example.Com", ok("ALICE@Example.Com")),
            (&conn(), "bob@example.com", Err(REPLY_NO_MAILBOX)),
            (&c450, "bob@example.com", Err(REPLY_NO_MAILBOX_YET)),
            (&c450, "alice@example.com", ok("alice@example.com")),
            // rcpthosts first: its refusal, not the recipients one.
            (&conn(), "bob@elsewhere.example", Err(REPLY_NOT_RCPTHOST)),
            (&conn(), "a%b@example.com", Err(REPLY_ROUTED_LOCALPART)),
            (&conn(), "anyone@open.example", ok("anyone@open.example")),
            (
                &conn(),
                "postmaster@example.com",
                ok("postmaster@example.com"),
            ),
            (&conn(), "bob", ok("bob")),
        ];
        for (c, rcpt, want) in cases {
            assert_eq!(&p.check_rcpt(c, "s@x.org", rcpt, false), want, "{rcpt}");
        }
        // RELAYCLIENT skips the check, as it skips rcpthosts.
        assert_eq!(
            p.check_rcpt(&relay_conn(""), "", "bob@example.com", false),
            Ok("bob@example.com".into())
        );
        let mut out = Vec::new();
        REPLY_NO_MAILBOX.write_to(&mut out);
        assert_eq!(out, b"550 5.1.1 sorry, no mailbox here by that name\r\n");
        out.clear();
        REPLY_NO_MAILBOX_YET.write_to(&mut out);
        assert_eq!(out, b"450 4.1.1 sorry, no mailbox here by that name\r\n");
    }

    #[test]
    fn recipients_lookup_error_is_temporary() {
        // The second cdb line gets a broken lookup.
        let p = with_recipients("open.example:a.cdb\n*:b.cdb\n", &[":x@open.example"]);
        assert_eq!(
            p.check_rcpt(&conn(), "", "x@open.example", false),
            Ok("x@open.example".into())
        );
        let err = p
            .check_rcpt(&conn(), "", "a@example.com", false)
            .unwrap_err();
        assert_eq!((err.code, err.enhanced), (451, "4.3.0"));
    }

    #[test]
    fn badmailfrom_table() {
        let b = BadMailFrom::new(&lines(&["Spammer@Example.net", "@spam.example", "bare"]));
        let cases: &[(&str, bool)] = &[
            ("spammer@example.net", true),
            ("SPAMMER@EXAMPLE.NET", true),
            ("other@example.net", false),
            ("anyone@spam.example", true),
            ("anyone@SPAM.example", true),
            ("anyone@sub.spam.example", false),
            ("bare", true),
            ("", false),
            ("x@y@spam.example", true),
        ];
        for &(addr, want) in cases {
            assert_eq!(b.matches(addr), want, "{addr}");
        }
        // A line "@" would match nothing real but must not catch <>.
        assert!(!BadMailFrom::new(&lines(&["@", ""])).matches(""));
    }

    #[test]
    fn badmailfrom_reported_at_rcpt_even_for_relay_clients() {
        let p = policy(Some(&["example.com"]), &["@spam.example"]);
        assert_eq!(
            p.check_mail(&conn(), "x@spam.example"),
            Ok("x@spam.example".into())
        );
        for c in [conn(), relay_conn("")] {
            let err = p.check_rcpt(&c, "x@spam.example", "joe@example.com", false);
            assert_eq!(err, Err(REPLY_BADMAILFROM));
        }
        assert!(p.check_rcpt(&conn(), "", "joe@example.com", false).is_ok());
    }

    #[test]
    fn rcpt_table_for_untrusted_clients() {
        let p = policy(Some(&["example.com", ".example.com"]), &[]);
        let ok = |a: &str| Ok::<String, Reply>(a.to_string());
        let cases: &[(&str, bool, Result<String, Reply>)] = &[
            ("joe@example.com", false, ok("joe@example.com")),
            ("joe@Sub.Example.COM", false, ok("joe@Sub.Example.COM")),
            ("joe@example.org", false, Err(REPLY_NOT_RCPTHOST)),
            ("joe@example.com.", false, Err(REPLY_NOT_RCPTHOST)),
            (
                "joe%victim.org@example.com",
                false,
                Err(REPLY_ROUTED_LOCALPART),
            ),
            (
                "victim.org!joe@example.com",
                false,
                Err(REPLY_ROUTED_LOCALPART),
            ),
            (
                "joe@victim.org@example.com",
                false,
                Err(REPLY_ROUTED_LOCALPART),
            ),
            ("joe%victim.org", false, Err(REPLY_ROUTED_LOCALPART)),
            ("joe@example.com", true, Err(REPLY_SOURCE_ROUTE)),
            ("joe@victim.org", true, Err(REPLY_NOT_RCPTHOST)),
            ("joe", false, ok("joe")),
            ("postmaster", false, ok("postmaster")),
            ("PostMaster", false, ok("PostMaster")),
            ("postmaster@example.com", true, ok("postmaster@example.com")),
            (
                "POSTMASTER@sub.example.com",
                false,
                ok("POSTMASTER@sub.example.com"),
            ),
            ("postmaster@victim.org", false, Err(REPLY_NOT_RCPTHOST)),
        ];
        for (rcpt, routed, want) in cases {
            assert_eq!(
                &p.check_rcpt(&conn(), "s@x.org", rcpt, *routed),
                want,
                "{rcpt}"
            );
        }
    }

    #[test]
    fn relay_client_may_do_anything_and_gets_suffix() {
        let p = policy(Some(&["example.com"]), &[]);
        let c = relay_conn("@gw");
        assert_eq!(
            p.check_rcpt(&c, "", "joe@victim.org", false),
            Ok("joe@victim.org@gw".into())
        );
        assert_eq!(
            p.check_rcpt(&c, "", "a%b@example.com", true),
            Ok("a%b@example.com@gw".into())
        );
        let c = relay_conn("");
        assert_eq!(
            p.check_rcpt(&c, "", "joe@victim.org", false),
            Ok("joe@victim.org".into())
        );
    }

    #[test]
    fn without_rcpthosts_nothing_relays() {
        let p = policy(None, &[]);
        assert_eq!(
            p.check_rcpt(&conn(), "", "a@c.org", false),
            Err(REPLY_NOT_RCPTHOST)
        );
        assert_eq!(
            p.check_rcpt(&conn(), "", "Postmaster", false),
            Ok("Postmaster".into())
        );
    }

    #[test]
    fn literal_table() {
        let cases: &[(&str, Option<IpAddr>)] = &[
            ("[192.0.2.1]", Some("192.0.2.1".parse().unwrap())),
            ("[IPv6:2001:db8::1]", Some("2001:db8::1".parse().unwrap())),
            ("[ipv6:2001:DB8::1]", Some("2001:db8::1".parse().unwrap())),
            ("[2001:db8::1]", None),
            ("[IPv6:1.2.3.4]", None),
            ("[192.0.2.1", None),
            ("192.0.2.1", None),
            ("[192.0.2.1]x", None),
            ("[300.1.1.1]", None),
            ("[]", None),
        ];
        for &(d, want) in cases {
            assert_eq!(parse_address_literal(d), want, "{d}");
        }
    }

    #[test]
    fn localiphost_rewrites_our_own_literal() {
        let p = policy(Some(&["example.com"]), &[]);
        let c = conn();
        assert_eq!(
            p.rewrite_literal(&c, "box@[198.51.100.1]"),
            "box@example.com"
        );
        assert_eq!(
            p.rewrite_literal(&c, "box@[198.51.100.2]"),
            "box@[198.51.100.2]"
        );
        assert_eq!(p.rewrite_literal(&c, "[198.51.100.1]"), "[198.51.100.1]");
        assert_eq!(
            p.check_rcpt(&c, "", "box@[198.51.100.1]", false),
            Ok("box@example.com".into())
        );
        assert_eq!(
            p.check_rcpt(&c, "", "box@[198.51.100.2]", false),
            Err(REPLY_NOT_RCPTHOST)
        );
        // A dual-stack socket reports IPv4 clients as IPv4-mapped IPv6.
        let mapped = ConnInfo {
            local_ip: "::ffff:198.51.100.1".into(),
            ..conn()
        };
        assert_eq!(
            p.rewrite_literal(&mapped, "a@[198.51.100.1]"),
            "a@example.com"
        );
        let v6 = ConnInfo {
            local_ip: "2001:db8::25".into(),
            ..conn()
        };
        assert_eq!(
            p.rewrite_literal(&v6, "a@[IPv6:2001:DB8:0::25]"),
            "a@example.com"
        );
        // Other local addresses (qmail's ipme) when the host lists them.
        let mut p = p;
        p.local_ips.push("203.0.113.7".parse().unwrap());
        assert_eq!(p.rewrite_literal(&c, "a@[203.0.113.7]"), "a@example.com");
        // No localiphost (neither file nor me): no rewrite.
        p.localiphost = None;
        assert_eq!(
            p.rewrite_literal(&c, "a@[198.51.100.1]"),
            "a@[198.51.100.1]"
        );
    }

    #[test]
    fn rewrite_happens_before_relayclient_suffix_and_badmailfrom() {
        let p = policy(Some(&["example.com"]), &["bad@example.com"]);
        let c = relay_conn("X");
        assert_eq!(
            p.check_rcpt(&c, "", "a@[198.51.100.1]", false),
            Ok("a@example.comX".into())
        );
        assert_eq!(
            p.check_mail(&c, "bad@[198.51.100.1]"),
            Ok("bad@example.com".into())
        );
        assert_eq!(
            p.check_rcpt(&c, "bad@[198.51.100.1]", "a@example.com", false),
            Err(REPLY_BADMAILFROM)
        );
    }

    #[test]
    fn reply_texts_match_qmail() {
        let mut out = Vec::new();
        REPLY_NOT_RCPTHOST.write_to(&mut out);
        assert_eq!(
            out,
            b"553 5.7.1 sorry, that domain isn't in my list of allowed rcpthosts\r\n"
        );
    }

    proptest! {
        #[test]
        fn policy_never_panics(rcpt in "\\PC{0,40}", sender in "\\PC{0,20}", routed: bool) {
            let p = policy(Some(&["example.com", ".example.com"]), &["@x.org", "a@b"]);
            let _ = p.check_rcpt(&conn(), &sender, &rcpt, routed);
            let _ = p.check_mail(&conn(), &sender);
            let _ = parse_address_literal(&rcpt);
        }

        #[test]
        fn relay_client_always_appends(rcpt in "[a-z%!@.]{0,30}", suffix in "[a-z@]{0,5}") {
            let p = policy(Some(&[]), &[]);
            let got = p.check_rcpt(&relay_conn(&suffix), "", &rcpt, false);
            prop_assert_eq!(got, Ok(format!("{rcpt}{suffix}")));
        }

        #[test]
        fn case_never_matters(local in "[a-zA-Z]{1,8}", dom in "[a-zA-Z]{1,8}") {
            let rh = RcptHosts::new(Some(&[format!(".{dom}.example")]), None);
            let lower = format!("{local}@x.{dom}.example");
            prop_assert_eq!(rh.allows(&lower), rh.allows(&lower.to_uppercase()));
            prop_assert_eq!(rh.allows(&lower), Ok(true));
        }
    }
}
