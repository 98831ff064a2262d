//! Drives sqmail-core machines on smol.
//!
//! The lightweight runtime: one single-threaded executor, a task per
//! connection driving its session
//! ([`sqmail_core::smtp::session::Session`]), async-io for readiness and
//! timers, smol's blocking pool for jobs (message commits that fsync).
//! [`Smol`] implements [`Runtime`], as `sqmail-mio` does, so `bins/` picks
//! a runtime with a cargo feature.

mod daemon;
pub mod dns;
mod drive;
pub mod smtp_client;
mod stdio;

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

use sqmail_core::dns::{Destination, Query, Resolver};
use sqmail_core::service::{ConnectError, Runtime, ServeLimits, SessionFactory, Shutdown};
use sqmail_core::smtp::client::ClientConfig;
use sqmail_core::smtp::host::SmtpHost;
use sqmail_core::smtp::Config;

/// The smol runtime: one executor thread, smol's blocking pool for jobs.
pub struct Smol;

impl Runtime for Smol {
    /// Jobs run on smol's blocking pool, at most `limits.blocking_threads`
    /// of them at once.
    fn serve_smtp(
        listeners: Vec<TcpListener>,
        limits: ServeLimits,
        factory: Arc<dyn SessionFactory>,
        shutdown: Shutdown,
    ) -> io::Result<()> {
        daemon::serve(listeners, limits, factory, shutdown)
    }

    /// Runs the one session's jobs on smol's blocking pool, one at a time.
    fn serve_smtp_fds(
        input: BorrowedFd<'_>,
        output: BorrowedFd<'_>,
        config: Arc<Config>,
        host: Box<dyn SmtpHost + Send>,
    ) -> io::Result<()> {
        stdio::serve(input, output, config, host)
    }

    type SmtpConnection = smtp_client::Connection;

    fn connect_smtp(
        socket: TcpStream,
        timeout: Duration,
        config: Arc<ClientConfig>,
    ) -> Result<smtp_client::Connection, ConnectError> {
        smtp_client::connect(socket, timeout, config)
    }

    fn resolve(
        resolver: &Resolver,
        query: Query,
    ) -> Result<Vec<Destination>, sqmail_core::dns::Error> {
        dns::resolve(resolver, query)
    }
}
