//! qmail-send: the [scheduler](crate::scheduler) driven over the queue on
//! disk.
//!
//! One thread owns the scheduler and the log; everything that touches the
//! disk or runs a delivery goes to a [`Worker`] on a pool thread, and comes
//! back as the scheduler's input. Four pools: local deliveries
//! (`concurrencylocal` threads), remote deliveries (`concurrencyremote`,
//! through the [`Transport`] the caller gives; without one the remote
//! channel is held, remote recipients stay queued, and the log says so),
//! done marks, and the other queue writes (short fsyncs the scheduler waits
//! on).

mod controls;
mod pool;
pub mod remote;
mod trigger;
mod worker;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use controls::{load, load_rewriter, Reader, SendControls, MAX_CONCURRENCY};
pub use remote::{RemoteJob, RemoteResult, Transport};
pub use worker::{Answer, Worker};

use crate::direct::Direct;
use crate::scheduler::{
    Action, Channel, DirectDelivery, Input, MessageId, Misuse, Rewriter, Scheduler, Ticket,
};
use crate::spool::Spool;
use crate::wake::{self, InProcess, QueueKey};
use pool::Pool;
use remote::Batcher;
use trigger::Trigger;

/// qmail-send's SLEEP_TODO: scan `todo/` this often even without a trigger.
const RESCAN_SECS: u64 = 1500;
/// qmail-send's SLEEP_CLEANUP: the 36-hour cleanup runs this often.
const CLEANUP_SECS: u64 = 76431;
/// Threads making queue writes; more lets fsyncs share journal commits.
const DISK_THREADS: usize = 4;
/// Threads writing done marks.
const MARK_THREADS: usize = 2;

/// Why the remote channel is held (in the log line that says so).
pub const REMOTE_HELD: &str = "no remote transport; remote recipients stay queued";

/// What the daemon is told from outside (signals, the trigger).
#[derive(Debug)]
pub enum Control {
    /// `lock/trigger` or a new message: scan `todo/`.
    Trigger,
    /// SIGALRM: retry every deferred message now.
    RetryNow,
    /// SIGHUP: new rewriting rules (`locals`, `virtualdomains`, ...).
    Reload(Rewriter),
    /// SIGTERM: finish the deliveries in flight, record, exit.
    Exit,
    /// A server of this process delivered a message without queueing it
    /// ([`crate::direct`]): log it.
    Delivered(DirectDelivery),
}

enum Event {
    Control(Control),
    Answer(Option<Answer>),
    /// A remote job's results, one per recipient.
    Answers(Vec<Input>),
    /// Asks nothing: a sender learns whether the daemon still listens.
    Ping,
}

/// Sends [`Control`]s to a running daemon; cheap to clone.
#[derive(Clone)]
pub struct Handle(Sender<Event>);

impl Handle {
    /// False once the daemon has stopped.
    pub fn send(&self, control: Control) -> bool {
        self.0.send(Event::Control(control)).is_ok()
    }

    /// Whether the daemon still runs, without telling it anything.
    pub fn alive(&self) -> bool {
        self.0.send(Event::Ping).is_ok()
    }
}

/// How to run.
pub struct Options {
    pub home: PathBuf,
    /// qmail-start's argument: the delivery for a user without `.qmail`.
    pub default_delivery: Vec<u8>,
    pub controls: SendControls,
    /// qmail-remote; `None` holds the remote channel.
    pub remote: Option<Arc<dyn Transport>>,
}

pub struct Daemon {
    scheduler: Scheduler,
    worker: Worker,
    remote: Option<Arc<dyn Transport>>,
    events: Sender<Event>,
    inbox: Receiver<Event>,
    /// `lock/sendmutex`, held while we run.
    _lock: File,
    /// The writes that remove a `todo/N` (a preprocessing, or the removal
    /// of an express message), by ticket.
    todo_writes: HashMap<Ticket, MessageId>,
    /// Messages handed to the scheduler whose `todo/N` still exists.
    in_todo: HashSet<MessageId>,
    /// Actions given to the pools and not answered yet.
    outstanding: usize,
    /// A `todo/N` was seen while the scheduler still held N (ids are
    /// inodes, reused once `mess/N` is gone): scan again after the next
    /// answer, which may be that removal's.
    rescan: bool,
    /// The rules lent to this process's servers, to deliver before
    /// queueing (taken when the daemon runs).
    direct: Option<Direct>,
}

/// Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Daemon {
    /// Opens the queue and takes its lock (one qmail-send per queue).
    pub fn new(options: Options) -> Result<Daemon, String> {
        let home = options.home;
        let (events, inbox) = mpsc::channel();
        let direct = Direct::new(
            home.clone(),
            options.default_delivery.clone(),
            options.controls.scheduler.rewriter.clone(),
            Handle(events.clone()),
            options.controls.scheduler.concurrency[Channel::Local as usize],
        );
        let spool = Spool::open(&home).map_err(|e| format!("{}: {e}", home.display()))?;
        let lock = spool.lock().map_err(|e| e.to_string())?;
        let worker = Worker::new(
            spool,
            home,
            options.default_delivery,
            options.controls.bounce,
        )
        .map_err(|e| format!("unable to open the queue: {}", e.text()))?;
        let mut scheduler = Scheduler::new(options.controls.scheduler);
        if options.remote.is_none() {
            scheduler.set_channel_enabled(Channel::Remote, false, REMOTE_HELD);
        }
        Ok(Daemon {
            scheduler,
            worker,
            remote: options.remote,
            events,
            inbox,
            _lock: lock,
            todo_writes: HashMap::new(),
            in_todo: HashSet::new(),
            outstanding: 0,
            rescan: false,
            direct: Some(direct),
        })
    }

    pub fn handle(&self) -> Handle {
        Handle(self.events.clone())
    }

    /// Runs until [`Control::Exit`] and the deliveries in flight are done,
    /// writing qmail-send's log lines to `log`.
    pub fn run(mut self, log: &mut dyn Write) -> io::Result<()> {
        // One write(2) for the lines of a burst, made before the daemon
        // waits: a line each was a third of its syscalls under load.
        let log: &mut dyn Write = &mut BufWriter::new(log);
        let local = self.scheduler.config().concurrency[Channel::Local as usize];
        let answer = |w: &Worker| {
            let w = w.clone();
            move |action: Action| Event::Answer(w.perform(action, unix_now()))
        };
        let deliveries = Pool::new(
            "sqmail-local",
            local,
            self.events.clone(),
            answer(&self.worker),
        )?;
        let disk = Pool::new(
            "sqmail-queue",
            DISK_THREADS,
            self.events.clone(),
            answer(&self.worker),
        )?;
        // Done marks free delivery slots (the scheduler holds a slot until
        // its mark is durable), so they never wait behind a backlog of new
        // messages being preprocessed.
        let marks = Pool::new(
            "sqmail-marks",
            MARK_THREADS,
            self.events.clone(),
            answer(&self.worker),
        )?;
        let remote = match &self.remote {
            Some(transport) => {
                let transport = Arc::clone(transport);
                let spool = self.worker.spool().clone();
                let threads = self.scheduler.config().concurrency[Channel::Remote as usize];
                Some(Pool::new(
                    "sqmail-remote",
                    threads,
                    self.events.clone(),
                    move |job: RemoteJob| {
                        Event::Answers(remote::perform(&*transport, &spool, &job))
                    },
                )?)
            }
            None => None,
        };
        let mut batcher = Batcher::default();
        // A wake-up while one is waiting adds nothing: the scan it causes
        // covers every commit before it, so a burst makes one scan.
        let pending = Arc::new(AtomicBool::new(false));
        let wake = {
            let handle = self.handle();
            let pending = Arc::clone(&pending);
            Arc::new(move || pending.swap(true, Ordering::SeqCst) || handle.send(Control::Trigger))
        };
        let queue = self.worker.spool().path();
        let _trigger = Trigger::start(queue, {
            let wake = Arc::clone(&wake);
            move || wake()
        })?;
        let in_process = Arc::new(InProcess {
            wake: Box::new(move || {
                wake();
            }),
            direct: self.direct.take(),
        });
        let mut listening =
            QueueKey::of_queue(queue).map(|key| wake::listen(key, Arc::clone(&in_process)));

        let mut now = unix_now();
        self.cleanup(now, log)?;
        self.recover(now, log)?;
        self.intake(now, log)?;
        let mut next_scan = now + RESCAN_SECS;
        let mut next_cleanup = now + CLEANUP_SECS;
        let mut exiting = false;
        loop {
            while let Some(action) = self.scheduler.poll_action() {
                match action {
                    Action::Log(line) => writeln!(log, "{line}")?,
                    Action::StartDelivery {
                        delivery,
                        id,
                        channel: Channel::Remote,
                        sender,
                        recipient,
                    } if remote.is_some() => batcher.add(delivery, id, sender, recipient),
                    Action::StartDelivery { .. } | Action::InjectBounce(_) => {
                        self.outstanding += 1;
                        deliveries.submit(action);
                    }
                    Action::MarkDone { .. } => {
                        self.outstanding += 1;
                        marks.submit(action);
                    }
                    _ => {
                        if let Action::Preprocess { ticket, id, .. }
                        | Action::RemoveMessage { ticket, id } = &action
                        {
                            if self.in_todo.contains(id) {
                                self.todo_writes.insert(*ticket, *id);
                            }
                        }
                        self.outstanding += 1;
                        disk.submit(action);
                    }
                }
            }
            if let Some(pool) = &remote {
                for job in batcher.take() {
                    self.outstanding += 1;
                    pool.submit(job);
                }
            }
            // A server still delivering with our rules sends its record
            // yet: wait for it (polled, as nothing wakes us when it ends).
            let lent = Arc::strong_count(&in_process) > 1;
            if exiting && self.outstanding == 0 && !lent {
                break;
            }
            let deadline = if exiting {
                lent.then_some(now)
            } else {
                let t = next_scan.min(next_cleanup);
                Some(self.scheduler.poll_timeout().map_or(t, |s| s.min(t)))
            };
            let event = match self.inbox.try_recv() {
                Ok(event) => Ok(event),
                Err(_) => {
                    log.flush()?;
                    match deadline {
                        None => self
                            .inbox
                            .recv()
                            .map_err(|_| RecvTimeoutError::Disconnected),
                        Some(at) => {
                            // A deadline already past still waits a little:
                            // the scheduler moved it if it could act on it.
                            let wait = Duration::from_secs(at.saturating_sub(now))
                                .max(Duration::from_millis(100));
                            self.inbox.recv_timeout(wait)
                        }
                    }
                }
            };
            now = unix_now();
            match event {
                Ok(Event::Answer(Some(answer))) => {
                    self.outstanding -= 1;
                    self.take(now, answer, log)?;
                }
                Ok(Event::Answer(None)) => self.outstanding -= 1,
                Ok(Event::Answers(inputs)) => {
                    self.outstanding -= 1;
                    for input in inputs {
                        self.take(now, Answer::ok(input), log)?;
                    }
                }
                Ok(Event::Ping) => {}
                Ok(Event::Control(Control::Trigger)) => {
                    pending.store(false, Ordering::SeqCst);
                    // Many triggers may be waiting; one scan covers them.
                    self.intake(now, log)?;
                }
                Ok(Event::Control(Control::RetryNow)) => {
                    self.scheduler.handle(now, Input::Tick).ok();
                    self.scheduler.retry_now();
                    self.intake(now, log)?;
                }
                Ok(Event::Control(Control::Reload(rewriter))) => {
                    if let Some(direct) = &in_process.direct {
                        direct.set_rewriter(rewriter.clone());
                    }
                    self.scheduler.set_rewriter(rewriter);
                    writeln!(log, "status: reread locals and virtualdomains")?;
                }
                Ok(Event::Control(Control::Exit)) => {
                    // Commits from now on queue and wake nobody, as if
                    // qmail-send ran elsewhere.
                    drop(listening.take());
                    self.scheduler.drain();
                    exiting = true;
                }
                Ok(Event::Control(Control::Delivered(direct))) => {
                    let id = direct.id;
                    self.scheduler
                        .handle(now, Input::DeliveredDirectly(direct))
                        .ok();
                    // Its lines go out before anything that comes next,
                    // so only now may N become another message's id.
                    if let Err(e) = self.worker.spool().discard_delivered(id) {
                        writeln!(log, "warning: unable to remove mess/{id}: {e}")?;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if now >= next_scan {
                        next_scan = now + RESCAN_SECS;
                        self.intake(now, log)?;
                    }
                    if now >= next_cleanup {
                        next_cleanup = now + CLEANUP_SECS;
                        self.cleanup(now, log)?;
                    }
                    self.scheduler.handle(now, Input::Tick).ok();
                }
                // We hold a sender ourselves, so this cannot happen.
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        drop(deliveries);
        drop(remote);
        drop(marks);
        drop(disk);
        self.save_retry_times(log)?;
        writeln!(log, "status: exiting")?;
        log.flush()
    }

    fn take(&mut self, now: u64, answer: Answer, log: &mut dyn Write) -> io::Result<()> {
        if let Some(warning) = &answer.warning {
            writeln!(log, "{warning}")?;
        }
        if let Input::Written(ticket) = &answer.input {
            if let Some(id) = self.todo_writes.remove(ticket) {
                self.in_todo.remove(&id);
            }
        }
        if let Err(misuse) = self.scheduler.handle(now, answer.input) {
            writeln!(log, "warning: internal error: {misuse}")?;
        }
        if std::mem::take(&mut self.rescan) {
            self.intake(now, log)?;
        }
        Ok(())
    }

    /// Messages preprocessed before the last stop, with their done marks.
    fn recover(&mut self, now: u64, log: &mut dyn Write) -> io::Result<()> {
        let recovered = self.worker.spool().recover()?;
        for (id, problem) in recovered.problems {
            writeln!(log, "warning: skipping msg {id}: {problem}")?;
        }
        for message in recovered.messages {
            if let Err(misuse) = self.scheduler.handle(now, Input::Recovered(message)) {
                writeln!(log, "warning: internal error: {misuse}")?;
            }
        }
        Ok(())
    }

    /// New messages in `todo/`.
    fn intake(&mut self, now: u64, log: &mut dyn Write) -> io::Result<()> {
        let (inputs, warnings) = self.worker.intake(&self.in_todo);
        for w in warnings {
            writeln!(log, "{w}")?;
        }
        for (id, input) in inputs {
            match self.scheduler.handle(now, input) {
                Ok(()) => {
                    self.in_todo.insert(id);
                }
                Err(Misuse::DuplicateMessage(_)) => self.rescan = true,
                Err(misuse) => writeln!(log, "warning: internal error: {misuse}")?,
            }
        }
        Ok(())
    }

    fn cleanup(&self, now: u64, log: &mut dyn Write) -> io::Result<()> {
        if let Err(e) = self.worker.spool().cleanup(now) {
            writeln!(log, "warning: queue cleanup: {e}")?;
        }
        Ok(())
    }

    /// qmail-send's habit: the next retry of each waiting message as the
    /// mtime of its `local/N` or `remote/N`, read back at the next start.
    fn save_retry_times(&self, log: &mut dyn Write) -> io::Result<()> {
        for (id, channel, at) in self.scheduler.waiting() {
            if let Err(e) = self.worker.spool().set_next_retry(id, channel, at) {
                writeln!(log, "warning: msg {id}: {e}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
