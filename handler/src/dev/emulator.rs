//! The Pub/Sub emulator `whirligig dev` publishes to: one already answering is
//! reused, and one on a loopback address is started from an installed launcher
//! and stopped on exit. It never starts one on another host, and never installs one.

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
/// The emulator's own launcher, as `google-cloud-cli-pubsub-emulator` installs it.
const LAUNCHER: &str = "cloud-pubsub-emulator";
/// Where gcloud's SDK keeps that launcher, from the SDK's root.
const SDK_LAUNCHER: &str = "platform/pubsub-emulator/bin/cloud-pubsub-emulator";
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const POLL_EVERY: Duration = Duration::from_millis(100);
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long stopping waits for the port of gcloud's JVM to close.
const GROUP_EXIT: Duration = Duration::from_secs(2);
const POLL_GROUP_EVERY: Duration = Duration::from_millis(10);
/// How much of the log a failed start quotes.
const LOG_TAIL_LINES: usize = 10;
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
        /// The launcher's process (boxed: a `Child` is ten times the other variants).
        process: Box<Process>,
        /// Its stdout and stderr.
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
        "no Pub/Sub emulator answers on {host} (PUBSUB_EMULATOR_HOST), and whirligig dev starts one only on a \
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
    match decide(answer, &address, explicit, find_launcher(path, java_home))? {
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

    /// Kills the emulator if it was started here, and waits for it to exit; it keeps nothing worth a clean shutdown.
    pub(crate) async fn stop(self) -> Result<(), EmulatorError> {
        match self {
            Self::Started { host, mut process, .. } => {
                process.kill(&host).await.map_err(|source| EmulatorError::Stop { host, source })
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
                "Pub/Sub emulator on {host} (started by whirligig dev, ready in {:.1} s, stopped on exit; log: {})",
                ready_in.as_secs_f64(),
                log.display()
            ),
            Self::Unavailable { reason } => {
                write!(f, "no Pub/Sub emulator ({reason}): tasks run at once in this process")
            }
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
    Start(Launcher),
    Without(String),
}

/// The next step, from what answered and what is installed; `explicit` when the user set the host.
fn decide(
    answer: Probe,
    address: &Address,
    explicit: bool,
    launcher: Result<Launcher, String>,
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

/// A program that starts the emulator.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Launcher {
    /// The emulator's start script: it ends in `exec java`, so its process is the JVM.
    Script(PathBuf),
    /// `gcloud beta emulators pubsub start`: python, with the JVM as its child.
    Gcloud(PathBuf),
}

/// The emulator's launcher on `path`, else gcloud's copy, else gcloud; or why none will run.
fn find_launcher(path: Option<&OsStr>, java_home: Option<&OsStr>) -> Result<Launcher, String> {
    let gcloud = on_path("gcloud", path);
    let launcher = on_path(LAUNCHER, path)
        .or_else(|| gcloud.as_deref().and_then(sdk_launcher))
        .map(Launcher::Script)
        .or_else(|| gcloud.map(Launcher::Gcloud))
        .ok_or_else(|| format!("neither {LAUNCHER} nor gcloud is on PATH"))?;
    // Both launchers only exec java: without it they die at once, less clearly.
    if java_home.is_none_or(OsStr::is_empty) && on_path("java", path).is_none() {
        return Err("no java on PATH and JAVA_HOME unset".to_owned());
    }
    Ok(launcher)
}

/// The first executable file called `name` in `path`, as a shell finds it.
fn on_path(name: &str, path: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path?).map(|dir| dir.join(name)).find(|candidate| is_executable(candidate))
}

/// gcloud's own copy of the launcher: `gcloud` resolves to `<sdk>/bin/gcloud`.
fn sdk_launcher(gcloud: &Path) -> Option<PathBuf> {
    let real = std::fs::canonicalize(gcloud).ok()?;
    let launcher = real.parent()?.parent()?.join(SDK_LAUNCHER);
    is_executable(&launcher).then_some(launcher)
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

impl Launcher {
    fn program(&self) -> &Path {
        match self {
            Self::Script(program) | Self::Gcloud(program) => program,
        }
    }

    /// gcloud's JVM is its grandchild, out of kill_on_drop's reach: it runs in
    /// a process group of its own, killed whole.
    fn grouped(&self) -> bool {
        matches!(self, Self::Gcloud(_))
    }

    fn command(&self, address: &Address) -> Command {
        let mut command = Command::new(self.program());
        match self {
            Self::Script(_) => command.arg(format!("--host={}", address.name)).arg(format!("--port={}", address.port)),
            Self::Gcloud(_) => {
                command.args(["beta", "emulators", "pubsub", "start"]).arg(format!("--host-port={}", address.host))
            }
        };
        #[cfg(unix)]
        if self.grouped() {
            command.process_group(0);
        }
        command
    }

    /// Spawns it with its output to `log`, and PATH as it was searched.
    fn spawn(&self, address: &Address, path: Option<&OsStr>, log: &Path) -> Result<Process, EmulatorError> {
        let mut command = self.command(address);
        if let Some(path) = path {
            command.env("PATH", path);
        }
        let (stdout, stderr) = log_files(log)?;
        command.stdin(Stdio::null()).stdout(stdout).stderr(stderr).kill_on_drop(true);
        let child = command
            .spawn()
            .map_err(|source| EmulatorError::Spawn { program: self.program().display().to_string(), source })?;
        let group = if self.grouped() { child.id() } else { None };
        Ok(Process { child, group })
    }
}

/// The log, truncated, open twice: once for stdout, once for stderr.
fn log_files(log: &Path) -> Result<(File, File), EmulatorError> {
    let error = |source| EmulatorError::Log { path: log.to_owned(), source };
    let stdout = File::create(log).map_err(error)?;
    let stderr = stdout.try_clone().map_err(error)?;
    Ok((stdout, stderr))
}

/// A launcher started here; killed when dropped, with its process group if it has one.
#[derive(Debug)]
pub(crate) struct Process {
    child: Child,
    /// The group id of `gcloud`'s group, which holds the JVM.
    group: Option<u32>,
}

impl Process {
    /// Kills it and waits for it, then for `host` to close: gcloud's JVM is not
    /// our child, so its exit cannot be awaited, and a zombie's group lingers.
    async fn kill(&mut self, host: &str) -> io::Result<()> {
        let group = self.group.take();
        if let Some(group) = group {
            Command::from(kill_group(group)).status().await?;
        }
        self.child.kill().await?;
        if group.is_some() {
            closed(host).await;
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A few milliseconds of blocking, on a path taken only when stop() was not.
        if let Some(group) = self.group.take() {
            let _ignored = kill_group(group).status();
        }
    }
}

/// Returns once nothing accepts connections on `host`, or after [`GROUP_EXIT`].
async fn closed(host: &str) {
    let deadline = Instant::now() + GROUP_EXIT;
    while Instant::now() < deadline && tokio::net::TcpStream::connect(host).await.is_ok() {
        tokio::time::sleep(POLL_GROUP_EVERY).await;
    }
}

/// `kill -KILL -- -GROUP`: the workspace forbids the `unsafe` a direct
/// `kill(2)` takes, and this fallback path is not worth a dependency.
fn kill_group(group: u32) -> std::process::Command {
    let mut command = std::process::Command::new("kill");
    command.args(["-KILL", "--"]).arg(format!("-{group}"));
    command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    command
}

/// How a start ended.
#[derive(Debug)]
enum Startup {
    Ready,
    Exited(String),
    TimedOut,
}

/// Starts the emulator at `address` and waits for its first answer; a failed one is killed and its log quoted.
async fn start(
    client: &reqwest::Client,
    address: Address,
    launcher: &Launcher,
    path: Option<&OsStr>,
) -> Result<Emulator, EmulatorError> {
    let log = std::env::temp_dir().join(format!("whirligig-pubsub-emulator-{}.log", address.port));
    let began = Instant::now();
    let mut process = launcher.spawn(&address, path, &log)?;
    let startup = come_up(client, &address.host, &mut process.child).await;
    let host = address.host;
    match startup {
        Startup::Ready => Ok(Emulator::Started { host, process: Box::new(process), log, ready_in: began.elapsed() }),
        Startup::Exited(status) => {
            let _ignored = process.kill(&host).await;
            Err(EmulatorError::Exited { host, status, tail: tail(&log), log })
        }
        Startup::TimedOut => {
            let _ignored = process.kill(&host).await;
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
    use tokio::net::{TcpListener, TcpStream};

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
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ignored = std::fs::remove_dir_all(&self.0);
        }
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

    #[test]
    fn gcloud_on_path_leads_to_its_sdks_launcher() {
        let scratch = Scratch::new("sdk");
        let gcloud = scratch.file("sdk/bin/gcloud", 0o755);
        let launcher = scratch.file(&format!("sdk/{SDK_LAUNCHER}"), 0o755);
        std::fs::create_dir_all(scratch.0.join("bin")).unwrap();
        symlink(&gcloud, scratch.0.join("bin/gcloud")).unwrap();
        let path = scratch.0.join("bin").into_os_string();
        let found = find_launcher(Some(&path), Some(OsStr::new("/opt/java")));
        assert_eq!(found, Ok(Launcher::Script(std::fs::canonicalize(launcher).unwrap())));
    }

    #[test]
    fn gcloud_without_the_emulator_is_the_last_resort_and_java_is_needed() {
        let scratch = Scratch::new("gcloud");
        let gcloud = scratch.file("bin/gcloud", 0o755);
        let path = scratch.0.join("bin").into_os_string();
        assert_eq!(find_launcher(Some(&path), Some(OsStr::new("/opt/java"))), Ok(Launcher::Gcloud(gcloud)));
        let without_java = find_launcher(Some(&path), None).unwrap_err();
        assert!(without_java.contains("java"), "{without_java}");
        scratch.file("bin/java", 0o755);
        assert!(find_launcher(Some(&path), None).is_ok());
    }

    #[test]
    fn the_launcher_on_path_comes_before_gcloud() {
        let scratch = Scratch::new("order");
        scratch.file("bin/gcloud", 0o755);
        let launcher = scratch.file(&format!("bin/{LAUNCHER}"), 0o755);
        let path = scratch.0.join("bin").into_os_string();
        assert_eq!(find_launcher(Some(&path), Some(OsStr::new("/opt/java"))), Ok(Launcher::Script(launcher)));
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
        let script = || Ok(Launcher::Script(PathBuf::from("/bin/cloud-pubsub-emulator")));
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
        assert!(emulator.to_string().starts_with("no Pub/Sub emulator ("), "{emulator}");
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
    async fn the_topics_list_is_what_marks_the_emulator() {
        let host = answering("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}").await;
        assert_eq!(probe(&probe_client().unwrap(), &host).await, Probe::Emulator);
        assert_eq!(probe(&probe_client().unwrap(), &free_host().await).await, Probe::Nothing);
    }

    #[test]
    fn a_failed_start_quotes_the_end_of_its_log() {
        let text: String = (1..=15).map(|n| format!("line {n}\n")).collect();
        let quoted = last_lines(&text, 10);
        assert!(quoted.starts_with("  line 6\n") && quoted.ends_with("  line 15"), "{quoted}");
        assert_eq!(last_lines("only\n", 10), "  only");
        assert!(tail(Path::new("/nonexistent/whirligig.log")).contains("cannot be read"));
    }

    #[tokio::test]
    async fn a_launcher_that_exits_is_reported_with_its_log() {
        let scratch = Scratch::new("exits");
        let body = "for n in 1 2 3 4 5 6 7 8 9 10 11; do echo \"line $n $*\"; done; echo 'no java' >&2; exit 3";
        let launcher = Launcher::Script(scratch.script("cloud-pubsub-emulator", 0o755, body));
        let address = address(&free_host().await);
        let error = start(&probe_client().unwrap(), address.clone(), &launcher, None).await.unwrap_err();
        let EmulatorError::Exited { status, tail, log, .. } = &error else { panic!("{error:?}") };
        assert!(status.contains('3'), "{status}");
        let arguments = format!("--host=127.0.0.1 --port={}", address.port);
        assert!(tail.starts_with(&format!("  line 3 {arguments}\n")) && tail.ends_with("  no java"), "{tail}");
        assert!(error.to_string().contains(&log.display().to_string()), "{error}");
        let _ignored = std::fs::remove_file(log);
    }

    #[tokio::test(start_paused = true)]
    async fn a_launcher_that_never_answers_is_stopped_after_a_minute() {
        let scratch = Scratch::new("hangs");
        let launcher =
            Launcher::Script(scratch.script("cloud-pubsub-emulator", 0o755, "echo starting; exec sleep 600"));
        let address = address(&free_host().await);
        let error = start(&probe_client().unwrap(), address, &launcher, None).await.unwrap_err();
        let EmulatorError::TimedOut { log, .. } = &error else { panic!("{error:?}") };
        // Whether the shell got to its echo within the paused minute is a race.
        let message = error.to_string();
        assert!(message.contains("within 60s") && message.contains(&log.display().to_string()), "{message}");
        let _ignored = std::fs::remove_file(log);
    }

    /// The real emulator, as this machine has it installed (and Java 17).
    #[tokio::test]
    async fn starts_the_real_emulator_reuses_it_and_stops_it() {
        let host = free_host().await;
        let path = std::env::var_os("PATH");
        let emulator = ensure(Some(&host), path.as_deref()).await.unwrap();
        let Emulator::Started { log, .. } = &emulator else { panic!("{emulator:?}") };
        let log = log.clone();
        eprintln!("{emulator}");
        assert_eq!(emulator.host(), Some(host.as_str()));
        assert_eq!(probe(&probe_client().unwrap(), &host).await, Probe::Emulator);

        let again = ensure(Some(&host), path.as_deref()).await.unwrap();
        assert!(matches!(&again, Emulator::Reused { host: reused } if *reused == host), "{again:?}");
        assert_eq!(again.to_string(), format!("Pub/Sub emulator on {host} (already running)"));
        again.stop().await.unwrap();
        assert_eq!(probe(&probe_client().unwrap(), &host).await, Probe::Emulator, "a reused one is left running");

        assert!(matches!(&emulator, Emulator::Started { ready_in, .. } if *ready_in < START_TIMEOUT));
        emulator.stop().await.unwrap();
        assert!(TcpStream::connect(&host).await.is_err(), "still listening on {host}");
        std::fs::remove_file(log).unwrap();
    }

    /// gcloud's way, as this machine has it: the JVM is gcloud's grandchild, stopped with its group.
    #[tokio::test]
    async fn starts_the_real_emulator_through_gcloud_and_stops_its_group() {
        let gcloud = on_path("gcloud", std::env::var_os("PATH").as_deref()).expect("gcloud on PATH");
        for stop in [true, false] {
            let address = address(&free_host().await);
            let launcher = Launcher::Gcloud(gcloud.clone());
            let emulator = start(&probe_client().unwrap(), address.clone(), &launcher, None).await.unwrap();
            eprintln!("{emulator}");
            let _ignored = std::fs::remove_file(
                std::env::temp_dir().join(format!("whirligig-pubsub-emulator-{}.log", address.port)),
            );
            let stopped = Instant::now();
            if stop {
                emulator.stop().await.unwrap();
                assert!(TcpStream::connect(&address.host).await.is_err(), "still listening on {}", address.host);
            } else {
                drop(emulator);
            }
            // Dropping kills without waiting.
            while TcpStream::connect(&address.host).await.is_ok() {
                assert!(stopped.elapsed() < Duration::from_secs(2), "still listening on {}", address.host);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
