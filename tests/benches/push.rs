//! What verifying a push token costs: the whole in-process push path (no
//! socket) for the `noop` task on the in-memory store, with no authentication
//! and with OIDC verification against a loopback issuer's cached keys, in one
//! run. `cargo bench -p whirligig-tests --bench push`

#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::Full;
use support::issuer::{Issuer, Key};
use whirligig_handler::store::MemoryStore;
use whirligig_handler::{App, Clock, PushAuth};

fn app(auth: PushAuth) -> Arc<App<MemoryStore>> {
    let registry = whirligig_handler::demo::registry().unwrap();
    let app = Arc::new(App::in_memory(Arc::new(registry), auth));
    app.start();
    app
}

fn push(authorization: Option<&str>, id: u64) -> http::Request<Full<Bytes>> {
    let body = support::task(&format!("bench-{id}"), "noop", serde_json::json!({}));
    let mut request = http::Request::post("/tasks/pubsub/");
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    request.body(Full::new(Bytes::from(body))).unwrap()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let key = Key::generated(0);
    let (issuer, open, guarded) = runtime.block_on(async {
        let issuer = Issuer::start(&key).await;
        let guarded = app(PushAuth::oidc(&issuer.settings(), Clock::system()).unwrap());
        (issuer, app(PushAuth::none()), guarded)
    });
    let authorization = format!("Bearer {}", issuer.token(&key));
    // The first verified push waits for the keys; the benchmark measures what follows.
    let first = runtime.block_on(guarded.handle(push(Some(&authorization), u64::MAX)));
    assert_eq!(first.status(), 200);

    let ids = AtomicU64::new(0);
    let mut group = c.benchmark_group("push noop, in memory");
    group.bench_function("unauthenticated", |b| {
        b.to_async(&runtime).iter(|| open.handle(push(None, ids.fetch_add(1, Ordering::Relaxed))));
    });
    group.bench_function("oidc verified", |b| {
        b.to_async(&runtime).iter(|| guarded.handle(push(Some(&authorization), ids.fetch_add(1, Ordering::Relaxed))));
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
