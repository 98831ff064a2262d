//! The daemon over a real queue: a message injected as qmail-queue does it
//! is delivered to a Maildir (or bounced, or deferred) and removed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use sqmail_core::bounce::BounceSettings;

use super::*;
use crate::envelope::Envelope;
use crate::scheduler::Config;
use crate::setup::create_queue;
use crate::store::{Invoker, Queue};

/// A log the test can read while the daemon writes it.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct Site {
    _dir: tempfile::TempDir,
    home: PathBuf,
    /// joe's home, with a Maildir.
    joe: PathBuf,
}

/// A qmail home whose users/assign has `joe` (and `joe-ext`); when we are root joe is a
/// made-up uid that owns his home, as deliveries never run as root.
fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.path().join("qmail");
    create_queue(&home, None).unwrap();
    let joe = dir.path().join("joe");
    for d in ["Maildir/tmp", "Maildir/new", "Maildir/cur"] {
        fs::create_dir_all(joe.join(d)).unwrap();
    }
    // SAFETY: getuid has no preconditions.
    let uid = match unsafe { libc::getuid() } {
        0 => 54330,
        uid => uid,
    };
    for d in ["", "Maildir", "Maildir/tmp", "Maildir/new", "Maildir/cur"] {
        std::os::unix::fs::chown(joe.join(d), Some(uid), Some(uid)).unwrap();
    }
    // Everyone else goes to an alias home with no .qmail-default: bounced.
    let alias = dir.path().join("alias");
    fs::create_dir(&alias).unwrap();
    std::os::unix::fs::chown(&alias, Some(uid), Some(uid)).unwrap();
    fs::create_dir_all(home.join("users")).unwrap();
    let (j, a) = (joe.display(), alias.display());
    fs::write(
        home.join("users/assign"),
        format!(
            "=joe:joe:{uid}:{uid}:{j}:::\n+joe-:joe:{uid}:{uid}:{j}:-::\n+:alias:{uid}:{uid}:{a}:-::\n.\n"
        ),
    )
    .unwrap();
    crate::local::newu(&home).unwrap();
    Site {
        _dir: dir,
        home,
        joe,
    }
}

fn controls() -> SendControls {
    let mut scheduler = Config::new("here.example");
    scheduler.concurrency = [4, 4];
    SendControls {
        scheduler,
        bounce: BounceSettings {
            bouncefrom: "MAILER-DAEMON".into(),
            bouncehost: "here.example".into(),
            doublebounceto: "postmaster".into(),
            doublebouncehost: "here.example".into(),
            max_bytes: None,
        },
    }
}

fn inject(home: &Path, sender: &str, rcpts: &[&str], body: &str) -> u64 {
    let q = Queue::open(home).unwrap();
    let mut m = q.begin(Invoker::User(0)).unwrap();
    m.write(body.as_bytes()).unwrap();
    let env = Envelope::new(
        sender,
        rcpts.iter().map(|r| r.as_bytes().to_vec()).collect(),
    );
    m.commit(&env).unwrap()
}

fn wait_for(what: &str, log: &Log, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}; log:\n{}",
            log.text()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn maildir(joe: &Path) -> Vec<String> {
    fs::read_dir(joe.join("Maildir/new"))
        .unwrap()
        .map(|e| fs::read_to_string(e.unwrap().path()).unwrap())
        .collect()
}

struct Running {
    handle: Handle,
    thread: Option<thread::JoinHandle<io::Result<()>>>,
    log: Log,
}

fn start(home: &Path) -> Running {
    start_with(home, None, 4)
}

fn start_with(home: &Path, remote: Option<Arc<dyn Transport>>, local: usize) -> Running {
    let mut controls = controls();
    // Room for a whole message's remote recipients at once.
    controls.scheduler.concurrency = [local, 20];
    let daemon = Daemon::new(Options {
        home: home.to_owned(),
        default_delivery: b"./Maildir/\n".to_vec(),
        controls,
        remote,
    })
    .unwrap();
    let handle = daemon.handle();
    let log = Log::default();
    let mut out = log.clone();
    let thread = thread::spawn(move || daemon.run(&mut out));
    // Running once it offers itself to this process's commits.
    let key = wake::QueueKey::of_queue(&home.join("queue")).unwrap();
    wait_for("the daemon", &log, || wake::in_process(key).is_some());
    Running {
        handle,
        thread: Some(thread),
        log,
    }
}

impl Running {
    fn stop(mut self) -> String {
        self.handle.send(Control::Exit);
        self.thread.take().unwrap().join().unwrap().unwrap();
        self.log.text()
    }
}

fn queue_is_empty(home: &Path) -> bool {
    let q = home.join("queue");
    let count = |d: &str| {
        fs::read_dir(q.join(d))
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                if p.is_dir() {
                    fs::read_dir(p).unwrap().count()
                } else {
                    1
                }
            })
            .sum::<usize>()
    };
    ["todo", "info", "local", "remote", "mess", "bounce"]
        .iter()
        .all(|d| count(d) == 0)
}

#[test]
fn delivers_to_a_maildir_and_empties_the_queue() {
    let s = site();
    // Queued with no daemon running here: the queue's way, found at start.
    let id = inject(
        &s.home,
        "a@b.example",
        &["joe@here.example"],
        "Subject: one\n\nbody\n",
    );
    let run = start(&s.home);
    wait_for("the delivery", &run.log, || maildir(&s.joe).len() == 1);
    wait_for("the removal", &run.log, || queue_is_empty(&s.home));
    let log = run.stop();
    let mail = &maildir(&s.joe)[0];
    assert!(
        mail.starts_with("Return-Path: <a@b.example>\nDelivered-To: joe@here.example\n"),
        "{mail}"
    );
    assert!(mail.ends_with("Subject: one\n\nbody\n"), "{mail}");
    for line in [
        format!("new msg {id}"),
        format!("info msg {id}: bytes"),
        format!("starting delivery 1: msg {id} to local joe@here.example"),
        "delivery 1: success: ".to_string(),
        format!("end msg {id}"),
        "warning: remote deliveries held".to_string(),
        "status: exiting".to_string(),
    ] {
        assert!(log.contains(&line), "no {line:?} in\n{log}");
    }
}

#[test]
fn unknown_user_and_exit_100_bounce_to_the_sender() {
    let s = site();
    fs::write(s.joe.join(".qmail-fail"), "|echo no such list; exit 100\n").unwrap();
    fs::set_permissions(s.joe.join(".qmail-fail"), fs::Permissions::from_mode(0o644)).unwrap();
    let run = start(&s.home);
    inject(
        &s.home,
        "a@far.example",
        &["nobody-here@here.example", "joe-fail@here.example"],
        "Subject: two\n\nbody\n",
    );
    // The bounce goes to a remote sender: it waits in the queue, held.
    wait_for("the bounce", &run.log, || {
        run.log.text().contains("bounce msg")
    });
    let log = run.stop();
    assert!(log.contains("delivery 1: failure:"), "{log}");
    assert!(log.contains("delivery 2: failure: no_such_list/"), "{log}");
    let recovered = Spool::open(&s.home).unwrap().recover().unwrap();
    let [bounce] = recovered.messages.as_slice() else {
        panic!("{recovered:?}\n{log}")
    };
    assert_eq!(bounce.sender, b"");
    assert_eq!(
        bounce.recipients[1],
        vec![(b"a@far.example".to_vec(), false)]
    );
    let text = fs::read_to_string(Spool::open(&s.home).unwrap().message_path(bounce.id)).unwrap();
    assert!(
        text.contains("<joe-fail@here.example>:\nno such list\n"),
        "{text}"
    );
    assert!(text.contains("<nobody-here@here.example>:\n"), "{text}");
    assert!(text.contains("Subject: two"), "{text}");
}

#[test]
fn deferral_stays_queued_and_survives_a_restart() {
    let s = site();
    fs::write(s.joe.join(".qmail-later"), "|exit 111\n").unwrap();
    fs::set_permissions(
        s.joe.join(".qmail-later"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let run = start(&s.home);
    let id = inject(
        &s.home,
        "a@b.example",
        &["joe-later@here.example", "joe@here.example"],
        "x\n",
    );
    wait_for("the deferral", &run.log, || {
        run.log.text().contains("deferral")
    });
    wait_for("joe's copy", &run.log, || maildir(&s.joe).len() == 1);
    let log = run.stop();
    assert!(!log.contains(&format!("end msg {id}")), "{log}");
    // The retry time was stored as local/N's mtime, in the future.
    let recovered = Spool::open(&s.home).unwrap().recover().unwrap();
    let m = &recovered.messages[0];
    assert_eq!(m.recipients[0].iter().filter(|(_, done)| *done).count(), 1);
    assert!(m.next_retry[0].unwrap() > unix_now(), "{m:?}");

    // Restarted, it is recovered and, told to retry now, tried again:
    // only the deferred recipient.
    fs::write(s.joe.join(".qmail-later"), "./Maildir/\n").unwrap();
    let run = start(&s.home);
    run.handle.send(Control::RetryNow);
    wait_for("the retry", &run.log, || maildir(&s.joe).len() == 2);
    wait_for("the removal", &run.log, || queue_is_empty(&s.home));
    let log = run.stop();
    assert!(log.contains(&format!("end msg {id}")), "{log}");
    assert_eq!(log.matches("starting delivery").count(), 1, "{log}");
}

#[test]
fn a_second_daemon_on_one_queue_is_refused() {
    let s = site();
    let run = start(&s.home);
    let second = Daemon::new(Options {
        home: s.home.clone(),
        default_delivery: b"./Maildir/\n".to_vec(),
        controls: controls(),
        remote: None,
    });
    assert!(second.is_err());
    run.stop();
}

/// A transport that records its jobs and answers by the recipient's
/// local part: `ok…` delivered, `later…` deferred, anything else refused.
/// (Deferrals and their retries are the scheduler's, tested there.)
#[derive(Default)]
struct FakeRemote(Mutex<Vec<(RemoteJob, String)>>);

impl Transport for FakeRemote {
    fn deliver(&self, job: &RemoteJob, mut message: File) -> Vec<RemoteResult> {
        let mut text = String::new();
        io::Read::read_to_string(&mut message, &mut text).unwrap();
        self.0.lock().unwrap().push((job.clone(), text));
        job.recipients
            .iter()
            .map(|(_, r)| {
                let (outcome, report) = if r.starts_with(b"ok") {
                    (crate::scheduler::Outcome::Success, "accepted")
                } else if r.starts_with(b"later") {
                    (crate::scheduler::Outcome::Deferral, "try later")
                } else {
                    (crate::scheduler::Outcome::Failure, "no such user")
                };
                RemoteResult {
                    outcome,
                    report: report.into(),
                }
            })
            .collect()
    }
}

#[test]
fn remote_recipients_of_one_domain_travel_in_one_job() {
    let s = site();
    let remote = Arc::new(FakeRemote::default());
    let run = start_with(&s.home, Some(remote.clone()), 4);
    let id = inject(
        &s.home,
        "joe@here.example",
        &[
            "ok1@far.example",
            "ok2@elsewhere.example",
            "bad@FAR.example",
            "ok3@far.example",
        ],
        "Subject: out\n\nbody\n",
    );
    // Done when the bounce, too, has been delivered (to joe, locally).
    wait_for("the bounce delivered", &run.log, || {
        run.log.text().matches("end msg").count() == 2
    });
    let log = run.stop();
    let jobs = remote.0.lock().unwrap();
    let mut shape: Vec<(Vec<u8>, usize)> = jobs
        .iter()
        .filter(|(j, _)| j.id == id)
        .map(|(j, _)| (j.domain.clone(), j.recipients.len()))
        .collect();
    shape.sort();
    assert_eq!(
        shape,
        [
            (b"elsewhere.example".to_vec(), 1),
            (b"far.example".to_vec(), 3)
        ],
        "{log}"
    );
    assert!(jobs.iter().all(|(j, text)| j.sender == b"joe@here.example"
        && text.starts_with("Received: (qmail ")
        && text.ends_with("\nSubject: out\n\nbody\n")));
    for line in [
        "to remote ok1@far.example",
        "to remote bad@FAR.example",
        "success: accepted",
        "failure: no_such_user",
    ] {
        assert!(log.contains(line), "no {line:?} in\n{log}");
    }
    assert!(!log.contains("remote deliveries held"), "{log}");
    assert_eq!(log.matches("starting delivery").count(), 5, "{log}");
    let bounce = maildir(&s.joe).join("");
    assert!(
        bounce.contains("<bad@FAR.example>:\nno such user"),
        "{bounce}"
    );
}

#[test]
fn a_message_for_a_maildir_is_delivered_before_its_commit_returns() {
    let s = site();
    let run = start(&s.home);
    let id = inject(
        &s.home,
        "a@b.example",
        &["joe@here.example"],
        "Subject: direct\n\nbody\n",
    );
    // No waiting: delivered, and nothing queued.
    let mail = maildir(&s.joe);
    assert_eq!(mail.len(), 1);
    assert!(
        mail[0].starts_with("Return-Path: <a@b.example>\nDelivered-To: joe@here.example\n"),
        "{}",
        mail[0]
    );
    assert!(mail[0].contains("\nReceived: (qmail "), "{}", mail[0]);
    assert!(
        mail[0].ends_with("Subject: direct\n\nbody\n"),
        "{}",
        mail[0]
    );
    // Nothing was queued: only mess/N, which qmail-send removes (keeps
    // for the next message) once it has logged the message.
    let todo = |d: &str| fs::read_dir(s.home.join("queue").join(d)).unwrap().count();
    assert_eq!((todo("todo"), todo("intd"), todo("pid")), (0, 0, 0));
    wait_for("mess/N kept", &run.log, || {
        fs::read_dir(s.home.join("queue/spare")).unwrap().count() == 1
    });
    assert!(queue_is_empty(&s.home));

    // qmail-send logs it as one of its own, numbered among its deliveries.
    let added = "Return-Path: <a@b.example>\nDelivered-To: joe@here.example\n";
    let (bytes, qp) = (mail[0].len() - added.len(), std::process::id());
    let second = inject(&s.home, "", &["joe@here.example"], "x\n");
    let log = run.stop();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&id.to_string()) || l.contains("delivery 1:"))
        .collect();
    // (The second message may reuse the id, as the spare's inode.)
    assert_eq!(
        lines[..5],
        [
            format!("new msg {id}"),
            format!("info msg {id}: bytes {bytes} from <a@b.example> qp {qp} uid 0"),
            format!("starting delivery 1: msg {id} to local joe@here.example"),
            "delivery 1: success: did_1+0+0/".to_string(),
            format!("end msg {id}"),
        ],
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "starting delivery 2: msg {second} to local joe@here.example"
        )),
        "{log}"
    );
    assert!(
        !log.contains("status: local 1/"),
        "no queue delivery: {log}"
    );
}

#[test]
fn anything_but_maildirs_goes_through_the_queue_untouched() {
    let s = site();
    // Appends a line per run: it must run once, from the queue.
    fs::write(
        s.joe.join(".qmail-prog"),
        "./Maildir/\n|echo ran >> \"$HOME/ran\"\n",
    )
    .unwrap();
    fs::set_permissions(s.joe.join(".qmail-prog"), fs::Permissions::from_mode(0o644)).unwrap();
    let run = start(&s.home);
    inject(&s.home, "a@b.example", &["joe-prog@here.example"], "x\n");
    wait_for("the program's delivery", &run.log, || {
        run.log.text().contains("end msg")
    });
    // Two recipients, each of whom alone would qualify.
    inject(
        &s.home,
        "a@b.example",
        &["joe@here.example", "joe@here.example"],
        "y\n",
    );
    // (By count: `two` may reuse the first id, as a spare's inode.)
    wait_for("the pair's delivery", &run.log, || {
        run.log.text().matches("end msg").count() == 2
    });
    let log = run.stop();
    assert_eq!(fs::read_to_string(s.joe.join("ran")).unwrap(), "ran\n");
    assert_eq!(maildir(&s.joe).len(), 3);
    assert!(log.matches("status: local 1/").count() >= 2, "{log}");
    assert!(queue_is_empty(&s.home), "{log}");
}

#[test]
fn a_deferred_direct_delivery_is_queued_and_retried() {
    let s = site();
    // No Maildir yet: the delivery defers, and the queue keeps the message.
    fs::rename(s.joe.join("Maildir"), s.joe.join("Maildir.off")).unwrap();
    let run = start(&s.home);
    let id = inject(&s.home, "a@b.example", &["joe@here.example"], "kept\n");
    wait_for("the queue's deferral", &run.log, || {
        run.log.text().contains("deferral")
    });
    assert!(!queue_is_empty(&s.home));
    fs::rename(s.joe.join("Maildir.off"), s.joe.join("Maildir")).unwrap();
    run.handle.send(Control::RetryNow);
    wait_for("the retry", &run.log, || maildir(&s.joe).len() == 1);
    wait_for("the removal", &run.log, || queue_is_empty(&s.home));
    let log = run.stop();
    assert!(log.contains(&format!("end msg {id}")), "{log}");
    assert!(maildir(&s.joe)[0].ends_with("\nkept\n"));
}

#[test]
fn concurrencylocal_bounds_deliveries_before_queueing_too() {
    let s = site();
    // No local delivery at all, so none before queueing either.
    let run = start_with(&s.home, None, 0);
    let id = inject(&s.home, "a@b.example", &["joe@here.example"], "held\n");
    assert!(maildir(&s.joe).is_empty());
    // Queued: qmail-send takes it in, and holds it.
    wait_for("the intake", &run.log, || {
        run.log.text().contains(&format!("new msg {id}"))
    });
    let log = run.stop();
    assert!(!log.contains("starting delivery"), "{log}");
    assert!(maildir(&s.joe).is_empty());
}

#[test]
fn without_a_running_daemon_commits_queue() {
    let s = site();
    start(&s.home).stop();
    let id = inject(&s.home, "a@b.example", &["joe@here.example"], "z\n");
    assert!(maildir(&s.joe).is_empty());
    assert!(s.home.join(format!("queue/todo/{id}")).exists());
}
