//! Layout, crash-safety and concurrency tests for the store.

use super::*;
use crate::setup::{create_queue, create_queue_split};
use std::fs;
use std::os::unix::fs::MetadataExt;

fn setup() -> (tempfile::TempDir, Queue) {
    let tmp = tempfile::tempdir().unwrap();
    create_queue(tmp.path(), None).unwrap();
    let q = Queue::open(tmp.path()).unwrap();
    (tmp, q)
}

fn env() -> Envelope {
    Envelope::new(
        "a@b.example",
        vec![b"c@d.example".to_vec(), b"e@f.example".to_vec()],
    )
}

/// Every file in the queue outside `lock/`, as paths relative to it.
fn files(q: &Queue) -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, base, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(q.path(), q.path(), &mut out);
    out.retain(|p| !p.starts_with("lock/"));
    out.sort();
    out
}

fn todo_count(q: &Queue) -> usize {
    fs::read_dir(q.path().join("todo")).unwrap().count()
}

#[test]
fn files_land_where_qmail_looks() {
    let (_tmp, q) = setup();
    let mut m = q.begin(Invoker::User(1000)).unwrap();
    let id = m.id();
    m.write(b"Subject: test\n").unwrap();
    m.write(b"\nhello\n").unwrap();
    assert_eq!(m.commit(&env()).unwrap(), id);

    let pid = std::process::id();
    let mess = q.path().join(format!("mess/{}/{id}", id % 23));
    assert_eq!(fs::metadata(&mess).unwrap().ino(), id, "id is mess's inode");
    let body = fs::read(&mess).unwrap();
    let text = String::from_utf8(body).unwrap();
    let prefix = format!("Received: (qmail {pid} invoked by uid 1000); ");
    assert!(text.starts_with(&prefix), "{text}");
    let (received, rest) = text.split_once('\n').unwrap();
    assert!(received.ends_with(" -0000"), "{received}");
    assert_eq!(rest, "Subject: test\n\nhello\n");

    let want = format!("u1000\0p{pid}\0Fa@b.example\0Tc@d.example\0Te@f.example\0");
    let todo = q.path().join(format!("todo/{id}"));
    let intd = q.path().join(format!("intd/{id}"));
    assert_eq!(fs::read(&todo).unwrap(), want.as_bytes());
    assert_eq!(
        fs::metadata(&todo).unwrap().ino(),
        fs::metadata(&intd).unwrap().ino()
    );
    assert_eq!(fs::metadata(&mess).unwrap().mode() & 0o777, 0o644);
    assert_eq!(fs::metadata(&todo).unwrap().mode() & 0o777, 0o644);
    assert_eq!(
        files(&q),
        vec![
            format!("intd/{id}"),
            format!("mess/{}/{id}", id % 23),
            format!("todo/{id}")
        ],
        "nothing left in pid/"
    );
}

#[test]
fn received_line_wording() {
    let (_tmp, q) = setup();
    for (inv, words) in [
        (Invoker::Network(7), "invoked from network"),
        (Invoker::Alias(7), "invoked by alias"),
        (Invoker::Bounce(7), "invoked for bounce"),
    ] {
        let m = q.begin(inv).unwrap();
        let id = m.commit(&env()).unwrap();
        let text = fs::read(q.path().join(format!("mess/{}/{id}", id % 23))).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains(words), "{text}");
        let todo = fs::read(q.path().join(format!("todo/{id}"))).unwrap();
        assert!(todo.starts_with(b"u7\0p"));
    }
}

#[test]
fn trigger_is_pulled() {
    let (_tmp, q) = setup();
    let fifo = q.path().join("lock/trigger");
    let name = sys::name(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C string; we own the returned descriptor.
    let fd = unsafe { libc::open(name.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK) };
    assert!(fd >= 0);
    let mut reader = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    q.begin(Invoker::User(1)).unwrap().commit(&env()).unwrap();
    let mut byte = [9u8; 4];
    let n = std::io::Read::read(&mut reader, &mut byte).unwrap();
    assert_eq!(&byte[..n], &[0]);
    // No reader: still fine.
    drop(reader);
    q.begin(Invoker::User(1)).unwrap().commit(&env()).unwrap();
}

const STEPS: [Step; 5] = [
    Step::MessSynced,
    Step::IntdCreated,
    Step::IntdSynced,
    Step::MessDirSynced,
    Step::TodoLinked,
];

#[test]
fn crash_before_todo_leaves_nothing_deliverable() {
    let (_tmp, q) = setup();
    // A crash right after begin and after some writes.
    let mut m = q.begin(Invoker::User(1)).unwrap();
    m.write(b"partial").unwrap();
    std::mem::forget(m);
    assert_eq!(todo_count(&q), 0);

    for step in STEPS {
        let mut m = q.begin(Invoker::User(1)).unwrap();
        let id = m.id();
        m.write(b"body\n").unwrap();
        m.commit_until(&env(), step).unwrap();
        // The process dies here: no destructor runs.
        std::mem::forget(m);
        let todo = q.path().join(format!("todo/{id}"));
        if step < Step::TodoLinked {
            assert!(!todo.exists(), "{step:?}");
        } else {
            // Once todo/N exists the message is whole.
            let mess = fs::read(q.path().join(format!("mess/{}/{id}", id % 23))).unwrap();
            assert!(mess.ends_with(b"\nbody\n"));
            let want = env().to_intd_bytes(1, std::process::id());
            assert_eq!(fs::read(todo).unwrap(), want);
        }
    }
    assert_eq!(todo_count(&q), 1);
}

#[test]
fn abort_at_any_step_removes_everything() {
    let (_tmp, q) = setup();
    let m = q.begin(Invoker::User(1)).unwrap();
    drop(m);
    assert_eq!(files(&q), Vec::<String>::new());
    let mut m = q.begin(Invoker::User(1)).unwrap();
    m.write(&vec![b'x'; 200_000]).unwrap();
    m.abort();
    assert_eq!(files(&q), Vec::<String>::new());

    for step in STEPS {
        let mut m = q.begin(Invoker::User(1)).unwrap();
        m.write(b"body\n").unwrap();
        m.commit_until(&env(), step).unwrap();
        let id = m.id();
        drop(m);
        if step < Step::TodoLinked {
            assert_eq!(files(&q), Vec::<String>::new(), "{step:?}");
        } else {
            assert!(
                q.path().join(format!("todo/{id}")).exists(),
                "committed stays"
            );
        }
    }
}

#[test]
fn bad_envelope_queues_nothing() {
    let (_tmp, q) = setup();
    let m = q.begin(Invoker::User(1)).unwrap();
    let long = Envelope::new(vec![b'x'; 1003], vec![]);
    assert_eq!(m.commit(&long).unwrap_err().exit_code(), 11);
    let m = q.begin(Invoker::User(1)).unwrap();
    let nul = Envelope::new("a", vec![b"b\0c".to_vec()]);
    assert_eq!(m.commit(&nul).unwrap_err().exit_code(), 91);
    assert_eq!(files(&q), Vec::<String>::new());
}

#[test]
fn stale_intd_is_replaced() {
    let (_tmp, q) = setup();
    let m = q.begin(Invoker::User(1)).unwrap();
    let id = m.id();
    fs::write(q.path().join(format!("intd/{id}")), b"stale").unwrap();
    m.commit(&env()).unwrap();
    let want = env().to_intd_bytes(1, std::process::id());
    assert_eq!(fs::read(q.path().join(format!("todo/{id}"))).unwrap(), want);
}

#[test]
fn large_messages_stream_through() {
    let (_tmp, q) = setup();
    let mut m = q.begin(Invoker::User(1)).unwrap();
    let chunk: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    for _ in 0..100 {
        m.write(&chunk).unwrap();
    }
    m.write(&vec![b'z'; 300_000]).unwrap();
    let id = m.commit(&env()).unwrap();
    let mess = fs::read(q.path().join(format!("mess/{}/{id}", id % 23))).unwrap();
    let body = &mess[mess.iter().position(|&b| b == b'\n').unwrap() + 1..];
    assert_eq!(body.len(), 1_300_000);
    assert_eq!(&body[..10_000], &chunk[..]);
    assert!(body[1_000_000..].iter().all(|&b| b == b'z'));
}

#[test]
fn concurrent_commits() {
    let (_tmp, q) = setup();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let q = q.clone();
            std::thread::spawn(move || {
                (0..40)
                    .map(|i| {
                        let mut m = q.begin(Invoker::User(t)).unwrap();
                        m.write(format!("thread {t} message {i}\n").as_bytes())
                            .unwrap();
                        (t, i, m.commit(&env()).unwrap())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for h in threads {
        for (t, i, id) in h.join().unwrap() {
            assert!(ids.insert(id), "duplicate id {id}");
            let mess = fs::read(q.path().join(format!("mess/{}/{id}", id % 23))).unwrap();
            assert!(mess.ends_with(format!("\nthread {t} message {i}\n").as_bytes()));
        }
    }
    assert_eq!(todo_count(&q), 320);
    assert_eq!(fs::read_dir(q.path().join("pid")).unwrap().count(), 0);
}

#[test]
fn open_errors_name_the_missing_piece() {
    let tmp = tempfile::tempdir().unwrap();
    let code = |p: &Path| Queue::open(p).unwrap_err().exit_code();
    assert_eq!(code(&tmp.path().join("nohome")), 61);
    assert_eq!(code(tmp.path()), 62);
    for (dir, want) in [("pid", 63), ("mess", 64), ("intd", 65), ("todo", 66)] {
        let home = tmp.path().join(dir);
        create_queue(&home, None).unwrap();
        fs::remove_dir_all(home.join("queue").join(dir)).unwrap();
        assert_eq!(code(&home), want, "{dir}");
    }
    let home = tmp.path().join("nolock");
    create_queue(&home, None).unwrap();
    fs::remove_dir_all(home.join("queue/lock")).unwrap();
    let q = Queue::open(&home).unwrap();
    q.begin(Invoker::User(1)).unwrap().commit(&env()).unwrap();
}

#[test]
fn split_is_read_from_disk() {
    let tmp = tempfile::tempdir().unwrap();
    create_queue_split(tmp.path(), None, 7).unwrap();
    let q = Queue::open(tmp.path()).unwrap();
    assert_eq!(q.split(), 7);
    let id = q.begin(Invoker::User(1)).unwrap().commit(&env()).unwrap();
    assert!(q.path().join(format!("mess/{}/{id}", id % 7)).exists());
}

#[test]
fn handles_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Queue>();
    send::<Incoming>();
    send::<crate::MessageSink>();
}
