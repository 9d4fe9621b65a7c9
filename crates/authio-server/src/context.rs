//! The request context: the scope the middleware resolved, stamped into request extensions.
use authio_core::audit::Actor;
use authio_db::{Pool, Router, Scope};
use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;

use crate::{ApiError, AppState};

#[derive(Clone, Debug)]
pub struct RequestContext {
    pub scope: Scope,
    /// Who is acting, for the audit log.
    pub actor: Actor,
}

/// Resolve the scope of a management request: a project secret API key
/// (`Authorization: Bearer sk_...`, scoped to its project), or a platform-kind access token of
/// an operator (scoped to the project in the path). Customer-kind tokens are refused.
pub async fn require_management(
    State(state): State<AppState>,
    params: RawPathParams,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::unauthorized(
                "missing_credentials",
                "send a project API key or an operator token as a Bearer token",
            )
        })?;
    // A JWT has three dot-separated parts; anything else is judged as an API key.
    let looks_like_jwt = presented.split('.').count() == 3;
    let (scope, actor) = if !looks_like_jwt {
        let peer = req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0);
        let ip = crate::routes::auth::client_ip_of(&state, peer, req.headers());
        let scope = state.identity.authenticate_api_key(presented, ip).await?;
        let key_id = authio_core::api_keys::parse(presented).map(|(id, _)| id).unwrap_or_default();
        (scope, Actor::api_key(key_id))
    } else {
        let claims = state.identity.authenticate_operator(presented).await?;
        let project = params
            .iter()
            .find(|(k, _)| *k == "project_id")
            .and_then(|(_, v)| uuid::Uuid::parse_str(v).ok())
            .ok_or_else(|| ApiError::not_found("project_not_found", "project not found"))?;
        let actor = Actor { kind: "operator", id: Some(claims.sub), name: None };
        (state.identity.project_scope(project).await?, actor)
    };
    req.extensions_mut().insert(RequestContext { scope, actor });
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
