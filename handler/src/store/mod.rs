//! The execution store: where each task_id's state lives (READY → RUNNING →
//! SUCCESSFUL | FAILED, FAILED → RUNNING on a retry). [`ExecutionStore`] is the
//! contract the executor relies on: a claim and a finish of one round trip
//! each, the finish fenced by a token drawn for its claim. Two implementations: PostgreSQL for
//! production, memory for dev. Statuses and HTTP are not decided here.

mod memory;
#[cfg(feature = "postgres")]
mod postgres;

use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use serde_json::value::RawValue;
use whirligig_registry::Retry;

pub use self::memory::MemoryStore;
#[cfg(feature = "bench")]
pub(crate) use self::postgres::claim_and_finish;
#[cfg(feature = "postgres")]
pub use self::postgres::{ConnectError, Connector, DbConnection, PgConnection, PostgresStore};
#[cfg(feature = "postgres")]
pub use self::postgres::{migrate, migrate_within};

/// The start of the error recorded for an enqueued call that was not published.
pub const NOT_PUBLISHED: &str = "not published: ";

/// The error recorded for a last attempt that died while RUNNING.
pub(crate) const ABANDONED: &str = "abandoned: the last attempt did not finish within its lease";

/// What the executor asks the store to record when a delivery arrives.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    /// The execution id.
    pub task_id: &'a str,
    /// The route's task name.
    pub task_name: &'a str,
    /// The positional arguments as received.
    pub args: &'a RawValue,
    /// The keyword arguments as received.
    pub kwargs: &'a RawValue,
    /// The Pub/Sub message id, if any.
    pub message_id: Option<&'a str>,
    /// When the message says it was enqueued.
    pub enqueued_at: Option<DateTime<Utc>>,
    /// How long a RUNNING claim holds before another delivery may take over; zero: at once.
    pub lease: Duration,
    /// The route's attempt limit.
    pub max_attempts: Option<NonZeroU32>,
}

/// An enqueued call, recorded READY before it is published.
#[derive(Debug, Clone, Copy)]
pub struct ReadyRequest<'a> {
    /// The execution id: the message's task id.
    pub task_id: &'a str,
    /// The route's task name.
    pub task_name: &'a str,
    /// The positional arguments.
    pub args: &'a RawValue,
    /// The keyword arguments.
    pub kwargs: &'a RawValue,
    /// The message's `enqueued_at`.
    pub enqueued_at: DateTime<Utc>,
}

/// What an enqueue found under its task id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// The call is recorded READY: new, or an earlier enqueue of it that was never published.
    Ready,
    /// The task id is already known (READY, RUNNING, SUCCESSFUL or FAILED by
    /// a run): nothing changed. Publishing again is safe; a delivery of a
    /// task that already succeeded does not run it again.
    Known(Status),
}

/// A claimed attempt: its number, counted from 1 for people, and the fence
/// drawn for this claim alone, which its finish must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// How many attempts have been claimed, this one included.
    pub number: u32,
    /// Random, drawn per claim: no crash or lost commit can repeat it.
    pub fence: i64,
}

impl Attempt {
    /// Attempt `number` under a newly drawn fence.
    pub(crate) fn drawn(number: u32) -> Self {
        Self { number, fence: draw_fence() }
    }
}

/// A fence no other claim has: 64 random bits, from the thread's generator
/// (ChaCha, seeded by the system). Not `Uuid::new_v4`: in the static binary
/// its `getrandom` cannot find glibc's function and reads `/dev/urandom`, a
/// system call per claim.
pub(crate) fn draw_fence() -> i64 {
    rand::random()
}

/// The answer to a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The caller now runs the task as this attempt.
    Claimed(Attempt),
    /// The task already succeeded: do not run it again.
    AlreadySucceeded,
    /// The task already failed permanently: do not run it again.
    AlreadyFailed,
    /// Another delivery holds an unexpired lease.
    Running,
    /// The attempt limit is used up. A last attempt abandoned while RUNNING
    /// (its lease over) is recorded FAILED on the way.
    Exhausted {
        /// Attempts made so far.
        attempts: u32,
    },
}

/// How a claimed attempt ended.
#[derive(Debug, Clone, Copy)]
pub enum Ending<'a> {
    /// The task returned this JSON value.
    Succeeded {
        /// The return value.
        return_value: &'a RawValue,
    },
    /// The task failed.
    Failed {
        /// One line: what went wrong.
        message: &'a str,
        /// The error chain or panic detail.
        traceback: &'a str,
        /// Whether a later delivery may run it again; a permanent failure
        /// is final.
        retry: Retry,
    },
}

/// Whether a finish was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The row was still this attempt's and now holds the ending.
    Recorded,
    /// A newer claim owns the row: nothing changed.
    Fenced,
}

/// An execution's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Enqueued, not yet run.
    Ready,
    /// A delivery is running it.
    Running,
    /// It ran and returned a value.
    Successful,
    /// Its last attempt failed (or it was skipped by its kill switch).
    Failed,
}

impl Status {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "READY",
            Self::Running => "RUNNING",
            Self::Successful => "SUCCESSFUL",
            Self::Failed => "FAILED",
        }
    }

    #[cfg(feature = "postgres")]
    pub(crate) fn parse(text: &str) -> Option<Self> {
        [Self::Ready, Self::Running, Self::Successful, Self::Failed].into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One execution as stored: what result retrieval returns.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Execution {
    /// The execution id.
    pub task_id: String,
    /// The task name.
    pub task_name: String,
    /// Where it stands.
    pub status: Status,
    /// Positional arguments.
    pub args: Value,
    /// Keyword arguments.
    pub kwargs: Value,
    /// The return value of a successful run.
    pub return_value: Option<Value>,
    /// What went wrong in the last failed attempt.
    pub error_message: Option<String>,
    /// The error chain or panic detail of the last failed attempt.
    pub error_traceback: Option<String>,
    /// How many attempts were claimed.
    pub attempts: u32,
    /// A FAILED execution that will not be run again.
    pub permanent: bool,
    /// The Pub/Sub message id of the latest claim.
    pub message_id: Option<String>,
    /// When the message was enqueued.
    pub enqueued_at: Option<DateTime<Utc>>,
    /// When the latest attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the latest attempt ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// The driver's error behind a [`StoreError`], shared by every call of a
/// batch it failed.
#[cfg(feature = "postgres")]
pub type DriverError = Arc<tokio_postgres::Error>;

/// Without the PostgreSQL store there is no driver, and never a driver's error.
#[cfg(not(feature = "postgres"))]
pub type DriverError = Arc<std::convert::Infallible>;

/// Why the store could not answer: what the caller should do about it, a
/// line saying why, and the driver's error, when there was one, as the
/// source. Each maps to one HTTP status in `answer`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Every pooled connection stayed busy for `DATABASE_POOL_TIMEOUT_MS`.
    #[error("no database connection free within {0:?} (pool exhausted)")]
    PoolTimeout(Duration),
    /// The server refused a new connection: too many clients or starting up.
    #[error("the database refused a connection: {reason}")]
    Refused {
        /// The server's message and SQLSTATE.
        reason: String,
        /// The driver's error.
        #[source]
        source: Option<DriverError>,
    },
    /// The server cannot be reached, or the connection broke.
    #[error("the database is unreachable: {reason}")]
    Unavailable {
        /// What failed, with the operating system's reason.
        reason: String,
        /// The driver's error, unless a deadline ran out first.
        #[source]
        source: Option<DriverError>,
    },
    /// The database rejected the data itself (e.g. a `\u0000` in jsonb): retrying cannot help.
    #[error("the database rejected the data: {reason}")]
    Rejected {
        /// The server's message.
        reason: String,
        /// The driver's error.
        #[source]
        source: Option<DriverError>,
    },
    /// Any other database error.
    #[error("database error: {reason}")]
    Database {
        /// What went wrong.
        reason: String,
        /// The driver's error, unless the store itself found the fault.
        #[source]
        source: Option<DriverError>,
    },
}

impl crate::group_commit::QueueError for StoreError {
    fn no_turn(wait: Duration) -> Self {
        Self::PoolTimeout(wait)
    }

    fn lost() -> Self {
        Self::database("the batch that held this call ended without an answer")
    }
}

impl StoreError {
    /// A fault the store found itself, with no driver error behind it.
    pub(crate) fn database(reason: impl Into<String>) -> Self {
        Self::Database { reason: reason.into(), source: None }
    }

    /// A short name for the kind of failure (a span's `error.type`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::PoolTimeout(_) => "pool_timeout",
            Self::Refused { .. } => "refused",
            Self::Unavailable { .. } => "unavailable",
            Self::Rejected { .. } => "rejected",
            Self::Database { .. } => "database",
        }
    }
}

#[cfg(feature = "postgres")]
impl StoreError {
    /// The driver's error behind this one, if there is one.
    fn driver(&self) -> Option<&tokio_postgres::Error> {
        match self {
            Self::PoolTimeout(_) => None,
            Self::Refused { source, .. }
            | Self::Unavailable { source, .. }
            | Self::Rejected { source, .. }
            | Self::Database { source, .. } => source.as_deref(),
        }
    }

    /// The SQLSTATE the server answered with, if it answered.
    pub(crate) fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        self.driver()?.code()
    }

    /// The connection closed under the call (the server restarted, say): the
    /// same call on a fresh connection may well succeed.
    pub(crate) fn connection_closed(&self) -> bool {
        matches!(self, Self::Unavailable { .. }) && self.driver().is_some_and(tokio_postgres::Error::is_closed)
    }
}

/// The state of every execution, one round trip per transition.
pub trait ExecutionStore: Send + Sync + 'static {
    /// Takes the task for one attempt, or says why not: already succeeded,
    /// running under another delivery's lease, or out of attempts.
    fn claim(&self, request: &ClaimRequest<'_>) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Records the ending of `attempt`, only if no newer claim has taken the
    /// row. Never waits on the pool that claims use: the task has run, and
    /// losing its ending would run it again after the lease.
    fn finish(
        &self,
        task_id: &str,
        attempt: Attempt,
        ending: Ending<'_>,
    ) -> impl Future<Output = Result<Finished, StoreError>> + Send;

    /// Records a delivery that was acknowledged without running (kill switch),
    /// unless the task already succeeded or is running.
    fn skip(&self, request: &ClaimRequest<'_>, reason: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records an enqueued call READY, before it is published, unless its
    /// task id is already known. An earlier enqueue that was never published
    /// (FAILED, no attempt made) becomes READY again.
    fn enqueue(&self, request: &ReadyRequest<'_>) -> impl Future<Output = Result<Enqueued, StoreError>> + Send;

    /// Records that a READY call could not be published: FAILED with
    /// `not published: {reason}`, and no attempt made, so enqueueing it again
    /// retries. A row a delivery has claimed meanwhile is left alone.
    fn not_published(&self, task_id: &str, reason: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The execution recorded under `task_id`.
    fn get(&self, task_id: &str) -> impl Future<Output = Result<Option<Execution>, StoreError>> + Send;

    /// Succeeds when the store can reach its database (`/readyz`); a busy
    /// pool counts as reachable.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}
