//! Stopping a daemon from a signal handler or from another thread.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long open sessions may go on after a shutdown unless told otherwise.
const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// Asks `serve_smtp` to stop: it stops accepting at once, lets open
/// sessions finish for a grace period, closes the rest (waiting for any
/// job that is committing a message), then returns.
///
/// Triggering sets a flag and writes one byte into a socket pair whose
/// other end the event loop watches. Both are async-signal-safe, so a
/// signal handler triggers it exactly as another thread does. The byte is
/// never read: once triggered, it stays triggered for every loop watching.
#[derive(Clone, Debug)]
pub struct Shutdown {
    inner: Arc<Inner>,
    grace: Duration,
}

#[derive(Debug)]
struct Inner {
    flag: Arc<AtomicBool>,
    wake_rx: UnixStream,
    wake_tx: UnixStream,
}

impl Shutdown {
    pub fn new() -> io::Result<Self> {
        let (wake_rx, wake_tx) = UnixStream::pair()?;
        // A full buffer must never block a signal handler or `trigger`.
        wake_tx.set_nonblocking(true)?;
        Ok(Shutdown {
            inner: Arc::new(Inner {
                flag: Arc::new(AtomicBool::new(false)),
                wake_rx,
                wake_tx,
            }),
            grace: DEFAULT_GRACE,
        })
    }

    /// A `Shutdown` that SIGTERM and SIGINT trigger.
    pub fn on_signals() -> io::Result<Self> {
        let shutdown = Shutdown::new()?;
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(signal, Arc::clone(&shutdown.inner.flag))?;
            // The handler owns its own descriptor, valid for the process's life.
            signal_hook::low_level::pipe::register(signal, shutdown.inner.wake_tx.try_clone()?)?;
        }
        Ok(shutdown)
    }

    /// How long sessions may go on after the trigger (default 10 s).
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    pub fn trigger(&self) {
        self.inner.flag.store(true, Ordering::SeqCst);
        // WouldBlock means bytes are already waiting, which is as good.
        let _ = (&self.inner.wake_tx).write(&[1]);
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.flag.load(Ordering::SeqCst)
    }

    /// The end that turns readable once triggered.
    pub(crate) fn wake_fd(&self) -> &UnixStream {
        &self.inner.wake_rx
    }
}
