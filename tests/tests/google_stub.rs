//! Self-test of the loopback Google stubs in support/google.rs, driven by a
//! plain HTTP client.

mod support;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use support::google::{Fault, MetadataStub, PubSubStub};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().expect("a client")
}

async fn metadata_get(stub: &MetadataStub, path: &str, flavor: bool) -> reqwest::Response {
    let mut request = client().get(format!("http://{}{path}", stub.host()));
    if flavor {
        request = request.header("Metadata-Flavor", "Google");
    }
    request.send().await.expect("the metadata stub answers")
}

const TOKEN: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

async fn token(stub: &MetadataStub) -> String {
    let reply = metadata_get(stub, &format!("{TOKEN}?scopes=https://www.googleapis.com/auth/pubsub"), true).await;
    let body: Value = serde_json::from_str(&reply.text().await.expect("a body")).expect("JSON");
    body["access_token"].as_str().expect("a token").to_owned()
}

async fn publish(stub: &PubSubStub, authorization: Option<&str>, body: &Value) -> (u16, String) {
    let mut request = client().post(stub.publish_url("whirligig-test", "tasks")).body(body.to_string());
    if let Some(authorization) = authorization {
        request = request.header("Authorization", authorization);
    }
    let reply = request.send().await.expect("the Pub/Sub stub answers");
    (reply.status().as_u16(), reply.text().await.expect("a body"))
}

fn one_message(payload: &str) -> Value {
    let data = base64::engine::general_purpose::STANDARD.encode(payload);
    json!({"messages": [{"data": data, "attributes": {"k": "v"}}]})
}

#[tokio::test]
async fn metadata_issues_tokens_only_to_flavored_requests() {
    let stub = MetadataStub::start().await;

    let reply = metadata_get(&stub, TOKEN, true).await;
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.headers()["content-type"], "application/json");
    let body: Value = serde_json::from_str(&reply.text().await.expect("a body")).expect("JSON");
    assert_eq!(body, json!({"access_token": "token-1", "expires_in": 3599, "token_type": "Bearer"}));

    assert_eq!(metadata_get(&stub, TOKEN, false).await.status(), 403);
    assert_eq!(stub.missing_flavor(), 1);
    let forwarded = client()
        .get(format!("http://{}{TOKEN}", stub.host()))
        .header("Metadata-Flavor", "Google")
        .header("X-Forwarded-For", "10.0.0.1")
        .send()
        .await
        .expect("an answer");
    assert_eq!(forwarded.status(), 403);

    stub.set_expires_in(60);
    assert_eq!(token(&stub).await, "token-2");
    stub.token_requested(4).await;
    assert_eq!(stub.issued(), ["token-1", "token-2"]);
    assert!(stub.is_issued("token-2") && !stub.is_issued("token-3"));

    let project = metadata_get(&stub, "/computeMetadata/v1/project/project-id", true).await;
    assert_eq!(project.text().await.expect("a body"), "whirligig-test");
    let number = metadata_get(&stub, "/computeMetadata/v1/project/numeric-project-id", true).await;
    assert_eq!(number.text().await.expect("a body"), "123456789012");
    assert_eq!(metadata_get(&stub, "/computeMetadata/v1/", true).await.status(), 200);
    assert_eq!(metadata_get(&stub, "/computeMetadata/v1/nothing", true).await.status(), 404);
}

#[tokio::test]
async fn down_metadata_is_a_connection_error() {
    let stub = MetadataStub::start().await;
    let client = client();
    let url = format!("http://{}{TOKEN}", stub.host());
    let first = client.get(&url).header("Metadata-Flavor", "Google").send().await.expect("an answer");
    assert_eq!(first.status(), 200);
    stub.set_down(true);
    // The pooled connection is closed too, not only new ones.
    let error = client.get(&url).header("Metadata-Flavor", "Google").send().await.expect_err("no answer");
    assert!(!error.is_timeout() && error.status().is_none(), "{error:?}");
    stub.set_down(false);
    assert_eq!(token(&stub).await, "token-2");
}

#[tokio::test]
async fn checking_pubsub_takes_only_issued_tokens() {
    let metadata = MetadataStub::start().await;
    let pubsub = PubSubStub::start_checking(&metadata).await;

    let (status, body) = publish(&pubsub, Some("Bearer token-9"), &one_message("x")).await;
    assert_eq!(status, 401);
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(body["error"]["code"], 401);

    let token = token(&metadata).await;
    let (status, body) = publish(&pubsub, Some(&format!("Bearer {token}")), &one_message("hello")).await;
    assert_eq!((status, body.as_str()), (200, r#"{"messageIds":["1"]}"#));

    let requests = pubsub.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].path, "/v1/projects/whirligig-test/topics/tasks:publish");
    assert_eq!(requests[1].authorization.as_deref(), Some("Bearer token-1"));
    assert_eq!(requests[1].messages[0].data, b"hello");
    assert_eq!(requests[1].messages[0].attributes["k"], "v");
    assert_eq!((requests[0].answered, requests[1].answered), (401, 200));
}

#[tokio::test]
async fn pubsub_validates_like_google() {
    let pubsub = PubSubStub::start().await;
    for body in [json!({"messages": []}), json!({"messages": [{"data": ""}]}), json!({"messages": [{"bogus": 1}]})] {
        let (status, reply) = publish(&pubsub, None, &body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(serde_json::from_str::<Value>(&reply).expect("JSON")["error"]["status"], "INVALID_ARGUMENT");
    }
    let many = json!({"messages": vec![json!({"attributes": {"a": "b"}}); 1001]});
    assert_eq!(publish(&pubsub, None, &many).await.0, 400);
    let reply = client().post(pubsub.publish_url("p", "t")).body("{not json").send().await.expect("an answer");
    assert_eq!(reply.status(), 400);
    let two = json!({"messages": [{"attributes": {"a": "b"}}, {"data": "eA"}]});
    assert_eq!(publish(&pubsub, None, &two).await, (200, r#"{"messageIds":["1","2"]}"#.to_owned()));
}

#[tokio::test]
async fn scripted_faults_come_first() {
    let pubsub = PubSubStub::start().await;
    pubsub.push_fault(Fault::error(503, "UNAVAILABLE"));
    pubsub.push_fault(Fault::Bare(503));
    pubsub.push_fault(Fault::error(404, "NOT_FOUND"));

    let (status, body) = publish(&pubsub, None, &one_message("a")).await;
    assert_eq!(status, 503);
    let expected =
        json!({"error": {"code": 503, "message": "The service is currently unavailable.", "status": "UNAVAILABLE"}});
    assert_eq!(serde_json::from_str::<Value>(&body).expect("JSON"), expected);
    assert_eq!(publish(&pubsub, None, &one_message("a")).await, (503, String::new()));
    let (status, body) = publish(&pubsub, None, &one_message("a")).await;
    assert_eq!(status, 404);
    assert!(body.contains("Resource not found (resource=tasks)."), "{body}");
    assert_eq!(publish(&pubsub, None, &one_message("a")).await, (200, r#"{"messageIds":["1"]}"#.to_owned()));
    assert_eq!(pubsub.publish_requests(), 4);
}

#[tokio::test]
async fn hang_and_close_never_answer() {
    let pubsub = PubSubStub::start().await;
    pubsub.push_fault(Fault::Hang);
    pubsub.push_fault(Fault::Close);
    let request = client()
        .post(pubsub.publish_url("p", "t"))
        .timeout(Duration::from_millis(300))
        .body(one_message("a").to_string());
    let error = request.send().await.expect_err("no answer");
    assert!(error.is_timeout(), "{error:?}");
    pubsub.requested(1).await;

    let error = client().post(pubsub.publish_url("p", "t")).body(one_message("a").to_string()).send().await;
    let error = error.expect_err("no answer");
    assert!(!error.is_timeout() && error.status().is_none(), "{error:?}");
    assert_eq!(pubsub.requests().iter().map(|request| request.answered).collect::<Vec<_>>(), [0, 0]);
    assert_eq!(publish(&pubsub, None, &one_message("a")).await.0, 200);
}
