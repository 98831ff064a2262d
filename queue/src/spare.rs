//! Spare files: the files of removed messages (`mess/N`, `intd/N`,
//! `info/N`, `local/N`, `remote/N`) kept in `queue/spare/` (mode 0700, so
//! their old contents stay unreadable to others) and renamed into place
//! for the next message, instead of being freed and created again.
//!
//! Why: qmail's layout costs four new files per message, and creating a
//! file is what the kernel makes expensive under load. On ext4 without a
//! journal (common on VMs) each new inode is found by scanning past every
//! inode of its block group freed in the last one to six minutes, so at a
//! few hundred messages a second the scans cost more CPU than everything
//! else sqmail does. A
//! spare is never freed and never allocated; on every filesystem it saves
//! the inode's allocation and release.
//!
//! Nothing else reads `spare/`: qmail-send, qmail-qread and the cleanup pass
//! ignore it, and deleting it (or any file in it) at any time is harmless.

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::sys;

/// At most this many spares are kept (each a small file, usually one
/// block); a removal beyond it deletes.
pub const MAX_SPARES: usize = 1024;

/// How often an empty pool looks in `spare/` for what another process
/// (a separate qmail-send) kept.
const REFILL_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct Spares {
    dir: PathBuf,
    /// `dir`, open, for [`Spares::claim`].
    fd: OwnedFd,
    /// This process's pid and euid, read once: a removal asks for them
    /// twice per file, and only the process that opened the pool keeps
    /// (a delivery forked from it queues nothing itself).
    pid: u32,
    euid: u32,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Names in `dir` free for the taking.
    names: Vec<String>,
    last_refill: Option<Instant>,
}

impl Spares {
    /// The pool of `queue/spare/` (made, mode 0700, if missing), shared by
    /// everything in this process that opens the same queue, so that what
    /// qmail-send keeps the queue writer takes. `None` if it cannot be made
    /// or read: then files are simply created and deleted.
    pub(crate) fn open(queue: &Path) -> Option<Arc<Spares>> {
        static POOLS: OnceLock<Mutex<HashMap<PathBuf, Arc<Spares>>>> = OnceLock::new();
        let dir = queue.join("spare");
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(_) => return None,
        }
        let key = fs::canonicalize(&dir).ok()?;
        let mut pools = POOLS
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = pools.get(&key) {
            return Some(pool.clone());
        }
        let names = list(&dir)?;
        let fd = sys::open_dir(&dir).ok()?;
        let pool = Arc::new(Spares {
            dir,
            fd,
            pid: std::process::id(),
            // SAFETY: geteuid has no preconditions.
            euid: unsafe { libc::geteuid() },
            state: Mutex::new(State {
                names,
                last_refill: Some(Instant::now()),
            }),
        });
        pools.insert(key, pool.clone());
        Some(pool)
    }

    /// Puts a spare at `path` (replacing any file there); says whether it
    /// did. Its contents and mode are stale: the caller overwrites,
    /// truncates and sets the mode.
    pub(crate) fn take(&self, path: &Path) -> bool {
        loop {
            let Some(name) = self.next_name() else {
                return false;
            };
            if fs::rename(self.dir.join(name), path).is_ok() {
                return true;
            }
            // Taken by another process, or spare/ was cleared: the next.
        }
    }

    /// A spare opened for writing with `mode`, and its metadata from
    /// before, which `place` has moved out of `spare/` (it gets the
    /// directory, the spare's name there and the metadata, so it can name
    /// the destination after the inode). A spare another process took
    /// meanwhile (`place` fails with NotFound) makes way for the next;
    /// `None` when there is none left or `place` failed otherwise, which
    /// leaves that spare in the pool.
    pub(crate) fn claim(
        &self,
        mode: u32,
        mut place: impl FnMut(BorrowedFd<'_>, &CStr, &Metadata) -> io::Result<()>,
    ) -> Option<(File, Metadata)> {
        loop {
            let name = sys::name(self.next_name()?).ok()?;
            // Gone (taken by another process), or not ours: the next.
            let Ok((file, meta)) = sys::reuse_at(self.fd.as_fd(), &name, mode) else {
                continue;
            };
            match place(self.fd.as_fd(), &name, &meta) {
                Ok(()) => return Some((file, meta)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(_) => {
                    self.lock().names.push(name.into_string().ok()?);
                    return None;
                }
            }
        }
    }

    /// Removes `path` by keeping it as a spare, or deletes it when there
    /// are enough or it is not ours (whoever takes a spare here runs as
    /// we do); says whether there was a file. Its mode stays, and the
    /// taker sets the one it needs: a chmod here would change the inode,
    /// which the taker's fdatasync would then write out.
    pub(crate) fn keep(&self, path: &Path) -> io::Result<bool> {
        if self.lock().names.len() >= MAX_SPARES {
            return unlink(path);
        }
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_file() && meta.uid() == self.euid => {}
            Ok(_) => return unlink(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(_) => return unlink(path),
        }
        // Unique between processes (pid) and within one (counter).
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = format!("{}.{}", self.pid, SEQ.fetch_add(1, Ordering::Relaxed));
        match fs::rename(path, self.dir.join(&name)) {
            Ok(()) => {
                self.lock().names.push(name);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(_) => unlink(path),
        }
    }

    fn next_name(&self) -> Option<String> {
        let mut state = self.lock();
        if state.names.is_empty()
            && state
                .last_refill
                .is_none_or(|t| t.elapsed() >= REFILL_EVERY)
        {
            state.last_refill = Some(Instant::now());
            state.names = list(&self.dir).unwrap_or_default();
        }
        state.names.pop()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a list of names: a panic elsewhere cannot leave it
        // half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The names in `dir`, at most [`MAX_SPARES`].
fn list(dir: &Path) -> Option<Vec<String>> {
    let names = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .take(MAX_SPARES)
        .collect();
    Some(names)
}

/// Remove `path`; says whether there was one to remove.
pub(crate) fn unlink(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_kept_file_comes_back_elsewhere_with_its_inode() {
        let tmp = tempfile::tempdir().unwrap();
        let spares = Spares::open(tmp.path()).unwrap();
        let a = tmp.path().join("a");
        fs::write(&a, "old").unwrap();
        let ino = std::os::unix::fs::MetadataExt::ino(&fs::metadata(&a).unwrap());
        assert!(spares.keep(&a).unwrap());
        assert!(!a.exists());
        assert!(!spares.keep(&a).unwrap(), "nothing there any more");
        let b = tmp.path().join("b");
        assert!(spares.take(&b));
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(&b).unwrap()),
            ino
        );
        assert!(!spares.take(&a), "no spare left");
    }

    #[test]
    fn spares_survive_a_restart_and_a_cleared_directory_is_harmless() {
        let tmp = tempfile::tempdir().unwrap();
        let spares = Spares::open(tmp.path()).unwrap();
        for name in ["a", "b"] {
            let path = tmp.path().join(name);
            fs::write(&path, name).unwrap();
            spares.keep(&path).unwrap();
        }
        // As another process would see them.
        let again = Spares {
            dir: spares.dir.clone(),
            fd: sys::open_dir(&spares.dir).unwrap(),
            pid: spares.pid,
            euid: spares.euid,
            state: Mutex::new(State {
                names: list(&spares.dir).unwrap(),
                last_refill: None,
            }),
        };
        let mut names = again.lock().names.clone();
        names.sort();
        assert_eq!(names.len(), 2);
        fs::remove_file(tmp.path().join("spare").join(&names[1])).unwrap();
        let c = tmp.path().join("c");
        assert!(again.take(&c), "skips the missing spare, takes the other");
        assert_eq!(fs::read(&c).unwrap(), b"a");
        assert!(!again.take(&c));
        assert!(Arc::ptr_eq(&spares, &Spares::open(tmp.path()).unwrap()));
    }

    #[test]
    fn a_claim_skips_spares_taken_meanwhile_and_keeps_one_it_could_not_place() {
        let tmp = tempfile::tempdir().unwrap();
        let spares = Spares::open(tmp.path()).unwrap();
        for name in ["a", "b", "c"] {
            let path = tmp.path().join(name);
            fs::write(&path, name).unwrap();
            spares.keep(&path).unwrap();
        }
        let here = sys::open_dir(tmp.path()).unwrap();
        let to_dest = |dir: BorrowedFd<'_>, name: &CStr| {
            sys::rename_noreplace_at(dir, name, here.as_fd(), c"dest")
        };
        let mut tries = 0;
        let file = spares.claim(0o644, |dir, name, _| {
            tries += 1;
            if tries == 1 {
                // Another process took it between the open and the rename.
                sys::unlink_at(dir, name)?;
            }
            to_dest(dir, name)
        });
        assert!(file.is_some());
        assert_eq!(tries, 2);
        assert_eq!(mode_of(&tmp.path().join("dest")), 0o644);
        // A destination that exists: the spare stays in the pool.
        let left = spares.lock().names.len();
        assert!(spares
            .claim(0o644, |dir, name, _| to_dest(dir, name))
            .is_none());
        assert_eq!(spares.lock().names.len(), left);
        assert_eq!(fs::read_dir(tmp.path().join("spare")).unwrap().count(), 1);
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn beyond_the_limit_removal_deletes() {
        let tmp = tempfile::tempdir().unwrap();
        let spares = Spares::open(tmp.path()).unwrap();
        spares.lock().names = vec![String::new(); MAX_SPARES];
        let a = tmp.path().join("a");
        fs::write(&a, "x").unwrap();
        assert!(spares.keep(&a).unwrap());
        assert!(!a.exists());
        assert_eq!(fs::read_dir(tmp.path().join("spare")).unwrap().count(), 0);
    }
}
