//! Delivery traces: the whole path from SMTP in to a Maildir, a bounce or
//! a deferral and its retry, on a virtual clock.
//!
//! The dialog runs on the bare machine exactly as for
//! [`Target::Machine`](crate::Target::Machine) ([`MachinePeer`]). Then every
//! message its store holds goes into a real queue in a temporary
//! directory, as qmail-queue puts it there for qmail-smtpd (invoked from
//! network), and the lines after the dialog drive qmail-send's loop by
//! hand: the [`Scheduler`] decides, a [`Worker`] carries out each action
//! inline (`Worker::perform(action, now)`) and its answer goes straight
//! back. Time is [`T0`] plus what a `T:` line says; nothing sleeps.
//!
//! The site: a qmail home (`queue/`, `users/assign` compiled to
//! `users/cdb`), a home with a `Maildir/` for each `@mailbox` user, and an
//! alias home without `.qmail-default` that the `+` catch-all line sends
//! every other local part to, so that it bounces. qmail never delivers as
//! uid 0: run as root, each user is a made-up uid owning his home (the
//! temporary directory is 0755 so he can reach it), and deliveries fork
//! and become him, as qmail-lspawn does.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sqmail_core::bounce::BounceSettings;
use sqmail_core::smtp::reception::Envelope as SmtpEnvelope;
use sqmail_queue::scheduler::{
    Action, Channel, Config, Input, MessageId, Misuse, Scheduler, Ticket,
};
use sqmail_queue::send::{Worker, REMOTE_HELD};
use sqmail_queue::{create_queue, Envelope, Invoker, Queue, Spool};

use crate::machine::MachinePeer;
use crate::run::{self, contains, Failure};
use crate::trace::{self, DeliveryStep, Setup, Trace};
use crate::Outcome;

/// The virtual clock's zero, in unix seconds: `T: N` runs the queue at
/// `T0 + N`. The same instant as the bare machine's store clock, so the
/// `Received:` line and the queue agree on the day.
pub const T0: u64 = 1_700_000_000;

/// As root, `@mailbox` users get uids from here up (the alias user this
/// one): deliveries never run as uid 0.
const MADE_UP_UID: u32 = 54330;

/// qmail-start's argument: the delivery for a user without `.qmail`.
const DEFAULT_DELIVERY: &[u8] = b"./Maildir/\n";

/// Rounds of "carry out every action, answer every one" in one `T:`
/// before the queue counts as running away (a forwarding loop that the
/// loop check misses, a scheduler that never settles).
const MAX_ROUNDS: usize = 10_000;

/// Runs a delivery trace: its dialog on the bare machine (whole or one
/// byte per write), then the queue, steps and checks after it.
pub fn run(trace: &Trace, bytewise: bool) -> Outcome {
    let split = trace
        .steps
        .iter()
        .position(|s| matches!(s.action, trace::Action::Delivery(_)))
        .unwrap_or(trace.steps.len());
    let dialog = Trace {
        steps: trace.steps[..split].to_vec(),
        ..trace.clone()
    };
    let first_line = trace.steps.get(split).map_or(0, |s| s.line);
    let mut peer = match MachinePeer::new(&trace.setup) {
        Ok(peer) => peer,
        Err(e) => return failure(trace, 0, format!("machine setup: {e}"), &[]),
    };
    if let Err(f) = run::run(&dialog, &mut peer, bytewise) {
        return Outcome::Fail(f);
    }
    let site = match Site::build(&trace.setup) {
        Ok(site) => site,
        Err(e) => return failure(trace, 0, format!("site setup: {e}"), &[]),
    };
    let mut mta = match Mta::start(&site, trace.setup.me()) {
        Ok(mta) => mta,
        Err(e) => return failure(trace, 0, format!("queue setup: {e}"), &[]),
    };
    for (envelope, data) in &peer.store().committed {
        if let Err(e) = mta.inject(envelope, data) {
            let msg = format!("putting the dialog's message into the queue: {e}");
            return failure(trace, first_line, msg, &mta.log);
        }
    }
    for step in &trace.steps[split..] {
        let trace::Action::Delivery(d) = &step.action else {
            let msg = "a dialog line after the queue ran".to_string();
            return failure(trace, step.line, msg, &mta.log);
        };
        let result = match d {
            DeliveryStep::Run(secs) => mta.run_at(T0 + secs),
            DeliveryStep::Maildir { user, count, text } => {
                site.check_maildir(user, *count, text.as_deref())
            }
            DeliveryStep::Log { text, present } => mta.check_log(text, *present),
            DeliveryStep::Bounces { count, text } => mta.check_bounces(*count, text.as_deref()),
        };
        if let Err(e) = result {
            return failure(trace, step.line, e, &mta.log);
        }
    }
    Outcome::Pass
}

fn failure(trace: &Trace, line: usize, message: String, log: &[String]) -> Outcome {
    Outcome::Fail(Failure {
        trace: trace.path.display().to_string(),
        line,
        message,
        transcript: log.iter().map(|l| format!("log: {l}")).collect(),
    })
}

/// The files of one run; removed when dropped.
struct Site {
    _dir: tempfile::TempDir,
    /// QMAILHOME.
    qmail: PathBuf,
    /// Each `@mailbox` user's home.
    homes: HashMap<String, PathBuf>,
    /// The uid we run as: the queue's owner and the injector's uid.
    uid: u32,
}

fn io_err(what: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", what.display())
}

/// A directory of `owner`'s with `mode`.
fn make_dir(path: &Path, owner: u32, mode: u32) -> Result<(), String> {
    fs::create_dir_all(path).map_err(io_err(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(path))?;
    chown(path, Some(owner), Some(owner)).map_err(io_err(path))
}

impl Site {
    fn build(setup: &Setup) -> Result<Site, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let top = dir.path().to_path_buf();
        fs::set_permissions(&top, fs::Permissions::from_mode(0o755)).map_err(io_err(&top))?;
        let uid = fs::metadata(&top).map_err(io_err(&top))?.uid();
        let shown = top.display().to_string();
        if shown.contains([':', '\n']) {
            return Err(format!("{shown}: users/assign cannot hold this path"));
        }
        let qmail = top.join("qmail");
        create_queue(&qmail, None).map_err(io_err(&qmail))?;
        let owner = |n: u32| if uid == 0 { MADE_UP_UID + n } else { uid };

        let mut assign = String::new();
        let mut homes = HashMap::new();
        make_dir(&top.join("home"), uid, 0o755)?;
        for (n, name) in (1..).zip(&setup.mailboxes) {
            let home = top.join("home").join(name);
            let u = owner(n);
            make_dir(&home, u, 0o755)?;
            for d in ["Maildir", "Maildir/tmp", "Maildir/new", "Maildir/cur"] {
                make_dir(&home.join(d), u, 0o700)?;
            }
            let h = home.display();
            assign.push_str(&format!(
                "={name}:{name}:{u}:{u}:{h}:::\n+{name}-:{name}:{u}:{u}:{h}:-::\n"
            ));
            homes.insert(name.clone(), home);
        }
        // Everyone else: the alias user, whose home has no .qmail-default.
        let alias = top.join("alias");
        let a = owner(0);
        make_dir(&alias, a, 0o755)?;
        assign.push_str(&format!("+:alias:{a}:{a}:{}:-::\n.\n", alias.display()));
        let users = qmail.join("users");
        fs::create_dir_all(&users).map_err(io_err(&users))?;
        let assign_path = users.join("assign");
        fs::write(&assign_path, assign).map_err(io_err(&assign_path))?;
        sqmail_queue::local::newu(&qmail)?;

        for dq in &setup.dotqmails {
            let home = homes
                .get(&dq.user)
                .ok_or_else(|| format!("@dotqmail for {}, who has no @mailbox", dq.user))?;
            let path = home.join(format!(".qmail-{}", dq.ext));
            fs::write(&path, &dq.contents).map_err(io_err(&path))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).map_err(io_err(&path))?;
            let u = fs::metadata(home).map_err(io_err(home))?.uid();
            chown(&path, Some(u), Some(u)).map_err(io_err(&path))?;
        }
        Ok(Site {
            _dir: dir,
            qmail,
            homes,
            uid,
        })
    }

    /// `M: NAME N [text]`.
    fn check_maildir(&self, user: &str, count: usize, text: Option<&[u8]>) -> Result<(), String> {
        let home = self
            .homes
            .get(user)
            .ok_or_else(|| format!("{user} has no @mailbox"))?;
        let new = home.join("Maildir/new");
        let mut paths: Vec<PathBuf> = fs::read_dir(&new)
            .map_err(io_err(&new))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io_err(&new))?;
        paths.sort();
        let mails = paths
            .iter()
            .map(|p| fs::read(p).map_err(io_err(p)))
            .collect::<Result<Vec<_>, _>>()?;
        if mails.len() != count {
            return Err(format!(
                "{user}'s Maildir/new holds {} message(s), not {count}{}",
                mails.len(),
                show(&mails)
            ));
        }
        match text {
            Some(t) if !mails.iter().any(|m| contains(m, t)) => Err(format!(
                "none of {user}'s {count} message(s) contains {:?}{}",
                String::from_utf8_lossy(t),
                show(&mails)
            )),
            _ => Ok(()),
        }
    }
}

/// Messages for a failure report, each cut to a readable size.
fn show(mails: &[Vec<u8>]) -> String {
    const MAX: usize = 3000;
    let mut out = String::new();
    for (i, m) in mails.iter().enumerate() {
        let text = String::from_utf8_lossy(&m[..m.len().min(MAX)]);
        out.push_str(&format!("\n--- message {} ---\n{text}", i + 1));
        if m.len() > MAX {
            out.push_str(&format!("... ({} bytes)\n", m.len()));
        }
    }
    out
}

/// qmail-send, driven inline: the scheduler, a worker that carries out its
/// actions, and what the daemon keeps around them.
struct Mta {
    scheduler: Scheduler,
    worker: Worker,
    spool: Spool,
    queue: Queue,
    /// The uid the dialog's messages are injected as (qmaild's role).
    uid: u32,
    /// qmail-send's log so far.
    log: Vec<String>,
    /// Messages handed to the scheduler whose `todo/N` still exists.
    in_todo: HashSet<MessageId>,
    /// Preprocessing writes asked for, by ticket.
    preprocessing: HashMap<Ticket, MessageId>,
    /// Removals asked for, by ticket.
    removing: HashMap<Ticket, MessageId>,
    /// The messages in the queue in the order they came, for "the last
    /// bounce" (ids are inode numbers, in no order).
    order: Vec<MessageId>,
}

impl Mta {
    fn start(site: &Site, me: &str) -> Result<Mta, String> {
        let spool = Spool::open(&site.qmail).map_err(io_err(&site.qmail))?;
        let queue = Queue::open(&site.qmail).map_err(|e| e.text().to_string())?;
        let bounce = BounceSettings {
            bouncefrom: "MAILER-DAEMON".into(),
            bouncehost: me.into(),
            doublebounceto: "postmaster".into(),
            doublebouncehost: me.into(),
            max_bytes: None,
        };
        let worker = Worker::new(
            spool.clone(),
            site.qmail.clone(),
            DEFAULT_DELIVERY.to_vec(),
            bounce,
        )
        .map_err(|e| e.text().to_string())?;
        let mut scheduler = Scheduler::new(Config::new(me));
        scheduler.set_channel_enabled(Channel::Remote, false, REMOTE_HELD);
        let mut mta = Mta {
            scheduler,
            worker,
            spool,
            queue,
            uid: site.uid,
            log: Vec::new(),
            in_todo: HashSet::new(),
            preprocessing: HashMap::new(),
            removing: HashMap::new(),
            order: Vec::new(),
        };
        while let Some(action) = mta.scheduler.poll_action() {
            match action {
                Action::Log(line) => mta.log.push(line),
                other => return Err(format!("an empty queue asked for {other:?}")),
            }
        }
        Ok(mta)
    }

    /// qmail-queue for qmail-smtpd: the message as the dialog stored it
    /// (with smtpd's `Received:` line), under qmail-queue's own.
    fn inject(&mut self, envelope: &SmtpEnvelope, data: &[u8]) -> Result<(), String> {
        let qq = |e: sqmail_queue::QqError| format!("qmail-queue: {}", e.text());
        let mut incoming = self.queue.begin(Invoker::Network(self.uid)).map_err(qq)?;
        incoming.write(data).map_err(qq)?;
        let recipients = envelope
            .recipients
            .iter()
            .map(|r| r.as_bytes().to_vec())
            .collect();
        let id = incoming
            .commit(&Envelope::new(envelope.sender.as_bytes(), recipients))
            .map_err(qq)?;
        self.order.push(id);
        Ok(())
    }

    /// `T: N`: everything there is to do at `now`, until nothing is.
    fn run_at(&mut self, now: u64) -> Result<(), String> {
        self.handle(now, Input::Tick)?;
        for _ in 0..MAX_ROUNDS {
            let took = self.intake(now)?;
            let mut answers = Vec::new();
            let mut acted = false;
            while let Some(action) = self.scheduler.poll_action() {
                match action {
                    Action::Log(line) => self.log.push(line),
                    action => {
                        acted = true;
                        match &action {
                            Action::Preprocess { ticket, id, .. } => {
                                self.preprocessing.insert(*ticket, *id);
                            }
                            Action::RemoveMessage { ticket, id } => {
                                self.removing.insert(*ticket, *id);
                            }
                            _ => {}
                        }
                        answers.extend(self.worker.perform(action, now));
                    }
                }
            }
            if !took && !acted {
                return Ok(());
            }
            // The daemon's pools answer in their own time; here every
            // action of a round is done before any answer is heard, as
            // deliveries started together run side by side.
            for answer in answers {
                self.log.extend(answer.warning);
                if let Input::Written(ticket) = &answer.input {
                    if let Some(id) = self.preprocessing.remove(ticket) {
                        self.in_todo.remove(&id);
                    }
                    if let Some(id) = self.removing.remove(ticket) {
                        self.order.retain(|&m| m != id);
                    }
                }
                self.handle(now, answer.input)?;
            }
        }
        Err(format!(
            "the queue was still busy after {MAX_ROUNDS} rounds at T0+{}",
            now - T0
        ))
    }

    fn handle(&mut self, now: u64, input: Input) -> Result<(), String> {
        self.scheduler
            .handle(now, input)
            .map_err(|m| format!("the scheduler refused an answer: {m}"))
    }

    /// New messages in `todo/` to the scheduler; whether there were any.
    fn intake(&mut self, now: u64) -> Result<bool, String> {
        let (inputs, warnings) = self.worker.intake(&self.in_todo);
        self.log.extend(warnings);
        let mut took = false;
        for (id, input) in inputs {
            match self.scheduler.handle(now, input) {
                Ok(()) => {
                    took = true;
                    self.in_todo.insert(id);
                    if !self.order.contains(&id) {
                        self.order.push(id);
                    }
                }
                // The inode of a message whose removal is not answered
                // yet, reused: taken in a later round, as the daemon does.
                Err(Misuse::DuplicateMessage(_)) => {}
                Err(m) => return Err(format!("the scheduler refused a new message: {m}")),
            }
        }
        Ok(took)
    }

    /// `L: text` / `L! text`.
    fn check_log(&self, text: &str, present: bool) -> Result<(), String> {
        let found = self.log.iter().find(|l| l.contains(text));
        match (found, present) {
            (None, true) => Err(format!("no log line contains {text:?}")),
            (Some(line), false) => Err(format!("a log line contains {text:?}: {line}")),
            _ => Ok(()),
        }
    }

    /// `B: N [text]`: the messages with sender `<>` in the queue, whether
    /// still in `todo/` or preprocessed.
    fn check_bounces(&self, count: usize, text: Option<&[u8]>) -> Result<(), String> {
        let spool_err = |e: std::io::Error| format!("reading the queue: {e}");
        let mut bounces = Vec::new();
        for id in self.spool.todo().map_err(spool_err)? {
            let todo = self
                .spool
                .read_todo(id)
                .map_err(|e| format!("reading todo/{id}: {e}"))?;
            if todo.sender.is_empty() {
                bounces.push(id);
            }
        }
        let recovered = self.spool.recover().map_err(spool_err)?;
        if let Some((id, why)) = recovered.problems.first() {
            return Err(format!("msg {id} is unreadable: {why}"));
        }
        bounces.extend(
            recovered
                .messages
                .iter()
                .filter(|m| m.sender.is_empty())
                .map(|m| m.id),
        );
        let place = |id: &MessageId| self.order.iter().position(|m| m == id);
        bounces.sort_by_key(|id| (place(id).is_none(), place(id), *id));
        let mails = bounces
            .iter()
            .map(|&id| {
                let path = self.spool.message_path(id);
                fs::read(&path).map_err(io_err(&path))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if mails.len() != count {
            return Err(format!(
                "{} bounce(s) in the queue, not {count}{}",
                mails.len(),
                show(&mails)
            ));
        }
        match (text, mails.last()) {
            (Some(t), Some(last)) if !contains(last, t) => Err(format!(
                "the last bounce lacks {:?}{}",
                String::from_utf8_lossy(t),
                show(std::slice::from_ref(last))
            )),
            _ => Ok(()),
        }
    }
}
