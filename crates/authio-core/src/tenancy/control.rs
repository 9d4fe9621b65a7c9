//! The control plane, as operators reach it (CLI, `authio dev`, test kit): tenants, projects,
//! API keys and dedicated-database records, through an administrative connection acting as
//! `authio_owner`.
use authio_db::pool::connect;
use authio_db::{migrate, DbStrategy, MasterKey, OwnerTx, RouterError, Row, RowExt, TenantKind, Type};
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::audit::{self, ChainReport};
use crate::crypto::keys::{Alg, KeyRow, INSERT_KEY_SQL};
use crate::project::api_keys;
use crate::types::{DisplayName, Email, Plan, Slug};
use crate::CoreError;

#[derive(Clone, Debug, Serialize)]
pub struct Tenant {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub kind: TenantKind,
    pub plan: Plan,
    pub db_strategy: DbStrategy,
    pub route_epoch: i64,
    pub created_at: DateTime<Utc>,
}

impl Tenant {
    /// A row of [`TENANT_COLS`]. A kind, plan or strategy this build does not know is an error.
    pub(crate) fn from_row(r: &Row) -> Result<Self, CoreError> {
        let kind: &str = r.col("kind")?;
        let plan: &str = r.col("plan")?;
        Ok(Tenant {
            id: r.col("id")?,
            slug: r.col("slug")?,
            name: r.col("name")?,
            kind: TenantKind::parse(kind).ok_or_else(|| CoreError::Internal(format!("unknown tenant kind {kind}")))?,
            plan: Plan::parse(plan).map_err(|_| CoreError::Internal(format!("unknown plan {plan}")))?,
            db_strategy: db_strategy(r.col("db_strategy")?)?,
            route_epoch: r.col("route_epoch")?,
            created_at: r.col("created_at")?,
        })
    }

    pub fn tenant_kind(&self) -> TenantKind {
        self.kind
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Project {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub slug: String,
    pub name: String,
}

/// A created API key; `plaintext` is shown once and never stored.
#[derive(Clone, Debug)]
pub struct CreatedApiKey {
    pub id: Uuid,
    pub key_id: String,
    pub plaintext: String,
}

/// An operator acting through the CLI (or `authio dev`), on the control plane.
fn operator_actor() -> audit::Actor {
    audit::Actor { kind: crate::audit::ActorKind::Operator, id: None, name: Some("authio CLI".into()) }
}

/// A stored `db_strategy`.
pub(crate) fn db_strategy(s: &str) -> Result<DbStrategy, CoreError> {
    DbStrategy::parse(s).ok_or_else(|| CoreError::Internal(format!("unknown db_strategy {s}")))
}

pub(crate) const TENANT_COLS: &str = "id, slug, name, kind, plan, db_strategy, route_epoch, created_at";

pub struct ControlPlane {
    pub(crate) admin_url: String,
    pub(crate) clock: std::sync::Arc<dyn crate::Clock>,
}

impl ControlPlane {
    pub fn new(admin_url: impl Into<String>) -> Self {
        ControlPlane { admin_url: admin_url.into(), clock: std::sync::Arc::new(crate::SystemClock) }
    }

    /// The same control plane reading time from `clock` (tests control it).
    pub fn with_clock(mut self, clock: std::sync::Arc<dyn crate::Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub(crate) async fn client(&self) -> Result<tokio_postgres::Client, CoreError> {
        Ok(connect(&self.admin_url, "authio-control").await?)
    }

    pub async fn create_tenant(
        &self,
        slug: &Slug,
        name: &DisplayName,
        kind: TenantKind,
        plan: Plan,
    ) -> Result<Tenant, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let id = Uuid::now_v7();
        let row = tx
            .query_opt(
                &format!(
                    "INSERT INTO tenants (id, slug, name, kind, plan) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT DO NOTHING RETURNING {TENANT_COLS}"
                ),
                &[
                    (&id, Type::UUID),
                    (&slug.as_str(), Type::TEXT),
                    (&name.as_str(), Type::TEXT),
                    (&kind.as_str(), Type::TEXT),
                    (&plan.as_str(), Type::TEXT),
                ],
            )
            .await?;
        let Some(row) = row else {
            return Err(if kind == TenantKind::Platform && self.platform_tenant().await?.is_some() {
                CoreError::Invalid(crate::types::ValidationError::Field(
                    "tenant kind: a platform tenant already exists",
                ))
            } else {
                CoreError::SlugTaken
            });
        };
        tx.commit().await?;
        Tenant::from_row(&row)
    }

    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let rows = tx.query(&format!("SELECT {TENANT_COLS} FROM tenants ORDER BY created_at, id"), &[]).await?;
        rows.iter().map(Tenant::from_row).collect()
    }

    pub async fn tenant_by_slug(&self, slug: &str) -> Result<Option<Tenant>, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let row =
            tx.query_opt(&format!("SELECT {TENANT_COLS} FROM tenants WHERE slug = $1"), &[(&slug, Type::TEXT)]).await?;
        row.as_ref().map(Tenant::from_row).transpose()
    }

    pub async fn platform_tenant(&self) -> Result<Option<Tenant>, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let row = tx.query_opt(&format!("SELECT {TENANT_COLS} FROM tenants WHERE kind = 'platform'"), &[]).await?;
        row.as_ref().map(Tenant::from_row).transpose()
    }

    pub async fn projects(&self, tenant: Uuid) -> Result<Vec<Project>, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let rows = tx
            .query(
                "SELECT id, tenant_id, slug, name FROM projects WHERE tenant_id = $1 ORDER BY id",
                &[(&tenant, Type::UUID)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Project {
                    id: r.col("id")?,
                    tenant_id: r.col("tenant_id")?,
                    slug: r.col("slug")?,
                    name: r.col("name")?,
                })
            })
            .collect()
    }

    pub async fn create_project(&self, tenant: Uuid, slug: &Slug, name: &DisplayName) -> Result<Project, CoreError> {
        self.create_project_audited(tenant, slug, name, None).await
    }

    /// Create a project and record `project.created` by `actor` in its log, in one
    /// transaction (the dashboard's way; the CLI's projects are not audited).
    pub async fn create_project_by(
        &self,
        tenant: Uuid,
        slug: &Slug,
        name: &DisplayName,
        actor: audit::Actor,
    ) -> Result<Project, CoreError> {
        self.create_project_audited(tenant, slug, name, Some(actor)).await
    }

    async fn create_project_audited(
        &self,
        tenant: Uuid,
        slug: &Slug,
        name: &DisplayName,
        actor: Option<audit::Actor>,
    ) -> Result<Project, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let id = Uuid::now_v7();
        let row = tx
            .query_opt(
                "INSERT INTO projects (tenant_id, id, slug, name) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING RETURNING id",
                &[(&tenant, Type::UUID), (&id, Type::UUID), (&slug.as_str(), Type::TEXT), (&name.as_str(), Type::TEXT)],
            )
            .await
            .map_err(|e| match e.sqlstate() {
                Some("23503") => CoreError::NotFound(crate::types::Entity::Tenant),
                _ => e.into(),
            })?;
        if row.is_none() {
            return Err(CoreError::Invalid(crate::types::ValidationError::Field(
                "project slug: already taken in this tenant",
            )));
        }
        if let Some(actor) = actor {
            let event = audit::Event {
                action: crate::audit::AuditAction::ProjectCreated,
                actor,
                target: Some(("project", id.to_string())),
                client: &crate::types::ClientInfo::default(),
                metadata: serde_json::json!({"slug": slug.as_str(), "name": name.as_str()}),
            };
            let scope = authio_db::Scope::project(tenant, id, TenantKind::Customer);
            audit::record_pinned_as_owner(&tx, &scope, event, self.clock.now()).await?;
        }
        tx.commit().await?;
        Ok(Project { id, tenant_id: tenant, slug: slug.to_string(), name: name.as_str().to_owned() })
    }

    pub async fn create_api_key(
        &self,
        tenant: Uuid,
        project: Uuid,
        name: &DisplayName,
    ) -> Result<CreatedApiKey, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let key = api_keys::generate();
        let id = Uuid::now_v7();
        let hash = key.secret_hash.to_vec();
        tx.query(
            "INSERT INTO api_keys (tenant_id, project_id, id, key_id, secret_hash, name) VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                (&tenant, Type::UUID),
                (&project, Type::UUID),
                (&id, Type::UUID),
                (&key.key_id, Type::TEXT),
                (&hash, Type::BYTEA),
                (&name.as_str(), Type::TEXT),
            ],
        )
        .await
        .map_err(|e| match e.sqlstate() {
            Some("23503") => CoreError::NotFound(crate::types::Entity::Project),
            _ => e.into(),
        })?;
        let scope = authio_db::Scope::project(tenant, project, TenantKind::Customer);
        let event = audit::Event {
            action: crate::audit::AuditAction::ApiKeyCreated,
            actor: operator_actor(),
            target: Some(("api_key", key.key_id.clone())),
            client: &crate::types::ClientInfo::default(),
            metadata: serde_json::json!({"name": name.as_str()}),
        };
        audit::record_pinned_as_owner(&tx, &scope, event, self.clock.now()).await?;
        tx.commit().await?;
        Ok(CreatedApiKey { id, key_id: key.key_id, plaintext: key.plaintext })
    }

    /// Give a tenant that has no data yet a dedicated database that is already migrated:
    /// record it (credentials encrypted with the master key), fence it at home there and not
    /// on shared, and flip its strategy (which bumps its route epoch and notifies nodes).
    /// Moving a tenant that has data is the online move's job, not this.
    pub async fn attach_empty_dedicated(
        &self,
        tenant: &Tenant,
        database_name: &str,
        app_dsn: &str,
        dedicated_admin_dsn: &str,
        key: &MasterKey,
    ) -> Result<(), CoreError> {
        if tenant.tenant_kind() == TenantKind::Platform {
            return Err(RouterError::PlatformTenantNoDedicatedPool.into());
        }
        if tenant.plan != Plan::Enterprise {
            return Err(CoreError::Invalid(crate::types::ValidationError::Field(
                "plan: dedicated databases are available on the Enterprise plan",
            )));
        }
        migrate::migrate(dedicated_admin_dsn).await?;
        migrate::mark_dedicated(dedicated_admin_dsn, tenant.id).await?;
        migrate::set_home(dedicated_admin_dsn, tenant.id, true).await?;
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let seal = |dsn: &str| key.encrypt(dsn).map_err(|e| RouterError::Config(format!("encrypting a DSN: {e}")));
        let (app_enc, admin_enc) = (seal(app_dsn)?, seal(dedicated_admin_dsn)?);
        tx.query(
            "INSERT INTO dedicated_databases (tenant_id, database_name, app_dsn_enc, admin_dsn_enc, status)
             VALUES ($1, $2, $3, $4, 'ready')
             ON CONFLICT (tenant_id) DO UPDATE SET database_name = EXCLUDED.database_name,
                 app_dsn_enc = EXCLUDED.app_dsn_enc, admin_dsn_enc = EXCLUDED.admin_dsn_enc, status = 'ready'",
            &[(&tenant.id, Type::UUID), (&database_name, Type::TEXT), (&app_enc, Type::TEXT), (&admin_enc, Type::TEXT)],
        )
        .await?;
        tx.query(
            "INSERT INTO tenant_homes (tenant_id, at_home) VALUES ($1, false)
             ON CONFLICT (tenant_id) DO UPDATE SET at_home = false, changed_at = now()",
            &[(&tenant.id, Type::UUID)],
        )
        .await?;
        tx.query("UPDATE tenants SET db_strategy = 'dedicated' WHERE id = $1", &[(&tenant.id, Type::UUID)]).await?;
        let meta = serde_json::json!({"database": database_name});
        crate::tenancy::dedicated::record_for_tenant(
            &tx,
            tenant.id,
            crate::audit::AuditAction::TenantDedicatedAttached,
            "operator",
            meta,
            self.clock.now(),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Admin connection strings of every recorded dedicated database (decrypted), for
    /// `authio migrate`.
    pub async fn dedicated_admin_dsns(&self, key: &MasterKey) -> Result<Vec<(Uuid, String)>, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let rows =
            tx.query("SELECT tenant_id, admin_dsn_enc FROM dedicated_databases WHERE status <> 'retired'", &[]).await?;
        rows.iter()
            .map(|r| {
                let enc: String = r.col("admin_dsn_enc")?;
                let dsn = key.decrypt(&enc).map_err(|e| RouterError::Config(format!("dedicated DSN: {e}")))?;
                Ok((r.col("tenant_id")?, dsn))
            })
            .collect()
    }

    /// Set a tenant's strategy directly (operators' repair tool; moves use the move protocol).
    pub async fn set_db_strategy(&self, tenant: Uuid, strategy: &str) -> Result<(), CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let rows = tx
            .query(
                "UPDATE tenants SET db_strategy = $2 WHERE id = $1 RETURNING id",
                &[(&tenant, Type::UUID), (&strategy, Type::TEXT)],
            )
            .await?;
        if rows.is_empty() {
            return Err(CoreError::NotFound(crate::types::Entity::Tenant));
        }
        let meta = serde_json::json!({"db_strategy": strategy});
        crate::tenancy::dedicated::record_for_tenant(
            &tx,
            tenant,
            crate::audit::AuditAction::TenantDbStrategySet,
            "operator repair",
            meta,
            self.clock.now(),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The algorithm of a project's future keys. A project without keys yet gets its first
    /// ones in it; otherwise the next rotation creates the new next key in it.
    pub async fn set_signing_alg(&self, project: Uuid, alg: Alg) -> Result<(), CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let rows = tx
            .query(
                "UPDATE projects SET signing_alg = $2 WHERE id = $1 RETURNING tenant_id",
                &[(&project, Type::UUID), (&alg.as_str(), Type::TEXT)],
            )
            .await?;
        let Some(row) = rows.first() else { return Err(CoreError::NotFound(crate::types::Entity::Project)) };
        let scope = authio_db::Scope::project(row.col("tenant_id")?, project, TenantKind::Customer);
        let event = audit::Event {
            action: crate::audit::AuditAction::ProjectSigningAlgChanged,
            actor: operator_actor(),
            target: Some(("project", project.to_string())),
            client: &crate::types::ClientInfo::default(),
            metadata: serde_json::json!({"alg": alg.as_str()}),
        };
        audit::record_pinned_as_owner(&tx, &scope, event, self.clock.now()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Rotate a project's signing keys: the current key retires (published until every token
    /// it may have signed has expired), the next key (published since the last rotation)
    /// becomes current, and a new next key is made, in `alg` if given (else the project's).
    ///
    /// Refused (unless `force`) while the next key is younger than [`MIN_NEXT_KEY_AGE_SECS`]:
    /// verifiers that cached the JWKS before it was published would not know it yet.
    pub async fn rotate_keys(
        &self,
        project: Uuid,
        alg: Option<Alg>,
        master_key: &MasterKey,
        now: DateTime<Utc>,
        force: bool,
    ) -> Result<Rotation, CoreError> {
        let cli =
            audit::Actor { kind: crate::audit::ActorKind::Operator, id: None, name: Some("authio keys rotate".into()) };
        self.rotate_keys_by(project, alg, master_key, now, force, cli).await
    }

    /// [`Self::rotate_keys`], recorded as done by `actor` (a dashboard member, say).
    pub async fn rotate_keys_by(
        &self,
        project: Uuid,
        alg: Option<Alg>,
        master_key: &MasterKey,
        now: DateTime<Utc>,
        force: bool,
        actor: audit::Actor,
    ) -> Result<Rotation, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let row = tx
            .query_opt(
                "SELECT p.tenant_id, p.signing_alg FROM projects p WHERE p.id = $1 FOR UPDATE",
                &[(&project, Type::UUID)],
            )
            .await?
            .ok_or(CoreError::NotFound(crate::types::Entity::Project))?;
        let tenant: Uuid = row.col("tenant_id")?;
        let project_alg: String = row.col("signing_alg")?;
        if let Some(a) = alg {
            tx.query(
                "UPDATE projects SET signing_alg = $2 WHERE id = $1",
                &[(&project, Type::UUID), (&a.as_str(), Type::TEXT)],
            )
            .await?;
        }
        let new_alg = alg.or_else(|| Alg::parse(&project_alg)).unwrap_or(Alg::EdDSA);
        let keys = tx
            .query(
                "SELECT kid, state, alg, created_at FROM signing_keys
                 WHERE project_id = $1 AND state IN ('current', 'next') FOR UPDATE",
                &[(&project, Type::UUID)],
            )
            .await?;
        // (state, kid, created_at) of each key.
        let keys: Vec<(String, String, DateTime<Utc>)> = keys
            .iter()
            .map(|r| Ok((r.col("state")?, r.col("kid")?, r.col("created_at")?)))
            .collect::<Result<_, CoreError>>()?;
        let next_created: Option<DateTime<Utc>> = keys.iter().find(|k| k.0 == "next").map(|k| k.2);
        if let (false, Some(created)) = (force, next_created) {
            let ready = created + chrono::Duration::seconds(MIN_NEXT_KEY_AGE_SECS);
            if now < ready {
                return Err(CoreError::TooSoon(format!(
                    "the next key was published at {created}; verifiers may not have it until {ready} \
                     (JWKS cache time plus node cache time). Rotate then, or force it"
                )));
            }
        }
        let kid_in = |state: &str| keys.iter().find(|k| k.0 == state).map(|k| k.1.clone());
        let mut next_kid = kid_in("next");
        if next_kid.is_none() {
            // No next key (a project whose keys were never made): the key that becomes current
            // now could not be published beforehand, so there is nothing older to honour.
            let first_alg = Alg::parse(&project_alg).unwrap_or(Alg::EdDSA);
            let row = KeyRow::new(master_key, tenant, project, first_alg, "next", now)?;
            tx.query(INSERT_KEY_SQL, &row.params()).await?;
            next_kid = Some(row.kid().to_owned());
        }
        // Past the longest lifetime any token can have (86400 s, the cap on project and client
        // settings: settings may shrink or clients be revoked after a token was signed), plus
        // the time nodes may keep signing with a cached key set (at most 60 s), plus leeway.
        let publish_secs = f64::from(MAX_TOKEN_LIFETIME_SECS) + 300.0;
        let retired = tx
            .query_opt(
                "UPDATE signing_keys SET state = 'retired', retired_at = $2,
                        publish_until = $2 + make_interval(secs => $3)
                 WHERE project_id = $1 AND state = 'current' RETURNING kid, publish_until",
                &[(&project, Type::UUID), (&now, Type::TIMESTAMPTZ), (&publish_secs, Type::FLOAT8)],
            )
            .await?;
        tx.query(
            "UPDATE signing_keys SET state = 'current', activated_at = $2 WHERE project_id = $1 AND state = 'next'",
            &[(&project, Type::UUID), (&now, Type::TIMESTAMPTZ)],
        )
        .await?;
        let new_next = KeyRow::new(master_key, tenant, project, new_alg, "next", now)?;
        tx.query(INSERT_KEY_SQL, &new_next.params()).await?;
        let retired_kid: Option<String> = retired.as_ref().map(|r| r.col("kid")).transpose()?;
        let retired_published_until: Option<DateTime<Utc>> =
            retired.as_ref().map(|r| r.col("publish_until")).transpose()?;
        let event = audit::Event {
            action: crate::audit::AuditAction::SigningKeyRotated,
            actor,
            target: Some(("project", project.to_string())),
            client: &crate::types::ClientInfo::default(),
            metadata: serde_json::json!({
                "retired_kid": retired_kid,
                "current_kid": next_kid,
                "next_kid": new_next.kid(),
                "next_alg": new_alg.as_str(),
                "forced": force,
            }),
        };
        // The kind is not needed to place the event: only tenant and project are.
        let scope = authio_db::Scope::project(tenant, project, TenantKind::Customer);
        audit::record_pinned_as_owner(&tx, &scope, event, now).await?;
        tx.commit().await?;
        Ok(Rotation {
            retired_kid,
            retired_published_until,
            current_kid: next_kid.unwrap_or_default(),
            next_kid: new_next.kid().to_owned(),
            next_alg: new_alg.as_str(),
        })
    }

    /// Make a platform-tenant user an operator (the role the management API accepts from a
    /// platform-kind token). Platform users live on the shared database: the platform tenant
    /// never moves.
    pub async fn grant_operator(&self, email: &Email) -> Result<(), CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let rows = tx
            .query(
                "UPDATE users u SET role = 'operator', updated_at = now()
                 FROM tenants t WHERE t.id = u.tenant_id AND t.kind = 'platform' AND u.email = $1
                 RETURNING u.id, u.tenant_id, u.project_id, (SELECT o.role FROM users o WHERE o.tenant_id = u.tenant_id AND o.id = u.id) AS old_role",
                &[(&email.as_str(), Type::TEXT)],
            )
            .await?;
        let row = match rows.as_slice() {
            [] => return Err(CoreError::NotFound(crate::types::Entity::User)),
            [one] => one,
            // One email in several platform projects: promote none rather than all.
            _ => {
                return Err(CoreError::Conflict(
                    "several platform users have this email; none was made an operator".into(),
                ))
            }
        };
        let (user, tenant, project): (Uuid, Uuid, Uuid) =
            (row.col("id")?, row.col("tenant_id")?, row.col("project_id")?);
        if row.col::<Option<String>>("old_role")?.as_deref() == Some("operator") {
            // Already an operator: nothing changed, nothing to record.
            return Ok(());
        }
        // The platform tenant lives on shared: its log is in this database, in this transaction.
        let scope = authio_db::Scope::project(tenant, project, TenantKind::Platform);
        let event = audit::Event {
            action: crate::audit::AuditAction::UserRoleGranted,
            actor: audit::Actor {
                kind: crate::audit::ActorKind::Operator,
                id: None,
                name: Some("authio grant-operator".into()),
            },
            target: Some(("user", user.to_string())),
            client: &crate::types::ClientInfo::default(),
            metadata: serde_json::json!({"role": "operator", "email": email.as_str()}),
        };
        let event = audit::EventRow::new(&scope, event, self.clock.now())?;
        tx.query(audit::INSERT_SQL, &event.params()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Days a tenant's audit events are kept: its own setting, else its plan's.
    pub fn audit_retention_days(plan: &str, own: Option<i32>) -> i32 {
        own.unwrap_or(match plan {
            "enterprise" => 365,
            "pro" => 90,
            _ => 30,
        })
    }

    /// Set (or with `None` clear) a tenant's own audit retention.
    pub async fn set_audit_retention(&self, tenant: Uuid, days: Option<i32>) -> Result<(), CoreError> {
        if let Some(d) = days {
            if !(1..=3650).contains(&d) {
                return Err(CoreError::Invalid(crate::types::ValidationError::Field("retention: 1 to 3650 days")));
            }
        }
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let rows = tx
            .query(
                "UPDATE tenants SET audit_retention_days = $2 WHERE id = $1 RETURNING id",
                &[(&tenant, Type::UUID), (&days, Type::INT4)],
            )
            .await?;
        if rows.is_empty() {
            return Err(CoreError::NotFound(crate::types::Entity::Tenant));
        }
        let meta = serde_json::json!({"days": days});
        crate::tenancy::dedicated::record_for_tenant(
            &tx,
            tenant,
            crate::audit::AuditAction::TenantAuditRetentionChanged,
            "authio audit retention",
            meta,
            self.clock.now(),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Delete a tenant's audit events past its retention, at its home, as
    /// `authio_audit_retention` (the only role the database lets delete them, and only such
    /// events). Each project's chain keeps a checkpoint sealed with the master key at the last
    /// purged event, so what remains still verifies. Returns the events deleted.
    /// Age is judged by the database's clock, as its delete rule judges it.
    pub async fn purge_audit(&self, tenant: &Tenant, key: &MasterKey) -> Result<u64, CoreError> {
        let row = {
            let mut c = self.client().await?;
            let tx = OwnerTx::begin(&mut c).await?;
            let r = tx
                .query_opt(
                    "SELECT plan, audit_retention_days, db_strategy FROM tenants WHERE id = $1",
                    &[(&tenant.id, Type::UUID)],
                )
                .await?
                .ok_or(CoreError::NotFound(crate::types::Entity::Tenant))?;
            tx.commit().await?;
            r
        };
        let plan: String = row.col("plan")?;
        let days = Self::audit_retention_days(&plan, row.col("audit_retention_days")?);
        let current = Tenant { db_strategy: db_strategy(row.col("db_strategy")?)?, ..tenant.clone() };
        let url = self.home_admin_url(&current, Some(key)).await?;
        let mut c = connect(&url, "authio-audit-purge").await?;
        let tx = c.transaction().await.map_err(authio_db::DbError::from)?;
        // One purge per tenant at a time (several nodes may run the periodic job), and the
        // retention it records is the one it read, under that lock.
        let locked: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock(hashtextextended($1::uuid::text, 7)) AS locked", &[&tenant.id])
            .await
            .map_err(authio_db::DbError::from)?
            .col("locked")?;
        if !locked {
            return Ok(0);
        }
        // The home learns the retention (the delete rule reads it there), as the owner...
        tx.batch_execute("SET LOCAL ROLE authio_owner").await.map_err(authio_db::DbError::from)?;
        tx.execute(
            "INSERT INTO audit_retention (tenant_id, days) VALUES ($1, $2)
             ON CONFLICT (tenant_id) DO UPDATE SET days = EXCLUDED.days",
            &[&tenant.id, &days],
        )
        .await
        .map_err(authio_db::DbError::from)?;
        // ...and deletes as the retention role, the only one the database lets delete.
        tx.batch_execute("SET LOCAL ROLE authio_audit_retention").await.map_err(authio_db::DbError::from)?;
        // Per project: the oldest events up to the first one still within retention.
        let ends = tx
            .query(
                "SELECT e.project_id, max(e.seq) AS seq FROM audit_events e
                 WHERE e.tenant_id = $1 AND e.seq < coalesce(
                     (SELECT min(n.seq) FROM audit_events n
                      WHERE n.tenant_id = e.tenant_id AND n.project_id = e.project_id
                        AND n.occurred_at >= now() - make_interval(days => $2)),
                     9223372036854775807)
                 GROUP BY e.project_id",
                &[&tenant.id, &days],
            )
            .await
            .map_err(authio_db::DbError::from)?;
        let mut deleted = 0;
        for end in &ends {
            let (project, seq): (Uuid, i64) = (end.col("project_id")?, end.col("seq")?);
            let hash: Vec<u8> = tx
                .query_one(
                    "SELECT hash FROM audit_events WHERE tenant_id = $1 AND project_id = $2 AND seq = $3",
                    &[&tenant.id, &project, &seq],
                )
                .await
                .map_err(authio_db::DbError::from)?
                .col("hash")?;
            let seal = key
                .encrypt(&checkpoint_text(tenant.id, project, seq, &hash))
                .map_err(|e| CoreError::Internal(format!("sealing a checkpoint: {e}")))?;
            tx.execute(
                "INSERT INTO audit_checkpoints (tenant_id, project_id, seq, hash, seal) VALUES ($1, $2, $3, $4, $5)",
                &[&tenant.id, &project, &seq, &hash, &seal],
            )
            .await
            .map_err(authio_db::DbError::from)?;
            deleted += tx
                .execute(
                    "DELETE FROM audit_events WHERE tenant_id = $1 AND project_id = $2 AND seq <= $3",
                    &[&tenant.id, &project, &seq],
                )
                .await
                .map_err(authio_db::DbError::from)?;
        }
        tx.commit().await.map_err(authio_db::DbError::from)?;
        Ok(deleted)
    }

    /// The administrative connection string of a tenant's home database.
    async fn home_admin_url(&self, tenant: &Tenant, key: Option<&MasterKey>) -> Result<String, CoreError> {
        if tenant.db_strategy != DbStrategy::Dedicated {
            return Ok(self.admin_url.clone());
        }
        let key =
            key.ok_or_else(|| CoreError::Config("a master key is needed to reach a dedicated database".into()))?;
        self.dedicated_admin_dsns(key)
            .await?
            .into_iter()
            .find(|(t, _)| *t == tenant.id)
            .map(|(_, dsn)| dsn)
            .ok_or(CoreError::NotFound(crate::types::Entity::DedicatedDatabase))
    }

    /// Seal each of the tenant's chain heads into an anchor on the shared database (skipped
    /// for a chain that has not grown since its last anchor). Returns the anchors written.
    pub async fn anchor_audit(&self, tenant: &Tenant, key: &MasterKey) -> Result<usize, CoreError> {
        let tenant =
            self.tenant_by_slug(&tenant.slug).await?.ok_or(CoreError::NotFound(crate::types::Entity::Tenant))?;
        if self.open_move(tenant.id).await?.is_some() {
            // The home is changing; the next run anchors at the new one.
            return Ok(0);
        }
        let url = self.home_admin_url(&tenant, Some(key)).await?;
        let mut home = connect(&url, "authio-audit-anchor").await?;
        let heads = {
            let tx = OwnerTx::begin(&mut home).await?;
            let rows = tx
                .query(
                    "SELECT project_id, seq, hash FROM audit_chain_heads WHERE tenant_id = $1 AND seq > 0",
                    &[(&tenant.id, Type::UUID)],
                )
                .await?;
            tx.commit().await?;
            rows
        };
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let mut written = 0;
        for h in &heads {
            let (project, seq, hash): (Uuid, i64, Vec<u8>) = (h.col("project_id")?, h.col("seq")?, h.col("hash")?);
            let seal = key
                .encrypt(&anchor_text(tenant.id, project, seq, &hash))
                .map_err(|e| CoreError::Internal(format!("sealing an anchor: {e}")))?;
            let rows = tx
                .query(
                    "INSERT INTO audit_anchors (tenant_id, project_id, seq, hash, seal) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT DO NOTHING RETURNING seq",
                    &[
                        (&tenant.id, Type::UUID),
                        (&project, Type::UUID),
                        (&seq, Type::INT8),
                        (&hash, Type::BYTEA),
                        (&seal, Type::TEXT),
                    ],
                )
                .await?;
            written += rows.len();
        }
        tx.commit().await?;
        Ok(written)
    }

    /// Events of the tenant still in the shared outbox (recorded, not yet relayed to its home;
    /// `verify` covers only what is at home).
    pub async fn pending_audit_events(&self, tenant: Uuid) -> Result<i64, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let row = tx
            .query_opt("SELECT count(*)::bigint AS n FROM audit_outbox WHERE tenant_id = $1", &[(&tenant, Type::UUID)])
            .await?;
        Ok(row.map(|r| r.col("n")).transpose()?.unwrap_or(0))
    }

    /// Recompute every project's audit chain of a tenant at its home, outside the database's
    /// own functions: each event's hash from its fields and the previous hash, sequence
    /// numbers without gaps, and the chain's recorded head.
    pub async fn verify_audit(&self, tenant: &Tenant, key: Option<&MasterKey>) -> Result<Vec<ChainReport>, CoreError> {
        // The tenant's home as recorded now, not as the caller last saw it.
        let tenant =
            self.tenant_by_slug(&tenant.slug).await?.ok_or(CoreError::NotFound(crate::types::Entity::Tenant))?;
        let tenant = &tenant;
        let url = self.home_admin_url(tenant, key).await?;
        let mut c = connect(&url, "authio-audit-verify").await?;
        // One snapshot for events, heads and checkpoints, so a write or a purge meanwhile is
        // not mistaken for a break.
        let c = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(authio_db::DbError::from)?;
        // As the owner, like every operator command: its policy sees every row.
        c.batch_execute("SET LOCAL ROLE authio_owner").await.map_err(authio_db::DbError::from)?;
        let rows = c
            .query(
                "SELECT project_id, seq, id::text AS id, occurred_at, action, actor_type, actor_id, actor_name, target_type,
                        target_id, ip, user_agent, request_id, metadata::text AS metadata, prev_hash, hash
                 FROM audit_events WHERE tenant_id = $1 ORDER BY project_id, seq",
                &[&tenant.id],
            )
            .await
            .map_err(authio_db::DbError::from)?;
        let heads = c
            .query("SELECT project_id, seq, hash FROM audit_chain_heads WHERE tenant_id = $1", &[&tenant.id])
            .await
            .map_err(authio_db::DbError::from)?;
        // Where each chain starts: after its latest sealed checkpoint, if its oldest events
        // were purged. A checkpoint whose seal does not open to exactly its own fields is a
        // broken link.
        let checkpoints = c
            .query(
                "SELECT DISTINCT ON (project_id) project_id, seq, hash, seal FROM audit_checkpoints
                 WHERE tenant_id = $1 ORDER BY project_id, seq DESC",
                &[&tenant.id],
            )
            .await
            .map_err(authio_db::DbError::from)?;
        let mut starts: HashMap<Uuid, Result<(i64, Vec<u8>), String>> = HashMap::new();
        for cp in &checkpoints {
            let (project, seq, hash, seal): (Uuid, i64, Vec<u8>, String) =
                (cp.col("project_id")?, cp.col("seq")?, cp.col("hash")?, cp.col("seal")?);
            let expected = checkpoint_text(tenant.id, project, seq, &hash);
            let opened = key.and_then(|k| k.decrypt(&seal).ok());
            starts.insert(
                project,
                match opened {
                    Some(text) if text == expected => Ok((seq, hash)),
                    Some(_) => Err(format!("the checkpoint at {seq} does not match its seal")),
                    None => Err(format!("the checkpoint at {seq} cannot be opened (master key needed)")),
                },
            );
        }
        // (project, seq, stored hash) of each event, in order.
        let events: Vec<(Uuid, i64, Vec<u8>)> = rows
            .iter()
            .map(|r| Ok((r.col("project_id")?, r.col("seq")?, r.col("hash")?)))
            .collect::<Result<_, CoreError>>()?;
        let mut reports: Vec<ChainReport> = Vec::new();
        let mut state: Option<(Uuid, i64, Vec<u8>)> = None;
        for r in &rows {
            let project: Uuid = r.col("project_id")?;
            if state.as_ref().map(|s| s.0) != Some(project) {
                let (start, broken) = match starts.get(&project) {
                    None => ((0, Vec::new()), None),
                    Some(Ok(s)) => (s.clone(), None),
                    Some(Err(why)) => ((0, Vec::new()), Some((0, why.clone()))),
                };
                reports.push(ChainReport { project_id: project, events: 0, first_broken: broken });
                state = Some((project, start.0, start.1));
            }
            let (Some(report), Some((_, last_seq, last_hash))) = (reports.last_mut(), state.as_mut()) else { continue };
            report.events += 1;
            if report.first_broken.is_some() {
                continue;
            }
            let seq: i64 = r.col("seq")?;
            let at: DateTime<Utc> = r.col("occurred_at")?;
            let prev: Vec<u8> = r.col("prev_hash")?;
            let stored: Vec<u8> = r.col("hash")?;
            let seq_text = seq.to_string();
            let micros = at.timestamp_micros().to_string();
            let text = |name: &str| r.col::<Option<String>>(name);
            let (id, action, actor_type) = (text("id")?, text("action")?, text("actor_type")?);
            let rest: Vec<Option<String>> =
                ["actor_id", "actor_name", "target_type", "target_id", "ip", "user_agent", "request_id", "metadata"]
                    .into_iter()
                    .map(text)
                    .collect::<Result<_, _>>()?;
            let mut fields: Vec<Option<&str>> =
                vec![Some(&seq_text), id.as_deref(), Some(&micros), action.as_deref(), actor_type.as_deref()];
            fields.extend(rest.iter().map(|f| f.as_deref()));
            let computed = audit::chain_hash(last_hash, &audit::canonical(&fields));
            let broken = if seq != *last_seq + 1 {
                Some(format!("sequence jumps from {last_seq} to {seq}: events are missing"))
            } else if prev != *last_hash {
                Some("its previous-hash does not match the event before it".to_owned())
            } else if computed.as_slice() != stored.as_slice() {
                Some("its contents do not match its hash: the event was altered".to_owned())
            } else {
                None
            };
            if let Some(why) = broken {
                report.first_broken = Some((seq, why));
                continue;
            }
            *last_seq = seq;
            *last_hash = computed.to_vec();
        }
        // Sealed anchors (on shared, out of the home's reach): each names an event's hash. A
        // chain rewritten consistently, head included, still differs from them.
        let anchors = {
            let mut cc = self.client().await?;
            let tx = OwnerTx::begin(&mut cc).await?;
            let rows = tx
                .query(
                    "SELECT project_id, seq, hash, seal, created_at FROM audit_anchors WHERE tenant_id = $1
                     ORDER BY project_id, seq",
                    &[(&tenant.id, Type::UUID)],
                )
                .await?;
            tx.commit().await?;
            rows
        };
        for a in &anchors {
            let (project, seq, hash, seal, at): (Uuid, i64, Vec<u8>, String, DateTime<Utc>) =
                (a.col("project_id")?, a.col("seq")?, a.col("hash")?, a.col("seal")?, a.col("created_at")?);
            let purged_up_to = match starts.get(&project) {
                Some(Ok((s, _))) => *s,
                _ => 0,
            };
            let opened = key.and_then(|k| k.decrypt(&seal).ok());
            let problem = if opened.is_none() {
                key.map(|_| format!("the anchor of {at} at event {seq} does not open (forged or moved)"))
            } else if opened.as_deref() != Some(anchor_text(tenant.id, project, seq, &hash).as_str()) {
                Some(format!("the anchor of {at} at event {seq} does not match its seal"))
            } else if seq <= purged_up_to {
                None
            } else {
                match events.iter().find(|e| e.0 == project && e.1 == seq) {
                    Some(e) if e.2 == hash => None,
                    Some(_) => {
                        Some(format!("event {seq} differs from the sealed anchor of {at}: the chain was rewritten"))
                    }
                    None => Some(format!("event {seq}, sealed in the anchor of {at}, is missing")),
                }
            };
            let Some(why) = problem else { continue };
            match reports.iter_mut().find(|r| r.project_id == project) {
                Some(report) => {
                    if report.first_broken.as_ref().map(|(s, _)| *s > seq).unwrap_or(true) {
                        report.first_broken = Some((seq, why));
                    }
                }
                None => reports.push(ChainReport { project_id: project, events: 0, first_broken: Some((seq, why)) }),
            }
        }
        // The head records how far each chain went: events cut off its end are caught here.
        for h in &heads {
            let project: Uuid = h.col("project_id")?;
            let head_seq: i64 = h.col("seq")?;
            let head_hash: Vec<u8> = h.col("hash")?;
            match reports.iter_mut().find(|r| r.project_id == project) {
                Some(report) if report.first_broken.is_none() => {
                    let last = events.iter().rev().find(|e| e.0 == project);
                    let (last_seq, last_hash) = last.map(|e| (e.1, e.2.clone())).unwrap_or((0, Vec::new()));
                    if last_seq != head_seq || last_hash != head_hash {
                        report.first_broken = Some((
                            last_seq + 1,
                            format!("the chain's head is at {head_seq}: later events are missing"),
                        ));
                    }
                }
                Some(_) => {}
                None => {
                    // No events left: whole only if a sealed checkpoint stands at the head.
                    let broken = match starts.get(&project) {
                        Some(Ok((seq, hash))) if *seq == head_seq && *hash == head_hash => None,
                        Some(Err(why)) => Some((0, why.clone())),
                        _ if head_seq == 0 => None,
                        _ => Some((1, format!("all {head_seq} events are missing"))),
                    };
                    reports.push(ChainReport { project_id: project, events: 0, first_broken: broken });
                }
            }
        }
        Ok(reports)
    }
}

/// How long the next key must have been published before it may sign: the JWKS cache time
/// (`max-age=300` plus `stale-while-revalidate=60`) plus the longest node cache time (60 s).
pub const MIN_NEXT_KEY_AGE_SECS: i64 = 420;

/// What a checkpoint's seal must open to.
fn anchor_text(tenant: Uuid, project: Uuid, seq: i64, hash: &[u8]) -> String {
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("authio-audit-anchor|{tenant}|{project}|{seq}|{hex}")
}

fn checkpoint_text(tenant: Uuid, project: Uuid, seq: i64, hash: &[u8]) -> String {
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("authio-audit-checkpoint|{tenant}|{project}|{seq}|{hex}")
}

/// The longest lifetime a token can be given (the cap in the schema's CHECK constraints).
pub const MAX_TOKEN_LIFETIME_SECS: i32 = 86_400;

/// What a rotation did.
#[derive(Debug, Clone, Serialize)]
pub struct Rotation {
    pub retired_kid: Option<String>,
    pub retired_published_until: Option<DateTime<Utc>>,
    pub current_kid: String,
    pub next_kid: String,
    pub next_alg: &'static str,
}
