//! Authorization-code exchanges for a client named by its metadata document's URL (Client ID
//! Metadata Documents: the document served on loopback, fetched once and then read from its
//! cached row) against a pre-registered public client, side by side over HTTP: each request a
//! fresh code with its PKCE verifier, an ID token signed, sides alternating round by round.
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use authio_core::oidc::{AuthorizeParams, OpSession};
use authio_core::types::Plan;
use authio_core::SystemClock;
use authio_db::{RowExt, Scope, TenantKind};
use futures_util::StreamExt;

use crate::otp::run_wrk;
use crate::{insert_users, median, Env};

const USERS: i64 = 1_000;
const CB: &str = "http://127.0.0.1:7777/callback";
const VERIFIER: &str = "bench-verifier-bench-verifier-bench-verifier-0123";

pub async fn mcp(env: &Env, secs: u64, rounds: usize) -> Result<()> {
    let t = authio_testkit::seed_tenant(&env.shared, "bench-mcp", TenantKind::Customer, Plan::Enterprise).await;
    insert_users(&env.shared.admin_url, t.tenant.id, t.project.id, USERS, "m").await?;
    // A development project may read metadata documents on loopback, where this one is served.
    let admin = authio_db::pool::connect(&env.shared.admin_url, "bench").await?;
    admin
        .execute(
            "UPDATE projects SET environment = 'development', metadata_document_clients = true WHERE id = $1",
            &[&t.project.id],
        )
        .await?;
    let doc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let doc_url = format!("http://{}/client.json", doc_listener.local_addr()?);
    let doc = serde_json::json!({"client_id": doc_url, "client_name": "bench agent", "redirect_uris": [CB],
                                 "token_endpoint_auth_method": "none"})
    .to_string();
    let fetched = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = fetched.clone();
    let doc_app = axum::Router::new().route(
        "/client.json",
        axum::routing::get(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let body = doc.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], body) }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(doc_listener, doc_app).await;
    });

    // The document is served on loopback: a development deployment's allowance.
    let (base, state) = crate::identity_app_with(env, |auth| {
        auth.limits.verify_failures_per_ip = i32::MAX;
        auth.allow_http_upstreams = true;
    })
    .await?;

    let scope = Scope::project(t.tenant.id, t.project.id, TenantKind::Customer);
    let new = authio_core::oidc::NewOidcClient {
        name: "bench registered".into(),
        client_type: "public".into(),
        redirect_uris: vec![CB.into()],
        post_logout_redirect_uris: vec![],
        token_endpoint_auth_method: None,
        scopes: None,
        grant_types: None,
        id_token_signed_response_alg: None,
        resources: Vec::new(),
    };
    let tool = authio_core::authz::as_tool("bench", authio_core::authz::Permission::CredentialsManage, &scope)?;
    let (registered, _) =
        authio_core::oidc::create_client(&env.router, &SystemClock, &tool, &new, &Default::default()).await?;
    let request_for = |client_id: String| {
        let oidc = state.oidc.clone();
        let project = t.project.id;
        async move {
            let params = AuthorizeParams {
                client_id: Some(client_id),
                redirect_uri: Some(CB.into()),
                response_type: Some("code".into()),
                scope: Some("openid".into()),
                code_challenge: Some(authio_core::crypto::pkce::s256(VERIFIER)),
                code_challenge_method: Some("S256".into()),
                ..AuthorizeParams::default()
            };
            oidc.authorization_request(project, &params)
                .await
                .map_err(|e| anyhow::anyhow!("authorization request: {e:?}"))
        }
    };
    let requests = [request_for(registered.client_id.clone()).await?, request_for(doc_url.clone()).await?];
    let users: Vec<uuid::Uuid> = admin
        .query("SELECT id FROM users WHERE project_id = $1", &[&t.project.id])
        .await?
        .iter()
        .map(|r| r.col("id"))
        .collect::<Result<_, _>>()?;
    let codes = |side: usize, n: usize| {
        let oidc = state.oidc.clone();
        let request = requests[side].clone();
        let users = users.clone();
        async move {
            let made: Vec<Result<String>> = futures_util::stream::iter(0..n)
                .map(|i| {
                    let (oidc, request) = (oidc.clone(), request.clone());
                    let session = OpSession {
                        project_id: request.client.project_id,
                        user_id: users[i % users.len()],
                        auth_time: chrono::Utc::now().timestamp(),
                        amr: vec!["pwd".into()],
                        expires: chrono::Utc::now().timestamp() + 3600,
                    };
                    async move {
                        let location = oidc.issue_authorization_code(&request, &session).await?;
                        let code = url::Url::parse(&location)?
                            .query_pairs()
                            .find(|(k, _)| k == "code")
                            .map(|(_, v)| v.into_owned())
                            .context("code")?;
                        Ok(serde_urlencoded::to_string([
                            ("grant_type", "authorization_code"),
                            ("client_id", request.client.client_id.as_str()),
                            ("code", code.as_str()),
                            ("redirect_uri", CB),
                            ("code_verifier", VERIFIER),
                        ])?)
                    }
                })
                .buffer_unordered(16)
                .collect()
                .await;
            made.into_iter().collect::<Result<Vec<_>>>()
        }
    };
    let file = std::env::temp_dir().join(format!("authio-bench-mcp-{}.bodies", std::process::id()));
    let url = format!("{base}/p/{}/oauth2/token", t.project.id);
    let mut rps: [Vec<f64>; 2] = [vec![], vec![]];
    let mut p99s: [Vec<f64>; 2] = [vec![], vec![]];
    let mut estimate = [800.0f64; 2];
    for round in 0..=rounds {
        let warmup = round == 0;
        let run_secs = if warmup { 1 } else { secs };
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let need = ((estimate[side] * run_secs as f64) * 2.0) as usize + 1000;
            let started = Instant::now();
            let bodies = codes(side, need).await?;
            eprintln!("round {round}: {need} codes for side {side} in {:.1} s", started.elapsed().as_secs_f64());
            std::fs::write(&file, bodies.join("\n"))?;
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
    let ratios: Vec<f64> = rps[0].iter().zip(&rps[1]).map(|(a, b)| b / a).collect();
    println!("\n## Code exchanges: metadata-document client against a pre-registered client (64 connections)\n");
    println!("| client | median req/s | median p99 ms | runs (req/s) |\n|---|---:|---:|---|");
    for (label, side) in [("pre-registered (public, PKCE)", 0), ("metadata document (cached)", 1)] {
        println!(
            "| {label} | {:.0} | {:.2} | {:?} |",
            median(rps[side].clone()),
            median(p99s[side].clone()),
            rps[side].iter().map(|v| v.round()).collect::<Vec<_>>()
        );
    }
    println!(
        "\nratio of medians {:.3}; median of per-round ratios {:.3} (target >= 0.9); document fetched {} time(s)",
        median(rps[1].clone()) / median(rps[0].clone()),
        median(ratios),
        fetched.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}
