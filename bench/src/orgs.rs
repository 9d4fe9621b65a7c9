//! Organization claims on the token endpoint: refreshes of sessions outside any organization,
//! of sessions in one (the member's role and permissions read in the rotation's round trip),
//! and refreshes that switch a session into its user's organization, side by side over HTTP.
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use authio_core::identity::auth::RefreshRequest;
use authio_core::identity::signin::{Guesser, Return, SignedInUser};
use authio_core::types::Plan;
use authio_core::SystemClock;
use authio_db::{RowExt, Scope, TenantKind};
use futures_util::StreamExt;
use uuid::Uuid;

use crate::otp::run_wrk;
use crate::{insert_users, median, Env};

const USERS: i64 = 1_000;
const CB: &str = "https://app.bench.test/callback";
const VERIFIER: &str = "bench-verifier-bench-verifier-bench-verifier-0123";

pub async fn orgs(env: &Env, secs: u64, rounds: usize) -> Result<()> {
    let t = authio_testkit::seed_tenant(&env.shared, "bench-orgs", TenantKind::Customer, Plan::Enterprise).await;
    insert_users(&env.shared.admin_url, t.tenant.id, t.project.id, USERS, "o").await?;
    let org = Uuid::now_v7();
    let role = Uuid::now_v7();
    {
        // Every user a member of one organization, with a role of five permissions.
        let c = authio_db::pool::connect(&env.shared.admin_url, "bench").await?;
        c.batch_execute(&format!(
            "INSERT INTO permissions SELECT '{tid}', '{pid}', p, NULL, now()
               FROM unnest(ARRAY['read:invoices','write:invoices','read:users','manage:billing','export:reports']) p;
             INSERT INTO roles VALUES ('{tid}', '{pid}', '{role}', 'admin', 'Admin',
               ARRAY['export:reports','manage:billing','read:invoices','read:users','write:invoices'], true, now(), now());
             INSERT INTO organizations (tenant_id, project_id, id, slug, name, created_at, updated_at)
               VALUES ('{tid}', '{pid}', '{org}', 'initech', 'Initech', now(), now());
             INSERT INTO memberships SELECT '{tid}', '{pid}', '{org}', u.id, '{role}', 'active', now(), now()
               FROM users u WHERE u.project_id = '{pid}'",
            tid = t.tenant.id,
            pid = t.project.id,
        ))
        .await?;
    }
    let mut auth = authio_server::AuthSettings::new("http://127.0.0.1", authio_testkit::test_master_key());
    auth.limits.verify_failures_per_ip = i32::MAX;
    let state = authio_server::AppState::new(env.router.clone(), Arc::new(SystemClock), auth)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = authio_server::build_app(state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await;
    });
    let scope = Scope::project(t.tenant.id, t.project.id, TenantKind::Customer);
    let users: Vec<Uuid> = {
        let c = authio_db::pool::connect(&env.shared.admin_url, "bench").await?;
        c.query("SELECT id FROM users WHERE project_id = $1", &[&t.project.id])
            .await?
            .iter()
            .map(|r| r.col("id"))
            .collect::<Result<_, _>>()?
    };
    let ret = Return::App {
        redirect_uri: CB.into(),
        app_state: None,
        code_challenge: authio_core::crypto::pkce::s256(VERIFIER),
    };

    // n fresh refresh tokens, as token request bodies: each from a hosted sign-in's code
    // exchanged in process; `in_org` sessions are switched into the organization first.
    let bodies = |n: usize, side: usize| {
        let (state, scope, users, ret) = (state.clone(), scope, users.clone(), ret.clone());
        async move {
            let made: Vec<Result<String>> = futures_util::stream::iter(0..n)
                .map(|i| {
                    let (state, scope, ret) = (state.clone(), scope, ret.clone());
                    let user = SignedInUser { user_id: users[i % users.len()], role: None, created: false };
                    async move {
                        let location = state.identity.issue_signin_code(&scope, &user, &["pwd"], &ret).await?;
                        let code = url::Url::parse(&location)?
                            .query_pairs()
                            .find(|(k, _)| k == "code")
                            .map(|(_, v)| v.into_owned())
                            .context("code")?;
                        let exchange = authio_core::oidc::CodeExchange {
                            code: &code,
                            redirect_uri: CB,
                            verifier: Some(VERIFIER),
                            client: None,
                            resource: None,
                        };
                        let mut rt =
                            state.oidc.exchange_code(exchange, &Default::default(), None).await?.tokens.refresh_token;
                        if side == 1 {
                            let req = RefreshRequest { presented: &rt, organization: Some(org), ..Default::default() };
                            rt = state
                                .identity
                                .refresh_for(req, &Default::default(), &Guesser::Address(None))
                                .await?
                                .refresh_token;
                        }
                        let org_text = org.to_string();
                        let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", rt.as_str())];
                        if side == 2 {
                            form.push(("organization_id", org_text.as_str()));
                        }
                        Ok(serde_urlencoded::to_string(form)?)
                    }
                })
                .buffer_unordered(16)
                .collect()
                .await;
            made.into_iter().collect::<Result<Vec<_>>>()
        }
    };

    let file = std::env::temp_dir().join(format!("authio-bench-orgs-{}.bodies", std::process::id()));
    let url = format!("{base}/v1/auth/token");
    let mut rps: [Vec<f64>; 3] = [vec![], vec![], vec![]];
    let mut p99s: [Vec<f64>; 3] = [vec![], vec![], vec![]];
    let mut estimate = [600.0f64; 3];
    for round in 0..=rounds {
        let warmup = round == 0;
        let run_secs = if warmup { 1 } else { secs };
        let order: [usize; 3] = match round % 3 {
            0 => [0, 1, 2],
            1 => [1, 2, 0],
            _ => [2, 0, 1],
        };
        for side in order {
            let need = ((estimate[side] * run_secs as f64) * 2.0) as usize + 1000;
            let started = Instant::now();
            let made = bodies(need, side).await?;
            eprintln!("round {round}: {need} bodies for side {side} in {:.1} s", started.elapsed().as_secs_f64());
            std::fs::write(&file, made.join("\n"))?;
            let (r, p99, non2xx) = tokio::task::block_in_place(|| {
                run_wrk(&url, &file, run_secs, "application/x-www-form-urlencoded", None)
            })?;
            if non2xx > 0 {
                bail!("side {side}: {non2xx} non-2xx responses");
            }
            estimate[side] = r;
            if !warmup {
                rps[side].push(r);
                p99s[side].push(p99);
            }
        }
    }
    let base_rps = median(rps[0].clone());
    println!("\n## Organization claims on `POST /v1/auth/token` (refresh_token; 64 connections)\n");
    println!("| refresh | median req/s | median p99 ms | ratio to no organization | runs (req/s) |\n|---|---:|---:|---:|---|");
    for (side, label) in [
        (0, "a session in no organization"),
        (1, "a session in an organization (org_id, role, 5 permissions read at the rotation)"),
        (2, "switching the session into the organization (`organization_id`)"),
    ] {
        let m = median(rps[side].clone());
        println!(
            "| {label} | {m:.0} | {:.2} | {:.3} | {:?} |",
            median(p99s[side].clone()),
            m / base_rps,
            rps[side].iter().map(|v| v.round()).collect::<Vec<_>>()
        );
    }
    Ok(())
}
