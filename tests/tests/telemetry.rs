//! Traces and log lines of real pushes over HTTP: the subscriber the process
//! installs, with spans exported to memory and JSON log lines to a buffer, so
//! each test can read what an operator would see in Cloud Trace and Cloud
//! Logging. Each test runs on its own thread with its own subscriber.

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use opentelemetry::Value;
use opentelemetry::trace::{SpanId, SpanKind, Status, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::json;
use support::{TestDb, TestServer, postgres_server, task, task_with_attributes};
use tracing::dispatcher::DefaultGuard;
use tracing_subscriber::fmt::MakeWriter;
use whirligig_handler::store::{ClaimRequest, ExecutionStore as _};
use whirligig_handler::telemetry::{self, CloudLogging, LogFormat, Sampling, Spans, TelemetryConfig, TraceExport};
use whirligig_handler::{App, PushAuth, demo};
use whirligig_registry::{Registry, TaskContext, TaskError, TaskRoute};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Log lines written by the subscriber, kept for the test to read.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = Lines;

    fn make_writer(&'a self) -> Lines {
        self.clone()
    }
}

impl Lines {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    fn json(&self) -> Vec<serde_json::Value> {
        self.text().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }
}

/// The production subscriber on this thread: JSON logs for project `proj`,
/// spans exported to memory as each ends.
struct Traced {
    spans: InMemorySpanExporter,
    logs: Lines,
    _provider: SdkTracerProvider,
    _guard: DefaultGuard,
}

impl Traced {
    fn install() -> Traced {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let logs = Lines::default();
        let subscriber = telemetry::subscriber(
            CloudLogging::new(logs.clone(), Some("proj".to_owned())),
            Spans::Exported(provider.tracer("whirligig-tests")),
            "info",
        );
        let guard = tracing::dispatcher::set_default(&subscriber);
        Traced { spans: exporter, logs, _provider: provider, _guard: guard }
    }

    fn spans(&self) -> Vec<SpanData> {
        self.spans.get_finished_spans().unwrap()
    }

    /// The one finished span called `name`.
    fn span(&self, name: &str) -> SpanData {
        let spans = self.spans();
        let mut named = spans.iter().filter(|span| span.name == name);
        let span = named.next().unwrap_or_else(|| panic!("no span {name:?} in {:#?}", names(&spans)));
        assert!(named.next().is_none(), "more than one span {name:?}");
        span.clone()
    }

    fn forget(&self) {
        self.spans.reset();
    }
}

fn names(spans: &[SpanData]) -> Vec<String> {
    spans.iter().map(|span| span.name.to_string()).collect()
}

fn attribute(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.clone())
}

fn text(span: &SpanData, key: &str) -> String {
    attribute(span, key).unwrap_or_else(|| panic!("{} has no {key}: {:?}", span.name, span.attributes)).to_string()
}

fn is_child_of(child: &SpanData, parent: &SpanData) -> bool {
    child.parent_span_id == parent.span_context.span_id()
        && child.span_context.trace_id() == parent.span_context.trace_id()
}

/// A task that does its work in a span of its own, as users instrument theirs.
async fn instrumented(_: TaskContext) {
    use tracing::Instrument as _;
    async { tracing::info!("working") }.instrument(tracing::info_span!("inner work")).await;
}

fn registry() -> Registry {
    Registry::builder()
        .route(TaskRoute::new("instrumented", instrumented))
        .route(TaskRoute::new("echo", demo::echo))
        .route(TaskRoute::new("sleep", demo::sleep))
        .route(TaskRoute::new("fail", demo::fail))
        .route(TaskRoute::new("panic", demo::panic))
        .route(TaskRoute::new("permanent", demo::permanent))
        .build()
        .unwrap()
}

async fn memory_server() -> TestServer<whirligig_handler::store::MemoryStore> {
    TestServer::start(App::in_memory(Arc::new(registry()), PushAuth::none())).await
}

/// A push to `path` with one more header, as Cloud Run or another caller sends it.
fn push_with(path: &str, (name, value): (&str, &str), body: impl Into<bytes::Bytes>) -> http::Request<Full<Bytes>> {
    let request = http::Request::post(path).header("host", "localhost").header(name, value);
    request.body(Full::new(body.into())).unwrap()
}

#[tokio::test]
async fn a_push_is_a_server_span_over_a_consumer_span_over_the_store_calls() {
    let traced = Traced::install();
    let db = TestDb::new().await;
    let server = postgres_server(&db, registry(), 4).await;

    let reply = server.push(task("traced", "echo", json!({"secret": "argument-value"}))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    let request = traced.span("POST /tasks/pubsub/");
    let task = traced.span("echo process");
    let claim = traced.span("INSERT task_executions");
    let finish = traced.span("UPDATE task_executions");
    assert_eq!(request.span_kind, SpanKind::Server);
    assert_eq!(request.parent_span_id, SpanId::INVALID, "a new trace has no parent");
    assert_eq!(text(&request, "http.response.status_code"), "200");
    assert_eq!(text(&request, "http.route"), "/tasks/pubsub/");

    assert_eq!(task.span_kind, SpanKind::Consumer);
    assert!(is_child_of(&task, &request));
    assert_eq!(task.status, Status::Unset);
    for (key, expected) in [
        ("whirligig.task.name", "echo"),
        ("whirligig.task.id", "traced"),
        ("whirligig.task.attempt", "1"),
        ("whirligig.task.outcome", "succeeded"),
        ("http.response.status_code", "200"),
        ("messaging.system", "gcp_pubsub"),
        ("messaging.operation.type", "process"),
        ("messaging.message.id", "m-traced"),
        ("messaging.destination.subscription.name", "projects/test/subscriptions/dev--gyrinx.tasks--test-sub"),
        ("messaging.gcp_pubsub.message.delivery_attempt", "1"),
    ] {
        assert_eq!(text(&task, key), expected, "{key}");
    }

    for (store_call, operation) in [(&claim, "INSERT"), (&finish, "UPDATE")] {
        assert_eq!(store_call.span_kind, SpanKind::Client);
        assert!(is_child_of(store_call, &task), "{} is not under the task", store_call.name);
        assert_eq!(text(store_call, "db.system.name"), "postgresql");
        assert_eq!(text(store_call, "db.operation.name"), operation);
        assert_eq!(text(store_call, "db.collection.name"), "task_executions");
        let server: tokio_postgres::Config = support::admin_url().parse().unwrap();
        let tokio_postgres::config::Host::Tcp(host) = &server.get_hosts()[0] else { panic!("a TCP host") };
        assert_eq!(&text(store_call, "server.address"), host);
        assert_eq!(text(store_call, "server.port"), server.get_ports()[0].to_string());
        assert_eq!(store_call.status, Status::Unset);
    }
    // Arguments and SQL parameters stay in the database.
    for span in traced.spans() {
        for kv in &span.attributes {
            assert!(!kv.value.to_string().contains("argument-value"), "{} carries an argument: {kv:?}", span.name);
        }
    }
}

/// The trace and span ids OpenTelemetry calls current inside the task, as its result.
async fn current_trace(_: TaskContext) -> Result<String, TaskError> {
    use opentelemetry::trace::TraceContextExt as _;
    let context = opentelemetry::Context::current();
    let span = context.span();
    Ok(format!("{}/{}", span.span_context().trace_id(), span.span_context().span_id()))
}

#[tokio::test]
async fn without_an_exporter_lines_carry_the_ids_spans_would_have_and_the_task_runs_in_its_context() {
    let logs = Lines::default();
    let subscriber = telemetry::subscriber(
        CloudLogging::new(logs.clone(), Some("proj".to_owned())),
        Spans::ForLogs(Sampling::default()),
        "info",
    );
    let _guard = tracing::dispatcher::set_default(&subscriber);
    let db = TestDb::new().await;
    let registry = Registry::builder()
        .route(TaskRoute::new("instrumented", instrumented))
        .route(TaskRoute::new("current_trace", current_trace))
        .build()
        .unwrap();
    let server = postgres_server(&db, registry, 4).await;

    let traced = |id, name, sampled| {
        let traceparent = format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-0{}", u8::from(sampled));
        task_with_attributes(id, name, json!({"traceparent": traceparent}))
    };
    assert_eq!(server.push(traced("for-logs", "instrumented", true)).await.status, 200);
    let lines = logs.json();
    let line = |message: &str| lines.iter().find(|line| line["message"] == message).unwrap().clone();
    let (outcome, inner) = (line("task succeeded"), line("working"));
    for line in [&outcome, &inner] {
        assert_eq!(line["logging.googleapis.com/trace"], format!("projects/proj/traces/{TRACE_ID}"), "{line}");
        assert_eq!(line["logging.googleapis.com/trace_sampled"], true, "{line}");
        let span_id = line["logging.googleapis.com/spanId"].as_str().unwrap();
        assert!(span_id.len() == 16 && span_id != PARENT_SPAN_ID, "{line}");
    }
    assert_ne!(outcome["logging.googleapis.com/spanId"], inner["logging.googleapis.com/spanId"], "the task's own span");
    assert_eq!(server.row("for-logs").await.unwrap().status, whirligig_handler::store::Status::Successful);

    // An unsampled caller's decision holds; OpenTelemetry's current context in the task is the task span's.
    assert_eq!(server.push(traced("current", "current_trace", false)).await.status, 200);
    let lines = logs.json();
    let outcome = lines.iter().rfind(|line| line["message"] == "task succeeded").unwrap();
    assert_eq!(outcome["logging.googleapis.com/trace_sampled"], false, "{outcome}");
    let span_id = outcome["logging.googleapis.com/spanId"].as_str().unwrap();
    let current = server.row("current").await.unwrap().return_value.unwrap();
    assert_eq!(current, json!(format!("{TRACE_ID}/{span_id}")));
}

#[tokio::test]
async fn a_tasks_own_spans_are_children_of_its_span_and_info_lines_are_not_events() {
    let traced = Traced::install();
    let server = memory_server().await;
    assert_eq!(server.push(task("inner", "instrumented", json!({}))).await.status, 200);

    let task = traced.span("instrumented process");
    let inner = traced.span("inner work");
    assert!(is_child_of(&inner, &task));
    assert!(inner.events.events.is_empty() && task.events.events.is_empty(), "info lines stay in the logs");
    let lines = traced.logs.json();
    let working = lines.iter().find(|line| line["message"] == "working").unwrap();
    assert_eq!(working["logging.googleapis.com/spanId"], inner.span_context.span_id().to_string());
}

#[tokio::test]
async fn failures_and_panics_mark_the_task_span_as_an_error() {
    let traced = Traced::install();
    let server = memory_server().await;

    for (task_id, task_name, status, error_type, description) in [
        ("failing", "fail", 500, "task_error", "always fails"),
        ("panicking", "panic", 500, "panic", "the task panicked"),
        ("permanent", "permanent", 400, "task_error", "permanent"),
    ] {
        traced.forget();
        let reply = server.push(task(task_id, task_name, json!({}))).await;
        assert_eq!(reply.status, status, "{task_name}: {}", reply.body);

        let task = traced.span(&format!("{task_name} process"));
        let Status::Error { description: recorded } = &task.status else {
            panic!("{task_name}: status {:?}", task.status)
        };
        assert!(recorded.contains(description), "{task_name}: {recorded:?}");
        assert_eq!(text(&task, "error.type"), error_type, "{task_name}");
        assert_eq!(text(&task, "whirligig.task.outcome"), "failed", "{task_name}");
        assert_eq!(text(&task, "http.response.status_code"), status.to_string(), "{task_name}");
        // The warning logged for the failure is an event of the span.
        assert!(task.events.events.iter().any(|event| event.name == "task failed"), "{task_name}: {:?}", task.events);

        // A server span is an error only when the server failed, not the request (semantic conventions).
        let request = traced.span("POST /tasks/pubsub/");
        let server_error = status >= 500;
        assert_eq!(matches!(request.status, Status::Error { .. }), server_error, "{task_name}: {:?}", request.status);
    }
}

#[tokio::test]
async fn duplicates_and_misfits_are_spans_that_say_so() {
    let traced = Traced::install();
    let server = memory_server().await;

    assert_eq!(server.push(task("once", "echo", json!({}))).await.status, 200);
    traced.forget();
    assert_eq!(server.push(task("once", "echo", json!({}))).await.status, 200);
    let duplicate = traced.span("echo process");
    assert_eq!(text(&duplicate, "whirligig.task.outcome"), "duplicate");
    assert_eq!(duplicate.status, Status::Unset);
    assert!(attribute(&duplicate, "whirligig.task.attempt").is_none(), "a duplicate makes no attempt");

    traced.forget();
    let reply = server.push(task("misfit", "sleep", json!({"ms": "tomorrow-at-noon"}))).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let misfit = traced.span("sleep process");
    assert_eq!(text(&misfit, "whirligig.task.outcome"), "rejected");
    assert_eq!(text(&misfit, "error.type"), "arguments");
    assert_eq!(misfit.status, Status::error("the kwargs do not fit the task"));
    // serde's reason quotes the value: it stays in the execution's row, off the span and the log.
    let recorded = format!("{:?}{:?}{:?}", misfit.attributes, misfit.events, misfit.status);
    assert!(!recorded.contains("tomorrow-at-noon"), "{recorded}");
    assert!(!traced.logs.text().contains("tomorrow-at-noon"), "{}", traced.logs.text());

    traced.forget();
    let reply = server.push("{not json").await;
    assert_eq!(reply.status, 400);
    assert_eq!(names(&traced.spans()), ["POST /tasks/pubsub/"], "a malformed push runs no task");
    assert_eq!(text(&traced.span("POST /tasks/pubsub/"), "http.response.status_code"), "400");
}

#[tokio::test]
async fn the_traceparent_in_the_message_is_the_parent_and_the_request_header_a_link() {
    let traced = Traced::install();
    let server = memory_server().await;
    let header_traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let attributes = json!({"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE"});
    let body = task_with_attributes("enqueued", "echo", attributes);
    let request = push_with("/tasks/pubsub/", ("traceparent", header_traceparent), body);
    assert_eq!(support::request(server.addr, request).await.status, 200);

    let request = traced.span("POST /tasks/pubsub/");
    assert_eq!(request.span_context.trace_id().to_string(), TRACE_ID, "the enqueuer's trace goes on");
    assert_eq!(request.parent_span_id.to_string(), PARENT_SPAN_ID);
    assert!(request.parent_span_is_remote);
    assert_eq!(request.span_context.trace_state().header(), "congo=t61rcWkgMzE");
    let links: Vec<String> = request.links.links.iter().map(|link| link.span_context.trace_id().to_string()).collect();
    assert_eq!(links, ["0af7651916cd43dd8448eb211c80319c"], "Cloud Run's request trace is kept as a link");
    assert!(is_child_of(&traced.span("echo process"), &request));

    // Google's Pub/Sub client libraries write their own attribute.
    traced.forget();
    let body = task_with_attributes("googclient", "echo", json!({"googclient_traceparent": TRACEPARENT}));
    assert_eq!(server.push(body).await.status, 200);
    assert_eq!(traced.span("echo process").span_context.trace_id().to_string(), TRACE_ID);

    // A traceparent that does not parse starts a new trace rather than failing the push.
    traced.forget();
    let body = task_with_attributes("garbled", "echo", json!({"traceparent": "00-nonsense-01"}));
    assert_eq!(server.push(body).await.status, 200);
    assert_eq!(traced.span("POST /tasks/pubsub/").parent_span_id, SpanId::INVALID, "a new trace has no parent");
}

#[tokio::test]
async fn pushes_refused_before_the_body_is_read_continue_the_callers_trace() {
    let traced = Traced::install();
    let server = memory_server().await;
    let push_with_caller = |body: Vec<u8>| push_with("/tasks/pubsub/", ("traceparent", TRACEPARENT), body);

    let oversized = vec![b' '; whirligig_handler::MAX_BODY_BYTES + 1];
    assert_eq!(support::request(server.addr, push_with_caller(oversized)).await.status, 413);
    let refused = traced.span("POST /tasks/pubsub/");
    assert_eq!(refused.span_context.trace_id().to_string(), TRACE_ID);
    assert_eq!((text(&refused, "http.response.status_code").as_str(), &refused.status), ("413", &Status::Unset));

    traced.forget();
    server.app.begin_shutdown();
    let draining = push_with_caller(task("late", "echo", json!({})).into_bytes());
    assert_eq!(support::request(server.addr, draining).await.status, 503);
    let refused = traced.span("POST /tasks/pubsub/");
    assert_eq!(refused.span_context.trace_id().to_string(), TRACE_ID);
    assert!(matches!(refused.status, Status::Error { .. }), "a 5xx is the server's failure");
}

#[tokio::test]
async fn a_store_call_that_fails_is_an_error_span_under_the_task() {
    let traced = Traced::install();
    let db = TestDb::new().await;
    let gate = support::Gate::default();
    let registry = Registry::builder()
        .route(TaskRoute::new("echo", demo::echo))
        .route(TaskRoute::new("held", gate.task(true)))
        .build()
        .unwrap();
    let server = postgres_server(&db, registry, 1).await;
    // The holder's task keeps the only pooled connection until released.
    let holder = server.push_in_background(task("holder", "held", json!({})));
    gate.started().await;

    let busy = server.push(task("busy", "echo", json!({}))).await;
    assert_eq!(busy.status, 429, "{}", busy.body);
    gate.release();
    assert_eq!(holder.await.unwrap().status, 200);
    let spans = traced.spans();
    let is_busy = |span: &&SpanData| attribute(span, "whirligig.task.id").is_some_and(|id| id.as_str() == "busy");
    let busy_task = spans.iter().find(is_busy).unwrap();
    let claim = spans.iter().find(|span| is_child_of(span, busy_task)).expect("the claim's span");
    assert_eq!(claim.name, "INSERT task_executions");
    assert_eq!(text(claim, "error.type"), "pool_timeout");
    assert!(matches!(claim.status, Status::Error { .. }), "{:?}", claim.status);
    assert_eq!(text(busy_task, "whirligig.task.outcome"), "failed");
    assert_eq!(text(busy_task, "error.type"), "pool_timeout");
}

/// Claims that shared a statement say so on their spans; a claim alone does not.
#[tokio::test]
async fn claims_that_share_a_statement_carry_the_batch_size() {
    let traced = Traced::install();
    let db = TestDb::new().await;
    let store = Arc::new(db.store(1, std::time::Duration::from_secs(5)));
    let args: &'static serde_json::value::RawValue = serde_json::from_str("[]").unwrap();
    let request = |task_id: &'static str| ClaimRequest {
        task_id,
        task_name: "echo",
        args,
        kwargs: serde_json::from_str("{}").unwrap(),
        message_id: None,
        enqueued_at: None,
        lease: std::time::Duration::from_secs(60),
        max_attempts: None,
    };
    store.claim(&request("alone")).await.unwrap();
    assert_eq!(attribute(&traced.span("INSERT task_executions"), "db.operation.batch.size"), None);
    traced.forget();

    let busy = store.connection().await.unwrap();
    let claims: Vec<_> = ["a", "b", "c", "d", "e"]
        .into_iter()
        .map(|task_id| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.claim(&request(task_id)).await.unwrap() })
        })
        .collect();
    tokio::task::yield_now().await;
    drop(busy);
    for claim in claims {
        claim.await.unwrap();
    }
    let spans = traced.spans();
    assert_eq!(spans.len(), 5, "{:?}", names(&spans));
    for span in &spans {
        assert_eq!(text(span, "db.operation.batch.size"), "5", "{}", span.name);
    }
}

#[tokio::test]
async fn cloud_runs_trace_header_is_the_parent_when_the_message_names_none() {
    let traced = Traced::install();
    let server = memory_server().await;
    let cloud_trace = ("x-cloud-trace-context", "105445aa7843bc8bf206b12000100000/255;o=1");
    let request = push_with("/tasks/pubsub", cloud_trace, task("cloud", "echo", json!({})));
    assert_eq!(support::request(server.addr, request).await.status, 200);

    let request = traced.span("POST /tasks/pubsub");
    assert_eq!(request.span_context.trace_id().to_string(), "105445aa7843bc8bf206b12000100000");
    assert_eq!(request.parent_span_id.to_string(), "00000000000000ff");
    assert!(request.span_context.is_sampled(), "o=1: Cloud Run sampled the request");
    assert!(request.links.links.is_empty());
}

#[tokio::test]
async fn json_log_lines_name_their_trace_and_span_for_cloud_logging() {
    let traced = Traced::install();
    let server = memory_server().await;
    let body = task_with_attributes("logged", "echo", json!({"traceparent": TRACEPARENT}));
    assert_eq!(server.push(body).await.status, 200);

    let task = traced.span("echo process");
    let lines = traced.logs.json();
    let line = lines.iter().find(|line| line["message"] == "task succeeded").unwrap_or_else(|| {
        panic!("no outcome line in:\n{}", traced.logs.text());
    });
    assert_eq!(line["severity"], "INFO");
    assert_eq!(line["logging.googleapis.com/trace"], format!("projects/proj/traces/{TRACE_ID}"));
    assert_eq!(line["logging.googleapis.com/spanId"], task.span_context.span_id().to_string());
    assert_eq!(line["logging.googleapis.com/trace_sampled"], true);
    assert_eq!(line["whirligig.task.name"], "echo");
    assert_eq!(line["whirligig.task.id"], "logged");
    assert_eq!(line["whirligig.task.attempt"], 1);
    assert_eq!(line["http.response.status_code"], 200);
    assert!(line["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{line}");
    assert!(line["time"].as_str().is_some_and(|time| time.ends_with('Z')), "{line}");
    for (key, _) in line.as_object().unwrap() {
        assert!(!key.starts_with("otel."), "exporter settings leaked into the log: {key}");
    }
}

#[tokio::test]
async fn without_an_exporter_json_lines_still_name_cloud_runs_trace() {
    let config = TelemetryConfig {
        traces: TraceExport::None,
        logs: LogFormat::Json,
        project_id: Some("proj".to_owned()),
        ..TelemetryConfig::default()
    };
    assert!(telemetry::provider(&config).unwrap().is_none(), "nothing to export");
    let logs = Lines::default();
    let subscriber = telemetry::subscriber(
        CloudLogging::new(logs.clone(), config.project_id.clone()),
        Spans::ForLogs(config.sampling),
        "info",
    );
    let _guard = tracing::dispatcher::set_default(&subscriber);
    let server = memory_server().await;
    let cloud_trace = ("x-cloud-trace-context", "105445aa7843bc8bf206b12000100000/1;o=1");
    let request = push_with("/tasks/pubsub/", cloud_trace, task("untraced", "echo", json!({})));
    assert_eq!(support::request(server.addr, request).await.status, 200);

    let lines = logs.json();
    let line = lines.iter().find(|line| line["message"] == "task succeeded").unwrap();
    assert_eq!(line["logging.googleapis.com/trace"], "projects/proj/traces/105445aa7843bc8bf206b12000100000");
    assert!(line["logging.googleapis.com/spanId"].as_str().is_some_and(|id| id.len() == 16), "{line}");
}

#[tokio::test]
async fn text_log_lines_are_compact_and_leave_out_exporter_settings() {
    let lines = Lines::default();
    let subscriber = telemetry::subscriber(telemetry::text_logs_to(lines.clone(), false), Spans::None, "info");
    let _guard = tracing::dispatcher::set_default(&subscriber);
    let server = memory_server().await;
    assert_eq!(server.push(task("plain", "echo", json!({}))).await.status, 200);

    let log = lines.text();
    let line = log.lines().find(|line| line.contains("task succeeded")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("whirligig.task.id=\"plain\"") && line.contains("whirligig.task.outcome=\"succeeded\""));
    assert!(!log.contains("otel."), "{log}");
}
