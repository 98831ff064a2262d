//! One SMTP session over a non-blocking reader and writer: the loop rule
//! that every runtime (daemon and ucspi mode alike) shares.
//!
//! "Mutate, then drain": every input (bytes, end of stream, a timeout, a
//! job's verdict, bytes sent) is followed by [`pump`], then by writing what
//! the machine has to send; only when nothing moves does [`Session::drive`]
//! return and the runtime wait.
//!
//! The session does no I/O of its own: the runtime hands it a reader and a
//! writer that return [`io::ErrorKind::WouldBlock`] instead of blocking
//! (a socket, a pipe, or an in-memory stand-in in a test), and one read
//! buffer it may share with every other session of its thread.

use std::io::{self, Read, Write};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use super::host::{pump, Job, SmtpHost, Step};
use super::{Config, Reply, Server, Ticket, Verdict};

/// A good size for the read buffer a runtime hands [`Session::drive`]: one
/// per thread, shared by its sessions, as large as the default pipelining
/// limit so that one read can fill the machine.
pub const READ_BUFFER: usize = 64 * 1024;

/// Reads per [`Session::drive`] before other connections get a turn.
pub const READ_BUDGET: usize = 8;

/// What the runtime does with the connection after [`Session::drive`].
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    /// Wait for readiness, the deadline or a job.
    Open,
    /// The session ended and its replies are sent: close.
    Done,
    /// The peer is gone (a write failed): close without more ado.
    Failed,
}

/// A [`Server`], its host, and what the loop must remember between turns.
pub struct Session {
    server: Server,
    host: Box<dyn SmtpHost + Send>,
    /// The decision being worked out by a job off the loop.
    job: Option<Ticket>,
    /// `Step::Close` was seen: flush, then close.
    closing: bool,
    /// The reader may have bytes: no `WouldBlock` since its last readiness.
    /// An edge-triggered runtime (mio) is told of readiness once, so this
    /// must be remembered until a read comes back empty-handed.
    readable: bool,
}

impl Session {
    pub fn new(config: Arc<Config>, host: Box<dyn SmtpHost + Send>, now: Instant) -> Self {
        Session {
            server: Server::new(config, now),
            host,
            job: None,
            closing: false,
            readable: true,
        }
    }

    /// The reader turned readable (or closed, or failed): read it again.
    pub fn set_readable(&mut self) {
        self.readable = true;
    }

    /// A job started by [`Session::drive`] has not answered yet.
    pub fn has_job(&self) -> bool {
        self.job.is_some()
    }

    /// Replies wait to be sent: wait for the writer to take more.
    pub fn wants_write(&self) -> bool {
        !self.server.transmit().is_empty()
    }

    /// Whether to wait for the reader: it ran dry and the machine takes more.
    pub fn wants_read(&self) -> bool {
        !self.readable && self.takes_input()
    }

    /// Reading stopped for fairness, not for lack of bytes: drive again soon.
    pub fn more_input(&self) -> bool {
        self.readable && self.takes_input()
    }

    /// Nothing is read while a job runs: the bytes could not be acted on
    /// before its answer anyway, and an end of stream read now would close
    /// the machine before it sends the job's reply (a client that pipelines
    /// `.` and QUIT, then half-closes, would never see its message's 250).
    fn takes_input(&self) -> bool {
        !self.closing && self.job.is_none() && self.server.input_capacity() > 0
    }

    /// When the machine needs [`Session::timeout`].
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
    /// [`Session::answer`]. At most [`READ_BUDGET`] reads are made.
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
            if !self.readable || self.job.is_some() || room == 0 || reads == READ_BUDGET {
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

    /// Best effort at telling an idle client why it is cut off: a 421 in
    /// one write, unless the session is closing, waiting for a job or has
    /// replies of its own still unsent.
    pub fn farewell<W: Write>(&mut self, mut writer: W) {
        if !self.closing && self.job.is_none() && !self.wants_write() {
            let mut out = Vec::new();
            Reply::new(421, "4.3.2", "shutting down").write_to(&mut out);
            let _ = writer.write(&out);
        }
    }
}

/// Runs a job, turning a panic into a temporary failure: the client
/// retries later and the loop lives on.
pub fn run_job(job: Job) -> Verdict {
    panic::catch_unwind(AssertUnwindSafe(job)).unwrap_or_else(|_| {
        Verdict::Reject(Reply::new(451, "4.3.0", "local error; try again later"))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::smtp::host::Decision;
    use crate::smtp::Request;

    /// Serves its chunks one read at a time, then `WouldBlock`, or EOF
    /// once `eof` is set.
    #[derive(Default)]
    struct Input {
        chunks: VecDeque<Vec<u8>>,
        eof: bool,
        reads: usize,
    }

    impl Read for &mut Input {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            let Some(mut chunk) = self.chunks.pop_front() else {
                return match self.eof {
                    true => Ok(0),
                    false => Err(io::ErrorKind::WouldBlock.into()),
                };
            };
            let n = chunk.len().min(buf.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            if n < chunk.len() {
                self.chunks.push_front(chunk.split_off(n));
            }
            Ok(n)
        }
    }

    /// Takes at most `step` bytes a write, and `WouldBlock` once `room`
    /// (the peer's socket buffer) is used up.
    struct Output {
        sent: Vec<u8>,
        step: usize,
        room: usize,
        writes: usize,
    }

    impl Write for &mut Output {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.step).min(self.room);
            self.sent.extend_from_slice(&buf[..n]);
            self.room -= n;
            self.writes += 1;
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    type Log = Arc<Mutex<Vec<String>>>;

    /// Says yes to everything; commits in a job that logs the body's size,
    /// or panics if the body begins with "panic".
    struct Host {
        log: Log,
        body: Vec<u8>,
    }

    impl SmtpHost for Host {
        fn decide(&mut self, request: Request) -> Decision {
            let Request::EndOfData = request else {
                return Decision::Now(Verdict::Accept);
            };
            let body = std::mem::take(&mut self.body);
            let log = Arc::clone(&self.log);
            Decision::Later(Box::new(move || {
                assert!(!body.starts_with(b"panic"), "the job fails");
                log.lock().unwrap().push(format!("commit {}", body.len()));
                Verdict::AcceptWith(Reply::new(250, "2.0.0", "ok queued"))
            }))
        }

        fn message_data(&mut self, data: &[u8]) {
            self.body.extend_from_slice(data);
        }

        fn abort_message(&mut self) {
            if !self.body.is_empty() {
                self.log.lock().unwrap().push("abort".into());
            }
            self.body.clear();
        }
    }

    /// A session between an in-memory peer and a host, at a fixed instant.
    struct Rig {
        now: Instant,
        session: Session,
        input: Input,
        output: Output,
        buf: Vec<u8>,
        log: Log,
        /// Jobs run inline (as the ucspi mode does) unless this is set;
        /// then they wait in `jobs` for the test to run them.
        defer_jobs: bool,
        jobs: Vec<(Ticket, Job)>,
    }

    impl Rig {
        fn new() -> Rig {
            let now = Instant::now();
            let log = Log::default();
            let host = Host {
                log: Arc::clone(&log),
                body: Vec::new(),
            };
            let mut config = Config::new("test.example");
            config.idle_timeout = Duration::from_secs(60);
            Rig {
                now,
                session: Session::new(Arc::new(config), Box::new(host), now),
                input: Input::default(),
                output: Output {
                    sent: Vec::new(),
                    step: usize::MAX,
                    room: usize::MAX,
                    writes: 0,
                },
                buf: vec![0; 512],
                log,
                defer_jobs: false,
                jobs: Vec::new(),
            }
        }

        fn send(&mut self, bytes: &[u8]) {
            self.input.chunks.push_back(bytes.to_vec());
        }

        fn drive(&mut self) -> Status {
            let Rig {
                session,
                input,
                output,
                buf,
                defer_jobs,
                jobs,
                ..
            } = self;
            session.drive(self.now, input, output, buf, &mut |ticket, job| {
                if !*defer_jobs {
                    return Some(run_job(job));
                }
                jobs.push((ticket, job));
                None
            })
        }

        /// Runs the oldest deferred job and answers with its verdict.
        fn finish_job(&mut self) {
            let (ticket, job) = self.jobs.remove(0);
            self.session.answer(self.now, ticket, run_job(job));
        }

        /// The deferred commit of [`TRANSACTION`] answers: its 250, then
        /// the pipelined QUIT's 221 and the end.
        fn commit_then_quit(&mut self) {
            self.finish_job();
            assert!(!self.session.has_job());
            assert_eq!(self.drive(), Status::Done);
            let text = self.text();
            assert!(
                text.ends_with(&format!("250 2.0.0 ok queued\r\n{CLOSING}")),
                "{text}"
            );
            assert_eq!(self.log(), ["commit 6"]);
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(&self.output.sent).into_owned()
        }

        fn replies(&self) -> Vec<String> {
            self.text().lines().map(|l| l[..3].to_string()).collect()
        }

        fn log(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }
    }

    const TRANSACTION: &[u8] =
        b"HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n";
    const CLOSING: &str = "221 2.0.0 test.example closing connection\r\n";
    const GO_AHEAD: &str = "354 go ahead, end with <CRLF>.<CRLF>\r\n";

    #[test]
    fn partial_writes_send_every_byte_in_order() {
        let mut rig = Rig::new();
        rig.output.step = 3;
        rig.send(TRANSACTION);
        assert_eq!(rig.drive(), Status::Done);
        assert_eq!(
            rig.replies(),
            ["220", "250", "250", "250", "354", "250", "221"]
        );
        assert!(rig.text().ends_with(CLOSING));
        assert_eq!(rig.output.writes, rig.output.sent.len().div_ceil(3));
        assert_eq!(rig.log(), ["commit 6"]);
    }

    #[test]
    fn a_full_writer_keeps_the_session_open_until_it_drains() {
        let mut rig = Rig::new();
        rig.output.step = 3;
        rig.output.room = 10;
        rig.send(b"HELO c\r\nQUIT\r\n");
        assert_eq!(rig.drive(), Status::Open);
        assert!(rig.session.wants_write());
        assert_eq!(rig.output.sent.len(), 10);
        // The peer reads: the rest goes out, then the session is done.
        rig.output.room = usize::MAX;
        assert_eq!(rig.drive(), Status::Done);
        assert!(!rig.session.wants_write());
        assert!(rig.text().ends_with(CLOSING));
    }

    #[test]
    fn reads_stop_at_the_budget_and_resume() {
        let mut rig = Rig::new();
        for _ in 0..READ_BUDGET + 3 {
            rig.send(b"NOOP\r\n");
        }
        assert_eq!(rig.drive(), Status::Open);
        assert_eq!(rig.input.reads, READ_BUDGET);
        assert!(rig.session.more_input(), "stopped for fairness");
        assert!(!rig.session.wants_read());
        assert_eq!(rig.drive(), Status::Open);
        // Three more NOOPs, then the read that finds nothing.
        assert_eq!(rig.input.reads, READ_BUDGET + 4);
        assert!(!rig.session.more_input());
        assert!(rig.session.wants_read(), "ran dry: wait for readiness");
        assert_eq!(rig.replies().len(), 1 + READ_BUDGET + 3);
    }

    #[test]
    fn no_read_until_told_readable_again() {
        let mut rig = Rig::new();
        rig.drive();
        assert_eq!(rig.input.reads, 1);
        rig.send(b"NOOP\r\n");
        // Edge-triggered: without a readiness event the bytes wait.
        rig.drive();
        assert_eq!(rig.input.reads, 1);
        rig.session.set_readable();
        rig.drive();
        assert_eq!(rig.replies(), ["220", "250"]);
    }

    #[test]
    fn reads_are_bounded_by_the_buffer() {
        let mut rig = Rig::new();
        rig.buf = vec![0; 4];
        rig.send(TRANSACTION);
        // Four bytes a read, eight reads a drive.
        let drives = (0..TRANSACTION.len()).take_while(|_| rig.drive() == Status::Open);
        assert_eq!(
            drives.count(),
            TRANSACTION.len().div_ceil(4 * READ_BUDGET) - 1
        );
        assert!(rig.text().ends_with(CLOSING));
    }

    #[test]
    fn closes_only_after_the_last_reply_is_flushed() {
        let mut rig = Rig::new();
        rig.output.step = 1;
        rig.output.room = 5;
        rig.send(b"QUIT\r\n");
        let mut drives = 1;
        while rig.drive() == Status::Open {
            // The peer reads five more bytes.
            rig.output.room = 5;
            drives += 1;
        }
        assert!(drives > 2);
        assert!(rig.text().ends_with(CLOSING));
        // Nothing is read after QUIT, even with bytes waiting.
        let reads = rig.input.reads;
        rig.send(b"NOOP\r\n");
        rig.session.set_readable();
        assert_eq!(rig.drive(), Status::Done);
        assert_eq!(rig.input.reads, reads);
        assert!(!rig.session.more_input() && !rig.session.wants_read());
    }

    #[test]
    fn a_pending_job_keeps_the_session_open() {
        let mut rig = Rig::new();
        rig.defer_jobs = true;
        rig.send(TRANSACTION);
        // The pipelined QUIT waits behind the message's commit.
        assert_eq!(rig.drive(), Status::Open);
        assert!(rig.session.has_job());
        assert!(rig.text().ends_with(GO_AHEAD));
        // A farewell now would lie: the message may yet be accepted.
        rig.session.farewell(&mut rig.output);
        assert_eq!(rig.drive(), Status::Open);
        assert!(rig.text().ends_with(GO_AHEAD));
        rig.commit_then_quit();
    }

    #[test]
    fn eof_after_a_pipelined_quit_waits_for_the_job() {
        let mut rig = Rig::new();
        rig.defer_jobs = true;
        rig.send(TRANSACTION);
        rig.input.eof = true;
        assert_eq!(rig.drive(), Status::Open);
        assert!(!rig.session.more_input() && !rig.session.wants_read());
        rig.commit_then_quit();
    }

    #[test]
    fn a_stale_answer_is_dropped() {
        let mut rig = Rig::new();
        rig.defer_jobs = true;
        rig.send(b"HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nx\r\n.\r\n");
        rig.drive();
        let (ticket, job) = rig.jobs.remove(0);
        rig.session.answer(rig.now, ticket, run_job(job));
        // The same ticket again, as from a job that answered twice.
        rig.session.answer(rig.now, ticket, Verdict::Accept);
        rig.send(b"QUIT\r\n");
        rig.session.set_readable();
        assert_eq!(rig.drive(), Status::Done);
        assert_eq!(rig.text().matches("250 2.0.0 ok queued").count(), 1);
    }

    #[test]
    fn eof_in_the_middle_of_data_aborts_the_message() {
        let mut rig = Rig::new();
        rig.defer_jobs = true;
        rig.send(b"HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nhalf a mess");
        rig.send(b"age\r\nand more\r\n");
        rig.input.eof = true;
        assert_eq!(rig.drive(), Status::Done);
        assert!(rig.jobs.is_empty(), "nothing is committed");
        assert!(!rig.session.has_job());
        assert_eq!(rig.log(), ["abort"]);
        assert!(rig.text().ends_with(GO_AHEAD));
    }

    #[test]
    fn a_read_error_ends_the_session_like_eof() {
        struct Reset;
        impl Read for Reset {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::ErrorKind::ConnectionReset.into())
            }
        }
        let mut rig = Rig::new();
        let status = rig.session.drive(
            rig.now,
            Reset,
            &mut rig.output,
            &mut rig.buf,
            &mut |_, _| None,
        );
        assert_eq!(status, Status::Done);
        assert_eq!(rig.replies(), ["220"]);
    }

    #[test]
    fn a_failed_write_fails_the_session() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut rig = Rig::new();
        let status = rig.session.drive(
            rig.now,
            &mut rig.input,
            Broken,
            &mut rig.buf,
            &mut |_, _| None,
        );
        assert_eq!(status, Status::Failed);
    }

    #[test]
    fn a_panicking_job_becomes_a_451() {
        let mut rig = Rig::new();
        rig.send(b"HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\npanic\r\n.\r\nQUIT\r\n");
        assert_eq!(rig.drive(), Status::Done);
        let text = rig.text();
        assert!(
            text.contains("\r\n451 4.3.0 local error; try again later\r\n221 "),
            "{text}"
        );
        assert!(rig.log().is_empty());
    }

    #[test]
    fn farewell_tells_an_idle_client_why() {
        let mut rig = Rig::new();
        rig.drive();
        rig.session.farewell(&mut rig.output);
        assert!(rig.text().ends_with("\r\n421 4.3.2 shutting down\r\n"));
    }

    #[test]
    fn farewell_stays_quiet_while_replies_are_unsent() {
        let mut rig = Rig::new();
        rig.output.room = 0;
        rig.drive();
        assert!(rig.session.wants_write());
        rig.output.room = usize::MAX;
        rig.session.farewell(&mut rig.output);
        assert!(rig.output.sent.is_empty(), "no 421 before the 220");
    }

    #[test]
    fn the_idle_timeout_closes_with_421() {
        let mut rig = Rig::new();
        rig.drive();
        rig.now = rig.session.deadline().expect("an idle deadline");
        rig.session.timeout(rig.now);
        assert_eq!(rig.drive(), Status::Done);
        assert!(rig.text().contains("421 4.4.2"), "{}", rig.text());
    }
}

/// Reads and drops what the client has already sent, from a non-blocking
/// reader, until it would block (at most 256 KiB). Call it after sending
/// FIN and before closing: Linux answers a close with unread input by a
/// reset, which can make the client discard our last reply (the 421 or
/// 451 that explains why we close).
pub fn discard_pending_input<R: Read>(mut reader: R) {
    let mut buf = [0u8; 4096];
    for _ in 0..64 {
        match reader.read(&mut buf) {
            Ok(n) if n > 0 => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            _ => return,
        }
    }
}

#[cfg(test)]
mod discard_tests {
    use super::*;

    /// Gives `left` bytes in small reads, then says it would block.
    struct Pending {
        left: usize,
    }

    impl Read for Pending {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.left == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = self.left.min(buf.len()).min(1000);
            self.left -= n;
            Ok(n)
        }
    }

    #[test]
    fn drains_until_it_would_block_and_no_further_than_the_bound() {
        let mut r = Pending { left: 10_000 };
        discard_pending_input(&mut r);
        assert_eq!(r.left, 0);
        let mut r = Pending { left: 10_000_000 };
        discard_pending_input(&mut r);
        assert_eq!(r.left, 10_000_000 - 64 * 1000);
    }
}
