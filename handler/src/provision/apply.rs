//! Apply: a thin loop over the plan, one phase after another, the steps of a
//! phase side by side. A create that meets ALREADY_EXISTS (another provision
//! got there first) reads the resource back and patches what differs; a
//! binding is a read-modify-write of the policy, redone when its etag went stale.

use std::time::Duration;

use futures_util::StreamExt as _;

use super::desired::{DesiredJob, Grant};
use super::plan::{Action, Kind, Step, Want, job_changes, subscription_changes};
use crate::google::pubsub_admin::PubSubAdmin;
use crate::google::scheduler::Scheduler;
use crate::google::{Backoff, CallError, Code};

/// Calls in flight at once within a phase.
pub(crate) const CONCURRENCY: usize = 8;
/// Read-modify-writes of one policy before a stale etag is reported.
const POLICY_ATTEMPTS: usize = 6;
const POLICY_BACKOFF: Backoff =
    Backoff { initial: Duration::from_millis(100), multiplier: 2.0, max: Duration::from_secs(5) };

/// The APIs a plan is applied through.
#[derive(Debug, Clone)]
pub(crate) struct Apis {
    pub(crate) pubsub: PubSubAdmin,
    /// `None`: job steps are skipped in the plan already.
    pub(crate) scheduler: Option<Scheduler>,
}

/// How one step went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Nothing to call: unchanged, an orphan listed, a skip.
    Nothing,
    /// Done; with a note when it went otherwise than planned.
    Done(Option<String>),
    Failed(String),
}

/// Applies `steps` in their order, reporting each as it ends; the outcomes, in order.
pub(crate) async fn apply(apis: &Apis, steps: &[Step], mut report: impl FnMut(&Step, &Outcome)) -> Vec<Outcome> {
    let mut outcomes = Vec::with_capacity(steps.len());
    for phase in steps.chunk_by(|a, b| a.phase() == b.phase()) {
        let mut done = futures_util::stream::iter(phase)
            .map(|step| async move { (step, step_outcome(apis, step).await) })
            .buffered(CONCURRENCY);
        while let Some((step, outcome)) = done.next().await {
            report(step, &outcome);
            outcomes.push(outcome);
        }
    }
    outcomes
}

async fn step_outcome(apis: &Apis, step: &Step) -> Outcome {
    let done = match &step.action {
        Action::Unchanged | Action::Orphan | Action::Skip(_) => return Outcome::Nothing,
        // The plan's line says why.
        Action::Conflict(_) => return Outcome::Failed("not applied".to_owned()),
        Action::Create(want) => create(apis, &step.id, want).await,
        Action::Update(want, fields) => update(apis, &step.id, want, fields).await.map(|()| None),
        Action::Delete => delete(apis, step.kind, &step.id).await,
    };
    done.map_or_else(Outcome::Failed, Outcome::Done)
}

type Applied = Result<Option<String>, String>;

async fn create(apis: &Apis, id: &str, want: &Want) -> Applied {
    let created = match want {
        Want::Topic => apis.pubsub.create_topic(id).await,
        Want::Subscription(subscription) => apis.pubsub.create_subscription(id, subscription).await,
        Want::Grant(grant) => return grant_role(&apis.pubsub, grant).await,
        Want::Job(job) => create_job(scheduler(apis)?, id, job).await,
    };
    match created {
        Ok(()) => Ok(None),
        Err(error) if error.code() == Some(Code::AlreadyExists) => converge(apis, id, want).await,
        Err(error) => Err(error.to_string()),
    }
}

/// Someone created it meanwhile: read it back and patch what differs.
async fn converge(apis: &Apis, id: &str, want: &Want) -> Applied {
    let fields = match want {
        Want::Topic | Want::Grant(_) => Vec::new(),
        Want::Subscription(subscription) => {
            let have = apis.pubsub.subscription(id).await.map_err(|error| error.to_string())?;
            let have = have.ok_or("ALREADY_EXISTS, then NOT_FOUND: it was deleted meanwhile; provision again")?;
            subscription_changes(subscription, &have)?
        }
        Want::Job(job) => {
            let have = scheduler(apis)?.job(id).await.map_err(|error| error.to_string())?;
            let have = have.ok_or("ALREADY_EXISTS, then NOT_FOUND: it was deleted meanwhile; provision again")?;
            job_changes(job, &have)?
        }
    };
    if fields.is_empty() {
        return Ok(Some("already there, as wanted".to_owned()));
    }
    update(apis, id, want, &fields).await?;
    Ok(Some(format!("already there; updated {}", fields.join(", "))))
}

async fn update(apis: &Apis, id: &str, want: &Want, fields: &[&'static str]) -> Result<(), String> {
    let updated = match want {
        Want::Subscription(subscription) => apis.pubsub.update_subscription(id, subscription, fields).await,
        Want::Job(job) => update_job(scheduler(apis)?, id, job, fields).await,
        Want::Topic | Want::Grant(_) => Ok(()),
    };
    updated.map_err(|error| error.to_string())
}

/// Created ENABLED, as every job is; then paused if its kill switch is off.
async fn create_job(scheduler: &Scheduler, id: &str, job: &DesiredJob) -> Result<(), CallError> {
    scheduler.create(&job.job).await?;
    if job.paused {
        scheduler.pause(id, true).await?;
    }
    Ok(())
}

/// A patch of the fields that differ, and a pause or resume for `state`.
async fn update_job(scheduler: &Scheduler, id: &str, job: &DesiredJob, fields: &[&str]) -> Result<(), CallError> {
    let patched: Vec<&str> = fields.iter().copied().filter(|field| *field != "state").collect();
    if !patched.is_empty() {
        scheduler.update(&job.job, &patched).await?;
    }
    if fields.contains(&"state") {
        scheduler.pause(id, job.paused).await?;
    }
    Ok(())
}

/// Adds the binding to the policy as it is now, and sets it with the etag it
/// was read with; a concurrent change (ABORTED) means reading it again.
async fn grant_role(pubsub: &PubSubAdmin, grant: &Grant) -> Applied {
    let mut delays = POLICY_BACKOFF.delays();
    for _ in 0..POLICY_ATTEMPTS {
        let mut policy = pubsub.policy(&grant.resource).await.map_err(|error| error.to_string())?;
        if policy.grants(grant.role, &grant.member) {
            return Ok(Some("already granted".to_owned()));
        }
        policy.grant(grant.role, &grant.member);
        match pubsub.set_policy(&grant.resource, &policy).await {
            Ok(_) => return Ok(None),
            Err(error) if error.code() == Some(Code::Aborted) => {
                tokio::time::sleep(delays.next().unwrap_or(POLICY_BACKOFF.max)).await;
            }
            Err(error) => return Err(error.to_string()),
        }
    }
    Err(format!("the policy kept changing under {POLICY_ATTEMPTS} read-modify-writes (ABORTED); provision again"))
}

async fn delete(apis: &Apis, kind: Kind, id: &str) -> Applied {
    let deleted = match kind {
        Kind::Subscription => apis.pubsub.delete_subscription(id).await,
        Kind::Topic => apis.pubsub.delete_topic(id).await,
        Kind::Job => scheduler(apis)?.delete(id).await,
        Kind::Iam => Ok(()),
    };
    match deleted {
        Ok(()) => Ok(None),
        Err(error) if error.code() == Some(Code::NotFound) => Ok(Some("already gone".to_owned())),
        Err(error) => Err(error.to_string()),
    }
}

fn scheduler(apis: &Apis) -> Result<&Scheduler, String> {
    apis.scheduler.as_ref().ok_or_else(|| "no Cloud Scheduler to call".to_owned())
}
