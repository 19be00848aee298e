//! The command line: `serve` (the default), `run` (Cloud Run job mode),
//! `routes` and `migrate`. Each command loads the configuration, picks the
//! store, and reports failure as one line on stderr with an exit code.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::value::RawValue;
use tokio::net::TcpListener;
use whirligig_registry::{JobShard, RawArguments, Registry, RegistryError};

use crate::app::App;
use crate::auth::{AuthSetupError, Clock, PushAuth};
use crate::config::{AuthConfig, Config, ConfigError, DatabaseConfig, redact};
use crate::context::Resources;
use crate::executor::{Delivery, Executor, Outcome, Reply};
use crate::server::{SHUTDOWN_GRACE, serve, shutdown_signal};
use crate::store::{ExecutionStore, MemoryStore, PostgresStore, StoreError, migrate};
use crate::telemetry::{ExportError, Telemetry, TelemetryConfig, TraceExport, propagation};

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
    /// List the routes and their resource names.
    Routes,
    /// Apply the database migrations.
    Migrate,
}

/// What stops a command; each says what to fix in one line.
#[derive(Debug, thiserror::Error)]
enum Fatal {
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
    #[error("{0}")]
    Usage(String),
}

impl Fatal {
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Store(_) | Self::Listen(..) => ExitCode::FAILURE,
            Self::Config(_) | Self::Registry(_) | Self::Usage(_) | Self::Auth(_) | Self::Telemetry(_) => {
                ExitCode::from(2)
            }
        }
    }
}

/// Parses the command line and runs the command.
pub(crate) async fn run(registry: Registry) -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let command = cli.command.unwrap_or(Command::Serve);
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => return fail(error.into()),
    };
    let telemetry = match Telemetry::install(&telemetry_for(&command, &config)) {
        Ok(telemetry) => telemetry,
        Err(error) => return fail(error.into()),
    };
    let outcome = execute(command, &config, registry).await;
    // After the command, so the spans of its last moments are sent too.
    telemetry.shutdown().await;
    outcome.unwrap_or_else(fail)
}

/// What stopped the command, as one line on stderr, and its exit code.
fn fail(error: Fatal) -> ExitCode {
    eprintln!("whirligig: {error}");
    error.exit_code()
}

/// Traces for the commands that run tasks; `routes` and `migrate` only log.
fn telemetry_for(command: &Command, config: &Config) -> TelemetryConfig {
    match command {
        Command::Serve | Command::Run { .. } => config.telemetry.clone(),
        Command::Routes | Command::Migrate => TelemetryConfig { traces: TraceExport::None, ..config.telemetry.clone() },
    }
}

async fn execute(command: Command, config: &Config, registry: Registry) -> Result<ExitCode, Fatal> {
    registry.check_names(&config.naming)?;
    match command {
        Command::Serve => serve_command(config, registry).await,
        Command::Run { name, args, kwargs, task_id } => {
            let job = JobRun { name, args, kwargs, task_id };
            run_command(config, &registry, job).await
        }
        Command::Routes => {
            print!("{}", crate::routes::table(&registry, &config.naming));
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

/// The PostgreSQL store, its migrations applied.
async fn postgres(database: &DatabaseConfig) -> Result<PostgresStore, Fatal> {
    let applied = migrate(&database.url).await?;
    tracing::info!(database = %redact(&database.url), applied = applied.len(), "migrations up to date");
    Ok(PostgresStore::new(&database.url, database.pool_size, database.pool_timeout)?)
}

fn warn_in_memory() {
    tracing::warn!("DATABASE_URL is not set: executions are kept in memory and NOT persisted (dev only)");
}

async fn serve_command(config: &Config, registry: Registry) -> Result<ExitCode, Fatal> {
    let registry = Arc::new(registry);
    // Before the database: a bad auth setting should not wait on migrations.
    let auth = push_auth(config)?;
    match &config.database {
        Some(database) => {
            let store = postgres(database).await?;
            serve_app(config, App::postgres(registry, store, auth)).await
        }
        None => {
            warn_in_memory();
            serve_app(config, App::in_memory(registry, auth)).await
        }
    }
}

fn push_auth(config: &Config) -> Result<PushAuth, Fatal> {
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
    let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.port));
    let listener = TcpListener::bind(address).await.map_err(|error| Fatal::Listen(address, error))?;
    tracing::info!(%address, environment = config.naming.environment(), "serving");
    serve(listener, Arc::new(app), shutdown_signal(), SHUTDOWN_GRACE).await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// `whirligig run`'s arguments.
struct JobRun {
    name: String,
    args: Option<String>,
    kwargs: Option<String>,
    task_id: Option<String>,
}

/// Checks the task and its arguments before touching the database, so a
/// usage error is exit 2 whatever state the database is in.
async fn run_command(config: &Config, registry: &Registry, job: JobRun) -> Result<ExitCode, Fatal> {
    let route = registry.get(&job.name).ok_or_else(|| Fatal::Usage(format!("unknown task {:?}", job.name)))?;
    let args = raw_json("--args (TASK_ARGS)", given(job.args.as_deref()).unwrap_or("[]"))?;
    let kwargs = raw_json("--kwargs (TASK_KWARGS)", given(job.kwargs.as_deref()).unwrap_or("{}"))?;
    let arguments = RawArguments::new(args, kwargs).map_err(|error| Fatal::Usage(error.to_string()))?;
    let shard = job_shard();
    let delivery = Delivery {
        route,
        task_id: job.task_id.unwrap_or_else(|| default_task_id(shard)),
        arguments,
        message_id: None,
        subscription: None,
        delivery_attempt: None,
        publish_time: None,
        enqueued_at: None,
        job: shard,
        // A retried job attempt means the previous one is dead: take over at once.
        lease: if shard.is_some_and(|shard| shard.attempt > 0) { Duration::ZERO } else { route.ack_deadline() },
        trace_parent: trace_parent(),
    };
    match &config.database {
        Some(database) => {
            let store = postgres(database).await?;
            let resources = Resources { database: Some(store.clone()) };
            execute_once(Arc::new(store), resources, delivery).await
        }
        None => {
            warn_in_memory();
            execute_once(Arc::new(MemoryStore::default()), Resources::default(), delivery).await
        }
    }
}

async fn execute_once<S: ExecutionStore>(
    store: Arc<S>,
    resources: Resources,
    delivery: Delivery<'_>,
) -> Result<ExitCode, Fatal> {
    let executor = Executor::new(store, Arc::new(resources), tokio_util::sync::CancellationToken::new());
    executor.execute(delivery, job_exit).await
}

/// A job's exit: 0 when the task ran (or had already), 2 for arguments that
/// can never fit, 1 for every other failure.
fn job_exit(outcome: &Outcome) -> Result<ExitCode, Fatal> {
    match outcome {
        Outcome::Succeeded | Outcome::Duplicate | Outcome::Skipped { .. } => Ok(ExitCode::SUCCESS),
        Outcome::BadArguments(error) => Err(Fatal::Usage(error.to_string())),
        _ => Ok(ExitCode::FAILURE),
    }
}

impl Reply for Result<ExitCode, Fatal> {
    fn status(&self) -> Option<u16> {
        None
    }
}

/// The trace a job continues: OpenTelemetry's carrier for a process is the
/// `TRACEPARENT` variable (with `TRACESTATE`).
fn trace_parent() -> Option<opentelemetry::Context> {
    let traceparent = std::env::var("TRACEPARENT").ok()?;
    propagation::from_traceparent(&traceparent, std::env::var("TRACESTATE").ok().as_deref())
}

/// Empty counts as unset, as for every other variable.
fn given(text: Option<&str>) -> Option<&str> {
    text.filter(|text| !text.trim().is_empty())
}

fn raw_json<'a>(flag: &str, text: &'a str) -> Result<&'a RawValue, Fatal> {
    serde_json::from_str(text).map_err(|error| Fatal::Usage(format!("{flag} is not JSON: {error}")))
}

fn env_number(name: &str) -> Option<u32> {
    std::env::var(name).ok()?.parse().ok()
}

/// `CLOUD_RUN_TASK_INDEX` of `CLOUD_RUN_TASK_COUNT`, try `CLOUD_RUN_TASK_ATTEMPT`, when run as a job.
fn job_shard() -> Option<JobShard> {
    Some(JobShard {
        index: env_number("CLOUD_RUN_TASK_INDEX")?,
        count: env_number("CLOUD_RUN_TASK_COUNT").unwrap_or(1),
        attempt: env_number("CLOUD_RUN_TASK_ATTEMPT").unwrap_or(0),
    })
}

/// `{execution}-{index}`, so a retried job attempt is recognised; a fresh
/// UUID outside Cloud Run.
fn default_task_id(shard: Option<JobShard>) -> String {
    match std::env::var("CLOUD_RUN_EXECUTION") {
        Ok(execution) if !execution.is_empty() => format!("{execution}-{}", shard.map_or(0, |shard| shard.index)),
        _ => uuid::Uuid::new_v4().to_string(),
    }
}
