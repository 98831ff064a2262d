//! The whole trace corpus against the bare machine, whole and byte-split.

use sqmail_conformance::{run_corpus, smtp_corpus_dir, trace, Target};

#[test]
fn corpus_against_the_bare_machine() {
    let traces = trace::load_dir(&smtp_corpus_dir()).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        traces.len() >= 40,
        "the corpus shrank to {} traces",
        traces.len()
    );
    let report = run_corpus(&traces, Target::Machine, None);
    for k in &report.known {
        eprintln!("{k}");
    }
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert!(
        report.problems.is_empty(),
        "{} of {} runs went wrong:\n{}",
        report.problems.len(),
        traces.len() * 2,
        report.problems.join("\n")
    );
    assert_eq!(report.passed + report.known.len(), traces.len() * 2);
}
