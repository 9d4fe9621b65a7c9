//! Sessions and refresh tokens, at the tenant's home.
//!
//! A refresh token is `rt_<project id>_<256-bit secret>` (the project names where to look; the
//! secret is stored only as a SHA-256 hash). Every use rotates it. A token used again after
//! its grace window is a theft signal: the whole session is revoked. Within the window (two
//! tabs refreshing at once) the second use gets a sibling token instead of a logout.
use authio_db::{Router, Row, RowExt, Scope, ScopedTx, Type};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::authz::{Authorized, Permission};
use crate::crypto::opaque;
use crate::types::{project_of, ClientInfo};
use crate::{audit, Clock, CoreError};

const PREFIX: &str = "rt_";

pub fn new_refresh_token(project: Uuid) -> (String, [u8; 32]) {
    let secret = opaque::random_secret();
    let hash = opaque::hash(&secret);
    (format!("{PREFIX}{}_{secret}", project.simple()), hash)
}

/// The project a refresh token belongs to and the hash to look it up by.
pub fn parse_refresh_token(presented: &str) -> Option<(Uuid, [u8; 32])> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (project, secret) = rest.split_once('_')?;
    if project.len() != 32 || secret.len() != 43 {
        return None;
    }
    let project = Uuid::try_parse(project).ok()?;
    Some((project, opaque::hash(secret)))
}

/// Timeouts of a project's sessions.
#[derive(Clone, Copy, Debug)]
pub struct SessionPolicy {
    pub idle: Duration,
    pub absolute: Duration,
    pub grace: Duration,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: Uuid,
    pub user_id: Uuid,
    pub amr: Vec<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_active_at: DateTime<Utc>,
    pub idle_expires_at: DateTime<Utc>,
    pub absolute_expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_reason: Option<String>,
    /// An impersonation session: who acts as the user (their tokens carry it as `act`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impersonator: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub impersonation_reason: Option<String>,
}

const SESSION_COLS: &str = "id, user_id, amr, ip, user_agent, created_at, last_active_at, idle_expires_at, \
     absolute_expires_at, revoked_at, revoked_reason, impersonator, impersonation_reason";

impl SessionInfo {
    /// A row of [`SESSION_COLS`].
    fn from_row(r: &Row) -> Result<Self, CoreError> {
        Ok(SessionInfo {
            id: r.col("id")?,
            user_id: r.col("user_id")?,
            amr: r.col("amr")?,
            ip: r.col("ip")?,
            user_agent: r.col("user_agent")?,
            created_at: r.col("created_at")?,
            last_active_at: r.col("last_active_at")?,
            idle_expires_at: r.col("idle_expires_at")?,
            absolute_expires_at: r.col("absolute_expires_at")?,
            revoked_at: r.col("revoked_at")?,
            revoked_reason: r.col("revoked_reason")?,
            impersonator: r.col("impersonator")?,
            impersonation_reason: r.col("impersonation_reason")?,
        })
    }
}

/// The session and its first refresh token in one statement (one round trip); the foreign key
/// is checked at the end of the statement, when both rows exist.
pub const START_SQL: &str = "WITH s AS (
        INSERT INTO sessions (tenant_id, project_id, id, user_id, amr, ip, user_agent, created_at, last_active_at,
                              idle_expires_at, absolute_expires_at, client_id, scope, resource, organization_id)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10, $12, $13, $14, $15))
    INSERT INTO refresh_tokens (tenant_id, project_id, token_hash, session_id, created_at)
    VALUES ($1, $2, $11, $3, $8)";

/// A new session, ready to write with [`START_SQL`]: its id, its first refresh token (shown
/// to the client once) and the statement's parameters.
pub struct NewSession {
    pub id: Uuid,
    pub refresh_token: String,
    tenant: Uuid,
    project: Uuid,
    user: Uuid,
    amr: Vec<String>,
    ip: Option<String>,
    user_agent: Option<String>,
    now: DateTime<Utc>,
    idle: DateTime<Utc>,
    absolute: DateTime<Utc>,
    hash: Vec<u8>,
    client_id: Option<String>,
    scope: Option<String>,
    resource: Option<String>,
    organization: Option<Uuid>,
}

impl NewSession {
    pub fn new(
        scope: &Scope,
        user: Uuid,
        amr: &[&str],
        client: &ClientInfo,
        policy: &SessionPolicy,
        now: DateTime<Utc>,
    ) -> Result<Self, CoreError> {
        let project = project_of(scope)?;
        let absolute = now + policy.absolute;
        let (refresh_token, hash) = new_refresh_token(project);
        Ok(NewSession {
            id: Uuid::now_v7(),
            refresh_token,
            tenant: scope.tenant_id,
            project,
            user,
            amr: amr.iter().map(|s| (*s).to_owned()).collect(),
            ip: client.ip.clone(),
            user_agent: client.user_agent.as_deref().map(|s| s.chars().take(512).collect()),
            now,
            idle: (now + policy.idle).min(absolute),
            absolute,
            hash: hash.to_vec(),
            client_id: None,
            scope: None,
            resource: None,
            organization: None,
        })
    }

    /// A session an OpenID client starts: its refresh tokens are that client's alone.
    pub fn for_client(mut self, client_id: &str, scope: &str, resource: Option<&str>) -> Self {
        self.client_id = Some(client_id.to_owned());
        self.scope = Some(scope.to_owned());
        self.resource = resource.map(str::to_owned);
        self
    }

    /// A session that acts for an organization of its user (the caller checked the membership).
    pub fn in_organization(mut self, organization: Option<Uuid>) -> Self {
        self.organization = organization;
        self
    }

    pub fn params(&self) -> [authio_db::Param<'_>; 15] {
        [
            (&self.tenant, Type::UUID),
            (&self.project, Type::UUID),
            (&self.id, Type::UUID),
            (&self.user, Type::UUID),
            (&self.amr, Type::TEXT_ARRAY),
            (&self.ip, Type::TEXT),
            (&self.user_agent, Type::TEXT),
            (&self.now, Type::TIMESTAMPTZ),
            (&self.idle, Type::TIMESTAMPTZ),
            (&self.absolute, Type::TIMESTAMPTZ),
            (&self.hash, Type::BYTEA),
            (&self.client_id, Type::TEXT),
            (&self.scope, Type::TEXT),
            (&self.resource, Type::TEXT),
            (&self.organization, Type::UUID),
        ]
    }

    /// Write it inside the caller's transaction.
    pub async fn write_in(&self, tx: &ScopedTx) -> Result<(), CoreError> {
        tx.query(START_SQL, &self.params()).await?;
        Ok(())
    }
}

/// The project methods each authentication-method reference can come from: a session may be
/// refreshed while one of them is still offered. References that name no sign-in method (a
/// second factor, say) do not decide.
/// (`saml`: an organization's SAML identity provider, one of the project's upstream providers.)
const AMR_METHODS: [(&str, &[&str]); 7] = [
    ("pwd", &["password"]),
    ("otp", &["magic_link", "email_code"]),
    ("email", &["magic_link"]),
    ("oauth", &["oauth"]),
    ("saml", &["oauth"]),
    // A WebAuthn key: a passkey sign-in, or a second factor after another method (which then
    // decides by itself).
    ("hwk", &["passkey"]),
    ("swk", &["passkey"]),
];

pub(crate) fn amr_still_offered(amr: &[String], offers: &(dyn Fn(&str) -> bool + Sync)) -> bool {
    // The first value is the sign-in's first factor, and it alone decides: what a second factor
    // added (`otp` for a TOTP code, `hwk`/`swk` for a key) keeps no session alive whose way in
    // was turned off. A value of no sign-in method (an impersonation's) decides nothing.
    match amr.first().and_then(|a| AMR_METHODS.iter().find(|(r, _)| *r == a.as_str())) {
        Some((_, methods)) => methods.iter().any(|m| offers(m)),
        None => true,
    }
}

/// What a refresh must still hold: the OpenID client the token was issued to (`None`: tokens
/// of no client), and the project's methods, one of which the session must have come by.
pub struct RefreshHolds<'a> {
    pub expected_client: Option<&'a str>,
    pub offers: &'a (dyn Fn(&str) -> bool + Sync),
    /// Switch the session to this organization (an active membership only).
    pub organization: Option<Uuid>,
    /// RFC 8707 `resource` of the refresh (checked against the client's registered ones): if
    /// the session's grant named one, only that one.
    pub resource: Option<&'a str>,
    /// The project requires a second factor of every user.
    pub project_requires_mfa: bool,
    /// A third-party client's refresh: no resource but the granted one.
    pub consented_resource_only: bool,
}

/// A successful refresh: what the new access token needs.
#[derive(Debug)]
pub struct Refreshed {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub amr: Vec<String>,
    pub role: Option<String>,
    pub refresh_token: String,
    /// The organization the session acts for now, with the member's role there.
    pub org: Option<crate::identity::auth::OrgContext>,
    /// The resource (RFC 8707) the new access token is for.
    pub resource: Option<String>,
    /// The OpenID client that started the session, and the scope it was granted.
    pub client_id: Option<String>,
    pub scope: Option<String>,
    /// Set for an impersonation session: its tokens carry `act` and end with it.
    pub impersonated: Option<crate::identity::auth::Impersonated>,
}

/// Rotate a refresh token (see the module documentation for reuse and the grace window): the
/// checks and writes in one call (`authio_refresh_rotate`), its event with the commit.
#[tracing::instrument(level = "debug", name = "sessions::refresh", skip_all, fields(tenant = %scope.tenant_id, project = ?scope.project_id))]
pub async fn refresh(
    router: &Router,
    clock: &dyn Clock,
    scope: &Scope,
    policy: &SessionPolicy,
    token_hash: &[u8; 32],
    client: &ClientInfo,
    holds: RefreshHolds<'_>,
) -> Result<Refreshed, CoreError> {
    let RefreshHolds { expected_client, offers, organization, resource, project_requires_mfa, consented_resource_only } =
        holds;
    let project = project_of(scope)?;
    let now = clock.now();
    let hash = token_hash.to_vec();
    let (refresh_token, new_hash) = new_refresh_token(project);
    let new_hash = new_hash.to_vec();
    let idle = i32::try_from(policy.idle.num_seconds()).unwrap_or(i32::MAX);
    let grace = i32::try_from(policy.grace.num_seconds()).unwrap_or(i32::MAX);
    let tx = router.begin(scope).await?;
    let row = tx
        .query_one(
            // With it, in the same statement: whether an organization of the user requires a
            // second factor (read only for sessions that never passed one, below).
            "SELECT r.status, r.session_id, r.user_id, r.amr, r.role, r.client_id, r.scope, r.within_grace,
                    r.organization_id, r.org_role, r.org_permissions, r.resource, r.joined, r.impersonator, r.ends_at,
                    EXISTS (SELECT 1 FROM memberships m
                            JOIN organizations o ON o.tenant_id = m.tenant_id AND o.id = m.organization_id
                            WHERE m.user_id = r.user_id AND m.status = 'active' AND o.mfa_required) AS org_requires_mfa
             FROM authio_refresh_rotate($1, $2, $3, $4, $5, $6, $7, $8, $9) r",
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&hash, Type::BYTEA),
                (&new_hash, Type::BYTEA),
                (&now, Type::TIMESTAMPTZ),
                (&idle, Type::INT4),
                (&grace, Type::INT4),
                (&expected_client, Type::TEXT),
                (&organization, Type::UUID),
            ],
        )
        .await?;
    let status: String = row.col("status")?;
    match status.as_str() {
        "ok" => {}
        "reused" => {
            let (sid, user): (Uuid, Uuid) = (row.col("session_id")?, row.col("user_id")?);
            let event = audit::Event {
                action: crate::audit::AuditAction::SessionRevoked,
                actor: audit::Actor { kind: crate::audit::ActorKind::System, id: None, name: None },
                target: Some(("session", sid.to_string())),
                client,
                metadata: serde_json::json!({"reason": "refresh_token_reused", "user_id": user}),
            };
            audit::record_and_commit(tx, scope, event, now).await?;
            tracing::warn!(tenant = %scope.tenant_id, session = %sid, "refresh token reused; session revoked");
            return Err(CoreError::InvalidGrant("the refresh token was already used; the session is revoked"));
        }
        "ended" => return Err(CoreError::InvalidGrant("the session has ended")),
        // RFC 6749 6: a refresh token is bound to the client it was issued to.
        "wrong_client" => return Err(CoreError::InvalidGrant("the refresh token was not issued to this client")),
        // Nothing was rotated: the token still works, outside that organization.
        "not_member" => return Err(CoreError::NotAMember),
        _ => return Err(CoreError::InvalidGrant("the refresh token is invalid")),
    }
    let (sid, user): (Uuid, Uuid) = (row.col("session_id")?, row.col("user_id")?);
    let amr: Vec<String> = row.col("amr")?;
    if !amr_still_offered(&amr, offers) {
        // The session's way in was turned off: it ends here rather than living on by refresh.
        tx.query(
            "UPDATE sessions SET revoked_at = $2, revoked_reason = 'signin_method_disabled'
             WHERE id = $1 AND revoked_at IS NULL",
            &[(&sid, Type::UUID), (&now, Type::TIMESTAMPTZ)],
        )
        .await?;
        let event = audit::Event {
            action: crate::audit::AuditAction::SessionRevoked,
            actor: audit::Actor { kind: crate::audit::ActorKind::System, id: None, name: None },
            target: Some(("session", sid.to_string())),
            client,
            metadata: serde_json::json!({"reason": "signin_method_disabled", "user_id": user, "amr": amr}),
        };
        audit::record_and_commit(tx, scope, event, now).await?;
        return Err(CoreError::InvalidGrant("the session's sign-in method is no longer enabled for the project"));
    }
    // A session that never passed a second factor does not outlive a policy that now requires
    // one (the project's, or an organization's the user is an active member of): it ends here.
    let policy_requires_mfa = project_requires_mfa || row.col::<bool>("org_requires_mfa")?;
    if !amr.iter().any(|a| a == "mfa") && policy_requires_mfa {
        tx.query(
            "UPDATE sessions SET revoked_at = $2, revoked_reason = 'mfa_required'
             WHERE id = $1 AND revoked_at IS NULL",
            &[(&sid, Type::UUID), (&now, Type::TIMESTAMPTZ)],
        )
        .await?;
        let event = audit::Event {
            action: crate::audit::AuditAction::SessionRevoked,
            actor: audit::Actor { kind: crate::audit::ActorKind::System, id: None, name: None },
            target: Some(("session", sid.to_string())),
            client,
            metadata: serde_json::json!({"reason": "mfa_required", "user_id": user, "amr": amr}),
        };
        audit::record_and_commit(tx, scope, event, now).await?;
        return Err(CoreError::InvalidGrant("a second factor is now required: the session has ended, sign in again"));
    }
    let within_grace: bool = row.col("within_grace")?;
    // RFC 8707 2.2: a refresh may narrow to the resource its grant named, not widen. Refused
    // before the commit: nothing rotated.
    let granted: Option<String> = row.col("resource")?;
    let resource = match (resource, granted) {
        (Some(asked), Some(g)) if asked != g => {
            return Err(CoreError::InvalidTarget("the resource is not the one this session was granted"))
        }
        (Some(_), None) if consented_resource_only => {
            return Err(CoreError::InvalidTarget("the resource is not the one the user consented to"))
        }
        (asked, granted) => asked.map(str::to_owned).or(granted),
    };
    let refreshed = Refreshed {
        resource,
        session_id: sid,
        user_id: user,
        amr,
        role: row.col("role")?,
        refresh_token,
        client_id: row.col("client_id")?,
        scope: row.col("scope")?,
        impersonated: match row.col::<Option<String>>("impersonator")? {
            Some(impersonator) => Some(crate::identity::auth::Impersonated {
                impersonator,
                ends_at: row.col::<Option<DateTime<Utc>>>("ends_at")?.map_or(0, |t| t.timestamp()),
            }),
            None => None,
        },
        org: match (row.col::<Option<Uuid>>("organization_id")?, row.col::<Option<String>>("org_role")?) {
            (Some(id), Some(role)) => Some(crate::identity::auth::OrgContext {
                id,
                role,
                permissions: row.col::<Option<Vec<String>>>("org_permissions")?.unwrap_or_default(),
            }),
            _ => None,
        },
    };
    if row.col::<bool>("joined")? {
        // Joined by the organization's domain policy, as the session switched into it.
        let joined = audit::Event {
            action: crate::audit::AuditAction::MembershipAdded,
            actor: audit::Actor::user(user, None),
            target: Some(("user", user.to_string())),
            client,
            metadata: serde_json::json!({
                "organization_id": refreshed.org.as_ref().map(|o| o.id),
                "role": refreshed.org.as_ref().map(|o| o.role.clone()),
                "by": "domain_policy",
            }),
        };
        let row = audit::EventRow::new(scope, joined, now)?;
        tx.query(audit::INSERT_SQL, &row.params()).await?;
    }
    let event = audit::Event {
        action: crate::audit::AuditAction::TokenRefreshed,
        actor: audit::Actor::user(user, None),
        target: Some(("session", sid.to_string())),
        client,
        metadata: serde_json::json!({
            "within_grace": within_grace,
            "organization_id": refreshed.org.as_ref().map(|o| o.id),
        }),
    };
    audit::record_and_commit(tx, scope, event, now).await?;
    Ok(refreshed)
}

async fn revoke_in(tx: &ScopedTx, sid: Uuid, now: DateTime<Utc>, reason: &str) -> Result<Option<Row>, CoreError> {
    Ok(tx
        .query_opt(
            &format!(
                "UPDATE sessions SET revoked_at = coalesce(revoked_at, $2),
                        revoked_reason = coalesce(revoked_reason, $3)
                 WHERE id = $1 RETURNING {SESSION_COLS}"
            ),
            &[(&sid, Type::UUID), (&now, Type::TIMESTAMPTZ), (&reason, Type::TEXT)],
        )
        .await?)
}

/// Revoke a session on behalf of whoever manages the project's users.
#[tracing::instrument(level = "debug", name = "sessions::revoke_managed", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn revoke_managed(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    sid: Uuid,
    client: &ClientInfo,
) -> Result<SessionInfo, CoreError> {
    revoke(router, clock, auth.require(Permission::UsersManage)?, sid, auth.actor().clone(), client).await
}

/// Revoke a session (its refresh tokens stop working at once; its access tokens fail
/// introspection). Revoking twice is not an error.
#[tracing::instrument(level = "debug", name = "sessions::revoke", skip_all, fields(tenant = %scope.tenant_id, project = ?scope.project_id))]
pub async fn revoke(
    router: &Router,
    clock: &dyn Clock,
    scope: &Scope,
    sid: Uuid,
    actor: audit::Actor,
    client: &ClientInfo,
) -> Result<SessionInfo, CoreError> {
    project_of(scope)?;
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin(scope).await?;
    let row = revoke_in(&tx, sid, now, "revoked").await?.ok_or(CoreError::NotFound(crate::types::Entity::Session))?;
    if row.col::<Option<DateTime<Utc>>>("revoked_at")? == Some(now) {
        let event = audit::Event {
            action: crate::audit::AuditAction::SessionRevoked,
            actor,
            target: Some(("session", sid.to_string())),
            client,
            metadata: serde_json::json!({"reason": "revoked"}),
        };
        let ended = ended_impersonation(&tx, &row, event.actor.clone(), client, now).await?;
        audit::record_in(&tx, scope, event, now).await?;
        if let Some(e) = ended {
            audit::record_in(&tx, scope, e, now).await?;
        }
    }
    tx.commit().await?;
    SessionInfo::from_row(&row)
}

/// The `impersonation.ended` event of a session just revoked, if it was a live impersonation
/// (marked, in `tx`, as audited: one that had already run out is the expiry sweep's to record).
async fn ended_impersonation<'a>(
    tx: &ScopedTx,
    row: &Row,
    actor: audit::Actor,
    client: &'a ClientInfo,
    now: DateTime<Utc>,
) -> Result<Option<audit::Event<'a>>, CoreError> {
    let Some(impersonator) = row.col::<Option<String>>("impersonator")? else { return Ok(None) };
    if row.col::<DateTime<Utc>>("absolute_expires_at")? <= now {
        return Ok(None);
    }
    let (sid, user): (Uuid, Uuid) = (row.col("id")?, row.col("user_id")?);
    tx.query(
        "UPDATE sessions SET impersonation_ended_at = $2 WHERE id = $1 AND impersonation_ended_at IS NULL",
        &[(&sid, Type::UUID), (&now, Type::TIMESTAMPTZ)],
    )
    .await?;
    Ok(Some(audit::Event {
        action: crate::audit::AuditAction::ImpersonationEnded,
        actor,
        target: Some(("user", user.to_string())),
        client,
        metadata: serde_json::json!({"session_id": sid, "impersonator": impersonator, "reason": "revoked"}),
    }))
}

/// Revoke the session a refresh token belongs to (RFC 7009 revocation, sign-out). Unknown
/// tokens are ignored.
#[tracing::instrument(level = "debug", name = "sessions::revoke_by_refresh_token", skip_all, fields(tenant = %scope.tenant_id, project = ?scope.project_id))]
pub async fn revoke_by_refresh_token(
    router: &Router,
    clock: &dyn Clock,
    scope: &Scope,
    token_hash: &[u8; 32],
    client: &ClientInfo,
) -> Result<(), CoreError> {
    let hash = token_hash.to_vec();
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin(scope).await?;
    let sid = tx
        .query_opt(
            "SELECT session_id FROM refresh_tokens WHERE tenant_id = $1 AND token_hash = $2",
            &[(&scope.tenant_id, Type::UUID), (&hash, Type::BYTEA)],
        )
        .await?;
    if let Some(r) = sid {
        let sid: Uuid = r.col("session_id")?;
        let revoked = revoke_in(&tx, sid, now, "revoked").await?;
        let (newly, ended) = match &revoked {
            Some(row) if row.col::<Option<DateTime<Utc>>>("revoked_at")? == Some(now) => {
                let anonymous = audit::Actor { kind: crate::audit::ActorKind::Anonymous, id: None, name: None };
                (true, ended_impersonation(&tx, row, anonymous, client, now).await?)
            }
            _ => (false, None),
        };
        let event = audit::Event {
            action: crate::audit::AuditAction::TokenRevoked,
            actor: audit::Actor { kind: crate::audit::ActorKind::Anonymous, id: None, name: None },
            target: Some(("session", sid.to_string())),
            client,
            metadata: serde_json::json!({"token_type": "refresh_token"}),
        };
        if newly {
            audit::record_in(&tx, scope, event, now).await?;
        }
        if let Some(e) = ended {
            audit::record_in(&tx, scope, e, now).await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// A user's sessions, newest first (live and ended).
#[tracing::instrument(level = "debug", name = "sessions::list_for_user", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn list_for_user(router: &Router, auth: &Authorized, user: Uuid) -> Result<Vec<SessionInfo>, CoreError> {
    let scope = auth.require(Permission::UsersRead)?;
    let project = project_of(scope)?;
    let tx = router.begin(scope).await?;
    let rows = tx
        .query(
            &format!(
                "SELECT {SESSION_COLS} FROM sessions WHERE tenant_id = $1 AND project_id = $2 AND user_id = $3
                 ORDER BY id DESC LIMIT 200"
            ),
            &[(&scope.tenant_id, Type::UUID), (&project, Type::UUID), (&user, Type::UUID)],
        )
        .await?;
    tx.commit().await?;
    rows.iter().map(SessionInfo::from_row).collect()
}

/// A project's live impersonation sessions (started, not ended, not run out), newest first:
/// what the console shows operators.
pub async fn live_impersonations(
    router: &Router,
    auth: &Authorized,
    now: DateTime<Utc>,
) -> Result<Vec<SessionInfo>, CoreError> {
    let scope = auth.require(Permission::UsersRead)?;
    project_of(scope)?;
    let tx = router.begin(scope).await?;
    let rows = tx
        .query(
            &format!(
                "SELECT {SESSION_COLS} FROM sessions
                 WHERE impersonator IS NOT NULL AND revoked_at IS NULL AND absolute_expires_at > $1
                 ORDER BY id DESC LIMIT 100"
            ),
            &[(&now, Type::TIMESTAMPTZ)],
        )
        .await?;
    tx.commit().await?;
    rows.iter().map(SessionInfo::from_row).collect()
}

/// What introspection needs of a refresh token.
pub struct RefreshTokenState {
    pub active: bool,
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[tracing::instrument(level = "debug", name = "sessions::refresh_token_state", skip_all, fields(tenant = %scope.tenant_id, project = ?scope.project_id))]
pub async fn refresh_token_state(
    router: &Router,
    clock: &dyn Clock,
    scope: &Scope,
    token_hash: &[u8; 32],
) -> Result<Option<RefreshTokenState>, CoreError> {
    let hash = token_hash.to_vec();
    let tx = router.begin(scope).await?;
    let row = tx
        .query_opt(
            // Driven from the token's primary key (`OFFSET 0` keeps the planner from turning
            // the lookup around on stale statistics: see `authio_refresh_rotate`).
            "SELECT t.session_id, s.user_id, t.created_at, t.used_at, s.revoked_at,
                    least(s.idle_expires_at, s.absolute_expires_at) AS expires_at, u.disabled
             FROM (SELECT rt.tenant_id, rt.session_id, rt.created_at, rt.used_at FROM refresh_tokens rt
                   WHERE rt.tenant_id = $1 AND rt.token_hash = $2 OFFSET 0) t
             JOIN sessions s ON s.tenant_id = t.tenant_id AND s.id = t.session_id
             JOIN users u ON u.tenant_id = s.tenant_id AND u.id = s.user_id",
            &[(&scope.tenant_id, Type::UUID), (&hash, Type::BYTEA)],
        )
        .await?;
    tx.commit().await?;
    let now = clock.now();
    let Some(r) = row else { return Ok(None) };
    let used: Option<DateTime<Utc>> = r.col("used_at")?;
    let revoked: Option<DateTime<Utc>> = r.col("revoked_at")?;
    let expires_at: DateTime<Utc> = r.col("expires_at")?;
    let disabled: bool = r.col("disabled")?;
    Ok(Some(RefreshTokenState {
        active: used.is_none() && revoked.is_none() && now < expires_at && !disabled,
        session_id: r.col("session_id")?,
        user_id: r.col("user_id")?,
        issued_at: r.col("created_at")?,
        expires_at,
    }))
}

/// Whether an access token is still good at its home: its jti not revoked and, for a token of
/// a session, the session live and its user not disabled.
#[tracing::instrument(level = "debug", name = "sessions::access_token_live", skip_all, fields(tenant = %scope.tenant_id, project = ?scope.project_id))]
pub async fn access_token_live(
    router: &Router,
    clock: &dyn Clock,
    scope: &Scope,
    jti: Uuid,
    sid: Option<Uuid>,
) -> Result<bool, CoreError> {
    let now = clock.now();
    // One round trip (Router::read). The fence is asked in the same statement: "nothing
    // revoked" read from a database the tenant has left would be a wrong "live".
    let rows = router
        .read(
            scope,
            "SELECT NOT EXISTS (SELECT 1 FROM revoked_access_tokens WHERE tenant_id = $1 AND jti = $2),
                    $3::uuid IS NULL OR EXISTS (
                        SELECT 1 FROM sessions s JOIN users u ON u.tenant_id = s.tenant_id AND u.id = s.user_id
                        WHERE s.tenant_id = $1 AND s.id = $3 AND s.revoked_at IS NULL
                          AND s.absolute_expires_at > $4 AND NOT u.disabled),
                    authio_tenant_at_home($1)",
            &[(&scope.tenant_id, Type::UUID), (&jti, Type::UUID), (&sid, Type::UUID), (&now, Type::TIMESTAMPTZ)],
        )
        .await?;
    let row = rows.first().ok_or(CoreError::Internal("liveness query returned no row".into()))?;
    if row.try_get::<Option<bool>>(2)? != Some(true) {
        return Err(authio_db::RouterError::NotAtHome(scope.tenant_id).into());
    }
    Ok(row.try_get::<bool>(0)? && row.try_get::<bool>(1)?)
}

/// Record an access token as revoked until it expires.
#[tracing::instrument(level = "debug", name = "sessions::revoke_access_token", skip_all, fields(tenant = %scope.tenant_id, project = ?scope.project_id))]
pub async fn revoke_access_token(
    router: &Router,
    clock: &dyn Clock,
    scope: &Scope,
    jti: Uuid,
    expires_at: DateTime<Utc>,
    client: &ClientInfo,
) -> Result<(), CoreError> {
    let project = project_of(scope)?;
    let tx = router.begin(scope).await?;
    let fresh = tx
        .query(
            "INSERT INTO revoked_access_tokens (tenant_id, project_id, jti, expires_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING RETURNING jti",
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&jti, Type::UUID),
                (&expires_at, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    // Revoking again changes nothing and records nothing.
    if !fresh.is_empty() {
        let event = audit::Event {
            action: crate::audit::AuditAction::TokenRevoked,
            actor: audit::Actor { kind: crate::audit::ActorKind::Anonymous, id: None, name: None },
            target: Some(("access_token", jti.to_string())),
            client,
            metadata: serde_json::json!({"token_type": "access_token"}),
        };
        audit::record_in(&tx, scope, event, clock.now()).await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_name_their_project() {
        let p = Uuid::now_v7();
        let (t, h) = new_refresh_token(p);
        assert_eq!(parse_refresh_token(&t), Some((p, h)));
        assert_ne!(new_refresh_token(p).0, t);
        for bad in ["", "rt_", "rt_abc_def", &t[..t.len() - 1], &t.replacen("rt_", "sk_", 1)] {
            assert!(parse_refresh_token(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_first_factor_alone_keeps_a_session_alive() {
        let amr = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let only = |m: &'static str| move |x: &str| x == m;
        // Password and TOTP: the `otp` of the second factor does not stand for an email code.
        assert!(!amr_still_offered(&amr(&["pwd", "otp", "mfa"]), &only("email_code")));
        assert!(amr_still_offered(&amr(&["pwd", "otp", "mfa"]), &only("password")));
        // An email code with a security key: the key does not stand for passkey sign-in.
        assert!(!amr_still_offered(&amr(&["otp", "hwk", "mfa"]), &only("passkey")));
        assert!(amr_still_offered(&amr(&["swk", "mfa"]), &only("passkey")));
        assert!(amr_still_offered(&amr(&["imp"]), &only("password")));
    }
}
