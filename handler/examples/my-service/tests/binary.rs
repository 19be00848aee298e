//! The service's own binary, spawned as a user runs it: it serves a push of
//! its tasks, runs one as a job printing the result, and reports itself
//! under its own name. No database and no emulator: dev, in memory.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

const BINARY: &str = env!("CARGO_BIN_EXE_my-service");

/// The binary in dev with nothing of the caller's environment that would
/// change it (a database, an emulator, another environment).
fn command(args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command.args(args).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
}

fn run(args: &[&str]) -> Output {
    command(args).output().expect("the binary runs")
}

/// A server on a free port, killed when dropped.
struct Serving {
    child: Child,
    address: SocketAddr,
}

impl Serving {
    fn start() -> Self {
        let address = TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("a free port");
        let port = address.port().to_string();
        let child = command(&["serve"]).env("PORT", &port).stderr(Stdio::null()).spawn().expect("serve starts");
        let serving = Self { child, address };
        let deadline = Instant::now() + Duration::from_secs(30);
        while serving.request("GET", "/healthz", "").map(|(status, _)| status) != Some(200) {
            assert!(Instant::now() < deadline, "the server did not come up on {address}");
            std::thread::sleep(Duration::from_millis(50));
        }
        serving
    }

    /// One HTTP/1.1 request; the status and body, or none while nothing listens.
    fn request(&self, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(self.address).ok()?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body.as_bytes())).ok()?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).ok()?;
        let status = reply.split(' ').nth(1)?.parse().ok()?;
        Some((status, reply.split_once("\r\n\r\n")?.1.to_owned()))
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
fn it_serves_a_push_of_its_own_tasks() {
    let serving = Serving::start();
    let ran =
        serving.request("POST", "/tasks/pubsub/", &push(r#"{"task_id": "t1", "task_name": "add", "args": [2, 3]}"#));
    assert_eq!(ran.map(|(status, _)| status), Some(200));
    let bad = r#"{"task_id": "t2", "task_name": "send_welcome_email", "kwargs": {"to": "nobody"}}"#;
    let refused = serving.request("POST", "/tasks/pubsub/", &push(bad));
    assert_eq!(refused.map(|(status, _)| status), Some(400), "a permanent failure is answered 400");
}

#[test]
fn run_prints_the_result_or_one_line_saying_why_not() {
    let added = run(&["run", "add", "--args", "[2, 3]"]);
    assert_eq!((added.status.code(), String::from_utf8_lossy(&added.stdout).as_ref()), (Some(0), "5\n"));

    let overflow = run(&["run", "add", "--args", "[9223372036854775807, 1]"]);
    assert_eq!(overflow.status.code(), Some(1));
    assert!(overflow.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&overflow.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("my-service: task add (") && last.ends_with("failed for good: the sum overflows"),
        "{last}"
    );

    let typo = run(&["run", "ad"]);
    assert_eq!(typo.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&typo.stderr), "my-service: unknown task \"ad\": did you mean \"add\"?\n");
}

#[test]
fn it_calls_itself_by_its_own_name() {
    let version = run(&["--version"]);
    assert_eq!(String::from_utf8_lossy(&version.stdout), "my-service 0.1.0\n");
    let help = String::from_utf8_lossy(&run(&["--help"]).stdout).into_owned();
    assert!(help.contains("Usage: my-service [COMMAND]"), "{help}");
}

#[test]
fn routes_needs_no_database_outside_dev() {
    let routes = command(&["routes"]).env("TASKS_ENVIRONMENT", "prod").output().expect("routes runs");
    assert_eq!(routes.status.code(), Some(0), "{}", String::from_utf8_lossy(&routes.stderr));
    let table = String::from_utf8_lossy(&routes.stdout);
    assert!(table.contains("prod--gyrinx.tasks--my_service.tasks.send_welcome_email"), "{table}");
}
