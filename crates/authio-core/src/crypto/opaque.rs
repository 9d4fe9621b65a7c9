//! Opaque secrets: client secrets, API keys, refresh tokens and one-time tokens. Generated
//! from the OS's random source (256-bit secrets), stored only as SHA-256 hashes (the secrets
//! are random and high-entropy, so a slow hash adds nothing), compared in constant time.
//!
//! What is hashed is part of each format and must not change (stored hashes depend on it):
//! - whole-string tokens (`new_token`): one-time links, codes' sign-in tokens, OpenID client
//!   secrets (`ocs_...`), M2M client secrets (`cs_...`): the SHA-256 of the whole string;
//! - tokens with a public part (`sk_<key id>_<secret>`, `rt_<project>_<secret>`): the SHA-256
//!   of the secret part only, found by `parse` of their own module.
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// `N` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut raw = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    raw
}

/// A 256-bit secret as 43 base64url characters.
pub fn random_secret() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// `N` random bytes as lowercase hex (public ids, verification tokens).
pub fn random_hex<const N: usize>() -> String {
    random_bytes::<N>().iter().map(|b| format!("{b:02x}")).collect()
}

/// The stored form of a secret (or of the part of a token that is secret).
pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A fresh random token with a prefix, and the hash of the whole string.
pub fn new_token(prefix: &str) -> (String, [u8; 32]) {
    let token = format!("{prefix}{}", random_secret());
    let h = hash(&token);
    (token, h)
}

/// Whether `secret` hashes to `stored`, in constant time; with nothing stored (an unknown id)
/// a hash is still computed and compared, so both paths do the same work.
pub fn matches(stored: Option<&[u8]>, secret: &str) -> bool {
    let stored: [u8; 32] = stored.and_then(|h| <[u8; 32]>::try_from(h).ok()).unwrap_or([0u8; 32]);
    let same: bool = hash(secret).ct_eq(&stored).into();
    same && stored != [0u8; 32]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hashed_whole() {
        let (a, ha) = new_token("ml_");
        let (b, _) = new_token("ml_");
        assert_ne!(a, b);
        assert!(a.starts_with("ml_") && a.len() == 3 + 43);
        assert_eq!(ha, hash(&a));
    }

    #[test]
    fn matching_needs_the_stored_hash() {
        let s = random_secret();
        let h = hash(&s);
        assert!(matches(Some(&h), &s));
        assert!(!matches(Some(&h), "other"));
        assert!(!matches(None, &s));
        assert!(!matches(Some(&h[..16]), &s));
        assert_eq!(random_hex::<8>().len(), 16);
    }
}
