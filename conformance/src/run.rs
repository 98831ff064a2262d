//! Runs a [`Trace`] against a peer: the bare machine or the binary.
//!
//! The dialog logic lives here once; a [`Peer`] only moves bytes and
//! reports what was queued, so every target is held to the same script.

use std::fmt;

use crate::trace::{Action, ExpectedEnvelope, Trace};

/// One reply as it came off the wire: its code and each line's text
/// (after `NNN-` or `NNN `).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireReply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl fmt::Display for WireReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i + 1 == self.lines.len() { ' ' } else { '-' };
            if i > 0 {
                f.write_str(" | ")?;
            }
            write!(f, "{}{sep}{line}", self.code)?;
        }
        Ok(())
    }
}

/// Takes one complete reply off the front of `buf`, if there is one.
/// Replies must be CRLF-terminated lines of `NNN-text` ending in
/// `NNN text` (or `NNN`), all with the same code.
pub fn take_reply(buf: &mut Vec<u8>) -> Result<Option<WireReply>, String> {
    let mut lines = Vec::new();
    let mut code = None;
    let mut pos = 0;
    loop {
        let Some(lf) = buf[pos..].iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        let raw = &buf[pos..pos + lf];
        let shown = String::from_utf8_lossy(raw).into_owned();
        let line = raw
            .strip_suffix(b"\r")
            .ok_or_else(|| format!("reply line without CR before its LF: {shown:?}"))?;
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(format!("malformed reply line {shown:?}"));
        }
        let this: u16 = std::str::from_utf8(&line[..3])
            .ok()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("malformed reply code in {shown:?}"))?;
        if code.is_some_and(|c| c != this) {
            return Err(format!("multi-line reply changes its code: {shown:?}"));
        }
        code = Some(this);
        let (last, text) = match line.get(3) {
            None => (true, &line[3..]),
            Some(b' ') => (true, &line[4..]),
            Some(b'-') => (false, &line[4..]),
            Some(_) => return Err(format!("malformed reply line {shown:?}")),
        };
        if text.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err(format!("control byte in reply line {shown:?}"));
        }
        lines.push(String::from_utf8_lossy(text).into_owned());
        pos += lf + 1;
        if last {
            buf.drain(..pos);
            return Ok(Some(WireReply { code: this, lines }));
        }
    }
}

/// A message as the peer's store holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedMessage {
    pub envelope: ExpectedEnvelope,
    /// The stored message, LF line endings, `Received:` line(s) first.
    pub data: Vec<u8>,
}

/// What the server did next, as far as the client can see.
#[derive(Debug)]
pub enum Next {
    Reply(WireReply),
    /// The server closed; these bytes (an incomplete reply) were left over.
    Closed(Vec<u8>),
}

/// The server side of a run, as the runner sees it.
pub trait Peer {
    /// The client writes `bytes`: in one write, or one byte per write.
    fn send(&mut self, bytes: &[u8], bytewise: bool) -> Result<(), String>;
    /// The next reply or the close; an error if neither comes (the server
    /// waits for input, or the wire runner's timeout passes).
    fn next(&mut self) -> Result<Next, String>;
    /// The client closes its side; returns what the server sent after.
    fn client_close(&mut self) -> Result<Vec<u8>, String>;
    /// `secs` seconds pass.
    fn wait(&mut self, secs: u64) -> Result<(), String>;
    /// Every message queued so far, oldest first.
    fn queued(&mut self) -> Result<Vec<QueuedMessage>, String>;
}

/// A trace that did not go as written.
#[derive(Clone, Debug)]
pub struct Failure {
    pub trace: String,
    pub line: usize,
    pub message: String,
    /// The dialog so far, for the report.
    pub transcript: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}:{}: {}", self.trace, self.line, self.message)?;
        let skip = self.transcript.len().saturating_sub(40);
        if skip > 0 {
            writeln!(f, "    ... {skip} earlier lines")?;
        }
        for line in &self.transcript[skip..] {
            writeln!(f, "    {line}")?;
        }
        Ok(())
    }
}

/// Shows bytes sent as trace-like lines, escaping what is not printable.
fn show_sent(bytes: &[u8], out: &mut Vec<String>) {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\n' if i > 0 && bytes[i - 1] == b'\r' => {
                cur.pop();
                cur.pop();
                lines.push(std::mem::take(&mut cur));
                continue;
            }
            b'\r' => cur.push_str("\\r"),
            b'\n' => cur.push_str("\\n"),
            0x20..=0x7e => cur.push(b as char),
            _ => cur.push_str(&format!("\\x{b:02x}")),
        }
    }
    if !cur.is_empty() {
        lines.push(format!("{cur}  (no CRLF)"));
    }
    let n = lines.len();
    for (i, l) in lines.into_iter().enumerate() {
        if n > 12 && (6..n - 3).contains(&i) {
            if i == 6 {
                out.push(format!("C: ... {} more lines", n - 9));
            }
            continue;
        }
        let l = if l.len() > 120 {
            format!("{}... ({} bytes)", &l[..100], l.len())
        } else {
            l
        };
        out.push(format!("C: {l}"));
    }
}

/// Runs `trace` against `peer`.
pub fn run(trace: &Trace, peer: &mut dyn Peer, bytewise: bool) -> Result<(), Failure> {
    let mut transcript = Vec::new();
    let mut last: Option<WireReply> = None;
    let mut closed = false;
    let fail = |line: usize, message: String, transcript: &Vec<String>| Failure {
        trace: trace.path.display().to_string(),
        line,
        message,
        transcript: transcript.clone(),
    };
    for step in &trace.steps {
        let line = step.line;
        match &step.action {
            Action::Send(bytes) => {
                show_sent(bytes, &mut transcript);
                if closed {
                    return Err(fail(
                        line,
                        "the trace sends after the server closed".into(),
                        &transcript,
                    ));
                }
                peer.send(bytes, bytewise)
                    .map_err(|e| fail(line, format!("send: {e}"), &transcript))?;
            }
            Action::Reply { code, prefix } => {
                let got = match peer.next() {
                    Ok(Next::Reply(r)) => r,
                    Ok(Next::Closed(rest)) => {
                        transcript.push("S: (closed)".into());
                        let msg = format!(
                            "expected {code} {prefix}, but the server closed the connection{}",
                            if rest.is_empty() {
                                String::new()
                            } else {
                                format!(" after {:?}", String::from_utf8_lossy(&rest))
                            }
                        );
                        return Err(fail(line, msg, &transcript));
                    }
                    Err(e) => {
                        return Err(fail(
                            line,
                            format!("expected {code} {prefix}: {e}"),
                            &transcript,
                        ))
                    }
                };
                transcript.push(format!("S: {got}"));
                let first = got.lines.first().map(String::as_str).unwrap_or("");
                if got.code != *code || !first.starts_with(prefix.as_str()) {
                    let msg = format!("expected `{code} {prefix}`, got `{got}`");
                    return Err(fail(line, msg, &transcript));
                }
                last = Some(got);
            }
            Action::ReplyLine { text, present } => {
                let Some(reply) = &last else {
                    return Err(fail(line, "no reply to look into".into(), &transcript));
                };
                let found = reply.lines.iter().any(|l| l.starts_with(text.as_str()));
                if found != *present {
                    let msg = format!(
                        "expected {} line starting with {text:?} in `{reply}`",
                        if *present { "a" } else { "no" }
                    );
                    return Err(fail(line, msg, &transcript));
                }
            }
            Action::Closed => match peer.next() {
                Ok(Next::Closed(rest)) if rest.is_empty() => {
                    transcript.push("S: (closed)".into());
                    closed = true;
                }
                Ok(Next::Closed(rest)) => {
                    let msg = format!(
                        "the server closed after an incomplete reply {:?}",
                        String::from_utf8_lossy(&rest)
                    );
                    return Err(fail(line, msg, &transcript));
                }
                Ok(Next::Reply(r)) => {
                    transcript.push(format!("S: {r}"));
                    let msg = format!("expected the server to close, got `{r}`");
                    return Err(fail(line, msg, &transcript));
                }
                Err(e) => {
                    let msg = format!("expected the server to close: {e}");
                    return Err(fail(line, msg, &transcript));
                }
            },
            Action::Queued { count, envelope } => {
                let queued = peer
                    .queued()
                    .map_err(|e| fail(line, format!("reading the queue: {e}"), &transcript))?;
                transcript.push(format!("Q: {} queued", queued.len()));
                if queued.len() != *count {
                    let envs: Vec<String> =
                        queued.iter().map(|m| show_envelope(&m.envelope)).collect();
                    let msg = format!(
                        "expected {count} queued message(s), found {}: [{}]",
                        queued.len(),
                        envs.join("; ")
                    );
                    return Err(fail(line, msg, &transcript));
                }
                if let Some(want) = envelope {
                    let got = &queued.last().map(|m| m.envelope.clone());
                    if got.as_ref() != Some(want) {
                        let msg = format!(
                            "expected the last message's envelope `{}`, found `{}`",
                            show_envelope(want),
                            got.as_ref().map(show_envelope).unwrap_or_default()
                        );
                        return Err(fail(line, msg, &transcript));
                    }
                }
            }
            Action::QueuedContains(needle) => {
                let queued = peer
                    .queued()
                    .map_err(|e| fail(line, format!("reading the queue: {e}"), &transcript))?;
                let Some(message) = queued.last() else {
                    return Err(fail(line, "no message was queued".into(), &transcript));
                };
                if !contains(&message.data, needle) {
                    let msg = format!(
                        "the last queued message lacks {:?}; it is:\n{}",
                        String::from_utf8_lossy(needle),
                        String::from_utf8_lossy(&message.data)
                    );
                    return Err(fail(line, msg, &transcript));
                }
            }
            Action::Wait(secs) => {
                transcript.push(format!("W: {secs}s"));
                peer.wait(*secs)
                    .map_err(|e| fail(line, format!("wait: {e}"), &transcript))?;
            }
            Action::Delivery(_) => {
                let msg = "a delivery line (T:, M:, L:, B:) in an SMTP run: delivery traces \
                           run through delivery::run, which ends the dialog before them";
                return Err(fail(line, msg.into(), &transcript));
            }
        }
    }
    if !closed {
        let last_line = trace.steps.last().map_or(0, |s| s.line);
        transcript.push("(client closes)".into());
        let rest = peer.client_close().map_err(|e| {
            fail(
                last_line,
                format!("after the client closed: {e}"),
                &transcript,
            )
        })?;
        if !rest.is_empty() {
            let msg = format!(
                "the server sent more than the trace expects: {:?}",
                String::from_utf8_lossy(&rest)
            );
            return Err(fail(last_line, msg, &transcript));
        }
    }
    Ok(())
}

fn show_envelope(e: &ExpectedEnvelope) -> String {
    let rcpts: Vec<String> = e.recipients.iter().map(|r| format!("<{r}>")).collect();
    format!("from <{}> to {}", e.sender, rcpts.join(" "))
}

pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_split_and_join() {
        let mut buf = b"250-a\r\n250-SIZE 10\r\n250 c\r\n354 go\r\n221".to_vec();
        let r = take_reply(&mut buf).unwrap().unwrap();
        assert_eq!((r.code, r.lines.len()), (250, 3));
        assert_eq!(r.to_string(), "250-a | 250-SIZE 10 | 250 c");
        assert_eq!(take_reply(&mut buf).unwrap().unwrap().lines, vec!["go"]);
        assert_eq!(take_reply(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"\r\n");
        assert_eq!(take_reply(&mut buf).unwrap().unwrap().code, 221);
        assert!(buf.is_empty());
    }

    #[test]
    fn malformed_replies_are_errors() {
        for bad in [
            &b"250 ok\n"[..],
            b"25 x\r\n",
            b"250-a\r\n251 b\r\n",
            b"250x\r\n",
            b"250 a\rb\r\n",
        ] {
            assert!(take_reply(&mut bad.to_vec()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn transcript_escapes() {
        let mut out = Vec::new();
        show_sent(b"EHLO x\r\nDATA\r\na\n.\n\0", &mut out);
        assert_eq!(
            out,
            vec!["C: EHLO x", "C: DATA", "C: a\\n.\\n\\x00  (no CRLF)"]
        );
    }
}
