//! Logging an event that can repeat without bound (a local user knocking on the tunnel's
//! port in a loop, a mount target that keeps going silent) once, then as a count.
//!
//! The first occurrence of each kind is logged at once; repeats are counted and logged
//! with their count at most once per interval. The number of kinds remembered is
//! bounded, so whoever causes the events cannot make the tunnel grow its memory.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a repeating event is logged again, with its count.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(300);
/// Kinds remembered at most; past that, new kinds are counted but not logged until the
/// stale ones age out.
const MAX_KINDS: usize = 64;

#[derive(Debug)]
pub struct RepeatLog<K> {
    kinds: Mutex<HashMap<K, Seen>>,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    last_logged: Instant,
    /// Occurrences since then.
    unlogged: u64,
}

impl<K: Eq + Hash> Default for RepeatLog<K> {
    fn default() -> Self {
        RepeatLog {
            kinds: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash> RepeatLog<K> {
    /// Records one occurrence of `kind`. `Some(n)`: log it now, saying that it happened
    /// `n` more times since it was last logged (0 the first time); `None`: stay quiet.
    pub fn occurred(&self, kind: K) -> Option<u64> {
        self.occurred_at(kind, Instant::now())
    }

    fn occurred_at(&self, kind: K, now: Instant) -> Option<u64> {
        let mut kinds = match self.kinds.lock() {
            Ok(k) => k,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(seen) = kinds.get_mut(&kind) {
            if now.saturating_duration_since(seen.last_logged) < REPEAT_INTERVAL {
                seen.unlogged += 1;
                return None;
            }
            let repeats = seen.unlogged;
            *seen = Seen {
                last_logged: now,
                unlogged: 0,
            };
            return Some(repeats);
        }
        if kinds.len() >= MAX_KINDS {
            kinds.retain(|_, s| now.saturating_duration_since(s.last_logged) < REPEAT_INTERVAL);
            if kinds.len() >= MAX_KINDS {
                return None;
            }
        }
        kinds.insert(
            kind,
            Seen {
                last_logged: now,
                unlogged: 0,
            },
        );
        Some(0)
    }
}

/// `" (N more times since last logged)"`, or nothing for a first occurrence.
pub fn repeats_suffix(repeats: u64) -> String {
    if repeats == 0 {
        String::new()
    } else {
        format!(" ({repeats} more times since last logged)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_logged_once_then_counted_then_logged_again_with_its_count() {
        let log = RepeatLog::default();
        let t0 = Instant::now();
        assert_eq!(log.occurred_at(65534u32, t0), Some(0));
        assert_eq!(log.occurred_at(1000u32, t0), Some(0), "another uid is news");
        for s in 1..=3 {
            assert_eq!(log.occurred_at(65534, t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(log.occurred_at(65534, t0 + REPEAT_INTERVAL), Some(3));
        assert_eq!(log.occurred_at(65534, t0 + REPEAT_INTERVAL), None);
        assert_eq!(repeats_suffix(0), "");
        assert_eq!(repeats_suffix(3), " (3 more times since last logged)");
    }

    #[test]
    fn it_remembers_a_bounded_number_of_kinds() {
        let log = RepeatLog::default();
        let t0 = Instant::now();
        for k in 0..MAX_KINDS as u32 {
            assert_eq!(log.occurred_at(k, t0), Some(0));
        }
        assert_eq!(
            log.occurred_at(9999, t0),
            None,
            "full: a new kind stays quiet"
        );
        assert_eq!(log.kinds.lock().unwrap().len(), MAX_KINDS);
        // Once the old kinds are stale, new ones are logged again.
        assert_eq!(log.occurred_at(9999, t0 + REPEAT_INTERVAL), Some(0));
    }
}
