//! The caller's side: [`Tasks`] enqueues calls of registered tasks and reads
//! their executions back. Arguments are checked against the task's types
//! before anything is written; with a database the call is recorded READY,
//! then published (or, with the immediate backend, run at once through the
//! executor). Nothing here knows Pub/Sub's wire format.
//!
//! A typed enqueue takes the task's own extractors, so arguments of the
//! wrong type do not compile:
//!
//! ```compile_fail,E0277
//! # use serde::{Deserialize, Serialize};
//! # use whirligig_registry::{Kwargs, Task, TaskContext, task};
//! #[derive(Serialize, Deserialize)]
//! struct Welcome { to: String }
//! async fn send_welcome_email(_ctx: TaskContext, Kwargs(_w): Kwargs<Welcome>) {}
//! const SEND_WELCOME_EMAIL: Task<(Kwargs<Welcome>,)> = task!(send_welcome_email);
//!
//! async fn handler(tasks: whirligig_handler::Tasks) {
//!     // A String where the task takes Kwargs<Welcome>: does not compile.
//!     tasks.enqueue(&SEND_WELCOME_EMAIL, "a@b.c".to_owned()).await;
//! }
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::SubsecRound as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing::field::Empty;
use whirligig_registry::{
    ArgumentError, CallArguments, IntoCall, MAX_TASK_ID_BYTES, RawArguments, ReceivedMessage, Registry, Route, Task,
    TaskMessage, UnknownTask,
};

use crate::config::{Backend, Config};
use crate::context::Resources;
use crate::executor::{Delivery, Executor, Outcome, Reply};
use crate::google::credentials::CredentialSource;
use crate::google::pubsub::{PublishError, Publisher};
use crate::google::{CallError, Credentials, Endpoint};
#[cfg(feature = "postgres")]
use crate::store::PostgresStore;
use crate::store::{Enqueued, Execution, ExecutionStore, MemoryStore, ReadyRequest, StoreError};
use crate::telemetry::propagation;

/// Enqueues tasks and reads their results; cheap to clone, safe to share
/// across a web server's requests.
///
/// ```no_run
/// use std::sync::Arc;
///
/// use serde::{Deserialize, Serialize};
/// use whirligig_handler::{Config, Tasks};
/// use whirligig_registry::{Kwargs, Registry, Task, TaskContext, TaskError, task, task_route};
///
/// #[derive(Serialize, Deserialize)]
/// pub struct Welcome {
///     pub to: String,
/// }
///
/// pub async fn send_welcome_email(_ctx: TaskContext, Kwargs(welcome): Kwargs<Welcome>) -> Result<(), TaskError> {
///     println!("welcome, {}", welcome.to);
///     Ok(())
/// }
///
/// /// The task by value: renaming the function, or changing its arguments, breaks the build here.
/// pub const SEND_WELCOME_EMAIL: Task<(Kwargs<Welcome>,)> = task!(send_welcome_email);
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// // Once, at start: the same registry the worker serves.
/// let registry = Arc::new(Registry::builder().route(task_route!(send_welcome_email)).build()?);
/// let config = Config::from_env(&registry)?;
/// let tasks = Tasks::from_config(registry, &config).await?;
///
/// // In a request handler (keep `tasks` in your app's state):
/// let queued = tasks.enqueue(&SEND_WELCOME_EMAIL, Kwargs(Welcome { to: "ada@example.com".into() })).await?;
/// if let Some(execution) = tasks.result(queued.task_id()).await? {
///     println!("{} is {}", queued.task_id(), execution.status);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Tasks {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Arc<Registry>,
    backend: Sending,
}

/// Where calls go, and where their executions are read.
#[derive(Debug)]
enum Sending {
    PubSub {
        publisher: Publisher,
        store: Option<Database>,
    },
    #[cfg(feature = "postgres")]
    ImmediatePostgres(Executor<PostgresStore>),
    ImmediateMemory(Executor<MemoryStore>),
}

/// Where a publishing handle records READY rows and reads results.
#[cfg(feature = "postgres")]
type Database = PostgresStore;

/// Without the `postgres` feature a publishing handle has no database: the
/// store it holds is always `None`, and results are not readable.
#[cfg(not(feature = "postgres"))]
type Database = MemoryStore;

/// A call that was enqueued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    task_id: String,
    message_id: Option<String>,
}

impl Queued {
    /// The execution id its result is read under.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Pub/Sub's message id; none with the immediate backend.
    pub fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }
}

/// Why a call was not enqueued, or a result not read.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// No route has this name; it says the closest, or the known ones.
    #[error(transparent)]
    UnknownTask(#[from] UnknownTask),
    /// The arguments can never fit the task's types: nothing was published.
    #[error(transparent)]
    Arguments(#[from] ArgumentError),
    /// Pub/Sub did not take the message; with a database, the execution says
    /// `not published` and enqueueing the same task id again retries.
    #[error("not published: {0}")]
    Publish(#[from] PublishError),
    /// The store could not record the call or read the result.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The caller's task id is longer than a message may carry.
    #[error("the task id is {0} bytes, over the limit of {MAX_TASK_ID_BYTES}")]
    TaskIdTooLong(usize),
    /// Results are kept by the store of the process that runs the tasks.
    #[error("results need DATABASE_URL: executions are recorded in the database of the service that runs them")]
    NoResults,
    /// What the configuration names cannot be used.
    #[error("cannot enqueue: {0}")]
    Setup(String),
}

impl Tasks {
    /// The handle for `registry` under `config`: the backend `TASKS_BACKEND`
    /// chooses, PostgreSQL when `DATABASE_URL` is set (migrated already: the
    /// service does that), memory otherwise (immediate backend only).
    pub async fn from_config(registry: Arc<Registry>, config: &Config) -> Result<Self, EnqueueError> {
        let backend = match (config.enqueue.backend, database(config)?) {
            (Backend::PubSub, store) => Sending::PubSub { publisher: publisher(&registry, config).await?, store },
            #[cfg(feature = "postgres")]
            (Backend::Immediate, Some(store)) => {
                let resources = Resources { database: Some(store.clone()) };
                Sending::ImmediatePostgres(executor(config, store, resources))
            }
            (Backend::Immediate, _) => {
                Sending::ImmediateMemory(executor(config, MemoryStore::default(), Resources::default()))
            }
        };
        Ok(Self { inner: Arc::new(Inner { registry, backend }) })
    }

    /// Enqueues a call of `task` with its own argument types, under a new
    /// UUID v4 task id.
    pub async fn enqueue<M>(&self, task: &Task<M>, arguments: impl IntoCall<M>) -> Result<Queued, EnqueueError> {
        self.enqueue_json(task.name(), arguments.into_call()?, None).await
    }

    /// Enqueues under a task id of the caller's: enqueueing the same id twice
    /// (a retried web request) records and runs it once.
    pub async fn enqueue_with_id<M>(
        &self,
        task_id: impl Into<String>,
        task: &Task<M>,
        arguments: impl IntoCall<M>,
    ) -> Result<Queued, EnqueueError> {
        self.enqueue_json(task.name(), arguments.into_call()?, Some(task_id.into())).await
    }

    /// Enqueues a call given as JSON (the CLI, payloads built elsewhere): the
    /// arguments are checked against the task's types exactly as the executor
    /// checks them, and refused here when they can never fit.
    pub async fn enqueue_json(
        &self,
        task_name: &str,
        call: CallArguments,
        task_id: Option<String>,
    ) -> Result<Queued, EnqueueError> {
        let route = self.route(task_name)?;
        let mut message = TaskMessage::new(route.name(), call.args, call.kwargs);
        if let Some(task_id) = task_id {
            if task_id.len() > MAX_TASK_ID_BYTES {
                return Err(EnqueueError::TaskIdTooLong(task_id.len()));
            }
            message.task_id = task_id;
        }
        let span = self.span(route, &message.task_id);
        self.send(route, message).instrument(span).await
    }

    /// Publishes what Cloud Scheduler publishes for `task_name`, to trigger a
    /// cron task by hand. Its execution is `scheduled-{name}-{message id}`.
    pub async fn enqueue_scheduled(&self, task_name: &str) -> Result<Queued, EnqueueError> {
        let route = self.route(task_name)?;
        let message = TaskMessage::scheduled(route.name());
        let span = self.span(route, &message.task_id);
        self.send(route, message).instrument(span).await
    }

    /// The execution recorded under `task_id`, if any.
    pub async fn result(&self, task_id: &str) -> Result<Option<Execution>, EnqueueError> {
        let execution = match &self.inner.backend {
            Sending::PubSub { store: Some(store), .. } => store.get(task_id).await?,
            Sending::PubSub { store: None, .. } => return Err(EnqueueError::NoResults),
            #[cfg(feature = "postgres")]
            Sending::ImmediatePostgres(executor) => executor.store().get(task_id).await?,
            Sending::ImmediateMemory(executor) => executor.store().get(task_id).await?,
        };
        Ok(execution)
    }

    /// A producer span for a publish; for a run at once, the task's span is child enough.
    fn span(&self, route: &Route, task_id: &str) -> tracing::Span {
        match self.inner.backend {
            Sending::PubSub { .. } => publish_span(route, task_id),
            _ => tracing::info_span!("enqueue", otel.name = format_args!("run {}", route.name()), task.id = task_id),
        }
    }

    fn route(&self, task_name: &str) -> Result<&Route, EnqueueError> {
        Ok(self.inner.registry.find(task_name)?)
    }

    async fn send(&self, route: &Route, message: TaskMessage) -> Result<Queued, EnqueueError> {
        // Serialised once: the arguments are checked and stored as the worker
        // will read them, from the very bytes published.
        let payload = Bytes::from(message.to_json());
        let received = ReceivedMessage::parse(&payload).map_err(|error| EnqueueError::Setup(error.to_string()))?;
        let arguments = received.arguments();
        route.check_arguments(&arguments)?;
        match &self.inner.backend {
            Sending::PubSub { publisher, store } => {
                let call = Call { route, message: &message, payload: payload.clone(), arguments };
                call.publish(publisher, store.as_ref()).await
            }
            #[cfg(feature = "postgres")]
            Sending::ImmediatePostgres(executor) => Ok(run_now(executor, route, &message, arguments).await),
            Sending::ImmediateMemory(executor) => Ok(run_now(executor, route, &message, arguments).await),
        }
    }
}

/// A call on its way to Pub/Sub, its arguments already checked.
struct Call<'a> {
    route: &'a Route,
    message: &'a TaskMessage,
    /// The message's bytes, as published.
    payload: Bytes,
    /// Its arguments, read from those bytes.
    arguments: RawArguments<'a>,
}

impl Call<'_> {
    /// READY in the store, then published; a publish that failed for good is
    /// recorded as such. A scheduled message has no row before its run: its
    /// execution id needs the message id.
    async fn publish(&self, publisher: &Publisher, store: Option<&Database>) -> Result<Queued, EnqueueError> {
        let task_id = &self.message.task_id;
        let store = store.filter(|_| !self.is_scheduled());
        if let Some(store) = store {
            self.ready(store).await?;
        }
        let attributes = propagation::to_attributes(&tracing::Span::current());
        match publisher.publish(self.route.name(), task_id, self.payload.clone(), attributes).await {
            Ok(message_id) => {
                tracing::Span::current().record("messaging.message.id", message_id.as_str());
                let task_id = if self.is_scheduled() { format!("{task_id}-{message_id}") } else { task_id.clone() };
                Ok(Queued { task_id, message_id: Some(message_id) })
            }
            Err(error) => {
                if let Some(store) = store
                    && let Err(unrecorded) = store.not_published(task_id, &error.to_string()).await
                {
                    tracing::warn!(%unrecorded, "the failed publish could not be recorded; the row stays READY");
                }
                Err(error.into())
            }
        }
    }

    async fn ready(&self, store: &Database) -> Result<(), EnqueueError> {
        let Some(enqueued_at) = self.message.enqueued_at else { return Ok(()) };
        let (task_id, task_name) = (self.message.task_id.as_str(), self.route.name());
        let (args, kwargs) = (self.arguments.args(), self.arguments.kwargs());
        let request = ReadyRequest { task_id, task_name, args, kwargs, enqueued_at };
        if let Enqueued::Known(status) = store.enqueue(&request).await? {
            tracing::debug!(%status, "the task id is known already: published again, run at most once");
        }
        Ok(())
    }

    fn is_scheduled(&self) -> bool {
        self.message.enqueued_at.is_none()
    }
}

fn publish_span(route: &Route, task_id: &str) -> tracing::Span {
    tracing::info_span!(
        "enqueue",
        otel.name = format_args!("publish {}", route.name()),
        otel.kind = "producer",
        messaging.system = "gcp_pubsub",
        messaging.operation.type = "send",
        messaging.destination.name = route.path(),
        messaging.message.id = Empty,
        task.name = route.name(),
        task.id = task_id,
    )
}

/// Runs the call here and now (the immediate backend); its outcome is in the store.
async fn run_now<S: ExecutionStore>(
    executor: &Executor<S>,
    route: &Route,
    message: &TaskMessage,
    arguments: RawArguments<'_>,
) -> Queued {
    let scheduled = message.enqueued_at.is_none();
    let task_id =
        if scheduled { format!("{}-{}", message.task_id, uuid::Uuid::new_v4()) } else { message.task_id.clone() };
    let delivery = Delivery {
        route,
        task_id: task_id.clone(),
        arguments,
        message_id: None,
        subscription: None,
        delivery_attempt: None,
        publish_time: None,
        enqueued_at: message.enqueued_at.map(|at| at.trunc_subsecs(6)),
        job: None,
        lease: route.ack_deadline(),
        trace_parent: None,
    };
    executor.execute(delivery, |_: &Outcome| Ran).await;
    Queued { task_id, message_id: None }
}

/// A delivery run by the immediate backend answers nobody.
struct Ran;

impl Reply for Ran {
    fn status(&self) -> Option<u16> {
        None
    }
}

/// The store `DATABASE_URL` names, if set.
#[cfg(feature = "postgres")]
fn database(config: &Config) -> Result<Option<PostgresStore>, EnqueueError> {
    let Some(database) = &config.database else { return Ok(None) };
    Ok(Some(PostgresStore::new(&database.url, database.pool_size, database.pool_timeout)?))
}

#[cfg(not(feature = "postgres"))]
fn database(config: &Config) -> Result<Option<Database>, EnqueueError> {
    match config.database {
        Some(_) => Err(EnqueueError::Setup(
            "DATABASE_URL is set, but whirligig-handler was built without its `postgres` feature".to_owned(),
        )),
        None => Ok(None),
    }
}

fn executor<S: ExecutionStore>(config: &Config, store: S, resources: Resources) -> Executor<S> {
    Executor::new(Arc::new(store), Arc::new(resources), CancellationToken::new())
        .with_kill_switches(config.kill_switches.clone())
}

async fn publisher(registry: &Registry, config: &Config) -> Result<Publisher, EnqueueError> {
    let project = config
        .pubsub_project()
        .ok_or_else(|| EnqueueError::Setup("TASKS_BACKEND=pubsub needs GCP_PROJECT_ID".to_owned()))?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|error| EnqueueError::Setup(format!("an HTTP client: {error}")))?;
    let credentials = Credentials::new(&config.enqueue.credentials, &client).await.map_err(setup)?;
    if let CredentialSource::Metadata(host) = &config.enqueue.credentials {
        tracing::debug!(host, "credentials from the metadata server");
    }
    let endpoint = Endpoint { base_url: config.enqueue.pubsub_url.clone(), credentials };
    let topics = registry.routes().map(|route| (route.name().to_owned(), route.topic_name(&config.naming)));
    Ok(Publisher::new(client, endpoint, project, topics, config.enqueue.publish_timeout))
}

fn setup(error: CallError) -> EnqueueError {
    EnqueueError::Setup(error.to_string())
}
