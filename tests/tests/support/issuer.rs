//! A real OIDC issuer on loopback: a discovery document and a key set made
//! from freshly generated RSA keys, served over HTTP, and tokens signed as
//! Google signs Pub/Sub's push tokens. Keys can be rotated, the key set's
//! max-age set, and the server made to fail; fetches are counted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rsa::pkcs1v15::SigningKey;
use rsa::signature::{SignatureEncoding as _, Signer as _};
use rsa::traits::PublicKeyParts as _;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub const SERVICE_ACCOUNT: &str = "pubsub-invoker@test-project.iam.gserviceaccount.com";
pub const AUDIENCE: &str = "https://whirligig-test.a.run.app";

/// An RSA key pair and its `kid`.
#[derive(Clone)]
pub struct Key {
    pub kid: String,
    private: RsaPrivateKey,
}

impl Key {
    /// One of a few keys generated once per test binary (2048-bit keys take a while).
    pub fn generated(index: usize) -> Key {
        static KEYS: OnceLock<Vec<RsaPrivateKey>> = OnceLock::new();
        let keys = KEYS.get_or_init(|| {
            (0..3).map(|_| RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("an RSA key")).collect()
        });
        Key { kid: format!("test-key-{index}"), private: keys[index].clone() }
    }

    /// The same private key under another `kid`.
    pub fn with_kid(&self, kid: &str) -> Key {
        Key { kid: kid.to_owned(), private: self.private.clone() }
    }

    fn public(&self) -> RsaPublicKey {
        self.private.to_public_key()
    }

    fn jwk(&self) -> Value {
        let public = self.public();
        json!({
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        })
    }

    /// A compact JWS: header and claims as given, RS256-signed with this key.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let signing_input = format!("{}.{}", encode(header), encode(claims));
        let signature = SigningKey::<Sha256>::new(self.private.clone()).sign(signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    /// The public key as PKCS#1 PEM: what an HS256 confusion attack uses as its secret.
    pub fn public_pem(&self) -> String {
        use rsa::pkcs1::EncodeRsaPublicKey as _;
        self.public().to_pkcs1_pem(rsa::pkcs1::LineEnding::LF).expect("a PEM")
    }
}

pub fn encode(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

pub fn rs256_header(kid: &str) -> Value {
    json!({"alg": "RS256", "kid": kid, "typ": "JWT"})
}

/// The issuer's state, shared with its HTTP server.
struct State {
    keys: Mutex<Vec<Key>>,
    max_age: AtomicU64,
    failing: AtomicBool,
    /// Key set requests so far, answered or not: a count tests can wait on.
    fetches: watch::Sender<u32>,
}

/// A running issuer; dropping it does not stop the server, the test's runtime does.
#[derive(Clone)]
pub struct Issuer {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Issuer {
    /// Serves on 127.0.0.1:0 with `key` in its key set.
    pub async fn start(key: &Key) -> Issuer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the issuer");
        Self::serve(listener, key).await
    }

    /// Serves on a port chosen earlier (an issuer that comes up late).
    pub async fn start_on(addr: SocketAddr, key: &Key) -> Issuer {
        let listener = TcpListener::bind(addr).await.expect("bind the issuer's port");
        Self::serve(listener, key).await
    }

    async fn serve(listener: TcpListener, key: &Key) -> Issuer {
        let addr = listener.local_addr().expect("issuer address");
        let state = Arc::new(State {
            keys: Mutex::new(vec![key.clone()]),
            max_age: AtomicU64::new(3600),
            failing: AtomicBool::new(false),
            fetches: watch::Sender::new(0),
        });
        let issuer = Issuer { addr, state: Arc::clone(&state) };
        let served = issuer.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let issuer = served.clone();
                let service = service_fn(move |request| {
                    let issuer = issuer.clone();
                    async move { Ok::<_, Infallible>(issuer.respond(request.uri().path())) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        issuer
    }

    fn respond(&self, path: &str) -> http::Response<Full<Bytes>> {
        let (status, cache, body) = match path {
            "/.well-known/openid-configuration" => (200, None, self.discovery()),
            "/keys" if self.state.failing.load(Ordering::SeqCst) => {
                self.state.fetches.send_modify(|count| *count += 1);
                (500, None, json!({"error": "down"}))
            }
            "/keys" => {
                self.state.fetches.send_modify(|count| *count += 1);
                let keys: Vec<Value> = self.state.keys.lock().expect("the key list").iter().map(Key::jwk).collect();
                let max_age = self.state.max_age.load(Ordering::SeqCst);
                (200, Some(format!("public, max-age={max_age}, must-revalidate, no-transform")), json!({"keys": keys}))
            }
            _ => (404, None, json!({})),
        };
        let mut response = http::Response::builder().status(status).header("content-type", "application/json");
        if let Some(cache) = cache {
            response = response.header("cache-control", cache);
        }
        response.body(Full::new(Bytes::from(body.to_string()))).expect("a response")
    }

    fn discovery(&self) -> Value {
        json!({
            "issuer": self.url(),
            "jwks_uri": self.jwks_url(),
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn jwks_url(&self) -> String {
        format!("http://{}/keys", self.addr)
    }

    /// How many times the key set was asked for, answered or not.
    pub fn fetches(&self) -> u32 {
        *self.state.fetches.borrow()
    }

    /// Waits, at most 10 s, until the key set has been asked for `count` times:
    /// refreshes run in the background, with nothing else to await.
    pub async fn fetched(&self, count: u32) {
        let mut fetches = self.state.fetches.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(10), fetches.wait_for(|&fetches| fetches >= count)).await;
        assert!(waited.is_ok(), "the keys were fetched {} times, not {count}", self.fetches());
    }

    /// Replaces the key set (a rotation; an empty list serves `{"keys": []}`).
    pub fn set_keys(&self, keys: &[&Key]) {
        *self.state.keys.lock().expect("the key list") = keys.iter().map(|key| (*key).clone()).collect();
    }

    pub fn set_max_age(&self, seconds: u64) {
        self.state.max_age.store(seconds, Ordering::SeqCst);
    }

    pub fn set_failing(&self, failing: bool) {
        self.state.failing.store(failing, Ordering::SeqCst);
    }

    /// The claims Pub/Sub's push tokens carry, valid now.
    pub fn claims(&self) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "aud": AUDIENCE,
            "azp": "113774264463038321964",
            "email": SERVICE_ACCOUNT,
            "email_verified": true,
            "exp": now + 3600,
            "iat": now,
            "iss": self.url(),
            "sub": "113774264463038321964",
        })
    }

    /// A valid token signed with `key`.
    pub fn token(&self, key: &Key) -> String {
        key.sign(&rs256_header(&key.kid), &self.claims())
    }

    /// A valid token with some claims replaced.
    pub fn token_with(&self, key: &Key, changes: Value) -> String {
        let mut claims = self.claims();
        if let (Some(claims), Some(changes)) = (claims.as_object_mut(), changes.as_object()) {
            for (name, value) in changes {
                claims.insert(name.clone(), value.clone());
            }
        }
        key.sign(&rs256_header(&key.kid), &claims)
    }

    /// What the handler is configured with to trust this issuer.
    pub fn settings(&self) -> whirligig_handler::OidcSettings {
        whirligig_handler::OidcSettings {
            issuer: self.url(),
            jwks_url: self.jwks_url(),
            audience: AUDIENCE.to_owned(),
            service_account: SERVICE_ACCOUNT.to_owned(),
        }
    }
}
