//! The envelope: qmail-queue's fd 1 format and the `intd/`/`todo/` file.
//!
//! fd 1 (qmail-queue(8)): `F<sender>\0` then `T<rcpt>\0` per recipient, then
//! one more `\0`. The queue file is the same list without the final `\0`,
//! preceded by `u<uid>\0p<pid>\0`; qmail-send reads it from `todo/N`.

use std::io::{self, BufRead, BufReader, Read};

use crate::qq::QqError;

/// qmail-queue's `ADDR`: an address must be shorter than this (at most
/// 1002 bytes), or the injection fails with exit 11.
pub const ADDR_LIMIT: usize = 1003;

/// The envelope sender and recipients of one message, as raw bytes (qmail
/// does not interpret them; `<>` is the empty sender).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The envelope sender; empty for bounces.
    pub sender: Vec<u8>,
    /// The envelope recipients in order.
    pub recipients: Vec<Vec<u8>>,
}

/// What an `intd/N` or `todo/N` file says besides the envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueEnvelope {
    /// The uid that injected the message (`u`).
    pub uid: u32,
    /// The pid of the injecting qmail-queue (`p`, logged as `qp`).
    pub pid: u32,
    /// Sender and recipients.
    pub envelope: Envelope,
}

impl Envelope {
    /// An envelope from a sender and recipients.
    pub fn new(sender: impl Into<Vec<u8>>, recipients: Vec<Vec<u8>>) -> Self {
        Envelope {
            sender: sender.into(),
            recipients,
        }
    }

    /// Read qmail-queue's fd 1 format, byte for byte as qmail-queue does:
    /// a stream not starting with `F`, or a record not starting with `T`,
    /// is 91; end of input (or a read error) before the final `\0` is 54;
    /// an address of 1003 bytes or more is 11. Bytes after the final `\0`
    /// are not read.
    pub fn read_from<R: Read>(reader: R) -> Result<Envelope, QqError> {
        let mut input = ByteReader {
            inner: BufReader::with_capacity(2048, reader),
        };
        match input.next()? {
            Some(b'F') => {}
            Some(_) => return Err(QqError::new(QqError::ENVELOPE)),
            None => return Err(QqError::new(QqError::READ)),
        }
        let sender = input.address()?;
        let mut recipients = Vec::new();
        loop {
            match input.next()? {
                Some(0) => break,
                Some(b'T') => recipients.push(input.address()?),
                Some(_) => return Err(QqError::new(QqError::ENVELOPE)),
                None => return Err(QqError::new(QqError::READ)),
            }
        }
        Ok(Envelope { sender, recipients })
    }

    /// [`Envelope::read_from`] on a byte slice.
    pub fn parse(bytes: &[u8]) -> Result<Envelope, QqError> {
        Envelope::read_from(bytes)
    }

    /// Check that qmail-queue would accept this envelope unchanged: every
    /// address under [`ADDR_LIMIT`] bytes (else 11) and free of `\0`, which
    /// would end the address early and derail the format (91).
    pub fn validate(&self) -> Result<(), QqError> {
        for addr in std::iter::once(&self.sender).chain(&self.recipients) {
            if addr.contains(&0) {
                return Err(QqError::new(QqError::ENVELOPE));
            }
            if addr.len() >= ADDR_LIMIT {
                return Err(QqError::new(QqError::ADDR_TOO_LONG));
            }
        }
        Ok(())
    }

    /// The fd 1 format, as handed to a qmail-queue program.
    pub fn to_qq_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len() + 1);
        self.put_addresses(&mut out);
        out.push(0);
        out
    }

    /// The `intd/N` file: `u<uid>\0p<pid>\0F<sender>\0T<rcpt>\0...`.
    pub fn to_intd_bytes(&self, uid: u32, pid: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len() + 24);
        out.push(b'u');
        out.extend_from_slice(uid.to_string().as_bytes());
        out.push(0);
        out.push(b'p');
        out.extend_from_slice(pid.to_string().as_bytes());
        out.push(0);
        self.put_addresses(&mut out);
        out
    }

    fn encoded_len(&self) -> usize {
        self.sender.len() + 2 + self.recipients.iter().map(|r| r.len() + 2).sum::<usize>()
    }

    fn put_addresses(&self, out: &mut Vec<u8>) {
        out.push(b'F');
        out.extend_from_slice(&self.sender);
        out.push(0);
        for rcpt in &self.recipients {
            out.push(b'T');
            out.extend_from_slice(rcpt);
            out.push(0);
        }
    }
}

impl QueueEnvelope {
    /// Parse an `intd/N` / `todo/N` file. Unknown record types are skipped
    /// (qmail's `QUEUE_EXTRA` may add some); a file without `F` is an error.
    pub fn parse(bytes: &[u8]) -> Option<QueueEnvelope> {
        let mut uid = None;
        let mut pid = None;
        let mut sender = None;
        let mut recipients = Vec::new();
        let body = bytes.strip_suffix(&[0]).unwrap_or(bytes);
        for record in body.split(|&b| b == 0) {
            let Some((&kind, rest)) = record.split_first() else {
                continue;
            };
            match kind {
                b'u' => uid = Some(parse_u32(rest)?),
                b'p' => pid = Some(parse_u32(rest)?),
                b'F' => sender = Some(rest.to_vec()),
                b'T' => recipients.push(rest.to_vec()),
                _ => {}
            }
        }
        Some(QueueEnvelope {
            uid: uid.unwrap_or(0),
            pid: pid.unwrap_or(0),
            envelope: Envelope {
                sender: sender?,
                recipients,
            },
        })
    }
}

fn parse_u32(digits: &[u8]) -> Option<u32> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// One byte at a time over a buffered reader, as qmail's `substdio_get`.
struct ByteReader<R> {
    inner: BufReader<R>,
}

impl<R: Read> ByteReader<R> {
    /// The next byte; `None` at end of input. A read error is exit 54.
    fn next(&mut self) -> Result<Option<u8>, QqError> {
        loop {
            match self.inner.fill_buf() {
                Ok([]) => return Ok(None),
                Ok(buf) => {
                    let b = buf[0];
                    self.inner.consume(1);
                    return Ok(Some(b));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(QqError::new(QqError::READ)),
            }
        }
    }

    /// An address up to and including its `\0` (not kept).
    fn address(&mut self) -> Result<Vec<u8>, QqError> {
        let mut addr = Vec::new();
        while addr.len() < ADDR_LIMIT {
            match self.next()? {
                None => return Err(QqError::new(QqError::READ)),
                Some(0) => return Ok(addr),
                Some(b) => addr.push(b),
            }
        }
        Err(QqError::new(QqError::ADDR_TOO_LONG))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn code(bytes: &[u8]) -> u8 {
        Envelope::parse(bytes).unwrap_err().exit_code()
    }

    #[test]
    fn parses_the_fd1_format() {
        let e = Envelope::parse(b"Fa@b\0Tc@d\0Te@f\0\0trailing ignored").unwrap();
        assert_eq!(e.sender, b"a@b");
        assert_eq!(e.recipients, vec![b"c@d".to_vec(), b"e@f".to_vec()]);
        let e = Envelope::parse(b"F\0\0").unwrap();
        assert!(e.sender.is_empty() && e.recipients.is_empty());
        let e = Envelope::parse(b"F\0T\0\0").unwrap();
        assert_eq!(e.recipients, vec![Vec::<u8>::new()]);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(code(b""), 54);
        assert_eq!(code(b"X"), 91);
        assert_eq!(code(b"Ta@b\0\0"), 91);
        assert_eq!(code(b"F"), 54);
        assert_eq!(code(b"Fa@b"), 54);
        assert_eq!(code(b"Fa@b\0"), 54);
        assert_eq!(code(b"Fa@b\0Tc"), 54);
        assert_eq!(code(b"Fa@b\0Tc\0"), 54);
        assert_eq!(code(b"Fa@b\0Xc\0\0"), 91);
        assert_eq!(code(b"Fa@b\0Tc\0F\0\0"), 91);
    }

    #[test]
    fn address_length_limit() {
        let ok = vec![b'x'; ADDR_LIMIT - 1];
        let long = vec![b'x'; ADDR_LIMIT];
        let mut s = b"F".to_vec();
        s.extend_from_slice(&ok);
        s.extend_from_slice(b"\0T");
        s.extend_from_slice(&ok);
        s.extend_from_slice(b"\0\0");
        let e = Envelope::parse(&s).unwrap();
        assert_eq!(e.sender.len(), 1002);
        assert_eq!(e.validate(), Ok(()));

        let mut s = b"F".to_vec();
        s.extend_from_slice(&long);
        assert_eq!(code(&s), 11, "11 even without the terminator");
        let mut s = b"F\0T".to_vec();
        s.extend_from_slice(&long);
        s.extend_from_slice(b"\0\0");
        assert_eq!(code(&s), 11);

        assert_eq!(
            Envelope::new(long.clone(), vec![])
                .validate()
                .unwrap_err()
                .exit_code(),
            11
        );
        assert_eq!(
            Envelope::new("a", vec![long])
                .validate()
                .unwrap_err()
                .exit_code(),
            11
        );
        assert_eq!(
            Envelope::new("a", vec![b"b\0c".to_vec()])
                .validate()
                .unwrap_err()
                .exit_code(),
            91
        );
    }

    #[test]
    fn read_error_is_54() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("boom"))
            }
        }
        assert_eq!(Envelope::read_from(Broken).unwrap_err().exit_code(), 54);
    }

    #[test]
    fn intd_bytes_are_exact() {
        let e = Envelope::new("a@b", vec![b"c@d".to_vec(), b"e@f".to_vec()]);
        assert_eq!(e.to_intd_bytes(7, 1234), b"u7\0p1234\0Fa@b\0Tc@d\0Te@f\0");
        assert_eq!(e.to_qq_bytes(), b"Fa@b\0Tc@d\0Te@f\0\0");
        let q = QueueEnvelope::parse(&e.to_intd_bytes(7, 1234)).unwrap();
        assert_eq!((q.uid, q.pid, q.envelope), (7, 1234, e));
    }

    fn address() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(1u8..=255, 0..40)
    }

    fn envelope() -> impl Strategy<Value = Envelope> {
        (address(), proptest::collection::vec(address(), 0..6))
            .prop_map(|(s, r)| Envelope::new(s, r))
    }

    proptest! {
        #[test]
        fn fd1_round_trip(e in envelope()) {
            prop_assert_eq!(Envelope::parse(&e.to_qq_bytes()), Ok(e.clone()));
            prop_assert_eq!(e.validate(), Ok(()));
        }

        #[test]
        fn intd_round_trip(e in envelope(), uid: u32, pid: u32) {
            let q = QueueEnvelope::parse(&e.to_intd_bytes(uid, pid)).unwrap();
            prop_assert_eq!(q, QueueEnvelope { uid, pid, envelope: e });
        }

        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2100)) {
            match Envelope::parse(&bytes) {
                Ok(e) => prop_assert_eq!(e.validate(), Ok(())),
                Err(err) => prop_assert!([11, 54, 91].contains(&err.exit_code())),
            }
            let _ = QueueEnvelope::parse(&bytes);
        }

        #[test]
        fn parser_never_panics_near_format(
            parts in proptest::collection::vec(
                prop_oneof![Just(b"F".to_vec()), Just(b"T".to_vec()), Just(vec![0u8]), address()],
                0..12)
        ) {
            let bytes: Vec<u8> = parts.concat();
            let _ = Envelope::parse(&bytes);
        }
    }
}
