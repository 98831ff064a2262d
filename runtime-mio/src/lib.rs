//! Drives sqmail-core machines on a mio epoll loop.
//!
//! The daemon serves every connection from one thread: the loop reads
//! into one shared buffer, feeds the SMTP machine, writes what it answers
//! and waits on epoll for the next readiness or deadline. Only blocking
//! work (message commits that fsync) leaves the loop, for a thread pool.
//! `sqmail-smol` offers the same functions, so `bins/` picks a runtime with
//! a cargo feature.

mod daemon;
mod pool;
mod session;
mod shutdown;
mod stdio;
mod timers;

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use sqmail_core::service::{ServeLimits, SessionFactory};
use sqmail_core::smtp::host::SmtpHost;
use sqmail_core::smtp::Config;

pub use shutdown::Shutdown;

/// Serves SMTP on `listeners` (IPv4 and IPv6 alike) until `shutdown` is
/// triggered and the last session and job have finished.
pub fn serve_smtp(
    listeners: Vec<std::net::TcpListener>,
    limits: ServeLimits,
    factory: Arc<dyn SessionFactory>,
    shutdown: Shutdown,
) -> io::Result<()> {
    daemon::Daemon::new(listeners, limits, factory, shutdown)?.run()
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
