//! A Maildir delivery as the recipient, on the calling thread, for a
//! daemon running as root.
//!
//! Why: qmail-lspawn forks a child per delivery to become the user, and a
//! fork of a threaded daemon costs more CPU than the delivery itself (it
//! made a root-run sqmail slower than Postfix). Linux keeps credentials per
//! thread: the raw `setresuid`, `setresgid` and `setgroups` system calls
//! (not libc's wrappers, which change every thread of the process) change
//! only the caller's. The thread takes the user's groups, effective gid and
//! effective uid; the kernel then clears its effective capabilities, so
//! every file access is checked as the user's, exactly as in a child that
//! has called `setuid`. Its real and saved ids stay root, which is what
//! lets it change back afterwards.
//!
//! That is safe only for code that runs no program: a program started with
//! a saved uid of root could regain root. So only a delivery whose
//! instructions are all Maildirs runs here (the caller asks qmail-local for
//! exactly that); anything else forks as before.

use std::io;

/// Runs `f` with the thread's effective uid, gid and groups those of the
/// user, then restores root's. An error means nothing was run.
pub(super) fn as_user_on_this_thread<T>(
    uid: u32,
    gid: u32,
    f: impl FnOnce() -> T,
) -> io::Result<T> {
    let switched = Switched::to(uid, gid)?;
    let out = f();
    drop(switched);
    Ok(out)
}

/// The thread's root credentials, restored when dropped (also when `f`
/// panics).
struct Switched {
    egid: u32,
    groups: Vec<libc::gid_t>,
}

/// `-1`: leave that id as it is.
const KEEP: libc::c_long = -1;

fn check(ret: libc::c_long) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_groups(groups: &[libc::gid_t]) -> io::Result<()> {
    // SAFETY: the raw system call with a valid list and its length.
    check(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })
}

fn set_egid(gid: u32) -> io::Result<()> {
    // SAFETY: a raw system call on plain integers.
    check(unsafe { libc::syscall(libc::SYS_setresgid, KEEP, libc::c_long::from(gid), KEEP) })
}

fn set_euid(uid: u32) -> io::Result<()> {
    // SAFETY: a raw system call on plain integers.
    check(unsafe { libc::syscall(libc::SYS_setresuid, KEEP, libc::c_long::from(uid), KEEP) })
}

impl Switched {
    fn to(uid: u32, gid: u32) -> io::Result<Switched> {
        // SAFETY: getegid and getgroups have no preconditions; the buffer
        // is sized by the first call.
        let (egid, groups) = unsafe {
            let n = libc::getgroups(0, std::ptr::null_mut());
            let mut groups = vec![0; usize::try_from(n).map_err(|_| io::Error::last_os_error())?];
            let n = libc::getgroups(n, groups.as_mut_ptr());
            groups.truncate(usize::try_from(n).map_err(|_| io::Error::last_os_error())?);
            (libc::getegid(), groups)
        };
        let back = Switched { egid, groups };
        // Groups and gid first: changing them needs the root that the uid
        // change gives up. A failure part way restores what was changed.
        set_groups(&[gid])?;
        let switched = set_egid(gid).and_then(|()| set_euid(uid));
        match switched {
            Ok(()) => Ok(back),
            Err(e) => {
                drop(back);
                Err(e)
            }
        }
    }
}

impl Drop for Switched {
    fn drop(&mut self) {
        // The uid first, which gives back the right to set the rest. With
        // the real and saved uid still root this cannot fail; if it did,
        // the thread would go on as the user, so stop everything instead.
        let restored = set_euid(0)
            .and_then(|()| set_egid(self.egid))
            .and_then(|()| set_groups(&self.groups));
        if restored.is_err() {
            std::process::abort();
        }
    }
}
