//! The Pub/Sub emulator itself, through the suites' client: a message comes
//! back from a pull as it was published, and a push the endpoint fails is
//! pushed again until it is answered 200. Needs the emulator that
//! scripts/test.sh starts (or PUBSUB_EMULATOR_HOST).

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use support::emulator::{Emulator, PushOptions, unique};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[tokio::test]
async fn a_published_message_is_pulled_back_as_it_was_sent() {
    let emulator = Emulator::new();
    let (topic, subscription) = (unique("round-trip"), unique("round-trip-sub"));
    emulator.create_topic(&topic).await;
    emulator.create_pull_subscription(&subscription, &topic).await;

    // Not UTF-8, and every byte value base64 has to get right.
    let data: Vec<u8> = (0..=255).collect();
    let attributes = [("task_name", "echo"), ("empty", ""), ("unicode", "héllo ✓")];
    let message_id = emulator.publish(&topic, &data, &attributes).await;

    let pulled = emulator.pull_exactly(&subscription, 1, Duration::from_secs(15)).await;
    assert_eq!(pulled[0].message_id, message_id);
    assert_eq!(pulled[0].data, data);
    let expected: BTreeMap<String, String> =
        attributes.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect();
    assert_eq!(pulled[0].attributes, expected);
    assert_eq!(pulled[0].delivery_attempt, None, "only a subscription with a dead letter policy counts attempts");
}

/// A push as the endpoint received it.
#[derive(Debug)]
struct Push {
    at: Instant,
    headers: http::HeaderMap,
    body: Value,
}

/// Serves 127.0.0.1:0, answering the first push 500 and every later one 200,
/// and hands each push over as it comes.
async fn failing_once() -> (SocketAddr, mpsc::UnboundedReceiver<Push>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the push endpoint");
    let addr = listener.local_addr().expect("the endpoint's address");
    let (pushes, received) = mpsc::unbounded_channel();
    let answered = Arc::new(AtomicU32::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (pushes, answered) = (pushes.clone(), Arc::clone(&answered));
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let (pushes, answered) = (pushes.clone(), Arc::clone(&answered));
                async move {
                    let at = Instant::now();
                    let (parts, body) = request.into_parts();
                    let body = body.collect().await.map(|body| body.to_bytes()).unwrap_or_default();
                    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let _ = pushes.send(Push { at, headers: parts.headers, body });
                    let status = if answered.fetch_add(1, Ordering::SeqCst) == 0 { 500 } else { 200 };
                    let response = http::Response::builder().status(status).body(Full::new(Bytes::new()));
                    Ok::<_, Infallible>(response.expect("a response"))
                }
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
        }
    });
    (addr, received)
}

async fn next_push(pushes: &mut mpsc::UnboundedReceiver<Push>, within: Duration) -> Push {
    tokio::time::timeout(within, pushes.recv())
        .await
        .expect("a push within the time allowed")
        .expect("the endpoint keeps serving")
}

#[tokio::test]
async fn a_push_answered_500_is_pushed_again_until_answered_200() {
    let emulator = Emulator::new();
    let (topic, subscription, dead_letters) = (unique("push"), unique("push-sub"), unique("push-dead"));
    emulator.create_topic(&topic).await;
    emulator.create_topic(&dead_letters).await;
    let (addr, mut pushes) = failing_once().await;
    let endpoint = format!("http://{addr}/tasks/pubsub/");
    let options = PushOptions {
        min_backoff_seconds: Some(1),
        max_backoff_seconds: Some(2),
        dead_letter_topic: Some(dead_letters.clone()),
        max_delivery_attempts: Some(5),
        ..PushOptions::default()
    };
    emulator.create_push_subscription(&subscription, &topic, &endpoint, options).await;

    let published = Instant::now();
    let message_id = emulator.publish(&topic, b"{\"task_id\":\"t1\"}", &[("kind", "task")]).await;

    let first = next_push(&mut pushes, Duration::from_secs(10)).await;
    let second = next_push(&mut pushes, Duration::from_secs(15)).await;
    println!(
        "first push {:?} after the publish, second {:?} after the first; deliveryAttempt {} then {}",
        first.at - published,
        second.at - first.at,
        first.body["deliveryAttempt"],
        second.body["deliveryAttempt"],
    );
    for push in [&first, &second] {
        assert_eq!(push.headers["content-type"], "application/json");
        assert!(push.headers.get("authorization").is_none(), "no OIDC token was asked for: {:?}", push.headers);
        assert_eq!(push.body["subscription"], emulator.subscription_path(&subscription));
        let message = &push.body["message"];
        assert_eq!(message["messageId"], message_id.as_str(), "{}", push.body);
        assert_eq!(message["message_id"], message_id.as_str(), "{}", push.body);
        assert_eq!(message["data"], STANDARD.encode(b"{\"task_id\":\"t1\"}"));
        assert_eq!(message["attributes"]["kind"], "task");
        assert!(message["publishTime"].is_string() && message["publish_time"].is_string(), "{}", push.body);
    }
    // Pub/Sub counts attempts in the push body when there is a dead letter
    // policy; emulator 0.8.20 never sends `deliveryAttempt`.
    if let (Some(first), Some(second)) =
        (first.body["deliveryAttempt"].as_u64(), second.body["deliveryAttempt"].as_u64())
    {
        assert_eq!((first, second), (1, 2));
    }

    // The 200 acknowledged it: nothing more comes (a retry would within ~3 s).
    let more = tokio::time::timeout(Duration::from_secs(4), pushes.recv()).await;
    assert!(more.is_err(), "a push answered 200 came again: {more:?}");
}
