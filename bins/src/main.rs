//! `sqmail`: every program of the mail system in one binary. Called by a
//! qmail name (`qmail-smtpd`, `qmail-queue`, ...) through a link, it acts
//! as that program with qmail's interface, so existing run scripts work.

mod cli;
mod controls;
mod getopt;
mod home;
mod inject;
mod ipme;
mod remote;
mod runtime;
mod send;
mod sendmail;
mod setup;
mod signals;
mod smtpd;
mod store;
mod tcpto;
mod up;
mod user;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let args = cli::expand_program_name(args);
    cli::run(args)
}
