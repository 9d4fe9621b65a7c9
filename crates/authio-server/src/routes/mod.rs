//! The route table.
pub mod api_keys;
pub mod health;
pub mod users;

use axum::http::StatusCode;
use axum::routing::get;

use crate::{context, ApiError, AppState};

pub fn router(state: AppState) -> axum::Router {
    let api = axum::Router::new()
        .route("/v1/projects/{project_id}/users", get(users::list_users).post(users::create_user))
        .route("/v1/projects/{project_id}/api-keys", get(api_keys::list_api_keys).post(api_keys::create_api_key))
        .route("/v1/projects/{project_id}/api-keys/{id}", axum::routing::delete(api_keys::revoke_api_key))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), context::require_api_key));
    axum::Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(health::openapi_json))
        .route("/docs", get(health::docs))
        .merge(api)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(state)
}
