//! Scheduler tests: decisions in small scenarios, then properties against a
//! simulated host whose disk applies a write only once it is confirmed, and
//! which can crash at any step and rebuild the machine from that disk.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const T0: u64 = 1_700_000_000;

fn config() -> Config {
    let mut c = Config::new("here.example");
    c.concurrency = [2, 3];
    c.queuelifetime = 3600;
    c
}

fn drain(s: &mut Scheduler) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn logs(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Log(l) => Some(l.clone()),
            _ => None,
        })
        .collect()
}

fn new_msg(
    s: &mut Scheduler,
    now: u64,
    id: MessageId,
    sender: &str,
    rcpts: &[&str],
) -> Vec<Action> {
    s.handle(
        now,
        Input::NewMessage {
            id,
            sender: sender.into(),
            recipients: rcpts.iter().map(|r| r.as_bytes().to_vec()).collect(),
            qp: 42,
            uid: 7,
            bytes: 100,
        },
    )
    .unwrap();
    drain(s)
}

/// Confirms every write in `actions`, returning what followed.
fn confirm_all(s: &mut Scheduler, now: u64, actions: &[Action]) -> Vec<Action> {
    let mut out = vec![];
    for a in actions {
        if let Action::Preprocess { ticket, .. }
        | Action::MarkDone { ticket, .. }
        | Action::RemoveMessage { ticket, .. } = a
        {
            s.handle(now, Input::Written(*ticket)).unwrap();
            out.extend(drain(s));
        }
    }
    out
}

fn starts(actions: &[Action]) -> Vec<(u64, Channel, Vec<u8>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::StartDelivery {
                delivery,
                channel,
                recipient,
                ..
            } => Some((*delivery, *channel, recipient.clone())),
            _ => None,
        })
        .collect()
}

fn result(s: &mut Scheduler, now: u64, d: u64, outcome: Outcome, text: &str) -> Vec<Action> {
    s.handle(
        now,
        Input::DeliveryResult {
            delivery: d,
            outcome,
            report: text.into(),
        },
    )
    .unwrap();
    drain(s)
}

#[test]
fn nothing_starts_before_preprocessing_is_durable() {
    let mut s = Scheduler::new(config());
    let a = new_msg(&mut s, T0, 5, "a@b", &["joe", "x@far.example"]);
    assert!(starts(&a).is_empty());
    let Action::Preprocess { recipients, .. } = &a[0] else {
        panic!("{a:?}")
    };
    assert_eq!(recipients[0], vec![b"joe@here.example".to_vec()]);
    assert_eq!(recipients[1], vec![b"x@far.example".to_vec()]);
    let b = confirm_all(&mut s, T0, &a);
    let l = logs(&b);
    assert_eq!(l[0], "new msg 5");
    assert_eq!(l[1], "info msg 5: bytes 100 from <a@b> qp 42 uid 7");
    assert_eq!(l[2], "starting delivery 1: msg 5 to local joe@here.example");
    assert_eq!(l[3], "status: local 1/2 remote 0/3");
    assert_eq!(starts(&b).len(), 2);
}

#[test]
fn success_is_counted_only_when_the_mark_is_durable() {
    let mut s = Scheduler::new(config());
    let a = new_msg(&mut s, T0, 5, "a@b", &["joe"]);
    let b = confirm_all(&mut s, T0, &a);
    let r = result(&mut s, T0, 1, Outcome::Success, "did 0+0+1\n");
    assert_eq!(logs(&r)[0], "delivery 1: success: did_0+0+1/");
    assert!(!r.iter().any(|a| matches!(a, Action::RemoveMessage { .. })));
    let done = confirm_all(&mut s, T0, &r);
    assert!(
        matches!(done[0], Action::RemoveMessage { id: 5, .. }),
        "{done:?}"
    );
    let end = confirm_all(&mut s, T0, &done);
    assert_eq!(logs(&end), ["end msg 5"]);
    assert_eq!(s.message_count(), 0);
    let _ = b;
}

fn express_config() -> Config {
    let mut c = config();
    c.express = true;
    c
}

#[test]
fn express_delivers_before_preprocessing_and_removes_once_durable() {
    let mut s = Scheduler::new(express_config());
    let a = new_msg(&mut s, T0, 5, "a@b", &["joe", "ann@here.example"]);
    assert!(!a.iter().any(|a| matches!(a, Action::Preprocess { .. })));
    let l = logs(&a);
    assert_eq!(l[0], "new msg 5");
    assert_eq!(l[1], "info msg 5: bytes 100 from <a@b> qp 42 uid 7");
    assert_eq!(starts(&a).len(), 2);
    let r = result(&mut s, T0, 1, Outcome::Success, "did 0+0+1\n");
    assert_eq!(logs(&r), ["delivery 1: success: did_0+0+1/"]);
    // Both slots stay taken: the first success is not recorded anywhere yet.
    assert_eq!(s.in_flight(Channel::Local), 2);
    let r = result(&mut s, T0, 2, Outcome::Success, "did 0+0+1\n");
    let [Action::Log(_), Action::RemoveMessage { ticket, id: 5 }] = &r[..] else {
        panic!("{r:?}")
    };
    assert_eq!(s.in_flight(Channel::Local), 2);
    s.handle(T0, Input::Written(*ticket)).unwrap();
    assert_eq!(
        logs(&drain(&mut s)),
        ["end msg 5", "status: local 0/2 remote 0/3"]
    );
    assert_eq!(s.in_flight(Channel::Local), 0);
    assert_eq!(s.message_count(), 0);
}

#[test]
fn express_records_a_pass_with_failures_and_deferrals_in_one_preprocessing() {
    let mut s = Scheduler::new(express_config());
    let a = new_msg(&mut s, T0, 5, "a@b", &["joe", "ann@here.example"]);
    assert_eq!(starts(&a).len(), 2);
    result(&mut s, T0, 1, Outcome::Failure, "no mailbox\n");
    assert_eq!(s.in_flight(Channel::Local), 2, "the failure holds its slot");
    let r = result(&mut s, T0 + 5, 2, Outcome::Deferral, "busy\n");
    assert_eq!(s.in_flight(Channel::Local), 1, "a deferral frees its slot");
    let Some(Action::Preprocess {
        ticket,
        recipients,
        done,
        birth,
        ..
    }) = r.iter().find(|a| matches!(a, Action::Preprocess { .. }))
    else {
        panic!("{r:?}")
    };
    assert_eq!(*birth, T0);
    assert_eq!(recipients[0].len(), 2);
    assert_eq!(
        done,
        &[Mark {
            channel: Channel::Local,
            index: 0,
            failure: Some(Failure {
                recipient: b"joe@here.example".to_vec(),
                report: b"no mailbox\n".to_vec(),
            }),
        }]
    );
    s.handle(T0 + 5, Input::Written(*ticket)).unwrap();
    drain(&mut s);
    assert_eq!(s.in_flight(Channel::Local), 0);
    // From here on it is an ordinary preprocessed message: ann waits for
    // qmail's next retry, and the bounce for joe follows the last recipient.
    assert_eq!(
        s.next_retry(5, Channel::Local),
        Some(next_retry(T0, T0 + 5, Channel::Local))
    );
    s.handle(T0 + 10_000, Input::Tick).unwrap();
    let a = drain(&mut s);
    let started = starts(&a);
    assert_eq!(started.len(), 1);
    let r = result(&mut s, T0 + 10_000, started[0].0, Outcome::Success, "ok\n");
    assert!(matches!(
        r.iter().find(|a| !matches!(a, Action::Log(_))),
        Some(Action::MarkDone { index: 1, .. })
    ));
    let b = confirm_all(&mut s, T0 + 10_000, &r);
    let Some(Action::InjectBounce(bounce)) =
        b.iter().find(|a| matches!(a, Action::InjectBounce(_)))
    else {
        panic!("{b:?}")
    };
    assert_eq!(bounce.failures.len(), 1);
}

#[test]
fn express_is_only_for_new_mail_of_one_channel_that_fits_its_slots() {
    let mut s = Scheduler::new(express_config());
    // Local and remote recipients, or more local ones than
    // concurrencylocal (2): qmail's order, preprocessing first.
    let a = new_msg(&mut s, T0, 5, "a@b", &["joe", "x@far.example"]);
    assert!(matches!(a[0], Action::Preprocess { .. }), "{a:?}");
    let a = new_msg(&mut s, T0, 6, "a@b", &["joe", "ann", "joe"]);
    assert!(matches!(a[0], Action::Preprocess { .. }), "{a:?}");
    let a = new_msg(&mut s, T0, 7, "a@b", &["ann"]);
    assert!(
        !a.iter().any(|a| matches!(a, Action::Preprocess { .. })),
        "{a:?}"
    );
    // A held channel (no remote transport): preprocessed, as in qmail.
    s.set_channel_enabled(Channel::Remote, false, "test");
    let a = new_msg(&mut s, T0, 8, "a@b", &["x@far.example"]);
    assert!(
        a.iter().any(|a| matches!(a, Action::Preprocess { .. })),
        "{a:?}"
    );
}

#[test]
fn express_remote_mail_holds_remote_slots() {
    let mut s = Scheduler::new(express_config());
    let a = new_msg(&mut s, T0, 5, "a@b", &["x@far.example", "y@far.example"]);
    assert!(
        !a.iter().any(|a| matches!(a, Action::Preprocess { .. })),
        "{a:?}"
    );
    let started = starts(&a);
    assert_eq!(started.len(), 2);
    assert!(started.iter().all(|s| s.1 == Channel::Remote));
    result(&mut s, T0, started[0].0, Outcome::Success, "ok\n");
    let r = result(&mut s, T0, started[1].0, Outcome::Success, "ok\n");
    assert_eq!(s.in_flight(Channel::Remote), 2);
    let Some(Action::RemoveMessage { ticket, .. }) =
        r.iter().find(|a| matches!(a, Action::RemoveMessage { .. }))
    else {
        panic!("{r:?}")
    };
    s.handle(T0, Input::Written(*ticket)).unwrap();
    assert_eq!(s.in_flight(Channel::Remote), 0);
    assert_eq!(s.message_count(), 0);
}

#[test]
fn drain_records_what_an_express_pass_finished() {
    let mut c = express_config();
    c.concurrency = [3, 3];
    let mut s = Scheduler::new(c);
    // Two slots taken by message 4, so message 5 starts one of its two
    // recipients and waits for another slot.
    let a = new_msg(&mut s, T0, 4, "a@b", &["joe", "ann"]);
    assert_eq!(starts(&a).len(), 2);
    let b = new_msg(&mut s, T0, 5, "a@b", &["joe", "ann"]);
    assert_eq!(starts(&b).len(), 1);
    let r = result(&mut s, T0, 3, Outcome::Success, "ok\n");
    assert!(r.iter().all(|a| matches!(a, Action::Log(_))), "{r:?}");
    s.drain();
    let d = drain(&mut s);
    let Some(Action::Preprocess { id: 5, done, .. }) =
        d.iter().find(|a| !matches!(a, Action::Log(_)))
    else {
        panic!("{d:?}")
    };
    assert_eq!(done.len(), 1, "the success is recorded before exiting");
}

#[test]
fn deferral_follows_qmails_schedule() {
    let mut s = Scheduler::new(config());
    let a = new_msg(&mut s, T0, 5, "a@b", &["joe"]);
    confirm_all(&mut s, T0, &a);
    // Deferred 3 s after birth: isqrt(3) = 1, so (1 + 10)^2 = 121 s.
    result(&mut s, T0 + 3, 1, Outcome::Deferral, "busy");
    assert_eq!(s.next_retry(5, Channel::Local), Some(T0 + 121));
    assert_eq!(s.poll_timeout(), Some(T0 + 121));
    s.handle(T0 + 120, Input::Tick).unwrap();
    assert!(starts(&drain(&mut s)).is_empty());
    s.handle(T0 + 121, Input::Tick).unwrap();
    assert_eq!(starts(&drain(&mut s)).len(), 1);
    // isqrt(121) = 11, so (11 + 10)^2 = 441 s.
    result(&mut s, T0 + 121, 2, Outcome::Deferral, "busy");
    assert_eq!(s.next_retry(5, Channel::Local), Some(T0 + 441));
}

#[test]
fn retry_now_makes_waiting_messages_due() {
    let mut s = Scheduler::new(config());
    let a = new_msg(&mut s, T0, 5, "a@b", &["joe"]);
    confirm_all(&mut s, T0, &a);
    let r = result(&mut s, T0 + 3, 1, Outcome::Deferral, "busy");
    confirm_all(&mut s, T0 + 3, &r);
    assert_eq!(s.next_retry(5, Channel::Local), Some(T0 + 121));
    s.handle(T0 + 10, Input::Tick).unwrap();
    assert!(starts(&drain(&mut s)).is_empty());
    s.retry_now();
    assert_eq!(starts(&drain(&mut s)).len(), 1);
}

#[test]
fn retry_now_reaches_a_deferral_not_yet_recorded() {
    // Express: the deferral is known, its pass still being written down.
    let mut s = Scheduler::new(express_config());
    new_msg(&mut s, T0, 5, "a@b", &["joe"]);
    let r = result(&mut s, T0 + 1, 1, Outcome::Deferral, "busy\n");
    s.retry_now();
    assert_eq!(starts(&confirm_all(&mut s, T0 + 2, &r)).len(), 1);
    // Once only: the retry it caused defers on qmail's schedule.
    let r = result(&mut s, T0 + 3, 2, Outcome::Deferral, "busy\n");
    assert!(starts(&confirm_all(&mut s, T0 + 3, &r)).is_empty());
    assert_eq!(
        s.next_retry(5, Channel::Local),
        Some(next_retry(T0, T0 + 3, Channel::Local))
    );
    // A delivery still running, as in qmail: its deferral waits as usual.
    let mut s = Scheduler::new(config());
    let a = new_msg(&mut s, T0, 6, "a@b", &["joe"]);
    confirm_all(&mut s, T0, &a);
    s.retry_now();
    let r = result(&mut s, T0 + 3, 1, Outcome::Deferral, "busy\n");
    assert!(starts(&r).is_empty());
    assert_eq!(
        s.next_retry(6, Channel::Local),
        Some(next_retry(T0, T0 + 3, Channel::Local))
    );
}

#[test]
fn draining_starts_nothing_but_takes_results() {
    let mut s = Scheduler::new(config());
    let a = new_msg(&mut s, T0, 5, "a@b", &["joe", "ann", "bob"]);
    let b = confirm_all(&mut s, T0, &a);
    assert_eq!(starts(&b).len(), 2);
    s.drain();
    let r = result(&mut s, T0, 1, Outcome::Success, "ok");
    assert!(starts(&r).is_empty());
    confirm_all(&mut s, T0, &r);
    assert_eq!(s.in_flight(Channel::Local), 1);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn a_direct_delivery_is_logged_like_a_message_and_takes_a_number() {
    let mut s = Scheduler::new(config());
    s.handle(
        T0,
        Input::DeliveredDirectly(DirectDelivery {
            id: 9,
            sender: b"a@b.example".to_vec(),
            recipient: b"joe@here.example".to_vec(),
            bytes: 120,
            qp: 42,
            uid: 7,
            report: b"did_1+0+0/".to_vec(),
        }),
    )
    .unwrap();
    let r = drain(&mut s);
    // Only log lines: nothing to write, nothing held.
    assert_eq!(
        logs(&r),
        [
            "new msg 9",
            "info msg 9: bytes 120 from <a@b.example> qp 42 uid 7",
            "starting delivery 1: msg 9 to local joe@here.example",
            "delivery 1: success: did_1+0+0/",
            "end msg 9",
        ]
    );
    assert_eq!(r.len(), 5);
    // The next delivery of its own is number 2, and id 9 is free again.
    let r = new_msg(&mut s, T0, 9, "a@b.example", &["joe@here.example"]);
    let r = confirm_all(&mut s, T0, &r);
    assert_eq!(starts(&r)[0].0, 2, "{r:?}");
}

#[test]
fn new_rewriter_applies_to_new_messages() {
    let mut s = Scheduler::new(config());
    s.set_rewriter(Rewriter::new(
        &["here.example".into(), "other.example".into()],
        &[],
        VirtualDomains::default(),
        "here.example",
    ));
    let a = new_msg(&mut s, T0, 5, "a@b", &["x@other.example"]);
    let Action::Preprocess { recipients, .. } = &a[0] else {
        panic!("{a:?}")
    };
    assert_eq!(recipients[0], vec![b"x@other.example".to_vec()]);
}

fn bounce_of(actions: &[Action]) -> Option<BounceRequest> {
    actions.iter().find_map(|a| match a {
        Action::InjectBounce(b) => Some(b.clone()),
        _ => None,
    })
}

/// Runs one message to its end with every delivery failing.
fn fail_all(sender: &str, cfg: Config) -> (Scheduler, Vec<Action>) {
    let mut s = Scheduler::new(cfg);
    let a = new_msg(&mut s, T0, 9, sender, &["joe", "ann"]);
    let b = confirm_all(&mut s, T0, &a);
    let mut out = vec![];
    for (d, _, _) in starts(&b) {
        let r = result(
            &mut s,
            T0,
            d,
            Outcome::Failure,
            "No mailbox here by that name.",
        );
        out.extend(confirm_all(&mut s, T0, &r));
    }
    (s, out)
}

#[test]
fn bounce_goes_to_the_sender_after_all_recipients() {
    let (mut s, out) = fail_all("a@b", config());
    let b = bounce_of(&out).unwrap();
    assert_eq!(b.recipient, b"a@b");
    assert_eq!(b.envelope_sender, b"");
    assert!(!b.double);
    assert_eq!(b.failures.len(), 2);
    assert_eq!(b.failures[0].recipient, b"joe@here.example");
    assert!(!out
        .iter()
        .any(|a| matches!(a, Action::RemoveMessage { .. })));
    s.handle(T0, Input::BounceInjected { id: 9, qp: 77 })
        .unwrap();
    let r = drain(&mut s);
    assert_eq!(logs(&r), ["bounce msg 9 qp 77"]);
    assert!(matches!(r[1], Action::RemoveMessage { id: 9, .. }));
}

#[test]
fn failed_bounce_injection_is_retried() {
    let (mut s, _) = fail_all("a@b", config());
    s.handle(T0, Input::BounceFailed { id: 9 }).unwrap();
    drain(&mut s);
    assert_eq!(s.poll_timeout(), Some(T0 + RETRY_WRITE_SECS));
    s.handle(T0 + RETRY_WRITE_SECS, Input::Tick).unwrap();
    assert!(bounce_of(&drain(&mut s)).is_some());
}

#[test]
fn verp_sender_gets_a_return_path_per_recipient() {
    let mut s = Scheduler::new(config());
    let a = new_msg(&mut s, T0, 9, "list-@lists.example-@[]", &["joe", "x@y.z"]);
    let senders: Vec<(Vec<u8>, Vec<u8>)> = confirm_all(&mut s, T0, &a)
        .into_iter()
        .filter_map(|a| match a {
            Action::StartDelivery {
                sender, recipient, ..
            } => Some((recipient, sender)),
            _ => None,
        })
        .collect();
    assert_eq!(
        senders,
        [
            (
                b"joe@here.example".to_vec(),
                b"list-joe=here.example@lists.example".to_vec()
            ),
            (b"x@y.z".to_vec(), b"list-x=y.z@lists.example".to_vec()),
        ]
    );
    let (_, out) = fail_all("list-@lists.example-@[]", config());
    assert_eq!(bounce_of(&out).unwrap().recipient, b"list-@lists.example");
}

#[test]
fn return_path_is_qmails_senderadd() {
    let rp = |s: &str, r: &str| {
        String::from_utf8(machine::return_path(s.as_bytes(), r.as_bytes())).unwrap()
    };
    assert_eq!(rp("o-@h-@[]", "b@r"), "o-b=r@h");
    assert_eq!(rp("o-@h-@[]", "a@b@r"), "o-a@b=r@h");
    // Not VERP: no '@' before the mark, no '@' in the recipient, or no mark.
    assert_eq!(rp("o-@[]", "b@r"), "o-@[]");
    assert_eq!(rp("o-@h-@[]", "box"), "o-@h-@[]");
    assert_eq!(rp("a@b", "b@r"), "a@b");
    assert_eq!(rp("", "b@r"), "");
    assert_eq!(rp("#@[]", "b@r"), "#@[]");
}

#[test]
fn double_and_triple_bounces() {
    let (_, out) = fail_all("", config());
    let b = bounce_of(&out).unwrap();
    assert!(b.double);
    assert_eq!(b.recipient, b"postmaster@here.example");
    assert_eq!(b.envelope_sender, b"#@[]");

    let (_, out) = fail_all("#@[]", config());
    assert!(bounce_of(&out).is_none());
    assert!(logs(&out).contains(&"triple bounce: discarding bounce/9".to_string()));
    assert!(out
        .iter()
        .any(|a| matches!(a, Action::RemoveMessage { id: 9, .. })));

    let mut cfg = config();
    cfg.doublebounceto.clear();
    let (_, out) = fail_all("", cfg);
    assert!(bounce_of(&out).is_none());
    assert!(logs(&out).contains(&"double bounce: discarding bounce/9".to_string()));
}

#[test]
fn deferral_past_queuelifetime_is_a_failure() {
    let mut s = Scheduler::new(config());
    let a = new_msg(&mut s, T0, 5, "a@b", &["joe"]);
    confirm_all(&mut s, T0, &a);
    let mut now = T0;
    let mut d = 1;
    loop {
        let r = result(&mut s, now, d, Outcome::Deferral, "busy\n");
        if let Some(b) = bounce_of(&confirm_all(&mut s, now, &r)) {
            assert_eq!(
                b.failures[0].report,
                format!("busy\n{DYING_TEXT}").into_bytes()
            );
            assert!(logs(&r)[0].starts_with("delivery "));
            assert!(logs(&r)[0].contains(": failure: busy/I'm_not_going_to_try_again;"));
            // qmail: the first pass after birth + lifetime.
            assert!(now > T0 + 3600 && now <= next_retry(T0, T0 + 3600, Channel::Local));
            break;
        }
        now = s.poll_timeout().unwrap();
        s.handle(now, Input::Tick).unwrap();
        d = starts(&drain(&mut s))[0].0;
    }
}

#[test]
fn held_channel_keeps_remote_recipients_queued() {
    let mut s = Scheduler::new(config());
    s.set_channel_enabled(
        Channel::Remote,
        false,
        "remote delivery is not available yet",
    );
    assert_eq!(
        logs(&drain(&mut s)),
        ["warning: remote deliveries held: remote delivery is not available yet"]
    );
    let a = new_msg(&mut s, T0, 5, "a@b", &["x@far.example"]);
    let b = confirm_all(&mut s, T0, &a);
    assert!(starts(&b).is_empty());
    assert_eq!(s.poll_timeout(), None);
    s.handle(T0 + 10 * 3600, Input::Tick).unwrap();
    assert!(starts(&drain(&mut s)).is_empty());
    s.set_channel_enabled(Channel::Remote, true, "");
    assert_eq!(starts(&drain(&mut s)).len(), 1);
}

#[test]
fn misuse_is_an_error() {
    let mut s = Scheduler::new(config());
    assert_eq!(
        s.handle(T0, Input::Written(Ticket(99))),
        Err(Misuse::UnknownTicket(Ticket(99)))
    );
    assert!(s
        .handle(
            T0,
            Input::DeliveryResult {
                delivery: 3,
                outcome: Outcome::Success,
                report: vec![]
            }
        )
        .is_err());
    assert!(s
        .handle(T0, Input::BounceInjected { id: 1, qp: 1 })
        .is_err());
}

// ---------------------------------------------------------------------------
// The simulated host.

#[derive(Clone, Debug)]
struct DiskMsg {
    sender: Vec<u8>,
    birth: u64,
    rcpts: [Vec<(Vec<u8>, bool)>; 2],
    bounces: Vec<(Vec<u8>, Vec<u8>)>,
}

#[derive(Clone, Debug, Default)]
struct Disk {
    todo: BTreeMap<MessageId, (Vec<u8>, Vec<Vec<u8>>)>,
    msgs: BTreeMap<MessageId, DiskMsg>,
}

struct Host {
    cfg: Config,
    s: Scheduler,
    disk: Disk,
    now: u64,
    /// Writes asked for and not applied yet.
    writes: Vec<Action>,
    /// Writes that failed and that the machine has not asked for again.
    failed: Vec<Action>,
    bounces: Vec<BounceRequest>,
    deliveries: Vec<(u64, MessageId, Channel, Vec<u8>)>,
    /// Express results (a message still only in `todo/`) whose slots wait
    /// for the write that records the pass.
    held: Vec<(MessageId, Channel)>,
    /// The express delivery whose result is being handed in.
    finishing: Option<(u64, MessageId, Channel)>,
    /// Bounces queued, and successful deliveries made (the world's view).
    injected: Vec<BounceRequest>,
    delivered: Vec<(MessageId, Channel, Vec<u8>)>,
    /// Recipients made done after birth + queuelifetime + one retry
    /// interval: (message, deadline, time).
    late: Vec<(MessageId, u64, u64)>,
    next_id: MessageId,
}

impl Host {
    fn new(cfg: Config) -> Self {
        Host {
            s: Scheduler::new(cfg.clone()),
            cfg,
            disk: Disk::default(),
            now: T0,
            writes: vec![],
            failed: vec![],
            bounces: vec![],
            deliveries: vec![],
            held: vec![],
            finishing: None,
            injected: vec![],
            delivered: vec![],
            late: vec![],
            next_id: 1,
        }
    }

    fn handle(&mut self, input: Input) {
        self.s.handle(self.now, input).unwrap();
        self.collect();
    }

    fn collect(&mut self) {
        while let Some(a) = self.s.poll_action() {
            self.route(a);
        }
        self.check_counts();
    }

    /// A slot is taken from the start of a delivery until its result is
    /// a deferral or its done mark (or, express, its pass's record) is
    /// durable.
    fn check_counts(&self) {
        for c in Channel::ALL {
            let running = self.deliveries.iter().filter(|d| d.2 == c).count();
            let held = self.held.iter().filter(|h| h.1 == c).count();
            let marking = self
                .writes
                .iter()
                .chain(&self.failed)
                .filter(|w| matches!(w, Action::MarkDone { channel, .. } if *channel == c))
                .count();
            assert_eq!(running + marking + held, self.s.in_flight(c));
            assert!(self.s.in_flight(c) <= self.cfg.concurrency[c as usize]);
        }
    }

    fn inject(&mut self, rcpts: Vec<Vec<u8>>, sender: Vec<u8>) {
        let id = self.next_id;
        self.next_id += 1;
        self.disk.todo.insert(id, (sender.clone(), rcpts.clone()));
        self.handle(Input::NewMessage {
            id,
            sender,
            recipients: rcpts,
            qp: 1,
            uid: 0,
            bytes: 10,
        });
    }

    /// Makes a write durable (without telling the machine).
    fn apply(&mut self, w: &Action) {
        match w {
            Action::Preprocess {
                id,
                sender,
                birth,
                recipients,
                done,
                ..
            } => {
                self.disk.todo.remove(id);
                let mut rcpts = recipients
                    .clone()
                    .map(|l| l.into_iter().map(|a| (a, false)).collect::<Vec<_>>());
                for mark in done {
                    rcpts[mark.channel as usize][mark.index].1 = true;
                }
                let bounces = done
                    .iter()
                    .filter_map(|m| m.failure.as_ref())
                    .map(|f| (f.recipient.clone(), f.report.clone()))
                    .collect();
                self.disk.msgs.insert(
                    *id,
                    DiskMsg {
                        sender: sender.clone(),
                        birth: *birth,
                        rcpts,
                        bounces,
                    },
                );
            }
            Action::MarkDone {
                id,
                channel,
                index,
                failure,
                ..
            } => {
                let m = self.disk.msgs.get_mut(id).unwrap();
                let deadline = next_retry(m.birth, m.birth + self.cfg.queuelifetime, *channel);
                if self.now > deadline {
                    self.late.push((*id, deadline, self.now));
                }
                if let Some(f) = failure {
                    m.bounces.push((f.recipient.clone(), f.report.clone()));
                }
                m.rcpts[*channel as usize][*index].1 = true;
            }
            Action::RemoveMessage { id, .. } => {
                self.disk.todo.remove(id);
                self.disk.msgs.remove(id);
            }
            _ => {}
        }
    }

    fn confirm_write(&mut self, k: usize) {
        if self.writes.is_empty() {
            return;
        }
        let w = self.writes.remove(k % self.writes.len());
        self.apply(&w);
        if let Action::Preprocess { id, .. } | Action::RemoveMessage { id, .. } = &w {
            self.held.retain(|h| h.0 != *id);
        }
        let ticket = ticket_of(&w);
        self.handle(Input::Written(ticket));
    }

    fn fail_write(&mut self, k: usize) {
        if self.writes.is_empty() {
            return;
        }
        let w = self.writes.remove(k % self.writes.len());
        let ticket = ticket_of(&w);
        self.failed.push(w);
        self.handle(Input::WriteFailed(ticket));
    }

    fn finish(&mut self, k: usize, outcome: Outcome) {
        if self.deliveries.is_empty() {
            return;
        }
        let (d, id, c, r) = self.deliveries.remove(k % self.deliveries.len());
        if outcome == Outcome::Success {
            self.delivered.push((id, c, r));
        }
        // Only an express delivery runs while its message is in todo/; its
        // slot stays taken unless the machine logs a deferral (a deferral
        // may be logged as a failure: a message that waited for a slot
        // past queuelifetime).
        self.finishing = self.disk.todo.contains_key(&id).then_some((d, id, c));
        self.handle(Input::DeliveryResult {
            delivery: d,
            outcome,
            report: b"report\n".to_vec(),
        });
        self.finishing = None;
    }

    fn bounce(&mut self, k: usize, ok: bool) {
        if self.bounces.is_empty() {
            return;
        }
        let b = self.bounces.remove(k % self.bounces.len());
        let id = b.id;
        if ok {
            self.inject_bounce(b);
            self.handle(Input::BounceInjected { id, qp: 2 });
        } else {
            self.handle(Input::BounceFailed { id });
        }
    }

    /// The bounce is queued and `bounce/N` removed, durably.
    fn inject_bounce(&mut self, b: BounceRequest) {
        if let Some(m) = self.disk.msgs.get_mut(&b.id) {
            m.bounces.clear();
        }
        self.injected.push(b);
    }

    /// Moves the clock to `to`, waking the machine at each of its timeouts.
    fn advance(&mut self, to: u64) {
        while let Some(t) = self.s.poll_timeout() {
            if t > to {
                break;
            }
            self.now = self.now.max(t);
            self.handle(Input::Tick);
            // A timeout never stays in the past: no busy loop for the host.
            assert!(self.s.poll_timeout().is_none_or(|n| n > self.now));
        }
        self.now = self.now.max(to);
        self.handle(Input::Tick);
    }

    /// Crashes: each unconfirmed write or bounce happened or not, per `mask`;
    /// everything in flight is forgotten; the machine is rebuilt from disk.
    fn crash(&mut self, mask: u64) {
        let writes = std::mem::take(&mut self.writes);
        for (i, w) in writes.iter().enumerate() {
            if mask >> (i % 64) & 1 == 1 {
                self.apply(w);
            }
        }
        for (i, b) in std::mem::take(&mut self.bounces).into_iter().enumerate() {
            if mask >> ((i + 17) % 64) & 1 == 1 {
                self.inject_bounce(b);
            }
        }
        self.deliveries.clear();
        self.held.clear();
        self.failed.clear();
        // (4) the same disk gives the same decisions.
        let (s, a1) = rebuild(&self.cfg, &self.disk, self.now);
        let (_, a2) = rebuild(&self.cfg, &self.disk, self.now);
        assert_eq!(a1, a2);
        self.s = s;
        for a in a1 {
            self.route(a);
        }
        self.check_counts();
    }

    /// Takes one action, checking the properties that hold when it is asked.
    fn route(&mut self, a: Action) {
        match a {
            Action::StartDelivery {
                delivery,
                id,
                channel,
                recipient,
                ..
            } => {
                // (1) never again once durably done (an express message
                // is still only in todo/: nothing of it is done).
                match self.disk.msgs.get(&id) {
                    Some(m) => assert!(
                        m.rcpts[channel as usize]
                            .iter()
                            .any(|(a, d)| *a == recipient && !d),
                        "durably done {recipient:?} started again"
                    ),
                    None => assert!(self.disk.todo.contains_key(&id), "msg {id} is nowhere"),
                }
                self.deliveries.push((delivery, id, channel, recipient));
                // (3) concurrency limits.
                for c in Channel::ALL {
                    let n = self.deliveries.iter().filter(|d| d.2 == c).count();
                    assert!(n <= self.cfg.concurrency[c as usize]);
                    assert!(n <= self.s.in_flight(c));
                }
            }
            Action::RemoveMessage { id, .. } if !self.disk.msgs.contains_key(&id) => {
                // (5), express: every recipient delivered in its one pass.
                let (_, rcpts) = &self.disk.todo[&id];
                let held = self.held.iter().filter(|h| h.0 == id).count();
                assert_eq!(held, rcpts.len(), "msg {id} removed with recipients left");
                self.writes.push(a);
            }
            Action::RemoveMessage { id, .. } => {
                // (5) removed only when every recipient is durably done and
                // the bounce, if any, was queued or deliberately discarded.
                let m = &self.disk.msgs[&id];
                assert!(m.rcpts.iter().flatten().all(|(_, d)| *d), "{m:?}");
                assert!(
                    m.bounces.is_empty() || m.sender == b"#@[]" || m.sender.is_empty(),
                    "{m:?}"
                );
                self.writes.push(a);
            }
            Action::InjectBounce(b) => {
                let m = &self.disk.msgs[&b.id];
                assert!(m.rcpts.iter().flatten().all(|(_, d)| *d), "{m:?}");
                self.bounces.push(b);
            }
            Action::Log(line) => {
                // An express result that keeps its slot (see `finish`).
                if let Some((d, id, c)) = self.finishing {
                    let kind = line.strip_prefix(&format!("delivery {d}: "));
                    if kind.is_some_and(|k| !k.starts_with("deferral")) {
                        self.held.push((id, c));
                    }
                }
            }
            w => {
                let ticket = ticket_of(&w);
                self.failed.retain(|f| ticket_of(f) != ticket);
                self.writes.push(w)
            }
        }
    }
}

fn ticket_of(w: &Action) -> Ticket {
    match w {
        Action::Preprocess { ticket, .. }
        | Action::MarkDone { ticket, .. }
        | Action::RemoveMessage { ticket, .. } => *ticket,
        _ => Ticket(0),
    }
}

/// A fresh machine fed what is on disk, as `sqmail send` does at start.
fn rebuild(cfg: &Config, disk: &Disk, now: u64) -> (Scheduler, Vec<Action>) {
    let mut s = Scheduler::new(cfg.clone());
    for (&id, m) in &disk.msgs {
        s.handle(
            now,
            Input::Recovered(OnDisk {
                id,
                sender: m.sender.clone(),
                birth: m.birth,
                recipients: m.rcpts.clone(),
                bounces: m.bounces.clone(),
                next_retry: [None, None],
            }),
        )
        .unwrap();
    }
    for (&id, (sender, rcpts)) in &disk.todo {
        s.handle(
            now,
            Input::NewMessage {
                id,
                sender: sender.clone(),
                recipients: rcpts.clone(),
                qp: 1,
                uid: 0,
                bytes: 10,
            },
        )
        .unwrap();
    }
    let actions = drain(&mut s);
    (s, actions)
}

// ---------------------------------------------------------------------------
// Properties.

#[derive(Clone, Debug)]
enum Op {
    Inject(Vec<u8>, Vec<usize>),
    Confirm(usize),
    FailWrite(usize),
    Finish(usize, u8),
    Bounce(usize, bool),
    Advance(u64),
    Crash(u64),
}

const ADDRS: [&str; 6] = [
    "joe",
    "ann@here.example",
    "x@far.example",
    "y@other.example",
    "v@virt.example",
    "joe",
];
const SENDERS: [&str; 3] = ["a@b", "", "#@[]"];

fn sim_config(express: bool) -> Config {
    let mut c = config();
    c.express = express;
    c.rewriter = Rewriter::new(
        &["here.example".into()],
        &[],
        VirtualDomains::parse("virtualdomains", b"virt.example:v\n").unwrap(),
        "here.example",
    );
    c
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..3usize, proptest::collection::vec(0..ADDRS.len(), 0..4))
            .prop_map(|(s, r)| Op::Inject(SENDERS[s].as_bytes().to_vec(), r)),
        4 => any::<usize>().prop_map(Op::Confirm),
        1 => any::<usize>().prop_map(Op::FailWrite),
        4 => (any::<usize>(), 0..3u8).prop_map(|(k, o)| Op::Finish(k, o)),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(k, ok)| Op::Bounce(k, ok)),
        2 => (0..2000u64).prop_map(Op::Advance),
        1 => any::<u64>().prop_map(Op::Crash),
    ]
}

fn outcome(o: u8) -> Outcome {
    match o {
        0 => Outcome::Success,
        1 => Outcome::Deferral,
        _ => Outcome::Failure,
    }
}

impl Host {
    fn step(&mut self, op: &Op) {
        match op {
            Op::Inject(sender, r) => {
                let rcpts = r.iter().map(|&i| ADDRS[i].as_bytes().to_vec()).collect();
                self.inject(rcpts, sender.clone());
            }
            Op::Confirm(k) => self.confirm_write(*k),
            Op::FailWrite(k) => self.fail_write(*k),
            Op::Finish(k, o) => self.finish(*k, outcome(*o)),
            Op::Bounce(k, ok) => self.bounce(*k, *ok),
            Op::Advance(d) => self.advance(self.now + d),
            Op::Crash(mask) => self.crash(*mask),
        }
    }

    /// A prompt host: answers everything at once, every delivery deferred
    /// (the slowest path), until the queue is empty.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            if !self.writes.is_empty() {
                self.confirm_write(0);
            } else if !self.deliveries.is_empty() {
                self.finish(0, Outcome::Deferral);
            } else if !self.bounces.is_empty() {
                self.bounce(0, true);
            } else if let Some(t) = self.s.poll_timeout() {
                self.advance(t);
            } else {
                break;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// (1), (3), (4), (5) are checked at every step inside the host; at the
    /// end a prompt host empties the queue.
    #[test]
    fn safety_under_crashes(ops in proptest::collection::vec(op(), 0..60), express: bool) {
        let mut h = Host::new(sim_config(express));
        for op in &ops {
            h.step(op);
        }
        h.settle();
        prop_assert!(h.disk.msgs.is_empty() && h.disk.todo.is_empty(), "{:?}", h.disk);
        prop_assert_eq!(h.s.message_count(), 0);
    }

    /// (2) with a prompt host (answers at once, random outcomes, crashes at
    /// random), every message is finished by birth + queuelifetime + one
    /// retry interval.
    #[test]
    fn every_recipient_ends_in_time(
        ops in proptest::collection::vec((op(), 0..3u8, any::<bool>()), 0..60),
        express: bool,
    ) {
        let mut h = Host::new(sim_config(express));
        for (op, o, ok) in &ops {
            let answer = |h: &mut Host| loop {
                if !h.writes.is_empty() {
                    h.confirm_write(0);
                } else if !h.deliveries.is_empty() {
                    h.finish(0, outcome(*o));
                } else if !h.bounces.is_empty() {
                    h.bounce(0, *ok);
                } else {
                    break;
                }
            };
            match op {
                Op::Inject(..) | Op::Crash(_) => h.step(op),
                Op::Advance(d) => {
                    // Wake at each timeout and answer at once.
                    let to = h.now + d;
                    loop {
                        answer(&mut h);
                        match h.s.poll_timeout() {
                            Some(t) if t <= to => {
                                h.now = h.now.max(t);
                                h.handle(Input::Tick);
                            }
                            _ => break,
                        }
                    }
                    h.now = to;
                    h.handle(Input::Tick);
                }
                _ => {}
            }
            answer(&mut h);
        }
        h.settle();
        prop_assert!(h.disk.msgs.is_empty());
        prop_assert!(h.late.is_empty(), "{:?}", h.late);
    }
}

#[test]
fn an_id_is_reused_once_its_message_is_gone() {
    // Ids are inodes: the file system hands a removed mess/N's number out
    // again, and the new message must be delivered like any other.
    let mut s = Scheduler::new(config());
    for round in 0..3 {
        let a = new_msg(&mut s, T0 + round, 5, "a@b", &["joe"]);
        let b = confirm_all(&mut s, T0 + round, &a);
        let started = starts(&b);
        assert_eq!(started.len(), 1, "round {round}: {b:?}");
        let r = result(&mut s, T0 + round, started[0].0, Outcome::Success, "ok");
        let done = confirm_all(&mut s, T0 + round, &r);
        let end = confirm_all(&mut s, T0 + round, &done);
        assert_eq!(logs(&end), ["end msg 5"], "round {round}");
    }
}
