//! `whirligig dev`: the whole pipeline on one machine. The Pub/Sub emulator
//! (reused, or started here and stopped on exit), the routes provisioned on
//! it with pushes to this server, scheduled routes fired at their times, then
//! serving. Without an emulator, scheduled routes run in this process and an
//! enqueue elsewhere runs in its own. Refused outside the dev environment.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use whirligig_registry::{Registry, Route, Tz};

use super::{Fatal, postgres, push_auth, warn_in_memory};
use crate::app::App;
use crate::config::{Backend, Config, Loading};
use crate::dev::cron::{self, WallClock};
use crate::dev::emulator::{self, Emulator};
use crate::provision::{self, Options};
use crate::server::{SHUTDOWN_GRACE, serve, shutdown_signal};
use crate::store::ExecutionStore;
use crate::tasks::Tasks;

/// Sets up the pipeline, serves until SIGTERM or SIGINT, then stops what it started.
pub(super) async fn run(config: &Config, registry: Registry, loading: &Loading) -> Result<ExitCode, Fatal> {
    let started = Instant::now();
    if !config.is_dev() {
        let environment = config.naming.environment();
        return Err(Fatal::Usage(format!("dev runs only where TASKS_ENVIRONMENT is dev, not {environment:?}")));
    }
    let emulator = if config.enqueue.backend == Backend::Immediate && config.enqueue.backend_chosen {
        Emulator::Unavailable { reason: "TASKS_BACKEND=immediate".to_owned() }
    } else {
        // PATH, read here and not by the configuration: where to find a launcher is not a setting.
        let path = std::env::var_os("PATH");
        emulator::ensure(emulator_host(config), path.as_deref())
            .await
            .map_err(|error| Fatal::Failed(error.to_string()))?
    };
    tracing::info!("{emulator}");
    let served = serve_dev(config, registry, loading, &emulator, started).await;
    let stopped = emulator.stop().await.map_err(|error| Fatal::Failed(error.to_string()));
    served.and_then(|code| stopped.map(|()| code))
}

/// The emulator the configuration names: `PUBSUB_EMULATOR_HOST`, which the
/// configuration keeps as Pub/Sub's base URL.
fn emulator_host(config: &Config) -> Option<&str> {
    config.enqueue.emulator.then(|| config.enqueue.pubsub_url.trim_start_matches("http://"))
}

async fn serve_dev(
    config: &Config,
    registry: Registry,
    loading: &Loading,
    emulator: &Emulator,
    started: Instant,
) -> Result<ExitCode, Fatal> {
    let config = local(config, &registry, loading, emulator.host())?;
    // Bound before provisioning: the emulator may push as soon as a subscription exists.
    let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.port));
    let listener = TcpListener::bind(address).await.map_err(|error| Fatal::Listen(address, error))?;
    if emulator.host().is_some() {
        provision_on_emulator(&registry, &config).await?;
    }
    let registry = Arc::new(registry);
    let auth = push_auth(&config)?;
    let ready = Ready { listener, started, emulator: emulator.host() };
    match &config.database {
        Some(database) => {
            let store = postgres(database).await?;
            pipeline(&config, App::postgres(Arc::clone(&registry), store, auth), registry, ready).await
        }
        None => {
            warn_in_memory();
            pipeline(&config, App::in_memory(Arc::clone(&registry), auth), registry, ready).await
        }
    }
}

/// The configuration with the emulator it runs against, and pushes to this
/// machine whatever `CLOUD_RUN_SERVICE_URL` says.
fn local(config: &Config, registry: &Registry, loading: &Loading, host: Option<&str>) -> Result<Config, Fatal> {
    let mut local = match host {
        Some(host) if !config.enqueue.emulator => {
            let lookup = |name: &str| match name {
                "PUBSUB_EMULATOR_HOST" => Some(host.to_owned()),
                _ => std::env::var(name).ok(),
            };
            Config::load(registry, &lookup, loading)?
        }
        _ => config.clone(),
    };
    local.service_url = None;
    Ok(local)
}

/// Every route's topic and push subscription on the emulator, pushing to
/// `http://localhost:$PORT/tasks/pubsub/`; each line at debug, the summary at info.
async fn provision_on_emulator(registry: &Registry, config: &Config) -> Result<(), Fatal> {
    let mut lines = Vec::new();
    let summary = provision::provision(registry, config, Options::default(), &mut |line| lines.push(line))
        .await
        .map_err(|error| Fatal::Failed(format!("provisioning on the emulator: {error}")))?;
    let failed: Vec<&String> = lines.iter().filter(|line| line.contains("-> FAILED")).collect();
    lines.iter().for_each(|line| tracing::debug!("provision: {line}"));
    if summary.failed > 0 {
        let failed = failed.iter().map(|line| line.as_str()).collect::<Vec<_>>().join("; ");
        return Err(Fatal::Failed(format!("provisioning on the emulator: {failed}")));
    }
    let pushes = format!("http://localhost:{}/tasks/pubsub/", config.port);
    tracing::info!(
        "provisioned {} route(s) on the emulator, pushing to {pushes}: {} written, {} unchanged",
        registry.len(),
        summary.writes,
        summary.unchanged
    );
    Ok(())
}

/// What serving starts from.
struct Ready<'a> {
    listener: TcpListener,
    started: Instant,
    emulator: Option<&'a str>,
}

/// Serves, with dev cron beside it, until a signal; cron stops with the server.
async fn pipeline<S: ExecutionStore>(
    config: &Config,
    app: App<S>,
    registry: Arc<Registry>,
    ready: Ready<'_>,
) -> Result<ExitCode, Fatal> {
    let app = Arc::new(app.with_kill_switches(config.kill_switches.clone()).with_results_logged());
    let fire = Fire::new(config, &registry, &app, ready.emulator.is_some()).await?;
    say_ready(config, &ready);
    let stop = CancellationToken::new();
    let cron = cron::run(
        Arc::clone(&registry),
        config.kill_switches.clone(),
        WallClock::system(),
        |route: &Route, at: DateTime<Tz>| fire.fire(route.name().to_owned(), at),
        stop.clone(),
    );
    let serving = async {
        serve(ready.listener, Arc::clone(&app), shutdown_signal(), SHUTDOWN_GRACE).await;
        stop.cancel();
    };
    tokio::join!(serving, cron);
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

fn say_ready(config: &Config, ready: &Ready<'_>) {
    let url = format!("http://localhost:{}", config.port);
    let elapsed_ms = ready.started.elapsed().as_millis();
    match ready.emulator {
        Some(host) => tracing::info!(
            "ready in {elapsed_ms} ms on {url}: enqueue from another shell with PUBSUB_EMULATOR_HOST={host} set"
        ),
        None => tracing::info!(
            "ready in {elapsed_ms} ms on {url}: without an emulator an enqueue runs in its own process (immediate backend)"
        ),
    }
}

/// How dev cron carries out a fire: published as Cloud Scheduler would
/// publish it, through the emulator; without one, run here.
enum Fire<S> {
    Publish(Tasks),
    Here { app: Arc<App<S>>, registry: Arc<Registry> },
}

impl<S: ExecutionStore> Fire<S> {
    async fn new(config: &Config, registry: &Arc<Registry>, app: &Arc<App<S>>, emulated: bool) -> Result<Self, Fatal> {
        if !emulated {
            return Ok(Self::Here { app: Arc::clone(app), registry: Arc::clone(registry) });
        }
        let tasks = Tasks::from_config(Arc::clone(registry), config).await;
        Ok(Self::Publish(tasks.map_err(|error| Fatal::Failed(error.to_string()))?))
    }

    async fn fire(&self, name: String, at: DateTime<Tz>) -> Result<String, String> {
        match self {
            Self::Publish(tasks) => {
                let queued = tasks.enqueue_scheduled(&name).await.map_err(|error| error.to_string())?;
                Ok(format!("published to the emulator, message {}", queued.message_id().unwrap_or("-")))
            }
            Self::Here { app, registry } => {
                let route = registry.get(&name).ok_or_else(|| format!("no route {name}"))?;
                let run_id = at.with_timezone(&Utc).format("%Y-%m-%dT%H:%M:%SZ").to_string();
                match app.run_scheduled(route, &run_id).await {
                    200 => Ok(format!("ran here as {}-{run_id}", whirligig_registry::scheduled_task_id(&name))),
                    status => Err(format!("ran here, answered {status}")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone as _;
    use whirligig_registry::{TaskContext, TaskRoute};

    use super::*;
    use crate::auth::PushAuth;
    use crate::store::Status;

    #[tokio::test]
    async fn a_fire_without_an_emulator_runs_the_scheduled_task_here_once_per_fire_time() {
        let nightly = TaskRoute::new("nightly", |_: TaskContext| async {}).schedule("0 3 * * *");
        let registry = Arc::new(Registry::builder().route(nightly).build().unwrap());
        let app = Arc::new(App::in_memory(Arc::clone(&registry), PushAuth::none()));
        let fire = Fire::Here { app: Arc::clone(&app), registry };
        let at = Tz::Europe__London.with_ymd_and_hms(2026, 12, 2, 3, 0, 0).unwrap();

        let ran = fire.fire("nightly".to_owned(), at).await.unwrap();
        assert_eq!(ran, "ran here as scheduled-nightly-2026-12-02T03:00:00Z");
        let execution = app.store().get("scheduled-nightly-2026-12-02T03:00:00Z").await.unwrap().unwrap();
        assert_eq!((execution.status, execution.attempts), (Status::Successful, 1));
        // The same fire time again (a clock stepped back) is a duplicate, not a second run.
        fire.fire("nightly".to_owned(), at).await.unwrap();
        let again = app.store().get("scheduled-nightly-2026-12-02T03:00:00Z").await.unwrap().unwrap();
        assert_eq!(again.attempts, 1);
        assert_eq!(fire.fire("gone".to_owned(), at).await, Err("no route gone".to_owned()));
    }
}
