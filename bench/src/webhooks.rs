//! Webhook deliveries per second to a local receiver: a backlog of events, then the delivery
//! loop (the server's own `Sender`, signing each request) drains it, to one endpoint and to
//! several at once. Each delivery is a signed HTTP request, the delivery log row, and the
//! endpoint's place moved on (once per batch of 100).
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use authio_core::authz::{authorize, Permission, Principal, Target};
use authio_core::events::webhooks::{self, NewEndpoint, Sender, WebhookSettings};
use authio_core::SystemClock;
use authio_db::TenantKind;

use crate::{median, spawn, Env};

const EVENTS: i64 = 5_000;

async fn receiver() -> Result<String> {
    let app = axum::Router::new().route("/hook", axum::routing::post(|| async { "ok" }));
    Ok(format!("{}/hook", spawn(app).await?))
}

pub async fn webhooks(env: &Env, rounds: usize) -> Result<()> {
    let t = &env.a;
    let c = authio_db::pool::connect(&env.shared.admin_url, "bench").await?;
    c.batch_execute(&format!("UPDATE projects SET environment = 'development' WHERE id = '{}'", t.project.id)).await?;
    let url = receiver().await?;
    let key = authio_testkit::test_master_key();
    let target =
        Target::Project { tenant_id: t.tenant.id, project_id: t.project.id, tenant_kind: TenantKind::Customer };
    let auth = authorize(&Principal::Tool { name: "authio-bench" }, Permission::CredentialsManage, &target)?;
    let sender = Sender::new(env.router.clone(), Arc::new(SystemClock), key.clone(), WebhookSettings::default())?;
    println!("\n## Webhook deliveries to a local receiver ({EVENTS} events per endpoint, signed, logged)\n");
    println!("| endpoints | median deliveries/s | runs |\n|---|---:|---|");
    for endpoints in [1usize, 4] {
        let mut runs = Vec::new();
        for _ in 0..rounds {
            let mut ids = Vec::new();
            for _ in 0..endpoints {
                let new = NewEndpoint { url: url.clone(), event_types: vec![] };
                let (e, _) =
                    webhooks::create(&env.router, &SystemClock, &key, &auth, &new, &Default::default()).await?;
                ids.push(e.id);
            }
            // The backlog: audit events the stream maps to `user.created`, written in one statement.
            c.batch_execute(&format!(
                "INSERT INTO audit_events (tenant_id, project_id, id, occurred_at, action, actor_type, target_type,
                                           target_id, metadata)
                 SELECT '{}', '{}', gen_random_uuid(), now(), 'user.created', 'system', 'user', gen_random_uuid()::text,
                        '{{\"email\": \"bench@bench.test\"}}'
                   FROM generate_series(1, {EVENTS})",
                t.tenant.id, t.project.id
            ))
            .await?;
            let last: i64 = c
                .query_one("SELECT max(position) FROM events WHERE project_id = $1", &[&t.project.id])
                .await?
                .try_get(0)?;
            let started = Instant::now();
            loop {
                sender.run_once(16).await?;
                let done: i64 = c
                    .query_one(
                        "SELECT count(*) FROM webhook_endpoints WHERE id = ANY ($1) AND position >= $2",
                        &[&ids, &last],
                    )
                    .await?
                    .try_get(0)?;
                if done == endpoints as i64 {
                    break;
                }
                anyhow::ensure!(started.elapsed().as_secs() < 300, "the backlog did not drain");
            }
            let secs = started.elapsed().as_secs_f64();
            let failed: i64 = c
                .query_one("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = ANY ($1) AND status IS DISTINCT FROM 200", &[&ids])
                .await?
                .try_get(0)?;
            anyhow::ensure!(failed == 0, "{failed} deliveries failed");
            runs.push((EVENTS as f64 * endpoints as f64) / secs);
            // The next round starts clean: these endpoints go (their logs with them).
            c.execute("DELETE FROM webhook_endpoints WHERE id = ANY ($1)", &[&ids]).await.context("cleanup")?;
            c.execute("DELETE FROM webhook_schedule WHERE endpoint_id = ANY ($1)", &[&ids]).await?;
        }
        println!(
            "| {endpoints} | {:.0} | {:?} |",
            median(runs.clone()),
            runs.iter().map(|v| v.round()).collect::<Vec<_>>()
        );
    }
    Ok(())
}
