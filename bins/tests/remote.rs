//! Remote delivery: `sqmail remote` (qmail-remote) and `sqmail send`
//! delivering through it, against Postfix as the receiving MTA and against
//! a scripted server that misbehaves in each way a real one can.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{sqmail, wait_until, Proc, TestHome};
use sqmail_conformance::peers::{Postfix, Unbound};

/// A message with what SMTP must carry intact: a leading dot, a line that
/// is only a dot, 8-bit text, trailing blanks and an empty last line.
const MESSAGE: &[u8] = b"From: joe@here.test\n\
Date: Thu, 3 Dec 2026 10:00:00 +0000\n\
Message-ID: <remote-test@here.test>\n\
Subject: remote \xc3\xa9t\xc3\xa9\n\
\n\
.leading dot\n\
.\n\
trailing blanks   \n\
\n";

/// `sqmail remote` with `message` on stdin, a file as qmail-rspawn gives
/// it: its report, entry by entry.
fn remote(home: &Path, args: &[&str], message: &[u8]) -> Vec<String> {
    let path = home.join("message-in");
    std::fs::write(&path, message).unwrap();
    let out = sqmail()
        .args(["remote", "--home"])
        .arg(home)
        .args(args)
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .unwrap();
    report_of(out)
}

/// [`remote`] with the message through a pipe.
fn remote_piped(home: &Path, args: &[&str], message: &[u8]) -> Vec<String> {
    let mut child = sqmail()
        .args(["remote", "--home"])
        .arg(home)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(message).unwrap();
    report_of(child.wait_with_output().unwrap())
}

fn report_of(out: std::process::Output) -> Vec<String> {
    assert!(out.status.success(), "{out:?}");
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(report.ends_with('\0'), "{report:?}");
    report
        .trim_end_matches('\0')
        .split('\0')
        .map(str::to_string)
        .collect()
}

#[test]
fn remote_delivers_to_postfix_whole() {
    let Some(postfix) = Postfix::start("peer.test", &[]) else {
        return;
    };
    let home = TestHome::new("remote-postfix");
    let port = postfix.port.to_string();
    let report = remote(
        &home.path,
        &[
            "--mx-port",
            &port,
            "[127.0.0.1]",
            "joe@here.test",
            "a@peer.test",
            "b@peer.test",
        ],
        MESSAGE,
    );
    assert_eq!(report.len(), 3, "{report:?}");
    assert_eq!(report[..2], ["r", "r"], "{report:?}");
    assert!(
        report[2].starts_with("K127.0.0.1 accepted message.\nRemote host said: 250 "),
        "{report:?}"
    );
    assert!(wait_until(Duration::from_secs(20), || postfix
        .messages()
        .len()
        == 2));
    for message in postfix.messages() {
        // Postfix adds its trace headers above; below them, every byte.
        assert!(
            message.ends_with(MESSAGE),
            "{}",
            String::from_utf8_lossy(&message)
        );
    }
    // One session carried both recipients (its log line comes at QUIT).
    assert!(wait_until(Duration::from_secs(20), || !postfix
        .sessions()
        .is_empty()));
    assert_eq!(postfix.sessions().len(), 1, "{}", postfix.log());
    assert!(
        postfix.sessions()[0].contains(" rcpt=2 "),
        "{}",
        postfix.log()
    );
}

/// A `test.` zone: peer.test's MX is this machine; the rest fail.
fn zone() -> Vec<String> {
    [
        "test. 3600 IN SOA ns.test. host.test. 1 3600 600 86400 60",
        "peer.test. 300 IN MX 10 mx.peer.test.",
        "peer.test. 300 IN MX 20 backup.peer.test.",
        "mx.peer.test. 300 IN A 127.0.0.1",
        "backup.peer.test. 300 IN A 127.0.0.1",
        "nullmx.test. 300 IN MX 0 .",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn remote_finds_the_mx_and_says_when_there_is_none() {
    let Some(postfix) = Postfix::start("peer.test", &[]) else {
        return;
    };
    let Some(dns) = Unbound::start("test.", &zone()) else {
        return;
    };
    let home = TestHome::new("remote-mx");
    let (dns, port) = (dns.addr.to_string(), postfix.port.to_string());
    let run = |domain: &str| {
        let to = format!("a@{domain}");
        let args = [
            "--dns",
            &dns,
            "--mx-port",
            &port,
            domain,
            "joe@here.test",
            &to,
        ];
        remote(&home.path, &args, MESSAGE)
    };
    let r = run("peer.test");
    assert_eq!(r[0], "r", "{r:?}");
    assert!(r[1].starts_with("K127.0.0.1 accepted message."), "{r:?}");
    assert_eq!(
        run("nowhere.test"),
        ["DSorry, I couldn't find any host named nowhere.test. (#5.1.2)\n"]
    );
    let null = run("nullmx.test");
    assert!(
        null[0].starts_with("DSorry, nullmx.test says it accepts no mail"),
        "{null:?}"
    );
    assert!(wait_until(Duration::from_secs(20), || postfix
        .messages()
        .len()
        == 1));
}

#[test]
fn mail_through_up_goes_by_mx_over_one_connection() {
    let Some(postfix) = Postfix::start("peer.test", &[]) else {
        return;
    };
    let Some(dns) = Unbound::start("test.", &zone()) else {
        return;
    };
    let home = TestHome::new("remote-reuse");
    // One delivery at a time: each finds the last one's connection idle.
    home.control("concurrencyremote", "1\n");
    let smtp = format!("127.0.0.1:{}", common::free_port());
    let mut cmd = sqmail();
    cmd.arg("up")
        .arg("--home")
        .arg(&home.path)
        .args(["--smtp", &smtp, "--dns", &dns.addr.to_string()])
        .args(["--mx-port", &postfix.port.to_string()]);
    for port in [
        "submission",
        "smtps",
        "pop3",
        "pop3s",
        "qmtp",
        "qmqp",
        "qmtps",
    ] {
        cmd.args([format!("--{port}"), "none".into()]);
    }
    let mut send = Proc::spawn(cmd);
    send.wait_for("try it:");
    const COUNT: usize = 10;
    for i in 0..COUNT {
        let mut cmd = sqmail();
        cmd.args(["inject", "--home"]).arg(&home.path).args([
            "-f",
            "joe@here.test",
            &format!("r{i}@peer.test"),
        ]);
        common::run_with_input(cmd, &format!("Subject: m{i}\n\nbody {i}\n.\n"));
    }
    assert!(
        wait_until(Duration::from_secs(30), || postfix.messages().len()
            == COUNT),
        "{}\n{}",
        send.output(),
        postfix.log()
    );
    send.signal(libc::SIGTERM);
    send.exit();
    let log = send.stdout();
    assert_eq!(
        log.matches(": success: 127.0.0.1_accepted_message./")
            .count(),
        COUNT,
        "{log}"
    );
    let mut subjects: Vec<String> = postfix
        .messages()
        .iter()
        .map(|m| {
            let m = String::from_utf8_lossy(m);
            assert!(m.contains("\n\nbody ") && m.ends_with("\n.\n"), "{m}");
            common::subject(&m).unwrap().to_string()
        })
        .collect();
    subjects.sort();
    let mut want: Vec<String> = (0..COUNT).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(subjects, want);
    // Far fewer sessions than messages: each carried several. (A session
    // is logged when it ends: send's exit closed the last one.)
    assert!(
        wait_until(Duration::from_secs(20), || {
            postfix
                .sessions()
                .iter()
                .filter_map(|s| mails_of(s))
                .sum::<usize>()
                == COUNT
        }),
        "{}",
        postfix.log()
    );
    let sessions = postfix.sessions();
    assert!(sessions.len() <= COUNT / 2, "{sessions:#?}");
}

/// The MAIL commands of one Postfix session summary.
fn mails_of(session: &str) -> Option<usize> {
    session
        .split(" mail=")
        .nth(1)?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// What the scripted server does at one point of a session.
#[derive(Clone)]
enum Act {
    Say(&'static str),
    /// Closes the connection (mid-DATA: after reading some of the body).
    Close,
    /// Says nothing until the client gives up.
    Stall,
}

/// A scripted SMTP server: `script(command)` decides each reply, where
/// the command is the client's line, `<greeting>`, or `.` for the end of
/// the data. It records every session's lines and messages.
struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    fn start(script: impl Fn(&str) -> Act + Send + Sync + 'static) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let script = Arc::new(script);
        thread::spawn(move || {
            for stream in listener.incoming().take(20) {
                let (log, script) = (Arc::clone(&log), Arc::clone(&script));
                thread::spawn(move || serve(stream.unwrap(), &*script, &log));
            }
        });
        Scripted { addr, seen }
    }

    fn seen(&self) -> String {
        self.seen.lock().unwrap().join("")
    }
}

fn serve(stream: TcpStream, script: &dyn Fn(&str) -> Act, log: &Mutex<Vec<String>>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut out = stream.try_clone().unwrap();
    let mut lines = BufReader::new(stream);
    let act = |what: &str, out: &mut TcpStream| -> bool {
        match script(what) {
            Act::Say(reply) => out.write_all(format!("{reply}\r\n").as_bytes()).is_ok(),
            Act::Close => false,
            Act::Stall => {
                thread::sleep(Duration::from_secs(4));
                false
            }
        }
    };
    if !act("<greeting>", &mut out) {
        return;
    }
    let mut line = String::new();
    while {
        line.clear();
        lines.read_line(&mut line).unwrap_or(0) > 0
    } {
        log.lock().unwrap().push(line.clone());
        let command = line.trim_end().to_string();
        if !act(&command, &mut out) {
            return;
        }
        if command.eq_ignore_ascii_case("DATA") {
            let mut body = String::new();
            loop {
                let mut l = String::new();
                if lines.read_line(&mut l).unwrap_or(0) == 0 {
                    return;
                }
                if l == ".\r\n" {
                    break;
                }
                body.push_str(&l);
                if matches!(script("<body>"), Act::Close) {
                    return;
                }
            }
            log.lock()
                .unwrap()
                .push(format!("<message>{body}</message>\n"));
            if !act(".", &mut out) {
                return;
            }
        }
        if command.eq_ignore_ascii_case("QUIT") {
            return;
        }
    }
}

/// A server that takes everything, changed by `special` where it says.
fn server(special: impl Fn(&str) -> Option<Act> + Send + Sync + 'static) -> Scripted {
    Scripted::start(move |c| {
        special(c).unwrap_or(match c {
            "<greeting>" => Act::Say("220 fake.test ESMTP"),
            c if c.starts_with("EHLO") => {
                Act::Say("250-fake.test\r\n250-PIPELINING\r\n250 8BITMIME")
            }
            "DATA" => Act::Say("354 go ahead"),
            "QUIT" => Act::Say("221 bye"),
            "<body>" => Act::Say(""),
            _ => Act::Say("250 ok"),
        })
    })
}

fn remote_to(home: &TestHome, peer: &Scripted, recipients: &[&str], message: &[u8]) -> Vec<String> {
    let port = peer.addr.port().to_string();
    let mut args = vec!["--mx-port", &port, "[127.0.0.1]", "joe@here.test"];
    args.extend(recipients);
    remote(&home.path, &args, message)
}

#[test]
fn a_message_on_a_pipe_goes_out_whole() {
    // Read twice (size, then data), so it is spooled to a file first; a
    // large one shows that nothing is cut.
    let home = TestHome::new("remote-pipe");
    let peer = server(|_| None);
    let mut message = MESSAGE.to_vec();
    for i in 0..20_000 {
        message.extend_from_slice(format!("line {i} of a long message\n").as_bytes());
    }
    let port = peer.addr.port().to_string();
    let report = remote_piped(
        &home.path,
        &[
            "--mx-port",
            &port,
            "[127.0.0.1]",
            "joe@here.test",
            "a@x.test",
        ],
        &message,
    );
    assert_eq!(report[0], "r", "{report:?}");
    assert!(
        report[1].starts_with("K127.0.0.1 accepted message."),
        "{report:?}"
    );
    let seen = peer.seen();
    assert_eq!(seen.matches(" of a long message\r\n").count(), 20_000);
    assert!(seen.contains("\r\nline 19999 of a long message\r\n"));
}

#[test]
fn each_recipient_gets_its_own_result() {
    let home = TestHome::new("remote-rcpts");
    let peer = server(|c| match c {
        c if c.contains("<later@") => Some(Act::Say("451 4.2.1 try later")),
        c if c.contains("<gone@") => Some(Act::Say("550 5.1.1 no such user")),
        _ => None,
    });
    let report = remote_to(
        &home,
        &peer,
        &["ok@x.test", "later@x.test", "gone@x.test"],
        MESSAGE,
    );
    assert_eq!(report[0], "r");
    assert_eq!(
        report[1],
        "s127.0.0.1 does not like recipient.\nRemote host said: 451 4.2.1 try later\n"
    );
    assert!(report[2].starts_with("h127.0.0.1 does not like recipient.\nRemote host said: 550"));
    assert!(
        report[3].starts_with("K127.0.0.1 accepted message."),
        "{report:?}"
    );
    let seen = peer.seen();
    assert!(
        seen.contains("MAIL FROM:<joe@here.test> BODY=8BITMIME\r\n"),
        "{seen}"
    );
    // Dot-stuffed on the wire, as RFC 5321 4.5.2 wants.
    assert!(seen.contains("<message>From: joe@here.test\r\n"), "{seen}");
    assert!(seen.contains("\r\n..leading dot\r\n..\r\n"), "{seen}");
}

#[test]
fn permanent_and_temporary_failures_of_the_whole_message() {
    let home = TestHome::new("remote-faults");
    let greeting = server(|c| (c == "<greeting>").then_some(Act::Say("554 go away")));
    let r = remote_to(&home, &greeting, &["a@x.test"], MESSAGE);
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(
        r[0].starts_with("ZConnected to 127.0.0.1 but greeting failed."),
        "{r:?}"
    );

    let sender = server(|c| c.starts_with("MAIL").then_some(Act::Say("451 busy")));
    let r = remote_to(&home, &sender, &["a@x.test"], MESSAGE);
    assert!(
        r[0].starts_with("ZConnected to 127.0.0.1 but sender was rejected."),
        "{r:?}"
    );

    let after = server(|c| (c == ".").then_some(Act::Say("554 5.6.0 spam")));
    let r = remote_to(&home, &after, &["a@x.test"], MESSAGE);
    assert_eq!(r[0], "r");
    assert!(
        r[1].starts_with("D127.0.0.1 failed after I sent the message."),
        "{r:?}"
    );

    let partial = server(|_| None);
    let r = remote_to(
        &home,
        &partial,
        &["a@x.test"],
        b"Subject: x\n\nno final newline",
    );
    assert_eq!(
        r.last().unwrap(),
        "DSMTP cannot transfer messages with partial final lines. (#5.6.2)\n"
    );
    assert!(!partial.seen().contains("<message>"), "{}", partial.seen());
}

#[test]
fn a_size_limit_too_small_fails_the_message_unsent() {
    let home = TestHome::new("remote-size");
    let peer = server(|c| {
        c.starts_with("EHLO")
            .then_some(Act::Say("250-fake.test\r\n250-PIPELINING\r\n250 SIZE 20"))
    });
    let r = remote_to(&home, &peer, &["a@x.test"], MESSAGE);
    assert_eq!(r.len(), 1, "{r:?}");
    assert!(r[0].starts_with('D') && r[0].contains("(#5.3.4)"), "{r:?}");
    assert!(!peer.seen().contains("MAIL FROM"), "{}", peer.seen());
}

#[test]
fn a_peer_that_dies_or_stalls_is_a_deferral() {
    let home = TestHome::new("remote-dies");
    home.control("timeoutremote", "1\n");
    let dies = server(|c| (c == "<body>").then_some(Act::Close));
    let r = remote_to(&home, &dies, &["a@x.test"], MESSAGE);
    assert!(r.last().unwrap().starts_with('Z'), "{r:?}");
    let stalls = server(|c| (c == ".").then_some(Act::Stall));
    let r = remote_to(&home, &stalls, &["a@x.test"], MESSAGE);
    assert!(r.last().unwrap().starts_with('Z'), "{r:?}");
    let nobody = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port().to_string()
    };
    let r = remote(
        &home.path,
        &["--mx-port", &nobody, "[127.0.0.1]", "j@h.test", "a@x.test"],
        MESSAGE,
    );
    assert_eq!(
        r,
        ["ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n"]
    );
}

/// The queue's side of faults: deferred until the peer is well, then
/// delivered once; a refusal bounces to the sender.
#[test]
fn send_defers_then_delivers_once_and_bounces_refusals() {
    let home = TestHome::new("remote-send-faults");
    let maildir = common::add_mailbox(&home.path, "joe@localhost");
    let healthy = Arc::new(Mutex::new(false));
    let well = Arc::clone(&healthy);
    let peer = server(move |c| {
        if c.contains("<gone@") {
            return Some(Act::Say("550 5.1.1 no such user"));
        }
        (c == "<body>" && !*well.lock().unwrap()).then_some(Act::Close)
    });
    home.control(
        "smtproutes",
        &format!("x.test:127.0.0.1:{}\n", peer.addr.port()),
    );
    let mut send = Proc::send(&home.path, &[]);
    let mut cmd = sqmail();
    cmd.args(["inject", "--home"]).arg(&home.path).args([
        "-f",
        "joe@localhost",
        "a@x.test",
        "gone@x.test",
    ]);
    common::run_with_input(cmd, "Subject: faults\n\nbody\n");
    send.wait_stdout("the deferral and the refusal", |log| {
        log.contains(": deferral: ") && log.contains(": failure: ")
    });
    *healthy.lock().unwrap() = true;
    // ALRM retries what waits for a retry when it comes; the deferral's
    // retry time may still be on its way to disk, so ask until it is.
    assert!(
        wait_until(Duration::from_secs(20), || {
            send.signal(libc::SIGALRM);
            std::thread::sleep(Duration::from_millis(200));
            send.stdout().contains(": success: ")
        }),
        "{}",
        send.output()
    );
    let bounce = common::maildir_messages(&maildir);
    assert!(
        wait_until(Duration::from_secs(20), || common::maildir_messages(
            &maildir
        )
        .len()
            == 1),
        "{bounce:?}\n{}",
        send.output()
    );
    let bounce = &common::maildir_messages(&maildir)[0];
    assert!(
        bounce.contains("<gone@x.test>:\n127.0.0.1 does not like recipient."),
        "{bounce}"
    );
    send.signal(libc::SIGTERM);
    send.exit();
    let seen = peer.seen();
    assert_eq!(seen.matches("<message>").count(), 1, "{seen}");
}

#[test]
fn tcpto_shows_and_tcpok_clears_timeouts() {
    let home = TestHome::new("remote-tcpto");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // qmail's layout: address, count, then the time, little endian.
    let mut record = vec![192, 0, 2, 7, 3, 0, 0, 0];
    record.extend((now - 30).to_le_bytes());
    std::fs::write(home.path.join("queue/lock/tcpto"), &record).unwrap();
    let run = |name: &str| {
        let out = sqmail()
            .arg(name)
            .arg("--home")
            .arg(&home.path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let shown = run("tcpto");
    assert!(
        shown.starts_with("192.0.2.7 timed out 3")
            && shown.ends_with("seconds ago; # recent timeouts: 3\n"),
        "{shown}"
    );
    assert_eq!(run("tcpok"), "");
    assert_eq!(run("tcpto"), "");
    let mut kept = Vec::new();
    std::fs::File::open(home.path.join("queue/lock/tcpto"))
        .unwrap()
        .read_to_end(&mut kept)
        .unwrap();
    assert_eq!(kept[4], 0, "the count is cleared, the record kept");
}
