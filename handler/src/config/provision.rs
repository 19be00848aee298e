//! What `whirligig provision` needs beyond what enqueueing does: Cloud
//! Scheduler's endpoint, the project number the Pub/Sub service agent is
//! named by, the push audience, the dead-letter default and each call's deadline.

use std::time::Duration;

use super::{Problem, Reader};
use crate::google::credentials::CredentialSource;

const SCHEDULER_API: &str = "https://cloudscheduler.googleapis.com";
/// Pub/Sub's bounds on `deadLetterPolicy.maxDeliveryAttempts`.
pub(crate) const DELIVERY_ATTEMPTS: std::ops::RangeInclusive<u32> = 5..=100;

/// `TASKS_SCHEDULER_ENDPOINT`, `GCP_PROJECT_NUMBER`, `TASKS_OIDC_AUDIENCE`,
/// `TASKS_MAX_DELIVERY_ATTEMPTS`, `TASKS_PROVISION_TIMEOUT_MS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionConfig {
    /// Cloud Scheduler's base URL: `TASKS_SCHEDULER_ENDPOINT`, else Google's;
    /// none with the Pub/Sub emulator and no endpoint (there is no Scheduler emulator).
    pub scheduler_url: Option<String>,
    /// What calls to Cloud Scheduler carry.
    pub scheduler_credentials: CredentialSource,
    /// `GCP_PROJECT_NUMBER`; else asked of the metadata server when IAM is set.
    pub project_number: Option<String>,
    /// Where the metadata server is (`GCE_METADATA_HOST`).
    pub metadata_host: String,
    /// The push token's audience: `TASKS_OIDC_AUDIENCE`, else `CLOUD_RUN_SERVICE_URL`.
    pub audience: Option<String>,
    /// `TASKS_MAX_DELIVERY_ATTEMPTS` (default 10, 5..=100): deliveries before
    /// a message is dead-lettered, for routes without `max_attempts`.
    pub max_delivery_attempts: u32,
    /// `TASKS_PROVISION_TIMEOUT_MS` (default 60,000): each admin call's
    /// deadline, retries included.
    pub call_timeout: Duration,
}

impl Reader<'_> {
    pub(super) fn provision(&mut self, emulator: bool, service_url: Option<&str>) -> ProvisionConfig {
        let endpoint = self.text("TASKS_SCHEDULER_ENDPOINT").map(|_| self.key_url("TASKS_SCHEDULER_ENDPOINT", ""));
        let scheduler_url = match endpoint {
            Some(url) => Some(url.trim_end_matches('/').to_owned()),
            None => (!emulator).then(|| SCHEDULER_API.to_owned()),
        };
        let project_number = self.text("GCP_PROJECT_NUMBER").map(|number| number.trim().to_owned());
        if let Some(number) = project_number.as_ref().filter(|n| !n.bytes().all(|b| b.is_ascii_digit())) {
            self.problems.push(Problem::Invalid { variable: "GCP_PROJECT_NUMBER", value: number.clone() });
        }
        let attempts = self.number("TASKS_MAX_DELIVERY_ATTEMPTS", 10_u32, |n| DELIVERY_ATTEMPTS.contains(n));
        let timeout = self.number("TASKS_PROVISION_TIMEOUT_MS", 60_000_u64, |ms| *ms > 0);
        ProvisionConfig {
            scheduler_url,
            scheduler_credentials: self.credentials(),
            project_number,
            metadata_host: self.metadata_host(),
            audience: self.text("TASKS_OIDC_AUDIENCE").or_else(|| service_url.map(str::to_owned)),
            max_delivery_attempts: attempts,
            call_timeout: Duration::from_millis(timeout),
        }
    }
}
