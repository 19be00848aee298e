//! The one place a task runs: kill switch, claim in the store, run with the
//! route's timeout and panics caught, finish in the store, and an [`Outcome`].
//! The push endpoint and job mode both come through here; neither HTTP
//! statuses nor exit codes are decided here. Each delivery is reported in a
//! span and a log line ([`report`]).

mod failure;
mod remembered;
mod report;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::FutureExt as _;
use futures_util::future::Either;
use opentelemetry::Context;
use opentelemetry::context::FutureExt as _;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, Span};
use whirligig_registry::{ArgumentError, JobShard, RawArguments, Retry, Route, TaskContext, TaskOutput};

use self::failure::Failure;
use self::remembered::Remembered;
pub(crate) use self::report::Reply;
use crate::config::KillSwitches;
use crate::context::Resources;
use crate::store::{Attempt, Claim, ClaimRequest, Ending, ExecutionStore, Finished, StoreError};
use crate::telemetry::propagation;

/// One delivery of a task: everything the executor needs, already decoded.
#[derive(Debug)]
pub(crate) struct Delivery<'a> {
    pub(crate) route: &'a Route,
    pub(crate) task_id: String,
    pub(crate) arguments: RawArguments<'a>,
    pub(crate) message_id: Option<&'a str>,
    /// The push subscription that delivered it, and Pub/Sub's count of
    /// deliveries (when the subscription has a dead-letter policy).
    pub(crate) subscription: Option<&'a str>,
    pub(crate) delivery_attempt: Option<u32>,
    pub(crate) publish_time: Option<&'a str>,
    pub(crate) enqueued_at: Option<DateTime<Utc>>,
    pub(crate) job: Option<JobShard>,
    /// How long another delivery's RUNNING claim holds: the route's ack
    /// deadline, or zero when the caller knows the previous attempt is dead.
    pub(crate) lease: Duration,
    /// The parent of the delivery's span when it is not the current span:
    /// the trace a job continues (a push's is its request's span).
    pub(crate) trace_parent: Option<Context>,
}

/// How a delivery ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The task ran and its result is recorded.
    Succeeded,
    /// The task had already succeeded; it did not run again.
    Duplicate,
    /// The task had already failed permanently; it did not run again.
    AlreadyFailed,
    /// The route's kill switch is off; recorded, not run.
    Skipped { variable: String },
    /// Another delivery holds the lease, or took over while this one ran.
    InProgress,
    /// The attempt limit was already used up.
    Exhausted { attempts: u32 },
    /// The arguments do not fit the task; recorded FAILED.
    BadArguments(ArgumentError),
    /// The task failed; recorded FAILED. `retry` is permanent for a
    /// permanent error or a last attempt.
    Failed { message: String, retry: Retry },
    /// The store could not record the delivery, or the task could not reach
    /// the database through its context.
    Store(StoreError),
}

/// Runs deliveries against one store.
#[derive(Debug)]
pub(crate) struct Executor<S> {
    store: Arc<S>,
    resources: Arc<Resources>,
    shutdown: CancellationToken,
    kill_switches: KillSwitches,
    remembered: Remembered,
    log_results: bool,
}

impl<S: ExecutionStore> Executor<S> {
    pub(crate) fn new(store: Arc<S>, resources: Arc<Resources>, shutdown: CancellationToken) -> Self {
        let kill_switches = KillSwitches::default();
        Self { store, resources, shutdown, kill_switches, remembered: Remembered::default(), log_results: false }
    }

    #[cfg(feature = "server")]
    /// Logs each return value as it is recorded (`whirligig dev`: results
    /// are read in the log). Never on otherwise: a result may hold anything.
    pub(crate) fn with_results_logged(self) -> Self {
        Self { log_results: true, ..self }
    }

    /// Turns away the deliveries of routes these switches turn off.
    pub(crate) fn with_kill_switches(self, kill_switches: KillSwitches) -> Self {
        Self { kill_switches, ..self }
    }

    pub(crate) fn store(&self) -> &S {
        &self.store
    }

    /// Records and runs one delivery in a span of its own, and returns what
    /// `respond` makes of its outcome, once the span has recorded both and
    /// closed with the delivery's log line.
    pub(crate) async fn execute<R: Reply>(&self, delivery: Delivery<'_>, respond: impl FnOnce(&Outcome) -> R) -> R {
        let span = report::span(&delivery);
        let started = Instant::now();
        // A redelivery of an execution that ended here for good needs no
        // round trip, and nothing runs in the span but its log line.
        let outcome = match self.remembered.outcome(&delivery.task_id) {
            Some(outcome) => outcome,
            None => {
                let outcome = self.claim_and_run(&delivery, &span).instrument(span.clone()).await;
                self.remembered.remember(&delivery.task_id, &outcome);
                outcome
            }
        };
        let reply = respond(&outcome);
        report::close(span, &outcome, reply.status(), started);
        reply
    }

    async fn claim_and_run(&self, delivery: &Delivery<'_>, span: &Span) -> Outcome {
        let request = delivery.claim_request();
        if let Some(variable) = self.kill_switches.disabled_by(delivery.route) {
            let reason = format!("skipped: kill switch {variable} is off");
            // Boxed: a rare path, whose future would otherwise size every push's.
            return match Box::pin(self.store.skip(&request, &reason)).await {
                Ok(()) => Outcome::Skipped { variable: variable.to_owned() },
                Err(error) => Outcome::Store(error),
            };
        }
        let attempt = match claimed(self.store.claim(&request).await) {
            Ok(attempt) => attempt,
            Err(outcome) => return outcome,
        };
        report::attempt(span, attempt.number);
        let trace = propagation::unexported(span);
        let result = run(delivery.route, self.context(delivery, attempt), &delivery.arguments, trace).await;
        self.record(&delivery.task_id, attempt, delivery.route, result, span).await
    }

    fn context(&self, delivery: &Delivery<'_>, attempt: Attempt) -> TaskContext {
        let ctx = TaskContext::new(delivery.task_id.clone())
            .with_attempt(attempt.number)
            .with_cancellation(self.shutdown.clone())
            .with_extension(self.resources.clone());
        let ctx = match delivery.message_id {
            Some(id) => ctx.with_message_id(id),
            None => ctx,
        };
        match delivery.job {
            Some(job) => ctx.with_job(job),
            None => ctx,
        }
    }

    async fn record(
        &self,
        task_id: &str,
        attempt: Attempt,
        route: &Route,
        result: Result<TaskOutput, Failure>,
        span: &Span,
    ) -> Outcome {
        let failure = match result {
            Ok(output) => {
                if self.log_results {
                    tracing::info!(result = output.get(), "returned");
                }
                match self.store.finish(task_id, attempt, Ending::Succeeded { return_value: &output }).await {
                    // The task ran; only its result cannot be kept. Running it
                    // again would produce the same value.
                    Err(StoreError::Rejected { reason, .. }) => Failure::Unstorable(reason),
                    finished => return conclude(task_id, attempt, finished, Outcome::Succeeded),
                }
            }
            Err(failure) => failure,
        };
        let (message, traceback) = failure.describe();
        report::failed(span, failure.kind(), &failure.summary(&message));
        let ending = Ending::Failed { message: &message, traceback: &traceback, retry: failure.retry() };
        let finished = self.store.finish(task_id, attempt, ending).await;
        let last_attempt = route.max_attempts().is_some_and(|max| attempt.number >= max.get());
        conclude(task_id, attempt, finished, failure.outcome(message, last_attempt))
    }
}

impl Delivery<'_> {
    fn claim_request(&self) -> ClaimRequest<'_> {
        ClaimRequest {
            task_id: &self.task_id,
            task_name: self.route.name(),
            args: self.arguments.args(),
            kwargs: self.arguments.kwargs(),
            message_id: self.message_id,
            enqueued_at: self.enqueued_at,
            lease: self.lease,
            max_attempts: self.route.max_attempts(),
        }
    }
}

/// The attempt a claim took, or the outcome of a delivery that took none.
fn claimed(claim: Result<Claim, StoreError>) -> Result<Attempt, Outcome> {
    match claim {
        Ok(Claim::Claimed(attempt)) => Ok(attempt),
        Ok(Claim::AlreadySucceeded) => Err(Outcome::Duplicate),
        Ok(Claim::AlreadyFailed) => Err(Outcome::AlreadyFailed),
        Ok(Claim::Running) => Err(Outcome::InProgress),
        Ok(Claim::Exhausted { attempts }) => Err(Outcome::Exhausted { attempts }),
        Err(error) => Err(Outcome::Store(error)),
    }
}

/// The outcome once the finish is known: a fenced finish means a newer
/// attempt owns the execution.
fn conclude(task_id: &str, attempt: Attempt, finished: Result<Finished, StoreError>, outcome: Outcome) -> Outcome {
    match finished {
        Ok(Finished::Recorded) => outcome,
        Ok(Finished::Fenced) => {
            let attempt = attempt.number;
            tracing::warn!(task_id, attempt, "a newer attempt owns this execution; this attempt's ending was dropped");
            Outcome::InProgress
        }
        Err(error) => Outcome::Store(error),
    }
}

/// Starts the task and waits for it within the route's timeout, with
/// `trace` as the current OpenTelemetry context if given. A panic,
/// whether while starting or while running, is caught here and becomes a
/// failure: the process goes on serving.
async fn run(
    route: &Route,
    ctx: TaskContext,
    arguments: &RawArguments<'_>,
    trace: Option<Context>,
) -> Result<TaskOutput, Failure> {
    let started = std::panic::catch_unwind(AssertUnwindSafe(|| route.call(ctx, arguments)))
        .map_err(|panic| Failure::panicked(panic.as_ref()))?;
    let future = AssertUnwindSafe(started.map_err(Failure::Arguments)?).catch_unwind();
    let future = match trace {
        Some(trace) => Either::Left(future.with_context(trace)),
        None => Either::Right(future),
    };
    let timeout = route.timeout();
    match tokio::time::timeout(timeout, future).await {
        Err(_) => Err(Failure::TimedOut(timeout)),
        Ok(Err(panic)) => Err(Failure::panicked(panic.as_ref())),
        Ok(Ok(result)) => result.map_err(Failure::Task),
    }
}
