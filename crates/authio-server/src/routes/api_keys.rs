//! `/v1/projects/{project_id}/api-keys`: create (secret shown once), list, revoke.
use authio_core::authz::Permission;
use authio_core::project::api_keys;
use authio_core::types::DisplayName;
use axum::body::Bytes;
use axum::extract::{Path, State};
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
pub struct CreateApiKeyRequest {
    /// What the key is for (1-200 characters).
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyResponse {
    pub id: Uuid,
    /// The public part of the key (`sk_<key_id>_...`).
    pub key_id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<api_keys::ApiKeyInfo> for ApiKeyResponse {
    fn from(k: api_keys::ApiKeyInfo) -> Self {
        ApiKeyResponse { id: k.id, key_id: k.key_id, name: k.name, created_at: k.created_at, revoked_at: k.revoked_at }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CreatedApiKeyResponse {
    #[serde(flatten)]
    pub key: ApiKeyResponse,
    /// The whole key. Shown once: only a hash is stored.
    pub secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyList {
    pub data: Vec<ApiKeyResponse>,
}

/// Create a project secret API key.
#[utoipa::path(post, path = "/v1/projects/{project_id}/api-keys", tag = "api-keys",
    params(("project_id" = Uuid, Path, description = "the project")),
    request_body = CreateApiKeyRequest,
    security(("project_api_key" = [])),
    responses(
        (status = 201, description = "created; `secret` is shown this once", body = CreatedApiKeyResponse),
        (status = 400, description = "malformed JSON", body = crate::error::ErrorBody),
        (status = 401, description = "missing or invalid API key", body = crate::error::ErrorBody),
        (status = 404, description = "unknown project", body = crate::error::ErrorBody),
        (status = 422, description = "invalid name (`invalid_name`)", body = crate::error::ErrorBody),
    ))]
pub async fn create_api_key(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<CreatedApiKeyResponse>), ApiError> {
    let auth = ctx.authorize(Permission::CredentialsManage)?;
    let req: CreateApiKeyRequest = json_body(&headers, &body)?;
    let name = DisplayName::parse(&req.name).map_err(authio_core::CoreError::from)?;
    let client = crate::routes::auth::client_info(&headers, None);
    let created = api_keys::create(&state.router, state.clock.as_ref(), &auth, &name, &client).await?;
    Ok((StatusCode::CREATED, Json(CreatedApiKeyResponse { key: created.info.into(), secret: created.plaintext })))
}

/// List the project's API keys (never their secrets).
#[utoipa::path(get, path = "/v1/projects/{project_id}/api-keys", tag = "api-keys",
    params(("project_id" = Uuid, Path, description = "the project")),
    security(("project_api_key" = [])),
    responses(
        (status = 200, description = "the keys, revoked ones included", body = ApiKeyList),
        (status = 401, description = "missing or invalid API key", body = crate::error::ErrorBody),
        (status = 404, description = "unknown project", body = crate::error::ErrorBody),
    ))]
pub async fn list_api_keys(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
) -> Result<Json<ApiKeyList>, ApiError> {
    let auth = ctx.authorize(Permission::ProjectRead)?;
    let keys = api_keys::list(&state.router, &auth).await?;
    Ok(Json(ApiKeyList { data: keys.into_iter().map(Into::into).collect() }))
}

/// Revoke an API key. It stops working at once.
#[utoipa::path(delete, path = "/v1/projects/{project_id}/api-keys/{id}", tag = "api-keys",
    params(("project_id" = Uuid, Path, description = "the project"), ("id" = Uuid, Path, description = "the key's id")),
    security(("project_api_key" = [])),
    responses(
        (status = 200, description = "revoked (revoking again is not an error)", body = ApiKeyResponse),
        (status = 401, description = "missing or invalid API key", body = crate::error::ErrorBody),
        (status = 404, description = "unknown project or key (`api_key_not_found`)", body = crate::error::ErrorBody),
    ))]
pub async fn revoke_api_key(
    State(state): State<AppState>,
    ctx: RequestContext,
    headers: HeaderMap,
    Path((_project_id, id)): Path<(String, String)>,
) -> Result<Json<ApiKeyResponse>, ApiError> {
    let auth = ctx.authorize(Permission::CredentialsManage)?;
    let id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found("api_key_not_found", "api key not found"))?;
    let client = crate::routes::auth::client_info(&headers, None);
    let key = api_keys::revoke(&state.router, state.clock.as_ref(), &auth, id, &client).await?;
    state.identity.forget_credential("apikey", &key.key_id);
    Ok(Json(key.into()))
}
