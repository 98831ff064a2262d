//! Throughput of durable commits: N messages of 2 KiB, from 1 and from 8
//! threads, into a fresh queue.
//!
//! `cargo run --release -p sqmail-queue --example queue_bench -- [DIR] [N]`
//! (DIR defaults to the system temp dir; use the filesystem the real queue
//! lives on, since the figure is dominated by fsync).

use std::path::PathBuf;
use std::time::Instant;

use sqmail_queue::{create_queue, Envelope, Invoker, Queue};

fn main() {
    let mut args = std::env::args().skip(1);
    let base = args.next().map_or_else(std::env::temp_dir, PathBuf::from);
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let home = base.join(format!("sqmail-queue-bench-{}", std::process::id()));
    create_queue(&home, None).expect("create queue");
    let queue = Queue::open(&home).expect("open queue");
    let body = {
        let mut b = b"From: a@example.com\nTo: b@example.com\nSubject: bench\n\n".to_vec();
        b.resize(2048, b'x');
        b
    };
    let env = Envelope::new("a@example.com", vec![b"b@example.com".to_vec()]);

    for threads in [1usize, 8, 32] {
        let per = n / threads;
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    for _ in 0..per {
                        let mut m = queue.begin(Invoker::Network(1)).expect("begin");
                        m.write(&body).expect("write");
                        m.commit(&env).expect("commit");
                    }
                });
            }
        });
        let secs = start.elapsed().as_secs_f64();
        let total = per * threads;
        println!(
            "{threads} thread(s): {total} msgs in {secs:.2} s = {:.0} msgs/s",
            total as f64 / secs
        );
    }
    let _ = std::fs::remove_dir_all(&home);
}
