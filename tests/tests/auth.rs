//! Push authentication against a real OIDC issuer on loopback with real RSA
//! keys: a valid Pub/Sub token runs the task; every kind of bad token is
//! answered 403 with the task not run and nothing written; keys rotate, expire
//! with their max-age, and may be late to arrive. Pushes go through
//! `App::handle` on the in-memory store: the issuer is the real part here.

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac as _};
use serde_json::json;
use sha2::Sha256;
use support::issuer::{Issuer, Key, encode};
use support::{TestApp, push_request, task};
use whirligig_handler::store::MemoryStore;
use whirligig_handler::{App, Clock, PushAuth};
use whirligig_registry::{Registry, TaskContext, TaskError, TaskRoute};

/// An app that counts runs of its one task, `count`.
struct Guarded {
    app: TestApp<MemoryStore>,
    runs: Arc<AtomicU32>,
}

impl Guarded {
    fn start(auth: PushAuth) -> Guarded {
        let runs = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&runs);
        let count = move |_: TaskContext| {
            let counter = Arc::clone(&counter);
            async move { Ok::<_, TaskError>(counter.fetch_add(1, Ordering::SeqCst) + 1) }
        };
        let registry = Registry::builder().route(TaskRoute::new("count", count)).build().unwrap();
        let app = TestApp::new(App::in_memory(Arc::new(registry), auth));
        Guarded { app, runs }
    }

    async fn push(&self, authorization: Option<&str>, task_id: &str) -> u16 {
        let request = push_request("/tasks/pubsub/", authorization, task(task_id, "count", json!({})));
        self.app.request(request).await.status
    }

    /// Whether anything was recorded for `task_id`.
    async fn recorded(&self, task_id: &str) -> bool {
        self.app.row(task_id).await.is_some()
    }

    async fn push_bearer(&self, token: &str, task_id: &str) -> u16 {
        self.push(Some(&format!("Bearer {token}")), task_id).await
    }

    fn runs(&self) -> u32 {
        self.runs.load(Ordering::SeqCst)
    }
}

fn oidc(issuer: &Issuer, clock: Clock) -> PushAuth {
    PushAuth::oidc(&issuer.settings(), clock).unwrap()
}

#[tokio::test]
async fn a_valid_pubsub_token_runs_the_task() {
    let key = Key::generated(0);
    let issuer = Issuer::start(&key).await;
    let guarded = Guarded::start(oidc(&issuer, Clock::system()));
    assert_eq!(guarded.push_bearer(&issuer.token(&key), "valid").await, 200);
    assert_eq!(guarded.runs(), 1);
    assert_eq!(guarded.app.row("valid").await.unwrap().status, whirligig_handler::store::Status::Successful);
    assert_eq!(guarded.push(Some(&format!("bearer {}", issuer.token(&key))), "lower").await, 200, "scheme case");
}

#[tokio::test]
async fn every_bad_token_is_refused_before_anything_happens() {
    let key = Key::generated(0);
    let stranger = Key::generated(1);
    let issuer = Issuer::start(&key).await;
    let guarded = Guarded::start(oidc(&issuer, Clock::system()));
    let now = chrono::Utc::now().timestamp();

    let valid = issuer.token(&key);
    let (header, _, signature) = split(&valid);
    // Only the signature can catch this: sub is not otherwise checked.
    let mut forged_claims = issuer.claims();
    forged_claims["sub"] = json!("someone-else");
    let tampered = format!("{header}.{}.{signature}", encode(&forged_claims));
    let unsigned = format!("{}.{}.", encode(&json!({"alg": "none", "typ": "JWT"})), encode(&issuer.claims()));
    let hs256 = {
        let signing_input =
            format!("{}.{}", encode(&json!({"alg": "HS256", "kid": key.kid, "typ": "JWT"})), encode(&issuer.claims()));
        let mut mac = Hmac::<Sha256>::new_from_slice(key.public_pem().as_bytes()).unwrap();
        mac.update(signing_input.as_bytes());
        let tag =
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, mac.finalize().into_bytes());
        format!("{signing_input}.{tag}")
    };

    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing header", None),
        ("Basic scheme", Some("Basic cHVic3ViOnB1YnN1Yg==".into())),
        ("malformed JWT", Some("Bearer not-a-jwt".into())),
        ("tampered payload", Some(format!("Bearer {tampered}"))),
        ("unknown key, known kid", Some(format!("Bearer {}", issuer.token(&stranger.with_kid(&key.kid))))),
        ("alg none", Some(format!("Bearer {unsigned}"))),
        ("HS256 with the public key", Some(format!("Bearer {hs256}"))),
        ("wrong iss", Some(format!("Bearer {}", issuer.token_with(&key, json!({"iss": "https://evil.example"}))))),
        (
            "bare accounts.google.com",
            Some(format!("Bearer {}", issuer.token_with(&key, json!({"iss": "accounts.google.com"})))),
        ),
        ("wrong aud", Some(format!("Bearer {}", issuer.token_with(&key, json!({"aud": "https://other.a.run.app"}))))),
        ("expired", Some(format!("Bearer {}", issuer.token_with(&key, json!({"iat": now - 3000, "exp": now - 120}))))),
        (
            "iat in the future",
            Some(format!("Bearer {}", issuer.token_with(&key, json!({"iat": now + 300, "exp": now + 3900})))),
        ),
        (
            "iat over an hour old",
            Some(format!("Bearer {}", issuer.token_with(&key, json!({"iat": now - 3800, "exp": now + 600})))),
        ),
        ("wrong email", Some(format!("Bearer {}", issuer.token_with(&key, json!({"email": "someone@else.example"}))))),
        ("email_verified false", Some(format!("Bearer {}", issuer.token_with(&key, json!({"email_verified": false}))))),
    ];
    for (case, authorization) in &cases {
        assert_eq!(guarded.push(authorization.as_deref(), case).await, 403, "{case}");
        assert!(!guarded.recorded(case).await, "{case}: nothing recorded");
    }
    // Refused before the body is read: a body that would be a 400 is a 403.
    let garbage = guarded.app.request(push_request("/tasks/pubsub/", Some("Bearer x.y.z"), "not even json")).await;
    assert_eq!(garbage.status, 403);
    assert_eq!(guarded.runs(), 0);
    assert_eq!(guarded.push_bearer(&valid, "still-valid").await, 200, "the good token still works");
}

#[tokio::test]
async fn a_token_not_valid_before_a_time_to_come_is_refused_beyond_the_skew() {
    let key = Key::generated(0);
    let issuer = Issuer::start(&key).await;
    let guarded = Guarded::start(oidc(&issuer, Clock::system()));
    let now = chrono::Utc::now().timestamp();

    let later = issuer.token_with(&key, json!({"nbf": now + 300}));
    assert_eq!(guarded.push_bearer(&later, "nbf-later").await, 403, "nbf five minutes from now");
    assert!(!guarded.recorded("nbf-later").await, "nothing recorded");
    let within_skew = issuer.token_with(&key, json!({"nbf": now + 30}));
    assert_eq!(guarded.push_bearer(&within_skew, "nbf-skew").await, 200, "nbf within the minute of skew");
    let past = issuer.token_with(&key, json!({"nbf": now - 10}));
    assert_eq!(guarded.push_bearer(&past, "nbf-past").await, 200, "nbf passed");
    let malformed = issuer.token_with(&key, json!({"nbf": "tomorrow"}));
    assert_eq!(guarded.push_bearer(&malformed, "nbf-text").await, 403, "nbf not a number");
    assert_eq!(guarded.runs(), 2);
}

/// 50 pushes at once with `token`, task ids `{prefix}-{n}`; their statuses in order.
async fn burst(guarded: &Arc<Guarded>, token: &str, prefix: &str) -> Vec<u16> {
    let pushes: Vec<_> = (0..50)
        .map(|n| {
            let (guarded, token, task_id) = (Arc::clone(guarded), token.to_owned(), format!("{prefix}-{n}"));
            tokio::spawn(async move { guarded.push_bearer(&token, &task_id).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for push in pushes {
        statuses.push(push.await.unwrap());
    }
    statuses
}

fn split(token: &str) -> (&str, &str, &str) {
    let mut parts = token.splitn(3, '.');
    (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap())
}

#[tokio::test]
async fn a_burst_of_unknown_kids_refetches_the_keys_once() {
    let key = Key::generated(0);
    let issuer = Issuer::start(&key).await;
    let guarded = Arc::new(Guarded::start(oidc(&issuer, Clock::system())));
    assert_eq!(guarded.push_bearer(&issuer.token(&key), "warm").await, 200);
    assert_eq!(issuer.fetches(), 1);

    let unknown = issuer.token(&Key::generated(1).with_kid("nobody-knows-me"));
    assert_eq!(burst(&guarded, &unknown, "unknown").await, [403; 50]);
    assert_eq!(issuer.fetches(), 2, "one refetch for the whole burst");
    assert!(!guarded.recorded("unknown-0").await && !guarded.recorded("unknown-49").await);
    assert_eq!(guarded.push_bearer(&unknown, "unknown-again").await, 403);
    assert_eq!(issuer.fetches(), 2, "and none again within the minute");
    assert_eq!(guarded.runs(), 1);
}

#[tokio::test]
async fn a_rotated_key_verifies_after_one_refetch() {
    let (old, new) = (Key::generated(0), Key::generated(2));
    let issuer = Issuer::start(&old).await;
    let guarded = Guarded::start(oidc(&issuer, Clock::system()));
    assert_eq!(guarded.push_bearer(&issuer.token(&old), "before").await, 200);
    issuer.set_keys(&[&new]);
    assert_eq!(guarded.push_bearer(&issuer.token(&new), "after").await, 200);
    assert_eq!(issuer.fetches(), 2);
}

#[tokio::test]
async fn a_burst_of_tokens_with_a_rotated_key_shares_one_refetch() {
    let (old, new) = (Key::generated(0), Key::generated(2));
    let issuer = Issuer::start(&old).await;
    let guarded = Arc::new(Guarded::start(oidc(&issuer, Clock::system())));
    assert_eq!(guarded.push_bearer(&issuer.token(&old), "before").await, 200);
    issuer.set_keys(&[&old, &new]);
    let token = issuer.token(&new);
    assert_eq!(burst(&guarded, &token, "rotated").await, [200; 50], "every waiter uses the one refetch's keys");
    assert_eq!(issuer.fetches(), 2);
}

#[tokio::test]
async fn a_failed_or_empty_refetch_keeps_the_cached_keys() {
    let key = Key::generated(0);
    let issuer = Issuer::start(&key).await;
    let guarded = Guarded::start(oidc(&issuer, Clock::system()));
    assert_eq!(guarded.push_bearer(&issuer.token(&key), "cached").await, 200);

    issuer.set_failing(true);
    let unknown = issuer.token(&Key::generated(1).with_kid("new-kid"));
    assert_eq!(guarded.push_bearer(&unknown, "during-outage").await, 403);
    assert_eq!(issuer.fetches(), 2, "the refetch was tried");
    assert_eq!(guarded.push_bearer(&issuer.token(&key), "still-served").await, 200);
}

#[tokio::test]
async fn an_empty_key_set_does_not_replace_good_keys() {
    let key = Key::generated(0);
    let issuer = Issuer::start(&key).await;
    let guarded = Guarded::start(oidc(&issuer, Clock::system()));
    assert_eq!(guarded.push_bearer(&issuer.token(&key), "cached").await, 200);
    issuer.set_keys(&[]);
    let unknown = issuer.token(&Key::generated(1).with_kid("new-kid"));
    assert_eq!(guarded.push_bearer(&unknown, "empty-set").await, 403);
    assert_eq!(issuer.fetches(), 2);
    assert_eq!(guarded.push_bearer(&issuer.token(&key), "still-served").await, 200);
}

#[tokio::test]
async fn expired_keys_serve_while_a_failing_issuer_is_asked_at_most_every_30_s() {
    let key = Key::generated(0);
    let issuer = Issuer::start(&key).await;
    issuer.set_max_age(300);
    let clock = Clock::adjustable();
    let guarded = Guarded::start(oidc(&issuer, clock.clone()));
    assert_eq!(guarded.push_bearer(&issuer.token(&key), "first").await, 200);

    issuer.set_failing(true);
    clock.advance(Duration::from_secs(301));
    let later = chrono::Utc::now().timestamp() + 301;
    let token = issuer.token_with(&key, json!({"iat": later, "exp": later + 3600}));
    for n in 0..40 {
        let status = if n % 2 == 0 {
            guarded.push_bearer(&token, &format!("stale-{n}")).await
        } else {
            guarded.push_bearer("garbage", &format!("garbage-{n}")).await
        };
        assert_eq!(status, if n % 2 == 0 { 200 } else { 403 }, "push {n}");
    }
    issuer.fetched(2).await;
    assert_eq!(issuer.fetches(), 2, "one refresh attempt for 40 pushes");
}

#[tokio::test]
async fn keys_are_kept_for_their_max_age_then_refreshed() {
    let key = Key::generated(0);
    let issuer = Issuer::start(&key).await;
    issuer.set_max_age(600);
    let clock = Clock::adjustable();
    let guarded = Guarded::start(oidc(&issuer, clock.clone()));
    assert_eq!(guarded.push_bearer(&issuer.token(&key), "first").await, 200);
    assert_eq!(issuer.fetches(), 1);

    clock.advance(Duration::from_secs(590));
    assert_eq!(guarded.push_bearer(&issuer.token(&key), "fresh").await, 200);
    assert_eq!(issuer.fetches(), 1, "no refetch before max-age");

    clock.advance(Duration::from_secs(20));
    // Tokens are judged by the same clock: sign this one in its future.
    let later = chrono::Utc::now().timestamp() + 610;
    let token = issuer.token_with(&key, json!({"iat": later, "exp": later + 3600}));
    assert_eq!(guarded.push_bearer(&token, "stale").await, 200, "stale keys still serve while refreshing");
    issuer.fetched(2).await;
}

/// A token is verified once and then remembered, but never past the instant
/// its `exp` (with the minute of skew) or its `iat` (an hour old) would refuse it.
#[tokio::test]
async fn a_remembered_token_is_refused_once_its_time_is_up() {
    let key = Key::generated(0);
    let issuer = Issuer::start(&key).await;
    let clock = Clock::adjustable();
    let guarded = Guarded::start(oidc(&issuer, clock.clone()));
    let now = chrono::Utc::now().timestamp();
    let short = issuer.token_with(&key, json!({"exp": now + 100}));
    let old = issuer.token_with(&key, json!({"iat": now - 3550, "exp": now + 3600}));
    for (token, name) in [(&short, "short"), (&old, "old")] {
        assert_eq!(guarded.push_bearer(token, &format!("{name}-1")).await, 200);
        assert_eq!(guarded.push_bearer(token, &format!("{name}-2")).await, 200, "{name} again");
    }

    clock.advance(Duration::from_secs(155));
    assert_eq!(guarded.push_bearer(&short, "short-3").await, 200, "exp + 60 s not reached");
    assert_eq!(guarded.push_bearer(&old, "old-3").await, 403, "iat is more than an hour (and a minute) old");
    clock.advance(Duration::from_secs(10));
    assert_eq!(guarded.push_bearer(&short, "short-4").await, 403, "exp + 60 s passed");
    assert_eq!(guarded.runs(), 5);
}

/// New keys verify a remembered token afresh: once the key that signed it
/// is gone from the issuer's set, it is refused.
#[tokio::test]
async fn a_remembered_token_is_refused_once_its_key_is_gone() {
    let (old, new) = (Key::generated(0), Key::generated(2));
    let issuer = Issuer::start(&old).await;
    let guarded = Guarded::start(oidc(&issuer, Clock::system()));
    let token = issuer.token(&old);
    assert_eq!(guarded.push_bearer(&token, "before").await, 200);
    assert_eq!(guarded.push_bearer(&token, "again").await, 200);

    issuer.set_keys(&[&new]);
    assert_eq!(guarded.push_bearer(&issuer.token(&new), "new-key").await, 200, "its unknown kid refetched the keys");
    assert_eq!(guarded.push_bearer(&token, "after").await, 403);
    assert_eq!(issuer.fetches(), 2);
    assert_eq!(guarded.runs(), 3);
}

#[tokio::test]
async fn an_issuer_down_at_start_means_503_until_its_keys_arrive() {
    let key = Key::generated(0);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let settings = whirligig_handler::OidcSettings {
        issuer: format!("http://{port}"),
        jwks_url: format!("http://{port}/keys"),
        audience: support::issuer::AUDIENCE.into(),
        service_account: support::issuer::SERVICE_ACCOUNT.into(),
    };
    let guarded = Guarded::start(PushAuth::oidc(&settings, Clock::system()).unwrap());
    let early = Issuer::start(&key).await.token_with(&key, json!({"iss": format!("http://{port}")}));
    assert_eq!(guarded.push_bearer(&early, "too-early").await, 503);
    assert!(!guarded.recorded("too-early").await);

    let issuer = Issuer::start_on(port, &key).await;
    // The cache's next try, after its backoff, finds the issuer up.
    issuer.fetched(1).await;
    assert_eq!(guarded.push_bearer(&issuer.token(&key), "late").await, 200, "a push waits for keys on their way");
    assert_eq!(guarded.runs(), 1);
}

#[tokio::test]
async fn cloud_run_iam_mode_checks_the_claims_of_stripped_tokens() {
    let key = Key::generated(0);
    let issuer = Issuer::start(&key).await;
    let guarded = Guarded::start(PushAuth::cloud_run_iam(&issuer.settings(), Clock::system()).unwrap());
    let signed = issuer.token(&key);
    let (header, claims, _) = split(&signed);
    let stripped = format!("{header}.{claims}.SIGNATURE_REMOVED_BY_GOOGLE");
    assert_eq!(guarded.push_bearer(&stripped, "stripped").await, 200);
    assert_eq!(guarded.push_bearer(&signed, "still-signed").await, 403, "a real signature means IAM is off");
    // Cloud Run checked this header, not Authorization, which it passed through as sent.
    let sidestep = http::Request::post("/tasks/pubsub/")
        .header("authorization", format!("Bearer {stripped}"))
        .header("x-serverless-authorization", "Bearer some-invokers-own-token")
        .body(http_body_util::Full::new(bytes::Bytes::from(task("sidestep", "count", json!({})))))
        .unwrap();
    assert_eq!(guarded.app.request(sidestep).await.status, 403);
    let wrong = issuer.token_with(&key, json!({"aud": "https://other"}));
    let (header, claims, _) = split(&wrong);
    assert_eq!(guarded.push_bearer(&format!("{header}.{claims}.SIGNATURE_REMOVED_BY_GOOGLE"), "wrong-aud").await, 403);
    assert_eq!(issuer.fetches(), 0, "no keys needed");
    assert_eq!(guarded.runs(), 1);
}
