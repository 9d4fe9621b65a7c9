//! Organizations, roles, permissions and memberships over real HTTP, and the claims an
//! organization-scoped session's access tokens carry, checked through the JWKS by an
//! independent JOSE implementation.
use authio_core::types::Plan;
use authio_db::TenantKind;
use authio_testkit::{admin_query_strings, make_dedicated, seed_tenant, spawn_app, Seeded, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::identity::{claims_of, issuer, jwks, refresh, sign_up, verify_independently};

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

/// Refresh into (or within) an organization: the new pair.
async fn refresh_into(app: &TestApp, rt: &str, org: Option<&str>) -> (StatusCode, Value) {
    let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", rt)];
    if let Some(o) = org {
        form.push(("organization_id", o));
    }
    let r = app.http.post(app.url("/v1/auth/token")).form(&form).send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn organizations_roles_and_memberships_scope_tokens_and_changes_show_at_the_next_refresh() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let other = seed_tenant(&app.shared, "globex", TenantKind::Customer, Plan::Pro).await;

    // Permissions first; a role may list only defined ones.
    for p in ["read:invoices", "write:invoices"] {
        let (st, body) = call(&app, &s, Method::POST, "/permissions", Some(json!({"slug": p}))).await;
        assert_eq!(st, StatusCode::CREATED, "{body}");
    }
    let (st, _) = call(&app, &s, Method::POST, "/permissions", Some(json!({"slug": "read:invoices"}))).await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, body) = call(
        &app,
        &s,
        Method::POST,
        "/roles",
        Some(json!({"slug": "auditor", "name": "Auditor", "permissions": ["read:ledgers"]})),
    )
    .await;
    assert_eq!((st, body["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("undefined_permission")));
    let (st, member) = call(
        &app,
        &s,
        Method::POST,
        "/roles",
        Some(json!({"slug": "member", "name": "Member", "permissions": ["read:invoices"], "is_default": true})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{member}");
    let (st, admin) = call(
        &app,
        &s,
        Method::POST,
        "/roles",
        Some(json!({"slug": "admin", "name": "Admin", "permissions": ["write:invoices", "read:invoices"]})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(admin["permissions"], json!(["read:invoices", "write:invoices"]));

    // Organizations: unique slug and external id per project; a name filter.
    let (st, initech) = call(
        &app,
        &s,
        Method::POST,
        "/organizations",
        Some(json!({"name": "Initech", "slug": "initech", "external_id": "crm-42", "metadata": {"tier": "gold"}})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{initech}");
    let (st, hooli) =
        call(&app, &s, Method::POST, "/organizations", Some(json!({"name": "Hooli", "slug": "hooli"}))).await;
    assert_eq!(st, StatusCode::CREATED);
    for dup in [json!({"name": "X", "slug": "initech"}), json!({"name": "X", "slug": "x", "external_id": "crm-42"})] {
        let (st, body) = call(&app, &s, Method::POST, "/organizations", Some(dup)).await;
        assert_eq!((st, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")));
    }
    let (st, body) = call(&app, &s, Method::POST, "/organizations", Some(json!({"name": "Y", "slug": "-bad"}))).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (_, page) = call(&app, &s, Method::GET, "/organizations?name=init", None).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["data"][0]["metadata"], json!({"tier": "gold"}));
    let (st, renamed) = call(
        &app,
        &s,
        Method::PATCH,
        &format!("/organizations/{}", initech["id"].as_str().unwrap()),
        Some(json!({"name": "Initech Ltd", "external_id": null})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!((renamed["name"].as_str(), renamed["external_id"].as_str()), (Some("Initech Ltd"), None));
    // Another tenant sees none of it.
    let org_path = format!("/organizations/{}", initech["id"].as_str().unwrap());
    let (st, _) = call(&app, &other, Method::GET, &org_path, None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (_, theirs) = call(&app, &other, Method::GET, "/organizations", None).await;
    assert_eq!(theirs["data"], json!([]));

    // A member with the default role; a session switched into the organization carries it.
    let alice = sign_up(&app, s.project.id, "alice@example.com").await;
    let alice_id = alice["user_id"].as_str().unwrap().to_owned();
    let members = format!("{org_path}/members");
    let (st, m) = call(&app, &s, Method::POST, &members, Some(json!({"user_id": alice_id}))).await;
    assert_eq!((st, m["role"].as_str(), m["status"].as_str()), (StatusCode::CREATED, Some("member"), Some("active")));
    let (st, _) = call(&app, &s, Method::POST, &members, Some(json!({"user_id": alice_id}))).await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, _) = call(&app, &other, Method::POST, &members, Some(json!({"user_id": alice_id}))).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "another tenant cannot add to it");

    // Not a member of Hooli: refused, and the refresh token is not spent.
    let rt = alice["refresh_token"].as_str().unwrap().to_owned();
    let (st, body) = refresh_into(&app, &rt, Some(hooli["id"].as_str().unwrap())).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    let (st, t) = refresh_into(&app, &rt, Some(initech["id"].as_str().unwrap())).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    let claims = claims_of(t["access_token"].as_str().unwrap());
    assert_eq!(claims["org_id"], initech["id"]);
    assert_eq!(claims["role"], "member");
    assert_eq!(claims["permissions"], json!(["read:invoices"]));
    verify_independently(
        &jwks(&app, s.project.id).await,
        t["access_token"].as_str().unwrap(),
        &issuer(&app, s.project.id),
    )
    .unwrap();

    // A role change shows at the next refresh (no organization named: the session keeps it).
    let (st, _) = call(&app, &s, Method::PATCH, &format!("{members}/{alice_id}"), Some(json!({"role": "admin"}))).await;
    assert_eq!(st, StatusCode::OK);
    let (st, t) = refresh(&app, t["refresh_token"].as_str().unwrap()).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    let claims = claims_of(t["access_token"].as_str().unwrap());
    assert_eq!(
        (claims["role"].as_str(), claims["permissions"].clone()),
        (Some("admin"), json!(["read:invoices", "write:invoices"]))
    );
    // So does a change of the role's permissions.
    let admin_path = format!("/roles/{}", admin["id"].as_str().unwrap());
    let (st, _) = call(&app, &s, Method::PATCH, &admin_path, Some(json!({"permissions": ["write:invoices"]}))).await;
    assert_eq!(st, StatusCode::OK);
    let (_, t) = refresh(&app, t["refresh_token"].as_str().unwrap()).await;
    assert_eq!(claims_of(t["access_token"].as_str().unwrap())["permissions"], json!(["write:invoices"]));

    // What is in use cannot be removed.
    let (st, body) = call(&app, &s, Method::DELETE, &admin_path, None).await;
    assert_eq!((st, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("role_in_use")));
    let (st, _) = call(&app, &s, Method::DELETE, "/permissions/write:invoices", None).await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, _) = call(&app, &s, Method::PATCH, &admin_path, Some(json!({"permissions": ["delete:everything"]}))).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);

    // Deactivated: the next token is the user's own, outside the organization.
    let (st, _) =
        call(&app, &s, Method::PATCH, &format!("{members}/{alice_id}"), Some(json!({"status": "deactivated"}))).await;
    assert_eq!(st, StatusCode::OK);
    let (_, t) = refresh(&app, t["refresh_token"].as_str().unwrap()).await;
    let claims = claims_of(t["access_token"].as_str().unwrap());
    assert!(claims.get("org_id").is_none() && claims.get("permissions").is_none(), "{claims}");

    // Deleting the organization ends its memberships; then the role can go.
    let (st, _) = call(&app, &s, Method::DELETE, &org_path, None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = call(&app, &s, Method::GET, &members, None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = call(&app, &s, Method::DELETE, &admin_path, None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);

    let actions = admin_query_strings(
        &app.shared.admin_url,
        &format!(
            "SELECT DISTINCT action FROM audit_events WHERE tenant_id = '{}' AND (action LIKE 'organization.%'
             OR action LIKE 'membership.%' OR action LIKE 'role.%') ORDER BY action",
            s.tenant.id
        ),
    )
    .await;
    assert_eq!(
        actions,
        vec![
            "membership.added",
            "membership.updated",
            "organization.created",
            "organization.deleted",
            "organization.updated",
            "role.created",
            "role.deleted",
            "role.permission_defined",
            "role.updated"
        ]
    );
}

#[tokio::test]
async fn a_dedicated_tenants_organizations_live_at_its_home() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Enterprise).await;
    let dedicated = make_dedicated(&app.shared, &s.tenant).await;
    let (st, role) =
        call(&app, &s, Method::POST, "/roles", Some(json!({"slug": "member", "name": "Member", "is_default": true})))
            .await;
    assert_eq!(st, StatusCode::CREATED, "{role}");
    let (st, org) =
        call(&app, &s, Method::POST, "/organizations", Some(json!({"name": "Initech", "slug": "initech"}))).await;
    assert_eq!(st, StatusCode::CREATED, "{org}");
    let alice = sign_up(&app, s.project.id, "alice@example.com").await;
    let members = format!("/organizations/{}/members", org["id"].as_str().unwrap());
    let (st, _) = call(&app, &s, Method::POST, &members, Some(json!({"user_id": alice["user_id"]}))).await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, t) = refresh_into(&app, alice["refresh_token"].as_str().unwrap(), org["id"].as_str()).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    assert_eq!(claims_of(t["access_token"].as_str().unwrap())["org_id"], org["id"]);
    let count = |url: String| async move {
        admin_query_strings(
            &url,
            "SELECT (SELECT count(*) FROM organizations) || '/' || (SELECT count(*) FROM memberships) || '/' ||
                    (SELECT count(*) FROM roles)",
        )
        .await
    };
    assert_eq!(count(dedicated.admin_url.clone()).await, vec!["1/1/1"]);
    assert_eq!(count(app.shared.admin_url.clone()).await, vec!["0/0/0"]);
}

#[tokio::test]
async fn the_platform_tenant_has_no_organizations() {
    // A member's `role` claim stands where the operator role is read: organizations, roles and
    // permissions are refused on the platform tenant, so no platform token carries one.
    let app = spawn_app().await;
    let platform = seed_tenant(&app.shared, "authio", TenantKind::Platform, Plan::Enterprise).await;
    for (path, body) in [
        ("/permissions", json!({"slug": "read:all"})),
        ("/roles", json!({"slug": "operator", "name": "Operator"})),
        ("/organizations", json!({"name": "Shadow", "slug": "shadow"})),
    ] {
        let (st, body) = call(&app, &platform, Method::POST, path, Some(body)).await;
        assert_eq!((st, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{path}");
    }
    let rows = admin_query_strings(
        &app.shared.admin_url,
        "SELECT (SELECT count(*) FROM roles) + (SELECT count(*) FROM organizations) + (SELECT count(*) FROM permissions)",
    )
    .await;
    assert_eq!(rows, vec!["0"]);
}

#[tokio::test]
async fn organization_domains_are_claimed_once_per_project_and_proved_by_dns() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let other = seed_tenant(&app.shared, "globex", TenantKind::Customer, Plan::Pro).await;
    let (_, initech) =
        call(&app, &s, Method::POST, "/organizations", Some(json!({"name": "Initech", "slug": "initech"}))).await;
    let (_, hooli) =
        call(&app, &s, Method::POST, "/organizations", Some(json!({"name": "Hooli", "slug": "hooli"}))).await;
    let domains = |org: &Value| format!("/organizations/{}/domains", org["id"].as_str().unwrap());
    let (st, d) = call(&app, &s, Method::POST, &domains(&initech), Some(json!({"domain": "Initech.COM"}))).await;
    assert_eq!(
        (st, d["domain"].as_str(), d["verified"].as_bool()),
        (StatusCode::CREATED, Some("initech.com"), Some(false))
    );
    // One organization per domain in a project; another tenant's project is its own business.
    let (st, body) = call(&app, &s, Method::POST, &domains(&hooli), Some(json!({"domain": "initech.com"}))).await;
    assert_eq!((st, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")));
    let (_, theirs) = call(&app, &other, Method::POST, "/organizations", Some(json!({"name": "I", "slug": "i"}))).await;
    let (st, _) = call(&app, &other, Method::POST, &domains(&theirs), Some(json!({"domain": "initech.com"}))).await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _) = call(&app, &s, Method::POST, &domains(&initech), Some(json!({"domain": "not a domain"}))).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);

    // Verified only once its TXT record is published.
    let verify = format!("{}/{}/verify", domains(&initech), d["id"].as_str().unwrap());
    let (st, body) = call(&app, &s, Method::POST, &verify, None).await;
    assert_eq!((st, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("domain_not_verified")));
    app.dns.publish(d["txt_name"].as_str().unwrap(), d["txt_value"].as_str().unwrap());
    let (st, body) = call(&app, &s, Method::POST, &verify, None).await;
    assert_eq!((st, body["verified"].as_bool()), (StatusCode::OK, Some(true)), "{body}");
    // The list filters by domain.
    let (_, page) = call(&app, &s, Method::GET, "/organizations?domain=initech.com", None).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["data"][0]["id"], initech["id"]);
    let (st, _) = call(&app, &s, Method::GET, "/organizations?domain=..", None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // Removed, the domain can be claimed by another organization.
    let (st, _) =
        call(&app, &s, Method::DELETE, &format!("{}/{}", domains(&initech), d["id"].as_str().unwrap()), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = call(&app, &s, Method::POST, &domains(&hooli), Some(json!({"domain": "initech.com"}))).await;
    assert_eq!(st, StatusCode::CREATED);
}

#[tokio::test]
async fn a_verified_email_at_a_verified_domain_joins_an_auto_join_organization_and_no_other() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let (st, _) =
        call(&app, &s, Method::POST, "/roles", Some(json!({"slug": "member", "name": "Member", "is_default": true})))
            .await;
    assert_eq!(st, StatusCode::CREATED);
    let (_, open) = call(
        &app,
        &s,
        Method::POST,
        "/organizations",
        Some(json!({"name": "Initech", "slug": "initech", "domain_policy": "auto_join"})),
    )
    .await;
    assert_eq!(open["domain_policy"], "auto_join");
    let (_, closed) =
        call(&app, &s, Method::POST, "/organizations", Some(json!({"name": "Hooli", "slug": "hooli"}))).await;
    assert_eq!(closed["domain_policy"], "invite_only");
    let (st, _) = call(
        &app,
        &s,
        Method::POST,
        "/organizations",
        Some(json!({"name": "X", "slug": "x", "domain_policy": "everyone"})),
    )
    .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    for org in [&open, &closed] {
        let path = format!("/organizations/{}/domains", org["id"].as_str().unwrap());
        let domain = if org == &open { "initech.test" } else { "hooli.test" };
        let (_, d) = call(&app, &s, Method::POST, &path, Some(json!({"domain": domain}))).await;
        app.dns.publish(d["txt_name"].as_str().unwrap(), d["txt_value"].as_str().unwrap());
        let (st, _) = call(&app, &s, Method::POST, &format!("{path}/{}/verify", d["id"].as_str().unwrap()), None).await;
        assert_eq!(st, StatusCode::OK);
    }
    let verified_email = |email: &'static str| {
        let url = app.shared.admin_url.clone();
        async move {
            admin_query_strings(&url, &format!("UPDATE users SET email_verified = true WHERE email = '{email}'")).await;
        }
    };
    // Peter's address is verified and at Initech's domain: switching in makes him a member.
    let peter = sign_up(&app, s.project.id, "peter@initech.test").await;
    verified_email("peter@initech.test").await;
    let (st, t) = refresh_into(&app, peter["refresh_token"].as_str().unwrap(), open["id"].as_str()).await;
    assert_eq!(st, StatusCode::OK, "{t}");
    let claims = claims_of(t["access_token"].as_str().unwrap());
    assert_eq!((claims["org_id"].clone(), claims["role"].as_str()), (open["id"].clone(), Some("member")));
    let (_, members) =
        call(&app, &s, Method::GET, &format!("/organizations/{}/members", open["id"].as_str().unwrap()), None).await;
    assert_eq!(members["data"].as_array().unwrap().len(), 1);
    // Not at the invite-only organization's domain policy, whatever the address.
    let gavin = sign_up(&app, s.project.id, "gavin@hooli.test").await;
    verified_email("gavin@hooli.test").await;
    let (st, _) = refresh_into(&app, gavin["refresh_token"].as_str().unwrap(), closed["id"].as_str()).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // An unverified address does not join either.
    let milton = sign_up(&app, s.project.id, "milton@initech.test").await;
    let (st, _) = refresh_into(&app, milton["refresh_token"].as_str().unwrap(), open["id"].as_str()).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let joined = admin_query_strings(
        &app.shared.admin_url,
        "SELECT count(*) FROM audit_events WHERE action = 'membership.added' AND metadata->>'by' = 'domain_policy'",
    )
    .await;
    assert_eq!(joined, vec!["1"]);
}
