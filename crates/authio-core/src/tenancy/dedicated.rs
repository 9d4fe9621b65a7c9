//! Dedicated hosts (PostgreSQL servers that hold dedicated databases) and provisioning a
//! tenant's dedicated database: create it, migrate it with the one migration set, record it
//! with its credentials encrypted by the master key. Moving data there is [`crate::tenancy::moves`].
use authio_db::pool::connect;
use authio_db::{migrate, MasterKey, OwnerTx, RouterError, RowExt, Scope, TenantKind, Type};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::audit;
use crate::tenancy::control::{ControlPlane, Tenant};
use crate::types::{Plan, Slug, ValidationError};
use crate::CoreError;

#[derive(Clone, Debug, Serialize)]
pub struct DedicatedHost {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub databases: i64,
}

/// Where `provision-dedicated` puts the database.
pub enum ProvisionTarget<'a> {
    /// A registered host: a database `authio_t_<tenant id>` is created there.
    Host(&'a str),
    /// An existing, empty database the operator created (adopted as is). `app_dsn` defaults to
    /// the admin DSN with the user `authio_app` and no password.
    Dsn { admin: &'a str, app: Option<&'a str> },
}

#[derive(Clone, Debug, Serialize)]
pub struct Provisioned {
    pub tenant_id: Uuid,
    pub database_name: String,
    pub host: Option<String>,
    /// Migrations applied now (empty when the database was already up to date).
    pub migrations_applied: Vec<i32>,
}

fn invalid(msg: &'static str) -> CoreError {
    CoreError::Invalid(ValidationError::Field(msg))
}

fn seal(key: &MasterKey, secret: &str) -> Result<String, CoreError> {
    key.encrypt(secret).map_err(|e| CoreError::Internal(format!("encrypting a credential: {e}")))
}

fn open(key: &MasterKey, sealed: &str) -> Result<String, CoreError> {
    key.decrypt(sealed).map_err(|e| CoreError::Internal(format!("decrypting a credential (wrong master key?): {e}")))
}

/// The same server and options with another database (and optionally another user).
pub(crate) fn dsn_with(dsn: &str, database: &str, user: Option<(&str, Option<&str>)>) -> Result<String, CoreError> {
    authio_db::pool::with_database_and_user(dsn, Some(database), user)
        .map_err(|_| invalid("dsn: not a postgres:// URL"))
}

/// Refuse what can never have a dedicated database, with the reason.
pub(crate) fn check_may_be_dedicated(tenant: &Tenant) -> Result<(), CoreError> {
    if tenant.tenant_kind() == TenantKind::Platform {
        // The platform tenant never moves, whatever its row says.
        return Err(RouterError::PlatformTenantNoDedicatedPool.into());
    }
    if tenant.plan != Plan::Enterprise {
        return Err(invalid("plan: dedicated databases are available on the Enterprise plan only"));
    }
    Ok(())
}

/// Record an operator's act in the audit log of every project of the tenant (through the
/// outbox, inside the caller's control-plane transaction).
pub(crate) async fn record_for_tenant(
    tx: &OwnerTx<'_>,
    tenant: Uuid,
    action: crate::audit::AuditAction,
    actor: &str,
    metadata: serde_json::Value,
    now: DateTime<Utc>,
) -> Result<(), CoreError> {
    let actor = audit::Actor { kind: crate::audit::ActorKind::Operator, id: None, name: Some(actor.to_owned()) };
    record_for_tenant_by(tx, tenant, action, actor, metadata, now).await
}

/// [`record_for_tenant`] with any actor (a dashboard member, an operator in the console).
pub(crate) async fn record_for_tenant_by(
    tx: &OwnerTx<'_>,
    tenant: Uuid,
    action: crate::audit::AuditAction,
    actor: audit::Actor,
    metadata: serde_json::Value,
    now: DateTime<Utc>,
) -> Result<(), CoreError> {
    let projects = tx.query("SELECT id FROM projects WHERE tenant_id = $1", &[(&tenant, Type::UUID)]).await?;
    for p in projects {
        let scope = Scope::project(tenant, p.col("id")?, TenantKind::Customer);
        let event = audit::Event {
            action,
            actor: actor.clone(),
            target: Some(("tenant", tenant.to_string())),
            client: &crate::types::ClientInfo::default(),
            metadata: metadata.clone(),
        };
        audit::record_pinned_as_owner(tx, &scope, event, now).await?;
    }
    Ok(())
}

impl ControlPlane {
    /// Register a server that can hold dedicated databases. `admin_dsn` is a superuser (or a
    /// role with CREATEDB, CREATEROLE and REPLICATION) on it. The app role `authio_app` is
    /// cluster-wide: if it has no password yet one is generated and set; if it has one, pass it
    /// as `app_password` (it is never changed under databases that use it).
    pub async fn add_dedicated_host(
        &self,
        name: &Slug,
        admin_dsn: &str,
        app_password: Option<&str>,
        key: &MasterKey,
    ) -> Result<DedicatedHost, CoreError> {
        dsn_with(admin_dsn, "postgres", None)?;
        let host = connect(admin_dsn, "authio-provision").await?;
        migrate::bootstrap_roles(&host).await?;
        let password = match app_password {
            Some(p) => p.to_owned(),
            None => {
                let has: bool = host
                    .query_one("SELECT rolpassword IS NOT NULL AS has FROM pg_authid WHERE rolname = 'authio_app'", &[])
                    .await?
                    .col("has")?;
                if has {
                    return Err(CoreError::Conflict(
                        "authio_app already has a password on this host; pass it with --app-password".into(),
                    ));
                }
                let generated = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(crate::crypto::opaque::random_bytes::<24>());
                // Role passwords cannot be bound parameters; the generated one is url-safe base64.
                host.batch_execute(&format!("ALTER ROLE authio_app WITH LOGIN PASSWORD '{generated}'")).await?;
                generated
            }
        };
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let id = Uuid::now_v7();
        let row = tx
            .query_opt(
                "INSERT INTO dedicated_hosts (id, name, admin_dsn_enc, app_password_enc) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO NOTHING RETURNING created_at",
                &[
                    (&id, Type::UUID),
                    (&name.as_str(), Type::TEXT),
                    (&seal(key, admin_dsn)?, Type::TEXT),
                    (&seal(key, &password)?, Type::TEXT),
                ],
            )
            .await?
            .ok_or_else(|| CoreError::Conflict(format!("a dedicated host named {} exists", name.as_str())))?;
        tx.commit().await?;
        Ok(DedicatedHost { id, name: name.as_str().to_owned(), created_at: row.col("created_at")?, databases: 0 })
    }

    pub async fn list_dedicated_hosts(&self) -> Result<Vec<DedicatedHost>, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let rows = tx
            .query(
                "SELECT h.id, h.name, h.created_at,
                        (SELECT count(*) FROM dedicated_databases d WHERE d.host_id = h.id AND d.status <> 'retired')
                            AS databases
                 FROM dedicated_hosts h ORDER BY h.name",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(DedicatedHost {
                    id: r.col("id")?,
                    name: r.col("name")?,
                    created_at: r.col("created_at")?,
                    databases: r.col("databases")?,
                })
            })
            .collect()
    }

    /// Create (or adopt) the tenant's dedicated database, migrate it, mark it as that tenant's
    /// (the home fence admits nobody until a move makes it home), and record it `ready`.
    /// Idempotent: run again, it finishes what a crash left half done. The tenant keeps living
    /// where it is; `authio tenant move --to dedicated` moves its data.
    pub async fn provision_dedicated(
        &self,
        tenant: &Tenant,
        target: ProvisionTarget<'_>,
        key: &MasterKey,
    ) -> Result<Provisioned, CoreError> {
        check_may_be_dedicated(tenant)?;
        if tenant.db_strategy == authio_db::DbStrategy::Dedicated {
            return Err(CoreError::Conflict("the tenant already lives on its dedicated database".into()));
        }
        let database_name = format!("authio_t_{}", tenant.id.simple());
        let (host_id, host_name, admin_dsn, app_dsn) = match target {
            ProvisionTarget::Host(name) => {
                let mut c = self.client().await?;
                let tx = OwnerTx::begin(&mut c).await?;
                let row = tx
                    .query_opt(
                        "SELECT id, admin_dsn_enc, app_password_enc FROM dedicated_hosts WHERE name = $1",
                        &[(&name, Type::TEXT)],
                    )
                    .await?
                    .ok_or(CoreError::NotFound(crate::types::Entity::DedicatedHost))?;
                let host_id: Uuid = row.col("id")?;
                let host_admin = open(key, &row.col::<String>("admin_dsn_enc")?)?;
                let app_password = row.col::<Option<String>>("app_password_enc")?.map(|p| open(key, &p)).transpose()?;
                let host = connect(&host_admin, "authio-provision").await?;
                let exists =
                    host.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database_name]).await?.is_some();
                if !exists {
                    // Identifiers cannot be bound; the name is `authio_t_` and hex digits.
                    host.batch_execute(&format!("CREATE DATABASE {database_name}")).await?;
                }
                host.batch_execute(&format!(
                    "REVOKE CONNECT ON DATABASE {database_name} FROM PUBLIC;
                     GRANT CONNECT ON DATABASE {database_name} TO authio_app, authio_audit_retention"
                ))
                .await?;
                let admin = dsn_with(&host_admin, &database_name, None)?;
                let app = dsn_with(&host_admin, &database_name, Some(("authio_app", app_password.as_deref())))?;
                (Some(host_id), Some(name.to_owned()), admin, app)
            }
            ProvisionTarget::Dsn { admin, app } => {
                // Say why (a bad TLS parameter, a remote host without sslmode, not a URL).
                let parsed = authio_db::pool::parse_url(admin).map_err(|e| match e {
                    authio_db::DbError::Config(why) => CoreError::Config(format!("dsn: {why}")),
                    _ => invalid("dsn: not a postgres:// URL"),
                })?;
                let db = parsed.pg.get_dbname().unwrap_or_default().to_owned();
                if db.is_empty() {
                    return Err(invalid("dsn: name the database to adopt"));
                }
                let app = match app {
                    Some(a) => a.to_owned(),
                    None => dsn_with(admin, &db, Some(("authio_app", None)))?,
                };
                (None, None, admin.to_owned(), app)
            }
        };
        // Refuse a database that already holds another tenant, or is the shared database.
        let probe = connect(&admin_dsn, "authio-provision").await?;
        let identity = probe
            .query_opt("SELECT kind, tenant_id FROM database_identity", &[])
            .await
            .ok()
            .flatten()
            .map(|r| Ok::<_, CoreError>((r.col::<String>("kind")?, r.col::<Option<Uuid>>("tenant_id")?)))
            .transpose()?;
        match identity {
            Some((kind, Some(t))) if kind == "dedicated" && t != tenant.id => {
                return Err(CoreError::Conflict("that database belongs to another tenant".into()))
            }
            Some((kind, _)) if kind == "shared" => {
                let tenants: i64 = probe.query_one("SELECT count(*) AS n FROM tenants", &[]).await?.col("n")?;
                if tenants > 0 {
                    return Err(CoreError::Conflict("that database is a shared database with tenants".into()));
                }
            }
            _ => {}
        }
        drop(probe);
        {
            let mut c = self.client().await?;
            let tx = OwnerTx::begin(&mut c).await?;
            let taken = tx
                .query_opt(
                    "SELECT 1 FROM dedicated_databases WHERE tenant_id = $1 AND status <> 'retired'
                       AND database_name <> $2",
                    &[(&tenant.id, Type::UUID), (&database_name, Type::TEXT)],
                )
                .await?;
            if taken.is_some() && host_id.is_some() {
                return Err(CoreError::Conflict("the tenant already has a dedicated database recorded".into()));
            }
            tx.query(
                "INSERT INTO dedicated_databases (tenant_id, host_id, database_name, app_dsn_enc, admin_dsn_enc, status)
                 VALUES ($1, $2, $3, $4, $5, 'provisioning')
                 ON CONFLICT (tenant_id) DO UPDATE SET host_id = EXCLUDED.host_id,
                     database_name = EXCLUDED.database_name, app_dsn_enc = EXCLUDED.app_dsn_enc,
                     admin_dsn_enc = EXCLUDED.admin_dsn_enc, status = 'provisioning'",
                &[
                    (&tenant.id, Type::UUID),
                    (&host_id, Type::UUID),
                    (&database_name, Type::TEXT),
                    (&seal(key, &app_dsn)?, Type::TEXT),
                    (&seal(key, &admin_dsn)?, Type::TEXT),
                ],
            )
            .await?;
            tx.commit().await?;
        }
        let applied = migrate::migrate(&admin_dsn).await?;
        migrate::mark_dedicated(&admin_dsn, tenant.id).await?;
        // The app role must reach it: fail here, not at the first request after a move.
        connect(&app_dsn, "authio-provision").await.map_err(|e| {
            CoreError::Config(format!("the app role cannot connect to the new database ({e}); check --app-password"))
        })?;
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        tx.query("UPDATE dedicated_databases SET status = 'ready' WHERE tenant_id = $1", &[(&tenant.id, Type::UUID)])
            .await?;
        record_for_tenant(
            &tx,
            tenant.id,
            crate::audit::AuditAction::TenantDedicatedProvisioned,
            "authio tenant provision-dedicated",
            serde_json::json!({"database": database_name, "host": host_name}),
            self.clock.now(),
        )
        .await?;
        tx.commit().await?;
        Ok(Provisioned { tenant_id: tenant.id, database_name, host: host_name, migrations_applied: applied })
    }

    /// The admin connection string of a tenant's recorded dedicated database.
    pub(crate) async fn dedicated_admin_dsn(&self, tenant: Uuid, key: &MasterKey) -> Result<String, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let row = tx
            .query_opt(
                "SELECT admin_dsn_enc FROM dedicated_databases WHERE tenant_id = $1 AND status = 'ready'",
                &[(&tenant, Type::UUID)],
            )
            .await?
            .ok_or_else(|| {
                CoreError::Conflict(
                    "the tenant has no ready dedicated database; run `authio tenant provision-dedicated` first".into(),
                )
            })?;
        open(key, &row.col::<String>("admin_dsn_enc")?)
    }
}
