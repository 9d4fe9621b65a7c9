//! Directory sync: SCIM 2.0 directories per organization over real HTTP, against real
//! databases: the lifecycle of users and groups with their effect on Authio (membership, role,
//! sessions ended by a deactivation), the shape of every error, isolation between directories
//! and tenants, the per-directory limit, provider traffic replayed, and an independent
//! compliance checker (tests/scim).
use authio_core::types::Plan;
use authio_db::TenantKind;
use authio_testkit::{admin_query_strings, seed_tenant, spawn_app, spawn_app_with, AppOptions, Seeded, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::identity::{introspect, refresh, sign_up};
use crate::upstream::api;

const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

struct Dir {
    base: String,
    token: String,
    id: String,
}

/// An organization with a verified domain and two roles, and a directory for it.
async fn directory(app: &TestApp, s: &Seeded, slug: &str) -> (String, Dir) {
    for (role, default) in [("member", true), ("admin", false)] {
        api(app, s, Method::POST, "/roles", json!({"slug": role, "name": role, "is_default": default})).await;
    }
    let (st, o) = api(app, s, Method::POST, "/organizations", json!({"name": slug, "slug": slug})).await;
    assert_eq!(st, StatusCode::CREATED, "{o}");
    let org = o["id"].as_str().unwrap().to_owned();
    let (st, _) =
        api(app, s, Method::POST, &format!("/organizations/{org}/domains"), json!({"domain": format!("{slug}.test")}))
            .await;
    assert_eq!(st, StatusCode::CREATED);
    admin_query_strings(&app.shared.admin_url, "UPDATE organization_domains SET verified_at = now()").await;
    let (st, d) = api(
        app,
        s,
        Method::POST,
        &format!("/organizations/{org}/directories"),
        json!({"name": "Okta", "group_roles": {"Engineering Admins": "admin"}}),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{d}");
    let token = d["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("scim_"));
    let base = d["scim_base_url"].as_str().unwrap().to_owned();
    (org, Dir { base, token, id: d["id"].as_str().unwrap().to_owned() })
}

async fn scim(app: &TestApp, d: &Dir, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = app.http.request(method, format!("{}{path}", d.base)).bearer_auth(&d.token);
    if let Some(b) = body {
        req = req.header("content-type", "application/scim+json").body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let st = r.status();
    if st != StatusCode::NO_CONTENT {
        assert_eq!(r.headers()["content-type"], "application/scim+json", "{path}");
    }
    (st, r.json().await.unwrap_or(Value::Null))
}

/// An access token of a password sign-in.
async fn signed_in(app: &TestApp, s: &Seeded, email: &str) -> String {
    let r = app
        .http
        .post(app.url("/v1/auth/signin"))
        .json(&json!({"project_id": s.project.id, "email": email, "password": crate::identity::PASSWORD}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

fn is_error(v: &Value, status: u16) -> bool {
    v["schemas"][0] == ERROR && v["status"].as_str() == Some(status.to_string().as_str())
}

fn user(name: &str, external: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": name, "externalId": external, "active": true,
        "name": {"givenName": "Alice", "familyName": "Liddell"},
        "emails": [{"value": name, "type": "work", "primary": true}],
    })
}

#[tokio::test]
async fn a_directory_provisions_maps_groups_and_deprovisions_with_sessions_ended() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let (org, d) = directory(&app, &s, "initech").await;

    // Management: bad input is refused with the API's codes.
    for (body, status) in [
        (json!({"name": ""}), StatusCode::UNPROCESSABLE_ENTITY),
        (json!({"name": "x", "group_roles": {"g": "no-such-role"}}), StatusCode::NOT_FOUND),
    ] {
        let (st, r) = api(&app, &s, Method::POST, &format!("/organizations/{org}/directories"), body.clone()).await;
        assert_eq!(st, status, "{body}: {r}");
    }
    let (st, list) = api(&app, &s, Method::GET, &format!("/organizations/{org}/directories"), Value::Null).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(list["data"][0].get("token").is_none(), "the token is shown once");

    // Without the token, with another, or at another directory: the same 401, SCIM's shape.
    for (token, base) in [
        ("", d.base.clone()),
        ("scim_wrong", d.base.clone()),
        (d.token.as_str(), d.base.replace(&d.id, &uuid::Uuid::new_v4().to_string())),
        (d.token.as_str(), d.base.replace(&d.id, "not-a-uuid")),
    ] {
        let r = app.http.get(format!("{base}/Users")).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(is_error(&r.json().await.unwrap(), 401));
    }
    // Discovery.
    let (st, spc) = scim(&app, &d, Method::GET, "/ServiceProviderConfig", None).await;
    assert_eq!((st, spc["patch"]["supported"].as_bool()), (StatusCode::OK, Some(true)));
    let (_, types) = scim(&app, &d, Method::GET, "/ResourceTypes", None).await;
    assert_eq!(types["totalResults"], 2);
    let (st, schema) = scim(&app, &d, Method::GET, "/Schemas/urn:ietf:params:scim:schemas:core:2.0:User", None).await;
    assert_eq!((st, schema["name"].as_str()), (StatusCode::OK, Some("User")));
    let (st, e) = scim(&app, &d, Method::GET, "/Nothing", None).await;
    assert!(st == StatusCode::NOT_FOUND && is_error(&e, 404), "{e}");

    // Alice has an account with a password already, her address proved; she signs in (a
    // session, a refresh token).
    sign_up(&app, s.project.id, "alice@initech.test").await;
    admin_query_strings(
        &app.shared.admin_url,
        "UPDATE users SET email_verified = true WHERE email = 'alice@initech.test'",
    )
    .await;
    let r = app
        .http
        .post(app.url("/v1/auth/signin"))
        .json(
            &json!({"project_id": s.project.id, "email": "alice@initech.test", "password": crate::identity::PASSWORD}),
        )
        .send()
        .await
        .unwrap();
    let tokens: Value = r.json().await.unwrap();
    let (access, refresh_token) =
        (tokens["access_token"].as_str().unwrap().to_owned(), tokens["refresh_token"].as_str().unwrap().to_owned());

    // Provisioning links her by email, makes her a member with the default role.
    let (st, a) = scim(&app, &d, Method::POST, "/Users", Some(user("alice@initech.test", "00u-alice"))).await;
    assert_eq!(st, StatusCode::CREATED, "{a}");
    let alice = a["id"].as_str().unwrap().to_owned();
    assert_eq!(a["meta"]["resourceType"], "User");
    assert_eq!(a["meta"]["location"].as_str().unwrap(), format!("{}/Users/{alice}", d.base));
    let (_, m) = api(&app, &s, Method::GET, &format!("/organizations/{org}/members"), Value::Null).await;
    assert_eq!((m["data"][0]["role"].as_str(), m["data"][0]["status"].as_str()), (Some("member"), Some("active")));
    let authio_id = m["data"][0]["user_id"].as_str().unwrap().to_owned();
    // userName is unique without case; so is externalId.
    for dup in [user("ALICE@initech.test", "other"), user("x@initech.test", "00u-alice")] {
        let (st, e) = scim(&app, &d, Method::POST, "/Users", Some(dup)).await;
        assert!(st == StatusCode::CONFLICT && is_error(&e, 409) && e["scimType"] == "uniqueness", "{e}");
    }
    // Bad input: no userName, a NUL, not JSON, a bad filter.
    let (st, e) = scim(&app, &d, Method::POST, "/Users", Some(json!({"emails": []}))).await;
    assert!(st == StatusCode::BAD_REQUEST && e["scimType"] == "invalidValue", "{e}");
    let (st, e) = scim(&app, &d, Method::POST, "/Users", Some(json!({"userName": "a\u{0}b@initech.test"}))).await;
    assert!(st == StatusCode::BAD_REQUEST && is_error(&e, 400), "{e}");
    let r = app.http.post(format!("{}/Users", d.base)).bearer_auth(&d.token).body("{").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["scimType"], "invalidSyntax");
    let (st, e) = scim(&app, &d, Method::GET, "/Users?filter=userName%20zz%20%22x%22", None).await;
    assert!(st == StatusCode::BAD_REQUEST && e["scimType"] == "invalidFilter", "{e}");

    // A directory speaks only for its organization's people. Victor's account is elsewhere:
    // naming him links nothing, and deactivating "him" leaves his account and sessions alone.
    sign_up(&app, s.project.id, "victor@elsewhere.test").await;
    let victor = signed_in(&app, &s, "victor@elsewhere.test").await;
    let (st, v) = scim(&app, &d, Method::POST, "/Users", Some(user("victor@elsewhere.test", "00u-victor"))).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let patch_off = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                           "Operations": [{"op": "replace", "value": {"active": false}}]});
    let (st, _) =
        scim(&app, &d, Method::PATCH, &format!("/Users/{}", v["id"].as_str().unwrap()), Some(patch_off.clone())).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(introspect(&app, &s, &victor).await["active"], true, "another organization's directory ends nothing");
    let victor_member = admin_query_strings(
        &app.shared.admin_url,
        "SELECT count(*) FROM memberships m JOIN users u ON u.tenant_id = m.tenant_id AND u.id = m.user_id
          WHERE u.email = 'victor@elsewhere.test'",
    )
    .await;
    assert_eq!(victor_member, vec!["0"]);
    // Grace's address is at the organization's domain, but whoever made her account with a
    // password never proved it: the directory takes it back (no password, no sessions).
    sign_up(&app, s.project.id, "grace@initech.test").await;
    let squatter = signed_in(&app, &s, "grace@initech.test").await;
    let (st, _) = scim(&app, &d, Method::POST, "/Users", Some(user("grace@initech.test", "00u-grace"))).await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(introspect(&app, &s, &squatter).await["active"], false);
    let r = app
        .http
        .post(app.url("/v1/auth/signin"))
        .json(
            &json!({"project_id": s.project.id, "email": "grace@initech.test", "password": crate::identity::PASSWORD}),
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "the squatter's password is gone");

    // Bob, new: created, his address at the organization's verified domain counts as proved.
    let (st, b) = scim(&app, &d, Method::POST, "/Users", Some(user("bob@initech.test", "00u-bob"))).await;
    assert_eq!(st, StatusCode::CREATED, "{b}");
    let bob = b["id"].as_str().unwrap().to_owned();
    assert_eq!(
        admin_query_strings(
            &app.shared.admin_url,
            "SELECT email_verified::text FROM users WHERE email = 'bob@initech.test'"
        )
        .await,
        vec!["true"]
    );

    // Reading: filters, pages, projections.
    let q =
        |f: &str| format!("/Users?filter={}", url::form_urlencoded::byte_serialize(f.as_bytes()).collect::<String>());
    for (f, n) in [
        (r#"userName eq "ALICE@initech.test""#, 1),
        (r#"externalId eq "00u-bob""#, 1),
        (r#"emails.value co "initech""#, 3),
        (r#"userName sw "bob" or userName sw "alice""#, 2),
        (r#"userName ne "bob@initech.test""#, 3),
        ("title pr", 0),
    ] {
        let (st, l) = scim(&app, &d, Method::GET, &q(f), None).await;
        assert_eq!((st, l["totalResults"].as_u64()), (StatusCode::OK, Some(n)), "{f}: {l}");
    }
    let (_, page) = scim(&app, &d, Method::GET, "/Users?startIndex=2&count=1&attributes=userName", None).await;
    assert_eq!(
        (page["totalResults"].as_u64(), page["itemsPerPage"].as_u64(), page["startIndex"].as_u64()),
        (Some(4), Some(1), Some(2))
    );
    let keys: Vec<String> = page["Resources"][0].as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, vec!["id", "schemas", "userName"]);
    let (_, one) = scim(&app, &d, Method::GET, &format!("/Users/{alice}?excludedAttributes=emails,name"), None).await;
    assert!(one.get("emails").is_none() && one.get("name").is_none() && one["userName"] == "alice@initech.test");

    // A group mapped to a role: its members get the role, and lose it when they leave.
    let (st, g) = scim(
        &app,
        &d,
        Method::POST,
        "/Groups",
        Some(json!({"displayName": "Engineering Admins", "members": [{"value": alice}]})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{g}");
    let group = g["id"].as_str().unwrap().to_owned();
    assert_eq!(g["members"][0]["value"], alice.as_str());
    let role_of = |who: String| {
        let (app, s, org) = (&app, &s, org.clone());
        async move {
            let (_, m) = api(app, s, Method::GET, &format!("/organizations/{org}/members"), Value::Null).await;
            m["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["user_id"] == who.as_str())
                .map(|x| (x["role"].as_str().unwrap().to_owned(), x["status"].as_str().unwrap().to_owned()))
        }
    };
    assert_eq!(role_of(authio_id.clone()).await, Some(("admin".into(), "active".into())));
    let (_, l) = scim(&app, &d, Method::GET, &format!("/Groups?filter=members.value%20eq%20%22{alice}%22"), None).await;
    assert_eq!(l["totalResults"], 1);
    let (st, g) = scim(
        &app,
        &d,
        Method::PATCH,
        &format!("/Groups/{group}"),
        Some(json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [
            {"op": "add", "path": "members", "value": [{"value": bob}]},
            {"op": "remove", "path": format!("members[value eq \"{alice}\"]")},
        ]})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{g}");
    assert_eq!(g["members"].as_array().unwrap().len(), 1);
    assert_eq!(role_of(authio_id.clone()).await, Some(("member".into(), "active".into())));

    // Deactivation (Okta: replace without a path) ends her sessions at once: her access token
    // no longer introspects active and her refresh token is refused.
    assert_eq!(introspect(&app, &s, &access).await["active"], true);
    let (st, a) = scim(
        &app,
        &d,
        Method::PATCH,
        &format!("/Users/{alice}"),
        Some(json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "replace", "value": {"active": false}}]})),
    )
    .await;
    assert_eq!((st, a["active"].as_bool()), (StatusCode::OK, Some(false)), "{a}");
    assert_eq!(introspect(&app, &s, &access).await["active"], false);
    let (st, _) = refresh(&app, &refresh_token).await;
    assert!(st.is_client_error(), "the refresh token died with the session");
    assert_eq!(role_of(authio_id.clone()).await.map(|r| r.1), Some("deactivated".into()));
    // Entra ID: capitalized operation, a string boolean.
    let (st, a) = scim(
        &app,
        &d,
        Method::PATCH,
        &format!("/Users/{alice}"),
        Some(json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "Replace", "path": "active", "value": "True"}]})),
    )
    .await;
    assert_eq!((st, a["active"].as_bool()), (StatusCode::OK, Some(true)), "{a}");
    assert_eq!(role_of(authio_id.clone()).await.map(|r| r.1), Some("active".into()));

    // PUT replaces the whole user; DELETE removes the membership; then 404.
    let mut replaced = user("alice@initech.test", "00u-alice");
    replaced["name"] = json!({"givenName": "Alicia", "familyName": "Liddell"});
    let (st, a) = scim(&app, &d, Method::PUT, &format!("/Users/{alice}"), Some(replaced)).await;
    assert_eq!((st, a["name"]["givenName"].as_str()), (StatusCode::OK, Some("Alicia")));
    assert_eq!(a["meta"]["version"], "W/\"4\"");
    let (st, _) = scim(&app, &d, Method::DELETE, &format!("/Users/{alice}"), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, e) = scim(&app, &d, Method::GET, &format!("/Users/{alice}"), None).await;
    assert!(st == StatusCode::NOT_FOUND && is_error(&e, 404));
    assert_eq!(role_of(authio_id.clone()).await, None);
    let (st, _) = scim(&app, &d, Method::DELETE, &format!("/Groups/{group}"), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);

    // Every change is in the audit log.
    let actions = admin_query_strings(
        &app.shared.admin_url,
        "SELECT action FROM audit_events WHERE action LIKE 'dsync.%' OR action LIKE 'directory.%' ORDER BY seq",
    )
    .await;
    for a in [
        "directory.created",
        "dsync.user.created",
        "dsync.group.created",
        "dsync.group.updated",
        "dsync.user.deactivated",
        "dsync.user.reactivated",
        "dsync.user.updated",
        "dsync.user.deleted",
        "dsync.group.deleted",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a} in {actions:?}");
    }

    // And in the event stream apps and webhooks read: the deactivation names the Authio user.
    let events = admin_query_strings(
        &app.shared.admin_url,
        "SELECT type || ':' || coalesce(data->>'user_id', data->>'group_id') || ':' || coalesce(data->>'active', '')
           FROM events WHERE type LIKE 'dsync.%' ORDER BY position",
    )
    .await;
    assert!(events.contains(&format!("dsync.user.deactivated:{authio_id}:false")), "{events:?}");
    assert!(events.iter().any(|e| e.starts_with(&format!("dsync.group.created:{group}"))), "{events:?}");
    // Rotating the token ends the old one at once; revoking leaves none.
    let (st, t) =
        api(&app, &s, Method::POST, &format!("/organizations/{org}/directories/{}/token", d.id), Value::Null).await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _) = scim(&app, &d, Method::GET, "/Users", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let rotated = Dir { token: t["token"].as_str().unwrap().to_owned(), ..d };
    let (st, _) = scim(&app, &rotated, Method::GET, "/Users", None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) =
        api(&app, &s, Method::DELETE, &format!("/organizations/{org}/directories/{}/token", rotated.id), Value::Null)
            .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = scim(&app, &rotated, Method::GET, "/Users", None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn one_directorys_token_sees_nothing_of_another_directory_organization_or_tenant() {
    let app = spawn_app().await;
    let a = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let b = seed_tenant(&app.shared, "globex", TenantKind::Customer, Plan::Pro).await;
    let (_, da) = directory(&app, &a, "initech").await;
    let (org_b, db) = directory(&app, &b, "hooli").await;
    let (st, u) = scim(&app, &da, Method::POST, "/Users", Some(user("alice@initech.test", "1"))).await;
    assert_eq!(st, StatusCode::CREATED);
    let alice = u["id"].as_str().unwrap().to_owned();
    // A second directory in tenant B's organization.
    let (_, d2) =
        api(&app, &b, Method::POST, &format!("/organizations/{org_b}/directories"), json!({"name": "Entra"})).await;
    let db2 = Dir {
        base: d2["scim_base_url"].as_str().unwrap().to_owned(),
        token: d2["token"].as_str().unwrap().to_owned(),
        id: d2["id"].as_str().unwrap().to_owned(),
    };
    for other in [&db, &db2] {
        let (st, l) = scim(&app, other, Method::GET, "/Users", None).await;
        assert_eq!((st, l["totalResults"].as_u64()), (StatusCode::OK, Some(0)));
        for (m, body) in [(Method::GET, None), (Method::PUT, Some(user("x@hooli.test", "9"))), (Method::DELETE, None)] {
            let (st, e) = scim(&app, other, m, &format!("/Users/{alice}"), body).await;
            assert!(st == StatusCode::NOT_FOUND && is_error(&e, 404), "{e}");
        }
        // Another directory's token on this directory's URL.
        let swapped = Dir { base: da.base.clone(), token: other.token.clone(), id: da.id.clone() };
        let (st, _) = scim(&app, &swapped, Method::GET, "/Users", None).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
    }
    let (st, l) = scim(&app, &da, Method::GET, "/Users", None).await;
    assert_eq!((st, l["totalResults"].as_u64()), (StatusCode::OK, Some(1)));
    // An organization deleted takes its directories with it: their tokens are refused at once.
    let (st, _) = api(&app, &b, Method::DELETE, &format!("/organizations/{org_b}"), Value::Null).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    for gone in [&db, &db2] {
        let (st, e) = scim(&app, gone, Method::POST, "/Users", Some(user("x@hooli.test", "9"))).await;
        assert!(st == StatusCode::UNAUTHORIZED && is_error(&e, 401), "{e}");
    }
}

#[tokio::test]
async fn a_directory_past_its_limit_is_answered_429_in_scims_shape() {
    let app = spawn_app_with(AppOptions {
        tune_auth: |a| a.directory_limit = authio_core::dsync::DirectoryLimit { per_second: 1.0, burst: 3.0 },
        ..Default::default()
    })
    .await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let (_, d) = directory(&app, &s, "initech").await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = app.http.get(format!("{}/Users", d.base)).bearer_auth(&d.token).send().await.unwrap();
        let st = r.status();
        let retry = r.headers().get("retry-after").is_some();
        let body: Value = r.json().await.unwrap();
        if st == StatusCode::TOO_MANY_REQUESTS {
            assert!(is_error(&body, 429) && retry, "{body}");
        }
        statuses.push(st);
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::OK).count(), 3, "{statuses:?}");
    assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS));
    // Another directory is not held back by this one.
    let org = admin_query_strings(&app.shared.admin_url, "SELECT id::text FROM organizations").await[0].clone();
    let (_, d2) =
        api(&app, &s, Method::POST, &format!("/organizations/{org}/directories"), json!({"name": "Second"})).await;
    let r = app
        .http
        .get(format!("{}/Users", d2["scim_base_url"].as_str().unwrap()))
        .bearer_auth(d2["token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// Run a script of tests/scim: its output, and whether it passed.
async fn script(args: &[&str], python: &str) -> (bool, String) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scim");
    let out = tokio::process::Command::new(python).args(args).current_dir(&dir).output().await.expect("python runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test]
async fn okta_and_entra_traffic_replays_and_an_independent_checker_finds_nothing_wrong() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let (org, _) = directory(&app, &s, "initech").await;
    let mut fresh = Vec::new();
    for name in ["okta", "entra", "checker"] {
        let (st, d) =
            api(&app, &s, Method::POST, &format!("/organizations/{org}/directories"), json!({"name": name})).await;
        assert_eq!(st, StatusCode::CREATED, "{d}");
        fresh.push((d["scim_base_url"].as_str().unwrap().to_owned(), d["token"].as_str().unwrap().to_owned()));
    }
    // Provider traffic, step by step, each file against a directory of its own (the reference
    // runner, standard library only: `python3`).
    for ((base, token), file) in fresh.iter().zip(["okta.json", "entra.json"]) {
        let (ok, out) = script(&["replay.py", "--keep-going", base, token, file], "python3").await;
        assert!(ok, "{file}:\n{out}");
    }
    // What the lifecycles leave: nobody provisioned is still a member (both delete their users).
    let members = admin_query_strings(
        &app.shared.admin_url,
        "SELECT count(*) FROM memberships m JOIN users u ON u.tenant_id = m.tenant_id AND u.id = m.user_id
          WHERE u.email IN ('alice@initech.test', 'bob@initech.test')",
    )
    .await;
    assert_eq!(members, vec!["0"]);
    let ended = admin_query_strings(
        &app.shared.admin_url,
        "SELECT count(*) FROM audit_events WHERE action IN ('dsync.user.deactivated', 'dsync.user.deleted')",
    )
    .await;
    assert_ne!(ended, vec!["0"]);

    // scim2-tester (PyPI): every check it runs passes.
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scim/.venv/bin/python");
    assert!(python.exists(), "the SCIM checker is not installed: run scripts/test (it makes {})", python.display());
    let (base, token) = &fresh[2];
    let (ok, out) = script(&["check.py", base, token], python.to_str().unwrap()).await;
    assert!(ok, "scim2-tester:\n{out}");
    assert!(out.contains(" passed, 0 failed"), "{out}");
}
