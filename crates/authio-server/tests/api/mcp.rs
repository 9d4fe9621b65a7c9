//! MCP clients through the official TypeScript SDK (`@modelcontextprotocol/sdk`): the example MCP
//! server (`examples/mcp-server`, Node.js) protects itself with a project's tokens, and a client
//! (`tests/mcp/client.mjs`) that knows only the server's URL finds the project through the 401 and
//! RFC 9728 metadata, registers itself (RFC 7591) or names itself by a Client ID Metadata Document,
//! has a scripted user sign in and consent on the hosted pages, and calls a tool. And what must
//! fail: a token for one resource at another, a refresh after the user revoked the consent, a
//! blocked client's authorization request.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use authio_core::types::Plan;
use authio_db::TenantKind;
use authio_testkit::{seed_tenant, spawn_app, Seeded, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

use crate::oidc_provider::{user, PASSWORD};

const EMAIL: &str = "ann@acme.test";
/// The name the client registers with (and puts in its metadata document).
const CLIENT_NAME: &str = "SDK Test Agent";

fn node_dir(relative: &str, module: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    assert!(
        dir.join("node_modules").join(module).exists(),
        "{module} is not installed in {}: run `npm ci --prefix {}` (scripts/test does)",
        dir.display(),
        dir.display()
    );
    dir
}

/// The example MCP server, on a port of its own choosing.
struct McpServer {
    child: tokio::process::Child,
    /// Its `/mcp` URL: the resource its tokens are for.
    resource: String,
    /// Its RFC 9728 metadata document.
    metadata: String,
}

impl McpServer {
    async fn start(issuer: &str) -> McpServer {
        let dir = node_dir("../../examples/mcp-server", "@modelcontextprotocol/sdk");
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("server.mjs"))
            .env("ISSUER", issuer)
            .env("PORT", "0")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs the example MCP server");
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(20), out.next_line())
            .await
            .expect("the MCP server starts")
            .unwrap()
            .expect("the MCP server prints its port");
        let first: Value = serde_json::from_str(&line).unwrap();
        McpServer {
            child,
            resource: first["resource"].as_str().unwrap().to_owned(),
            metadata: first["resource_metadata"].as_str().unwrap().to_owned(),
        }
    }

    async fn stop(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// Run the client script in `mode` and read its report.
async fn client(mode: &str, vars: &[(&str, &str)]) -> Value {
    let dir = node_dir("tests/mcp", "@modelcontextprotocol/sdk");
    let run = tokio::process::Command::new("node")
        .arg(dir.join("client.mjs"))
        .env("MODE", mode)
        .env("EMAIL", EMAIL)
        .env("PASSWORD", PASSWORD)
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run).await.expect("the MCP client finishes").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    let report: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{mode}: no report ({e}); stdout: {stdout}; stderr: {stderr}"));
    eprintln!("mcp client, {mode}: {}", serde_json::to_string_pretty(&report).unwrap());
    assert_eq!(report["ok"], true, "{mode}: {report}; stderr: {stderr}");
    report
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

/// The audit events of one action (waiting a little for `n` of them), oldest first.
async fn audited(app: &TestApp, s: &Seeded, action: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (st, body) = call(app, s, Method::GET, &format!("/audit-events?action={action}"), None).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        let mut events = body["data"].as_array().unwrap().clone();
        if events.len() >= n || tokio::time::Instant::now() > deadline {
            events.reverse();
            return events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn targets(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["target"]["id"].as_str().unwrap()).collect()
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

#[tokio::test]
async fn passes_the_official_mcp_sdk_oauth_flow_by_dynamic_registration_and_metadata_document() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let pid = s.project.id;
    let issuer = format!("{}/p/{pid}", app.base_url);
    // Registration and metadata documents on; a development project reads documents over http on
    // loopback, where the client script serves its own.
    let settings =
        json!({"dynamic_registration": true, "metadata_document_clients": true, "environment": "development"});
    let (st, body) = call(&app, &s, Method::PATCH, "/presentation", Some(settings)).await;
    assert_eq!(st, StatusCode::OK, "{body}");

    // Two MCP servers of the project, each a resource with the scope mcp:tools.
    let a = McpServer::start(&issuer).await;
    let b = McpServer::start(&issuer).await;
    for server in [&a, &b] {
        let resource = json!({"uri": server.resource, "name": "Example MCP server", "scopes": ["mcp:tools"]});
        let (st, body) = call(&app, &s, Method::POST, "/resources", Some(resource)).await;
        assert_eq!(st, StatusCode::CREATED, "{body}");
    }
    user(&app, &s, EMAIL).await;
    let (_, users) = call(&app, &s, Method::GET, "/users", None).await;
    let sub = users["data"][0]["id"].as_str().unwrap().to_owned();

    // (a) Dynamic registration: the SDK starts from the MCP server's URL alone.
    let apps_url = app.url(&format!("/p/{pid}/account/apps"));
    let r = client("dynamic", &[("MCP_URL", &a.resource), ("MCP_URL_B", &b.resource), ("APPS_URL", &apps_url)]).await;
    let trace: Vec<&str> = r["trace"].as_array().unwrap().iter().map(text).collect();
    let expected_start = [
        format!("POST {} 401 [Bearer scope=\"mcp:tools\", resource_metadata=\"{}\"]", a.resource, a.metadata),
        format!("GET {} 200", a.metadata),
        format!("GET {}/.well-known/oauth-authorization-server/p/{pid} 200", app.base_url),
        format!("POST {issuer}/oauth2/register 201"),
    ];
    assert_eq!(trace[..4], expected_start, "{trace:#?}");
    assert!(trace.contains(&format!("POST {issuer}/oauth2/token 200").as_str()), "{trace:#?}");
    let client_id = text(&r["client_id"]).to_owned();
    assert!(client_id.starts_with("oc_"), "{client_id}");
    assert_eq!(r["registrations"], 1);
    assert_eq!(r["interactive"], true);
    let params = &r["authorization"]["params"];
    assert_eq!(r["authorization"]["endpoint"], format!("{issuer}/oauth2/authorize"));
    assert_eq!(
        (&params["client_id"], &params["resource"], &params["scope"], &params["code_challenge_method"]),
        (&json!(client_id), &json!(a.resource), &json!("mcp:tools"), &json!("S256"))
    );
    let journey: Vec<&str> = r["authorization"]["journey"]["steps"].as_array().unwrap().iter().map(text).collect();
    let page = |p: &str| format!("/p/{pid}/{p}");
    assert_eq!(
        journey,
        [
            format!("GET {} 303", page("oauth2/authorize")),
            format!("GET {} 200", page("signin")),
            format!("POST {} 303", page("signin")),
            format!("GET {} 303", page("oauth2/authorize")),
            format!("GET {} 200", page("consent")),
            format!("POST {} 303", page("consent")),
            format!("GET {} 303", page("oauth2/authorize")),
            "GET /callback 200".to_owned(),
        ],
        "{journey:#?}"
    );
    let callback = &r["authorization"]["callback"];
    assert_eq!((&callback["iss"], &callback["state_matches"]), (&json!(issuer), &json!(true)), "{callback}");
    let consent = text(&r["consent_page"]);
    assert!(
        consent.contains(CLIENT_NAME) && consent.contains("unverified") && consent.contains(&a.resource),
        "{consent}"
    );
    assert!(consent.contains("registered by itself") && consent.contains("mcp:tools"), "{consent}");
    // The tool ran as the user; the token is for this server only, with no ID token.
    assert_eq!(r["whoami"]["tools"], json!(["whoami"]));
    assert_eq!((text(&r["whoami"]["sub"]), text(&r["whoami"]["client_id"])), (sub.as_str(), client_id.as_str()));
    let token = &r["token"];
    assert_eq!((&token["iss"], &token["aud"], &token["typ"]), (&json!(issuer), &json!(a.resource), &json!("at+jwt")));
    assert_eq!((&token["scope"], &token["has_id_token"]), (&json!("mcp:tools"), &json!(false)));
    // A plain OAuth 2.1 request (no openid) gets its refresh token as OAuth does, without
    // offline_access (which the resource's scopes do not list).
    assert_eq!(token["has_refresh_token"], true);
    // Negative: the token presented to the other MCP server of the same project.
    let other = &r["other_resource"];
    assert_eq!(other["status"], 401, "{other}");
    let challenge = text(&other["www_authenticate"]);
    assert!(challenge.contains("error=\"invalid_token\"") && challenge.contains(&b.metadata), "{challenge}");
    let bare = &r["no_token"];
    assert_eq!(bare["status"], 401);
    assert!(!text(&bare["www_authenticate"]).contains("error="), "no error code without a token: {bare}");

    // Offline access, asked for with the SDK's auth(): consent again (for the wider scope), a
    // refresh token, and a refresh through the SDK.
    let offline = &r["offline"];
    assert_eq!((&offline["started"], &offline["finished"]), (&json!("REDIRECT"), &json!("AUTHORIZED")), "{offline}");
    assert_eq!(offline["authorization"]["params"]["scope"], "mcp:tools offline_access");
    assert!(text(&offline["consent_page"]).contains("offline_access"), "{offline}");
    assert_eq!(offline["token"]["has_refresh_token"], true, "{offline}");
    assert_eq!((&offline["refreshed"], &offline["refresh_rotated"]), (&json!("AUTHORIZED"), &json!(true)));
    assert_eq!(
        (&offline["whoami_after_refresh"]["sub"], &offline["interactive_after_refresh"]),
        (&json!(sub), &json!(false))
    );

    // Negative: the user revokes the client at their connected apps; its refresh token is dead.
    let revocation = &r["revocation"];
    assert_eq!((&revocation["revoked"], &revocation["notice"]), (&json!(1), &json!(true)), "{revocation}");
    let listed = revocation["listed"].as_array().unwrap();
    assert!(listed.iter().any(|l| text(l).contains(CLIENT_NAME) && text(l).contains(&a.resource)), "{listed:?}");
    let refused = &r["refresh_after_revocation"];
    assert_eq!((&refused["refused"], &refused["error"]), (&json!(true), &json!("invalid_grant")), "{refused}");
    assert_eq!(refused["class"], "InvalidGrantError");
    // The SDK then starts over, and the user is asked again (and says no).
    let after = &r["after_revocation"];
    assert_eq!(after["auth"], "REDIRECT");
    assert!(after["invalidated"].as_array().unwrap().contains(&json!("tokens")), "{after}");
    assert_eq!((&after["consent_asked"], &after["callback"]["error"]), (&json!(3), &json!("access_denied")), "{after}");

    // (b) A Client ID Metadata Document the client serves itself on loopback.
    let r = client("metadata-document", &[("MCP_URL", &a.resource)]).await;
    let document = text(&r["document_url"]).to_owned();
    // This SDK takes `clientMetadataUrl` only over https; the client then gives the SDK the same
    // client id as its known client information.
    assert_eq!(r["sdk_client_metadata_url"]["accepted"], false, "{r}");
    assert!(text(&r["sdk_client_metadata_url"]["error"]).contains("HTTPS"), "{r}");
    assert_eq!((&r["client_id"], &r["registrations"]), (&json!(document), &json!(0)));
    assert_eq!(r["authorization"]["params"]["client_id"], document);
    assert_eq!(r["authorization"]["callback"]["iss"], issuer);
    assert!(r["document_fetches"].as_u64().unwrap() >= 1, "{r}");
    let consent = text(&r["consent_page"]);
    assert!(consent.contains(CLIENT_NAME) && consent.contains("from its metadata document"), "{consent}");
    assert_eq!((text(&r["whoami"]["sub"]), text(&r["whoami"]["client_id"])), (sub.as_str(), document.as_str()));
    assert_eq!((&r["token"]["aud"], &r["token"]["iss"]), (&json!(a.resource), &json!(issuer)));
    let trace: Vec<&str> = r["trace"].as_array().unwrap().iter().map(text).collect();
    assert!(!trace.iter().any(|t| t.contains("/oauth2/register")), "no registration: {trace:#?}");

    // The project's administrators see both third-party clients, and block them.
    let (st, clients) = call(&app, &s, Method::GET, "/oidc-clients", None).await;
    assert_eq!(st, StatusCode::OK);
    let listed = clients["data"].as_array().unwrap();
    let find = |id: &str| listed.iter().find(|c| c["client_id"] == id).unwrap_or_else(|| panic!("{id} in {clients}"));
    let (dynamic, by_document) = (find(&client_id), find(&document));
    assert_eq!((&dynamic["registration"], &dynamic["name"]), (&json!("dynamic"), &json!(CLIENT_NAME)));
    assert_eq!(
        (&by_document["registration"], &by_document["name"]),
        (&json!("metadata_document"), &json!(CLIENT_NAME))
    );
    for c in [dynamic, by_document] {
        let (st, body) = call(&app, &s, Method::POST, &format!("/oidc-clients/{}/block", text(&c["id"])), None).await;
        assert_eq!(st, StatusCode::NO_CONTENT, "{body}");
    }
    // Negative: their authorization requests end on the provider's page, never back at the client.
    let ids = serde_json::to_string(&[&client_id, &document]).unwrap();
    let r = client("blocked", &[("MCP_URL", &a.resource), ("CLIENT_IDS", &ids)]).await;
    for attempt in r["attempts"].as_array().unwrap() {
        assert_eq!(attempt["connected"], false, "{attempt}");
        let journey = &attempt["authorization"]["journey"];
        assert_eq!((&journey["at_client"], &journey["status"]), (&json!(false), &json!(400)), "{attempt}");
        assert!(text(&journey["page"]).contains("blocked"), "{attempt}");
        assert!(attempt["authorization"]["callback"].is_null(), "{attempt}");
    }

    // The audit log, as the API gives it.
    let registered = audited(&app, &s, "client.registered", 2).await;
    assert_eq!(targets(&registered), [client_id.as_str(), document.as_str()]);
    assert_eq!(
        registered.iter().map(|e| &e["metadata"]["registration"]).collect::<Vec<_>>(),
        [&json!("dynamic"), &json!("metadata_document")]
    );
    // Granted: the first consent, its widening to offline_access, the document client's.
    let granted = audited(&app, &s, "consent.granted", 3).await;
    assert_eq!(targets(&granted), [client_id.as_str(), client_id.as_str(), document.as_str()]);
    assert!(granted
        .iter()
        .all(|e| e["actor"]["id"] == sub.as_str() && e["metadata"]["resource"] == a.resource.as_str()));
    let revoked = audited(&app, &s, "consent.revoked", 1).await;
    assert_eq!(targets(&revoked), [client_id.as_str()]);
    assert!(revoked[0]["metadata"]["sessions_ended"].as_u64().unwrap() >= 1, "{revoked:?}");
    let blocked = audited(&app, &s, "client.blocked", 2).await;
    assert_eq!(targets(&blocked), [client_id.as_str(), document.as_str()]);

    a.stop().await;
    b.stop().await;
}
