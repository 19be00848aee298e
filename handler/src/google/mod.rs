//! The one module that speaks Google: where each API lives, the credentials
//! its calls carry ([`credentials`]), the JSON error body every Google REST
//! API answers with, read into a [`Code`], and the backoff a retried call
//! follows. Nothing outside builds a Google URL or parses a Google error.

pub(crate) mod credentials;
#[cfg(feature = "server")]
pub(crate) mod duration;
pub(crate) mod pubsub;
#[cfg(feature = "server")]
pub(crate) mod pubsub_admin;
#[cfg(feature = "server")]
pub(crate) mod rest;
#[cfg(feature = "server")]
pub(crate) mod scheduler;

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

pub(crate) use self::credentials::Credentials;

/// Google's canonical error codes (`google.rpc.Code`), as the `status` field
/// of an error body names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The operation was cancelled, typically by the caller.
    Cancelled,
    /// An unknown error, or one the server did not classify.
    Unknown,
    /// The request is invalid whatever the state of the system.
    InvalidArgument,
    /// The deadline expired before the operation could complete.
    DeadlineExceeded,
    /// The resource (here: a topic never provisioned) does not exist.
    NotFound,
    /// The resource already exists.
    AlreadyExists,
    /// The caller may not do this.
    PermissionDenied,
    /// A quota or rate limit was hit.
    ResourceExhausted,
    /// The system is not in a state the operation needs.
    FailedPrecondition,
    /// A concurrency conflict: retry the whole sequence.
    Aborted,
    /// Outside a valid range.
    OutOfRange,
    /// Not implemented by this server (the emulator, say).
    Unimplemented,
    /// An internal error of the server.
    Internal,
    /// The service is unavailable for now.
    Unavailable,
    /// Unrecoverable data loss.
    DataLoss,
    /// The request has no valid credentials.
    Unauthenticated,
}

impl Code {
    const ALL: [(Code, &'static str); 16] = [
        (Self::Cancelled, "CANCELLED"),
        (Self::Unknown, "UNKNOWN"),
        (Self::InvalidArgument, "INVALID_ARGUMENT"),
        (Self::DeadlineExceeded, "DEADLINE_EXCEEDED"),
        (Self::NotFound, "NOT_FOUND"),
        (Self::AlreadyExists, "ALREADY_EXISTS"),
        (Self::PermissionDenied, "PERMISSION_DENIED"),
        (Self::ResourceExhausted, "RESOURCE_EXHAUSTED"),
        (Self::FailedPrecondition, "FAILED_PRECONDITION"),
        (Self::Aborted, "ABORTED"),
        (Self::OutOfRange, "OUT_OF_RANGE"),
        (Self::Unimplemented, "UNIMPLEMENTED"),
        (Self::Internal, "INTERNAL"),
        (Self::Unavailable, "UNAVAILABLE"),
        (Self::DataLoss, "DATA_LOSS"),
        (Self::Unauthenticated, "UNAUTHENTICATED"),
    ];

    /// The name Google writes, e.g. `UNAVAILABLE`.
    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(code, _)| *code == self).map_or("UNKNOWN", |(_, name)| name)
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, known)| *known == name).map(|(code, _)| *code)
    }

    /// What an HTTP status alone says, for an answer without an error body
    /// (a proxy's 503, say): Google's own mapping of codes to statuses, read
    /// backwards where it is not ambiguous.
    fn from_http(status: u16) -> Self {
        match status {
            400 => Self::InvalidArgument,
            401 => Self::Unauthenticated,
            403 => Self::PermissionDenied,
            404 => Self::NotFound,
            429 => Self::ResourceExhausted,
            499 => Self::Cancelled,
            501 => Self::Unimplemented,
            503 => Self::Unavailable,
            504 => Self::DeadlineExceeded,
            500..=599 => Self::Internal,
            _ => Self::Unknown,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Google API's refusal: its HTTP status, its code and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status of the answer.
    pub http: u16,
    /// The code the error body names, or the one the HTTP status implies.
    pub code: Code,
    /// Google's message, or the start of the body when it had none.
    pub message: String,
    /// True when the answer had a Google error body: a bare 503 from a proxy
    /// is retried where the same code in a body might not be.
    pub has_body: bool,
}

/// `{"error": {"code": 404, "message": "...", "status": "NOT_FOUND"}}`.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
}

impl ApiError {
    /// Reads an error answer's body, whatever shape it has.
    pub(crate) fn read(http: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(ErrorBody { error }) => {
                let code = Code::parse(&error.status).unwrap_or_else(|| Code::from_http(http));
                Self { http, code, message: error.message, has_body: true }
            }
            Err(_) => {
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_owned();
                let message = if text.is_empty() { format!("HTTP {http} without a body") } else { text };
                Self { http, code: Code::from_http(http), message, has_body: false }
            }
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (HTTP {}): {}", self.code, self.http, self.message)
    }
}

/// Why a call to a Google API did not get an answer it could use.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum CallError {
    /// The API answered with an error.
    #[error("{0}")]
    Api(ApiError),
    /// No answer: the connection failed or broke.
    #[error("{0}")]
    Transport(String),
    /// No answer within the time the call had left.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// No access token could be had.
    #[error("no access token: {0}")]
    Credentials(String),
}

#[cfg(feature = "server")]
impl CallError {
    /// The code of Google's answer, if there was one.
    pub(crate) fn code(&self) -> Option<Code> {
        match self {
            Self::Api(api) => Some(api.code),
            _ => None,
        }
    }
}

impl CallError {
    /// A transport error with every cause reqwest gives, on one line.
    pub(crate) fn transport(error: &reqwest::Error) -> Self {
        Self::Transport(chain(error))
    }
}

/// One request to a Google API, `body` sent as JSON, with `credentials`, given
/// at most `left`: the answer's body on success, else Google's error read
/// from it. What to retry is the caller's to decide.
pub(crate) async fn send(
    mut request: reqwest::RequestBuilder,
    body: Option<&Bytes>,
    credentials: &Credentials,
    left: Duration,
) -> Result<Bytes, CallError> {
    request = request.timeout(left);
    if let Some(body) = body {
        // A clone of Bytes shares the buffer: a retry copies nothing.
        request = request.header(http::header::CONTENT_TYPE, "application/json").body(body.clone());
    }
    if let Some(authorization) = credentials.authorization().await? {
        request = request.header(http::header::AUTHORIZATION, authorization);
    }
    // Whole milliseconds, rounded up: what was left reads as the deadline it was.
    let timeout = Duration::from_millis(u64::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u64::MAX));
    let failed = |error: reqwest::Error| {
        if error.is_timeout() { CallError::Timeout(timeout) } else { CallError::transport(&error) }
    };
    let response = request.send().await.map_err(failed)?;
    let status = response.status();
    let answer = response.bytes().await.map_err(failed)?;
    if status.is_success() { Ok(answer) } else { Err(CallError::Api(ApiError::read(status.as_u16(), &answer))) }
}

/// An error and its sources, joined with ": ".
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// Exponential backoff, as Google's client libraries configure it per call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) initial: Duration,
    pub(crate) multiplier: f64,
    pub(crate) max: Duration,
}

impl Backoff {
    /// The delays between attempts: initial, then each times the multiplier, up to max.
    pub(crate) fn delays(self) -> impl Iterator<Item = Duration> {
        std::iter::successors(Some(self.initial), move |delay| Some(delay.mul_f64(self.multiplier).min(self.max)))
    }
}

/// Where a Google API is reached, and as whom.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// The base URL, without a trailing slash: `https://pubsub.googleapis.com`.
    pub(crate) base_url: String,
    pub(crate) credentials: Credentials,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_of_the_body_decides_not_the_http_code() {
        let aborted = br#"{"error": {"code": 409, "message": "try again", "status": "ABORTED"}}"#;
        let exists = br#"{"error": {"code": 409, "message": "exists", "status": "ALREADY_EXISTS"}}"#;
        assert_eq!(ApiError::read(409, aborted).code, Code::Aborted);
        assert_eq!(ApiError::read(409, exists).code, Code::AlreadyExists);
        let denied =
            ApiError::read(403, br#"{"error": {"code": 403, "message": "no", "status": "PERMISSION_DENIED"}}"#);
        assert_eq!(denied.to_string(), "PERMISSION_DENIED (HTTP 403): no");
        assert!(denied.has_body);
    }

    #[test]
    fn an_answer_without_a_google_body_is_read_from_its_http_status() {
        let bare = ApiError::read(503, b"");
        assert_eq!(
            (bare.code, bare.has_body, bare.message.as_str()),
            (Code::Unavailable, false, "HTTP 503 without a body")
        );
        let proxy = ApiError::read(502, b"<html>Bad Gateway</html>");
        assert_eq!((proxy.code, proxy.message.as_str()), (Code::Internal, "<html>Bad Gateway</html>"));
        assert_eq!(ApiError::read(429, b"slow down").code, Code::ResourceExhausted);
        assert_eq!(ApiError::read(418, b"{}").code, Code::Unknown);
    }

    #[test]
    fn every_code_round_trips_its_name() {
        for (code, name) in Code::ALL {
            assert_eq!((code.as_str(), Code::parse(name)), (name, Some(code)));
        }
    }

    #[test]
    fn backoff_grows_by_its_multiplier_up_to_its_cap() {
        let backoff = Backoff { initial: Duration::from_millis(100), multiplier: 1.3, max: Duration::from_millis(200) };
        let delays: Vec<u128> = backoff.delays().take(5).map(|delay| delay.as_millis()).collect();
        assert_eq!(delays, [100, 130, 169, 200, 200]);
    }
}
