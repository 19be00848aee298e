//! The tracer provider: sampler, resource, and a batch processor that hands
//! finished spans to the exporter on its own thread, away from requests.
//! OTLP requests go out through reqwest on the process's Tokio runtime.

use std::time::Duration;

use async_trait::async_trait;
use opentelemetry::InstrumentationScope;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};
use opentelemetry_sdk::trace::{BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanExporter};

use super::{ParentlessSampling, Sampling, TelemetryConfig, TraceExport};

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The OTLP exporter refused its configuration.
    #[error("cannot export traces over OTLP: {0}")]
    Otlp(#[from] opentelemetry_otlp::ExporterBuildError),
    /// The HTTP client could not be built (TLS setup).
    #[error("cannot export traces over OTLP: {0}")]
    Client(#[from] reqwest::Error),
    /// There is no Tokio runtime to send exports on.
    #[error("telemetry must be installed inside the Tokio runtime")]
    NoRuntime,
}

/// The tracer provider `config` asks for, or none when no span is exported
/// (JSON lines then take their trace ids from [`Spans::ForLogs`](super::Spans::ForLogs)).
/// Must run inside the Tokio runtime that will send exports.
pub fn provider(config: &TelemetryConfig) -> Result<Option<SdkTracerProvider>, ExportError> {
    let processor = match &config.traces {
        TraceExport::None => return Ok(None),
        TraceExport::Otlp { endpoint } => batch(otlp(endpoint, config.export_timeout)?),
        TraceExport::Console => batch(opentelemetry_stdout::SpanExporter::default()),
    };
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler(config.sampling))
        .with_resource(resource(config))
        .with_span_processor(processor);
    Ok(Some(provider.build()))
}

/// What Cloud Run says about the instance, then `OTEL_RESOURCE_ATTRIBUTES`,
/// which overrides it, then the service name, whose precedence the
/// configuration has settled.
fn resource(config: &TelemetryConfig) -> Resource {
    Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_attributes(config.resource.iter().cloned())
        .with_detector(Box::new(EnvResourceDetector::new()))
        .with_service_name(config.service_name.clone())
        .build()
}

/// The tracer whirligig's spans are made with.
pub fn tracer(provider: &SdkTracerProvider) -> SdkTracer {
    let scope = InstrumentationScope::builder("whirligig").with_version(env!("CARGO_PKG_VERSION")).build();
    provider.tracer_with_scope(scope)
}

/// Batches on the SDK's own thread; `OTEL_BSP_*` tune it.
fn batch(exporter: impl SpanExporter + 'static) -> BatchSpanProcessor {
    BatchSpanProcessor::builder(exporter).build()
}

/// OTLP/HTTP with protobuf bodies to `endpoint`, each export (retries
/// included) within `timeout`. Headers and compression come from the
/// standard `OTEL_EXPORTER_OTLP_*` variables, read by the exporter.
fn otlp(endpoint: &str, timeout: Duration) -> Result<opentelemetry_otlp::SpanExporter, ExportError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| ExportError::NoRuntime)?;
    let client = reqwest::Client::builder().timeout(timeout).build()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(timeout)
        .with_http_client(RuntimeClient { client, runtime })
        .build()?;
    Ok(exporter)
}

pub(super) fn sampler(sampling: Sampling) -> Sampler {
    match sampling {
        Sampling::AlwaysOn => Sampler::AlwaysOn,
        Sampling::AlwaysOff => Sampler::AlwaysOff,
        Sampling::Ratio(ratio) => Sampler::TraceIdRatioBased(ratio),
        Sampling::ParentBased(root) => Sampler::ParentBased(Box::new(match root {
            ParentlessSampling::AlwaysOn => Sampler::AlwaysOn,
            ParentlessSampling::AlwaysOff => Sampler::AlwaysOff,
            ParentlessSampling::Ratio(ratio) => Sampler::TraceIdRatioBased(ratio),
        })),
    }
}

/// reqwest needs a Tokio runtime; the batch processor's thread has none. Each
/// request runs as a task on the process's runtime and the thread waits for it.
#[derive(Debug)]
struct RuntimeClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let request = reqwest::Request::try_from(request)?;
        let sending = self.runtime.spawn(async move {
            let response = client.execute(request).await?;
            let mut answer = Response::builder().status(response.status());
            if let Some(headers) = answer.headers_mut() {
                headers.extend(response.headers().iter().map(|(name, value)| (name.clone(), value.clone())));
            }
            let body = response.bytes().await?;
            Ok::<_, HttpError>(answer.body(body)?)
        });
        sending.await?
    }
}
