//! sqmail's protocol core: pure state machines and parsers.
//!
//! Nothing in this crate does I/O: no sockets, no files, no clocks, no threads.
//! Hosts (the runtimes, tests, fuzzers) feed bytes and time in and collect
//! what the machines want done. See `ARCHITECTURE.md` for the contract.

pub mod address;
pub mod assign;
pub mod bounce;
pub mod conn;
pub mod control;
pub mod dns;
pub mod dotqmail;
pub mod inject;
pub mod policy;
pub mod received;
pub mod recipients;
pub mod remote;
pub mod service;
pub mod smtp;
pub mod smtproutes;
pub mod tcprules;
pub mod tcpto;
