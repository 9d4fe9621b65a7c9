//! Liveness, readiness, metrics and the API documents.
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse};
use axum::Json;

use crate::{openapi, ApiError, AppState};

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "alive")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: the shared database answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, description = "ready"), (status = 503, description = "the shared database is unreachable", body = crate::error::ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    authio_db::preresolve::ping(&state.router).await.map_err(|e| {
        tracing::warn!(error = %e, "readiness check failed");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "database_unavailable", "the shared database is unreachable")
    })?;
    Ok(Json(serde_json::json!({"status": "ready"})))
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render(&state))
}

pub async fn openapi_json() -> Json<serde_json::Value> {
    Json(openapi::document())
}

pub async fn docs() -> Html<String> {
    Html(openapi::reference_page())
}
