//! One push token's checks, with the openidconnect crate: signature (RS256
//! only) against a key set, `iss`, `aud`, `exp` and `iat` (60 s of clock
//! skew, at most an hour old), then `nbf` (which the crate does not read),
//! `email` and `email_verified`.

use std::fmt;
use std::str::FromStr as _;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeDelta, Utc};
use http::HeaderMap;
use openidconnect::core::{CoreIdToken, CoreIdTokenClaims, CoreJwsSigningAlgorithm};
use openidconnect::{
    ClaimsVerificationError, ClientId, IdTokenVerifier, IssuerUrl, JsonWebKeySet, Nonce, SignatureVerificationError,
};

use super::jwk::IssuerKey;
use super::{AuthSetupError, Clock, OidcSettings};

/// A verifier over the issuer's keys, checked with ring.
pub(crate) type Verifier = IdTokenVerifier<'static, IssuerKey>;
/// The issuer's key set.
pub(crate) type KeySet = JsonWebKeySet<IssuerKey>;

/// Clocks disagree a little; Google's own libraries allow a minute too.
const SKEW: TimeDelta = TimeDelta::seconds(60);
/// Google's tokens live an hour: an older `iat` is a replay.
const MAX_AGE: TimeDelta = TimeDelta::hours(1);
/// What Cloud Run puts where the signature was, once it has checked it.
const STRIPPED: &str = "SIGNATURE_REMOVED_BY_GOOGLE";

/// Which check a token failed, for the log line (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rejection {
    MissingHeader,
    NotBearer,
    ServerlessHeader,
    Malformed(String),
    UnknownKey,
    Signature(String),
    Issuer(String),
    Audience(String),
    Expired(String),
    IssueTime(String),
    NotYetValid(String),
    Email,
    EmailNotVerified,
    NotStripped,
    Other(String),
}

impl Rejection {
    /// The check that failed, a fixed name: safe to log as it is.
    pub(crate) fn check(&self) -> &'static str {
        match self {
            Self::MissingHeader => "authorization header present",
            Self::NotBearer => "bearer scheme",
            Self::ServerlessHeader => "no X-Serverless-Authorization",
            Self::Malformed(_) => "well-formed token",
            Self::UnknownKey => "kid in the issuer's key set",
            Self::Signature(_) => "signature",
            Self::Issuer(_) => "iss",
            Self::Audience(_) => "aud",
            Self::Expired(_) => "exp",
            Self::IssueTime(_) => "iat",
            Self::NotYetValid(_) => "nbf",
            Self::Email => "email",
            Self::EmailNotVerified => "email_verified",
            Self::NotStripped => "signature removed by Cloud Run",
            Self::Other(_) => "id token",
        }
    }

    /// What the library said, which may quote the token's claims: cut short,
    /// and to be logged with `?` so control characters stay escaped.
    pub(crate) fn detail(&self) -> Option<&str> {
        let detail = match self {
            Self::Malformed(why)
            | Self::Signature(why)
            | Self::Issuer(why)
            | Self::Audience(why)
            | Self::Expired(why)
            | Self::IssueTime(why)
            | Self::NotYetValid(why)
            | Self::Other(why) => why.as_str(),
            _ => return None,
        };
        Some(detail.char_indices().nth(120).map_or(detail, |(end, _)| &detail[..end]))
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.detail() {
            Some(detail) => write!(f, "{}: {detail:?}", self.check()),
            None => f.write_str(self.check()),
        }
    }
}

/// Cloud Run takes this header for its IAM check when it is present and
/// passes `Authorization` through untouched; Pub/Sub never sends it.
const SERVERLESS_AUTHORIZATION: &str = "x-serverless-authorization";

/// The token Cloud Run checked and stripped: a request that carried
/// `X-Serverless-Authorization` had some other token checked, so its
/// `Authorization` proves nothing and it is refused.
pub(crate) fn stripped_bearer(headers: &HeaderMap) -> Result<&str, Rejection> {
    if headers.contains_key(SERVERLESS_AUTHORIZATION) {
        return Err(Rejection::ServerlessHeader);
    }
    bearer(headers)
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
    pub(crate) fn new(settings: &OidcSettings, clock: Clock) -> Result<Self, AuthSetupError> {
        let issuer =
            IssuerUrl::new(settings.issuer.clone()).map_err(|error| AuthSetupError::Issuer(error.to_string()))?;
        let audience = ClientId::new(settings.audience.clone());
        let stripped = verifier(&issuer, &audience, &clock, KeySet::new(Vec::new())).insecure_disable_signature_check();
        Ok(Self { issuer, audience, service_account: settings.service_account.clone(), clock, stripped })
    }

    /// A verifier for `keys`, built once per key set.
    pub(crate) fn verifier(&self, keys: KeySet) -> Verifier {
        verifier(&self.issuer, &self.audience, &self.clock, keys)
    }

    /// Every check, the signature against `verifier`'s keys. A token that
    /// passes passes until the instant returned, when `exp` or `iat` fails.
    pub(crate) fn verify(&self, verifier: &Verifier, token: &str) -> Result<DateTime<Utc>, Rejection> {
        let parsed = CoreIdToken::from_str(token).map_err(|error| Rejection::Malformed(error.to_string()))?;
        let claims = parsed.claims(verifier, |_: Option<&Nonce>| Ok(())).map_err(rejection)?;
        valid_yet(not_before(token)?, self.clock.utc()).map_err(Rejection::NotYetValid)?;
        self.check_email(claims)?;
        Ok(valid_until(claims.expiration(), claims.issue_time()))
    }

    /// The claims of a token whose signature Cloud Run checked and removed.
    pub(crate) fn verify_stripped(&self, token: &str) -> Result<(), Rejection> {
        if token.rsplit('.').next() != Some(STRIPPED) {
            return Err(Rejection::NotStripped);
        }
        self.verify(&self.stripped, token).map(drop)
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

/// When a token that passed stops passing: at `exp` or an hour after `iat`,
/// with the skew, whichever comes first. A signed `exp` may be chrono's last
/// second: the sums saturate rather than overflow (a panic on input).
fn valid_until(expiration: DateTime<Utc>, issued: DateTime<Utc>) -> DateTime<Utc> {
    let expires = expiration.checked_add_signed(SKEW).unwrap_or(DateTime::<Utc>::MAX_UTC);
    let too_old = issued.checked_add_signed(MAX_AGE + SKEW).unwrap_or(DateTime::<Utc>::MAX_UTC);
    expires.min(too_old)
}

fn verifier(issuer: &IssuerUrl, audience: &ClientId, clock: &Clock, keys: KeySet) -> Verifier {
    let (exp_clock, iat_clock) = (clock.clone(), clock.clone());
    Verifier::new_public_client(audience.clone(), issuer.clone(), keys)
        .set_allowed_algs([CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256])
        // exp is compared with "now": a minute earlier grants the skew.
        .set_time_fn(move || exp_clock.utc() - SKEW)
        .set_issue_time_verifier_fn(move |issued| issued_in_time(issued, iat_clock.utc()))
}

/// The iat check's verdict; its message starts with "iat", which is how
/// [`rejection`] tells it from the library's own exp failure (both arrive
/// as `Expired`).
fn issued_in_time(issued: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), String> {
    if issued > now + SKEW {
        Err(format!("iat {issued} is in the future (now {now})"))
    } else if issued < now - MAX_AGE - SKEW {
        Err(format!("iat {issued} is more than an hour old (now {now})"))
    } else {
        Ok(())
    }
}

/// The token's `nbf`, if it has one: openidconnect's claims types drop it.
/// Read from the payload the signature check has just accepted.
fn not_before(token: &str) -> Result<Option<DateTime<Utc>>, Rejection> {
    #[derive(serde::Deserialize)]
    struct NotBefore {
        nbf: Option<f64>,
    }
    let malformed = |why: String| Rejection::Malformed(format!("nbf: {why}"));
    let payload = token.split('.').nth(1).ok_or_else(|| malformed("no payload".to_owned()))?;
    let json = URL_SAFE_NO_PAD.decode(payload).map_err(|error| malformed(error.to_string()))?;
    let claims: NotBefore = serde_json::from_slice(&json).map_err(|error| malformed(error.to_string()))?;
    claims
        .nbf
        .map(|seconds| {
            let millis = (seconds * 1000.0).floor() as i64;
            DateTime::from_timestamp_millis(millis).ok_or_else(|| malformed(format!("{seconds} is out of range")))
        })
        .transpose()
}

/// The nbf check's verdict (RFC 7519 §4.1.5), with the same skew as `iat`.
fn valid_yet(not_before: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Result<(), String> {
    match not_before {
        Some(not_before) if not_before > now + SKEW => Err(format!("nbf {not_before} is in the future (now {now})")),
        _ => Ok(()),
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
    fn a_token_valid_to_the_end_of_time_passes_until_an_hour_after_it_was_issued() {
        let issued = Utc::now();
        let end = DateTime::<Utc>::MAX_UTC;
        assert_eq!(valid_until(end, issued), issued + MAX_AGE + SKEW, "no overflow past chrono's last second");
        assert_eq!(valid_until(end, end), end);
        assert_eq!(valid_until(issued, issued), issued + SKEW);
    }

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
        assert_eq!(stripped_bearer(&headers), Ok("abc.def.ghi"));
        headers.insert("x-serverless-authorization", "Bearer other".parse().unwrap());
        assert_eq!(stripped_bearer(&headers), Err(Rejection::ServerlessHeader));
    }

    #[test]
    fn log_text_is_a_fixed_check_and_an_escaped_short_detail() {
        let forged =
            Rejection::Audience(format!("found `x`)\n2026-01-01 INFO forged line\u{1b}[2K{}", "a".repeat(300)));
        let text = forged.to_string();
        assert!(text.starts_with("aud: \""), "{text}");
        assert!(!text.contains('\n') && !text.contains('\u{1b}'), "{text}");
        assert!(text.len() < 200, "{}", text.len());
        assert_eq!(Rejection::Email.to_string(), "email");
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
    fn not_before_allows_a_minute_of_skew() {
        let now = Utc::now();
        assert!(valid_yet(None, now).is_ok());
        assert!(valid_yet(Some(now - TimeDelta::hours(1)), now).is_ok());
        assert!(valid_yet(Some(now + TimeDelta::seconds(59)), now).is_ok());
        assert!(valid_yet(Some(now + TimeDelta::seconds(61)), now).unwrap_err().contains("future"));
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
