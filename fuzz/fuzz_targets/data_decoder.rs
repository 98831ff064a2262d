//! `data::BodyDecoder`: the DATA phase, the place SMTP smuggling lives.
//!
//! Input: two bytes choose the limit and a split point; the rest is what
//! follows `354`. Invariants: no panic; any split of the input gives the
//! same output, ending and byte count; the output never holds a CR; the
//! output never exceeds the limit; the decoder never ends a message
//! anywhere but after `CRLF . CRLF` (or `. CRLF` at the very start).

#![no_main]

use libfuzzer_sys::fuzz_target;
use sqmail_core::smtp::data::{BodyDecoder, Decoded};

fn decode(limit: u64, parts: &[&[u8]]) -> (Vec<u8>, usize, Decoded, Option<String>) {
    let mut d = BodyDecoder::new(limit, 3);
    let mut out = Vec::new();
    let mut used = 0;
    let mut how = Decoded::NeedMore;
    for part in parts {
        let (n, h) = d.decode(part, &mut out);
        assert!(n <= part.len());
        used += n;
        how = h;
        if h != Decoded::NeedMore {
            break;
        }
        assert_eq!(n, part.len(), "NeedMore must use all input");
    }
    (out, used, how, d.failure().map(|f| format!("{f:?}")))
}

fuzz_target!(|data: &[u8]| {
    let [limit, cut, input @ ..] = data else {
        return;
    };
    let limit = [0u64, 1, 16, 256][usize::from(limit & 3)];
    let cut = usize::from(*cut).min(input.len());
    let whole = decode(limit, &[input]);
    let split = decode(limit, &[&input[..cut], &input[cut..]]);
    assert_eq!(whole, split, "split at {cut} changed the result");
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(
        whole,
        decode(limit, &bytes),
        "one byte at a time changed the result"
    );
    let (out, used, how, _) = whole;
    assert!(!out.contains(&b'\r'), "a CR was stored");
    if limit > 0 {
        assert!(out.len() as u64 <= limit, "stored past the limit");
    }
    if how == Decoded::End {
        let consumed = &input[..used];
        assert!(
            consumed.ends_with(b"\r\n.\r\n") || consumed == b".\r\n",
            "ended at {:?}",
            String::from_utf8_lossy(&consumed[consumed.len().saturating_sub(6)..])
        );
    }
});
