//! The issuer's signing keys, cached around openidconnect's verifier (which
//! takes a key set once and never refreshes it). Kept until the response's
//! max-age; an unknown `kid` refetches at most once a minute, one fetch for
//! all the requests that wait on it; a failed refetch keeps the old keys.
//! Tokens these keys verified are remembered (see `verified`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use openidconnect::reqwest;
use tokio::sync::{Mutex, watch};

use super::token::{Expectations, KeySet, Rejection, Verifier, key_lifetime};
use super::verified::VerifiedTokens;
use super::{AuthError, AuthSetupError, Clock};

/// A request that finds no keys yet waits this long for the first fetch.
const FIRST_KEYS_WAIT: Duration = Duration::from_secs(1);
/// At most one refetch a minute for tokens whose `kid` is unknown.
const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(60);
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(30);
/// After a failed refresh of expired keys, the next try waits this long:
/// requests keep coming, and the issuer may be struggling.
const REFRESH_RETRY: Duration = Duration::from_secs(30);

/// One fetched key set, ready to verify with.
struct Keys {
    verifier: Verifier,
    expires_at: Instant,
    generation: u64,
}

/// The issuer's keys and how to refresh them.
pub(crate) struct KeyCache {
    url: String,
    http: reqwest::Client,
    expect: Expectations,
    clock: Clock,
    current: watch::Sender<Option<Arc<Keys>>>,
    /// Held for the whole of a fetch, so concurrent refetches become one;
    /// holds when an unknown kid last caused one.
    fetching: Mutex<Option<Instant>>,
    refresh_scheduled: AtomicBool,
    /// No background refresh before this, after one failed.
    refresh_not_before: std::sync::Mutex<Option<Instant>>,
    started: AtomicBool,
    verified: VerifiedTokens,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").field("url", &self.url).field("expect", &self.expect).finish_non_exhaustive()
    }
}

impl KeyCache {
    pub(crate) fn new(url: &str, expect: Expectations, clock: Clock) -> Result<Self, AuthSetupError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|error| AuthSetupError::HttpClient(error.to_string()))?;
        Ok(Self {
            url: url.to_owned(),
            http,
            expect,
            clock,
            current: watch::Sender::new(None),
            fetching: Mutex::new(None),
            refresh_scheduled: AtomicBool::new(false),
            refresh_not_before: std::sync::Mutex::new(None),
            started: AtomicBool::new(false),
            verified: VerifiedTokens::default(),
        })
    }

    /// Fetches the first keys in the background, retrying with backoff.
    pub(crate) fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let cache = Arc::clone(self);
        tokio::spawn(async move {
            let mut delay = FIRST_RETRY;
            loop {
                let fetched = {
                    let _fetching = cache.fetching.lock().await;
                    if cache.current.borrow().is_some() {
                        return;
                    }
                    cache.fetch().await
                };
                match fetched {
                    Ok(_) => return,
                    Err(error) => {
                        tracing::warn!(%error, retry_in = ?delay, "cannot fetch the issuer's keys yet");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(LAST_RETRY);
                    }
                }
            }
        });
    }

    /// Verifies `token`, refetching once if its `kid` is new to us. A token
    /// these keys verified before is let through while its time holds.
    pub(crate) async fn verify(self: &Arc<Self>, token: &str) -> Result<(), AuthError> {
        let keys = self.keys().await?;
        if self.verified.hold(token, keys.generation, self.clock.utc()) {
            return Ok(());
        }
        let (checked, generation) = match self.expect.verify(&keys.verifier, token) {
            Err(Rejection::UnknownKey) => match self.refetch_for_unknown_kid(keys.generation).await {
                Some(fresh) => (self.expect.verify(&fresh.verifier, token), fresh.generation),
                None => (Err(Rejection::UnknownKey), keys.generation),
            },
            checked => (checked, keys.generation),
        };
        let until = checked.map_err(AuthError::Forbidden)?;
        self.verified.remember(token, generation, until, self.clock.utc());
        Ok(())
    }

    /// The current keys; expired ones are still used while a refresh runs.
    async fn keys(self: &Arc<Self>) -> Result<Arc<Keys>, AuthError> {
        let current = self.current.borrow().clone();
        if let Some(keys) = current {
            if self.clock.now() >= keys.expires_at {
                self.refresh_in_background(keys.generation);
            }
            return Ok(keys);
        }
        let mut first = self.current.subscribe();
        match tokio::time::timeout(FIRST_KEYS_WAIT, first.wait_for(Option::is_some)).await {
            Ok(Ok(keys)) => keys.clone().ok_or(AuthError::KeysUnavailable),
            _ => Err(AuthError::KeysUnavailable),
        }
    }

    fn refresh_in_background(self: &Arc<Self>, seen: u64) {
        let now = self.clock.now();
        let waiting =
            self.refresh_not_before.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).is_some_and(|at| now < at);
        if waiting || self.refresh_scheduled.swap(true, Ordering::SeqCst) {
            return;
        }
        let cache = Arc::clone(self);
        tokio::spawn(async move {
            let _fetching = cache.fetching.lock().await;
            if cache.generation() == Some(seen)
                && let Err(error) = cache.fetch().await
            {
                tracing::warn!(%error, retry_in = ?REFRESH_RETRY, "cannot refresh the issuer's keys; keeping the cached ones");
                let retry_at = cache.clock.now() + REFRESH_RETRY;
                *cache.refresh_not_before.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(retry_at);
            }
            cache.refresh_scheduled.store(false, Ordering::SeqCst);
        });
    }

    /// One refetch for every request that met an unknown `kid` at once, and
    /// none if an unknown kid caused one in the last minute.
    async fn refetch_for_unknown_kid(&self, seen: u64) -> Option<Arc<Keys>> {
        let mut last = self.fetching.lock().await;
        if self.generation() != Some(seen) {
            // Someone fetched while this request waited: use those keys.
            return self.current.borrow().clone();
        }
        let now = self.clock.now();
        if last.is_some_and(|at| now.duration_since(at) < UNKNOWN_KID_INTERVAL) {
            return None;
        }
        *last = Some(now);
        match self.fetch().await {
            Ok(keys) => Some(keys),
            Err(error) => {
                tracing::warn!(%error, "cannot refetch the issuer's keys; keeping the cached ones");
                None
            }
        }
    }

    fn generation(&self) -> Option<u64> {
        self.current.borrow().as_ref().map(|keys| keys.generation)
    }

    async fn fetch(&self) -> Result<Arc<Keys>, String> {
        let response = self.http.get(&self.url).send().await.map_err(|error| error.to_string())?;
        if !response.status().is_success() {
            return Err(format!("{} answered {}", self.url, response.status()));
        }
        let cache_control = response.headers().get(reqwest::header::CACHE_CONTROL).and_then(|v| v.to_str().ok());
        let lifetime = key_lifetime(cache_control);
        let body = response.bytes().await.map_err(|error| error.to_string())?;
        let set: KeySet =
            serde_json::from_slice(&body).map_err(|error| format!("{} is not a key set: {error}", self.url))?;
        // Keys it cannot read are dropped while parsing; a set left with none
        // would refuse every token, so the old keys stay instead.
        if !set.keys().iter().any(|key| key.can_verify_rs256()) {
            return Err(format!("{} holds no RSA signing key", self.url));
        }
        let keys = Arc::new(Keys {
            verifier: self.expect.verifier(set),
            expires_at: self.clock.now() + lifetime,
            generation: self.generation().map_or(1, |generation| generation + 1),
        });
        self.current.send_replace(Some(Arc::clone(&keys)));
        tracing::info!(url = self.url, ?lifetime, "fetched the issuer's keys");
        Ok(keys)
    }
}
