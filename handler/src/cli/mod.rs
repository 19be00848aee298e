//! The command line: `serve` (the default), `run` (Cloud Run job mode,
//! [`job`]), `enqueue` and `result` ([`enqueue`]), `provision`
//! ([`provision`]), `routes` ([`routes`]) and `migrate`. Each command loads the
//! configuration, picks the store, and reports failure as one line on stderr
//! with an exit code: 0 done, 1 the work failed, 2 usage or configuration.

mod dev;
mod enqueue;
mod job;
mod provision;
mod routes;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use whirligig_registry::{Registry, RegistryError};

use crate::app::App;
use crate::auth::{AuthSetupError, Clock, PushAuth};
use crate::config::{AuthConfig, Config, ConfigError, DatabaseConfig, Loading, Needs, redact};
use crate::dev::emulator::EmulatorError;
use crate::server::{SHUTDOWN_GRACE, listen, serve, shutdown_signal};
use crate::store::{ExecutionStore, PostgresStore, StoreError, migrate, migrate_within};
use crate::telemetry::{ExportError, Telemetry, TelemetryConfig, TraceExport};

/// Who the running binary is: a service's own binary reports its own name and
/// version in `--help`, `--version`, error lines and traces' `service.name`.
/// [`binary!`](crate::binary) makes it from the binary's Cargo manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binary {
    /// The binary's name (`CARGO_BIN_NAME`).
    pub name: &'static str,
    /// Its package's version (`CARGO_PKG_VERSION`).
    pub version: &'static str,
}

/// Background tasks for Google Cloud Run.
#[derive(Debug, Parser)]
#[command(name = "whirligig", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the Pub/Sub push endpoint on 0.0.0.0:$PORT (the default command).
    Serve,
    /// The whole pipeline on this machine: the Pub/Sub emulator (started if need be), the routes
    /// provisioned on it, scheduled routes fired at their times, and the server.
    Dev,
    /// Run one task to completion, as a Cloud Run job does.
    Run {
        /// The task's name.
        name: String,
        /// Positional arguments, a JSON list (a job's overrides set TASK_ARGS more easily).
        #[arg(long, env = "TASK_ARGS")]
        args: Option<String>,
        /// Keyword arguments, a JSON object.
        #[arg(long, env = "TASK_KWARGS")]
        kwargs: Option<String>,
        /// The execution id (default: {CLOUD_RUN_EXECUTION}-{CLOUD_RUN_TASK_INDEX}, or a new UUID).
        #[arg(long)]
        task_id: Option<String>,
    },
    /// Enqueue a task: publish it to its topic (or, with TASKS_BACKEND=immediate, run it here).
    Enqueue {
        /// The task's name.
        name: String,
        /// Positional arguments, a JSON list.
        #[arg(long)]
        args: Option<String>,
        /// Keyword arguments, a JSON object.
        #[arg(long)]
        kwargs: Option<String>,
        /// The task id (default: a new UUID); enqueueing one id twice runs it once.
        #[arg(long)]
        task_id: Option<String>,
        /// Publish what Cloud Scheduler publishes for the task: trigger a cron task by hand.
        #[arg(long)]
        scheduled: bool,
        /// Follow the execution until it ends (needs DATABASE_URL), at most SECONDS (default 60).
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, require_equals = true, default_missing_value = "60")]
        wait: Option<u64>,
    },
    /// Print the execution recorded under TASK_ID as JSON.
    Result {
        /// The execution id `enqueue` printed.
        task_id: String,
    },
    /// Create or update every route's topic, push subscription, dead letters and scheduler job.
    Provision {
        /// Print the plan and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Delete topics, subscriptions and jobs of this environment and namespace that no route uses.
        #[arg(long)]
        prune: bool,
    },
    /// List the routes and their resource names.
    Routes,
    /// Apply the database migrations.
    Migrate,
}

/// What stops a command; each says what to fix in one line.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Fatal {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Auth(#[from] AuthSetupError),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error(transparent)]
    Telemetry(#[from] ExportError),
    #[error(transparent)]
    Emulator(#[from] EmulatorError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

impl Fatal {
    pub(crate) fn exit_code(&self) -> ExitCode {
        match self {
            Self::Emulator(EmulatorError::InvalidHost(_)) => ExitCode::from(2),
            Self::Store(_) | Self::Listen(..) | Self::Failed(_) | Self::Emulator(_) => ExitCode::FAILURE,
            Self::Config(_) | Self::Registry(_) | Self::Usage(_) | Self::Auth(_) | Self::Telemetry(_) => {
                ExitCode::from(2)
            }
        }
    }
}

/// Parses the command line and runs the command.
pub(crate) async fn run(registry: Result<Registry, RegistryError>, binary: Binary) -> ExitCode {
    let command = match parse(binary) {
        Ok(command) => command,
        Err(exit) => return exit,
    };
    let registry = match registry {
        Ok(registry) => registry,
        Err(error) => return fail(binary, error.into()),
    };
    let loading = Loading { needs: needs(&command), service_name: binary.name };
    let config = match Config::load(&registry, &|name| std::env::var(name).ok(), &loading) {
        Ok(config) => config,
        Err(error) => return fail(binary, error.into()),
    };
    let telemetry = match Telemetry::install(&telemetry_for(&command, &config)) {
        Ok(telemetry) => telemetry,
        Err(error) => return fail(binary, error.into()),
    };
    let outcome = execute(command, &config, registry, &loading).await;
    // After the command, so the spans of its last moments are sent too.
    telemetry.shutdown().await;
    outcome.unwrap_or_else(|error| fail(binary, error))
}

/// The command, under the binary's own name; `--help` and `--version` exit here.
fn parse(binary: Binary) -> Result<Command, ExitCode> {
    let command = Cli::command().name(binary.name).bin_name(binary.name).version(binary.version);
    let parsed = command.try_get_matches().and_then(|matches| Cli::from_arg_matches(&matches));
    match parsed {
        Ok(cli) => Ok(cli.command.unwrap_or(Command::Serve)),
        Err(error) => {
            let _ = error.print();
            Err(if error.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS })
        }
    }
}

/// What each command needs set outside dev: names need nothing.
fn needs(command: &Command) -> Needs {
    match command {
        Command::Serve => Needs::EVERYTHING,
        Command::Run { .. } => Needs::JOB,
        Command::Enqueue { .. } | Command::Result { .. } => Needs::PROJECT,
        Command::Provision { .. } => Needs::PROVISION,
        Command::Migrate => Needs::DATABASE,
        Command::Routes => Needs::NAMES,
        // Refused outside dev by the command itself, which says so.
        Command::Dev => Needs::NAMES,
    }
}

/// What stopped the command, as one line on stderr, and its exit code.
fn fail(binary: Binary, error: Fatal) -> ExitCode {
    eprintln!("{}: {error}", binary.name);
    error.exit_code()
}

/// Traces for the commands that run tasks; `routes` and `migrate` only log.
fn telemetry_for(command: &Command, config: &Config) -> TelemetryConfig {
    match command {
        Command::Serve | Command::Dev | Command::Run { .. } | Command::Enqueue { .. } => config.telemetry.clone(),
        Command::Result { .. } | Command::Provision { .. } | Command::Routes | Command::Migrate => {
            TelemetryConfig { traces: TraceExport::None, ..config.telemetry.clone() }
        }
    }
}

async fn execute(command: Command, config: &Config, registry: Registry, loading: &Loading) -> Result<ExitCode, Fatal> {
    registry.check_names(&config.naming)?;
    match command {
        Command::Serve => serve_command(config, registry).await,
        Command::Dev => dev::run(config, registry, loading).await,
        Command::Run { name, args, kwargs, task_id } => {
            let job = job::JobRun { name, args, kwargs, task_id };
            job::run(config, &registry, job).await
        }
        Command::Enqueue { name, args, kwargs, task_id, scheduled, wait } => {
            let wait = wait.map(Duration::from_secs);
            let run = enqueue::EnqueueRun { name, args, kwargs, task_id, scheduled, wait };
            enqueue::enqueue(config, registry, run).await
        }
        Command::Result { task_id } => enqueue::result(config, registry, &task_id).await,
        Command::Provision { dry_run, prune } => {
            provision::run(config, &registry, crate::provision::Options { dry_run, prune }).await
        }
        Command::Routes => {
            print!("{}", routes::table(&registry, &config.naming));
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let database = config.database.as_ref().ok_or_else(|| Fatal::Usage("migrate needs DATABASE_URL".into()))?;
            let applied = migrate(&database.url).await?;
            println!("{} migration(s) applied to {}", applied.len(), redact(&database.url));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// How long `run` waits for a database that is not there before it gives up.
const JOB_DATABASE_WAIT: Duration = Duration::from_secs(60);

/// The store of a server, which listens whether or not the database is
/// there: migrated before it listens, or, when the database is not there,
/// in the background, with pushes answered 503 and `/readyz` saying why
/// until it is.
pub(crate) async fn serving_store(database: &DatabaseConfig) -> Result<PostgresStore, Fatal> {
    let store = PostgresStore::migrating(&database.url, database.pool_size, database.pool_timeout).await?;
    tracing::info!(database = %redact(&database.url), "store open");
    Ok(store)
}

/// The PostgreSQL store, its migrations applied, for a command that runs
/// once (`run`): a database that is not there yet is tried again with
/// backoff for [`JOB_DATABASE_WAIT`], then the command fails with the reason.
pub(crate) async fn postgres(database: &DatabaseConfig) -> Result<PostgresStore, Fatal> {
    let failed = |error: &StoreError, tries: u32| {
        tracing::warn!(%error, tries, "the database is not there yet: trying again");
        true
    };
    let applied = migrate_within(&database.url, Some(JOB_DATABASE_WAIT), failed).await.map_err(|error| {
        Fatal::Failed(format!("the database did not answer within {}s: {error}", JOB_DATABASE_WAIT.as_secs()))
    })?;
    tracing::info!(database = %redact(&database.url), applied = applied.len(), "migrations up to date");
    Ok(PostgresStore::new(&database.url, database.pool_size, database.pool_timeout)?)
}

/// Applies the migrations that are missing.
pub(crate) async fn migrated(database: &DatabaseConfig) -> Result<(), Fatal> {
    let applied = migrate(&database.url).await?;
    tracing::info!(database = %redact(&database.url), applied = applied.len(), "migrations up to date");
    Ok(())
}

pub(crate) fn warn_in_memory() {
    tracing::warn!("DATABASE_URL is not set: executions are kept in memory and NOT persisted (dev only)");
}

async fn serve_command(config: &Config, registry: Registry) -> Result<ExitCode, Fatal> {
    let registry = Arc::new(registry);
    // Before the database: a bad auth setting should not wait on migrations.
    let auth = push_auth(config)?;
    match &config.database {
        Some(database) => {
            let store = serving_store(database).await?;
            serve_app(config, App::postgres(registry, store, auth)).await
        }
        None => {
            warn_in_memory();
            serve_app(config, App::in_memory(registry, auth)).await
        }
    }
}

pub(crate) fn push_auth(config: &Config) -> Result<PushAuth, Fatal> {
    let auth = match &config.auth {
        AuthConfig::None => {
            tracing::warn!("TASKS_AUTH=none: push requests are NOT authenticated (dev only)");
            Ok(PushAuth::none())
        }
        AuthConfig::Oidc(settings) => {
            tracing::info!(issuer = settings.issuer, audience = settings.audience, "verifying push tokens (oidc)");
            PushAuth::oidc(settings, Clock::system())
        }
        AuthConfig::CloudRunIam(settings) => {
            tracing::info!(audience = settings.audience, "checking the claims of push tokens Cloud Run verified");
            PushAuth::cloud_run_iam(settings, Clock::system())
        }
    };
    auth.map_err(Fatal::Auth)
}

async fn serve_app<S: ExecutionStore>(config: &Config, app: App<S>) -> Result<ExitCode, Fatal> {
    let app = app.with_kill_switches(config.kill_switches.clone());
    let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.port));
    let listener = listen(address).map_err(|error| Fatal::Listen(address, error))?;
    tracing::info!(%address, environment = config.naming.environment(), "serving");
    serve(listener, Arc::new(app), shutdown_signal(), SHUTDOWN_GRACE).await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
