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
    run_corpus(&traces, Target::Machine, None).assert_every_run_passed(traces.len());
}
