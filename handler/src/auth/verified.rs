//! Tokens that passed every check, remembered until the time checks would
//! refuse them: a token sent again (a redelivery, or a sender that reuses its
//! token) costs a lookup instead of an RSA verification. A token counts only with the key set
//! that verified it: new keys (a rotation, a refresh) check it afresh.

use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::{DateTime, Utc};

/// Tokens kept at most, about a megabyte; only verified tokens get in, and a
/// full memory forgets the stale ones first.
const CAPACITY: usize = 1024;

/// The verified tokens, each with when it stops passing.
#[derive(Debug, Default)]
pub(crate) struct VerifiedTokens(RwLock<HashMap<Box<str>, Valid>>);

#[derive(Debug, Clone, Copy)]
struct Valid {
    /// The first instant the `exp` or `iat` check would fail.
    until: DateTime<Utc>,
    /// The key set that verified it.
    generation: u64,
}

impl Valid {
    fn holds(self, generation: u64, now: DateTime<Utc>) -> bool {
        self.generation == generation && now < self.until
    }
}

impl VerifiedTokens {
    /// Whether `token` was verified with the key set `generation` and still
    /// passes the time checks at `now`.
    pub(crate) fn hold(&self, token: &str, generation: u64, now: DateTime<Utc>) -> bool {
        self.read().get(token).is_some_and(|valid| valid.holds(generation, now))
    }

    /// Remembers a token the key set `generation` verified, until `until`.
    /// When full, tokens that no longer hold go first, then all of them.
    pub(crate) fn remember(&self, token: &str, generation: u64, until: DateTime<Utc>, now: DateTime<Utc>) {
        let mut tokens = self.write();
        if tokens.len() >= CAPACITY {
            tokens.retain(|_, valid| valid.holds(generation, now));
            if tokens.len() >= CAPACITY {
                tokens.clear();
            }
        }
        tokens.insert(token.into(), Valid { until, generation });
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<Box<str>, Valid>> {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<Box<str>, Valid>> {
        self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    #[test]
    fn a_token_holds_with_its_key_set_until_its_time_is_up() {
        let (tokens, now) = (VerifiedTokens::default(), Utc::now());
        let until = now + TimeDelta::minutes(5);
        assert!(!tokens.hold("a.b.c", 1, now), "nothing verified yet");
        tokens.remember("a.b.c", 1, until, now);
        assert!(tokens.hold("a.b.c", 1, now));
        assert!(tokens.hold("a.b.c", 1, until - TimeDelta::milliseconds(1)));
        assert!(!tokens.hold("a.b.c", 1, until), "the time checks fail from `until` on");
        assert!(!tokens.hold("a.b.c", 2, now), "new keys verify it afresh");
        assert!(!tokens.hold("a.b.x", 1, now), "only the exact token");
    }

    #[test]
    fn a_full_cache_drops_what_no_longer_holds_then_everything() {
        let (tokens, now) = (VerifiedTokens::default(), Utc::now());
        let later = now + TimeDelta::hours(1);
        for n in 0..CAPACITY - 1 {
            tokens.remember(&format!("stale-{n}"), 1, now + TimeDelta::seconds(1), now);
        }
        tokens.remember("kept", 1, later, now);
        tokens.remember("new", 1, later, now + TimeDelta::seconds(2));
        assert!(tokens.hold("kept", 1, now) && tokens.hold("new", 1, now));
        assert_eq!(tokens.read().len(), 2, "the expired ones went");

        for n in 0..CAPACITY {
            tokens.remember(&format!("valid-{n}"), 1, later, now);
        }
        assert!(tokens.read().len() <= CAPACITY, "never more than the capacity");
        assert!(tokens.hold(&format!("valid-{}", CAPACITY - 1), 1, now), "the newest is kept");
    }
}
