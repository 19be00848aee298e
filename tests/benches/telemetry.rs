//! What tracing costs in throughput: the no-op push, 50 at a time on a
//! two-worker runtime, with production JSON logs and no OpenTelemetry spans;
//! with only the ids the log lines' trace fields name
//! (`OTEL_TRACES_EXPORTER=none` in production: no OpenTelemetry span); with every
//! span made and none exported (what that leaves out); and with every span batched
//! and exported over OTLP/HTTP to a receiver on loopback that decodes each
//! request. Both stores, in one run. Each iteration's time is that of the whole batch divided by its
//! size, so the ratio of two lines is the ratio of their throughputs.
//!
//! At these rates the batch processor's default queue (2048 spans) fills and
//! drops spans, which would flatter exporting; the run prints how many
//! arrived. To measure the whole cost, give it room:
//! `OTEL_BSP_MAX_QUEUE_SIZE=65536 cargo bench -p whirligig-tests --bench telemetry`

#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::StreamExt as _;
use http_body_util::Full;
use opentelemetry_sdk::trace::SdkTracerProvider;
use support::otlp::Receiver;
use tracing::Dispatch;
use tracing::instrument::WithSubscriber as _;
use whirligig_handler::store::ExecutionStore;
use whirligig_handler::telemetry::{self, CloudLogging, Sampling, Spans, TelemetryConfig, TraceExport};
use whirligig_handler::{App, PushAuth};

/// Pushes in flight at once, as oha's `-c 50` would keep them.
const CONCURRENCY: usize = 50;

fn push(id: u64) -> http::Request<Full<Bytes>> {
    let body = support::task(&format!("bench-{id}"), "noop", serde_json::json!({}));
    http::Request::post("/tasks/pubsub/").body(Full::new(Bytes::from(body))).unwrap()
}

/// `count` pushes, [`CONCURRENCY`] at a time, each under `dispatch`.
fn pushes<S: ExecutionStore>(
    app: &Arc<App<S>>,
    dispatch: &Dispatch,
    ids: &AtomicU64,
    count: u64,
) -> impl Future<Output = Duration> {
    let requests: Vec<_> = (0..count).map(|_| push(ids.fetch_add(1, Ordering::Relaxed))).collect();
    let (app, dispatch) = (Arc::clone(app), dispatch.clone());
    async move {
        let start = Instant::now();
        let handled = futures_util::stream::iter(requests).map(|request| {
            let app = Arc::clone(&app);
            let handling = async move { app.handle(request).await }.with_subscriber(dispatch.clone());
            tokio::spawn(handling)
        });
        let answers: Vec<_> = handled.buffer_unordered(CONCURRENCY).collect().await;
        assert!(answers.into_iter().all(|answer| answer.unwrap().status() == 200));
        start.elapsed()
    }
}

/// No rows, and nothing left to write back.
async fn empty(db: &support::TestDb) {
    let client = db.client().await;
    client.batch_execute("truncate task_executions; checkpoint").await.unwrap();
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // The pool and the exporter start background work on the runtime.
    let _entered = runtime.enter();
    let (receiver, db) = runtime.block_on(async { (Receiver::counting().await, support::TestDb::new().await) });
    let config = TelemetryConfig {
        traces: TraceExport::Otlp { endpoint: format!("{}/v1/traces", receiver.endpoint()) },
        ..TelemetryConfig::default()
    };
    let provider = telemetry::provider(&config).unwrap().unwrap();
    // Every span made, none exported: what OTEL_TRACES_EXPORTER=none cost before LogIds.
    let local = SdkTracerProvider::builder().build();
    let logs = || CloudLogging::new(std::io::sink, Some("bench".to_owned()));
    let off = telemetry::subscriber(logs(), Spans::None, "info");
    // OTEL_TRACES_EXPORTER=none in production: ids for the log lines' trace fields, no span.
    let for_logs = telemetry::subscriber(logs(), Spans::ForLogs(Sampling::default()), "info");
    let every = telemetry::subscriber(logs(), Spans::Exported(telemetry::tracer(&local)), "info");
    let exporting = telemetry::subscriber(logs(), Spans::Exported(telemetry::tracer(&provider)), "info");

    let registry = Arc::new(whirligig_handler::demo::registry().unwrap());
    let ids = AtomicU64::new(0);
    let mut exported = 0;
    let mut group = c.benchmark_group("noop push throughput, 50 in flight");
    group.sample_size(20).measurement_time(Duration::from_secs(8));
    // Spans per push: the request and the task, and on PostgreSQL the claim and the finish.
    for (store, spans_per_push) in [("memory", 2), ("postgres", 4)] {
        let modes = [
            ("no spans", &off),
            ("ids for the logs, no span", &for_logs),
            ("every span, none exported", &every),
            ("exporting over OTLP", &exporting),
        ];
        for (tracing, dispatch) in modes {
            let before = ids.load(Ordering::Relaxed);
            let name = format!("{store}, {tracing}");
            // Each line starts from an empty store, so neither pays for the other's rows.
            if store == "memory" {
                let app = Arc::new(App::in_memory(Arc::clone(&registry), PushAuth::none()));
                group.bench_function(name, |b| b.to_async(&runtime).iter_custom(|n| pushes(&app, dispatch, &ids, n)));
            } else {
                runtime.block_on(empty(&db));
                let store = db.store(10, Duration::from_millis(250));
                let app = Arc::new(App::postgres(Arc::clone(&registry), store, PushAuth::none()));
                group.bench_function(name, |b| b.to_async(&runtime).iter_custom(|n| pushes(&app, dispatch, &ids, n)));
            }
            if std::ptr::eq(dispatch, &exporting) {
                exported += spans_per_push * (ids.load(Ordering::Relaxed) - before);
            }
        }
    }
    group.finish();

    runtime.block_on(async {
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await.unwrap();
        flushed.unwrap();
    });
    // A batch processor drops what it cannot queue: say how much arrived.
    println!(
        "the receiver decoded {} of {exported} spans in {} export requests",
        receiver.span_count(),
        receiver.requests()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
