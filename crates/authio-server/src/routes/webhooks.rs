//! `/v1/projects/{project_id}/webhooks`: endpoints that receive the project's events, signed
//! per Standard Webhooks; their secrets, delivery logs and replays (project API key).
use authio_core::authz::Permission;
use authio_core::events::webhooks;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::extract::json_body;
use crate::routes::auth::client_info;
use crate::{ApiError, AppState, RequestContext};

fn endpoint_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("webhook_endpoint_not_found", "webhook endpoint not found"))
}

#[derive(Serialize, ToSchema)]
pub struct WebhookEndpointBody {
    pub id: Uuid,
    pub url: String,
    /// The event types it receives; empty: every type.
    pub event_types: Vec<String>,
    pub enabled: bool,
    /// Why it was disabled (by you, or after failing for 3 days).
    pub disabled_reason: Option<String>,
    /// The last event position delivered to it.
    pub position: i64,
    /// Failed attempts in a row (0 when healthy).
    pub attempts: i32,
    pub failing_since: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<webhooks::Endpoint> for WebhookEndpointBody {
    fn from(e: webhooks::Endpoint) -> Self {
        WebhookEndpointBody {
            id: e.id,
            url: e.url,
            event_types: e.event_types,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason,
            position: e.position,
            attempts: e.attempts,
            failing_since: e.failing_since,
            last_error: e.last_error,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// A new endpoint, with its signing secret (shown this once).
#[derive(Serialize, ToSchema)]
pub struct CreatedWebhookEndpoint {
    #[serde(flatten)]
    pub endpoint: WebhookEndpointBody,
    /// `whsec_...`: verify deliveries with it (Standard Webhooks).
    pub secret: String,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookEndpointList {
    pub data: Vec<WebhookEndpointBody>,
}

/// `POST .../webhooks`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewWebhookEndpointBody {
    /// https (http and private addresses only for a project in the `development` environment).
    #[schema(format = "uri", min_length = 8, max_length = 2048)]
    url: String,
    /// Event types to receive (at most 50); absent or empty: every type.
    event_types: Option<Vec<String>>,
}

/// `PATCH .../webhooks/{id}`: absent fields stay. Enabling again clears the failure count.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct WebhookEndpointPatchBody {
    #[schema(format = "uri", min_length = 8, max_length = 2048)]
    url: Option<String>,
    event_types: Option<Vec<String>>,
    enabled: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct RotatedSecret {
    /// The new `whsec_...`; the previous secret keeps signing beside it for 24 hours.
    pub secret: String,
}

/// `POST .../webhooks/{id}/replay`: exactly one of `since` and `event_id`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// Send again every event (of the endpoint's types) since this time, in order.
    pub since: Option<DateTime<Utc>>,
    /// Send this one event again, once, ahead of the stream (logged with `replay: true`).
    pub event_id: Option<Uuid>,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryBody {
    pub id: Uuid,
    /// The event (`webhook-id` is `evt_` and this id without hyphens).
    pub event_id: Uuid,
    pub event_type: String,
    pub position: i64,
    pub attempt: i32,
    /// The receiver's HTTP status (none when it could not be reached or timed out).
    pub status: Option<i32>,
    pub error: Option<String>,
    pub latency_ms: i32,
    /// At most 1 KiB of the response.
    pub response_excerpt: Option<String>,
    /// Sent by a replay of this one event (outside the stream's order).
    pub replay: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryList {
    pub data: Vec<DeliveryBody>,
}

#[utoipa::path(post, path = "/v1/projects/{project_id}/webhooks", tag = "events",
    params(("project_id" = Uuid, Path)), security(("project_api_key" = [])), request_body = NewWebhookEndpointBody,
    responses((status = 201, body = CreatedWebhookEndpoint)))]
pub async fn create_endpoint(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<CreatedWebhookEndpoint>), ApiError> {
    let auth = ctx.authorize(Permission::CredentialsManage)?;
    let new: webhooks::NewEndpoint = json_body(&headers, &body)?;
    let client = client_info(&headers, None);
    let (e, secret) =
        webhooks::create(&state.router, state.clock.as_ref(), state.identity.master_key(), &auth, &new, &client)
            .await?;
    Ok((StatusCode::CREATED, Json(CreatedWebhookEndpoint { endpoint: e.into(), secret })))
}

#[utoipa::path(get, path = "/v1/projects/{project_id}/webhooks", tag = "events",
    params(("project_id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 200, body = WebhookEndpointList)))]
pub async fn list_endpoints(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
) -> Result<Json<WebhookEndpointList>, ApiError> {
    let auth = ctx.authorize(Permission::ProjectRead)?;
    let list = webhooks::list(&state.router, &auth).await?;
    Ok(Json(WebhookEndpointList { data: list.into_iter().map(Into::into).collect() }))
}

#[utoipa::path(patch, path = "/v1/projects/{project_id}/webhooks/{id}", tag = "events",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    request_body = WebhookEndpointPatchBody, responses((status = 200, body = WebhookEndpointBody)))]
pub async fn update_endpoint(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<WebhookEndpointBody>, ApiError> {
    let auth = ctx.authorize(Permission::CredentialsManage)?;
    let id = endpoint_id(&id)?;
    let patch: webhooks::EndpointPatch = json_body(&headers, &body)?;
    let client = client_info(&headers, None);
    Ok(Json(webhooks::update(&state.router, state.clock.as_ref(), &auth, id, &patch, &client).await?.into()))
}

#[utoipa::path(delete, path = "/v1/projects/{project_id}/webhooks/{id}", tag = "events",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 204)))]
pub async fn delete_endpoint(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let auth = ctx.authorize(Permission::CredentialsManage)?;
    let client = client_info(&headers, None);
    webhooks::delete(&state.router, state.clock.as_ref(), &auth, endpoint_id(&id)?, &client).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/projects/{project_id}/webhooks/{id}/rotate-secret", tag = "events",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 200, body = RotatedSecret)))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<RotatedSecret>, ApiError> {
    let auth = ctx.authorize(Permission::CredentialsManage)?;
    let client = client_info(&headers, None);
    let secret = webhooks::rotate_secret(
        &state.router,
        state.clock.as_ref(),
        state.identity.master_key(),
        &auth,
        endpoint_id(&id)?,
        &client,
    )
    .await?;
    Ok(Json(RotatedSecret { secret }))
}

/// Send again every event since a time, in order, or one event (at least once: receivers see
/// the same `webhook-id` for an event they had).
#[utoipa::path(post, path = "/v1/projects/{project_id}/webhooks/{id}/replay", tag = "events",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    request_body = ReplayBody, responses((status = 200, body = WebhookEndpointBody),
        (status = 422, description = "neither or both of `since` and `event_id`, or a malformed one (`invalid_request`)", body = crate::error::ErrorBody),
        (status = 404, description = "no such endpoint (`webhook_endpoint_not_found`) or event in the last 30 days (`event_not_found`)", body = crate::error::ErrorBody),
        (status = 409, description = "the endpoint is disabled or does not receive the event's type (`conflict`); 100 single replays already waiting (`too_soon`)", body = crate::error::ErrorBody)))]
pub async fn replay(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<WebhookEndpointBody>, ApiError> {
    let auth = ctx.authorize(Permission::CredentialsManage)?;
    let id = endpoint_id(&id)?;
    let r: ReplayBody = json_body(&headers, &body)?;
    let client = client_info(&headers, None);
    let clock = state.clock.as_ref();
    let endpoint = match (r.since, r.event_id) {
        (Some(since), None) => webhooks::replay_since(&state.router, clock, &auth, id, since, &client).await?,
        (None, Some(event)) => webhooks::replay_event(&state.router, clock, &auth, id, event, &client).await?,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                "give exactly one of since and event_id",
            ))
        }
    };
    Ok(Json(endpoint.into()))
}

#[utoipa::path(get, path = "/v1/projects/{project_id}/webhooks/{id}/deliveries", tag = "events",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path),
        ("limit" = Option<i64>, Query, description = "1-500, default 100", minimum = 1, maximum = 500)),
    security(("project_api_key" = [])),
    responses((status = 200, body = DeliveryList),
              (status = 400, description = "bad query (`invalid_query`)", body = crate::error::ErrorBody)))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<DeliveryList>, ApiError> {
    let auth = ctx.authorize(Permission::ProjectRead)?;
    let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", m);
    let mut limit = 100i64;
    for (k, v) in url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "limit" => limit = v.parse().map_err(|_| bad("limit must be an integer"))?,
            _ => return Err(bad("unknown query parameter")),
        }
    }
    if !(1..=500).contains(&limit) {
        return Err(bad("limit must be between 1 and 500"));
    }
    let list = webhooks::deliveries(&state.router, &auth, endpoint_id(&id)?, limit).await?;
    let data = list
        .into_iter()
        .map(|d| DeliveryBody {
            id: d.id,
            event_id: d.event_id,
            event_type: d.event_type,
            position: d.position,
            attempt: d.attempt,
            status: d.status,
            error: d.error,
            latency_ms: d.latency_ms,
            response_excerpt: d.response_excerpt,
            replay: d.replay,
            created_at: d.created_at,
        })
        .collect();
    Ok(Json(DeliveryList { data }))
}
