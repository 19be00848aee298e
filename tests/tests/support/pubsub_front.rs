//! A loopback front for the real Pub/Sub emulator: it relays every request to
//! the emulator and records it, answers scripted faults in its place, answers
//! topic and subscription IAM itself (the emulator answers those 501), and can
//! check bearer tokens as Pub/Sub does. It never rewrites what the emulator answers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use super::google::{Dropped, Fault, MetadataStub, Response, google_error, reply, serve};

/// The etag Google answers for a resource that has no policy yet: `{"etag": "ACAB"}`.
pub const EMPTY_POLICY_ETAG: &str = "ACAB";

/// Google's message for a setIamPolicy whose etag is not the policy's current one (409 ABORTED).
pub const CONCURRENT_POLICY_CHANGES: &str =
    "There were concurrent policy changes. Please retry the whole read-modify-write with exponential backoff.";

/// The verbs that are POSTed but change no resource's configuration.
const READ_VERBS: [&str; 5] = [":publish", ":pull", ":acknowledge", ":modifyAckDeadline", ":testIamPermissions"];

/// One request the front received, as it received it.
#[derive(Debug, Clone, PartialEq)]
pub struct FrontRequest {
    pub method: Method,
    /// The URI's path without its query, e.g. `/v1/projects/p/topics/t`.
    pub path: String,
    /// The URI's query, without the `?`.
    pub query: Option<String>,
    /// The body, when it is JSON.
    pub body: Option<Value>,
    /// The `Authorization` header, as sent.
    pub authorization: Option<String>,
    /// The status answered; 0 while unanswered, and for ever after a
    /// [`Fault::Hang`] or [`Fault::Close`].
    pub answered: u16,
}

impl FrontRequest {
    fn changes_state(&self) -> bool {
        match self.method {
            Method::PUT | Method::PATCH | Method::DELETE => true,
            Method::POST => !READ_VERBS.iter().any(|verb| self.path.ends_with(verb)),
            _ => false,
        }
    }
}

/// A fault waiting for the first request it matches.
struct ScriptedFault {
    method: Method,
    path_contains: String,
    fault: Fault,
}

/// A request to hold until the test lets it go.
struct ScriptedHold {
    method: Method,
    path_contains: String,
    arrived: watch::Sender<bool>,
    release: oneshot::Receiver<()>,
}

/// A request the front holds back (see [`PubSubFront::hold`]).
pub struct Held {
    arrived: watch::Receiver<bool>,
    release: oneshot::Sender<()>,
}

impl Held {
    /// Waits, at most 10 s, until the request has arrived and is held.
    pub async fn arrived(&mut self) {
        let arrived = tokio::time::timeout(std::time::Duration::from_secs(10), self.arrived.wait_for(|seen| *seen));
        assert!(arrived.await.is_ok_and(|seen| seen.is_ok()), "the held request never came");
    }

    /// Lets it go on to the emulator (or to a scripted fault).
    pub fn release(self) {
        let _ = self.release.send(());
    }
}

/// The requests received, each under an id of its own, so that a
/// [`PubSubFront::clear`] while one is in flight cannot misplace its answer.
#[derive(Default)]
struct Log {
    next_id: u64,
    requests: Vec<(u64, FrontRequest)>,
}

/// The IAM policies set through the front, by resource name.
struct Policies {
    by_resource: HashMap<String, Value>,
    /// Encoded as the next etag; starts at random so fronts' etags differ.
    next_etag: u64,
}

impl Policies {
    /// Stores `bindings` as `resource`'s policy under a new etag and returns it.
    fn set(&mut self, resource: &str, bindings: Vec<Value>) -> Value {
        self.next_etag = self.next_etag.wrapping_add(1);
        let mut policy = json!({"version": 1, "etag": STANDARD.encode(self.next_etag.to_be_bytes())});
        // Proto3 JSON leaves an empty list out, as Google's answer does.
        if !bindings.is_empty() {
            policy["bindings"] = Value::Array(bindings);
        }
        self.by_resource.insert(resource.to_owned(), policy.clone());
        policy
    }

    fn etag(&self, resource: &str) -> &str {
        self.by_resource.get(resource).and_then(|policy| policy["etag"].as_str()).unwrap_or(EMPTY_POLICY_ETAG)
    }
}

/// The front's state, shared with its HTTP server.
struct FrontState {
    /// `http://{emulator_host}`.
    emulator: String,
    client: reqwest::Client,
    /// Whose tokens a checking front accepts.
    checking: Option<MetadataStub>,
    faults: Mutex<Vec<ScriptedFault>>,
    holds: Mutex<Vec<ScriptedHold>>,
    log: Mutex<Log>,
    // One std Mutex around read-compare-write makes concurrent sets atomic;
    // it is never held across an await.
    policies: Mutex<Policies>,
    /// Never set: `serve` closes every connection once this sender is gone.
    _down: watch::Sender<bool>,
}

/// The Pub/Sub emulator behind a front on 127.0.0.1:0 that records every
/// request, answers [`Fault`]s scripted per method and path, and serves
/// `getIamPolicy`/`setIamPolicy` of topics and subscriptions from its own
/// store (after checking the resource exists on the emulator). Dropping it
/// does not stop the server, the test's runtime does.
#[derive(Clone)]
pub struct PubSubFront {
    addr: SocketAddr,
    state: Arc<FrontState>,
}

/// A front to the emulator at `emulator_host` (`host:port`) that takes any
/// `Authorization`, or none.
pub async fn start(emulator_host: &str) -> PubSubFront {
    PubSubFront::listen(emulator_host, None).await
}

/// A front that answers 401 UNAUTHENTICATED, as [`MetadataStub::refuse`]
/// words it, unless the request carries a bearer token `metadata` issued
/// that is still valid. The `Authorization` header is never forwarded.
pub async fn start_checking(emulator_host: &str, metadata: &MetadataStub) -> PubSubFront {
    PubSubFront::listen(emulator_host, Some(metadata.clone())).await
}

impl PubSubFront {
    async fn listen(emulator_host: &str, checking: Option<MetadataStub>) -> PubSubFront {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the Pub/Sub front");
        // No proxy: an http_proxy in the environment must not see loopback.
        let client = reqwest::Client::builder().no_proxy().build().expect("an HTTP client");
        let (down, serving) = watch::channel(false);
        let state = Arc::new(FrontState {
            emulator: format!("http://{emulator_host}"),
            client,
            checking,
            faults: Mutex::new(Vec::new()),
            holds: Mutex::new(Vec::new()),
            log: Mutex::new(Log::default()),
            policies: Mutex::new(Policies { by_resource: HashMap::new(), next_etag: rand::random() }),
            _down: down,
        });
        let front = PubSubFront { addr: listener.local_addr().expect("the Pub/Sub front's address"), state };
        let served = front.clone();
        serve(listener, serving, move |request| served.clone().respond(request));
        front
    }

    /// `http://127.0.0.1:PORT`: the API's base URL, for `TASKS_PUBSUB_ENDPOINT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`, for `PUBSUB_EMULATOR_HOST`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Every request received since the start or the last [`clear`](Self::clear),
    /// in order of arrival: forwarded, faulted, refused and IAM alike.
    pub fn requests(&self) -> Vec<FrontRequest> {
        let log = self.state.log.lock().expect("the request log");
        log.requests.iter().map(|(_, request)| request.clone()).collect()
    }

    /// The [`requests`](Self::requests) that would change state, answered or
    /// not: PUT, PATCH, DELETE, and POST but to `:publish`, `:pull`,
    /// `:acknowledge`, `:modifyAckDeadline` and `:testIamPermissions`.
    pub fn writes(&self) -> Vec<FrontRequest> {
        self.requests().into_iter().filter(FrontRequest::changes_state).collect()
    }

    /// Forgets the requests recorded so far.
    pub fn clear(&self) {
        self.state.log.lock().expect("the request log").requests.clear();
    }

    /// Appends `fault` to the script: the first request from now on whose
    /// method is `method` and whose path contains `path_contains` gets it
    /// instead of being forwarded (and before its token is checked).
    pub fn push_fault(&self, method: Method, path_contains: &str, fault: Fault) {
        let scripted = ScriptedFault { method, path_contains: path_contains.to_owned(), fault };
        self.state.faults.lock().expect("the faults").push(scripted);
    }

    /// Holds the first request from now on whose method is `method` and whose
    /// path contains `path_contains` until [`Held::release`]: a test then
    /// changes the world under a call already sent (another writer wins a race).
    pub fn hold(&self, method: Method, path_contains: &str) -> Held {
        let (arrived, seen) = watch::channel(false);
        let (release, released) = oneshot::channel();
        let scripted = ScriptedHold { method, path_contains: path_contains.to_owned(), arrived, release: released };
        self.state.holds.lock().expect("the holds").push(scripted);
        Held { arrived: seen, release }
    }

    /// Faults scripted and not yet consumed.
    pub fn faults_left(&self) -> usize {
        self.state.faults.lock().expect("the faults").len()
    }

    /// The policy set on `resource` (`projects/p/topics/t`), if any was.
    pub fn policy(&self, resource: &str) -> Option<Value> {
        self.state.policies.lock().expect("the policies").by_resource.get(resource).cloned()
    }

    async fn respond(self, request: http::Request<Incoming>) -> Result<Response, Dropped> {
        let (parts, body) = request.into_parts();
        let body = body.collect().await.map_err(|_| Dropped)?.to_bytes();
        let received = Received::of(&parts, body);
        let id = self.record(received.recorded());
        let response = self.answer(&received).await?;
        self.note_answered(id, response.status().as_u16());
        Ok(response)
    }

    async fn answer(&self, received: &Received) -> Result<Response, Dropped> {
        if let Some(hold) = self.take_hold(&received.method, &received.path) {
            hold.arrived.send_replace(true);
            let _ = hold.release.await;
        }
        if let Some(fault) = self.take_fault(&received.method, &received.path) {
            return faulted(fault, &received.path).await;
        }
        if let Some(refused) = self.state.checking.as_ref().and_then(|m| m.refuse(received.authorization.as_deref())) {
            return Ok(refused);
        }
        Ok(match iam_call(&received.method, &received.path) {
            Some(IamCall::Get(resource)) => self.get_policy(resource, received.query.as_deref()).await,
            Some(IamCall::Set(resource)) => self.set_policy(resource, &received.body).await,
            None => self.forward(received).await,
        })
    }

    fn record(&self, request: FrontRequest) -> u64 {
        let mut log = self.state.log.lock().expect("the request log");
        let id = log.next_id;
        log.next_id += 1;
        log.requests.push((id, request));
        id
    }

    fn note_answered(&self, id: u64, status: u16) {
        let mut log = self.state.log.lock().expect("the request log");
        if let Some((_, request)) = log.requests.iter_mut().find(|(logged, _)| *logged == id) {
            request.answered = status;
        }
    }

    fn take_hold(&self, method: &Method, path: &str) -> Option<ScriptedHold> {
        let mut holds = self.state.holds.lock().expect("the holds");
        let index = holds.iter().position(|h| h.method == *method && path.contains(h.path_contains.as_str()))?;
        Some(holds.remove(index))
    }

    fn take_fault(&self, method: &Method, path: &str) -> Option<Fault> {
        let mut faults = self.state.faults.lock().expect("the faults");
        let index = faults.iter().position(|f| f.method == *method && path.contains(f.path_contains.as_str()))?;
        Some(faults.remove(index).fault)
    }

    async fn forward(&self, received: &Received) -> Response {
        let url = format!("{}{}", self.state.emulator, received.path_and_query());
        let mut request = self.state.client.request(received.method.clone(), url).body(received.body.clone());
        if let Some(content_type) = &received.content_type {
            request = request.header(CONTENT_TYPE, content_type);
        }
        self.relay(request).await
    }

    /// Sends `request` to the emulator and answers what it answered: status,
    /// content type and body. 502 if it could not be reached.
    async fn relay(&self, request: reqwest::RequestBuilder) -> Response {
        let answer = match request.send().await {
            Ok(answer) => answer,
            Err(error) => return self.unreachable(&error),
        };
        let status = answer.status();
        let content_type = answer.headers().get(CONTENT_TYPE).cloned();
        let body = match answer.bytes().await {
            Ok(body) => body,
            Err(error) => return self.unreachable(&error),
        };
        let mut response = http::Response::builder().status(status);
        if let Some(content_type) = content_type {
            response = response.header(CONTENT_TYPE, content_type);
        }
        response.body(Full::new(body)).expect("a response")
    }

    fn unreachable(&self, error: &reqwest::Error) -> Response {
        let emulator = &self.state.emulator;
        let message = format!("the Pub/Sub emulator at {emulator} did not answer (scripts/test.sh starts it): {error}");
        reply(502, "text/plain; charset=utf-8", message)
    }

    /// The emulator's own answer to a GET of `resource` unless it exists.
    async fn missing(&self, resource: &str) -> Option<Response> {
        let response = self.relay(self.state.client.get(format!("{}/v1/{resource}", self.state.emulator))).await;
        (!response.status().is_success()).then_some(response)
    }

    async fn get_policy(&self, resource: &str, query: Option<&str>) -> Response {
        if !requested_version_is_valid(query) {
            return google_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.");
        }
        if let Some(missing) = self.missing(resource).await {
            return missing;
        }
        json_reply(&self.policy(resource).unwrap_or_else(|| json!({"etag": EMPTY_POLICY_ETAG})))
    }

    async fn set_policy(&self, resource: &str, body: &[u8]) -> Response {
        let requested = match requested_policy(body) {
            Ok(requested) => requested,
            Err(message) => return google_error(400, "INVALID_ARGUMENT", &message),
        };
        if let Some(missing) = self.missing(resource).await {
            return missing;
        }
        let mut policies = self.state.policies.lock().expect("the policies");
        if requested.etag.as_deref().is_some_and(|etag| etag != policies.etag(resource)) {
            return google_error(409, "ABORTED", CONCURRENT_POLICY_CHANGES);
        }
        json_reply(&policies.set(resource, requested.bindings))
    }
}

/// A request as read off the wire, its body whole.
struct Received {
    method: Method,
    path: String,
    query: Option<String>,
    content_type: Option<HeaderValue>,
    authorization: Option<String>,
    body: Bytes,
}

impl Received {
    fn of(parts: &http::request::Parts, body: Bytes) -> Received {
        let authorization =
            parts.headers.get(AUTHORIZATION).map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        Received {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            content_type: parts.headers.get(CONTENT_TYPE).cloned(),
            authorization,
            body,
        }
    }

    fn recorded(&self) -> FrontRequest {
        FrontRequest {
            method: self.method.clone(),
            path: self.path.clone(),
            query: self.query.clone(),
            body: serde_json::from_slice(&self.body).ok(),
            authorization: self.authorization.clone(),
            answered: 0,
        }
    }

    fn path_and_query(&self) -> String {
        match &self.query {
            Some(query) => format!("{}?{query}", self.path),
            None => self.path.clone(),
        }
    }
}

/// What a scripted fault answers; `{topic}` in an error's message becomes
/// the id of the resource the path names.
async fn faulted(fault: Fault, path: &str) -> Result<Response, Dropped> {
    match fault {
        Fault::Hang => std::future::pending().await,
        Fault::Close => Err(Dropped),
        Fault::Bare(code) => {
            Ok(http::Response::builder().status(code).body(Full::new(Bytes::new())).expect("a response"))
        }
        Fault::Error { code, status, message } => {
            Ok(google_error(code, status, &message.replace("{topic}", id_of(path))))
        }
    }
}

/// The last segment of `path`, without a `:verb`: `t` of `/v1/projects/p/topics/t:publish`.
fn id_of(path: &str) -> &str {
    let last = path.rsplit('/').next().unwrap_or(path);
    last.split(':').next().unwrap_or(last)
}

/// An IAM call the front answers itself, with the resource it is about.
enum IamCall<'a> {
    Get(&'a str),
    Set(&'a str),
}

/// `GET /v1/{resource}:getIamPolicy` or `POST /v1/{resource}:setIamPolicy`
/// of a topic or a subscription; other resources' IAM goes to the emulator.
fn iam_call<'a>(method: &Method, path: &'a str) -> Option<IamCall<'a>> {
    let (resource, verb) = path.strip_prefix("/v1/")?.rsplit_once(':')?;
    let segments: Vec<&str> = resource.split('/').collect();
    let named = matches!(segments.as_slice(), ["projects", project, "topics" | "subscriptions", id]
        if !project.is_empty() && !id.is_empty());
    match (named, method, verb) {
        (true, &Method::GET, "getIamPolicy") => Some(IamCall::Get(resource)),
        (true, &Method::POST, "setIamPolicy") => Some(IamCall::Set(resource)),
        _ => None,
    }
}

/// Whether `options.requestedPolicyVersion`, when given, is 0, 1 or 3: the
/// versions Google takes.
fn requested_version_is_valid(query: Option<&str>) -> bool {
    let mut pairs = query.unwrap_or_default().split('&').filter_map(|pair| pair.split_once('='));
    pairs.all(|(name, value)| name != "options.requestedPolicyVersion" || ["0", "1", "3"].contains(&value))
}

/// What a setIamPolicy asks for.
struct RequestedPolicy {
    etag: Option<String>,
    bindings: Vec<Value>,
}

/// The policy of a setIamPolicy body, or why it is not one.
fn requested_policy(body: &[u8]) -> Result<RequestedPolicy, String> {
    let request: Value =
        serde_json::from_slice(body).map_err(|error| format!("Invalid JSON payload received. {error}"))?;
    let request = request.as_object().ok_or("Invalid JSON payload received. Root element must be a message.")?;
    if let Some(name) = request.keys().find(|name| !["policy", "updateMask"].contains(&name.as_str())) {
        return Err(format!("Invalid JSON payload received. Unknown name \"{name}\": Cannot find field."));
    }
    let policy = request.get("policy").and_then(Value::as_object).ok_or("policy is required: an object.")?;
    let etag = match policy.get("etag") {
        None | Some(Value::Null) => None,
        Some(Value::String(etag)) => Some(etag.clone()),
        Some(other) => return Err(format!("Invalid value at 'policy.etag' (TYPE_BYTES), {other}")),
    };
    Ok(RequestedPolicy { etag, bindings: bindings(policy)? })
}

/// `policy.bindings`, each a `{role: string, members: [string]}` (other
/// fields kept as sent).
fn bindings(policy: &Map<String, Value>) -> Result<Vec<Value>, String> {
    let bindings = match policy.get("bindings") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(bindings)) => bindings,
        Some(other) => {
            return Err(format!(
                "Invalid value at 'policy.bindings' (type.googleapis.com/google.iam.v1.Binding), {other}"
            ));
        }
    };
    for (index, binding) in bindings.iter().enumerate() {
        let role = binding.get("role").and_then(Value::as_str);
        let members = binding.get("members").and_then(Value::as_array);
        let members_are_strings = members.is_some_and(|members| members.iter().all(Value::is_string));
        if role.is_none() || !members_are_strings {
            return Err(format!(
                "Invalid value at 'policy.bindings[{index}]' (type.googleapis.com/google.iam.v1.Binding): a role \
                 (string) and members (strings) are required, not {binding}"
            ));
        }
    }
    Ok(bindings.clone())
}

fn json_reply(body: &Value) -> Response {
    reply(200, "application/json; charset=UTF-8", body.to_string())
}
