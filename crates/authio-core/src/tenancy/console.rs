//! The web console's control-plane side: who may manage a customer tenant from the dashboard
//! (memberships of platform identities), the Enterprise plan's dedicated-database requests and
//! their path through provisioning and the online move, plan changes, and the operator's views
//! across tenants (overview with sizes and homes, the audit log of every tenant).
//!
//! Everything here is control plane and runs through the administrative connection; what a
//! dashboard member does to a project's own data goes through the scoped router, as the API.
use authio_db::pool::connect;
use authio_db::{DbStrategy, MasterKey, OwnerTx, Row, RowExt, TenantKind, Type};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::audit::Actor;
use crate::tenancy::control::{ControlPlane, Project, Tenant, TENANT_COLS};
use crate::tenancy::dedicated::{record_for_tenant_by, ProvisionTarget};
use crate::tenancy::moves::{Direction, MoveRun};
use crate::types::{Email, Plan, ValidationError};
use crate::CoreError;

/// A dashboard member's role in a customer tenant.
pub use crate::authz::MemberRole;

/// One tenant a platform identity may manage, and how.
#[derive(Clone, Debug)]
pub struct Membership {
    pub tenant: Tenant,
    pub role: MemberRole,
}

/// A dedicated-database request as the console shows it.
#[derive(Clone, Debug, Serialize)]
pub struct DbRequest {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub tenant_slug: String,
    pub direction: String,
    pub state: String,
    pub requested_by: String,
    pub decided_by: Option<String>,
    pub move_id: Option<Uuid>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Requests are read with their tenant's slug.
const REQUEST_FROM: &str = "FROM dedicated_db_requests r JOIN tenants t ON t.id = r.tenant_id";

const REQUEST_COLS: &str = "r.id, r.tenant_id, t.slug, r.direction, r.state, r.requested_by, r.decided_by, r.move_id, \
     r.error, r.created_at, r.updated_at";

impl DbRequest {
    /// A row of [`REQUEST_COLS`].
    fn from_row(r: &Row) -> Result<Self, CoreError> {
        Ok(DbRequest {
            id: r.col("id")?,
            tenant_id: r.col("tenant_id")?,
            tenant_slug: r.col("slug")?,
            direction: r.col("direction")?,
            state: r.col("state")?,
            requested_by: r.col("requested_by")?,
            decided_by: r.col("decided_by")?,
            move_id: r.col("move_id")?,
            error: r.col("error")?,
            created_at: r.col("created_at")?,
            updated_at: r.col("updated_at")?,
        })
    }

    pub fn is_open(&self) -> bool {
        !matches!(self.state.as_str(), "declined" | "withdrawn" | "done")
    }
}

/// Where a tenant stands with its dedicated database, as the billing page says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DedicatedState {
    Off,
    Requested,
    Provisioning,
    Moving,
    Dedicated,
    MoveBackRequested,
    MovingBack,
    /// A step failed; the request stays open for an operator to retry.
    Delayed,
}

impl DedicatedState {
    pub fn of(tenant: &Tenant, open: Option<&DbRequest>) -> Self {
        match open.filter(|r| r.is_open()) {
            None if tenant.db_strategy == DbStrategy::Dedicated => DedicatedState::Dedicated,
            None => DedicatedState::Off,
            Some(r) => match (r.direction.as_str(), r.state.as_str()) {
                (_, "failed") => DedicatedState::Delayed,
                ("to_dedicated", "requested") => DedicatedState::Requested,
                ("to_dedicated", "provisioning" | "provisioned") => DedicatedState::Provisioning,
                ("to_dedicated", _) => DedicatedState::Moving,
                (_, "requested" | "provisioned") => DedicatedState::MoveBackRequested,
                _ => DedicatedState::MovingBack,
            },
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            DedicatedState::Off => "Shared database",
            DedicatedState::Requested => "Requested",
            DedicatedState::Provisioning => "Provisioning",
            DedicatedState::Moving => "Moving",
            DedicatedState::Dedicated => "Dedicated",
            DedicatedState::MoveBackRequested => "Move back requested",
            DedicatedState::MovingBack => "Moving back",
            DedicatedState::Delayed => "Delayed: an operator is on it",
        }
    }

    /// Whether the toggle shows as on (a dedicated database is wanted or there).
    pub fn toggle_on(self) -> bool {
        matches!(
            self,
            DedicatedState::Requested
                | DedicatedState::Provisioning
                | DedicatedState::Moving
                | DedicatedState::Dedicated
                | DedicatedState::Delayed
        )
    }
}

/// A tenant as the operator's overview lists it.
#[derive(Clone, Debug)]
pub struct TenantOverview {
    pub tenant: Tenant,
    /// `shared`, or the dedicated database's name.
    pub home: String,
    /// The phase of the newest move (`copying`, `cutover`, `cleanup`, `done`, `aborted`).
    pub move_phase: Option<String>,
    /// Rows at the tenant's home (users, sessions, audit events); `None` if it could not be
    /// reached.
    pub size: Option<TenantSize>,
    pub request: Option<DbRequest>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct TenantSize {
    pub users: i64,
    pub sessions: i64,
    pub audit_events: i64,
}

/// An audit event with the tenant it belongs to (the operator's log across tenants).
#[derive(Clone, Debug)]
pub struct TenantEvent {
    pub tenant_slug: String,
    pub project_id: Uuid,
    pub seq: i64,
    pub occurred_at: DateTime<Utc>,
    pub action: String,
    pub actor_type: String,
    pub actor_name: Option<String>,
    pub actor_id: Option<String>,
    pub target: Option<String>,
}

/// A signing key as the dashboard lists it (never its private part).
#[derive(Clone, Debug)]
pub struct SigningKeyInfo {
    pub kid: String,
    pub alg: String,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub publish_until: Option<DateTime<Utc>>,
}

/// [`TENANT_COLS`] of a joined `tenants` table called `alias`.
fn tenant_cols(alias: &str) -> String {
    TENANT_COLS.split(", ").map(|c| format!("{alias}.{c}")).collect::<Vec<_>>().join(", ")
}

fn conflict(msg: impl Into<String>) -> CoreError {
    CoreError::Conflict(msg.into())
}

impl ControlPlane {
    /// The platform project the console signs in through: the platform tenant's `console`
    /// project, else its oldest.
    pub async fn console_project(&self) -> Result<Project, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let row = tx
            .query_opt(
                "SELECT p.id, p.tenant_id, p.slug, p.name FROM projects p JOIN tenants t ON t.id = p.tenant_id
                 WHERE t.kind = 'platform' ORDER BY (p.slug = 'console') DESC, p.created_at, p.id LIMIT 1",
                &[],
            )
            .await?
            .ok_or(CoreError::NotFound(crate::types::Entity::PlatformProject))?;
        Ok(Project {
            id: row.col("id")?,
            tenant_id: row.col("tenant_id")?,
            slug: row.col("slug")?,
            name: row.col("name")?,
        })
    }

    pub async fn tenant(&self, id: Uuid) -> Result<Option<Tenant>, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let row =
            tx.query_opt(&format!("SELECT {TENANT_COLS} FROM tenants WHERE id = $1"), &[(&id, Type::UUID)]).await?;
        row.as_ref().map(Tenant::from_row).transpose()
    }

    /// Make a platform identity (by email; created without a password if new) a member of a
    /// customer tenant, or change its role.
    pub async fn add_member(&self, tenant_slug: &str, email: &Email, role: MemberRole) -> Result<Uuid, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let tenant = tx
            .query_opt(&format!("SELECT {TENANT_COLS} FROM tenants WHERE slug = $1"), &[(&tenant_slug, Type::TEXT)])
            .await?
            .map(|r| Tenant::from_row(&r))
            .transpose()?
            .ok_or(CoreError::NotFound(crate::types::Entity::Tenant))?;
        if tenant.tenant_kind() != TenantKind::Customer {
            return Err(CoreError::Invalid(ValidationError::Field("tenant: members belong to customer tenants")));
        }
        let users = tx
            .query(
                "SELECT u.id FROM users u JOIN tenants t ON t.id = u.tenant_id WHERE t.kind = 'platform' AND u.email = $1",
                &[(&email.as_str(), Type::TEXT)],
            )
            .await?;
        let user: Uuid = match users.as_slice() {
            // A new dashboard user: a platform identity without a password, who signs in by
            // email (magic link or code) or sets a password with "forgot password".
            [] => {
                let console = tx
                    .query_opt(
                        "SELECT p.tenant_id, p.id FROM projects p JOIN tenants t ON t.id = p.tenant_id
                         WHERE t.kind = 'platform' ORDER BY (p.slug = 'console') DESC, p.created_at, p.id LIMIT 1",
                        &[],
                    )
                    .await?
                    .ok_or(CoreError::NotFound(crate::types::Entity::PlatformProject))?;
                let (platform, project): (Uuid, Uuid) = (console.col("tenant_id")?, console.col("id")?);
                let id = Uuid::now_v7();
                let now = self.clock.now();
                tx.query(
                    "INSERT INTO users (tenant_id, project_id, id, email, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $5)",
                    &[
                        (&platform, Type::UUID),
                        (&project, Type::UUID),
                        (&id, Type::UUID),
                        (&email.as_str(), Type::TEXT),
                        (&now, Type::TIMESTAMPTZ),
                    ],
                )
                .await?;
                let scope = authio_db::Scope::project(platform, project, TenantKind::Platform);
                let event = crate::audit::Event {
                    action: crate::audit::AuditAction::UserCreated,
                    actor: Actor {
                        kind: crate::audit::ActorKind::Operator,
                        id: None,
                        name: Some("authio tenant add-member".into()),
                    },
                    target: Some(("user", id.to_string())),
                    client: &crate::types::ClientInfo::default(),
                    metadata: serde_json::json!({"email": email.as_str(), "member_of": tenant.slug}),
                };
                let row = crate::audit::EventRow::new(&scope, event, now)?;
                tx.query(crate::audit::INSERT_SQL, &row.params()).await?;
                id
            }
            [one] => one.col("id")?,
            _ => return Err(conflict("several platform users have this email")),
        };
        tx.query(
            "INSERT INTO tenant_members (tenant_id, user_id, role) VALUES ($1, $2, $3)
             ON CONFLICT (tenant_id, user_id) DO UPDATE SET role = EXCLUDED.role",
            &[(&tenant.id, Type::UUID), (&user, Type::UUID), (&role.as_str(), Type::TEXT)],
        )
        .await?;
        let actor =
            Actor { kind: crate::audit::ActorKind::Operator, id: None, name: Some("authio tenant add-member".into()) };
        let meta = serde_json::json!({"user_id": user, "email": email.as_str(), "role": role.as_str()});
        record_for_tenant_by(&tx, tenant.id, crate::audit::AuditAction::TenantMemberSet, actor, meta, self.clock.now())
            .await?;
        tx.commit().await?;
        Ok(user)
    }

    /// Take a platform identity's membership of a customer tenant away (their console session
    /// no longer reaches the tenant from the next request on).
    pub async fn remove_member(&self, tenant_slug: &str, email: &Email) -> Result<(), CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let row = tx
            .query_opt(
                "DELETE FROM tenant_members m USING tenants t, users u, tenants p
                 WHERE t.id = m.tenant_id AND t.slug = $1 AND u.id = m.user_id AND u.email = $2
                   AND p.id = u.tenant_id AND p.kind = 'platform'
                 RETURNING m.tenant_id, m.user_id, m.role",
                &[(&tenant_slug, Type::TEXT), (&email.as_str(), Type::TEXT)],
            )
            .await?
            .ok_or(CoreError::NotFound(crate::types::Entity::Membership))?;
        let (tenant, user, role): (Uuid, Uuid, String) = (row.col("tenant_id")?, row.col("user_id")?, row.col("role")?);
        let actor = Actor {
            kind: crate::audit::ActorKind::Operator,
            id: None,
            name: Some("authio tenant remove-member".into()),
        };
        let meta = serde_json::json!({"user_id": user, "email": email.as_str(), "role": role});
        record_for_tenant_by(
            &tx,
            tenant,
            crate::audit::AuditAction::TenantMemberRemoved,
            actor,
            meta,
            self.clock.now(),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A tenant's dashboard members: email and role, by email.
    pub async fn members(&self, tenant: Uuid) -> Result<Vec<(String, MemberRole)>, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let rows = tx
            .query(
                "SELECT u.email, m.role FROM tenant_members m
                 JOIN users u ON u.id = m.user_id
                 JOIN tenants p ON p.id = u.tenant_id AND p.kind = 'platform'
                 WHERE m.tenant_id = $1 ORDER BY u.email",
                &[(&tenant, Type::UUID)],
            )
            .await?;
        rows.iter().map(|r| Ok((r.col("email")?, MemberRole::parse(r.col("role")?)?))).collect()
    }

    /// The customer tenants a platform identity is a member of, by slug.
    pub async fn memberships(&self, user: Uuid) -> Result<Vec<Membership>, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let cols = tenant_cols("t");
        let rows = tx
            .query(
                &format!(
                    "SELECT {cols}, m.role FROM tenant_members m JOIN tenants t ON t.id = m.tenant_id
                     WHERE m.user_id = $1 AND t.kind = 'customer' ORDER BY t.slug"
                ),
                &[(&user, Type::UUID)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let role: String = r.col("role")?;
                Ok(Membership { tenant: Tenant::from_row(r)?, role: MemberRole::parse(&role)? })
            })
            .collect()
    }

    /// A project's signing keys: next, current, and retired ones still published.
    pub async fn signing_keys(&self, project: Uuid) -> Result<Vec<SigningKeyInfo>, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let rows = tx
            .query(
                "SELECT kid, alg, state, created_at, publish_until FROM signing_keys
                 WHERE project_id = $1 AND (state <> 'retired' OR publish_until > now())
                 ORDER BY created_at DESC",
                &[(&project, Type::UUID)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(SigningKeyInfo {
                    kid: r.col("kid")?,
                    alg: r.col("alg")?,
                    state: r.col("state")?,
                    created_at: r.col("created_at")?,
                    publish_until: r.col("publish_until")?,
                })
            })
            .collect()
    }

    /// The tenant's open dedicated-database request, else its newest.
    pub async fn latest_request(&self, tenant: Uuid) -> Result<Option<DbRequest>, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let row = tx
            .query_opt(
                &format!(
                    "SELECT {REQUEST_COLS} {REQUEST_FROM}
                     WHERE r.tenant_id = $1
                     ORDER BY (r.state NOT IN ('declined', 'withdrawn', 'done')) DESC, r.created_at DESC LIMIT 1"
                ),
                &[(&tenant, Type::UUID)],
            )
            .await?;
        row.as_ref().map(DbRequest::from_row).transpose()
    }

    /// Requests for operators: the open ones, or all (newest first, at most 200).
    pub async fn db_requests(&self, open_only: bool) -> Result<Vec<DbRequest>, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        requests_in(&tx, open_only).await
    }

    /// The billing page's toggle. On: file a request for a dedicated database (Enterprise
    /// only), or withdraw a move-back not yet started. Off: withdraw a request not yet
    /// started, or, on a dedicated tenant, file a request to move back to shared. Returns the
    /// request filed or changed (none when nothing had to change).
    pub async fn toggle_dedicated(&self, tenant: Uuid, on: bool, actor: Actor) -> Result<Option<DbRequest>, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        // One decision at a time per tenant (two clicks, two nodes).
        let t = tx
            .query_opt(&format!("SELECT {TENANT_COLS} FROM tenants WHERE id = $1 FOR UPDATE"), &[(&tenant, Type::UUID)])
            .await?
            .map(|r| Tenant::from_row(&r))
            .transpose()?
            .ok_or(CoreError::NotFound(crate::types::Entity::Tenant))?;
        let open = tx
            .query_opt(
                &format!(
                    "SELECT {REQUEST_COLS} {REQUEST_FROM}
                     WHERE r.tenant_id = $1 AND r.state NOT IN ('declined', 'withdrawn', 'done')"
                ),
                &[(&tenant, Type::UUID)],
            )
            .await?
            .map(|r| DbRequest::from_row(&r))
            .transpose()?;
        let by = actor.name.clone().or_else(|| actor.id.clone()).unwrap_or_else(|| actor.kind.as_str().to_owned());
        let wanted_direction = if on { "to_dedicated" } else { "to_shared" };
        let outcome = match open {
            Some(r) if r.direction == wanted_direction => return Ok(Some(r)),
            Some(r) if r.state == "requested" => {
                let row = transition(&tx, r.id, &["requested"], "withdrawn", &by, None).await?;
                record_for_tenant_by(
                    &tx,
                    tenant,
                    crate::audit::AuditAction::DedicatedDbRequestWithdrawn,
                    actor,
                    serde_json::json!({"request_id": r.id, "direction": r.direction}),
                    self.clock.now(),
                )
                .await?;
                Some(row)
            }
            Some(r) => {
                return Err(conflict(format!(
                    "a {} request is {} already; it can no longer be withdrawn",
                    r.direction.replace('_', " "),
                    r.state
                )))
            }
            None => {
                let needed = if on { DbStrategy::Shared } else { DbStrategy::Dedicated };
                if t.db_strategy != needed {
                    return Ok(None);
                }
                if on {
                    crate::tenancy::dedicated::check_may_be_dedicated(&t)?;
                }
                let id = Uuid::now_v7();
                let row = tx
                    .query_opt(
                        &format!(
                            "WITH r AS (INSERT INTO dedicated_db_requests (id, tenant_id, direction, state, requested_by)
                                 VALUES ($1, $2, $3, 'requested', $4) RETURNING *)
                             SELECT {REQUEST_COLS} FROM r JOIN tenants t ON t.id = r.tenant_id"
                        ),
                        &[(&id, Type::UUID), (&tenant, Type::UUID), (&wanted_direction, Type::TEXT), (&by, Type::TEXT)],
                    )
                    .await?
                    .ok_or(CoreError::NotFound(crate::types::Entity::Request))?;
                let action = if on {
                    crate::audit::AuditAction::DedicatedDbRequested
                } else {
                    crate::audit::AuditAction::DedicatedDbMoveBackRequested
                };
                record_for_tenant_by(
                    &tx,
                    tenant,
                    action,
                    actor,
                    serde_json::json!({"request_id": id}),
                    self.clock.now(),
                )
                .await?;
                Some(DbRequest::from_row(&row)?)
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Decline a request not yet started.
    pub async fn decline_request(&self, id: Uuid, actor: Actor) -> Result<DbRequest, CoreError> {
        let r = self.request(id).await?;
        if let Some(m) = self.open_move(r.tenant_id).await? {
            return Err(conflict(format!(
                "move {} of this tenant is unfinished (phase {}): resume it, or roll it back with `authio tenant move --abort`",
                m.id, m.phase
            )));
        }
        self.step(id, &["requested", "failed"], "declined", crate::audit::AuditAction::DedicatedDbDeclined, actor, None)
            .await
    }

    /// Approve a request: a move to dedicated goes to `provisioning` (then
    /// [`Self::provision_for_request`]); a move back needs nothing provisioned.
    pub async fn approve_request(&self, id: Uuid, actor: Actor) -> Result<DbRequest, CoreError> {
        let r = self.request(id).await?;
        let to = if r.direction == "to_dedicated" { "provisioning" } else { "provisioned" };
        // From `provisioning` too: a node that died while provisioning left it there, and
        // provisioning is idempotent (the advisory lock keeps two nodes from racing).
        self.step(
            id,
            &["requested", "failed", "provisioning"],
            to,
            crate::audit::AuditAction::DedicatedDbApproved,
            actor,
            None,
        )
        .await
    }

    /// Provision the approved request's database on a registered host; the request becomes
    /// `provisioned` (ready to move) or `failed` with the reason.
    pub async fn provision_for_request(&self, id: Uuid, host: &str, key: &MasterKey) -> Result<DbRequest, CoreError> {
        let r = self.request(id).await?;
        if r.state != "provisioning" {
            return Err(conflict(format!("the request is {}, not provisioning", r.state)));
        }
        let _held = self.hold(id).await?;
        let system = Actor { kind: crate::audit::ActorKind::System, id: None, name: Some("console".into()) };
        let provisioned = async {
            let tenant = self.tenant(r.tenant_id).await?.ok_or(CoreError::NotFound(crate::types::Entity::Tenant))?;
            self.provision_dedicated(&tenant, ProvisionTarget::Host(host), key).await
        };
        match provisioned.await {
            Ok(p) => {
                let meta = serde_json::json!({"database": p.database_name, "host": host});
                self.step_with(
                    id,
                    &["provisioning"],
                    "provisioned",
                    crate::audit::AuditAction::DedicatedDbProvisioned,
                    system,
                    None,
                    meta,
                )
                .await
            }
            Err(e) => self.fail(id, system, "provisioning", &e).await,
        }
    }

    /// Mark an approved (provisioned) request as moving, before [`Self::move_for_request`].
    pub async fn begin_request_move(&self, id: Uuid, actor: Actor) -> Result<DbRequest, CoreError> {
        let r = self.request(id).await?;
        if r.state == "failed" && r.direction == "to_dedicated" && !self.has_dedicated_database(r.tenant_id).await? {
            return Err(conflict("the database was never provisioned: approve the request again"));
        }
        self.step(
            id,
            &["provisioned", "failed"],
            "moving",
            crate::audit::AuditAction::DedicatedDbMoveStarted,
            actor,
            None,
        )
        .await
    }

    /// Run the request's move to the end (or finish one a crash left), then mark the request
    /// `done`, or `failed` with the reason.
    pub async fn move_for_request(&self, id: Uuid, key: &MasterKey, run: &MoveRun<'_>) -> Result<DbRequest, CoreError> {
        let r = self.request(id).await?;
        if r.state != "moving" {
            return Err(conflict(format!("the request is {}, not moving", r.state)));
        }
        let _held = self.hold(id).await?;
        let direction = if r.direction == "to_dedicated" { Direction::ToDedicated } else { Direction::ToShared };
        let target = if r.direction == "to_dedicated" { DbStrategy::Dedicated } else { DbStrategy::Shared };
        let system = Actor { kind: crate::audit::ActorKind::System, id: None, name: Some("console".into()) };
        let outcome = async {
            let tenant = self.tenant(r.tenant_id).await?.ok_or(CoreError::NotFound(crate::types::Entity::Tenant))?;
            let o = match self.open_move(tenant.id).await? {
                Some(_) => self.resume_move(&tenant, key, run).await?,
                // Already there: an earlier run finished the move but not the request.
                None if tenant.db_strategy == target => return Ok(None),
                None => self.start_move(&tenant, direction, key, run).await?,
            };
            Ok::<_, CoreError>(Some(o))
        };
        match outcome.await {
            Ok(o) => {
                let move_id = o.as_ref().map(|o| o.record.id);
                let meta = serde_json::json!({
                    "move_id": move_id,
                    "pause_ms": o.as_ref().and_then(|o| o.pause_ms),
                    "verified": o.as_ref().and_then(|o| o.record.verified),
                });
                self.step_with(
                    id,
                    &["moving"],
                    "done",
                    crate::audit::AuditAction::DedicatedDbDone,
                    system,
                    move_id,
                    meta,
                )
                .await
            }
            Err(e) => self.fail(id, system, "move", &e).await,
        }
    }

    /// Change a tenant's plan. A dedicated tenant keeps Enterprise until it has moved back.
    pub async fn set_plan(&self, tenant: Uuid, plan: Plan, actor: Actor) -> Result<Tenant, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let row = tx
            .query_opt(&format!("SELECT {TENANT_COLS} FROM tenants WHERE id = $1 FOR UPDATE"), &[(&tenant, Type::UUID)])
            .await?
            .ok_or(CoreError::NotFound(crate::types::Entity::Tenant))?;
        let before = Tenant::from_row(&row)?;
        if before.plan == plan {
            return Ok(before);
        }
        if plan != Plan::Enterprise {
            if before.db_strategy == DbStrategy::Dedicated {
                return Err(conflict("the tenant lives on a dedicated database: move it back to shared first"));
            }
            let busy = tx
                .query_opt(
                    "SELECT 1 FROM dedicated_db_requests WHERE tenant_id = $1 AND direction = 'to_dedicated'
                       AND state IN ('provisioning', 'provisioned', 'moving')
                     UNION ALL SELECT 1 FROM tenant_moves WHERE tenant_id = $1 AND phase NOT IN ('done', 'aborted')
                     LIMIT 1",
                    &[(&tenant, Type::UUID)],
                )
                .await?;
            if busy.is_some() {
                return Err(conflict("a move to a dedicated database is under way: finish or decline it first"));
            }
        }
        let row = tx
            .query_opt(
                &format!("UPDATE tenants SET plan = $2, updated_at = now() WHERE id = $1 RETURNING {TENANT_COLS}"),
                &[(&tenant, Type::UUID), (&plan.as_str(), Type::TEXT)],
            )
            .await?
            .ok_or(CoreError::NotFound(crate::types::Entity::Tenant))?;
        let meta = serde_json::json!({"from": before.plan.as_str(), "to": plan.as_str()});
        record_for_tenant_by(&tx, tenant, crate::audit::AuditAction::TenantPlanChanged, actor, meta, self.clock.now())
            .await?;
        tx.commit().await?;
        Tenant::from_row(&row)
    }

    /// Every tenant with its home, newest move, open request and size at home.
    pub async fn tenant_overview(&self, key: &MasterKey) -> Result<Vec<TenantOverview>, CoreError> {
        let cols = tenant_cols("t");
        let (rows, shared_sizes, requests) = {
            let mut c = self.client().await?;
            let tx = OwnerTx::begin(&mut c).await?;
            let rows = tx
                .query(
                    &format!(
                        "SELECT {cols}, d.database_name, d.admin_dsn_enc,
                                (SELECT m.phase FROM tenant_moves m WHERE m.tenant_id = t.id
                                 ORDER BY m.started_at DESC LIMIT 1) AS move_phase
                         FROM tenants t LEFT JOIN dedicated_databases d ON d.tenant_id = t.id AND d.status <> 'retired'
                         ORDER BY t.kind DESC, t.slug"
                    ),
                    &[],
                )
                .await?;
            let sizes = tx.query(SIZES_SQL, &[]).await?;
            (rows, sizes, requests_in(&tx, true).await?)
        };
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let tenant = Tenant::from_row(r)?;
            let database: Option<String> = r.col("database_name")?;
            let dedicated_home = tenant.db_strategy == DbStrategy::Dedicated && tenant.kind == TenantKind::Customer;
            let size = if dedicated_home {
                let enc: Option<String> = r.col("admin_dsn_enc")?;
                match enc.map(|e| key.decrypt(&e)) {
                    Some(Ok(dsn)) => dedicated_size(&dsn, tenant.id).await.ok(),
                    _ => None,
                }
            } else {
                Some(size_of(&shared_sizes, tenant.id)?)
            };
            out.push(TenantOverview {
                home: if dedicated_home { database.unwrap_or_else(|| "dedicated".into()) } else { "shared".into() },
                move_phase: r.col("move_phase")?,
                size,
                request: requests.iter().find(|q| q.tenant_id == tenant.id).cloned(),
                tenant,
            });
        }
        Ok(out)
    }

    /// The newest audit events across tenants, each read at its tenant's home (the shared
    /// database for tenants living there, each dedicated database for its tenant), newest
    /// first. Filters: a tenant slug and an action.
    pub async fn audit_across(
        &self,
        key: &MasterKey,
        tenant_slug: Option<&str>,
        action: Option<&str>,
        limit: i64,
    ) -> Result<(Vec<TenantEvent>, Vec<String>), CoreError> {
        let limit = limit.clamp(1, 500);
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        // Tenants living on shared (the platform tenant always does).
        let mut events: Vec<TenantEvent> = tx
            .query(
                "SELECT t.slug AS tenant_slug, e.project_id, e.seq, e.occurred_at, e.action, e.actor_type, e.actor_name,
                        e.actor_id, e.target_type || ':' || coalesce(e.target_id, '') AS target
                 FROM audit_events e JOIN tenants t ON t.id = e.tenant_id
                 WHERE (t.db_strategy = 'shared' OR t.kind = 'platform')
                   AND ($1::text IS NULL OR t.slug = $1) AND ($2::text IS NULL OR e.action = $2)
                 ORDER BY e.occurred_at DESC LIMIT $3",
                &[(&tenant_slug, Type::TEXT), (&action, Type::TEXT), (&limit, Type::INT8)],
            )
            .await?
            .iter()
            .map(tenant_event)
            .collect::<Result<_, _>>()?;
        let dedicated = tx
            .query(
                "SELECT t.id, t.slug, d.admin_dsn_enc FROM tenants t JOIN dedicated_databases d ON d.tenant_id = t.id
                 WHERE t.db_strategy = 'dedicated' AND t.kind = 'customer' AND d.status <> 'retired'
                   AND ($1::text IS NULL OR t.slug = $1)",
                &[(&tenant_slug, Type::TEXT)],
            )
            .await?;
        drop(tx);
        // A dedicated database that cannot be read is reported, not fatal to the whole log.
        let mut unreachable = Vec::new();
        for d in dedicated {
            let (tenant, slug, enc): (Uuid, String, String) = (d.col("id")?, d.col("slug")?, d.col("admin_dsn_enc")?);
            let read = async {
                let dsn = key.decrypt(&enc).map_err(|e| CoreError::Internal(format!("dedicated DSN: {e}")))?;
                let mut dc = connect(&dsn, "authio-console").await?;
                let dtx = OwnerTx::begin(&mut dc).await?;
                let rows = dtx
                    .query(
                        "SELECT $1::text AS tenant_slug, e.project_id, e.seq, e.occurred_at, e.action, e.actor_type,
                                e.actor_name, e.actor_id, e.target_type || ':' || coalesce(e.target_id, '') AS target
                         FROM audit_events e WHERE e.tenant_id = $2 AND ($3::text IS NULL OR e.action = $3)
                         ORDER BY e.occurred_at DESC LIMIT $4",
                        &[(&slug, Type::TEXT), (&tenant, Type::UUID), (&action, Type::TEXT), (&limit, Type::INT8)],
                    )
                    .await?;
                rows.iter().map(tenant_event).collect::<Result<Vec<_>, _>>()
            };
            match read.await {
                Ok(rows) => events.extend(rows),
                Err(e) => {
                    tracing::warn!(tenant = %slug, error = %e, "a dedicated database's audit log could not be read");
                    unreachable.push(slug);
                }
            }
        }
        events.sort_by(|a, b| b.occurred_at.cmp(&a.occurred_at).then(b.seq.cmp(&a.seq)));
        events.truncate(usize::try_from(limit).unwrap_or(500));
        Ok((events, unreachable))
    }

    /// Claim a request's background work for as long as the returned connection lives: one
    /// node at a time provisions or moves for it (a session advisory lock, released when the
    /// connection closes, also when the process dies).
    async fn hold(&self, id: Uuid) -> Result<tokio_postgres::Client, CoreError> {
        let c = self.client().await?;
        let key = id.to_string();
        let got: bool = c
            .query_one("SELECT pg_try_advisory_lock(hashtextextended('authio_db_request:' || $1, 0)) AS got", &[&key])
            .await?
            .col("got")?;
        if !got {
            return Err(conflict("another node is already working on this request"));
        }
        Ok(c)
    }

    pub async fn request(&self, id: Uuid) -> Result<DbRequest, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let row = tx
            .query_opt(
                &format!(
                    "SELECT {REQUEST_COLS} {REQUEST_FROM}
                     WHERE r.id = $1"
                ),
                &[(&id, Type::UUID)],
            )
            .await?
            .ok_or(CoreError::NotFound(crate::types::Entity::Request))?;
        DbRequest::from_row(&row)
    }

    async fn has_dedicated_database(&self, tenant: Uuid) -> Result<bool, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let row = tx
            .query_opt(
                "SELECT 1 FROM dedicated_databases WHERE tenant_id = $1 AND status = 'ready'",
                &[(&tenant, Type::UUID)],
            )
            .await?;
        Ok(row.is_some())
    }

    async fn step(
        &self,
        id: Uuid,
        from: &[&str],
        to: &str,
        action: crate::audit::AuditAction,
        actor: Actor,
        move_id: Option<Uuid>,
    ) -> Result<DbRequest, CoreError> {
        self.step_with(id, from, to, action, actor, move_id, serde_json::json!({})).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn step_with(
        &self,
        id: Uuid,
        from: &[&str],
        to: &str,
        action: crate::audit::AuditAction,
        actor: Actor,
        move_id: Option<Uuid>,
        mut meta: serde_json::Value,
    ) -> Result<DbRequest, CoreError> {
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let by = actor.name.clone().or_else(|| actor.id.clone()).unwrap_or_else(|| actor.kind.as_str().to_owned());
        let r = transition(&tx, id, from, to, &by, move_id).await?;
        if let Some(m) = meta.as_object_mut() {
            m.insert("request_id".into(), serde_json::json!(id));
            m.insert("direction".into(), serde_json::json!(r.direction));
        }
        record_for_tenant_by(&tx, r.tenant_id, action, actor, meta, self.clock.now()).await?;
        tx.commit().await?;
        Ok(r)
    }

    /// Mark the request failed. The error's text (hosts, SQL) stays on the request, for
    /// operators; the tenant's audit log, which customers export, names only the step.
    async fn fail(&self, id: Uuid, actor: Actor, step: &str, error: &CoreError) -> Result<DbRequest, CoreError> {
        let message: String = error.to_string().chars().take(2000).collect();
        let mut c = self.client().await?;
        let tx = OwnerTx::begin(&mut c).await?;
        let row = tx
            .query_opt(
                &format!(
                    "WITH r AS (UPDATE dedicated_db_requests SET state = 'failed', error = $2, updated_at = now()
                         WHERE id = $1 RETURNING *)
                     SELECT {REQUEST_COLS} FROM r JOIN tenants t ON t.id = r.tenant_id"
                ),
                &[(&id, Type::UUID), (&message, Type::TEXT)],
            )
            .await?
            .ok_or(CoreError::NotFound(crate::types::Entity::Request))?;
        let r = DbRequest::from_row(&row)?;
        let meta = serde_json::json!({"request_id": id, "failed_step": step});
        record_for_tenant_by(
            &tx,
            r.tenant_id,
            crate::audit::AuditAction::DedicatedDbFailed,
            actor,
            meta,
            self.clock.now(),
        )
        .await?;
        tx.commit().await?;
        Ok(r)
    }
}

async fn requests_in(tx: &OwnerTx<'_>, open_only: bool) -> Result<Vec<DbRequest>, CoreError> {
    let rows = tx
        .query(
            &format!(
                "SELECT {REQUEST_COLS} {REQUEST_FROM}
                 WHERE NOT $1 OR r.state NOT IN ('declined', 'withdrawn', 'done')
                 ORDER BY r.created_at DESC LIMIT 200"
            ),
            &[(&open_only, Type::BOOL)],
        )
        .await?;
    rows.iter().map(DbRequest::from_row).collect()
}

/// Move a request from one of `from` to `to` (a conflict if it is elsewhere: someone else
/// decided first).
async fn transition(
    tx: &OwnerTx<'_>,
    id: Uuid,
    from: &[&str],
    to: &str,
    by: &str,
    move_id: Option<Uuid>,
) -> Result<DbRequest, CoreError> {
    let from: Vec<String> = from.iter().map(|s| (*s).to_owned()).collect();
    let row = tx
        .query_opt(
            &format!(
                "WITH r AS (UPDATE dedicated_db_requests
                     SET state = $2, decided_by = coalesce(decided_by, $3), move_id = coalesce($4, move_id),
                         error = CASE WHEN $2 = 'failed' THEN error END, updated_at = now()
                     WHERE id = $1 AND state = ANY($5) RETURNING *)
                 SELECT {REQUEST_COLS} FROM r JOIN tenants t ON t.id = r.tenant_id"
            ),
            &[
                (&id, Type::UUID),
                (&to, Type::TEXT),
                (&by, Type::TEXT),
                (&move_id, Type::UUID),
                (&from, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    match row {
        Some(r) => DbRequest::from_row(&r),
        None => {
            let now =
                tx.query_opt("SELECT state FROM dedicated_db_requests WHERE id = $1", &[(&id, Type::UUID)]).await?;
            match now {
                None => Err(CoreError::NotFound(crate::types::Entity::Request)),
                Some(r) => Err(conflict(format!("the request is {} now", r.col::<String>("state")?))),
            }
        }
    }
}

const SIZES_SQL: &str = "SELECT tenant_id, 'users' AS what, count(*) AS n FROM users GROUP BY tenant_id
     UNION ALL SELECT tenant_id, 'sessions', count(*) FROM sessions GROUP BY tenant_id
     UNION ALL SELECT tenant_id, 'audit_events', count(*) FROM audit_events GROUP BY tenant_id";

fn size_of(rows: &[Row], tenant: Uuid) -> Result<TenantSize, CoreError> {
    let mut s = TenantSize::default();
    for r in rows {
        if r.col::<Uuid>("tenant_id")? != tenant {
            continue;
        }
        let n: i64 = r.col("n")?;
        match r.col::<&str>("what")? {
            "users" => s.users = n,
            "sessions" => s.sessions = n,
            _ => s.audit_events = n,
        }
    }
    Ok(s)
}

async fn dedicated_size(admin_dsn: &str, tenant: Uuid) -> Result<TenantSize, CoreError> {
    let mut c = connect(admin_dsn, "authio-console").await?;
    let tx = OwnerTx::begin(&mut c).await?;
    let rows = tx.query(SIZES_SQL, &[]).await?;
    size_of(&rows, tenant)
}

fn tenant_event(r: &Row) -> Result<TenantEvent, CoreError> {
    Ok(TenantEvent {
        tenant_slug: r.col("tenant_slug")?,
        project_id: r.col("project_id")?,
        seq: r.col("seq")?,
        occurred_at: r.col("occurred_at")?,
        action: r.col("action")?,
        actor_type: r.col("actor_type")?,
        actor_name: r.col("actor_name")?,
        actor_id: r.col("actor_id")?,
        target: r.col("target")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(strategy: &str) -> Tenant {
        Tenant {
            id: Uuid::nil(),
            slug: "acme".into(),
            name: "Acme".into(),
            kind: TenantKind::Customer,
            plan: Plan::Enterprise,
            db_strategy: match DbStrategy::parse(strategy) {
                Some(s) => s,
                None => panic!("unknown strategy {strategy}"),
            },
            route_epoch: 1,
            created_at: Utc::now(),
        }
    }

    fn request(direction: &str, state: &str) -> DbRequest {
        DbRequest {
            id: Uuid::nil(),
            tenant_id: Uuid::nil(),
            tenant_slug: "acme".into(),
            direction: direction.into(),
            state: state.into(),
            requested_by: "a".into(),
            decided_by: None,
            move_id: None,
            error: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn billing_states_follow_the_request_then_the_tenant() {
        use DedicatedState::*;
        let cases = [
            ("shared", None, Off),
            ("dedicated", None, Dedicated),
            ("shared", Some(("to_dedicated", "requested")), Requested),
            ("shared", Some(("to_dedicated", "provisioning")), Provisioning),
            ("shared", Some(("to_dedicated", "provisioned")), Provisioning),
            ("shared", Some(("to_dedicated", "moving")), Moving),
            ("shared", Some(("to_dedicated", "failed")), Delayed),
            ("dedicated", Some(("to_dedicated", "done")), Dedicated),
            ("shared", Some(("to_dedicated", "declined")), Off),
            ("dedicated", Some(("to_shared", "requested")), MoveBackRequested),
            ("dedicated", Some(("to_shared", "moving")), MovingBack),
            ("shared", Some(("to_shared", "done")), Off),
        ];
        for (strategy, req, want) in cases {
            let r = req.map(|(d, s)| request(d, s));
            assert_eq!(DedicatedState::of(&tenant(strategy), r.as_ref()), want, "{strategy} {req:?}");
        }
        assert!(Requested.toggle_on() && Dedicated.toggle_on() && !Off.toggle_on() && !MoveBackRequested.toggle_on());
    }

    #[test]
    fn roles_parse_and_only_viewers_are_read_only() {
        for r in ["owner", "admin", "viewer"] {
            assert_eq!(MemberRole::parse(r).map(MemberRole::as_str), Ok(r));
        }
        assert!(MemberRole::parse("operator").is_err());
        assert!(MemberRole::Owner.may_change() && MemberRole::Admin.may_change() && !MemberRole::Viewer.may_change());
    }
}
