//! Every status the endpoint answers, on one screen: a [`Refusal`] for a
//! request turned away before any task runs, and [`answer`] for the outcome
//! of a delivery. Pub/Sub acknowledges 200 only; a 400 comes back cheaply
//! until the subscription's dead-letter policy parks it, and every other
//! status is retried with backoff. Nothing here logs: the pipeline does.

use std::borrow::Cow;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use whirligig_registry::{MessageError, Retry, UnknownTask};

use crate::app::{BODY_READ_TIMEOUT, MAX_BODY_BYTES};
use crate::auth::{AuthError, Rejection};
use crate::executor::{Outcome, Reply};
use crate::push::EnvelopeError;
use crate::store::StoreError;

/// Why a request was answered without running a task.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// No such path.
    NotFound,
    /// A known path, asked with another method.
    MethodNotAllowed,
    /// `/readyz`: the store cannot reach its database.
    NotReady(StoreError),
    /// The push's token failed a check.
    Forbidden(Rejection),
    /// No key is known yet to check a token's signature with.
    KeysUnavailable,
    /// The instance is shutting down.
    Draining,
    /// The body is over [`MAX_BODY_BYTES`].
    TooLarge,
    /// The body could not be read to its end.
    Unreadable(String),
    /// The body did not arrive within [`BODY_READ_TIMEOUT`] of the head.
    BodyTimeout,
    /// Bodies already being read hold all of
    /// [`BODY_BYTES_IN_FLIGHT`](crate::app::BODY_BYTES_IN_FLIGHT); this one is not read.
    BodiesAtCapacity,
    /// The body is not a Pub/Sub push, nor a CloudEvent of one.
    Envelope(EnvelopeError),
    /// The message's data is not a task message.
    Message(MessageError),
    /// No route has the message's task name (logged, never echoed).
    UnknownTask(UnknownTask),
}

impl Refusal {
    /// The status and the line that says why.
    pub(crate) fn answer(&self) -> Answer {
        use StatusCode as Code;
        match self {
            Self::NotFound => Answer::new(Code::NOT_FOUND, "not found"),
            Self::MethodNotAllowed => Answer::new(Code::METHOD_NOT_ALLOWED, "method not allowed"),
            Self::NotReady(_) => Answer::new(Code::SERVICE_UNAVAILABLE, "store unreachable"),
            Self::Forbidden(_) => Answer::new(Code::FORBIDDEN, "forbidden"),
            Self::KeysUnavailable => Answer::new(Code::SERVICE_UNAVAILABLE, "cannot verify tokens yet; retry"),
            Self::Draining => Answer::new(Code::SERVICE_UNAVAILABLE, "shutting down; retry"),
            Self::TooLarge => Answer::new(Code::PAYLOAD_TOO_LARGE, format!("body over {MAX_BODY_BYTES} bytes")),
            Self::Unreadable(error) => Answer::bad_request(format_args!("body could not be read: {error}")),
            Self::BodyTimeout => Answer::new(
                Code::REQUEST_TIMEOUT,
                format!("body not received within {} s", BODY_READ_TIMEOUT.as_secs()),
            ),
            Self::BodiesAtCapacity => Answer {
                retry_after: Some(BODIES_RETRY_AFTER),
                ..Answer::new(Code::SERVICE_UNAVAILABLE, "too many bodies being read; retry")
            },
            Self::Envelope(error) => Answer::bad_request(error),
            Self::Message(error) => Answer::bad_request(error),
            Self::UnknownTask(_) => Answer::bad_request("unknown task"),
        }
    }
}

impl From<AuthError> for Refusal {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Forbidden(rejection) => Self::Forbidden(rejection),
            AuthError::KeysUnavailable => Self::KeysUnavailable,
        }
    }
}

/// Seconds a push refused unread for want of room among the bodies being
/// read is told to wait: most bodies arrive in well under a second.
const BODIES_RETRY_AFTER: u32 = 1;

/// Seconds a push refused for an unreachable database is told to wait
/// (`Retry-After`): Pub/Sub keeps to its own backoff, other callers may not.
const DATABASE_RETRY_AFTER: u32 = 5;

/// The status for each outcome of a delivery, per the status table.
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
        Outcome::Store(StoreError::Unavailable { .. }) => Answer {
            retry_after: Some(DATABASE_RETRY_AFTER),
            ..Answer::new(Code::SERVICE_UNAVAILABLE, "database unavailable; retry")
        },
        Outcome::Store(StoreError::Rejected { reason, .. }) => {
            Answer::bad_request(format_args!("the database rejected the message: {reason}"))
        }
        Outcome::Store(StoreError::Database { .. }) => {
            Answer::new(Code::INTERNAL_SERVER_ERROR, "database error; retry")
        }
    }
}

/// What the endpoint answers: a status and one line saying why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Cow<'static, str>,
    /// Seconds, for `Retry-After` on a 429 or 503.
    pub(crate) retry_after: Option<u32>,
}

/// `/healthz`: the process serves.
pub(crate) const ALIVE: Answer = Answer::ok("ok");

/// `/readyz`: the store reaches its database.
pub(crate) const READY: Answer = Answer::ok("ready");

/// A request whose handling itself failed: the executor catches task panics,
/// so this is the last line of defence.
pub(crate) const INTERNAL_ERROR: Answer = Answer {
    status: StatusCode::INTERNAL_SERVER_ERROR,
    body: Cow::Borrowed("internal error; retry"),
    retry_after: None,
};

impl Answer {
    fn new(status: StatusCode, body: impl Into<Cow<'static, str>>) -> Self {
        Self { status, body: body.into(), retry_after: None }
    }

    const fn ok(body: &'static str) -> Self {
        Self { status: StatusCode::OK, body: Cow::Borrowed(body), retry_after: None }
    }

    fn bad_request(reason: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, format!("bad request: {reason}"))
    }

    /// The answer as plain text, with `Retry-After` where it has one.
    pub(crate) fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(format!("{}\n", self.body))));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}

impl Reply for Answer {
    fn status(&self) -> Option<u16> {
        Some(self.status.as_u16())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use whirligig_registry::{ArgumentError, RawArguments, Registry, TaskContext, TaskRoute};

    use super::*;

    fn argument_error() -> ArgumentError {
        let route = TaskRoute::new("t", |_: TaskContext| async {});
        let registry = Registry::builder().route(route).build().unwrap();
        let args: &serde_json::value::RawValue = serde_json::from_str("[1]").unwrap();
        let kwargs: &serde_json::value::RawValue = serde_json::from_str("{}").unwrap();
        let arguments = RawArguments::new(args, kwargs).unwrap();
        registry.get("t").unwrap().call(TaskContext::new("t"), &arguments).err().unwrap()
    }

    #[test]
    fn every_outcome_maps_to_the_status_table() {
        let status = |outcome: Outcome| answer(&outcome).status.as_u16();
        let store = |error: StoreError| status(Outcome::Store(error));
        let reason = || "x".to_owned();
        assert_eq!(status(Outcome::Succeeded), 200);
        assert_eq!(status(Outcome::Duplicate), 200);
        assert_eq!(status(Outcome::AlreadyFailed), 400);
        assert_eq!(status(Outcome::BadArguments(argument_error())), 400);
        assert_eq!(status(Outcome::Skipped { variable: "ENABLE_X".into() }), 200);
        assert_eq!(status(Outcome::InProgress), 409);
        assert_eq!(status(Outcome::Exhausted { attempts: 3 }), 400);
        assert_eq!(status(Outcome::Failed { message: reason(), retry: Retry::Permanent }), 400);
        assert_eq!(status(Outcome::Failed { message: reason(), retry: Retry::Retryable }), 500);
        assert_eq!(store(StoreError::PoolTimeout(Duration::ZERO)), 429);
        assert_eq!(store(StoreError::Refused { reason: reason(), source: None }), 429);
        assert_eq!(store(StoreError::Unavailable { reason: reason(), source: None }), 503);
        assert_eq!(store(StoreError::Rejected { reason: reason(), source: None }), 400);
        assert_eq!(store(StoreError::Database { reason: reason(), source: None }), 500);
        let busy = answer(&Outcome::Store(StoreError::PoolTimeout(Duration::ZERO)));
        assert_eq!(busy.retry_after, Some(1));
        let down = answer(&Outcome::Store(StoreError::Unavailable { reason: reason(), source: None }));
        assert_eq!(down.retry_after, Some(DATABASE_RETRY_AFTER), "a database that is down says when to come back");
    }

    #[test]
    fn every_refusal_has_its_status() {
        let status = |refusal: Refusal| refusal.answer().status.as_u16();
        assert_eq!(status(Refusal::NotFound), 404);
        assert_eq!(status(Refusal::MethodNotAllowed), 405);
        assert_eq!(status(Refusal::NotReady(StoreError::PoolTimeout(Duration::ZERO))), 503);
        assert_eq!(status(Refusal::KeysUnavailable), 503);
        assert_eq!(status(Refusal::Draining), 503);
        assert_eq!(status(Refusal::TooLarge), 413);
        assert_eq!(status(Refusal::Unreadable("reset".into())), 400);
        assert_eq!(status(Refusal::BodyTimeout), 408);
        assert_eq!(status(Refusal::BodiesAtCapacity), 503);
        assert_eq!(Refusal::BodiesAtCapacity.answer().retry_after, Some(BODIES_RETRY_AFTER));
        assert_eq!(status(Refusal::Envelope(EnvelopeError::NoData)), 400);
        assert_eq!(status(Refusal::Message(MessageError::EmptyTaskName)), 400);
        let name = "rm_rf_everything".to_owned();
        let unknown = Refusal::UnknownTask(UnknownTask { name, closest: None, known: Vec::new() }).answer();
        assert_eq!((unknown.status.as_u16(), &*unknown.body), (400, "bad request: unknown task"), "never echoed");
    }
}
