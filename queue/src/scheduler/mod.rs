//! The scheduler: qmail-send as a pure machine.
//!
//! No files, no clock: the host passes time (unix seconds) and what it found
//! or did, and drains [`Action`]s. The loop is str0m's "mutate, then drain":
//! after every [`Scheduler::handle`], call [`Scheduler::poll_action`] until it
//! returns `None`, then sleep until [`Scheduler::poll_timeout`] (or the next
//! input) and call `handle(now, Input::Tick)`.
//!
//! Every action that writes to disk carries a [`Ticket`]; the machine does
//! nothing that depends on that write until the host answers
//! [`Input::Written`]. That makes qmail's write ordering a contract:
//! - `info/N`, `local/N`, `remote/N` are durable before `todo/N` goes and
//!   before any delivery starts ([`Action::Preprocess`]); with
//!   [`Config::express`], a new message of one channel is delivered first
//!   and `todo/N` stays its record until one write ends that pass;
//! - a recipient counts as done only once its `D` mark (and, for a failure,
//!   its bounce report) is durable ([`Action::MarkDone`], or the write
//!   that ends an express pass), so a crash can repeat only deliveries
//!   that were in flight; qmail 1.03 does not fsync done marks and can
//!   repeat finished ones;
//! - a message is removed only when every recipient is durably done and its
//!   bounce, if any, was queued ([`Action::RemoveMessage`]).
//!
//! Bounce text is composed by the host (`sqmail_core::bounce`); this machine
//! decides when, to whom, and with which reports ([`BounceRequest`]).

mod classify;
mod log;
mod machine;
mod retry;
#[cfg(test)]
mod tests;

pub use classify::{Rewriter, VirtualDomains};
pub use log::safe as log_safe;
pub(crate) use machine::return_path;
pub use machine::Scheduler;
pub use retry::{chanskip, isqrt, next_retry};

/// A message's number: the inode of `mess/N`.
pub type MessageId = u64;

/// qmail's two delivery channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Local = 0,
    Remote = 1,
}

impl Channel {
    pub const ALL: [Channel; 2] = [Channel::Local, Channel::Remote];

    /// The word used in log lines and in `queue/local`, `queue/remote`.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Local => "local",
            Channel::Remote => "remote",
        }
    }
}

/// Names one durable write the host was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// qmail's one-letter delivery results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `K`: delivered.
    Success,
    /// `Z`: temporary failure, retry later.
    Deferral,
    /// `D`: permanent failure, bounce.
    Failure,
}

/// The scheduler's settings, from control files the host has read.
#[derive(Clone, Debug)]
pub struct Config {
    /// `concurrencylocal` (qmail default 10) and `concurrencyremote` (20).
    pub concurrency: [usize; 2],
    /// `queuelifetime`, seconds (default 604800).
    pub queuelifetime: u64,
    /// Classification: `locals`, `percenthack`, `virtualdomains`, `envnoathost`.
    pub rewriter: Rewriter,
    /// `doublebounceto` (default `postmaster`); empty discards double bounces.
    pub doublebounceto: String,
    /// `doublebouncehost` (default `me`).
    pub doublebouncehost: String,
    /// Deliver a new message whose recipients are all of one channel (and
    /// fit in its `concurrencylocal` or `concurrencyremote`) before
    /// preprocessing it: `todo/N` stays its
    /// record until the one write that ends the pass, which removes it if
    /// every recipient succeeded (no `info/N`, `local/N` or done marks ever
    /// written) or preprocesses it with the pass's done marks otherwise.
    /// The pass's finished deliveries hold their slots until that write is
    /// durable, so a crash still repeats at most a channel's concurrency
    /// of them.
    /// Off in [`Config::new`] (qmail's order); `sqmail send` turns it on.
    pub express: bool,
}

impl Config {
    /// qmail's defaults for a host called `me`, with `locals` = `me`.
    pub fn new(me: &str) -> Self {
        Config {
            concurrency: [10, 20],
            queuelifetime: 604_800,
            rewriter: Rewriter::new(&[me.to_string()], &[], VirtualDomains::default(), me),
            doublebounceto: "postmaster".into(),
            doublebouncehost: me.into(),
            express: false,
        }
    }
}

/// A message as its files are on disk at startup (after preprocessing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnDisk {
    pub id: MessageId,
    /// From `info/N` (`F<sender>`).
    pub sender: Vec<u8>,
    /// `info/N`'s mtime.
    pub birth: u64,
    /// `local/N` and `remote/N`: each recipient and whether it is marked `D`.
    pub recipients: [Vec<(Vec<u8>, bool)>; 2],
    /// `bounce/N`: the failure reports recorded so far, (recipient, report).
    pub bounces: Vec<(Vec<u8>, Vec<u8>)>,
    /// `local/N`/`remote/N` mtimes if the host recorded retry times there;
    /// `None` retries at once.
    pub next_retry: [Option<u64>; 2],
}

/// Everything that happens to the scheduler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A message found in `todo/` (read from its envelope). Its birth is
    /// `now`, as qmail's is the moment `info/N` is made.
    NewMessage {
        id: MessageId,
        sender: Vec<u8>,
        recipients: Vec<Vec<u8>>,
        /// qmail-queue's pid (`p` line) and the invoker's uid (`u` line).
        qp: u32,
        uid: u32,
        /// Size of `mess/N`, for the `info msg` line.
        bytes: u64,
    },
    /// A preprocessed message found at startup.
    Recovered(OnDisk),
    /// The write named by the ticket is durable.
    Written(Ticket),
    /// The write could not be made; it is asked for again later.
    WriteFailed(Ticket),
    /// A delivery ended.
    DeliveryResult {
        delivery: u64,
        outcome: Outcome,
        report: Vec<u8>,
    },
    /// The bounce asked for was queued (by qmail-queue, whose pid is `qp`)
    /// and `bounce/N` was then removed.
    BounceInjected { id: MessageId, qp: u32 },
    /// The bounce could not be queued; it is asked for again later.
    BounceFailed { id: MessageId },
    /// A message delivered before it was queued ([`crate::direct`]): it
    /// is logged as a message that came and went, with one delivery.
    DeliveredDirectly(DirectDelivery),
    /// Time passed.
    Tick,
}

/// What a delivery made before queueing tells the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectDelivery {
    /// The id the message had while it was written: `mess/N`'s inode.
    pub id: MessageId,
    pub sender: Vec<u8>,
    /// The local address delivered to (after `virtualdomains`).
    pub recipient: Vec<u8>,
    /// The message's size, with qmail-queue's pid and the invoker's uid.
    pub bytes: u64,
    pub qp: u32,
    pub uid: u32,
    /// qmail-local's report.
    pub report: Vec<u8>,
}

/// One failure to report in a bounce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub recipient: Vec<u8>,
    pub report: Vec<u8>,
}

/// A recipient that the write recording its message marks done (`D`),
/// with its bounce paragraph for a failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mark {
    pub channel: Channel,
    /// Its place in `local/N` or `remote/N`.
    pub index: usize,
    pub failure: Option<Failure>,
}

/// What the bounce composer needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BounceRequest {
    pub id: MessageId,
    /// The failed message's envelope sender (empty for a bounce).
    pub original_sender: Vec<u8>,
    /// The bounce's envelope sender: empty, or `#@[]` for a double bounce.
    pub envelope_sender: Vec<u8>,
    /// The bounce's one recipient: the original sender, or
    /// `doublebounceto@doublebouncehost`.
    pub recipient: Vec<u8>,
    pub double: bool,
    pub failures: Vec<Failure>,
}

/// Everything the scheduler wants done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write `info/N` (`F<sender>`, mtime `birth`), `local/N` and
    /// `remote/N` (`T<addr>\0` each, `D<addr>\0` for those in `done`; an
    /// empty list means no file), each fsynced, then remove `todo/N` and
    /// `intd/N`; answer `Written(ticket)`. Any `bounce/N` left from an
    /// earlier attempt goes first, and `done`'s failures are written to a
    /// new one before the `D` marks that they explain.
    Preprocess {
        ticket: Ticket,
        id: MessageId,
        sender: Vec<u8>,
        birth: u64,
        recipients: [Vec<Vec<u8>>; 2],
        /// Recipients an express pass finished ([`Config::express`]);
        /// empty for qmail's preprocessing.
        done: Vec<Mark>,
    },
    /// Deliver one recipient; answer `DeliveryResult`.
    StartDelivery {
        delivery: u64,
        id: MessageId,
        channel: Channel,
        sender: Vec<u8>,
        recipient: Vec<u8>,
    },
    /// Make recipient `index` of `local/N` or `remote/N` done: first, for a
    /// failure, append it to `bounce/N` and fsync; then overwrite its `T`
    /// with `D` and fsync; answer `Written(ticket)`.
    MarkDone {
        ticket: Ticket,
        id: MessageId,
        channel: Channel,
        index: usize,
        failure: Option<Failure>,
    },
    /// Compose and queue this bounce, remove `bounce/N`, answer
    /// `BounceInjected` (or `BounceFailed`).
    InjectBounce(BounceRequest),
    /// Remove `todo/N` and `intd/N` if there (durably: an express message
    /// whose deliveries all succeeded), then `bounce/N`, `info/N`,
    /// `local/N`, `remote/N`, and `mess/N` last; answer `Written(ticket)`.
    RemoveMessage { ticket: Ticket, id: MessageId },
    /// One line for qmail-send's log, without the newline.
    Log(String),
}

/// The caller broke the contract (an answer that matches nothing asked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Misuse {
    UnknownTicket(Ticket),
    UnknownDelivery(u64),
    UnknownBounce(MessageId),
    /// `NewMessage`/`Recovered` for an id the machine already holds.
    DuplicateMessage(MessageId),
}

impl std::fmt::Display for Misuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Misuse::UnknownTicket(t) => write!(f, "no write with ticket {}", t.0),
            Misuse::UnknownDelivery(d) => write!(f, "no delivery {d} in progress"),
            Misuse::UnknownBounce(id) => write!(f, "no bounce asked for msg {id}"),
            Misuse::DuplicateMessage(id) => write!(f, "msg {id} is already known"),
        }
    }
}

impl std::error::Error for Misuse {}

/// What qmail appends to a deferral once the message is too old.
pub const DYING_TEXT: &str =
    "I'm not going to try again; this message has been in the queue too long.\n";

/// How long to wait before asking again for a failed write or bounce.
pub const RETRY_WRITE_SECS: u64 = 60;
