//! The project's event stream over real HTTP: written with the changes it describes (and rolled
//! back with them), read in order with a cursor, per project, and kept for 30 days.
use authio_core::types::Plan;
use authio_db::TenantKind;
use authio_testkit::{admin_query_strings, seed_tenant, spawn_app, Seeded, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::identity::sign_up;

async fn events(app: &TestApp, s: &Seeded, query: &str) -> (StatusCode, Value) {
    let r = app
        .http
        .get(app.url(&format!("/v1/projects/{}/events{query}", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

fn types_of(page: &Value) -> Vec<String> {
    page["data"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
}

async fn manage(app: &TestApp, s: &Seeded, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let mut req = app
        .http
        .request(method, app.url(&format!("/v1/projects/{}{path}", s.project.id)))
        .bearer_auth(&s.api_key.plaintext);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap_or(Value::Null)
}

#[tokio::test]
async fn events_follow_each_change_in_order_with_a_cursor_per_project_and_roll_back_with_it() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let other = seed_tenant(&app.shared, "globex", TenantKind::Customer, Plan::Pro).await;

    // Changes of every kind the stream carries so far.
    let ann = sign_up(&app, s.project.id, "ann@example.com").await;
    let signin = |password: &'static str| {
        app.http
            .post(app.url("/v1/auth/signin"))
            .json(&json!({"project_id": s.project.id, "email": "ann@example.com", "password": password}))
            .send()
    };
    assert_eq!(signin("a wrong password, surely").await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let ok = signin(crate::identity::PASSWORD).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let second: Value = ok.json().await.unwrap();
    manage(&app, &s, reqwest::Method::POST, "/users", Some(json!({"email": "bob@example.com"}))).await;
    manage(&app, &s, reqwest::Method::DELETE, &format!("/sessions/{}", second["session_id"].as_str().unwrap()), None)
        .await;
    manage(
        &app,
        &s,
        reqwest::Method::POST,
        "/roles",
        Some(json!({"slug": "member", "name": "Member", "is_default": true})),
    )
    .await;
    let org =
        manage(&app, &s, reqwest::Method::POST, "/organizations", Some(json!({"name": "Initech", "slug": "initech"})))
            .await;
    manage(
        &app,
        &s,
        reqwest::Method::POST,
        &format!("/organizations/{}/members", org["id"].as_str().unwrap()),
        Some(json!({"user_id": ann["user_id"]})),
    )
    .await;

    let expected = vec![
        "user.created",
        "session.created",
        "authentication.failed",
        "session.created",
        "authentication.succeeded",
        "user.created",
        "session.revoked",
        "organization.created",
        "membership.added",
    ];
    let (st, all) = events(&app, &s, "").await;
    assert_eq!(st, StatusCode::OK, "{all}");
    assert_eq!(types_of(&all), expected, "{all}");
    let data = all["data"].as_array().unwrap();
    assert_eq!(data[0]["data"], json!({"user_id": ann["user_id"], "signed_up": true}));
    assert_eq!(data[1]["data"]["session_id"], ann["session_id"]);
    assert_eq!(data[2]["data"], json!({"email": "ann@example.com", "reason": "invalid_credentials"}));
    assert_eq!(data[5]["data"]["email"], "bob@example.com");
    assert_eq!(data[6]["data"]["session_id"], second["session_id"]);
    assert_eq!(data[8]["data"]["organization_id"], org["id"]);
    // Positions rise; nothing about addresses or agents reaches the stream.
    let positions: Vec<i64> = data.iter().map(|e| e["position"].as_i64().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert!(!all.to_string().contains("user_agent") && !all.to_string().contains("\"ip\""));

    // Walked two at a time with the cursor: the same stream, once each.
    let mut walked = Vec::new();
    let mut cursor: Option<i64> = None;
    loop {
        let q = match cursor {
            Some(c) => format!("?limit=2&after={c}"),
            None => "?limit=2".to_owned(),
        };
        let (st, page) = events(&app, &s, &q).await;
        assert_eq!(st, StatusCode::OK);
        if page["data"].as_array().unwrap().is_empty() {
            assert_eq!(page["next_cursor"].as_i64(), cursor, "an empty page keeps the cursor");
            break;
        }
        walked.extend(types_of(&page));
        cursor = page["next_cursor"].as_i64();
    }
    assert_eq!(walked, expected);
    // Filtered by type.
    let (_, only) = events(&app, &s, "?types=session.created,session.revoked").await;
    assert_eq!(types_of(&only), vec!["session.created", "session.created", "session.revoked"]);
    // Another tenant's project has its own stream, and this key reads no other.
    let (_, theirs) = events(&app, &other, "").await;
    assert_eq!(types_of(&theirs), Vec::<String>::new());
    let r = app
        .http
        .get(app.url(&format!("/v1/projects/{}/events", other.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Bad queries.
    for q in ["?after=-1", "?after=x", "?limit=0", "?limit=501", "?types=user.exploded", "?since=1"] {
        let (st, body) = events(&app, &s, q).await;
        assert_eq!((st, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_query")), "{q}");
    }

    // A change that rolls back emits nothing: the event is written in its transaction.
    let before = admin_query_strings(&app.shared.admin_url, "SELECT count(*)::text FROM events").await;
    admin_query_strings(
        &app.shared.admin_url,
        &format!(
            "DO $$ BEGIN
               INSERT INTO audit_events (tenant_id, project_id, id, occurred_at, action, actor_type, target_type,
                                         target_id, metadata)
               VALUES ('{}', '{}', gen_random_uuid(), now(), 'user.created', 'system', 'user', gen_random_uuid()::text,
                       '{{\"email\": \"ghost@example.com\"}}');
               RAISE EXCEPTION 'rolled back';
             EXCEPTION WHEN raise_exception THEN NULL;
             END $$",
            s.tenant.id, s.project.id
        ),
    )
    .await;
    assert_eq!(admin_query_strings(&app.shared.admin_url, "SELECT count(*)::text FROM events").await, before);

    // Kept 30 days: older ones are no longer read, and the purge removes them.
    admin_query_strings(
        &app.shared.admin_url,
        "UPDATE events SET occurred_at = now() - interval '31 days' WHERE type = 'authentication.failed'",
    )
    .await;
    let (_, after_retention) = events(&app, &s, "").await;
    assert!(!types_of(&after_retention).contains(&"authentication.failed".to_owned()));
    let tenants = [(s.tenant.id, TenantKind::Customer), (other.tenant.id, TenantKind::Customer)];
    assert_eq!(authio_core::events::purge(&app.router, &tenants, chrono::Utc::now()).await, 1);
    assert_eq!(authio_core::events::purge(&app.router, &tenants, chrono::Utc::now()).await, 0);
    assert_eq!(
        admin_query_strings(
            &app.shared.admin_url,
            "SELECT count(*)::text FROM events WHERE type = 'authentication.failed'"
        )
        .await,
        vec!["0"]
    );
}
