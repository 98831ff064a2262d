//! The host of an SMTP reception: qmail-smtpd's decisions (the policy over
//! the control files and the connection's facts) and the hand-over of the
//! message to a store: the queue in `sqmail smtpd`, memory in tests, the
//! conformance runner and the fuzzers. Keeping this logic here means every
//! one of them makes exactly the same decisions.

use std::sync::Arc;

use super::host::{Decision, SmtpHost};
use super::server::{Request, Verdict};
use super::Reply;
use crate::conn::ConnInfo;
use crate::policy::SmtpPolicy;
use crate::received;

/// A message's envelope as accepted over SMTP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    /// Empty for the null sender `<>`.
    pub sender: String,
    pub recipients: Vec<String>,
}

/// Where accepted messages go.
pub trait MessageStore {
    type Message;
    /// Starts a message; an `Err` is the reply that refuses DATA.
    fn open(&mut self) -> Result<Self::Message, Reply>;
    /// Appends message bytes. A store remembers a write error and reports
    /// it from `commit`, so the client learns of it after its final dot.
    fn write(&mut self, message: &mut Self::Message, data: &[u8]);
    /// Makes the message durable, usually as a blocking job; only its
    /// success may answer 250.
    fn commit(&mut self, message: Self::Message, envelope: Envelope) -> Decision;
    /// Wall-clock time for the `Received:` line, in Unix seconds.
    fn unix_time(&self) -> i64;
}

/// qmail-smtpd's side of a session over any [`MessageStore`].
pub struct Reception<S: MessageStore> {
    policy: Arc<SmtpPolicy>,
    conn: ConnInfo,
    store: S,
    envelope: Envelope,
    message: Option<S::Message>,
}

impl<S: MessageStore> Reception<S> {
    pub fn new(policy: Arc<SmtpPolicy>, conn: ConnInfo, store: S) -> Self {
        Reception {
            policy,
            conn,
            store,
            envelope: Envelope::default(),
            message: None,
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    fn open_message(&mut self, helo: &str, protocol: &str) -> Verdict {
        let mut message = match self.store.open() {
            Ok(m) => m,
            Err(reply) => return Verdict::Reject(reply),
        };
        let line = received::smtp_received(&self.conn, helo, protocol, self.store.unix_time());
        self.store.write(&mut message, line.as_bytes());
        self.message = Some(message);
        Verdict::Accept
    }
}

impl<S: MessageStore> SmtpHost for Reception<S> {
    fn decide(&mut self, request: Request) -> Decision {
        Decision::Now(match request {
            Request::Mail { sender, .. } => match self.policy.check_mail(&self.conn, &sender) {
                Ok(sender) => {
                    self.envelope = Envelope {
                        sender,
                        recipients: Vec::new(),
                    };
                    Verdict::Accept
                }
                Err(reply) => Verdict::Reject(reply),
            },
            Request::Rcpt {
                recipient,
                had_source_route,
            } => {
                let checked = self.policy.check_rcpt(
                    &self.conn,
                    &self.envelope.sender,
                    &recipient,
                    had_source_route,
                );
                match checked {
                    Ok(recipient) => {
                        self.envelope.recipients.push(recipient);
                        Verdict::Accept
                    }
                    Err(reply) => Verdict::Reject(reply),
                }
            }
            Request::Data { helo, protocol } => self.open_message(&helo, protocol),
            Request::EndOfData => {
                let Some(message) = self.message.take() else {
                    return Decision::Now(Verdict::Reject(Reply::new(
                        451,
                        "4.3.0",
                        "no message open",
                    )));
                };
                let envelope = std::mem::take(&mut self.envelope);
                return self.store.commit(message, envelope);
            }
        })
    }

    fn message_data(&mut self, data: &[u8]) {
        if let Some(message) = &mut self.message {
            self.store.write(message, data);
        }
    }

    fn abort_message(&mut self) {
        self.message = None;
    }
}

/// A store that keeps committed messages in memory: for tests, the
/// conformance runner and the fuzzers. Its clock is fixed.
#[derive(Debug, Default)]
pub struct MemoryStore {
    pub committed: Vec<(Envelope, Vec<u8>)>,
    pub unix_time: i64,
}

impl MessageStore for MemoryStore {
    type Message = Vec<u8>;

    fn open(&mut self) -> Result<Vec<u8>, Reply> {
        Ok(Vec::new())
    }

    fn write(&mut self, message: &mut Vec<u8>, data: &[u8]) {
        message.extend_from_slice(data);
    }

    fn commit(&mut self, message: Vec<u8>, envelope: Envelope) -> Decision {
        self.committed.push((envelope, message));
        let text = format!("ok {} qp {}", self.unix_time, self.committed.len());
        Decision::Now(Verdict::AcceptWith(Reply::owned(250, "2.0.0", text)))
    }

    fn unix_time(&self) -> i64 {
        self.unix_time
    }
}
