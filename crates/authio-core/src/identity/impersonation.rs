//! Impersonation: an operator, or a tenant owner, starts a session as one of a project's users
//! to see what they see. The user's credentials are never used: the session is made directly,
//! with a reason, for at most an hour, and its access tokens carry `act` (RFC 8693 4.1) naming
//! the impersonator, so a resource server can tell and refuse. Start and end are audited.
//!
//! An impersonation ended by a manager or signed out is audited as it ends
//! (`identity::sessions`); one that runs out (`revoked_reason = impersonation_expired`) or is
//! ended by another act is audited by [`Identity::end_expired_impersonations`], which the server
//! runs every minute. `sessions.impersonation_ended_at` makes it once.
//!
//! Refused: users of the platform tenant (operators and dashboard members), a user holding the
//! operator role, a disabled user, and an API key as the impersonator (a person must answer
//! for it).
use authio_db::{RowExt, Scope, TenantKind, Type};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::authz::{Authorized, Permission};
use crate::identity::auth::{policy, Identity, Impersonated, UserTokens};
use crate::identity::sessions::{NewSession, SessionPolicy};
use crate::types::{project_of, ClientInfo, Entity, ValidationError};
use crate::{audit, CoreError};

/// The longest impersonation, and the length when none is asked.
pub const MAX_MINUTES: i64 = 60;
pub const DEFAULT_MINUTES: i64 = 15;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewImpersonation {
    /// Why (kept with the session and in the audit log): 1-500 characters.
    pub reason: String,
    /// 1-60; 15 when absent.
    pub minutes: Option<i64>,
}

/// A started impersonation: the session's tokens (the refresh token works until `ends_at`).
#[derive(Debug, Serialize)]
pub struct Impersonation {
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub impersonator: String,
    pub reason: String,
    pub ends_at: DateTime<Utc>,
    #[serde(flatten)]
    pub tokens: UserTokens,
}

impl Identity {
    /// Start an impersonation of `user`, by whoever `auth` names.
    #[tracing::instrument(level = "debug", name = "identity::impersonate", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
    pub async fn impersonate(
        &self,
        auth: &Authorized,
        user: Uuid,
        new: &NewImpersonation,
        client: &ClientInfo,
    ) -> Result<Impersonation, CoreError> {
        let scope = *auth.require(Permission::UsersImpersonate)?;
        let project = project_of(&scope)?;
        if scope.tenant_kind == authio_db::TenantKind::Platform {
            return Err(CoreError::ImpersonationRefused(
                "platform users (operators and dashboard members) cannot be impersonated",
            ));
        }
        let reason = new.reason.trim();
        if reason.is_empty() || reason.chars().count() > 500 || reason.chars().any(char::is_control) {
            return Err(CoreError::Invalid(ValidationError::Field("reason (1-500 characters)")));
        }
        let minutes = new.minutes.unwrap_or(DEFAULT_MINUTES);
        if !(1..=MAX_MINUTES).contains(&minutes) {
            return Err(CoreError::Invalid(ValidationError::Field("minutes (1-60)")));
        }
        let actor = auth.actor().clone();
        let impersonator: String =
            actor.id.clone().or_else(|| actor.name.clone()).unwrap_or_else(|| actor.kind.as_str().to_owned());
        let impersonator: String = impersonator.chars().take(300).collect();
        let profile = self.profile(project).await?;
        let keys = self.inner.keys.keyset(&profile).await?;
        let now = crate::clock::now_as_stored(self.inner.clock.as_ref());
        let length = Duration::minutes(minutes);
        let session_policy = SessionPolicy { idle: length, absolute: length, ..policy(&profile) };
        let session = NewSession::new(&scope, user, &[], client, &session_policy, now)?;
        let tx = self.inner.router.begin(&scope).await?;
        let u = tx
            .query_opt("SELECT disabled, role FROM users WHERE id = $1 FOR SHARE", &[(&user, Type::UUID)])
            .await?
            .ok_or(CoreError::NotFound(Entity::User))?;
        if u.col::<bool>("disabled")? {
            return Err(CoreError::ImpersonationRefused("the user is disabled"));
        }
        let role: Option<String> = u.col("role")?;
        if role.as_deref() == Some("operator") {
            return Err(CoreError::ImpersonationRefused("users with the operator role cannot be impersonated"));
        }
        session.write_in(&tx).await?;
        tx.query(
            "UPDATE sessions SET impersonator = $2, impersonation_reason = $3 WHERE id = $1",
            &[(&session.id, Type::UUID), (&impersonator, Type::TEXT), (&reason, Type::TEXT)],
        )
        .await?;
        let ends_at = now + length;
        let event = audit::Event {
            action: audit::AuditAction::ImpersonationStarted,
            actor,
            target: Some(("user", user.to_string())),
            client,
            metadata: serde_json::json!({"session_id": session.id, "reason": reason, "ends_at": ends_at,
                                         "minutes": minutes}),
        };
        let imp = Impersonated { impersonator: impersonator.clone(), ends_at: ends_at.timestamp() };
        let tokens = self.user_tokens(
            &keys,
            &profile,
            user,
            session.id,
            &[],
            role,
            session.refresh_token,
            None,
            None,
            Some(&imp),
        )?;
        audit::record_and_commit(tx, &scope, event, now).await?;
        Ok(Impersonation {
            session_id: session.id,
            user_id: user,
            impersonator,
            reason: reason.to_owned(),
            ends_at,
            tokens,
        })
    }
}

impl Identity {
    /// Record the end of every impersonation of `tenants` that ran out by `now`, or that was
    /// ended by an act that did not record it: `impersonation.ended` is written once (actor:
    /// the system; reason `expired`, or the session's `revoked_reason`). A tenant that fails (moving, unreachable) is logged and retried on
    /// the next run. Returns how many ended.
    pub async fn end_expired_impersonations(&self, tenants: &[(Uuid, TenantKind)], now: DateTime<Utc>) -> usize {
        let mut ended = 0;
        for &(tenant, kind) in tenants {
            if kind == TenantKind::Platform {
                continue;
            }
            match self.end_expired_of(tenant, kind, now).await {
                Ok(n) => ended += n,
                Err(e) => tracing::warn!(tenant = %tenant, error = %e, "impersonation expiry not recorded"),
            }
        }
        ended
    }

    async fn end_expired_of(&self, tenant: Uuid, kind: TenantKind, now: DateTime<Utc>) -> Result<usize, CoreError> {
        let router = &self.inner.router;
        let projects = router
            .read(
                &Scope::tenant(tenant, kind),
                "SELECT p FROM authio_expired_impersonations($1, $2) p",
                &[(&tenant, Type::UUID), (&now, Type::TIMESTAMPTZ)],
            )
            .await?;
        let mut ended = 0;
        for row in projects {
            let project: Uuid = row.try_get(0)?;
            let scope = Scope::project(tenant, project, kind);
            let tx = router.begin(&scope).await?;
            let rows = tx
                .query(
                    "UPDATE sessions SET impersonation_ended_at = $1,
                            revoked_at = coalesce(revoked_at, absolute_expires_at),
                            revoked_reason = coalesce(revoked_reason, 'impersonation_expired')
                     WHERE impersonator IS NOT NULL AND impersonation_ended_at IS NULL
                       AND (revoked_at IS NOT NULL OR absolute_expires_at <= $1)
                     RETURNING id, user_id, impersonator, absolute_expires_at, revoked_at, revoked_reason",
                    &[(&now, Type::TIMESTAMPTZ)],
                )
                .await?;
            let client = ClientInfo::default();
            for r in &rows {
                let (sid, user): (Uuid, Uuid) = (r.col("id")?, r.col("user_id")?);
                let (runs_out, revoked): (DateTime<Utc>, DateTime<Utc>) =
                    (r.col("absolute_expires_at")?, r.col("revoked_at")?);
                // Ran out first, or ended by another act (a disabled user, a password reset, a
                // reused refresh token) whose reason the session keeps.
                let (reason, ended_at) = if revoked >= runs_out {
                    ("expired".to_owned(), runs_out)
                } else {
                    (r.col::<Option<String>>("revoked_reason")?.unwrap_or_else(|| "revoked".into()), revoked)
                };
                let event = audit::Event {
                    action: audit::AuditAction::ImpersonationEnded,
                    actor: audit::Actor {
                        kind: audit::ActorKind::System,
                        id: None,
                        name: Some("impersonation expiry".into()),
                    },
                    target: Some(("user", user.to_string())),
                    client: &client,
                    metadata: serde_json::json!({
                        "session_id": sid,
                        "impersonator": r.col::<String>("impersonator")?,
                        "reason": reason,
                        "ended_at": ended_at,
                    }),
                };
                audit::record_in(&tx, &scope, event, now).await?;
            }
            tx.commit().await?;
            ended += rows.len();
        }
        Ok(ended)
    }
}
