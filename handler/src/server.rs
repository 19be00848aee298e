//! Serving: accepts connections on a bound listener, speaks HTTP/1.1 with
//! keep-alive and h2c on the same port, closes connections that are slow to
//! send a request, and on shutdown stops accepting, closes idle connections,
//! lets in-flight requests finish within the grace period, then returns.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::answer::INTERNAL_ERROR;
use crate::app::App;
use crate::store::ExecutionStore;

/// Cloud Run gives an instance 10 seconds between SIGTERM and SIGKILL; keep
/// some of it for flushing and exiting.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// How long an HTTP/1.1 client has to send a request's head (line and
/// headers). Pub/Sub and Cloud Run's front end send a head in one write, so
/// only a stalled or hostile client takes longer; each one waiting holds a
/// socket and a buffer. hyper starts this timer when a connection opens and
/// again each time a keep-alive connection goes idle after a response, so it
/// is also the idle keep-alive timeout: a connection that sends nothing for
/// this long after its last response is closed, and its client opens another.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections the kernel holds for the server before it accepts them. The
/// standard library's (and tokio's) 128 overflows when Pub/Sub opens a
/// couple of hundred connections at once: the SYNs past it are dropped, and
/// their clients send them again a second later, so those pushes take a
/// second longer than any work the server does (seen as ListenOverflows in
/// `nstat`). The kernel caps it at `net.core.somaxconn` (4096 by default).
pub const LISTEN_BACKLOG: u32 = 1024;

/// A listener on `address` with a [`LISTEN_BACKLOG`] of room.
///
/// # Errors
/// The address is taken, or not this machine's.
pub fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The connection limits [`serve_with`] applies; [`serve`] uses the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// How long a client has to send a request's head, and how long an idle
    /// keep-alive connection is kept ([`HEADER_READ_TIMEOUT`]).
    pub header_read: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self { header_read: HEADER_READ_TIMEOUT }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then drains for at
/// most `grace`. Tests bind `127.0.0.1:0` and pass their own shutdown future.
pub async fn serve<S: ExecutionStore>(
    listener: TcpListener,
    app: Arc<App<S>>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    serve_with(listener, app, shutdown, grace, ServeLimits::default()).await;
}

/// [`serve`] with connection limits of the caller's choosing.
///
/// On `shutdown`, connections with no request in flight (idle between
/// requests, or still sending a head) are closed at once: a request they
/// might yet send would be refused as draining anyway. Connections with a
/// request in flight finish it, answer, and close.
pub async fn serve_with<S: ExecutionStore>(
    listener: TcpListener,
    app: Arc<App<S>>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    limits: ServeLimits,
) {
    app.start();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read);
    let graceful = GracefulShutdown::new();
    let closing = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => connection(stream, &app, &builder, &graceful, &closing, limits.header_read),
                Err(error) => {
                    // Out of file descriptors and the like: the listener is fine,
                    // but retrying at once would spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    app.begin_shutdown();
    tracing::info!(connections = graceful.count(), "shutting down: draining in-flight requests");
    closing.cancel();
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(?grace, "grace period over with requests still in flight");
    }
}

/// Serves one connection on a task of its own, watched for the drain, and
/// dropped (closed) if it has no request in flight when the drain begins.
fn connection<S: ExecutionStore>(
    stream: TcpStream,
    app: &Arc<App<S>>,
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    closing: &CancellationToken,
    first_request_within: Duration,
) {
    let _ = stream.set_nodelay(true);
    let app = Arc::clone(app);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&in_flight);
    let requested = Arc::new(AtomicBool::new(false));
    let noted = Arc::clone(&requested);
    let service = service_fn(move |request| {
        let app = Arc::clone(&app);
        noted.store(true, Ordering::SeqCst);
        let answering = InFlight::begin(&counted);
        let handling = Detachable::new(async move { app.handle(request).await });
        async move { Ok::<_, Infallible>(handling.await.map(|body| Answering { body, _in_flight: answering })) }
    });
    let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
    let closing = closing.clone();
    tokio::spawn(async move {
        tokio::select! {
            ended = connection => if let Err(error) = ended {
                tracing::debug!(%error, "connection ended with an error");
            },
            () = idle_at_drain(&closing, &in_flight) => {}
            () = silent_for(first_request_within, &requested) => {
                tracing::debug!("closed a connection that sent no request in time");
            }
        }
    });
}

/// Completes if no request has begun `within` of the connection opening.
/// Until its first bytes tell HTTP/1.1 from h2c, a connection has no
/// protocol, so hyper's head timeout is not running: a client that connects
/// and sends nothing (or only part of h2c's preface) would be held for ever.
async fn silent_for(within: Duration, requested: &AtomicBool) {
    tokio::time::sleep(within).await;
    if requested.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
}

/// Completes when the drain begins if no request is in flight then; never
/// otherwise, as hyper then finishes the request, answers, and closes.
async fn idle_at_drain(closing: &CancellationToken, in_flight: &AtomicUsize) {
    closing.cancelled().await;
    if in_flight.load(Ordering::SeqCst) > 0 {
        std::future::pending::<()>().await;
    }
}

/// A request's handling, polled where its connection is, and finished on a
/// task of its own if the connection drops it first: a client that goes away
/// (Pub/Sub at its push deadline) must not cancel a task between its claim
/// and its finish, leaving it RUNNING until the lease ends. Spawning every
/// request instead cost each push a task, an allocation aligned for it and a
/// wake-up on the other worker thread. A handling that panics answers 500.
pub(crate) struct Detachable(Option<Pin<Box<dyn Future<Output = Answered> + Send>>>);

/// What a request's handling answers.
type Answered = Response<Full<Bytes>>;

impl Detachable {
    pub(crate) fn new(handling: impl Future<Output = Answered> + Send + 'static) -> Self {
        Self(Some(Box::pin(handling)))
    }
}

impl Future for Detachable {
    type Output = Answered;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answered> {
        // Once answered it is never polled again; if it were, it would wait.
        let Some(handling) = self.0.as_mut() else { return Poll::Pending };
        let answer = match std::panic::catch_unwind(AssertUnwindSafe(|| handling.as_mut().poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(response)) => response,
            Err(_) => INTERNAL_ERROR.into_response(),
        };
        self.0 = None;
        Poll::Ready(answer)
    }
}

impl Drop for Detachable {
    fn drop(&mut self) {
        // Outside a runtime (the process is exiting) there is nothing to finish it on.
        if let Some(handling) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(handling);
        }
    }
}

/// One request on a connection, from its head to the end of its answer's body.
#[derive(Debug)]
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn begin(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(count))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An answer's body, which keeps its request counted as in flight until
/// hyper has taken the last of it and drops it.
#[derive(Debug)]
struct Answering {
    body: Full<Bytes>,
    _in_flight: InFlight,
}

impl Body for Answering {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Completes on SIGTERM (Cloud Run's stop signal) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: u16) -> Answered {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
        response
    }

    #[tokio::test]
    async fn a_handling_dropped_before_its_answer_still_runs_to_the_end() {
        let (started, mut start) = tokio::sync::oneshot::channel();
        let (finished, finish) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let handling = Detachable::new(async move {
            let _ = started.send(());
            let _ = released.await;
            let _ = finished.send(());
            answered(200)
        });
        let mut handling = Box::pin(handling);
        // Polled until it waits, as hyper polls it, then dropped, as hyper drops it for a client that left.
        tokio::select! {
            biased;
            _ = &mut start => {}
            _ = &mut handling => unreachable!("it waits for its release"),
        }
        drop(handling);
        let _ = release.send(());
        let ran = tokio::time::timeout(Duration::from_secs(5), finish).await;
        assert!(matches!(ran, Ok(Ok(()))), "the handling finished on a task of its own");
    }

    #[tokio::test]
    async fn a_handling_that_panics_answers_500() {
        let handling = Detachable::new(async {
            if std::hint::black_box(true) {
                panic!("a bug on the request path");
            }
            answered(200)
        });
        assert_eq!(handling.await.status(), 500);
    }
}
