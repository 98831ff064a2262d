//! `lock/trigger`: qmail-queue writes a byte into this FIFO after each
//! commit; every read that returns is one wake-up for qmail-send.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

/// The thread reading the FIFO. It holds a write end of its own, so the
/// read never sees end-of-file when injectors close theirs.
pub struct Trigger {
    writer: File,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Trigger {
    /// Starts reading `queue/lock/trigger`; `wake` is called once per read
    /// and returns false to stop.
    pub fn start(queue: &Path, wake: impl Fn() -> bool + Send + 'static) -> io::Result<Trigger> {
        let path = queue.join("lock/trigger");
        // Read end first, non-blocking, so opening cannot wait for a writer.
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let writer = OpenOptions::new().write(true).open(&path)?;
        set_blocking(&reader)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("sqmail-trigger".into())
            .spawn(move || {
                let mut buf = [0u8; 1024];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => return,
                        Ok(_) => {
                            if stopped.load(Ordering::Relaxed) || !wake() {
                                return;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return,
                    }
                }
            })?;
        Ok(Trigger {
            writer,
            stop,
            thread: Some(thread),
        })
    }
}

fn set_blocking(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Trigger {
    /// One more byte wakes the thread to see the stop flag.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.writer.write_all(b"x");
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
