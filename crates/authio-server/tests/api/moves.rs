//! Moving tenants online between the shared cluster and the dedicated cluster, under load,
//! through several app instances.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use authio_core::tenancy::moves::{Direction, HOME_TABLES};
use authio_core::types::Plan;
use authio_db::{RouterSettings, TenantKind};
use authio_testkit::{
    admin_query_strings, clusters, provision_dedicated, quiet_move, router_settings, seed_tenant, spawn_app,
    spawn_app_with, test_master_key, AppOptions, Seeded, TestApp,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::identity::{claims_of, create_client, introspect, issuer, jwks, refresh, sign_up, verify_independently};

/// What a tenant's load saw.
#[derive(Default)]
struct Seen {
    acked: Mutex<Vec<String>>,
    failures: Mutex<Vec<String>>,
    moving: AtomicU64,
    foreign_rows: AtomicU64,
    reads: AtomicU64,
}

struct Load {
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `writers` tasks create users (alternating between the instances), `readers` list them and
    /// check every row is the tenant's own. A 503 `tenant_moving` is allowed when `may_move`.
    fn start(apps: &[&TestApp], s: &Seeded, prefix: &str, writers: usize, readers: usize, may_move: bool) -> Load {
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let urls: Vec<String> = apps.iter().map(|a| a.url(&format!("/v1/projects/{}/users", s.project.id))).collect();
        let mut tasks = Vec::new();
        for w in 0..writers + readers {
            let (seen, stop, urls) = (seen.clone(), stop.clone(), urls.clone());
            let key = s.api_key.plaintext.clone();
            let prefix = prefix.to_owned();
            let http = reqwest::Client::new();
            tasks.push(tokio::spawn(async move {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let url = &urls[(i + w) % urls.len()];
                    let writer = w < writers;
                    let req = if writer {
                        let email = format!("{prefix}-w{w}-{i}@example.com");
                        http.post(url).bearer_auth(&key).json(&json!({ "email": email }))
                    } else {
                        http.get(format!("{url}?limit=200")).bearer_auth(&key)
                    };
                    let r = match req.send().await {
                        Ok(r) => r,
                        Err(e) => {
                            seen.failures.lock().unwrap().push(format!("transport: {e}"));
                            continue;
                        }
                    };
                    let status = r.status();
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    match status {
                        StatusCode::CREATED if writer => {
                            seen.acked.lock().unwrap().push(body["email"].as_str().unwrap_or_default().to_owned())
                        }
                        StatusCode::OK if !writer => {
                            seen.reads.fetch_add(1, Ordering::Relaxed);
                            for u in body["data"].as_array().cloned().unwrap_or_default() {
                                if !u["email"].as_str().unwrap_or_default().starts_with(&format!("{prefix}-")) {
                                    seen.foreign_rows.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        StatusCode::SERVICE_UNAVAILABLE if may_move && body["error"]["code"] == "tenant_moving" => {
                            seen.moving.fetch_add(1, Ordering::Relaxed);
                        }
                        other => seen.failures.lock().unwrap().push(format!("{other}: {body}")),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        Load { seen, stop, tasks }
    }

    async fn stop(self) -> Arc<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.seen
    }
}

async fn count(admin_url: &str, table: &str, tenant: uuid::Uuid) -> i64 {
    admin_query_strings(admin_url, &format!("SELECT count(*)::text FROM {table} WHERE tenant_id = '{tenant}'")).await[0]
        .parse()
        .unwrap()
}

async fn emails(admin_url: &str, tenant: uuid::Uuid) -> HashMap<String, i64> {
    let rows = admin_query_strings(
        admin_url,
        &format!("SELECT email || ' ' || count(*) FROM users WHERE tenant_id = '{tenant}' GROUP BY email"),
    )
    .await;
    rows.into_iter()
        .map(|r| {
            let (e, n) = r.rsplit_once(' ').unwrap();
            (e.to_owned(), n.parse().unwrap())
        })
        .collect()
}

async fn home_flags(admin_url: &str, tenant: uuid::Uuid) -> String {
    admin_query_strings(admin_url, &format!("SELECT authio_tenant_at_home('{tenant}')::text")).await[0].clone()
}

#[tokio::test]
async fn a_tenant_moves_to_dedicated_and_back_under_load_through_two_instances_losing_nothing() {
    let app1 = spawn_app().await;
    let app2 = spawn_app_with(AppOptions { shared: Some(app1.shared.clone()), ..AppOptions::default() }).await;
    let moving = seed_tenant(&app1.shared, "moving", TenantKind::Customer, Plan::Enterprise).await;
    let other = seed_tenant(&app1.shared, "bystander", TenantKind::Customer, Plan::Pro).await;
    let dedicated = provision_dedicated(&app1.shared, &moving.tenant).await;
    let key = test_master_key();

    // Organizations move with the tenant: a permission, a role, an organization, and a member
    // whose session acts for it.
    let manage = |path: &str, body: Value| {
        app1.http
            .post(app1.url(&format!("/v1/projects/{}{path}", moving.project.id)))
            .bearer_auth(&moving.api_key.plaintext)
            .json(&body)
            .send()
    };
    assert_eq!(manage("/permissions", json!({"slug": "read:invoices"})).await.unwrap().status(), StatusCode::CREATED);
    let r = manage(
        "/roles",
        json!({"slug": "member", "name": "Member", "permissions": ["read:invoices"], "is_default": true}),
    );
    assert_eq!(r.await.unwrap().status(), StatusCode::CREATED);
    let org: Value =
        manage("/organizations", json!({"name": "Initech", "slug": "initech"})).await.unwrap().json().await.unwrap();
    let org_id = org["id"].as_str().unwrap().to_owned();
    let member = sign_up(&app1, moving.project.id, "moving-org-member@example.com").await;
    let r = manage(&format!("/organizations/{org_id}/members"), json!({"user_id": member["user_id"]}));
    assert_eq!(r.await.unwrap().status(), StatusCode::CREATED);
    let r = app1
        .http
        .post(app1.url("/v1/auth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", member["refresh_token"].as_str().unwrap()),
            ("organization_id", org_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let in_org: Value = r.json().await.unwrap();
    // A pending invitation moves too.
    let r = manage(&format!("/organizations/{org_id}/invitations"), json!({"email": "invitee@example.com"}));
    assert_eq!(r.await.unwrap().status(), StatusCode::CREATED);
    // So does the event stream, positions and all.
    let stream = |app: &TestApp| {
        app.http
            .get(app.url(&format!("/v1/projects/{}/events?limit=500", moving.project.id)))
            .bearer_auth(&moving.api_key.plaintext)
            .send()
    };
    let before: Value = stream(&app1).await.unwrap().json().await.unwrap();
    let before = before["data"].as_array().unwrap().clone();
    assert!(before.iter().any(|e| e["type"] == "membership.added"), "{before:?}");

    let load = Load::start(&[&app1, &app2], &moving, "moving", 4, 2, true);
    let bystander = Load::start(&[&app1, &app2], &other, "bystander", 2, 1, false);
    tokio::time::sleep(Duration::from_millis(700)).await;

    let t = app1.control.tenant_by_slug("moving").await.unwrap().unwrap();
    let there = app1.control.start_move(&t, Direction::ToDedicated, &key, &quiet_move()).await.unwrap();
    assert!(there.checks.iter().all(|c| c.matches()), "{:?}", there.checks);
    assert_eq!(there.record.verified, Some(true));
    let pause = there.pause_ms.unwrap();
    assert!(pause > 0.0 && pause < 3000.0, "pause {pause} ms");
    // The old home on shared is frozen from the cutover on.
    let frozen_on_shared = count(&app1.shared.admin_url, "users", t.id).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(count(&app1.shared.admin_url, "users", t.id).await, frozen_on_shared, "a write reached the old home");
    assert!(count(&dedicated, "users", t.id).await > frozen_on_shared, "writes go on at the new home");

    let t = app1.control.tenant_by_slug("moving").await.unwrap().unwrap();
    assert_eq!(t.db_strategy, authio_db::DbStrategy::Dedicated);
    let back = app1.control.start_move(&t, Direction::ToShared, &key, &quiet_move()).await.unwrap();
    assert!(back.checks.iter().all(|c| c.matches()), "{:?}", back.checks);
    let frozen_on_dedicated = count(&dedicated, "users", t.id).await;
    tokio::time::sleep(Duration::from_millis(800)).await;

    let seen = load.stop().await;
    let bystander_seen = bystander.stop().await;
    assert_eq!(count(&dedicated, "users", t.id).await, frozen_on_dedicated, "a write reached the old home");

    // Every acknowledged write is at the final home exactly once.
    let at_home = emails(&app1.shared.admin_url, t.id).await;
    let acked = seen.acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "too little load to mean anything: {}", acked.len());
    for e in &acked {
        assert_eq!(at_home.get(e), Some(&1), "acknowledged {e} is not at home exactly once");
    }
    assert!(seen.failures.lock().unwrap().is_empty(), "{:?}", seen.failures.lock().unwrap());
    assert_eq!(seen.foreign_rows.load(Ordering::Relaxed), 0);
    assert!(seen.reads.load(Ordering::Relaxed) > 10);
    // The other tenant never noticed.
    assert!(bystander_seen.failures.lock().unwrap().is_empty(), "{:?}", bystander_seen.failures.lock().unwrap());
    assert_eq!(bystander_seen.foreign_rows.load(Ordering::Relaxed), 0);
    let other_home = emails(&app1.shared.admin_url, other.tenant.id).await;
    for e in bystander_seen.acked.lock().unwrap().iter() {
        assert_eq!(other_home.get(e), Some(&1));
    }
    // One home: shared says at home, the dedicated database says not; each event recorded.
    assert_eq!(home_flags(&app1.shared.admin_url, t.id).await, "true");
    assert_eq!(home_flags(&dedicated, t.id).await, "false");
    let moves = app1.control.moves(t.id).await.unwrap();
    assert_eq!(moves.len(), 2);
    assert!(moves.iter().all(|m| m.phase == "done" && m.pause_ms.is_some()));
    // The audit chain moved with the tenant and still verifies at its home.
    let reports = app1.control.verify_audit(&t, Some(&key)).await.unwrap();
    assert!(!reports.is_empty() && reports.iter().all(|r| r.first_broken.is_none()), "{reports:?}");
    // The organization rows came back (each move's checks compared every home table's
    // checksum), and the session still acts for the organization with the member's role.
    for table in ["permissions", "roles", "organizations", "memberships", "invitations"] {
        assert_eq!(count(&app1.shared.admin_url, table, t.id).await, 1, "{table}");
    }
    let r = app1
        .http
        .get(app1.url(&format!("/v1/projects/{}/organizations/{org_id}/invitations", moving.project.id)))
        .bearer_auth(&moving.api_key.plaintext)
        .send()
        .await
        .unwrap();
    let list: Value = r.json().await.unwrap();
    let after: Value = stream(&app1).await.unwrap().json().await.unwrap();
    let after = after["data"].as_array().unwrap();
    for e in &before {
        assert!(after.contains(e), "{e} kept across the moves");
    }
    // The load wrote many more events since: each move's own is found by its type.
    let r = app1
        .http
        .get(app1.url(&format!("/v1/projects/{}/events?types=tenant.moved", moving.project.id)))
        .bearer_auth(&moving.api_key.plaintext)
        .send()
        .await
        .unwrap();
    let moved: Value = r.json().await.unwrap();
    let to: Vec<&str> = moved["data"].as_array().unwrap().iter().map(|e| e["data"]["to"].as_str().unwrap()).collect();
    assert_eq!(to, vec!["dedicated", "shared"], "each move is an event");
    assert_eq!(
        (list["data"][0]["email"].as_str(), list["data"][0]["status"].as_str()),
        (Some("invitee@example.com"), Some("pending"))
    );
    let (st, t2) = refresh(&app1, in_org["refresh_token"].as_str().unwrap()).await;
    assert_eq!(st, StatusCode::OK, "{t2}");
    let claims = claims_of(t2["access_token"].as_str().unwrap());
    assert_eq!((claims["org_id"].as_str(), claims["role"].as_str()), (Some(org_id.as_str()), Some("member")));
    assert_eq!(claims["permissions"], json!(["read:invoices"]));
}

#[tokio::test]
async fn an_instance_whose_listener_was_cut_does_not_write_to_the_old_home() {
    let app = spawn_app().await;
    // This instance never hears NOTIFY and re-reads epochs only hourly: its route goes stale.
    let stale = spawn_app_with(AppOptions {
        shared: Some(app.shared.clone()),
        router: RouterSettings { listen: false, route_reread_interval: Duration::from_secs(3600), ..router_settings() },
        ..AppOptions::default()
    })
    .await;
    let s = seed_tenant(&app.shared, "stale-node", TenantKind::Customer, Plan::Enterprise).await;
    let dedicated = provision_dedicated(&app.shared, &s.tenant).await;
    let users = |a: &TestApp| a.url(&format!("/v1/projects/{}/users", s.project.id));
    let r =
        stale.http.post(users(&stale)).bearer_auth(&s.api_key.plaintext).json(&json!({"email": "before@example.com"}));
    assert_eq!(r.send().await.unwrap().status(), StatusCode::CREATED);
    let stale_route = stale.router.cache().get(&s.tenant.id).unwrap();
    assert_eq!(stale_route.strategy, authio_db::DbStrategy::Shared);

    app.control.start_move(&s.tenant, Direction::ToDedicated, &test_master_key(), &quiet_move()).await.unwrap();
    // Its own audit relay may have met the fence and re-read the route meanwhile: put the
    // stale route back, as a node that heard nothing would hold it.
    let cache = stale.router.cache();
    cache.invalidate(&s.tenant.id, None);
    cache.insert_if_current(s.tenant.id, stale_route, cache.generation());
    assert_eq!(cache.get(&s.tenant.id).unwrap().strategy, authio_db::DbStrategy::Shared);
    let r =
        stale.http.post(users(&stale)).bearer_auth(&s.api_key.plaintext).json(&json!({"email": "after@example.com"}));
    assert_eq!(r.send().await.unwrap().status(), StatusCode::CREATED);
    let on_shared = emails(&app.shared.admin_url, s.tenant.id).await;
    let on_dedicated = emails(&dedicated, s.tenant.id).await;
    assert!(!on_shared.contains_key("after@example.com"), "the stale node wrote to the old home");
    assert_eq!(on_dedicated.get("after@example.com"), Some(&1));
    assert_eq!(on_dedicated.get("before@example.com"), Some(&1));
    // Reads through the stale node see the new home too.
    let r = stale.http.get(users(&stale)).bearer_auth(&s.api_key.plaintext).send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 2, "{body}");
}

#[tokio::test]
async fn tokens_from_before_a_move_keep_working_and_pinned_rows_stay_on_shared() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "tokens-move", TenantKind::Customer, Plan::Enterprise).await;
    let dedicated = provision_dedicated(&app.shared, &s.tenant).await;
    let up = sign_up(&app, s.project.id, "kept@example.com").await;
    let access = up["access_token"].as_str().unwrap().to_owned();
    let (client_id, client_secret) = create_client(&app, &s, &["read"]).await;

    app.control.start_move(&s.tenant, Direction::ToDedicated, &test_master_key(), &quiet_move()).await.unwrap();
    // verify agrees right after the move (before the tenant writes at its new home).
    let t = app.control.tenant_by_slug("tokens-move").await.unwrap().unwrap();
    let checks = app.control.verify_tenant(&t, &test_master_key()).await.unwrap();
    assert!(checks.iter().all(|c| c.matches()), "{checks:?}");
    assert!(checks.iter().any(|c| c.table == "users" && c.target_rows == 1));

    verify_independently(&jwks(&app, s.project.id).await, &access, &issuer(&app, s.project.id)).unwrap();
    assert_eq!(introspect(&app, &s, &access).await["active"], true);
    let (status, refreshed) = refresh(&app, up["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let after = refreshed["access_token"].as_str().unwrap();
    let (before_claims, after_claims) = (claims_of(&access), claims_of(after));
    for claim in ["iss", "sub", "aud", "sid", "tid", "pid", "amr"] {
        assert_eq!(before_claims[claim], after_claims[claim], "{claim}");
    }
    assert_eq!(
        before_claims.as_object().unwrap().keys().collect::<Vec<_>>(),
        after_claims.as_object().unwrap().keys().collect::<Vec<_>>()
    );
    // The session and the new refresh token are at the new home.
    let sessions = admin_query_strings(&dedicated, "SELECT count(*)::text FROM refresh_tokens").await;
    assert_eq!(sessions, vec!["2"]);
    // Pre-resolution flows: client credentials and API keys resolve from shared.
    let r = app
        .http
        .post(app.url("/v1/auth/token"))
        .basic_auth(&client_id, Some(&client_secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for table in ["m2m_clients", "signing_keys", "api_keys", "projects", "tenants"] {
        assert_eq!(admin_query_strings(&dedicated, &format!("SELECT count(*)::text FROM {table}")).await, vec!["0"]);
    }
    for table in ["m2m_clients", "signing_keys", "api_keys"] {
        assert!(count(&app.shared.admin_url, table, s.tenant.id).await >= 1, "{table} left shared");
    }
    // Nothing of the tenant's home rows is left behind but the old copy, fenced off.
    assert_eq!(home_flags(&app.shared.admin_url, s.tenant.id).await, "false");
    // Once the tenant has written at its new home, verify shows the difference.
    let checks = app.control.verify_tenant(&t, &test_master_key()).await.unwrap();
    assert!(checks.iter().any(|c| c.table == "refresh_tokens" && !c.matches()), "{checks:?}");
    // purge-source clears the old copy, after the rollback window.
    let refused = app.control.purge_source(&t, &test_master_key(), Duration::from_secs(3600), false).await;
    assert!(matches!(refused, Err(authio_core::CoreError::TooSoon(_))), "{refused:?}");
    let purged = app.control.purge_source(&t, &test_master_key(), Duration::from_secs(3600), true).await.unwrap();
    assert!(purged >= 3, "{purged}");
    for table in HOME_TABLES {
        assert_eq!(count(&app.shared.admin_url, table.name, s.tenant.id).await, 0, "{}", table.name);
    }
    assert_eq!(introspect(&app, &s, after).await["active"], true);
}

#[tokio::test]
async fn the_platform_tenant_cannot_be_provisioned_or_moved_even_if_its_row_says_dedicated() {
    let app = spawn_app().await;
    let platform = seed_tenant(&app.shared, "authio", TenantKind::Platform, Plan::Enterprise).await;
    let key = test_master_key();
    let host = authio_core::types::Slug::parse("test-dedicated").unwrap();
    app.control
        .add_dedicated_host(&host, &clusters().dedicated.admin_url("postgres"), Some("unused"), &key)
        .await
        .unwrap();
    let refused = |r: Result<_, authio_core::CoreError>| {
        matches!(
            r,
            Err(authio_core::CoreError::Db(authio_db::DbError::Router(
                authio_db::RouterError::PlatformTenantNoDedicatedPool
            )))
        )
    };
    let target = authio_core::tenancy::dedicated::ProvisionTarget::Host("test-dedicated");
    assert!(refused(app.control.provision_dedicated(&platform.tenant, target, &key).await.map(|_| ())));
    assert!(refused(
        app.control.start_move(&platform.tenant, Direction::ToDedicated, &key, &quiet_move()).await.map(|_| ())
    ));
    app.control.set_db_strategy(platform.tenant.id, "dedicated").await.unwrap();
    let t = app.control.tenant_by_slug("authio").await.unwrap().unwrap();
    assert!(refused(app.control.start_move(&t, Direction::ToShared, &key, &quiet_move()).await.map(|_| ())));
    assert!(refused(app.control.resume_move(&t, &key, &quiet_move()).await.map(|_| ())));
    // A customer below Enterprise is refused with the plan named.
    let pro = seed_tenant(&app.shared, "pro-tenant", TenantKind::Customer, Plan::Pro).await;
    let target = authio_core::tenancy::dedicated::ProvisionTarget::Host("test-dedicated");
    let e = app.control.provision_dedicated(&pro.tenant, target, &key).await.unwrap_err();
    assert!(e.to_string().contains("Enterprise"), "{e}");
    assert!(app.control.moves(platform.tenant.id).await.unwrap().is_empty());
}

#[tokio::test]
async fn every_table_with_tenant_rows_either_moves_or_is_pinned_to_shared() {
    let app = spawn_app().await;
    let with_tenant = admin_query_strings(
        &app.shared.admin_url,
        "SELECT table_name::text FROM information_schema.columns
         WHERE table_schema = 'public' AND column_name = 'tenant_id' ORDER BY 1",
    )
    .await;
    // The pre-resolution matrix (DESIGN.md) plus the control plane: these stay on shared.
    let pinned = [
        "allowed_origins",
        "api_keys",
        "audit_anchors",
        "custom_domains",
        "directory_tokens",
        "email_codes",
        "email_links",
        "email_outbox",
        "email_templates",
        "oauth_connections",
        "oauth_states",
        "oidc_clients",
        "protected_resources",
        "saml_assertions_seen",
        "redirect_uris",
        "signin_codes",
        "audit_outbox",
        "dedicated_databases",
        "m2m_clients",
        "projects",
        "signing_keys",
        "tenant_homes",
        "tenant_moves",
        "tenant_members",
        "dedicated_db_requests",
        "database_identity",
        "webhook_schedule",
    ];
    for t in &with_tenant {
        let moves = HOME_TABLES.iter().any(|h| h.name == t);
        assert!(moves ^ pinned.contains(&t.as_str()), "table {t}: decide whether it moves (HOME_TABLES) or is pinned");
    }
    for h in HOME_TABLES {
        assert!(with_tenant.contains(&h.name.to_owned()), "{} has no tenant_id", h.name);
    }
}

/// Connect once the server accepts connections (its port opens before it finishes starting).
async fn connect_when_up(url: &str) -> tokio_postgres::Client {
    for _ in 0..100 {
        if let Ok(c) = authio_db::pool::connect(url, "test").await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} did not come up");
}

#[tokio::test]
async fn a_stopped_dedicated_cluster_gives_its_tenant_503_and_recovers_without_a_restart() {
    // A cluster of its own: stopping the test kit's dedicated cluster would disturb other tests.
    let dir = std::env::temp_dir().join(format!("authio-test-{}", std::process::id())).join("down-cluster");
    let port = authio_db::cluster::free_port().unwrap();
    let cluster =
        authio_db::cluster::LocalCluster::init(&dir, port, &authio_db::cluster::ClusterOptions { throwaway: true })
            .unwrap();
    cluster.start().unwrap();
    let admin = cluster.admin_url("postgres");
    let c = connect_when_up(&admin).await;
    c.batch_execute("CREATE DATABASE tenant_db").await.unwrap();

    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "fragile", TenantKind::Customer, Plan::Enterprise).await;
    let other = seed_tenant(&app.shared, "steady", TenantKind::Customer, Plan::Free).await;
    let target =
        authio_core::tenancy::dedicated::ProvisionTarget::Dsn { admin: &cluster.admin_url("tenant_db"), app: None };
    app.control.provision_dedicated(&s.tenant, target, &test_master_key()).await.unwrap();
    app.control.start_move(&s.tenant, Direction::ToDedicated, &test_master_key(), &quiet_move()).await.unwrap();

    let list = |s: &Seeded| {
        app.http.get(app.url(&format!("/v1/projects/{}/users", s.project.id))).bearer_auth(&s.api_key.plaintext).send()
    };
    assert_eq!(list(&s).await.unwrap().status(), StatusCode::OK);
    cluster.stop();
    let r = list(&s).await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "tenant_database_unavailable", "{body}");
    assert_eq!(list(&other).await.unwrap().status(), StatusCode::OK, "a shared tenant is not affected");
    cluster.start().unwrap();
    let mut recovered = false;
    for _ in 0..50 {
        if list(&s).await.unwrap().status() == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "the tenant did not recover after its database came back");
}
