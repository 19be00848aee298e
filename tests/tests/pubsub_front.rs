//! Self-test of the Pub/Sub front in support/pubsub_front.rs against the real
//! emulator that scripts/test.sh starts (or PUBSUB_EMULATOR_HOST): it relays,
//! records, faults on cue, answers IAM and checks tokens.

mod support;

use std::time::Duration;

use http::Method;
use serde_json::{Value, json};
use support::emulator::{PROJECT, emulator_host, unique};
use support::google::{Fault, MISSING_CREDENTIALS, MetadataStub};
use support::pubsub_front::{self, CONCURRENT_POLICY_CHANGES, EMPTY_POLICY_ETAG, FrontRequest, PubSubFront};

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().expect("a client")
}

/// An answer, read whole.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{} is not JSON ({e}): {}", self.status, self.body))
    }
}

/// Sends `body` (JSON) to `{base}/v1/{path}` with `authorization` when given.
async fn send(base: &str, method: Method, path: &str, body: Option<&Value>, authorization: Option<&str>) -> Answer {
    let mut request = client().request(method, format!("{base}/v1/{path}"));
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_string());
    }
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    let response = request.send().await.expect("an answer");
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").map(|v| v.to_str().expect("ASCII").to_owned());
    Answer { status, content_type, body: response.text().await.expect("a body") }
}

async fn call(front: &PubSubFront, method: Method, path: &str, body: Option<&Value>) -> Answer {
    send(&front.url(), method, path, body, None).await
}

/// The same request straight to the emulator.
async fn direct(method: Method, path: &str, body: Option<&Value>) -> Answer {
    send(&format!("http://{}", emulator_host()), method, path, body, None).await
}

fn topic_path(topic: &str) -> String {
    format!("projects/{PROJECT}/topics/{topic}")
}

fn subscription_path(subscription: &str) -> String {
    format!("projects/{PROJECT}/subscriptions/{subscription}")
}

async fn create_topic(front: &PubSubFront, topic: &str) {
    let created = call(front, Method::PUT, &topic_path(topic), Some(&json!({}))).await;
    assert_eq!(created.status, 200, "{created:?}");
}

fn set_body(etag: Option<&str>, members: &[&str]) -> Value {
    let mut policy = json!({"bindings": [{"role": "roles/pubsub.publisher", "members": members}]});
    if let Some(etag) = etag {
        policy["etag"] = etag.into();
    }
    json!({"policy": policy})
}

async fn set_policy(front: &PubSubFront, resource: &str, body: &Value) -> Answer {
    call(front, Method::POST, &format!("{resource}:setIamPolicy"), Some(body)).await
}

async fn get_policy(front: &PubSubFront, resource: &str) -> Answer {
    call(front, Method::GET, &format!("{resource}:getIamPolicy"), None).await
}

#[tokio::test]
async fn a_topic_created_through_the_front_is_on_the_emulator_and_answers_are_relayed_as_they_are() {
    let front = pubsub_front::start(&emulator_host()).await;
    let topic = unique("front-forward");

    let created = call(&front, Method::PUT, &topic_path(&topic), Some(&json!({"labels": {"k": "v"}}))).await;
    assert_eq!(created.status, 200, "{created:?}");
    assert_eq!(created.json()["name"], topic_path(&topic));

    let read_back = direct(Method::GET, &topic_path(&topic), None).await;
    assert_eq!(read_back.status, 200, "{read_back:?}");
    assert_eq!(read_back.json()["labels"], json!({"k": "v"}), "the body reached the emulator: {read_back:?}");

    let missing = topic_path(&unique("front-missing"));
    let (through, straight) =
        (call(&front, Method::GET, &missing, None).await, direct(Method::GET, &missing, None).await);
    assert_eq!(through.status, 404);
    assert_eq!(
        (through.status, &through.content_type, &through.body),
        (straight.status, &straight.content_type, &straight.body)
    );

    let listed = call(&front, Method::GET, &format!("projects/{PROJECT}/topics?pageSize=1000"), None).await;
    assert_eq!(listed.status, 200, "the query is forwarded too: {listed:?}");
}

#[tokio::test]
async fn every_request_is_recorded_and_only_those_that_change_state_are_writes() {
    let front = pubsub_front::start(&emulator_host()).await;
    let (topic, subscription) = (unique("front-record"), unique("front-record-sub"));
    let (topic_name, subscription_name) = (topic_path(&topic), subscription_path(&subscription));

    create_topic(&front, &topic).await;
    let sub_body = json!({"topic": topic_name, "ackDeadlineSeconds": 10});
    call(&front, Method::PUT, &subscription_name, Some(&sub_body)).await;
    call(&front, Method::GET, &format!("{topic_name}?fields=name"), None).await;
    let publish = json!({"messages": [{"data": "aGk="}]});
    call(&front, Method::POST, &format!("{topic_name}:publish"), Some(&publish)).await;
    let pull = json!({"maxMessages": 1, "returnImmediately": true});
    call(&front, Method::POST, &format!("{subscription_name}:pull"), Some(&pull)).await;
    let ack = json!({"ackIds": []});
    call(&front, Method::POST, &format!("{subscription_name}:acknowledge"), Some(&ack)).await;
    let deadline = json!({"ackIds": [], "ackDeadlineSeconds": 0});
    call(&front, Method::POST, &format!("{subscription_name}:modifyAckDeadline"), Some(&deadline)).await;
    get_policy(&front, &topic_name).await;
    set_policy(&front, &topic_name, &set_body(None, &["serviceAccount:a@p.iam.gserviceaccount.com"])).await;
    let patch = json!({"subscription": {"ackDeadlineSeconds": 20}, "updateMask": "ackDeadlineSeconds"});
    call(&front, Method::PATCH, &subscription_name, Some(&patch)).await;
    let deleted = call(&front, Method::DELETE, &subscription_name, None).await;
    assert_eq!(deleted.status, 200, "{deleted:?}");

    let requests = front.requests();
    let seen: Vec<(Method, String)> = requests.iter().map(|r| (r.method.clone(), r.path.clone())).collect();
    assert_eq!(seen.len(), 11, "{seen:?}");
    assert!(requests.iter().all(|r| r.answered != 0 && r.authorization.is_none()), "{requests:?}");
    let get = &requests[2];
    assert_eq!(
        (get.path.as_str(), get.query.as_deref(), &get.body),
        (format!("/v1/{topic_name}").as_str(), Some("fields=name"), &None)
    );
    assert_eq!(requests[1].body, Some(sub_body));
    assert_eq!(requests[3].body, Some(publish));
    assert_eq!(requests[7].answered, 200, "getIamPolicy is answered by the front: {:?}", requests[7]);

    let writes: Vec<(Method, String)> = front.writes().into_iter().map(|r| (r.method, r.path)).collect();
    let expected = [
        (Method::PUT, format!("/v1/{topic_name}")),
        (Method::PUT, format!("/v1/{subscription_name}")),
        (Method::POST, format!("/v1/{topic_name}:setIamPolicy")),
        (Method::PATCH, format!("/v1/{subscription_name}")),
        (Method::DELETE, format!("/v1/{subscription_name}")),
    ];
    assert_eq!(writes, expected);

    front.clear();
    assert_eq!(front.requests(), Vec::<FrontRequest>::new());
    call(&front, Method::GET, &topic_name, None).await;
    assert_eq!(front.requests().len(), 1);
    assert!(front.writes().is_empty());
}

#[tokio::test]
async fn a_scripted_fault_answers_the_first_matching_call_only_and_then_calls_are_forwarded_again() {
    let front = pubsub_front::start(&emulator_host()).await;
    let (topic, other) = (unique("front-fault"), unique("front-fault-other"));
    let path = topic_path(&topic);
    front.push_fault(Method::PUT, &format!("/topics/{topic}"), Fault::error(503, "UNAVAILABLE"));
    front.push_fault(Method::PUT, &format!("/topics/{topic}"), Fault::error(404, "NOT_FOUND"));

    let other_method = call(&front, Method::GET, &path, None).await;
    assert_eq!(other_method.status, 404, "a GET is not the PUT scripted: the emulator answers");
    assert_eq!(other_method.json()["error"]["message"], "Topic not found");
    create_topic(&front, &other).await;
    assert_eq!(front.faults_left(), 2);

    let unavailable = call(&front, Method::PUT, &path, Some(&json!({}))).await;
    assert_eq!(unavailable.status, 503);
    assert_eq!(
        unavailable.json(),
        json!({"error": {"code": 503, "message": "The service is currently unavailable.", "status": "UNAVAILABLE"}})
    );
    let not_found = call(&front, Method::PUT, &path, Some(&json!({}))).await;
    assert_eq!(not_found.json()["error"]["message"], format!("Resource not found (resource={topic})."));
    assert_eq!(front.faults_left(), 0);
    assert_eq!(direct(Method::GET, &path, None).await.status, 404, "a faulted call is not forwarded");

    create_topic(&front, &topic).await;
    assert_eq!(direct(Method::GET, &path, None).await.status, 200);
    let answered: Vec<u16> = front.requests().iter().map(|r| r.answered).collect();
    assert_eq!(answered, [404, 200, 503, 404, 200]);
    assert_eq!(front.writes().len(), 4, "faulted writes are writes too");
}

#[tokio::test]
async fn bare_hang_and_close_faults_answer_as_scripted() {
    let front = pubsub_front::start(&emulator_host()).await;
    let topic = unique("front-faults");
    create_topic(&front, &topic).await;
    let path = topic_path(&topic);
    front.push_fault(Method::GET, &topic, Fault::Bare(429));
    front.push_fault(Method::GET, &topic, Fault::Hang);
    front.push_fault(Method::GET, &topic, Fault::Close);

    let bare = call(&front, Method::GET, &path, None).await;
    assert_eq!((bare.status, bare.body.as_str()), (429, ""));
    let url = format!("{}/v1/{path}", front.url());
    let hung = client().get(&url).timeout(Duration::from_millis(300)).send().await;
    assert!(hung.is_err_and(|error| error.is_timeout()), "a hung call is never answered");
    let closed = client().get(&url).send().await;
    assert!(closed.is_err_and(|error| !error.is_timeout()), "a closed call gets no answer");
    assert_eq!(call(&front, Method::GET, &path, None).await.status, 200);

    let answered: Vec<u16> = front.requests().iter().map(|r| r.answered).collect();
    assert_eq!(answered, [200, 429, 0, 0, 200]);
}

#[tokio::test]
async fn iam_policies_round_trip_with_etags_and_a_stale_etag_is_aborted() {
    let front = pubsub_front::start(&emulator_host()).await;
    let topic = unique("front-iam");
    create_topic(&front, &topic).await;
    let resource = topic_path(&topic);

    let empty = get_policy(&front, &resource).await;
    assert_eq!((empty.status, empty.json()), (200, json!({"etag": EMPTY_POLICY_ETAG})));
    assert_eq!(front.policy(&resource), None);

    let member = "serviceAccount:whirligig@whirligig-test.iam.gserviceaccount.com";
    let first = set_policy(&front, &resource, &set_body(Some(EMPTY_POLICY_ETAG), &[member])).await;
    assert_eq!(first.status, 200, "{first:?}");
    let first = first.json();
    let etag = first["etag"].as_str().expect("an etag").to_owned();
    assert_ne!(etag, EMPTY_POLICY_ETAG);
    let bindings = json!([{"role": "roles/pubsub.publisher", "members": [member]}]);
    assert_eq!(first, json!({"version": 1, "etag": etag, "bindings": bindings}));
    assert_eq!(get_policy(&front, &resource).await.json(), first);
    assert_eq!(front.policy(&resource), Some(first.clone()));
    let versioned =
        call(&front, Method::GET, &format!("{resource}:getIamPolicy?options.requestedPolicyVersion=3"), None).await;
    assert_eq!(versioned.json(), first);

    let stale = set_policy(&front, &resource, &set_body(Some(EMPTY_POLICY_ETAG), &["user:eve@example.com"])).await;
    assert_eq!(stale.status, 409);
    assert_eq!(
        stale.json(),
        json!({"error": {"code": 409, "message": CONCURRENT_POLICY_CHANGES, "status": "ABORTED"}})
    );
    assert_eq!(front.policy(&resource), Some(first), "an aborted set changes nothing");

    let blind = set_policy(&front, &resource, &json!({"policy": {}, "updateMask": "bindings,etag"})).await;
    assert_eq!(blind.status, 200, "no etag: overwritten: {blind:?}");
    let blind = blind.json();
    assert!(blind["etag"].as_str().is_some_and(|new| new != etag && new != EMPTY_POLICY_ETAG), "{blind}");
    assert_eq!(blind.get("bindings"), None, "an empty list is left out, as Google leaves it");
    assert_eq!(front.requests().iter().map(|r| r.answered).collect::<Vec<_>>(), [200, 200, 200, 200, 200, 409, 200]);
}

#[tokio::test]
async fn subscription_policies_are_kept_apart_from_their_topics() {
    let front = pubsub_front::start(&emulator_host()).await;
    let (topic, subscription) = (unique("front-iam-topic"), unique("front-iam-sub"));
    create_topic(&front, &topic).await;
    let body = json!({"topic": topic_path(&topic)});
    assert_eq!(call(&front, Method::PUT, &subscription_path(&subscription), Some(&body)).await.status, 200);

    let member = "serviceAccount:pusher@whirligig-test.iam.gserviceaccount.com";
    let set = set_policy(&front, &subscription_path(&subscription), &set_body(None, &[member])).await;
    assert_eq!(set.status, 200, "{set:?}");
    assert_eq!(get_policy(&front, &subscription_path(&subscription)).await.json(), set.json());
    assert_eq!(get_policy(&front, &topic_path(&topic)).await.json(), json!({"etag": EMPTY_POLICY_ETAG}));
}

#[tokio::test]
async fn iam_on_a_missing_resource_is_the_emulators_404_and_a_bad_policy_is_400() {
    let front = pubsub_front::start(&emulator_host()).await;
    let missing_topic = topic_path(&unique("front-iam-missing"));
    let set = set_policy(&front, &missing_topic, &set_body(None, &["user:eve@example.com"])).await;
    assert_eq!(set.status, 404);
    assert_eq!(set.json(), json!({"error": {"code": 404, "message": "Topic not found", "status": "NOT_FOUND"}}));
    assert_eq!(front.policy(&missing_topic), None);
    let missing_subscription = subscription_path(&unique("front-iam-missing-sub"));
    let get = get_policy(&front, &missing_subscription).await;
    assert_eq!((get.status, get.json()["error"]["message"].clone()), (404, json!("Subscription does not exist")));

    let topic = unique("front-iam-bad");
    create_topic(&front, &topic).await;
    let bad_bodies = [
        json!({"policy": {"bindings": [{"role": "roles/pubsub.publisher", "members": "user:eve@example.com"}]}}),
        json!({"policy": {"bindings": [{"members": ["user:eve@example.com"]}]}}),
        json!({"policy": {"bindings": {"role": "roles/pubsub.publisher"}}}),
        json!({"policy": {"etag": 7}}),
        json!({"bindings": []}),
        json!([]),
    ];
    for body in bad_bodies {
        let refused = set_policy(&front, &topic_path(&topic), &body).await;
        assert_eq!(
            (refused.status, refused.json()["error"]["status"].clone()),
            (400, json!("INVALID_ARGUMENT")),
            "{body}"
        );
    }
    let version = call(
        &front,
        Method::GET,
        &format!("{}:getIamPolicy?options.requestedPolicyVersion=2", topic_path(&topic)),
        None,
    )
    .await;
    assert_eq!(version.status, 400, "{version:?}");
    assert_eq!(front.policy(&topic_path(&topic)), None);
}

#[tokio::test]
async fn concurrent_sets_with_one_etag_let_exactly_one_through() {
    let front = pubsub_front::start(&emulator_host()).await;
    let topic = unique("front-iam-race");
    create_topic(&front, &topic).await;
    let resource = topic_path(&topic);

    let sets = (0..8).map(|n| {
        let (front, resource) = (front.clone(), resource.clone());
        tokio::spawn(async move {
            let body = set_body(Some(EMPTY_POLICY_ETAG), &[&format!("user:u{n}@example.com")]);
            set_policy(&front, &resource, &body).await.status
        })
    });
    let mut statuses = Vec::new();
    for set in sets.collect::<Vec<_>>() {
        statuses.push(set.await.expect("the set ran"));
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409, 409, 409, 409, 409, 409, 409]);
}

#[tokio::test]
async fn a_checking_front_refuses_a_call_without_a_valid_token_and_forwards_one_with() {
    let metadata = MetadataStub::start().await;
    let front = pubsub_front::start_checking(&emulator_host(), &metadata).await;
    let topic = unique("front-auth");
    let path = topic_path(&topic);

    let anonymous = send(&front.url(), Method::PUT, &path, Some(&json!({})), None).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.json()["error"]["message"], MISSING_CREDENTIALS);
    let forged = send(&front.url(), Method::PUT, &path, Some(&json!({})), Some("Bearer token-9")).await;
    assert_eq!((forged.status, forged.json()["error"]["status"].clone()), (401, json!("UNAUTHENTICATED")));
    let iam = send(&front.url(), Method::GET, &format!("{path}:getIamPolicy"), None, None).await;
    assert_eq!(iam.status, 401, "IAM is checked too");
    assert_eq!(direct(Method::GET, &path, None).await.status, 404, "no refused call reached the emulator");

    let token_url = format!("http://{}/computeMetadata/v1/instance/service-accounts/default/token", metadata.host());
    let issued = client().get(token_url).header("Metadata-Flavor", "Google").send().await.expect("a token");
    let issued: Value = serde_json::from_str(&issued.text().await.expect("a body")).expect("a token as JSON");
    let bearer = format!("Bearer {}", issued["access_token"].as_str().expect("an access token"));
    let created = send(&front.url(), Method::PUT, &path, Some(&json!({})), Some(&bearer)).await;
    assert_eq!(created.status, 200, "{created:?}");
    assert_eq!(direct(Method::GET, &path, None).await.status, 200);

    let recorded: Vec<(Option<String>, u16)> =
        front.requests().into_iter().map(|r| (r.authorization, r.answered)).collect();
    assert_eq!(recorded, [(None, 401), (Some("Bearer token-9".to_owned()), 401), (None, 401), (Some(bearer), 200)]);
}
