//! One JSON call to a Google REST API, with the credentials of its endpoint,
//! retried on the codes its kind of call may be retried on, within a
//! deadline. The admin APIs (Pub/Sub's topics and subscriptions, Cloud
//! Scheduler's jobs) are called through it; what a call means is theirs.

use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{Backoff, CallError, Code, Endpoint, send};

/// For a call without a body.
pub(crate) const NO_BODY: Option<&()> = None;

/// An answer whose content is not needed (a delete's `{}`, a created topic).
#[derive(Deserialize)]
pub(crate) struct Ignored {}

/// A NOT_FOUND answer as `None`.
pub(crate) fn not_found_is_none<T>(result: Result<T, CallError>) -> Result<Option<T>, CallError> {
    match result {
        Ok(found) => Ok(Some(found)),
        Err(error) if error.code() == Some(Code::NotFound) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Google's admin clients: 100 ms, ×1.3, at most 60 s between attempts.
const BACKOFF: Backoff = Backoff { initial: Duration::from_millis(100), multiplier: 1.3, max: Duration::from_secs(60) };

/// What a call may be retried on, as Google's generated clients configure
/// each method (`*_grpc_service_config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Reads, and Pub/Sub's subscription creates: UNKNOWN, ABORTED, UNAVAILABLE.
    Read,
    /// Pub/Sub's other writes: UNAVAILABLE only.
    Unavailable,
    /// Cloud Scheduler's reads and deletes: DEADLINE_EXCEEDED, UNAVAILABLE.
    Idempotent,
    /// Cloud Scheduler's creates, updates, pauses and resumes: never.
    Never,
}

impl Retry {
    fn codes(self) -> &'static [Code] {
        match self {
            Self::Read => &[Code::Unknown, Code::Aborted, Code::Unavailable],
            Self::Unavailable => &[Code::Unavailable],
            Self::Idempotent => &[Code::DeadlineExceeded, Code::Unavailable],
            Self::Never => &[],
        }
    }

    /// A call that got no answer counts as UNAVAILABLE, one that timed out as
    /// DEADLINE_EXCEEDED, as gRPC reports them.
    fn allows(self, error: &CallError) -> bool {
        let code = match error {
            CallError::Api(api) => api.code,
            CallError::Transport(_) => Code::Unavailable,
            CallError::Timeout(_) => Code::DeadlineExceeded,
            CallError::Credentials(_) => return false,
        };
        self.codes().contains(&code)
    }
}

/// One request, as each attempt sends it.
struct Call<'a> {
    method: &'a Method,
    url: &'a str,
    query: &'a [(&'a str, &'a str)],
    body: Option<&'a Bytes>,
}

/// A Google REST API: its endpoint and the deadline of each call.
#[derive(Debug, Clone)]
pub(crate) struct Rest {
    client: reqwest::Client,
    endpoint: Endpoint,
    deadline: Duration,
}

impl Rest {
    pub(crate) fn new(client: reqwest::Client, endpoint: Endpoint, deadline: Duration) -> Self {
        Self { client, endpoint, deadline }
    }

    /// `method` on `{base}/v1/{path}` with `body` as JSON, the answer read as `T`.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        retry: Retry,
    ) -> Result<T, CallError> {
        self.call_with_query(method, path, &[], body, retry).await
    }

    /// [`call`](Self::call) with `query` pairs, encoded (a page token may hold `+` or `/`).
    pub(crate) async fn call_with_query<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&impl Serialize>,
        retry: Retry,
    ) -> Result<T, CallError> {
        let url = format!("{}/v1/{path}", self.endpoint.base_url);
        // Serialising our own request shapes cannot fail.
        let body: Option<Bytes> = body.map(|body| serde_json::to_vec(body).unwrap_or_default().into());
        let call = Call { method: &method, url: &url, query, body: body.as_ref() };
        let answer = self.with_retries(&call, retry).await?;
        serde_json::from_slice(&answer).map_err(|error| {
            CallError::Transport(format!("{method} {path}: the answer is not what the API documents: {error}"))
        })
    }

    async fn with_retries(&self, call: &Call<'_>, retry: Retry) -> Result<Bytes, CallError> {
        let deadline = Instant::now() + self.deadline;
        let mut delays = BACKOFF.delays();
        loop {
            let error = match self.attempt(call, deadline).await {
                Ok(answer) => return Ok(answer),
                Err(error) => error,
            };
            let delay = delays.next().unwrap_or(BACKOFF.max);
            if !retry.allows(&error) || Instant::now() + delay >= deadline {
                return Err(error);
            }
            tracing::debug!(method = %call.method, url = call.url, %error, ?delay, "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(&self, call: &Call<'_>, deadline: Instant) -> Result<Bytes, CallError> {
        let request = self.client.request(call.method.clone(), call.url).query(call.query);
        let left = deadline.saturating_duration_since(Instant::now());
        send(request, call.body, &self.endpoint.credentials, left).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::google::ApiError;

    fn api(code: Code) -> CallError {
        CallError::Api(ApiError { http: 409, code, message: String::new(), has_body: true })
    }

    #[test]
    fn each_kind_of_call_retries_what_googles_clients_retry() {
        assert!(Retry::Read.allows(&api(Code::Aborted)) && Retry::Read.allows(&api(Code::Unknown)));
        assert!(!Retry::Unavailable.allows(&api(Code::Aborted)));
        assert!(Retry::Unavailable.allows(&CallError::Transport("refused".into())));
        assert!(Retry::Idempotent.allows(&CallError::Timeout(Duration::from_secs(1))));
        assert!(!Retry::Read.allows(&CallError::Timeout(Duration::from_secs(1))));
        for error in [api(Code::Unavailable), CallError::Transport("reset".into())] {
            assert!(!Retry::Never.allows(&error), "{error}");
        }
        assert!(!Retry::Read.allows(&api(Code::PermissionDenied)));
        assert!(!Retry::Read.allows(&CallError::Credentials("none".into())));
    }
}
