//! Upstream OpenID Connect sign-in against a real, independent OpenID Provider run locally
//! (panva's oidc-provider under Node.js, in tests/upstream-op; `scripts/test` installs it).
use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use authio_core::types::Plan;
use authio_db::TenantKind;
use authio_testkit::{admin_query_strings, seed_tenant, spawn_app, Seeded, TestApp};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncBufReadExt;

const APP_CB: &str = "https://app.example.com/callback";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

/// The provider process (killed on drop).
struct Op {
    issuer: String,
    http: reqwest::Client,
    _child: tokio::process::Child,
}

impl Op {
    async fn start(redirect_uri: &str) -> Op {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstream-op");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "the test provider is not installed: run `npm ci --prefix {}` (scripts/test does)",
            dir.display()
        );
        let port = authio_db::cluster::free_port().expect("port");
        let mut child = tokio::process::Command::new("node")
            .arg("op.mjs")
            .current_dir(&dir)
            .env("PORT", port.to_string())
            .env("CLIENT_ID", "authio-test-client")
            .env("CLIENT_SECRET", "a secret: with & odd characters")
            .env("REDIRECT_URI", redirect_uri)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if l.trim() == "ready" {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(matches!(ready, Ok(true)), "the provider started");
        // Keep reading: a closed pipe would kill the provider at its next line of output.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Op { issuer: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new(), _child: child }
    }

    async fn next_account(&self, sub: &str, email: &str, verified: bool) {
        let r = self
            .http
            .post(format!("{}/__next", self.issuer))
            .json(&json!({"sub": sub, "email": email, "email_verified": verified}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
}

/// Cookies per host:port, redirects followed by hand.
struct Browser {
    http: reqwest::Client,
    jars: HashMap<String, HashMap<String, String>>,
}

impl Browser {
    fn new() -> Self {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Browser { http, jars: HashMap::new() }
    }

    fn origin(url: &str) -> String {
        let u = url::Url::parse(url).unwrap();
        format!("{}:{}", u.host_str().unwrap(), u.port_or_known_default().unwrap())
    }

    async fn get(&mut self, url: &str) -> (StatusCode, Option<String>, String) {
        let jar = self.jars.entry(Self::origin(url)).or_default();
        let cookie = jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        let r = self.http.get(url).header("cookie", cookie).send().await.unwrap();
        for v in r.headers().get_all("set-cookie") {
            let (kv, _) = v.to_str().unwrap().split_once(';').unwrap_or((v.to_str().unwrap(), ""));
            let (k, v) = kv.split_once('=').unwrap();
            jar.insert(k.to_owned(), v.to_owned());
        }
        let location = r
            .headers()
            .get("location")
            .map(|l| url::Url::parse(url).unwrap().join(l.to_str().unwrap()).unwrap().to_string());
        (r.status(), location, r.text().await.unwrap())
    }

    /// Follow redirects until one points at `stop` (returned) or a page answers.
    async fn follow_until(&mut self, start: &str, stop: &str) -> String {
        let mut url = start.to_owned();
        for _ in 0..15 {
            if url.starts_with(stop) {
                return url;
            }
            let (st, location, body) = self.get(&url).await;
            match location {
                Some(l) => url = l,
                None => panic!("stopped at {url} with {st}: {body}"),
            }
        }
        panic!("too many redirects");
    }
}

fn challenge() -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER.as_bytes()))
}

async fn connect(app: &TestApp, s: &Seeded, op: &Op) -> Value {
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{}/oauth-connections", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .json(&json!({
            "slug": "corp-idp", "kind": "oidc", "display_name": "Corp IdP", "issuer": op.issuer,
            "client_id": "authio-test-client", "client_secret": "a secret: with & odd characters",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

/// Start at the hosted page's provider button and come back to Authio's callback.
async fn to_callback(app: &TestApp, s: &Seeded, b: &mut Browser) -> String {
    let start = app.url(&format!(
        "/p/{}/oauth/corp-idp?redirect_uri={}&state=xyz&code_challenge={}&code_challenge_method=S256",
        s.project.id,
        url::form_urlencoded::byte_serialize(APP_CB.as_bytes()).collect::<String>(),
        challenge()
    ));
    b.follow_until(&start, &app.url("/oauth/callback")).await
}

async fn exchange(app: &TestApp, location: &str) -> (StatusCode, Value) {
    let code = url::Url::parse(location).unwrap().query_pairs().find(|(k, _)| k == "code").unwrap().1.to_string();
    let r = app
        .http
        .post(app.url("/v1/auth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", APP_CB),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap())
}

async fn audit_actions(app: &TestApp) -> Vec<String> {
    admin_query_strings(&app.shared.admin_url, "SELECT action || ':' || coalesce(metadata->>'decision', metadata->>'reason', '') FROM audit_events ORDER BY seq").await
}

#[tokio::test]
async fn upstream_oidc_sign_in_creates_links_and_refuses_bad_state_nonce_signature_and_unverified_email() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let callback = app.url("/oauth/callback");
    let op = Op::start(&callback).await;
    admin_query_strings(
        &app.shared.admin_url,
        &format!("INSERT INTO redirect_uris VALUES ('{}', '{}', '{APP_CB}', now())", s.tenant.id, s.project.id),
    )
    .await;
    let conn = connect(&app, &s, &op).await;
    assert_eq!(conn["authorization_endpoint"], format!("{}/auth", op.issuer), "discovered");
    assert!(conn.get("client_secret").is_none() && conn.get("client_secret_enc").is_none());

    // The hosted page offers the provider.
    let mut b = Browser::new();
    let (_, _, html) = b.get(&app.url(&format!("/p/{}/signin", s.project.id))).await;
    assert!(html.contains("Continue with Corp IdP"), "{html}");

    // A new user, with a verified email: created and signed in.
    op.next_account("sub-new", "new.upstream@example.com", true).await;
    let cb = to_callback(&app, &s, &mut b).await;
    let authorize_params = cb.clone();
    assert!(authorize_params.contains("state="));
    let (st, location, body) = b.get(&cb).await;
    assert_eq!(st, StatusCode::SEE_OTHER, "{body}");
    let location = location.unwrap();
    assert!(location.starts_with(&format!("{APP_CB}?code=sc_")) && location.contains("state=xyz"), "{location}");
    let (st, tokens) = exchange(&app, &location).await;
    assert_eq!(st, StatusCode::OK, "{tokens}");
    let claims = crate::identity::claims_of(tokens["access_token"].as_str().unwrap());
    assert_eq!(claims["amr"], json!(["oauth"]));
    // The state is single use: the same callback again is refused.
    let (st, _, _) = b.get(&cb).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // An existing account with the same (verified) email is linked, and the decision audited.
    let r = app
        .http
        .post(app.url("/v1/auth/signup"))
        .json(&json!({"project_id": s.project.id, "email": "old@example.com", "password": "a-long-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    op.next_account("sub-old", "old@example.com", true).await;
    let mut b2 = Browser::new();
    let cb = to_callback(&app, &s, &mut b2).await;
    let (st, location, _) = b2.get(&cb).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let (st, tokens) = exchange(&app, &location.unwrap()).await;
    assert_eq!(st, StatusCode::OK);
    let user_of_old =
        admin_query_strings(&app.shared.admin_url, "SELECT id::text FROM users WHERE email = 'old@example.com'").await;
    assert_eq!(crate::identity::claims_of(tokens["access_token"].as_str().unwrap())["sub"], user_of_old[0]);
    let links = admin_query_strings(
        &app.shared.admin_url,
        "SELECT subject || '>' || email FROM user_identities ORDER BY subject",
    )
    .await;
    assert_eq!(links, vec!["sub-new>new.upstream@example.com", "sub-old>old@example.com"]);

    // An unverified email is refused (no account, no link), and the refusal audited.
    op.next_account("sub-unverified", "old@example.com", false).await;
    let mut b3 = Browser::new();
    let cb = to_callback(&app, &s, &mut b3).await;
    let (st, _, body) = b3.get(&cb).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body.contains("did not verify"), "{body}");

    // The callback in another browser (no cookie from the start) is refused.
    op.next_account("sub-new", "new.upstream@example.com", true).await;
    let mut b4 = Browser::new();
    let cb = to_callback(&app, &s, &mut b4).await;
    let (st, _, body) = Browser::new().get(&cb).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body.contains("another browser"), "{body}");
    // A forged state is refused.
    let (st, _, _) = b4.get(&format!("{callback}?code=x&state=forged")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // A nonce that is not this sign-in's is refused.
    let mut b5 = Browser::new();
    let cb = to_callback(&app, &s, &mut b5).await;
    admin_query_strings(&app.shared.admin_url, "UPDATE oauth_states SET nonce = 'another-nonce' WHERE used_at IS NULL")
        .await;
    let (st, _, body) = b5.get(&cb).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body.contains("nonce"), "{body}");

    // An id_token whose signature was tampered with is refused.
    admin_query_strings(
        &app.shared.admin_url,
        &format!("UPDATE oauth_connections SET token_endpoint = '{}/__tamper/token'", op.issuer),
    )
    .await;
    let mut b6 = Browser::new();
    let cb = to_callback(&app, &s, &mut b6).await;
    let (st, _, body) = b6.get(&cb).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body.contains("does not verify"), "{body}");

    // Two users, two links: nothing else was created by the refused attempts.
    assert_eq!(admin_query_strings(&app.shared.admin_url, "SELECT count(*) FROM users").await, vec!["2"]);
    assert_eq!(admin_query_strings(&app.shared.admin_url, "SELECT count(*) FROM user_identities").await, vec!["2"]);
    let actions = audit_actions(&app).await;
    for expected in [
        "user.signed_up:created_with_verified_email",
        "user.identity_linked:linked_by_verified_email",
        "user.identity_link_refused:email_not_verified",
    ] {
        assert!(actions.iter().any(|a| a == expected), "{expected} in {actions:?}");
    }
}

#[tokio::test]
async fn upstream_sign_in_follows_the_sign_up_policy_and_the_method_switch() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let op = Op::start(&app.url("/oauth/callback")).await;
    admin_query_strings(
        &app.shared.admin_url,
        &format!("INSERT INTO redirect_uris VALUES ('{}', '{}', '{APP_CB}', now())", s.tenant.id, s.project.id),
    )
    .await;
    connect(&app, &s, &op).await;
    let patch = |body: Value| {
        let (app, s) = (&app, &s);
        async move {
            let r = app
                .http
                .patch(app.url(&format!("/v1/projects/{}/presentation", s.project.id)))
                .bearer_auth(&s.api_key.plaintext)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK);
        }
    };
    let users = || async { admin_query_strings(&app.shared.admin_url, "SELECT email FROM users ORDER BY email").await };

    // Invite only: a new upstream identity is not made an account.
    patch(json!({"signup_policy": "invite_only"})).await;
    op.next_account("sub-1", "walkin@example.com", true).await;
    let mut b = Browser::new();
    let cb = to_callback(&app, &s, &mut b).await;
    let (st, _, body) = b.get(&cb).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("does not accept sign-ups"), "{body}");
    assert!(users().await.is_empty());

    // Listed domains: an address at one is made an account.
    patch(json!({"signup_policy": "domains", "signup_domains": ["example.com"]})).await;
    op.next_account("sub-2", "ok@example.com", true).await;
    let mut b = Browser::new();
    let cb = to_callback(&app, &s, &mut b).await;
    let (st, location, body) = b.get(&cb).await;
    assert_eq!(st, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(exchange(&app, &location.unwrap()).await.0, StatusCode::OK);
    op.next_account("sub-3", "no@other.test", true).await;
    let mut b = Browser::new();
    let cb = to_callback(&app, &s, &mut b).await;
    let (st, _, _) = b.get(&cb).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(users().await, vec!["ok@example.com"]);

    // Upstream sign-in turned off between the start and the callback: refused at the callback.
    op.next_account("sub-2", "ok@example.com", true).await;
    let mut b = Browser::new();
    let cb = to_callback(&app, &s, &mut b).await;
    patch(json!({"signin_methods": ["password"]})).await;
    let (st, _, body) = b.get(&cb).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("not enabled"), "{body}");
}
