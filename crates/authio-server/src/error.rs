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
                    authio_core::types::ValidationError::Email(_) => "invalid_email",
                    authio_core::types::ValidationError::Slug => "invalid_slug",
                    authio_core::types::ValidationError::Plan => "invalid_plan",
                    authio_core::types::ValidationError::Name => "invalid_name",
                    authio_core::types::ValidationError::Field(_) => "invalid_request",
                };
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, v.to_string())
            }
            CoreError::EmailTaken => ApiError::new(StatusCode::CONFLICT, "email_taken", e.to_string()),
            CoreError::SlugTaken => ApiError::new(StatusCode::CONFLICT, "slug_taken", e.to_string()),
            CoreError::NotFound(what) => ApiError::new(StatusCode::NOT_FOUND, what.code(), e.to_string()),
            CoreError::InvalidApiKey => ApiError::unauthorized("invalid_api_key", "the API key is invalid or revoked"),
            CoreError::InvalidCredentials => ApiError::unauthorized("invalid_credentials", &e.to_string()),
            CoreError::InvalidClient | CoreError::WrongClientAuthMethod(_) => {
                ApiError::unauthorized("invalid_client", &e.to_string())
            }
            CoreError::InvalidGrant(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_grant", m),
            CoreError::InvalidScope => ApiError::new(StatusCode::BAD_REQUEST, "invalid_scope", e.to_string()),
            CoreError::InvalidTarget(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_target", m),
            CoreError::InvalidToken(_) => ApiError::unauthorized("invalid_token", &e.to_string()),
            CoreError::TokenKindRefused => ApiError::unauthorized("token_kind_refused", &e.to_string()),
            CoreError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            CoreError::MethodNotEnabled(_) => ApiError::new(StatusCode::FORBIDDEN, "method_not_enabled", e.to_string()),
            CoreError::RoleInUse => ApiError::new(StatusCode::CONFLICT, "role_in_use", e.to_string()),
            CoreError::UndefinedPermission(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "undefined_permission", e.to_string())
            }
            CoreError::NotAMember => ApiError::new(StatusCode::FORBIDDEN, "not_a_member", e.to_string()),
            CoreError::InvitationUnusable(state) => ApiError::new(StatusCode::GONE, state.code(), e.to_string()),
            CoreError::InvitationEmailMismatch => {
                ApiError::new(StatusCode::FORBIDDEN, "invitation_email_mismatch", e.to_string())
            }
            CoreError::ImpersonationRefused(m) => ApiError::new(StatusCode::FORBIDDEN, "impersonation_refused", m),
            CoreError::SignupNotAllowed => ApiError::new(StatusCode::FORBIDDEN, "signup_not_allowed", e.to_string()),
            CoreError::RateLimited { retry_after } => ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: "too_many_attempts",
                message: e.to_string(),
                retry_after: Some(retry_after),
            },
            CoreError::Busy => Self::unavailable("busy", "the server is busy; retry shortly".into(), 1),
            CoreError::TooSoon(m) => ApiError::new(StatusCode::CONFLICT, "too_soon", m),
            CoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            CoreError::SsoRequired => ApiError::new(StatusCode::FORBIDDEN, "sso_required", e.to_string()),
            CoreError::InvalidRedirectUri => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_redirect_uri", e.to_string())
            }
            CoreError::ChallengeLocked => ApiError::new(StatusCode::BAD_REQUEST, "challenge_locked", e.to_string()),
            CoreError::FactorLocked { retry_after } => ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: "factor_locked",
                message: e.to_string(),
                retry_after: Some(retry_after),
            },
            CoreError::MfaRequired => ApiError::new(StatusCode::FORBIDDEN, "mfa_required", e.to_string()),
            CoreError::InvalidClientMetadata(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_client_metadata", e.to_string())
            }
            CoreError::Upstream(m) => {
                tracing::warn!(error = %m, "upstream failure");
                ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", "the upstream provider could not be used")
            }
            CoreError::UpstreamRefused(m) => ApiError::new(StatusCode::BAD_REQUEST, "upstream_refused", m),
            CoreError::DomainNotVerified(..) => {
                ApiError::new(StatusCode::CONFLICT, "domain_not_verified", e.to_string())
            }
            CoreError::Config(m) | CoreError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
            }
            CoreError::Db(d) => d.into(),
        }
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

/// An error of the OAuth endpoints (`/v1/auth/token`, `/introspect`, `/revoke`), in RFC 6749
/// section 5.2's shape: `{"error": "...", "error_description": "..."}`.
#[derive(Debug)]
pub struct OAuthError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: String,
    pub retry_after: Option<u32>,
}

#[derive(Serialize, ToSchema)]
pub struct OAuthErrorBody {
    /// `invalid_request`, `invalid_client`, `invalid_grant`, `unauthorized_client`,
    /// `unsupported_grant_type`, `invalid_scope`, `temporarily_unavailable`, `server_error`.
    pub error: String,
    pub error_description: String,
}

impl OAuthError {
    pub fn invalid_request(description: impl Into<String>) -> Self {
        OAuthError {
            status: StatusCode::BAD_REQUEST,
            error: "invalid_request",
            description: description.into(),
            retry_after: None,
        }
    }

    /// `supported`: the grants of the endpoint that answers (each token endpoint lists its own).
    pub fn unsupported_grant_type(supported: &str) -> Self {
        OAuthError {
            status: StatusCode::BAD_REQUEST,
            error: "unsupported_grant_type",
            description: format!("supported: {supported}"),
            retry_after: None,
        }
    }

    pub fn unauthorized_client() -> Self {
        OAuthError {
            status: StatusCode::BAD_REQUEST,
            error: "unauthorized_client",
            description: "this client may not use this grant type".into(),
            retry_after: None,
        }
    }

    pub fn invalid_client() -> Self {
        OAuthError {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description: "client authentication failed".into(),
            retry_after: None,
        }
    }

    /// A known client that authenticated in another way than it registered: say which.
    pub fn wrong_client_auth_method(expected: &str) -> Self {
        OAuthError {
            description: format!("client authentication failed: this client authenticates with {expected}"),
            ..OAuthError::invalid_client()
        }
    }
}

impl From<CoreError> for OAuthError {
    fn from(e: CoreError) -> Self {
        let (status, error) = match &e {
            CoreError::InvalidClient => return OAuthError::invalid_client(),
            CoreError::WrongClientAuthMethod(m) => return OAuthError::wrong_client_auth_method(m),
            CoreError::InvalidGrant(_) => (StatusCode::BAD_REQUEST, "invalid_grant"),
            CoreError::InvalidScope => (StatusCode::BAD_REQUEST, "invalid_scope"),
            CoreError::InvalidTarget(_) => (StatusCode::BAD_REQUEST, "invalid_target"),
            // RFC 7591 3.2.2.
            CoreError::InvalidClientMetadata(_) => (StatusCode::BAD_REQUEST, "invalid_client_metadata"),
            CoreError::InvalidRedirectUri => (StatusCode::BAD_REQUEST, "invalid_redirect_uri"),
            CoreError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            CoreError::RateLimited { retry_after } => {
                return OAuthError {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    error: "temporarily_unavailable",
                    description: e.to_string(),
                    retry_after: Some(*retry_after),
                }
            }
            _ => {
                // Everything else is ours, not the caller's: keep the API's status and log it.
                let api = ApiError::from(e);
                let error = if api.status.is_server_error() { "server_error" } else { "invalid_request" };
                let error =
                    if api.status == StatusCode::SERVICE_UNAVAILABLE { "temporarily_unavailable" } else { error };
                return OAuthError {
                    status: api.status,
                    error,
                    description: api.message,
                    retry_after: api.retry_after,
                };
            }
        };
        OAuthError { status, error, description: e.to_string(), retry_after: None }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = OAuthErrorBody { error: self.error.to_owned(), error_description: self.description };
        let mut resp = (self.status, axum::Json(body)).into_response();
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6749 5.2: invalid_client answers with the scheme the client can use.
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"authio\""));
        }
        resp
    }
}
