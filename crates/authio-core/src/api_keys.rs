//! Project secret API keys: `sk_<key id>_<secret>`, 256-bit secret, stored only as a SHA-256
//! hash (the secret is random and high-entropy, so a slow hash adds nothing), compared in
//! constant time, shown once.
use authio_db::preresolve::{self, ApiKeyRecord};
use authio_db::{Router, Row, Scope, Type};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::domain::{project_of, DisplayName};
use crate::Clock;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::audit::{self, Actor};
use crate::sessions::ClientInfo;
use crate::CoreError;

const PREFIX: &str = "sk_";

/// A freshly generated key: the plaintext goes to the caller once; the rest is stored.
pub struct NewApiKey {
    pub plaintext: String,
    pub key_id: String,
    pub secret_hash: [u8; 32],
}

pub fn generate() -> NewApiKey {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut id);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let key_id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let secret = URL_SAFE_NO_PAD.encode(secret);
    NewApiKey { plaintext: format!("{PREFIX}{key_id}_{secret}"), secret_hash: hash_secret(&secret), key_id }
}

pub(crate) fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Whether `secret` hashes to `stored`, in constant time; with nothing stored (an unknown id)
/// a hash is still compared, so both paths do the same work.
pub(crate) fn secret_matches(stored: Option<&[u8]>, secret: &str) -> bool {
    let stored: [u8; 32] = stored.and_then(|h| <[u8; 32]>::try_from(h).ok()).unwrap_or([0u8; 32]);
    let matches: bool = hash_secret(secret).ct_eq(&stored).into();
    matches && stored != [0u8; 32]
}

/// Split a presented key into (key id, secret) without judging the secret yet.
pub fn parse(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
    (id_ok && secret.len() == 43).then_some((id, secret))
}

/// Resolve a presented API key to the scope it grants (a pre-resolution lookup on the shared
/// database). Unknown, revoked and wrong keys fail alike.
pub async fn authenticate(router: &Router, presented: &str) -> Result<Scope, CoreError> {
    let (key_id, secret) = parse(presented).ok_or(CoreError::InvalidApiKey)?;
    let record = preresolve::resolve_api_key(router, key_id).await?;
    check_secret(record.as_ref(), secret)
}

/// Judge a presented secret against what the lookup found, in constant time; an unknown id is
/// compared against something too, so both paths do the same work.
pub fn check_secret(record: Option<&ApiKeyRecord>, secret: &str) -> Result<Scope, CoreError> {
    let matches = secret_matches(record.map(|r| r.secret_hash.as_slice()), secret);
    match record {
        Some(r) if matches => Ok(Scope::project(r.tenant_id, r.project_id, r.tenant_kind)),
        _ => Err(CoreError::InvalidApiKey),
    }
}

/// What is shown of a stored key: never the secret.
#[derive(Clone, Debug, Serialize)]
pub struct ApiKeyInfo {
    pub id: Uuid,
    pub key_id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKeyInfo {
    fn from_row(r: &Row) -> Self {
        ApiKeyInfo { id: r.get(0), key_id: r.get(1), name: r.get(2), created_at: r.get(3), revoked_at: r.get(4) }
    }
}

/// A key just created: `plaintext` is shown once and never stored.
pub struct CreatedKey {
    pub info: ApiKeyInfo,
    pub plaintext: String,
}

/// Create a key for the scope's project (API keys are pinned to the shared database).
pub async fn create(
    router: &Router,
    clock: &dyn Clock,
    scope: &Scope,
    name: &DisplayName,
    actor: &Actor,
    client: &ClientInfo,
) -> Result<CreatedKey, CoreError> {
    let project = project_of(scope)?;
    let key = generate();
    let id = Uuid::now_v7();
    let hash = key.secret_hash.to_vec();
    let now = clock.now();
    let tx = router.begin_pinned(scope).await?;
    let row = tx
        .query_one(
            "INSERT INTO api_keys (tenant_id, project_id, id, key_id, secret_hash, name, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id, key_id, name, created_at, revoked_at",
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&id, Type::UUID),
                (&key.key_id, Type::TEXT),
                (&hash, Type::BYTEA),
                (&name.as_str(), Type::TEXT),
                (&now, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    let event = audit::Event {
        action: "api_key.created",
        actor: actor.clone(),
        target: Some(("api_key", key.key_id.clone())),
        client,
        metadata: serde_json::json!({"name": name.as_str()}),
    };
    audit::record_pinned(&tx, scope, event, now).await?;
    tx.commit().await?;
    Ok(CreatedKey { info: ApiKeyInfo::from_row(&row), plaintext: key.plaintext })
}

pub async fn list(router: &Router, scope: &Scope) -> Result<Vec<ApiKeyInfo>, CoreError> {
    project_of(scope)?;
    let tx = router.begin_pinned(scope).await?;
    let rows = tx.query("SELECT id, key_id, name, created_at, revoked_at FROM api_keys ORDER BY id", &[]).await?;
    tx.commit().await?;
    Ok(rows.iter().map(ApiKeyInfo::from_row).collect())
}

/// Revoke a key of the scope's project. Revoking twice is not an error; an id of another
/// project is "not found".
pub async fn revoke(
    router: &Router,
    clock: &dyn Clock,
    scope: &Scope,
    id: Uuid,
    actor: &Actor,
    client: &ClientInfo,
) -> Result<ApiKeyInfo, CoreError> {
    project_of(scope)?;
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin_pinned(scope).await?;
    let row = tx
        .query_opt(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1
             RETURNING id, key_id, name, created_at, revoked_at",
            &[(&id, Type::UUID), (&now, Type::TIMESTAMPTZ)],
        )
        .await?
        .ok_or(CoreError::NotFound("api key"))?;
    let info = ApiKeyInfo::from_row(&row);
    // Revoking again changes nothing and records nothing.
    if info.revoked_at == Some(now) {
        let event = audit::Event {
            action: "api_key.revoked",
            actor: actor.clone(),
            target: Some(("api_key", info.key_id.clone())),
            client,
            metadata: serde_json::json!({}),
        };
        audit::record_pinned(&tx, scope, event, now).await?;
    }
    tx.commit().await?;
    Ok(info)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_hash() {
        let k = generate();
        let (id, secret) = parse(&k.plaintext).unwrap();
        assert_eq!(id, k.key_id);
        assert_eq!(hash_secret(secret), k.secret_hash);
        assert_ne!(generate().plaintext, k.plaintext);
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        for bad in ["", "sk_", "pk_0123456789abcdef_x", "sk_0123_abc", "sk_0123456789abcdeg_", "Bearer sk_x"] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
