//! Client registration for clients the project's administrators do not know (MCP clients,
//! agents): RFC 7591 dynamic registration at `/p/{project}/oauth2/register` and RFC 7592's read
//! and delete with the registration access token; and the project's protected resources and
//! client blocking for its administrators.
use std::net::SocketAddr;

use authio_core::authz::Permission;
use authio_core::oidc::third_party::{self, NewResource, ProtectedResource, RegistrationRequest};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::context::RequestContext;
use crate::error::OAuthError;
use crate::extract::json_body;
use crate::routes::auth::{client_info, client_ip, no_store};
use crate::{ApiError, AppState};

fn project_of(raw: &str) -> Result<Uuid, OAuthError> {
    Uuid::parse_str(raw).map_err(|_| OAuthError {
        status: StatusCode::NOT_FOUND,
        error: "invalid_request",
        description: "no such project".into(),
        retry_after: None,
    })
}

fn registration_base(state: &AppState, project: Uuid) -> String {
    format!("{}/oauth2/register", state.identity.issuer(project))
}

/// The registration request's schema (documentation only: unknown metadata is ignored).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RegistrationBody {
    /// 1-20 redirect URIs (https, or loopback http for native clients).
    redirect_uris: Vec<String>,
    #[schema(max_length = 200)]
    client_name: Option<String>,
    /// https.
    client_uri: Option<String>,
    /// https.
    logo_uri: Option<String>,
    /// `none` (default); `client_secret_basic` or `client_secret_post` only where the project
    /// allows confidential registrations.
    token_endpoint_auth_method: Option<String>,
    grant_types: Option<Vec<String>>,
    response_types: Option<Vec<String>>,
    scope: Option<String>,
}

/// RFC 7591: register a client (where the project accepts dynamic registration). The
/// registration access token (RFC 7592) is shown once. A registration no authorization request
/// uses within a day is removed.
#[utoipa::path(post, path = "/p/{project_id}/oauth2/register", tag = "openid",
    params(("project_id" = Uuid, Path)), request_body = RegistrationBody,
    responses((status = 201, description = "registered: `client_id`, `registration_access_token`, `registration_client_uri` and the metadata"),
              (status = 400, description = "`invalid_redirect_uri`, `invalid_client_metadata`", body = crate::error::OAuthErrorBody),
              (status = 403, description = "the project does not accept dynamic registration", body = crate::error::OAuthErrorBody),
              (status = 429, description = "too many registrations from this address (`Retry-After`)", body = crate::error::OAuthErrorBody)))]
pub async fn register(
    State(state): State<AppState>,
    Path(project): Path<String>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let project = project_of(&project)?;
    let req: RegistrationRequest = json_body(&headers, &body).map_err(|e| OAuthError {
        status: StatusCode::BAD_REQUEST,
        error: "invalid_client_metadata",
        description: e.message,
        retry_after: None,
    })?;
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let base = registration_base(&state, project);
    let registered = state.oidc.register_dynamic(project, &req, &base, ip, &client_info(&headers, ip)).await?;
    Ok(no_store(StatusCode::CREATED, Json(registered)))
}

fn registration_token(headers: &HeaderMap) -> Result<&str, OAuthError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 256)
        .ok_or(OAuthError {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_token",
            description: "send the registration access token as a Bearer token".into(),
            retry_after: None,
        })
}

fn bad_token() -> OAuthError {
    // RFC 7592 2.1: an invalid token or unknown client is 401 (never a 404 that would say which).
    OAuthError {
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_token",
        description: "the registration access token is not valid for this client".into(),
        retry_after: None,
    }
}

/// RFC 7592 2.1: read a registration with its registration access token.
#[utoipa::path(get, path = "/p/{project_id}/oauth2/register/{client_id}", tag = "openid",
    params(("project_id" = Uuid, Path), ("client_id" = String, Path)),
    responses((status = 200, description = "the client's metadata"),
              (status = 401, description = "`invalid_token`", body = crate::error::OAuthErrorBody)))]
pub async fn read_registration(
    State(state): State<AppState>,
    Path((project, client_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, OAuthError> {
    let project = project_of(&project)?;
    let token = registration_token(&headers)?;
    let base = registration_base(&state, project);
    match state.oidc.read_registration(project, &client_id, token, &base).await {
        Ok(r) => Ok(no_store(StatusCode::OK, Json(r))),
        Err(authio_core::CoreError::InvalidToken(_)) => Err(bad_token()),
        Err(e) => Err(e.into()),
    }
}

/// RFC 7592 2.3: delete a registration (the client stops working at once).
#[utoipa::path(delete, path = "/p/{project_id}/oauth2/register/{client_id}", tag = "openid",
    params(("project_id" = Uuid, Path), ("client_id" = String, Path)),
    responses((status = 204), (status = 401, description = "`invalid_token`", body = crate::error::OAuthErrorBody)))]
pub async fn delete_registration(
    State(state): State<AppState>,
    Path((project, client_id)): Path<(String, String)>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Result<StatusCode, OAuthError> {
    let project = project_of(&project)?;
    let token = registration_token(&headers)?;
    let ip = client_ip(&state, connect.as_ref(), &headers);
    match state.oidc.delete_registration(project, &client_id, token, &client_info(&headers, ip)).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(authio_core::CoreError::InvalidToken(_)) => Err(bad_token()),
        Err(e) => Err(e.into()),
    }
}

// ---------------------------------------------------------------------------------------
// The project's administrators

#[derive(Serialize, ToSchema)]
pub struct ResourceBody {
    pub id: Uuid,
    /// The `resource` (RFC 8707) tokens for it name, and their `aud`.
    pub uri: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

impl From<ProtectedResource> for ResourceBody {
    fn from(r: ProtectedResource) -> Self {
        ResourceBody { id: r.id, uri: r.uri, name: r.name, scopes: r.scopes, created_at: r.created_at }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ResourceList {
    pub data: Vec<ResourceBody>,
}

/// `{"uri", "name"?, "scopes"?}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewResourceBody {
    /// An absolute URI without a fragment, e.g. `https://api.example.com/mcp`.
    #[schema(max_length = 512)]
    uri: String,
    #[schema(min_length = 1, max_length = 200)]
    name: Option<String>,
    /// Up to 50 scope tokens a client may ask for with this resource.
    scopes: Option<Vec<String>>,
}

/// Declare a protected resource (an API, an MCP server): clients may ask tokens for it with
/// `resource`, and its scopes with it.
#[utoipa::path(post, path = "/v1/projects/{project_id}/resources", tag = "openid",
    params(("project_id" = Uuid, Path)), security(("project_api_key" = [])), request_body = NewResourceBody,
    responses((status = 201, body = ResourceBody),
              (status = 409, description = "declared already (`conflict`)", body = crate::error::ErrorBody),
              (status = 422, description = "`invalid_request`", body = crate::error::ErrorBody)))]
pub async fn create_resource(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<ResourceBody>), ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let new: NewResource = json_body(&headers, &body)?;
    let r =
        third_party::create_resource(&state.router, state.clock.as_ref(), &auth, &new, &client_info(&headers, None))
            .await?;
    Ok((StatusCode::CREATED, Json(r.into())))
}

/// The project's protected resources.
#[utoipa::path(get, path = "/v1/projects/{project_id}/resources", tag = "openid",
    params(("project_id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 200, body = ResourceList)))]
pub async fn list_resources(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
) -> Result<Json<ResourceList>, ApiError> {
    let auth = ctx.authorize(Permission::ProjectRead)?;
    let data = third_party::list_resources(&state.router, &auth).await?.into_iter().map(Into::into).collect();
    Ok(Json(ResourceList { data }))
}

fn path_id(raw: &str, code: &'static str, message: &'static str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(code, message))
}

/// Remove a protected resource (tokens for it no longer issued).
#[utoipa::path(delete, path = "/v1/projects/{project_id}/resources/{id}", tag = "openid",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 204), (status = 404, description = "`resource_not_found`", body = crate::error::ErrorBody)))]
pub async fn delete_resource(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    third_party::delete_resource(&state.router, &auth, path_id(&id, "resource_not_found", "resource not found")?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Block a client (typically a third-party one): its authorization requests, code exchanges
/// and refreshes are refused (`client.blocked`). `DELETE` unblocks it.
#[utoipa::path(post, path = "/v1/projects/{project_id}/oidc-clients/{id}/block", tag = "openid",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 204), (status = 404, description = "`client_not_found`", body = crate::error::ErrorBody)))]
pub async fn block_client(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    set_blocked(state, ctx, id, headers, true).await
}

/// Unblock a client.
#[utoipa::path(delete, path = "/v1/projects/{project_id}/oidc-clients/{id}/block", tag = "openid",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 204), (status = 404, description = "`client_not_found`", body = crate::error::ErrorBody)))]
pub async fn unblock_client(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    set_blocked(state, ctx, id, headers, false).await
}

async fn set_blocked(
    state: AppState,
    ctx: RequestContext,
    id: String,
    headers: HeaderMap,
    blocked: bool,
) -> Result<StatusCode, ApiError> {
    let auth = ctx.authorize(Permission::CredentialsManage)?;
    let id = path_id(&id, "client_not_found", "client not found")?;
    third_party::block_client(&state.router, state.clock.as_ref(), &auth, id, blocked, &client_info(&headers, None))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
