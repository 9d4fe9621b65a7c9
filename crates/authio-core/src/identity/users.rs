//! End users of a project. They live at the tenant's home (shared or dedicated database),
//! reached only through scoped transactions.
use authio_db::{PgRow, Router, Row, RowExt, Scope, ScopedTx, Type};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::authz::{Authorized, Permission};
use crate::types::ClientInfo;
use crate::types::{project_of, Email};
use crate::{audit, Clock, CoreError};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: Uuid,
    pub project_id: Uuid,
    pub email: String,
    pub email_verified: bool,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// As the person's single sign-on provider last said (kept at each sign-in through it).
    pub given_name: Option<String>,
    pub family_name: Option<String>,
}

const COLS: &str = "id, project_id, email, email_verified, disabled, created_at, updated_at, given_name, family_name";

impl User {
    pub fn from_read_row(r: &PgRow) -> Result<Self, CoreError> {
        Ok(User {
            id: r.try_get(0)?,
            project_id: r.try_get(1)?,
            email: r.try_get(2)?,
            email_verified: r.try_get(3)?,
            disabled: r.try_get(4)?,
            created_at: r.try_get(5)?,
            updated_at: r.try_get(6)?,
            given_name: r.try_get(7)?,
            family_name: r.try_get(8)?,
        })
    }

    /// A row of [`COLS`].
    fn from_row(r: &Row) -> Result<Self, CoreError> {
        Ok(User {
            id: r.col("id")?,
            project_id: r.col("project_id")?,
            email: r.col("email")?,
            email_verified: r.col("email_verified")?,
            disabled: r.col("disabled")?,
            created_at: r.col("created_at")?,
            updated_at: r.col("updated_at")?,
            given_name: r.col("given_name")?,
            family_name: r.col("family_name")?,
        })
    }
}

/// Create a user (no password) on behalf of the system (seeding, tools).
#[tracing::instrument(level = "debug", name = "users::create", skip_all, fields(tenant = %scope.tenant_id, project = ?scope.project_id))]
pub async fn create(router: &Router, clock: &dyn Clock, scope: &Scope, email: &Email) -> Result<User, CoreError> {
    let system = audit::Actor { kind: crate::audit::ActorKind::System, id: None, name: None };
    create_as(router, clock, scope, email, &system, &ClientInfo::default()).await
}

/// Create a user (no password), with its `user.created` event in the same transaction.
#[tracing::instrument(level = "debug", name = "users::create_by", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn create_by(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    email: &Email,
    client: &ClientInfo,
) -> Result<User, CoreError> {
    create_as(router, clock, auth.require(Permission::UsersManage)?, email, auth.actor(), client).await
}

async fn create_as(
    router: &Router,
    clock: &dyn Clock,
    scope: &Scope,
    email: &Email,
    actor: &audit::Actor,
    client: &ClientInfo,
) -> Result<User, CoreError> {
    let now = clock.now();
    let tx = router.begin(scope).await?;
    let user = insert(&tx, scope, email, None, now).await?;
    let event = audit::Event {
        action: crate::audit::AuditAction::UserCreated,
        actor: actor.clone(),
        target: Some(("user", user.id.to_string())),
        client,
        metadata: serde_json::json!({"email": email.as_str()}),
    };
    audit::record_and_commit(tx, scope, event, now).await?;
    Ok(user)
}

/// Insert a user inside the caller's transaction (`EmailTaken` if the project has one with
/// this email).
pub(crate) async fn insert(
    tx: &ScopedTx,
    scope: &Scope,
    email: &Email,
    password_hash: Option<&str>,
    now: DateTime<Utc>,
) -> Result<User, CoreError> {
    let project = project_of(scope)?;
    // No password account for someone whose organization has them sign in through its own
    // provider (which creates their account at the first sign-in). Platform identities belong
    // to no organization.
    if password_hash.is_some() && scope.tenant_kind == authio_db::TenantKind::Customer {
        crate::identity::sso_policy::refuse_password_account(tx, email.as_str()).await?;
    }
    let id = Uuid::now_v7();
    let row = tx
        .query_opt(
            &format!(
                "INSERT INTO users (tenant_id, project_id, id, email, password_hash, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $6)
                 ON CONFLICT (tenant_id, project_id, email) DO NOTHING RETURNING {COLS}"
            ),
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&id, Type::UUID),
                (&email.as_str(), Type::TEXT),
                (&password_hash, Type::TEXT),
                (&now, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    row.map(|r| User::from_row(&r)).transpose()?.ok_or(CoreError::EmailTaken)
}

/// A page of users in id order (UUIDv7, so creation order), after `after` when given.
#[tracing::instrument(level = "debug", name = "users::list", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn list(router: &Router, auth: &Authorized, limit: i64, after: Option<Uuid>) -> Result<Vec<User>, CoreError> {
    let scope = auth.require(Permission::UsersRead)?;
    let project = project_of(scope)?;
    let limit = limit.clamp(1, 200);
    let after = after.unwrap_or(Uuid::nil());
    // Tenant and project are repeated in the predicate (RLS adds them too) so the index on
    // (tenant_id, project_id, id) serves the page directly. One round trip (Router::read).
    let rows = router
        .read(
            scope,
            &format!(
                "SELECT {COLS} FROM users WHERE tenant_id = $1 AND project_id = $2 AND id > $3 ORDER BY id LIMIT $4"
            ),
            &[(&scope.tenant_id, Type::UUID), (&project, Type::UUID), (&after, Type::UUID), (&limit, Type::INT8)],
        )
        .await?;
    rows.iter().map(User::from_read_row).collect()
}

/// Users whose email contains `query` (case-insensitive), in creation order, at most `limit`.
#[tracing::instrument(level = "debug", name = "users::search", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn search(router: &Router, auth: &Authorized, query: &str, limit: i64) -> Result<Vec<User>, CoreError> {
    let scope = auth.require(Permission::UsersRead)?;
    let project = project_of(scope)?;
    let limit = limit.clamp(1, 200);
    // LIKE's own characters are matched literally.
    let pattern = format!("%{}%", query.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
    let rows = router
        .read(
            scope,
            &format!(
                "SELECT {COLS} FROM users WHERE tenant_id = $1 AND project_id = $2 AND email ILIKE $3
                 ORDER BY id LIMIT $4"
            ),
            &[(&scope.tenant_id, Type::UUID), (&project, Type::UUID), (&pattern, Type::TEXT), (&limit, Type::INT8)],
        )
        .await?;
    rows.iter().map(User::from_read_row).collect()
}

/// One user of the scope's project.
#[tracing::instrument(level = "debug", name = "users::get", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn get(router: &Router, auth: &Authorized, id: Uuid) -> Result<User, CoreError> {
    let scope = auth.require(Permission::UsersRead)?;
    let project = project_of(scope)?;
    let rows = router
        .read(
            scope,
            &format!("SELECT {COLS} FROM users WHERE tenant_id = $1 AND project_id = $2 AND id = $3"),
            &[(&scope.tenant_id, Type::UUID), (&project, Type::UUID), (&id, Type::UUID)],
        )
        .await?;
    rows.first().map(User::from_read_row).transpose()?.ok_or(CoreError::NotFound(crate::types::Entity::User))
}

/// Disable a user (every session ends with it; signing in is refused) or enable it again.
#[tracing::instrument(level = "debug", name = "users::set_disabled", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn set_disabled(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    id: Uuid,
    disabled: bool,
    client: &ClientInfo,
) -> Result<User, CoreError> {
    let scope = auth.require(Permission::UsersManage)?;
    let actor = auth.actor();
    let project = project_of(scope)?;
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin(scope).await?;
    let row = tx
        .query_opt(
            &format!(
                "UPDATE users SET disabled = $4, updated_at = $5
                 WHERE tenant_id = $1 AND project_id = $2 AND id = $3 RETURNING {COLS}"
            ),
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&id, Type::UUID),
                (&disabled, Type::BOOL),
                (&now, Type::TIMESTAMPTZ),
            ],
        )
        .await?
        .ok_or(CoreError::NotFound(crate::types::Entity::User))?;
    if disabled {
        tx.query(
            "UPDATE sessions SET revoked_at = $3, revoked_reason = 'user_disabled'
             WHERE tenant_id = $1 AND user_id = $2 AND revoked_at IS NULL",
            &[(&scope.tenant_id, Type::UUID), (&id, Type::UUID), (&now, Type::TIMESTAMPTZ)],
        )
        .await?;
    }
    let event = audit::Event {
        action: if disabled { crate::audit::AuditAction::UserDisabled } else { crate::audit::AuditAction::UserEnabled },
        actor: actor.clone(),
        target: Some(("user", id.to_string())),
        client,
        metadata: serde_json::json!({}),
    };
    audit::record_and_commit(tx, scope, event, now).await?;
    User::from_row(&row)
}

/// Delete a user with its sessions and identities (the audit log keeps what they did).
#[tracing::instrument(level = "debug", name = "users::delete", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn delete(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    id: Uuid,
    client: &ClientInfo,
) -> Result<(), CoreError> {
    let scope = auth.require(Permission::UsersManage)?;
    let actor = auth.actor();
    let project = project_of(scope)?;
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin(scope).await?;
    let row = tx
        .query_opt(
            "DELETE FROM users WHERE tenant_id = $1 AND project_id = $2 AND id = $3 RETURNING email",
            &[(&scope.tenant_id, Type::UUID), (&project, Type::UUID), (&id, Type::UUID)],
        )
        .await?
        .ok_or(CoreError::NotFound(crate::types::Entity::User))?;
    let email: String = row.col("email")?;
    let event = audit::Event {
        action: crate::audit::AuditAction::UserDeleted,
        actor: actor.clone(),
        target: Some(("user", id.to_string())),
        client,
        metadata: serde_json::json!({"email": email}),
    };
    audit::record_and_commit(tx, scope, event, now).await?;
    Ok(())
}

impl TryFrom<&PgRow> for User {
    type Error = CoreError;

    fn try_from(r: &PgRow) -> Result<Self, CoreError> {
        User::from_read_row(r)
    }
}
