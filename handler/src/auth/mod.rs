//! Who may push tasks. [`PushAuth::check`] runs before the body is read; a
//! refusal is answered 403 with a log line naming the failed check, and
//! nothing else happens: no database, no task lookup. The token itself is
//! never logged.

mod clock;
mod jwk;
mod keys;
mod token;
mod verified;

use std::sync::Arc;

use http::HeaderMap;

pub use self::clock::Clock;
use self::keys::KeyCache;
use self::token::Expectations;
pub(crate) use self::token::Rejection;

/// Where the keys and claims of push tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcSettings {
    /// The exact `iss` (`TASKS_OIDC_ISSUER`, default `https://accounts.google.com`).
    pub issuer: String,
    /// The key set (`TASKS_OIDC_JWKS_URL`, default Google's).
    pub jwks_url: String,
    /// The exact `aud` (`TASKS_OIDC_AUDIENCE`, default `CLOUD_RUN_SERVICE_URL`).
    pub audience: String,
    /// The `email` that must sign (`TASKS_SERVICE_ACCOUNT`).
    pub service_account: String,
}

/// How push requests are authenticated (`TASKS_AUTH`).
#[derive(Debug, Clone)]
pub struct PushAuth(Mode);

#[derive(Debug, Clone)]
enum Mode {
    /// Every request is let through: dev only.
    None,
    /// Full verification of Pub/Sub's OIDC token against the issuer's keys.
    Oidc(Arc<KeyCache>),
    /// Cloud Run verified the token (invoker IAM check on) and stripped its
    /// signature: only the claims are checked.
    CloudRunIam(Arc<Expectations>),
}

/// Why a push request was not let through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    /// A check failed: 403.
    #[error("{0}")]
    Forbidden(Rejection),
    /// No key is known yet to check a signature with: 503, so Pub/Sub retries.
    #[error("the issuer's keys are not available yet")]
    KeysUnavailable,
}

/// Why token verification could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthSetupError {
    /// The issuer is not a URL openidconnect accepts.
    #[error("TASKS_OIDC_ISSUER: {0}")]
    Issuer(String),
    /// The HTTP client for the key set could not be built.
    #[error("cannot build the HTTP client for the issuer's keys: {0}")]
    HttpClient(String),
}

impl PushAuth {
    /// No verification at all: for dev and tests.
    pub fn none() -> Self {
        Self(Mode::None)
    }

    /// Full OIDC verification. Call [`start`](Self::start) once a runtime runs
    /// to fetch the keys in the background.
    pub fn oidc(settings: &OidcSettings, clock: Clock) -> Result<Self, AuthSetupError> {
        let expect = Expectations::new(settings, clock.clone())?;
        Ok(Self(Mode::Oidc(Arc::new(KeyCache::new(&settings.jwks_url, expect, clock)?))))
    }

    /// Claims-only checks for a service behind Cloud Run's invoker IAM check.
    pub fn cloud_run_iam(settings: &OidcSettings, clock: Clock) -> Result<Self, AuthSetupError> {
        Ok(Self(Mode::CloudRunIam(Arc::new(Expectations::new(settings, clock)?))))
    }

    /// Starts fetching the issuer's keys in the background, retrying with
    /// backoff until it succeeds. Never waits: listening is not delayed.
    pub fn start(&self) {
        if let Mode::Oidc(keys) = &self.0 {
            keys.start();
        }
    }

    /// Lets the request through or says why not.
    pub(crate) async fn check(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        match &self.0 {
            Mode::None => Ok(()),
            Mode::Oidc(keys) => keys.verify(token::bearer(headers).map_err(AuthError::Forbidden)?).await,
            Mode::CloudRunIam(expect) => expect
                .verify_stripped(token::stripped_bearer(headers).map_err(AuthError::Forbidden)?)
                .map_err(AuthError::Forbidden),
        }
    }
}
