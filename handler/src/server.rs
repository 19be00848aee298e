//! Serving: accepts connections on a bound listener, speaks HTTP/1.1 with
//! keep-alive and h2c on the same port, and on shutdown stops accepting,
//! lets in-flight requests finish within the grace period, then returns.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

use crate::answer::INTERNAL_ERROR;
use crate::app::App;
use crate::store::ExecutionStore;

/// Cloud Run gives an instance 10 seconds between SIGTERM and SIGKILL; keep
/// some of it for flushing and exiting.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// Serves `app` on `listener` until `shutdown` completes, then drains for at
/// most `grace`. Tests bind `127.0.0.1:0` and pass their own shutdown future.
pub async fn serve<S: ExecutionStore>(
    listener: TcpListener,
    app: Arc<App<S>>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    app.start();
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => connection(stream, &app, &builder, &graceful),
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
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(?grace, "grace period over with requests still in flight");
    }
}

/// Serves one connection on a task of its own, watched for the drain.
fn connection<S: ExecutionStore>(
    stream: TcpStream,
    app: &Arc<App<S>>,
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
) {
    let _ = stream.set_nodelay(true);
    let app = Arc::clone(app);
    let service = service_fn(move |request| {
        let app = Arc::clone(&app);
        // Detached from the connection: a client that goes away (Pub/Sub
        // at its push deadline) must not cancel a task between its claim
        // and its finish, leaving it RUNNING until the lease ends.
        let handling = tokio::spawn(async move { app.handle(request).await });
        async move { Ok::<_, Infallible>(handling.await.unwrap_or_else(|_| INTERNAL_ERROR.into_response())) }
    });
    let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "connection ended with an error");
        }
    });
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
