//! Token signing keys (Ed25519) with rotation, access-token minting and checking,
//! and the JWKS document.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use portcullis_store::identity::KeyRow;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;

/// Claims of an access token (RFC 9068 profile).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    /// The virtual server's canonical resource URI.
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub client_id: String,
    pub scope: String,
    /// The grant (token family) this token belongs to.
    pub sid: String,
}

/// A fresh Ed25519 key in storable form.
pub fn generate_key(now: i64) -> Result<KeyRow, String> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| e.to_string())?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| e.to_string())?;
    let public = pair.public_key().as_ref();
    let kid =
        crate::secrets::hex(&ring::digest::digest(&ring::digest::SHA256, public).as_ref()[..8]);
    Ok(KeyRow {
        kid,
        alg: "EdDSA".into(),
        private_der: STANDARD.encode(pkcs8.as_ref()),
        public_raw: URL_SAFE_NO_PAD.encode(public),
        created_at: now,
        retired_at: None,
    })
}

/// The signing key and every key still accepted.
pub struct KeySet {
    signer: Option<(String, EncodingKey)>,
    verifiers: HashMap<String, DecodingKey>,
    jwks: Value,
}

impl KeySet {
    pub fn from_rows(rows: &[KeyRow]) -> KeySet {
        let mut verifiers = HashMap::new();
        let mut jwk = Vec::new();
        let mut signer = None;
        for r in rows {
            let Ok(public) = URL_SAFE_NO_PAD.decode(&r.public_raw) else {
                tracing::warn!(kid = %r.kid, "unreadable public key skipped");
                continue;
            };
            verifiers.insert(r.kid.clone(), DecodingKey::from_ed_der(&public));
            jwk.push(
                json!({"kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA",
                            "kid": r.kid, "x": r.public_raw}),
            );
            if r.retired_at.is_none() {
                if let Ok(der) = STANDARD.decode(&r.private_der) {
                    signer = Some((r.kid.clone(), EncodingKey::from_ed_der(&der)));
                }
            }
        }
        KeySet {
            signer,
            verifiers,
            jwks: json!({ "keys": jwk }),
        }
    }

    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    pub fn can_sign(&self) -> bool {
        self.signer.is_some()
    }

    pub fn sign(&self, claims: &AccessClaims) -> Result<String, String> {
        let (kid, key) = self.signer.as_ref().ok_or("no signing key")?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.clone());
        header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&header, claims, key).map_err(|e| e.to_string())
    }

    /// Check signature, issuer and expiry; audience is checked by the caller, per
    /// virtual server.
    pub fn verify(&self, token: &str, issuer: &str) -> Result<AccessClaims, VerifyError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(VerifyError::Malformed);
        }
        let kid = header.kid.ok_or(VerifyError::Malformed)?;
        let key = self.verifiers.get(&kid).ok_or(VerifyError::UnknownKey)?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.validate_aud = false;
        v.leeway = 0;
        v.set_issuer(&[issuer]);
        v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        match jsonwebtoken::decode::<AccessClaims>(token, key, &v) {
            Ok(d) => Ok(d.claims),
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Err(VerifyError::Expired),
                jsonwebtoken::errors::ErrorKind::InvalidSignature => Err(VerifyError::BadSignature),
                jsonwebtoken::errors::ErrorKind::InvalidIssuer => Err(VerifyError::WrongIssuer),
                _ => Err(VerifyError::Malformed),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    Malformed,
    UnknownKey,
    BadSignature,
    WrongIssuer,
    Expired,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> AccessClaims {
        AccessClaims {
            iss: "http://gw".into(),
            sub: "u1".into(),
            aud: "http://gw/mcp/a".into(),
            exp,
            iat: 0,
            jti: "j".into(),
            client_id: "c".into(),
            scope: "mcp".into(),
            sid: "f".into(),
        }
    }

    #[test]
    fn sign_verify_rotate() {
        let now = 1_900_000_000;
        let k1 = generate_key(now).unwrap();
        let set1 = KeySet::from_rows(std::slice::from_ref(&k1));
        let t1 = set1.sign(&claims(now + 60)).unwrap();
        assert_eq!(set1.verify(&t1, "http://gw").unwrap().sub, "u1");
        assert_eq!(
            set1.verify(&t1, "http://other").unwrap_err(),
            VerifyError::WrongIssuer
        );
        // After rotation the old key still verifies, the new one signs.
        let mut old = k1.clone();
        old.retired_at = Some(now);
        let k2 = generate_key(now).unwrap();
        let set2 = KeySet::from_rows(&[old, k2.clone()]);
        assert!(set2.verify(&t1, "http://gw").is_ok());
        let t2 = set2.sign(&claims(now + 60)).unwrap();
        assert_eq!(
            set1.verify(&t2, "http://gw").unwrap_err(),
            VerifyError::UnknownKey
        );
        assert_eq!(set2.jwks()["keys"].as_array().unwrap().len(), 2);
        // Expired and tampered tokens fail.
        let t3 = set2.sign(&claims(1000)).unwrap();
        assert_eq!(
            set2.verify(&t3, "http://gw").unwrap_err(),
            VerifyError::Expired
        );
        let mut parts: Vec<&str> = t2.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(now + 9999)).unwrap());
        parts[1] = &forged;
        assert_eq!(
            set2.verify(&parts.join("."), "http://gw").unwrap_err(),
            VerifyError::BadSignature
        );
    }
}
