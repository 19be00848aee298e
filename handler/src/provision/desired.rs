//! The desired state: every topic, subscription, IAM binding and scheduler
//! job the registry calls for under the configuration, as a pure function of
//! both. Nothing here asks Google anything.

use whirligig_registry::{Naming, Registry, Route, TaskMessage};

use crate::config::{DELIVERY_ATTEMPTS, KillSwitches};
use crate::google::duration::Seconds;
use crate::google::pubsub_admin::{
    DeadLetterPolicy, ExpirationPolicy, OidcToken, PushConfig, RetryPolicy, Subscription, subscription_name, topic_name,
};
use crate::google::scheduler::{Job, JobState, PubsubTarget, RetryConfig, job_name};

/// The dead-letter topic's last segment: `{env}--{ns}.tasks--dead-letter`.
/// No route's path can name it: paths are identifiers, without `-`.
const DEAD_LETTER: &str = "dead-letter";
/// The dead-letter pull subscription's ack deadline: time to look at a message.
const DEAD_LETTER_ACK_DEADLINE: u32 = 60;
/// How often Cloud Scheduler retries a publish that failed.
const JOB_RETRIES: u32 = 3;
/// The role the Pub/Sub service agent needs on the dead-letter topic.
pub(crate) const PUBLISHER: &str = "roles/pubsub.publisher";
/// The role it needs on each subscription that dead-letters.
pub(crate) const SUBSCRIBER: &str = "roles/pubsub.subscriber";

/// What the desired state is made from.
#[derive(Debug, Clone)]
pub(crate) struct Settings<'a> {
    pub(crate) naming: &'a Naming,
    pub(crate) project: &'a str,
    /// `CLOUD_RUN_SERVICE_URL` (no trailing slash): pushes go to `{url}/tasks/pubsub/`.
    pub(crate) service_url: &'a str,
    /// The account push tokens are signed as; none: pushes carry no token (dev).
    pub(crate) service_account: Option<&'a str>,
    pub(crate) audience: &'a str,
    pub(crate) scheduler_location: &'a str,
    pub(crate) kill_switches: &'a KillSwitches,
    pub(crate) max_delivery_attempts: u32,
    /// The Pub/Sub service agent, as an IAM member; none: IAM is not managed (the emulator).
    pub(crate) service_agent: Option<String>,
}

/// A scheduler job and whether it should be paused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DesiredJob {
    pub(crate) job: Job,
    pub(crate) paused: bool,
}

/// A role a member must have on a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    /// The resource's id (a topic's or a subscription's).
    pub(crate) id: String,
    /// Its full name, `projects/{p}/topics/{id}` or `.../subscriptions/{id}`.
    pub(crate) resource: String,
    pub(crate) role: &'static str,
    pub(crate) member: String,
}

/// Every resource the registry calls for, by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Desired {
    /// The dead-letter topic first.
    pub(crate) topics: Vec<String>,
    /// Each route's push subscription, then the dead-letter pull subscription.
    pub(crate) subscriptions: Vec<(String, Subscription)>,
    /// Empty when IAM is not managed.
    pub(crate) grants: Vec<Grant>,
    pub(crate) jobs: Vec<(String, DesiredJob)>,
    /// What this environment's and namespace's topic and subscription ids start with.
    pub(crate) pubsub_prefix: String,
    /// What its scheduler job ids start with.
    pub(crate) job_prefix: String,
}

/// The desired state of `registry` under `settings`.
pub(crate) fn desired(registry: &Registry, settings: &Settings<'_>) -> Desired {
    let naming = settings.naming;
    let mut topics = vec![naming.topic(DEAD_LETTER)];
    topics.extend(registry.routes().map(|route| route.topic_name(naming)));
    let mut subscriptions: Vec<(String, Subscription)> =
        registry.routes().map(|route| (route.subscription_name(naming), push_subscription(route, settings))).collect();
    // Listed, so never an orphan, as the dead-letter topic is not.
    subscriptions.push((naming.subscription(DEAD_LETTER), dead_letter_subscription(settings)));
    let jobs = registry
        .routes()
        .filter_map(|route| Some((route.scheduler_job_name(naming)?, scheduler_job(route, settings)?)))
        .collect();
    Desired {
        grants: grants(registry, settings),
        topics,
        subscriptions,
        jobs,
        pubsub_prefix: naming.topic(""),
        job_prefix: naming.scheduler_job(""),
    }
}

fn topic(settings: &Settings<'_>, id: &str) -> String {
    topic_name(settings.project, id)
}

fn push_subscription(route: &Route, settings: &Settings<'_>) -> Subscription {
    let oidc_token = settings
        .service_account
        .map(|account| OidcToken { service_account_email: account.to_owned(), audience: settings.audience.to_owned() });
    let attempts = route.max_attempts().map_or(settings.max_delivery_attempts, |attempts| attempts.get());
    Subscription {
        topic: topic(settings, &route.topic_name(settings.naming)),
        push_config: PushConfig { push_endpoint: Some(format!("{}/tasks/pubsub/", settings.service_url)), oidc_token },
        ack_deadline_seconds: secs(route.ack_deadline()),
        retry_policy: Some(RetryPolicy {
            minimum_backoff: Seconds(route.min_retry_delay()),
            maximum_backoff: Seconds(route.max_retry_delay()),
        }),
        // Pub/Sub's default deletes a subscription after 31 days without a
        // message: a monthly task would silently lose its own.
        expiration_policy: Some(ExpirationPolicy { ttl: None }),
        dead_letter_policy: Some(DeadLetterPolicy {
            dead_letter_topic: topic(settings, &settings.naming.topic(DEAD_LETTER)),
            max_delivery_attempts: attempts.clamp(*DELIVERY_ATTEMPTS.start(), *DELIVERY_ATTEMPTS.end()),
        }),
    }
}

/// A pull subscription that keeps what was dead-lettered, and never expires.
fn dead_letter_subscription(settings: &Settings<'_>) -> Subscription {
    Subscription {
        topic: topic(settings, &settings.naming.topic(DEAD_LETTER)),
        push_config: PushConfig::default(),
        ack_deadline_seconds: DEAD_LETTER_ACK_DEADLINE,
        retry_policy: None,
        expiration_policy: Some(ExpirationPolicy { ttl: None }),
        dead_letter_policy: None,
    }
}

/// Publisher on the dead-letter topic, subscriber on every subscription that dead-letters.
fn grants(registry: &Registry, settings: &Settings<'_>) -> Vec<Grant> {
    let Some(member) = &settings.service_agent else { return Vec::new() };
    let dead_letter = settings.naming.topic(DEAD_LETTER);
    let publisher =
        Grant { resource: topic(settings, &dead_letter), id: dead_letter, role: PUBLISHER, member: member.clone() };
    let subscribers = registry.routes().map(|route| {
        let id = route.subscription_name(settings.naming);
        let resource = subscription_name(settings.project, &id);
        Grant { id, resource, role: SUBSCRIBER, member: member.clone() }
    });
    std::iter::once(publisher).chain(subscribers).collect()
}

fn scheduler_job(route: &Route, settings: &Settings<'_>) -> Option<DesiredJob> {
    let id = route.scheduler_job_name(settings.naming)?;
    let schedule = route.schedule()?;
    let job = Job {
        name: job_name(settings.project, settings.scheduler_location, &id),
        pubsub_target: Some(PubsubTarget {
            topic_name: topic(settings, &route.topic_name(settings.naming)),
            data: TaskMessage::scheduled(route.name()).to_json().into_bytes(),
            attributes: Default::default(),
        }),
        schedule: schedule.expression().to_owned(),
        time_zone: route.schedule_timezone().name().to_owned(),
        retry_config: RetryConfig {
            retry_count: JOB_RETRIES,
            min_backoff_duration: Seconds(route.min_retry_delay()),
            max_backoff_duration: Seconds(route.max_retry_delay()),
            ..RetryConfig::default()
        },
        state: JobState::Unspecified,
    };
    Some(DesiredJob { job, paused: settings.kill_switches.disabled_by(route).is_some() })
}

fn secs(duration: std::time::Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use whirligig_registry::{TaskContext, TaskRoute};

    use super::*;

    pub(crate) fn registry() -> Registry {
        let task = |_: TaskContext| async {};
        Registry::builder()
            .route(TaskRoute::new("send", task).path("app.send").ack_deadline(60).max_attempts(3))
            .route(
                TaskRoute::new("nightly", task)
                    .path("app.nightly")
                    .schedule("0 3 * * *")
                    .timezone("Europe/London")
                    .kill_switch("ENABLE_NIGHTLY")
                    .max_attempts(500),
            )
            .build()
            .unwrap()
    }

    pub(crate) fn settings<'a>(naming: &'a Naming, switches: &'a KillSwitches) -> Settings<'a> {
        Settings {
            naming,
            project: "p",
            service_url: "https://x.run.app",
            service_account: Some("push@p.iam.gserviceaccount.com"),
            audience: "https://x.run.app",
            scheduler_location: "europe-west2",
            kill_switches: switches,
            max_delivery_attempts: 10,
            service_agent: Some("serviceAccount:service-1@gcp-sa-pubsub.iam.gserviceaccount.com".into()),
        }
    }

    #[test]
    fn every_route_gets_a_topic_a_push_subscription_that_dead_letters_and_grants() {
        let (naming, switches) = (Naming::new("prod", "gyrinx").unwrap(), KillSwitches::default());
        let desired = desired(&registry(), &settings(&naming, &switches));
        assert_eq!(
            desired.topics,
            ["prod--gyrinx.tasks--dead-letter", "prod--gyrinx.tasks--app.send", "prod--gyrinx.tasks--app.nightly"]
        );
        let (id, send) = &desired.subscriptions[0];
        assert_eq!(id, "prod--gyrinx.tasks--app.send-sub");
        assert_eq!(send.topic, "projects/p/topics/prod--gyrinx.tasks--app.send");
        assert_eq!(send.push_config.push_endpoint.as_deref(), Some("https://x.run.app/tasks/pubsub/"));
        let token = send.push_config.oidc_token.as_ref().unwrap();
        assert_eq!(token.audience, "https://x.run.app", "the service URL, not the endpoint's");
        assert_eq!(send.ack_deadline_seconds, 60);
        assert_eq!(send.expiration_policy, Some(ExpirationPolicy { ttl: None }));
        let dead_letter = send.dead_letter_policy.as_ref().unwrap();
        assert_eq!(dead_letter.dead_letter_topic, "projects/p/topics/prod--gyrinx.tasks--dead-letter");
        assert_eq!(dead_letter.max_delivery_attempts, 5, "3 attempts, raised to Pub/Sub's minimum");
        let nightly = &desired.subscriptions[1].1;
        assert_eq!(nightly.dead_letter_policy.as_ref().unwrap().max_delivery_attempts, 100, "lowered to its maximum");
        let (pull_id, pull) = desired.subscriptions.last().unwrap();
        assert_eq!(pull_id, "prod--gyrinx.tasks--dead-letter-sub");
        assert_eq!((pull.push_config.push_endpoint.as_ref(), pull.dead_letter_policy.as_ref()), (None, None));
        let roles: Vec<(&str, &str)> = desired.grants.iter().map(|g| (g.id.as_str(), g.role)).collect();
        assert_eq!(
            roles,
            [
                ("prod--gyrinx.tasks--dead-letter", PUBLISHER),
                ("prod--gyrinx.tasks--app.send-sub", SUBSCRIBER),
                ("prod--gyrinx.tasks--app.nightly-sub", SUBSCRIBER)
            ]
        );
        assert_eq!(
            (desired.pubsub_prefix.as_str(), desired.job_prefix.as_str()),
            ("prod--gyrinx.tasks--", "prod--gyrinx-scheduler--")
        );
    }

    #[test]
    fn a_scheduled_route_gets_a_job_publishing_its_scheduled_message_paused_by_its_switch() {
        let naming = Naming::new("prod", "gyrinx").unwrap();
        let registry = registry();
        let on = KillSwitches::default();
        let desired = desired(&registry, &settings(&naming, &on));
        let [(id, job)] = &desired.jobs[..] else { panic!("one job: {:?}", desired.jobs) };
        assert_eq!(id, "prod--gyrinx-scheduler--app-nightly");
        assert_eq!(job.job.name, "projects/p/locations/europe-west2/jobs/prod--gyrinx-scheduler--app-nightly");
        assert_eq!((job.job.schedule.as_str(), job.job.time_zone.as_str()), ("0 3 * * *", "Europe/London"));
        let target = job.job.pubsub_target.as_ref().unwrap();
        assert_eq!(target.topic_name, "projects/p/topics/prod--gyrinx.tasks--app.nightly");
        assert_eq!(target.data, TaskMessage::scheduled("nightly").to_json().into_bytes());
        assert_eq!(job.job.retry_config.min_backoff_duration, Seconds::from_secs(10));
        assert!(!job.paused);
        let off = KillSwitches::from_lookup(&registry, &|name| (name == "ENABLE_NIGHTLY").then(|| "off".to_owned()));
        assert!(crate::provision::desired::desired(&registry, &settings(&naming, &off)).jobs[0].1.paused);
    }

    #[test]
    fn without_a_service_agent_or_a_push_account_nothing_of_them_is_asked_for() {
        let (naming, switches) = (Naming::default(), KillSwitches::default());
        let settings = Settings { service_agent: None, service_account: None, ..settings(&naming, &switches) };
        let desired = desired(&registry(), &settings);
        assert!(desired.grants.is_empty());
        assert_eq!(desired.subscriptions[0].1.push_config.oidc_token, None);
    }
}
