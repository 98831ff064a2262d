//! One shape for both ways of queueing a message, so an SMTP (or QMTP,
//! QMQP, inject) session streams a body without caring which is in use.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::envelope::Envelope;
use crate::external::{qmailqueue_program, External};
use crate::qq::QqError;
use crate::store::{Incoming, Invoker, Queue};

/// Where a server sends every message it accepts; shared by its sessions.
#[derive(Clone, Debug)]
pub enum Target {
    /// The queue, opened once.
    Queue(Queue),
    /// A qmail-queue program, run in `home` for each message.
    Program {
        /// The program (relative names are taken from `home`).
        program: OsString,
        /// QMAILHOME, the program's working directory.
        home: PathBuf,
    },
}

impl Target {
    /// `$QMAILQUEUE` if set (netqmail), else the queue under `home`.
    pub fn from_env(home: &Path) -> Result<Target, QqError> {
        match qmailqueue_program() {
            Some(program) => Ok(Target::Program {
                program,
                home: home.to_owned(),
            }),
            None => Queue::open(home).map(Target::Queue),
        }
    }

    /// Start one message.
    pub fn begin(&self, invoker: Invoker) -> Result<MessageSink, QqError> {
        match self {
            Target::Queue(q) => q.begin(invoker).map(MessageSink::Queue),
            Target::Program { program, home } => {
                External::spawn(program, home).map(MessageSink::External)
            }
        }
    }
}

/// Where an accepted message's bytes go: straight into the queue, or into
/// the `QMAILQUEUE` program.
#[derive(Debug)]
pub enum MessageSink {
    /// In-process injection into the queue.
    Queue(Incoming),
    /// An external qmail-queue program.
    External(External),
}

/// What a successful commit reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The queue's message id (inode number), when queued in-process.
    pub id: Option<u64>,
    /// qmail-smtpd's `qp`: the pid of the injecting qmail-queue.
    pub qp: u32,
}

impl MessageSink {
    /// Append body bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), QqError> {
        match self {
            MessageSink::Queue(q) => q.write(bytes),
            MessageSink::External(x) => x.write(bytes),
        }
    }

    /// Queue the message for `envelope`; success means it is safe to
    /// answer 250.
    pub fn commit(self, envelope: &Envelope) -> Result<Receipt, QqError> {
        match self {
            MessageSink::Queue(q) => {
                let qp = q.qp();
                q.commit(envelope).map(|id| Receipt { id: Some(id), qp })
            }
            MessageSink::External(x) => {
                let qp = x.qp();
                x.commit(envelope).map(|()| Receipt { id: None, qp })
            }
        }
    }

    /// Discard the message (same as dropping the sink).
    pub fn abort(self) {}
}

impl From<Incoming> for MessageSink {
    fn from(i: Incoming) -> Self {
        MessageSink::Queue(i)
    }
}

impl From<External> for MessageSink {
    fn from(x: External) -> Self {
        MessageSink::External(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::create_queue;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn both_sinks_commit() {
        let tmp = tempfile::tempdir().unwrap();
        create_queue(tmp.path(), None).unwrap();
        let q = Queue::open(tmp.path()).unwrap();
        let env = Envelope::new("a@b", vec![b"c@d".to_vec()]);

        let target = Target::Queue(q.clone());
        let mut sink = target.begin(Invoker::Network(1)).unwrap();
        sink.write(b"hi\n").unwrap();
        let r = sink.commit(&env).unwrap();
        assert_eq!(r.qp, std::process::id());
        assert!(r.id.is_some());

        let prog = tmp.path().join("qq");
        std::fs::write(
            &prog,
            "#!/bin/sh\ncat >/dev/null; cat <&1 >/dev/null; exit 0\n",
        )
        .unwrap();
        std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
        let target = Target::Program {
            program: "qq".into(),
            home: tmp.path().to_owned(),
        };
        let mut sink = target.begin(Invoker::Network(1)).unwrap();
        sink.write(b"hi\n").unwrap();
        let r = sink.commit(&env).unwrap();
        assert_eq!(r.id, None);
        assert!(r.qp > 0);

        MessageSink::from(q.begin(Invoker::Network(1)).unwrap()).abort();
    }
}
