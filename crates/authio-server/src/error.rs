//! The one place where errors become HTTP responses: a status and a machine-readable code.
use authio_core::CoreError;
use authio_db::{DbError, RouterError};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u32>,
}

/// `{"error": {"code": "...", "message": "..."}}`
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: branch on this, not on the message.
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), retry_after: None }
    }

    pub fn unauthorized(code: &'static str, message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn not_found(code: &'static str, message: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    fn unavailable(code: &'static str, message: String, retry_after: u32) -> Self {
        ApiError { status: StatusCode::SERVICE_UNAVAILABLE, code, message, retry_after: Some(retry_after) }
    }
}

impl From<RouterError> for ApiError {
    fn from(e: RouterError) -> Self {
        match e {
            RouterError::DedicatedUnavailable { .. } => Self::unavailable(
                "tenant_database_unavailable",
                "this tenant's database is unavailable; retry shortly".into(),
                5,
            ),
            RouterError::SharedUnavailable(_) => {
                Self::unavailable("database_unavailable", "the database is unavailable; retry shortly".into(), 5)
            }
            RouterError::MoveInProgress(_) | RouterError::NotAtHome(_) => {
                Self::unavailable("tenant_moving", "this tenant's data is being moved; retry shortly".into(), 1)
            }
            RouterError::UnknownTenant(_) => Self::not_found("tenant_not_found", "tenant not found"),
            RouterError::NoDedicatedDatabase(_)
            | RouterError::PlatformTenantNoDedicatedPool
            | RouterError::Config(_) => {
                tracing::error!(error = %e, "routing misconfiguration");
                Self::unavailable("routing_error", "this tenant cannot be served right now".into(), 30)
            }
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Router(r) => r.into(),
            other => {
                tracing::error!(error = %other, "database error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
            }
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::Invalid(v) => {
                let code = match v {
                    authio_core::domain::ValidationError::Email(_) => "invalid_email",
                    authio_core::domain::ValidationError::Slug => "invalid_slug",
                    authio_core::domain::ValidationError::Plan => "invalid_plan",
                    authio_core::domain::ValidationError::Name => "invalid_name",
                    authio_core::domain::ValidationError::Field(_) => "invalid_request",
                };
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, v.to_string())
            }
            CoreError::EmailTaken => ApiError::new(StatusCode::CONFLICT, "email_taken", e.to_string()),
            CoreError::SlugTaken => ApiError::new(StatusCode::CONFLICT, "slug_taken", e.to_string()),
            CoreError::NotFound(what) => ApiError::new(StatusCode::NOT_FOUND, not_found_code(what), e.to_string()),
            CoreError::InvalidApiKey => ApiError::unauthorized("invalid_api_key", "the API key is invalid or revoked"),
            CoreError::Db(d) => d.into(),
        }
    }
}

fn not_found_code(what: &str) -> &'static str {
    match what {
        "project" => "project_not_found",
        "user" => "user_not_found",
        "tenant" => "tenant_not_found",
        "api key" => "api_key_not_found",
        _ => "not_found",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_owned(), message: self.message } };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
