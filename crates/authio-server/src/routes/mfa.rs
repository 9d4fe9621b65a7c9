//! Second factors over the JSON API: finishing a sign-in that waits for one
//! (`/v1/auth/mfa/...`, with the `mfa_token` the sign-in answered), a signed-in user's own
//! factors (`/v1/me/mfa/...`, with the user's access token), and the project's view of a
//! user's factors (`/v1/projects/{id}/users/{user}/mfa-factors`, to reset a lost one).
use std::net::SocketAddr;

use authio_core::authz::Permission;
use authio_core::identity::auth::SignIn;
use authio_core::identity::mfa::{Answer, FactorInfo, Me, MfaNeed, PendingMfa, TotpEnrolment};
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::context::RequestContext;
use crate::error::ErrorDetail;
use crate::extract::json_body;
use crate::routes::auth::{client_info, client_ip, no_store, TokenResponse};
use crate::{ApiError, AppState};

/// A sign-in whose first factor checked out and that needs a second one before a session.
#[derive(Serialize, ToSchema)]
pub struct MfaRequiredBody {
    /// `{"code": "mfa_required", ...}`.
    pub error: ErrorDetail,
    /// Send it to `/v1/auth/mfa/verify` with a code (or, when `enrolment_required`, enrol with
    /// it at `/v1/auth/mfa/totp/enrol`). Good once, for `expires_in` seconds.
    pub mfa_token: String,
    /// What the user can answer with: `totp`, `webauthn` (on the hosted pages), `recovery_code`.
    pub factors: Vec<String>,
    /// Policy requires a second factor and the user has none: enrol one first.
    pub enrolment_required: bool,
    pub expires_in: i64,
}

fn mfa_required(p: PendingMfa) -> Response {
    let (factors, enrol) = match p.need {
        MfaNeed::Challenge(f) => (f.names().into_iter().map(str::to_owned).collect(), false),
        _ => (Vec::new(), true),
    };
    let message = if enrol {
        "a second factor is required: enrol one to finish signing in"
    } else {
        "a second factor is required to finish signing in"
    };
    no_store(
        StatusCode::FORBIDDEN,
        Json(MfaRequiredBody {
            error: ErrorDetail { code: "mfa_required".into(), message: message.into() },
            mfa_token: p.token,
            factors,
            enrolment_required: enrol,
            expires_in: p.expires_in,
        }),
    )
}

/// The answer to a sign-in: its tokens, or the second factor it waits for.
pub(crate) fn sign_in_answer(s: SignIn, ok: StatusCode) -> Response {
    match s {
        SignIn::Tokens(t) => no_store(ok, Json(TokenResponse::from(t))),
        SignIn::Mfa(p) => mfa_required(p),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaVerifyRequest {
    #[schema(min_length = 80, max_length = 80)]
    pub mfa_token: String,
    /// Six digits from the authenticator app.
    #[schema(pattern = "^[0-9]{6}$")]
    pub code: Option<String>,
    /// One of the recovery codes (dashes and case do not matter).
    #[schema(min_length = 1, max_length = 64)]
    pub recovery_code: Option<String>,
}

fn field(name: &'static str) -> ApiError {
    ApiError::from(authio_core::CoreError::Invalid(authio_core::types::ValidationError::Field(name)))
}

/// Finish a sign-in with its second factor: a TOTP code or a recovery code (each used once).
/// Five wrong answers lock the factor for 15 minutes.
#[utoipa::path(post, path = "/v1/auth/mfa/verify", tag = "mfa", request_body = MfaVerifyRequest,
    responses(
        (status = 200, description = "signed in (`amr` has `otp` and `mfa`)", body = TokenResponse),
        (status = 400, description = "`invalid_grant`: a wrong or used code, or an expired or used `mfa_token`", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_request`: neither or both of `code` and `recovery_code`", body = crate::error::ErrorBody),
        (status = 429, description = "`factor_locked` (too many wrong codes for this factor) or `too_many_attempts` (this address), with `Retry-After`", body = crate::error::ErrorBody),
    ))]
pub async fn verify(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: MfaVerifyRequest = json_body(&headers, &body)?;
    let answer = match (req.code.as_deref(), req.recovery_code.as_deref()) {
        (Some(c), None) => Answer::Totp(c.trim()),
        (None, Some(r)) if !r.is_empty() && r.len() <= 64 => Answer::RecoveryCode(r),
        _ => return Err(field("code or recovery_code (one of them)")),
    };
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let client = client_info(&headers, ip);
    let done = state.identity.verify_mfa(&req.mfa_token, answer, &client, ip).await?;
    let tokens = state.identity.start_completed_session(&done, &client).await?;
    Ok(no_store(StatusCode::OK, Json(TokenResponse::from(tokens))))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaTokenRequest {
    #[schema(min_length = 80, max_length = 80)]
    pub mfa_token: String,
}

#[derive(Serialize, ToSchema)]
pub struct TotpEnrolmentBody {
    pub factor_id: Uuid,
    /// The secret in base32, for typing into the app by hand.
    pub secret: String,
    /// `otpauth://totp/...`: what the QR code holds.
    pub otpauth_uri: String,
    /// The URI as a QR code, an `<svg>` element.
    pub qr_svg: String,
}

impl From<TotpEnrolment> for TotpEnrolmentBody {
    fn from(e: TotpEnrolment) -> Self {
        TotpEnrolmentBody { factor_id: e.factor_id, secret: e.secret, otpauth_uri: e.otpauth_uri, qr_svg: e.qr_svg }
    }
}

/// Enrol an authenticator app inside a sign-in that must have one (`enrolment_required`): the
/// secret to show. Asking again shows the same secret.
#[utoipa::path(post, path = "/v1/auth/mfa/totp/enrol", tag = "mfa", request_body = MfaTokenRequest,
    responses(
        (status = 200, body = TotpEnrolmentBody),
        (status = 400, description = "`invalid_grant`: an expired or used `mfa_token`, or one that is not enrolling", body = crate::error::ErrorBody),
    ))]
pub async fn enrol_totp(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let req: MfaTokenRequest = json_body(&headers, &body)?;
    let e = state.identity.pending_totp_enrolment(&req.mfa_token).await?;
    Ok(no_store(StatusCode::OK, Json(TotpEnrolmentBody::from(e))))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaConfirmRequest {
    #[schema(min_length = 80, max_length = 80)]
    pub mfa_token: String,
    #[schema(pattern = "^[0-9]{6}$")]
    pub code: String,
}

#[derive(Serialize, ToSchema)]
pub struct EnrolledSignIn {
    #[serde(flatten)]
    pub tokens: TokenResponse,
    /// Ten single-use codes, shown this once: the way in if the app is lost.
    pub recovery_codes: Vec<String>,
}

/// Confirm the enrolment with a code from the app: the factor is on, the sign-in completes,
/// and the recovery codes are shown once.
#[utoipa::path(post, path = "/v1/auth/mfa/totp/confirm", tag = "mfa", request_body = MfaConfirmRequest,
    responses(
        (status = 200, description = "enrolled and signed in", body = EnrolledSignIn),
        (status = 400, description = "`invalid_grant`: a wrong code, or an expired or used `mfa_token`, or a factor enrolled meanwhile elsewhere", body = crate::error::ErrorBody),
        (status = 409, description = "`conflict`: an authenticator app was confirmed for the user at the same moment", body = crate::error::ErrorBody),
        (status = 429, description = "`factor_locked` or `too_many_attempts`, with `Retry-After`", body = crate::error::ErrorBody),
    ))]
pub async fn confirm_totp(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: MfaConfirmRequest = json_body(&headers, &body)?;
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let client = client_info(&headers, ip);
    let recovery_codes = state.identity.confirm_pending_totp(&req.mfa_token, req.code.trim(), &client, ip).await?;
    let done = state.identity.complete_enrolled(&req.mfa_token).await?;
    let tokens = state.identity.start_completed_session(&done, &client).await?;
    Ok(no_store(StatusCode::OK, Json(EnrolledSignIn { tokens: tokens.into(), recovery_codes })))
}

// ---------------------------------------------------------------------------------------
// The signed-in user's own factors

async fn me(state: &AppState, headers: &HeaderMap) -> Result<Me, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 8192)
        .ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "send the user's access token as a Bearer token")
        })?;
    Ok(state.identity.me(token).await?)
}

#[derive(Serialize, ToSchema)]
pub struct FactorBody {
    pub id: Uuid,
    /// `totp` or `webauthn`.
    pub kind: String,
    pub name: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub last_used_at: Option<chrono::DateTime<chrono::Utc>>,
    /// WebAuthn: a passkey that may be synced between devices (else a key bound to one).
    pub synced: Option<bool>,
}

impl From<FactorInfo> for FactorBody {
    fn from(f: FactorInfo) -> Self {
        FactorBody {
            id: f.id,
            kind: f.kind,
            name: f.name,
            created_at: f.created_at,
            last_used_at: f.last_used_at,
            synced: f.synced,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct FactorList {
    pub factors: Vec<FactorBody>,
    pub recovery_codes_remaining: i32,
}

/// The signed-in user's second factors.
#[utoipa::path(get, path = "/v1/me/mfa", tag = "mfa", security(("user_access_token" = [])),
    responses((status = 200, body = FactorList),
        (status = 401, description = "`unauthorized`, `invalid_token`", body = crate::error::ErrorBody),
        (status = 403, description = "`forbidden`: an M2M or impersonation token", body = crate::error::ErrorBody)))]
pub async fn my_factors(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let me = me(&state, &headers).await?;
    let (factors, left) = state.identity.list_factors(&me.scope, me.user).await?;
    Ok(no_store(
        StatusCode::OK,
        Json(FactorList {
            factors: factors.into_iter().map(FactorBody::from).collect(),
            recovery_codes_remaining: left,
        }),
    ))
}

/// Start adding an authenticator app: the secret to show. It counts once confirmed with a code.
/// A user who has a factor needs a session that passed one (`mfa_required` otherwise).
#[utoipa::path(post, path = "/v1/me/mfa/totp", tag = "mfa", security(("user_access_token" = [])),
    responses((status = 201, body = TotpEnrolmentBody),
        (status = 401, description = "`unauthorized`, `invalid_token`", body = crate::error::ErrorBody),
        (status = 403, description = "`mfa_required`: sign in with the second factor first; `forbidden`", body = crate::error::ErrorBody)))]
pub async fn start_my_totp(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let me = me(&state, &headers).await?;
    state.identity.require_second_factor(&me).await?;
    let e = state.identity.start_totp(&me.scope, me.user).await?;
    Ok(no_store(StatusCode::CREATED, Json(TotpEnrolmentBody::from(e))))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeBody {
    #[schema(pattern = "^[0-9]{6}$")]
    pub code: String,
}

#[derive(Serialize, ToSchema)]
pub struct RecoveryCodes {
    /// Shown this once; null when the user already had codes.
    pub recovery_codes: Option<Vec<String>>,
}

fn factor_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("factor_not_found", "factor not found"))
}

/// Confirm the app with a code from it (`mfa.enrolled`); the first factor brings ten recovery
/// codes.
#[utoipa::path(post, path = "/v1/me/mfa/totp/{id}/confirm", tag = "mfa", security(("user_access_token" = [])),
    params(("id" = Uuid, Path)), request_body = CodeBody,
    responses((status = 200, body = RecoveryCodes),
        (status = 400, description = "`invalid_grant`: a wrong code", body = crate::error::ErrorBody),
        (status = 401, description = "`unauthorized`, `invalid_token`", body = crate::error::ErrorBody),
        (status = 403, description = "`mfa_required`, `forbidden`", body = crate::error::ErrorBody),
        (status = 404, description = "`factor_not_found`", body = crate::error::ErrorBody),
        (status = 409, description = "`conflict`: an app is enrolled already", body = crate::error::ErrorBody),
        (status = 429, description = "`factor_locked`, `too_many_attempts`", body = crate::error::ErrorBody)))]
pub async fn confirm_my_totp(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let me = me(&state, &headers).await?;
    state.identity.require_second_factor(&me).await?;
    let id = factor_id(&id)?;
    let req: CodeBody = json_body(&headers, &body)?;
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let client = client_info(&headers, ip);
    let codes = state.identity.confirm_totp(&me.scope, me.user, id, req.code.trim(), &client, ip).await?;
    Ok(no_store(StatusCode::OK, Json(RecoveryCodes { recovery_codes: codes })))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameBody {
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
}

/// Rename a factor.
#[utoipa::path(patch, path = "/v1/me/mfa/factors/{id}", tag = "mfa", security(("user_access_token" = [])),
    params(("id" = Uuid, Path)), request_body = RenameBody,
    responses((status = 204),
        (status = 401, description = "`unauthorized`, `invalid_token`", body = crate::error::ErrorBody),
        (status = 403, description = "`mfa_required`, `forbidden`", body = crate::error::ErrorBody),
        (status = 404, description = "`factor_not_found`", body = crate::error::ErrorBody),
        (status = 422, description = "`invalid_request`", body = crate::error::ErrorBody)))]
pub async fn rename_my_factor(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let me = me(&state, &headers).await?;
    state.identity.require_second_factor(&me).await?;
    let id = factor_id(&id)?;
    let req: RenameBody = json_body(&headers, &body)?;
    state.identity.rename_factor(&me.scope, me.user, id, &req.name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a factor (`mfa.removed`); with the last one go the recovery codes.
#[utoipa::path(delete, path = "/v1/me/mfa/factors/{id}", tag = "mfa", security(("user_access_token" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 204),
        (status = 401, description = "`unauthorized`, `invalid_token`", body = crate::error::ErrorBody),
        (status = 403, description = "`mfa_required`, `forbidden`", body = crate::error::ErrorBody),
        (status = 404, description = "`factor_not_found`", body = crate::error::ErrorBody)))]
pub async fn remove_my_factor(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let me = me(&state, &headers).await?;
    state.identity.require_second_factor(&me).await?;
    let id = factor_id(&id)?;
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let actor = authio_core::audit::Actor::user(me.user, None);
    state.identity.remove_factor(&me.scope, me.user, id, actor, &client_info(&headers, ip)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct NewRecoveryCodes {
    /// Shown this once; the previous codes no longer work.
    pub recovery_codes: Vec<String>,
}

/// Replace the recovery codes with ten new ones.
#[utoipa::path(post, path = "/v1/me/mfa/recovery-codes", tag = "mfa", security(("user_access_token" = [])),
    responses((status = 200, body = NewRecoveryCodes),
        (status = 401, description = "`unauthorized`, `invalid_token`", body = crate::error::ErrorBody),
        (status = 403, description = "`mfa_required`, `forbidden`", body = crate::error::ErrorBody),
        (status = 409, description = "`conflict`: no second factor yet", body = crate::error::ErrorBody)))]
pub async fn regenerate_my_codes(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let me = me(&state, &headers).await?;
    state.identity.require_second_factor(&me).await?;
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let codes = state.identity.regenerate_recovery_codes(&me.scope, me.user, &client_info(&headers, ip)).await?;
    Ok(no_store(StatusCode::OK, Json(NewRecoveryCodes { recovery_codes: codes })))
}

// ---------------------------------------------------------------------------------------
// The project's view

fn user_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found("user_not_found", "user not found"))
}

/// A user's second factors (never their secrets).
#[utoipa::path(get, path = "/v1/projects/{project_id}/users/{user_id}/mfa-factors", tag = "mfa",
    params(("project_id" = Uuid, Path), ("user_id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 200, body = FactorList)))]
pub async fn user_factors(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, user)): Path<(String, String)>,
) -> Result<Json<FactorList>, ApiError> {
    let auth = ctx.authorize(Permission::UsersRead)?;
    let user = user_id(&user)?;
    let (factors, left) = state.identity.list_factors(auth.scope()?, user).await?;
    Ok(Json(FactorList {
        factors: factors.into_iter().map(FactorBody::from).collect(),
        recovery_codes_remaining: left,
    }))
}

/// Remove a user's factor (someone who lost theirs; `mfa.removed`, the actor the caller). A
/// user the policy requires a factor of enrols again at the next sign-in.
#[utoipa::path(delete, path = "/v1/projects/{project_id}/users/{user_id}/mfa-factors/{id}", tag = "mfa",
    params(("project_id" = Uuid, Path), ("user_id" = Uuid, Path), ("id" = Uuid, Path)),
    security(("project_api_key" = [])),
    responses((status = 204), (status = 404, description = "`factor_not_found`", body = crate::error::ErrorBody)))]
pub async fn remove_user_factor(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, user, id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let auth = ctx.authorize(Permission::UsersManage)?;
    let (user, id) = (user_id(&user)?, factor_id(&id)?);
    let actor = auth.actor().clone();
    state.identity.remove_factor(auth.scope()?, user, id, actor, &client_info(&headers, None)).await?;
    Ok(StatusCode::NO_CONTENT)
}
