//! The audit log: events at each tenant's home, written in the same transaction as the change
//! they record, append-only and hash-chained per project by the database (migration 0004).
//! This module builds events, lists them, and verifies chains from outside the database.
pub mod issuance_log;

use authio_db::{Param, PgRow, Router, Scope, ScopedTx, Type};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::authz::{Authorized, Permission};
use crate::types::project_of;
use crate::types::ClientInfo;
use crate::CoreError;

/// Who did it.
pub use crate::types::{Actor, ActorKind};

/// Every action the audit log records; the strings are what the log stores and the API
/// returns, and must not change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuditAction {
    ApiKeyCreated,
    ApiKeyRevoked,
    DedicatedDbApproved,
    DedicatedDbDeclined,
    DedicatedDbDone,
    DedicatedDbFailed,
    DedicatedDbMoveBackRequested,
    DedicatedDbMoveStarted,
    DedicatedDbProvisioned,
    DedicatedDbRequestWithdrawn,
    DedicatedDbRequested,
    M2mTokensIssued,
    M2mClientCreated,
    M2mClientRevoked,
    ConnectionCreated,
    ConnectionUpdated,
    ConnectionDeleted,
    OidcClientCreated,
    OidcClientRevoked,
    ProjectCreated,
    ProjectDomainAdded,
    ProjectDomainRemoved,
    ProjectDomainVerified,
    ProjectEmailTemplateSet,
    ProjectOriginAdded,
    ProjectOriginRemoved,
    ProjectPresentationChanged,
    ProjectRedirectUriAdded,
    ProjectRedirectUriRemoved,
    ProjectSettingsChanged,
    ProjectSigningAlgChanged,
    SessionRevoked,
    SigningKeyRotated,
    TenantAuditRetentionChanged,
    TenantDbStrategySet,
    TenantDedicatedAttached,
    TenantDedicatedProvisioned,
    TenantMemberRemoved,
    TenantMemberSet,
    TenantMoveAborted,
    TenantMoved,
    TenantOldCopyPurged,
    TenantPlanChanged,
    TokenRefreshed,
    TokenRevoked,
    UserCreated,
    UserDeleted,
    UserDisabled,
    UserEmailVerified,
    UserEnabled,
    UserIdentityLinkRefused,
    UserIdentityLinked,
    UserPasswordReset,
    UserRoleGranted,
    UserSignInFailed,
    UserSignedIn,
    UserSignedUp,
    OrganizationCreated,
    OrganizationUpdated,
    OrganizationDeleted,
    MembershipAdded,
    MembershipUpdated,
    MembershipRemoved,
    RoleCreated,
    RoleUpdated,
    RoleDeleted,
    RolePermissionDefined,
    RolePermissionDeleted,
    InvitationSent,
    InvitationResent,
    InvitationRevoked,
    InvitationAccepted,
    ImpersonationStarted,
    ImpersonationEnded,
    WebhookEndpointCreated,
    WebhookEndpointUpdated,
    WebhookEndpointDeleted,
    WebhookEndpointDisabled,
    WebhookSecretRotated,
    WebhookReplayed,
    SsoSignedIn,
    SsoRefused,
    DirectoryCreated,
    DirectoryUpdated,
    DirectoryTokenRotated,
    DirectoryTokenRevoked,
    DirectoryDeleted,
    DsyncUserCreated,
    DsyncUserUpdated,
    DsyncUserDeactivated,
    DsyncUserReactivated,
    DsyncUserDeleted,
    DsyncGroupCreated,
    DsyncGroupUpdated,
    DsyncGroupDeleted,
    MfaEnrolled,
    MfaRemoved,
    MfaChallengeSucceeded,
    MfaChallengeFailed,
    RecoveryCodeUsed,
    RecoveryCodesRegenerated,
    ClientRegistered,
    ClientBlocked,
    ConsentGranted,
    ConsentRevoked,
}

impl AuditAction {
    pub const ALL: [AuditAction; 105] = [
        AuditAction::ApiKeyCreated,
        AuditAction::ApiKeyRevoked,
        AuditAction::DedicatedDbApproved,
        AuditAction::DedicatedDbDeclined,
        AuditAction::DedicatedDbDone,
        AuditAction::DedicatedDbFailed,
        AuditAction::DedicatedDbMoveBackRequested,
        AuditAction::DedicatedDbMoveStarted,
        AuditAction::DedicatedDbProvisioned,
        AuditAction::DedicatedDbRequestWithdrawn,
        AuditAction::DedicatedDbRequested,
        AuditAction::M2mTokensIssued,
        AuditAction::M2mClientCreated,
        AuditAction::M2mClientRevoked,
        AuditAction::ConnectionCreated,
        AuditAction::ConnectionUpdated,
        AuditAction::ConnectionDeleted,
        AuditAction::OidcClientCreated,
        AuditAction::OidcClientRevoked,
        AuditAction::ProjectCreated,
        AuditAction::ProjectDomainAdded,
        AuditAction::ProjectDomainRemoved,
        AuditAction::ProjectDomainVerified,
        AuditAction::ProjectEmailTemplateSet,
        AuditAction::ProjectOriginAdded,
        AuditAction::ProjectOriginRemoved,
        AuditAction::ProjectPresentationChanged,
        AuditAction::ProjectRedirectUriAdded,
        AuditAction::ProjectRedirectUriRemoved,
        AuditAction::ProjectSettingsChanged,
        AuditAction::ProjectSigningAlgChanged,
        AuditAction::SessionRevoked,
        AuditAction::SigningKeyRotated,
        AuditAction::TenantAuditRetentionChanged,
        AuditAction::TenantDbStrategySet,
        AuditAction::TenantDedicatedAttached,
        AuditAction::TenantDedicatedProvisioned,
        AuditAction::TenantMemberRemoved,
        AuditAction::TenantMemberSet,
        AuditAction::TenantMoveAborted,
        AuditAction::TenantMoved,
        AuditAction::TenantOldCopyPurged,
        AuditAction::TenantPlanChanged,
        AuditAction::TokenRefreshed,
        AuditAction::TokenRevoked,
        AuditAction::UserCreated,
        AuditAction::UserDeleted,
        AuditAction::UserDisabled,
        AuditAction::UserEmailVerified,
        AuditAction::UserEnabled,
        AuditAction::UserIdentityLinkRefused,
        AuditAction::UserIdentityLinked,
        AuditAction::UserPasswordReset,
        AuditAction::UserRoleGranted,
        AuditAction::UserSignInFailed,
        AuditAction::UserSignedIn,
        AuditAction::UserSignedUp,
        AuditAction::OrganizationCreated,
        AuditAction::OrganizationUpdated,
        AuditAction::OrganizationDeleted,
        AuditAction::MembershipAdded,
        AuditAction::MembershipUpdated,
        AuditAction::MembershipRemoved,
        AuditAction::RoleCreated,
        AuditAction::RoleUpdated,
        AuditAction::RoleDeleted,
        AuditAction::RolePermissionDefined,
        AuditAction::RolePermissionDeleted,
        AuditAction::InvitationSent,
        AuditAction::InvitationResent,
        AuditAction::InvitationRevoked,
        AuditAction::InvitationAccepted,
        AuditAction::ImpersonationStarted,
        AuditAction::ImpersonationEnded,
        AuditAction::WebhookEndpointCreated,
        AuditAction::WebhookEndpointUpdated,
        AuditAction::WebhookEndpointDeleted,
        AuditAction::WebhookEndpointDisabled,
        AuditAction::WebhookSecretRotated,
        AuditAction::WebhookReplayed,
        AuditAction::SsoSignedIn,
        AuditAction::SsoRefused,
        AuditAction::DirectoryCreated,
        AuditAction::DirectoryUpdated,
        AuditAction::DirectoryTokenRotated,
        AuditAction::DirectoryTokenRevoked,
        AuditAction::DirectoryDeleted,
        AuditAction::DsyncUserCreated,
        AuditAction::DsyncUserUpdated,
        AuditAction::DsyncUserDeactivated,
        AuditAction::DsyncUserReactivated,
        AuditAction::DsyncUserDeleted,
        AuditAction::DsyncGroupCreated,
        AuditAction::DsyncGroupUpdated,
        AuditAction::DsyncGroupDeleted,
        AuditAction::MfaEnrolled,
        AuditAction::MfaRemoved,
        AuditAction::MfaChallengeSucceeded,
        AuditAction::MfaChallengeFailed,
        AuditAction::RecoveryCodeUsed,
        AuditAction::RecoveryCodesRegenerated,
        AuditAction::ClientRegistered,
        AuditAction::ClientBlocked,
        AuditAction::ConsentGranted,
        AuditAction::ConsentRevoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::ApiKeyCreated => "api_key.created",
            AuditAction::ApiKeyRevoked => "api_key.revoked",
            AuditAction::DedicatedDbApproved => "dedicated_db.approved",
            AuditAction::DedicatedDbDeclined => "dedicated_db.declined",
            AuditAction::DedicatedDbDone => "dedicated_db.done",
            AuditAction::DedicatedDbFailed => "dedicated_db.failed",
            AuditAction::DedicatedDbMoveBackRequested => "dedicated_db.move_back_requested",
            AuditAction::DedicatedDbMoveStarted => "dedicated_db.move_started",
            AuditAction::DedicatedDbProvisioned => "dedicated_db.provisioned",
            AuditAction::DedicatedDbRequestWithdrawn => "dedicated_db.request_withdrawn",
            AuditAction::DedicatedDbRequested => "dedicated_db.requested",
            AuditAction::M2mTokensIssued => "m2m.tokens_issued",
            AuditAction::M2mClientCreated => "m2m_client.created",
            AuditAction::M2mClientRevoked => "m2m_client.revoked",
            AuditAction::ConnectionCreated => "connection.created",
            AuditAction::ConnectionUpdated => "connection.updated",
            AuditAction::ConnectionDeleted => "connection.deleted",
            AuditAction::OidcClientCreated => "oidc_client.created",
            AuditAction::OidcClientRevoked => "oidc_client.revoked",
            AuditAction::ProjectCreated => "project.created",
            AuditAction::ProjectDomainAdded => "project.domain_added",
            AuditAction::ProjectDomainRemoved => "project.domain_removed",
            AuditAction::ProjectDomainVerified => "project.domain_verified",
            AuditAction::ProjectEmailTemplateSet => "project.email_template_set",
            AuditAction::ProjectOriginAdded => "project.origin_added",
            AuditAction::ProjectOriginRemoved => "project.origin_removed",
            AuditAction::ProjectPresentationChanged => "project.presentation_changed",
            AuditAction::ProjectRedirectUriAdded => "project.redirect_uri_added",
            AuditAction::ProjectRedirectUriRemoved => "project.redirect_uri_removed",
            AuditAction::ProjectSettingsChanged => "project.settings_changed",
            AuditAction::ProjectSigningAlgChanged => "project.signing_alg_changed",
            AuditAction::SessionRevoked => "session.revoked",
            AuditAction::SigningKeyRotated => "signing_key.rotated",
            AuditAction::TenantAuditRetentionChanged => "tenant.audit_retention_changed",
            AuditAction::TenantDbStrategySet => "tenant.db_strategy_set",
            AuditAction::TenantDedicatedAttached => "tenant.dedicated_attached",
            AuditAction::TenantDedicatedProvisioned => "tenant.dedicated_provisioned",
            AuditAction::TenantMemberRemoved => "tenant.member_removed",
            AuditAction::TenantMemberSet => "tenant.member_set",
            AuditAction::TenantMoveAborted => "tenant.move_aborted",
            AuditAction::TenantMoved => "tenant.moved",
            AuditAction::TenantOldCopyPurged => "tenant.old_copy_purged",
            AuditAction::TenantPlanChanged => "tenant.plan_changed",
            AuditAction::TokenRefreshed => "token.refreshed",
            AuditAction::TokenRevoked => "token.revoked",
            AuditAction::UserCreated => "user.created",
            AuditAction::UserDeleted => "user.deleted",
            AuditAction::UserDisabled => "user.disabled",
            AuditAction::UserEmailVerified => "user.email_verified",
            AuditAction::UserEnabled => "user.enabled",
            AuditAction::UserIdentityLinkRefused => "user.identity_link_refused",
            AuditAction::UserIdentityLinked => "user.identity_linked",
            AuditAction::UserPasswordReset => "user.password_reset",
            AuditAction::UserRoleGranted => "user.role_granted",
            AuditAction::UserSignInFailed => "user.sign_in_failed",
            AuditAction::UserSignedIn => "user.signed_in",
            AuditAction::UserSignedUp => "user.signed_up",
            AuditAction::OrganizationCreated => "organization.created",
            AuditAction::OrganizationUpdated => "organization.updated",
            AuditAction::OrganizationDeleted => "organization.deleted",
            AuditAction::MembershipAdded => "membership.added",
            AuditAction::MembershipUpdated => "membership.updated",
            AuditAction::MembershipRemoved => "membership.removed",
            AuditAction::RoleCreated => "role.created",
            AuditAction::RoleUpdated => "role.updated",
            AuditAction::RoleDeleted => "role.deleted",
            AuditAction::RolePermissionDefined => "role.permission_defined",
            AuditAction::RolePermissionDeleted => "role.permission_deleted",
            AuditAction::InvitationSent => "invitation.sent",
            AuditAction::InvitationResent => "invitation.resent",
            AuditAction::InvitationRevoked => "invitation.revoked",
            AuditAction::InvitationAccepted => "invitation.accepted",
            AuditAction::ImpersonationStarted => "impersonation.started",
            AuditAction::ImpersonationEnded => "impersonation.ended",
            AuditAction::WebhookEndpointCreated => "webhook.created",
            AuditAction::WebhookEndpointUpdated => "webhook.updated",
            AuditAction::WebhookEndpointDeleted => "webhook.deleted",
            AuditAction::WebhookEndpointDisabled => "webhook.disabled",
            AuditAction::WebhookSecretRotated => "webhook.secret_rotated",
            AuditAction::WebhookReplayed => "webhook.replayed",
            AuditAction::SsoSignedIn => "sso.signed_in",
            AuditAction::SsoRefused => "sso.refused",
            AuditAction::DirectoryCreated => "directory.created",
            AuditAction::DirectoryUpdated => "directory.updated",
            AuditAction::DirectoryTokenRotated => "directory.token_rotated",
            AuditAction::DirectoryTokenRevoked => "directory.token_revoked",
            AuditAction::DirectoryDeleted => "directory.deleted",
            AuditAction::DsyncUserCreated => "dsync.user.created",
            AuditAction::DsyncUserUpdated => "dsync.user.updated",
            AuditAction::DsyncUserDeactivated => "dsync.user.deactivated",
            AuditAction::DsyncUserReactivated => "dsync.user.reactivated",
            AuditAction::DsyncUserDeleted => "dsync.user.deleted",
            AuditAction::DsyncGroupCreated => "dsync.group.created",
            AuditAction::DsyncGroupUpdated => "dsync.group.updated",
            AuditAction::DsyncGroupDeleted => "dsync.group.deleted",
            AuditAction::MfaEnrolled => "mfa.enrolled",
            AuditAction::MfaRemoved => "mfa.removed",
            AuditAction::MfaChallengeSucceeded => "mfa.challenge_succeeded",
            AuditAction::MfaChallengeFailed => "mfa.challenge_failed",
            AuditAction::RecoveryCodeUsed => "recovery_code.used",
            AuditAction::RecoveryCodesRegenerated => "recovery_code.regenerated",
            AuditAction::ClientRegistered => "client.registered",
            AuditAction::ClientBlocked => "client.blocked",
            AuditAction::ConsentGranted => "consent.granted",
            AuditAction::ConsentRevoked => "consent.revoked",
        }
    }
}

impl std::fmt::Display for AuditAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event to record.
pub struct Event<'a> {
    pub action: AuditAction,
    pub actor: Actor,
    pub target: Option<(&'static str, String)>,
    pub client: &'a ClientInfo,
    pub metadata: serde_json::Value,
}

/// The insert; the chain trigger sets `seq`, `prev_hash` and `hash`.
pub const INSERT_SQL: &str = "INSERT INTO audit_events (tenant_id, project_id, id, occurred_at, action, actor_type,
        actor_id, actor_name, target_type, target_id, ip, user_agent, request_id, metadata)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

/// An event's parameters, owned, ready to bind to [`INSERT_SQL`].
pub struct EventRow {
    pub(crate) tenant: Uuid,
    pub(crate) project: Uuid,
    pub(crate) id: Uuid,
    pub(crate) at: DateTime<Utc>,
    pub(crate) action: &'static str,
    pub(crate) actor_type: &'static str,
    pub(crate) actor_id: Option<String>,
    pub(crate) actor_name: Option<String>,
    pub(crate) target_type: Option<&'static str>,
    pub(crate) target_id: Option<String>,
    pub(crate) ip: Option<String>,
    pub(crate) user_agent: Option<String>,
    pub(crate) request_id: Option<String>,
    pub(crate) metadata: serde_json::Value,
}

impl EventRow {
    pub fn new(scope: &Scope, event: Event<'_>, at: DateTime<Utc>) -> Result<Self, CoreError> {
        let cut = |s: &Option<String>, n: usize| s.as_deref().map(|v| v.chars().take(n).collect::<String>());
        Ok(EventRow {
            tenant: scope.tenant_id,
            project: project_of(scope)?,
            id: Uuid::now_v7(),
            at,
            action: event.action.as_str(),
            actor_type: event.actor.kind.as_str(),
            actor_id: cut(&event.actor.id, 200),
            actor_name: cut(&event.actor.name, 320),
            target_type: event.target.as_ref().map(|t| t.0),
            target_id: event.target.map(|t| t.1.chars().take(320).collect()),
            ip: cut(&event.client.ip, 64),
            user_agent: cut(&event.client.user_agent, 512),
            request_id: cut(&event.client.request_id, 128),
            metadata: event.metadata,
        })
    }

    pub fn params(&self) -> [Param<'_>; 14] {
        [
            (&self.tenant, Type::UUID),
            (&self.project, Type::UUID),
            (&self.id, Type::UUID),
            (&self.at, Type::TIMESTAMPTZ),
            (&self.action, Type::TEXT),
            (&self.actor_type, Type::TEXT),
            (&self.actor_id, Type::TEXT),
            (&self.actor_name, Type::TEXT),
            (&self.target_type, Type::TEXT),
            (&self.target_id, Type::TEXT),
            (&self.ip, Type::TEXT),
            (&self.user_agent, Type::TEXT),
            (&self.request_id, Type::TEXT),
            (&self.metadata, Type::JSONB),
        ]
    }
}

/// Record an event inside the caller's transaction (it commits or rolls back with the change).
#[tracing::instrument(level = "debug", name = "audit::record_in", skip_all, fields(tenant = %scope.tenant_id, project = ?scope.project_id))]
pub async fn record_in(tx: &ScopedTx, scope: &Scope, event: Event<'_>, at: DateTime<Utc>) -> Result<(), CoreError> {
    let row = EventRow::new(scope, event, at)?;
    tx.query(INSERT_SQL, &row.params()).await?;
    Ok(())
}

/// Record an event as the transaction's last statement and commit, in one round trip (the
/// chain's head stays locked for the commit alone).
#[tracing::instrument(level = "debug", name = "audit::record_and_commit", skip_all, fields(tenant = %scope.tenant_id, project = ?scope.project_id))]
pub async fn record_and_commit(
    tx: ScopedTx,
    scope: &Scope,
    event: Event<'_>,
    at: DateTime<Utc>,
) -> Result<(), CoreError> {
    let row = EventRow::new(scope, event, at)?;
    tx.commit_with(INSERT_SQL, &row.params()).await?;
    Ok(())
}

/// The outbox insert: the same columns, on the shared database.
const OUTBOX_SQL: &str = "INSERT INTO audit_outbox (tenant_id, project_id, id, occurred_at, action, actor_type,
        actor_id, actor_name, target_type, target_id, ip, user_agent, request_id, metadata)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";

/// Record an event about a row pinned to the shared database, inside the transaction that
/// changes it there (`Router::begin_pinned`, or an operator's transaction): it waits in the
/// outbox until [`relay`] moves it to the tenant's home log.
#[tracing::instrument(level = "debug", name = "audit::record_pinned", skip_all, fields(tenant = %scope.tenant_id, project = ?scope.project_id))]
pub async fn record_pinned(tx: &ScopedTx, scope: &Scope, event: Event<'_>, at: DateTime<Utc>) -> Result<(), CoreError> {
    let row = EventRow::new(scope, event, at)?;
    tx.query(OUTBOX_SQL, &row.params()).await?;
    Ok(())
}

/// The same, inside an operator's transaction on the shared database.
#[tracing::instrument(level = "debug", name = "audit::record_pinned_as_owner", skip_all, fields(tenant = %scope.tenant_id, project = ?scope.project_id))]
pub async fn record_pinned_as_owner(
    tx: &authio_db::OwnerTx<'_>,
    scope: &Scope,
    event: Event<'_>,
    at: DateTime<Utc>,
) -> Result<(), CoreError> {
    let row = EventRow::new(scope, event, at)?;
    tx.query(OUTBOX_SQL, &row.params()).await?;
    Ok(())
}

/// Deliver up to `limit` outbox events to their tenants' home logs; returns how many were
/// delivered. At least once: an event already at home (a relay that died before clearing the
/// outbox, or another node's relay) is skipped, never written twice.
///
/// Events that failed are added to `failed` (the caller keeps them out of the next takes for a
/// while); events are claimed per id with a transaction-scoped advisory lock at the home, so
/// relays on several nodes never write one twice.
pub async fn relay(
    router: &Router,
    outbox: &authio_db::OutboxReader,
    limit: i32,
    failed: &mut Vec<Uuid>,
) -> Result<usize, CoreError> {
    let pending = outbox.take(limit, failed).await?;
    let mut delivered = 0;
    for r in &pending {
        let tenant: Uuid = r.try_get(0)?;
        let project: Uuid = r.try_get(1)?;
        let id: Uuid = r.try_get(2)?;
        let kind = match router.route(tenant).await {
            Ok(route) => route.kind,
            Err(e) => {
                tracing::warn!(%tenant, error = %e, "audit relay: tenant not routable; event kept in the outbox");
                failed.push(id);
                continue;
            }
        };
        let scope = Scope::project(tenant, project, kind);
        let at: DateTime<Utc> = r.try_get(3)?;
        let texts: Vec<Option<String>> = (4..=12).map(|i| r.try_get::<Option<String>>(i)).collect::<Result<_, _>>()?;
        let metadata: serde_json::Value = r.try_get(13)?;
        let t = |i: usize| texts.get(i).cloned().flatten();
        let (action, actor_type) = (t(0), t(1));
        let (actor_id, actor_name, target_type, target_id, ip, ua, req) = (t(2), t(3), t(4), t(5), t(6), t(7), t(8));
        let params: [Param<'_>; 14] = [
            (&tenant, Type::UUID),
            (&project, Type::UUID),
            (&id, Type::UUID),
            (&at, Type::TIMESTAMPTZ),
            (&action, Type::TEXT),
            (&actor_type, Type::TEXT),
            (&actor_id, Type::TEXT),
            (&actor_name, Type::TEXT),
            (&target_type, Type::TEXT),
            (&target_id, Type::TEXT),
            (&ip, Type::TEXT),
            (&ua, Type::TEXT),
            (&req, Type::TEXT),
            (&metadata, Type::JSONB),
        ];
        let insert = "INSERT INTO audit_events (tenant_id, project_id, id, occurred_at, action, actor_type, actor_id,
                                   actor_name, target_type, target_id, ip, user_agent, request_id, metadata)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14
             WHERE NOT EXISTS (SELECT 1 FROM audit_events WHERE tenant_id = $1 AND id = $3)";
        // The lock, then the guarded insert with a fresh snapshot (the statements of a
        // single-Sync pipeline each take their own): a second relay waits, then sees the row.
        let lock = "SELECT pg_advisory_xact_lock(hashtextextended($1::uuid::text, 0))";
        let lock_params: [Param<'_>; 1] = [(&id, Type::UUID)];
        if let Err(e) = router.write(&scope, &[(lock, &lock_params), (insert, &params)]).await {
            // One tenant's home being down or moving does not hold up the others' events.
            tracing::warn!(%tenant, error = %e, "audit relay: home not writable; event kept in the outbox");
            failed.push(id);
            continue;
        }
        outbox.done(id).await?;
        delivered += 1;
    }
    Ok(delivered)
}

/// Record an event that is itself the change (a failed sign-in), in one round trip.
#[tracing::instrument(level = "debug", name = "audit::record", skip_all, fields(tenant = %scope.tenant_id, project = ?scope.project_id))]
pub async fn record(router: &Router, scope: &Scope, event: Event<'_>, at: DateTime<Utc>) -> Result<(), CoreError> {
    let row = EventRow::new(scope, event, at)?;
    router.write(scope, &[(INSERT_SQL, &row.params())]).await?;
    Ok(())
}

/// An event as the API shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EventView {
    pub id: Uuid,
    pub seq: i64,
    pub occurred_at: DateTime<Utc>,
    pub action: String,
    pub actor: ActorView,
    pub target: Option<TargetView>,
    pub context: ContextView,
    pub metadata: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ActorView {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<String>,
    pub name: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TargetView {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ContextView {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

const COLS: &str = "id, seq, occurred_at, action, actor_type, actor_id, actor_name, target_type, target_id, ip, \
     user_agent, request_id, metadata";

fn view(r: &PgRow) -> Result<EventView, CoreError> {
    let target_type: Option<String> = r.try_get(7)?;
    Ok(EventView {
        id: r.try_get(0)?,
        seq: r.try_get(1)?,
        occurred_at: r.try_get(2)?,
        action: r.try_get(3)?,
        actor: ActorView { kind: r.try_get(4)?, id: r.try_get(5)?, name: r.try_get(6)? },
        target: target_type.map(|kind| Ok::<_, CoreError>(TargetView { kind, id: r.try_get(8)? })).transpose()?,
        context: ContextView { ip: r.try_get(9)?, user_agent: r.try_get(10)?, request_id: r.try_get(11)? },
        metadata: r.try_get(12)?,
    })
}

/// Filters for listing; all optional.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub action: Option<String>,
    pub actor_id: Option<String>,
    pub target_id: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// A page of the project's events, newest first, before sequence `before` when given.
#[tracing::instrument(level = "debug", name = "audit::list", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn list(
    router: &Router,
    auth: &Authorized,
    filter: &Filter,
    limit: i64,
    before: Option<i64>,
) -> Result<Vec<EventView>, CoreError> {
    let scope = auth.require(Permission::AuditRead)?;
    let project = project_of(scope)?;
    let limit = limit.clamp(1, 500);
    let before = before.unwrap_or(i64::MAX);
    let rows = router
        .read(
            scope,
            &format!(
                "SELECT {COLS} FROM audit_events
                 WHERE tenant_id = $1 AND project_id = $2 AND seq < $3
                   AND ($4::text IS NULL OR action = $4) AND ($5::text IS NULL OR actor_id = $5)
                   AND ($6::text IS NULL OR target_id = $6)
                   AND ($7::timestamptz IS NULL OR occurred_at >= $7) AND ($8::timestamptz IS NULL OR occurred_at < $8)
                 ORDER BY seq DESC LIMIT $9"
            ),
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&before, Type::INT8),
                (&filter.action, Type::TEXT),
                (&filter.actor_id, Type::TEXT),
                (&filter.target_id, Type::TEXT),
                (&filter.since, Type::TIMESTAMPTZ),
                (&filter.until, Type::TIMESTAMPTZ),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    rows.iter().map(view).collect()
}

/// The bytes an event's hash covers, rebuilt from its fields (the same encoding as the
/// database's `authio_audit_canonical`): each field length-prefixed, `~` for null.
pub fn canonical(fields: &[Option<&str>]) -> String {
    fields
        .iter()
        .map(|f| match f {
            Some(v) => format!("{}:{v}", v.len()),
            None => "~".to_owned(),
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// `sha256(prev_hash || canonical)`.
pub fn chain_hash(prev: &[u8], canonical: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical.as_bytes());
    h.finalize().into()
}

/// The outcome of checking one project's chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainReport {
    pub project_id: Uuid,
    pub events: u64,
    /// The first event whose link does not hold, with why; `None` when the chain is whole.
    pub first_broken: Option<(i64, String)>,
}

#[cfg(test)]
mod tests {
    use super::AuditAction;

    /// The log's actions are a public contract: each is documented, once, and keeps its string.
    #[test]
    fn every_action_is_documented_and_distinct() {
        let doc = include_str!("../../../../docs/concepts/audit-log.md");
        let mut seen = std::collections::HashSet::new();
        for a in AuditAction::ALL {
            assert!(seen.insert(a.as_str()), "{a} twice");
            assert!(doc.contains(&format!("`{a}`")), "{a} is not in docs/concepts/audit-log.md");
            let (noun, verb) = a.as_str().split_once('.').unwrap_or_default();
            assert!(!noun.is_empty() && !verb.is_empty() && a.as_str().len() <= 100, "{a}");
        }
        assert_eq!(AuditAction::UserSignedIn.as_str(), "user.signed_in");
        assert_eq!(AuditAction::M2mTokensIssued.as_str(), "m2m.tokens_issued");
    }
}
