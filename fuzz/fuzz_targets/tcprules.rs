//! tcprules: compiling rules text, the keys of a connection, decoding a
//! record. The input is `rules text \0 remote ip \0 host \0 info \0 raw`.
//!
//! Invariants: no panic; every record `compile` makes decodes with
//! `parse_value`; `lookup_keys` ends with the empty key and never repeats
//! the address key; `find_rule` over the compiled records agrees with the
//! first matching key.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sqmail_core::tcprules::{compile, find_rule, lookup_keys, parse_value};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(5, |&b| b == 0);
    let text = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let ip = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let host = parts
        .next()
        .map(|h| String::from_utf8_lossy(h).into_owned());
    let info = parts
        .next()
        .map(|i| String::from_utf8_lossy(i).into_owned());
    let raw = parts.next().unwrap_or_default();
    let _ = parse_value(raw);

    let keys = lookup_keys(&ip, host.as_deref(), info.as_deref());
    assert_eq!(
        keys.last().map(Vec::len),
        Some(0),
        "the empty key comes last"
    );

    let Ok(records) = compile(&text) else {
        return;
    };
    for (key, value) in &records {
        if let Err(e) = parse_value(value) {
            panic!("record for {key:?} does not decode: {e}");
        }
    }
    let mut get = |key: &[u8]| {
        Ok(records
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone()))
    };
    let found = find_rule(&mut get, &ip, host.as_deref(), info.as_deref()).expect("lookup");
    let first = keys
        .iter()
        .find_map(|k| records.iter().find(|(rk, _)| rk == k))
        .map(|(_, v)| parse_value(v).expect("decodes"));
    assert_eq!(found, first);
});
