//! The queue's envelope formats: qmail-queue's fd 1 stream and the
//! `intd/`/`todo/` file.
//!
//! Invariants: no panic; an envelope read from fd 1 writes back to bytes
//! that read as the same envelope (and are a prefix of the input); a
//! valid envelope survives the `intd` file round trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sqmail_queue::envelope::{Envelope, QueueEnvelope};

fuzz_target!(|data: &[u8]| {
    let _ = QueueEnvelope::parse(data);
    let Ok(env) = Envelope::parse(data) else {
        return;
    };
    let bytes = env.to_qq_bytes();
    assert!(data.starts_with(&bytes), "fd 1 bytes are not what was read");
    assert_eq!(Envelope::parse(&bytes).as_ref(), Ok(&env));
    if env.validate().is_ok() {
        let intd = env.to_intd_bytes(7, 42);
        let back = QueueEnvelope::parse(&intd).expect("intd parses");
        assert_eq!((back.uid, back.pid), (7, 42));
        assert_eq!(back.envelope, env);
    }
});
