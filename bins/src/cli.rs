//! The command line: `sqmail <program> [options]`, or a qmail name.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::{home::Home, inject, remote, send, sendmail, setup, smtpd, tcpto, up, user};

#[derive(Parser)]
#[command(
    name = "sqmail",
    version,
    about = "A qmail-compatible mail transfer agent"
)]
struct Cli {
    #[command(subcommand)]
    program: Program,
}

#[derive(Subcommand)]
enum Program {
    /// The whole mail system in a local folder on loopback ports, as you:
    /// made on first run, then smtpd and send together until Ctrl-C.
    Up(up::UpArgs),
    /// The SMTP server (qmail-smtpd): one session on stdin/stdout under
    /// tcpserver, or a daemon with --listen.
    Smtpd(smtpd::SmtpdArgs),
    /// The delivering daemon (qmail-send, with qmail-start's arguments):
    /// takes messages from the queue and delivers them.
    Send(send::SendArgs),
    /// Queue one message (qmail-queue): the message on fd 0, the envelope
    /// on fd 1; exits with qmail-queue's codes.
    Queue(HomeArgs),
    /// Inject a message from stdin (qmail-inject): complete its header
    /// (Date, Message-ID, From) and queue it.
    Inject(ProgramArgs),
    /// The sendmail interface for MUAs and cron: -t, -f, -F, -bs.
    Sendmail(ProgramArgs),
    /// `mailq`: listing the queue is not implemented yet; says so.
    #[command(hide = true)]
    Mailq(IgnoredArgs),
    /// `newaliases`: refused, as in qmail (no aliases database).
    #[command(hide = true)]
    Newaliases(IgnoredArgs),
    /// Create a complete, empty qmail home: directories, queue and the
    /// minimal control files. Never overwrites an existing file.
    Setup(HomeArgs),
    /// Compile users/assign into users/cdb, atomically (qmail-newu).
    Newu(HomeArgs),
    /// Add, list or delete the mailboxes of a qmail home.
    User(user::UserArgs),
    /// Compile users/recipients into users/recipients.cdb, atomically
    /// (s/qmail's qmail-recipients).
    Recipients(HomeArgs),
    /// Deliver one message to another host over SMTP (qmail-remote): the
    /// message on stdin, qmail-remote's report on stdout.
    Remote(remote::RemoteArgs),
    /// Show the hosts remote delivery leaves alone after connection
    /// timeouts (qmail-tcpto).
    Tcpto(HomeArgs),
    /// Forget every connection timeout (qmail-tcpok).
    Tcpok(HomeArgs),
}

/// Every program works on one qmail home.
#[derive(Args, Clone, Debug)]
pub struct HomeArgs {
    /// The qmail home directory.
    #[arg(long, env = "SQMAIL_HOME", default_value = "/var/qmail")]
    pub home: PathBuf,
}

/// A qmail program that parses its own command line (qmail-inject's
/// `-nNaAhH -f`, sendmail's flags), which clap must pass through as is.
#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct ProgramArgs {
    #[command(flatten)]
    pub home: HomeArgs,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// The program's own options and arguments, as qmail's takes them.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Arguments a refusing program accepts and ignores.
#[derive(Args, Clone, Debug)]
pub struct IgnoredArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    args: Vec<String>,
}

impl HomeArgs {
    pub fn home(&self) -> Home {
        Home::new(self.home.clone())
    }
}

/// qmail's program names and the subcommand each one is.
const PROGRAM_NAMES: [(&str, &str); 13] = [
    ("qmail-smtpd", "smtpd"),
    ("qmail-send", "send"),
    ("qmail-start", "send"),
    ("qmail-queue", "queue"),
    ("qmail-inject", "inject"),
    ("sendmail", "sendmail"),
    ("mailq", "mailq"),
    ("newaliases", "newaliases"),
    ("qmail-newu", "newu"),
    ("qmail-recipients", "recipients"),
    ("qmail-remote", "remote"),
    ("qmail-tcpto", "tcpto"),
    ("qmail-tcpok", "tcpok"),
];

/// `qmail-smtpd ARGS` → `sqmail smtpd ARGS`, by the name we were called.
pub fn expand_program_name(mut args: Vec<OsString>) -> Vec<OsString> {
    let called = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    if let Some((_, sub)) = PROGRAM_NAMES.iter().find(|(name, _)| *name == called) {
        args.insert(1, OsString::from(sub));
    }
    args
}

pub fn run(args: Vec<OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // qmail programs exit 100 on usage errors; help is not an error.
            return ExitCode::from(if e.use_stderr() { 100 } else { 0 });
        }
    };
    match cli.program {
        Program::Up(args) => up::main(args),
        Program::Smtpd(args) => smtpd::main(args),
        Program::Send(args) => send::main(args),
        Program::Queue(args) => queue_main(&args.home()),
        Program::Setup(args) => setup::main(&args.home()),
        Program::Inject(args) => inject::main(args),
        Program::Sendmail(args) => sendmail::main(args),
        Program::Mailq(_) => sendmail::mailq(),
        Program::Newaliases(_) => sendmail::newaliases(),
        Program::Newu(args) => newu_main(&args.home()),
        Program::User(args) => user::main(args),
        Program::Recipients(args) => user::recipients_main(&args.home()),
        Program::Remote(args) => remote::main(args),
        Program::Tcpto(args) => tcpto::show(&args.home()),
        Program::Tcpok(args) => tcpto::clear(&args.home()),
    }
}

/// qmail-queue: exit codes are the whole interface, so nothing is printed.
/// qmail-newu: 111 on any trouble, with the reason on stderr.
fn newu_main(home: &Home) -> ExitCode {
    match sqmail_queue::local::newu(home.path()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qmail-newu: fatal: {e}");
            ExitCode::from(111)
        }
    }
}

fn queue_main(home: &Home) -> ExitCode {
    use std::os::fd::FromRawFd;
    // fd 1 carries the envelope, as qmail-queue(8) says; it is not stdout.
    // SAFETY: fd 1 is open for the life of the process and owned only here.
    let envelope = unsafe { std::fs::File::from_raw_fd(1) };
    let uid = unsafe { libc::getuid() };
    let code = sqmail_queue::qmail_queue_main(home.path(), std::io::stdin().lock(), envelope, uid);
    ExitCode::from(u8::try_from(code).unwrap_or(81))
}
