//! Answers kept for their TTL, in a bounded table.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{Answer, Query};

/// Entries kept; a full table drops the expired ones, then the oldest.
const MAX_ENTRIES: usize = 1024;
/// The longest an answer is kept, whatever its TTL says.
pub(super) const MAX_TTL: u32 = 86_400;

#[derive(Default)]
pub(super) struct Cache {
    entries: HashMap<Query, Entry>,
    /// Insertion counter: the smallest is the oldest entry.
    seq: u64,
}

struct Entry {
    expires: Instant,
    seq: u64,
    answer: Answer,
}

impl Cache {
    pub(super) fn get(&self, now: Instant, query: &Query) -> Option<Answer> {
        let entry = self.entries.get(query)?;
        (now < entry.expires).then(|| entry.answer.clone())
    }

    /// Keeps `answer` for `ttl` seconds (capped at [`MAX_TTL`]; 0 keeps
    /// nothing).
    pub(super) fn insert(&mut self, now: Instant, query: Query, answer: Answer, ttl: u32) {
        if ttl == 0 {
            return;
        }
        if self.entries.len() >= MAX_ENTRIES && !self.entries.contains_key(&query) {
            self.entries.retain(|_, e| e.expires > now);
            if self.entries.len() >= MAX_ENTRIES {
                let oldest = self.entries.iter().min_by_key(|(_, e)| e.seq);
                if let Some(key) = oldest.map(|(k, _)| k.clone()) {
                    self.entries.remove(&key);
                }
            }
        }
        self.seq += 1;
        let expires = now + Duration::from_secs(ttl.min(MAX_TTL).into());
        let entry = Entry {
            expires,
            seq: self.seq,
            answer,
        };
        self.entries.insert(query, entry);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
pub(super) const CAPACITY: usize = MAX_ENTRIES;
