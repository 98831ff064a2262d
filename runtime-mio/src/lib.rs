//! Drives sqmail-core machines on a mio epoll loop.
//!
//! The daemon serves every connection from one thread: the loop reads
//! into one shared buffer, feeds each session
//! ([`sqmail_core::smtp::session::Session`]), writes what it answers and
//! waits on epoll for the next readiness or deadline. Only blocking work
//! (message commits that fsync) leaves the loop, for a thread pool.
//! [`Mio`] implements [`Runtime`], as `sqmail-smol` does, so `bins/` picks
//! a runtime with a cargo feature.

mod daemon;
pub mod dns;
mod pool;
pub mod smtp_client;
mod stdio;
mod timers;

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

/// The mio runtime: an epoll loop, a thread pool for jobs.
pub struct Mio;

impl Runtime for Mio {
    fn serve_smtp(
        listeners: Vec<TcpListener>,
        limits: ServeLimits,
        factory: Arc<dyn SessionFactory>,
        shutdown: Shutdown,
    ) -> io::Result<()> {
        daemon::Daemon::new(listeners, limits, factory, shutdown)?.run()
    }

    /// Runs the one session's jobs inline: there is nobody else to serve.
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
