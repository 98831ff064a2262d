use super::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use tempfile::TempDir;

const MSG: &[u8] = b"Subject: hi\n\nFrom me\n>From you\nbody\n";

struct Setup {
    dir: TempDir,
    home: PathBuf,
    message: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    fs::create_dir(&home).unwrap();
    fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
    for d in ["Maildir/tmp", "Maildir/new", "Maildir/cur"] {
        fs::create_dir_all(home.join(d)).unwrap();
    }
    let message = dir.path().join("mess");
    fs::write(&message, MSG).unwrap();
    Setup { dir, home, message }
}

impl Setup {
    fn user(&self, dash: &str, ext: &str) -> UserEntry {
        UserEntry {
            user: b"joe".to_vec(),
            uid: 1000,
            gid: 1000,
            home: self.home.to_str().unwrap().as_bytes().to_vec(),
            dash: dash.into(),
            ext: ext.into(),
        }
    }
    fn dotqmail(&self, name: &str, text: &str) {
        let p = self.home.join(name);
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    }
    fn run(&self, local: &str, dash: &str, ext: &str, sender: &str) -> Outcome {
        self.run_only(local, dash, ext, sender, false)
    }
    fn run_only(
        &self,
        local: &str,
        dash: &str,
        ext: &str,
        sender: &str,
        maildir_only: bool,
    ) -> Outcome {
        let rcpt = format!("{local}@example.com");
        let req = Request {
            qmail_home: self.dir.path(),
            message: &self.message,
            sender: sender.as_bytes(),
            recipient: rcpt.as_bytes(),
            default_delivery: b"./Maildir/\n",
            now: 0,
            maildir_only,
        };
        deliver_as_current_user(&self.user(dash, ext), &req)
    }
    fn maildir_new(&self) -> Vec<Vec<u8>> {
        let mut v: Vec<_> = fs::read_dir(self.home.join("Maildir/new"))
            .unwrap()
            .map(|e| fs::read(e.unwrap().path()).unwrap())
            .collect();
        v.sort();
        v
    }
}

#[test]
fn maildir_default_delivery_and_unique_names() {
    let s = setup();
    let o = s.run("joe", "", "", "a@b.c");
    assert_eq!(o.verdict, Verdict::Success, "{o:?}");
    assert_eq!(o.report, "did 1+0+0\n");
    s.run("joe", "", "", "a@b.c");
    let got = s.maildir_new();
    assert_eq!(got.len(), 2);
    let want = [
        &b"Return-Path: <a@b.c>\nDelivered-To: joe@example.com\n"[..],
        MSG,
    ]
    .concat();
    assert_eq!(got[0], want);
    assert_eq!(fs::read_dir(s.home.join("Maildir/tmp")).unwrap().count(), 0);
    let (a, b) = (maildir::unique_name(), maildir::unique_name());
    assert_ne!(a, b);
    assert!(a.contains(".M") && a.contains(&format!("P{}Q", std::process::id())));
}

#[test]
fn maildir_only_runs_nothing_unless_every_line_is_a_maildir() {
    let s = setup();
    s.dotqmail(".qmail-ok", "# two copies\n./Maildir/\n./Maildir/\n");
    let o = s.run_only("joe-ok", "-", "ok", "a@b.c", true);
    assert_eq!(o.verdict, Verdict::Success, "{o:?}");
    assert_eq!(s.maildir_new().len(), 2);
    // A Maildir first, then a program, a forward or an mbox: nothing is
    // delivered, so that the queue's delivery is the only one.
    for (ext, rest) in [
        ("prog", "|touch ran"),
        ("fwd", "&x@example.org"),
        ("mbox", "./mbox"),
    ] {
        s.dotqmail(&format!(".qmail-{ext}"), &format!("./Maildir/\n{rest}\n"));
        let o = s.run_only(&format!("joe-{ext}"), "-", ext, "a@b.c", true);
        assert_eq!(
            (o.verdict, o.report.as_str()),
            (
                Verdict::Deferral,
                "Not only Maildir deliveries: the queue takes the message.\n"
            ),
            "{ext}"
        );
        assert_eq!(s.maildir_new().len(), 2, "{ext}");
    }
    assert!(!s.home.join("ran").exists() && !s.home.join("mbox").exists());
}

#[test]
fn maildir_without_o_tmpfile_goes_through_tmp() {
    // Where the filesystem has no O_TMPFILE (or no /proc), the classic
    // route: the same file in new/, nothing left in tmp/.
    let s = setup();
    let dir = s.home.join("Maildir");
    let head: &[&[u8]] = &[b"X-Head: 1\n"];
    maildir::through_tmp(&dir.join("tmp"), &dir.join("new"), head, &s.message).unwrap();
    assert_eq!(s.maildir_new(), vec![[&b"X-Head: 1\n"[..], MSG].concat()]);
    assert_eq!(fs::read_dir(dir.join("tmp")).unwrap().count(), 0);
}

#[test]
fn missing_maildir_defers() {
    let s = setup();
    // No Maildir, and half a one (tmp/ but no new/).
    fs::create_dir_all(s.home.join("Half/tmp")).unwrap();
    for dir in ["./Nope/\n", "./Half/\n"] {
        s.dotqmail(".qmail", dir);
        let out = s.run("joe", "", "", "a@b");
        assert_eq!(out.verdict, Verdict::Deferral);
        assert!(
            out.report.contains("Unable to chdir to maildir. (#4.2.1)"),
            "{dir}: {}",
            out.report
        );
    }
    // The half one's anonymous file left nothing behind.
    assert_eq!(fs::read_dir(s.home.join("Half/tmp")).unwrap().count(), 0);
}

#[test]
fn mbox_from_line_quoting_and_lock() {
    let s = setup();
    s.dotqmail(".qmail", "./Mailbox\n");
    let mbox = s.home.join("Mailbox");
    let held = fs::File::create(&mbox).unwrap();
    // SAFETY: flock on our own descriptor.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&held), libc::LOCK_EX) },
        0
    );
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(held);
    });
    let start = std::time::Instant::now();
    let o = s.run("joe", "", "", "");
    t.join().unwrap();
    assert!(
        start.elapsed() >= std::time::Duration::from_millis(250),
        "waited for the lock"
    );
    assert_eq!(o.verdict, Verdict::Success, "{o:?}");
    s.run("joe", "", "", "x y@z");
    let text = String::from_utf8(fs::read(&mbox).unwrap()).unwrap();
    let one = "Return-Path: <>\nDelivered-To: joe@example.com\nSubject: hi\n\n>From me\n>>From you\nbody\n\n";
    assert_eq!(
        text,
        format!(
            "From MAILER-DAEMON Thu Jan 01 00:00:00 1970\n{one}From x-y@z Thu Jan 01 00:00:00 1970\n{}",
            one.replace("<>", "<\"x y\"@z>")
        )
    );
}

fn program(s: &Setup, cmd: &str) -> Outcome {
    s.dotqmail(".qmail", &format!("|{cmd}\n./Maildir/\n"));
    s.run("joe", "", "", "a@b")
}

#[test]
fn program_exit_codes() {
    let s = setup();
    let cases = [
        (0, Verdict::Success, 1),
        (99, Verdict::Success, 1),
        (100, Verdict::Failure, 1),
        (111, Verdict::Deferral, 1),
        (64, Verdict::Failure, 1),
        (3, Verdict::Deferral, 1),
    ];
    let mut delivered = 0;
    for (code, verdict, _) in cases {
        let o = program(&s, &format!("echo out{code}; exit {code}"));
        assert_eq!(o.verdict, verdict, "exit {code}: {o:?}");
        assert!(o.report.starts_with(&format!("out{code}\n")), "{o:?}");
        if code == 0 {
            delivered += 1;
            assert_eq!(o.report, "out0\ndid 1+0+1\n");
        }
        if code == 99 {
            assert_eq!(o.report, "out99\ndid 0+0+1\n");
        }
        assert_eq!(s.maildir_new().len(), delivered, "exit {code}");
    }
    let o = program(&s, "kill -9 $$");
    assert_eq!(o.verdict, Verdict::Deferral);
    assert_eq!(o.report, "Aack, child crashed. (#4.3.0)\n");
}

#[test]
fn program_environment_and_stdin() {
    let s = setup();
    let out = s.dir.path().join("env");
    s.dotqmail(
        ".qmail-list-default",
        &format!("|env > {0}; cat > {0}.in; pwd > {0}.pwd\n", out.display()),
    );
    s.dotqmail(".qmail-list-sub:x-owner", "#\n");
    let o = s.run("joe-List-Sub.X", "-", "List-Sub.X", "s@x.org");
    assert_eq!(o.verdict, Verdict::Success, "{o:?}");
    let env = fs::read_to_string(&out).unwrap();
    for want in [
        "SENDER=s@x.org",
        "NEWSENDER=joe-List-Sub.X-owner@example.com",
        "RECIPIENT=joe-List-Sub.X@example.com",
        "USER=joe",
        "LOCAL=joe-List-Sub.X",
        "HOST=example.com",
        "HOST2=example",
        "HOST3=example",
        "EXT=List-Sub.X",
        "EXT2=Sub.X",
        "EXT3=",
        "EXT4=",
        "DEFAULT=Sub.X",
        "DTLINE=Delivered-To: joe-List-Sub.X@example.com",
        "RPLINE=Return-Path: <s@x.org>",
        "UFLINE=From s@x.org Thu Jan 01 00:00:00 1970",
    ] {
        assert!(env.lines().any(|l| l == want), "{want} not in\n{env}");
    }
    assert!(env.contains(&format!("HOME={}", s.home.display())));
    assert_eq!(fs::read(out.with_extension("in")).unwrap(), MSG);
    assert_eq!(
        fs::read_to_string(out.with_extension("pwd"))
            .unwrap()
            .trim(),
        s.home.to_str().unwrap()
    );
}

#[test]
fn forwards_are_returned_and_queued_once() {
    let s = setup();
    s.dotqmail(".qmail-fw", "&a@x\nb@y\n# c\n");
    s.dotqmail(".qmail-fw-owner", "#\n");
    s.dotqmail(".qmail-fw-owner-default", "#\n");
    let o = s.run("joe-fw", "-", "fw", "s@q");
    assert_eq!(o.verdict, Verdict::Success);
    let f = o.forward.clone().unwrap();
    assert_eq!(f.recipients, vec![b"a@x".to_vec(), b"b@y".to_vec()]);
    assert_eq!(f.sender, b"joe-fw-owner-@example.com-@[]".to_vec());
    assert_eq!(f.dtline, b"Delivered-To: joe-fw@example.com\n".to_vec());
    // SAFETY: getuid cannot fail.
    assert_eq!(
        f.uid,
        unsafe { libc::getuid() },
        "queued as qmail-local's user"
    );
    let qhome = s.dir.path().join("q");
    crate::create_queue(&qhome, None).unwrap();
    let target = Target::Queue(crate::Queue::open(&qhome).unwrap());
    let done = finish(o, &target, &s.message);
    assert_eq!(done.verdict, Verdict::Success);
    assert!(done.report.starts_with("did 0+2+0\nqp "), "{done:?}");
    let queued: Vec<_> = fs::read_dir(qhome.join("queue/mess"))
        .unwrap()
        .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
        .map(|e| fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(queued.len(), 1);
    assert!(queued[0].ends_with(&[&b"Delivered-To: joe-fw@example.com\n"[..], MSG].concat()));
}

#[test]
fn loop_is_a_permanent_failure() {
    let s = setup();
    fs::write(
        &s.message,
        [&b"Delivered-To: joe@example.com\n"[..], MSG].concat(),
    )
    .unwrap();
    let o = s.run("joe", "", "", "a@b");
    assert_eq!(o.verdict, Verdict::Failure);
    assert_eq!(o.report, format!("{}\n", sqmail_core::dotqmail::LOOPING));
}

#[test]
fn unsafe_permissions_defer() {
    let s = setup();
    s.dotqmail(".qmail", "./Maildir/\n");
    fs::set_permissions(s.home.join(".qmail"), fs::Permissions::from_mode(0o620)).unwrap();
    let o = s.run("joe", "", "", "a@b");
    assert_eq!(
        (o.verdict, o.report.as_str()),
        (
            Verdict::Deferral,
            "Uh-oh: .qmail file is writable. (#4.7.0)\n"
        )
    );
    fs::set_permissions(s.home.join(".qmail"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(&s.home, fs::Permissions::from_mode(0o777)).unwrap();
    let o = s.run("joe", "", "", "a@b");
    assert_eq!(
        (o.verdict, o.report.as_str()),
        (
            Verdict::Deferral,
            "Uh-oh: home directory is writable. (#4.7.0)\n"
        )
    );
    fs::set_permissions(&s.home, fs::Permissions::from_mode(0o1700)).unwrap();
    assert_eq!(s.run("joe", "", "", "a@b").verdict, Verdict::Deferral);
    assert!(s.maildir_new().is_empty());
}

#[test]
fn extension_lookup_and_bad_files() {
    let s = setup();
    let o = s.run("joe-nobox", "-", "nobox", "a@b");
    assert_eq!(o.verdict, Verdict::Failure);
    assert_eq!(o.report, "Sorry, no mailbox here by that name. (#5.1.1)\n");
    s.dotqmail(".qmail-default", "");
    assert_eq!(
        s.run("joe-nobox", "-", "nobox", "a@b").verdict,
        Verdict::Success
    );
    assert_eq!(s.maildir_new().len(), 1);
    s.dotqmail(".qmail-blank", "\n./Maildir/\n");
    let o = s.run("joe-blank", "-", "blank", "a@b");
    assert_eq!(o.verdict, Verdict::Deferral);
    s.dotqmail(".qmail-x", "./Maildir/\n");
    fs::set_permissions(s.home.join(".qmail-x"), fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(s.run("joe-x", "-", "x", "a@b").verdict, Verdict::Deferral);
    s.dotqmail(".qmail-nothing", "# delivered nowhere\n");
    assert_eq!(
        s.run("joe-nothing", "-", "nothing", "a@b").report,
        "did 0+0+0\n"
    );
}

#[test]
fn newu_and_cdb_lookup_seed() {
    let s = setup();
    let home = s.dir.path();
    fs::create_dir(home.join("users")).unwrap();
    fs::write(
        home.join("users/assign"),
        "=ftp:alias:29990:29998:/var/qmail/alias:-:ftp:\n\
         +ftp-:alias:29990:29998:/var/qmail/alias:-ftp-::\n\
         +ftp:peter:2052:100:/home/peter:-:ftp:\n.\n",
    )
    .unwrap();
    newu(home).unwrap();
    assert!(!home.join("users/cdb.tmp").exists());
    let get = |l: &str| lookup(home, l.as_bytes(), &NoUsers).unwrap();
    assert_eq!(get("ftp").ext, b"ftp");
    let e = get("ftp-something");
    assert_eq!(
        (e.user, e.dash, e.ext),
        (b"alias".to_vec(), b"-ftp-".to_vec(), b"something".to_vec())
    );
    let e = get("ftpstuff");
    assert_eq!(
        (e.user, e.uid, e.ext),
        (b"peter".to_vec(), 2052, b"ftpstuff".to_vec())
    );
    assert_eq!(lookup(home, b"other", &NoUsers), Err(users::NO_ALIAS));
    fs::write(home.join("users/assign"), "=x\n.\n").unwrap();
    let err = newu(home).unwrap_err();
    assert!(err.contains("users/assign:1:"), "{err}");
}

struct NoUsers;
impl Passwd for NoUsers {
    fn getpwnam(&self, _: &[u8]) -> std::io::Result<Option<Pw>> {
        Ok(None)
    }
}

struct Table(Vec<Pw>);
impl Passwd for Table {
    fn getpwnam(&self, name: &[u8]) -> std::io::Result<Option<Pw>> {
        Ok(self.0.iter().find(|p| p.name == name).cloned())
    }
}

#[test]
fn passwd_walk_and_alias() {
    let s = setup();
    // SAFETY: getuid has no preconditions.
    let mut uid = unsafe { libc::getuid() };
    if uid == 0 {
        uid = 54321;
        std::os::unix::fs::chown(&s.home, Some(uid), None).unwrap();
    }
    let dir = s.home.to_str().unwrap().as_bytes().to_vec();
    let pw = |name: &str, uid| Pw {
        name: name.into(),
        uid,
        gid: 7,
        dir: dir.clone(),
    };
    let table = Table(vec![
        pw("joe", uid),
        pw("root", 0),
        pw("alias", uid),
        pw("other", uid + 1),
    ]);
    let h = s.dir.path();
    let e = lookup(h, b"Joe-Foo-Bar", &table).unwrap();
    assert_eq!(
        (e.user, e.dash, e.ext),
        (b"joe".to_vec(), b"-".to_vec(), b"Foo-Bar".to_vec())
    );
    let e = lookup(h, b"joe", &table).unwrap();
    assert_eq!((e.dash, e.ext), (vec![], vec![]));
    // root, a user not owning its home, and unknown names go to alias.
    for l in ["root", "other", "nobody-x"] {
        let e = lookup(h, l.as_bytes(), &table).unwrap();
        assert_eq!(
            (e.user, e.dash, e.ext),
            (b"alias".to_vec(), b"-".to_vec(), l.as_bytes().to_vec())
        );
    }
}

#[test]
fn top_level_trash_and_root() {
    let s = setup();
    let req = Request {
        qmail_home: s.dir.path(),
        message: &s.message,
        sender: b"",
        recipient: b"@example.com",
        default_delivery: b"./Maildir/\n",
        now: 0,
        maildir_only: false,
    };
    assert_eq!(deliver_with(&req, &NoUsers).verdict, Verdict::Success);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let table = Table(vec![Pw {
            name: b"alias".to_vec(),
            uid: 0,
            gid: 0,
            dir: b"/".to_vec(),
        }]);
        let req = Request {
            recipient: b"x@example.com",
            ..req
        };
        let o = deliver_with(&req, &table);
        assert_eq!(
            o,
            Outcome::new(
                Verdict::Deferral,
                "Not allowed to perform deliveries as root.\n"
            )
        );
    }
}

#[test]
fn outcome_survives_the_pipe() {
    let o = Outcome {
        verdict: Verdict::Success,
        report: "x\n".into(),
        forward: Some(Forward {
            sender: b"s".to_vec(),
            recipients: vec![b"a".to_vec(), b"".to_vec()],
            dtline: b"D\n".to_vec(),
            did: "did 0+2+0\n".into(),
            uid: 1000,
        }),
    };
    assert_eq!(decode(&encode(&o)), Some(o));
    assert_eq!(decode(b"Q"), None);
}

/// As root: joe is a made-up `uid` owning his home, and the message sits
/// in a directory he may not search, as in the queue (it must be handed
/// down open). `None` when not root.
fn as_root(uid: u32) -> Option<(Setup, PathBuf, Table)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let s = setup();
    for d in ["", "Maildir", "Maildir/tmp", "Maildir/new", "Maildir/cur"] {
        std::os::unix::fs::chown(s.home.join(d), Some(uid), Some(uid)).unwrap();
    }
    fs::set_permissions(s.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let private = s.dir.path().join("queue");
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    let message = private.join("1");
    fs::rename(&s.message, &message).unwrap();
    fs::set_permissions(&message, fs::Permissions::from_mode(0o644)).unwrap();
    let dir = s.home.to_str().unwrap().as_bytes().to_vec();
    let table = Table(vec![Pw {
        name: b"joe".to_vec(),
        uid,
        gid: uid,
        dir,
    }]);
    Some((s, message, table))
}

fn root_request<'a>(s: &'a Setup, message: &'a Path, recipient: &'a [u8]) -> Request<'a> {
    Request {
        qmail_home: s.dir.path(),
        message,
        sender: b"a@b",
        recipient,
        default_delivery: b"./Maildir/\n",
        now: 0,
        maildir_only: false,
    }
}

/// This thread's effective ids and groups.
fn creds() -> (u32, u32, Vec<libc::gid_t>) {
    // SAFETY: plain queries into a buffer of the size asked for.
    unsafe {
        let mut groups = vec![0; libc::getgroups(0, std::ptr::null_mut()) as usize];
        let n = libc::getgroups(groups.len() as i32, groups.as_mut_ptr());
        groups.truncate(n as usize);
        (libc::geteuid(), libc::getegid(), groups)
    }
}

#[test]
fn as_root_delivers_as_the_recipient() {
    let uid = 54322;
    let Some((s, message, table)) = as_root(uid) else {
        return;
    };
    let before = creds();
    let o = deliver_with(&root_request(&s, &message, b"joe@example.com"), &table);
    assert_eq!(o.verdict, Verdict::Success, "{o:?}");
    let f = fs::read_dir(s.home.join("Maildir/new"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&f.metadata().unwrap()),
        uid
    );
    // Delivered on this thread, which is root again.
    assert_eq!(creds(), before);

    // A program still runs in a child that is the user through and through.
    s.dotqmail(
        ".qmail-prog",
        "|id -u >\"$HOME/ran\"; id -ru >>\"$HOME/ran\"\n",
    );
    std::os::unix::fs::chown(s.home.join(".qmail-prog"), Some(uid), Some(uid)).unwrap();
    let o = deliver_with(&root_request(&s, &message, b"joe-prog@example.com"), &table);
    assert_eq!(o.verdict, Verdict::Success, "{o:?}");
    assert_eq!(
        fs::read_to_string(s.home.join("ran")).unwrap(),
        format!("{uid}\n{uid}\n")
    );
    assert_eq!(creds(), before);
}

#[test]
fn as_root_a_maildir_delivery_has_only_the_recipients_rights() {
    let uid = 54323;
    let Some((s, message, table)) = as_root(uid) else {
        return;
    };
    let before = creds();
    // joe's .qmail names a Maildir only root may write.
    let rootbox = s.home.join("Rootbox");
    for d in ["tmp", "new", "cur"] {
        fs::create_dir_all(rootbox.join(d)).unwrap();
    }
    fs::set_permissions(&rootbox, fs::Permissions::from_mode(0o700)).unwrap();
    s.dotqmail(".qmail-root", "./Rootbox/\n");
    std::os::unix::fs::chown(s.home.join(".qmail-root"), Some(uid), Some(uid)).unwrap();
    let o = deliver_with(&root_request(&s, &message, b"joe-root@example.com"), &table);
    assert_eq!(o.verdict, Verdict::Deferral, "{o:?}");
    assert_eq!(fs::read_dir(rootbox.join("new")).unwrap().count(), 0);
    assert_eq!(creds(), before);
}
