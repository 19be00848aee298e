//! Cloud Scheduler's REST API (`projects/{p}/locations/{l}/jobs`): jobs that
//! publish to a Pub/Sub topic on a cron schedule, created, read, patched,
//! paused, resumed and deleted. Creates and updates are never retried
//! blindly, as Google's clients do not retry them.

use std::collections::BTreeMap;

use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::CallError;
use super::duration::Seconds;
use super::rest::{Ignored, NO_BODY, Rest, Retry, not_found_is_none};

/// Results per page of a list (Cloud Scheduler's maximum).
const PAGE_SIZE: &str = "500";

/// The names the tz database gives UTC: a zone sent as one may come back as
/// another, and is no change.
const UTC_NAMES: [&str; 8] = ["UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu"];

/// `projects/{p}/locations/{l}/jobs/{id}`.
pub(crate) fn job_name(project: &str, location: &str, id: &str) -> String {
    format!("projects/{project}/locations/{location}/jobs/{id}")
}

/// Whether two time zone names name the same zone, as far as Cloud Scheduler
/// may rewrite one: the aliases of UTC.
pub(crate) fn same_time_zone(sent: &str, read: &str) -> bool {
    sent == read || (UTC_NAMES.contains(&sent) && UTC_NAMES.contains(&read))
}

/// A job, as far as provisioning manages it; `state` is the API's to set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Job {
    pub(crate) name: String,
    pub(crate) pubsub_target: Option<PubsubTarget>,
    #[serde(default)]
    pub(crate) schedule: String,
    #[serde(default)]
    pub(crate) time_zone: String,
    #[serde(default)]
    pub(crate) retry_config: RetryConfig,
    /// Output only.
    #[serde(default, skip_serializing)]
    pub(crate) state: JobState,
}

/// Where a job stands (`Job.State`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(crate) enum JobState {
    Enabled,
    Paused,
    /// Stopped by Cloud Scheduler after errors; only a user can bring it back.
    Disabled,
    /// An update failed half way: it runs no more until an update succeeds.
    UpdateFailed,
    /// Not read from the API (a job to create), or a state this code does not know.
    #[default]
    #[serde(alias = "STATE_UNSPECIFIED", other)]
    Unspecified,
}

/// What a job publishes, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PubsubTarget {
    /// `projects/{p}/topics/{t}`.
    pub(crate) topic_name: String,
    /// The message's bytes; base64 on the wire, compared decoded.
    #[serde(with = "base64_bytes", default)]
    pub(crate) data: Vec<u8>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) attributes: BTreeMap<String, String>,
}

/// How a failed run is retried. Absent fields read as the API's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct RetryConfig {
    pub(crate) retry_count: u32,
    pub(crate) max_retry_duration: Seconds,
    pub(crate) min_backoff_duration: Seconds,
    pub(crate) max_backoff_duration: Seconds,
    pub(crate) max_doublings: u32,
}

impl Default for RetryConfig {
    /// The API's documented defaults.
    fn default() -> Self {
        Self {
            retry_count: 0,
            max_retry_duration: Seconds::from_secs(0),
            min_backoff_duration: Seconds::from_secs(5),
            max_backoff_duration: Seconds::from_secs(3600),
            max_doublings: 5,
        }
    }
}

mod base64_bytes {
    use base64::Engine as _;
    use base64::alphabet::STANDARD;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Reads base64 with or without its padding.
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&BASE64.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        LENIENT.decode(text).map_err(serde::de::Error::custom)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobPage {
    #[serde(default)]
    jobs: Vec<Job>,
    #[serde(default)]
    next_page_token: String,
}

/// Cloud Scheduler in one project and location.
#[derive(Debug, Clone)]
pub(crate) struct Scheduler {
    rest: Rest,
    /// `projects/{p}/locations/{l}`.
    parent: String,
}

impl Scheduler {
    pub(crate) fn new(rest: Rest, project: &str, location: &str) -> Self {
        Self { rest, parent: format!("projects/{project}/locations/{location}") }
    }

    fn job_name(&self, id: &str) -> String {
        format!("{}/jobs/{id}", self.parent)
    }

    /// The location's jobs whose ids start with `prefix`, by id.
    pub(crate) async fn jobs(&self, prefix: &str) -> Result<BTreeMap<String, Job>, CallError> {
        let mut found = BTreeMap::new();
        let mut token = String::new();
        let start = format!("{}/jobs/", self.parent);
        loop {
            let path = format!("{}/jobs", self.parent);
            let query = [("pageSize", PAGE_SIZE), ("pageToken", token.as_str())];
            let page: JobPage =
                self.rest.call_with_query(Method::GET, &path, &query, NO_BODY, Retry::Idempotent).await?;
            for job in page.jobs {
                if let Some(id) = job.name.strip_prefix(&start).filter(|id| id.starts_with(prefix)) {
                    found.insert(id.to_owned(), job);
                }
            }
            if page.next_page_token.is_empty() {
                return Ok(found);
            }
            token = page.next_page_token;
        }
    }

    /// Job `id`, or `None` when there is none.
    pub(crate) async fn job(&self, id: &str) -> Result<Option<Job>, CallError> {
        not_found_is_none(self.rest.call(Method::GET, &self.job_name(id), NO_BODY, Retry::Idempotent).await)
    }

    /// Creates `job`; `Err` with ALREADY_EXISTS if it is there. It starts ENABLED.
    pub(crate) async fn create(&self, job: &Job) -> Result<Job, CallError> {
        let path = format!("{}/jobs", self.parent);
        self.rest.call(Method::POST, &path, Some(job), Retry::Never).await
    }

    /// Sets the `fields` (camelCase names) of the job to those of `job`.
    pub(crate) async fn update(&self, job: &Job, fields: &[&str]) -> Result<Job, CallError> {
        let path = format!("{}?updateMask={}", job.name, fields.join(","));
        self.rest.call(Method::PATCH, &path, Some(job), Retry::Never).await
    }

    /// Pauses (`true`) or resumes job `id`.
    pub(crate) async fn pause(&self, id: &str, paused: bool) -> Result<Job, CallError> {
        let verb = if paused { "pause" } else { "resume" };
        let path = format!("{}:{verb}", self.job_name(id));
        self.rest.call(Method::POST, &path, Some(&serde_json::json!({})), Retry::Never).await
    }

    pub(crate) async fn delete(&self, id: &str) -> Result<(), CallError> {
        let _: Ignored = self.rest.call(Method::DELETE, &self.job_name(id), NO_BODY, Retry::Idempotent).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_reads_with_the_apis_defaults_and_its_data_decoded() {
        let answer = r#"{"name": "projects/p/locations/l/jobs/j", "schedule": "0 3 * * *", "timeZone": "UTC",
            "pubsubTarget": {"topicName": "projects/p/topics/t", "data": "eyJhIjoxfQ=="},
            "state": "PAUSED", "userUpdateTime": "2026-12-02T03:00:00Z",
            "retryConfig": {"maxRetryDuration": "0s", "minBackoffDuration": "5s", "maxBackoffDuration": "3600s",
                "maxDoublings": 5}}"#;
        let job: Job = serde_json::from_str(answer).unwrap();
        assert_eq!(job.pubsub_target.as_ref().unwrap().data, br#"{"a":1}"#);
        assert_eq!((&job.retry_config, job.state), (&RetryConfig::default(), JobState::Paused));
        let odd: Job = serde_json::from_str(r#"{"name": "n", "state": "SOMETHING_NEW"}"#).unwrap();
        assert_eq!(odd.state, JobState::Unspecified, "a state added later reads, as unknown");
        assert!(same_time_zone("UTC", "Etc/UTC") && !same_time_zone("UTC", "Europe/London"));
        let written = serde_json::to_value(&job).unwrap();
        assert!(written.get("state").is_none(), "output only");
        assert_eq!(written["pubsubTarget"]["data"], "eyJhIjoxfQ==");
    }
}
