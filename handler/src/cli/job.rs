//! `whirligig run`: one task to completion, as a Cloud Run job's task runs
//! it. The task and its arguments are checked before the database is
//! touched, so a usage error is exit 2 whatever state the database is in.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use whirligig_registry::{RawArguments, Registry, Route};

use super::{Fatal, postgres, warn_in_memory};
use crate::config::{Config, JobConfig};
use crate::context::Resources;
use crate::executor::{Delivery, Executor, Outcome, Reply};
use crate::store::{ExecutionStore, MemoryStore};
use crate::telemetry::propagation;

/// `whirligig run`'s arguments.
#[derive(Debug)]
pub(super) struct JobRun {
    pub(super) name: String,
    pub(super) args: Option<String>,
    pub(super) kwargs: Option<String>,
    pub(super) task_id: Option<String>,
}

/// Runs the task once, and exits as a job's task should.
pub(super) async fn run(config: &Config, registry: &Registry, job: JobRun) -> Result<ExitCode, Fatal> {
    let route = registry.find(&job.name).map_err(|unknown| Fatal::Usage(unknown.to_string()))?;
    let args = raw_json("--args (TASK_ARGS)", given(job.args.as_deref()).unwrap_or("[]"))?;
    let kwargs = raw_json("--kwargs (TASK_KWARGS)", given(job.kwargs.as_deref()).unwrap_or("{}"))?;
    let arguments = RawArguments::new(args, kwargs).map_err(|error| Fatal::Usage(error.to_string()))?;
    let delivery = delivery(&config.job, route, arguments, job.task_id);
    match &config.database {
        Some(database) => {
            let store = postgres(database).await?;
            let resources = Resources { database: Some(store.clone()) };
            execute_once(config, Arc::new(store), resources, delivery).await
        }
        None => {
            warn_in_memory();
            execute_once(config, Arc::new(MemoryStore::default()), Resources::default(), delivery).await
        }
    }
}

/// The job's delivery: its id, shard and trace from what Cloud Run set.
fn delivery<'a>(
    job: &JobConfig,
    route: &'a Route,
    arguments: RawArguments<'a>,
    task_id: Option<String>,
) -> Delivery<'a> {
    let trace_parent =
        job.traceparent.as_ref().and_then(|(parent, state)| propagation::from_traceparent(parent, state.as_deref()));
    Delivery {
        route,
        task_id: task_id.unwrap_or_else(|| default_task_id(job)),
        arguments,
        message_id: None,
        subscription: None,
        delivery_attempt: None,
        publish_time: None,
        enqueued_at: None,
        job: job.shard,
        // A retried job attempt means the previous one is dead: take over at once.
        lease: if job.shard.is_some_and(|shard| shard.attempt > 0) { Duration::ZERO } else { route.ack_deadline() },
        trace_parent,
    }
}

async fn execute_once<S: ExecutionStore>(
    config: &Config,
    store: Arc<S>,
    resources: Resources,
    delivery: Delivery<'_>,
) -> Result<ExitCode, Fatal> {
    let executor = Executor::new(store, Arc::new(resources), CancellationToken::new())
        .with_kill_switches(config.kill_switches.clone());
    executor.execute(delivery, exit).await
}

/// A job's exit: 0 when the task ran (or had already, or its kill switch is
/// off), 2 for arguments that can never fit, 1 for every other failure.
fn exit(outcome: &Outcome) -> Result<ExitCode, Fatal> {
    match outcome {
        Outcome::Succeeded | Outcome::Duplicate | Outcome::Skipped { .. } => Ok(ExitCode::SUCCESS),
        Outcome::BadArguments(error) => Err(Fatal::Usage(error.to_string())),
        _ => Ok(ExitCode::FAILURE),
    }
}

impl Reply for Result<ExitCode, Fatal> {
    fn status(&self) -> Option<u16> {
        None
    }
}

/// Empty counts as unset, as for every other variable.
fn given(text: Option<&str>) -> Option<&str> {
    text.filter(|text| !text.trim().is_empty())
}

fn raw_json<'a>(flag: &str, text: &'a str) -> Result<&'a RawValue, Fatal> {
    serde_json::from_str(text).map_err(|error| Fatal::Usage(format!("{flag} is not JSON: {error}")))
}

/// `{execution}-{index}`, so a retried job attempt is recognised; a fresh
/// UUID outside Cloud Run.
fn default_task_id(job: &JobConfig) -> String {
    match &job.execution {
        Some(execution) => format!("{execution}-{}", job.shard.map_or(0, |shard| shard.index)),
        None => uuid::Uuid::new_v4().to_string(),
    }
}
