//! M2M clients: a client id (`cl_<hex>`) and a 256-bit secret (`cs_<base64url>`, shown once,
//! stored as a SHA-256 hash), allowed scopes, an audience and a token lifetime. Pinned to the
//! shared database: `/v1/auth/token` resolves the project from the client id.
use authio_db::preresolve::{self, M2mClientRecord};
use authio_db::{Router, Row, RowExt, Type};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::audit::{self};
use crate::authz::{Authorized, Permission};
use crate::crypto::opaque;
use crate::types::{project_of, DisplayName, ValidationError};
use crate::{Clock, CoreError};

/// A scope name: RFC 6749 `scope-token` characters, at most 128 of them.
pub fn valid_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// What a new client may do.
pub struct NewClient {
    pub name: DisplayName,
    pub scopes: Vec<String>,
    pub audience: Option<String>,
    pub token_ttl_secs: Option<i32>,
}

impl NewClient {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.scopes.len() > 100 || !self.scopes.iter().all(|s| valid_scope_token(s)) {
            return Err(ValidationError::Field("scopes: up to 100 names of printable ASCII without spaces"));
        }
        if let Some(a) = &self.audience {
            if a.is_empty() || a.len() > 512 || a.chars().any(char::is_control) {
                return Err(ValidationError::Field("audience: 1-512 characters"));
            }
        }
        if let Some(t) = self.token_ttl_secs {
            if !(60..=86400).contains(&t) {
                return Err(ValidationError::Field("token_ttl_secs: 60 to 86400"));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ClientInfo {
    pub id: Uuid,
    pub client_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub audience: String,
    pub token_ttl_secs: i32,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const COLS: &str = "id, client_id, name, scopes, audience, token_ttl_secs, created_at, revoked_at";

impl ClientInfo {
    /// A row of [`COLS`].
    fn from_row(r: &Row) -> Result<Self, CoreError> {
        Ok(ClientInfo {
            id: r.col("id")?,
            client_id: r.col("client_id")?,
            name: r.col("name")?,
            scopes: r.col("scopes")?,
            audience: r.col("audience")?,
            token_ttl_secs: r.col("token_ttl_secs")?,
            created_at: r.col("created_at")?,
            revoked_at: r.col("revoked_at")?,
        })
    }
}

pub struct CreatedClient {
    pub info: ClientInfo,
    /// Shown once; only its hash is stored.
    pub client_secret: String,
}

/// Create a client. Its audience defaults to the project's issuer.
#[tracing::instrument(level = "debug", name = "m2m::create", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn create(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    default_audience: &str,
    new: &NewClient,
    client: &crate::types::ClientInfo,
) -> Result<CreatedClient, CoreError> {
    let scope = auth.require(Permission::CredentialsManage)?;
    let actor = auth.actor();
    new.validate()?;
    let project = project_of(scope)?;
    let client_id = format!("cl_{}", opaque::random_hex::<12>());
    let (client_secret, hash) = opaque::new_token("cs_");
    let hash = hash.to_vec();
    let audience = new.audience.clone().unwrap_or_else(|| default_audience.to_owned());
    let ttl = new.token_ttl_secs.unwrap_or(3600);
    let id = Uuid::now_v7();
    let now = clock.now();
    let tx = router.begin_pinned(scope).await?;
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO m2m_clients (tenant_id, project_id, id, client_id, secret_hash, name, scopes, audience,
                                          token_ttl_secs, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {COLS}"
            ),
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&id, Type::UUID),
                (&client_id, Type::TEXT),
                (&hash, Type::BYTEA),
                (&new.name.as_str(), Type::TEXT),
                (&new.scopes, Type::TEXT_ARRAY),
                (&audience, Type::TEXT),
                (&ttl, Type::INT4),
                (&now, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    let event = audit::Event {
        action: crate::audit::AuditAction::M2mClientCreated,
        actor: actor.clone(),
        target: Some(("m2m_client", client_id.clone())),
        client,
        // Bounded (the event's metadata is at most 4 KiB): the first scopes and the count.
        metadata: serde_json::json!({
            "name": new.name.as_str(),
            "scopes": new.scopes.iter().take(10).collect::<Vec<_>>(),
            "scope_count": new.scopes.len(),
            "audience": audience.chars().take(256).collect::<String>(),
            "token_ttl_secs": ttl,
        }),
    };
    audit::record_pinned(&tx, scope, event, now).await?;
    tx.commit().await?;
    Ok(CreatedClient { info: ClientInfo::from_row(&row)?, client_secret })
}

#[tracing::instrument(level = "debug", name = "m2m::list", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn list(router: &Router, auth: &Authorized) -> Result<Vec<ClientInfo>, CoreError> {
    let scope = auth.require(Permission::ProjectRead)?;
    project_of(scope)?;
    let tx = router.begin_pinned(scope).await?;
    let rows = tx.query(&format!("SELECT {COLS} FROM m2m_clients ORDER BY id"), &[]).await?;
    tx.commit().await?;
    rows.iter().map(ClientInfo::from_row).collect()
}

/// Revoke a client: its secret stops working at once (tokens it already holds live until
/// they expire, or until revoked one by one).
#[tracing::instrument(level = "debug", name = "m2m::revoke", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn revoke(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    id: Uuid,
    client: &crate::types::ClientInfo,
) -> Result<ClientInfo, CoreError> {
    let scope = auth.require(Permission::CredentialsManage)?;
    let actor = auth.actor();
    project_of(scope)?;
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin_pinned(scope).await?;
    let row = tx
        .query_opt(
            &format!("UPDATE m2m_clients SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1 RETURNING {COLS}"),
            &[(&id, Type::UUID), (&now, Type::TIMESTAMPTZ)],
        )
        .await?
        .ok_or(CoreError::NotFound(crate::types::Entity::Client))?;
    let info = ClientInfo::from_row(&row)?;
    if info.revoked_at == Some(now) {
        let event = audit::Event {
            action: crate::audit::AuditAction::M2mClientRevoked,
            actor: actor.clone(),
            target: Some(("m2m_client", info.client_id.clone())),
            client,
            metadata: serde_json::json!({}),
        };
        audit::record_pinned(&tx, scope, event, now).await?;
    }
    tx.commit().await?;
    Ok(info)
}

/// Whether a client id is shaped like ours (others are not looked up at all).
pub fn plausible_client_id(client_id: &str) -> bool {
    client_id
        .strip_prefix("cl_")
        .is_some_and(|hex| hex.len() == 24 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// Look a client up by id (a pre-resolution lookup on the shared database).
pub async fn lookup(router: &Router, client_id: &str) -> Result<Option<M2mClientRecord>, CoreError> {
    if !plausible_client_id(client_id) {
        return Ok(None);
    }
    Ok(preresolve::resolve_m2m_client(router, client_id).await?)
}

/// Judge a presented secret against what the lookup found. Unknown, revoked and
/// wrong-secret clients fail alike, after the same work.
pub fn check_secret(record: Option<&M2mClientRecord>, secret: &str) -> Result<(), CoreError> {
    if crate::crypto::opaque::matches(record.map(|r| r.secret_hash.as_slice()), secret) {
        Ok(())
    } else {
        Err(CoreError::InvalidClient)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_client_ids_are_looked_up() {
        assert!(plausible_client_id("cl_0123456789abcdef01234567"));
        assert!(!plausible_client_id("cl_0123456789abcdef0123456\0"));
        assert!(!plausible_client_id("cl_0123456789ABCDEF01234567"));
        assert!(!plausible_client_id("xx_0123456789abcdef01234567"));
    }

    #[test]
    fn scope_tokens() {
        assert!(valid_scope_token("read:users"));
        assert!(!valid_scope_token("a b"));
        assert!(!valid_scope_token(""));
        assert!(!valid_scope_token("quote\"d"));
        assert!(!valid_scope_token("back\\slash"));
    }
}
