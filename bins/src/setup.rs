//! `sqmail setup`: a complete, empty qmail home, as qmail's `make setup`
//! and s/qmail's `package/dir` and `package/control` steps make it.
//! Idempotent: what exists is left alone.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::process::ExitCode;

use sqmail_queue::setup::{create_queue, QmailIds};

use crate::home::Home;

pub fn main(home: &Home) -> ExitCode {
    match setup(home) {
        Ok(()) => {
            println!("sqmail setup: {} is ready", home.path().display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sqmail setup: {}: {e}", home.path().display());
            ExitCode::from(111)
        }
    }
}

pub fn setup(home: &Home) -> io::Result<()> {
    create(home, owners()?)
}

/// The home, owned by `ids` (qmail's users) or, with `None`, by us.
pub fn create(home: &Home, ids: Option<QmailIds>) -> io::Result<()> {
    for dir in ["", "control", "users", "alias", "bin"] {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(home.path().join(dir))?;
    }
    create_queue(home.path(), ids)?;
    let me = hostname();
    let mut domains = vec![me.clone()];
    if me != "localhost" {
        domains.push("localhost".into());
    }
    write_new(home, "me", &format!("{me}\n"))?;
    if !me.contains('.') {
        // qmail-inject qualifies a host without a dot with defaultdomain
        // (default: me, giving `vm.vm`); say `localdomain` and take the
        // result as local.
        write_new(home, "defaultdomain", "localdomain\n")?;
        domains.push(format!("{me}.localdomain"));
        if me != "localhost" {
            domains.push("localhost.localdomain".into());
        }
    }
    write_new(home, "locals", &lines(&domains))?;
    write_new(home, "rcpthosts", &lines(&domains))
}

fn lines(list: &[String]) -> String {
    list.iter().map(|l| format!("{l}\n")).collect()
}

/// qmail's users own the tree when we are root and they exist; otherwise
/// the invoking user owns everything (the unprivileged embedded setup).
fn owners() -> io::Result<Option<QmailIds>> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    match QmailIds::lookup() {
        Ok(ids) => Ok(Some(ids)),
        Err(e) => {
            eprintln!(
                "sqmail setup: warning: {e}: the home is owned by root; create qmail's users \
                 (alias qmaild qmaill qmailp qmailq qmailr qmails, groups qmail nofiles) and run setup again"
            );
            Ok(None)
        }
    }
}

/// A control file, written only if it does not exist yet.
pub fn write_new(home: &Home, name: &str, contents: &str) -> io::Result<()> {
    let path = home.control(name);
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&path)
    {
        Ok(mut file) => file.write_all(contents.as_bytes()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
}

/// This machine's name, for `control/me`; `localhost` if it has none.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it or fails.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).trim().to_lowercase()
    } else {
        String::new()
    };
    if name.is_empty() || !sqmail_core::address::is_domain(name.as_bytes()) {
        "localhost".into()
    } else {
        name
    }
}
