//! The dedicated tier: moving a large tenant online under a steady write load, and the memory
//! of a node that routes to many dedicated databases.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use authio_core::tenancy::control::ControlPlane;
use authio_core::tenancy::moves::Direction;
use authio_core::types::Plan;
use authio_core::SystemClock;
use authio_db::{RouterSettings, Scope, TenantKind};
use authio_testkit::{
    fresh_dedicated_db, fresh_shared_db, provision_dedicated, quiet_move, router_for, router_settings, seed_tenant,
    test_master_key,
};
use serde_json::json;

use crate::{env_num, insert_users, median, spawn};

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// One write of the paced load: when it started (since the load began), how long it took, and
/// whether it was acknowledged.
struct Write {
    at: f64,
    secs: f64,
    ok: bool,
    /// Status and body of a failed write.
    error: Option<String>,
}

/// A tenant of BENCH_MOVE_USERS users (default 1,000,000), written to at BENCH_MOVE_RATE
/// user creations per second (default 500, open loop: each write is sent on its tick whatever
/// the others are doing) through the HTTP API, moved to its dedicated database and back
/// BENCH_MOVES times in all (default 4). For each move: rows copied per second, the pause the
/// move measured (gate requested -> route flipped), and the longest and p99 wait of the writes
/// sent during the move.
pub async fn move_bench() -> Result<()> {
    let users = env_num("BENCH_MOVE_USERS", 1_000_000) as i64;
    let rate = env_num("BENCH_MOVE_RATE", 500);
    let moves = env_num("BENCH_MOVES", 4);
    let shared = fresh_shared_db().await;
    let s = seed_tenant(&shared, "big-tenant", TenantKind::Customer, Plan::Enterprise).await;
    let _other = seed_tenant(&shared, "neighbour", TenantKind::Customer, Plan::Free).await;
    let t0 = Instant::now();
    insert_users(&shared.admin_url, s.tenant.id, s.project.id, users, "big").await?;
    println!("\n## Online move of a {users}-user tenant under {rate} writes/s\n");
    println!("seeded {users} users in {:.1} s", t0.elapsed().as_secs_f64());
    provision_dedicated(&shared, &s.tenant).await;
    // 8 shared connections (two cores: more backends only queue on the CPU), 5 s to get one.
    let router = authio_db::Router::new(
        &shared.app_url,
        env_num("BENCH_POOL", 8) as usize,
        Some(test_master_key()),
        RouterSettings { acquire_timeout: Duration::from_secs(5), dedicated_pool_max_size: 8, ..router_settings() },
    )?;
    router.start();
    let auth = authio_server::AuthSettings::new("http://127.0.0.1", test_master_key());
    let state = authio_server::AppState::new(router.clone(), Arc::new(SystemClock), auth)?;
    let base = spawn(authio_server::build_app(state)).await?;
    let url = format!("{base}/v1/projects/{}/users", s.project.id);

    let writes: Arc<Mutex<Vec<Write>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let load = {
        let (writes, stop, url, key) = (writes.clone(), stop.clone(), url.clone(), s.api_key.plaintext.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::builder().pool_max_idle_per_host(256).build().expect("client");
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                i += 1;
                let (http, url, key, writes) = (http.clone(), url.clone(), key.clone(), writes.clone());
                let at = started.elapsed().as_secs_f64();
                tokio::spawn(async move {
                    let t = Instant::now();
                    let r = http
                        .post(&url)
                        .bearer_auth(&key)
                        .json(&json!({"email": format!("load{i}@bench.test")}))
                        .send()
                        .await;
                    let secs = t.elapsed().as_secs_f64();
                    let error = match r {
                        Ok(r) if r.status() == reqwest::StatusCode::CREATED => None,
                        Ok(r) => Some(format!("{} {}", r.status(), r.text().await.unwrap_or_default())),
                        Err(e) => Some(e.to_string()),
                    };
                    if let Ok(mut w) = writes.lock() {
                        w.push(Write { at, secs, ok: error.is_none(), error });
                    }
                });
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cp = ControlPlane::new(shared.admin_url.clone());
    println!(
        "\n| move | rows copied | copy s | rows/s | pause (measured by the move) ms | gate / fenced / marker ms | writes in flight at the pause | longest of them ms | writes during the move | failed | longest ms | p99 ms |"
    );
    println!("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    let mut pauses = Vec::new();
    let mut longest = Vec::new();
    for n in 0..moves {
        let direction = if n % 2 == 0 { Direction::ToDedicated } else { Direction::ToShared };
        let tenant = cp.tenant_by_slug("big-tenant").await?.ok_or_else(|| anyhow::anyhow!("tenant"))?;
        let from = started.elapsed().as_secs_f64();
        let outcome = cp.start_move(&tenant, direction, &test_master_key(), &quiet_move()).await?;
        let to = started.elapsed().as_secs_f64();
        // Writes sent during the move that were still in flight finish shortly after.
        tokio::time::sleep(Duration::from_secs(2)).await;
        // The writes in flight at any moment of the pause, and the longest of them: the write
        // pause as the tenant's clients saw it.
        let pause_window = outcome.pause_parts.and_then(|p| p.window).map(|(a, b)| {
            (a.saturating_duration_since(started).as_secs_f64(), b.saturating_duration_since(started).as_secs_f64())
        });
        let at_cutover: Vec<f64> = {
            let w = writes.lock().map_err(|_| anyhow::anyhow!("lock"))?;
            match pause_window {
                Some((a, b)) => w.iter().filter(|w| w.at <= b && w.at + w.secs >= a).map(|w| w.secs * 1000.0).collect(),
                None => Vec::new(),
            }
        };
        let (window, failed, sample): (Vec<f64>, usize, Option<String>) = {
            let w = writes.lock().map_err(|_| anyhow::anyhow!("lock"))?;
            let inside: Vec<&Write> = w.iter().filter(|w| w.at >= from && w.at <= to).collect();
            (
                inside.iter().map(|w| w.secs * 1000.0).collect(),
                inside.iter().filter(|w| !w.ok).count(),
                inside.iter().find_map(|w| w.error.clone()),
            )
        };
        if let Some(example) = sample {
            println!("(move {}: {failed} writes failed, for example: {example})", n + 1);
        }
        let rows = outcome.record.rows_copied.unwrap_or(0);
        let pause = outcome.pause_ms.unwrap_or(f64::NAN);
        let max = window.iter().cloned().fold(0.0, f64::max);
        let parts = outcome
            .pause_parts
            .map(|p| format!("{:.1} / {:.1} / {:.1}", p.gate_ms, p.fenced_ms, p.marker_ms))
            .unwrap_or_default();
        println!(
            "| {} {} | {} | {:.1} | {:.0} | {:.1} | {} | {} | {:.1} | {} | {} | {:.1} | {:.1} |",
            n + 1,
            direction.as_str(),
            rows,
            outcome.copy_secs,
            rows as f64 / outcome.copy_secs.max(0.001),
            pause,
            parts,
            at_cutover.len(),
            at_cutover.iter().cloned().fold(0.0, f64::max),
            window.len(),
            failed,
            max,
            percentile(window.clone(), 0.99)
        );
        if !outcome.checks.iter().all(|c| c.matches()) {
            bail!("move {n}: the copy differs from the source");
        }
        pauses.push(pause);
        longest.push(at_cutover.iter().cloned().fold(0.0, f64::max));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = load.await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = writes.lock().map_err(|_| anyhow::anyhow!("lock"))?;
    let baseline: Vec<f64> = all.iter().map(|w| w.secs * 1000.0).collect();
    println!(
        "\nover {moves} moves: measured pause p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         longest write wait at the pause p50 {:.1} ms, max {:.1} ms; all {} writes: p50 {:.1} ms, p99 {:.1} ms, failed {}",
        percentile(pauses.clone(), 0.5),
        percentile(pauses.clone(), 0.99),
        pauses.iter().cloned().fold(0.0, f64::max),
        median(longest.clone()),
        longest.iter().cloned().fold(0.0, f64::max),
        all.len(),
        percentile(baseline.clone(), 0.5),
        percentile(baseline, 0.99),
        all.iter().filter(|w| !w.ok).count()
    );
    router.shutdown();
    Ok(())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// A node routing to BENCH_DEDICATED_TENANTS (default 1,000) dedicated tenants: each tenant's
/// route and dedicated database record are real, and one request per tenant opens its pool. The
/// tenants share four physical databases (a thousand databases would not fit this machine's
/// disk), each database admitting its tenants through its home fence, so every request really
/// connects and reads. Pools are bounded per node (default 256, least recently used closed).
pub async fn routing_memory() -> Result<()> {
    let n = env_num("BENCH_DEDICATED_TENANTS", 1_000) as usize;
    let max_pools = env_num("BENCH_MAX_POOLS", 256) as usize;
    let shared = fresh_shared_db().await;
    let key = test_master_key();
    let mut dbs = Vec::new();
    for _ in 0..4 {
        dbs.push(fresh_dedicated_db().await);
    }
    let admin = authio_db::pool::connect(&shared.admin_url, "bench").await?;
    let mut tenants = Vec::with_capacity(n);
    for i in 0..n {
        let (t, p) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let db = &dbs[i % dbs.len()];
        let app = key.encrypt(&db.app_url).map_err(|e| anyhow::anyhow!("{e}"))?;
        let adm = key.encrypt(&db.admin_url).map_err(|e| anyhow::anyhow!("{e}"))?;
        admin
            .execute(
                "WITH t AS (INSERT INTO tenants (id, slug, name, kind, plan, db_strategy)
                            VALUES ($1, 'ded-' || $5::text, 'ded', 'customer', 'enterprise', 'dedicated')),
                      p AS (INSERT INTO projects (tenant_id, id, slug, name) VALUES ($1, $2, 'main', 'Main'))
                 INSERT INTO dedicated_databases (tenant_id, database_name, app_dsn_enc, admin_dsn_enc)
                 VALUES ($1, $6, $3, $4)",
                &[&t, &p, &app, &adm, &(i as i64).to_string(), &db.name],
            )
            .await?;
        tenants.push((t, p, i % dbs.len()));
    }
    for (i, db) in dbs.iter().enumerate() {
        let c = authio_db::pool::connect(&db.admin_url, "bench").await?;
        let ids: Vec<uuid::Uuid> = tenants.iter().filter(|t| t.2 == i).map(|t| t.0).collect();
        c.execute("INSERT INTO tenant_homes (tenant_id, at_home) SELECT unnest($1::uuid[]), true", &[&ids]).await?;
    }
    let before = rss_kib();
    let router = router_for(
        &shared,
        &shared.app_url,
        RouterSettings { max_dedicated_pools: max_pools, dedicated_pool_max_size: 4, ..router_settings() },
    );
    let started = Instant::now();
    let mut peak = before;
    for round in 0..2 {
        for (t, p, _) in &tenants {
            let scope = Scope::project(*t, *p, TenantKind::Customer);
            let rows = router.read(&scope, "SELECT count(*) FROM users", &[]).await?;
            if rows.len() != 1 {
                bail!("tenant {t}: no answer");
            }
            peak = peak.max(rss_kib());
        }
        if round == 0 {
            println!(
                "\n## A node routing to {n} dedicated tenants (pools bounded at {max_pools}, least recently used closed)\n"
            );
        }
    }
    let after = rss_kib();
    let routes = router.cache().len();
    println!("| | value |\n|---|---:|");
    println!("| requests | {} in {:.1} s |", 2 * n, started.elapsed().as_secs_f64());
    println!("| routes cached | {routes} |");
    println!("| dedicated pools open at the end | {} |", router.open_dedicated_pools());
    println!("| dedicated pools opened in all | {} |", router.dedicated_pools_opened());
    println!("| RSS before the router | {} MiB |", before / 1024);
    println!("| RSS peak | {} MiB |", peak / 1024);
    println!("| RSS after | {} MiB |", after / 1024);
    println!(
        "| per open pool (peak - before) / pools | {:.0} KiB |",
        (peak.saturating_sub(before)) as f64 / router.open_dedicated_pools().max(1) as f64
    );
    router.shutdown();
    Ok(())
}
