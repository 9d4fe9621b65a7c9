//! The web console in a real browser: headless Chromium (Debian's `chromium`) driven by
//! `playwright-core` (tests/browser/console.mjs; `scripts/test` installs both). A customer
//! admin creates an M2M client and asks for a dedicated database, an operator approves it and
//! moves the tenant online, the customer's billing says "Dedicated"; the tenant's API is kept
//! busy the whole time and must never fail. Screenshots land in
//! `$CARGO_TARGET_TMPDIR/console-screenshots`.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use authio_core::console::MemberRole;
use authio_core::domain::{Email, Plan, Slug};
use authio_db::TenantKind;
use authio_testkit::{admin_query_strings, clusters, seed_tenant, spawn_app, test_master_key, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

const PASSWORD: &str = "console-test-password-1";

async fn platform_user(app: &TestApp, project: uuid::Uuid, email: &str) {
    app.identity.create_user_with_password(project, email, PASSWORD).await.unwrap();
}

#[tokio::test]
async fn the_console_in_a_real_browser_from_request_to_dedicated_while_the_api_keeps_working() {
    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci --prefix {}` (scripts/test does)",
        browser_dir.display()
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(std::path::Path::new(&chromium).exists(), "{chromium} is missing: apt-get install chromium (scripts/test does)");

    let app = spawn_app().await;
    let platform = seed_tenant(&app.shared, "authio", TenantKind::Platform, Plan::Enterprise).await;
    let acme = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Enterprise).await;
    let globex = seed_tenant(&app.shared, "globex", TenantKind::Customer, Plan::Pro).await;
    platform_user(&app, platform.project.id, "operator@authio.test").await;
    app.control.grant_operator(&Email::parse("operator@authio.test").unwrap()).await.unwrap();
    for (email, role) in [("admin@acme.test", MemberRole::Admin), ("viewer@acme.test", MemberRole::Viewer)] {
        platform_user(&app, platform.project.id, email).await;
        app.control.add_member("acme", &Email::parse(email).unwrap(), role).await.unwrap();
    }
    app.control
        .add_dedicated_host(
            &Slug::parse("test-dedicated").unwrap(),
            &clusters().dedicated.admin_url("postgres"),
            Some("unused"),
            &test_master_key(),
        )
        .await
        .unwrap();
    let users = app.url(&format!("/v1/projects/{}/users", acme.project.id));
    let r = app
        .http
        .post(&users)
        .bearer_auth(&acme.api_key.plaintext)
        .json(&json!({"email": "enduser@acme.test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // The tenant's API, busy throughout: every request must succeed (a move pauses writes; it
    // must not fail them).
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, http, users, key) = (stop.clone(), app.http.clone(), users.clone(), acme.api_key.plaintext.clone());
        tokio::spawn(async move {
            let (mut ok, mut failures) = (0u32, Vec::new());
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let w = http.post(&users).bearer_auth(&key).json(&json!({"email": format!("load{i}@acme.test")})).send().await;
                let r = http.get(&users).bearer_auth(&key).send().await;
                for (what, res) in [("create", w), ("list", r)] {
                    match res {
                        Ok(r) if r.status().is_success() => ok += 1,
                        Ok(r) => failures.push(format!("{what} {i}: {} {}", r.status(), r.text().await.unwrap_or_default())),
                        Err(e) => failures.push(format!("{what} {i}: {e}")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failures, i)
        })
    };

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let cfg = json!({
        "base": app.base_url,
        "shots": shots,
        "operator": {"email": "operator@authio.test", "password": PASSWORD},
        "admin": {"email": "admin@acme.test", "password": PASSWORD},
        "viewer": {"email": "viewer@acme.test", "password": PASSWORD},
        "acme": {"slug": "acme", "project": acme.project.id, "user": "enduser@acme.test"},
        "globex": {"slug": "globex", "project": globex.project.id},
    });
    let run = tokio::process::Command::new("node")
        .arg("console.mjs")
        .current_dir(&browser_dir)
        .env("AUTHIO_CONSOLE_TEST", cfg.to_string())
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run).await.expect("the browser run finished").unwrap();
    stop.store(true, Ordering::Relaxed);
    let (ok, failures, rounds) = load.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the browser run failed (screenshots in {}):\n{stderr}\n{stdout}", shots.display());
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    eprintln!("console test: {report}\nscreenshots in {}", shots.display());

    assert!(failures.is_empty(), "the tenant's API failed during the console run: {failures:?}");
    assert!(ok >= 20 && rounds >= 10, "the API was exercised throughout ({ok} calls)");
    // While provisioned, before the move, the customer saw it as provisioning.
    assert_eq!(report["customer_saw_while_provisioned"], "Provisioning");
    // The screenshots of the main pages exist.
    for name in ["dashboard-m2m-secret-once", "billing-requested", "operator-requests", "operator-move-done", "billing-dedicated"] {
        let f = shots.join(format!("{name}.png"));
        assert!(std::fs::metadata(&f).map(|m| m.len() > 1000).unwrap_or(false), "{} missing", f.display());
    }

    // The tenant lives on its dedicated database now, and every row written during the run
    // (through the API, while it moved) is there.
    let t = app.control.tenant_by_slug("acme").await.unwrap().unwrap();
    assert_eq!(t.db_strategy, "dedicated");
    let req = app.control.latest_request(t.id).await.unwrap().unwrap();
    assert_eq!((req.direction.as_str(), req.state.as_str()), ("to_dedicated", "done"));
    let ded = clusters().dedicated.admin_url(&format!("authio_t_{}", t.id.simple()));
    let on_dedicated = admin_query_strings(&ded, "SELECT count(*)::text FROM users WHERE email LIKE 'load%'").await;
    assert_eq!(on_dedicated, vec![(rounds).to_string()], "every load write is on the new home");

    // The secret the browser was shown is real: the M2M client gets a token (after the move).
    let r = app
        .http
        .post(app.url("/v1/auth/token"))
        .basic_auth(report["client_id"].as_str().unwrap(), Some(report["client_secret"].as_str().unwrap()))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap_or_default());
    // The viewer made nothing; the refused CSRF-less post changed nothing.
    let clients: Value = app
        .http
        .get(app.url(&format!("/v1/projects/{}/m2m-clients", acme.project.id)))
        .bearer_auth(&acme.api_key.plaintext)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = clients["data"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["billing worker"]);
    // The request's story is in the tenant's audit log, with who did what.
    for (action, who) in [
        ("dedicated_db.requested", "admin@acme.test (dashboard)"),
        ("dedicated_db.approved", "operator@authio.test"),
        ("dedicated_db.provisioned", "console"),
        ("dedicated_db.move_started", "operator@authio.test"),
        ("dedicated_db.done", "console"),
        ("m2m_client.created", "admin@acme.test (dashboard)"),
    ] {
        let events: Value = app
            .http
            .get(app.url(&format!("/v1/projects/{}/audit-events?action={action}", acme.project.id)))
            .bearer_auth(&acme.api_key.plaintext)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let by: Vec<&str> = events["data"].as_array().unwrap().iter().map(|e| e["actor"]["name"].as_str().unwrap_or("")).collect();
        assert_eq!(by, vec![who], "{action}");
    }
}
