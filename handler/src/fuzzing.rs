//! Entry points for the cargo fuzz targets in `handler/fuzz` into code that
//! is otherwise private: the pure part of a push, from its headers and body
//! to the delivery the executor would get. Built only with the `fuzzing`
//! feature; not an API.

use http::{HeaderMap, HeaderName, HeaderValue};
use whirligig_registry::{ReceivedMessage, Registry};

use crate::push::{Pushed, Wrapping};

/// How far a push got before it was refused, or `Delivered` when nothing refused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// The headers name a CloudEvent this endpoint does not take.
    Headers,
    /// The body is not an envelope of that wrapping, or its data not base64.
    Envelope,
    /// The data is not a task message.
    Payload,
    /// No route has the message's task name.
    Route,
    /// The arguments do not fit the task.
    Arguments,
    /// A delivery for the executor, under a non-empty execution id.
    Delivered,
}

/// A header map of the pairs that are a valid name and value; the rest are
/// dropped, as hyper would have refused them before the endpoint saw them.
pub fn headers<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
    }
    headers
}

/// What the endpoint makes of a push before it touches the store: the
/// wrapping the headers name, the envelope, the payload, the route and the
/// arguments checked against it. Every refusal's text is built, as the
/// endpoint would log it.
pub fn push(registry: &Registry, headers: &HeaderMap, body: &[u8]) -> Reached {
    let wrapping = match Wrapping::of(headers) {
        Ok(wrapping) => wrapping,
        Err(error) => return refused(Reached::Headers, &error),
    };
    let pushed = match Pushed::decode(wrapping, body) {
        Ok(pushed) => pushed,
        Err(error) => return refused(Reached::Envelope, &error),
    };
    let _trace = pushed.trace_context();
    let message = match ReceivedMessage::parse(pushed.data()) {
        Ok(message) => message,
        Err(error) => return refused(Reached::Payload, &error),
    };
    let route = match registry.find(message.task_name()) {
        Ok(route) => route,
        Err(error) => return refused(Reached::Route, &error),
    };
    if let Err(error) = route.check_arguments(&message.arguments()) {
        return refused(Reached::Arguments, &error);
    }
    let delivery = pushed.delivery(route, &message);
    assert!(!delivery.task_id.is_empty(), "an execution id is never empty");
    Reached::Delivered
}

fn refused(reached: Reached, error: &dyn std::fmt::Display) -> Reached {
    let _text = error.to_string();
    reached
}
