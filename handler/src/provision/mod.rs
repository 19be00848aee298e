//! `whirligig provision`: make the cloud match the registry. The desired state
//! is a pure function of the registry and the configuration ([`desired`]),
//! the observed state is read under this environment's and namespace's
//! prefixes, the plan is their diff ([`plan`]), and apply walks it ([`apply`]).
//! Google's shapes and calls are the `google` module's.

mod apply;
pub(crate) mod desired;
mod plan;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{StreamExt as _, TryStreamExt as _};

use whirligig_registry::Registry;

use self::apply::{Apis, Outcome};
use self::desired::{Desired, Settings};
use self::plan::{Action, Observed, Step};
use crate::config::Config;
use crate::google::credentials::{CredentialSource, project_number};
use crate::google::pubsub_admin::{self, Policy, PubSubAdmin};
use crate::google::rest::Rest;
use crate::google::scheduler::Scheduler;
use crate::google::{CallError, Credentials, Endpoint};

/// What `provision` was asked to do.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Options {
    /// Print the plan, write nothing.
    pub(crate) dry_run: bool,
    /// Delete orphans.
    pub(crate) prune: bool,
}

/// Why provisioning could not start, or could not read the cloud.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProvisionError {
    /// Something the configuration must say (exit 2).
    #[error("{0}")]
    Setup(String),
    /// What is there could not be read (exit 1).
    #[error("reading {what}: {error}")]
    Read { what: &'static str, error: CallError },
}

/// How many steps ended how, and the lines of those that failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) writes: usize,
    pub(crate) unchanged: usize,
    pub(crate) orphans: usize,
    pub(crate) skipped: usize,
    pub(crate) failed: usize,
    /// The printed line of each step that failed or is in conflict.
    pub(crate) problems: Vec<String>,
}

/// Reads the cloud, plans, and (unless a dry run) applies, printing each
/// line through `print`: first what is provisioned where, then one line per
/// resource, then the summary.
pub(crate) async fn provision(
    registry: &Registry,
    config: &Config,
    options: Options,
    print: &mut dyn FnMut(String),
) -> Result<Summary, ProvisionError> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|error| ProvisionError::Setup(format!("an HTTP client: {error}")))?;
    let target = Target::new(config)?;
    let apis = apis(config, &client, &target).await?;
    print(header(config, &target));
    let service_agent = service_agent(config, &client, print).await?;
    let settings = target.settings(config, service_agent);
    let desired = desired::desired(registry, &settings);
    let observed = observe(&apis, &desired).await?;
    let steps = plan::plan(&desired, &observed, options.prune);
    let summary = if options.dry_run {
        steps.iter().for_each(|step| print(step.to_string()));
        summarise(&steps, None)
    } else {
        let outcomes = apply::apply(&apis, &steps, |step, outcome| print(line(step, outcome))).await;
        summarise(&steps, Some(&outcomes))
    };
    print(summary_line(&summary, options));
    Ok(summary)
}

/// What is provisioned where: the project, and the APIs' endpoints.
fn header(config: &Config, target: &Target) -> String {
    let emulated = if config.enqueue.emulator { " (emulator)" } else { "" };
    let scheduler = config.provision.scheduler_url.as_deref();
    let scheduler = scheduler.map_or_else(|| "none".to_owned(), |url| format!("{url} ({})", config.scheduler_location));
    format!(
        "project {} · Pub/Sub {}{emulated} · Cloud Scheduler {scheduler}",
        target.project, config.enqueue.pubsub_url
    )
}

/// Where resources go: the project and the service pushes reach.
struct Target {
    project: String,
    service_url: String,
}

impl Target {
    fn new(config: &Config) -> Result<Self, ProvisionError> {
        let setup = |text: &str| ProvisionError::Setup(text.to_owned());
        let project = config.pubsub_project().ok_or_else(|| setup("provision needs GCP_PROJECT_ID"))?.to_owned();
        // In dev, the emulator pushes to this machine's own server; Pub/Sub itself could not.
        let service_url = match (&config.service_url, config.is_dev() && config.enqueue.emulator) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, true) => format!("http://localhost:{}", config.port),
            (None, false) => return Err(setup("provision needs CLOUD_RUN_SERVICE_URL: pushes go there")),
        };
        Ok(Self { project, service_url })
    }

    fn settings<'a>(&'a self, config: &'a Config, service_agent: Option<String>) -> Settings<'a> {
        Settings {
            naming: &config.naming,
            project: &self.project,
            service_url: &self.service_url,
            service_account: config.service_account.as_deref(),
            audience: config.provision.audience.as_deref().unwrap_or(&self.service_url),
            scheduler_location: &config.scheduler_location,
            kill_switches: &config.kill_switches,
            max_delivery_attempts: config.provision.max_delivery_attempts,
            service_agent,
        }
    }
}

async fn apis(config: &Config, client: &reqwest::Client, target: &Target) -> Result<Apis, ProvisionError> {
    let timeout = config.provision.call_timeout;
    let rest = |base_url: &str, credentials| {
        Rest::new(client.clone(), Endpoint { base_url: base_url.to_owned(), credentials }, timeout)
    };
    let pubsub_credentials = credentials(&config.enqueue.credentials, client).await?;
    let pubsub = PubSubAdmin::new(rest(&config.enqueue.pubsub_url, pubsub_credentials.clone()), target.project.clone());
    let scheduler = match &config.provision.scheduler_url {
        None => None,
        Some(url) => {
            let source = &config.provision.scheduler_credentials;
            // One token cache when both APIs take the same credentials.
            let credentials = if *source == config.enqueue.credentials {
                pubsub_credentials
            } else {
                credentials(source, client).await?
            };
            Some(Scheduler::new(rest(url, credentials), &target.project, &config.scheduler_location))
        }
    };
    Ok(Apis { pubsub, scheduler })
}

async fn credentials(source: &CredentialSource, client: &reqwest::Client) -> Result<Credentials, ProvisionError> {
    Credentials::new(source, client).await.map_err(|error| ProvisionError::Setup(error.to_string()))
}

/// The Pub/Sub service agent dead-lettering runs as; none with the emulator,
/// which has no IAM.
async fn service_agent(
    config: &Config,
    client: &reqwest::Client,
    print: &mut dyn FnMut(String),
) -> Result<Option<String>, ProvisionError> {
    if config.enqueue.emulator {
        print("note: IAM bindings are skipped: the Pub/Sub emulator has no IAM".to_owned());
        return Ok(None);
    }
    let number = match &config.provision.project_number {
        Some(number) => number.clone(),
        None => project_number(client, &config.provision.metadata_host).await.map_err(|error| {
            ProvisionError::Setup(format!(
                "the Pub/Sub service agent is named by the project number: set GCP_PROJECT_NUMBER ({error})"
            ))
        })?,
    };
    Ok(Some(pubsub_admin::service_agent(&number)))
}

/// What is there under the prefixes, and the policies the grants touch.
async fn observe(apis: &Apis, desired: &Desired) -> Result<Observed, ProvisionError> {
    let read = |what| move |error| ProvisionError::Read { what, error };
    let prefix = &desired.pubsub_prefix;
    let (topics, subscriptions, jobs) =
        tokio::join!(apis.pubsub.topics(prefix), apis.pubsub.subscriptions(prefix), async {
            match &apis.scheduler {
                Some(scheduler) => scheduler.jobs(&desired.job_prefix).await.map(Some),
                None => Ok(None),
            }
        });
    let mut observed = Observed {
        topics: topics.map_err(read("topics"))?.into_iter().collect(),
        subscriptions: subscriptions.map_err(read("subscriptions"))?,
        jobs: jobs.map_err(read("scheduler jobs"))?,
        policies: BTreeMap::new(),
    };
    observed.policies = policies(apis, desired, &observed).await?;
    Ok(observed)
}

/// The policies of the granted resources that exist already (a new one has none).
async fn policies(
    apis: &Apis,
    desired: &Desired,
    observed: &Observed,
) -> Result<BTreeMap<String, Policy>, ProvisionError> {
    let exists = |id: &String| observed.topics.contains(id) || observed.subscriptions.contains_key(id);
    let resources: Vec<String> =
        desired.grants.iter().filter(|grant| exists(&grant.id)).map(|grant| grant.resource.clone()).collect();
    let read = |resource: String| async move {
        let policy = apis.pubsub.policy(&resource).await;
        policy
            .map(|policy| (resource.to_owned(), policy))
            .map_err(|error| ProvisionError::Read { what: "IAM policies", error })
    };
    futures_util::stream::iter(resources).map(read).buffered(apply::CONCURRENCY).try_collect().await
}

fn line(step: &Step, outcome: &Outcome) -> String {
    match outcome {
        Outcome::Nothing => step.to_string(),
        Outcome::Done(None) => format!("{step}  -> done"),
        Outcome::Done(Some(note)) => format!("{step}  -> done ({note})"),
        Outcome::Failed(error) => format!("{step}  -> FAILED: {error}"),
    }
}

fn summarise(steps: &[Step], outcomes: Option<&[Outcome]>) -> Summary {
    let mut summary = Summary::default();
    for (index, step) in steps.iter().enumerate() {
        let outcome = outcomes.and_then(|outcomes| outcomes.get(index));
        let failed = matches!(outcome, Some(Outcome::Failed(_)));
        if failed || matches!(step.action, Action::Conflict(_)) {
            summary.problems.push(outcome.map_or_else(|| step.to_string(), |outcome| line(step, outcome)));
        }
        let count = match &step.action {
            _ if failed => &mut summary.failed,
            Action::Conflict(_) => &mut summary.failed,
            Action::Create(_) | Action::Update(..) | Action::Delete => &mut summary.writes,
            Action::Unchanged => &mut summary.unchanged,
            Action::Orphan => &mut summary.orphans,
            Action::Skip(_) => &mut summary.skipped,
        };
        *count += 1;
    }
    summary
}

fn summary_line(summary: &Summary, options: Options) -> String {
    let writes = if options.dry_run { "to write" } else { "written" };
    let mut line = format!(
        "{} {writes}, {} unchanged, {} orphaned, {} skipped, {} failed",
        summary.writes, summary.unchanged, summary.orphans, summary.skipped, summary.failed
    );
    if summary.orphans > 0 {
        line.push_str(" (run with --prune to delete the orphans)");
    }
    if options.dry_run {
        line.push_str("; dry run: nothing was written");
    }
    line
}
