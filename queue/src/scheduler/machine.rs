//! The scheduler's state and transitions.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use super::retry::next_retry;
use super::{
    log, Action, BounceRequest, Channel, Config, Failure, Input, Mark, MessageId, Misuse, OnDisk,
    Outcome, Ticket, DYING_TEXT, RETRY_WRITE_SECS,
};

const DOUBLE_BOUNCE_SENDER: &[u8] = b"#@[]";
/// The end of a VERP sender, `owner-@host-@[]`.
const VERP_MARK: &[u8] = b"-@[]";

/// qmail-send's `senderadd`: a VERP sender `owner-@host-@[]` delivers to
/// `box@rhost` with the return path `owner-box=rhost@host`; any other
/// sender (or a recipient without `@`) is used as it is.
pub(crate) fn return_path(sender: &[u8], recipient: &[u8]) -> Vec<u8> {
    let verp = sender.strip_suffix(VERP_MARK).and_then(|s| {
        let at = s.iter().rposition(|&b| b == b'@')?;
        let rat = recipient.iter().rposition(|&b| b == b'@')?;
        Some((
            &s[..at],
            &s[at + 1..],
            &recipient[..rat],
            &recipient[rat + 1..],
        ))
    });
    match verp {
        Some((owner, host, rbox, rhost)) => [owner, rbox, b"=", rhost, b"@", host].concat(),
        None => sender.to_vec(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RState {
    Todo,
    InFlight,
    /// The result is known; its `D` mark is being made durable.
    Marking,
    Done,
}

#[derive(Debug)]
struct Rcpt {
    addr: Vec<u8>,
    state: RState,
}

/// One channel of one message: qmail's "job" while a pass is open.
#[derive(Debug, Default)]
struct Chan {
    /// A pass is open: its recipients are being tried.
    in_pass: bool,
    /// Recipients of the open pass not started yet.
    pass: VecDeque<usize>,
    /// Recipients in flight or being marked.
    busy: usize,
    /// The pass began after birth + queuelifetime: deferrals become failures.
    dying: bool,
    /// When the next pass is due, while waiting for it.
    retry_at: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Preprocessing,
    Active,
    Bouncing,
    Removing,
}

#[derive(Debug)]
struct Message {
    sender: Vec<u8>,
    birth: u64,
    /// `(bytes, qp, uid)` for the `info msg` line, until it is logged.
    info: Option<(u64, u32, u32)>,
    rcpts: [Vec<Rcpt>; 2],
    chans: [Chan; 2],
    bounces: Vec<Failure>,
    phase: Phase,
    /// Not preprocessed: `todo/N` is its record ([`Config::express`]).
    express: bool,
    /// The express pass's successes and failures, holding their slots
    /// until the write that records the pass is durable.
    held: Vec<Mark>,
}

/// qmail-send as a pure machine. See the module docs for the loop.
#[derive(Debug)]
pub struct Scheduler {
    config: Config,
    enabled: [bool; 2],
    /// Shutting down: no new deliveries ([`Scheduler::drain`]).
    draining: bool,
    now: u64,
    messages: BTreeMap<MessageId, Message>,
    /// Per channel, `(retry_at, id)` of messages waiting for their next pass.
    waiting: [BTreeSet<(u64, MessageId)>; 2],
    /// Per channel, messages whose open pass still has recipients to start.
    jobs: [VecDeque<MessageId>; 2],
    in_flight: [usize; 2],
    deliveries: HashMap<u64, (MessageId, Channel, usize)>,
    /// Writes asked for and not yet confirmed, to ask again after a failure.
    writes: HashMap<Ticket, Action>,
    failed_writes: BTreeSet<(u64, Ticket)>,
    bounce_retry: BTreeSet<(u64, MessageId)>,
    /// Express messages whose pass was over but not yet recorded at the
    /// last SIGALRM: their deferrals are due at once when it is, as they
    /// would have been had the record been quicker than the signal.
    alarmed: HashSet<MessageId>,
    next_ticket: u64,
    next_delivery: u64,
    actions: VecDeque<Action>,
}

impl Scheduler {
    pub fn new(config: Config) -> Self {
        Scheduler {
            config,
            enabled: [true, true],
            draining: false,
            now: 0,
            messages: BTreeMap::new(),
            waiting: Default::default(),
            jobs: Default::default(),
            in_flight: [0, 0],
            deliveries: HashMap::new(),
            writes: HashMap::new(),
            failed_writes: BTreeSet::new(),
            bounce_retry: BTreeSet::new(),
            alarmed: HashSet::new(),
            next_ticket: 1,
            next_delivery: 1,
            actions: VecDeque::new(),
        }
    }

    // ---- getters ----

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Slots taken on `channel`: deliveries started and not yet answered,
    /// plus successes and failures whose `D` mark is not durable yet.
    pub fn in_flight(&self, channel: Channel) -> usize {
        self.in_flight[channel as usize]
    }

    /// Messages the machine holds (preprocessing, queued, bouncing, removing).
    pub fn message_count(&self) -> usize {
        self.messages.len()
    }

    /// When the message's next pass on `channel` is due, if it is waiting.
    /// A host may store it as the mtime of `local/N`/`remote/N` at shutdown,
    /// as qmail-send does, and pass it back in [`OnDisk::next_retry`].
    pub fn next_retry(&self, id: MessageId, channel: Channel) -> Option<u64> {
        self.messages.get(&id)?.chans[channel as usize].retry_at
    }

    /// Every message waiting for a pass: `(id, channel, due)`. A host stores
    /// these at shutdown (qmail-send writes them as mtimes).
    pub fn waiting(&self) -> impl Iterator<Item = (MessageId, Channel, u64)> + '_ {
        Channel::ALL.into_iter().flat_map(move |channel| {
            self.waiting[channel as usize]
                .iter()
                .map(move |&(at, id)| (id, channel, at))
        })
    }

    /// Whether deliveries on `channel` may start.
    pub fn channel_enabled(&self, channel: Channel) -> bool {
        self.enabled[channel as usize]
    }

    // ---- commands ----

    /// Holds or releases a channel. A held channel starts no deliveries: its
    /// recipients stay queued (and do not age into bounces) until released.
    pub fn set_channel_enabled(&mut self, channel: Channel, enabled: bool, reason: &str) {
        let c = channel as usize;
        if self.enabled[c] == enabled {
            return;
        }
        self.enabled[c] = enabled;
        self.log(if enabled {
            format!("warning: {} deliveries resumed", channel.name())
        } else {
            format!("warning: {} deliveries held: {reason}", channel.name())
        });
        self.schedule();
    }

    /// SIGALRM: every waiting message is due now, as qmail-send's
    /// `flagrunasap`, including an express message whose deferrals are
    /// known but still being written down. Retry times already past are
    /// unchanged; deliveries in flight retry on the usual schedule.
    pub fn retry_now(&mut self) {
        let now = self.now;
        let recording: HashSet<MessageId> = self
            .writes
            .values()
            .filter_map(|w| match w {
                Action::Preprocess { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        self.alarmed = recording
            .into_iter()
            .filter(|id| self.messages.get(id).is_some_and(|m| m.express))
            .collect();
        for c in 0..2 {
            let due: Vec<(u64, MessageId)> = self.waiting[c]
                .iter()
                .copied()
                .filter(|&(at, _)| at > now)
                .collect();
            for (at, id) in due {
                self.waiting[c].remove(&(at, id));
                self.waiting[c].insert((now, id));
                if let Some(m) = self.messages.get_mut(&id) {
                    m.chans[c].retry_at = Some(now);
                }
            }
        }
        self.schedule();
    }

    /// SIGHUP: new `locals`, `percenthack`, `virtualdomains`, `envnoathost`.
    /// Messages already split keep their split, as in qmail.
    pub fn set_rewriter(&mut self, rewriter: super::Rewriter) {
        self.config.rewriter = rewriter;
    }

    /// SIGTERM: start no more deliveries. Results of those in flight are
    /// still taken and recorded; the host exits once none is left.
    pub fn drain(&mut self) {
        self.draining = true;
        // An express pass would wait for slots forever: what it finished
        // is recorded once what is running ends.
        let mut cut = Vec::new();
        for (&id, m) in self.messages.iter_mut().filter(|(_, m)| m.express) {
            for channel in Channel::ALL {
                let ch = &mut m.chans[channel as usize];
                if ch.in_pass {
                    ch.pass.clear();
                    cut.push((id, channel));
                }
            }
        }
        for (id, channel) in cut {
            self.end_of_pass(id, channel);
        }
    }

    // ---- input ----

    /// Everything that happens to the machine. `now` is unix seconds; it is
    /// never taken to go backwards. An `Err` is the host's mistake: the
    /// input is ignored (time still passes).
    pub fn handle(&mut self, now: u64, input: Input) -> Result<(), Misuse> {
        self.now = self.now.max(now);
        let result = match input {
            Input::NewMessage {
                id,
                sender,
                recipients,
                qp,
                uid,
                bytes,
            } => self.on_new(id, sender, recipients, (bytes, qp, uid)),
            Input::Recovered(disk) => self.on_recovered(disk),
            Input::DeliveredDirectly(d) => {
                self.on_direct(d);
                Ok(())
            }
            Input::Written(ticket) => self.on_written(ticket),
            Input::WriteFailed(ticket) => match self.writes.get(&ticket) {
                Some(action) => {
                    let id = match action {
                        Action::Preprocess { id, .. }
                        | Action::MarkDone { id, .. }
                        | Action::RemoveMessage { id, .. } => *id,
                        _ => 0,
                    };
                    self.log(format!("warning: trouble writing queue files of msg {id}"));
                    self.failed_writes
                        .insert((self.now + RETRY_WRITE_SECS, ticket));
                    Ok(())
                }
                None => Err(Misuse::UnknownTicket(ticket)),
            },
            Input::DeliveryResult {
                delivery,
                outcome,
                report,
            } => self.on_result(delivery, outcome, report),
            Input::BounceInjected { id, qp } => match self.messages.get_mut(&id) {
                Some(m) if m.phase == Phase::Bouncing => {
                    m.bounces.clear();
                    self.log(log::bounce(id, qp));
                    self.remove(id);
                    Ok(())
                }
                _ => Err(Misuse::UnknownBounce(id)),
            },
            Input::BounceFailed { id } => match self.messages.get(&id) {
                Some(m) if m.phase == Phase::Bouncing => {
                    self.log("warning: unable to inject bounce message".into());
                    self.bounce_retry.insert((self.now + RETRY_WRITE_SECS, id));
                    Ok(())
                }
                _ => Err(Misuse::UnknownBounce(id)),
            },
            Input::Tick => Ok(()),
        };
        self.run_timers();
        self.schedule();
        result
    }

    // ---- output ----

    /// The next thing to do, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to call `handle(now, Input::Tick)` next, if anything is timed.
    pub fn poll_timeout(&self) -> Option<u64> {
        let mut t: Option<u64> = None;
        let mut consider = |x: Option<u64>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        for c in 0..2 {
            // A full or held channel has nothing to wake for: results wake it.
            if self.enabled[c] && !self.draining && self.in_flight[c] < self.config.concurrency[c] {
                consider(self.waiting[c].first().map(|&(at, _)| at));
            }
        }
        consider(self.failed_writes.first().map(|&(at, _)| at));
        consider(self.bounce_retry.first().map(|&(at, _)| at));
        t
    }

    // ---- transitions ----

    /// qmail-send's lines for a message it never held: numbered like its
    /// own deliveries, so qmailanalog pairs them as usual.
    fn on_direct(&mut self, d: super::DirectDelivery) {
        let delivery = self.next_delivery;
        self.next_delivery += 1;
        self.log(log::new_msg(d.id));
        self.log(log::info_msg(d.id, d.bytes, &d.sender, d.qp, d.uid));
        self.log(log::starting(delivery, d.id, Channel::Local, &d.recipient));
        self.log(log::delivery(delivery, "success", &d.report));
        self.log(log::end_msg(d.id));
    }

    fn on_new(
        &mut self,
        id: MessageId,
        sender: Vec<u8>,
        recipients: Vec<Vec<u8>>,
        info: (u64, u32, u32),
    ) -> Result<(), Misuse> {
        if self.messages.contains_key(&id) {
            return Err(Misuse::DuplicateMessage(id));
        }
        let mut split: [Vec<Vec<u8>>; 2] = Default::default();
        for r in &recipients {
            let (channel, addr) = self.config.rewriter.classify(r);
            split[channel as usize].push(addr);
        }
        let rcpts = split.clone().map(|list| {
            list.into_iter()
                .map(|addr| Rcpt {
                    addr,
                    state: RState::Todo,
                })
                .collect()
        });
        let birth = self.now;
        // One channel, not held, and few enough recipients to hold a slot
        // each.
        let express = self.config.express
            && Channel::ALL.into_iter().any(|c| {
                let n = split[c as usize].len();
                n == recipients.len()
                    && self.enabled[c as usize]
                    && (1..=self.config.concurrency[c as usize]).contains(&n)
            });
        self.messages.insert(
            id,
            Message {
                sender: sender.clone(),
                birth,
                info: Some(info),
                rcpts,
                chans: Default::default(),
                bounces: Vec::new(),
                phase: Phase::Preprocessing,
                express,
                held: Vec::new(),
            },
        );
        if express {
            self.log_new(id);
            self.activate(id, [None, None]);
            return Ok(());
        }
        self.preprocess(id, sender, birth, split, Vec::new());
        Ok(())
    }

    fn on_recovered(&mut self, disk: OnDisk) -> Result<(), Misuse> {
        if self.messages.contains_key(&disk.id) {
            return Err(Misuse::DuplicateMessage(disk.id));
        }
        let rcpts = disk.recipients.map(|list| {
            list.into_iter()
                .map(|(addr, done)| Rcpt {
                    addr,
                    state: if done { RState::Done } else { RState::Todo },
                })
                .collect()
        });
        let bounces = disk
            .bounces
            .into_iter()
            .map(|(recipient, report)| Failure { recipient, report })
            .collect();
        self.messages.insert(
            disk.id,
            Message {
                sender: disk.sender,
                birth: disk.birth,
                info: None,
                rcpts,
                chans: Default::default(),
                bounces,
                phase: Phase::Active,
                express: false,
                held: Vec::new(),
            },
        );
        self.activate(disk.id, disk.next_retry);
        Ok(())
    }

    /// Queues each channel with work for its first pass, or finishes.
    fn activate(&mut self, id: MessageId, retry: [Option<u64>; 2]) {
        let now = self.now;
        let Some(m) = self.messages.get_mut(&id) else {
            return;
        };
        m.phase = Phase::Active;
        for (c, retry) in retry.into_iter().enumerate() {
            if m.rcpts[c].iter().any(|r| r.state == RState::Todo) {
                let at = retry.unwrap_or(now);
                m.chans[c].retry_at = Some(at);
                self.waiting[c].insert((at, id));
            }
        }
        self.check_done(id);
    }

    fn on_written(&mut self, ticket: Ticket) -> Result<(), Misuse> {
        let Some(action) = self.writes.remove(&ticket) else {
            return Err(Misuse::UnknownTicket(ticket));
        };
        self.failed_writes.retain(|&(_, t)| t != ticket);
        match action {
            Action::Preprocess { id, .. } => match self.messages.get(&id) {
                Some(m) if m.express => self.recorded_express(id),
                Some(_) => {
                    self.log_new(id);
                    self.activate(id, [None, None]);
                }
                None => {}
            },
            Action::MarkDone {
                id,
                channel,
                index,
                failure,
                ..
            } => {
                let c = channel as usize;
                self.in_flight[c] -= 1;
                if let Some(m) = self.messages.get_mut(&id) {
                    if let Some(r) = m.rcpts[c].get_mut(index) {
                        r.state = RState::Done;
                    }
                    m.chans[c].busy = m.chans[c].busy.saturating_sub(1);
                    m.bounces.extend(failure);
                    self.end_of_pass(id, channel);
                }
                self.log_status();
            }
            Action::RemoveMessage { id, .. } => {
                let held = self.messages.remove(&id).map_or(Vec::new(), |m| m.held);
                self.alarmed.remove(&id);
                for mark in &held {
                    self.in_flight[mark.channel as usize] -= 1;
                }
                self.log(log::end_msg(id));
                if !held.is_empty() {
                    self.log_status();
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn on_result(
        &mut self,
        delivery: u64,
        outcome: Outcome,
        report: Vec<u8>,
    ) -> Result<(), Misuse> {
        let Some((id, channel, index)) = self.deliveries.remove(&delivery) else {
            return Err(Misuse::UnknownDelivery(delivery));
        };
        let c = channel as usize;
        // A success or failure keeps its slot until its mark is durable
        // (see `on_written`): a crash then repeats at most `concurrency`
        // finished deliveries per channel, however far the writes lag.
        let Some(m) = self.messages.get_mut(&id) else {
            self.in_flight[c] -= 1;
            return Ok(());
        };
        let (outcome, report) = match outcome {
            Outcome::Deferral if m.chans[c].dying => {
                let mut report = report;
                report.extend_from_slice(DYING_TEXT.as_bytes());
                (Outcome::Failure, report)
            }
            other => (other, report),
        };
        let kind = match outcome {
            Outcome::Success => "success",
            Outcome::Deferral => "deferral",
            Outcome::Failure => "failure",
        };
        let line = log::delivery(delivery, kind, &report);
        let Some(r) = m.rcpts[c].get_mut(index) else {
            self.in_flight[c] -= 1;
            return Ok(());
        };
        let recipient = r.addr.clone();
        match outcome {
            Outcome::Deferral => {
                self.in_flight[c] -= 1;
                r.state = RState::Todo;
                m.chans[c].busy = m.chans[c].busy.saturating_sub(1);
                self.log(line);
                self.end_of_pass(id, channel);
            }
            Outcome::Success | Outcome::Failure => {
                r.state = RState::Marking;
                let failure =
                    (outcome == Outcome::Failure).then_some(Failure { recipient, report });
                if m.express {
                    m.held.push(Mark {
                        channel,
                        index,
                        failure,
                    });
                    m.chans[c].busy = m.chans[c].busy.saturating_sub(1);
                    self.log(line);
                    self.end_of_pass(id, channel);
                    return Ok(());
                }
                self.log(line);
                let ticket = self.ticket();
                self.write(Action::MarkDone {
                    ticket,
                    id,
                    channel,
                    index,
                    failure,
                });
                return Ok(());
            }
        }
        self.log_status();
        Ok(())
    }

    /// Closes the channel's pass once nothing of it is left running, and
    /// schedules the next one on qmail's curve if recipients remain.
    fn end_of_pass(&mut self, id: MessageId, channel: Channel) {
        let c = channel as usize;
        let now = self.now;
        let Some(m) = self.messages.get_mut(&id) else {
            return;
        };
        let ch = &mut m.chans[c];
        if !ch.in_pass || !ch.pass.is_empty() || ch.busy > 0 {
            return;
        }
        ch.in_pass = false;
        if m.express {
            self.record_express(id);
            return;
        }
        if m.rcpts[c].iter().any(|r| r.state == RState::Todo) {
            let at = next_retry(m.birth, now, channel);
            m.chans[c].retry_at = Some(at);
            self.waiting[c].insert((at, id));
        } else {
            self.check_done(id);
        }
    }

    /// An express pass is over: one write records it. If every recipient
    /// succeeded the message is simply removed; otherwise it is
    /// preprocessed with the pass's done marks.
    fn record_express(&mut self, id: MessageId) {
        let Some(m) = self.messages.get_mut(&id) else {
            return;
        };
        let all_delivered = m.rcpts.iter().flatten().all(|r| r.state == RState::Marking)
            && m.held.iter().all(|h| h.failure.is_none());
        if all_delivered {
            self.remove(id);
            return;
        }
        let (sender, birth, done) = (m.sender.clone(), m.birth, m.held.clone());
        let recipients = m
            .rcpts
            .each_ref()
            .map(|l| l.iter().map(|r| r.addr.clone()).collect());
        self.preprocess(id, sender, birth, recipients, done);
    }

    fn preprocess(
        &mut self,
        id: MessageId,
        sender: Vec<u8>,
        birth: u64,
        recipients: [Vec<Vec<u8>>; 2],
        done: Vec<Mark>,
    ) {
        let ticket = self.ticket();
        self.write(Action::Preprocess {
            ticket,
            id,
            sender,
            birth,
            recipients,
            done,
        });
    }

    /// The preprocessing that recorded an express pass is durable: its
    /// marks are done, their slots free, and the message goes on as any
    /// preprocessed one (a deferral waits for qmail's next retry).
    fn recorded_express(&mut self, id: MessageId) {
        let now = self.now;
        let Some(m) = self.messages.get_mut(&id) else {
            return;
        };
        m.express = false;
        for mark in std::mem::take(&mut m.held) {
            let c = mark.channel as usize;
            self.in_flight[c] -= 1;
            if let Some(r) = m.rcpts[c].get_mut(mark.index) {
                r.state = RState::Done;
            }
            m.bounces.extend(mark.failure);
        }
        m.phase = Phase::Active;
        let alarmed = self.alarmed.remove(&id);
        for channel in Channel::ALL {
            let c = channel as usize;
            if m.rcpts[c].iter().any(|r| r.state == RState::Todo) {
                let at = if alarmed {
                    now
                } else {
                    next_retry(m.birth, now, channel)
                };
                m.chans[c].retry_at = Some(at);
                self.waiting[c].insert((at, id));
            }
        }
        self.check_done(id);
        self.log_status();
    }

    /// Every recipient durably done: bounce if needed, then remove.
    fn check_done(&mut self, id: MessageId) {
        let Some(m) = self.messages.get(&id) else {
            return;
        };
        if m.phase != Phase::Active || m.rcpts.iter().flatten().any(|r| r.state != RState::Done) {
            return;
        }
        if m.bounces.is_empty() {
            self.remove(id);
        } else {
            self.bounce(id);
        }
    }

    /// qmail's `injectbounce`: to the sender; a bounce's bounce to
    /// `doublebounceto`; a double bounce's bounce nowhere.
    fn bounce(&mut self, id: MessageId) {
        let Some(m) = self.messages.get_mut(&id) else {
            return;
        };
        m.phase = Phase::Bouncing;
        if m.sender == DOUBLE_BOUNCE_SENDER {
            self.log(log::triple_bounce(id));
            self.remove(id);
            return;
        }
        let double = m.sender.is_empty();
        let (recipient, envelope_sender) = if double {
            if self.config.doublebounceto.is_empty() {
                self.log(log::double_bounce_discard(id));
                self.remove(id);
                return;
            }
            let to = format!(
                "{}@{}",
                self.config.doublebounceto, self.config.doublebouncehost
            );
            (to.into_bytes(), DOUBLE_BOUNCE_SENDER.to_vec())
        } else {
            // owner-@host-@[] (VERP) → owner-@host, as the composer does.
            let to = m
                .sender
                .strip_suffix(VERP_MARK)
                .map_or(&m.sender[..], |s| s);
            (to.to_vec(), Vec::new())
        };
        let request = BounceRequest {
            id,
            original_sender: m.sender.clone(),
            envelope_sender,
            recipient,
            double,
            failures: m.bounces.clone(),
        };
        self.actions.push_back(Action::InjectBounce(request));
    }

    fn remove(&mut self, id: MessageId) {
        if let Some(m) = self.messages.get_mut(&id) {
            m.phase = Phase::Removing;
            let ticket = self.ticket();
            self.write(Action::RemoveMessage { ticket, id });
        }
    }

    fn run_timers(&mut self) {
        while let Some(&(at, ticket)) = self.failed_writes.first() {
            if at > self.now {
                break;
            }
            self.failed_writes.pop_first();
            if let Some(action) = self.writes.get(&ticket) {
                self.actions.push_back(action.clone());
            }
        }
        while let Some(&(at, id)) = self.bounce_retry.first() {
            if at > self.now {
                break;
            }
            self.bounce_retry.pop_first();
            if self
                .messages
                .get(&id)
                .is_some_and(|m| m.phase == Phase::Bouncing)
            {
                self.bounce(id);
            }
        }
    }

    /// Opens due passes and starts deliveries while slots are free.
    fn schedule(&mut self) {
        for channel in Channel::ALL {
            let c = channel as usize;
            if !self.enabled[c] || self.draining {
                continue;
            }
            while self.in_flight[c] < self.config.concurrency[c] {
                let Some(&id) = self.jobs[c].front() else {
                    if !self.open_pass(channel) {
                        break;
                    }
                    continue;
                };
                let Some(m) = self.messages.get_mut(&id) else {
                    self.jobs[c].pop_front();
                    continue;
                };
                let Some(index) = m.chans[c].pass.pop_front() else {
                    self.jobs[c].pop_front();
                    continue;
                };
                if m.chans[c].pass.is_empty() {
                    self.jobs[c].pop_front();
                }
                let r = &mut m.rcpts[c][index];
                if r.state != RState::Todo {
                    continue;
                }
                r.state = RState::InFlight;
                m.chans[c].busy += 1;
                let delivery = self.next_delivery;
                self.next_delivery += 1;
                self.in_flight[c] += 1;
                self.deliveries.insert(delivery, (id, channel, index));
                let recipient = r.addr.clone();
                let sender = return_path(&m.sender, &recipient);
                self.log(log::starting(delivery, id, channel, &recipient));
                self.actions.push_back(Action::StartDelivery {
                    delivery,
                    id,
                    channel,
                    sender,
                    recipient,
                });
                self.log_status();
            }
        }
    }

    /// Takes the earliest due message off the channel's waiting list.
    fn open_pass(&mut self, channel: Channel) -> bool {
        let c = channel as usize;
        let Some(&(at, id)) = self.waiting[c].first() else {
            return false;
        };
        if at > self.now {
            return false;
        }
        self.waiting[c].pop_first();
        let now = self.now;
        let lifetime = self.config.queuelifetime;
        let Some(m) = self.messages.get_mut(&id) else {
            return true;
        };
        let pass: VecDeque<usize> = (0..m.rcpts[c].len())
            .filter(|&i| m.rcpts[c][i].state == RState::Todo)
            .collect();
        let ch = &mut m.chans[c];
        ch.retry_at = None;
        ch.in_pass = true;
        ch.dying = now > m.birth.saturating_add(lifetime);
        let empty = pass.is_empty();
        ch.pass = pass;
        if empty {
            self.end_of_pass(id, channel);
        } else {
            self.jobs[c].push_back(id);
        }
        true
    }

    // ---- helpers ----

    fn ticket(&mut self) -> Ticket {
        let t = Ticket(self.next_ticket);
        self.next_ticket += 1;
        t
    }

    fn write(&mut self, action: Action) {
        let ticket = match &action {
            Action::Preprocess { ticket, .. }
            | Action::MarkDone { ticket, .. }
            | Action::RemoveMessage { ticket, .. } => *ticket,
            _ => return,
        };
        self.writes.insert(ticket, action.clone());
        self.actions.push_back(action);
    }

    fn log(&mut self, line: String) {
        self.actions.push_back(Action::Log(line));
    }

    /// `new msg` and `info msg`, once the message is on the scheduler's books.
    fn log_new(&mut self, id: MessageId) {
        let Some(m) = self.messages.get_mut(&id) else {
            return;
        };
        let info = m.info.take();
        let sender = m.sender.clone();
        self.log(log::new_msg(id));
        if let Some((bytes, qp, uid)) = info {
            self.log(log::info_msg(id, bytes, &sender, qp, uid));
        }
    }

    fn log_status(&mut self) {
        self.log(log::status(self.in_flight, self.config.concurrency));
    }
}
