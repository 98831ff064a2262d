//! `users/assign` and the `users/cdb` built from it (qmail-users(5),
//! qmail-newu, qmail-lspawn), as pure functions over bytes.
//!
//! Lines: `=local:user:uid:gid:homedir:dash:ext:` (exactly `local`) and
//! `+loc:user:uid:gid:homedir:dash:pre:` (every local starting with `loc`,
//! the rest appended to `pre`), then a line starting with `.`.
//!
//! The cdb is the one qmail-newu writes, so qmail's own tools and sqmail can
//! read each other's: key `!` + lowercased local + NUL for `=`, `!` +
//! lowercased prefix for `+`, the six fields joined by NUL (no trailing NUL)
//! as the value, and under the empty key the "wildchars": the last byte of
//! each `+` prefix, the only places a wildcard match is tried.
//!
//! Stricter than qmail-newu, which takes any line not starting with `+` as
//! `=` and reads the leading digits of uid and gid: those are errors here.

use crate::control::ControlError;

/// `=` (this local only) or `+` (every local with this prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Exact,
    Prefix,
}

/// One line of `users/assign`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub kind: Kind,
    /// The local part (`=`) or its prefix (`+`), as written.
    pub local: Vec<u8>,
    /// The user it maps to; `ext` holds the line's `ext` (`=`) or `pre` (`+`).
    pub entry: UserEntry,
}

/// What qmail-lspawn hands qmail-local: who gets the mail and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserEntry {
    pub user: Vec<u8>,
    pub uid: u32,
    pub gid: u32,
    pub home: Vec<u8>,
    pub dash: Vec<u8>,
    pub ext: Vec<u8>,
}

/// Parse `users/assign`; `file` names it in errors.
pub fn parse(file: &str, contents: &[u8]) -> Result<Vec<Assignment>, ControlError> {
    let mut out = Vec::new();
    let mut rest = contents;
    let mut lineno = 0;
    loop {
        lineno += 1;
        let (line, terminated) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let l = &rest[..i];
                rest = &rest[i + 1..];
                (l, true)
            }
            None => {
                let l = rest;
                rest = &[];
                (l, false)
            }
        };
        if line.first() == Some(&b'.') {
            return Ok(out);
        }
        let err = |m: &str| ControlError::new(file, lineno, m);
        if !terminated {
            return Err(err("missing the final line \".\""));
        }
        out.push(parse_line(line).map_err(err)?);
    }
}

fn parse_line(line: &[u8]) -> Result<Assignment, &'static str> {
    if line.contains(&0) {
        return Err("NUL byte in line");
    }
    let kind = match line.first() {
        Some(b'=') => Kind::Exact,
        Some(b'+') => Kind::Prefix,
        _ => return Err("a line must start with = or +"),
    };
    let mut fields = line[1..].split(|&b| b == b':');
    let mut next = || {
        fields
            .next()
            .ok_or("fewer than 7 fields (a line ends with ':')")
    };
    let local = next()?.to_vec();
    let user = next()?.to_vec();
    let uid = number(next()?).ok_or("uid is not a number")?;
    let gid = number(next()?).ok_or("gid is not a number")?;
    let home = next()?.to_vec();
    let dash = next()?.to_vec();
    let ext = next()?.to_vec();
    // The seventh colon ends the line's data; qmail-newu ignores the rest.
    next()?;
    Ok(Assignment {
        kind,
        local,
        entry: UserEntry {
            user,
            uid,
            gid,
            home,
            dash,
            ext,
        },
    })
}

fn number(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

impl Assignment {
    /// The users/cdb key qmail-newu writes for this line.
    pub fn cdb_key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.local.len() + 2);
        k.push(b'!');
        k.extend(self.local.iter().map(u8::to_ascii_lowercase));
        if self.kind == Kind::Exact {
            k.push(0);
        }
        k
    }

    /// The users/cdb value qmail-newu writes for this line.
    pub fn cdb_value(&self) -> Vec<u8> {
        self.entry.cdb_value()
    }
}

impl UserEntry {
    /// The six fields joined by NUL: the users/cdb value that `lookup`
    /// decodes again.
    pub fn cdb_value(&self) -> Vec<u8> {
        let uid = self.uid.to_string();
        let gid = self.gid.to_string();
        let fields: [&[u8]; 6] = [
            &self.user,
            uid.as_bytes(),
            gid.as_bytes(),
            &self.home,
            &self.dash,
            &self.ext,
        ];
        fields.join(&0u8)
    }
}

/// Every record of users/cdb in the order qmail-newu adds them, the
/// wildchars record (empty key) last.
pub fn cdb_records(assignments: &[Assignment]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut wild = Vec::new();
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = assignments
        .iter()
        .map(|a| {
            if a.kind == Kind::Prefix {
                if let Some(&c) = a.local.last() {
                    if !wild.contains(&c) {
                        wild.push(c);
                    }
                }
            }
            (a.cdb_key(), a.cdb_value())
        })
        .collect();
    out.push((Vec::new(), wild));
    out
}

/// Why a users/cdb lookup failed (qmail-lspawn defers in both cases).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupError<E> {
    /// Reading the cdb failed, or it has no wildchars record.
    Cdb(E),
    /// A record is not six NUL-separated fields with numeric ids.
    BadRecord,
}

/// qmail-lspawn's `nughde_get` over users/cdb: `!local\0` first, then the
/// longest `!prefix` whose last byte is a wildchar (or the bare `!`), the
/// unmatched rest of `local` (in its original case) appended to `pre`.
/// `get` reads one key. `Ok(None)`: not assigned, try the passwd file.
pub fn lookup<E>(
    local: &[u8],
    mut get: impl FnMut(&[u8]) -> Result<Option<Vec<u8>>, E>,
) -> Result<Option<UserEntry>, LookupError<E>> {
    let wild = get(b"")
        .map_err(LookupError::Cdb)?
        .ok_or(LookupError::BadRecord)?;
    let mut key = Vec::with_capacity(local.len() + 2);
    key.push(b'!');
    key.extend(local.iter().map(u8::to_ascii_lowercase));
    key.push(0);
    if let Some(v) = get(&key).map_err(LookupError::Cdb)? {
        return decode(&v, b"").map(Some);
    }
    // Prefix keys: `!` plus the first n bytes of local, longest first.
    for n in (0..=local.len()).rev() {
        let k = &key[..n + 1];
        if n > 0 && !wild.contains(&k[n]) {
            continue;
        }
        if let Some(v) = get(k).map_err(LookupError::Cdb)? {
            return decode(&v, &local[n..]).map(Some);
        }
    }
    Ok(None)
}

fn decode<E>(value: &[u8], rest: &[u8]) -> Result<UserEntry, LookupError<E>> {
    let mut v = value.to_vec();
    v.extend_from_slice(rest);
    let mut f = v.split(|&b| b == 0);
    let mut next = || f.next().map(<[u8]>::to_vec).ok_or(LookupError::BadRecord);
    let user = next()?;
    // qmail-lspawn reads ids with scan_ulong; a record newu wrote is digits.
    let uid = number(&next()?).ok_or(LookupError::BadRecord)?;
    let gid = number(&next()?).ok_or(LookupError::BadRecord)?;
    Ok(UserEntry {
        user,
        uid,
        gid,
        home: next()?,
        dash: next()?,
        ext: next()?,
    })
}

#[cfg(test)]
#[path = "assign_tests.rs"]
mod tests;
