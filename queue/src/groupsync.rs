//! Group commit for directory `fsync`s: the queue writer's commits and
//! qmail-send's removals each make an entry in `todo/` durable before they
//! answer, many at a time on different threads. One `fsync` of a directory
//! covers every change made in it before the `fsync` began, so a caller
//! that finds one running waits for the next, which then covers everyone
//! who arrived meanwhile: under load, one `fsync` (and one device flush)
//! serves a batch instead of one each.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};

use crate::sys;

#[derive(Debug)]
pub(crate) struct GroupSync {
    dir: OwnedFd,
    path: PathBuf,
    state: Mutex<State>,
    finished: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Syncs begun, and finished, counted from 1.
    started: u64,
    done: u64,
    running: bool,
    /// The last sync that failed, with its error.
    failed: Option<(u64, io::ErrorKind, String)>,
}

impl GroupSync {
    /// The one `GroupSync` of this process for the directory at `path`
    /// (keyed by the path as given), opened on first use.
    pub(crate) fn shared(path: &Path) -> io::Result<Arc<GroupSync>> {
        static ALL: OnceLock<Mutex<HashMap<PathBuf, Weak<GroupSync>>>> = OnceLock::new();
        let mut all = ALL
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(sync) = all.get(path).and_then(Weak::upgrade) {
            return Ok(sync);
        }
        all.retain(|_, w| w.strong_count() > 0);
        let sync = Arc::new(GroupSync {
            dir: sys::open_dir(path)?,
            path: path.to_path_buf(),
            state: Mutex::default(),
            finished: Condvar::new(),
        });
        all.insert(path.to_path_buf(), Arc::downgrade(&sync));
        Ok(sync)
    }

    /// Returns once every change made in the directory before this call
    /// is durable: after an `fsync` that began after the call, by this
    /// thread or another. An error of that `fsync` (or of any later one
    /// finished meanwhile, to be safe) is everyone's.
    pub(crate) fn sync(&self) -> io::Result<()> {
        let mut state = self.lock();
        let need = state.started + 1;
        loop {
            if state.done >= need {
                return match &state.failed {
                    Some((at, kind, text)) if *at >= need => {
                        Err(io::Error::new(*kind, text.clone()))
                    }
                    _ => Ok(()),
                };
            }
            if !state.running {
                state.running = true;
                state.started += 1;
                let this = state.started;
                drop(state);
                let result = sys::fsync(self.dir.as_fd())
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.path.display())));
                let mut state = self.lock();
                state.running = false;
                state.done = this;
                if let Err(e) = &result {
                    state.failed = Some((this, e.kind(), e.to_string()));
                }
                self.finished.notify_all();
                return result;
            }
            state = self.finished.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The directory, open.
    pub(crate) fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    #[test]
    fn one_per_directory_and_concurrent_callers_share_syncs() {
        let tmp = tempfile::tempdir().unwrap();
        let a = GroupSync::shared(tmp.path()).unwrap();
        let b = GroupSync::shared(tmp.path()).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let s = Arc::clone(&a);
                std::thread::spawn(move || (0..50).try_for_each(|_| s.sync()))
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        let state = a.lock();
        assert!(!state.running);
        assert_eq!(state.done, state.started);
        assert!(state.started <= 400, "at most one sync per call");
    }

    #[test]
    fn a_sync_begun_before_the_call_is_not_enough() {
        let tmp = tempfile::tempdir().unwrap();
        let s = GroupSync::shared(tmp.path()).unwrap();
        // Pretend a sync is running; a caller must wait for the next one.
        s.lock().running = true;
        s.lock().started = 1;
        let waiter = {
            let s = Arc::clone(&s);
            std::thread::spawn(move || s.sync())
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        {
            let mut state = s.lock();
            state.running = false;
            state.done = 1;
        }
        s.finished.notify_all();
        waiter.join().unwrap().unwrap();
        assert_eq!(s.lock().done, 2, "the waiter ran a sync of its own");
    }

    #[test]
    fn a_failed_sync_is_an_error_with_the_path() {
        // fsync(2) of a pipe fails (EINVAL): the error path for real.
        let mut fds = [0; 2];
        // SAFETY: a valid two-int array for pipe(2).
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just made and are ours alone.
        let (r, _w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let s = GroupSync {
            dir: r,
            path: PathBuf::from("pipe"),
            state: Mutex::default(),
            finished: Condvar::new(),
        };
        let e = s.sync().unwrap_err();
        assert!(e.to_string().starts_with("pipe: "), "{e}");
        assert!(s.sync().is_err(), "the next caller tries again, and fails");
        let state = s.lock();
        assert_eq!((state.started, state.done, state.running), (2, 2, false));
        assert_eq!(state.failed.as_ref().map(|f| f.0), Some(2));
    }
}
