//! Encryption at rest with the master key (AES-256-GCM): dedicated-database credentials now,
//! signing keys later. Ciphertext format: base64(nonce || ciphertext+tag), prefixed `v1:`.
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SecretBoxError {
    #[error("the master key must be 32 bytes, base64-encoded")]
    BadKey,
    #[error("ciphertext is malformed")]
    Malformed,
    #[error("ciphertext does not decrypt with this master key")]
    WrongKey,
}

#[derive(Clone)]
pub struct MasterKey(Aes256Gcm, [u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub fn from_base64(s: &str) -> Result<Self, SecretBoxError> {
        let bytes = STANDARD.decode(s.trim()).map_err(|_| SecretBoxError::BadKey)?;
        if bytes.len() != 32 {
            return Err(SecretBoxError::BadKey);
        }
        // A separate key for MACs, derived so that it never doubles as the encryption key.
        let mac_key: [u8; 32] =
            Sha256::new().chain_update(b"authio mac key v1\0").chain_update(&bytes).finalize().into();
        Aes256Gcm::new_from_slice(&bytes).map(|k| MasterKey(k, mac_key)).map_err(|_| SecretBoxError::BadKey)
    }

    /// HMAC-SHA256 under a key derived from the master key, for values too short to store as
    /// a plain hash (six-digit codes): the label separates uses.
    pub fn mac(&self, label: &str, data: &[u8]) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.1).unwrap_or_else(|_| unreachable!("any length"));
        m.update(label.as_bytes());
        m.update(&[0]);
        m.update(data);
        m.finalize().into_bytes().into()
    }

    /// A fresh random key, base64-encoded (for `authio dev` and tests).
    pub fn generate_base64() -> String {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        STANDARD.encode(key)
    }

    pub fn encrypt(&self, plaintext: &str) -> Result<String, SecretBoxError> {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct =
            self.0.encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes()).map_err(|_| SecretBoxError::Malformed)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(format!("v1:{}", STANDARD.encode(out)))
    }

    pub fn decrypt(&self, ciphertext: &str) -> Result<String, SecretBoxError> {
        let body = ciphertext.strip_prefix("v1:").ok_or(SecretBoxError::Malformed)?;
        let raw = STANDARD.decode(body).map_err(|_| SecretBoxError::Malformed)?;
        if raw.len() < 12 + 16 {
            return Err(SecretBoxError::Malformed);
        }
        let (nonce, ct) = raw.split_at(12);
        let pt = self.0.decrypt(Nonce::from_slice(nonce), ct).map_err(|_| SecretBoxError::WrongKey)?;
        String::from_utf8(pt).map_err(|_| SecretBoxError::Malformed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_wrong_key() {
        let k1 = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        let k2 = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        let ct = k1.encrypt("postgres://secret@host/db").unwrap();
        assert_ne!(ct, k1.encrypt("postgres://secret@host/db").unwrap(), "nonce must be random");
        assert_eq!(k1.decrypt(&ct).unwrap(), "postgres://secret@host/db");
        assert_eq!(k2.decrypt(&ct), Err(SecretBoxError::WrongKey));
        assert_eq!(k1.decrypt("v1:AAAA"), Err(SecretBoxError::Malformed));
        assert_eq!(k1.decrypt("plain"), Err(SecretBoxError::Malformed));
    }

    #[test]
    fn rejects_short_key() {
        assert_eq!(MasterKey::from_base64("AAAA").unwrap_err(), SecretBoxError::BadKey);
    }
}
