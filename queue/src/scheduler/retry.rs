//! qmail-send's retry schedule, in one function.
//!
//! A message is retried on a per-message quadratic schedule measured from its
//! birth: `birth + (isqrt(now - birth) + chanskip)^2`. The square root makes
//! the gaps grow linearly (local: 100, 400, 900 … s after birth; remote: 400,
//! 1600, 3600 …), so a message is tried about as often in its first hour as in
//! its last day, whatever its age when the host restarts.

use super::Channel;

/// qmail's `chanskip`: how many "square-root seconds" a channel waits.
pub const fn chanskip(channel: Channel) -> u64 {
    match channel {
        Channel::Local => 10,
        Channel::Remote => 20,
    }
}

/// The floor of the square root of `x`.
pub fn isqrt(x: u64) -> u64 {
    if x < 2 {
        return x;
    }
    // Newton's method from an overestimate; monotone decreasing to the floor.
    let mut r = 1u64 << (64 - x.leading_zeros()).div_ceil(2);
    loop {
        let next = (r + x / r) / 2;
        if next >= r {
            return r;
        }
        r = next;
    }
}

/// When a message born at `birth` is next tried on `channel`, having just
/// been tried (or found) at `now`. A birth in the future counts as age 0.
pub fn next_retry(birth: u64, now: u64, channel: Channel) -> u64 {
    let n = isqrt(now.saturating_sub(birth)) + chanskip(channel);
    birth.saturating_add(n.saturating_mul(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isqrt_is_the_floor() {
        for x in 0..10_000u64 {
            let r = isqrt(x);
            assert!(r * r <= x && (r + 1) * (r + 1) > x, "{x}");
        }
        assert_eq!(isqrt(u64::MAX), u32::MAX as u64);
    }

    /// The numbers qmail's `nextretry` gives (spec section 6).
    #[test]
    fn schedule_matches_qmail() {
        let b = 1_000_000;
        let mut t = b;
        let mut local = vec![];
        for _ in 0..5 {
            t = next_retry(b, t, Channel::Local);
            local.push(t - b);
        }
        assert_eq!(local, [100, 400, 900, 1600, 2500]);
        let mut t = b;
        let mut remote = vec![];
        for _ in 0..5 {
            t = next_retry(b, t, Channel::Remote);
            remote.push(t - b);
        }
        assert_eq!(remote, [400, 1600, 3600, 6400, 10000]);
        // Tried late (e.g. after downtime): isqrt(5000) = 70, so (70+20)^2.
        assert_eq!(next_retry(b, b + 5000, Channel::Remote) - b, 8100);
        // One week: isqrt(604800) = 777, so the last local gap is about 4.4 h.
        assert_eq!(next_retry(b, b + 604_800, Channel::Local) - b, 787 * 787);
        // Birth in the future (clock stepped back) counts as age 0.
        assert_eq!(next_retry(b, b - 10, Channel::Local), b + 100);
    }
}
