//! Directory sync: an initial sync of 10,000 users and 500 groups (20 members each) through
//! the real SCIM endpoint over HTTP, as a provider pushes it (several requests in flight), and
//! the time to deprovision one user of 10,000 (a PATCH `active: false` that ends the user's
//! sessions in the same request).
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use authio_core::types::Plan;
use authio_core::SystemClock;
use authio_db::TenantKind;
use futures_util::StreamExt;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{median, Env};

const USERS_DEFAULT: usize = 10_000;
const GROUPS: usize = 500;
const PER_GROUP: usize = 20;
const IN_FLIGHT_DEFAULT: usize = 16;

pub async fn dsync(env: &Env) -> Result<()> {
    // (BENCH_DSYNC_USERS and BENCH_DSYNC_IN_FLIGHT for diagnostics.)
    let users_n = crate::env_num("BENCH_DSYNC_USERS", USERS_DEFAULT as u64) as usize;
    let in_flight = crate::env_num("BENCH_DSYNC_IN_FLIGHT", IN_FLIGHT_DEFAULT as u64) as usize;
    #[allow(non_snake_case)]
    let (USERS, IN_FLIGHT) = (users_n, in_flight);
    let t = authio_testkit::seed_tenant(&env.shared, "bench-dsync", TenantKind::Customer, Plan::Enterprise).await;
    let org = Uuid::now_v7();
    {
        let c = authio_db::pool::connect(&env.shared.admin_url, "bench").await?;
        c.batch_execute(&format!(
            "INSERT INTO roles VALUES ('{tid}', '{pid}', '{role}', 'member', 'Member', ARRAY[]::text[], true, now(), now());
             INSERT INTO roles VALUES ('{tid}', '{pid}', '{admin}', 'admin', 'Admin', ARRAY[]::text[], false, now(), now());
             INSERT INTO organizations (tenant_id, project_id, id, slug, name, created_at, updated_at)
               VALUES ('{tid}', '{pid}', '{org}', 'initech', 'Initech', now(), now());
             INSERT INTO organization_domains (tenant_id, project_id, id, organization_id, domain, verification_token,
                                               created_at, verified_at)
               VALUES ('{tid}', '{pid}', gen_random_uuid(), '{org}', 'initech.test', 'bench-token-0123456789', now(), now())",
            tid = t.tenant.id,
            pid = t.project.id,
            role = Uuid::now_v7(),
            admin = Uuid::now_v7(),
        ))
        .await
        .context("seeding the organization")?;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let mut auth = authio_server::AuthSettings::new(base.clone(), authio_testkit::test_master_key());
    // The limit is a guard, not the subject here.
    auth.directory_limit = authio_core::dsync::DirectoryLimit { per_second: 1e9, burst: 1e9 };
    let state = authio_server::AppState::new(env.router.clone(), Arc::new(SystemClock), auth)?;
    let app = authio_server::build_app(state);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await;
    });
    let http = reqwest::Client::builder().pool_max_idle_per_host(IN_FLIGHT).build()?;
    let r = http
        .post(format!("{base}/v1/projects/{}/organizations/{org}/directories", t.project.id))
        .bearer_auth(&t.api_key.plaintext)
        .json(&json!({"name": "Okta", "group_roles": {"group-0": "admin"}}))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("directory: {} {}", r.status(), r.text().await?);
    }
    let d: Value = r.json().await?;
    let scim = d["scim_base_url"].as_str().context("base")?.to_owned();
    let token = d["token"].as_str().context("token")?.to_owned();

    let send = |method: reqwest::Method, path: String, body: Option<Value>| {
        let (http, scim, token) = (http.clone(), scim.clone(), token.clone());
        async move {
            let mut req = http.request(method, format!("{scim}{path}")).bearer_auth(&token);
            if let Some(b) = body {
                req = req.header("content-type", "application/scim+json").body(b.to_string());
            }
            let r = req.send().await?;
            let st = r.status();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            if !st.is_success() {
                bail!("{path}: {st} {v}");
            }
            Ok::<Value, anyhow::Error>(v)
        }
    };

    // Users, as Okta pushes them (an Okta-shaped body each).
    let started = Instant::now();
    let ids: Vec<Result<String>> = futures_util::stream::iter(0..USERS)
        .map(|i| {
            let body = json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": format!("user{i}@initech.test"), "externalId": format!("00u{i:08}"),
                "name": {"givenName": "User", "familyName": format!("Number {i}")},
                "emails": [{"primary": true, "value": format!("user{i}@initech.test"), "type": "work"}],
                "displayName": format!("User {i}"), "locale": "en-US", "active": true,
            });
            let f = send(reqwest::Method::POST, "/Users".into(), Some(body));
            async move { Ok(f.await?["id"].as_str().context("id")?.to_owned()) }
        })
        .buffered(IN_FLIGHT)
        .collect()
        .await;
    let users_took = started.elapsed();
    let ids: Vec<String> = ids.into_iter().collect::<Result<_>>()?;

    // Groups, each with its members in the POST.
    let started = Instant::now();
    let groups: Vec<Result<Value>> = futures_util::stream::iter(0..GROUPS)
        .map(|g| {
            let members: Vec<Value> = (0..PER_GROUP).map(|k| json!({"value": ids[(g * PER_GROUP + k) % USERS]})).collect();
            send(
                reqwest::Method::POST,
                "/Groups".into(),
                Some(json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": format!("group-{g}"), "members": members})),
            )
        })
        .buffered(IN_FLIGHT)
        .collect()
        .await;
    let groups_took = started.elapsed();
    groups.into_iter().collect::<Result<Vec<_>>>()?;

    // Deprovisioning one user of 10,000, twenty times (one at a time, nothing else running).
    let mut each = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        let v = send(
            reqwest::Method::PATCH,
            format!("/Users/{}", ids[USERS - 1 - i]),
            Some(json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                         "Operations": [{"op": "replace", "value": {"active": false}}]})),
        )
        .await?;
        each.push(started.elapsed().as_secs_f64() * 1000.0);
        if v["active"] != json!(false) {
            bail!("not deactivated: {v}");
        }
    }
    // A provider's lookup before a create, at 10,000 users.
    let mut lookups = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        let v = send(
            reqwest::Method::GET,
            format!("/Users?filter=userName%20eq%20%22user{}%40initech.test%22", (i * 397) % USERS),
            None,
        )
        .await?;
        lookups.push(started.elapsed().as_secs_f64() * 1000.0);
        if v["totalResults"] != json!(1) {
            bail!("lookup: {v}");
        }
    }
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    println!(
        "dsync: {USERS} users in {:.1} s = {:.0} users/s ({IN_FLIGHT} in flight); {GROUPS} groups of {PER_GROUP} in {:.1} s = {:.0} groups/s",
        users_took.as_secs_f64(),
        USERS as f64 / users_took.as_secs_f64(),
        groups_took.as_secs_f64(),
        GROUPS as f64 / groups_took.as_secs_f64(),
    );
    println!(
        "dsync: deprovisioning one user of {USERS}: median {:.1} ms, max {:.1} ms (20 runs); userName lookup median {:.1} ms",
        median(each.clone()),
        max(&each),
        median(lookups),
    );
    Ok(())
}
