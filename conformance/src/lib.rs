//! RFC trace corpus and its runner, interop tests.
//!
//! `traces/smtp/*.trace` are dialog scripts (see [`trace`] for the format)
//! that pin what RFC 5321 and its extensions, and the SMTP smuggling CVEs,
//! require of our server. [`run_trace`] plays one against a [`Target`]:
//! the bare machine in memory, or the `sqmail` binary over a socket or as
//! a ucspi child; every trace also runs with its input one byte per write.
//!
//! `traces/smtp-client/*.trace` turn the roles round: a scripted server,
//! what our SMTP client must say to it and the qmail-remote reports it
//! must give ([`client`]), run against the bare client machine.
//!
//! `traces/delivery/*.trace` go on past the dialog: what the bare machine
//! queued is put into a real queue and delivered by the scheduler and
//! local delivery on a virtual clock ([`delivery`]), with checks on the
//! Maildirs, the bounces and qmail-send's log.

pub mod client;
pub mod delivery;
pub mod machine;
pub mod peers;
pub mod run;
pub mod trace;
pub mod wire;

use std::path::{Path, PathBuf};

pub use run::Failure;
pub use trace::{Corpus, Target, Trace, TraceError};

/// What became of one run.
#[derive(Debug)]
pub enum Outcome {
    Pass,
    Fail(Failure),
    /// The trace cannot be expressed on this target.
    Skip(String),
}

/// `conformance/traces/smtp`.
pub fn smtp_corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("traces")
        .join("smtp")
}

/// `conformance/traces/delivery`.
pub fn delivery_corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("traces")
        .join("delivery")
}

/// Runs `trace` on `target`; `bin` is the `sqmail` binary, needed for
/// every target but [`Target::Machine`]. A delivery trace runs on the
/// bare machine only, followed by a real queue ([`delivery::run`]).
pub fn run_trace(trace: &Trace, target: Target, bytewise: bool, bin: Option<&Path>) -> Outcome {
    if trace.corpus == Corpus::Delivery {
        return match target {
            Target::Machine => delivery::run(trace, bytewise),
            _ => Outcome::Skip("delivery traces run on the bare machine and a real queue".into()),
        };
    }
    if let Some(why) = trace.setup.unsupported_on(target) {
        return Outcome::Skip(why);
    }
    let setup_failure = |message: String| {
        Outcome::Fail(Failure {
            trace: trace.path.display().to_string(),
            line: 0,
            message,
            transcript: Vec::new(),
        })
    };
    let with_log = |result: Result<(), Failure>, log: String| match result {
        Ok(()) => Outcome::Pass,
        Err(mut f) => {
            if !log.trim().is_empty() {
                f.message
                    .push_str(&format!("\n    server log: {}", log.trim()));
            }
            Outcome::Fail(f)
        }
    };
    match (target, bin) {
        (Target::Machine, _) => match machine::MachinePeer::new(&trace.setup) {
            Ok(mut peer) => with_log(run::run(trace, &mut peer, bytewise), String::new()),
            Err(e) => setup_failure(e),
        },
        (_, None) => Outcome::Skip("no sqmail binary".into()),
        (Target::Socket, Some(bin)) => match wire::SocketPeer::start(bin, &trace.setup) {
            Ok(mut peer) => {
                let result = run::run(trace, &mut peer, bytewise);
                let log = peer.log();
                with_log(result, log)
            }
            Err(e) => setup_failure(e),
        },
        (Target::Ucspi, Some(bin)) => match wire::UcspiPeer::start(bin, &trace.setup) {
            Ok(mut peer) => {
                let result = run::run(trace, &mut peer, bytewise);
                let log = peer.log();
                with_log(result, log)
            }
            Err(e) => setup_failure(e),
        },
    }
}

/// Runs the whole corpus on `target`, whole and byte-split, and returns a
/// report of what did not go as the traces (and their `@xfail`s) say,
/// plus the number of runs that passed and were skipped.
pub fn run_corpus(traces: &[Trace], target: Target, bin: Option<&Path>) -> Report {
    let mut report = Report::default();
    for trace in traces {
        for bytewise in [false, true] {
            let mode = if bytewise { "byte-split" } else { "whole" };
            let xfail = trace.setup.xfail(target);
            match (run_trace(trace, target, bytewise, bin), xfail) {
                (Outcome::Pass, None) => report.passed += 1,
                (Outcome::Pass, Some(why)) => report.problems.push(format!(
                    "{} [{} {mode}]: passes, but is marked @xfail ({why}); remove the mark",
                    trace.path.display(),
                    target.name()
                )),
                (Outcome::Fail(f), None) => report
                    .problems
                    .push(format!("[{} {mode}] {f}", target.name())),
                (Outcome::Fail(f), Some(why)) => report
                    .known
                    .push(format!("[{} {mode}] known ({why}): {f}", target.name())),
                (Outcome::Skip(why), _) => {
                    report
                        .skipped
                        .push(format!("{} [{}]: {why}", trace.name(), target.name()))
                }
            }
        }
    }
    report
}

#[derive(Debug, Default)]
pub struct Report {
    pub passed: usize,
    pub skipped: Vec<String>,
    /// Runs that failed as an `@xfail` says they do.
    pub known: Vec<String>,
    /// Unexpected failures and unexpected passes.
    pub problems: Vec<String>,
}

impl Report {
    /// For a target that runs every trace: each of the `traces` ran whole
    /// and byte-split, none was skipped, and each run passed or failed as
    /// its `@xfail` says (those are printed).
    pub fn assert_every_run_passed(&self, traces: usize) {
        for k in &self.known {
            eprintln!("{k}");
        }
        assert!(self.skipped.is_empty(), "{:?}", self.skipped);
        assert!(
            self.problems.is_empty(),
            "{} of {} runs went wrong:\n{}",
            self.problems.len(),
            traces * 2,
            self.problems.join("\n")
        );
        assert_eq!(self.passed + self.known.len(), traces * 2);
    }
}
