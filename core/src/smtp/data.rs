//! The DATA phase's decoder: dot-unstuffing, `CRLF . CRLF` as the only end
//! of a message, CRLF stored as LF (the qmail queue's form), and no bare CR
//! or bare LF accepted anywhere.
//!
//! Refusing every bare line ending is what makes SMTP smuggling
//! (CVE-2023-51764/51765/51766) impossible here: a message can only end at
//! `CRLF . CRLF`, and any other ending a downstream server might honour,
//! such as `LF . LF` or `CR . CR`, aborts the session instead of being
//! stored. A NUL is refused the same way, since a server that drops NULs
//! would read `CRLF NUL . CRLF` as an end. The decoder works byte by byte, so it gives the same result
//! however the input is split into reads.

/// How the message was cut short, decided while the body still streams in;
/// the client is told when it finishes sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFailure {
    /// More than `databytes` bytes (as stored).
    TooBig,
    /// More `Received:`/`Delivered-To:` header lines than the hop limit.
    Looping,
}

/// Where decoding stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// All input used; the message goes on.
    NeedMore,
    /// `CRLF . CRLF` seen; the byte count says where the next command starts.
    End,
    /// A CR not followed by LF, an LF not preceded by CR, or a NUL (which
    /// some servers drop, turning `CRLF NUL . CRLF` into an end of data).
    BareLineEnding,
}

/// Header lines that count as a hop, as qmail-smtpd counts them.
const HOP_HEADERS: [&[u8]; 2] = [b"received:", b"delivered-to:"];
const PREFIX: usize = 13; // the length of "delivered-to:"

#[derive(Debug)]
pub struct BodyDecoder {
    limit: u64,
    max_hops: usize,
    size: u64,
    hops: usize,
    start_of_line: bool,
    /// The line so far is a single (removed) leading dot.
    dot_line: bool,
    cr: bool,
    in_header: bool,
    line_len: usize,
    prefix: [u8; PREFIX],
    failure: Option<BodyFailure>,
}

impl BodyDecoder {
    /// `limit` is databytes (0 for none).
    pub fn new(limit: u64, max_hops: usize) -> Self {
        BodyDecoder {
            limit,
            max_hops,
            size: 0,
            hops: 0,
            start_of_line: true,
            dot_line: false,
            cr: false,
            in_header: true,
            line_len: 0,
            prefix: [0; PREFIX],
            failure: None,
        }
    }

    pub fn failure(&self) -> Option<BodyFailure> {
        self.failure
    }

    /// Decodes `input`, appending the message bytes to `out` (nothing once
    /// the message has failed). Returns how many input bytes were used.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Decoded) {
        for (i, &b) in input.iter().enumerate() {
            if self.cr {
                self.cr = false;
                if b != b'\n' {
                    return (i, Decoded::BareLineEnding);
                }
                if self.dot_line {
                    return (i + 1, Decoded::End);
                }
                self.end_line(out);
                continue;
            }
            match b {
                b'\r' => self.cr = true,
                b'\n' | 0 => return (i, Decoded::BareLineEnding),
                b'.' if self.start_of_line => {
                    self.start_of_line = false;
                    self.dot_line = true;
                }
                _ => {
                    self.start_of_line = false;
                    self.dot_line = false;
                    self.put(b, out);
                }
            }
        }
        (input.len(), Decoded::NeedMore)
    }

    fn put(&mut self, b: u8, out: &mut Vec<u8>) {
        if self.in_header && self.line_len < PREFIX {
            self.prefix[self.line_len] = b.to_ascii_lowercase();
        }
        self.line_len = self.line_len.saturating_add(1);
        self.store(b, out);
    }

    fn store(&mut self, b: u8, out: &mut Vec<u8>) {
        self.size += 1;
        if self.limit > 0 && self.size > self.limit {
            self.fail(BodyFailure::TooBig);
        }
        if self.failure.is_none() {
            out.push(b);
        }
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        if self.in_header {
            if self.line_len == 0 {
                self.in_header = false;
            } else if self.is_hop_line() {
                self.hops += 1;
                if self.hops > self.max_hops {
                    self.fail(BodyFailure::Looping);
                }
            }
        }
        self.store(b'\n', out);
        self.line_len = 0;
        self.start_of_line = true;
        self.dot_line = false;
    }

    fn is_hop_line(&self) -> bool {
        let seen = &self.prefix[..self.line_len.min(PREFIX)];
        HOP_HEADERS.iter().any(|h| seen.starts_with(h))
    }

    fn fail(&mut self, why: BodyFailure) {
        self.failure.get_or_insert(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8], limit: u64) -> (Vec<u8>, usize, Decoded, Option<BodyFailure>) {
        let mut d = BodyDecoder::new(limit, 100);
        let mut out = Vec::new();
        let (n, how) = d.decode(input, &mut out);
        (out, n, how, d.failure())
    }

    #[test]
    fn crlf_becomes_lf_and_the_dot_line_ends() {
        let (out, n, how, _) = run(b"Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n", 0);
        assert_eq!(out, b"Subject: x\n\nhi\n");
        assert_eq!(how, Decoded::End);
        assert_eq!(n, 21);
    }

    #[test]
    fn empty_message() {
        let (out, n, how, _) = run(b".\r\n", 0);
        assert!(out.is_empty());
        assert_eq!((n, how), (3, Decoded::End));
    }

    #[test]
    fn leading_dots_are_unstuffed() {
        let (out, _, how, _) = run(b"..\r\n...x\r\n.y\r\n.\r\n", 0);
        assert_eq!(out, b".\n..x\ny\n");
        assert_eq!(how, Decoded::End);
    }

    #[test]
    fn every_smuggling_ending_is_refused() {
        for evil in [
            &b"a\n.\nMAIL"[..],
            b"a\r\n.\nMAIL",
            b"a\n.\r\nMAIL",
            b"a\r.\rMAIL",
            b"a\r\n.\rMAIL",
            b"a\r\n.\r\r\n",
            b"a\rb\r\n.\r\n",
            b"a\nb\r\n.\r\n",
            b"a\r\n\0.\r\nMAIL",
        ] {
            let (_, _, how, _) = run(evil, 0);
            assert_eq!(
                how,
                Decoded::BareLineEnding,
                "{:?}",
                String::from_utf8_lossy(evil)
            );
        }
    }

    #[test]
    fn size_limit_counts_stored_bytes_and_keeps_reading() {
        let (out, _, how, fail) = run(b"12345\r\n.\r\n", 6);
        assert_eq!((how, fail), (Decoded::End, None));
        assert_eq!(out, b"12345\n");
        let (_, _, how, fail) = run(b"123456\r\n.\r\n", 6);
        assert_eq!((how, fail), (Decoded::End, Some(BodyFailure::TooBig)));
    }

    #[test]
    fn hop_count_only_in_the_header() {
        let many = "Received: x\r\n".repeat(101);
        let (_, _, _, fail) = run(format!("{many}\r\n.\r\n").as_bytes(), 0);
        assert_eq!(fail, Some(BodyFailure::Looping));
        let (_, _, _, fail) = run(format!("X: y\r\n\r\n{many}.\r\n").as_bytes(), 0);
        assert_eq!(fail, None);
        let hundred = "DELIVERED-TO: x\r\n".repeat(100);
        let (_, _, _, fail) = run(format!("{hundred}\r\n.\r\n").as_bytes(), 0);
        assert_eq!(fail, None);
    }

    proptest::proptest! {
        /// Any split of the input gives the same output and ending.
        #[test]
        fn split_invariance(input in proptest::collection::vec(proptest::sample::select(b"a.\r\nR:".to_vec()), 0..80), cut in 0usize..80) {
            let whole = run(&input, 0);
            let cut = cut.min(input.len());
            let mut d = BodyDecoder::new(0, 100);
            let mut out = Vec::new();
            let (n1, how1) = d.decode(&input[..cut], &mut out);
            let split = if how1 == Decoded::NeedMore {
                let (n2, how2) = d.decode(&input[cut..], &mut out);
                (out, cut + n2, how2)
            } else {
                (out, n1, how1)
            };
            proptest::prop_assert_eq!((whole.0, whole.1, whole.2), split);
        }

        /// Dot-stuffing any body of CRLF lines and decoding it gives the body back.
        #[test]
        fn dot_stuffing_round_trips(lines in proptest::collection::vec("[ -~]{0,20}", 0..20)) {
            let mut wire = Vec::new();
            let mut expected = Vec::new();
            for line in &lines {
                if line.starts_with('.') {
                    wire.push(b'.');
                }
                wire.extend_from_slice(line.as_bytes());
                wire.extend_from_slice(b"\r\n");
                expected.extend_from_slice(line.as_bytes());
                expected.push(b'\n');
            }
            wire.extend_from_slice(b".\r\n");
            let (out, n, how, _) = run(&wire, 0);
            proptest::prop_assert_eq!(how, Decoded::End);
            proptest::prop_assert_eq!(n, wire.len());
            proptest::prop_assert_eq!(out, expected);
        }
    }
}
