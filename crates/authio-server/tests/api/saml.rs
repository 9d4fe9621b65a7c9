//! SAML 2.0 single sign-on against an independent identity provider run locally (pysaml2,
//! signing and encrypting through xmlsec1, in tests/saml-idp; `scripts/test` installs it):
//! SP- and IdP-initiated sign-in, encrypted assertions, certificate rollover, and a catalogue
//! of malicious responses, each refused with its reason in the audit log and nothing created.
use std::process::Stdio;
use std::time::Duration;

use authio_core::types::Plan;
use authio_db::TenantKind;
use authio_testkit::{admin_query_strings, seed_tenant, spawn_app, Seeded, TestApp};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

use crate::oidc_provider::hidden;
use crate::upstream::{api, challenge, exchange, Browser, APP_CB};

/// The identity provider process (killed on drop).
struct Idp {
    base: String,
    http: reqwest::Client,
    _child: tokio::process::Child,
}

impl Idp {
    async fn start() -> Idp {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/saml-idp");
        let python = dir.join(".venv/bin/python");
        assert!(python.exists(), "the test IdP is not installed: run scripts/test (it makes {})", python.display());
        let port = authio_db::cluster::free_port().expect("port");
        let mut child = tokio::process::Command::new(python)
            .arg("idp.py")
            .current_dir(&dir)
            .env("PORT", port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python runs");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(l)) = lines.next_line().await {
                if l.trim() == "ready" {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(matches!(ready, Ok(true)), "the identity provider started");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Idp { base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new(), _child: child }
    }

    /// Settings for the next response only.
    async fn next(&self, settings: Value) {
        let r = self.http.post(format!("{}/next", self.base)).json(&settings).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{}", r.text().await.unwrap());
    }

    async fn know_sp(&self, metadata: &str) {
        let r = self.http.post(format!("{}/sp", self.base)).body(metadata.to_owned()).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }

    async fn last(&self) -> String {
        self.http.get(format!("{}/last", self.base)).send().await.unwrap().text().await.unwrap()
    }
}

/// The auto-posting form an identity provider answers with: (action, SAMLResponse).
fn saml_form(html: &str) -> (String, String) {
    let at = html.find("action=\"").expect("a form") + 8;
    let action = html[at..at + html[at..].find('"').unwrap()].replace("&amp;", "&");
    (action, hidden(html, "SAMLResponse"))
}

struct Setup {
    app: TestApp,
    s: Seeded,
    idp: Idp,
    conn: Value,
    org: String,
}

impl Setup {
    fn acs(&self) -> String {
        self.conn["saml"]["acs_url"].as_str().unwrap().to_owned()
    }

    fn conn_path(&self) -> String {
        format!("/oauth-connections/{}", self.conn["id"].as_str().unwrap())
    }

    /// Start at the hosted page with an address at the organization's domain, through our
    /// AuthnRequest to the identity provider; its form (ACS, SAMLResponse).
    async fn request(&self, b: &mut Browser, email: &str) -> (String, String) {
        let flow = [
            ("redirect_uri", APP_CB),
            ("state", "xyz"),
            ("code_challenge", &challenge()),
            ("code_challenge_method", "S256"),
        ]
        .map(|(k, v)| (k, v.to_owned()));
        let q = serde_urlencoded::to_string(&flow).unwrap();
        let (st, _, html) = b.get(&self.app.url(&format!("/p/{}/signin?{q}", self.s.project.id))).await;
        assert_eq!(st, StatusCode::OK);
        let csrf = hidden(&html, "csrf");
        let mut form: Vec<(&str, &str)> = vec![("csrf", &csrf), ("email", email)];
        form.extend(flow.iter().map(|(k, v)| (*k, v.as_str())));
        let (st, to, body) = b.post(&self.app.url(&format!("/p/{}/sso", self.s.project.id)), &form).await;
        assert_eq!(st, StatusCode::SEE_OTHER, "{body}");
        let at_idp = b.follow_until(&to.unwrap(), &format!("{}/sso/redirect", self.idp.base)).await;
        let (st, _, html) = b.get(&at_idp).await;
        assert_eq!(st, StatusCode::OK, "{html}");
        let (action, response) = saml_form(&html);
        assert_eq!(action, self.acs());
        (action, response)
    }

    /// Post a Response to the ACS: the tokens of the sign-in, or the refusal's page.
    async fn post(&self, b: &mut Browser, response: &str) -> (StatusCode, Value, String) {
        let (st, location, body) = b.post(&self.acs(), &[("SAMLResponse", response), ("RelayState", "r")]).await;
        if st != StatusCode::SEE_OTHER {
            return (st, Value::Null, body);
        }
        let (st, tokens) = exchange(&self.app, &location.unwrap()).await;
        assert_eq!(st, StatusCode::OK, "{tokens}");
        (st, tokens, String::new())
    }

    async fn sign_in(&self, email: &str) -> (StatusCode, Value, String) {
        let mut b = Browser::new();
        let (_, response) = self.request(&mut b, email).await;
        self.post(&mut b, &response).await
    }

    async fn refusals(&self) -> Vec<String> {
        admin_query_strings(
            &self.app.shared.admin_url,
            "SELECT metadata->>'code' FROM audit_events WHERE action = 'sso.refused' ORDER BY seq",
        )
        .await
    }

    async fn count(&self, sql: &str) -> String {
        admin_query_strings(&self.app.shared.admin_url, sql).await[0].clone()
    }

    /// Events written beside the shared database's rows reach the log through the relay:
    /// wait (a few seconds at most) until `sql` counts `expected`.
    async fn eventually(&self, sql: &str, expected: &str) {
        for _ in 0..100 {
            if self.count(sql).await == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(self.count(sql).await, expected, "{sql}");
    }
}

async fn setup() -> Setup {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let idp = Idp::start().await;
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
    let (st, o) = api(&app, &s, Method::POST, "/organizations", json!({"name": "Initech", "slug": "initech"})).await;
    assert_eq!(st, StatusCode::CREATED, "{o}");
    let org = o["id"].as_str().unwrap().to_owned();
    let (st, _) =
        api(&app, &s, Method::POST, &format!("/organizations/{org}/domains"), json!({"domain": "initech.test"})).await;
    assert_eq!(st, StatusCode::CREATED);
    admin_query_strings(&app.shared.admin_url, "UPDATE organization_domains SET verified_at = now()").await;

    // Bad input: no identity provider, two descriptions of it, metadata that is not, a
    // certificate that is not, no organization.
    let metadata_url = format!("{}/metadata", idp.base);
    for (body, field) in [
        (json!({"slug": "x", "organization_id": org}), "idp_metadata_xml"),
        (
            json!({"slug": "x", "organization_id": org, "idp_metadata_url": metadata_url, "idp_metadata_xml": "<x/>"}),
            "exactly one",
        ),
        (json!({"slug": "x", "organization_id": org, "idp_metadata_xml": "<md:EntityDescriptor/>"}), "metadata"),
        (
            json!({"slug": "x", "organization_id": org, "idp_entity_id": "urn:x", "idp_sso_url": "https://idp.example/sso",
                   "idp_certificates": ["not a certificate"]}),
            "idp_certificates",
        ),
        (json!({"slug": "x", "idp_metadata_url": metadata_url}), "organization_id"),
    ] {
        let (st, r) = api(&app, &s, Method::POST, "/saml-connections", body.clone()).await;
        assert!(st.is_client_error(), "{body}: {st} {r}");
        assert!(r.to_string().contains(field), "{body}: {r}");
    }
    assert_eq!(admin_query_strings(&app.shared.admin_url, "SELECT count(*) FROM oauth_connections").await, vec!["0"]);

    let (st, conn) = api(
        &app,
        &s,
        Method::POST,
        "/saml-connections",
        json!({
            "slug": "initech-saml", "display_name": "Initech Okta", "organization_id": org,
            "idp_metadata_url": metadata_url, "attribute_preset": "okta",
            "group_roles": {"admins": "admin", "staff": "member"},
        }),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{conn}");
    assert_eq!(conn["kind"], "saml");
    assert_eq!(conn["saml"]["idp_entity_id"].as_str(), Some(metadata_url.as_str()));
    assert_eq!(conn["saml"]["idp_initiated"], false, "off unless turned on");
    assert_eq!(conn["saml"]["idp_certificates"].as_array().unwrap().len(), 1);
    // Our metadata, served where our entity id says, is what the identity provider imports.
    let entity = conn["saml"]["sp_entity_id"].as_str().unwrap();
    let r = app.http.get(entity).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/samlmetadata+xml");
    let metadata = r.text().await.unwrap();
    assert!(metadata.contains(&format!("entityID=\"{entity}\"")), "{metadata}");
    assert!(metadata.contains(conn["saml"]["acs_url"].as_str().unwrap()));
    assert!(metadata.contains(conn["saml"]["sp_certificate"].as_str().unwrap()));
    idp.know_sp(&metadata).await;
    Setup { app, s, idp, conn, org }
}

#[tokio::test]
async fn saml_sign_in_through_an_independent_identity_provider_sp_and_idp_initiated_encrypted_and_rolled_over() {
    let t = setup().await;
    let (app, s) = (&t.app, &t.s);

    // SP-initiated: Alice is new, her address at the organization's verified domain; she is
    // created, joins with the role her group maps to, her names are kept, and the app gets
    // its code.
    t.idp
        .next(json!({"name_id": "alice-0001", "attributes": {
            "email": ["alice@initech.test"], "firstName": ["Alice"], "lastName": ["Liddell"], "groups": ["everyone", "admins"]}}))
        .await;
    let (st, tokens, body) = t.sign_in("alice@initech.test").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let claims = crate::identity::claims_of(tokens["access_token"].as_str().unwrap());
    let alice = claims["sub"].as_str().unwrap().to_owned();
    assert_eq!(claims["amr"], json!(["saml"]));
    let row = admin_query_strings(
        &app.shared.admin_url,
        &format!("SELECT email || ' ' || given_name || ' ' || family_name FROM users WHERE id = '{alice}'"),
    )
    .await;
    assert_eq!(row, vec!["alice@initech.test Alice Liddell"]);
    let r = app
        .http
        .get(app.url(&format!("/v1/projects/{}/users", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .send()
        .await
        .unwrap();
    let list: Value = r.json().await.unwrap();
    let user = list["data"].as_array().unwrap().iter().find(|u| u["id"] == alice.as_str()).unwrap().clone();
    assert_eq!((user["given_name"].as_str(), user["family_name"].as_str()), (Some("Alice"), Some("Liddell")));
    let (_, m) = api(app, s, Method::GET, &format!("/organizations/{}/members", t.org), Value::Null).await;
    assert_eq!(m["data"][0]["user_id"], alice.as_str());
    assert_eq!(m["data"][0]["role"], "admin");
    // The profile follows the identity provider at each sign-in, and so does the role.
    t.idp
        .next(json!({"name_id": "alice-0001", "attributes": {
            "email": ["alice@initech.test"], "firstName": ["Alicia"], "groups": ["staff"]}}))
        .await;
    let (st, _, body) = t.sign_in("alice@initech.test").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(
        t.count(&format!("SELECT given_name || ' ' || family_name FROM users WHERE id = '{alice}'")).await,
        "Alicia Liddell"
    );
    let (_, m) = api(app, s, Method::GET, &format!("/organizations/{}/members", t.org), Value::Null).await;
    assert_eq!(m["data"][0]["role"], "member");
    t.eventually("SELECT count(*) FROM audit_events WHERE action = 'sso.signed_in'", "2").await;

    // An answer to our request that arrives in another browser (a response someone posts to
    // a victim's browser: login CSRF) does not sign in there: that browser is asked to
    // confirm whose account it is, and only then goes on to the app.
    t.idp.next(json!({"name_id": "alice-0001", "attributes": {"email": ["alice@initech.test"]}})).await;
    let (_, response) = t.request(&mut Browser::new(), "alice@initech.test").await;
    let mut victim = Browser::new();
    let (st, _, page) = victim.post(&t.acs(), &[("SAMLResponse", response.as_str())]).await;
    assert_eq!(st, StatusCode::OK, "not signed in straight away: {page}");
    assert!(page.contains("alice@initech.test") && page.contains("Continue"), "{page}");
    let confirm = app.url(&format!("/p/{}/saml/{}/confirm", s.project.id, t.conn["id"].as_str().unwrap()));
    let (token, csrf) = (hidden(&page, "token"), hidden(&page, "csrf"));
    let (st, location, body) = victim.post(&confirm, &[("csrf", &csrf), ("token", &token)]).await;
    assert_eq!(st, StatusCode::SEE_OTHER, "{body}");
    let (st, tokens) = exchange(app, &location.unwrap()).await;
    assert_eq!(st, StatusCode::OK, "{tokens}");

    // Encrypted assertions (RSA-OAEP to our certificate), AES-GCM and AES-CBC, with the
    // Response signed over the encrypted form as well.
    for (encryption, sign_response) in [("aes256-gcm", true), ("aes128-cbc", false), ("aes128-gcm", false)] {
        t.idp
            .next(json!({"name_id": "alice-0001", "encrypt": true, "encryption": encryption,
                          "sign_response": sign_response, "attributes": {"email": ["alice@initech.test"]}}))
            .await;
        let (st, tokens, body) = t.sign_in("alice@initech.test").await;
        assert_eq!(st, StatusCode::OK, "{encryption}: {body}");
        assert_eq!(crate::identity::claims_of(tokens["access_token"].as_str().unwrap())["sub"], alice.as_str());
        assert!(t.idp.last().await.contains("EncryptedAssertion"));
    }

    // Certificate rollover: the identity provider's next key is refused until the connection
    // lists it beside the current one; then both work; then only the new one.
    t.idp.next(json!({"name_id": "alice-0001", "key": "b"})).await;
    let (st, _, body) = t.sign_in("alice@initech.test").await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("does not verify"), "{body}");
    let both = format!("{}/metadata?keys=a,b", t.idp.base);
    let (st, c) = api(app, s, Method::PATCH, &t.conn_path(), json!({"idp_metadata_url": both})).await;
    assert_eq!(st, StatusCode::OK, "{c}");
    assert_eq!(c["saml"]["idp_certificates"].as_array().unwrap().len(), 2);
    for key in ["b", "a"] {
        t.idp.next(json!({"name_id": "alice-0001", "key": key})).await;
        let (st, _, body) = t.sign_in("alice@initech.test").await;
        assert_eq!(st, StatusCode::OK, "key {key}: {body}");
    }
    let only_b = format!("{}/metadata?keys=b", t.idp.base);
    let (st, _) = api(app, s, Method::PATCH, &t.conn_path(), json!({"idp_metadata_url": only_b})).await;
    assert_eq!(st, StatusCode::OK);
    t.idp.next(json!({"name_id": "alice-0001", "key": "a"})).await;
    let (st, _, _) = t.sign_in("alice@initech.test").await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "the retired certificate no longer signs");
    t.eventually("SELECT count(*) FROM audit_events WHERE action = 'connection.updated'", "2").await;

    // IdP-initiated: refused while off; once on, a page asks the person to confirm, in the
    // browser the response came to, once.
    let unsolicited = || async {
        let mut b = Browser::new();
        let url = format!(
            "{}/idp-initiated?sp={}",
            t.idp.base,
            url::form_urlencoded::byte_serialize(t.conn["saml"]["sp_entity_id"].as_str().unwrap().as_bytes())
                .collect::<String>()
        );
        let (st, _, html) = b.get(&url).await;
        assert_eq!(st, StatusCode::OK, "{html}");
        let (_, response) = saml_form(&html);
        (b, response)
    };
    t.idp.next(json!({"name_id": "bob-0002", "attributes": {"email": ["bob@initech.test"]}, "key": "b"})).await;
    let (mut b, response) = unsolicited().await;
    let (st, _, body) = t.post(&mut b, &response).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body.contains("started at the identity provider"), "{body}");
    let (st, _) = api(app, s, Method::PATCH, &t.conn_path(), json!({"idp_initiated": true})).await;
    assert_eq!(st, StatusCode::OK);
    t.idp.next(json!({"name_id": "bob-0002", "attributes": {"email": ["bob@initech.test"]}, "key": "b"})).await;
    let (mut b, response) = unsolicited().await;
    let (st, _, page) = b.post(&t.acs(), &[("SAMLResponse", response.as_str())]).await;
    assert_eq!(st, StatusCode::OK, "{page}");
    assert!(page.contains("bob@initech.test") && page.contains("Continue"), "{page}");
    assert_eq!(
        t.count("SELECT count(*) FROM users WHERE email = 'bob@initech.test'").await,
        "0",
        "not before confirming"
    );
    let (token, csrf) = (hidden(&page, "token"), hidden(&page, "csrf"));
    let confirm = app.url(&format!("/p/{}/saml/{}/confirm", s.project.id, t.conn["id"].as_str().unwrap()));
    // Another browser (no cookie from the response's page) cannot use the confirmation.
    let mut other = Browser::new();
    let (_, _, other_page) = other.get(&app.url(&format!("/p/{}/signin", s.project.id))).await;
    let other_csrf = hidden(&other_page, "csrf");
    let (st, _, _) = other.post(&confirm, &[("csrf", &other_csrf), ("token", &token)]).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _, done) = b.post(&confirm, &[("csrf", &csrf), ("token", &token)]).await;
    assert_eq!(st, StatusCode::OK, "{done}");
    assert!(done.contains("You are signed in"), "{done}");
    assert_eq!(t.count("SELECT count(*) FROM users WHERE email = 'bob@initech.test'").await, "1");
    let (st, _, _) = b.post(&confirm, &[("csrf", &csrf), ("token", &token)]).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "a confirmation is used once");

    // Turning off the organization's last connection while it requires single sign-on is
    // refused; turning it off otherwise stops its sign-ins.
    let (st, _) = api(app, s, Method::PATCH, &format!("/organizations/{}", t.org), json!({"sso_required": true})).await;
    assert_eq!(st, StatusCode::OK);
    let (st, r) = api(app, s, Method::PATCH, &t.conn_path(), json!({"enabled": false})).await;
    assert_eq!((st, r["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")), "{r}");
    let (st, _) =
        api(app, s, Method::PATCH, &format!("/organizations/{}", t.org), json!({"sso_required": false})).await;
    assert_eq!(st, StatusCode::OK);
    let (st, c) = api(app, s, Method::PATCH, &t.conn_path(), json!({"enabled": false})).await;
    assert_eq!((st, c["enabled"].as_bool()), (StatusCode::OK, Some(false)));
    let (st, _) = api(app, s, Method::GET, &t.conn_path(), Value::Null).await;
    assert_eq!(st, StatusCode::OK);
    assert!(t.refusals().await.iter().all(|c| c != "error"), "every refusal has its reason");
}

/// Replace the first `from` (after `after`) by `to`.
fn replace_after(xml: &str, after: &str, from: &str, to: &str) -> String {
    let start = xml.find(after).unwrap_or_else(|| panic!("{after} in {xml}"));
    let at = start + xml[start..].find(from).unwrap_or_else(|| panic!("{from} after {after}"));
    format!("{}{}{}", &xml[..at], to, &xml[at + from.len()..])
}

/// The assertion element of a response (its text from `<saml:Assertion` to its end).
fn assertion_of(xml: &str) -> String {
    let start = xml.find("<saml:Assertion").expect("an assertion");
    let end = xml.find("</saml:Assertion>").unwrap() + "</saml:Assertion>".len();
    xml[start..end].to_owned()
}

fn b64(xml: &str) -> String {
    STANDARD.encode(xml)
}

#[tokio::test]
async fn a_catalogue_of_malicious_saml_responses_is_refused_with_reasons_and_creates_nothing() {
    let t = setup().await;
    let users_before = t.count("SELECT count(*) FROM users").await;
    let evil = "mallory@initech.test";

    // Responses the identity provider signed, wrong in one way each.
    let signed_wrong = [
        (json!({"audience": "https://other.example/sp"}), "wrong_audience", "another audience"),
        (json!({"recipient": "https://other.example/acs"}), "wrong_recipient", "another recipient"),
        (json!({"destination": "https://other.example/acs"}), "wrong_destination", "another service"),
        (json!({"time_shift_secs": -3600}), "expired", "expired"),
        (json!({"time_shift_secs": 3600}), "not_yet_valid", "not valid yet"),
        (json!({"key": "rogue"}), "bad_signature", "does not verify"),
        (json!({"issuer": "https://other-idp.example/"}), "wrong_issuer", "another identity provider"),
        (json!({"sign_assertion": false, "sign_response": true}), "unsigned_assertion", "not signed"),
        (json!({"sign_assertion": false}), "unsigned_assertion", "not signed"),
        (json!({"in_response_to": "id-nobody-sent"}), "unknown_request", "unknown, used or expired"),
        // Kept in the replay cache only so long: a longer-lived assertion could come back later.
        (json!({"lifetime_secs": 172800}), "validity_too_long", "longer than a day"),
    ];
    for (settings, code, says) in signed_wrong {
        let mut next = json!({"name_id": "mallory-1", "attributes": {"email": [evil]}});
        next.as_object_mut().unwrap().extend(settings.as_object().unwrap().clone());
        t.idp.next(next).await;
        let (st, _, body) = t.sign_in(evil).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{settings}: {body}");
        assert!(body.contains(says), "{settings}: {body}");
        assert_eq!(t.refusals().await.last().map(String::as_str), Some(code), "{settings}");
    }

    // Tampered copies of a good response (its request is left unanswered by each of them).
    t.idp
        .next(json!({"name_id": "alice@initech.test.evil.test", "name_id_format": "email",
                       "attributes": {"email": ["alice@initech.test.evil.test"]}}))
        .await;
    let mut b = Browser::new();
    let (_, good) = t.request(&mut b, "alice@initech.test").await;
    let xml = String::from_utf8(STANDARD.decode(&good).unwrap()).unwrap();
    let assertion = assertion_of(&xml);
    let id_at = assertion.find(" ID=\"").unwrap() + 5;
    let id = &assertion[id_at..id_at + assertion[id_at..].find('"').unwrap()];
    // An unsigned copy with another NameID and id (its signature removed).
    let sig_start = assertion.find("<ds:Signature").unwrap();
    let sig_end = assertion.find("</ds:Signature>").unwrap() + "</ds:Signature>".len();
    let unsigned_evil = format!("{}{}", &assertion[..sig_start], &assertion[sig_end..])
        .replace("alice@initech.test.evil.test", evil)
        .replace(id, "evil-1");
    let tampered: Vec<(&str, String, &str)> = vec![
        // XSW: an evil assertion before the signed one.
        ("evil assertion first", xml.replace(&assertion, &format!("{unsigned_evil}{assertion}")), "signature_wrapping"),
        // XSW: the signed assertion hidden in Extensions, an evil one in its place.
        (
            "signed assertion in Extensions",
            replace_after(
                &xml.replace(&assertion, &unsigned_evil),
                "<saml:Issuer",
                "</saml:Issuer>",
                &format!("</saml:Issuer><samlp:Extensions>{assertion}</samlp:Extensions>"),
            ),
            "signature_wrapping",
        ),
        // XSW: the evil assertion wraps the signed one (in its Advice).
        (
            "signed assertion inside the evil one",
            xml.replace(
                &assertion,
                &replace_after(
                    &unsigned_evil,
                    "</saml:Issuer>",
                    "</saml:Issuer>",
                    &format!("</saml:Issuer><saml:Advice>{assertion}</saml:Advice>"),
                ),
            ),
            "signature_wrapping",
        ),
        // XSW: two elements with the signed assertion's id.
        (
            "duplicate id",
            xml.replace(&assertion, &format!("{assertion}{}", unsigned_evil.replace("evil-1", id))),
            "signature_wrapping",
        ),
        // The signed assertion itself changed.
        (
            "changed NameID",
            xml.replace("alice@initech.test.evil.test</saml:NameID>", &format!("{evil}</saml:NameID>")),
            "bad_signature",
        ),
        // A comment splitting the NameID: C14N without comments still verifies it, and a
        // careless reader would take "alice@initech.test".
        (
            "comment in NameID",
            xml.replace(
                "alice@initech.test.evil.test</saml:NameID>",
                "alice@initech.test<!---->.evil.test</saml:NameID>",
            ),
            "comment_in_identity",
        ),
        // An external entity.
        (
            "XXE",
            xml.replacen(
                "<samlp:Response",
                "<!DOCTYPE r [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><samlp:Response",
                1,
            ),
            "doctype",
        ),
        ("not XML", "<samlp:Response".to_owned(), "malformed"),
        // A reference to the whole document, not to the assertion the signature sits in.
        ("reference to the whole document", xml.replacen("URI=\"#", "URI=\"\" data-was=\"", 1), "signature_wrapping"),
    ];
    for (what, bad, code) in tampered {
        let (st, _, body) = t.post(&mut Browser::new(), &b64(&bad)).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert_eq!(t.refusals().await.last().map(String::as_str), Some(code), "{what}");
    }
    // The untouched response verifies (its request was waiting for it) and is judged on what
    // it says: an address at .evil.test is not one the organization vouches for. Once.
    let (st, _, body) = t.post(&mut b, &good).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("verified domains"), "a .evil.test address is not Initech's: {body}");
    let (st, _, body) = t.post(&mut b, &good).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body.contains("used before"), "{body}");
    assert_eq!(t.refusals().await.last().map(String::as_str), Some("replayed"));
    // A replay of a response that signed somebody in is refused too.
    t.idp.next(json!({"name_id": "alice-0001", "attributes": {"email": ["alice@initech.test"]}})).await;
    let mut b = Browser::new();
    let (_, response) = t.request(&mut b, "alice@initech.test").await;
    let (st, _, body) = t.post(&mut b, &response).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (st, _, body) = t.post(&mut Browser::new(), &response).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(body.contains("used before"), "{body}");

    // Nothing was created for any of them: only Alice, once.
    let users_after = t.count("SELECT count(*) FROM users").await;
    assert_eq!(users_after.parse::<i32>().unwrap(), users_before.parse::<i32>().unwrap() + 1);
    assert_eq!(t.count(&format!("SELECT count(*) FROM users WHERE email = '{evil}'")).await, "0");
    assert_eq!(t.count("SELECT count(*) FROM user_identities").await, "1");
}

/// The same sign-in in headless Chromium (tests/browser/sso.mjs): the identity provider's
/// page posts the Response by itself, across sites, and the request's cookie (SameSite=None,
/// Secure) comes back with it, so the browser that asked goes straight on to the app.
#[tokio::test]
async fn saml_single_sign_on_in_a_real_browser_posts_back_and_reaches_the_app() {
    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(std::path::Path::new(&chromium).exists(), "{chromium} is missing (scripts/test installs it)");
    let t = setup().await;
    t.idp
        .next(json!({"name_id": "ann-0001", "attributes": {"email": ["ann@initech.test"], "firstName": ["Ann"]}}))
        .await;
    let q = serde_urlencoded::to_string([
        ("redirect_uri", APP_CB),
        ("state", "xyz"),
        ("code_challenge", &challenge()),
        ("code_challenge_method", "S256"),
    ])
    .unwrap();
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("hosted-screenshots-saml");
    std::fs::create_dir_all(&shots).unwrap();
    let cfg = json!({
        "shots": shots,
        "signin_url": t.app.url(&format!("/p/{}/signin?{q}", t.s.project.id)),
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
    let (st, tokens) = exchange(&t.app, &location).await;
    assert_eq!(st, StatusCode::OK, "{tokens}");
    let claims = crate::identity::claims_of(tokens["access_token"].as_str().unwrap());
    assert_eq!(claims["amr"], json!(["saml"]));
}
