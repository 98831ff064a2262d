//! Questions out, answers in: the wire format on `hickory-proto`, and what
//! an answer means for the question it answers.

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

/// CNAMEs followed for one question, across re-asks; more is taken for a
/// loop.
pub(super) const MAX_CNAMES: u8 = 8;

/// A query for `name`'s `rtype` records, recursion desired and without
/// EDNS (so answers over 512 bytes come truncated and go to TCP). Encoded
/// by hand: a decoded or validated [`Name`] always fits, so this cannot fail.
pub(super) fn question(id: u16, name: &Name, rtype: RecordType, tcp: bool) -> Vec<u8> {
    let mut msg = Vec::with_capacity(2 + 12 + name.len() + 2 + 4);
    if tcp {
        msg.extend_from_slice(&[0, 0]);
    }
    msg.extend_from_slice(&id.to_be_bytes());
    // RD; one question, no other records.
    msg.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.iter() {
        msg.push(label.len() as u8);
        msg.extend_from_slice(label);
    }
    msg.push(0);
    msg.extend_from_slice(&u16::from(rtype).to_be_bytes());
    msg.extend_from_slice(&u16::from(DNSClass::IN).to_be_bytes());
    if tcp {
        let len = (msg.len() - 2) as u16;
        msg[..2].copy_from_slice(&len.to_be_bytes());
    }
    msg
}

/// The id of a message too damaged to parse, to tell a broken answer to
/// our question from noise.
pub(super) fn id_of(bytes: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
}

/// Whether `msg` is the answer to our question (a spoofer must also guess
/// the id and be the server).
pub(super) fn answers(msg: &Message, id: u16, name: &Name, rtype: RecordType) -> bool {
    let meta = &msg.metadata;
    meta.id == id
        && meta.message_type == MessageType::Response
        && matches!(&msg.queries[..], [q] if q.name == *name
            && q.query_type == rtype
            && q.query_class == DNSClass::IN)
}

/// What an answer means for its question.
#[derive(Debug)]
pub(super) enum Reply {
    Final(Outcome),
    /// Too long for UDP: ask the same server over TCP.
    Truncated,
    /// This server could not answer; the next may.
    Retry(String),
    /// A CNAME chain that stops before the records: ask for its end.
    Alias {
        name: Name,
        hops: u8,
        ttl: u32,
    },
}

#[derive(Debug)]
pub(super) enum Outcome {
    /// The records of the asked type at the end of the CNAME chain, the
    /// additional section (glue) and the smallest TTL along the chain.
    Records {
        data: Vec<RData>,
        glue: Vec<Record>,
        ttl: u32,
    },
    /// No such name (NXDOMAIN) or no such records (NODATA), with the
    /// negative TTL.
    Empty { nxdomain: bool, ttl: u32 },
    /// No server could answer: a temporary failure.
    Failed(String),
}

/// Classifies the answer to `name`/`rtype`, `hops` CNAMEs into the chain.
pub(super) fn classify(msg: Message, name: &Name, rtype: RecordType, hops: u8, tcp: bool) -> Reply {
    if msg.metadata.truncation && !tcp {
        return Reply::Truncated;
    }
    match msg.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => {
            let ttl = negative_ttl(&msg);
            return Reply::Final(Outcome::Empty {
                nxdomain: true,
                ttl,
            });
        }
        code => return Reply::Retry(format!("{code}")),
    }
    let mut at = name.clone();
    let mut hops = hops;
    let mut ttl = u32::MAX;
    loop {
        let records: Vec<&Record> = msg
            .answers
            .iter()
            .filter(|r| r.name == at && r.record_type() == rtype)
            .collect();
        if !records.is_empty() {
            let ttl = records.iter().map(|r| r.ttl).fold(ttl, u32::min);
            let data = records.into_iter().map(|r| r.data.clone()).collect();
            let glue = msg.additionals;
            return Reply::Final(Outcome::Records { data, glue, ttl });
        }
        let cname = msg.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if r.name == at => Some((&target.0, r.ttl)),
            _ => None,
        });
        let Some((target, cname_ttl)) = cname else {
            break;
        };
        hops += 1;
        if hops > MAX_CNAMES {
            return Reply::Final(Outcome::Failed(format!("CNAME loop at {name}")));
        }
        at = target.clone();
        ttl = ttl.min(cname_ttl);
    }
    if at != *name {
        return Reply::Alias {
            name: at,
            hops,
            ttl,
        };
    }
    let ttl = negative_ttl(&msg);
    Reply::Final(Outcome::Empty {
        nxdomain: false,
        ttl,
    })
}

/// RFC 2308: the smaller of the SOA's TTL and its minimum; without a SOA,
/// nothing to keep.
fn negative_ttl(msg: &Message) -> u32 {
    msg.authorities
        .iter()
        .find_map(|r| match &r.data {
            RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
            _ => None,
        })
        .unwrap_or(0)
}
