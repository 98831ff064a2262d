//! A qmail-send running in this process (as under `sqmail up`, next to its
//! smtpd), found by the servers committing to its queue. A commit wakes it
//! directly instead of writing a byte into `lock/trigger` for the FIFO's
//! reader thread to pass on (three syscalls and a thread hop less per
//! message), and may deliver before queueing with its rules
//! ([`crate::direct`]). A queue is known by the device and inode of its
//! `todo/`, so two spellings of one path are one queue.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::direct::Direct;

/// `todo/`'s device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QueueKey(u64, u64);

impl QueueKey {
    pub(crate) fn of_queue(queue: &Path) -> Option<QueueKey> {
        let meta = std::fs::metadata(queue.join("todo")).ok()?;
        Some(QueueKey(meta.dev(), meta.ino()))
    }
}

/// What a qmail-send running in this process offers the servers beside
/// it.
pub(crate) struct InProcess {
    /// Called for every commit to its queue.
    pub(crate) wake: Box<dyn Fn() + Send + Sync>,
    /// Its rules for delivering before queueing, if it allows that.
    pub(crate) direct: Option<Direct>,
}

type Listener = (u64, QueueKey, Arc<InProcess>);

static LISTENERS: Mutex<Vec<Listener>> = Mutex::new(Vec::new());

/// A listener; dropping it stops the calls.
#[derive(Debug)]
pub(crate) struct Listening(u64);

/// Offer `in_process` to every commit to the queue `key` made in this
/// process: its wake-up then replaces the byte in `lock/trigger`.
pub(crate) fn listen(key: QueueKey, in_process: Arc<InProcess>) -> Listening {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let token = NEXT.fetch_add(1, Ordering::Relaxed);
    listeners().push((token, key, in_process));
    Listening(token)
}

impl Drop for Listening {
    fn drop(&mut self) {
        listeners().retain(|(token, _, _)| *token != self.0);
    }
}

/// The qmail-send of queue `key` in this process, if there is one.
pub(crate) fn in_process(key: QueueKey) -> Option<Arc<InProcess>> {
    listeners()
        .iter()
        .find(|(_, k, _)| *k == key)
        .map(|(_, _, in_process)| Arc::clone(in_process))
}

/// Wake the listener of queue `key` in this process; false if there is
/// none, and the caller pulls `lock/trigger`.
pub(crate) fn notify(key: QueueKey) -> bool {
    match in_process(key) {
        Some(in_process) => {
            (in_process.wake)();
            true
        }
        None => false,
    }
}

fn listeners() -> MutexGuard<'static, Vec<Listener>> {
    // A list of entries, each pushed or removed whole: a panic elsewhere
    // cannot leave it half-changed.
    LISTENERS.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn a_listener_is_called_for_its_queue_only_while_it_listens() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        for q in [&a, &b] {
            std::fs::create_dir_all(q.join("todo")).unwrap();
        }
        let key = QueueKey::of_queue(&a).unwrap();
        let other = QueueKey::of_queue(&b).unwrap();
        // Another spelling of the same queue is the same key.
        assert_eq!(QueueKey::of_queue(&a.join("todo/..")), Some(key));
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let wake = Box::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let listening = listen(key, Arc::new(InProcess { wake, direct: None }));
        assert!(notify(key));
        assert!(!notify(other));
        drop(listening);
        assert!(!notify(key));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
