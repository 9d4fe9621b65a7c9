//! The web console: operators' pages (`/console/...`), customers' dashboard
//! (`/dashboard/...`) and billing (`/billing`). Server-rendered with askama, usable without
//! JavaScript (a small script compiled into the binary only refreshes live regions and saves
//! switches when flipped), readable on a phone, keyboard-usable.
//!
//! Who: platform-kind identities only, signed in through the platform tenant's own hosted
//! sign-in (the console is that project's app: a registered redirect URI, PKCE S256, a
//! single-use code). The console session is the platform session that code started, named in
//! an HttpOnly, SameSite=Lax cookie (Secure when the deployment is https) sealed with a MAC
//! under the master key, and checked against the session row on every request, so revoking
//! it or disabling the user ends it at once. Every form carries a CSRF token derived from the
//! session (a MAC of its id), compared in constant time. Using the console slides the session's
//! idle window, as refreshing tokens does for an app.
//!
//! Operators (platform users with the `operator` role) see every tenant; customers' dashboard
//! users see the tenants they are members of, as owner, admin (both change things) or viewer
//! (looks only).
/// `?` for handlers whose failures are pages.
macro_rules! page_try {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return *r,
        }
    };
}

/// The value, or the page for the core's error (its API status and message).
macro_rules! core_try {
    ($e:expr, $user:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return core_error_page(e, Some($user)),
        }
    };
}

pub mod dashboard;
pub mod operator;
mod view;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use authio_core::tenancy::console::Membership;
use authio_core::tenancy::control::ControlPlane;
use authio_core::tenancy::moves::Progress;
use authio_core::CoreError;
use authio_db::{MasterKey, Scope, TenantKind, Type};
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Form;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::routes::hosted::{append_cookie, cookie, random_token};
use crate::AppState;
pub use view::*;

const SESSION_COOKIE: &str = "authio_console";
const LOGIN_COOKIE: &str = "authio_console_login";
const CALLBACK_PATH: &str = "/console/callback";

/// What the console needs beyond the API: the control plane (as the owner role) and the
/// master key, the platform project it signs in through, and the moves this node runs.
pub struct Console {
    pub control: ControlPlane,
    key: MasterKey,
    platform: tokio::sync::OnceCell<Scope>,
    /// The latest progress report of each tenant's move run by this node.
    progress: Mutex<HashMap<Uuid, Progress>>,
    /// Requests with a provisioning or move task running in this node.
    running: Mutex<HashSet<Uuid>>,
    /// Console requests served at once by this node: each opens administrative connections
    /// (not pooled), so their number is bounded here rather than by `max_connections`.
    gate: tokio::sync::Semaphore,
}

/// Console requests one node serves at once; more wait (up to [`GATE_WAIT`]), then get 503.
const GATE_PERMITS: usize = 8;
const GATE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Console {
    pub fn new(admin_url: impl Into<String>, key: MasterKey, clock: std::sync::Arc<dyn authio_core::Clock>) -> Self {
        Console {
            control: ControlPlane::new(admin_url).with_clock(clock),
            key,
            platform: tokio::sync::OnceCell::new(),
            progress: Mutex::new(HashMap::new()),
            running: Mutex::new(HashSet::new()),
            gate: tokio::sync::Semaphore::new(GATE_PERMITS),
        }
    }

    async fn platform_scope(&self) -> Result<Scope, CoreError> {
        self.platform
            .get_or_try_init(|| async {
                let p = self.control.console_project().await?;
                Ok::<_, CoreError>(Scope::project(p.tenant_id, p.id, TenantKind::Platform))
            })
            .await
            .copied()
    }

    fn mac(&self, label: &str, data: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(self.key.mac(label, data))
    }
}

pub fn routes(state: AppState) -> axum::Router<AppState> {
    axum::Router::new()
        .route("/console", get(home))
        .route("/console/login", get(login))
        .route(CALLBACK_PATH, get(callback))
        .route("/console/logout", post(logout))
        .merge(operator::routes())
        .merge(dashboard::routes())
        .route_layer(axum::middleware::from_fn_with_state(state, gate))
        .route("/console/assets/console.css", get(css))
        .route("/console/assets/console.js", get(js))
}

/// Bound the console requests in flight (see [`Console::gate`]).
async fn gate(State(state): State<AppState>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let Some(console) = state.console.clone() else {
        return next.run(req).await;
    };
    let permit = tokio::time::timeout(GATE_WAIT, console.gate.acquire()).await;
    let resp = match permit {
        Ok(Ok(_held)) => next.run(req).await,
        _ => {
            let mut resp =
                error_page(StatusCode::SERVICE_UNAVAILABLE, "The console is busy. Try again in a moment.", None);
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            resp
        }
    };
    resp
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", include_str!("../../assets/console.css"))
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("../../assets/console.js"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    resp.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

/// The console, or the page that says it is not set up here.
pub(crate) fn console_of(state: &AppState) -> Result<&Arc<Console>, Box<Response>> {
    state.console.as_ref().ok_or_else(|| {
        Box::new(error_page(StatusCode::NOT_FOUND, "The console is not enabled on this deployment.", None))
    })
}

/// A signed-in console user.
#[derive(Clone, Debug)]
pub struct ConsoleUser {
    pub id: Uuid,
    pub email: String,
    /// Who this is to the authorization seam: an operator, or else an end user of the
    /// platform tenant (whose dashboard memberships are principals of their own).
    pub principal: authio_core::authz::Principal,
    pub session_id: Uuid,
    /// The token every form of this session carries.
    pub csrf: String,
}

impl ConsoleUser {
    /// An operator of the platform (what the principal says, not a second flag).
    pub fn is_operator(&self) -> bool {
        matches!(self.principal, authio_core::authz::Principal::Operator { .. })
    }
}

/// The console user of a request, or a redirect to sign in (a page asking for it on POSTs).
pub struct SignedIn(pub ConsoleUser);

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let console = console_of(state).map_err(|r| *r)?;
        let to_login = || {
            let next = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/console");
            let q = serde_urlencoded::to_string([("next", next)]).unwrap_or_default();
            Redirect::to(&format!("/console/login?{q}")).into_response()
        };
        let Some(raw) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_login());
        };
        let Some((sid, uid)) = open_session_cookie(console, &raw) else {
            return Err(to_login());
        };
        match live_user(state, console, sid, uid).await {
            Ok(Some(u)) => Ok(SignedIn(u)),
            Ok(None) => Err(to_login()),
            Err(e) => Err(core_error_page(e, None)),
        }
    }
}

fn session_cookie_value(console: &Console, sid: Uuid, uid: Uuid) -> String {
    let mut raw = Vec::with_capacity(32);
    raw.extend_from_slice(sid.as_bytes());
    raw.extend_from_slice(uid.as_bytes());
    format!("{}.{}", URL_SAFE_NO_PAD.encode(&raw), console.mac("console-session", &raw))
}

fn open_session_cookie(console: &Console, value: &str) -> Option<(Uuid, Uuid)> {
    let (body, mac) = value.split_once('.')?;
    let raw = URL_SAFE_NO_PAD.decode(body).ok()?;
    if raw.len() != 32 {
        return None;
    }
    let want = console.mac("console-session", &raw);
    if !bool::from(want.as_bytes().ct_eq(mac.as_bytes())) {
        return None;
    }
    Some((Uuid::from_slice(&raw[..16]).ok()?, Uuid::from_slice(&raw[16..]).ok()?))
}

/// The session's user, if the session is live (not revoked, idle or past its absolute expiry)
/// and the user may still sign in.
async fn live_user(
    state: &AppState,
    console: &Console,
    sid: Uuid,
    uid: Uuid,
) -> Result<Option<ConsoleUser>, CoreError> {
    let scope = console.platform_scope().await?;
    let now = state.clock.now();
    let rows = state
        .router
        .read(
            &scope,
            "SELECT u.email, u.role, s.last_active_at, s.idle_expires_at
             FROM sessions s JOIN users u ON u.tenant_id = s.tenant_id AND u.id = s.user_id
             WHERE s.tenant_id = $1 AND s.id = $2 AND s.user_id = $3 AND s.revoked_at IS NULL
               AND s.absolute_expires_at > $4 AND s.idle_expires_at > $4 AND NOT u.disabled",
            &[(&scope.tenant_id, Type::UUID), (&sid, Type::UUID), (&uid, Type::UUID), (&now, Type::TIMESTAMPTZ)],
        )
        .await?;
    let Some(r) = rows.first() else { return Ok(None) };
    let role: Option<String> = r.try_get(1)?;
    // Activity keeps the session from idling out: past half its idle window, slide the window
    // (at most to the absolute expiry). A write at most every half window, not every page.
    let (last, idle): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) = (r.try_get(2)?, r.try_get(3)?);
    if idle - now < (idle - last) / 2 {
        let tx = state.router.begin(&scope).await?;
        tx.query(
            "UPDATE sessions SET last_active_at = $3,
                    idle_expires_at = least($3 + (idle_expires_at - last_active_at), absolute_expires_at)
             WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
            &[(&scope.tenant_id, Type::UUID), (&sid, Type::UUID), (&now, Type::TIMESTAMPTZ)],
        )
        .await?;
        tx.commit().await?;
    }
    let email: String = r.try_get(0)?;
    let operator = role.as_deref() == Some("operator");
    let principal = if operator {
        authio_core::authz::Principal::Operator { user_id: uid.to_string(), name: Some(email.clone()) }
    } else {
        authio_core::authz::Principal::EndUser {
            tenant_id: scope.tenant_id,
            project_id: scope.project_id.unwrap_or_default(),
            user_id: uid,
        }
    };
    Ok(Some(ConsoleUser {
        id: uid,
        email,
        principal,
        session_id: sid,
        csrf: console.mac("console-csrf", sid.as_bytes()),
    }))
}

/// A posted form's CSRF token must be its session's.
pub(crate) fn check_csrf(user: &ConsoleUser, posted: Option<&str>) -> Result<(), Box<Response>> {
    match posted {
        Some(p) if bool::from(p.as_bytes().ct_eq(user.csrf.as_bytes())) => Ok(()),
        _ => Err(Box::new(error_page(
            StatusCode::FORBIDDEN,
            "This form has expired or did not come from this console (missing or wrong CSRF token). Go back, reload the page and try again.",
            Some(user),
        ))),
    }
}

fn set_cookie(h: &mut HeaderMap, state: &AppState, name: &str, value: &str, path: &str, max_age: i64) {
    append_cookie(h, name, value, path, max_age, state.public_scheme == "https");
}

/// Only paths on this host are places to return to after signing in.
fn safe_next(next: Option<&str>) -> String {
    match next {
        // No control characters or spaces either: browsers drop tabs and newlines from a
        // Location, which would turn "/\t/evil.example" into "//evil.example".
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.chars().any(|c| c.is_control() || c.is_whitespace())
                && !n.starts_with(CALLBACK_PATH) =>
        {
            n.to_owned()
        }
        _ => "/console".to_owned(),
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

/// Start a sign-in through the platform project's hosted page (PKCE S256, a state bound to
/// this browser by a short-lived cookie).
async fn login(State(state): State<AppState>, Query(q): Query<LoginQuery>) -> Response {
    let console = match console_of(&state) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let scope = match console.platform_scope().await {
        Ok(s) => s,
        Err(e) => return core_error_page(e, None),
    };
    let redirect_uri = format!("{}{CALLBACK_PATH}", state.public_url);
    // The console is the platform project's app: its callback is a registered redirect URI.
    let registered = async {
        let uri = authio_core::types::RedirectUri::parse(&redirect_uri)?;
        let auth = authio_core::authz::as_system("console", authio_core::authz::Permission::ProjectConfigure, &scope)?;
        authio_core::project::config::add_redirect_uri(
            &state.router,
            state.clock.as_ref(),
            &auth,
            &uri,
            &Default::default(),
        )
        .await
    };
    match registered.await {
        // Registered by an earlier sign-in.
        Ok(()) | Err(CoreError::Conflict(_)) => {}
        Err(e) => return core_error_page(e, None),
    }
    let (verifier, login_state) = (random_token(), random_token());
    let challenge = authio_core::crypto::pkce::s256(&verifier);
    let next = safe_next(q.next.as_deref());
    let query = serde_urlencoded::to_string([
        ("redirect_uri", redirect_uri.as_str()),
        ("state", login_state.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ])
    .unwrap_or_default();
    let project = scope.project_id.unwrap_or_default();
    let mut resp = Redirect::to(&format!("/p/{project}/signin?{query}")).into_response();
    let value = format!("{login_state}.{verifier}.{}", URL_SAFE_NO_PAD.encode(next.as_bytes()));
    set_cookie(resp.headers_mut(), &state, LOGIN_COOKIE, &value, CALLBACK_PATH, 900);
    resp
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
}

/// The hosted sign-in's return: check the state against this browser's, exchange the code
/// (once, with the PKCE verifier) for a platform session, and name it in the session cookie.
async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    connect: Option<axum::Extension<ConnectInfo<std::net::SocketAddr>>>,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let console = match console_of(&state) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let started = cookie(&headers, LOGIN_COOKIE);
    let parts: Vec<&str> = started.as_deref().map(|s| s.split('.').collect()).unwrap_or_default();
    let (Some(code), Some(returned), [login_state, verifier, next]) = (q.code, q.state, parts.as_slice()) else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "This sign-in was not started here, or took too long. Sign in again.",
            None,
        );
    };
    if !bool::from(returned.as_bytes().ct_eq(login_state.as_bytes())) {
        return error_page(
            StatusCode::BAD_REQUEST,
            "This sign-in was not started in this browser. Sign in again.",
            None,
        );
    }
    let next = URL_SAFE_NO_PAD.decode(next).ok().and_then(|b| String::from_utf8(b).ok());
    let ip = crate::routes::auth::client_ip(&state, connect.as_ref(), &headers);
    let info = crate::routes::auth::client_info(&headers, ip);
    let redirect_uri = format!("{}{CALLBACK_PATH}", state.public_url);
    let platform = match console.platform_scope().await {
        Ok(s) => s.project_id.unwrap_or_default(),
        Err(e) => return core_error_page(e, None),
    };
    // Only the platform project's codes make console sessions (another project's code would
    // start a session the console must then refuse; it is refused here instead).
    let tokens = match state.oidc.exchange_code_of(platform, &code, &redirect_uri, verifier, &info, ip).await {
        Ok(t) => t.tokens,
        Err(e) => return core_error_page(e, None),
    };
    let mut resp = Redirect::to(&safe_next(next.as_deref())).into_response();
    let value = session_cookie_value(console, tokens.session_id, tokens.user_id);
    // The session row decides how long it lasts; the cookie just names it.
    set_cookie(resp.headers_mut(), &state, SESSION_COOKIE, &value, "/", 30 * 86400);
    set_cookie(resp.headers_mut(), &state, LOGIN_COOKIE, "", CALLBACK_PATH, 0);
    crate::routes::hosted::secure_headers(resp.headers_mut());
    resp
}

#[derive(Deserialize)]
pub(crate) struct CsrfOnly {
    csrf: Option<String>,
}

/// End the console session (the platform session is revoked, not just forgotten).
async fn logout(State(state): State<AppState>, SignedIn(user): SignedIn, Form(f): Form<CsrfOnly>) -> Response {
    if let Err(r) = check_csrf(&user, f.csrf.as_deref()) {
        return *r;
    }
    let console = match console_of(&state) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if let Ok(scope) = console.platform_scope().await {
        let actor = authio_core::audit::Actor::user(user.id, Some(&user.email));
        if let Err(e) = authio_core::identity::sessions::revoke(
            &state.router,
            state.clock.as_ref(),
            &scope,
            user.session_id,
            actor,
            &Default::default(),
        )
        .await
        {
            return core_error_page(e, Some(&user));
        }
    }
    let mut resp = Redirect::to("/console/login").into_response();
    set_cookie(resp.headers_mut(), &state, SESSION_COOKIE, "", "/", 0);
    resp
}

/// Where a signed-in user starts: operators at the tenants, members at their tenant.
async fn home(State(state): State<AppState>, SignedIn(user): SignedIn) -> Response {
    if user.is_operator() {
        return Redirect::to("/console/tenants").into_response();
    }
    match memberships(&state, &user).await {
        Ok(m) if m.is_empty() => error_page(
            StatusCode::FORBIDDEN,
            "This account is not a member of any tenant. Ask an owner of your organisation to add you.",
            Some(&user),
        ),
        Ok(_) => Redirect::to("/dashboard").into_response(),
        Err(r) => *r,
    }
}

pub(crate) async fn memberships(state: &AppState, user: &ConsoleUser) -> Result<Vec<Membership>, Box<Response>> {
    let console = console_of(state)?;
    console.control.memberships(user.id).await.map_err(|e| Box::new(core_error_page(e, Some(user))))
}

/// `?done=...` after a redirect: which change just went through.
#[derive(Deserialize, Default)]
pub(crate) struct Flash {
    done: Option<String>,
}

impl Flash {
    /// The page, with the notice `messages` has for this flash (none for an unknown one).
    pub(crate) fn onto(&self, page: PageView, messages: &[(&str, &str)]) -> PageView {
        match messages.iter().find(|(k, _)| Some(*k) == self.done.as_deref()) {
            Some((_, text)) => page.block(Block::notice("ok", *text)),
            None => page,
        }
    }
}

/// A page for an error of the core: the API's status and message, as a page.
pub(crate) fn core_error_page(e: CoreError, user: Option<&ConsoleUser>) -> Response {
    let api = crate::ApiError::from(e);
    if api.status.is_server_error() && api.retry_after.is_none() {
        tracing::error!(code = api.code, message = %api.message, "console request failed");
        return error_page(api.status, "Something went wrong on our side. Try again in a moment.", user);
    }
    error_page(api.status, &api.message, user)
}

pub(crate) fn error_page(status: StatusCode, message: &str, user: Option<&ConsoleUser>) -> Response {
    let page = PageView::new(
        match status {
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::NOT_FOUND => "Not found",
            _ => "Something is not right",
        },
        user,
    )
    .block(Block::notice("error", message))
    .block(Block::Para("Use the navigation above, or go back.".into()));
    page.render(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::hosted::cookie_line;

    #[test]
    fn cookies_are_http_only_same_site_and_secure_over_https() {
        let https = cookie_line(SESSION_COOKIE, "v", "/", 60, true);
        assert_eq!(https, "authio_console=v; Path=/; HttpOnly; SameSite=Lax; Max-Age=60; Secure");
        assert!(!cookie_line(SESSION_COOKIE, "v", "/", 60, false).contains("Secure"));
    }

    #[test]
    fn only_local_paths_are_returned_to() {
        assert_eq!(safe_next(Some("/dashboard/acme?x=1")), "/dashboard/acme?x=1");
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/ /evil.example",
            "evil",
            "/console/callback?code=x",
        ] {
            assert_eq!(safe_next(Some(bad)), "/console", "{bad}");
        }
        assert_eq!(safe_next(None), "/console");
    }

    #[test]
    fn session_cookies_open_only_with_their_mac() {
        let key = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap_or_else(|_| unreachable!());
        let console = Console::new("postgres://unused", key, std::sync::Arc::new(authio_core::SystemClock));
        let (sid, uid) = (Uuid::now_v7(), Uuid::now_v7());
        let value = session_cookie_value(&console, sid, uid);
        assert_eq!(open_session_cookie(&console, &value), Some((sid, uid)));
        // Another user's id under this MAC, a truncated MAC, another key: all refused.
        let (body, mac) = value.split_once('.').unwrap_or_default();
        let mut raw = URL_SAFE_NO_PAD.decode(body).unwrap_or_default();
        raw[20] ^= 1;
        assert_eq!(open_session_cookie(&console, &format!("{}.{mac}", URL_SAFE_NO_PAD.encode(&raw))), None);
        assert_eq!(open_session_cookie(&console, &value[..value.len() - 2]), None);
        let other = Console::new(
            "postgres://unused",
            MasterKey::from_base64(&MasterKey::generate_base64()).unwrap_or_else(|_| unreachable!()),
            std::sync::Arc::new(authio_core::SystemClock),
        );
        assert_eq!(open_session_cookie(&other, &value), None);
    }
}
