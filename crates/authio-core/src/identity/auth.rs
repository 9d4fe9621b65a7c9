//! The identity flows: sign-up, password sign-in, refresh, client credentials, introspection,
//! revocation and management-token checks. Owns the caches of project profiles; keys are in
//! [`KeyService`], passwords in [`Passwords`].
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration as StdDuration;

use authio_db::preresolve::{self, ApiKeyRecord, M2mClientRecord, ProjectProfile};
use authio_db::{CacheEvent, Router, Scope, TenantKind, Type};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::cache::NodeCache;
use crate::crypto::keys::{KeyService, KeySet};
use crate::crypto::tokens::{self, AccessClaims};
use crate::identity::m2m;
use crate::identity::passwords::{NewPassword, Passwords};
use crate::identity::sessions::{self, NewSession, SessionPolicy};
use crate::identity::signin::Guesser;
use crate::identity::users::User;
use crate::project::api_keys;
use crate::throttle::{ip_key, retry_after, Limits};
use crate::types::ClientInfo;
use crate::types::Email;
use crate::{audit, Clock, CoreError};

#[derive(Clone)]
pub struct IdentitySettings {
    /// Issuers are `{public_url}/p/{project_id}`.
    pub public_url: String,
    pub limits: Limits,
    /// How long a node trusts its copy of a project's profile or of an M2M client (changes
    /// are also NOTIFYed, so this bounds staleness only if a notification is lost).
    pub profile_ttl: StdDuration,
    /// Keep M2M client and API-key records in the node (invalidated by NOTIFY). Off: one
    /// database lookup per request that presents one.
    pub credential_cache: bool,
    /// Lifetimes and attempts of one-time tokens.
    pub one_time: crate::identity::signin::OneTimeSettings,
    /// Let upstream providers be reached over plain http (development and tests only).
    pub allow_http_upstreams: bool,
}

/// A password that checked out, and what the sign-in needs next.
struct PasswordChecked {
    profile: Arc<ProjectProfile>,
    scope: Scope,
    user_id: Uuid,
    role: Option<String>,
    /// A new hash when the stored one used old parameters.
    rehash: Option<String>,
    /// The account's throttle key (reset on success).
    account: String,
    email: Email,
    now: DateTime<Utc>,
    /// The user has a second factor or an organization that requires one (the project's own
    /// policy is read from its presentation).
    mfa: bool,
}

/// What a first factor that checked out leads to: a session, or a second factor first.
#[derive(Debug)]
pub enum SignIn {
    Tokens(UserTokens),
    Mfa(crate::identity::mfa::PendingMfa),
}

/// Tokens handed to a signed-in user.
#[derive(Debug, Serialize)]
pub struct UserTokens {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub refresh_token: String,
    pub session_id: Uuid,
    pub user_id: Uuid,
    /// The scope granted to an OpenID client's session (none otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// A client-credentials grant.
#[derive(Debug, Serialize)]
pub struct ClientToken {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub scope: String,
}

/// The organization a session acts for, and the member's role and permissions there now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgContext {
    pub id: Uuid,
    pub role: String,
    pub permissions: Vec<String>,
}

/// An impersonation session: who acts as the user, and when it ends (unix seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Impersonated {
    pub impersonator: String,
    pub ends_at: i64,
}

/// A refresh token's rotation, as asked.
#[derive(Clone, Copy, Debug, Default)]
pub struct RefreshRequest<'a> {
    pub presented: &'a str,
    /// The OpenID client the token was issued to (`None`: the sign-in API's and hosted
    /// sign-ins' tokens, which belong to no client).
    pub oidc_client: Option<&'a str>,
    /// RFC 8707: the new access token's resource (the caller checked the client may name it).
    pub resource: Option<&'a str>,
    /// Switch the session to this organization of its user (an active member only).
    pub organization: Option<Uuid>,
    /// The client is third-party: its tokens are for the resource the user consented to, and
    /// a refresh may not name another (nor one where the grant named none).
    pub consented_resource_only: bool,
}

/// What an OpenID client's access token carries beyond the user's: the client, the scope it
/// was granted, and the resource server it is for (RFC 8707; `None`: the project, the default
/// audience of every access token).
#[derive(Clone, Copy, Debug)]
pub struct ClientGrant<'a> {
    pub client_id: &'a str,
    pub scope: &'a str,
    pub resource: Option<&'a str>,
}

/// An RFC 7662 answer.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Introspection {
    pub active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
    /// RFC 8693 4.1: an impersonated token's acting party.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub act: Option<crate::crypto::tokens::ActClaim>,
}

/// Who may introspect or revoke: a project's client or API key.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub project_id: Uuid,
}

#[derive(Clone)]
pub struct Identity {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) router: Router,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) passwords: Passwords,
    pub(crate) keys: KeyService,
    pub(crate) settings: IdentitySettings,
    /// Seals outbox mail, upstream secrets and PKCE verifiers; keys the email-code MACs.
    pub(crate) master_key: authio_db::MasterKey,
    /// Calls upstream providers (no redirects followed, bounded time).
    pub(crate) http: reqwest::Client,
    /// Key sets fetched from upstream providers, per `jwks_uri`.
    pub(crate) upstream_keys: NodeCache<jsonwebtoken::jwk::JwkSet>,
    pub(crate) presentations: NodeCache<crate::identity::signin::Presentation>,
    profiles: NodeCache<ProjectProfile>,
    clients: NodeCache<M2mClientRecord>,
    api_keys: NodeCache<ApiKeyRecord>,
    /// Addresses over the failed-client-authentication limit, until their window ends: checked
    /// before any secret is judged, at no cost to the token endpoint's hot path.
    blocked_ips: RwLock<HashMap<String, DateTime<Utc>>>,
    /// Token issuance events, written to the home logs in batches.
    issued: Arc<crate::audit::issuance_log::IssuanceLog>,
}

pub(crate) fn policy(p: &ProjectProfile) -> SessionPolicy {
    SessionPolicy {
        idle: Duration::seconds(p.session_idle_timeout_secs.into()),
        absolute: Duration::seconds(p.session_absolute_timeout_secs.into()),
        grace: Duration::seconds(p.refresh_grace_secs.into()),
    }
}

pub(crate) fn scope_of(p: &ProjectProfile) -> Scope {
    Scope::project(p.tenant_id, p.project_id, p.tenant_kind)
}

impl Identity {
    pub fn new(
        router: Router,
        clock: Arc<dyn Clock>,
        passwords: Passwords,
        keys: KeyService,
        master_key: authio_db::MasterKey,
        settings: IdentitySettings,
    ) -> Result<Self, CoreError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(StdDuration::from_secs(10))
            .build()
            .map_err(|e| CoreError::Config(format!("http client: {e}")))?;
        let events = router.cache_events();
        let issued = Arc::new(crate::audit::issuance_log::IssuanceLog::default());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(crate::audit::issuance_log::flush_loop(Arc::downgrade(&issued), router.clone()));
        }
        let identity = Identity {
            inner: Arc::new(Inner {
                router,
                clock,
                passwords,
                keys,
                settings,
                master_key,
                http,
                upstream_keys: NodeCache::new(),
                presentations: NodeCache::new(),
                profiles: NodeCache::new(),
                clients: NodeCache::new(),
                api_keys: NodeCache::new(),
                blocked_ips: RwLock::new(HashMap::new()),
                issued,
            }),
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(follow_cache_events(Arc::downgrade(&identity.inner), events));
        }
        Ok(identity)
    }

    /// Drop what this node caches for a changed row (or everything).
    fn apply_cache_event(&self, event: &CacheEvent) {
        match event {
            CacheEvent::Reset => {
                self.inner.clients.forget(None);
                self.inner.api_keys.forget(None);
                self.inner.profiles.forget(None);
                self.inner.presentations.forget(None);
                self.inner.keys.invalidate_all();
            }
            CacheEvent::Changed { kind, key } => match kind.as_str() {
                "client" => self.inner.clients.forget(Some(key)),
                "apikey" => self.inner.api_keys.forget(Some(key)),
                "keys" => {
                    if let Ok(p) = Uuid::parse_str(key) {
                        self.inner.keys.invalidate(p);
                    }
                }
                "project" => {
                    if let Ok(p) = Uuid::parse_str(key) {
                        self.forget_profile(p);
                    }
                }
                _ => {}
            },
        }
    }

    /// Authenticate an M2M client by id and secret: the record from this node's cache or
    /// from the shared database. Failures are counted against the caller's address (on the
    /// shared database, so across nodes); an address over the limit is refused before its
    /// secret is judged, right or wrong, until the window ends.
    pub async fn authenticate_client(
        &self,
        client_id: &str,
        secret: &str,
        ip: Option<IpAddr>,
    ) -> Result<Arc<M2mClientRecord>, CoreError> {
        let now = self.now();
        let key = ip.map(ip_key);
        self.refuse_if_blocked(key.as_deref(), now)?;
        let record = self.client_record(client_id).await?;
        if m2m::check_secret(record.as_deref(), secret).is_ok() {
            if let Some(r) = record {
                return Ok(r);
            }
        }
        self.count_credential_failure("client:ip", key, now).await?;
        Err(CoreError::InvalidClient)
    }

    /// An address over the failed-credential limit is refused until its window ends, before
    /// any secret it sends is judged.
    pub(crate) fn refuse_if_blocked(&self, key: Option<&str>, now: DateTime<Utc>) -> Result<(), CoreError> {
        if let Some(k) = key {
            let blocked = self.inner.blocked_ips.read().ok().and_then(|b| b.get(k).copied());
            if let Some(until) = blocked.filter(|u| *u > now) {
                return Err(CoreError::RateLimited { retry_after: retry_after(until, now) });
            }
        }
        Ok(())
    }

    /// Count a failed client or API-key authentication against the address (on the shared
    /// database, so across nodes); past the limit the address is blocked on this node for the
    /// rest of the window and the caller is told to wait.
    pub(crate) async fn count_credential_failure(
        &self,
        bucket: &str,
        key: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(), CoreError> {
        let Some(k) = key else { return Ok(()) };
        let l = &self.inner.settings.limits;
        let w = preresolve::rate_hit(&self.inner.router, bucket, &k, l.client_ip_window_secs, now).await?;
        if w.hits > l.client_failures_per_ip {
            if let Ok(mut b) = self.inner.blocked_ips.write() {
                b.retain(|_, until| *until > now);
                b.insert(k, w.window_ends);
            }
            return Err(CoreError::RateLimited { retry_after: retry_after(w.window_ends, now) });
        }
        Ok(())
    }

    async fn client_record(&self, client_id: &str) -> Result<Option<Arc<M2mClientRecord>>, CoreError> {
        let cache = self.inner.settings.credential_cache;
        if cache {
            if let Some(r) = self.inner.clients.get(client_id, self.inner.settings.profile_ttl) {
                return Ok(Some(r));
            }
        }
        let generation = self.inner.clients.generation();
        let Some(record) = m2m::lookup(&self.inner.router, client_id).await?.map(Arc::new) else {
            return Ok(None);
        };
        if cache {
            self.inner.clients.put(client_id, record.clone(), generation);
        }
        Ok(Some(record))
    }

    /// Forget a credential on this node at once (after revoking it here; other nodes hear of
    /// it by NOTIFY).
    pub fn forget_credential(&self, kind: &str, public_id: &str) {
        self.apply_cache_event(&CacheEvent::Changed { kind: kind.to_owned(), key: public_id.to_owned() });
    }

    /// Resolve a project secret API key to its scope: the record from this node's cache
    /// (NOTIFY-invalidated, so a revocation is seen at once) or from the shared database.
    /// Failures are counted against `ip` like client failures (see
    /// [`Identity::authenticate_client`]).
    pub async fn authenticate_api_key(&self, presented: &str, ip: Option<IpAddr>) -> Result<Scope, CoreError> {
        let now = self.now();
        let key = ip.map(ip_key);
        self.refuse_if_blocked(key.as_deref(), now)?;
        let result = self.check_api_key(presented).await;
        if matches!(result, Err(CoreError::InvalidApiKey)) {
            self.count_credential_failure("apikey:ip", key, now).await?;
        }
        result
    }

    async fn check_api_key(&self, presented: &str) -> Result<Scope, CoreError> {
        let (key_id, secret) = api_keys::parse(presented).ok_or(CoreError::InvalidApiKey)?;
        let cache = self.inner.settings.credential_cache;
        let cached = if cache { self.inner.api_keys.get(key_id, self.inner.settings.profile_ttl) } else { None };
        let record = match cached {
            Some(r) => Some(r),
            None => {
                let generation = self.inner.api_keys.generation();
                let found = preresolve::resolve_api_key(&self.inner.router, key_id).await?.map(Arc::new);
                if let (true, Some(r)) = (cache, &found) {
                    self.inner.api_keys.put(key_id, r.clone(), generation);
                }
                found
            }
        };
        api_keys::check_secret(record.as_deref(), secret)
    }

    /// The deployment's master key: what seals secrets that must be used again (webhook
    /// signing secrets, upstream client secrets).
    pub fn master_key(&self) -> &authio_db::MasterKey {
        &self.inner.master_key
    }

    pub fn keys(&self) -> &KeyService {
        &self.inner.keys
    }

    pub fn issuer(&self, project: Uuid) -> String {
        tokens::issuer(&self.inner.settings.public_url, project)
    }

    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    /// A project's tenant and settings (cached per node for `profile_ttl`, dropped on NOTIFY).
    pub async fn profile(&self, project: Uuid) -> Result<Arc<ProjectProfile>, CoreError> {
        let key = project.to_string();
        if let Some(p) = self.inner.profiles.get(&key, self.inner.settings.profile_ttl) {
            return Ok(p);
        }
        let generation = self.inner.profiles.generation();
        let p = Arc::new(
            preresolve::project_profile(&self.inner.router, project)
                .await?
                .ok_or(CoreError::NotFound(crate::types::Entity::Project))?,
        );
        self.inner.profiles.put(&key, p.clone(), generation);
        Ok(p)
    }

    /// Forget a project's cached profile on this node (after changing its settings here).
    pub fn forget_profile(&self, project: Uuid) {
        self.inner.profiles.forget(Some(&project.to_string()));
        self.inner.presentations.forget(Some(&project.to_string()));
    }

    /// Create a user with a password and sign them in.
    #[tracing::instrument(level = "debug", name = "identity::sign_up", skip_all, fields(project = %project))]
    pub async fn sign_up(
        &self,
        project: Uuid,
        email: &str,
        password: &str,
        client: &ClientInfo,
        ip: Option<IpAddr>,
    ) -> Result<(User, SignIn), CoreError> {
        let email = Email::parse(email)?;
        let password = NewPassword::parse(password)?;
        let profile = self.profile(project).await?;
        if profile.tenant_kind == TenantKind::Platform {
            // Platform identities are operators and dashboard users: created by operators,
            // never by whoever finds the sign-up endpoint.
            return Err(CoreError::Forbidden("sign-up is closed on the platform tenant"));
        }
        let presentation = self.presentation(project).await?;
        presentation.require("password")?;
        presentation.admit_signup(&email)?;
        let l = &self.inner.settings.limits;
        if let Some(ip) = ip {
            self.limit("signup:ip", &ip_key(ip), l.signup_per_ip, l.signup_ip_window_secs).await?;
        }
        let hash = self.inner.passwords.hash(&password).await?;
        // Keys first: nothing is written unless a token can be signed for it.
        let keys = self.inner.keys.keyset(&profile).await?;
        let scope = scope_of(&profile);
        let now = self.now();
        let tx = self.inner.router.begin(&scope).await?;
        let user = crate::identity::users::insert(&tx, &scope, &email, Some(&hash), now).await?;
        if presentation.mfa_required {
            // The project requires a second factor: the account is made, and its first session
            // waits until one is enrolled.
            let event = audit::Event {
                action: crate::audit::AuditAction::UserSignedUp,
                actor: audit::Actor::user(user.id, Some(email.as_str())),
                target: Some(("user", user.id.to_string())),
                client,
                metadata: serde_json::json!({"method": "password", "mfa": "enrol"}),
            };
            audit::record_and_commit(tx, &scope, event, now).await?;
            let signed = crate::identity::signin::SignedInUser { user_id: user.id, role: None, created: true };
            let pending = self
                .begin_mfa(&scope, &signed, &["pwd"], None)
                .await?
                .ok_or_else(|| CoreError::Internal("a required second factor asked for nothing".into()))?;
            return Ok((user, SignIn::Mfa(pending)));
        }
        let session = NewSession::new(&scope, user.id, &["pwd"], client, &policy(&profile), now)?;
        session.write_in(&tx).await?;
        let event = audit::Event {
            action: crate::audit::AuditAction::UserSignedUp,
            actor: audit::Actor::user(user.id, Some(email.as_str())),
            target: Some(("user", user.id.to_string())),
            client,
            metadata: serde_json::json!({"session_id": session.id, "amr": ["pwd"]}),
        };
        let tokens = self.user_tokens(
            &keys,
            &profile,
            user.id,
            session.id,
            &["pwd".to_owned()],
            None,
            session.refresh_token,
            None,
            None,
            None,
        )?;
        audit::record_and_commit(tx, &scope, event, now).await?;
        Ok((user, SignIn::Tokens(tokens)))
    }

    /// Create a user with a password and no session: how platform identities (operators,
    /// dashboard users) are made, by operators (`authio dev`, the console).
    #[tracing::instrument(level = "debug", name = "identity::create_user_with_password", skip_all, fields(project = %project))]
    pub async fn create_user_with_password(
        &self,
        project: Uuid,
        email: &str,
        password: &str,
    ) -> Result<User, CoreError> {
        let email = Email::parse(email)?;
        let password = NewPassword::parse(password)?;
        let profile = self.profile(project).await?;
        let hash = self.inner.passwords.hash(&password).await?;
        let scope = scope_of(&profile);
        let tx = self.inner.router.begin(&scope).await?;
        let user = crate::identity::users::insert(&tx, &scope, &email, Some(&hash), self.now()).await?;
        tx.commit().await?;
        Ok(user)
    }

    /// Password sign-in. Unknown accounts, accounts without a password, disabled accounts and
    /// wrong passwords all answer `InvalidCredentials` after the same hashing work; locked
    /// accounts (known or not) answer `RateLimited`.
    #[tracing::instrument(level = "debug", name = "identity::sign_in", skip_all, fields(project = %project))]
    pub async fn sign_in(
        &self,
        project: Uuid,
        email: &str,
        password: &str,
        client: &ClientInfo,
        ip: Option<IpAddr>,
    ) -> Result<SignIn, CoreError> {
        let checked = self.check_password(project, email, password, client, ip).await?;
        if checked.mfa || self.presentation(project).await?.mfa_required {
            // A second factor first: the password is done with (its count reset, a new hash
            // kept), and the sign-in waits.
            preresolve::rate_reset(&self.inner.router, "signin:account", &checked.account).await?;
            self.keep_rehash(&checked).await?;
            let user = crate::identity::signin::SignedInUser {
                user_id: checked.user_id,
                role: checked.role.clone(),
                created: false,
            };
            if let Some(p) = self.begin_mfa(&checked.scope, &user, &["pwd"], None).await? {
                return Ok(SignIn::Mfa(p));
            }
        }
        let PasswordChecked { profile, scope, user_id, role, rehash, account, email, now, .. } = checked;
        // Keys first: no session is written unless a token can be signed for it.
        let keys = self.inner.keys.keyset(&profile).await?;
        let reset = preresolve::rate_reset(&self.inner.router, "signin:account", &account);
        let session = NewSession::new(&scope, user_id, &["pwd"], client, &policy(&profile), now)?;
        let event = audit::EventRow::new(
            &scope,
            audit::Event {
                action: crate::audit::AuditAction::UserSignedIn,
                actor: audit::Actor::user(user_id, Some(email.as_str())),
                target: Some(("user", user_id.to_string())),
                client,
                metadata: serde_json::json!({"session_id": session.id, "amr": ["pwd"], "rehashed": rehash.is_some()}),
            },
            now,
        )?;
        match &rehash {
            // The common case: the session and its event, in one pipelined round trip (beside
            // the reset of the account's count, on the shared database).
            None => {
                let (session_params, event_params) = (session.params(), event.params());
                let statements = [(sessions::START_SQL, &session_params[..]), (audit::INSERT_SQL, &event_params[..])];
                let write = self.inner.router.write(&scope, &statements);
                let (written, reset) = futures_util::join!(write, reset);
                reset?;
                written?;
            }
            Some(h) => {
                reset.await?;
                let tx = self.inner.router.begin(&scope).await?;
                tx.query(
                    "UPDATE users SET password_hash = $2, updated_at = $3 WHERE id = $1",
                    &[(&user_id, Type::UUID), (h, Type::TEXT), (&now, Type::TIMESTAMPTZ)],
                )
                .await?;
                session.write_in(&tx).await?;
                tx.query(audit::INSERT_SQL, &event.params()).await?;
                tx.commit().await?;
            }
        }
        self.user_tokens(
            &keys,
            &profile,
            user_id,
            session.id,
            &["pwd".to_owned()],
            role,
            session.refresh_token,
            None,
            None,
            None,
        )
        .map(SignIn::Tokens)
    }

    async fn keep_rehash(&self, c: &PasswordChecked) -> Result<(), CoreError> {
        if let Some(h) = &c.rehash {
            self.inner
                .router
                .write(
                    &c.scope,
                    &[(
                        "UPDATE users SET password_hash = $2, updated_at = $3 WHERE id = $1",
                        &[(&c.user_id, Type::UUID), (h, Type::TEXT), (&c.now, Type::TIMESTAMPTZ)],
                    )],
                )
                .await?;
        }
        Ok(())
    }

    /// A password sign-in that hands over a user rather than a session (the hosted pages:
    /// the session starts when the app exchanges its sign-in code).
    #[tracing::instrument(level = "debug", name = "identity::password_user", skip_all, fields(project = %project))]
    pub async fn password_user(
        &self,
        project: Uuid,
        email: &str,
        password: &str,
        client: &ClientInfo,
        ip: Option<IpAddr>,
    ) -> Result<(Scope, crate::identity::signin::SignedInUser), CoreError> {
        let c = self.check_password(project, email, password, client, ip).await?;
        preresolve::rate_reset(&self.inner.router, "signin:account", &c.account).await?;
        self.keep_rehash(&c).await?;
        Ok((c.scope, crate::identity::signin::SignedInUser { user_id: c.user_id, role: c.role, created: false }))
    }

    /// Check an email and password, with the throttles and the failure's audit event; writes
    /// nothing on success (the caller starts the session and resets the account's count).
    async fn check_password(
        &self,
        project: Uuid,
        email: &str,
        password: &str,
        client: &ClientInfo,
        ip: Option<IpAddr>,
    ) -> Result<PasswordChecked, CoreError> {
        let email = Email::parse(email)?;
        if password.len() > 4096 {
            return Err(CoreError::InvalidCredentials);
        }
        // The project's methods hold on every path (the JSON API and the hosted pages alike).
        self.presentation(project).await?.require("password")?;
        let profile = self.profile(project).await?;
        let l = &self.inner.settings.limits;
        let account = format!("{project}:{:x}", Sha256::digest(email.as_str().as_bytes()));
        let now = self.now();
        // Every attempt is counted before the password is checked, against the IP and against
        // the account (known or not), in one round trip: guesses in flight count too. A
        // success resets the account's count, so the account limit is one of failures.
        let (ip_hits, account_hits) = match ip {
            Some(ip) => {
                let (a, b) = preresolve::rate_hit_both(
                    &self.inner.router,
                    ("signin:ip", &ip_key(ip), l.signin_ip_window_secs),
                    ("signin:account", &account, l.account_window_secs),
                    now,
                )
                .await?;
                (Some(a), b)
            }
            None => (
                None,
                preresolve::rate_hit(&self.inner.router, "signin:account", &account, l.account_window_secs, now)
                    .await?,
            ),
        };
        if let Some(w) = ip_hits.filter(|w| w.hits > l.signin_per_ip) {
            return Err(CoreError::RateLimited { retry_after: retry_after(w.window_ends, now) });
        }
        if account_hits.hits > l.account_failures {
            return Err(CoreError::RateLimited { retry_after: retry_after(account_hits.window_ends, now) });
        }
        let scope = scope_of(&profile);
        // Always one row, with the home fence in it: an unknown account costs the same round
        // trips as a known one. (With it, whether the account must use single sign-on.)
        let sso_sql = crate::identity::sso_policy::sso_required_sql("u.id", "$4", "NULL");
        let domain = crate::identity::sso_policy::domain_of(email.as_str());
        let rows = self
            .inner
            .router
            .read(
                &scope,
                &format!(
                    "SELECT u.id, u.password_hash, u.disabled, u.role, f.home, {sso_sql} AS sso,
                            (u.id IS NOT NULL AND (
                                EXISTS (SELECT 1 FROM mfa_factors m WHERE m.user_id = u.id AND m.confirmed_at IS NOT NULL)
                                OR EXISTS (SELECT 1 FROM memberships ms
                                           JOIN organizations o ON o.tenant_id = ms.tenant_id AND o.id = ms.organization_id
                                           WHERE ms.user_id = u.id AND ms.status = 'active' AND o.mfa_required))) AS mfa
                     FROM (SELECT authio_tenant_at_home($1) AS home) f
                     LEFT JOIN users u ON u.tenant_id = $1 AND u.project_id = $2 AND u.email = $3"
                ),
                &[
                    (&scope.tenant_id, Type::UUID),
                    (&project, Type::UUID),
                    (&email.as_str(), Type::TEXT),
                    (&domain, Type::TEXT),
                ],
            )
            .await?;
        let row = rows.first().ok_or(CoreError::Internal("user lookup returned no row".into()))?;
        if row.try_get::<Option<bool>>(4)? != Some(true) {
            return Err(authio_db::RouterError::NotAtHome(scope.tenant_id).into());
        }
        let user_id: Option<Uuid> = row.try_get(0)?;
        let stored: Option<String> = row.try_get(1)?;
        let disabled = row.try_get::<Option<bool>>(2)?.unwrap_or(false);
        let role: Option<String> = row.try_get(3)?;
        let sso: bool = row.try_get(5)?;
        let mfa: bool = row.try_get(6)?;
        let usable = if disabled { None } else { stored.as_deref() };
        let verified = self.inner.passwords.verify(password, usable).await?;
        let (Some(user_id), true) = (user_id, verified.ok) else {
            // The failure is itself the act: recorded alone, the same for known and unknown
            // accounts (the target is the email tried).
            let event = audit::Event {
                action: crate::audit::AuditAction::UserSignInFailed,
                actor: audit::Actor::anonymous(),
                target: Some(("email", email.as_str().to_owned())),
                client,
                metadata: serde_json::json!({"reason": "invalid_credentials"}),
            };
            audit::record(&self.inner.router, &scope, event, now).await?;
            return Err(CoreError::InvalidCredentials);
        };
        // The password is right, but the account's organization has its people sign in through
        // its own identity provider. Checked only now, so the answer tells nothing to someone
        // without the password.
        if sso {
            let event = audit::Event {
                action: crate::audit::AuditAction::UserSignInFailed,
                actor: audit::Actor::user(user_id, Some(email.as_str())),
                // (The email, as for every failed sign-in: the event stream's
                // `authentication.failed` carries it.)
                target: Some(("email", email.as_str().to_owned())),
                client,
                metadata: serde_json::json!({"reason": "sso_required", "method": "password"}),
            };
            audit::record(&self.inner.router, &scope, event, now).await?;
            return Err(CoreError::SsoRequired);
        }
        let rehash = if verified.needs_rehash {
            // The password just verified, so it met the rules when it was set; re-check only length.
            match NewPassword::parse(password) {
                Ok(p) => Some(self.inner.passwords.hash(&p).await?),
                Err(_) => None,
            }
        } else {
            None
        };
        Ok(PasswordChecked { profile, scope, user_id, role, rehash, account, email, now, mfa })
    }

    /// Rotate a refresh token (`grant_type=refresh_token`).
    /// Failures count against the caller's address like other one-time secrets.
    // The tenant and project are known only once the presented token or code is resolved.
    #[tracing::instrument(level = "debug", name = "identity::refresh", skip_all)]
    pub async fn refresh(
        &self,
        presented: &str,
        client: &ClientInfo,
        ip: Option<IpAddr>,
    ) -> Result<UserTokens, CoreError> {
        self.refresh_for(RefreshRequest { presented, ..RefreshRequest::default() }, client, &Guesser::Address(ip)).await
    }

    /// Rotate a refresh token for the OpenID client it was issued to (`None`: tokens of the
    /// sign-in API and hosted sign-ins, which belong to no client), the new access token for
    /// `resource` if given (the caller checked the client may name it), the session switched
    /// to `organization` if given. Failures count against `who`: the address, or the
    /// confidential client that authenticated.
    pub async fn refresh_for(
        &self,
        req: RefreshRequest<'_>,
        client: &ClientInfo,
        who: &Guesser,
    ) -> Result<UserTokens, CoreError> {
        self.refuse_guesser_as(who).await?;
        let result = self.refresh_unjudged(req, client).await;
        self.judge_as(who, result).await
    }

    async fn refresh_unjudged(&self, req: RefreshRequest<'_>, client: &ClientInfo) -> Result<UserTokens, CoreError> {
        let RefreshRequest { presented, oidc_client, resource, organization, consented_resource_only } = req;
        let (project, hash) =
            sessions::parse_refresh_token(presented).ok_or(CoreError::InvalidGrant("the refresh token is invalid"))?;
        let profile = match self.profile(project).await {
            Ok(p) => p,
            Err(CoreError::NotFound(_)) => return Err(CoreError::InvalidGrant("the refresh token is invalid")),
            Err(e) => return Err(e),
        };
        // Keys first: a refresh token is not rotated unless the new access token can be signed.
        let keys = self.inner.keys.keyset(&profile).await?;
        let presentation = self.presentation(project).await?;
        let r = sessions::refresh(
            &self.inner.router,
            self.inner.clock.as_ref(),
            &scope_of(&profile),
            &policy(&profile),
            &hash,
            client,
            sessions::RefreshHolds {
                expected_client: oidc_client,
                offers: &|method| presentation.offers(method),
                organization,
                resource,
                project_requires_mfa: presentation.mfa_required,
                consented_resource_only,
            },
        )
        .await?;
        let oidc = r.client_id.as_deref().map(|c| ClientGrant {
            client_id: c,
            scope: r.scope.as_deref().unwrap_or(""),
            resource: r.resource.as_deref(),
        });
        self.user_tokens(
            &keys,
            &profile,
            r.user_id,
            r.session_id,
            &r.amr,
            r.role,
            r.refresh_token,
            oidc,
            r.org.as_ref(),
            r.impersonated.as_ref(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn user_tokens(
        &self,
        keys: &KeySet,
        profile: &ProjectProfile,
        user: Uuid,
        sid: Uuid,
        amr: &[String],
        role: Option<String>,
        refresh_token: String,
        oidc: Option<ClientGrant<'_>>,
        org: Option<&OrgContext>,
        act: Option<&Impersonated>,
    ) -> Result<UserTokens, CoreError> {
        let now = self.now().timestamp();
        // An impersonation's tokens never outlive it.
        let ttl = match act {
            Some(a) => i64::from(profile.access_token_ttl_secs).min((a.ends_at - now).max(1)),
            None => i64::from(profile.access_token_ttl_secs),
        };
        let iss = self.issuer(profile.project_id);
        let claims = AccessClaims {
            aud: oidc.and_then(|g| g.resource).map_or_else(|| profile.project_id.to_string(), str::to_owned),
            iss,
            sub: user.to_string(),
            exp: now + ttl,
            iat: now,
            nbf: now,
            jti: Uuid::new_v4().to_string(),
            sid: Some(sid.to_string()),
            tid: profile.tenant_id.to_string(),
            pid: profile.project_id.to_string(),
            amr: Some(amr.to_vec()),
            acr: Some(crate::identity::mfa::acr_of(amr).to_owned()),
            // In an organization, the member's role there stands for the user's own.
            role: org.map(|o| o.role.clone()).or(role),
            // An OpenID client's session: its id and granted scope (RFC 9068).
            scope: oidc.map(|g| g.scope.to_owned()),
            client_id: oidc.map(|g| g.client_id.to_owned()),
            org_id: org.map(|o| o.id.to_string()),
            permissions: org.map(|o| o.permissions.clone()),
            act: act.map(|a| crate::crypto::tokens::ActClaim { sub: a.impersonator.clone() }),
        };
        Ok(UserTokens {
            scope: claims.scope.clone(),
            access_token: keys.sign(&claims)?,
            token_type: "Bearer",
            expires_in: ttl,
            refresh_token,
            session_id: sid,
            user_id: user,
        })
    }

    /// RFC 6749 section 4.4. `requested` is the space-separated `scope` parameter.
    // The tenant and project are known only once the presented token or code is resolved.
    #[tracing::instrument(level = "debug", name = "identity::client_credentials", skip_all)]
    pub async fn client_credentials(
        &self,
        client_id: &str,
        secret: &str,
        requested: Option<&str>,
        resource: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<ClientToken, CoreError> {
        let client = self.authenticate_client(client_id, secret, ip).await?;
        // RFC 8707 2: an absolute URI without a fragment, and (here) the client's audience:
        // the token is for that resource server and no other.
        if let Some(r) = resource {
            if !crate::types::resource_indicator_ok(r) {
                return Err(CoreError::InvalidTarget("resource must be an absolute URI without a fragment"));
            }
            if r != client.audience {
                return Err(CoreError::InvalidTarget("this client may not ask for tokens for that resource"));
            }
        }
        let granted: Vec<&str> = match requested.map(str::trim).filter(|s| !s.is_empty()) {
            None => client.scopes.iter().map(String::as_str).collect(),
            Some(req) => {
                let mut out: Vec<&str> = Vec::new();
                for s in req.split(' ').filter(|s| !s.is_empty()) {
                    if !client.scopes.iter().any(|a| a == s) {
                        return Err(CoreError::InvalidScope);
                    }
                    if !out.contains(&s) {
                        out.push(s);
                    }
                }
                out
            }
        };
        let profile = self.profile(client.project_id).await?;
        let now = self.now().timestamp();
        let ttl = i64::from(client.token_ttl_secs);
        let scope = granted.join(" ");
        let claims = AccessClaims {
            iss: self.issuer(client.project_id),
            sub: client_id.to_owned(),
            aud: client.audience.clone(),
            exp: now + ttl,
            iat: now,
            nbf: now,
            jti: Uuid::new_v4().to_string(),
            sid: None,
            tid: client.tenant_id.to_string(),
            pid: client.project_id.to_string(),
            amr: None,
            acr: None,
            role: None,
            scope: Some(scope.clone()),
            client_id: Some(client_id.to_owned()),
            org_id: None,
            permissions: None,
            act: None,
        };
        let keys = self.inner.keys.keyset(&profile).await?;
        let access_token = keys.sign(&claims)?;
        let audit_scope = Scope::project(client.tenant_id, client.project_id, client.tenant_kind);
        let issued = crate::audit::issuance_log::Issued {
            client_id: client_id.to_owned(),
            jti: claims.jti.clone(),
            scope: scope.clone(),
            aud: claims.aud.clone(),
            ip: ip.map(|a| a.to_string()),
            at: self.now(),
        };
        self.inner.issued.record(&audit_scope, issued)?;
        Ok(ClientToken { access_token, token_type: "Bearer", expires_in: ttl, scope })
    }

    /// Write the token issuance events this node gathered (they are also written every
    /// [`crate::audit::issuance_log::FLUSH_EVERY`]); call before shutting down. Returns the events written.
    pub async fn flush_issuance_events(&self) -> usize {
        self.inner.issued.flush(&self.inner.router).await
    }

    /// Verify an access token of any project of this deployment: returns its claims and
    /// its project's profile. Revocation is not checked here (see [`Identity::access_token_live`]).
    pub async fn verify_access_token(&self, token: &str) -> Result<(AccessClaims, Arc<ProjectProfile>), CoreError> {
        let iss = tokens::unverified_issuer(token).ok_or(CoreError::InvalidToken("malformed"))?;
        let project = tokens::project_of_issuer(&self.inner.settings.public_url, &iss)
            .ok_or(CoreError::InvalidToken("unknown issuer"))?;
        let profile = match self.profile(project).await {
            Ok(p) => p,
            Err(CoreError::NotFound(_)) => return Err(CoreError::InvalidToken("unknown issuer")),
            Err(e) => return Err(e),
        };
        let keys = self.inner.keys.keyset(&profile).await?;
        let claims = tokens::verify(&keys, token, &iss, self.now())?;
        // The token's own tenant and project claims must be the issuer's.
        if claims.pid != profile.project_id.to_string() || claims.tid != profile.tenant_id.to_string() {
            return Err(CoreError::InvalidToken("claims do not match the issuer"));
        }
        Ok((claims, profile))
    }

    /// Whether a verified access token is still live at its home (not revoked; its session,
    /// if any, not ended).
    pub async fn access_token_live(&self, claims: &AccessClaims, profile: &ProjectProfile) -> Result<bool, CoreError> {
        let jti = Uuid::parse_str(&claims.jti).map_err(|_| CoreError::InvalidToken("malformed jti"))?;
        let sid = claims.sid.as_deref().map(Uuid::parse_str).transpose().map_err(|_| CoreError::InvalidToken("sid"))?;
        sessions::access_token_live(&self.inner.router, self.inner.clock.as_ref(), &scope_of(profile), jti, sid).await
    }

    /// A platform-kind token for the management API: an operator of the platform tenant.
    /// Customer-kind tokens are refused, whatever they claim.
    pub async fn authenticate_operator(&self, token: &str) -> Result<AccessClaims, CoreError> {
        let (claims, profile) = self.verify_access_token(token).await?;
        if profile.tenant_kind != TenantKind::Platform {
            return Err(CoreError::TokenKindRefused);
        }
        if !self.access_token_live(&claims, &profile).await? {
            return Err(CoreError::InvalidToken("revoked"));
        }
        // An organization session's `role` is the member's role in that organization, never a
        // platform role (organizations are refused on the platform tenant; this is the second
        // line).
        // Nor does an impersonated token ever act as an operator (platform users cannot be
        // impersonated; this is the second line).
        if claims.role.as_deref() != Some("operator") || claims.org_id.is_some() || claims.act.is_some() {
            return Err(CoreError::Forbidden("this identity may not use the management API"));
        }
        Ok(claims)
    }

    /// RFC 7662. A token of another project, of the other kind, or not valid at all is
    /// simply inactive.
    // The tenant and project are known only once the presented token or code is resolved.
    #[tracing::instrument(level = "debug", name = "identity::introspect", skip_all)]
    pub async fn introspect(&self, caller: Caller, token: &str) -> Result<Introspection, CoreError> {
        let caller_profile = self.profile(caller.project_id).await?;
        if let Some((project, hash)) = sessions::parse_refresh_token(token) {
            if project != caller.project_id {
                return Ok(Introspection::default());
            }
            let scope = scope_of(&caller_profile);
            let state =
                sessions::refresh_token_state(&self.inner.router, self.inner.clock.as_ref(), &scope, &hash).await?;
            return Ok(match state {
                Some(s) if s.active => Introspection {
                    active: true,
                    // RFC 7662 2.2: `token_type` is an RFC 6749 5.1 access token type, which a
                    // refresh token has none of.
                    token_type: None,
                    sub: Some(s.user_id.to_string()),
                    sid: Some(s.session_id.to_string()),
                    iss: Some(self.issuer(project)),
                    iat: Some(s.issued_at.timestamp()),
                    exp: Some(s.expires_at.timestamp()),
                    tid: Some(caller_profile.tenant_id.to_string()),
                    pid: Some(project.to_string()),
                    ..Introspection::default()
                },
                _ => Introspection::default(),
            });
        }
        let (claims, profile) = match self.verify_access_token(token).await {
            Ok(v) => v,
            Err(CoreError::InvalidToken(_)) => return Ok(Introspection::default()),
            Err(e) => return Err(e),
        };
        if profile.project_id != caller.project_id || profile.tenant_kind != caller_profile.tenant_kind {
            return Ok(Introspection::default());
        }
        if !self.access_token_live(&claims, &profile).await? {
            return Ok(Introspection::default());
        }
        Ok(Introspection {
            active: true,
            token_type: Some("Bearer"),
            scope: claims.scope,
            client_id: claims.client_id,
            sub: Some(claims.sub),
            aud: Some(claims.aud),
            iss: Some(claims.iss),
            exp: Some(claims.exp),
            iat: Some(claims.iat),
            nbf: Some(claims.nbf),
            jti: Some(claims.jti),
            sid: claims.sid,
            tid: Some(claims.tid),
            pid: Some(claims.pid),
            act: claims.act,
        })
    }

    /// RFC 7009. A refresh token ends its session; an access token is recorded as revoked
    /// until it expires. Unknown, invalid and foreign tokens are ignored (the answer is the
    /// same). Without a caller, possession of the token is the authority (sign-out).
    // The tenant and project are known only once the presented token or code is resolved.
    #[tracing::instrument(level = "debug", name = "identity::revoke", skip_all)]
    pub async fn revoke(&self, caller: Option<Caller>, token: &str, client: &ClientInfo) -> Result<(), CoreError> {
        let same_project = |p: Uuid| caller.is_none_or(|c| c.project_id == p);
        if let Some((project, hash)) = sessions::parse_refresh_token(token) {
            if !same_project(project) {
                return Ok(());
            }
            let profile = match self.profile(project).await {
                Ok(p) => p,
                Err(CoreError::NotFound(_)) => return Ok(()),
                Err(e) => return Err(e),
            };
            return sessions::revoke_by_refresh_token(
                &self.inner.router,
                self.inner.clock.as_ref(),
                &scope_of(&profile),
                &hash,
                client,
            )
            .await;
        }
        let (claims, profile) = match self.verify_access_token(token).await {
            Ok(v) => v,
            Err(CoreError::InvalidToken(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if !same_project(profile.project_id) {
            return Ok(());
        }
        let jti = Uuid::parse_str(&claims.jti).map_err(|_| CoreError::InvalidToken("malformed jti"))?;
        let exp = DateTime::from_timestamp(claims.exp, 0).unwrap_or_else(|| self.now());
        sessions::revoke_access_token(
            &self.inner.router,
            self.inner.clock.as_ref(),
            &scope_of(&profile),
            jti,
            exp,
            client,
        )
        .await
    }

    /// The scope for a project named in a management request (after the caller is
    /// authorised for it).
    pub async fn project_scope(&self, project: Uuid) -> Result<Scope, CoreError> {
        Ok(scope_of(&*self.profile(project).await?))
    }
}

/// Apply the router's cache notifications to an identity service until it is dropped.
async fn follow_cache_events(inner: std::sync::Weak<Inner>, mut events: tokio::sync::broadcast::Receiver<CacheEvent>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(RecvError::Lagged(_)) => CacheEvent::Reset,
            Err(RecvError::Closed) => return,
        };
        let Some(inner) = inner.upgrade() else { return };
        Identity { inner }.apply_cache_event(&event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_counted_per_host_or_per_ipv6_64() {
        let k = |s: &str| ip_key(s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])));
        assert_eq!(k("203.0.113.7"), "203.0.113.7");
        assert_eq!(k("2001:db8:1:2:aaaa::1"), k("2001:db8:1:2:bbbb::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:203.0.113.7"), "203.0.113.7");
    }
}
