//! Daemon mode: every connection on one epoll loop.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Shutdown as HalfClose, SocketAddr};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use sqmail_core::service::{Admission, Registration, ServeLimits, SessionFactory, Shutdown};
use sqmail_core::smtp::session::{discard_pending_input, Session, Status, READ_BUFFER};

use crate::pool::{Done, Key, Pool};
use crate::timers::Timers;

/// The loop's one waker (mio allows one a poll): a job is done, or the
/// shutdown was triggered.
const WAKER: Token = Token(0);
const FIRST_LISTENER: usize = 1;
/// Connection tokens start here; listener tokens sit below.
const FIRST_CONN: usize = 1 << 16;
/// Accepts per loop turn before the open connections get theirs.
const ACCEPT_BUDGET: usize = 64;

struct Conn {
    stream: TcpStream,
    session: Session,
    ip: IpAddr,
    generation: u64,
    deadline: Option<Instant>,
    writable_interest: bool,
}

pub(crate) struct Daemon {
    poll: Poll,
    listeners: Vec<TcpListener>,
    /// Listeners with connections maybe waiting (edge-triggered).
    acceptable: Vec<bool>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Slots freed this turn; reused only next turn, so that an event
    /// already polled for the old connection cannot reach a new one.
    freed: Vec<usize>,
    open: usize,
    per_ip: HashMap<IpAddr, usize>,
    timers: Timers,
    /// Connections that stopped reading for fairness, not for lack of bytes.
    again: Vec<usize>,
    pool: Pool,
    done: Receiver<Done>,
    jobs: usize,
    next_generation: u64,
    /// The one read buffer of the loop; no connection has its own.
    buf: Box<[u8]>,
    limits: ServeLimits,
    factory: Arc<dyn SessionFactory>,
    shutdown: Shutdown,
    /// Wakes the loop on `shutdown.trigger()`, for as long as it runs.
    _on_shutdown: Registration,
    /// When the shutdown began; then the end of the grace period.
    stopping: Option<Instant>,
    hard_stop: bool,
}

impl Daemon {
    pub fn new(
        listeners: Vec<std::net::TcpListener>,
        limits: ServeLimits,
        factory: Arc<dyn SessionFactory>,
        shutdown: Shutdown,
    ) -> io::Result<Daemon> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (done_tx, done) = mpsc::channel();
        let on_shutdown = shutdown.register({
            let waker = Arc::clone(&waker);
            move || {
                let _ = waker.wake();
            }
        });
        let pool = Pool::new(limits.blocking_threads, done_tx, waker)?;
        let mut mio_listeners = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            listener.set_nonblocking(true)?;
            let mut listener = TcpListener::from_std(listener);
            poll.registry().register(
                &mut listener,
                Token(FIRST_LISTENER + i),
                Interest::READABLE,
            )?;
            mio_listeners.push(listener);
        }
        Ok(Daemon {
            poll,
            acceptable: vec![true; mio_listeners.len()],
            listeners: mio_listeners,
            conns: Vec::new(),
            free: Vec::new(),
            freed: Vec::new(),
            open: 0,
            per_ip: HashMap::new(),
            timers: Timers::default(),
            again: Vec::new(),
            pool,
            done,
            jobs: 0,
            next_generation: 0,
            buf: vec![0; READ_BUFFER].into_boxed_slice(),
            limits,
            factory,
            shutdown,
            _on_shutdown: on_shutdown,
            stopping: None,
            hard_stop: false,
        })
    }

    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            if self.stopping.is_none() && self.shutdown.is_triggered() {
                self.begin_shutdown(now);
            }
            if self.stopping.is_some() && self.open == 0 && self.jobs == 0 {
                return Ok(());
            }
            let timeout = self.poll_timeout(now);
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    WAKER => {
                        if self.stopping.is_none() && self.shutdown.is_triggered() {
                            self.begin_shutdown(now);
                        }
                    }
                    Token(t) if t >= FIRST_CONN => {
                        let slot = t - FIRST_CONN;
                        if let Some(Some(conn)) = self.conns.get_mut(slot) {
                            if event.is_readable() || event.is_read_closed() || event.is_error() {
                                conn.session.set_readable();
                            }
                            self.drive(slot, now);
                        }
                    }
                    Token(t) => {
                        if let Some(flag) = self.acceptable.get_mut(t - FIRST_LISTENER) {
                            *flag = true;
                        }
                    }
                }
            }
            self.collect_jobs(now);
            while let Some(slot) = self.timers.pop_expired(now) {
                if let Some(Some(conn)) = self.conns.get_mut(slot) {
                    conn.deadline = None;
                    conn.session.timeout(now);
                    self.drive(slot, now);
                }
            }
            for slot in std::mem::take(&mut self.again) {
                self.drive(slot, now);
            }
            self.accept(now);
            if let Some(end) = self.stopping {
                if !self.hard_stop && now >= end {
                    self.stop_sessions();
                }
            }
            self.free.append(&mut self.freed);
        }
    }

    fn poll_timeout(&self, now: Instant) -> Option<Duration> {
        if !self.again.is_empty() || self.can_accept() && self.acceptable.contains(&true) {
            return Some(Duration::ZERO);
        }
        let grace = self.stopping.filter(|_| !self.hard_stop);
        let next = match (self.timers.next(), grace) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        next.map(|at| at.saturating_duration_since(now))
    }

    fn can_accept(&self) -> bool {
        self.stopping.is_none() && self.open < self.limits.max_connections
    }

    fn accept(&mut self, now: Instant) {
        for i in 0..self.listeners.len() {
            let mut budget = ACCEPT_BUDGET;
            while self.acceptable[i] && self.can_accept() && budget > 0 {
                budget -= 1;
                match self.listeners[i].accept() {
                    Ok((stream, peer)) => self.admit(stream, peer, now),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.acceptable[i] = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                    // Out of descriptors or memory: try again next turn.
                    Err(_) => break,
                }
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Instant) {
        let ip = peer.ip().to_canonical();
        let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.limits.max_per_ip {
            return;
        }
        let Ok(local) = stream.local_addr() else {
            return;
        };
        let (config, host) = match self.factory.admit(peer, local) {
            Admission::Deny => return,
            Admission::Accept { config, host } => (config, host),
        };
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let registered = self.poll.registry().register(
            &mut stream,
            Token(FIRST_CONN + slot),
            Interest::READABLE,
        );
        if registered.is_err() {
            self.free.push(slot);
            return;
        }
        self.next_generation += 1;
        self.conns[slot] = Some(Conn {
            stream,
            session: Session::new(config, host, now),
            ip,
            generation: self.next_generation,
            deadline: None,
            writable_interest: false,
        });
        self.open += 1;
        *self.per_ip.entry(ip).or_insert(0) += 1;
        self.drive(slot, now);
    }

    /// Drives one connection, then files its interest, deadline and fate.
    fn drive(&mut self, slot: usize, now: Instant) {
        let Some(Some(conn)) = self.conns.get_mut(slot) else {
            return;
        };
        let key = Key {
            slot,
            generation: conn.generation,
        };
        let (pool, jobs) = (&self.pool, &mut self.jobs);
        let status = conn.session.drive(
            now,
            &conn.stream,
            &conn.stream,
            &mut self.buf,
            &mut |ticket, job| {
                pool.submit(key, ticket, job);
                *jobs += 1;
                None
            },
        );
        let stopped = self.hard_stop && !conn.session.has_job();
        if status != Status::Open || stopped {
            if status == Status::Open {
                conn.session.farewell(&conn.stream);
            }
            return self.close(slot, status == Status::Done);
        }
        let deadline = conn.session.deadline();
        self.timers.update(slot, conn.deadline, deadline);
        conn.deadline = deadline;
        let writable = conn.session.wants_write();
        if writable != conn.writable_interest {
            let interest = match writable {
                true => Interest::READABLE | Interest::WRITABLE,
                false => Interest::READABLE,
            };
            let token = Token(FIRST_CONN + slot);
            if self
                .poll
                .registry()
                .reregister(&mut conn.stream, token, interest)
                .is_err()
            {
                return self.close(slot, false);
            }
            conn.writable_interest = writable;
        }
        if conn.session.more_input() {
            self.again.push(slot);
        }
    }

    fn close(&mut self, slot: usize, graceful: bool) {
        let Some(mut conn) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        if graceful {
            // FIN after the last reply, rather than leave it to the drop.
            let _ = conn.stream.shutdown(HalfClose::Write);
            discard_pending_input(&conn.stream);
        }
        self.timers.update(slot, conn.deadline, None);
        if let Some(n) = self.per_ip.get_mut(&conn.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&conn.ip);
            }
        }
        self.open -= 1;
        self.freed.push(slot);
    }

    fn collect_jobs(&mut self, now: Instant) {
        while let Ok(done) = self.done.try_recv() {
            self.jobs -= 1;
            let slot = done.key.slot;
            match self.conns.get_mut(slot) {
                Some(Some(conn)) if conn.generation == done.key.generation => {
                    conn.session.answer(now, done.ticket, done.verdict);
                    self.drive(slot, now);
                }
                // The connection closed while its job ran: nobody to tell.
                _ => {}
            }
        }
    }

    fn begin_shutdown(&mut self, now: Instant) {
        self.stopping = Some(now + self.shutdown.grace());
        // Closing the listeners makes new clients fail fast, not hang.
        for mut listener in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.acceptable.clear();
    }

    /// The grace period is over: close every session not waiting for a job;
    /// those that are close once it answers (see `drive`).
    fn stop_sessions(&mut self) {
        self.hard_stop = true;
        for slot in 0..self.conns.len() {
            if let Some(conn) = &mut self.conns[slot] {
                if !conn.session.has_job() {
                    conn.session.farewell(&conn.stream);
                    self.close(slot, false);
                }
            }
        }
    }
}
