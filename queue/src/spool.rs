//! The on-disk side of qmail-send: the file operations behind the
//! scheduler's [`Action`](crate::scheduler::Action)s, in qmail 1.03's queue
//! layout (`mess/ info/ local/ remote/` split, `todo/ intd/ bounce/ pid/`
//! flat, `lock/sendmutex`).
//!
//! Every method that answers a durable write returns only once the write
//! is on disk, in the order the scheduler's contract names: `info/N`,
//! `local/N`, `remote/N` before `todo/N` goes; a bounce paragraph before its
//! recipient's `D`; `info/N` gone before `mess/N` goes. Nothing here panics
//! on what it finds on disk, and every error names the file.
//!
//! Files are addressed by path under the queue; the split directories are
//! also held open, for the directory `fsync`s that make new and removed
//! entries durable.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File, FileTimes, Metadata, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqmail_core::bounce;

use crate::envelope::QueueEnvelope;
use crate::groupsync::GroupSync;
use crate::scheduler::{Channel, Failure, Mark, MessageId, OnDisk};
use crate::spare::{unlink, Spares};
use crate::store::{open_split, MAX_SPLIT};
use crate::sys;

/// qmail's `OSSIFIED`: files of an injection that died are removed after
/// 36 hours (qmail-queue gives up after 24, so nobody is still writing them).
pub const OSSIFIED: u64 = 129_600;

/// qmail-send runs with umask 077: its files are readable by it alone.
const FILE_MODE: u32 = 0o600;

/// Bytes read at a time when scanning `local/N`/`remote/N` for a record.
const SCAN_CHUNK: usize = 64 * 1024;

/// What `todo/N` says, for the scheduler's `Input::NewMessage`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Todo {
    pub sender: Vec<u8>,
    pub recipients: Vec<Vec<u8>>,
    /// qmail-queue's pid (`p`), logged as `qp`.
    pub qp: u32,
    /// The injecting uid (`u`).
    pub uid: u32,
    /// Size of `mess/N`.
    pub bytes: u64,
}

/// Why [`Spool::read_todo`] failed.
#[derive(Debug)]
pub enum TodoError {
    /// The message can never be preprocessed (an unparsable envelope, or
    /// `mess/N` is missing): log it and [`Spool::discard_todo`] it.
    Corrupt(String),
    /// A transient failure: try again later.
    Io(io::Error),
}

impl fmt::Display for TodoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TodoError::Corrupt(text) => f.write_str(text),
            TodoError::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for TodoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TodoError::Corrupt(_) => None,
            TodoError::Io(e) => Some(e),
        }
    }
}

/// What [`Spool::recover`] found: the preprocessed messages, and those it
/// could not read (with why), which stay on disk untouched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub messages: Vec<OnDisk>,
    pub problems: Vec<(MessageId, String)>,
}

/// The queue as qmail-send sees it. Cheap to clone and safe to share
/// between threads.
#[derive(Clone, Debug)]
pub struct Spool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `QMAILHOME/queue`.
    root: PathBuf,
    split: u64,
    /// The split subdirectories of `info/`, `local/`, `remote/`.
    info: Vec<OwnedFd>,
    local: Vec<OwnedFd>,
    remote: Vec<OwnedFd>,
    /// Shared with the queue writer's commits ([`GroupSync`]).
    todo: Arc<GroupSync>,
    bounce: OwnedFd,
    /// Removed files of ours, reused by preprocessing.
    spares: Option<Arc<Spares>>,
}

/// The queue directories the spool touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Mess,
    Info,
    Local,
    Remote,
    Todo,
    Intd,
    Bounce,
    Pid,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Mess => "mess",
            Dir::Info => "info",
            Dir::Local => "local",
            Dir::Remote => "remote",
            Dir::Todo => "todo",
            Dir::Intd => "intd",
            Dir::Bounce => "bounce",
            Dir::Pid => "pid",
        }
    }

    fn is_split(self) -> bool {
        matches!(self, Dir::Mess | Dir::Info | Dir::Local | Dir::Remote)
    }

    fn of(channel: Channel) -> Dir {
        match channel {
            Channel::Local => Dir::Local,
            Channel::Remote => Dir::Remote,
        }
    }
}

impl Spool {
    /// Open `qmail_home/queue`. The split is learnt from `mess/` as
    /// [`Queue::open`](crate::Queue::open) does; `info/`, `local/` and
    /// `remote/` must have the same subdirectories.
    pub fn open(qmail_home: &Path) -> io::Result<Spool> {
        let root = qmail_home.join("queue");
        let open = |name: &str| {
            let path = root.join(name);
            sys::open_dir(&path).map_err(ctx(&path))
        };
        open(Dir::Pid.name())?;
        open(Dir::Intd.name())?;
        let todo_path = root.join(Dir::Todo.name());
        let todo = GroupSync::shared(&todo_path).map_err(ctx(&todo_path))?;
        let bounce = open(Dir::Bounce.name())?;
        let mess = open_split(open(Dir::Mess.name())?.as_fd(), MAX_SPLIT);
        if mess.is_empty() {
            let path = root.join("mess/0");
            return Err(ctx(&path)(io::ErrorKind::NotFound.into()));
        }
        let split = mess.len() as u64;
        let subdirs = |dir: Dir| {
            let dirs = open_split(open(dir.name())?.as_fd(), split);
            if dirs.len() as u64 == split {
                return Ok(dirs);
            }
            let path = root.join(dir.name()).join(dirs.len().to_string());
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: missing (mess/ is split {split})", path.display()),
            ))
        };
        Ok(Spool {
            inner: Arc::new(Inner {
                info: subdirs(Dir::Info)?,
                local: subdirs(Dir::Local)?,
                remote: subdirs(Dir::Remote)?,
                spares: Spares::open(&root),
                root,
                split,
                todo,
                bounce,
            }),
        })
    }

    /// `QMAILHOME/queue`.
    pub fn path(&self) -> &Path {
        &self.inner.root
    }

    /// The queue's `conf-split`.
    pub fn split(&self) -> u64 {
        self.inner.split
    }

    /// `mess/(id % split)/id`.
    pub fn message_path(&self, id: MessageId) -> PathBuf {
        self.file(Dir::Mess, id)
    }

    /// Take `lock/sendmutex` as qmail-send does (`flock` exclusive, non
    /// blocking): one scheduler per queue. Held until the file is dropped.
    pub fn lock(&self) -> io::Result<File> {
        let path = self.inner.root.join("lock/sendmutex");
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(ctx(&path))?;
        match sys::flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => Ok(file),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "{}: locked: another qmail-send is running on this queue",
                    path.display()
                ),
            )),
            Err(e) => Err(ctx(&path)(e)),
        }
    }

    /// The messages waiting in `todo/`, in id order. Names that are not a
    /// message number are not ours and are skipped.
    pub fn todo(&self) -> io::Result<Vec<MessageId>> {
        let dir = self.inner.root.join(Dir::Todo.name());
        let mut ids: Vec<MessageId> = numeric_entries(&dir)?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Read `todo/N` and the size of `mess/N`.
    pub fn read_todo(&self, id: MessageId) -> Result<Todo, TodoError> {
        let path = self.file(Dir::Todo, id);
        let bytes = fs::read(&path).map_err(|e| TodoError::Io(ctx(&path)(e)))?;
        let Some(envelope) = QueueEnvelope::parse(&bytes) else {
            return Err(TodoError::Corrupt(format!(
                "{}: not a queue envelope",
                path.display()
            )));
        };
        let mess = self.file(Dir::Mess, id);
        let bytes = match fs::metadata(&mess) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(TodoError::Corrupt(format!("{}: missing", mess.display())))
            }
            Err(e) => return Err(TodoError::Io(ctx(&mess)(e))),
        };
        Ok(Todo {
            sender: envelope.envelope.sender,
            recipients: envelope.envelope.recipients,
            qp: envelope.pid,
            uid: envelope.uid,
            bytes,
        })
    }

    /// Drop a message [`Spool::read_todo`] found corrupt: remove `todo/N`,
    /// then `intd/N`. `mess/N` is left to [`Spool::cleanup`].
    /// Remove `mess/N` of a message delivered before it was queued, once
    /// its log lines are written (until then N cannot be another's id).
    pub(crate) fn discard_delivered(&self, id: MessageId) -> io::Result<()> {
        self.discard(&self.file(Dir::Mess, id)).map(drop)
    }

    pub fn discard_todo(&self, id: MessageId) -> io::Result<()> {
        unlink(&self.file(Dir::Todo, id))?;
        self.discard(&self.file(Dir::Intd, id)).map(drop)
    }

    /// Preprocess: write `info/N` (`F<sender>\0`, mtime `birth`), then
    /// `local/N` and `remote/N` (`T<addr>\0` each, `D<addr>\0` for those
    /// in `done`; no file for an empty list), each fsynced, and the
    /// directories that changed; only then remove `todo/N` and `intd/N`
    /// and fsync `todo/`. Until `todo/N` is gone, [`Spool::recover`]
    /// ignores the other files, so a crash anywhere here means
    /// preprocessing again from scratch; so a `bounce/N` found first is an
    /// earlier attempt's and goes, and `done`'s failures make a new one.
    pub fn preprocess(
        &self,
        id: MessageId,
        sender: &[u8],
        birth: u64,
        recipients: &[Vec<Vec<u8>>; 2],
        done: &[Mark],
    ) -> io::Result<()> {
        let mut addrs =
            std::iter::once(sender).chain(recipients.iter().flatten().map(Vec::as_slice));
        if addrs.any(|a| a.contains(&0)) {
            // A NUL would end the record early and shift every index after it.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("msg {id}: address contains NUL"),
            ));
        }
        let info = self.file(Dir::Info, id);
        let birth = system_time(birth).map_err(ctx(&info))?;
        self.remove_bounce(id)?;
        for failure in done.iter().filter_map(|m| m.failure.as_ref()) {
            self.append_bounce(id, failure)?;
        }
        let mut changed = Vec::new();
        if self.write_file(&info, &[b"F", sender, b"\0"].concat(), Some(birth))? {
            changed.push(Dir::Info);
        }
        for channel in Channel::ALL {
            let dir = Dir::of(channel);
            let path = self.file(dir, id);
            let list = &recipients[channel as usize];
            // A stale file from an earlier attempt must not survive with
            // recipients this pass did not give it.
            let marked = done
                .iter()
                .filter(|m| m.channel == channel)
                .map(|m| m.index);
            let touched_dir = if list.is_empty() {
                self.discard(&path)?
            } else {
                self.write_file(&path, &records(list, marked), None)?
            };
            if touched_dir {
                changed.push(dir);
            }
        }
        for dir in changed {
            sys::fsync(self.split_fd(dir, id)).map_err(ctx(&self.dir_of(dir, id)))?;
        }

        unlink(&self.file(Dir::Todo, id))?;
        self.discard(&self.file(Dir::Intd, id))?;
        self.inner.todo.sync()
    }

    /// Mark recipient `index` of `local/N` or `remote/N` done. For a
    /// failure its paragraph is first appended to `bounce/N` and made
    /// durable; then its `T` becomes `D` and the file is fsynced. A
    /// recipient already marked `D` keeps it and gets no second paragraph
    /// (a repeated request after a failed fsync).
    pub fn mark_done(
        &self,
        id: MessageId,
        channel: Channel,
        index: usize,
        failure: Option<&Failure>,
    ) -> io::Result<()> {
        let path = self.file(Dir::of(channel), id);
        let c = ctx(&path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(&c)?;
        let Some((offset, mark)) = record_start(&file, index).map_err(&c)? else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: no recipient {index}", path.display()),
            ));
        };
        match mark {
            b'D' => {}
            b'T' => {
                if let Some(failure) = failure {
                    self.append_bounce(id, failure)?;
                }
                file.write_all_at(b"D", offset).map_err(&c)?;
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: recipient {index} starts with byte {other:#04x}, not T or D",
                        path.display()
                    ),
                ))
            }
        }
        file.sync_data().map_err(&c)
    }

    /// Append one paragraph to `bounce/N` and make it durable.
    fn append_bounce(&self, id: MessageId, failure: &Failure) -> io::Result<()> {
        let path = self.file(Dir::Bounce, id);
        let c = ctx(&path);
        let text = bounce::paragraph(
            &String::from_utf8_lossy(&failure.recipient),
            &String::from_utf8_lossy(&failure.report),
        );
        let (mut file, created) = open_file(&path, true)?;
        // Appends to one bounce/N (failures of one message finishing on
        // different threads) take turns, so none sees half of another's
        // paragraph and mistakes it for a crash's leftover below.
        sys::flock(&file, libc::LOCK_EX).map_err(&c)?;
        let mut len = file.metadata().map_err(&c)?.len();
        if len > 0 && !ends_with_blank_line(&file, len).map_err(&c)? {
            // An append cut short by a crash: its recipient was never marked
            // done, so drop the fragment rather than glue this paragraph to it.
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(&c)?;
            if let Ok((_, complete)) = parse_bounce_prefix(&bytes) {
                file.set_len(complete as u64).map_err(&c)?;
                len = complete as u64;
            }
        }
        if let Err(e) = file.write_all(text.as_bytes()) {
            // Leave no fragment of our own behind.
            let _ = file.set_len(len);
            return Err(c(e));
        }
        file.sync_data().map_err(&c)?;
        // Whoever appends first (under the lock) makes the entry durable, so
        // no paragraph is reported durable before its file is.
        if created || len == 0 {
            let dir = self.inner.root.join(Dir::Bounce.name());
            sys::fsync(self.inner.bounce.as_fd()).map_err(ctx(&dir))?;
        }
        Ok(())
    }

    /// Remove `bounce/N` once its bounce is queued, durably: a `bounce/N`
    /// back after a crash would be sent again. Already gone is fine.
    pub fn remove_bounce(&self, id: MessageId) -> io::Result<()> {
        if unlink(&self.file(Dir::Bounce, id))? {
            let dir = self.inner.root.join(Dir::Bounce.name());
            sys::fsync(self.inner.bounce.as_fd()).map_err(ctx(&dir))?;
        }
        Ok(())
    }

    /// Remove a finished message as qmail-send does: `bounce/N`, `local/N`,
    /// `remote/N`, `info/N`, then `mess/N`. Files already gone are fine.
    /// A message never preprocessed (express, all delivered) first loses
    /// `todo/N`, durably (a `todo/N` back after a crash would be delivered
    /// again), then `intd/N`. Only such a message has an `intd/N` here, so
    /// one found without `todo/N` is a removal retried after an error: the
    /// sync is made again, as the first try may have failed in it.
    pub fn remove(&self, id: MessageId) -> io::Result<()> {
        let intd = self.file(Dir::Intd, id);
        if unlink(&self.file(Dir::Todo, id))? || intd.exists() {
            self.inner.todo.sync()?;
            self.discard(&intd)?;
        }
        // mess/N goes last. Its inode is the message id, so until it is gone
        // no new message can be N, and a removal retried after an error
        // cannot touch another message's files. A crash just before leaves
        // mess/N alone, which the cleanup pass removes after 36 hours. No
        // fsync: removal is idempotent.
        unlink(&self.file(Dir::Bounce, id))?;
        for dir in [Dir::Local, Dir::Remote, Dir::Info, Dir::Mess] {
            self.discard(&self.file(dir, id))?;
        }
        Ok(())
    }

    /// Every preprocessed message, as the scheduler's `Input::Recovered`
    /// wants it: each `info/N` whose N is not in `todo/` (a message still in
    /// `todo/` is preprocessed again). A message whose files cannot be read
    /// or make no sense goes into `problems` and the scan goes on.
    pub fn recover(&self) -> io::Result<Recovered> {
        let todo: BTreeSet<MessageId> = self.todo()?.into_iter().collect();
        let mut out = Recovered::default();
        for k in 0..self.inner.split {
            let dir = self.inner.root.join(Dir::Info.name()).join(k.to_string());
            for (id, path) in numeric_entries(&dir)? {
                if todo.contains(&id) {
                    continue;
                }
                if id % self.inner.split != k {
                    let text = format!(
                        "{}: not in split directory {}",
                        path.display(),
                        id % self.inner.split
                    );
                    out.problems.push((id, text));
                    continue;
                }
                match self.load(id) {
                    Ok(Some(message)) => out.messages.push(message),
                    Ok(None) => {}
                    Err(text) => out.problems.push((id, text)),
                }
            }
        }
        out.messages.sort_by_key(|m| m.id);
        out.problems.sort();
        Ok(out)
    }

    /// One preprocessed message; `None` if `info/N` vanished meanwhile.
    fn load(&self, id: MessageId) -> Result<Option<OnDisk>, String> {
        let text = |e: io::Error| e.to_string();
        let info_path = self.file(Dir::Info, id);
        let Some((info, meta)) = read_optional(&info_path).map_err(text)? else {
            return Ok(None);
        };
        let sender = info
            .strip_prefix(b"F")
            .and_then(|s| s.strip_suffix(b"\0"))
            .filter(|s| !s.contains(&0))
            .ok_or_else(|| format!("{}: not F<sender>\\0", info_path.display()))?;
        let mess = self.file(Dir::Mess, id);
        let mess_missing = fs::metadata(&mess).map_err(|e| text(ctx(&mess)(e))).err();

        let mut recipients = [Vec::new(), Vec::new()];
        let mut next_retry = [None; 2];
        for channel in Channel::ALL {
            let path = self.file(Dir::of(channel), id);
            if let Some((bytes, meta)) = read_optional(&path).map_err(text)? {
                recipients[channel as usize] =
                    parse_recipients(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
                next_retry[channel as usize] = Some(mtime(&meta));
            }
        }
        let bounce_path = self.file(Dir::Bounce, id);
        let bounces = match read_optional(&bounce_path).map_err(text)? {
            Some((bytes, _)) => {
                parse_bounce(&bytes).map_err(|e| format!("{}: {e}", bounce_path.display()))?
            }
            None => Vec::new(),
        };
        // Without its text a message can only be one whose removal a crash
        // cut short: everything done, nothing left to bounce.
        if let Some(missing) = mess_missing {
            let finished = bounces.is_empty() && recipients.iter().flatten().all(|(_, done)| *done);
            if !finished {
                return Err(missing);
            }
        }
        Ok(Some(OnDisk {
            id,
            sender: sender.to_vec(),
            birth: mtime(&meta),
            recipients,
            bounces,
            next_retry,
        }))
    }

    /// Record when `channel` of message `id` is next due, as the mtime of
    /// `local/N` or `remote/N` (qmail-send does this at shutdown). Not
    /// fsynced: losing it only means retrying early. No file, nothing to do.
    pub fn set_next_retry(&self, id: MessageId, channel: Channel, at: u64) -> io::Result<()> {
        let path = self.file(Dir::of(channel), id);
        let at = system_time(at).map_err(ctx(&path))?;
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ctx(&path)(e)),
        };
        file.set_times(FileTimes::new().set_modified(at))
            .map_err(ctx(&path))
    }

    /// qmail-send's cleanup pass: remove `pid/` files, `mess/N` without
    /// `todo/N` or `info/N`, and `intd/N` without `todo/N`, once they are
    /// [`OSSIFIED`] (mtime at least 36 hours before `now`). Returns how
    /// many files went. A file that cannot be checked or removed is left
    /// and the pass goes on; the first such error is returned at the end.
    pub fn cleanup(&self, now: u64) -> io::Result<usize> {
        let mut sweep = Sweep {
            now,
            removed: 0,
            error: None,
        };
        let root = &self.inner.root;
        for path in sweep.entries(&root.join(Dir::Pid.name())) {
            if sweep.ossified(&path) {
                sweep.unlink(&path);
            }
        }
        for k in 0..self.inner.split {
            let dir = root.join(Dir::Mess.name()).join(k.to_string());
            for path in sweep.entries(&dir) {
                let Some(id) = file_id(&path) else { continue };
                // todo/N before info/N: preprocessing makes info/N before it
                // removes todo/N, so one of the two is always seen.
                if sweep.ossified(&path)
                    && sweep.absent(&self.file(Dir::Todo, id))
                    && sweep.absent(&self.file(Dir::Info, id))
                {
                    sweep.unlink(&path);
                }
            }
        }
        for path in sweep.entries(&root.join(Dir::Intd.name())) {
            let Some(id) = file_id(&path) else { continue };
            if sweep.ossified(&path) && sweep.absent(&self.file(Dir::Todo, id)) {
                sweep.unlink(&path);
            }
        }
        match sweep.error {
            Some(e) => Err(e),
            None => Ok(sweep.removed),
        }
    }

    /// Write `data` as the whole of `path` (reusing a spare file if there
    /// is one), set its mtime, fsync it; says whether its directory gained
    /// an entry.
    fn write_file(&self, path: &Path, data: &[u8], mtime: Option<SystemTime>) -> io::Result<bool> {
        let c = ctx(path);
        let reused = self.inner.spares.as_ref().is_some_and(|s| s.take(path));
        let (file, created) = open_file(path, false)?;
        // Over the old contents, then cut to length: a spare keeps its
        // block instead of freeing it and allocating another. Mode and
        // length change only where they must: either changes the inode,
        // which sync_data then writes too.
        let meta = file.metadata().map_err(&c)?;
        if meta.permissions().mode() & 0o7777 != FILE_MODE {
            file.set_permissions(Permissions::from_mode(FILE_MODE))
                .map_err(&c)?;
        }
        file.write_all_at(data, 0).map_err(&c)?;
        if meta.len() > data.len() as u64 {
            file.set_len(data.len() as u64).map_err(&c)?;
        }
        if let Some(mtime) = mtime {
            // After the write, which would move it; before the fsync, which
            // must cover it (so sync_all, not sync_data).
            file.set_times(FileTimes::new().set_modified(mtime))
                .map_err(&c)?;
            file.sync_all().map_err(&c)?;
        } else {
            file.sync_data().map_err(&c)?;
        }
        Ok(created || reused)
    }

    /// Remove a queue file, keeping it as a spare when there is room and
    /// it is ours; says whether there was one.
    fn discard(&self, path: &Path) -> io::Result<bool> {
        match &self.inner.spares {
            Some(spares) => spares.keep(path),
            None => unlink(path),
        }
    }

    /// `dir/N` or `dir/(N % split)/N`.
    fn file(&self, dir: Dir, id: MessageId) -> PathBuf {
        let mut path = self.dir_of(dir, id);
        path.push(id.to_string());
        path
    }

    /// The directory holding `dir`'s file for `id`.
    fn dir_of(&self, dir: Dir, id: MessageId) -> PathBuf {
        let mut path = self.inner.root.join(dir.name());
        if dir.is_split() {
            path.push((id % self.inner.split).to_string());
        }
        path
    }

    /// The open split subdirectory of `info/`, `local/` or `remote/`.
    fn split_fd(&self, dir: Dir, id: MessageId) -> BorrowedFd<'_> {
        let dirs = match dir {
            Dir::Local => &self.inner.local,
            Dir::Remote => &self.inner.remote,
            _ => &self.inner.info,
        };
        dirs[(id % self.inner.split) as usize].as_fd()
    }
}

/// State of one [`Spool::cleanup`] pass.
struct Sweep {
    now: u64,
    removed: usize,
    error: Option<io::Error>,
}

impl Sweep {
    fn note(&mut self, e: io::Error) {
        self.error.get_or_insert(e);
    }

    fn entries(&mut self, dir: &Path) -> Vec<PathBuf> {
        let c = ctx(dir);
        let read = fs::read_dir(dir).and_then(|entries| {
            entries
                .map(|e| e.map(|e| e.path()))
                .collect::<io::Result<Vec<_>>>()
        });
        read.unwrap_or_else(|e| {
            self.note(c(e));
            Vec::new()
        })
    }

    /// A plain file last modified [`OSSIFIED`] seconds or more ago.
    fn ossified(&mut self, path: &Path) -> bool {
        match fs::symlink_metadata(path) {
            Ok(meta) => meta.is_file() && mtime(&meta).saturating_add(OSSIFIED) <= self.now,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                self.note(ctx(path)(e));
                false
            }
        }
    }

    /// Whether `path` is known not to exist; when unsure, it might.
    fn absent(&mut self, path: &Path) -> bool {
        match fs::symlink_metadata(path) {
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => {
                self.note(ctx(path)(e));
                false
            }
        }
    }

    fn unlink(&mut self, path: &Path) {
        match unlink(path) {
            Ok(true) => self.removed += 1,
            Ok(false) => {}
            Err(e) => self.note(e),
        }
    }
}

/// One paragraph of `bounce/N`: (recipient, report), as in
/// [`OnDisk::bounces`].
pub type Paragraph = (Vec<u8>, Vec<u8>);

/// Parse a `bounce/N` file back into the (recipient, report) pairs that
/// [`bounce::paragraph`] wrote: the exact inverse for recipients without a
/// newline and reports without blank lines (a blank line inside a report
/// was written as `/` and stays so). A paragraph cut short at the end of the
/// file (an append a crash interrupted, whose recipient is not yet done) is
/// left out; a paragraph not starting `<recipient>:` is an error.
pub fn parse_bounce(bytes: &[u8]) -> Result<Vec<Paragraph>, String> {
    parse_bounce_prefix(bytes).map(|(paragraphs, _)| paragraphs)
}

/// [`parse_bounce`], and the length of the complete paragraphs.
fn parse_bounce_prefix(bytes: &[u8]) -> Result<(Vec<Paragraph>, usize), String> {
    let line_end = |from: usize| {
        bytes
            .get(from..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
            .map(|n| from + n)
    };
    let mut paragraphs = Vec::new();
    let mut pos = 0;
    loop {
        // A report that ends in a blank line leaves one extra newline after
        // its paragraph.
        while bytes.get(pos) == Some(&b'\n') {
            pos += 1;
        }
        if pos >= bytes.len() {
            return Ok((paragraphs, pos));
        }
        let Some(header_end) = line_end(pos) else {
            return Ok((paragraphs, pos));
        };
        let recipient = bytes[pos..header_end]
            .strip_prefix(b"<")
            .and_then(|h| h.strip_suffix(b">:"))
            .ok_or_else(|| format!("byte {pos}: paragraph does not start with <recipient>:"))?;
        let report_start = header_end + 1;
        let mut cursor = report_start;
        loop {
            let Some(end) = line_end(cursor) else {
                return Ok((paragraphs, pos));
            };
            if end == cursor {
                break;
            }
            cursor = end + 1;
        }
        paragraphs.push((recipient.to_vec(), bytes[report_start..cursor].to_vec()));
        pos = cursor + 1;
    }
}

/// `local/N` or `remote/N`: `T<addr>\0` (pending) or `D<addr>\0` (done)
/// per recipient.
fn parse_recipients(bytes: &[u8]) -> Result<Vec<(Vec<u8>, bool)>, String> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let Some(body) = bytes.strip_suffix(b"\0") else {
        return Err("last recipient is not NUL-terminated".into());
    };
    body.split(|&b| b == 0)
        .enumerate()
        .map(|(i, record)| match record.split_first() {
            Some((b'T', addr)) => Ok((addr.to_vec(), false)),
            Some((b'D', addr)) => Ok((addr.to_vec(), true)),
            _ => Err(format!("recipient {i} starts with neither T nor D")),
        })
        .collect()
}

/// `T<addr>\0` for each address, `D<addr>\0` for those at `done`.
fn records(list: &[Vec<u8>], done: impl Iterator<Item = usize>) -> Vec<u8> {
    let done: BTreeSet<usize> = done.collect();
    let mut out = Vec::with_capacity(list.iter().map(|a| a.len() + 2).sum());
    for (i, addr) in list.iter().enumerate() {
        out.push(if done.contains(&i) { b'D' } else { b'T' });
        out.extend_from_slice(addr);
        out.push(0);
    }
    out
}

/// The offset and first byte of record `index` (records end in `\0`),
/// reading in chunks so a long recipient list is never held whole.
fn record_start(file: &File, index: usize) -> io::Result<Option<(u64, u8)>> {
    let mut buf = vec![0; SCAN_CHUNK];
    let mut pos = 0u64;
    let mut record = 0usize;
    let mut at_start = true;
    loop {
        let n = match file.read_at(&mut buf, pos) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for (i, &b) in buf[..n].iter().enumerate() {
            if at_start {
                if record == index {
                    return Ok(Some((pos + i as u64, b)));
                }
                at_start = false;
            }
            if b == 0 {
                record += 1;
                at_start = true;
            }
        }
        pos += n as u64;
    }
}

/// Whether a file of `len > 0` bytes ends with `\n\n`, as every complete
/// bounce paragraph does.
fn ends_with_blank_line(file: &File, len: u64) -> io::Result<bool> {
    if len < 2 {
        return Ok(false);
    }
    let mut tail = [0; 2];
    file.read_exact_at(&mut tail, len - 2)?;
    Ok(&tail == b"\n\n")
}

/// Create `path` (mode 0600) or open the existing file (not truncated:
/// the caller writes over it); says whether it was created, i.e. whether
/// its directory gained an entry.
fn open_file(path: &Path, append: bool) -> io::Result<(File, bool)> {
    let mut opts = OpenOptions::new();
    opts.write(true).mode(FILE_MODE);
    if append {
        opts.read(true).append(true);
    }
    let result = match opts.clone().create_new(true).open(path) {
        Ok(file) => Ok((file, true)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            opts.open(path).map(|file| (file, false))
        }
        Err(e) => Err(e),
    };
    result.map_err(ctx(path))
}

/// A file's contents and metadata; `None` if it does not exist.
fn read_optional(path: &Path) -> io::Result<Option<(Vec<u8>, Metadata)>> {
    let c = ctx(path);
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(c(e)),
    };
    let meta = file.metadata().map_err(&c)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(&c)?;
    Ok(Some((bytes, meta)))
}

/// The message ids named in `dir`, with their paths.
fn numeric_entries(dir: &Path) -> io::Result<Vec<(MessageId, PathBuf)>> {
    let c = ctx(dir);
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(&c)? {
        let path = entry.map_err(&c)?.path();
        if let Some(id) = file_id(&path) {
            out.push((id, path));
        }
    }
    Ok(out)
}

/// The message id a queue file's name spells, in the canonical decimal
/// form the queue writes (so `007` or `+7` is not message 7).
fn file_id(path: &Path) -> Option<MessageId> {
    let name = path.file_name()?.to_str()?;
    let canonical = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_digit())
        && (name == "0" || !name.starts_with('0'));
    canonical.then(|| name.parse().ok()).flatten()
}

fn mtime(meta: &Metadata) -> u64 {
    u64::try_from(meta.mtime()).unwrap_or(0)
}

fn system_time(secs: u64) -> io::Result<SystemTime> {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("time {secs} out of range"),
            )
        })
}

/// Prefix an error with the path it is about, keeping its kind.
fn ctx(path: &Path) -> impl Fn(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
#[path = "spool_tests.rs"]
mod tests;
