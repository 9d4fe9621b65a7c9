//! Project secret API keys: `sk_<key id>_<secret>`, 256-bit secret, stored only as a SHA-256
//! hash (the secret is random and high-entropy, so a slow hash adds nothing), compared in
//! constant time, shown once.
use authio_db::preresolve::{self, ApiKeyRecord};
use authio_db::{Router, Row, RowExt, Scope, Type};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::authz::{Authorized, Permission};
use crate::types::{project_of, DisplayName};
use crate::Clock;

use crate::audit::{self};
use crate::crypto::opaque;
use crate::types::ClientInfo;
use crate::CoreError;

const PREFIX: &str = "sk_";

/// A freshly generated key: the plaintext goes to the caller once; the rest is stored.
pub struct NewApiKey {
    pub plaintext: String,
    pub key_id: String,
    pub secret_hash: [u8; 32],
}

pub fn generate() -> NewApiKey {
    let key_id = opaque::random_hex::<8>();
    let secret = opaque::random_secret();
    NewApiKey { plaintext: format!("{PREFIX}{key_id}_{secret}"), secret_hash: opaque::hash(&secret), key_id }
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
    let matches = opaque::matches(record.map(|r| r.secret_hash.as_slice()), secret);
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
    fn from_row(r: &Row) -> Result<Self, CoreError> {
        Ok(ApiKeyInfo {
            id: r.col("id")?,
            key_id: r.col("key_id")?,
            name: r.col("name")?,
            created_at: r.col("created_at")?,
            revoked_at: r.col("revoked_at")?,
        })
    }
}

/// A key just created: `plaintext` is shown once and never stored.
pub struct CreatedKey {
    pub info: ApiKeyInfo,
    pub plaintext: String,
}

/// Create a key for the scope's project (API keys are pinned to the shared database).
#[tracing::instrument(level = "debug", name = "api_keys::create", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn create(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    name: &DisplayName,
    client: &ClientInfo,
) -> Result<CreatedKey, CoreError> {
    let scope = auth.require(Permission::CredentialsManage)?;
    let actor = auth.actor();
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
        action: crate::audit::AuditAction::ApiKeyCreated,
        actor: actor.clone(),
        target: Some(("api_key", key.key_id.clone())),
        client,
        metadata: serde_json::json!({"name": name.as_str()}),
    };
    audit::record_pinned(&tx, scope, event, now).await?;
    tx.commit().await?;
    Ok(CreatedKey { info: ApiKeyInfo::from_row(&row)?, plaintext: key.plaintext })
}

#[tracing::instrument(level = "debug", name = "api_keys::list", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn list(router: &Router, auth: &Authorized) -> Result<Vec<ApiKeyInfo>, CoreError> {
    let scope = auth.require(Permission::ProjectRead)?;
    project_of(scope)?;
    let tx = router.begin_pinned(scope).await?;
    let rows = tx.query("SELECT id, key_id, name, created_at, revoked_at FROM api_keys ORDER BY id", &[]).await?;
    tx.commit().await?;
    rows.iter().map(ApiKeyInfo::from_row).collect()
}

/// Revoke a key of the scope's project. Revoking twice is not an error; an id of another
/// project is "not found".
#[tracing::instrument(level = "debug", name = "api_keys::revoke", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn revoke(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    id: Uuid,
    client: &ClientInfo,
) -> Result<ApiKeyInfo, CoreError> {
    let scope = auth.require(Permission::CredentialsManage)?;
    let actor = auth.actor();
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
        .ok_or(CoreError::NotFound(crate::types::Entity::ApiKey))?;
    let info = ApiKeyInfo::from_row(&row)?;
    // Revoking again changes nothing and records nothing.
    if info.revoked_at == Some(now) {
        let event = audit::Event {
            action: crate::audit::AuditAction::ApiKeyRevoked,
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
        assert_eq!(opaque::hash(secret), k.secret_hash);
        assert_ne!(generate().plaintext, k.plaintext);
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        for bad in ["", "sk_", "pk_0123456789abcdef_x", "sk_0123_abc", "sk_0123456789abcdeg_", "Bearer sk_x"] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
