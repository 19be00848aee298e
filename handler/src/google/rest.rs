//! One JSON call to a Google REST API, with the credentials of its endpoint,
//! retried on the codes its kind of call may be retried on, within a
//! deadline. The admin APIs (Pub/Sub's topics and subscriptions, Cloud
//! Scheduler's jobs) are called through it; what a call means is theirs.

use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::{ApiError, Backoff, CallError, Code, Endpoint};

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
        let url = format!("{}/v1/{path}", self.endpoint.base_url);
        // Serialising our own request shapes cannot fail.
        let body: Option<Bytes> = body.map(|body| serde_json::to_vec(body).unwrap_or_default().into());
        let answer = self.with_retries(&method, &url, body.as_ref(), retry).await?;
        serde_json::from_slice(&answer).map_err(|error| {
            CallError::Transport(format!("{method} {path}: the answer is not what the API documents: {error}"))
        })
    }

    async fn with_retries(
        &self,
        method: &Method,
        url: &str,
        body: Option<&Bytes>,
        retry: Retry,
    ) -> Result<Bytes, CallError> {
        let deadline = Instant::now() + self.deadline;
        let mut delays = BACKOFF.delays();
        loop {
            let error = match self.attempt(method, url, body, deadline).await {
                Ok(answer) => return Ok(answer),
                Err(error) => error,
            };
            let delay = delays.next().unwrap_or(BACKOFF.max);
            if !retry.allows(&error) || Instant::now() + delay >= deadline {
                return Err(error);
            }
            tracing::debug!(%method, url, %error, ?delay, "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(
        &self,
        method: &Method,
        url: &str,
        body: Option<&Bytes>,
        deadline: Instant,
    ) -> Result<Bytes, CallError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut request = self.client.request(method.clone(), url).timeout(left);
        if let Some(body) = body {
            request = request.header(http::header::CONTENT_TYPE, "application/json").body(body.clone());
        }
        if let Some(authorization) = self.endpoint.credentials.authorization().await? {
            request = request.header(http::header::AUTHORIZATION, authorization);
        }
        let failed = |error: reqwest::Error| {
            if error.is_timeout() { CallError::Timeout(self.deadline) } else { CallError::transport(&error) }
        };
        let response = request.send().await.map_err(failed)?;
        let status = response.status();
        let answer = response.bytes().await.map_err(failed)?;
        if status.is_success() { Ok(answer) } else { Err(CallError::Api(ApiError::read(status.as_u16(), &answer))) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
