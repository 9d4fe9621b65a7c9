//! The consent page a third-party client's authorization request stops at (the client's name,
//! logo and address as it gave them, marked unverified; the scopes and the resource), and the
//! user's connected-apps page where a consent is revoked (its sessions end with it).
use std::net::SocketAddr;

use authio_core::oidc::{AuthorizeParams, AuthzError};
use authio_core::CoreError;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::{Extension, Form};
use serde::Deserialize;
use uuid::Uuid;

use super::{cookie, posted, project_id, see_other_to, ConsentView, Ctx, CustomHost, FormFields, OP_COOKIE};
use crate::routes::auth::{client_info, client_ip};
use crate::AppState;

#[derive(Deserialize, Default)]
pub struct ConsentQuery {
    return_to: Option<String>,
}

/// The authorization request a consent is for, read back from its URL on this host (checked
/// again, as the authorization endpoint checks it).
async fn request_of(
    state: &AppState,
    ctx: &Ctx,
    return_to: &str,
) -> Result<authio_core::oidc::AuthzRequest, Box<Response>> {
    let fail =
        |m: &'static str| Box::new(ctx.error(CoreError::Forbidden(m), "done", "Access request", ctx.page("done", "")));
    authio_core::identity::signin::Return::authorize(ctx.project, return_to)
        .map_err(|_| fail("this consent request is not valid"))?;
    let query = return_to.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let params: AuthorizeParams =
        serde_urlencoded::from_str(query).map_err(|_| fail("this consent request is not valid"))?;
    state.oidc.authorization_request(ctx.project, &params).await.map_err(|e| match e {
        AuthzError::Page(m) => fail(m),
        AuthzError::Redirect { .. } => fail("this access request is not valid"),
    })
}

/// The browser's signed-in user at the provider (the consent is theirs), else back to the
/// authorization request, which signs them in first.
async fn signed_in_user(state: &AppState, ctx: &Ctx, headers: &HeaderMap) -> Option<Uuid> {
    let session = cookie(headers, OP_COOKIE).and_then(|c| state.oidc.read_op_session(&c));
    state.oidc.signed_in(ctx.project, session.as_ref()).await.ok().flatten().map(|s| s.user_id)
}

pub async fn consent_page(
    State(state): State<AppState>,
    Path(project): Path<String>,
    Query(q): Query<ConsentQuery>,
    custom: Option<Extension<CustomHost>>,
    headers: HeaderMap,
) -> Response {
    let project = attempt!(project_id(&project));
    let ctx = attempt!(Ctx::new(&state, project, &headers, custom.as_ref()).await);
    let return_to = q.return_to.unwrap_or_default();
    let req = attempt!(request_of(&state, &ctx, &return_to).await);
    if signed_in_user(&state, &ctx, &headers).await.is_none() {
        return see_other_to(&return_to);
    }
    let c = &req.client;
    let mut p = ctx.page("consent", &format!("Allow {}?", c.name));
    p.return_to = return_to;
    p.consent = Some(ConsentView {
        client_name: c.name.clone(),
        client_id: c.client_id.clone(),
        client_uri: c.client_uri.clone(),
        logo_uri: c.logo_uri.clone(),
        scopes: req.scope.clone(),
        resource: req.resource.clone(),
        registration: if c.registration == "dynamic" { "registered by itself" } else { "from its metadata document" },
    });
    ctx.render(StatusCode::OK, p)
}

/// Allow (the consent is kept and the request goes on) or deny (the client hears
/// `access_denied`).
pub async fn consent_post(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let return_to = form.flow.return_to.clone().unwrap_or_default();
    let req = attempt!(request_of(&state, &ctx, &return_to).await);
    let Some(user) = signed_in_user(&state, &ctx, &headers).await else {
        return see_other_to(&return_to);
    };
    if form.decision.as_deref() != Some("allow") {
        let denied = AuthzError::Redirect {
            redirect_uri: req.redirect_uri.clone(),
            error: "access_denied",
            description: "the user denied the request",
            state: req.state.clone(),
        };
        return see_other_to(&denied.location(&state.identity.issuer(ctx.project)).unwrap_or_default());
    }
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let granted = match state.identity.project_scope(ctx.project).await {
        Ok(scope) => {
            let resource = req.resource.clone().unwrap_or_default();
            state
                .identity
                .grant_consent(&scope, user, &req.client, &resource, &req.scope, &client_info(&headers, ip))
                .await
        }
        Err(e) => Err(e),
    };
    match granted {
        Ok(()) => see_other_to(&return_to),
        Err(e) => ctx.error(e, "done", "Access request", ctx.page("done", "")),
    }
}

/// The applications the user let in, each revocable.
pub async fn apps_page(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    headers: HeaderMap,
) -> Response {
    let project = attempt!(project_id(&project));
    let ctx = attempt!(Ctx::new(&state, project, &headers, custom.as_ref()).await);
    apps(&state, &ctx, &headers, None).await
}

async fn apps(state: &AppState, ctx: &Ctx, headers: &HeaderMap, notice: Option<String>) -> Response {
    let Some(user) = signed_in_user(state, ctx, headers).await else {
        let here = format!("{}/account/apps", ctx.site.prefix);
        let q = serde_urlencoded::to_string([("return_to", here.as_str())]).unwrap_or_default();
        return see_other_to(&format!("{}/signin?{q}", ctx.site.prefix));
    };
    let listed = match state.identity.project_scope(ctx.project).await {
        Ok(scope) => state.identity.list_consents(&scope, user).await,
        Err(e) => Err(e),
    };
    match listed {
        Ok(list) => {
            let mut p = ctx.page("apps", "Connected applications");
            p.notice = notice;
            p.apps = list
                .into_iter()
                .map(|c| {
                    let when = c.granted_at.format("%Y-%m-%d").to_string();
                    (c.id.to_string(), c.client_name, c.resource, c.scopes.join(" "), when)
                })
                .collect();
            ctx.render(StatusCode::OK, p)
        }
        Err(e) => ctx.error(e, "done", "Connected applications", ctx.page("done", "")),
    }
}

/// Revoke one: the consent goes, and the sessions (refresh tokens) of that grant end.
pub async fn revoke_post(
    State(state): State<AppState>,
    Path((project, id)): Path<(String, String)>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let Some(user) = signed_in_user(&state, &ctx, &headers).await else {
        return apps(&state, &ctx, &headers, None).await;
    };
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let revoked = match (Uuid::parse_str(&id), state.identity.project_scope(ctx.project).await) {
        (Ok(id), Ok(scope)) => state.identity.revoke_consent(&scope, user, id, &client_info(&headers, ip)).await,
        (Err(_), _) => Err(CoreError::NotFound(authio_core::types::Entity::Consent)),
        (_, Err(e)) => Err(e),
    };
    match revoked {
        Ok(()) => apps(&state, &ctx, &headers, Some("Access revoked.".into())).await,
        Err(e) => ctx.error(e, "done", "Connected applications", ctx.page("done", "")),
    }
}
