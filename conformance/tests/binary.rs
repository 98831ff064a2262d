//! The whole trace corpus against the `sqmail` binary: as a daemon over
//! loopback TCP (`sqmail smtpd --listen`) and as a ucspi child on
//! stdin/stdout, each whole and one byte per write. Skips, saying so, when
//! the binary is not built (`$SQMAIL_BIN`, or `sqmail` beside the tests).

use sqmail_conformance::{run_corpus, smtp_corpus_dir, trace, wire, Target};

fn check(target: Target) {
    let Some(bin) = wire::find_binary() else {
        eprintln!(
            "SKIPPED: no sqmail binary (set SQMAIL_BIN or build bins/ into this target dir); \
             the {} conformance run did not happen",
            target.name()
        );
        return;
    };
    let traces = trace::load_dir(&smtp_corpus_dir()).unwrap_or_else(|e| panic!("{e}"));
    let report = run_corpus(&traces, target, Some(&bin));
    for s in &report.skipped {
        eprintln!("skipped: {s}");
    }
    for k in &report.known {
        eprintln!("{k}");
    }
    assert!(
        report.problems.is_empty(),
        "{} runs went wrong against {}:\n{}",
        report.problems.len(),
        bin.display(),
        report.problems.join("\n")
    );
    assert!(
        report.passed > traces.len(),
        "too few runs passed: {}",
        report.passed
    );
}

#[test]
fn corpus_over_a_socket() {
    check(Target::Socket);
}

#[test]
fn corpus_as_a_ucspi_child() {
    check(Target::Ucspi);
}
