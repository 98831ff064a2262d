//! The scheduler (`sqmail_queue::scheduler::Scheduler`) driven by a
//! simulated host, in the manner of queue/src/scheduler/tests.rs: the host's
//! disk applies a write only once it answers `Written`, and it can crash
//! (each unanswered write made durable or not) and rebuild the machine from
//! that disk with `Recovered` and `NewMessage`.
//!
//! Input: 3 config bytes (concurrency local and remote 1..=4, then bits 0-1
//! the queuelifetime, bit 2 double bounces off, bits 3-4 the outcome a
//! prompt host gives at the end, bit 5 express delivery), then ops, an opcode byte and its
//! arguments each (see `step`): a new message (id, sender, recipients from
//! small tables or raw bytes), `Written`/`WriteFailed` for an outstanding
//! write, a `DeliveryResult` for an outstanding delivery (any outcome and
//! report), `BounceInjected`/`BounceFailed` for an outstanding bounce, time
//! moving forward (waking at each `poll_timeout`), a crash, holding or
//! releasing a channel, SIGALRM's `retry_now`, a message delivered before
//! queueing (only logged). After the ops a prompt host answers everything
//! until the queue is empty.
//!
//! Invariants: no panic; `handle` never returns `Misuse` (the host answers
//! only what was asked, once); no delivery starts before its message's
//! preprocessing is durable (unless it is express: still only in `todo/`),
//! on a held channel, or for a recipient whose
//! `D` mark is durable or whose result is being marked (copies of one
//! address counted); in flight never exceeds a channel's concurrency and
//! matches the host's count, a slot being held from the start until a
//! deferral or until the `D` mark is durable (README "Done marks are
//! durable"), or for an express result until the write recording its pass
//! is; an express result asks for no `MarkDone`, and an express message is
//! removed only when each of its recipients has a held success; a
//! `MarkDone` names a recipient not yet done;
//! a bounce is asked for only when every recipient is durably done, and
//! reports exactly the failures on disk; a message is removed only when
//! every recipient is durably done and its bounce went (or was discarded:
//! `#@[]`, or `<>` with double bounces off); `poll_timeout` is never in the
//! past after `handle`; log lines have no LF; a prompt host empties the
//! queue and the disk.

#![no_main]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use libfuzzer_sys::fuzz_target;
use sqmail_queue::scheduler::{
    Action, BounceRequest, Channel, Config, DirectDelivery, Input, MessageId, OnDisk, Outcome,
    Rewriter, Scheduler, Ticket, VirtualDomains,
};

const T0: u64 = 1_700_000_000;

const ADDRS: [&[u8]; 8] = [
    b"joe",
    b"ann@here.example",
    b"x@far.example",
    b"y@other.example",
    b"v@virt.example",
    b"joe",
    b"u%w@far.example@relay.example",
    b"JOE@Here.Example",
];
const SENDERS: [&[u8]; 4] = [b"a@b", b"", b"#@[]", b"list-@b.example-@[]"];
const LIFETIMES: [u64; 4] = [0, 1000, 3600, 604_800];

/// The fuzz bytes, read front to back; zeros once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, i| acc | u64::from(self.u8()) << (8 * i))
    }
    fn raw(&mut self) -> Vec<u8> {
        let n = (self.u8() % 16) as usize;
        (0..n).map(|_| self.u8()).collect()
    }
}

#[derive(Clone, Debug)]
struct DiskMsg {
    sender: Vec<u8>,
    birth: u64,
    rcpts: [Vec<(Vec<u8>, bool)>; 2],
    bounces: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Host {
    cfg: Config,
    s: Scheduler,
    now: u64,
    enabled: [bool; 2],
    todo: BTreeMap<MessageId, (Vec<u8>, Vec<Vec<u8>>)>,
    disk: BTreeMap<MessageId, DiskMsg>,
    /// Ids the machine holds (from `NewMessage` to the removal's `Written`).
    held: BTreeSet<MessageId>,
    /// Writes asked for and not answered.
    writes: Vec<Action>,
    /// Writes answered `WriteFailed` that the machine has not asked for
    /// again yet (it does after `RETRY_WRITE_SECS`, with the same ticket).
    failed: Vec<Action>,
    bounces: Vec<BounceRequest>,
    deliveries: Vec<(u64, MessageId, Channel, Vec<u8>)>,
    /// Per (message, channel, address): deliveries started and not yet
    /// resolved (in flight, or their `D` mark not durable yet).
    busy: HashMap<(MessageId, Channel, Vec<u8>), usize>,
    /// The highest ticket the machine has asked with (reset by a crash).
    max_ticket: u64,
    /// Express results (message still only in `todo/`) whose slots wait
    /// for the write recording the pass: (message, channel, address).
    express: Vec<(MessageId, Channel, Vec<u8>)>,
    /// The express delivery whose result is being handed in.
    finishing: Option<(u64, MessageId, Channel, Vec<u8>)>,
}

fn ticket_of(w: &Action) -> Ticket {
    match w {
        Action::Preprocess { ticket, .. }
        | Action::MarkDone { ticket, .. }
        | Action::RemoveMessage { ticket, .. } => *ticket,
        other => panic!("not a write: {other:?}"),
    }
}

impl Host {
    fn new(cfg: Config) -> Self {
        Host {
            s: Scheduler::new(cfg.clone()),
            cfg,
            now: T0,
            enabled: [true, true],
            todo: BTreeMap::new(),
            disk: BTreeMap::new(),
            held: BTreeSet::new(),
            writes: vec![],
            failed: vec![],
            bounces: vec![],
            deliveries: vec![],
            busy: HashMap::new(),
            max_ticket: 0,
            express: vec![],
            finishing: None,
        }
    }

    fn handle(&mut self, input: Input) {
        let what = format!("{input:?}");
        if let Err(e) = self.s.handle(self.now, input) {
            panic!("misuse for an answer to what was asked: {e} ({what})");
        }
        self.collect();
    }

    fn collect(&mut self) {
        while let Some(a) = self.s.poll_action() {
            self.route(a);
        }
        // A slot is taken from a delivery's start until its result is a
        // deferral or its `D` mark is durable (`Written`): running
        // deliveries plus marks asked for, or failed and not asked again.
        for c in Channel::ALL {
            let running = self.deliveries.iter().filter(|d| d.2 == c).count();
            let marking = self
                .writes
                .iter()
                .chain(&self.failed)
                .filter(|w| matches!(w, Action::MarkDone { channel, .. } if *channel == c))
                .count();
            let express = self.express.iter().filter(|e| e.1 == c).count();
            let n = running + marking + express;
            assert_eq!(
                n,
                self.s.in_flight(c),
                "{c:?} in flight ({running} running, {marking} marking, {express} express)"
            );
            assert!(
                n <= self.cfg.concurrency[c as usize],
                "{c:?} over its limit"
            );
        }
        if let Some(t) = self.s.poll_timeout() {
            assert!(t > self.now, "timeout {t} not after now {}", self.now);
        }
    }

    fn route(&mut self, a: Action) {
        if let Action::Preprocess { ticket, .. }
        | Action::MarkDone { ticket, .. }
        | Action::RemoveMessage { ticket, .. } = &a
        {
            self.max_ticket = self.max_ticket.max(ticket.0);
        }
        match a {
            Action::Preprocess { id, .. } => {
                assert!(self.todo.contains_key(&id) && !self.disk.contains_key(&id));
                self.push_write(a);
            }
            Action::StartDelivery {
                delivery,
                id,
                channel,
                recipient,
                ..
            } => {
                assert!(self.enabled[channel as usize], "started on a held channel");
                let Some(m) = self.disk.get(&id) else {
                    assert!(
                        self.cfg.express && self.todo.contains_key(&id),
                        "started before preprocessing was durable"
                    );
                    *self
                        .busy
                        .entry((id, channel, recipient.clone()))
                        .or_default() += 1;
                    self.deliveries.push((delivery, id, channel, recipient));
                    return;
                };
                let copies = m.rcpts[channel as usize]
                    .iter()
                    .filter(|(r, _)| *r == recipient);
                let total = copies.clone().count();
                let done = copies.filter(|(_, d)| *d).count();
                let busy = self
                    .busy
                    .entry((id, channel, recipient.clone()))
                    .or_default();
                assert!(
                    *busy + done < total,
                    "msg {id} {channel:?} {recipient:?} started again: {total} copies, {done} durably done, {busy} busy"
                );
                *busy += 1;
                self.deliveries.push((delivery, id, channel, recipient));
            }
            Action::MarkDone {
                id, channel, index, ..
            } => {
                let m = &self.disk[&id];
                let (addr, done) = &m.rcpts[channel as usize][index];
                assert!(!done, "MarkDone for a recipient already done");
                let busy = self.busy.get(&(id, channel, addr.clone())).copied();
                assert!(busy.unwrap_or(0) > 0, "MarkDone with no delivery behind it");
                self.push_write(a);
            }
            Action::InjectBounce(b) => {
                let m = &self.disk[&b.id];
                assert!(m.rcpts.iter().flatten().all(|(_, d)| *d), "{m:?}");
                let reported: Vec<_> = b
                    .failures
                    .iter()
                    .map(|f| (f.recipient.clone(), f.report.clone()))
                    .collect();
                assert_eq!(reported, m.bounces, "the bounce is not what is on disk");
                assert!(!b.failures.is_empty());
                assert!(m.sender != b"#@[]");
                if m.sender.is_empty() {
                    assert!(b.double && b.envelope_sender == b"#@[]");
                } else {
                    // qmail's injectbounce: owner-@host-@[] (VERP) →
                    // owner-@host.
                    let to = m.sender.strip_suffix(b"-@[]").unwrap_or(&m.sender);
                    assert!(!b.double && b.recipient == to && b.envelope_sender.is_empty());
                }
                assert!(
                    self.bounces.iter().all(|o| o.id != b.id),
                    "two bounces asked"
                );
                self.bounces.push(b);
            }
            Action::RemoveMessage { id, .. } if !self.disk.contains_key(&id) => {
                let rcpts = &self.todo.get(&id).expect("removing a message nowhere").1;
                let held = self.express.iter().filter(|e| e.0 == id).count();
                assert_eq!(
                    held,
                    rcpts.len(),
                    "express msg {id} removed with recipients left"
                );
                self.push_write(a);
            }
            Action::RemoveMessage { id, .. } => {
                let m = &self.disk[&id];
                assert!(m.rcpts.iter().flatten().all(|(_, d)| *d), "{m:?}");
                let discarded = m.sender == b"#@[]"
                    || (m.sender.is_empty() && self.cfg.doublebounceto.is_empty());
                assert!(m.bounces.is_empty() || discarded, "bounce lost: {m:?}");
                self.push_write(a);
            }
            Action::Log(l) => {
                assert!(!l.contains('\n'), "{l:?}");
                // An express result keeps its slot unless it is logged as
                // a deferral (one may be logged as a failure once the
                // message waited past queuelifetime).
                if let Some((d, id, c, r)) = self.finishing.clone() {
                    let kind = l.strip_prefix(&format!("delivery {d}: "));
                    if kind.is_some_and(|k| !k.starts_with("deferral")) {
                        self.express.push((id, c, r));
                    }
                }
            }
        }
    }

    /// A write asked for, first or again after a failure (same ticket).
    fn push_write(&mut self, w: Action) {
        let t = ticket_of(&w);
        assert!(
            self.writes.iter().all(|o| ticket_of(o) != t),
            "a write asked again while outstanding"
        );
        self.failed.retain(|f| ticket_of(f) != t);
        self.writes.push(w);
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
                self.todo.remove(id);
                let mut rcpts = recipients
                    .clone()
                    .map(|l| l.into_iter().map(|a| (a, false)).collect::<Vec<_>>());
                let mut bounces = vec![];
                for mark in done {
                    let r = &mut rcpts[mark.channel as usize][mark.index];
                    assert!(!r.1, "an express pass marks {:?} twice", r.0);
                    r.1 = true;
                    self.release_express(*id, mark.channel, &r.0);
                    if let Some(f) = &mark.failure {
                        bounces.push((f.recipient.clone(), f.report.clone()));
                    }
                }
                assert!(
                    self.express.iter().all(|e| e.0 != *id),
                    "an express result left out of the pass's record"
                );
                let m = DiskMsg {
                    sender: sender.clone(),
                    birth: *birth,
                    rcpts,
                    bounces,
                };
                self.disk.insert(*id, m);
            }
            Action::MarkDone {
                id,
                channel,
                index,
                failure,
                ..
            } => {
                let m = self
                    .disk
                    .get_mut(id)
                    .expect("MarkDone for a message on disk");
                let r = &mut m.rcpts[*channel as usize][*index];
                r.1 = true;
                let b = self.busy.get_mut(&(*id, *channel, r.0.clone()));
                let b = b.expect("a durable mark with no delivery behind it");
                assert!(*b > 0, "a durable mark with no delivery behind it");
                *b -= 1;
                if let Some(f) = failure {
                    m.bounces.push((f.recipient.clone(), f.report.clone()));
                }
            }
            Action::RemoveMessage { id, .. } => {
                self.disk.remove(id);
                if self.todo.remove(id).is_some() {
                    for (_, c, r) in self.express.clone().into_iter().filter(|e| e.0 == *id) {
                        self.release_express(*id, c, &r);
                    }
                }
            }
            _ => {}
        }
    }

    /// An express result's record is durable: its delivery is resolved.
    fn release_express(&mut self, id: MessageId, c: Channel, addr: &[u8]) {
        let at = self
            .express
            .iter()
            .position(|e| e.0 == id && e.1 == c && e.2 == addr)
            .expect("a mark with no express result behind it");
        self.express.remove(at);
        let b = self.busy.get_mut(&(id, c, addr.to_vec())).expect("busy");
        assert!(*b > 0);
        *b -= 1;
    }

    fn new_message(&mut self, id: MessageId, sender: Vec<u8>, rcpts: Vec<Vec<u8>>, b: u64) {
        if self.held.contains(&id) {
            return;
        }
        self.held.insert(id);
        self.todo.insert(id, (sender.clone(), rcpts.clone()));
        self.handle(Input::NewMessage {
            id,
            sender,
            recipients: rcpts,
            qp: b as u32,
            uid: (b >> 32) as u32,
            bytes: b,
        });
    }

    fn confirm_write(&mut self, k: usize) {
        if self.writes.is_empty() {
            return;
        }
        let w = self.writes.remove(k % self.writes.len());
        self.apply(&w);
        if let Action::RemoveMessage { id, .. } = w {
            self.held.remove(&id);
        }
        self.handle(Input::Written(ticket_of(&w)));
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

    fn finish(&mut self, k: usize, outcome: Outcome, report: Vec<u8>) {
        if self.deliveries.is_empty() {
            return;
        }
        let (delivery, id, c, r) = self.deliveries.remove(k % self.deliveries.len());
        // A deferral resolves the delivery at once, unless it is turned
        // into a failure (queuelifetime passed); anything else gets a new
        // MarkDone (a fresh ticket), whose durability resolves it.
        let before = self.max_ticket;
        let express = !self.disk.contains_key(&id);
        self.finishing = express.then(|| (delivery, id, c, r.clone()));
        let held = self.express.len();
        self.handle(Input::DeliveryResult {
            delivery,
            outcome,
            report,
        });
        self.finishing = None;
        let fresh: Vec<&Action> = self
            .writes
            .iter()
            .filter(|w| matches!(w, Action::MarkDone { .. }) && ticket_of(w).0 > before)
            .collect();
        match fresh[..] {
            [] if express => {
                // Held until the pass is recorded, or a deferral.
                if self.express.len() == held {
                    assert_eq!(outcome, Outcome::Deferral, "an express result dropped");
                    let b = self.busy.get_mut(&(id, c, r)).expect("busy");
                    assert!(*b > 0);
                    *b -= 1;
                }
            }
            _ if express => panic!("a MarkDone for an express result: {fresh:?}"),
            [] => {
                assert_eq!(outcome, Outcome::Deferral, "a result with no MarkDone");
                let b = self.busy.get_mut(&(id, c, r)).expect("busy");
                assert!(*b > 0);
                *b -= 1;
            }
            [Action::MarkDone {
                id: i,
                channel,
                index,
                failure,
                ..
            }] => {
                assert_eq!((*i, *channel), (id, c));
                assert_eq!(self.disk[&id].rcpts[c as usize][*index].0, r);
                assert_eq!(failure.is_some(), outcome != Outcome::Success);
            }
            _ => panic!("more than one MarkDone for one result: {fresh:?}"),
        }
    }

    fn bounce(&mut self, k: usize, ok: bool, qp: u32) {
        if self.bounces.is_empty() {
            return;
        }
        let b = self.bounces.remove(k % self.bounces.len());
        if ok {
            if let Some(m) = self.disk.get_mut(&b.id) {
                m.bounces.clear();
            }
            self.handle(Input::BounceInjected { id: b.id, qp });
        } else {
            self.handle(Input::BounceFailed { id: b.id });
        }
    }

    /// Moves the clock to `to`, waking the machine at each of its timeouts.
    fn advance(&mut self, to: u64) {
        for _ in 0..10_000 {
            match self.s.poll_timeout() {
                Some(t) if t <= to => {
                    self.now = t;
                    self.handle(Input::Tick);
                }
                _ => break,
            }
        }
        self.now = self.now.max(to);
        self.handle(Input::Tick);
    }

    fn set_enabled(&mut self, c: Channel, on: bool) {
        self.enabled[c as usize] = on;
        self.s.set_channel_enabled(c, on, "fuzz");
        self.collect();
    }

    /// Crashes: each unanswered write or bounce happened or not, per
    /// `mask`; everything in flight is forgotten; a new machine is fed the
    /// disk.
    fn crash(&mut self, mask: u64, retry: [Option<u64>; 2]) {
        for (i, w) in std::mem::take(&mut self.writes).iter().enumerate() {
            if mask >> (i % 64) & 1 == 1 {
                self.apply(w);
            }
        }
        for (i, b) in std::mem::take(&mut self.bounces).into_iter().enumerate() {
            if mask >> ((i + 17) % 64) & 1 == 1 {
                if let Some(m) = self.disk.get_mut(&b.id) {
                    m.bounces.clear();
                }
            }
        }
        self.deliveries.clear();
        self.failed.clear();
        self.busy.clear();
        self.express.clear();
        self.max_ticket = 0;
        self.held = self.disk.keys().chain(self.todo.keys()).copied().collect();
        self.s = Scheduler::new(self.cfg.clone());
        for c in Channel::ALL {
            self.s
                .set_channel_enabled(c, self.enabled[c as usize], "fuzz");
        }
        let disk = self.disk.clone();
        for (&id, m) in &disk {
            self.handle(Input::Recovered(OnDisk {
                id,
                sender: m.sender.clone(),
                birth: m.birth,
                recipients: m.rcpts.clone(),
                bounces: m.bounces.clone(),
                next_retry: retry,
            }));
        }
        let todo = self.todo.clone();
        for (id, (sender, rcpts)) in todo {
            self.handle(Input::NewMessage {
                id,
                sender,
                recipients: rcpts,
                qp: 1,
                uid: 0,
                bytes: 10,
            });
        }
    }

    fn step(&mut self, b: &mut Bytes) {
        match b.u8() % 17 {
            0 | 1 => {
                let id = MessageId::from(b.u8() % 8);
                let sel = b.u8();
                let sender = match sel {
                    0..=239 => SENDERS[sel as usize % SENDERS.len()].to_vec(),
                    _ => b.raw(),
                };
                let n = b.u8() % 5;
                let rcpts = (0..n)
                    .map(|_| match b.u8() {
                        i @ 0..=239 => ADDRS[i as usize % ADDRS.len()].to_vec(),
                        _ => b.raw(),
                    })
                    .collect();
                self.new_message(id, sender, rcpts, u64::from(b.u16()));
            }
            2..=4 => self.confirm_write(b.u8().into()),
            5 => self.fail_write(b.u8().into()),
            6..=8 => {
                let k = b.u8();
                let outcome = match k % 3 {
                    0 => Outcome::Success,
                    1 => Outcome::Deferral,
                    _ => Outcome::Failure,
                };
                let report = if k >= 192 {
                    b.raw()
                } else {
                    b"report\n".to_vec()
                };
                self.finish((k / 3).into(), outcome, report);
            }
            9 => {
                let k = b.u8();
                self.bounce((k / 2).into(), k & 1 == 0, 77);
            }
            10 | 11 => {
                let d = u64::from(b.u16());
                let scale = [1, 60, 3600][b.u8() as usize % 3];
                self.advance(self.now + d * scale);
            }
            12 => {
                let mask = b.u64();
                let r = b.u8();
                let at = |x: u8| (r & x != 0).then(|| self.now + u64::from(r) * 60);
                let retry = [at(1), at(2)];
                self.crash(mask, retry);
            }
            13 => {
                let c = Channel::ALL[b.u8() as usize % 2];
                self.set_enabled(c, !self.enabled[c as usize]);
            }
            14 => {
                self.s.retry_now();
                self.collect();
            }
            15 => {
                // Delivered before queueing: an inode the machine does not
                // hold (its own ids are below 8), raw sender and report.
                let direct = DirectDelivery {
                    id: 8 + MessageId::from(b.u8()),
                    sender: b.raw(),
                    recipient: ADDRS[b.u8() as usize % ADDRS.len()].to_vec(),
                    bytes: u64::from(b.u16()),
                    qp: 1,
                    uid: 0,
                    report: b.raw(),
                };
                self.handle(Input::DeliveredDirectly(direct));
            }
            _ => self.handle(Input::Tick),
        }
    }

    /// A prompt host answers everything with `outcome` until nothing is
    /// left; the queue and the disk must then be empty.
    fn settle(&mut self, outcome: Outcome) {
        for c in Channel::ALL {
            self.set_enabled(c, true);
        }
        for _ in 0..1_000_000 {
            if !self.writes.is_empty() {
                self.confirm_write(0);
            } else if !self.deliveries.is_empty() {
                self.finish(0, outcome, b"settle\n".to_vec());
            } else if !self.bounces.is_empty() {
                self.bounce(0, true, 78);
            } else if let Some(t) = self.s.poll_timeout() {
                self.advance(t);
            } else {
                break;
            }
        }
        assert_eq!(self.s.message_count(), 0, "messages left: {:?}", self.disk);
        assert!(
            self.disk.is_empty() && self.todo.is_empty(),
            "{:?}",
            self.disk
        );
        assert!(self.busy.values().all(|&b| b == 0));
    }
}

fn config(b: &mut Bytes) -> (Config, Outcome) {
    let mut c = Config::new("here.example");
    c.concurrency = [1 + (b.u8() % 4) as usize, 1 + (b.u8() % 4) as usize];
    let bits = b.u8();
    c.queuelifetime = LIFETIMES[(bits & 3) as usize];
    if bits & 4 != 0 {
        c.doublebounceto.clear();
    }
    c.express = bits & 32 != 0;
    c.rewriter = Rewriter::new(
        &["here.example".into()],
        &["relay.example".into()],
        VirtualDomains::parse("virtualdomains", b"virt.example:v\nfar.example:\n").unwrap(),
        "here.example",
    );
    // Deferring everything takes a pass per retry until queuelifetime:
    // only with the short lifetimes, to keep runs fast.
    let settle = match (bits >> 3) & 3 {
        1 => Outcome::Failure,
        2 if c.queuelifetime <= 3600 => Outcome::Deferral,
        _ => Outcome::Success,
    };
    (c, settle)
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let (cfg, settle) = config(&mut b);
    let mut h = Host::new(cfg);
    while !b.0.is_empty() {
        h.step(&mut b);
    }
    h.settle(settle);
});
