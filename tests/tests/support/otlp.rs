//! A real OTLP/HTTP receiver on loopback: it takes what an OpenTelemetry
//! exporter posts to `/v1/traces`, decodes the protobuf request and keeps
//! every span with its resource, as a collector would.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tokio::net::TcpListener;

/// A received span, its attributes and its resource's, as text.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub span: Span,
    pub attributes: HashMap<String, String>,
    pub resource: HashMap<String, String>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
}

/// The receiver; spans arrive in the background.
#[derive(Clone)]
pub struct Receiver {
    addr: SocketAddr,
    keep: bool,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    counts: Arc<Mutex<(u32, u64)>>,
}

impl Receiver {
    /// A receiver that keeps every span for the test to read.
    pub async fn start() -> Receiver {
        Self::listen(true).await
    }

    /// A receiver that decodes and counts, and keeps nothing (benchmarks).
    pub async fn counting() -> Receiver {
        Self::listen(false).await
    }

    async fn listen(keep: bool) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP receiver");
        let receiver = Receiver {
            addr: listener.local_addr().expect("receiver address"),
            keep,
            spans: Arc::default(),
            counts: Arc::default(),
        };
        let served = receiver.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let receiver = served.clone();
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let receiver = receiver.clone();
                    async move { Ok::<_, Infallible>(receiver.receive(request).await) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        receiver
    }

    /// A collector that takes connections and never answers; returns its base URL.
    pub async fn hanging() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the hanging receiver");
        let addr = listener.local_addr().expect("receiver address");
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        format!("http://{addr}")
    }

    /// The base URL, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("the span list").clone()
    }

    /// Export requests received so far.
    pub fn requests(&self) -> u32 {
        self.counts.lock().expect("the counts").0
    }

    /// Spans received so far, kept or not.
    pub fn span_count(&self) -> u64 {
        self.counts.lock().expect("the counts").1
    }

    async fn receive(&self, request: http::Request<hyper::body::Incoming>) -> http::Response<Full<Bytes>> {
        let respond = |status: u16, body: Vec<u8>| {
            http::Response::builder()
                .status(status)
                .header("content-type", "application/x-protobuf")
                .body(Full::new(Bytes::from(body)))
                .expect("a response")
        };
        if request.uri().path() != "/v1/traces" {
            return respond(404, Vec::new());
        }
        let Ok(body) = request.into_body().collect().await.map(|body| body.to_bytes()) else {
            return respond(400, Vec::new());
        };
        let Ok(export) = ExportTraceServiceRequest::decode(body) else {
            return respond(400, Vec::new());
        };
        let received: usize =
            export.resource_spans.iter().flat_map(|spans| &spans.scope_spans).map(|scope| scope.spans.len()).sum();
        {
            let mut counts = self.counts.lock().expect("the counts");
            counts.0 += 1;
            counts.1 += received as u64;
        }
        if !self.keep {
            return respond(200, ExportTraceServiceResponse::default().encode_to_vec());
        }
        let mut spans = self.spans.lock().expect("the span list");
        for resource_spans in export.resource_spans {
            let resource = resource_spans.resource.map(|resource| text_map(&resource.attributes)).unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|scope| scope.spans) {
                let attributes = text_map(&span.attributes);
                spans.push(ReceivedSpan { span, attributes, resource: resource.clone() });
            }
        }
        respond(200, ExportTraceServiceResponse::default().encode_to_vec())
    }
}

fn text_map(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(text).unwrap_or_default())).collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        other => format!("{other:?}"),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
