//! `whirligig provision` as a deploy runs it, the real binary against the real
//! Pub/Sub emulator (through a recording front that counts writes, injects
//! faults and answers IAM), with loopback stubs of Cloud Scheduler and the
//! metadata server: what a first run creates, that a second writes nothing,
//! drift patched field by field, orphans, delivery through what was made,
//! and every failure named.

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Output;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::Method;
use serde_json::{Value, json};
use support::TestDb;
use support::emulator::{Emulator, emulator_host};
use support::google::{Fault, MetadataStub};
use support::process::{Server, assert_exit, free_port, run_app, text};
use support::pubsub_front::{self, FrontRequest, PubSubFront};
use support::scheduler::SchedulerStub;
use whirligig_handler::demo;
use whirligig_handler::store::Status;
use whirligig_registry::{Naming, TaskMessage};

/// The account push tokens are signed as.
const PUSH_ACCOUNT: &str = "push@whirligig-test.iam.gserviceaccount.com";
/// The Pub/Sub service agent of the metadata stub's project.
const SERVICE_AGENT: &str = "serviceAccount:service-123456789012@gcp-sa-pubsub.iam.gserviceaccount.com";

/// A namespace of its own, so concurrent tests and earlier runs never meet.
fn namespace() -> String {
    format!("p{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// One test's resources: a project of its own (a listing sees only them,
/// however many earlier runs left in the emulator), its namespace, and the
/// front every call goes through.
struct Cloud {
    project: String,
    namespace: String,
    naming: Naming,
    front: PubSubFront,
    emulator: Emulator,
    service_url: String,
}

impl Cloud {
    async fn new() -> Cloud {
        let namespace = namespace();
        let project = format!("whirligig-{namespace}");
        Cloud {
            naming: Naming::new("dev", namespace.clone()).unwrap(),
            namespace,
            front: pubsub_front::start(&emulator_host()).await,
            emulator: Emulator::in_project(&project),
            project,
            service_url: format!("http://127.0.0.1:{}", free_port()),
        }
    }

    /// Provisioning against the emulator, through the front.
    fn env(&self) -> Vec<(String, String)> {
        [
            ("PUBSUB_EMULATOR_HOST", self.front.host()),
            ("GCP_PROJECT_ID", self.project.clone()),
            ("TASKS_NAMESPACE", self.namespace.clone()),
            ("CLOUD_RUN_SERVICE_URL", self.service_url.clone()),
            ("TASKS_SERVICE_ACCOUNT", PUSH_ACCOUNT.to_owned()),
        ]
        .map(|(name, value)| (name.to_owned(), value))
        .into()
    }

    async fn provision(&self, args: &[&str]) -> Output {
        self.provision_with(args, &[]).await
    }

    /// `provision` with `extra` variables on top of [`env`](Self::env) (an empty value unsets one).
    async fn provision_with(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut env = self.env();
        for (name, value) in extra {
            env.retain(|(set, _)| set != name);
            if !value.is_empty() {
                env.push(((*name).to_owned(), (*value).to_owned()));
            }
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        run_app(&[&["provision"], args].concat(), &env).await
    }

    fn topic(&self, path: &str) -> String {
        self.naming.topic(path)
    }

    fn subscription(&self, path: &str) -> String {
        self.naming.subscription(path)
    }
}

fn demo_path(name: &str) -> String {
    format!("whirligig_handler.demo.{name}")
}

/// The lines of stdout, asserting the exit code first.
fn lines(output: &Output, code: i32) -> Vec<String> {
    let shown = format!("provision; stdout:\n{}", text(&output.stdout));
    assert_exit(output, code, &shown);
    text(&output.stdout).lines().map(str::to_owned).collect()
}

fn line_for<'a>(lines: &'a [String], id: &str) -> &'a str {
    let found = lines.iter().find(|line| line.split_whitespace().any(|word| word.trim_end_matches(':') == id));
    found.unwrap_or_else(|| panic!("no line for {id} in:\n{}", lines.join("\n")))
}

fn described(writes: &[FrontRequest]) -> Vec<String> {
    writes.iter().map(|request| format!("{} {}", request.method, request.path)).collect()
}

#[tokio::test]
async fn a_first_run_creates_every_resource_as_the_registry_says_and_a_second_writes_nothing() {
    let cloud = Cloud::new().await;
    let project = &cloud.project;
    let dry = lines(&cloud.provision(&["--dry-run"]).await, 0);
    assert!(cloud.front.writes().is_empty(), "a dry run wrote: {:?}", described(&cloud.front.writes()));
    assert!(line_for(&dry, &cloud.topic("dead-letter")).starts_with("create "), "{dry:#?}");
    assert!(dry.last().unwrap().contains("dry run: nothing was written"), "{dry:#?}");

    let first = lines(&cloud.provision(&[]).await, 0);
    let registry = demo::registry().unwrap();
    for route in registry.routes() {
        let topic = route.topic_name(&cloud.naming);
        assert!(cloud.emulator.topic_in(&cloud.project, &topic).await.is_some(), "{topic}");
        assert!(line_for(&first, &topic).ends_with("-> done"), "{first:#?}");
        let id = route.subscription_name(&cloud.naming);
        let subscription = cloud.emulator.subscription_in(&cloud.project, &id).await.unwrap_or_else(|| panic!("{id}"));
        assert_eq!(subscription["topic"], format!("projects/{project}/topics/{topic}"));
        assert_eq!(
            subscription["pushConfig"],
            json!({"pushEndpoint": format!("{}/tasks/pubsub/", cloud.service_url),
                   "oidcToken": {"serviceAccountEmail": PUSH_ACCOUNT, "audience": cloud.service_url}})
        );
        assert_eq!(subscription["ackDeadlineSeconds"], route.ack_deadline().as_secs());
        let retry = json!({"minimumBackoff": format!("{}s", route.min_retry_delay().as_secs()),
                           "maximumBackoff": format!("{}s", route.max_retry_delay().as_secs())});
        assert_eq!(subscription["retryPolicy"], retry, "{id}");
        assert_eq!(subscription["expirationPolicy"], json!({}), "{id}: never expires");
        let dead_letter = format!("projects/{project}/topics/{}", cloud.topic("dead-letter"));
        assert_eq!(
            subscription["deadLetterPolicy"],
            json!({"deadLetterTopic": dead_letter, "maxDeliveryAttempts": 10}),
            "{id}: the documented default"
        );
    }
    let parked = cloud.emulator.subscription_in(&cloud.project, &cloud.subscription("dead-letter")).await.unwrap();
    assert_eq!((&parked["pushConfig"], &parked["expirationPolicy"]), (&json!({}), &json!({})), "a pull subscription");
    assert!(first.iter().any(|line| line.contains("IAM bindings are skipped")), "{first:#?}");
    assert!(first.iter().any(|line| line.starts_with("skip ") && line.contains("TASKS_SCHEDULER_ENDPOINT")));

    cloud.front.clear();
    let second = lines(&cloud.provision(&[]).await, 0);
    assert_eq!(described(&cloud.front.writes()), Vec::<String>::new(), "the second run wrote");
    assert_eq!(cloud.front.requests().len(), 2, "one list of topics, one of subscriptions");
    assert!(second.last().unwrap().starts_with("0 written, 20 unchanged"), "{second:#?}");
}

#[tokio::test]
async fn a_changed_setting_becomes_a_patch_of_exactly_that_field() {
    let cloud = Cloud::new().await;
    let project = &cloud.project;
    lines(&cloud.provision(&[]).await, 0);
    let echo = cloud.subscription(&demo_path("echo"));
    let drifted = json!({"ackDeadlineSeconds": 33, "retryPolicy": {"minimumBackoff": "3s", "maximumBackoff": "30s"}});
    cloud.emulator.patch_subscription_in(&cloud.project, &echo, drifted, "ackDeadlineSeconds,retryPolicy").await;
    cloud.front.clear();

    let plan = lines(&cloud.provision(&["--dry-run"]).await, 0);
    assert!(line_for(&plan, &echo).starts_with("update "), "{plan:#?}");
    assert!(line_for(&plan, &echo).ends_with("(ackDeadlineSeconds, retryPolicy)"), "{plan:#?}");
    let applied = lines(&cloud.provision(&[]).await, 0);
    assert!(line_for(&applied, &echo).ends_with("(ackDeadlineSeconds, retryPolicy)  -> done"), "{applied:#?}");
    let writes = cloud.front.writes();
    assert_eq!(described(&writes), [format!("PATCH /v1/projects/{project}/subscriptions/{echo}")]);
    assert_eq!(writes[0].body.as_ref().unwrap()["updateMask"], "ackDeadlineSeconds,retryPolicy");
    let restored = cloud.emulator.subscription_in(&cloud.project, &echo).await.unwrap();
    assert_eq!(restored["ackDeadlineSeconds"], 300);
    assert_eq!(restored["retryPolicy"], json!({"minimumBackoff": "10s", "maximumBackoff": "600s"}));
}

#[tokio::test]
async fn orphans_are_listed_then_pruned_subscriptions_first_never_the_dead_letters_or_another_environments() {
    let cloud = Cloud::new().await;
    let project = &cloud.project;
    lines(&cloud.provision(&[]).await, 0);
    let (gone_topic, gone_sub) = (cloud.topic("app.gone"), cloud.subscription("app.gone"));
    let other_env = Naming::new("prod", cloud.namespace.clone()).unwrap().topic("app.gone");
    let other_namespace = Naming::new("dev", format!("{}x", cloud.namespace)).unwrap().topic("app.gone");
    for topic in [&gone_topic, &other_env, &other_namespace] {
        cloud.emulator.create_topic_in(&cloud.project, topic).await;
    }
    cloud.emulator.create_subscription_in(&cloud.project, &gone_sub, &gone_topic, json!({})).await;
    cloud.front.clear();

    let listed = lines(&cloud.provision(&[]).await, 0);
    assert!(line_for(&listed, &gone_sub).starts_with("orphan "), "{listed:#?}");
    assert!(line_for(&listed, &gone_topic).contains("--prune deletes it"), "{listed:#?}");
    assert!(!listed.iter().any(|line| line.contains(&other_env) || line.contains(&other_namespace)), "{listed:#?}");
    assert!(cloud.front.writes().is_empty());

    let pruned = lines(&cloud.provision(&["--prune"]).await, 0);
    assert!(line_for(&pruned, &gone_sub).starts_with("delete "), "{pruned:#?}");
    assert_eq!(
        described(&cloud.front.writes()),
        [
            format!("DELETE /v1/projects/{project}/subscriptions/{gone_sub}"),
            format!("DELETE /v1/projects/{project}/topics/{gone_topic}")
        ]
    );
    assert!(cloud.emulator.topic_in(&cloud.project, &gone_topic).await.is_none());
    for kept in [&other_env, &other_namespace, &cloud.topic("dead-letter")] {
        assert!(cloud.emulator.topic_in(&cloud.project, kept).await.is_some(), "{kept} was deleted");
    }
    assert!(cloud.emulator.subscription_in(&cloud.project, &cloud.subscription("dead-letter")).await.is_some());
}

#[tokio::test]
async fn what_was_provisioned_delivers_to_the_binary_retries_and_dead_letters_a_400() {
    let cloud = Cloud::new().await;
    let db = TestDb::new().await;
    let port: u16 = cloud.service_url.rsplit(':').next().unwrap().parse().unwrap();
    // Straight to the emulator: the front plays no part in delivery.
    let host = emulator_host();
    let mut env: Vec<(&str, &str)> = vec![
        ("PUBSUB_EMULATOR_HOST", &host),
        ("GCP_PROJECT_ID", &cloud.project),
        ("TASKS_NAMESPACE", &cloud.namespace),
        ("CLOUD_RUN_SERVICE_URL", &cloud.service_url),
    ];
    // Dead-lettered after 5 deliveries, not the default 10: a shorter test.
    let provisioned = run_app(&["provision"], &[&env[..], &[("TASKS_MAX_DELIVERY_ATTEMPTS", "5")]].concat()).await;
    lines(&provisioned, 0);
    env.push(("DATABASE_URL", &db.url));
    let _server = Server::start_on(port, &env).await;

    let flaky = enqueue(&env, &["flaky", "--kwargs", r#"{"succeed_on": 3}"#]).await;
    let permanent = enqueue(&env, &["permanent"]).await;
    let succeeded = db.wait_within(&flaky, Status::Successful, Duration::from_secs(45)).await;
    assert_eq!(succeeded.attempts, 3, "redelivered by the subscription's retry policy");

    let parked = cloud.emulator.pull_exactly(&cloud.subscription("dead-letter"), 1, Duration::from_secs(45)).await;
    let message: Value = serde_json::from_slice(&parked[0].data).unwrap();
    assert_eq!(message["task_id"], permanent.as_str(), "the 400 was dead-lettered");
    let attributes = &parked[0].attributes;
    assert_eq!(attributes.get("CloudPubSubDeadLetterSourceDeliveryCount").map(String::as_str), Some("5"));
    assert_eq!(db.row(&permanent).await.map(|row| row.status), Some(Status::Failed));
}

/// Enqueues through the CLI and returns the task id it printed.
async fn enqueue(env: &[(&str, &str)], args: &[&str]) -> String {
    let output = run_app(&[&["enqueue"], args].concat(), env).await;
    assert_exit(&output, 0, "enqueue");
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    printed["task_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn scheduler_jobs_are_created_paused_by_their_kill_switch_resumed_patched_and_pruned() {
    let cloud = Cloud::new().await;
    let project = &cloud.project;
    let metadata = MetadataStub::start().await;
    let scheduler = SchedulerStub::start_checking(&metadata).await;
    let (url, host) = (scheduler.url(), metadata.host());
    let run = |switch: &'static str, args: &'static [&'static str]| {
        let extra = [
            ("TASKS_SCHEDULER_ENDPOINT", url.as_str()),
            ("GCE_METADATA_HOST", host.as_str()),
            ("ENABLE_HEARTBEAT", switch),
        ];
        let cloud = &cloud;
        async move { cloud.provision_with(args, &extra).await }
    };
    let id = cloud.naming.scheduler_job(&demo_path("heartbeat"));
    let name = format!("projects/{project}/locations/europe-west2/jobs/{id}");

    let created = lines(&run("off", &[]).await, 0);
    assert!(line_for(&created, &id).ends_with("-> done"), "{created:#?}");
    let job = scheduler.job(&name).unwrap_or_else(|| panic!("no {name}: {:?}", scheduler.jobs()));
    assert_eq!(job["state"], "PAUSED", "its kill switch is off");
    assert_eq!((&job["schedule"], &job["timeZone"]), (&json!("*/1 * * * *"), &json!("UTC")));
    let target = &job["pubsubTarget"];
    assert_eq!(target["topicName"], format!("projects/{project}/topics/{}", cloud.topic(&demo_path("heartbeat"))));
    let data = STANDARD.decode(target["data"].as_str().unwrap()).unwrap();
    assert_eq!(data, TaskMessage::scheduled("heartbeat").to_json().into_bytes());
    assert!(scheduler.requests().iter().all(|request| request.authorization.as_deref() == Some("Bearer token-1")));

    let writes = scheduler.writes();
    lines(&run("off", &[]).await, 0);
    assert_eq!(scheduler.writes(), writes, "a second run wrote to Cloud Scheduler");

    let resumed = lines(&run("", &[]).await, 0);
    assert!(line_for(&resumed, &id).ends_with("(state)  -> done"), "{resumed:#?}");
    assert_eq!(scheduler.job(&name).unwrap()["state"], "ENABLED");
    let last = scheduler.requests().pop().unwrap();
    assert_eq!((last.method, last.path), (Method::POST, format!("/v1/{name}:resume")));

    scheduler.insert(json!({"name": name, "schedule": "0 5 * * *", "timeZone": "UTC", "pubsubTarget": target}));
    let gone = cloud.naming.scheduler_job("app.gone");
    let other = Naming::new("prod", cloud.namespace.clone()).unwrap().scheduler_job("app.gone");
    for orphan in [&gone, &other] {
        let name = format!("projects/{project}/locations/europe-west2/jobs/{orphan}");
        scheduler.insert(json!({"name": name, "schedule": "0 5 * * *", "pubsubTarget": target}));
    }
    let patched = lines(&run("", &[]).await, 0);
    assert!(line_for(&patched, &id).ends_with("(schedule, retryConfig)  -> done"), "{patched:#?}");
    assert!(line_for(&patched, &gone).starts_with("orphan "), "{patched:#?}");
    let patch = scheduler.requests().into_iter().find(|request| request.method == Method::PATCH).unwrap();
    assert_eq!(patch.query.as_deref(), Some("updateMask=schedule,retryConfig"));
    assert_eq!(scheduler.job(&name).unwrap()["schedule"], "*/1 * * * *");

    lines(&run("", &["--prune"]).await, 0);
    let left: Vec<String> = scheduler.jobs().iter().map(|job| job["name"].as_str().unwrap().to_owned()).collect();
    assert!(!left.iter().any(|job| job.ends_with(&format!("/{gone}"))), "{left:?}");
    assert!(left.iter().any(|job| job.ends_with(&format!("/{other}"))), "another environment's job was deleted");
}

#[tokio::test]
async fn a_subscription_on_another_topic_is_a_conflict_reported_once_and_left_alone() {
    let cloud = Cloud::new().await;
    let (echo, other) = (cloud.subscription(&demo_path("echo")), cloud.topic(&demo_path("noop")));
    cloud.emulator.create_topic_in(&cloud.project, &other).await;
    cloud.emulator.create_subscription_in(&cloud.project, &echo, &other, json!({})).await;
    let refused = cloud.provision(&[]).await;
    let out = lines(&refused, 1);
    let line = line_for(&out, &echo);
    assert!(line.starts_with("conflict "), "{out:#?}");
    assert_eq!(line.matches("cannot change").count(), 1, "the reason once: {line}");
    assert!(line.ends_with("-> FAILED: not applied"), "{line}");
    let kept = cloud.emulator.subscription_in(&cloud.project, &echo).await.unwrap();
    assert_eq!(kept["topic"], format!("projects/{}/topics/{other}", cloud.project), "not recreated");
    assert!(text(&refused.stderr).contains("1 step(s) failed"), "{}", text(&refused.stderr));
}

#[tokio::test]
async fn a_scheduler_create_is_never_retried_blindly_but_its_reads_are() {
    let cloud = Cloud::new().await;
    let scheduler = SchedulerStub::start().await;
    let url = scheduler.url();
    let metadata = MetadataStub::start().await;
    let host = metadata.host();
    let extra = [("TASKS_SCHEDULER_ENDPOINT", url.as_str()), ("GCE_METADATA_HOST", host.as_str())];
    // The list (a read) meets UNAVAILABLE and is asked again; the create meets
    // a dropped connection and is not: a create that may have landed is not sent twice.
    scheduler.push_fault(Fault::error(503, "UNAVAILABLE"));
    scheduler.push_fault_on(Method::POST, Fault::Close);
    let failed = cloud.provision_with(&[], &extra).await;
    let out = lines(&failed, 1);
    let id = cloud.naming.scheduler_job(&demo_path("heartbeat"));
    assert!(line_for(&out, &id).contains("-> FAILED: "), "{out:#?}");
    let seen: Vec<(Method, u16)> =
        scheduler.requests().into_iter().map(|request| (request.method, request.answered)).collect();
    assert_eq!(seen, [(Method::GET, 503), (Method::GET, 200), (Method::POST, 0)], "{seen:?}");
    assert!(scheduler.jobs().is_empty());

    let again = lines(&cloud.provision_with(&[], &extra).await, 0);
    assert!(line_for(&again, &id).ends_with("-> done"), "{again:#?}");
    assert_eq!(scheduler.jobs().len(), 1);
}

#[tokio::test]
async fn a_refused_call_is_named_with_googles_message_and_the_rest_is_still_done() {
    let cloud = Cloud::new().await;
    let echo = cloud.topic(&demo_path("echo"));
    cloud.front.push_fault(Method::PUT, &format!("topics/{echo}"), Fault::error(403, "PERMISSION_DENIED"));
    let refused = cloud.provision(&[]).await;
    let out = lines(&refused, 1);
    assert!(
        line_for(&out, &echo)
            .ends_with("-> FAILED: PERMISSION_DENIED (HTTP 403): User not authorized to perform this action."),
        "{out:#?}"
    );
    let echo_sub = cloud.subscription(&demo_path("echo"));
    assert!(line_for(&out, &echo_sub).contains("FAILED: NOT_FOUND"), "its topic is missing: {out:#?}");
    assert!(line_for(&out, &cloud.topic(&demo_path("noop"))).ends_with("-> done"), "{out:#?}");
    assert!(text(&refused.stderr).contains("2 step(s) failed"), "{}", text(&refused.stderr));

    let again = lines(&cloud.provision(&[]).await, 0);
    assert!(again.last().unwrap().starts_with("2 written, 18 unchanged"), "{again:#?}");
}

#[tokio::test]
async fn unavailable_is_retried_and_a_hanging_api_fails_within_the_call_deadline() {
    let cloud = Cloud::new().await;
    let noop = cloud.topic(&demo_path("noop"));
    for _ in 0..2 {
        cloud.front.push_fault(Method::PUT, &format!("topics/{noop}"), Fault::error(503, "UNAVAILABLE"));
    }
    lines(&cloud.provision(&[]).await, 0);
    let puts = cloud.front.requests().into_iter().filter(|request| request.path.ends_with(&format!("topics/{noop}")));
    assert_eq!(puts.map(|request| request.answered).collect::<Vec<_>>(), [503, 503, 200]);

    cloud.front.push_fault(Method::GET, "/topics", Fault::Hang);
    let hung = cloud.provision_with(&[], &[("TASKS_PROVISION_TIMEOUT_MS", "1500")]).await;
    assert_exit(&hung, 1, "a hanging list");
    assert!(text(&hung.stderr).contains("reading topics: no answer within 1.5s"), "{}", text(&hung.stderr));
}

#[tokio::test]
async fn two_provisions_at_once_both_end_in_the_desired_state() {
    let cloud = Cloud::new().await;
    let env = cloud.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    let (first, second) = tokio::join!(run_app(&["provision"], &env), run_app(&["provision"], &env));
    assert_exit(&first, 0, "the first provision");
    assert_exit(&second, 0, "the second provision");
    cloud.front.clear();
    lines(&cloud.provision(&[]).await, 0);
    assert!(cloud.front.writes().is_empty(), "left work: {:?}", described(&cloud.front.writes()));
}

#[tokio::test]
async fn a_create_lost_to_another_writer_reads_back_and_patches_what_differs() {
    let cloud = Cloud::new().await;
    let echo_topic = cloud.topic(&demo_path("echo"));
    let echo = cloud.subscription(&demo_path("echo"));
    let mut held = cloud.front.hold(Method::PUT, &format!("subscriptions/{echo}"));
    let provision = tokio::spawn({
        let env = cloud.env();
        async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
            run_app(&["provision"], &env).await
        }
    });
    held.arrived().await;
    // Another deploy, with other settings, creates it first. (Never expiring:
    // the emulator, unlike Pub/Sub, refuses to update an expiration policy.)
    let theirs = json!({"ackDeadlineSeconds": 20, "expirationPolicy": {}});
    cloud.emulator.create_subscription_in(&cloud.project, &echo, &echo_topic, theirs).await;
    held.release();
    let out = lines(&provision.await.unwrap(), 0);
    assert!(
        line_for(&out, &echo).ends_with(
            "-> done (already there; updated pushConfig, ackDeadlineSeconds, retryPolicy, deadLetterPolicy)"
        ),
        "{out:#?}"
    );
    let subscription = cloud.emulator.subscription_in(&cloud.project, &echo).await.unwrap();
    assert_eq!(subscription["ackDeadlineSeconds"], 300);
    assert_eq!(subscription["expirationPolicy"], json!({}));
    cloud.front.clear();
    lines(&cloud.provision(&[]).await, 0);
    assert!(cloud.front.writes().is_empty());
}

/// Pub/Sub itself (not the emulator): credentials from the metadata server,
/// the project number from it, and the service agent's bindings.
#[tokio::test]
async fn outside_the_emulator_calls_carry_tokens_and_the_service_agent_gets_its_roles() {
    let cloud = Cloud::new().await;
    let project = &cloud.project;
    let metadata = MetadataStub::start().await;
    let front = pubsub_front::start_checking(&emulator_host(), &metadata).await;
    let scheduler = SchedulerStub::start_checking(&metadata).await;
    let (front_url, host, scheduler_url) = (front.url(), metadata.host(), scheduler.url());
    let extra = [
        ("PUBSUB_EMULATOR_HOST", ""),
        ("TASKS_PUBSUB_ENDPOINT", front_url.as_str()),
        ("TASKS_SCHEDULER_ENDPOINT", scheduler_url.as_str()),
        ("GCE_METADATA_HOST", host.as_str()),
    ];
    front.push_fault(Method::POST, ":setIamPolicy", Fault::error(409, "ABORTED"));
    let out = lines(&cloud.provision_with(&[], &extra).await, 0);
    let dead_letter = format!("projects/{project}/topics/{}", cloud.topic("dead-letter"));
    assert!(policy_grants(&front, &dead_letter, "roles/pubsub.publisher"), "{out:#?}");
    for route in demo::registry().unwrap().routes() {
        let subscription = format!("projects/{project}/subscriptions/{}", route.subscription_name(&cloud.naming));
        assert!(policy_grants(&front, &subscription, "roles/pubsub.subscriber"), "{subscription}");
    }
    assert_eq!(front.faults_left(), 0, "the stale etag was met, and the grant read again");
    assert!(front.requests().iter().all(|request| request.answered != 401), "every call carried a valid token");
    assert_eq!(metadata.token_requests(), 1, "one token for both APIs");

    front.clear();
    lines(&cloud.provision_with(&[], &extra).await, 0);
    assert_eq!(described(&front.writes()), Vec::<String>::new(), "the second run wrote");

    let unreachable = [("GCE_METADATA_HOST", "127.0.0.1:9")];
    let no_number = cloud.provision_with(&[], &[&extra[..3], &unreachable[..]].concat()).await;
    assert_exit(&no_number, 2, "no project number");
    assert!(text(&no_number.stderr).contains("set GCP_PROJECT_NUMBER"), "{}", text(&no_number.stderr));
}

fn policy_grants(front: &PubSubFront, resource: &str, role: &str) -> bool {
    let policy = front.policy(resource).unwrap_or_default();
    let bindings = policy["bindings"].as_array().cloned().unwrap_or_default();
    bindings.iter().any(|binding| {
        binding["role"] == role
            && binding["members"].as_array().is_some_and(|members| members == &[json!(SERVICE_AGENT)])
    })
}

#[tokio::test]
async fn configuration_that_cannot_provision_is_exit_2_before_any_call() {
    let cloud = Cloud::new().await;
    let prod = cloud.provision_with(&[], &[("TASKS_ENVIRONMENT", "prod"), ("CLOUD_RUN_SERVICE_URL", "")]).await;
    assert_exit(&prod, 2, "prod without a service URL");
    assert!(text(&prod.stderr).contains("CLOUD_RUN_SERVICE_URL"), "{}", text(&prod.stderr));
    assert!(!text(&prod.stderr).contains("DATABASE_URL"), "provision never connects: {}", text(&prod.stderr));
    let attempts = cloud.provision_with(&[], &[("TASKS_MAX_DELIVERY_ATTEMPTS", "3")]).await;
    assert_exit(&attempts, 2, "attempts below Pub/Sub's minimum");
    assert!(cloud.front.requests().is_empty());
}
