//! Enqueueing as a service does it, through `Tasks`: against the real Pub/Sub
//! emulator (bytes, attributes, and the whole pipeline to the real binary),
//! against loopback stubs of Pub/Sub and the metadata server for the faults
//! the emulator cannot make, and with the immediate backend.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState};
use serde_json::json;
use support::TestDb;
use support::emulator::{Emulator, PROJECT, PushOptions, emulator_host, unique};
use support::google::{Fault, MetadataStub, PubSubStub};
use support::process::{Server, assert_exit, free_port, run_app, text};
use whirligig_handler::demo::{self, Flaky, Sleep};
use whirligig_handler::store::Status;
use whirligig_handler::{Code, Config, EnqueueError, PublishError, Tasks};
use whirligig_registry::{CallArguments, Kwargs, Registry, TaskMessage};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A namespace of its own, so topics of concurrent tests and earlier runs on
/// the shared emulator never meet.
fn namespace() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

fn registry() -> Arc<Registry> {
    Arc::new(demo::registry().expect("the demo registry is valid"))
}

/// The configuration `vars` make, and nothing from the developer's environment.
fn config(vars: &[(&str, String)]) -> Config {
    let map: HashMap<String, String> = vars.iter().map(|(name, value)| ((*name).to_owned(), value.clone())).collect();
    Config::from_lookup(&registry(), &move |name| map.get(name).cloned()).expect("a valid configuration")
}

async fn tasks(config: &Config) -> Tasks {
    Tasks::from_config(registry(), config).await.expect("the handle builds")
}

fn topic(task: &str, config: &Config) -> String {
    registry().get(task).expect("a demo task").topic_name(&config.naming)
}

/// The trace an enqueue continues, as an upstream request would hand it on.
fn parent() -> Context {
    let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("a trace id");
    let span_id = SpanId::from_hex("00f067aa0ba902b7").expect("a span id");
    let span = SpanContext::new(trace_id, span_id, TraceFlags::SAMPLED, true, TraceState::default());
    Context::new().with_remote_span_context(span)
}

/// The emulator in dev, under a namespace of its own.
fn emulated(extra: &[(&str, String)]) -> Config {
    let mut vars = vec![
        ("PUBSUB_EMULATOR_HOST", emulator_host()),
        ("TASKS_NAMESPACE", namespace()),
        ("GCP_PROJECT_ID", PROJECT.to_owned()),
    ];
    vars.extend(extra.iter().cloned());
    config(&vars)
}

/// `task`'s topic on the emulator, and a pull subscription that sees what is published to it.
async fn pulling(task: &str, config: &Config) -> (Emulator, String) {
    let (emulator, topic, subscription) = (Emulator::new(), topic(task, config), unique("pull"));
    emulator.create_topic(&topic).await;
    emulator.create_pull_subscription(&subscription, &topic).await;
    (emulator, subscription)
}

#[tokio::test]
async fn a_published_message_is_the_reference_payload_with_the_trace_of_the_enqueue() {
    let config = emulated(&[]);
    let (emulator, subscription) = pulling("flaky", &config).await;
    let tasks = tasks(&config).await;

    let queued =
        tasks.enqueue(&demo::FLAKY, Kwargs(Flaky { succeed_on: 3 })).with_context(parent()).await.expect("published");

    let pulled = emulator.pull_exactly(&subscription, 1, Duration::from_secs(10)).await;
    assert_eq!(Some(pulled[0].message_id.as_str()), queued.message_id());
    let message: TaskMessage = serde_json::from_slice(&pulled[0].data).expect("a task message");
    assert_eq!(message.to_json().as_bytes(), pulled[0].data, "exactly the bytes the reference publishes");
    assert_eq!((message.task_id.as_str(), message.task_name.as_str()), (queued.task_id(), "flaky"));
    assert_eq!(uuid::Uuid::parse_str(queued.task_id()).expect("a UUID").get_version_num(), 4);
    assert_eq!((json!(message.args), json!(message.kwargs)), (json!([]), json!({"succeed_on": 3})));
    assert!(message.enqueued_at.is_some());
    assert_eq!(pulled[0].attributes.get("traceparent").map(String::as_str), Some(TRACEPARENT));
}

#[tokio::test]
async fn a_scheduled_enqueue_publishes_what_cloud_scheduler_publishes() {
    let config = emulated(&[]);
    let (emulator, subscription) = pulling("heartbeat", &config).await;

    let queued = tasks(&config).await.enqueue_scheduled("heartbeat").await.expect("published");

    let pulled = emulator.pull_exactly(&subscription, 1, Duration::from_secs(10)).await;
    assert_eq!(pulled[0].data, TaskMessage::scheduled("heartbeat").to_json().into_bytes());
    assert!(pulled[0].attributes.is_empty(), "no trace, no attributes: {:?}", pulled[0].attributes);
    assert_eq!(queued.task_id(), format!("scheduled-heartbeat-{}", pulled[0].message_id), "the run's execution id");
}

#[tokio::test]
async fn a_topic_never_provisioned_is_refused_at_once_with_googles_message_and_the_row_says_so() {
    let db = TestDb::new().await;
    let config = emulated(&[("DATABASE_URL", db.url.clone())]);
    let tasks = tasks(&config).await;

    let error = tasks.enqueue_with_id("lost-1", &demo::NOOP, ()).await.unwrap_err();

    let EnqueueError::Publish(PublishError::Refused { topic, error: api }) = &error else { panic!("{error:?}") };
    assert_eq!((api.code, api.message.as_str()), (Code::NotFound, "Topic not found"));
    assert!(topic.ends_with(&self::topic("noop", &config)), "{topic}");
    let row = db.row("lost-1").await.expect("recorded");
    assert_eq!(row.status, Status::Failed);
    assert!(row.error_message.as_deref().is_some_and(|m| m.starts_with("not published: ") && m.contains("NOT_FOUND")));

    // Once the topic exists, the same task id goes through and is READY again.
    Emulator::new().create_topic(&self::topic("noop", &config)).await;
    tasks.enqueue_with_id("lost-1", &demo::NOOP, ()).await.expect("published on the second try");
    let row = db.row("lost-1").await.expect("recorded");
    assert_eq!((row.status, row.error_message, row.attempts), (Status::Ready, None, 0));
}

#[tokio::test]
async fn through_the_emulator_to_the_real_binary_ready_then_successful_and_a_flaky_task_is_redelivered() {
    let emulator = Emulator::new();
    let db = TestDb::new().await;
    let config = emulated(&[("DATABASE_URL", db.url.clone())]);
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}/tasks/pubsub/");
    for task in ["noop", "flaky"] {
        let topic = topic(task, &config);
        emulator.create_topic(&topic).await;
        let options =
            PushOptions { min_backoff_seconds: Some(1), max_backoff_seconds: Some(2), ..PushOptions::default() };
        emulator.create_push_subscription(&unique("push"), &topic, &endpoint, options).await;
    }
    let tasks = tasks(&config).await;

    // Nothing listens yet: the call waits READY while the emulator retries the push.
    let noop = tasks.enqueue(&demo::NOOP, ()).await.expect("published");
    let flaky = tasks.enqueue(&demo::FLAKY, Kwargs(Flaky { succeed_on: 2 })).await.expect("published");
    assert_eq!(db.row(noop.task_id()).await.map(|row| row.status), Some(Status::Ready));

    let env = [("DATABASE_URL", db.url.as_str()), ("TASKS_NAMESPACE", config.naming.namespace())];
    let _server = Server::start_on(port, &env).await;

    let done = db.wait_within(noop.task_id(), Status::Successful, Duration::from_secs(30)).await;
    assert_eq!((done.attempts, done.message_id.as_deref()), (1, noop.message_id()));
    let retried = db.wait_within(flaky.task_id(), Status::Successful, Duration::from_secs(30)).await;
    assert_eq!((retried.attempts, retried.return_value), (2, Some(json!(2))), "failed once, redelivered, succeeded");

    // The CLI follows the same pipeline until the execution ends.
    let host = emulator_host();
    let cli = [
        ("PUBSUB_EMULATOR_HOST", host.as_str()),
        ("GCP_PROJECT_ID", PROJECT),
        ("DATABASE_URL", db.url.as_str()),
        ("TASKS_NAMESPACE", config.naming.namespace()),
    ];
    let waited = run_app(&["enqueue", "flaky", "--kwargs", r#"{"succeed_on": 1}"#, "--wait=8"], &cli).await;
    assert_exit(&waited, 0, "published, run by the server, succeeded");
    assert!(text(&waited.stdout).contains(r#""status": "SUCCESSFUL""#), "{}", text(&waited.stdout));
}

/// Google's API on loopback: publishes to `pubsub`, tokens from `metadata`.
fn stubbed(pubsub: &PubSubStub, metadata: &MetadataStub, extra: &[(&str, String)]) -> Config {
    let mut vars = vec![
        ("TASKS_BACKEND", "pubsub".to_owned()),
        ("TASKS_PUBSUB_ENDPOINT", pubsub.url()),
        ("GCE_METADATA_HOST", metadata.host()),
        ("GCP_PROJECT_ID", PROJECT.to_owned()),
    ];
    vars.extend(extra.iter().cloned());
    config(&vars)
}

#[tokio::test]
async fn unavailable_twice_then_published_with_a_token_from_the_metadata_server_on_every_request() {
    let metadata = MetadataStub::start().await;
    let pubsub = PubSubStub::start_checking(&metadata).await;
    pubsub.push_fault(Fault::error(503, "UNAVAILABLE"));
    pubsub.push_fault(Fault::Bare(503));
    let tasks = tasks(&stubbed(&pubsub, &metadata, &[])).await;

    let queued = tasks.enqueue(&demo::NOOP, ()).await.expect("published on the third request");

    let requests = pubsub.requests();
    assert_eq!(requests.iter().map(|request| request.answered).collect::<Vec<_>>(), [503, 503, 200]);
    assert!(requests.iter().all(|request| request.authorization.as_deref() == Some("Bearer token-1")), "{requests:?}");
    assert_eq!(metadata.token_requests(), 1, "the token is cached");
    assert_eq!(queued.message_id(), Some("1"));
    let published = pubsub.published();
    assert_eq!(serde_json::from_slice::<TaskMessage>(&published[0].data).unwrap().task_id, queued.task_id());
}

#[tokio::test]
async fn concurrent_first_calls_share_one_token_fetch_and_a_token_near_its_expiry_is_not_reused() {
    let metadata = MetadataStub::start().await;
    metadata.set_delay(Duration::from_millis(50));
    let pubsub = PubSubStub::start_checking(&metadata).await;
    let shared = tasks(&stubbed(&pubsub, &metadata, &[])).await;

    let calls: Vec<_> = (0..20)
        .map(|_| {
            let tasks = shared.clone();
            tokio::spawn(async move { tasks.enqueue(&demo::NOOP, ()).await })
        })
        .collect();
    for call in calls {
        call.await.expect("joined").expect("published");
    }
    assert_eq!(metadata.token_requests(), 1, "one refresh in flight at a time");

    // Tokens refresh minutes before they expire: one with two minutes left is not handed out.
    let metadata = MetadataStub::start().await;
    metadata.set_expires_in(120);
    let pubsub = PubSubStub::start_checking(&metadata).await;
    let expiring = tasks(&stubbed(&pubsub, &metadata, &[])).await;
    expiring.enqueue(&demo::NOOP, ()).await.expect("published");
    expiring.enqueue(&demo::NOOP, ()).await.expect("published");
    let used: Vec<_> = pubsub.requests().into_iter().filter_map(|request| request.authorization).collect();
    assert_eq!(used, ["Bearer token-1", "Bearer token-2"]);
}

#[tokio::test]
async fn permission_denied_fails_at_once_and_nothing_is_retried() {
    let metadata = MetadataStub::start().await;
    let pubsub = PubSubStub::start_checking(&metadata).await;
    pubsub.push_fault(Fault::error(403, "PERMISSION_DENIED"));
    let tasks = tasks(&stubbed(&pubsub, &metadata, &[])).await;

    let error = tasks.enqueue(&demo::NOOP, ()).await.unwrap_err();

    let EnqueueError::Publish(PublishError::Refused { error: api, .. }) = &error else { panic!("{error:?}") };
    assert_eq!(api.code, Code::PermissionDenied);
    assert!(error.to_string().contains("User not authorized to perform this action."), "{error}");
    assert_eq!(pubsub.publish_requests(), 1);
}

#[tokio::test]
async fn a_publish_that_hangs_gives_up_at_the_deadline() {
    let metadata = MetadataStub::start().await;
    let pubsub = PubSubStub::start().await;
    for _ in 0..10 {
        pubsub.push_fault(Fault::Hang);
    }
    let tasks = tasks(&stubbed(&pubsub, &metadata, &[("TASKS_PUBLISH_TIMEOUT_MS", "400".to_owned())])).await;

    let started = tokio::time::Instant::now();
    let error = tasks.enqueue(&demo::NOOP, ()).await.unwrap_err();

    assert!(matches!(error, EnqueueError::Publish(PublishError::GaveUp { .. })), "{error:?}");
    assert!(error.to_string().contains("within 400ms"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5), "bounded by the deadline, not hung: {:?}", started.elapsed());
}

#[tokio::test]
async fn a_metadata_server_that_is_down_is_a_clear_error_and_nothing_is_published() {
    let metadata = MetadataStub::start().await;
    metadata.set_down(true);
    let pubsub = PubSubStub::start().await;
    let tasks = tasks(&stubbed(&pubsub, &metadata, &[("TASKS_PUBLISH_TIMEOUT_MS", "500".to_owned())])).await;

    let error = tasks.enqueue(&demo::NOOP, ()).await.unwrap_err();

    assert!(matches!(error, EnqueueError::Publish(PublishError::GaveUp { .. })), "{error:?}");
    assert!(error.to_string().contains("no access token: the metadata server"), "{error}");
    assert_eq!(pubsub.publish_requests(), 0);
}

#[tokio::test]
async fn two_hundred_concurrent_enqueues_share_few_requests_and_each_message_arrives_once() {
    let metadata = MetadataStub::start().await;
    let pubsub = PubSubStub::start_checking(&metadata).await;
    pubsub.set_delay(Duration::from_millis(20));
    let tasks = tasks(&stubbed(&pubsub, &metadata, &[])).await;

    let calls = (0..200).map(|n| {
        let tasks = tasks.clone();
        tokio::spawn(async move { tasks.enqueue(&demo::SLEEP, Kwargs(Sleep { ms: n, hold_db: false })).await })
    });
    let mut queued = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        queued.push(call.await.expect("joined").expect("published"));
    }

    let requests = pubsub.publish_requests();
    assert!(requests <= 20, "200 enqueues took {requests} publish requests");
    let published: Vec<TaskMessage> =
        pubsub.published().iter().map(|message| serde_json::from_slice(&message.data).expect("a message")).collect();
    let sent: BTreeSet<&str> = published.iter().map(|message| message.task_id.as_str()).collect();
    let returned: BTreeSet<&str> = queued.iter().map(|queued| queued.task_id()).collect();
    assert_eq!((published.len(), sent), (200, returned), "every message once");
    let ids: BTreeSet<&str> = queued.iter().filter_map(|queued| queued.message_id()).collect();
    assert_eq!(ids.len(), 200, "each caller got its own message id");
}

#[tokio::test]
async fn arguments_that_can_never_fit_and_unknown_tasks_are_refused_before_anything_is_written() {
    let db = TestDb::new().await;
    let metadata = MetadataStub::start().await;
    let pubsub = PubSubStub::start().await;
    let tasks = tasks(&stubbed(&pubsub, &metadata, &[("DATABASE_URL", db.url.clone())])).await;
    let kwargs = |value: serde_json::Value| CallArguments {
        kwargs: serde_json::from_value(value).unwrap(),
        ..Default::default()
    };

    let wrong = tasks.enqueue_json("flaky", kwargs(json!({"succeed_on": "two"})), Some("bad-1".into())).await;
    let EnqueueError::Arguments(error) = wrong.unwrap_err() else { panic!("not an argument error") };
    assert!(error.to_string().starts_with("kwargs do not fit the task: invalid type: string \"two\""), "{error}");
    let extra = CallArguments { args: vec![json!(1)], ..Default::default() };
    let error = tasks.enqueue_json("noop", extra, Some("bad-2".into())).await.unwrap_err();
    assert_eq!(error.to_string(), "args do not fit the task: the task takes no args, got [1]");
    let unknown = tasks.enqueue_json("nope", CallArguments::default(), None).await.unwrap_err();
    assert!(matches!(&unknown, EnqueueError::UnknownTask(unknown) if unknown.name == "nope"), "{unknown:?}");

    let huge = kwargs(json!({"ms": 1, "pad": "x".repeat(whirligig_handler::MAX_MESSAGE_BYTES)}));
    let error = tasks.enqueue_json("sleep", huge, Some("huge-1".into())).await.unwrap_err();
    assert!(matches!(error, EnqueueError::Publish(PublishError::TooLarge { .. })), "{error:?}");

    assert_eq!(pubsub.publish_requests(), 0);
    assert_eq!((db.row("bad-1").await, db.row("bad-2").await), (None, None));
    let huge = db.row("huge-1").await.expect("recorded READY, then refused");
    assert!(huge.error_message.is_some_and(|message| message.contains("over Pub/Sub's limit")));
}

#[tokio::test]
async fn the_immediate_backend_runs_the_task_at_enqueue_and_its_result_is_readable_at_once() {
    let tasks = tasks(&config(&[])).await;

    let flaky = tasks.enqueue(&demo::FLAKY, Kwargs(Flaky { succeed_on: 1 })).await.expect("ran");
    let echoed =
        tasks.enqueue(&demo::ECHO, Kwargs(serde_json::from_value(json!({"a": 1})).unwrap())).await.expect("ran");
    let failed = tasks.enqueue(&demo::FLAKY, Kwargs(Flaky { succeed_on: 5 })).await.expect("ran, and failed");

    assert_eq!(flaky.message_id(), None, "nothing was published");
    let result = |id: &str| {
        let tasks = tasks.clone();
        let id = id.to_owned();
        async move { tasks.result(&id).await.expect("read").expect("recorded") }
    };
    let row = result(flaky.task_id()).await;
    assert_eq!((row.status, row.return_value), (Status::Successful, Some(json!(1))));
    assert_eq!(result(echoed.task_id()).await.return_value, Some(json!({"a": 1})));
    let row = result(failed.task_id()).await;
    assert_eq!((row.status, row.error_message.as_deref()), (Status::Failed, Some("attempt 1 of 5 fails")));
    assert!(tasks.result("never-enqueued").await.expect("read").is_none());
}

/// `enqueue`'s first line: `{"task_id", "message_id"}`.
fn printed(stdout: &[u8]) -> serde_json::Value {
    let line = text(stdout).lines().next().unwrap_or_default().to_owned();
    serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line:?}"))
}

#[tokio::test]
async fn the_cli_enqueues_waits_and_reads_results_with_exit_codes_for_each_ending() {
    let db = TestDb::new().await;
    let env = [("DATABASE_URL", db.url.as_str())];

    let ok = run_app(&["enqueue", "flaky", "--kwargs", r#"{"succeed_on": 1}"#, "--wait=5"], &env).await;
    assert_exit(&ok, 0, "immediate, succeeded");
    let queued = printed(&ok.stdout);
    assert_eq!(queued["message_id"], serde_json::Value::Null, "the immediate backend publishes nothing");
    let task_id = queued["task_id"].as_str().expect("a task id").to_owned();
    assert!(text(&ok.stdout).contains(r#""status": "SUCCESSFUL""#), "{}", text(&ok.stdout));

    let result = run_app(&["result", &task_id], &env).await;
    assert_exit(&result, 0, "result of a success");
    let execution: serde_json::Value = serde_json::from_slice(&result.stdout).expect("JSON");
    assert_eq!((execution["status"].as_str(), execution["return_value"].as_u64()), (Some("SUCCESSFUL"), Some(1)));
    assert_eq!(execution["task_name"], "flaky");

    let failed = run_app(&["enqueue", "flaky", "--kwargs", r#"{"succeed_on": 9}"#, "--wait"], &env).await;
    assert_exit(&failed, 1, "immediate, failed");
    assert!(text(&failed.stdout).contains("attempt 1 of 9 fails"), "{}", text(&failed.stdout));

    assert_exit(&run_app(&["result", "never-enqueued"], &env).await, 1, "no such execution");
    assert_exit(&run_app(&["result", &task_id], &[]).await, 2, "result without a database");
    for (args, says) in [
        (&["enqueue", "nope"][..], "unknown task \"nope\""),
        (&["enqueue", "flaky", "--kwargs", r#"{"succeed_on": "x"}"#], "kwargs do not fit the task"),
        (&["enqueue", "noop", "--args", "{}"], "--args must be a JSON list"),
        (&["enqueue", "noop", "--kwargs", "{"], "--kwargs is not JSON"),
        (
            &["enqueue", "heartbeat", "--scheduled", "--task-id", "x"],
            "--scheduled publishes the schedule's own message",
        ),
    ] {
        let output = run_app(args, &env).await;
        assert_exit(&output, 2, &format!("{args:?}"));
        assert!(text(&output.stderr).contains(says), "{args:?}: {}", text(&output.stderr));
    }
}

#[tokio::test]
async fn the_cli_publishes_to_the_emulator_continuing_traceparent_and_a_failed_publish_is_exit_1() {
    let namespace = namespace();
    let config = emulated(&[("TASKS_NAMESPACE", namespace.clone())]);
    let (emulator, subscription) = pulling("noop", &config).await;
    let host = emulator_host();
    let env = [
        ("PUBSUB_EMULATOR_HOST", host.as_str()),
        ("TASKS_NAMESPACE", namespace.as_str()),
        ("GCP_PROJECT_ID", PROJECT),
        ("TRACEPARENT", TRACEPARENT),
    ];

    let output = run_app(&["enqueue", "noop", "--task-id", "cli-1"], &env).await;

    assert_exit(&output, 0, "published");
    let pulled = emulator.pull_exactly(&subscription, 1, Duration::from_secs(10)).await;
    assert_eq!(printed(&output.stdout), json!({"task_id": "cli-1", "message_id": pulled[0].message_id}));
    let traceparent = pulled[0].attributes.get("traceparent").expect("the trace goes on");
    assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{traceparent}");

    let missing = run_app(&["enqueue", "echo"], &env).await;
    assert_exit(&missing, 1, "a topic never provisioned");
    assert!(text(&missing.stderr).contains("NOT_FOUND"), "{}", text(&missing.stderr));
}
