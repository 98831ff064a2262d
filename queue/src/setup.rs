//! Creating the queue tree, as qmail's `install` (hier.c) does.
//!
//! Idempotent: directories are created if missing and their owner and mode
//! set; files are created only if missing and never truncated (`lock/tcpto`
//! holds qmail-remote's timeout table).

use std::ffi::CString;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{chown, DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::store::DEFAULT_SPLIT;

/// The uids and gids of qmail's users and groups (conf-users,
/// conf-groups), as found in the password database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QmailIds {
    /// `alias`: runs deliveries to `~alias`.
    pub alias: u32,
    /// `qmaild`: the network daemons.
    pub qmaild: u32,
    /// `qmaill`: the loggers.
    pub qmaill: u32,
    /// `root`: owns the programs and control files.
    pub owner: u32,
    /// `qmailp`: runs qmail-getpw's helpers.
    pub qmailp: u32,
    /// `qmailq`: owns the queue and runs qmail-queue.
    pub qmailq: u32,
    /// `qmailr`: runs qmail-remote.
    pub qmailr: u32,
    /// `qmails`: runs qmail-send.
    pub qmails: u32,
    /// Group `qmail`.
    pub qmail_gid: u32,
    /// Group `nofiles`.
    pub nofiles_gid: u32,
}

impl QmailIds {
    /// Look up every qmail user and group; an error names the first one
    /// missing.
    pub fn lookup() -> io::Result<QmailIds> {
        let user = |name: &str| {
            user_uid(name)?
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no user {name}")))
        };
        let group = |name: &str| {
            group_gid(name)?
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no group {name}")))
        };
        Ok(QmailIds {
            alias: user("alias")?,
            qmaild: user("qmaild")?,
            qmaill: user("qmaill")?,
            owner: user("root")?,
            qmailp: user("qmailp")?,
            qmailq: user("qmailq")?,
            qmailr: user("qmailr")?,
            qmails: user("qmails")?,
            qmail_gid: group("qmail")?,
            nofiles_gid: group("nofiles")?,
        })
    }
}

/// The uid of user `name`, if there is one.
pub fn user_uid(name: &str) -> io::Result<Option<u32>> {
    let cname = CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain old data; getpwnam_r fills it, pointing into
    // `buf`, which outlives every use of `pw`.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok((!result.is_null()).then_some(pw.pw_uid))
}

/// The gid of group `name`, if there is one.
pub fn group_gid(name: &str) -> io::Result<Option<u32>> {
    let cname = CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    // SAFETY: as in `user_uid`.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut gr,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok((!result.is_null()).then_some(gr.gr_gid))
}

/// Create `qmail_home/queue` with qmail's layout and modes (conf-split 23).
/// With `ids`, owners are qmail's users (run as root); without, everything
/// belongs to the current user, as in the embedded setup.
pub fn create_queue(qmail_home: &Path, ids: Option<QmailIds>) -> io::Result<()> {
    create_queue_split(qmail_home, ids, DEFAULT_SPLIT)
}

/// [`create_queue`] with another `conf-split`.
pub fn create_queue_split(qmail_home: &Path, ids: Option<QmailIds>, split: u64) -> io::Result<()> {
    if split == 0 {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    if !qmail_home.is_dir() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(qmail_home)?;
    }
    let q = Installer {
        base: qmail_home.join("queue"),
        ids,
    };
    let (uq, us, ur) = match ids {
        Some(i) => (Some(i.qmailq), Some(i.qmails), Some(i.qmailr)),
        None => (None, None, None),
    };
    q.dir("", uq, 0o750)?;
    q.dir("pid", uq, 0o700)?;
    q.dir("intd", uq, 0o700)?;
    q.dir("todo", uq, 0o750)?;
    q.dir("bounce", us, 0o700)?;
    q.split_dir("mess", uq, 0o750, split)?;
    q.split_dir("info", us, 0o700, split)?;
    q.split_dir("local", us, 0o700, split)?;
    q.split_dir("remote", us, 0o700, split)?;
    q.dir("lock", uq, 0o750)?;
    q.file("lock/tcpto", 1024, ur, 0o644)?;
    q.file("lock/sendmutex", 0, us, 0o600)?;
    q.fifo("lock/trigger", us, 0o622)?;
    Ok(())
}

struct Installer {
    base: std::path::PathBuf,
    ids: Option<QmailIds>,
}

impl Installer {
    /// Set owner (when running with qmail's ids) and mode, as install does
    /// for every entry, whether it was just made or already there.
    fn own(&self, path: &Path, uid: Option<u32>, mode: u32) -> io::Result<()> {
        if let Some(ids) = self.ids {
            chown(path, uid, Some(ids.qmail_gid))?;
        }
        fs::set_permissions(path, Permissions::from_mode(mode))
    }

    fn dir(&self, name: &str, uid: Option<u32>, mode: u32) -> io::Result<()> {
        let path = self.base.join(name);
        match DirBuilder::new().mode(mode).create(&path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
            other => other?,
        }
        self.own(&path, uid, mode)
    }

    fn split_dir(&self, name: &str, uid: Option<u32>, mode: u32, split: u64) -> io::Result<()> {
        self.dir(name, uid, mode)?;
        for i in 0..split {
            self.dir(&format!("{name}/{i}"), uid, mode)?;
        }
        Ok(())
    }

    /// A file of `len` zero bytes, made only if missing.
    fn file(&self, name: &str, len: usize, uid: Option<u32>, mode: u32) -> io::Result<()> {
        let path = self.base.join(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(&vec![0; len])?;
                f.sync_all()?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        self.own(&path, uid, mode)
    }

    /// A FIFO; an existing entry of another type is an error, since
    /// qmail-send could not wait on it.
    fn fifo(&self, name: &str, uid: Option<u32>, mode: u32) -> io::Result<()> {
        let path = self.base.join(name);
        let cpath = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: valid C string.
        if unsafe { libc::mkfifo(cpath.as_ptr(), mode as libc::mode_t) } != 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::AlreadyExists {
                return Err(err);
            }
            if !fs::symlink_metadata(&path)?.file_type().is_fifo() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a FIFO", path.display()),
                ));
            }
        }
        self.own(&path, uid, mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn creates_qmail_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("qmail");
        create_queue(&home, None).unwrap();
        let q = home.join("queue");
        for (d, m) in [
            ("", 0o750),
            ("pid", 0o700),
            ("intd", 0o700),
            ("todo", 0o750),
            ("bounce", 0o700),
            ("mess", 0o750),
            ("mess/0", 0o750),
            ("mess/22", 0o750),
            ("info/22", 0o700),
            ("local/0", 0o700),
            ("remote/22", 0o700),
            ("lock", 0o750),
            ("lock/tcpto", 0o644),
            ("lock/sendmutex", 0o600),
            ("lock/trigger", 0o622),
        ] {
            assert_eq!(mode(&q.join(d)), m, "{d}");
        }
        assert!(!q.join("mess/23").exists());
        assert!(!q.join("todo/0").exists(), "todo is not split (1.03)");
        assert!(!q.join("intd/0").exists(), "intd is not split (1.03)");
        assert_eq!(fs::read(q.join("lock/tcpto")).unwrap(), vec![0; 1024]);
        assert_eq!(fs::metadata(q.join("lock/sendmutex")).unwrap().len(), 0);
        assert!(fs::symlink_metadata(q.join("lock/trigger"))
            .unwrap()
            .file_type()
            .is_fifo());
    }

    #[test]
    fn idempotent_and_keeps_files() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path();
        create_queue(home, None).unwrap();
        let tcpto = home.join("queue/lock/tcpto");
        fs::write(&tcpto, b"remembered timeouts").unwrap();
        fs::set_permissions(home.join("queue/todo"), Permissions::from_mode(0o777)).unwrap();
        create_queue(home, None).unwrap();
        assert_eq!(fs::read(&tcpto).unwrap(), b"remembered timeouts");
        assert_eq!(mode(&home.join("queue/todo")), 0o750, "modes are repaired");
    }

    #[test]
    fn refuses_non_fifo_trigger() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path();
        fs::create_dir_all(home.join("queue/lock")).unwrap();
        fs::write(home.join("queue/lock/trigger"), b"").unwrap();
        assert!(create_queue(home, None).is_err());
    }

    #[test]
    fn owners_with_ids() {
        // As a normal user we can only chown to ourselves; this still runs
        // the chown path with every role mapped to the current ids.
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let ids = QmailIds {
            alias: uid,
            qmaild: uid,
            qmaill: uid,
            owner: uid,
            qmailp: uid,
            qmailq: uid,
            qmailr: uid,
            qmails: uid,
            qmail_gid: gid,
            nofiles_gid: gid,
        };
        let tmp = tempfile::tempdir().unwrap();
        create_queue(tmp.path(), Some(ids)).unwrap();
        let m = fs::metadata(tmp.path().join("queue/mess/5")).unwrap();
        assert_eq!((m.uid(), m.gid()), (uid, gid));
    }

    #[test]
    fn user_lookup() {
        assert_eq!(user_uid("root").unwrap(), Some(0));
        assert_eq!(user_uid("no-such-user-sqmail").unwrap(), None);
        assert_eq!(group_gid("no-such-group-sqmail").unwrap(), None);
        assert!(user_uid("a\0b").is_err());
    }
}
