//! Bounces in qmail's QSBMF form, byte for byte as qmail-send's
//! `addbounce` and `injectbounce` write them, so that tools (and people)
//! that parse qmail bounces keep working.
//!
//! The original message is not held here: [`compose`] returns the bounce's
//! text up to and including the `Return-Path:` line, and how many bytes of
//! the original the host must append after it, so a big message can be
//! streamed from the queue instead of copied into memory.

use crate::inject::{quote, quote2};

/// The control files that shape a bounce (`bouncefrom`, `bouncehost`,
/// `doublebounceto`, `doublebouncehost`, s/qmail's `bouncemaxbytes`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BounceSettings {
    /// Local part of the bounce's `From:` (default `MAILER-DAEMON`).
    pub bouncefrom: String,
    /// Host of the bounce's `From:` and its greeting (default `me`).
    pub bouncehost: String,
    /// Local part double bounces go to (default `postmaster`); empty
    /// means double bounces are discarded (s/qmail).
    pub doublebounceto: String,
    /// Host double bounces go to (default `me`).
    pub doublebouncehost: String,
    /// Return at most this many bytes of the original message; `None`
    /// (qmail's behaviour, and `bouncemaxbytes` 0) returns it whole.
    pub max_bytes: Option<u64>,
}

/// One failed recipient and the delivery's report text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub recipient: String,
    pub report: String,
}

/// What to bounce.
#[derive(Clone, Debug)]
pub struct BounceInput<'a> {
    /// The original envelope sender (`""` for a bounce, `#@[]` for a
    /// double bounce).
    pub sender: &'a str,
    pub failures: &'a [Failure],
    /// The `Date:` value, e.g. from `received::rfc822_date`.
    pub date: &'a str,
    /// Length of the original message (its queue file), for truncation.
    pub message_len: u64,
}

/// The decision and, when there is one, the bounce to queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bounce {
    /// Queue this bounce.
    Send(Composed),
    /// A failed double bounce (sender `#@[]`), or double bounces are
    /// switched off: qmail-send logs `triple bounce: discarding` and drops it.
    Discard,
}

/// A bounce ready to queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Composed {
    /// Envelope sender: `""` for a bounce, `#@[]` for a double bounce.
    pub sender: String,
    /// Envelope recipient: the original sender, or doublebounceto@host.
    pub recipient: String,
    /// Headers, text and the `Return-Path:` line of the returned copy.
    pub prefix: Vec<u8>,
    /// Append this many bytes of the original message after `prefix`.
    pub copy_len: u64,
}

/// One recipient's paragraph, as `addbounce` appends it to `bounce/N`:
/// `<addr>:\n`, the report ending in a newline, blank lines inside it
/// turned into `/` (a blank line would end the paragraph), and a blank line.
pub fn paragraph(recipient: &str, report: &str) -> String {
    let mut text = String::from("<");
    text.extend(recipient.chars().map(|c| if c == '\n' { '_' } else { c }));
    text.push_str(">:\n");
    text.push_str(report);
    if !report.is_empty() && !report.ends_with('\n') {
        text.push('\n');
    }
    // An LF right after an LF becomes '/', right to left as qmail scans,
    // leaving the final LF alone.
    let mut bytes = text.into_bytes();
    let mut pos = bytes.len().saturating_sub(2);
    while pos > 0 {
        if bytes[pos] == b'\n' && bytes[pos - 1] == b'\n' {
            bytes[pos] = b'/';
        }
        pos -= 1;
    }
    let mut text = String::from_utf8(bytes).unwrap_or_default();
    text.push('\n');
    text
}

/// Compose the bounce for `input`, as `injectbounce` does.
pub fn compose(input: &BounceInput<'_>, settings: &BounceSettings) -> Bounce {
    // owner-@host-@[] (VERP) → owner-@host
    let sender = input
        .sender
        .strip_suffix("-@[]")
        .unwrap_or(input.sender)
        .to_string();
    if sender == "#@[]" {
        return Bounce::Discard;
    }
    let double = sender.is_empty();
    let (bounce_sender, recipient) = if double {
        if settings.doublebounceto.is_empty() {
            return Bounce::Discard;
        }
        let to = format!("{}@{}", settings.doublebounceto, settings.doublebouncehost);
        ("#@[]".to_string(), to)
    } else {
        (String::new(), sender.clone())
    };
    let host = &settings.bouncehost;
    let mut t = format!(
        "Date: {}\nFrom: {}@{host}\nTo: {}\nSubject: failure notice\n\n\
         Hi. This is the qmail-send program at {host}.\n",
        input.date,
        quote(&settings.bouncefrom),
        quote2(&recipient),
    );
    t.push_str(if double {
        "I tried to deliver a bounce message to this address, but the bounce bounced!\n\n"
    } else {
        "I'm afraid I wasn't able to deliver your message to the following addresses.\n\
         This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
    });
    for f in input.failures {
        t.push_str(&paragraph(&f.recipient, &f.report));
    }
    let copy_len = match settings.max_bytes {
        Some(max) if max > 0 && input.message_len > max => {
            t.push_str(&format!(
                "--- Below this line is the first {max} bytes of the {}.\n\n",
                if double { "original bounce" } else { "message" }
            ));
            max
        }
        _ => {
            t.push_str(if double {
                "--- Below this line is the original bounce.\n\n"
            } else {
                "--- Below this line is a copy of the message.\n\n"
            });
            input.message_len
        }
    };
    t.push_str(&format!("Return-Path: <{}>\n", quote2(&sender)));
    Bounce::Send(Composed {
        sender: bounce_sender,
        recipient,
        prefix: t.into_bytes(),
        copy_len,
    })
}

impl Composed {
    /// The whole bounce in memory: prefix plus the (possibly cut) copy.
    pub fn with_message(&self, message: &[u8]) -> Vec<u8> {
        let n = usize::try_from(self.copy_len)
            .unwrap_or(usize::MAX)
            .min(message.len());
        let mut out = self.prefix.clone();
        out.extend_from_slice(&message[..n]);
        out
    }
}

#[cfg(test)]
#[path = "bounce_tests.rs"]
mod tests;
