//! Where `sqmail smtpd` puts accepted messages: the queue, in process, or
//! the program named by `QMAILQUEUE` (netqmail's hook), which stands in
//! for qmail-queue with the same interface.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sqmail_core::smtp::host::Decision;
use sqmail_core::smtp::reception::{Envelope, MessageStore};
use sqmail_core::smtp::{Reply, Verdict};
use sqmail_queue::envelope::Envelope as QueueEnvelope;
use sqmail_queue::qq::QqError;
use sqmail_queue::sink::{MessageSink, Receipt, Target};
use sqmail_queue::store::Invoker;

/// A message store over one injection target, shared by all sessions.
#[derive(Clone)]
pub struct QueueStore {
    target: Arc<Target>,
    invoker: Invoker,
}

impl QueueStore {
    pub fn new(target: Arc<Target>) -> Self {
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        QueueStore {
            target,
            invoker: Invoker::Network(uid),
        }
    }
}

/// A message on its way in; the first write error fails its commit.
pub struct OpenMessage {
    sink: MessageSink,
    error: Option<QqError>,
}

impl MessageStore for QueueStore {
    type Message = OpenMessage;

    fn open(&mut self) -> Result<OpenMessage, Reply> {
        let sink = self.target.begin(self.invoker).map_err(|e| qq_reply(&e))?;
        Ok(OpenMessage { sink, error: None })
    }

    fn write(&mut self, message: &mut OpenMessage, data: &[u8]) {
        if message.error.is_none() {
            message.error = message.sink.write(data).err();
        }
    }

    fn commit(&mut self, message: OpenMessage, envelope: Envelope) -> Decision {
        Decision::Later(Box::new(move || {
            if let Some(e) = message.error {
                return Verdict::Reject(qq_reply(&e));
            }
            let recipients = envelope
                .recipients
                .into_iter()
                .map(String::into_bytes)
                .collect();
            let envelope = QueueEnvelope::new(envelope.sender.into_bytes(), recipients);
            match message.sink.commit(&envelope) {
                Ok(receipt) => Verdict::AcceptWith(accepted(&receipt)),
                Err(e) => Verdict::Reject(qq_reply(&e)),
            }
        }))
    }

    fn unix_time(&self) -> i64 {
        unix_now()
    }
}

/// qmail-smtpd's `250 ok <time> qp <pid>`, with the queue's message id
/// (what qmail-send logs as `msg N`) when the message went in in-process.
fn accepted(receipt: &Receipt) -> Reply {
    let mut text = format!("ok {} qp {}", unix_now(), receipt.qp);
    if let Some(id) = receipt.id {
        text.push_str(&format!(" msg {id}"));
    }
    Reply::owned(250, "2.0.0", text)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// qmail-smtpd's reply for a qmail-queue failure: 554 for a permanent one,
/// 451 otherwise, with qmail's text (its `(#x.y.z)` moves to the front).
pub fn qq_reply(e: &QqError) -> Reply {
    let text = e.text();
    let text = match text.rfind(" (#") {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => text,
    };
    if e.is_permanent() {
        Reply::owned(554, "5.3.0", text)
    } else {
        Reply::owned(451, "4.3.0", text)
    }
}
