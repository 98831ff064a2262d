//! Maildir delivery (maildir(5)): write the message where no reader looks
//! (an anonymous file in `tmp/`'s filesystem, or a unique name in `tmp/`
//! where the system has no `O_TMPFILE`), fsync, link it into `new/` under a
//! unique name, fsync `new/`. Readers never see a partial message and
//! nothing is locked.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Deliveries made by this process, the `Q` part of the unique name, so
/// threads of one process never collide.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// `secs.MusecPpidQseq.host`, with `/` and `:` in the host escaped as the
/// Maildir spec says.
pub(super) fn unique_name() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut host = String::new();
    for c in hostname().chars() {
        match c {
            '/' => host.push_str("\\057"),
            ':' => host.push_str("\\072"),
            c => host.push(c),
        }
    }
    format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        seq,
        host
    )
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if r != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(0);
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Deliver to the Maildir `dir`; the error is qmail-local's report text.
pub(super) fn deliver(dir: &Path, head: &[&[u8]], message: &Path) -> Result<(), String> {
    let tmpdir = dir.join("tmp");
    let newdir = dir.join("new");
    let delivered = deliver_into(&tmpdir, &newdir, head, message);
    // qmail-local's chdir check, made after the fact: a delivery to a
    // whole Maildir, the usual case, then costs no stat for it.
    if delivered.is_err() && !(tmpdir.is_dir() && newdir.is_dir()) {
        return Err("Unable to chdir to maildir. (#4.2.1)".into());
    }
    delivered
}

fn deliver_into(
    tmpdir: &Path,
    newdir: &Path,
    head: &[&[u8]],
    message: &Path,
) -> Result<(), String> {
    let linked = match anonymous_file(tmpdir) {
        Ok(file) => link_anonymous(&write(file, head, message)?, newdir)?,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            false
        }
        Err(e) => return Err(temp(e)),
    };
    if !linked {
        through_tmp(tmpdir, newdir, head, message)?;
    }
    // Not through the process-wide GroupSync registry: as root this runs
    // in a child forked from a threaded daemon, where a lock another
    // thread held at the fork would never be released.
    File::open(newdir).and_then(|d| d.sync_all()).map_err(temp)
}

/// A file in `tmpdir`'s filesystem with no name yet (`O_TMPFILE`): a crash
/// leaves nothing in `tmp/` to clean, and creating it takes no lock on
/// `tmp/`, for which concurrent deliveries to one Maildir would queue.
fn anonymous_file(tmpdir: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(tmpdir)
}

/// Give the written, fsynced anonymous `file` a unique name in `new/`.
/// False if this system cannot (no `/proc`): deliver through `tmp/` then.
fn link_anonymous(file: &File, newdir: &Path) -> Result<bool, String> {
    // Linking by descriptor (AT_EMPTY_PATH) needs a capability; the /proc
    // path to the descriptor does not.
    let proc = format!("/proc/self/fd/{}", file.as_raw_fd());
    let proc = CString::new(proc).map_err(|_| temp(io::ErrorKind::InvalidInput.into()))?;
    let mut tries = 0;
    loop {
        let new = newdir.join(unique_name());
        let new = CString::new(new.into_os_string().into_vec())
            .map_err(|_| temp(io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: both are valid C strings; AT_FDCWD with absolute or
        // relative paths is what linkat expects.
        let r = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                proc.as_ptr(),
                libc::AT_FDCWD,
                new.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EEXIST) if tries < 2 => tries += 1,
            Some(libc::EINTR) => {}
            Some(libc::ENOENT) if !Path::new("/proc/self/fd").is_dir() => return Ok(false),
            _ => return Err(temp(e)),
        }
    }
}

/// maildir(5) as written: a unique name in `tmp/`, then a link into `new/`
/// (rename where links are not supported) and the `tmp/` name removed.
pub(super) fn through_tmp(
    tmpdir: &Path,
    newdir: &Path,
    head: &[&[u8]],
    message: &Path,
) -> Result<(), String> {
    let mut tries = 0;
    let (name, file) = loop {
        let name = unique_name();
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmpdir.join(&name))
        {
            Ok(f) => break (name, f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 2 => tries += 1,
            Err(e) => return Err(temp(e)),
        }
    };
    let tmp = tmpdir.join(&name);
    let result = write(file, head, message).and_then(|_| {
        let new = newdir.join(&name);
        match fs::hard_link(&tmp, &new) {
            Ok(()) => {
                let _ = fs::remove_file(&tmp);
                Ok(())
            }
            // Filesystems without hard links (some FUSE, some network ones).
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EPERM | libc::EOPNOTSUPP | libc::EXDEV)
                ) =>
            {
                fs::rename(&tmp, &new).map_err(temp)
            }
            Err(e) => Err(temp(e)),
        }
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Write the new header lines and the message, and fsync.
fn write(file: File, head: &[&[u8]], message: &Path) -> Result<File, String> {
    let mut msg = File::open(message).map_err(read_err)?;
    let mut out = BufWriter::new(file);
    for h in head {
        out.write_all(h).map_err(temp)?;
    }
    copy(&mut msg, &mut out)?;
    let file = out.into_inner().map_err(|e| temp(e.into_error()))?;
    file.sync_all().map_err(temp)?;
    Ok(file)
}

/// Copy keeping read and write errors apart (they get different reports).
pub(super) fn copy(from: &mut File, to: &mut impl Write) -> Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match io::Read::read(from, &mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        to.write_all(&buf[..n]).map_err(temp)?;
    }
}

fn read_err(e: io::Error) -> String {
    format!("Unable to read message: {e}. (#4.3.0)")
}

fn temp(e: io::Error) -> String {
    format!("Temporary error on maildir delivery: {e}. (#4.3.0)")
}
