//! `sqmail sendmail` (qmail's sendmail wrapper): the flags MUAs and cron
//! use, mapped onto qmail-inject (`-a`, or `-H` with `-t`), `-bs` onto an
//! SMTP session on stdin/stdout; the rest ignored as qmail ignores them.

use std::collections::HashMap;
use std::process::ExitCode;

use crate::cli::ProgramArgs;
use crate::getopt::{GetOpt, Opt};
use crate::inject;

/// What the command line asks for.
#[derive(Debug, Default, PartialEq, Eq)]
struct Parsed {
    header: bool,
    sender: Option<String>,
    name: Option<String>,
    smtp: bool,
    queue_list: bool,
    rest: Vec<String>,
}

const USAGE: &str = "usage: sendmail [ -t ] [ -fsender ] [ -Fname ] [ -bp ] [ -bs ] [ arg ... ]";

/// sendmail.c's `getopt("vimte:f:p:o:B:F:EJxb:")`.
fn parse(args: &[String]) -> Result<Parsed, ()> {
    let mut p = Parsed::default();
    let mut opts = GetOpt::new(args, "vimtxE?J?e:f:p:o:B:F:b:");
    for opt in opts.by_ref() {
        match opt {
            Opt::Flag('t') => p.header = true,
            Opt::Value('f', sender) => p.sender = Some(sender),
            Opt::Value('F', name) => p.name = Some(name),
            Opt::Value('b', mode) => match mode.chars().next() {
                Some('m') => {}
                Some('p') => p.queue_list = true,
                Some('s') => p.smtp = true,
                _ => return Err(()),
            },
            // -v -i -m -x -E -J -e -p -o* -B: qmail has one mode for each.
            Opt::Flag(_) | Opt::Value(..) => {}
            Opt::Bad(_) => return Err(()),
        }
    }
    p.rest = opts.operands().to_vec();
    Ok(p)
}

pub fn main(args: ProgramArgs) -> ExitCode {
    let fatal = |text: &str, code: u8| {
        eprintln!("sendmail: fatal: {text}");
        ExitCode::from(code)
    };
    let Ok(p) = parse(&args.args) else {
        eprintln!("sendmail: {USAGE}");
        return ExitCode::from(100);
    };
    let home = args.home.home();
    if p.queue_list {
        return mailq();
    }
    if p.smtp {
        return smtp(&home);
    }
    let mut overrides: HashMap<&str, Option<String>> = HashMap::new();
    if let Some(sender) = &p.sender {
        // As notqmail: the From: follows -f.
        for var in ["QMAILNAME", "MAILNAME", "NAME", "QMAILHOST", "MAILHOST"] {
            overrides.insert(var, None);
        }
        match sender.rsplit_once('@') {
            Some((user, host)) => {
                overrides.insert("QMAILUSER", Some(user.to_string()));
                overrides.insert("QMAILHOST", Some(host.to_string()));
            }
            None => {
                overrides.insert("QMAILUSER", Some(sender.clone()));
            }
        }
    }
    if let Some(name) = &p.name {
        overrides.insert("MAILNAME", Some(name.clone()));
    }
    let mut argv = vec![if p.header { "-H" } else { "-a" }.to_string()];
    if let Some(sender) = &p.sender {
        argv.extend(["-f".to_string(), sender.clone()]);
    }
    argv.push("--".into());
    argv.extend(p.rest);
    let env = |name: &str| match overrides.get(name) {
        Some(v) => v.clone(),
        None => std::env::var(name).ok(),
    };
    match inject::run(&home, &argv, &env) {
        Ok(()) => ExitCode::SUCCESS,
        Err(inject::Fatal(text, code)) => fatal(&text, code),
    }
}

/// `mailq` / `sendmail -bp` need qmail-qread, which sqmail lacks so far.
pub fn mailq() -> ExitCode {
    eprintln!(
        "sendmail: fatal: listing the queue (mailq, sendmail -bp, qmail-qread) is not implemented in sqmail"
    );
    ExitCode::from(111)
}

/// `newaliases`: qmail has no aliases database.
pub fn newaliases() -> ExitCode {
    eprintln!("sendmail: fatal: please use fastforward/newaliases instead");
    ExitCode::from(100)
}

/// `-bs`: an SMTP session on stdin/stdout, as a local, trusted client.
fn smtp(home: &crate::home::Home) -> ExitCode {
    if std::env::var_os("PROTO").is_none() {
        for (k, v) in [
            ("RELAYCLIENT", ""),
            ("DATABYTES", "0"),
            ("PROTO", "TCP"),
            ("TCPLOCALIP", "127.0.0.1"),
            ("TCPLOCALHOST", "localhost"),
            ("TCPREMOTEIP", "127.0.0.1"),
            ("TCPREMOTEHOST", "localhost"),
            ("TCPREMOTEINFO", "sendmail-bs"),
        ] {
            // Single-threaded here: nothing else reads the environment yet.
            std::env::set_var(k, v);
        }
    }
    match crate::smtpd::ucspi(home) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sendmail: fatal: {e}");
            ExitCode::from(111)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Parsed, ()> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags_as_qmail_sendmail() {
        let got = p(&["-t", "-oi", "-odb", "-f", "me@x", "-FJoe", "-v", "a@b"]).unwrap();
        assert!(got.header);
        assert_eq!(got.sender.as_deref(), Some("me@x"));
        assert_eq!(got.name.as_deref(), Some("Joe"));
        assert_eq!(got.rest, ["a@b"]);
        assert!(p(&["-bs"]).unwrap().smtp);
        assert!(p(&["-bp"]).unwrap().queue_list);
        assert!(p(&["-bz"]).is_err());
        assert!(p(&["-q"]).is_err());
        assert_eq!(p(&["-Jfoo", "-i", "--", "-x"]).unwrap().rest, ["-x"]);
    }
}
