//! `sqmail tcpto` and `sqmail tcpok` (qmail-tcpto, qmail-tcpok): show and
//! clear qmail-remote's memory of hosts that timed out (`queue/lock/tcpto`
//! and `tcpto6`).

use std::process::ExitCode;

use sqmail_core::tcpto::describe;
use sqmail_queue::send::unix_now;
use sqmail_queue::tcpto::Tcpto;

use crate::home::Home;

/// One line per host with recent timeouts, as qmail-tcpto prints them.
pub fn show(home: &Home) -> ExitCode {
    match Tcpto::new(home.path()).list() {
        Ok(entries) => {
            let now = unix_now();
            for entry in entries {
                println!("{}", describe(&entry, now));
            }
            ExitCode::SUCCESS
        }
        Err(e) => fatal("qmail-tcpto", e),
    }
}

/// Forgets every timeout, so the next delivery tries every host at once.
pub fn clear(home: &Home) -> ExitCode {
    match Tcpto::new(home.path()).clear() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fatal("qmail-tcpok", e),
    }
}

fn fatal(program: &str, e: std::io::Error) -> ExitCode {
    eprintln!("{program}: fatal: {e}");
    ExitCode::from(111)
}
