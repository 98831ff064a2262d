//! The queue on disk, in qmail 1.03's layout and write order.
//!
//! A message enters as qmail-queue puts it there: a fresh `pid/` file whose
//! inode number N becomes the message id, linked to `mess/N%split/N` (or a
//! file qmail-send removed, kept in `spare/`, renamed straight to
//! `mess/N%split/N` after its inode); the
//! Received line and body go into it; the envelope goes into `intd/N`; and
//! the link `todo/N` commits it. qmail-send (or our scheduler) only ever
//! looks at `todo/`, so until that link exists nothing is deliverable, and a
//! crash leaves only files that qmail-send's cleanup removes after 36 hours.
//!
//! Durability goes beyond qmail 1.03: before `todo/N` is linked, the message
//! data, the envelope and the `mess/` directory entry are on disk, and after
//! it the `todo/` directory is synced, so the caller may answer 250 knowing
//! the message survives a power failure.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sqmail_core::received;

use crate::direct::Delivered;
use crate::envelope::Envelope;
use crate::groupsync::GroupSync;
use crate::qq::QqError;
use crate::spare::Spares;
use crate::sys;
use crate::wake::{self, QueueKey};

/// qmail's default `conf-split`.
pub const DEFAULT_SPLIT: u64 = 23;

/// Largest split [`Queue::open`] looks for; qmail sites use small primes.
pub(crate) const MAX_SPLIT: u64 = 1000;

/// Body bytes kept in memory before a `write(2)`; a typical message is
/// written with one call at commit.
const BUFFER: usize = 64 * 1024;

/// qmail-queue runs with umask 033: queue files are 0644.
const FILE_MODE: u32 = 0o644;

/// pid/ file names must differ between concurrent injections of one
/// process, which share pid and second; qmail's 1..9 retry is not enough.
static SEQ: AtomicU64 = AtomicU64::new(1);

/// Who is injecting: decides the wording of the Received line. The uid is
/// recorded in the envelope (`u<uid>`) either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invoker {
    /// An ordinary user: "invoked by uid N".
    User(u32),
    /// The `alias` user (qmail-local forwarding): "invoked by alias".
    Alias(u32),
    /// `qmaild` (smtpd, qmtpd, qmqpd): "invoked from network".
    Network(u32),
    /// `qmails` (bounces from qmail-send): "invoked for bounce".
    Bounce(u32),
}

impl Invoker {
    /// The wording core's Received formatter needs.
    fn received(self) -> received::Invoker {
        match self {
            Invoker::User(uid) => received::Invoker::Uid(uid),
            Invoker::Alias(_) => received::Invoker::Alias,
            Invoker::Network(_) => received::Invoker::Network,
            Invoker::Bounce(_) => received::Invoker::Bounce,
        }
    }

    /// The uid written into the envelope.
    pub fn uid(self) -> u32 {
        match self {
            Invoker::User(u) | Invoker::Alias(u) | Invoker::Network(u) | Invoker::Bounce(u) => u,
        }
    }

    /// Classify `uid` as qmail-queue does, given the uids of `alias`,
    /// `qmaild` and `qmails` where those users exist.
    pub fn classify(
        uid: u32,
        alias: Option<u32>,
        qmaild: Option<u32>,
        qmails: Option<u32>,
    ) -> Self {
        if Some(uid) == alias {
            Invoker::Alias(uid)
        } else if Some(uid) == qmaild {
            Invoker::Network(uid)
        } else if Some(uid) == qmails {
            Invoker::Bounce(uid)
        } else {
            Invoker::User(uid)
        }
    }
}

/// An open queue: `QMAILHOME/queue` and the directories an injection writes.
/// Cheap to clone and safe to share between threads.
#[derive(Clone, Debug)]
pub struct Queue {
    dirs: Arc<Dirs>,
}

#[derive(Debug)]
struct Dirs {
    root: PathBuf,
    split: u64,
    pid: OwnedFd,
    intd: OwnedFd,
    /// `todo/` and the `mess/` subdirectories, open, with their fsyncs
    /// shared by everything in this process that writes there.
    todo: Arc<GroupSync>,
    mess: Vec<Arc<GroupSync>>,
    lock: Option<OwnedFd>,
    /// For a qmail-send in this process to be woken directly.
    key: Option<QueueKey>,
    /// Files qmail-send removed, to be reused for `mess/` and `intd/`.
    spares: Option<Arc<Spares>>,
}

impl Queue {
    /// Open `qmail_home/queue`, failing with qmail-queue's code for the
    /// first missing piece (61 home, 62 queue, 63 pid, 64 mess, 65 intd,
    /// 66 todo). The split is read from the `mess/` subdirectories, so a
    /// queue built with another `conf-split` keeps working. A missing
    /// `lock/` only means nobody is woken up.
    pub fn open(qmail_home: &Path) -> Result<Queue, QqError> {
        let err = |code| move |_| QqError::new(code);
        let home = sys::open_dir(qmail_home).map_err(err(QqError::HOME))?;
        let root = qmail_home.join("queue");
        let queue = sys::open_dir_at(home.as_fd(), c"queue").map_err(err(QqError::QUEUE_DIR))?;
        let sub =
            |name: &std::ffi::CStr, code| sys::open_dir_at(queue.as_fd(), name).map_err(err(code));
        let pid = sub(c"pid", QqError::PID)?;
        let mess_dir = sub(c"mess", QqError::MESS)?;
        let intd = sub(c"intd", QqError::INTD)?;
        let todo = GroupSync::shared(&root.join("todo")).map_err(err(QqError::TODO))?;
        let lock = sub(c"lock", QqError::QUEUE_DIR).ok();
        // The split is how many subdirectories open; each is then shared.
        let split = open_split(mess_dir.as_fd(), MAX_SPLIT).len();
        if split == 0 {
            return Err(QqError::new(QqError::MESS));
        }
        let mess = (0..split)
            .map(|k| GroupSync::shared(&root.join("mess").join(k.to_string())))
            .collect::<io::Result<_>>()
            .map_err(err(QqError::MESS))?;
        Ok(Queue {
            dirs: Arc::new(Dirs {
                spares: Spares::open(&root),
                key: QueueKey::of_queue(&root),
                root,
                split: split as u64,
                pid,
                intd,
                todo,
                mess,
                lock,
            }),
        })
    }

    /// `QMAILHOME/queue`.
    pub fn path(&self) -> &Path {
        &self.dirs.root
    }

    /// The queue's `conf-split`.
    pub fn split(&self) -> u64 {
        self.dirs.split
    }

    /// Start a message: create its `mess/` file and put qmail-queue's
    /// Received line at its top. The message id is fixed from here on.
    pub fn begin(&self, invoker: Invoker) -> Result<Incoming, QqError> {
        let dirs = &self.dirs;
        let pid = std::process::id();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mess = match dirs.claim_mess() {
            Some(mess) => mess,
            None => dirs.create_mess(pid, now)?,
        };
        // From here on `Incoming`'s Drop removes mess/N.
        let mut incoming = Incoming {
            queue: self.clone(),
            id: mess.id,
            name: mess.name,
            file: mess.file,
            stale: mess.stale,
            len: 0,
            buf: Vec::with_capacity(BUFFER.min(16 * 1024)),
            uid: invoker.uid(),
            pid,
            state: State::Writing,
            failed: false,
        };
        let secs = i64::try_from(now).unwrap_or(i64::MAX);
        let line = received::queue_received(pid, invoker.received(), secs);
        incoming.buf.extend_from_slice(line.as_bytes());
        Ok(incoming)
    }
}

impl Dirs {
    fn mess_dir(&self, id: u64) -> BorrowedFd<'_> {
        self.mess[(id % self.split) as usize].dir()
    }

    /// `mess/N` straight from a spare: renamed there once its inode N is
    /// known, without qmail's hop through `pid/` (a link and an unlink
    /// saved: a spare's inode is already unique). Says whether it did.
    fn claim_mess(&self) -> Option<NewMess> {
        let spares = self.spares.as_ref()?;
        let mut placed = None;
        let (file, meta) = spares.claim(FILE_MODE, |dir, spare, meta| {
            let name = sys::name(meta.ino().to_string())?;
            sys::rename_noreplace_at(dir, spare, self.mess_dir(meta.ino()), &name)?;
            placed = Some(name);
            Ok(())
        })?;
        Some(NewMess {
            id: meta.ino(),
            name: placed?,
            file,
            stale: meta.len(),
        })
    }

    /// `mess/N` as qmail-queue makes it: a new `pid/` file whose inode
    /// number is N, linked to `mess/N%split/N`, then unlinked from `pid/`.
    fn create_mess(&self, pid: u32, now: u64) -> Result<NewMess, QqError> {
        let (pid_name, file, stale) = self.create_pid_file(pid, now)?;
        let discard_pid = || {
            let _ = sys::unlink_at(self.pid.as_fd(), &pid_name);
        };
        let Ok(meta) = file.metadata() else {
            discard_pid();
            return Err(QqError::new(QqError::PID));
        };
        let id = meta.ino();
        let Ok(name) = sys::name(id.to_string()) else {
            discard_pid();
            return Err(QqError::new(QqError::BUG));
        };
        if sys::link_at(self.pid.as_fd(), &pid_name, self.mess_dir(id), &name).is_err() {
            discard_pid();
            return Err(QqError::new(QqError::MESS));
        }
        if sys::unlink_at(self.pid.as_fd(), &pid_name).is_err() {
            let _ = sys::unlink_at(self.mess_dir(id), &name);
            return Err(QqError::new(QqError::PID));
        }
        Ok(NewMess {
            id,
            name,
            file,
            stale,
        })
    }

    /// `pid/<pid>.<time>.<seq>`, made by [`Dirs::create`]; like qmail,
    /// give up with 63 after nine names that already exist.
    fn create_pid_file(&self, pid: u32, now: u64) -> Result<(CString, File, u64), QqError> {
        for _ in 0..9 {
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            let name =
                sys::name(format!("{pid}.{now}.{seq}")).map_err(|_| QqError::new(QqError::BUG))?;
            match self.create(self.pid.as_fd(), "pid", &name) {
                Ok((file, stale)) => return Ok((name, file, stale)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(_) => break,
            }
        }
        Err(QqError::new(QqError::PID))
    }

    /// `subdir/name` (`dir` open), new and exclusive, or a spare renamed
    /// there; with the length of a spare's old contents (0 for a new
    /// file), which the caller writes over and cuts off where longer.
    fn create(&self, dir: BorrowedFd<'_>, subdir: &str, name: &CStr) -> io::Result<(File, u64)> {
        if let Some(spares) = &self.spares {
            let path = self
                .root
                .join(subdir)
                .join(std::ffi::OsStr::from_bytes(name.to_bytes()));
            if spares.take(&path) {
                if let Ok((file, meta)) = sys::reuse_at(dir, name, FILE_MODE) {
                    return Ok((file, meta.len()));
                }
            }
        }
        sys::create_excl_at(dir, name, FILE_MODE).map(|file| (file, 0))
    }

    /// Wake qmail-send: directly if it runs in this process, else one byte
    /// into `lock/trigger` without blocking. No reader (ENXIO) or a full
    /// FIFO (EAGAIN) is fine: the message is already queued and qmail-send
    /// rescans `todo/` on its own.
    fn pull_trigger(&self) {
        if self.key.is_some_and(wake::notify) {
            return;
        }
        if let Some(lock) = &self.lock {
            let flags = libc::O_WRONLY | libc::O_NONBLOCK;
            if let Ok(mut fifo) = sys::open_at(lock.as_fd(), c"trigger", flags, 0) {
                let _ = fifo.write(&[0]);
            }
        }
    }
}

/// A message's `mess/N`, just made.
struct NewMess {
    id: u64,
    name: CString,
    file: File,
    /// The length of a spare's old contents (0 for a new file): what the
    /// message does not write over must be cut off.
    stale: u64,
}

/// Open the split subdirectories `0`, `1`, ... of `dir` (at most `max`),
/// stopping at the first that cannot be opened. On `mess/` this is how the
/// queue's `conf-split` is learnt, so a queue built with another split keeps
/// working; the spool opens `info/`, `local/`, `remote/` the same way.
pub(crate) fn open_split(dir: BorrowedFd<'_>, max: u64) -> Vec<OwnedFd> {
    let mut dirs = Vec::new();
    while (dirs.len() as u64) < max {
        let opened =
            sys::name(dirs.len().to_string()).and_then(|name| sys::open_dir_at(dir, &name));
        match opened {
            Ok(fd) => dirs.push(fd),
            Err(_) => break,
        }
    }
    dirs
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    /// mess/N exists; Drop removes it.
    Writing,
    /// intd/N exists too; Drop removes both.
    IntdMade,
    /// todo/N exists: the message is queued and must never be removed here.
    Committed,
    /// Delivered without queueing; qmail-send removes mess/N.
    Delivered,
}

/// The steps of [`Incoming::commit`], so tests can stop after any of them
/// and check what a crash or an abort there leaves behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum Step {
    MessSynced,
    IntdCreated,
    IntdSynced,
    MessDirSynced,
    TodoLinked,
    Done,
}

/// A message being written into the queue. Dropping it before
/// [`Incoming::commit`] succeeds removes everything it created.
#[derive(Debug)]
pub struct Incoming {
    queue: Queue,
    id: u64,
    name: CString,
    file: File,
    /// Old bytes of a spare `file`: cut to `len` before it counts.
    stale: u64,
    /// Bytes written to `file` so far.
    len: u64,
    buf: Vec<u8>,
    uid: u32,
    pid: u32,
    state: State,
    /// A write failed: bytes are missing, so the message must not commit.
    failed: bool,
}

impl Incoming {
    /// The message id: the inode number of `mess/N`, what qmail-send logs
    /// as `msg N`.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The pid recorded as `p` in the envelope (logged as `qp`).
    pub fn qp(&self) -> u32 {
        self.pid
    }

    /// Append body bytes. Buffered; a write error is 53.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), QqError> {
        if self.failed {
            return Err(QqError::new(QqError::WRITE));
        }
        if self.buf.len() + bytes.len() > BUFFER {
            self.flush()?;
            if bytes.len() >= BUFFER {
                let result = write_all(&mut self.file, bytes);
                self.failed = result.is_err();
                self.len += bytes.len() as u64;
                return result;
            }
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), QqError> {
        let result = write_all(&mut self.file, &self.buf);
        self.len += self.buf.len() as u64;
        self.buf.clear();
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Queue the message for `envelope` and return its id. On success the
    /// message is on disk and in `todo/`, and qmail-send has been poked.
    ///
    /// An invalid envelope is 11 or 91 and nothing is queued. Should the
    /// final `fsync` of `todo/` fail, the message is already visible to
    /// qmail-send and is left in place; the error (53) makes the client
    /// retry, so the worst case is a duplicate, never a loss.
    ///
    /// A message that the qmail-send of this process can deliver at once
    /// ([`crate::direct`]) is delivered instead and never queued; N is
    /// then its id in qmail-send's log.
    pub fn commit(mut self, envelope: &Envelope) -> Result<u64, QqError> {
        if self.deliver_directly(envelope)? {
            return Ok(self.id);
        }
        self.commit_until(envelope, Step::Done)
    }

    /// [`Direct::deliver`](crate::direct::Direct::deliver), when a qmail-send
    /// here lends its rules; true if the message is delivered.
    fn deliver_directly(&mut self, envelope: &Envelope) -> Result<bool, QqError> {
        let Some(in_process) = self.queue.dirs.key.and_then(wake::in_process) else {
            return Ok(false);
        };
        let Some(direct) = &in_process.direct else {
            return Ok(false);
        };
        if self.state != State::Writing || self.failed {
            return Ok(false);
        }
        envelope.validate()?;
        match direct.deliver(self, envelope) {
            Delivered::No => return Ok(false),
            Delivered::Logged => self.state = State::Delivered,
            // Drop removes mess/N.
            Delivered::Unlogged => {}
        }
        Ok(true)
    }

    /// Writes out what is buffered and cuts off a spare's old bytes, so
    /// that `mess/N` holds exactly the message (for its fsync, or for a
    /// delivery to read).
    pub(crate) fn complete(&mut self) -> Result<(), QqError> {
        if self.failed {
            return Err(QqError::new(QqError::WRITE));
        }
        self.flush()?;
        // Only a spare longer than the message needs cutting. Setting the
        // length changes the inode, which sync_data must then write too.
        if self.stale > self.len {
            self.file
                .set_len(self.len)
                .map_err(|_| QqError::new(QqError::WRITE))?;
            self.stale = self.len;
        }
        Ok(())
    }

    /// The message's size so far.
    pub(crate) fn size(&self) -> u64 {
        self.len + self.buf.len() as u64
    }

    /// The invoker's uid (the envelope's `u`).
    pub(crate) fn uid(&self) -> u32 {
        self.uid
    }

    /// `mess/N%split/N`.
    pub(crate) fn path(&self) -> PathBuf {
        let dirs = &self.queue.dirs;
        dirs.root
            .join("mess")
            .join((self.id % dirs.split).to_string())
            .join(self.id.to_string())
    }

    /// Give up on the message and remove its files (the same as dropping).
    pub fn abort(self) {}

    /// [`Incoming::commit`], stopping after `last`. Files already made stay
    /// until Drop, which removes them unless `todo/N` was linked.
    pub(crate) fn commit_until(&mut self, envelope: &Envelope, last: Step) -> Result<u64, QqError> {
        if self.state != State::Writing {
            return Err(QqError::new(QqError::BUG));
        }
        if self.failed {
            return Err(QqError::new(QqError::WRITE));
        }
        envelope.validate()?;
        let write_err = |_| QqError::new(QqError::WRITE);
        let queue = self.queue.clone();
        let dirs = &queue.dirs;

        self.complete()?;
        self.file.sync_data().map_err(write_err)?;
        if last == Step::MessSynced {
            return Ok(self.id);
        }

        let (mut intd, stale) = self.create_intd()?;
        if last == Step::IntdCreated {
            return Ok(self.id);
        }
        let bytes = envelope.to_intd_bytes(self.uid, self.pid);
        write_all(&mut intd, &bytes)?;
        if stale > bytes.len() as u64 {
            intd.set_len(bytes.len() as u64).map_err(write_err)?;
        }
        intd.sync_data().map_err(write_err)?;
        drop(intd);
        if last == Step::IntdSynced {
            return Ok(self.id);
        }

        // After the intd fsync this is usually already on disk (one journal
        // commit covers both), so it rarely costs a second commit.
        dirs.mess[(self.id % dirs.split) as usize]
            .sync()
            .map_err(write_err)?;
        if last == Step::MessDirSynced {
            return Ok(self.id);
        }

        sys::link_at(dirs.intd.as_fd(), &self.name, dirs.todo.dir(), &self.name)
            .map_err(|_| QqError::new(QqError::TODO))?;
        self.state = State::Committed;
        if last == Step::TodoLinked {
            return Ok(self.id);
        }

        dirs.todo.sync().map_err(write_err)?;
        dirs.pull_trigger();
        Ok(self.id)
    }

    /// `intd/N`, exclusively. A leftover `intd/N` can only be stale: N is
    /// the inode of our own `mess/N`, so no live injection owns it; remove
    /// it and try once more instead of failing like qmail 1.03.
    fn create_intd(&mut self) -> Result<(File, u64), QqError> {
        let dirs = &self.queue.dirs;
        let dir = dirs.intd.as_fd();
        for _ in 0..2 {
            match dirs.create(dir, "intd", &self.name) {
                Ok(made) => {
                    self.state = State::IntdMade;
                    return Ok(made);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let _ = sys::unlink_at(dir, &self.name);
                }
                Err(_) => break,
            }
        }
        Err(QqError::new(QqError::INTD))
    }
}

impl Drop for Incoming {
    /// Undo an unfinished injection, in qmail-queue's cleanup order: intd
    /// before mess, and mess truncated first so its space is freed even if
    /// the unlink fails.
    fn drop(&mut self) {
        if matches!(self.state, State::Committed | State::Delivered) {
            return;
        }
        let dirs = &self.queue.dirs;
        if self.state == State::IntdMade {
            let _ = sys::unlink_at(dirs.intd.as_fd(), &self.name);
        }
        let _ = self.file.set_len(0);
        let _ = sys::unlink_at(dirs.mess_dir(self.id), &self.name);
    }
}

fn write_all(file: &mut File, bytes: &[u8]) -> Result<(), QqError> {
    file.write_all(bytes)
        .map_err(|_| QqError::new(QqError::WRITE))
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
