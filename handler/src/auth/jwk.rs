//! The issuer's keys as openidconnect sees them, with RS256 signatures checked
//! by ring (already linked for rustls, and about ten times faster here than
//! the `rsa` crate openidconnect uses); all else is its `CoreJsonWebKey`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{CoreJsonWebKey, CoreJsonWebKeyType, CoreJsonWebKeyUse, CoreJwsSigningAlgorithm};
use openidconnect::{JsonWebKey, JsonWebKeyAlgorithm, JsonWebKeyId, SignatureVerificationError};
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One key of a JSON Web Key Set: its metadata, and its RSA modulus and
/// exponent decoded once, when the set is fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IssuerKey {
    #[serde(flatten)]
    core: CoreJsonWebKey,
    #[serde(default, with = "base64url")]
    n: Vec<u8>,
    #[serde(default, with = "base64url")]
    e: Vec<u8>,
}

impl IssuerKey {
    /// An RSA key that may sign: what a key set must hold at least one of.
    pub(crate) fn can_verify_rs256(&self) -> bool {
        *self.key_type() == CoreJsonWebKeyType::RSA
            && !self.n.is_empty()
            && !self.e.is_empty()
            && self.key_use().is_none_or(|key_use| *key_use == CoreJsonWebKeyUse::Signature)
    }
}

impl JsonWebKey for IssuerKey {
    type KeyUse = CoreJsonWebKeyUse;
    type SigningAlgorithm = CoreJwsSigningAlgorithm;

    fn key_id(&self) -> Option<&JsonWebKeyId> {
        self.core.key_id()
    }

    fn key_type(&self) -> &CoreJsonWebKeyType {
        self.core.key_type()
    }

    fn key_use(&self) -> Option<&CoreJsonWebKeyUse> {
        self.core.key_use()
    }

    fn signing_alg(&self) -> JsonWebKeyAlgorithm<&CoreJwsSigningAlgorithm> {
        self.core.signing_alg()
    }

    fn new_symmetric(key: Vec<u8>) -> Self {
        Self { core: CoreJsonWebKey::new_symmetric(key), n: Vec::new(), e: Vec::new() }
    }

    fn verify_signature(
        &self,
        signature_alg: &CoreJwsSigningAlgorithm,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureVerificationError> {
        if *signature_alg != CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256 {
            return Err(SignatureVerificationError::UnsupportedAlg("only RS256 is accepted".into()));
        }
        if !self.can_verify_rs256() {
            return Err(SignatureVerificationError::InvalidKey("not an RSA signature key".into()));
        }
        RsaPublicKeyComponents { n: &self.n, e: &self.e }
            .verify(&RSA_PKCS1_2048_8192_SHA256, message, signature)
            .map_err(|_| SignatureVerificationError::CryptoError("the signature does not match".into()))
    }

    fn hash_bytes(&self, bytes: &[u8], alg: &CoreJwsSigningAlgorithm) -> Result<Vec<u8>, String> {
        self.core.hash_bytes(bytes, alg)
    }
}

mod base64url {
    use super::*;

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&URL_SAFE_NO_PAD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(json: &str) -> IssuerKey {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn only_rsa_signature_keys_verify() {
        let rsa = key(r#"{"kty": "RSA", "kid": "a", "use": "sig", "alg": "RS256", "n": "AQAB", "e": "AQAB"}"#);
        assert!(rsa.can_verify_rs256());
        let unspecified_use = key(r#"{"kty": "RSA", "kid": "b", "n": "AQAB", "e": "AQAB"}"#);
        assert!(unspecified_use.can_verify_rs256());
        let encryption = key(r#"{"kty": "RSA", "kid": "c", "use": "enc", "n": "AQAB", "e": "AQAB"}"#);
        assert!(!encryption.can_verify_rs256());
        let no_modulus = key(r#"{"kty": "RSA", "kid": "d", "e": "AQAB"}"#);
        assert!(!no_modulus.can_verify_rs256());
        let symmetric = key(r#"{"kty": "oct", "kid": "e", "k": "c2VjcmV0"}"#);
        assert!(!symmetric.can_verify_rs256());
        let error = encryption.verify_signature(&CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256, b"m", b"s");
        assert!(matches!(error, Err(SignatureVerificationError::InvalidKey(_))));
        let hs256 = rsa.verify_signature(&CoreJwsSigningAlgorithm::HmacSha256, b"m", b"s");
        assert!(matches!(hs256, Err(SignatureVerificationError::UnsupportedAlg(_))));
    }
}
