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
        !self.readable && !self.closing && self.server.input_capacity() > 0
    }

    /// Reading stopped for fairness, not for lack of bytes: drive again soon.
    pub fn more_input(&self) -> bool {
        self.readable && !self.closing && self.server.input_capacity() > 0
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

    /// Serves `chunks` one read at a time, then `WouldBlock` (or EOF once
    /// `eof` is set and the chunks are gone).
    #[derive(Default)]
    struct Input {
        chunks: VecDeque<Vec<u8>>,
        eof: bool,
        reads: usize,
    }

    impl Input {
        fn push(&mut self, bytes: &[u8]) {
            self.chunks.push_back(bytes.to_vec());
        }
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

    impl Output {
        fn new(step: usize) -> Self {
            Output {
                sent: Vec::new(),
                step,
                room: usize::MAX,
                writes: 0,
            }
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(&self.sent).into_owned()
        }
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

    /// Accepts everything; commits in a job (or in a job that panics when
    /// the body says "panic"), and logs what it sees.
    struct Host {
        log: Log,
        body: Vec<u8>,
    }

    impl SmtpHost for Host {
        fn decide(&mut self, request: Request) -> Decision {
            if let Request::EndOfData = request {
                let body = std::mem::take(&mut self.body);
                let log = Arc::clone(&self.log);
                return Decision::Later(Box::new(move || {
                    assert!(!body.starts_with(b"panic"), "the job fails");
                    log.lock().unwrap().push(format!("commit {}", body.len()));
                    Verdict::AcceptWith(Reply::new(250, "2.0.0", "ok queued"))
                }));
            }
            Decision::Now(Verdict::Accept)
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

    fn session(now: Instant) -> (Session, Log) {
        let log = Log::default();
        let host = Host {
            log: Arc::clone(&log),
            body: Vec::new(),
        };
        let mut config = Config::new("test.example");
        config.idle_timeout = Duration::from_secs(60);
        (Session::new(Arc::new(config), Box::new(host), now), log)
    }

    /// Runs jobs inline, as the ucspi mode does.
    fn inline(_: Ticket, job: Job) -> Option<Verdict> {
        Some(run_job(job))
    }

    /// Starts jobs "elsewhere": keeps them for the test to run.
    fn deferred(jobs: &mut Vec<(Ticket, Job)>) -> impl FnMut(Ticket, Job) -> Option<Verdict> + '_ {
        move |ticket, job| {
            jobs.push((ticket, job));
            None
        }
    }

    const TRANSACTION: &[u8] =
        b"HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n";

    #[test]
    fn partial_writes_send_every_byte_in_order() {
        let now = Instant::now();
        let (mut s, log) = session(now);
        let mut input = Input::default();
        input.push(TRANSACTION);
        let mut output = Output::new(3);
        let mut buf = [0; 512];
        let status = s.drive(now, &mut input, &mut output, &mut buf, &mut inline);
        assert_eq!(status, Status::Done);
        let text = output.text();
        assert!(text.starts_with("220 test.example"), "{text}");
        let codes: Vec<&str> = text.lines().map(|l| &l[..3]).collect();
        assert_eq!(codes, ["220", "250", "250", "250", "354", "250", "221"]);
        assert!(output.writes >= text.len() / 3);
        assert_eq!(*log.lock().unwrap(), ["commit 6"]);
    }

    #[test]
    fn a_full_writer_keeps_the_session_open_until_it_drains() {
        let now = Instant::now();
        let (mut s, _) = session(now);
        let mut input = Input::default();
        input.push(b"HELO c\r\nQUIT\r\n");
        let mut output = Output::new(3);
        output.room = 10;
        let mut buf = [0; 512];
        let status = s.drive(now, &mut input, &mut output, &mut buf, &mut inline);
        assert_eq!(status, Status::Open);
        assert!(s.wants_write());
        assert_eq!(output.sent.len(), 10);
        // The peer reads: the rest goes out, then the session is done.
        output.room = usize::MAX;
        let status = s.drive(now, &mut input, &mut output, &mut buf, &mut inline);
        assert_eq!(status, Status::Done);
        assert!(!s.wants_write());
        assert!(output
            .text()
            .ends_with("221 2.0.0 test.example closing connection\r\n"));
    }

    #[test]
    fn reads_stop_at_the_budget_and_resume() {
        let now = Instant::now();
        let (mut s, _) = session(now);
        let mut input = Input::default();
        for _ in 0..READ_BUDGET + 3 {
            input.push(b"NOOP\r\n");
        }
        let mut output = Output::new(usize::MAX);
        let mut buf = [0; 512];
        let status = s.drive(now, &mut input, &mut output, &mut buf, &mut inline);
        assert_eq!(status, Status::Open);
        assert_eq!(input.reads, READ_BUDGET);
        assert!(
            s.more_input(),
            "stopped for fairness, not for lack of bytes"
        );
        assert!(!s.wants_read());
        let status = s.drive(now, &mut input, &mut output, &mut buf, &mut inline);
        assert_eq!(status, Status::Open);
        // Three more NOOPs, then the read that finds nothing.
        assert_eq!(input.reads, READ_BUDGET + 4);
        assert!(!s.more_input());
        assert!(s.wants_read(), "ran dry: wait for readiness");
        assert_eq!(output.text().lines().count(), 1 + READ_BUDGET + 3);
    }

    #[test]
    fn no_read_until_told_readable_again() {
        let now = Instant::now();
        let (mut s, _) = session(now);
        let mut input = Input::default();
        let mut output = Output::new(usize::MAX);
        let mut buf = [0; 512];
        s.drive(now, &mut input, &mut output, &mut buf, &mut inline);
        assert_eq!(input.reads, 1);
        input.push(b"NOOP\r\n");
        // Edge-triggered: without a readiness event the bytes wait.
        s.drive(now, &mut input, &mut output, &mut buf, &mut inline);
        assert_eq!(input.reads, 1);
        s.set_readable();
        s.drive(now, &mut input, &mut output, &mut buf, &mut inline);
        assert!(
            output.text().ends_with("250 2.0.0 ok\r\n"),
            "{}",
            output.text()
        );
    }

    #[test]
    fn reads_are_bounded_by_the_buffer() {
        let now = Instant::now();
        let (mut s, _) = session(now);
        let mut input = Input::default();
        input.push(TRANSACTION);
        let mut output = Output::new(usize::MAX);
        let mut buf = [0; 4];
        let mut status = Status::Open;
        for _ in 0..TRANSACTION.len() {
            status = s.drive(now, &mut input, &mut output, &mut buf, &mut inline);
            if status != Status::Open {
                break;
            }
        }
        assert_eq!(status, Status::Done);
        assert!(output
            .text()
            .ends_with("221 2.0.0 test.example closing connection\r\n"));
    }

    #[test]
    fn closes_only_after_the_last_reply_is_flushed() {
        let now = Instant::now();
        let (mut s, _) = session(now);
        let mut input = Input::default();
        input.push(b"QUIT\r\n");
        let mut output = Output::new(1);
        output.room = 5;
        let mut buf = [0; 512];
        let mut drives = 0;
        loop {
            drives += 1;
            match s.drive(now, &mut input, &mut output, &mut buf, &mut inline) {
                Status::Open => output.room = 5,
                status => {
                    assert_eq!(status, Status::Done);
                    break;
                }
            }
        }
        assert!(drives > 2);
        assert!(output
            .text()
            .ends_with("221 2.0.0 test.example closing connection\r\n"));
        // Nothing is read after QUIT, even with bytes waiting.
        input.push(b"NOOP\r\n");
        s.set_readable();
        let reads = input.reads;
        assert_eq!(
            s.drive(now, &mut input, &mut output, &mut buf, &mut inline),
            Status::Done
        );
        assert_eq!(input.reads, reads);
        assert!(!s.more_input() && !s.wants_read());
    }

    #[test]
    fn a_pending_job_keeps_the_session_open() {
        let now = Instant::now();
        let (mut s, log) = session(now);
        let mut input = Input::default();
        input.push(TRANSACTION);
        input.eof = true;
        let mut output = Output::new(usize::MAX);
        let mut buf = [0; 512];
        let mut jobs = Vec::new();
        let status = s.drive(
            now,
            &mut input,
            &mut output,
            &mut buf,
            &mut deferred(&mut jobs),
        );
        // QUIT and the EOF wait behind the message's commit.
        assert_eq!(status, Status::Open);
        assert!(s.has_job());
        assert_eq!(jobs.len(), 1);
        assert!(
            output
                .text()
                .ends_with("go ahead, end with <CRLF>.<CRLF>\r\n"),
            "{}",
            output.text()
        );
        // A farewell now would lie: the message may yet be accepted.
        s.farewell(&mut output);
        assert!(!output.text().contains("421"));
        let status = s.drive(
            now,
            &mut input,
            &mut output,
            &mut buf,
            &mut deferred(&mut jobs),
        );
        assert_eq!(status, Status::Open);
        let (ticket, job) = jobs.pop().unwrap();
        s.answer(now, ticket, run_job(job));
        assert!(!s.has_job());
        let status = s.drive(
            now,
            &mut input,
            &mut output,
            &mut buf,
            &mut deferred(&mut jobs),
        );
        assert_eq!(status, Status::Done);
        let text = output.text();
        assert!(text.contains("250 2.0.0 ok queued\r\n221 "), "{text}");
        assert_eq!(*log.lock().unwrap(), ["commit 6"]);
    }

    #[test]
    fn a_stale_answer_is_dropped() {
        let now = Instant::now();
        let (mut s, _) = session(now);
        let mut input = Input::default();
        input.push(b"HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nx\r\n.\r\n");
        let mut output = Output::new(usize::MAX);
        let mut buf = [0; 512];
        let mut jobs = Vec::new();
        s.drive(
            now,
            &mut input,
            &mut output,
            &mut buf,
            &mut deferred(&mut jobs),
        );
        let (ticket, job) = jobs.pop().unwrap();
        s.answer(now, ticket, run_job(job));
        // The same ticket again, as from a job that answered twice.
        s.answer(now, ticket, Verdict::Accept);
        input.push(b"QUIT\r\n");
        s.set_readable();
        let status = s.drive(
            now,
            &mut input,
            &mut output,
            &mut buf,
            &mut deferred(&mut jobs),
        );
        assert_eq!(status, Status::Done);
        assert_eq!(output.text().matches("250 2.0.0 ok queued").count(), 1);
    }

    #[test]
    fn eof_in_the_middle_of_data_aborts_the_message() {
        let now = Instant::now();
        let (mut s, log) = session(now);
        let mut input = Input::default();
        input.push(b"HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nhalf a mess");
        input.push(b"age\r\nand more\r\n");
        input.eof = true;
        let mut output = Output::new(usize::MAX);
        let mut buf = [0; 512];
        let mut jobs = Vec::new();
        let status = s.drive(
            now,
            &mut input,
            &mut output,
            &mut buf,
            &mut deferred(&mut jobs),
        );
        assert_eq!(status, Status::Done);
        assert!(jobs.is_empty(), "nothing is committed");
        assert!(!s.has_job());
        assert_eq!(*log.lock().unwrap(), ["abort"]);
        assert!(
            output
                .text()
                .ends_with("go ahead, end with <CRLF>.<CRLF>\r\n"),
            "{}",
            output.text()
        );
    }

    #[test]
    fn a_read_error_ends_the_session_like_eof() {
        struct Reset;
        impl Read for Reset {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::ErrorKind::ConnectionReset.into())
            }
        }
        let now = Instant::now();
        let (mut s, _) = session(now);
        let mut output = Output::new(usize::MAX);
        let mut buf = [0; 512];
        assert_eq!(
            s.drive(now, Reset, &mut output, &mut buf, &mut inline),
            Status::Done
        );
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
        let now = Instant::now();
        let (mut s, _) = session(now);
        let mut input = Input::default();
        let mut buf = [0; 512];
        assert_eq!(
            s.drive(now, &mut input, Broken, &mut buf, &mut inline),
            Status::Failed
        );
    }

    #[test]
    fn a_panicking_job_becomes_a_451() {
        let now = Instant::now();
        let (mut s, log) = session(now);
        let mut input = Input::default();
        input.push(b"HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\npanic\r\n.\r\nQUIT\r\n");
        let mut output = Output::new(usize::MAX);
        let mut buf = [0; 512];
        let status = s.drive(now, &mut input, &mut output, &mut buf, &mut inline);
        assert_eq!(status, Status::Done);
        let text = output.text();
        assert!(
            text.contains("\r\n451 4.3.0 local error; try again later\r\n221 "),
            "{text}"
        );
        assert!(log.lock().unwrap().is_empty());
    }

    #[test]
    fn farewell_tells_an_idle_client_once() {
        let now = Instant::now();
        let (mut s, _) = session(now);
        let mut input = Input::default();
        let mut output = Output::new(usize::MAX);
        let mut buf = [0; 512];
        s.drive(now, &mut input, &mut output, &mut buf, &mut inline);
        s.farewell(&mut output);
        assert!(output.text().ends_with("\r\n421 4.3.2 shutting down\r\n"));
    }

    #[test]
    fn farewell_stays_quiet_while_replies_are_unsent() {
        let now = Instant::now();
        let (mut s, _) = session(now);
        let mut input = Input::default();
        let mut output = Output::new(usize::MAX);
        output.room = 0;
        let mut buf = [0; 512];
        s.drive(now, &mut input, &mut output, &mut buf, &mut inline);
        assert!(s.wants_write());
        output.room = usize::MAX;
        s.farewell(&mut output);
        assert!(output.sent.is_empty(), "no 421 before the 220");
    }

    #[test]
    fn the_idle_timeout_closes_with_421() {
        let now = Instant::now();
        let (mut s, _) = session(now);
        let mut input = Input::default();
        let mut output = Output::new(usize::MAX);
        let mut buf = [0; 512];
        s.drive(now, &mut input, &mut output, &mut buf, &mut inline);
        let at = s.deadline().expect("an idle deadline");
        s.timeout(at);
        let status = s.drive(at, &mut input, &mut output, &mut buf, &mut inline);
        assert_eq!(status, Status::Done);
        assert!(output.text().contains("421 4.4.2"), "{}", output.text());
    }
}
