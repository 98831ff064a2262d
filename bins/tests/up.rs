//! `sqmail up` as a real process: it makes its home, serves SMTP on a
//! loopback port with every other service off, delivers to the mailboxes
//! it made, stops cleanly on SIGINT, and a second run reuses the home and
//! delivers what was queued while it was down.

mod common;

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{code, free_port, sqmail, Client, Proc};

/// A directory for `sqmail up` to make, removed when dropped.
struct UpHome {
    path: PathBuf,
}

impl UpHome {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("sqmail-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        UpHome { path }
    }
}

impl Drop for UpHome {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `sqmail up` on `home` with SMTP on `port`, pop3s "on" (reserved: only
/// printed) at `reserved` and every other service `none`; returns once
/// SMTP answers.
fn up(home: &Path, port: u16, reserved: u16) -> Proc {
    let mut cmd = sqmail();
    cmd.arg("up")
        .arg("--home")
        .arg(home)
        .args(["--smtp", &format!("127.0.0.1:{port}")])
        .args(["--pop3s", &format!("127.0.0.1:{reserved}")]);
    for off in ["submission", "smtps", "pop3", "qmtp", "qmqp", "qmtps"] {
        cmd.args([&format!("--{off}"), "none"]);
    }
    cmd.env_remove("SQMAIL_HOME")
        .env_remove("QMAILQUEUE")
        .env_remove("QMAILINJECT");
    let proc = Proc::spawn(cmd);
    proc.wait_for("\nstop:  Ctrl-C");
    assert!(
        common::wait_until(Duration::from_secs(20), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "smtp on {port}\n{}",
        proc.output()
    );
    proc
}

/// The summary's mailboxes: address → Maildir.
fn mailboxes(summary: &str) -> BTreeMap<String, PathBuf> {
    summary
        .lines()
        .skip_while(|l| !l.starts_with("  mailboxes "))
        .skip(1)
        .take_while(|l| l.starts_with("              "))
        .map(|l| {
            let mut words = l.split_whitespace();
            let address = words.next().unwrap().to_string();
            (address, PathBuf::from(words.next().unwrap()))
        })
        .collect()
}

fn subjects(maildir: &Path) -> Vec<String> {
    let mut s: Vec<String> = common::maildir_messages(maildir)
        .iter()
        .filter_map(|m| common::subject(m).map(str::to_string))
        .collect();
    s.sort();
    s
}

/// Waits until `maildir` holds a message with each of `wanted` subjects.
fn wait_for_subjects(proc: &Proc, maildir: &Path, wanted: &[&str]) {
    let ok = common::wait_until(Duration::from_secs(20), || {
        let have = subjects(maildir);
        wanted.iter().all(|w| have.iter().any(|h| h == w))
    });
    assert!(
        ok,
        "wanted {wanted:?} in {}, have {:?}\n{}",
        maildir.display(),
        subjects(maildir),
        proc.output()
    );
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Our own client: refusals for an unknown local user and for another
/// domain, then one message to `to`.
fn own_client(port: u16, to: &str) {
    let mut c = Client::connect(([127, 0, 0, 1], port).into()).unwrap();
    assert_eq!(code(&c.reply().unwrap()).unwrap(), 220);
    assert_eq!(c.cmd("EHLO client.test").unwrap(), 250);
    assert_eq!(c.cmd("MAIL FROM:<alice@client.test>").unwrap(), 250);
    c.send("RCPT TO:<nobody-here@localhost>\r\n").unwrap();
    let unknown = c.reply().unwrap();
    assert!(unknown.starts_with("550 5.1.1 "), "{unknown}");
    c.send("RCPT TO:<eve@elsewhere.example>\r\n").unwrap();
    let relay = c.reply().unwrap();
    assert!(relay.starts_with("553 "), "relays for no one: {relay}");
    assert_eq!(c.cmd(&format!("RCPT TO:<{to}>")).unwrap(), 250);
    // An alias without a mailbox, delivered to the postmaster.
    assert_eq!(c.cmd("RCPT TO:<root@localhost>").unwrap(), 250);
    assert_eq!(c.cmd("DATA").unwrap(), 354);
    c.send("Subject: own client\r\n\r\nhello\r\n.\r\n").unwrap();
    assert_eq!(code(&c.reply().unwrap()).unwrap(), 250);
    assert_eq!(c.cmd("QUIT").unwrap(), 221);
}

fn smtplib(port: u16, to: &str) {
    let script = format!(
        r#"
import smtplib
with smtplib.SMTP("127.0.0.1", {port}, timeout=10) as s:
    s.ehlo("client.test")
    refused = s.sendmail("alice@client.test", ["{to}"], "Subject: smtplib\r\n\r\nhello\r\n")
    assert refused == {{}}, refused
    for rcpt, want in [("nobody-here@localhost", 550), ("eve@elsewhere.example", 553)]:
        try:
            s.sendmail("alice@client.test", [rcpt], "Subject: no\r\n\r\nno\r\n")
            raise SystemExit("accepted " + rcpt)
        except smtplib.SMTPRecipientsRefused as e:
            assert e.recipients[rcpt][0] == want, e.recipients
"#
    );
    let status = Command::new("python3")
        .arg("-c")
        .arg(script)
        .status()
        .unwrap();
    assert!(status.success(), "smtplib: {status}");
}

fn swaks(port: u16, to: &str) {
    let out = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{port}"), "--to", to])
        .args(["--from", "alice@client.test", "--helo", "client.test"])
        .args(["--header", "Subject: swaks", "--timeout", "10"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "swaks: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `sqmail PROGRAM ARGS` with SQMAIL_HOME=`home` and `message` on stdin.
fn inject_env(program: &str, home: &Path, args: &[&str], message: &str) {
    let mut cmd = sqmail();
    cmd.arg(program).args(args).env("SQMAIL_HOME", home);
    common::run_with_input(cmd, message);
}

#[test]
fn up_serves_smtp_delivers_stops_and_reuses_its_home() {
    let home = UpHome::new("up");
    let (port, reserved) = (free_port(), free_port());
    let mut first = up(&home.path, port, reserved);

    // The summary.
    let summary = first.stdout();
    let h = home.path.display().to_string();
    assert!(
        summary.starts_with(&format!("sqmail up: created {h}\n")),
        "{summary}"
    );
    assert!(
        summary.contains(&format!(
            "\n  smtp        127.0.0.1:{port}  mail for the local domains; relays for no one\n"
        )),
        "{summary}"
    );
    for off in ["submission", "smtps", "pop3", "qmtp", "qmqp", "qmtps"] {
        assert!(
            summary.contains(&format!("\n  {off:<11} off\n")),
            "{off}: {summary}"
        );
    }
    assert!(
        summary.contains(&format!(
            "\n  pop3s       127.0.0.1:{reserved}  reserved (not built yet)\n"
        )),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("\n  queue       {h}/queue\n")),
        "{summary}"
    );
    let boxes = mailboxes(&summary);
    let postmaster = boxes
        .get("postmaster@localhost")
        .unwrap_or_else(|| panic!("no postmaster mailbox: {summary}"))
        .clone();
    assert_eq!(
        postmaster,
        std::fs::canonicalize(&home.path)
            .unwrap()
            .join("mailboxes/postmaster@localhost/Maildir")
    );
    // The login's mailbox (postmaster's for root), as `try it:` names it.
    let who = summary
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix(&format!("swaks --server 127.0.0.1:{port} --to "))
        })
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `try it` line: {summary}"))
        .to_string();
    let who_box = boxes
        .get(&who)
        .unwrap_or_else(|| panic!("{who} is not a mailbox: {summary}"))
        .clone();

    // Mail over SMTP from three clients, and from sendmail to root.
    let mut to_who = vec!["own client"];
    own_client(port, &who);
    if have("python3") {
        smtplib(port, &who);
        to_who.push("smtplib");
    } else {
        eprintln!("note: python3 is not installed; smtplib not tried");
    }
    let mut to_postmaster = vec!["to root", "own client"];
    if have("swaks") {
        swaks(port, "postmaster@localhost");
        // One recipient with a Maildir: delivered before its 250, so
        // already there when swaks has finished.
        assert!(
            subjects(&postmaster).contains(&"swaks".to_string()),
            "{:?}\n{}",
            subjects(&postmaster),
            first.output()
        );
        to_postmaster.push("swaks");
    } else {
        eprintln!("note: swaks is not installed (Debian package swaks); not tried");
    }
    inject_env("sendmail", &home.path, &["root"], "Subject: to root\n\nx\n");
    wait_for_subjects(&first, &who_box, &to_who);
    wait_for_subjects(&first, &postmaster, &to_postmaster);

    first.signal(libc::SIGINT);
    let status = first.exit();
    assert!(status.success(), "{status}\n{}", first.output());
    let out = first.stdout();
    assert!(
        out.ends_with(&format!(
            "sqmail up: stopped; everything queued stays in {h}\n"
        )),
        "{}",
        first.output()
    );
    assert!(out.contains("\nstatus: exiting\n"), "{out}");

    // Queued while up is down, delivered by the next run.
    inject_env(
        "inject",
        &home.path,
        &["postmaster"],
        "Subject: while down\n\nx\n",
    );
    assert!(!common::queue_files(&home.path).is_empty());
    let mut second = up(&home.path, port, reserved);
    assert!(
        second
            .stdout()
            .starts_with(&format!("sqmail up: reusing {h}\n")),
        "{}",
        second.output()
    );
    assert_eq!(mailboxes(&second.stdout()), boxes);
    wait_for_subjects(&second, &postmaster, &["while down"]);
    second.signal(libc::SIGTERM);
    let status = second.exit();
    assert!(status.success(), "{status}\n{}", second.output());
    assert!(second.stdout().contains("sqmail up: stopped;"));
    assert!(
        common::queue_files(&home.path).is_empty(),
        "{:?}",
        common::queue_files(&home.path)
    );
    // Nothing was delivered twice, and nothing went astray.
    let mut all: Vec<String> = subjects(&postmaster);
    if who_box != postmaster {
        all.extend(subjects(&who_box));
    }
    all.sort();
    let mut want: Vec<&str> = to_who.iter().chain(&to_postmaster).copied().collect();
    want.push("while down");
    want.sort();
    assert_eq!(all, want);
}

/// A 250 from `sqmail up` is a promise too, now that it delivers before
/// answering: killed with SIGKILL at random moments, it must have every
/// acknowledged message in the mailbox (or queued, delivered by the next
/// run), whole, and never a partial one in `new/`.
#[test]
fn up_killed_at_random_loses_no_acknowledged_message() {
    use std::sync::{Arc, Mutex};

    let home = UpHome::new("up-crash");
    let (port, reserved) = (free_port(), free_port());
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut seed = common::kill_seed();
    let mut maildir = PathBuf::new();
    for round in 0..4 {
        let mut proc = up(&home.path, port, reserved);
        maildir = mailboxes(&proc.stdout())["postmaster@localhost"].clone();
        let rcpt = "postmaster@localhost";
        common::load_then_kill(addr, rcpt, round, 4, &acked, &mut seed, || proc.kill());
    }
    // One more run delivers whatever went into the queue. (A kill leaves
    // the mess/N of a message being written or just delivered, which
    // the cleanup pass removes after 36 hours, as after qmail-queue.)
    let mut last = up(&home.path, port, reserved);
    let queued = || -> Vec<String> {
        common::queue_files(&home.path)
            .into_iter()
            .filter(|f| !f.starts_with("mess/"))
            .collect()
    };
    let drained = common::wait_until(Duration::from_secs(20), || queued().is_empty());
    last.signal(libc::SIGTERM);
    assert!(last.exit().success(), "{}", last.output());
    assert!(drained, "{:?}", queued());

    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 4,
        "the load reached the server ({})",
        acked.len()
    );
    let mut delivered = std::collections::HashSet::new();
    for text in common::maildir_messages(&maildir) {
        delivered.insert(common::whole_message_id(&text));
    }
    for id in &acked {
        assert!(delivered.contains(id), "message {id} got 250 and was lost");
    }
    eprintln!(
        "{} messages acknowledged across 4 kills, {} delivered",
        acked.len(),
        delivered.len()
    );
}
