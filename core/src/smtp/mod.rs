//! SMTP (RFC 5321) as sans-IO state machines.

pub mod reply;

pub use reply::Reply;
