//! Shared helpers for the black-box suites: a fresh PostgreSQL schema per
//! test, an app driven without a socket and one served on an ephemeral port,
//! an HTTP client, push envelope builders, a task that holds where a test
//! wants it, and the spawned test app.

#![allow(dead_code, unreachable_pub)]

pub mod emulator;
pub mod google;
pub mod issuer;
pub mod otlp;
pub mod pg_proxy;
pub mod process;
pub mod pubsub_front;
pub mod scheduler;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use whirligig_handler::store::{Execution, ExecutionStore, MemoryStore, PostgresStore, Status, migrate};
use whirligig_handler::{App, PushAuth, TaskContextExt as _};
use whirligig_registry::{Registry, TaskContext, TaskError};

/// The server every suite talks to; override with WHIRLIGIG_TEST_DATABASE_URL.
pub fn admin_url() -> String {
    std::env::var("WHIRLIGIG_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A schema of its own for one test, dropped when the test ends.
pub struct TestDb {
    pub schema: String,
    pub url: String,
    /// A store of its own for reading rows back, made at the first read.
    reader: std::sync::OnceLock<PostgresStore>,
}

impl TestDb {
    /// Creates the schema and applies the migrations to it.
    pub async fn new() -> Self {
        let schema = format!("test_{}", uuid::Uuid::new_v4().simple());
        let client = connect(&admin_url()).await;
        client.batch_execute(&format!("create schema {schema}")).await.expect("create schema");
        let separator = if admin_url().contains('?') { '&' } else { '?' };
        let url = format!("{}{separator}options=-c%20search_path%3D{schema}", admin_url());
        migrate(&url).await.expect("migrations apply to a fresh schema");
        Self { schema, url, reader: std::sync::OnceLock::new() }
    }

    /// A store on this schema.
    pub fn store(&self, pool_size: u32, pool_timeout: Duration) -> PostgresStore {
        PostgresStore::new(&self.url, pool_size, pool_timeout).expect("valid url")
    }

    /// A plain client on this schema, for SQL of a test's own.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// The execution recorded under `task_id`, read as a result lookup reads it.
    pub async fn row(&self, task_id: &str) -> Option<Execution> {
        let reader = self.reader.get_or_init(|| self.store(1, Duration::from_secs(5)));
        reader.get(task_id).await.expect("read task_executions")
    }

    /// Waits until `task_id`'s row has `status`, for a change made in another
    /// process or a detached task: there is nothing to await but the row (5 s at most).
    pub async fn wait_for(&self, task_id: &str, status: Status) -> Execution {
        self.wait_within(task_id, status, Duration::from_secs(5)).await
    }

    /// [`TestDb::wait_for`], for changes that take longer (a redelivery).
    pub async fn wait_within(&self, task_id: &str, status: Status, within: Duration) -> Execution {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Some(row) = self.row(task_id).await.filter(|row| row.status == status) {
                return row;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{task_id} never became {status} within {within:?}: {:?}", self.row(task_id).await);
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let schema = self.schema.clone();
        // Async drop is not a thing: clean up on a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let client = connect(&admin_url()).await;
                // A test that failed while holding row locks still holds them
                // (its connections live on the runtime being unwound): give up
                // and leave the schema rather than wait forever.
                let drop = format!("set lock_timeout = '5s'; drop schema if exists {schema} cascade");
                client.batch_execute(&drop).await.ok()
            })
        })
        .join();
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("PostgreSQL on 127.0.0.1:5432");
    tokio::spawn(connection);
    client
}

/// An app driven through [`App::handle`]: no socket, no server.
pub struct TestApp<S> {
    pub app: Arc<App<S>>,
}

impl TestApp<MemoryStore> {
    /// `registry` on the in-memory store, every push let through.
    pub fn in_memory(registry: Registry) -> Self {
        Self::new(App::in_memory(Arc::new(registry), PushAuth::none()))
    }
}

impl<S: ExecutionStore> TestApp<S> {
    /// Drives `app`, its background work started.
    pub fn new(app: App<S>) -> Self {
        app.start();
        Self { app: Arc::new(app) }
    }

    pub async fn request(&self, request: http::Request<Full<Bytes>>) -> Reply {
        Reply::of(self.app.handle(request).await).await
    }

    pub async fn push(&self, body: impl Into<Bytes>) -> Reply {
        self.request(push_request("/tasks/pubsub/", None, body)).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(get_request(path)).await
    }

    /// Pushes on a task of its own, for a delivery that should stay in flight.
    pub fn push_in_background(&self, body: impl Into<Bytes>) -> JoinHandle<Reply> {
        let (app, request) = (Arc::clone(&self.app), push_request("/tasks/pubsub/", None, body));
        tokio::spawn(async move { Reply::of(app.handle(request).await).await })
    }

    /// The execution recorded under `task_id`.
    pub async fn row(&self, task_id: &str) -> Option<Execution> {
        self.app.store().get(task_id).await.expect("the store answers")
    }
}

/// An app served on 127.0.0.1:0 until dropped.
pub struct TestServer<S> {
    pub addr: SocketAddr,
    pub app: Arc<App<S>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl<S: ExecutionStore> TestServer<S> {
    pub async fn start(app: App<S>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind an ephemeral port");
        let addr = listener.local_addr().expect("bound address");
        let app = Arc::new(app);
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(whirligig_handler::server::serve(
            listener,
            Arc::clone(&app),
            shutdown,
            Duration::from_secs(5),
        ));
        Self { addr, app, stop: Some(stop), task: Some(task) }
    }

    /// Stops accepting and waits for in-flight requests.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    pub async fn push(&self, body: impl Into<Bytes>) -> Reply {
        post(self.addr, "/tasks/pubsub/", body).await
    }

    /// Pushes on a task of its own, for a delivery that should stay in flight.
    pub fn push_in_background(&self, body: impl Into<Bytes>) -> JoinHandle<Reply> {
        tokio::spawn(post(self.addr, "/tasks/pubsub/", body.into()))
    }

    /// The execution recorded under `task_id`.
    pub async fn row(&self, task_id: &str) -> Option<Execution> {
        self.app.store().get(task_id).await.expect("the store answers")
    }
}

/// An app on a fresh schema's store with the given registry.
pub async fn postgres_server(db: &TestDb, registry: Registry, pool_size: u32) -> TestServer<PostgresStore> {
    let store = db.store(pool_size, Duration::from_millis(250));
    TestServer::start(App::postgres(Arc::new(registry), store, PushAuth::none())).await
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub retry_after: Option<String>,
}

impl Reply {
    /// The response, its body read whole.
    pub async fn of<B>(response: http::Response<B>) -> Reply
    where
        B: hyper::body::Body,
        B::Error: std::fmt::Debug,
    {
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap_or_default().to_owned());
        let body = response.into_body().collect().await.expect("the body").to_bytes();
        Reply { status, body: String::from_utf8_lossy(&body).trim_end().to_owned(), retry_after }
    }
}

/// Sends `request` to `addr` over a connection of its own.
pub async fn request(addr: SocketAddr, request: http::Request<Full<Bytes>>) -> Reply {
    let stream = TcpStream::connect(addr).await.expect("connect to the test server");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    Reply::of(sender.send_request(request).await.expect("a response")).await
}

pub async fn post(addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> Reply {
    post_as(addr, path, None, body).await
}

/// A POST with `Authorization: {authorization}` when given.
pub async fn post_as(addr: SocketAddr, path: &str, authorization: Option<&str>, body: impl Into<Bytes>) -> Reply {
    request(addr, push_request(path, authorization, body)).await
}

/// A push to `path` as Pub/Sub posts it, with `Authorization: {authorization}` when given.
pub fn push_request(path: &str, authorization: Option<&str>, body: impl Into<Bytes>) -> http::Request<Full<Bytes>> {
    let mut request = http::Request::post(path).header("host", "localhost").header("content-type", "application/json");
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    request.body(Full::new(body.into())).expect("a request")
}

pub fn get_request(path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(path).header("host", "localhost").body(Full::new(Bytes::new())).expect("a request")
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, get_request(path)).await
}

/// A push envelope around `payload`, as Pub/Sub posts it.
pub fn envelope(payload: &str, message_id: &str) -> String {
    let data = base64::engine::general_purpose::STANDARD.encode(payload);
    serde_json::json!({
        "message": {
            "data": data,
            "attributes": {},
            "messageId": message_id,
            "message_id": message_id,
            "publishTime": "2026-11-27T10:00:00.000Z",
            "publish_time": "2026-11-27T10:00:00.000Z",
        },
        "subscription": "projects/test/subscriptions/dev--gyrinx.tasks--test-sub",
        "deliveryAttempt": 1,
    })
    .to_string()
}

/// Eventarc's CloudEvent for a Pub/Sub message, in binary mode: the event's
/// attributes as `ce-*` headers, the push envelope (without
/// `deliveryAttempt`) as the body.
pub fn cloud_event_binary(path: &str, payload: &str, message_id: &str) -> http::Request<Full<Bytes>> {
    let data = message_published(payload, message_id);
    http::Request::post(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-type", "google.cloud.pubsub.topic.v1.messagePublished")
        .header("ce-source", "//pubsub.googleapis.com/projects/test/topics/dev--gyrinx.tasks--test")
        .header("ce-id", message_id)
        .body(Full::new(Bytes::from(data.to_string())))
        .expect("a request")
}

/// Eventarc's data for a Pub/Sub message: the push envelope without `deliveryAttempt`.
pub fn message_published(payload: &str, message_id: &str) -> serde_json::Value {
    let mut data: serde_json::Value = serde_json::from_str(&envelope(payload, message_id)).expect("JSON");
    data.as_object_mut().expect("an object").remove("deliveryAttempt");
    data
}

/// The same event in structured mode: one JSON document, the envelope as `data`.
pub fn cloud_event_structured(path: &str, payload: &str, message_id: &str) -> http::Request<Full<Bytes>> {
    let data = message_published(payload, message_id);
    let event = serde_json::json!({
        "specversion": "1.0",
        "type": "google.cloud.pubsub.topic.v1.messagePublished",
        "source": "//pubsub.googleapis.com/projects/test/topics/dev--gyrinx.tasks--test",
        "id": message_id,
        "datacontenttype": "application/json",
        "data": data,
    });
    http::Request::post(path)
        .header("host", "localhost")
        .header("content-type", "application/cloudevents+json; charset=utf-8")
        .body(Full::new(Bytes::from(event.to_string())))
        .expect("a request")
}

/// A push of `task_name` with `task_id` and keyword arguments.
pub fn task(task_id: &str, task_name: &str, kwargs: serde_json::Value) -> String {
    let payload = serde_json::json!({"task_id": task_id, "task_name": task_name, "args": [], "kwargs": kwargs});
    envelope(&payload.to_string(), &format!("m-{task_id}"))
}

/// A push like [`task`]'s whose message carries `attributes` (a JSON object).
pub fn task_with_attributes(task_id: &str, task_name: &str, attributes: serde_json::Value) -> String {
    let mut body: serde_json::Value =
        serde_json::from_str(&task(task_id, task_name, serde_json::json!({}))).expect("task() builds JSON");
    body["message"]["attributes"] = attributes;
    body.to_string()
}

/// A task that stops where a test wants it: it says when it has started
/// (holding a pooled connection first, if asked) and returns once released.
/// Both signals keep until they are awaited, so neither side can miss one.
#[derive(Clone, Default)]
pub struct Gate {
    started: Arc<Notify>,
    release: Arc<Notify>,
}

impl Gate {
    /// The task function; with `hold_db`, it keeps a pooled connection
    /// from before it says it started until it is released.
    pub fn task(&self, hold_db: bool) -> impl Fn(TaskContext) -> GateRun + Clone + Send + Sync + 'static {
        let gate = self.clone();
        move |ctx: TaskContext| {
            let gate = gate.clone();
            Box::pin(async move {
                let _held = if hold_db { Some(ctx.database().await?) } else { None };
                gate.started.notify_one();
                gate.release.notified().await;
                Ok("released")
            })
        }
    }

    /// Waits, at most 5 s, until the task has started.
    pub async fn started(&self) {
        tokio::time::timeout(Duration::from_secs(5), self.started.notified()).await.expect("the gated task started");
    }

    /// Lets the task return.
    pub fn release(&self) {
        self.release.notify_one();
    }
}

/// What a gated task's run is.
pub type GateRun = std::pin::Pin<Box<dyn std::future::Future<Output = Result<&'static str, TaskError>> + Send>>;
