//! ucspi mode: one session on two descriptors, as under tcpserver or
//! sslserver (which may hand over one socket twice, or two pipes).

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use async_io::Async;
use sqmail_core::smtp::host::SmtpHost;
use sqmail_core::smtp::session::{Session, READ_BUFFER};
use sqmail_core::smtp::Config;

use crate::drive;

pub(crate) fn serve(
    input: BorrowedFd<'_>,
    output: BorrowedFd<'_>,
    config: Arc<Config>,
    host: Box<dyn SmtpHost + Send>,
) -> io::Result<()> {
    // Own copies, so that dropping them never closes the caller's descriptors.
    let reader = File::from(input.try_clone_to_owned()?);
    let writer = File::from(output.try_clone_to_owned()?);
    let _restore_in = RestoreFlags::save(reader.as_raw_fd())?;
    let _restore_out = RestoreFlags::save(writer.as_raw_fd())?;
    let reader = Async::new(reader)?;
    let writer = Async::new(writer)?;
    let buf = RefCell::new(vec![0; READ_BUFFER].into_boxed_slice());
    let mut session = Session::new(config, host, Instant::now());
    smol::block_on(drive::run(&reader, &writer, &mut session, &buf, None, None));
    Ok(())
}

/// Puts a descriptor's flags back on drop: `Async` makes it non-blocking,
/// and the flag lives on the shared file description, so a terminal or a
/// parent's pipe would otherwise stay non-blocking after we return.
struct RestoreFlags {
    fd: RawFd,
    flags: libc::c_int,
}

impl RestoreFlags {
    fn save(fd: RawFd) -> io::Result<RestoreFlags> {
        // SAFETY: fcntl on a descriptor the caller keeps open; no memory is passed.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RestoreFlags { fd, flags })
    }
}

impl Drop for RestoreFlags {
    fn drop(&mut self) {
        // SAFETY: as in `save`; the descriptor outlives this guard.
        unsafe { libc::fcntl(self.fd, libc::F_SETFL, self.flags) };
    }
}
