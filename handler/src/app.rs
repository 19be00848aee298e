//! The HTTP application: routes a request to the health checks or the push
//! endpoint, enforces the body limit, and turns an [`Answer`] into a response.
//! Separate from serving, so tests can hand it requests without a socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Body;
use opentelemetry::Context;
use tokio_util::sync::CancellationToken;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use whirligig_registry::Registry;

use crate::auth::{AuthError, PushAuth, Rejection};
use crate::context::Resources;
use crate::executor::Executor;
use crate::push::{Answer, Wrapping, push};
use crate::store::{ExecutionStore, MemoryStore, PostgresStore};
use crate::telemetry::propagation;

/// The largest push body accepted: a Pub/Sub message holds at most 10 MB of
/// data, which base64 inflates by 4/3, plus the envelope around it.
pub const MAX_BODY_BYTES: usize = 14 * 1024 * 1024;

/// The push endpoint's paths; Pub/Sub is configured with the first, and
/// Eventarc posts to the service's root by default.
const PUSH_PATHS: [&str; 3] = ["/tasks/pubsub/", "/tasks/pubsub", "/"];

/// Everything a request needs, shared by every connection.
#[derive(Debug)]
pub struct App<S> {
    registry: Arc<Registry>,
    executor: Executor<S>,
    auth: PushAuth,
    shutdown: CancellationToken,
    draining: AtomicBool,
}

impl App<PostgresStore> {
    /// The app on PostgreSQL; tasks reach the same pool through their context.
    pub fn postgres(registry: Arc<Registry>, store: PostgresStore, auth: PushAuth) -> Self {
        let resources = Resources { database: Some(store.clone()) };
        Self::new(registry, Arc::new(store), resources, auth)
    }
}

impl App<MemoryStore> {
    /// The app on the in-memory store (dev): nothing is persisted.
    pub fn in_memory(registry: Arc<Registry>, auth: PushAuth) -> Self {
        Self::new(registry, Arc::new(MemoryStore::default()), Resources::default(), auth)
    }
}

impl<S: ExecutionStore> App<S> {
    fn new(registry: Arc<Registry>, store: Arc<S>, resources: Resources, auth: PushAuth) -> Self {
        let shutdown = CancellationToken::new();
        let executor = Executor::new(store, Arc::new(resources), shutdown.clone());
        Self { registry, executor, auth, shutdown, draining: AtomicBool::new(false) }
    }

    /// Starts the background work the app needs (fetching the issuer's keys).
    /// [`serve`](crate::server::serve) calls it; an app driven through
    /// [`handle`](Self::handle) alone must call it once, or every verified
    /// push waits for keys that never come and gets 503.
    pub fn start(&self) {
        self.auth.start();
    }

    /// Stops taking new pushes (they get 503) and tells running tasks, through
    /// their context, that the instance is shutting down.
    pub fn begin_shutdown(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.shutdown.cancel();
    }

    /// Answers one request.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let answer = match (request.method(), request.uri().path()) {
            (&Method::GET, "/healthz") => Answer::new(StatusCode::OK, "ok"),
            (&Method::GET, "/readyz") => self.readiness().await,
            (&Method::POST, path) if PUSH_PATHS.contains(&path) => self.traced_push(request).await,
            (_, path) if PUSH_PATHS.contains(&path) || path == "/healthz" || path == "/readyz" => {
                Answer::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => Answer::new(StatusCode::NOT_FOUND, "not found"),
        };
        respond(answer)
    }

    async fn readiness(&self) -> Answer {
        match self.executor.store().ping().await {
            Ok(()) => Answer::new(StatusCode::OK, "ready"),
            Err(error) => {
                tracing::warn!(%error, "not ready");
                Answer::new(StatusCode::SERVICE_UNAVAILABLE, "store unreachable")
            }
        }
    }

    /// A push inside an OpenTelemetry server span. The span starts now but
    /// is entered only once its parent is known, which may be named in the
    /// body; it ends with the status answered.
    async fn traced_push<B>(&self, request: Request<B>) -> Answer
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let span = request_span(request.uri().path());
        let caller = propagation::from_headers(request.headers());
        let answer = self.push(request, &span, caller).await;
        span.set_attribute("http.response.status_code", i64::from(answer.status.as_u16()));
        if answer.status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
        answer
    }

    async fn push<B>(&self, request: Request<B>, span: &Span, caller: Option<Context>) -> Answer
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Authentication comes first: an unauthenticated request costs no body read.
        let refusal = match self.auth.check(request.headers()).await {
            Ok(()) if self.draining.load(Ordering::SeqCst) => Refusal::Draining,
            Ok(()) => match read_push(request).await {
                Ok((wrapping, body)) => {
                    return push(&self.registry, &self.executor, (wrapping, &body), span, caller).await;
                }
                Err(answer) => Refusal::Body(answer),
            },
            Err(AuthError::Forbidden(rejection)) => Refusal::Forbidden(rejection),
            Err(AuthError::KeysUnavailable) => Refusal::NoKeys,
        };
        // Refused before the body names a trace: the caller's goes on.
        propagation::continue_trace(span, None, caller);
        span.in_scope(|| refusal.log());
        refusal.answer()
    }
}

/// The server span of a push to `path`, one of [`PUSH_PATHS`].
fn request_span(path: &str) -> Span {
    let (name, route) = match path {
        "/" => ("POST /", "/"),
        "/tasks/pubsub" => ("POST /tasks/pubsub", "/tasks/pubsub"),
        _ => ("POST /tasks/pubsub/", "/tasks/pubsub/"),
    };
    let span = tracing::info_span!(
        parent: None,
        "request",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
    );
    // For the exporter only: every log line of the push would repeat them.
    span.set_attribute("http.request.method", "POST");
    span.set_attribute("url.scheme", "http");
    span.set_attribute("http.route", route);
    span.set_attribute("url.path", route);
    span
}

/// Why a push was answered without being read or run.
enum Refusal {
    Forbidden(Rejection),
    NoKeys,
    Draining,
    Body(Answer),
}

impl Refusal {
    /// One line saying why, where there is something to say.
    fn log(&self) {
        match self {
            Self::Forbidden(rejection) => {
                tracing::warn!(failed_check = rejection.check(), detail = ?rejection.detail(), "push rejected");
            }
            Self::NoKeys => tracing::warn!("push not verified: the issuer's keys are not available yet"),
            Self::Draining => {}
            Self::Body(answer) => {
                tracing::warn!(status = answer.status.as_u16(), reason = %answer.body, "push refused unread");
            }
        }
    }

    fn answer(self) -> Answer {
        match self {
            Self::Forbidden(_) => Answer::new(StatusCode::FORBIDDEN, "forbidden"),
            Self::NoKeys => Answer::new(StatusCode::SERVICE_UNAVAILABLE, "cannot verify tokens yet; retry"),
            Self::Draining => Answer::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down; retry"),
            Self::Body(answer) => answer,
        }
    }
}

/// How the push is wrapped, and its body.
async fn read_push<B>(request: Request<B>) -> Result<(Wrapping, Bytes), Answer>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let wrapping = Wrapping::of(request.headers())?;
    Ok((wrapping, read_body(request).await?))
}

/// The whole body, or 413 past [`MAX_BODY_BYTES`] (before reading, when the
/// length is declared).
async fn read_body<B>(request: Request<B>) -> Result<Bytes, Answer>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_large = || Answer::new(StatusCode::PAYLOAD_TOO_LARGE, format!("body over {MAX_BODY_BYTES} bytes"));
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse().ok());
    if declared.is_some_and(|length: usize| length > MAX_BODY_BYTES) {
        return Err(too_large());
    }
    match Limited::new(request.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(too_large()),
        Err(error) => {
            Err(Answer::new(StatusCode::BAD_REQUEST, format!("bad request: body could not be read: {error}")))
        }
    }
}

/// The answer for a request whose handling itself failed (it cannot panic:
/// the executor catches task panics; this is the last line of defence).
pub(crate) fn internal_error() -> Response<Full<Bytes>> {
    respond(Answer::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error; retry"))
}

fn respond(answer: Answer) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{}\n", answer.body))));
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    if let Some(seconds) = answer.retry_after {
        headers.insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
    }
    response
}
