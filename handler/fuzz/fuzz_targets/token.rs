//! A push token, verified as the endpoint verifies it, against a fixed key
//! set served from loopback by this process (no network): OIDC mode
//! (signature, then claims) and Cloud Run IAM mode (claims of a token whose
//! signature Cloud Run removed). Input: the first byte picks the form; raw
//! text as the whole Authorization value, or header, payload and signature
//! (split at 0xff), each base64url-encoded and joined with dots, so the
//! claims checks see arbitrary JSON. `$NOW` in that payload is replaced by
//! the current time in seconds, so a seed gets past `iat` (checked against
//! the system clock) whenever it runs.
#![no_main]

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use whirligig_handler::{Clock, OidcSettings, PushAuth};

const ISSUER: &str = "https://accounts.google.com";
const AUDIENCE: &str = "https://whirligig.example.run.app";
const ACCOUNT: &str = "tasks@p.iam.gserviceaccount.com";
/// A real 2048-bit RSA public key (its private half was thrown away).
const JWKS: &str = r#"{"keys":[{"kty":"RSA","alg":"RS256","use":"sig","kid":"fuzz","e":"AQAB","n":"wbtAgiUh0RGi0EQ4eow95eRyS25jNkOBGv1IdSx7Hag4oFjYowiKFHPZ4gGd7X6pfK3JOaDNuYm2tXqtiS4trCAS8lc_mF1ZeqNeDVBuOSqu9fwdGqwxpgIGqSSt40gdXwmdBNt_SWiVbvr_JmnFgEBHlkSzE_RyWd4R64c_M1SerTi4WCMgl4avcDTn8Bssz97oV4BcqNdD4zp6pKbWGzg5Vt48snr0KEb1pDre9EISLeIyvcwCp7FTqbCXkPML8gXJPuIAdQgVPpWuXQiL8VOUkECsSw8gtyT-yJ2Jc7HVOMx8BhoeHe2QujbhEp3CX-9zI8-8e_mjaRed8ZNcpQ"}]}"#;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    oidc: PushAuth,
    iam: PushAuth,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let url = format!("http://{}/certs", listener.local_addr().expect("bound"));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut stream = stream;
                let mut buffer = [0_u8; 4096];
                let _ = stream.read(&mut buffer);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncache-control: public, max-age=86400\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{JWKS}",
                    JWKS.len()
                );
            }
        });
        let settings = OidcSettings {
            issuer: ISSUER.to_owned(),
            jwks_url: url,
            audience: AUDIENCE.to_owned(),
            service_account: ACCOUNT.to_owned(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        let oidc = PushAuth::oidc(&settings, Clock::system()).expect("oidc settings");
        let iam = PushAuth::cloud_run_iam(&settings, Clock::system()).expect("iam settings");
        // The first fetch runs in the background, as at serve: start it and
        // let it land, or every verify waits for keys and is refused.
        runtime.block_on(async {
            oidc.start();
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        });
        Fixture { runtime, oidc, iam }
    })
}

fn encoded(data: &[u8]) -> String {
    let mut parts = data.splitn(3, |&b| b == 0xff);
    let (header, payload, signature) = (parts.next().unwrap_or_default(), parts.next(), parts.next());
    let payload = now_in(payload.unwrap_or_default());
    let mut token = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    token.push('.');
    match signature {
        Some(b"S") => token.push_str("SIGNATURE_REMOVED_BY_GOOGLE"),
        Some(signature) => token.push_str(&URL_SAFE_NO_PAD.encode(signature)),
        None => {}
    }
    token
}

/// `payload` with each `$NOW` replaced by the current Unix time.
fn now_in(payload: &[u8]) -> Vec<u8> {
    const PLACEHOLDER: &[u8] = b"$NOW";
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs());
    let mut out = Vec::with_capacity(payload.len());
    let mut rest = payload;
    while let Some(at) = rest.windows(PLACEHOLDER.len()).position(|window| window == PLACEHOLDER) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(now.to_string().as_bytes());
        rest = &rest[at + PLACEHOLDER.len()..];
    }
    out.extend_from_slice(rest);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&form, rest)) = data.split_first() else { return };
    let value = match form % 3 {
        0 => rest.to_vec(),
        1 => format!("Bearer {}", String::from_utf8_lossy(rest)).into_bytes(),
        _ => format!("Bearer {}", encoded(rest)).into_bytes(),
    };
    let Ok(value) = HeaderValue::from_bytes(&value) else { return };
    let mut headers = HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    let fixture = fixture();
    let oidc = fixture.runtime.block_on(whirligig_handler::bench::verify(&fixture.oidc, &headers));
    let iam = fixture.runtime.block_on(whirligig_handler::bench::verify(&fixture.iam, &headers));
    // Nobody holds the private key, and no input is a valid stripped token
    // (exp/iat are checked against the system clock, email and aud fixed):
    // a pass would be a forgery unless the fuzzer wrote a valid stripped token.
    assert!(!oidc, "a token passed signature verification against a key nobody holds");
    let _ = iam;
});
