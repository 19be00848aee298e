//! Telemetry: `tracing` spans and events, bridged to OpenTelemetry traces and
//! written as log lines. Traces go to OTLP over HTTP, to the console or
//! nowhere (`OTEL_TRACES_EXPORTER`), batched off the request path and flushed
//! on shutdown; logs are JSON lines that Cloud Logging links to their trace,
//! or compact text for a person in dev (`LOG_FORMAT`).
//!
//! The spans themselves are made where the work is: the HTTP server span in
//! `app`, the task span in `executor`, the database spans in the store.

#[cfg(feature = "server")]
mod cloud_logging;
#[cfg(feature = "server")]
mod export;
// Trace ids for log lines, enqueues and tasks when no span is exported.
#[cfg(feature = "server")]
mod ids;
#[cfg(feature = "server")]
mod install;
// Log values capped in length and, in text, kept on one line.
#[cfg(feature = "server")]
mod value;
// Reading a trace context is the push side's; an enqueue-only build only writes one.
#[cfg_attr(not(feature = "server"), allow(dead_code, unused_imports))]
pub(crate) mod propagation;

#[cfg(feature = "server")]
pub use self::install::*;

/// What a test's log subscriber wrote, shared with the test.
#[cfg(all(test, feature = "server"))]
#[derive(Clone, Default)]
struct Written(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(all(test, feature = "server"))]
impl std::io::Write for Written {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
