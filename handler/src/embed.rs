//! The push endpoint as a `tower::Service`, for a web app that serves its own
//! routes on the same port (an axum `Router` nests it). It sets up what
//! `serve` sets up, from the same environment, but never listens: the app does.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Body;
use tower_service::Service;
use whirligig_registry::{Registry, RegistryError};

use crate::app::App;
use crate::cli::{Binary, Fatal, push_auth, serving_store, warn_in_memory};
use crate::config::{Config, Loading, Needs};
use crate::server::{Detachable, shutdown_signal};
use crate::store::{MemoryStore, PostgresStore};
use crate::tasks::{EnqueueError, Tasks};
use crate::telemetry::Telemetry;

/// The Pub/Sub push endpoint and the health checks (`/healthz`, `/readyz`)
/// as a [`tower_service::Service`]; cheap to clone. It answers pushes at
/// `/tasks/pubsub/`, `/tasks/pubsub` and `/`, so it works as a `Router`'s
/// `fallback_service` and under `nest_service("/tasks/pubsub", ...)` alike.
#[derive(Debug, Clone)]
pub struct PushService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    app: Served,
    tasks: Tasks,
    config: Config,
    /// Taken by [`PushService::finish`], which flushes it.
    telemetry: Mutex<Option<Telemetry>>,
}

/// The app on the store the configuration chose.
#[derive(Debug)]
enum Served {
    Postgres(App<PostgresStore>),
    Memory(App<MemoryStore>),
}

/// Why the push endpoint could not be set up; it says what to fix.
#[derive(thiserror::Error)]
#[error(transparent)]
pub struct PushServiceError(#[from] Cause);

#[derive(Debug, thiserror::Error)]
enum Cause {
    #[error(transparent)]
    Setup(#[from] Fatal),
    #[error(transparent)]
    Tasks(#[from] EnqueueError),
}

// A `main` that returns the error prints its `Debug`: make that the message.
impl fmt::Debug for PushServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl PushService {
    /// Sets up what `serve` does before it listens, from the environment:
    /// the configuration (outside dev, everything `serve` needs), logs and
    /// trace export, push authentication, the store (PostgreSQL, migrated,
    /// when `DATABASE_URL` is set; memory in dev otherwise), the kill
    /// switches and the [`Tasks`] handle; then starts fetching the issuer's
    /// keys. Call it once, inside the Tokio runtime.
    pub async fn from_env(registry: Result<Registry, RegistryError>, binary: Binary) -> Result<Self, PushServiceError> {
        let (registry, config, telemetry) = configured(registry, binary).map_err(Cause::from)?;
        match open(&config, registry).await {
            Ok((app, tasks)) => {
                app.start();
                tracing::info!(environment = config.naming.environment(), "push endpoint ready");
                Ok(Self::new(app, tasks, config, Some(telemetry)))
            }
            Err(cause) => {
                telemetry.shutdown().await;
                Err(PushServiceError(cause))
            }
        }
    }

    fn new(app: Served, tasks: Tasks, config: Config, telemetry: Option<Telemetry>) -> Self {
        let telemetry = Mutex::new(telemetry);
        Self { inner: Arc::new(Inner { app, tasks, config, telemetry }) }
    }

    /// Enqueues the registry's tasks under the same configuration: the web
    /// app's handlers keep a clone in their state.
    pub fn tasks(&self) -> &Tasks {
        &self.inner.tasks
    }

    /// The configuration it was set up with (`port` is where to listen).
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Completes on SIGTERM (Cloud Run's stop signal) or SIGINT, after
    /// [`begin_shutdown`](Self::begin_shutdown): for axum's
    /// `with_graceful_shutdown`, which then lets in-flight pushes finish.
    /// Axum waits for them without a limit; Cloud Run does not, and kills the
    /// instance 10 seconds after SIGTERM.
    pub fn drain_on_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let service = self.clone();
        async move {
            shutdown_signal().await;
            service.begin_shutdown();
        }
    }

    /// Stops taking new pushes (they get 503, and Pub/Sub redelivers them
    /// elsewhere) and tells running tasks, through their context, that the
    /// instance is shutting down.
    pub fn begin_shutdown(&self) {
        tracing::info!("shutting down: draining in-flight pushes");
        match &self.inner.app {
            Served::Postgres(app) => app.begin_shutdown(),
            Served::Memory(app) => app.begin_shutdown(),
        }
    }

    /// Once the server has returned: exports the spans still queued. Later
    /// calls do nothing.
    pub async fn finish(&self) {
        let telemetry = self.inner.telemetry.lock().unwrap_or_else(PoisonError::into_inner).take();
        tracing::info!("stopped");
        if let Some(telemetry) = telemetry {
            telemetry.shutdown().await;
        }
    }
}

/// The configuration `serve` loads, and the log subscriber and trace export
/// it describes.
fn configured(
    registry: Result<Registry, RegistryError>,
    binary: Binary,
) -> Result<(Registry, Config, Telemetry), Fatal> {
    let registry = registry?;
    let loading = Loading { needs: Needs::EVERYTHING, service_name: binary.name };
    let config = Config::load(&registry, &|name| std::env::var(name).ok(), &loading)?;
    let telemetry = Telemetry::install(&config.telemetry)?;
    Ok((registry, config, telemetry))
}

/// Push authentication (before the database: a bad auth setting should not
/// wait on migrations), the store, and the handle that enqueues.
async fn open(config: &Config, registry: Registry) -> Result<(Served, Tasks), Cause> {
    registry.check_names(&config.naming).map_err(Fatal::from)?;
    let registry = Arc::new(registry);
    let auth = push_auth(config)?;
    let app = match &config.database {
        Some(database) => Served::Postgres(App::postgres(Arc::clone(&registry), serving_store(database).await?, auth)),
        None => {
            warn_in_memory();
            Served::Memory(App::in_memory(Arc::clone(&registry), auth))
        }
    };
    let tasks = Tasks::from_config(registry, config).await?;
    Ok((app.with_kill_switches(config), tasks))
}

impl Served {
    fn with_kill_switches(self, config: &Config) -> Self {
        let switches = config.kill_switches.clone();
        match self {
            Self::Postgres(app) => Self::Postgres(app.with_kill_switches(switches)),
            Self::Memory(app) => Self::Memory(app.with_kill_switches(switches)),
        }
    }

    fn start(&self) {
        match self {
            Self::Postgres(app) => app.start(),
            Self::Memory(app) => app.start(),
        }
    }

    async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match self {
            Self::Postgres(app) => app.handle(request).await,
            Self::Memory(app) => app.handle(request).await,
        }
    }
}

impl<B> Service<Request<B>> for PushService
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        // As `serve` does it: a caller that goes away (Pub/Sub at its push
        // deadline) must not cancel a task between its claim and its finish.
        let handling = Detachable::new(async move { inner.app.handle(request).await });
        Box::pin(handling.map(Ok))
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};

    use super::*;
    use crate::auth::PushAuth;

    /// The service in dev, in memory and unauthenticated, with no telemetry
    /// installed: what `from_env` builds, without the environment.
    async fn service() -> PushService {
        let registry = Arc::new(crate::demo::registry().expect("the demo registry builds"));
        let config = Config::from_lookup(&registry, &|_| None).expect("dev needs nothing");
        let tasks = Tasks::from_config(Arc::clone(&registry), &config).await.expect("immediate in dev");
        let app = Served::Memory(App::in_memory(registry, PushAuth::none()));
        PushService::new(app, tasks, config, None)
    }

    async fn call(service: &mut PushService, method: Method, path: &str) -> (StatusCode, Bytes) {
        std::future::poll_fn(|cx| Service::<Request<Full<Bytes>>>::poll_ready(service, cx)).await.expect("ready");
        let request = Request::builder().method(method).uri(path).body(Full::new(Bytes::new())).expect("a request");
        let response = service.call(request).await.expect("infallible");
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body()).await.expect("a full body").to_bytes();
        (status, body)
    }

    #[tokio::test]
    async fn it_answers_without_a_socket_and_refuses_pushes_once_draining() {
        let mut service = service().await;
        assert_eq!(call(&mut service, Method::GET, "/healthz").await, (StatusCode::OK, Bytes::from("ok\n")));
        assert_eq!(call(&mut service, Method::GET, "/nowhere").await.0, StatusCode::NOT_FOUND);
        // Axum's `nest_service("/tasks/pubsub", ..)` hands on `/` for both
        // `/tasks/pubsub` and `/tasks/pubsub/`; a fallback, the path as sent.
        for path in ["/tasks/pubsub/", "/tasks/pubsub", "/"] {
            let (status, _) = call(&mut service, Method::POST, path).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: an empty push is malformed");
        }

        service.begin_shutdown();
        let (status, _) = call(&mut service, Method::POST, "/tasks/pubsub/").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        service.finish().await;
    }
}
