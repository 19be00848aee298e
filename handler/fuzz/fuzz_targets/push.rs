//! A push body, as Pub/Sub, Eventarc (structured) or a binary CloudEvent
//! would post it: the first byte picks the wrapping's headers, the rest is
//! the body. Envelope, base64 data, payload, route, arguments.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use whirligig_handler::fuzzing::{self, Reached};
use whirligig_registry::Registry;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| whirligig_handler::demo::registry().expect("the demo registry builds"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else { return };
    let pairs: &[(&[u8], &[u8])] = match kind % 3 {
        0 => &[(b"content-type", b"application/json")],
        1 => &[(b"content-type", b"application/cloudevents+json; charset=utf-8")],
        _ => &[
            (b"ce-specversion", b"1.0"),
            (b"ce-type", b"google.cloud.pubsub.topic.v1.messagePublished"),
            (b"content-type", b"application/json"),
        ],
    };
    let headers = fuzzing::headers(pairs.iter().copied());
    let reached = fuzzing::push(registry(), &headers, body);
    assert_ne!(reached, Reached::Headers, "these headers are always accepted");
    // The same bytes as the bench entry point sees them (plain push).
    if kind % 3 == 0 {
        let _ = whirligig_handler::bench::decode_push(registry(), body);
    }
});
