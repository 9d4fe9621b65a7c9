//! Sign-in without passwords, hosted pages, redirect URIs, origins, custom domains and rate
//! limits: over real HTTP, with the mail really delivered over SMTP to a receiver the test runs.
use std::collections::HashMap;
use std::time::Duration;

use authio_core::types::Plan;
use authio_db::TenantKind;
use authio_testkit::{
    admin_query_strings, make_dedicated, seed_tenant, spawn_app, spawn_app_with, AppOptions, Seeded, TestApp,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const APP_CB: &str = "https://app.example.com/callback";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

fn challenge() -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(VERIFIER.as_bytes()))
}

async fn register_redirect(app: &TestApp, s: &Seeded, uri: &str) {
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{}/redirect-uris", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .json(&json!({"uri": uri}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
}

/// The newest message to `to` after `seen` earlier ones, as decoded text.
async fn next_mail(app: &TestApp, to: &str, seen: usize) -> (String, String) {
    let m = app.mail.wait_for(to, seen, Duration::from_secs(10)).await.expect("the email arrives over SMTP");
    (m.header("subject").unwrap_or_default(), m.text())
}

/// The value after `key=` up to the first character that cannot be in a token.
fn param_in(text: &str, key: &str) -> String {
    let at = text.find(&format!("{key}=")).unwrap_or_else(|| panic!("{key} in {text}")) + key.len() + 1;
    text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')).collect()
}

fn six_digits(text: &str) -> String {
    let bytes: Vec<char> = text.chars().collect();
    for w in bytes.windows(8) {
        if !w[0].is_ascii_digit() && w[1..7].iter().all(char::is_ascii_digit) && !w[7].is_ascii_digit() {
            return w[1..7].iter().collect();
        }
    }
    panic!("no code in {text}");
}

async fn post_json(app: &TestApp, path: &str, body: Value) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let r = app.http.post(app.url(path)).json(&body).send().await.unwrap();
    let (status, headers) = (r.status(), r.headers().clone());
    (status, r.json().await.unwrap_or(Value::Null), headers)
}

async fn row_count(url: &str, sql: &str) -> i64 {
    admin_query_strings(url, sql).await[0].parse().unwrap()
}

#[tokio::test]
async fn magic_links_arrive_by_smtp_sign_in_once_and_expire() {
    let app =
        spawn_app_with(AppOptions { tune_auth: |a| a.one_time.magic_link_ttl_secs = 2, ..AppOptions::default() }).await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    register_redirect(&app, &s, APP_CB).await;
    let pid = s.project.id;

    // An unregistered redirect URI is refused, and nothing is sent.
    let (st, body, _) = post_json(
        &app,
        "/v1/auth/magic-link",
        json!({"project_id": pid, "email": "new@example.com", "redirect_uri": "https://evil.example.com/cb"}),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_redirect_uri");

    // A new address: the link signs the user up and in.
    let (st, body, _) = post_json(
        &app,
        "/v1/auth/magic-link",
        json!({"project_id": pid, "email": "New@Example.com", "redirect_uri": APP_CB}),
    )
    .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    let (subject, text) = next_mail(&app, "new@example.com", 0).await;
    assert!(subject.contains("sign-in link"), "{subject}");
    assert!(text.contains(&format!("{APP_CB}?token=ml_")), "{text}");
    let token = param_in(&text, "token");
    // The mail left the outbox: nothing sealed lingers with the link.
    assert_eq!(row_count(&app.shared.admin_url, "SELECT count(*) FROM email_outbox").await, 0);
    // Only a hash of the token is stored.
    assert_eq!(
        row_count(
            &app.shared.admin_url,
            &format!("SELECT count(*) FROM email_links WHERE token_hash = sha256('{token}'::bytea)")
        )
        .await,
        1
    );

    let (st, tokens, _) = post_json(&app, "/v1/auth/magic-link/verify", json!({"token": token})).await;
    assert_eq!(st, StatusCode::OK, "{tokens}");
    assert!(tokens["access_token"].as_str().unwrap().split('.').count() == 3);
    let claims = crate::identity::claims_of(tokens["access_token"].as_str().unwrap());
    assert_eq!(claims["amr"], json!(["otp"]));
    // Signed up with a verified address.
    let users = admin_query_strings(&app.shared.admin_url, "SELECT email || ':' || email_verified FROM users").await;
    assert_eq!(users, vec!["new@example.com:true"]);

    // Second use fails.
    let (st, body, _) = post_json(&app, "/v1/auth/magic-link/verify", json!({"token": token})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_grant");

    // An expired link fails.
    post_json(
        &app,
        "/v1/auth/magic-link",
        json!({"project_id": pid, "email": "new@example.com", "redirect_uri": APP_CB}),
    )
    .await;
    let (_, text) = next_mail(&app, "new@example.com", 1).await;
    let late = param_in(&text, "token");
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (st, _, _) = post_json(&app, "/v1/auth/magic-link/verify", json!({"token": late})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // Bound to a browser: only the verifier's holder may use it.
    post_json(
        &app,
        "/v1/auth/magic-link",
        json!({"project_id": pid, "email": "new@example.com", "redirect_uri": APP_CB, "code_challenge": challenge()}),
    )
    .await;
    let (_, text) = next_mail(&app, "new@example.com", 2).await;
    let bound = param_in(&text, "token");
    let (st, _, _) =
        post_json(&app, "/v1/auth/magic-link/verify", json!({"token": bound, "code_verifier": "x".repeat(43)})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _, _) = post_json(&app, "/v1/auth/magic-link/verify", json!({"token": bound})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, body, _) =
        post_json(&app, "/v1/auth/magic-link/verify", json!({"token": bound, "code_verifier": VERIFIER})).await;
    assert_eq!(st, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn the_development_mailbox_shows_what_was_sent_and_exists_only_when_asked_for() {
    let app = spawn_app_with(AppOptions { mailbox_page: true, ..AppOptions::default() }).await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    post_json(&app, "/v1/auth/email-code", json!({"project_id": s.project.id, "email": "mia@example.com"})).await;
    let (_, text) = next_mail(&app, "mia@example.com", 0).await;
    let code = six_digits(&text);
    let page = app.http.get(app.url("/dev/mailbox")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("mia@example.com") && html.contains(&code), "{html}");
    let plain = spawn_app().await;
    assert_eq!(plain.http.get(plain.url("/dev/mailbox")).send().await.unwrap().status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn email_codes_sign_in_once_replace_each_other_and_lock_after_five_wrong_tries() {
    let app =
        spawn_app_with(AppOptions { tune_auth: |a| a.one_time.email_code_ttl_secs = 2, ..AppOptions::default() }).await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let pid = s.project.id;
    let to = "carol@example.com";

    let (st, first, _) = post_json(&app, "/v1/auth/email-code", json!({"project_id": pid, "email": to})).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let (_, text) = next_mail(&app, to, 0).await;
    let code = six_digits(&text);
    // Stored as a MAC, not the code.
    let stored = admin_query_strings(&app.shared.admin_url, "SELECT encode(code_mac, 'hex') FROM email_codes").await;
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0], hex_of(code.as_bytes()));

    // Five wrong codes lock the challenge: the right one is refused after that.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..5 {
        let (st, body, _) = post_json(
            &app,
            "/v1/auth/email-code/verify",
            json!({"challenge_id": first["challenge_id"], "code": wrong}),
        )
        .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "invalid_grant");
    }
    let (st, body, _) =
        post_json(&app, "/v1/auth/email-code/verify", json!({"challenge_id": first["challenge_id"], "code": code}))
            .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "challenge_locked");

    // A new code replaces the old challenge; it signs in once.
    let (_, second, _) = post_json(&app, "/v1/auth/email-code", json!({"project_id": pid, "email": to})).await;
    let (_, text) = next_mail(&app, to, 1).await;
    let code2 = six_digits(&text);
    assert_eq!(row_count(&app.shared.admin_url, "SELECT count(*) FROM email_codes").await, 1);
    let (st, tokens, _) =
        post_json(&app, "/v1/auth/email-code/verify", json!({"challenge_id": second["challenge_id"], "code": code2}))
            .await;
    assert_eq!(st, StatusCode::OK, "{tokens}");
    let (st, _, _) =
        post_json(&app, "/v1/auth/email-code/verify", json!({"challenge_id": second["challenge_id"], "code": code2}))
            .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // An expired code fails.
    let (_, third, _) = post_json(&app, "/v1/auth/email-code", json!({"project_id": pid, "email": to})).await;
    let (_, text) = next_mail(&app, to, 2).await;
    let code3 = six_digits(&text);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (st, _, _) =
        post_json(&app, "/v1/auth/email-code/verify", json!({"challenge_id": third["challenge_id"], "code": code3}))
            .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // The audit log has the sign-up and the sign-in at the home.
    let actions = admin_query_strings(&app.shared.admin_url, "SELECT action FROM audit_events ORDER BY seq").await;
    assert!(
        actions.contains(&"user.signed_up".to_owned()) && actions.contains(&"user.signed_in".to_owned()),
        "{actions:?}"
    );
}

fn as_refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A browser without JavaScript: keeps cookies, does not follow redirects.
struct Browser {
    http: reqwest::Client,
    cookies: HashMap<String, String>,
    host: Option<String>,
}

impl Browser {
    fn new() -> Self {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Browser { http, cookies: HashMap::new(), host: None }
    }

    fn keep(&mut self, r: &reqwest::Response) {
        for v in r.headers().get_all("set-cookie") {
            let (kv, _) = v.to_str().unwrap().split_once(';').unwrap();
            let (k, v) = kv.split_once('=').unwrap();
            self.cookies.insert(k.to_owned(), v.to_owned());
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    async fn get(&mut self, url: &str) -> (StatusCode, String, reqwest::header::HeaderMap) {
        let mut req = self.http.get(url).header("cookie", self.cookie_header());
        if let Some(h) = &self.host {
            req = req.header("host", h);
        }
        let r = req.send().await.unwrap();
        self.keep(&r);
        let (st, h) = (r.status(), r.headers().clone());
        (st, r.text().await.unwrap(), h)
    }

    async fn post(&mut self, url: &str, form: &[(&str, &str)]) -> (StatusCode, String, reqwest::header::HeaderMap) {
        let mut req = self.http.post(url).header("cookie", self.cookie_header()).form(form);
        if let Some(h) = &self.host {
            req = req.header("host", h);
        }
        let r = req.send().await.unwrap();
        self.keep(&r);
        let (st, h) = (r.status(), r.headers().clone());
        (st, r.text().await.unwrap(), h)
    }
}

fn hidden(html: &str, name: &str) -> String {
    let at = html.find(&format!("name=\"{name}\" value=\"")).unwrap_or_else(|| panic!("{name} in {html}"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// Follow a hosted sign-in's redirect back to the app and exchange the code like the app does.
async fn exchange(app: &TestApp, location: &str) -> (StatusCode, Value) {
    assert!(location.starts_with(&format!("{APP_CB}?code=sc_")), "{location}");
    assert!(location.contains("state=xyz"), "{location}");
    let code = param_in(location, "code");
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

fn flow_query() -> String {
    format!("?redirect_uri={}&state=xyz&code_challenge={}&code_challenge_method=S256", url_encode(APP_CB), challenge())
}

fn url_encode(s: &str) -> String {
    serde_urlencoded::to_string([("v", s)]).unwrap()[2..].to_owned()
}

#[tokio::test]
async fn hosted_pages_sign_in_by_link_code_password_and_reset_with_csrf_and_exact_redirects() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    register_redirect(&app, &s, APP_CB).await;
    let base = app.url(&format!("/p/{}", s.project.id));
    let mut b = Browser::new();

    // Branding shows on the page.
    let r = app
        .http
        .patch(app.url(&format!("/v1/projects/{}/presentation", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .json(&json!({"display_name": "Acme <Login>", "brand_color": "#aa0011"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // The sign-in page: every method, labelled fields, a CSRF token in a cookie and the form.
    let (st, html, headers) = b.get(&format!("{base}/signin{}", flow_query())).await;
    assert_eq!(st, StatusCode::OK);
    assert!(html.contains("Acme &#60;Login&#62;") || html.contains("Acme &lt;Login&gt;"), "escaped name: {html}");
    assert!(html.contains("--brand: #aa0011"));
    assert!(html.contains("<label for=\"email\">") && html.contains("id=\"email\""));
    assert!(html.contains("Email me a sign-in link") && html.contains("Email me a code"));
    assert_eq!(headers["x-frame-options"], "DENY");
    let csrf = hidden(&html, "csrf");
    assert_eq!(b.cookies["authio_csrf"], csrf);

    // An unregistered redirect URI gets an error page, never a redirect.
    let (st, html, headers) = b
        .get(&format!(
            "{base}/signin?redirect_uri={}&code_challenge={}&code_challenge_method=S256",
            url_encode("https://evil.example.com/cb"),
            challenge()
        ))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(headers.get("location").is_none());
    assert!(html.contains("not registered"));
    // PKCE plain is refused.
    let (st, _, _) = b
        .get(&format!(
            "{base}/signin?redirect_uri={}&code_challenge={}&code_challenge_method=plain",
            url_encode(APP_CB),
            challenge()
        ))
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);

    let flow = [
        ("redirect_uri", APP_CB),
        ("state", "xyz"),
        ("code_challenge", &challenge()),
        ("code_challenge_method", "S256"),
    ];
    let with = |extra: &[(&'static str, String)]| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = flow.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        v.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        v
    };

    // A form posted without its CSRF token is refused, and sends nothing.
    let f = with(&[("email", "dana@example.com".into())]);
    let (st, _, _) = b.post(&format!("{base}/magic-link"), &as_refs(&f)).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let f = with(&[("email", "dana@example.com".into()), ("csrf", "A".repeat(43))]);
    let (st, _, _) = b.post(&format!("{base}/magic-link"), &as_refs(&f)).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert!(app.mail.to("dana@example.com").is_empty());

    // Magic link: the email's link opens a page with a button (a GET uses nothing) ...
    let f = with(&[("email", "dana@example.com".into()), ("csrf", csrf.clone())]);
    let (st, html, _) = b.post(&format!("{base}/magic-link"), &as_refs(&f)).await;
    assert_eq!(st, StatusCode::OK);
    assert!(html.contains("Check your email"));
    let (_, text) = next_mail(&app, "dana@example.com", 0).await;
    assert!(text.contains(&format!("{base}/magic?token=ml_")), "{text}");
    let token = param_in(&text, "token");
    let (st, html, _) = b.get(&format!("{base}/magic?token={token}")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(html.contains("name=\"token\""));
    // ... whose press returns to the app with a code the app exchanges once, with its verifier.
    let (st, _, headers) = b.post(&format!("{base}/magic"), &[("csrf", &csrf), ("token", &token)]).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let location = headers["location"].to_str().unwrap().to_owned();
    let code = param_in(&location, "code");
    let bad = app
        .http
        .post(app.url("/v1/auth/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", APP_CB),
            ("code_verifier", &"y".repeat(43)),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST, "a wrong verifier burns the code");
    // Start over: a fresh link, the right verifier.
    let f = with(&[("email", "dana@example.com".into()), ("csrf", csrf.clone())]);
    b.post(&format!("{base}/magic-link"), &as_refs(&f)).await;
    let (_, text) = next_mail(&app, "dana@example.com", 1).await;
    let token = param_in(&text, "token");
    let (_, _, headers) = b.post(&format!("{base}/magic"), &[("csrf", &csrf), ("token", &token)]).await;
    let location = headers["location"].to_str().unwrap().to_owned();
    let (st, tokens) = exchange(&app, &location).await;
    assert_eq!(st, StatusCode::OK, "{tokens}");
    assert_eq!(crate::identity::claims_of(tokens["access_token"].as_str().unwrap())["amr"], json!(["email"]));
    let (st, _) = exchange(&app, &location).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "a code is exchanged once");
    // The used link's page now says so.
    let (st, _, _) = b.get(&format!("{base}/magic?token={token}")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // Email code through the pages.
    let f = with(&[("email", "erin@example.com".into()), ("csrf", csrf.clone())]);
    let (st, html, _) = b.post(&format!("{base}/code"), &as_refs(&f)).await;
    assert_eq!(st, StatusCode::OK);
    assert!(html.contains("autocomplete=\"one-time-code\""));
    let challenge_id = hidden(&html, "challenge_id");
    let (_, text) = next_mail(&app, "erin@example.com", 0).await;
    let code = six_digits(&text);
    let (st, html, _) = b
        .post(&format!("{base}/code/verify"), &[("csrf", &csrf), ("challenge_id", &challenge_id), ("code", "999999")])
        .await;
    assert!(st == StatusCode::BAD_REQUEST && html.contains("role=\"alert\""), "{st}");
    let (st, _, headers) = b
        .post(&format!("{base}/code/verify"), &[("csrf", &csrf), ("challenge_id", &challenge_id), ("code", &code)])
        .await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let (st, _) = exchange(&app, headers["location"].to_str().unwrap()).await;
    assert_eq!(st, StatusCode::OK);

    // Password sign-up, then a reset that ends its sessions, then sign-in with the new one.
    let f =
        with(&[("email", "finn@example.com".into()), ("password", "first-password-1".into()), ("csrf", csrf.clone())]);
    let (st, _, headers) = b.post(&format!("{base}/signup"), &as_refs(&f)).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let (st, _) = exchange(&app, headers["location"].to_str().unwrap()).await;
    assert_eq!(st, StatusCode::OK);
    let (subject, text) = next_mail(&app, "finn@example.com", 0).await;
    assert!(subject.contains("Confirm your email"), "{subject}");
    let verify = param_in(&text, "token");
    let verified = || {
        admin_query_strings(
            &app.shared.admin_url,
            "SELECT email_verified::text FROM users WHERE email = 'finn@example.com'",
        )
    };
    assert_eq!(verified().await, vec!["false"]);
    let (st, html, _) = b.get(&format!("{base}/verify-email?token={verify}")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(verified().await, vec!["false"], "opening the link changes nothing");
    assert!(html.contains("Confirm"));
    let (st, _, _) = b.post(&format!("{base}/verify-email"), &[("csrf", &csrf), ("token", &verify)]).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(verified().await, vec!["true"]);
    let (st, html, _) = b.post(&format!("{base}/reset"), &[("csrf", &csrf), ("email", "finn@example.com")]).await;
    assert_eq!(st, StatusCode::OK);
    assert!(html.contains("Check your email"));
    // An unknown account gets the same answer and no email.
    let (st, html2, _) = b.post(&format!("{base}/reset"), &[("csrf", &csrf), ("email", "nobody@example.com")]).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(html.replace("finn@example.com", "X"), html2.replace("nobody@example.com", "X"));
    let (_, text) = next_mail(&app, "finn@example.com", 1).await;
    let reset = param_in(&text, "token");
    let (st, html, _) = b.get(&format!("{base}/reset/confirm?token={reset}")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(html.contains("autocomplete=\"new-password\""));
    let (st, _, _) = b
        .post(
            &format!("{base}/reset/confirm"),
            &[("csrf", &csrf), ("token", &reset), ("password", "second-password-2")],
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let live = admin_query_strings(&app.shared.admin_url, "SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id WHERE u.email = 'finn@example.com' AND s.revoked_at IS NULL").await;
    assert_eq!(live, vec!["0"]);
    let f =
        with(&[("email", "finn@example.com".into()), ("password", "first-password-1".into()), ("csrf", csrf.clone())]);
    let (st, _, _) = b.post(&format!("{base}/signin"), &as_refs(&f)).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let f =
        with(&[("email", "finn@example.com".into()), ("password", "second-password-2".into()), ("csrf", csrf.clone())]);
    let (st, _, headers) = b.post(&format!("{base}/signin"), &as_refs(&f)).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let (st, _) = exchange(&app, headers["location"].to_str().unwrap()).await;
    assert_eq!(st, StatusCode::OK);
    // The reset link is single-use.
    let (st, _, _) = b
        .post(&format!("{base}/reset/confirm"), &[("csrf", &csrf), ("token", &reset), ("password", "third-password-3")])
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn origins_are_allowed_per_project_and_custom_domains_answer_once_verified() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let other = seed_tenant(&app.shared, "globex", TenantKind::Customer, Plan::Pro).await;
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{}/allowed-origins", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .json(&json!({"origin": "https://app.acme.test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Wildcards and paths are refused.
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{}/allowed-origins", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .json(&json!({"origin": "https://*.acme.test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/v1/auth/email-code"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let r = preflight("https://app.acme.test").await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["access-control-allow-origin"], "https://app.acme.test");
    let r = preflight("https://evil.test").await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get("access-control-allow-origin").is_none());

    let from = |origin: &'static str, project: uuid::Uuid| {
        app.http
            .post(app.url("/v1/auth/email-code"))
            .header("origin", origin)
            .json(&json!({"project_id": project, "email": "o@example.com"}))
            .send()
    };
    let r = from("https://app.acme.test", s.project.id).await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["access-control-allow-origin"], "https://app.acme.test");
    // Allowed for Acme, not for Globex: refused for Globex's project.
    let r = from("https://app.acme.test", other.project.id).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "origin_not_allowed");
    let r = from("https://evil.test", s.project.id).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Removing what was never there is a 404 (and, below, not in the audit log).
    for path in ["redirect-uris?uri=https%3A%2F%2Fnever.test%2Fcb", "allowed-origins?origin=https%3A%2F%2Fnever.test"] {
        let r = app
            .http
            .delete(app.url(&format!("/v1/projects/{}/{path}", s.project.id)))
            .bearer_auth(&s.api_key.plaintext)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }

    // A custom domain: not live until its TXT record is there.
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{}/domains", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .json(&json!({"host": "Login.Acme.test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let d: Value = r.json().await.unwrap();
    assert_eq!(d["host"], "login.acme.test");
    assert_eq!(d["verified"], false);
    // Another tenant's claim on the same host is its own, pending, private business: it neither
    // blocks nor reveals Acme's (both are answered 201).
    let claim = |who: &Seeded| {
        app.http
            .post(app.url(&format!("/v1/projects/{}/domains", who.project.id)))
            .bearer_auth(&who.api_key.plaintext)
            .json(&json!({"host": "login.acme.test"}))
            .send()
    };
    let r = claim(&other).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let squat: Value = r.json().await.unwrap();
    assert_ne!(squat["txt_value"], d["txt_value"], "each claim has its own token");
    // A second claim by the same tenant is a conflict, audited nowhere.
    let r = claim(&s).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);

    let mut b = Browser::new();
    b.host = Some("login.acme.test".into());
    let (st, _, _) = b.get(&app.url("/signin")).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "an unverified domain does not resolve");
    let verify = app.url(&format!("/v1/projects/{}/domains/{}/verify", s.project.id, d["id"].as_str().unwrap()));
    let r = app.http.post(&verify).bearer_auth(&s.api_key.plaintext).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "domain_not_verified");
    app.dns.publish(d["txt_name"].as_str().unwrap(), "unrelated");
    let r = app.http.post(&verify).bearer_auth(&s.api_key.plaintext).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    app.dns.publish(d["txt_name"].as_str().unwrap(), d["txt_value"].as_str().unwrap());
    let r = app.http.post(&verify).bearer_auth(&s.api_key.plaintext).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["verified"], true);
    // The organization pages answer on the custom domain too, not with the host's plain 404
    // for what is not served there: an invitation link with a bad token, a picker sent
    // elsewhere, the single sign-on form without its form token.
    let (st, body, _) = b.get(&app.url("/invitations/accept?token=inv_nope")).await;
    assert!(st.is_client_error() && body.contains("This invitation cannot be used"), "{st}: {body}");
    let (st, body, _) = b.get(&app.url("/organizations/select?return_to=https://evil.example.com/")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
    let (st, body, _) = b.post(&app.url("/sso"), &[("email", "someone@acme.test")]).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("This form has expired"), "{body}");
    // The proof took the host: Globex's pending claim is gone, and a new one cannot be proved
    // while Acme holds it (Globex can publish its own record, but the host is verified).
    let hosts = admin_query_strings(&app.shared.admin_url, "SELECT tenant_id::text FROM custom_domains").await;
    assert_eq!(hosts, vec![s.tenant.id.to_string()]);
    let r = claim(&other).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let again: Value = r.json().await.unwrap();
    app.dns.publish(again["txt_name"].as_str().unwrap(), again["txt_value"].as_str().unwrap());
    let other_verify =
        app.url(&format!("/v1/projects/{}/domains/{}/verify", other.project.id, again["id"].as_str().unwrap()));
    let r = app.http.post(&other_verify).bearer_auth(&other.api_key.plaintext).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    // A pending claim lapses after seven days: it can no longer be proved, and a new claim
    // starts over with a new token.
    admin_query_strings(
        &app.shared.admin_url,
        &format!(
            "UPDATE custom_domains SET created_at = now() - interval '8 days' WHERE id = '{}'",
            again["id"].as_str().unwrap()
        ),
    )
    .await;
    let r = app.http.post(&other_verify).bearer_auth(&other.api_key.plaintext).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(r.text().await.unwrap().contains("lapsed"));
    let r = claim(&other).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let renewed: Value = r.json().await.unwrap();
    assert_eq!(renewed["id"], again["id"]);
    assert_ne!(renewed["txt_value"], again["txt_value"]);
    // Only what took effect is in the audit log: Acme's claim and its proof, Globex's three
    // claims (the last a renewal); nothing for Acme's refused duplicate.
    // (Configuration events reach the log through the outbox relay: wait for the fifth.)
    let mut actions = Vec::new();
    for _ in 0..100 {
        actions = admin_query_strings(
            &app.shared.admin_url,
            &format!(
                "SELECT CASE tenant_id WHEN '{}' THEN 'acme ' ELSE 'globex ' END || action FROM audit_events
                 WHERE action LIKE 'project.domain%' ORDER BY tenant_id = '{}' DESC, seq",
                s.tenant.id, s.tenant.id
            ),
        )
        .await;
        if actions.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        actions,
        vec![
            "acme project.domain_added",
            "acme project.domain_verified",
            "globex project.domain_added",
            "globex project.domain_added",
            "globex project.domain_added"
        ]
    );
    let removals = admin_query_strings(
        &app.shared.admin_url,
        "SELECT count(*) FROM audit_events WHERE action IN ('project.origin_removed', 'project.redirect_uri_removed')",
    )
    .await;
    assert_eq!(removals, vec!["0"]);

    // Now the host answers with Acme's pages, and links in its emails use the host.
    let (st, html, _) = b.get(&app.url("/")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(html.contains("action=\"/magic-link\""), "paths are the domain's own");
    let csrf = hidden(&html, "csrf");
    let (st, _, _) = b.post(&app.url("/magic-link"), &[("csrf", &csrf), ("email", "dom@example.com")]).await;
    assert_eq!(st, StatusCode::OK);
    let (_, text) = next_mail(&app, "dom@example.com", 0).await;
    assert!(text.contains("http://login.acme.test/magic?token=ml_"), "{text}");
    // Other paths of the deployment are not served on the customer's host.
    let (st, _, _) = b.get(&app.url("/v1/projects")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn rate_limits_hold_across_two_instances_and_answer_429_with_retry_after() {
    let tune = |a: &mut authio_server::AuthSettings| {
        a.limits.verify_failures_per_ip = 6;
        a.limits.sends_per_email = 3;
    };
    let one = spawn_app_with(AppOptions { tune_auth: tune, ..AppOptions::default() }).await;
    let two =
        spawn_app_with(AppOptions { shared: Some(one.shared.clone()), tune_auth: tune, ..AppOptions::default() }).await;
    let s = seed_tenant(&one.shared, "acme", TenantKind::Customer, Plan::Pro).await;

    // Code checks from one address, alternating between the instances: the 7th is refused.
    let bogus = json!({"challenge_id": uuid::Uuid::now_v7(), "code": "123456"});
    for i in 0..6 {
        let app = if i % 2 == 0 { &one } else { &two };
        let (st, _, _) = post_json(app, "/v1/auth/email-code/verify", bogus.clone()).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "attempt {i}");
    }
    for app in [&one, &two] {
        let (st, body, headers) = post_json(app, "/v1/auth/email-code/verify", bogus.clone()).await;
        assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["error"]["code"], "too_many_attempts");
        assert!(headers["retry-after"].to_str().unwrap().parse::<u32>().unwrap() >= 1);
    }
    // Magic-link checks share the address's budget.
    let (st, _, _) = post_json(&one, "/v1/auth/magic-link/verify", json!({"token": "ml_nope"})).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);

    // Sends per recipient, across instances, whether or not the account exists.
    for i in 0..3 {
        let app = if i % 2 == 0 { &one } else { &two };
        let (st, _, _) =
            post_json(app, "/v1/auth/email-code", json!({"project_id": s.project.id, "email": "ghost@example.com"}))
                .await;
        assert_eq!(st, StatusCode::ACCEPTED);
    }
    let (st, _, headers) =
        post_json(&two, "/v1/auth/email-code", json!({"project_id": s.project.id, "email": "ghost@example.com"})).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key("retry-after"));
    // Another recipient is not affected.
    let (st, _, _) =
        post_json(&two, "/v1/auth/email-code", json!({"project_id": s.project.id, "email": "other@example.com"})).await;
    assert_eq!(st, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_dedicated_tenants_flows_work_with_its_users_at_home_and_one_time_rows_on_shared() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "globex", TenantKind::Customer, Plan::Enterprise).await;
    let dedicated = make_dedicated(&app.shared, &s.tenant).await;
    // Registered by the operator directly (through the API its audit event would be relayed to
    // the home, opening the pool before the lookups are watched).
    admin_query_strings(
        &app.shared.admin_url,
        &format!("INSERT INTO redirect_uris VALUES ('{}', '{}', '{APP_CB}', now())", s.tenant.id, s.project.id),
    )
    .await;
    // Seeding wrote an operator event (the API key) that the relay delivers to the home, which
    // opens a pool: let it, then watch a fresh node that has nothing to deliver.
    for _ in 0..100 {
        if row_count(&app.shared.admin_url, "SELECT count(*) FROM audit_outbox").await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shared = app.shared.clone();
    drop(app);
    let app = spawn_app_with(AppOptions { shared: Some(shared), ..AppOptions::default() }).await;
    let opened = app.router.dedicated_pools_opened();
    assert_eq!(opened, 0);
    let pid = s.project.id;

    // Everything before a user is known runs on shared: no dedicated pool opens.
    let mut b = Browser::new();
    let (st, html, _) = b.get(&app.url(&format!("/p/{pid}/signin{}", flow_query()))).await;
    assert_eq!(st, StatusCode::OK);
    let csrf = hidden(&html, "csrf");
    let form = [
        ("csrf", csrf.as_str()),
        ("email", "gus@globex.test"),
        ("redirect_uri", APP_CB),
        ("state", "xyz"),
        ("code_challenge", &challenge()),
        ("code_challenge_method", "S256"),
    ];
    let (st, _, _) = b.post(&app.url(&format!("/p/{pid}/magic-link")), &form).await;
    assert_eq!(st, StatusCode::OK);
    let (st, challenge, _) =
        post_json(&app, "/v1/auth/email-code", json!({"project_id": pid, "email": "gus@globex.test"})).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let (_, text) = next_mail(&app, "gus@globex.test", 0).await;
    let token = param_in(&text, "token");
    let (st, _, _) = b.get(&app.url(&format!("/p/{pid}/magic?token={token}"))).await;
    assert_eq!(st, StatusCode::OK);
    let r = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/v1/auth/email-code"))
        .header("origin", "https://unknown.test")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.router.dedicated_pools_opened(), opened, "pre-resolution lookups stay on shared");

    // The link signs in: the user is written at the dedicated home.
    let (st, _, headers) = b.post(&app.url(&format!("/p/{pid}/magic")), &[("csrf", &csrf), ("token", &token)]).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let (st, tokens) = exchange(&app, headers["location"].to_str().unwrap()).await;
    assert_eq!(st, StatusCode::OK, "{tokens}");
    let (_, text) = next_mail(&app, "gus@globex.test", 1).await;
    let code = six_digits(&text);
    let (st, _, _) =
        post_json(&app, "/v1/auth/email-code/verify", json!({"challenge_id": challenge["challenge_id"], "code": code}))
            .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(app.router.dedicated_pools_opened(), opened + 1, "the sign-in itself goes home");

    assert_eq!(admin_query_strings(&dedicated.admin_url, "SELECT email FROM users").await, vec!["gus@globex.test"]);
    assert_eq!(row_count(&app.shared.admin_url, "SELECT count(*) FROM users").await, 0);
    assert!(row_count(&dedicated.admin_url, "SELECT count(*) FROM sessions").await >= 2);
    for t in ["email_links", "email_codes", "signin_codes", "redirect_uris"] {
        assert!(row_count(&app.shared.admin_url, &format!("SELECT count(*) FROM {t}")).await >= 1, "{t} on shared");
        assert_eq!(row_count(&dedicated.admin_url, &format!("SELECT count(*) FROM {t}")).await, 0, "{t} not at home");
    }
}

async fn patch_presentation(app: &TestApp, s: &Seeded, body: Value) -> (StatusCode, Value) {
    let r = app
        .http
        .patch(app.url(&format!("/v1/projects/{}/presentation", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

async fn users_named(app: &TestApp, email: &str) -> i64 {
    row_count(&app.shared.admin_url, &format!("SELECT count(*) FROM users WHERE email = '{email}'")).await
}

#[tokio::test]
async fn the_projects_methods_hold_on_the_json_api_pending_links_and_refresh() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    register_redirect(&app, &s, APP_CB).await;
    let pid = s.project.id;
    let signup = json!({"project_id": pid, "email": "alice@example.com", "password": "a-long-password-1"});
    let (st, alice, _) = post_json(&app, "/v1/auth/signup", signup).await;
    assert_eq!(st, StatusCode::CREATED, "{alice}");
    // A magic link sent while the method is on ...
    let (st, _, _) = post_json(
        &app,
        "/v1/auth/magic-link",
        json!({"project_id": pid, "email": "mia@example.com", "redirect_uri": APP_CB}),
    )
    .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let (_, text) = next_mail(&app, "mia@example.com", 0).await;
    let pending_link = param_in(&text, "token");

    let (st, _) = patch_presentation(&app, &s, json!({"signin_methods": ["email_code"]})).await;
    assert_eq!(st, StatusCode::OK);

    // Password sign-in and sign-up through the JSON API are refused, and nothing is written.
    let signin = json!({"project_id": pid, "email": "alice@example.com", "password": "a-long-password-1"});
    let (st, body, _) = post_json(&app, "/v1/auth/signin", signin.clone()).await;
    assert_eq!((st, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("method_not_enabled")), "{body}");
    let bob = json!({"project_id": pid, "email": "bob@example.com", "password": "a-long-password-1"});
    let (st, body, _) = post_json(&app, "/v1/auth/signup", bob).await;
    assert_eq!((st, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("method_not_enabled")), "{body}");
    assert_eq!(users_named(&app, "bob@example.com").await, 0);
    // ... and the link sent before no longer signs in.
    let (st, body, _) = post_json(&app, "/v1/auth/magic-link/verify", json!({"token": pending_link})).await;
    assert_eq!((st, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("method_not_enabled")), "{body}");
    assert_eq!(users_named(&app, "mia@example.com").await, 0);
    let (st, _, _) = post_json(
        &app,
        "/v1/auth/magic-link",
        json!({"project_id": pid, "email": "mia@example.com", "redirect_uri": APP_CB}),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // A session started by password is not refreshed while password is off: it ends.
    let (st, body) = crate::identity::refresh(&app, alice["refresh_token"].as_str().unwrap()).await;
    assert_eq!((st, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")), "{body}");
    let reason = admin_query_strings(
        &app.shared.admin_url,
        "SELECT coalesce(revoked_reason, 'live') FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE u.email = 'alice@example.com'",
    )
    .await;
    assert_eq!(reason, vec!["signin_method_disabled"]);

    // The method that is on still works.
    let (st, body, _) =
        post_json(&app, "/v1/auth/email-code", json!({"project_id": pid, "email": "alice@example.com"})).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    // Turned back on, password signs in again.
    let (st, _) = patch_presentation(&app, &s, json!({"signin_methods": ["password", "email_code"]})).await;
    assert_eq!(st, StatusCode::OK);
    let (st, body, _) = post_json(&app, "/v1/auth/signin", signin).await;
    assert_eq!(st, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn the_sign_up_policy_holds_on_every_path_that_creates_a_user() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    register_redirect(&app, &s, APP_CB).await;
    let pid = s.project.id;

    // The policy is validated: `domains` needs domains, in their ASCII lower-case form.
    for bad in [
        json!({"signup_policy": "domains"}),
        json!({"signup_policy": "domains", "signup_domains": []}),
        json!({"signup_policy": "domains", "signup_domains": ["Example.com"]}),
        json!({"signup_policy": "friends"}),
        json!({"signup_domains": []}),
    ] {
        let (st, body) = patch_presentation(&app, &s, bad.clone()).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{bad} -> {body}");
    }

    // Invite only: an administrator creates the user, who then signs in; nobody signs up.
    let (st, body) = patch_presentation(&app, &s, json!({"signup_policy": "invite_only"})).await;
    assert_eq!((st, body["signup_policy"].as_str()), (StatusCode::OK, Some("invite_only")), "{body}");
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{pid}/users")))
        .bearer_auth(&s.api_key.plaintext)
        .json(&json!({"email": "invited@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let stranger = json!({"project_id": pid, "email": "stranger@example.com", "password": "a-long-password-1"});
    let (st, body, _) = post_json(&app, "/v1/auth/signup", stranger).await;
    assert_eq!((st, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("signup_not_allowed")), "{body}");
    // A link or code to an address that could not sign up: the same answer, and no mail.
    let (st, _, _) = post_json(
        &app,
        "/v1/auth/magic-link",
        json!({"project_id": pid, "email": "stranger@example.com", "redirect_uri": APP_CB}),
    )
    .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let (st, body, _) =
        post_json(&app, "/v1/auth/email-code", json!({"project_id": pid, "email": "stranger@example.com"})).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    assert!(body["challenge_id"].is_string(), "{body}");
    // The invited user gets a link and signs in with it.
    let (st, _, _) = post_json(
        &app,
        "/v1/auth/magic-link",
        json!({"project_id": pid, "email": "invited@example.com", "redirect_uri": APP_CB}),
    )
    .await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let (_, text) = next_mail(&app, "invited@example.com", 0).await;
    let (st, body, _) = post_json(&app, "/v1/auth/magic-link/verify", json!({"token": param_in(&text, "token")})).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(app.mail.wait_for("stranger@example.com", 0, Duration::from_millis(300)).await.is_none());
    assert_eq!(users_named(&app, "stranger@example.com").await, 0);

    // The hosted sign-up page refuses too.
    let mut b = Browser::new();
    let base = app.url(&format!("/p/{pid}"));
    let (_, html, _) = b.get(&format!("{base}/signin{}", flow_query())).await;
    let csrf = hidden(&html, "csrf");
    let mut form: Vec<(&str, &str)> = vec![
        ("redirect_uri", APP_CB),
        ("state", "xyz"),
        ("code_challenge_method", "S256"),
        ("email", "walkin@example.com"),
        ("password", "a-long-password-1"),
        ("csrf", &csrf),
    ];
    let ch = challenge();
    form.push(("code_challenge", &ch));
    let (st, html, _) = b.post(&format!("{base}/signup"), &form).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{html}");
    assert!(html.contains("does not accept sign-ups"), "{html}");
    assert_eq!(users_named(&app, "walkin@example.com").await, 0);

    // Listed domains: an address at one signs up (by password or by code), others do not.
    let (st, _) =
        patch_presentation(&app, &s, json!({"signup_policy": "domains", "signup_domains": ["example.com"]})).await;
    assert_eq!(st, StatusCode::OK);
    let ok = json!({"project_id": pid, "email": "carol@example.com", "password": "a-long-password-1"});
    let (st, body, _) = post_json(&app, "/v1/auth/signup", ok).await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    for other in ["dave@other.test", "erin@sub.example.com"] {
        let body = json!({"project_id": pid, "email": other, "password": "a-long-password-1"});
        let (st, body, _) = post_json(&app, "/v1/auth/signup", body).await;
        assert_eq!((st, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("signup_not_allowed")));
    }
    let (st, body, _) =
        post_json(&app, "/v1/auth/email-code", json!({"project_id": pid, "email": "frank@example.com"})).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let (_, text) = next_mail(&app, "frank@example.com", 0).await;
    let (st, tokens, _) = post_json(
        &app,
        "/v1/auth/email-code/verify",
        json!({"challenge_id": body["challenge_id"], "code": six_digits(&text)}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{tokens}");
    assert_eq!(users_named(&app, "frank@example.com").await, 1);
    // Switched to invite-only after a code was sent to a new address: the code signs nobody up.
    let (st, body, _) =
        post_json(&app, "/v1/auth/email-code", json!({"project_id": pid, "email": "gina@example.com"})).await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let (_, text) = next_mail(&app, "gina@example.com", 0).await;
    let (st, _) = patch_presentation(&app, &s, json!({"signup_policy": "invite_only"})).await;
    assert_eq!(st, StatusCode::OK);
    let (st, refused, _) = post_json(
        &app,
        "/v1/auth/email-code/verify",
        json!({"challenge_id": body["challenge_id"], "code": six_digits(&text)}),
    )
    .await;
    assert_eq!((st, refused["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("signup_not_allowed")));
    assert_eq!(users_named(&app, "gina@example.com").await, 0);
}

#[tokio::test]
async fn nfc_and_nfd_spellings_of_an_address_are_one_account() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let nfc = json!({"project_id": s.project.id, "email": "jos\u{e9}@example.com", "password": "a-long-password-1"});
    let nfd = json!({"project_id": s.project.id, "email": "jose\u{301}@example.com", "password": "a-long-password-1"});
    let (st, body, _) = post_json(&app, "/v1/auth/signup", nfc).await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
    let (st, body, _) = post_json(&app, "/v1/auth/signup", nfd.clone()).await;
    assert_eq!((st, body["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("email_taken")), "{body}");
    // Either spelling signs in to the one account.
    let (st, body, _) = post_json(&app, "/v1/auth/signin", nfd).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(row_count(&app.shared.admin_url, "SELECT count(*) FROM users").await, 1);
}

#[tokio::test]
async fn cookies_are_secure_whenever_the_public_url_is_https() {
    let cookies_of = |r: &reqwest::Response| -> Vec<String> {
        r.headers().get_all("set-cookie").iter().map(|c| c.to_str().unwrap().to_owned()).collect()
    };
    for (https, app) in [
        (
            true,
            spawn_app_with(AppOptions {
                tune_auth: |a| a.public_url = "https://login.example.test".into(),
                ..AppOptions::default()
            })
            .await,
        ),
        (false, spawn_app().await),
    ] {
        let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
        register_redirect(&app, &s, APP_CB).await;
        seed_tenant(&app.shared, "authio", TenantKind::Platform, Plan::Enterprise).await;
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        // The hosted page's CSRF cookie, and the console's login cookie.
        let r = http.get(app.url(&format!("/p/{}/signin{}", s.project.id, flow_query()))).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let mut set = cookies_of(&r);
        let r = http.get(app.url("/console/login")).send().await.unwrap();
        set.extend(cookies_of(&r));
        assert!(set.len() >= 2, "{set:?}");
        for c in &set {
            assert_eq!(c.contains("; Secure"), https, "{c}");
            assert!(c.contains("HttpOnly"), "{c}");
        }
    }
}

#[tokio::test]
async fn a_hosted_sign_in_code_made_before_its_method_was_turned_off_starts_no_session() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    register_redirect(&app, &s, APP_CB).await;
    let pid = s.project.id;
    let signup = json!({"project_id": pid, "email": "pat@example.com", "password": "a-long-password-1"});
    assert_eq!(post_json(&app, "/v1/auth/signup", signup).await.0, StatusCode::CREATED);
    let mut b = Browser::new();
    let base = app.url(&format!("/p/{pid}"));
    let (_, html, _) = b.get(&format!("{base}/signin{}", flow_query())).await;
    let csrf = hidden(&html, "csrf");
    let ch = challenge();
    let form = [
        ("redirect_uri", APP_CB),
        ("state", "xyz"),
        ("code_challenge", ch.as_str()),
        ("code_challenge_method", "S256"),
        ("email", "pat@example.com"),
        ("password", "a-long-password-1"),
        ("csrf", csrf.as_str()),
    ];
    let (st, _, headers) = b.post(&format!("{base}/signin"), &form).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let location = headers["location"].to_str().unwrap().to_owned();
    let sessions = || row_count(&app.shared.admin_url, "SELECT count(*) FROM sessions WHERE revoked_at IS NULL");
    let before = sessions().await;
    // Password turned off while the code is on its way to the app.
    let (st, _) = patch_presentation(&app, &s, json!({"signin_methods": ["magic_link"]})).await;
    assert_eq!(st, StatusCode::OK);
    let (st, body) = exchange(&app, &location).await;
    assert_eq!((st, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")), "{body}");
    assert_eq!(sessions().await, before, "no session started");
}

#[tokio::test]
async fn stored_addresses_are_brought_to_nfc_unless_that_would_merge_two_accounts() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let (t, p) = (s.tenant.id, s.project.id);
    // As an older version stored them: one NFD address alone, and an NFD/NFC pair of one address.
    admin_query_strings(
        &app.shared.admin_url,
        &format!(
            "INSERT INTO users (tenant_id, project_id, id, email, created_at, updated_at) VALUES
               ('{t}', '{p}', gen_random_uuid(), 'rene' || U&'\\0301' || '@example.com', now(), now()),
               ('{t}', '{p}', gen_random_uuid(), 'jose' || U&'\\0301' || '@example.com', now(), now()),
               ('{t}', '{p}', gen_random_uuid(), 'jos' || U&'\\00e9' || '@example.com', now(), now())"
        ),
    )
    .await;
    admin_query_strings(&app.shared.admin_url, include_str!("../../../../migrations/0018_email_nfc.sql")).await;
    let nfc = admin_query_strings(
        &app.shared.admin_url,
        "SELECT email FROM users WHERE email IS NFC NORMALIZED ORDER BY email",
    )
    .await;
    assert_eq!(nfc, vec!["jos\u{e9}@example.com".to_owned(), "ren\u{e9}@example.com".to_owned()]);
    assert_eq!(
        row_count(&app.shared.admin_url, "SELECT count(*) FROM users WHERE NOT (email IS NFC NORMALIZED)").await,
        1
    );
    // The re-spelled account is found by its address written either way.
    for spelling in ["rene\u{301}@example.com", "ren\u{e9}@example.com"] {
        let r = app
            .http
            .post(app.url(&format!("/v1/projects/{p}/users")))
            .bearer_auth(&s.api_key.plaintext)
            .json(&json!({ "email": spelling }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CONFLICT, "{spelling}");
    }
}
