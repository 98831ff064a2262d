//! mbox delivery (mbox(5)) as qmail-local writes it: an exclusive `flock`
//! (30 s at most), the `From ` line, `>From ` quoting (of `From ` after any
//! number of `>`), a blank line at the end, fsync, and on any error the
//! file cut back to where this message began.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use sqmail_core::dotqmail::needs_from_quote;

/// How long qmail-local waits for the lock.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Append to the mbox `path` (`shown` is the name as in the .qmail file).
pub(super) fn deliver(
    path: &Path,
    shown: &str,
    head: &[&[u8]],
    message: &Path,
) -> Result<(), String> {
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("Unable to open {shown}: {e}. (#4.2.1)"))?;
    // As qmail: a file that cannot be locked at all is written unlocked.
    let locked = lock(&file)?;
    let pos = file
        .seek(SeekFrom::End(0))
        .map_err(|e| format!("Unable to write {shown}: {e}. (#4.3.0)"))?;
    let result = write(&file, shown, head, message);
    if result.is_err() && locked {
        let _ = file.set_len(pos);
    }
    result
}

fn lock(file: &File) -> Result<bool, String> {
    let start = Instant::now();
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) | Some(libc::EINTR) => {}
            _ => return Ok(false),
        }
        if start.elapsed() >= LOCK_WAIT {
            return Err("File has been locked for 30 seconds straight. (#4.3.0)".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write(file: &File, shown: &str, head: &[&[u8]], message: &Path) -> Result<(), String> {
    let werr = |e: io::Error| format!("Unable to write {shown}: {e}. (#4.3.0)");
    let rerr = |e: io::Error| format!("Unable to read message: {e}. (#4.3.0)");
    let mut input = BufReader::new(File::open(message).map_err(rerr)?);
    let mut out = BufWriter::new(file);
    for h in head {
        out.write_all(h).map_err(werr)?;
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).map_err(rerr)? == 0 {
            break;
        }
        if needs_from_quote(&line) {
            out.write_all(b">").map_err(werr)?;
        }
        out.write_all(&line).map_err(werr)?;
        if !line.ends_with(b"\n") {
            out.write_all(b"\n").map_err(werr)?;
            break;
        }
    }
    out.write_all(b"\n").map_err(werr)?;
    out.flush().map_err(werr)?;
    drop(out);
    file.sync_all().map_err(werr)
}
