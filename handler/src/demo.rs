//! The demo app's tasks: examples to copy, and diagnostics for smoke and load
//! tests. `noop`, `echo`, `sleep`, `fail`, `flaky`, `panic`, `permanent`,
//! `shard` and the scheduled `heartbeat`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use whirligig_registry::{Kwargs, Registry, RegistryError, Task, TaskContext, TaskError, task, task_route};

use crate::TaskContextExt as _;

/// Does nothing: the framework's own overhead.
pub async fn noop(_ctx: TaskContext) {}

/// Returns its keyword arguments.
pub async fn echo(
    _ctx: TaskContext,
    Kwargs(kwargs): Kwargs<Map<String, Value>>,
) -> Result<Map<String, Value>, TaskError> {
    Ok(kwargs)
}

/// `sleep`'s arguments.
#[derive(Debug, Serialize, Deserialize)]
pub struct Sleep {
    /// How long to sleep, in milliseconds.
    pub ms: u64,
    /// Hold a pooled database connection while sleeping.
    #[serde(default)]
    pub hold_db: bool,
}

/// Sleeps `ms` milliseconds, holding a database connection if asked.
pub async fn sleep(ctx: TaskContext, Kwargs(args): Kwargs<Sleep>) -> Result<u64, TaskError> {
    let _held = if args.hold_db { Some(ctx.database().await?) } else { None };
    tokio::time::sleep(Duration::from_millis(args.ms)).await;
    Ok(args.ms)
}

/// Always fails, retryably.
pub async fn fail(_ctx: TaskContext) -> Result<(), TaskError> {
    Err(TaskError::retryable("the fail task always fails"))
}

/// `flaky`'s arguments.
#[derive(Debug, Serialize, Deserialize)]
pub struct Flaky {
    /// The attempt that succeeds.
    pub succeed_on: u32,
}

/// Fails until attempt `succeed_on`, then returns the attempt number.
pub async fn flaky(ctx: TaskContext, Kwargs(flaky): Kwargs<Flaky>) -> Result<u32, TaskError> {
    if ctx.attempt() < flaky.succeed_on {
        return Err(TaskError::retryable(format!("attempt {} of {} fails", ctx.attempt(), flaky.succeed_on)));
    }
    Ok(ctx.attempt())
}

/// Panics.
pub async fn panic(_ctx: TaskContext) {
    panic!("the panic task panicked");
}

/// Always fails, permanently.
pub async fn permanent(_ctx: TaskContext) -> Result<(), TaskError> {
    Err(TaskError::permanent("the permanent task always fails permanently"))
}

/// Returns the shard of a Cloud Run job execution that runs it, as
/// `{"index", "count", "attempt"}`, or null outside a job.
pub async fn shard(ctx: TaskContext) -> Result<Value, TaskError> {
    Ok(ctx
        .job()
        .map_or(Value::Null, |job| serde_json::json!({"index": job.index, "count": job.count, "attempt": job.attempt})))
}

/// Runs every minute, unless `ENABLE_HEARTBEAT` is off.
pub async fn heartbeat(ctx: TaskContext) {
    tracing::info!(task_id = ctx.task_id(), "heartbeat");
}

/// The tasks by value, for typed enqueues: `tasks.enqueue(&demo::FLAKY, Kwargs(Flaky { succeed_on: 2 }))`.
pub const NOOP: Task<()> = task!(noop);
/// `echo`, typed.
pub const ECHO: Task<(Kwargs<Map<String, Value>>,)> = task!(echo);
/// `sleep`, typed.
pub const SLEEP: Task<(Kwargs<Sleep>,)> = task!(sleep);
/// `flaky`, typed.
pub const FLAKY: Task<(Kwargs<Flaky>,)> = task!(flaky);

/// The demo app's registry.
pub fn registry() -> Result<Registry, RegistryError> {
    Registry::builder()
        .route(task_route!(noop))
        .route(task_route!(echo))
        .route(task_route!(sleep).ack_deadline(60))
        .route(task_route!(fail).min_retry_delay(1).max_retry_delay(10))
        .route(task_route!(flaky).min_retry_delay(1).max_retry_delay(10))
        .route(task_route!(panic))
        .route(task_route!(permanent).min_retry_delay(1).max_retry_delay(2))
        .route(task_route!(shard))
        .route(task_route!(heartbeat).schedule("*/1 * * * *").kill_switch("ENABLE_HEARTBEAT"))
        .build()
}
