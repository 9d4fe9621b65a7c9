//! The OpenID Provider's token endpoint: authorization-code exchanges (each a fresh code, with
//! its PKCE verifier, client_secret_basic, an ID token signed) and refreshes (each a fresh
//! refresh token of an OpenID client's session), per second over HTTP.
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use authio_core::oidc::{AuthorizeParams, OpSession};
use authio_core::types::Plan;
use authio_core::SystemClock;
use authio_db::{RowExt, Scope, TenantKind};
use base64::Engine;
use futures_util::StreamExt;

use crate::otp::run_wrk;
use crate::{insert_users, median, Env};

const USERS: i64 = 1_000;
const CB: &str = "https://rp.bench.test/callback";
const VERIFIER: &str = "bench-verifier-bench-verifier-bench-verifier-0123";

pub async fn oidc(env: &Env, secs: u64, rounds: usize) -> Result<()> {
    let t = authio_testkit::seed_tenant(&env.shared, "bench-oidc", TenantKind::Customer, Plan::Enterprise).await;
    insert_users(&env.shared.admin_url, t.tenant.id, t.project.id, USERS, "r").await?;
    let mut auth = authio_server::AuthSettings::new("http://127.0.0.1", authio_testkit::test_master_key());
    auth.limits.verify_failures_per_ip = i32::MAX;
    auth.limits.client_failures_per_ip = i32::MAX;
    let state = authio_server::AppState::new(env.router.clone(), Arc::new(SystemClock), auth)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = authio_server::build_app(state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await;
    });

    let scope = Scope::project(t.tenant.id, t.project.id, TenantKind::Customer);
    let new = authio_core::oidc::NewOidcClient {
        name: "bench rp".into(),
        client_type: "confidential".into(),
        redirect_uris: vec![CB.into()],
        post_logout_redirect_uris: vec![],
        token_endpoint_auth_method: None,
        scopes: None,
        grant_types: None,
        id_token_signed_response_alg: None,
        resources: Vec::new(),
    };
    let auth = authio_core::authz::as_tool("bench", authio_core::authz::Permission::CredentialsManage, &scope)?;
    let (client, secret) =
        authio_core::oidc::create_client(&env.router, &SystemClock, &auth, &new, &Default::default()).await?;
    let secret = secret.context("a confidential client's secret")?;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", client.client_id, secret))
    );
    let params = AuthorizeParams {
        client_id: Some(client.client_id.clone()),
        redirect_uri: Some(CB.into()),
        response_type: Some("code".into()),
        scope: Some("openid email offline_access".into()),
        nonce: Some("bench-nonce".into()),
        code_challenge: Some(authio_core::crypto::pkce::s256(VERIFIER)),
        code_challenge_method: Some("S256".into()),
        ..AuthorizeParams::default()
    };
    let request = state
        .oidc
        .authorization_request(t.project.id, &params)
        .await
        .map_err(|e| anyhow::anyhow!("authorization request: {e:?}"))?;
    let users: Vec<uuid::Uuid> = {
        let c = authio_db::pool::connect(&env.shared.admin_url, "bench").await?;
        c.query("SELECT id FROM users WHERE project_id = $1", &[&t.project.id])
            .await?
            .iter()
            .map(|r| r.col("id"))
            .collect::<Result<_, _>>()?
    };

    // n fresh codes (issued as the authorization endpoint issues them), as token request bodies.
    let codes = |n: usize| {
        let identity = state.oidc.clone();
        let request = request.clone();
        let users = users.clone();
        async move {
            let made: Vec<Result<String>> = futures_util::stream::iter(0..n)
                .map(|i| {
                    let (identity, request) = (identity.clone(), request.clone());
                    let session = OpSession {
                        project_id: request.client.project_id,
                        user_id: users[i % users.len()],
                        auth_time: chrono::Utc::now().timestamp(),
                        amr: vec!["pwd".into()],
                        expires: chrono::Utc::now().timestamp() + 3600,
                    };
                    async move {
                        let location = identity.issue_authorization_code(&request, &session).await?;
                        let code = url::Url::parse(&location)?
                            .query_pairs()
                            .find(|(k, _)| k == "code")
                            .map(|(_, v)| v.into_owned())
                            .context("code")?;
                        Ok(serde_urlencoded::to_string([
                            ("grant_type", "authorization_code"),
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

    let file = std::env::temp_dir().join(format!("authio-bench-oidc-{}.bodies", std::process::id()));
    let url = format!("{base}/p/{}/oauth2/token", t.project.id);
    let (mut code_rps, mut code_p99, mut refresh_rps, mut refresh_p99) = (vec![], vec![], vec![], vec![]);
    let mut estimate = [800.0f64; 2];
    for round in 0..=rounds {
        let warmup = round == 0;
        let run_secs = if warmup { 1 } else { secs };
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for side in order {
            let need = ((estimate[side] * run_secs as f64) * 2.0) as usize + 1000;
            let started = Instant::now();
            let bodies = if side == 0 {
                codes(need).await?
            } else {
                // Refresh tokens of OpenID sessions: exchange codes in process.
                let exchanged: Vec<Result<String>> = futures_util::stream::iter(codes(need).await?)
                    .map(|body| {
                        let identity = state.oidc.clone();
                        let client = client.client_id.clone();
                        let project = t.project.id;
                        async move {
                            let code: String = serde_urlencoded::from_str::<Vec<(String, String)>>(&body)?
                                .into_iter()
                                .find(|(k, _)| k == "code")
                                .map(|(_, v)| v)
                                .context("code")?;
                            let c = identity.client_for(project, &client).await?.context("client")?;
                            let t = identity
                                .exchange_code(
                                    authio_core::oidc::CodeExchange {
                                        code: &code,
                                        redirect_uri: CB,
                                        verifier: Some(VERIFIER),
                                        client: Some(&c),
                                        resource: None,
                                    },
                                    &Default::default(),
                                    None,
                                )
                                .await?;
                            Ok(serde_urlencoded::to_string([
                                ("grant_type", "refresh_token"),
                                ("refresh_token", t.tokens.refresh_token.as_str()),
                            ])?)
                        }
                    })
                    .buffer_unordered(16)
                    .collect()
                    .await;
                exchanged.into_iter().collect::<Result<Vec<_>>>()?
            };
            eprintln!("round {round}: {need} bodies for side {side} in {:.1} s", started.elapsed().as_secs_f64());
            std::fs::write(&file, bodies.join("\n"))?;
            let (rps, p99, non2xx) = tokio::task::block_in_place(|| {
                run_wrk(&url, &file, run_secs, "application/x-www-form-urlencoded", Some(&basic))
            })?;
            if non2xx > 0 {
                bail!("side {side}: {non2xx} non-2xx responses");
            }
            estimate[side] = rps;
            if !warmup {
                if side == 0 {
                    code_rps.push(rps);
                    code_p99.push(p99);
                } else {
                    refresh_rps.push(rps);
                    refresh_p99.push(p99);
                }
            }
        }
    }
    println!("\n## OpenID Provider token endpoint (confidential client, client_secret_basic; 64 connections)\n");
    println!("| grant | median req/s | median p99 ms | runs (req/s) |\n|---|---:|---:|---|");
    for (label, r, p) in [
        ("authorization_code (PKCE; ID, access and refresh tokens)", &code_rps, &code_p99),
        ("refresh_token (rotation)", &refresh_rps, &refresh_p99),
    ] {
        println!(
            "| {label} | {:.0} | {:.2} | {:?} |",
            median(r.clone()),
            median(p.clone()),
            r.iter().map(|v| v.round()).collect::<Vec<_>>()
        );
    }
    Ok(())
}
