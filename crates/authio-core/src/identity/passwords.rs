//! Passwords: Argon2id at explicit parameters, hashed off the async runtime on a fixed pool
//! of threads (each holds `m_kib` KiB of memory, so memory cannot run away), and a dummy hash
//! so that a sign-in for an unknown account does the same work as one for a known account.
use std::sync::{Arc, Mutex};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};

use crate::types::ValidationError;
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

/// Hashes and verifies passwords on a fixed pool of hashing threads, each with its own
/// reusable Argon2 memory: memory is bounded by `threads * m_kib` and no hash pays for fresh
/// pages. Requests queue in a bounded channel; when it is full the answer is `Busy`.
#[derive(Clone)]
pub struct Passwords {
    inner: Arc<Inner>,
}

struct Inner {
    params: Params,
    jobs: mpsc::Sender<Job>,
    dummy_hash: String,
}

enum Work {
    Hash(String),
    Verify { password: String, against: String },
}

enum Done {
    Hashed(Result<String, String>),
    Verified { matched: bool, same_params: bool },
}

struct Job {
    work: Work,
    reply: oneshot::Sender<Done>,
}

/// Jobs that may wait per hashing thread before callers are told to retry.
const QUEUE_PER_THREAD: usize = 32;

impl Passwords {
    /// `threads` hashing threads (and so at most `threads * m_kib` KiB of hashing memory).
    pub fn new(params: PasswordParams, threads: usize) -> Result<Self, CoreError> {
        let params = params.to_argon2()?;
        let threads = threads.max(1);
        let (jobs, rx) = mpsc::channel::<Job>(threads * QUEUE_PER_THREAD);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let params = params.clone();
            std::thread::Builder::new()
                .name(format!("authio-hash-{i}"))
                .spawn(move || hashing_thread(&rx, &params))
                .map_err(|e| CoreError::Internal(format!("starting a hashing thread: {e}")))?;
        }
        let mut memory = Vec::new();
        let dummy_hash = hash_with(&mut memory, &params, "authio dummy password, never a real one")
            .map_err(|e| CoreError::Internal(format!("argon2: {e}")))?;
        Ok(Passwords { inner: Arc::new(Inner { params, jobs, dummy_hash }) })
    }

    async fn run(&self, work: Work) -> Result<Done, CoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner.jobs.try_send(Job { work, reply }).map_err(|_| CoreError::Busy)?;
        answer.await.map_err(|_| CoreError::Internal("a hashing thread stopped".into()))
    }

    pub async fn hash(&self, password: &NewPassword) -> Result<String, CoreError> {
        match self.run(Work::Hash(password.as_str().to_owned())).await? {
            Done::Hashed(r) => r.map_err(|e| CoreError::Internal(format!("argon2 hashing failed: {e}"))),
            Done::Verified { .. } => Err(CoreError::Internal("hashing thread answered the wrong job".into())),
        }
    }

    /// Check `password` against `stored`. Without a stored hash (unknown account, or one with
    /// no password) the dummy hash is checked instead, so the caller's timing is the same,
    /// and the answer is "no".
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Result<Verified, CoreError> {
        let against = stored.unwrap_or(&self.inner.dummy_hash).to_owned();
        let done = self.run(Work::Verify { password: password.to_owned(), against }).await?;
        let Done::Verified { matched, same_params } = done else {
            return Err(CoreError::Internal("hashing thread answered the wrong job".into()));
        };
        let ok = matched && stored.is_some();
        Ok(Verified { ok, needs_rehash: ok && !same_params })
    }

    /// The parameters new hashes are made with.
    pub fn params(&self) -> PasswordParams {
        let p = &self.inner.params;
        PasswordParams { m_kib: p.m_cost(), t: p.t_cost(), p: p.p_cost() }
    }
}

fn hashing_thread(rx: &Mutex<mpsc::Receiver<Job>>, params: &Params) {
    // This thread's Argon2 memory, kept between jobs.
    let mut memory: Vec<Block> = Vec::new();
    loop {
        let job = match rx.lock() {
            Ok(mut r) => r.blocking_recv(),
            Err(_) => return,
        };
        let Some(job) = job else { return };
        let done = match job.work {
            Work::Hash(password) => Done::Hashed(hash_with(&mut memory, params, &password).map_err(|e| e.to_string())),
            Work::Verify { password, against } => {
                let (matched, same_params) = verify_with(&mut memory, params, &password, &against);
                Done::Verified { matched, same_params }
            }
        };
        let _ = job.reply.send(done);
    }
}

fn compute(
    memory: &mut Vec<Block>,
    params: &Params,
    version: Version,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    let need = params.block_count();
    if memory.len() < need {
        memory.resize(need, Block::default());
    }
    let argon = Argon2::new(Algorithm::Argon2id, version, params.clone());
    argon.hash_password_into_with_memory(password, salt, out, &mut memory[..need])
}

fn hash_with(memory: &mut Vec<Block>, params: &Params, password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = crate::crypto::opaque::random_bytes::<16>();
    let mut out = [0u8; 32];
    compute(memory, params, Version::V0x13, password.as_bytes(), &salt, &mut out)?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params)?,
        salt: Some(Salt::new(&salt)?),
        hash: Some(Output::new(&out)?),
    };
    Ok(hash.to_string())
}

/// (the password matches, the stored hash used today's parameters). A stored hash that does
/// not parse still costs one hash, then fails.
fn verify_with(memory: &mut Vec<Block>, params: &Params, password: &str, stored: &str) -> (bool, bool) {
    let parsed = PasswordHash::new(stored).ok().filter(|h| h.algorithm == Algorithm::Argon2id.ident());
    let stored_params = parsed.as_ref().and_then(|h| Params::try_from(h).ok());
    let same_params = stored_params.as_ref().is_some_and(|p| {
        p.m_cost() == params.m_cost() && p.t_cost() == params.t_cost() && p.p_cost() == params.p_cost()
    });
    let parts = parsed.as_ref().and_then(|h| {
        let version = h.version.map(Version::try_from).transpose().ok()?.unwrap_or(Version::V0x13);
        Some((version, h.salt.as_ref()?, h.hash.as_ref()?, stored_params.clone()?))
    });
    match parts {
        Some((version, salt, expected, p)) => {
            let mut out = vec![0u8; expected.len()];
            let computed = compute(memory, &p, version, password.as_bytes(), salt, &mut out).is_ok();
            (computed && bool::from(out.as_slice().ct_eq(expected.as_bytes())), same_params)
        }
        None => {
            let mut out = [0u8; 32];
            let _ = compute(memory, params, Version::V0x13, password.as_bytes(), b"authio-no-hash!!", &mut out);
            (false, false)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn passwords() -> Passwords {
        Passwords::new(PasswordParams::MINIMUM, 2).unwrap()
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
        let stronger = Passwords::new(PasswordParams { m_kib: 19456, t: 3, p: 1 }, 1).unwrap();
        let h = passwords().hash(&NewPassword::parse("correct horse").unwrap()).await.unwrap();
        assert_eq!(
            stronger.verify("correct horse", Some(&h)).await.unwrap(),
            Verified { ok: true, needs_rehash: true }
        );
        assert_eq!(stronger.verify("wrong", Some(&h)).await.unwrap(), Verified { ok: false, needs_rehash: false });
    }

    #[tokio::test]
    async fn hashes_made_by_the_reference_hasher_verify() {
        use argon2::password_hash::PasswordHasher;
        let reference = Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(19456, 2, 1, None).unwrap())
            .hash_password(b"correct horse")
            .unwrap()
            .to_string();
        let p = passwords();
        assert_eq!(
            p.verify("correct horse", Some(&reference)).await.unwrap(),
            Verified { ok: true, needs_rehash: false }
        );
        assert!(!p.verify("correct horsf", Some(&reference)).await.unwrap().ok);
    }

    #[test]
    fn parameters_below_the_floor_are_refused() {
        let weak = PasswordParams { m_kib: 4096, t: 1, p: 1 };
        assert!(matches!(Passwords::new(weak, 1), Err(CoreError::Config(_))));
    }

    #[test]
    fn password_length_rules() {
        assert!(NewPassword::parse("short").is_err());
        assert!(NewPassword::parse(&"x".repeat(257)).is_err());
        assert!(NewPassword::parse("eight ch").is_ok());
    }
}
