//! Drives sqmail-core machines on smol.
//!
//! The lightweight runtime: one single-threaded executor, a task per
//! connection, async-io for readiness and timers, smol's blocking pool for
//! jobs (message commits that fsync). It offers the same functions as
//! `sqmail-mio`, so `bins/` picks a runtime with a cargo feature.

mod daemon;
mod drive;
mod session;
mod shutdown;
mod stdio;

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use sqmail_core::service::{ServeLimits, SessionFactory};
use sqmail_core::smtp::host::SmtpHost;
use sqmail_core::smtp::Config;

pub use shutdown::Shutdown;

/// Serves SMTP on `listeners` (IPv4 and IPv6 alike) until `shutdown` is
/// triggered and the last session and job have finished.
///
/// Jobs run on smol's blocking pool, at most `limits.blocking_threads` of
/// them at once.
pub fn serve_smtp(
    listeners: Vec<std::net::TcpListener>,
    limits: ServeLimits,
    factory: Arc<dyn SessionFactory>,
    shutdown: Shutdown,
) -> io::Result<()> {
    daemon::serve(listeners, limits, factory, shutdown)
}

/// Serves one SMTP session on fd 0 and fd 1, as a ucspi server such as
/// tcpserver or sslserver expects; returns when the session ends.
pub fn serve_smtp_stdio(config: Arc<Config>, host: Box<dyn SmtpHost + Send>) -> io::Result<()> {
    serve_smtp_fds(io::stdin().as_fd(), io::stdout().as_fd(), config, host)
}

/// Serves one SMTP session, reading `input` and writing `output` (one
/// socket given twice, or two pipes). The descriptors stay open.
pub fn serve_smtp_fds(
    input: BorrowedFd<'_>,
    output: BorrowedFd<'_>,
    config: Arc<Config>,
    host: Box<dyn SmtpHost + Send>,
) -> io::Result<()> {
    stdio::serve(input, output, config, host)
}
