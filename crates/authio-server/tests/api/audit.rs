//! The audit log over real HTTP and real clusters: one event per act, in the act's
//! transaction; append-only in the database; tampering caught by verification; isolation.
use authio_core::types::Plan;
use authio_db::TenantKind;
use authio_testkit::{admin_query_strings, make_dedicated, seed_tenant, spawn_app, test_master_key, Seeded, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery";

async fn post_json(app: &TestApp, path: &str, body: Value) -> (StatusCode, Value) {
    let r = app.http.post(app.url(path)).header("x-request-id", "req-audit-1").json(&body).send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

async fn events(app: &TestApp, s: &Seeded, query: &str) -> Value {
    let r = app
        .http
        .get(app.url(&format!("/v1/projects/{}/audit-events{query}", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// Wait until the tenant's events recorded through the outbox (the seeded API key's, an
/// operator's acts) have reached its home log, so the order of what follows is fixed.
async fn settle(app: &TestApp, s: &Seeded) {
    for _ in 0..100 {
        if app.control.pending_audit_events(s.tenant.id).await.unwrap() == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the outbox did not drain");
}

fn actions(page: &Value) -> Vec<String> {
    page["data"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn every_act_writes_exactly_one_event_and_a_failed_change_writes_none() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "audited", TenantKind::Customer, Plan::Enterprise).await;
    settle(&app, &s).await;
    let pid = s.project.id;
    let creds = |email: &str, pw: &str| json!({"project_id": pid, "email": email, "password": pw});
    let (st, up) = post_json(&app, "/v1/auth/signup", creds("ann@example.com", PASSWORD)).await;
    assert_eq!(st, StatusCode::CREATED);
    // A sign-up that fails (email taken) leaves no event.
    let (st, _) = post_json(&app, "/v1/auth/signup", creds("ann@example.com", PASSWORD)).await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, signed_in) = post_json(&app, "/v1/auth/signin", creds("ann@example.com", PASSWORD)).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = post_json(&app, "/v1/auth/signin", creds("ann@example.com", "wrong password")).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = post_json(&app, "/v1/auth/signin", creds("nobody@example.com", "wrong password")).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let refresh = app
        .http
        .post(app.url("/v1/auth/token"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", up["refresh_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(refresh.status(), StatusCode::OK);
    let sid = signed_in["session_id"].as_str().unwrap();
    let r = app
        .http
        .delete(app.url(&format!("/v1/projects/{pid}/sessions/{sid}")))
        .bearer_auth(&s.api_key.plaintext)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let access = refresh.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        // Revoking twice records once: the second changes nothing.
        let r = app.http.post(app.url("/v1/auth/revoke")).form(&[("token", access.as_str())]).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }

    let page = events(&app, &s, "").await;
    assert_eq!(
        actions(&page),
        [
            "token.revoked",
            "session.revoked",
            "token.refreshed",
            "user.sign_in_failed",
            "user.sign_in_failed",
            "user.signed_in",
            "user.signed_up",
            // The operator's act that made the project's API key (seeding).
            "api_key.created"
        ]
    );
    let all = page["data"].as_array().unwrap();
    let seqs: Vec<i64> = all.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [8, 7, 6, 5, 4, 3, 2, 1], "one chain, no gaps: the failed sign-up left nothing");
    let user_id = up["user"]["id"].as_str().unwrap();
    let signed_up = &all[6];
    assert_eq!(signed_up["actor"], json!({"type": "user", "id": user_id, "name": "ann@example.com"}));
    assert_eq!(signed_up["target"], json!({"type": "user", "id": user_id}));
    assert_eq!(signed_up["context"]["request_id"], "req-audit-1");
    assert_eq!(signed_up["context"]["ip"], "127.0.0.1");
    assert_eq!(all[1]["actor"], json!({"type": "api_key", "id": s.api_key.key_id, "name": null}));
    assert_eq!(all[3]["target"], json!({"type": "email", "id": "nobody@example.com"}));

    // Filters and cursor pagination.
    let failed = events(&app, &s, "?action=user.sign_in_failed").await;
    assert_eq!(actions(&failed).len(), 2);
    let by_target = events(&app, &s, "?target_id=nobody@example.com").await;
    assert_eq!(actions(&by_target), ["user.sign_in_failed"]);
    let mut seen = Vec::new();
    let mut query = "?limit=3".to_owned();
    loop {
        let p = events(&app, &s, &query).await;
        seen.extend(actions(&p));
        match p["next_cursor"].as_i64() {
            Some(c) => query = format!("?limit=3&before={c}"),
            None => break,
        }
    }
    assert_eq!(seen, actions(&page));
    let r = app
        .http
        .get(app.url(&format!("/v1/projects/{pid}/audit-events?limit=0")))
        .bearer_auth(&s.api_key.plaintext)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = app
        .http
        .get(app.url(&format!("/v1/projects/{pid}/audit-events?action=%00")))
        .bearer_auth(&s.api_key.plaintext)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "a NUL in a filter is the caller's error, not a 500");

    // Export, streamed: NDJSON and CSV hold the same events as the list.
    let export = |format: &str| {
        app.http
            .get(app.url(&format!("/v1/projects/{pid}/audit-events/export?format={format}")))
            .bearer_auth(&s.api_key.plaintext)
            .send()
    };
    let r = export("ndjson").await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let text = r.text().await.unwrap();
    let exported: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(exported, actions(&page));
    let r = export("csv").await.unwrap();
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let csv = r.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("id,seq,occurred_at,action,"), "{}", lines[0]);
    assert_eq!(lines.len(), 9, "{csv}");
    assert!(lines[7].contains(",user.signed_up,"), "{}", lines[7]);
    assert_eq!(export("xml").await.unwrap().status(), StatusCode::BAD_REQUEST);

    // The chain verifies.
    let reports = app.control.verify_audit(&s.tenant, None).await.unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!((reports[0].events, reports[0].first_broken.clone()), (8, None));
}

#[tokio::test]
async fn the_log_is_append_only_and_tampering_is_named_by_verify() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "tamper", TenantKind::Customer, Plan::Pro).await;
    settle(&app, &s).await;
    for email in ["a@t.test", "b@t.test", "c@t.test", "d@t.test"] {
        crate::identity::sign_up(&app, s.project.id, email).await;
    }
    // As authio_app, inside the tenant's own scope: no update, no delete, no truncate.
    let app_client = authio_db::pool::connect(&app.shared.app_url, "audit-test").await.unwrap();
    let bind = format!(
        "BEGIN; SELECT set_config('authio.tenant_id', '{}', true), set_config('authio.project_id', '{}', true);",
        s.tenant.id, s.project.id
    );
    for change in [
        "UPDATE audit_events SET action = 'user.nothing_happened'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        "UPDATE audit_chain_heads SET seq = 0",
    ] {
        let err = app_client.batch_execute(&format!("{bind} {change}")).await.expect_err(change);
        assert!(err.code().is_some(), "{change}: {err}");
        app_client.batch_execute("ROLLBACK").await.unwrap();
    }
    // The owner (who holds every privilege on the table) is refused by the trigger too.
    let admin_owner = authio_db::pool::connect(&app.shared.admin_url, "audit-test").await.unwrap();
    let err = admin_owner
        .batch_execute("BEGIN; SET LOCAL ROLE authio_owner; DELETE FROM audit_events WHERE seq = 1")
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("append-only"), "{err:?}");
    admin_owner.batch_execute("ROLLBACK").await.unwrap();
    // Even a superuser's plain UPDATE is refused by the trigger...
    let admin = authio_db::pool::connect(&app.shared.admin_url, "audit-test").await.unwrap();
    let err = admin.batch_execute("UPDATE audit_events SET action = 'user.edited' WHERE seq = 2").await.unwrap_err();
    assert!(err.to_string().contains("append-only") || format!("{err:?}").contains("append-only"), "{err:?}");
    // ...and one who switches triggers off is caught by verification, at the edited event.
    admin
        .batch_execute(
            "BEGIN; SET LOCAL session_replication_role = replica;
             UPDATE audit_events SET actor_name = 'someone else' WHERE seq = 2; COMMIT;",
        )
        .await
        .unwrap();
    let reports = app.control.verify_audit(&s.tenant, None).await.unwrap();
    let (seq, why) = reports[0].first_broken.clone().expect("tampering found");
    assert_eq!(seq, 2);
    assert!(why.contains("altered"), "{why}");

    // A deleted event is a gap; events cut off the end are caught by the chain's head.
    let s2 = seed_tenant(&app.shared, "tamper-two", TenantKind::Customer, Plan::Pro).await;
    settle(&app, &s2).await;
    for email in ["a@t.test", "b@t.test", "c@t.test"] {
        crate::identity::sign_up(&app, s2.project.id, email).await;
    }
    assert_eq!(app.control.verify_audit(&s2.tenant, None).await.unwrap()[0].first_broken, None);
    admin
        .batch_execute(&format!(
            "BEGIN; SET LOCAL session_replication_role = replica;
             DELETE FROM audit_events WHERE tenant_id = '{}' AND seq = 4; COMMIT;",
            s2.tenant.id
        ))
        .await
        .unwrap();
    let (seq, why) = app.control.verify_audit(&s2.tenant, None).await.unwrap()[0].first_broken.clone().unwrap();
    assert_eq!(seq, 4);
    assert!(why.contains("missing"), "{why}");

    // The retention role may delete only events past their retention.
    let retention_url = app.shared.app_url.replace("authio_app@", "authio_audit_retention@");
    let retention = authio_db::pool::connect(&retention_url, "audit-test").await.unwrap();
    let err = retention
        .batch_execute(&format!("DELETE FROM audit_events WHERE tenant_id = '{}'", s2.tenant.id))
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("retention"), "{err:?}");
    admin
        .batch_execute(&format!(
            "BEGIN; SET LOCAL session_replication_role = replica;
             UPDATE audit_events SET occurred_at = now() - interval '400 days' WHERE tenant_id = '{}' AND seq = 1; COMMIT;",
            s2.tenant.id
        ))
        .await
        .unwrap();
    // With no retention recorded at the home, even a 400-day-old event stays...
    let err = retention
        .batch_execute(&format!("DELETE FROM audit_events WHERE tenant_id = '{}' AND seq = 1", s2.tenant.id))
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("retention"), "{err:?}");
    // ...and once the home knows the tenant keeps 30 days, it may go.
    admin
        .batch_execute(&format!(
            "BEGIN; SET LOCAL ROLE authio_owner; INSERT INTO audit_retention (tenant_id, days) VALUES ('{}', 30); COMMIT;",
            s2.tenant.id
        ))
        .await
        .unwrap();
    retention
        .batch_execute(&format!("DELETE FROM audit_events WHERE tenant_id = '{}' AND seq = 1", s2.tenant.id))
        .await
        .unwrap();
    let left = admin_query_strings(
        &app.shared.admin_url,
        &format!("SELECT seq::text FROM audit_events WHERE tenant_id = '{}' ORDER BY seq", s2.tenant.id),
    )
    .await;
    assert_eq!(left, vec!["2", "3"]);
}

#[tokio::test]
async fn tenants_see_only_their_own_events_on_shared_and_dedicated_databases() {
    let app = spawn_app().await;
    let a = seed_tenant(&app.shared, "audit-a", TenantKind::Customer, Plan::Enterprise).await;
    let b = seed_tenant(&app.shared, "audit-b", TenantKind::Customer, Plan::Enterprise).await;
    settle(&app, &a).await;
    settle(&app, &b).await;
    let db = make_dedicated(&app.shared, &b.tenant).await;
    for (s, email) in [(&a, "a@a.test"), (&b, "b@b.test")] {
        let (st, _) = post_json(
            &app,
            "/v1/auth/signup",
            json!({"project_id": s.project.id, "email": email, "password": PASSWORD}),
        )
        .await;
        assert_eq!(st, StatusCode::CREATED);
    }
    let seen_a = events(&app, &a, "?action=user.signed_up").await;
    let seen_b = events(&app, &b, "?action=user.signed_up").await;
    assert_eq!(seen_a["data"].as_array().unwrap().len(), 1);
    assert_eq!(seen_b["data"].as_array().unwrap().len(), 1);
    assert_eq!(seen_a["data"][0]["actor"]["name"], "a@a.test");
    assert_eq!(seen_b["data"][0]["actor"]["name"], "b@b.test");
    // A key of tenant A asking for tenant B's project gets nothing of it.
    let r = app
        .http
        .get(app.url(&format!("/v1/projects/{}/audit-events", b.project.id)))
        .bearer_auth(&a.api_key.plaintext)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Row-level security, below the API: in A's scope, B's events are invisible and cannot
    // be written.
    let c = authio_db::pool::connect(&app.shared.app_url, "audit-test").await.unwrap();
    let bind = format!(
        "BEGIN; SELECT set_config('authio.tenant_id', '{}', true), set_config('authio.project_id', '{}', true);",
        a.tenant.id, a.project.id
    );
    c.batch_execute(&bind).await.unwrap();
    let seen: i64 = c.query_one("SELECT count(*) FROM audit_events", &[]).await.unwrap().get(0);
    assert_eq!(seen, 2, "only A's own events (its API key's creation, its sign-up)");
    let err = c
        .batch_execute(&format!(
            "INSERT INTO audit_events (tenant_id, project_id, id, occurred_at, action, actor_type)
             VALUES ('{}', '{}', gen_random_uuid(), now(), 'user.forged', 'system')",
            b.tenant.id, b.project.id
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");
    c.batch_execute("ROLLBACK").await.unwrap();
    // B's event lives at B's home, the dedicated database, and its chain verifies there. (The
    // attachment's event comes through the relayed outbox, so it may be chained before or after
    // the sign-up.)
    assert_eq!(
        admin_query_strings(&db.admin_url, "SELECT action FROM audit_events ORDER BY action").await,
        vec!["tenant.dedicated_attached", "user.signed_up"]
    );
    assert_eq!(
        admin_query_strings(
            &app.shared.admin_url,
            &format!("SELECT action FROM audit_events WHERE tenant_id = '{}'", b.tenant.id)
        )
        .await,
        // Only what was recorded while B lived on shared (its API key's creation); B's empty
        // dedicated database was attached without moving it (a move would have).
        vec!["api_key.created"]
    );
    let reports = app.control.verify_audit(&b.tenant, Some(&test_master_key())).await.unwrap();
    assert_eq!((reports[0].events, reports[0].first_broken.clone()), (2, None));
}

#[tokio::test]
async fn purge_keeps_retention_and_a_sealed_checkpoint_so_the_rest_still_verifies() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "purgy", TenantKind::Customer, Plan::Pro).await;
    settle(&app, &s).await;
    for email in ["a@p.test", "b@p.test", "c@p.test", "d@p.test"] {
        crate::identity::sign_up(&app, s.project.id, email).await;
    }
    let key = test_master_key();
    // Nothing is past the Pro plan's 90 days yet.
    assert_eq!(app.control.purge_audit(&s.tenant, &key).await.unwrap(), 0);
    // The two oldest events age past retention (moved back by the superuser, triggers off).
    let admin = authio_db::pool::connect(&app.shared.admin_url, "audit-test").await.unwrap();
    admin
        .batch_execute(&format!(
            "BEGIN; SET LOCAL session_replication_role = replica;
             UPDATE audit_events SET occurred_at = now() - interval '100 days' WHERE tenant_id = '{}' AND seq <= 2; COMMIT;",
            s.tenant.id
        ))
        .await
        .unwrap();
    assert_eq!(app.control.purge_audit(&s.tenant, &key).await.unwrap(), 2);
    let left = admin_query_strings(
        &app.shared.admin_url,
        &format!("SELECT seq::text FROM audit_events WHERE tenant_id = '{}' ORDER BY seq", s.tenant.id),
    )
    .await;
    assert_eq!(left, vec!["3", "4", "5"]);
    let reports = app.control.verify_audit(&s.tenant, Some(&key)).await.unwrap();
    assert_eq!(
        (reports[0].events, reports[0].first_broken.clone()),
        (3, None),
        "the rest verifies from the checkpoint"
    );
    // Again: nothing more to purge.
    assert_eq!(app.control.purge_audit(&s.tenant, &key).await.unwrap(), 0);
    // A checkpoint moved by hand no longer matches its seal.
    admin
        .batch_execute(&format!("UPDATE audit_checkpoints SET seq = 1 WHERE tenant_id = '{}'", s.tenant.id))
        .await
        .unwrap();
    let (_, why) = app.control.verify_audit(&s.tenant, Some(&key)).await.unwrap()[0].first_broken.clone().unwrap();
    assert!(why.contains("seal"), "{why}");
    // A tenant's own retention wins over its plan's.
    app.control.set_audit_retention(s.tenant.id, Some(1)).await.unwrap();
    assert!(app.control.set_audit_retention(s.tenant.id, Some(0)).await.is_err());
    admin
        .batch_execute(&format!(
            "BEGIN; SET LOCAL session_replication_role = replica;
             UPDATE audit_events SET occurred_at = now() - interval '2 days' WHERE tenant_id = '{}' AND seq = 3; COMMIT;",
            s.tenant.id
        ))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("UPDATE audit_checkpoints SET seq = 2 WHERE tenant_id = '{}'", s.tenant.id))
        .await
        .unwrap();
    assert_eq!(app.control.purge_audit(&s.tenant, &key).await.unwrap(), 1, "with one day, event 3 goes too");
    let reports = app.control.verify_audit(&s.tenant, Some(&key)).await.unwrap();
    // Events 4 and 5, and the retention change's own event (6), once relayed.
    settle(&app, &s).await;
    let reports_now = app.control.verify_audit(&s.tenant, Some(&key)).await.unwrap();
    assert!(reports[0].first_broken.is_none());
    assert_eq!((reports_now[0].events, reports_now[0].first_broken.clone()), (3, None));
}

#[tokio::test]
async fn changes_to_pinned_rows_reach_the_home_log_even_on_a_dedicated_database() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "pinned-acts", TenantKind::Customer, Plan::Enterprise).await;
    settle(&app, &s).await;
    let db = make_dedicated(&app.shared, &s.tenant).await;
    settle(&app, &s).await;
    let pid = s.project.id;
    let call = |method: reqwest::Method, path: String, body: Option<Value>| {
        let mut req = app.http.request(method, app.url(&path)).bearer_auth(&s.api_key.plaintext);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
    };
    let r = call(reqwest::Method::POST, format!("/v1/projects/{pid}/users"), Some(json!({"email": "made@p.test"})))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let key: Value = call(reqwest::Method::POST, format!("/v1/projects/{pid}/api-keys"), Some(json!({"name": "ci"})))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for _ in 0..2 {
        // The second revocation changes nothing and records nothing.
        let r =
            call(reqwest::Method::DELETE, format!("/v1/projects/{pid}/api-keys/{}", key["id"].as_str().unwrap()), None)
                .await
                .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let client: Value = call(
        reqwest::Method::POST,
        format!("/v1/projects/{pid}/m2m-clients"),
        Some(json!({"name": "svc", "scopes": ["a"]})),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let r = call(
        reqwest::Method::DELETE,
        format!("/v1/projects/{pid}/m2m-clients/{}", client["id"].as_str().unwrap()),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r =
        call(reqwest::Method::PATCH, format!("/v1/projects/{pid}/settings"), Some(json!({"refresh_grace_secs": 5})))
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    app.control.rotate_keys(pid, None, &test_master_key(), chrono::Utc::now(), true).await.unwrap();

    // A second relay, as on a second node: each event still lands once.
    let second_relay = authio_server::spawn_audit_relay(
        app.router.clone(),
        authio_testkit::relay_outbox(&app.shared),
        std::time::Duration::from_millis(30),
    );
    let expected = [
        "signing_key.rotated",
        "project.settings_changed",
        "m2m_client.revoked",
        "m2m_client.created",
        "api_key.revoked",
        "api_key.created",
        "user.created",
        // The operator's act that gave the tenant its (empty) dedicated database.
        "tenant.dedicated_attached",
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut seen = Vec::new();
    while std::time::Instant::now() < deadline {
        seen = actions(&events(&app, &s, "").await);
        if seen.len() >= expected.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(seen, expected, "relayed to the home log, once each, in order");
    let page = events(&app, &s, "?action=api_key.created").await;
    assert_eq!(page["data"][0]["actor"], json!({"type": "api_key", "id": s.api_key.key_id, "name": null}));
    assert_eq!(page["data"][0]["target"]["id"], key["key_id"]);
    // At the dedicated home, nothing left waiting on shared, and the chain verifies.
    assert_eq!(admin_query_strings(&db.admin_url, "SELECT count(*)::text FROM audit_events").await, vec!["8"]);
    assert_eq!(admin_query_strings(&app.shared.admin_url, "SELECT count(*)::text FROM audit_outbox").await, vec!["0"]);
    let reports = app.control.verify_audit(&s.tenant, Some(&test_master_key())).await.unwrap();
    assert_eq!((reports[0].events, reports[0].first_broken.clone()), (8, None));
    second_relay.abort();
}

#[tokio::test]
async fn operator_acts_are_recorded_once_and_only_the_relay_role_may_clear_the_outbox() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "operated", TenantKind::Customer, Plan::Enterprise).await;
    app.control.set_signing_alg(s.project.id, authio_core::crypto::keys::Alg::ES256).await.unwrap();
    app.control.set_audit_retention(s.tenant.id, Some(400)).await.unwrap();
    app.control
        .create_api_key(s.tenant.id, s.project.id, &authio_core::types::DisplayName::parse("ci").unwrap())
        .await
        .unwrap();
    let platform = seed_tenant(&app.shared, "authio", TenantKind::Platform, Plan::Enterprise).await;
    app.identity.create_user_with_password(platform.project.id, "ops@authio.test", PASSWORD).await.unwrap();
    let email = authio_core::types::Email::parse("ops@authio.test").unwrap();
    app.control.grant_operator(&email).await.unwrap();
    app.control.grant_operator(&email).await.unwrap();
    settle(&app, &s).await;
    settle(&app, &platform).await;
    assert_eq!(
        actions(&events(&app, &s, "").await),
        ["api_key.created", "tenant.audit_retention_changed", "project.signing_alg_changed", "api_key.created"]
    );
    let granted = events(&app, &platform, "?action=user.role_granted").await;
    assert_eq!(granted["data"].as_array().unwrap().len(), 1, "a repeated grant changes nothing and records nothing");

    // The app role adds to the outbox but may neither read it nor clear it.
    let c = authio_db::pool::connect(&app.shared.app_url, "audit-test").await.unwrap();
    for call in [
        "SELECT authio_audit_outbox_done(gen_random_uuid())",
        "SELECT * FROM authio_audit_outbox_take_skipping(10, '{}')",
    ] {
        let err = c.batch_execute(call).await.unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{call}: {err}");
    }
    let relay_url = app.shared.app_url.replace("authio_app@", "authio_relay@");
    let r = authio_db::pool::connect(&relay_url, "audit-test").await.unwrap();
    r.batch_execute("SELECT authio_audit_outbox_done(gen_random_uuid())").await.unwrap();
    assert!(r.batch_execute("SELECT count(*) FROM audit_events").await.is_err(), "the relay role reads no tenant data");
}

#[tokio::test]
async fn each_m2m_token_issued_is_recorded_at_the_home_in_batches() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "m2m-audited", TenantKind::Customer, Plan::Enterprise).await;
    let db = make_dedicated(&app.shared, &s.tenant).await;
    let (id, secret) = crate::identity::create_client(&app, &s, &["read"]).await;
    let mut jtis = Vec::new();
    for _ in 0..3 {
        let r = app
            .http
            .post(app.url("/v1/auth/token"))
            .basic_auth(&id, Some(&secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let token = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
        jtis.push(crate::identity::claims_of(&token)["jti"].as_str().unwrap().to_owned());
    }
    // A wrong secret issues nothing and records no issuance.
    let r = app
        .http
        .post(app.url("/v1/auth/token"))
        .basic_auth(&id, Some("wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    app.identity.flush_issuance_events().await;
    let page = events(&app, &s, "?action=m2m.tokens_issued").await;
    let events_seen = page["data"].as_array().unwrap();
    // Every token by its id, in order (one event per flush and client).
    let got: Vec<String> = events_seen
        .iter()
        .rev()
        .flat_map(|e| e["metadata"]["jtis"].as_array().unwrap().iter().map(|j| j.as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(got, jtis);
    let counted: u64 = events_seen.iter().map(|e| e["metadata"]["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, 3);
    assert_eq!(page["data"][0]["actor"]["type"], "m2m_client");
    assert_eq!(page["data"][0]["actor"]["id"], id.as_str());
    assert_eq!(page["data"][0]["metadata"]["scope"], "read");
    // At the tenant's home (its dedicated database), chained like every other event.
    let at_home = admin_query_strings(
        &db.admin_url,
        "SELECT coalesce(sum((metadata->>'count')::int), 0)::text FROM audit_events WHERE action = 'm2m.tokens_issued'",
    )
    .await;
    assert_eq!(at_home, vec!["3"]);
    let reports = app.control.verify_audit(&s.tenant, Some(&test_master_key())).await.unwrap();
    assert!(reports.iter().all(|r| r.first_broken.is_none()), "{reports:?}");
}

#[tokio::test]
async fn a_chain_rewritten_consistently_is_caught_by_its_sealed_anchor() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "rewritten", TenantKind::Customer, Plan::Pro).await;
    settle(&app, &s).await;
    for email in ["a@r.test", "b@r.test", "c@r.test"] {
        crate::identity::sign_up(&app, s.project.id, email).await;
    }
    let key = test_master_key();
    assert_eq!(app.control.anchor_audit(&s.tenant, &key).await.unwrap(), 1);
    assert_eq!(app.control.anchor_audit(&s.tenant, &key).await.unwrap(), 0, "nothing new to anchor");
    // A superuser edits event 2 and recomputes every hash after it, and the head: the chain
    // alone is whole again.
    let admin = authio_db::pool::connect(&app.shared.admin_url, "audit-test").await.unwrap();
    admin
        .batch_execute(&format!(
            "BEGIN; SET LOCAL session_replication_role = replica;
             UPDATE audit_events SET actor_name = 'someone else' WHERE tenant_id = '{t}' AND seq = 2;
             DO $$ DECLARE e audit_events; prev bytea := (SELECT hash FROM audit_events WHERE tenant_id = '{t}' AND seq = 1);
             BEGIN
               FOR e IN SELECT * FROM audit_events WHERE tenant_id = '{t}' AND seq >= 2 ORDER BY seq LOOP
                 UPDATE audit_events SET prev_hash = prev,
                        hash = sha256(prev || convert_to(authio_audit_canonical(e), 'UTF8'))
                  WHERE tenant_id = e.tenant_id AND project_id = e.project_id AND seq = e.seq
                  RETURNING hash INTO prev;
               END LOOP;
               UPDATE audit_chain_heads SET hash = prev WHERE tenant_id = '{t}';
             END $$;
             COMMIT;",
            t = s.tenant.id
        ))
        .await
        .unwrap();
    // Without the anchors (no key to open them) the rewrite is not visible...
    let plain = app.control.verify_audit(&s.tenant, None).await.unwrap();
    assert_eq!(plain[0].first_broken, None, "the rewrite is consistent: {plain:?}");
    // ...with them it is, at the last anchored event.
    let reports = app.control.verify_audit(&s.tenant, Some(&key)).await.unwrap();
    let (seq, why) = reports[0].first_broken.clone().expect("caught");
    assert_eq!(seq, 4);
    assert!(why.contains("rewritten"), "{why}");
    // A forged anchor (not sealed with the master key) is named too.
    admin
        .batch_execute(&format!("UPDATE audit_anchors SET seal = 'forged' WHERE tenant_id = '{}'", s.tenant.id))
        .await
        .unwrap();
    let reports = app.control.verify_audit(&s.tenant, Some(&key)).await.unwrap();
    assert!(reports[0].first_broken.clone().unwrap().1.contains("does not open"), "{reports:?}");
}
