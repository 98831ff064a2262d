//! `|command` lines: `/bin/sh -c command` in the home directory, the
//! message (without Return-Path/Delivered-To; those are in $RPLINE and
//! $DTLINE) on stdin, qmail-local's environment, and stdout and stderr
//! collected into the delivery report as qmail-lspawn does.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use sqmail_core::dotqmail::{program_exit, ProgramExit};

/// Report bytes kept from a program (qmail-send truncates reports too).
const OUTPUT_MAX: usize = 4000;

/// How a program run ended, and what it printed.
pub(super) struct Run {
    /// `Err` is a report text for a run that never got an exit code.
    pub exit: Result<ProgramExit, String>,
    pub output: Vec<u8>,
}

/// A value fit for the environment: C strings end at NUL.
fn cstr(v: &[u8]) -> &OsStr {
    OsStr::from_bytes(v.split(|&b| b == 0).next().unwrap_or_default())
}

pub(super) fn run(
    command: &[u8],
    home: &Path,
    env: &[(&'static str, Vec<u8>)],
    message: &Path,
) -> Run {
    let fail = |text: String| Run {
        exit: Err(text),
        output: Vec::new(),
    };
    let stdin = match File::open(message) {
        Ok(f) => f,
        Err(e) => return fail(format!("Unable to read message: {e}. (#4.3.0)")),
    };
    let (mut reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return fail(format!("Unable to fork: {e}. (#4.3.0)")),
    };
    let spawned = {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(cstr(command))
            .current_dir(home)
            .stdin(stdin);
        match writer.try_clone() {
            Ok(w) => cmd.stdout(w),
            Err(e) => return fail(format!("Unable to fork: {e}. (#4.3.0)")),
        };
        cmd.stderr(writer);
        cmd.env_remove("DEFAULT");
        for (k, v) in env {
            cmd.env(k, cstr(v));
        }
        cmd.spawn()
        // `cmd`, holding the pipe's write ends, is dropped here so the
        // read below ends when the program (and its children) exit.
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return fail(format!("Unable to run /bin/sh: {e}. (#4.3.0)")),
    };
    let mut output = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        let room = OUTPUT_MAX.saturating_sub(output.len());
        output.extend_from_slice(&buf[..n.min(room)]);
    }
    let exit = match child.wait() {
        Ok(st) => match st.code() {
            Some(code) => Ok(program_exit(code)),
            None => Err("Aack, child crashed. (#4.3.0)".into()),
        },
        Err(e) => Err(format!("Unable to wait for program: {e}. (#4.3.0)")),
    };
    Run { exit, output }
}
