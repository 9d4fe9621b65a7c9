//! Identity core over real HTTP: sign-up and sign-in, refresh rotation, JWKS and key rotation,
//! M2M client credentials, introspection and revocation, JWT-kind separation. Tokens are
//! verified with an independent JOSE implementation (jwt-simple), never with the code that
//! signed them.
use std::collections::{BTreeSet, HashSet};

use authio_core::crypto::keys::Alg;
use authio_core::types::Plan;
use authio_db::TenantKind;
use authio_testkit::{make_dedicated, seed_tenant, spawn_app, spawn_app_with, AppOptions, Seeded, TestApp};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::prelude::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

pub(crate) const PASSWORD: &str = "correct horse battery";

fn b64json(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn header_of(token: &str) -> Value {
    b64json(token.split('.').next().unwrap())
}

pub(crate) fn claims_of(token: &str) -> Value {
    b64json(token.split('.').nth(1).unwrap())
}

pub(crate) async fn jwks(app: &TestApp, project: uuid::Uuid) -> Value {
    let r = app.http.get(app.url(&format!("/p/{project}/.well-known/jwks.json"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// Verify as an app would: take the JWK named by the token's `kid` from the published set,
/// load it as the type the JWK describes, and let jwt-simple check algorithm, signature,
/// issuer and expiry (no clock tolerance).
pub(crate) fn verify_independently(set: &Value, token: &str, iss: &str) -> Result<(), String> {
    let kid = header_of(token)["kid"].as_str().map(str::to_owned).ok_or("no kid")?;
    let jwk = set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .ok_or_else(|| format!("kid {kid} not in the JWKS"))?
        .to_string();
    let options = VerificationOptions {
        allowed_issuers: Some(HashSet::from([iss.to_owned()])),
        time_tolerance: Some(Duration::from_secs(0)),
        ..Default::default()
    };
    let alg = serde_json::from_str::<Value>(&jwk).unwrap()["alg"].as_str().unwrap().to_owned();
    let r = match alg.as_str() {
        "EdDSA" => Ed25519PublicKey::from_jwk(&jwk)
            .map_err(|e| e.to_string())?
            .verify_token::<NoCustomClaims>(token, Some(options))
            .map(|_| ()),
        "ES256" => ES256PublicKey::from_jwk(&jwk)
            .map_err(|e| e.to_string())?
            .verify_token::<NoCustomClaims>(token, Some(options))
            .map(|_| ()),
        "RS256" => RS256PublicKey::from_jwk(&jwk)
            .map_err(|e| e.to_string())?
            .verify_token::<NoCustomClaims>(token, Some(options))
            .map(|_| ()),
        other => return Err(format!("unexpected alg {other}")),
    };
    r.map_err(|e| e.to_string())
}

pub(crate) async fn sign_up(app: &TestApp, project: uuid::Uuid, email: &str) -> Value {
    let r = app
        .http
        .post(app.url("/v1/auth/signup"))
        .json(&json!({"project_id": project, "email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["cache-control"], "no-store");
    r.json().await.unwrap()
}

async fn sign_in(app: &TestApp, project: uuid::Uuid, email: &str, password: &str) -> (StatusCode, Value) {
    let r = app
        .http
        .post(app.url("/v1/auth/signin"))
        .json(&json!({"project_id": project, "email": email, "password": password}))
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

pub(crate) async fn refresh(app: &TestApp, token: &str) -> (StatusCode, Value) {
    let r = app
        .http
        .post(app.url("/v1/auth/token"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", token)])
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

pub(crate) async fn create_client(app: &TestApp, s: &Seeded, scopes: &[&str]) -> (String, String) {
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{}/m2m-clients", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .json(&json!({"name": "backend", "scopes": scopes, "audience": "https://api.example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let body: Value = r.json().await.unwrap();
    (body["client_id"].as_str().unwrap().to_owned(), body["client_secret"].as_str().unwrap().to_owned())
}

pub(crate) async fn introspect(app: &TestApp, s: &Seeded, token: &str) -> Value {
    let r = app
        .http
        .post(app.url("/v1/auth/introspect"))
        .bearer_auth(&s.api_key.plaintext)
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

pub(crate) fn issuer(app: &TestApp, project: uuid::Uuid) -> String {
    format!("{}/p/{project}", app.base_url)
}

#[tokio::test]
async fn access_tokens_verify_against_the_jwks_independently_and_forgeries_do_not() {
    let app = spawn_app().await;
    let other = seed_tenant(&app.shared, "other-co", TenantKind::Customer, Plan::Pro).await;
    let other_token =
        sign_up(&app, other.project.id, "eve@other.test").await["access_token"].as_str().unwrap().to_owned();
    for (i, alg) in [Alg::EdDSA, Alg::ES256, Alg::RS256].into_iter().enumerate() {
        let s = seed_tenant(&app.shared, &format!("jose-{i}"), TenantKind::Customer, Plan::Pro).await;
        app.control.set_signing_alg(s.project.id, alg).await.unwrap();
        let body = sign_up(&app, s.project.id, "ann@example.com").await;
        let token = body["access_token"].as_str().unwrap();
        let set = jwks(&app, s.project.id).await;
        let iss = issuer(&app, s.project.id);
        assert_eq!(header_of(token)["alg"], alg.as_str());
        assert_eq!(header_of(token)["typ"], "at+jwt");
        verify_independently(&set, token, &iss).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        let c = claims_of(token);
        assert_eq!(c["iss"], iss.as_str());
        assert_eq!(c["sub"], body["user"]["id"]);
        assert_eq!(c["sid"], body["session_id"]);
        assert_eq!(c["tid"], s.tenant.id.to_string());
        assert_eq!(c["pid"], s.project.id.to_string());
        assert_eq!(c["amr"], json!(["pwd"]));
        // JWKS: the current and the next key, public halves only, with caching headers.
        let keys = set["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2, "{set}");
        for k in keys {
            assert_eq!(k["alg"], alg.as_str());
            for private in ["d", "p", "q", "dp", "dq", "qi"] {
                assert!(k.get(private).is_none(), "private member {private} published");
            }
        }

        // Another project's token does not verify against this project's keys.
        assert!(verify_independently(&set, &other_token, &iss).is_err());
        // The wrong issuer is refused even with a good signature.
        assert!(verify_independently(&set, token, "https://evil.example").is_err());
        // alg: none.
        let mut h = header_of(token);
        h["alg"] = json!("none");
        let parts: Vec<&str> = token.split('.').collect();
        let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(h.to_string()), parts[1]);
        assert!(verify_independently(&set, &none, &iss).is_err());
        // A swapped algorithm over the same signature.
        let mut h = header_of(token);
        h["alg"] = json!(if alg == Alg::RS256 { "ES256" } else { "RS256" });
        let swapped = format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(h.to_string()), parts[1], parts[2]);
        assert!(verify_independently(&set, &swapped, &iss).is_err());
        // HS256 keyed with the public key (the classic confusion).
        let jwk = &keys[0];
        let secret = jwk.get("x").or_else(|| jwk.get("n")).unwrap().as_str().unwrap();
        let hs = HS256Key::from_bytes(secret.as_bytes()).with_key_id(jwk["kid"].as_str().unwrap());
        let forged =
            hs.authenticate(JWTClaims { issuer: Some(iss.clone()), ..Claims::create(Duration::from_mins(5)) }).unwrap();
        assert!(verify_independently(&set, &forged, &iss).is_err());
        // A tampered payload.
        let mut c = claims_of(token);
        c["sub"] = json!("someone-else");
        let tampered = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(c.to_string()), parts[2]);
        assert!(verify_independently(&set, &tampered, &iss).is_err());

        // Authio's own introspection agrees on every forgery.
        assert_eq!(introspect(&app, &s, token).await["active"], true);
        for bad in [&none, &swapped, &forged, &tampered, &other_token] {
            assert_eq!(introspect(&app, &s, bad).await, json!({"active": false}), "{bad}");
        }
    }

    // An expired token (signed by the project's real key, exp in the past) is refused.
    let s = seed_tenant(&app.shared, "expiry", TenantKind::Customer, Plan::Pro).await;
    sign_up(&app, s.project.id, "old@example.com").await;
    let profile = app.identity.profile(s.project.id).await.unwrap();
    let set = app.identity.keys().keyset(&profile).await.unwrap();
    let now = chrono::Utc::now().timestamp();
    let iss = issuer(&app, s.project.id);
    let expired = set
        .sign(&json!({"iss": iss, "sub": "u", "aud": "a", "exp": now - 5, "iat": now - 65, "nbf": now - 65,
                       "jti": uuid::Uuid::new_v4().to_string(), "tid": s.tenant.id.to_string(), "pid": s.project.id.to_string()}))
        .unwrap();
    let published = jwks(&app, s.project.id).await;
    let err = verify_independently(&published, &expired, &iss).unwrap_err();
    assert!(err.to_lowercase().contains("expired"), "{err}");
    assert_eq!(introspect(&app, &s, &expired).await, json!({"active": false}));
}

#[tokio::test]
async fn jwks_has_cache_headers_and_answers_304_to_its_etag() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "cachey", TenantKind::Customer, Plan::Free).await;
    let url = app.url(&format!("/p/{}/.well-known/jwks.json", s.project.id));
    let r = app.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["cache-control"].to_str().unwrap().contains("max-age=300"));
    assert_eq!(r.headers()["content-type"], "application/jwk-set+json");
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let r = app.http.get(&url).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = app.http.get(app.url(&format!("/p/{}/.well-known/jwks.json", uuid::Uuid::now_v7()))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = app.http.get(app.url("/p/not-a-uuid/.well-known/jwks.json")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn rotation_publishes_the_next_key_before_it_signs_and_keeps_old_tokens_valid() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "rotor", TenantKind::Customer, Plan::Pro).await;
    let iss = issuer(&app, s.project.id);
    let before = sign_up(&app, s.project.id, "rita@example.com").await["access_token"].as_str().unwrap().to_owned();
    let set_before = jwks(&app, s.project.id).await;
    let kids_before: Vec<String> =
        set_before["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect();
    let old_kid = header_of(&before)["kid"].as_str().unwrap().to_owned();
    assert_eq!(kids_before[0], old_kid, "the current key is listed first");

    // Too soon: the next key was published moments ago, so verifiers may not have it yet.
    let err = app
        .control
        .rotate_keys(s.project.id, Some(Alg::ES256), &authio_testkit::test_master_key(), chrono::Utc::now(), false)
        .await
        .unwrap_err();
    assert!(matches!(err, authio_core::CoreError::TooSoon(_)), "{err:?}");
    // Once the next key has been published long enough (the clock is passed in).
    let later =
        chrono::Utc::now() + chrono::Duration::seconds(authio_core::tenancy::control::MIN_NEXT_KEY_AGE_SECS + 1);
    let rotation = app
        .control
        .rotate_keys(s.project.id, Some(Alg::ES256), &authio_testkit::test_master_key(), later, false)
        .await
        .unwrap();
    assert_eq!(rotation.retired_kid.as_deref(), Some(old_kid.as_str()));
    // This node drops its cached keys (others re-read within their cache time).
    app.identity.keys().invalidate(s.project.id);

    let (status, after) = sign_in(&app, s.project.id, "rita@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    let after = after["access_token"].as_str().unwrap().to_owned();
    let new_kid = header_of(&after)["kid"].as_str().unwrap().to_owned();
    assert_eq!(new_kid, rotation.current_kid);
    assert!(kids_before.contains(&new_kid), "the key that signs now was published before it signed");

    let set_after = jwks(&app, s.project.id).await;
    let kids_after: BTreeSet<String> =
        set_after["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect();
    assert_eq!(kids_after.len(), 3, "current, next and the retired key: {set_after}");
    assert!(kids_after.contains(&old_kid) && kids_after.contains(&rotation.next_kid));
    let next = set_after["keys"].as_array().unwrap().iter().find(|k| k["kid"] == rotation.next_kid.as_str()).unwrap();
    assert_eq!(next["alg"], "ES256", "the next key is in the requested algorithm");
    verify_independently(&set_after, &before, &iss).expect("a token signed before the rotation still verifies");
    verify_independently(&set_after, &after, &iss).expect("a token signed after the rotation verifies");
    assert_eq!(introspect(&app, &s, &before).await["active"], true);
}

#[tokio::test]
async fn refresh_tokens_rotate_allow_a_concurrent_double_refresh_and_revoke_the_session_on_reuse() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "fresh", TenantKind::Customer, Plan::Pro).await;
    let first = sign_up(&app, s.project.id, "tab@example.com").await;
    let r1 = first["refresh_token"].as_str().unwrap();
    let sid = first["session_id"].as_str().unwrap();

    // Two tabs refresh with the same token at once: both succeed (grace window), each with a
    // new refresh token and an access token of the same session.
    let ((sa, a), (sb, b)) = tokio::join!(refresh(&app, r1), refresh(&app, r1));
    assert_eq!((sa, sb), (StatusCode::OK, StatusCode::OK), "{a} {b}");
    assert_ne!(a["refresh_token"], b["refresh_token"]);
    assert_ne!(a["refresh_token"].as_str().unwrap(), r1);
    for t in [&a, &b] {
        assert_eq!(claims_of(t["access_token"].as_str().unwrap())["sid"], sid);
    }

    // Without a grace window, a used token presented again ends the session.
    let r = app
        .http
        .patch(app.url(&format!("/v1/projects/{}/settings", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .json(&json!({"refresh_grace_secs": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r2 = a["refresh_token"].as_str().unwrap();
    let (status, c) = refresh(&app, r2).await;
    assert_eq!(status, StatusCode::OK);
    let r3 = c["refresh_token"].as_str().unwrap();
    let access = c["access_token"].as_str().unwrap();
    assert_eq!(introspect(&app, &s, access).await["active"], true);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, err) = refresh(&app, r2).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"], "invalid_grant");
    // The whole session is gone: the newest refresh token, the sibling and the access token.
    let (status, _) = refresh(&app, r3).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = refresh(&app, b["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(introspect(&app, &s, access).await["active"], false);
    let user = first["user"]["id"].as_str().unwrap();
    let r = app
        .http
        .get(app.url(&format!("/v1/projects/{}/users/{user}/sessions", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .send()
        .await
        .unwrap();
    let list: Value = r.json().await.unwrap();
    assert_eq!(list["data"][0]["id"], sid);
    assert_eq!(list["data"][0]["revoked_reason"], "refresh_token_reused");
}

#[tokio::test]
async fn sessions_are_listed_and_revoked_and_timeouts_apply() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "sessy", TenantKind::Customer, Plan::Pro).await;
    let up = sign_up(&app, s.project.id, "sam@example.com").await;
    let (_, second) = sign_in(&app, s.project.id, "sam@example.com", PASSWORD).await;
    let user = up["user"]["id"].as_str().unwrap();
    let list_url = app.url(&format!("/v1/projects/{}/users/{user}/sessions", s.project.id));
    let list: Value =
        app.http.get(&list_url).bearer_auth(&s.api_key.plaintext).send().await.unwrap().json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    let sid = second["session_id"].as_str().unwrap();
    let r = app
        .http
        .delete(app.url(&format!("/v1/projects/{}/sessions/{sid}", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (status, _) = refresh(&app, second["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a revoked session's refresh token fails");
    assert_eq!(introspect(&app, &s, second["access_token"].as_str().unwrap()).await["active"], false);
    // The other session is untouched.
    let (status, fresh) = refresh(&app, up["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    // Disabling the user ends its access tokens' life at once (introspection) and its refreshes.
    let live = fresh["access_token"].as_str().unwrap();
    assert_eq!(introspect(&app, &s, live).await["active"], true);
    authio_testkit::admin_query_strings(
        &app.shared.admin_url,
        &format!("UPDATE users SET disabled = true WHERE id = '{user}'"),
    )
    .await;
    assert_eq!(introspect(&app, &s, live).await["active"], false);
    let (status, _) = refresh(&app, fresh["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    authio_testkit::admin_query_strings(
        &app.shared.admin_url,
        &format!("UPDATE users SET disabled = false WHERE id = '{user}'"),
    )
    .await;
    // Unknown and malformed session ids.
    let r = app
        .http
        .delete(app.url(&format!("/v1/projects/{}/sessions/{}", s.project.id, uuid::Uuid::now_v7())))
        .bearer_auth(&s.api_key.plaintext)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // An idle timeout that has passed ends the session (moved into the past as the operator).
    let (_, third) = sign_in(&app, s.project.id, "sam@example.com", PASSWORD).await;
    authio_testkit::admin_query_strings(
        &app.shared.admin_url,
        &format!(
            "UPDATE sessions SET idle_expires_at = now() - interval '1 second' WHERE id = '{}'",
            third["session_id"].as_str().unwrap()
        ),
    )
    .await;
    let (status, body) = refresh(&app, third["refresh_token"].as_str().unwrap()).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")));
    // Settings out of range are refused and change nothing.
    let r = app
        .http
        .patch(app.url(&format!("/v1/projects/{}/settings", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .json(&json!({"session_idle_timeout_secs": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let settings: Value = app
        .http
        .get(app.url(&format!("/v1/projects/{}/settings", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(settings["session_idle_timeout_secs"], 604800);
}

#[tokio::test]
async fn sign_in_failures_look_alike_and_lock_out_per_account_and_per_ip() {
    let app = spawn_app_with(AppOptions {
        tune_auth: |a| {
            a.limits.account_failures = 3;
            a.limits.signin_per_ip = 12;
        },
        ..AppOptions::default()
    })
    .await;
    let s = seed_tenant(&app.shared, "locky", TenantKind::Customer, Plan::Pro).await;
    sign_up(&app, s.project.id, "kim@example.com").await;
    let (st_wrong, wrong) = sign_in(&app, s.project.id, "kim@example.com", "not the password").await;
    let (st_unknown, unknown) = sign_in(&app, s.project.id, "nobody@example.com", "not the password").await;
    assert_eq!((st_wrong, st_unknown), (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED));
    assert_eq!(wrong, unknown, "the same answer for a wrong password and an unknown account");
    assert_eq!(wrong["error"]["code"], "invalid_credentials");
    // Two more failures each: both the real and the unknown account lock, identically.
    for email in ["kim@example.com", "nobody@example.com"] {
        for _ in 0..2 {
            sign_in(&app, s.project.id, email, "still wrong").await;
        }
    }
    let (st_real, real) = sign_in(&app, s.project.id, "kim@example.com", PASSWORD).await;
    let (st_ghost, ghost) = sign_in(&app, s.project.id, "nobody@example.com", PASSWORD).await;
    assert_eq!((st_real, st_ghost), (StatusCode::TOO_MANY_REQUESTS, StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(real["error"]["code"], ghost["error"]["code"]);
    // Another account of the same project is not locked.
    sign_up(&app, s.project.id, "lee@example.com").await;
    let (status, _) = sign_in(&app, s.project.id, "lee@example.com", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    // Per IP: 12 attempts per minute from this address, whatever the account.
    let mut last = StatusCode::OK;
    for _ in 0..4 {
        last = sign_in(&app, s.project.id, "lee@example.com", PASSWORD).await.0;
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
    let r = app
        .http
        .post(app.url("/v1/auth/signin"))
        .json(&json!({"project_id": s.project.id, "email": "lee@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
}

#[tokio::test]
async fn guesses_in_flight_count_against_the_lockout_and_client_failures_block_an_address() {
    let app = spawn_app_with(AppOptions {
        tune_auth: |a| {
            a.limits.account_failures = 3;
            a.limits.client_failures_per_ip = 3;
        },
        ..AppOptions::default()
    })
    .await;
    let s = seed_tenant(&app.shared, "bursty", TenantKind::Customer, Plan::Pro).await;
    sign_up(&app, s.project.id, "burst@example.com").await;
    // Eight guesses at once: each is counted before its password is checked, so at most three
    // are judged at all.
    let guesses =
        (0..8).map(|i| sign_in(&app, s.project.id, "burst@example.com", if i == 7 { PASSWORD } else { "guess" }));
    let statuses: Vec<StatusCode> =
        futures_util::future::join_all(guesses).await.into_iter().map(|(st, _)| st).collect();
    let judged = statuses.iter().filter(|st| **st != StatusCode::TOO_MANY_REQUESTS).count();
    assert!(judged <= 3, "{statuses:?}");
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");

    // Client authentication: past three failures from an address, even the right secret is
    // refused until the window ends.
    let (id, secret) = create_client(&app, &s, &["read"]).await;
    let token = |secret: String| {
        let (app, id) = (&app, id.clone());
        async move {
            app.http
                .post(app.url("/v1/auth/token"))
                .basic_auth(&id, Some(&secret))
                .form(&[("grant_type", "client_credentials")])
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    for _ in 0..3 {
        assert_eq!(token("cs_wrong".into()).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(token("cs_wrong".into()).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(token(secret.clone()).await, StatusCode::TOO_MANY_REQUESTS, "blocked before the secret is judged");
}

#[tokio::test]
async fn sign_up_validates_and_stores_only_an_argon2id_hash_and_rehashes_on_parameter_change() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "hashy", TenantKind::Customer, Plan::Pro).await;
    for (body, status, code) in [
        (json!({"project_id": s.project.id, "email": "x@example.com", "password": "short"}), 422, "invalid_request"),
        (json!({"project_id": s.project.id, "email": "not-an-email", "password": PASSWORD}), 422, "invalid_email"),
        (
            json!({"project_id": uuid::Uuid::now_v7(), "email": "x@example.com", "password": PASSWORD}),
            404,
            "project_not_found",
        ),
        (json!({"project_id": s.project.id, "email": "x@example.com"}), 422, "invalid_request"),
    ] {
        let r = app.http.post(app.url("/v1/auth/signup")).json(&body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{body}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], code, "{body}");
    }
    sign_up(&app, s.project.id, "Hash@Example.com").await;
    let r = app
        .http
        .post(app.url("/v1/auth/signup"))
        .json(&json!({"project_id": s.project.id, "email": "hash@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let stored = authio_testkit::admin_query_strings(
        &app.shared.admin_url,
        "SELECT password_hash FROM users WHERE email = 'hash@example.com'",
    )
    .await;
    assert_eq!(stored.len(), 1, "no half-written second user");
    assert!(stored[0].starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{}", stored[0]);
    assert!(!stored[0].contains(PASSWORD));

    // A hash made with other parameters is replaced on the next successful sign-in.
    let stronger = authio_core::identity::passwords::Passwords::new(
        authio_core::identity::passwords::PasswordParams { m_kib: 19456, t: 3, p: 1 },
        1,
    )
    .unwrap();
    let old = stronger.hash(&authio_core::identity::passwords::NewPassword::parse(PASSWORD).unwrap()).await.unwrap();
    authio_testkit::admin_query_strings(
        &app.shared.admin_url,
        &format!("UPDATE users SET password_hash = '{old}' WHERE email = 'hash@example.com'"),
    )
    .await;
    let (status, _) = sign_in(&app, s.project.id, "HASH@example.com ", PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
    let stored = authio_testkit::admin_query_strings(
        &app.shared.admin_url,
        "SELECT password_hash FROM users WHERE email = 'hash@example.com'",
    )
    .await;
    assert!(stored[0].starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "rehashed: {}", stored[0]);
}

#[tokio::test]
async fn m2m_client_credentials_and_rfc_6749_errors() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "machines", TenantKind::Customer, Plan::Pro).await;
    let (id, secret) = create_client(&app, &s, &["read:users", "write:users"]).await;
    let token_url = app.url("/v1/auth/token");

    // client_secret_basic, all allowed scopes.
    let r = app
        .http
        .post(&token_url)
        .basic_auth(&id, Some(&secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "read:users write:users");
    let token = body["access_token"].as_str().unwrap().to_owned();
    verify_independently(&jwks(&app, s.project.id).await, &token, &issuer(&app, s.project.id)).unwrap();
    let c = claims_of(&token);
    assert_eq!((c["sub"].as_str(), c["client_id"].as_str()), (Some(id.as_str()), Some(id.as_str())));
    assert_eq!(c["aud"], "https://api.example.com");
    assert!(c.get("sid").is_none(), "M2M tokens have no session");

    // client_secret_post with a narrower scope.
    let r = app
        .http
        .post(&token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &id),
            ("client_secret", &secret),
            ("scope", "read:users"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["scope"], "read:users");

    // Errors: status, `error`, no token.
    let unknown = "cl_000000000000000000000000".to_owned();
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "wrong secret",
            app.http.post(&token_url).basic_auth(&id, Some("cs_wrong")).form(&[("grant_type", "client_credentials")]),
            401,
            "invalid_client",
        ),
        (
            "unknown client",
            app.http.post(&token_url).basic_auth(&unknown, Some(&secret)).form(&[("grant_type", "client_credentials")]),
            401,
            "invalid_client",
        ),
        (
            "no credentials",
            app.http.post(&token_url).form(&[("grant_type", "client_credentials")]),
            401,
            "invalid_client",
        ),
        (
            "missing grant_type",
            app.http.post(&token_url).basic_auth(&id, Some(&secret)).form(&[("scope", "read:users")]),
            400,
            "invalid_request",
        ),
        (
            "unsupported grant",
            app.http.post(&token_url).basic_auth(&id, Some(&secret)).form(&[("grant_type", "password")]),
            400,
            "unsupported_grant_type",
        ),
        (
            "scope not allowed",
            app.http
                .post(&token_url)
                .basic_auth(&id, Some(&secret))
                .form(&[("grant_type", "client_credentials"), ("scope", "admin")]),
            400,
            "invalid_scope",
        ),
        (
            "malformed body",
            app.http
                .post(&token_url)
                .basic_auth(&id, Some(&secret))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("grant_type=client_credentials&grant_type=client_credentials"),
            400,
            "invalid_request",
        ),
        (
            "wrong content type",
            app.http.post(&token_url).basic_auth(&id, Some(&secret)).json(&json!({"grant_type": "client_credentials"})),
            400,
            "invalid_request",
        ),
        (
            "two auth methods",
            app.http.post(&token_url).basic_auth(&id, Some(&secret)).form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &id),
                ("client_secret", &secret),
            ]),
            400,
            "invalid_request",
        ),
    ];
    for (what, req, status, error) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{what}");
        if status == 401 {
            assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic"), "{what}");
        }
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], error, "{what}: {body}");
        assert!(body.get("access_token").is_none(), "{what}");
    }

    // Introspection by the client itself, then revocation of the access token.
    let r = app
        .http
        .post(app.url("/v1/auth/introspect"))
        .basic_auth(&id, Some(&secret))
        .form(&[("token", &token)])
        .send()
        .await
        .unwrap();
    let i: Value = r.json().await.unwrap();
    assert_eq!(
        (i["active"].as_bool(), i["client_id"].as_str(), i["token_type"].as_str()),
        (Some(true), Some(id.as_str()), Some("Bearer")),
        "RFC 7662 2.2: the RFC 6749 token type"
    );
    assert_eq!(i["scope"], "read:users write:users");
    let r = app
        .http
        .post(app.url("/v1/auth/introspect"))
        .basic_auth(&id, Some("cs_wrong"))
        .form(&[("token", &token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app
        .http
        .post(app.url("/v1/auth/revoke"))
        .basic_auth(&id, Some(&secret))
        .form(&[("token", &token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(introspect(&app, &s, &token).await, json!({"active": false}));
    // Revoking garbage is not an error (RFC 7009).
    let r = app.http.post(app.url("/v1/auth/revoke")).form(&[("token", "garbage")]).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // A revoked client gets no more tokens.
    let clients: Value = app
        .http
        .get(app.url(&format!("/v1/projects/{}/m2m-clients", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(clients.to_string().find(&secret).is_none(), "secrets are never listed");
    let cid = clients["data"][0]["id"].as_str().unwrap();
    let r = app
        .http
        .delete(app.url(&format!("/v1/projects/{}/m2m-clients/{cid}", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .http
        .post(&token_url)
        .basic_auth(&id, Some(&secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The secret is stored only as a hash.
    let stored = authio_testkit::admin_query_strings(
        &app.shared.admin_url,
        &format!("SELECT (secret_hash = sha256('{secret}'::bytea))::text FROM m2m_clients"),
    )
    .await;
    assert_eq!(stored, vec!["true"], "only the SHA-256 of the secret is stored");
}

#[tokio::test]
async fn dedicated_and_shared_tenants_get_tokens_with_the_same_claims() {
    let app = spawn_app().await;
    let shared = seed_tenant(&app.shared, "on-shared", TenantKind::Customer, Plan::Enterprise).await;
    let dedicated = seed_tenant(&app.shared, "on-dedicated", TenantKind::Customer, Plan::Enterprise).await;
    let db = make_dedicated(&app.shared, &dedicated.tenant).await;
    let mut claim_sets = Vec::new();
    let mut m2m_sets = Vec::new();
    for s in [&shared, &dedicated] {
        let up = sign_up(&app, s.project.id, "same@example.com").await;
        let token = up["access_token"].as_str().unwrap();
        verify_independently(&jwks(&app, s.project.id).await, token, &issuer(&app, s.project.id)).unwrap();
        claim_sets.push(claims_of(token).as_object().unwrap().keys().cloned().collect::<BTreeSet<_>>());
        let (status, refreshed) = refresh(&app, up["refresh_token"].as_str().unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(introspect(&app, s, refreshed["access_token"].as_str().unwrap()).await["active"], true);
        let (id, secret) = create_client(&app, s, &["read"]).await;
        let r = app
            .http
            .post(app.url("/v1/auth/token"))
            .basic_auth(&id, Some(&secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let t: Value = r.json().await.unwrap();
        m2m_sets.push(
            claims_of(t["access_token"].as_str().unwrap())
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<BTreeSet<_>>(),
        );
    }
    assert_eq!(claim_sets[0], claim_sets[1]);
    assert_eq!(m2m_sets[0], m2m_sets[1]);
    let expected: BTreeSet<String> =
        ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "sid", "tid", "pid", "amr", "acr"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    assert_eq!(claim_sets[0], expected);
    // The dedicated tenant's users and sessions are on its own database; its keys and
    // clients stay pinned on shared.
    let on_dedicated = authio_testkit::admin_query_strings(&db.admin_url, "SELECT count(*)::text FROM sessions").await;
    assert_eq!(on_dedicated, vec!["1"]);
    let on_shared = authio_testkit::admin_query_strings(
        &app.shared.admin_url,
        &format!("SELECT count(*)::text FROM sessions WHERE tenant_id = '{}'", dedicated.tenant.id),
    )
    .await;
    assert_eq!(on_shared, vec!["0"]);
    let keys_on_dedicated =
        authio_testkit::admin_query_strings(&db.admin_url, "SELECT count(*)::text FROM signing_keys").await;
    assert_eq!(keys_on_dedicated, vec!["0"]);
}

#[tokio::test]
async fn platform_and_customer_tokens_are_refused_in_each_others_place() {
    let app = spawn_app().await;
    let platform = seed_tenant(&app.shared, "platform", TenantKind::Platform, Plan::Enterprise).await;
    let customer = seed_tenant(&app.shared, "cust", TenantKind::Customer, Plan::Pro).await;
    // Sign-up is closed on the platform tenant; platform users are made by operators.
    let r = app
        .http
        .post(app.url("/v1/auth/signup"))
        .json(&json!({"project_id": platform.project.id, "email": "op@authio.test", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    for email in ["op@authio.test", "member@authio.test"] {
        app.identity.create_user_with_password(platform.project.id, email, PASSWORD).await.unwrap();
    }
    app.control.grant_operator(&authio_core::types::Email::parse("op@authio.test").unwrap()).await.unwrap();
    let granted = authio_testkit::admin_query_strings(
        &app.shared.admin_url,
        "SELECT action || ':' || (metadata->>'role') FROM audit_events WHERE action = 'user.role_granted'",
    )
    .await;
    assert_eq!(granted, vec!["user.role_granted:operator"], "the grant is in the platform's audit log");
    let (_, op) = sign_in(&app, platform.project.id, "op@authio.test", PASSWORD).await;
    let operator_token = op["access_token"].as_str().unwrap().to_owned();
    assert_eq!(claims_of(&operator_token)["role"], "operator");
    let (_, member) = sign_in(&app, platform.project.id, "member@authio.test", PASSWORD).await;
    let member_token = member["access_token"].as_str().unwrap().to_owned();
    let customer_token =
        sign_up(&app, customer.project.id, "end@user.test").await["access_token"].as_str().unwrap().to_owned();
    assert_ne!(claims_of(&operator_token)["iss"], claims_of(&customer_token)["iss"]);
    assert_ne!(header_of(&operator_token)["kid"], header_of(&customer_token)["kid"]);

    // The management API: an operator's platform token works; a customer token is refused
    // for its own project too; a platform token without the operator role is forbidden.
    let users = app.url(&format!("/v1/projects/{}/users", customer.project.id));
    let r = app.http.get(&users).bearer_auth(&operator_token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.http.get(&users).bearer_auth(&customer_token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "token_kind_refused");
    let r = app.http.get(&users).bearer_auth(&member_token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = app.http.get(&users).bearer_auth("eyJhbGciOiJub25lIn0.e30.").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // A customer project's verification refuses platform tokens: not in its JWKS, and its
    // introspection says inactive.
    let customer_jwks = jwks(&app, customer.project.id).await;
    let customer_iss = issuer(&app, customer.project.id);
    verify_independently(&customer_jwks, &customer_token, &customer_iss).unwrap();
    assert!(verify_independently(&customer_jwks, &operator_token, &customer_iss).is_err());
    assert_eq!(introspect(&app, &customer, &operator_token).await, json!({"active": false}));
    // And the reverse: the platform's verification refuses the customer token.
    let platform_jwks = jwks(&app, platform.project.id).await;
    assert!(verify_independently(&platform_jwks, &customer_token, &issuer(&app, platform.project.id)).is_err());
    assert_eq!(introspect(&app, &platform, &customer_token).await, json!({"active": false}));
}

/// Poll until `check` holds (at most `secs`), for changes that reach other nodes by NOTIFY.
async fn eventually<F, Fut>(secs: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_revocation_or_rotation_on_one_node_reaches_another_nodes_caches_at_once() {
    // Both nodes keep credentials and keys cached for 30 s; only NOTIFY can tell node B in time.
    let a = spawn_app().await;
    let b = spawn_app_with(AppOptions { shared: Some(a.shared.clone()), ..AppOptions::default() }).await;
    let s = seed_tenant(&a.shared, "two-nodes", TenantKind::Customer, Plan::Pro).await;
    let (id, secret) = create_client(&a, &s, &["read"]).await;
    let token_on_b = || async {
        b.http
            .post(b.url("/v1/auth/token"))
            .basic_auth(&id, Some(&secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap()
            .status()
    };
    let users_on_b = || async {
        b.http
            .get(b.url(&format!("/v1/projects/{}/users", s.project.id)))
            .bearer_auth(&s.api_key.plaintext)
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(token_on_b().await, StatusCode::OK, "node B now caches the client");
    assert_eq!(users_on_b().await, StatusCode::OK, "node B now caches the API key");

    let clients: Value = a
        .http
        .get(a.url(&format!("/v1/projects/{}/m2m-clients", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let cid = clients["data"][0]["id"].as_str().unwrap();
    let r = a
        .http
        .delete(a.url(&format!("/v1/projects/{}/m2m-clients/{cid}", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        eventually(3, || async { token_on_b().await == StatusCode::UNAUTHORIZED }).await,
        "B still accepts the client"
    );

    let r = a
        .http
        .delete(a.url(&format!("/v1/projects/{}/api-keys/{}", s.project.id, s.api_key.id)))
        .bearer_auth(&s.api_key.plaintext)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        eventually(3, || async { users_on_b().await == StatusCode::UNAUTHORIZED }).await,
        "B still accepts the key"
    );

    // A key rotation: node B's JWKS shows the new next key without waiting for its cache time.
    jwks(&b, s.project.id).await;
    let rotation = a
        .control
        .rotate_keys(s.project.id, None, &authio_testkit::test_master_key(), chrono::Utc::now(), true)
        .await
        .unwrap();
    assert!(
        eventually(3, || async { jwks(&b, s.project.id).await.to_string().contains(&rotation.next_kid) }).await,
        "B still serves the old key set"
    );
}

#[tokio::test]
async fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
    let sign_in_from = |app: &TestApp, project: uuid::Uuid, forwarded: &str| {
        app.http
            .post(app.url("/v1/auth/signin"))
            .header("x-forwarded-for", forwarded)
            .json(&json!({"project_id": project, "email": "nobody@example.com", "password": "wrong"}))
            .send()
    };
    // Behind a trusted proxy (loopback here), each forwarded client has its own limit.
    let proxied = spawn_app_with(AppOptions {
        tune_auth: |a| {
            a.limits.signin_per_ip = 3;
            a.limits.account_failures = 1000;
            a.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        },
        ..AppOptions::default()
    })
    .await;
    let s = seed_tenant(&proxied.shared, "proxied", TenantKind::Customer, Plan::Pro).await;
    for _ in 0..3 {
        assert_eq!(
            sign_in_from(&proxied, s.project.id, "203.0.113.1").await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let r = sign_in_from(&proxied, s.project.id, "203.0.113.1").await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = sign_in_from(&proxied, s.project.id, "198.51.100.20, 203.0.113.2").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "another client behind the proxy is not limited");
    // Without trusted proxies the header is ignored: changing it does not escape the limit.
    let direct = spawn_app_with(AppOptions {
        tune_auth: |a| {
            a.limits.signin_per_ip = 3;
            a.limits.account_failures = 1000;
        },
        ..AppOptions::default()
    })
    .await;
    let s = seed_tenant(&direct.shared, "direct", TenantKind::Customer, Plan::Pro).await;
    for i in 0..3 {
        let r = sign_in_from(&direct, s.project.id, &format!("203.0.113.{i}")).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = sign_in_from(&direct, s.project.id, "203.0.113.99").await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn failed_api_keys_count_against_the_address_and_block_it() {
    let app = spawn_app_with(AppOptions {
        tune_auth: |a| {
            a.limits.client_failures_per_ip = 3;
        },
        ..AppOptions::default()
    })
    .await;
    let s = seed_tenant(&app.shared, "keyguess", TenantKind::Customer, Plan::Pro).await;
    let users = app.url(&format!("/v1/projects/{}/users", s.project.id));
    let (key_id, _) = authio_core::project::api_keys::parse(&s.api_key.plaintext).unwrap();
    let guess = format!("sk_{key_id}_{}", "A".repeat(43));
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(app.http.get(&users).bearer_auth(&guess).send().await.unwrap().status());
    }
    assert_eq!(statuses[..3], [StatusCode::UNAUTHORIZED; 3]);
    assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS);
    // The address is refused before its key is judged, the right key included, until the
    // window ends; introspection (which takes API keys too) as well.
    let r = app.http.get(&users).bearer_auth(&s.api_key.plaintext).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    let r = app
        .http
        .post(app.url("/v1/auth/introspect"))
        .bearer_auth(&s.api_key.plaintext)
        .form(&[("token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn every_kind_of_access_token_names_its_project_as_audience_and_m2m_honours_rfc_8707_resource() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let user_tokens = sign_up(&app, s.project.id, "aud@example.com").await;
    let user_aud = claims_of(user_tokens["access_token"].as_str().unwrap())["aud"].clone();
    assert_eq!(user_aud, json!(s.project.id.to_string()));
    // An M2M client made without an audience: the same default.
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{}/m2m-clients", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .json(&json!({"name": "plain", "scopes": ["read:users"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let plain: Value = r.json().await.unwrap();
    assert_eq!(plain["audience"], json!(s.project.id.to_string()));
    let (id, secret) =
        (plain["client_id"].as_str().unwrap().to_owned(), plain["client_secret"].as_str().unwrap().to_owned());
    let token = |resource: Option<&str>| {
        let mut form = vec![("grant_type", "client_credentials".to_owned())];
        if let Some(r) = resource {
            form.push(("resource", r.to_owned()));
        }
        app.http.post(app.url("/v1/auth/token")).basic_auth(&id, Some(&secret)).form(&form).send()
    };
    let body: Value = token(None).await.unwrap().json().await.unwrap();
    assert_eq!(claims_of(body["access_token"].as_str().unwrap())["aud"], user_aud);
    // RFC 8707: a resource the client may not address, or not an absolute URI, is invalid_target.
    for bad in ["https://other.example.com/api", "not a uri", "https://api.example.com/#frag"] {
        let r = token(Some(bad)).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_target", "{bad}");
    }
    // A client made for a resource server gets tokens for it.
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{}/m2m-clients", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .json(&json!({"name": "billing", "scopes": ["read:users"], "audience": "https://billing.example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let c: Value = r.json().await.unwrap();
    let r = app
        .http
        .post(app.url("/v1/auth/token"))
        .basic_auth(c["client_id"].as_str().unwrap(), Some(c["client_secret"].as_str().unwrap()))
        .form(&[("grant_type", "client_credentials"), ("resource", "https://billing.example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(claims_of(body["access_token"].as_str().unwrap())["aud"], "https://billing.example.com");
}
