//! qmail-queue's exit codes and the texts qmail-smtpd & co. show for them.
//!
//! Every program that injects mail (smtpd, inject, forward, bounces) reports a
//! failed injection by the exit code of qmail-queue (qmail-queue(8)); the
//! texts are those of qmail.c's `qmail_close`, so SMTP clients and logs see
//! exactly what they saw with qmail.

use std::fmt;

/// Why a message could not be queued: a qmail-queue exit code, or one of the
/// few outcomes of running an external `QMAILQUEUE` program that have no
/// code of their own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QqError {
    code: u8,
    detail: Detail,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Detail {
    /// Only the exit code is known.
    Code,
    /// notqmail exit 82: the program wrote its own reply text on fd 6,
    /// starting with `D` (permanent) or `Z` (temporary).
    Custom { permanent: bool, text: Box<str> },
    /// The external program was killed by a signal.
    Crashed,
    /// `waitpid` did not return the child.
    WaitSurprise,
}

impl QqError {
    /// Address too long.
    pub const ADDR_TOO_LONG: u8 = 11;
    /// Permanent refusal (used by QMAILQUEUE programs).
    pub const PERM_REFUSED: u8 = 31;
    /// Out of memory.
    pub const NOMEM: u8 = 51;
    /// Timeout (qmail-queue's 24 h alarm).
    pub const TIMEOUT: u8 = 52;
    /// Write error, e.g. disk full.
    pub const WRITE: u8 = 53;
    /// Cannot read the message or the envelope.
    pub const READ: u8 = 54;
    /// Trouble with QMAILHOME.
    pub const HOME: u8 = 61;
    /// Trouble with QMAILHOME/queue.
    pub const QUEUE_DIR: u8 = 62;
    /// Trouble with queue/pid.
    pub const PID: u8 = 63;
    /// Trouble with queue/mess.
    pub const MESS: u8 = 64;
    /// Trouble with queue/intd.
    pub const INTD: u8 = 65;
    /// Trouble with queue/todo.
    pub const TODO: u8 = 66;
    /// Internal bug.
    pub const BUG: u8 = 81;
    /// notqmail: custom reply text on fd 6.
    pub const CUSTOM: u8 = 82;
    /// Envelope format error.
    pub const ENVELOPE: u8 = 91;
    /// qmail.c's own code for "could not exec the qq program".
    pub const EXEC: u8 = 120;

    /// An error with just an exit code. Code 0 is not an error: it is
    /// mapped to 54, as qmail_close does when a write to qq failed but qq
    /// still exited 0.
    pub fn new(code: u8) -> Self {
        let code = if code == 0 { Self::READ } else { code };
        QqError {
            code,
            detail: Detail::Code,
        }
    }

    /// Exit 82 with the text the program wrote on fd 6. Text that does not
    /// start with `D` or `Z` is treated as temporary (and kept whole).
    pub fn custom(raw: &[u8]) -> Self {
        let raw = String::from_utf8_lossy(raw);
        let raw = raw.trim_end_matches(['\n', '\r', '\0']);
        let (permanent, text) = match raw.as_bytes().first() {
            Some(b'D') => (true, &raw[1..]),
            Some(b'Z') => (false, &raw[1..]),
            _ => (false, raw),
        };
        if text.is_empty() {
            return QqError::new(Self::CUSTOM);
        }
        QqError {
            code: Self::CUSTOM,
            detail: Detail::Custom {
                permanent,
                text: text.into(),
            },
        }
    }

    /// The external program died from a signal.
    pub fn crashed() -> Self {
        QqError {
            code: Self::BUG,
            detail: Detail::Crashed,
        }
    }

    /// `waitpid` failed or returned another child.
    pub fn wait_surprise() -> Self {
        QqError {
            code: Self::BUG,
            detail: Detail::WaitSurprise,
        }
    }

    /// The qmail-queue exit code (what `sqmail queue` exits with).
    pub fn exit_code(&self) -> u8 {
        self.code
    }

    /// Permanent failures (codes 11–40, 115, or a `D` text with code 82)
    /// get a 5xx reply; everything else is temporary.
    pub fn is_permanent(&self) -> bool {
        match &self.detail {
            Detail::Custom { permanent, .. } => *permanent,
            Detail::Crashed | Detail::WaitSurprise => false,
            Detail::Code => matches!(self.code, 11..=40 | 115),
        }
    }

    /// The reply text qmail.c's `qmail_close` gives for this failure,
    /// without its leading `D`/`Z` (see [`QqError::is_permanent`]).
    pub fn text(&self) -> &str {
        match &self.detail {
            Detail::Custom { text, .. } => text,
            Detail::Crashed => "qq crashed (#4.3.0)",
            Detail::WaitSurprise => "qq waitpid surprise (#4.3.0)",
            Detail::Code => code_text(self.code),
        }
    }
}

fn code_text(code: u8) -> &'static str {
    match code {
        11 | 115 => "envelope address too long for qq (#5.1.3)",
        31 => "mail server permanently rejected message (#5.3.0)",
        51 => "qq out of memory (#4.3.0)",
        52 => "qq timeout (#4.3.0)",
        53 => "qq write error or disk full (#4.3.0)",
        0 | 54 => "qq read error (#4.3.0)",
        55 => "qq unable to read configuration (#4.3.0)",
        56 => "qq trouble making network connection (#4.3.0)",
        61 => "qq trouble in home directory (#4.3.0)",
        62..=66 => "qq trouble creating files in queue (#4.3.0)",
        71 => "mail server temporarily rejected message (#4.3.0)",
        72 => "connection to mail server timed out (#4.4.1)",
        73 => "connection to mail server rejected (#4.4.1)",
        74 => "communication with mail server failed (#4.4.2)",
        81 | 91 => "qq internal bug (#4.3.0)",
        120 => "unable to exec qq (#4.3.0)",
        11..=40 => "qq permanent problem (#5.3.0)",
        _ => "qq temporary problem (#4.3.0)",
    }
}

impl fmt::Display for QqError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (qq exit {})", self.text(), self.code)
    }
}

impl std::error::Error for QqError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_match_qmail_close() {
        let cases: &[(u8, &str, bool)] = &[
            (11, "envelope address too long for qq (#5.1.3)", true),
            (115, "envelope address too long for qq (#5.1.3)", true),
            (
                31,
                "mail server permanently rejected message (#5.3.0)",
                true,
            ),
            (32, "qq permanent problem (#5.3.0)", true),
            (40, "qq permanent problem (#5.3.0)", true),
            (41, "qq temporary problem (#4.3.0)", false),
            (51, "qq out of memory (#4.3.0)", false),
            (52, "qq timeout (#4.3.0)", false),
            (53, "qq write error or disk full (#4.3.0)", false),
            (54, "qq read error (#4.3.0)", false),
            (55, "qq unable to read configuration (#4.3.0)", false),
            (56, "qq trouble making network connection (#4.3.0)", false),
            (61, "qq trouble in home directory (#4.3.0)", false),
            (62, "qq trouble creating files in queue (#4.3.0)", false),
            (63, "qq trouble creating files in queue (#4.3.0)", false),
            (66, "qq trouble creating files in queue (#4.3.0)", false),
            (
                71,
                "mail server temporarily rejected message (#4.3.0)",
                false,
            ),
            (72, "connection to mail server timed out (#4.4.1)", false),
            (73, "connection to mail server rejected (#4.4.1)", false),
            (74, "communication with mail server failed (#4.4.2)", false),
            (81, "qq internal bug (#4.3.0)", false),
            (91, "qq internal bug (#4.3.0)", false),
            (120, "unable to exec qq (#4.3.0)", false),
            (1, "qq temporary problem (#4.3.0)", false),
            (10, "qq temporary problem (#4.3.0)", false),
            (99, "qq temporary problem (#4.3.0)", false),
        ];
        for &(code, text, perm) in cases {
            let e = QqError::new(code);
            assert_eq!(e.exit_code(), code);
            assert_eq!(e.text(), text, "code {code}");
            assert_eq!(e.is_permanent(), perm, "code {code}");
        }
    }

    #[test]
    fn zero_is_read_error() {
        let e = QqError::new(0);
        assert_eq!(e.exit_code(), 54);
        assert_eq!(e.text(), "qq read error (#4.3.0)");
    }

    #[test]
    fn custom_texts() {
        let e = QqError::custom(b"Dspam rejected (#5.7.1)\n");
        assert_eq!(e.exit_code(), 82);
        assert!(e.is_permanent());
        assert_eq!(e.text(), "spam rejected (#5.7.1)");
        let e = QqError::custom(b"Ztry later (#4.3.0)");
        assert!(!e.is_permanent());
        assert_eq!(e.text(), "try later (#4.3.0)");
        let e = QqError::custom(b"no prefix");
        assert!(!e.is_permanent());
        assert_eq!(e.text(), "no prefix");
        let e = QqError::custom(b"");
        assert_eq!(e.text(), "qq temporary problem (#4.3.0)");
        let e = QqError::custom(b"D\n");
        assert_eq!(e.text(), "qq temporary problem (#4.3.0)");
        assert!(!QqError::crashed().is_permanent());
        assert_eq!(QqError::crashed().text(), "qq crashed (#4.3.0)");
        assert_eq!(
            QqError::wait_surprise().text(),
            "qq waitpid surprise (#4.3.0)"
        );
    }
}
