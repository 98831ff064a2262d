//! SMTP replies: a code, an RFC 3463 enhanced status code and a text.

use std::borrow::Cow;
use std::fmt;

/// One SMTP reply. A text with `\n` in it is sent as a multi-line reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// RFC 3463 enhanced status code such as `"5.7.1"`; empty for none
    /// (the greeting and the HELO/EHLO replies carry none, RFC 2034 section 3).
    pub enhanced: &'static str,
    pub text: Cow<'static, str>,
}

impl Reply {
    pub const fn new(code: u16, enhanced: &'static str, text: &'static str) -> Self {
        Reply {
            code,
            enhanced,
            text: Cow::Borrowed(text),
        }
    }

    pub fn owned(code: u16, enhanced: &'static str, text: impl Into<String>) -> Self {
        Reply {
            code,
            enhanced,
            text: Cow::Owned(text.into()),
        }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// 421 means the server is closing the connection (RFC 5321 section 3.8).
    pub fn closes(&self) -> bool {
        self.code == 421
    }

    /// Appends the reply in wire form, CRLF-terminated, to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut lines = self.text.split('\n').peekable();
        loop {
            let line = lines.next().unwrap_or("");
            let last = lines.peek().is_none();
            out.extend_from_slice(itoa3(self.code).as_bytes());
            out.push(if last { b' ' } else { b'-' });
            if !self.enhanced.is_empty() {
                out.extend_from_slice(self.enhanced.as_bytes());
                out.push(b' ');
            }
            // Never let a text smuggle a line ending or a control byte onto the wire.
            out.extend(
                line.bytes()
                    .map(|b| if b < 0x20 || b == 0x7f { b'?' } else { b }),
            );
            out.extend_from_slice(b"\r\n");
            if last {
                break;
            }
        }
    }
}

fn itoa3(code: u16) -> String {
    format!("{:03}", code.min(999))
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        self.write_to(&mut out);
        f.write_str(String::from_utf8_lossy(&out).trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(r: &Reply) -> String {
        let mut out = Vec::new();
        r.write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn single_line_with_enhanced_code() {
        assert_eq!(wire(&Reply::new(250, "2.1.0", "ok")), "250 2.1.0 ok\r\n");
    }

    #[test]
    fn multi_line_and_no_enhanced_code() {
        assert_eq!(
            wire(&Reply::new(250, "", "a\nb\nc")),
            "250-a\r\n250-b\r\n250 c\r\n"
        );
    }

    #[test]
    fn control_bytes_are_masked() {
        assert_eq!(
            wire(&Reply::owned(550, "5.1.1", "x\ry")),
            "550 5.1.1 x?y\r\n"
        );
    }
}
