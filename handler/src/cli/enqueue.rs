//! `whirligig enqueue` and `whirligig result`: a task enqueued from the
//! command line through the same [`Tasks`] handle a service uses, and an
//! execution read back, as JSON on stdout.

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::context::FutureExt as _;
use serde_json::{Map, Value};
use tokio::time::Instant;
use whirligig_registry::{CallArguments, Registry};

use super::{Fatal, migrated};
use crate::config::{Backend, Config};
use crate::store::{Execution, Status};
use crate::tasks::{EnqueueError, Queued, Tasks};
use crate::telemetry::propagation;

/// How often `--wait` looks at the execution.
const POLL: Duration = Duration::from_millis(200);

/// `whirligig enqueue`'s arguments.
#[derive(Debug)]
pub(super) struct EnqueueRun {
    pub(super) name: String,
    pub(super) args: Option<String>,
    pub(super) kwargs: Option<String>,
    pub(super) task_id: Option<String>,
    pub(super) scheduled: bool,
    pub(super) wait: Option<Duration>,
}

/// Enqueues, prints `{"task_id", "message_id"}`, and with `--wait` follows
/// the execution until it ends.
pub(super) async fn enqueue(config: &Config, registry: Registry, run: EnqueueRun) -> Result<ExitCode, Fatal> {
    let call = call(run.args.as_deref(), run.kwargs.as_deref())?;
    if run.scheduled && (run.task_id.is_some() || call != CallArguments::default()) {
        return Err(Fatal::Usage(
            "--scheduled publishes the schedule's own message: no --args, --kwargs or --task-id".into(),
        ));
    }
    if run.wait.is_some() && config.enqueue.backend == Backend::PubSub && config.database.is_none() {
        return Err(Fatal::Usage(
            "--wait needs DATABASE_URL: the execution is recorded in the database (dev without one logs each \
             result)"
                .into(),
        ));
    }
    let tasks = tasks(config, registry).await?;
    let enqueued = async {
        if run.scheduled {
            tasks.enqueue_scheduled(&run.name).await
        } else {
            tasks.enqueue_json(&run.name, call, run.task_id).await
        }
    };
    let queued = continuing_traceparent(config, enqueued).await.map_err(fatal)?;
    println!("{}", serde_json::json!({"task_id": queued.task_id(), "message_id": queued.message_id()}));
    match run.wait {
        Some(within) => wait(&tasks, &queued, within, config.enqueue.backend).await,
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Runs `work` in the trace `TRACEPARENT` names, if any: the message carries it on.
async fn continuing_traceparent<T>(config: &Config, work: impl Future<Output = T>) -> T {
    let traceparent = config.job.traceparent.as_ref();
    match traceparent.and_then(|(parent, state)| propagation::from_traceparent(parent, state.as_deref())) {
        Some(parent) => work.with_context(parent).await,
        None => work.await,
    }
}

/// Prints the execution recorded under `task_id` as JSON; exit 1 when there is none.
pub(super) async fn result(config: &Config, registry: Registry, task_id: &str) -> Result<ExitCode, Fatal> {
    if config.database.is_none() {
        return Err(Fatal::Usage("result needs DATABASE_URL: executions are recorded in the database".into()));
    }
    let tasks = tasks(config, registry).await?;
    match tasks.result(task_id).await.map_err(fatal)? {
        Some(execution) => Ok(print(&execution)),
        None => Err(Fatal::Failed(format!("no execution recorded under {task_id:?}"))),
    }
}

async fn tasks(config: &Config, registry: Registry) -> Result<Tasks, Fatal> {
    // Tasks opens its own pool: only the migrations are wanted here.
    if let Some(database) = &config.database {
        migrated(database).await?;
    }
    Tasks::from_config(Arc::new(registry), config).await.map_err(fatal)
}

/// Follows the execution until it succeeds or fails for good, for at most `within`.
async fn wait(tasks: &Tasks, queued: &Queued, within: Duration, backend: Backend) -> Result<ExitCode, Fatal> {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        let execution = tasks.result(queued.task_id()).await.map_err(fatal)?;
        if let Some(execution) = execution.as_ref().filter(|execution| has_ended(execution, backend)) {
            return Ok(print(execution));
        }
        last = execution.or(last);
        if Instant::now() + POLL > deadline {
            let status = last.as_ref().map_or("not recorded".to_owned(), |execution| execution.status.to_string());
            return Err(Fatal::Failed(format!("{} had not ended within {within:?} ({status})", queued.task_id())));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Succeeded, or failed with no retry to come: a permanent failure, or any
/// failure of the immediate backend, which has no redelivery.
fn has_ended(execution: &Execution, backend: Backend) -> bool {
    match execution.status {
        Status::Successful => true,
        Status::Failed => execution.permanent || backend == Backend::Immediate,
        Status::Ready | Status::Running => false,
    }
}

/// The execution as JSON; exit 0 when it succeeded.
fn print(execution: &Execution) -> ExitCode {
    match serde_json::to_string_pretty(execution) {
        Ok(json) => println!("{json}"),
        Err(error) => eprintln!("the execution could not be printed: {error}"),
    }
    if execution.status == Status::Successful { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// `--args` and `--kwargs`: a JSON list and a JSON object.
fn call(args: Option<&str>, kwargs: Option<&str>) -> Result<CallArguments, Fatal> {
    let args = match parse("--args", args)? {
        None => Vec::new(),
        Some(Value::Array(args)) => args,
        Some(_) => return Err(Fatal::Usage("--args must be a JSON list".into())),
    };
    let kwargs = match parse("--kwargs", kwargs)? {
        None => Map::new(),
        Some(Value::Object(kwargs)) => kwargs,
        Some(_) => return Err(Fatal::Usage("--kwargs must be a JSON object".into())),
    };
    Ok(CallArguments { args, kwargs })
}

fn parse(flag: &str, text: Option<&str>) -> Result<Option<Value>, Fatal> {
    let Some(text) = text.filter(|text| !text.trim().is_empty()) else { return Ok(None) };
    serde_json::from_str(text).map(Some).map_err(|error| Fatal::Usage(format!("{flag} is not JSON: {error}")))
}

/// A publish or store failure is the work failing (exit 1); the rest is usage (exit 2).
fn fatal(error: EnqueueError) -> Fatal {
    match error {
        EnqueueError::Publish(_) | EnqueueError::Store(_) => Fatal::Failed(error.to_string()),
        EnqueueError::UnknownTask(_)
        | EnqueueError::Arguments(_)
        | EnqueueError::TaskIdTooLong(_)
        | EnqueueError::NoResults
        | EnqueueError::Setup(_) => Fatal::Usage(error.to_string()),
    }
}
