//! The control plane, as operators reach it (CLI, `authio dev`, test kit): tenants, projects,
//! API keys and dedicated-database records, through an administrative connection acting as
//! `authio_owner`.
use authio_db::pool::connect;
use authio_db::{migrate, MasterKey, OwnerTx, RouterError, Row, TenantKind, Type};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::api_keys;
use crate::domain::{DisplayName, Plan, Slug};
use crate::CoreError;

#[derive(Clone, Debug, Serialize)]
pub struct Tenant {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub kind: String,
    pub plan: String,
    pub db_strategy: String,
    pub route_epoch: i64,
    pub created_at: DateTime<Utc>,
}

impl Tenant {
    fn from_row(r: &Row) -> Self {
        Tenant {
            id: r.get("id"),
            slug: r.get("slug"),
            name: r.get("name"),
            kind: r.get("kind"),
            plan: r.get("plan"),
            db_strategy: r.get("db_strategy"),
            route_epoch: r.get("route_epoch"),
            created_at: r.get("created_at"),
        }
    }

    pub fn tenant_kind(&self) -> TenantKind {
        TenantKind::parse(&self.kind).unwrap_or(TenantKind::Customer)
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

const TENANT_COLS: &str = "id, slug, name, kind, plan, db_strategy, route_epoch, created_at";

pub struct ControlPlane {
    admin_url: String,
}

impl ControlPlane {
    pub fn new(admin_url: impl Into<String>) -> Self {
        ControlPlane { admin_url: admin_url.into() }
    }

    async fn client(&self) -> Result<tokio_postgres::Client, CoreError> {
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
                CoreError::Invalid(crate::domain::ValidationError::Field(
                    "tenant kind: a platform tenant already exists",
                ))
            } else {
                CoreError::SlugTaken
            });
        };
        tx.commit().await?;
        Ok(Tenant::from_row(&row))
    }

    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let rows = tx.query(&format!("SELECT {TENANT_COLS} FROM tenants ORDER BY created_at, id"), &[]).await?;
        Ok(rows.iter().map(Tenant::from_row).collect())
    }

    pub async fn tenant_by_slug(&self, slug: &str) -> Result<Option<Tenant>, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let row =
            tx.query_opt(&format!("SELECT {TENANT_COLS} FROM tenants WHERE slug = $1"), &[(&slug, Type::TEXT)]).await?;
        Ok(row.as_ref().map(Tenant::from_row))
    }

    pub async fn platform_tenant(&self) -> Result<Option<Tenant>, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let row = tx.query_opt(&format!("SELECT {TENANT_COLS} FROM tenants WHERE kind = 'platform'"), &[]).await?;
        Ok(row.as_ref().map(Tenant::from_row))
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
        Ok(rows.iter().map(|r| Project { id: r.get(0), tenant_id: r.get(1), slug: r.get(2), name: r.get(3) }).collect())
    }

    pub async fn create_project(&self, tenant: Uuid, slug: &Slug, name: &DisplayName) -> Result<Project, CoreError> {
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
                Some("23503") => CoreError::NotFound("tenant"),
                _ => e.into(),
            })?;
        if row.is_none() {
            return Err(CoreError::Invalid(crate::domain::ValidationError::Field(
                "project slug: already taken in this tenant",
            )));
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
            Some("23503") => CoreError::NotFound("project"),
            _ => e.into(),
        })?;
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
        if tenant.plan != Plan::Enterprise.as_str() {
            return Err(CoreError::Invalid(crate::domain::ValidationError::Field(
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
                let enc: String = r.get(1);
                let dsn = key.decrypt(&enc).map_err(|e| RouterError::Config(format!("dedicated DSN: {e}")))?;
                Ok((r.get(0), dsn))
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
            return Err(CoreError::NotFound("tenant"));
        }
        tx.commit().await?;
        Ok(())
    }
}
