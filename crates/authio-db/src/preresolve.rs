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
//! | `rate_hit`, `rate_hit_both`, `rate_peek`, `rate_reset`, `rate_gc` | bucket and key | counters run before the home is known and hold across nodes |
//! | `project_presentation` | project id | the control plane (projects): hosted pages and emails name a project |
//! | `project_redirect_uris`, `origin_allowed`, `origin_known` | project id, origin | they say which project owns an origin; a CORS preflight names no project |
//! | `resolve_domain` | host | host -> project resolution comes first |
//! | `email_link_use`, `email_link_live`, `email_code_attempt`, `email_code_use`, `oauth_state_use`, `authorization_code_use`, `authorization_code_started`, `one_time_gc` | token hash or challenge id | one-time tokens: the token is the only context |
//! | `resolve_oidc_client` | client id | the OpenID provider's endpoints resolve the project from the client id |
//! | `mail_take`, `mail_sent`, `mail_failed` | (the mail sender) | the outbox is written with the one-time token it carries |
use chrono::{DateTime, Utc};
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::route_cache::{CachedRoute, DbStrategy};
use crate::{DbError, Router, RouterError, RowExt, TenantKind};

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
    let Some(r) = row.first() else { return Ok(None) };
    let Some(tenant_kind) = TenantKind::parse(r.col("tenant_kind")?) else { return Ok(None) };
    Ok(Some(ApiKeyRecord {
        tenant_id: r.col("tenant_id")?,
        project_id: r.col("project_id")?,
        key_uuid: r.col("key_uuid")?,
        secret_hash: r.col("secret_hash")?,
        tenant_kind,
    }))
}

pub async fn tenant_route(router: &Router, tenant: Uuid) -> Result<Option<CachedRoute>, DbError> {
    let c = shared_client(router).await?;
    let rows = c
        .query_typed("SELECT kind, db_strategy, route_epoch FROM authio_tenant_route($1)", &[(&tenant, Type::UUID)])
        .await?;
    let Some(r) = rows.first() else { return Ok(None) };
    let (Some(kind), Some(strategy)) = (TenantKind::parse(r.col("kind")?), DbStrategy::parse(r.col("db_strategy")?))
    else {
        return Ok(None);
    };
    Ok(Some(CachedRoute { kind, strategy, epoch: r.col("route_epoch")? }))
}

pub async fn route_epochs(router: &Router, tenants: &[Uuid]) -> Result<Vec<(Uuid, i64)>, DbError> {
    let c = shared_client(router).await?;
    let ids = tenants.to_vec();
    let rows = c
        .query_typed("SELECT tenant_id, route_epoch FROM authio_route_epochs($1)", &[(&ids, Type::UUID_ARRAY)])
        .await?;
    rows.iter().map(|r| Ok((r.col("tenant_id")?, r.col("route_epoch")?))).collect()
}

pub async fn dedicated_app_dsn(router: &Router, tenant: Uuid) -> Result<Option<String>, DbError> {
    let c = shared_client(router).await?;
    let rows = c.query_typed("SELECT authio_dedicated_app_dsn($1) AS dsn", &[(&tenant, Type::UUID)]).await?;
    match rows.first() {
        Some(r) => r.col::<Option<String>>("dsn"),
        None => Ok(None),
    }
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

/// The hits in the current window, without counting one (none when no window is open).
pub async fn rate_peek(
    router: &Router,
    bucket: &str,
    key: &str,
    window_secs: i32,
    now: DateTime<Utc>,
) -> Result<Option<RateWindow>, DbError> {
    let rows = router
        .read_shared_unscoped(
            "SELECT hits, window_ends FROM authio_rate_peek($1, $2, $3, $4)",
            &[(&bucket, Type::TEXT), (&key, Type::TEXT), (&window_secs, Type::INT4), (&now, Type::TIMESTAMPTZ)],
        )
        .await?;
    rows.first().map(|r| Ok(RateWindow { hits: r.try_get(0)?, window_ends: r.try_get(1)? })).transpose()
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

/// The rows of a pre-resolution function, for the core layer to decode. Each call names one
/// of the narrow functions of migration 0011 and the one key it resolves from.
async fn call(router: &Router, sql: &str, params: &[crate::Param<'_>]) -> Result<Vec<crate::PgRow>, DbError> {
    router.read_shared_unscoped(sql, params).await
}

/// tenant_id, name, display_name, logo_url, brand_color, email_sender_name, signin_methods,
/// environment, signup_policy, signup_domains
pub async fn project_presentation(router: &Router, project: Uuid) -> Result<Option<crate::PgRow>, DbError> {
    let sql = "SELECT tenant_id, name, display_name, logo_url, brand_color, email_sender_name, signin_methods, \
               environment, signup_policy, signup_domains, mfa_policy, dynamic_registration, metadata_document_clients, \
               confidential_registration FROM authio_project_presentation($1)";
    Ok(call(router, sql, &[(&project, Type::UUID)]).await?.into_iter().next())
}

pub async fn project_redirect_uris(router: &Router, project: Uuid) -> Result<Vec<String>, DbError> {
    let rows = call(router, "SELECT authio_project_redirect_uris($1)", &[(&project, Type::UUID)]).await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}

pub async fn origin_allowed(router: &Router, project: Uuid, origin: &str) -> Result<bool, DbError> {
    let rows =
        call(router, "SELECT authio_origin_allowed($1, $2)", &[(&project, Type::UUID), (&origin, Type::TEXT)]).await?;
    Ok(rows.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(false))
}

pub async fn origin_known(router: &Router, origin: &str) -> Result<bool, DbError> {
    let rows = call(router, "SELECT authio_origin_known($1)", &[(&origin, Type::TEXT)]).await?;
    Ok(rows.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(false))
}

/// A verified custom domain's (tenant, project).
pub async fn resolve_domain(router: &Router, host: &str) -> Result<Option<(Uuid, Uuid)>, DbError> {
    let rows =
        call(router, "SELECT tenant_id, project_id FROM authio_resolve_domain($1)", &[(&host, Type::TEXT)]).await?;
    rows.first().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
}

/// Use an email link: tenant_id, project_id, email, redirect_uri, app_state, code_challenge.
pub async fn email_link_use(
    router: &Router,
    hash: &[u8],
    purpose: &str,
    binding: Option<&[u8]>,
    now: DateTime<Utc>,
) -> Result<Option<crate::PgRow>, DbError> {
    let sql = "SELECT tenant_id, project_id, email, redirect_uri, app_state, code_challenge \
               FROM authio_email_link_use($1, $2, $3, $4)";
    let params: [crate::Param<'_>; 4] =
        [(&hash, Type::BYTEA), (&purpose, Type::TEXT), (&binding, Type::BYTEA), (&now, Type::TIMESTAMPTZ)];
    Ok(call(router, sql, &params).await?.into_iter().next())
}

/// Whether an email link is live: its project and email.
pub async fn email_link_live(
    router: &Router,
    hash: &[u8],
    purpose: &str,
    now: DateTime<Utc>,
) -> Result<Option<(Uuid, String)>, DbError> {
    let sql = "SELECT project_id, email FROM authio_email_link_live($1, $2, $3)";
    let rows = call(router, sql, &[(&hash, Type::BYTEA), (&purpose, Type::TEXT), (&now, Type::TIMESTAMPTZ)]).await?;
    rows.first().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
}

/// Count an attempt at an email code: status, tenant_id, project_id, email, code_mac,
/// redirect_uri, app_state, code_challenge.
pub async fn email_code_attempt(
    router: &Router,
    id: Uuid,
    max: i32,
    now: DateTime<Utc>,
) -> Result<Option<crate::PgRow>, DbError> {
    let sql = "SELECT status, tenant_id, project_id, email, code_mac, redirect_uri, app_state, code_challenge \
               FROM authio_email_code_attempt($1, $2, $3)";
    Ok(call(router, sql, &[(&id, Type::UUID), (&max, Type::INT4), (&now, Type::TIMESTAMPTZ)]).await?.into_iter().next())
}

pub async fn email_code_use(router: &Router, id: Uuid, now: DateTime<Utc>) -> Result<bool, DbError> {
    let rows =
        call(router, "SELECT authio_email_code_use($1, $2)", &[(&id, Type::UUID), (&now, Type::TIMESTAMPTZ)]).await?;
    Ok(rows.first().map(|r| r.try_get(0)).transpose()?.unwrap_or(false))
}

/// Use an upstream state: tenant_id, project_id, connection_id, nonce, pkce_verifier_enc,
/// browser_binding, redirect_uri, app_state, code_challenge.
pub async fn oauth_state_use(
    router: &Router,
    hash: &[u8],
    now: DateTime<Utc>,
) -> Result<Option<crate::PgRow>, DbError> {
    let sql = "SELECT tenant_id, project_id, connection_id, nonce, pkce_verifier_enc, browser_binding, redirect_uri, \
               app_state, code_challenge FROM authio_oauth_state_use($1, $2)";
    Ok(call(router, sql, &[(&hash, Type::BYTEA), (&now, Type::TIMESTAMPTZ)]).await?.into_iter().next())
}

/// A SCIM directory's token: tenant_id, project_id, token_hash, tenant_kind, organization_id.
pub async fn directory_token(router: &Router, directory: Uuid) -> Result<Option<crate::PgRow>, DbError> {
    let sql = "SELECT tenant_id, project_id, token_hash, tenant_kind, organization_id FROM authio_directory_token($1)";
    Ok(call(router, sql, &[(&directory, Type::UUID)]).await?.into_iter().next())
}

/// Use an authorization code (or a hosted sign-in's code): first_use, tenant_id, project_id,
/// user_id, amr, redirect_uri, code_challenge, client_id, scope, nonce, auth_time, session_id,
/// resource, organization_id.
/// A code used before comes back with `first_use` false (a replay).
pub async fn authorization_code_use(
    router: &Router,
    hash: &[u8],
    now: DateTime<Utc>,
) -> Result<Option<crate::PgRow>, DbError> {
    let sql = "SELECT first_use, tenant_id, project_id, user_id, amr, redirect_uri, code_challenge, client_id, scope, \
               nonce, auth_time, session_id, resource, organization_id FROM authio_authorization_code_use($1, $2)";
    Ok(call(router, sql, &[(&hash, Type::BYTEA), (&now, Type::TIMESTAMPTZ)]).await?.into_iter().next())
}

/// Record the session a code's exchange started.
pub async fn authorization_code_started(router: &Router, hash: &[u8], session: Uuid) -> Result<(), DbError> {
    let sql = "SELECT authio_authorization_code_started($1, $2)";
    call(router, sql, &[(&hash, Type::BYTEA), (&session, Type::UUID)]).await.map(|_| ())
}

/// An OpenID Connect client: tenant_id, project_id, tenant_kind, secret_hash, client_type,
/// token_endpoint_auth_method, redirect_uris, post_logout_redirect_uris, scopes, grant_types, name,
/// id_token_signed_response_alg, resources.
/// A project's client by id (a metadata-document client is the project's own row).
pub async fn resolve_oidc_client(
    router: &Router,
    project: Uuid,
    client_id: &str,
) -> Result<Option<crate::PgRow>, DbError> {
    let sql = "SELECT tenant_id, project_id, tenant_kind, secret_hash, client_type, token_endpoint_auth_method, \
               redirect_uris, post_logout_redirect_uris, scopes, grant_types, name, id_token_signed_response_alg, \
               resources, registration, logo_uri, client_uri, blocked_at, fetched_at, used_at, \
               registration_token_hash, id FROM authio_resolve_oidc_client($1, $2)";
    Ok(call(router, sql, &[(&project, Type::UUID), (&client_id, Type::TEXT)]).await?.into_iter().next())
}

/// A project's protected resources: (uri, scopes).
pub async fn project_resources(router: &Router, project: Uuid) -> Result<Vec<(String, Vec<String>)>, DbError> {
    let rows = call(router, "SELECT uri, scopes FROM authio_project_resources($1)", &[(&project, Type::UUID)]).await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}

/// Remove dynamic registrations unused since before `before`; returns how many.
pub async fn dynamic_client_gc(router: &Router, before: DateTime<Utc>) -> Result<i32, DbError> {
    let rows = call(router, "SELECT authio_dynamic_client_gc($1)", &[(&before, Type::TIMESTAMPTZ)]).await?;
    rows.first().map(|r| r.try_get(0)).transpose().map(|v| v.unwrap_or(0))
}

/// Take due outbox mail under a lease: id, message_enc, attempts.
pub async fn mail_take(
    router: &Router,
    limit: i32,
    now: DateTime<Utc>,
    lease_secs: i32,
) -> Result<Vec<crate::PgRow>, DbError> {
    let sql = "SELECT id, message_enc, attempts FROM authio_mail_take($1, $2, $3)";
    call(router, sql, &[(&limit, Type::INT4), (&now, Type::TIMESTAMPTZ), (&lease_secs, Type::INT4)]).await
}

pub async fn mail_sent(router: &Router, id: Uuid) -> Result<(), DbError> {
    call(router, "SELECT authio_mail_sent($1)", &[(&id, Type::UUID)]).await.map(|_| ())
}

pub async fn mail_failed(
    router: &Router,
    id: Uuid,
    error: &str,
    next: DateTime<Utc>,
    give_up: bool,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    let params: [crate::Param<'_>; 5] = [
        (&id, Type::UUID),
        (&error, Type::TEXT),
        (&next, Type::TIMESTAMPTZ),
        (&give_up, Type::BOOL),
        (&now, Type::TIMESTAMPTZ),
    ];
    call(router, "SELECT authio_mail_failed($1, $2, $3, $4, $5)", &params).await.map(|_| ())
}

/// Drop one-time tokens a day past their end; returns how many.
pub async fn one_time_gc(router: &Router, now: DateTime<Utc>) -> Result<i32, DbError> {
    let rows = call(router, "SELECT authio_one_time_gc($1)", &[(&now, Type::TIMESTAMPTZ)]).await?;
    rows.first().map(|r| r.try_get(0)).transpose().map(|v| v.unwrap_or(0))
}

/// Take up to `limit` due webhook endpoints for `lease_secs`: (tenant_id, project_id, endpoint_id).
pub async fn webhook_take(
    router: &Router,
    limit: i32,
    now: DateTime<Utc>,
    lease_secs: i32,
) -> Result<Vec<crate::PgRow>, DbError> {
    let sql = "SELECT tenant_id, project_id, endpoint_id, leased_until FROM authio_webhook_take($1, $2, $3)";
    call(router, sql, &[(&limit, Type::INT4), (&now, Type::TIMESTAMPTZ), (&lease_secs, Type::INT4)]).await
}

/// Make a webhook endpoint due no later than `due`, leaving a node's lease on it alone.
pub async fn webhook_nudge(router: &Router, tenant: Uuid, endpoint: Uuid, due: DateTime<Utc>) -> Result<(), DbError> {
    let sql = "SELECT authio_webhook_nudge($1, $2, $3)";
    call(router, sql, &[(&tenant, Type::UUID), (&endpoint, Type::UUID), (&due, Type::TIMESTAMPTZ)]).await.map(|_| ())
}

/// Give back a webhook endpoint taken with lease `lease`: next due at `due` (or sooner, if it
/// was nudged meanwhile). Nothing changes if the lease lapsed and another node holds it.
pub async fn webhook_give_back(
    router: &Router,
    tenant: Uuid,
    endpoint: Uuid,
    lease: DateTime<Utc>,
    due: DateTime<Utc>,
) -> Result<(), DbError> {
    let sql = "SELECT authio_webhook_give_back($1, $2, $3, $4)";
    call(
        router,
        sql,
        &[(&tenant, Type::UUID), (&endpoint, Type::UUID), (&lease, Type::TIMESTAMPTZ), (&due, Type::TIMESTAMPTZ)],
    )
    .await
    .map(|_| ())
}
