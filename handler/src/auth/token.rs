//! One push token's checks, with the openidconnect crate: signature (RS256
//! only) against a key set, `iss`, `aud`, `exp` and `iat` (60 s of clock
//! skew, at most an hour old), then `email` and `email_verified`.

use std::fmt;
use std::str::FromStr as _;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use http::HeaderMap;
use openidconnect::core::{CoreIdToken, CoreIdTokenClaims, CoreJwsSigningAlgorithm};
use openidconnect::{
    ClaimsVerificationError, ClientId, IdTokenVerifier, IssuerUrl, JsonWebKeySet, Nonce, SignatureVerificationError,
};

use super::Clock;
use super::OidcSettings;
use super::jwk::RingJsonWebKey;

/// A verifier over the issuer's keys, checked with ring.
pub(crate) type Verifier = IdTokenVerifier<'static, RingJsonWebKey>;
/// The issuer's key set.
pub(crate) type KeySet = JsonWebKeySet<RingJsonWebKey>;

/// Clocks disagree a little; Google's own libraries allow a minute too.
const SKEW: TimeDelta = TimeDelta::seconds(60);
/// Pub/Sub mints a fresh token per push; an older one is a replay.
const MAX_AGE: TimeDelta = TimeDelta::hours(1);
/// What Cloud Run puts where the signature was, once it has checked it.
const STRIPPED: &str = "SIGNATURE_REMOVED_BY_GOOGLE";

/// Which check a token failed, for the log line (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rejection {
    MissingHeader,
    NotBearer,
    Malformed(String),
    UnknownKey,
    Signature(String),
    Issuer(String),
    Audience(String),
    Expired(String),
    IssueTime(String),
    Email,
    EmailNotVerified,
    NotStripped,
    Other(String),
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingHeader => f.write_str("no Authorization header"),
            Self::NotBearer => f.write_str("Authorization is not a Bearer token"),
            Self::Malformed(why) => write!(f, "malformed token: {why}"),
            Self::UnknownKey => f.write_str("signature: the token's kid is not in the issuer's key set"),
            Self::Signature(why) => write!(f, "signature: {why}"),
            Self::Issuer(why) => write!(f, "iss: {why}"),
            Self::Audience(why) => write!(f, "aud: {why}"),
            Self::Expired(why) => write!(f, "exp: {why}"),
            Self::IssueTime(why) => write!(f, "iat: {why}"),
            Self::Email => f.write_str("email: not the push service account"),
            Self::EmailNotVerified => f.write_str("email_verified: not true"),
            Self::NotStripped => f.write_str(
                "the token still has a signature: TASKS_AUTH=cloud-run-iam needs Cloud Run's invoker IAM check on",
            ),
            Self::Other(why) => f.write_str(why),
        }
    }
}

/// The token from `Authorization: Bearer <token>`.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, Rejection> {
    let value = headers.get(http::header::AUTHORIZATION).ok_or(Rejection::MissingHeader)?;
    let value = value.to_str().map_err(|_| Rejection::NotBearer)?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => Ok(token.trim()),
        _ => Err(Rejection::NotBearer),
    }
}

/// What every push token must say, and the clock it is judged by.
pub(crate) struct Expectations {
    issuer: IssuerUrl,
    audience: ClientId,
    service_account: String,
    clock: Clock,
    /// Claims only: for tokens whose signature Cloud Run already checked.
    stripped: Verifier,
}

impl fmt::Debug for Expectations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expectations")
            .field("issuer", &self.issuer.as_str())
            .field("audience", &self.audience.as_str())
            .field("service_account", &self.service_account)
            .finish_non_exhaustive()
    }
}

impl Expectations {
    pub(crate) fn new(settings: &OidcSettings, clock: Clock) -> Result<Self, String> {
        let issuer = IssuerUrl::new(settings.issuer.clone()).map_err(|error| format!("TASKS_OIDC_ISSUER: {error}"))?;
        let audience = ClientId::new(settings.audience.clone());
        let mut expect = Self {
            stripped: Verifier::new_insecure_without_verification(),
            issuer,
            audience,
            service_account: settings.service_account.clone(),
            clock,
        };
        expect.stripped = expect.verifier(KeySet::new(Vec::new())).insecure_disable_signature_check();
        Ok(expect)
    }

    /// A verifier for `keys`, built once per key set.
    pub(crate) fn verifier(&self, keys: KeySet) -> Verifier {
        let (exp_clock, iat_clock) = (self.clock.clone(), self.clock.clone());
        Verifier::new_public_client(self.audience.clone(), self.issuer.clone(), keys)
            .set_allowed_algs([CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256])
            // exp is compared with "now": a minute earlier grants the skew.
            .set_time_fn(move || exp_clock.utc() - SKEW)
            .set_issue_time_verifier_fn(move |issued| issued_in_time(issued, iat_clock.utc()))
    }

    /// Every check, the signature against `verifier`'s keys.
    pub(crate) fn verify(&self, verifier: &Verifier, token: &str) -> Result<(), Rejection> {
        let token = CoreIdToken::from_str(token).map_err(|error| Rejection::Malformed(error.to_string()))?;
        let claims = token.claims(verifier, |_: Option<&Nonce>| Ok(())).map_err(rejection)?;
        self.check_email(claims)
    }

    /// The claims of a token whose signature Cloud Run checked and removed.
    pub(crate) fn verify_stripped(&self, token: &str) -> Result<(), Rejection> {
        if token.rsplit('.').next() != Some(STRIPPED) {
            return Err(Rejection::NotStripped);
        }
        self.verify(&self.stripped, token)
    }

    fn check_email(&self, claims: &CoreIdTokenClaims) -> Result<(), Rejection> {
        if claims.email().map(|email| email.as_str()) != Some(self.service_account.as_str()) {
            return Err(Rejection::Email);
        }
        if claims.email_verified() != Some(true) {
            return Err(Rejection::EmailNotVerified);
        }
        Ok(())
    }
}

fn issued_in_time(issued: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), String> {
    if issued > now + SKEW {
        Err(format!("iat {issued} is in the future (now {now})"))
    } else if issued < now - MAX_AGE - SKEW {
        Err(format!("iat {issued} is more than an hour old (now {now})"))
    } else {
        Ok(())
    }
}

fn rejection(error: ClaimsVerificationError) -> Rejection {
    match error {
        ClaimsVerificationError::SignatureVerification(SignatureVerificationError::NoMatchingKey) => {
            Rejection::UnknownKey
        }
        ClaimsVerificationError::SignatureVerification(error) => Rejection::Signature(error.to_string()),
        ClaimsVerificationError::InvalidIssuer(why) => Rejection::Issuer(why),
        ClaimsVerificationError::InvalidAudience(why) => Rejection::Audience(why),
        ClaimsVerificationError::Expired(why) if why.starts_with("iat") => Rejection::IssueTime(why),
        ClaimsVerificationError::Expired(why) => Rejection::Expired(why),
        other => Rejection::Other(other.to_string()),
    }
}

/// How long keys are trusted without a refetch: the response's max-age,
/// kept between five minutes and a day.
pub(crate) fn key_lifetime(cache_control: Option<&str>) -> Duration {
    let max_age = cache_control
        .into_iter()
        .flat_map(|value| value.split(','))
        .find_map(|directive| directive.trim().strip_prefix("max-age=")?.trim().parse::<u64>().ok());
    Duration::from_secs(max_age.unwrap_or(0).clamp(5 * 60, 24 * 60 * 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), Err(Rejection::MissingHeader));
        headers.insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(bearer(&headers), Err(Rejection::NotBearer));
        headers.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(bearer(&headers), Err(Rejection::NotBearer));
        headers.insert("authorization", "bearer abc.def.ghi".parse().unwrap());
        assert_eq!(bearer(&headers), Ok("abc.def.ghi"));
    }

    #[test]
    fn issue_time_allows_a_minute_of_skew_and_an_hour_of_age() {
        let now = Utc::now();
        assert!(issued_in_time(now, now).is_ok());
        assert!(issued_in_time(now + TimeDelta::seconds(59), now).is_ok());
        assert!(issued_in_time(now + TimeDelta::seconds(61), now).unwrap_err().contains("future"));
        assert!(issued_in_time(now - TimeDelta::minutes(60), now).is_ok());
        assert!(issued_in_time(now - TimeDelta::minutes(62), now).unwrap_err().contains("hour old"));
    }

    #[test]
    fn key_lifetime_follows_max_age_within_bounds() {
        assert_eq!(
            key_lifetime(Some("public, max-age=19845, must-revalidate, no-transform")),
            Duration::from_secs(19845)
        );
        assert_eq!(key_lifetime(Some("max-age=10")), Duration::from_secs(300));
        assert_eq!(key_lifetime(Some("max-age=999999")), Duration::from_secs(86400));
        assert_eq!(key_lifetime(Some("no-cache")), Duration::from_secs(300));
        assert_eq!(key_lifetime(None), Duration::from_secs(300));
    }
}
