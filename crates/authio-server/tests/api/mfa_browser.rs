//! Passkeys and security keys in a real browser: headless Chromium with a virtual authenticator
//! (driven by `tests/browser/mfa.mjs` over the DevTools protocol) registers a key on the hosted
//! security page, signs in with it alone and as the second factor after a password, and has a
//! response made on another origin and one from a cloned authenticator (its signature counter
//! behind the original's) refused, with the codes, tokens, audit log and stored counter checked
//! here.
use std::time::Duration;

use authio_core::types::Plan;
use authio_db::TenantKind;
use authio_testkit::{admin_query_strings, seed_tenant, spawn_app_with, AppOptions, Seeded, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::identity::claims_of;
use crate::upstream::{challenge, exchange, APP_CB};

const EMAIL: &str = "kay@example.com";
const PASSWORD: &str = "a-long-password-1";

async fn audit_events(app: &TestApp, s: &Seeded, action: &str) -> Vec<Value> {
    let r = app
        .http
        .get(app.url(&format!("/v1/projects/{}/audit-events?action={action}", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["data"].as_array().unwrap().clone()
}

fn amr(claims: &Value) -> Vec<&str> {
    claims["amr"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect()
}

/// The app's half of a code: exchanged for tokens whose claims are returned.
async fn claims_for(app: &TestApp, code: &str) -> Value {
    assert!(code.starts_with("sc_"), "{code}");
    let (st, tokens) = exchange(app, &format!("{APP_CB}?code={code}&state=xyz")).await;
    assert_eq!(st, StatusCode::OK, "{tokens}");
    claims_of(tokens["access_token"].as_str().unwrap())
}

#[tokio::test]
async fn passkeys_register_sign_in_and_refuse_a_wrong_origin_and_a_cloned_key_in_a_real_browser() {
    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(std::path::Path::new(&chromium).exists(), "{chromium} is missing (scripts/test installs it)");
    // WebAuthn needs a domain for its relying party: the deployment is `http://localhost:PORT`
    // (a secure context for Chromium), served on 127.0.0.1.
    let app = spawn_app_with(AppOptions {
        tune_auth: |a| a.public_url = a.public_url.replace("127.0.0.1", "localhost"),
        ..AppOptions::default()
    })
    .await;
    let s = seed_tenant(&app.shared, "keys", TenantKind::Customer, Plan::Free).await;
    let pid = s.project.id;
    let r = app
        .http
        .patch(app.url(&format!("/v1/projects/{pid}/presentation")))
        .bearer_auth(&s.api_key.plaintext)
        .json(&json!({"signin_methods": ["password", "passkey"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{pid}/redirect-uris")))
        .bearer_auth(&s.api_key.plaintext)
        .json(&json!({"uri": APP_CB}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    let r = app
        .http
        .post(app.url("/v1/auth/signup"))
        .json(&json!({"project_id": pid, "email": EMAIL, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());

    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("hosted-screenshots-mfa");
    std::fs::create_dir_all(&shots).unwrap();
    let cfg = json!({
        "shots": shots,
        "base": format!("http://localhost:{}", app.addr.port()),
        "project": pid,
        "email": EMAIL,
        "password": PASSWORD,
        "app_callback": APP_CB,
        "state": "xyz",
        "code_challenge": challenge(),
    });
    let run = tokio::process::Command::new("node")
        .arg("mfa.mjs")
        .current_dir(&browser_dir)
        .env("AUTHIO_MFA_TEST", cfg.to_string())
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run).await.expect("the browser run finished").unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{stderr}\n{stdout}");
    assert!(out.status.success(), "the browser run failed:\n{stderr}\n{stdout}");
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap();

    // Registered: one WebAuthn factor, the authenticator's credential.
    let reg = &report["registration"];
    assert_eq!(reg["recovery_codes"], 10, "{reg}");
    let stored_id = admin_query_strings(
        &app.shared.admin_url,
        "SELECT translate(encode(credential_id, 'base64'), E'\\n', '') FROM mfa_factors WHERE kind = 'webauthn'",
    )
    .await;
    assert_eq!(stored_id, vec![reg["credential"]["id"].as_str().unwrap().to_owned()]);
    let enrolled = audit_events(&app, &s, "mfa.enrolled").await;
    assert_eq!(enrolled.len(), 1, "{enrolled:?}");
    assert_eq!(enrolled[0]["metadata"]["kind"], "webauthn");

    // The passkey alone: a key and user verification, two factors.
    let passkey = claims_for(&app, report["passkey_signin"]["code"].as_str().unwrap()).await;
    let methods = amr(&passkey);
    assert!(methods.contains(&"mfa") && (methods.contains(&"hwk") || methods.contains(&"swk")), "{passkey}");
    assert!(!methods.contains(&"pwd"), "{passkey}");
    assert_eq!(passkey["acr"], "aal2");

    // A password, then the key as the second factor.
    let second = claims_for(&app, report["second_factor"]["code"].as_str().unwrap()).await;
    let methods = amr(&second);
    assert!(methods.contains(&"pwd") && methods.contains(&"mfa"), "{second}");
    assert!(methods.contains(&"hwk") || methods.contains(&"swk"), "{second}");
    assert_eq!(second["acr"], "aal2");

    // Refused: a response made on another origin, and one from a clone of the key.
    let wrong = &report["wrong_origin"];
    let made_at = wrong["client_origin"].as_str().unwrap();
    assert!(made_at.starts_with("http://localhost:") && made_at != cfg["base"], "{wrong}");
    assert!(wrong["code"].is_null() && wrong["error"].as_str().is_some_and(|e| !e.is_empty()), "{wrong}");
    let clone = &report["cloned"];
    assert!(clone["code"].is_null(), "{clone}");
    assert!(clone["error"].as_str().unwrap().contains("counter"), "{clone}");
    let failed = audit_events(&app, &s, "mfa.challenge_failed").await;
    assert!(failed.len() >= 2, "{failed:?}");
    let reasons: Vec<&str> = failed.iter().map(|e| e["metadata"]["reason"].as_str().unwrap_or("")).collect();
    assert!(reasons.iter().any(|r| r.contains("origin")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("counter")), "{reasons:?}");

    // The stored counter is the one of the last sign-in that passed: the refused ones moved
    // nothing, though the authenticators counted on.
    let counted = report["second_factor"]["sign_count"].as_u64().unwrap();
    assert!(counted > 0, "the virtual authenticator keeps a counter: {report}");
    let stored =
        admin_query_strings(&app.shared.admin_url, "SELECT sign_count FROM mfa_factors WHERE kind = 'webauthn'").await;
    assert_eq!(stored, vec![counted.to_string()]);
    assert!(report["wrong_origin"]["sign_count"].as_u64().unwrap() > counted, "{report}");
}
