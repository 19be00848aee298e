//! Entry points for the workspace's micro-benchmarks into code that is
//! otherwise private: the pure part of a push (envelope, payload, route) and
//! token verification. Built only with the `bench` feature; not an API.

use http::HeaderMap;
use whirligig_registry::Registry;

use crate::auth::PushAuth;
use crate::push::{Wrapping, decode, routed};

/// Decodes a push body as the endpoint does, parses its payload and finds
/// its route; the execution id's length, or `None` for a body that fails.
pub fn decode_push(registry: &Registry, body: &[u8]) -> Option<usize> {
    let (envelope, data) = decode(Wrapping::Push, body).ok()?;
    let (message, _) = routed(registry, envelope.message_id(), &data).ok()?;
    Some(message.execution_id(envelope.message_id()).len())
}

/// The SQL of the store's claim and finish, as prepared on every connection.
pub fn claim_and_finish() -> (&'static str, &'static str) {
    crate::store::claim_and_finish()
}

/// Whether `auth` lets a request with these headers through.
pub async fn verify(auth: &PushAuth, headers: &HeaderMap) -> bool {
    auth.check(headers).await.is_ok()
}
