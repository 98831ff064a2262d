//! Who gets mail for a local part: qmail-lspawn's users/cdb lookup, then
//! qmail-getpw's passwd walk, then the `alias` user.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sqmail_core::assign::{self, UserEntry};

use crate::cdbmap::FreshCdb;

/// qmail-getpw's `GETPW_USERLEN`: longer candidate names are not tried.
const USERLEN: usize = 32;

/// The passwd fields qmail-getpw uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pw {
    pub name: Vec<u8>,
    pub uid: u32,
    pub gid: u32,
    pub dir: Vec<u8>,
}

/// A passwd database; the system one, or a table in tests.
pub trait Passwd {
    /// `Ok(None)`: no such user. `Err`: the lookup itself failed.
    fn getpwnam(&self, name: &[u8]) -> io::Result<Option<Pw>>;
}

/// The system's passwd database through `getpwnam_r`.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemPasswd;

impl Passwd for SystemPasswd {
    fn getpwnam(&self, name: &[u8]) -> io::Result<Option<Pw>> {
        let Ok(cname) = CString::new(name) else {
            return Ok(None);
        };
        let mut buf = vec![0u8; 1024];
        loop {
            // SAFETY: all pointers are valid for the call; `pwd` is
            // plain data that getpwnam_r fills in.
            let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            let r = unsafe {
                libc::getpwnam_r(
                    cname.as_ptr(),
                    &mut pwd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                )
            };
            match r {
                0 if result.is_null() => return Ok(None),
                // SAFETY: on success the strings point into `buf`.
                0 => unsafe {
                    return Ok(Some(Pw {
                        name: CStr::from_ptr(pwd.pw_name).to_bytes().to_vec(),
                        uid: pwd.pw_uid,
                        gid: pwd.pw_gid,
                        dir: CStr::from_ptr(pwd.pw_dir).to_bytes().to_vec(),
                    }));
                },
                libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
                libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
                e => return Err(io::Error::from_raw_os_error(e)),
            }
        }
    }
}

/// qmail-lspawn's report texts for lookups that fail (all deferrals).
pub const CDB_TROUBLE: &str = "Trouble reading users/cdb in qmail-lspawn.";
pub const BAD_RECORD: &str = "Internal qmail-lspawn bug.";
pub const TEMP_FAILURE: &str = "Temporary failure in qmail-lspawn.";
pub const NFS_FAILURE: &str = "NFS failure in qmail-local.";
pub const NO_ALIAS: &str = "Unable to find alias user!";

/// `users/cdb` of `qmail_home`, kept for this process: qmail-lspawn opens
/// it for every delivery, which [`FreshCdb`] matches for one `stat`.
fn users_cdb(qmail_home: &Path) -> Arc<FreshCdb> {
    static HOMES: Mutex<Vec<(PathBuf, Arc<FreshCdb>)>> = Mutex::new(Vec::new());
    let path = qmail_home.join("users/cdb");
    let mut homes = HOMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, cdb)) = homes.iter().find(|(p, _)| *p == path) {
        return Arc::clone(cdb);
    }
    let cdb = Arc::new(FreshCdb::new(path.clone()));
    homes.push((path, Arc::clone(&cdb)));
    cdb
}

/// The user, home, dash and extension for `local` (not empty).
pub fn lookup(qmail_home: &Path, local: &[u8], pw: &dyn Passwd) -> Result<UserEntry, &'static str> {
    match users_cdb(qmail_home).get() {
        Ok(cdb) => match assign::lookup(local, |k| cdb.get(k)) {
            Ok(Some(e)) => return Ok(e),
            Ok(None) => {}
            Err(assign::LookupError::Cdb(_)) => return Err(CDB_TROUBLE),
            Err(assign::LookupError::BadRecord) => return Err(BAD_RECORD),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(_) => return Err(CDB_TROUBLE),
    }
    if let Some(e) = userext(local, pw)? {
        return Ok(e);
    }
    match pw.getpwnam(b"alias") {
        Ok(Some(p)) => Ok(UserEntry {
            user: p.name,
            uid: p.uid,
            gid: p.gid,
            home: p.dir,
            dash: b"-".to_vec(),
            ext: local.to_vec(),
        }),
        Ok(None) => Err(NO_ALIAS),
        Err(_) => Err(TEMP_FAILURE),
    }
}

/// qmail-getpw's `userext`: the longest prefix of `local` ending before a
/// `-` (or all of it) that names, lowercased, a non-root user who owns an
/// existing home directory.
fn userext(local: &[u8], pw: &dyn Passwd) -> Result<Option<UserEntry>, &'static str> {
    for end in (0..=local.len()).rev() {
        if end >= USERLEN || !(end == local.len() || local[end] == b'-') {
            continue;
        }
        let name = local[..end].to_ascii_lowercase();
        let Some(p) = pw.getpwnam(&name).map_err(|_| TEMP_FAILURE)? else {
            continue;
        };
        if p.uid == 0 {
            continue;
        }
        match std::fs::metadata(std::ffi::OsStr::from_bytes(&p.dir)) {
            Ok(st) if st.uid() == p.uid => {
                let (dash, ext) = if end < local.len() {
                    (b"-".to_vec(), local[end + 1..].to_vec())
                } else {
                    (Vec::new(), Vec::new())
                };
                return Ok(Some(UserEntry {
                    user: p.name,
                    uid: p.uid,
                    gid: p.gid,
                    home: p.dir,
                    dash,
                    ext,
                }));
            }
            Ok(_) => {}
            Err(e) if is_temp(&e) => return Err(NFS_FAILURE),
            Err(_) => {}
        }
    }
    Ok(None)
}

/// djb's `error_temp`: errors that may go away by themselves.
pub(crate) fn is_temp(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EINTR
                | libc::ENOMEM
                | libc::ETXTBSY
                | libc::EIO
                | libc::ETIMEDOUT
                | libc::EAGAIN
                | libc::ENFILE
                | libc::EMFILE
                | libc::ENOSPC
                | libc::EDQUOT
                | libc::ESTALE
                | libc::ENETDOWN
                | libc::ENETUNREACH
                | libc::ECONNREFUSED
                | libc::EHOSTUNREACH
        )
    )
}
