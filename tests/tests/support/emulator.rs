//! The Pub/Sub emulator, started by scripts/test.sh: a REST client for tests.
//! It speaks Pub/Sub's REST v1 API (the emulator serves it and gRPC on one
//! port) with a project of its own; every test makes its topics and
//! subscriptions under [`unique`] names, so tests share one emulator freely.
//!
//! Shapes checked against emulator 0.8.20 (google-cloud-cli-pubsub-emulator):
//! - Topic and subscription ids shorter than 3 characters are refused with
//!   400 "Invalid [topics] name"; creating one that exists answers 409.
//! - Errors are `{"error":{"code":404,"message":"Topic not found","status":"NOT_FOUND"}}`.
//! - A message with neither data nor attributes is refused: 400 "Some messages are empty".
//! - Message ids are decimal counters ("1", "2", ...), ack ids
//!   `projects/{p}/subscriptions/{s}:{n}`; data and attributes are left out
//!   of a pulled message when empty.
//! - A pull without `returnImmediately` is held open until a message comes
//!   (89 s on an idle subscription, then `{}`), and one given up on still
//!   takes the next message, until its ack deadline: pulls here poll with
//!   `returnImmediately` instead.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use reqwest::Method;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

/// Where the emulator listens: `PUBSUB_EMULATOR_HOST`, as Google's client
/// libraries read it, or scripts/pubsub.sh's default.
pub fn emulator_host() -> String {
    std::env::var("PUBSUB_EMULATOR_HOST")
        .ok()
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "127.0.0.1:8085".to_owned())
}

/// The project every test's resources live in (the emulator takes any).
pub const PROJECT: &str = "whirligig-test";

/// How long one [`Emulator::pull`] waits for a message.
const PULL_WAIT: Duration = Duration::from_secs(10);

/// How often a pull asks again while nothing has come.
const PULL_INTERVAL: Duration = Duration::from_millis(50);

/// A request the emulator takes longer than this to answer has hung.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A name unique to this call, valid as a topic or subscription id:
/// `prefix`, a dash and a UUID v4's 32 hex digits.
pub fn unique(prefix: &str) -> String {
    assert!(prefix.starts_with(|c: char| c.is_ascii_alphabetic()), "resource ids start with a letter: {prefix:?}");
    assert!(!prefix.to_ascii_lowercase().starts_with("goog"), "resource ids may not start with \"goog\": {prefix:?}");
    assert!(
        prefix.chars().all(|c| c.is_ascii_alphanumeric() || "-_.~+%".contains(c)),
        "resource ids are made of [A-Za-z0-9-_.~+%]: {prefix:?}"
    );
    let name = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
    assert!(name.len() <= 255, "resource ids are at most 255 characters: {name}");
    name
}

/// A push subscription's delivery settings.
///
/// What emulator 0.8.20 does with them, measured against an endpoint that
/// always answered 500:
/// - Without a retry policy it pushes again about 1 s after each failure.
/// - `retryPolicy` is honoured roughly: gaps grow from about the minimum
///   towards the maximum plus ~1 s (1/2 s: 1, 2.8, then 3 s; 5/20 s: 1, 7.8,
///   10, 14, 15, 16 s), not Pub/Sub's exact exponential backoff.
/// - `deadLetterPolicy` is honoured: after `max_delivery_attempts` pushes the
///   message is republished (new message id) to the dead letter topic with
///   attributes `CloudPubSubDeadLetterSourceDeliveryCount`,
///   `CloudPubSubDeadLetterSourceSubscription` (the id),
///   `CloudPubSubDeadLetterSourceSubscriptionProject` and
///   `CloudPubSubDeadLetterSourceTopicPublishTime`. The dead letter topic
///   needs a subscription, or the message is gone.
/// - The push body never carries `deliveryAttempt`, dead letter policy or
///   not (a pull from a subscription with one does).
/// - Only 200, 201 and 204 acknowledge a push: 202, 299, 3xx, 4xx and 5xx
///   are all retried (Pub/Sub also takes 102 and 202).
#[derive(Clone, Debug)]
pub struct PushOptions {
    pub ack_deadline_seconds: u32,
    /// `retryPolicy.minimumBackoff`; Pub/Sub's default is 10 s when only the maximum is set.
    pub min_backoff_seconds: Option<u32>,
    /// `retryPolicy.maximumBackoff`; Pub/Sub's default is 600 s when only the minimum is set.
    pub max_backoff_seconds: Option<u32>,
    /// A topic id in [`PROJECT`], or a full `projects/.../topics/...` name.
    pub dead_letter_topic: Option<String>,
    /// `deadLetterPolicy.maxDeliveryAttempts` (5 to 100; Pub/Sub's default is 5).
    pub max_delivery_attempts: Option<u32>,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            ack_deadline_seconds: 10,
            min_backoff_seconds: None,
            max_backoff_seconds: None,
            dead_letter_topic: None,
            max_delivery_attempts: None,
        }
    }
}

/// A message as a pull returns it, data decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pulled {
    pub ack_id: String,
    pub message_id: String,
    pub data: Vec<u8>,
    pub attributes: BTreeMap<String, String>,
    /// Only set for a subscription with a dead letter policy.
    pub delivery_attempt: Option<u32>,
}

impl Pulled {
    fn of(received: &Value) -> Pulled {
        let message = &received["message"];
        let text = |value: &Value, what: &str| {
            value.as_str().unwrap_or_else(|| panic!("a pulled message has {what}: {received}")).to_owned()
        };
        let data = match message["data"].as_str() {
            Some(data) => STANDARD.decode(data).unwrap_or_else(|e| panic!("pulled data is base64 ({e}): {received}")),
            None => Vec::new(),
        };
        let attributes = match message["attributes"].as_object() {
            Some(attributes) => attributes.iter().map(|(name, value)| (name.clone(), text(value, name))).collect(),
            None => BTreeMap::new(),
        };
        Pulled {
            ack_id: text(&received["ackId"], "an ackId"),
            message_id: text(&message["messageId"], "a messageId"),
            data,
            attributes,
            delivery_attempt: received["deliveryAttempt"].as_u64().map(|n| u32::try_from(n).expect("a small count")),
        }
    }
}

/// A client of the emulator in [`PROJECT`].
#[derive(Clone, Debug)]
pub struct Emulator {
    host: String,
    project: String,
    client: reqwest::Client,
}

impl Default for Emulator {
    fn default() -> Self {
        Self::new()
    }
}

impl Emulator {
    /// A client of the emulator at [`emulator_host`]; nothing is sent yet.
    pub fn new() -> Emulator {
        // No proxy: an http_proxy in the environment must not see loopback.
        let client = reqwest::Client::builder().no_proxy().build().expect("an HTTP client");
        Emulator { host: emulator_host(), project: PROJECT.to_owned(), client }
    }

    /// A client of the emulator for resources of `project`, a project of one test's own.
    pub fn in_project(project: &str) -> Emulator {
        Emulator { project: project.to_owned(), ..Emulator::new() }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    /// `projects/{project}/topics/{topic}`.
    pub fn topic_path(&self, topic: &str) -> String {
        format!("projects/{}/topics/{topic}", self.project)
    }

    /// `projects/{project}/subscriptions/{subscription}`.
    pub fn subscription_path(&self, subscription: &str) -> String {
        format!("projects/{}/subscriptions/{subscription}", self.project)
    }

    /// Creates `topic` (an id, as [`unique`] makes).
    pub async fn create_topic(&self, topic: &str) {
        self.call(Method::PUT, &self.topic_path(topic), &json!({})).await;
    }

    /// Creates a pull subscription to `topic` (10 s ack deadline).
    pub async fn create_pull_subscription(&self, subscription: &str, topic: &str) {
        let body = json!({"topic": self.topic_path(topic), "ackDeadlineSeconds": 10});
        self.call(Method::PUT, &self.subscription_path(subscription), &body).await;
    }

    /// Creates a subscription to `topic` that pushes to `endpoint` (an
    /// `http://127.0.0.1:port/path` URL), without OIDC tokens.
    pub async fn create_push_subscription(
        &self,
        subscription: &str,
        topic: &str,
        endpoint: &str,
        options: PushOptions,
    ) {
        let mut body = Map::new();
        body.insert("topic".into(), self.topic_path(topic).into());
        body.insert("ackDeadlineSeconds".into(), options.ack_deadline_seconds.into());
        body.insert("pushConfig".into(), json!({"pushEndpoint": endpoint}));
        let mut retry = Map::new();
        if let Some(seconds) = options.min_backoff_seconds {
            retry.insert("minimumBackoff".into(), format!("{seconds}s").into());
        }
        if let Some(seconds) = options.max_backoff_seconds {
            retry.insert("maximumBackoff".into(), format!("{seconds}s").into());
        }
        if !retry.is_empty() {
            body.insert("retryPolicy".into(), retry.into());
        }
        if let Some(topic) = &options.dead_letter_topic {
            let topic = if topic.starts_with("projects/") { topic.clone() } else { self.topic_path(topic) };
            let mut policy = Map::new();
            policy.insert("deadLetterTopic".into(), topic.into());
            if let Some(attempts) = options.max_delivery_attempts {
                policy.insert("maxDeliveryAttempts".into(), attempts.into());
            }
            body.insert("deadLetterPolicy".into(), policy.into());
        } else {
            assert!(options.max_delivery_attempts.is_none(), "max_delivery_attempts needs a dead_letter_topic");
        }
        self.call(Method::PUT, &self.subscription_path(subscription), &Value::Object(body)).await;
    }

    /// Publishes one message to `topic` and returns its message id. The
    /// emulator refuses a message with empty data and no attributes.
    pub async fn publish(&self, topic: &str, data: &[u8], attributes: &[(&str, &str)]) -> String {
        let attributes: Map<String, Value> =
            attributes.iter().map(|(name, value)| ((*name).to_owned(), (*value).into())).collect();
        let body = json!({"messages": [{"data": STANDARD.encode(data), "attributes": attributes}]});
        let answer = self.call(Method::POST, &format!("{}:publish", self.topic_path(topic)), &body).await;
        match answer["messageIds"].as_array().map(Vec::as_slice) {
            Some([id]) => id.as_str().expect("a message id is a string").to_owned(),
            _ => panic!("a publish of one message answered {answer}"),
        }
    }

    /// Up to `max` messages from `subscription`, not yet acknowledged: waits
    /// (10 s at most) for the first one, and is empty if none came.
    pub async fn pull(&self, subscription: &str, max: u32) -> Vec<Pulled> {
        self.pull_until(subscription, max, Instant::now() + PULL_WAIT).await
    }

    /// Asks with `returnImmediately` (deprecated, but the emulator honours it)
    /// until something comes or `until` passes. Without it the emulator
    /// holds a pull open until a message comes, however long; and a pull
    /// given up on client side still takes the next message, which then
    /// waits out its ack deadline before anyone else gets it.
    async fn pull_until(&self, subscription: &str, max: u32, until: Instant) -> Vec<Pulled> {
        let path = format!("{}:pull", self.subscription_path(subscription));
        let body = json!({"maxMessages": max, "returnImmediately": true});
        loop {
            let answer = self.call(Method::POST, &path, &body).await;
            let received: Vec<Pulled> = match answer["receivedMessages"].as_array() {
                Some(received) => received.iter().map(Pulled::of).collect(),
                None => Vec::new(),
            };
            if !received.is_empty() || Instant::now() + PULL_INTERVAL >= until {
                return received;
            }
            tokio::time::sleep(PULL_INTERVAL).await;
        }
    }

    /// Acknowledges `ack_ids` on `subscription` (none: nothing is sent).
    pub async fn ack(&self, subscription: &str, ack_ids: &[String]) {
        if ack_ids.is_empty() {
            return;
        }
        let path = format!("{}:acknowledge", self.subscription_path(subscription));
        self.call(Method::POST, &path, &json!({"ackIds": ack_ids})).await;
    }

    /// Pulls and acknowledges until `count` messages have come, in the order
    /// they came; panics, saying how many came, if that takes longer than `within`.
    pub async fn pull_exactly(&self, subscription: &str, count: usize, within: Duration) -> Vec<Pulled> {
        let until = Instant::now() + within;
        let mut pulled = Vec::with_capacity(count);
        while pulled.len() < count {
            let max = u32::try_from(count - pulled.len()).expect("a sane count");
            // Empty only once `until` has (nearly) come.
            let batch = self.pull_until(subscription, max, until).await;
            assert!(
                !batch.is_empty(),
                "{} of {count} messages came from {subscription} within {within:?}",
                pulled.len()
            );
            let ack_ids: Vec<String> = batch.iter().map(|message| message.ack_id.clone()).collect();
            self.ack(subscription, &ack_ids).await;
            pulled.extend(batch);
        }
        pulled
    }

    /// The topic `{id}` of `project` as the emulator answers it, or `None` when there is none.
    pub async fn topic_in(&self, project: &str, id: &str) -> Option<Value> {
        self.get(&format!("projects/{project}/topics/{id}")).await
    }

    /// The subscription `{id}` of `project`, or `None` when there is none.
    pub async fn subscription_in(&self, project: &str, id: &str) -> Option<Value> {
        self.get(&format!("projects/{project}/subscriptions/{id}")).await
    }

    /// Sets the `mask`ed fields of subscription `id` of `project` to those in `subscription`.
    pub async fn patch_subscription_in(&self, project: &str, id: &str, subscription: Value, mask: &str) {
        let body = json!({"subscription": subscription, "updateMask": mask});
        self.call(Method::PATCH, &format!("projects/{project}/subscriptions/{id}"), &body).await;
    }

    /// Creates topic `id` in `project`.
    pub async fn create_topic_in(&self, project: &str, id: &str) {
        self.call(Method::PUT, &format!("projects/{project}/topics/{id}"), &json!({})).await;
    }

    /// Creates subscription `id` to topic `topic` (an id), both in `project`,
    /// with the fields of `settings` (`{}`: a pull subscription with the defaults).
    pub async fn create_subscription_in(&self, project: &str, id: &str, topic: &str, settings: Value) {
        let mut body = settings;
        body["topic"] = format!("projects/{project}/topics/{topic}").into();
        self.call(Method::PUT, &format!("projects/{project}/subscriptions/{id}"), &body).await;
    }

    /// `GET /v1/{path}`: the JSON, or `None` on a 404.
    async fn get(&self, path: &str) -> Option<Value> {
        let url = format!("http://{}/v1/{path}", self.host);
        let response = self.client.get(&url).timeout(REQUEST_TIMEOUT).send().await;
        let response = response.unwrap_or_else(|error| panic!("GET {url}: {error}"));
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return None;
        }
        assert!(response.status().is_success(), "GET {url} answered {}", response.status());
        let text = response.text().await.unwrap_or_else(|error| panic!("GET {url}: reading the answer: {error}"));
        Some(serde_json::from_str(&text).unwrap_or_else(|error| panic!("GET {url}: not JSON ({error}): {text}")))
    }

    /// Sends `body` to `/v1/{path}` and returns the answer's JSON; panics
    /// with the emulator's answer unless it is a 2xx.
    async fn call(&self, method: Method, path: &str, body: &Value) -> Value {
        let url = format!("http://{}/v1/{path}", self.host);
        let sent = self
            .client
            .request(method.clone(), &url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) if error.is_connect() => panic!(
                "the Pub/Sub emulator is not reachable at {}: run scripts/test.sh, which starts it ({error})",
                self.host
            ),
            Err(error) => panic!("{method} {url} failed: {error}"),
        };
        let status = response.status();
        let text = response.text().await.unwrap_or_else(|e| panic!("{method} {url}: reading the answer: {e}"));
        assert!(status.is_success(), "{method} {url} {body} answered {status}: {text}");
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {url} answered {status} with no JSON ({e}): {text}"))
    }
}
