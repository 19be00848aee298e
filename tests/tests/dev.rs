//! `whirligig dev`, the real binary as a newcomer runs it: against the
//! Pub/Sub emulator (the suite's, or one it starts itself), an enqueue from
//! another process goes through Pub/Sub to the dev server and is recorded;
//! without an emulator, tasks run at once. Dev cron's timing is unit tested
//! under a paused clock (handler/src/dev/cron.rs).

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::TestDb;
use support::emulator::emulator_host;
use support::process::{Server, assert_exit, free_port, run_app, text};
use whirligig_handler::store::Status;

/// Starting a JVM on a busy two-core machine takes seconds; a dev that took
/// this long would be broken.
const START: Duration = Duration::from_secs(60);

/// A namespace and an emulator project of this test's own.
fn isolated() -> (String, String) {
    let namespace = format!("d{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let project = format!("whirligig-{namespace}");
    (namespace, project)
}

#[tokio::test]
async fn an_enqueue_goes_through_the_emulator_to_the_dev_server_and_is_recorded() {
    let db = TestDb::new().await;
    let (namespace, project) = isolated();
    let (host, port) = (emulator_host(), free_port());
    let env = [
        ("PUBSUB_EMULATOR_HOST", host.as_str()),
        ("GCP_PROJECT_ID", project.as_str()),
        ("TASKS_NAMESPACE", namespace.as_str()),
        ("DATABASE_URL", db.url.as_str()),
    ];
    let mut dev = Server::start_command("dev", port, &env, START).await;
    let log = dev.log();
    // Already running under scripts/test.sh; started by dev when the suite runs alone.
    assert!(log.contains(&format!("Pub/Sub emulator on {host} (")), "{log}");
    let pushes = format!("pushing to http://localhost:{port}/tasks/pubsub/: 20 written, 0 unchanged");
    assert!(log.contains(&pushes), "{log}");

    let enqueued =
        run_app(&["enqueue", "echo", "--kwargs", r#"{"hello": "world"}"#, "--task-id", "dev-echo"], &env).await;
    assert_exit(&enqueued, 0, "enqueue echo");
    let row = db.wait_within("dev-echo", Status::Successful, START).await;
    assert_eq!(row.return_value, Some(json!({"hello": "world"})));
    dev.wait_for_log("returned result=", Duration::from_secs(5)).await;

    // Redelivered by the emulator after the route's retry delay (1 s), not by anything of ours.
    let flaky =
        run_app(&["enqueue", "flaky", "--kwargs", r#"{"succeed_on": 2}"#, "--task-id", "dev-flaky"], &env).await;
    assert_exit(&flaky, 0, "enqueue flaky");
    let row = db.wait_within("dev-flaky", Status::Successful, START).await;
    assert_eq!((row.attempts, row.return_value), (2, Some(json!(2))));

    dev.terminate();
    assert_eq!(dev.exit().await.code(), Some(0), "{}", dev.log());
    assert!(
        support::emulator::Emulator::in_project(&project)
            .topic_in(&project, &format!("dev--{namespace}.tasks--whirligig_handler.demo.echo"))
            .await
            .is_some(),
        "the suite's emulator is left running, with what dev provisioned"
    );
}

#[tokio::test]
async fn dev_starts_an_emulator_where_none_answers_and_stops_it_on_exit() {
    let (namespace, _) = isolated();
    let (emulator_port, port) = (free_port(), free_port());
    let host = format!("127.0.0.1:{emulator_port}");
    let env = [("PUBSUB_EMULATOR_HOST", host.as_str()), ("TASKS_NAMESPACE", namespace.as_str())];
    let mut dev = Server::start_command("dev", port, &env, START).await;
    let log = dev.log();
    assert!(log.contains(&format!("Pub/Sub emulator on {host} (started here")), "{log}");
    assert!(log.contains("DATABASE_URL is not set"), "memory without a database: {log}");

    let enqueued =
        run_app(&["enqueue", "echo", "--kwargs", r#"{"from": "another shell"}"#, "--task-id", "dev-own"], &env).await;
    assert_exit(&enqueued, 0, "enqueue echo");
    let log = dev.wait_for_log("task succeeded", START).await;
    assert!(log.contains(r#"whirligig.task.id="dev-own""#), "{log}");

    dev.terminate();
    assert_eq!(dev.exit().await.code(), Some(0), "{}", dev.log());
    assert!(tokio::net::TcpStream::connect(&host).await.is_err(), "the emulator dev started still listens on {host}");
}

#[tokio::test]
async fn without_an_emulator_dev_says_so_and_tasks_run_at_once() {
    let db = TestDb::new().await;
    let (namespace, _) = isolated();
    let env =
        [("TASKS_BACKEND", "immediate"), ("TASKS_NAMESPACE", namespace.as_str()), ("DATABASE_URL", db.url.as_str())];
    let mut dev = Server::start_command("dev", free_port(), &env, START).await;
    let log = dev.log();
    assert!(log.contains("no Pub/Sub emulator (TASKS_BACKEND=immediate): scheduled routes run in this process, and an enqueue runs in \
             the enqueuing one"), "{log}");
    assert!(!log.contains("provisioned"), "{log}");

    let enqueued = run_app(&["enqueue", "echo", "--kwargs", "{}", "--task-id", "dev-now", "--wait"], &env).await;
    assert_exit(&enqueued, 0, "enqueue echo --wait");
    assert!(
        text(&enqueued.stdout).contains(r#""status": "SUCCESSFUL""#)
            || text(&enqueued.stdout).contains(r#""status":"SUCCESSFUL""#),
        "{}",
        text(&enqueued.stdout)
    );
    assert_eq!(db.row("dev-now").await.unwrap().status, Status::Successful);

    let pushed = dev.push(support::task("dev-push", "echo", json!({"pushed": true}))).await;
    assert_eq!(pushed.status, 200, "{}", pushed.body);
    dev.terminate();
    assert_eq!(dev.exit().await.code(), Some(0));
}

#[tokio::test]
async fn dev_is_refused_outside_the_dev_environment() {
    let output = run_app(&["dev"], &[("TASKS_ENVIRONMENT", "prod")]).await;
    assert_exit(&output, 2, "dev in prod");
    assert_eq!(
        text(&output.stderr),
        "whirligig-test-app: dev runs only where TASKS_ENVIRONMENT is dev, not \"prod\"\n"
    );
}

#[tokio::test]
async fn a_signal_while_the_emulator_starts_stops_dev_and_the_emulator() {
    let (namespace, _) = isolated();
    let emulator_port = free_port();
    let host = format!("127.0.0.1:{emulator_port}");
    let env = [("PUBSUB_EMULATOR_HOST", host.as_str()), ("TASKS_NAMESPACE", namespace.as_str())];
    let dev = support::process::app(&env)
        .arg("dev")
        .env("PORT", free_port().to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The emulator's log appears when its JVM is spawned, a second or more before it answers.
    let log = std::env::temp_dir().join(format!("whirligig-pubsub-emulator-{emulator_port}.log"));
    let spawned = tokio::time::Instant::now();
    while !log.exists() {
        assert!(spawned.elapsed() < START, "the emulator was never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = dev.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let output = tokio::time::timeout(START, dev.wait_with_output()).await.unwrap().unwrap();
    assert_exit(&output, 0, "dev stopped while its emulator started");
    assert!(text(&output.stderr).contains("stopped before serving"), "{}", text(&output.stderr));
    // A JVM left behind would answer within seconds; none comes up.
    for _ in 0..30 {
        assert!(tokio::net::TcpStream::connect(&host).await.is_err(), "the emulator dev was starting came up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
