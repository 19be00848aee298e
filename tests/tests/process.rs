//! The real binary as Cloud Run runs it: the test app is spawned with a clean
//! environment, stopped with SIGTERM, and judged by its exit codes, HTTP
//! answers, database rows and log lines.

mod support;

use std::time::Duration;

use serde_json::json;
use tokio::time::{sleep, timeout};

use support::TestDb;
use support::issuer::{self, Issuer, Key};
use support::otlp::{Receiver, hex};
use support::process::{Server, WAIT, assert_exit, run_app, text};
use whirligig_handler::store::Status;

/// A database that refuses every connection.
const UNREACHABLE_DATABASE: &str = "postgres://postgres@127.0.0.1:1/postgres";

/// A production-like server's environment: tokens verified against `issuer`.
struct Verified {
    issuer: Issuer,
    key: Key,
    vars: Vec<(&'static str, String)>,
}

impl Verified {
    async fn new(database_url: &str) -> Verified {
        let key = Key::generated(0);
        let issuer = Issuer::start(&key).await;
        let mut vars: Vec<(&'static str, String)> =
            prod(database_url).into_iter().map(|(name, value)| (name, value.to_owned())).collect();
        vars.extend([
            ("TASKS_OIDC_ISSUER", issuer.url()),
            ("TASKS_OIDC_JWKS_URL", issuer.jwks_url()),
            ("TASKS_OIDC_AUDIENCE", issuer::AUDIENCE.to_owned()),
            ("TASKS_SERVICE_ACCOUNT", issuer::SERVICE_ACCOUNT.to_owned()),
        ]);
        Verified { issuer, key, vars }
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.vars.iter().map(|(name, value)| (*name, value.as_str())).collect()
    }

    fn authorization(&self) -> String {
        format!("Bearer {}", self.issuer.token(&self.key))
    }
}

/// Everything a production-like run needs, on `database_url`.
fn prod(database_url: &str) -> Vec<(&'static str, &str)> {
    vec![
        ("TASKS_ENVIRONMENT", "prod"),
        ("GCP_PROJECT_ID", "whirligig-test"),
        ("CLOUD_RUN_SERVICE_URL", "https://whirligig-test-abc123-nw.a.run.app"),
        ("TASKS_SERVICE_ACCOUNT", "tasks@whirligig-test.iam.gserviceaccount.com"),
        ("DATABASE_URL", database_url),
    ]
}

/// Waits until `task_id`'s row has `status`, polling the database.

#[tokio::test]
async fn sigterm_lets_the_task_in_flight_finish_and_exits_zero() {
    let db = TestDb::new().await;
    let verified = Verified::new(&db.url).await;
    let mut server = Server::start(&verified.env()).await;
    let (addr, authorization) = (server.addr, verified.authorization());
    let body = support::task("in-flight", "sleep", json!({"ms": 1500}));
    let in_flight =
        tokio::spawn(async move { support::post_as(addr, "/tasks/pubsub/", Some(&authorization), body).await });
    db.wait_for("in-flight", Status::Running).await;

    server.terminate();
    let reply = timeout(WAIT, in_flight).await.expect("the in-flight push is answered").expect("the push task");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let status = server.exit().await;
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    assert!(server.log().contains("SIGTERM received"), "{}", server.log());

    let row = db.row("in-flight").await.expect("the row");
    assert_eq!((row.status, row.attempts, row.error_message), (Status::Successful, 1, None));
    assert_eq!(row.return_value, Some(json!(1500)));
}

#[tokio::test]
async fn run_exits_0_on_success_1_on_failure_and_2_on_bad_usage() {
    let db = TestDb::new().await;
    let env = prod(&db.url);

    let output = run_app(&["run", "noop", "--task-id", "job-ok"], &env).await;
    assert_exit(&output, 0, "run noop");
    assert_eq!(db.row("job-ok").await.expect("row job-ok").status, Status::Successful);

    let output = run_app(&["run", "fail", "--task-id", "job-fail"], &env).await;
    assert_exit(&output, 1, "run fail");
    let row = db.row("job-fail").await.expect("row job-fail");
    assert_eq!(row.status, Status::Failed);
    assert!(row.error_message.is_some_and(|error| error.contains("always fails")));

    let output = run_app(&["run", "nosuch"], &env).await;
    assert_exit(&output, 2, "run nosuch");
    assert!(text(&output.stderr).contains("unknown task"), "{}", text(&output.stderr));

    let output = run_app(&["run", "noop", "--args", "notjson"], &env).await;
    assert_exit(&output, 2, "run noop --args notjson");
    assert!(text(&output.stderr).contains("--args (TASK_ARGS) is not JSON"), "{}", text(&output.stderr));

    let output = run_app(&["run", "sleep", "--kwargs", r#"{"ms": "x"}"#, "--task-id", "job-misfit"], &env).await;
    assert_exit(&output, 2, "run sleep with arguments that do not fit");
    assert_eq!(db.row("job-misfit").await.expect("row job-misfit").status, Status::Failed);

    let mut bad_index = env.clone();
    bad_index.push(("CLOUD_RUN_TASK_INDEX", "three"));
    let output = run_app(&["run", "noop", "--task-id", "job-bad-index"], &bad_index).await;
    assert_exit(&output, 2, "run with a CLOUD_RUN_TASK_INDEX that is not a number");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("CLOUD_RUN_TASK_INDEX=\"three\" is not a valid value"), "{stderr}");
    assert!(db.row("job-bad-index").await.is_none(), "a configuration error runs nothing");

    let mut job_env = env.clone();
    job_env.extend([("CLOUD_RUN_EXECUTION", "exec-abc"), ("CLOUD_RUN_TASK_INDEX", "3")]);
    let output = run_app(&["run", "noop"], &job_env).await;
    assert_exit(&output, 0, "run noop as Cloud Run job task 3");
    assert_eq!(db.row("exec-abc-3").await.expect("row exec-abc-3").status, Status::Successful);
}

/// `env` without `TASK_KWARGS`, for a task that takes none.
fn sharded_env_with<'a>(env: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    env.iter().copied().filter(|(name, _)| *name != "TASK_KWARGS").collect()
}

#[tokio::test]
async fn a_job_takes_its_arguments_from_task_args_and_task_kwargs_and_knows_its_shard() {
    let db = TestDb::new().await;
    let mut env = prod(&db.url);
    env.extend([("TASK_KWARGS", r#"{"from": "the job's overrides"}"#), ("CLOUD_RUN_EXECUTION", "exec-env")]);
    env.extend([("CLOUD_RUN_TASK_INDEX", "2"), ("CLOUD_RUN_TASK_COUNT", "5")]);

    let output = run_app(&["run", "echo"], &env).await;
    assert_exit(&output, 0, "run echo with TASK_KWARGS");
    let row = db.row("exec-env-2").await.expect("the job's row");
    assert_eq!(row.return_value, Some(json!({"from": "the job's overrides"})));

    // A flag on the command line wins over the variable.
    let flagged = ["run", "echo", "--kwargs", r#"{"from": "the flag"}"#, "--task-id", "flagged"];
    assert_exit(&run_app(&flagged, &env).await, 0, "run echo --kwargs");
    assert_eq!(db.row("flagged").await.expect("row flagged").return_value, Some(json!({"from": "the flag"})));

    let output = run_app(&["run", "shard", "--task-id", "sharded"], &sharded_env_with(&env)).await;
    assert_exit(&output, 0, "run shard");
    let row = db.row("sharded").await.expect("the shard's row");
    assert_eq!(row.return_value, Some(json!({"index": 2, "count": 5, "attempt": 0})));

    // Empty is unset, as for every variable.
    env.push(("TASK_ARGS", ""));
    assert_exit(
        &run_app(&["run", "noop", "--task-id", "empty-args"], &sharded_env_with(&env)).await,
        0,
        "empty TASK_ARGS",
    );
    env.pop();
    env.push(("TASK_ARGS", "[1,"));
    let output = run_app(&["run", "noop", "--task-id", "never"], &env).await;
    assert_exit(&output, 2, "run with TASK_ARGS that is not JSON");
    assert!(text(&output.stderr).contains("TASK_ARGS"), "{}", text(&output.stderr));
    assert!(db.row("never").await.is_none(), "a usage error touches nothing");
}

#[tokio::test]
async fn a_retried_job_attempt_takes_over_from_the_dead_one() {
    let db = TestDb::new().await;
    // Attempt 0 was killed mid-run: its row is RUNNING with a fresh lease.
    let client = db.client().await;
    client
        .execute(
            "insert into task_executions (task_id, task_name, status, attempts, started_at)
             values ('exec-dead-0', 'noop', 'RUNNING', 1, now())",
            &[],
        )
        .await
        .expect("insert the dead attempt's row");
    let mut env = prod(&db.url);
    env.extend([("CLOUD_RUN_EXECUTION", "exec-dead"), ("CLOUD_RUN_TASK_INDEX", "0")]);

    let mut first_try = env.clone();
    first_try.push(("CLOUD_RUN_TASK_ATTEMPT", "0"));
    let output = run_app(&["run", "noop"], &first_try).await;
    assert_exit(&output, 1, "attempt 0 again: the lease is someone else's");

    env.push(("CLOUD_RUN_TASK_ATTEMPT", "1"));
    let output = run_app(&["run", "noop"], &env).await;
    assert_exit(&output, 0, "Cloud Run's retry");
    let row = db.row("exec-dead-0").await.expect("the job's row");
    assert_eq!((row.status, row.attempts), (Status::Successful, 2));
}

#[tokio::test]
async fn a_busy_pool_is_answered_429_and_the_log_names_the_cause() {
    let db = TestDb::new().await;
    let verified = Verified::new(&db.url).await;
    let mut env = verified.env();
    env.extend([("DATABASE_POOL_SIZE", "1"), ("DATABASE_POOL_TIMEOUT_MS", "200")]);
    let server = Server::start(&env).await;
    let (addr, authorization) = (server.addr, verified.authorization());
    let holder = {
        let (authorization, body) =
            (authorization.clone(), support::task("holder", "sleep", json!({"ms": 1500, "hold_db": true})));
        tokio::spawn(async move { support::post_as(addr, "/tasks/pubsub/", Some(&authorization), body).await })
    };
    db.wait_for("holder", Status::Running).await;
    // The holder's claim connection has just gone back to the pool for its task to take.
    sleep(Duration::from_millis(100)).await;
    let busy = server.push_as(&authorization, support::task("busy", "noop", json!({}))).await;
    assert_eq!((busy.status, busy.body.as_str()), (429, "database at capacity; retry"));
    assert_eq!(timeout(WAIT, holder).await.expect("answered").expect("the push task").status, 200);
    let line = server.logged("the store could not serve this delivery");
    assert_eq!(line["whirligig.task.id"], "busy", "{line}");
    assert_eq!(line["severity"], "WARNING", "{line}");
    assert!(line["error"].as_str().is_some_and(|error| error.contains("no database connection free within 200ms")));
}

#[tokio::test]
async fn unauthenticated_pushes_to_a_production_server_are_refused() {
    let db = TestDb::new().await;
    let verified = Verified::new(&db.url).await;
    let server = Server::start(&verified.env()).await;
    let reply = server.push(support::task("anonymous", "noop", json!({}))).await;
    assert_eq!((reply.status, reply.body.as_str()), (403, "forbidden"));
    assert!(db.row("anonymous").await.is_none());
    let line = server.logged("push rejected");
    assert_eq!(line["failed_check"], "authorization header present", "{line}");
}

#[tokio::test]
async fn an_eventarc_trigger_at_the_root_is_verified_like_a_push() {
    let db = TestDb::new().await;
    let verified = Verified::new(&db.url).await;
    let server = Server::start(&verified.env()).await;
    let payload = r#"{"task_id": "evented", "task_name": "noop", "args": [], "kwargs": {}}"#;

    let anonymous = support::cloud_event_binary("/", payload, "ev-1");
    assert_eq!(support::request(server.addr, anonymous).await.status, 403);
    assert!(db.row("evented").await.is_none());

    let mut signed = support::cloud_event_binary("/", payload, "ev-1");
    signed.headers_mut().insert("authorization", verified.authorization().parse().expect("a header value"));
    let reply = support::request(server.addr, signed).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(db.row("evented").await.expect("the row").status, Status::Successful);
}

#[tokio::test]
async fn tasks_auth_none_outside_dev_refuses_to_start() {
    let db = TestDb::new().await;
    let mut env = prod(&db.url);
    env.push(("TASKS_AUTH", "none"));
    let output = run_app(&["serve"], &env).await;
    assert_exit(&output, 2, "serve with TASKS_AUTH=none in prod");
    assert!(text(&output.stderr).contains("TASKS_AUTH=none is allowed only"), "{}", text(&output.stderr));
}

#[tokio::test]
async fn outside_dev_serve_names_every_missing_variable_and_exits_2() {
    let output = run_app(&["serve"], &[("TASKS_ENVIRONMENT", "prod")]).await;
    assert_exit(&output, 2, "serve with nothing set");
    let stderr = text(&output.stderr);
    for name in ["GCP_PROJECT_ID", "CLOUD_RUN_SERVICE_URL", "TASKS_SERVICE_ACCOUNT", "DATABASE_URL"] {
        assert!(stderr.contains(name), "{name} not named in:\n{stderr}");
    }

    // DATABASE_URL set with a password, the others missing: the password stays out of the message.
    let secret = "hunter2-s3cret";
    let url = format!("postgres://postgres:{secret}@127.0.0.1:5432/postgres");
    let output = run_app(&["serve"], &[("TASKS_ENVIRONMENT", "prod"), ("DATABASE_URL", &url)]).await;
    assert_exit(&output, 2, "serve with only DATABASE_URL set");
    let stderr = text(&output.stderr);
    for name in ["GCP_PROJECT_ID", "CLOUD_RUN_SERVICE_URL", "TASKS_SERVICE_ACCOUNT"] {
        assert!(stderr.contains(name), "{name} not named in:\n{stderr}");
    }
    assert!(!stderr.contains("DATABASE_URL is required"), "{stderr}");
    assert!(!stderr.contains(secret), "the password leaked:\n{stderr}");
}

#[tokio::test]
async fn the_kill_switch_records_a_skip_and_acknowledges() {
    let db = TestDb::new().await;
    let verified = Verified::new(&db.url).await;
    let on_env = verified.env();
    let mut off_env = on_env.clone();
    off_env.push(("ENABLE_HEARTBEAT", "off"));
    let (off, on) = tokio::join!(Server::start(&off_env), Server::start(&on_env));
    let payload = r#"{"task_id": "scheduled-heartbeat", "task_name": "heartbeat", "args": [], "kwargs": {}}"#;

    let authorization = verified.authorization();
    let reply = off.push_as(&authorization, support::envelope(payload, "1001")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let row = db.row("scheduled-heartbeat-1001").await.expect("the skipped row");
    assert_eq!((row.status, row.attempts), (Status::Failed, 0), "skipped, never claimed");
    let error = row.error_message.expect("an error message");
    assert!(error.contains("kill switch") && error.contains("ENABLE_HEARTBEAT"), "{error}");
    let line = off.logged("kill switch off");
    assert_eq!(line["whirligig.task.id"], "scheduled-heartbeat-1001", "{line}");
    assert_eq!(line["whirligig.task.outcome"], "skipped", "{line}");

    let reply = on.push_as(&authorization, support::envelope(payload, "1002")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let row = db.row("scheduled-heartbeat-1002").await.expect("the run row");
    assert_eq!((row.status, row.attempts), (Status::Successful, 1));
}

#[tokio::test]
async fn dev_without_a_database_serves_from_memory_and_says_so() {
    let mut server = Server::start(&[]).await;
    assert_eq!(support::get(server.addr, "/healthz").await.status, 200);
    assert_eq!(support::get(server.addr, "/readyz").await.status, 200);
    let reply = server.push(support::task("dev-echo", "echo", json!({"hello": "world"}))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(server.log().contains("NOT persisted"), "no warning in:\n{}", server.log());

    server.terminate();
    let status = server.exit().await;
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
}

#[tokio::test]
async fn routes_lists_topics_and_scheduler_jobs() {
    let output = run_app(&["routes"], &[]).await;
    assert_exit(&output, 0, "routes");
    let stdout = text(&output.stdout);
    assert!(stdout.contains("dev--gyrinx.tasks--whirligig_handler.demo.noop"), "{stdout}");
    assert!(stdout.contains("dev--gyrinx-scheduler--whirligig_handler-demo-heartbeat"), "{stdout}");
}

#[tokio::test]
async fn migrate_twice_applies_once_then_nothing() {
    let db = TestDb::new().await;
    // Back to an empty schema, so the first run has something to apply.
    db.client()
        .await
        .batch_execute("drop table task_executions, whirligig_migrations")
        .await
        .expect("empty the schema");
    let env = [("DATABASE_URL", db.url.as_str())];

    let first = run_app(&["migrate"], &env).await;
    assert_exit(&first, 0, "first migrate");
    assert!(!text(&first.stdout).starts_with("0 migration"), "{}", text(&first.stdout));
    let second = run_app(&["migrate"], &env).await;
    assert_exit(&second, 0, "second migrate");
    assert!(text(&second.stdout).starts_with("0 migration(s) applied"), "{}", text(&second.stdout));
    assert!(db.row("none").await.is_none(), "task_executions exists again");
}

#[tokio::test]
async fn an_unreachable_database_at_start_is_not_ready_but_serving() {
    let mut server = Server::start(&prod(UNREACHABLE_DATABASE)).await;
    assert_eq!(support::get(server.addr, "/healthz").await.status, 200, "it listens");
    let ready = support::get(server.addr, "/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    server.wait_for_log("the database is not there yet", WAIT).await;
    server.terminate();
    assert!(server.exit().await.success(), "a clean exit: {}", server.log());
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// OTLP export to `receiver`, batched for a minute: only a flush sends early.
fn exporting_to(receiver: &Receiver) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_TRACES_EXPORTER", "otlp".to_owned()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "60000".to_owned()),
    ]
}

#[tokio::test]
async fn spans_reach_an_otlp_collector_and_the_last_are_flushed_on_sigterm() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let verified = Verified::new(&db.url).await;
    let exporting = exporting_to(&receiver);
    let mut env = verified.env();
    env.extend(exporting.iter().map(|(name, value)| (*name, value.as_str())));
    env.extend([("K_SERVICE", "tasks"), ("K_REVISION", "tasks-00007-xyz"), ("ENABLE_HEARTBEAT", "off")]);
    let mut server = Server::start(&env).await;
    let authorization = verified.authorization();

    let traced = support::task_with_attributes("exported", "echo", json!({"traceparent": TRACEPARENT}));
    assert_eq!(server.push_as(&authorization, traced).await.status, 200);
    let heartbeat = r#"{"task_id": "scheduled-heartbeat", "task_name": "heartbeat", "args": [], "kwargs": {}}"#;
    assert_eq!(server.push_as(&authorization, support::envelope(heartbeat, "2001")).await.status, 200);
    assert_eq!(receiver.requests(), 0, "spans are batched, not sent per request");

    server.terminate();
    assert_eq!(server.exit().await.code(), Some(0), "log:\n{}", server.log());
    let spans = receiver.spans();
    let named = |name: &str| {
        spans.iter().find(|span| span.span.name == name).unwrap_or_else(|| {
            panic!("no span {name:?} among {:?}", spans.iter().map(|span| &span.span.name).collect::<Vec<_>>())
        })
    };
    let echo = named("echo process");
    assert_eq!(echo.trace_id(), TRACE_ID, "the trace from the enqueue goes on");
    assert_eq!(echo.attribute("whirligig.task.outcome"), Some("succeeded"));
    assert_eq!(echo.resource.get("service.name").map(String::as_str), Some("tasks"));
    assert_eq!(echo.resource.get("faas.version").map(String::as_str), Some("tasks-00007-xyz"));
    assert_eq!(echo.resource.get("cloud.account.id").map(String::as_str), Some("whirligig-test"));
    assert_eq!(named("heartbeat process").attribute("whirligig.task.outcome"), Some("skipped"));
    let claim = named("INSERT task_executions");
    assert_eq!(claim.span.parent_span_id, echo.span.span_id, "{claim:?}");
    named("UPDATE task_executions");
    named("POST /tasks/pubsub/");

    // The log line of the outcome links to the same trace and span.
    let line = server.logged("task succeeded");
    assert_eq!(line["logging.googleapis.com/trace"], format!("projects/whirligig-test/traces/{TRACE_ID}"));
    assert_eq!(line["logging.googleapis.com/spanId"], hex(&echo.span.span_id));
}

#[tokio::test]
async fn a_job_exports_its_span_under_the_traceparent_variable_before_it_exits() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let exporting = exporting_to(&receiver);
    let mut env = prod(&db.url);
    env.extend(exporting.iter().map(|(name, value)| (*name, value.as_str())));
    env.extend([
        ("TRACEPARENT", TRACEPARENT),
        ("CLOUD_RUN_JOB", "nightly"),
        ("CLOUD_RUN_EXECUTION", "nightly-x7"),
        ("CLOUD_RUN_TASK_INDEX", "0"),
    ]);
    let output = run_app(&["run", "fail"], &env).await;
    assert_exit(&output, 1, "run fail");

    let spans = receiver.spans();
    let job = spans.iter().find(|span| span.span.name == "fail process").expect("the job's span");
    assert_eq!(job.trace_id(), TRACE_ID);
    assert_eq!(hex(&job.span.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(job.attribute("whirligig.task.id"), Some("nightly-x7-0"));
    assert_eq!(job.attribute("error.type"), Some("task_error"));
    assert_eq!(job.resource.get("service.name").map(String::as_str), Some("nightly"));
    assert_eq!(job.resource.get("gcp.cloud_run.job.execution").map(String::as_str), Some("nightly-x7"));
    let status = job.span.status.as_ref().expect("a status");
    assert!(status.message.contains("always fails"), "{status:?}");
}

#[tokio::test]
async fn a_collector_that_never_answers_does_not_hold_up_shutdown() {
    let db = TestDb::new().await;
    let verified = Verified::new(&db.url).await;
    let collector = Receiver::hanging().await;
    let mut env = verified.env();
    env.extend([("OTEL_EXPORTER_OTLP_ENDPOINT", collector.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "60000")]);
    let mut server = Server::start(&env).await;
    assert_eq!(server.push_as(&verified.authorization(), support::task("hung", "echo", json!({}))).await.status, 200);

    server.terminate();
    let stopping = std::time::Instant::now();
    assert_eq!(server.exit().await.code(), Some(0), "log:\n{}", server.log());
    // Cloud Run kills at 10 s; the flush gives up at 1.5 s, whatever the collector does.
    assert!(stopping.elapsed() < Duration::from_secs(5), "took {:?} to stop", stopping.elapsed());
    let line = server.logged("spans not flushed");
    assert_eq!(line["severity"], "WARNING", "{line}");
}
