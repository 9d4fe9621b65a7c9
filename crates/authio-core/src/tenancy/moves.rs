//! Moving a tenant between the shared database and its dedicated database, online, with
//! PostgreSQL logical replication and row-filtered publications (DESIGN.md, "Moving a tenant
//! online"). Each move is a `tenant_moves` row whose phase is written before each step, and
//! every step is idempotent, so a move whose process died anywhere is finished by
//! [`ControlPlane::resume_move`] or rolled back by [`ControlPlane::abort_move`].
//!
//! The write pause: the cutover takes the tenant's gate lock exclusively on the source (every
//! writing transaction of the tenant holds it shared, `authio_enter_home`), so the tenant's
//! writers in flight finish and new ones wait; in that transaction it fences the source and
//! writes a marker row. Once the marker has been applied on the target, everything the tenant
//! committed before is there too; the target becomes home and the route flips. Waiting writers
//! then find the source fenced and follow the new route.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use authio_db::pool::connect;
use authio_db::{MasterKey, OwnerTx, RouterError, RowExt, Scope, TenantKind, Type};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::audit;
use crate::tenancy::control::{ControlPlane, Tenant};
use crate::tenancy::dedicated::{check_may_be_dedicated, record_for_tenant};
use crate::CoreError;

/// A table that lives at the tenant's home (and moves with it), with its primary key, in the
/// order rows are deleted (children first). Every other table with a `tenant_id` is pinned to
/// the shared database; a test checks this list against the schema.
pub struct HomeTable {
    pub name: &'static str,
    pub key: &'static str,
}

pub const HOME_TABLES: &[HomeTable] = &[
    // Children before parents: an old copy is deleted in this order.
    HomeTable { name: "consents", key: "tenant_id, id" },
    HomeTable { name: "webauthn_ceremonies", key: "tenant_id, id" },
    HomeTable { name: "mfa_pending", key: "tenant_id, token_hash" },
    HomeTable { name: "recovery_codes", key: "tenant_id, user_id, code_hash" },
    HomeTable { name: "mfa_factors", key: "tenant_id, id" },
    HomeTable { name: "directory_group_members", key: "tenant_id, group_id, member_id" },
    HomeTable { name: "directory_groups", key: "tenant_id, id" },
    HomeTable { name: "directory_users", key: "tenant_id, id" },
    HomeTable { name: "directories", key: "tenant_id, id" },
    HomeTable { name: "webhook_deliveries", key: "tenant_id, id" },
    HomeTable { name: "webhook_endpoints", key: "tenant_id, id" },
    HomeTable { name: "invitations", key: "tenant_id, id" },
    HomeTable { name: "memberships", key: "tenant_id, organization_id, user_id" },
    HomeTable { name: "organization_domains", key: "tenant_id, id" },
    // Roles may belong to an organization (its own role set).
    HomeTable { name: "roles", key: "tenant_id, id" },
    HomeTable { name: "organizations", key: "tenant_id, id" },
    HomeTable { name: "permissions", key: "tenant_id, project_id, slug" },
    HomeTable { name: "user_identities", key: "tenant_id, id" },
    HomeTable { name: "refresh_tokens", key: "tenant_id, token_hash" },
    HomeTable { name: "revoked_access_tokens", key: "tenant_id, jti" },
    HomeTable { name: "sessions", key: "tenant_id, id" },
    HomeTable { name: "users", key: "tenant_id, id" },
    // Customer events (written by a trigger on the audit log, which a move's copy does not fire).
    HomeTable { name: "events", key: "tenant_id, project_id, position" },
    HomeTable { name: "audit_checkpoints", key: "tenant_id, project_id, seq" },
    HomeTable { name: "audit_events", key: "tenant_id, project_id, seq" },
    HomeTable { name: "audit_chain_heads", key: "tenant_id, project_id" },
    HomeTable { name: "audit_retention", key: "tenant_id" },
    HomeTable { name: "tenant_move_markers", key: "tenant_id, move_id" },
];

/// How long the cutover lets nodes open their pools to the new home before pausing.
const PREWARM_LEAD: Duration = Duration::from_millis(300);

/// The key of the tenant's gate lock (`authio_enter_home` takes it shared).
const GATE_CLASS: i32 = 1_096_111_176;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    ToDedicated,
    ToShared,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToDedicated => "to_dedicated",
            Direction::ToShared => "to_shared",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "to_dedicated" => Some(Direction::ToDedicated),
            "to_shared" => Some(Direction::ToShared),
            _ => None,
        }
    }

    fn target_strategy(self) -> &'static str {
        match self {
            Direction::ToDedicated => "dedicated",
            Direction::ToShared => "shared",
        }
    }
}

/// A move as recorded.
#[derive(Clone, Debug, Serialize)]
pub struct MoveRecord {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub direction: Direction,
    pub phase: String,
    pub switched_at: Option<DateTime<Utc>>,
    pub pause_ms: Option<f64>,
    pub rows_copied: Option<i64>,
    pub verified: Option<bool>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub source_purged_at: Option<DateTime<Utc>>,
}

const MOVE_COLS: &str = "id, tenant_id, direction, phase, switched_at, pause_ms, rows_copied, verified, error, \
     started_at, finished_at, source_purged_at";

impl MoveRecord {
    fn from_row(r: &authio_db::Row) -> Result<Self, CoreError> {
        let direction: String = r.col("direction")?;
        Ok(MoveRecord {
            id: r.col("id")?,
            tenant_id: r.col("tenant_id")?,
            direction: Direction::parse(&direction)
                .ok_or_else(|| CoreError::Internal(format!("unknown move direction {direction}")))?,
            phase: r.col("phase")?,
            switched_at: r.col("switched_at")?,
            pause_ms: r.col("pause_ms")?,
            rows_copied: r.col("rows_copied")?,
            verified: r.col("verified")?,
            error: r.col("error")?,
            started_at: r.col("started_at")?,
            finished_at: r.col("finished_at")?,
            source_purged_at: r.col("source_purged_at")?,
        })
    }

    fn name(&self) -> String {
        format!("authio_move_{}", self.id.simple())
    }
}

/// What a running move reports, about once a second.
#[derive(Clone, Debug)]
pub struct Progress {
    pub phase: &'static str,
    pub rows_copied: i64,
    pub rows_total: i64,
    pub tables_ready: i64,
    pub tables: i64,
    pub lag_bytes: i64,
}

/// One table compared on the old and the new home.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TableCheck {
    pub table: &'static str,
    pub source_rows: Option<i64>,
    pub source_checksum: Option<String>,
    pub target_rows: i64,
    pub target_checksum: String,
}

impl TableCheck {
    pub fn matches(&self) -> bool {
        self.source_rows == Some(self.target_rows) && self.source_checksum.as_deref() == Some(&self.target_checksum)
    }
}

/// The result of a move that finished.
#[derive(Clone, Debug, Serialize)]
pub struct MoveOutcome {
    pub record: MoveRecord,
    /// The longest any of the tenant's writes could have waited (from the gate's exclusive
    /// request to the route flip), when this run did the cutover.
    pub pause_ms: Option<f64>,
    pub pause_parts: Option<PauseParts>,
    pub copy_secs: f64,
    pub checks: Vec<TableCheck>,
}

/// Where the pause went: milliseconds from the gate's exclusive request to each point.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct PauseParts {
    /// The tenant's writes in flight finished (the gate was ours).
    pub gate_ms: f64,
    /// The source fenced and the marker committed.
    pub fenced_ms: f64,
    /// The marker seen on the target.
    pub marker_ms: f64,
    /// The route flipped (the end of the pause).
    pub switched_ms: f64,
    /// The pause on this process's clock (for measuring, in process, what writes went through).
    #[serde(skip)]
    pub window: Option<(Instant, Instant)>,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Knobs for a move run.
pub struct MoveRun<'a> {
    pub progress: &'a (dyn Fn(&Progress) + Send + Sync),
    /// Fault injection for tests: abort the process right after the named step (`copying`,
    /// `subscribed`, `synced`, `cutover`, `fenced`, `target_home`, `switched`, `cleanup`).
    pub kill_at: Option<&'a str>,
    /// How long the cutover may wait for the tenant's writers in flight.
    pub gate_timeout: Duration,
}

impl MoveRun<'_> {
    fn step(&self, name: &str) {
        if self.kill_at == Some(name) {
            tracing::error!(step = name, "fault injection: aborting the process");
            std::process::abort();
        }
    }
}

fn conflict(msg: impl Into<String>) -> CoreError {
    CoreError::Conflict(msg.into())
}

/// Row count and checksum (md5 over each row's md5, in key order) of a tenant's rows.
fn checksum_sql(t: &HomeTable) -> String {
    format!(
        "SELECT count(*)::bigint AS n, coalesce(md5(string_agg(md5(x::text), '' ORDER BY {key})), '') AS checksum
         FROM {name} x WHERE tenant_id = $1",
        key = t.key.split(", ").map(|c| format!("x.{c}")).collect::<Vec<_>>().join(", "),
        name = t.name
    )
}

async fn checksums(c: &impl GenericClient, tenant: Uuid) -> Result<Vec<(i64, String)>, CoreError> {
    let mut out = Vec::with_capacity(HOME_TABLES.len());
    for t in HOME_TABLES {
        let r = c.query_typed_one(&checksum_sql(t), &[(&tenant, Type::UUID)]).await?;
        out.push((r.col("n")?, r.col("checksum")?));
    }
    Ok(out)
}

async fn set_fence(c: &mut tokio_postgres::Client, tenant: Uuid, at_home: bool) -> Result<(), CoreError> {
    Ok(authio_db::migrate::set_home_on(c, tenant, at_home).await?)
}

async fn at_home(c: &tokio_postgres::Client, tenant: Uuid) -> Result<bool, CoreError> {
    Ok(c.query_typed("SELECT authio_tenant_at_home($1) AS at_home", &[(&tenant, Type::UUID)]).await?[0]
        .col("at_home")?)
}

/// Delete the tenant's home rows from a database where it is not at home (an old copy, or an
/// aborted move's partial one). Refused where it lives.
async fn delete_copy(c: &mut tokio_postgres::Client, tenant: Uuid) -> Result<i64, CoreError> {
    if at_home(c, tenant).await? {
        return Err(conflict("refusing to delete the tenant's rows where it lives"));
    }
    let tx = OwnerTx::begin(c).await?;
    let mut deleted = 0i64;
    for t in HOME_TABLES {
        let rows = tx
            .query(
                &format!(
                    "WITH d AS (DELETE FROM {} WHERE tenant_id = $1 RETURNING 1) SELECT count(*) AS n FROM d",
                    t.name
                ),
                &[(&tenant, Type::UUID)],
            )
            .await?;
        deleted += rows.first().map(|r| r.col::<i64>("n")).transpose()?.unwrap_or(0);
    }
    tx.commit().await?;
    Ok(deleted)
}

/// Quote a string as an SQL literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

struct Ends {
    source: String,
    target: String,
}

impl ControlPlane {
    async fn ends(&self, tenant: Uuid, direction: Direction, key: &MasterKey) -> Result<Ends, CoreError> {
        let dedicated = self.dedicated_admin_dsn(tenant, key).await?;
        Ok(match direction {
            Direction::ToDedicated => Ends { source: self.admin_url.clone(), target: dedicated },
            Direction::ToShared => Ends { source: dedicated, target: self.admin_url.clone() },
        })
    }

    /// The tenant's unfinished move, if any.
    pub async fn open_move(&self, tenant: Uuid) -> Result<Option<MoveRecord>, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let row = tx
            .query_opt(
                &format!(
                    "SELECT {MOVE_COLS} FROM tenant_moves WHERE tenant_id = $1 AND phase NOT IN ('done', 'aborted')"
                ),
                &[(&tenant, Type::UUID)],
            )
            .await?;
        row.as_ref().map(MoveRecord::from_row).transpose()
    }

    /// The tenant's moves, newest first.
    pub async fn moves(&self, tenant: Uuid) -> Result<Vec<MoveRecord>, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let rows = tx
            .query(
                &format!("SELECT {MOVE_COLS} FROM tenant_moves WHERE tenant_id = $1 ORDER BY started_at DESC"),
                &[(&tenant, Type::UUID)],
            )
            .await?;
        rows.iter().map(MoveRecord::from_row).collect()
    }

    async fn set_phase(&self, id: Uuid, phase: &str, error: Option<&str>) -> Result<(), CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        tx.query(
            "UPDATE tenant_moves SET phase = $2, error = $3, updated_at = now(),
                 finished_at = CASE WHEN $2 IN ('done', 'aborted') THEN now() END
             WHERE id = $1",
            &[(&id, Type::UUID), (&phase, Type::TEXT), (&error, Type::TEXT)],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Start moving a tenant to its dedicated database or back to shared, and run the move to
    /// the end.
    pub async fn start_move(
        &self,
        tenant: &Tenant,
        direction: Direction,
        key: &MasterKey,
        run: &MoveRun<'_>,
    ) -> Result<MoveOutcome, CoreError> {
        check_may_be_dedicated(tenant).or_else(|e| match (&e, direction) {
            // Moving back to shared is allowed whatever the plan is now (a downgrade).
            (CoreError::Invalid(_), Direction::ToShared) => Ok(()),
            _ => Err(e),
        })?;
        let from = match direction {
            Direction::ToDedicated => authio_db::DbStrategy::Shared,
            Direction::ToShared => authio_db::DbStrategy::Dedicated,
        };
        if tenant.db_strategy != from {
            return Err(conflict(format!("the tenant already lives on its {} database", tenant.db_strategy)));
        }
        if let Some(open) = self.open_move(tenant.id).await? {
            return Err(conflict(format!(
                "move {} is unfinished (phase {}); finish it with --resume or roll it back with --abort",
                open.id, open.phase
            )));
        }
        // Fails early (before anything is recorded) when there is no dedicated database.
        self.ends(tenant.id, direction, key).await?;
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let row = tx
            .query(
                &format!(
                    "INSERT INTO tenant_moves (id, tenant_id, direction, phase) VALUES ($1, $2, $3, 'copying')
                     RETURNING {MOVE_COLS}"
                ),
                &[(&Uuid::now_v7(), Type::UUID), (&tenant.id, Type::UUID), (&direction.as_str(), Type::TEXT)],
            )
            .await
            .map_err(|e| match e.sqlstate() {
                Some("23505") => conflict("another move of this tenant has just started"),
                _ => e.into(),
            })?;
        tx.commit().await?;
        let record = MoveRecord::from_row(row.first().ok_or(CoreError::NotFound(crate::types::Entity::Move))?)?;
        run.step("copying");
        self.drive(record, key, run).await
    }

    /// Finish the tenant's unfinished move from the phase it reached.
    pub async fn resume_move(
        &self,
        tenant: &Tenant,
        key: &MasterKey,
        run: &MoveRun<'_>,
    ) -> Result<MoveOutcome, CoreError> {
        if tenant.tenant_kind() == authio_db::TenantKind::Platform {
            return Err(RouterError::PlatformTenantNoDedicatedPool.into());
        }
        let record =
            self.open_move(tenant.id).await?.ok_or(CoreError::NotFound(crate::types::Entity::UnfinishedMove))?;
        self.drive(record, key, run).await
    }

    async fn drive(&self, record: MoveRecord, key: &MasterKey, run: &MoveRun<'_>) -> Result<MoveOutcome, CoreError> {
        let ends = self.ends(record.tenant_id, record.direction, key).await?;
        let started = Instant::now();
        let result = async {
            let mut outcome = MoveOutcome {
                record: record.clone(),
                pause_ms: None,
                pause_parts: None,
                copy_secs: 0.0,
                checks: Vec::new(),
            };
            if record.phase == "copying" {
                self.copy(&record, &ends, run).await?;
                outcome.copy_secs = started.elapsed().as_secs_f64();
                self.set_phase(record.id, "cutover", None).await?;
                run.step("cutover");
            }
            if record.phase == "copying" || record.phase == "cutover" {
                let (pause, checks) = self.cutover(&record, &ends, run).await?;
                outcome.pause_ms = pause.map(|p| p.0);
                outcome.pause_parts = pause.map(|p| p.1);
                outcome.checks = checks;
            }
            self.cleanup(&record, &ends).await?;
            run.step("cleanup");
            self.set_phase(record.id, "done", None).await?;
            outcome.record =
                self.moves(record.tenant_id).await?.into_iter().find(|m| m.id == record.id).unwrap_or(record.clone());
            Ok::<_, CoreError>(outcome)
        }
        .await;
        if let Err(e) = &result {
            // Kept for the operator; the phase stays where it was, for --resume or --abort.
            let mut c = self.client().await?;
            let tx = OwnerTx::begin(&mut c).await?;
            tx.query(
                "UPDATE tenant_moves SET error = $2, updated_at = now() WHERE id = $1",
                &[(&record.id, Type::UUID), (&e.to_string(), Type::TEXT)],
            )
            .await?;
            tx.commit().await?;
        }
        result
    }

    /// Phase `copying`: publication and slot on the source, subscription on the target (after
    /// clearing any stale copy there), then wait until every table is synchronised and the
    /// target has nearly caught up.
    async fn copy(&self, m: &MoveRecord, ends: &Ends, run: &MoveRun<'_>) -> Result<(), CoreError> {
        let name = m.name();
        let src = connect(&ends.source, "authio-move").await?;
        let mut dst = connect(&ends.target, "authio-move").await?;
        let subscribed =
            dst.query_typed("SELECT 1 FROM pg_subscription WHERE subname = $1", &[(&name, Type::TEXT)]).await?;
        if subscribed.is_empty() {
            set_fence(&mut dst, m.tenant_id, false).await?;
            delete_copy(&mut dst, m.tenant_id).await?;
            let has_pub =
                src.query_typed("SELECT 1 FROM pg_publication WHERE pubname = $1", &[(&name, Type::TEXT)]).await?;
            if has_pub.is_empty() {
                let tables = HOME_TABLES
                    .iter()
                    .map(|t| format!("{} WHERE (tenant_id = '{}')", t.name, m.tenant_id))
                    .collect::<Vec<_>>()
                    .join(", ");
                // The publication first: the slot decodes with the catalog as of its creation.
                src.batch_execute(&format!("CREATE PUBLICATION {name} FOR TABLE {tables}")).await?;
            }
            let has_slot = src
                .query_typed("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", &[(&name, Type::TEXT)])
                .await?;
            if has_slot.is_empty() {
                // Created here rather than by CREATE SUBSCRIPTION, which hangs when source and
                // target share a cluster.
                src.query_typed("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[(&name, Type::TEXT)])
                    .await?;
            }
            dst.batch_execute(&format!(
                "CREATE SUBSCRIPTION {name} CONNECTION {conn} PUBLICATION {name}
                 WITH (create_slot = false, slot_name = {slot}, copy_data = true)",
                conn = literal(&ends.source),
                slot = literal(&name),
            ))
            .await?;
        }
        run.step("subscribed");
        let mut total = 0i64;
        for t in HOME_TABLES {
            let sql = format!("SELECT count(*)::bigint AS n FROM {} WHERE tenant_id = $1", t.name);
            total += src.query_typed(&sql, &[(&m.tenant_id, Type::UUID)]).await?[0].col::<i64>("n")?;
        }
        let mut last_report = Instant::now() - Duration::from_secs(10);
        let deadline = Instant::now() + Duration::from_secs(6 * 3600);
        // Rows of each table counted once, when its initial copy is done; until then, the
        // COPY's own progress (counting a large table every second would slow everything).
        let mut counted: HashMap<String, i64> = HashMap::new();
        loop {
            let states = dst
                .query_typed(
                    "SELECT r.srrelid::regclass::text AS table_name, r.srsubstate::text IN ('r', 's') AS ready
                     FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = $1",
                    &[(&name, Type::TEXT)],
                )
                .await?;
            let tables = states.len() as i64;
            let mut pending = 0i64;
            for r in &states {
                let (table, ready): (String, bool) = (r.col("table_name")?, r.col("ready")?);
                if !ready {
                    pending += 1;
                } else if let std::collections::hash_map::Entry::Vacant(slot) = counted.entry(table) {
                    let sql = format!("SELECT count(*)::bigint AS n FROM {} WHERE tenant_id = $1", slot.key());
                    let n: i64 = dst.query_typed(&sql, &[(&m.tenant_id, Type::UUID)]).await?[0].col("n")?;
                    slot.insert(n);
                }
            }
            let lag = slot_lag(&src, &name).await?;
            let synced = tables == HOME_TABLES.len() as i64 && pending == 0;
            if synced || last_report.elapsed() >= Duration::from_secs(1) {
                let in_copy: i64 = dst
                    .query_typed(
                        "SELECT coalesce(sum(tuples_processed), 0)::bigint AS n FROM pg_stat_progress_copy
                         WHERE datname = current_database()",
                        &[],
                    )
                    .await?[0]
                    .col("n")?;
                let copied = counted.values().sum::<i64>() + in_copy;
                (run.progress)(&Progress {
                    phase: "copying",
                    rows_copied: copied,
                    rows_total: total.max(copied),
                    tables_ready: tables - pending,
                    tables: HOME_TABLES.len() as i64,
                    lag_bytes: lag,
                });
                last_report = Instant::now();
                if synced {
                    let mut c = self.client().await?;
                    let tx = OwnerTx::begin(&mut c).await?;
                    tx.query(
                        "UPDATE tenant_moves SET rows_copied = $2, updated_at = now() WHERE id = $1",
                        &[(&m.id, Type::UUID), (&copied, Type::INT8)],
                    )
                    .await?;
                    tx.commit().await?;
                }
            }
            // Synchronised, and the slot not far behind (it reports with a delay; the probes
            // below measure the real catch-up).
            if synced && lag < 16 << 20 {
                break;
            }
            if Instant::now() > deadline {
                return Err(conflict("the copy did not finish in 6 hours; see the target's logs"));
            }
            tokio::time::sleep(Duration::from_millis(if synced { 20 } else { 100 })).await;
        }
        let rtt = catch_up(&src, &dst, m.tenant_id).await?;
        tracing::info!(tenant = %m.tenant_id, probe_ms = rtt.as_secs_f64() * 1000.0, "target caught up");
        run.step("synced");
        Ok(())
    }

    /// Phase `cutover`: the write pause. Returns the pause (when this run fenced the source)
    /// and the per-table comparison of source and target as of the cutover.
    async fn cutover(
        &self,
        m: &MoveRecord,
        ends: &Ends,
        run: &MoveRun<'_>,
    ) -> Result<(Option<(f64, PauseParts)>, Vec<TableCheck>), CoreError> {
        let mut src = connect(&ends.source, "authio-move").await?;
        let mut dst = connect(&ends.target, "authio-move").await?;
        let projects = self.projects(m.tenant_id).await?;
        let fence_here = at_home(&src, m.tenant_id).await?;
        // Every connection the pause needs is opened before it.
        let mut snap_conn = connect(&ends.target, "authio-move-verify").await?;
        let mut control = self.client().await?;
        if fence_here && m.direction == Direction::ToDedicated {
            // Nodes open their pools to the new home now, not when the tenant's requests
            // arrive there right after the pause.
            control
                .query_typed("SELECT pg_notify('authio_cache', 'prewarm:' || $1::text)", &[(&m.tenant_id, Type::UUID)])
                .await?;
            tokio::time::sleep(PREWARM_LEAD).await;
        }
        let began = Instant::now();
        let mut parts = PauseParts::default();
        let mut stamp: Option<DateTime<Utc>> = None;
        if fence_here {
            let tx = OwnerTx::begin(&mut src).await?;
            // A flushed commit is sent to the target at once (with synchronous_commit off it
            // would wait for the WAL writer, up to wal_writer_delay, inside the pause).
            tx.batch(&format!(
                "SET LOCAL lock_timeout = '{}ms'; SET LOCAL synchronous_commit = on",
                run.gate_timeout.as_millis().max(1)
            ))
            .await?;
            // Waits for the tenant's writers in flight; new ones queue behind it.
            tx.query(
                "SELECT pg_advisory_xact_lock($1, hashtext($2::text))",
                &[(&GATE_CLASS, Type::INT4), (&m.tenant_id.to_string(), Type::TEXT)],
            )
            .await
            .map_err(|e| match e.sqlstate() {
                Some("55P03") => conflict("the tenant's writes in flight did not finish in time; --resume to retry"),
                _ => e.into(),
            })?;
            parts.gate_ms = ms(began);
            tx.query(
                "INSERT INTO tenant_homes (tenant_id, at_home) VALUES ($1, false)
                 ON CONFLICT (tenant_id) DO UPDATE SET at_home = false, changed_at = now()",
                &[(&m.tenant_id, Type::UUID)],
            )
            .await?;
            // Each cutover attempt stamps the marker anew: after an attempt that gave the source
            // back, an old marker on the target would say nothing about the writes since.
            let marker = tx
                .query(
                    "INSERT INTO tenant_move_markers (tenant_id, move_id, written_at) VALUES ($1, $2, clock_timestamp())
                     ON CONFLICT (tenant_id, move_id) DO UPDATE SET written_at = EXCLUDED.written_at
                     RETURNING written_at",
                    &[(&m.tenant_id, Type::UUID), (&m.id, Type::UUID)],
                )
                .await?;
            stamp = marker.first().map(|r| r.col("written_at")).transpose()?;
            // The move's event goes into the tenant's log in the cutover itself: it replicates
            // with the marker (one transaction), so both copies hold it and compare equal.
            for p in &projects {
                let scope = Scope::project(m.tenant_id, p.id, TenantKind::Customer);
                let event = audit::Event {
                    action: crate::audit::AuditAction::TenantMoved,
                    actor: audit::Actor {
                        kind: crate::audit::ActorKind::Operator,
                        id: None,
                        name: Some("authio tenant move".into()),
                    },
                    target: Some(("tenant", m.tenant_id.to_string())),
                    client: &crate::types::ClientInfo::default(),
                    metadata: serde_json::json!({"move_id": m.id, "to": m.direction.target_strategy()}),
                };
                let row = audit::EventRow::new(&scope, event, self.clock.now())?;
                tx.query(audit::INSERT_SQL, &row.params()).await?;
            }
            tx.commit().await?;
            parts.fenced_ms = ms(began);
        }
        run.step("fenced");
        // The marker this attempt wrote, or the one a killed run wrote before fencing.
        let stamp: DateTime<Utc> = match stamp {
            Some(s) => s,
            None => src
                .query_typed(
                    "SELECT written_at FROM tenant_move_markers WHERE tenant_id = $1 AND move_id = $2",
                    &[(&m.tenant_id, Type::UUID), (&m.id, Type::UUID)],
                )
                .await?
                .first()
                .map(|r| r.col("written_at"))
                .transpose()?
                .ok_or_else(|| conflict("the source is fenced but holds no marker of this move; --abort it"))?,
        };
        // The marker on the target: everything committed before the fence has been applied.
        let wait_until = Instant::now() + Duration::from_secs(60);
        loop {
            let seen = dst
                .query_typed(
                    "SELECT 1 FROM tenant_move_markers WHERE tenant_id = $1 AND move_id = $2 AND written_at = $3",
                    &[(&m.tenant_id, Type::UUID), (&m.id, Type::UUID), (&stamp, Type::TIMESTAMPTZ)],
                )
                .await?;
            if !seen.is_empty() {
                break;
            }
            if Instant::now() > wait_until {
                // Give the tenant its source back rather than keep it paused.
                set_fence(&mut src, m.tenant_id, true).await?;
                self.bump_epoch(m.tenant_id).await?;
                return Err(conflict(
                    "the target did not catch up within 60 s; the source is home again; --resume to retry",
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        parts.marker_ms = ms(began);
        // The target as of the cutover, for the comparison after the pause.
        let snap = snap_conn
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .start()
            .await?;
        snap.batch_execute("SET LOCAL TimeZone = 'UTC'; SET LOCAL ROLE authio_owner; SELECT 1").await?;
        set_fence(&mut dst, m.tenant_id, true).await?;
        run.step("target_home");
        let pause_ms = {
            let tx = OwnerTx::begin(&mut control).await?;
            tx.query(
                "UPDATE tenants SET db_strategy = $2 WHERE id = $1",
                &[(&m.tenant_id, Type::UUID), (&m.direction.target_strategy(), Type::TEXT)],
            )
            .await?;
            let pause = fence_here.then(|| began.elapsed().as_secs_f64() * 1000.0);
            tx.query(
                "UPDATE tenant_moves SET phase = 'cleanup', switched_at = now(), pause_ms = coalesce($2, pause_ms),
                     updated_at = now() WHERE id = $1",
                &[(&m.id, Type::UUID), (&pause, Type::FLOAT8)],
            )
            .await?;
            tx.commit().await?;
            parts.switched_ms = ms(began);
            parts.window = Some((began, Instant::now()));
            pause
        };
        if fence_here {
            tracing::info!(tenant = %m.tenant_id, ?parts, "cutover");
        }
        run.step("switched");
        // After the pause: the source is fenced (frozen for this tenant), the snapshot holds
        // the target as it was when it became home.
        src.batch_execute("SET TimeZone = 'UTC'").await?;
        let before = checksums(&src, m.tenant_id).await?;
        let after = checksums(&snap, m.tenant_id).await?;
        snap.rollback().await?;
        let checks: Vec<TableCheck> = HOME_TABLES
            .iter()
            .zip(before.into_iter().zip(after))
            .map(|(t, (b, a))| TableCheck {
                table: t.name,
                source_rows: Some(b.0),
                source_checksum: Some(b.1),
                target_rows: a.0,
                target_checksum: a.1,
            })
            .collect();
        let verified = checks.iter().all(TableCheck::matches);
        let report = serde_json::to_value(&checks).map_err(|e| CoreError::Internal(e.to_string()))?;
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        tx.query(
            "UPDATE tenant_moves SET verified = $2, verify_report = $3 WHERE id = $1",
            &[(&m.id, Type::UUID), (&verified, Type::BOOL), (&report, Type::JSONB)],
        )
        .await?;
        tx.commit().await?;
        if !verified {
            tracing::error!(tenant = %m.tenant_id, "the copy differs from the source as of the cutover");
        }
        Ok((pause_ms.map(|total| (total, parts)), checks))
    }

    async fn bump_epoch(&self, tenant: Uuid) -> Result<(), CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        tx.query("UPDATE tenants SET route_epoch = route_epoch + 1 WHERE id = $1", &[(&tenant, Type::UUID)]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Drop the subscription, the slot and the publication (each if present).
    async fn cleanup(&self, m: &MoveRecord, ends: &Ends) -> Result<(), CoreError> {
        let name = m.name();
        let dst = connect(&ends.target, "authio-move").await?;
        let sub = dst.query_typed("SELECT 1 FROM pg_subscription WHERE subname = $1", &[(&name, Type::TEXT)]).await?;
        if !sub.is_empty() {
            // Detach the slot first: DROP SUBSCRIPTION would otherwise drop it over a new
            // connection to the source, which hangs when both share a cluster.
            dst.batch_execute(&format!(
                "ALTER SUBSCRIPTION {name} DISABLE; ALTER SUBSCRIPTION {name} SET (slot_name = NONE); DROP SUBSCRIPTION {name}"
            ))
            .await?;
        }
        let src = connect(&ends.source, "authio-move").await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let slot = src
                .query_typed("SELECT active FROM pg_replication_slots WHERE slot_name = $1", &[(&name, Type::TEXT)])
                .await?;
            match slot.first().map(|r| r.col::<bool>("active")).transpose()? {
                None => break,
                Some(false) => {
                    src.query_typed("SELECT pg_drop_replication_slot($1)", &[(&name, Type::TEXT)]).await?;
                    break;
                }
                // The subscriber's walsender is still going away.
                Some(true) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                Some(true) => return Err(conflict(format!("replication slot {name} is still in use"))),
            }
        }
        src.batch_execute(&format!("DROP PUBLICATION IF EXISTS {name}")).await?;
        Ok(())
    }

    /// Roll back an unfinished move: drop the replication, give the source back its home,
    /// delete the partial copy on the target. Refused once the target is home (finish the move
    /// with --resume, then move back).
    pub async fn abort_move(&self, tenant: &Tenant, key: &MasterKey) -> Result<MoveRecord, CoreError> {
        let record =
            self.open_move(tenant.id).await?.ok_or(CoreError::NotFound(crate::types::Entity::UnfinishedMove))?;
        if record.switched_at.is_some() {
            return Err(conflict(
                "the target is already the tenant's home; finish with --resume, then move back if needed",
            ));
        }
        let ends = self.ends(record.tenant_id, record.direction, key).await?;
        self.cleanup(&record, &ends).await?;
        let mut dst = connect(&ends.target, "authio-move").await?;
        set_fence(&mut dst, record.tenant_id, false).await?;
        delete_copy(&mut dst, record.tenant_id).await?;
        let mut src = connect(&ends.source, "authio-move").await?;
        set_fence(&mut src, record.tenant_id, true).await?;
        self.set_phase(record.id, "aborted", None).await?;
        {
            let mut c = self.client().await?;
            let tx = OwnerTx::begin(&mut c).await?;
            let meta = serde_json::json!({"move_id": record.id, "direction": record.direction.as_str()});
            record_for_tenant(
                &tx,
                record.tenant_id,
                crate::audit::AuditAction::TenantMoveAborted,
                "authio tenant move --abort",
                meta,
                self.clock.now(),
            )
            .await?;
            tx.commit().await?;
        }
        // Requests that waited on the fenced source retry at once.
        self.bump_epoch(record.tenant_id).await?;
        Ok(self.moves(tenant.id).await?.into_iter().find(|m| m.id == record.id).unwrap_or(record))
    }

    /// Compare the tenant's rows at its home with the copy left at its previous home (until it
    /// is purged): per table, row counts and checksums. Right after a move they match; once the
    /// tenant writes at its new home they differ by those writes.
    pub async fn verify_tenant(&self, tenant: &Tenant, key: &MasterKey) -> Result<Vec<TableCheck>, CoreError> {
        if let Some(open) = self.open_move(tenant.id).await? {
            return Err(conflict(format!("move {} is unfinished (phase {})", open.id, open.phase)));
        }
        let home = match tenant.db_strategy {
            authio_db::DbStrategy::Dedicated => self.dedicated_admin_dsn(tenant.id, key).await?,
            authio_db::DbStrategy::Shared => self.admin_url.clone(),
        };
        let last = self.moves(tenant.id).await?.into_iter().find(|m| m.phase == "done");
        let old = match &last {
            Some(m) if m.source_purged_at.is_none() => Some(self.ends(tenant.id, m.direction, key).await?.source),
            _ => None,
        };
        let h = connect(&home, "authio-verify").await?;
        h.batch_execute("SET TimeZone = 'UTC'").await?;
        let at_home_sums = checksums(&h, tenant.id).await?;
        let old_sums = match old {
            Some(url) => {
                let o = connect(&url, "authio-verify").await?;
                o.batch_execute("SET TimeZone = 'UTC'").await?;
                Some(checksums(&o, tenant.id).await?)
            }
            None => None,
        };
        Ok(HOME_TABLES
            .iter()
            .enumerate()
            .map(|(i, t)| TableCheck {
                table: t.name,
                source_rows: old_sums.as_ref().map(|s| s[i].0),
                source_checksum: old_sums.as_ref().map(|s| s[i].1.clone()),
                target_rows: at_home_sums[i].0,
                target_checksum: at_home_sums[i].1.clone(),
            })
            .collect())
    }

    /// Delete the copy a finished move left at the tenant's previous home, once the rollback
    /// window has passed (or `ignore_window`). Refused while a move is unfinished.
    pub async fn purge_source(
        &self,
        tenant: &Tenant,
        key: &MasterKey,
        rollback_window: Duration,
        ignore_window: bool,
    ) -> Result<i64, CoreError> {
        if let Some(open) = self.open_move(tenant.id).await? {
            return Err(conflict(format!(
                "move {} is unfinished (phase {}); finish or abort it first",
                open.id, open.phase
            )));
        }
        let last = self
            .moves(tenant.id)
            .await?
            .into_iter()
            .find(|m| m.phase == "done")
            .filter(|m| m.source_purged_at.is_none())
            .ok_or(CoreError::NotFound(crate::types::Entity::OldCopy))?;
        let finished = last.finished_at.unwrap_or(last.started_at);
        let age = (self.clock.now() - finished).to_std().unwrap_or_default();
        if age < rollback_window && !ignore_window {
            return Err(CoreError::TooSoon(format!(
                "the rollback window has {} s left (the move finished at {finished}); pass --now to purge anyway",
                (rollback_window - age).as_secs()
            )));
        }
        let ends = self.ends(tenant.id, last.direction, key).await?;
        let mut old = connect(&ends.source, "authio-purge").await?;
        let deleted = delete_copy(&mut old, tenant.id).await?;
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        tx.query("UPDATE tenant_moves SET source_purged_at = now() WHERE id = $1", &[(&last.id, Type::UUID)]).await?;
        record_for_tenant(
            &tx,
            tenant.id,
            crate::audit::AuditAction::TenantOldCopyPurged,
            "authio tenant purge-source",
            serde_json::json!({"move_id": last.id, "rows": deleted}),
            self.clock.now(),
        )
        .await?;
        tx.commit().await?;
        Ok(deleted)
    }
}

/// Before the pause: write probe rows on the source until one reaches the target quickly, so
/// the marker's wait inside the pause has little left to apply. Returns the last round trip.
async fn catch_up(
    src: &tokio_postgres::Client,
    dst: &tokio_postgres::Client,
    tenant: uuid::Uuid,
) -> Result<Duration, CoreError> {
    let mut last = Duration::MAX;
    // Flushed at commit, so a probe measures the apply lag, not the WAL writer's cadence.
    src.batch_execute("SET synchronous_commit = on").await?;
    for _ in 0..50 {
        let probe = Uuid::now_v7();
        src.query_typed(
            "INSERT INTO tenant_move_markers (tenant_id, move_id) VALUES ($1, $2)",
            &[(&tenant, Type::UUID), (&probe, Type::UUID)],
        )
        .await?;
        let sent = Instant::now();
        loop {
            let seen = dst
                .query_typed(
                    "SELECT 1 FROM tenant_move_markers WHERE tenant_id = $1 AND move_id = $2",
                    &[(&tenant, Type::UUID), (&probe, Type::UUID)],
                )
                .await?;
            if !seen.is_empty() || sent.elapsed() > Duration::from_secs(10) {
                break;
            }
            // Outside the pause: poll gently, the tenant's writers share these cores.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        last = sent.elapsed();
        src.query_typed(
            "DELETE FROM tenant_move_markers WHERE tenant_id = $1 AND move_id = $2",
            &[(&tenant, Type::UUID), (&probe, Type::UUID)],
        )
        .await?;
        if last < Duration::from_millis(25) {
            break;
        }
    }
    Ok(last)
}

async fn slot_lag(src: &tokio_postgres::Client, name: &str) -> Result<i64, CoreError> {
    let rows = src
        .query_typed(
            "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::bigint AS lag
             FROM pg_replication_slots WHERE slot_name = $1",
            &[(&name, Type::TEXT)],
        )
        .await?;
    Ok(rows.first().map(|r| r.col("lag")).transpose()?.unwrap_or(0))
}
