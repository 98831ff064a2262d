//! Delivery survives SIGKILL: a few hundred queued messages, `sqmail send`
//! killed at random moments while it delivers them and restarted each
//! time, then let finish. Every message must reach its mailbox at least
//! once, whole; the queue must end empty; and a message may be delivered
//! twice only if its delivery was in flight at a kill.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{code, Client, Daemon, Proc, TestHome};

const MESSAGES: usize = 300;
const BOXES: usize = 4;
const KILLS: usize = 5;
/// control/concurrencylocal: at most this many deliveries are in flight.
const CONCURRENCY: usize = 5;

/// xorshift64, seeded from the clock (and printed, to replay a failure).
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

fn mailbox(i: usize) -> String {
    format!("box{}@localhost", i % BOXES)
}

/// Message `i`'s mailboxes (by number): one, and every tenth a second.
fn recipients(i: usize) -> Vec<usize> {
    let mut r = vec![i % BOXES];
    if i % 10 == 9 {
        r.push((i + 1) % BOXES);
    }
    r
}

/// Queues every message through `sqmail smtpd --listen`, over one
/// connection per mailbox.
fn queue_all(home: &TestHome) {
    let daemon = Daemon::start(&home.path, &[]);
    let addr = daemon.addr;
    let threads: Vec<_> = (0..BOXES)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr).unwrap();
                assert_eq!(code(&c.reply().unwrap()).unwrap(), 220);
                assert_eq!(c.cmd("HELO crash.test").unwrap(), 250);
                for i in (t..MESSAGES).step_by(BOXES) {
                    assert_eq!(c.cmd("MAIL FROM:<a@crash.test>").unwrap(), 250);
                    for r in recipients(i) {
                        let r = mailbox(r);
                        assert_eq!(c.cmd(&format!("RCPT TO:<{r}>")).unwrap(), 250, "{r}");
                    }
                    assert_eq!(c.cmd("DATA").unwrap(), 354);
                    let mut body = format!("Subject: crash-{i}\r\n\r\n");
                    for line in 0..40 {
                        body.push_str(&format!("{line:02} {}\r\n", "y".repeat(70)));
                    }
                    body.push_str(&format!("END-crash-{i}\r\n.\r\n"));
                    c.send(&body).unwrap();
                    assert_eq!(code(&c.reply().unwrap()).unwrap(), 250, "message {i}");
                }
                assert_eq!(c.cmd("QUIT").unwrap(), 221);
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// `sqmail send`, once it runs. A send killed a moment ago may still have
/// a delivery in a forked child that holds `lock/sendmutex`; the new one
/// then exits 111 naming the lock, and is started again (as supervise
/// would), which is counted in `refused`.
fn start_send(home: &TestHome, refused: &mut usize) -> Proc {
    let start = Instant::now();
    loop {
        let mut send = Proc::send(&home.path, &[]);
        let ok = common::wait_until(Duration::from_secs(20), || {
            !send.stdout().is_empty() || send.child.try_wait().unwrap().is_some()
        });
        assert!(ok, "send did not start\n{}", send.output());
        if !send.stdout().is_empty() {
            return send;
        }
        let status = send.exit();
        assert!(
            status.code() == Some(111) && send.stderr().contains("lock/sendmutex"),
            "{status}\n{}",
            send.output()
        );
        *refused += 1;
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the lock stayed taken\n{}",
            send.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn successes(log: &str) -> usize {
    log.matches(": success: ").count()
}

/// The whole scenario: queue, kill `sqmail send` KILLS times during its
/// deliveries, let the last run finish. Asserts that nothing was lost,
/// nothing delivered partially or astray, the queue is empty and the last
/// send exits 0 on SIGTERM. Returns how many deliveries were repeated,
/// and how many the killed runs logged as successes.
fn crash_run(name: &str) -> (usize, usize) {
    let home = TestHome::new(name);
    home.control("concurrencylocal", &format!("{CONCURRENCY}\n"));
    let maildirs: Vec<PathBuf> = (0..BOXES)
        .map(|b| common::add_mailbox(&home.path, &mailbox(b)))
        .collect();
    queue_all(&home);
    let deliveries: usize = (0..MESSAGES).map(|i| recipients(i).len()).sum();

    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    eprintln!("seed {seed}");
    let mut rng = Rng(seed);
    let mut refused = 0;
    let mut delivered_before_kills = 0;
    for _ in 0..KILLS {
        // Kill once this run has finished a random number of deliveries
        // (a few, so that most are left for the later runs), plus a
        // random few milliseconds: in the middle of the next ones.
        let target = 2 + rng.next(25) as usize;
        let mut send = start_send(&home, &mut refused);
        let start = Instant::now();
        while successes(&send.stdout()) < target {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no progress\n{}",
                send.output()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(rng.next(5000)));
        send.kill();
        delivered_before_kills += successes(&send.stdout());
    }
    assert!(
        delivered_before_kills < deliveries,
        "every kill came during the deliveries"
    );

    // The last run finishes the queue.
    let mut send = start_send(&home, &mut refused);
    // Done when nothing is left but what a kill during a removal leaves,
    // as in qmail: a `mess/N` whose `info/N` was already unlinked, which
    // the cleanup pass removes once it is 36 hours old.
    let done = common::wait_until(Duration::from_secs(30), || {
        let files = common::queue_files(&home.path);
        files.iter().all(|f| {
            let id = f.rsplit('/').next().unwrap_or("");
            f.starts_with("mess/")
                && !files.iter().any(|g| {
                    (g.starts_with("info/") || g.starts_with("todo/"))
                        && g.ends_with(&format!("/{id}"))
                })
        })
    });
    assert!(
        done,
        "queue left: {:?}\n{}",
        common::queue_files(&home.path),
        send.output()
    );
    send.signal(libc::SIGTERM);
    let status = send.exit();
    assert!(status.success(), "{status}\n{}", send.output());

    let mut copies: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for (b, maildir) in maildirs.iter().enumerate() {
        for m in common::maildir_messages(maildir) {
            let subject = common::subject(&m).unwrap_or_else(|| panic!("no subject: {m}"));
            let i: usize = subject.strip_prefix("crash-").unwrap().parse().unwrap();
            assert!(
                m.ends_with(&format!("\nEND-crash-{i}\n")),
                "a partial delivery of {i}: {m}"
            );
            *copies.entry((b, i)).or_default() += 1;
        }
    }
    let mut lost = Vec::new();
    let mut duplicates = 0;
    for i in 0..MESSAGES {
        for b in recipients(i) {
            match copies.remove(&(b, i)) {
                Some(n) => duplicates += n - 1,
                None => lost.push((mailbox(b), i)),
            }
        }
    }
    assert!(lost.is_empty(), "lost: {lost:?}");
    assert!(copies.is_empty(), "delivered where not sent: {copies:?}");
    // A kill between preprocessing's two unlinks leaves intd/N behind for
    // the 36-hour cleanup (harmless: the next injection that gets inode N
    // replaces it).
    let stale_intd = std::fs::read_dir(home.path.join("queue/intd"))
        .unwrap()
        .count();
    eprintln!(
        "{deliveries} deliveries of {MESSAGES} messages; {KILLS} kills \
         ({delivered_before_kills} delivered before them); {duplicates} duplicates; \
         {refused} restarts refused while a killed send's delivery held the lock; \
         {stale_intd} stale intd files"
    );
    (duplicates, delivered_before_kills)
}

#[test]
fn killed_deliveries_lose_nothing() {
    let (duplicates, delivered_before_kills) = crash_run("crash-send");
    // A repeated delivery is one a killed run made (finished, or in flight
    // at the kill); no single run delivers anything twice.
    assert!(duplicates <= delivered_before_kills + KILLS * CONCURRENCY);
}

/// Only a delivery in flight at a crash can be repeated after it: a slot
/// stays taken until the delivery's done mark is durable, so each kill can
/// cause at most concurrencylocal duplicates.
#[test]
fn killed_deliveries_duplicate_only_what_was_in_flight() {
    let (duplicates, _) = crash_run("crash-send-dups");
    assert!(
        duplicates <= KILLS * CONCURRENCY,
        "{duplicates} duplicates from {KILLS} kills at concurrency {CONCURRENCY}"
    );
}
