//! Audit events for acts that change no row: M2M token issuance. There is no transaction to
//! share, and the token endpoint serves far more requests per second than one project's hash
//! chain takes inserts, so a node gathers the tokens it issues and, every 100 ms, writes them to
//! each project's home log: one `m2m.tokens_issued` event per client (and scope, audience and
//! address) naming the `jti` of every token (at most [`JTIS_PER_EVENT`] per event), in one
//! transaction per project. Every token is in the log by its id; the chain takes a few events
//! per flush instead of one per token. A batch whose home cannot be written is kept and retried;
//! past [`MAX_PENDING_PER_PROJECT`] waiting tokens a project's token requests are refused (503)
//! rather than issued unrecorded. A graceful shutdown flushes; a crash loses at most the records
//! of the last flush interval (the tokens were issued; their records were not yet written).
use std::collections::HashMap;
use std::sync::{Mutex, Weak};
use std::time::Duration;

use authio_db::{Param, Router, Scope, TenantKind, Type};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::audit::{Actor, Event, EventRow};
use crate::types::ClientInfo;
use crate::CoreError;

/// Tokens waiting per project before its token requests are refused.
pub const MAX_PENDING_PER_PROJECT: usize = 200_000;

/// Token ids per event (the event's metadata is bounded at 4096 bytes).
pub const JTIS_PER_EVENT: usize = 80;

/// One issued token, as recorded.
pub struct Issued {
    pub client_id: String,
    pub jti: String,
    pub scope: String,
    pub aud: String,
    pub ip: Option<String>,
    pub at: DateTime<Utc>,
}

/// How often a node writes what it gathered.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

type Key = (Uuid, Uuid, TenantKind);

#[derive(Default)]
pub struct IssuanceLog {
    pending: Mutex<HashMap<Key, Vec<Issued>>>,
}

/// The batch insert: one row per element of the arrays, in order (the chain trigger numbers
/// them as they come).
const INSERT_BATCH_SQL: &str = "INSERT INTO audit_events (tenant_id, project_id, id, occurred_at, action, actor_type,
        actor_id, actor_name, target_type, target_id, ip, user_agent, request_id, metadata)
    SELECT $1, $2, u.* FROM unnest($3::uuid[], $4::timestamptz[], $5::text[], $6::text[], $7::text[], $8::text[],
        $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::jsonb[]) AS u";

impl IssuanceLog {
    /// Queue an issued token; refused (`Busy`) when the project's home has not taken the last
    /// [`MAX_PENDING_PER_PROJECT`].
    pub fn record(&self, scope: &Scope, issued: Issued) -> Result<(), CoreError> {
        let project = scope.project_id.ok_or(CoreError::NotFound(crate::types::Entity::Project))?;
        let mut pending = self.pending.lock().map_err(|_| CoreError::Internal("issuance log poisoned".into()))?;
        let queue = pending.entry((scope.tenant_id, project, scope.tenant_kind)).or_default();
        if queue.len() >= MAX_PENDING_PER_PROJECT {
            tracing::error!(tenant = %scope.tenant_id, %project, "token issuance records are not being written; refusing tokens");
            return Err(CoreError::Busy);
        }
        queue.push(issued);
        Ok(())
    }

    /// Events waiting in this node.
    pub fn waiting(&self) -> usize {
        self.pending.lock().map(|p| p.values().map(Vec::len).sum()).unwrap_or(0)
    }

    /// Write everything gathered, one transaction per project. Returns the events written; a
    /// project whose home failed keeps its events (ahead of newer ones) for the next flush.
    pub async fn flush(&self, router: &Router) -> usize {
        let batches: Vec<(Key, Vec<Issued>)> = match self.pending.lock() {
            Ok(mut p) => p.drain().filter(|(_, v)| !v.is_empty()).collect(),
            Err(_) => return 0,
        };
        let mut written = 0;
        for ((tenant, project, kind), issued) in batches {
            let scope = Scope::project(tenant, project, kind);
            let result = match events_of(&scope, &issued) {
                Ok(rows) => write_batch(router, &scope, &rows).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => written += issued.len(),
                Err(e) => {
                    tracing::warn!(%tenant, %project, error = %e, tokens = issued.len(), "token issuance records kept for retry");
                    if let Ok(mut p) = self.pending.lock() {
                        let queue = p.entry((tenant, project, kind)).or_default();
                        let newer = std::mem::take(queue);
                        *queue = issued;
                        queue.extend(newer);
                    }
                }
            }
        }
        written
    }
}

/// The events for a project's issued tokens: runs of the same client, scope, audience and
/// address, at most [`JTIS_PER_EVENT`] tokens each, in issuance order.
fn events_of(scope: &Scope, issued: &[Issued]) -> Result<Vec<EventRow>, CoreError> {
    let mut rows = Vec::new();
    let mut start = 0;
    while start < issued.len() {
        let first = &issued[start];
        let mut end = start + 1;
        while end < issued.len()
            && end - start < JTIS_PER_EVENT
            && issued[end].client_id == first.client_id
            && issued[end].scope == first.scope
            && issued[end].aud == first.aud
            && issued[end].ip == first.ip
        {
            end += 1;
        }
        let run = &issued[start..end];
        let last = &run[run.len() - 1];
        let event = Event {
            action: crate::audit::AuditAction::M2mTokensIssued,
            actor: Actor { kind: crate::audit::ActorKind::M2mClient, id: Some(first.client_id.clone()), name: None },
            target: Some(("m2m_client", first.client_id.clone())),
            client: &ClientInfo { ip: first.ip.clone(), ..ClientInfo::default() },
            metadata: serde_json::json!({
                "count": run.len(),
                "jtis": run.iter().map(|i| i.jti.as_str()).collect::<Vec<_>>(),
                "scope": first.scope,
                "aud": first.aud,
                "first_at": first.at,
            }),
        };
        rows.push(EventRow::new(scope, event, last.at)?);
        start = end;
    }
    Ok(rows)
}

async fn write_batch(router: &Router, scope: &Scope, rows: &[EventRow]) -> Result<(), CoreError> {
    let (tenant, project) = (scope.tenant_id, scope.project_id.unwrap_or_default());
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let at: Vec<DateTime<Utc>> = rows.iter().map(|r| r.at).collect();
    let action: Vec<&str> = rows.iter().map(|r| r.action).collect();
    let actor_type: Vec<&str> = rows.iter().map(|r| r.actor_type).collect();
    let actor_id: Vec<Option<String>> = rows.iter().map(|r| r.actor_id.clone()).collect();
    let actor_name: Vec<Option<String>> = rows.iter().map(|r| r.actor_name.clone()).collect();
    let target_type: Vec<Option<&str>> = rows.iter().map(|r| r.target_type).collect();
    let target_id: Vec<Option<String>> = rows.iter().map(|r| r.target_id.clone()).collect();
    let ip: Vec<Option<String>> = rows.iter().map(|r| r.ip.clone()).collect();
    let ua: Vec<Option<String>> = rows.iter().map(|r| r.user_agent.clone()).collect();
    let req: Vec<Option<String>> = rows.iter().map(|r| r.request_id.clone()).collect();
    let meta: Vec<serde_json::Value> = rows.iter().map(|r| r.metadata.clone()).collect();
    let params: [Param<'_>; 14] = [
        (&tenant, Type::UUID),
        (&project, Type::UUID),
        (&ids, Type::UUID_ARRAY),
        (&at, Type::TIMESTAMPTZ_ARRAY),
        (&action, Type::TEXT_ARRAY),
        (&actor_type, Type::TEXT_ARRAY),
        (&actor_id, Type::TEXT_ARRAY),
        (&actor_name, Type::TEXT_ARRAY),
        (&target_type, Type::TEXT_ARRAY),
        (&target_id, Type::TEXT_ARRAY),
        (&ip, Type::TEXT_ARRAY),
        (&ua, Type::TEXT_ARRAY),
        (&req, Type::TEXT_ARRAY),
        (&meta, Type::JSONB_ARRAY),
    ];
    router.write(scope, &[(INSERT_BATCH_SQL, &params)]).await?;
    Ok(())
}

/// Flush every [`FLUSH_EVERY`] while the log is alive.
pub(crate) async fn flush_loop(log: Weak<IssuanceLog>, router: Router) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(log) = log.upgrade() else { return };
        log.flush(&router).await;
    }
}
