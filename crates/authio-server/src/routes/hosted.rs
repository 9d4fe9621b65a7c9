//! Hosted sign-in pages per project (`/p/{project}/...`, or `/...` on a verified custom
//! domain): sign-in, sign-up, magic link, email code, upstream providers, password reset and
//! email verification. Server-rendered, working without JavaScript, every form CSRF-protected
//! (a double-submit cookie), links in emails confirmed by a button (mail scanners follow links,
//! they do not press buttons). A finished sign-in returns to the app's registered redirect URI
//! with a single-use `code` (PKCE S256), or shows who is signed in when no app asked.
use std::net::SocketAddr;

use askama::Template;
use authio_core::federation::sso::AcsOutcome;
use authio_core::identity::signin::{with_query, Return, SignedInUser};
use authio_core::CoreError;
use authio_db::Scope;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::routes::auth::{client_info, client_ip};
use crate::AppState;

/// The value, or return the page that says why not (a hosted page's failure is a page).
macro_rules! attempt {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(page) => return *page,
        }
    };
}

pub mod consent;
pub mod mfa;

const CSRF_COOKIE: &str = "authio_csrf";
const OAUTH_COOKIE: &str = "authio_oauth";

/// The host a request came in on, when it is a verified custom domain (set by
/// [`custom_domains`]).
#[derive(Clone, Debug)]
pub struct CustomHost(pub String);

/// Requests for a verified custom domain reach their project's hosted pages: `/signin` on
/// `login.example.com` is `/p/{project}/signin`. Other hosts (the deployment's own, addresses,
/// unknown or unverified domains) pass through unchanged, where no bare `/signin` exists.
pub async fn custom_domains(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(|h| h.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(h, |(n, _)| n))
        .map(str::to_ascii_lowercase);
    let candidate = |h: &String| {
        h.contains('.') && h.parse::<std::net::IpAddr>().is_err() && !h.starts_with('[') && h != &*state.public_host
    };
    let Some(host) = host.filter(candidate) else {
        return next.run(req).await;
    };
    let project = match authio_db::preresolve::resolve_domain(&state.router, &host).await {
        Ok(Some((_, project))) => project,
        Ok(None) => return next.run(req).await,
        Err(e) => return crate::ApiError::from(e).into_response(),
    };
    let path = req.uri().path();
    let hosted = [
        "/signin",
        "/signup",
        "/magic-link",
        "/magic",
        "/code",
        "/reset",
        "/verify-email",
        "/oauth/",
        "/oauth2/",
        "/invitations/accept",
        "/organizations/select",
        "/sso",
        "/mfa",
        "/passkey",
        "/account/security",
        "/account/apps",
        "/consent",
    ]
    .iter()
    .any(|p| path == *p || path.starts_with(&format!("{p}/")) || (p.ends_with('/') && path.starts_with(p)));
    if path == "/oauth/callback" {
        // One callback per host: the state names the project.
    } else if hosted || path == "/" {
        let rest = if path == "/" { "/signin" } else { path };
        let pq = match req.uri().query() {
            Some(q) => format!("/p/{project}{rest}?{q}"),
            None => format!("/p/{project}{rest}"),
        };
        match pq.parse::<Uri>() {
            Ok(u) => *req.uri_mut() = u,
            Err(_) => return StatusCode::BAD_REQUEST.into_response(),
        }
    } else {
        // Nothing else of the deployment (other projects, the API) answers on a customer's host.
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    req.extensions_mut().insert(CustomHost(host));
    next.run(req).await
}

/// Where links in emails and the upstream callback point for this request.
struct Site {
    /// `/p/{project}` on the deployment's host, empty on a custom domain.
    prefix: String,
    /// Absolute base of the project's pages.
    base: String,
    /// Absolute root of the host (for `/oauth/callback`).
    root: String,
}

fn site(state: &AppState, project: Uuid, custom: Option<&Extension<CustomHost>>) -> Site {
    match custom {
        Some(Extension(CustomHost(host))) => {
            let root = format!("{}://{host}", state.public_scheme);
            Site { prefix: String::new(), base: root.clone(), root }
        }
        None => Site {
            prefix: format!("/p/{project}"),
            base: format!("{}/p/{project}", state.public_url),
            root: state.public_url.to_string(),
        },
    }
}

#[derive(Deserialize, Default, Clone)]
pub struct FlowParams {
    redirect_uri: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    /// An OpenID authorization request waiting for this sign-in (its path on this host).
    return_to: Option<String>,
    /// The address to fill in (OIDC `login_hint`).
    login_hint: Option<String>,
}

#[derive(Default)]
struct FlowFields {
    redirect_uri: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    return_to: Option<String>,
}

#[derive(Template, Default)]
#[template(path = "page.html")]
struct Page {
    title: String,
    brand: String,
    logo: Option<String>,
    page: &'static str,
    heading: String,
    error: Option<String>,
    notice: Option<String>,
    csrf: String,
    prefix: String,
    flow: FlowFields,
    flow_query: String,
    password: bool,
    magic_link: bool,
    email_code: bool,
    providers: Vec<(String, String)>,
    /// The project has organizations with their own identity provider: offer single sign-on.
    sso: bool,
    email: String,
    challenge_id: String,
    token: String,
    action: String,
    button: String,
    mails: Vec<MailView>,
    /// The invitation page: a signed-in browser may join; otherwise sign in (or create the
    /// invited account with a password, when it has none).
    invite_join: bool,
    invite_create: bool,
    signin_link: String,
    /// The organization picker: (id, name, joins by domain policy).
    orgs: Vec<(String, String, bool)>,
    return_to: String,
    /// The project offers passkey sign-in (the page then carries the WebAuthn script).
    passkey: bool,
    /// The nonce of the page's one script (empty: no script).
    script_nonce: String,
    /// The consent page: the client asking.
    consent: Option<ConsentView>,
    /// The connected-apps page: (id, client name, resource, scopes, granted).
    apps: Vec<(String, String, String, String, String)>,
}

/// A third-party client as the consent page shows it (nothing it says about itself is
/// verified).
struct ConsentView {
    client_name: String,
    client_id: String,
    client_uri: Option<String>,
    logo_uri: Option<String>,
    scopes: Vec<String>,
    resource: Option<String>,
    registration: &'static str,
}

struct MailView {
    subject: String,
    to: String,
    at: String,
    text: String,
}

/// A page under way: the project's look and the request's CSRF token.
struct Ctx {
    project: Uuid,
    site: Site,
    presentation: std::sync::Arc<authio_core::identity::signin::Presentation>,
    csrf: String,
    set_csrf: bool,
    secure: bool,
}

impl Ctx {
    async fn new(
        state: &AppState,
        project: Uuid,
        headers: &HeaderMap,
        custom: Option<&Extension<CustomHost>>,
    ) -> Result<Self, Box<Response>> {
        let presentation = state.identity.presentation(project).await.map_err(|e| Box::new(plain_error(e)))?;
        let (csrf, set_csrf) = match cookie(headers, CSRF_COOKIE) {
            Some(c) if c.len() == 43 => (c, false),
            _ => (random_token(), true),
        };
        Ok(Ctx {
            project,
            site: site(state, project, custom),
            presentation,
            csrf,
            set_csrf,
            secure: state.public_scheme == "https",
        })
    }

    fn page(&self, page: &'static str, heading: &str) -> Page {
        let p = &self.presentation;
        Page {
            title: p.title().to_owned(),
            brand: p.brand_color.clone(),
            logo: p.logo_url.clone(),
            page,
            heading: heading.to_owned(),
            csrf: self.csrf.clone(),
            prefix: self.site.prefix.clone(),
            password: p.offers("password"),
            magic_link: p.offers("magic_link"),
            email_code: p.offers("email_code"),
            ..Page::default()
        }
    }

    fn render(&self, status: StatusCode, page: Page) -> Response {
        self.render_template(status, &page, &page.script_nonce)
    }

    /// Any hosted page's template as the answer: the security headers, the one script its
    /// nonce allows (if any), and the CSRF cookie when this request made the token.
    fn render_template(&self, status: StatusCode, page: &impl Template, script_nonce: &str) -> Response {
        let body = match page.render() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "page render failed");
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
        };
        let mut resp = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
        secure_headers(resp.headers_mut());
        allow_script(resp.headers_mut(), script_nonce);
        if self.set_csrf {
            set_cookie(resp.headers_mut(), CSRF_COOKIE, &self.csrf, self.secure, 86400);
        }
        resp
    }

    /// A page that says what went wrong (the redirect URI is not trusted with errors it did
    /// not ask for), with the status the API would give.
    fn error(&self, e: CoreError, page: &'static str, heading: &str, mut p: Page) -> Response {
        let (status, message, retry) = describe(e);
        p.page = page;
        p.heading = heading.to_owned();
        p.error = Some(message);
        let mut resp = self.render(status, p);
        if let Some(secs) = retry {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }

    fn with_flow(&self, mut p: Page, f: &FlowParams) -> Page {
        p.flow = FlowFields {
            redirect_uri: f.redirect_uri.clone(),
            state: f.state.clone(),
            code_challenge: f.code_challenge.clone(),
            return_to: f.return_to.clone(),
        };
        let pairs: Vec<(&str, &str)> = [
            ("redirect_uri", f.redirect_uri.as_deref()),
            ("state", f.state.as_deref()),
            ("code_challenge", f.code_challenge.as_deref()),
            ("code_challenge_method", f.code_challenge.as_ref().map(|_| "S256")),
            ("return_to", f.return_to.as_deref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        if !pairs.is_empty() {
            p.flow_query = format!("?{}", serde_urlencoded::to_string(&pairs).unwrap_or_default());
        }
        p
    }
}

/// The status, the sentence to show, and `Retry-After`: the API's mapping of the error, in
/// words for a person.
fn describe(e: CoreError) -> (StatusCode, String, Option<u32>) {
    let special = match &e {
        CoreError::RateLimited { retry_after } => {
            Some(format!("Too many attempts. Try again in {retry_after} seconds."))
        }
        CoreError::EmailTaken => Some("An account with this email exists: sign in instead.".to_owned()),
        CoreError::SsoRequired => Some(
            "This account signs in through its organization's single sign-on: use \"Continue with single sign-on\"."
                .to_owned(),
        ),
        _ => None,
    };
    let api = crate::ApiError::from(e);
    let message = special.unwrap_or_else(|| {
        if api.status.is_server_error() {
            "Something went wrong on our side. Try again shortly.".into()
        } else {
            api.message.clone()
        }
    });
    (api.status, message, api.retry_after)
}

fn plain_error(e: CoreError) -> Response {
    let (status, message, _) = describe(e);
    let mut resp = (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message).into_response();
    secure_headers(resp.headers_mut());
    resp
}

pub(crate) fn secure_headers(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
}

/// A page with the WebAuthn script: that one inline script (by its nonce) may run and call
/// back to this origin; nothing else changes.
pub(crate) fn allow_script(h: &mut HeaderMap, nonce: &str) {
    if nonce.is_empty() {
        return;
    }
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; script-src 'nonce-{nonce}'; \
         connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
}

pub(crate) fn random_token() -> String {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    URL_SAFE_NO_PAD.encode(raw)
}

pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn project_of_scope(scope: &Scope) -> Uuid {
    scope.project_id.unwrap_or_default()
}

/// The provider-session cookie: per project (its path), HttpOnly, SameSite=Lax (it must come
/// along on the top-level navigation from the client to the authorization endpoint).
pub(crate) const OP_COOKIE: &str = "authio_op";

pub(crate) fn set_op_cookie(h: &mut HeaderMap, prefix: &str, value: &str, secure: bool, max_age: i64) {
    let path = if prefix.is_empty() { "/" } else { prefix };
    append_cookie(h, OP_COOKIE, value, path, max_age, secure);
}

fn set_cookie(h: &mut HeaderMap, name: &str, value: &str, secure: bool, max_age: i64) {
    append_cookie(h, name, value, "/", max_age, secure);
}

/// Every cookie Authio sets (hosted pages, provider session, console): never readable by
/// script, sent on top-level navigations only from this site, and only over TLS when the
/// deployment is https (plain http is development).
pub(crate) fn cookie_line(name: &str, value: &str, path: &str, max_age: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path={path}; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}")
}

pub(crate) fn append_cookie(h: &mut HeaderMap, name: &str, value: &str, path: &str, max_age: i64, secure: bool) {
    if let Ok(v) = HeaderValue::from_str(&cookie_line(name, value, path, max_age, secure)) {
        h.append(header::SET_COOKIE, v);
    }
}

/// A posted form's CSRF token must be the cookie's (compared in constant time).
fn csrf_ok(headers: &HeaderMap, form: &FormFields) -> bool {
    match (cookie(headers, CSRF_COOKIE), form.csrf.as_deref()) {
        (Some(c), Some(f)) => c.len() == 43 && bool::from(c.as_bytes().ct_eq(f.as_bytes())),
        _ => false,
    }
}

/// The start of every form post: the project, the CSRF check (nothing runs without it), the
/// page context.
async fn posted(
    state: &AppState,
    project: &str,
    headers: &HeaderMap,
    form: &FormFields,
    custom: Option<&Extension<CustomHost>>,
) -> Result<Ctx, Box<Response>> {
    let project = project_id(project)?;
    if !csrf_ok(headers, form) {
        return Err(Box::new(refuse_csrf()));
    }
    Ctx::new(state, project, headers, custom).await
}

fn refuse_csrf() -> Response {
    let mut resp = (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "This form has expired or was not sent from this site. Go back, reload the page and try again.",
    )
        .into_response();
    secure_headers(resp.headers_mut());
    resp
}

/// Every field any hosted form posts.
#[derive(Deserialize, Default)]
pub struct FormFields {
    csrf: Option<String>,
    email: Option<String>,
    password: Option<String>,
    token: Option<String>,
    challenge_id: Option<String>,
    code: Option<String>,
    organization: Option<String>,
    recovery_code: Option<String>,
    /// A WebAuthn ceremony's id and the browser's credential (JSON).
    ceremony: Option<String>,
    credential: Option<String>,
    /// A factor being enrolled, or renamed.
    factor: Option<String>,
    name: Option<String>,
    /// The consent page's answer: `allow` or `deny`.
    decision: Option<String>,
    #[serde(flatten)]
    flow: FlowParamsForm,
}

/// The flow's fields as posted (flattened forms cannot hold `Option` of a struct).
#[derive(Deserialize, Default)]
struct FlowParamsForm {
    redirect_uri: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    return_to: Option<String>,
}

impl FlowParamsForm {
    fn params(&self) -> FlowParams {
        FlowParams {
            redirect_uri: self.redirect_uri.clone().filter(|s| !s.is_empty()),
            state: self.state.clone().filter(|s| !s.is_empty()),
            code_challenge: self.code_challenge.clone().filter(|s| !s.is_empty()),
            code_challenge_method: self.code_challenge_method.clone().filter(|s| !s.is_empty()),
            return_to: self.return_to.clone().filter(|s| !s.is_empty()),
            login_hint: None,
        }
    }
}

async fn flow_return(state: &AppState, project: Uuid, f: &FlowParams) -> Result<Option<Return>, CoreError> {
    if let Some(r) = &f.return_to {
        return Return::authorize(project, r).map(Some);
    }
    match &f.redirect_uri {
        None => Ok(None),
        Some(uri) => state
            .identity
            .check_return(
                project,
                uri,
                f.state.as_deref(),
                f.code_challenge.as_deref(),
                f.code_challenge_method.as_deref(),
            )
            .await
            .map(Some),
    }
}

fn project_id(raw: &str) -> Result<Uuid, Box<Response>> {
    Uuid::parse_str(raw).map_err(|_| Box::new(plain_error(CoreError::NotFound(authio_core::types::Entity::Project))))
}

/// The end of every first factor: the second factor, when the user has one or policy
/// requires one, else [`hand_off`].
async fn finish(
    state: &AppState,
    ctx: &Ctx,
    scope: &Scope,
    user: &SignedInUser,
    amr: &[&str],
    ret: Option<&Return>,
    email: &str,
) -> Response {
    match state.identity.begin_mfa(scope, user, amr, ret).await {
        Ok(None) => hand_off(state, ctx, scope, user, amr, ret, email).await,
        Ok(Some(pending)) => mfa::to_second_factor(ctx, &pending),
        Err(e) => ctx.error(e, "done", "Sign-in failed", ctx.page("done", "")),
    }
}

/// The end of every successful sign-in: back to the app with a code, or a page saying who
/// is signed in.
async fn hand_off(
    state: &AppState,
    ctx: &Ctx,
    scope: &Scope,
    user: &SignedInUser,
    amr: &[&str],
    ret: Option<&Return>,
    email: &str,
) -> Response {
    match ret {
        Some(Return::Authorize { return_to }) => {
            // Signed in at the provider: the browser keeps that (a signed cookie for this
            // project's pages) and goes back to the authorization request.
            let lifetime = match state.identity.profile(project_of_scope(scope)).await {
                Ok(p) => i64::from(p.session_absolute_timeout_secs),
                Err(e) => return ctx.error(e, "done", "Sign-in failed", ctx.page("done", "")),
            };
            let cookie = state.oidc.op_session_cookie(project_of_scope(scope), user, amr, lifetime);
            let mut resp = StatusCode::SEE_OTHER.into_response();
            if let Ok(v) = HeaderValue::from_str(return_to) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            secure_headers(resp.headers_mut());
            set_op_cookie(resp.headers_mut(), &ctx.site.prefix, &cookie, ctx.secure, lifetime);
            resp
        }
        Some(r) => match state.identity.issue_signin_code(scope, user, amr, r).await {
            Ok(location) => {
                let mut resp = StatusCode::SEE_OTHER.into_response();
                if let Ok(v) = HeaderValue::from_str(&location) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                secure_headers(resp.headers_mut());
                resp
            }
            Err(e) => ctx.error(e, "done", "Sign-in failed", ctx.page("done", "")),
        },
        None => {
            let mut p = ctx.page("done", "You are signed in");
            p.notice = Some(format!("Signed in as {email}. You can close this page."));
            ctx.render(StatusCode::OK, p)
        }
    }
}

/// The sign-in page (and the sign-up page): every method the project offers.
pub async fn signin_page(
    State(state): State<AppState>,
    Path(project): Path<String>,
    Query(flow): Query<FlowParams>,
    custom: Option<Extension<CustomHost>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let project = attempt!(project_id(&project));
    let ctx = attempt!(Ctx::new(&state, project, &headers, custom.as_ref()).await);
    let signup = uri.path().ends_with("/signup");
    let (page, heading) = if signup { ("signup", "Create your account") } else { ("signin", "Sign in") };
    let mut p = ctx.with_flow(ctx.page(page, heading), &flow);
    p.email = flow.login_hint.clone().filter(|h| h.len() <= 254).unwrap_or_default();
    if let Err(e) = flow_return(&state, project, &flow).await {
        return ctx.error(e, "done", "This sign-in link is not valid", ctx.page("done", ""));
    }
    if ctx.presentation.offers("oauth") {
        (p.providers, p.sso) = state.upstream.sign_in_buttons(project).await.unwrap_or_default();
    }
    if !signup && ctx.presentation.offers("passkey") {
        p.passkey = true;
        p.script_nonce = random_token();
    }
    ctx.render(StatusCode::OK, p)
}

/// Single sign-on by address: to the identity provider of the organization that verified the
/// address's domain, keeping the app's sign-in request.
pub async fn sso_post(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let project = ctx.project;
    let flow = form.flow.params();
    let mut again = ctx.with_flow(ctx.page("signin", "Sign in"), &flow);
    again.email = form.email.clone().unwrap_or_default();
    if let Err(e) = flow_return(&state, project, &flow).await {
        return ctx.error(e, "done", "This sign-in link is not valid", ctx.page("done", ""));
    }
    let email = match authio_core::types::Email::parse(form.email.as_deref().unwrap_or_default()) {
        Ok(e) => e,
        Err(e) => return ctx.error(e.into(), "signin", "Sign in", again),
    };
    match state.upstream.sso_connection_for(project, email.as_str()).await {
        Ok(Some(slug)) => see_other_to(&format!("{}/oauth/{slug}{}", ctx.site.prefix, again.flow_query)),
        Ok(None) => ctx.error(
            CoreError::Invalid(authio_core::types::ValidationError::Field(
                "email (no single sign-on is set up for this address's domain)",
            )),
            "signin",
            "Sign in",
            again,
        ),
        Err(e) => ctx.error(e, "signin", "Sign in", again),
    }
}

/// The Response an identity provider posts (SAML HTTP-POST binding).
#[derive(Deserialize)]
pub struct SamlPost {
    #[serde(rename = "SAMLResponse")]
    saml_response: Option<String>,
    // RelayState is not used: the request id the Response answers says where to return.
}

const SAML_COOKIE: &str = "authio_saml";

/// The SP-initiated request's cookie: SameSite=None (the identity provider's answer is a
/// cross-site POST) and therefore Secure, scoped to the project's SAML paths.
fn saml_request_cookie(h: &mut HeaderMap, prefix: &str, value: &str, max_age: i64) {
    let line = format!(
        "{}={value}; Path={prefix}/saml/; HttpOnly; SameSite=None; Secure; Max-Age={max_age}",
        authio_core::federation::sso::SAML_REQUEST_COOKIE
    );
    if let Ok(v) = HeaderValue::from_str(&line) {
        h.append(header::SET_COOKIE, v);
    }
}

fn connection_id(raw: &str) -> Result<Uuid, Box<Response>> {
    Uuid::parse_str(raw).map_err(|_| Box::new(plain_error(CoreError::NotFound(authio_core::types::Entity::Connection))))
}

/// Our SAML metadata for one connection (what its identity provider imports).
pub async fn saml_metadata(
    State(state): State<AppState>,
    Path((project, connection)): Path<(String, String)>,
) -> Response {
    let project = attempt!(project_id(&project));
    let connection = attempt!(connection_id(&connection));
    match state.upstream.saml_metadata(project, connection).await {
        Ok(xml) => {
            let mut resp =
                (StatusCode::OK, [(header::CONTENT_TYPE, "application/samlmetadata+xml")], xml).into_response();
            secure_headers(resp.headers_mut());
            resp
        }
        Err(e) => plain_error(e),
    }
}

/// The assertion consumer service: a Response from an organization's identity provider. It
/// is a cross-site POST by design (no CSRF token: the signed assertion, bound to our request
/// or confirmed by the person, is the proof).
pub async fn saml_acs(
    State(state): State<AppState>,
    Path((project, connection)): Path<(String, String)>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<SamlPost>,
) -> Response {
    let project = attempt!(project_id(&project));
    let connection = attempt!(connection_id(&connection));
    let ctx = attempt!(Ctx::new(&state, project, &headers, None).await);
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let client = client_info(&headers, ip);
    let Some(response) = form.saml_response.filter(|r| !r.is_empty()) else {
        let e = CoreError::Invalid(authio_core::types::ValidationError::Field("SAMLResponse"));
        return ctx.error(e, "done", "Sign in", ctx.page("done", ""));
    };
    let browser = cookie(&headers, authio_core::federation::sso::SAML_REQUEST_COOKIE);
    match state.upstream.saml_acs(project, connection, &response, browser.as_deref(), &client, ip).await {
        Ok(AcsOutcome::SignedIn { scope, user, ret }) => {
            let mut resp = finish(&state, &ctx, &scope, &user, &["saml"], ret.as_ref(), "your account").await;
            saml_request_cookie(resp.headers_mut(), &ctx.site.prefix, "", 0);
            resp
        }
        Ok(AcsOutcome::Confirm { token, browser, email, connection: name }) => {
            // Started at the identity provider, or an answer that reached a browser other than
            // the one that asked: the person says it is theirs (a response posted to them by
            // someone else stops here).
            let who = email.unwrap_or_else(|| "your account".into());
            let mut p = ctx.page("confirm", &format!("Continue to {} as {who}?", ctx.presentation.title()));
            p.notice = Some(format!("{name} is signing you in as {who}. Continue only if you started this sign-in."));
            p.token = token;
            p.action = format!("saml/{connection}/confirm");
            p.button = "Continue".into();
            let mut resp = ctx.render(StatusCode::OK, p);
            let max_age = 300;
            append_cookie(
                resp.headers_mut(),
                SAML_COOKIE,
                &browser,
                &format!("{}/saml/", ctx.site.prefix),
                max_age,
                ctx.secure,
            );
            resp
        }
        Err(e) => ctx.error(e, "done", "Sign-in refused", ctx.page("done", "")),
    }
}

/// The person confirmed a sign-in started at the identity provider.
pub async fn saml_confirm(
    State(state): State<AppState>,
    Path((project, connection)): Path<(String, String)>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, None).await);
    let connection = attempt!(connection_id(&connection));
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let client = client_info(&headers, ip);
    let browser = cookie(&headers, SAML_COOKIE);
    let token = form.token.unwrap_or_default();
    match state.upstream.saml_confirm(ctx.project, connection, &token, browser.as_deref(), &client, ip).await {
        Ok((scope, user, ret)) => {
            let mut resp = finish(&state, &ctx, &scope, &user, &["saml"], ret.as_ref(), "your account").await;
            append_cookie(resp.headers_mut(), SAML_COOKIE, "", &format!("{}/saml/", ctx.site.prefix), 0, ctx.secure);
            resp
        }
        Err(e) => ctx.error(e, "done", "Sign-in refused", ctx.page("done", "")),
    }
}

/// Sign in (or sign up) with a password.
pub async fn password_post(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    uri: Uri,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let project = ctx.project;
    let flow = form.flow.params();
    let signup = uri.path().ends_with("/signup");
    let (page, heading) = if signup { ("signup", "Create your account") } else { ("signin", "Sign in") };
    let mut again = ctx.with_flow(ctx.page(page, heading), &flow);
    again.email = form.email.clone().unwrap_or_default();
    let ret = match flow_return(&state, project, &flow).await {
        Ok(r) => r,
        Err(e) => return ctx.error(e, "done", "This sign-in link is not valid", ctx.page("done", "")),
    };
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let client = client_info(&headers, ip);
    let (email, password) = (form.email.unwrap_or_default(), form.password.unwrap_or_default());
    let result = if signup {
        let r = state.identity.register(project, &email, &password, &client, ip).await;
        if r.is_ok() {
            let link_base = format!("{}/verify-email", ctx.site.base);
            if let Err(e) = state.identity.send_email_verification(project, &email, &link_base).await {
                tracing::warn!(error = %e, "email verification not queued");
            }
        }
        r
    } else {
        state.identity.password_user(project, &email, &password, &client, ip).await
    };
    match result {
        Ok((scope, user)) => finish(&state, &ctx, &scope, &user, &["pwd"], ret.as_ref(), &email).await,
        Err(e) => ctx.error(e, page, heading, again),
    }
}

/// Ask for a magic link.
pub async fn magic_link_post(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let project = ctx.project;
    let flow = form.flow.params();
    let mut again = ctx.with_flow(ctx.page("signin", "Sign in"), &flow);
    again.email = form.email.clone().unwrap_or_default();
    let ret = match flow_return(&state, project, &flow).await {
        Ok(r) => r,
        Err(e) => return ctx.error(e, "done", "This sign-in link is not valid", ctx.page("done", "")),
    };
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let email = form.email.unwrap_or_default();
    let link_base = format!("{}/magic", ctx.site.base);
    match state.identity.request_magic_link(project, &email, &link_base, ret.as_ref(), None, ip).await {
        Ok(_) => {
            let mut p = ctx.page("done", "Check your email");
            p.notice = Some(format!(
                "If {email} can sign in here, a link is on its way. It works once, for {} minutes.",
                state.identity.one_time().magic_link_ttl_secs / 60
            ));
            ctx.render(StatusCode::OK, p)
        }
        Err(e) => ctx.error(e, "signin", "Sign in", again),
    }
}

#[derive(Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// The page an emailed link opens: a button that uses it (links are not used by a GET).
async fn confirm_page(
    state: &AppState,
    project: &str,
    custom: Option<&Extension<CustomHost>>,
    headers: &HeaderMap,
    token: Option<String>,
    (purpose, action, heading, button): (&str, &str, &str, &str),
) -> Response {
    let project = attempt!(project_id(project));
    let ctx = attempt!(Ctx::new(state, project, headers, custom).await);
    let token = token.unwrap_or_default();
    let live = match state.identity.link_live(&token, purpose).await {
        Ok(l) => l,
        Err(e) => return ctx.error(e, "done", heading, ctx.page("done", heading)),
    };
    match live {
        Some((p, _)) if p == project => {
            let mut page = ctx.page(if purpose == "password_reset" { "new-password" } else { "confirm" }, heading);
            page.token = token;
            page.action = action.to_owned();
            page.button = button.to_owned();
            ctx.render(StatusCode::OK, page)
        }
        _ => ctx.error(
            CoreError::InvalidGrant("this link is invalid, used or expired"),
            "done",
            heading,
            ctx.page("done", heading),
        ),
    }
}

pub async fn magic_page(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    confirm_page(&state, &project, custom.as_ref(), &headers, q.token, ("magic_link", "magic", "Sign in", "Sign in"))
        .await
}

/// Use a magic link.
pub async fn magic_post(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let project = ctx.project;
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let client = client_info(&headers, ip);
    let token = form.token.unwrap_or_default();
    let proved = match state.identity.use_magic_link(&token, None, ip).await {
        Ok(p) if p.scope.project_id == Some(project) => p,
        Ok(_) => {
            return ctx.error(
                CoreError::InvalidGrant("this link is for another project"),
                "done",
                "Sign in",
                ctx.page("done", ""),
            )
        }
        Err(e) => return ctx.error(e, "done", "Sign in", ctx.page("done", "")),
    };
    match state.identity.resolve_signin(&proved, "magic_link", &client).await {
        Ok(user) => {
            finish(&state, &ctx, &proved.scope, &user, &["email"], proved.ret.as_ref(), proved.email.as_str()).await
        }
        Err(e) => ctx.error(e, "done", "Sign in", ctx.page("done", "")),
    }
}

/// Ask for an email code; shows the page to enter it.
pub async fn code_post(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let project = ctx.project;
    let flow = form.flow.params();
    let mut again = ctx.with_flow(ctx.page("signin", "Sign in"), &flow);
    again.email = form.email.clone().unwrap_or_default();
    let ret = match flow_return(&state, project, &flow).await {
        Ok(r) => r,
        Err(e) => return ctx.error(e, "done", "This sign-in link is not valid", ctx.page("done", "")),
    };
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let email = form.email.unwrap_or_default();
    match state.identity.request_email_code(project, &email, ret.as_ref(), ip).await {
        Ok((challenge, _)) => {
            let mut p = ctx.page("code", "Enter your code");
            p.challenge_id = challenge.to_string();
            p.email = email;
            ctx.render(StatusCode::OK, p)
        }
        Err(e) => ctx.error(e, "signin", "Sign in", again),
    }
}

/// Check an email code.
pub async fn code_verify_post(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let project = ctx.project;
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let client = client_info(&headers, ip);
    let raw_challenge = form.challenge_id.unwrap_or_default();
    let mut again = ctx.page("code", "Enter your code");
    again.challenge_id = raw_challenge.clone();
    let Ok(challenge) = Uuid::parse_str(&raw_challenge) else {
        return ctx.error(CoreError::InvalidGrant("the code is wrong or expired"), "code", "Enter your code", again);
    };
    let code = form.code.unwrap_or_default();
    let proved = match state.identity.verify_email_code(challenge, code.trim(), ip).await {
        Ok(p) if p.scope.project_id == Some(project) => p,
        Ok(_) => {
            return ctx.error(CoreError::InvalidGrant("the code is wrong or expired"), "code", "Enter your code", again)
        }
        Err(e @ CoreError::ChallengeLocked) => {
            return ctx.error(e, "done", "Too many wrong codes", ctx.page("done", ""))
        }
        Err(e) => return ctx.error(e, "code", "Enter your code", again),
    };
    match state.identity.resolve_signin(&proved, "email_code", &client).await {
        Ok(user) => {
            finish(&state, &ctx, &proved.scope, &user, &["otp"], proved.ret.as_ref(), proved.email.as_str()).await
        }
        Err(e) => ctx.error(e, "done", "Sign in", ctx.page("done", "")),
    }
}

/// Start signing in with an upstream provider.
pub async fn oauth_start(
    State(state): State<AppState>,
    Path((project, slug)): Path<(String, String)>,
    Query(flow): Query<FlowParams>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    let project = attempt!(project_id(&project));
    let ctx = attempt!(Ctx::new(&state, project, &headers, custom.as_ref()).await);
    let ret = match flow_return(&state, project, &flow).await {
        Ok(r) => r,
        Err(e) => return ctx.error(e, "done", "This sign-in link is not valid", ctx.page("done", "")),
    };
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let callback = format!("{}/oauth/callback", ctx.site.root);
    match state.upstream.upstream_start(project, &slug, ret.as_ref(), &callback, ip).await {
        Ok((location, browser, comes)) => {
            let mut resp = StatusCode::SEE_OTHER.into_response();
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&location) {
                h.insert(header::LOCATION, v);
            }
            secure_headers(h);
            let max_age = state.identity.one_time().oauth_state_ttl_secs;
            if comes == authio_core::federation::upstream::AnswerComes::CrossSitePost {
                // (The ACS is on the deployment's host: `/p/{project}/saml/...`.)
                saml_request_cookie(h, &format!("/p/{project}"), &browser, max_age);
            } else {
                // Lax: the cookie comes back on the provider's top-level redirect to us.
                set_cookie(h, OAUTH_COOKIE, &browser, ctx.secure, max_age);
            }
            resp
        }
        Err(e) => ctx.error(e, "done", "Sign in", ctx.page("done", "")),
    }
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// The upstream provider's redirect back.
pub async fn oauth_callback(
    State(state): State<AppState>,
    Query(q): Query<CallbackQuery>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    let refused = |m: String| {
        let mut resp =
            (StatusCode::BAD_REQUEST, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], m).into_response();
        secure_headers(resp.headers_mut());
        resp
    };
    if let Some(err) = q.error {
        let d = q.error_description.unwrap_or_default();
        return refused(format!("The provider did not sign you in ({err}). {d}"));
    }
    let (Some(code), Some(st)) = (q.code, q.state) else {
        return refused("The provider's answer is incomplete.".into());
    };
    let root = match &custom {
        Some(Extension(CustomHost(h))) => format!("{}://{h}", state.public_scheme),
        None => state.public_url.to_string(),
    };
    let callback = format!("{root}/oauth/callback");
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let client = client_info(&headers, ip);
    let browser = cookie(&headers, OAUTH_COOKIE);
    match state.upstream.upstream_finish(&st, &code, browser.as_deref(), &callback, &client, ip).await {
        Ok((scope, user, ret)) => {
            let Some(project) = scope.project_id else { return refused("no project".into()) };
            let ctx = attempt!(Ctx::new(&state, project, &headers, custom.as_ref()).await);
            let mut resp = finish(&state, &ctx, &scope, &user, &["oauth"], ret.as_ref(), "your account").await;
            set_cookie(resp.headers_mut(), OAUTH_COOKIE, "", ctx.secure, 0);
            resp
        }
        Err(e) => {
            let (status, message, retry) = describe(e);
            let mut resp = refused(message);
            *resp.status_mut() = status;
            if let Some(s) = retry {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
            }
            resp
        }
    }
}

pub async fn reset_page(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    headers: HeaderMap,
) -> Response {
    let project = attempt!(project_id(&project));
    let ctx = attempt!(Ctx::new(&state, project, &headers, custom.as_ref()).await);
    ctx.render(StatusCode::OK, ctx.page("reset", "Reset your password"))
}

/// Ask for a password-reset link (the answer does not say whether the account exists).
pub async fn reset_post(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let project = ctx.project;
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let email = form.email.unwrap_or_default();
    let link_base = format!("{}/reset/confirm", ctx.site.base);
    match state.identity.request_password_reset(project, &email, &link_base, ip).await {
        Ok(_) => {
            let mut p = ctx.page("done", "Check your email");
            p.notice = Some(format!("If {email} has an account here, a reset link is on its way."));
            ctx.render(StatusCode::OK, p)
        }
        Err(e) => ctx.error(e, "reset", "Reset your password", ctx.page("reset", "")),
    }
}

pub async fn reset_confirm_page(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    let what = ("password_reset", "reset/confirm", "Choose a new password", "Set password");
    confirm_page(&state, &project, custom.as_ref(), &headers, q.token, what).await
}

/// Set the new password; every session of the account ends.
pub async fn reset_confirm_post(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let token = form.token.unwrap_or_default();
    let mut again = ctx.page("new-password", "Choose a new password");
    again.token = token.clone();
    match state
        .identity
        .reset_password(&token, &form.password.unwrap_or_default(), &client_info(&headers, ip), ip)
        .await
    {
        Ok(_) => {
            let mut p = ctx.page("done", "Password changed");
            p.notice = Some("Your password is changed and every session signed out. Sign in with the new one.".into());
            ctx.render(StatusCode::OK, p)
        }
        Err(e @ CoreError::Invalid(_)) => ctx.error(e, "new-password", "Choose a new password", again),
        Err(e) => ctx.error(e, "done", "Choose a new password", ctx.page("done", "")),
    }
}

pub async fn verify_email_page(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    let what = ("email_verification", "verify-email", "Confirm your email", "Confirm");
    confirm_page(&state, &project, custom.as_ref(), &headers, q.token, what).await
}

pub async fn verify_email_post(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let ip = client_ip(&state, connect.as_ref(), &headers);
    match state.identity.verify_email(&form.token.unwrap_or_default(), &client_info(&headers, ip), ip).await {
        Ok(()) => {
            let mut p = ctx.page("done", "Email confirmed");
            p.notice = Some("Thank you: your email address is confirmed.".into());
            ctx.render(StatusCode::OK, p)
        }
        Err(e) => ctx.error(e, "done", "Confirm your email", ctx.page("done", "")),
    }
}

/// `authio dev`'s mailbox: what the built-in mail catcher received, newest first.
pub async fn dev_mailbox(State(state): State<AppState>) -> Response {
    let Some(catcher) = state.mailbox.as_ref() else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let mails = catcher
        .all()
        .into_iter()
        .rev()
        .take(50)
        .map(|m| MailView {
            subject: m.header("subject").unwrap_or_default(),
            to: m.to.join(", "),
            at: m.received_at.format("%H:%M:%S").to_string(),
            text: m.text(),
        })
        .collect();
    let page = Page {
        title: "Authio".into(),
        brand: "#3554d1".into(),
        page: "mailbox",
        heading: "Development mailbox".into(),
        mails,
        ..Page::default()
    };
    match page.render() {
        Ok(b) => {
            let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], b).into_response();
            secure_headers(resp.headers_mut());
            resp
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The browser's provider session for `project`, if it is signed in there now (and its method
/// and user still stand).
async fn browser_user(state: &AppState, project: Uuid, headers: &HeaderMap) -> Result<Option<Uuid>, CoreError> {
    let s = cookie(headers, OP_COOKIE).and_then(|c| state.oidc.read_op_session(&c));
    Ok(state.oidc.signed_in(project, s.as_ref()).await?.map(|s| s.user_id))
}

/// The invitation token, kept for the page's own path while the invitee signs in elsewhere:
/// the sign-in comes back to the bare page, so the token never rides in a URL that is stored
/// with the sign-in (or logged).
const INVITE_COOKIE: &str = "authio_invite";

fn invite_cookie_path(ctx: &Ctx) -> String {
    format!("{}/invitations", ctx.site.prefix)
}

/// The invitation link's page: who is invited where, and how to accept (nothing is used up
/// by a GET).
pub async fn invitation_page(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    let project = attempt!(project_id(&project));
    let ctx = attempt!(Ctx::new(&state, project, &headers, custom.as_ref()).await);
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let from_link = q.token.filter(|t| !t.is_empty());
    let token = from_link.clone().or_else(|| cookie(&headers, INVITE_COOKIE)).unwrap_or_default();
    let view = match state.identity.invitation_for_token(project, &token, ip).await {
        Ok(v) => v,
        Err(e) => return ctx.error(e, "done", "This invitation cannot be used", ctx.page("done", "")),
    };
    let mut resp = invitation_view(&state, &ctx, &headers, &token, &view, None).await;
    if from_link.is_some() {
        append_cookie(resp.headers_mut(), INVITE_COOKIE, &token, &invite_cookie_path(&ctx), 3600, ctx.secure);
    }
    resp
}

async fn invitation_view(
    state: &AppState,
    ctx: &Ctx,
    headers: &HeaderMap,
    token: &str,
    view: &authio_core::orgs::invitations::InvitationView,
    error: Option<String>,
) -> Response {
    let signed_in = match browser_user(state, ctx.project, headers).await {
        Ok(u) => u.is_some(),
        Err(e) => return ctx.error(e, "done", "This invitation cannot be used", ctx.page("done", "")),
    };
    let mut p = ctx.page("invitation", &format!("Join {}", view.organization_name));
    p.notice = Some(format!("You are invited to join {} as {}.", view.organization_name, view.email));
    p.error = error;
    p.token = token.to_owned();
    p.email = view.email.clone();
    p.invite_join = signed_in;
    p.invite_create = !signed_in && !view.has_account && ctx.presentation.offers("password");
    let accept = format!("{}/invitations/accept", ctx.site.prefix);
    p.signin_link = format!(
        "{}/signin?{}",
        ctx.site.prefix,
        serde_urlencoded::to_string([("return_to", accept.as_str()), ("login_hint", view.email.as_str())])
            .unwrap_or_default()
    );
    ctx.render(StatusCode::OK, p)
}

/// Accept: as the signed-in browser's user, or (with `password`) by creating the invited
/// account, which is then signed in.
pub async fn invitation_post(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let project = ctx.project;
    let ip = client_ip(&state, connect.as_ref(), &headers);
    let client = client_info(&headers, ip);
    let token = form.token.clone().unwrap_or_default();
    let heading = "Join the organization";
    let view = match state.identity.invitation_for_token(project, &token, ip).await {
        Ok(v) => v,
        Err(e) => return ctx.error(e, "done", heading, ctx.page("done", "")),
    };
    let joined = |name: &str| {
        let mut p = ctx.page("done", &format!("You joined {name}"));
        p.notice = Some(format!("You are now a member of {name}. You can close this page."));
        let mut resp = ctx.render(StatusCode::OK, p);
        append_cookie(resp.headers_mut(), INVITE_COOKIE, "", &invite_cookie_path(&ctx), 0, ctx.secure);
        resp
    };
    let refused = |e: CoreError| async {
        let (status, message, _) = describe(e);
        let mut resp = invitation_view(&state, &ctx, &headers, &token, &view, Some(message)).await;
        *resp.status_mut() = status;
        resp
    };
    if let Some(password) = form.password.as_deref().filter(|p| !p.is_empty()) {
        return match state.identity.accept_invitation_with_new_account(project, &token, password, &client, ip).await {
            Ok((scope, user, _org)) => {
                // Joined; signed in as the new account through the same gate as any sign-in
                // (a project or the organization may require a second factor first).
                match state.identity.begin_mfa(&scope, &user, &["pwd"], None).await {
                    Ok(Some(pending)) => return mfa::to_second_factor(&ctx, &pending),
                    Ok(None) => {}
                    Err(e) => return ctx.error(e, "done", heading, ctx.page("done", "")),
                }
                let lifetime = match state.identity.profile(project).await {
                    Ok(p) => i64::from(p.session_absolute_timeout_secs),
                    Err(e) => return ctx.error(e, "done", heading, ctx.page("done", "")),
                };
                let cookie = state.oidc.op_session_cookie(project_of_scope(&scope), &user, &["pwd"], lifetime);
                let mut resp = joined(&view.organization_name);
                set_op_cookie(resp.headers_mut(), &ctx.site.prefix, &cookie, ctx.secure, lifetime);
                resp
            }
            Err(e) => refused(e).await,
        };
    }
    let user = match browser_user(&state, project, &headers).await {
        Ok(Some(u)) => u,
        Ok(None) => return invitation_view(&state, &ctx, &headers, &token, &view, Some("Sign in first.".into())).await,
        Err(e) => return ctx.error(e, "done", heading, ctx.page("done", "")),
    };
    match state.identity.accept_invitation(project, &token, user, &client, ip).await {
        Ok(_) => joined(&view.organization_name),
        Err(e) => refused(e).await,
    }
}

#[derive(Deserialize)]
pub struct PickerQuery {
    return_to: Option<String>,
}

/// The organization picker an OpenID request with scope `organization` passes through when
/// the user could act for several organizations (or join one by its domain policy).
pub async fn organization_picker(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    Query(q): Query<PickerQuery>,
    headers: HeaderMap,
) -> Response {
    let project = attempt!(project_id(&project));
    let ctx = attempt!(Ctx::new(&state, project, &headers, custom.as_ref()).await);
    let heading = "Choose an organization";
    let return_to = q.return_to.unwrap_or_default();
    if let Err(e) = Return::authorize(project, &return_to) {
        return ctx.error(e, "done", heading, ctx.page("done", ""));
    }
    let user = match browser_user(&state, project, &headers).await {
        Ok(Some(u)) => u,
        Ok(None) => return see_other_to(&return_to),
        Err(e) => return ctx.error(e, "done", heading, ctx.page("done", "")),
    };
    let scope = match state.identity.project_scope(project).await {
        Ok(s) => s,
        Err(e) => return ctx.error(e, "done", heading, ctx.page("done", "")),
    };
    let choices = match authio_core::orgs::choices_for(&state.router, &scope, user).await {
        Ok(c) => c,
        Err(e) => return ctx.error(e, "done", heading, ctx.page("done", "")),
    };
    let mut p = ctx.page("organizations", heading);
    p.orgs = choices.into_iter().map(|c| (c.id.to_string(), c.name, c.joins)).collect();
    p.return_to = return_to;
    ctx.render(StatusCode::OK, p)
}

/// The picker's choice: back to the authorization request, naming the organization (the
/// request checks the membership, or joins by the domain policy).
pub async fn organization_picked(
    State(state): State<AppState>,
    Path(project): Path<String>,
    custom: Option<Extension<CustomHost>>,
    headers: HeaderMap,
    Form(form): Form<FormFields>,
) -> Response {
    let ctx = attempt!(posted(&state, &project, &headers, &form, custom.as_ref()).await);
    let heading = "Choose an organization";
    let return_to = form.flow.return_to.clone().unwrap_or_default();
    if let Err(e) = Return::authorize(ctx.project, &return_to) {
        return ctx.error(e, "done", heading, ctx.page("done", ""));
    }
    let Some(org) = form.organization.as_deref().and_then(|o| Uuid::parse_str(o).ok()) else {
        return ctx.error(
            CoreError::Invalid(authio_core::types::ValidationError::Field("organization")),
            "done",
            heading,
            ctx.page("done", ""),
        );
    };
    see_other_to(&with_query(&return_to, &[("organization", &org.to_string())]))
}

fn see_other_to(location: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    secure_headers(resp.headers_mut());
    resp
}
