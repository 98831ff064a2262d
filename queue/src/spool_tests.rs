//! The spool against real queues made by `create_queue` and filled by the
//! store.

use super::*;
use crate::envelope::Envelope;
use crate::setup::{create_queue, create_queue_split};
use crate::store::{Invoker, Queue};
use proptest::prelude::*;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

struct Fixture {
    _tmp: tempfile::TempDir,
    queue: Queue,
    spool: Spool,
}

fn setup() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    create_queue(tmp.path(), None).unwrap();
    Fixture {
        queue: Queue::open(tmp.path()).unwrap(),
        spool: Spool::open(tmp.path()).unwrap(),
        _tmp: tmp,
    }
}

impl Fixture {
    /// Queue a message as qmail-queue would.
    fn inject(&self, sender: &str, rcpts: &[&str]) -> MessageId {
        let mut m = self.queue.begin(Invoker::User(1000)).unwrap();
        m.write(b"Subject: test\n\nhello\n").unwrap();
        let rcpts = rcpts.iter().map(|r| r.as_bytes().to_vec()).collect();
        m.commit(&Envelope::new(sender, rcpts)).unwrap()
    }

    /// Queue and preprocess a message with these local and remote recipients.
    fn preprocessed(&self, local: &[&str], remote: &[&str]) -> MessageId {
        let all: Vec<&str> = local.iter().chain(remote).copied().collect();
        let id = self.inject("s@example.org", &all);
        self.spool
            .preprocess(id, b"s@example.org", 1_000_000, &lists(local, remote), &[])
            .unwrap();
        id
    }

    /// Mark a recipient done as failed, with its bounce paragraph.
    fn fail(&self, id: MessageId, channel: Channel, index: usize, recipient: &str, report: &str) {
        let failure = failure(recipient, report);
        self.spool
            .mark_done(id, channel, index, Some(&failure))
            .unwrap();
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.spool.path().join(rel)
    }

    /// `dir/N` or `dir/(N % 23)/N`.
    fn file(&self, dir: &str, id: MessageId) -> PathBuf {
        if ["mess", "info", "local", "remote"].contains(&dir) {
            self.at(&format!("{dir}/{}/{id}", id % 23))
        } else {
            self.at(&format!("{dir}/{id}"))
        }
    }

    fn recover_one(&self) -> OnDisk {
        let found = self.spool.recover().unwrap();
        assert_eq!(found.problems, vec![]);
        assert_eq!(found.messages.len(), 1, "{found:?}");
        found.messages.into_iter().next().unwrap()
    }

    fn problems(&self) -> Vec<MessageId> {
        let found = self.spool.recover().unwrap();
        found.problems.iter().map(|(id, _)| *id).collect()
    }
}

fn lists(local: &[&str], remote: &[&str]) -> [Vec<Vec<u8>>; 2] {
    let v = |l: &[&str]| l.iter().map(|a| a.as_bytes().to_vec()).collect();
    [v(local), v(remote)]
}

fn failure(recipient: &str, report: &str) -> Failure {
    Failure {
        recipient: recipient.into(),
        report: report.into(),
    }
}

fn set_mtime(path: &Path, secs: u64) {
    let cpath = CString::new(path.as_os_str().as_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    // SAFETY: valid C string and a two-element timespec array.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, cpath.as_ptr(), [t, t].as_ptr(), 0) };
    assert_eq!(r, 0, "{}", io::Error::last_os_error());
}

fn mtime_of(path: &Path) -> u64 {
    fs::metadata(path).unwrap().mtime() as u64
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o777
}

#[test]
fn spool_is_shareable() {
    fn check<T: Clone + Send + Sync>() {}
    check::<Spool>();
}

#[test]
fn open_learns_the_split() {
    let tmp = tempfile::tempdir().unwrap();
    create_queue_split(tmp.path(), None, 7).unwrap();
    let queue = Queue::open(tmp.path()).unwrap();
    let spool = Spool::open(tmp.path()).unwrap();
    assert_eq!((queue.split(), spool.split()), (7, 7));
    let incoming = queue.begin(Invoker::User(1)).unwrap();
    let id = incoming
        .commit(&Envelope::new("", vec![b"r".to_vec()]))
        .unwrap();
    let want = format!("queue/mess/{}/{id}", id % 7);
    assert_eq!(spool.message_path(id), tmp.path().join(want));
    assert!(spool.message_path(id).is_file());

    fs::remove_dir(tmp.path().join("queue/remote/6")).unwrap();
    let err = Spool::open(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("queue/remote/6"), "{err}");
    fs::remove_dir_all(tmp.path().join("queue/bounce")).unwrap();
    let err = Spool::open(tmp.path()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert!(err.to_string().contains("queue/bounce"), "{err}");
}

#[test]
fn todo_lists_messages_and_reads_envelopes() {
    let f = setup();
    let a = f.inject("a@example.org", &["x@example.com", "y@example.net"]);
    let b = f.inject("", &["postmaster@example.com"]);
    for junk in ["abc", "012", "+5"] {
        fs::write(f.at(&format!("todo/{junk}")), b"").unwrap();
    }
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(f.spool.todo().unwrap(), want);

    let todo = f.spool.read_todo(a).unwrap();
    assert_eq!(
        todo,
        Todo {
            sender: b"a@example.org".to_vec(),
            recipients: vec![b"x@example.com".to_vec(), b"y@example.net".to_vec()],
            qp: std::process::id(),
            uid: 1000,
            bytes: fs::metadata(f.spool.message_path(a)).unwrap().len(),
        }
    );
    assert!(todo.bytes > "Subject: test\n\nhello\n".len() as u64);
    assert_eq!(f.spool.read_todo(b).unwrap().sender, b"");
}

#[test]
fn corrupt_todo_is_told_apart_from_io_errors() {
    let f = setup();
    let bad = f.inject("a@example.org", &["x@example.com"]);
    fs::write(f.file("todo", bad), b"u1\0p2\0Tno-sender\0").unwrap();
    match f.spool.read_todo(bad) {
        Err(TodoError::Corrupt(text)) => assert!(text.contains(&format!("todo/{bad}")), "{text}"),
        other => panic!("{other:?}"),
    }

    let orphan = f.inject("a@example.org", &["x@example.com"]);
    fs::remove_file(f.spool.message_path(orphan)).unwrap();
    match f.spool.read_todo(orphan) {
        Err(TodoError::Corrupt(text)) => assert!(text.contains("missing"), "{text}"),
        other => panic!("{other:?}"),
    }

    match f.spool.read_todo(12345) {
        Err(TodoError::Io(e)) => {
            assert_eq!(e.kind(), io::ErrorKind::NotFound);
            assert!(e.to_string().contains("todo/12345"), "{e}");
        }
        other => panic!("{other:?}"),
    }

    f.spool.discard_todo(bad).unwrap();
    assert!(!f.file("todo", bad).exists());
    assert!(!f.file("intd", bad).exists());
    f.spool.discard_todo(bad).unwrap();
}

#[test]
fn preprocess_writes_qmail_files_and_recover_reads_them() {
    let f = setup();
    let id = f.inject("s@example.org", &["me@here", "a@far", "b@far"]);
    let recipients = lists(&["me@here"], &["a@far", "b@far"]);
    f.spool
        .preprocess(id, b"s@example.org", 1_000_000, &recipients, &[])
        .unwrap();

    assert_eq!(fs::read(f.file("info", id)).unwrap(), b"Fs@example.org\0");
    assert_eq!(mtime_of(&f.file("info", id)), 1_000_000);
    assert_eq!(fs::read(f.file("local", id)).unwrap(), b"Tme@here\0");
    assert_eq!(fs::read(f.file("remote", id)).unwrap(), b"Ta@far\0Tb@far\0");
    for dir in ["info", "local", "remote"] {
        assert_eq!(mode_of(&f.file(dir, id)), 0o600, "{dir}");
    }
    assert!(!f.file("todo", id).exists());
    assert!(!f.file("intd", id).exists());
    assert!(f.spool.message_path(id).exists());
    assert_eq!(f.spool.todo().unwrap(), vec![]);

    let disk = f.recover_one();
    assert_eq!(
        disk,
        OnDisk {
            id,
            sender: b"s@example.org".to_vec(),
            birth: 1_000_000,
            recipients: [
                vec![(b"me@here".to_vec(), false)],
                vec![(b"a@far".to_vec(), false), (b"b@far".to_vec(), false)],
            ],
            bounces: vec![],
            next_retry: [
                Some(mtime_of(&f.file("local", id))),
                Some(mtime_of(&f.file("remote", id))),
            ],
        }
    );
}

#[test]
fn preprocess_again_replaces_stale_files() {
    let f = setup();
    let id = f.inject("", &["a@far"]);
    // What a crashed earlier pass may have left.
    fs::write(f.file("info", id), b"Fold\0").unwrap();
    fs::write(f.file("local", id), b"Tstale@here\0Tlonger-stale@here\0").unwrap();
    fs::write(f.file("remote", id), b"Dx@y\0Tolder-and-longer@far\0").unwrap();
    f.spool
        .preprocess(id, b"", 5, &lists(&[], &["a@far"]), &[])
        .unwrap();
    assert_eq!(fs::read(f.file("info", id)).unwrap(), b"F\0");
    assert!(!f.file("local", id).exists(), "empty list: no file");
    assert_eq!(fs::read(f.file("remote", id)).unwrap(), b"Ta@far\0");

    let disk = f.recover_one();
    assert_eq!(disk.sender, b"");
    assert_eq!(disk.birth, 5);
    assert_eq!(disk.recipients[0], vec![]);
    assert_eq!(disk.next_retry[0], None);
    assert!(disk.next_retry[1].is_some());
}

#[test]
fn preprocess_refuses_nul_in_an_address() {
    let f = setup();
    let id = f.inject("s@example.org", &["a@far"]);
    let bad = [vec![], vec![b"a\0b".to_vec()]];
    let err = f.spool.preprocess(id, b"s", 1, &bad, &[]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(f.file("todo", id).exists(), "nothing happened");
    assert!(!f.file("info", id).exists());
}

#[test]
fn mark_done_success_and_failure() {
    let f = setup();
    let id = f.preprocessed(&["l1@here", "l2@here"], &["r1@far", "r2@far"]);
    f.spool.mark_done(id, Channel::Local, 1, None).unwrap();
    assert_eq!(
        fs::read(f.file("local", id)).unwrap(),
        b"Tl1@here\0Dl2@here\0"
    );
    assert!(!f.file("bounce", id).exists(), "a success writes no bounce");

    f.fail(
        id,
        Channel::Remote,
        1,
        "r2@far",
        "Sorry, no mailbox here by that name. (#5.1.1)\n",
    );
    f.fail(id, Channel::Local, 0, "l1@here", "Over quota.\n\nReally.");
    assert_eq!(
        fs::read(f.file("remote", id)).unwrap(),
        b"Tr1@far\0Dr2@far\0"
    );
    assert_eq!(
        fs::read(f.file("local", id)).unwrap(),
        b"Dl1@here\0Dl2@here\0"
    );

    let bounce = fs::read_to_string(f.file("bounce", id)).unwrap();
    assert_eq!(
        bounce,
        "<r2@far>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n\
         <l1@here>:\nOver quota.\n/Really.\n\n"
    );
    assert_eq!(
        bounce,
        bounce::paragraph("r2@far", "Sorry, no mailbox here by that name. (#5.1.1)\n")
            + &bounce::paragraph("l1@here", "Over quota.\n\nReally.")
    );
    assert_eq!(mode_of(&f.file("bounce", id)), 0o600);

    let disk = f.recover_one();
    assert_eq!(
        disk.recipients,
        [
            vec![(b"l1@here".to_vec(), true), (b"l2@here".to_vec(), true)],
            vec![(b"r1@far".to_vec(), false), (b"r2@far".to_vec(), true)],
        ]
    );
    assert_eq!(
        disk.bounces,
        vec![
            (
                b"r2@far".to_vec(),
                b"Sorry, no mailbox here by that name. (#5.1.1)\n".to_vec()
            ),
            (b"l1@here".to_vec(), b"Over quota.\n/Really.\n".to_vec()),
        ]
    );

    f.spool.remove_bounce(id).unwrap();
    assert!(!f.file("bounce", id).exists());
    f.spool.remove_bounce(id).unwrap();
}

#[test]
fn mark_done_twice_writes_one_paragraph() {
    let f = setup();
    let id = f.preprocessed(&[], &["r@far"]);
    f.fail(id, Channel::Remote, 0, "r@far", "no.\n");
    f.fail(id, Channel::Remote, 0, "r@far", "no.\n");
    assert_eq!(
        fs::read_to_string(f.file("bounce", id)).unwrap(),
        "<r@far>:\nno.\n\n"
    );
    assert_eq!(fs::read(f.file("remote", id)).unwrap(), b"Dr@far\0");
}

#[test]
fn mark_done_rejects_bad_index_and_records() {
    let f = setup();
    let id = f.preprocessed(&["l@here"], &[]);
    let fail = failure("l@here", "x");
    let err = f
        .spool
        .mark_done(id, Channel::Local, 1, Some(&fail))
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(
        err.to_string().contains(&format!("local/{}/{id}", id % 23)),
        "{err}"
    );
    assert!(
        !f.file("bounce", id).exists(),
        "no paragraph for a bad index"
    );
    let err = f.spool.mark_done(id, Channel::Remote, 0, None).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);

    fs::write(f.file("local", id), b"Ta\0Xb\0").unwrap();
    let err = f.spool.mark_done(id, Channel::Local, 1, None).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    f.spool.mark_done(id, Channel::Local, 0, None).unwrap();
    assert_eq!(fs::read(f.file("local", id)).unwrap(), b"Da\0Xb\0");
}

#[test]
fn mark_done_finds_records_past_one_read() {
    let f = setup();
    let many: Vec<String> = (0..3000)
        .map(|i| format!("user-{i:05}@a.long.domain.example"))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let id = f.preprocessed(&[], &refs);
    assert!(fs::metadata(f.file("remote", id)).unwrap().len() > SCAN_CHUNK as u64);
    for i in [0, 1999, 2999] {
        f.spool.mark_done(id, Channel::Remote, i, None).unwrap();
    }
    let disk = f.recover_one();
    let done: Vec<usize> = (0..3000).filter(|&i| disk.recipients[1][i].1).collect();
    assert_eq!(done, vec![0, 1999, 2999]);
    assert_eq!(disk.recipients[1][1999].0, many[1999].as_bytes());
}

#[test]
fn concurrent_failures_all_land_in_the_bounce() {
    let f = setup();
    let rcpts: Vec<String> = (0..16).map(|i| format!("r{i}@far")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let id = f.preprocessed(&[], &refs);
    std::thread::scope(|s| {
        for (i, r) in rcpts.iter().enumerate() {
            let spool = f.spool.clone();
            s.spawn(move || {
                let fail = failure(r, &format!("report {i}\nsecond line\n"));
                spool
                    .mark_done(id, Channel::Remote, i, Some(&fail))
                    .unwrap();
            });
        }
    });
    let mut disk = f.recover_one();
    assert!(disk.recipients[1].iter().all(|(_, done)| *done));
    disk.bounces.sort();
    let mut want: Vec<_> = (0..16)
        .map(|i| {
            let report = format!("report {i}\nsecond line\n");
            (format!("r{i}@far").into_bytes(), report.into_bytes())
        })
        .collect();
    want.sort();
    assert_eq!(disk.bounces, want);
}

#[test]
fn a_cut_short_bounce_append_is_dropped() {
    let f = setup();
    let id = f.preprocessed(&[], &["a@far", "b@far"]);
    f.fail(id, Channel::Remote, 0, "a@far", "first\n");
    // A crash in the middle of b's append (b is not marked done).
    let mut file = OpenOptions::new()
        .append(true)
        .open(f.file("bounce", id))
        .unwrap();
    file.write_all(b"<b@far>:\nhalf a rep").unwrap();
    drop(file);
    assert_eq!(
        f.recover_one().bounces,
        vec![(b"a@far".to_vec(), b"first\n".to_vec())]
    );

    f.fail(id, Channel::Remote, 1, "b@far", "whole report\n");
    assert_eq!(
        fs::read_to_string(f.file("bounce", id)).unwrap(),
        "<a@far>:\nfirst\n\n<b@far>:\nwhole report\n\n"
    );
}

#[test]
fn done_flags_survive_recover_and_todo_wins() {
    let f = setup();
    let kept = f.preprocessed(&["l@here"], &["r@far"]);
    f.spool.mark_done(kept, Channel::Remote, 0, None).unwrap();

    // Preprocessing of this one crashed before todo/N went: it is left for
    // preprocessing again, not recovered half-made.
    let again = f.inject("s@example.org", &["x@far"]);
    fs::write(f.file("info", again), b"Fs@example.org\0").unwrap();
    fs::write(f.file("remote", again), b"Tx@f").unwrap();

    let found = f.spool.recover().unwrap();
    assert_eq!(found.problems, vec![]);
    assert_eq!(found.messages.len(), 1);
    assert_eq!(found.messages[0].id, kept);
    assert_eq!(
        found.messages[0].recipients,
        [
            vec![(b"l@here".to_vec(), false)],
            vec![(b"r@far".to_vec(), true)]
        ]
    );
    assert_eq!(f.spool.todo().unwrap(), vec![again]);

    let recipients = lists(&[], &["x@far"]);
    f.spool
        .preprocess(again, b"s@example.org", 7, &recipients, &[])
        .unwrap();
    let ids: Vec<MessageId> = f
        .spool
        .recover()
        .unwrap()
        .messages
        .iter()
        .map(|m| m.id)
        .collect();
    let mut want = vec![kept, again];
    want.sort();
    assert_eq!(ids, want);
}

#[test]
fn remove_deletes_every_file() {
    let f = setup();
    let id = f.preprocessed(&["l@here"], &["r@far"]);
    let other = f.preprocessed(&["l@here"], &[]);
    f.fail(id, Channel::Remote, 0, "r@far", "no");
    f.spool.remove(id).unwrap();
    for dir in ["bounce", "info", "local", "remote", "mess", "todo", "intd"] {
        assert!(!f.file(dir, id).exists(), "{dir}");
    }
    f.spool.remove(id).unwrap();
    assert!(f.spool.message_path(other).exists());
    assert_eq!(f.recover_one().id, other);
}

#[test]
fn an_express_message_is_removed_from_todo() {
    // Delivered before preprocessing: todo/N and intd/N are its record.
    let f = setup();
    let id = f.inject("s@example.org", &["l@here"]);
    assert!(f.file("todo", id).exists());
    f.spool.remove(id).unwrap();
    for dir in ["todo", "intd", "info", "local", "mess"] {
        assert!(!f.file(dir, id).exists(), "{dir}");
    }
    assert!(f.spool.todo().unwrap().is_empty());
    f.spool.remove(id).unwrap();
}

#[test]
fn an_express_removal_cut_short_is_finished_by_the_retry() {
    // The first try removed todo/N and then failed (in the sync, say):
    // the retry finds intd/N alone and finishes.
    let f = setup();
    let id = f.inject("s@example.org", &["l@here"]);
    fs::remove_file(f.file("todo", id)).unwrap();
    f.spool.remove(id).unwrap();
    for dir in ["todo", "intd", "mess"] {
        assert!(!f.file(dir, id).exists(), "{dir}");
    }
}

#[test]
fn preprocess_records_an_express_pass() {
    let f = setup();
    let id = f.inject("s@example.org", &["a@here", "b@here", "c@here"]);
    // What a crashed earlier attempt left: its bounce must not survive.
    fs::write(f.file("bounce", id), b"<old@here>:\nstale\n\n").unwrap();
    let done = [
        Mark {
            channel: Channel::Local,
            index: 0,
            failure: None,
        },
        Mark {
            channel: Channel::Local,
            index: 2,
            failure: Some(failure("c@here", "no such user")),
        },
    ];
    let rcpts = lists(&["a@here", "b@here", "c@here"], &[]);
    f.spool
        .preprocess(id, b"s@example.org", 7, &rcpts, &done)
        .unwrap();
    assert!(!f.file("todo", id).exists());
    assert_eq!(
        fs::read(f.file("local", id)).unwrap(),
        b"Da@here\0Tb@here\0Dc@here\0"
    );
    let disk = f.recover_one();
    assert_eq!(
        disk.recipients[0],
        vec![
            (b"a@here".to_vec(), true),
            (b"b@here".to_vec(), false),
            (b"c@here".to_vec(), true)
        ]
    );
    assert_eq!(
        disk.bounces,
        vec![(b"c@here".to_vec(), b"no such user\n".to_vec())]
    );
}

#[test]
fn removed_files_are_reused_whole() {
    let f = setup();
    let long = "a-much-longer-sender-than-the-next-one@example.org";
    let old = f.inject(long, &["l1@here", "l2@here", "l3@here"]);
    let ino = |dir: &str, id| fs::metadata(f.file(dir, id)).unwrap().ino();
    let mut inodes = vec![ino("intd", old)];
    let rcpts = lists(&["l1@here", "l2@here", "l3@here"], &[]);
    f.spool
        .preprocess(old, long.as_bytes(), 1, &rcpts, &[])
        .unwrap();
    inodes.extend(["mess", "info", "local"].map(|d| ino(d, old)));
    f.spool.remove(old).unwrap();
    assert_eq!(fs::read_dir(f.at("spare")).unwrap().count(), 4);

    // The queue writer takes spares for mess/ (straight, not through
    // pid/) and intd/, preprocessing for info/ and local/: no new file, and
    // no stale byte survives.
    let mut m = f.queue.begin(Invoker::User(1000)).unwrap();
    m.write(b"short\n").unwrap();
    let new = m
        .commit(&Envelope::new("s@x", vec![b"l@here".to_vec()]))
        .unwrap();
    assert_eq!(new, old, "the message id is the reused inode");
    let mess = fs::read(f.spool.message_path(new)).unwrap();
    assert!(mess.starts_with(b"Received: ") && mess.ends_with(b"\nshort\n"));
    assert_eq!(mode_of(&f.spool.message_path(new)), 0o644);
    assert_eq!(f.spool.read_todo(new).unwrap().sender, b"s@x");
    f.spool
        .preprocess(new, b"s@x", 2, &lists(&["l@here"], &[]), &[])
        .unwrap();
    assert_eq!(fs::read(f.file("info", new)).unwrap(), b"Fs@x\0");
    assert_eq!(mode_of(&f.file("info", new)), 0o600);
    assert_eq!(fs::read(f.file("local", new)).unwrap(), b"Tl@here\0");
    let reused = ["mess", "info", "local"].map(|d| ino(d, new));
    assert!(
        reused.iter().all(|i| inodes.contains(i)),
        "{reused:?} {inodes:?}"
    );
    // All four were taken; the new intd/N is a spare again.
    assert_eq!(fs::read_dir(f.at("spare")).unwrap().count(), 1);
    let m = f.recover_one();
    assert_eq!((m.id, m.sender.as_slice()), (new, &b"s@x"[..]));
}

#[test]
fn a_removal_cut_short_is_found_finished() {
    // mess/N gone but info/N left, as a crash could leave an older
    // sqmail's removal (which took mess/N first): recover returns a
    // message with nothing left to do.
    let f = setup();
    let id = f.preprocessed(&["l@here"], &[]);
    f.spool.mark_done(id, Channel::Local, 0, None).unwrap();
    fs::remove_file(f.file("local", id)).unwrap();
    fs::remove_file(f.spool.message_path(id)).unwrap();
    let m = f.recover_one();
    assert_eq!(m.id, id);
    assert!(m.recipients.iter().all(Vec::is_empty));
    f.spool.remove(id).unwrap();
    assert!(!f.file("info", id).exists());
    // Without its text, a message with work left is still a problem.
    let open = f.preprocessed(&["l@here"], &[]);
    fs::remove_file(f.spool.message_path(open)).unwrap();
    assert_eq!(f.problems(), vec![open]);
}

#[test]
fn unreadable_messages_are_problems_not_errors() {
    let f = setup();
    let good = f.preprocessed(&["l@here"], &["r@far"]);
    let mut bad = Vec::new();
    let mut corrupt = |dir: &str, content: &[u8]| {
        let id = f.preprocessed(&["l@here"], &["r@far"]);
        fs::write(f.file(dir, id), content).unwrap();
        bad.push(id);
    };
    corrupt("info", b"s@example.org\0");
    corrupt("info", b"Fs@example.org");
    corrupt("info", b"Fs@exa\0mple.org\0");
    corrupt("local", b"Tl@here");
    corrupt("remote", b"Tr@far\0Qr@far\0");
    corrupt("remote", b"Tr@far\0\0");
    corrupt("bounce", b"r@far:\nno\n\n");
    let unreadable = f.preprocessed(&["l@here"], &[]);
    fs::remove_file(f.file("local", unreadable)).unwrap();
    fs::create_dir(f.file("local", unreadable)).unwrap();
    bad.push(unreadable);
    // Last: a new message could reuse the inode of the removed mess/N.
    let no_mess = f.preprocessed(&["l@here"], &[]);
    fs::remove_file(f.spool.message_path(no_mess)).unwrap();
    bad.push(no_mess);
    // An info file in the wrong split directory.
    let misplaced: MessageId = 23 * 4_000_000_000 + 5;
    fs::write(f.at(&format!("info/6/{misplaced}")), b"F\0").unwrap();
    bad.push(misplaced);

    let found = f.spool.recover().unwrap();
    bad.sort();
    let ids: Vec<MessageId> = found.problems.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, bad, "{:?}", found.problems);
    assert_eq!(found.messages.len(), 1);
    assert_eq!(found.messages[0].id, good);
    for (id, text) in &found.problems {
        assert!(text.contains(&id.to_string()), "names the file: {text}");
    }
    assert_eq!(f.problems(), bad, "recover changes nothing");
}

#[test]
fn set_next_retry_is_seen_by_recover() {
    let f = setup();
    let id = f.preprocessed(&[], &["r@far"]);
    f.spool
        .set_next_retry(id, Channel::Remote, 2_000_000_000)
        .unwrap();
    f.spool
        .set_next_retry(id, Channel::Local, 2_000_000_000)
        .unwrap();
    assert!(!f.file("local", id).exists(), "no file, nothing made");
    let disk = f.recover_one();
    assert_eq!(disk.next_retry, [None, Some(2_000_000_000)]);
}

#[test]
fn cleanup_removes_only_ossified_leftovers() {
    let f = setup();
    let now = 2_000_000_000;
    let old = now - OSSIFIED;
    let young = now - OSSIFIED + 1;

    fs::write(f.at("pid/1.2.3"), b"").unwrap();
    set_mtime(&f.at("pid/1.2.3"), old);
    fs::write(f.at("pid/4.5.6"), b"").unwrap();
    set_mtime(&f.at("pid/4.5.6"), young);

    // Queued, never preprocessed: todo/N keeps mess/N and intd/N.
    let queued = f.inject("s@example.org", &["r@far"]);
    // Preprocessed: info/N keeps mess/N.
    let active = f.preprocessed(&[], &["r@far"]);
    // A dead injection: mess/N and intd/N without todo/N.
    let dead = f.inject("s@example.org", &["r@far"]);
    fs::remove_file(f.file("todo", dead)).unwrap();
    // The same, but recent.
    let recent = f.inject("s@example.org", &["r@far"]);
    fs::remove_file(f.file("todo", recent)).unwrap();
    for id in [queued, active, dead] {
        set_mtime(&f.spool.message_path(id), old);
    }
    for id in [queued, dead] {
        set_mtime(&f.file("intd", id), old);
    }
    set_mtime(&f.spool.message_path(recent), young);
    set_mtime(&f.file("intd", recent), young);

    assert_eq!(f.spool.cleanup(now).unwrap(), 3);
    assert!(!f.at("pid/1.2.3").exists());
    assert!(f.at("pid/4.5.6").exists());
    assert!(!f.spool.message_path(dead).exists());
    assert!(!f.file("intd", dead).exists());
    for id in [queued, active, recent] {
        assert!(f.spool.message_path(id).exists(), "mess {id}");
    }
    assert!(f.file("intd", queued).exists());
    assert!(f.file("intd", recent).exists());
    assert_eq!(f.spool.cleanup(now).unwrap(), 0);
    assert_eq!(
        f.spool.cleanup(now + 1).unwrap(),
        3,
        "recent's mess, intd, and pid/4.5.6"
    );
}

#[test]
fn second_lock_fails() {
    let f = setup();
    let held = f.spool.lock().unwrap();
    let err = f.spool.clone().lock().unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    let text = err.to_string();
    assert!(text.contains("another qmail-send is running"), "{text}");
    assert!(text.contains("lock/sendmutex"), "{text}");
    drop(held);
    f.spool.lock().unwrap();
}

#[test]
fn bounce_parser_edge_cases() {
    let parse = |s: &str| parse_bounce(s.as_bytes());
    let pair = |r: &str, t: &str| (r.as_bytes().to_vec(), t.as_bytes().to_vec());
    assert_eq!(parse(""), Ok(vec![]));
    assert_eq!(parse(&bounce::paragraph("a", "")), Ok(vec![pair("a", "")]));
    assert_eq!(parse("<>:\n\n"), Ok(vec![pair("", "")]));
    // A report ending in a blank line leaves an extra newline.
    let text = bounce::paragraph("a", "x\n\n") + &bounce::paragraph("b", "y");
    assert_eq!(parse(&text), Ok(vec![pair("a", "x\n"), pair("b", "y\n")]));
    // A newline in a recipient is written as `_`.
    assert_eq!(
        parse(&bounce::paragraph("a\nb", "r")),
        Ok(vec![pair("a_b", "r\n")])
    );
    // Cut short: left out.
    assert_eq!(parse("<a>:\nx\n\n<b>:\ny\n"), Ok(vec![pair("a", "x\n")]));
    assert_eq!(parse("<a>:\nx\n\n<b"), Ok(vec![pair("a", "x\n")]));
    assert!(parse("<a>:\nx\n\nb>:\n\n").is_err());
    assert!(parse("<a:\n\n").is_err());
}

proptest! {
    #[test]
    fn bounce_paragraphs_round_trip(
        items in prop::collection::vec(
            ("[^\n]{0,12}", prop::collection::vec("[^\n]{1,12}", 0..4), any::<bool>()),
            0..5,
        )
    ) {
        let mut text = String::new();
        let mut want = Vec::new();
        for (recipient, lines, newline) in &items {
            let mut report = lines.join("\n");
            if *newline && !report.is_empty() {
                report.push('\n');
            }
            text.push_str(&bounce::paragraph(recipient, &report));
            if !report.is_empty() && !report.ends_with('\n') {
                report.push('\n');
            }
            want.push((recipient.clone().into_bytes(), report.into_bytes()));
        }
        prop_assert_eq!(parse_bounce(text.as_bytes()), Ok(want));
    }

    #[test]
    fn every_paragraph_parses_to_one_entry(
        items in prop::collection::vec(("(.|\n){0,12}", "(.|\n){0,40}"), 0..5)
    ) {
        let text: String = items.iter().map(|(r, t)| bounce::paragraph(r, t)).collect();
        let parsed = parse_bounce(text.as_bytes()).unwrap();
        let recipients: Vec<Vec<u8>> = parsed.into_iter().map(|(r, _)| r).collect();
        let want: Vec<Vec<u8>> = items.iter().map(|(r, _)| r.replace('\n', "_").into_bytes()).collect();
        prop_assert_eq!(recipients, want);
    }

    #[test]
    fn bounce_parser_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok((paragraphs, complete)) = parse_bounce_prefix(&bytes) {
            prop_assert!(complete <= bytes.len());
            prop_assert!(paragraphs.len() <= bytes.len() / 5);
        }
    }

    #[test]
    fn recipient_parser_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..100)) {
        let _ = parse_recipients(&bytes);
    }
}
