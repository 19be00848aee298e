//! The real binary, as a user runs it: the test app spawned with a clean
//! environment, run to its end or served on a free port and killed on drop.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::{sleep, timeout};

/// The demo app, built by Cargo for this package.
pub const APP: &str = env!("CARGO_BIN_EXE_whirligig-test-app");

/// The longest any process may take to start, answer or exit.
pub const WAIT: Duration = Duration::from_secs(10);

/// The test app with nothing from the developer's environment but `PATH`.
pub fn app(env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(APP);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs the test app to the end with `args`, within [`WAIT`].
pub async fn run_app(args: &[&str], env: &[(&str, &str)]) -> Output {
    let output = app(env).args(args).output();
    timeout(WAIT, output).await.unwrap_or_else(|_| panic!("{args:?} did not exit within {WAIT:?}")).expect("spawn")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the exit code, showing stderr when it is not the expected one.
pub fn assert_exit(output: &Output, code: i32, what: &str) {
    assert_eq!(output.status.code(), Some(code), "{what}: stderr:\n{}", text(&output.stderr));
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral port");
    listener.local_addr().expect("bound address").port()
}

/// `whirligig serve` in a child process, killed when dropped. Its stdout and
/// stderr go to one file, so a chatty child can never block on a full pipe.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    /// Spawns `serve` on a free port and waits until `/healthz` answers.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        Self::start_on(free_port(), env).await
    }

    /// Spawns `serve` on `port`, chosen earlier (a push subscription points at it).
    pub async fn start_on(port: u16, env: &[(&str, &str)]) -> Self {
        Self::start_command("serve", port, env, WAIT).await
    }

    /// Spawns `command` (`serve` or `dev`) on `port` and waits up to `within` for `/healthz`.
    pub async fn start_command(command: &str, port: u16, env: &[(&str, &str)], within: Duration) -> Self {
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("process-{}.log", uuid::Uuid::new_v4()));
        let file = std::fs::File::create(&log).expect("create the log file");
        let child = app(env)
            .arg(command)
            .env("PORT", port.to_string())
            .stdout(file.try_clone().expect("share the log file"))
            .stderr(file)
            .spawn()
            .expect("spawn the test app");
        let mut server = Self { child, addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)), log };
        server.wait_ready(command, within).await;
        server
    }

    /// Polls until the port answers: process start cannot be awaited otherwise.
    async fn wait_ready(&mut self, command: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("child status") {
                panic!("{command} exited before it was ready ({status}); log:\n{}", self.log());
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                let health = timeout(deadline - tokio::time::Instant::now(), super::get(self.addr, "/healthz")).await;
                let health = health
                    .unwrap_or_else(|_| panic!("{command} did not answer within {within:?}; log:\n{}", self.log()));
                assert_eq!(health.status, 200, "{}", health.body);
                return;
            }
            sleep(Duration::from_millis(25)).await;
        }
        panic!("{command} did not listen on {} within {within:?}; log:\n{}", self.addr, self.log());
    }

    /// Waits up to `within` for the log to contain `text`.
    pub async fn wait_for_log(&self, text: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let log = self.log();
            if log.contains(text) {
                return log;
            }
            assert!(tokio::time::Instant::now() < deadline, "no {text:?} within {within:?} in:\n{log}");
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the server wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The JSON log lines (production format), parsed.
    pub fn json_log(&self) -> Vec<serde_json::Value> {
        self.log().lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
    }

    /// The first JSON log line with this message, or a panic showing the log.
    pub fn logged(&self, message: &str) -> serde_json::Value {
        let lines = self.json_log();
        let found = lines.iter().find(|line| line["message"].as_str().is_some_and(|text| text.contains(message)));
        found.cloned().unwrap_or_else(|| panic!("no {message:?} line in:\n{}", self.log()))
    }

    /// Sends SIGTERM, as Cloud Run does to stop an instance.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("the child is still running");
        let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// The exit status, within [`WAIT`].
    pub async fn exit(&mut self) -> ExitStatus {
        match timeout(WAIT, self.child.wait()).await {
            Ok(status) => status.expect("wait for the child"),
            Err(_) => panic!("serve did not exit within {WAIT:?} of SIGTERM; log:\n{}", self.log()),
        }
    }

    pub async fn push(&self, body: String) -> super::Reply {
        super::post(self.addr, "/tasks/pubsub/", body).await
    }

    pub async fn push_as(&self, authorization: &str, body: String) -> super::Reply {
        super::post_as(self.addr, "/tasks/pubsub/", Some(authorization), body).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}
