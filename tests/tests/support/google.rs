//! Loopback stubs of Google APIs that have no emulator: the metadata server
//! that hands a Cloud Run instance its access tokens, and Pub/Sub's REST
//! publish endpoint with a script of faults. Both speak HTTP/1.1 (keep-alive
//! as hyper does by default), answer with Google's documented shapes, count
//! what they are asked in counters tests can await, and can be made slow or
//! down.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

/// What the metadata server says the project is.
pub const PROJECT_ID: &str = "whirligig-test";
/// The project's number, as `project/numeric-project-id` answers it.
pub const PROJECT_NUMBER: &str = "123456789012";
/// The instance's service account, as `service-accounts/default/email` answers it.
pub const SERVICE_ACCOUNT: &str = "whirligig@whirligig-test.iam.gserviceaccount.com";
/// The instance's region, as `instance/region` answers it (`projects/NUMBER/regions/REGION`).
pub const REGION: &str = "europe-west1";

const TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

/// Google's message for a request whose bearer token is unknown or expired.
pub const INVALID_CREDENTIALS: &str = "Request had invalid authentication credentials. Expected OAuth 2 access \
     token, login cookie or other valid authentication credential. See \
     https://developers.google.com/identity/sign-in/web/devconsole-project.";
/// Google's message for a request without an `Authorization` header.
pub const MISSING_CREDENTIALS: &str = "Request is missing required authentication credential. Expected OAuth 2 \
     access token, login cookie or other valid authentication credential. See \
     https://developers.google.com/identity/sign-in/web/devconsole-project.";

/// Pub/Sub's limit on a publish request's body.
pub const MAX_REQUEST_BYTES: usize = 10 * 1024 * 1024;
/// Pub/Sub's limit on the messages of one publish request.
pub const MAX_MESSAGES: usize = 1000;

pub type Response = http::Response<Full<Bytes>>;

/// What a handler returns to close its connection without an answer.
#[derive(Debug)]
pub struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped without an answer")
    }
}

impl std::error::Error for Dropped {}

/// Serves `listener` over HTTP/1.1 with `respond` until the runtime ends.
/// `respond` answers a request or, with `Err`, closes its connection without
/// an answer. While `down` holds true every connection is closed at once:
/// those accepted, and those already open.
pub fn serve<F, Fut>(listener: TcpListener, down: watch::Receiver<bool>, respond: F)
where
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response, Dropped>> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if *down.borrow() {
                drop(stream);
                continue;
            }
            let (respond, mut down) = (respond.clone(), down.clone());
            tokio::spawn(async move {
                let service = service_fn(respond);
                let connection =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = connection => {}
                    _ = async { down.wait_for(|down| *down).await.is_ok() } => {}
                }
            });
        }
    });
}

pub async fn pause(delay: &Mutex<Duration>) {
    let delay = *delay.lock().expect("the delay");
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

/// Waits, at most 10 s, until `counter` is at least `count`.
pub async fn reach(counter: &watch::Sender<u32>, count: u32, what: &str) {
    let mut seen = counter.subscribe();
    let waited = tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|&seen| seen >= count)).await;
    assert!(waited.is_ok(), "{what} {} times, not {count}", *counter.borrow());
}

// ---------------------------------------------------------------------------
// The metadata server
// ---------------------------------------------------------------------------

/// The metadata server's state, shared with its HTTP server.
struct MetadataState {
    down: watch::Sender<bool>,
    delay: Mutex<Duration>,
    expires_in: AtomicU64,
    /// Tokens issued, in order, with when each expires.
    issued: Mutex<Vec<(String, Instant)>>,
    /// Requests for a token so far, answered or not: a count tests can wait on.
    token_requests: watch::Sender<u32>,
    missing_flavor: AtomicU32,
}

/// The GCE / Cloud Run metadata server on loopback: access tokens
/// `token-1`, `token-2`, ... and the project's id and number. Every request
/// but `GET /` must carry `Metadata-Flavor: Google` and no `X-Forwarded-For`,
/// else it is refused with 403 as the real server refuses it. Dropping it does
/// not stop the server, the test's runtime does.
#[derive(Clone)]
pub struct MetadataStub {
    addr: SocketAddr,
    state: Arc<MetadataState>,
}

impl MetadataStub {
    /// Serves on 127.0.0.1:0; tokens last 3599 s until [`set_expires_in`](Self::set_expires_in).
    pub async fn start() -> MetadataStub {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the metadata stub");
        let state = Arc::new(MetadataState {
            down: watch::Sender::new(false),
            delay: Mutex::new(Duration::ZERO),
            expires_in: AtomicU64::new(3599),
            issued: Mutex::new(Vec::new()),
            token_requests: watch::Sender::new(0),
            missing_flavor: AtomicU32::new(0),
        });
        let stub = MetadataStub { addr: listener.local_addr().expect("metadata stub address"), state };
        let served = stub.clone();
        serve(listener, stub.state.down.subscribe(), move |request| served.clone().respond(request));
        stub
    }

    /// `127.0.0.1:PORT`: the value for `GCE_METADATA_HOST`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The access tokens answered so far, in order.
    pub fn issued(&self) -> Vec<String> {
        self.state.issued.lock().expect("the issued tokens").iter().map(|(token, _)| token.clone()).collect()
    }

    /// Whether this stub answered `token` (expired or not).
    pub fn is_issued(&self, token: &str) -> bool {
        self.state.issued.lock().expect("the issued tokens").iter().any(|(issued, _)| issued == token)
    }

    /// Whether this stub answered `token` and its `expires_in` has not run out
    /// (on tokio's clock, so a paused test clock moves it).
    pub fn is_valid(&self, token: &str) -> bool {
        let now = Instant::now();
        self.state
            .issued
            .lock()
            .expect("the issued tokens")
            .iter()
            .any(|(issued, expiry)| issued == token && *expiry > now)
    }

    /// Requests for a token so far, counted as they arrive, whatever they are answered.
    pub fn token_requests(&self) -> u32 {
        *self.state.token_requests.borrow()
    }

    /// Waits, at most 10 s, until a token has been asked for `count` times.
    pub async fn token_requested(&self, count: u32) {
        reach(&self.state.token_requests, count, "a token was asked for").await;
    }

    /// Requests refused for want of `Metadata-Flavor: Google`.
    pub fn missing_flavor(&self) -> u32 {
        self.state.missing_flavor.load(Ordering::SeqCst)
    }

    /// The `expires_in` of tokens issued from now on (default 3599).
    pub fn set_expires_in(&self, seconds: u64) {
        self.state.expires_in.store(seconds, Ordering::SeqCst);
    }

    /// While down, the port stays bound but every connection, open or new, is
    /// closed at once without an answer.
    pub fn set_down(&self, down: bool) {
        self.state.down.send_replace(down);
    }

    /// Every answer waits `delay` first (counters move on arrival, before it).
    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().expect("the delay") = delay;
    }

    /// Google's 401 for a request whose `Authorization` does not carry a
    /// bearer token this stub issued and that is still valid; `None` when it does.
    pub fn refuse(&self, authorization: Option<&str>) -> Option<Response> {
        let token = authorization.and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        let message = match token {
            None if authorization.is_none() => MISSING_CREDENTIALS,
            Some(token) if self.is_valid(token) => return None,
            _ => INVALID_CREDENTIALS,
        };
        let mut response = google_error(401, "UNAUTHENTICATED", message);
        response.headers_mut().insert(
            "www-authenticate",
            http::HeaderValue::from_static("Bearer realm=\"https://accounts.google.com/\""),
        );
        Some(response)
    }

    async fn respond(self, request: http::Request<Incoming>) -> Result<Response, Dropped> {
        let path = request.uri().path();
        let flavored = request.headers().get("metadata-flavor").is_some_and(|flavor| flavor == "Google");
        if path == TOKEN_PATH {
            self.state.token_requests.send_modify(|count| *count += 1);
        }
        if !flavored && path != "/" {
            self.state.missing_flavor.fetch_add(1, Ordering::SeqCst);
        }
        pause(&self.state.delay).await;
        Ok(self.answer(&request, flavored))
    }

    fn answer(&self, request: &http::Request<Incoming>, flavored: bool) -> Response {
        let path = request.uri().path();
        // The one path the real server answers without the header: how Go's
        // metadata.OnGCE and others tell they run on Google.
        if path == "/" {
            return metadata_reply(200, "application/text", "computeMetadata/\n".to_owned());
        }
        if !flavored {
            return refusal(403, path, "Missing Metadata-Flavor:Google header.");
        }
        if request.headers().contains_key("x-forwarded-for") {
            return refusal(403, path, "Request had an X-Forwarded-For header, which is not allowed.");
        }
        if request.method() != http::Method::GET {
            return refusal(405, path, "Method not allowed.");
        }
        let text = |body: &str| metadata_reply(200, "application/text", body.to_owned());
        match path {
            TOKEN_PATH => self.issue(),
            "/computeMetadata/v1" | "/computeMetadata/v1/" => text("instance/\nproject/\n"),
            "/computeMetadata/v1/project/project-id" => text(PROJECT_ID),
            "/computeMetadata/v1/project/numeric-project-id" => text(PROJECT_NUMBER),
            "/computeMetadata/v1/instance/service-accounts/default/email" => text(SERVICE_ACCOUNT),
            "/computeMetadata/v1/instance/region" => text(&format!("projects/{PROJECT_NUMBER}/regions/{REGION}")),
            _ => refusal(404, path, "The requested URL was not found on this server."),
        }
    }

    fn issue(&self) -> Response {
        let expires_in = self.state.expires_in.load(Ordering::SeqCst);
        let mut issued = self.state.issued.lock().expect("the issued tokens");
        let token = format!("token-{}", issued.len() + 1);
        issued.push((token.clone(), Instant::now() + Duration::from_secs(expires_in)));
        let body = json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"});
        metadata_reply(200, "application/json", body.to_string())
    }
}

fn metadata_reply(status: u16, content_type: &str, body: String) -> Response {
    http::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("metadata-flavor", "Google")
        .header("server", "Metadata Server for VM")
        .body(Full::new(Bytes::from(body)))
        .expect("a response")
}

/// The metadata server's HTML error page.
fn refusal(status: u16, path: &str, reason: &str) -> Response {
    let body = format!(
        "<!DOCTYPE html>\n<html lang=en>\n<title>Error {status}</title>\n<p><b>{status}.</b> That's an error.\n\
         <p>Your client does not have permission to get URL <code>{path}</code> from this server. {reason}\n"
    );
    metadata_reply(status, "text/html; charset=UTF-8", body)
}

// ---------------------------------------------------------------------------
// Pub/Sub
// ---------------------------------------------------------------------------

/// What the next publish request gets instead of its normal answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `code` with Google's error envelope; `{topic}` in `message` becomes the
    /// request's topic id.
    Error { code: u16, status: &'static str, message: String },
    /// That status with an empty body.
    Bare(u16),
    /// The request is read and never answered; the connection stays open
    /// until the client goes away.
    Hang,
    /// The request is read and its connection closed without an answer.
    Close,
}

impl Fault {
    /// `code` and `status` with the message Google gives them, e.g.
    /// `Fault::error(503, "UNAVAILABLE")`: "The service is currently unavailable.".
    pub fn error(code: u16, status: &'static str) -> Fault {
        let message = match status {
            "INVALID_ARGUMENT" => "Request contains an invalid argument.",
            "UNAUTHENTICATED" => INVALID_CREDENTIALS,
            "PERMISSION_DENIED" => "User not authorized to perform this action.",
            "NOT_FOUND" => "Resource not found (resource={topic}).",
            "ALREADY_EXISTS" => "Resource already exists in the project (resource={topic}).",
            "FAILED_PRECONDITION" => "The operation was rejected because the system is not in a state required.",
            "RESOURCE_EXHAUSTED" => "Resource has been exhausted (e.g. check quota).",
            "ABORTED" => "The operation was aborted.",
            "CANCELLED" => "The operation was cancelled.",
            "DEADLINE_EXCEEDED" => "The request was aborted because it exceeded its deadline.",
            "INTERNAL" => "Internal error encountered.",
            "UNAVAILABLE" => "The service is currently unavailable.",
            "UNIMPLEMENTED" => "Operation is not implemented, or supported, or enabled.",
            _ => "Unknown error.",
        };
        Fault::Error { code, status, message: message.to_owned() }
    }
}

/// A published message as the stub decoded it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub data: Vec<u8>,
    pub attributes: BTreeMap<String, String>,
    /// `orderingKey`, when given (and non-empty).
    pub ordering_key: Option<String>,
}

/// One request the Pub/Sub stub received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The URI's path, e.g. `/v1/projects/p/topics/t:publish`.
    pub path: String,
    /// The `Authorization` header, as sent.
    pub authorization: Option<String>,
    /// The messages of a body that decoded, valid or not (empty otherwise).
    pub messages: Vec<Message>,
    /// The status answered; 0 while unanswered, and for ever after a
    /// [`Fault::Hang`] or [`Fault::Close`].
    pub answered: u16,
}

/// The Pub/Sub stub's state, shared with its HTTP server.
struct PubSubState {
    /// Whose tokens a checking stub accepts.
    checking: Option<MetadataStub>,
    faults: Mutex<VecDeque<Fault>>,
    delay: Mutex<Duration>,
    next_id: AtomicU64,
    recorded: Mutex<Vec<Recorded>>,
    /// Publish requests so far, counted as they arrive: a count tests can wait on.
    publish_requests: watch::Sender<u32>,
    down: watch::Sender<bool>,
}

/// Pub/Sub's REST publish endpoint on loopback:
/// `POST /v1/projects/{project}/topics/{topic}:publish`, validated as Google
/// validates it, every topic existing. A script of [`Fault`]s is consumed one
/// per publish request, before anything else is checked. Dropping it does not
/// stop the server, the test's runtime does.
#[derive(Clone)]
pub struct PubSubStub {
    addr: SocketAddr,
    state: Arc<PubSubState>,
}

impl PubSubStub {
    /// A stub that takes any `Authorization`, or none.
    pub async fn start() -> PubSubStub {
        Self::listen(None).await
    }

    /// A stub that answers 401 UNAUTHENTICATED unless the request carries
    /// `Authorization: Bearer <token>` with a token `metadata` issued and
    /// whose `expires_in` has not run out.
    pub async fn start_checking(metadata: &MetadataStub) -> PubSubStub {
        Self::listen(Some(metadata.clone())).await
    }

    async fn listen(checking: Option<MetadataStub>) -> PubSubStub {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the Pub/Sub stub");
        let state = Arc::new(PubSubState {
            checking,
            faults: Mutex::new(VecDeque::new()),
            delay: Mutex::new(Duration::ZERO),
            next_id: AtomicU64::new(1),
            recorded: Mutex::new(Vec::new()),
            publish_requests: watch::Sender::new(0),
            down: watch::Sender::new(false),
        });
        let stub = PubSubStub { addr: listener.local_addr().expect("Pub/Sub stub address"), state };
        let served = stub.clone();
        serve(listener, stub.state.down.subscribe(), move |request| served.clone().respond(request));
        stub
    }

    /// `http://127.0.0.1:PORT`: the API's base URL, without `/v1`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL a publish to `topic` of `project` is posted to.
    pub fn publish_url(&self, project: &str, topic: &str) -> String {
        format!("{}/v1/projects/{project}/topics/{topic}:publish", self.url())
    }

    /// Appends `fault` to the script: the next publish request without one
    /// of its own gets it.
    pub fn push_fault(&self, fault: Fault) {
        self.state.faults.lock().expect("the faults").push_back(fault);
    }

    /// Faults scripted and not yet consumed.
    pub fn faults_left(&self) -> usize {
        self.state.faults.lock().expect("the faults").len()
    }

    /// Every 200 waits `delay` first (requests are recorded and counted before it).
    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().expect("the delay") = delay;
    }

    /// While down, the port stays bound but every connection, open or new, is
    /// closed at once without an answer.
    pub fn set_down(&self, down: bool) {
        self.state.down.send_replace(down);
    }

    /// Every request received, publish or not, in order of arrival.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.recorded.lock().expect("the requests").clone()
    }

    /// The messages of every request answered 200, in order.
    pub fn published(&self) -> Vec<Message> {
        let recorded = self.state.recorded.lock().expect("the requests");
        recorded.iter().filter(|request| request.answered == 200).flat_map(|request| request.messages.clone()).collect()
    }

    /// `POST`s to a publish path so far, counted as they arrive (body read).
    pub fn publish_requests(&self) -> u32 {
        *self.state.publish_requests.borrow()
    }

    /// Waits, at most 10 s, until `count` publish requests have arrived.
    pub async fn requested(&self, count: u32) {
        reach(&self.state.publish_requests, count, "publish was requested").await;
    }

    async fn respond(self, request: http::Request<Incoming>) -> Result<Response, Dropped> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path().to_owned();
        let authorization =
            parts.headers.get("authorization").map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        let body = body.collect().await.map_err(|_| Dropped)?.to_bytes();
        let decoded = decode(&body);
        let index = {
            let mut recorded = self.state.recorded.lock().expect("the requests");
            let messages = decoded.clone().unwrap_or_default();
            recorded.push(Recorded { path: path.clone(), authorization: authorization.clone(), messages, answered: 0 });
            recorded.len() - 1
        };
        let topic = match topic_of(&path) {
            Some(topic) if parts.method == http::Method::POST => topic.to_owned(),
            _ => {
                let body = format!("The requested URL <code>{path}</code> was not found on this server.");
                return Ok(self.answer(index, reply(404, "text/html; charset=UTF-8", body)));
            }
        };
        self.state.publish_requests.send_modify(|count| *count += 1);

        let fault = self.state.faults.lock().expect("the faults").pop_front();
        match fault {
            None => {}
            Some(Fault::Hang) => std::future::pending().await,
            Some(Fault::Close) => return Err(Dropped),
            Some(Fault::Bare(code)) => {
                let response =
                    http::Response::builder().status(code).body(Full::new(Bytes::new())).expect("a response");
                return Ok(self.answer(index, response));
            }
            Some(Fault::Error { code, status, message }) => {
                let message = message.replace("{topic}", &topic);
                return Ok(self.answer(index, google_error(code, status, &message)));
            }
        }

        if let Some(refused) = self.state.checking.as_ref().and_then(|m| m.refuse(authorization.as_deref())) {
            return Ok(self.answer(index, refused));
        }

        let messages = match decoded.and_then(|messages| validate(&messages).map(|()| messages)) {
            Ok(messages) => messages,
            Err(message) => return Ok(self.answer(index, google_error(400, "INVALID_ARGUMENT", &message))),
        };
        pause(&self.state.delay).await;
        let first = self.state.next_id.fetch_add(messages.len() as u64, Ordering::SeqCst);
        let ids: Vec<String> = (first..first + messages.len() as u64).map(|id| id.to_string()).collect();
        Ok(self.answer(index, reply(200, "application/json; charset=UTF-8", json!({"messageIds": ids}).to_string())))
    }

    /// Notes that request `index` was answered with `response`'s status.
    fn answer(&self, index: usize, response: Response) -> Response {
        if let Some(recorded) = self.state.recorded.lock().expect("the requests").get_mut(index) {
            recorded.answered = response.status().as_u16();
        }
        response
    }
}

/// The topic id of `/v1/projects/{project}/topics/{topic}:publish`.
fn topic_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/projects/")?;
    let (project, rest) = rest.split_once("/topics/")?;
    let topic = rest.strip_suffix(":publish")?;
    let plain = |segment: &str| !segment.is_empty() && !segment.contains('/');
    (plain(project) && plain(topic)).then_some(topic)
}

pub fn reply(status: u16, content_type: &str, body: String) -> Response {
    http::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a response")
}

/// Google's JSON error envelope.
pub fn google_error(code: u16, status: &str, message: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message, "status": status}});
    reply(code, "application/json; charset=UTF-8", body.to_string())
}

/// The messages of a publish body, or Google's message for why its JSON is
/// not a `PublishRequest`: bad JSON, an unknown field, a wrong type, bad base64.
fn decode(body: &[u8]) -> Result<Vec<Message>, String> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(format!("Request payload size exceeds the limit: {MAX_REQUEST_BYTES} bytes."));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|error| format!("Invalid JSON payload received. {error}"))?;
    let Value::Object(request) = value else {
        return Err(format!(
            "Invalid JSON payload received. Unknown name \"\": Root element must be a message ({value})."
        ));
    };
    let mut messages = Vec::new();
    for (name, value) in request {
        match (name.as_str(), value) {
            ("messages", Value::Null) => {}
            ("messages", Value::Array(items)) => {
                for (index, item) in items.into_iter().enumerate() {
                    messages.push(decode_message(index, item)?);
                }
            }
            ("messages", other) => {
                return Err(format!(
                    "Invalid value at 'messages' (type.googleapis.com/google.pubsub.v1.PubsubMessage), {other}"
                ));
            }
            (name, _) => {
                return Err(format!("Invalid JSON payload received. Unknown name \"{name}\": Cannot find field."));
            }
        }
    }
    Ok(messages)
}

fn decode_message(index: usize, item: Value) -> Result<Message, String> {
    let Value::Object(fields) = item else {
        return Err(format!(
            "Invalid value at 'messages[{index}]' (type.googleapis.com/google.pubsub.v1.PubsubMessage), {item}"
        ));
    };
    let mut message = Message::default();
    for (name, value) in fields {
        let at = |field: &str| format!("messages[{index}].{field}");
        match (name.as_str(), value) {
            (_, Value::Null) => {}
            ("data", Value::String(data)) => {
                message.data = decode_bytes(&data).ok_or_else(|| {
                    format!("Invalid value at '{}' (TYPE_BYTES), Base64 decoding failed for \"{data}\"", at("data"))
                })?;
            }
            ("attributes", Value::Object(attributes)) => {
                message.attributes = decode_attributes(&at("attributes"), attributes)?
            }
            ("orderingKey" | "ordering_key", Value::String(key)) => {
                message.ordering_key = Some(key).filter(|key| !key.is_empty())
            }
            // Output-only fields: accepted and ignored, as Google does.
            ("messageId" | "message_id" | "publishTime" | "publish_time", Value::String(_)) => {}
            ("data", other) => return Err(format!("Invalid value at '{}' (TYPE_BYTES), {other}", at("data"))),
            ("attributes", other) => {
                return Err(format!(
                    "Invalid value at '{}' (type.googleapis.com/google.pubsub.v1.PubsubMessage.AttributesEntry), {other}",
                    at("attributes")
                ));
            }
            ("orderingKey" | "ordering_key" | "messageId" | "message_id" | "publishTime" | "publish_time", other) => {
                return Err(format!("Invalid value at '{}' (TYPE_STRING), {other}", at(&name)));
            }
            (name, _) => {
                return Err(format!(
                    "Invalid JSON payload received. Unknown name \"{name}\" at 'messages[{index}]': Cannot find field."
                ));
            }
        }
    }
    Ok(message)
}

fn decode_attributes(at: &str, attributes: Map<String, Value>) -> Result<BTreeMap<String, String>, String> {
    attributes
        .into_iter()
        .map(|(key, value)| match value {
            Value::String(value) => Ok((key, value)),
            other => Err(format!("Invalid value at '{at}[{key}].value' (TYPE_STRING), {other}")),
        })
        .collect()
}

/// Base64 as proto3 JSON takes it: standard or URL-safe, padded or not.
fn decode_bytes(data: &str) -> Option<Vec<u8>> {
    let config = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    [GeneralPurpose::new(&alphabet::STANDARD, config), GeneralPurpose::new(&alphabet::URL_SAFE, config)]
        .iter()
        .find_map(|engine| engine.decode(data).ok())
}

/// Google's checks on decoded messages: how many, and none empty.
fn validate(messages: &[Message]) -> Result<(), String> {
    let count = messages.len();
    if count == 0 {
        return Err(
            "The value for message_count is too small. You passed 0 in the request, but the minimum value is 1."
                .to_owned(),
        );
    }
    if count > MAX_MESSAGES {
        return Err(format!(
            "The value for message_count is too large. You passed {count} in the request, but the maximum value is \
             {MAX_MESSAGES}."
        ));
    }
    if messages.iter().any(|message| message.data.is_empty() && message.attributes.is_empty()) {
        return Err(
            "One or more messages in the publish request is empty. Each message must contain either non-empty \
                    data, or at least one attribute."
                .to_owned(),
        );
    }
    Ok(())
}
