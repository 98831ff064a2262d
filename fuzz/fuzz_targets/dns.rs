//! dns: a `Lookup` fed arbitrary answers. The input is a query byte (its
//! low bit: MX or host lookup), then answers, each a 2-byte big-endian
//! length and that many bytes; each answers the lookup's next transmit,
//! from its server, with the transmit's id written over its first two
//! bytes (so it gets past the id check and into the parser).
//!
//! Invariants: no panic; every transmit is a query with one question, to
//! a configured server, TCP ones with their length prefix; a pending
//! lookup has a deadline and a finished one none; the lookup always
//! finishes (timeouts included); a result is destinations in preference
//! order, each with addresses, within `MAX_HOSTS` and `MAX_ADDRS`.

#![no_main]

use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;
use sqmail_core::dns::{Lookup, Query, Resolver, ResolverConfig, Transmit, MAX_ADDRS, MAX_HOSTS};

fn check_transmit(t: &Transmit, config: &ResolverConfig) -> u16 {
    assert!(config.nameservers.contains(&t.server));
    let bytes = if t.tcp {
        let len = u16::from_be_bytes([t.bytes[0], t.bytes[1]]);
        assert_eq!(usize::from(len), t.bytes.len() - 2);
        &t.bytes[2..]
    } else {
        &t.bytes[..]
    };
    let msg = Message::from_vec(bytes).expect("a transmit parses");
    assert_eq!(msg.metadata.message_type, MessageType::Query);
    assert_eq!(msg.queries.len(), 1);
    msg.metadata.id
}

fn next(lookup: &mut Lookup, config: &ResolverConfig, now: &mut Instant) -> Option<Transmit> {
    for _ in 0..64 {
        if let Some(t) = lookup.poll_transmit() {
            check_transmit(&t, config);
            return Some(t);
        }
        *now = lookup.poll_timeout()?;
        lookup.handle_timeout(*now);
    }
    panic!("no transmit and no end");
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, mut rest)) = data.split_first() else {
        return;
    };
    let servers = vec![
        "192.0.2.1:53".parse().unwrap(),
        "[2001:db8::1]:53".parse().unwrap(),
    ];
    let mut config = ResolverConfig::with_nameservers(servers);
    config.timeout = Duration::from_secs(1);
    config.rotate = kind & 2 != 0;
    let resolver = Resolver::new(config.clone(), u64::from(kind));
    let start = Instant::now();
    let mut now = start;
    let query = match kind & 1 {
        0 => Query::Mx("fuzz.test".into()),
        _ => Query::Host("fuzz.test".into()),
    };
    let mut lookup = resolver.lookup(now, query);
    while let [hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (answer, tail) = tail.split_at(len);
        rest = tail;
        let Some(t) = next(&mut lookup, &config, &mut now) else {
            break;
        };
        let mut answer = answer.to_vec();
        if answer.len() >= 2 {
            let id = check_transmit(&t, &config);
            answer[..2].copy_from_slice(&id.to_be_bytes());
        }
        lookup.handle_response(now, t.server, t.tcp, &answer);
    }
    let mut result = None;
    for _ in 0..10_000 {
        result = lookup.result();
        if result.is_some() {
            break;
        }
        assert!(
            lookup.poll_timeout().is_some(),
            "pending without a deadline"
        );
        while let Some(t) = lookup.poll_transmit() {
            check_transmit(&t, &config);
        }
        now = lookup.poll_timeout().unwrap();
        lookup.handle_timeout(now);
    }
    let result = result.expect("the lookup finishes");
    assert_eq!(lookup.poll_timeout(), None);
    assert!(lookup.poll_transmit().is_none());
    if let Ok(dests) = result {
        assert!(!dests.is_empty() && dests.len() <= MAX_HOSTS);
        assert!(dests.windows(2).all(|w| w[0].preference <= w[1].preference));
        assert!(dests
            .iter()
            .all(|d| !d.addrs.is_empty() && d.addrs.len() <= MAX_ADDRS));
    }
});
