//! The Pub/Sub push endpoint: decodes the envelope
//! `{"message": {"data", "attributes", "messageId", ..}, "subscription", "deliveryAttempt"?}`,
//! as Pub/Sub pushes it or as Eventarc delivers it in a CloudEvent, hands the
//! payload to the executor, and turns the outcome into the status Pub/Sub
//! acts on. The only module that knows the envelope, and [`answer`]
//! the only place an outcome becomes a status. The request's span continues
//! the trace named in the message's attributes, or else the caller's.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, StatusCode};
use opentelemetry::Context;
use serde::Deserialize;
use tracing::{Instrument as _, Span};
use whirligig_registry::{ReceivedMessage, Registry, Retry, Route};

use crate::executor::{Delivery, Executor, Outcome, Reply};
use crate::store::{ExecutionStore, StoreError};
use crate::telemetry::propagation;

/// The CloudEvent type Eventarc gives a Pub/Sub message.
const MESSAGE_PUBLISHED: &str = "google.cloud.pubsub.topic.v1.messagePublished";

/// The media type of a structured CloudEvent (parameters may follow it).
const STRUCTURED_EVENT: &str = "application/cloudevents+json";

/// How a message arrives: as Pub/Sub pushes it, or in a CloudEvent from
/// Eventarc, whose data is the same envelope, either as the body with the
/// event's attributes in `ce-*` headers (binary mode) or as `data` in a JSON
/// event (structured mode, `application/cloudevents+json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wrapping {
    Push,
    CloudEventBinary,
    CloudEventStructured,
}

impl Wrapping {
    /// Read from the headers, before the body: a binary CloudEvent that does
    /// not carry a Pub/Sub message is refused unread.
    pub(crate) fn of(headers: &HeaderMap) -> Result<Self, Answer> {
        let text = |name: &str| headers.get(name).map(|value| value.to_str().unwrap_or_default());
        if let Some(version) = text("ce-specversion") {
            check_event(version, text("ce-type").unwrap_or_default())?;
            return Ok(Self::CloudEventBinary);
        }
        let structured = text("content-type").is_some_and(|kind| {
            kind.get(..STRUCTURED_EVENT.len()).is_some_and(|prefix| prefix.eq_ignore_ascii_case(STRUCTURED_EVENT))
        });
        Ok(if structured { Self::CloudEventStructured } else { Self::Push })
    }
}

fn check_event(version: &str, kind: &str) -> Result<(), Answer> {
    if version != "1.0" {
        return Err(Answer::bad_request(format_args!("CloudEvents specversion {version:?} is not 1.0")));
    }
    if kind != MESSAGE_PUBLISHED {
        return Err(Answer::bad_request(format_args!("a CloudEvent of type {kind:?}; expected {MESSAGE_PUBLISHED}")));
    }
    Ok(())
}

/// A structured CloudEvent: its attributes and, as `data`, the envelope.
#[derive(Debug, Deserialize)]
struct StructuredEvent<'a> {
    #[serde(borrow)]
    specversion: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    data: PushEnvelope<'a>,
}

/// What Pub/Sub posts. Fields it sends twice (`message_id` beside
/// `messageId`) are read once; unknown fields are ignored.
#[derive(Debug, Deserialize)]
pub(crate) struct PushEnvelope<'a> {
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
    #[serde(rename = "messageId", borrow)]
    message_id: Cow<'a, str>,
    #[serde(default, rename = "publishTime", borrow)]
    publish_time: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    attributes: Option<TraceAttributes<'a>>,
}

/// The message attributes that carry a trace. `traceparent` is what
/// whirligig's enqueue writes; `googclient_traceparent` is what Google's
/// Pub/Sub client libraries write when their tracing is on.
#[derive(Debug, Deserialize)]
struct TraceAttributes<'a> {
    #[serde(default, borrow)]
    traceparent: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tracestate: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    googclient_traceparent: Option<Cow<'a, str>>,
}

impl PushEnvelope<'_> {
    pub(crate) fn message_id(&self) -> &str {
        &self.message.message_id
    }
}

impl PushedMessage<'_> {
    /// The trace the publisher was in, if the message names a valid one.
    fn trace_context(&self) -> Option<Context> {
        let attributes = self.attributes.as_ref()?;
        let traceparent = attributes.traceparent.as_ref().or(attributes.googclient_traceparent.as_ref())?;
        propagation::from_traceparent(traceparent, attributes.tracestate.as_deref())
    }
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

/// Handles one push body in the request's `span`, not yet started, which
/// continues the message's trace if it names one, else `caller`'s.
pub(crate) async fn push<S: ExecutionStore>(
    registry: &Registry,
    executor: &Executor<S>,
    (wrapping, body): (Wrapping, &[u8]),
    span: &Span,
    caller: Option<Context>,
) -> Answer {
    let (envelope, data) = match decode(wrapping, body) {
        Ok(decoded) => decoded,
        Err(answer) => {
            propagation::continue_trace(span, None, caller);
            span.in_scope(|| tracing::warn!(reason = %answer.body, "malformed push: acknowledged without running"));
            return answer;
        }
    };
    propagation::continue_trace(span, envelope.message.trace_context(), caller);
    deliver(registry, executor, &envelope, &data).instrument(span.clone()).await
}

/// The task message in `data` and its route, or the 400 (logged) when the
/// message is malformed or names no route.
pub(crate) fn routed<'a, 'r>(
    registry: &'r Registry,
    message_id: &str,
    data: &'a [u8],
) -> Result<(ReceivedMessage<'a>, &'r Route), Answer> {
    let message = ReceivedMessage::parse(data).map_err(|error| {
        tracing::warn!(message_id, %error, "malformed task message: acknowledged without running");
        Answer::bad_request(error)
    })?;
    let Some(route) = registry.get(message.task_name()) else {
        // The name is logged, never echoed: the body goes back to whoever posted.
        tracing::warn!(message_id, task_name = message.task_name(), "unknown task: acknowledged without running");
        return Err(Answer::bad_request("unknown task"));
    };
    Ok((message, route))
}

async fn deliver<S: ExecutionStore>(
    registry: &Registry,
    executor: &Executor<S>,
    envelope: &PushEnvelope<'_>,
    data: &[u8],
) -> Answer {
    let message_id = envelope.message_id();
    let (message, route) = match routed(registry, message_id, data) {
        Ok(routed) => routed,
        Err(answer) => return answer,
    };
    let delivery = Delivery {
        route,
        task_id: message.execution_id(message_id),
        arguments: message.arguments(),
        message_id: Some(message_id),
        subscription: envelope.subscription.as_deref(),
        delivery_attempt: envelope.delivery_attempt,
        publish_time: envelope.message.publish_time.as_deref(),
        enqueued_at: message.enqueued_at(),
        job: None,
        lease: route.ack_deadline(),
        trace_parent: None,
    };
    executor.execute(delivery, answer).await
}

impl Reply for Answer {
    fn status(&self) -> Option<u16> {
        Some(self.status.as_u16())
    }
}

/// The envelope and its decoded data, or the 400 that says what is wrong.
pub(crate) fn decode(wrapping: Wrapping, body: &[u8]) -> Result<(PushEnvelope<'_>, Vec<u8>), Answer> {
    let envelope = match wrapping {
        Wrapping::Push | Wrapping::CloudEventBinary => serde_json::from_slice(body)
            .map_err(|error| Answer::bad_request(format_args!("not a Pub/Sub push envelope: {error}")))?,
        Wrapping::CloudEventStructured => {
            let event: StructuredEvent<'_> = serde_json::from_slice(body)
                .map_err(|error| Answer::bad_request(format_args!("not a CloudEvent of a Pub/Sub message: {error}")))?;
            check_event(&event.specversion, &event.kind)?;
            event.data
        }
    };
    match STANDARD.decode(envelope.message.data.as_bytes()) {
        Ok(data) if !data.is_empty() => Ok((envelope, data)),
        Ok(_) => Err(Answer::bad_request("the message has no data")),
        Err(error) => Err(Answer::bad_request(format_args!("data is not base64: {error}"))),
    }
}

/// The status for each outcome, per the status table: 200 and 400 make
/// Pub/Sub acknowledge, everything else makes it retry.
pub(crate) fn answer(outcome: &Outcome) -> Answer {
    use StatusCode as Code;
    match outcome {
        Outcome::Succeeded => Answer::new(Code::OK, "ok"),
        Outcome::Duplicate => Answer::new(Code::OK, "ok: already succeeded, not run again"),
        Outcome::AlreadyFailed => Answer::bad_request("the task already failed permanently; not run again"),
        Outcome::Skipped { variable } => Answer::new(Code::OK, format!("ok: skipped, kill switch {variable} is off")),
        Outcome::InProgress => Answer::new(Code::CONFLICT, "another delivery of this task is running"),
        Outcome::Exhausted { attempts } => {
            Answer::bad_request(format_args!("max_attempts reached after {attempts} attempts"))
        }
        Outcome::BadArguments(error) => Answer::bad_request(error),
        Outcome::Failed { retry: Retry::Permanent, message } => {
            Answer::bad_request(format_args!("task failed permanently: {message}"))
        }
        Outcome::Failed { retry: Retry::Retryable, .. } => {
            Answer::new(Code::INTERNAL_SERVER_ERROR, "task failed; retry")
        }
        Outcome::Store(StoreError::PoolTimeout(_) | StoreError::Refused { .. }) => {
            Answer { retry_after: Some(1), ..Answer::new(Code::TOO_MANY_REQUESTS, "database at capacity; retry") }
        }
        Outcome::Store(StoreError::Unavailable { .. }) => {
            Answer::new(Code::SERVICE_UNAVAILABLE, "database unavailable; retry")
        }
        Outcome::Store(StoreError::Rejected { reason, .. }) => {
            Answer::bad_request(format_args!("the database rejected the message: {reason}"))
        }
        Outcome::Store(StoreError::Database { .. }) => {
            Answer::new(Code::INTERNAL_SERVER_ERROR, "database error; retry")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argument_error() -> whirligig_registry::ArgumentError {
        let route = whirligig_registry::TaskRoute::new("t", |_: whirligig_registry::TaskContext| async {});
        let registry = Registry::builder().route(route).build().unwrap();
        let args: &serde_json::value::RawValue = serde_json::from_str("[1]").unwrap();
        let kwargs: &serde_json::value::RawValue = serde_json::from_str("{}").unwrap();
        let arguments = whirligig_registry::RawArguments::new(args, kwargs).unwrap();
        let ctx = whirligig_registry::TaskContext::new("t");
        registry.get("t").unwrap().call(ctx, &arguments).err().unwrap()
    }

    #[test]
    fn every_outcome_maps_to_the_status_table() {
        let status = |outcome: Outcome| answer(&outcome).status.as_u16();
        assert_eq!(status(Outcome::Succeeded), 200);
        assert_eq!(status(Outcome::Duplicate), 200);
        assert_eq!(status(Outcome::AlreadyFailed), 400);
        let misfit = whirligig_registry::ArgumentError::clone(&argument_error());
        assert_eq!(status(Outcome::BadArguments(misfit)), 400);
        assert_eq!(status(Outcome::Skipped { variable: "ENABLE_X".into() }), 200);
        assert_eq!(status(Outcome::InProgress), 409);
        assert_eq!(status(Outcome::Exhausted { attempts: 3 }), 400);
        assert_eq!(status(Outcome::Failed { message: "x".into(), retry: Retry::Permanent }), 400);
        assert_eq!(status(Outcome::Failed { message: "x".into(), retry: Retry::Retryable }), 500);
        assert_eq!(status(Outcome::Store(StoreError::PoolTimeout(std::time::Duration::ZERO))), 429);
        let (reason, source) = ("x".to_owned(), None);
        assert_eq!(status(Outcome::Store(StoreError::Refused { reason: reason.clone(), source: None })), 429);
        assert_eq!(status(Outcome::Store(StoreError::Unavailable { reason: reason.clone(), source: None })), 503);
        assert_eq!(status(Outcome::Store(StoreError::Rejected { reason: reason.clone(), source: None })), 400);
        assert_eq!(status(Outcome::Store(StoreError::Database { reason, source })), 500);
        let busy = answer(&Outcome::Store(StoreError::PoolTimeout(std::time::Duration::ZERO)));
        assert_eq!(busy.retry_after, Some(1));
    }
}
