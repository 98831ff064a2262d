//! Connection deadlines in order, so the loop finds the next one and the
//! expired ones without looking at every connection.

use std::collections::BTreeSet;
use std::time::Instant;

#[derive(Default)]
pub(crate) struct Timers {
    set: BTreeSet<(Instant, usize)>,
}

impl Timers {
    /// Moves connection `key`'s deadline from `old` to `new`.
    pub fn update(&mut self, key: usize, old: Option<Instant>, new: Option<Instant>) {
        if old == new {
            return;
        }
        if let Some(at) = old {
            self.set.remove(&(at, key));
        }
        if let Some(at) = new {
            self.set.insert((at, key));
        }
    }

    pub fn next(&self) -> Option<Instant> {
        self.set.first().map(|&(at, _)| at)
    }

    /// Removes and returns one connection whose deadline has passed.
    pub fn pop_expired(&mut self, now: Instant) -> Option<usize> {
        match self.set.first() {
            Some(&(at, _)) if at <= now => self.set.pop_first().map(|(_, key)| key),
            _ => None,
        }
    }
}
