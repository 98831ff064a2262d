//! `sqmail inject` (qmail-inject): reads a message on stdin, completes
//! its header with `sqmail_core::inject`, and queues it through the queue
//! or `$QMAILQUEUE`. Exit 0, 100 for bad input, 111 for trouble queueing.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::ExitCode;

use sqmail_core::inject::{inject, Recipients, Request, Settings};
use sqmail_queue::{Envelope, Invoker, Target};

use crate::cli::ProgramArgs;
use crate::getopt::{GetOpt, Opt};
use crate::home::Home;

/// A failure: the text after `qmail-inject: fatal: ` and the exit code.
pub struct Fatal(pub String, pub u8);

/// Environment lookups, so `sendmail` can add or hide variables.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn main(args: ProgramArgs) -> ExitCode {
    let env = |name: &str| std::env::var(name).ok();
    exit(run(&args.home.home(), &args.args, &env))
}

pub fn exit(result: Result<(), Fatal>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fatal(text, code)) => {
            eprintln!("qmail-inject: fatal: {text}");
            ExitCode::from(code)
        }
    }
}

/// qmail-inject's `getopt("aAhHnNf:")`; the rest are recipients.
fn parse_args(args: &[String], req: &mut Request) -> Result<(), Fatal> {
    let usage = || {
        Fatal(
            "usage: qmail-inject [ -nNaAhH ] [ -fsender ] [ arg ... ]".into(),
            100,
        )
    };
    let mut opts = GetOpt::new(args, "aAhHnNf:");
    for opt in opts.by_ref() {
        match opt {
            Opt::Flag('a') => req.recipients = Recipients::Args,
            Opt::Flag('A') => req.recipients = Recipients::Default,
            Opt::Flag('h') => req.recipients = Recipients::Header,
            Opt::Flag('H') => req.recipients = Recipients::Both,
            Opt::Flag('n') => req.print = true,
            Opt::Flag('N') => req.print = false,
            Opt::Value('f', sender) => req.sender = Some(sender),
            _ => return Err(usage()),
        }
    }
    req.args = opts.operands().to_vec();
    Ok(())
}

/// The controls qmail-inject reads, read up front: a read error is 111.
fn controls(home: &Home) -> Result<HashMap<&'static str, String>, Fatal> {
    let mut map = HashMap::new();
    for name in ["me", "defaulthost", "defaultdomain", "plusdomain", "idhost"] {
        match home.read_control(name) {
            Ok(Some(text)) => {
                map.insert(name, text);
            }
            Ok(None) => {}
            Err(e) => return Err(Fatal(format!("read error: {e}"), 111)),
        }
    }
    Ok(map)
}

pub fn run(home: &Home, args: &[String], env: Env<'_>) -> Result<(), Fatal> {
    let map = controls(home)?;
    let mut settings = Settings::load(&|n| map.get(n).cloned(), env);
    if let Some(file) = env("QMAILMFTFILE") {
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let lists: Vec<String> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect();
                settings.mft = (!lists.is_empty()).then_some(lists);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Fatal(format!("read error: {file}: {e}"), 111)),
        }
    }
    let mut req = Request {
        now: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
        pid: std::process::id(),
        ..Request::default()
    };
    parse_args(args, &mut req)?;
    let mut input = Vec::new();
    std::io::stdin()
        .lock()
        .read_to_end(&mut input)
        .map_err(|e| Fatal(format!("read error: {e}"), 111))?;
    let done = inject(&input, &settings, &req).map_err(|e| Fatal(e.to_string(), 100))?;
    let message = done.message(&input);
    if req.print {
        let mut out = std::io::stdout().lock();
        return out
            .write_all(&message)
            .and_then(|()| out.flush())
            .map_err(|e| Fatal(format!("write error: {e}"), 111));
    }
    queue(home, &message, done.sender, done.recipients)
}

fn queue(home: &Home, message: &[u8], sender: String, rcpts: Vec<String>) -> Result<(), Fatal> {
    let qq = |e: sqmail_queue::QqError| {
        let code = if e.is_permanent() { 100 } else { 111 };
        Fatal(e.text().to_string(), code)
    };
    let target = Target::from_env(home.path())
        .map_err(|e| Fatal(format!("unable to run qmail-queue: {}", e.text()), 111))?;
    let envelope = Envelope::new(sender, rcpts.into_iter().map(String::into_bytes).collect());
    envelope.validate().map_err(qq)?;
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let mut sink = target.begin(Invoker::User(uid)).map_err(qq)?;
    sink.write(message).map_err(qq)?;
    sink.commit(&envelope).map_err(qq)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Request {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut req = Request::default();
        assert!(parse_args(&args, &mut req).is_ok());
        req
    }

    #[test]
    fn getopt_like_qmail() {
        let r = parse(&["-nH", "-fme@x", "a", "-b"]);
        assert!(r.print);
        assert_eq!(r.recipients, Recipients::Both);
        assert_eq!(r.sender.as_deref(), Some("me@x"));
        assert_eq!(r.args, ["a", "-b"]);
        let r = parse(&["-f", "", "--", "-x"]);
        assert_eq!(r.sender.as_deref(), Some(""));
        assert_eq!(r.args, ["-x"]);
        let mut req = Request::default();
        assert!(parse_args(&["-z".to_string()], &mut req).is_err());
    }
}
