//! What a slow or greedy client can hold: a connection that never finishes
//! its head, or sits idle, is closed; a body that never arrives is answered
//! 408; bodies past the byte budget are answered 503 unread; and on shutdown
//! a connection with no request in flight does not hold up the drain.

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use support::{Gate, Reply, TestApp, task};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use whirligig_handler::server::{ServeLimits, serve, serve_with};
use whirligig_handler::{App, MAX_BODY_BYTES, PushAuth};
use whirligig_registry::{Registry, TaskRoute};

/// Far longer than any limit under test, so only a real hang fails a test.
const PATIENCE: Duration = Duration::from_secs(20);

/// The head of a push whose headers never end.
const HALF_HEAD: &[u8] = b"POST /tasks/pubsub/ HTTP/1.1\r\nHost: x\r\n";

/// An in-memory app, served on 127.0.0.1:0 until `stop` fires.
struct Served {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    serving: JoinHandle<()>,
}

impl Served {
    async fn start(limits: Option<ServeLimits>) -> Served {
        Self::routing(Registry::builder().build().unwrap(), limits).await
    }

    async fn routing(registry: Registry, limits: Option<ServeLimits>) -> Served {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Arc::new(App::in_memory(Arc::new(registry), PushAuth::none()));
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let grace = Duration::from_secs(8);
        let serving = match limits {
            Some(limits) => tokio::spawn(serve_with(listener, app, shutdown, grace, limits)),
            None => tokio::spawn(serve(listener, app, shutdown, grace)),
        };
        Served { addr, stop, serving }
    }
}

/// Reads until the server closes the connection, within [`PATIENCE`]; what it sent.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let read = timeout(PATIENCE, stream.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the connection was still open after {PATIENCE:?}");
    String::from_utf8_lossy(&received).into_owned()
}

/// Sends a keep-alive `GET /healthz` and reads its whole answer.
async fn health_check(stream: &mut TcpStream) {
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut received = Vec::new();
    while !String::from_utf8_lossy(&received).ends_with("ok\n") {
        let mut chunk = [0; 512];
        let read = timeout(PATIENCE, stream.read(&mut chunk)).await.unwrap().unwrap();
        assert!(read > 0, "closed before the answer: {:?}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&chunk[..read]);
    }
    assert!(String::from_utf8_lossy(&received).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_client_that_never_finishes_its_head_is_disconnected() {
    let served = Served::start(Some(ServeLimits { header_read: Duration::from_millis(500) })).await;
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    stream.write_all(HALF_HEAD).await.unwrap();
    let started = Instant::now();
    read_to_close(&mut stream).await;
    assert!(started.elapsed() >= Duration::from_millis(400), "closed before the limit: {:?}", started.elapsed());
}

#[tokio::test]
async fn a_client_that_connects_and_sends_nothing_or_half_a_preface_is_disconnected() {
    let served = Served::start(Some(ServeLimits { header_read: Duration::from_millis(500) })).await;
    let mut silent = TcpStream::connect(served.addr).await.unwrap();
    let mut preface = TcpStream::connect(served.addr).await.unwrap();
    // Not enough bytes to tell HTTP/1.1 from h2c: hyper's head timer never starts.
    preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let started = Instant::now();
    assert_eq!(read_to_close(&mut silent).await, "");
    read_to_close(&mut preface).await;
    assert!(started.elapsed() >= Duration::from_millis(400), "closed before the limit: {:?}", started.elapsed());
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let served = Served::start(Some(ServeLimits { header_read: Duration::from_millis(500) })).await;
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    health_check(&mut stream).await;
    health_check(&mut stream).await;
    assert_eq!(read_to_close(&mut stream).await, "", "nothing more is sent before the close");
}

#[tokio::test]
async fn shutdown_closes_connections_with_no_request_in_flight_at_once() {
    let served = Served::start(None).await;
    let mut half = TcpStream::connect(served.addr).await.unwrap();
    half.write_all(HALF_HEAD).await.unwrap();
    let mut idle = TcpStream::connect(served.addr).await.unwrap();
    // Answered after `half` was accepted: connections are accepted in order.
    health_check(&mut idle).await;

    let started = Instant::now();
    served.stop.send(()).unwrap();
    timeout(PATIENCE, served.serving).await.unwrap().unwrap();
    // The grace is 8 s and the head timeout 10 s: before, the drain waited out the grace.
    assert!(started.elapsed() < Duration::from_secs(3), "the drain took {:?}", started.elapsed());
    read_to_close(&mut half).await;
    read_to_close(&mut idle).await;
}

#[tokio::test]
async fn shutdown_still_answers_the_request_in_flight() {
    let gate = Gate::default();
    let registry = Registry::builder().route(TaskRoute::new("gated", gate.task(false))).build().unwrap();
    let served = Served::routing(registry, None).await;
    let addr = served.addr;
    let in_flight = tokio::spawn(support::post(addr, "/tasks/pubsub/", task("held", "gated", serde_json::json!({}))));
    gate.started().await;

    served.stop.send(()).unwrap();
    gate.release();
    let reply = timeout(PATIENCE, in_flight).await.unwrap().unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    timeout(PATIENCE, served.serving).await.unwrap().unwrap();
}

/// A body that never sends a byte; `polled` fires when it is first asked for one.
struct Stalled {
    polled: Option<oneshot::Sender<()>>,
}

impl Body for Stalled {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(polled) = self.polled.take() {
            let _ = polled.send(());
        }
        Poll::Pending
    }
}

/// A push declaring `length` bytes whose body never comes, handled on a task
/// of its own; the receiver fires once the app starts reading the body.
fn stalled_push(
    app: &TestApp<whirligig_handler::store::MemoryStore>,
    length: usize,
) -> (JoinHandle<Reply>, oneshot::Receiver<()>) {
    let (polled, reading) = oneshot::channel();
    let request = http::Request::post("/tasks/pubsub/")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .header("content-length", length)
        .body(Stalled { polled: Some(polled) })
        .unwrap();
    let app = Arc::clone(&app.app);
    (tokio::spawn(async move { Reply::of(app.handle(request).await).await }), reading)
}

fn no_routes() -> TestApp<whirligig_handler::store::MemoryStore> {
    TestApp::in_memory(Registry::builder().build().unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_body_that_never_arrives_is_answered_408() {
    let app = no_routes();
    let (handling, _reading) = stalled_push(&app, 100);
    // Time is paused: the app's deadline (30 s) passes at once, this one only if there is none.
    let reply = timeout(Duration::from_secs(600), handling).await.expect("an answer before 600 s").unwrap();
    assert_eq!(reply.status, 408, "{}", reply.body);
}

#[tokio::test]
async fn bodies_past_the_byte_budget_are_answered_503_unread() {
    let app = no_routes();
    // The budget is 64 MiB: four bodies of the largest size fit in it.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let (handling, reading) = stalled_push(&app, MAX_BODY_BYTES);
        reading.await.expect("the body is being read");
        stalled.push(handling);
    }
    let (fifth, mut reading) = stalled_push(&app, MAX_BODY_BYTES);
    let reply = timeout(PATIENCE, fifth).await.unwrap().unwrap();
    assert_eq!((reply.status, reply.retry_after.as_deref()), (503, Some("1")), "{}", reply.body);
    assert!(reading.try_recv().is_err(), "the refused body was never read");

    // What is left of the budget still takes a small declared body.
    let small = task("t-small", "no_such_task", serde_json::json!({}));
    let request = support::push_request("/tasks/pubsub/", None, small.clone());
    let (mut parts, body) = request.into_parts();
    parts.headers.insert("content-length", small.len().into());
    let reply = app.request(http::Request::from_parts(parts, body)).await;
    assert_eq!(reply.status, 400, "read, and refused for its unknown task: {}", reply.body);

    // A body given up on gives its room back.
    for handling in &stalled {
        handling.abort();
    }
    for handling in stalled {
        let _ = handling.await;
    }
    let (handling, reading) = stalled_push(&app, MAX_BODY_BYTES);
    timeout(PATIENCE, reading).await.unwrap().expect("read once the stalled ones are gone");
    handling.abort();
}

#[tokio::test]
async fn a_read_body_gives_its_room_back() {
    let app = no_routes();
    // Undeclared, each push reserves the largest size; a fifth would not fit
    // if the first four kept theirs.
    for index in 0..8 {
        let reply = app.push(task(&format!("t-{index}"), "no_such_task", serde_json::json!({}))).await;
        assert_eq!(reply.status, 400, "push {index}: {}", reply.body);
    }
}
