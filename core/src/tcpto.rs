//! qmail-remote's memory of unreachable hosts (`lock/tcpto`), as bytes.
//!
//! qmail 1.03 keeps 64 records of 16 bytes: the IPv4 address (0..4), the
//! count of recent connection timeouts (4, at most 10) and the time of the
//! last one (8.., little endian). A host with at least two timeouts is
//! skipped for about an hour after the last (`(60 + (pid & 31)) << 6`
//! seconds, so a crowd of deliveries does not retry it all at once); then
//! one delivery tries it again, and another timeout pushes it back by the
//! same amount: qmail's slow start. A connection that succeeds clears the
//! count. Timeouts less than two minutes after the last counted one do not
//! count, so one burst of parallel deliveries to a dead host is one failure.
//!
//! IPv6 hosts use the same rules in `lock/tcpto6`, whose records are 32
//! bytes: the address (0..16), the count (16) and the time (24..32), so
//! qmail's own `qmail-tcpto` still reads `lock/tcpto` unchanged.

use std::net::IpAddr;

/// Records a table holds.
pub const RECORDS: usize = 64;
/// A timeout count never grows past this.
pub const MAX_ERRORS: u8 = 10;
/// Timeouts closer together than this count once.
const MIN_GAP: u64 = 120;

/// Which file a table lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The file below `lock/`.
    pub fn file(self) -> &'static str {
        match self {
            Family::V4 => "tcpto",
            Family::V6 => "tcpto6",
        }
    }

    fn addr_len(self) -> usize {
        match self {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }

    fn record_len(self) -> usize {
        match self {
            Family::V4 => 16,
            Family::V6 => 32,
        }
    }

    fn errors_at(self) -> usize {
        self.addr_len()
    }

    fn when_at(self) -> usize {
        match self {
            Family::V4 => 8,
            Family::V6 => 24,
        }
    }
}

/// One host's entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub ip: IpAddr,
    pub errors: u8,
    /// Unix time of the last counted timeout.
    pub when: u64,
}

/// The records of one file, as read; [`Table::bytes`] writes them back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    family: Family,
    entries: Vec<Entry>,
}

impl Table {
    /// Reads a file's bytes; a short last record and bytes past the 64th
    /// record are ignored, as qmail does.
    pub fn parse(family: Family, bytes: &[u8]) -> Table {
        let entries = bytes
            .chunks_exact(family.record_len())
            .take(RECORDS)
            .map(|r| Entry {
                ip: match family {
                    Family::V4 => IpAddr::from(<[u8; 4]>::try_from(&r[..4]).unwrap_or_default()),
                    Family::V6 => IpAddr::from(<[u8; 16]>::try_from(&r[..16]).unwrap_or_default()),
                },
                errors: r[family.errors_at()],
                when: u64::from_le_bytes(
                    r[family.when_at()..family.when_at() + 8]
                        .try_into()
                        .unwrap_or_default(),
                ),
            })
            .collect();
        Table { family, entries }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let f = self.family;
        let mut out = vec![0u8; self.entries.len() * f.record_len()];
        for (e, r) in self
            .entries
            .iter()
            .zip(out.chunks_exact_mut(f.record_len()))
        {
            match e.ip {
                IpAddr::V4(ip) => r[..4].copy_from_slice(&ip.octets()),
                IpAddr::V6(ip) => r[..16].copy_from_slice(&ip.octets()),
            }
            r[f.errors_at()] = e.errors;
            r[f.when_at()..f.when_at() + 8].copy_from_slice(&e.when.to_le_bytes());
        }
        out
    }

    /// Entries with timeouts counted, for `qmail-tcpto`'s listing.
    pub fn timed_out(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.errors > 0)
    }

    /// Whether to leave `ip` alone now; `jitter` is qmail's `pid & 31`.
    pub fn skip(&self, ip: IpAddr, now: u64, jitter: u8) -> bool {
        let hold = (60 + u64::from(jitter & 31)) << 6;
        self.entries
            .iter()
            .find(|e| e.ip == ip)
            .is_some_and(|e| e.errors >= 2 && now.saturating_sub(e.when) < hold)
    }

    /// Records a connection attempt: a timeout counts, a connection
    /// clears. Returns whether anything changed (so the file needs writing).
    pub fn record(&mut self, ip: IpAddr, now: u64, timed_out: bool) -> bool {
        if let Some(e) = self.entries.iter_mut().find(|e| e.ip == ip) {
            return match timed_out {
                false if e.errors == 0 => false,
                false => {
                    e.errors = 0;
                    true
                }
                true if now.saturating_sub(e.when) < MIN_GAP => false,
                true => {
                    e.errors = (e.errors + 1).min(MAX_ERRORS);
                    e.when = now;
                    true
                }
            };
        }
        if !timed_out {
            return false;
        }
        let entry = Entry {
            ip,
            errors: 1,
            when: now,
        };
        match self.entries.iter().position(|e| e.errors == 0) {
            Some(free) => self.entries[free] = entry,
            None if self.entries.len() < RECORDS => self.entries.push(entry),
            None => {
                let oldest = (0..self.entries.len())
                    .min_by_key(|&i| self.entries[i].when)
                    .unwrap_or(0);
                self.entries[oldest] = entry;
            }
        }
        true
    }

    /// `qmail-tcpok`: every count cleared.
    pub fn clear(&mut self) {
        for e in &mut self.entries {
            e.errors = 0;
        }
    }
}

/// `qmail-tcpto`'s line for one entry.
pub fn describe(e: &Entry, now: u64) -> String {
    format!(
        "{} timed out {} seconds ago; # recent timeouts: {}",
        e.ip,
        now.saturating_sub(e.when),
        e.errors
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn two_timeouts_hold_a_host_for_about_an_hour() {
        let mut t = Table::parse(Family::V4, b"");
        let a = ip("192.0.2.1");
        assert!(t.record(a, 1000, true));
        assert!(!t.skip(a, 1001, 0), "one timeout is not enough");
        // Timeouts within two minutes of the last count once.
        assert!(!t.record(a, 1050, true));
        assert!(!t.skip(a, 1050, 0));
        assert!(t.record(a, 1010 + MIN_GAP - 10, true));
        let a2 = 1010 + MIN_GAP - 10;
        assert!(t.skip(a, a2 + 3839, 0));
        assert!(!t.skip(a, a2 + 3840, 0), "held for (60 + 0) << 6 s");
        assert!(t.skip(a, a2 + 5000, 31), "up to (60 + 31) << 6 s");
        assert_eq!(t.timed_out().next().unwrap().errors, 2);
        // Slow start: the retry after the hold times out again.
        assert!(t.record(a, a2 + 3840, true));
        assert!(t.skip(a, a2 + 3841, 0));
        // A connection clears it.
        assert!(t.record(a, 9000, false));
        assert!(!t.skip(a, 9000, 0));
        assert!(!t.record(a, 9001, false));
        assert_eq!(t.timed_out().count(), 0);
    }

    #[test]
    fn counts_stop_at_ten() {
        let mut t = Table::parse(Family::V4, b"");
        let a = ip("192.0.2.1");
        for i in 0..20 {
            t.record(a, i * 1000, true);
        }
        assert_eq!(t.timed_out().next().unwrap().errors, MAX_ERRORS);
    }

    #[test]
    fn qmail_layout_round_trips() {
        let mut t = Table::parse(Family::V4, b"");
        t.record(ip("10.1.2.3"), 0x0102_0304, true);
        let b = t.bytes();
        assert_eq!(b.len(), 16);
        assert_eq!(&b[..5], &[10, 1, 2, 3, 1]);
        assert_eq!(&b[8..12], &[4, 3, 2, 1]);
        assert_eq!(Table::parse(Family::V4, &b), t);
        assert_eq!(
            describe(t.timed_out().next().unwrap(), 0x0102_0304 + 7),
            "10.1.2.3 timed out 7 seconds ago; # recent timeouts: 1"
        );

        let mut t6 = Table::parse(Family::V6, b"");
        t6.record(ip("2001:db8::1"), 77, true);
        let b6 = t6.bytes();
        assert_eq!((b6.len(), b6[16], b6[24]), (32, 1, 77));
        assert_eq!(Table::parse(Family::V6, &b6), t6);
    }

    #[test]
    fn a_full_table_replaces_the_oldest_record() {
        let mut t = Table::parse(Family::V4, b"");
        for i in 0..RECORDS as u8 {
            t.record(IpAddr::from([10, 0, 0, i]), 100 + u64::from(i), true);
        }
        t.record(ip("10.0.1.0"), 5000, true);
        assert_eq!(t.timed_out().count(), RECORDS);
        assert!(t.timed_out().all(|e| e.ip != ip("10.0.0.0")));
        // A cleared record is reused first.
        t.record(ip("10.0.0.5"), 6000, false);
        t.record(ip("10.0.2.0"), 7000, true);
        assert_eq!(t.bytes().len(), RECORDS * 16);
        assert!(t.timed_out().any(|e| e.ip == ip("10.0.2.0")));
        t.clear();
        assert_eq!(t.timed_out().count(), 0);
    }

    #[test]
    fn odd_files_parse() {
        let t = Table::parse(Family::V4, &[7u8; 16 * 70 + 5]);
        assert_eq!(t.bytes().len(), RECORDS * 16);
        assert!(Table::parse(Family::V6, &[1u8; 31]).bytes().is_empty());
    }
}
