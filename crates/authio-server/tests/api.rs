//! The HTTP application over real HTTP on loopback, against real PostgreSQL clusters.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Tests read rows by position freely; library code reads them by name (see clippy.toml).
#![allow(clippy::disallowed_methods)]

#[path = "api/audit.rs"]
mod audit;
#[path = "api/console.rs"]
mod console;
#[path = "api/edge.rs"]
mod edge;
#[path = "api/events.rs"]
mod events;
#[path = "api/identity.rs"]
mod identity;
#[path = "api/invitations.rs"]
mod invitations;
#[path = "api/mcp.rs"]
mod mcp;
#[path = "api/mfa.rs"]
mod mfa;
#[path = "api/mfa_browser.rs"]
mod mfa_browser;
#[path = "api/moves.rs"]
mod moves;
#[path = "api/oidc_provider.rs"]
mod oidc_provider;
#[path = "api/orgs.rs"]
mod orgs;
#[path = "api/saml.rs"]
mod saml;
#[path = "api/scim.rs"]
mod scim;
#[path = "api/signin_methods.rs"]
mod signin_methods;
#[path = "api/statements.rs"]
mod statements;
#[path = "api/third_party.rs"]
mod third_party;
#[path = "api/upstream.rs"]
mod upstream;
#[path = "api/webhooks.rs"]
mod webhooks;

use std::sync::Arc;

use authio_core::types::Plan;
use authio_core::SystemClock;
use authio_db::{MasterKey, Router, RouterSettings, Scope, TenantKind};
use authio_server::{db_pool_from_context, RequestContext};
use authio_testkit::{
    admin_query_strings, clusters, make_dedicated, router_settings, seed_tenant, spawn_app, spawn_app_with,
    test_master_key, AppOptions, Seeded, TestApp,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// GET a management endpoint with a key and read its JSON (whatever the status).
async fn get_json(app: &TestApp, path: &str, key: &str) -> Value {
    app.http.get(app.url(path)).bearer_auth(key).send().await.unwrap().json().await.unwrap()
}

fn users_url(app: &TestApp, s: &Seeded) -> String {
    app.url(&format!("/v1/projects/{}/users", s.project.id))
}

async fn create_user(app: &TestApp, s: &Seeded, email: &str) -> (StatusCode, Value) {
    let r = app
        .http
        .post(users_url(app, s))
        .bearer_auth(&s.api_key.plaintext)
        .json(&json!({ "email": email }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn list_emails(app: &TestApp, s: &Seeded) -> Vec<String> {
    let r = app.http.get(users_url(app, s)).bearer_auth(&s.api_key.plaintext).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    body["data"].as_array().unwrap().iter().map(|u| u["email"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn db_pool_from_context_platform_tenant_even_with_dedicated_strategy() {
    let app = spawn_app().await;
    let platform = seed_tenant(&app.shared, "authio", TenantKind::Platform, Plan::Enterprise).await;
    app.control.set_db_strategy(platform.tenant.id, "dedicated").await.unwrap();
    let ctx = RequestContext {
        principal: authio_core::authz::Principal::ApiKey {
            tenant_id: platform.tenant.id,
            project_id: platform.project.id,
            tenant_kind: TenantKind::Platform,
            key_id: "test".into(),
        },
        target: authio_core::authz::Target::project(&Scope::project(
            platform.tenant.id,
            platform.project.id,
            TenantKind::Platform,
        ))
        .unwrap(),
    };
    let auth = ctx.authorize(authio_core::authz::Permission::UsersRead).unwrap();
    let pool = db_pool_from_context(&app.router, &auth).await.unwrap();
    let c = pool.get().await.unwrap();
    let (db, port): (String, i32) = {
        let r = c.query_one("SELECT current_database()::text, inet_server_port()", &[]).await.unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(db, app.shared.name);
    assert_eq!(port as u16, clusters().shared.port());
    // And over HTTP the platform tenant's requests keep working, on shared.
    let (status, _) = create_user(&app, &platform, "operator@authio.test").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        admin_query_strings(&app.shared.admin_url, "SELECT email FROM users").await,
        vec!["operator@authio.test"]
    );
    assert_eq!(app.router.dedicated_pools_opened(), 0);
}

#[tokio::test]
async fn users_api_writes_land_on_the_tenants_physical_database() {
    let app = spawn_app().await;
    let shared_t = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let ded_t = seed_tenant(&app.shared, "globex", TenantKind::Customer, Plan::Enterprise).await;
    let ded = make_dedicated(&app.shared, &ded_t.tenant).await;

    assert_eq!(create_user(&app, &shared_t, "Alice@Acme.test").await.0, StatusCode::CREATED);
    let (status, body) = create_user(&app, &ded_t, "hank@globex.test").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["email"], "hank@globex.test");

    assert_eq!(admin_query_strings(&app.shared.admin_url, "SELECT email FROM users").await, vec!["alice@acme.test"]);
    assert_eq!(admin_query_strings(&ded.admin_url, "SELECT email FROM users").await, vec!["hank@globex.test"]);
    assert_eq!(list_emails(&app, &shared_t).await, vec!["alice@acme.test"]);
    assert_eq!(list_emails(&app, &ded_t).await, vec!["hank@globex.test"]);
    // One tenant's key never reaches the other's project.
    let r = app.http.get(users_url(&app, &ded_t)).bearer_auth(&shared_t.api_key.plaintext).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn list_paginates_with_a_cursor() {
    let app = spawn_app().await;
    let t = seed_tenant(&app.shared, "pages", TenantKind::Customer, Plan::Free).await;
    for i in 0..5 {
        assert_eq!(create_user(&app, &t, &format!("u{i}@p.test")).await.0, StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{}?limit=2", users_url(&app, &t));
        if let Some(a) = &after {
            url.push_str(&format!("&after={a}"));
        }
        let body: Value =
            app.http.get(url).bearer_auth(&t.api_key.plaintext).send().await.unwrap().json().await.unwrap();
        seen.extend(body["data"].as_array().unwrap().iter().map(|u| u["email"].as_str().unwrap().to_owned()));
        match body["next_cursor"].as_str() {
            Some(c) => after = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, (0..5).map(|i| format!("u{i}@p.test")).collect::<Vec<_>>());
}

#[tokio::test]
async fn bad_input_gets_a_4xx_with_a_code_and_writes_nothing() {
    let app = spawn_app().await;
    let t = seed_tenant(&app.shared, "strict", TenantKind::Customer, Plan::Free).await;
    let other = seed_tenant(&app.shared, "other", TenantKind::Customer, Plan::Free).await;
    let url = users_url(&app, &t);
    let key = t.api_key.plaintext.clone();
    let post = |body: &'static str, ct: Option<&'static str>, key: Option<String>, url: String| {
        let mut rb = app.http.post(url).body(body);
        if let Some(ct) = ct {
            rb = rb.header("content-type", ct);
        }
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        rb.send()
    };
    let j = Some("application/json");
    let cases: Vec<(&str, reqwest::Response, StatusCode, &str)> = vec![
        (
            "malformed json",
            post("{\"email\": ", j, Some(key.clone()), url.clone()).await.unwrap(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "not json",
            post("email=a@b.test", Some("application/x-www-form-urlencoded"), Some(key.clone()), url.clone())
                .await
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "no content type",
            post("{\"email\":\"a@b.test\"}", None, Some(key.clone()), url.clone()).await.unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "bad email",
            post("{\"email\":\"not-an-email\"}", j, Some(key.clone()), url.clone()).await.unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_email",
        ),
        (
            "wrong type",
            post("{\"email\": 42}", j, Some(key.clone()), url.clone()).await.unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "unknown field",
            post("{\"email\":\"a@b.test\",\"admin\":true}", j, Some(key.clone()), url.clone()).await.unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (
            "unknown project",
            post(
                "{\"email\":\"a@b.test\"}",
                j,
                Some(key.clone()),
                app.url(&format!("/v1/projects/{}/users", uuid::Uuid::now_v7())),
            )
            .await
            .unwrap(),
            StatusCode::NOT_FOUND,
            "project_not_found",
        ),
        (
            "another tenant's project",
            post("{\"email\":\"a@b.test\"}", j, Some(key.clone()), users_url(&app, &other)).await.unwrap(),
            StatusCode::NOT_FOUND,
            "project_not_found",
        ),
        (
            "malformed project id",
            post("{\"email\":\"a@b.test\"}", j, Some(key.clone()), app.url("/v1/projects/nope/users")).await.unwrap(),
            StatusCode::NOT_FOUND,
            "project_not_found",
        ),
        (
            "wrong key",
            post("{\"email\":\"a@b.test\"}", j, Some(format!("{}x", &key[..key.len() - 1])), url.clone())
                .await
                .unwrap(),
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
        ),
        (
            "garbage key",
            post("{\"email\":\"a@b.test\"}", j, Some("letmein".into()), url.clone()).await.unwrap(),
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
        ),
        (
            "no key",
            post("{\"email\":\"a@b.test\"}", j, None, url.clone()).await.unwrap(),
            StatusCode::UNAUTHORIZED,
            "missing_credentials",
        ),
    ];
    for (what, resp, status, code) in cases {
        assert_eq!(resp.status(), status, "{what}");
        let body: Value = resp.json().await.unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"));
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}");
    }
    let r = app.http.get(format!("{url}?limit=0")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = app.http.get(format!("{url}?after=x")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Nothing was written by any of them.
    assert!(admin_query_strings(&app.shared.admin_url, "SELECT email FROM users").await.is_empty());
    // A duplicate is a conflict, and the first write stands alone.
    assert_eq!(create_user(&app, &t, "dup@strict.test").await.0, StatusCode::CREATED);
    let (status, body) = create_user(&app, &t, " DUP@strict.test ").await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("email_taken")));
    assert_eq!(admin_query_strings(&app.shared.admin_url, "SELECT email FROM users").await, vec!["dup@strict.test"]);
    // Unknown routes are JSON 404s too.
    let r = app.http.get(app.url("/v1/nope")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "not_found");
}

#[tokio::test]
async fn a_down_dedicated_database_gives_that_tenant_503_and_no_one_else() {
    let app = spawn_app().await;
    let ok = seed_tenant(&app.shared, "fine", TenantKind::Customer, Plan::Pro).await;
    let down = seed_tenant(&app.shared, "down", TenantKind::Customer, Plan::Enterprise).await;
    // Its database exists and is migrated, but the address the router is given answers nothing.
    let ded = authio_testkit::fresh_dedicated_db().await;
    let dead = format!("postgres://authio_app@127.0.0.1:{}/{}", authio_db::cluster::free_port().unwrap(), ded.name);
    app.control
        .attach_empty_dedicated(&down.tenant, &ded.name, &dead, &ded.admin_url, &test_master_key())
        .await
        .unwrap();
    let r = app.http.get(users_url(&app, &down)).bearer_auth(&down.api_key.plaintext).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "tenant_database_unavailable");
    assert_eq!(create_user(&app, &ok, "still@fine.test").await.0, StatusCode::CREATED);
    assert_eq!(list_emails(&app, &ok).await, vec!["still@fine.test"]);
}

#[tokio::test]
async fn health_readiness_metrics_openapi_and_request_ids() {
    let app = spawn_app().await;
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("x-request-id").is_some_and(|v| !v.is_empty()));
    let r = app.http.get(app.url("/readyz")).header("x-request-id", "abc-123").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-request-id"], "abc-123");

    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("authio_http_requests_total{method=\"GET\",route=\"/readyz\",status=\"200\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("authio_router_listener_connected"));

    let doc: Value = app.http.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/v1/projects/{project_id}/users"]["post"].is_object());
    assert!(doc["paths"]["/v1/projects/{project_id}/users"]["get"].is_object());
    let page = app.http.get(app.url("/docs")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("/v1/projects/{project_id}/users") && page.contains("UserResponse"));
    assert!(!page.contains("<script"), "the reference page loads nothing");

    // Readiness fails when the shared database cannot be reached.
    let dead = format!("postgres://authio_app@127.0.0.1:{}/x", authio_db::cluster::free_port().unwrap());
    let router = Router::new(
        &dead,
        2,
        Some(MasterKey::from_base64(&MasterKey::generate_base64()).unwrap()),
        RouterSettings { listen: false, ..router_settings() },
    )
    .unwrap();
    let auth = authio_server::AuthSettings::new("http://127.0.0.1", authio_testkit::test_master_key());
    let state = authio_server::AppState::new(router, Arc::new(SystemClock), auth).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(authio_server::serve(listener, authio_server::build_app(state), std::future::pending()));
    let r = app.http.get(format!("http://{addr}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "database_unavailable");
}

#[tokio::test]
async fn the_api_works_through_pgbouncer_with_listen_direct() {
    let app = spawn_app_with(AppOptions { via_pgbouncer: true, ..AppOptions::default() }).await;
    let a = seed_tenant(&app.shared, "bounce-a", TenantKind::Customer, Plan::Pro).await;
    let b = seed_tenant(&app.shared, "bounce-b", TenantKind::Customer, Plan::Pro).await;
    for i in 0..10 {
        assert_eq!(create_user(&app, &a, &format!("a{i}@a.test")).await.0, StatusCode::CREATED);
        assert_eq!(create_user(&app, &b, &format!("b{i}@b.test")).await.0, StatusCode::CREATED);
    }
    let la = list_emails(&app, &a).await;
    assert_eq!(la.len(), 10);
    assert!(la.iter().all(|e| e.ends_with("@a.test")));
    assert!(list_emails(&app, &b).await.iter().all(|e| e.ends_with("@b.test")));
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while !app.router.listener_connected() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("LISTEN connected directly");
}

#[tokio::test]
async fn api_keys_are_shown_once_listed_without_secrets_and_revocable() {
    let app = spawn_app().await;
    let t = seed_tenant(&app.shared, "keys", TenantKind::Customer, Plan::Enterprise).await;
    // A dedicated tenant: its keys still live on the shared database (pinned rows).
    let ded = make_dedicated(&app.shared, &t.tenant).await;
    let base = app.url(&format!("/v1/projects/{}/api-keys", t.project.id));

    let r = app.http.post(&base).bearer_auth(&t.api_key.plaintext).json(&json!({"name": "ci"})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("sk_"));
    // The new key works.
    let r = app.http.get(users_url(&app, &t)).bearer_auth(&secret).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Listed without any secret, neither plaintext nor hash.
    let list: Value = app.http.get(&base).bearer_auth(&t.api_key.plaintext).send().await.unwrap().json().await.unwrap();
    let text = list.to_string();
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert!(!text.contains(&secret[20..]) && !text.contains("secret_hash") && !text.contains("\"secret\""), "{text}");

    // Rows are on shared, not on the dedicated database.
    assert_eq!(admin_query_strings(&app.shared.admin_url, "SELECT count(*)::text FROM api_keys").await, vec!["2"]);
    let on_ded = admin_query_strings(&ded.admin_url, "SELECT count(*)::text FROM api_keys").await;
    assert_eq!(on_ded, vec!["0"]);

    // Revoke: the key stops working at once; revoking again is fine; unknown ids are 404.
    let id = created["id"].as_str().unwrap();
    let r = app.http.delete(format!("{base}/{id}")).bearer_auth(&t.api_key.plaintext).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.json::<Value>().await.unwrap()["revoked_at"].is_string());
    let r = app.http.get(users_url(&app, &t)).bearer_auth(&secret).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app.http.delete(format!("{base}/{id}")).bearer_auth(&t.api_key.plaintext).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for bad in [uuid::Uuid::now_v7().to_string(), "nope".to_string()] {
        let r = app.http.delete(format!("{base}/{bad}")).bearer_auth(&t.api_key.plaintext).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "api_key_not_found");
    }
    // Another tenant cannot revoke this tenant's key, even knowing its id.
    let other = seed_tenant(&app.shared, "other-keys", TenantKind::Customer, Plan::Free).await;
    let r = app
        .http
        .delete(app.url(&format!("/v1/projects/{}/api-keys/{}", other.project.id, t.api_key.id)))
        .bearer_auth(&other.api_key.plaintext)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(list_emails(&app, &t).await.len(), 0, "the original key still works");
    // Bad names are refused and write nothing.
    let r = app.http.post(&base).bearer_auth(&t.api_key.plaintext).json(&json!({"name": "  "})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "invalid_name");
    assert_eq!(
        admin_query_strings(
            &app.shared.admin_url,
            "SELECT count(*)::text FROM api_keys WHERE tenant_id IN (SELECT id FROM tenants WHERE slug = 'keys')"
        )
        .await,
        vec!["2"]
    );
}
