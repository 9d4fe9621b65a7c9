//! The route table.
pub mod api_keys;
pub mod auth;
pub mod health;
pub mod manage;
pub mod users;

use axum::http::StatusCode;
use axum::routing::{get, post};

use crate::{context, ApiError, AppState};

pub fn router(state: AppState) -> axum::Router {
    let api = axum::Router::new()
        .route("/v1/projects/{project_id}/users", get(users::list_users).post(users::create_user))
        .route("/v1/projects/{project_id}/api-keys", get(api_keys::list_api_keys).post(api_keys::create_api_key))
        .route("/v1/projects/{project_id}/api-keys/{id}", axum::routing::delete(api_keys::revoke_api_key))
        .route("/v1/projects/{project_id}/m2m-clients", get(manage::list_clients).post(manage::create_client))
        .route("/v1/projects/{project_id}/m2m-clients/{id}", axum::routing::delete(manage::revoke_client))
        .route("/v1/projects/{project_id}/users/{user_id}/sessions", get(manage::list_sessions))
        .route("/v1/projects/{project_id}/sessions/{session_id}", axum::routing::delete(manage::revoke_session))
        .route("/v1/projects/{project_id}/settings", get(manage::get_settings).patch(manage::update_settings))
        .route("/v1/projects/{project_id}/audit-events", get(manage::list_audit_events))
        .route("/v1/projects/{project_id}/audit-events/export", get(manage::export_audit_events))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), context::require_management));
    let auth = axum::Router::new()
        .route("/v1/auth/signup", post(auth::sign_up))
        .route("/v1/auth/signin", post(auth::sign_in))
        .route("/v1/auth/token", post(auth::token))
        .route("/v1/auth/introspect", post(auth::introspect))
        .route("/v1/auth/revoke", post(auth::revoke))
        .route("/p/{project_id}/.well-known/jwks.json", get(auth::jwks));
    axum::Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(health::openapi_json))
        .route("/docs", get(health::docs))
        .merge(api)
        .merge(auth)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(state)
}
