//! A loopback stub of Cloud Scheduler's REST v1 API: jobs under
//! `projects/{p}/locations/{l}` created, listed, read, patched, paused,
//! resumed and deleted, validated and answered in Google's shapes, with a
//! script of faults. It keeps jobs in memory only and runs none of them.
//!
//! Checked against Google's documentation
//! (docs.cloud.google.com/scheduler/docs/reference/rest/v1/projects.locations.jobs
//! and its methods' pages, and …/scheduler/docs/configuring/retry-jobs):
//! - A job id is `[A-Za-z0-9_-]`, at most 500 characters; `name` is optional on
//!   create; `schedule` is required except on patch; the target is a oneof
//!   (`pubsubTarget`, `appEngineHttpTarget`, `httpTarget`); a Pub/Sub target's
//!   topic is `projects/{p}/topics/{t}` in the job's own project, and its
//!   message needs non-empty data or at least one attribute.
//! - An unset time zone means UTC. Retry defaults: `retryCount` 0 (0 to 5
//!   allowed), `maxRetryDuration` 0 (unlimited), `minBackoffDuration` 5 s,
//!   `maxBackoffDuration` 1 hour, `maxDoublings` 5.
//! - List: at most 500 a page, 500 when unset, `nextPageToken` while more.
//! - Patch and the others answer NOT_FOUND for a missing job; output-only
//!   fields in a request are ignored. Pause wants an ENABLED job, resume a
//!   PAUSED one (what Google answers otherwise is not documented).
//! - Durations and timestamps in proto3 JSON: 0, 3, 6 or 9 fractional digits.
//!
//! Messages as Google's servers were seen to answer them in public issue
//! threads: 409 "Job projects/…/jobs/x already exists."
//! (hashicorp/terraform-provider-google#16918); 400 "Schedule or time zone is
//! invalid." (hashicorp/terraform#31571, a job without a schedule; also
//! googleapis/google-cloud-go#1352); 400 "Job name must be formatted: …"
//! (googleapis/nodejs-scheduler#114); 400 "Resource name should start with
//! \"/projects/<PROJECT_ID>/\"" for a bare topic name
//! (hashicorp/terraform-provider-google#3086); 400 "Invalid mask for Job: …"
//! (googleapis/nodejs-scheduler#447).
//!
//! Assumed, not confirmed:
//! - 404 says "Job not found."; a name under another parent gets the same
//!   message as a malformed one; the messages for no target, an empty Pub/Sub
//!   message, a topic in another project and a bad page token are made up;
//!   other bad values get Google's generic "Request contains an invalid argument.".
//! - An unset time zone is answered as "Etc/UTC" (gcloud's default; the docs
//!   only say UTC). Zones are checked for shape only, schedules for five
//!   fields of cron characters only (the legacy English-like schedules are refused).
//! - `maxDoublings` sent as 0 reads as unset (proto3 cannot tell them apart)
//!   and becomes 5. `attemptDeadline` is kept as sent; App Engine and HTTP
//!   targets are kept as sent, unchecked.
//! - Pausing a paused job, or resuming an enabled one, answers the job
//!   unchanged. Patch sets `userUpdateTime` (the docs call it the creation
//!   time; its name says update time); pause and resume leave it.
//! - With no `updateMask`, every field the body sets replaces the stored one
//!   and the rest are kept. `pageSize` above 500 is cut to 500.
//! - A name left out on create gets a decimal id (`…/jobs/1`, `…/jobs/2`, …).
//! - `scheduleTime` is the next whole minute after the create or patch.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use chrono::{DateTime, DurationRound as _, SecondsFormat, SubsecRound as _, TimeDelta, Utc};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::google::{Dropped, Fault, MetadataStub, Response, google_error, reply, serve};

/// Cloud Scheduler's largest page, also a list's page when `pageSize` is unset.
pub const MAX_PAGE_SIZE: usize = 500;
/// The longest job id Cloud Scheduler takes.
pub const MAX_JOB_ID: usize = 500;
/// The time zone a job created without one is answered with.
pub const DEFAULT_TIME_ZONE: &str = "Etc/UTC";

const JSON: &str = "application/json; charset=UTF-8";
const INVALID_SCHEDULE: &str = "Schedule or time zone is invalid.";
const INVALID_ARGUMENT: &str = "Request contains an invalid argument.";
const BAD_JOB_NAME: &str =
    "Job name must be formatted: \"projects/<PROJECT_ID>/locations/<LOCATION_ID>/jobs/<JOB_ID>\".";
const BAD_TOPIC_NAME: &str = "Resource name should start with \"/projects/<PROJECT_ID>/\"";
const NO_TARGET: &str = "A job must have a target: pubsubTarget, appEngineHttpTarget or httpTarget.";
const EMPTY_MESSAGE: &str = "Pubsub message must contain either non-empty data, or at least one attribute.";
const OTHER_PROJECT: &str = "The Pub/Sub topic must be in the same project as the job.";
const BAD_PAGE_TOKEN: &str = "Invalid page token.";

/// The fields of the `target` oneof, as JSON names them.
const TARGETS: [&str; 3] = ["pubsubTarget", "appEngineHttpTarget", "httpTarget"];

/// Query parameters every Google REST method takes.
const SYSTEM_PARAMETERS: &[&str] = &[
    "$.xgafv",
    "access_token",
    "alt",
    "callback",
    "fields",
    "key",
    "oauth_token",
    "prettyPrint",
    "quotaUser",
    "upload_protocol",
    "uploadType",
];

// ---------------------------------------------------------------------------
// The stub
// ---------------------------------------------------------------------------

/// One request the stub received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerRequest {
    pub method: http::Method,
    /// The URI's path, e.g. `/v1/projects/p/locations/l/jobs/j:pause`.
    pub path: String,
    /// The URI's query, as sent (not decoded).
    pub query: Option<String>,
    /// The body, when it was JSON.
    pub body: Option<Value>,
    /// The `Authorization` header, as sent.
    pub authorization: Option<String>,
    /// The status answered; 0 while unanswered, and for ever after a
    /// [`Fault::Hang`] or [`Fault::Close`].
    pub answered: u16,
}

/// The stub's state, shared with its HTTP server.
struct SchedulerState {
    /// Whose tokens a checking stub accepts.
    checking: Option<MetadataStub>,
    /// Every job by full name, as GET answers it. One lock for check and
    /// insert is what makes a create atomic.
    jobs: Mutex<BTreeMap<String, Map<String, Value>>>,
    /// Each fault, and the method it waits for (any, when none).
    faults: Mutex<VecDeque<(Option<http::Method>, Fault)>>,
    recorded: Mutex<Vec<SchedulerRequest>>,
    /// The last `userUpdateTime` given, so that each is later than the one before.
    clock: Mutex<DateTime<Utc>>,
    /// The id of the next job created without a name.
    next_id: AtomicU64,
    down: watch::Sender<bool>,
}

/// Cloud Scheduler's REST v1 jobs API on loopback (see the module's doc for
/// what is checked and what is assumed). A script of [`Fault`]s is consumed
/// one per request, whatever its method or path, before anything else.
/// Dropping it does not stop the server, the test's runtime does.
#[derive(Clone)]
pub struct SchedulerStub {
    addr: SocketAddr,
    state: Arc<SchedulerState>,
}

impl SchedulerStub {
    /// A stub that takes any `Authorization`, or none.
    pub async fn start() -> SchedulerStub {
        Self::listen(None).await
    }

    /// A stub that answers 401 UNAUTHENTICATED unless the request carries
    /// `Authorization: Bearer <token>` with a token `metadata` issued and
    /// whose `expires_in` has not run out.
    pub async fn start_checking(metadata: &MetadataStub) -> SchedulerStub {
        Self::listen(Some(metadata.clone())).await
    }

    async fn listen(checking: Option<MetadataStub>) -> SchedulerStub {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the Cloud Scheduler stub");
        let state = Arc::new(SchedulerState {
            checking,
            jobs: Mutex::new(BTreeMap::new()),
            faults: Mutex::new(VecDeque::new()),
            recorded: Mutex::new(Vec::new()),
            clock: Mutex::new(DateTime::<Utc>::MIN_UTC),
            next_id: AtomicU64::new(1),
            down: watch::Sender::new(false),
        });
        let stub = SchedulerStub { addr: listener.local_addr().expect("Cloud Scheduler stub address"), state };
        let served = stub.clone();
        serve(listener, stub.state.down.subscribe(), move |request| served.clone().respond(request));
        stub
    }

    /// `http://127.0.0.1:PORT`: the API's base URL, without `/v1`, for
    /// `TASKS_SCHEDULER_ENDPOINT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every job, by name, as GET answers each.
    pub fn jobs(&self) -> Vec<Value> {
        self.state.jobs.lock().expect("the jobs").values().map(|job| Value::Object(job.clone())).collect()
    }

    /// The job named `name` (`projects/{p}/locations/{l}/jobs/{id}`), as GET answers it.
    pub fn job(&self, name: &str) -> Option<Value> {
        self.state.jobs.lock().expect("the jobs").get(name).map(|job| Value::Object(job.clone()))
    }

    /// Seeds `job` (a Job with a full `name`) as a create would store it,
    /// replacing any job of that name; no request is recorded. Unlike a
    /// create it keeps a `state` given, so a test can seed a PAUSED job.
    /// Panics if Google would refuse the job.
    pub fn insert(&self, job: Value) {
        let state = job.get("state").and_then(Value::as_str).unwrap_or("ENABLED").to_owned();
        let mut job = decode_job(job).unwrap_or_else(|message| panic!("not a Job: {message}"));
        let name = job.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
        assert!(job_parent(&name).is_some(), "a seeded job needs a name projects/p/locations/l/jobs/id: {name:?}");
        complete(&mut job);
        validate(&job).unwrap_or_else(|message| panic!("Google would refuse {name}: {message}"));
        self.stamp(&mut job);
        job.insert("state".to_owned(), json!(state));
        self.state.jobs.lock().expect("the jobs").insert(name, job);
    }

    /// Every request received, in order of arrival.
    pub fn requests(&self) -> Vec<SchedulerRequest> {
        self.state.recorded.lock().expect("the requests").clone()
    }

    /// Requests received other than GETs, answered or not.
    pub fn writes(&self) -> usize {
        let recorded = self.state.recorded.lock().expect("the requests");
        recorded.iter().filter(|request| request.method != http::Method::GET).count()
    }

    /// Appends `fault` to the script: the next request without one of its own gets it.
    pub fn push_fault(&self, fault: Fault) {
        self.state.faults.lock().expect("the faults").push_back((None, fault));
    }

    /// Appends `fault` for the next `method` request: a create's fault that a
    /// list before it leaves alone.
    pub fn push_fault_on(&self, method: http::Method, fault: Fault) {
        self.state.faults.lock().expect("the faults").push_back((Some(method), fault));
    }

    /// While down, the port stays bound but every connection, open or new, is
    /// closed at once without an answer.
    pub fn set_down(&self, down: bool) {
        self.state.down.send_replace(down);
    }

    async fn respond(self, request: http::Request<Incoming>) -> Result<Response, Dropped> {
        let (parts, body) = request.into_parts();
        let body = body.collect().await.map_err(|_| Dropped)?.to_bytes();
        let index = self.record(&parts, &body);
        let fault = self.take_fault(&parts.method);
        if let Some(fault) = fault {
            return self.fault(index, fault, parts.uri.path()).await;
        }
        let response = self.answer(&parts, &body);
        Ok(self.note(index, response))
    }

    /// The first scripted fault for any method or for `method`.
    fn take_fault(&self, method: &http::Method) -> Option<Fault> {
        let mut faults = self.state.faults.lock().expect("the faults");
        let index = faults.iter().position(|(only, _)| only.as_ref().is_none_or(|only| only == method))?;
        faults.remove(index).map(|(_, fault)| fault)
    }

    /// Records the request, unanswered; its index in the record.
    fn record(&self, parts: &http::request::Parts, body: &[u8]) -> usize {
        let authorization =
            parts.headers.get("authorization").map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        let request = SchedulerRequest {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            body: serde_json::from_slice(body).ok(),
            authorization,
            answered: 0,
        };
        let mut recorded = self.state.recorded.lock().expect("the requests");
        recorded.push(request);
        recorded.len() - 1
    }

    /// Notes that request `index` was answered with `response`'s status.
    fn note(&self, index: usize, response: Response) -> Response {
        if let Some(recorded) = self.state.recorded.lock().expect("the requests").get_mut(index) {
            recorded.answered = response.status().as_u16();
        }
        response
    }

    /// The scripted answer; `{topic}` in a [`Fault::Error`]'s message becomes
    /// the last segment of the path (the job id, for a job's path).
    async fn fault(&self, index: usize, fault: Fault, path: &str) -> Result<Response, Dropped> {
        match fault {
            Fault::Hang => std::future::pending().await,
            Fault::Close => Err(Dropped),
            Fault::Bare(code) => {
                let response =
                    http::Response::builder().status(code).body(Full::new(Bytes::new())).expect("a response");
                Ok(self.note(index, response))
            }
            Fault::Error { code, status, message } => {
                let message = message.replace("{topic}", resource_id(path));
                Ok(self.note(index, google_error(code, status, &message)))
            }
        }
    }

    /// Google's answer: an unknown URL first, then the bearer token, then the method.
    fn answer(&self, parts: &http::request::Parts, body: &[u8]) -> Response {
        let Some(operation) = Operation::of(&parts.method, parts.uri.path()) else {
            return not_found_page(parts.uri.path());
        };
        let authorization = parts.headers.get("authorization").and_then(|value| value.to_str().ok());
        if let Some(refused) = self.state.checking.as_ref().and_then(|metadata| metadata.refuse(authorization)) {
            return refused;
        }
        match self.perform(operation, parts.uri.query(), body) {
            Ok(answer) => reply(200, JSON, answer.to_string()),
            Err(failure) => failure.response(),
        }
    }

    fn perform(&self, operation: Operation, query: Option<&str>, body: &[u8]) -> Result<Value, Failure> {
        let parameters = parameters(query, operation.parameters())?;
        match operation {
            Operation::Create(parent) => self.create(&parent, body),
            Operation::List(parent) => self.list(&parent, &parameters),
            Operation::Get(name) => self.get(&name),
            Operation::Patch(name) => self.patch(&name, parameters.get("updateMask").map(String::as_str), body),
            Operation::Delete(name) => self.delete(&name),
            Operation::Pause(name) => self.set_state(&name, "PAUSED", body),
            Operation::Resume(name) => self.set_state(&name, "ENABLED", body),
        }
    }

    fn create(&self, parent: &str, body: &[u8]) -> Result<Value, Failure> {
        let mut job = parse_job(body).map_err(Failure::invalid)?;
        let name = self.created_name(parent, job.get("name")).map_err(Failure::invalid)?;
        job.insert("name".to_owned(), json!(name));
        complete(&mut job);
        validate(&job).map_err(Failure::invalid)?;
        self.stamp(&mut job);
        job.insert("state".to_owned(), json!("ENABLED"));
        let mut jobs = self.state.jobs.lock().expect("the jobs");
        if jobs.contains_key(&name) {
            return Err(Failure::already_exists(&name));
        }
        jobs.insert(name, job.clone());
        Ok(Value::Object(job))
    }

    /// The name a created job takes: the body's, which must lie under
    /// `parent`, or a new one when the body has none.
    fn created_name(&self, parent: &str, given: Option<&Value>) -> Result<String, String> {
        let Some(name) = given.and_then(Value::as_str) else {
            return Ok(format!("{parent}/jobs/{}", self.state.next_id.fetch_add(1, Ordering::SeqCst)));
        };
        match job_parent(name) {
            Some(under) if under == parent => Ok(name.to_owned()),
            _ => Err(BAD_JOB_NAME.to_owned()),
        }
    }

    fn list(&self, parent: &str, parameters: &BTreeMap<String, String>) -> Result<Value, Failure> {
        let size = page_size(parameters.get("pageSize"))?;
        let prefix = format!("{parent}/jobs/");
        let after = page_token(parameters.get("pageToken"), &prefix)?;
        let jobs = self.state.jobs.lock().expect("the jobs");
        let mut page: Vec<(&String, &Map<String, Value>)> = jobs
            .iter()
            .filter(|(name, _)| name.starts_with(&prefix) && after.as_ref().is_none_or(|after| *name > after))
            .take(size + 1)
            .collect();
        let more = page.len() > size;
        page.truncate(size);
        let mut answer = Map::new();
        if !page.is_empty() {
            answer.insert("jobs".to_owned(), page.iter().map(|(_, job)| Value::Object((*job).clone())).collect());
        }
        if let Some((last, _)) = page.last().filter(|_| more) {
            answer.insert("nextPageToken".to_owned(), json!(URL_SAFE_NO_PAD.encode(last)));
        }
        Ok(Value::Object(answer))
    }

    fn get(&self, name: &str) -> Result<Value, Failure> {
        let jobs = self.state.jobs.lock().expect("the jobs");
        jobs.get(name).map(|job| Value::Object(job.clone())).ok_or_else(Failure::not_found)
    }

    fn patch(&self, name: &str, mask: Option<&str>, body: &[u8]) -> Result<Value, Failure> {
        let update = parse_job(body).map_err(Failure::invalid)?;
        let paths = mask.map(field_mask).transpose().map_err(Failure::invalid)?;
        let mut jobs = self.state.jobs.lock().expect("the jobs");
        let mut job = jobs.get(name).ok_or_else(Failure::not_found)?.clone();
        match paths {
            Some(paths) => paths.iter().for_each(|path| apply_path(&mut job, &update, path)),
            None => apply_all(&mut job, update),
        }
        complete(&mut job);
        validate(&job).map_err(Failure::invalid)?;
        self.stamp(&mut job);
        jobs.insert(name.to_owned(), job.clone());
        Ok(Value::Object(job))
    }

    fn delete(&self, name: &str) -> Result<Value, Failure> {
        let removed = self.state.jobs.lock().expect("the jobs").remove(name);
        removed.map(|_| json!({})).ok_or_else(Failure::not_found)
    }

    /// Pause or resume: the job with `state`, whatever state it was in.
    fn set_state(&self, name: &str, state: &str, body: &[u8]) -> Result<Value, Failure> {
        check_empty_request(body).map_err(Failure::invalid)?;
        let mut jobs = self.state.jobs.lock().expect("the jobs");
        let job = jobs.get_mut(name).ok_or_else(Failure::not_found)?;
        job.insert("state".to_owned(), json!(state));
        Ok(Value::Object(job.clone()))
    }

    /// Sets the output-only times of a job being written: `userUpdateTime`
    /// now (later than any before it) and `scheduleTime` the next whole minute.
    fn stamp(&self, job: &mut Map<String, Value>) {
        let now = {
            let mut last = self.state.clock.lock().expect("the clock");
            *last = Utc::now().trunc_subsecs(6).max(*last + TimeDelta::microseconds(1));
            *last
        };
        let next_minute = now.duration_trunc(TimeDelta::minutes(1)).unwrap_or(now) + TimeDelta::minutes(1);
        job.insert("userUpdateTime".to_owned(), json!(now.to_rfc3339_opts(SecondsFormat::AutoSi, true)));
        job.insert("scheduleTime".to_owned(), json!(next_minute.to_rfc3339_opts(SecondsFormat::Secs, true)));
    }
}

// ---------------------------------------------------------------------------
// Routes and answers
// ---------------------------------------------------------------------------

/// A request the API serves, with the parent or job name from its path.
enum Operation {
    Create(String),
    List(String),
    Get(String),
    Patch(String),
    Delete(String),
    Pause(String),
    Resume(String),
}

impl Operation {
    /// What `method` on `path` asks for; `None` for a URL Google does not serve.
    fn of(method: &http::Method, path: &str) -> Option<Operation> {
        let resource = path.strip_prefix("/v1/")?;
        let segments: Vec<&str> = resource.split('/').collect();
        if segments.iter().any(|segment| segment.is_empty()) {
            return None;
        }
        match (segments.as_slice(), method.as_str()) {
            (["projects", _, "locations", _, "jobs"], "POST") => Some(Operation::Create(parent_of(resource))),
            (["projects", _, "locations", _, "jobs"], "GET") => Some(Operation::List(parent_of(resource))),
            (["projects", _, "locations", _, "jobs", _], method) => Self::on_job(method, resource),
            _ => None,
        }
    }

    fn on_job(method: &str, resource: &str) -> Option<Operation> {
        let (name, verb) = resource.split_once(':').unwrap_or((resource, ""));
        if name.ends_with("/jobs/") {
            return None;
        }
        let name = name.to_owned();
        match (method, verb) {
            ("GET", "") => Some(Operation::Get(name)),
            ("PATCH", "") => Some(Operation::Patch(name)),
            ("DELETE", "") => Some(Operation::Delete(name)),
            ("POST", "pause") => Some(Operation::Pause(name)),
            ("POST", "resume") => Some(Operation::Resume(name)),
            _ => None,
        }
    }

    /// The query parameters of the method, besides the system ones.
    fn parameters(&self) -> &'static [&'static str] {
        match self {
            Operation::List(_) => &["pageSize", "pageToken"],
            Operation::Patch(_) => &["updateMask"],
            _ => &[],
        }
    }
}

/// `projects/{p}/locations/{l}` of `projects/{p}/locations/{l}/jobs`.
fn parent_of(jobs: &str) -> String {
    jobs.trim_end_matches("/jobs").to_owned()
}

/// The parent of a well-formed job name `projects/{p}/locations/{l}/jobs/{id}`.
fn job_parent(name: &str) -> Option<&str> {
    let (parent, id) = name.rsplit_once("/jobs/")?;
    let segments: Vec<&str> = parent.split('/').collect();
    let well_formed = matches!(segments.as_slice(), ["projects", p, "locations", l] if !p.is_empty() && !l.is_empty());
    (well_formed && is_job_id(id)).then_some(parent)
}

fn is_job_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_JOB_ID && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The last segment of `path`, without a `:verb`.
fn resource_id(path: &str) -> &str {
    let last = path.rsplit('/').next().unwrap_or(path);
    last.split(':').next().unwrap_or(last)
}

/// A Google error a request is answered with.
#[derive(Debug)]
struct Failure {
    code: u16,
    status: &'static str,
    message: String,
}

impl Failure {
    fn invalid(message: impl Into<String>) -> Failure {
        Failure { code: 400, status: "INVALID_ARGUMENT", message: message.into() }
    }

    fn not_found() -> Failure {
        Failure { code: 404, status: "NOT_FOUND", message: "Job not found.".to_owned() }
    }

    fn already_exists(name: &str) -> Failure {
        Failure { code: 409, status: "ALREADY_EXISTS", message: format!("Job {name} already exists.") }
    }

    fn response(&self) -> Response {
        google_error(self.code, self.status, &self.message)
    }
}

/// Google's HTML page for a URL its front end does not route.
fn not_found_page(path: &str) -> Response {
    let body = format!(
        "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <title>Error 404 (Not Found)!!1</title>\n  \
         <p><b>404.</b> <ins>That’s an error.</ins>\n  <p>The requested URL <code>{path}</code> was not found on \
         this server.  <ins>That’s all we know.</ins>\n"
    );
    reply(404, "text/html; charset=UTF-8", body)
}

/// The query's parameters, decoded, by their camelCase names; 400 for one
/// the method does not have, as Google answers it.
fn parameters(query: Option<&str>, allowed: &[&str]) -> Result<BTreeMap<String, String>, Failure> {
    let mut parameters = BTreeMap::new();
    for pair in query.unwrap_or_default().split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let raw = percent_decode(name);
        let name = camel_case(&raw);
        if !allowed.contains(&name.as_str()) && !SYSTEM_PARAMETERS.contains(&raw.as_str()) {
            return Err(Failure::invalid(format!(
                "Invalid JSON payload received. Unknown name \"{name}\": Cannot bind query parameter. Field \
                 '{name}' could not be found in request message."
            )));
        }
        parameters.insert(name, percent_decode(value));
    }
    Ok(parameters)
}

/// A query component decoded: `%XX` escapes and `+` for a space.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = bytes.get(index + 1..index + 3).and_then(|hex| std::str::from_utf8(hex).ok());
        let escaped = escaped.and_then(|hex| u8::from_str_radix(hex, 16).ok()).filter(|_| bytes[index] == b'%');
        let (byte, width) = match (bytes[index], escaped) {
            (_, Some(byte)) => (byte, 3),
            (b'+', None) => (b' ', 1),
            (byte, None) => (byte, 1),
        };
        decoded.push(byte);
        index += width;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// `snake_case` as proto3 JSON's lowerCamelCase; camelCase is left as it is.
fn camel_case(name: &str) -> String {
    let mut parts = name.split('_');
    let first = parts.next().unwrap_or_default().to_owned();
    parts.fold(first, |mut camel, part| {
        let mut chars = part.chars();
        camel.extend(chars.next().map(|c| c.to_ascii_uppercase()));
        camel.push_str(chars.as_str());
        camel
    })
}

/// `pageSize`: unset or 0 is the maximum, and so is anything above it.
fn page_size(given: Option<&String>) -> Result<usize, Failure> {
    let Some(text) = given.filter(|text| !text.is_empty()) else {
        return Ok(MAX_PAGE_SIZE);
    };
    let size: i32 =
        text.parse().map_err(|_| Failure::invalid(format!("Invalid value at 'page_size' (TYPE_INT32), \"{text}\"")))?;
    match usize::try_from(size) {
        Ok(0) => Ok(MAX_PAGE_SIZE),
        Ok(size) => Ok(size.min(MAX_PAGE_SIZE)),
        Err(_) => Err(Failure::invalid(INVALID_ARGUMENT)),
    }
}

/// The name a page token continues after: tokens are the last name of the
/// page before, base64url, and must belong to the listed parent.
fn page_token(given: Option<&String>, prefix: &str) -> Result<Option<String>, Failure> {
    let Some(token) = given.filter(|token| !token.is_empty()) else {
        return Ok(None);
    };
    let name = URL_SAFE_NO_PAD.decode(token).ok().and_then(|name| String::from_utf8(name).ok());
    match name {
        Some(name) if name.starts_with(prefix) => Ok(Some(name)),
        _ => Err(Failure::invalid(BAD_PAGE_TOKEN)),
    }
}

/// Pause and resume take an empty request: no body, `{}`, or only the name the path already gives.
fn check_empty_request(body: &[u8]) -> Result<(), String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|error| format!("Invalid JSON payload received. {error}"))?;
    let Value::Object(fields) = value else {
        return Err(format!(
            "Invalid JSON payload received. Unknown name \"\": Root element must be a message ({value})."
        ));
    };
    match fields.keys().find(|name| name.as_str() != "name") {
        Some(name) => Err(format!("Invalid JSON payload received. Unknown name \"{name}\": Cannot find field.")),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// Jobs in proto3 JSON
// ---------------------------------------------------------------------------

/// How a field is read from proto3 JSON.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Int32,
    /// `google.protobuf.Duration`: `"{seconds}[.{fraction}]s"`.
    Duration,
    /// Base64, standard or URL-safe, padded or not; answered standard and padded.
    Bytes,
    /// A `map<string, string>` of the named entry type.
    TextMap(&'static str),
    Message(&'static Message),
    /// A message of the named type kept as sent, unchecked.
    Opaque(&'static str),
    /// Ignored when a client sends it.
    OutputOnly,
}

/// A field by its JSON (lowerCamelCase) and proto (snake_case) names.
struct Field {
    json: &'static str,
    proto: &'static str,
    kind: Kind,
}

/// A message type: its full name and fields.
struct Message {
    type_name: &'static str,
    fields: &'static [Field],
}

impl Message {
    /// The field `name` names, by its JSON or its proto name.
    fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|field| field.json == name || field.proto == name)
    }
}

const fn field(json: &'static str, proto: &'static str, kind: Kind) -> Field {
    Field { json, proto, kind }
}

static RETRY_CONFIG: Message = Message {
    type_name: "google.cloud.scheduler.v1.RetryConfig",
    fields: &[
        field("retryCount", "retry_count", Kind::Int32),
        field("maxRetryDuration", "max_retry_duration", Kind::Duration),
        field("minBackoffDuration", "min_backoff_duration", Kind::Duration),
        field("maxBackoffDuration", "max_backoff_duration", Kind::Duration),
        field("maxDoublings", "max_doublings", Kind::Int32),
    ],
};

static PUBSUB_TARGET: Message = Message {
    type_name: "google.cloud.scheduler.v1.PubsubTarget",
    fields: &[
        field("topicName", "topic_name", Kind::Text),
        field("data", "data", Kind::Bytes),
        field("attributes", "attributes", Kind::TextMap("google.cloud.scheduler.v1.PubsubTarget.AttributesEntry")),
    ],
};

static JOB: Message = Message {
    type_name: "google.cloud.scheduler.v1.Job",
    fields: &[
        field("name", "name", Kind::Text),
        field("description", "description", Kind::Text),
        field("pubsubTarget", "pubsub_target", Kind::Message(&PUBSUB_TARGET)),
        field(
            "appEngineHttpTarget",
            "app_engine_http_target",
            Kind::Opaque("google.cloud.scheduler.v1.AppEngineHttpTarget"),
        ),
        field("httpTarget", "http_target", Kind::Opaque("google.cloud.scheduler.v1.HttpTarget")),
        field("schedule", "schedule", Kind::Text),
        field("timeZone", "time_zone", Kind::Text),
        field("userUpdateTime", "user_update_time", Kind::OutputOnly),
        field("state", "state", Kind::OutputOnly),
        field("status", "status", Kind::OutputOnly),
        field("scheduleTime", "schedule_time", Kind::OutputOnly),
        field("lastAttemptTime", "last_attempt_time", Kind::OutputOnly),
        field("retryConfig", "retry_config", Kind::Message(&RETRY_CONFIG)),
        field("attemptDeadline", "attempt_deadline", Kind::Duration),
    ],
};

/// A request body as a Job: empty reads as `{}`.
fn parse_job(body: &[u8]) -> Result<Map<String, Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let value = serde_json::from_slice(body).map_err(|error| format!("Invalid JSON payload received. {error}"))?;
    decode_job(value)
}

/// `value` read as a Job, with at most one target.
fn decode_job(value: Value) -> Result<Map<String, Value>, String> {
    if !value.is_object() {
        return Err(format!(
            "Invalid JSON payload received. Unknown name \"\": Root element must be a message ({value})."
        ));
    }
    let job = decode(&JOB, "job", value)?;
    if let Some(second) = TARGETS.iter().filter(|target| job.contains_key(**target)).nth(1) {
        let proto = JOB.field(second).map_or(*second, |field| field.proto);
        return Err(format!(
            "Invalid JSON payload received. Oneof field 'target' is already set. Cannot set '{proto}'"
        ));
    }
    Ok(job)
}

/// `value` read as a `message` at `at` (a proto path, for messages): fields
/// by their JSON names, in canonical form; nulls, default values and
/// output-only fields left out, as proto3 JSON answers them.
fn decode(message: &Message, at: &str, value: Value) -> Result<Map<String, Value>, String> {
    let Value::Object(fields) = value else {
        return Err(format!("Invalid value at '{at}' (type.googleapis.com/{}), {value}", message.type_name));
    };
    let mut decoded = Map::new();
    for (name, value) in fields {
        let field = message.field(&name).ok_or_else(|| {
            format!("Invalid JSON payload received. Unknown name \"{name}\" at '{at}': Cannot find field.")
        })?;
        if value.is_null() {
            continue;
        }
        if let Some(value) = decode_field(field.kind, &format!("{at}.{}", field.proto), value)? {
            decoded.insert(field.json.to_owned(), value);
        }
    }
    Ok(decoded)
}

/// One field's value in canonical form, or `None` for the default.
fn decode_field(kind: Kind, at: &str, value: Value) -> Result<Option<Value>, String> {
    let wrong = |value: &Value, type_name: &str| format!("Invalid value at '{at}' ({type_name}), {value}");
    match (kind, value) {
        (Kind::OutputOnly, _) => Ok(None),
        (Kind::Text, Value::String(text)) => Ok((!text.is_empty()).then_some(Value::String(text))),
        (Kind::Int32, value) => {
            int32(&value).ok_or_else(|| wrong(&value, "TYPE_INT32")).map(|n| (n != 0).then(|| json!(n)))
        }
        (Kind::Duration, Value::String(text)) => duration(&text)
            .map(|text| Some(Value::String(text)))
            .ok_or_else(|| wrong(&json!(text), "type.googleapis.com/google.protobuf.Duration")),
        (Kind::Bytes, Value::String(data)) => decode_bytes(&data)
            .map(|bytes| (!bytes.is_empty()).then(|| json!(STANDARD.encode(bytes))))
            .ok_or_else(|| format!("Invalid value at '{at}' (TYPE_BYTES), Base64 decoding failed for \"{data}\"")),
        (Kind::TextMap(_), Value::Object(map)) => text_map(at, map),
        (Kind::Message(message), value) => decode(message, at, value).map(|message| Some(Value::Object(message))),
        (Kind::Opaque(_), Value::Object(message)) => Ok(Some(Value::Object(message))),
        (Kind::Text, value) => Err(wrong(&value, "TYPE_STRING")),
        (Kind::Duration, value) => Err(wrong(&value, "type.googleapis.com/google.protobuf.Duration")),
        (Kind::Bytes, value) => Err(wrong(&value, "TYPE_BYTES")),
        (Kind::TextMap(entry) | Kind::Opaque(entry), value) => {
            Err(wrong(&value, &format!("type.googleapis.com/{entry}")))
        }
    }
}

/// An int32 as proto3 JSON takes one: a number, or a string of one.
fn int32(value: &Value) -> Option<i64> {
    let number = match value {
        Value::Number(number) => {
            number.as_i64().or_else(|| number.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
        }
        Value::String(text) => text.parse().ok(),
        _ => None,
    }?;
    i32::try_from(number).is_ok().then_some(number)
}

/// A `map<string, string>`: every value a string.
fn text_map(at: &str, map: Map<String, Value>) -> Result<Option<Value>, String> {
    if let Some((key, value)) = map.iter().find(|(_, value)| !value.is_string()) {
        return Err(format!("Invalid value at '{at}[{key}].value' (TYPE_STRING), {value}"));
    }
    Ok((!map.is_empty()).then_some(Value::Object(map)))
}

/// `"{seconds}[.{fraction}]s"`, negative or not, written back with 0, 3, 6
/// or 9 fractional digits as Google writes a Duration.
fn duration(text: &str) -> Option<String> {
    let (sign, number) = text.strip_suffix('s')?.strip_prefix('-').map_or(("", text.strip_suffix('s')?), |n| ("-", n));
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |part: &str| part.bytes().all(|byte| byte.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) || fraction.len() > 9 {
        return None;
    }
    let seconds: u64 = whole.parse().ok().filter(|&seconds| seconds <= 315_576_000_000)?;
    let nanos: u32 = if fraction.is_empty() { 0 } else { format!("{fraction:0<9}").parse().ok()? };
    let sign = if seconds == 0 && nanos == 0 { "" } else { sign };
    Some(match nanos {
        0 => format!("{sign}{seconds}s"),
        _ if nanos.is_multiple_of(1_000_000) => format!("{sign}{seconds}.{:03}s", nanos / 1_000_000),
        _ if nanos.is_multiple_of(1_000) => format!("{sign}{seconds}.{:06}s", nanos / 1_000),
        _ => format!("{sign}{seconds}.{nanos:09}s"),
    })
}

/// Base64 as proto3 JSON takes it: standard or URL-safe, padded or not.
fn decode_bytes(data: &str) -> Option<Vec<u8>> {
    let config = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    [GeneralPurpose::new(&alphabet::STANDARD, config), GeneralPurpose::new(&alphabet::URL_SAFE, config)]
        .iter()
        .find_map(|engine| engine.decode(data).ok())
}

/// Fills in what Google fills in for a job that leaves it out: the time zone
/// and the retry settings.
fn complete(job: &mut Map<String, Value>) {
    job.entry("timeZone").or_insert_with(|| json!(DEFAULT_TIME_ZONE));
    let retry = job.entry("retryConfig").or_insert_with(|| json!({}));
    if let Value::Object(retry) = retry {
        let defaults = [
            ("maxRetryDuration", json!("0s")),
            ("minBackoffDuration", json!("5s")),
            ("maxBackoffDuration", json!("3600s")),
            ("maxDoublings", json!(5)),
        ];
        for (key, value) in defaults {
            retry.entry(key).or_insert(value);
        }
    }
}

/// Google's checks of a job about to be stored, complete: what create and patch refuse with 400.
fn validate(job: &Map<String, Value>) -> Result<(), &'static str> {
    let text = |key: &str| job.get(key).and_then(Value::as_str);
    if !text("schedule").is_some_and(is_cron) || !text("timeZone").is_some_and(is_time_zone) {
        return Err(INVALID_SCHEDULE);
    }
    if text("description").is_some_and(|description| description.chars().count() > 500) {
        return Err(INVALID_ARGUMENT);
    }
    if TARGETS.iter().filter(|target| job.contains_key(**target)).count() != 1 {
        return Err(NO_TARGET);
    }
    if let Some(Value::Object(target)) = job.get("pubsubTarget") {
        let project = text("name").and_then(|name| name.split('/').nth(1)).unwrap_or_default();
        validate_pubsub_target(target, project)?;
    }
    let retry_valid = job.get("retryConfig").and_then(Value::as_object).is_some_and(retry_is_valid);
    match retry_valid && !text("attemptDeadline").is_some_and(|deadline| deadline.starts_with('-')) {
        true => Ok(()),
        false => Err(INVALID_ARGUMENT),
    }
}

fn validate_pubsub_target(target: &Map<String, Value>, project: &str) -> Result<(), &'static str> {
    let topic = target.get("topicName").and_then(Value::as_str).unwrap_or_default();
    let Some(rest) = topic.strip_prefix("projects/") else {
        return Err(BAD_TOPIC_NAME);
    };
    match rest.split('/').collect::<Vec<_>>().as_slice() {
        [topic_project, "topics", id] if !topic_project.is_empty() && !id.is_empty() => {
            if *topic_project != project {
                return Err(OTHER_PROJECT);
            }
        }
        _ => return Err(INVALID_ARGUMENT),
    }
    match target.contains_key("data") || target.contains_key("attributes") {
        true => Ok(()),
        false => Err(EMPTY_MESSAGE),
    }
}

/// Retries: 0 to 5 of them, backoffs and doublings not negative.
fn retry_is_valid(retry: &Map<String, Value>) -> bool {
    let count = retry.get("retryCount").and_then(Value::as_i64).unwrap_or(0);
    let doublings = retry.get("maxDoublings").and_then(Value::as_i64).unwrap_or(0);
    let negative = ["maxRetryDuration", "minBackoffDuration", "maxBackoffDuration"]
        .iter()
        .any(|key| retry.get(*key).and_then(Value::as_str).is_some_and(|d| d.starts_with('-')));
    (0..=5).contains(&count) && doublings >= 0 && !negative
}

/// A unix-cron schedule, as far as the stub checks one: five fields of
/// digits, names (JAN, MON), `*`, `,`, `-` and `/`.
fn is_cron(schedule: &str) -> bool {
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    fields.len() == 5
        && fields.iter().all(|field| field.chars().all(|c| c.is_ascii_alphanumeric() || "*,-/".contains(c)))
}

/// A tz database name, as far as the stub checks one: `Area/Location`-shaped.
fn is_time_zone(zone: &str) -> bool {
    let part = |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || "_-+".contains(c));
    zone.split('/').all(part)
}

/// The paths of an `updateMask`, as JSON field names; output-only fields and
/// `name` left out, as Google ignores them.
fn field_mask(mask: &str) -> Result<Vec<Vec<String>>, String> {
    let mut paths = Vec::new();
    for path in mask.split(',').map(str::trim).filter(|path| !path.is_empty()) {
        let resolved = resolve(path).ok_or_else(|| format!("Invalid mask for Job: {path}"))?;
        if settable(&resolved[0]) {
            paths.push(resolved);
        }
    }
    Ok(paths)
}

/// A mask path's segments as JSON names, or `None` if a Job has no such field.
fn resolve(path: &str) -> Option<Vec<String>> {
    let mut message = &JOB;
    let mut resolved = Vec::new();
    let mut segments = path.split('.');
    while let Some(segment) = segments.next() {
        let field = message.field(&camel_case(segment)).or_else(|| message.field(segment))?;
        resolved.push(field.json.to_owned());
        match field.kind {
            Kind::Message(inner) => message = inner,
            // Below a message kept as sent, any name goes.
            Kind::Opaque(_) => return Some(resolved.into_iter().chain(segments.map(str::to_owned)).collect()),
            _ if segments.clone().next().is_some() => return None,
            _ => {}
        }
    }
    Some(resolved)
}

/// Whether a client may set the Job field of JSON name `name`.
fn settable(name: &str) -> bool {
    name != "name" && JOB.field(name).is_some_and(|field| !matches!(field.kind, Kind::OutputOnly))
}

/// Sets `path` of `job` to `update`'s value there, or clears it where
/// `update` has none. Setting a target clears the others (a oneof).
fn apply_path(job: &mut Map<String, Value>, update: &Map<String, Value>, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if TARGETS.contains(&first.as_str()) && update.contains_key(first) {
        job.retain(|name, _| name == first || !TARGETS.contains(&name.as_str()));
    }
    if rest.is_empty() {
        match update.get(first) {
            Some(value) => job.insert(first.clone(), value.clone()),
            None => job.remove(first),
        };
        return;
    }
    let empty = Map::new();
    let inner_update = update.get(first).and_then(Value::as_object).unwrap_or(&empty);
    if let Value::Object(inner) = job.entry(first.clone()).or_insert_with(|| json!({})) {
        apply_path(inner, inner_update, rest);
    }
}

/// A patch without a mask: every settable field `update` sets replaces the stored one.
fn apply_all(job: &mut Map<String, Value>, update: Map<String, Value>) {
    for name in update.keys().filter(|name| settable(name)) {
        apply_path(job, &update, std::slice::from_ref(name));
    }
}
