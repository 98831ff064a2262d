//! `sqmail queue` / `qmail-queue`: the whole program, minus fd plumbing.

use std::io::{self, Read};
use std::path::Path;
use std::sync::Once;
use std::time::Duration;

use crate::envelope::Envelope;
use crate::qq::QqError;
use crate::setup::user_uid;
use crate::store::{Invoker, Queue};

/// qmail-queue's `DEATH`: give up after 24 hours, well before qmail-send's
/// 36-hour cleanup could remove files still being written.
pub const DEATH: Duration = Duration::from_secs(86_400);

/// Read a message from `message` and its envelope from `envelope` (fd 0 and
/// fd 1 of qmail-queue), queue it under `home/queue`, and return the exit
/// code qmail-queue(8) specifies (0 when queued). `uid` is the real uid of
/// the caller; the users `alias`, `qmaild` and `qmails` are recognised as
/// qmail-queue does for the Received line.
///
/// Arms a watchdog that ends the process with 52 after [`DEATH`], like
/// qmail-queue's `alarm`, without cleaning up.
pub fn qmail_queue_main(home: &Path, message: impl Read, envelope: impl Read, uid: u32) -> i32 {
    arm_watchdog();
    match run(home, message, envelope, uid) {
        Ok(_) => 0,
        Err(e) => i32::from(e.exit_code()),
    }
}

fn run(home: &Path, mut message: impl Read, envelope: impl Read, uid: u32) -> Result<u64, QqError> {
    let queue = Queue::open(home)?;
    let known = |name| user_uid(name).ok().flatten();
    let invoker = Invoker::classify(uid, known("alias"), known("qmaild"), known("qmails"));
    let mut incoming = queue.begin(invoker)?;
    let mut buf = vec![0; 64 * 1024];
    loop {
        match message.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => incoming.write(&buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(QqError::new(QqError::READ)),
        }
    }
    let envelope = Envelope::read_from(envelope)?;
    incoming.commit(&envelope)
}

fn arm_watchdog() {
    static ARMED: Once = Once::new();
    ARMED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("qq-death".into())
            .spawn(|| {
                std::thread::sleep(DEATH);
                // SAFETY: _exit ends the process at once; like qmail-queue's
                // SIGALRM handler it deliberately skips all cleanup.
                unsafe { libc::_exit(i32::from(QqError::TIMEOUT)) }
            });
        // Without a watchdog thread we only lose the 24-hour limit.
        drop(spawned);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::create_queue;
    use std::fs;

    fn home() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        create_queue(tmp.path(), None).unwrap();
        tmp
    }

    /// Files under queue/{pid,intd,todo,mess}.
    fn leftovers(home: &Path) -> usize {
        ["pid", "intd", "todo"]
            .iter()
            .map(|d| fs::read_dir(home.join("queue").join(d)).unwrap().count())
            .sum::<usize>()
            + (0..23)
                .map(|i| {
                    fs::read_dir(home.join(format!("queue/mess/{i}")))
                        .unwrap()
                        .count()
                })
                .sum::<usize>()
    }

    fn run_qq(home: &Path, msg: &[u8], env: &[u8]) -> i32 {
        qmail_queue_main(home, msg, env, 4242)
    }

    #[test]
    fn queues_a_message() {
        let tmp = home();
        assert_eq!(
            run_qq(tmp.path(), b"Subject: x\n\nhi\n", b"Fa@b\0Tc@d\0\0"),
            0
        );
        let todo: Vec<_> = fs::read_dir(tmp.path().join("queue/todo"))
            .unwrap()
            .collect();
        assert_eq!(todo.len(), 1);
        let env = fs::read(todo[0].as_ref().unwrap().path()).unwrap();
        assert!(env.starts_with(b"u4242\0p"));
        assert!(env.ends_with(b"\0Fa@b\0Tc@d\0"));
        // An empty message and no recipients are both fine.
        assert_eq!(run_qq(tmp.path(), b"", b"F\0\0"), 0);
    }

    #[test]
    fn exit_codes() {
        let tmp = home();
        let long = [b"F".as_slice(), &[b'x'; 1003], b"\0\0"].concat();
        for (env, code) in [
            (&b""[..], 54),
            (b"Fa@b", 54),
            (b"Fa@b\0", 54),
            (b"Fa@b\0Tc@d\0", 54),
            (b"Xa@b\0\0", 91),
            (b"Fa@b\0Xc@d\0\0", 91),
            (&long[..], 11),
        ] {
            assert_eq!(run_qq(tmp.path(), b"body\n", env), code, "{env:?}");
            assert_eq!(leftovers(tmp.path()), 0, "nothing left after {code}");
        }
        assert_eq!(run_qq(&tmp.path().join("missing"), b"", b"F\0\0"), 61);
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(run_qq(empty.path(), b"", b"F\0\0"), 62);
    }

    #[test]
    fn message_read_error_is_54() {
        struct Broken(usize);
        impl Read for Broken {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::other("boom"));
                }
                self.0 -= 1;
                buf[0] = b'x';
                Ok(1)
            }
        }
        let tmp = home();
        let code = qmail_queue_main(tmp.path(), Broken(10), &b"F\0\0"[..], 1);
        assert_eq!(code, 54);
        assert_eq!(leftovers(tmp.path()), 0);
    }
}
