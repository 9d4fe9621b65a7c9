//! Directory sync over HTTP: the SCIM 2.0 endpoints of a directory (`/scim/v2/{directory}/...`,
//! answered in SCIM's own shapes, errors as RFC 7644 3.12 says), and the management of an
//! organization's directories (`/v1/projects/{id}/organizations/{org}/directories`).
use std::net::SocketAddr;

use authio_core::authz::Permission;
use authio_core::dsync::scim::{ListQuery, Projection, ScimError};
use authio_core::dsync::{DirectoryCtx, DirectoryPatch, NewDirectory};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::context::RequestContext;
use crate::extract::json_body;
use crate::routes::auth::{client_info, client_ip};
use crate::{ApiError, AppState};

const SCIM_JSON: &str = "application/scim+json";

fn scim(status: StatusCode, body: Value) -> Response {
    let mut resp = (status, [(header::CONTENT_TYPE, SCIM_JSON)], body.to_string()).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub(crate) fn scim_error(e: ScimError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = scim(status, e.body());
    if let Some(secs) = e.retry_after {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if e.status == 401 {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

async fn directory(state: &AppState, raw: &str, headers: &HeaderMap) -> Result<DirectoryCtx, ScimError> {
    // An id that is not one answers as an unknown directory does: the same 401.
    let id = Uuid::parse_str(raw).unwrap_or(Uuid::nil());
    state.dsync.authenticate(id, bearer(headers)).await
}

fn body_of(body: &Bytes) -> Result<Value, ScimError> {
    serde_json::from_slice(body).map_err(|_| ScimError::new(400, Some("invalidSyntax"), "the body is not JSON"))
}

macro_rules! scim_try {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return scim_error(e),
        }
    };
}

fn who(
    state: &AppState,
    connect: Option<&Extension<ConnectInfo<SocketAddr>>>,
    headers: &HeaderMap,
) -> authio_core::types::ClientInfo {
    client_info(headers, client_ip(state, connect, headers))
}

pub async fn service_provider_config(
    State(state): State<AppState>,
    Path(d): Path<String>,
    headers: HeaderMap,
) -> Response {
    let ctx = scim_try!(directory(&state, &d, &headers).await);
    scim(StatusCode::OK, authio_core::dsync::scim::service_provider_config(&ctx.base))
}

pub async fn resource_types(State(state): State<AppState>, Path(d): Path<String>, headers: HeaderMap) -> Response {
    let ctx = scim_try!(directory(&state, &d, &headers).await);
    scim(StatusCode::OK, authio_core::dsync::scim::resource_types(&ctx.base))
}

pub async fn resource_type(
    State(state): State<AppState>,
    Path((d, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let ctx = scim_try!(directory(&state, &d, &headers).await);
    let all = authio_core::dsync::scim::resource_types(&ctx.base);
    one_of(&all, &id)
}

pub async fn schemas(State(state): State<AppState>, Path(d): Path<String>, headers: HeaderMap) -> Response {
    let ctx = scim_try!(directory(&state, &d, &headers).await);
    scim(StatusCode::OK, authio_core::dsync::scim::schemas(&ctx.base))
}

pub async fn schema(
    State(state): State<AppState>,
    Path((d, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let ctx = scim_try!(directory(&state, &d, &headers).await);
    let all = authio_core::dsync::scim::schemas(&ctx.base);
    one_of(&all, &id)
}

fn one_of(list: &Value, id: &str) -> Response {
    let found = list["Resources"].as_array().and_then(|a| a.iter().find(|r| r["id"].as_str() == Some(id)).cloned());
    match found {
        Some(r) => scim(StatusCode::OK, r),
        None => scim_error(ScimError::new(404, None, "not found")),
    }
}

pub async fn list_users(
    State(state): State<AppState>,
    Path(d): Path<String>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let ctx = scim_try!(directory(&state, &d, &headers).await);
    scim(StatusCode::OK, scim_try!(state.dsync.list_users(&ctx, &q).await))
}

pub async fn get_user(
    State(state): State<AppState>,
    Path((d, id)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let ctx = scim_try!(directory(&state, &d, &headers).await);
    let proj = Projection::parse(q.attributes.as_deref(), q.excluded_attributes.as_deref());
    scim(StatusCode::OK, scim_try!(state.dsync.get_user(&ctx, &id, &proj).await))
}

pub async fn create_user(
    State(state): State<AppState>,
    Path(d): Path<String>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = scim_try!(directory(&state, &d, &headers).await);
    let body = scim_try!(body_of(&body));
    let client = who(&state, connect.as_ref(), &headers);
    created(scim_try!(state.dsync.create_user(&ctx, &body, &client).await))
}

/// 201 with the new resource's URL in `Location` (RFC 7644 3.3).
fn created(resource: Value) -> Response {
    let location = resource["meta"]["location"].as_str().and_then(|l| HeaderValue::from_str(l).ok());
    let mut resp = scim(StatusCode::CREATED, resource);
    if let Some(l) = location {
        resp.headers_mut().insert(header::LOCATION, l);
    }
    resp
}

pub async fn replace_user(
    State(state): State<AppState>,
    Path((d, id)): Path<(String, String)>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = scim_try!(directory(&state, &d, &headers).await);
    let body = scim_try!(body_of(&body));
    let client = who(&state, connect.as_ref(), &headers);
    scim(StatusCode::OK, scim_try!(state.dsync.replace_user(&ctx, &id, &body, &client).await))
}

pub async fn patch_user(
    State(state): State<AppState>,
    Path((d, id)): Path<(String, String)>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = scim_try!(directory(&state, &d, &headers).await);
    let body = scim_try!(body_of(&body));
    let client = who(&state, connect.as_ref(), &headers);
    scim(StatusCode::OK, scim_try!(state.dsync.patch_user(&ctx, &id, &body, &client).await))
}

pub async fn delete_user(
    State(state): State<AppState>,
    Path((d, id)): Path<(String, String)>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    let ctx = scim_try!(directory(&state, &d, &headers).await);
    let client = who(&state, connect.as_ref(), &headers);
    scim_try!(state.dsync.delete_user(&ctx, &id, &client).await);
    StatusCode::NO_CONTENT.into_response()
}

pub async fn list_groups(
    State(state): State<AppState>,
    Path(d): Path<String>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let ctx = scim_try!(directory(&state, &d, &headers).await);
    scim(StatusCode::OK, scim_try!(state.dsync.list_groups(&ctx, &q).await))
}

pub async fn get_group(
    State(state): State<AppState>,
    Path((d, id)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let ctx = scim_try!(directory(&state, &d, &headers).await);
    let proj = Projection::parse(q.attributes.as_deref(), q.excluded_attributes.as_deref());
    scim(StatusCode::OK, scim_try!(state.dsync.get_group(&ctx, &id, &proj).await))
}

pub async fn create_group(
    State(state): State<AppState>,
    Path(d): Path<String>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = scim_try!(directory(&state, &d, &headers).await);
    let body = scim_try!(body_of(&body));
    let client = who(&state, connect.as_ref(), &headers);
    created(scim_try!(state.dsync.create_group(&ctx, &body, &client).await))
}

pub async fn replace_group(
    State(state): State<AppState>,
    Path((d, id)): Path<(String, String)>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = scim_try!(directory(&state, &d, &headers).await);
    let body = scim_try!(body_of(&body));
    let client = who(&state, connect.as_ref(), &headers);
    scim(StatusCode::OK, scim_try!(state.dsync.replace_group(&ctx, &id, &body, &client).await))
}

pub async fn patch_group(
    State(state): State<AppState>,
    Path((d, id)): Path<(String, String)>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ctx = scim_try!(directory(&state, &d, &headers).await);
    let body = scim_try!(body_of(&body));
    let client = who(&state, connect.as_ref(), &headers);
    scim(StatusCode::OK, scim_try!(state.dsync.patch_group(&ctx, &id, &body, &client).await))
}

pub async fn delete_group(
    State(state): State<AppState>,
    Path((d, id)): Path<(String, String)>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    let ctx = scim_try!(directory(&state, &d, &headers).await);
    let client = who(&state, connect.as_ref(), &headers);
    scim_try!(state.dsync.delete_group(&ctx, &id, &client).await);
    StatusCode::NO_CONTENT.into_response()
}

/// Anything else under `/scim/v2/`: SCIM's 404 (or 405), never another shape.
pub async fn not_found() -> Response {
    scim_error(ScimError::new(404, None, "no such SCIM endpoint"))
}

/// `POST /.search` (RFC 7644 3.4.3) is not offered: 501, as the RFC has it for an
/// unsupported feature.
pub async fn search_not_implemented() -> Response {
    scim_error(ScimError::new(501, None, "searching with POST is not supported; use GET with a filter"))
}

pub async fn not_allowed() -> Response {
    scim_error(ScimError::new(405, None, "this method is not supported here"))
}

// ---- Management ----

#[derive(Serialize, ToSchema)]
pub struct DirectoryBody {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub name: String,
    /// Group display name -> role slug.
    #[schema(value_type = Object)]
    pub group_roles: Value,
    pub has_token: bool,
    /// What the identity provider is configured with (SCIM base URL).
    pub scim_base_url: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Shown once, when the directory is made or its token rotated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl DirectoryBody {
    fn of(d: authio_core::dsync::Directory, token: Option<String>) -> Self {
        DirectoryBody {
            id: d.id,
            organization_id: d.organization_id,
            name: d.name,
            group_roles: d.group_roles,
            has_token: d.has_token,
            scim_base_url: d.scim_base_url,
            created_at: d.created_at,
            token,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DirectoryList {
    pub data: Vec<DirectoryBody>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenBody {
    /// The directory's bearer token: shown this once, stored only as a hash.
    pub token: String,
}

fn ids(org: &str, dir: Option<&str>) -> Result<(Uuid, Option<Uuid>), ApiError> {
    let org =
        Uuid::parse_str(org).map_err(|_| ApiError::not_found("organization_not_found", "organization not found"))?;
    let dir = dir
        .map(|d| Uuid::parse_str(d).map_err(|_| ApiError::not_found("directory_not_found", "directory not found")))
        .transpose()?;
    Ok((org, dir))
}

/// Make a SCIM directory for an organization: `{"name", "group_roles"?: {group: role}}`. The
/// answer holds the bearer token, once.
#[utoipa::path(post, path = "/v1/projects/{project_id}/organizations/{org_id}/directories", tag = "organizations",
    params(("project_id" = Uuid, Path), ("org_id" = Uuid, Path)), security(("project_api_key" = [])),
    request_body(content = Object),
    responses((status = 201, body = DirectoryBody),
        (status = 404, description = "`organization_not_found`, `role_not_found`", body = crate::error::ErrorBody)))]
pub async fn create_directory(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_p, org)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<DirectoryBody>), ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let (org, _) = ids(&org, None)?;
    let new: NewDirectory = json_body(&headers, &body)?;
    let (d, token) = state.dsync.create_directory(&auth, org, &new, &client_info(&headers, None)).await?;
    Ok((StatusCode::CREATED, Json(DirectoryBody::of(d, Some(token)))))
}

/// An organization's directories (never their tokens).
#[utoipa::path(get, path = "/v1/projects/{project_id}/organizations/{org_id}/directories", tag = "organizations",
    params(("project_id" = Uuid, Path), ("org_id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 200, body = DirectoryList), (status = 404, description = "`organization_not_found`", body = crate::error::ErrorBody)))]
pub async fn list_directories(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_p, org)): Path<(String, String)>,
) -> Result<Json<DirectoryList>, ApiError> {
    let auth = ctx.authorize(Permission::ProjectRead)?;
    let (org, _) = ids(&org, None)?;
    let list = state.dsync.list_directories(&auth, org).await?;
    Ok(Json(DirectoryList { data: list.into_iter().map(|d| DirectoryBody::of(d, None)).collect() }))
}

/// Change a directory's name or group map (`{"name"?, "group_roles"?}`).
#[utoipa::path(patch, path = "/v1/projects/{project_id}/organizations/{org_id}/directories/{id}", tag = "organizations",
    params(("project_id" = Uuid, Path), ("org_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    request_body(content = Object),
    responses((status = 200, body = DirectoryBody), (status = 404, description = "`directory_not_found`, `role_not_found`", body = crate::error::ErrorBody)))]
pub async fn update_directory(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_p, org, id)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<DirectoryBody>, ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let (org, id) = ids(&org, Some(&id))?;
    let patch: DirectoryPatch = json_body(&headers, &body)?;
    let d =
        state.dsync.update_directory(&auth, org, id.unwrap_or_default(), &patch, &client_info(&headers, None)).await?;
    Ok(Json(DirectoryBody::of(d, None)))
}

/// Delete a directory: its token stops working, its users and groups go (the Authio users
/// and their memberships stay).
#[utoipa::path(delete, path = "/v1/projects/{project_id}/organizations/{org_id}/directories/{id}", tag = "organizations",
    params(("project_id" = Uuid, Path), ("org_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 204), (status = 404, description = "`directory_not_found`", body = crate::error::ErrorBody)))]
pub async fn delete_directory(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_p, org, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let (org, id) = ids(&org, Some(&id))?;
    state.dsync.delete_directory(&auth, org, id.unwrap_or_default(), &client_info(&headers, None)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new bearer token (shown once); the old one stops working at once.
#[utoipa::path(post, path = "/v1/projects/{project_id}/organizations/{org_id}/directories/{id}/token", tag = "organizations",
    params(("project_id" = Uuid, Path), ("org_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 201, body = TokenBody), (status = 404, description = "`directory_not_found`", body = crate::error::ErrorBody)))]
pub async fn rotate_token(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_p, org, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<TokenBody>), ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let (org, id) = ids(&org, Some(&id))?;
    let token = state.dsync.rotate_token(&auth, org, id.unwrap_or_default(), &client_info(&headers, None)).await?;
    Ok((StatusCode::CREATED, Json(TokenBody { token })))
}

/// Revoke the bearer token: the directory answers nothing until a new one is made.
#[utoipa::path(delete, path = "/v1/projects/{project_id}/organizations/{org_id}/directories/{id}/token", tag = "organizations",
    params(("project_id" = Uuid, Path), ("org_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 204), (status = 404, description = "`directory_not_found`", body = crate::error::ErrorBody)))]
pub async fn revoke_token(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_p, org, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let (org, id) = ids(&org, Some(&id))?;
    state.dsync.revoke_token(&auth, org, id.unwrap_or_default(), &client_info(&headers, None)).await?;
    Ok(StatusCode::NO_CONTENT)
}
