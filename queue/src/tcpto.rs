//! `lock/tcpto` (and `lock/tcpto6`) on disk: qmail-remote's memory of
//! hosts that time out, shared by every delivery under an exclusive
//! `flock`, as qmail's `tcpto.c` does. The rules are
//! [`sqmail_core::tcpto`]'s; a file that cannot be read or written only
//! costs the memory, never a delivery.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use sqmail_core::tcpto::{Entry, Family, Table};

use crate::sys;

/// The tcpto files of one qmail home.
#[derive(Clone, Debug)]
pub struct Tcpto {
    lock_dir: PathBuf,
}

impl Tcpto {
    pub fn new(home: &Path) -> Tcpto {
        Tcpto {
            lock_dir: home.join("queue/lock"),
        }
    }

    /// Whether to leave `ip` alone now (a missing file remembers nothing).
    pub fn skip(&self, ip: IpAddr, now: u64) -> bool {
        // qmail spreads the hold by `getpid() & 31`.
        let jitter = (std::process::id() & 31) as u8;
        let mut skip = false;
        let _ = self.with(Family::of(ip), false, |t| {
            skip = t.skip(ip, now, jitter);
            false
        });
        skip
    }

    /// Records a connection to `ip`: timed out, or made.
    pub fn record(&self, ip: IpAddr, now: u64, timed_out: bool) -> io::Result<()> {
        self.with(Family::of(ip), timed_out, |t| t.record(ip, now, timed_out))
    }

    /// Every entry with timeouts counted, both families (`qmail-tcpto`).
    pub fn list(&self) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for family in [Family::V4, Family::V6] {
            self.with(family, false, |t| {
                out.extend(t.timed_out().copied());
                false
            })?;
        }
        Ok(out)
    }

    /// Clears every count (`qmail-tcpok`).
    pub fn clear(&self) -> io::Result<()> {
        for family in [Family::V4, Family::V6] {
            self.with(family, false, |t| {
                let had = t.timed_out().next().is_some();
                t.clear();
                had
            })?;
        }
        Ok(())
    }

    /// Runs `f` on the table under the lock; writes it back when `f` says
    /// it changed it. Creates the file only when `create` (a timeout to keep).
    fn with(
        &self,
        family: Family,
        create: bool,
        f: impl FnOnce(&mut Table) -> bool,
    ) -> io::Result<()> {
        let path = self.lock_dir.join(family.file());
        let mut file = match open(&path, create) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                f(&mut Table::parse(family, b""));
                return Ok(());
            }
            Err(e) => return Err(ctx(&path, e)),
        };
        sys::flock(&file, libc::LOCK_EX).map_err(|e| ctx(&path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| ctx(&path, e))?;
        let mut table = Table::parse(family, &bytes);
        if f(&mut table) {
            let new = table.bytes();
            file.seek(SeekFrom::Start(0))
                .and_then(|_| file.write_all(&new))
                .and_then(|_| file.set_len(new.len() as u64))
                .map_err(|e| ctx(&path, e))?;
        }
        Ok(())
    }
}

fn open(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .mode(0o644)
        .open(path)
}

fn ctx(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_remember_timeouts_across_handles() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("queue/lock")).unwrap();
        let t = Tcpto::new(dir.path());
        let (a, b): (IpAddr, IpAddr) =
            ("192.0.2.7".parse().unwrap(), "2001:db8::7".parse().unwrap());
        assert!(!t.skip(a, 100));
        t.record(a, 100, false).unwrap();
        assert!(
            !dir.path().join("queue/lock/tcpto").exists(),
            "nothing to remember"
        );
        for (ip, now) in [(a, 100), (a, 300), (b, 100), (b, 300)] {
            t.record(ip, now, true).unwrap();
        }
        let again = Tcpto::new(dir.path());
        assert!(again.skip(a, 400) && again.skip(b, 400));
        assert_eq!(
            std::fs::read(dir.path().join("queue/lock/tcpto"))
                .unwrap()
                .len(),
            16
        );
        assert_eq!(again.list().unwrap().len(), 2);
        again.clear().unwrap();
        assert!(!t.skip(a, 400) && !t.skip(b, 400));
        assert!(t.list().unwrap().is_empty());
    }
}
