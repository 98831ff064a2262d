//! What a runtime needs to serve a protocol, defined once so that the mio
//! and smol runtimes offer `bins/` the same interface.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::smtp::host::SmtpHost;
use crate::smtp::Config;

/// A new connection's fate, decided by the program (access rules,
/// per-client environment such as `RELAYCLIENT` or `DATABYTES`).
pub enum Admission {
    /// Serve it with this configuration and host.
    Accept {
        config: Arc<Config>,
        host: Box<dyn SmtpHost + Send>,
    },
    /// Close it at once without a word, as tcpserver does for `deny`.
    Deny,
}

/// Decides, for each accepted connection, whether and how to serve it.
pub trait SessionFactory: Send + Sync {
    fn admit(&self, peer: SocketAddr, local: SocketAddr) -> Admission;
}

/// The daemon's limits, as tcpserver's `-c` and per-host limits.
#[derive(Clone, Debug)]
pub struct ServeLimits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Connections from one IP address at once; more are closed at once.
    pub max_per_ip: usize,
    /// Threads that run blocking jobs (message commits with fsync).
    /// Concurrent fsyncs share journal commits, so more than the cores helps.
    pub blocking_threads: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 1000,
            max_per_ip: 50,
            blocking_threads: 16,
        }
    }
}
