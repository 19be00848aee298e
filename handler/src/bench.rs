//! Entry points for the workspace's micro-benchmarks into code that is
//! otherwise private: the pure part of a push (envelope, payload, route) and
//! token verification. Built only with the `bench` feature; not an API.

use http::HeaderMap;
use whirligig_registry::{ReceivedMessage, Registry};

use crate::auth::PushAuth;
use crate::push::{Pushed, Wrapping};

/// Decodes a push body as the endpoint does, parses its payload and finds
/// its route; the execution id's length, or `None` for a body that fails.
pub fn decode_push(registry: &Registry, body: &[u8]) -> Option<usize> {
    let pushed = Pushed::decode(Wrapping::Push, body).ok()?;
    let message = ReceivedMessage::parse(pushed.data()).ok()?;
    registry.get(message.task_name())?;
    Some(message.execution_id(pushed.message_id()).len())
}

/// The SQL of the store's claim and finish, as prepared on every connection.
pub fn claim_and_finish() -> (&'static str, &'static str) {
    crate::store::claim_and_finish()
}

/// Whether `auth` lets a request with these headers through.
pub async fn verify(auth: &PushAuth, headers: &HeaderMap) -> bool {
    auth.check(headers).await.is_ok()
}
