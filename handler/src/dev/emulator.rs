//! The Pub/Sub emulator `whirligig dev` publishes to: one already answering is
//! reused, and one on a loopback address is started from an installed launcher
//! (on PATH, or in gcloud's SDK) and stopped on exit. It never starts one on
//! another host, and never installs one.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::process::{Child, Command};

use crate::config::EMULATOR_PROJECT;

/// Where the emulator is looked for, and started, when `PUBSUB_EMULATOR_HOST` is unset.
const DEFAULT_HOST: &str = "127.0.0.1:8085";
/// The emulator's own launcher: a Gradle start script that ends in `exec java`.
const LAUNCHER: &str = "cloud-pubsub-emulator";
/// Where gcloud's SDK keeps that launcher, from the SDK's root.
const SDK_LAUNCHER: &str = "platform/pubsub-emulator/bin/cloud-pubsub-emulator";
/// How long `gcloud info` may take to name its SDK's root.
const GCLOUD_INFO_TIMEOUT: Duration = Duration::from_secs(10);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const POLL_EVERY: Duration = Duration::from_millis(100);
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of the log a failed start quotes.
const LOG_TAIL_LINES: usize = 10;
const NO_COMPONENT: &str = "gcloud is on PATH but its SDK has no Pub/Sub emulator: \
    gcloud components install pubsub-emulator, or apt-get install google-cloud-cli-pubsub-emulator";
const INSTALL: &str = "install the emulator and a Java 17 runtime (Debian, with Google's Cloud SDK apt repository: \
    apt-get install google-cloud-cli-pubsub-emulator openjdk-17-jre-headless), \
    or start one yourself and set PUBSUB_EMULATOR_HOST=host:port";

/// The emulator `whirligig dev` runs against, or why there is none.
#[derive(Debug)]
pub(crate) enum Emulator {
    /// One was already answering; it is left running.
    Reused {
        /// `host:port`.
        host: String,
    },
    /// Started here; [`Emulator::stop`] (or dropping it) stops it.
    Started {
        /// `host:port`.
        host: String,
        /// The launcher, which became the JVM (boxed: a `Child` is ten times the other variants).
        process: Box<Child>,
        /// Its stdout and stderr; removed by [`Emulator::stop`].
        log: PathBuf,
        /// From spawning to the first answer.
        ready_in: Duration,
    },
    /// None is installed and none was asked for: tasks run in-process.
    Unavailable {
        /// What is missing.
        reason: String,
    },
}

/// Why no emulator could be used; each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EmulatorError {
    #[error("PUBSUB_EMULATOR_HOST={0:?} is not host:port: set it to one, such as 127.0.0.1:8085")]
    InvalidHost(String),
    #[error(
        "something that is not the Pub/Sub emulator answers on {host}: stop it or set PUBSUB_EMULATOR_HOST to a free port"
    )]
    NotEmulator { host: String },
    #[error(
        "no Pub/Sub emulator answers on {host} (PUBSUB_EMULATOR_HOST), and dev starts one only on a \
         loopback address: start it there, point PUBSUB_EMULATOR_HOST at a running one, or unset it"
    )]
    Unreachable { host: String },
    #[error("the Pub/Sub emulator is not running on {host} and cannot be started here ({reason}): {install}", install = INSTALL)]
    NoLauncher { host: String, reason: String },
    #[error("an HTTP client to probe the Pub/Sub emulator: {0}")]
    Client(#[source] reqwest::Error),
    #[error("the Pub/Sub emulator's log {}: {source}: make its directory writable, or set TMPDIR", path.display())]
    Log { path: PathBuf, source: io::Error },
    #[error("starting the Pub/Sub emulator ({program}): {source}: {install}", install = INSTALL)]
    Spawn { program: String, source: io::Error },
    #[error(
        "the Pub/Sub emulator exited ({status}) before answering on {host}: fix what the end of {} says, \
         or set PUBSUB_EMULATOR_HOST to one you started:\n{tail}",
        log.display()
    )]
    Exited { host: String, status: String, log: PathBuf, tail: String },
    #[error(
        "the Pub/Sub emulator did not answer on {host} within {}s, and was stopped: see the end of {}, \
         or set PUBSUB_EMULATOR_HOST to one you started:\n{tail}",
        START_TIMEOUT.as_secs(),
        log.display()
    )]
    TimedOut { host: String, log: PathBuf, tail: String },
    #[error("stopping the Pub/Sub emulator on {host}: {source}: if it still runs, kill it")]
    Stop { host: String, source: io::Error },
}

/// Reuses the emulator answering at `configured` (`PUBSUB_EMULATOR_HOST`,
/// default 127.0.0.1:8085), or starts one there with a launcher found on `path`.
pub(crate) async fn ensure(configured: Option<&str>, path: Option<&OsStr>) -> Result<Emulator, EmulatorError> {
    let configured = configured.map(str::trim).filter(|host| !host.is_empty());
    let address = Address::parse(configured.unwrap_or(DEFAULT_HOST))?;
    let java_home = std::env::var_os("JAVA_HOME");
    ensure_at(address, configured.is_some(), path, java_home.as_deref()).await
}

/// [`ensure`] with its environment as arguments; `explicit` when the user set the host.
async fn ensure_at(
    address: Address,
    explicit: bool,
    path: Option<&OsStr>,
    java_home: Option<&OsStr>,
) -> Result<Emulator, EmulatorError> {
    let client = probe_client()?;
    let answer = probe(&client, &address.host).await;
    // Finding a launcher may ask gcloud, which takes a second: not worth it when one answers.
    let launcher = match answer {
        Probe::Emulator => Err(String::new()),
        Probe::Other | Probe::Nothing => find_launcher(path, java_home).await,
    };
    match decide(answer, &address, explicit, launcher)? {
        Plan::Reuse => Ok(Emulator::Reused { host: address.host }),
        Plan::Without(reason) => Ok(Emulator::Unavailable { reason }),
        Plan::Start(launcher) => start(&client, address, &launcher, path).await,
    }
}

impl Emulator {
    /// `host:port`, when there is an emulator.
    pub(crate) fn host(&self) -> Option<&str> {
        match self {
            Self::Reused { host } | Self::Started { host, .. } => Some(host),
            Self::Unavailable { .. } => None,
        }
    }

    /// Kills the emulator if it was started here, waits for it to exit, and
    /// removes its log; it keeps nothing worth a clean shutdown.
    pub(crate) async fn stop(self) -> Result<(), EmulatorError> {
        match self {
            Self::Started { host, mut process, log, .. } => {
                process.kill().await.map_err(|source| EmulatorError::Stop { host, source })?;
                discard(&log);
                Ok(())
            }
            Self::Reused { .. } | Self::Unavailable { .. } => Ok(()),
        }
    }
}

/// The line `whirligig dev` logs about it.
impl fmt::Display for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reused { host } => write!(f, "Pub/Sub emulator on {host} (already running)"),
            Self::Started { host, log, ready_in, .. } => write!(
                f,
                "Pub/Sub emulator on {host} (started here, ready in {:.1} s, stopped on exit; log: {})",
                ready_in.as_secs_f64(),
                log.display()
            ),
            Self::Unavailable { reason } => write!(
                f,
                "no Pub/Sub emulator ({reason}): scheduled routes run in this process, and an enqueue runs in the enqueuing one"
            ),
        }
    }
}

/// `PUBSUB_EMULATOR_HOST`, split.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Address {
    /// As given: `127.0.0.1:8085`, `[::1]:8085`.
    host: String,
    /// Without the port, or an IPv6 address's brackets.
    name: String,
    port: u16,
}

impl Address {
    fn parse(text: &str) -> Result<Self, EmulatorError> {
        let invalid = || EmulatorError::InvalidHost(text.to_owned());
        let (name, port) = text.rsplit_once(':').ok_or_else(invalid)?;
        let port = port.parse::<u16>().ok().filter(|port| *port != 0).ok_or_else(invalid)?;
        let bare = name.strip_prefix('[').and_then(|name| name.strip_suffix(']'));
        // An IPv6 address needs its brackets, or the URL it goes into is ambiguous.
        if name.is_empty() || name.contains('/') || (bare.is_none() && name.contains(':')) {
            return Err(invalid());
        }
        Ok(Self { host: text.to_owned(), name: bare.unwrap_or(name).to_owned(), port })
    }

    fn is_loopback(&self) -> bool {
        self.name.eq_ignore_ascii_case("localhost") || self.name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

/// What answered at the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// The topics list, as a JSON object.
    Emulator,
    /// Anything else: another status, another body, or no HTTP at all.
    Other,
    /// Connection refused (or no route).
    Nothing,
}

fn probe_client() -> Result<reqwest::Client, EmulatorError> {
    // An http_proxy must not see loopback, and the emulator takes no credentials.
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(PROBE_TIMEOUT)
        .timeout(PROBE_TIMEOUT)
        .build()
        .map_err(EmulatorError::Client)
}

/// Lists the dev project's topics: the emulator's root answers "Ok", which any server could.
async fn probe(client: &reqwest::Client, host: &str) -> Probe {
    let url = format!("http://{host}/v1/projects/{EMULATOR_PROJECT}/topics");
    match client.get(url).send().await {
        Ok(response) if response.status() == StatusCode::OK => match response.bytes().await {
            Ok(body) if is_json_object(&body) => Probe::Emulator,
            _ => Probe::Other,
        },
        Ok(_) => Probe::Other,
        Err(error) if error.is_connect() => Probe::Nothing,
        Err(_) => Probe::Other,
    }
}

fn is_json_object(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body).is_ok()
}

/// What [`ensure`] does next.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    Reuse,
    /// With this launcher.
    Start(PathBuf),
    Without(String),
}

/// The next step, from what answered and what is installed; `explicit` when the user set the host.
fn decide(
    answer: Probe,
    address: &Address,
    explicit: bool,
    launcher: Result<PathBuf, String>,
) -> Result<Plan, EmulatorError> {
    let host = || address.host.clone();
    match (answer, launcher) {
        (Probe::Emulator, _) => Ok(Plan::Reuse),
        // Not asked for and not installed: whatever holds the default port is none of our business.
        (_, Err(reason)) if !explicit => Ok(Plan::Without(reason)),
        (Probe::Other, _) if address.is_loopback() => Err(EmulatorError::NotEmulator { host: host() }),
        _ if !address.is_loopback() => Err(EmulatorError::Unreachable { host: host() }),
        (_, Err(reason)) => Err(EmulatorError::NoLauncher { host: host(), reason }),
        (_, Ok(launcher)) => Ok(Plan::Start(launcher)),
    }
}

/// The emulator's launcher on `path`, else the one in gcloud's SDK; or why none will run.
async fn find_launcher(path: Option<&OsStr>, java_home: Option<&OsStr>) -> Result<PathBuf, String> {
    let launcher = match on_path(LAUNCHER, path) {
        Some(launcher) => launcher,
        None => {
            let gcloud = on_path("gcloud", path).ok_or_else(|| format!("neither {LAUNCHER} nor gcloud is on PATH"))?;
            sdk_launcher(&gcloud, path).await.ok_or_else(|| NO_COMPONENT.to_owned())?
        }
    };
    // The launcher only execs java: without it, it dies at once, less clearly.
    if java_home.is_none_or(OsStr::is_empty) && on_path("java", path).is_none() {
        return Err("no java on PATH and JAVA_HOME unset".to_owned());
    }
    Ok(launcher)
}

/// The first executable file called `name` in `path`, as a shell finds it.
fn on_path(name: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path?).map(|dir| dir.join(name)).find(|candidate| is_executable(candidate))
}

/// gcloud's copy of the launcher: under the SDK that `gcloud` resolves into
/// (`<sdk>/bin/gcloud`), else under the SDK root gcloud reports.
async fn sdk_launcher(gcloud: &Path, path: Option<&OsStr>) -> Option<PathBuf> {
    let resolved = std::fs::canonicalize(gcloud).ok();
    let root = resolved.as_deref().and_then(Path::parent).and_then(Path::parent);
    match root.and_then(launcher_under) {
        Some(launcher) => Some(launcher),
        None => launcher_under(&reported_sdk_root(gcloud, path).await?),
    }
}

fn launcher_under(sdk_root: &Path) -> Option<PathBuf> {
    let launcher = sdk_root.join(SDK_LAUNCHER);
    is_executable(&launcher).then_some(launcher)
}

/// `gcloud info`'s SDK root; `None` if gcloud fails, says nothing, or takes too long.
async fn reported_sdk_root(gcloud: &Path, path: Option<&OsStr>) -> Option<PathBuf> {
    let mut command = Command::new(gcloud);
    command.args(["info", "--format=value(installation.sdk_root)"]).env("CLOUDSDK_CORE_DISABLE_PROMPTS", "1");
    with_path(&mut command, path);
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(GCLOUD_INFO_TIMEOUT, command.output()).await.ok()?.ok()?;
    let root = String::from_utf8(output.stdout).ok()?;
    let root = root.trim();
    (output.status.success() && !root.is_empty()).then(|| PathBuf::from(root))
}

/// Runs `command` with PATH as it was searched.
fn with_path(command: &mut Command, path: Option<&OsStr>) {
    if let Some(path) = path {
        command.env("PATH", path);
    }
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(path: &Path) -> bool {
    path.is_file()
}

/// Spawns the launcher with its output to `log`; it execs java, so killing it kills the JVM.
fn spawn(launcher: &Path, address: &Address, path: Option<&OsStr>, log: &Path) -> Result<Child, EmulatorError> {
    let mut command = Command::new(launcher);
    command.arg(format!("--host={}", address.name)).arg(format!("--port={}", address.port));
    with_path(&mut command, path);
    let (stdout, stderr) = log_files(log)?;
    command.stdin(Stdio::null()).stdout(stdout).stderr(stderr).kill_on_drop(true);
    command.spawn().map_err(|source| EmulatorError::Spawn { program: launcher.display().to_string(), source })
}

fn log_path(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("whirligig-pubsub-emulator-{port}.log"))
}

/// The log, truncated, open twice: once for stdout, once for stderr.
fn log_files(log: &Path) -> Result<(File, File), EmulatorError> {
    let error = |source| EmulatorError::Log { path: log.to_owned(), source };
    let stdout = File::create(log).map_err(error)?;
    let stderr = stdout.try_clone().map_err(error)?;
    Ok((stdout, stderr))
}

/// Removes a log no one needs to read; one already gone, or that cannot go, is not worth an error.
fn discard(log: &Path) {
    let _ignored = std::fs::remove_file(log);
}

/// How a start ended.
#[derive(Debug)]
enum Startup {
    Ready,
    Exited(String),
    TimedOut,
}

/// Starts the emulator at `address` and waits for its first answer; a failed
/// one is killed and its log kept and quoted.
async fn start(
    client: &reqwest::Client,
    address: Address,
    launcher: &Path,
    path: Option<&OsStr>,
) -> Result<Emulator, EmulatorError> {
    let log = log_path(address.port);
    let began = Instant::now();
    // A launcher that never ran wrote nothing worth keeping.
    let mut process = spawn(launcher, &address, path, &log).inspect_err(|_| discard(&log))?;
    let startup = come_up(client, &address.host, &mut process).await;
    let host = address.host;
    match startup {
        Startup::Ready => Ok(Emulator::Started { host, process: Box::new(process), log, ready_in: began.elapsed() }),
        Startup::Exited(status) => Err(EmulatorError::Exited { host, status, tail: tail(&log), log }),
        Startup::TimedOut => {
            let _ignored = process.kill().await;
            Err(EmulatorError::TimedOut { host, tail: tail(&log), log })
        }
    }
}

async fn come_up(client: &reqwest::Client, host: &str, child: &mut Child) -> Startup {
    tokio::select! {
        () = answers(client, host) => Startup::Ready,
        status = child.wait() => Startup::Exited(status.map_or_else(|error| error.to_string(), |status| status.to_string())),
        () = tokio::time::sleep(START_TIMEOUT) => Startup::TimedOut,
    }
}

/// Returns once the emulator answers at `host`; a JVM cannot say when it is ready, so it is asked.
async fn answers(client: &reqwest::Client, host: &str) {
    let mut every = tokio::time::interval(POLL_EVERY);
    loop {
        every.tick().await;
        if probe(client, host).await == Probe::Emulator {
            return;
        }
    }
}

/// The log's last lines, indented, for an error message.
fn tail(log: &Path) -> String {
    match std::fs::read(log) {
        Ok(bytes) if bytes.is_empty() => "  (the log is empty)".to_owned(),
        Ok(bytes) => last_lines(&String::from_utf8_lossy(&bytes), LOG_TAIL_LINES),
        Err(error) => format!("  (the log cannot be read: {error})"),
    }
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let kept = &lines[lines.len().saturating_sub(count)..];
    kept.iter().map(|line| format!("  {line}")).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A fresh directory under the system's temp dir, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(test: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("whirligig-emulator-{test}-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        /// An empty shell script at `relative`, with `mode`.
        fn file(&self, relative: &str, mode: u32) -> PathBuf {
            self.script(relative, mode, "")
        }

        fn script(&self, relative: &str, mode: u32, body: &str) -> PathBuf {
            let path = self.0.join(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        }

        /// `bin/gcloud`, which answers only `gcloud info` for the SDK root, with `root`.
        fn gcloud_reporting(&self, root: &Path) -> std::ffi::OsString {
            let body = format!(
                "[ \"$*\" = 'info --format=value(installation.sdk_root)' ] || exit 2\necho '{}'",
                root.display()
            );
            self.script("bin/gcloud", 0o755, &body);
            self.0.join("bin").into_os_string()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ignored = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A JAVA_HOME, so that the java check passes.
    fn java_home() -> Option<&'static OsStr> {
        Some(OsStr::new("/opt/java"))
    }

    fn address(host: &str) -> Address {
        Address::parse(host).unwrap()
    }

    /// A loopback port nothing listens on (for as long as nothing else takes it).
    async fn free_host() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
    }

    /// A server on a loopback port that answers every request with `response`.
    async fn answering(response: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = format!("127.0.0.1:{}", listener.local_addr().unwrap().port());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0_u8; 4096];
                let _ignored = stream.read(&mut request).await;
                let _ignored = stream.write_all(response.as_bytes()).await;
            }
        });
        host
    }

    const TOPICS: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}";

    #[test]
    fn path_search_skips_a_file_that_is_not_executable() {
        let scratch = Scratch::new("path");
        scratch.file("first/tool", 0o644);
        let executable = scratch.file("second/tool", 0o755);
        let path = std::env::join_paths([scratch.0.join("missing"), scratch.0.join("first"), scratch.0.join("second")])
            .unwrap();
        assert_eq!(on_path("tool", Some(&path)), Some(executable));
        assert_eq!(on_path("other", Some(&path)), None);
        assert_eq!(on_path("tool", None), None);
    }

    #[tokio::test]
    async fn gcloud_on_path_leads_to_its_sdks_launcher() {
        let scratch = Scratch::new("sdk");
        // A gcloud that would fail if asked: the SDK it resolves into is enough.
        let gcloud = scratch.script("sdk/bin/gcloud", 0o755, "exit 1");
        let launcher = scratch.file(&format!("sdk/{SDK_LAUNCHER}"), 0o755);
        std::fs::create_dir_all(scratch.0.join("bin")).unwrap();
        symlink(&gcloud, scratch.0.join("bin/gcloud")).unwrap();
        let path = scratch.0.join("bin").into_os_string();
        let found = find_launcher(Some(&path), java_home()).await;
        assert_eq!(found, Ok(std::fs::canonicalize(launcher).unwrap()));
    }

    #[tokio::test]
    async fn gcloud_outside_its_sdk_is_asked_for_the_sdk_root() {
        let scratch = Scratch::new("info");
        let launcher = scratch.file(&format!("sdk/{SDK_LAUNCHER}"), 0o755);
        let path = scratch.gcloud_reporting(&scratch.0.join("sdk"));
        assert_eq!(find_launcher(Some(&path), java_home()).await, Ok(launcher));

        let path = scratch.gcloud_reporting(&scratch.0.join("elsewhere"));
        assert_eq!(find_launcher(Some(&path), java_home()).await, Err(NO_COMPONENT.to_owned()));
    }

    #[tokio::test]
    async fn a_gcloud_that_fails_or_says_nothing_has_no_sdk_root() {
        let scratch = Scratch::new("info-fails");
        for body in ["echo /usr/lib/google-cloud-sdk; exit 1", "exit 0"] {
            let gcloud = scratch.script("bin/gcloud", 0o755, body);
            assert_eq!(reported_sdk_root(&gcloud, None).await, None, "{body}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_gcloud_that_hangs_is_given_up_on() {
        let scratch = Scratch::new("info-hangs");
        let gcloud = scratch.script("bin/gcloud", 0o755, "exec sleep 600");
        let asked = tokio::time::Instant::now();
        assert_eq!(reported_sdk_root(&gcloud, None).await, None);
        assert_eq!(asked.elapsed(), GCLOUD_INFO_TIMEOUT);
    }

    #[tokio::test]
    async fn gcloud_without_the_component_says_how_to_install_it() {
        let scratch = Scratch::new("component");
        let path = scratch.gcloud_reporting(&scratch.0.join("sdk"));
        let host = free_host().await;
        let emulator = ensure_at(address(&host), false, Some(&path), java_home()).await.unwrap();
        let Emulator::Unavailable { reason } = &emulator else { panic!("{emulator:?}") };
        assert!(reason.contains("gcloud components install pubsub-emulator"), "{reason}");

        let error = ensure_at(address(&host), true, Some(&path), java_home()).await.unwrap_err();
        assert!(matches!(error, EmulatorError::NoLauncher { .. }), "{error:?}");
        assert!(error.to_string().contains("gcloud components install pubsub-emulator"), "{error}");
    }

    #[tokio::test]
    async fn the_launcher_on_path_comes_before_gcloud_and_needs_java() {
        let scratch = Scratch::new("order");
        scratch.script("bin/gcloud", 0o755, "exit 1");
        let launcher = scratch.file(&format!("bin/{LAUNCHER}"), 0o755);
        let path = scratch.0.join("bin").into_os_string();
        assert_eq!(find_launcher(Some(&path), java_home()).await, Ok(launcher.clone()));
        let without_java = find_launcher(Some(&path), None).await.unwrap_err();
        assert!(without_java.contains("java"), "{without_java}");
        scratch.file("bin/java", 0o755);
        assert_eq!(find_launcher(Some(&path), None).await, Ok(launcher));
    }

    #[test]
    fn hosts_are_host_colon_port() {
        let ipv6 = address("[::1]:8085");
        assert_eq!((ipv6.name.as_str(), ipv6.port, ipv6.is_loopback()), ("::1", 8085, true));
        assert!(address("127.0.0.1:8085").is_loopback());
        assert!(address("LOCALHOST:1").is_loopback());
        assert!(!address("pubsub:8085").is_loopback());
        assert!(!address("10.0.0.2:8085").is_loopback());
        for invalid in ["127.0.0.1", ":8085", "host:0", "host:65536", "http://host:8085", "::1:8085", "host:x"] {
            assert!(matches!(Address::parse(invalid), Err(EmulatorError::InvalidHost(_))), "{invalid}");
        }
    }

    #[test]
    fn what_answers_and_what_is_installed_decide() {
        let local = address("127.0.0.1:8085");
        let remote = address("pubsub:8085");
        let script = || Ok(PathBuf::from("/bin/cloud-pubsub-emulator"));
        let missing = || Err("missing".to_owned());
        assert_eq!(decide(Probe::Emulator, &remote, true, missing()).unwrap(), Plan::Reuse);
        assert_eq!(decide(Probe::Nothing, &local, false, script()).unwrap(), Plan::Start(script().unwrap()));
        assert_eq!(decide(Probe::Nothing, &local, true, script()).unwrap(), Plan::Start(script().unwrap()));
        assert_eq!(decide(Probe::Nothing, &local, false, missing()).unwrap(), Plan::Without("missing".to_owned()));
        assert_eq!(decide(Probe::Other, &local, false, missing()).unwrap(), Plan::Without("missing".to_owned()));
        assert!(matches!(decide(Probe::Other, &local, false, script()), Err(EmulatorError::NotEmulator { .. })));
        assert!(matches!(decide(Probe::Nothing, &local, true, missing()), Err(EmulatorError::NoLauncher { .. })));
        assert!(matches!(decide(Probe::Nothing, &remote, true, script()), Err(EmulatorError::Unreachable { .. })));
        assert!(matches!(decide(Probe::Other, &remote, true, script()), Err(EmulatorError::Unreachable { .. })));
    }

    #[tokio::test]
    async fn without_a_launcher_or_a_host_there_is_none() {
        let host = free_host().await;
        let emulator = ensure_at(address(&host), false, Some(OsStr::new("")), None).await.unwrap();
        let Emulator::Unavailable { reason } = &emulator else { panic!("{emulator:?}") };
        assert!(reason.contains("PATH"), "{reason}");
        assert_eq!(emulator.host(), None);
        assert_eq!(
            emulator.to_string(),
            format!(
                "no Pub/Sub emulator ({reason}): scheduled routes run in this process, and an enqueue runs in the enqueuing one"
            )
        );
        emulator.stop().await.unwrap();
    }

    #[tokio::test]
    async fn a_host_asked_for_without_a_launcher_says_what_to_install() {
        let host = free_host().await;
        let error = ensure(Some(&host), Some(OsStr::new(""))).await.unwrap_err();
        assert!(matches!(error, EmulatorError::NoLauncher { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&host) && message.contains("google-cloud-cli-pubsub-emulator"), "{message}");
        assert!(message.contains("Java 17"), "{message}");
    }

    #[tokio::test]
    async fn a_server_that_is_not_the_emulator_is_not_taken_for_one() {
        let not_found = answering("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
        let ok = answering("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nOk").await;
        for host in [not_found, ok] {
            let error = ensure(Some(&host), Some(OsStr::new(""))).await.unwrap_err();
            assert!(matches!(error, EmulatorError::NotEmulator { .. }), "{error:?}");
            assert!(
                error.to_string().starts_with(&format!("something that is not the Pub/Sub emulator answers on {host}"))
            );
        }
    }

    #[tokio::test]
    async fn the_topics_list_is_what_marks_the_emulator_and_one_answering_is_reused() {
        let host = answering(TOPICS).await;
        assert_eq!(probe(&probe_client().unwrap(), &host).await, Probe::Emulator);
        assert_eq!(probe(&probe_client().unwrap(), &free_host().await).await, Probe::Nothing);

        let reused = ensure(Some(&host), Some(OsStr::new(""))).await.unwrap();
        assert!(matches!(&reused, Emulator::Reused { host: reused } if *reused == host), "{reused:?}");
        assert_eq!(reused.to_string(), format!("Pub/Sub emulator on {host} (already running)"));
        reused.stop().await.unwrap();
        assert_eq!(probe(&probe_client().unwrap(), &host).await, Probe::Emulator, "a reused one is left running");
    }

    #[test]
    fn a_failed_start_quotes_the_end_of_its_log() {
        let text: String = (1..=15).map(|n| format!("line {n}\n")).collect();
        let quoted = last_lines(&text, 10);
        assert!(quoted.starts_with("  line 6\n") && quoted.ends_with("  line 15"), "{quoted}");
        assert_eq!(last_lines("only\n", 10), "  only");
        assert!(tail(Path::new("/nonexistent/whirligig.log")).contains("cannot be read"));
    }

    /// The fake launcher stands in for the JVM; the test's server answers as the emulator.
    #[tokio::test]
    async fn one_started_here_is_killed_on_stop_and_its_log_removed() {
        let scratch = Scratch::new("starts");
        let launcher = scratch.script("cloud-pubsub-emulator", 0o755, "echo \"$*\"; exec sleep 600");
        let host = answering(TOPICS).await;
        let emulator = start(&probe_client().unwrap(), address(&host), &launcher, None).await.unwrap();
        let Emulator::Started { process, log, .. } = &emulator else { panic!("{emulator:?}") };
        let (pid, log) = (process.id().unwrap().to_string(), log.clone());
        assert_eq!(log, log_path(address(&host).port));
        assert_eq!(emulator.host(), Some(host.as_str()));
        let line = emulator.to_string();
        let started = format!("Pub/Sub emulator on {host} (started here, ready in ");
        assert!(line.starts_with(&started) && line.ends_with(&format!("stopped on exit; log: {})", log.display())));

        emulator.stop().await.unwrap();
        assert!(!log.exists(), "{} is left behind", log.display());
        let alive = std::process::Command::new("kill").args(["-0", &pid]).stderr(Stdio::null()).status().unwrap();
        assert!(!alive.success(), "the launcher {pid} still runs");
    }

    #[tokio::test]
    async fn a_launcher_that_exits_is_reported_with_its_log() {
        let scratch = Scratch::new("exits");
        let body = "for n in 1 2 3 4 5 6 7 8 9 10 11; do echo \"line $n $*\"; done; echo 'no java' >&2; exit 3";
        let launcher = scratch.script("cloud-pubsub-emulator", 0o755, body);
        let address = address(&free_host().await);
        let error = start(&probe_client().unwrap(), address.clone(), &launcher, None).await.unwrap_err();
        let EmulatorError::Exited { status, tail, log, .. } = &error else { panic!("{error:?}") };
        assert!(status.contains('3'), "{status}");
        let arguments = format!("--host=127.0.0.1 --port={}", address.port);
        assert!(tail.starts_with(&format!("  line 3 {arguments}\n")) && tail.ends_with("  no java"), "{tail}");
        assert!(error.to_string().contains(&log.display().to_string()), "{error}");
        assert!(log.exists(), "a failed start's log is kept");
        std::fs::remove_file(log).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_launcher_that_never_answers_is_stopped_after_a_minute() {
        let scratch = Scratch::new("hangs");
        let launcher = scratch.script("cloud-pubsub-emulator", 0o755, "echo starting; exec sleep 600");
        let address = address(&free_host().await);
        let error = start(&probe_client().unwrap(), address, &launcher, None).await.unwrap_err();
        let EmulatorError::TimedOut { log, .. } = &error else { panic!("{error:?}") };
        // Whether the shell got to its echo within the paused minute is a race.
        let message = error.to_string();
        assert!(message.contains("within 60s") && message.contains(&log.display().to_string()), "{message}");
        assert!(log.exists(), "a failed start's log is kept");
        std::fs::remove_file(log).unwrap();
    }

    #[tokio::test]
    async fn a_launcher_that_cannot_be_spawned_leaves_no_log() {
        let scratch = Scratch::new("spawn");
        let launcher = scratch.0.join("cloud-pubsub-emulator");
        std::fs::write(&launcher, "#!/nonexistent/interpreter\n").unwrap();
        std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
        let address = address(&free_host().await);
        let error = start(&probe_client().unwrap(), address.clone(), &launcher, None).await.unwrap_err();
        assert!(matches!(error, EmulatorError::Spawn { .. }), "{error:?}");
        assert!(!log_path(address.port).exists());
    }
}
