//! `sqmail send` (also `qmail-send` and `qmail-start`): the delivering
//! daemon, with qmail-start's arguments and qmail-send's signals.

use std::io::{self, Write};
use std::process::{Child, Command, ExitCode, Stdio};
use std::thread::{self, JoinHandle};

use clap::Args;
use signal_hook::consts::{SIGALRM, SIGHUP, SIGINT, SIGTERM};
use sqmail_queue::send::{self, Control, Daemon, Handle, Options};

use crate::cli::HomeArgs;
use crate::home::Home;
use crate::remote::{Remote, RemoteOptions};
use crate::signals::{on_signals, SignalThread};

/// qmail-start's default delivery in s/qmail (1.03's was `./Mailbox`).
pub const DEFAULT_DELIVERY: &str = "./Maildir/";

#[derive(Args, Debug)]
pub struct SendArgs {
    #[command(flatten)]
    pub home: HomeArgs,
    #[command(flatten)]
    pub remote: RemoteOptions,
    /// qmail-start's arguments: the default delivery instruction for users
    /// without a .qmail (default ./Maildir/), then optionally a logger
    /// program and its arguments, which gets the log on its stdin.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn main(args: SendArgs) -> ExitCode {
    let home = args.home.home();
    let mut rest = args.args.into_iter();
    let delivery = rest.next().unwrap_or_else(|| DEFAULT_DELIVERY.into());
    let logger: Vec<String> = rest.collect();
    let _logger = if logger.is_empty() {
        None
    } else {
        match spawn_logger(&logger) {
            Ok(child) => Some(child),
            Err(e) => {
                eprintln!("qmail-start: fatal: unable to start {}: {e}", logger[0]);
                return ExitCode::from(111);
            }
        }
    };
    let daemon = match daemon(&home, delivery.into_bytes(), &args.remote) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("qmail-send: fatal: {e}");
            return ExitCode::from(111);
        }
    };
    let _signals = match forward_signals(&home, daemon.handle(), None) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("qmail-send: fatal: unable to catch signals: {e}");
            return ExitCode::from(111);
        }
    };
    match daemon.run(&mut io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qmail-send: fatal: {e}");
            ExitCode::from(111)
        }
    }
}

/// The daemon for `home`, with its controls read, delivering remote
/// recipients over SMTP.
pub fn daemon(
    home: &Home,
    default_delivery: Vec<u8>,
    remote: &RemoteOptions,
) -> Result<Daemon, String> {
    let controls = send::load(&mut |name| home.control_bytes(name))
        .map_err(|e| format!("{}: control/{e}", home.path().display()))?;
    let transport = Remote::new(home.clone(), remote)?
        .transport()
        .map_err(|e| format!("unable to start remote delivery: {e}"))?;
    Daemon::new(Options {
        home: home.path().to_owned(),
        default_delivery,
        controls,
        remote: Some(transport),
    })
}

/// qmail-send's signals: TERM (and INT) exit after the deliveries in
/// flight, ALRM retries now, HUP rereads `locals` and `virtualdomains`.
/// `also_on_exit` runs too on TERM/INT (`sqmail up` stops smtpd with it).
pub fn forward_signals(
    home: &Home,
    handle: Handle,
    also_on_exit: Option<Box<dyn Fn() + Send>>,
) -> io::Result<SignalThread> {
    let home = home.clone();
    on_signals(&[SIGTERM, SIGINT, SIGALRM, SIGHUP], move |signal| {
        let control = match signal {
            SIGALRM => Control::RetryNow,
            SIGHUP => match send::load_rewriter(&mut |name| home.control_bytes(name)) {
                Ok(rewriter) => Control::Reload(rewriter),
                Err(e) => {
                    // The log is the daemon's; a reload problem goes to stderr.
                    eprintln!("qmail-send: warning: not reloaded: control/{e}");
                    return;
                }
            },
            _ => {
                if let Some(f) = &also_on_exit {
                    f();
                }
                Control::Exit
            }
        };
        handle.send(control);
    })
}

/// The files `load_rewriter` reads.
const REWRITING: [&str; 5] = [
    "me",
    "locals",
    "percenthack",
    "virtualdomains",
    "envnoathost",
];

/// For `sqmail up`: a SIGHUP whenever the rewriting rules change (checked
/// every second), so a domain `sqmail user add` makes local is delivered
/// locally at once. qmail-send itself waits for the HUP, as qmail does.
pub fn reload_on_change(home: &Home, handle: Handle) -> io::Result<JoinHandle<()>> {
    let home = home.clone();
    let stamp = move |home: &Home| -> Vec<Option<std::time::SystemTime>> {
        REWRITING
            .iter()
            .map(|name| {
                std::fs::metadata(home.control(name))
                    .and_then(|m| m.modified())
                    .ok()
            })
            .collect()
    };
    thread::Builder::new()
        .name("sqmail-controls".into())
        .spawn(move || {
            let mut seen = stamp(&home);
            loop {
                thread::sleep(std::time::Duration::from_secs(1));
                let now = stamp(&home);
                if now == seen {
                    // Also how the thread learns the daemon has stopped.
                    if !handle.alive() {
                        return;
                    }
                    continue;
                }
                seen = now;
                match send::load_rewriter(&mut |name| home.control_bytes(name)) {
                    Ok(rewriter) => {
                        if !handle.send(Control::Reload(rewriter)) {
                            return;
                        }
                    }
                    Err(e) => eprintln!("sqmail send: warning: not reloaded: control/{e}"),
                }
            }
        })
}

/// qmail-start's logger: our stdout becomes the logger's stdin.
fn spawn_logger(argv: &[String]) -> io::Result<Child> {
    use std::os::fd::AsRawFd;
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .spawn()?;
    let pipe = child
        .stdin
        .as_ref()
        .ok_or_else(|| io::Error::other("no pipe to the logger"))?;
    io::stdout().flush()?;
    // SAFETY: dup2 onto fd 1, which nothing else holds across this call.
    if unsafe { libc::dup2(pipe.as_raw_fd(), 1) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(child)
}

/// `sqmail send` inside another program (`sqmail up`): the daemon on a
/// thread of its own, logging to stdout.
pub fn spawn(daemon: Daemon) -> io::Result<JoinHandle<io::Result<()>>> {
    thread::Builder::new()
        .name("sqmail-send".into())
        .spawn(move || daemon.run(&mut io::stdout()))
}
