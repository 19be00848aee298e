//! Publishing to Pub/Sub over REST (`projects/{p}/topics/{t}:publish`).
//! Concurrent publishes to one topic share a request (see `group_commit`):
//! at most 1,000 messages and 10 MB, and a lone message waits for nothing.
//! A request is retried on what Google's own publishers retry, with their
//! backoff, until the earliest deadline of the messages it carries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{ApiError, Backoff, CallError, Code, Endpoint, send};
use crate::group_commit::{Limits, Queue, QueueError, Row, Waiting};

/// Pub/Sub's limit on one message, and on one publish request.
pub const MAX_MESSAGE_BYTES: usize = 10_000_000;

/// One request carries at most 1,000 messages (Pub/Sub's limit) and a little
/// under its 10 MB: base64 and JSON add to the bytes counted here. Four
/// requests per topic in flight: enough to keep a busy topic moving, few
/// enough that concurrent enqueues pile up into the next request.
const LIMITS: Limits = Limits { rows: 1_000, bytes: 7_000_000, in_flight: 4 };

/// Google's publisher defaults: 100 ms, ×1.3, at most 60 s between attempts.
const BACKOFF: Backoff = Backoff { initial: Duration::from_millis(100), multiplier: 1.3, max: Duration::from_secs(60) };

/// The codes Google's publishers retry a publish on.
const RETRIED: [Code; 7] = [
    Code::Aborted,
    Code::Cancelled,
    Code::DeadlineExceeded,
    Code::Internal,
    Code::ResourceExhausted,
    Code::Unavailable,
    Code::Unknown,
];

/// A message to publish.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    /// The payload bytes.
    pub(crate) data: Bytes,
    /// `traceparent`, `tracestate`.
    pub(crate) attributes: Vec<(&'static str, String)>,
    /// When the caller stops waiting.
    pub(crate) deadline: Instant,
    /// The task id: one request never carries two messages of one task.
    pub(crate) key: String,
}

impl Row for Outgoing {
    fn key(&self) -> &str {
        &self.key
    }

    fn bytes(&self) -> usize {
        self.data.len() + self.attributes.iter().map(|(name, value)| name.len() + value.len()).sum::<usize>()
    }
}

/// Why a message was not published.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// Pub/Sub refused it, and retrying cannot help (PERMISSION_DENIED,
    /// NOT_FOUND for a topic never provisioned, INVALID_ARGUMENT, ...).
    #[error("Pub/Sub refused the publish to {topic}: {error}")]
    Refused {
        /// The topic's full name.
        topic: String,
        /// Google's answer.
        error: ApiError,
    },
    /// Every attempt failed in a way worth retrying, until the deadline.
    #[error("publishing to {topic} did not succeed within {deadline:?} ({attempts} attempt(s)); the last: {last}")]
    GaveUp {
        /// The topic's full name.
        topic: String,
        /// The publish deadline.
        deadline: Duration,
        /// Requests made.
        attempts: u32,
        /// What the last one met.
        last: String,
    },
    /// The message is over Pub/Sub's limit: it was not sent.
    #[error("the message is {bytes} bytes, over Pub/Sub's limit of {MAX_MESSAGE_BYTES}")]
    TooLarge {
        /// The message's size.
        bytes: usize,
    },
    /// No place among the requests in flight came in time.
    #[error("publishing did not get under way within {0:?}: too many publishes in flight")]
    Busy(Duration),
    /// The request carrying it ended without an answer.
    #[error("the publish request carrying this message ended without an answer")]
    Lost,
}

impl QueueError for PublishError {
    fn no_turn(wait: Duration) -> Self {
        Self::Busy(wait)
    }

    fn lost() -> Self {
        Self::Lost
    }
}

/// Publishes to the topics it was made for.
#[derive(Debug)]
pub(crate) struct Publisher {
    deadline: Duration,
    /// Each topic's queue and request, by the name of the task published to it.
    topics: HashMap<String, Topic>,
}

#[derive(Debug)]
struct Topic {
    queue: Queue<Outgoing, String, PublishError>,
    request: Arc<Request>,
}

impl Publisher {
    pub(crate) fn new(
        client: reqwest::Client,
        endpoint: Endpoint,
        project: &str,
        topics: impl IntoIterator<Item = (String, String)>,
        deadline: Duration,
    ) -> Self {
        let topics = topics
            .into_iter()
            .map(|(task_name, topic)| {
                let name = format!("projects/{project}/topics/{topic}");
                let url = format!("{}/v1/{name}:publish", endpoint.base_url);
                let request =
                    Request { client: client.clone(), endpoint: endpoint.clone(), url, topic: name, deadline };
                (task_name, Topic { queue: Queue::new(LIMITS), request: Arc::new(request) })
            })
            .collect();
        Self { deadline, topics }
    }

    /// Publishes `data` to the topic of task `task_name` and returns Pub/Sub's
    /// message id once it has confirmed it.
    pub(crate) async fn publish(
        &self,
        task_name: &str,
        task_id: &str,
        data: Bytes,
        attributes: Vec<(&'static str, String)>,
    ) -> Result<String, PublishError> {
        if data.len() > MAX_MESSAGE_BYTES {
            return Err(PublishError::TooLarge { bytes: data.len() });
        }
        let Some(Topic { queue, request }) = self.topics.get(task_name) else {
            let message = format!("no route publishes task {task_name}");
            let error = ApiError { http: 404, code: Code::NotFound, message, has_body: false };
            // Not Pub/Sub's answer: the handle was made for other routes.
            return Err(PublishError::Refused { topic: format!("the topic of {task_name}"), error });
        };
        let deadline = Instant::now() + self.deadline;
        let message = Outgoing { data, attributes, deadline, key: task_id.to_owned() };
        let run = |(), batch| Arc::clone(request).send(batch);
        queue.submit(message, self.deadline, |_| async { Ok(()) }, run).await
    }
}

/// One topic's publish request, sent for a batch.
#[derive(Debug)]
struct Request {
    client: reqwest::Client,
    endpoint: Endpoint,
    url: String,
    /// The topic's full name, `projects/{p}/topics/{t}`.
    topic: String,
    deadline: Duration,
}

#[derive(Serialize)]
struct PublishBody<'a> {
    messages: Vec<WireMessage<'a>>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    data: String,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    attributes: HashMap<&'static str, &'a str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Published {
    #[serde(default)]
    message_ids: Vec<String>,
}

impl Request {
    /// Sends the batch, retrying what is worth it, and answers every message.
    async fn send(self: Arc<Self>, batch: Vec<Waiting<Outgoing, String, PublishError>>) {
        let body = body(&batch);
        let deadline = batch.iter().map(|waiting| waiting.row.deadline).min().unwrap_or_else(Instant::now);
        match self.with_retries(&body, deadline).await {
            Ok(ids) if ids.len() == batch.len() => {
                for (waiting, id) in batch.into_iter().zip(ids) {
                    waiting.answer(Ok(id));
                }
            }
            Ok(ids) => {
                let last = format!("Pub/Sub answered {} message ids for {} messages", ids.len(), batch.len());
                let error = self.gave_up(1, last);
                self.answer_all(batch, &error);
            }
            Err(error) => self.answer_all(batch, &error),
        }
    }

    async fn with_retries(&self, body: &Bytes, deadline: Instant) -> Result<Vec<String>, PublishError> {
        let mut attempts = 0;
        let mut delays = BACKOFF.delays();
        loop {
            attempts += 1;
            let error = match self.attempt(body, deadline).await {
                Ok(ids) => return Ok(ids),
                Err(error) => error,
            };
            if let CallError::Api(api) = &error
                && !retried(api)
            {
                return Err(PublishError::Refused { topic: self.topic.clone(), error: api.clone() });
            }
            let delay = delays.next().unwrap_or(BACKOFF.max);
            if Instant::now() + delay >= deadline {
                return Err(self.gave_up(attempts, error.to_string()));
            }
            tracing::debug!(attempts, %error, ?delay, "publish failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// One request, bounded by what is left of the deadline.
    async fn attempt(&self, body: &Bytes, deadline: Instant) -> Result<Vec<String>, CallError> {
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = send(self.client.post(&self.url), Some(body), &self.endpoint.credentials, left).await?;
        let published: Published = serde_json::from_slice(&answer)
            .map_err(|error| CallError::Transport(format!("Pub/Sub's answer is not a publish response: {error}")))?;
        Ok(published.message_ids)
    }

    fn answer_all(&self, batch: Vec<Waiting<Outgoing, String, PublishError>>, error: &PublishError) {
        for waiting in batch {
            waiting.answer(Err(error.clone()));
        }
    }

    fn gave_up(&self, attempts: u32, last: String) -> PublishError {
        PublishError::GaveUp { topic: self.topic.clone(), deadline: self.deadline, attempts, last }
    }
}

/// Retried: the codes Google's publishers retry, and a 429 or 5xx that came
/// without a Google error body (a proxy or load balancer in the way).
fn retried(error: &ApiError) -> bool {
    RETRIED.contains(&error.code) || (!error.has_body && (error.http == 429 || error.http >= 500))
}

fn body(batch: &[Waiting<Outgoing, String, PublishError>]) -> Bytes {
    let messages = batch
        .iter()
        .map(|waiting| WireMessage {
            data: BASE64.encode(&waiting.row.data),
            attributes: waiting.row.attributes.iter().map(|(name, value)| (*name, value.as_str())).collect(),
        })
        .collect();
    // Strings and a map of strings: serialising cannot fail.
    serde_json::to_vec(&PublishBody { messages }).unwrap_or_default().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(http: u16, code: Code, has_body: bool) -> ApiError {
        ApiError { http, code, message: String::new(), has_body }
    }

    #[test]
    fn retried_as_googles_publishers_retry() {
        for code in RETRIED {
            assert!(retried(&api(409, code, true)), "{code}");
        }
        for code in [Code::PermissionDenied, Code::NotFound, Code::InvalidArgument, Code::AlreadyExists] {
            assert!(!retried(&api(400, code, true)), "{code}");
        }
        assert!(retried(&api(429, Code::ResourceExhausted, false)));
        assert!(retried(&api(502, Code::Internal, false)));
        assert!(!retried(&api(403, Code::PermissionDenied, false)));
    }
}
