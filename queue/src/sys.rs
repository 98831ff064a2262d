//! Thin safe wrappers over the `*at` system calls the store needs.
//!
//! The store keeps its queue directories open and works relative to them:
//! no `chdir` (it runs in a multi-threaded daemon), shorter path walks on
//! the hot path, and a directory fd to `fsync` for durable links.

use std::ffi::{CStr, CString};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A file name for the `*at` calls. Names the store makes never contain NUL;
/// one that does is reported as an invalid-input error, not a panic.
pub(crate) fn name(s: impl Into<Vec<u8>>) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn retry<T>(mut f: impl FnMut() -> (T, bool)) -> io::Result<T> {
    loop {
        let (value, failed) = f();
        if !failed {
            return Ok(value);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Open a directory (read-only, close-on-exec) by path.
pub(crate) fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let path = name(path.as_os_str().as_bytes())?;
    open_dir_raw(libc::AT_FDCWD, &path)
}

/// Open a directory relative to `dir`.
pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    open_dir_raw(dir.as_raw_fd(), name)
}

fn open_dir_raw(dir: libc::c_int, name: &CStr) -> io::Result<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
    // SAFETY: `name` is a valid C string; a returned fd >= 0 is ours.
    let fd = retry(|| {
        let fd = unsafe { libc::openat(dir, name.as_ptr(), flags) };
        (fd, fd < 0)
    })?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Create `name` in `dir` exclusively (qmail's `open_excl`), write-only,
/// with exactly `mode`: qmail-send (another user) must be able to read queue
/// files whatever umask the injecting process runs with.
pub(crate) fn create_excl_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<File> {
    let file = open_at(
        dir,
        name,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
        mode,
    )?;
    // SAFETY: fchmod on a descriptor we own.
    if unsafe { libc::fchmod(file.as_raw_fd(), mode as libc::mode_t) } != 0 {
        let err = io::Error::last_os_error();
        let _ = unlink_at(dir, name);
        return Err(err);
    }
    Ok(file)
}

/// Open the existing `name` in `dir` write-only (not truncated) and give
/// it exactly `mode`, as [`create_excl_at`] would have made it, with its
/// metadata from before; on failure it is removed. The mode is set only if
/// it differs: a change of mode is a change of the inode, which the next
/// `fdatasync` would write out.
pub(crate) fn reuse_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: u32,
) -> io::Result<(File, fs::Metadata)> {
    let reused = open_at(dir, name, libc::O_WRONLY, 0).and_then(|file| {
        let meta = file.metadata()?;
        if meta.permissions().mode() & 0o7777 != mode {
            file.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        Ok((file, meta))
    });
    if reused.is_err() {
        let _ = unlink_at(dir, name);
    }
    reused
}

/// `openat` returning a `File`.
pub(crate) fn open_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: u32,
) -> io::Result<File> {
    // SAFETY: valid C string and directory fd; mode is passed as the
    // variadic argument openat expects.
    let fd = retry(|| {
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                flags | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        (fd, fd < 0)
    })?;
    // SAFETY: `fd` was just returned by openat and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Hard-link `old_dir/old` to `new_dir/new`; fails if `new` exists.
pub(crate) fn link_at(
    old_dir: BorrowedFd<'_>,
    old: &CStr,
    new_dir: BorrowedFd<'_>,
    new: &CStr,
) -> io::Result<()> {
    // SAFETY: valid fds and C strings, as `from_to` passes them.
    from_to(old_dir, old, new_dir, new, |a, b, c, d| unsafe {
        libc::linkat(a, b, c, d, 0)
    })
}

/// Rename `old_dir/old` to `new_dir/new`; fails if `new` exists
/// (`RENAME_NOREPLACE`; `EINVAL` where the filesystem cannot promise it).
pub(crate) fn rename_noreplace_at(
    old_dir: BorrowedFd<'_>,
    old: &CStr,
    new_dir: BorrowedFd<'_>,
    new: &CStr,
) -> io::Result<()> {
    // SAFETY: valid fds and C strings, as `from_to` passes them.
    from_to(old_dir, old, new_dir, new, |a, b, c, d| unsafe {
        libc::renameat2(a, b, c, d, libc::RENAME_NOREPLACE)
    })
}

/// A call on two names, each relative to a directory, retried on EINTR.
fn from_to(
    old_dir: BorrowedFd<'_>,
    old: &CStr,
    new_dir: BorrowedFd<'_>,
    new: &CStr,
    call: impl Fn(libc::c_int, *const libc::c_char, libc::c_int, *const libc::c_char) -> libc::c_int,
) -> io::Result<()> {
    retry(|| {
        let r = call(
            old_dir.as_raw_fd(),
            old.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
        );
        ((), r != 0)
    })
}

/// Remove `dir/name`.
pub(crate) fn unlink_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: valid fd and C string.
    retry(|| {
        let r = unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
        ((), r != 0)
    })
}

/// `fsync` any descriptor, in particular a directory: this is what makes a
/// new link in it survive a power failure.
pub(crate) fn fsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: valid fd.
    retry(|| {
        let r = unsafe { libc::fsync(fd.as_raw_fd()) };
        ((), r != 0)
    })
}

/// `flock(2)`, retried when a signal interrupts a blocking wait.
pub(crate) fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: flock on a descriptor `file` owns.
    retry(|| ((), unsafe { libc::flock(file.as_raw_fd(), op) } != 0))
}
