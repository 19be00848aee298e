//! The Pub/Sub push envelope
//! `{"message": {"data", "attributes", "messageId", ..}, "subscription", "deliveryAttempt"?}`,
//! as Pub/Sub pushes it or as Eventarc delivers it in a CloudEvent: decoded
//! into a [`Pushed`] message, which names the trace it continues and becomes
//! a [`Delivery`] once its route is known. The only module that knows the
//! envelope; what a malformed one answers is for `answer` to say.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use opentelemetry::Context;
use serde::Deserialize;
use whirligig_registry::{ReceivedMessage, Route};

use crate::executor::Delivery;
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

/// Why a body is not a push this endpoint can read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EnvelopeError {
    #[error("CloudEvents specversion {0:?} is not 1.0")]
    SpecVersion(String),
    #[error("a CloudEvent of type {0:?}; expected {MESSAGE_PUBLISHED}")]
    EventType(String),
    #[error("not a Pub/Sub push envelope: {0}")]
    NotPush(serde_json::Error),
    #[error("not a CloudEvent of a Pub/Sub message: {0}")]
    NotEvent(serde_json::Error),
    #[error("the message has no data")]
    NoData,
    #[error("data is not base64: {0}")]
    NotBase64(base64::DecodeError),
}

impl Wrapping {
    /// Read from the headers, before the body: a binary CloudEvent that does
    /// not carry a Pub/Sub message is refused unread.
    pub(crate) fn of(headers: &HeaderMap) -> Result<Self, EnvelopeError> {
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

fn check_event(version: &str, kind: &str) -> Result<(), EnvelopeError> {
    if version != "1.0" {
        return Err(EnvelopeError::SpecVersion(version.to_owned()));
    }
    if kind != MESSAGE_PUBLISHED {
        return Err(EnvelopeError::EventType(kind.to_owned()));
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

/// A pushed message, its data decoded from base64.
#[derive(Debug)]
pub(crate) struct Pushed<'a> {
    envelope: PushEnvelope<'a>,
    data: Vec<u8>,
}

impl<'a> Pushed<'a> {
    /// The envelope in `body` and its message's data, or what is wrong with them.
    pub(crate) fn decode(wrapping: Wrapping, body: &'a [u8]) -> Result<Self, EnvelopeError> {
        let envelope = match wrapping {
            Wrapping::Push | Wrapping::CloudEventBinary => {
                serde_json::from_slice(body).map_err(EnvelopeError::NotPush)?
            }
            Wrapping::CloudEventStructured => {
                let event: StructuredEvent<'_> = serde_json::from_slice(body).map_err(EnvelopeError::NotEvent)?;
                check_event(&event.specversion, &event.kind)?;
                event.data
            }
        };
        match STANDARD.decode(envelope.message.data.as_bytes()) {
            Ok(data) if !data.is_empty() => Ok(Self { envelope, data }),
            Ok(_) => Err(EnvelopeError::NoData),
            Err(error) => Err(EnvelopeError::NotBase64(error)),
        }
    }

    /// Pub/Sub's id of the message.
    pub(crate) fn message_id(&self) -> &str {
        &self.envelope.message.message_id
    }

    /// The task message, as published.
    pub(crate) fn data(&self) -> &[u8] {
        &self.data
    }

    /// The trace the publisher was in, if the message names a valid one.
    pub(crate) fn trace_context(&self) -> Option<Context> {
        let attributes = self.envelope.message.attributes.as_ref()?;
        let traceparent = attributes.traceparent.as_ref().or(attributes.googclient_traceparent.as_ref())?;
        propagation::from_traceparent(traceparent, attributes.tracestate.as_deref())
    }

    /// The delivery of `message`, this push's data, to `route`. Its span is
    /// a child of the request's.
    pub(crate) fn delivery<'d>(&'d self, route: &'d Route, message: &'d ReceivedMessage<'d>) -> Delivery<'d> {
        let message_id = self.message_id();
        Delivery {
            route,
            task_id: message.execution_id(message_id),
            arguments: message.arguments(),
            message_id: Some(message_id),
            subscription: self.envelope.subscription.as_deref(),
            delivery_attempt: self.envelope.delivery_attempt,
            publish_time: self.envelope.message.publish_time.as_deref(),
            enqueued_at: message.enqueued_at(),
            job: None,
            lease: route.ack_deadline(),
            trace_parent: None,
        }
    }
}
