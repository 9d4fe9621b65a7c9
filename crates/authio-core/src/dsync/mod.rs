//! Directory sync: a SCIM 2.0 directory per organization (RFC 7643, RFC 7644). The directory
//! and its users, groups and memberships live at the tenant's home; its bearer token's hash
//! on the shared database (a SCIM request names its directory, which is resolved before the
//! tenant is known). A SCIM user is an Authio user and a member of the organization; groups
//! map to roles; deactivating or deleting a user ends every session of that user at once.
//! Every change is in the audit log (`directory.*`, `dsync.user.*`, `dsync.group.*`).
pub mod filter;
pub mod scim;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use authio_db::{preresolve, RowExt, Scope, TenantKind, Type};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::authz::{Authorized, Permission};
use crate::crypto::opaque::new_token;
use crate::identity::auth::Identity;
use crate::types::{project_of, ClientInfo, Entity, ValidationError};
use crate::{audit, CoreError};

/// A directory as listed (never its token).
#[derive(Clone, Debug, Serialize)]
pub struct Directory {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub name: String,
    /// Group display name -> role slug.
    pub group_roles: serde_json::Value,
    /// Whether a token is set (false after a revoke, until a rotate).
    pub has_token: bool,
    /// `{public_url}/scim/v2/{id}`: what the identity provider is configured with.
    pub scim_base_url: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct NewDirectory {
    pub name: String,
    pub group_roles: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct DirectoryPatch {
    pub name: Option<String>,
    pub group_roles: Option<BTreeMap<String, String>>,
}

/// Requests per second per directory on one node, and the burst allowed.
#[derive(Clone, Copy, Debug)]
pub struct DirectoryLimit {
    pub per_second: f64,
    pub burst: f64,
}

impl Default for DirectoryLimit {
    /// Generous for a provider's initial sync (Okta and Entra ID send a few requests per
    /// second per app), tight enough that one directory cannot hold a node.
    fn default() -> Self {
        DirectoryLimit { per_second: 600.0, burst: 1200.0 }
    }
}

/// Directory sync: the management of directories and the SCIM service.
#[derive(Clone)]
pub struct DirectorySync {
    pub(crate) identity: Identity,
    limit: DirectoryLimit,
    buckets: Arc<Mutex<HashMap<Uuid, (f64, Instant)>>>,
}

/// A SCIM request's directory, once its token was checked.
#[derive(Clone, Debug)]
pub struct DirectoryCtx {
    pub scope: Scope,
    pub directory: Uuid,
    pub organization: Uuid,
    /// `{public_url}/scim/v2/{directory}` (for `meta.location`).
    pub base: String,
}

fn bad(field: &'static str) -> CoreError {
    CoreError::Invalid(ValidationError::Field(field))
}

fn check_name(n: &str) -> Result<(), CoreError> {
    if n.trim().is_empty() || n.chars().count() > 100 || n.chars().any(char::is_control) {
        return Err(bad("name (1-100 characters)"));
    }
    Ok(())
}

fn check_group_roles(map: &BTreeMap<String, String>) -> Result<(), CoreError> {
    let bad_text = |t: &str, max: usize| t.is_empty() || t.len() > max || t.chars().any(char::is_control);
    if map.len() > 100 || map.iter().any(|(g, r)| bad_text(g, 256) || bad_text(r, 64)) {
        return Err(bad("group_roles (at most 100 group names of 1-256 characters, to role slugs)"));
    }
    Ok(())
}

const COLS: &str = "id, organization_id, name, group_roles, created_at";

impl DirectorySync {
    pub fn new(identity: Identity, limit: DirectoryLimit) -> Self {
        DirectorySync { identity, limit, buckets: Arc::new(Mutex::new(HashMap::new())) }
    }

    fn public_url(&self) -> &str {
        self.identity.inner.settings.public_url.trim_end_matches('/')
    }

    fn directory_of(&self, r: &authio_db::Row, has_token: bool) -> Result<Directory, CoreError> {
        let id: Uuid = r.col("id")?;
        Ok(Directory {
            id,
            organization_id: r.col("organization_id")?,
            name: r.col("name")?,
            group_roles: r.col("group_roles")?,
            has_token,
            scim_base_url: format!("{}/scim/v2/{id}", self.public_url()),
            created_at: r.col("created_at")?,
        })
    }

    /// Roles named by a group map exist for the organization.
    async fn check_roles(
        &self,
        tx: &authio_db::ScopedTx,
        org: Uuid,
        map: &BTreeMap<String, String>,
    ) -> Result<(), CoreError> {
        let roles: Vec<String> = map.values().cloned().collect();
        let known = tx
            .query(
                "SELECT slug FROM roles WHERE slug = ANY ($1) AND (organization_id IS NULL OR organization_id = $2)",
                &[(&roles, Type::TEXT_ARRAY), (&org, Type::UUID)],
            )
            .await?;
        let known: Vec<String> = known.iter().map(|r| r.col("slug")).collect::<Result<_, _>>()?;
        if roles.iter().any(|r| !known.contains(r)) {
            return Err(CoreError::NotFound(Entity::Role));
        }
        Ok(())
    }

    /// Make a directory for an organization; its token is returned once (only its hash is
    /// kept).
    pub async fn create_directory(
        &self,
        auth: &Authorized,
        org: Uuid,
        new: &NewDirectory,
        client: &ClientInfo,
    ) -> Result<(Directory, String), CoreError> {
        let scope = auth.require(Permission::ProjectConfigure)?;
        check_name(&new.name)?;
        let map = new.group_roles.clone().unwrap_or_default();
        check_group_roles(&map)?;
        let now = crate::clock::now_as_stored(self.identity.inner.clock.as_ref());
        let id = Uuid::now_v7();
        let map_json = serde_json::to_value(&map).map_err(|e| CoreError::Internal(e.to_string()))?;
        let tx = self.identity.inner.router.begin(scope).await?;
        tx.query_opt("SELECT 1 FROM organizations WHERE id = $1 FOR SHARE", &[(&org, Type::UUID)])
            .await?
            .ok_or(CoreError::NotFound(Entity::Organization))?;
        self.check_roles(&tx, org, &map).await?;
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO directories (tenant_id, project_id, id, organization_id, name, group_roles, created_at,
                                              updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING {COLS}"
                ),
                &[
                    (&scope.tenant_id, Type::UUID),
                    (&project_of(scope)?, Type::UUID),
                    (&id, Type::UUID),
                    (&org, Type::UUID),
                    (&new.name.trim(), Type::TEXT),
                    (&map_json, Type::JSONB),
                    (&now, Type::TIMESTAMPTZ),
                ],
            )
            .await?;
        let dir = self.directory_of(&row, true)?;
        let event = audit::Event {
            action: crate::audit::AuditAction::DirectoryCreated,
            actor: auth.actor().clone(),
            target: Some(("directory", id.to_string())),
            client,
            metadata: serde_json::json!({"organization_id": org, "name": dir.name}),
        };
        audit::record_and_commit(tx, scope, event, now).await?;
        // The token last: a crash before it leaves a directory nobody can reach yet (rotate
        // gives it one), never a token for a directory that is not there.
        let token = self.set_token(scope, id, org, now).await?;
        Ok((dir, token))
    }

    async fn set_token(
        &self,
        scope: &Scope,
        directory: Uuid,
        org: Uuid,
        now: DateTime<Utc>,
    ) -> Result<String, CoreError> {
        let (token, hash) = new_token("scim_");
        let tx = self.identity.inner.router.begin_pinned(scope).await?;
        tx.query(
            "INSERT INTO directory_tokens (tenant_id, project_id, directory_id, token_hash, created_at, organization_id)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (tenant_id, directory_id) DO UPDATE SET token_hash = excluded.token_hash,
                 created_at = excluded.created_at",
            &[
                (&scope.tenant_id, Type::UUID),
                (&project_of(scope)?, Type::UUID),
                (&directory, Type::UUID),
                (&hash.to_vec(), Type::BYTEA),
                (&now, Type::TIMESTAMPTZ),
                (&org, Type::UUID),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(token)
    }

    async fn tokens_set(&self, scope: &Scope) -> Result<Vec<Uuid>, CoreError> {
        let tx = self.identity.inner.router.begin_pinned(scope).await?;
        let rows = tx.query("SELECT directory_id FROM directory_tokens", &[]).await?;
        tx.commit().await?;
        rows.iter().map(|r| r.col("directory_id").map_err(CoreError::from)).collect()
    }

    pub async fn list_directories(&self, auth: &Authorized, org: Uuid) -> Result<Vec<Directory>, CoreError> {
        let scope = auth.require(Permission::ProjectRead)?;
        let tx = self.identity.inner.router.begin(scope).await?;
        let rows = tx
            .query(
                &format!("SELECT {COLS} FROM directories WHERE organization_id = $1 ORDER BY created_at"),
                &[(&org, Type::UUID)],
            )
            .await?;
        tx.commit().await?;
        let with_token = self.tokens_set(scope).await?;
        rows.iter()
            .map(|r| {
                let id: Uuid = r.col("id")?;
                self.directory_of(r, with_token.contains(&id))
            })
            .collect()
    }

    async fn directory(&self, scope: &Scope, org: Uuid, id: Uuid) -> Result<authio_db::Row, CoreError> {
        let tx = self.identity.inner.router.begin(scope).await?;
        let row = tx
            .query_opt(
                &format!("SELECT {COLS} FROM directories WHERE id = $1 AND organization_id = $2"),
                &[(&id, Type::UUID), (&org, Type::UUID)],
            )
            .await?
            .ok_or(CoreError::NotFound(Entity::Directory))?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn update_directory(
        &self,
        auth: &Authorized,
        org: Uuid,
        id: Uuid,
        patch: &DirectoryPatch,
        client: &ClientInfo,
    ) -> Result<Directory, CoreError> {
        let scope = auth.require(Permission::ProjectConfigure)?;
        if let Some(n) = &patch.name {
            check_name(n)?;
        }
        if let Some(m) = &patch.group_roles {
            check_group_roles(m)?;
        }
        let now = self.identity.now();
        let map_json = patch
            .group_roles
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| CoreError::Internal(e.to_string()))?;
        let tx = self.identity.inner.router.begin(scope).await?;
        if let Some(m) = &patch.group_roles {
            self.check_roles(&tx, org, m).await?;
        }
        let name = patch.name.as_deref().map(str::trim);
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE directories SET name = coalesce($3, name), group_roles = coalesce($4, group_roles),
                         updated_at = $5 WHERE id = $1 AND organization_id = $2 RETURNING {COLS}"
                ),
                &[
                    (&id, Type::UUID),
                    (&org, Type::UUID),
                    (&name, Type::TEXT),
                    (&map_json, Type::JSONB),
                    (&now, Type::TIMESTAMPTZ),
                ],
            )
            .await?
            .ok_or(CoreError::NotFound(Entity::Directory))?;
        let event = audit::Event {
            action: crate::audit::AuditAction::DirectoryUpdated,
            actor: auth.actor().clone(),
            target: Some(("directory", id.to_string())),
            client,
            metadata: serde_json::json!({"organization_id": org, "name": name, "group_roles": patch.group_roles}),
        };
        audit::record_and_commit(tx, scope, event, now).await?;
        let has_token = self.tokens_set(scope).await?.contains(&id);
        self.directory_of(&row, has_token)
    }

    /// A new token; the old one stops working at once.
    pub async fn rotate_token(
        &self,
        auth: &Authorized,
        org: Uuid,
        id: Uuid,
        client: &ClientInfo,
    ) -> Result<String, CoreError> {
        let scope = auth.require(Permission::ProjectConfigure)?;
        self.directory(scope, org, id).await?;
        let now = self.identity.now();
        let token = self.set_token(scope, id, org, now).await?;
        self.audit_directory(scope, auth, crate::audit::AuditAction::DirectoryTokenRotated, org, id, client).await?;
        Ok(token)
    }

    async fn drop_token(&self, scope: &Scope, directory: Uuid) -> Result<(), CoreError> {
        let tx = self.identity.inner.router.begin_pinned(scope).await?;
        tx.query("DELETE FROM directory_tokens WHERE directory_id = $1", &[(&directory, Type::UUID)]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// No token: the directory answers nothing until a rotate.
    pub async fn revoke_token(
        &self,
        auth: &Authorized,
        org: Uuid,
        id: Uuid,
        client: &ClientInfo,
    ) -> Result<(), CoreError> {
        let scope = auth.require(Permission::ProjectConfigure)?;
        self.directory(scope, org, id).await?;
        self.drop_token(scope, id).await?;
        self.audit_directory(scope, auth, crate::audit::AuditAction::DirectoryTokenRevoked, org, id, client).await
    }

    /// Delete a directory: its token first (nothing reaches it any more), then its users and
    /// groups. The Authio users and their memberships stay.
    pub async fn delete_directory(
        &self,
        auth: &Authorized,
        org: Uuid,
        id: Uuid,
        client: &ClientInfo,
    ) -> Result<(), CoreError> {
        let scope = auth.require(Permission::ProjectConfigure)?;
        self.directory(scope, org, id).await?;
        self.drop_token(scope, id).await?;
        let now = self.identity.now();
        let tx = self.identity.inner.router.begin(scope).await?;
        tx.query("DELETE FROM directories WHERE id = $1", &[(&id, Type::UUID)]).await?;
        let event = audit::Event {
            action: crate::audit::AuditAction::DirectoryDeleted,
            actor: auth.actor().clone(),
            target: Some(("directory", id.to_string())),
            client,
            metadata: serde_json::json!({"organization_id": org}),
        };
        audit::record_and_commit(tx, scope, event, now).await
    }

    async fn audit_directory(
        &self,
        scope: &Scope,
        auth: &Authorized,
        action: crate::audit::AuditAction,
        org: Uuid,
        id: Uuid,
        client: &ClientInfo,
    ) -> Result<(), CoreError> {
        let event = audit::Event {
            action,
            actor: auth.actor().clone(),
            target: Some(("directory", id.to_string())),
            client,
            metadata: serde_json::json!({"organization_id": org}),
        };
        audit::record(&self.identity.inner.router, scope, event, self.identity.now()).await
    }

    /// One more request of this directory on this node: refused past the limit.
    fn take(&self, directory: Uuid) -> Result<(), scim::ScimError> {
        let mut buckets = self.buckets.lock().map_err(|_| scim::ScimError::internal())?;
        let now = Instant::now();
        if buckets.len() > 100_000 {
            buckets.retain(|_, (_, at)| now.duration_since(*at).as_secs() < 60);
        }
        let (tokens, at) = buckets.entry(directory).or_insert((self.limit.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.limit.per_second).min(self.limit.burst);
        *at = now;
        if *tokens < 1.0 {
            let wait = ((1.0 - *tokens) / self.limit.per_second).ceil().max(1.0) as u32;
            return Err(scim::ScimError::too_many(wait));
        }
        *tokens -= 1.0;
        Ok(())
    }

    /// The directory a SCIM request names, if its bearer token is that directory's. Unknown
    /// directory, no token or a wrong one: the same 401.
    pub async fn authenticate(&self, directory: Uuid, bearer: Option<&str>) -> Result<DirectoryCtx, scim::ScimError> {
        let unauthorized = || scim::ScimError::new(401, None, "the bearer token is not this directory's");
        let presented = bearer.filter(|b| b.len() <= 256).ok_or_else(unauthorized)?;
        let row = preresolve::directory_token(&self.identity.inner.router, directory).await.map_err(CoreError::from)?;
        let stored: Option<Vec<u8>> = row.as_ref().map(|r| r.try_get(2)).transpose().map_err(CoreError::from)?;
        let ok = crate::crypto::opaque::matches(stored.as_deref(), presented);
        let Some(row) = row.filter(|_| ok) else { return Err(unauthorized()) };
        self.take(directory)?;
        let tenant_id: Uuid = row.try_get(0).map_err(CoreError::from)?;
        let project_id: Uuid = row.try_get(1).map_err(CoreError::from)?;
        let kind: String = row.try_get(3).map_err(CoreError::from)?;
        let scope = Scope::project(tenant_id, project_id, TenantKind::parse(&kind).unwrap_or(TenantKind::Customer));
        // (A deleted directory lost its token first: nothing more is read to serve it.)
        Ok(DirectoryCtx {
            scope,
            directory,
            organization: row.try_get(4).map_err(CoreError::from)?,
            base: format!("{}/scim/v2/{directory}", self.public_url()),
        })
    }
}
