//! The delivery traces: SMTP in on the bare machine (whole and byte-split),
//! then a real queue, the scheduler and local delivery on a virtual clock.

use std::path::Path;

use sqmail_conformance::{delivery_corpus_dir, run_corpus, trace, Corpus, Outcome, Target, Trace};

#[test]
fn delivery_corpus() {
    let traces = trace::load_dir(&delivery_corpus_dir()).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        traces.len() >= 7,
        "the delivery corpus shrank to {} traces",
        traces.len()
    );
    assert!(traces.iter().all(|t| t.corpus == Corpus::Delivery));
    run_corpus(&traces, Target::Machine, None).assert_every_run_passed(traces.len());
}

/// One message from smith@bar.com to `rcpt`, with `checks` after it; and
/// the line the checks start on.
fn trace_with(setup: &str, rcpt: &str, checks: &str) -> (Trace, usize) {
    let head = format!(
        "# a check that must fail\n@me foo.com\n@rcpthosts foo.com\n{setup}\
         S: 220 foo.com\nC: HELO bar.com\nS: 250 foo.com\nC: MAIL FROM:<smith@bar.com>\n\
         S: 250 2.1.0\nC: RCPT TO:<{rcpt}>\nS: 250 2.1.5\nC: DATA\nS: 354\nC: Subject: x\nC:\n\
         C: body\nC: .\nS: 250 2.0.0\nC: QUIT\nS: 221 2.0.0\nS: closed\n"
    );
    let first_check = head.lines().count() + 1;
    let text = format!("{head}{checks}");
    let trace = Trace::parse(Path::new("traces/delivery/wrong.trace"), &text)
        .unwrap_or_else(|e| panic!("{e}"));
    (trace, first_check)
}

/// The line (of the trace file) that the run failed on, and why.
fn failure(trace: &Trace, bytewise: bool) -> (usize, String) {
    match sqmail_conformance::run_trace(trace, Target::Machine, bytewise, None) {
        Outcome::Fail(f) => (f.line, f.message),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn wrong_checks_fail_on_their_line() {
    // (checks, which of them fails, why)
    let cases = [
        ("T: 0\nM: joe 1\nM: joe 2\n", 2, "holds 1 message(s), not 2"),
        ("M: joe 1\nT: 0\n", 0, "holds 0 message(s), not 1"),
        ("T: 0\nM: joe 1 Delivered-To: bob@foo.com\n", 1, "contains"),
        ("T: 0\nL! delivery 1: success\n", 1, "a log line contains"),
        ("T: 0\nL: delivery 1: failure\n", 1, "no log line contains"),
        ("T: 0\nB: 1\n", 1, "0 bounce(s) in the queue, not 1"),
    ];
    for (checks, failing, why) in cases {
        let (trace, first) = trace_with("@mailbox joe\n", "joe@foo.com", checks);
        for bytewise in [false, true] {
            let (got, message) = failure(&trace, bytewise);
            assert_eq!(got, first + failing, "{checks:?}: {message}");
            assert!(message.contains(why), "{checks:?}: {message}");
        }
    }
}

#[test]
fn a_wrong_bounce_text_fails() {
    let (trace, first) = trace_with(
        "@mailbox joe\n",
        "nobody@foo.com",
        "T: 0\nB: 1 no mailbox\nB: 1 a text no bounce has\n",
    );
    let (line, message) = failure(&trace, false);
    assert_eq!(line, first + 2, "{message}");
    assert!(message.contains("the last bounce lacks"), "{message}");
    assert!(message.contains("<nobody@foo.com>:\nSorry"), "{message}");
}

#[test]
fn the_dialog_still_counts() {
    let (mut trace, _) = trace_with("@mailbox joe\n", "joe@foo.com", "T: 0\nM: joe 1\n");
    let Some(step) = trace
        .steps
        .iter_mut()
        .find(|s| matches!(&s.action, trace::Action::Reply { code: 354, .. }))
    else {
        panic!("no 354 in {trace:?}")
    };
    step.action = trace::Action::Reply {
        code: 250,
        prefix: String::new(),
    };
    let line_354 = step.line;
    let (line, message) = failure(&trace, true);
    assert_eq!(line, line_354, "{message}");
    assert!(message.contains("expected `250 `, got `354"), "{message}");
}

#[test]
fn delivery_traces_need_the_bare_machine() {
    let (trace, _) = trace_with("@mailbox joe\n", "joe@foo.com", "T: 0\n");
    let outcome =
        sqmail_conformance::run_trace(&trace, Target::Socket, false, Some(Path::new("/bin/false")));
    assert!(matches!(outcome, Outcome::Skip(_)), "{outcome:?}");
}
