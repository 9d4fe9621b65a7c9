//! Organizations inside a project (the project's own customers), the roles and permissions the
//! project defines, and users' memberships. Every row lives at the tenant's home beside the
//! users (shared or dedicated database), reached through scoped transactions, and moves with
//! the tenant. Each change is audited in its own transaction.
//!
//! A session acts for at most one organization of its user; the refresh rotation
//! (`authio_refresh_rotate`) reads the member's role and permissions as they are at that
//! moment, so a role change shows in the next access token (see `identity::sessions`).
use authio_db::{DbError, Router, Row, RowExt, Scope, ScopedTx, Type};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::authz::{Authorized, Permission};
use crate::types::{project_of, ClientInfo, Entity, ValidationError};
use crate::{audit, Clock, CoreError};

pub mod invitations;

fn bad(field: &'static str) -> CoreError {
    CoreError::Invalid(ValidationError::Field(field))
}

/// `[a-z0-9]`, then up to `max - 1` of `[a-z0-9]` and `extra`.
fn slug_ok(s: &str, max: usize, extra: &[u8]) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(c))
}

fn org_slug_ok(s: &str) -> bool {
    slug_ok(s, 63, b"-") && !s.ends_with('-')
}

pub(crate) fn role_slug_ok(s: &str) -> bool {
    slug_ok(s, 63, b"-_")
}

/// Permission slugs: `read:invoices`, `billing.manage`, ...
pub fn permission_slug_ok(s: &str) -> bool {
    slug_ok(s, 63, b":._-")
}

fn text_ok(s: &str, max: usize) -> bool {
    !s.trim().is_empty() && s.chars().count() <= max && !s.chars().any(char::is_control)
}

/// Organizations, roles and permissions are for customer projects: on the platform tenant a
/// member's `role` claim would stand where the operator role is read.
pub(crate) fn customer_scope(auth: &Authorized, permission: Permission) -> Result<&Scope, CoreError> {
    let scope = auth.require(permission)?;
    if scope.tenant_kind == authio_db::TenantKind::Platform {
        return Err(CoreError::Forbidden("organizations are for customer projects, not the platform tenant"));
    }
    Ok(scope)
}

/// A unique key taken (`23505`) is the caller's conflict, not ours.
fn taken(what: &'static str) -> impl Fn(DbError) -> CoreError {
    move |e| match e.sqlstate() {
        Some("23505") => CoreError::Conflict(format!("{what} is taken in this project")),
        _ => e.into(),
    }
}

async fn commit_with(
    tx: ScopedTx,
    auth: &Authorized,
    action: crate::audit::AuditAction,
    target: (&'static str, String),
    client: &ClientInfo,
    metadata: serde_json::Value,
    now: DateTime<Utc>,
) -> Result<(), CoreError> {
    let scope = auth.scope()?;
    let event = audit::Event { action, actor: auth.actor().clone(), target: Some(target), client, metadata };
    audit::record_and_commit(tx, scope, event, now).await
}

// ---------------------------------------------------------------------------------------
// Organizations

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Organization {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub external_id: Option<String>,
    /// `invite_only` or `auto_join` (a verified email at a verified domain joins).
    pub domain_policy: String,
    /// Its people (members, and addresses at its verified domains) sign in only through its
    /// single sign-on connection.
    pub sso_required: bool,
    /// Its active members sign in with a second factor (enrolling one first if they have none).
    pub mfa_required: bool,
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const ORG_COLS: &str =
    "id, slug, name, external_id, metadata, created_at, updated_at, domain_policy, sso_required, mfa_required";

impl Organization {
    fn from_row(r: &Row) -> Result<Self, CoreError> {
        Ok(Organization {
            id: r.col("id")?,
            slug: r.col("slug")?,
            name: r.col("name")?,
            external_id: r.col("external_id")?,
            domain_policy: r.col("domain_policy")?,
            sso_required: r.col("sso_required")?,
            mfa_required: r.col("mfa_required")?,
            metadata: r.col("metadata")?,
            created_at: r.col("created_at")?,
            updated_at: r.col("updated_at")?,
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrganization {
    pub name: String,
    pub slug: String,
    pub external_id: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub domain_policy: Option<String>,
}

/// A change: absent fields stay; `external_id: null` clears it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrganizationPatch {
    pub name: Option<String>,
    pub slug: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    pub external_id: Option<Option<String>>,
    pub metadata: Option<serde_json::Value>,
    pub domain_policy: Option<String>,
    /// Turning it on needs an enabled single sign-on connection of the organization.
    pub sso_required: Option<bool>,
    /// Its active members must sign in with a second factor.
    pub mfa_required: Option<bool>,
}

fn double_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::<String>::deserialize(d)?))
}

fn check_org_fields(
    name: Option<&str>,
    slug: Option<&str>,
    external_id: Option<&str>,
    metadata: Option<&serde_json::Value>,
    domain_policy: Option<&str>,
) -> Result<(), CoreError> {
    if domain_policy.is_some_and(|p| p != "invite_only" && p != "auto_join") {
        return Err(bad("domain_policy (invite_only or auto_join)"));
    }
    if name.is_some_and(|n| !text_ok(n, 200)) {
        return Err(bad("name (1-200 characters)"));
    }
    if slug.is_some_and(|s| !org_slug_ok(s)) {
        return Err(bad("slug (1-63 of a-z, 0-9 and -, not at the ends)"));
    }
    if external_id.is_some_and(|e| !text_ok(e, 200)) {
        return Err(bad("external_id (1-200 characters)"));
    }
    if let Some(m) = metadata {
        if !m.is_object() || m.to_string().len() > 16384 {
            return Err(bad("metadata (a JSON object, at most 16 KiB)"));
        }
    }
    Ok(())
}

#[tracing::instrument(level = "debug", name = "orgs::create", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn create_organization(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    new: &NewOrganization,
    client: &ClientInfo,
) -> Result<Organization, CoreError> {
    let scope = customer_scope(auth, Permission::UsersManage)?;
    let project = project_of(scope)?;
    check_org_fields(
        Some(&new.name),
        Some(&new.slug),
        new.external_id.as_deref(),
        new.metadata.as_ref(),
        new.domain_policy.as_deref(),
    )?;
    let policy = new.domain_policy.as_deref().unwrap_or("invite_only");
    let metadata = new.metadata.clone().unwrap_or_else(|| serde_json::json!({}));
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin(scope).await?;
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO organizations (tenant_id, project_id, id, slug, name, external_id, metadata, created_at,
                                            updated_at, domain_policy)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9) RETURNING {ORG_COLS}"
            ),
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&Uuid::now_v7(), Type::UUID),
                (&new.slug, Type::TEXT),
                (&new.name, Type::TEXT),
                (&new.external_id, Type::TEXT),
                (&metadata, Type::JSONB),
                (&now, Type::TIMESTAMPTZ),
                (&policy, Type::TEXT),
            ],
        )
        .await
        .map_err(taken("this slug or external id"))?;
    let org = Organization::from_row(&row)?;
    let meta = serde_json::json!({"slug": org.slug, "name": org.name});
    commit_with(
        tx,
        auth,
        crate::audit::AuditAction::OrganizationCreated,
        ("organization", org.id.to_string()),
        client,
        meta,
        now,
    )
    .await?;
    Ok(org)
}

/// A page in creation order after `after`; `name` filters (case-insensitive substring),
/// `domain` to the organization that claimed it.
#[tracing::instrument(level = "debug", name = "orgs::list", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn list_organizations(
    router: &Router,
    auth: &Authorized,
    limit: i64,
    after: Option<Uuid>,
    name: Option<&str>,
    domain: Option<&str>,
) -> Result<Vec<Organization>, CoreError> {
    let scope = auth.require(Permission::UsersRead)?;
    let project = project_of(scope)?;
    let limit = limit.clamp(1, 200);
    let after = after.unwrap_or(Uuid::nil());
    let pattern = name.map(|n| format!("%{}%", n.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")));
    let rows = router
        .read(
            scope,
            &format!(
                "SELECT {ORG_COLS} FROM organizations
                 WHERE tenant_id = $1 AND project_id = $2 AND id > $3 AND ($4::text IS NULL OR name ILIKE $4)
                   AND ($6::text IS NULL OR EXISTS (SELECT 1 FROM organization_domains d
                                                     WHERE d.tenant_id = $1 AND d.organization_id = organizations.id
                                                       AND d.domain = $6))
                 ORDER BY id LIMIT $5"
            ),
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&after, Type::UUID),
                (&pattern, Type::TEXT),
                (&limit, Type::INT8),
                (&domain, Type::TEXT),
            ],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Organization {
                id: r.try_get(0)?,
                slug: r.try_get(1)?,
                name: r.try_get(2)?,
                external_id: r.try_get(3)?,
                metadata: r.try_get(4)?,
                created_at: r.try_get(5)?,
                updated_at: r.try_get(6)?,
                domain_policy: r.try_get(7)?,
                sso_required: r.try_get(8)?,
                mfa_required: r.try_get(9)?,
            })
        })
        .collect()
}

#[tracing::instrument(level = "debug", name = "orgs::get", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn get_organization(router: &Router, auth: &Authorized, id: Uuid) -> Result<Organization, CoreError> {
    let scope = auth.require(Permission::UsersRead)?;
    project_of(scope)?;
    let tx = router.begin(scope).await?;
    let row = tx
        .query_opt(&format!("SELECT {ORG_COLS} FROM organizations WHERE id = $1"), &[(&id, Type::UUID)])
        .await?
        .ok_or(CoreError::NotFound(Entity::Organization))?;
    tx.commit().await?;
    Organization::from_row(&row)
}

#[tracing::instrument(level = "debug", name = "orgs::update", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn update_organization(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    id: Uuid,
    patch: &OrganizationPatch,
    client: &ClientInfo,
) -> Result<Organization, CoreError> {
    let scope = customer_scope(auth, Permission::UsersManage)?;
    project_of(scope)?;
    let ext = patch.external_id.clone().flatten();
    check_org_fields(
        patch.name.as_deref(),
        patch.slug.as_deref(),
        ext.as_deref(),
        patch.metadata.as_ref(),
        patch.domain_policy.as_deref(),
    )?;
    if patch.sso_required == Some(true) {
        // Nobody is locked out: the organization has a way in first.
        let tx = router.begin_pinned(scope).await?;
        let has = tx
            .query_opt(
                "SELECT 1 FROM oauth_connections WHERE organization_id = $1 AND enabled LIMIT 1",
                &[(&id, Type::UUID)],
            )
            .await?
            .is_some();
        tx.commit().await?;
        if !has {
            return Err(CoreError::Conflict(
                "the organization has no enabled single sign-on connection: add one before requiring it".into(),
            ));
        }
    }
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin(scope).await?;
    let row = tx
        .query_opt(
            &format!(
                "UPDATE organizations SET name = coalesce($2, name), slug = coalesce($3, slug),
                        external_id = CASE WHEN $4 THEN $5 ELSE external_id END,
                        metadata = coalesce($6, metadata), updated_at = $7,
                        domain_policy = coalesce($8, domain_policy),
                        sso_required = coalesce($9, sso_required),
                        mfa_required = coalesce($10, mfa_required)
                 WHERE id = $1 RETURNING {ORG_COLS}"
            ),
            &[
                (&id, Type::UUID),
                (&patch.name, Type::TEXT),
                (&patch.slug, Type::TEXT),
                (&patch.external_id.is_some(), Type::BOOL),
                (&ext, Type::TEXT),
                (&patch.metadata, Type::JSONB),
                (&now, Type::TIMESTAMPTZ),
                (&patch.domain_policy, Type::TEXT),
                (&patch.sso_required, Type::BOOL),
                (&patch.mfa_required, Type::BOOL),
            ],
        )
        .await
        .map_err(taken("this slug or external id"))?
        .ok_or(CoreError::NotFound(Entity::Organization))?;
    let org = Organization::from_row(&row)?;
    let meta = serde_json::json!({
        "slug": patch.slug, "name": patch.name, "domain_policy": patch.domain_policy, "sso_required": patch.sso_required,
        "mfa_required": patch.mfa_required,
    });
    commit_with(
        tx,
        auth,
        crate::audit::AuditAction::OrganizationUpdated,
        ("organization", id.to_string()),
        client,
        meta,
        now,
    )
    .await?;
    Ok(org)
}

/// Delete an organization and its memberships; sessions acting for it leave it at their next
/// refresh.
#[tracing::instrument(level = "debug", name = "orgs::delete", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn delete_organization(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    id: Uuid,
    client: &ClientInfo,
) -> Result<(), CoreError> {
    let scope = customer_scope(auth, Permission::UsersManage)?;
    project_of(scope)?;
    let now = crate::clock::now_as_stored(clock);
    // First its single sign-on connections (on the shared database): nothing is left that
    // would sign people into an organization that is gone, and a failure here leaves the
    // organization to delete again. (Only an organization of this project has any: row-level
    // security scopes the delete to it.)
    let tx = router.begin_pinned(scope).await?;
    let gone = tx
        .query("DELETE FROM oauth_connections WHERE organization_id = $1 RETURNING id, slug", &[(&id, Type::UUID)])
        .await?;
    for c in &gone {
        let event = audit::Event {
            action: crate::audit::AuditAction::ConnectionDeleted,
            actor: auth.actor().clone(),
            target: Some(("connection", c.col::<Uuid>("id")?.to_string())),
            client,
            metadata: serde_json::json!({"slug": c.col::<String>("slug")?, "organization_id": id}),
        };
        audit::record_pinned(&tx, scope, event, now).await?;
    }
    // Its directories' tokens too: a SCIM request for a directory that goes with the
    // organization is refused at the door, not half-served.
    let tokens = tx
        .query("DELETE FROM directory_tokens WHERE organization_id = $1 RETURNING directory_id", &[(&id, Type::UUID)])
        .await?;
    for t in &tokens {
        let event = audit::Event {
            action: crate::audit::AuditAction::DirectoryTokenRevoked,
            actor: auth.actor().clone(),
            target: Some(("directory", t.col::<Uuid>("directory_id")?.to_string())),
            client,
            metadata: serde_json::json!({"organization_id": id, "reason": "organization_deleted"}),
        };
        audit::record_pinned(&tx, scope, event, now).await?;
    }
    tx.commit().await?;
    let tx = router.begin(scope).await?;
    let row = tx
        .query_opt("DELETE FROM organizations WHERE id = $1 RETURNING slug", &[(&id, Type::UUID)])
        .await?
        .ok_or(CoreError::NotFound(Entity::Organization))?;
    let slug: String = row.col("slug")?;
    let meta = serde_json::json!({"slug": slug});
    commit_with(
        tx,
        auth,
        crate::audit::AuditAction::OrganizationDeleted,
        ("organization", id.to_string()),
        client,
        meta,
        now,
    )
    .await
}

// ---------------------------------------------------------------------------------------
// Organization domains

/// An organization's email domain and how to prove it (a TXT record, like custom domains).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OrgDomain {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub domain: String,
    pub verified: bool,
    pub verified_at: Option<DateTime<Utc>>,
    /// Publish a TXT record at this name ...
    pub txt_name: String,
    /// ... with this value, then ask for verification.
    pub txt_value: String,
    pub created_at: DateTime<Utc>,
}

const DOMAIN_COLS: &str = "id, organization_id, domain, verification_token, verified_at, created_at";

impl OrgDomain {
    fn from_row(r: &Row) -> Result<Self, CoreError> {
        let domain: String = r.col("domain")?;
        let token: String = r.col("verification_token")?;
        let verified_at: Option<DateTime<Utc>> = r.col("verified_at")?;
        Ok(OrgDomain {
            id: r.col("id")?,
            organization_id: r.col("organization_id")?,
            txt_name: format!("_authio-org.{domain}"),
            txt_value: format!("authio-org-verification={token}"),
            domain,
            verified: verified_at.is_some(),
            verified_at,
            created_at: r.col("created_at")?,
        })
    }
}

/// Claim a domain for an organization: one organization per domain in a project (409).
pub async fn add_domain(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    org: Uuid,
    domain: &crate::types::DomainName,
    client: &ClientInfo,
) -> Result<OrgDomain, CoreError> {
    let scope = customer_scope(auth, Permission::UsersManage)?;
    let project = project_of(scope)?;
    let now = crate::clock::now_as_stored(clock);
    let token = crate::crypto::opaque::random_hex::<16>();
    let tx = router.begin(scope).await?;
    tx.query_opt("SELECT 1 FROM organizations WHERE id = $1 FOR SHARE", &[(&org, Type::UUID)])
        .await?
        .ok_or(CoreError::NotFound(Entity::Organization))?;
    let row = tx
        .query_opt(
            &format!(
                "INSERT INTO organization_domains (tenant_id, project_id, organization_id, id, domain, verification_token,
                                                   created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING {DOMAIN_COLS}"
            ),
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&org, Type::UUID),
                (&Uuid::now_v7(), Type::UUID),
                (&domain.as_str(), Type::TEXT),
                (&token, Type::TEXT),
                (&now, Type::TIMESTAMPTZ),
            ],
        )
        .await?
        .ok_or_else(|| CoreError::Conflict("this domain belongs to an organization of this project already".into()))?;
    let d = OrgDomain::from_row(&row)?;
    let meta = serde_json::json!({"domain": d.domain, "change": "domain_added"});
    commit_with(
        tx,
        auth,
        crate::audit::AuditAction::OrganizationUpdated,
        ("organization", org.to_string()),
        client,
        meta,
        now,
    )
    .await?;
    Ok(d)
}

pub async fn list_domains(router: &Router, auth: &Authorized, org: Uuid) -> Result<Vec<OrgDomain>, CoreError> {
    let scope = auth.require(Permission::UsersRead)?;
    project_of(scope)?;
    let tx = router.begin(scope).await?;
    tx.query_opt("SELECT 1 FROM organizations WHERE id = $1", &[(&org, Type::UUID)])
        .await?
        .ok_or(CoreError::NotFound(Entity::Organization))?;
    let rows = tx
        .query(
            &format!("SELECT {DOMAIN_COLS} FROM organization_domains WHERE organization_id = $1 ORDER BY domain"),
            &[(&org, Type::UUID)],
        )
        .await?;
    tx.commit().await?;
    rows.iter().map(OrgDomain::from_row).collect()
}

/// Look for the domain's TXT record; verified once it is there.
pub async fn verify_domain(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    org: Uuid,
    id: Uuid,
    dns: &dyn crate::project::config::TxtLookup,
    client: &ClientInfo,
) -> Result<OrgDomain, CoreError> {
    let scope = customer_scope(auth, Permission::UsersManage)?;
    project_of(scope)?;
    let tx = router.begin(scope).await?;
    let row = tx
        .query_opt(
            &format!("SELECT {DOMAIN_COLS} FROM organization_domains WHERE id = $1 AND organization_id = $2"),
            &[(&id, Type::UUID), (&org, Type::UUID)],
        )
        .await?
        .ok_or(CoreError::NotFound(Entity::Domain))?;
    tx.commit().await?;
    let d = OrgDomain::from_row(&row)?;
    if d.verified {
        return Ok(d);
    }
    // The lookup happens outside any transaction: DNS can be slow.
    if !crate::project::config::txt_record_present(dns, &d.txt_name, &d.txt_value).await? {
        return Err(CoreError::DomainNotVerified(d.txt_name, d.txt_value));
    }
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin(scope).await?;
    let row = tx
        .query_opt(
            &format!(
                "UPDATE organization_domains SET verified_at = coalesce(verified_at, $3)
                 WHERE id = $1 AND organization_id = $2 RETURNING {DOMAIN_COLS}"
            ),
            &[(&id, Type::UUID), (&org, Type::UUID), (&now, Type::TIMESTAMPTZ)],
        )
        .await?
        .ok_or(CoreError::NotFound(Entity::Domain))?;
    let d = OrgDomain::from_row(&row)?;
    let meta = serde_json::json!({"domain": d.domain, "change": "domain_verified"});
    commit_with(
        tx,
        auth,
        crate::audit::AuditAction::OrganizationUpdated,
        ("organization", org.to_string()),
        client,
        meta,
        now,
    )
    .await?;
    Ok(d)
}

pub async fn delete_domain(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    org: Uuid,
    id: Uuid,
    client: &ClientInfo,
) -> Result<(), CoreError> {
    let scope = customer_scope(auth, Permission::UsersManage)?;
    project_of(scope)?;
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin(scope).await?;
    let row = tx
        .query_opt(
            "DELETE FROM organization_domains WHERE id = $1 AND organization_id = $2 RETURNING domain",
            &[(&id, Type::UUID), (&org, Type::UUID)],
        )
        .await?
        .ok_or(CoreError::NotFound(Entity::Domain))?;
    let domain: String = row.col("domain")?;
    let meta = serde_json::json!({"domain": domain, "change": "domain_removed"});
    commit_with(
        tx,
        auth,
        crate::audit::AuditAction::OrganizationUpdated,
        ("organization", org.to_string()),
        client,
        meta,
        now,
    )
    .await
}

// ---------------------------------------------------------------------------------------
// Permissions and roles

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PermissionDef {
    pub slug: String,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPermission {
    pub slug: String,
    pub description: Option<String>,
}

#[tracing::instrument(level = "debug", name = "orgs::define_permission", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn define_permission(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    new: &NewPermission,
    client: &ClientInfo,
) -> Result<PermissionDef, CoreError> {
    let scope = customer_scope(auth, Permission::ProjectConfigure)?;
    let project = project_of(scope)?;
    if !permission_slug_ok(&new.slug) {
        return Err(bad("slug (1-63 of a-z, 0-9, and : . _ -)"));
    }
    if new.description.as_deref().is_some_and(|d| !text_ok(d, 500)) {
        return Err(bad("description (1-500 characters)"));
    }
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin(scope).await?;
    let row = tx
        .query_one(
            "INSERT INTO permissions (tenant_id, project_id, slug, description, created_at) VALUES ($1, $2, $3, $4, $5)
             RETURNING slug, description, created_at",
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&new.slug, Type::TEXT),
                (&new.description, Type::TEXT),
                (&now, Type::TIMESTAMPTZ),
            ],
        )
        .await
        .map_err(taken("this permission"))?;
    let def = PermissionDef {
        slug: row.col("slug")?,
        description: row.col("description")?,
        created_at: row.col("created_at")?,
    };
    let meta = serde_json::json!({"slug": def.slug});
    commit_with(
        tx,
        auth,
        crate::audit::AuditAction::RolePermissionDefined,
        ("permission", def.slug.clone()),
        client,
        meta,
        now,
    )
    .await?;
    Ok(def)
}

pub async fn list_permissions(router: &Router, auth: &Authorized) -> Result<Vec<PermissionDef>, CoreError> {
    let scope = auth.require(Permission::ProjectRead)?;
    project_of(scope)?;
    let tx = router.begin(scope).await?;
    let rows = tx.query("SELECT slug, description, created_at FROM permissions ORDER BY slug", &[]).await?;
    tx.commit().await?;
    rows.iter()
        .map(|r| {
            Ok(PermissionDef {
                slug: r.col("slug")?,
                description: r.col("description")?,
                created_at: r.col("created_at")?,
            })
        })
        .collect()
}

/// Refused (409) while a role grants it.
pub async fn delete_permission(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    slug: &str,
    client: &ClientInfo,
) -> Result<(), CoreError> {
    let scope = customer_scope(auth, Permission::ProjectConfigure)?;
    project_of(scope)?;
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin(scope).await?;
    // The permission first (a role being written holds it FOR SHARE until it commits), then
    // the roles that grant it.
    tx.query_opt("SELECT slug FROM permissions WHERE slug = $1 FOR UPDATE", &[(&slug, Type::TEXT)])
        .await?
        .ok_or(CoreError::NotFound(Entity::Permission))?;
    let used =
        tx.query("SELECT slug FROM roles WHERE $1 = ANY (permissions) FOR UPDATE", &[(&slug, Type::TEXT)]).await?;
    if let Some(r) = used.first() {
        let role: String = r.col("slug")?;
        return Err(CoreError::Conflict(format!(
            "the role {role} grants this permission: take it out of the role first"
        )));
    }
    tx.query_opt("DELETE FROM permissions WHERE slug = $1 RETURNING slug", &[(&slug, Type::TEXT)])
        .await?
        .ok_or(CoreError::NotFound(Entity::Permission))?;
    let meta = serde_json::json!({"slug": slug});
    commit_with(
        tx,
        auth,
        crate::audit::AuditAction::RolePermissionDeleted,
        ("permission", slug.to_owned()),
        client,
        meta,
        now,
    )
    .await
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Role {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub permissions: Vec<String>,
    pub is_default: bool,
    /// The organization whose own role set it belongs to (assignable there only); `None`:
    /// a project-wide role.
    pub organization_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const ROLE_COLS: &str = "id, slug, name, permissions, is_default, organization_id, created_at, updated_at";

impl Role {
    fn from_row(r: &Row) -> Result<Self, CoreError> {
        Ok(Role {
            id: r.col("id")?,
            slug: r.col("slug")?,
            name: r.col("name")?,
            permissions: r.col("permissions")?,
            is_default: r.col("is_default")?,
            organization_id: r.col("organization_id")?,
            created_at: r.col("created_at")?,
            updated_at: r.col("updated_at")?,
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRole {
    pub slug: String,
    pub name: String,
    #[serde(default)]
    pub permissions: Vec<String>,
    /// The role new members get when none is named (one per project).
    #[serde(default)]
    pub is_default: bool,
    /// Make it one organization's own role (never the default).
    pub organization_id: Option<Uuid>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolePatch {
    pub name: Option<String>,
    pub permissions: Option<Vec<String>>,
    pub is_default: Option<bool>,
}

/// Every permission named must be defined (in the same transaction, which locks them).
async fn check_permissions(tx: &ScopedTx, permissions: &[String]) -> Result<(), CoreError> {
    if permissions.len() > 200 || permissions.iter().any(|p| !permission_slug_ok(p)) {
        return Err(bad("permissions (up to 200 permission slugs)"));
    }
    let rows = tx
        .query("SELECT slug FROM permissions WHERE slug = ANY ($1) FOR SHARE", &[(&permissions, Type::TEXT_ARRAY)])
        .await?;
    let known: Vec<String> = rows.iter().map(|r| r.col("slug")).collect::<Result<_, _>>()?;
    if let Some(missing) = permissions.iter().find(|p| !known.contains(p)) {
        return Err(CoreError::UndefinedPermission(missing.clone()));
    }
    Ok(())
}

#[tracing::instrument(level = "debug", name = "orgs::create_role", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn create_role(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    new: &NewRole,
    client: &ClientInfo,
) -> Result<Role, CoreError> {
    let scope = customer_scope(auth, Permission::ProjectConfigure)?;
    let project = project_of(scope)?;
    if !role_slug_ok(&new.slug) {
        return Err(bad("slug (1-63 of a-z, 0-9, _ and -)"));
    }
    if !text_ok(&new.name, 100) {
        return Err(bad("name (1-100 characters)"));
    }
    if new.is_default && new.organization_id.is_some() {
        return Err(bad("is_default (an organization's own role cannot be the project's default)"));
    }
    let mut permissions = new.permissions.clone();
    permissions.sort();
    permissions.dedup();
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin(scope).await?;
    if let Some(org) = new.organization_id {
        tx.query_opt("SELECT 1 FROM organizations WHERE id = $1 FOR SHARE", &[(&org, Type::UUID)])
            .await?
            .ok_or(CoreError::NotFound(Entity::Organization))?;
    }
    check_permissions(&tx, &permissions).await?;
    if new.is_default {
        tx.query("UPDATE roles SET is_default = false, updated_at = $1 WHERE is_default", &[(&now, Type::TIMESTAMPTZ)])
            .await?;
    }
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO roles (tenant_id, project_id, id, slug, name, permissions, is_default, created_at, updated_at,
                                    organization_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9) RETURNING {ROLE_COLS}"
            ),
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&Uuid::now_v7(), Type::UUID),
                (&new.slug, Type::TEXT),
                (&new.name, Type::TEXT),
                (&permissions, Type::TEXT_ARRAY),
                (&new.is_default, Type::BOOL),
                (&now, Type::TIMESTAMPTZ),
                (&new.organization_id, Type::UUID),
            ],
        )
        .await
        .map_err(taken("this role slug"))?;
    let role = Role::from_row(&row)?;
    let meta = serde_json::json!({"slug": role.slug, "permissions": role.permissions, "is_default": role.is_default,
                                  "organization_id": role.organization_id});
    commit_with(tx, auth, crate::audit::AuditAction::RoleCreated, ("role", role.id.to_string()), client, meta, now)
        .await?;
    Ok(role)
}

/// Every role of the project; with `org`, the roles assignable there (project-wide and that
/// organization's own).
pub async fn list_roles(router: &Router, auth: &Authorized, org: Option<Uuid>) -> Result<Vec<Role>, CoreError> {
    let scope = auth.require(Permission::ProjectRead)?;
    project_of(scope)?;
    let tx = router.begin(scope).await?;
    let rows = tx
        .query(
            &format!(
                "SELECT {ROLE_COLS} FROM roles
                 WHERE $1::uuid IS NULL OR organization_id IS NULL OR organization_id = $1 ORDER BY slug"
            ),
            &[(&org, Type::UUID)],
        )
        .await?;
    tx.commit().await?;
    rows.iter().map(Role::from_row).collect()
}

/// Change a role: members see the change in their next access token (at their next refresh).
#[tracing::instrument(level = "debug", name = "orgs::update_role", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn update_role(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    id: Uuid,
    patch: &RolePatch,
    client: &ClientInfo,
) -> Result<Role, CoreError> {
    let scope = customer_scope(auth, Permission::ProjectConfigure)?;
    project_of(scope)?;
    if patch.name.as_deref().is_some_and(|n| !text_ok(n, 100)) {
        return Err(bad("name (1-100 characters)"));
    }
    let permissions = patch.permissions.clone().map(|mut p| {
        p.sort();
        p.dedup();
        p
    });
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin(scope).await?;
    if let Some(p) = &permissions {
        check_permissions(&tx, p).await?;
    }
    if patch.is_default == Some(true) {
        let own = tx.query_opt("SELECT organization_id FROM roles WHERE id = $1", &[(&id, Type::UUID)]).await?;
        if own.map(|r| r.col::<Option<Uuid>>("organization_id")).transpose()?.flatten().is_some() {
            return Err(bad("is_default (an organization's own role cannot be the project's default)"));
        }
        tx.query(
            "UPDATE roles SET is_default = false, updated_at = $2 WHERE is_default AND id <> $1",
            &[(&id, Type::UUID), (&now, Type::TIMESTAMPTZ)],
        )
        .await?;
    }
    let row = tx
        .query_opt(
            &format!(
                "UPDATE roles SET name = coalesce($2, name), permissions = coalesce($3, permissions),
                        is_default = coalesce($4, is_default), updated_at = $5
                 WHERE id = $1 RETURNING {ROLE_COLS}"
            ),
            &[
                (&id, Type::UUID),
                (&patch.name, Type::TEXT),
                (&permissions, Type::TEXT_ARRAY),
                (&patch.is_default, Type::BOOL),
                (&now, Type::TIMESTAMPTZ),
            ],
        )
        .await?
        .ok_or(CoreError::NotFound(Entity::Role))?;
    let role = Role::from_row(&row)?;
    let meta = serde_json::json!({"slug": role.slug, "permissions": permissions, "is_default": patch.is_default});
    commit_with(tx, auth, crate::audit::AuditAction::RoleUpdated, ("role", id.to_string()), client, meta, now).await?;
    Ok(role)
}

/// Refused (409 `role_in_use`) while a membership has it.
pub async fn delete_role(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    id: Uuid,
    client: &ClientInfo,
) -> Result<(), CoreError> {
    let scope = customer_scope(auth, Permission::ProjectConfigure)?;
    project_of(scope)?;
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin(scope).await?;
    let row = tx
        .query_opt("DELETE FROM roles WHERE id = $1 RETURNING slug", &[(&id, Type::UUID)])
        .await
        .map_err(|e| match e.sqlstate() {
            Some("23503") => CoreError::RoleInUse,
            _ => e.into(),
        })?
        .ok_or(CoreError::NotFound(Entity::Role))?;
    let slug: String = row.col("slug")?;
    let meta = serde_json::json!({"slug": slug});
    commit_with(tx, auth, crate::audit::AuditAction::RoleDeleted, ("role", id.to_string()), client, meta, now).await
}

// ---------------------------------------------------------------------------------------
// Memberships

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Membership {
    pub organization_id: Uuid,
    pub user_id: Uuid,
    /// The role's slug.
    pub role: String,
    /// `active`, `invited` or `deactivated`.
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const MEMBER_SELECT: &str = "SELECT m.organization_id, m.user_id, r.slug AS role, m.status, m.created_at, m.updated_at
     FROM memberships m JOIN roles r ON r.tenant_id = m.tenant_id AND r.id = m.role_id";

impl Membership {
    fn from_row(r: &Row) -> Result<Self, CoreError> {
        Ok(Membership {
            organization_id: r.col("organization_id")?,
            user_id: r.col("user_id")?,
            role: r.col("role")?,
            status: r.col("status")?,
            created_at: r.col("created_at")?,
            updated_at: r.col("updated_at")?,
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    pub user_id: Uuid,
    /// A role slug; absent, the project's default role.
    pub role: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberPatch {
    pub role: Option<String>,
    /// `active` or `deactivated`.
    pub status: Option<String>,
}

/// The id of a role by slug, or of the default role: a project-wide role, or one of `org`'s
/// own (another organization's is not found).
pub(crate) async fn role_id(tx: &ScopedTx, slug: Option<&str>, org: Option<Uuid>) -> Result<Uuid, CoreError> {
    let row = match slug {
        Some(s) => {
            tx.query_opt(
                "SELECT id FROM roles WHERE slug = $1 AND (organization_id IS NULL OR organization_id = $2) FOR SHARE",
                &[(&s, Type::TEXT), (&org, Type::UUID)],
            )
            .await?
        }
        None => tx.query_opt("SELECT id FROM roles WHERE is_default FOR SHARE", &[]).await?,
    };
    match (row, slug) {
        (Some(r), _) => Ok(r.col("id")?),
        (None, Some(_)) => Err(CoreError::NotFound(Entity::Role)),
        (None, None) => Err(bad("role (the project has no default role: name one)")),
    }
}

async fn member_row(tx: &ScopedTx, org: Uuid, user: Uuid) -> Result<Membership, CoreError> {
    let row = tx
        .query_opt(
            &format!("{MEMBER_SELECT} WHERE m.organization_id = $1 AND m.user_id = $2"),
            &[(&org, Type::UUID), (&user, Type::UUID)],
        )
        .await?
        .ok_or(CoreError::NotFound(Entity::Membership))?;
    Membership::from_row(&row)
}

#[tracing::instrument(level = "debug", name = "orgs::add_member", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn add_member(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    org: Uuid,
    new: &NewMember,
    client: &ClientInfo,
) -> Result<Membership, CoreError> {
    let scope = customer_scope(auth, Permission::UsersManage)?;
    let project = project_of(scope)?;
    if new.role.as_deref().is_some_and(|r| !role_slug_ok(r)) {
        return Err(bad("role (a role slug)"));
    }
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin(scope).await?;
    // Both must be of this project (row-level security hides any other).
    tx.query_opt("SELECT 1 FROM organizations WHERE id = $1 FOR SHARE", &[(&org, Type::UUID)])
        .await?
        .ok_or(CoreError::NotFound(Entity::Organization))?;
    tx.query_opt("SELECT 1 FROM users WHERE id = $1 FOR SHARE", &[(&new.user_id, Type::UUID)])
        .await?
        .ok_or(CoreError::NotFound(Entity::User))?;
    let role = role_id(&tx, new.role.as_deref(), Some(org)).await?;
    let inserted = tx
        .query_opt(
            "INSERT INTO memberships (tenant_id, project_id, organization_id, user_id, role_id, status, created_at,
                                      updated_at)
             VALUES ($1, $2, $3, $4, $5, 'active', $6, $6) ON CONFLICT DO NOTHING RETURNING user_id",
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&org, Type::UUID),
                (&new.user_id, Type::UUID),
                (&role, Type::UUID),
                (&now, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    if inserted.is_none() {
        return Err(CoreError::Conflict("the user is a member of this organization already".into()));
    }
    let m = member_row(&tx, org, new.user_id).await?;
    let meta = serde_json::json!({"organization_id": org, "role": m.role});
    commit_with(
        tx,
        auth,
        crate::audit::AuditAction::MembershipAdded,
        ("user", new.user_id.to_string()),
        client,
        meta,
        now,
    )
    .await?;
    Ok(m)
}

pub async fn list_members(router: &Router, auth: &Authorized, org: Uuid) -> Result<Vec<Membership>, CoreError> {
    let scope = auth.require(Permission::UsersRead)?;
    project_of(scope)?;
    let tx = router.begin(scope).await?;
    tx.query_opt("SELECT 1 FROM organizations WHERE id = $1", &[(&org, Type::UUID)])
        .await?
        .ok_or(CoreError::NotFound(Entity::Organization))?;
    let rows = tx
        .query(&format!("{MEMBER_SELECT} WHERE m.organization_id = $1 ORDER BY m.user_id"), &[(&org, Type::UUID)])
        .await?;
    tx.commit().await?;
    rows.iter().map(Membership::from_row).collect()
}

/// A user's active membership of an organization, as a session acting for it carries it
/// (`None`: not an active member).
pub async fn active_membership(
    router: &Router,
    scope: &Scope,
    org: Uuid,
    user: Uuid,
) -> Result<Option<crate::identity::auth::OrgContext>, CoreError> {
    let rows = router
        .read(
            scope,
            "SELECT r.slug, r.permissions FROM memberships m JOIN roles r ON r.tenant_id = m.tenant_id AND r.id = m.role_id
             WHERE m.organization_id = $1 AND m.user_id = $2 AND m.status = 'active'",
            &[(&org, Type::UUID), (&user, Type::UUID)],
        )
        .await?;
    rows.first()
        .map(|r| Ok(crate::identity::auth::OrgContext { id: org, role: r.try_get(0)?, permissions: r.try_get(1)? }))
        .transpose()
}

/// Join `user` to `org` by the organization's domain policy (`auto_join`, a verified email at
/// one of its verified domains, the default role), with its audit event: the same rule the
/// refresh rotation applies (`authio_org_join_by_domain`). Returns whether the user joined.
pub async fn join_by_domain(
    router: &Router,
    scope: &Scope,
    org: Uuid,
    user: Uuid,
    now: DateTime<Utc>,
) -> Result<bool, CoreError> {
    let project = project_of(scope)?;
    let tx = router.begin(scope).await?;
    let row = tx
        .query_one(
            "SELECT authio_org_join_by_domain($1, $2, $3, $4, $5) AS role_id",
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&org, Type::UUID),
                (&user, Type::UUID),
                (&now, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    if row.col::<Option<Uuid>>("role_id")?.is_none() {
        return Ok(false);
    }
    let event = audit::Event {
        action: crate::audit::AuditAction::MembershipAdded,
        actor: audit::Actor::user(user, None),
        target: Some(("user", user.to_string())),
        client: &ClientInfo::default(),
        metadata: serde_json::json!({"organization_id": org, "by": "domain_policy"}),
    };
    audit::record_and_commit(tx, scope, event, now).await?;
    Ok(true)
}

/// An organization the hosted picker offers a user: one they are an active member of, or one
/// they may join by its domain policy (`joins`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrgChoice {
    pub id: Uuid,
    pub name: String,
    pub joins: bool,
}

/// What the organization picker shows `user`, by name: active memberships, then the
/// organizations whose domain policy would admit them (the rule of
/// `authio_org_join_by_domain`).
pub async fn choices_for(router: &Router, scope: &Scope, user: Uuid) -> Result<Vec<OrgChoice>, CoreError> {
    let rows = router
        .read(
            scope,
            "SELECT o.id, o.name, false AS joins FROM memberships m JOIN organizations o
                    ON o.tenant_id = m.tenant_id AND o.id = m.organization_id
              WHERE m.user_id = $1 AND m.status = 'active'
             UNION ALL
             SELECT o.id, o.name, true FROM organizations o
               JOIN organization_domains d ON d.tenant_id = o.tenant_id AND d.organization_id = o.id
                    AND d.verified_at IS NOT NULL
               JOIN users u ON u.tenant_id = o.tenant_id AND u.id = $1 AND u.email_verified AND NOT u.disabled
                    AND d.domain = split_part(u.email, '@', 2)
              WHERE o.domain_policy = 'auto_join'
                AND EXISTS (SELECT 1 FROM roles ro WHERE ro.tenant_id = o.tenant_id AND ro.project_id = o.project_id
                            AND ro.is_default)
                AND NOT EXISTS (SELECT 1 FROM memberships x WHERE x.tenant_id = o.tenant_id
                                AND x.organization_id = o.id AND x.user_id = $1)
              ORDER BY 3, 2 LIMIT 100",
            &[(&user, Type::UUID)],
        )
        .await?;
    rows.iter().map(|r| Ok(OrgChoice { id: r.try_get(0)?, name: r.try_get(1)?, joins: r.try_get(2)? })).collect()
}

#[tracing::instrument(level = "debug", name = "orgs::update_member", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn update_member(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    org: Uuid,
    user: Uuid,
    patch: &MemberPatch,
    client: &ClientInfo,
) -> Result<Membership, CoreError> {
    let scope = customer_scope(auth, Permission::UsersManage)?;
    project_of(scope)?;
    if patch.role.as_deref().is_some_and(|r| !role_slug_ok(r)) {
        return Err(bad("role (a role slug)"));
    }
    if patch.status.as_deref().is_some_and(|s| s != "active" && s != "deactivated") {
        return Err(bad("status (active or deactivated)"));
    }
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin(scope).await?;
    let role = match &patch.role {
        Some(r) => Some(role_id(&tx, Some(r), Some(org)).await?),
        None => None,
    };
    tx.query_opt(
        "UPDATE memberships SET role_id = coalesce($3, role_id), status = coalesce($4, status), updated_at = $5
         WHERE organization_id = $1 AND user_id = $2 RETURNING user_id",
        &[
            (&org, Type::UUID),
            (&user, Type::UUID),
            (&role, Type::UUID),
            (&patch.status, Type::TEXT),
            (&now, Type::TIMESTAMPTZ),
        ],
    )
    .await?
    .ok_or(CoreError::NotFound(Entity::Membership))?;
    let m = member_row(&tx, org, user).await?;
    let meta = serde_json::json!({"organization_id": org, "role": patch.role, "status": patch.status});
    commit_with(tx, auth, crate::audit::AuditAction::MembershipUpdated, ("user", user.to_string()), client, meta, now)
        .await?;
    Ok(m)
}

pub async fn remove_member(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    org: Uuid,
    user: Uuid,
    client: &ClientInfo,
) -> Result<(), CoreError> {
    let scope = customer_scope(auth, Permission::UsersManage)?;
    project_of(scope)?;
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin(scope).await?;
    tx.query_opt(
        "DELETE FROM memberships WHERE organization_id = $1 AND user_id = $2 RETURNING user_id",
        &[(&org, Type::UUID), (&user, Type::UUID)],
    )
    .await?
    .ok_or(CoreError::NotFound(Entity::Membership))?;
    let meta = serde_json::json!({"organization_id": org});
    commit_with(tx, auth, crate::audit::AuditAction::MembershipRemoved, ("user", user.to_string()), client, meta, now)
        .await
}

/// The organization that has verified the domain of `email`, if any (single sign-on routing).
pub async fn organization_for_email(
    router: &Router,
    scope: &authio_db::Scope,
    email: &str,
) -> Result<Option<Uuid>, CoreError> {
    let Some((_, domain)) = email.trim().rsplit_once('@') else { return Ok(None) };
    let domain = domain.to_ascii_lowercase();
    if domain.is_empty() || domain.len() > 253 {
        return Ok(None);
    }
    let tx = router.begin(scope).await?;
    let row = tx
        .query_opt(
            "SELECT organization_id FROM organization_domains WHERE domain = $1 AND verified_at IS NOT NULL",
            &[(&domain, Type::TEXT)],
        )
        .await?;
    tx.commit().await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// What single sign-on did to a member's place in its organization.
pub(crate) struct SsoMembership {
    pub role: String,
    /// `membership.added` or `membership.updated` to record, if anything changed.
    pub change: Option<crate::audit::AuditAction>,
}

/// Just-in-time membership for a single sign-on: the user joins `org` (with `mapped` role, or
/// the default one), an invited membership becomes active, and a member's role follows the
/// provider's groups at every sign-in. A member an administrator deactivated stays out.
pub(crate) async fn provision_sso_member(
    tx: &ScopedTx,
    scope: &Scope,
    org: Uuid,
    user: Uuid,
    mapped: Option<&str>,
    now: DateTime<Utc>,
) -> Result<SsoMembership, CoreError> {
    let project = project_of(scope)?;
    tx.query_opt("SELECT 1 FROM organizations WHERE id = $1 FOR SHARE", &[(&org, Type::UUID)])
        .await?
        .ok_or(CoreError::NotFound(Entity::Organization))?;
    let existing = tx
        .query_opt(
            "SELECT m.status, r.slug FROM memberships m JOIN roles r ON r.tenant_id = m.tenant_id AND r.id = m.role_id
              WHERE m.organization_id = $1 AND m.user_id = $2 FOR UPDATE OF m",
            &[(&org, Type::UUID), (&user, Type::UUID)],
        )
        .await?;
    match existing {
        None => {
            let role = role_id(tx, mapped, Some(org)).await?;
            tx.query(
                "INSERT INTO memberships (tenant_id, project_id, organization_id, user_id, role_id, status, created_at,
                                          updated_at)
                 VALUES ($1, $2, $3, $4, $5, 'active', $6, $6)",
                &[
                    (&scope.tenant_id, Type::UUID),
                    (&project, Type::UUID),
                    (&org, Type::UUID),
                    (&user, Type::UUID),
                    (&role, Type::UUID),
                    (&now, Type::TIMESTAMPTZ),
                ],
            )
            .await?;
            let slug: String =
                tx.query_one("SELECT slug FROM roles WHERE id = $1", &[(&role, Type::UUID)]).await?.col("slug")?;
            Ok(SsoMembership { role: slug, change: Some(crate::audit::AuditAction::MembershipAdded) })
        }
        Some(r) => {
            let (status, current): (String, String) = (r.col("status")?, r.col("slug")?);
            if status == "deactivated" {
                return Err(CoreError::Forbidden("this membership was deactivated by the organization"));
            }
            let role = mapped.unwrap_or(&current).to_owned();
            if status == "active" && role == current {
                return Ok(SsoMembership { role, change: None });
            }
            let role_id = role_id(tx, Some(&role), Some(org)).await?;
            tx.query(
                "UPDATE memberships SET role_id = $3, status = 'active', updated_at = $4
                  WHERE organization_id = $1 AND user_id = $2",
                &[(&org, Type::UUID), (&user, Type::UUID), (&role_id, Type::UUID), (&now, Type::TIMESTAMPTZ)],
            )
            .await?;
            Ok(SsoMembership { role, change: Some(crate::audit::AuditAction::MembershipUpdated) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_checked_once_here() {
        assert!(org_slug_ok("acme-eu") && !org_slug_ok("-acme") && !org_slug_ok("acme-") && !org_slug_ok("Acme"));
        assert!(role_slug_ok("billing_admin") && !role_slug_ok("_x") && !role_slug_ok(""));
        assert!(permission_slug_ok("read:invoices") && permission_slug_ok("billing.manage"));
        assert!(!permission_slug_ok("read invoices") && !permission_slug_ok(&"a".repeat(64)));
    }
}
