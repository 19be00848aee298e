//! The HTTP application: routes a request to the health checks or the push
//! endpoint, and runs a push through its one pipeline (token, body limit,
//! envelope, route, executor, answer, span). Separate from serving, so
//! tests can hand it requests without a socket.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Body;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use whirligig_registry::{RawArguments, ReceivedMessage, Registry, Route, scheduled_task_id};

use crate::answer::{ALIVE, Answer, READY, Refusal, answer};
use crate::auth::PushAuth;
use crate::config::KillSwitches;
use crate::context::Resources;
use crate::executor::{Delivery, Executor};
use crate::push::{Pushed, Wrapping};
use crate::store::{ExecutionStore, MemoryStore, PostgresStore};
use crate::telemetry::propagation;

/// The largest push body accepted: a Pub/Sub message holds at most 10 MB of
/// data, which base64 inflates by 4/3, plus the envelope around it.
pub const MAX_BODY_BYTES: usize = 14 * 1024 * 1024;

/// How long a push's body may take to arrive once its head has: Pub/Sub
/// sends the whole push at once, and even [`MAX_BODY_BYTES`] crosses a slow
/// link in a few seconds. A client slower than this gets 408 and is dropped,
/// so it cannot hold a buffer (and a share of [`BODY_BYTES_IN_FLIGHT`]) for long.
pub(crate) const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The bytes of bodies read at once across all connections: four of the
/// largest pushes, or thousands of typical ones (a few KB each), and far
/// under a 512 MiB instance. Each body reserves its declared length (or
/// [`MAX_BODY_BYTES`] when undeclared) before it is read; past this total a
/// push is answered 503 unread, and Pub/Sub retries it later.
pub(crate) const BODY_BYTES_IN_FLIGHT: usize = 64 * 1024 * 1024;

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
    /// Permits of [`BODY_BYTES_IN_FLIGHT`], one per byte being read.
    reading: Semaphore,
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
        let reading = Semaphore::new(BODY_BYTES_IN_FLIGHT);
        Self { registry, executor, auth, shutdown, draining: AtomicBool::new(false), reading }
    }

    /// Turns away, as skipped, the pushes of routes these switches turn off
    /// (none are, by default).
    #[must_use]
    pub fn with_kill_switches(self, kill_switches: KillSwitches) -> Self {
        Self { executor: self.executor.with_kill_switches(kill_switches), ..self }
    }

    /// Logs each task's return value (`whirligig dev`, where results are read in the log).
    #[must_use]
    pub(crate) fn with_results_logged(self) -> Self {
        Self { executor: self.executor.with_results_logged(), ..self }
    }

    /// Where the app records executions: what a result lookup reads.
    pub fn store(&self) -> &S {
        self.executor.store()
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
            (&Method::GET, "/healthz") => ALIVE,
            (&Method::GET, "/readyz") => self.readiness().await,
            (&Method::POST, path) if PUSH_PATHS.contains(&path) => self.push(request).await,
            (_, path) if PUSH_PATHS.contains(&path) || path == "/healthz" || path == "/readyz" => {
                refuse(&Refusal::MethodNotAllowed, None)
            }
            _ => refuse(&Refusal::NotFound, None),
        };
        answer.into_response()
    }

    /// Runs `route`'s scheduled message here, as a push of it from Cloud
    /// Scheduler would, under the execution id `scheduled-{name}-{run_id}`
    /// (dev cron without an emulator). The status a push would get.
    pub(crate) async fn run_scheduled(&self, route: &Route, run_id: &str) -> u16 {
        let delivery = Delivery {
            route,
            task_id: format!("{}-{run_id}", scheduled_task_id(route.name())),
            arguments: RawArguments::empty(),
            message_id: Some(run_id),
            subscription: None,
            delivery_attempt: None,
            publish_time: None,
            enqueued_at: None,
            job: None,
            lease: route.ack_deadline(),
            trace_parent: None,
        };
        self.executor.execute(delivery, answer).await.status.as_u16()
    }

    async fn readiness(&self) -> Answer {
        match self.executor.store().ping().await {
            Ok(()) => READY,
            Err(error) => refuse(&Refusal::NotReady(error), None),
        }
    }

    /// One push from request to answer: its server span, which continues
    /// the trace the message names, else the caller's (chosen here, once);
    /// the delivery, or why there is none; and the status, recorded on the
    /// span before it ends.
    async fn push<B>(&self, request: Request<B>) -> Answer
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let span = request_span(request.uri().path());
        let caller = propagation::from_headers(request.headers());
        let received = self.receive(request).await;
        let decoded = received.as_ref().map(|(wrapping, body)| Pushed::decode(*wrapping, body));
        let message_trace = match &decoded {
            Ok(Ok(pushed)) => pushed.trace_context(),
            _ => None,
        };
        propagation::continue_trace(&span, message_trace, caller);
        let answer = match decoded {
            Ok(Ok(pushed)) => in_first_poll(&span, self.deliver(&pushed)).await,
            Ok(Err(error)) => span.in_scope(|| refuse(&Refusal::Envelope(error), None)),
            Err(refusal) => span.in_scope(|| refuse(refusal, None)),
        };
        span.set_attribute("http.response.status_code", i64::from(answer.status.as_u16()));
        if answer.status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
        answer
    }

    /// How the push is wrapped, and its body. The token is checked first:
    /// an unauthenticated request costs no body read.
    async fn receive<B>(&self, request: Request<B>) -> Result<(Wrapping, Bytes), Refusal>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.auth.check(request.headers()).await?;
        if self.draining.load(Ordering::SeqCst) {
            return Err(Refusal::Draining);
        }
        let wrapping = Wrapping::of(request.headers()).map_err(Refusal::Envelope)?;
        Ok((wrapping, read_body(request, &self.reading).await?))
    }

    /// Runs the pushed task message on its route.
    async fn deliver(&self, pushed: &Pushed<'_>) -> Answer {
        let message = match ReceivedMessage::parse(pushed.data()) {
            Ok(message) => message,
            Err(error) => return refuse(&Refusal::Message(error), Some(pushed.message_id())),
        };
        match self.registry.get(message.task_name()) {
            Some(route) => self.executor.execute(pushed.delivery(route, &message), answer).await,
            None => {
                refuse(&Refusal::UnknownTask(self.registry.unknown(message.task_name())), Some(pushed.message_id()))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A future with `span` entered for its first poll only. A delivery logs
    /// in its request's span only until its first await (a refusal), and
    /// makes its task's span there, as its child; from then on everything
    /// runs in the task's span, which the executor enters on every poll.
    /// Entering both on every wake (with the span group commit kept, see
    /// `group_commit::batch_span`) cost a push 4,600 instructions (callgrind).
    /// A struct, not an `async fn`: one would hold the future twice.
    struct InFirstPoll<'a, F> {
        #[pin]
        future: F,
        span: Option<&'a Span>,
    }
}

fn in_first_poll<F: Future>(span: &Span, future: F) -> InFirstPoll<'_, F> {
    InFirstPoll { future, span: Some(span) }
}

impl<F: Future> Future for InFirstPoll<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        match this.span.take() {
            Some(span) => span.in_scope(|| this.future.poll(cx)),
            None => this.future.poll(cx),
        }
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

/// The refusal's answer, after one line saying why where there is something
/// to say. A task's name is logged, never echoed.
fn refuse(refusal: &Refusal, message_id: Option<&str>) -> Answer {
    let answer = refusal.answer();
    match refusal {
        Refusal::NotFound | Refusal::MethodNotAllowed | Refusal::Draining => {}
        Refusal::NotReady(error) => tracing::warn!(%error, "not ready"),
        Refusal::Forbidden(rejection) => {
            tracing::warn!(failed_check = rejection.check(), detail = ?rejection.detail(), "push rejected");
        }
        Refusal::KeysUnavailable => tracing::warn!("push not verified: the issuer's keys are not available yet"),
        Refusal::TooLarge | Refusal::Unreadable(_) | Refusal::BodyTimeout | Refusal::BodiesAtCapacity => {
            tracing::warn!(status = answer.status.as_u16(), reason = %answer.body, "push refused unread");
        }
        Refusal::Envelope(error) => tracing::warn!(%error, "malformed push: refused without running"),
        Refusal::Message(error) => {
            tracing::warn!(message_id, %error, "malformed task message: refused without running")
        }
        Refusal::UnknownTask(unknown) => {
            let (task_name, closest) = (&unknown.name, unknown.closest.as_deref());
            tracing::warn!(message_id, task_name, closest, "unknown task: refused without running");
        }
    }
    answer
}

/// The whole body, or 413 past [`MAX_BODY_BYTES`] (before reading, when the
/// length is declared), 503 unread when `reading` has no room for it (see
/// [`BODY_BYTES_IN_FLIGHT`]), and 408 when it takes longer than
/// [`BODY_READ_TIMEOUT`]. Its room in `reading` is given back once it is read.
async fn read_body<B>(request: Request<B>, reading: &Semaphore) -> Result<Bytes, Refusal>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse().ok());
    if declared.is_some_and(|length: usize| length > MAX_BODY_BYTES) {
        return Err(Refusal::TooLarge);
    }
    let reserved = u32::try_from(declared.unwrap_or(MAX_BODY_BYTES)).map_err(|_| Refusal::TooLarge)?;
    let _room = reading.try_acquire_many(reserved).map_err(|_| Refusal::BodiesAtCapacity)?;
    let collected = Limited::new(request.into_body(), MAX_BODY_BYTES).collect();
    match tokio::time::timeout(BODY_READ_TIMEOUT, collected).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<LengthLimitError>() => Err(Refusal::TooLarge),
        Ok(Err(error)) => Err(Refusal::Unreadable(error.to_string())),
        Err(_) => Err(Refusal::BodyTimeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_push_span_is_entered_for_the_first_poll_only() {
        let _default = tracing::subscriber::set_default(tracing_subscriber::Registry::default());
        let span = tracing::info_span!("request");
        let mut seen = Vec::new();
        let polled_twice = async {
            seen.push(Span::current().id());
            tokio::task::yield_now().await;
            seen.push(Span::current().id());
        };
        in_first_poll(&span, polled_twice).await;
        assert!(span.id().is_some());
        assert_eq!(seen, [span.id(), None]);
    }
}
