//! Webhooks over real HTTP to a real receiver (Node.js) that verifies every delivery with the
//! Standard Webhooks library from npm: signatures, order, retries after 500s and timeouts, the
//! endpoint disabled after sustained failure, replay, secret rotation with overlap, and the
//! refusal of private targets.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use authio_core::types::Plan;
use authio_db::TenantKind;
use authio_testkit::{admin_query_strings, seed_tenant, spawn_app, Seeded, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

struct Receiver {
    _child: tokio::process::Child,
    port: u16,
    lines: Arc<Mutex<Vec<Value>>>,
    secrets: std::path::PathBuf,
}

impl Receiver {
    async fn start() -> Receiver {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/webhooks");
        assert!(
            dir.join("node_modules/standardwebhooks").exists(),
            "standardwebhooks is not installed: run `npm ci --prefix {}` (scripts/test does)",
            dir.display()
        );
        let secrets = std::env::temp_dir().join(format!("authio-webhook-secrets-{}", uuid::Uuid::new_v4()));
        std::fs::write(&secrets, "[]").unwrap();
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("receiver.mjs"))
            .env("SECRETS_FILE", &secrets)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs the receiver");
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first: Value = serde_json::from_str(&out.next_line().await.unwrap().unwrap()).unwrap();
        let port = first["port"].as_u64().unwrap() as u16;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = out.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&l) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Receiver { _child: child, port, lines, secrets }
    }

    fn accept(&self, secrets: &[&str]) {
        std::fs::write(&self.secrets, serde_json::to_string(secrets).unwrap()).unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn at(&self, path: &str) -> Vec<Value> {
        self.lines.lock().unwrap().iter().filter(|l| l["path"] == path).cloned().collect()
    }

    /// Wait until `path` has received at least `n` requests.
    async fn wait(&self, path: &str, n: usize, secs: u64) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.at(path);
            if got.len() >= n || tokio::time::Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn call(app: &TestApp, s: &Seeded, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = app
        .http
        .request(method, app.url(&format!("/v1/projects/{}{path}", s.project.id)))
        .bearer_auth(&s.api_key.plaintext);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

async fn development(app: &TestApp, s: &Seeded) {
    let (st, _) = call(app, s, Method::PATCH, "/presentation", Some(json!({"environment": "development"}))).await;
    assert_eq!(st, StatusCode::OK);
}

async fn create_users(app: &TestApp, s: &Seeded, prefix: &str, n: usize) {
    for i in 0..n {
        let (st, _) =
            call(app, s, Method::POST, "/users", Some(json!({"email": format!("{prefix}{i}@example.com")}))).await;
        assert_eq!(st, StatusCode::CREATED);
    }
}

fn ids(lines: &[Value]) -> Vec<String> {
    lines.iter().map(|l| l["id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn webhooks_are_signed_in_order_retried_disabled_replayed_rotated_and_kept_off_private_addresses() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    development(&app, &s).await;
    let rx = Receiver::start().await;

    // Endpoints: everything; user.created only, failing its first two requests; one too slow.
    let mut secrets = Vec::new();
    let endpoint = |path: &str, types: Value| {
        let body = json!({"url": rx.url(path), "event_types": types});
        let (app, s) = (&app, &s);
        async move { call(app, s, Method::POST, "/webhooks", Some(body)).await }
    };
    let (st, ok) = endpoint("/ok", json!([])).await;
    assert_eq!(st, StatusCode::CREATED, "{ok}");
    assert!(ok["secret"].as_str().unwrap().starts_with("whsec_"));
    let (_, flaky) = endpoint("/fail-first/2", json!(["user.created"])).await;
    let (_, slow) = endpoint("/slow", json!(["user.created"])).await;
    for e in [&ok, &flaky, &slow] {
        secrets.push(e["secret"].as_str().unwrap().to_owned());
    }
    rx.accept(&secrets.iter().map(String::as_str).collect::<Vec<_>>());
    // Stored sealed, never in the clear.
    let stored = admin_query_strings(&app.shared.admin_url, "SELECT secret_enc FROM webhook_endpoints").await;
    assert!(stored.iter().all(|s| !s.contains("whsec_")));

    let t0 = chrono::Utc::now();
    create_users(&app, &s, "u", 5).await;

    // Every delivery verifies with the reference library, in stream order, each event once.
    let got = rx.wait("/ok", 5, 20).await;
    assert_eq!(got.len(), 5, "{got:?}");
    assert!(got.iter().all(|l| l["verified"] == true), "{got:?}");
    assert!(got.iter().all(|l| l["type"] == "user.created"));
    let positions: Vec<i64> = got.iter().map(|l| l["position"].as_i64().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    let ok_ids = ids(&got);

    // 500, 500, then 200: the first event three times with the same webhook-id, then the rest
    // in order; the log has each attempt.
    let flaky_got = rx.wait("/fail-first/2", 7, 30).await;
    assert_eq!(flaky_got.len(), 7, "{flaky_got:?}");
    let flaky_ids = ids(&flaky_got);
    assert_eq!(flaky_ids[0], flaky_ids[1]);
    assert_eq!(flaky_ids[1], flaky_ids[2]);
    assert_eq!(flaky_ids[2..].to_vec(), ok_ids, "after the retries, the same events in the same order");
    assert_eq!(
        flaky_got.iter().map(|l| l["status"].as_i64().unwrap()).collect::<Vec<_>>(),
        vec![500, 500, 200, 200, 200, 200, 200]
    );
    let (_, log) =
        call(&app, &s, Method::GET, &format!("/webhooks/{}/deliveries", flaky["id"].as_str().unwrap()), None).await;
    let statuses: Vec<i64> =
        log["data"].as_array().unwrap().iter().rev().map(|d| d["status"].as_i64().unwrap()).collect();
    assert_eq!(statuses, vec![500, 500, 200, 200, 200, 200, 200]);
    assert_eq!(log["data"][6]["attempt"], 1);
    assert_eq!(log["data"][4]["attempt"], 3, "the third attempt at the first event succeeded");

    // Too slow: timed out, retried, and once failing for 3 days, disabled.
    let slow_id = slow["id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, log) = call(&app, &s, Method::GET, &format!("/webhooks/{slow_id}/deliveries"), None).await;
        if log["data"].as_array().unwrap().len() >= 2 {
            assert!(
                log["data"].as_array().unwrap().iter().all(|d| d["error"] == "timed out" && d["status"].is_null()),
                "{log}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    admin_query_strings(
        &app.shared.admin_url,
        &format!(
            "UPDATE webhook_endpoints SET failing_since = now() - interval '3 days 1 minute' WHERE id = '{slow_id}'"
        ),
    )
    .await;
    admin_query_strings(
        &app.shared.admin_url,
        &format!("UPDATE webhook_schedule SET due_at = now() WHERE endpoint_id = '{slow_id}'"),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, list) = call(&app, &s, Method::GET, "/webhooks", None).await;
        let e = list["data"].as_array().unwrap().iter().find(|e| e["id"] == slow_id.as_str()).unwrap().clone();
        if e["enabled"] == false {
            assert_eq!(e["disabled_reason"], "failing for 3 days");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let disabled = admin_query_strings(
        &app.shared.admin_url,
        "SELECT count(*)::text FROM audit_events WHERE action = 'webhook.disabled' AND actor_type = 'system'",
    )
    .await;
    assert_eq!(disabled, vec!["1"]);

    // Replay: every event since t0 again, the same ids (at least once), in order.
    let (st, _) = call(
        &app,
        &s,
        Method::POST,
        &format!("/webhooks/{}/replay", ok["id"].as_str().unwrap()),
        Some(json!({"since": t0})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let again = rx.wait("/ok", 10, 20).await;
    assert_eq!(ids(&again[5..]), ok_ids);

    // Replay of one event: sent once more, with its own webhook-id, logged as a replay.
    let ok_path = format!("/webhooks/{}", ok["id"].as_str().unwrap());
    let third = uuid::Uuid::parse_str(ok_ids[2].strip_prefix("evt_").unwrap()).unwrap();
    let (st, body) = call(&app, &s, Method::POST, &format!("{ok_path}/replay"), Some(json!({"event_id": third}))).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let again = rx.wait("/ok", 11, 20).await;
    assert_eq!(again.len(), 11, "{again:?}");
    assert_eq!(again[10]["id"], ok_ids[2].as_str());
    assert_eq!(again[10]["verified"], true);
    // (The log is written once the receiver has answered.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, log) = call(&app, &s, Method::GET, &format!("{ok_path}/deliveries?limit=1"), None).await;
        if log["data"][0]["replay"] == true {
            assert_eq!(log["data"][0]["status"], 200);
            assert_eq!(log["data"][0]["event_id"], third.to_string());
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pending = admin_query_strings(
        &app.shared.admin_url,
        "SELECT sum(cardinality(pending_replays))::text FROM webhook_endpoints",
    )
    .await;
    assert_eq!(pending, vec!["0"], "a replay is sent once and taken off");
    // Refused: an unknown event, neither or both fields, a disabled endpoint.
    let unknown = json!({"event_id": uuid::Uuid::new_v4()});
    let (st, body) = call(&app, &s, Method::POST, &format!("{ok_path}/replay"), Some(unknown)).await;
    assert_eq!((st, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("event_not_found")));
    for bad in [json!({}), json!({"since": t0, "event_id": third})] {
        let (st, body) = call(&app, &s, Method::POST, &format!("{ok_path}/replay"), Some(bad)).await;
        assert_eq!((st, body["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_request")));
    }
    let (st, body) =
        call(&app, &s, Method::POST, &format!("/webhooks/{slow_id}/replay"), Some(json!({"event_id": third}))).await;
    assert_eq!((st, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")), "{body}");

    // Rotation: the old secret keeps working beside the new one for a while.
    let (st, rotated) =
        call(&app, &s, Method::POST, &format!("/webhooks/{}/rotate-secret", ok["id"].as_str().unwrap()), None).await;
    assert_eq!(st, StatusCode::OK);
    let new_secret = rotated["secret"].as_str().unwrap();
    assert_ne!(new_secret, secrets[0]);
    rx.accept(&[new_secret]);
    create_users(&app, &s, "v", 1).await;
    let after = rx.wait("/ok", 12, 20).await;
    assert_eq!(after[11]["verified"], true, "{:?}", after[11]);
    rx.accept(&[secrets[0].as_str()]);
    create_users(&app, &s, "w", 1).await;
    let after = rx.wait("/ok", 13, 20).await;
    assert_eq!(after[12]["verified"], true, "the previous secret still verifies: {:?}", after[12]);
    rx.accept(&["whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]);
    create_users(&app, &s, "x", 1).await;
    let after = rx.wait("/ok", 14, 20).await;
    assert_eq!(after[13]["verified"], false, "a wrong secret does not verify: the check can fail");

    // Private targets: a production project may not register http, private or loopback
    // addresses, and a name that resolves to loopback is refused when connecting.
    let prod = seed_tenant(&app.shared, "globex", TenantKind::Customer, Plan::Pro).await;
    for url in [
        rx.url("/ok"),
        format!("https://127.0.0.1:{}/ok", rx.port),
        "https://10.0.0.7/hook".to_owned(),
        "https://[::1]/hook".to_owned(),
        "https://169.254.169.254/latest".to_owned(),
        "https://user:pw@hooks.example.com/".to_owned(),
    ] {
        let (st, body) = call(&app, &prod, Method::POST, "/webhooks", Some(json!({"url": url}))).await;
        assert_eq!(
            (st, body["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_request")),
            "{url}"
        );
    }
    let (st, local) =
        call(&app, &prod, Method::POST, "/webhooks", Some(json!({"url": format!("https://localhost:{}/ok", rx.port)})))
            .await;
    assert_eq!(st, StatusCode::CREATED, "a name is checked where it resolves, when connecting");
    let before = rx.at("/ok").len();
    create_users(&app, &prod, "p", 1).await;
    let local_id = local["id"].as_str().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, log) = call(&app, &prod, Method::GET, &format!("/webhooks/{local_id}/deliveries"), None).await;
        if let Some(d) = log["data"].as_array().unwrap().first() {
            assert!(
                d["error"].as_str().unwrap().contains("public address")
                    || d["error"].as_str().unwrap().contains("resolves"),
                "{d}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(rx.at("/ok").len(), before, "nothing reached the loopback receiver");
    // Unknown types and bad bodies are refused.
    let (st, _) = call(
        &app,
        &s,
        Method::POST,
        "/webhooks",
        Some(json!({"url": rx.url("/ok"), "event_types": ["user.exploded"]})),
    )
    .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
}

/// The schedule's lease, at the database: a taken endpoint is not taken again while the lease
/// holds; a nudge (a replay, enabling) during the lease survives the give-back; a give-back
/// with a lease that is no longer the endpoint's changes nothing.
#[tokio::test]
async fn the_schedule_lease_holds_and_a_nudge_survives_the_give_back() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    development(&app, &s).await;
    let (st, e) = call(&app, &s, Method::POST, "/webhooks", Some(json!({"url": "http://127.0.0.1:9/hook"}))).await;
    assert_eq!(st, StatusCode::CREATED, "{e}");
    let id = e["id"].as_str().unwrap().to_owned();
    let q = |sql: String| {
        let url = app.shared.admin_url.clone();
        async move { admin_query_strings(&url, &sql).await }
    };
    // Taken "a day from now" (past any lease the running delivery loop may hold), so this test
    // holds it and the loop leaves it alone.
    let take = "SELECT endpoint_id::text || ' ' || leased_until::text
                  FROM authio_webhook_take(1000, now() + interval '1 day', 60)";
    let taken = q(take.into()).await;
    let mine = taken.iter().find(|t| t.starts_with(&id)).unwrap_or_else(|| panic!("{taken:?}")).clone();
    let lease = mine.split_once(' ').unwrap().1.to_owned();
    assert!(!q(take.into()).await.iter().any(|t| t.starts_with(&id)), "not taken twice while the lease holds");
    // A replay's nudge while it is held, then a give-back by a lease that is not the
    // endpoint's: nothing changes.
    q(format!("SELECT authio_webhook_nudge('{}', '{id}', now())", s.tenant.id)).await;
    q(format!(
        "SELECT authio_webhook_give_back('{}', '{id}', '{lease}'::timestamptz - interval '1 second', now() + interval '2 hours')",
        s.tenant.id
    ))
    .await;
    let held = q(format!("SELECT leased_until::text FROM webhook_schedule WHERE endpoint_id = '{id}'")).await;
    assert_eq!(held, vec![lease.clone()]);
    // The holder gives it back for two hours later: the nudge wins, due now, free.
    q(format!("SELECT authio_webhook_give_back('{}', '{id}', '{lease}', now() + interval '2 hours')", s.tenant.id))
        .await;
    let state = q(format!(
        "SELECT (due_at <= now() + interval '1 second')::text || ' ' || (leased_until IS NULL)::text
           FROM webhook_schedule WHERE endpoint_id = '{id}'"
    ))
    .await;
    assert_eq!(state, vec!["true true"]);
}
