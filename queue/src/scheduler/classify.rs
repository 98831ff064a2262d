//! Where a recipient goes: qmail-send's `rewrite()`.
//!
//! Order, as qmail: an address without `@` gets `@envnoathost`; the percent
//! hack turns `u%d@h` into `u@d` while `h` is listed in `percenthack`; a
//! domain in `locals` is local as is; otherwise `virtualdomains` is tried
//! with the whole address, then the domain, then each `.suffix` walking up,
//! then the empty key, and the first match with a non-empty prepend makes it
//! local as `prepend-address` (an empty prepend is an exception: remote).
//! Everything else is remote. Keys compare ASCII case-insensitively, as
//! qmail's `constmap` does.

use std::collections::{HashMap, HashSet};

use sqmail_core::control::ControlError;

use super::Channel;

/// `control/virtualdomains`: lowercased key → prepend (empty = exception).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VirtualDomains {
    map: HashMap<Vec<u8>, Vec<u8>>,
}

impl VirtualDomains {
    /// Parses the file's bytes: `key:prepend` lines, blank and `#` lines
    /// skipped, trailing whitespace stripped. A line without `:` is an error
    /// naming the file and line (qmail would silently ignore it). A later
    /// duplicate key wins, as in qmail's `constmap`.
    pub fn parse(file: &str, contents: &[u8]) -> Result<Self, ControlError> {
        let mut map = HashMap::new();
        for (i, raw) in contents.split(|&b| b == b'\n').enumerate() {
            let end = raw
                .iter()
                .rposition(|b| !matches!(b, b' ' | b'\t' | b'\r'))
                .map_or(0, |p| p + 1);
            let line = &raw[..end];
            if line.is_empty() || line[0] == b'#' {
                continue;
            }
            if line.contains(&0) {
                return Err(ControlError::new(file, i + 1, "NUL byte in line"));
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Err(ControlError::new(
                    file,
                    i + 1,
                    "no ':' (expected domain:prepend)",
                ));
            };
            map.insert(
                line[..colon].to_ascii_lowercase(),
                line[colon + 1..].to_vec(),
            );
        }
        Ok(VirtualDomains { map })
    }

    fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(&key.to_ascii_lowercase()).map(Vec::as_slice)
    }
}

/// The rewriting rules, built from `locals`, `percenthack`,
/// `virtualdomains` and `envnoathost`.
#[derive(Clone, Debug, Default)]
pub struct Rewriter {
    locals: HashSet<Vec<u8>>,
    percenthack: HashSet<Vec<u8>>,
    virtualdomains: VirtualDomains,
    envnoathost: Vec<u8>,
}

impl Rewriter {
    pub fn new(
        locals: &[String],
        percenthack: &[String],
        virtualdomains: VirtualDomains,
        envnoathost: &str,
    ) -> Self {
        let lower = |v: &[String]| {
            v.iter()
                .map(|s| s.as_bytes().to_ascii_lowercase())
                .collect()
        };
        Rewriter {
            locals: lower(locals),
            percenthack: lower(percenthack),
            virtualdomains,
            envnoathost: envnoathost.as_bytes().to_vec(),
        }
    }

    /// The channel and the address written to `local/N` or `remote/N`.
    pub fn classify(&self, rcpt: &[u8]) -> (Channel, Vec<u8>) {
        let mut addr = rcpt.to_vec();
        let mut at = match addr.iter().rposition(|&b| b == b'@') {
            Some(at) => at,
            None => {
                let at = addr.len();
                addr.push(b'@');
                addr.extend_from_slice(&self.envnoathost);
                at
            }
        };
        while self
            .percenthack
            .contains(&addr[at + 1..].to_ascii_lowercase())
        {
            let Some(pct) = addr[..at].iter().rposition(|&b| b == b'%') else {
                break;
            };
            addr.truncate(at);
            addr[pct] = b'@';
            at = pct;
        }
        if self.locals.contains(&addr[at + 1..].to_ascii_lowercase()) {
            return (Channel::Local, addr);
        }
        for i in 0..=addr.len() {
            let candidate = i == 0 || i == at + 1 || i == addr.len() || (i > at && addr[i] == b'.');
            if !candidate {
                continue;
            }
            if let Some(prepend) = self.virtualdomains.get(&addr[i..]) {
                if prepend.is_empty() {
                    break;
                }
                let mut out = prepend.to_vec();
                out.push(b'-');
                out.extend_from_slice(&addr);
                return (Channel::Local, out);
            }
        }
        (Channel::Remote, addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(vd: &str) -> Rewriter {
        Rewriter::new(
            &["example.com".into(), "LocalHost".into()],
            &["relay.example".into()],
            VirtualDomains::parse("virtualdomains", vd.as_bytes()).unwrap(),
            "example.com",
        )
    }

    fn c(r: &Rewriter, a: &str) -> (Channel, String) {
        let (ch, out) = r.classify(a.as_bytes());
        (ch, String::from_utf8(out).unwrap())
    }

    #[test]
    fn locals_exact_case_insensitive() {
        let r = rw("");
        assert_eq!(
            c(&r, "Joe@EXAMPLE.com"),
            (Channel::Local, "Joe@EXAMPLE.com".into())
        );
        assert_eq!(
            c(&r, "joe@localhost"),
            (Channel::Local, "joe@localhost".into())
        );
        assert_eq!(
            c(&r, "joe@sub.example.com"),
            (Channel::Remote, "joe@sub.example.com".into())
        );
    }

    #[test]
    fn envnoathost() {
        let r = rw("");
        assert_eq!(c(&r, "joe"), (Channel::Local, "joe@example.com".into()));
    }

    #[test]
    fn percenthack_only_listed_and_repeated() {
        let r = rw("");
        assert_eq!(
            c(&r, "a%b%relay.example@relay.example"),
            (Channel::Remote, "a@b".into())
        );
        assert_eq!(
            c(&r, "joe%example.com@relay.example"),
            (Channel::Local, "joe@example.com".into())
        );
        assert_eq!(
            c(&r, "joe%example.com@other.example"),
            (Channel::Remote, "joe%example.com@other.example".into())
        );
        // Repeated: each step strips one hop while the domain stays listed.
        let r2 = Rewriter::new(
            &[],
            &["a".into(), "b".into()],
            VirtualDomains::default(),
            "h",
        );
        assert_eq!(c(&r2, "u%x%b@a"), (Channel::Remote, "u@x".into()));
    }

    #[test]
    fn virtualdomains_order_and_exceptions() {
        let vd = "# comment\nvirt.example:joe\nfred@virt.example:fred-special\n.virt.example:sub\nnot.sub.virt.example:\nBIG.example:big\n";
        let r = rw(vd);
        assert_eq!(
            c(&r, "x@virt.example"),
            (Channel::Local, "joe-x@virt.example".into())
        );
        assert_eq!(
            c(&r, "fred@virt.example"),
            (Channel::Local, "fred-special-fred@virt.example".into())
        );
        assert_eq!(
            c(&r, "x@a.b.virt.example"),
            (Channel::Local, "sub-x@a.b.virt.example".into())
        );
        assert_eq!(
            c(&r, "x@not.sub.virt.example"),
            (Channel::Remote, "x@not.sub.virt.example".into())
        );
        assert_eq!(
            c(&r, "x@big.EXAMPLE"),
            (Channel::Local, "big-x@big.EXAMPLE".into())
        );
        assert_eq!(
            c(&r, "x@elsewhere"),
            (Channel::Remote, "x@elsewhere".into())
        );
        // locals win over virtualdomains.
        let r = rw("example.com:nope\n");
        assert_eq!(
            c(&r, "x@example.com"),
            (Channel::Local, "x@example.com".into())
        );
        // The empty key catches everything not matched earlier.
        let r = rw(":alias-catch\nout.example:\n");
        assert_eq!(c(&r, "x@any"), (Channel::Local, "alias-catch-x@any".into()));
        assert_eq!(
            c(&r, "x@out.example"),
            (Channel::Remote, "x@out.example".into())
        );
    }

    #[test]
    fn virtualdomains_errors_name_the_line() {
        let e = VirtualDomains::parse("virtualdomains", b"a:b\n\nbroken\n").unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("virtualdomains", 3));
    }
}
