//! The request context: the scope the middleware resolved, stamped into request extensions.
use authio_core::authz::{self, Authorized, Permission, Principal, Target};
use authio_db::{Pool, Router};
use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;

use crate::{ApiError, AppState};

/// Who is calling the management API, and the path's project they were let into.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub principal: Principal,
    /// The path's project, already authorized for [`Permission::ProjectRead`] once by the
    /// middleware (so another project answers 404 before any handler runs).
    pub target: Target,
}

impl RequestContext {
    /// What the stores need for `permission` on the path's project (403 if the principal may
    /// look but not do this).
    pub fn authorize(&self, permission: Permission) -> Result<Authorized, ApiError> {
        Ok(authz::authorize(&self.principal, permission, &self.target)?)
    }
}

/// Resolve the principal of a management request and authorize the path's project once: a
/// project secret API key (`Authorization: Bearer sk_...`, its own project only), or a
/// platform-kind access token of an operator (any project). Customer-kind tokens are refused.
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
    let path_project = params.iter().find(|(k, _)| *k == "project_id").and_then(|(_, v)| uuid::Uuid::parse_str(v).ok());
    // A JWT has three dot-separated parts; anything else is judged as an API key.
    let looks_like_jwt = presented.split('.').count() == 3;
    let (principal, target) = if !looks_like_jwt {
        let peer = req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0);
        let ip = crate::routes::auth::client_ip_of(&state, peer, req.headers());
        let scope = state.identity.authenticate_api_key(presented, ip).await?;
        let key_id = authio_core::project::api_keys::parse(presented).map(|(id, _)| id).unwrap_or_default();
        let project_id = scope.project_id.ok_or_else(project_not_found)?;
        let principal = Principal::ApiKey {
            tenant_id: scope.tenant_id,
            project_id,
            tenant_kind: scope.tenant_kind,
            key_id: key_id.to_owned(),
        };
        // A key reaches its own project only; no lookup of another project is made, so the
        // answer cannot tell whether it exists.
        let path_project = path_project.ok_or_else(project_not_found)?;
        let target =
            Target::Project { tenant_id: scope.tenant_id, project_id: path_project, tenant_kind: scope.tenant_kind };
        (principal, target)
    } else {
        let claims = state.identity.authenticate_operator(presented).await?;
        let project = path_project.ok_or_else(project_not_found)?;
        let principal = Principal::Operator { user_id: claims.sub, name: None };
        (principal, Target::project(&state.identity.project_scope(project).await?)?)
    };
    authz::authorize(&principal, Permission::ProjectRead, &target)?;
    req.extensions_mut().insert(RequestContext { principal, target });
    Ok(next.run(req).await)
}

fn project_not_found() -> ApiError {
    ApiError::not_found("project_not_found", "project not found")
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
pub async fn db_pool_from_context(router: &Router, auth: &Authorized) -> Result<Pool, ApiError> {
    let scope = auth.scope()?;
    let (pool, refusal) = router.pool_for_or_err(scope).await?;
    if let Some(e) = refusal {
        tracing::error!(tenant = %scope.tenant_id, error = %e, "kept platform tenant on shared");
    }
    Ok(pool)
}
