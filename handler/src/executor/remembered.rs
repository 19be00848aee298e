//! The executions this instance has seen end for good — succeeded, or failed
//! permanently — so a redelivery of one is answered from memory, without a
//! round trip to the store. Such an ending never changes, so a remembered one
//! is never stale; the set is bounded and forgets the oldest first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::Outcome;

/// How many endings an instance remembers: a few megabytes at most.
const CAPACITY: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Final {
    Succeeded,
    FailedPermanently,
}

#[derive(Debug)]
pub(super) struct Remembered {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    endings: HashMap<Arc<str>, Final>,
    order: VecDeque<Arc<str>>,
}

impl Default for Remembered {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl Remembered {
    fn with_capacity(capacity: usize) -> Self {
        Self { capacity, inner: Mutex::default() }
    }

    /// The answer for a redelivery of `task_id`, if it is known to have remembered.
    pub(super) fn outcome(&self, task_id: &str) -> Option<Outcome> {
        match self.lock().endings.get(task_id)? {
            Final::Succeeded => Some(Outcome::Duplicate),
            Final::FailedPermanently => Some(Outcome::AlreadyFailed),
        }
    }

    /// Remembers `task_id` if `outcome` says it ended for good.
    pub(super) fn remember(&self, task_id: &str, outcome: &Outcome) {
        let ending = match outcome {
            Outcome::Succeeded | Outcome::Duplicate => Final::Succeeded,
            Outcome::AlreadyFailed => Final::FailedPermanently,
            _ => return,
        };
        let mut inner = self.lock();
        if inner.endings.contains_key(task_id) {
            return;
        }
        if inner.order.len() == self.capacity
            && let Some(oldest) = inner.order.pop_front()
        {
            inner.endings.remove(&oldest);
        }
        let task_id: Arc<str> = task_id.into();
        inner.endings.insert(Arc::clone(&task_id), ending);
        inner.order.push_back(task_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map is consistent after every statement: a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_final_endings_are_remembered_and_answered() {
        let remembered = Remembered::default();
        remembered.remember("ran", &Outcome::Succeeded);
        remembered.remember("seen-done", &Outcome::Duplicate);
        remembered.remember("doomed", &Outcome::AlreadyFailed);
        remembered.remember(
            "retrying",
            &Outcome::Failed { message: "x".into(), retry: whirligig_registry::Retry::Retryable },
        );
        remembered.remember("busy", &Outcome::InProgress);
        assert!(matches!(remembered.outcome("ran"), Some(Outcome::Duplicate)));
        assert!(matches!(remembered.outcome("seen-done"), Some(Outcome::Duplicate)));
        assert!(matches!(remembered.outcome("doomed"), Some(Outcome::AlreadyFailed)));
        assert!(remembered.outcome("retrying").is_none() && remembered.outcome("busy").is_none());
    }

    #[test]
    fn the_oldest_is_forgotten_first() {
        let remembered = Remembered::with_capacity(2);
        for task_id in ["a", "b", "a", "c"] {
            remembered.remember(task_id, &Outcome::Succeeded);
        }
        assert!(remembered.outcome("a").is_none(), "a was the oldest");
        assert!(remembered.outcome("b").is_some() && remembered.outcome("c").is_some());
    }
}
