//! Carrying out the scheduler's actions on the queue: the writes, local
//! deliveries and bounces. A [`Worker`] turns one [`Action`] into the
//! [`Input`] that answers it, so the daemon can run actions on threads and
//! a test can run them inline with a clock of its own.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;

use sqmail_core::bounce::{self, Bounce, BounceInput, BounceSettings};
use sqmail_core::received::rfc822_date;

use crate::envelope::Envelope;
use crate::local::{self, Verdict};
use crate::scheduler::{Action, BounceRequest, Channel, Input, MessageId, Outcome};
use crate::sink::Target;
use crate::spool::{Spool, TodoError};
use crate::store::Invoker;

/// The report for a remote recipient while remote delivery is held; the
/// scheduler never starts one then, but an answer must exist.
const NO_REMOTE: &str = "Remote delivery is not available in this version of sqmail. (#4.3.0)";

/// Everything needed to carry out actions. Cheap to clone, one per thread.
#[derive(Clone, Debug)]
pub struct Worker {
    spool: Spool,
    home: PathBuf,
    default_delivery: Vec<u8>,
    bounce: BounceSettings,
    /// Where forwards and bounces are queued (`$QMAILQUEUE` honoured).
    target: Target,
    uid: u32,
}

/// What one action came to: the scheduler's answer, and a line for the
/// log when something went wrong that the scheduler's own line won't say.
#[derive(Debug)]
pub struct Answer {
    pub input: Input,
    pub warning: Option<String>,
}

impl Answer {
    pub(crate) fn ok(input: Input) -> Self {
        Answer {
            input,
            warning: None,
        }
    }
}

impl Worker {
    pub fn new(
        spool: Spool,
        home: PathBuf,
        default_delivery: Vec<u8>,
        bounce: BounceSettings,
    ) -> Result<Worker, crate::QqError> {
        let target = Target::from_env(&home)?;
        Ok(Worker {
            spool,
            home,
            default_delivery,
            bounce,
            target,
            // SAFETY: getuid has no preconditions.
            uid: unsafe { libc::getuid() },
        })
    }

    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Carries out `action` at time `now`. `Log` has no answer.
    pub fn perform(&self, action: Action, now: u64) -> Option<Answer> {
        Some(match action {
            Action::Log(_) => return None,
            Action::Preprocess {
                ticket,
                id,
                sender,
                birth,
                recipients,
                done,
            } => written(
                ticket,
                id,
                self.spool
                    .preprocess(id, &sender, birth, &recipients, &done),
            ),
            Action::MarkDone {
                ticket,
                id,
                channel,
                index,
                failure,
            } => written(
                ticket,
                id,
                self.spool.mark_done(id, channel, index, failure.as_ref()),
            ),
            Action::RemoveMessage { ticket, id } => written(ticket, id, self.spool.remove(id)),
            Action::StartDelivery {
                delivery,
                id,
                channel,
                sender,
                recipient,
            } => {
                let (outcome, report) = match channel {
                    Channel::Local => self.deliver_local(id, &sender, &recipient, now),
                    Channel::Remote => (Outcome::Deferral, NO_REMOTE.as_bytes().to_vec()),
                };
                Answer::ok(Input::DeliveryResult {
                    delivery,
                    outcome,
                    report,
                })
            }
            Action::InjectBounce(request) => match self.inject_bounce(&request, now) {
                Ok(qp) => Answer::ok(Input::BounceInjected { id: request.id, qp }),
                Err(e) => Answer {
                    input: Input::BounceFailed { id: request.id },
                    warning: Some(format!("warning: bounce of msg {}: {e}", request.id)),
                },
            },
        })
    }

    /// qmail-lspawn and qmail-local for one recipient, then its forwards.
    fn deliver_local(
        &self,
        id: MessageId,
        sender: &[u8],
        recipient: &[u8],
        now: u64,
    ) -> (Outcome, Vec<u8>) {
        let message = self.spool.message_path(id);
        let request = local::Request {
            qmail_home: &self.home,
            message: &message,
            sender,
            recipient,
            default_delivery: &self.default_delivery,
            now,
            maildir_only: false,
        };
        let out = local::deliver(&request);
        let out = local::finish(out, &self.target, &message);
        let outcome = match out.verdict {
            Verdict::Success => Outcome::Success,
            Verdict::Deferral => Outcome::Deferral,
            Verdict::Failure => Outcome::Failure,
        };
        (outcome, out.report.into_bytes())
    }

    /// qmail-send's `injectbounce`: compose, queue with the original (or
    /// its first `bouncemaxbytes`) streamed from `mess/N`, drop `bounce/N`.
    fn inject_bounce(&self, request: &BounceRequest, now: u64) -> Result<u32, String> {
        let path = self.spool.message_path(request.id);
        let mut message = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let len = message.metadata().map_err(|e| e.to_string())?.len();
        let failures: Vec<bounce::Failure> = request
            .failures
            .iter()
            .map(|f| bounce::Failure {
                recipient: String::from_utf8_lossy(&f.recipient).into_owned(),
                report: String::from_utf8_lossy(&f.report).into_owned(),
            })
            .collect();
        let sender = String::from_utf8_lossy(&request.original_sender);
        let date = rfc822_date(now as i64);
        let input = BounceInput {
            sender: &sender,
            failures: &failures,
            date: &date,
            message_len: len,
        };
        let qp = match bounce::compose(&input, &self.bounce) {
            Bounce::Discard => 0,
            Bounce::Send(composed) => {
                let qq = |e: crate::QqError| e.text().to_string();
                let mut sink = self.target.begin(Invoker::Bounce(self.uid)).map_err(qq)?;
                sink.write(&composed.prefix).map_err(qq)?;
                let mut left = composed.copy_len;
                let mut buf = vec![0u8; 64 * 1024];
                while left > 0 {
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let n = match message.read(&mut buf[..want]) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(format!("{}: {e}", path.display())),
                    };
                    sink.write(&buf[..n]).map_err(qq)?;
                    left -= n as u64;
                }
                let envelope =
                    Envelope::new(composed.sender, vec![composed.recipient.into_bytes()]);
                sink.commit(&envelope).map_err(qq)?.qp
            }
        };
        // Queued: a failure to remove bounce/N now can only repeat the
        // bounce after a restart, never lose it.
        let _ = self.spool.remove_bounce(request.id);
        Ok(qp)
    }

    /// Messages in `todo/` that are not in `known`, as the scheduler's
    /// inputs; corrupt ones are removed and reported.
    pub fn intake(&self, known: &HashSet<MessageId>) -> (Vec<(MessageId, Input)>, Vec<String>) {
        let mut inputs = Vec::new();
        let mut warnings = Vec::new();
        let ids = match self.spool.todo() {
            Ok(ids) => ids,
            Err(e) => {
                warnings.push(format!("warning: unable to scan todo: {e}"));
                return (inputs, warnings);
            }
        };
        for id in ids.into_iter().filter(|id| !known.contains(id)) {
            match self.spool.read_todo(id) {
                Ok(todo) => inputs.push((
                    id,
                    Input::NewMessage {
                        id,
                        sender: todo.sender,
                        recipients: todo.recipients,
                        qp: todo.qp,
                        uid: todo.uid,
                        bytes: todo.bytes,
                    },
                )),
                Err(TodoError::Corrupt(why)) => {
                    warnings.push(format!("warning: discarding todo/{id}: {why}"));
                    if let Err(e) = self.spool.discard_todo(id) {
                        warnings.push(format!("warning: unable to remove todo/{id}: {e}"));
                    }
                }
                // Possibly an injection still being linked; next scan.
                Err(TodoError::Io(e)) => {
                    warnings.push(format!("warning: trouble reading todo/{id}: {e}"))
                }
            }
        }
        (inputs, warnings)
    }
}

fn written(ticket: crate::scheduler::Ticket, id: MessageId, r: io::Result<()>) -> Answer {
    match r {
        Ok(()) => Answer::ok(Input::Written(ticket)),
        Err(e) => Answer {
            input: Input::WriteFailed(ticket),
            warning: Some(format!("warning: msg {id}: {e}")),
        },
    }
}
