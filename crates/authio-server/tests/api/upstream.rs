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

pub(crate) const APP_CB: &str = "https://app.example.com/callback";
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
        self.next_account_in(sub, email, verified, &[]).await
    }

    /// The next account, with the `groups` claim.
    async fn next_account_in(&self, sub: &str, email: &str, verified: bool, groups: &[&str]) {
        let r = self
            .http
            .post(format!("{}/__next", self.issuer))
            .json(&json!({"sub": sub, "email": email, "email_verified": verified, "groups": groups}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
}

/// Cookies per host:port, redirects followed by hand.
pub(crate) struct Browser {
    http: reqwest::Client,
    jars: HashMap<String, HashMap<String, String>>,
}

impl Browser {
    pub(crate) fn new() -> Self {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Browser { http, jars: HashMap::new() }
    }

    fn origin(url: &str) -> String {
        let u = url::Url::parse(url).unwrap();
        format!("{}:{}", u.host_str().unwrap(), u.port_or_known_default().unwrap())
    }

    pub(crate) async fn get(&mut self, url: &str) -> (StatusCode, Option<String>, String) {
        self.send(url, None).await
    }

    pub(crate) async fn post(&mut self, url: &str, form: &[(&str, &str)]) -> (StatusCode, Option<String>, String) {
        self.send(url, Some(form)).await
    }

    async fn send(&mut self, url: &str, form: Option<&[(&str, &str)]>) -> (StatusCode, Option<String>, String) {
        let jar = self.jars.entry(Self::origin(url)).or_default();
        let cookie = jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        let req = match form {
            Some(f) => self.http.post(url).form(f),
            None => self.http.get(url),
        };
        let r = req.header("cookie", cookie).send().await.unwrap();
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
    pub(crate) async fn follow_until(&mut self, start: &str, stop: &str) -> String {
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

pub(crate) fn challenge() -> String {
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

pub(crate) async fn exchange(app: &TestApp, location: &str) -> (StatusCode, Value) {
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

/// The hosted page's "Continue with single sign-on" for `email`: where it sends the browser.
async fn sso_start(app: &TestApp, s: &Seeded, b: &mut Browser, email: &str) -> (StatusCode, Option<String>, String) {
    let flow = [
        ("redirect_uri", APP_CB),
        ("state", "xyz"),
        ("code_challenge", &challenge()),
        ("code_challenge_method", "S256"),
    ]
    .map(|(k, v)| (k, v.to_owned()));
    let q = serde_urlencoded::to_string(&flow).unwrap();
    let (st, _, html) = b.get(&app.url(&format!("/p/{}/signin?{q}", s.project.id))).await;
    assert_eq!(st, StatusCode::OK, "{html}");
    assert!(html.contains("Continue with single sign-on"), "{html}");
    let csrf = crate::oidc_provider::hidden(&html, "csrf");
    let mut form: Vec<(&str, &str)> = vec![("csrf", &csrf), ("email", email)];
    form.extend(flow.iter().map(|(k, v)| (*k, v.as_str())));
    b.post(&app.url(&format!("/p/{}/sso", s.project.id)), &form).await
}

/// Through the organization's provider to the app's callback; the tokens, or the refusal.
async fn sso_sign_in(app: &TestApp, s: &Seeded, email: &str) -> (StatusCode, Value, String) {
    let mut b = Browser::new();
    let (st, to, body) = sso_start(app, s, &mut b, email).await;
    assert_eq!(st, StatusCode::SEE_OTHER, "{body}");
    let to = to.unwrap();
    assert!(to.contains("/oauth/initech-sso?"), "{to}");
    let cb = b.follow_until(&to, &app.url("/oauth/callback")).await;
    let (st, location, body) = b.get(&cb).await;
    if st != StatusCode::SEE_OTHER {
        return (st, Value::Null, body);
    }
    let (st, tokens) = exchange(app, &location.unwrap()).await;
    assert_eq!(st, StatusCode::OK, "{tokens}");
    (st, tokens, String::new())
}

pub(crate) async fn api(
    app: &TestApp,
    s: &Seeded,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let r = app
        .http
        .request(method, app.url(&format!("/v1/projects/{}{path}", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

async fn password_sign_in(app: &TestApp, s: &Seeded, email: &str) -> (StatusCode, Value) {
    let r = app
        .http
        .post(app.url("/v1/auth/signin"))
        .json(&json!({"project_id": s.project.id, "email": email, "password": "a-long-password-1"}))
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn an_organizations_own_provider_signs_its_people_in_by_domain_provisions_them_and_can_be_required() {
    use reqwest::Method;
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let op = Op::start(&app.url("/oauth/callback")).await;
    admin_query_strings(
        &app.shared.admin_url,
        &format!("INSERT INTO redirect_uris VALUES ('{}', '{}', '{APP_CB}', now())", s.tenant.id, s.project.id),
    )
    .await;
    for (slug, default) in [("member", true), ("admin", false)] {
        let (st, r) =
            api(&app, &s, Method::POST, "/roles", json!({"slug": slug, "name": slug, "is_default": default})).await;
        assert_eq!(st, StatusCode::CREATED, "{r}");
    }
    let mut orgs = Vec::new();
    for (name, slug) in [("Initech", "initech"), ("Hooli", "hooli")] {
        let (st, o) = api(&app, &s, Method::POST, "/organizations", json!({"name": name, "slug": slug})).await;
        assert_eq!(st, StatusCode::CREATED, "{o}");
        orgs.push(o["id"].as_str().unwrap().to_owned());
    }
    let (initech, hooli) = (orgs[0].clone(), orgs[1].clone());
    let (st, d) =
        api(&app, &s, Method::POST, &format!("/organizations/{initech}/domains"), json!({"domain": "initech.test"}))
            .await;
    assert_eq!(st, StatusCode::CREATED, "{d}");
    // (The TXT proof is tested with the domains themselves.)
    admin_query_strings(&app.shared.admin_url, "UPDATE organization_domains SET verified_at = now()").await;
    // People with passwords, before sign-ups close: one at Initech's domain, one elsewhere
    // who is a member of Initech, one who has nothing to do with it.
    for email in ["carol@initech.test", "dave@elsewhere.test", "eve@elsewhere.test", "grace@initech.test"] {
        let r = app
            .http
            .post(app.url("/v1/auth/signup"))
            .json(&json!({"project_id": s.project.id, "email": email, "password": "a-long-password-1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let dave =
        admin_query_strings(&app.shared.admin_url, "SELECT id::text FROM users WHERE email = 'dave@elsewhere.test'")
            .await[0]
            .clone();
    let (st, _) =
        api(&app, &s, Method::POST, &format!("/organizations/{initech}/members"), json!({"user_id": dave})).await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _) = api(&app, &s, Method::PATCH, "/presentation", json!({"signup_policy": "invite_only"})).await;
    assert_eq!(st, StatusCode::OK);

    // Bad input: an unknown organization or role, a group map without an organization.
    let conn = |extra: Value| {
        let mut body = json!({
            "slug": "initech-sso", "kind": "oidc", "display_name": "Initech IdP", "issuer": op.issuer,
            "client_id": "authio-test-client", "client_secret": "a secret: with & odd characters",
            "scopes": ["openid", "email", "groups"],
        });
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    for (extra, status, code) in [
        (json!({"organization_id": uuid::Uuid::new_v4()}), StatusCode::NOT_FOUND, "organization_not_found"),
        (
            json!({"organization_id": initech, "group_roles": {"x": "no-such-role"}}),
            StatusCode::NOT_FOUND,
            "role_not_found",
        ),
        (json!({"group_roles": {"x": "admin"}}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
    ] {
        let (st, r) = api(&app, &s, Method::POST, "/oauth-connections", conn(extra.clone())).await;
        assert_eq!((st, r["error"]["code"].as_str()), (status, Some(code)), "{extra}: {r}");
    }
    // Requiring single sign-on needs a connection first: nobody is locked out.
    let (st, r) = api(&app, &s, Method::PATCH, &format!("/organizations/{hooli}"), json!({"sso_required": true})).await;
    assert_eq!((st, r["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")), "{r}");

    let groups = json!({"engineering-admins": "admin", "staff": "member"});
    let (st, c) = api(
        &app,
        &s,
        Method::POST,
        "/oauth-connections",
        conn(json!({"organization_id": initech, "group_roles": groups})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{c}");
    assert_eq!(c["organization_id"].as_str(), Some(initech.as_str()));
    // A project-wide provider beside it (the same upstream, another connection).
    connect(&app, &s, &op).await;
    let mut b = Browser::new();
    let (_, _, html) = b.get(&app.url(&format!("/p/{}/signin", s.project.id))).await;
    assert!(html.contains("Continue with Corp IdP"), "{html}");
    assert!(!html.contains("Continue with Initech IdP"), "an organization's provider is not offered to all");

    // A domain nobody verified has no single sign-on.
    let (st, _, body) = sso_start(&app, &s, &mut Browser::new(), "zed@nowhere.test").await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.contains("no single sign-on"), "{body}");

    // Alice, new: her address is at Initech's verified domain (the provider does not say it
    // verified it), sign-ups are closed, and she is created, joins Initech as admin by her
    // group, and signs in.
    op.next_account_in("sub-alice", "alice@initech.test", false, &["everyone", "engineering-admins"]).await;
    let (st, tokens, body) = sso_sign_in(&app, &s, "alice@initech.test").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let alice =
        crate::identity::claims_of(tokens["access_token"].as_str().unwrap())["sub"].as_str().unwrap().to_owned();
    let role_of = |user: String| {
        let (app, s, initech) = (&app, &s, initech.clone());
        async move {
            let (_, m) = api(app, s, Method::GET, &format!("/organizations/{initech}/members"), Value::Null).await;
            m["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["user_id"] == user.as_str())
                .map(|m| (m["role"].as_str().unwrap().to_owned(), m["status"].as_str().unwrap().to_owned()))
        }
    };
    assert_eq!(role_of(alice.clone()).await, Some(("admin".into(), "active".into())));
    // At the next sign-in her role follows her groups.
    op.next_account_in("sub-alice", "alice@initech.test", false, &["staff"]).await;
    let (st, _, body) = sso_sign_in(&app, &s, "alice@initech.test").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(role_of(alice.clone()).await, Some(("member".into(), "active".into())));

    // The organization's provider vouches for its own domains only: an address elsewhere,
    // even one it calls verified, is refused, and Eve's account is left alone.
    op.next_account_in("sub-mallory", "eve@elsewhere.test", true, &["engineering-admins"]).await;
    let (st, _, body) = sso_sign_in(&app, &s, "alice@initech.test").await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("not at one of the organization's verified domains"), "{body}");
    assert_eq!(
        admin_query_strings(
            &app.shared.admin_url,
            "SELECT count(*) FROM user_identities WHERE subject = 'sub-mallory'"
        )
        .await,
        vec!["0"]
    );
    // Grace's account was made with a password by whoever typed her address, and never
    // proved: when she signs in through her organization, that password and its session go.
    op.next_account_in("sub-grace", "grace@initech.test", false, &[]).await;
    let (st, _, body) = sso_sign_in(&app, &s, "grace@initech.test").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (st, _) = password_sign_in(&app, &s, "grace@initech.test").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "the password set before is gone");
    assert_eq!(
        admin_query_strings(
            &app.shared.admin_url,
            "SELECT count(*) FROM sessions WHERE revoked_reason = 'unverified_account_linked'"
        )
        .await,
        vec!["1"]
    );

    // Required: Initech's people may not use a password, at its domain or as its members.
    let (st, o) =
        api(&app, &s, Method::PATCH, &format!("/organizations/{initech}"), json!({"sso_required": true})).await;
    assert_eq!((st, o["sso_required"].as_bool()), (StatusCode::OK, Some(true)), "{o}");
    for email in ["carol@initech.test", "dave@elsewhere.test"] {
        let (st, r) = password_sign_in(&app, &s, email).await;
        assert_eq!((st, r["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("sso_required")), "{email}: {r}");
    }
    // A wrong password is still just wrong (nothing said about single sign-on).
    let r = app
        .http
        .post(app.url("/v1/auth/signin"))
        .json(&json!({"project_id": s.project.id, "email": "carol@initech.test", "password": "not-her-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let (st, _) = password_sign_in(&app, &s, "eve@elsewhere.test").await;
    assert_eq!(st, StatusCode::OK, "someone else signs in as before");
    // No new password account at its domain either (sign-ups open again, to show it is the
    // requirement that refuses).
    let (st, _) = api(&app, &s, Method::PATCH, "/presentation", json!({"signup_policy": "open"})).await;
    assert_eq!(st, StatusCode::OK);
    let r = app
        .http
        .post(app.url("/v1/auth/signup"))
        .json(&json!({"project_id": s.project.id, "email": "heidi@initech.test", "password": "a-long-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "sso_required");
    // Its last connection stays while it is required.
    let (st, r) =
        api(&app, &s, Method::DELETE, &format!("/oauth-connections/{}", c["id"].as_str().unwrap()), Value::Null).await;
    assert_eq!((st, r["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")), "{r}");
    // Nor an email code: the address is proved, and still refused.
    let r = app
        .http
        .post(app.url("/v1/auth/email-code"))
        .json(&json!({"project_id": s.project.id, "email": "carol@initech.test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let challenge: Value = r.json().await.unwrap();
    let mail = app.mail.wait_for("carol@initech.test", 0, Duration::from_secs(10)).await.expect("the code arrives");
    let text = mail.text();
    let code: String = text
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 6)
        .unwrap_or_else(|| panic!("a code in {text}"))
        .to_owned();
    let r = app
        .http
        .post(app.url("/v1/auth/email-code/verify"))
        .json(&json!({"challenge_id": challenge["challenge_id"], "code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "sso_required", "{body}");
    // A member from elsewhere signs in through the organization's provider (which verified
    // his address); it is how he signs in now.
    op.next_account_in("sub-dave", "dave@elsewhere.test", true, &[]).await;
    let (st, _, body) = sso_sign_in(&app, &s, "alice@initech.test").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    // Nor another provider: Carol through the project-wide one is refused, nothing linked.
    op.next_account("sub-carol", "carol@initech.test", true).await;
    let mut b = Browser::new();
    let cb = to_callback(&app, &s, &mut b).await;
    let (st, _, body) = b.get(&cb).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        admin_query_strings(&app.shared.admin_url, "SELECT count(*) FROM user_identities WHERE subject = 'sub-carol'")
            .await,
        vec!["0"]
    );
    // Through Initech's provider she signs in, and joins.
    op.next_account_in("sub-carol", "carol@initech.test", true, &[]).await;
    let (st, tokens, body) = sso_sign_in(&app, &s, "carol@initech.test").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let carol =
        crate::identity::claims_of(tokens["access_token"].as_str().unwrap())["sub"].as_str().unwrap().to_owned();
    assert_eq!(role_of(carol).await, Some(("member".into(), "active".into())), "the default role");

    // Refused: a member the organization deactivated; a tampered id_token. Each says why in
    // the audit log, and changes nothing.
    let (st, _) = api(
        &app,
        &s,
        Method::PATCH,
        &format!("/organizations/{initech}/members/{alice}"),
        json!({"status": "deactivated"}),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    op.next_account_in("sub-alice", "alice@initech.test", false, &["engineering-admins"]).await;
    let (st, _, body) = sso_sign_in(&app, &s, "alice@initech.test").await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(role_of(alice).await, Some(("member".into(), "deactivated".into())));
    let users_before = admin_query_strings(&app.shared.admin_url, "SELECT count(*) FROM users").await;
    admin_query_strings(
        &app.shared.admin_url,
        &format!(
            "UPDATE oauth_connections SET token_endpoint = '{}/__tamper/token' WHERE slug = 'initech-sso'",
            op.issuer
        ),
    )
    .await;
    op.next_account_in("sub-frank", "frank@initech.test", true, &[]).await;
    let (st, _, body) = sso_sign_in(&app, &s, "frank@initech.test").await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(admin_query_strings(&app.shared.admin_url, "SELECT count(*) FROM users").await, users_before);

    let actions = audit_actions(&app).await;
    let count = |a: &str| actions.iter().filter(|x| x.starts_with(a)).count();
    assert_eq!(count("sso.signed_in:"), 5, "{actions:?}");
    assert!(
        actions.iter().any(|a| a == "sso.refused:the address is not at one of the organization's verified domains"),
        "{actions:?}"
    );
    assert!(
        actions.iter().any(|a| a == "sso.refused:this membership was deactivated by the organization"),
        "{actions:?}"
    );
    assert!(actions.iter().any(|a| a == "sso.refused:the provider's id_token does not verify"), "{actions:?}");
    assert!(actions.iter().any(|a| a == "user.sign_in_failed:sso_required"), "{actions:?}");
    assert_eq!(count("membership.added:"), 4, "dave by the API; alice, grace and carol by single sign-on: {actions:?}");
    assert_eq!(count("membership.updated:"), 2, "alice's role by her groups, then deactivated: {actions:?}");
    // The stream tells apps the same.
    let events = admin_query_strings(
        &app.shared.admin_url,
        "SELECT type FROM events WHERE type LIKE 'membership.%' ORDER BY position",
    )
    .await;
    assert_eq!(events.iter().filter(|e| *e == "membership.added").count(), 4, "{events:?}");

    // Deleting the organization takes its connection with it; the project-wide one stays.
    let (st, _) = api(&app, &s, Method::DELETE, &format!("/organizations/{initech}"), Value::Null).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (_, list) = api(&app, &s, Method::GET, "/oauth-connections", Value::Null).await;
    let slugs: Vec<&str> = list["data"].as_array().unwrap().iter().map(|c| c["slug"].as_str().unwrap()).collect();
    assert_eq!(slugs, vec!["corp-idp"]);
    // (Recorded through the shared database's outbox, forwarded to the log shortly.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let deleted = admin_query_strings(
            &app.shared.admin_url,
            "SELECT metadata->>'slug' FROM audit_events WHERE action = 'connection.deleted'",
        )
        .await;
        if !deleted.is_empty() {
            assert_eq!(deleted, vec!["initech-sso"]);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the deletion is audited");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The hosted page's single sign-on in a real browser (headless Chromium through
/// `tests/browser/sso.mjs`): a work address typed, through the organization's provider, back
/// to the app with a code whose tokens are the new member's.
#[tokio::test]
async fn single_sign_on_from_the_hosted_page_in_a_real_browser() {
    use reqwest::Method;
    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run `npm ci --prefix {}` (scripts/test does)",
        browser_dir.display()
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(std::path::Path::new(&chromium).exists(), "{chromium} is missing (scripts/test installs it)");
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let op = Op::start(&app.url("/oauth/callback")).await;
    admin_query_strings(
        &app.shared.admin_url,
        &format!("INSERT INTO redirect_uris VALUES ('{}', '{}', '{APP_CB}', now())", s.tenant.id, s.project.id),
    )
    .await;
    let (st, _) =
        api(&app, &s, Method::POST, "/roles", json!({"slug": "member", "name": "Member", "is_default": true})).await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, o) = api(&app, &s, Method::POST, "/organizations", json!({"name": "Initech", "slug": "initech"})).await;
    assert_eq!(st, StatusCode::CREATED);
    let org = o["id"].as_str().unwrap().to_owned();
    let (st, _) =
        api(&app, &s, Method::POST, &format!("/organizations/{org}/domains"), json!({"domain": "initech.test"})).await;
    assert_eq!(st, StatusCode::CREATED);
    admin_query_strings(&app.shared.admin_url, "UPDATE organization_domains SET verified_at = now()").await;
    let (st, c) = api(
        &app,
        &s,
        Method::POST,
        "/oauth-connections",
        json!({
            "slug": "initech-sso", "kind": "oidc", "display_name": "Initech IdP", "issuer": op.issuer,
            "client_id": "authio-test-client", "client_secret": "a secret: with & odd characters",
            "organization_id": org,
        }),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{c}");
    op.next_account("sub-ann", "ann@initech.test", false).await;

    let q = serde_urlencoded::to_string([
        ("redirect_uri", APP_CB),
        ("state", "xyz"),
        ("code_challenge", &challenge()),
        ("code_challenge_method", "S256"),
    ])
    .unwrap();
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("hosted-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let cfg = json!({
        "shots": shots,
        "signin_url": app.url(&format!("/p/{}/signin?{q}", s.project.id)),
        "email": "ann@initech.test",
        "app_callback": APP_CB,
    });
    let run = tokio::process::Command::new("node")
        .arg("sso.mjs")
        .current_dir(&browser_dir)
        .env("AUTHIO_SSO_TEST", cfg.to_string())
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run).await.expect("the browser run finished").unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser run failed:\n{stderr}\n{stdout}");
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap();
    let location = format!("{APP_CB}?code={}&state=xyz", report["code"].as_str().unwrap());
    let (st, tokens) = exchange(&app, &location).await;
    assert_eq!(st, StatusCode::OK, "{tokens}");
    let ann = crate::identity::claims_of(tokens["access_token"].as_str().unwrap())["sub"].as_str().unwrap().to_owned();
    let (_, members) = api(&app, &s, Method::GET, &format!("/organizations/{org}/members"), Value::Null).await;
    let m = &members["data"][0];
    assert_eq!((m["user_id"].as_str(), m["role"].as_str()), (Some(ann.as_str()), Some("member")), "{members}");
}
