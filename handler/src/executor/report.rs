//! What a delivery tells an operator: its span, an OpenTelemetry consumer
//! span named `{task} process` under the messaging conventions (internal for
//! a job), and one log line for its outcome inside it. The executor records
//! the attempt and any failure as it learns them, then what its caller
//! answered, and closes the span.

use std::time::Instant;

use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use whirligig_registry::Retry;

use super::{Delivery, Outcome};
use crate::telemetry::propagation;

/// What a caller makes of an outcome: for a push, the status it answers,
/// which the delivery's span records.
pub(crate) trait Reply {
    /// The HTTP status answered, if the delivery came over HTTP.
    fn status(&self) -> Option<u16>;
}

/// The span of `delivery`: a child of the current span (a push's request),
/// or of the delivery's own trace parent (a job's `TRACEPARENT`) when it has one.
pub(super) fn span(delivery: &Delivery<'_>) -> Span {
    let pushed = delivery.message_id.is_some();
    let span = tracing::info_span!(
        "task",
        otel.name = format_args!("{} process", delivery.route.name()),
        otel.kind = if pushed { "consumer" } else { "internal" },
        otel.status_code = Empty,
        otel.status_description = Empty,
        whirligig.task.name = delivery.route.name(),
        whirligig.task.id = delivery.task_id,
        whirligig.task.attempt = Empty,
        whirligig.task.outcome = Empty,
        messaging.message.id = delivery.message_id,
        messaging.destination.subscription.name = delivery.subscription,
        messaging.gcp_pubsub.message.delivery_attempt = delivery.delivery_attempt,
        whirligig.message.publish_time = delivery.publish_time,
        error.type = Empty,
        http.response.status_code = Empty,
    );
    if pushed {
        // Constants: for the exporter only, not for every log line.
        span.set_attribute("messaging.system", "gcp_pubsub");
        span.set_attribute("messaging.operation.name", "process");
        span.set_attribute("messaging.operation.type", "process");
    }
    if let Some(parent) = &delivery.trace_parent {
        propagation::continue_trace(&span, None, Some(parent.clone()));
    }
    span
}

pub(super) fn attempt(span: &Span, attempt: u32) {
    span.record("whirligig.task.attempt", attempt);
}

/// Marks `span` failed: status Error with `description`, and `error.type`.
pub(super) fn failed(span: &Span, kind: &str, description: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", description);
    span.record("error.type", kind);
}

/// Records the outcome and, for a push, the status answered; logs the
/// delivery's one line; closes the span.
pub(super) fn close(span: Span, outcome: &Outcome, status: Option<u16>, started: Instant) {
    span.record("whirligig.task.outcome", outcome.label());
    if let Some(status) = status {
        span.record("http.response.status_code", status);
    }
    if let Outcome::Store(error) = outcome {
        failed(&span, error.kind(), &error.to_string());
    }
    let duration_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
    span.in_scope(|| log(outcome, duration_ms));
}

impl Outcome {
    /// One word for the span and the log: `succeeded`, `failed`, `duplicate`
    /// (an earlier delivery ran or is running it), `skipped` (kill switch) or
    /// `rejected` (its arguments do not fit, or no attempts were left).
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Duplicate | Self::AlreadyFailed | Self::InProgress => "duplicate",
            Self::Skipped { .. } => "skipped",
            Self::Exhausted { .. } | Self::BadArguments(_) => "rejected",
            Self::Failed { .. } | Self::Store(_) => "failed",
        }
    }
}

/// The delivery's line; the span around it names the task, id, attempt,
/// message, outcome and status. Warnings also become events of the span,
/// so none carries argument values: those stay in the execution's row.
fn log(outcome: &Outcome, duration_ms: f64) {
    match outcome {
        Outcome::Succeeded => tracing::info!(duration_ms, "task succeeded"),
        Outcome::Duplicate => tracing::info!(duration_ms, "duplicate of a successful execution: not run again"),
        Outcome::AlreadyFailed => tracing::info!(duration_ms, "the task already failed permanently: not run again"),
        Outcome::Skipped { variable } => {
            tracing::info!(duration_ms, variable, "kill switch off: acknowledged without running")
        }
        Outcome::InProgress => tracing::info!(duration_ms, "another delivery holds the lease"),
        Outcome::Exhausted { attempts } => tracing::warn!(duration_ms, attempts, "max_attempts reached: not run again"),
        Outcome::BadArguments(error) => {
            let part = error.part().to_string();
            tracing::warn!(duration_ms, part, "arguments do not fit the task (the execution's error_message says why)")
        }
        Outcome::Failed { message, retry } => {
            let retry = *retry == Retry::Retryable;
            tracing::warn!(duration_ms, error = %message, retry, "task failed")
        }
        Outcome::Store(error) => tracing::warn!(duration_ms, %error, "the store could not serve this delivery"),
    }
}
