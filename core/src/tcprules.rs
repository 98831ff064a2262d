//! tcpserver access rules (`tcpserver -x rules.cdb`), the pure parts:
//! compiling tcprules(1) text to cdb records, the keys tcpserver looks up
//! for a connection, and decoding a record. The host owns the cdb file.
//!
//! Records are those of ucspi-tcp 0.88 `tcprules`, so an IPv4 rules.cdb
//! made by the real tcprules works here and the other way round:
//! - a `deny` rule's value starts with the record `D\0`; `allow` writes no
//!   record of its own (an allow rule without variables is empty);
//! - each `,VAR="value"` adds `+VAR=value\0`; the quote may be any
//!   character, the value runs to its next occurrence;
//! - `1.2.3.4-7` is expanded to one key per number (any dotted position);
//! - `=host`, `=.domain`, `info@ip`, `info@=host`, `1.2.3.` prefixes and
//!   the empty address are stored as written.
//!
//! Additions, as ucspi-tcp6 (fehcom) has them, with our own encoding
//! because ucspi-tcp6's binary format differs between its releases
//! (a cdb made with it for IPv6 or CIDR rules must be recompiled):
//! - an address is separated from the instruction by the last `:` before
//!   the first `,`, so IPv6 addresses work (`::1:allow`);
//! - IPv6 addresses are stored in RFC 5952 text (`2001:db8::1`, what
//!   `TCPREMOTEIP` shows); IPv4-mapped ones as plain IPv4;
//! - CIDR `10.0.0.0/8` (also `10./8`) is stored as `_` plus the first 8
//!   address bits as `0`/`1` characters, IPv6 `2001:db8::/32` as `^` plus
//!   32 bits; lookups try every prefix length, longest first;
//! - `,VAR` without `=` unsets `VAR` (record `+VAR\0`, which ucspi-tcp's
//!   tcpserver ignores).
//!
//! Stricter than tcprules: a non-blank line without a `:` is an error
//! (tcprules skips it silently, which hides typos in access rules); lines
//! whose first non-blank character is `#` are comments; a trailing `\r`
//! is stripped.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::control::ControlError;

/// A decoded rule: allow or deny, then environment changes in order
/// (`None` = unset the variable).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    pub env: Vec<(String, Option<String>)>,
}

/// A rule record that cannot be decoded, or a failed lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError(pub String);

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rules: {}", self.0)
    }
}

impl std::error::Error for RuleError {}

/// A cdb lookup as the host provides it: the first value for a key.
pub type CdbGet<'a> = dyn FnMut(&[u8]) -> Result<Option<Vec<u8>>, RuleError> + 'a;

/// One compiled cdb record.
pub type Record = (Vec<u8>, Vec<u8>);

/// Compiles tcprules text into cdb records, in input order (cdb lookups
/// return the first record for a key, so earlier lines win, as with
/// tcprules). Errors carry the line number and an empty file name for the
/// caller to fill in.
pub fn compile(text: &str) -> Result<Vec<Record>, ControlError> {
    let mut out = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.trim_end_matches([' ', '\t', '\r']);
        if line.trim_start().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let err = |m: &str| ControlError::new("", i + 1, format!("{m}: {line}"));
        if line.contains('\0') {
            return Err(err("NUL byte in line"));
        }
        let (address, rest) = split_address(line).ok_or_else(|| err("no ':' in line"))?;
        let data = compile_data(rest).map_err(err)?;
        for key in address_keys(address).map_err(err)? {
            out.push((key, data.clone()));
        }
    }
    Ok(out)
}

/// Splits at the last `:` before the first `,` (ucspi-tcp6's rule; the
/// same as tcprules' first `:` for every address without a colon).
fn split_address(line: &str) -> Option<(&str, &str)> {
    let head = line.find(',').map_or(line, |i| &line[..i]);
    let colon = head.rfind(':')?;
    Some((&line[..colon], &line[colon + 1..]))
}

/// The instruction and variables after the address, as record bytes.
fn compile_data(rest: &str) -> Result<Vec<u8>, &'static str> {
    let mut data = Vec::new();
    let mut vars = if let Some(v) = rest.strip_prefix("deny") {
        data.extend_from_slice(b"D\0");
        v
    } else if let Some(v) = rest.strip_prefix("allow") {
        v
    } else {
        return Err("instruction is neither allow nor deny");
    };
    while !vars.is_empty() {
        let body = vars
            .strip_prefix(',')
            .ok_or("expected ',' before a variable")?;
        vars = compile_var(body, &mut data)?;
    }
    Ok(data)
}

/// One `VAR="value"` or `VAR` (after its comma); returns what follows.
fn compile_var<'a>(body: &'a str, data: &mut Vec<u8>) -> Result<&'a str, &'static str> {
    let end = body.find(['=', ',']).unwrap_or(body.len());
    let name = &body[..end];
    if name.is_empty() {
        return Err("empty variable name");
    }
    data.push(b'+');
    data.extend_from_slice(name.as_bytes());
    let Some(after) = body[end..].strip_prefix('=') else {
        data.push(0);
        return Ok(&body[end..]);
    };
    let quote = after.chars().next().ok_or("missing value")?;
    let value_start = &after[quote.len_utf8()..];
    let close = value_start.find(quote).ok_or("unterminated value")?;
    data.push(b'=');
    data.extend_from_slice(&value_start.as_bytes()[..close]);
    data.push(0);
    Ok(&value_start[close + quote.len_utf8()..])
}

/// The cdb keys one address field stands for (tcprules `doaddressdata`).
fn address_keys(address: &str) -> Result<Vec<Vec<u8>>, &'static str> {
    let literal = || Ok(vec![address.as_bytes().to_vec()]);
    if address.contains('=') {
        return literal();
    }
    let ipv6 = address.contains(':');
    let cidr = address.contains('/');
    if let Some(at) = address.find('@') {
        if !ipv6 || cidr {
            return literal();
        }
        let ip = parse_v6(&address[at + 1..]).ok_or("invalid IPv6 address")?;
        return Ok(vec![
            format!("{}@{}", &address[..at], ip_text(ip)).into_bytes()
        ]);
    }
    if cidr {
        return cidr_key(address).map(|k| vec![k]);
    }
    if ipv6 {
        let ip = parse_v6(address).ok_or("invalid IPv6 address")?;
        return Ok(vec![ip_text(ip).into_bytes()]);
    }
    if address.contains('-') {
        return range_keys(address);
    }
    literal()
}

fn parse_v6(text: &str) -> Option<IpAddr> {
    text.parse::<Ipv6Addr>()
        .ok()
        .map(|ip| IpAddr::V6(ip).to_canonical())
}

/// How rules name an address: IPv4 dotted, IPv6 in RFC 5952 form.
fn ip_text(ip: IpAddr) -> String {
    ip.to_canonical().to_string()
}

/// `addr/len` to `_bits` (IPv4) or `^bits` (IPv6).
fn cidr_key(address: &str) -> Result<Vec<u8>, &'static str> {
    let (ip, len) = address.split_once('/').ok_or("invalid CIDR")?;
    let len: u32 = parse_decimal(len).ok_or("invalid prefix length")?;
    if ip.contains(':') {
        let ip: Ipv6Addr = ip.parse().map_err(|_| "invalid IPv6 CIDR address")?;
        if !(1..=128).contains(&len) {
            return Err("invalid prefix length");
        }
        Ok(v6_bits_key(u128::from(ip), len))
    } else {
        let ip = parse_partial_v4(ip).ok_or("invalid IPv4 CIDR address")?;
        if !(1..=32).contains(&len) {
            return Err("invalid prefix length");
        }
        Ok(v4_bits_key(ip, len))
    }
}

fn v4_bits_key(ip: u32, len: u32) -> Vec<u8> {
    let bits = format!("_{ip:032b}");
    bits.as_bytes()[..=len as usize].to_vec()
}

fn v6_bits_key(ip: u128, len: u32) -> Vec<u8> {
    let bits = format!("^{ip:0128b}");
    bits.as_bytes()[..=len as usize].to_vec()
}

/// `10.0.0.0`, `10.` or `192.168` (missing octets are 0), as ucspi-tcp6
/// accepts before a `/`.
fn parse_partial_v4(text: &str) -> Option<u32> {
    let text = text.strip_suffix('.').unwrap_or(text);
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let mut octets = [0u8; 4];
    for (o, p) in octets.iter_mut().zip(&parts) {
        *o = parse_decimal(p)?;
    }
    Some(u32::from(Ipv4Addr::from(octets)))
}

/// All-digit decimal (no sign, no blanks) that fits `T`.
fn parse_decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// tcprules' range: in `1.2.3.4-7` the numbers around the `-` (each
/// running to the neighbouring `.`) give the keys `1.2.3.4` to `1.2.3.7`.
/// As in tcprules an empty bound counts as 0, the top is capped at 255
/// and a range running backwards gives no keys.
fn range_keys(address: &str) -> Result<Vec<Vec<u8>>, &'static str> {
    let dash = address.find('-').ok_or("invalid range")?;
    let left = address[..dash].rfind('.').map_or(0, |i| i + 1);
    let right = address[dash + 1..]
        .find('.')
        .map_or(address.len(), |i| dash + 1 + i);
    let bound = |s: &str| -> Result<u64, &'static str> {
        if s.is_empty() {
            return Ok(0);
        }
        parse_decimal(s).ok_or("invalid number in range")
    };
    let bot = bound(&address[left..dash])?;
    let top = bound(&address[dash + 1..right])?.min(255);
    let (head, tail) = (&address[..left], &address[right..]);
    Ok((bot..=top)
        .map(|n| format!("{head}{n}{tail}").into_bytes())
        .collect())
}

/// The keys tcpserver tries for a connection, in its order; the first one
/// present in rules.cdb decides:
/// 1. `info@ip`, then `info@=host` (when `TCPREMOTEINFO` is set);
/// 2. `ip`; 3. `=host`;
/// 4. IPv4 prefixes ending in `.` (`1.2.3.`, `1.2.`, `1.`);
/// 5. CIDR keys, longest prefix first;
/// 6. `=.domain` suffixes of the host, then `=` (when the host is known);
/// 7. the empty key.
///
/// `remote_ip` is `TCPREMOTEIP`; IPv4-mapped IPv6 counts as IPv4, as in
/// tcpserver. An address that does not parse is used as given, without
/// CIDR keys.
pub fn lookup_keys(
    remote_ip: &str,
    remote_host: Option<&str>,
    remote_info: Option<&str>,
) -> Vec<Vec<u8>> {
    let parsed = remote_ip.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    let ip = parsed.map_or_else(|| remote_ip.to_string(), ip_text);
    let mut keys: Vec<String> = Vec::new();
    if let Some(info) = remote_info {
        keys.push(format!("{info}@{ip}"));
        if let Some(host) = remote_host {
            keys.push(format!("{info}@={host}"));
        }
    }
    keys.push(ip.clone());
    if let Some(host) = remote_host {
        keys.push(format!("={host}"));
    }
    if !matches!(parsed, Some(IpAddr::V6(_))) {
        let prefixes = ip.char_indices().rev().filter(|&(_, c)| c == '.');
        keys.extend(prefixes.map(|(i, _)| ip[..=i].to_string()));
    }
    let mut keys: Vec<Vec<u8>> = keys.into_iter().map(String::into_bytes).collect();
    keys.extend(cidr_lookup_keys(parsed));
    let mut tail = Vec::new();
    if let Some(host) = remote_host {
        let suffixes = host.char_indices().filter(|&(_, c)| c == '.');
        tail.extend(suffixes.map(|(i, _)| format!("={}", &host[i..])));
        tail.push("=".to_string());
    }
    tail.push(String::new());
    keys.extend(tail.into_iter().map(String::into_bytes));
    keys
}

/// `_bits` for prefix lengths 32..=1, or `^bits` for 128..=1.
fn cidr_lookup_keys(ip: Option<IpAddr>) -> Vec<Vec<u8>> {
    match ip {
        Some(IpAddr::V4(v4)) => (1..=32)
            .rev()
            .map(|len| v4_bits_key(u32::from(v4), len))
            .collect(),
        Some(IpAddr::V6(v6)) => (1..=128)
            .rev()
            .map(|len| v6_bits_key(u128::from(v6), len))
            .collect(),
        None => Vec::new(),
    }
}

/// Decodes a rules.cdb value as tcpserver does: NUL-terminated records,
/// `D` = deny, `+VAR=value` = set, `+VAR` = unset (our addition); other
/// records and an unterminated tail are ignored, as tcpserver ignores them.
pub fn parse_value(data: &[u8]) -> Result<Rule, RuleError> {
    let mut rule = Rule {
        allow: true,
        env: Vec::new(),
    };
    let Some(last_nul) = data.iter().rposition(|&b| b == 0) else {
        return Ok(rule);
    };
    for record in data[..last_nul].split(|&b| b == 0) {
        match record.first() {
            Some(b'D') => rule.allow = false,
            Some(b'+') => rule.env.push(parse_var(&record[1..])?),
            _ => {}
        }
    }
    Ok(rule)
}

fn parse_var(record: &[u8]) -> Result<(String, Option<String>), RuleError> {
    let text = std::str::from_utf8(record)
        .map_err(|_| RuleError(format!("variable is not UTF-8: {record:?}")))?;
    Ok(match text.split_once('=') {
        Some((name, value)) => (name.to_string(), Some(value.to_string())),
        None => (text.to_string(), None),
    })
}

/// Finds the rule for a connection: tries [`lookup_keys`] in order with
/// `get` (a cdb lookup returning the first value for a key) and decodes
/// the first hit. `None` means no key matched (tcpserver then allows).
pub fn find_rule(
    get: &mut CdbGet<'_>,
    remote_ip: &str,
    remote_host: Option<&str>,
    remote_info: Option<&str>,
) -> Result<Option<Rule>, RuleError> {
    for key in lookup_keys(remote_ip, remote_host, remote_info) {
        if let Some(value) = get(&key)? {
            return parse_value(&value).map(Some);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn rec(k: &str, v: &[u8]) -> Record {
        (k.as_bytes().to_vec(), v.to_vec())
    }

    fn keys_of(text: &str) -> Vec<String> {
        compile(text)
            .unwrap()
            .into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect()
    }

    #[test]
    fn compiles_like_tcprules() {
        let text = "# comment\n\
                    127.0.0.1:allow,RELAYCLIENT=\"\"\n\
                    10.0.:allow,RELAYCLIENT=/@fix.me/,TCPLOCALHOST=\"movie.edu\"\n\
                    18.23.0.32:deny\n\
                    joe@127.0.0.1:allow\n\
                    =.example.com:deny,X=\"y\"\n\
                    \n\
                    :allow\n";
        assert_eq!(
            compile(text).unwrap(),
            vec![
                rec("127.0.0.1", b"+RELAYCLIENT=\0"),
                rec("10.0.", b"+RELAYCLIENT=@fix.me\0+TCPLOCALHOST=movie.edu\0"),
                rec("18.23.0.32", b"D\0"),
                rec("joe@127.0.0.1", b""),
                rec("=.example.com", b"D\0+X=y\0"),
                rec("", b""),
            ]
        );
    }

    #[test]
    fn values_may_hold_commas_colons_and_any_quote() {
        assert_eq!(
            compile("1.2.3.4:allow,A=\"x,y:z\",B='it\"s',C=||").unwrap(),
            vec![rec("1.2.3.4", b"+A=x,y:z\0+B=it\"s\0+C=\0")]
        );
    }

    #[test]
    fn unset_variables() {
        assert_eq!(
            compile("1.2.3.4:allow,RELAYCLIENT,X=\"1\",Y").unwrap(),
            vec![rec("1.2.3.4", b"+RELAYCLIENT\0+X=1\0+Y\0")]
        );
    }

    #[test]
    fn ranges_expand() {
        assert_eq!(
            keys_of("1.2.3.4-7:allow"),
            ["1.2.3.4", "1.2.3.5", "1.2.3.6", "1.2.3.7"]
        );
        assert_eq!(keys_of("1.2-3.:deny"), ["1.2.", "1.3."]);
        assert_eq!(keys_of("1.2.3.254-999:deny"), ["1.2.3.254", "1.2.3.255"]);
        assert_eq!(keys_of("1.2.3.9-7:deny"), Vec::<String>::new());
        assert_eq!(keys_of("1.2.3.-1:deny"), ["1.2.3.0", "1.2.3.1"]);
        // '=' and '@' addresses are never ranges.
        assert_eq!(keys_of("=a-b.example:deny"), ["=a-b.example"]);
        assert_eq!(keys_of("joe@1.2.3.4-5:deny"), ["joe@1.2.3.4-5"]);
        assert!(compile("foo-bar:deny").is_err());
    }

    #[test]
    fn ipv6_and_cidr() {
        assert_eq!(keys_of("2001:DB8:0:0::1:allow"), ["2001:db8::1"]);
        assert_eq!(keys_of("::1:deny"), ["::1"]);
        assert_eq!(keys_of("::ffff:1.2.3.4:deny"), ["1.2.3.4"]);
        assert_eq!(keys_of("joe@2001:db8::0001:deny"), ["joe@2001:db8::1"]);
        assert_eq!(keys_of("10.0.0.0/8:deny"), ["_00001010"]);
        assert_eq!(keys_of("10./8:deny"), ["_00001010"]);
        assert_eq!(keys_of("192.168/16:deny"), ["_1100000010101000"]);
        assert_eq!(keys_of("2001:db8::/16:deny"), ["^0010000000000001"]);
        for bad in [
            "1.2.3.0/0:deny",
            "1.2.3.0/33:deny",
            "::/129:deny",
            "1.2.3.256/8:deny",
            "2001:db8::g:deny",
        ] {
            assert!(compile(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn syntax_errors_name_the_line() {
        for (text, line) in [
            ("1.2.3.4:allow\nnocolon\n", 2),
            ("1.2.3.4:permit", 1),
            ("\n\n1.2.3.4:allowx", 3),
            ("1.2.3.4:allow,X", 0),
            ("1.2.3.4:allow,X=", 1),
            ("1.2.3.4:allow,X=\"open", 1),
            ("1.2.3.4:allow,X=\"a\"junk", 1),
            ("1.2.3.4:allow,=\"a\"", 1),
        ] {
            match compile(text) {
                Ok(_) => assert_eq!(line, 0, "{text:?} compiled"),
                Err(e) => assert_eq!(e.line, line, "{text:?}: {e}"),
            }
        }
    }

    #[test]
    fn comments_and_whitespace() {
        assert_eq!(
            keys_of("  # indented comment\n\t\n1.2.3.4:allow  \r\n"),
            ["1.2.3.4"]
        );
    }

    #[test]
    fn lookup_order_ipv4() {
        let keys: Vec<String> = lookup_keys("1.2.3.4", Some("mail.example.com"), Some("joe"))
            .into_iter()
            .map(|k| String::from_utf8(k).unwrap())
            .filter(|k| !k.starts_with('_'))
            .collect();
        assert_eq!(
            keys,
            [
                "joe@1.2.3.4",
                "joe@=mail.example.com",
                "1.2.3.4",
                "=mail.example.com",
                "1.2.3.",
                "1.2.",
                "1.",
                "=.example.com",
                "=.com",
                "=",
                "",
            ]
        );
        let plain = lookup_keys("1.2.3.4", None, None);
        assert_eq!(plain.len(), 1 + 3 + 32 + 1);
        assert_eq!(plain[4], b"_00000001000000100000001100000100");
        assert_eq!(plain[35], b"_0");
        assert_eq!(plain[36], b"");
    }

    #[test]
    fn lookup_ipv6_and_mapped() {
        let keys = lookup_keys("2001:DB8::0:1", None, Some("u"));
        assert_eq!(keys[0], b"u@2001:db8::1");
        assert_eq!(keys[1], b"2001:db8::1");
        assert_eq!(keys[2].len(), 129);
        assert_eq!(keys.len(), 2 + 128 + 1);
        let mapped = lookup_keys("::ffff:10.1.2.3", None, None);
        assert_eq!(mapped[0], b"10.1.2.3");
        assert_eq!(mapped[1], b"10.1.2.");
    }

    #[test]
    fn unparsable_ip_used_as_given() {
        assert_eq!(
            lookup_keys("weird.ip", None, None),
            vec![b"weird.ip".to_vec(), b"weird.".to_vec(), b"".to_vec()]
        );
    }

    fn first_match(text: &str, ip: &str, host: Option<&str>, info: Option<&str>) -> Option<Rule> {
        let mut db: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for (k, v) in compile(text).unwrap() {
            db.entry(k).or_insert(v);
        }
        find_rule(&mut |k| Ok(db.get(k).cloned()), ip, host, info).unwrap()
    }

    #[test]
    fn man_page_examples() {
        let text = "joe@127.0.0.1:allow,I=\"first\"\n18.23.0.32:allow,I=\"second\"\n\
                    :allow,I=\"third\"\n127.:allow,I=\"fourth\"\n";
        let which = |ip, info| {
            first_match(text, ip, None, info).unwrap().env[0]
                .1
                .clone()
                .unwrap()
        };
        assert_eq!(which("10.119.75.38", None), "third");
        assert_eq!(which("18.23.0.32", None), "second");
        assert_eq!(which("127.0.0.1", Some("bill")), "fourth");
        assert_eq!(which("127.0.0.1", Some("joe")), "first");
    }

    #[test]
    fn cidr_rules_match_longest_prefix_first() {
        let text = "10.0.0.0/8:deny\n10.1.0.0/16:allow,RELAYCLIENT=\"\"\n2001:db8::/32:deny\n";
        let r = first_match(text, "10.1.2.3", None, None).unwrap();
        assert_eq!(
            r,
            Rule {
                allow: true,
                env: vec![("RELAYCLIENT".into(), Some(String::new()))]
            }
        );
        assert!(!first_match(text, "10.2.2.3", None, None).unwrap().allow);
        assert!(
            !first_match(text, "2001:db8:1::5", None, None)
                .unwrap()
                .allow
        );
        assert_eq!(first_match(text, "2001:db9::5", None, None), None);
        assert!(
            !first_match(text, "::ffff:10.9.9.9", None, None)
                .unwrap()
                .allow
        );
    }

    #[test]
    fn parse_values() {
        assert_eq!(
            parse_value(b"").unwrap(),
            Rule {
                allow: true,
                env: vec![]
            }
        );
        assert_eq!(
            parse_value(b"D\0+A=1\0+B\0+C=x=y\0+D=tail-without-nul").unwrap(),
            Rule {
                allow: false,
                env: vec![
                    ("A".into(), Some("1".into())),
                    ("B".into(), None),
                    ("C".into(), Some("x=y".into())),
                ],
            }
        );
        assert!(parse_value(b"+A=\xff\0").is_err());
        assert_eq!(
            parse_value(b"?junk\0\0").unwrap(),
            Rule {
                allow: true,
                env: vec![]
            }
        );
    }

    proptest! {
        #[test]
        fn compile_never_panics(text in "\\PC{0,80}") {
            let _ = compile(&text);
        }

        #[test]
        fn compile_never_panics_on_rule_like_text(text in "[0-9a-f.:/@=,\"'-]{0,30}:(allow|deny)[,A-Z=\"'a-z:]{0,20}") {
            let _ = compile(&text);
        }

        #[test]
        fn parse_value_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_value(&data);
        }

        #[test]
        fn lookup_keys_never_panic(ip in "\\PC{0,40}", host in proptest::option::of("\\PC{0,20}"),
                                   info in proptest::option::of("\\PC{0,10}")) {
            let keys = lookup_keys(&ip, host.as_deref(), info.as_deref());
            prop_assert_eq!(keys.last().map(Vec::len), Some(0));
        }

        #[test]
        fn env_roundtrips(name in "[A-Z_]{1,10}", value in "[ -~]{0,20}") {
            let quote = ['"', '\'', '/', '|', '#'].into_iter().find(|q| !value.contains(*q));
            prop_assume!(quote.is_some());
            let q = quote.unwrap_or('"');
            let recs = compile(&format!("1.2.3.4:allow,{name}={q}{value}{q}")).unwrap();
            let rule = parse_value(&recs[0].1).unwrap();
            prop_assert_eq!(rule.env, vec![(name, Some(value))]);
        }
    }
}
