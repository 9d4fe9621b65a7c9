//! Events: the customer-facing stream of what happened in a project (`user.created`,
//! `session.revoked`, `organization.updated`, ...), distinct from the audit log. The database
//! writes each event from the audit event it stands for, in that audit event's transaction
//! (`authio_event_emit`, migration 0020), so this module only reads the stream, in commit order
//! by its position, and keeps it to 30 days.
use authio_db::{Router, Row, RowExt, Scope, TenantKind, Type};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use uuid::Uuid;

pub mod webhooks;

use crate::authz::{Authorized, Permission};
use crate::types::project_of;
use crate::CoreError;

/// How long a project's events are kept.
pub const RETENTION_DAYS: i64 = 30;

/// Every event type the stream carries (the audit actions they come from are mapped in the
/// database).
pub const TYPES: &[&str] = &[
    "user.created",
    "user.updated",
    "user.deleted",
    "session.created",
    "session.revoked",
    "email_verification.succeeded",
    "authentication.succeeded",
    "authentication.failed",
    "tenant.moved",
    "organization.created",
    "organization.updated",
    "organization.deleted",
    "membership.added",
    "membership.updated",
    "membership.removed",
    "dsync.user.created",
    "dsync.user.updated",
    "dsync.user.deactivated",
    "dsync.user.reactivated",
    "dsync.user.deleted",
    "dsync.group.created",
    "dsync.group.updated",
    "dsync.group.deleted",
];

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    /// Its place in the project's stream: pass as `after` to read what follows.
    pub position: i64,
    pub occurred_at: DateTime<Utc>,
    pub data: serde_json::Value,
}

impl Event {
    pub(crate) fn from_row(r: &Row) -> Result<Self, CoreError> {
        Ok(Event {
            id: r.col("id")?,
            kind: r.col("type")?,
            position: r.col("position")?,
            occurred_at: r.col("occurred_at")?,
            data: r.col("data")?,
        })
    }
}

/// A page of the project's events after `after` (from the start when `None`), oldest first,
/// of the given types (all when empty), within the retention.
pub async fn list(
    router: &Router,
    auth: &Authorized,
    after: Option<i64>,
    types: &[String],
    limit: i64,
    now: DateTime<Utc>,
) -> Result<Vec<Event>, CoreError> {
    let scope = auth.require(Permission::UsersRead)?;
    project_of(scope)?;
    let since = now - Duration::days(RETENTION_DAYS);
    let tx = router.begin(scope).await?;
    let rows = tx
        .query(
            "SELECT id, type, position, occurred_at, data FROM events
              WHERE position > $1 AND occurred_at >= $2 AND (cardinality($3::text[]) = 0 OR type = ANY ($3))
              ORDER BY position LIMIT $4",
            &[
                (&after.unwrap_or(-1), Type::INT8),
                (&since, Type::TIMESTAMPTZ),
                (&types, Type::TEXT_ARRAY),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    tx.commit().await?;
    rows.iter().map(Event::from_row).collect()
}

/// Drop the events of `tenants` past the retention, each at its home. A tenant that fails is
/// logged and tried again next time. Returns how many went.
pub async fn purge(router: &Router, tenants: &[(Uuid, TenantKind)], now: DateTime<Utc>) -> i64 {
    let mut purged = 0;
    for &(tenant, kind) in tenants {
        match purge_one(router, tenant, kind, now).await {
            Ok(n) => purged += n,
            Err(e) => tracing::warn!(tenant = %tenant, error = %e, "events purge failed"),
        }
    }
    purged
}

async fn purge_one(router: &Router, tenant: Uuid, kind: TenantKind, now: DateTime<Utc>) -> Result<i64, CoreError> {
    // A write: on the home's primary, never a read pool.
    let tx = router.begin(&Scope::tenant(tenant, kind)).await?;
    let row = tx
        .query_one("SELECT authio_events_purge($1, $2) AS n", &[(&tenant, Type::UUID), (&now, Type::TIMESTAMPTZ)])
        .await?;
    tx.commit().await?;
    Ok(row.col("n")?)
}
