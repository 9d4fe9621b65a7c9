//! Benchmark harnesses. Run in release mode; see bench/README.md for the figures.
//!
//!   cargo run --release -p authio-bench -- tiers      # user list: shared vs dedicated tenant (HTTP, wrk)
//!   cargo run --release -p authio-bench -- scoped     # scoped read vs no scope/no policy (DB and HTTP)
//!   cargo run --release -p authio-bench -- tokens     # POST /v1/auth/token vs a bare signing handler; introspection
//!   cargo run --release -p authio-bench -- signin     # password sign-in vs raw Argon2id; failure timing
//!   cargo run --release -p authio-bench -- audit      # a sign-in's database write with and without its audit event
//!   cargo run --release -p authio-bench -- otp        # magic-link and email-code verification; the rate-limit check's cost
//!   cargo run --release -p authio-bench -- oidc       # the OpenID Provider's code exchanges and refreshes
//!   cargo run --release -p authio-bench -- dsync    # SCIM initial sync of 10,000 users and 500 groups; deprovisioning one
//!   cargo run --release -p authio-bench -- saml     # the SAML ACS's validation vs the bare signature check
//!   cargo run --release -p authio-bench -- all
//!   cargo run --release -p authio-bench -- move           # a 1,000,000-user tenant moved online under 500 writes/s
//!   cargo run --release -p authio-bench -- routing-memory # a node routing to 1,000 dedicated tenants
//!
//! Each comparison alternates its sides round by round in one run, so the machine's noise
//! falls on both; medians are reported. BENCH_SECS (default 5) and BENCH_ROUNDS (default 5)
//! set the length. Clusters come from the test kit (fsync off on both sides alike).
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use authio_core::types::Plan;
use authio_core::SystemClock;
use authio_db::{Param, Router, Scope, TenantKind, Type};
use authio_testkit::{fresh_shared_db, make_dedicated, router_for, router_settings, seed_tenant, Seeded, TestDb};
use axum::extract::{Path, State};
use axum::Json;
use serde_json::Value;
use uuid::Uuid;

mod dsync;
mod events;
mod mcp;
mod mfa;
mod moves;
mod oidc;
mod orgs;
mod otp;
mod saml;
mod webhooks;

const USERS_PER_TENANT: i64 = 1_000;
const FILLER_USERS: i64 = 100_000;
const PAGE_SQL: &str =
    "SELECT id, project_id, email, email_verified, disabled, created_at, updated_at FROM users WHERE tenant_id = $1 AND project_id = $2 AND id > $3 ORDER BY id LIMIT 50";
const PAGE_SQL_NO_RLS: &str =
    "SELECT id, project_id, email, email_verified, disabled, created_at, updated_at FROM bench_users WHERE tenant_id = $1 AND project_id = $2 AND id > $3 ORDER BY id LIMIT 50";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<()> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let secs = env_num("BENCH_SECS", 5);
    let rounds = env_num("BENCH_ROUNDS", 5) as usize;
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is required (Debian: apt-get install wrk)");
    }
    println!(
        "machine: {} cores; {secs}s per run, {rounds} rounds, sides alternating",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    // These two set up their own databases.
    match what.as_str() {
        "move" => return moves::move_bench().await,
        "saml" => return saml::saml(secs, rounds),
        "mfa" => return mfa::mfa(secs, rounds),
        "routing-memory" => return moves::routing_memory().await,
        _ => {}
    }
    let env = setup().await?;
    match what.as_str() {
        "tiers" => tiers(&env, secs, rounds).await?,
        "scoped" => scoped(&env, secs, rounds).await?,
        "tokens" => tokens(&env, secs, rounds).await?,
        "signin" => signin(&env, secs, rounds).await?,
        "audit" => audit_cost(&env, secs, rounds).await?,
        "otp" => otp::otp(&env, secs, rounds).await?,
        "oidc" => oidc::oidc(&env, secs, rounds).await?,
        "mcp" => mcp::mcp(&env, secs, rounds).await?,
        "orgs" => orgs::orgs(&env, secs, rounds).await?,
        "events" => events::events(&env, secs, rounds).await?,
        "webhooks" => webhooks::webhooks(&env, rounds).await?,
        "dsync" => dsync::dsync(&env).await?,
        "all" => {
            tiers(&env, secs, rounds).await?;
            scoped(&env, secs, rounds).await?;
            tokens(&env, secs, rounds).await?;
            signin(&env, secs, rounds).await?;
            audit_cost(&env, secs, rounds).await?;
            otp::otp(&env, secs, rounds).await?;
            oidc::oidc(&env, secs, rounds).await?;
            orgs::orgs(&env, secs, rounds).await?;
            events::events(&env, secs, rounds).await?;
            webhooks::webhooks(&env, rounds).await?;
            dsync::dsync(&env).await?;
        }
        other => {
            bail!("unknown benchmark {other:?}: tiers | scoped | tokens | signin | audit | otp | oidc | orgs | events | webhooks | dsync | mcp | saml | mfa | all | move | routing-memory")
        }
    }
    Ok(())
}

struct Env {
    shared: TestDb,
    router: Router,
    a: Seeded,
    b: Seeded,
}

async fn insert_users(admin_url: &str, tenant: Uuid, project: Uuid, n: i64, tag: &str) -> Result<()> {
    let c = authio_db::pool::connect(admin_url, "bench").await?;
    c.execute(
        "INSERT INTO users (tenant_id, project_id, id, email, created_at, updated_at)
         SELECT $1, $2, gen_random_uuid(), $4 || i || '@bench.test', now(), now() FROM generate_series(1::bigint, $3::bigint) i",
        &[&tenant, &project, &n, &tag],
    )
    .await?;
    c.batch_execute("ANALYZE users").await?;
    Ok(())
}

async fn setup() -> Result<Env> {
    let shared = fresh_shared_db().await;
    let a = seed_tenant(&shared, "bench-shared", TenantKind::Customer, Plan::Enterprise).await;
    let b = seed_tenant(&shared, "bench-dedicated", TenantKind::Customer, Plan::Enterprise).await;
    let ded = make_dedicated(&shared, &b.tenant).await;
    // Other tenants' rows, so the shared table is not just the benchmarked tenant.
    for i in 0..10 {
        let f = seed_tenant(&shared, &format!("filler-{i}"), TenantKind::Customer, Plan::Free).await;
        insert_users(&shared.admin_url, f.tenant.id, f.project.id, FILLER_USERS / 10, "f").await?;
    }
    insert_users(&shared.admin_url, a.tenant.id, a.project.id, USERS_PER_TENANT, "a").await?;
    insert_users(&ded.admin_url, b.tenant.id, b.project.id, USERS_PER_TENANT, "b").await?;
    // The same rows in a table with no RLS and no policy: the "no scope" baseline.
    let c = authio_db::pool::connect(&shared.admin_url, "bench").await?;
    c.batch_execute(
        "CREATE TABLE bench_users (LIKE users INCLUDING ALL);
         INSERT INTO bench_users SELECT * FROM users;
         GRANT SELECT ON bench_users TO authio_app;
         ANALYZE bench_users;",
    )
    .await?;
    if let Ok(mode) = std::env::var("BENCH_PLAN_CACHE_MODE") {
        c.batch_execute(&format!("ALTER ROLE authio_app SET plan_cache_mode = {mode}")).await?;
    }
    // Same pool size for the shared and the dedicated side.
    let router = router_for(
        &shared,
        &shared.app_url,
        authio_db::RouterSettings { dedicated_pool_max_size: 8, ..router_settings() },
    );
    Ok(Env { shared, router, a, b })
}

struct WrkResult {
    rps: f64,
    p99_ms: f64,
    non2xx: u64,
}

/// One side of a comparison: a URL, and for POSTs a body with its content type (sent through a
/// wrk Lua script), plus headers.
#[derive(Clone)]
struct Target {
    label: String,
    url: String,
    headers: Vec<String>,
    post: Option<(String, String)>,
}

impl Target {
    fn get(label: &str, url: &str, bearer: Option<&str>) -> Self {
        let headers = bearer.map(|k| vec![format!("Authorization: Bearer {k}")]).unwrap_or_default();
        Target { label: label.into(), url: url.into(), headers, post: None }
    }

    fn post(label: &str, url: &str, content_type: &str, body: &str, headers: Vec<String>) -> Self {
        Target { label: label.into(), url: url.into(), headers, post: Some((content_type.into(), body.into())) }
    }
}

fn lua_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn wrk(t: &Target, secs: u64, connections: u32) -> Result<WrkResult> {
    let mut cmd = Command::new("wrk");
    let threads = connections.clamp(1, 2);
    cmd.args([&format!("-t{threads}"), &format!("-c{connections}"), &format!("-d{secs}s"), "--latency"]);
    for h in &t.headers {
        cmd.args(["-H", h]);
    }
    let script;
    if let Some((ct, body)) = &t.post {
        script =
            std::env::temp_dir().join(format!("authio-bench-{}-{:x}.lua", std::process::id(), fxhash(&t.url, body)));
        std::fs::write(
            &script,
            format!(
                "wrk.method = \"POST\"\nwrk.body = {}\nwrk.headers[\"Content-Type\"] = {}\n",
                lua_string(body),
                lua_string(ct)
            ),
        )?;
        cmd.arg("-s").arg(&script);
    }
    let out = cmd.arg(&t.url).output().context("running wrk")?;
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// Requests per second, p99 latency and the count of non-2xx answers from wrk's report.
fn parse_wrk(text: &str) -> Result<WrkResult> {
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("wrk output: {text}"))?;
    let p99_ms = text
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .and_then(|l| parse_latency(l.split_whitespace().nth(1)?))
        .unwrap_or(f64::NAN);
    let non2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Ok(WrkResult { rps, p99_ms, non2xx })
}

fn fxhash(a: &str, b: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (a, b).hash(&mut h);
    h.finish()
}

fn parse_latency(s: &str) -> Option<f64> {
    let (num, unit) = s.find(|c: char| c.is_ascii_alphabetic()).map(|i| s.split_at(i))?;
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => return None,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

async fn spawn(app: axum::Router) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}

/// Alternate two wrk targets round by round; print medians and the ratio b/a.
async fn side_by_side(title: &str, a: Target, b: Target, secs: u64, rounds: usize, connections: u32) -> Result<()> {
    // Warm both (pools, caches).
    for t in [&a, &b] {
        tokio::task::block_in_place(|| wrk(t, 1, connections))?;
    }
    let (mut ra, mut rb, mut pa, mut pb) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        // Swap which side goes first each round.
        let order = if round % 2 == 0 { [(&a, true), (&b, false)] } else { [(&b, false), (&a, true)] };
        for (t, is_a) in order {
            let r = tokio::task::block_in_place(|| wrk(t, secs, connections))?;
            if r.non2xx > 0 {
                bail!("{}: {} non-2xx responses", t.url, r.non2xx);
            }
            if is_a {
                ra.push(r.rps);
                pa.push(r.p99_ms);
            } else {
                rb.push(r.rps);
                pb.push(r.p99_ms);
            }
        }
    }
    let (ma, mb) = (median(ra.clone()), median(rb.clone()));
    println!("\n## {title}\n");
    println!("| side | median req/s | median p99 ms | runs (req/s) |\n|---|---:|---:|---|");
    println!(
        "| {} | {:.0} | {:.2} | {:?} |",
        a.label,
        ma,
        median(pa),
        ra.iter().map(|v| v.round()).collect::<Vec<_>>()
    );
    println!(
        "| {} | {:.0} | {:.2} | {:?} |",
        b.label,
        mb,
        median(pb),
        rb.iter().map(|v| v.round()).collect::<Vec<_>>()
    );
    let per_round: Vec<f64> = ra.iter().zip(&rb).map(|(x, y)| y / x).collect();
    println!("\nratio {} / {}: {:.3} (median of per-round ratios {:.3})", b.label, a.label, mb / ma, median(per_round));
    Ok(())
}

async fn tiers(env: &Env, secs: u64, rounds: usize) -> Result<()> {
    let auth = authio_server::AuthSettings::new("http://127.0.0.1", authio_testkit::test_master_key());
    let state = authio_server::AppState::new(env.router.clone(), Arc::new(SystemClock), auth)?;
    let base = spawn(authio_server::build_app(state)).await?;
    let url_a = format!("{base}/v1/projects/{}/users", env.a.project.id);
    let url_b = format!("{base}/v1/projects/{}/users", env.b.project.id);
    side_by_side(
        "GET /v1/projects/{id}/users (API key auth, page of 50): shared tenant vs dedicated tenant",
        Target::get("shared tenant", &url_a, Some(&env.a.api_key.plaintext)),
        Target::get("dedicated tenant", &url_b, Some(&env.b.api_key.plaintext)),
        secs,
        rounds,
        64,
    )
    .await
}

#[derive(Clone)]
struct ScopedBench {
    router: Router,
    plain: authio_db::Pool,
    reads: authio_db::pipeline::ReadPool,
    scope: Scope,
}

impl ScopedBench {
    /// A page of users as JSON values: scoped under RLS through `Router::read`, or the same
    /// query on the copy without RLS, sent alone.
    async fn page(&self, scoped: bool) -> Result<Vec<Value>> {
        let project = self.scope.project_id.unwrap_or_default();
        let after = Uuid::nil();
        let params: [Param<'_>; 3] =
            [(&self.scope.tenant_id, Type::UUID), (&project, Type::UUID), (&after, Type::UUID)];
        if scoped {
            let rows = self.router.read(&self.scope, PAGE_SQL, &params).await?;
            return rows
                .iter()
                .map(|r| Ok(authio_core::identity::users::User::try_from(r)?))
                .map(|u: Result<_>| Ok(serde_json::to_value(u?)?))
                .collect();
        }
        // The same client and the same decoding as the scoped side: only the bind and RLS differ.
        let mut conn = self.reads.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let rows = conn.pipeline(&[(PAGE_SQL_NO_RLS, &params)]).await?;
        rows.iter()
            .map(|r| Ok(authio_core::identity::users::User::try_from(r)?))
            .map(|u: Result<_>| Ok(serde_json::to_value(u?)?))
            .collect()
    }
}

/// One handler for both sides: the mode picks scoped-with-RLS or the no-policy table.
async fn page_handler(
    State(b): State<ScopedBench>,
    Path(mode): Path<String>,
) -> Result<Json<Value>, axum::http::StatusCode> {
    let page = b.page(mode == "scoped").await.map_err(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR)?;
    if page.len() != 50 {
        return Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    }
    Ok(Json(Value::Array(page)))
}

async fn db_loop(b: &ScopedBench, mode: &str, secs: u64, workers: usize) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let b = b.clone();
        let mode = mode.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let rows = match mode.as_str() {
                    "bare" => {
                        let project = b.scope.project_id.unwrap_or_default();
                        let after = Uuid::nil();
                        let c = b.plain.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                        let params: [Param<'_>; 3] = [(&b.scope.tenant_id, Type::UUID), (&project, Type::UUID), (&after, Type::UUID)];
                        c.query_typed(PAGE_SQL_NO_RLS, &params).await?.len()
                    }
                    "bare-pipeline" => {
                        let project = b.scope.project_id.unwrap_or_default();
                        let after = Uuid::nil();
                        let mut conn = b.reads.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                        let params: [Param<'_>; 3] = [(&b.scope.tenant_id, Type::UUID), (&project, Type::UUID), (&after, Type::UUID)];
                        conn.pipeline(&[(PAGE_SQL_NO_RLS, &params)]).await?.len()
                    }
                    "pipeline-rls-direct" | "pipeline-no-rls" => {
                        // Router::read's statements through a read pool of the bench's own, on
                        // the RLS table or on its copy without RLS.
                        let project = b.scope.project_id.unwrap_or_default();
                        let after = Uuid::nil();
                        let mut conn = b.reads.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                        let (t, p) = (b.scope.tenant_id.to_string(), project.to_string());
                        let bind: [Param<'_>; 2] = [(&t, Type::TEXT), (&p, Type::TEXT)];
                        let params: [Param<'_>; 3] =
                            [(&b.scope.tenant_id, Type::UUID), (&project, Type::UUID), (&after, Type::UUID)];
                        let sql = if mode == "pipeline-no-rls" { PAGE_SQL_NO_RLS } else { PAGE_SQL };
                        let bind_sql = "SELECT set_config('authio.tenant_id', $1, true), set_config('authio.project_id', $2, true)";
                        conn.pipeline(&[(bind_sql, &bind), (sql, &params)]).await?.len()
                    }
                    "tx-no-rls" | "no-fence-check" => {
                        let project = b.scope.project_id.unwrap_or_default();
                        let after = Uuid::nil();
                        let c = b.plain.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                        let bind = if mode == "tx-no-rls" {
                            format!("BEGIN; SELECT set_config('authio.tenant_id', '{}', true), set_config('authio.project_id', '{}', true), authio_tenant_at_home('{}'::uuid)", b.scope.tenant_id, project, b.scope.tenant_id)
                        } else {
                            format!("BEGIN; SELECT set_config('authio.tenant_id', '{}', true), set_config('authio.project_id', '{}', true)", b.scope.tenant_id, project)
                        };
                        let sql = if mode == "tx-no-rls" { PAGE_SQL_NO_RLS } else { PAGE_SQL };
                        let params: [Param<'_>; 3] = [(&b.scope.tenant_id, Type::UUID), (&project, Type::UUID), (&after, Type::UUID)];
                        let (x, rows, y) = futures_util::join!(c.simple_query(&bind), c.query_typed(sql, &params), c.batch_execute("COMMIT"));
                        x?;
                        y?;
                        rows?.len()
                    }
                    "pipelined" => {
                        let project = b.scope.project_id.unwrap_or_default();
                        let after = Uuid::nil();
                        let params: [Param<'_>; 3] = [(&b.scope.tenant_id, Type::UUID), (&project, Type::UUID), (&after, Type::UUID)];
                        b.router.read(&b.scope, PAGE_SQL, &params).await?.len()
                    }
                    _ => {
                        let project = b.scope.project_id.unwrap_or_default();
                        let after = Uuid::nil();
                        let tx = b.router.begin(&b.scope).await?;
                        let rows = tx.query(PAGE_SQL, &[(&b.scope.tenant_id, Type::UUID), (&project, Type::UUID), (&after, Type::UUID)]).await?;
                        tx.commit().await?;
                        rows.len()
                    }
                };
                anyhow::ensure!(rows == 50, "expected a full page");
                n += 1;
            }
            Ok::<u64, anyhow::Error>(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / secs as f64)
}

async fn scoped(env: &Env, secs: u64, rounds: usize) -> Result<()> {
    let plain = authio_db::pool::make_pool(
        &env.shared.app_url,
        &authio_db::pool::PoolOptions { max_size: 8, ..Default::default() },
    )?;
    let reads = authio_db::pipeline::make_read_pool(
        &env.shared.app_url,
        &authio_db::pool::PoolOptions { max_size: 8, ..Default::default() },
        true,
    )?;
    let bench = ScopedBench {
        router: env.router.clone(),
        plain,
        reads,
        scope: Scope::project(env.a.tenant.id, env.a.project.id, TenantKind::Customer),
    };
    // Database level: 32 concurrent workers, same query, sides alternating.
    let modes: Vec<&str> = match std::env::var("BENCH_DB_MODES") {
        Ok(v) => v.split(',').map(|m| Box::leak(m.to_owned().into_boxed_str()) as &str).collect(),
        Err(_) => {
            vec!["bare", "bare-pipeline", "pipeline-no-rls", "pipelined", "tx-no-rls", "no-fence-check", "round-trips"]
        }
    };
    let mut results: Vec<Vec<f64>> = vec![vec![]; modes.len()];
    for round in 0..rounds {
        for i in 0..modes.len() {
            let m = (i + round) % modes.len();
            results[m].push(db_loop(&bench, modes[m], secs, 32).await?);
        }
    }
    println!("\n## Scoped read at the database (page of 50 of one tenant's users, 32 workers, pool of 8)\n");
    println!("| variant (each: one round trip unless said) | median reads/s | ratio to bare |\n|---|---:|---:|");
    fn label(m: &str) -> &str {
        match m {
            "bare" => "bare SELECT, no GUC, table without RLS (baseline)",
            "bare-pipeline" => "the same bare SELECT through the read client (authio_db::pipeline, statements kept prepared), no GUC",
        "pipeline-rls-direct" => "bind + SELECT under RLS with one Sync, through the read client directly (Router::read without the router)",
        "pipeline-no-rls" => "bind + SELECT on the table without RLS, one Sync: the pipelined path's transaction alone",
        "tx-no-rls" => "BEGIN + bind + fence check, SELECT on the table without RLS, COMMIT (tokio-postgres, a Sync each)",
            "no-fence-check" => "BEGIN + bind, SELECT under RLS, COMMIT (tokio-postgres, a Sync each)",
            "pipelined" => "scoped read as served: bind + SELECT under RLS with one Sync, one implicit transaction; fence asked only on an empty page (Router::read)",
            "round-trips" => "BEGIN + bind + fence check, SELECT, COMMIT in three round trips (Router::begin, query, commit)",
            other => other,
        }
    }
    let base = median(results[0].clone());
    for (i, m) in modes.iter().enumerate() {
        let r = median(results[i].clone());
        println!("| {} | {r:.0} | {:.3} |", label(m), r / base);
    }

    if std::env::var("BENCH_EXPLAIN").is_ok() {
        let c = authio_db::pool::connect(&env.shared.app_url, "bench").await?;
        let (t, p) = (env.a.tenant.id, env.a.project.id);
        for table in ["users", "bench_users"] {
            let sql = format!(
                "BEGIN; SELECT set_config('authio.tenant_id', '{t}', true), set_config('authio.project_id', '{p}', true); \
                 PREPARE q AS {}; EXPLAIN (ANALYZE, COSTS OFF) EXECUTE q('{t}', '{p}', '00000000-0000-0000-0000-000000000000'); DEALLOCATE q; COMMIT",
                PAGE_SQL.replace("FROM users", &format!("FROM {table}"))
            );
            for m in c.simple_query(&sql).await? {
                if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                    println!("{}", r.get(0).unwrap_or_default());
                }
            }
        }
        return Ok(());
    }
    if std::env::var("BENCH_SKIP_HTTP").is_ok() {
        return Ok(());
    }
    let app = axum::Router::new().route("/page/{mode}", axum::routing::get(page_handler)).with_state(bench);
    let base = spawn(app).await?;
    let (u1, u2) = (format!("{base}/page/unscoped"), format!("{base}/page/scoped"));
    side_by_side(
        "Scoped read at an HTTP endpoint (same handler, same query; page of 50)",
        Target::get("no scope, no policy", &u1, None),
        Target::get("scoped under RLS", &u2, None),
        secs,
        rounds,
        64,
    )
    .await
}

/// The real app with limits out of the way (the bench hammers one account from one address).
async fn identity_app(env: &Env, credential_cache: bool) -> Result<(String, authio_server::AppState)> {
    identity_app_with(env, |auth| auth.credential_cache = credential_cache).await
}

/// The app under load, its throttles out of the way, `tune` applied to its settings last.
async fn identity_app_with(
    env: &Env,
    tune: impl FnOnce(&mut authio_server::AuthSettings),
) -> Result<(String, authio_server::AppState)> {
    let mut auth = authio_server::AuthSettings::new("http://127.0.0.1", authio_testkit::test_master_key());
    auth.limits.signin_per_ip = i32::MAX;
    auth.limits.account_failures = i32::MAX;
    auth.limits.client_failures_per_ip = i32::MAX;
    tune(&mut auth);
    let state = authio_server::AppState::new(env.router.clone(), Arc::new(SystemClock), auth)?;
    let base = spawn(authio_server::build_app(state.clone())).await?;
    Ok((base, state))
}

#[derive(Clone)]
struct BareSigner {
    keys: Arc<authio_core::crypto::keys::KeySet>,
    iss: String,
    tid: String,
    pid: String,
    client_id: String,
}

/// The no-database ceiling: build the same claims and sign them with the same in-memory key
/// (aws-lc-rs), nothing else.
async fn bare_sign(State(b): State<BareSigner>) -> Result<Json<Value>, axum::http::StatusCode> {
    let now = chrono::Utc::now().timestamp();
    let claims = authio_core::crypto::tokens::AccessClaims {
        iss: b.iss.clone(),
        sub: b.client_id.clone(),
        aud: b.iss.clone(),
        exp: now + 3600,
        iat: now,
        nbf: now,
        jti: Uuid::new_v4().to_string(),
        sid: None,
        tid: b.tid.clone(),
        pid: b.pid.clone(),
        amr: None,
        acr: None,
        role: None,
        scope: Some("read".into()),
        client_id: Some(b.client_id.clone()),
        org_id: None,
        permissions: None,
        act: None,
    };
    let token = b.keys.sign(&claims).map_err(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(Json(serde_json::json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600, "scope": "read"})))
}

async fn tokens(env: &Env, secs: u64, rounds: usize) -> Result<()> {
    let (base, state) = identity_app(env, true).await?;
    let (uncached_base, _) = identity_app(env, false).await?;
    let scope = Scope::project(env.a.tenant.id, env.a.project.id, TenantKind::Customer);
    let iss = state.identity.issuer(env.a.project.id);
    let new = authio_core::identity::m2m::NewClient {
        name: authio_core::types::DisplayName::parse("bench")?,
        scopes: vec!["read".into()],
        audience: None,
        token_ttl_secs: None,
    };
    let auth = authio_core::authz::as_tool("bench", authio_core::authz::Permission::CredentialsManage, &scope)?;
    let client =
        authio_core::identity::m2m::create(&env.router, &SystemClock, &auth, &iss, &new, &Default::default()).await?;
    let profile = state.identity.profile(env.a.project.id).await?;
    let keys = state.identity.keys().keyset(&profile).await?;
    let bare = BareSigner {
        keys,
        iss,
        tid: env.a.tenant.id.to_string(),
        pid: env.a.project.id.to_string(),
        client_id: client.info.client_id.clone(),
    };
    let bare_base = spawn(axum::Router::new().route("/sign", axum::routing::post(bare_sign)).with_state(bare)).await?;
    let basic = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", client.info.client_id, client.client_secret))
    };
    let form = "application/x-www-form-urlencoded";
    let token_target = Target::post(
        "POST /v1/auth/token (client credentials, EdDSA; client record cached in the node, NOTIFY-invalidated)",
        &format!("{base}/v1/auth/token"),
        form,
        "grant_type=client_credentials",
        vec![format!("Authorization: Basic {basic}")],
    );
    let uncached_target = Target::post(
        "POST /v1/auth/token, client looked up in the database on every request",
        &format!("{uncached_base}/v1/auth/token"),
        form,
        "grant_type=client_credentials",
        vec![format!("Authorization: Basic {basic}")],
    );
    side_by_side(
        "M2M tokens: Authio's token endpoint beside a bare handler that only signs the same token (64 connections)",
        Target::post(
            "bare signing handler (no database)",
            &format!("{bare_base}/sign"),
            form,
            "grant_type=client_credentials",
            vec![],
        ),
        token_target.clone(),
        secs,
        rounds,
        64,
    )
    .await?;
    side_by_side(
        "M2M tokens: the node's client cache on and off (64 connections)",
        token_target.clone(),
        uncached_target,
        secs,
        rounds,
        64,
    )
    .await?;
    let token =
        state.identity.client_credentials(&client.info.client_id, &client.client_secret, None, None, None).await?;
    side_by_side(
        "Introspection (RFC 7662) of an M2M access token, caller authenticated by API key, beside the token endpoint (64 connections)",
        token_target,
        Target::post(
            "POST /v1/auth/introspect",
            &format!("{base}/v1/auth/introspect"),
            form,
            &format!("token={}", token.access_token),
            vec![format!("Authorization: Bearer {}", env.a.api_key.plaintext)],
        ),
        secs,
        rounds,
        64,
    )
    .await
}

/// Raw Argon2id hashes per second on `threads` threads at the default parameters.
fn raw_argon2(threads: usize, secs: u64) -> f64 {
    use argon2::password_hash::PasswordHasher;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let a = argon2::Argon2::new(
                    argon2::Algorithm::Argon2id,
                    argon2::Version::V0x13,
                    argon2::Params::new(19456, 2, 1, None).unwrap_or_default(),
                );
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let _ = a.hash_password(b"correct horse battery");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    total as f64 / secs as f64
}

async fn signin(env: &Env, secs: u64, rounds: usize) -> Result<()> {
    let (base, state) = identity_app(env, true).await?;
    let project = env.a.project.id;
    let password = "correct horse battery";
    state.identity.sign_up(project, "bench-signin@bench.test", password, &Default::default(), None).await?;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let body = serde_json::json!({"project_id": project, "email": "bench-signin@bench.test", "password": password})
        .to_string();
    let target = Target::post("sign-in", &format!("{base}/v1/auth/signin"), "application/json", &body, vec![]);
    let conns = env_num("BENCH_SIGNIN_CONNECTIONS", 32) as u32;
    tokio::task::block_in_place(|| wrk(&target, 1, conns))?;
    let (mut raw, mut http, mut p99) = (vec![], vec![], vec![]);
    for round in 0..rounds {
        let mut one = |first: bool| -> Result<()> {
            if first {
                raw.push(tokio::task::block_in_place(|| raw_argon2(threads, secs)));
            } else {
                let r = tokio::task::block_in_place(|| wrk(&target, secs, conns))?;
                anyhow::ensure!(r.non2xx == 0, "sign-in failed {} times", r.non2xx);
                http.push(r.rps);
                p99.push(r.p99_ms);
            }
            Ok(())
        };
        one(round % 2 == 0)?;
        one(round % 2 != 0)?;
    }
    let (mr, mh) = (median(raw.clone()), median(http.clone()));
    let per_round: Vec<f64> = raw.iter().zip(&http).map(|(r, h)| h / r).collect();
    println!("\n## Password sign-in against raw Argon2id (m=19456 KiB, t=2, p=1; {threads} hashing threads)\n");
    println!("| side | median per s | runs |\n|---|---:|---|");
    println!(
        "| raw Argon2id hashes ({threads} threads) | {mr:.1} | {:?} |",
        raw.iter().map(|v| (v * 10.0).round() / 10.0).collect::<Vec<_>>()
    );
    println!(
        "| POST /v1/auth/signin ({conns} connections; p99 {:.1} ms) | {mh:.1} | {:?} |",
        median(p99),
        http.iter().map(|v| (v * 10.0).round() / 10.0).collect::<Vec<_>>()
    );
    println!("\nratio sign-in / raw: {:.3} (median of per-round ratios {:.3})", mh / mr, median(per_round));

    // Timing of failures: one request at a time, the three cases interleaved.
    let http_client = reqwest::Client::new();
    let url = format!("{base}/v1/auth/signin");
    let cases = [
        ("correct password", "bench-signin@bench.test", password),
        ("wrong password", "bench-signin@bench.test", "wrong password"),
        ("unknown account", "nobody@bench.test", "wrong password"),
    ];
    let mut times: Vec<Vec<f64>> = vec![vec![]; cases.len()];
    for round in 0..60 {
        // Rotate the order each round, so no outcome always follows the same other one.
        for k in 0..cases.len() {
            let i = (k + round) % cases.len();
            let (_, email, pw) = cases[i];
            let body = serde_json::json!({"project_id": project, "email": email, "password": pw}).to_string();
            let t0 = Instant::now();
            let r = http_client.post(&url).header("content-type", "application/json").body(body).send().await?;
            r.bytes().await?;
            times[i].push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    println!("\n## Sign-in latency by outcome (one request at a time, 60 each, interleaved in rotating order)\n");
    println!("| outcome | median ms |\n|---|---:|");
    for (i, (name, _, _)) in cases.iter().enumerate() {
        println!("| {name} | {:.2} |", median(times[i].clone()));
    }
    Ok(())
}

/// A sign-in's database write (the session and its first refresh token, one pipeline) with and
/// without its audit event in the same pipeline, by 32 concurrent writers, rounds alternating.
/// At the HTTP endpoint the difference hides under Argon2id (see `signin`); here it does not.
async fn audit_cost(env: &Env, secs: u64, rounds: usize) -> Result<()> {
    use authio_core::identity::sessions::{NewSession, SessionPolicy, START_SQL};
    use authio_core::types::ClientInfo;
    let scope = Scope::project(env.a.tenant.id, env.a.project.id, TenantKind::Customer);
    let user = authio_core::identity::users::create(
        &env.router,
        &SystemClock,
        &scope,
        &authio_core::types::Email::parse("audit-bench@bench.test")?,
    )
    .await?
    .id;
    let policy = SessionPolicy {
        idle: chrono::Duration::days(1),
        absolute: chrono::Duration::days(2),
        grace: chrono::Duration::seconds(10),
    };
    async fn run(
        router: &Router,
        scope: Scope,
        user: Uuid,
        policy: SessionPolicy,
        audited: bool,
        secs: u64,
    ) -> Result<f64> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let router = router.clone();
            tasks.push(tokio::spawn(async move {
                let client = ClientInfo::default();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let now = chrono::Utc::now();
                    let session = NewSession::new(&scope, user, &["pwd"], &client, &policy, now)?;
                    let session_params = session.params();
                    if audited {
                        let event = authio_core::audit::EventRow::new(
                            &scope,
                            authio_core::audit::Event {
                                action: authio_core::audit::AuditAction::UserSignedIn,
                                actor: authio_core::audit::Actor::user(user, Some("audit-bench@bench.test")),
                                target: Some(("user", user.to_string())),
                                client: &client,
                                metadata: serde_json::json!({"session_id": session.id, "amr": ["pwd"]}),
                            },
                            now,
                        )?;
                        let event_params = event.params();
                        router
                            .write(
                                &scope,
                                &[
                                    (START_SQL, &session_params[..]),
                                    (authio_core::audit::INSERT_SQL, &event_params[..]),
                                ],
                            )
                            .await?;
                    } else {
                        router.write(&scope, &[(START_SQL, &session_params[..])]).await?;
                    }
                    n += 1;
                }
                Ok::<u64, anyhow::Error>(n)
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await??;
        }
        Ok(total as f64 / secs as f64)
    }
    let (mut plain, mut audited) = (vec![], vec![]);
    for round in 0..rounds {
        for audited_side in [round % 2 == 0, round % 2 != 0] {
            let r = run(&env.router, scope, user, policy, audited_side, secs).await?;
            if audited_side {
                audited.push(r)
            } else {
                plain.push(r)
            }
        }
    }
    let (mp, ma) = (median(plain.clone()), median(audited.clone()));
    let per_round: Vec<f64> = plain.iter().zip(&audited).map(|(p, a)| a / p).collect();
    println!("\n## A sign-in's database write with and without its audit event (32 writers, one pipeline each)\n");
    println!("| side | median writes/s | runs |\n|---|---:|---|");
    println!("| session + first refresh token | {mp:.0} | {:?} |", plain.iter().map(|v| v.round()).collect::<Vec<_>>());
    println!(
        "| the same + the audit event (hash-chained) | {ma:.0} | {:?} |",
        audited.iter().map(|v| v.round()).collect::<Vec<_>>()
    );
    println!("\nratio with / without: {:.3} (median of per-round ratios {:.3})", ma / mp, median(per_round));
    Ok(())
}
