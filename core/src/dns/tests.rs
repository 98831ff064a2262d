use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use proptest::prelude::*;

use super::*;

const NS1: &str = "192.0.2.1:53";
const NS2: &str = "[2001:db8::2]:53";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn resolver(servers: &[&str], seed: u64) -> Resolver {
    let mut config = ResolverConfig::with_nameservers(servers.iter().map(|s| addr(s)).collect());
    config.timeout = Duration::from_secs(1);
    Resolver::new(config, seed)
}

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

fn rec(owner: &str, ttl: u32, data: RData) -> Record {
    Record::from_rdata(name(owner), ttl, data)
}

fn mx(owner: &str, preference: u16, host: &str) -> Record {
    rec(owner, 300, RData::MX(MX::new(preference, name(host))))
}

fn a(owner: &str, ip: &str) -> Record {
    rec(owner, 300, RData::A(A(ip.parse().unwrap())))
}

fn aaaa(owner: &str, ip: &str) -> Record {
    rec(owner, 300, RData::AAAA(AAAA(ip.parse().unwrap())))
}

fn cname(owner: &str, target: &str) -> Record {
    rec(owner, 300, RData::CNAME(CNAME(name(target))))
}

fn soa(zone: &str, minimum: u32) -> Record {
    let data = SOA::new(
        name("ns.test."),
        name("host.test."),
        1,
        3600,
        600,
        86400,
        minimum,
    );
    rec(zone, 3600, RData::SOA(data))
}

/// The question a transmit carries.
fn question(t: &Transmit) -> Message {
    let bytes = if t.tcp {
        tcp_message(&t.bytes).unwrap()
    } else {
        &t.bytes[..]
    };
    Message::from_vec(bytes).unwrap()
}

/// A response to `q` from an authoritative zone: `records` (answers) and
/// `additionals`; NXDOMAIN when `nx`, else NODATA (with a SOA) when
/// nothing matches.
fn respond(
    q: &Message,
    code: ResponseCode,
    answers: Vec<Record>,
    additionals: Vec<Record>,
) -> Vec<u8> {
    let mut m = Message::response(q.metadata.id, OpCode::Query);
    m.metadata.response_code = code;
    m.metadata.recursion_desired = true;
    m.add_queries(q.queries.clone());
    let empty = answers.is_empty();
    m.add_answers(answers);
    m.add_additionals(additionals);
    if empty {
        m.add_authority(soa("test.", 60));
    }
    m.to_vec().unwrap()
}

/// A zone answering like an authoritative server: the records for the
/// name and type, following CNAMEs in it; NXDOMAIN for names it lacks.
fn zone(records: &[Record]) -> impl FnMut(&Transmit, &Message) -> Option<Vec<u8>> + '_ {
    move |_, q| {
        let query = &q.queries[0];
        let mut at = query.name.clone();
        let mut answers = Vec::new();
        for _ in 0..10 {
            let found: Vec<Record> = records
                .iter()
                .filter(|r| r.name == at && r.record_type() == query.query_type)
                .cloned()
                .collect();
            if !found.is_empty() {
                answers.extend(found);
                break;
            }
            let Some(c) = records
                .iter()
                .find(|r| r.name == at && r.record_type() == RecordType::CNAME)
            else {
                break;
            };
            answers.push(c.clone());
            let RData::CNAME(target) = &c.data else {
                unreachable!()
            };
            at = target.0.clone();
        }
        let exists = records.iter().any(|r| r.name == at);
        let code = if exists {
            ResponseCode::NoError
        } else {
            ResponseCode::NXDomain
        };
        Some(respond(q, code, answers, Vec::new()))
    }
}

/// Drives `lookup` against `server` (None: no answer) on a virtual clock;
/// returns the answer and every transmit.
fn run(
    mut lookup: Lookup,
    mut now: Instant,
    mut server: impl FnMut(&Transmit, &Message) -> Option<Vec<u8>>,
) -> (Answer, Vec<Transmit>) {
    let mut sent = Vec::new();
    for _ in 0..1000 {
        if let Some(answer) = lookup.result() {
            return (answer, sent);
        }
        let mut any = false;
        while let Some(t) = lookup.poll_transmit() {
            any = true;
            let q = question(&t);
            if let Some(bytes) = server(&t, &q) {
                lookup.handle_response(now, t.server, t.tcp, &bytes);
            }
            sent.push(t);
        }
        if !any {
            now = lookup.poll_timeout().expect("a deadline while unfinished");
            lookup.handle_timeout(now);
        }
    }
    panic!("lookup did not finish");
}

fn dest(host: &str, preference: u16, addrs: &[&str]) -> Destination {
    let addrs = addrs.iter().map(|a| a.parse().unwrap()).collect();
    Destination {
        host: host.into(),
        preference,
        addrs,
    }
}

fn mx_zone() -> Vec<Record> {
    vec![
        mx("mx.test.", 10, "a.mx.test."),
        mx("mx.test.", 10, "b.mx.test."),
        mx("mx.test.", 5, "c.mx.test."),
        a("a.mx.test.", "192.0.2.10"),
        aaaa("a.mx.test.", "2001:db8::10"),
        a("b.mx.test.", "192.0.2.11"),
        aaaa("c.mx.test.", "2001:db8::12"),
    ]
}

#[test]
fn resolv_conf() {
    let text = b"# comment\nnameserver 10.0.0.1\n nameserver 10.9.9.9\nnameserver ::1\nnameserver fe80::1%eth0\n\
        nameserver bogus\nsearch example.com\noptions ndots:2 timeout:3 attempts:9 rotate\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n";
    let config = ResolverConfig::from_resolv_conf(text);
    assert_eq!(
        config.nameservers,
        [addr("10.0.0.1:53"), addr("[::1]:53"), addr("10.0.0.2:53")]
    );
    assert_eq!(config.timeout, Duration::from_secs(3));
    assert_eq!(config.attempts, 5);
    assert!(config.rotate);

    let config = ResolverConfig::from_resolv_conf(b"garbage\n\xff\xfe\nnameserver\n");
    assert_eq!(config, ResolverConfig::default());
    assert_eq!(config.nameservers, [addr("127.0.0.1:53")]);
    assert_eq!(
        (config.timeout, config.attempts, config.rotate),
        (Duration::from_secs(5), 2, false)
    );
}

#[test]
fn mx_by_preference_equal_ones_shuffled() {
    let records = mx_zone();
    let mut orders = std::collections::HashSet::new();
    for seed in 0..32 {
        let r = resolver(&[NS1], seed);
        let (answer, _) = run(
            r.lookup(Instant::now(), Query::Mx("MX.test.".into())),
            Instant::now(),
            zone(&records),
        );
        let dests = answer.unwrap();
        assert_eq!(dests[0], dest("c.mx.test", 5, &["2001:db8::12"]));
        assert_eq!(dests.len(), 3);
        let mut rest = dests[1..].to_vec();
        orders.insert(rest[0].host.clone());
        rest.sort_by(|x, y| x.host.cmp(&y.host));
        assert_eq!(
            rest,
            [
                dest("a.mx.test", 10, &["192.0.2.10", "2001:db8::10"]),
                dest("b.mx.test", 10, &["192.0.2.11"])
            ]
        );
    }
    assert_eq!(orders.len(), 2, "both orders of the equal preferences");
}

#[test]
fn same_seed_same_lookup() {
    let records = mx_zone();
    let go = || {
        let r = resolver(&[NS1], 7);
        let t = Instant::now();
        run(r.lookup(t, Query::Mx("mx.test".into())), t, zone(&records))
    };
    assert_eq!(go(), go());
}

#[test]
fn glue_saves_queries() {
    let (answer, sent) = run(
        resolver(&[NS1], 1).lookup(Instant::now(), Query::Mx("g.test".into())),
        Instant::now(),
        |t, q| {
            assert_eq!(q.queries[0].query_type, RecordType::MX, "{t:?}");
            let glue = vec![
                a("mail.g.test.", "192.0.2.1"),
                a("other.test.", "192.0.2.99"),
            ];
            Some(respond(
                q,
                ResponseCode::NoError,
                vec![mx("g.test.", 1, "mail.g.test.")],
                glue,
            ))
        },
    );
    assert_eq!(answer, Ok(vec![dest("mail.g.test", 1, &["192.0.2.1"])]));
    assert_eq!(sent.len(), 1);
}

#[test]
fn failing_mx_host_dropped_unless_alone() {
    let mut records = vec![
        mx("two.test.", 10, "gone.test."),
        mx("two.test.", 20, "ok.test."),
        a("ok.test.", "192.0.2.5"),
    ];
    let t = Instant::now();
    let (answer, _) = run(
        resolver(&[NS1], 1).lookup(t, Query::Mx("two.test".into())),
        t,
        zone(&records),
    );
    assert_eq!(answer, Ok(vec![dest("ok.test", 20, &["192.0.2.5"])]));

    records.truncate(1);
    let (answer, _) = run(
        resolver(&[NS1], 1).lookup(t, Query::Mx("two.test".into())),
        t,
        zone(&records),
    );
    assert_eq!(answer, Err(Error::NotFound));

    let mut z = zone(&records);
    let servfail_hosts = |tr: &Transmit, q: &Message| match q.queries[0].query_type {
        RecordType::MX => z(tr, q),
        _ => Some(respond(q, ResponseCode::ServFail, vec![], vec![])),
    };
    let (answer, _) = run(
        resolver(&[NS1], 1).lookup(t, Query::Mx("two.test".into())),
        t,
        servfail_hosts,
    );
    assert!(matches!(answer, Err(Error::Temporary(why)) if why.contains("gone.test")));
}

#[test]
fn no_mx_falls_back_to_the_domain() {
    let records = [
        a("plain.test.", "192.0.2.7"),
        aaaa("plain.test.", "2001:db8::7"),
    ];
    let t = Instant::now();
    let (answer, sent) = run(
        resolver(&[NS1], 1).lookup(t, Query::Mx("plain.test".into())),
        t,
        zone(&records),
    );
    assert_eq!(
        answer,
        Ok(vec![dest("plain.test", 0, &["192.0.2.7", "2001:db8::7"])])
    );
    assert_eq!(sent.len(), 3);

    let records = [soa("empty.test.", 60)];
    let (answer, _) = run(
        resolver(&[NS1], 1).lookup(t, Query::Mx("empty.test".into())),
        t,
        zone(&records),
    );
    assert_eq!(answer, Err(Error::NotFound));
}

#[test]
fn null_mx_and_nxdomain() {
    let records = [mx("null.test.", 0, "."), a("null.test.", "192.0.2.1")];
    let t = Instant::now();
    let (answer, _) = run(
        resolver(&[NS1], 1).lookup(t, Query::Mx("null.test".into())),
        t,
        zone(&records),
    );
    assert_eq!(answer, Err(Error::NullMx));
    let (answer, _) = run(
        resolver(&[NS1], 1).lookup(t, Query::Mx("nowhere.test".into())),
        t,
        zone(&records),
    );
    assert_eq!(answer, Err(Error::NotFound));
    let (answer, sent) = run(
        resolver(&[NS1], 1).lookup(t, Query::Host("".into())),
        t,
        zone(&records),
    );
    assert_eq!((answer, sent.len()), (Err(Error::NotFound), 0));
}

#[test]
fn servfail_tries_every_server_every_attempt() {
    let t = Instant::now();
    let servfail =
        |_: &Transmit, q: &Message| Some(respond(q, ResponseCode::ServFail, vec![], vec![]));
    let (answer, sent) = run(
        resolver(&[NS1, NS2], 1).lookup(t, Query::Mx("x.test".into())),
        t,
        servfail,
    );
    assert!(matches!(answer, Err(Error::Temporary(_))));
    let servers: Vec<_> = sent.iter().map(|t| t.server).collect();
    assert_eq!(servers, [addr(NS1), addr(NS2), addr(NS1), addr(NS2)]);
    let mut ids: Vec<_> = sent.iter().map(|t| question(t).metadata.id).collect();
    ids.dedup();
    assert_eq!(ids.len(), 4, "a fresh id each try");

    let mut config = resolver(&[NS1, NS2], 1).config().clone();
    config.rotate = true;
    let r = Resolver::new(config, 1);
    let firsts: Vec<_> = (0..3)
        .map(|_| {
            r.lookup(t, Query::Mx("x.test".into()))
                .poll_transmit()
                .unwrap()
                .server
        })
        .collect();
    assert_eq!(firsts, [addr(NS1), addr(NS2), addr(NS1)]);
}

#[test]
fn timeouts_then_temporary() {
    let t = Instant::now();
    let r = resolver(&[NS1, NS2], 1);
    let mut lookup = r.lookup(t, Query::Host("slow.test".into()));
    let mut now = t;
    let mut rounds = 0;
    while lookup.poll_transmit().is_some() {
        while lookup.poll_transmit().is_some() {}
        now = lookup.poll_timeout().unwrap();
        lookup.handle_timeout(now);
        rounds += 1;
    }
    assert_eq!(rounds, 4);
    assert_eq!(now, t + Duration::from_secs(4));
    assert!(
        matches!(lookup.result(), Some(Err(Error::Temporary(why))) if why.contains("timed out"))
    );
    assert_eq!(lookup.poll_timeout(), None);
}

#[test]
fn cname_chains() {
    let records = [
        cname("alias.test.", "mid.test."),
        cname("mid.test.", "real.test."),
        a("real.test.", "192.0.2.3"),
        cname("loop1.test.", "loop2.test."),
        cname("loop2.test.", "loop1.test."),
    ];
    let t = Instant::now();
    let (answer, _) = run(
        resolver(&[NS1], 1).lookup(t, Query::Host("alias.test".into())),
        t,
        zone(&records),
    );
    assert_eq!(answer, Ok(vec![dest("alias.test", 0, &["192.0.2.3"])]));
    let (answer, _) = run(
        resolver(&[NS1], 1).lookup(t, Query::Host("loop1.test".into())),
        t,
        zone(&records),
    );
    assert!(matches!(answer, Err(Error::Temporary(why)) if why.contains("CNAME")));

    // A server that gives only the first link: the lookup asks for the rest.
    let mut asked = Vec::new();
    let partial = |_: &Transmit, q: &Message| {
        let qn = &q.queries[0].name;
        asked.push(qn.to_ascii());
        let answers = records
            .iter()
            .filter(|r| r.name == *qn)
            .take(1)
            .cloned()
            .collect();
        Some(respond(q, ResponseCode::NoError, answers, vec![]))
    };
    let (answer, _) = run(
        resolver(&[NS1], 1).lookup(t, Query::Host("alias.test".into())),
        t,
        partial,
    );
    assert_eq!(answer, Ok(vec![dest("alias.test", 0, &["192.0.2.3"])]));
    assert!(asked.contains(&"real.test.".to_string()), "{asked:?}");
}

#[test]
fn truncated_goes_tcp_to_the_same_server() {
    let t = Instant::now();
    let r = resolver(&[NS1, NS2], 1);
    let mut lookup = r.lookup(t, Query::Mx("big.test".into()));
    let udp = lookup.poll_transmit().unwrap();
    assert!(!udp.tcp);
    let q = question(&udp);
    let mut m = Message::from_vec(&respond(&q, ResponseCode::NoError, vec![], vec![])).unwrap();
    m.metadata.truncation = true;
    lookup.handle_response(t, udp.server, false, &m.to_vec().unwrap());
    let tcp = lookup.poll_transmit().unwrap();
    assert!(tcp.tcp);
    assert_eq!(tcp.server, udp.server);
    assert_eq!(
        usize::from(u16::from_be_bytes([tcp.bytes[0], tcp.bytes[1]])),
        tcp.bytes.len() - 2
    );
    let q = question(&tcp);
    let answer = respond(
        &q,
        ResponseCode::NoError,
        vec![mx("big.test.", 1, "h.test.")],
        vec![a("h.test.", "192.0.2.8")],
    );
    // The same answer by UDP is no longer awaited.
    lookup.handle_response(t, udp.server, false, &answer);
    assert!(lookup.result().is_none());
    lookup.handle_response(t, tcp.server, true, &answer);
    assert_eq!(
        lookup.result(),
        Some(Ok(vec![dest("h.test", 1, &["192.0.2.8"])]))
    );
}

#[test]
fn spoofed_answers_ignored() {
    let t = Instant::now();
    let r = resolver(&[NS1], 1);
    let mut lookup = r.lookup(t, Query::Host("h.test".into()));
    let ta = lookup.poll_transmit().unwrap();
    let taaaa = lookup.poll_transmit().unwrap();
    let qa = question(&ta);
    let good = respond(
        &qa,
        ResponseCode::NoError,
        vec![a("h.test.", "192.0.2.1")],
        vec![],
    );
    let mut wrong_id = Message::from_vec(&good).unwrap();
    wrong_id.metadata.id ^= 1;
    let mut wrong_q = Message::from_vec(&good).unwrap();
    wrong_q.queries[0].name = name("evil.test.");
    let mut wrong_type = Message::from_vec(&good).unwrap();
    wrong_type.queries[0].query_type = RecordType::AAAA;
    for bytes in [wrong_id, wrong_q, wrong_type].map(|m| m.to_vec().unwrap()) {
        lookup.handle_response(t, ta.server, false, &bytes);
    }
    lookup.handle_response(t, addr("192.0.2.66:53"), false, &good);
    lookup.handle_response(t, ta.server, true, &good);
    assert!(lookup.hosts[0].addrs.is_empty());
    assert!(lookup.poll_transmit().is_none(), "nothing made it retry");
    lookup.handle_response(t, ta.server, false, &good);
    // A damaged answer with the right id and server is a failed try.
    let damaged = [&question(&taaaa).metadata.id.to_be_bytes()[..], &[0x80]].concat();
    lookup.handle_response(t, taaaa.server, false, &damaged);
    let again = lookup.poll_transmit().expect("the AAAA question again");
    let q = question(&again);
    lookup.handle_response(
        t,
        again.server,
        false,
        &respond(&q, ResponseCode::NoError, vec![], vec![]),
    );
    assert_eq!(
        lookup.result(),
        Some(Ok(vec![dest("h.test", 0, &["192.0.2.1"])]))
    );
}

#[test]
fn cache_positive_negative_and_expiry() {
    let records = mx_zone();
    let t = Instant::now();
    let r = resolver(&[NS1], 1);
    let (first, _) = run(r.lookup(t, Query::Mx("mx.test".into())), t, zone(&records));
    // Kept for the smallest TTL: 60 s, the SOA minimum of a NODATA answer.
    let (again, sent) = run(
        r.lookup(t + Duration::from_secs(59), Query::Mx("MX.TEST.".into())),
        t,
        zone(&records),
    );
    assert_eq!(sent.len(), 0);
    assert_eq!(first.unwrap().len(), again.unwrap().len());
    let (_, sent) = run(
        r.lookup(t + Duration::from_secs(60), Query::Mx("mx.test".into())),
        t,
        zone(&records),
    );
    assert!(!sent.is_empty(), "expired with the TTL");

    // NXDOMAIN: the SOA minimum (60 s).
    let (_, sent) = run(r.lookup(t, Query::Mx("nx.test".into())), t, zone(&records));
    assert_eq!(sent.len(), 1);
    let (answer, sent) = run(
        r.lookup(t + Duration::from_secs(59), Query::Mx("nx.test".into())),
        t,
        zone(&records),
    );
    assert_eq!((answer, sent.len()), (Err(Error::NotFound), 0));
    let (_, sent) = run(
        r.lookup(t + Duration::from_secs(60), Query::Mx("nx.test".into())),
        t,
        zone(&records),
    );
    assert_eq!(sent.len(), 1);

    // Temporary failures are not kept.
    let servfail =
        |_: &Transmit, q: &Message| Some(respond(q, ResponseCode::ServFail, vec![], vec![]));
    let (_, sent) = run(r.lookup(t, Query::Mx("sf.test".into())), t, servfail);
    let (_, again) = run(r.lookup(t, Query::Mx("sf.test".into())), t, servfail);
    assert_eq!(sent.len(), again.len());
}

#[test]
fn cache_bounded() {
    let mut c = cache::Cache::default();
    let t = Instant::now();
    for i in 0..cache::CAPACITY + 10 {
        c.insert(t, Query::Host(format!("h{i}")), Err(Error::NotFound), 100);
    }
    assert_eq!(c.len(), cache::CAPACITY);
    assert!(
        c.get(t, &Query::Host("h0".into())).is_none(),
        "the oldest went"
    );
    assert!(c
        .get(t, &Query::Host(format!("h{}", cache::CAPACITY + 9)))
        .is_some());
}

#[test]
fn many_hosts_and_addresses_bounded() {
    let t = Instant::now();
    let (answer, _) = run(
        resolver(&[NS1], 1).lookup(t, Query::Mx("many.test".into())),
        t,
        |_, q| {
            let qn = q.queries[0].name.clone();
            let answers = match q.queries[0].query_type {
                RecordType::MX => (0..40)
                    .map(|i| mx("many.test.", i, &format!("h{i}.test.")))
                    .collect(),
                _ => (0..100u32)
                    .map(|i| rec(&qn.to_ascii(), 60, RData::A(A(std::net::Ipv4Addr::from(i)))))
                    .collect(),
            };
            Some(respond(q, ResponseCode::NoError, answers, vec![]))
        },
    );
    let dests = answer.unwrap();
    assert_eq!(dests.len(), MAX_HOSTS);
    assert!(dests.iter().all(|d| d.addrs.len() == MAX_ADDRS));
}

#[test]
fn tcp_framing() {
    assert_eq!(tcp_message(b""), None);
    assert_eq!(tcp_message(b"\x00"), None);
    assert_eq!(tcp_message(b"\x00\x03ab"), None);
    assert_eq!(tcp_message(b"\x00\x03abcd"), Some(&b"abc"[..]));
}

proptest! {
    /// Any bytes from the server, as an answer to the first question (its
    /// id and question kept, the rest arbitrary): no panic, the state stays
    /// bounded, and the lookup still finishes.
    #[test]
    fn arbitrary_answers(tails in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 1..8), flags in any::<u16>(), counts in any::<[u8; 6]>()) {
        let t = Instant::now();
        let r = resolver(&[NS1, NS2], 3);
        let mut lookup = r.lookup(t, Query::Mx("fuzz.test".into()));
        let mut now = t;
        for tail in &tails {
            let Some(tr) = lookup.poll_transmit() else { break };
            let mut bytes = tr.bytes[if tr.tcp { 2 } else { 0 }..].to_vec();
            bytes[2..4].copy_from_slice(&(flags | 0x8000).to_be_bytes());
            bytes[6..12].copy_from_slice(&counts);
            bytes.extend_from_slice(tail);
            lookup.handle_response(now, tr.server, tr.tcp, &bytes);
            prop_assert!(lookup.exchanges.len() <= 1 + 2 * MAX_HOSTS);
            prop_assert!(lookup.hosts.len() <= MAX_HOSTS);
            prop_assert!(lookup.hosts.iter().all(|h| h.addrs.len() <= MAX_ADDRS));
        }
        for _ in 0..200 {
            if lookup.result().is_some() {
                return Ok(());
            }
            while lookup.poll_transmit().is_some() {}
            now = lookup.poll_timeout().unwrap();
            lookup.handle_timeout(now);
        }
        prop_assert!(false, "did not finish");
    }
}

#[test]
fn lookups_are_send() {
    fn send<T: Send + Sync>() {}
    send::<Resolver>();
    send::<Lookup>();
}
