//! Arbitrary header names and values (CloudEvent `ce-*` among them) before
//! a fixed, valid envelope: `Wrapping::of` and the decode that follows it.
//! Input: NUL-separated fields, taken as name, value, name, value...
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use whirligig_handler::fuzzing;
use whirligig_registry::Registry;

const ENVELOPE: &[u8] = br#"{"message":{"data":"eyJ0YXNrX2lkIjoidCIsInRhc2tfbmFtZSI6Im5vb3AiLCJhcmdzIjpbXSwia3dhcmdzIjp7fX0=","messageId":"1","publishTime":"2024-01-15T10:30:00Z"},"subscription":"projects/p/subscriptions/s"}"#;
const EVENT: &[u8] = br#"{"specversion":"1.0","type":"google.cloud.pubsub.topic.v1.messagePublished","source":"s","id":"1","data":{"message":{"data":"eyJ0YXNrX2lkIjoidCIsInRhc2tfbmFtZSI6Im5vb3AiLCJhcmdzIjpbXSwia3dhcmdzIjp7fX0=","messageId":"1"},"subscription":"projects/p/subscriptions/s"}}"#;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| whirligig_handler::demo::registry().expect("the demo registry builds"))
}

fuzz_target!(|data: &[u8]| {
    let fields: Vec<&[u8]> = data.split(|&b| b == 0).collect();
    let pairs = fields.chunks(2).filter_map(|pair| match pair {
        [name, value] => Some((*name, *value)),
        _ => None,
    });
    let headers = fuzzing::headers(pairs);
    let _ = fuzzing::push(registry(), &headers, ENVELOPE);
    let _ = fuzzing::push(registry(), &headers, EVENT);
});
