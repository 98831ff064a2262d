//! Delivery before queueing. Where qmail-send runs in the same process as
//! the server taking the message (`sqmail up`), a message
//! for one local recipient whose `.qmail` (or the default delivery) names
//! only Maildirs is delivered while its sender waits for the 250, and is
//! never queued.
//!
//! Why: through the queue a message costs five fsyncs of its own (the
//! message, its envelope, `mess/`, `todo/`, and `todo/` again at its
//! removal) besides the delivery's two, and a trip through qmail-send's
//! scheduler and threads. Delivered here it costs the delivery's two.
//!
//! What stays the same: the 250 still follows an fsync, of the Maildir
//! file and of `new/` instead of the queue's files, so an accepted message
//! survives a crash as before; the delivered message is byte for byte what
//! qmail-local would have written from the queue; and qmail-send logs it
//! (`new msg`, `info msg`, `starting delivery`, `delivery N: success`,
//! `end msg`), numbered among its own deliveries. Anything else goes into
//! the queue as it always did, before any instruction has run: more
//! recipients, a remote one, a `.qmail` with programs, forwards or mbox
//! files; and any message while `concurrencylocal` such deliveries are
//! under way. A delivery that defers or fails is queued too, and
//! qmail-send tries it again (and bounces it if it fails again), as it
//! would retry a deferral of its own.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::envelope::Envelope;
use crate::local::{self, Verdict};
use crate::scheduler::{return_path, Channel, DirectDelivery, Rewriter};
use crate::send::{unix_now, Control, Handle};
use crate::store::Incoming;

/// What became of a message offered for delivery before queueing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// Not delivered: queue it.
    No,
    /// In the mailbox, and qmail-send has its record: it logs the message
    /// and then removes `mess/N`, so that N is nobody else's id before its
    /// lines are written.
    Logged,
    /// In the mailbox, but qmail-send stopped meanwhile: only its log lines
    /// are missing, and `mess/N` is the caller's to remove.
    Unlogged,
}

/// The rules a qmail-send lends the servers of its process.
pub(crate) struct Direct {
    home: PathBuf,
    default_delivery: Vec<u8>,
    /// qmail-send's current `locals` and `virtualdomains`.
    rewriter: Mutex<Rewriter>,
    /// Where the log record goes.
    send: Handle,
    /// Deliveries under way here, at most `limit` (qmail-send's
    /// `concurrencylocal`, which its own deliveries keep to as well):
    /// beyond it a message is queued.
    in_flight: AtomicUsize,
    limit: usize,
}

impl Direct {
    pub(crate) fn new(
        home: PathBuf,
        default_delivery: Vec<u8>,
        rewriter: Rewriter,
        send: Handle,
        limit: usize,
    ) -> Direct {
        Direct {
            home,
            default_delivery,
            rewriter: Mutex::new(rewriter),
            send,
            in_flight: AtomicUsize::new(0),
            limit,
        }
    }

    /// New rewriting rules, as qmail-send's on SIGHUP.
    pub(crate) fn set_rewriter(&self, rewriter: Rewriter) {
        *self.rewriter() = rewriter;
    }

    /// Delivers `message` if it qualifies.
    pub(crate) fn deliver(&self, message: &mut Incoming, envelope: &Envelope) -> Delivered {
        let [recipient] = envelope.recipients.as_slice() else {
            return Delivered::No;
        };
        let (channel, local) = self.rewriter().classify(recipient);
        if channel != Channel::Local {
            return Delivered::No;
        }
        let Some(_slot) = self.slot() else {
            return Delivered::No;
        };
        if message.complete().is_err() {
            return Delivered::No;
        }
        let path = message.path();
        let sender = return_path(&envelope.sender, &local);
        let request = local::Request {
            qmail_home: &self.home,
            message: &path,
            sender: &sender,
            recipient: &local,
            default_delivery: &self.default_delivery,
            now: unix_now(),
            maildir_only: true,
        };
        let out = local::deliver(&request);
        if out.verdict != Verdict::Success || out.forward.is_some() {
            return Delivered::No;
        }
        let logged = self.send.send(Control::Delivered(DirectDelivery {
            id: message.id(),
            sender: envelope.sender.clone(),
            recipient: local,
            bytes: message.size(),
            qp: message.qp(),
            uid: message.uid(),
            report: out.report.into_bytes(),
        }));
        if logged {
            Delivered::Logged
        } else {
            Delivered::Unlogged
        }
    }

    /// One of the `limit` deliveries, held until dropped.
    fn slot(&self) -> Option<Slot<'_>> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(&self.in_flight))
    }

    fn rewriter(&self) -> MutexGuard<'_, Rewriter> {
        // Replaced whole: a panic elsewhere cannot leave it half-changed.
        self.rewriter.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
