//! Local delivery: qmail-lspawn, qmail-getpw and qmail-local for one
//! recipient of one message.
//!
//! [`deliver`] picks the user (users/cdb, passwd, `alias`), then runs the
//! `.qmail` instructions: Maildir, mbox, programs. Forwards are returned,
//! not queued, so the caller injects them in one qmail-queue call through
//! a [`Target`] ([`finish`] does that). As root the work happens as the
//! recipient's uid and gid: for Maildirs only on the calling thread, whose
//! own credentials change for the delivery (`creds`), else in a forked
//! child; otherwise as the invoking user (the embedded default). No
//! `chdir`, no global state beyond a counter: callable from a thread or a
//! child process.

mod creds;
mod maildir;
mod mbox;
mod newu;
mod program;
mod qmail_local;
mod users;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

pub use newu::{newu, write_cdb};
pub use sqmail_core::assign::UserEntry;
pub use users::{lookup, Passwd, Pw, SystemPasswd};

use crate::envelope::Envelope;
use crate::sink::{Receipt, Target};
use crate::store::Invoker;

/// qmail-lspawn's result letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `K`: delivered.
    Success,
    /// `Z`: try again later.
    Deferral,
    /// `D`: permanent failure, bounce.
    Failure,
}

impl Verdict {
    pub fn letter(self) -> u8 {
        match self {
            Verdict::Success => b'K',
            Verdict::Deferral => b'Z',
            Verdict::Failure => b'D',
        }
    }

    fn from_letter(b: u8) -> Option<Self> {
        Some(match b {
            b'K' => Verdict::Success,
            b'Z' => Verdict::Deferral,
            b'D' => Verdict::Failure,
            _ => return None,
        })
    }
}

/// Forwards still to be queued: one message, `dtline` prepended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    /// The envelope sender (`$NEWSENDER`).
    pub sender: Vec<u8>,
    pub recipients: Vec<Vec<u8>>,
    /// `Delivered-To: ...\n`, the only line added to a forwarded message.
    pub dtline: Vec<u8>,
    /// The `did f+w+p` line, reported once the forward is queued.
    pub did: String,
    /// The uid qmail-local ran as, which queues the forward (and which its
    /// Received line names).
    pub uid: u32,
}

/// The result of one delivery: qmail-lspawn's report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// Programs' output and qmail-local's own lines, `\n`-separated.
    pub report: String,
    /// With `Success`: forwards the caller must queue before the delivery
    /// counts as done (a failure to queue turns it into `Z` or `D`).
    pub forward: Option<Forward>,
}

impl Outcome {
    fn new(verdict: Verdict, report: impl Into<String>) -> Self {
        Outcome {
            verdict,
            report: report.into(),
            forward: None,
        }
    }
}

/// One recipient of one message.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// QMAILHOME, for `users/cdb`.
    pub qmail_home: &'a Path,
    /// The message (the queue's `mess/` file).
    pub message: &'a Path,
    /// The envelope sender, empty for bounces.
    pub sender: &'a [u8],
    /// `local@host`, after virtualdomains.
    pub recipient: &'a [u8],
    /// qmail-start's argument, used when there is no `.qmail` (or it is
    /// empty) for the bare user: `./Maildir/` by default.
    pub default_delivery: &'a [u8],
    /// Unix seconds for the mbox `From ` line.
    pub now: u64,
    /// Deliver only to Maildirs (before the message is queued, where
    /// nothing slow may run): a `.qmail` with instructions of any other
    /// kind defers before any has run.
    pub maildir_only: bool,
}

/// `local@host` split at the last `@`.
pub(crate) fn split(recipient: &[u8]) -> (&[u8], &[u8]) {
    match recipient.iter().rposition(|&b| b == b'@') {
        Some(i) => (&recipient[..i], &recipient[i + 1..]),
        None => (recipient, &[]),
    }
}

/// Deliver with the system passwd database.
pub fn deliver(req: &Request<'_>) -> Outcome {
    deliver_with(req, &SystemPasswd)
}

/// qmail-lspawn: an empty local part is a trash address; otherwise look
/// up the user and run qmail-local as that user (when root: on this thread
/// for Maildirs only, else in a child) or as us.
pub fn deliver_with(req: &Request<'_>, pw: &dyn Passwd) -> Outcome {
    let (local, _) = split(req.recipient);
    if local.is_empty() {
        return Outcome::new(Verdict::Success, "");
    }
    let user = match users::lookup(req.qmail_home, local, pw) {
        Ok(u) => u,
        Err(text) => return Outcome::new(Verdict::Deferral, format!("{text}\n")),
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return deliver_as_current_user(&user, req);
    }
    if user.uid == 0 {
        return Outcome::new(
            Verdict::Deferral,
            "Not allowed to perform deliveries as root.\n",
        );
    }
    // qmail-lspawn opens the message as root and hands it down: the user
    // may not search the queue's directories. The child reopens it through
    // /proc, which checks only the file's own (0644) mode.
    let message = match std::fs::File::open(req.message) {
        Ok(file) => file,
        Err(e) => {
            return Outcome::new(
                Verdict::Deferral,
                format!("Unable to open message: {e}. (#4.3.0)\n"),
            )
        }
    };
    let inherited = std::path::PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&message)
    ));
    let req = Request {
        message: &inherited,
        ..*req
    };
    // Maildirs only: on this thread, as the user, without a fork; if the
    // `.qmail` asks for more (nothing has run then), in a child.
    let maildirs = Request {
        maildir_only: true,
        ..req
    };
    if let Ok(out) = creds::as_user_on_this_thread(user.uid, user.gid, || {
        deliver_as_current_user(&user, &maildirs)
    }) {
        if req.maildir_only || !qmail_local::not_maildir_only(&out) {
            return out;
        }
    }
    let keep = std::os::fd::AsRawFd::as_raw_fd(&message);
    as_user(user.uid, user.gid, keep, || {
        deliver_as_current_user(&user, &req)
    })
}

/// qmail-local itself, without changing users: for a caller that already
/// runs as the recipient (or the embedded default).
pub fn deliver_as_current_user(user: &UserEntry, req: &Request<'_>) -> Outcome {
    qmail_local::run(user, req)
}

/// Run `f` in a forked child that has dropped to `uid`/`gid`, as
/// qmail-lspawn's `prot_gid`/`prot_uid`. Meant for a process that is
/// single-threaded or whose other threads hold no locks across fork (the
/// child only allocates, does file I/O and spawns programs).
///
/// The child keeps only stdin, stdout, stderr, its result pipe and `keep`:
/// the daemon's sockets and its `lock/sendmutex` must not live on in a
/// delivery (a long `|program` would hold the queue lock after a crash).
fn as_user(uid: u32, gid: u32, keep: RawFd, f: impl FnOnce() -> Outcome) -> Outcome {
    let (mut reader, mut writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(_) => return Outcome::new(Verdict::Deferral, "Temporary failure in qmail-lspawn.\n"),
    };
    // SAFETY: fork; the child never returns into the caller's frames.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Outcome::new(Verdict::Deferral, "Temporary failure in qmail-lspawn.\n");
    }
    if pid == 0 {
        drop(reader);
        close_all_but(&[keep, writer.as_raw_fd()]);
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: plain system calls in the child.
            let dropped = unsafe {
                libc::setgroups(1, &gid) == 0 && libc::setgid(gid) == 0 && libc::setuid(uid) == 0
            };
            if !dropped {
                Outcome::new(Verdict::Deferral, "Internal qmail-lspawn bug.\n")
            } else if unsafe { libc::getuid() } == 0 {
                Outcome::new(
                    Verdict::Deferral,
                    "Not allowed to perform deliveries as root.\n",
                )
            } else {
                f()
            }
        }))
        .unwrap_or_else(|_| Outcome::new(Verdict::Deferral, "qmail-local crashed.\n"));
        let _ = writer.write_all(&encode(&out));
        // SAFETY: leave without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    drop(writer);
    let mut buf = Vec::new();
    let _ = reader.read_to_end(&mut buf);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    decode(&buf).unwrap_or_else(|| Outcome::new(Verdict::Deferral, "qmail-local crashed.\n"))
}

/// Closes every descriptor from 3 up except `keep`.
fn close_all_but(keep: &[RawFd]) {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|&fd| fd >= 3).collect();
    keep.sort_unstable();
    let mut first: RawFd = 3;
    for fd in keep.into_iter().chain([RawFd::MAX]) {
        if fd > first {
            let last = if fd == RawFd::MAX {
                u32::MAX
            } else {
                fd as u32 - 1
            };
            // SAFETY: close_range on descriptors nothing in this child uses.
            unsafe { libc::syscall(libc::SYS_close_range, first as u32, last, 0u32) };
        }
        first = fd.saturating_add(1);
    }
}

fn put(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u32).to_le_bytes());
    out.extend_from_slice(field);
}

fn encode(o: &Outcome) -> Vec<u8> {
    let mut out = vec![o.verdict.letter()];
    put(&mut out, o.report.as_bytes());
    if let Some(f) = &o.forward {
        put(&mut out, &f.sender);
        put(&mut out, &f.dtline);
        put(&mut out, f.did.as_bytes());
        put(&mut out, &f.uid.to_le_bytes());
        for r in &f.recipients {
            put(&mut out, r);
        }
    }
    out
}

fn decode(buf: &[u8]) -> Option<Outcome> {
    let (&letter, mut rest) = buf.split_first()?;
    let mut take = || -> Option<Vec<u8>> {
        let n = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let v = rest.get(4..4 + n)?.to_vec();
        rest = &rest[4 + n..];
        Some(v)
    };
    let report = String::from_utf8_lossy(&take()?).into_owned();
    let forward = match take() {
        None => None,
        Some(sender) => {
            let dtline = take()?;
            let did = String::from_utf8_lossy(&take()?).into_owned();
            let uid = u32::from_le_bytes(take()?.try_into().ok()?);
            let mut recipients = Vec::new();
            while let Some(r) = take() {
                recipients.push(r);
            }
            Some(Forward {
                sender,
                recipients,
                dtline,
                did,
                uid,
            })
        }
    };
    Some(Outcome {
        verdict: Verdict::from_letter(letter)?,
        report,
        forward,
    })
}

/// Queue `fwd` (the message with its Delivered-To line) in one call, as
/// its user.
pub fn forward(
    target: &Target,
    fwd: &Forward,
    message: &Path,
) -> Result<Receipt, (Verdict, String)> {
    let qq = |e: crate::QqError| {
        let v = if e.is_permanent() {
            Verdict::Failure
        } else {
            Verdict::Deferral
        };
        (v, format!("Unable to forward message: {}.", e.text()))
    };
    let mut sink = target.begin(Invoker::User(fwd.uid)).map_err(qq)?;
    sink.write(&fwd.dtline).map_err(qq)?;
    let mut msg = std::fs::File::open(message).map_err(|e| {
        (
            Verdict::Deferral,
            format!("Unable to read message: {e}. (#4.3.0)"),
        )
    })?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match msg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => sink.write(&buf[..n]).map_err(qq)?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err((
                    Verdict::Deferral,
                    format!("Unable to read message: {e}. (#4.3.0)"),
                ))
            }
        }
    }
    let env = Envelope::new(fwd.sender.clone(), fwd.recipients.clone());
    sink.commit(&env).map_err(qq)
}

/// Complete a delivery: queue its forwards (if any) and write the final
/// report as qmail-local would (`did f+w+p` then `qp N`).
pub fn finish(mut out: Outcome, target: &Target, message: &Path) -> Outcome {
    let Some(fwd) = out.forward.take() else {
        return out;
    };
    match forward(target, &fwd, message) {
        Ok(r) => {
            out.report.push_str(&fwd.did);
            out.report.push_str(&format!("qp {}\n", r.qp));
        }
        Err((v, text)) => {
            out.verdict = v;
            out.report.push_str(&text);
            out.report.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests;
