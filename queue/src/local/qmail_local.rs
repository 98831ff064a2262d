//! One qmail-local run, as the current user: home and `.qmail` checks,
//! the loop check, then each instruction in order.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sqmail_core::assign::UserEntry;
use sqmail_core::dotqmail::{self, Context, Instruction, ProgramExit};

use super::users::is_temp;
use super::{maildir, mbox, program, Forward, Outcome, Request, Verdict};

/// Home and `.qmail` modes that defer delivery: qmail's conf-patrn is 002;
/// sqmail also refuses group-writable ones, as s/qmail does.
const PATRN: u32 = 0o022;

/// The deferral of a Maildir-only delivery whose `.qmail` asks for more.
pub(super) const NOT_MAILDIR_ONLY: &str =
    "Not only Maildir deliveries: the queue takes the message.";

/// Whether `out` is that deferral, which ran nothing.
pub(super) fn not_maildir_only(out: &Outcome) -> bool {
    out.verdict == Verdict::Deferral && out.report.strip_suffix('\n') == Some(NOT_MAILDIR_ONLY)
}

fn path(home: &Path, p: &[u8]) -> PathBuf {
    home.join(OsStr::from_bytes(p))
}

/// qmail-local for `user` (already looked up) and `req`'s message.
pub(super) fn run(user: &UserEntry, req: &Request<'_>) -> Outcome {
    let mut report = String::new();
    match run_inner(user, req, &mut report) {
        Ok(out) => out,
        Err((verdict, text)) => {
            // A failing program's report is its own output only.
            if !text.is_empty() {
                report.push_str(&text);
                report.push('\n');
            }
            Outcome {
                verdict,
                report,
                forward: None,
            }
        }
    }
}

type Fail = (Verdict, String);

fn z(s: impl Into<String>) -> Fail {
    (Verdict::Deferral, s.into())
}

fn run_inner(user: &UserEntry, req: &Request<'_>, report: &mut String) -> Result<Outcome, Fail> {
    let (local, host) = super::split(req.recipient);
    let home = Path::new(OsStr::from_bytes(&user.home));
    if !user.home.starts_with(b"/") {
        return Err(z(format!(
            "Home directory {} is not an absolute path. (#4.3.0)",
            home.display()
        )));
    }
    let st = fs::metadata(home).map_err(|e| {
        z(format!(
            "Unable to switch to {}: {e}. (#4.3.0)",
            home.display()
        ))
    })?;
    if st.mode() & PATRN != 0 {
        return Err(z("Uh-oh: home directory is writable. (#4.7.0)"));
    }
    if st.mode() & 0o1000 != 0 {
        return Err(z(
            "Home directory is sticky: user is editing his .qmail file. (#4.2.1)",
        ));
    }
    let ctx = Context {
        user: user.user.clone(),
        home: user.home.clone(),
        local: local.to_vec(),
        dash: user.dash.clone(),
        ext: user.ext.clone(),
        host: host.to_vec(),
        sender: req.sender.to_vec(),
    };
    let dtline = ctx.dtline();
    if dotqmail::looping(&read_header(req.message)?, &dtline) {
        return Err((Verdict::Failure, dotqmail::LOOPING.into()));
    }

    let mut found = None;
    for cand in dotqmail::search_order(&user.dash, &user.ext) {
        if let Some(f) = open_qmail(home, &cand.name)? {
            found = Some((f, cand.default));
            break;
        }
    }
    if found.is_none() && !user.dash.is_empty() {
        return Err((Verdict::Failure, dotqmail::NO_MAILBOX.into()));
    }
    let (owner, owner_default) = dotqmail::owner_files(&user.dash, &user.ext);
    let newsender = if ctx.sender.is_empty() || ctx.sender == b"#@[]" {
        ctx.sender.clone()
    } else {
        ctx.newsender(exists(home, &owner)?, exists(home, &owner_default)?)
    };
    let (contents, executable, default) = match found {
        Some(((mut f, x), default)) => {
            let mut c = Vec::new();
            f.read_to_end(&mut c)
                .map_err(|e| z(format!("Unable to read .qmail file: {e}. (#4.3.0)")))?;
            (c, x, default)
        }
        None => (Vec::new(), false, None),
    };
    let (contents, executable) = if contents.is_empty() {
        (req.default_delivery.to_vec(), false)
    } else {
        (contents, executable)
    };
    let instructions = dotqmail::parse(&contents).map_err(z)?;
    dotqmail::check_forward_only(&instructions, executable).map_err(z)?;
    let maildir_or_noop = |i: &Instruction| {
        !matches!(
            i,
            Instruction::Program(_) | Instruction::Mbox(_) | Instruction::Forward(_)
        )
    };
    if req.maildir_only && !instructions.iter().all(maildir_or_noop) {
        return Err(z(NOT_MAILDIR_ONLY));
    }

    let env = ctx.environment(req.now, &newsender, default.as_deref());
    let rpline = ctx.rpline();
    let ufline = ctx.ufline(req.now);
    let (mut files, mut programs, mut forwards) = (0, 0, Vec::new());
    for ins in &instructions {
        match ins {
            Instruction::Maildir(p) => {
                files += 1;
                maildir::deliver(&path(home, p), &[&rpline, &dtline], req.message).map_err(z)?;
            }
            Instruction::Mbox(p) => {
                files += 1;
                let shown = String::from_utf8_lossy(p);
                mbox::deliver(
                    &path(home, p),
                    &shown,
                    &[&ufline, &rpline, &dtline],
                    req.message,
                )
                .map_err(z)?;
            }
            Instruction::Program(cmd) => {
                programs += 1;
                let run = program::run(cmd, home, &env, req.message);
                report.push_str(&String::from_utf8_lossy(&run.output));
                match run.exit.map_err(z)? {
                    ProgramExit::Ok => {}
                    ProgramExit::Stop => break,
                    ProgramExit::Hard => return Err((Verdict::Failure, String::new())),
                    ProgramExit::Soft => return Err(z("")),
                }
            }
            Instruction::Forward(a) => forwards.push(a.clone()),
            Instruction::Comment | Instruction::List | Instruction::Ignored => {}
        }
    }
    let did = dotqmail::did_line(files, forwards.len(), programs);
    let forward = if forwards.is_empty() {
        report.push_str(&did);
        None
    } else {
        Some(Forward {
            sender: newsender,
            recipients: forwards,
            dtline,
            did,
            // SAFETY: getuid cannot fail.
            uid: unsafe { libc::getuid() },
        })
    };
    Ok(Outcome {
        verdict: Verdict::Success,
        report: std::mem::take(report),
        forward,
    })
}

/// The header, for the loop check: lines up to the first of at most one
/// byte.
fn read_header(message: &Path) -> Result<Vec<u8>, Fail> {
    let rerr = |e: io::Error| z(format!("Unable to read message: {e}. (#4.3.0)"));
    let mut r = BufReader::new(File::open(message).map_err(rerr)?);
    let mut header = Vec::new();
    loop {
        let start = header.len();
        if r.read_until(b'\n', &mut header).map_err(rerr)? == 0 || header.len() - start <= 1 {
            return Ok(header);
        }
    }
}

/// qmail-local's `qmeexists`: the open file and whether its x bit is set,
/// `None` for a missing or non-regular file; a writable one defers.
fn open_qmail(home: &Path, name: &[u8]) -> Result<Option<(File, bool)>, Fail> {
    let shown = String::from_utf8_lossy(name);
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path(home, name))
    {
        Ok(f) => f,
        Err(e) if is_temp(&e) || matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
            return Err(z(format!("Unable to open {shown}: {e}. (#4.3.0)")))
        }
        Err(_) => return Ok(None),
    };
    let st = f
        .metadata()
        .map_err(|e| z(format!("Unable to open {shown}: {e}. (#4.3.0)")))?;
    if !st.is_file() {
        return Ok(None);
    }
    if st.mode() & PATRN != 0 {
        return Err(z("Uh-oh: .qmail file is writable. (#4.7.0)"));
    }
    Ok(Some((f, st.mode() & 0o100 != 0)))
}

/// qmail-local's `qmeox`: does the owner file exist?
fn exists(home: &Path, name: &[u8]) -> Result<bool, Fail> {
    match fs::metadata(path(home, name)) {
        Ok(_) => Ok(true),
        Err(e) if is_temp(&e) => Err(z(format!(
            "Unable to open {}: {e}. (#4.3.0)",
            String::from_utf8_lossy(name)
        ))),
        Err(_) => Ok(false),
    }
}
