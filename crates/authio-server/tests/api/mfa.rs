//! Second factors over real HTTP: TOTP checked against an independent implementation
//! (`totp-rs`, computing codes from the enrolment URI), recovery codes, the lock after five
//! wrong codes, the project's and an organization's policy on every way in (the JSON API,
//! the hosted pages, the OpenID provider, refresh, magic links), and step-up with
//! `acr_values`.
use std::time::{SystemTime, UNIX_EPOCH};

use authio_core::types::Plan;
use authio_db::TenantKind;
use authio_testkit::{admin_query_strings, seed_tenant, spawn_app, Seeded, TestApp};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::oidc_provider::{absolute, authorize_url, confidential, hidden, query_of, user, Browser, CB, PASSWORD};

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The independent implementation: `totp-rs`, reading the `otpauth://` URI as an app does.
fn authenticator(uri: &str) -> totp_rs::TOTP {
    totp_rs::TOTP::from_url(uri).unwrap_or_else(|e| panic!("totp-rs reads {uri}: {e:?}"))
}

/// A JWT's payload.
fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn amr(jwt: &str) -> Vec<String> {
    claims(jwt)["amr"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

async fn post(app: &TestApp, path: &str, bearer: Option<&str>, body: Value) -> (StatusCode, Value) {
    let mut req = app.http.post(app.url(path)).json(&body);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let r = req.send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

async fn sign_in(app: &TestApp, s: &Seeded, email: &str) -> (StatusCode, Value) {
    post(app, "/v1/auth/signin", None, json!({"project_id": s.project.id, "email": email, "password": PASSWORD})).await
}

async fn verify(app: &TestApp, mfa_token: &str, answer: Value) -> (StatusCode, Value) {
    let mut body = json!({ "mfa_token": mfa_token });
    body.as_object_mut().unwrap().extend(answer.as_object().unwrap().clone());
    post(app, "/v1/auth/mfa/verify", None, body).await
}

/// Enrol an authenticator app for a signed-in user: the enrolment and the recovery codes.
async fn enrol_totp(app: &TestApp, access_token: &str) -> (String, Vec<String>) {
    let (st, e) = post(app, "/v1/me/mfa/totp", Some(access_token), json!({})).await;
    assert_eq!(st, StatusCode::CREATED, "{e}");
    assert!(e["qr_svg"].as_str().unwrap().starts_with("<svg"), "{e}");
    let uri = e["otpauth_uri"].as_str().unwrap().to_owned();
    assert!(uri.starts_with("otpauth://totp/Main:"), "{uri}");
    assert!(uri.contains(&format!("secret={}", e["secret"].as_str().unwrap())), "{uri}");
    let code = authenticator(&uri).generate(now());
    let id = e["factor_id"].as_str().unwrap();
    let (st, body) =
        post(app, &format!("/v1/me/mfa/totp/{id}/confirm"), Some(access_token), json!({"code": code})).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let codes: Vec<String> =
        body["recovery_codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    (uri, codes)
}

async fn actions(app: &TestApp, action: &str) -> Vec<Value> {
    admin_query_strings(
        &app.shared.admin_url,
        &format!("SELECT metadata::text FROM audit_events WHERE action = '{action}' ORDER BY seq"),
    )
    .await
    .iter()
    .map(|m| serde_json::from_str(m).unwrap())
    .collect()
}

#[tokio::test]
async fn totp_matches_an_independent_implementation_each_code_counts_once_and_recovery_codes_too() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    user(&app, &s, "ann@acme.test").await;
    // Without a factor: a session at once, one factor.
    let (st, first) = sign_in(&app, &s, "ann@acme.test").await;
    assert_eq!(st, StatusCode::OK, "{first}");
    let password_only = first["access_token"].as_str().unwrap().to_owned();
    assert_eq!(amr(&password_only), ["pwd"]);
    assert_eq!(claims(&password_only)["acr"], "aal1");

    let (uri, codes) = enrol_totp(&app, &password_only).await;
    assert_eq!(codes.len(), 10);
    let secret = admin_query_strings(&app.shared.admin_url, "SELECT totp_secret FROM mfa_factors").await;
    let b32 = uri.split("secret=").nth(1).unwrap().split('&').next().unwrap();
    assert!(!secret[0].contains(b32), "the secret is stored sealed, not as it is shown");

    // Now the password alone gets no session, only a token to continue with.
    let (st, waiting) = sign_in(&app, &s, "ann@acme.test").await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{waiting}");
    assert_eq!(waiting["error"]["code"], "mfa_required");
    assert!(waiting.get("access_token").is_none());
    assert_eq!(waiting["factors"], json!(["totp", "recovery_code"]));
    assert_eq!(waiting["enrolment_required"], false);
    let mfa_token = waiting["mfa_token"].as_str().unwrap();

    let (st, body) = verify(&app, mfa_token, json!({"code": "000000"})).await;
    assert_eq!((st, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")), "{body}");
    // The next step's code is good (RFC 6238 5.2: one step of drift either way; the step
    // before is shown in the unit tests, as here it was used up by the enrolment) ...
    let app_clock = authenticator(&uri);
    let t = now();
    let next = app_clock.generate(t + 30);
    let (st, body) = verify(&app, mfa_token, json!({"code": next})).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(amr(token), ["pwd", "otp", "mfa"]);
    assert_eq!(claims(token)["acr"], "aal2");
    // ... and the waiting sign-in is used up.
    let (st, body) = verify(&app, mfa_token, json!({"code": app_clock.generate(t + 30)})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");

    // The same code again is a replay; so is an earlier step's, even one within the window.
    let (_, waiting) = sign_in(&app, &s, "ann@acme.test").await;
    let (st, body) = verify(&app, waiting["mfa_token"].as_str().unwrap(), json!({"code": next})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "a used code is refused: {body}");
    let (st, _) = verify(&app, waiting["mfa_token"].as_str().unwrap(), json!({"code": app_clock.generate(t)})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // A recovery code (typed loosely) works once.
    let typed = codes[3].to_uppercase().replace('-', " ");
    let (st, body) = verify(&app, waiting["mfa_token"].as_str().unwrap(), json!({"recovery_code": typed})).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(amr(body["access_token"].as_str().unwrap()), ["pwd", "otp", "mfa"]);
    let with_mfa = body["access_token"].as_str().unwrap().to_owned();
    let (_, waiting) = sign_in(&app, &s, "ann@acme.test").await;
    let (st, _) = verify(&app, waiting["mfa_token"].as_str().unwrap(), json!({"recovery_code": codes[3]})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "a used recovery code is refused");
    let (st, body) =
        verify(&app, waiting["mfa_token"].as_str().unwrap(), json!({"code": "123456", "recovery_code": codes[4]}))
            .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // The user's view: one app, nine codes left.
    let r = app.http.get(app.url("/v1/me/mfa")).bearer_auth(&with_mfa).send().await.unwrap();
    let listed: Value = r.json().await.unwrap();
    assert_eq!(listed["recovery_codes_remaining"], 9, "{listed}");
    assert_eq!(listed["factors"].as_array().unwrap().len(), 1);
    let factor = listed["factors"][0]["id"].as_str().unwrap().to_owned();
    // Changing factors needs a session that passed one: the password-only token may not.
    let del = |bearer: String| {
        let url = app.url(&format!("/v1/me/mfa/factors/{factor}"));
        let http = app.http.clone();
        async move { http.delete(url).bearer_auth(bearer).send().await.unwrap() }
    };
    let r = del(password_only.clone()).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "mfa_required");
    let r = app
        .http
        .patch(app.url(&format!("/v1/me/mfa/factors/{factor}")))
        .bearer_auth(&with_mfa)
        .json(&json!({"name": "Phone"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (st, fresh) = post(&app, "/v1/me/mfa/recovery-codes", Some(&with_mfa), json!({})).await;
    assert_eq!(st, StatusCode::OK, "{fresh}");
    assert_eq!(fresh["recovery_codes"].as_array().unwrap().len(), 10);
    let (_, waiting) = sign_in(&app, &s, "ann@acme.test").await;
    let (st, _) = verify(&app, waiting["mfa_token"].as_str().unwrap(), json!({"recovery_code": codes[5]})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "old recovery codes stop working when new ones are made");
    assert_eq!(del(with_mfa.clone()).await.status(), StatusCode::NO_CONTENT);
    // No factor left: the password signs in alone again, and the codes went with the factor.
    let (st, body) = sign_in(&app, &s, "ann@acme.test").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(admin_query_strings(&app.shared.admin_url, "SELECT count(*) FROM recovery_codes").await, ["0"]);

    // Every act is in the audit log.
    assert_eq!(actions(&app, "mfa.enrolled").await.len(), 1);
    assert_eq!(actions(&app, "mfa.removed").await.len(), 1);
    assert_eq!(actions(&app, "mfa.challenge_succeeded").await.len(), 2);
    assert!(actions(&app, "mfa.challenge_failed").await.len() >= 4);
    let used = actions(&app, "recovery_code.used").await;
    assert_eq!(used.len(), 1);
    assert_eq!(used[0]["remaining"], 9);
}

#[tokio::test]
async fn five_wrong_codes_lock_the_factor_whatever_comes_next() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    user(&app, &s, "bob@acme.test").await;
    let (_, first) = sign_in(&app, &s, "bob@acme.test").await;
    let (uri, _) = enrol_totp(&app, first["access_token"].as_str().unwrap()).await;
    let clock = authenticator(&uri);
    let (_, waiting) = sign_in(&app, &s, "bob@acme.test").await;
    let token = waiting["mfa_token"].as_str().unwrap().to_owned();
    let right = clock.generate(now());
    let wrong = if right == "111111" { "222222" } else { "111111" };
    for _ in 0..5 {
        let (st, body) = verify(&app, &token, json!({"code": wrong})).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    }
    // The sixth attempt is refused before it is judged, right code or not.
    let r = app
        .http
        .post(app.url("/v1/auth/mfa/verify"))
        .json(&json!({"mfa_token": token, "code": right}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u32 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= 900, "{retry}");
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "factor_locked");
    // A new sign-in does not reset the factor's count: the lock is the factor's.
    let (_, again) = sign_in(&app, &s, "bob@acme.test").await;
    let (st, body) = verify(&app, again["mfa_token"].as_str().unwrap(), json!({"code": right})).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let failed = actions(&app, "mfa.challenge_failed").await;
    assert_eq!(failed.iter().filter(|m| m["reason"] == "wrong_code").count(), 5);
    assert!(failed.iter().any(|m| m["reason"] == "locked"), "{failed:?}");
    assert!(actions(&app, "mfa.challenge_succeeded").await.is_empty());
}

async fn set_policy(app: &TestApp, s: &Seeded, policy: &str) {
    let r = app
        .http
        .patch(app.url(&format!("/v1/projects/{}/presentation", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .json(&json!({"mfa_policy": policy}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
}

async fn refresh(app: &TestApp, refresh_token: &str) -> (StatusCode, Value) {
    let r = app
        .http
        .post(app.url("/v1/auth/token"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token)])
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_required_second_factor_cannot_be_skipped_by_api_refresh_magic_link_hosted_pages_or_provider() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let pid = s.project.id;
    user(&app, &s, "cy@acme.test").await;
    // Before the policy: a session, a browser signed in at the provider, an unexchanged code.
    let (_, before) = sign_in(&app, &s, "cy@acme.test").await;
    let old_refresh = before["refresh_token"].as_str().unwrap().to_owned();
    let (client_id, secret) = confidential(&app, &s).await;
    let mut b = Browser::new();
    let auth = authorize_url(
        &app,
        &s,
        &[
            ("client_id", &client_id),
            ("redirect_uri", CB),
            ("response_type", "code"),
            ("scope", "openid email"),
            ("state", "s1"),
        ],
    );
    let to_client = crate::oidc_provider::sign_in_through(&app, &mut b, &auth, "cy@acme.test").await;
    let early_code = query_of(&to_client)["code"].clone();

    set_policy(&app, &s, "required").await;

    // Refresh: the session that never passed a second factor ends.
    let (st, body) = refresh(&app, &old_refresh).await;
    assert_eq!((st, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")), "{body}");
    let ended =
        admin_query_strings(&app.shared.admin_url, "SELECT revoked_reason FROM sessions WHERE revoked_at IS NOT NULL")
            .await;
    assert!(ended.iter().any(|r| r == "mfa_required"), "{ended:?}");
    // The code made before the policy starts no session.
    let r = app
        .http
        .post(app.url(&format!("/p/{pid}/oauth2/token")))
        .basic_auth(&client_id, Some(&secret))
        .form(&[("grant_type", "authorization_code"), ("code", &early_code), ("redirect_uri", CB)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // The provider's session goes through the enrolment first, not to the client.
    let (st, location, _) = b.get(&auth).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let location = location.unwrap();
    assert_eq!(location, format!("/p/{pid}/mfa/enrol"), "step-up, not a code");
    // A request that may not interact is told so.
    let silent = format!("{auth}&prompt=none");
    let (_, location, _) = b.get(&silent).await;
    assert_eq!(query_of(&location.unwrap())["error"], "interaction_required");

    // The JSON API: the password gets a token to enrol with, and nothing else.
    let (st, waiting) = sign_in(&app, &s, "cy@acme.test").await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{waiting}");
    assert_eq!(waiting["enrolment_required"], true);
    let token = waiting["mfa_token"].as_str().unwrap().to_owned();
    let (st, _) = verify(&app, &token, json!({"code": "123456"})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "no challenge to pass before an enrolment");
    let (st, shown) = post(&app, "/v1/auth/mfa/totp/enrol", None, json!({"mfa_token": token})).await;
    assert_eq!(st, StatusCode::OK, "{shown}");
    // Asking again shows the same secret (a reload does not start over).
    let (_, again) = post(&app, "/v1/auth/mfa/totp/enrol", None, json!({"mfa_token": token})).await;
    assert_eq!(again["secret"], shown["secret"]);
    let clock = authenticator(shown["otpauth_uri"].as_str().unwrap());
    let (st, body) = post(&app, "/v1/auth/mfa/totp/confirm", None, json!({"mfa_token": token, "code": "000001"})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    let (st, enrolled) =
        post(&app, "/v1/auth/mfa/totp/confirm", None, json!({"mfa_token": token, "code": clock.generate(now())})).await;
    assert_eq!(st, StatusCode::OK, "{enrolled}");
    assert_eq!(enrolled["recovery_codes"].as_array().unwrap().len(), 10);
    assert_eq!(amr(enrolled["access_token"].as_str().unwrap()), ["pwd", "otp", "mfa"]);
    // That session refreshes.
    let (st, body) = refresh(&app, enrolled["refresh_token"].as_str().unwrap()).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(amr(body["access_token"].as_str().unwrap()).contains(&"mfa".to_owned()));

    // Sign-up makes the account and waits for its enrolment.
    let (st, body) =
        post(&app, "/v1/auth/signup", None, json!({"project_id": pid, "email": "dee@acme.test", "password": PASSWORD}))
            .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert_eq!((body["error"]["code"].as_str(), &body["enrolment_required"]), (Some("mfa_required"), &json!(true)));
    assert!(body.get("access_token").is_none());

    // A magic link proves the address, not the second factor.
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{pid}/redirect-uris")))
        .bearer_auth(&s.api_key.plaintext)
        .json(&json!({"uri": CB}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app
        .http
        .post(app.url("/v1/auth/magic-link"))
        .json(&json!({"project_id": pid, "email": "cy@acme.test", "redirect_uri": CB}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{}", r.text().await.unwrap());
    let mail = app.mail.wait_for("cy@acme.test", 0, std::time::Duration::from_secs(10)).await.expect("link mailed");
    let text = mail.text();
    let at = text.find("token=").unwrap() + 6;
    let link: String = text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')).collect();
    let (st, body) = post(&app, "/v1/auth/magic-link/verify", None, json!({"token": link})).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["factors"], json!(["totp", "recovery_code"]));

    // The hosted pages: the password leads to the challenge, never to the app.
    let mut h = Browser::new();
    let (_, _, page) = h.get(&app.url(&format!("/p/{pid}/signin"))).await;
    let csrf = hidden(&page, "csrf");
    let (st, location, _) = h
        .post(
            &app.url(&format!("/p/{pid}/signin")),
            &[("csrf", &csrf), ("email", "cy@acme.test"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    assert_eq!(location.unwrap(), format!("/p/{pid}/mfa"));
    let (st, _, challenge) = h.get(&app.url(&format!("/p/{pid}/mfa"))).await;
    assert_eq!(st, StatusCode::OK);
    assert!(challenge.contains("name=\"code\"") && !challenge.contains("<script"), "no script without a key");
    let (st, _, wrong) = h.post(&app.url(&format!("/p/{pid}/mfa")), &[("csrf", &csrf), ("code", "999999")]).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(wrong.contains("class=\"alert\""));
    // Without the CSRF token nothing is judged.
    let (st, _, _) = h.post(&app.url(&format!("/p/{pid}/mfa")), &[("code", "999999")]).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let code = clock.generate(now() + 30);
    let (st, _, done) = h.post(&app.url(&format!("/p/{pid}/mfa")), &[("csrf", &csrf), ("code", &code)]).await;
    assert_eq!(st, StatusCode::OK, "{done}");
    assert!(done.contains("You are signed in"), "{done}");
    assert!(!h.cookies.contains_key("authio_mfa"), "the waiting sign-in's cookie is dropped");
}

#[tokio::test]
async fn an_organization_requires_a_second_factor_of_its_members_only() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let pid = s.project.id;
    user(&app, &s, "member@acme.test").await;
    user(&app, &s, "outsider@acme.test").await;
    let key = &s.api_key.plaintext;
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{pid}/organizations")))
        .bearer_auth(key)
        .json(&json!({"name": "Bank", "slug": "bank"}))
        .send()
        .await
        .unwrap();
    let org: Value = r.json().await.unwrap();
    let org_id = org["id"].as_str().unwrap();
    assert_eq!(org["mfa_required"], false);
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{pid}/roles")))
        .bearer_auth(key)
        .json(&json!({"slug": "member", "name": "Member", "permissions": [], "is_default": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    let users: Value = app
        .http
        .get(app.url(&format!("/v1/projects/{pid}/users")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let member = users["data"].as_array().unwrap().iter().find(|u| u["email"] == "member@acme.test").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{pid}/organizations/{org_id}/members")))
        .bearer_auth(key)
        .json(&json!({"user_id": member}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let (_, before) = sign_in(&app, &s, "member@acme.test").await;
    let r = app
        .http
        .patch(app.url(&format!("/v1/projects/{pid}/organizations/{org_id}")))
        .bearer_auth(key)
        .json(&json!({"mfa_required": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["mfa_required"], true);
    let (st, body) = sign_in(&app, &s, "member@acme.test").await;
    assert_eq!((st, &body["enrolment_required"]), (StatusCode::FORBIDDEN, &json!(true)), "{body}");
    let (st, body) = sign_in(&app, &s, "outsider@acme.test").await;
    assert_eq!(st, StatusCode::OK, "not a member: {body}");
    let (st, _) = refresh(&app, before["refresh_token"].as_str().unwrap()).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "the member's earlier session ends at its refresh");
}

/// The hosted enrolment page (server-rendered QR code, no script needed for an app).
async fn enrol_on_hosted_page(app: &TestApp, b: &mut Browser, path: &str) -> Vec<String> {
    let (st, _, page) = b.get(&absolute(app, path)).await;
    assert_eq!(st, StatusCode::OK, "{page}");
    assert!(page.contains("<svg"), "the QR code is inline SVG");
    let uri = page.split("href=\"otpauth://").nth(1).unwrap().split('"').next().unwrap();
    let uri = uri.replace("&amp;", "&").replace("&#38;", "&").replace("&#x2f;", "/");
    let clock = authenticator(&format!("otpauth://{uri}"));
    let csrf = hidden(&page, "csrf");
    let factor = hidden(&page, "factor");
    let action = page.split("<form method=\"post\" action=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let (st, _, codes_page) =
        b.post(&app.url(&action), &[("csrf", &csrf), ("factor", &factor), ("code", &clock.generate(now()))]).await;
    assert_eq!(st, StatusCode::OK, "{codes_page}");
    let codes: Vec<String> =
        codes_page.split("<li>").skip(1).map(|c| c.split('<').next().unwrap().trim().to_owned()).collect();
    assert_eq!(codes.len(), 10, "{codes_page}");
    codes
}

#[tokio::test]
async fn acr_values_aal2_steps_up_an_existing_provider_session() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let pid = s.project.id;
    user(&app, &s, "eve@acme.test").await;
    let (client_id, secret) = confidential(&app, &s).await;
    let mut b = Browser::new();
    let params = |state: &'static str, acr: Option<&'static str>| {
        let mut p = vec![
            ("client_id", client_id.clone()),
            ("redirect_uri", CB.to_owned()),
            ("response_type", "code".to_owned()),
            ("scope", "openid".to_owned()),
            ("state", state.to_owned()),
        ];
        if let Some(a) = acr {
            p.push(("acr_values", a.to_owned()));
        }
        p
    };
    let url_of = |p: Vec<(&str, String)>| {
        let refs: Vec<(&str, &str)> = p.iter().map(|(k, v)| (*k, v.as_str())).collect();
        authorize_url(&app, &s, &refs)
    };
    let id_token_of = |code: String| {
        let (http, url, id, secret) =
            (app.http.clone(), app.url(&format!("/p/{pid}/oauth2/token")), client_id.clone(), secret.clone());
        async move {
            let r = http
                .post(url)
                .basic_auth(id, Some(secret))
                .form(&[("grant_type", "authorization_code"), ("code", code.as_str()), ("redirect_uri", CB)])
                .send()
                .await
                .unwrap();
            let body: Value = r.json().await.unwrap();
            claims(body["id_token"].as_str().unwrap_or_else(|| panic!("{body}")))
        }
    };
    let first = crate::oidc_provider::sign_in_through(&app, &mut b, &url_of(params("a", None)), "eve@acme.test").await;
    let id = id_token_of(query_of(&first)["code"].clone()).await;
    assert_eq!((id["acr"].as_str(), id["amr"].clone()), (Some("aal1"), json!(["pwd"])));
    let first_auth_time = id["auth_time"].as_i64().unwrap();
    let meta: Value = app
        .http
        .get(app.url(&format!("/p/{pid}/.well-known/openid-configuration")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["acr_values_supported"], json!(["aal1", "aal2"]));

    // The client demands a second factor: the same browser enrols one (it has none), then
    // comes back to the request, which now answers.
    let demanding = url_of(params("b", Some("aal2")));
    let (st, location, _) = b.get(&demanding).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    assert_eq!(location.as_deref(), Some(format!("/p/{pid}/mfa/enrol").as_str()));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    enrol_on_hosted_page(&app, &mut b, &format!("/p/{pid}/mfa/enrol")).await;
    let (_, _, page) = b.get(&app.url(&format!("/p/{pid}/mfa"))).await;
    let csrf = hidden(&page, "csrf");
    let (st, back, body) = b.post(&app.url(&format!("/p/{pid}/mfa/continue")), &[("csrf", &csrf)]).await;
    assert_eq!(st, StatusCode::SEE_OTHER, "{body}");
    let back = back.unwrap();
    assert!(back.starts_with(&format!("/p/{pid}/oauth2/authorize?")), "{back}");
    let (st, to_client, _) = b.get(&absolute(&app, &back)).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let to_client = to_client.unwrap();
    assert!(to_client.starts_with(CB), "{to_client}");
    let id = id_token_of(query_of(&to_client)["code"].clone()).await;
    assert_eq!(id["acr"], "aal2");
    assert_eq!(id["amr"], json!(["pwd", "otp", "mfa"]));
    assert!(id["auth_time"].as_i64().unwrap() > first_auth_time, "the step-up is a new authentication");

    // The session has it now: a second demanding request answers at once.
    let (_, again, _) = b.get(&url_of(params("c", Some("aal2")))).await;
    assert!(again.unwrap().starts_with(CB));
}
