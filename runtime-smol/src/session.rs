//! One SMTP session over a non-blocking reader and writer: the loop rule
//! that the daemon and the stdio mode share.
//!
//! "Mutate, then drain": every input (bytes, end of stream, a timeout, a
//! job's verdict, bytes sent) is followed by [`pump`], then by writing what
//! the machine has to send; only when nothing moves does the caller wait.

use std::io::{self, Read, Write};
use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

use sqmail_core::smtp::host::{pump, Job, SmtpHost, Step};
use sqmail_core::smtp::{Config, Reply, Server, Ticket, Verdict};

/// Reads per [`Session::drive`] before other connections get a turn.
const READ_BUDGET: usize = 8;

/// What the caller does with the connection after [`Session::drive`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Status {
    /// Wait for readiness, the deadline or a job.
    Open,
    /// The session ended and its replies are sent: close.
    Done,
    /// The peer is gone (a write failed): close without more ado.
    Failed,
}

pub(crate) struct Session {
    server: Server,
    host: Box<dyn SmtpHost + Send>,
    /// The decision being worked out by a job off the loop.
    job: Option<Ticket>,
    /// `Step::Close` was seen: flush, then close.
    closing: bool,
    /// The reader may have bytes: no `WouldBlock` since its last readiness.
    readable: bool,
}

impl Session {
    pub fn new(
        config: std::sync::Arc<Config>,
        host: Box<dyn SmtpHost + Send>,
        now: Instant,
    ) -> Self {
        Session {
            server: Server::new(config, now),
            host,
            job: None,
            closing: false,
            readable: true,
        }
    }

    pub fn set_readable(&mut self) {
        self.readable = true;
    }

    pub fn wants_write(&self) -> bool {
        !self.server.transmit().is_empty()
    }

    /// Reading stopped for fairness, not for lack of bytes: drive again soon.
    pub fn more_input(&self) -> bool {
        self.readable && !self.closing && self.server.input_capacity() > 0
    }

    /// Whether to wait for the reader: it ran dry and the machine takes more.
    pub fn wants_read(&self) -> bool {
        !self.readable && !self.closing && self.server.input_capacity() > 0
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.server.poll_timeout()
    }

    pub fn timeout(&mut self, now: Instant) {
        self.server.handle_timeout(now);
    }

    /// A job's verdict; one for a decision no longer pending is dropped.
    pub fn answer(&mut self, now: Instant, ticket: Ticket, verdict: Verdict) {
        if self.job == Some(ticket) {
            self.job = None;
            // Cannot fail: the ticket is the pending one.
            let _ = self.server.answer(now, ticket, verdict);
        }
    }

    /// Runs the session until it must wait. `run` starts a job and returns
    /// its verdict if it ran inline, or `None` if it answers later through
    /// [`Session::answer`].
    pub fn drive<R: Read, W: Write>(
        &mut self,
        now: Instant,
        mut reader: R,
        mut writer: W,
        buf: &mut [u8],
        run: &mut dyn FnMut(Ticket, Job) -> Option<Verdict>,
    ) -> Status {
        let mut reads = 0;
        loop {
            if self.job.is_none() && !self.closing {
                match pump(&mut self.server, &mut *self.host, now) {
                    Step::Wait => {}
                    Step::Close => self.closing = true,
                    Step::Blocked(ticket, job) => match run(ticket, job) {
                        Some(verdict) => {
                            let _ = self.server.answer(now, ticket, verdict);
                            continue;
                        }
                        None => self.job = Some(ticket),
                    },
                }
            }
            let out = self.server.transmit();
            if !out.is_empty() {
                match writer.write(out) {
                    Ok(0) => return Status::Failed,
                    Ok(n) => {
                        // Sending may let a machine stalled on output go on.
                        self.server.advance_transmit(n);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Status::Failed,
                }
            }
            if self.closing {
                // A job still running keeps the session until it answers.
                return match self.wants_write() || self.job.is_some() {
                    true => Status::Open,
                    false => Status::Done,
                };
            }
            let room = self.server.input_capacity().min(buf.len());
            if !self.readable || room == 0 || reads == READ_BUDGET {
                return Status::Open;
            }
            reads += 1;
            match reader.read(&mut buf[..room]) {
                Ok(0) => {
                    self.readable = false;
                    self.server.handle_eof(now);
                }
                Ok(n) => self.server.handle_input(now, &buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                // A reset or other failure ends the session like an EOF.
                Err(_) => {
                    self.readable = false;
                    self.server.handle_eof(now);
                }
            }
        }
    }
}

/// Runs a job, turning a panic into a temporary failure: the client
/// retries later and the loop lives on.
pub(crate) fn run_job(job: Job) -> Verdict {
    panic::catch_unwind(AssertUnwindSafe(job)).unwrap_or_else(|_| {
        Verdict::Reject(Reply::new(451, "4.3.0", "local error; try again later"))
    })
}

impl Session {
    /// Best effort at telling an idle client why it is cut off.
    pub fn farewell<W: Write>(&mut self, mut writer: W) {
        if !self.closing && self.job.is_none() && !self.wants_write() {
            let mut out = Vec::new();
            Reply::new(421, "4.3.2", "shutting down").write_to(&mut out);
            let _ = writer.write(&out);
        }
    }
}
