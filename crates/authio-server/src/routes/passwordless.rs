//! Sign-in without passwords for apps with their own UI (JSON): magic links and email codes,
//! and the CORS rules of the `/v1/auth` endpoints (allowed origins per project).
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::extract::json_body;
use crate::routes::auth::{client_info, client_ip, no_store, TokenResponse};
use crate::{ApiError, AppState};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MagicLinkRequest {
    pub project_id: Uuid,
    #[schema(format = "email", min_length = 3, max_length = 254)]
    pub email: String,
    /// A registered redirect URI of the project: the emailed link is this URI with `token`
    /// added; the app's page there calls `/v1/auth/magic-link/verify`.
    #[schema(format = "uri", max_length = 2048)]
    pub redirect_uri: String,
    /// Optional binding to the browser that asks: base64url(SHA-256(verifier)); the verify
    /// call must then send `code_verifier`.
    #[schema(pattern = "^[A-Za-z0-9_-]{43}$")]
    pub code_challenge: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Accepted {
    /// Always true: the answer does not say whether the account exists.
    pub accepted: bool,
}

/// A browser's `Origin`, unless it is this deployment's own.
fn foreign_origin<'a>(state: &AppState, headers: &'a HeaderMap) -> Option<&'a str> {
    let origin = headers.get(header::ORIGIN)?.to_str().ok()?;
    (origin != state.public_origin.as_ref()).then_some(origin)
}

/// A browser call for a project must come from one of the project's allowed origins.
pub(crate) async fn check_origin(state: &AppState, headers: &HeaderMap, project: Uuid) -> Result<(), ApiError> {
    if let Some(origin) = foreign_origin(state, headers) {
        if !state.identity.origin_allowed(project, origin).await? {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "origin_not_allowed", "this origin is not allowed"));
        }
    }
    Ok(())
}

/// CORS for `/v1/auth`: a preflight names no project, so an origin allowed by any project
/// passes it; each endpoint that names a project then checks that project's list.
pub async fn cors(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(origin) = foreign_origin(&state, req.headers()).map(str::to_owned) else {
        return next.run(req).await;
    };
    let known = match state.identity.origin_known(&origin).await {
        Ok(k) => k,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let preflight =
        req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if !known {
        return ApiError::new(StatusCode::FORBIDDEN, "origin_not_allowed", "this origin is not allowed")
            .into_response();
    }
    let mut resp = if preflight { StatusCode::NO_CONTENT.into_response() } else { next.run(req).await };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if preflight {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST"));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("content-type, authorization"));
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    }
    resp
}

fn binding_of(challenge: Option<&str>) -> Result<Option<[u8; 32]>, ApiError> {
    challenge
        .map(|c| {
            URL_SAFE_NO_PAD.decode(c).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()).ok_or_else(|| {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "code_challenge: base64url SHA-256")
            })
        })
        .transpose()
}

/// Email a sign-in link (the account is created on first use on customer projects).
#[utoipa::path(post, path = "/v1/auth/magic-link", tag = "auth", request_body = MagicLinkRequest,
    responses(
        (status = 202, description = "accepted (the same whether or not the account exists)", body = Accepted),
        (status = 400, description = "`invalid_redirect_uri`", body = crate::error::ErrorBody),
        (status = 403, description = "`origin_not_allowed`, or the method is off for the project (`forbidden`)", body = crate::error::ErrorBody),
        (status = 429, description = "too many emails for this address or recipient (`Retry-After`)", body = crate::error::ErrorBody),
    ))]
pub async fn request_magic_link(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: MagicLinkRequest = json_body(&headers, &body)?;
    check_origin(&state, &headers, req.project_id).await?;
    let uri = state.identity.registered_redirect(req.project_id, &req.redirect_uri).await?;
    let binding = binding_of(req.code_challenge.as_deref())?;
    let ip = client_ip(&state, connect.as_ref(), &headers);
    state.identity.request_magic_link(req.project_id, &req.email, uri.as_str(), None, binding, ip).await?;
    Ok(no_store(StatusCode::ACCEPTED, Json(Accepted { accepted: true })))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MagicLinkVerify {
    pub token: String,
    /// Required when the link was asked for with a `code_challenge`.
    pub code_verifier: Option<String>,
}

/// Use a magic link once: signs the user in.
#[utoipa::path(post, path = "/v1/auth/magic-link/verify", tag = "auth", request_body = MagicLinkVerify,
    responses(
        (status = 200, description = "signed in", body = TokenResponse),
        (status = 403, description = "`mfa_required`: a second factor must follow (`mfa_token`)", body = crate::routes::mfa::MfaRequiredBody),
        (status = 400, description = "`invalid_grant`: unknown, used, expired, or another browser's link", body = crate::error::ErrorBody),
        (status = 429, description = "too many checks from this address (`Retry-After`)", body = crate::error::ErrorBody),
    ))]
pub async fn verify_magic_link(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: MagicLinkVerify = json_body(&headers, &body)?;
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let proved = state.identity.use_magic_link(&req.token, req.code_verifier.as_deref(), ip).await?;
    let client = client_info(&headers, ip);
    let signed = state.identity.sign_in_proved(&proved, "magic_link", &client).await?;
    Ok(crate::routes::mfa::sign_in_answer(signed, StatusCode::OK))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailCodeRequest {
    pub project_id: Uuid,
    #[schema(format = "email", min_length = 3, max_length = 254)]
    pub email: String,
}

#[derive(Serialize, ToSchema)]
pub struct EmailCodeChallenge {
    /// Send it back with the code.
    pub challenge_id: Uuid,
    pub expires_in: i64,
}

/// Email a six-digit code (a new code replaces the previous one).
#[utoipa::path(post, path = "/v1/auth/email-code", tag = "auth", request_body = EmailCodeRequest,
    responses(
        (status = 202, description = "accepted (the same whether or not the account exists)", body = EmailCodeChallenge),
        (status = 429, description = "too many emails for this address or recipient (`Retry-After`)", body = crate::error::ErrorBody),
    ))]
pub async fn request_email_code(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: EmailCodeRequest = json_body(&headers, &body)?;
    check_origin(&state, &headers, req.project_id).await?;
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let (challenge_id, _) = state.identity.request_email_code(req.project_id, &req.email, None, ip).await?;
    let expires_in = state.identity.one_time().email_code_ttl_secs;
    Ok(no_store(StatusCode::ACCEPTED, Json(EmailCodeChallenge { challenge_id, expires_in })))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailCodeVerify {
    pub challenge_id: Uuid,
    /// Six digits (anything else is a wrong code).
    #[schema(pattern = "^[0-9]{6}$")]
    pub code: String,
}

/// Check an email code: five attempts per code, then the challenge is locked.
#[utoipa::path(post, path = "/v1/auth/email-code/verify", tag = "auth", request_body = EmailCodeVerify,
    responses(
        (status = 200, description = "signed in", body = TokenResponse),
        (status = 403, description = "`mfa_required`: a second factor must follow (`mfa_token`)", body = crate::routes::mfa::MfaRequiredBody),
        (status = 400, description = "`invalid_grant` (wrong or expired code), `challenge_locked`", body = crate::error::ErrorBody),
        (status = 429, description = "too many checks from this address (`Retry-After`)", body = crate::error::ErrorBody),
    ))]
pub async fn verify_email_code(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: EmailCodeVerify = json_body(&headers, &body)?;
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let proved = state.identity.verify_email_code(req.challenge_id, req.code.trim(), ip).await?;
    let client = client_info(&headers, ip);
    let signed = state.identity.sign_in_proved(&proved, "email_code", &client).await?;
    Ok(crate::routes::mfa::sign_in_answer(signed, StatusCode::OK))
}
