//! A fixed set of threads running one kind of job, each result sent back
//! to the daemon's event channel. Two pools keep slow deliveries from
//! holding up the queue writes the scheduler waits on.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

pub struct Pool<J> {
    jobs: Option<crossbeam_channel::Sender<J>>,
    threads: Vec<JoinHandle<()>>,
}

impl<J: Send + 'static> Pool<J> {
    /// `size` threads named `name`, each running `work` on the jobs it
    /// takes and sending what it returns to `results`.
    pub fn new<R, W>(
        name: &str,
        size: usize,
        results: Sender<R>,
        work: W,
    ) -> std::io::Result<Pool<J>>
    where
        R: Send + 'static,
        W: Fn(J) -> R + Send + Sync + 'static,
    {
        // Idle threads wait on the channel itself, so a job wakes one of
        // them and nothing else (a lock around one receiver cost a second
        // wake-up per job, handing the lock on).
        let (tx, rx) = crossbeam_channel::unbounded::<J>();
        let work = Arc::new(work);
        let threads = (0..size.max(1))
            .map(|i| {
                let rx = rx.clone();
                let work = Arc::clone(&work);
                let results = results.clone();
                thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || loop {
                        // No lock of ours is held while working, so a fork
                        // in `work` inherits none.
                        let Ok(job) = rx.recv() else { return };
                        if results.send(work(job)).is_err() {
                            return;
                        }
                    })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Pool {
            jobs: Some(tx),
            threads,
        })
    }

    pub fn submit(&self, job: J) {
        if let Some(tx) = &self.jobs {
            // The threads live as long as the pool, so this cannot fail.
            let _ = tx.send(job);
        }
    }
}

impl<J> Drop for Pool<J> {
    /// Lets the threads finish the jobs already taken, then joins them.
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
