//! `sqmail user` and `sqmail recipients` on a real qmail home, and smtpd's
//! `control/recipients` check seeing their changes while it runs.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::{code, sqmail, Client, Daemon, TestHome};
use sha_crypt::{PasswordHashRef, PasswordVerifier, ShaCrypt};
use sqmail_queue::cdbmap::CdbMap;

/// `sqmail user ARGS --home HOME` with `stdin` as its standard input.
fn user(home: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = sqmail()
        .arg("user")
        .args(args)
        .arg("--home")
        .arg(home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn add(home: &Path, address: &str) {
    let out = user(home, &["add", address], b"");
    assert!(out.status.success(), "{out:?}");
}

fn text(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn locals(home: &TestHome) -> Vec<String> {
    text(home.path.join("control/locals"))
        .lines()
        .map(str::to_string)
        .collect()
}

fn canonical(home: &TestHome) -> PathBuf {
    std::fs::canonicalize(&home.path).unwrap()
}

#[test]
fn add_list_del_round_trip() {
    let home = TestHome::new("user-roundtrip");
    let h = &home.path;
    let out = user(h, &["add", "Alice@localhost"], b"");
    assert!(out.status.success(), "{out:?}");
    let maildir = canonical(&home).join("mailboxes/alice@localhost/Maildir");
    for sub in ["cur", "new", "tmp"] {
        let meta = std::fs::metadata(maildir.join(sub)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(maildir.parent().unwrap()), 0o700);
    add(h, "bob@virt.example");

    let list = user(h, &["list"], b"");
    assert!(list.status.success());
    assert_eq!(
        String::from_utf8(list.stdout).unwrap(),
        format!(
            "alice@localhost {}\nbob@virt.example {}\n",
            maildir.display(),
            canonical(&home)
                .join("mailboxes/bob@virt.example/Maildir")
                .display()
        )
    );

    // The assign lines, the final `.` kept, and users/cdb rebuilt.
    let assign = text(h.join("users/assign"));
    let lines: Vec<&str> = assign.lines().collect();
    assert_eq!(lines.len(), 3, "{assign}");
    assert!(lines[0].starts_with("=alice:"), "{assign}");
    assert!(lines[0].ends_with(&format!(":{}:::", maildir.parent().unwrap().display())));
    assert!(lines[1].starts_with("=virt.example-bob:"), "{assign}");
    assert_eq!(lines[2], ".");
    let cdb = CdbMap::open(&h.join("users/cdb")).unwrap();
    assert!(cdb.get(b"!virt.example-bob\0").unwrap().is_some());

    // A local mailbox is a recipient at every local domain.
    let recipients = text(h.join("users/recipients"));
    for domain in locals(&home) {
        assert!(
            recipients.contains(&format!("alice@{domain}\n")),
            "{recipients}"
        );
    }
    assert!(text(h.join("control/virtualdomains")).contains("virt.example:virt.example\n"));
    assert!(text(h.join("control/rcpthosts")).contains("virt.example\n"));

    // Refusals exit 100 and change nothing.
    for (args, why) in [
        (&["add", "alice@localhost"][..], "already exists"),
        (&["add", "ALICE@localhost"], "already exists"),
        (&["add", "not-an-address"], "invalid address"),
        (&["add", "a/b@localhost"], "invalid address"),
        (&["del", "nobody@localhost"], "no mailbox"),
    ] {
        let out = user(h, args, b"");
        assert_eq!(out.status.code(), Some(100), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{args:?}: {err}");
    }
    assert_eq!(text(h.join("users/assign")), assign);

    std::fs::write(maildir.join("new/1.mail"), "kept\n").unwrap();
    let out = user(h, &["del", "alice@LOCALHOST"], b"");
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(said.contains(&maildir.display().to_string()), "{said}");
    assert_eq!(
        text(maildir.join("new/1.mail")),
        "kept\n",
        "mail stays on disk"
    );
    let list = user(h, &["list"], b"");
    let list = String::from_utf8(list.stdout).unwrap();
    assert!(list.starts_with("bob@virt.example ") && list.lines().count() == 1);
    assert_eq!(text(h.join("users/recipients")), "bob@virt.example\n");
    let cdb = CdbMap::open(&h.join("users/cdb")).unwrap();
    assert!(cdb.get(b"!alice\0").unwrap().is_none());
    let rcdb = CdbMap::open(&h.join("users/recipients.cdb")).unwrap();
    assert!(!rcdb.contains_key(b":alice@localhost").unwrap());
    assert!(rcdb.contains_key(b":bob@virt.example").unwrap());

    // Added again, it finds its old mail.
    add(h, "alice@localhost");
    assert_eq!(text(maildir.join("new/1.mail")), "kept\n");
}

#[test]
fn assign_lines_of_others_are_kept() {
    let home = TestHome::new("user-assign");
    let h = &home.path;
    let theirs = "=joe:joe:1000:1000:/home/joe:::\n+list-:list:1001:1001:/var/list:-::\n.\n";
    std::fs::write(h.join("users/assign"), theirs).unwrap();
    add(h, "carol@localhost");
    add(h, "dave@localhost");
    let out = user(h, &["del", "carol@localhost"], b"");
    assert!(out.status.success(), "{out:?}");
    let assign = text(h.join("users/assign"));
    let lines: Vec<&str> = assign.lines().collect();
    assert_eq!(
        lines[..2],
        [
            "=joe:joe:1000:1000:/home/joe:::",
            "+list-:list:1001:1001:/var/list:-::"
        ]
    );
    assert!(lines[2].starts_with("=dave:"));
    assert_eq!(lines[3..], ["."]);
    // The existing `=joe` key is taken.
    let out = user(h, &["add", "joe@localhost"], b"");
    assert_eq!(out.status.code(), Some(100));
}

#[test]
fn concurrent_adds_all_land() {
    let home = TestHome::new("user-concurrent");
    let children: Vec<_> = (0..8)
        .map(|i| {
            sqmail()
                .args(["user", "add", &format!("u{i}@localhost"), "--home"])
                .arg(&home.path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let list = user(&home.path, &["list"], b"");
    let list = String::from_utf8(list.stdout).unwrap();
    assert_eq!(list.lines().count(), 8, "{list}");
    let rcdb = CdbMap::open(&home.path.join("users/recipients.cdb")).unwrap();
    for i in 0..8 {
        assert!(rcdb
            .contains_key(format!(":u{i}@localhost").as_bytes())
            .unwrap());
    }
}

#[test]
fn passwords_are_hashed_and_private() {
    let home = TestHome::new("user-password");
    let h = &home.path;
    let password = "correct horse battery staple";
    let out = user(
        h,
        &["add", "alice@localhost"],
        format!("{password}\nignored\n").as_bytes(),
    );
    assert!(out.status.success(), "{out:?}");
    add(h, "nopass@localhost");
    let file = h.join("users/passwords");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let passwords = text(&file);
    assert_eq!(
        passwords.lines().count(),
        1,
        "empty stdin: no password line"
    );
    let hash = passwords
        .strip_prefix("alice@localhost:")
        .and_then(|l| l.strip_suffix('\n'))
        .unwrap();
    assert!(hash.starts_with("$6$"), "{hash}");
    let parsed = PasswordHashRef::new(hash).unwrap();
    assert!(ShaCrypt::SHA512
        .verify_password(password.as_bytes(), parsed)
        .is_ok());
    assert!(ShaCrypt::SHA512.verify_password(b"wrong", parsed).is_err());
    for out in [&out.stdout, &out.stderr] {
        assert!(!String::from_utf8_lossy(out).contains(password));
    }
    let mut stack = vec![h.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let (kind, path) = (entry.file_type().unwrap(), entry.path());
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                // (Not the queue's trigger fifo: reading it would block.)
                let bytes = std::fs::read(&path).unwrap();
                let found = bytes
                    .windows(password.len())
                    .any(|w| w == password.as_bytes());
                assert!(!found, "the password is in {}", path.display());
            }
        }
    }
    // Deleting the mailbox removes its password.
    assert!(user(h, &["del", "alice@localhost"], b"").status.success());
    assert_eq!(text(&file), "");
}

#[test]
fn smtpd_sees_mailboxes_added_while_it_runs() {
    let home = TestHome::new("user-smtpd");
    let h = &home.path;
    add(h, "bob@virt.example");
    home.control("recipients", "users/recipients.cdb\n");
    let daemon = Daemon::start(h, &[]);
    let mut c = Client::connect(daemon.addr).unwrap();
    assert_eq!(code(&c.reply().unwrap()).unwrap(), 220);
    assert_eq!(c.cmd("HELO c.example").unwrap(), 250);
    assert_eq!(c.cmd("MAIL FROM:<s@c.example>").unwrap(), 250);
    c.send("RCPT TO:<carol@localhost>\r\n").unwrap();
    assert_eq!(
        c.reply().unwrap(),
        "550 5.1.1 sorry, no mailbox here by that name\r\n"
    );
    assert_eq!(c.cmd("RCPT TO:<bob@virt.example>").unwrap(), 250);
    assert_eq!(c.cmd("RCPT TO:<eve@virt.example>").unwrap(), 550);

    add(h, "carol@localhost");
    // The next RCPT, in the same session, sees the rebuilt cdb.
    assert_eq!(c.cmd("RCPT TO:<Carol@LocalHost>").unwrap(), 250);
    for domain in locals(&home) {
        assert_eq!(c.cmd(&format!("RCPT TO:<carol@{domain}>")).unwrap(), 250);
    }
    assert_eq!(c.cmd("RCPT TO:<postmaster@localhost>").unwrap(), 250);
    assert_eq!(c.cmd("DATA").unwrap(), 354);
    assert_eq!(c.cmd("hi\r\n.").unwrap(), 250);
    drop(c);
    let queued = home.queued();
    assert_eq!(queued.len(), 1);
    assert!(queued[0].0.contains(&"Tbob@virt.example".to_string()));
    assert!(!queued[0].0.iter().any(|r| r.starts_with("Teve")));

    let out = user(h, &["del", "carol@localhost"], b"");
    assert!(out.status.success());
    let mut c = Client::connect(daemon.addr).unwrap();
    c.reply().unwrap();
    c.cmd("HELO c.example").unwrap();
    c.cmd("MAIL FROM:<s@c.example>").unwrap();
    assert_eq!(c.cmd("RCPT TO:<carol@localhost>").unwrap(), 550);
}

#[test]
fn recipients450_and_relayclient_in_ucspi_mode() {
    let home = TestHome::new("user-450");
    add(&home.path, "alice@localhost");
    home.control("recipients", "localhost:users/recipients.cdb\n!*\n");
    let input = b"HELO c\r\nMAIL FROM:<s@c.example>\r\nRCPT TO:<alice@localhost>\r\nRCPT TO:<zed@localhost>\r\nQUIT\r\n";
    let (out, _) = common::ucspi(&home.path, &[("TCPREMOTEIP", "192.0.2.1")], input);
    assert!(out.contains("\r\n550 5.1.1 "), "{out}");
    let env = [("TCPREMOTEIP", "192.0.2.1"), ("RECIPIENTS450", "")];
    let (out, _) = common::ucspi(&home.path, &env, input);
    assert!(
        out.contains("\r\n450 4.1.1 sorry, no mailbox here by that name\r\n"),
        "{out}"
    );
    assert!(!out.contains("\r\n550"), "{out}");
    let env = [("TCPREMOTEIP", "192.0.2.1"), ("RELAYCLIENT", "")];
    let (out, _) = common::ucspi(&home.path, &env, input);
    assert!(
        !out.contains("\r\n550") && !out.contains("\r\n450"),
        "{out}"
    );
}

#[test]
fn a_missing_cdb_in_recipients_stops_the_daemon_at_start() {
    let home = TestHome::new("user-missing-cdb");
    home.control("recipients", "# users\n\nusers/none.cdb\n");
    let out = sqmail()
        .args(["smtpd", "--home"])
        .arg(&home.path)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(111));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("control/recipients:3: users/none.cdb: "),
        "{err}"
    );
}

#[test]
fn qmail_recipients_compiles_users_recipients() {
    let home = TestHome::new("user-qmail-recipients");
    let h = &home.path;
    std::fs::write(
        h.join("users/recipients"),
        "# who\nAlice@Example.COM\n@Catchall.Example\n",
    )
    .unwrap();
    let link = h.join("qmail-recipients");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sqmail"), &link).unwrap();
    let out = std::process::Command::new(&link)
        .arg("--home")
        .arg(h)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let cdb = CdbMap::open(&h.join("users/recipients.cdb")).unwrap();
    assert_eq!(cdb.get(b":alice@example.com").unwrap(), Some(Vec::new()));
    assert!(cdb.contains_key(b":@catchall.example").unwrap());
    assert!(!h.join("users/recipients.cdb.tmp").exists());
    // A line that is not an address is refused with its line number.
    std::fs::write(h.join("users/recipients"), "ok@example.com\nnoat\n").unwrap();
    let out = sqmail()
        .args(["recipients", "--home"])
        .arg(h)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(100));
    assert!(String::from_utf8_lossy(&out.stderr).contains("users/recipients:2: "));
    // The old cdb is still in place.
    assert!(CdbMap::open(&h.join("users/recipients.cdb"))
        .unwrap()
        .contains_key(b":alice@example.com")
        .unwrap());
}

#[test]
fn recipients450_from_the_daemons_tcprules() {
    let home = TestHome::new("user-450-rules");
    add(&home.path, "alice@localhost");
    home.control("recipients", "users/recipients.cdb\n");
    let rules = home.path.join("rules.cdb");
    let mut writer = cdb::CDBWriter::create(rules.to_str().unwrap()).unwrap();
    for (k, v) in sqmail_core::tcprules::compile("127.0.0.1:allow,RECIPIENTS450=\"\"\n").unwrap() {
        writer.add(&k, &v).unwrap();
    }
    writer.finish().unwrap();
    let daemon = Daemon::start(&home.path, &["-x", rules.to_str().unwrap()]);
    let mut c = Client::connect(daemon.addr).unwrap();
    c.reply().unwrap();
    c.cmd("HELO c.example").unwrap();
    c.cmd("MAIL FROM:<s@c.example>").unwrap();
    assert_eq!(c.cmd("RCPT TO:<alice@localhost>").unwrap(), 250);
    c.send("RCPT TO:<zed@localhost>\r\n").unwrap();
    assert_eq!(
        c.reply().unwrap(),
        "450 4.1.1 sorry, no mailbox here by that name\r\n"
    );
}
