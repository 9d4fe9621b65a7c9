//! Clients the project's administrators did not register: RFC 7591 dynamic registration (and
//! RFC 7592's read and delete), Client ID Metadata Documents fetched without reaching private
//! addresses, protected resources binding `aud`, the consent page, connected apps and their
//! revocation, and blocking a client.
use authio_core::types::Plan;
use authio_db::TenantKind;
use authio_testkit::{admin_query_strings, seed_tenant, spawn_app, Seeded, TestApp};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::oidc_provider::{absolute, authorize_url, hidden, query_of, user, Browser, PASSWORD};

const AGENT_CB: &str = "http://127.0.0.1:7777/callback";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const RESOURCE_A: &str = "https://api.acme.test/mcp";
const RESOURCE_B: &str = "https://billing.acme.test/mcp";

fn challenge() -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER.as_bytes()))
}

fn claims(jwt: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(jwt.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

async fn patch_presentation(app: &TestApp, s: &Seeded, body: Value) {
    let r = app
        .http
        .patch(app.url(&format!("/v1/projects/{}/presentation", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
}

async fn declare(app: &TestApp, s: &Seeded, uri: &str, scopes: &[&str]) {
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{}/resources", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .json(&json!({"uri": uri, "scopes": scopes}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
}

async fn token(app: &TestApp, s: &Seeded, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let r = app.http.post(app.url(&format!("/p/{}/oauth2/token", s.project.id))).form(form).send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

/// How many events of `action` the audit log has once it holds `expected` (events of acts on
/// the shared database reach the home through the relayed outbox, a moment later).
async fn actions(app: &TestApp, action: &str, expected: usize) -> usize {
    let count = || async {
        admin_query_strings(
            &app.shared.admin_url,
            &format!("SELECT count(*) FROM audit_events WHERE action = '{action}'"),
        )
        .await[0]
            .parse::<usize>()
            .unwrap()
    };
    for _ in 0..100 {
        if count().await >= expected {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    count().await
}

/// Sign in on the hosted page the authorization request sent the browser to, answer the
/// consent page (`allow` or `deny`), and return where the browser ends up.
async fn sign_in_and_consent(app: &TestApp, b: &mut Browser, auth: &str, email: &str, decision: &str) -> String {
    let (st, location, body) = b.get(auth).await;
    assert_eq!(st, StatusCode::SEE_OTHER, "{body}");
    let mut location = location.unwrap();
    if location.contains("/signin?") {
        let (_, _, page) = b.get(&absolute(app, &location)).await;
        let action =
            page.split("<form method=\"post\" action=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
        let (st, back, _) = b
            .post(
                &app.url(&action),
                &[
                    ("csrf", &hidden(&page, "csrf")),
                    ("return_to", &hidden(&page, "return_to")),
                    ("email", email),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(st, StatusCode::SEE_OTHER);
        let (st, next, body) = b.get(&absolute(app, &back.unwrap())).await;
        assert_eq!(st, StatusCode::SEE_OTHER, "{body}");
        location = next.unwrap();
    }
    if location.contains("/consent?") {
        let (st, _, page) = b.get(&absolute(app, &location)).await;
        assert_eq!(st, StatusCode::OK, "{page}");
        assert!(page.contains("unverified"), "the client's own words are marked as such: {page}");
        let (st, back, _) = b
            .post(
                &app.url(&location[..location.find('?').unwrap()]),
                &[("csrf", &hidden(&page, "csrf")), ("return_to", &hidden(&page, "return_to")), ("decision", decision)],
            )
            .await;
        assert_eq!(st, StatusCode::SEE_OTHER);
        let back = back.unwrap();
        if back.starts_with("http") {
            return back;
        }
        let (st, next, body) = b.get(&absolute(app, &back)).await;
        assert_eq!(st, StatusCode::SEE_OTHER, "{body}");
        location = next.unwrap();
    }
    location
}

#[tokio::test]
async fn dynamic_registration_consent_resource_audiences_revocation_and_blocking() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let pid = s.project.id;
    let register_url = app.url(&format!("/p/{pid}/oauth2/register"));
    // Off by default: nothing to register with, and nothing advertised.
    let r = app.http.post(&register_url).json(&json!({"redirect_uris": [AGENT_CB]})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    patch_presentation(&app, &s, json!({"dynamic_registration": true})).await;
    let meta: Value = app
        .http
        .get(app.url(&format!("/.well-known/oauth-authorization-server/p/{pid}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["registration_endpoint"], format!("{}/p/{pid}/oauth2/register", app.base_url));

    // Public clients only, unless the project allows confidential ones.
    let r = app
        .http
        .post(&register_url)
        .json(&json!({"redirect_uris": [AGENT_CB], "token_endpoint_auth_method": "client_secret_basic"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client_metadata");
    let r = app.http.post(&register_url).json(&json!({"redirect_uris": ["not a uri"]})).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_redirect_uri");
    let r = app
        .http
        .post(&register_url)
        .json(&json!({"redirect_uris": [AGENT_CB], "client_name": "Research Agent", "logo_uri": "https://agent.test/l.png",
                      "some_unknown_metadata": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let reg: Value = r.json().await.unwrap();
    let client_id = reg["client_id"].as_str().unwrap().to_owned();
    assert_eq!(reg["token_endpoint_auth_method"], "none");
    assert!(reg.get("client_secret").is_none());
    let reg_token = reg["registration_access_token"].as_str().unwrap().to_owned();
    let reg_uri = reg["registration_client_uri"].as_str().unwrap().to_owned();
    // RFC 7592: read with the registration token; a wrong one says nothing.
    let r = app.http.get(&reg_uri).bearer_auth(&reg_token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["client_name"], "Research Agent");
    let r = app.http.get(&reg_uri).bearer_auth("rat_wrong").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    declare(&app, &s, RESOURCE_A, &["mcp:tools"]).await;
    declare(&app, &s, RESOURCE_B, &["billing:read"]).await;
    user(&app, &s, "ann@acme.test").await;
    let ch = challenge();
    let auth_for = |resource: &str, scope: &str, state: &str| {
        authorize_url(
            &app,
            &s,
            &[
                ("client_id", client_id.as_str()),
                ("redirect_uri", AGENT_CB),
                ("response_type", "code"),
                ("scope", scope),
                ("state", state),
                ("resource", resource),
                ("code_challenge", ch.as_str()),
                ("code_challenge_method", "S256"),
            ],
        )
    };
    // An unknown resource, or another resource's scope, goes back as an error.
    let mut b = Browser::new();
    let (_, location, _) = b.get(&auth_for("https://unknown.acme.test/", "mcp:tools", "x")).await;
    assert_eq!(query_of(&location.unwrap())["error"], "invalid_target");
    let (_, location, _) = b.get(&auth_for(RESOURCE_A, "billing:read", "x")).await;
    assert_eq!(query_of(&location.unwrap())["error"], "invalid_scope");

    // Denied: the client hears access_denied.
    let to_client = sign_in_and_consent(
        &app,
        &mut b,
        &auth_for(RESOURCE_A, "mcp:tools offline_access", "d"),
        "ann@acme.test",
        "deny",
    )
    .await;
    assert!(to_client.starts_with(AGENT_CB), "{to_client}");
    assert_eq!(query_of(&to_client)["error"], "access_denied");
    // Allowed: a code, for a token whose audience is the resource (and no ID token without openid).
    let to_client = sign_in_and_consent(
        &app,
        &mut b,
        &auth_for(RESOURCE_A, "mcp:tools offline_access", "a"),
        "ann@acme.test",
        "allow",
    )
    .await;
    let q = query_of(&to_client);
    assert_eq!(q["state"], "a");
    let (st, tokens) = token(
        &app,
        &s,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", &client_id),
            ("code", &q["code"]),
            ("redirect_uri", AGENT_CB),
            ("code_verifier", VERIFIER),
            ("resource", RESOURCE_A),
        ],
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{tokens}");
    assert!(tokens.get("id_token").is_none() || tokens["id_token"].is_null());
    let access = claims(tokens["access_token"].as_str().unwrap());
    assert_eq!(access["aud"], RESOURCE_A);
    assert_eq!(access["client_id"], client_id);
    assert_eq!(access["scope"], "mcp:tools offline_access");
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    // An agent's token for the user is no key to the user's own account: factors stay theirs.
    let r =
        app.http.get(app.url("/v1/me/mfa")).bearer_auth(tokens["access_token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A refresh may not widen to another resource.
    let (st, body) = token(
        &app,
        &s,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", &client_id),
            ("refresh_token", &refresh),
            ("resource", RESOURCE_B),
        ],
    )
    .await;
    assert_eq!((st, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_target")), "{body}");
    let (st, body) =
        token(&app, &s, &[("grant_type", "refresh_token"), ("client_id", &client_id), ("refresh_token", &refresh)])
            .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    // The consent is remembered: the next request answers at once, and without `openid` (a
    // plain OAuth 2.1 request) the code brings a refresh token as OAuth does.
    let (_, location, _) = b.get(&auth_for(RESOURCE_A, "mcp:tools", "again")).await;
    let location = location.unwrap();
    assert!(location.starts_with(AGENT_CB), "{location}");
    let (st, plain) = token(
        &app,
        &s,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", &client_id),
            ("code", &query_of(&location)["code"]),
            ("redirect_uri", AGENT_CB),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{plain}");
    assert!(plain["refresh_token"].as_str().is_some_and(|r| r.starts_with("rt_")), "{plain}");
    // `prompt=consent` asks a third-party client's user again.
    let (_, location, _) = b.get(&format!("{}&prompt=consent", auth_for(RESOURCE_A, "mcp:tools", "p"))).await;
    let location = location.unwrap();
    assert!(location.contains("/consent?"), "{location}");
    assert!(!location.contains("prompt"), "the consent returns to the request without prompt: {location}");

    // A consent for the project itself does not stretch to a resource at the token endpoint.
    let plain_auth = authorize_url(
        &app,
        &s,
        &[
            ("client_id", client_id.as_str()),
            ("redirect_uri", AGENT_CB),
            ("response_type", "code"),
            ("scope", "openid"),
            ("state", "o"),
            ("code_challenge", ch.as_str()),
            ("code_challenge_method", "S256"),
        ],
    );
    let to_client = sign_in_and_consent(&app, &mut b, &plain_auth, "ann@acme.test", "allow").await;
    let (st, body) = token(
        &app,
        &s,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", &client_id),
            ("code", &query_of(&to_client)["code"]),
            ("redirect_uri", AGENT_CB),
            ("code_verifier", VERIFIER),
            ("resource", RESOURCE_A),
        ],
    )
    .await;
    assert_eq!((st, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_target")), "{body}");

    // The user's connected apps: revoking ends the grant's refresh tokens.
    let (st, _, page) = b.get(&app.url(&format!("/p/{pid}/account/apps"))).await;
    assert_eq!(st, StatusCode::OK);
    assert!(page.contains("Research Agent") && page.contains(RESOURCE_A), "{page}");
    // The grant for resource A (the client also holds one for the project itself).
    let section = page.split("<section").find(|sec| sec.contains(RESOURCE_A)).unwrap();
    let action = section.split("action=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let (st, _, page) = b.post(&app.url(&action), &[("csrf", &hidden(&page, "csrf"))]).await;
    assert_eq!(st, StatusCode::OK);
    assert!(page.contains("Access revoked") && !page.contains(RESOURCE_A), "{page}");
    assert!(page.contains("Research Agent"), "the other grant stays: {page}");
    let (st, body) =
        token(&app, &s, &[("grant_type", "refresh_token"), ("client_id", &client_id), ("refresh_token", &refresh)])
            .await;
    assert_eq!((st, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")), "{body}");
    // So consent is asked again.
    let (_, location, _) = b.get(&auth_for(RESOURCE_A, "mcp:tools", "b")).await;
    assert!(location.unwrap().contains("/consent?"));

    // The project's administrators see the client and block it.
    let clients: Value = app
        .http
        .get(app.url(&format!("/v1/projects/{pid}/oidc-clients")))
        .bearer_auth(&s.api_key.plaintext)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = clients["data"].as_array().unwrap().iter().find(|c| c["client_id"] == client_id.as_str()).unwrap();
    assert_eq!(listed["registration"], "dynamic");
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{pid}/oidc-clients/{}/block", listed["id"].as_str().unwrap())))
        .bearer_auth(&s.api_key.plaintext)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (st, _, page) = b.get(&auth_for(RESOURCE_A, "mcp:tools", "c")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(page.contains("blocked"), "{page}");

    // RFC 7592 delete: the registration is gone.
    let r = app.http.delete(&reg_uri).bearer_auth(&reg_token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app.http.get(&reg_uri).bearer_auth(&reg_token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    assert_eq!(actions(&app, "client.registered", 1).await, 1);
    assert_eq!(actions(&app, "consent.granted", 2).await, 2);
    assert_eq!(actions(&app, "consent.revoked", 1).await, 1);
    assert_eq!(actions(&app, "client.blocked", 1).await, 1);
}

/// Serve one JSON document over plain HTTP on loopback (the development project's allowance).
async fn serve_document(doc: impl Fn(&str) -> Value + Send + Sync + 'static) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let at = base.clone();
    let doc = std::sync::Arc::new(doc);
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let body = doc(&format!("{at}{}", uri.path())).to_string();
        async move { ([(axum::http::header::CONTENT_TYPE, "application/json")], body) }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

#[tokio::test]
async fn metadata_documents_are_fetched_safely_and_must_match_the_request() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let pid = s.project.id;
    let base = serve_document(|url| {
        if url.ends_with("/liar.json") {
            json!({"client_id": "https://someone-else.test/client.json", "redirect_uris": [AGENT_CB]})
        } else {
            json!({"client_id": url, "client_name": "Doc Agent", "redirect_uris": [AGENT_CB],
                   "token_endpoint_auth_method": "none"})
        }
    })
    .await;
    let doc = format!("{base}/client.json");
    let ch = challenge();
    let auth_for = |client_id: &str, redirect: &str| {
        authorize_url(
            &app,
            &s,
            &[
                ("client_id", client_id),
                ("redirect_uri", redirect),
                ("response_type", "code"),
                ("scope", "openid"),
                ("state", "s"),
                ("code_challenge", ch.as_str()),
                ("code_challenge_method", "S256"),
            ],
        )
    };
    let mut b = Browser::new();
    // Not accepted by the project: an unknown client.
    let (st, _, _) = b.get(&auth_for(&doc, AGENT_CB)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    patch_presentation(&app, &s, json!({"metadata_document_clients": true})).await;
    let meta: Value = app
        .http
        .get(app.url(&format!("/p/{pid}/.well-known/openid-configuration")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["client_id_metadata_document_supported"], true);
    // A production project: http, private and loopback addresses are refused before any fetch.
    for refused in
        [doc.as_str(), "https://10.1.2.3/client.json", "https://127.0.0.1/client.json", "https://[::1]/c.json"]
    {
        let (st, _, page) = b.get(&auth_for(refused, AGENT_CB)).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{refused}: {page}");
        assert!(page.contains("metadata document"), "{refused}: {page}");
    }
    assert_eq!(
        admin_query_strings(
            &app.shared.admin_url,
            "SELECT count(*) FROM oidc_clients WHERE registration = 'metadata_document'"
        )
        .await,
        ["0"]
    );

    // A development project may use loopback: the document is read and cached.
    patch_presentation(&app, &s, json!({"environment": "development"})).await;
    let (st, _, page) = b.get(&auth_for(&format!("{base}/liar.json"), AGENT_CB)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "a document must name its own URL: {page}");
    let (st, _, page) = b.get(&auth_for(&doc, "http://127.0.0.1:9999/elsewhere")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(page.contains("redirect_uri is not registered"), "{page}");
    user(&app, &s, "bo@acme.test").await;
    let to_client = sign_in_and_consent(&app, &mut b, &auth_for(&doc, AGENT_CB), "bo@acme.test", "allow").await;
    assert!(to_client.starts_with(AGENT_CB), "{to_client}");
    let (st, tokens) = token(
        &app,
        &s,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", &doc),
            ("code", &query_of(&to_client)["code"]),
            ("redirect_uri", AGENT_CB),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{tokens}");
    assert_eq!(claims(tokens["id_token"].as_str().unwrap())["aud"], doc);
    assert_eq!(
        admin_query_strings(
            &app.shared.admin_url,
            "SELECT name FROM oidc_clients WHERE registration = 'metadata_document'"
        )
        .await,
        ["Doc Agent"]
    );
    assert_eq!(actions(&app, "client.registered", 1).await, 1);
}

#[tokio::test]
async fn dynamic_registrations_nobody_used_expire_and_registration_is_limited_per_address() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    patch_presentation(&app, &s, json!({"dynamic_registration": true})).await;
    let register_url = app.url(&format!("/p/{}/oauth2/register", s.project.id));
    let register = || app.http.post(&register_url).json(&json!({"redirect_uris": [AGENT_CB]})).send();
    let used: Value = register().await.unwrap().json().await.unwrap();
    let unused: Value = register().await.unwrap().json().await.unwrap();
    // One is used by an authorization request; both are two days old.
    let (_, location, _) = Browser::new()
        .get(&authorize_url(
            &app,
            &s,
            &[
                ("client_id", used["client_id"].as_str().unwrap()),
                ("redirect_uri", AGENT_CB),
                ("response_type", "code"),
                ("scope", "openid"),
                ("code_challenge", challenge().as_str()),
                ("code_challenge_method", "S256"),
            ],
        ))
        .await;
    assert!(location.unwrap().contains("/signin?"));
    admin_query_strings(
        &app.shared.admin_url,
        "UPDATE oidc_clients SET created_at = now() - interval '2 days' WHERE registration = 'dynamic'",
    )
    .await;
    let provider = authio_core::oidc::Provider::new(app.identity.clone());
    assert_eq!(provider.registration_gc(chrono::Utc::now()).await.unwrap(), 1);
    let left =
        admin_query_strings(&app.shared.admin_url, "SELECT client_id FROM oidc_clients WHERE registration = 'dynamic'")
            .await;
    assert_eq!(left, [used["client_id"].as_str().unwrap()]);
    assert_ne!(left[0], unused["client_id"].as_str().unwrap());
    // Twenty registrations per address per hour (two made above).
    for _ in 0..18 {
        assert_eq!(register().await.unwrap().status(), StatusCode::CREATED);
    }
    let r = register().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
}
