//! One query's exchanges with the nameservers, as a sans-IO machine.
//!
//! A lookup asks for the MX records (for [`Query::Mx`]), then for the A
//! and AAAA records of every host without glue (addresses for it in the
//! additional section, taken as all it has), all at once. Each question
//! is an [`Exchange`]: tries over the nameservers, `attempts` rounds,
//! a fresh id each, over TCP after a truncated UDP answer.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::cache::MAX_TTL;
use super::rng::Rng;
use super::wire::{self, Outcome, Reply};
use super::{Answer, Destination, Error, Query, ResolverConfig, Shared, Transmit};

/// MX hosts used (the most preferred), and addresses kept per host: they
/// bound a lookup's state whatever the answers hold.
pub const MAX_HOSTS: usize = 16;
pub const MAX_ADDRS: usize = 64;
/// Bounds on a try's wait, whatever the configuration says, so deadlines
/// neither overflow nor fire at once forever.
const MIN_TIMEOUT: Duration = Duration::from_millis(1);
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// The sans-IO machine for one [`Query`]; see the module docs of
/// [`crate::dns`] for how a host drives it.
pub struct Lookup {
    config: Arc<ResolverConfig>,
    shared: Arc<Shared>,
    query: Query,
    /// The queried name.
    name: Name,
    rng: Rng,
    /// The nameserver each round starts at.
    start: usize,
    timeout: Duration,
    pub(super) exchanges: Vec<Exchange>,
    pub(super) hosts: Vec<Host>,
    /// The smallest TTL of all the answer rests on.
    ttl: u32,
    /// Some host failed temporarily: the answer is not cached.
    partial: bool,
    result: Option<Answer>,
}

/// What an exchange's answer is for.
#[derive(Clone, Copy, Debug)]
enum Purpose {
    Mx,
    /// The addresses of `hosts[i]`.
    Addrs(usize),
}

/// One question and its tries.
pub(super) struct Exchange {
    purpose: Purpose,
    name: Name,
    rtype: RecordType,
    /// CNAMEs followed so far.
    hops: u8,
    /// Counts tries over all rounds: picks the server.
    tries: u32,
    id: u16,
    tcp: bool,
    sent: bool,
    deadline: Instant,
}

pub(super) struct Host {
    name: Name,
    preference: u16,
    pub(super) addrs: Vec<IpAddr>,
    /// Exchanges still out for it.
    pending: u8,
    /// Why an exchange for it failed temporarily.
    failure: Option<String>,
}

impl Lookup {
    pub(super) fn new(
        config: Arc<ResolverConfig>,
        shared: Arc<Shared>,
        n: u64,
        now: Instant,
        query: Query,
    ) -> Lookup {
        let query = match query {
            Query::Mx(name) => Query::Mx(normalize(&name)),
            Query::Host(name) => Query::Host(normalize(&name)),
        };
        let (Query::Mx(text) | Query::Host(text)) = &query;
        let name = Name::from_ascii(format!("{text}."))
            .ok()
            .filter(|_| !text.is_empty());
        let servers = config.nameservers.len().max(1);
        let mut lookup = Lookup {
            start: if config.rotate {
                (n % servers as u64) as usize
            } else {
                0
            },
            timeout: config.timeout.clamp(MIN_TIMEOUT, MAX_TIMEOUT),
            rng: Rng::new(shared.seed.wrapping_add(n)),
            config,
            shared,
            query,
            name: name.clone().unwrap_or_else(Name::root),
            exchanges: Vec::new(),
            hosts: Vec::new(),
            ttl: MAX_TTL,
            partial: false,
            result: None,
        };
        let cached = lookup.cache().get(now, &lookup.query);
        match (cached, name) {
            (Some(answer), _) => lookup.deliver(answer),
            // No name, no host: not worth asking.
            (None, None) => lookup.deliver(Err(Error::NotFound)),
            (None, Some(_)) if lookup.config.nameservers.is_empty() => {
                lookup.deliver(Err(Error::Temporary("no nameservers".into())))
            }
            (None, Some(name)) => match lookup.query {
                Query::Mx(_) => lookup.ask(now, Purpose::Mx, name, RecordType::MX, 0),
                Query::Host(_) => lookup.add_host(now, name, 0, Vec::new()),
            },
        }
        lookup
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let (start, servers) = (self.start, &self.config.nameservers);
        let ex = self.exchanges.iter_mut().find(|x| !x.sent)?;
        ex.sent = true;
        Some(Transmit {
            server: ex.server(start, servers),
            tcp: ex.tcp,
            bytes: wire::question(ex.id, &ex.name, ex.rtype, ex.tcp),
        })
    }

    /// A message from `server` (over TCP without its length prefix).
    /// Anything but the answer to a question out to that server, by that
    /// transport, with its id, is ignored.
    pub fn handle_response(&mut self, now: Instant, server: SocketAddr, tcp: bool, bytes: &[u8]) {
        let (start, servers) = (self.start, &self.config.nameservers);
        let out = |x: &Exchange, id| {
            x.sent && x.tcp == tcp && x.id == id && x.server(start, servers) == server
        };
        let (i, reply) = match Message::from_vec(bytes) {
            Ok(msg) => {
                let ours = |x: &Exchange| {
                    out(x, msg.metadata.id) && wire::answers(&msg, x.id, &x.name, x.rtype)
                };
                let Some(i) = self.exchanges.iter().position(ours) else {
                    return;
                };
                let x = &self.exchanges[i];
                (i, wire::classify(msg, &x.name, x.rtype, x.hops, tcp))
            }
            Err(e) => {
                let Some(id) = wire::id_of(bytes) else { return };
                let Some(i) = self.exchanges.iter().position(|x| out(x, id)) else {
                    return;
                };
                (i, Reply::Retry(format!("malformed answer: {e}")))
            }
        };
        match reply {
            Reply::Final(outcome) => {
                let x = self.exchanges.remove(i);
                self.settle(now, x.purpose, outcome);
            }
            Reply::Truncated => {
                let x = &mut self.exchanges[i];
                x.tcp = true;
                x.sent = false;
                x.deadline = now + self.timeout;
            }
            Reply::Retry(why) => self.retry(now, i, &why),
            Reply::Alias { name, hops, ttl } => {
                self.ttl = self.ttl.min(ttl);
                let x = self.exchanges.remove(i);
                self.ask(now, x.purpose, name, x.rtype, hops);
            }
        }
    }

    /// Tries whose time is up go to the next server (or fail).
    pub fn handle_timeout(&mut self, now: Instant) {
        // A retried exchange's deadline moves past `now`: this ends.
        while let Some(i) = self.exchanges.iter().position(|x| x.deadline <= now) {
            self.retry(now, i, "timed out");
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.exchanges.iter().map(|x| x.deadline).min()
    }

    /// The answer, once finished; handed out once.
    pub fn result(&mut self) -> Option<Answer> {
        self.result.take()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, super::cache::Cache> {
        self.shared
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn ask(&mut self, now: Instant, purpose: Purpose, name: Name, rtype: RecordType, hops: u8) {
        self.exchanges.push(Exchange {
            purpose,
            name,
            rtype,
            hops,
            tries: 0,
            id: self.rng.id(),
            tcp: false,
            sent: false,
            deadline: now + self.timeout,
        });
    }

    /// The next try of `exchanges[i]`, or its failure after the last.
    fn retry(&mut self, now: Instant, i: usize, why: &str) {
        let tries = self.config.attempts.max(1) * self.config.nameservers.len() as u32;
        let x = &mut self.exchanges[i];
        x.tries += 1;
        if x.tries < tries {
            x.id = self.rng.id();
            x.tcp = false;
            x.sent = false;
            x.deadline = now + self.timeout;
            return;
        }
        let x = self.exchanges.remove(i);
        let why = format!("{} {}: {why}", x.name, x.rtype);
        self.settle(now, x.purpose, Outcome::Failed(why));
    }

    /// Takes an exchange's final outcome.
    fn settle(&mut self, now: Instant, purpose: Purpose, outcome: Outcome) {
        match purpose {
            Purpose::Mx => self.settle_mx(now, outcome),
            Purpose::Addrs(h) => {
                self.settle_addrs(h, outcome);
                self.finish_hosts(now);
            }
        }
    }

    fn settle_mx(&mut self, now: Instant, outcome: Outcome) {
        match outcome {
            Outcome::Records { data, glue, ttl } => {
                self.ttl = self.ttl.min(ttl);
                let mut mxs: Vec<(u16, Name)> = data
                    .into_iter()
                    .filter_map(|r| match r {
                        RData::MX(mx) => Some((mx.preference, mx.exchange)),
                        _ => None,
                    })
                    .collect();
                // RFC 7505: "." alone means no mail; mixed in with real
                // hosts (which the RFC forbids) it is skipped.
                mxs.retain(|(_, host)| !host.is_root());
                if mxs.is_empty() {
                    return self.finish(now, Err(Error::NullMx));
                }
                mxs.sort_by_key(|&(preference, _)| preference);
                for (preference, host) in mxs {
                    if self.hosts.len() == MAX_HOSTS {
                        break;
                    }
                    if self.hosts.iter().all(|h| h.name != host) {
                        let addrs = self.glue(&glue, &host);
                        self.add_host(now, host, preference, addrs);
                    }
                }
                self.finish_hosts(now);
            }
            Outcome::Empty {
                nxdomain: true,
                ttl,
            } => {
                self.ttl = self.ttl.min(ttl);
                self.finish(now, Err(Error::NotFound));
            }
            // RFC 5321 section 5.1: no MX, the domain itself is the host.
            Outcome::Empty {
                nxdomain: false,
                ttl,
            } => {
                self.ttl = self.ttl.min(ttl);
                self.add_host(now, self.name.clone(), 0, Vec::new());
            }
            Outcome::Failed(why) => self.finish(now, Err(Error::Temporary(why))),
        }
    }

    /// The additional section's addresses for `host`.
    fn glue(&mut self, glue: &[Record], host: &Name) -> Vec<IpAddr> {
        let mut addrs = Vec::new();
        for record in glue.iter().filter(|r| r.name == *host) {
            if let Some(addr) = address(&record.data) {
                self.ttl = self.ttl.min(record.ttl);
                push_addr(&mut addrs, addr);
            }
        }
        addrs
    }

    /// A host to deliver to: with its glue, or asking for A and AAAA.
    fn add_host(&mut self, now: Instant, name: Name, preference: u16, addrs: Vec<IpAddr>) {
        let h = self.hosts.len();
        let pending = if addrs.is_empty() { 2 } else { 0 };
        if pending > 0 {
            for rtype in [RecordType::A, RecordType::AAAA] {
                self.ask(now, Purpose::Addrs(h), name.clone(), rtype, 0);
            }
        }
        self.hosts.push(Host {
            name,
            preference,
            addrs,
            pending,
            failure: None,
        });
    }

    fn settle_addrs(&mut self, h: usize, outcome: Outcome) {
        let host = &mut self.hosts[h];
        host.pending -= 1;
        match outcome {
            Outcome::Records { data, ttl, .. } => {
                self.ttl = self.ttl.min(ttl);
                data.iter()
                    .filter_map(address)
                    .for_each(|a| push_addr(&mut host.addrs, a));
            }
            Outcome::Empty { ttl, .. } => self.ttl = self.ttl.min(ttl),
            Outcome::Failed(why) => {
                self.partial = true;
                host.failure = Some(why);
            }
        }
    }

    /// Once every host is settled: those with addresses, else why none.
    fn finish_hosts(&mut self, now: Instant) {
        if self.hosts.iter().any(|h| h.pending > 0) {
            return;
        }
        let mut dests: Vec<Destination> = Vec::new();
        for host in self.hosts.iter_mut().filter(|h| !h.addrs.is_empty()) {
            let mut addrs = std::mem::take(&mut host.addrs);
            // A and AAAA answers arrive in any order: IPv4 first, stably.
            addrs.sort_by_key(IpAddr::is_ipv6);
            dests.push(Destination {
                host: to_host(&host.name),
                preference: host.preference,
                addrs,
            });
        }
        let answer = match self.hosts.iter().find_map(|h| h.failure.clone()) {
            _ if !dests.is_empty() => Ok(dests),
            Some(why) => Err(Error::Temporary(why)),
            None => Err(Error::NotFound),
        };
        self.finish(now, answer);
    }

    fn finish(&mut self, now: Instant, answer: Answer) {
        self.exchanges.clear();
        let lasting = !self.partial && !matches!(answer, Err(Error::Temporary(_)));
        if lasting {
            let (query, ttl) = (self.query.clone(), self.ttl);
            self.cache().insert(now, query, answer.clone(), ttl);
        }
        self.deliver(answer);
    }

    /// Sets the result, equal preferences in this lookup's random order
    /// (RFC 5321 section 5.1).
    fn deliver(&mut self, mut answer: Answer) {
        if let Ok(dests) = &mut answer {
            for run in dests.chunk_by_mut(|a, b| a.preference == b.preference) {
                for i in (1..run.len()).rev() {
                    run.swap(i, self.rng.below(i + 1));
                }
            }
        }
        self.result = Some(answer);
    }
}

impl Exchange {
    /// Round after round over the servers, each round from `start`.
    fn server(&self, start: usize, servers: &[SocketAddr]) -> SocketAddr {
        servers[(start + self.tries as usize) % servers.len()]
    }
}

fn address(data: &RData) -> Option<IpAddr> {
    match data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
        _ => None,
    }
}

fn push_addr(addrs: &mut Vec<IpAddr>, addr: IpAddr) {
    if addrs.len() < MAX_ADDRS && !addrs.contains(&addr) {
        addrs.push(addr);
    }
}

/// Lower case without the trailing dot, the form of cache keys and of
/// [`Destination::host`].
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn to_host(name: &Name) -> String {
    normalize(&name.to_ascii())
}
