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

/// Bytes of a token's end it is filed under: the end of its signature.
const TAIL: usize = 32;

/// The verified tokens by the end of their signature, each with when it
/// stops passing. Hashing a whole token (a kilobyte) cost a push more than
/// the rest of the lookup; its tail is as good a key, and the whole token is
/// still compared. The map holds only verified tokens, so no sender can
/// choose what is filed under a tail: one that picks a token's tail finds a
/// slot whose token is not its own.
#[derive(Debug, Default)]
pub(crate) struct VerifiedTokens(RwLock<HashMap<Tail, Verified>>);

/// A token's last [`TAIL`] bytes, right-aligned (a shorter token is padded
/// with zeros in front).
type Tail = [u8; TAIL];

#[derive(Debug)]
struct Verified {
    token: Box<str>,
    valid: Valid,
}

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
        let tokens = self.read();
        tokens.get(&tail(token)).is_some_and(|kept| *kept.token == *token && kept.valid.holds(generation, now))
    }

    /// Remembers a token the key set `generation` verified, until `until`.
    /// When full, tokens that no longer hold go first, then all of them.
    pub(crate) fn remember(&self, token: &str, generation: u64, until: DateTime<Utc>, now: DateTime<Utc>) {
        let mut tokens = self.write();
        if tokens.len() >= CAPACITY {
            tokens.retain(|_, kept| kept.valid.holds(generation, now));
            if tokens.len() >= CAPACITY {
                tokens.clear();
            }
        }
        // Two verified tokens with one tail: the newer takes the slot.
        tokens.insert(tail(token), Verified { token: token.into(), valid: Valid { until, generation } });
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<Tail, Verified>> {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<Tail, Verified>> {
        self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn tail(token: &str) -> Tail {
    let end = &token.as_bytes()[token.len().saturating_sub(TAIL)..];
    let mut tail = [0; TAIL];
    tail[TAIL - end.len()..].copy_from_slice(end);
    tail
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
    fn a_token_with_a_kept_ones_tail_does_not_pass_for_it() {
        let (tokens, now) = (VerifiedTokens::default(), Utc::now());
        let until = now + TimeDelta::minutes(5);
        let signature = "s".repeat(TAIL);
        let (kept, forged) = (format!("header.payload.{signature}"), format!("header.forged.{signature}"));
        assert_eq!(tail(&kept), tail(&forged));
        tokens.remember(&kept, 1, until, now);
        assert!(tokens.hold(&kept, 1, now));
        assert!(!tokens.hold(&forged, 1, now), "the whole token is compared");
        assert_ne!(tail(&signature[1..]), tail(&kept), "a shorter token is padded, not filed with a longer");

        tokens.remember(&forged, 1, until, now);
        assert!(tokens.hold(&forged, 1, now) && !tokens.hold(&kept, 1, now), "the newer takes the slot");
        assert!(!tokens.hold("", 1, now));
        tokens.remember("", 1, until, now);
        assert!(tokens.hold("", 1, now), "short tokens too");
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
