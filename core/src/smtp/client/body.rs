//! A message as the queue stores it (LF line ends) into DATA's wire form
//! (RFC 5321 section 4.5.2): CRLF line ends, and a line that starts with
//! `.` gets another. A bare CR passes through, as qmail-remote sends it.

#[derive(Debug)]
pub struct BodyEncoder {
    at_line_start: bool,
}

impl Default for BodyEncoder {
    fn default() -> Self {
        BodyEncoder {
            at_line_start: true,
        }
    }
}

impl BodyEncoder {
    /// Appends `chunk`, encoded, to `out`.
    pub fn encode(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.at_line_start && rest[0] == b'.' {
                out.push(b'.');
            }
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    out.extend_from_slice(&rest[..i]);
                    out.extend_from_slice(b"\r\n");
                    rest = &rest[i + 1..];
                    self.at_line_start = true;
                }
                None => {
                    out.extend_from_slice(rest);
                    self.at_line_start = false;
                    return;
                }
            }
        }
    }

    /// Whether everything so far ended with a whole line (an empty
    /// message does): only then can the message end with `.`.
    pub fn ends_a_line(&self) -> bool {
        self.at_line_start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode_in(chunks: &[&[u8]]) -> Vec<u8> {
        let mut e = BodyEncoder::default();
        let mut out = Vec::new();
        for c in chunks {
            e.encode(c, &mut out);
        }
        out
    }

    #[test]
    fn dots_doubled_and_lines_crlf() {
        assert_eq!(
            encode_in(&[b".a\n..b\nc.\n.\n"]),
            b"..a\r\n...b\r\nc.\r\n..\r\n"
        );
        assert_eq!(encode_in(&[b"a\r\n", b".", b"b\n"]), b"a\r\r\n..b\r\n");
    }

    /// Reads the wire form back, as a server would (RFC 5321 4.5.2).
    fn decode(wire: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for line in wire.split_inclusive(|&b| b == b'\n') {
            let line = line.strip_prefix(b".").unwrap_or(line);
            match line.strip_suffix(b"\r\n") {
                Some(l) => {
                    out.extend_from_slice(l);
                    out.push(b'\n');
                }
                None => out.extend_from_slice(line),
            }
        }
        out
    }

    proptest! {
        #[test]
        fn any_split_encodes_alike_and_round_trips(
            body in proptest::collection::vec(prop_oneof![Just(b'.'), Just(b'\n'), Just(b'\r'), any::<u8>()], 0..300),
            cut in any::<prop::sample::Index>(),
        ) {
            let at = cut.index(body.len() + 1);
            let whole = encode_in(&[&body]);
            prop_assert_eq!(&encode_in(&[&body[..at], &body[at..]]), &whole);
            if body.last().is_none_or(|&b| b == b'\n') {
                prop_assert_eq!(decode(&whole), body);
            }
        }
    }
}
