//! `/v1/projects/{project_id}/events`: the project's event stream, read with a cursor (project
//! API key or operator token). Each event type's `data` is documented as its own schema.
use authio_core::authz::Permission;
use authio_core::events;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{ApiError, AppState, RequestContext};

/// One event.
#[derive(Serialize, ToSchema)]
pub struct EventBody {
    pub id: Uuid,
    /// One of the documented types (`user.created`, `session.revoked`, ...).
    #[serde(rename = "type")]
    #[schema(rename = "type", pattern = "^[a-z][a-z0-9_]*(\\.[a-z][a-z0-9_]*)+$")]
    pub kind: String,
    /// Its place in the stream: pass it as `after` to read what follows.
    pub position: i64,
    pub occurred_at: DateTime<Utc>,
    /// The type's own data (see the `*EventData` schemas).
    #[schema(value_type = EventData)]
    pub data: serde_json::Value,
}

/// The data of each event type (`type` says which).
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum EventData {
    /// `user.created`, `user.updated`, `user.deleted`.
    User(UserEventData),
    /// `session.created`, `session.revoked`, `authentication.succeeded`.
    Session(SessionEventData),
    /// `authentication.failed`.
    AuthenticationFailed(AuthenticationFailedEventData),
    /// `email_verification.succeeded`.
    EmailVerification(EmailVerificationEventData),
    /// `tenant.moved`.
    TenantMoved(TenantMovedEventData),
    /// `organization.created`, `organization.updated`, `organization.deleted`.
    Organization(OrganizationEventData),
    /// `membership.added`, `membership.updated`, `membership.removed`.
    Membership(MembershipEventData),
}

/// `user.created` (with `email`, and `signed_up: true` when the user signed up by
/// themselves), `user.updated` (with what changed: `disabled`, `password_reset`),
/// `user.deleted` (with `email`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UserEventData {
    user_id: Uuid,
    email: Option<String>,
    signed_up: Option<bool>,
    disabled: Option<bool>,
    password_reset: Option<bool>,
}

/// `session.created` and `authentication.succeeded` (with `amr`, how the user signed in), and
/// `session.revoked` (with `reason`: `revoked`, `refresh_token_reused`, ...).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SessionEventData {
    session_id: Uuid,
    user_id: Option<Uuid>,
    amr: Option<Vec<String>>,
    reason: Option<String>,
}

/// `authentication.failed`: the address tried (known or not) and why.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct AuthenticationFailedEventData {
    email: String,
    reason: String,
}

/// `email_verification.succeeded`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct EmailVerificationEventData {
    user_id: Uuid,
}

/// `tenant.moved`: the tenant's data moved to another database (`dedicated` or `shared`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TenantMovedEventData {
    to: String,
}

/// `organization.*`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct OrganizationEventData {
    organization_id: Uuid,
    slug: Option<String>,
    name: Option<String>,
}

/// `membership.*`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MembershipEventData {
    user_id: Uuid,
    organization_id: Uuid,
    role: Option<String>,
    status: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EventList {
    pub data: Vec<EventBody>,
    /// The position of the last event here: pass it as `after` for the next page. When the
    /// page is short the stream is read to its end for now; poll again with the same cursor.
    pub next_cursor: Option<i64>,
}

/// Read the project's events in order, after `after` (from the oldest kept when absent), of
/// the listed types (every type when absent). Events are kept for 30 days.
#[utoipa::path(get, path = "/v1/projects/{project_id}/events", tag = "events",
    params(("project_id" = Uuid, Path),
        ("after" = Option<i64>, Query, description = "a position from an earlier page", minimum = 0),
        ("types" = Option<String>, Query, description = "comma-separated event types", max_length = 2000),
        ("limit" = Option<i64>, Query, description = "1-500, default 100", minimum = 1, maximum = 500)),
    security(("project_api_key" = [])),
    responses((status = 200, body = EventList),
              (status = 400, description = "bad query (`invalid_query`), an unknown type among them", body = crate::error::ErrorBody)))]
pub async fn list_events(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<EventList>, ApiError> {
    let auth = ctx.authorize(Permission::UsersRead)?;
    let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", m);
    let (mut after, mut types, mut limit) = (None, Vec::new(), 100i64);
    for (k, v) in url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "after" => {
                after = Some(v.parse::<i64>().ok().filter(|a| *a >= 0).ok_or_else(|| bad("after is a position"))?)
            }
            "limit" => limit = v.parse().map_err(|_| bad("limit must be an integer"))?,
            "types" if v.len() <= 2000 => {
                for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if !events::TYPES.contains(&t) {
                        return Err(bad("types lists an unknown event type"));
                    }
                    types.push(t.to_owned());
                }
            }
            "types" => return Err(bad("types is at most 2000 characters")),
            _ => return Err(bad("unknown query parameter")),
        }
    }
    if !(1..=500).contains(&limit) {
        return Err(bad("limit must be between 1 and 500"));
    }
    let page = events::list(&state.router, &auth, after, &types, limit, state.clock.now()).await?;
    let next_cursor = page.last().map(|e| e.position).or(after);
    let data = page
        .into_iter()
        .map(|e| EventBody { id: e.id, kind: e.kind, position: e.position, occurred_at: e.occurred_at, data: e.data })
        .collect();
    Ok(Json(EventList { data, next_cursor }))
}
