//! Postfix cross-check: the traces marked `# rfc-required` are replayed
//! against a real Postfix, so that what they pin is what the RFCs require
//! of any server, not only what sqmail (and qmail) happen to answer.
//!
//! What is compared: the reply CODES, per reply, in order: their first
//! digit, or all three for a trace marked `# rfc-required codes`; and that
//! the server closes where the trace says `S: closed`. Reply texts, EHLO
//! keywords (`S+`/`S!`) and what was queued (`Q:`/`Q~`) are not compared:
//! Postfix's greeting and texts differ, and its queue is its own.
//!
//! The Postfix instance is private: its own config, queue and data
//! directories under the target dir, `postfix -c DIR start`, one smtpd
//! listener on a free loopback port per distinct trace setup (`-o`
//! overrides in master.cf), every delivery discarded; nothing system-wide
//! changes, and it is stopped at the end. A trace's setup maps onto
//! Postfix as: `@me` myhostname, `@rcpthosts` relay_domains (recipients
//! there accepted, relaying elsewhere refused with `reject_unauth_destination`;
//! no `@rcpthosts` accepts every recipient: mynetworks = loopback),
//! `@relayclient` (no suffix) mynetworks = loopback, `@databytes` message_size_limit,
//! `@max-recipients` smtpd_recipient_limit. The instance does not tarpit
//! (`smtpd_error_sleep_time = 0`) and offers no CHUNKING
//! (`smtpd_discard_ehlo_keywords = chunking`), as sqmail does not: a trace's
//! `BDAT` is then refused at once rather than waiting for its chunk. Traces with other setup
//! (`@relayclient SUFFIX`, `@badmailfrom`, `@localiphost`, `@timeout`,
//! `@max-errors`, `@max-line`, other addresses) or waits (`W:`) are skipped,
//! and the reason printed.
//!
//! A trace where Postfix disagrees carries a `# postfix: ...` line saying
//! how and why, and its name is in [`KNOWN`]: the test fails on a new
//! disagreement, and on a known one that went away.
//!
//! Runs as root only (Postfix's master must), with Postfix installed
//! (`/usr/sbin/postfix`, Debian package `postfix`; `.ci/run` installs it);
//! otherwise it says SKIPPED and passes. Every socket read is bounded.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sqmail_conformance::run::take_reply;
use sqmail_conformance::trace::{Action, CodeMatch};
use sqmail_conformance::{smtp_corpus_dir, trace, Trace};

const POSTFIX: &str = "/usr/sbin/postfix";
/// One reply, or the close, must come within this.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Traces where Postfix answers otherwise; each says why in its
/// `# postfix:` line.
const KNOWN: &[&str] = &[
    "rfc1870-size-parameter-syntax",
    "rfc5321-2.3.8-bare-cr-and-nul-in-a-command",
    "rfc5321-3.6.1-source-route-refused",
    "rfc5321-4.1.1-arguments-where-none-belong",
    "rfc5321-4.1.1.1-helo-ehlo-need-a-domain",
    "rfc5321-4.1.1.11-unknown-parameters",
    "rfc5321-4.1.1.3-null-forward-path-refused",
    "rfc5321-4.1.1.9-noop-rset-help-any-time",
    "rfc5321-4.1.4-mail-needs-helo",
    "rfc5321-4.2.4-unknown-and-unimplemented-commands",
    "rfc5321-4.5.3.1.10-path-too-long",
    "rfc5321-4.5.3.1.4-line-too-long",
    "rfc6152-binarymime-refused",
    "rfc6531-3.4-non-ascii-address-needs-smtputf8",
];

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The smtpd `-o` overrides for `trace`'s setup, or why it cannot map.
fn overrides(trace: &Trace) -> Result<Vec<(&'static str, String)>, String> {
    let s = &trace.setup;
    let mut unmapped = Vec::new();
    if s.relayclient.as_deref().is_some_and(|x| !x.is_empty()) {
        unmapped.push("@relayclient SUFFIX (qmail's address rewriting)");
    }
    if !s.badmailfrom.is_empty() {
        unmapped.push("@badmailfrom");
    }
    if s.localiphost.is_some() {
        unmapped.push("@localiphost");
    }
    if s.timeout.is_some() {
        unmapped.push("@timeout");
    }
    if s.max_errors.is_some() {
        unmapped.push("@max-errors (Postfix counts errors otherwise)");
    }
    if s.max_line.is_some() {
        unmapped.push("@max-line");
    }
    if s.remote_ip.is_some() || s.local_ip.is_some() {
        unmapped.push("@remote-ip/@local-ip");
    }
    if trace
        .steps
        .iter()
        .any(|st| matches!(st.action, Action::Wait(_)))
    {
        unmapped.push("W: (timeouts are configuration, not RFC)");
    }
    if !unmapped.is_empty() {
        return Err(format!("no Postfix equivalent of {}", unmapped.join(", ")));
    }
    let mut o = vec![("myhostname", s.me().to_string())];
    match &s.rcpthosts {
        // relay_domains itself is global (trivial-rewrite reads it).
        Some(_) => {
            o.push((
                "smtpd_relay_restrictions",
                "permit_mynetworks,reject_unauth_destination".into(),
            ));
        }
        // Accept every recipient: smtpd refuses a bare `permit` (open
        // relay), so the loopback client is trusted instead.
        None => o.push((
            "smtpd_relay_restrictions",
            "permit_mynetworks,reject_unauth_destination".into(),
        )),
    }
    let mynetworks = if s.relayclient.is_some() || s.rcpthosts.is_none() {
        "127.0.0.0/8"
    } else {
        "192.0.2.1/32"
    };
    o.push(("mynetworks", mynetworks.into()));
    if let Some(n) = s.databytes {
        o.push(("message_size_limit", n.to_string()));
    }
    if let Some(n) = s.max_recipients {
        o.push(("smtpd_recipient_limit", n.to_string()));
    }
    Ok(o)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A private Postfix instance; stopped when dropped.
struct Postfix {
    dir: tempfile::TempDir,
}

impl Postfix {
    fn conf(&self) -> PathBuf {
        self.dir.path().join("conf")
    }

    fn postfix(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(POSTFIX)
            .arg("-c")
            .arg(self.conf())
            .args(args)
            .output()
            .map_err(|e| format!("{POSTFIX}: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!(
                "postfix {}: {}\n{text}",
                args.join(" "),
                out.status
            ))
        }
    }

    /// Starts Postfix with one smtpd per entry of `listeners` (port, `-o`s).
    /// `relay_domains` is trivial-rewrite's, so one list for all.
    fn start(
        listeners: &[(u16, Vec<(&'static str, String)>)],
        relay_domains: &str,
    ) -> Result<Postfix, String> {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let dir = tempfile::Builder::new()
            .prefix("postfix.")
            .tempdir_in(base)
            .map_err(|e| format!("tempdir: {e}"))?;
        let root = dir.path();
        for sub in ["conf", "queue", "data"] {
            std::fs::create_dir(root.join(sub)).map_err(|e| format!("{sub}: {e}"))?;
        }
        // Postfix wants its queue's parents root's and not writable by others.
        std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| format!("chmod: {e}"))?;
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {root}/queue\n\
             data_directory = {root}/data\n\
             maillog_file = {root}/maillog\n\
             maillog_file_prefixes = {root}\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             myhostname = mx.test.example\n\
             mydomain = test.example\n\
             myorigin = $myhostname\n\
             mydestination = $myhostname, localhost\n\
             mynetworks = 192.0.2.1/32\n\
             relay_domains = {relay_domains}\n\
             local_recipient_maps =\n\
             alias_maps =\n\
             alias_database =\n\
             local_transport = discard\n\
             relay_transport = discard\n\
             default_transport = discard\n\
             smtp_dns_support_level = disabled\n\
             smtpd_peername_lookup = no\n\
             smtpd_error_sleep_time = 0\n\
             smtpd_discard_ehlo_keywords = chunking\n\
             biff = no\n\
             master_service_disable =\n",
            root = root.display(),
        );
        let mut master_cf = String::from(
            "pickup unix n - n 60 1 pickup\n\
             cleanup unix n - n - 0 cleanup\n\
             qmgr unix n - n 300 1 qmgr\n\
             rewrite unix - - n - - trivial-rewrite\n\
             bounce unix - - n - 0 bounce\n\
             defer unix - - n - 0 bounce\n\
             trace unix - - n - 0 bounce\n\
             verify unix - - n - 1 verify\n\
             flush unix n - n 1000? 0 flush\n\
             proxymap unix - - n - - proxymap\n\
             showq unix n - n - - showq\n\
             error unix - - n - - error\n\
             retry unix - - n - - error\n\
             discard unix - - n - - discard\n\
             anvil unix - - n - 1 anvil\n\
             scache unix - - n - 1 scache\n\
             postlog unix-dgram n - n - 1 postlogd\n",
        );
        for (port, overrides) in listeners {
            master_cf.push_str(&format!("127.0.0.1:{port} inet n - n - - smtpd"));
            for (name, value) in overrides {
                master_cf.push_str(&format!("\n  -o {name}={value}"));
            }
            master_cf.push('\n');
        }
        let conf = root.join("conf");
        std::fs::write(conf.join("main.cf"), main_cf).map_err(|e| format!("main.cf: {e}"))?;
        std::fs::write(conf.join("master.cf"), master_cf).map_err(|e| format!("master.cf: {e}"))?;
        // master locks data_directory as the mail owner.
        let chown = Command::new("chown")
            .arg("postfix:")
            .arg(root.join("data"))
            .status()
            .map_err(|e| format!("chown: {e}"))?;
        if !chown.success() {
            return Err(format!("chown postfix: data: {chown}"));
        }
        let postfix = Postfix { dir };
        if let Err(e) = postfix.postfix(&["start"]) {
            return Err(format!("{e}\nPostfix's log:\n{}", postfix.log()));
        }
        Ok(postfix)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if let Err(e) = self.postfix(&["stop"]) {
            eprintln!("{e}");
        }
    }
}

/// A connection to one smtpd, every read bounded.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

enum Got {
    Reply(u16, String),
    Closed,
}

impl Wire {
    fn connect(port: u16, deadline: Instant) -> Result<Wire, String> {
        loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(stream) => {
                    stream
                        .set_read_timeout(Some(READ_TIMEOUT))
                        .and_then(|()| stream.set_write_timeout(Some(READ_TIMEOUT)))
                        .map_err(|e| e.to_string())?;
                    return Ok(Wire {
                        stream,
                        buf: Vec::new(),
                    });
                }
                Err(e) if Instant::now() > deadline => return Err(format!("connect: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn next(&mut self) -> Result<Got, String> {
        loop {
            if let Some(r) = take_reply(&mut self.buf)? {
                return Ok(Got::Reply(r.code, r.to_string()));
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(Got::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Ok(Got::Closed)
                }
                Err(e) => return Err(format!("no reply within {READ_TIMEOUT:?}: {e}")),
            }
        }
    }
}

/// Plays `trace` against the smtpd on `port`; the disagreements, if any.
fn replay(trace: &Trace, how: CodeMatch, port: u16) -> Result<Vec<String>, String> {
    let mut wire = Wire::connect(port, Instant::now() + Duration::from_secs(20))?;
    let mut diffs = Vec::new();
    let mut closed = false;
    for step in &trace.steps {
        let at = step.line;
        match &step.action {
            Action::Send(_) if closed => {
                diffs.push(format!("line {at}: Postfix closed before this"));
                break;
            }
            Action::Send(bytes) => {
                if let Err(e) = wire.stream.write_all(bytes) {
                    diffs.push(format!("line {at}: send: {e}"));
                    break;
                }
            }
            Action::Reply { code, .. } => match wire.next() {
                Err(e) => {
                    diffs.push(format!("line {at}: expected {code}, {e}"));
                    break;
                }
                Ok(Got::Reply(got, _)) if how.agrees(*code, got) => {}
                Ok(Got::Reply(_, text)) => {
                    diffs.push(format!("line {at}: expected {code}, Postfix: {text}"))
                }
                Ok(Got::Closed) => {
                    diffs.push(format!("line {at}: expected {code}, Postfix closed"));
                    closed = true;
                    break;
                }
            },
            Action::Closed => match wire.next() {
                Err(e) => {
                    diffs.push(format!("line {at}: expected the close, {e}"));
                    break;
                }
                Ok(Got::Closed) => closed = true,
                Ok(Got::Reply(_, text)) => {
                    diffs.push(format!("line {at}: expected the close, Postfix: {text}"));
                    break;
                }
            },
            Action::ReplyLine { .. }
            | Action::Queued { .. }
            | Action::QueuedContains(_)
            | Action::Wait(_)
            | Action::Delivery(_) => {}
        }
    }
    if !closed {
        let _ = wire.stream.shutdown(Shutdown::Write);
    }
    Ok(diffs)
}

#[test]
fn rfc_required_traces_against_postfix() {
    if !Path::new(POSTFIX).exists() {
        eprintln!("SKIPPED: {POSTFIX} is missing (Debian package postfix); no Postfix cross-check");
        return;
    }
    if !is_root() {
        eprintln!("SKIPPED: not root (Postfix's master must be); no Postfix cross-check");
        return;
    }
    let traces = trace::load_dir(&smtp_corpus_dir()).unwrap_or_else(|e| panic!("{e}"));
    for t in &traces {
        let known = KNOWN.contains(&t.name().as_str());
        assert_eq!(
            known,
            !t.postfix_notes.is_empty(),
            "{}: a trace is in KNOWN exactly when it has a `# postfix:` line",
            t.name()
        );
        assert!(
            !known || t.rfc_required.is_some(),
            "{}: in KNOWN but not `# rfc-required`",
            t.name()
        );
    }
    // One listener per distinct setup.
    let mut ports: BTreeMap<Vec<(&'static str, String)>, u16> = BTreeMap::new();
    let mut runs = Vec::new();
    for t in traces.iter() {
        let Some(how) = t.rfc_required else { continue };
        match overrides(t) {
            Ok(o) => {
                let port = *ports.entry(o).or_insert_with(free_port);
                runs.push((t, how, port));
            }
            Err(why) => eprintln!("skipped {}: {why}", t.name()),
        }
    }
    assert!(!runs.is_empty(), "no trace is marked `# rfc-required`");
    let listeners: Vec<_> = ports.iter().map(|(o, p)| (*p, o.clone())).collect();
    let mut domains: Vec<&str> = runs
        .iter()
        .filter_map(|(t, _, _)| t.setup.rcpthosts.as_ref())
        .flatten()
        .map(String::as_str)
        .collect();
    domains.sort();
    domains.dedup();
    let postfix = Postfix::start(&listeners, &domains.join(", ")).unwrap_or_else(|e| panic!("{e}"));
    let mut problems = Vec::new();
    let mut agreed = 0;
    for (t, how, port) in &runs {
        let name = t.name();
        let known = KNOWN.contains(&name.as_str());
        match replay(t, *how, *port) {
            Ok(diffs) if diffs.is_empty() && known => problems.push(format!(
                "{name}: Postfix now agrees; remove it from KNOWN and its `# postfix:` line"
            )),
            Ok(diffs) if diffs.is_empty() => agreed += 1,
            Ok(diffs) if known => {
                eprintln!("known: {name}: {}", t.postfix_notes.join("; "));
                for d in diffs {
                    eprintln!("    {d}");
                }
            }
            Ok(diffs) => problems.push(format!("{name}: {}", diffs.join("\n    "))),
            Err(e) if known => eprintln!("known: {name}: {e}"),
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    eprintln!(
        "{agreed} of {} rfc-required traces agree with Postfix, {} known disagreements",
        runs.len(),
        KNOWN.len()
    );
    assert!(
        problems.is_empty(),
        "{} new disagreements with Postfix:\n{}\nPostfix's log:\n{}",
        problems.len(),
        problems.join("\n"),
        postfix.log()
    );
}
