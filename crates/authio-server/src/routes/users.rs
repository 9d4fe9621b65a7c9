//! `/v1/projects/{project_id}/users`: create and list a project's users (project API key).
use authio_core::authz::Permission;
use authio_core::identity::users;
use authio_core::types::Email;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::extract::json_body;
use crate::{ApiError, AppState, RequestContext};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    /// Normalised (trimmed, Unicode NFC, lower-cased, the domain in ASCII); unique within
    /// the project.
    #[schema(format = "email", min_length = 3, max_length = 254)]
    pub email: String,
}

#[derive(Serialize, ToSchema)]
pub struct UserResponse {
    pub id: Uuid,
    pub project_id: Uuid,
    pub email: String,
    pub email_verified: bool,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// From the person's single sign-on provider (kept up to date at each sign-in through it).
    pub given_name: Option<String>,
    pub family_name: Option<String>,
}

impl From<users::User> for UserResponse {
    fn from(u: users::User) -> Self {
        UserResponse {
            id: u.id,
            project_id: u.project_id,
            email: u.email,
            email_verified: u.email_verified,
            disabled: u.disabled,
            created_at: u.created_at,
            updated_at: u.updated_at,
            given_name: u.given_name,
            family_name: u.family_name,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct UserList {
    pub data: Vec<UserResponse>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_cursor: Option<Uuid>,
}

/// Create a user.
#[utoipa::path(post, path = "/v1/projects/{project_id}/users", tag = "users",
    params(("project_id" = Uuid, Path, description = "the project")),
    request_body = CreateUserRequest,
    security(("project_api_key" = [])),
    responses(
        (status = 201, description = "created", body = UserResponse),
        (status = 400, description = "malformed JSON (`malformed_json`)", body = crate::error::ErrorBody),
        (status = 401, description = "missing or invalid API key", body = crate::error::ErrorBody),
        (status = 404, description = "unknown project (`project_not_found`)", body = crate::error::ErrorBody),
        (status = 409, description = "email already used (`email_taken`)", body = crate::error::ErrorBody),
        (status = 415, description = "not JSON", body = crate::error::ErrorBody),
        (status = 422, description = "invalid email (`invalid_email`) or fields (`invalid_request`)", body = crate::error::ErrorBody),
        (status = 503, description = "the tenant's database is unavailable", body = crate::error::ErrorBody),
    ))]
pub async fn create_user(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<UserResponse>), ApiError> {
    let auth = ctx.authorize(Permission::UsersManage)?;
    let req: CreateUserRequest = json_body(&headers, &body)?;
    let email = Email::parse(&req.email).map_err(authio_core::CoreError::from)?;
    let client = crate::routes::auth::client_info(&headers, None);
    let user = users::create_by(&state.router, state.clock.as_ref(), &auth, &email, &client).await?;
    Ok((StatusCode::CREATED, Json(user.into())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<i64>,
    after: Option<Uuid>,
}

/// List users, oldest first, with cursor pagination.
#[utoipa::path(get, path = "/v1/projects/{project_id}/users", tag = "users",
    params(("project_id" = Uuid, Path, description = "the project"),
        ("limit" = Option<i64>, Query, description = "1-200, default 50", minimum = 1, maximum = 200),
        ("after" = Option<Uuid>, Query, description = "cursor from the previous page")),
    security(("project_api_key" = [])),
    responses(
        (status = 200, description = "a page of users", body = UserList),
        (status = 400, description = "bad query (`invalid_query`)", body = crate::error::ErrorBody),
        (status = 401, description = "missing or invalid API key", body = crate::error::ErrorBody),
        (status = 404, description = "unknown project", body = crate::error::ErrorBody),
        (status = 503, description = "the tenant's database is unavailable", body = crate::error::ErrorBody),
    ))]
pub async fn list_users(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<UserList>, ApiError> {
    let auth = ctx.authorize(Permission::UsersRead)?;
    let q: ListQuery = parse_list_query(query.as_deref().unwrap_or(""))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", "limit must be between 1 and 200"));
    }
    let page = users::list(&state.router, &auth, limit, q.after).await?;
    let next_cursor = if page.len() as i64 == limit { page.last().map(|u| u.id) } else { None };
    Ok(Json(UserList { data: page.into_iter().map(Into::into).collect(), next_cursor }))
}

/// Parse `limit` and `after` from a query string.
fn parse_list_query(query: &str) -> Result<ListQuery, ApiError> {
    let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", m);
    let mut q = ListQuery { limit: None, after: None };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "limit" => q.limit = Some(v.parse().map_err(|_| bad("limit must be an integer"))?),
            "after" => q.after = Some(Uuid::parse_str(v).map_err(|_| bad("after must be a user id"))?),
            _ => return Err(bad("unknown query parameter")),
        }
    }
    Ok(q)
}

/// `POST .../users/{user_id}/impersonate`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ImpersonateBody {
    /// Why: kept with the session and in the audit log.
    #[schema(min_length = 1, max_length = 500)]
    reason: String,
    /// How long the session lasts: 1-60 minutes, 15 by default.
    #[schema(minimum = 1, maximum = 60)]
    minutes: Option<i64>,
}

/// A started impersonation: tokens for a session as the user, whose access tokens carry
/// `act` (RFC 8693 4.1) naming the impersonator. The refresh token works until `ends_at`.
#[derive(Serialize, ToSchema)]
pub struct ImpersonationResponse {
    pub session_id: Uuid,
    pub user_id: Uuid,
    /// The `act.sub` of its tokens.
    pub impersonator: String,
    pub reason: String,
    pub ends_at: DateTime<Utc>,
    pub access_token: String,
    pub token_type: String,
    pub expires_in: i64,
    pub refresh_token: String,
}

/// Start a session as a user (impersonation), for at most 60 minutes: operators (operator
/// token) and tenant owners (dashboard) only; a project API key is refused (403 `forbidden`),
/// as are platform users and users with the operator role (403 `impersonation_refused`).
#[utoipa::path(post, path = "/v1/projects/{project_id}/users/{user_id}/impersonate", tag = "users",
    params(("project_id" = Uuid, Path), ("user_id" = Uuid, Path)),
    request_body = ImpersonateBody,
    security(("project_api_key" = [])),
    responses(
        (status = 201, description = "started", body = ImpersonationResponse),
        (status = 403, description = "not allowed to impersonate (`forbidden`), or this user may not be impersonated (`impersonation_refused`)", body = crate::error::ErrorBody),
    ))]
pub async fn impersonate(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, user)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, [(axum::http::HeaderName, &'static str); 1], Json<ImpersonationResponse>), ApiError> {
    let auth = ctx.authorize(Permission::UsersImpersonate)?;
    let user = Uuid::parse_str(&user).map_err(|_| ApiError::not_found("user_not_found", "user not found"))?;
    let new: authio_core::identity::impersonation::NewImpersonation = json_body(&headers, &body)?;
    let client = crate::routes::auth::client_info(&headers, None);
    let i = state.identity.impersonate(&auth, user, &new, &client).await?;
    let body = ImpersonationResponse {
        session_id: i.session_id,
        user_id: i.user_id,
        impersonator: i.impersonator,
        reason: i.reason,
        ends_at: i.ends_at,
        access_token: i.tokens.access_token,
        token_type: i.tokens.token_type.to_owned(),
        expires_in: i.tokens.expires_in,
        refresh_token: i.tokens.refresh_token,
    };
    Ok((StatusCode::CREATED, [(axum::http::header::CACHE_CONTROL, "no-store")], Json(body)))
}
