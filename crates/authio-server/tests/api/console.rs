//! The web console in a real browser: headless Chromium (Debian's `chromium`) driven by
//! `playwright-core` (tests/browser/console.mjs; `scripts/test` installs both). A customer
//! admin creates an M2M client and asks for a dedicated database, an operator approves it and
//! moves the tenant online, the customer's billing says "Dedicated"; the tenant's API is kept
//! busy the whole time and must never fail. Screenshots land in
//! `$CARGO_TARGET_TMPDIR/console-screenshots`.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use authio_core::tenancy::console::{DedicatedState, MemberRole};
use authio_core::types::{Email, Plan, Slug};
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
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} is missing: apt-get install chromium (scripts/test does)"
    );

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
    // An end user with a live session (signed up through the API).
    let r = app
        .http
        .post(app.url("/v1/auth/signup"))
        .json(&json!({"project_id": acme.project.id, "email": "enduser@acme.test", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let end_user: Value = r.json().await.unwrap();
    // A default role, so the dashboard's invitation form can invite without naming one.
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{}/roles", acme.project.id)))
        .bearer_auth(&acme.api_key.plaintext)
        .json(&json!({"slug": "member", "name": "Member", "is_default": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // An endpoint the delivery loop gave up on (as `webhooks.rs` shows it doing): the dashboard
    // points it out.
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{}/webhooks", acme.project.id)))
        .bearer_auth(&acme.api_key.plaintext)
        .json(&json!({"url": "https://old-hooks.acme.test/in"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    admin_query_strings(
        &app.shared.admin_url,
        "UPDATE webhook_endpoints SET enabled = false, disabled_reason = 'failing for 3 days',
                failing_since = now() - interval '3 days', last_error = 'status 503'
          WHERE url = 'https://old-hooks.acme.test/in'",
    )
    .await;
    // An organization with its own single sign-on connection (made here without discovery:
    // the dashboard lists it and the organization is made to require it).
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{}/organizations", acme.project.id)))
        .bearer_auth(&acme.api_key.plaintext)
        .json(&json!({"name": "Globodyne", "slug": "globodyne"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let sso_org = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    admin_query_strings(
        &app.shared.admin_url,
        &format!(
            "INSERT INTO oauth_connections (tenant_id, project_id, id, slug, kind, display_name, client_id,
                 client_secret_enc, issuer, authorization_endpoint, token_endpoint, jwks_uri, scopes, created_at,
                 organization_id, group_roles)
             VALUES ('{}', '{}', gen_random_uuid(), 'globodyne-sso', 'oidc', 'Globodyne IdP', 'client', 'unused',
                 'https://idp.globodyne.test', 'https://idp.globodyne.test/auth', 'https://idp.globodyne.test/token',
                 'https://idp.globodyne.test/jwks', ARRAY['openid'], now(), '{sso_org}', '{{\"admins\": \"member\"}}')",
            acme.tenant.id, acme.project.id
        ),
    )
    .await;
    // Globodyne's SAML identity provider, as its metadata describes it (added from the dashboard).
    let (_, idp_cert) = authio_core::federation::saml::new_sp_keypair("globodyne idp", chrono::Utc::now()).unwrap();
    let saml_metadata = format!(
        r#"<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" xmlns:ds="http://www.w3.org/2000/09/xmldsig#" entityID="https://idp.globodyne.test/saml"><md:IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol"><md:KeyDescriptor use="signing"><ds:KeyInfo><ds:X509Data><ds:X509Certificate>{}</ds:X509Certificate></ds:X509Data></ds:KeyInfo></md:KeyDescriptor><md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="https://idp.globodyne.test/saml/sso"/></md:IDPSSODescriptor></md:EntityDescriptor>"#,
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, idp_cert)
    );
    // Keys old enough to rotate (verifiers have had the next key for a while).
    admin_query_strings(
        &app.shared.admin_url,
        &format!(
            "UPDATE signing_keys SET created_at = now() - interval '1 day' WHERE project_id = '{}'",
            acme.project.id
        ),
    )
    .await;
    // Enough rows that the move's copy takes a moment to watch.
    admin_query_strings(
        &app.shared.admin_url,
        &format!(
            "INSERT INTO users (tenant_id, project_id, id, email, created_at, updated_at)
             SELECT '{}', '{}', gen_random_uuid(), 'bulk' || g || '@acme.test', now(), now()
             FROM generate_series(1, 300000) g",
            acme.tenant.id, acme.project.id
        ),
    )
    .await;

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
                let w = http
                    .post(&users)
                    .bearer_auth(&key)
                    .json(&json!({"email": format!("load{i}@acme.test")}))
                    .send()
                    .await;
                let r = http.get(&users).bearer_auth(&key).send().await;
                for (what, res) in [("create", w), ("list", r)] {
                    match res {
                        Ok(r) if r.status().is_success() => ok += 1,
                        Ok(r) => {
                            failures.push(format!("{what} {i}: {} {}", r.status(), r.text().await.unwrap_or_default()))
                        }
                        Err(e) => failures.push(format!("{what} {i}: {e}")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failures, i)
        })
    };

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let cfg = json!({
        "base": app.base_url,
        "shots": shots,
        "operator": {"email": "operator@authio.test", "password": PASSWORD},
        "admin": {"email": "admin@acme.test", "password": PASSWORD},
        "viewer": {"email": "viewer@acme.test", "password": PASSWORD},
        "acme": {"slug": "acme", "project": acme.project.id, "user": "enduser@acme.test", "sso_org": sso_org,
                 "saml_metadata": saml_metadata},
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
    // The dashboard's invitation went out over SMTP, with its link to the hosted page.
    assert_eq!(report["invited"], true, "{stdout}");
    let mail =
        app.mail.wait_for("invitee@acme.test", 0, std::time::Duration::from_secs(10)).await.expect("the invitation");
    assert!(mail.text().contains(&format!("/p/{}/invitations/accept?token=inv_", acme.project.id)), "{}", mail.text());
    assert_eq!(report["ok"], true, "{report}");
    eprintln!("console test: {report}\nscreenshots in {}", shots.display());

    assert!(failures.is_empty(), "the tenant's API failed during the console run: {failures:?}");
    assert!(ok >= 20 && rounds >= 10, "the API was exercised throughout ({ok} calls)");
    // While provisioned, before the move, the customer saw it as provisioning.
    assert_eq!(report["customer_saw_while_provisioned"], "Provisioning");
    // The screenshots of the main pages exist.
    for name in [
        "dashboard-m2m-secret-once",
        "billing-requested",
        "operator-requests",
        "operator-move-done",
        "billing-dedicated",
    ] {
        let f = shots.join(format!("{name}.png"));
        assert!(std::fs::metadata(&f).map(|m| m.len() > 1000).unwrap_or(false), "{} missing", f.display());
    }

    // The tenant lives on its dedicated database now, and every row written during the run
    // (through the API, while it moved) is there.
    let t = app.control.tenant_by_slug("acme").await.unwrap().unwrap();
    assert_eq!(t.db_strategy, authio_db::DbStrategy::Dedicated);
    let req = app.control.latest_request(t.id).await.unwrap().unwrap();
    assert_eq!((req.direction.as_str(), req.state.as_str()), ("to_dedicated", "done"));
    let ded = clusters().dedicated.admin_url(&format!("authio_t_{}", t.id.simple()));
    let on_dedicated = admin_query_strings(&ded, "SELECT count(*)::text FROM users WHERE email LIKE 'load%'").await;
    assert_eq!(on_dedicated, vec![(rounds).to_string()], "every load write is on the new home");

    // The organization the dashboard made require single sign-on does, at the new home.
    assert_eq!(report["sso_required"], true, "{report}");
    let required =
        admin_query_strings(&ded, "SELECT sso_required::text FROM organizations WHERE slug = 'globodyne'").await;
    assert_eq!(required, vec!["true"]);
    // The webhook secret the browser was shown last is the one that signs (sealed at the new home).
    let sealed =
        admin_query_strings(&ded, "SELECT secret_enc FROM webhook_endpoints WHERE url = 'https://hooks.acme.test/in'")
            .await;
    assert_eq!(sealed.len(), 1);
    assert_eq!(test_master_key().decrypt(&sealed[0]).unwrap(), report["webhook_secret"].as_str().unwrap());
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
    // What the admin did in the dashboard took effect: the revoked session's refresh token
    // is dead, the disabled user cannot sign in, the deleted one is gone, the settings stand.
    let r = app
        .http
        .post(app.url("/v1/auth/token"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", end_user["refresh_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "the revoked session refreshes no more: {}", r.status());
    let r = app
        .http
        .post(app.url("/v1/auth/signin"))
        .json(&json!({"project_id": acme.project.id, "email": "enduser@acme.test", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "the disabled user cannot sign in");
    assert_eq!(
        admin_query_strings(
            &ded,
            "SELECT count(*)::text FROM users WHERE email IN ('bulk7@acme.test', 'bulk8@acme.test')"
        )
        .await,
        vec!["1"]
    );
    let presentation: Value =
        crate::get_json(&app, &format!("/v1/projects/{}/presentation", acme.project.id), &acme.api_key.plaintext).await;
    assert!(!presentation["signin_methods"].as_array().unwrap().iter().any(|m| m == "magic_link"), "{presentation}");
    let uris: Value =
        crate::get_json(&app, &format!("/v1/projects/{}/redirect-uris", acme.project.id), &acme.api_key.plaintext)
            .await;
    assert!(
        uris.to_string().contains("https://app.acme.test/callback") && !uris.to_string().contains("http://app."),
        "{uris}"
    );
    // The rotation took: the JWKS publishes the new current key, and tokens are signed with it.
    let current = admin_query_strings(
        &app.shared.admin_url,
        &format!("SELECT kid FROM signing_keys WHERE project_id = '{}' AND state = 'current'", acme.project.id),
    )
    .await;
    assert_eq!(current, vec![report["rotated_to"].as_str().unwrap().to_owned()]);
    // The viewer made nothing; the refused CSRF-less post changed nothing.
    let clients: Value =
        crate::get_json(&app, &format!("/v1/projects/{}/m2m-clients", acme.project.id), &acme.api_key.plaintext).await;
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
        let events: Value = crate::get_json(
            &app,
            &format!("/v1/projects/{}/audit-events?action={action}", acme.project.id),
            &acme.api_key.plaintext,
        )
        .await;
        let by: Vec<&str> =
            events["data"].as_array().unwrap().iter().map(|e| e["actor"]["name"].as_str().unwrap_or("")).collect();
        assert_eq!(by, vec![who], "{action}");
    }
}

fn member_actor() -> authio_core::audit::Actor {
    authio_core::audit::Actor {
        kind: authio_core::audit::ActorKind::User,
        id: None,
        name: Some("owner@test (dashboard)".into()),
    }
}

#[tokio::test]
async fn dedicated_requests_withdraw_decline_and_refuse_what_the_plan_or_state_forbids() {
    let app = spawn_app().await;
    let ent = seed_tenant(&app.shared, "ent", TenantKind::Customer, Plan::Enterprise).await;
    let pro = seed_tenant(&app.shared, "pro", TenantKind::Customer, Plan::Pro).await;
    let cp = &app.control;
    // Not on Enterprise: refused, nothing filed.
    let e = cp.toggle_dedicated(pro.tenant.id, true, member_actor()).await.unwrap_err();
    assert!(matches!(e, authio_core::CoreError::Invalid(_)), "{e:?}");
    assert!(cp.latest_request(pro.tenant.id).await.unwrap().is_none());
    // Filed once (a second click returns the same request), withdrawn by turning it off.
    let r = cp.toggle_dedicated(ent.tenant.id, true, member_actor()).await.unwrap().unwrap();
    let again = cp.toggle_dedicated(ent.tenant.id, true, member_actor()).await.unwrap().unwrap();
    assert_eq!((r.id, r.state.as_str()), (again.id, "requested"));
    let w = cp.toggle_dedicated(ent.tenant.id, false, member_actor()).await.unwrap().unwrap();
    assert_eq!((w.id, w.state.as_str()), (r.id, "withdrawn"));
    // Off on a shared tenant with nothing open: nothing to do.
    assert!(cp.toggle_dedicated(ent.tenant.id, false, member_actor()).await.unwrap().is_none());
    // Declined requests cannot be approved afterwards; a fresh one can be filed.
    let r2 = cp.toggle_dedicated(ent.tenant.id, true, member_actor()).await.unwrap().unwrap();
    assert_ne!(r2.id, r.id);
    let op =
        authio_core::audit::Actor { kind: authio_core::audit::ActorKind::Operator, id: None, name: Some("op".into()) };
    assert_eq!(cp.decline_request(r2.id, op.clone()).await.unwrap().state, "declined");
    assert!(matches!(cp.approve_request(r2.id, op.clone()).await, Err(authio_core::CoreError::Conflict(_))));
    assert!(matches!(cp.begin_request_move(r2.id, op.clone()).await, Err(authio_core::CoreError::Conflict(_))));
    // An approved request cannot be withdrawn from the billing page any more.
    let r3 = cp.toggle_dedicated(ent.tenant.id, true, member_actor()).await.unwrap().unwrap();
    assert_eq!(cp.approve_request(r3.id, op.clone()).await.unwrap().state, "provisioning");
    assert!(matches!(
        cp.toggle_dedicated(ent.tenant.id, false, member_actor()).await,
        Err(authio_core::CoreError::Conflict(_))
    ));
    // One node at a time works on a request: while another holds it, this one is refused and
    // changes nothing.
    let other_node = authio_db::pool::connect(&app.shared.admin_url, "other-node").await.unwrap();
    other_node
        .execute("SELECT pg_advisory_lock(hashtextextended('authio_db_request:' || $1, 0))", &[&r3.id.to_string()])
        .await
        .unwrap();
    let busy = cp.provision_for_request(r3.id, "no-such-host", &test_master_key()).await;
    assert!(matches!(busy, Err(authio_core::CoreError::Conflict(_))), "{busy:?}");
    assert_eq!(cp.request(r3.id).await.unwrap().state, "provisioning");
    // While it is being provisioned the tenant cannot leave Enterprise (it would land on a
    // dedicated database on a plan without one).
    assert!(matches!(
        cp.set_plan(ent.tenant.id, Plan::Pro, op.clone()).await,
        Err(authio_core::CoreError::Conflict(_))
    ));
    // A provisioning whose node died can be approved again (a retry).
    assert_eq!(cp.approve_request(r3.id, op.clone()).await.unwrap().state, "provisioning");
    other_node
        .execute("SELECT pg_advisory_unlock(hashtextextended('authio_db_request:' || $1, 0))", &[&r3.id.to_string()])
        .await
        .unwrap();
    // A failed provisioning (no such host) leaves the request failed with its reason.
    let failed = cp.provision_for_request(r3.id, "no-such-host", &test_master_key()).await.unwrap();
    assert_eq!(failed.state, "failed");
    assert!(failed.error.as_deref().is_some_and(|e| e.contains("host")), "{failed:?}");
    // The tenant's log (which customers export) names the step, not the operator's detail.
    let meta = admin_query_strings(
        &app.shared.admin_url,
        &format!(
            "SELECT metadata::text FROM audit_outbox WHERE tenant_id = '{}' AND action = 'dedicated_db.failed'
             UNION ALL SELECT metadata::text FROM audit_events WHERE tenant_id = '{}' AND action = 'dedicated_db.failed'",
            ent.tenant.id, ent.tenant.id
        ),
    )
    .await;
    assert!(
        !meta.is_empty() && meta.iter().all(|m| m.contains("provisioning") && !m.contains("not found")),
        "{meta:?}"
    );
    // Off on a dedicated tenant files a move back; on again withdraws it before it starts.
    let ded = seed_tenant(&app.shared, "ded", TenantKind::Customer, Plan::Enterprise).await;
    authio_testkit::make_dedicated(&app.shared, &ded.tenant).await;
    let back = cp.toggle_dedicated(ded.tenant.id, false, member_actor()).await.unwrap().unwrap();
    assert_eq!((back.direction.as_str(), back.state.as_str()), ("to_shared", "requested"));
    let t = cp.tenant(ded.tenant.id).await.unwrap().unwrap();
    assert_eq!(DedicatedState::of(&t, Some(&back)), DedicatedState::MoveBackRequested);
    let undo = cp.toggle_dedicated(ded.tenant.id, true, member_actor()).await.unwrap().unwrap();
    assert_eq!((undo.id, undo.state.as_str()), (back.id, "withdrawn"));
    assert_eq!(DedicatedState::of(&t, Some(&undo)), DedicatedState::Dedicated);
    // Approved, a move back needs nothing provisioned: it is ready to move.
    let back = cp.toggle_dedicated(ded.tenant.id, false, member_actor()).await.unwrap().unwrap();
    assert_eq!(cp.approve_request(back.id, op.clone()).await.unwrap().state, "provisioned");
    // Plans: an operator changes them; a dedicated tenant cannot leave Enterprise.
    assert_eq!(cp.set_plan(pro.tenant.id, Plan::Free, op.clone()).await.unwrap().plan, Plan::Free);
    authio_testkit::make_dedicated(&app.shared, &ent.tenant).await;
    assert!(matches!(cp.set_plan(ent.tenant.id, Plan::Pro, op).await, Err(authio_core::CoreError::Conflict(_))));
    // Every step is in the tenant's audit log.
    let actions = admin_query_strings(
        &app.shared.admin_url,
        &format!(
            "SELECT action FROM audit_outbox WHERE tenant_id = '{}' AND action LIKE 'dedicated_db.%' ORDER BY occurred_at",
            ent.tenant.id
        ),
    )
    .await;
    let in_log = admin_query_strings(
        &app.shared.admin_url,
        &format!(
            "SELECT action FROM audit_events WHERE tenant_id = '{}' AND action LIKE 'dedicated_db.%' ORDER BY seq",
            ent.tenant.id
        ),
    )
    .await;
    let all: Vec<String> = in_log.into_iter().chain(actions).collect();
    for a in [
        "dedicated_db.requested",
        "dedicated_db.request_withdrawn",
        "dedicated_db.declined",
        "dedicated_db.approved",
        "dedicated_db.failed",
    ] {
        assert!(all.iter().any(|x| x == a), "{a} missing from {all:?}");
    }
}

#[tokio::test]
async fn console_sign_in_refuses_foreign_callbacks_and_unknown_sessions() {
    let app = spawn_app().await;
    seed_tenant(&app.shared, "authio", TenantKind::Platform, Plan::Enterprise).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    // Anonymous: every console page sends the browser to sign in, keeping where it was going.
    for path in ["/console", "/console/tenants", "/dashboard/acme", "/billing"] {
        let r = http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path}");
        assert!(r.headers()["location"].to_str().unwrap().starts_with("/console/login?next="), "{path}");
    }
    // A forged session cookie is no session.
    let r = http.get(app.url("/console/tenants")).header("cookie", "authio_console=AAAA.BBBB").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    // The login redirects to the platform's hosted page with PKCE S256 and a browser-bound state.
    let r = http.get(app.url("/console/login?next=//evil.example")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let to = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(to.contains("/signin?") && to.contains("code_challenge_method=S256"), "{to}");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"), "{cookie}");
    // A callback without the browser's login cookie, or with another state, is refused.
    let r = http.get(app.url("/console/callback?code=ac_x&state=y")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let login = cookie.split(';').next().unwrap();
    let r = http.get(app.url("/console/callback?code=ac_x&state=other")).header("cookie", login).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // The right state with a made-up code: the code exchange refuses it.
    let state = login.split_once('=').unwrap().1.split('.').next().unwrap();
    let r = http
        .get(app.url(&format!("/console/callback?code=ac_madeup&state={state}")))
        .header("cookie", login)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    assert!(r.headers().get("set-cookie").is_none_or(|c| !c.to_str().unwrap().starts_with("authio_console=")));

    // A real code of a customer project, made for this very callback and this browser's
    // challenge: refused before it starts any session.
    let acme = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let callback = app.url("/console/callback");
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{}/redirect-uris", acme.project.id)))
        .bearer_auth(&acme.api_key.plaintext)
        .json(&serde_json::json!({"uri": callback}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app
        .http
        .post(app.url("/v1/auth/signup"))
        .json(&serde_json::json!({"project_id": acme.project.id, "email": "mallory@example.com", "password": "a-long-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let verifier = login.split_once('=').unwrap().1.split('.').nth(1).unwrap();
    let challenge = authio_core::crypto::pkce::s256(verifier);
    let page = app.url(&format!(
        "/p/{}/signin?redirect_uri={}&state={state}&code_challenge={challenge}&code_challenge_method=S256",
        acme.project.id,
        url::form_urlencoded::byte_serialize(callback.as_bytes()).collect::<String>()
    ));
    let r = http.get(&page).send().await.unwrap();
    let csrf_cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_owned())
        .find(|c| c.starts_with("authio_csrf="))
        .unwrap();
    let csrf = csrf_cookie.split_once('=').unwrap().1.to_owned();
    let r = http
        .post(app.url(&format!("/p/{}/signin", acme.project.id)))
        .header("cookie", &csrf_cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("redirect_uri", callback.as_str()),
            ("state", state),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("email", "mallory@example.com"),
            ("password", "a-long-password-1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let to_console = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(to_console.starts_with(&format!("{callback}?code=sc_")), "{to_console}");
    let sessions = || admin_query_strings(&app.shared.admin_url, "SELECT count(*) FROM sessions");
    let before = sessions().await;
    let r = http.get(&to_console).header("cookie", login).send().await.unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    assert!(r.headers().get("set-cookie").is_none_or(|c| !c.to_str().unwrap().starts_with("authio_console=")));
    assert_eq!(sessions().await, before, "no session started");
}

#[tokio::test]
async fn members_are_added_with_a_role_changed_and_removed() {
    let app = spawn_app().await;
    let platform = seed_tenant(&app.shared, "authio", TenantKind::Platform, Plan::Enterprise).await;
    let acme = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Free).await;
    let email = Email::parse("new.person@acme.test").unwrap();
    // A new address becomes a password-less platform identity, member as viewer.
    let user = app.control.add_member("acme", &email, MemberRole::Viewer).await.unwrap();
    let owner_of = admin_query_strings(
        &app.shared.admin_url,
        &format!("SELECT project_id::text || ' ' || (password_hash IS NULL)::text FROM users WHERE id = '{user}'"),
    )
    .await;
    assert_eq!(owner_of, vec![format!("{} true", platform.project.id)]);
    let m = app.control.memberships(user).await.unwrap();
    assert_eq!((m.len(), m[0].tenant.id, m[0].role), (1, acme.tenant.id, MemberRole::Viewer));
    // Run again: the role changes, no second identity.
    assert_eq!(app.control.add_member("acme", &email, MemberRole::Owner).await.unwrap(), user);
    assert_eq!(app.control.memberships(user).await.unwrap()[0].role, MemberRole::Owner);
    assert_eq!(
        app.control.members(acme.tenant.id).await.unwrap(),
        vec![("new.person@acme.test".to_owned(), MemberRole::Owner)]
    );
    // Not for the platform tenant itself, nor unknown tenants.
    assert!(app.control.add_member("authio", &email, MemberRole::Admin).await.is_err());
    assert!(matches!(
        app.control.add_member("nope", &email, MemberRole::Admin).await,
        Err(authio_core::CoreError::NotFound(_))
    ));
    app.control.remove_member("acme", &email).await.unwrap();
    assert!(app.control.memberships(user).await.unwrap().is_empty());
    assert!(matches!(app.control.remove_member("acme", &email).await, Err(authio_core::CoreError::NotFound(_))));
}
