//! Signals as calls on a thread of our own: the handler only writes to
//! signal-hook's self-pipe, and the thread reading it does the work a
//! signal handler must not do (take locks, wake a runtime's loop, send on
//! a channel). SIGTERM and SIGINT usually mean a [`Shutdown`].

use std::io;
use std::thread::{self, JoinHandle};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};
use sqmail_core::service::Shutdown;
use std::ffi::c_int;

/// The thread that handles signals. Dropping it stops the thread and
/// unregisters the signals.
pub struct SignalThread {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

/// Triggers `shutdown` on SIGTERM or SIGINT.
pub fn trigger_on_signals(shutdown: &Shutdown) -> io::Result<SignalThread> {
    let shutdown = shutdown.clone();
    on_signals(&[SIGTERM, SIGINT], move |_| shutdown.trigger())
}

/// Calls `on` with each of `signals` as it arrives.
pub fn on_signals(
    signals: &[c_int],
    mut on: impl FnMut(c_int) + Send + 'static,
) -> io::Result<SignalThread> {
    let mut signals = Signals::new(signals)?;
    let handle = signals.handle();
    let thread = thread::Builder::new()
        .name("sqmail-signals".into())
        .spawn(move || {
            // Ends when the handle is closed.
            for signal in signals.forever() {
                on(signal);
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
