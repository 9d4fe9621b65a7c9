//! One-time sign-in verification throughput: magic links and email codes over HTTP, each
//! request using a fresh single-use token (read by wrk from a file), and the cost of the
//! per-address check that runs before each is judged.
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use authio_core::types::Plan;
use authio_core::SystemClock;
use authio_db::TenantKind;
use authio_testkit::seed_tenant;
use futures_util::StreamExt;

use crate::{insert_users, median, parse_wrk, Env};

const OTP_USERS: i64 = 300_000;
const REDIRECT: &str = "https://app.bench.test/callback";

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Link,
    Code,
}

struct Side {
    label: &'static str,
    kind: Kind,
    base: String,
    rps: Vec<f64>,
    p99: Vec<f64>,
}

/// An app for the bench: limits out of the way (they are measured, not tripped); with
/// `addresses` the server sees client addresses, so the per-address checks run.
async fn app(env: &Env, addresses: bool) -> Result<(String, authio_server::AppState)> {
    let mut auth = authio_server::AuthSettings::new("http://127.0.0.1", authio_testkit::test_master_key());
    auth.limits.verify_failures_per_ip = i32::MAX;
    auth.limits.sends_per_ip = i32::MAX;
    auth.limits.sends_per_email = i32::MAX;
    let state = authio_server::AppState::new(env.router.clone(), Arc::new(SystemClock), auth)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = authio_server::build_app(state.clone());
    tokio::spawn(async move {
        if addresses {
            let _ = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await;
        } else {
            let _ = axum::serve(listener, app).await;
        }
    });
    Ok((format!("http://{addr}"), state))
}

/// `n` request bodies, each with a fresh token or code for a distinct user.
async fn bodies(
    state: &authio_server::AppState,
    project: uuid::Uuid,
    kind: Kind,
    first: usize,
    n: usize,
) -> Result<Vec<String>> {
    let made: Vec<Result<String>> = futures_util::stream::iter(first..first + n)
        .map(|i| {
            let identity = state.identity.clone();
            async move {
                let email = format!("o{}@bench.test", i + 1);
                Ok(match kind {
                    Kind::Link => {
                        let t = identity
                            .request_magic_link(project, &email, REDIRECT, None, None, None)
                            .await?
                            .context("a link")?;
                        serde_json::json!({"token": t}).to_string()
                    }
                    Kind::Code => {
                        let (id, code) = identity.request_email_code(project, &email, None, None).await?;
                        serde_json::json!({"challenge_id": id, "code": code.context("a code")?}).to_string()
                    }
                })
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    made.into_iter().collect()
}

const LUA: &str = r#"
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  items = {}
  for line in io.lines(os.getenv("AUTHIO_BENCH_BODIES")) do items[#items + 1] = line end
  n = 0
end
local headers = {["Content-Type"] = os.getenv("AUTHIO_BENCH_CT")}
if os.getenv("AUTHIO_BENCH_AUTH") ~= "" then headers["Authorization"] = os.getenv("AUTHIO_BENCH_AUTH") end
function request()
  local body = items[n * 2 + id + 1]
  n = n + 1
  return wrk.format("POST", nil, headers, body)
end
function response(status, headers, body)
  if status >= 300 then io.stderr:write(status .. " " .. body .. "\n") end
end
"#;

/// Run wrk against `url` with one body per request from `bodies_file` (a line each).
pub(crate) fn run_wrk(
    url: &str,
    bodies_file: &std::path::Path,
    secs: u64,
    content_type: &str,
    authorization: Option<&str>,
) -> Result<(f64, f64, u64)> {
    let script = std::env::temp_dir().join(format!("authio-bench-otp-{}.lua", std::process::id()));
    std::fs::write(&script, LUA)?;
    let out = Command::new("wrk")
        .args(["-t2", "-c64", &format!("-d{secs}s"), "--latency", "-s"])
        .arg(&script)
        .arg(url)
        .env("AUTHIO_BENCH_BODIES", bodies_file)
        .env("AUTHIO_BENCH_CT", content_type)
        .env("AUTHIO_BENCH_AUTH", authorization.unwrap_or(""))
        .output()
        .context("running wrk")?;
    for line in String::from_utf8_lossy(&out.stderr).lines().take(5) {
        eprintln!("refused: {line}");
    }
    let r = parse_wrk(&String::from_utf8_lossy(&out.stdout))?;
    Ok((r.rps, r.p99_ms, r.non2xx))
}

pub async fn otp(env: &Env, secs: u64, rounds: usize) -> Result<()> {
    let t = seed_tenant(&env.shared, "bench-otp", TenantKind::Customer, Plan::Enterprise).await;
    insert_users(&env.shared.admin_url, t.tenant.id, t.project.id, OTP_USERS, "o").await?;
    let c = authio_db::pool::connect(&env.shared.admin_url, "bench").await?;
    c.execute("INSERT INTO redirect_uris VALUES ($1, $2, $3, now())", &[&t.tenant.id, &t.project.id, &REDIRECT])
        .await?;
    let project = t.project.id;
    let (checked, state) = app(env, true).await?;
    let (unchecked, _) = app(env, false).await?;
    let mut sides = [
        Side {
            label: "POST /v1/auth/magic-link/verify",
            kind: Kind::Link,
            base: checked.clone(),
            rps: vec![],
            p99: vec![],
        },
        Side { label: "POST /v1/auth/email-code/verify", kind: Kind::Code, base: checked, rps: vec![], p99: vec![] },
        Side {
            label: "POST /v1/auth/email-code/verify, no client address (no per-address check)",
            kind: Kind::Code,
            base: unchecked,
            rps: vec![],
            p99: vec![],
        },
    ];
    let mut next_user = 0usize;
    let file = std::env::temp_dir().join(format!("authio-bench-otp-{}.bodies", std::process::id()));
    // Tokens per run: what the side served last time, with a margin (the warm-up starts low).
    let mut estimate = [1500.0f64; 3];
    for round in 0..=rounds {
        let warmup = round == 0;
        let run_secs = if warmup { 1 } else { secs };
        let order: Vec<usize> = if round % 2 == 0 { vec![0, 1, 2] } else { vec![2, 1, 0] };
        for i in order {
            let need = ((estimate[i] * run_secs as f64) * 1.4) as usize + 1000;
            if next_user + need > OTP_USERS as usize {
                bail!("out of bench users: lower BENCH_SECS or BENCH_ROUNDS");
            }
            let started = Instant::now();
            let made = bodies(&state, project, sides[i].kind, next_user, need).await?;
            eprintln!(
                "round {round}: {} tokens for {} in {:.1} s",
                need,
                sides[i].label,
                started.elapsed().as_secs_f64()
            );
            next_user += need;
            std::fs::write(&file, made.join("\n"))?;
            let url = match sides[i].kind {
                Kind::Link => format!("{}/v1/auth/magic-link/verify", sides[i].base),
                Kind::Code => format!("{}/v1/auth/email-code/verify", sides[i].base),
            };
            let (rps, p99, non2xx) =
                tokio::task::block_in_place(|| run_wrk(&url, &file, run_secs, "application/json", None))?;
            if non2xx > 0 {
                bail!("{}: {non2xx} non-2xx responses (tokens ran out or were refused)", sides[i].label);
            }
            estimate[i] = rps;
            if !warmup {
                sides[i].rps.push(rps);
                sides[i].p99.push(p99);
            }
        }
    }
    println!("\n## One-time sign-in verification (each request a fresh token for a distinct existing user; 64 connections)\n");
    println!("| endpoint | median req/s | median p99 ms | runs (req/s) |\n|---|---:|---:|---|");
    for s in &sides {
        println!(
            "| {} | {:.0} | {:.2} | {:?} |",
            s.label,
            median(s.rps.clone()),
            median(s.p99.clone()),
            s.rps.iter().map(|v| v.round()).collect::<Vec<_>>()
        );
    }
    let (with, without) = (median(sides[1].rps.clone()), median(sides[2].rps.clone()));
    println!(
        "\nper-address check on email-code verification: {:.3} of the throughput without it ({:.0} vs {:.0} req/s; {:.1} us of capacity per request)",
        with / without,
        with,
        without,
        (1.0 / with - 1.0 / without) * 1e6
    );

    // The check itself, alone: a peek at the address's window (what every verification does
    // first) and a counted hit (what a failure or a send adds), 32 at a time.
    println!("\n## Rate-limit check alone (shared database, 32 concurrent callers, {} calls each)\n", 20_000);
    println!("| call | calls/s | median us | p99 us |\n|---|---:|---:|---:|");
    for (label, hit) in
        [("authio_rate_peek (a verification's check)", false), ("authio_rate_hit (a counted attempt)", true)]
    {
        let started = Instant::now();
        let lat: Vec<f64> = futures_util::stream::iter(0..20_000u32)
            .map(|i| {
                let router = env.router.clone();
                async move {
                    let key = format!("203.0.113.{}", i % 200);
                    let t = Instant::now();
                    let now = chrono::Utc::now();
                    let r = if hit {
                        authio_db::preresolve::rate_hit(&router, "bench:ip", &key, 60, now).await.map(|_| ())
                    } else {
                        authio_db::preresolve::rate_peek(&router, "bench:ip", &key, 60, now).await.map(|_| ())
                    };
                    r.map(|_| t.elapsed().as_secs_f64() * 1e6)
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let total = started.elapsed().as_secs_f64();
        let mut sorted = lat.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let p99 = sorted[(sorted.len() * 99) / 100];
        println!("| {label} | {:.0} | {:.0} | {:.0} |", lat.len() as f64 / total, median(lat), p99);
    }
    Ok(())
}
