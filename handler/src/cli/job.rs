//! `whirligig run`: one task to completion, as a Cloud Run job's task runs
//! it. The task and its arguments are checked before the database is
//! touched, so a usage error is exit 2 whatever state the database is in.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use whirligig_registry::{RawArguments, Registry, Retry, Route};

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
    let (name, task_id) = (delivery.route.name().to_owned(), delivery.task_id.clone());
    let executor = Executor::new(Arc::clone(&store), Arc::new(resources), CancellationToken::new())
        .with_kill_switches(config.kill_switches.clone());
    let ended = executor.execute(delivery, |outcome| ended(outcome, &name, &task_id)).await?;
    if ended == Ended::Ran {
        print_result(&*store, &task_id).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A job's run that did not fail.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// It ran now, or had already: its result is recorded.
    Ran,
    /// Its kill switch is off (logged): nothing to print.
    Skipped,
}

/// A job's end: the task ran (or had already, or its kill switch is off);
/// arguments that can never fit are a usage error (exit 2); every other
/// failure is one line saying what happened (exit 1).
fn ended(outcome: &Outcome, name: &str, task_id: &str) -> Result<Ended, Fatal> {
    let failed = |what: String| Err(Fatal::Failed(format!("task {name} ({task_id}) {what}")));
    match outcome {
        Outcome::Succeeded | Outcome::Duplicate => Ok(Ended::Ran),
        Outcome::Skipped { .. } => Ok(Ended::Skipped),
        Outcome::BadArguments(error) => Err(Fatal::Usage(error.to_string())),
        Outcome::Failed { message, retry: Retry::Permanent } => failed(format!("failed for good: {message}")),
        Outcome::Failed { message, retry: Retry::Retryable } => failed(format!("failed: {message}")),
        Outcome::AlreadyFailed => failed("had already failed for good: not run again".to_owned()),
        Outcome::InProgress => failed("is running elsewhere, within its lease: not run".to_owned()),
        Outcome::Exhausted { attempts } => failed(format!("has no attempts left ({attempts} used): not run")),
        Outcome::Store(error) => failed(format!("could not be recorded: {error}")),
    }
}

impl Reply for Result<Ended, Fatal> {
    fn status(&self) -> Option<u16> {
        None
    }
}

/// The task's return value as JSON on stdout, as a command prints its output.
async fn print_result<S: ExecutionStore>(store: &S, task_id: &str) -> Result<(), Fatal> {
    let execution = store.get(task_id).await?;
    let value = execution.and_then(|execution| execution.return_value).unwrap_or(serde_json::Value::Null);
    println!("{value}");
    Ok(())
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
