//! The time the verifier reads: the system's, or one a test moves forward.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// Now, as an instant (key expiry) and as a date (token expiry).
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// How far a test has moved this clock ahead, in milliseconds.
    ahead: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that runs with the system's but can be moved ahead with
    /// [`advance`](Self::advance); clones share it.
    pub fn adjustable() -> Self {
        Self { ahead: Some(Arc::new(AtomicU64::new(0))) }
    }

    /// Moves an adjustable clock ahead (does nothing to the system clock).
    pub fn advance(&self, by: Duration) {
        if let Some(ahead) = &self.ahead {
            ahead.fetch_add(u64::try_from(by.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
        }
    }

    fn offset(&self) -> Duration {
        self.ahead.as_ref().map_or(Duration::ZERO, |ahead| Duration::from_millis(ahead.load(Ordering::SeqCst)))
    }

    pub(crate) fn now(&self) -> Instant {
        Instant::now() + self.offset()
    }

    pub(crate) fn utc(&self) -> DateTime<Utc> {
        Utc::now() + self.offset()
    }
}
