//! The server's replies, assembled from bytes however they are split:
//! `ddd-text` lines until a `ddd text` (or bare `ddd`) line, RFC 5321
//! section 4.2.1. Memory is bounded whatever the server sends: a line
//! keeps at most [`MAX_LINE`] bytes, a reply's text at most
//! [`MAX_TEXT`]; the rest is read and dropped.

/// Bytes of one reply line kept (RFC 5321 allows 512; servers exceed it).
pub const MAX_LINE: usize = 2048;
/// Bytes of one reply's text kept for the report.
pub const MAX_TEXT: usize = 4096;

/// One complete reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerReply {
    /// The code of the last line; 0 when a line had no three-digit code.
    pub code: u16,
    /// Every line as received without its CR, each ending in `\n`, as
    /// qmail-remote quotes it after "Remote host said: ".
    pub text: String,
    /// The lines after the first, without their code: EHLO's keywords.
    pub rest: Vec<String>,
}

impl ServerReply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// A 5xx. A malformed reply (code 0) counts as temporary: garbage
    /// from a server never bounces a message.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
}

#[derive(Debug, Default)]
pub struct ReplyReader {
    line: Vec<u8>,
    /// The current line went over [`MAX_LINE`]; drop the rest of it.
    overlong: bool,
    text: String,
    rest: Vec<String>,
    lines: usize,
    /// A line of this reply had no code: the reply is malformed.
    malformed: bool,
}

impl ReplyReader {
    /// Consumes `input`, returning the replies it completes, in order.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<ServerReply>) {
        let mut rest = input;
        while !rest.is_empty() {
            let (chunk, line_ends) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            rest = &rest[chunk.len() + usize::from(line_ends)..];
            let room = MAX_LINE.saturating_sub(self.line.len());
            if chunk.len() > room {
                self.overlong = true;
            }
            self.line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if line_ends {
                if let Some(reply) = self.end_line() {
                    out.push(reply);
                }
            }
        }
    }

    /// Bytes held for an unfinished line (bounded by [`MAX_LINE`]).
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.line.len()
    }

    fn end_line(&mut self) -> Option<ServerReply> {
        let mut line = std::mem::take(&mut self.line);
        self.overlong = false;
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let code = parse_code(&line);
        if code.is_none() {
            self.malformed = true;
        }
        let more = line.get(3) == Some(&b'-');
        // NUL is shown as `?`, as qmail-remote does, so the report stays text.
        let text: String = String::from_utf8_lossy(&line).replace('\0', "?");
        if self.lines > 0 {
            let keyword = text.get(4..).unwrap_or("").to_string();
            if self.rest.len() < 64 {
                self.rest.push(keyword);
            }
        }
        self.lines += 1;
        if self.text.len() + text.len() < MAX_TEXT {
            self.text.push_str(&text);
            self.text.push('\n');
        }
        if more && code.is_some() {
            return None;
        }
        let reply = ServerReply {
            code: if self.malformed { 0 } else { code.unwrap_or(0) },
            text: std::mem::take(&mut self.text),
            rest: std::mem::take(&mut self.rest),
        };
        self.lines = 0;
        self.malformed = false;
        Some(reply)
    }
}

fn parse_code(line: &[u8]) -> Option<u16> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) || !matches!(line.get(3), None | Some(b' ' | b'-')) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u16::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &[u8]) -> Vec<ServerReply> {
        let mut r = ReplyReader::default();
        let mut out = Vec::new();
        r.feed(input, &mut out);
        out
    }

    #[test]
    fn multi_line_replies_end_at_the_space() {
        let got = read(b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n354 go\r\n");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].code, 250);
        assert_eq!(
            got[0].text,
            "250-mx.example\n250-PIPELINING\n250 SIZE 1000\n"
        );
        assert_eq!(got[0].rest, ["PIPELINING", "SIZE 1000"]);
        assert_eq!((got[1].code, got[1].text.as_str()), (354, "354 go\n"));
    }

    #[test]
    fn bare_codes_lf_endings_and_garbage() {
        let got = read(b"220\n421-x\nbogus\n");
        assert_eq!(got[0].code, 220);
        // A line without a code ends the reply, which is then malformed.
        assert_eq!(got[1].code, 0);
        assert!(!got[1].is_positive() && !got[1].is_permanent());
    }

    #[test]
    fn memory_stays_bounded() {
        let mut r = ReplyReader::default();
        let mut out = Vec::new();
        let mut line = b"250-".to_vec();
        line.extend(std::iter::repeat_n(b'x', 10 * MAX_LINE));
        for _ in 0..100 {
            r.feed(&line, &mut out);
            assert!(r.buffered() <= MAX_LINE);
            r.feed(b"\r\n", &mut out);
        }
        r.feed(b"250 end\r\n", &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].text.len() <= MAX_TEXT);
        assert!(out[0].rest.len() <= 64);
    }
}
