//! `users/assign` and the users/cdb built from it: `assign::parse`,
//! `cdb_records`, `lookup`. The input is the assign text, then local parts
//! to look up, each after a `\xff`.
//!
//! Invariants: no panic; a parse error names line ≥ 1; `cdb_records` is one
//! record per line (keys as qmail-newu writes them) plus the wildchars
//! record last; over a cdb of those records (first record of a key wins, as
//! a cdb reader's find does), `lookup` of a NUL-free local part gives what a
//! model of qmail-lspawn's `nughde_get` over the parsed lines gives, so each
//! line's `UserEntry` survives its encode/decode round trip (found again
//! by its own local part, unless another line shadows it or it is a `+`
//! prefix ending in a capital, which qmail-lspawn never matches); `lookup` on
//! records that are not newu's, or a failing reader, returns an error or an
//! entry, never panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sqmail_core::assign::{cdb_records, lookup, parse, Assignment, Kind, LookupError, UserEntry};

type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// A cdb's find: the first record with the key.
fn get(records: &Records, key: &[u8]) -> Option<Vec<u8>> {
    records
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

fn lower(b: &[u8]) -> Vec<u8> {
    b.to_ascii_lowercase()
}

/// qmail-lspawn over the lines themselves, not over encoded records: the
/// first `=` line for the whole local, else the longest prefix (tried only
/// where the local part's lowercased byte before the cut is a wildchar, or
/// at length 0) of the first `+` line for it, the rest appended to `pre`.
/// qmail-newu records each prefix's last byte as written (not lowercased)
/// while lspawn looks for the lowercased byte, so `+fooX` never matches
/// wildly; the model keeps that.
fn model(assign: &[Assignment], local: &[u8]) -> Option<UserEntry> {
    let wild: Vec<u8> = assign
        .iter()
        .filter(|a| a.kind == Kind::Prefix)
        .filter_map(|a| a.local.last().copied())
        .collect();
    let low = lower(local);
    if let Some(a) = assign
        .iter()
        .find(|a| a.kind == Kind::Exact && lower(&a.local) == low)
    {
        return Some(a.entry.clone());
    }
    for n in (0..=local.len()).rev() {
        if n > 0 && !wild.contains(&low[n - 1]) {
            continue;
        }
        if let Some(a) = assign
            .iter()
            .find(|a| a.kind == Kind::Prefix && lower(&a.local) == low[..n])
        {
            let mut e = a.entry.clone();
            e.ext.extend_from_slice(&local[n..]);
            return Some(e);
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0xff);
    let text = parts.next().unwrap_or_default();
    let locals: Vec<&[u8]> = parts.collect();

    // Any bytes as a record never panic the decoder.
    for l in &locals {
        let _ = lookup::<()>(l, |_| Ok(Some(text.to_vec())));
    }

    let assign = match parse("users/assign", text) {
        Ok(a) => a,
        Err(e) => {
            assert!(e.line >= 1, "{e}");
            assert_eq!(e.file, "users/assign");
            return;
        }
    };
    let records = cdb_records(&assign);
    assert_eq!(records.len(), assign.len() + 1);
    let (wild_key, wild) = records.last().unwrap();
    assert!(wild_key.is_empty(), "the wildchars record comes last");
    for (a, (k, v)) in assign.iter().zip(&records) {
        assert!(!a.local.contains(&b'\n') && !a.local.contains(&b':') && !a.local.contains(&0));
        let mut want = vec![b'!'];
        want.extend(lower(&a.local));
        if a.kind == Kind::Exact {
            want.push(0);
        } else if let Some(c) = a.local.last() {
            assert!(wild.contains(c), "wildchar of {:?} missing", a.local);
        }
        assert_eq!(k, &want);
        assert_eq!(v.iter().filter(|&&b| b == 0).count(), 5, "six fields");
        assert_eq!(v, &a.entry.cdb_value());
    }

    // Round trips: each line's own local part, and the queries, with and
    // without a line's local part in front.
    let mut queries: Vec<Vec<u8>> = assign.iter().map(|a| a.local.clone()).collect();
    for l in &locals {
        queries.push(l.to_vec());
        for a in assign.iter().take(4) {
            queries.push([&a.local[..], l].concat());
        }
    }
    for q in &queries {
        let got = lookup::<()>(q, |k| Ok(get(&records, k)));
        if q.contains(&0) {
            // Not a C string: qmail could not ask. Only "no panic".
            continue;
        }
        assert_eq!(got, Ok(model(&assign, q)), "lookup of {q:?}");
    }
    // The first line for a key is found again exactly.
    for (i, a) in assign.iter().enumerate() {
        let first = assign
            .iter()
            .position(|b| b.kind == a.kind && lower(&b.local) == lower(&a.local));
        let shadowed = a.kind == Kind::Prefix
            && assign
                .iter()
                .any(|b| b.kind == Kind::Exact && lower(&b.local) == lower(&a.local));
        // lspawn looks for the lowercased byte among the wildchars: a
        // prefix ending in a capital (not also ending another line in
        // lowercase) is never matched, in qmail as here.
        let unreachable = a.kind == Kind::Prefix
            && a.local
                .last()
                .is_some_and(|c| !wild.contains(&c.to_ascii_lowercase()));
        if first == Some(i) && !shadowed && !unreachable {
            let got = lookup::<()>(&a.local, |k| Ok(get(&records, k)));
            assert_eq!(got, Ok(Some(a.entry.clone())), "line {}", i + 1);
        }
    }

    // A reader that fails at the n-th read reports it, and damaged records
    // (a value cut short) are errors or entries, not panics.
    let fail_at = locals.len() % 4;
    for q in &queries {
        let mut n = 0;
        let r = lookup(q, |k| {
            n += 1;
            if n > fail_at {
                Err("io")
            } else {
                Ok(get(&records, k))
            }
        });
        if let Err(LookupError::Cdb(e)) = r {
            assert_eq!(e, "io");
        }
        let _ = lookup::<()>(q, |k| {
            Ok(get(&records, k).map(|mut v| {
                if !k.is_empty() {
                    v.truncate(v.len() / 2);
                }
                v
            }))
        });
    }
});
