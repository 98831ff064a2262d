//! Wake-ups within one process: a qmail-send running here (as under
//! `sqmail up`, next to its smtpd) listens, and a commit to the same queue
//! calls it directly instead of writing a byte into `lock/trigger` for the
//! FIFO's reader thread to pass on: three syscalls and a thread hop less
//! per message. A queue is known by the device and inode of its `todo/`,
//! so two spellings of one path are one queue.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// `todo/`'s device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QueueKey(u64, u64);

impl QueueKey {
    pub(crate) fn of_queue(queue: &Path) -> Option<QueueKey> {
        let meta = std::fs::metadata(queue.join("todo")).ok()?;
        Some(QueueKey(meta.dev(), meta.ino()))
    }
}

type Wake = Arc<dyn Fn() + Send + Sync>;

static LISTENERS: Mutex<Vec<(u64, QueueKey, Wake)>> = Mutex::new(Vec::new());

/// A listener; dropping it stops the calls.
#[derive(Debug)]
pub(crate) struct Listening(u64);

/// Have `wake` called for every commit to the queue `key` made in this
/// process, instead of its byte in `lock/trigger`.
pub(crate) fn listen(key: QueueKey, wake: impl Fn() + Send + Sync + 'static) -> Listening {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let token = NEXT.fetch_add(1, Ordering::Relaxed);
    listeners().push((token, key, Arc::new(wake)));
    Listening(token)
}

impl Drop for Listening {
    fn drop(&mut self) {
        listeners().retain(|(token, _, _)| *token != self.0);
    }
}

/// Wake the listener of queue `key` in this process; false if there is
/// none, and the caller pulls `lock/trigger`.
pub(crate) fn notify(key: QueueKey) -> bool {
    let wake = listeners()
        .iter()
        .find(|(_, k, _)| *k == key)
        .map(|(_, _, wake)| Arc::clone(wake));
    match wake {
        Some(wake) => {
            wake();
            true
        }
        None => false,
    }
}

fn listeners() -> MutexGuard<'static, Vec<(u64, QueueKey, Wake)>> {
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
        let listening = listen(key, move || {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        assert!(notify(key));
        assert!(!notify(other));
        drop(listening);
        assert!(!notify(key));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
