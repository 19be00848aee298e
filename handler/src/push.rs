//! The Pub/Sub push endpoint: decodes the envelope
//! `{"message": {"data", "attributes", "messageId", ..}, "subscription", "deliveryAttempt"?}`,
//! hands the payload to the executor, and turns the outcome into the status
//! Pub/Sub acts on. The only module that knows the envelope, and [`answer`]
//! the only place an outcome becomes a status.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::StatusCode;
use serde::Deserialize;
use whirligig_registry::{ReceivedMessage, Registry};

use crate::executor::{Delivery, Executor, Outcome};
use crate::store::{ExecutionStore, StoreError};

/// What Pub/Sub posts. Fields it sends twice (`message_id` beside
/// `messageId`) are read once; unknown fields are ignored.
#[derive(Debug, Deserialize)]
struct PushEnvelope<'a> {
    #[serde(borrow)]
    message: PushedMessage<'a>,
    #[serde(default)]
    subscription: Option<String>,
    #[serde(default, rename = "deliveryAttempt")]
    delivery_attempt: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct PushedMessage<'a> {
    #[serde(default, borrow)]
    data: Cow<'a, str>,
    #[serde(rename = "messageId")]
    message_id: String,
}

/// What the endpoint answers: a status and one line saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Cow<'static, str>,
    /// Seconds, for `Retry-After` on a 429.
    pub(crate) retry_after: Option<u32>,
}

impl Answer {
    pub(crate) fn new(status: StatusCode, body: impl Into<Cow<'static, str>>) -> Self {
        Self { status, body: body.into(), retry_after: None }
    }

    fn bad_request(reason: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, format!("bad request: {reason}"))
    }
}

/// Handles one push body.
pub(crate) async fn push<S: ExecutionStore>(registry: &Registry, executor: &Executor<S>, body: &[u8]) -> Answer {
    let envelope: PushEnvelope<'_> = match serde_json::from_slice(body) {
        Ok(envelope) => envelope,
        Err(error) => return rejected(None, Answer::bad_request(format_args!("not a Pub/Sub push envelope: {error}"))),
    };
    let message_id = envelope.message.message_id.as_str();
    let data = match STANDARD.decode(envelope.message.data.as_bytes()) {
        Ok(data) if !data.is_empty() => data,
        Ok(_) => return rejected(Some(message_id), Answer::bad_request("the message has no data")),
        Err(error) => {
            return rejected(Some(message_id), Answer::bad_request(format_args!("data is not base64: {error}")));
        }
    };
    let message = match ReceivedMessage::parse(&data) {
        Ok(message) => message,
        Err(error) => return rejected(Some(message_id), Answer::bad_request(error)),
    };
    let Some(route) = registry.get(message.task_name()) else {
        // The name is logged, never echoed: the body goes back to whoever posted.
        tracing::warn!(message_id, task_name = message.task_name(), "unknown task: acknowledged without running");
        return Answer::bad_request("unknown task");
    };
    let delivery = Delivery {
        route,
        task_id: message.execution_id(message_id),
        arguments: message.arguments(),
        message_id: Some(message_id),
        enqueued_at: message.enqueued_at(),
        job: None,
    };
    let task_id = delivery.task_id.clone();
    let outcome = executor.execute(delivery).await;
    let answer = answer(&outcome);
    log(
        &outcome,
        &answer,
        route.name(),
        &task_id,
        message_id,
        envelope.delivery_attempt,
        envelope.subscription.as_deref(),
    );
    answer
}

fn rejected(message_id: Option<&str>, answer: Answer) -> Answer {
    tracing::warn!(message_id, reason = %answer.body, "malformed push: acknowledged without running");
    answer
}

/// The status for each outcome, per the status table: 200 and 400 make
/// Pub/Sub acknowledge, everything else makes it retry.
pub(crate) fn answer(outcome: &Outcome) -> Answer {
    use StatusCode as Code;
    match outcome {
        Outcome::Succeeded => Answer::new(Code::OK, "ok"),
        Outcome::Duplicate => Answer::new(Code::OK, "ok: already succeeded, not run again"),
        Outcome::Skipped { variable } => Answer::new(Code::OK, format!("ok: skipped, kill switch {variable} is off")),
        Outcome::InProgress => Answer::new(Code::CONFLICT, "another delivery of this task is running"),
        Outcome::Exhausted { attempts } => {
            Answer::bad_request(format_args!("max_attempts reached after {attempts} attempts"))
        }
        Outcome::BadArguments(error) => Answer::bad_request(error),
        Outcome::Failed { retry: false, message } => {
            Answer::bad_request(format_args!("task failed permanently: {message}"))
        }
        Outcome::Failed { retry: true, .. } => Answer::new(Code::INTERNAL_SERVER_ERROR, "task failed; retry"),
        Outcome::Store(StoreError::PoolTimeout(_) | StoreError::Refused(_)) => {
            Answer { retry_after: Some(1), ..Answer::new(Code::TOO_MANY_REQUESTS, "database at capacity; retry") }
        }
        Outcome::Store(StoreError::Unavailable(_)) => {
            Answer::new(Code::SERVICE_UNAVAILABLE, "database unavailable; retry")
        }
        Outcome::Store(StoreError::Rejected(reason)) => {
            Answer::bad_request(format_args!("the database rejected the message: {reason}"))
        }
        Outcome::Store(StoreError::Database(_)) => Answer::new(Code::INTERNAL_SERVER_ERROR, "database error; retry"),
    }
}

fn log(
    outcome: &Outcome,
    answer: &Answer,
    task_name: &str,
    task_id: &str,
    message_id: &str,
    delivery_attempt: Option<u32>,
    subscription: Option<&str>,
) {
    let status = answer.status.as_u16();
    macro_rules! event {
        ($level:ident, $($detail:tt)*) => {
            tracing::$level!(task_name, task_id, message_id, delivery_attempt, subscription, status, $($detail)*)
        };
    }
    match outcome {
        Outcome::Succeeded => event!(info, "task succeeded"),
        Outcome::Duplicate => event!(info, "duplicate of a successful execution: not run again"),
        Outcome::Skipped { variable } => event!(info, variable, "kill switch off: acknowledged without running"),
        Outcome::InProgress => event!(info, "another delivery holds the lease"),
        Outcome::Exhausted { attempts } => event!(warn, attempts, "max_attempts reached: acknowledged"),
        Outcome::BadArguments(error) => event!(warn, %error, "arguments do not fit the task"),
        Outcome::Failed { message, retry } => event!(warn, error = %message, retry, "task failed"),
        Outcome::Store(error) => event!(warn, %error, "store unavailable for this delivery"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_maps_to_the_status_table() {
        let status = |outcome: Outcome| answer(&outcome).status.as_u16();
        assert_eq!(status(Outcome::Succeeded), 200);
        assert_eq!(status(Outcome::Duplicate), 200);
        assert_eq!(status(Outcome::Skipped { variable: "ENABLE_X".into() }), 200);
        assert_eq!(status(Outcome::InProgress), 409);
        assert_eq!(status(Outcome::Exhausted { attempts: 3 }), 400);
        assert_eq!(status(Outcome::Failed { message: "x".into(), retry: false }), 400);
        assert_eq!(status(Outcome::Failed { message: "x".into(), retry: true }), 500);
        assert_eq!(status(Outcome::Store(StoreError::PoolTimeout(std::time::Duration::ZERO))), 429);
        assert_eq!(status(Outcome::Store(StoreError::Refused("too many clients".into()))), 429);
        assert_eq!(status(Outcome::Store(StoreError::Unavailable("refused".into()))), 503);
        assert_eq!(status(Outcome::Store(StoreError::Rejected("\\u0000".into()))), 400);
        assert_eq!(status(Outcome::Store(StoreError::Database("x".into()))), 500);
        let busy = answer(&Outcome::Store(StoreError::PoolTimeout(std::time::Duration::ZERO)));
        assert_eq!(busy.retry_after, Some(1));
    }
}
