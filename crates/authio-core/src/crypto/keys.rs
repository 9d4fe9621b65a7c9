//! Signing keys: per project, on the shared database for every tenant (so a token minted
//! before a move verifies after it), private halves encrypted with the master key.
//!
//! A project has one `current` key (signs), one `next` key (published, signs after the next
//! rotation, so every verifier has it before it signs anything) and `retired` keys still
//! published until the tokens they signed have expired. Each node keeps a project's key set in
//! a cache for `ttl`; a rotation is seen by every node within that time, and the retired key
//! stays published well past it.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use authio_db::preresolve::{self, ProjectProfile, SigningKeyRecord};
use authio_db::{MasterKey, Param, Router, Scope, Type};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::DecodingKey;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::cache::NodeCache;
use crate::{Clock, CoreError};

/// A JWS algorithm Authio signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alg {
    EdDSA,
    ES256,
    RS256,
}

impl Alg {
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::EdDSA => "EdDSA",
            Alg::ES256 => "ES256",
            Alg::RS256 => "RS256",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "EdDSA" => Some(Alg::EdDSA),
            "ES256" => Some(Alg::ES256),
            "RS256" => Some(Alg::RS256),
            _ => None,
        }
    }

    pub(crate) fn jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        match self {
            Alg::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            Alg::ES256 => jsonwebtoken::Algorithm::ES256,
            Alg::RS256 => jsonwebtoken::Algorithm::RS256,
        }
    }
}

/// Key material just generated: the PKCS#8 private key is encrypted before it is stored.
pub struct GeneratedKey {
    pub kid: String,
    pub alg: Alg,
    pub public_jwk: serde_json::Value,
    pub pkcs8: Vec<u8>,
}

fn crypto_err(what: &str) -> CoreError {
    CoreError::Internal(format!("signing key: {what}"))
}

pub fn generate(alg: Alg) -> Result<GeneratedKey, CoreError> {
    let rng = SystemRandom::new();
    let kid = URL_SAFE_NO_PAD.encode(crate::crypto::opaque::random_bytes::<12>());
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let (pkcs8, public_jwk) = match alg {
        Alg::EdDSA => {
            let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| crypto_err("Ed25519 generation"))?;
            let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| crypto_err("Ed25519 parse"))?;
            let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())});
            (doc.as_ref().to_vec(), jwk)
        }
        Alg::ES256 => {
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| crypto_err("P-256 generation"))?;
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref())
                .map_err(|_| crypto_err("P-256 parse"))?;
            // Uncompressed point: 0x04 || x || y.
            let point = pair.public_key().as_ref();
            let (x, y) = point.get(1..33).zip(point.get(33..65)).ok_or_else(|| crypto_err("P-256 point"))?;
            (doc.as_ref().to_vec(), json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y)}))
        }
        Alg::RS256 => {
            let pair =
                RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(|_| crypto_err("RSA generation"))?;
            let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).map_err(|_| crypto_err("RSA export"))?;
            let public = pair.public_key();
            let n = public.modulus();
            let e = public.exponent();
            let jwk = json!({"kty": "RSA", "n": b64(n.big_endian_without_leading_zero()),
                             "e": b64(e.big_endian_without_leading_zero())});
            (der.as_ref().to_vec(), jwk)
        }
    };
    let mut public_jwk = public_jwk;
    if let Some(obj) = public_jwk.as_object_mut() {
        obj.insert("kid".into(), json!(kid));
        obj.insert("alg".into(), json!(alg.as_str()));
        obj.insert("use".into(), json!("sig"));
    }
    Ok(GeneratedKey { kid, alg, public_jwk, pkcs8 })
}

/// The insert shared by the API path (scoped, as `authio_app`) and the operator path
/// (`authio_owner`): `$1` tenant, `$2` project, `$3` kid, `$4` alg, `$5` JWK, `$6` encrypted
/// key, `$7` state, `$8` now.
pub const INSERT_KEY_SQL: &str = "INSERT INTO signing_keys
      (tenant_id, project_id, kid, alg, public_jwk, private_key_enc, state, created_at, activated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, CASE WHEN $7 = 'current' THEN $8 END)";

/// A generated key ready to insert: its parameters, owned.
pub struct KeyRow {
    tenant: Uuid,
    project: Uuid,
    kid: String,
    alg: String,
    jwk: serde_json::Value,
    enc: String,
    state: String,
    now: DateTime<Utc>,
}

impl KeyRow {
    pub fn new(
        master_key: &MasterKey,
        scope_tenant: Uuid,
        project: Uuid,
        alg: Alg,
        state: &str,
        now: DateTime<Utc>,
    ) -> Result<Self, CoreError> {
        let key = generate(alg)?;
        let enc = master_key
            .encrypt(&URL_SAFE_NO_PAD.encode(&key.pkcs8))
            .map_err(|e| CoreError::Internal(format!("encrypting a signing key: {e}")))?;
        Ok(KeyRow {
            tenant: scope_tenant,
            project,
            kid: key.kid,
            alg: alg.as_str().to_owned(),
            jwk: key.public_jwk,
            enc,
            state: state.to_owned(),
            now,
        })
    }

    pub fn params(&self) -> [Param<'_>; 8] {
        [
            (&self.tenant, Type::UUID),
            (&self.project, Type::UUID),
            (&self.kid, Type::TEXT),
            (&self.alg, Type::TEXT),
            (&self.jwk, Type::JSONB),
            (&self.enc, Type::TEXT),
            (&self.state, Type::TEXT),
            (&self.now, Type::TIMESTAMPTZ),
        ]
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }
}

enum Signer {
    Ed(Ed25519KeyPair),
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

impl Signer {
    fn from_pkcs8(alg: Alg, der: &[u8]) -> Result<Self, CoreError> {
        Ok(match alg {
            Alg::EdDSA => Signer::Ed(Ed25519KeyPair::from_pkcs8(der).map_err(|_| crypto_err("Ed25519 key"))?),
            Alg::ES256 => Signer::Ec(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der).map_err(|_| crypto_err("P-256 key"))?,
            ),
            Alg::RS256 => Signer::Rsa(RsaKeyPair::from_pkcs8(der).map_err(|_| crypto_err("RSA key"))?),
        })
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, CoreError> {
        match self {
            Signer::Ed(k) => Ok(k.sign(msg).as_ref().to_vec()),
            Signer::Ec(k) => {
                k.sign(&SystemRandom::new(), msg).map(|s| s.as_ref().to_vec()).map_err(|_| crypto_err("ES256 sign"))
            }
            Signer::Rsa(k) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg, &mut sig).map_err(|_| crypto_err("RS256 sign"))?;
                Ok(sig)
            }
        }
    }
}

/// The key that signs, with its JWS header already encoded.
struct ActiveKey {
    /// `typ: at+jwt` (RFC 9068): access tokens.
    header_b64: String,
    /// `typ: JWT`: ID tokens, which must never pass for access tokens nor the reverse.
    id_header_b64: String,
    alg: Alg,
    signer: Signer,
}

pub(crate) struct Verifier {
    pub alg: Alg,
    pub key: DecodingKey,
}

/// A project's keys as this node knows them.
pub struct KeySet {
    pub project_id: Uuid,
    active: Option<ActiveKey>,
    /// The RS256 key beside a current key of another algorithm: ID tokens of clients that
    /// registered `id_token_signed_response_alg: RS256`.
    companion: Option<ActiveKey>,
    /// The algorithms of the published keys, in a fixed order.
    algs: Vec<Alg>,
    verifiers: HashMap<String, Verifier>,
    /// The JWKS document, serialised once.
    pub jwks: bytes::Bytes,
    pub etag: String,
}

impl KeySet {
    fn build(project_id: Uuid, master_key: &MasterKey, records: &[SigningKeyRecord]) -> Result<Self, CoreError> {
        let mut active = None;
        let mut companion = None;
        let mut algs = Vec::new();
        let mut verifiers = HashMap::new();
        let mut published = Vec::new();
        // Current first, then next, then the companion and retired ones: verifiers that take
        // the first key find it.
        let rank = |s: &str| match s {
            "current" => 0,
            "next" => 1,
            "companion" => 2,
            _ => 3,
        };
        let mut sorted: Vec<&SigningKeyRecord> = records.iter().collect();
        sorted.sort_by_key(|r| rank(&r.state));
        for r in sorted {
            let Some(alg) = Alg::parse(&r.alg) else { continue };
            let key = decoding_key(alg, &r.public_jwk)?;
            verifiers.insert(r.kid.clone(), Verifier { alg, key });
            published.push(r.public_jwk.clone());
            if !algs.contains(&alg) {
                algs.push(alg);
            }
            let signer = || -> Result<ActiveKey, CoreError> {
                let b64 = master_key
                    .decrypt(&r.private_key_enc)
                    .map_err(|e| CoreError::Internal(format!("decrypting signing key {}: {e}", r.kid)))?;
                let der = URL_SAFE_NO_PAD.decode(b64).map_err(|_| crypto_err("stored key encoding"))?;
                let header = json!({"alg": alg.as_str(), "kid": r.kid, "typ": "at+jwt"});
                let id_header = json!({"alg": alg.as_str(), "kid": r.kid, "typ": "JWT"});
                Ok(ActiveKey {
                    header_b64: URL_SAFE_NO_PAD.encode(header.to_string()),
                    id_header_b64: URL_SAFE_NO_PAD.encode(id_header.to_string()),
                    alg,
                    signer: Signer::from_pkcs8(alg, &der)?,
                })
            };
            match r.state.as_str() {
                "current" => active = Some(signer()?),
                "companion" if alg == Alg::RS256 => companion = Some(signer()?),
                _ => {}
            }
        }
        algs.sort_by_key(|a| a.as_str());
        let jwks = json!({ "keys": published }).to_string();
        let etag = format!("\"{}\"", &hex(&Sha256::digest(jwks.as_bytes()))[..32]);
        Ok(KeySet { project_id, active, companion, algs, verifiers, jwks: jwks.into(), etag })
    }

    /// The algorithms of the keys in the JWKS: what a relying party may be sent, and so what
    /// discovery advertises. A key is published before it signs (the next key waits a
    /// rotation) and after (retired keys stay while their tokens live), so an allow-list
    /// taken from here accepts every token in circulation.
    pub fn published_algs(&self) -> &[Alg] {
        &self.algs
    }

    /// Whether an ID token can be signed in `alg` now.
    pub fn can_sign_id_token(&self, alg: Alg) -> bool {
        self.active.as_ref().is_some_and(|a| a.alg == alg) || (alg == Alg::RS256 && self.companion.is_some())
    }

    /// Sign an ID token in the client's registered algorithm (`None`: the current key's).
    pub fn sign_id_token_as(&self, claims: &impl serde::Serialize, alg: Option<Alg>) -> Result<String, CoreError> {
        match (alg, &self.active) {
            (Some(want), Some(a)) if a.alg != want => {
                let key = self.companion.as_ref().filter(|c| c.alg == want).ok_or(CoreError::Internal(format!(
                    "no published {} key to sign this client's ID token",
                    want.as_str()
                )))?;
                Self::sign_by(key, claims, true)
            }
            _ => self.sign_with(claims, true),
        }
    }

    /// Sign `claims` with the current key: a compact JWS typed `at+jwt` (an access token).
    pub fn sign(&self, claims: &impl serde::Serialize) -> Result<String, CoreError> {
        self.sign_with(claims, false)
    }

    /// Sign an ID token (typed `JWT`).
    pub fn sign_id_token(&self, claims: &impl serde::Serialize) -> Result<String, CoreError> {
        self.sign_with(claims, true)
    }

    /// The algorithm the current key signs with.
    pub fn alg(&self) -> Option<Alg> {
        self.active.as_ref().map(|a| a.alg)
    }

    fn sign_with(&self, claims: &impl serde::Serialize, id_token: bool) -> Result<String, CoreError> {
        let active = self.active.as_ref().ok_or(CoreError::Internal("project has no current signing key".into()))?;
        Self::sign_by(active, claims, id_token)
    }

    fn sign_by(active: &ActiveKey, claims: &impl serde::Serialize, id_token: bool) -> Result<String, CoreError> {
        let payload = serde_json::to_vec(claims).map_err(|e| CoreError::Internal(format!("claims: {e}")))?;
        let header = if id_token { &active.id_header_b64 } else { &active.header_b64 };
        let mut out = String::with_capacity(header.len() + payload.len() * 4 / 3 + 120);
        out.push_str(header);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut out);
        let sig = active.signer.sign(out.as_bytes())?;
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(&sig, &mut out);
        Ok(out)
    }

    pub(crate) fn verifier(&self, kid: &str) -> Option<&Verifier> {
        self.verifiers.get(kid)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decoding_key(alg: Alg, jwk: &serde_json::Value) -> Result<DecodingKey, CoreError> {
    let field = |name: &str| jwk.get(name).and_then(|v| v.as_str()).ok_or_else(|| crypto_err("published JWK"));
    let key = match alg {
        Alg::EdDSA => DecodingKey::from_ed_components(field("x")?),
        Alg::ES256 => DecodingKey::from_ec_components(field("x")?, field("y")?),
        Alg::RS256 => DecodingKey::from_rsa_components(field("n")?, field("e")?),
    };
    key.map_err(|_| crypto_err("published JWK"))
}

/// Each node's view of project key sets.
#[derive(Clone)]
pub struct KeyService {
    inner: Arc<KeyInner>,
}

struct KeyInner {
    router: Router,
    master_key: MasterKey,
    clock: Arc<dyn Clock>,
    ttl: Duration,
    cache: NodeCache<KeySet>,
}

impl KeyService {
    pub fn new(router: Router, master_key: MasterKey, clock: Arc<dyn Clock>, ttl: Duration) -> Self {
        KeyService { inner: Arc::new(KeyInner { router, master_key, clock, ttl, cache: NodeCache::new() }) }
    }

    /// The project's key set; created on first use if the project has no keys yet.
    pub async fn keyset(&self, profile: &ProjectProfile) -> Result<Arc<KeySet>, CoreError> {
        let project = profile.project_id;
        let key = project.to_string();
        if let Some(set) = self.inner.cache.get(&key, self.inner.ttl) {
            return Ok(set);
        }
        let generation = self.inner.cache.generation();
        let now = self.inner.clock.now();
        let mut records = preresolve::project_signing_keys(&self.inner.router, project, now).await?;
        if !records.iter().any(|r| r.state == "current") {
            self.create_initial(profile).await?;
            records = preresolve::project_signing_keys(&self.inner.router, project, now).await?;
        }
        let set = Arc::new(KeySet::build(project, &self.inner.master_key, &records)?);
        self.inner.cache.put(&key, set.clone(), generation);
        Ok(set)
    }

    /// The key set with an RS256 signer for ID tokens: the current key if it is RS256, else
    /// the companion, made (and published) here the first time a project needs it.
    pub async fn keyset_with_rs256(&self, profile: &ProjectProfile) -> Result<Arc<KeySet>, CoreError> {
        let set = self.keyset(profile).await?;
        if set.can_sign_id_token(Alg::RS256) {
            return Ok(set);
        }
        let (tenant, project) = (profile.tenant_id, profile.project_id);
        let (mk, now) = (self.inner.master_key.clone(), self.inner.clock.now());
        // RSA key generation takes tens of milliseconds: off the async threads.
        let row = tokio::task::spawn_blocking(move || KeyRow::new(&mk, tenant, project, Alg::RS256, "companion", now))
            .await
            .map_err(|e| CoreError::Internal(format!("key generation: {e}")))??;
        let scope = Scope::project(tenant, project, profile.tenant_kind);
        let tx = self.inner.router.begin_pinned(&scope).await?;
        // Two nodes racing: the unique index keeps one companion.
        tx.query(&format!("{INSERT_KEY_SQL} ON CONFLICT DO NOTHING"), &row.params()).await?;
        tx.commit().await?;
        self.invalidate(project);
        self.keyset(profile).await
    }

    /// Forget a project's keys on this node (after a rotation made here).
    pub fn invalidate(&self, project: Uuid) {
        self.inner.cache.forget(Some(&project.to_string()));
    }

    /// Forget every project's keys on this node.
    pub fn invalidate_all(&self) {
        self.inner.cache.forget(None);
    }

    /// A current and a next key for a project that has none. Two nodes racing here both
    /// insert; the partial unique indexes keep one of each and the loser's rows are skipped.
    async fn create_initial(&self, profile: &ProjectProfile) -> Result<(), CoreError> {
        let alg = Alg::parse(&profile.signing_alg).unwrap_or(Alg::EdDSA);
        let scope = Scope::project(profile.tenant_id, profile.project_id, profile.tenant_kind);
        let now = self.inner.clock.now();
        let current = KeyRow::new(&self.inner.master_key, profile.tenant_id, profile.project_id, alg, "current", now)?;
        let next = KeyRow::new(&self.inner.master_key, profile.tenant_id, profile.project_id, alg, "next", now)?;
        let tx = self.inner.router.begin_pinned(&scope).await?;
        for row in [&current, &next] {
            let sql = format!("{INSERT_KEY_SQL} ON CONFLICT DO NOTHING");
            tx.query(&sql, &row.params()).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_generates_a_usable_key() {
        let mk = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        for alg in [Alg::EdDSA, Alg::ES256, Alg::RS256] {
            let row = KeyRow::new(&mk, Uuid::nil(), Uuid::nil(), alg, "current", Utc::now()).unwrap();
            let record = SigningKeyRecord {
                kid: row.kid.clone(),
                alg: alg.as_str().into(),
                public_jwk: row.jwk.clone(),
                private_key_enc: row.enc.clone(),
                state: "current".into(),
                publish_until: None,
            };
            let set = KeySet::build(Uuid::nil(), &mk, &[record]).unwrap();
            let token = set.sign(&json!({"sub": "x", "exp": 4_000_000_000u64})).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.kid.as_deref(), Some(row.kid.as_str()));
            let v = set.verifier(&row.kid).unwrap();
            let mut validation = jsonwebtoken::Validation::new(alg.jsonwebtoken());
            validation.validate_aud = false;
            jsonwebtoken::decode::<serde_json::Value>(&token, &v.key, &validation).unwrap();
            // Stored encrypted: the ciphertext is not the key, and decrypts to it.
            let plain = mk.decrypt(&row.enc).unwrap();
            assert_ne!(row.enc, plain);
            assert!(Signer::from_pkcs8(alg, &URL_SAFE_NO_PAD.decode(plain).unwrap()).is_ok());
        }
    }
}
