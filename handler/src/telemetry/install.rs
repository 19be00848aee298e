//! Installing telemetry in the Cloud Run process (feature `server`): the
//! subscriber, its log layers and the trace exporter, flushed on shutdown.

use std::io::IsTerminal as _;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing::{Dispatch, Level, Subscriber};
use tracing_subscriber::field::MakeExt as _;
use tracing_subscriber::filter::{EnvFilter, FilterExt as _, LevelFilter, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::{Writer, debug_fn};
use tracing_subscriber::layer::{Filter, SubscriberExt as _};
use tracing_subscriber::{Layer as _, Registry};

pub use super::cloud_logging::CloudLogging;
pub use super::export::{ExportError, provider, tracer};
use super::ids::LogIds;
use super::value::write_one_line;

/// How long the final flush may take. Cloud Run sends SIGKILL 10 s after
/// SIGTERM and the server drains for up to 8 s of them.
pub(crate) const FLUSH_TIMEOUT: Duration = Duration::from_millis(1500);

/// Where finished spans go (`OTEL_TRACES_EXPORTER`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceExport {
    /// `none`: spans only give log lines and enqueued messages their trace
    /// ids (the default in dev).
    None,
    /// `otlp`: OTLP over HTTP with protobuf bodies, posted to `endpoint`:
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// followed by `/v1/traces` (default `http://localhost:4318/v1/traces`, a
    /// collector beside the service).
    Otlp {
        /// The full URL export requests are posted to.
        endpoint: String,
    },
    /// `console`: each span as indented text on stdout, for debugging.
    Console,
}

/// Which traces are kept (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio`: this share of traces.
    Ratio(f64),
    /// `parentbased_*` (the default is `parentbased_always_on`): follow the
    /// caller's decision, and decide as the inner sampling for a new trace.
    ParentBased(ParentlessSampling),
}

/// `parentbased_always_on`, as the OpenTelemetry specification has it.
impl Default for Sampling {
    fn default() -> Self {
        Self::ParentBased(ParentlessSampling::AlwaysOn)
    }
}

/// The decision for a trace that starts here, under a parent-based sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParentlessSampling {
    /// `parentbased_always_on`.
    AlwaysOn,
    /// `parentbased_always_off`.
    AlwaysOff,
    /// `parentbased_traceidratio`.
    Ratio(f64),
}

/// How log lines are written (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// `text`: compact lines on stderr, for a person (the default in dev).
    Text,
    /// `json`: one JSON object per line on stdout with the fields Cloud
    /// Logging reads (the default elsewhere).
    Json,
}

/// Everything telemetry needs from the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// Where spans go.
    pub traces: TraceExport,
    /// Which traces are kept.
    pub sampling: Sampling,
    /// How log lines look.
    pub logs: LogFormat,
    /// Which log lines are written (`RUST_LOG`, default `info`).
    pub log_filter: String,
    /// Colour for a person at a terminal, unless `NO_COLOR` is set.
    pub color: bool,
    /// The project whose Cloud Trace a log line's trace id refers to.
    pub project_id: Option<String>,
    /// `service.name`.
    pub service_name: String,
    /// Resource attributes: what Cloud Run tells about the service or job.
    pub resource: Vec<KeyValue>,
    /// How long one OTLP export may take, retries included
    /// (`OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, `OTEL_EXPORTER_OTLP_TIMEOUT`).
    pub export_timeout: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            traces: TraceExport::None,
            sampling: Sampling::default(),
            logs: LogFormat::Text,
            log_filter: "info".to_owned(),
            color: true,
            project_id: None,
            service_name: "whirligig".to_owned(),
            resource: Vec::new(),
            export_timeout: Duration::from_secs(10),
        }
    }
}

/// The installed pipeline; [`shutdown`](Self::shutdown) flushes what is left.
#[derive(Debug)]
pub(crate) struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the process-wide subscriber: the log format, `RUST_LOG`
    /// filtering (default `info`), and the span exporter. A panic becomes one
    /// log line. Must run inside the Tokio runtime that will send exports.
    pub(crate) fn install(config: &TelemetryConfig) -> Result<Self, ExportError> {
        let provider = provider(config)?;
        let spans = || match (&provider, config.logs) {
            (Some(provider), _) => Spans::Exported(tracer(provider)),
            (None, LogFormat::Json) => Spans::ForLogs(config.sampling),
            (None, LogFormat::Text) => Spans::None,
        };
        let filter = &config.log_filter;
        let installed = match config.logs {
            LogFormat::Json => {
                let logs = CloudLogging::new(std::io::stdout, config.project_id.clone());
                tracing::dispatcher::set_global_default(subscriber(logs, spans(), filter))
            }
            LogFormat::Text => {
                let logs = text_logs_to(std::io::stderr, config.color && std::io::stderr().is_terminal());
                tracing::dispatcher::set_global_default(subscriber(logs, spans(), filter))
            }
        };
        match installed {
            Ok(()) => std::panic::set_hook(Box::new(|info| tracing::error!(%info, "panic"))),
            // The service's main installed its own: it keeps it, and its format.
            Err(_) => tracing::warn!("a tracing subscriber is already installed: whirligig's logs and traces are off"),
        }
        match &config.traces {
            TraceExport::Otlp { endpoint } => tracing::info!(endpoint, "exporting traces over OTLP"),
            TraceExport::Console => tracing::info!("printing traces on stdout"),
            TraceExport::None => {}
        }
        Ok(Self { provider })
    }

    /// Exports the spans still queued and stops the exporter, within
    /// [`FLUSH_TIMEOUT`]. The SDK blocks while it flushes, so it runs on a
    /// blocking thread while the runtime goes on sending.
    pub(crate) async fn shutdown(self) {
        let Some(provider) = self.provider else { return };
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT)).await;
        match flushed {
            Ok(Ok(())) => tracing::debug!("spans flushed"),
            Ok(Err(error)) => tracing::warn!(%error, "spans not flushed"),
            Err(error) => tracing::warn!(%error, "spans not flushed"),
        }
    }
}

/// Which spans become OpenTelemetry spans, and what for.
#[derive(Debug)]
pub enum Spans {
    /// None: log lines carry no trace (text logs, with nothing exported).
    None,
    /// None, but the spans a log line or an enqueued message takes its trace
    /// from get the ids an OpenTelemetry span would, sampled as this says
    /// (`OTEL_TRACES_EXPORTER=none` with JSON logs). The store's database
    /// spans are not made (a line logged during a call names the task's span). Inside a
    /// task `opentelemetry::Context::current()` is the task span's (in a span
    /// the task opens too: it is attached around the task, not per span);
    /// `tracing-opentelemetry`'s `Span::context()`, `set_parent` and
    /// `add_link` need its layer and do nothing here.
    ForLogs(Sampling),
    /// Every span at `info` and above: they are exported.
    Exported(SdkTracer),
}

/// The subscriber every process and test uses: `logs` for log lines,
/// filtered by `filter` (`RUST_LOG`'s syntax; one that does not parse means
/// `info`), and spans at `info` and above, whatever the filter says, given
/// ids or bridged to OpenTelemetry as `spans` says (bridged, with warnings
/// and errors as their events).
pub fn subscriber<L>(logs: L, spans: Spans, filter: &str) -> Dispatch
where
    L: tracing_subscriber::Layer<Registry> + Send + Sync,
{
    let exported = matches!(spans, Spans::Exported(_));
    let logged = Registry::default().with(logs.with_filter(log_filter(filter, exported)));
    // Each mode its own stack: an absent layer (`Option::None`) has no filter
    // of its own, so it would want every span the others leave out (the
    // store's at `warn`, say) and keep it alive, entered on every poll. A
    // `Dispatch`, not a boxed subscriber: a `Box` does not pass
    // `on_register_dispatch` on, and the log layer needs it for trace ids.
    match spans {
        Spans::None => Dispatch::new(logged),
        Spans::ForLogs(sampling) => {
            let only = filter_fn(traced_for_logs).with_max_level_hint(Level::INFO);
            Dispatch::new(logged.with(LogIds::new(sampling).with_filter(only)))
        }
        Spans::Exported(tracer) => {
            let traces = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                // Attributes nobody reads cost an allocation per span.
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                .with_tracked_inactivity(false)
                .with_filter(
                    filter_fn(|metadata| {
                        // Info lines are in the logs, linked to their span; on the span, only what went wrong.
                        let level = if metadata.is_event() { Level::WARN } else { Level::INFO };
                        // The SDK's own diagnostics must not become part of the trace they describe.
                        *metadata.level() <= level && !metadata.target().starts_with("opentelemetry")
                    })
                    .with_max_level_hint(Level::INFO),
                );
            Dispatch::new(logged.with(traces))
        }
    }
}

/// What the log lines take: what `filter` enables (`RUST_LOG`'s syntax; one
/// that does not parse means `info`), the store's database spans only if they
/// are `exported` (a line then names the span of its call; otherwise it would
/// keep the span alive only to say which statement).
fn log_filter(filter: &str, exported: bool) -> impl Filter<Registry> + Send + Sync + use<> {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // With a hint of its own, or the pair would lose `RUST_LOG`'s maximum level.
    filter.and(filter_fn(move |metadata| exported || !database_span(metadata)).with_max_level_hint(LevelFilter::TRACE))
}

/// The spans [`LogIds`] gives ids: those at `info` and above but the store's
/// database spans, which nothing would read.
fn traced_for_logs(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.is_span() && *metadata.level() <= Level::INFO && !database_span(metadata)
}

/// The store's span of a database call (`db`, in `store::postgres`): only
/// an exporter wants it. The log lines and [`LogIds`] leave it out, so it is
/// not made at all when nothing is exported.
fn database_span(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.is_span() && metadata.name() == "db" && metadata.target().starts_with("whirligig_handler::store")
}

/// Compact lines to `writer`, in colour if `ansi` (only for a person at a
/// terminal: Cloud Logging would keep the escape codes). `otel.*` fields
/// steer the exporter and are left out. Values are capped, and control
/// characters in them escaped, so an event (a panic's message, say) is one
/// line and cannot forge another.
pub fn text_logs_to<S, W>(writer: W, ansi: bool) -> impl tracing_subscriber::Layer<S> + Send + Sync
where
    S: Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let fields = debug_fn(|writer: &mut Writer<'_>, field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
        match field.name() {
            name if name.starts_with("otel.") => Ok(()),
            "message" => write_one_line(writer, format_args!("{value:?}")),
            name => {
                write!(writer, "{name}=")?;
                write_one_line(writer, format_args!("{value:?}"))
            }
        }
    })
    .delimited(" ");
    tracing_subscriber::fmt::layer().compact().with_ansi(ansi).with_writer(writer).fmt_fields(fields)
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::telemetry::Written;
    use crate::telemetry::value::MAX_VALUE_BYTES;

    fn text_of(log: impl FnOnce()) -> String {
        let written = Written::default();
        let sink = written.clone();
        let layer = text_logs_to::<Registry, _>(move || sink.clone(), false);
        tracing::subscriber::with_default(Registry::default().with(layer), log);
        String::from_utf8(written.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_text_line_keeps_newlines_and_escapes_of_its_values_escaped() {
        let info = "panicked at src/lib.rs:1:1:\nassertion failed\n2026-01-01 INFO forged\u{1b}[2K";
        let text = text_of(|| {
            let span = tracing::info_span!("request", path = %"a\nb");
            span.in_scope(|| tracing::error!(info = %info, "panic\nhere"));
        });
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("panic\\nhere"), "{text}");
        assert!(text.contains("info=panicked at src/lib.rs:1:1:\\nassertion failed\\n2026-01-01"), "{text}");
        assert!(text.contains("path=a\\nb"), "span fields too: {text}");
        assert!(!text.contains('\u{1b}'), "{text}");
    }

    #[test]
    fn without_an_exporter_the_stores_spans_get_no_ids_and_a_line_in_one_names_the_task() {
        let written = Written::default();
        let sink = written.clone();
        let logs = CloudLogging::new(move || sink.clone(), Some("proj".to_owned()));
        let subscriber = subscriber(logs, Spans::ForLogs(Sampling::default()), "info");
        let (task, database) = tracing::dispatcher::with_default(&subscriber, || {
            let task = tracing::info_span!("task");
            let database = task.in_scope(|| {
                let database = tracing::info_span!(target: "whirligig_handler::store::postgres", "db");
                database.in_scope(|| tracing::warn!("slow"));
                database
            });
            (crate::telemetry::ids::of(&task), crate::telemetry::ids::of(&database))
        });
        let task = task.expect("the task span has ids");
        assert!(database.is_none(), "{database:?}");
        let line: serde_json::Value = serde_json::from_slice(&written.0.lock().unwrap()).unwrap();
        assert_eq!(line["logging.googleapis.com/spanId"], task.span_id().to_string(), "{line}");
        assert_eq!(line["logging.googleapis.com/trace"], format!("projects/proj/traces/{}", task.trace_id()));
    }

    #[test]
    fn a_span_no_layer_takes_is_not_made() {
        // Asked directly: a callsite's cached interest is shared by the other tests' subscribers.
        let (task, database) = tracing::subscriber::with_default(Registry::default(), || {
            let task = tracing::info_span!("task");
            let database = tracing::info_span!(target: "whirligig_handler::store::postgres", "db");
            (task.metadata().unwrap(), database.metadata().unwrap())
        });
        let made = |spans: Spans, filter: &str| {
            let subscriber = subscriber(CloudLogging::new(std::io::sink, None), spans, filter);
            (!subscriber.register_callsite(task).is_never(), !subscriber.register_callsite(database).is_never())
        };
        // Without an exporter the ids want the task's span, and nothing wants the store's.
        assert_eq!(made(Spans::ForLogs(Sampling::default()), "warn"), (true, false));
        assert_eq!(made(Spans::ForLogs(Sampling::default()), "info"), (true, false));
        assert_eq!(made(Spans::ForLogs(Sampling::default()), "debug"), (true, false));
        // Text logs want the spans `RUST_LOG` names, for their fields, but not the store's.
        assert_eq!(made(Spans::None, "warn"), (false, false));
        assert_eq!(made(Spans::None, "info"), (true, false));
        // An exporter wants them all, and so do the lines then (they name the call's span).
        let provider = SdkTracerProvider::builder().build();
        assert_eq!(made(Spans::Exported(tracer(&provider)), "warn"), (true, true));
        assert!(!Filter::<Registry>::callsite_enabled(&log_filter("info", true), database).is_never());
        assert!(Filter::<Registry>::callsite_enabled(&log_filter("info", false), database).is_never());
        let hint = Filter::<Registry>::max_level_hint(&log_filter("warn", false));
        assert_eq!(hint, Some(LevelFilter::WARN), "debug! and trace! are skipped before their callsites are asked");
    }

    #[test]
    fn a_text_value_is_capped() {
        let huge = "n".repeat(1024 * 1024);
        let text = text_of(|| tracing::warn!(task_name = %huge, "unknown task"));
        assert!(text.len() < 2 * MAX_VALUE_BYTES, "{} bytes", text.len());
        assert!(text.contains(&format!("…[{} bytes cut]", huge.len() - MAX_VALUE_BYTES)), "{text:.200}");
    }
}
