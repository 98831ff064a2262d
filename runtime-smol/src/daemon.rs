//! Daemon mode: every connection a task on one single-threaded executor.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Shutdown as HalfClose, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_io::{Async, Timer};
use smol::channel::{self, Receiver, Sender};
use smol::future;
use smol::lock::{Semaphore, SemaphoreGuardArc};
use smol::LocalExecutor;
use sqmail_core::service::{Admission, ServeLimits, SessionFactory, Shutdown};
use sqmail_core::smtp::session::{discard_pending_input, Session, Status, READ_BUFFER};

use crate::drive;

/// What the accept loops and the sessions of one daemon share.
struct Shared {
    ex: LocalExecutor<'static>,
    factory: Arc<dyn SessionFactory>,
    max_per_ip: usize,
    per_ip: RefCell<HashMap<IpAddr, usize>>,
    open: Cell<usize>,
    /// Told each time a session ends, so shutdown can count them out.
    ended: Sender<()>,
    /// Closed (never sent on) when the grace period is over.
    stop: Receiver<()>,
    /// At most `limits.blocking_threads` jobs at once, as in sqmail-mio.
    jobs: Semaphore,
    /// The one read buffer of the thread; no connection has its own.
    buf: RefCell<Box<[u8]>>,
}

pub(crate) fn serve(
    listeners: Vec<TcpListener>,
    limits: ServeLimits,
    factory: Arc<dyn SessionFactory>,
    shutdown: Shutdown,
) -> io::Result<()> {
    let (ended, ended_rx) = channel::unbounded();
    let (stop_tx, stop) = channel::bounded::<()>(1);
    let shared = Rc::new(Shared {
        ex: LocalExecutor::new(),
        factory,
        max_per_ip: limits.max_per_ip,
        per_ip: RefCell::default(),
        open: Cell::new(0),
        ended,
        stop,
        jobs: Semaphore::new(limits.blocking_threads.max(1)),
        buf: RefCell::new(vec![0; READ_BUFFER].into_boxed_slice()),
    });
    // Closed (never sent on) by `shutdown.trigger()`, from any thread.
    let (wake_tx, wake) = channel::bounded::<()>(1);
    let _on_shutdown = shutdown.register(move || {
        wake_tx.close();
    });
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut acceptors = Vec::new();
    for listener in listeners {
        let listener = Async::new(listener)?;
        let task = accept(listener, Rc::clone(&shared), Arc::clone(&slots));
        acceptors.push(shared.ex.spawn(task));
    }
    let main = async {
        let _ = wake.recv().await;
        // Cancelling the accept loops closes the listeners.
        drop(acceptors);
        let end = Instant::now() + shutdown.grace();
        while shared.open.get() > 0 {
            let grace_over = future::or(
                async {
                    let _ = ended_rx.recv().await;
                    false
                },
                async {
                    Timer::at(end).await;
                    true
                },
            );
            if grace_over.await {
                break;
            }
        }
        // Sessions still open close now, or after their running job.
        drop(stop_tx);
        while shared.open.get() > 0 {
            let _ = ended_rx.recv().await;
        }
    };
    smol::block_on(shared.ex.run(main));
    Ok(())
}

async fn accept(listener: Async<TcpListener>, shared: Rc<Shared>, slots: Arc<Semaphore>) {
    loop {
        // Wait for a client before taking a slot: a listener holding a slot
        // while it waits would starve the other listeners at the limit.
        if listener.readable().await.is_err() {
            Timer::after(Duration::from_millis(50)).await;
            continue;
        }
        // At the connection limit, new clients wait in the listen backlog.
        let slot = slots.acquire_arc().await;
        let (stream, peer) = match listener.get_ref().accept() {
            Ok(accepted) => accepted,
            Err(e) if is_transient(&e) => continue,
            Err(_) => {
                // Out of descriptors or memory: do not spin on it.
                Timer::after(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(stream) = Async::new(stream) else {
            continue;
        };
        let ip = peer.ip().to_canonical();
        let from_ip = shared.per_ip.borrow().get(&ip).copied().unwrap_or(0);
        if from_ip >= shared.max_per_ip {
            continue;
        }
        let Ok(local) = stream.get_ref().local_addr() else {
            continue;
        };
        let (config, host) = match shared.factory.admit(peer, local) {
            Admission::Deny => continue,
            Admission::Accept { config, host } => (config, host),
        };
        *shared.per_ip.borrow_mut().entry(ip).or_insert(0) += 1;
        shared.open.set(shared.open.get() + 1);
        let session = Session::new(config, host, Instant::now());
        let guard = Leave {
            shared: Rc::clone(&shared),
            ip,
            _slot: slot,
        };
        shared.ex.spawn(connection(stream, session, guard)).detach();
    }
}

fn is_transient(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(e.kind(), WouldBlock | Interrupted | ConnectionAborted)
}

async fn connection(stream: Async<TcpStream>, mut session: Session, guard: Leave) {
    let shared = &guard.shared;
    let status = drive::run(
        &stream,
        &stream,
        &mut session,
        &shared.buf,
        Some(&shared.jobs),
        Some(&shared.stop),
    )
    .await;
    if status == Status::Done {
        // FIN after the last reply, rather than leave it to the drop.
        let _ = stream.get_ref().shutdown(HalfClose::Write);
        discard_pending_input(stream.get_ref());
    }
}

/// Gives back a session's share of the limits when it ends, however it ends.
struct Leave {
    shared: Rc<Shared>,
    ip: IpAddr,
    _slot: SemaphoreGuardArc,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let mut per_ip = self.shared.per_ip.borrow_mut();
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.shared.open.set(self.shared.open.get() - 1);
        let _ = self.shared.ended.try_send(());
    }
}
