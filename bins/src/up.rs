//! `sqmail up`: the embedded default. A complete mail system in a local
//! folder, on loopback ports, as the invoking user: the home is made on
//! first run (control files, queue, mailboxes) and reused after; then
//! smtpd and send run together until Ctrl-C or SIGTERM.

use std::fmt;
use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use clap::Args;
use sqmail_core::service::{ServeLimits, Shutdown};

use crate::home::Home;
use crate::remote::RemoteOptions;
use crate::{send, setup, smtpd, user};

/// Where one service listens, or `none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Off,
    At(SocketAddr),
}

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "none" {
            return Ok(Endpoint::Off);
        }
        s.parse()
            .map(Endpoint::At)
            .map_err(|_| format!("{s:?}: expected ADDRESS:PORT (e.g. 127.0.0.1:2525) or none"))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Off => f.write_str("none"),
            Endpoint::At(addr) => addr.fmt(f),
        }
    }
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// The mail system's folder; made on first run, reused after.
    #[arg(long, env = "SQMAIL_HOME", default_value = "./sqmail-home")]
    home: PathBuf,
    /// SMTP for mail to the local domains (relays for no one).
    #[arg(long, value_name = "ADDR|none", default_value = "127.0.0.1:2525")]
    smtp: Endpoint,
    /// Authenticated submission (reserved: not built yet).
    #[arg(long, value_name = "ADDR|none", default_value = "127.0.0.1:2587")]
    submission: Endpoint,
    /// SMTP over TLS (reserved: not built yet).
    #[arg(long, value_name = "ADDR|none", default_value = "127.0.0.1:2465")]
    smtps: Endpoint,
    /// POP3 (reserved: not built yet).
    #[arg(long, value_name = "ADDR|none", default_value = "127.0.0.1:2110")]
    pop3: Endpoint,
    /// POP3 over TLS (reserved: not built yet).
    #[arg(long, value_name = "ADDR|none", default_value = "127.0.0.1:2995")]
    pop3s: Endpoint,
    /// QMTP (reserved: not built yet).
    #[arg(long, value_name = "ADDR|none", default_value = "127.0.0.1:2209")]
    qmtp: Endpoint,
    /// QMQP (reserved: not built yet).
    #[arg(long, value_name = "ADDR|none", default_value = "127.0.0.1:2628")]
    qmqp: Endpoint,
    /// QMTP over TLS (reserved: not built yet).
    #[arg(long, value_name = "ADDR|none", default_value = "127.0.0.1:6209")]
    qmtps: Endpoint,
    #[command(flatten)]
    remote: RemoteOptions,
}

pub fn main(args: UpArgs) -> ExitCode {
    match up(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sqmail up: {e}");
            ExitCode::from(111)
        }
    }
}

fn up(args: &UpArgs) -> Result<(), String> {
    let path =
        std::path::absolute(&args.home).map_err(|e| format!("{}: {e}", args.home.display()))?;
    let home = Home::new(path);
    let created = prepare(&home).map_err(|e| format!("{}: {e}", home.path().display()))?;
    let daemon = send::daemon(
        &home,
        send::DEFAULT_DELIVERY.as_bytes().to_vec(),
        &args.remote,
    )?;
    let handle = daemon.handle();
    print_summary(&home, args, created);

    let shutdown = Shutdown::new();
    let stop_smtpd = shutdown.clone();
    let _signals = send::forward_signals(
        &home,
        handle.clone(),
        Some(Box::new(move || stop_smtpd.trigger())),
    )
    .map_err(|e| format!("unable to catch signals: {e}"))?;
    let _watch = send::reload_on_change(&home, handle.clone()).map_err(|e| e.to_string())?;
    let sender = send::spawn(daemon).map_err(|e| e.to_string())?;
    let served = match args.smtp {
        Endpoint::At(addr) => smtpd::serve(&home, &[addr], None, ServeLimits::default(), shutdown),
        Endpoint::Off => {
            let (tx, rx) = std::sync::mpsc::channel();
            let _wake = shutdown.register(move || {
                let _ = tx.send(());
            });
            let _ = rx.recv();
            Ok(())
        }
    };
    // smtpd ended (a signal, or it could not start): send stops too.
    handle.send(sqmail_queue::send::Control::Exit);
    let sent = match sender.join() {
        Ok(result) => result.map_err(|e| format!("send: {e}")),
        Err(_) => Err("send: crashed".into()),
    };
    served.and(sent)?;
    println!(
        "sqmail up: stopped; everything queued stays in {}",
        home.path().display()
    );
    Ok(())
}

/// Makes the home on first run; returns whether it did. The mailboxes
/// come first so that a crash half-way leaves a home `up` completes.
fn prepare(home: &Home) -> io::Result<bool> {
    let assign = home.path().join("users/assign");
    let created = !assign.exists();
    // Everything belongs to the invoking user, even root: no qmail users.
    setup::create(home, None)?;
    setup::write_new(home, "recipients", "users/recipients.cdb\n")?;
    if created {
        setup_alias(home)?;
        let mut locals = vec!["postmaster".to_string()];
        locals.extend(user::login_name());
        for local in locals {
            let address = format!("{local}@localhost");
            user::add_mailbox(home, &address, None).map_err(io::Error::other)?;
        }
    }
    Ok(created)
}

/// qmail's `~alias` in the home: every local address without a mailbox
/// lands here (one `+` line in users/assign), where `root` and
/// `mailer-daemon` go to the postmaster (and smtpd accepts them) and
/// anything else bounces.
fn setup_alias(home: &Home) -> io::Result<()> {
    let alias = home.path().join("alias");
    fs::create_dir_all(&alias)?;
    user::add_catch_all(home, &alias).map_err(io::Error::other)?;
    for name in ["root", "mailer-daemon"] {
        fs::write(alias.join(format!(".qmail-{name}")), "&postmaster\n")?;
        user::add_alias(home, name).map_err(io::Error::other)?;
    }
    Ok(())
}

/// The mailbox the summary suggests writing to: the invoking user's, or
/// the postmaster's for root.
fn first_mailbox() -> String {
    format!(
        "{}@localhost",
        user::login_name().unwrap_or_else(|| "postmaster".into())
    )
}

fn print_summary(home: &Home, args: &UpArgs, created: bool) {
    let h = home.path().display();
    println!(
        "sqmail up: {} {h}",
        if created { "created" } else { "reusing" }
    );
    let service = |name: &str, at: Endpoint, what: &str| match at {
        Endpoint::Off => println!("  {name:<11} off"),
        Endpoint::At(addr) => println!("  {name:<11} {addr:<16} {what}"),
    };
    service(
        "smtp",
        args.smtp,
        "mail for the local domains; relays for no one",
    );
    let reserved = "reserved (not built yet)";
    service("submission", args.submission, reserved);
    service("smtps", args.smtps, reserved);
    service("pop3", args.pop3, reserved);
    service("pop3s", args.pop3s, reserved);
    service("qmtp", args.qmtp, reserved);
    service("qmqp", args.qmqp, reserved);
    service("qmtps", args.qmtps, reserved);
    println!("  queue       {h}/queue");
    println!("  remote      other domains by MX, or as {h}/control/smtproutes says");
    println!("  controls    {h}/control (local domains: control/locals)");
    println!("  mailboxes   (sqmail user list --home {h})");
    for (address, maildir) in user::list(home).unwrap_or_default() {
        println!("              {address:<28} {}", maildir.display());
    }
    if let Endpoint::At(addr) = args.smtp {
        let who = first_mailbox();
        println!("try it:");
        println!("  swaks --server {addr} --to {who}   (or any SMTP client)");
        println!("  ls {h}/mailboxes/{who}/Maildir/new/");
    }
    println!("add a mailbox:  echo PASSWORD | sqmail user add --home {h} someone@localhost");
    println!("stop:  Ctrl-C (mail in the queue stays for the next run)");
}
