//! `sqmail send` as a real process: messages injected by `sqmail inject`,
//! `sqmail sendmail` and `sqmail smtpd --listen` reach a Maildir made by
//! `sqmail user add`, and qmail-send's signals and qmail-start's logger
//! argument do what qmail's do.
//!
//! The mailboxes' addresses are `@localhost` for SMTP (smtpd takes them
//! as they are) and bare local parts for inject, which qualifies them with
//! `defaulthost` and `defaultdomain` into a local domain whatever the
//! host's name (`joe@localhost` would become `joe@localhost.localdomain`).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{code, inject_with, Client, Daemon, Proc, TestHome};

/// The ids of the `new msg N` lines of `log`, in order.
fn new_ids(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.strip_prefix("new msg "))
        .map(str::to_string)
        .collect()
}

/// The delivery number of `starting delivery N: msg ID to CHANNEL ...`.
fn delivery_of(log: &str, id: &str) -> Option<String> {
    log.lines().find_map(|l| {
        let rest = l.strip_prefix("starting delivery ")?;
        let (n, rest) = rest.split_once(": msg ")?;
        rest.starts_with(&format!("{id} to "))
            .then(|| n.to_string())
    })
}

fn wait_for_mail(proc: &Proc, maildir: &Path, count: usize) -> Vec<String> {
    let ok = common::wait_until(Duration::from_secs(20), || {
        common::maildir_messages(maildir).len() >= count
    });
    assert!(
        ok,
        "{count} messages in {}: {:?}\n{}",
        maildir.display(),
        common::maildir_messages(maildir),
        proc.output()
    );
    common::maildir_messages(maildir)
}

fn sigterm_exits_0(proc: &mut Proc) {
    proc.signal(libc::SIGTERM);
    let status = proc.exit();
    assert!(status.success(), "{status}\n{}", proc.output());
    assert!(
        proc.stdout().ends_with("status: exiting\n"),
        "{}",
        proc.output()
    );
}

/// One message over SMTP to `rcpt`, by our own client.
fn smtp_send(daemon: &Daemon, rcpt: &str, subject: &str) {
    let mut c = Client::connect(daemon.addr).unwrap();
    assert_eq!(code(&c.reply().unwrap()).unwrap(), 220);
    assert_eq!(c.cmd("HELO client.test").unwrap(), 250);
    assert_eq!(c.cmd("MAIL FROM:<alice@client.test>").unwrap(), 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{rcpt}>")).unwrap(), 250);
    assert_eq!(c.cmd("DATA").unwrap(), 354);
    c.send(&format!("Subject: {subject}\r\n\r\nover smtp\r\n.\r\n"))
        .unwrap();
    assert_eq!(code(&c.reply().unwrap()).unwrap(), 250);
    assert_eq!(c.cmd("QUIT").unwrap(), 221);
}

#[test]
fn delivers_from_inject_sendmail_and_smtpd_and_exits_on_sigterm() {
    let home = TestHome::new("send-basic");
    let maildir = common::add_mailbox(&home.path, "joe@localhost");
    let mut send = Proc::send(&home.path, &[]);
    let smtpd = Daemon::start(&home.path, &[]);

    inject_with("inject", &home.path, &["joe"], "Subject: via inject\n\n1\n");
    inject_with(
        "sendmail",
        &home.path,
        &["joe"],
        "Subject: via sendmail\n\n2\n",
    );
    smtp_send(&smtpd, "joe@localhost", "via smtp");

    let mail = wait_for_mail(&send, &maildir, 3);
    let mut subjects: Vec<&str> = mail.iter().filter_map(|m| common::subject(m)).collect();
    subjects.sort();
    assert_eq!(subjects, ["via inject", "via sendmail", "via smtp"]);
    for m in &mail {
        assert!(m.starts_with("Return-Path: <"), "{m}");
        assert!(m.contains("\nDelivered-To: joe@"), "{m}");
    }

    // Three messages, each taken in, delivered and ended.
    send.wait_stdout("three end msg lines", |log| {
        log.matches("\nend msg ").count() == 3
    });
    let log = send.stdout();
    let ids = new_ids(&log);
    assert_eq!(ids.len(), 3, "{log}");
    for id in &ids {
        assert!(log.contains(&format!("info msg {id}: bytes ")), "{log}");
        let n = delivery_of(&log, id).unwrap_or_else(|| panic!("no delivery of {id}:\n{log}"));
        assert!(
            log.contains(&format!("starting delivery {n}: msg {id} to local joe@")),
            "{log}"
        );
        assert!(log.contains(&format!("delivery {n}: success: ")), "{log}");
        assert!(log.contains(&format!("end msg {id}\n")), "{log}");
    }
    assert!(log.contains("status: local 0/"), "{log}");
    assert!(
        common::wait_until(Duration::from_secs(10), || common::queue_files(&home.path)
            .is_empty()),
        "{:?}",
        common::queue_files(&home.path)
    );
    sigterm_exits_0(&mut send);
}

/// users/assign with `+joe-` beside `=joe`, so that `joe-EXT` is joe's
/// `.qmail-EXT` (a mailbox from `sqmail user add` is the exact address
/// only); returns joe's home.
fn give_joe_extensions(home: &Path) -> PathBuf {
    let assign_path = home.join("users/assign");
    let assign = std::fs::read_to_string(&assign_path).unwrap();
    let joe = assign
        .lines()
        .find_map(|l| l.strip_prefix("=joe:"))
        .unwrap_or_else(|| panic!("no joe in {assign}"));
    // user:uid:gid:home:::
    let fields: Vec<&str> = joe.split(':').collect();
    let line = format!(
        "+joe-:{}:{}:{}:{}:-::\n",
        fields[0], fields[1], fields[2], fields[3]
    );
    std::fs::write(
        &assign_path,
        assign.replacen("\n.\n", &format!("\n{line}.\n"), 1),
    )
    .unwrap();
    let out = common::sqmail()
        .args(["newu", "--home"])
        .arg(home)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    PathBuf::from(fields[3])
}

#[test]
fn sigalrm_retries_a_deferred_message_at_once() {
    let home = TestHome::new("send-alrm");
    let maildir = common::add_mailbox(&home.path, "joe@localhost");
    let joe = give_joe_extensions(&home.path);
    // Exits 111 (try again later) the first time, then lets the next line
    // deliver. It runs as joe, in joe's home, which joe may write.
    std::fs::write(
        joe.join(".qmail-flaky"),
        "|if test -e flaky-seen; then exit 0; fi; touch flaky-seen; echo not yet; exit 111\n\
         ./Maildir/\n",
    )
    .unwrap();
    let mut send = Proc::send(&home.path, &[]);
    inject_with(
        "inject",
        &home.path,
        &["joe-flaky"],
        "Subject: flaky\n\nx\n",
    );
    send.wait_for("deferral: not_yet/");
    let log = send.stdout();
    let id = new_ids(&log).pop().unwrap();
    assert!(!log.contains("end msg"), "{log}");
    assert!(common::maildir_messages(&maildir).is_empty());

    // The next retry would be 100 s after the message's birth: a delivery
    // within the wait below is SIGALRM's doing.
    send.signal(libc::SIGALRM);
    let mail = wait_for_mail(&send, &maildir, 1);
    assert_eq!(common::subject(&mail[0]), Some("flaky"));
    send.wait_for(&format!("end msg {id}\n"));
    let log = send.stdout();
    assert_eq!(log.matches("starting delivery").count(), 2, "{log}");
    assert!(log.contains("delivery 2: success: did_1+0+1/"), "{log}");
    sigterm_exits_0(&mut send);
}

/// qmail-local queues a forward as the user it runs as, so the forward's
/// Received line names that uid (the mailbox owner's when send is root).
#[test]
fn a_forward_is_queued_as_the_delivering_user() {
    let home = TestHome::new("send-fwd-uid");
    let maildir = common::add_mailbox(&home.path, "joe@localhost");
    let joe = give_joe_extensions(&home.path);
    std::fs::write(joe.join(".qmail-fwd"), "&joe@localhost\n").unwrap();
    let joe_uid = std::fs::metadata(&joe).map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    let mut send = Proc::send(&home.path, &[]);
    inject_with("inject", &home.path, &["joe-fwd"], "Subject: fwd\n\nx\n");
    let mail = wait_for_mail(&send, &maildir, 1);
    // The forward's Received line comes first, then inject's own.
    let first = mail[0]
        .lines()
        .find(|l| l.starts_with("Received: "))
        .unwrap();
    let by = format!(" invoked by uid {});", joe_uid.unwrap());
    assert!(first.contains(&by), "{}", mail[0]);
    assert!(mail[0].contains("Delivered-To: joe-fwd@"), "{}", mail[0]);
    sigterm_exits_0(&mut send);
}

#[test]
fn sighup_rereads_locals() {
    let home = TestHome::new("send-hup");
    let maildir = common::add_mailbox(&home.path, "joe@localhost");
    // new.example is not local yet: the message goes to the remote
    // channel, to a host that refuses connections, and stays queued.
    home.control("smtproutes", "new.example:[127.0.0.1]:1\n");
    let mut send = Proc::send(&home.path, &[]);
    inject_with(
        "inject",
        &home.path,
        &["joe@new.example"],
        "Subject: before\n\nx\n",
    );
    send.wait_for("info msg ");
    let first = new_ids(&send.stdout()).pop().unwrap();
    assert!(
        common::wait_until(Duration::from_secs(20), || common::queue_files(&home.path)
            .iter()
            .any(|f| f.starts_with("remote/") && f.ends_with(&format!("/{first}")))),
        "{:?}\n{}",
        common::queue_files(&home.path),
        send.output()
    );

    let locals = home.path.join("control/locals");
    let mut text = std::fs::read_to_string(&locals).unwrap();
    text.push_str("new.example\n");
    std::fs::write(&locals, text).unwrap();
    send.signal(libc::SIGHUP);
    send.wait_for("status: reread locals and virtualdomains\n");

    inject_with(
        "inject",
        &home.path,
        &["joe@new.example"],
        "Subject: after\n\ny\n",
    );
    let mail = wait_for_mail(&send, &maildir, 1);
    assert_eq!(common::subject(&mail[0]), Some("after"));
    send.wait_stdout("the second message's end", |log| {
        new_ids(log).len() == 2 && log.contains("\nend msg ")
    });
    let log = send.stdout();
    let second = new_ids(&log).pop().unwrap();
    assert!(
        log.contains(&format!("msg {second} to local joe@new.example\n")),
        "{log}"
    );
    // The first keeps the split it had, as in qmail: remote, deferred.
    let n = delivery_of(&log, &first).unwrap();
    assert!(
        log.contains(&format!(
            "delivery {n}: deferral: Sorry,_I_wasn't_able_to_establish"
        )),
        "{log}"
    );
    assert!(!log.contains(&format!("end msg {first}\n")), "{log}");
    assert!(common::queue_files(&home.path)
        .iter()
        .any(|f| f.starts_with("remote/") && f.ends_with(&format!("/{first}"))));
    sigterm_exits_0(&mut send);
    assert_eq!(common::maildir_messages(&maildir).len(), 1);
}

#[test]
fn the_log_goes_to_qmail_starts_logger() {
    let home = TestHome::new("send-logger");
    let maildir = common::add_mailbox(&home.path, "joe@localhost");
    let logfile = home.path.join("logger-output");
    let logger = format!("exec cat > '{}'", logfile.display());
    let mut send = Proc::send(&home.path, &["./Maildir/", "/bin/sh", "-c", &logger]);
    inject_with("inject", &home.path, &["joe"], "Subject: logged\n\nx\n");
    wait_for_mail(&send, &maildir, 1);
    let read = || std::fs::read_to_string(&logfile).unwrap_or_default();
    assert!(
        common::wait_until(Duration::from_secs(20), || read().contains("\nend msg ")),
        "{}\n{}",
        read(),
        send.output()
    );
    send.signal(libc::SIGTERM);
    let status = send.exit();
    assert!(status.success(), "{status}\n{}", send.output());
    assert!(
        common::wait_until(Duration::from_secs(10), || read()
            .ends_with("status: exiting\n")),
        "{}",
        read()
    );
    let log = read();
    assert!(log.contains("starting delivery 1: msg "), "{log}");
    assert!(log.contains("delivery 1: success: "), "{log}");
    assert_eq!(send.stdout(), "", "everything went to the logger");
}

#[test]
fn a_second_send_on_the_same_home_exits_111_naming_the_lock() {
    let home = TestHome::new("send-lock");
    common::add_mailbox(&home.path, "joe@localhost");
    let mut send = Proc::send(&home.path, &[]);
    // The lock is taken before any message is looked at.
    inject_with("inject", &home.path, &["joe"], "Subject: x\n\nx\n");
    send.wait_for("new msg ");
    let second = common::sqmail()
        .args(["send", "--home"])
        .arg(&home.path)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(111), "{second:?}");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("lock/sendmutex") && err.contains("locked"),
        "{err}"
    );
    assert!(second.stdout.is_empty(), "{second:?}");
    sigterm_exits_0(&mut send);
}
