//! `sqmail user add|list|del`: virtual mailboxes in a qmail home, and
//! `sqmail recipients` (s/qmail's qmail-recipients).
//!
//! The layout, which `sqmail up` and the delivery side rely on:
//! - the mailbox for `local@domain` is `HOME/mailboxes/<address, lowercased>/`
//!   (0700) with `Maildir/{cur,new,tmp}` (0700) in it;
//! - a `users/assign` line `=<key>:<user>:<uid>:<gid>:<mailbox dir>:::`
//!   delivers it as the invoking user; `<key>` is `local` when `domain` is in
//!   `control/locals`, else `domain-local`, with `domain:domain` in
//!   `control/virtualdomains` and `domain` in `control/rcpthosts`;
//! - `users/recipients` lists the address (for a local domain: the local
//!   part at every domain in `control/locals`), compiled into
//!   `users/recipients.cdb` for smtpd's `control/recipients` check;
//! - `users/passwords` (0600) holds `address:hash`, the hash crypt(3)'s
//!   SHA-512 (`$6$`).
//!
//! Every change happens under an exclusive flock on `users/.lock`, and each
//! file is replaced by rename, so a running smtpd or delivery reads either
//! the old or the new version.

use std::ffi::CStr;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use sha_crypt::{PasswordHasher, ShaCrypt};
use sqmail_core::address::{self, PathKind};
use sqmail_core::assign::{self, Kind};
use sqmail_core::control::parse_list;
use sqmail_queue::local::{newu, write_cdb};

use crate::cli::HomeArgs;
use crate::home::Home;

#[derive(Args, Debug)]
pub struct UserArgs {
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Create a mailbox. Its password, if any, is one line on stdin
    /// (empty stdin: no password).
    Add(AddressArgs),
    /// Print every mailbox, one `address maildir` line each, sorted.
    List(HomeArgs),
    /// Remove a mailbox: it gets no more mail and has no password. Its
    /// Maildir stays on disk.
    Del(AddressArgs),
}

#[derive(Args, Debug)]
struct AddressArgs {
    #[command(flatten)]
    home: HomeArgs,
    /// The mailbox's address, local@domain.
    address: String,
}

/// Why a command failed: the caller's mistake (exit 100) or trouble with
/// the files (exit 111), as qmail's programs tell them apart.
#[derive(Debug)]
enum Failure {
    Refused(String),
    Trouble(String),
}

impl Failure {
    fn text(self) -> String {
        match self {
            Failure::Refused(t) | Failure::Trouble(t) => t,
        }
    }
}

type Res<T> = Result<T, Failure>;

fn trouble(e: impl std::fmt::Display) -> Failure {
    Failure::Trouble(e.to_string())
}

pub fn main(args: UserArgs) -> ExitCode {
    let result = match args.command {
        UserCommand::Add(a) => add_main(&a),
        UserCommand::List(h) => mailboxes(&h.home()).map(|boxes| {
            for (address, maildir) in boxes {
                println!("{address} {}", maildir.display());
            }
        }),
        UserCommand::Del(a) => del(&a.home.home(), &a.address).map(|(address, maildir)| {
            println!(
                "sqmail user: removed {address}; its mail stays in {}",
                maildir.display()
            );
        }),
    };
    exit(result, "sqmail user")
}

/// `sqmail recipients` (qmail-recipients): users/recipients → users/recipients.cdb.
pub fn recipients_main(home: &Home) -> ExitCode {
    let result = Layout::new(home).and_then(|l| {
        let _lock = l.lock()?;
        l.compile_recipients()
    });
    exit(result, "qmail-recipients")
}

fn exit(result: Res<()>, program: &str) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(e)) => {
            eprintln!("{program}: {e}");
            ExitCode::from(100)
        }
        Err(Failure::Trouble(e)) => {
            eprintln!("{program}: fatal: {e}");
            ExitCode::from(111)
        }
    }
}

fn add_main(args: &AddressArgs) -> Res<()> {
    let home = args.home.home();
    // Refuse a bad address before asking for a password.
    parse_address(&args.address)?;
    let password = read_password(&args.address).map_err(|e| trouble(format!("stdin: {e}")))?;
    let maildir = add(&home, &args.address, password.as_deref())?;
    println!(
        "sqmail user: added {}, mail in {}",
        args.address.to_ascii_lowercase(),
        maildir.display()
    );
    Ok(())
}

/// Creates the mailbox for `address` (layout above) and returns its
/// Maildir. `password` `None` or empty: the mailbox has no password.
/// For `sqmail up`, which creates the default mailboxes.
pub fn add_mailbox(home: &Home, address: &str, password: Option<&[u8]>) -> Result<PathBuf, String> {
    add(home, address, password).map_err(Failure::text)
}

fn add(home: &Home, address: &str, password: Option<&[u8]>) -> Res<PathBuf> {
    let (local, domain) = parse_address(address)?;
    let address = format!("{local}@{domain}");
    let l = Layout::new(home)?;
    let _lock = l.lock()?;

    let locals = l.locals()?;
    let is_local = locals.contains(&domain);
    let key = if is_local {
        local.clone()
    } else {
        format!("{domain}-{local}")
    };
    let assign_text = l.read_assign()?;
    if let Some(a) = assignments(&l, &assign_text)?
        .iter()
        .find(|a| a.kind == Kind::Exact && a.local.eq_ignore_ascii_case(key.as_bytes()))
    {
        return Err(Failure::Refused(format!(
            "{address} already exists (users/assign delivers {key} to {})",
            String::from_utf8_lossy(&a.entry.home)
        )));
    }
    let virtualdomains = if is_local {
        None
    } else {
        l.virtualdomains_with(&domain)?
    };
    // Read (and checked) before anything changes.
    let mut recipients = l.recipients_lines()?;

    let (uid, gid, user) = invoker()?;
    let mailbox = l.mailboxes.join(&address);
    let maildir = mailbox.join("Maildir");
    // mailboxes/ only needs to be passable: its entries belong to owners
    // that may not be the home's.
    create_dir(DirBuilder::new().mode(0o711), &l.mailboxes)?;
    let mut dirs = DirBuilder::new();
    dirs.mode(0o700);
    let made = [
        mailbox.clone(),
        maildir.clone(),
        maildir.join("cur"),
        maildir.join("new"),
        maildir.join("tmp"),
    ];
    for dir in &made {
        create_dir(&dirs, dir)?;
        own(dir, uid, gid)?;
    }

    if let Some(password) = password.filter(|p| !p.is_empty()) {
        let mut lines = l.passwords_without(&address)?;
        lines.push(format!("{address}:{}", hash_password(password)?));
        write_atomic(&l.passwords(), join_lines(&lines).as_bytes(), 0o600)?;
    }
    if let Some(text) = virtualdomains {
        write_atomic(&l.control("virtualdomains"), text.as_bytes(), 0o644)?;
    }
    if !is_local {
        l.add_rcpthost(&domain)?;
    }

    let line = format!("={key}:{user}:{uid}:{gid}:{}:::\n", mailbox.display());
    write_atomic(&l.assign(), &insert_assign_line(&assign_text, &line), 0o644)?;
    newu(&l.home).map_err(trouble)?;

    // Last: smtpd accepts the address only once it can be delivered.
    let wanted: Vec<String> = if is_local {
        locals.iter().map(|d| format!("{local}@{d}")).collect()
    } else {
        vec![address.clone()]
    };
    push_new(&mut recipients, wanted);
    l.write_recipients(&recipients)?;
    Ok(maildir)
}

/// Lets smtpd accept `local` at every local domain although it has no
/// mailbox: for an alias that a `.qmail` file in the catch-all delivers
/// (`sqmail up`'s `root` and `mailer-daemon`).
pub fn add_alias(home: &Home, local: &str) -> Result<(), String> {
    let alias = || -> Res<()> {
        let l = Layout::new(home)?;
        let _lock = l.lock()?;
        let mut recipients = l.recipients_lines()?;
        let locals = l.locals()?;
        push_new(
            &mut recipients,
            locals.iter().map(|d| format!("{local}@{d}")),
        );
        l.write_recipients(&recipients)
    };
    alias().map_err(Failure::text)
}

/// Appends the addresses `recipients` does not list yet (in any case).
fn push_new(recipients: &mut Vec<String>, wanted: impl IntoIterator<Item = String>) {
    for w in wanted {
        if !recipients.iter().any(|l| l.trim().eq_ignore_ascii_case(&w)) {
            recipients.push(w);
        }
    }
}

/// qmail's catch-all: one `+:user:uid:gid:dir:-::` line in users/assign,
/// so that every local part without its own line is delivered by `dir`'s
/// `.qmail-<local>` files (or `.qmail-default`), as the invoking user. For
/// `sqmail up`'s `~alias`. Does nothing if users/assign already has a
/// catch-all (this one, or the administrator's).
pub fn add_catch_all(home: &Home, dir: &Path) -> Result<(), String> {
    catch_all(home, dir).map_err(Failure::text)
}

fn catch_all(home: &Home, dir: &Path) -> Res<()> {
    let l = Layout::new(home)?;
    let dir = fs::canonicalize(dir).map_err(|e| trouble(format!("{}: {e}", dir.display())))?;
    if dir
        .as_os_str()
        .as_bytes()
        .iter()
        .any(|b| b":\n".contains(b))
    {
        return Err(Failure::Refused(format!(
            "{}: an assign line cannot hold ':' or a newline",
            dir.display()
        )));
    }
    let _lock = l.lock()?;
    let text = l.read_assign()?;
    let exists = assignments(&l, &text)?
        .iter()
        .any(|a| a.kind == Kind::Prefix && a.local.is_empty());
    if exists {
        return Ok(());
    }
    let (uid, gid, user) = invoker()?;
    own(&dir, uid, gid)?;
    let line = format!("+:{user}:{uid}:{gid}:{}:-::\n", dir.display());
    write_atomic(&l.assign(), &insert_assign_line(&text, &line), 0o644)?;
    newu(&l.home).map_err(trouble)
}

/// `sqmail user del`: returns the address and the Maildir left on disk.
fn del(home: &Home, address: &str) -> Res<(String, PathBuf)> {
    let (local, domain) = parse_address(address)?;
    let address = format!("{local}@{domain}");
    let l = Layout::new(home)?;
    let _lock = l.lock()?;
    let mailbox = l.mailboxes.join(&address);
    let assign_text = l.read_assign()?;
    let found = assignments(&l, &assign_text)?
        .into_iter()
        .find(|a| a.kind == Kind::Exact && a.entry.home == mailbox.as_os_str().as_bytes());
    let Some(found) = found else {
        return Err(Failure::Refused(format!("no mailbox {address}")));
    };
    let is_local = found.local.eq_ignore_ascii_case(local.as_bytes());
    let mut gone = vec![address.clone()];
    if is_local {
        gone.extend(l.locals()?.iter().map(|d| format!("{local}@{d}")));
    }

    // First: smtpd stops accepting mail the mailbox would no longer get.
    let mut lines = l.recipients_lines()?;
    lines.retain(|line| !gone.iter().any(|g| line.trim().eq_ignore_ascii_case(g)));
    l.write_recipients(&lines)?;
    write_atomic(
        &l.assign(),
        &remove_assign_lines(&assign_text, &mailbox),
        0o644,
    )?;
    newu(&l.home).map_err(trouble)?;
    if l.passwords().exists() {
        let lines = l.passwords_without(&address)?;
        write_atomic(&l.passwords(), join_lines(&lines).as_bytes(), 0o600)?;
    }
    Ok((address, mailbox.join("Maildir")))
}

/// Every mailbox: `(address, Maildir)`, sorted by address (what `sqmail
/// user list` prints).
pub fn list(home: &Home) -> Result<Vec<(String, PathBuf)>, String> {
    mailboxes(home).map_err(Failure::text)
}

fn mailboxes(home: &Home) -> Res<Vec<(String, PathBuf)>> {
    let l = Layout::new(home)?;
    let text = l.read_assign()?;
    let mut out: Vec<(String, PathBuf)> = assignments(&l, &text)?
        .into_iter()
        .filter(|a| a.kind == Kind::Exact)
        .filter_map(|a| {
            let dir = PathBuf::from(std::ffi::OsStr::from_bytes(&a.entry.home));
            let name = dir.file_name()?.to_str()?.to_string();
            (dir.parent() == Some(l.mailboxes.as_path())).then(|| (name, dir.join("Maildir")))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// `local@domain`, lowercased, as a mailbox can have it: a plain
/// (unquoted) address with a real domain, usable as a directory name.
fn parse_address(input: &str) -> Res<(String, String)> {
    let bad = |why: &str| Failure::Refused(format!("invalid address {input:?}: {why}"));
    let (path, rest) = address::parse_path(input.as_bytes(), PathKind::Forward, false)
        .map_err(|e| bad(&format!("{e:?}")))?;
    if !rest.is_empty() || path.had_source_route || path.address != input {
        return Err(bad("write it plainly, as local@domain"));
    }
    let Some((local, domain)) = input.rsplit_once('@') else {
        return Err(bad("no @domain"));
    };
    if !address::is_domain(domain.as_bytes()) {
        return Err(bad("the domain must be a host name"));
    }
    // `/` would leave mailboxes/; `%` and `!` are routing that smtpd
    // refuses from outside, so such a mailbox could never get mail.
    if local.contains(['/', '%', '!']) {
        return Err(bad("/, % and ! are not allowed in a mailbox name"));
    }
    if input.len() > 255 {
        return Err(bad("too long for a directory name"));
    }
    Ok((local.to_ascii_lowercase(), domain.to_ascii_lowercase()))
}

/// The home's files, at the home's absolute path (the assign line needs it).
struct Layout {
    home: PathBuf,
    users: PathBuf,
    mailboxes: PathBuf,
}

impl Layout {
    fn new(home: &Home) -> Res<Layout> {
        let abs = fs::canonicalize(home.path()).map_err(|e| {
            trouble(format!(
                "{}: {e} (sqmail setup makes a qmail home)",
                home.path().display()
            ))
        })?;
        // An assign line is `:`-separated, one per line.
        if abs
            .as_os_str()
            .as_bytes()
            .iter()
            .any(|b| b":\n\0".contains(b))
        {
            return Err(Failure::Refused(format!(
                "{}: a qmail home for mailboxes cannot have ':' or a newline in its path",
                abs.display()
            )));
        }
        let users = abs.join("users");
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&users)
            .map_err(|e| trouble(format!("{}: {e}", users.display())))?;
        Ok(Layout {
            mailboxes: abs.join("mailboxes"),
            users,
            home: abs,
        })
    }

    fn assign(&self) -> PathBuf {
        self.users.join("assign")
    }

    fn passwords(&self) -> PathBuf {
        self.users.join("passwords")
    }

    fn control(&self, name: &str) -> PathBuf {
        self.home.join("control").join(name)
    }

    /// The exclusive lock every read-modify-write holds until dropped.
    fn lock(&self) -> Res<File> {
        let path = self.users.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| trouble(format!("{}: {e}", path.display())))?;
        // SAFETY: a valid open descriptor; flock has no memory effects.
        while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(trouble(format!("{}: {e}", path.display())));
            }
        }
        Ok(file)
    }

    /// `control/locals`, lowercased; qmail's default is `control/me`.
    fn locals(&self) -> Res<Vec<String>> {
        let lines = match read_list(&self.control("locals"))? {
            Some(lines) => lines,
            None => read_list(&self.control("me"))?
                .unwrap_or_default()
                .into_iter()
                .take(1)
                .collect(),
        };
        Ok(lines
            .iter()
            .map(|l| l.trim().to_ascii_lowercase())
            .collect())
    }

    /// `users/assign`'s text; a missing file is an empty one.
    fn read_assign(&self) -> Res<Vec<u8>> {
        Ok(read_opt(&self.assign())?.unwrap_or_else(|| b".\n".to_vec()))
    }

    /// `control/virtualdomains` with `domain:domain` added (`None`: it is
    /// there), or an error if it already sends `domain` elsewhere (its
    /// mail would not reach the `domain-local` assign line).
    fn virtualdomains_with(&self, domain: &str) -> Res<Option<String>> {
        let path = self.control("virtualdomains");
        let text = read_text(&path)?.unwrap_or_default();
        for line in parse_list("virtualdomains", text.as_bytes()).map_err(trouble)? {
            let Some((d, prefix)) = line.split_once(':') else {
                continue;
            };
            if d.trim().eq_ignore_ascii_case(domain) {
                return if prefix.trim().eq_ignore_ascii_case(domain) {
                    Ok(None)
                } else {
                    Err(Failure::Refused(format!(
                        "{} sends {domain} to {prefix:?}, not to {domain}: edit it first",
                        path.display()
                    )))
                };
            }
        }
        Ok(Some(append_line(text, &format!("{domain}:{domain}"))))
    }

    /// Adds `domain` to `control/rcpthosts` unless it is listed.
    fn add_rcpthost(&self, domain: &str) -> Res<()> {
        let path = self.control("rcpthosts");
        let text = read_text(&path)?.unwrap_or_default();
        let listed = parse_list("rcpthosts", text.as_bytes())
            .map_err(trouble)?
            .iter()
            .any(|l| l.trim().eq_ignore_ascii_case(domain));
        if listed {
            return Ok(());
        }
        write_atomic(&path, append_line(text, domain).as_bytes(), 0o644)
    }

    /// `users/passwords`' lines except `address`'s.
    fn passwords_without(&self, address: &str) -> Res<Vec<String>> {
        let text = read_text(&self.passwords())?.unwrap_or_default();
        let prefix = format!("{address}:");
        Ok(text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with(&prefix))
            .map(str::to_string)
            .collect())
    }

    /// `users/recipients`' lines, checked as the compiler will read them.
    fn recipients_lines(&self) -> Res<Vec<String>> {
        let path = self.users.join("recipients");
        let text = read_text(&path)?.unwrap_or_default();
        sqmail_core::recipients::users_recipients_keys(
            &path.display().to_string(),
            text.as_bytes(),
        )
        .map_err(|e| Failure::Refused(e.to_string()))?;
        Ok(text.lines().map(str::to_string).collect())
    }

    /// Replaces `users/recipients`, then its cdb.
    fn write_recipients(&self, lines: &[String]) -> Res<()> {
        let path = self.users.join("recipients");
        write_atomic(&path, join_lines(lines).as_bytes(), 0o644)?;
        self.compile_recipients()
    }

    /// users/recipients → users/recipients.cdb (keys `:address`, empty
    /// values), atomically; a missing file gives an empty cdb.
    fn compile_recipients(&self) -> Res<()> {
        let path = self.users.join("recipients");
        let text = read_opt(&path)?.unwrap_or_default();
        let keys =
            sqmail_core::recipients::users_recipients_keys(&path.display().to_string(), &text)
                .map_err(|e| Failure::Refused(e.to_string()))?;
        write_cdb(
            &self.users.join("recipients.cdb"),
            keys.into_iter().map(|k| (k, Vec::new())),
        )
        .map_err(trouble)
    }
}

fn assignments(l: &Layout, text: &[u8]) -> Res<Vec<assign::Assignment>> {
    assign::parse(&l.assign().display().to_string(), text).map_err(trouble)
}

/// The lines of `text`, without their newlines.
fn split_lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    text.split(|&b| b == b'\n')
        .filter(move |_| !text.is_empty())
}

/// `assign` with `line` inserted before its final `.` line (which
/// `assign::parse` has checked is there); what follows it is kept.
fn insert_assign_line(assign: &[u8], line: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(assign.len() + line.len());
    let mut inserted = false;
    for l in split_lines(assign) {
        if !inserted && l.first() == Some(&b'.') {
            out.extend_from_slice(line.as_bytes());
            inserted = true;
        }
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    if !inserted {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b".\n");
    }
    out
}

/// `assign` without the `=` lines (before the final `.`) that deliver to
/// `mailbox`; every other line stays as it was.
fn remove_assign_lines(assign: &[u8], mailbox: &Path) -> Vec<u8> {
    let mut out = Vec::with_capacity(assign.len());
    let mut done = false;
    for line in split_lines(assign) {
        done |= line.first() == Some(&b'.');
        let ours = !done
            && line.first() == Some(&b'=')
            && line.split(|&b| b == b':').nth(4) == Some(mailbox.as_os_str().as_bytes());
        if !ours {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    out
}

fn join_lines(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

fn append_line(mut text: String, line: &str) -> String {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    text
}

fn create_dir(builder: &DirBuilder, dir: &Path) -> Res<()> {
    match builder.create(dir) {
        Ok(()) => Ok(()),
        // A mailbox deleted earlier left its Maildir: adding it again
        // brings the old mail back.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(trouble(format!("{}: {e}", dir.display()))),
    }
}

fn read_opt(path: &Path) -> Res<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(trouble(format!("{}: {e}", path.display()))),
    }
}

fn read_text(path: &Path) -> Res<Option<String>> {
    read_opt(path)?
        .map(|b| {
            String::from_utf8(b).map_err(|_| trouble(format!("{}: not UTF-8", path.display())))
        })
        .transpose()
}

fn read_list(path: &Path) -> Res<Option<Vec<String>>> {
    let Some(text) = read_opt(path)? else {
        return Ok(None);
    };
    parse_list(&path.display().to_string(), &text)
        .map(Some)
        .map_err(trouble)
}

/// Replaces `path` by `contents` through `path.tmp` (created with `mode`,
/// so a password file is never readable by others), fsync and rename.
fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Res<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let err = |e: io::Error| trouble(format!("unable to write {}: {e}", tmp.display()));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| {
        trouble(format!(
            "unable to move {} to {}: {e}",
            tmp.display(),
            path.display()
        ))
    })?;
    if let Some(dir) = path.parent().and_then(|d| File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// crypt(3)'s SHA-512 (`$6$rounds=5000$salt$hash`). The salt is 12 random
/// bytes, 16 characters encoded: crypt(3) reads at most 16, so a longer
/// salt would make a hash that glibc's crypt cannot verify.
fn hash_password(password: &[u8]) -> Res<String> {
    let mut salt = [0u8; 12];
    let mut filled = 0;
    while filled < salt.len() {
        // SAFETY: writes at most the remaining length into the buffer.
        let n =
            unsafe { libc::getrandom(salt[filled..].as_mut_ptr().cast(), salt.len() - filled, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(trouble(format!("getrandom: {e}")));
            }
        } else {
            filled += n as usize;
        }
    }
    ShaCrypt::SHA512
        .hash_password_with_salt(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| trouble(format!("hashing the password: {e}")))
}

/// The password: one line of stdin, its newline stripped; `None` when
/// stdin is empty. On a terminal it is asked for without echo.
fn read_password(address: &str) -> io::Result<Option<Vec<u8>>> {
    let stdin = io::stdin();
    let mut line = Vec::new();
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(0) } == 1 {
        eprint!("password for {address} (empty for none): ");
        let _echo = NoEcho::new(stdin.as_raw_fd());
        stdin.lock().read_until(b'\n', &mut line)?;
        eprintln!();
    } else {
        stdin.lock().read_to_end(&mut line)?;
    }
    if let Some(end) = line.iter().position(|&b| b == b'\n') {
        line.truncate(end);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    Ok((!line.is_empty()).then_some(line))
}

/// Terminal echo off while it lives.
struct NoEcho {
    fd: i32,
    saved: Option<libc::termios>,
}

impl NoEcho {
    fn new(fd: i32) -> NoEcho {
        // SAFETY: termios is plain data; tcgetattr fills it or fails.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return NoEcho { fd, saved: None };
        }
        let saved = t;
        t.c_lflag &= !libc::ECHO;
        // SAFETY: a termios that tcgetattr returned, one flag changed.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
        NoEcho {
            fd,
            saved: Some(saved),
        }
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            // SAFETY: restores the settings read in `new`.
            unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, t) };
        }
    }
}

/// Who owns the mailboxes and gets their mail: the invoking user, or, for
/// root (to whom nothing is ever delivered), the user who ran sudo, else
/// `nobody`. Returns uid, gid and name.
fn invoker() -> Res<(u32, u32, String)> {
    // SAFETY: getuid and getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if uid == 0 {
        return root_delegate().ok_or_else(|| {
            Failure::Refused(
                "running as root, and there is neither $SUDO_UID nor a user nobody \
                 to own the mailboxes (mail is never delivered as root)"
                    .into(),
            )
        });
    }
    let name = passwd_name(uid)
        .or_else(|| std::env::var("USER").ok())
        .filter(|n| !n.is_empty() && !n.contains([':', '\n']))
        .unwrap_or_else(|| uid.to_string());
    Ok((uid, gid, name))
}

/// For root: `$SUDO_UID`/`$SUDO_GID`, else the passwd user `nobody`.
fn root_delegate() -> Option<(u32, u32, String)> {
    let env = |name| std::env::var(name).ok()?.parse::<u32>().ok();
    if let (Some(uid), Some(gid)) = (env("SUDO_UID"), env("SUDO_GID")) {
        if uid != 0 {
            let name = passwd_name(uid).unwrap_or_else(|| uid.to_string());
            return Some((uid, gid, name));
        }
    }
    use sqmail_queue::local::Passwd;
    let pw = sqmail_queue::local::SystemPasswd
        .getpwnam(b"nobody")
        .ok()
        .flatten()
        .filter(|pw| pw.uid != 0)?;
    Some((pw.uid, pw.gid, "nobody".into()))
}

/// Gives `dir` to the mailbox owner when that is not us (root's case).
fn own(dir: &Path, uid: u32, gid: u32) -> Res<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == uid {
        return Ok(());
    }
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
        .map_err(|e| trouble(format!("{}: {e}", dir.display())))
}

/// The invoking user's login name, if it can be a mailbox's local part;
/// `None` for root, whose mail goes to the postmaster.
pub fn login_name() -> Option<String> {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    if uid == 0 {
        return None;
    }
    passwd_name(uid)
        .or_else(|| std::env::var("USER").ok())
        .filter(|n| parse_address(&format!("{n}@localhost")).is_ok())
}

fn passwd_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    // SAFETY: passwd is plain data that getpwuid_r fills in.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the buffer outlives `pw`'s use.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() || pw.pw_name.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so pw_name points into `buf`, NUL-terminated.
    let name = unsafe { CStr::from_ptr(pw.pw_name) };
    name.to_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha_crypt::{PasswordHashRef, PasswordVerifier};

    #[test]
    fn addresses() {
        let ok = |a: &str| parse_address(a).ok();
        assert_eq!(
            ok("Alice@Example.COM"),
            Some(("alice".into(), "example.com".into()))
        );
        assert_eq!(
            ok("a.b-c+d@x.example"),
            Some(("a.b-c+d".into(), "x.example".into()))
        );
        for bad in [
            "alice",
            "postmaster",
            "<alice@example.com>",
            "\"a b\"@example.com",
            "a/b@example.com",
            "a%b@example.com",
            "a!b@example.com",
            "alice@[127.0.0.1]",
            "alice@",
            "@example.com",
            "alice@exa mple.com",
            "a@b@example.com",
            "",
        ] {
            assert!(ok(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn assign_line_goes_before_the_dot() {
        let line = "=b:u:1:1:/h:::\n";
        assert_eq!(
            insert_assign_line(b"=a:u:1:1:/h:::\n.\n# after\n", line),
            b"=a:u:1:1:/h:::\n=b:u:1:1:/h:::\n.\n# after\n"
        );
        assert_eq!(insert_assign_line(b".\n", line), b"=b:u:1:1:/h:::\n.\n");
        assert_eq!(insert_assign_line(b"", line), b"=b:u:1:1:/h:::\n.\n");
        let text = b"=a:u:1:1:/m/a@x:::\n=b:u:1:1:/m/b@x:::\n.\n=a:u:1:1:/m/a@x:::\n";
        assert_eq!(
            remove_assign_lines(text, Path::new("/m/a@x")),
            b"=b:u:1:1:/m/b@x:::\n.\n=a:u:1:1:/m/a@x:::\n"
        );
    }

    #[test]
    fn catch_all_and_the_api_for_sqmail_up() {
        let dir = std::env::temp_dir().join(format!("sqmail-user-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("control")).unwrap();
        fs::create_dir_all(dir.join("alias")).unwrap();
        fs::write(dir.join("control/locals"), "localhost\n").unwrap();
        let home = Home::new(dir.clone());
        let maildir = add_mailbox(&home, "me@localhost", Some(b"")).unwrap();
        assert!(maildir.join("new").is_dir());
        assert!(
            !dir.join("users/passwords").exists(),
            "empty password: none"
        );
        add_catch_all(&home, &dir.join("alias")).unwrap();
        add_catch_all(&home, &dir.join("alias")).unwrap();
        let assign = fs::read_to_string(dir.join("users/assign")).unwrap();
        let alias = fs::canonicalize(dir.join("alias")).unwrap();
        assert_eq!(assign.matches("\n+:").count(), 1, "{assign}");
        assert!(
            assign.contains(&format!(":{}:-::\n.\n", alias.display())),
            "{assign}"
        );
        let cdb = sqmail_queue::CdbMap::open(&dir.join("users/cdb")).unwrap();
        assert!(cdb.get(b"!").unwrap().is_some(), "the catch-all record");
        assert_eq!(
            list(&home).unwrap(),
            vec![("me@localhost".to_string(), maildir)]
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn hashes_are_crypt3_sha512() {
        let h = hash_password(b"s3cret").unwrap();
        let fields: Vec<&str> = h.split('$').collect();
        assert_eq!(&fields[..3], ["", "6", "rounds=5000"], "{h}");
        assert_eq!(fields[3].len(), 16, "crypt(3) reads 16 salt characters");
        let parsed = PasswordHashRef::new(&h).unwrap();
        assert!(ShaCrypt::SHA512.verify_password(b"s3cret", parsed).is_ok());
        assert!(ShaCrypt::SHA512.verify_password(b"s3cres", parsed).is_err());
        assert_ne!(h, hash_password(b"s3cret").unwrap(), "salted");
        // A hash by glibc-compatible `openssl passwd -6 -salt abcdefghijklmnop secret`.
        let theirs = "$6$abcdefghijklmnop$J/AWykHqo2Tx5UtavGnFc3ytI33la50JpzLTarSWVhkIXK6wOjNwwZjsrIw2UgmrER2EKrSHCeQyAINEEXAk1/";
        let theirs = PasswordHashRef::new(theirs).unwrap();
        assert!(ShaCrypt::SHA512.verify_password(b"secret", theirs).is_ok());
    }
}
