//! The client trace corpus against the bare client machine, whole and
//! byte-split.

use sqmail_conformance::client;

#[test]
fn client_corpus_against_the_bare_machine() {
    let traces = client::load_dir(&client::corpus_dir()).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        traces.len() >= 10,
        "the client corpus shrank to {} traces",
        traces.len()
    );
    client::run_corpus(&traces).assert_every_run_passed(traces.len());
}

#[test]
fn a_wrong_expectation_fails() {
    let text = "# a trace that is wrong\n@mail <a@x> <b@y>\nS: 220 mx\nC: HELO me.example\n";
    let trace = client::ClientTrace::parse("wrong.trace".as_ref(), text).unwrap();
    let failure = client::run(&trace, false).unwrap_err();
    assert_eq!(failure.line, 4);
    assert!(failure.message.contains("EHLO me.example"), "{failure}");
}
