//! sqmail's queue: the durable qmail queue on disk, the scheduler, local
//! delivery, and qmail-send, which drives them.
//!
//! - [`store`]: qmail 1.03's queue layout and write order, made durable;
//! - [`spool`]: qmail-send's side of the queue: preprocessing, done marks,
//!   bounce files, removal, recovery at startup and the cleanup pass;
//! - [`scheduler`]: qmail-send's decisions as a pure machine;
//! - [`local`]: qmail-lspawn and qmail-local;
//! - [`send`]: qmail-send: the scheduler over the spool, with deliveries;
//! - `direct`: delivery before queueing, where qmail-send runs beside the
//!   server;
//! - [`envelope`]: qmail-queue's envelope formats;
//! - [`qq`]: qmail-queue's exit codes and their reply texts;
//! - [`external`]: running a `QMAILQUEUE` program instead;
//! - [`sink`]: one interface over both ways of queueing;
//! - [`setup`]: creating the queue tree;
//! - [`cdbmap`]: cdb files as policy lookups;
//! - [`qmail_queue_main`]: the `qmail-queue` program.

pub mod cdbmap;
mod direct;
pub mod envelope;
pub mod external;
mod groupsync;
pub mod local;
mod program;
pub mod qq;
pub mod scheduler;
pub mod send;
pub mod setup;
pub mod sink;
mod spare;
pub mod spool;
pub mod store;
mod sys;
pub mod tcpto;
mod wake;

pub use cdbmap::CdbMap;
pub use envelope::Envelope;
pub use external::External;
pub use program::{qmail_queue_main, DEATH};
pub use qq::QqError;
pub use setup::{create_queue, QmailIds};
pub use sink::{MessageSink, Receipt, Target};
pub use spool::Spool;
pub use store::{Incoming, Invoker, Queue};
