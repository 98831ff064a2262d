//! One transaction's results and qmail-remote's report of them: per
//! recipient `r` (accepted), `h` (refused for good) or `s` (refused for
//! now), then `K`, `D` or `Z` for the message; every entry ends in `\0`,
//! every text in `\n`. The texts are qmail-remote's, so qmail-send's log
//! and bounces read as they always have.

use std::net::IpAddr;

use super::ServerReply;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Accepted,
    Temporary,
    Permanent,
}

impl Status {
    /// A refusal's kind by its code.
    pub(super) fn of(reply: &ServerReply) -> Status {
        if reply.is_permanent() {
            Status::Permanent
        } else {
            Status::Temporary
        }
    }
}

/// The results of one envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// One per recipient, in order; empty when the transaction failed
    /// before every recipient had its answer.
    pub recipients: Vec<(Status, String)>,
    /// The message's: for an accepted recipient, its result too.
    pub message: (Status, String),
}

impl Delivery {
    /// The whole envelope failed (or succeeded) as one.
    pub fn whole(status: Status, text: String) -> Delivery {
        Delivery {
            recipients: Vec::new(),
            message: (status, text),
        }
    }

    /// qmail-remote's stdout.
    pub fn report(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (status, text) in &self.recipients {
            match status {
                Status::Accepted => out.push(b'r'),
                Status::Temporary => out.push(b's'),
                Status::Permanent => out.push(b'h'),
            }
            if *status != Status::Accepted {
                out.extend_from_slice(text.as_bytes());
            }
            out.push(0);
        }
        let (status, text) = &self.message;
        out.push(match status {
            Status::Accepted => b'K',
            Status::Temporary => b'Z',
            Status::Permanent => b'D',
        });
        out.extend_from_slice(text.as_bytes());
        out.push(0);
        out
    }
}

fn remote_said(reply: &ServerReply) -> String {
    format!("Remote host said: {}", reply.text)
}

/// `Connected to IP but WHAT.` and the reply, deferred or failed by its code.
pub(super) fn connected_but(reply: &ServerReply, peer: IpAddr, what: &str) -> (Status, String) {
    (
        Status::of(reply),
        format!("Connected to {peer} but {what}.\n{}", remote_said(reply)),
    )
}

/// `IP WHAT.` and the reply.
pub(super) fn host_said(reply: &ServerReply, peer: IpAddr, what: &str) -> String {
    format!("{peer} {what}.\n{}", remote_said(reply))
}

pub(super) fn accepted(reply: &ServerReply, peer: IpAddr) -> String {
    host_said(reply, peer, "accepted message")
}

pub(super) fn giving_up(peer: IpAddr) -> String {
    format!("Giving up on {peer}.\n")
}

/// After the final dot, a lost reply may hide a delivered message.
fn duplicate(critical: bool) -> &'static str {
    if critical {
        "Possible duplicate! "
    } else {
        ""
    }
}

pub(super) fn died(peer: IpAddr, critical: bool) -> String {
    format!(
        "Connected to {peer} but connection died. {}(#4.4.2)\n",
        duplicate(critical)
    )
}

pub(super) fn timed_out(peer: IpAddr, critical: bool) -> String {
    format!(
        "Connected to {peer} but it stopped answering (timeoutremote). {}(#4.4.2)\n",
        duplicate(critical)
    )
}

pub(super) fn partial_line() -> String {
    "SMTP cannot transfer messages with partial final lines. (#5.6.2)\n".into()
}

pub(super) fn too_big(peer: IpAddr, limit: u64) -> String {
    format!(
        "Connected to {peer} but the message is bigger than its limit of {limit} bytes. (#5.3.4)\n"
    )
}

pub(super) fn unsendable_address() -> String {
    "Sorry, an address of this message has a line break or NUL, which SMTP cannot carry. (#5.1.3)\n"
        .into()
}
