//! How enqueued tasks reach their topics: `TASKS_BACKEND`, Pub/Sub's
//! endpoint (the emulator's, Google's, or another), the credentials it takes,
//! found as Application Default Credentials are, and the publish deadline.

use std::path::PathBuf;
use std::time::Duration;

use super::{Problem, Reader};
use crate::google::credentials::CredentialSource;

const PUBSUB_API: &str = "https://pubsub.googleapis.com";
const METADATA_HOST: &str = "metadata.google.internal";
/// Where `gcloud auth application-default login` writes, under `$HOME`.
const GCLOUD_CREDENTIALS: &str = ".config/gcloud/application_default_credentials.json";
/// The project the emulator is used with in dev when `GCP_PROJECT_ID` is unset: it takes any.
pub(crate) const EMULATOR_PROJECT: &str = "whirligig-dev";

/// Where an enqueued task goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Published to the task's topic (the default outside dev, and in dev
    /// when `PUBSUB_EMULATOR_HOST` is set).
    PubSub,
    /// Run at once in the caller's process, through the same executor and
    /// store (the default in dev without an emulator).
    Immediate,
}

/// `TASKS_BACKEND` and what publishing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnqueueConfig {
    /// `TASKS_BACKEND`: `pubsub` or `immediate`.
    pub backend: Backend,
    /// Pub/Sub's base URL: `http://$PUBSUB_EMULATOR_HOST`, `TASKS_PUBSUB_ENDPOINT`,
    /// or Google's.
    pub pubsub_url: String,
    /// What calls to it carry.
    pub credentials: CredentialSource,
    /// `TASKS_PUBLISH_TIMEOUT_MS` (default 60,000): how long a publish may
    /// take, retries included.
    pub publish_timeout: Duration,
    /// True when `PUBSUB_EMULATOR_HOST` is set.
    pub emulator: bool,
    /// True when `TASKS_BACKEND` chose the backend (not the default).
    pub backend_chosen: bool,
}

impl Reader<'_> {
    pub(super) fn enqueue(&mut self, dev: bool) -> EnqueueConfig {
        let emulator = self.text("PUBSUB_EMULATOR_HOST").map(|host| self.emulator_host(host));
        let publish_timeout = Duration::from_millis(self.number("TASKS_PUBLISH_TIMEOUT_MS", 60_000_u64, |ms| *ms > 0));
        let backend = self.backend(dev, emulator.is_some());
        let backend_chosen = self.text("TASKS_BACKEND").is_some();
        let (pubsub_url, credentials) = match &emulator {
            Some(host) => (format!("http://{host}"), CredentialSource::None),
            None => {
                let url = self.text("TASKS_PUBSUB_ENDPOINT").map(|_| self.key_url("TASKS_PUBSUB_ENDPOINT", PUBSUB_API));
                let url = url.unwrap_or_else(|| PUBSUB_API.to_owned());
                (url.trim_end_matches('/').to_owned(), self.credentials())
            }
        };
        EnqueueConfig {
            backend,
            pubsub_url,
            credentials,
            publish_timeout,
            emulator: emulator.is_some(),
            backend_chosen,
        }
    }

    fn backend(&mut self, dev: bool, emulator: bool) -> Backend {
        let default = if dev && !emulator { Backend::Immediate } else { Backend::PubSub };
        match self.text("TASKS_BACKEND").as_deref().map(str::trim) {
            None => default,
            Some("pubsub") => Backend::PubSub,
            Some("immediate") => Backend::Immediate,
            Some(other) => {
                let value = other.to_owned();
                self.problems.push(Problem::Unknown {
                    variable: "TASKS_BACKEND",
                    value,
                    expected: "pubsub or immediate",
                });
                default
            }
        }
    }

    /// `host:port`, as Google's libraries take it: no scheme, plain HTTP.
    fn emulator_host(&mut self, host: String) -> String {
        let host = host.trim().to_owned();
        if host.contains("://") || !host.contains(':') {
            self.problems.push(Problem::Invalid { variable: "PUBSUB_EMULATOR_HOST", value: host.clone() });
        }
        host
    }

    /// Application Default Credentials, in Google's order: the key file
    /// `GOOGLE_APPLICATION_CREDENTIALS` names, gcloud's file, the metadata server.
    pub(super) fn credentials(&mut self) -> CredentialSource {
        if let Some(path) = self.text("GOOGLE_APPLICATION_CREDENTIALS") {
            return CredentialSource::KeyFile(PathBuf::from(path));
        }
        let gcloud = self.text("HOME").map(|home| PathBuf::from(home).join(GCLOUD_CREDENTIALS));
        if gcloud.is_some_and(|path| path.is_file()) {
            return CredentialSource::Gcloud;
        }
        CredentialSource::Metadata(self.metadata_host())
    }

    /// `GCE_METADATA_HOST`, as Google's libraries read it, else the metadata server's own name.
    pub(super) fn metadata_host(&self) -> String {
        self.text("GCE_METADATA_HOST").unwrap_or_else(|| METADATA_HOST.to_owned())
    }
}
