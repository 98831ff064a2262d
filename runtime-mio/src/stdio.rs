//! ucspi mode: one session on two descriptors, as under tcpserver or
//! sslserver (which may hand over one socket twice, or two pipes).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use sqmail_core::smtp::host::SmtpHost;
use sqmail_core::smtp::session::{run_job, Session, Status, READ_BUFFER};
use sqmail_core::smtp::Config;

const INPUT: Token = Token(0);
const OUTPUT: Token = Token(1);

pub(crate) fn serve(
    input: BorrowedFd<'_>,
    output: BorrowedFd<'_>,
    config: Arc<Config>,
    host: Box<dyn SmtpHost + Send>,
) -> io::Result<()> {
    // Own copies, so that dropping them never closes the caller's descriptors.
    let reader = File::from(input.try_clone_to_owned()?);
    let writer = File::from(output.try_clone_to_owned()?);
    let _restore_in = NonBlocking::set(reader.as_raw_fd())?;
    let _restore_out = NonBlocking::set(writer.as_raw_fd())?;
    let mut poll = Poll::new()?;
    let registry = poll.registry();
    // Regular files cannot be polled (EPERM) but are always ready anyway.
    for (fd, token, interest) in [
        (reader.as_raw_fd(), INPUT, Interest::READABLE),
        (writer.as_raw_fd(), OUTPUT, Interest::WRITABLE),
    ] {
        match registry.register(&mut SourceFd(&fd), token, interest) {
            Err(e) if e.raw_os_error() != Some(libc::EPERM) => return Err(e),
            _ => {}
        }
    }
    let mut events = Events::with_capacity(4);
    let mut buf = vec![0; READ_BUFFER];
    let mut session = Session::new(config, host, Instant::now());
    loop {
        let now = Instant::now();
        if session.deadline().is_some_and(|at| at <= now) {
            session.timeout(now);
        }
        // One session, so its blocking jobs may as well run right here.
        let status = session.drive(now, &reader, &writer, &mut buf, &mut |_, job| {
            Some(run_job(job))
        });
        if status != Status::Open {
            return Ok(());
        }
        if session.more_input() {
            continue;
        }
        let timeout = session
            .deadline()
            .map(|at| at.saturating_duration_since(now));
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if events.iter().any(|e| e.token() == INPUT) {
            session.set_readable();
        }
    }
}

/// Sets `O_NONBLOCK` on a descriptor and puts the old flags back on drop:
/// the flag lives on the shared file description, so a terminal or a
/// parent's pipe would otherwise stay non-blocking after we return.
struct NonBlocking {
    fd: RawFd,
    flags: libc::c_int,
}

impl NonBlocking {
    fn set(fd: RawFd) -> io::Result<NonBlocking> {
        // SAFETY: fcntl on a descriptor the caller keeps open; no memory is passed.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NonBlocking { fd, flags })
    }
}

impl Drop for NonBlocking {
    fn drop(&mut self) {
        // SAFETY: as in `set`; the descriptor outlives this guard.
        unsafe { libc::fcntl(self.fd, libc::F_SETFL, self.flags) };
    }
}
