//! sqmail's queue: the durable qmail queue on disk, and (later) the
//! scheduler and local delivery.
//!
//! - [`store`]: qmail 1.03's queue layout and write order, made durable;
//! - [`envelope`]: qmail-queue's envelope formats;
//! - [`qq`]: qmail-queue's exit codes and their reply texts;
//! - [`external`]: running a `QMAILQUEUE` program instead;
//! - [`sink`]: one interface over both ways of queueing;
//! - [`setup`]: creating the queue tree;
//! - [`cdbmap`]: cdb files as policy lookups;
//! - [`qmail_queue_main`]: the `qmail-queue` program.

pub mod cdbmap;
pub mod envelope;
pub mod external;
pub mod local;
mod program;
pub mod qq;
pub mod scheduler;
pub mod setup;
pub mod sink;
pub mod store;
mod sys;

pub use cdbmap::CdbMap;
pub use envelope::Envelope;
pub use external::External;
pub use program::{qmail_queue_main, DEATH};
pub use qq::QqError;
pub use setup::{create_queue, QmailIds};
pub use sink::{MessageSink, Receipt, Target};
pub use store::{Incoming, Invoker, Queue};
