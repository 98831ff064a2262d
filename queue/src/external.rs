//! Injecting through an external qmail-queue program (`QMAILQUEUE`).
//!
//! netqmail semantics, as qmail.c's `qmail_open`/`qmail_close`: the program
//! runs in QMAILHOME with the message on fd 0 and the envelope on fd 1; the
//! message is streamed first, then the envelope; the program's exit code is
//! the verdict. notqmail's exit 82 reads the reply text from the program's
//! fd 6.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

use crate::envelope::Envelope;
use crate::qq::QqError;

/// Longest fd 6 reply text kept.
const CUSTOM_MAX: usize = 1024;

/// The fd the program writes its exit-82 reply text to.
const CUSTOM_FD: RawFd = 6;

/// The program `$QMAILQUEUE` names, if set. An empty value counts as unset:
/// netqmail would try to exec "" and fail every message, which is never
/// what an administrator meant.
pub fn qmailqueue_program() -> Option<OsString> {
    std::env::var_os("QMAILQUEUE").filter(|p| !p.is_empty())
}

/// A message being piped into an external qmail-queue program.
#[derive(Debug)]
pub struct External {
    child: Child,
    message: Option<ChildStdin>,
    envelope: Option<File>,
    custom: Option<File>,
    /// A write to the program failed (it exited early or closed fd 0);
    /// later writes are skipped and its exit code decides, as in qmail.
    flagerr: bool,
    reaped: bool,
}

/// `exec` of a file that another process has open for writing fails with
/// ETXTBSY. That happens for a moment after the program is replaced, or
/// while some thread's fork still holds the descriptor it was written
/// with; it passes within milliseconds, so a few retries cover it.
fn spawn_retrying(cmd: &mut Command) -> io::Result<std::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 20 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(5 * tries));
            }
            result => return result,
        }
    }
}

impl External {
    /// Start `program` (relative names are taken from `qmail_home`, with no
    /// PATH search, like `execv` after qmail's `chdir`). 61 if the home
    /// directory is unusable, 120 if the program cannot be started.
    pub fn spawn(program: &OsStr, qmail_home: &Path) -> Result<External, QqError> {
        if !qmail_home.is_dir() {
            return Err(QqError::new(QqError::HOME));
        }
        let exec_err = |_| QqError::new(QqError::EXEC);
        let (env_read, env_write) = pipe().map_err(exec_err)?;
        let (custom_read, custom_write) = pipe().map_err(exec_err)?;
        let custom_raw = custom_write.as_raw_fd();
        let mut cmd = Command::new(qmail_home.join(program));
        cmd.current_dir(qmail_home)
            .stdin(Stdio::piped())
            .stdout(Stdio::from(env_read));
        // SAFETY: the closure only calls dup2 and fcntl, which are
        // async-signal-safe, and touches no memory shared with the parent.
        unsafe {
            cmd.pre_exec(move || {
                if custom_raw == CUSTOM_FD {
                    if libc::fcntl(CUSTOM_FD, libc::F_SETFD, 0) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(custom_raw, CUSTOM_FD) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = spawn_retrying(&mut cmd).map_err(exec_err)?;
        drop(cmd);
        drop(custom_write);
        let message = child.stdin.take();
        Ok(External {
            child,
            message,
            envelope: Some(File::from(env_write)),
            custom: Some(File::from(custom_read)),
            flagerr: false,
            reaped: false,
        })
    }

    /// The program's pid: qmail-smtpd's `qp` in "250 ok ... qp N".
    pub fn qp(&self) -> u32 {
        self.child.id()
    }

    /// Stream message bytes to the program. Never fails by itself: if the
    /// program stops reading, the rest is dropped and its exit code (at
    /// commit) says why.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), QqError> {
        if !self.flagerr {
            if let Some(m) = &mut self.message {
                if m.write_all(bytes).is_err() {
                    self.flagerr = true;
                }
            }
        }
        Ok(())
    }

    /// Close the message, send the envelope, and wait for the verdict.
    pub fn commit(mut self, envelope: &Envelope) -> Result<(), QqError> {
        self.message = None;
        if let Some(mut e) = self.envelope.take() {
            if !self.flagerr && e.write_all(&envelope.to_qq_bytes()).is_err() {
                self.flagerr = true;
            }
        }
        self.wait()
    }

    /// Give up: the program sees end of file before the envelope is
    /// complete, so qmail-queue exits 54 and removes what it wrote.
    pub fn abort(self) {}

    fn wait(&mut self) -> Result<(), QqError> {
        self.message = None;
        self.envelope = None;
        let status = loop {
            match self.child.wait() {
                Ok(status) => break status,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.reaped = true;
                    return Err(QqError::wait_surprise());
                }
            }
        };
        self.reaped = true;
        match status.code() {
            None => Err(QqError::crashed()),
            Some(0) if !self.flagerr => Ok(()),
            Some(0) => Err(QqError::new(QqError::READ)),
            Some(82) => Err(QqError::custom(&self.read_custom())),
            Some(code) => Err(QqError::new(u8::try_from(code).unwrap_or(u8::MAX))),
        }
    }

    /// Whatever the program left on fd 6, without waiting for writers it
    /// may have passed the descriptor to.
    fn read_custom(&mut self) -> Vec<u8> {
        let Some(file) = self.custom.take() else {
            return Vec::new();
        };
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            if flags != -1 {
                libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
        }
        let mut text = Vec::new();
        let _ = file.take(CUSTOM_MAX as u64).read_to_end(&mut text);
        text
    }
}

impl Drop for External {
    /// Never leave a zombie: close both pipes (an incomplete envelope makes
    /// qmail-queue discard the message) and reap the program.
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.wait();
        }
    }
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in qmail-queue: a shell script in a fresh home directory.
    fn script(body: &str) -> (tempfile::TempDir, OsString) {
        let home = tempfile::tempdir().unwrap();
        let path = home.path().join("qq.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        (home, "qq.sh".into())
    }

    #[test]
    fn passes_message_and_envelope() {
        // fd 1 is the envelope pipe: `<&1` reads it.
        let (home, prog) = script("cat > got.msg; cat <&1 > got.env; exit 0");
        let mut x = External::spawn(&prog, home.path()).unwrap();
        assert!(x.qp() > 0);
        x.write(b"Subject: hi\n\n").unwrap();
        x.write(b"body\n").unwrap();
        let env = Envelope::new("a@b", vec![b"c@d".to_vec()]);
        x.commit(&env).unwrap();
        let msg = std::fs::read(home.path().join("got.msg")).unwrap();
        assert_eq!(msg, b"Subject: hi\n\nbody\n");
        let got = std::fs::read(home.path().join("got.env")).unwrap();
        assert_eq!(got, b"Fa@b\0Tc@d\0\0");
    }

    #[test]
    fn exit_codes_map() {
        for (code, perm) in [(31u8, true), (71, false), (11, true), (53, false)] {
            let (home, prog) = script(&format!("cat >/dev/null; exit {code}"));
            let mut x = External::spawn(&prog, home.path()).unwrap();
            x.write(b"x\n").unwrap();
            let err = x.commit(&Envelope::default()).unwrap_err();
            assert_eq!(err.exit_code(), code);
            assert_eq!(err.is_permanent(), perm);
        }
    }

    #[test]
    fn custom_text_on_fd6() {
        let (home, prog) = script("cat >/dev/null; printf 'Dno thanks (#5.7.1)' >&6; exit 82");
        let x = External::spawn(&prog, home.path()).unwrap();
        let err = x.commit(&Envelope::default()).unwrap_err();
        assert_eq!(err.exit_code(), 82);
        assert!(err.is_permanent());
        assert_eq!(err.text(), "no thanks (#5.7.1)");
    }

    #[test]
    fn early_exit_zero_is_read_error() {
        // Exits without reading: our writes fail, and exit 0 is not trusted.
        let (home, prog) = script("exit 0");
        let mut x = External::spawn(&prog, home.path()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        x.write(&vec![b'x'; 1 << 20]).unwrap();
        let err = x.commit(&Envelope::default()).unwrap_err();
        assert_eq!(err.exit_code(), 54);
    }

    #[test]
    fn crash_and_exec_failure() {
        let (home, prog) = script("kill -9 $$");
        let x = External::spawn(&prog, home.path()).unwrap();
        assert_eq!(
            x.commit(&Envelope::default()).unwrap_err().text(),
            "qq crashed (#4.3.0)"
        );
        let err = External::spawn(OsStr::new("missing"), home.path()).unwrap_err();
        assert_eq!(err.exit_code(), 120);
        let err = External::spawn(OsStr::new("x"), Path::new("/nonexistent/home")).unwrap_err();
        assert_eq!(err.exit_code(), 61);
    }

    #[test]
    fn abort_gives_incomplete_envelope() {
        let (home, prog) = script("cat >/dev/null; cat <&1 > env; exit 54");
        let mut x = External::spawn(&prog, home.path()).unwrap();
        x.write(b"x").unwrap();
        x.abort();
        assert_eq!(std::fs::read(home.path().join("env")).unwrap(), b"");
    }
}
