//! Invitations (through the real SMTP receiver and the hosted accept page), organization-own
//! roles, the hosted organization picker, and impersonation, over real HTTP.
use std::time::Duration;

use authio_core::types::Plan;
use authio_db::TenantKind;
use authio_testkit::{admin_query_strings, seed_tenant, spawn_app, Seeded, TestApp};
use openidconnect::PkceCodeChallenge;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::identity::{claims_of, introspect, issuer, jwks, verify_independently};
use crate::oidc_provider::{
    absolute, authorize_url, confidential, hidden, query_of, sign_in_through, user, Browser, CB, PASSWORD,
};

async fn call(app: &TestApp, s: &Seeded, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    call_as(app, &s.api_key.plaintext, s.project.id, method, path, body).await
}

async fn call_as(
    app: &TestApp,
    bearer: &str,
    project: uuid::Uuid,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = app.http.request(method, app.url(&format!("/v1/projects/{project}{path}"))).bearer_auth(bearer);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

fn code_of(body: &Value) -> Option<&str> {
    body["error"]["code"].as_str()
}

/// The accept link in the `seen`-th next invitation email to `to`.
async fn invitation_link(app: &TestApp, to: &str, seen: usize) -> (String, String) {
    let m = app.mail.wait_for(to, seen, Duration::from_secs(10)).await.expect("the invitation arrives over SMTP");
    let text = m.text();
    let at = text.find("http").unwrap_or_else(|| panic!("a link in {text}"));
    let link: String = text[at..].chars().take_while(|c| !c.is_whitespace()).collect();
    (m.header("subject").unwrap_or_default(), link)
}

fn token_of(link: &str) -> String {
    query_of(link)["token"].clone()
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    admin_query_strings(&app.shared.admin_url, sql).await[0].parse().unwrap()
}

async fn setup_org(app: &TestApp, s: &Seeded, name: &str, slug: &str) -> String {
    let (st, org) = call(app, s, Method::POST, "/organizations", Some(json!({"name": name, "slug": slug}))).await;
    assert_eq!(st, StatusCode::CREATED, "{org}");
    org["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn invitations_arrive_by_smtp_work_once_expire_and_admit_only_their_address() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let pid = s.project.id;
    // Invite-only: nobody signs up by themselves; an invitation admits its address.
    let r = app
        .http
        .patch(app.url(&format!("/v1/projects/{pid}/presentation")))
        .bearer_auth(&s.api_key.plaintext)
        .json(&json!({"signup_policy": "invite_only"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (st, _) =
        call(&app, &s, Method::POST, "/roles", Some(json!({"slug": "member", "name": "Member", "is_default": true})))
            .await;
    assert_eq!(st, StatusCode::CREATED);
    let org = setup_org(&app, &s, "Initech", "initech").await;
    let inv_path = format!("/organizations/{org}/invitations");

    // Bad input: nothing is written.
    for (body, status, code) in [
        (json!({"email": "not-an-address"}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_email"),
        (json!({"email": "new@example.com", "role": "nope"}), StatusCode::NOT_FOUND, "role_not_found"),
        (
            json!({"email": "new@example.com", "expires_in_days": 31}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (json!({"email": "new@example.com", "extra": 1}), StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
    ] {
        let (st, b) = call(&app, &s, Method::POST, &inv_path, Some(body.clone())).await;
        assert_eq!((st, code_of(&b)), (status, Some(code)), "{body}: {b}");
    }
    assert_eq!(count(&app, "SELECT count(*) FROM invitations").await, 0);

    // An invitation: pending, its email sent through the outbox, its token stored hashed.
    let (st, inv) = call(&app, &s, Method::POST, &inv_path, Some(json!({"email": "New@Example.com"}))).await;
    assert_eq!(st, StatusCode::CREATED, "{inv}");
    assert_eq!(
        (inv["status"].as_str(), inv["email"].as_str(), inv["role"].as_str()),
        (Some("pending"), Some("new@example.com"), Some("member"))
    );
    let (st, dup) = call(&app, &s, Method::POST, &inv_path, Some(json!({"email": "new@example.com"}))).await;
    assert_eq!((st, code_of(&dup)), (StatusCode::CONFLICT, Some("conflict")));
    let (subject, link) = invitation_link(&app, "new@example.com", 0).await;
    assert!(subject.contains("Initech"), "{subject}");
    assert!(link.starts_with(&app.url(&format!("/p/{pid}/invitations/accept?token=inv_"))), "{link}");
    let token = token_of(&link);
    assert_eq!(
        count(&app, &format!("SELECT count(*) FROM invitations WHERE token_hash = sha256('{token}'::bytea)")).await,
        1
    );
    assert_eq!(
        count(&app, &format!("SELECT count(*) FROM invitations WHERE position('{token}' IN email) > 0")).await,
        0
    );

    // Signing up by password alone proves nothing: still refused under invite-only.
    let r = app
        .http
        .post(app.url("/v1/auth/signup"))
        .json(&json!({"project_id": pid, "email": "new@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // The hosted page: no account yet, so it offers to make one; accepting signs in.
    let mut b = Browser::new();
    let (st, _, html) = b.get(&link).await;
    assert_eq!(st, StatusCode::OK, "{html}");
    assert!(html.contains("Initech") && html.contains("new@example.com"), "{html}");
    assert!(html.contains("Create account and accept"), "{html}");
    let csrf = hidden(&html, "csrf");
    let accept = app.url(&format!("/p/{pid}/invitations/accept"));
    // Without its CSRF token the form does nothing.
    let (st, _, _) = b.post(&accept, &[("token", &token), ("password", PASSWORD)]).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _, html) = b.post(&accept, &[("csrf", &csrf), ("token", &token), ("password", PASSWORD)]).await;
    assert_eq!(st, StatusCode::OK, "{html}");
    assert!(html.contains("You joined Initech"), "{html}");
    assert!(b.cookies.contains_key("authio_op"), "signed in at the provider");
    let rows = admin_query_strings(
        &app.shared.admin_url,
        "SELECT u.email || ':' || u.email_verified || ':' || m.status || ':' || r.slug
           FROM users u JOIN memberships m ON m.user_id = u.id JOIN roles r ON r.id = m.role_id",
    )
    .await;
    assert_eq!(rows, vec!["new@example.com:true:active:member"]);
    // Another tenant's project does not know the token (each project reads its own rows).
    let other = seed_tenant(&app.shared, "globex", TenantKind::Customer, Plan::Pro).await;
    let foreign = app.url(&format!("/p/{}/invitations/accept?token={token}", other.project.id));
    assert_eq!(Browser::new().get(&foreign).await.0, StatusCode::NOT_FOUND);
    // Used once: the same link again is gone, and changes nothing.
    let (st, _, html) = b.post(&accept, &[("csrf", &csrf), ("token", &token), ("password", PASSWORD)]).await;
    assert_eq!(st, StatusCode::GONE, "{html}");
    assert_eq!(count(&app, "SELECT count(*) FROM users").await, 1);
    let (st, list) = call(&app, &s, Method::GET, &inv_path, None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list["data"][0]["status"], "accepted");
    assert!(list["data"][0]["accepted_by"].is_string());

    // An existing account signs in first (the page sends it to sign-in and back) and joins.
    app.identity.create_user_with_password(pid, "old@example.com", PASSWORD).await.unwrap();
    let (st, _) = call(&app, &s, Method::POST, &inv_path, Some(json!({"email": "old@example.com"}))).await;
    assert_eq!(st, StatusCode::CREATED);
    let (_, link) = invitation_link(&app, "old@example.com", 0).await;
    let mut old = Browser::new();
    let (st, _, html) = old.get(&link).await;
    assert_eq!(st, StatusCode::OK);
    assert!(html.contains("Sign in to accept") && !html.contains("Create account and accept"), "{html}");
    let signin =
        html.split("class=\"button\" href=\"").nth(1).unwrap().split('"').next().unwrap().replace("&amp;", "&");
    // The token waits in a cookie of the invitation page: it rides in no URL the sign-in keeps.
    assert!(!signin.contains("inv_"), "{signin}");
    assert!(old.cookies.contains_key("authio_invite"));
    let (st, _, html) = old.get(&absolute(&app, &signin)).await;
    assert_eq!(st, StatusCode::OK, "{html}");
    let (csrf, return_to) = (hidden(&html, "csrf"), hidden(&html, "return_to"));
    let (st, back, body) = old
        .post(
            &app.url(&format!("/p/{pid}/signin")),
            &[("csrf", &csrf), ("return_to", &return_to), ("email", "old@example.com"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(st, StatusCode::SEE_OTHER, "{body}");
    let (st, _, html) = old.get(&absolute(&app, &back.unwrap())).await;
    assert_eq!(st, StatusCode::OK);
    assert!(html.contains("Accept the invitation"), "{html}");
    let (st, _, html) = old.post(&accept, &[("csrf", &hidden(&html, "csrf")), ("token", &token_of(&link))]).await;
    assert_eq!(st, StatusCode::OK, "{html}");

    // Someone signed in with another address cannot take an invitation: it stays pending.
    let (st, carol) = call(&app, &s, Method::POST, &inv_path, Some(json!({"email": "carol@example.com"}))).await;
    assert_eq!(st, StatusCode::CREATED);
    let (_, carol_link) = invitation_link(&app, "carol@example.com", 0).await;
    let (_, _, html) = old.get(&carol_link).await;
    let (st, _, html) = old.post(&accept, &[("csrf", &hidden(&html, "csrf")), ("token", &token_of(&carol_link))]).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{html}");
    assert!(html.contains("another email address"), "{html}");
    // Revoked, its link is gone; revoking twice is fine; an accepted one cannot be revoked.
    let carol_path = format!("{inv_path}/{}", carol["id"].as_str().unwrap());
    let (st, r) = call(&app, &s, Method::DELETE, &carol_path, None).await;
    assert_eq!((st, r["status"].as_str()), (StatusCode::OK, Some("revoked")));
    assert_eq!(call(&app, &s, Method::DELETE, &carol_path, None).await.0, StatusCode::OK);
    let (st, _, _) = old.get(&carol_link).await;
    assert_eq!(st, StatusCode::GONE);
    let (st, r) = call(&app, &s, Method::POST, &format!("{carol_path}/resend"), Some(json!({}))).await;
    assert_eq!((st, code_of(&r)), (StatusCode::GONE, Some("invitation_revoked")));
    let (st, r) = call(&app, &s, Method::DELETE, &format!("{inv_path}/{}", inv["id"].as_str().unwrap()), None).await;
    assert_eq!((st, code_of(&r)), (StatusCode::GONE, Some("invitation_used")));

    // Resent: a new link, the old one stops working.
    let (_, dave) = call(&app, &s, Method::POST, &inv_path, Some(json!({"email": "dave@example.com"}))).await;
    let (_, first) = invitation_link(&app, "dave@example.com", 0).await;
    let (st, resent) = call(
        &app,
        &s,
        Method::POST,
        &format!("{inv_path}/{}/resend", dave["id"].as_str().unwrap()),
        Some(json!({"expires_in_days": 2})),
    )
    .await;
    assert_eq!((st, resent["sent_count"].as_i64()), (StatusCode::OK, Some(2)), "{resent}");
    let (_, second) = invitation_link(&app, "dave@example.com", 1).await;
    assert_ne!(token_of(&first), token_of(&second));
    assert_eq!(Browser::new().get(&first).await.0, StatusCode::NOT_FOUND);
    assert_eq!(Browser::new().get(&second).await.0, StatusCode::OK);
    // After its expiry the link is gone (410 on the page), and a new invitation may be sent.
    admin_query_strings(
        &app.shared.admin_url,
        "UPDATE invitations SET expires_at = now() - interval '1 minute' WHERE email = 'dave@example.com'",
    )
    .await;
    let (st, _, html) = Browser::new().get(&second).await;
    assert_eq!(st, StatusCode::GONE);
    assert!(html.contains("expired"), "{html}");
    let (st, _) = call(&app, &s, Method::POST, &inv_path, Some(json!({"email": "dave@example.com"}))).await;
    assert_eq!(st, StatusCode::CREATED);

    // An invited address may also sign up by a method that proves it (an email code).
    let (st, _) = call(&app, &s, Method::POST, &inv_path, Some(json!({"email": "erin@example.com"}))).await;
    assert_eq!(st, StatusCode::CREATED);
    let r = app
        .http
        .post(app.url("/v1/auth/email-code"))
        .json(&json!({"project_id": pid, "email": "erin@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let m = app.mail.wait_for("erin@example.com", 1, Duration::from_secs(10)).await.expect("a code arrives");
    assert!(m.header("subject").unwrap_or_default().contains("code"));

    // Everything is in the audit log.
    let actions = admin_query_strings(
        &app.shared.admin_url,
        "SELECT action || ':' || count(*) FROM audit_events WHERE action LIKE 'invitation.%' GROUP BY action ORDER BY action",
    )
    .await;
    assert_eq!(
        actions,
        vec!["invitation.accepted:2", "invitation.resent:1", "invitation.revoked:1", "invitation.sent:6"],
    );
}

#[tokio::test]
async fn organization_roles_stay_in_their_organization_and_the_picker_lets_members_choose() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    user(&app, &s, "rita@example.com").await;
    let rita = admin_query_strings(&app.shared.admin_url, "SELECT id::text FROM users").await[0].clone();
    let (st, _) =
        call(&app, &s, Method::POST, "/roles", Some(json!({"slug": "member", "name": "Member", "is_default": true})))
            .await;
    assert_eq!(st, StatusCode::CREATED);
    let initech = setup_org(&app, &s, "Initech", "initech").await;
    let hooli = setup_org(&app, &s, "Hooli", "hooli").await;

    // Hooli's own role: assignable in Hooli only, never the default.
    let (st, r) = call(
        &app,
        &s,
        Method::POST,
        "/roles",
        Some(json!({"slug": "hooli-admin", "name": "Hooli admin", "organization_id": hooli, "is_default": true})),
    )
    .await;
    assert_eq!((st, code_of(&r)), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_request")));
    let (st, own) = call(
        &app,
        &s,
        Method::POST,
        "/roles",
        Some(json!({"slug": "hooli-admin", "name": "Hooli admin", "organization_id": hooli})),
    )
    .await;
    assert_eq!((st, own["organization_id"].as_str()), (StatusCode::CREATED, Some(hooli.as_str())));
    let (st, r) = call(
        &app,
        &s,
        Method::POST,
        &format!("/organizations/{initech}/members"),
        Some(json!({"user_id": rita, "role": "hooli-admin"})),
    )
    .await;
    assert_eq!((st, code_of(&r)), (StatusCode::NOT_FOUND, Some("role_not_found")));
    let (st, _) =
        call(&app, &s, Method::POST, &format!("/organizations/{initech}/members"), Some(json!({"user_id": rita})))
            .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, m) = call(
        &app,
        &s,
        Method::POST,
        &format!("/organizations/{hooli}/members"),
        Some(json!({"user_id": rita, "role": "hooli-admin"})),
    )
    .await;
    assert_eq!((st, m["role"].as_str()), (StatusCode::CREATED, Some("hooli-admin")));
    let (_, roles) = call(&app, &s, Method::GET, &format!("/roles?organization_id={initech}"), None).await;
    let slugs: Vec<&str> = roles["data"].as_array().unwrap().iter().map(|r| r["slug"].as_str().unwrap()).collect();
    assert_eq!(slugs, vec!["member"]);
    let (_, roles) = call(&app, &s, Method::GET, &format!("/roles?organization_id={hooli}"), None).await;
    assert_eq!(roles["data"].as_array().unwrap().len(), 2);
    let (st, r) = call(&app, &s, Method::GET, "/roles?organization_id=nope", None).await;
    assert_eq!((st, code_of(&r)), (StatusCode::BAD_REQUEST, Some("invalid_query")));

    // The picker: scope `organization` without one named, and two to choose from.
    let (id, secret) = confidential(&app, &s).await;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let url = authorize_url(
        &app,
        &s,
        &[
            ("response_type", "code"),
            ("client_id", id.as_str()),
            ("redirect_uri", CB),
            ("scope", "openid organization"),
            ("state", "st"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ],
    );
    let mut b = Browser::new();
    let picker = sign_in_through(&app, &mut b, &url, "rita@example.com").await;
    assert!(picker.contains("/organizations/select?return_to="), "{picker}");
    let (st, _, html) = b.get(&absolute(&app, &picker)).await;
    assert_eq!(st, StatusCode::OK, "{html}");
    assert!(html.contains("Initech") && html.contains("Hooli"), "{html}");
    // A return address off the authorization endpoint is refused.
    let (st, _, _) =
        b.get(&app.url(&format!("/p/{}/organizations/select?return_to=https://evil.example.com/", s.project.id))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // A request that may not interact is told so (OIDC Core 3.1.2.6) rather than shown the picker.
    let (st, silent, _) = b.get(&format!("{url}&prompt=none")).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    assert_eq!(query_of(&silent.unwrap())["error"], "interaction_required");
    let (csrf, return_to) = (hidden(&html, "csrf"), hidden(&html, "return_to"));
    let (st, back, _) = b
        .post(
            &app.url(&format!("/p/{}/organizations/select", s.project.id)),
            &[("csrf", &csrf), ("return_to", &return_to), ("organization", &hooli)],
        )
        .await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let (st, to_client, _) = b.get(&absolute(&app, &back.unwrap())).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let code = query_of(&to_client.unwrap())["code"].clone();
    let r = app
        .http
        .post(app.url(&format!("/p/{}/oauth2/token", s.project.id)))
        .basic_auth(&id, Some(&secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", CB),
            ("code_verifier", verifier.secret().as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    assert_eq!(claims_of(t["id_token"].as_str().unwrap())["org_id"].as_str(), Some(hooli.as_str()));
    assert_eq!(claims_of(t["access_token"].as_str().unwrap())["role"], "hooli-admin");

    // With one membership left there is no choice to make: it is taken.
    let (st, _) = call(&app, &s, Method::DELETE, &format!("/organizations/{hooli}/members/{rita}"), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, back, _) = b.get(&url).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let back = back.unwrap();
    assert!(back.starts_with(CB), "{back}");
    // Deleting Hooli takes its own roles with it.
    let (st, _) = call(&app, &s, Method::DELETE, &format!("/organizations/{hooli}"), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(count(&app, "SELECT count(*) FROM roles WHERE slug = 'hooli-admin'").await, 0);
}

#[tokio::test]
async fn impersonation_is_for_operators_short_carries_act_and_is_audited_at_start_and_end() {
    let app = spawn_app().await;
    let platform = seed_tenant(&app.shared, "platform", TenantKind::Platform, Plan::Enterprise).await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    for email in ["op@authio.test", "member@authio.test"] {
        app.identity.create_user_with_password(platform.project.id, email, PASSWORD).await.unwrap();
    }
    app.control.grant_operator(&authio_core::types::Email::parse("op@authio.test").unwrap()).await.unwrap();
    let r = app
        .http
        .post(app.url("/v1/auth/signin"))
        .json(&json!({"project_id": platform.project.id, "email": "op@authio.test", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let op: Value = r.json().await.unwrap();
    let op_token = op["access_token"].as_str().unwrap().to_owned();
    let op_id = claims_of(&op_token)["sub"].as_str().unwrap().to_owned();
    user(&app, &s, "rita@example.com").await;
    let rita =
        admin_query_strings(&app.shared.admin_url, "SELECT id::text FROM users WHERE email = 'rita@example.com'").await
            [0]
        .clone();
    let path = format!("/users/{rita}/impersonate");
    let reason = json!({"reason": "ticket 4711: the invoice page is blank", "minutes": 10});

    // A project API key is no person: refused.
    let (st, r) = call(&app, &s, Method::POST, &path, Some(reason.clone())).await;
    assert_eq!((st, code_of(&r)), (StatusCode::FORBIDDEN, Some("forbidden")), "{r}");
    // Bad input from an operator: 422, nothing started.
    for body in [json!({"reason": "x", "minutes": 61}), json!({"reason": "  "}), json!({"minutes": 5})] {
        let (st, r) = call_as(&app, &op_token, s.project.id, Method::POST, &path, Some(body.clone())).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {r}");
    }
    assert_eq!(count(&app, "SELECT count(*) FROM sessions WHERE impersonator IS NOT NULL").await, 0);
    // Platform users (operators, dashboard members) cannot be impersonated.
    let member =
        admin_query_strings(&app.shared.admin_url, "SELECT id::text FROM users WHERE email = 'member@authio.test'")
            .await[0]
            .clone();
    let (st, r) = call_as(
        &app,
        &op_token,
        platform.project.id,
        Method::POST,
        &format!("/users/{member}/impersonate"),
        Some(reason.clone()),
    )
    .await;
    assert_eq!((st, code_of(&r)), (StatusCode::FORBIDDEN, Some("impersonation_refused")), "{r}");

    // The operator starts one: tokens as Rita, `act` naming the operator, at most the asked
    // ten minutes, verified through the JWKS by an independent JOSE implementation.
    let (st, imp) = call_as(&app, &op_token, s.project.id, Method::POST, &path, Some(reason.clone())).await;
    assert_eq!(st, StatusCode::CREATED, "{imp}");
    let access = imp["access_token"].as_str().unwrap();
    verify_independently(&jwks(&app, s.project.id).await, access, &issuer(&app, s.project.id)).unwrap();
    let c = claims_of(access);
    assert_eq!(c["sub"].as_str(), Some(rita.as_str()));
    assert_eq!(c["act"], json!({"sub": op_id}));
    assert!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap() <= 600);
    assert_eq!(c["amr"], json!([]), "no credential of hers was used");
    let ends = chrono::DateTime::parse_from_rfc3339(imp["ends_at"].as_str().unwrap()).unwrap();
    assert!(ends.timestamp() - chrono::Utc::now().timestamp() <= 600);
    // Resource servers can tell: introspection says who acts.
    assert_eq!(introspect(&app, &s, access).await["act"], json!({"sub": op_id}));
    // The session shows as impersonated, with its reason.
    let (_, sessions) = call(&app, &s, Method::GET, &format!("/users/{rita}/sessions"), None).await;
    assert_eq!(sessions["data"][0]["impersonator"].as_str(), Some(op_id.as_str()));
    assert_eq!(sessions["data"][0]["impersonation_reason"], reason["reason"]);
    // A refresh keeps `act`.
    let r = app
        .http
        .post(app.url("/v1/auth/token"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", imp["refresh_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let refreshed: Value = r.json().await.unwrap();
    assert_eq!(claims_of(refreshed["access_token"].as_str().unwrap())["act"], json!({"sub": op_id}));
    // The database refuses an impersonation longer than an hour, whatever asks.
    let long = admin_query_strings(
        &app.shared.admin_url,
        "DO $$ BEGIN UPDATE sessions SET absolute_expires_at = created_at + interval '61 minutes'
           WHERE impersonator IS NOT NULL; EXCEPTION WHEN check_violation THEN RAISE NOTICE 'refused'; END $$",
    )
    .await;
    assert!(long.is_empty());
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM sessions
              WHERE impersonator IS NOT NULL AND absolute_expires_at > created_at + interval '60 minutes'"
        )
        .await,
        0
    );

    // A tenant owner may impersonate too (the dashboard's principal); an admin may not.
    let target = authio_core::authz::Target::Project {
        tenant_id: s.tenant.id,
        project_id: s.project.id,
        tenant_kind: TenantKind::Customer,
    };
    let member = |role| authio_core::authz::Principal::Member {
        tenant_id: s.tenant.id,
        user_id: uuid::Uuid::from_u128(0x0e),
        email: "owner@acme.test".into(),
        role,
    };
    let admin = authio_core::authz::authorize(
        &member(authio_core::authz::MemberRole::Admin),
        authio_core::authz::Permission::UsersImpersonate,
        &target,
    );
    assert!(matches!(admin, Err(authio_core::CoreError::Forbidden(_))));
    let owner = authio_core::authz::authorize(
        &member(authio_core::authz::MemberRole::Owner),
        authio_core::authz::Permission::UsersImpersonate,
        &target,
    )
    .unwrap();
    let by_owner = app
        .identity
        .impersonate(
            &owner,
            rita.parse().unwrap(),
            &authio_core::identity::impersonation::NewImpersonation { reason: "support".into(), minutes: Some(5) },
            &authio_core::types::ClientInfo::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        claims_of(&by_owner.tokens.access_token)["act"],
        json!({"sub": uuid::Uuid::from_u128(0x0e).to_string()})
    );

    // Ending it: the session is revoked, its refresh refused, and the end audited.
    let sid = imp["session_id"].as_str().unwrap();
    let (st, _) = call(&app, &s, Method::DELETE, &format!("/sessions/{sid}"), None).await;
    assert_eq!(st, StatusCode::OK);
    let r = app
        .http
        .post(app.url("/v1/auth/token"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", refreshed["refresh_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(introspect(&app, &s, refreshed["access_token"].as_str().unwrap()).await["active"], false);
    let events = admin_query_strings(
        &app.shared.admin_url,
        "SELECT action || ':' || actor_type || ':' || coalesce(metadata->>'reason', '') FROM audit_events
          WHERE action LIKE 'impersonation.%' AND metadata->>'session_id' = (SELECT id::text FROM sessions
                WHERE impersonator IS NOT NULL ORDER BY id LIMIT 1) ORDER BY seq",
    )
    .await;
    assert_eq!(
        events,
        vec![
            "impersonation.started:operator:ticket 4711: the invoice page is blank".to_owned(),
            "impersonation.ended:api_key:revoked".to_owned(),
        ]
    );

    // One that runs out is marked ended and audited by the expiry sweep, once.
    let tenants = [(s.tenant.id, TenantKind::Customer), (platform.tenant.id, TenantKind::Platform)];
    assert_eq!(app.identity.end_expired_impersonations(&tenants, chrono::Utc::now()).await, 0);
    admin_query_strings(
        &app.shared.admin_url,
        &format!(
            "UPDATE sessions SET created_at = now() - interval '6 minutes', absolute_expires_at = now() - interval '1 minute',
                    idle_expires_at = now() - interval '1 minute' WHERE id = '{}'",
            by_owner.session_id
        ),
    )
    .await;
    assert_eq!(app.identity.end_expired_impersonations(&tenants, chrono::Utc::now()).await, 1);
    assert_eq!(app.identity.end_expired_impersonations(&tenants, chrono::Utc::now()).await, 0);
    let ended = admin_query_strings(
        &app.shared.admin_url,
        &format!(
            "SELECT actor_type || ':' || (metadata->>'reason') || ':' || (metadata->>'impersonator') FROM audit_events
              WHERE action = 'impersonation.ended' AND metadata->>'session_id' = '{}'",
            by_owner.session_id
        ),
    )
    .await;
    assert_eq!(ended, vec![format!("system:expired:{}", uuid::Uuid::from_u128(0x0e))]);
    let (_, sessions) = call(&app, &s, Method::GET, &format!("/users/{rita}/sessions"), None).await;
    let swept =
        sessions["data"].as_array().unwrap().iter().find(|x| x["id"] == by_owner.session_id.to_string()).unwrap();
    assert_eq!(swept["revoked_reason"], "impersonation_expired");
    // One ended by an act that does not audit it (a disabled user, say) is recorded by the
    // sweep with that reason, also once.
    let again = app
        .identity
        .impersonate(
            &owner,
            rita.parse().unwrap(),
            &authio_core::identity::impersonation::NewImpersonation { reason: "support".into(), minutes: Some(5) },
            &authio_core::types::ClientInfo::default(),
        )
        .await
        .unwrap();
    admin_query_strings(
        &app.shared.admin_url,
        &format!(
            "UPDATE sessions SET revoked_at = now(), revoked_reason = 'user_disabled' WHERE id = '{}'",
            again.session_id
        ),
    )
    .await;
    assert_eq!(app.identity.end_expired_impersonations(&tenants, chrono::Utc::now()).await, 1);
    assert_eq!(app.identity.end_expired_impersonations(&tenants, chrono::Utc::now()).await, 0);
    let reason = admin_query_strings(
        &app.shared.admin_url,
        &format!(
            "SELECT metadata->>'reason' FROM audit_events WHERE action = 'impersonation.ended'
              AND metadata->>'session_id' = '{}'",
            again.session_id
        ),
    )
    .await;
    assert_eq!(reason, vec!["user_disabled"]);
}

/// The hosted organization pages in a real browser (headless Chromium through
/// `tests/browser/hosted.mjs`): an invitation accepted by creating the account, one accepted
/// after signing in from its page, and the picker of an OpenID sign-in.
#[tokio::test]
async fn hosted_invitation_and_picker_pages_work_in_a_real_browser() {
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
    let (st, _) =
        call(&app, &s, Method::POST, "/roles", Some(json!({"slug": "member", "name": "Member", "is_default": true})))
            .await;
    assert_eq!(st, StatusCode::CREATED);
    let initech = setup_org(&app, &s, "Initech", "initech").await;
    let hooli = setup_org(&app, &s, "Hooli", "hooli").await;
    for email in ["member@example.com", "rita@example.com"] {
        user(&app, &s, email).await;
    }
    let id_of = |email: &'static str| {
        let url = app.shared.admin_url.clone();
        async move {
            admin_query_strings(&url, &format!("SELECT id::text FROM users WHERE email = '{email}'")).await[0].clone()
        }
    };
    let rita = id_of("rita@example.com").await;
    for org in [&initech, &hooli] {
        let (st, _) =
            call(&app, &s, Method::POST, &format!("/organizations/{org}/members"), Some(json!({"user_id": rita})))
                .await;
        assert_eq!(st, StatusCode::CREATED);
    }
    let mut links = Vec::new();
    for email in ["newcomer@example.com", "member@example.com"] {
        let (st, inv) = call(
            &app,
            &s,
            Method::POST,
            &format!("/organizations/{initech}/invitations"),
            Some(json!({"email": email})),
        )
        .await;
        assert_eq!(st, StatusCode::CREATED, "{inv}");
        links.push(invitation_link(&app, email, 0).await.1);
    }
    let (client_id, secret) = confidential(&app, &s).await;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let authorize = authorize_url(
        &app,
        &s,
        &[
            ("response_type", "code"),
            ("client_id", client_id.as_str()),
            ("redirect_uri", CB),
            ("scope", "openid organization"),
            ("state", "picker-state"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ],
    );
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("hosted-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let cfg = json!({
        "shots": shots,
        "password": PASSWORD,
        "newcomer_link": links[0],
        "member": {"email": "member@example.com", "link": links[1]},
        "picker": {"authorize_url": authorize, "email": "rita@example.com", "cb": CB, "pick": "Hooli"},
    });
    let run = tokio::process::Command::new("node")
        .arg("hosted.mjs")
        .current_dir(&browser_dir)
        .env("AUTHIO_HOSTED_TEST", cfg.to_string())
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run).await.expect("the browser run finished").unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser run failed (screenshots in {}):\n{stderr}\n{stdout}", shots.display());
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap();
    assert_eq!((report["newcomer_joined"].as_bool(), report["member_joined"].as_bool()), (Some(true), Some(true)));

    // Both are members of Initech now, with the default role; the invitations are used.
    let (_, members) = call(&app, &s, Method::GET, &format!("/organizations/{initech}/members"), None).await;
    let mut emails = Vec::new();
    for m in members["data"].as_array().unwrap() {
        assert_eq!((m["role"].as_str(), m["status"].as_str()), (Some("member"), Some("active")), "{m}");
        let uid = m["user_id"].as_str().unwrap();
        emails.extend(
            admin_query_strings(&app.shared.admin_url, &format!("SELECT email FROM users WHERE id = '{uid}'")).await,
        );
    }
    emails.sort();
    assert_eq!(emails, vec!["member@example.com", "newcomer@example.com", "rita@example.com"]);
    assert_eq!(count(&app, "SELECT count(*) FROM invitations WHERE accepted_at IS NOT NULL").await, 2);
    // The newcomer's address was proved by the invitation.
    let verified = admin_query_strings(
        &app.shared.admin_url,
        "SELECT email_verified::text FROM users WHERE email = 'newcomer@example.com'",
    )
    .await;
    assert_eq!(verified, vec!["true"]);

    // The picked organization is in the tokens the relying party gets for the code.
    let r = app
        .http
        .post(app.url(&format!("/p/{}/oauth2/token", s.project.id)))
        .basic_auth(&client_id, Some(&secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", report["code"].as_str().unwrap()),
            ("redirect_uri", CB),
            ("code_verifier", verifier.secret().as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let t: Value = r.json().await.unwrap();
    assert_eq!(claims_of(t["id_token"].as_str().unwrap())["org_id"].as_str(), Some(hooli.as_str()));
}

#[tokio::test]
async fn an_invited_new_account_enrols_a_second_factor_first_where_the_organization_requires_one() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let pid = s.project.id;
    let (st, _) =
        call(&app, &s, Method::POST, "/roles", Some(json!({"slug": "member", "name": "Member", "is_default": true})))
            .await;
    assert_eq!(st, StatusCode::CREATED);
    let org = setup_org(&app, &s, "Bank", "bank").await;
    let (st, body) =
        call(&app, &s, Method::PATCH, &format!("/organizations/{org}"), Some(json!({"mfa_required": true}))).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (st, _) = call(
        &app,
        &s,
        Method::POST,
        &format!("/organizations/{org}/invitations"),
        Some(json!({"email": "eva@example.com"})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    let (_, link) = invitation_link(&app, "eva@example.com", 0).await;
    let mut b = Browser::new();
    let (_, _, html) = b.get(&link).await;
    let accept = app.url(&format!("/p/{pid}/invitations/accept"));
    let (st, location, _) =
        b.post(&accept, &[("csrf", &hidden(&html, "csrf")), ("token", &token_of(&link)), ("password", PASSWORD)]).await;
    // Joined, but signed in only through the enrolment the organization requires.
    assert_eq!(st, StatusCode::SEE_OTHER);
    assert_eq!(location.unwrap(), format!("/p/{pid}/mfa/enrol"));
    assert!(!b.cookies.contains_key("authio_op"), "no provider session before the second factor");
    assert!(b.cookies.contains_key("authio_mfa"));
    assert_eq!(count(&app, "SELECT count(*) FROM memberships WHERE status = 'active'").await, 1);
}
