//! SMTP (RFC 5321) as sans-IO state machines.

pub mod client;
pub mod command;
pub mod data;
pub mod host;
pub mod reception;
pub mod reply;
pub mod server;
pub mod session;

pub use reply::Reply;
pub use server::{Config, Event, Misuse, Request, Server, Ticket, Verdict};
