//! The plan: what to create, which fields to patch, what is unchanged, in
//! conflict or orphaned, as a pure function of the desired and the observed
//! state. A second run writes nothing because the diff of a state with
//! itself is empty; `--dry-run` prints this and stops.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::desired::{Desired, DesiredJob, Grant};
use crate::google::pubsub_admin::{Policy, Subscription};
use crate::google::scheduler::{Job, JobState, same_time_zone};

/// What the cloud holds under this environment's and namespace's prefixes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Observed {
    pub(crate) topics: BTreeSet<String>,
    pub(crate) subscriptions: BTreeMap<String, Subscription>,
    /// `None`: there is no Cloud Scheduler to ask (the emulator without an endpoint).
    pub(crate) jobs: Option<BTreeMap<String, Job>>,
    /// The IAM policies of the resources grants name, by full name, where they exist.
    pub(crate) policies: BTreeMap<String, Policy>,
}

/// The kinds of resource, in the order they are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Topic,
    Subscription,
    Iam,
    Job,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Topic => "topic",
            Self::Subscription => "subscription",
            Self::Iam => "iam binding",
            Self::Job => "scheduler job",
        })
    }
}

/// What a step asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Want {
    Topic,
    Subscription(Subscription),
    Grant(Grant),
    Job(DesiredJob),
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    Create(Want),
    /// The fields that differ, as the API's `updateMask` names them
    /// (`state` for a job: a pause or a resume).
    Update(Want, Vec<&'static str>),
    Unchanged,
    /// Cannot be made right by a patch: said, not forced.
    Conflict(String),
    /// Carries the prefix, belongs to no route: listed.
    Orphan,
    /// An orphan, deleted with `--prune`.
    Delete,
    /// Not managed here, and why.
    Skip(&'static str),
}

/// One line of the plan: a resource and what to do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) kind: Kind,
    /// The resource's id; for a binding, the resource's id and the role.
    pub(crate) id: String,
    pub(crate) action: Action,
}

impl Step {
    /// Steps of one phase are applied together; a phase waits for the one before.
    pub(crate) fn phase(&self) -> u8 {
        let deleting = matches!(self.action, Action::Delete | Action::Orphan);
        // Creates go topics first; deletes go subscriptions, then topics, then jobs.
        match (deleting, self.kind) {
            (false, kind) => kind as u8,
            (true, Kind::Subscription) => 10,
            (true, Kind::Topic) => 11,
            (true, _) => 12,
        }
    }

    /// Whether the step writes when applied.
    #[cfg(test)]
    pub(crate) fn writes(&self) -> bool {
        matches!(self.action, Action::Create(_) | Action::Update(..) | Action::Delete)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match &self.action {
            Action::Create(_) => "create",
            Action::Update(..) => "update",
            Action::Unchanged => "unchanged",
            Action::Conflict(_) => "conflict",
            Action::Orphan => "orphan",
            Action::Delete => "delete",
            Action::Skip(_) => "skip",
        };
        write!(f, "{verb:<9}  {:<13}  {}", self.kind, self.id)?;
        match &self.action {
            Action::Update(_, fields) => write!(f, " ({})", fields.join(", ")),
            Action::Conflict(why) => write!(f, ": {why}"),
            Action::Orphan => f.write_str(" (belongs to no route; --prune deletes it)"),
            Action::Skip(why) => write!(f, " ({why})"),
            _ => Ok(()),
        }
    }
}

/// The steps that make `observed` into `desired`, orphans deleted when `prune`.
pub(crate) fn plan(desired: &Desired, observed: &Observed, prune: bool) -> Vec<Step> {
    let mut steps: Vec<Step> = desired.topics.iter().map(|id| topic(id, observed)).collect();
    steps.extend(desired.subscriptions.iter().map(|(id, want)| subscription(id, want, observed)));
    steps.extend(desired.grants.iter().map(|grant| binding(grant, observed)));
    steps.extend(desired.jobs.iter().map(|(id, want)| job(id, want, observed)));
    steps.extend(orphans(desired, observed, prune));
    steps.sort_by_key(Step::phase);
    steps
}

fn topic(id: &str, observed: &Observed) -> Step {
    let action = if observed.topics.contains(id) { Action::Unchanged } else { Action::Create(Want::Topic) };
    Step { kind: Kind::Topic, id: id.to_owned(), action }
}

fn subscription(id: &str, want: &Subscription, observed: &Observed) -> Step {
    let action = match observed.subscriptions.get(id) {
        None => Action::Create(Want::Subscription(want.clone())),
        Some(have) => match subscription_changes(want, have) {
            Err(conflict) => Action::Conflict(conflict),
            Ok(fields) if fields.is_empty() => Action::Unchanged,
            Ok(fields) => Action::Update(Want::Subscription(want.clone()), fields),
        },
    };
    Step { kind: Kind::Subscription, id: id.to_owned(), action }
}

/// The fields of `have` that differ from `want`, or why a patch cannot help.
pub(crate) fn subscription_changes(want: &Subscription, have: &Subscription) -> Result<Vec<&'static str>, String> {
    if want.topic != have.topic {
        return Err(format!(
            "attached to {}, not {}; a subscription's topic cannot change: delete it and provision again",
            have.topic, want.topic
        ));
    }
    let fields = [
        ("pushConfig", want.push_config != have.push_config),
        ("ackDeadlineSeconds", want.ack_deadline_seconds != have.ack_deadline_seconds),
        ("retryPolicy", want.retry_policy != have.retry_policy),
        ("expirationPolicy", want.expiration_policy != have.expiration_policy),
        ("deadLetterPolicy", want.dead_letter_policy != have.dead_letter_policy),
    ];
    Ok(fields.into_iter().filter_map(|(field, differs)| differs.then_some(field)).collect())
}

fn binding(grant: &Grant, observed: &Observed) -> Step {
    let granted = observed.policies.get(&grant.resource).is_some_and(|policy| policy.grants(grant.role, &grant.member));
    let action = if granted { Action::Unchanged } else { Action::Create(Want::Grant(grant.clone())) };
    Step { kind: Kind::Iam, id: format!("{} {}", grant.id, grant.role), action }
}

fn job(id: &str, want: &DesiredJob, observed: &Observed) -> Step {
    let action = match observed.jobs.as_ref().map(|jobs| jobs.get(id)) {
        None => Action::Skip("no Cloud Scheduler with the emulator: set TASKS_SCHEDULER_ENDPOINT"),
        Some(None) => Action::Create(Want::Job(want.clone())),
        Some(Some(have)) => match job_changes(want, have) {
            Err(conflict) => Action::Conflict(conflict),
            Ok(fields) if fields.is_empty() => Action::Unchanged,
            Ok(fields) => Action::Update(Want::Job(want.clone()), fields),
        },
    };
    Step { kind: Kind::Job, id: id.to_owned(), action }
}

/// The fields of `have` that differ from `want`; `state` when it should be
/// paused and is not, or the other way round. A job whose last update failed
/// runs no more until one succeeds: every field is sent again.
pub(crate) fn job_changes(want: &DesiredJob, have: &Job) -> Result<Vec<&'static str>, String> {
    if have.state == JobState::Disabled {
        return Err("Cloud Scheduler disabled it after errors: see its status, then `gcloud scheduler jobs resume` it"
            .to_owned());
    }
    let (job, again) = (&want.job, have.state == JobState::UpdateFailed);
    let fields = [
        ("schedule", again || job.schedule != have.schedule),
        ("timeZone", again || !same_time_zone(&job.time_zone, &have.time_zone)),
        ("pubsubTarget", again || job.pubsub_target != have.pubsub_target),
        ("retryConfig", again || job.retry_config != have.retry_config),
        ("state", want.paused != (have.state == JobState::Paused)),
    ];
    Ok(fields.into_iter().filter_map(|(field, differs)| differs.then_some(field)).collect())
}

/// What carries this environment's and namespace's prefix but no route asks for.
fn orphans(desired: &Desired, observed: &Observed, prune: bool) -> Vec<Step> {
    let action = || if prune { Action::Delete } else { Action::Orphan };
    let topics: BTreeSet<&str> = desired.topics.iter().map(String::as_str).collect();
    let subscriptions: BTreeSet<&str> = desired.subscriptions.iter().map(|(id, _)| id.as_str()).collect();
    let jobs: BTreeSet<&str> = desired.jobs.iter().map(|(id, _)| id.as_str()).collect();
    let orphan = |kind, id: &String| Step { kind, id: id.clone(), action: action() };
    let subscription_orphans = observed.subscriptions.keys().filter(|id| !subscriptions.contains(id.as_str()));
    let topic_orphans = observed.topics.iter().filter(|id| !topics.contains(id.as_str()));
    let job_orphans = observed.jobs.iter().flat_map(BTreeMap::keys).filter(|id| !jobs.contains(id.as_str()));
    let mut steps: Vec<Step> = subscription_orphans.map(|id| orphan(Kind::Subscription, id)).collect();
    steps.extend(topic_orphans.map(|id| orphan(Kind::Topic, id)));
    steps.extend(job_orphans.map(|id| orphan(Kind::Job, id)));
    steps
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use whirligig_registry::Naming;

    use super::super::desired::tests::{registry, settings};
    use super::super::desired::{PUBLISHER, desired};
    use super::*;
    use crate::config::KillSwitches;
    use crate::google::duration::Seconds;

    fn wanted() -> Desired {
        let naming = Naming::new("prod", "gyrinx").unwrap();
        desired(&registry(), &settings(&naming, &KillSwitches::default()))
    }

    /// What the cloud holds once `desired` has been applied.
    fn applied(desired: &Desired) -> Observed {
        let mut observed = Observed {
            topics: desired.topics.iter().cloned().collect(),
            subscriptions: desired.subscriptions.iter().cloned().collect(),
            jobs: Some(BTreeMap::new()),
            policies: BTreeMap::new(),
        };
        for (id, want) in &desired.jobs {
            let state = if want.paused { JobState::Paused } else { JobState::Enabled };
            observed.jobs.as_mut().unwrap().insert(id.clone(), Job { state, ..want.job.clone() });
        }
        for grant in &desired.grants {
            observed.policies.entry(grant.resource.clone()).or_default().grant(grant.role, &grant.member);
        }
        observed
    }

    fn actions(steps: &[Step]) -> Vec<String> {
        steps.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn from_nothing_everything_is_created_topics_first() {
        let desired = wanted();
        let observed = Observed { jobs: Some(BTreeMap::new()), ..Observed::default() };
        let steps = plan(&desired, &observed, false);
        assert!(steps.iter().all(|step| matches!(step.action, Action::Create(_))), "{:#?}", actions(&steps));
        let kinds: Vec<Kind> = steps.iter().map(|step| step.kind).collect();
        assert!(kinds.is_sorted(), "{kinds:?}");
        assert_eq!(steps.len(), 3 + 3 + 3 + 1);
        assert_eq!(steps[0].to_string(), "create     topic          prod--gyrinx.tasks--dead-letter");
    }

    #[test]
    fn once_applied_nothing_is_left_to_write() {
        let desired = wanted();
        let steps = plan(&desired, &applied(&desired), true);
        assert!(steps.iter().all(|step| step.action == Action::Unchanged), "{:#?}", actions(&steps));
        assert!(!steps.iter().any(Step::writes));
    }

    #[test]
    fn a_changed_setting_is_a_patch_of_exactly_that_field() {
        let desired = wanted();
        let mut observed = applied(&desired);
        let send = observed.subscriptions.get_mut("prod--gyrinx.tasks--app.send-sub").unwrap();
        send.ack_deadline_seconds = 30;
        send.retry_policy.as_mut().unwrap().maximum_backoff = Seconds::from_secs(60);
        let nightly = observed.jobs.as_mut().unwrap().get_mut("prod--gyrinx-scheduler--app-nightly").unwrap();
        nightly.schedule = "0 4 * * *".into();
        nightly.state = JobState::Paused;
        let changed: Vec<String> =
            plan(&desired, &observed, false).iter().filter(|step| step.writes()).map(ToString::to_string).collect();
        assert_eq!(
            changed,
            [
                "update     subscription   prod--gyrinx.tasks--app.send-sub (ackDeadlineSeconds, retryPolicy)",
                "update     scheduler job  prod--gyrinx-scheduler--app-nightly (schedule, state)",
            ]
        );
    }

    /// Google answers more than was sent: output-only fields, `x-goog-version`
    /// in a push config, unpadded base64, another name for UTC. None of it is a change.
    #[test]
    fn what_google_answers_for_what_was_sent_is_no_change() {
        let desired = wanted();
        for (id, want) in &desired.subscriptions {
            let mut answer = serde_json::to_value(want).unwrap();
            answer["name"] = json!(format!("projects/p/subscriptions/{id}"));
            answer["messageRetentionDuration"] = json!("604800s");
            answer["state"] = json!("ACTIVE");
            if let Some(push) = answer["pushConfig"].as_object_mut().filter(|push| push.contains_key("pushEndpoint")) {
                push.insert("attributes".into(), json!({"x-goog-version": "v1"}));
            }
            let read: Subscription = serde_json::from_value(answer).unwrap();
            assert_eq!(subscription_changes(want, &read), Ok(vec![]), "{id}");
        }
        let (id, want) = &desired.jobs[0];
        let mut want = want.clone();
        want.job.time_zone = "UTC".into();
        let mut answer = serde_json::to_value(&want.job).unwrap();
        let data = answer["pubsubTarget"]["data"].as_str().unwrap().trim_end_matches('=').to_owned();
        answer["pubsubTarget"]["data"] = json!(data);
        answer["timeZone"] = json!("Etc/UTC");
        answer["state"] = json!("ENABLED");
        answer["userUpdateTime"] = json!("2026-12-02T04:00:00Z");
        answer["scheduleTime"] = json!("2026-12-03T03:00:00Z");
        answer["attemptDeadline"] = json!("180s");
        answer["status"] = json!({});
        let read: Job = serde_json::from_value(answer).unwrap();
        assert_eq!(job_changes(&want, &read), Ok(vec![]), "{id}");
    }

    #[test]
    fn a_job_that_failed_an_update_is_sent_whole_and_a_disabled_one_is_a_conflict() {
        let desired = wanted();
        let (_, want) = &desired.jobs[0];
        let failed = Job { state: JobState::UpdateFailed, ..want.job.clone() };
        assert_eq!(job_changes(want, &failed), Ok(vec!["schedule", "timeZone", "pubsubTarget", "retryConfig"]));
        let disabled = Job { state: JobState::Disabled, ..want.job.clone() };
        assert!(job_changes(want, &disabled).is_err_and(|why| why.contains("disabled")));
    }

    #[test]
    fn a_subscription_on_another_topic_is_a_conflict_not_a_recreation() {
        let desired = wanted();
        let mut observed = applied(&desired);
        observed.subscriptions.get_mut("prod--gyrinx.tasks--app.send-sub").unwrap().topic = "_deleted-topic_".into();
        let steps = plan(&desired, &observed, true);
        let conflict = steps.iter().find(|step| matches!(step.action, Action::Conflict(_))).unwrap();
        assert!(conflict.to_string().contains("attached to _deleted-topic_"), "{conflict}");
        assert!(!steps.iter().any(Step::writes));
    }

    #[test]
    fn orphans_are_listed_and_pruned_subscriptions_first_never_the_dead_letters() {
        let desired = wanted();
        let mut observed = applied(&desired);
        observed.topics.insert("prod--gyrinx.tasks--app.gone".into());
        observed.subscriptions.insert("prod--gyrinx.tasks--app.gone-sub".into(), Subscription::default());
        observed
            .jobs
            .as_mut()
            .unwrap()
            .insert("prod--gyrinx-scheduler--app-gone".into(), desired.jobs[0].1.job.clone());
        let listed: Vec<String> = plan(&desired, &observed, false)
            .iter()
            .filter(|s| s.action == Action::Orphan)
            .map(|s| s.id.clone())
            .collect();
        assert_eq!(
            listed,
            ["prod--gyrinx.tasks--app.gone-sub", "prod--gyrinx.tasks--app.gone", "prod--gyrinx-scheduler--app-gone"]
        );
        let pruned = plan(&desired, &observed, true);
        let deletes: Vec<(Kind, &str)> =
            pruned.iter().filter(|s| s.action == Action::Delete).map(|s| (s.kind, s.id.as_str())).collect();
        assert_eq!(
            deletes.iter().map(|(kind, _)| *kind).collect::<Vec<_>>(),
            [Kind::Subscription, Kind::Topic, Kind::Job]
        );
        assert!(pruned.last().is_some_and(|step| step.action == Action::Delete), "deletes come last");
    }

    #[test]
    fn a_missing_grant_is_created_and_jobs_without_a_scheduler_are_skipped() {
        let desired = wanted();
        let mut observed = applied(&desired);
        observed.policies.remove(&desired.grants[0].resource);
        observed.jobs = None;
        let steps = plan(&desired, &observed, false);
        let writes: Vec<String> = steps.iter().filter(|s| s.writes()).map(ToString::to_string).collect();
        assert_eq!(writes, [format!("create     iam binding    prod--gyrinx.tasks--dead-letter {PUBLISHER}")]);
        assert!(steps.iter().any(|step| step.kind == Kind::Job && matches!(step.action, Action::Skip(_))));
    }
}
