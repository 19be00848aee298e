//! Live leases: the executions this instance has claimed and not yet
//! finished, which it renews every few seconds in one statement for all of
//! them, so that a RUNNING row stays its own for as long as its task runs,
//! and a row whose renewals stopped (the instance died) is taken over after a
//! short grace rather than the route's whole ack deadline. A finish that could
//! not be written waits here too, retried in the background until it lands or
//! its lease ends; meanwhile its lease is renewed, and a redelivery the
//! instance receives is told the execution is running rather than run again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::batches::FinishRow;
use crate::store::Attempt;

/// How often the instance renews the leases of what it runs.
pub(super) const RENEW_EVERY: Duration = Duration::from_secs(5);

/// A RUNNING execution whose renewals stopped this long ago may be taken
/// over: three renewals missed. A database stall or restart shorter than
/// this costs no lease.
pub(super) const LEASE_GRACE: Duration = Duration::from_secs(15);

/// How soon a renewal that failed, or a finish not yet written, is tried again.
pub(super) const RETRY_EVERY: Duration = Duration::from_secs(1);

/// A finish not yet written is tried for at least this long, even when its
/// task used most of its lease.
const FINISH_RETRIES_FOR: Duration = Duration::from_secs(60);

/// How long after its last renewal a RUNNING row claimed with `lease` (the
/// route's ack deadline, or zero when the caller knows the last attempt is
/// dead) may be taken over.
pub(super) fn takeover_after(lease: Duration) -> Duration {
    lease.min(LEASE_GRACE)
}

/// What the instance holds, by task id.
#[derive(Debug, Default)]
pub(super) struct Leases {
    held: Mutex<HashMap<String, Held>>,
    /// Something new is held, or the store is gone.
    changed: Notify,
    /// The store was dropped: the renewals stop.
    closed: AtomicBool,
    /// Whether the renewals have been started.
    started: AtomicBool,
}

/// One execution's lease.
#[derive(Debug)]
struct Held {
    fence: i64,
    /// Renewed until then: a task runs within its timeout, shorter than the
    /// lease it was claimed with, so a task that never finished (its
    /// future dropped) stops being renewed.
    until: Instant,
    /// The ending that could not be written yet.
    pending: Option<FinishRow>,
}

/// What one round of the renewals has to do.
#[derive(Debug, Default)]
pub(super) struct Round {
    /// Task ids and fences to renew.
    pub(super) task_ids: Vec<String>,
    pub(super) fences: Vec<i64>,
    /// Finishes to write again.
    pub(super) finishes: Vec<FinishRow>,
}

impl Leases {
    /// True the first time only: the caller starts the renewals.
    pub(super) fn start(&self) -> bool {
        !self.started.swap(true, Ordering::AcqRel)
    }

    /// Holds `attempt` of `task_id` for at most `lease`.
    pub(super) fn hold(&self, task_id: &str, attempt: Attempt, lease: Duration) {
        let held = Held { fence: attempt.fence, until: Instant::now() + lease, pending: None };
        self.lock().insert(task_id.to_owned(), held);
        self.changed.notify_one();
    }

    /// Lets go of `task_id`, if it is still held under `fence`.
    pub(super) fn release(&self, task_id: &str, fence: i64) {
        let mut held = self.lock();
        if held.get(task_id).is_some_and(|lease| lease.fence == fence) {
            held.remove(task_id);
        }
    }

    /// Keeps `row`, whose writing failed, to write again until its lease is
    /// over, or for [`FINISH_RETRIES_FOR`] if that is later.
    pub(super) fn pend(&self, task_id: &str, row: FinishRow) {
        let fence = row.fence();
        let mut held = self.lock();
        let lease_over = held.get(task_id).filter(|lease| lease.fence == fence).map(|lease| lease.until);
        let until = lease_over.into_iter().chain([Instant::now() + FINISH_RETRIES_FOR]).max();
        let until = until.unwrap_or_else(Instant::now);
        held.insert(task_id.to_owned(), Held { fence, until, pending: Some(row) });
        drop(held);
        self.changed.notify_one();
    }

    /// Whether an ending of `task_id` is waiting to be written here.
    pub(super) fn finishing(&self, task_id: &str) -> bool {
        self.lock().get(task_id).is_some_and(|lease| lease.pending.is_some())
    }

    /// The store is gone: the renewals stop.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    /// Waits until something is held; false once the store is gone.
    pub(super) async fn wait_for_work(&self) -> bool {
        loop {
            let changed = self.changed.notified();
            if self.closed.load(Ordering::Acquire) {
                return false;
            }
            if !self.lock().is_empty() {
                return true;
            }
            changed.await;
        }
    }

    /// Whether anything is held.
    pub(super) fn has_work(&self) -> bool {
        !self.lock().is_empty()
    }

    /// Whether a finish waits to be written.
    pub(super) fn has_pending(&self) -> bool {
        self.lock().values().any(|lease| lease.pending.is_some())
    }

    /// What to renew and write now; leases past their end are let go, and a
    /// finish given up on is said so.
    pub(super) fn round(&self) -> Round {
        let now = Instant::now();
        let mut held = self.lock();
        held.retain(|task_id, lease| {
            let over = lease.until <= now;
            if over && lease.pending.is_some() {
                tracing::warn!(
                    task_id,
                    "gave up writing this attempt's ending: its lease is over, and a redelivery will run it again"
                );
            }
            !over
        });
        let mut round = Round::default();
        for (task_id, lease) in held.iter() {
            round.task_ids.push(task_id.clone());
            round.fences.push(lease.fence);
            if let Some(row) = &lease.pending {
                round.finishes.push(row.clone());
            }
        }
        round
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        // Every statement leaves the map consistent: a poisoned lock is still usable.
        self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(fence: i64) -> Attempt {
        Attempt { number: 1, fence }
    }

    #[test]
    fn a_lease_is_let_go_only_under_its_own_fence() {
        let leases = Leases::default();
        leases.hold("a", attempt(1), Duration::from_secs(60));
        leases.hold("a", attempt(2), Duration::from_secs(60));
        leases.release("a", 1);
        assert_eq!(leases.round().fences, [2], "the older claim's finish does not let go of the newer");
        leases.release("a", 2);
        assert!(leases.round().task_ids.is_empty());
    }

    #[test]
    fn a_lease_past_its_end_is_not_renewed() {
        let leases = Leases::default();
        leases.hold("done", attempt(1), Duration::ZERO);
        leases.hold("alive", attempt(2), Duration::from_secs(60));
        assert_eq!(leases.round().task_ids, ["alive"]);
    }

    #[test]
    fn the_grace_is_never_longer_than_the_lease() {
        assert_eq!(takeover_after(Duration::ZERO), Duration::ZERO);
        assert_eq!(takeover_after(Duration::from_secs(300)), LEASE_GRACE);
        assert_eq!(takeover_after(Duration::from_secs(10)), Duration::from_secs(10));
    }
}
