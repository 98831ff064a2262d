//! DNS for remote delivery: MX and address lookups as a sans-IO machine.
//!
//! [`Resolver::lookup`] starts a [`Lookup`] for one [`Query`]; the host
//! sends what [`Lookup::poll_transmit`] gives (UDP datagrams, or TCP
//! messages after a truncated answer), feeds back what the nameservers
//! answer ([`Lookup::handle_response`]) and the time
//! ([`Lookup::handle_timeout`] at [`Lookup::poll_timeout`]), until
//! [`Lookup::result`] has the destinations in the order to try them.
//! Messages are built and parsed with `hickory-proto`'s wire format; query
//! ids and MX shuffles come from a PRNG seeded by the host, so a lookup is a
//! pure function of its inputs.
//!
//! What it follows: RFC 5321 section 5.1 (MX by preference, equal ones in
//! random order, no MX means the domain's own A/AAAA), RFC 7505 (null MX),
//! RFC 1035 (retransmission over the servers, TCP after TC), RFC 2308
//! (negative answers cached for the SOA minimum).

mod cache;
mod config;
mod lookup;
mod rng;
mod wire;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use config::ResolverConfig;
pub use lookup::{Lookup, MAX_ADDRS, MAX_HOSTS};

/// What to look up. Names are case-insensitive, the trailing dot optional;
/// address literals (`[1.2.3.4]`) are the caller's business.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Query {
    /// The mail destinations of a domain: its MX hosts, else itself.
    Mx(String),
    /// The A and AAAA addresses of one host (e.g. an smtproutes relay).
    Host(String),
}

/// One host to deliver to, with its addresses (IPv4 first, then IPv6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// Lower case, without the trailing dot.
    pub host: String,
    /// The MX preference; 0 for a domain without MX and for [`Query::Host`].
    pub preference: u16,
    pub addrs: Vec<IpAddr>,
}

/// Why a lookup gave no destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// NXDOMAIN, or neither MX nor A/AAAA: permanent.
    NotFound,
    /// The domain says it takes no mail (RFC 7505): permanent.
    NullMx,
    /// SERVFAIL, REFUSED, timeouts, malformed answers: try again later.
    Temporary(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotFound => f.write_str("no host by that name"),
            Error::NullMx => f.write_str("the domain accepts no mail (null MX)"),
            Error::Temporary(why) => write!(f, "temporary DNS failure: {why}"),
        }
    }
}

impl std::error::Error for Error {}

/// A message for a nameserver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub server: SocketAddr,
    /// Over TCP (one connection per transmit, for one answer) rather than UDP.
    pub tcp: bool,
    /// The DNS message; over TCP with its 2-byte length prefix, so the host
    /// writes it as it is (the answer it hands back has none: see
    /// [`tcp_message`]).
    pub bytes: Vec<u8>,
}

/// The message framed at the start of what a TCP nameserver sent, once all
/// of it is in: `buf` never needs more than 2 + 65535 bytes.
pub fn tcp_message(buf: &[u8]) -> Option<&[u8]> {
    let len = u16::from_be_bytes([*buf.first()?, *buf.get(1)?]);
    buf.get(2..2 + usize::from(len))
}

type Answer = Result<Vec<Destination>, Error>;

/// The resolver's state shared by its lookups.
struct Shared {
    cache: Mutex<cache::Cache>,
    seed: u64,
    /// Counts lookups: seeds each one's PRNG and rotates the servers.
    counter: AtomicU64,
}

/// The configuration and cache behind lookups; `Send + Sync`, so one
/// resolver serves every delivery thread.
pub struct Resolver {
    config: Arc<ResolverConfig>,
    shared: Arc<Shared>,
}

impl Resolver {
    /// `seed` is the randomness for query ids and shuffles (the host reads
    /// it from the OS).
    pub fn new(config: ResolverConfig, seed: u64) -> Resolver {
        let shared = Shared {
            cache: Mutex::new(cache::Cache::default()),
            seed,
            counter: AtomicU64::new(0),
        };
        Resolver {
            config: Arc::new(config),
            shared: Arc::new(shared),
        }
    }

    pub fn config(&self) -> &ResolverConfig {
        &self.config
    }

    /// Starts a lookup, already finished if the cache holds a fresh answer.
    pub fn lookup(&self, now: Instant, query: Query) -> Lookup {
        let n = self.shared.counter.fetch_add(1, Ordering::Relaxed);
        Lookup::new(
            Arc::clone(&self.config),
            Arc::clone(&self.shared),
            n,
            now,
            query,
        )
    }
}
