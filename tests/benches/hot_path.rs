//! The pure hot path of a push, per function, so a regression shows where it
//! is: decoding the envelope, parsing the payload and finding the route (for
//! a no-op message and for one with 4 KiB of keyword arguments), and
//! verifying a push token against a key already in the cache, a new token
//! and one verified before.
//! `cargo bench -p whirligig-tests --bench hot_path`

#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::HeaderMap;
use support::issuer::{Issuer, Key};
use whirligig_handler::bench::{decode_push, verify};
use whirligig_handler::{Clock, PushAuth};

fn decode(c: &mut Criterion) {
    let registry = whirligig_handler::demo::registry().unwrap();
    let noop = support::task("bench-noop", "noop", serde_json::json!({}));
    let text = "x".repeat(4096);
    let large = support::task("bench-large", "echo", serde_json::json!({ "text": text }));
    let mut group = c.benchmark_group("decode envelope + parse payload + find route");
    for (name, body) in [("noop", noop), ("4 KiB kwargs", large)] {
        assert!(decode_push(&registry, body.as_bytes()).is_some(), "{name} does not decode");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| b.iter(|| decode_push(&registry, std::hint::black_box(body.as_bytes()))));
    }
    group.finish();
}

fn token(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let key = Key::generated(0);
    let (issuer, auth) = runtime.block_on(async {
        let issuer = Issuer::start(&key).await;
        let auth = PushAuth::oidc(&issuer.settings(), Clock::system()).unwrap();
        auth.start();
        (issuer, auth)
    });
    let bearer = |token: String| {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        headers
    };
    // More tokens than the instance remembers, so each one verifies afresh.
    let fresh: Vec<HeaderMap> =
        (0..2048).map(|n| bearer(issuer.token_with(&key, serde_json::json!({ "sub": format!("{n}") })))).collect();
    let seen = bearer(issuer.token(&key));
    // The first check waits for the keys; what follows finds them cached.
    assert!(runtime.block_on(verify(&auth, &seen)), "the token does not verify");
    let mut group = c.benchmark_group("verify a push token, key cached");
    group.bench_function("new token (RS256)", |b| {
        let mut tokens = fresh.iter().cycle();
        b.to_async(&runtime).iter(|| verify(&auth, std::hint::black_box(tokens.next().unwrap())));
    });
    group.bench_function("token seen before", |b| {
        b.to_async(&runtime).iter(|| verify(&auth, std::hint::black_box(&seen)));
    });
    group.finish();
}

criterion_group!(benches, decode, token);
criterion_main!(benches);
