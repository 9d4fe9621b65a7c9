//! The request context: the scope the middleware resolved, stamped into request extensions.
use authio_db::{Pool, Router, Scope};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;

use crate::{ApiError, AppState};

#[derive(Clone, Debug)]
pub struct RequestContext {
    pub scope: Scope,
}

/// Resolve the scope from a project secret API key (`Authorization: Bearer sk_...`).
pub async fn require_api_key(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized("missing_credentials", "send a project API key as a Bearer token"))?;
    let scope = authio_core::api_keys::authenticate(&state.router, presented).await?;
    req.extensions_mut().insert(RequestContext { scope });
    Ok(next.run(req).await)
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<RequestContext>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("missing_credentials", "this endpoint needs credentials"))
    }
}

/// The pool a request's data lives in. The platform tenant is always served from the shared
/// pool: a row saying `dedicated` is reported, never followed.
pub async fn db_pool_from_context(router: &Router, ctx: &RequestContext) -> Result<Pool, ApiError> {
    let (pool, refusal) = router.pool_for_or_err(&ctx.scope).await?;
    if let Some(e) = refusal {
        tracing::error!(tenant = %ctx.scope.tenant_id, error = %e, "kept platform tenant on shared");
    }
    Ok(pool)
}
