//! Passwords: Argon2id at explicit parameters, hashed off the async runtime with a bound on
//! concurrent hashes (each one holds `m_kib` KiB of memory), and a dummy hash so that a
//! sign-in for an unknown account does the same work as one for a known account.
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::domain::ValidationError;
use crate::CoreError;

/// Argon2id cost. The floor is OWASP's minimum for Argon2id: m = 19456 KiB, t = 2, p = 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasswordParams {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl PasswordParams {
    pub const MINIMUM: PasswordParams = PasswordParams { m_kib: 19456, t: 2, p: 1 };

    fn to_argon2(self) -> Result<Params, CoreError> {
        if self.m_kib < Self::MINIMUM.m_kib || self.t < Self::MINIMUM.t || self.p < Self::MINIMUM.p {
            return Err(CoreError::Config(format!(
                "password hashing parameters below the floor (m={} KiB, t={}, p={})",
                Self::MINIMUM.m_kib,
                Self::MINIMUM.t,
                Self::MINIMUM.p
            )));
        }
        Params::new(self.m_kib, self.t, self.p, None).map_err(|e| CoreError::Config(format!("argon2 parameters: {e}")))
    }
}

impl Default for PasswordParams {
    fn default() -> Self {
        Self::MINIMUM
    }
}

/// A password chosen at sign-up: 8 to 256 characters (NIST SP 800-63B: length, not
/// composition rules).
pub struct NewPassword(String);

impl NewPassword {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let n = raw.chars().count();
        if !(8..=256).contains(&n) {
            return Err(ValidationError::Field("password: use 8 to 256 characters"));
        }
        Ok(NewPassword(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The outcome of checking a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub ok: bool,
    /// The stored hash used other parameters than today's: store a fresh one.
    pub needs_rehash: bool,
}

/// Hashes and verifies passwords. Cheap to clone.
#[derive(Clone)]
pub struct Passwords {
    inner: Arc<Inner>,
}

struct Inner {
    params: Params,
    permits: Semaphore,
    /// How long a request may wait for a hashing slot before it is told to retry.
    max_wait: Duration,
    dummy_hash: String,
}

impl Passwords {
    /// `max_concurrent` bounds the hashes running at once (and so their memory:
    /// `max_concurrent * m_kib`).
    pub fn new(params: PasswordParams, max_concurrent: usize, max_wait: Duration) -> Result<Self, CoreError> {
        let params = params.to_argon2()?;
        let dummy_hash = hash_blocking(&params, "authio dummy password, never a real one")?;
        Ok(Passwords {
            inner: Arc::new(Inner { params, permits: Semaphore::new(max_concurrent.max(1)), max_wait, dummy_hash }),
        })
    }

    pub async fn hash(&self, password: &NewPassword) -> Result<String, CoreError> {
        let _permit = self.permit().await?;
        let params = self.inner.params.clone();
        let password = password.as_str().to_owned();
        tokio::task::spawn_blocking(move || hash_blocking(&params, &password))
            .await
            .map_err(|e| CoreError::Config(format!("hashing task failed: {e}")))?
    }

    /// Check `password` against `stored`. Without a stored hash (unknown account, or one with
    /// no password) the dummy hash is checked instead, so the caller's timing is the same,
    /// and the answer is "no".
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Result<Verified, CoreError> {
        let _permit = self.permit().await?;
        let params = self.inner.params.clone();
        let real = stored.map(str::to_owned);
        let against = real.clone().unwrap_or_else(|| self.inner.dummy_hash.clone());
        let password = password.to_owned();
        let (matched, current_params) = tokio::task::spawn_blocking(move || {
            let parsed = PasswordHash::new(&against).ok();
            let same_params = parsed.as_ref().and_then(|h| Params::try_from(h).ok()).is_some_and(|p| {
                p.m_cost() == params.m_cost() && p.t_cost() == params.t_cost() && p.p_cost() == params.p_cost()
            });
            let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
            let matched = match &parsed {
                Some(h) => argon.verify_password(password.as_bytes(), h).is_ok(),
                // A corrupt stored hash still costs one hash, then fails.
                None => {
                    let _ = argon.hash_password(password.as_bytes());
                    false
                }
            };
            (matched, same_params)
        })
        .await
        .map_err(|e| CoreError::Config(format!("hashing task failed: {e}")))?;
        let ok = matched && real.is_some();
        Ok(Verified { ok, needs_rehash: ok && !current_params })
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, CoreError> {
        match tokio::time::timeout(self.inner.max_wait, self.inner.permits.acquire()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) | Err(_) => Err(CoreError::Busy),
        }
    }
}

fn hash_blocking(params: &Params, password: &str) -> Result<String, CoreError> {
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    argon
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| CoreError::Config(format!("argon2 hashing failed: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn passwords() -> Passwords {
        Passwords::new(PasswordParams::MINIMUM, 2, Duration::from_secs(30)).unwrap()
    }

    #[tokio::test]
    async fn hash_then_verify() {
        let p = passwords();
        let h = p.hash(&NewPassword::parse("correct horse").unwrap()).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert_eq!(p.verify("correct horse", Some(&h)).await.unwrap(), Verified { ok: true, needs_rehash: false });
        assert!(!p.verify("wrong horse", Some(&h)).await.unwrap().ok);
        assert!(!p.verify("correct horse", None).await.unwrap().ok, "no stored hash never matches");
        assert!(!p.verify("correct horse", Some("not a hash")).await.unwrap().ok);
    }

    #[tokio::test]
    async fn other_parameters_ask_for_a_rehash() {
        let stronger = Passwords::new(PasswordParams { m_kib: 19456, t: 3, p: 1 }, 1, Duration::from_secs(30)).unwrap();
        let h = passwords().hash(&NewPassword::parse("correct horse").unwrap()).await.unwrap();
        assert_eq!(
            stronger.verify("correct horse", Some(&h)).await.unwrap(),
            Verified { ok: true, needs_rehash: true }
        );
        assert_eq!(stronger.verify("wrong", Some(&h)).await.unwrap(), Verified { ok: false, needs_rehash: false });
    }

    #[test]
    fn parameters_below_the_floor_are_refused() {
        let weak = PasswordParams { m_kib: 4096, t: 1, p: 1 };
        assert!(matches!(Passwords::new(weak, 1, Duration::from_secs(1)), Err(CoreError::Config(_))));
    }

    #[test]
    fn password_length_rules() {
        assert!(NewPassword::parse("short").is_err());
        assert!(NewPassword::parse(&"x".repeat(257)).is_err());
        assert!(NewPassword::parse("eight ch").is_ok());
    }
}
