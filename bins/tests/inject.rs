//! `sqmail inject` and `sqmail sendmail` end to end: a message on stdin,
//! checked against the queue files they leave.

mod common;

use std::io::Write;
use std::process::{Output, Stdio};

use common::{sqmail, TestHome};
use sqmail_core::inject::{inject, Request, Settings};

fn run(home: &TestHome, program: &str, args: &[&str], env: &[(&str, &str)], input: &str) -> Output {
    let mut cmd = sqmail();
    cmd.arg(program)
        .arg("--home")
        .arg(&home.path)
        .args(args)
        .envs(env.iter().copied());
    common::output_with_input(&mut cmd, input)
}

fn home(name: &str) -> TestHome {
    let home = TestHome::new(name);
    home.control("me", "mx.example.org\n");
    home.control("defaultdomain", "example.org\n");
    home
}

#[test]
fn inject_queues_with_completed_header() {
    let home = home("inject-ok");
    let out = run(
        &home,
        "inject",
        &["-f", "robot", "bob", "carol@elsewhere.test"],
        &[
            ("QMAILUSER", "alice"),
            ("QMAILNAME", "Alice A."),
            ("QMAILHOST", "example.org"),
        ],
        "Subject: hello\nBcc: hidden@x.test\n\nbody\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let queued = home.queued();
    assert_eq!(queued.len(), 1);
    let (envelope, text) = &queued[0];
    assert!(
        envelope.iter().any(|r| r == "Frobot@mx.example.org"),
        "{envelope:?}"
    );
    assert!(
        envelope.iter().any(|r| r == "Tbob@mx.example.org"),
        "{envelope:?}"
    );
    assert!(
        envelope.iter().any(|r| r == "Tcarol@elsewhere.test"),
        "{envelope:?}"
    );
    assert!(
        !envelope.iter().any(|r| r.contains("hidden")),
        "{envelope:?}"
    );
    assert!(text.starts_with("Received: (qmail "), "{text}");
    assert!(text.contains("\nDate: "), "{text}");
    assert!(text.contains(".qmail@mx.example.org>\n"), "{text}");
    assert!(
        text.contains("\nFrom: \"Alice A.\" <alice@example.org>\n"),
        "{text}"
    );
    assert!(
        text.contains("\nCc: recipient list not shown: ;\n"),
        "{text}"
    );
    assert!(text.ends_with("Subject: hello\n\nbody\n"), "{text}");
    assert!(!text.contains("Bcc"), "{text}");
}

#[test]
fn sendmail_t_reads_recipients_from_the_header() {
    let home = home("sendmail-t");
    let out = run(
        &home,
        "sendmail",
        &["-t", "-oi", "-odb", "-F", "Cron Daemon", "-f", "root@host.example.org"],
        &[],
        "To: admin, Ops <ops@x.test>\nCc: team: a@x.test, b@x.test;\nBcc: audit\nSubject: cron\n\nout\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let queued = home.queued();
    assert_eq!(queued.len(), 1);
    let (envelope, text) = &queued[0];
    let mut rcpts: Vec<&str> = envelope
        .iter()
        .filter_map(|r| r.strip_prefix('T'))
        .collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            "a@x.test",
            "admin@mx.example.org",
            "audit@mx.example.org",
            "b@x.test",
            "ops@x.test"
        ]
    );
    assert!(
        envelope.iter().any(|r| r == "Froot@host.example.org"),
        "{envelope:?}"
    );
    assert!(
        text.contains("\nFrom: \"Cron Daemon\" <root@host.example.org>\n"),
        "{text}"
    );
    assert!(
        text.contains("\nTo: admin@mx.example.org, Ops <ops@x.test>\n"),
        "{text}"
    );
    assert!(!text.contains("audit"), "{text}");
}

/// `sqmail inject` with an empty environment, fed `input` from a thread:
/// it writes while it still reads, so a large message would fill both
/// pipes otherwise.
fn run_streaming(home: &TestHome, args: &[&str], input: Vec<u8>) -> Output {
    let mut child = sqmail()
        .arg("inject")
        .arg("--home")
        .arg(&home.path)
        .args(args)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        // Fails once inject stops reading early, as on a bad header.
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

#[test]
fn streaming_writes_what_the_whole_input_gives() {
    let home = home("inject-stream");
    let control = |name: &str| std::fs::read_to_string(home.path.join("control").join(name)).ok();
    let settings = Settings::load(&control, &|_| None);
    let req = Request {
        args: vec!["bob".into()],
        sender: Some("robot".into()),
        print: true,
        ..Request::default()
    };
    // A header with nothing left to add, so the output is known.
    let header = "Date: d\nMessage-ID: <m@x.test>\nFrom: f@x.test\nTo: bob\n";
    let lines: String = (0..20_000)
        .map(|i| format!("X-Line-{i}: looks like a header\n"))
        .collect();
    let tails = [
        String::new(),
        "Cc: carol".into(),
        "\n".into(),
        "\nno final LF".into(),
        "not a field\nTo: looks@like.header\n\nmore\n".into(),
        "\nFrom me\nSubject: in the body\n".into(),
        "Cc: carol\r\n\r\nCRLF body\r\n".into(),
        format!("\n{lines}no final LF"),
        format!("{}\nafter a long first body line\n", "a".repeat(200_000)),
    ];
    for tail in tails {
        let input = format!("{header}{tail}");
        let whole = inject(input.as_bytes(), &settings, &req).unwrap();
        let want = whole.message(input.as_bytes());
        let out = run_streaming(&home, &["-n", "-f", "robot", "bob"], input.into_bytes());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tail = &tail[..tail.len().min(40)];
        assert!(
            out.stdout == want,
            "for {tail:?}: {} bytes, want {}",
            out.stdout.len(),
            want.len()
        );
    }
    // Queued, the same body streams through.
    let body = format!("\n{lines}no final LF");
    let out = run_streaming(&home, &["bob"], format!("{header}{body}").into_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let queued = home.queued();
    assert_eq!(queued.len(), 1);
    assert!(queued[0]
        .1
        .ends_with(&format!("To: bob@mx.example.org\n{body}\n")));
}

#[test]
fn header_over_the_limit_exits_100_and_queues_nothing() {
    let home = home("inject-limit");
    let input = format!("Subject: {}\n\nbody\n", "x".repeat(1 << 20));
    let out = run_streaming(&home, &["bob"], input.into_bytes());
    assert_eq!(out.status.code(), Some(100));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "qmail-inject: fatal: header longer than 1048576 bytes\n"
    );
    assert!(home.queued().is_empty());
}

#[test]
fn bad_address_exits_100_and_queues_nothing() {
    let home = home("inject-bad");
    let out = run(
        &home,
        "inject",
        &[],
        &[],
        "From: <broken\nTo: a@b.test\n\nx\n",
    );
    assert_eq!(out.status.code(), Some(100));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("qmail-inject: fatal: unable to parse this line:\nFrom: <broken"),
        "{err}"
    );
    let out = run(&home, "sendmail", &["a@(b"], &[], "x\n");
    assert_eq!(out.status.code(), Some(100));
    let out = run(&home, "sendmail", &["-t"], &[], "Subject: nobody\n\nx\n");
    assert_eq!(out.status.code(), Some(100));
    assert!(home.queued().is_empty());
}

#[test]
fn queue_failure_is_temporary() {
    let home = home("inject-qq");
    let out = run(
        &home,
        "inject",
        &["a@b.test"],
        &[("QMAILQUEUE", "/bin/false")],
        "x\n",
    );
    assert_eq!(
        out.status.code(),
        Some(111),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(home.queued().is_empty());
}

#[test]
fn sendmail_bs_speaks_smtp_and_bp_is_refused() {
    let home = home("sendmail-bs");
    let out = run(
        &home,
        "sendmail",
        &["-bs"],
        &[],
        "HELO me\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nSubject: s\r\n\r\nhi\r\n.\r\nQUIT\r\n",
    );
    assert!(out.status.success());
    let replies = String::from_utf8_lossy(&out.stdout);
    assert!(replies.contains("\r\n250 2.0.0 ok "), "{replies}");
    assert_eq!(home.queued().len(), 1);
    let out = run(&home, "sendmail", &["-bp"], &[], "");
    assert_eq!(out.status.code(), Some(111));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not implemented"));
}

#[test]
fn newu_compiles_users_assign() {
    let home = TestHome::new("newu");
    let assign = "=joe:joe:1001:1001:/home/joe:::\n+ftp-:ftp:1002:1002:/srv/ftp:-::\n.\n";
    std::fs::write(home.path.join("users/assign"), assign).unwrap();
    let status = common::sqmail()
        .args(["newu", "--home"])
        .arg(&home.path)
        .status()
        .unwrap();
    assert!(status.success());
    let cdb = sqmail_queue::CdbMap::open(&home.path.join("users/cdb")).unwrap();
    // qmail-newu's bytes: the fields up to the sixth colon, colons as NULs.
    assert_eq!(
        cdb.get(b"!joe\0").unwrap().unwrap(),
        b"joe\x001001\x001001\x00/home/joe\x00\x00"
    );
    std::fs::write(home.path.join("users/assign"), "=bad line\n.\n").unwrap();
    let out = common::sqmail()
        .args(["newu", "--home"])
        .arg(&home.path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(111));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("assign"),
        "names the file"
    );
}
