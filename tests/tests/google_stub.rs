//! Self-test of the loopback Google stubs in support/google.rs and
//! support/scheduler.rs, driven by a plain HTTP client.

mod support;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use support::google::{Fault, MetadataStub, PubSubStub};
use support::scheduler::SchedulerStub;

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

const JOBS: &str = "projects/whirligig-test/locations/europe-west2/jobs";

/// A job as provisioning creates one: a cron schedule publishing `{"a":1}`.
fn nightly(id: &str) -> Value {
    json!({
        "name": format!("{JOBS}/{id}"),
        "schedule": "0 3 * * *",
        "pubsubTarget": {"topicName": "projects/whirligig-test/topics/tasks", "data": "eyJhIjoxfQ=="},
    })
}

/// `method` on `{url}/v1/{path}`: the status and the body as JSON (`Null` if it is not).
async fn scheduler(stub: &SchedulerStub, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
    scheduler_as(stub, None, method, path, body).await
}

async fn scheduler_as(
    stub: &SchedulerStub,
    authorization: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = client().request(method, format!("{}/v1/{path}", stub.url()));
    if let Some(authorization) = authorization {
        request = request.header("Authorization", authorization);
    }
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body.to_string());
    }
    let reply = request.send().await.expect("the Cloud Scheduler stub answers");
    let status = reply.status().as_u16();
    (status, serde_json::from_str(&reply.text().await.expect("a body")).unwrap_or(Value::Null))
}

fn error_status(body: &Value) -> &str {
    body["error"]["status"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn scheduler_creates_jobs_with_googles_defaults_filled_in() {
    let stub = SchedulerStub::start().await;

    let (status, created) = scheduler(&stub, reqwest::Method::POST, JOBS, Some(&nightly("nightly"))).await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["name"], format!("{JOBS}/nightly"));
    assert_eq!((created["state"].as_str(), created["timeZone"].as_str()), (Some("ENABLED"), Some("Etc/UTC")));
    let defaults = json!({"maxRetryDuration": "0s", "minBackoffDuration": "5s", "maxBackoffDuration": "3600s",
        "maxDoublings": 5});
    assert_eq!(created["retryConfig"], defaults);
    assert_eq!(created["pubsubTarget"]["data"], "eyJhIjoxfQ==");
    for time in ["userUpdateTime", "scheduleTime"] {
        let text = created[time].as_str().unwrap_or_default();
        assert!(
            chrono::DateTime::parse_from_rfc3339(text).is_ok_and(|at| at.offset().local_minus_utc() == 0),
            "{time}: {text}"
        );
    }
    let (status, read) = scheduler(&stub, reqwest::Method::GET, &format!("{JOBS}/nightly"), None).await;
    assert_eq!((status, &read), (200, &created));

    let mut tuned = nightly("tuned");
    tuned["retryConfig"] = json!({"retryCount": 2, "minBackoffDuration": "1.5s", "max_doublings": "3"});
    tuned["time_zone"] = json!("Europe/London");
    tuned["state"] = json!("PAUSED");
    let (status, created) = scheduler(&stub, reqwest::Method::POST, JOBS, Some(&tuned)).await;
    assert_eq!(status, 200, "{created}");
    let expected = json!({"retryCount": 2, "maxRetryDuration": "0s", "minBackoffDuration": "1.500s",
        "maxBackoffDuration": "3600s", "maxDoublings": 3});
    assert_eq!(created["retryConfig"], expected);
    assert_eq!((created["timeZone"].as_str(), created["state"].as_str()), (Some("Europe/London"), Some("ENABLED")));
}

#[tokio::test]
async fn scheduler_validates_like_google() {
    let stub = SchedulerStub::start().await;
    let mut bad_cron = nightly("a");
    bad_cron["schedule"] = json!("every day");
    let mut bad_data = nightly("b");
    bad_data["pubsubTarget"]["data"] = json!("not base64!");
    let mut elsewhere = nightly("c");
    elsewhere["name"] = json!("projects/whirligig-test/locations/us-east1/jobs/c");
    let mut unknown = nightly("d");
    unknown["bogus"] = json!(1);
    let mut bad_id = nightly("e");
    bad_id["name"] = json!(format!("{JOBS}/no.dots"));
    for job in
        [bad_cron, bad_data, elsewhere, unknown, bad_id, json!({"name": format!("{JOBS}/f"), "schedule": "* * * * *"})]
    {
        let (status, body) = scheduler(&stub, reqwest::Method::POST, JOBS, Some(&job)).await;
        assert_eq!((status, error_status(&body)), (400, "INVALID_ARGUMENT"), "{job}: {body}");
    }
    let (_, body) = scheduler(&stub, reqwest::Method::POST, JOBS, Some(&json!({"pubsubTarget": {}}))).await;
    assert_eq!(body["error"]["message"], "Schedule or time zone is invalid.");
    assert!(stub.jobs().is_empty());
}

#[tokio::test]
async fn scheduler_creates_a_job_once_when_two_race() {
    let stub = SchedulerStub::start().await;
    let job = nightly("nightly");
    let (first, second) = tokio::join!(
        scheduler(&stub, reqwest::Method::POST, JOBS, Some(&job)),
        scheduler(&stub, reqwest::Method::POST, JOBS, Some(&job)),
    );
    let mut statuses = [first.0, second.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409]);
    let refused = if first.0 == 409 { first.1 } else { second.1 };
    let message = format!("Job {JOBS}/nightly already exists.");
    assert_eq!(refused, json!({"error": {"code": 409, "message": message, "status": "ALREADY_EXISTS"}}));
    assert_eq!(stub.jobs().len(), 1);
}

#[tokio::test]
async fn scheduler_patches_only_the_masked_fields() {
    let stub = SchedulerStub::start().await;
    let (_, created) = scheduler(&stub, reqwest::Method::POST, JOBS, Some(&nightly("nightly"))).await;
    let name = format!("{JOBS}/nightly");

    let change = json!({"schedule": "0 4 * * *", "timeZone": "Europe/London", "retryConfig": {"retryCount": 5}});
    let (status, patched) = scheduler(
        &stub,
        reqwest::Method::PATCH,
        &format!("{name}?updateMask=schedule,retry_config.retry_count"),
        Some(&change),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!((patched["schedule"].as_str(), patched["timeZone"].as_str()), (Some("0 4 * * *"), Some("Etc/UTC")));
    assert_eq!(
        (patched["retryConfig"]["retryCount"].as_i64(), patched["retryConfig"]["maxDoublings"].as_i64()),
        (Some(5), Some(5))
    );
    assert_eq!(patched["pubsubTarget"], created["pubsubTarget"]);
    let update_time =
        |job: &Value| chrono::DateTime::parse_from_rfc3339(job["userUpdateTime"].as_str().unwrap_or_default()).ok();
    assert!(update_time(&patched) > update_time(&created), "{patched}");
    assert_eq!(stub.job(&name), Some(patched));

    let (status, body) =
        scheduler(&stub, reqwest::Method::PATCH, &format!("{name}?updateMask=colour"), Some(&change)).await;
    assert_eq!((status, body["error"]["message"].as_str()), (400, Some("Invalid mask for Job: colour")));
    let (status, body) =
        scheduler(&stub, reqwest::Method::PATCH, &format!("{JOBS}/missing?updateMask=schedule"), Some(&change)).await;
    assert_eq!((status, error_status(&body)), (404, "NOT_FOUND"));
}

#[tokio::test]
async fn scheduler_pauses_and_resumes() {
    let stub = SchedulerStub::start().await;
    stub.insert(nightly("nightly"));
    let name = format!("{JOBS}/nightly");
    let state = |body: &Value| body["state"].as_str().unwrap_or_default().to_owned();

    let (status, paused) = scheduler(&stub, reqwest::Method::POST, &format!("{name}:pause"), Some(&json!({}))).await;
    assert_eq!((status, state(&paused)), (200, "PAUSED".to_owned()));
    let (_, read) = scheduler(&stub, reqwest::Method::GET, &name, None).await;
    assert_eq!(state(&read), "PAUSED");
    let (status, again) = scheduler(&stub, reqwest::Method::POST, &format!("{name}:pause"), Some(&json!({}))).await;
    assert_eq!((status, &again), (200, &paused));
    let (status, resumed) = scheduler(&stub, reqwest::Method::POST, &format!("{name}:resume"), Some(&json!({}))).await;
    assert_eq!((status, state(&resumed)), (200, "ENABLED".to_owned()));

    let (status, body) =
        scheduler(&stub, reqwest::Method::POST, &format!("{JOBS}/missing:pause"), Some(&json!({}))).await;
    assert_eq!((status, error_status(&body)), (404, "NOT_FOUND"));
    assert_eq!(stub.writes(), 4);
}

#[tokio::test]
async fn scheduler_lists_in_pages_by_name() {
    let stub = SchedulerStub::start().await;
    for id in ["e", "c", "a", "d", "b"] {
        stub.insert(nightly(id));
    }
    stub.insert(json!({"name": "projects/whirligig-test/locations/us-east1/jobs/z", "schedule": "* * * * *",
        "pubsubTarget": {"topicName": "projects/whirligig-test/topics/tasks", "attributes": {"k": "v"}}}));

    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let (status, page) =
            scheduler(&stub, reqwest::Method::GET, &format!("{JOBS}?pageSize=2&pageToken={token}"), None).await;
        assert_eq!(status, 200, "{page}");
        let jobs = page["jobs"].as_array().cloned().unwrap_or_default();
        assert!(jobs.len() <= 2, "{page}");
        names.extend(
            jobs.iter()
                .map(|job| job["name"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_owned()),
        );
        match page["nextPageToken"].as_str() {
            Some(next) => token = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(names, ["a", "b", "c", "d", "e"]);
    assert_eq!(stub.requests().len(), 3, "seeding records no request");

    let (status, page) = scheduler(&stub, reqwest::Method::GET, JOBS, None).await;
    assert_eq!((status, page["jobs"].as_array().map(Vec::len)), (200, Some(5)));
    let empty = "projects/whirligig-test/locations/asia-east1/jobs";
    assert_eq!(scheduler(&stub, reqwest::Method::GET, empty, None).await, (200, json!({})));
    assert_eq!(stub.jobs().len(), 6);
}

#[tokio::test]
async fn scheduler_forgets_a_deleted_job() {
    let stub = SchedulerStub::start().await;
    stub.insert(nightly("nightly"));
    let name = format!("{JOBS}/nightly");

    assert_eq!(scheduler(&stub, reqwest::Method::DELETE, &name, None).await, (200, json!({})));
    let (status, body) = scheduler(&stub, reqwest::Method::GET, &name, None).await;
    assert_eq!(body, json!({"error": {"code": 404, "message": "Job not found.", "status": "NOT_FOUND"}}));
    assert_eq!(status, 404);
    assert_eq!(scheduler(&stub, reqwest::Method::DELETE, &name, None).await.0, 404);
    assert_eq!(stub.job(&name), None);

    let reply = client().get(format!("{}/v2/{name}", stub.url())).send().await.expect("an answer");
    assert_eq!(reply.status(), 404);
    assert!(reply.text().await.expect("a body").contains("was not found on this server"));
    assert_eq!(stub.writes(), 2);
}

#[tokio::test]
async fn checking_scheduler_refuses_a_missing_token() {
    let metadata = MetadataStub::start().await;
    let stub = SchedulerStub::start_checking(&metadata).await;

    let (status, body) = scheduler(&stub, reqwest::Method::GET, JOBS, None).await;
    assert_eq!((status, error_status(&body)), (401, "UNAUTHENTICATED"));
    assert!(
        body["error"]["message"].as_str().unwrap_or_default().starts_with("Request is missing required authentication")
    );
    let (status, _) = scheduler_as(&stub, Some("Bearer token-9"), reqwest::Method::GET, JOBS, None).await;
    assert_eq!(status, 401);

    let bearer = format!("Bearer {}", token(&metadata).await);
    assert_eq!(scheduler_as(&stub, Some(&bearer), reqwest::Method::GET, JOBS, None).await, (200, json!({})));
    let requests = stub.requests();
    assert_eq!(requests.iter().map(|request| request.answered).collect::<Vec<_>>(), [401, 401, 200]);
    assert_eq!(requests[2].authorization.as_deref(), Some("Bearer token-1"));
    assert_eq!(requests[2].path, format!("/v1/{JOBS}"));
}

#[tokio::test]
async fn scheduler_answers_a_scripted_fault_once() {
    let stub = SchedulerStub::start().await;
    stub.push_fault(Fault::error(503, "UNAVAILABLE"));

    let (status, body) = scheduler(&stub, reqwest::Method::POST, JOBS, Some(&nightly("nightly"))).await;
    let expected =
        json!({"error": {"code": 503, "message": "The service is currently unavailable.", "status": "UNAVAILABLE"}});
    assert_eq!((status, body), (503, expected));
    assert!(stub.jobs().is_empty(), "a faulted create stores nothing");

    let (status, created) = scheduler(&stub, reqwest::Method::POST, JOBS, Some(&nightly("nightly"))).await;
    assert_eq!((status, created["state"].as_str()), (200, Some("ENABLED")));
    let requests = stub.requests();
    assert_eq!(requests.iter().map(|request| request.answered).collect::<Vec<_>>(), [503, 200]);
    assert_eq!(requests[0].body, Some(nightly("nightly")));
    assert_eq!(stub.writes(), 2);
}
