//! Remote deliveries: the scheduler starts them one recipient at a time,
//! as qmail-send does; the daemon hands recipients of one message that go
//! to one domain with one return path, started together, to the transport
//! as one job, so they travel in one SMTP transaction. Each keeps its own
//! delivery number, slot and log lines, so qmail-send's log reads as
//! before.
//!
//! The transport (qmail-remote: routes, DNS, the SMTP client, connection
//! reuse) lives where the runtimes are, in `bins/`; this crate only needs
//! the interface.

use std::fs::File;

use crate::scheduler::{Input, MessageId, Outcome};
use crate::spool::Spool;

/// RFC 5321 section 4.5.3.1.8: a server must take at least 100 recipients
/// per message, so no job has more.
pub const MAX_JOB_RECIPIENTS: usize = 100;

/// One SMTP transaction's worth of deliveries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteJob {
    pub id: MessageId,
    /// The return path (after VERP expansion: the same for every recipient).
    pub sender: Vec<u8>,
    /// The recipients' domain, lower case (empty for an address without `@`).
    pub domain: Vec<u8>,
    /// `(delivery number, recipient)`, in the order the scheduler started them.
    pub recipients: Vec<(u64, Vec<u8>)>,
}

/// One recipient's result: qmail-rspawn's view of qmail-remote's report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteResult {
    pub outcome: Outcome,
    /// The text for the log and, on failure, the bounce.
    pub report: Vec<u8>,
}

/// Delivers jobs to other hosts.
pub trait Transport: Send + Sync {
    /// Delivers `message` (`mess/N`, opened, at its start) for every
    /// recipient of `job`; returns exactly one result per recipient, in
    /// order.
    fn deliver(&self, job: &RemoteJob, message: File) -> Vec<RemoteResult>;
}

/// The domain part of an address, lower case, as jobs are keyed.
pub fn domain_of(recipient: &[u8]) -> Vec<u8> {
    match recipient.iter().rposition(|&b| b == b'@') {
        Some(at) => recipient[at + 1..].to_ascii_lowercase(),
        None => Vec::new(),
    }
}

/// Gathers deliveries started together into jobs: one per message, return
/// path and domain, at most [`MAX_JOB_RECIPIENTS`] each, in start order.
#[derive(Debug, Default)]
pub struct Batcher {
    jobs: Vec<RemoteJob>,
}

impl Batcher {
    pub fn add(&mut self, delivery: u64, id: MessageId, sender: Vec<u8>, recipient: Vec<u8>) {
        let domain = domain_of(&recipient);
        let open = self.jobs.iter_mut().find(|j| {
            j.id == id
                && j.sender == sender
                && j.domain == domain
                && j.recipients.len() < MAX_JOB_RECIPIENTS
        });
        match open {
            Some(job) => job.recipients.push((delivery, recipient)),
            None => self.jobs.push(RemoteJob {
                id,
                sender,
                domain,
                recipients: vec![(delivery, recipient)],
            }),
        }
    }

    /// The jobs gathered so far, emptying the batcher.
    pub fn take(&mut self) -> Vec<RemoteJob> {
        std::mem::take(&mut self.jobs)
    }
}

/// Carries out one job: the scheduler's answers, one per recipient.
pub fn perform(transport: &dyn Transport, spool: &Spool, job: &RemoteJob) -> Vec<Input> {
    let results = match File::open(spool.message_path(job.id)) {
        Ok(message) => transport.deliver(job, message),
        Err(e) => Vec::from([RemoteResult {
            outcome: Outcome::Deferral,
            report: format!("Unable to open msg {}: {e}. (#4.3.0)", job.id).into_bytes(),
        }]),
    };
    let missing = RemoteResult {
        outcome: Outcome::Deferral,
        report: b"The transport gave no result for this recipient. (#4.3.0)".to_vec(),
    };
    // A single result (the message could not be read) stands for all.
    let all = (results.len() == 1).then(|| results[0].clone());
    job.recipients
        .iter()
        .enumerate()
        .map(|(i, &(delivery, _))| {
            let r = results.get(i).or(all.as_ref()).unwrap_or(&missing).clone();
            Input::DeliveryResult {
                delivery,
                outcome: r.outcome,
                report: r.report,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_group_by_message_sender_and_domain() {
        let mut b = Batcher::default();
        b.add(1, 7, b"s@x".to_vec(), b"a@Example.org".to_vec());
        b.add(2, 7, b"s@x".to_vec(), b"b@other.org".to_vec());
        b.add(3, 7, b"s@x".to_vec(), b"c@example.ORG".to_vec());
        b.add(4, 8, b"s@x".to_vec(), b"d@example.org".to_vec());
        // VERP gives each recipient its own return path: its own job.
        b.add(
            5,
            7,
            b"s-c=example.org@x".to_vec(),
            b"e@example.org".to_vec(),
        );
        let jobs = b.take();
        let shape: Vec<(u64, &[u8], Vec<u64>)> = jobs
            .iter()
            .map(|j| {
                (
                    j.id,
                    &j.domain[..],
                    j.recipients.iter().map(|r| r.0).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                (7, &b"example.org"[..], vec![1, 3]),
                (7, b"other.org", vec![2]),
                (8, b"example.org", vec![4]),
                (7, b"example.org", vec![5]),
            ]
        );
        assert!(b.take().is_empty());
    }

    #[test]
    fn a_job_holds_at_most_a_hundred_recipients() {
        let mut b = Batcher::default();
        for d in 0..250 {
            b.add(d, 1, Vec::new(), format!("u{d}@x.org").into_bytes());
        }
        let sizes: Vec<usize> = b.take().iter().map(|j| j.recipients.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
    }

    #[test]
    fn domains() {
        assert_eq!(domain_of(b"a@b@C.d"), b"c.d");
        assert_eq!(domain_of(b"postmaster"), b"");
    }
}
