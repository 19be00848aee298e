//! The web app's binary, spawned as a user runs it: its own page and
//! endpoints, whirligig's push endpoint and health checks on the same port,
//! and a clean exit on SIGTERM. No database and no emulator: dev, in memory.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

const BINARY: &str = env!("CARGO_BIN_EXE_axum-app");

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";

/// The binary in dev with nothing of the caller's environment that would
/// change it (a database, an emulator, another environment).
fn command() -> Command {
    let mut command = Command::new(BINARY);
    command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
}

/// The app on a free port, killed when dropped.
struct Serving {
    child: Child,
    address: SocketAddr,
}

impl Serving {
    fn start() -> Self {
        Self::start_with(Stdio::null())
    }

    fn start_with(stderr: Stdio) -> Self {
        let address = TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("a free port");
        let child = command().env("PORT", address.port().to_string()).stderr(stderr).spawn().expect("the app starts");
        let serving = Self { child, address };
        let deadline = Instant::now() + Duration::from_secs(30);
        while serving.request("GET", "/healthz", JSON, "").map(|(status, _)| status) != Some(200) {
            assert!(Instant::now() < deadline, "the app did not come up on {address}");
            std::thread::sleep(Duration::from_millis(50));
        }
        serving
    }

    /// One HTTP/1.1 request; the status and body, or none while nothing listens.
    fn request(&self, method: &str, path: &str, content_type: &str, body: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(self.address).ok()?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body.as_bytes())).ok()?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).ok()?;
        let status = reply.split(' ').nth(1)?.parse().ok()?;
        Some((status, reply.split_once("\r\n\r\n")?.1.to_owned()))
    }

    fn push(&self, path: &str, message: &str) -> Option<u16> {
        self.request("POST", path, JSON, &push(message)).map(|(status, _)| status)
    }

    /// Sends SIGTERM, as Cloud Run stops an instance; how it exited, if it did in time.
    fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(sent.success());
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("the child can be waited on") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A push as Pub/Sub sends it: the task message, base64, in the envelope.
fn push(message: &str) -> String {
    let data = base64::engine::general_purpose::STANDARD.encode(message);
    format!(r#"{{"message": {{"messageId": "1", "data": "{data}"}}, "subscription": "projects/p/subscriptions/s"}}"#)
}

#[test]
fn its_own_routes_and_whirligig_share_one_port() {
    let serving = Serving::start();
    let page = serving.request("GET", "/", JSON, "").expect("the page");
    assert_eq!(page.0, 200);
    assert!(page.1.contains(r#"<form method="post" action="/welcome">"#), "{}", page.1);
    assert_eq!(serving.request("GET", "/healthz", JSON, "").map(|(status, _)| status), Some(200));
    assert_eq!(serving.request("GET", "/readyz", JSON, "").map(|(status, _)| status), Some(200));
    assert_eq!(serving.request("GET", "/nowhere", JSON, "").map(|(status, _)| status), Some(404));

    let add = r#"{"task_id": "t1", "task_name": "add", "args": [2, 3]}"#;
    assert_eq!(serving.push("/tasks/pubsub/", add), Some(200));
    assert_eq!(serving.push("/tasks/pubsub", &add.replace("t1", "t2")), Some(200), "without the slash too");
    let unknown = r#"{"task_id": "t3", "task_name": "nope", "args": []}"#;
    assert_eq!(serving.push("/tasks/pubsub/", unknown), Some(400));
}

#[test]
fn the_form_enqueues_a_task_that_runs_at_once_in_dev() {
    let serving = Serving::start();
    let (status, task_id) = serving.request("POST", "/welcome", FORM, "to=ada%40example.com").expect("an answer");
    assert_eq!(status, 200, "{task_id}");
    assert_eq!(task_id.len(), 36, "a UUID: {task_id}");

    let (status, execution) = serving.request("GET", &format!("/welcome/{task_id}"), JSON, "").expect("the result");
    assert_eq!(status, 200, "{execution}");
    assert!(execution.contains(r#""status":"SUCCESSFUL""#), "{execution}");
    assert!(execution.contains("welcomed ada@example.com at example.com"), "{execution}");
    assert_eq!(serving.request("GET", "/welcome/unknown", JSON, "").map(|(status, _)| status), Some(404));
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let mut serving = Serving::start_with(Stdio::piped());
    let exited = serving.terminate(Duration::from_secs(5)).expect("it exits within 5 s of SIGTERM");
    assert!(exited.success(), "{exited}");
    let mut logs = String::new();
    serving.child.stderr.take().expect("stderr is piped").read_to_string(&mut logs).expect("logs");
    assert!(logs.contains("SIGTERM received") && logs.contains("stopped"), "{logs}");
}

#[test]
fn outside_dev_it_names_every_missing_setting_and_does_not_start() {
    let refused = command().env("TASKS_ENVIRONMENT", "prod").output().expect("the app runs");
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    for variable in ["GCP_PROJECT_ID", "CLOUD_RUN_SERVICE_URL", "TASKS_SERVICE_ACCOUNT", "DATABASE_URL"] {
        assert!(stderr.contains(&format!("{variable} is required")), "{stderr}");
    }
}
