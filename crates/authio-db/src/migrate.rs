//! The one migration set, applied alike to the shared database and to every dedicated one.
//!
//! Run with an administrative connection (a superuser, or a role with CREATEROLE that is a
//! member of `authio_owner`). Roles are cluster-wide and created idempotently; each migration
//! runs as `authio_owner` (`SET LOCAL ROLE`) so that role owns every object.
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::pool::connect;
use crate::{DbError, RowExt};

pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "foundation", sql: include_str!("../../../migrations/0001_foundation.sql") },
    Migration { version: 2, name: "identity", sql: include_str!("../../../migrations/0002_identity.sql") },
    Migration { version: 3, name: "signin_gate", sql: include_str!("../../../migrations/0003_signin_gate.sql") },
    Migration { version: 4, name: "audit", sql: include_str!("../../../migrations/0004_audit.sql") },
    Migration {
        version: 5,
        name: "audit_retention",
        sql: include_str!("../../../migrations/0005_audit_retention.sql"),
    },
    Migration { version: 6, name: "audit_outbox", sql: include_str!("../../../migrations/0006_audit_outbox.sql") },
    Migration {
        version: 7,
        name: "audit_hardening",
        sql: include_str!("../../../migrations/0007_audit_hardening.sql"),
    },
    Migration { version: 8, name: "moves", sql: include_str!("../../../migrations/0008_moves.sql") },
    Migration { version: 9, name: "relay_role", sql: include_str!("../../../migrations/0009_relay_role.sql") },
    Migration { version: 10, name: "audit_anchors", sql: include_str!("../../../migrations/0010_audit_anchors.sql") },
    Migration { version: 11, name: "signin_methods", sql: include_str!("../../../migrations/0011_signin_methods.sql") },
    Migration { version: 12, name: "oidc_provider", sql: include_str!("../../../migrations/0012_oidc_provider.sql") },
    Migration { version: 13, name: "console", sql: include_str!("../../../migrations/0013_console.sql") },
    Migration {
        version: 14,
        name: "signup_policy_domains",
        sql: include_str!("../../../migrations/0014_signup_policy_domains.sql"),
    },
    Migration { version: 15, name: "id_token_algs", sql: include_str!("../../../migrations/0015_id_token_algs.sql") },
    Migration {
        version: 16,
        name: "resource_indicators",
        sql: include_str!("../../../migrations/0016_resource_indicators.sql"),
    },
    Migration { version: 17, name: "organizations", sql: include_str!("../../../migrations/0017_organizations.sql") },
    Migration { version: 18, name: "email_nfc", sql: include_str!("../../../migrations/0018_email_nfc.sql") },
    Migration {
        version: 19,
        name: "invitations_impersonation",
        sql: include_str!("../../../migrations/0019_invitations_impersonation.sql"),
    },
    Migration { version: 20, name: "events", sql: include_str!("../../../migrations/0020_events.sql") },
    Migration { version: 21, name: "webhooks", sql: include_str!("../../../migrations/0021_webhooks.sql") },
    Migration {
        version: 22,
        name: "webhook_replays",
        sql: include_str!("../../../migrations/0022_webhook_replays.sql"),
    },
    Migration {
        version: 23,
        name: "sso_connections",
        sql: include_str!("../../../migrations/0023_sso_connections.sql"),
    },
    Migration {
        version: 24,
        name: "saml_connections",
        sql: include_str!("../../../migrations/0024_saml_connections.sql"),
    },
    Migration { version: 25, name: "directories", sql: include_str!("../../../migrations/0025_directories.sql") },
    Migration { version: 26, name: "mfa", sql: include_str!("../../../migrations/0026_mfa.sql") },
    Migration {
        version: 27,
        name: "third_party_clients",
        sql: include_str!("../../../migrations/0027_third_party_clients.sql"),
    },
];

const BOOTSTRAP_ROLES: &str = r#"
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authio_owner') THEN
        CREATE ROLE authio_owner NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authio_app') THEN
        CREATE ROLE authio_app LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authio_audit_retention') THEN
        CREATE ROLE authio_audit_retention LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
    -- The audit relay: reads and clears the shared outbox, nothing else.
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authio_relay') THEN
        CREATE ROLE authio_relay LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
END
$$;
"#;

/// Serialises concurrent migrators of one database.
const MIGRATION_LOCK: i64 = 0x6175_7468_696f_0001;

/// Create the cluster-wide roles if they are missing.
pub async fn bootstrap_roles(client: &tokio_postgres::Client) -> Result<(), DbError> {
    // Roles are cluster-wide: a concurrent bootstrap on another database may race us to
    // CREATE ROLE, so a unique violation here means "already there".
    if let Err(e) = client.batch_execute(BOOTSTRAP_ROLES).await {
        let dup = e.code().map(|c| c.code() == "23505" || c.code() == "42710").unwrap_or(false);
        if !dup {
            return Err(e.into());
        }
    }
    Ok(())
}

/// Apply every pending migration; returns the versions applied now.
pub async fn migrate(admin_url: &str) -> Result<Vec<i32>, DbError> {
    let mut client = connect(admin_url, "authio-migrate").await?;
    bootstrap_roles(&client).await?;
    client
        .batch_execute(
            "DO $$ BEGIN
                IF (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'public') <> 'authio_owner' THEN
                    ALTER SCHEMA public OWNER TO authio_owner;
                END IF;
            END $$;",
        )
        .await?;
    let tx = client.transaction().await?;
    tx.query_typed("SELECT pg_advisory_xact_lock($1)", &[(&MIGRATION_LOCK, Type::INT8)]).await?;
    tx.batch_execute(
        "SET LOCAL ROLE authio_owner;
         CREATE TABLE IF NOT EXISTS authio_schema_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query_typed("SELECT version FROM authio_schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.col("version"))
        .collect::<Result<_, _>>()?;
    let mut now_applied = Vec::new();
    for m in MIGRATIONS {
        if applied.contains(&m.version) {
            continue;
        }
        tx.batch_execute(m.sql).await.map_err(|e| {
            DbError::Migration(format!("migration {} ({}) failed: {}", m.version, m.name, describe(&e)))
        })?;
        tx.query_typed(
            "INSERT INTO authio_schema_migrations (version, name) VALUES ($1, $2)",
            &[(&m.version, Type::INT4), (&m.name, Type::TEXT)],
        )
        .await?;
        now_applied.push(m.version);
    }
    tx.commit().await?;
    Ok(now_applied)
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Record that this database is a dedicated database for `tenant` (the home fence then
/// admits only that tenant, and only once marked at home).
pub async fn mark_dedicated(admin_url: &str, tenant: Uuid) -> Result<(), DbError> {
    let mut client = connect(admin_url, "authio-migrate").await?;
    let tx = crate::OwnerTx::begin(&mut client).await?;
    tx.query("UPDATE database_identity SET kind = 'dedicated', tenant_id = $1", &[(&tenant, Type::UUID)]).await?;
    // The fence's default (the nil tenant id's row): on a dedicated database a tenant is at
    // home only once recorded so.
    tx.query(
        "UPDATE tenant_homes SET at_home = false, changed_at = now() WHERE tenant_id = $1",
        &[(&Uuid::nil(), Type::UUID)],
    )
    .await?;
    tx.commit().await
}

/// Set the home fence for a tenant on the database behind `admin_url`.
pub async fn set_home(admin_url: &str, tenant: Uuid, at_home: bool) -> Result<(), DbError> {
    if tenant.is_nil() {
        // The nil id's row is the database's default, set only by `mark_dedicated`.
        return Err(DbError::Migration("the nil tenant id is reserved for the fence's default".into()));
    }
    let mut client = connect(admin_url, "authio-fence").await?;
    set_home_on(&mut client, tenant, at_home).await
}

/// [`set_home`] over a connection the caller holds (a move sets fences inside its pause).
pub async fn set_home_on(client: &mut tokio_postgres::Client, tenant: Uuid, at_home: bool) -> Result<(), DbError> {
    if tenant.is_nil() {
        return Err(DbError::Migration("the nil tenant id is reserved for the fence's default".into()));
    }
    let tx = crate::OwnerTx::begin(client).await?;
    tx.query(
        "INSERT INTO tenant_homes (tenant_id, at_home) VALUES ($1, $2)
         ON CONFLICT (tenant_id) DO UPDATE SET at_home = EXCLUDED.at_home, changed_at = now()",
        &[(&tenant, Type::UUID), (&at_home, Type::BOOL)],
    )
    .await?;
    tx.commit().await
}
