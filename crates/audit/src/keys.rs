//! The checkpoint signing key: Ed25519, PKCS#8 in a file outside the audit
//! database (mode 0600), with its public half beside it (`.pub`, hex) for
//! verifiers who should not hold the private key.

use crate::AuditError;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub struct SigningKey {
    pair: Ed25519KeyPair,
    /// Seed material for the argument-digest key.
    pkcs8: Vec<u8>,
    pub key_id: String,
}

impl SigningKey {
    /// Load the key at `path`, creating it (and `<path>.pub`) on first use.
    pub fn load_or_create(path: &Path) -> Result<SigningKey, AuditError> {
        let err = |reason: String| AuditError::Key {
            path: path.display().to_string(),
            reason,
        };
        let pkcs8 = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let rng = ring::rand::SystemRandom::new();
                let doc = Ed25519KeyPair::generate_pkcs8(&rng)
                    .map_err(|_| err("could not generate a key".into()))?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
                }
                write_private(path, doc.as_ref()).map_err(|e| err(e.to_string()))?;
                doc.as_ref().to_vec()
            }
            Err(e) => return Err(err(e.to_string())),
        };
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|e| err(format!("not an Ed25519 PKCS#8 key: {e}")))?;
        let public = crate::hex(pair.public_key().as_ref());
        let pub_path = public_path(path);
        if std::fs::read_to_string(&pub_path)
            .ok()
            .map(|s| s.trim().to_owned())
            != Some(public.clone())
        {
            std::fs::write(&pub_path, format!("{public}\n")).map_err(|e| err(e.to_string()))?;
        }
        Ok(SigningKey {
            key_id: key_id(pair.public_key().as_ref()),
            pair,
            pkcs8,
        })
    }

    pub fn sign(&self, message: &[u8]) -> String {
        crate::hex(self.pair.sign(message).as_ref())
    }

    pub fn public_hex(&self) -> String {
        crate::hex(self.pair.public_key().as_ref())
    }

    /// The key for argument digests, derived so there is one secret to keep.
    pub fn digest_key(&self) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(b"portcullis-audit-argument-digest\n");
        h.update(&self.pkcs8);
        h.finalize().to_vec()
    }
}

/// `<key>.pub`.
pub fn public_path(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// A verifier's trusted public key.
pub struct PublicKey {
    bytes: Vec<u8>,
    pub key_id: String,
}

impl PublicKey {
    pub fn from_hex(text: &str) -> Result<PublicKey, AuditError> {
        let t = text.trim();
        let bytes = unhex(t)
            .filter(|b| b.len() == 32)
            .ok_or_else(|| AuditError::Invalid("a public key is 64 hex digits (Ed25519)".into()))?;
        Ok(PublicKey {
            key_id: key_id(&bytes),
            bytes,
        })
    }

    pub fn verify(&self, message: &[u8], signature_hex: &str) -> bool {
        let Some(sig) = unhex(signature_hex) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, &self.bytes)
            .verify(message, &sig)
            .is_ok()
    }
}

/// What a checkpoint signs.
pub fn checkpoint_message(seq: i64, hash: &str, time_us: i64) -> Vec<u8> {
    format!("portcullis-audit-checkpoint/1\n{seq}\n{hash}\n{time_us}\n").into_bytes()
}

fn key_id(public: &[u8]) -> String {
    crate::hex(&Sha256::digest(public)[..8])
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}
