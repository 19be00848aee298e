//! Credentials for Google APIs, found as Application Default Credentials
//! are: a key file named by `GOOGLE_APPLICATION_CREDENTIALS`, then gcloud's
//! `application_default_credentials.json`, then the metadata server (Cloud
//! Run). Key files and gcloud's credentials are `gcp_auth`'s; the metadata
//! server is asked here, because `gcp_auth` cannot be pointed at one on
//! loopback (`GCE_METADATA_HOST`). Either way a token is cached, refreshed a
//! few minutes before it expires, one refresh in flight at a time.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{CallError, chain};

/// The scope every call asks for; IAM decides what it may do.
const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// A token is refreshed this long before it expires, so a call never leaves
/// with one about to lapse, and a slow refresh does not stall callers.
const REFRESH_EARLY: Duration = Duration::from_secs(180);

/// How long one ask of the metadata server may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Where Application Default Credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// No credentials: the Pub/Sub emulator, as Google's libraries do.
    None,
    /// A service account key file (`GOOGLE_APPLICATION_CREDENTIALS`).
    KeyFile(PathBuf),
    /// gcloud's `application_default_credentials.json` (`gcloud auth application-default login`).
    Gcloud,
    /// The metadata server at this host (`GCE_METADATA_HOST`, else `metadata.google.internal`).
    Metadata(String),
}

/// What a call carries: nothing, or a bearer token from a cache.
#[derive(Clone)]
pub(crate) enum Credentials {
    None,
    Tokens(Arc<TokenCache>),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("Credentials::None"),
            Self::Tokens(cache) => write!(f, "Credentials::Tokens({})", cache.source),
        }
    }
}

impl Credentials {
    /// Credentials from `source`. Nothing is fetched yet; a key file is read now.
    pub(crate) async fn new(source: &CredentialSource, client: &reqwest::Client) -> Result<Self, CallError> {
        let source = match source {
            CredentialSource::None => return Ok(Self::None),
            CredentialSource::KeyFile(path) => {
                Source::Provider(key_file(path)?, format!("key file {}", path.display()))
            }
            CredentialSource::Gcloud => Source::Provider(gcloud().await?, "gcloud's default credentials".to_owned()),
            CredentialSource::Metadata(host) => {
                Source::Metadata { client: client.clone(), url: format!("http://{host}{METADATA_TOKEN_PATH}") }
            }
        };
        Ok(Self::Tokens(Arc::new(TokenCache { source, current: RwLock::new(None), refresh: Mutex::new(()) })))
    }

    /// The `Authorization` header's value, if calls carry one.
    pub(crate) async fn authorization(&self) -> Result<Option<String>, CallError> {
        match self {
            Self::None => Ok(None),
            Self::Tokens(cache) => Ok(Some(format!("Bearer {}", cache.token().await?))),
        }
    }
}

fn key_file(path: &std::path::Path) -> Result<Arc<dyn gcp_auth::TokenProvider>, CallError> {
    let account = gcp_auth::CustomServiceAccount::from_file(path)
        .map_err(|error| CallError::Credentials(format!("GOOGLE_APPLICATION_CREDENTIALS: {}", chain(&error))))?;
    Ok(Arc::new(account))
}

async fn gcloud() -> Result<Arc<dyn gcp_auth::TokenProvider>, CallError> {
    let user = gcp_auth::ConfigDefaultCredentials::new()
        .await
        .map_err(|error| CallError::Credentials(format!("gcloud's default credentials: {}", chain(&error))))?;
    Ok(Arc::new(user))
}

const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

/// Where tokens come from.
enum Source {
    Provider(Arc<dyn gcp_auth::TokenProvider>, String),
    Metadata { client: reqwest::Client, url: String },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Provider(_, name) => f.write_str(name),
            Self::Metadata { url, .. } => write!(f, "the metadata server ({url})"),
        }
    }
}

/// A token and when to stop handing it out.
#[derive(Clone)]
struct Cached {
    token: Arc<str>,
    refresh_at: Instant,
}

/// The current token, and the one refresh allowed in flight.
pub(crate) struct TokenCache {
    source: Source,
    // A std lock: held only to copy the token out or put a new one in.
    current: RwLock<Option<Cached>>,
    refresh: Mutex<()>,
}

impl TokenCache {
    /// A token good for a few more minutes at least.
    async fn token(&self) -> Result<Arc<str>, CallError> {
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let _refreshing = self.refresh.lock().await;
        // Whoever held the lock before may have refreshed it already.
        if let Some(token) = self.fresh() {
            return Ok(token);
        }
        let (token, lifetime) = self.fetch().await?;
        let token: Arc<str> = token.into();
        let refresh_at = Instant::now() + lifetime.saturating_sub(REFRESH_EARLY);
        *self.current.write().unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some(Cached { token: Arc::clone(&token), refresh_at });
        Ok(token)
    }

    fn fresh(&self) -> Option<Arc<str>> {
        let current = self.current.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        current.as_ref().filter(|cached| Instant::now() < cached.refresh_at).map(|cached| Arc::clone(&cached.token))
    }

    /// A new token and how long it lives.
    async fn fetch(&self) -> Result<(String, Duration), CallError> {
        match &self.source {
            Source::Provider(provider, name) => {
                let token = provider
                    .token(&[SCOPE])
                    .await
                    .map_err(|error| CallError::Credentials(format!("{name}: {}", chain(&error))))?;
                let lifetime = (token.expires_at() - chrono::Utc::now()).to_std().unwrap_or_default();
                Ok((token.as_str().to_owned(), lifetime))
            }
            Source::Metadata { client, url } => metadata_token(client, url).await,
        }
    }
}

/// The metadata server's answer for a token.
#[derive(Deserialize)]
struct MetadataToken {
    access_token: String,
    expires_in: u64,
}

async fn metadata_token(client: &reqwest::Client, url: &str) -> Result<(String, Duration), CallError> {
    let body = metadata_get(client, url).await?;
    let token: MetadataToken = serde_json::from_slice(&body)
        .map_err(|error| CallError::Credentials(format!("the metadata server ({url}): not a token: {error}")))?;
    Ok((token.access_token, Duration::from_secs(token.expires_in)))
}

/// The project's number, from the metadata server at `host`: what Google's
/// service agents are named by.
#[cfg(feature = "server")]
pub(crate) async fn project_number(client: &reqwest::Client, host: &str) -> Result<String, CallError> {
    let url = format!("http://{host}/computeMetadata/v1/project/numeric-project-id");
    let body = metadata_get(client, &url).await?;
    let number = String::from_utf8_lossy(&body).trim().to_owned();
    if number.is_empty() || !number.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(CallError::Credentials(format!("the metadata server ({url}): not a project number: {number:?}")));
    }
    Ok(number)
}

/// A successful answer's body from the metadata server.
async fn metadata_get(client: &reqwest::Client, url: &str) -> Result<bytes::Bytes, CallError> {
    let failed = |reason: String| CallError::Credentials(format!("the metadata server ({url}): {reason}"));
    let response = client
        .get(url)
        .header("Metadata-Flavor", "Google")
        .timeout(METADATA_TIMEOUT)
        .send()
        .await
        .map_err(|error| failed(chain(&error)))?;
    let status = response.status();
    let body = response.bytes().await.map_err(|error| failed(chain(&error)))?;
    if !status.is_success() {
        return Err(failed(format!("HTTP {}: {}", status.as_u16(), String::from_utf8_lossy(&body).trim())));
    }
    Ok(body)
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache").field("source", &self.source.to_string()).finish_non_exhaustive()
    }
}
