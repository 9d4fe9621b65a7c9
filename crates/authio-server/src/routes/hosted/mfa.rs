//! The hosted pages of second factors: the challenge a sign-in waits at (a TOTP code, a
//! recovery code, or a passkey or security key), the enrolment policy requires before a first
//! session, passkey sign-in, and the user's own security page (list, rename, remove, add,
//! new recovery codes). Server-rendered and working without JavaScript, except the WebAuthn
//! ceremony itself (one inline script, allowed by its nonce).
//!
//! The waiting sign-in's token rides in an HttpOnly cookie of the project's pages; the
//! security page needs the browser's provider session (the signed `authio_op` cookie) and,
//! for a user with a factor, one that passed it (else a step-up first).
use std::net::SocketAddr;

use askama::Template;
use authio_core::identity::mfa::webauthn::Rp;
use authio_core::identity::mfa::{Answer, Completed, FactorInfo, MfaNeed, PendingMfa, Stage, TotpEnrolment};
use authio_core::identity::signin::{Return, SignedInUser};
use authio_core::oidc::OpSession;
use authio_core::CoreError;
use authio_db::Scope;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form, Json};
use uuid::Uuid;

use super::{
    append_cookie, cookie, describe, finish, flow_return, hand_off, plain_error, posted, project_id, random_token,
    see_other_to, Ctx, CustomHost, FormFields, OP_COOKIE,
};
use crate::routes::auth::{client_info, client_ip};
use crate::AppState;

/// The waiting sign-in's token.
const MFA_COOKIE: &str = "authio_mfa";

#[derive(Template, Default)]
#[template(path = "mfa.html")]
struct MfaPage {
    title: String,
    brand: String,
    logo: Option<String>,
    heading: String,
    error: Option<String>,
    notice: Option<String>,
    csrf: String,
    prefix: String,
    page: &'static str,
    totp: bool,
    webauthn: bool,
    recovery: bool,
    qr_svg: String,
    secret: String,
    otpauth_uri: String,
    factor: String,
    codes: Vec<String>,
    continue_action: String,
    email: String,
    factors: Vec<FactorRow>,
    recovery_left: i32,
    has_totp: bool,
    script_nonce: String,
}

struct FactorRow {
    id: Uuid,
    kind: &'static str,
    name: String,
    created: String,
    last_used: Option<String>,
}

impl From<FactorInfo> for FactorRow {
    fn from(f: FactorInfo) -> Self {
        let kind = match (f.kind.as_str(), f.synced) {
            ("totp", _) => "authenticator app",
            (_, Some(true)) => "passkey",
            _ => "security key",
        };
        FactorRow {
            id: f.id,
            kind,
            name: f.name,
            created: f.created_at.format("%Y-%m-%d").to_string(),
            last_used: f.last_used_at.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()),
        }
    }
}

impl Ctx {
    fn mfa_page(&self, page: &'static str, heading: &str) -> MfaPage {
        let p = &self.presentation;
        MfaPage {
            title: p.title().to_owned(),
            brand: p.brand_color.clone(),
            logo: p.logo_url.clone(),
            heading: heading.to_owned(),
            csrf: self.csrf.clone(),
            prefix: self.site.prefix.clone(),
            page,
            ..MfaPage::default()
        }
    }

    fn render_mfa(&self, status: StatusCode, page: MfaPage) -> Response {
        self.render_template(status, &page, &page.script_nonce)
    }

    /// An MFA page with what went wrong, in the status the API would give.
    fn mfa_error(&self, e: CoreError, mut page: MfaPage) -> Response {
        let (status, message, retry) = describe(e);
        page.error = Some(message);
        let mut resp = self.render_mfa(status, page);
        if let Some(secs) = retry {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }

    /// The waiting sign-in is gone (expired, used, or never was): sign in again.
    fn start_again(&self, e: CoreError) -> Response {
        let mut p = self.page("done", "");
        p.signin_link = format!("{}/signin", self.site.prefix);
        self.error(e, "done", "Sign in again", p)
    }

    /// The relying party of these pages: the host they are served on, exactly.
    fn rp(&self) -> Result<Rp, CoreError> {
        let origin = self.site.root.trim_end_matches('/').to_owned();
        let id = url::Url::parse(&origin)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .ok_or_else(|| CoreError::Config(format!("the public URL {origin} has no host")))?;
        Ok(Rp { id, origin, name: self.presentation.title().to_owned() })
    }
}

fn set_mfa_cookie(h: &mut HeaderMap, ctx: &Ctx, value: &str, max_age: i64) {
    let path = if ctx.site.prefix.is_empty() { "/" } else { &ctx.site.prefix };
    append_cookie(h, MFA_COOKIE, value, path, max_age, ctx.secure);
}

/// A first factor checked out and a second must follow: to the challenge (or the enrolment),
/// the waiting sign-in's token in a cookie.
pub(super) fn to_second_factor(ctx: &Ctx, p: &PendingMfa) -> Response {
    let next = match p.need {
        MfaNeed::Enrol => "mfa/enrol",
        _ => "mfa",
    };
    let mut resp = see_other_to(&format!("{}/{next}", ctx.site.prefix));
    set_mfa_cookie(resp.headers_mut(), ctx, &p.token, p.expires_in);
    resp
}

/// The provider's step-up: a browser signed in without the second factor a request needs goes
/// to the challenge (or the enrolment) and comes back to the authorization request.
pub(crate) fn step_up(
    state: &AppState,
    project: Uuid,
    custom: Option<&Extension<CustomHost>>,
    p: &PendingMfa,
) -> Response {
    let prefix = if custom.is_some() { String::new() } else { format!("/p/{project}") };
    let next = match p.need {
        MfaNeed::Enrol => "mfa/enrol",
        _ => "mfa",
    };
    let mut resp = see_other_to(&format!("{prefix}/{next}"));
    let path = if prefix.is_empty() { "/" } else { &prefix };
    append_cookie(resp.headers_mut(), MFA_COOKIE, &p.token, path, p.expires_in, state.public_scheme == "https");
    resp
}

/// A sign-in whose second factor checked out: on to the app (or the provider), the cookie
/// dropped.
async fn complete(state: &AppState, ctx: &Ctx, done: &Completed) -> Response {
    let amr = done.amr_refs();
    let mut resp = hand_off(state, ctx, &done.scope, &done.user, &amr, done.ret.as_ref(), &done.email).await;
    set_mfa_cookie(resp.headers_mut(), ctx, "", 0);
    resp
}

fn token(headers: &HeaderMap) -> Result<String, CoreError> {
    cookie(headers, MFA_COOKIE)
        .filter(|t| !t.is_empty())
        .ok_or(CoreError::InvalidGrant("this sign-in has expired or was completed: sign in again"))
}

fn codes_page(ctx: &Ctx, codes: Vec<String>, continue_action: String) -> Response {
    let mut p = ctx.mfa_page("codes", "Save your recovery codes");
    p.codes = codes;
    p.continue_action = continue_action;
    ctx.render_mfa(StatusCode::OK, p)
}

/// The challenge page, with what the user has: the app's code, a key, a recovery code.
async fn challenge(state: &AppState, ctx: &Ctx, headers: &HeaderMap, error: Option<CoreError>) -> Response {
    let pending = match token(headers) {
        Ok(t) => state.identity.pending_mfa(&t).await,
        Err(e) => Err(e),
    };
    let p = match pending {
        Ok(p) => p,
        Err(e) => return ctx.start_again(e),
    };
    match p.stage {
        Stage::Enrol => return see_other_to(&format!("{}/mfa/enrol", ctx.site.prefix)),
        Stage::Enrolled => return codes_page(ctx, Vec::new(), format!("{}/mfa/continue", ctx.site.prefix)),
        Stage::Challenge => {}
    }
    let mut page = ctx.mfa_page("challenge", "Verify it's you");
    page.totp = p.factors.totp;
    page.webauthn = p.factors.webauthn;
    page.recovery = p.factors.recovery_code;
    if page.webauthn {
        page.script_nonce = random_token();
    }
    match error {
        None => ctx.render_mfa(StatusCode::OK, page),
        Some(e) => ctx.mfa_error(e, page),
    }
}

pub async fn challenge_page(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    headers: HeaderMap,
) -> Response {
    let project = attempt!(project_id(&project));
    let ctx = attempt!(Ctx::new(&state, project, &headers, custom.as_ref()).await);
    challenge(&state, &ctx, &headers, None).await
}

/// A TOTP or recovery code posted.
pub async fn challenge_post(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let client = client_info(&headers, ip);
    let answer = match (form.code.as_deref().map(str::trim), form.recovery_code.as_deref().map(str::trim)) {
        (Some(c), _) if !c.is_empty() => Answer::Totp(c),
        (_, Some(r)) if !r.is_empty() && r.len() <= 64 => Answer::RecoveryCode(r),
        _ => {
            let e = CoreError::Invalid(authio_core::types::ValidationError::Field("code"));
            return challenge(&state, &ctx, &headers, Some(e)).await;
        }
    };
    let token = match token(&headers) {
        Ok(t) => t,
        Err(e) => return ctx.start_again(e),
    };
    match state.identity.verify_mfa(&token, answer, &client, ip).await {
        Ok(done) => complete(&state, &ctx, &done).await,
        Err(e) => challenge(&state, &ctx, &headers, Some(e)).await,
    }
}

/// The enrolment page: the authenticator app's QR code (made on first view), or a passkey.
async fn enrolment(state: &AppState, ctx: &Ctx, headers: &HeaderMap, error: Option<CoreError>) -> Response {
    let shown = match token(headers) {
        Ok(t) => state.identity.pending_totp_enrolment(&t).await,
        Err(e) => Err(e),
    };
    let e = match shown {
        Ok(e) => e,
        Err(CoreError::InvalidGrant(m)) if m.contains("not enrolling") => {
            return see_other_to(&format!("{}/mfa", ctx.site.prefix))
        }
        Err(e) => return ctx.start_again(e),
    };
    let mut page = enrolment_page(ctx, "enrol", "Set up a second factor", e);
    page.notice = Some("This account needs a second factor to sign in.".into());
    page.script_nonce = random_token();
    match error {
        None => ctx.render_mfa(StatusCode::OK, page),
        Some(err) => ctx.mfa_error(err, page),
    }
}

fn enrolment_page(ctx: &Ctx, page: &'static str, heading: &str, e: TotpEnrolment) -> MfaPage {
    let mut p = ctx.mfa_page(page, heading);
    p.qr_svg = e.qr_svg;
    p.secret = e.secret;
    p.otpauth_uri = e.otpauth_uri;
    p.factor = e.factor_id.to_string();
    p
}

pub async fn enrol_page(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    headers: HeaderMap,
) -> Response {
    let project = attempt!(project_id(&project));
    let ctx = attempt!(Ctx::new(&state, project, &headers, custom.as_ref()).await);
    enrolment(&state, &ctx, &headers, None).await
}

/// The first code from the app: the factor is on; the recovery codes are shown once.
pub async fn enrol_post(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let token = match token(&headers) {
        Ok(t) => t,
        Err(e) => return ctx.start_again(e),
    };
    let code = form.code.as_deref().unwrap_or_default().trim();
    match state.identity.confirm_pending_totp(&token, code, &client_info(&headers, ip), ip).await {
        Ok(codes) => codes_page(&ctx, codes, format!("{}/mfa/continue", ctx.site.prefix)),
        Err(e) => enrolment(&state, &ctx, &headers, Some(e)).await,
    }
}

/// After the recovery codes: the sign-in completes.
pub async fn continue_post(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let done = match token(&headers) {
        Ok(t) => state.identity.complete_enrolled(&t).await,
        Err(e) => Err(e),
    };
    match done {
        Ok(done) => complete(&state, &ctx, &done).await,
        Err(e) => ctx.start_again(e),
    }
}

fn options_json(result: Result<(Uuid, serde_json::Value), CoreError>) -> Response {
    match result {
        Ok((ceremony, options)) => {
            let mut resp =
                (StatusCode::OK, Json(serde_json::json!({"ceremony": ceremony, "options": options}))).into_response();
            resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) => plain_error(e),
    }
}

fn ceremony_of(form: &FormFields) -> Result<(Uuid, &str), CoreError> {
    let ceremony = form.ceremony.as_deref().and_then(|c| Uuid::parse_str(c).ok());
    let credential = form.credential.as_deref().filter(|c| !c.is_empty() && c.len() <= 64 * 1024);
    match (ceremony, credential) {
        (Some(c), Some(r)) => Ok((c, r)),
        _ => Err(CoreError::Invalid(authio_core::types::ValidationError::Field("credential (the passkey's answer)"))),
    }
}

/// Options for the waiting sign-in's key: to answer the challenge, or to enrol one.
pub async fn webauthn_options(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let result = async {
        let token = token(&headers)?;
        let rp = ctx.rp()?;
        match state.identity.pending_mfa(&token).await?.stage {
            Stage::Challenge => state.identity.start_key_challenge(&token, &rp).await,
            Stage::Enrol => state.identity.start_pending_key_registration(&token, &rp).await,
            Stage::Enrolled => Err(CoreError::InvalidGrant("a second factor is enrolled already: continue")),
        }
    }
    .await;
    options_json(result)
}

/// The key's answer: the challenge passed, or a key enrolled.
pub async fn webauthn_post(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let client = client_info(&headers, ip);
    let token = match token(&headers) {
        Ok(t) => t,
        Err(e) => return ctx.start_again(e),
    };
    let stage = match state.identity.pending_mfa(&token).await {
        Ok(p) => p.stage,
        Err(e) => return ctx.start_again(e),
    };
    let answered = async {
        let (ceremony, credential) = ceremony_of(&form)?;
        let rp = ctx.rp()?;
        Ok::<_, CoreError>((ceremony, credential, rp))
    }
    .await;
    let (ceremony, credential, rp) = match answered {
        Ok(a) => a,
        Err(e) if stage == Stage::Enrol => return enrolment(&state, &ctx, &headers, Some(e)).await,
        Err(e) => return challenge(&state, &ctx, &headers, Some(e)).await,
    };
    if stage == Stage::Enrol {
        return match state.identity.finish_pending_key_registration(&token, ceremony, credential, &rp, &client).await {
            Ok(codes) => codes_page(&ctx, codes, format!("{}/mfa/continue", ctx.site.prefix)),
            Err(e) => enrolment(&state, &ctx, &headers, Some(e)).await,
        };
    }
    match state.identity.finish_key_challenge(&token, ceremony, credential, &rp, &client, ip).await {
        Ok(done) => complete(&state, &ctx, &done).await,
        Err(e) => challenge(&state, &ctx, &headers, Some(e)).await,
    }
}

/// Options for a passkey sign-in (the project offers `passkey`).
pub async fn passkey_options(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let result = match ctx.rp() {
        Ok(rp) => state.identity.start_passkey_signin(ctx.project, &rp, ip).await,
        Err(e) => Err(e),
    };
    options_json(result)
}

/// A passkey's answer: signed in (two factors in one), on to the app.
pub async fn passkey_post(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let flow = form.flow.params();
    let mut again = ctx.with_flow(ctx.page("signin", "Sign in"), &flow);
    again.passkey = ctx.presentation.offers("passkey");
    again.script_nonce = random_token();
    let ret = match flow_return(&state, ctx.project, &flow).await {
        Ok(r) => r,
        Err(e) => return ctx.error(e, "done", "This sign-in link is not valid", ctx.page("done", "")),
    };
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let client = client_info(&headers, ip);
    let signed = async {
        let (ceremony, credential) = ceremony_of(&form)?;
        let rp = ctx.rp()?;
        state.identity.finish_passkey_signin(ctx.project, ceremony, credential, &rp, &client, ip).await
    }
    .await;
    match signed {
        Ok((scope, user, amr)) => {
            let amr: Vec<&str> = amr.iter().map(String::as_str).collect();
            finish(&state, &ctx, &scope, &user, &amr, ret.as_ref(), "your account").await
        }
        Err(e) => ctx.error(e, "signin", "Sign in", again),
    }
}

// ---------------------------------------------------------------------------------------
// The security page

/// The signed-in user of the security page: the browser's provider session, one that passed
/// a second factor if the user has one. Otherwise the answer to give: the sign-in page, or a
/// step-up, each coming back here.
async fn account(state: &AppState, ctx: &Ctx, headers: &HeaderMap) -> Result<(Scope, OpSession), Box<Response>> {
    let here = format!("{}/account/security", ctx.site.prefix);
    let session = cookie(headers, OP_COOKIE).and_then(|c| state.oidc.read_op_session(&c));
    let signed_in = match state.oidc.signed_in(ctx.project, session.as_ref()).await {
        Ok(s) => s,
        Err(e) => return Err(Box::new(ctx.error(e, "done", "Security", ctx.page("done", "")))),
    };
    let Some(s) = signed_in else {
        let q = serde_urlencoded::to_string([("return_to", here.as_str())]).unwrap_or_default();
        return Err(Box::new(see_other_to(&format!("{}/signin?{q}", ctx.site.prefix))));
    };
    let fail = |e: CoreError| Box::new(ctx.error(e, "done", "Security", ctx.page("done", "")));
    let scope = state.identity.project_scope(ctx.project).await.map_err(fail)?;
    if !s.amr.iter().any(|a| a == "mfa") {
        if let MfaNeed::Challenge(_) = state.identity.mfa_need(&scope, s.user_id).await.map_err(fail)? {
            let ret = Return::authorize(ctx.project, &here).map_err(fail)?;
            let user = SignedInUser { user_id: s.user_id, role: None, created: false };
            let amr: Vec<&str> = s.amr.iter().map(String::as_str).collect();
            if let Some(p) = state.identity.begin_mfa(&scope, &user, &amr, Some(&ret)).await.map_err(fail)? {
                return Err(Box::new(to_second_factor(ctx, &p)));
            }
        }
    }
    Ok((scope, s))
}

async fn security(state: &AppState, ctx: &Ctx, headers: &HeaderMap, error: Option<CoreError>) -> Response {
    let (scope, s) = attempt!(account(state, ctx, headers).await);
    let listed = state.identity.list_factors(&scope, s.user_id).await;
    let email = state.identity.user_email(&scope, s.user_id).await;
    let ((factors, left), email) = match (listed, email) {
        (Ok(l), Ok(e)) => (l, e),
        (Err(e), _) | (_, Err(e)) => return ctx.error(e, "done", "Security", ctx.page("done", "")),
    };
    let mut page = ctx.mfa_page("security", "Sign-in security");
    page.has_totp = factors.iter().any(|f| f.kind == "totp");
    page.factors = factors.into_iter().map(FactorRow::from).collect();
    page.recovery_left = left;
    page.email = email;
    page.script_nonce = random_token();
    match error {
        None => ctx.render_mfa(StatusCode::OK, page),
        Some(e) => ctx.mfa_error(e, page),
    }
}

pub async fn security_page(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    headers: HeaderMap,
) -> Response {
    let project = attempt!(project_id(&project));
    let ctx = attempt!(Ctx::new(&state, project, &headers, custom.as_ref()).await);
    security(&state, &ctx, &headers, None).await
}

fn back_to_security(ctx: &Ctx) -> Response {
    see_other_to(&format!("{}/account/security", ctx.site.prefix))
}

/// After new recovery codes were shown.
pub async fn security_done(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    back_to_security(&ctx)
}

/// Add an authenticator app: its QR code.
pub async fn security_totp_page(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    headers: HeaderMap,
) -> Response {
    let project = attempt!(project_id(&project));
    let ctx = attempt!(Ctx::new(&state, project, &headers, custom.as_ref()).await);
    let (scope, s) = attempt!(account(&state, &ctx, &headers).await);
    match state.identity.start_totp(&scope, s.user_id).await {
        Ok(e) => ctx.render_mfa(StatusCode::OK, enrolment_page(&ctx, "security-totp", "Add an authenticator app", e)),
        Err(e) => security(&state, &ctx, &headers, Some(e)).await,
    }
}

/// Its first code: on, and recovery codes if the user had none.
pub async fn security_totp_post(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let (scope, s) = attempt!(account(&state, &ctx, &headers).await);
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let Some(factor) = form.factor.as_deref().and_then(|f| Uuid::parse_str(f).ok()) else {
        return back_to_security(&ctx);
    };
    let code = form.code.as_deref().unwrap_or_default().trim();
    match state.identity.confirm_totp(&scope, s.user_id, factor, code, &client_info(&headers, ip), ip).await {
        Ok(Some(codes)) => codes_page(&ctx, codes, format!("{}/account/security/done", ctx.site.prefix)),
        Ok(None) => back_to_security(&ctx),
        Err(e) => match state.identity.show_totp(&scope, s.user_id, factor).await {
            Ok(Some(shown)) => {
                let page = enrolment_page(&ctx, "security-totp", "Add an authenticator app", shown);
                ctx.mfa_error(e, page)
            }
            _ => security(&state, &ctx, &headers, Some(e)).await,
        },
    }
}

/// New recovery codes (the old ones stop working).
pub async fn security_codes_post(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let (scope, s) = attempt!(account(&state, &ctx, &headers).await);
    let ip = client_ip(&state, connect.as_ref(), &headers);
    match state.identity.regenerate_recovery_codes(&scope, s.user_id, &client_info(&headers, ip)).await {
        Ok(codes) => codes_page(&ctx, codes, format!("{}/account/security/done", ctx.site.prefix)),
        Err(e) => security(&state, &ctx, &headers, Some(e)).await,
    }
}

/// Rename or remove a factor.
pub async fn security_factor_post(
    State(state): State<AppState>,
    Path((project, id, act)): Path<(String, String, String)>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let (scope, s) = attempt!(account(&state, &ctx, &headers).await);
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let Ok(id) = Uuid::parse_str(&id) else {
        return security(&state, &ctx, &headers, Some(CoreError::NotFound(authio_core::types::Entity::Factor))).await;
    };
    let done = match act.as_str() {
        "rename" => state.identity.rename_factor(&scope, s.user_id, id, form.name.as_deref().unwrap_or_default()).await,
        "remove" => {
            let actor = authio_core::audit::Actor::user(s.user_id, None);
            state.identity.remove_factor(&scope, s.user_id, id, actor, &client_info(&headers, ip)).await
        }
        _ => Err(CoreError::NotFound(authio_core::types::Entity::Action)),
    };
    match done {
        Ok(()) => back_to_security(&ctx),
        Err(e) => security(&state, &ctx, &headers, Some(e)).await,
    }
}

/// Options to add a passkey or security key.
pub async fn security_webauthn_options(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let (scope, s) = match account(&state, &ctx, &headers).await {
        Ok(a) => a,
        // A script asked: a redirect means nothing to it.
        Err(_) => return plain_error(CoreError::Forbidden("sign in again to add a passkey")),
    };
    let result = match ctx.rp() {
        Ok(rp) => state.identity.start_key_registration(&scope, s.user_id, &rp).await,
        Err(e) => Err(e),
    };
    options_json(result)
}

/// The new key's answer: registered.
pub async fn security_webauthn_post(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let (scope, s) = attempt!(account(&state, &ctx, &headers).await);
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let client = client_info(&headers, ip);
    let registered = async {
        let (ceremony, credential) = ceremony_of(&form)?;
        let rp = ctx.rp()?;
        state.identity.finish_key_registration(&scope, s.user_id, ceremony, credential, &rp, &client).await
    }
    .await;
    match registered {
        Ok((_, Some(codes))) => codes_page(&ctx, codes, format!("{}/account/security/done", ctx.site.prefix)),
        Ok((_, None)) => back_to_security(&ctx),
        Err(e) => security(&state, &ctx, &headers, Some(e)).await,
    }
}
