//! Pre-resolution lookups: the only code that uses the shared pool without a scope.
//!
//! They run before the scope is known, so their rows live on the shared database for every
//! tenant (dedicated ones included), and each goes through a narrow `SECURITY DEFINER`
//! function that takes the one key it resolves from and returns only what resolution needs.
//!
//! | lookup            | resolves from | why on shared                                   |
//! |-------------------|---------------|-------------------------------------------------|
//! | `resolve_api_key` | API key id    | a project API key is the request's only context |
//! | `tenant_route`    | tenant id     | the control plane (tenants)                     |
//! | `route_epochs`    | tenant ids    | the control plane (route epochs)                |
//! | `dedicated_app_dsn` | tenant id   | the control plane (dedicated databases)         |
//! | `project_profile` | project id    | the control plane (projects): end-user requests name a project |
//! | `project_signing_keys` | project id | signing keys: platform-level, never move        |
//! | `resolve_m2m_client` | client id  | `/v1/auth/token` resolves the project from the client id |
//! | `audit_outbox_take`, `audit_outbox_done` | (the relay) | events about pinned rows wait on shared until delivered to the tenant's home |
//! | `rate_hit`, `rate_hit_both`, `rate_reset`, `rate_gc` | bucket and key | counters run before the home is known and hold across nodes |
use chrono::{DateTime, Utc};
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::route_cache::{CachedRoute, DbStrategy};
use crate::{DbError, Router, RouterError, TenantKind};

async fn shared_client(router: &Router) -> Result<deadpool_postgres::Object, DbError> {
    router.shared().get().await.map_err(|e| RouterError::SharedUnavailable(e.to_string()).into())
}

/// What an API key id resolves to. The caller compares `secret_hash` in constant time.
#[derive(Debug, Clone)]
pub struct ApiKeyRecord {
    pub tenant_id: Uuid,
    pub project_id: Uuid,
    pub key_uuid: Uuid,
    pub secret_hash: Vec<u8>,
    pub tenant_kind: TenantKind,
}

pub async fn resolve_api_key(router: &Router, key_id: &str) -> Result<Option<ApiKeyRecord>, DbError> {
    let c = shared_client(router).await?;
    let row = c
        .query_typed(
            "SELECT tenant_id, project_id, key_uuid, secret_hash, tenant_kind FROM authio_resolve_api_key($1)",
            &[(&key_id, Type::TEXT)],
        )
        .await?;
    Ok(row.first().and_then(|r| {
        Some(ApiKeyRecord {
            tenant_id: r.get(0),
            project_id: r.get(1),
            key_uuid: r.get(2),
            secret_hash: r.get(3),
            tenant_kind: TenantKind::parse(r.get(4))?,
        })
    }))
}

pub async fn tenant_route(router: &Router, tenant: Uuid) -> Result<Option<CachedRoute>, DbError> {
    let c = shared_client(router).await?;
    let rows = c
        .query_typed("SELECT kind, db_strategy, route_epoch FROM authio_tenant_route($1)", &[(&tenant, Type::UUID)])
        .await?;
    Ok(rows.first().and_then(|r| {
        Some(CachedRoute {
            kind: TenantKind::parse(r.get(0))?,
            strategy: DbStrategy::parse(r.get(1))?,
            epoch: r.get(2),
        })
    }))
}

pub async fn route_epochs(router: &Router, tenants: &[Uuid]) -> Result<Vec<(Uuid, i64)>, DbError> {
    let c = shared_client(router).await?;
    let ids = tenants.to_vec();
    let rows = c
        .query_typed("SELECT tenant_id, route_epoch FROM authio_route_epochs($1)", &[(&ids, Type::UUID_ARRAY)])
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

pub async fn dedicated_app_dsn(router: &Router, tenant: Uuid) -> Result<Option<String>, DbError> {
    let c = shared_client(router).await?;
    let rows = c.query_typed("SELECT authio_dedicated_app_dsn($1)", &[(&tenant, Type::UUID)]).await?;
    Ok(rows.first().and_then(|r| r.get::<_, Option<String>>(0)))
}

/// Readiness: the shared database answers.
pub async fn ping(router: &Router) -> Result<(), DbError> {
    let c = shared_client(router).await?;
    c.query_typed("SELECT 1", &[]).await?;
    Ok(())
}

/// A project's tenant and token settings.
#[derive(Debug, Clone)]
pub struct ProjectProfile {
    pub tenant_id: Uuid,
    pub project_id: Uuid,
    pub tenant_kind: TenantKind,
    pub signing_alg: String,
    pub access_token_ttl_secs: i32,
    pub session_idle_timeout_secs: i32,
    pub session_absolute_timeout_secs: i32,
    pub refresh_grace_secs: i32,
}

pub async fn project_profile(router: &Router, project: Uuid) -> Result<Option<ProjectProfile>, DbError> {
    let rows = router
        .read_shared_unscoped(
            "SELECT tenant_id, tenant_kind, signing_alg, access_token_ttl_secs, session_idle_timeout_secs, \
             session_absolute_timeout_secs, refresh_grace_secs FROM authio_project_profile($1)",
            &[(&project, Type::UUID)],
        )
        .await?;
    let Some(r) = rows.first() else { return Ok(None) };
    let kind: String = r.try_get(1)?;
    Ok(Some(ProjectProfile {
        tenant_id: r.try_get(0)?,
        project_id: project,
        tenant_kind: TenantKind::parse(&kind).ok_or_else(|| DbError::Decode(format!("tenant kind {kind:?}")))?,
        signing_alg: r.try_get(2)?,
        access_token_ttl_secs: r.try_get(3)?,
        session_idle_timeout_secs: r.try_get(4)?,
        session_absolute_timeout_secs: r.try_get(5)?,
        refresh_grace_secs: r.try_get(6)?,
    }))
}

/// A published signing key of a project, its private half still encrypted.
#[derive(Debug, Clone)]
pub struct SigningKeyRecord {
    pub kid: String,
    pub alg: String,
    pub public_jwk: serde_json::Value,
    pub private_key_enc: String,
    pub state: String,
    pub publish_until: Option<DateTime<Utc>>,
}

pub async fn project_signing_keys(
    router: &Router,
    project: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<SigningKeyRecord>, DbError> {
    let rows = router
        .read_shared_unscoped(
            "SELECT kid, alg, public_jwk, private_key_enc, state, publish_until FROM authio_project_signing_keys($1, $2)",
            &[(&project, Type::UUID), (&now, Type::TIMESTAMPTZ)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(SigningKeyRecord {
                kid: r.try_get(0)?,
                alg: r.try_get(1)?,
                public_jwk: r.try_get(2)?,
                private_key_enc: r.try_get(3)?,
                state: r.try_get(4)?,
                publish_until: r.try_get(5)?,
            })
        })
        .collect()
}

/// What an M2M client id resolves to. The caller compares `secret_hash` in constant time.
#[derive(Debug, Clone)]
pub struct M2mClientRecord {
    pub tenant_id: Uuid,
    pub project_id: Uuid,
    pub tenant_kind: TenantKind,
    pub secret_hash: Vec<u8>,
    pub scopes: Vec<String>,
    pub audience: String,
    pub token_ttl_secs: i32,
}

pub async fn resolve_m2m_client(router: &Router, client_id: &str) -> Result<Option<M2mClientRecord>, DbError> {
    let rows = router
        .read_shared_unscoped(
            "SELECT tenant_id, project_id, tenant_kind, secret_hash, scopes, audience, token_ttl_secs \
             FROM authio_resolve_m2m_client($1)",
            &[(&client_id, Type::TEXT)],
        )
        .await?;
    let Some(r) = rows.first() else { return Ok(None) };
    let kind: String = r.try_get(2)?;
    Ok(Some(M2mClientRecord {
        tenant_id: r.try_get(0)?,
        project_id: r.try_get(1)?,
        tenant_kind: TenantKind::parse(&kind).ok_or_else(|| DbError::Decode(format!("tenant kind {kind:?}")))?,
        secret_hash: r.try_get(3)?,
        scopes: r.try_get(4)?,
        audience: r.try_get(5)?,
        token_ttl_secs: r.try_get(6)?,
    }))
}

/// Hits so far in the current fixed window of `(bucket, key)` and when that window ends.
#[derive(Debug, Clone, Copy)]
pub struct RateWindow {
    pub hits: i32,
    pub window_ends: DateTime<Utc>,
}

/// Count a hit.
pub async fn rate_hit(
    router: &Router,
    bucket: &str,
    key: &str,
    window_secs: i32,
    now: DateTime<Utc>,
) -> Result<RateWindow, DbError> {
    let rows = router
        .read_shared_unscoped(
            "SELECT hits, window_ends FROM authio_rate_hit($1, $2, $3, $4)",
            &[(&bucket, Type::TEXT), (&key, Type::TEXT), (&window_secs, Type::INT4), (&now, Type::TIMESTAMPTZ)],
        )
        .await?;
    let r = rows.first().ok_or_else(|| DbError::Decode("authio_rate_hit returned no row".into()))?;
    Ok(RateWindow { hits: r.try_get(0)?, window_ends: r.try_get(1)? })
}

/// Count a hit on two keys in one round trip (a sign-in: the IP's attempts and the account's).
pub async fn rate_hit_both(
    router: &Router,
    a: (&str, &str, i32),
    b: (&str, &str, i32),
    now: DateTime<Utc>,
) -> Result<(RateWindow, RateWindow), DbError> {
    let rows = router
        .read_shared_unscoped(
            "SELECT hits_a, window_ends_a, hits_b, window_ends_b FROM authio_rate_hit_both($1, $2, $3, $4, $5, $6, $7)",
            &[
                (&a.0, Type::TEXT),
                (&a.1, Type::TEXT),
                (&a.2, Type::INT4),
                (&b.0, Type::TEXT),
                (&b.1, Type::TEXT),
                (&b.2, Type::INT4),
                (&now, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    let r = rows.first().ok_or_else(|| DbError::Decode("authio_rate_hit_both returned no row".into()))?;
    Ok((
        RateWindow { hits: r.try_get(0)?, window_ends: r.try_get(1)? },
        RateWindow { hits: r.try_get(2)?, window_ends: r.try_get(3)? },
    ))
}

pub async fn rate_reset(router: &Router, bucket: &str, key: &str) -> Result<(), DbError> {
    router
        .read_shared_unscoped("SELECT authio_rate_reset($1, $2)", &[(&bucket, Type::TEXT), (&key, Type::TEXT)])
        .await?;
    Ok(())
}

/// Drop counters whose window ended over a day ago; returns how many.
pub async fn rate_gc(router: &Router, now: DateTime<Utc>) -> Result<i32, DbError> {
    let rows = router.read_shared_unscoped("SELECT authio_rate_gc($1)", &[(&now, Type::TIMESTAMPTZ)]).await?;
    rows.first().map(|r| r.try_get(0)).transpose().map(|v| v.unwrap_or(0))
}
