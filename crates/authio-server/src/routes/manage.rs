//! Project management beyond users and API keys: M2M clients, sessions, token settings.
use authio_core::authz::Permission;
use authio_core::identity::m2m::{self, NewClient};
use authio_core::identity::sessions::{self, SessionInfo};
use authio_core::project::settings::{self as projects, SettingsPatch};
use authio_core::types::DisplayName;
use axum::body::Bytes;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::extract::json_body;
use crate::routes::auth::{client_info, client_ip};
use crate::{ApiError, AppState, RequestContext};

fn path_id(raw: &str, code: &'static str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(code, &format!("{what} not found")))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateClientRequest {
    pub name: String,
    /// Scopes the client may ask for (RFC 6749 scope tokens).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The `aud` of its tokens (default: the project's id), and the one RFC 8707 `resource`
    /// it may ask for.
    #[schema(min_length = 1, max_length = 512)]
    pub audience: Option<String>,
    /// Lifetime of its tokens, 60-86400 s (default 3600).
    #[schema(minimum = 60, maximum = 86400)]
    pub token_ttl_secs: Option<i32>,
}

#[derive(Serialize, ToSchema)]
pub struct ClientResponse {
    pub id: Uuid,
    pub client_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub audience: String,
    pub token_ttl_secs: i32,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<m2m::ClientInfo> for ClientResponse {
    fn from(c: m2m::ClientInfo) -> Self {
        ClientResponse {
            id: c.id,
            client_id: c.client_id,
            name: c.name,
            scopes: c.scopes,
            audience: c.audience,
            token_ttl_secs: c.token_ttl_secs,
            created_at: c.created_at,
            revoked_at: c.revoked_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CreatedClientResponse {
    #[serde(flatten)]
    pub client: ClientResponse,
    /// Shown once: only a hash is stored.
    pub client_secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct ClientList {
    pub data: Vec<ClientResponse>,
}

/// Create an M2M client (its secret is shown once).
#[utoipa::path(post, path = "/v1/projects/{project_id}/m2m-clients", tag = "m2m",
    params(("project_id" = Uuid, Path, description = "the project")),
    request_body = CreateClientRequest, security(("project_api_key" = [])),
    responses(
        (status = 201, description = "created", body = CreatedClientResponse),
        (status = 401, description = "missing or invalid credentials", body = crate::error::ErrorBody),
        (status = 422, description = "invalid field", body = crate::error::ErrorBody),
    ))]
pub async fn create_client(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<CreatedClientResponse>), ApiError> {
    let auth = ctx.authorize(Permission::CredentialsManage)?;
    let req: CreateClientRequest = json_body(&headers, &body)?;
    let name = DisplayName::parse(&req.name).map_err(authio_core::CoreError::from)?;
    let new = NewClient { name, scopes: req.scopes, audience: req.audience, token_ttl_secs: req.token_ttl_secs };
    let project = auth.scope()?.project_id.unwrap_or_default();
    // Every access token's default audience is its project's id (user, OpenID and M2M alike).
    let issuer = project.to_string();
    let client = client_info(&headers, None);
    let created = m2m::create(&state.router, state.clock.as_ref(), &auth, &issuer, &new, &client).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedClientResponse { client: created.info.into(), client_secret: created.client_secret }),
    ))
}

/// List the project's M2M clients (never their secrets).
#[utoipa::path(get, path = "/v1/projects/{project_id}/m2m-clients", tag = "m2m",
    params(("project_id" = Uuid, Path, description = "the project")), security(("project_api_key" = [])),
    responses((status = 200, description = "the clients, revoked ones included", body = ClientList)))]
pub async fn list_clients(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
) -> Result<Json<ClientList>, ApiError> {
    let auth = ctx.authorize(Permission::ProjectRead)?;
    let clients = m2m::list(&state.router, &auth).await?;
    Ok(Json(ClientList { data: clients.into_iter().map(Into::into).collect() }))
}

/// Revoke an M2M client: its secret stops working at once.
#[utoipa::path(delete, path = "/v1/projects/{project_id}/m2m-clients/{id}", tag = "m2m",
    params(("project_id" = Uuid, Path, description = "the project"), ("id" = Uuid, Path, description = "the client's id")),
    security(("project_api_key" = [])),
    responses(
        (status = 200, description = "revoked", body = ClientResponse),
        (status = 404, description = "`client_not_found`", body = crate::error::ErrorBody),
    ))]
pub async fn revoke_client(
    State(state): State<AppState>,
    ctx: RequestContext,
    headers: HeaderMap,
    Path((_project_id, id)): Path<(String, String)>,
) -> Result<Json<ClientResponse>, ApiError> {
    let auth = ctx.authorize(Permission::CredentialsManage)?;
    let id = path_id(&id, "client_not_found", "client")?;
    let info = client_info(&headers, None);
    let client = m2m::revoke(&state.router, state.clock.as_ref(), &auth, id, &info).await?;
    state.identity.forget_credential("client", &client.client_id);
    Ok(Json(client.into()))
}

#[derive(Serialize, ToSchema)]
pub struct SessionResponse {
    pub id: Uuid,
    pub user_id: Uuid,
    pub amr: Vec<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_active_at: DateTime<Utc>,
    pub idle_expires_at: DateTime<Utc>,
    pub absolute_expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_reason: Option<String>,
    /// Set on an impersonation session: who acts as the user (`act.sub` of its tokens).
    pub impersonator: Option<String>,
    pub impersonation_reason: Option<String>,
}

impl From<SessionInfo> for SessionResponse {
    fn from(s: SessionInfo) -> Self {
        SessionResponse {
            id: s.id,
            user_id: s.user_id,
            amr: s.amr,
            ip: s.ip,
            user_agent: s.user_agent,
            created_at: s.created_at,
            last_active_at: s.last_active_at,
            idle_expires_at: s.idle_expires_at,
            absolute_expires_at: s.absolute_expires_at,
            revoked_at: s.revoked_at,
            revoked_reason: s.revoked_reason,
            impersonator: s.impersonator,
            impersonation_reason: s.impersonation_reason,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct SessionList {
    pub data: Vec<SessionResponse>,
}

/// A user's sessions, newest first.
#[utoipa::path(get, path = "/v1/projects/{project_id}/users/{user_id}/sessions", tag = "sessions",
    params(("project_id" = Uuid, Path, description = "the project"), ("user_id" = Uuid, Path, description = "the user")),
    security(("project_api_key" = [])),
    responses((status = 200, description = "sessions, live and ended", body = SessionList)))]
pub async fn list_sessions(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, user_id)): Path<(String, String)>,
) -> Result<Json<SessionList>, ApiError> {
    let auth = ctx.authorize(Permission::UsersRead)?;
    let user = path_id(&user_id, "user_not_found", "user")?;
    let list = sessions::list_for_user(&state.router, &auth, user).await?;
    Ok(Json(SessionList { data: list.into_iter().map(Into::into).collect() }))
}

/// Revoke a session: its refresh tokens stop working, its access tokens fail introspection.
#[utoipa::path(delete, path = "/v1/projects/{project_id}/sessions/{session_id}", tag = "sessions",
    params(("project_id" = Uuid, Path, description = "the project"), ("session_id" = Uuid, Path, description = "the session")),
    security(("project_api_key" = [])),
    responses(
        (status = 200, description = "revoked (again is not an error)", body = SessionResponse),
        (status = 404, description = "`session_not_found`", body = crate::error::ErrorBody),
    ))]
pub async fn revoke_session(
    State(state): State<AppState>,
    ctx: RequestContext,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Path((_project_id, session_id)): Path<(String, String)>,
) -> Result<Json<SessionResponse>, ApiError> {
    let auth = ctx.authorize(Permission::UsersManage)?;
    let sid = path_id(&session_id, "session_not_found", "session")?;
    let client = client_info(&headers, client_ip(&state, connect.as_ref(), &headers));
    let revoked = sessions::revoke_managed(&state.router, state.clock.as_ref(), &auth, sid, &client).await?;
    Ok(Json(revoked.into()))
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SettingsBody {
    /// `EdDSA`, `ES256` or `RS256`: the algorithm of keys made from now on.
    #[schema(pattern = "^(EdDSA|ES256|RS256)$")]
    pub signing_alg: Option<String>,
    #[schema(minimum = 60, maximum = 86400)]
    pub access_token_ttl_secs: Option<i32>,
    #[schema(minimum = 300, maximum = 31536000)]
    pub session_idle_timeout_secs: Option<i32>,
    #[schema(minimum = 300, maximum = 31536000)]
    pub session_absolute_timeout_secs: Option<i32>,
    #[schema(minimum = 0, maximum = 120)]
    pub refresh_grace_secs: Option<i32>,
}

impl From<projects::ProjectSettings> for SettingsBody {
    fn from(s: projects::ProjectSettings) -> Self {
        SettingsBody {
            signing_alg: Some(s.signing_alg),
            access_token_ttl_secs: Some(s.access_token_ttl_secs),
            session_idle_timeout_secs: Some(s.session_idle_timeout_secs),
            session_absolute_timeout_secs: Some(s.session_absolute_timeout_secs),
            refresh_grace_secs: Some(s.refresh_grace_secs),
        }
    }
}

/// The project's token and session settings.
#[utoipa::path(get, path = "/v1/projects/{project_id}/settings", tag = "projects",
    params(("project_id" = Uuid, Path, description = "the project")), security(("project_api_key" = [])),
    responses((status = 200, description = "settings", body = SettingsBody)))]
pub async fn get_settings(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
) -> Result<Json<SettingsBody>, ApiError> {
    let auth = ctx.authorize(Permission::ProjectRead)?;
    Ok(Json(projects::settings(&state.router, &auth).await?.into()))
}

/// Change token lifetimes, session idle and absolute timeouts, the refresh grace window, or
/// the algorithm of future keys. Absent fields are left alone.
#[utoipa::path(patch, path = "/v1/projects/{project_id}/settings", tag = "projects",
    params(("project_id" = Uuid, Path, description = "the project")), request_body = SettingsBody,
    security(("project_api_key" = [])),
    responses(
        (status = 200, description = "the settings now", body = SettingsBody),
        (status = 422, description = "a value out of range", body = crate::error::ErrorBody),
    ))]
pub async fn update_settings(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<SettingsBody>, ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let patch: SettingsPatch = json_body(&headers, &body)?;
    let client = client_info(&headers, None);
    let updated = projects::update_settings(&state.router, state.clock.as_ref(), &auth, &patch, &client).await?;
    if let Some(p) = auth.scope()?.project_id {
        state.identity.forget_profile(p);
    }
    Ok(Json(updated.into()))
}

#[derive(Serialize, ToSchema)]
pub struct AuditEventList {
    /// Newest first.
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<authio_core::audit::EventView>,
    /// Pass as `before` for the next (older) page; null on the last page.
    pub next_cursor: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    action: Option<String>,
    actor_id: Option<String>,
    target_id: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    before: Option<i64>,
    limit: Option<i64>,
}

/// A text filter: at most 320 characters, no control characters (PostgreSQL refuses NUL).
fn check_filter(v: &Option<String>, name: &str) -> Result<(), ApiError> {
    match v {
        Some(s) if s.chars().count() > 320 || s.chars().any(char::is_control) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("{name}: at most 320 characters, no control characters"),
        )),
        _ => Ok(()),
    }
}

/// The project's audit events, newest first, with filters and cursor pagination.
#[utoipa::path(get, path = "/v1/projects/{project_id}/audit-events", tag = "audit",
    params(("project_id" = Uuid, Path, description = "the project"),
           ("action" = Option<String>, Query, description = "e.g. user.signed_in"),
           ("actor_id" = Option<String>, Query), ("target_id" = Option<String>, Query),
           ("since" = Option<String>, Query, description = "RFC 3339, inclusive"),
           ("until" = Option<String>, Query, description = "RFC 3339, exclusive"),
           ("before" = Option<i64>, Query, description = "cursor: the next_cursor of the previous page"),
           ("limit" = Option<i64>, Query, description = "1-500, default 100")),
    security(("project_api_key" = [])),
    responses(
        (status = 200, description = "a page of events", body = AuditEventList),
        (status = 400, description = "a malformed filter (`invalid_request`)", body = crate::error::ErrorBody),
    ))]
pub async fn list_audit_events(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<AuditEventList>, ApiError> {
    let auth = ctx.authorize(Permission::AuditRead)?;
    let q: AuditQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", format!("bad query: {e}")))?;
    check_filter(&q.action, "action")?;
    check_filter(&q.actor_id, "actor_id")?;
    check_filter(&q.target_id, "target_id")?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", "limit: 1 to 500"));
    }
    let filter = authio_core::audit::Filter {
        action: q.action,
        actor_id: q.actor_id,
        target_id: q.target_id,
        since: q.since,
        until: q.until,
    };
    let data = authio_core::audit::list(&state.router, &auth, &filter, limit, q.before).await?;
    let next_cursor = if data.len() as i64 == limit { data.last().map(|e| e.seq) } else { None };
    Ok(Json(AuditEventList { data, next_cursor }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    format: Option<String>,
    action: Option<String>,
    actor_id: Option<String>,
    target_id: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
}

/// One CSV cell: quoted when it must be, and a leading `=`, `+`, `-`, `@`, tab or carriage
/// return defused so a spreadsheet does not run it as a formula.
fn csv_cell(v: &str) -> String {
    let v = if v.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{v}") } else { v.to_owned() };
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v
    }
}

const CSV_HEADER: &str = "id,seq,occurred_at,action,actor_type,actor_id,actor_name,target_type,target_id,ip,user_agent,request_id,metadata\n";

fn csv_line(e: &authio_core::audit::EventView) -> String {
    let o = |v: &Option<String>| csv_cell(v.as_deref().unwrap_or(""));
    let cells = [
        e.id.to_string(),
        e.seq.to_string(),
        e.occurred_at.to_rfc3339(),
        csv_cell(&e.action),
        csv_cell(&e.actor.kind),
        o(&e.actor.id),
        o(&e.actor.name),
        o(&e.target.as_ref().map(|t| t.kind.clone())),
        o(&e.target.as_ref().and_then(|t| t.id.clone())),
        o(&e.context.ip),
        o(&e.context.user_agent),
        o(&e.context.request_id),
        csv_cell(&e.metadata.to_string()),
    ];
    let mut line = cells.join(",");
    line.push('\n');
    line
}

/// Export the project's audit events (newest first) as NDJSON or CSV, streamed page by page.
#[utoipa::path(get, path = "/v1/projects/{project_id}/audit-events/export", tag = "audit",
    params(("project_id" = Uuid, Path, description = "the project"),
           ("format" = Option<String>, Query, description = "ndjson (default) or csv"),
           ("action" = Option<String>, Query), ("actor_id" = Option<String>, Query), ("target_id" = Option<String>, Query),
           ("since" = Option<String>, Query), ("until" = Option<String>, Query)),
    security(("project_api_key" = [])),
    responses(
        (status = 200, description = "application/x-ndjson or text/csv, streamed"),
        (status = 400, description = "a malformed filter or format", body = crate::error::ErrorBody),
    ))]
pub async fn export_audit_events(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<axum::response::Response, ApiError> {
    let auth = ctx.authorize(Permission::AuditRead)?;
    let q: ExportQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", format!("bad query: {e}")))?;
    check_filter(&q.action, "action")?;
    check_filter(&q.actor_id, "actor_id")?;
    check_filter(&q.target_id, "target_id")?;
    let csv = match q.format.as_deref() {
        None | Some("ndjson") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", "format: ndjson or csv")),
    };
    let filter = authio_core::audit::Filter {
        action: q.action,
        actor_id: q.actor_id,
        target_id: q.target_id,
        since: q.since,
        until: q.until,
    };
    Ok(audit_export(state, auth, filter, csv))
}

/// A project's audit events matching `filter`, streamed as NDJSON or CSV (the API's export
/// and the dashboard's).
pub(crate) fn audit_export(
    state: AppState,
    auth: authio_core::authz::Authorized,
    filter: authio_core::audit::Filter,
    csv: bool,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    const PAGE: i64 = 500;
    // (cursor, done, header sent)
    let start: (Option<i64>, bool, bool) = (None, false, !csv);
    let stream = futures_util::stream::unfold(start, move |(cursor, done, header_sent)| {
        let (router, auth, filter) = (state.router.clone(), auth.clone(), filter.clone());
        async move {
            if !header_sent {
                return Some((
                    Ok::<_, std::io::Error>(bytes::Bytes::from_static(CSV_HEADER.as_bytes())),
                    (cursor, done, true),
                ));
            }
            if done {
                return None;
            }
            let page = match authio_core::audit::list(&router, &auth, &filter, PAGE, cursor).await {
                Ok(p) => p,
                Err(e) => return Some((Err(std::io::Error::other(e.to_string())), (cursor, true, true))),
            };
            let next = page.last().map(|e| e.seq);
            let finished = (page.len() as i64) < PAGE;
            let mut chunk = String::new();
            for e in &page {
                if csv {
                    chunk.push_str(&csv_line(e));
                } else {
                    chunk.push_str(&serde_json::to_string(e).unwrap_or_default());
                    chunk.push('\n');
                }
            }
            Some((Ok(bytes::Bytes::from(chunk)), (next, finished, true)))
        }
    });
    let content_type = if csv { "text/csv; charset=utf-8" } else { "application/x-ndjson" };
    let name = if csv { "audit-events.csv" } else { "audit-events.ndjson" };
    (
        [
            (axum::http::header::CONTENT_TYPE, content_type.to_owned()),
            (axum::http::header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::csv_cell;

    #[test]
    fn csv_cells_are_quoted_and_formulas_defused() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_cell("\t=1"), "'\t=1");
    }
}
