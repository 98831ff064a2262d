//! What a runtime needs to serve a protocol, defined once so that the mio
//! and smol runtimes offer `bins/` the same interface.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

use crate::dns::{self, Destination, Query, Resolver};
use crate::remote;
use crate::smtp::client::{Client, ClientConfig, ClientEvent, Delivery, Envelope};
use crate::smtp::host::SmtpHost;
use crate::smtp::Config;

/// What a runtime offers the programs: `bins/` picks one with a cargo
/// feature, and this trait keeps the two interfaces from drifting apart.
///
/// The runtime does the I/O; the session logic it runs is
/// [`crate::smtp::session::Session`], the same for every runtime.
pub trait Runtime {
    /// Serves SMTP on `listeners` (IPv4 and IPv6 alike) until `shutdown` is
    /// triggered and the last session and job have finished: it stops
    /// accepting at once, lets open sessions finish for the grace period,
    /// then closes the rest (waiting for any job that is committing a
    /// message). At most `limits.blocking_threads` jobs run at once.
    fn serve_smtp(
        listeners: Vec<TcpListener>,
        limits: ServeLimits,
        factory: Arc<dyn SessionFactory>,
        shutdown: Shutdown,
    ) -> io::Result<()>;

    /// Serves one SMTP session, reading `input` and writing `output` (one
    /// socket given twice, or two pipes); returns when the session ends.
    /// The descriptors stay open, and their flags are as they were.
    fn serve_smtp_fds(
        input: BorrowedFd<'_>,
        output: BorrowedFd<'_>,
        config: Arc<Config>,
        host: Box<dyn SmtpHost + Send>,
    ) -> io::Result<()>;

    /// Serves one SMTP session on fd 0 and fd 1, as a ucspi server such as
    /// tcpserver or sslserver expects; returns when the session ends.
    fn serve_smtp_stdio(config: Arc<Config>, host: Box<dyn SmtpHost + Send>) -> io::Result<()> {
        Self::serve_smtp_fds(io::stdin().as_fd(), io::stdout().as_fd(), config, host)
    }

    /// A connection carrying client sessions of
    /// [`crate::smtp::client::Client`] (remote delivery).
    type SmtpConnection: SmtpConnection;

    /// Completes the connection `socket` started (non-blocking), within
    /// `timeout`, for the client session `config` describes.
    fn connect_smtp(
        socket: TcpStream,
        timeout: Duration,
        config: Arc<ClientConfig>,
    ) -> Result<Self::SmtpConnection, ConnectError>;

    /// Answers `query`, driving [`crate::dns::Lookup`] over UDP and TCP to
    /// the resolver's name servers; blocks until it is answered.
    fn resolve(resolver: &Resolver, query: Query) -> Result<Vec<Destination>, dns::Error>;
}

/// One SMTP client connection, used for one transaction at a time.
pub trait SmtpConnection: Send + 'static {
    /// One transaction: `envelope`, then the message read from `message`
    /// (as the queue stores it). The greeting and EHLO come first on a new
    /// connection.
    fn send(&mut self, envelope: Envelope, message: &mut dyn Read) -> Delivery;
    /// Whether another transaction can follow on this connection.
    fn is_reusable(&self) -> bool;
    /// QUIT, then close; waits a bounded time for the reply.
    fn quit(self);
}

/// The host's half of one client transaction, the same for every
/// runtime: it takes the machine's events and feeds it the message, so a
/// driver only moves bytes and waits.
pub struct Transaction<'a> {
    message: &'a mut dyn Read,
    chunk: Vec<u8>,
    feeding: bool,
}

/// What the driver does after [`Transaction::step`]: in every case first
/// send what the machine has to transmit.
#[derive(Debug)]
pub enum Step {
    /// The envelope's results: the transaction is over.
    Done(Delivery),
    /// Step again at once (more of the message may fit).
    Again,
    /// Wait for the socket, or until the machine's `poll_timeout`.
    Wait,
}

impl<'a> Transaction<'a> {
    /// The transaction of the envelope just given to [`Client::send`].
    pub fn new(message: &'a mut dyn Read) -> Self {
        Transaction {
            message,
            chunk: vec![0; 64 * 1024],
            feeding: false,
        }
    }

    pub fn step(&mut self, client: &mut Client, now: Instant) -> Step {
        let mut delivery = None;
        while let Some(event) = client.poll_event() {
            match event {
                ClientEvent::WantBody => self.feeding = true,
                ClientEvent::Done(d) => delivery = Some(d),
                ClientEvent::Ready | ClientEvent::Closed => {}
            }
        }
        if let Some(d) = delivery {
            return Step::Done(d);
        }
        // The machine settles every envelope before it closes.
        if client.is_closed() {
            return Step::Done(remote::no_connection());
        }
        let mut fed = false;
        while self.feeding && client.wants_body() {
            fed = true;
            match self.message.read(&mut self.chunk) {
                Ok(0) => {
                    self.feeding = false;
                    let _ = client.end_body(now);
                }
                Ok(n) => {
                    let _ = client.body(now, &self.chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Mid-DATA there is no way back: the session is not
                // reusable, and the message is deferred.
                Err(_) => return Step::Done(remote::unreadable()),
            }
        }
        // Feeding may have ended the transaction (the last chunk, or a
        // partial final line): its events come before any wait.
        if fed {
            Step::Again
        } else {
            Step::Wait
        }
    }
}

/// Why a connection could not be made. A timeout is told apart because
/// only timeouts count against a host (`lock/tcpto`).
#[derive(Debug)]
pub enum ConnectError {
    TimedOut,
    Failed(io::Error),
}

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

/// How long open sessions may go on after a shutdown unless told otherwise.
const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// A waker: tells one event loop to look at the flag.
type Wake = Box<dyn Fn() + Send + Sync>;

/// Asks [`Runtime::serve_smtp`] to stop. Clones share one flag.
///
/// Triggering sets the flag and calls every registered waker; each runtime
/// registers one for its loop while it serves. Once triggered, it stays
/// triggered, for loops already serving and for loops yet to start.
///
/// `trigger` takes a lock, so it is not for a signal handler: the program
/// turns signals into a `trigger` from a thread of its own.
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
    grace: Duration,
}

struct Inner {
    flag: AtomicBool,
    wakers: Mutex<Wakers>,
}

#[derive(Default)]
struct Wakers {
    next_id: u64,
    list: Vec<(u64, Wake)>,
}

impl Shutdown {
    pub fn new() -> Self {
        Shutdown {
            inner: Arc::new(Inner {
                flag: AtomicBool::new(false),
                wakers: Mutex::default(),
            }),
            grace: DEFAULT_GRACE,
        }
    }

    /// How long sessions may go on after the trigger (default 10 s).
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn grace(&self) -> Duration {
        self.grace
    }

    pub fn trigger(&self) {
        // The flag first: a waker registered from now on sees it (below).
        self.inner.flag.store(true, Ordering::SeqCst);
        for (_, wake) in &self.inner.wakers().list {
            wake();
        }
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.flag.load(Ordering::SeqCst)
    }

    /// Calls `wake` on [`Shutdown::trigger`], until the returned guard is
    /// dropped; at once if already triggered. A waker may be called more
    /// than once, must not block, and must not register another.
    pub fn register(&self, wake: impl Fn() + Send + Sync + 'static) -> Registration {
        let mut wakers = self.inner.wakers();
        let id = wakers.next_id;
        wakers.next_id += 1;
        // Under the lock: a `trigger` either has set the flag already, or
        // will take the lock after us and call this waker itself.
        if self.is_triggered() {
            wake();
        }
        wakers.list.push((id, Box::new(wake)));
        Registration {
            inner: Arc::clone(&self.inner),
            id,
        }
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field("triggered", &self.is_triggered())
            .field("grace", &self.grace)
            .finish()
    }
}

impl Inner {
    fn wakers(&self) -> std::sync::MutexGuard<'_, Wakers> {
        // A waker that panicked leaves the list whole.
        self.wakers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A waker registered with [`Shutdown::register`]; dropping it unregisters.
#[must_use = "dropping the registration unregisters the waker at once"]
pub struct Registration {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.inner.wakers().list.retain(|(id, _)| *id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::thread;

    use super::*;

    fn counter(shutdown: &Shutdown) -> (Arc<AtomicUsize>, Registration) {
        let count = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&count);
        let registration = shutdown.register(move || {
            seen.fetch_add(1, Ordering::SeqCst);
        });
        (count, registration)
    }

    #[test]
    fn trigger_sets_the_flag_for_every_clone_and_wakes_every_waker() {
        let shutdown = Shutdown::new();
        let clone = shutdown.clone();
        let (a, _ra) = counter(&shutdown);
        let (b, _rb) = counter(&clone);
        assert!(!clone.is_triggered());
        assert_eq!(a.load(Ordering::SeqCst), 0);
        clone.trigger();
        assert!(shutdown.is_triggered());
        assert_eq!((a.load(Ordering::SeqCst), b.load(Ordering::SeqCst)), (1, 1));
    }

    #[test]
    fn a_waker_registered_after_the_trigger_is_called_at_once() {
        let shutdown = Shutdown::new();
        shutdown.trigger();
        let (count, _registration) = counter(&shutdown);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn dropping_the_registration_unregisters() {
        let shutdown = Shutdown::new();
        let (count, registration) = counter(&shutdown);
        drop(registration);
        shutdown.trigger();
        assert_eq!(count.load(Ordering::SeqCst), 0);
        assert!(shutdown.inner.wakers().list.is_empty());
    }

    #[test]
    fn grace_defaults_to_ten_seconds() {
        let shutdown = Shutdown::default();
        assert_eq!(shutdown.grace(), Duration::from_secs(10));
        let shutdown = shutdown.with_grace(Duration::from_millis(5));
        assert_eq!(shutdown.grace(), Duration::from_millis(5));
    }

    #[test]
    fn a_trigger_from_another_thread_is_never_lost() {
        for _ in 0..200 {
            let shutdown = Shutdown::new();
            let other = shutdown.clone();
            let t = thread::spawn(move || other.trigger());
            let (count, _registration) = counter(&shutdown);
            t.join().unwrap();
            assert!(count.load(Ordering::SeqCst) >= 1);
        }
    }
}
