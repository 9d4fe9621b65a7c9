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
