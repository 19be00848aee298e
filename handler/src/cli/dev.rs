//! `whirligig dev`: the whole pipeline on one machine. The Pub/Sub emulator
//! (reused, or started here and stopped on exit), the routes provisioned on
//! it with pushes to this server, scheduled routes fired at their times, then
//! serving. Without an emulator, scheduled routes run in this process and an
//! enqueue elsewhere runs in its own. Refused outside the dev environment.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use whirligig_registry::{CallArguments, Registry, Route, Tz, scheduled_task_id};

use super::{Fatal, push_auth, serving_store, warn_in_memory};
use crate::app::App;
use crate::config::{Backend, Config, Loading};
use crate::dev::cron::{self, WallClock};
use crate::dev::emulator::{self, Emulator};
use crate::provision::{self, Options};
use crate::server::{SHUTDOWN_GRACE, listen, serve, shutdown_signal};
use crate::store::ExecutionStore;
use crate::tasks::Tasks;

/// Sets up the pipeline, serves until SIGTERM or SIGINT, then stops what it
/// started. A signal during set-up (an emulator starting, provisioning,
/// migrations) stops it there, the emulator with it.
pub(super) async fn run(config: &Config, registry: Registry, loading: &Loading) -> Result<ExitCode, Fatal> {
    let started = Instant::now();
    if !config.is_dev() {
        let environment = config.naming.environment();
        return Err(Fatal::Usage(format!("dev runs only where TASKS_ENVIRONMENT is dev, not {environment:?}")));
    }
    let stop = CancellationToken::new();
    tokio::spawn(stop_on_signal(stop.clone()));
    let Some(emulator) = until(&stop, emulator(config)).await.transpose()? else { return Ok(stopped_early()) };
    tracing::info!("{emulator}");
    let served = serve_dev(config, registry, loading, &emulator, Start { at: started, stop }).await;
    let stopped = emulator.stop().await.map_err(Fatal::from);
    served.and_then(|code| stopped.map(|()| code))
}

/// The emulator dev runs against: none when `TASKS_BACKEND=immediate` says so.
async fn emulator(config: &Config) -> Result<Emulator, Fatal> {
    if config.enqueue.backend == Backend::Immediate && config.enqueue.backend_chosen {
        return Ok(Emulator::Unavailable { reason: "TASKS_BACKEND=immediate".to_owned() });
    }
    // PATH, read here and not by the configuration: where a launcher is found is not a setting.
    let path = std::env::var_os("PATH");
    Ok(emulator::ensure(emulator_host(config), path.as_deref()).await?)
}

/// The emulator the configuration names: `PUBSUB_EMULATOR_HOST`, which the
/// configuration keeps as Pub/Sub's base URL.
fn emulator_host(config: &Config) -> Option<&str> {
    config.enqueue.emulator.then(|| config.enqueue.pubsub_url.trim_start_matches("http://"))
}

async fn stop_on_signal(stop: CancellationToken) {
    shutdown_signal().await;
    stop.cancel();
}

/// `work`, or `None` if a signal came first (what `work` holds is dropped:
/// an emulator being started is killed).
async fn until<T>(stop: &CancellationToken, work: impl Future<Output = T>) -> Option<T> {
    tokio::select! {
        done = work => Some(done),
        () = stop.cancelled() => None,
    }
}

fn stopped_early() -> ExitCode {
    tracing::info!("stopped before serving");
    ExitCode::SUCCESS
}

/// When dev started, and the signal that stops it.
struct Start {
    at: Instant,
    stop: CancellationToken,
}

async fn serve_dev(
    config: &Config,
    registry: Registry,
    loading: &Loading,
    emulator: &Emulator,
    start: Start,
) -> Result<ExitCode, Fatal> {
    let config = local(config, &registry, loading, emulator.host())?;
    // Loopback only: pushes are not authenticated in dev, and the emulator
    // pushes to localhost. Bound before provisioning: it pushes as soon as a
    // subscription exists.
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, config.port));
    let listener = listen(address).map_err(|error| Fatal::Listen(address, error))?;
    if emulator.host().is_some() {
        let Some(provisioned) = until(&start.stop, provision_on_emulator(&registry, &config)).await else {
            return Ok(stopped_early());
        };
        provisioned?;
    }
    let registry = Arc::new(registry);
    let auth = push_auth(&config)?;
    let ready = Ready { listener, start, emulator: emulator.host() };
    match &config.database {
        Some(database) => {
            let Some(store) = until(&ready.start.stop, serving_store(database)).await else {
                return Ok(stopped_early());
            };
            let store = store?;
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
    let failed = |what: String| Fatal::Failed(format!("provisioning on the emulator: {what}"));
    let summary = provision::provision(registry, config, Options::default(), &mut |line| {
        tracing::debug!("provision: {line}");
    })
    .await
    .map_err(|error| failed(error.to_string()))?;
    if !summary.problems.is_empty() {
        return Err(failed(summary.problems.join("; ")));
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
    start: Start,
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
    let stop = ready.start.stop.clone();
    // Cron stops at the signal, while the server drains what is in flight.
    let cron = cron::run(
        Arc::clone(&registry),
        config.kill_switches.clone(),
        WallClock::system(),
        |route: &Route, at: DateTime<Tz>| fire.fire(route.name().to_owned(), at),
        stop.clone(),
    );
    let serving = serve(ready.listener, Arc::clone(&app), stop.clone().cancelled_owned(), SHUTDOWN_GRACE);
    tokio::join!(serving, within_grace(cron, &stop));
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Dev cron, with the fires still running at the signal given the grace
/// period the server gives requests, then dropped.
async fn within_grace(cron: impl Future<Output = ()>, stop: &CancellationToken) {
    let grace_over = async {
        stop.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        () = cron => {}
        () = grace_over => tracing::warn!("cron: fires still running after {SHUTDOWN_GRACE:?} were dropped"),
    }
}

fn say_ready(config: &Config, ready: &Ready<'_>) {
    let url = format!("http://localhost:{}", config.port);
    let elapsed_ms = ready.start.at.elapsed().as_millis();
    match ready.emulator {
        Some(host) => tracing::info!(
            "ready in {elapsed_ms} ms on {url}; to enqueue from another shell: export PUBSUB_EMULATOR_HOST={host}"
        ),
        None => tracing::info!("ready in {elapsed_ms} ms on {url}"),
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
                // Recorded under its fire time, not the emulator's message id:
                // the emulator counts messages from 1 each time it starts, so
                // with a database kept across restarts an id would repeat.
                let task_id = Some(format!("{}-{}", scheduled_task_id(&name), fire_time(at)));
                let queued = tasks.enqueue_json(&name, CallArguments::default(), task_id).await;
                let queued = queued.map_err(|error| error.to_string())?;
                Ok(format!("published to the emulator as {}", queued.task_id()))
            }
            Self::Here { app, registry } => {
                let route = registry.get(&name).ok_or_else(|| format!("no route {name}"))?;
                let run_id = fire_time(at);
                match app.run_scheduled(route, &run_id).await {
                    200 => Ok(format!("ran here as {}-{run_id}", scheduled_task_id(&name))),
                    status => Err(format!("ran here, answered {status}")),
                }
            }
        }
    }
}

/// A fire time as it goes into an execution id: `2026-12-02T03:00:00Z`.
fn fire_time(at: DateTime<Tz>) -> String {
    at.with_timezone(&Utc).format("%Y-%m-%dT%H:%M:%SZ").to_string()
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
