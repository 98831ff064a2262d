//! `sqmail inject` (qmail-inject): reads a message's header on stdin,
//! completes it with `sqmail_core::inject`, and queues it through the queue
//! or `$QMAILQUEUE`, the body streaming after it. Exit 0, 100 for bad
//! input, 111 for trouble reading or queueing.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::process::ExitCode;

use sqmail_core::inject::{final_newline, in_header, inject, Recipients, Request, Settings};
use sqmail_queue::{Envelope, Invoker, Target};

use crate::cli::ProgramArgs;
use crate::getopt::{GetOpt, Opt};
use crate::home::Home;

/// A failure: the text after `qmail-inject: fatal: ` and the exit code.
pub struct Fatal(pub String, pub u8);

/// The most header held in memory (qmail-inject has no limit); the body
/// streams through.
const MAX_HEADER: usize = 1 << 20;

/// The size of the reads that stream the body.
const CHUNK: usize = 64 * 1024;

/// Where the message goes: stdout (`-n`) or the queue.
type Sink<'a> = &'a mut dyn FnMut(&[u8]) -> Result<(), Fatal>;

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
            Err(e) if e.kind() == ErrorKind::NotFound => {}
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
    let mut stdin = BufReader::with_capacity(CHUNK, std::io::stdin().lock());
    let (head, eof) = read_header(&mut stdin)?;
    let done = inject(&head, &settings, &req).map_err(|e| Fatal(e.to_string(), 100))?;
    // After its end, stdin is not read again: on a terminal that would wait.
    let rest = (!eof).then_some(&mut stdin);
    let message =
        |sink: Sink<'_>| write_message(&done.header, &head[done.body_start..], rest, sink);
    if req.print {
        let mut out = std::io::stdout().lock();
        let write_error = |e: std::io::Error| Fatal(format!("write error: {e}"), 111);
        message(&mut |bytes| out.write_all(bytes).map_err(write_error))?;
        return out.flush().map_err(write_error);
    }
    queue(home, done.sender, done.recipients, message)
}

fn read_error(e: std::io::Error) -> Fatal {
    Fatal(format!("read error: {e}"), 111)
}

/// Read the header and the line that ends it, which `inject` must see
/// and which starts the body; true when stdin ended there. That line is
/// read up to `MAX_HEADER` bytes: one with no colon by then is no field.
fn read_header(stdin: &mut impl BufRead) -> Result<(Vec<u8>, bool), Fatal> {
    let mut head = Vec::new();
    loop {
        let start = head.len();
        let n = (&mut *stdin)
            .take(MAX_HEADER as u64 + 1)
            .read_until(b'\n', &mut head)
            .map_err(read_error)?;
        let line = &head[start..];
        let eof = n <= MAX_HEADER && !line.ends_with(b"\n");
        if eof || !in_header(line, start > 0) {
            return Ok((head, eof));
        }
        if head.len() > MAX_HEADER {
            return Err(Fatal(format!("header longer than {MAX_HEADER} bytes"), 100));
        }
    }
}

/// Write the completed header, the body's start (read along with the
/// header), the `rest` of stdin as it comes, and the final LF qmail adds
/// if the body lacks one.
fn write_message(
    header: &[u8],
    body: &[u8],
    rest: Option<&mut impl BufRead>,
    sink: Sink<'_>,
) -> Result<(), Fatal> {
    sink(header)?;
    sink(body)?;
    let mut last = body.last().copied();
    if let Some(rest) = rest {
        loop {
            let chunk = match rest.fill_buf() {
                Ok([]) => break,
                Ok(chunk) => chunk,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(e)),
            };
            sink(chunk)?;
            last = chunk.last().copied();
            let n = chunk.len();
            rest.consume(n);
        }
    }
    sink(final_newline(last))
}

/// Queue what `message` writes: the queue is started only once the header
/// is known good, and the envelope goes last, as qmail-inject does.
fn queue(
    home: &Home,
    sender: String,
    rcpts: Vec<String>,
    message: impl FnOnce(Sink<'_>) -> Result<(), Fatal>,
) -> Result<(), Fatal> {
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
    message(&mut |bytes| sink.write(bytes).map_err(qq))?;
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

    fn read(input: &[u8]) -> Result<(Vec<u8>, bool), (String, u8)> {
        read_header(&mut BufReader::with_capacity(4, input))
            .map_err(|Fatal(text, code)| (text, code))
    }

    #[test]
    fn reads_the_header_and_the_line_that_ends_it() {
        let ok = |head: &[u8], eof| Ok((head.to_vec(), eof));
        assert_eq!(read(b"To: a\n b\n\nbody\n"), ok(b"To: a\n b\n\n", false));
        assert_eq!(
            read(b"To: a\nno field\nTo: b\n"),
            ok(b"To: a\nno field\n", false)
        );
        assert_eq!(read(b" x\nTo: b\n"), ok(b" x\n", false));
        assert_eq!(read(b"To: a\n"), ok(b"To: a\n", true));
        assert_eq!(read(b"To: a"), ok(b"To: a", true));
        assert_eq!(read(b"body"), ok(b"body", true));
        assert_eq!(read(b""), ok(b"", true));
    }

    #[test]
    fn header_limit() {
        let len = |input: &[u8]| read(input).map(|(head, eof)| (head.len(), eof));
        let field = |len: usize| [&b"X: "[..], &vec![b'x'; len - 4], b"\n"].concat();
        let too_long = Err(("header longer than 1048576 bytes".to_string(), 100));
        let head = [&field(MAX_HEADER)[..], b"\nbody"].concat();
        assert_eq!(len(&head), Ok((MAX_HEADER + 1, false)));
        assert_eq!(len(&[&field(MAX_HEADER + 1)[..], b"\n"].concat()), too_long);
        let folded = format!("X: y\n{}\n", " 123456789\n".repeat(MAX_HEADER / 11));
        assert_eq!(len(folded.as_bytes()), too_long);
        // The line that ends the header is read as far again: with no colon
        // by then it is no field, and the body streams on from there.
        assert_eq!(
            len(&vec![b'a'; 2 * MAX_HEADER]),
            Ok((MAX_HEADER + 1, false))
        );
    }

    #[test]
    fn body_streams_in_chunks_and_ends_in_lf() {
        let cases = [
            ("", "", ""),
            ("\n", "", "\n"),
            ("\n", "body", "\nbody\n"),
            ("no field", " and more\n", "no field and more\n"),
            ("x", "", "x\n"),
        ];
        for (body, rest, want) in cases {
            let mut out = Vec::new();
            let mut rest = BufReader::with_capacity(2, rest.as_bytes());
            let mut sink = |bytes: &[u8]| {
                out.extend_from_slice(bytes);
                Ok(())
            };
            let header = b"H: h\n";
            assert!(write_message(header, body.as_bytes(), Some(&mut rest), &mut sink).is_ok());
            assert_eq!(String::from_utf8_lossy(&out), format!("H: h\n{want}"));
        }
    }
}
