//! `sqmail smtpd` end to end: real clients over real sockets and pipes,
//! checked against the queue files they leave.

mod common;

use std::process::Command;

use common::{code, Client, Daemon, TestHome};

#[test]
fn python_smtplib_sends_to_the_daemon() {
    let home = TestHome::new("smtplib");
    home.control("rcpthosts", "example.org\n");
    let daemon = Daemon::start(&home.path, &[]);
    let script = format!(
        r#"
import smtplib
with smtplib.SMTP("127.0.0.1", {port}, timeout=10) as s:
    code, caps = s.ehlo("client.test")
    assert code == 250 and s.has_extn("pipelining") and s.has_extn("8bitmime"), caps
    for i in range(5):
        msg = "Subject: test %d\r\n\r\nhello %d\r\n.leading dot\r\n" % (i, i)
        refused = s.sendmail("alice@client.test", ["bob@example.org", "carol@example.org"], msg)
        assert refused == {{}}, refused
    try:
        s.sendmail("alice@client.test", ["eve@elsewhere.test"], "Subject: relay\r\n\r\nno\r\n")
        raise SystemExit("relaying was allowed")
    except smtplib.SMTPRecipientsRefused as e:
        assert e.recipients["eve@elsewhere.test"][0] == 553, e.recipients
"#,
        port = daemon.addr.port()
    );
    let status = Command::new("python3")
        .arg("-c")
        .arg(script)
        .status()
        .expect("python3 runs");
    assert!(status.success());
    let queued = home.queued();
    assert_eq!(queued.len(), 5);
    for (envelope, text) in &queued {
        assert!(
            envelope.iter().any(|r| r == "Falice@client.test"),
            "{envelope:?}"
        );
        assert!(envelope.iter().any(|r| r == "Tbob@example.org"));
        assert!(envelope.iter().any(|r| r == "Tcarol@example.org"));
        assert!(text.starts_with("Received: (qmail "), "{text}");
        assert!(
            text.contains("\nReceived: from unknown (HELO client.test) (127.0.0.1)\n"),
            "{text}"
        );
        assert!(
            text.contains("\n.leading dot\n"),
            "dots unstuffed, LF line ends: {text}"
        );
        assert!(!text.contains('\r'));
    }
}

#[test]
fn ucspi_mode_reads_the_tcpserver_environment() {
    let home = TestHome::new("ucspi");
    home.control("rcpthosts", "example.org\n");
    let (out, ok) = common::ucspi(
        &home.path,
        &[
            ("TCPREMOTEIP", "192.0.2.7"),
            ("TCPREMOTEHOST", "client.example.net"),
            ("TCPLOCALHOST", "mx.example.org"),
            ("RELAYCLIENT", ""),
        ],
        b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@relayed.test>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n",
    );
    assert!(ok);
    let codes: Vec<u16> = out
        .lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(|l| code(l).unwrap())
        .collect();
    assert_eq!(codes, [220, 250, 250, 250, 354, 250, 221], "{out}");
    let queued = home.queued();
    assert_eq!(queued.len(), 1);
    assert!(
        queued[0].0.contains(&"Tx@relayed.test".to_string()),
        "RELAYCLIENT lets it relay"
    );
    assert!(queued[0].1.contains("Received: from client.example.net (HELO c) (192.0.2.7)\n  by mx.example.org with ESMTP;"), "{}", queued[0].1);
}

#[test]
fn qmailqueue_names_the_injection_program() {
    let home = TestHome::new("qmailqueue");
    let saved = home.path.join("saved");
    let script = home.path.join("fake-qq");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat > {0}.msg\ncat <&1 > {0}.env\nexit 0\n",
            saved.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (out, _) = common::ucspi(
        &home.path,
        &[
            ("QMAILQUEUE", script.to_str().unwrap()),
            ("TCPREMOTEIP", "127.0.0.1"),
        ],
        b"HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<postmaster>\r\nDATA\r\nbody\r\n.\r\nQUIT\r\n",
    );
    assert!(out.contains("\r\n250 2.0.0 ok "), "{out}");
    let msg = std::fs::read_to_string(saved.with_extension("msg")).unwrap();
    assert!(msg.ends_with("\nbody\n"), "{msg}");
    let env = std::fs::read(saved.with_extension("env")).unwrap();
    assert_eq!(env, b"Fa@b.c\0Tpostmaster\0\0");
    assert!(home.queued().is_empty());
}

#[test]
fn tcprules_deny_and_relayclient() {
    let home = TestHome::new("rules");
    home.control("rcpthosts", "example.org\n");
    let rules = home.path.join("rules.cdb");
    let write_rules = |text: &str| {
        let entries = sqmail_core::tcprules::compile(text).unwrap();
        let tmp = home.path.join("rules.tmp");
        let mut writer = cdb::CDBWriter::create(tmp.to_str().unwrap()).unwrap();
        for (k, v) in entries {
            writer.add(&k, &v).unwrap();
        }
        writer.finish().unwrap();
        std::fs::rename(&tmp, &rules).unwrap();
    };
    write_rules("127.0.0.1:allow,RELAYCLIENT=\"\",DATABYTES=\"1000\"\n:deny\n");
    let daemon = Daemon::start(&home.path, &["-x", rules.to_str().unwrap()]);
    let mut c = Client::connect(daemon.addr).unwrap();
    assert_eq!(code(&c.reply().unwrap()).unwrap(), 220);
    c.send("EHLO c\r\n").unwrap();
    let ehlo = c.reply().unwrap();
    assert!(
        ehlo.contains("250-SIZE 1000\r\n"),
        "DATABYTES from the rules: {ehlo}"
    );
    assert_eq!(c.cmd("MAIL FROM:<a@b.c>").unwrap(), 250);
    assert_eq!(
        c.cmd("RCPT TO:<anyone@relayed.test>").unwrap(),
        250,
        "RELAYCLIENT from the rules"
    );
    drop(c);
    // The cdb is read per connection, as tcpserver does: a new rule applies at once.
    write_rules("127.0.0.1:deny\n");
    let mut c = Client::connect(daemon.addr).unwrap();
    assert_eq!(
        c.reply().unwrap(),
        "",
        "denied connections are closed without a word"
    );
}

#[test]
fn swaks_delivers_and_is_refused_relaying() {
    let home = TestHome::new("swaks");
    home.control("rcpthosts", "example.org\n");
    let daemon = Daemon::start(&home.path, &[]);
    let server = daemon.addr.to_string();
    let swaks = |to: &str| {
        Command::new("swaks")
            .args([
                "--server",
                &server,
                "--from",
                "alice@client.test",
                "--to",
                to,
            ])
            .args([
                "--helo",
                "client.test",
                "--body",
                "from swaks",
                "--timeout",
                "10",
            ])
            .output()
            .expect("swaks is installed (Debian package swaks)")
    };
    let ok = swaks("bob@example.org");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let refused = swaks("eve@elsewhere.test");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stdout).contains("<** 553 5.7.1"));
    let queued = home.queued();
    assert_eq!(queued.len(), 1);
    assert!(queued[0].1.contains("\n\nfrom swaks\n"), "{}", queued[0].1);
}

#[test]
fn sigterm_stops_the_daemon_cleanly() {
    let home = TestHome::new("sigterm");
    home.control("rcpthosts", "example.org\n");
    let mut daemon = Daemon::start(&home.path, &[]);
    let mut c = Client::connect(daemon.addr).unwrap();
    assert_eq!(code(&c.reply().unwrap()).unwrap(), 220);
    assert_eq!(c.cmd("QUIT").unwrap(), 221);
    let kill = Command::new("kill")
        .args(["-TERM", &daemon.child.id().to_string()])
        .status();
    assert!(kill.unwrap().success());
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "smtpd did not stop on SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(Client::connect(daemon.addr).is_err(), "listener closed");
}
