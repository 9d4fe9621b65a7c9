//! Sign-in without passwords and the hosted flow's hand-off: magic links, email codes,
//! password resets, email verification, and the single-use sign-in codes a hosted sign-in
//! hands to the app (exchanged at the token endpoint with the PKCE verifier).
//!
//! Every one-time token lives on the shared database (the token is the only context) and is
//! used through one narrow function that checks expiry and single use in the same statement.
//! Users, sessions and the audit log stay at the tenant's home.
use std::net::IpAddr;

use authio_db::{preresolve, PgRow, RowExt, Scope, TenantKind, Type};
use chrono::{DateTime, Duration, Utc};
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::crypto::opaque::{hash as token_hash, new_token};
use crate::crypto::pkce::check_challenge;
use crate::identity::auth::{policy, scope_of, Identity, UserTokens};
use crate::identity::passwords::NewPassword;
use crate::identity::sessions::NewSession;
use crate::project::config::SignupPolicy;
use crate::project::mail::{self, MailKind};
use crate::throttle::{ip_key, retry_after};
use crate::types::ClientInfo;
use crate::types::{Email, RedirectUri};
use crate::{audit, CoreError};

/// Lifetimes and attempt limits of the one-time tokens.
#[derive(Clone, Debug)]
pub struct OneTimeSettings {
    pub magic_link_ttl_secs: i64,
    pub email_code_ttl_secs: i64,
    pub email_code_max_attempts: i32,
    pub password_reset_ttl_secs: i64,
    pub email_verification_ttl_secs: i64,
    /// A sign-in code is exchanged by the app right after the redirect.
    pub signin_code_ttl_secs: i64,
    pub oauth_state_ttl_secs: i64,
}

impl Default for OneTimeSettings {
    fn default() -> Self {
        OneTimeSettings {
            magic_link_ttl_secs: 15 * 60,
            email_code_ttl_secs: 10 * 60,
            email_code_max_attempts: 5,
            password_reset_ttl_secs: 30 * 60,
            email_verification_ttl_secs: 24 * 3600,
            signin_code_ttl_secs: 60,
            oauth_state_ttl_secs: 10 * 60,
        }
    }
}

/// Whom failed guesses of one-time secrets (links, codes, refresh tokens) are counted against.
#[derive(Clone, Debug)]
pub enum Guesser {
    /// An address (unknown when the request's peer is not known: nothing is counted).
    Address(Option<IpAddr>),
    /// A confidential client that authenticated: its failures are its own, so a relying
    /// party's backend with many users' stale refresh tokens throttles itself, not every
    /// client behind its address (and not its address for everyone else).
    Client(String),
}

impl Guesser {
    fn bucket(&self) -> Option<(&'static str, String)> {
        match self {
            Guesser::Address(Some(ip)) => Some(("verify:ip", ip_key(*ip))),
            Guesser::Address(None) => None,
            Guesser::Client(id) => Some(("verify:client", id.clone())),
        }
    }
}

/// How a project presents itself (hosted pages, emails) and which methods it offers.
#[derive(Clone, Debug)]
pub struct Presentation {
    pub tenant_id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub display_name: Option<String>,
    pub logo_url: Option<String>,
    pub brand_color: String,
    pub email_sender_name: Option<String>,
    pub methods: Vec<String>,
    pub development: bool,
    pub signup: SignupPolicy,
    /// Every user must sign in with a second factor (and enrol one first if they have none).
    pub mfa_required: bool,
    /// Clients the project's administrators did not register: by RFC 7591 dynamic
    /// registration, by their metadata document's URL, and whether a registration may be
    /// confidential.
    pub dynamic_registration: bool,
    pub metadata_document_clients: bool,
    pub confidential_registration: bool,
}

impl Presentation {
    pub fn title(&self) -> &str {
        self.display_name.as_deref().unwrap_or(&self.name)
    }

    pub fn offers(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m == method)
    }

    pub(crate) fn require(&self, method: &str) -> Result<(), CoreError> {
        if self.offers(method) {
            Ok(())
        } else {
            Err(CoreError::MethodNotEnabled(method.to_owned()))
        }
    }

    /// Whether a new account may be made for `email` (by itself: sign-up, a first link or
    /// code, a first upstream sign-in).
    pub(crate) fn admit_signup(&self, email: &Email) -> Result<(), CoreError> {
        if self.signup.admits(email) {
            Ok(())
        } else {
            Err(CoreError::SignupNotAllowed)
        }
    }

    pub(crate) fn sender(&self) -> &str {
        self.email_sender_name.as_deref().unwrap_or_else(|| self.title())
    }

    fn from_row(project_id: Uuid, r: &PgRow) -> Result<Self, CoreError> {
        Ok(Presentation {
            tenant_id: r.try_get(0)?,
            project_id,
            name: r.try_get(1)?,
            display_name: r.try_get(2)?,
            logo_url: r.try_get(3)?,
            brand_color: r.try_get(4)?,
            email_sender_name: r.try_get(5)?,
            methods: r.try_get(6)?,
            development: r.try_get::<String>(7)? == "development",
            signup: SignupPolicy::from_columns(&r.try_get::<String>(8)?, r.try_get(9)?),
            mfa_required: r.try_get::<String>(10)? == "required",
            dynamic_registration: r.try_get(11)?,
            metadata_document_clients: r.try_get(12)?,
            confidential_registration: r.try_get(13)?,
        })
    }
}

/// Where a hosted sign-in goes when it succeeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Return {
    /// To the app: a registered redirect URI with a single-use code for its PKCE S256
    /// challenge, and the app's `state`.
    App { redirect_uri: String, app_state: Option<String>, code_challenge: String },
    /// Back to the project's OpenID authorization endpoint (a path on the same host), which
    /// now finds the browser signed in.
    Authorize { return_to: String },
}

impl Return {
    /// The columns a one-time token row keeps it in: (redirect_uri, app_state, code_challenge).
    pub(crate) fn columns(ret: Option<&Return>) -> (Option<&str>, Option<&str>, Option<&str>) {
        match ret {
            None => (None, None, None),
            Some(Return::App { redirect_uri, app_state, code_challenge }) => {
                (Some(redirect_uri.as_str()), app_state.as_deref(), Some(code_challenge.as_str()))
            }
            Some(Return::Authorize { return_to }) => (Some(return_to.as_str()), None, None),
        }
    }

    pub(crate) fn from_columns(
        uri: Option<String>,
        app_state: Option<String>,
        challenge: Option<String>,
    ) -> Option<Self> {
        match (uri, challenge) {
            (Some(redirect_uri), Some(code_challenge)) => Some(Return::App { redirect_uri, app_state, code_challenge }),
            (Some(return_to), None) if return_to.starts_with('/') => Some(Return::Authorize { return_to }),
            _ => None,
        }
    }

    /// A return to the authorization endpoint: only that endpoint's path on this host, for
    /// this project (`/p/{project}/oauth2/authorize?...`, or `/oauth2/authorize?...` on the
    /// project's custom domain).
    pub fn authorize(project: Uuid, return_to: &str) -> Result<Self, CoreError> {
        let ok = (return_to.starts_with(&format!("/p/{project}/oauth2/authorize?"))
            || return_to.starts_with("/oauth2/authorize?")
            // The invitation page (its token waits in a cookie of that page, never in a URL
            // that is stored or logged).
            || return_to == format!("/p/{project}/invitations/accept")
            || return_to == "/invitations/accept"
            // The user's own pages: second factors, connected apps.
            || return_to == format!("/p/{project}/account/security")
            || return_to == "/account/security"
            || return_to == format!("/p/{project}/account/apps")
            || return_to == "/account/apps")
            && return_to.len() <= 4096
            && !return_to.contains(['\r', '\n']);
        if !ok {
            return Err(CoreError::InvalidRedirectUri);
        }
        Ok(Return::Authorize { return_to: return_to.to_owned() })
    }
}

/// An email address proved by a link or code, and where its flow returns.
#[derive(Debug)]
pub struct ProvedEmail {
    pub scope: Scope,
    pub email: Email,
    pub ret: Option<Return>,
}

/// A user resolved for a sign-in.
#[derive(Clone, Debug)]
pub struct SignedInUser {
    pub user_id: Uuid,
    pub role: Option<String>,
    pub created: bool,
}

/// Append query parameters to a URI that may already have some.
pub fn with_query(uri: &str, params: &[(&str, &str)]) -> String {
    let encoded = serde_urlencoded::to_string(params).unwrap_or_default();
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}{encoded}")
}

fn ret_from_row(r: &PgRow, redirect: usize) -> Result<Option<Return>, CoreError> {
    Ok(Return::from_columns(r.try_get(redirect)?, r.try_get(redirect + 1)?, r.try_get(redirect + 2)?))
}

/// Where project, email and the return are in `email_link_use`'s and `email_code_attempt`'s rows.
const LINK_COLUMNS: (usize, usize, usize) = (1, 2, 3);
const CODE_COLUMNS: (usize, usize, usize) = (2, 3, 5);

const INVALID_LINK: CoreError = CoreError::InvalidGrant("this link is invalid, used or expired");
const INVALID_CODE: CoreError = CoreError::InvalidGrant("the code is wrong or expired");

impl Identity {
    /// A project's presentation (cached per node like its profile, dropped on NOTIFY).
    pub async fn presentation(&self, project: Uuid) -> Result<std::sync::Arc<Presentation>, CoreError> {
        let key = project.to_string();
        let cache = &self.inner.presentations;
        if let Some(p) = cache.get(&key, self.inner.settings.profile_ttl) {
            return Ok(p);
        }
        let generation = cache.generation();
        let row = preresolve::project_presentation(&self.inner.router, project)
            .await?
            .ok_or(CoreError::NotFound(crate::types::Entity::Project))?;
        let p = std::sync::Arc::new(Presentation::from_row(project, &row)?);
        cache.put(&key, p.clone(), generation);
        Ok(p)
    }

    /// Check where a hosted flow may return: the redirect URI registered for the project
    /// (exact match), a PKCE S256 challenge, a bounded state.
    pub async fn check_return(
        &self,
        project: Uuid,
        redirect_uri: &str,
        app_state: Option<&str>,
        code_challenge: Option<&str>,
        code_challenge_method: Option<&str>,
    ) -> Result<Return, CoreError> {
        let uri = self.registered_redirect(project, redirect_uri).await?;
        let challenge = code_challenge.ok_or(CoreError::Invalid(crate::types::ValidationError::Field(
            "code_challenge (PKCE S256 is required)",
        )))?;
        check_challenge(challenge, code_challenge_method)?;
        if app_state.is_some_and(|s| s.len() > 512) {
            return Err(CoreError::Invalid(crate::types::ValidationError::Field("state (at most 512 characters)")));
        }
        Ok(Return::App {
            redirect_uri: uri.as_str().to_owned(),
            app_state: app_state.map(str::to_owned),
            code_challenge: challenge.to_owned(),
        })
    }

    /// A redirect URI the project registered (exact; in development projects a loopback URI
    /// on any port), else `InvalidRedirectUri`.
    pub async fn registered_redirect(&self, project: Uuid, raw: &str) -> Result<RedirectUri, CoreError> {
        let uri = RedirectUri::parse(raw).map_err(|_| CoreError::InvalidRedirectUri)?;
        let presentation = self.presentation(project).await?;
        let registered = preresolve::project_redirect_uris(&self.inner.router, project).await?;
        if !uri.is_registered(&registered, presentation.development) {
            return Err(CoreError::InvalidRedirectUri);
        }
        Ok(uri)
    }

    /// Whether a browser origin may call a project's endpoints.
    pub async fn origin_allowed(&self, project: Uuid, origin: &str) -> Result<bool, CoreError> {
        Ok(preresolve::origin_allowed(&self.inner.router, project, origin).await?)
    }

    /// Whether any project allows the origin (a CORS preflight names no project).
    pub async fn origin_known(&self, origin: &str) -> Result<bool, CoreError> {
        Ok(preresolve::origin_known(&self.inner.router, origin).await?)
    }

    /// Count a hit against a limit; past it, `RateLimited` with the seconds to wait.
    pub(crate) async fn limit(&self, bucket: &str, key: &str, limit: i32, window: i32) -> Result<(), CoreError> {
        let now = self.now();
        let w = preresolve::rate_hit(&self.inner.router, bucket, key, window, now).await?;
        if w.hits > limit {
            return Err(CoreError::RateLimited { retry_after: retry_after(w.window_ends, now) });
        }
        Ok(())
    }

    /// Before a one-time token, code or upstream answer is judged: an address whose failures
    /// are over the limit is refused (the count is read on the shared database, so it holds
    /// across nodes). Successes are not counted: one backend may verify for all its users.
    pub async fn refuse_guesser(&self, ip: Option<IpAddr>) -> Result<(), CoreError> {
        self.refuse_guesser_as(&Guesser::Address(ip)).await
    }

    /// [`Identity::refuse_guesser`] for whoever the failures are counted against.
    pub(crate) async fn refuse_guesser_as(&self, who: &Guesser) -> Result<(), CoreError> {
        let Some((bucket, key)) = who.bucket() else { return Ok(()) };
        let l = &self.inner.settings.limits;
        let now = self.now();
        let w = preresolve::rate_peek(&self.inner.router, bucket, &key, l.verify_ip_window_secs, now).await?;
        match w {
            Some(w) if w.hits >= l.verify_failures_per_ip => {
                Err(CoreError::RateLimited { retry_after: retry_after(w.window_ends, now) })
            }
            _ => Ok(()),
        }
    }

    /// After judging: a failure that could be a guess is counted against the address; the one
    /// that reaches the limit is answered with `RateLimited`.
    pub(crate) async fn judge<T>(&self, ip: Option<IpAddr>, result: Result<T, CoreError>) -> Result<T, CoreError> {
        self.judge_as(&Guesser::Address(ip), result).await
    }

    /// [`Identity::judge`] for whoever the failures are counted against.
    pub(crate) async fn judge_as<T>(&self, who: &Guesser, result: Result<T, CoreError>) -> Result<T, CoreError> {
        let guess = matches!(
            &result,
            Err(CoreError::InvalidGrant(_)
                | CoreError::ChallengeLocked
                | CoreError::UpstreamRefused(_)
                | CoreError::NotFound(crate::types::Entity::Invitation))
        );
        if let (true, Some((bucket, key))) = (guess, who.bucket()) {
            let l = &self.inner.settings.limits;
            let now = self.now();
            let w = preresolve::rate_hit(&self.inner.router, bucket, &key, l.verify_ip_window_secs, now).await?;
            if w.hits > l.verify_failures_per_ip {
                return Err(CoreError::RateLimited { retry_after: retry_after(w.window_ends, now) });
            }
        }
        result
    }

    /// Sign-in attempts that start something (upstream redirects, passkey ceremonies, fetches
    /// of a client's metadata document) count against the address like password attempts.
    pub async fn limit_attempts(&self, ip: Option<IpAddr>) -> Result<(), CoreError> {
        let l = &self.inner.settings.limits;
        match ip {
            Some(ip) => self.limit("signin:ip", &ip_key(ip), l.signin_per_ip, l.signin_ip_window_secs).await,
            None => Ok(()),
        }
    }

    /// The limits on sending email: per address and per recipient (known or not, so the
    /// answer says nothing about accounts).
    async fn limit_sends(&self, project: Uuid, email: &Email, ip: Option<IpAddr>) -> Result<(), CoreError> {
        let l = &self.inner.settings.limits;
        if let Some(ip) = ip {
            self.limit("send:ip", &ip_key(ip), l.sends_per_ip, l.send_ip_window_secs).await?;
        }
        let recipient = format!("{project}:{:x}", Sha256::digest(email.as_str().as_bytes()));
        self.limit("send:email", &recipient, l.sends_per_email, l.send_email_window_secs).await
    }

    /// Look a user up by email at the home: (id, disabled, role, has password).
    async fn user_by_email(
        &self,
        scope: &Scope,
        email: &Email,
    ) -> Result<Option<(Uuid, bool, Option<String>, bool)>, CoreError> {
        let rows = self
            .inner
            .router
            .read(
                scope,
                "SELECT id, disabled, role, password_hash IS NOT NULL FROM users WHERE email = $1",
                &[(&email.as_str(), Type::TEXT)],
            )
            .await?;
        rows.first().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))).transpose()
    }

    /// Whether a link or code to `email` could sign anyone in: an account exists, or the
    /// project would create one (never on the platform tenant; only as its sign-up policy
    /// admits). Asked before mail is sent; the caller answers the same either way. The
    /// account is looked up only when the policy alone does not decide.
    async fn may_sign_in_or_up(
        &self,
        scope: &Scope,
        presentation: &Presentation,
        email: &Email,
    ) -> Result<bool, CoreError> {
        if scope.tenant_kind != TenantKind::Platform && presentation.signup.admits(email) {
            return Ok(true);
        }
        if self.user_by_email(scope, email).await?.is_some() {
            return Ok(true);
        }
        // A pending invitation admits its address: this sign-in proves it.
        Ok(scope.tenant_kind != TenantKind::Platform && self.invited(scope, email).await?)
    }

    /// The user an email just proved (by link, code or upstream provider) signs in as: the
    /// existing one (its email now verified), or a new one on customer projects. Disabled
    /// accounts are refused; the platform tenant never signs up this way.
    pub(crate) async fn resolve_user(
        &self,
        scope: &Scope,
        email: &Email,
        method: &str,
        client: &ClientInfo,
    ) -> Result<SignedInUser, CoreError> {
        // A link or code sent before its method was turned off no longer signs in.
        let presentation = self.presentation(crate::types::project_of(scope)?).await?;
        presentation.require(method)?;
        let now = self.now();
        let tx = self.inner.router.begin(scope).await?;
        let found = tx
            .query_opt(
                "UPDATE users SET email_verified = true, updated_at = CASE WHEN email_verified THEN updated_at ELSE $2 END
                 WHERE email = $1 RETURNING id, disabled, role",
                &[(&email.as_str(), Type::TEXT), (&now, Type::TIMESTAMPTZ)],
            )
            .await?;
        if let Some(r) = found {
            let disabled: bool = r.col("disabled")?;
            if disabled {
                return Err(CoreError::Forbidden("this account is disabled"));
            }
            let (user_id, role) = (r.col("id")?, r.col("role")?);
            // (Nothing is kept of a refused sign-in: the address stays as it was.)
            if crate::identity::sso_policy::sso_required_for(&tx, Some(user_id), email.as_str()).await? {
                return Err(CoreError::SsoRequired);
            }
            tx.commit().await?;
            return Ok(SignedInUser { user_id, role, created: false });
        }
        if crate::identity::sso_policy::sso_required_for(&tx, None, email.as_str()).await? {
            return Err(CoreError::SsoRequired);
        }
        if scope.tenant_kind == TenantKind::Platform {
            return Err(CoreError::Forbidden("sign-up is closed on the platform tenant"));
        }
        // A link, code or upstream answer proved the address: a pending invitation admits it
        // whatever the sign-up policy says (a password sign-up, which proves nothing, does not).
        if presentation.admit_signup(email).is_err() && !self.invited(scope, email).await? {
            return Err(CoreError::SignupNotAllowed);
        }
        let user = crate::identity::users::insert(&tx, scope, email, None, now).await?;
        tx.query("UPDATE users SET email_verified = true WHERE id = $1", &[(&user.id, Type::UUID)]).await?;
        let event = audit::Event {
            action: crate::audit::AuditAction::UserSignedUp,
            actor: audit::Actor::user(user.id, Some(email.as_str())),
            target: Some(("user", user.id.to_string())),
            client,
            metadata: serde_json::json!({"method": method}),
        };
        audit::record_and_commit(tx, scope, event, now).await?;
        Ok(SignedInUser { user_id: user.id, role: None, created: true })
    }

    /// Start a session for a signed-in user at the home, with its event, and sign its tokens.
    pub(crate) async fn start_session(
        &self,
        scope: &Scope,
        user: &SignedInUser,
        amr: &[&str],
        client: &ClientInfo,
    ) -> Result<UserTokens, CoreError> {
        self.start_session_for(scope, user, amr, client, None, None).await
    }

    /// [`Identity::start_session`] for an OpenID client: its id and the granted scope go in
    /// the access token (`client_id`, `scope`).
    pub(crate) async fn start_session_for(
        &self,
        scope: &Scope,
        user: &SignedInUser,
        amr: &[&str],
        client: &ClientInfo,
        oidc: Option<crate::identity::auth::ClientGrant<'_>>,
        org: Option<&crate::identity::auth::OrgContext>,
    ) -> Result<UserTokens, CoreError> {
        let project = crate::types::project_of(scope)?;
        let profile = self.profile(project).await?;
        let keys = self.inner.keys.keyset(&profile).await?;
        let now = self.now();
        let mut session = NewSession::new(scope, user.user_id, amr, client, &policy(&profile), now)?;
        if let Some(g) = oidc {
            session = session.for_client(g.client_id, g.scope, g.resource);
        }
        session = session.in_organization(org.map(|o| o.id));
        let event = audit::EventRow::new(
            scope,
            audit::Event {
                action: crate::audit::AuditAction::UserSignedIn,
                actor: audit::Actor::user(user.user_id, None),
                target: Some(("user", user.user_id.to_string())),
                client,
                metadata: serde_json::json!({"session_id": session.id, "amr": amr}),
            },
            now,
        )?;
        let (session_params, event_params) = (session.params(), event.params());
        let statements =
            [(crate::identity::sessions::START_SQL, &session_params[..]), (audit::INSERT_SQL, &event_params[..])];
        self.inner.router.write(scope, &statements).await?;
        let amr: Vec<String> = amr.iter().map(|s| (*s).to_owned()).collect();
        self.user_tokens(
            &keys,
            &profile,
            user.user_id,
            session.id,
            &amr,
            user.role.clone(),
            session.refresh_token,
            oidc,
            org,
            None,
        )
    }

    /// Email a magic link. `link_base` is where the link points (the app's registered
    /// redirect URI for API callers, the hosted page otherwise): the token is added as
    /// `token`. Answers the same whether or not the account exists; returns the token when
    /// one was sent (the caller mails nothing itself; tools and benchmarks use it).
    #[allow(clippy::too_many_arguments)]
    #[tracing::instrument(level = "debug", name = "identity::request_magic_link", skip_all, fields(project = %project))]
    pub async fn request_magic_link(
        &self,
        project: Uuid,
        email: &str,
        link_base: &str,
        ret: Option<&Return>,
        browser_binding: Option<[u8; 32]>,
        ip: Option<IpAddr>,
    ) -> Result<Option<String>, CoreError> {
        let email = Email::parse(email)?;
        let presentation = self.presentation(project).await?;
        presentation.require("magic_link")?;
        self.limit_sends(project, &email, ip).await?;
        let profile = self.profile(project).await?;
        let scope = scope_of(&profile);
        if !self.may_sign_in_or_up(&scope, &presentation, &email).await? {
            return Ok(None);
        }
        let ttl = self.inner.settings.one_time.magic_link_ttl_secs;
        let (token, hash) = new_token("ml_");
        let link = with_query(link_base, &[("token", &token)]);
        self.write_link(
            &scope,
            &presentation,
            LinkWrite {
                purpose: "magic_link",
                kind: MailKind::MagicLink,
                email: &email,
                hash,
                link: &link,
                ttl,
                ret,
                binding: browser_binding,
            },
        )
        .await?;
        Ok(Some(token))
    }

    async fn write_link(&self, scope: &Scope, presentation: &Presentation, w: LinkWrite<'_>) -> Result<(), CoreError> {
        let now = self.now();
        let expires = now + Duration::seconds(w.ttl);
        let project = crate::types::project_of(scope)?;
        let hash = w.hash.to_vec();
        let binding = w.binding.map(|b| b.to_vec());
        let (ret_uri, ret_state, ret_challenge) = Return::columns(w.ret);
        let tx = self.inner.router.begin_pinned(scope).await?;
        tx.query(
            "INSERT INTO email_links (tenant_id, project_id, token_hash, purpose, email, redirect_uri, app_state,
                                      code_challenge, browser_binding, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&hash, Type::BYTEA),
                (&w.purpose, Type::TEXT),
                (&w.email.as_str(), Type::TEXT),
                (&ret_uri, Type::TEXT),
                (&ret_state, Type::TEXT),
                (&ret_challenge, Type::TEXT),
                (&binding, Type::BYTEA),
                (&now, Type::TIMESTAMPTZ),
                (&expires, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
        let values = mail::Values {
            project: presentation.title(),
            link: Some(w.link),
            code: None,
            minutes: w.ttl / 60,
            organization: None,
        };
        mail::enqueue(
            &tx,
            scope,
            &self.inner.master_key,
            w.kind,
            w.email.as_str(),
            presentation.sender(),
            &values,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Use a magic link (once): the email it proves. A link bound to a browser needs that
    /// browser's verifier.
    // The tenant and project are known only once the presented token or code is resolved.
    #[tracing::instrument(level = "debug", name = "identity::use_magic_link", skip_all)]
    pub async fn use_magic_link(
        &self,
        token: &str,
        verifier: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<ProvedEmail, CoreError> {
        self.refuse_guesser(ip).await?;
        let result: Result<ProvedEmail, CoreError> = async {
            let binding = verifier.map(token_hash);
            let row = preresolve::email_link_use(
                &self.inner.router,
                &token_hash(token),
                "magic_link",
                binding.as_ref().map(|b| &b[..]),
                self.now(),
            )
            .await?
            .ok_or(INVALID_LINK)?;
            self.proved(&row, LINK_COLUMNS).await
        }
        .await;
        self.judge(ip, result).await
    }

    /// The email a used link or code proved: `columns` are the row's (project, email, first
    /// of the return's three) positions.
    async fn proved(&self, r: &PgRow, columns: (usize, usize, usize)) -> Result<ProvedEmail, CoreError> {
        let (project, email, ret) = columns;
        let project: Uuid = r.try_get(project)?;
        let profile = self.profile(project).await?;
        let email = Email::parse(&r.try_get::<String>(email)?)?;
        Ok(ProvedEmail { scope: scope_of(&profile), email, ret: ret_from_row(r, ret)? })
    }

    /// Whether an email link is live, and for which project (a hosted page asks before it
    /// shows the button that uses it: mail scanners follow links, they do not press buttons).
    pub async fn link_live(&self, token: &str, purpose: &str) -> Result<Option<(Uuid, String)>, CoreError> {
        Ok(preresolve::email_link_live(&self.inner.router, &token_hash(token), purpose, self.now()).await?)
    }

    /// Email a six-digit code. Returns the challenge id (the same shape whether or not the
    /// account exists) and the code when one was sent.
    #[tracing::instrument(level = "debug", name = "identity::request_email_code", skip_all, fields(project = %project))]
    pub async fn request_email_code(
        &self,
        project: Uuid,
        email: &str,
        ret: Option<&Return>,
        ip: Option<IpAddr>,
    ) -> Result<(Uuid, Option<String>), CoreError> {
        let email = Email::parse(email)?;
        let presentation = self.presentation(project).await?;
        presentation.require("email_code")?;
        self.limit_sends(project, &email, ip).await?;
        let profile = self.profile(project).await?;
        let scope = scope_of(&profile);
        let send = self.may_sign_in_or_up(&scope, &presentation, &email).await?;
        let id = Uuid::now_v7();
        let code = format!("{:06}", rand::rngs::OsRng.gen_range(0..1_000_000u32));
        let mac = self.code_mac(id, &code).to_vec();
        let now = self.now();
        let ttl = self.inner.settings.one_time.email_code_ttl_secs;
        let expires = now + Duration::seconds(ttl);
        let (ret_uri, ret_state, ret_challenge) = Return::columns(ret);
        let tx = self.inner.router.begin_pinned(&scope).await?;
        // A new code replaces the live one.
        tx.query("DELETE FROM email_codes WHERE email = $1", &[(&email.as_str(), Type::TEXT)]).await?;
        tx.query(
            "INSERT INTO email_codes (tenant_id, project_id, id, email, code_mac, redirect_uri, app_state,
                                      code_challenge, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&id, Type::UUID),
                (&email.as_str(), Type::TEXT),
                (&mac, Type::BYTEA),
                (&ret_uri, Type::TEXT),
                (&ret_state, Type::TEXT),
                (&ret_challenge, Type::TEXT),
                (&now, Type::TIMESTAMPTZ),
                (&expires, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
        if send {
            let values = mail::Values {
                project: presentation.title(),
                link: None,
                code: Some(&code),
                minutes: ttl / 60,
                organization: None,
            };
            mail::enqueue(
                &tx,
                &scope,
                &self.inner.master_key,
                MailKind::EmailCode,
                email.as_str(),
                presentation.sender(),
                &values,
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok((id, send.then_some(code)))
    }

    fn code_mac(&self, challenge: Uuid, code: &str) -> [u8; 32] {
        let mut data = challenge.as_bytes().to_vec();
        data.extend_from_slice(code.as_bytes());
        self.inner.master_key.mac("email_code", &data)
    }

    /// Check an email code: every attempt is counted first; after the last allowed attempt
    /// the challenge is locked, right code or not. A right code is used once.
    // The tenant and project are known only once the presented token or code is resolved.
    #[tracing::instrument(level = "debug", name = "identity::verify_email_code", skip_all)]
    pub async fn verify_email_code(
        &self,
        challenge: Uuid,
        code: &str,
        ip: Option<IpAddr>,
    ) -> Result<ProvedEmail, CoreError> {
        self.refuse_guesser(ip).await?;
        let result: Result<ProvedEmail, CoreError> = async {
            let now = self.now();
            let max = self.inner.settings.one_time.email_code_max_attempts;
            let row =
                preresolve::email_code_attempt(&self.inner.router, challenge, max, now).await?.ok_or(INVALID_CODE)?;
            let status: String = row.try_get(0)?;
            if status == "locked" {
                return Err(CoreError::ChallengeLocked);
            }
            let stored: Vec<u8> = row.try_get(4)?;
            let shaped = code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit());
            let given = self.code_mac(challenge, if shaped { code } else { "------" });
            if !(shaped && bool::from(given.ct_eq(&stored[..]))) {
                return Err(INVALID_CODE);
            }
            if !preresolve::email_code_use(&self.inner.router, challenge, now).await? {
                return Err(INVALID_CODE);
            }
            self.proved(&row, CODE_COLUMNS).await
        }
        .await;
        self.judge(ip, result).await
    }

    /// The hosted flow's hand-off: a single-use code for the signed-in user, and the URI to
    /// send the browser to (`code` and `state` added).
    #[tracing::instrument(level = "debug", name = "identity::issue_signin_code", skip_all, fields(tenant = %scope.tenant_id, project = ?scope.project_id))]
    pub async fn issue_signin_code(
        &self,
        scope: &Scope,
        user: &SignedInUser,
        amr: &[&str],
        ret: &Return,
    ) -> Result<String, CoreError> {
        let Return::App { redirect_uri, app_state, code_challenge } = ret else {
            return Err(CoreError::Internal("a sign-in code is for an app's redirect URI".into()));
        };
        let project = crate::types::project_of(scope)?;
        let (code, hash) = new_token("sc_");
        let hash = hash.to_vec();
        let now = self.now();
        let expires = now + Duration::seconds(self.inner.settings.one_time.signin_code_ttl_secs);
        let amr: Vec<String> = amr.iter().map(|s| (*s).to_owned()).collect();
        let tx = self.inner.router.begin_pinned(scope).await?;
        tx.query(
            "INSERT INTO signin_codes (tenant_id, project_id, code_hash, user_id, amr, redirect_uri, code_challenge,
                                       created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&hash, Type::BYTEA),
                (&user.user_id, Type::UUID),
                (&amr, Type::TEXT_ARRAY),
                (&redirect_uri.as_str(), Type::TEXT),
                (&code_challenge.as_str(), Type::TEXT),
                (&now, Type::TIMESTAMPTZ),
                (&expires, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
        tx.commit().await?;
        let mut params = vec![("code", code.as_str())];
        if let Some(s) = app_state {
            params.push(("state", s.as_str()));
        }
        Ok(with_query(redirect_uri, &params))
    }

    /// Email a password-reset link if the account exists and has a password (the answer is
    /// the same either way).
    #[tracing::instrument(level = "debug", name = "identity::request_password_reset", skip_all, fields(project = %project))]
    pub async fn request_password_reset(
        &self,
        project: Uuid,
        email: &str,
        link_base: &str,
        ip: Option<IpAddr>,
    ) -> Result<Option<String>, CoreError> {
        let email = Email::parse(email)?;
        let presentation = self.presentation(project).await?;
        presentation.require("password")?;
        self.limit_sends(project, &email, ip).await?;
        let profile = self.profile(project).await?;
        let scope = scope_of(&profile);
        match self.user_by_email(&scope, &email).await? {
            Some((_, false, _, _)) => {}
            _ => return Ok(None),
        }
        let (token, hash) = new_token("pr_");
        let link = with_query(link_base, &[("token", &token)]);
        let ttl = self.inner.settings.one_time.password_reset_ttl_secs;
        let w = LinkWrite {
            purpose: "password_reset",
            kind: MailKind::PasswordReset,
            email: &email,
            hash,
            link: &link,
            ttl,
            ret: None,
            binding: None,
        };
        self.write_link(&scope, &presentation, w).await?;
        Ok(Some(token))
    }

    /// Set a new password with a reset link (once): the email counts as verified, and every
    /// session of the user ends.
    // The tenant and project are known only once the presented token or code is resolved.
    #[tracing::instrument(level = "debug", name = "identity::reset_password", skip_all)]
    pub async fn reset_password(
        &self,
        token: &str,
        new_password: &str,
        client: &ClientInfo,
        ip: Option<IpAddr>,
    ) -> Result<Uuid, CoreError> {
        let password = NewPassword::parse(new_password)?;
        self.refuse_guesser(ip).await?;
        let result: Result<Uuid, CoreError> = async {
            let hash = self.inner.passwords.hash(&password).await?;
            let now = self.now();
            let row = preresolve::email_link_use(&self.inner.router, &token_hash(token), "password_reset", None, now)
                .await?
                .ok_or(INVALID_LINK)?;
            let proved = self.proved(&row, LINK_COLUMNS).await?;
            let scope = proved.scope;
            let tx = self.inner.router.begin(&scope).await?;
            let user = tx
                .query_opt(
                    "UPDATE users SET password_hash = $2, email_verified = true, updated_at = $3
                     WHERE email = $1 AND NOT disabled RETURNING id",
                    &[(&proved.email.as_str(), Type::TEXT), (&hash, Type::TEXT), (&now, Type::TIMESTAMPTZ)],
                )
                .await?
                .ok_or(INVALID_LINK)?;
            let user_id: Uuid = user.col("id")?;
            let ended = tx
                .query(
                    "UPDATE sessions SET revoked_at = $2, revoked_reason = 'password_reset'
                     WHERE user_id = $1 AND revoked_at IS NULL RETURNING id",
                    &[(&user_id, Type::UUID), (&now, Type::TIMESTAMPTZ)],
                )
                .await?
                .len();
            let event = audit::Event {
                action: crate::audit::AuditAction::UserPasswordReset,
                actor: audit::Actor::user(user_id, Some(proved.email.as_str())),
                target: Some(("user", user_id.to_string())),
                client,
                metadata: serde_json::json!({"sessions_ended": ended}),
            };
            audit::record_and_commit(tx, &scope, event, now).await?;
            Ok(user_id)
        }
        .await;
        self.judge(ip, result).await
    }

    /// Email a link that confirms the address of a user who signed up with a password.
    #[tracing::instrument(level = "debug", name = "identity::send_email_verification", skip_all, fields(project = %project))]
    pub async fn send_email_verification(&self, project: Uuid, email: &str, link_base: &str) -> Result<(), CoreError> {
        let email = Email::parse(email)?;
        let presentation = self.presentation(project).await?;
        let profile = self.profile(project).await?;
        let (token, hash) = new_token("ev_");
        let link = with_query(link_base, &[("token", &token)]);
        let w = LinkWrite {
            purpose: "email_verification",
            kind: MailKind::EmailVerification,
            email: &email,
            hash,
            link: &link,
            ttl: self.inner.settings.one_time.email_verification_ttl_secs,
            ret: None,
            binding: None,
        };
        self.write_link(&scope_of(&profile), &presentation, w).await
    }

    /// Confirm an address with its link (once).
    // The tenant and project are known only once the presented token or code is resolved.
    #[tracing::instrument(level = "debug", name = "identity::verify_email", skip_all)]
    pub async fn verify_email(&self, token: &str, client: &ClientInfo, ip: Option<IpAddr>) -> Result<(), CoreError> {
        self.refuse_guesser(ip).await?;
        let result: Result<(), CoreError> = async {
            let now = self.now();
            let row =
                preresolve::email_link_use(&self.inner.router, &token_hash(token), "email_verification", None, now)
                    .await?
                    .ok_or(INVALID_LINK)?;
            let proved = self.proved(&row, LINK_COLUMNS).await?;
            let tx = self.inner.router.begin(&proved.scope).await?;
            let user = tx
                .query_opt(
                    "UPDATE users SET email_verified = true, updated_at = $2 WHERE email = $1 RETURNING id",
                    &[(&proved.email.as_str(), Type::TEXT), (&now, Type::TIMESTAMPTZ)],
                )
                .await?
                .ok_or(INVALID_LINK)?;
            let user_id: Uuid = user.col("id")?;
            let event = audit::Event {
                action: crate::audit::AuditAction::UserEmailVerified,
                actor: audit::Actor::user(user_id, Some(proved.email.as_str())),
                target: Some(("user", user_id.to_string())),
                client,
                metadata: serde_json::json!({}),
            };
            audit::record_and_commit(tx, &proved.scope, event, now).await
        }
        .await;
        self.judge(ip, result).await
    }

    /// The user an email just proved signs in as (the hosted pages' path: the session starts
    /// when the app exchanges its sign-in code).
    pub async fn resolve_signin(
        &self,
        proved: &ProvedEmail,
        method: &str,
        client: &ClientInfo,
    ) -> Result<SignedInUser, CoreError> {
        self.resolve_user(&proved.scope, &proved.email, method, client).await
    }

    /// Sign in a user an email just proved and start a session (the JSON API's path).
    pub async fn sign_in_proved(
        &self,
        proved: &ProvedEmail,
        method: &str,
        client: &ClientInfo,
    ) -> Result<crate::identity::auth::SignIn, CoreError> {
        let user = self.resolve_user(&proved.scope, &proved.email, method, client).await?;
        if let Some(p) = self.begin_mfa(&proved.scope, &user, &["otp"], None).await? {
            return Ok(crate::identity::auth::SignIn::Mfa(p));
        }
        self.start_session(&proved.scope, &user, &["otp"], client).await.map(crate::identity::auth::SignIn::Tokens)
    }

    /// The lifetimes and attempt limits in force.
    pub fn one_time(&self) -> &OneTimeSettings {
        &self.inner.settings.one_time
    }

    /// Create an account with a password from a hosted sign-up page: no session yet (the app
    /// gets one by exchanging its sign-in code), the event written with the user.
    #[tracing::instrument(level = "debug", name = "identity::register", skip_all, fields(project = %project))]
    pub async fn register(
        &self,
        project: Uuid,
        email: &str,
        password: &str,
        client: &ClientInfo,
        ip: Option<IpAddr>,
    ) -> Result<(Scope, SignedInUser), CoreError> {
        let email = Email::parse(email)?;
        let password = NewPassword::parse(password)?;
        let presentation = self.presentation(project).await?;
        presentation.require("password")?;
        let profile = self.profile(project).await?;
        if profile.tenant_kind == TenantKind::Platform {
            return Err(CoreError::Forbidden("sign-up is closed on the platform tenant"));
        }
        presentation.admit_signup(&email)?;
        let l = &self.inner.settings.limits;
        if let Some(ip) = ip {
            self.limit("signup:ip", &ip_key(ip), l.signup_per_ip, l.signup_ip_window_secs).await?;
        }
        let hash = self.inner.passwords.hash(&password).await?;
        let scope = scope_of(&profile);
        let now = self.now();
        let tx = self.inner.router.begin(&scope).await?;
        let user = crate::identity::users::insert(&tx, &scope, &email, Some(&hash), now).await?;
        let event = audit::Event {
            action: crate::audit::AuditAction::UserSignedUp,
            actor: audit::Actor::user(user.id, Some(email.as_str())),
            target: Some(("user", user.id.to_string())),
            client,
            metadata: serde_json::json!({"method": "password", "hosted": true}),
        };
        audit::record_and_commit(tx, &scope, event, now).await?;
        Ok((scope, SignedInUser { user_id: user.id, role: None, created: true }))
    }

    /// Drop one-time tokens a day past their end.
    pub async fn one_time_gc(&self, now: DateTime<Utc>) -> Result<i32, CoreError> {
        Ok(preresolve::one_time_gc(&self.inner.router, now).await?)
    }
}

struct LinkWrite<'a> {
    purpose: &'static str,
    kind: MailKind,
    email: &'a Email,
    hash: [u8; 32],
    link: &'a str,
    ttl: i64,
    ret: Option<&'a Return>,
    binding: Option<[u8; 32]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_appended_and_encoded() {
        assert_eq!(with_query("https://a.test/cb", &[("code", "x y")]), "https://a.test/cb?code=x+y");
        assert_eq!(with_query("https://a.test/cb?k=1", &[("state", "&")]), "https://a.test/cb?k=1&state=%26");
    }
}
