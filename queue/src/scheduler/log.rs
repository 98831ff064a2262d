//! qmail-send's log lines, byte for byte, so qmailanalog-style tools read them.

use super::{Channel, MessageId};

/// qmail-log(5)'s "safe" text: a newline becomes `/`; `%` and any byte
/// outside 33..=126 (spaces included) becomes `_`.
pub fn safe(text: &[u8]) -> String {
    text.iter()
        .map(|&b| match b {
            b'\n' => '/',
            b'%' => '_',
            33..=126 => b as char,
            _ => '_',
        })
        .collect()
}

pub fn new_msg(id: MessageId) -> String {
    format!("new msg {id}")
}

pub fn info_msg(id: MessageId, bytes: u64, sender: &[u8], qp: u32, uid: u32) -> String {
    format!(
        "info msg {id}: bytes {bytes} from <{}> qp {qp} uid {uid}",
        safe(sender)
    )
}

pub fn starting(delivery: u64, id: MessageId, channel: Channel, rcpt: &[u8]) -> String {
    format!(
        "starting delivery {delivery}: msg {id} to {} {}",
        channel.name(),
        safe(rcpt)
    )
}

/// `kind` is `success`, `deferral` or `failure`.
pub fn delivery(delivery: u64, kind: &str, report: &[u8]) -> String {
    format!("delivery {delivery}: {kind}: {}", safe(report))
}

pub fn bounce(id: MessageId, qp: u32) -> String {
    format!("bounce msg {id} qp {qp}")
}

pub fn triple_bounce(id: MessageId) -> String {
    format!("triple bounce: discarding bounce/{id}")
}

pub fn double_bounce_discard(id: MessageId) -> String {
    format!("double bounce: discarding bounce/{id}")
}

pub fn end_msg(id: MessageId) -> String {
    format!("end msg {id}")
}

pub fn status(in_flight: [usize; 2], limits: [usize; 2]) -> String {
    format!(
        "status: local {}/{} remote {}/{}",
        in_flight[0], limits[0], in_flight[1], limits[1]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(safe(b"did 0+0+1\n"), "did_0+0+1/");
        assert_eq!(safe(b"a%b\x7f\x00c"), "a_b__c");
        assert_eq!(
            info_msg(7, 300, b"a b@c", 12, 0),
            "info msg 7: bytes 300 from <a_b@c> qp 12 uid 0"
        );
        assert_eq!(
            starting(3, 7, Channel::Remote, b"x@y"),
            "starting delivery 3: msg 7 to remote x@y"
        );
        assert_eq!(status([1, 0], [10, 20]), "status: local 1/10 remote 0/20");
    }
}
