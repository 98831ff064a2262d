//! SIGTERM and SIGINT as a [`Shutdown`]. The handler only writes to
//! signal-hook's self-pipe; a thread of our own reads it and calls
//! [`Shutdown::trigger`], which takes a lock and wakes the runtime's loop:
//! work a signal handler must not do.

use std::io;
use std::thread::{self, JoinHandle};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};
use sqmail_core::service::Shutdown;

/// The thread that triggers `shutdown` on SIGTERM or SIGINT. Dropping it
/// stops the thread and unregisters the signals.
pub struct SignalThread {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

pub fn trigger_on_signals(shutdown: &Shutdown) -> io::Result<SignalThread> {
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let handle = signals.handle();
    let shutdown = shutdown.clone();
    let thread = thread::Builder::new()
        .name("sqmail-signals".into())
        .spawn(move || {
            // Ends when the handle is closed.
            for _ in signals.forever() {
                shutdown.trigger();
            }
        })?;
    Ok(SignalThread {
        handle,
        thread: Some(thread),
    })
}

impl Drop for SignalThread {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn wait_for(shutdown: &Shutdown) -> bool {
        let start = Instant::now();
        while !shutdown.is_triggered() && start.elapsed() < Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(5));
        }
        shutdown.is_triggered()
    }

    /// One test for both signals: each raise reaches this process, and the
    /// registration must stand while it does.
    #[test]
    fn sigterm_and_sigint_trigger_the_shutdown() {
        for signal in [SIGTERM, SIGINT] {
            let shutdown = Shutdown::new();
            let thread = trigger_on_signals(&shutdown).unwrap();
            assert!(!shutdown.is_triggered());
            signal_hook::low_level::raise(signal).unwrap();
            assert!(wait_for(&shutdown), "signal {signal}");
            drop(thread);
        }
    }
}
