//! The async wait around [`Session::drive`]: drive until the session must
//! wait, then wait for whichever comes first of readiness, its deadline, a
//! job's verdict or the daemon's stop.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::time::Instant;

use async_io::{Async, Timer};
use smol::channel::Receiver;
use smol::future;
use smol::lock::Semaphore;
use sqmail_core::smtp::session::{run_job, Session, Status};

enum Wake {
    Ready,
    Readable,
    Stop,
}

/// Runs `session` to its end on `reader` and `writer` (which may be one
/// socket). `buf` is the read buffer shared by every session of the thread:
/// it is borrowed only between awaits. `jobs` bounds the jobs running at
/// once across sessions. `stop` closing ends the session once no job is
/// running.
pub(crate) async fn run<R, W>(
    reader: &Async<R>,
    writer: &Async<W>,
    session: &mut Session,
    buf: &RefCell<Box<[u8]>>,
    jobs: Option<&Semaphore>,
    stop: Option<&Receiver<()>>,
) -> Status
where
    for<'a> &'a R: Read,
    for<'a> &'a W: Write,
{
    let mut turns = 0u32;
    loop {
        let now = Instant::now();
        if session.deadline().is_some_and(|at| at <= now) {
            session.timeout(now);
        }
        let mut started = None;
        let status = session.drive(
            now,
            reader.get_ref(),
            writer.get_ref(),
            &mut buf.borrow_mut(),
            &mut |ticket, job| {
                started = Some((ticket, job));
                None
            },
        );
        if let Some((ticket, job)) = started {
            // Run to the end even if the peer is gone and not raced with
            // `stop`: the job may be committing a message.
            let _running = match jobs {
                Some(jobs) => Some(jobs.acquire().await),
                None => None,
            };
            let verdict = smol::unblock(move || run_job(job)).await;
            if status != Status::Open {
                return status;
            }
            session.answer(Instant::now(), ticket, verdict);
            continue;
        }
        if status != Status::Open {
            return status;
        }
        if session.more_input() {
            turns += 1;
            if turns == 16 {
                turns = 0;
                // A client that never runs dry must not starve the others.
                future::yield_now().await;
            }
            continue;
        }
        let (read, write) = (session.wants_read(), session.wants_write());
        let io = async {
            match (read, write) {
                (true, true) => {
                    future::or(
                        async {
                            let _ = reader.readable().await;
                            Wake::Readable
                        },
                        async {
                            let _ = writer.writable().await;
                            Wake::Ready
                        },
                    )
                    .await
                }
                (true, false) => {
                    let _ = reader.readable().await;
                    Wake::Readable
                }
                (false, true) => {
                    let _ = writer.writable().await;
                    Wake::Ready
                }
                (false, false) => future::pending().await,
            }
        };
        let deadline = session.deadline();
        let timer = async {
            match deadline {
                Some(at) => {
                    Timer::at(at).await;
                    Wake::Ready
                }
                None => future::pending().await,
            }
        };
        let stopped = async {
            match stop {
                // Nothing is ever sent: the sender's drop is the signal.
                Some(stop) => {
                    let _ = stop.recv().await;
                    Wake::Stop
                }
                None => future::pending().await,
            }
        };
        match future::or(io, future::or(timer, stopped)).await {
            Wake::Readable => session.set_readable(),
            Wake::Ready => {}
            Wake::Stop => {
                session.farewell(writer.get_ref());
                return Status::Failed;
            }
        }
    }
}
