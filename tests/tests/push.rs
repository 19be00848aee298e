//! The push endpoint. First every row of the status table, the envelope and
//! the body limit through `App::handle` on the in-memory store, where neither
//! a socket nor a database adds anything; then what only PostgreSQL and real
//! HTTP show: races on one row, backpressure, a database that refuses, hangs
//! or rejects, finishes that must not starve, h2c, chunked bodies and
//! clients that hang up. Each answered while the app keeps serving.

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::json;
use support::{Gate, TestApp, TestDb, TestServer, envelope, get, postgres_server, task};
use tokio::sync::Notify;
use whirligig_handler::store::{MemoryStore, Status};
use whirligig_handler::{App, PushAuth, TaskContextExt as _, demo};
use whirligig_registry::{Kwargs, Registry, RegistryBuilder, TaskContext, TaskError, TaskRoute};

/// Counts the runs of the `count` task, which sleeps `ms` first.
#[derive(Clone, Default)]
struct Runs(Arc<AtomicU32>);

impl Runs {
    fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(serde::Deserialize)]
struct Pause {
    #[serde(default)]
    ms: u64,
}

fn routes(runs: &Runs) -> RegistryBuilder {
    let counter = runs.clone();
    let count = move |_: TaskContext, Kwargs(pause): Kwargs<Pause>| {
        let counter = counter.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(pause.ms)).await;
            Ok::<_, TaskError>(counter.0.fetch_add(1, Ordering::SeqCst) + 1)
        }
    };
    Registry::builder()
        .route(TaskRoute::new("count", count))
        .route(TaskRoute::new("echo", demo::echo))
        .route(TaskRoute::new("sleep", demo::sleep))
        .route(TaskRoute::new("fail", demo::fail))
        .route(TaskRoute::new("flaky", demo::flaky))
        .route(TaskRoute::new("panic", demo::panic))
        .route(TaskRoute::new("permanent", demo::permanent))
        .route(TaskRoute::new("limited", demo::fail).max_attempts(2))
        .route(TaskRoute::new("stuck", demo::sleep).ack_deadline(10).timeout(Duration::from_millis(200)))
}

fn registry(runs: &Runs) -> Registry {
    routes(runs).build().expect("the test registry is valid")
}

fn memory_app(runs: &Runs) -> TestApp<MemoryStore> {
    TestApp::in_memory(registry(runs))
}

/// The test registry with a gated task, `held`, that holds a pooled connection.
fn holding(gate: &Gate) -> Registry {
    routes(&Runs::default()).route(TaskRoute::new("held", gate.task(true))).build().unwrap()
}

// The status table, on App::handle and the in-memory store.

#[tokio::test]
async fn a_task_runs_once_and_its_duplicate_is_acknowledged_without_running() {
    let runs = Runs::default();
    let app = memory_app(&runs);

    let reply = app.push(task("once", "count", json!({}))).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));
    let once = app.row("once").await.unwrap();
    assert_eq!((once.status, once.attempts, once.return_value), (Status::Successful, 1, Some(json!(1))));

    let duplicate = app.push(task("once", "count", json!({}))).await;
    assert_eq!((duplicate.status, duplicate.body.as_str()), (200, "ok: already succeeded, not run again"));
    assert_eq!(runs.get(), 1, "a duplicate of a SUCCESSFUL execution does not run the function");
    assert_eq!(app.row("once").await.unwrap().attempts, 1);
}

#[tokio::test]
async fn echo_returns_its_kwargs_as_the_stored_result() {
    let app = memory_app(&Runs::default());
    let kwargs = json!({"name": "Zoë", "n": 1.5, "list": [1, null]});
    assert_eq!(app.push(task("e1", "echo", kwargs.clone())).await.status, 200);
    assert_eq!(app.row("e1").await.unwrap().return_value, Some(kwargs));
}

#[tokio::test]
async fn a_failed_task_is_retried_to_success_and_its_error_cleared() {
    let app = memory_app(&Runs::default());
    let body = task("flaky-1", "flaky", json!({"succeed_on": 2}));
    assert_eq!(app.push(body.clone()).await.status, 500);
    let failed = app.row("flaky-1").await.unwrap();
    assert_eq!((failed.status, failed.attempts), (Status::Failed, 1));
    assert_eq!(failed.error_message.as_deref(), Some("attempt 1 of 2 fails"));
    assert_eq!(app.push(body).await.status, 200);
    let succeeded = app.row("flaky-1").await.unwrap();
    assert_eq!((succeeded.status, succeeded.attempts, succeeded.error_message), (Status::Successful, 2, None));
    assert_eq!(succeeded.return_value, Some(json!(2)));
}

// Time is paused: the stuck task's timeout passes without waiting for it.
#[tokio::test(start_paused = true)]
async fn failures_answer_500_to_retry_or_400_to_stop() {
    let app = memory_app(&Runs::default());

    assert_eq!(app.push(task("f1", "fail", json!({}))).await.status, 500);
    let panicked = app.push(task("p1", "panic", json!({}))).await;
    assert_eq!((panicked.status, panicked.body.as_str()), (500, "task failed; retry"));
    let row = app.row("p1").await.unwrap();
    assert_eq!(
        (row.status, row.error_message.as_deref()),
        (Status::Failed, Some("the task panicked: the panic task panicked"))
    );

    let permanent = app.push(task("x1", "permanent", json!({}))).await;
    assert_eq!(permanent.status, 400);
    assert!(permanent.body.contains("failed permanently"), "{}", permanent.body);
    let row = app.row("x1").await.unwrap();
    assert!(row.status == Status::Failed && row.permanent, "{row:?}");

    let stuck = app.push(task("s1", "stuck", json!({"ms": 10_000}))).await;
    assert_eq!(stuck.status, 500);
    assert!(app.row("s1").await.unwrap().error_message.unwrap().contains("timeout of 200ms"));

    // The app survived all of it.
    assert_eq!(app.push(task("after", "echo", json!({}))).await.status, 200);
}

#[tokio::test]
async fn arguments_that_do_not_fit_are_recorded_and_acknowledged() {
    let app = memory_app(&Runs::default());
    let reply = app.push(task("bad-args", "sleep", json!({"ms": "soon"}))).await;
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("kwargs do not fit the task: invalid type: string \"soon\""), "{}", reply.body);
    let row = app.row("bad-args").await.unwrap();
    assert_eq!((row.status, row.attempts, row.permanent), (Status::Failed, 1, true));
    assert!(row.error_message.unwrap().starts_with("kwargs do not fit"));
}

#[tokio::test]
async fn max_attempts_stops_the_retries() {
    let app = memory_app(&Runs::default());
    let body = task("lim", "limited", json!({}));
    assert_eq!(app.push(body.clone()).await.status, 500, "attempt 1 of 2: retry");
    assert_eq!(app.push(body.clone()).await.status, 400, "attempt 2 of 2 failed: stop");
    let exhausted = app.push(body).await;
    assert_eq!(
        (exhausted.status, exhausted.body.as_str()),
        (400, "bad request: max_attempts reached after 2 attempts")
    );
    let row = app.row("lim").await.unwrap();
    assert_eq!((row.attempts, row.permanent), (2, false), "used up, not a permanent failure");
}

#[tokio::test]
async fn scheduled_and_hand_published_messages_get_one_row_per_pubsub_message() {
    let runs = Runs::default();
    let app = memory_app(&runs);
    let scheduled = r#"{"task_id": "scheduled-count", "task_name": "count", "args": [], "kwargs": {}}"#;
    assert_eq!(app.push(envelope(scheduled, "4001")).await.status, 200);
    assert_eq!(app.push(envelope(scheduled, "4002")).await.status, 200);
    assert_eq!(app.push(envelope(scheduled, "4001")).await.status, 200, "a redelivery of run 4001");
    assert_eq!(runs.get(), 2);
    assert_eq!(app.row("scheduled-count-4001").await.unwrap().status, Status::Successful);
    assert_eq!(app.row("scheduled-count-4002").await.unwrap().status, Status::Successful);

    assert_eq!(app.push(envelope(r#"{"task_name": "count"}"#, "5001")).await.status, 200);
    assert_eq!(app.row("msg-5001").await.unwrap().status, Status::Successful);
}

#[tokio::test]
async fn malformed_pushes_are_acknowledged_with_a_reason_and_the_app_keeps_serving() {
    let runs = Runs::default();
    let app = memory_app(&runs);
    let data = |payload: &str| envelope(payload, "m");
    let cases: Vec<(&str, String, &str)> = vec![
        ("empty body", String::new(), "not a Pub/Sub push envelope"),
        ("not JSON", "hello".into(), "not a Pub/Sub push envelope"),
        ("JSON array", "[1, 2]".into(), "not a Pub/Sub push envelope"),
        ("no message", r#"{"subscription": "s"}"#.into(), "missing field `message`"),
        ("no messageId", r#"{"message": {"data": "e30="}}"#.into(), "missing field `messageId`"),
        ("no data", r#"{"message": {"messageId": "1"}}"#.into(), "the message has no data"),
        ("bad base64", r#"{"message": {"data": "***", "messageId": "1"}}"#.into(), "data is not base64"),
        ("data not JSON", data("not json"), "not a task message"),
        ("no task_name", data(r#"{"task_id": "a"}"#), "missing field `task_name`"),
        ("args an object", data(r#"{"task_name": "count", "args": {}}"#), "args is not a list"),
        ("kwargs a list", data(r#"{"task_name": "count", "kwargs": []}"#), "kwargs is not an object"),
        ("unknown task", data(r#"{"task_name": "rm_rf_everything"}"#), "unknown task"),
    ];
    for (case, body, expected) in cases {
        let reply = app.push(body).await;
        assert_eq!(reply.status, 400, "{case}: {}", reply.body);
        assert!(reply.body.contains(expected), "{case}: {}", reply.body);
        assert!(!reply.body.contains("rm_rf_everything"), "an unknown task's name is never echoed");
        assert!(!reply.body.contains('\n'), "{case}: one line");
    }
    assert_eq!(runs.get(), 0);
    assert_eq!(app.push(task("still", "count", json!({}))).await.status, 200);
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413() {
    let app = memory_app(&Runs::default());
    let huge = vec![b'a'; whirligig_handler::MAX_BODY_BYTES + 1];
    let reply = app.push(huge).await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert_eq!(app.push(task("small", "echo", json!({}))).await.status, 200);
}

#[tokio::test]
async fn health_readiness_and_unknown_paths() {
    let app = memory_app(&Runs::default());
    assert_eq!(app.get("/healthz").await.status, 200);
    assert_eq!(app.get("/readyz").await.status, 200);
    assert_eq!(app.get("/tasks/pubsub/").await.status, 405);
    assert_eq!(app.get("/").await.status, 405);
    assert_eq!(app.get("/elsewhere").await.status, 404);
    let no_slash = app.request(support::push_request("/tasks/pubsub", None, task("ns", "echo", json!({})))).await;
    assert_eq!(no_slash.status, 200, "the path without its trailing slash works too");
}

#[tokio::test]
async fn shutdown_tells_running_tasks_and_turns_new_pushes_away_with_503() {
    let started = Arc::new(Notify::new());
    let signal = Arc::clone(&started);
    // Says it started, then waits for the runner to ask it to stop.
    let until_shutdown = move |ctx: TaskContext| {
        let signal = Arc::clone(&signal);
        async move {
            signal.notify_one();
            tokio::select! {
                () = ctx.cancelled() => Ok::<_, TaskError>("cancelled"),
                () = tokio::time::sleep(Duration::from_secs(10)) => Ok("never told"),
            }
        }
    };
    let registry = Registry::builder()
        .route(TaskRoute::new("until_shutdown", until_shutdown))
        .route(TaskRoute::new("echo", demo::echo))
        .build()
        .unwrap();
    let app = TestApp::in_memory(registry);
    let running = app.push_in_background(task("long", "until_shutdown", json!({})));
    started.notified().await;
    app.app.begin_shutdown();
    assert_eq!(running.await.unwrap().status, 200);
    assert_eq!(app.row("long").await.unwrap().return_value, Some(json!("cancelled")), "the task saw the signal");
    let late = app.push(task("late", "echo", json!({}))).await;
    assert_eq!((late.status, late.body.as_str()), (503, "shutting down; retry"));
    assert!(app.row("late").await.is_none(), "turned away before anything was recorded");
}

fn payload(task_id: &str, task_name: &str, kwargs: serde_json::Value) -> String {
    json!({"task_id": task_id, "task_name": task_name, "args": [], "kwargs": kwargs}).to_string()
}

#[tokio::test]
async fn eventarc_cloud_events_run_tasks_at_the_root_and_at_the_push_path() {
    let runs = Runs::default();
    let app = memory_app(&runs);

    let binary = support::cloud_event_binary("/", &payload("binary", "count", json!({})), "ce-1");
    let reply = app.request(binary).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(app.row("binary").await.unwrap().status, Status::Successful);

    let structured =
        support::cloud_event_structured("/tasks/pubsub/", &payload("structured", "echo", json!({"a": 1})), "ce-2");
    let reply = app.request(structured).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(app.row("structured").await.unwrap().return_value, Some(json!({"a": 1})));

    // Redelivered by Eventarc: the same rules as a push.
    let again = support::cloud_event_structured("/", &payload("binary", "count", json!({})), "ce-1");
    assert_eq!(app.request(again).await.status, 200);
    assert_eq!(runs.get(), 1, "a duplicate event is not run again");

    // A plain push at the root works too: the root is just another push path.
    let reply = app.request(support::push_request("/", None, task("rooted", "echo", json!({})))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test]
async fn cloud_events_that_are_not_pubsub_messages_are_refused() {
    let runs = Runs::default();
    let app = memory_app(&runs);

    let mut storage = support::cloud_event_binary("/", &payload("storage", "count", json!({})), "ce-3");
    storage.headers_mut().insert("ce-type", "google.cloud.storage.object.v1.finalized".parse().unwrap());
    let reply = app.request(storage).await;
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("google.cloud.storage.object.v1.finalized"), "{}", reply.body);

    let mut old = support::cloud_event_binary("/", &payload("old", "count", json!({})), "ce-4");
    old.headers_mut().insert("ce-specversion", "0.3".parse().unwrap());
    assert_eq!(app.request(old).await.status, 400);

    // Structured: a well-formed envelope under another type is still refused.
    let data = support::message_published(&payload("typed", "count", json!({})), "ce-5");
    let event = json!({"specversion": "1.0", "type": "google.cloud.storage.object.v1.finalized", "data": data});
    let structured = http::Request::post("/")
        .header("content-type", "Application/CloudEvents+JSON")
        .body(http_body_util::Full::new(bytes::Bytes::from(event.to_string())))
        .unwrap();
    let reply = app.request(structured).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.contains("google.cloud.storage.object.v1.finalized"), "{}", reply.body);
    assert!(app.row("typed").await.is_none());
    assert_eq!(runs.get(), 0);
    assert!(app.row("storage").await.is_none() && app.row("old").await.is_none());
}

// PostgreSQL and real HTTP.

#[tokio::test]
async fn concurrent_deliveries_of_one_task_id_run_it_once() {
    let db = TestDb::new().await;
    let runs = Runs::default();
    let server = postgres_server(&db, registry(&runs), 4).await;
    let body = task("twice", "count", json!({"ms": 300}));
    let (first, second) = tokio::join!(server.push(body.clone()), server.push(body));
    let mut statuses = [first.status, second.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409]);
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn an_abandoned_run_is_reclaimed_after_its_lease_and_a_live_one_is_not() {
    let db = TestDb::new().await;
    let runs = Runs::default();
    let server = postgres_server(&db, registry(&runs), 4).await;
    let client = db.client().await;
    let insert = "insert into task_executions (task_id, task_name, status, attempts, started_at)
                  values ($1, 'count', 'RUNNING', 1, now() - $2::float8 * interval '1 second')";
    client.execute(insert, &[&"crashed", &3600.0_f64]).await.unwrap();
    client.execute(insert, &[&"live", &1.0_f64]).await.unwrap();

    assert_eq!(server.push(task("crashed", "count", json!({}))).await.status, 200);
    assert_eq!(db.row("crashed").await.unwrap().attempts, 2, "the reclaim is attempt 2");
    assert_eq!(server.push(task("live", "count", json!({}))).await.status, 409);
    assert_eq!(runs.get(), 1);
}

#[tokio::test]
async fn a_nul_postgres_cannot_store_in_the_arguments_is_refused_with_400() {
    let db = TestDb::new().await;
    let runs = Runs::default();
    let server = postgres_server(&db, registry(&runs), 2).await;
    let reply = server.push(task("nul-args", "count", json!({"s": "\u{0}"}))).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.starts_with("bad request: the database rejected the message"), "{}", reply.body);
    assert!(db.row("nul-args").await.is_none());
    assert_eq!(runs.get(), 0);
}

#[tokio::test]
async fn an_exhausted_pool_answers_429_without_hanging_then_serves_again() {
    let db = TestDb::new().await;
    let gate = Gate::default();
    let server = postgres_server(&db, holding(&gate), 1).await;
    let holder = server.push_in_background(task("holder", "held", json!({})));
    gate.started().await;
    for n in 0..3 {
        let reply =
            tokio::time::timeout(Duration::from_secs(5), server.push(task(&format!("busy-{n}"), "echo", json!({}))))
                .await
                .expect("a busy pool answers, it does not hang");
        assert_eq!((reply.status, reply.retry_after.as_deref()), (429, Some("1")), "{}", reply.body);
    }
    gate.release();
    assert_eq!(holder.await.unwrap().status, 200);
    // The holder frees its connection before finishing; a finish that must
    // compete with a held pool is a_finish_is_not_starved_by_a_busy_pool.
    assert_eq!(db.row("holder").await.unwrap().status, Status::Successful);
    assert_eq!(server.push(task("after-busy", "echo", json!({}))).await.status, 200);
}

/// Holds one pooled connection and asks for a second: with a pool of one,
/// the second never comes.
async fn greedy(ctx: TaskContext) -> Result<(), TaskError> {
    let _first = ctx.database().await?;
    let _second = ctx.database().await?;
    Ok(())
}

#[tokio::test]
async fn a_task_that_cannot_get_a_connection_fails_retryably_with_429() {
    let db = TestDb::new().await;
    let registry = Registry::builder().route(TaskRoute::new("greedy", greedy)).build().unwrap();
    let server = postgres_server(&db, registry, 1).await;
    let reply = server.push(task("greedy-1", "greedy", json!({}))).await;
    assert_eq!((reply.status, reply.retry_after.as_deref()), (429, Some("1")), "{}", reply.body);
    let row = db.row("greedy-1").await.unwrap();
    assert_eq!((row.status, row.attempts, row.permanent), (Status::Failed, 1, false), "to be retried");
    assert_eq!(row.error_message.as_deref(), Some("no database connection free within 250ms (pool exhausted)"));
}

/// A server on a store of `url`, whatever answers there.
async fn server_on(url: &str) -> TestServer<whirligig_handler::store::PostgresStore> {
    let store = whirligig_handler::store::PostgresStore::new(url, 2, Duration::from_millis(250)).unwrap();
    TestServer::start(App::postgres(Arc::new(registry(&Runs::default())), store, PushAuth::none())).await
}

#[tokio::test]
async fn an_unreachable_database_answers_503() {
    let server = server_on("postgres://postgres@127.0.0.1:1/postgres").await;
    let reply = server.push(task("down", "echo", json!({}))).await;
    assert_eq!((reply.status, reply.body.as_str()), (503, "database unavailable; retry"));
    assert_eq!(get(server.addr, "/readyz").await.status, 503);
    assert_eq!(get(server.addr, "/healthz").await.status, 200, "alive, just not ready");
}

#[tokio::test]
async fn a_database_refusing_connections_answers_429() {
    let db = TestDb::new().await;
    let role = format!("limited_{}", uuid::Uuid::new_v4().simple());
    let admin = support::connect(&support::admin_url()).await;
    admin.batch_execute(&format!("create role {role} login connection limit 0")).await.unwrap();
    let server = server_on(&db.url.replacen("postgres://postgres@", &format!("postgres://{role}@"), 1)).await;
    let reply = server.push(task("refused", "echo", json!({}))).await;
    admin.batch_execute(&format!("drop role {role}")).await.unwrap();
    assert_eq!((reply.status, reply.retry_after.as_deref()), (429, Some("1")), "{}", reply.body);
}

#[tokio::test]
async fn a_database_that_accepts_but_never_answers_is_unavailable_not_a_hang() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            connections.push(stream);
        }
    });
    let server = server_on(&format!("postgres://postgres@127.0.0.1:{port}/postgres")).await;
    let reply = tokio::time::timeout(Duration::from_secs(5), server.push(task("silent", "echo", json!({}))))
        .await
        .expect("answered, not hung");
    assert_eq!(reply.status, 503, "{}", reply.body);
    held.abort();
}

#[tokio::test]
async fn a_client_that_hangs_up_does_not_cancel_the_task() {
    let db = TestDb::new().await;
    let gate = Gate::default();
    let server = postgres_server(&db, holding(&gate), 2).await;
    let body = task("hung-up", "held", json!({}));
    let client = tokio::spawn(support::post(server.addr, "/tasks/pubsub/", body));
    gate.started().await;
    client.abort();
    // Stopping waits for the connection to end: hyper has seen the hang-up
    // and dropped whatever it was polling for that request.
    server.stop().await;
    gate.release();
    // Finished by a task of its own, detached from the connection: only its row tells.
    db.wait_for("hung-up", Status::Successful).await;
}

#[tokio::test]
async fn a_finish_is_not_starved_by_a_busy_pool() {
    let db = TestDb::new().await;
    let (quick, hog) = (Gate::default(), Gate::default());
    let registry = routes(&Runs::default())
        .route(TaskRoute::new("quick", quick.task(false)))
        .route(TaskRoute::new("hog", hog.task(true)))
        .build()
        .unwrap();
    let server = postgres_server(&db, registry, 1).await;
    let quick_push = server.push_in_background(task("quick", "quick", json!({})));
    quick.started().await;
    // Takes the pool's only connection and keeps it past quick's finish.
    let hog_push = server.push_in_background(task("hog", "hog", json!({})));
    hog.started().await;
    quick.release();
    assert_eq!(quick_push.await.unwrap().status, 200);
    assert_eq!(db.row("quick").await.unwrap().status, Status::Successful);
    assert_eq!(db.row("hog").await.unwrap().status, Status::Running, "quick finished while the pool was held");
    hog.release();
    assert_eq!(hog_push.await.unwrap().status, 200);
}

#[tokio::test]
async fn a_busy_pool_is_still_ready() {
    let db = TestDb::new().await;
    let gate = Gate::default();
    let server = postgres_server(&db, holding(&gate), 1).await;
    let hog = server.push_in_background(task("hog", "held", json!({})));
    gate.started().await;
    assert_eq!(get(server.addr, "/readyz").await.status, 200);
    gate.release();
    assert_eq!(hog.await.unwrap().status, 200);
}

/// Returns a string PostgreSQL's jsonb cannot hold.
async fn nul(_: TaskContext) -> Result<String, TaskError> {
    Ok("a\u{0}b".to_owned())
}

#[tokio::test]
async fn a_result_postgres_cannot_store_fails_the_execution_for_good() {
    let db = TestDb::new().await;
    let registry = Registry::builder()
        .route(TaskRoute::new("nul", nul))
        .route(TaskRoute::new("permanent", demo::permanent))
        .build()
        .unwrap();
    let server = postgres_server(&db, registry, 2).await;
    let reply = server.push(task("nul-1", "nul", json!({}))).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let row = db.row("nul-1").await.unwrap();
    assert!(row.status == Status::Failed && row.permanent, "{row:?}");
    assert!(row.error_message.unwrap().starts_with("the task succeeded but its return value could not be stored"));

    assert_eq!(server.push(task("perm-1", "permanent", json!({}))).await.status, 400);
    let again = server.push(task("perm-1", "permanent", json!({}))).await;
    assert_eq!(
        (again.status, again.body.as_str()),
        (400, "bad request: the task already failed permanently; not run again")
    );
    assert_eq!(db.row("perm-1").await.unwrap().attempts, 1, "the redelivery did not run it");
}

#[tokio::test]
async fn an_instance_answers_redeliveries_of_what_ended_here_without_the_database() {
    let db = TestDb::new().await;
    let runs = Runs::default();
    let server = postgres_server(&db, registry(&runs), 4).await;
    assert_eq!(server.push(task("remembered", "count", json!({}))).await.status, 200);
    let doomed = server.push(task("doomed", "permanent", json!({}))).await;
    assert_eq!(doomed.status, 400, "{}", doomed.body);
    // The first redelivery of a permanent failure learns it from the database.
    assert_eq!(server.push(task("doomed", "permanent", json!({}))).await.status, 400);

    // With the rows gone, only the instance's memory can answer.
    db.client().await.batch_execute("delete from task_executions").await.unwrap();
    let again = server.push(task("remembered", "count", json!({}))).await;
    assert_eq!((again.status, again.body.as_str()), (200, "ok: already succeeded, not run again"));
    let again = server.push(task("doomed", "permanent", json!({}))).await;
    assert_eq!(again.status, 400, "{}", again.body);
    assert!(again.body.contains("already failed permanently"), "{}", again.body);
    assert_eq!(runs.get(), 1, "the task ran once");
    assert!(db.row("remembered").await.is_none() && db.row("doomed").await.is_none(), "no round trip was made");

    // Another instance has no such memory: it asks the database.
    let other = postgres_server(&db, registry(&runs), 4).await;
    assert_eq!(other.push(task("remembered", "count", json!({}))).await.status, 200);
    assert_eq!(runs.get(), 2);
}

#[tokio::test]
async fn h2c_is_served_on_the_same_port() {
    use http_body_util::BodyExt as _;
    let server = TestServer::start(App::in_memory(Arc::new(registry(&Runs::default())), PushAuth::none())).await;
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = http::Request::post("http://localhost/tasks/pubsub/")
        .body(http_body_util::Full::new(bytes::Bytes::from(task("h2", "echo", json!({"over": "h2"})))))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let _ = response.into_body().collect().await.unwrap();
    assert_eq!(server.row("h2").await.unwrap().return_value, Some(json!({"over": "h2"})));
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_refused_with_413() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = TestServer::start(App::in_memory(Arc::new(registry(&Runs::default())), PushAuth::none())).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = "POST /tasks/pubsub/ HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..16 {
        // The server may answer and close before the body ends.
        if stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.is_err()
            || stream.write_all(&chunk).await.is_err()
            || stream.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = vec![0; 64];
    let read = stream.read(&mut response).await.unwrap();
    assert!(
        String::from_utf8_lossy(&response[..read]).starts_with("HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&response[..read])
    );
}

/// Random letters and digits, which PostgreSQL cannot compress.
fn incompressible(length: usize) -> String {
    use rand::Rng as _;
    rand::thread_rng().sample_iter(rand::distributions::Alphanumeric).take(length).map(char::from).collect()
}

/// What can never be stored is refused for good (400: Pub/Sub dead-letters
/// it), not answered 500 and retried for ever: a task id over the limit and
/// arguments nested past it, before the database; and whatever else the
/// database finds past its own limits (SQLSTATE class 54), after it.
#[tokio::test]
async fn input_that_can_never_be_stored_is_refused_for_good() {
    let db = TestDb::new().await;
    let server = postgres_server(&db, registry(&Runs::default()), 2).await;

    let long_id = incompressible(2_800);
    let reply = server.push(task(&long_id, "echo", json!({}))).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.contains("task_id is 2800 bytes, over the limit of 1024"), "{}", reply.body);

    let depth = 100_000;
    let deep =
        format!(r#"{{"task_id": "deep", "task_name": "echo", "args": {}{}}}"#, "[".repeat(depth), "]".repeat(depth));
    let reply = server.push(envelope(&deep, "m-deep")).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.contains("nested deeper than 128 levels"), "{}", reply.body);
    assert!(db.row(&long_id).await.is_none() && db.row("deep").await.is_none(), "refused before the database");

    // A message published without a task id is recorded as msg-{messageId}:
    // one too long for the index is the database's to refuse.
    let message_id = incompressible(2_800);
    let reply = server.push(envelope(r#"{"task_name": "echo"}"#, &message_id)).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.starts_with("bad request: the database rejected the message"), "{}", reply.body);
    assert_eq!(server.push(task("after", "echo", json!({}))).await.status, 200, "and the server goes on");
}
