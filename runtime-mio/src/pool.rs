//! Threads that run blocking jobs (message commits with fsync) off the
//! event loop and hand each verdict back through a channel and a
//! [`mio::Waker`].

use std::io;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use mio::Waker;
use sqmail_core::smtp::host::Job;
use sqmail_core::smtp::session::run_job;
use sqmail_core::smtp::{Ticket, Verdict};

/// Which connection (slot and generation) a job answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Key {
    pub slot: usize,
    pub generation: u64,
}

pub(crate) struct Done {
    pub key: Key,
    pub ticket: Ticket,
    pub verdict: Verdict,
}

type Task = (Key, Ticket, Job);

pub(crate) struct Pool {
    tasks: Option<crossbeam_channel::Sender<Task>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    pub fn new(threads: usize, done: Sender<Done>, waker: Arc<Waker>) -> io::Result<Pool> {
        // Idle workers wait on the channel itself: a task wakes one of
        // them and nothing else.
        let (tasks, queue) = crossbeam_channel::unbounded::<Task>();
        let mut pool = Pool {
            tasks: Some(tasks),
            threads: Vec::new(),
        };
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            let done = done.clone();
            let waker = Arc::clone(&waker);
            let thread = thread::Builder::new()
                .name(format!("sqmail-job-{i}"))
                .spawn(move || work(&queue, &done, &waker))?;
            pool.threads.push(thread);
        }
        Ok(pool)
    }

    pub fn submit(&self, key: Key, ticket: Ticket, job: Job) {
        if let Some(tasks) = &self.tasks {
            // Fails only if every worker is gone, which `work` never allows.
            let _ = tasks.send((key, ticket, job));
        }
    }
}

fn work(queue: &crossbeam_channel::Receiver<Task>, done: &Sender<Done>, waker: &Waker) {
    loop {
        let Ok((key, ticket, job)) = queue.recv() else {
            return;
        };
        let verdict = run_job(job);
        // The loop may have returned already; the verdict is then moot.
        let _ = done.send(Done {
            key,
            ticket,
            verdict,
        });
        let _ = waker.wake();
    }
}

impl Drop for Pool {
    /// Waits for queued and running jobs: one may be committing a message.
    fn drop(&mut self) {
        self.tasks = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
