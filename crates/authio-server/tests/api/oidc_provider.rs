//! Each project as an OpenID Provider, driven by an independent relying-party library
//! (`openidconnect`): discovery, authorization with PKCE, sign-in on the hosted pages, code
//! exchange, ID token validation, userinfo, refresh, revocation and logout; and the ways a
//! request must fail.
use std::collections::HashMap;
use std::time::Duration;

use authio_core::types::Plan;
use authio_db::TenantKind;
use authio_testkit::{
    admin_query_strings, make_dedicated, seed_tenant, spawn_app, spawn_app_with, AppOptions, Seeded, TestApp,
};
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreIdTokenClaims, CoreUserInfoClaims};
use openidconnect::{
    AccessTokenHash, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PostLogoutRedirectUrl, ProviderMetadataWithLogout, RedirectUrl, Scope, TokenResponse,
};
use reqwest::StatusCode;
use serde_json::{json, Value};

pub(crate) const CB: &str = "https://rp.example.com/callback";
const AFTER_LOGOUT: &str = "https://rp.example.com/bye";
pub(crate) const PASSWORD: &str = "a-long-password-1";

async fn register(app: &TestApp, s: &Seeded, body: Value) -> Value {
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{}/oidc-clients", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.unwrap()
}

pub(crate) async fn confidential(app: &TestApp, s: &Seeded) -> (String, String) {
    let c = register(
        app,
        s,
        json!({"name": "rp", "client_type": "confidential", "redirect_uris": [CB], "post_logout_redirect_uris": [AFTER_LOGOUT]}),
    )
    .await;
    (c["client_id"].as_str().unwrap().to_owned(), c["client_secret"].as_str().unwrap().to_owned())
}

pub(crate) async fn user(app: &TestApp, s: &Seeded, email: &str) {
    let r = app
        .http
        .post(app.url("/v1/auth/signup"))
        .json(&json!({"project_id": s.project.id, "email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// A browser: cookies, redirects by hand.
pub(crate) struct Browser {
    http: reqwest::Client,
    pub(crate) cookies: HashMap<String, String>,
}

impl Browser {
    pub(crate) fn new() -> Self {
        Browser {
            http: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
            cookies: HashMap::new(),
        }
    }

    fn keep(&mut self, r: &reqwest::Response) {
        for v in r.headers().get_all("set-cookie") {
            let (kv, _) = v.to_str().unwrap().split_once(';').unwrap();
            let (k, v) = kv.split_once('=').unwrap();
            if v.is_empty() {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
    }

    fn cookie(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    pub(crate) async fn get(&mut self, url: &str) -> (StatusCode, Option<String>, String) {
        let r = self.http.get(url).header("cookie", self.cookie()).send().await.unwrap();
        self.keep(&r);
        let location = r.headers().get("location").map(|l| l.to_str().unwrap().to_owned());
        (r.status(), location, r.text().await.unwrap())
    }

    pub(crate) async fn post(&mut self, url: &str, form: &[(&str, &str)]) -> (StatusCode, Option<String>, String) {
        let r = self.http.post(url).header("cookie", self.cookie()).form(form).send().await.unwrap();
        self.keep(&r);
        let location = r.headers().get("location").map(|l| l.to_str().unwrap().to_owned());
        (r.status(), location, r.text().await.unwrap())
    }
}

pub(crate) fn hidden(html: &str, name: &str) -> String {
    let at = html.find(&format!("name=\"{name}\" value=\"")).unwrap_or_else(|| panic!("{name} in {html}"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].replace("&amp;", "&").replace("&#38;", "&").replace("&#x2f;", "/")
}

pub(crate) fn absolute(app: &TestApp, location: &str) -> String {
    if location.starts_with('/') {
        app.url(location)
    } else {
        location.to_owned()
    }
}

/// Open the authorization URL in `b`; sign in with a password on the hosted page when asked;
/// return the final redirect to the client.
pub(crate) async fn sign_in_through(app: &TestApp, b: &mut Browser, auth_url: &str, email: &str) -> String {
    let (st, location, body) = b.get(auth_url).await;
    assert_eq!(st, StatusCode::SEE_OTHER, "{body}");
    let location = location.unwrap();
    if location.starts_with(CB) {
        return location;
    }
    let (st, _, html) = b.get(&absolute(app, &location)).await;
    assert_eq!(st, StatusCode::OK);
    let (csrf, return_to) = (hidden(&html, "csrf"), hidden(&html, "return_to"));
    let action = html.split("<form method=\"post\" action=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let (st, back, body) = b
        .post(
            &app.url(&action),
            &[("csrf", &csrf), ("return_to", &return_to), ("email", email), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(st, StatusCode::SEE_OTHER, "{body}");
    let (st, to_client, body) = b.get(&absolute(app, &back.unwrap())).await;
    assert_eq!(st, StatusCode::SEE_OTHER, "{body}");
    to_client.unwrap()
}

pub(crate) fn query_of(location: &str) -> HashMap<String, String> {
    url::Url::parse(location).unwrap().query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

type Rp = openidconnect::core::CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

async fn relying_party(
    app: &TestApp,
    s: &Seeded,
    id: &str,
    secret: &str,
) -> (Rp, ProviderMetadataWithLogout, reqwest::Client) {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let issuer = IssuerUrl::new(format!("{}/p/{}", app.base_url, s.project.id)).unwrap();
    let meta = ProviderMetadataWithLogout::discover_async(issuer, &http).await.expect("discovery");
    let client = CoreClient::from_provider_metadata(
        meta.clone(),
        ClientId::new(id.into()),
        Some(ClientSecret::new(secret.into())),
    )
    .set_redirect_uri(RedirectUrl::new(CB.into()).unwrap());
    (client, meta, http)
}

#[tokio::test]
async fn an_independent_rp_completes_the_code_flow_with_pkce_then_refreshes_revokes_and_logs_out() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    user(&app, &s, "rita@example.com").await;
    let (id, secret) = confidential(&app, &s).await;
    let (rp, meta, http) = relying_party(&app, &s, &id, &secret).await;

    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (auth_url, csrf, nonce) = rp
        .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
        .add_scope(Scope::new("email".into()))
        .add_scope(Scope::new("offline_access".into()))
        .set_pkce_challenge(challenge)
        .url();
    let mut b = Browser::new();
    let back = sign_in_through(&app, &mut b, auth_url.as_str(), "rita@example.com").await;
    let q = query_of(&back);
    assert_eq!(q["state"], *csrf.secret());
    assert_eq!(q["iss"], format!("{}/p/{}", app.base_url, s.project.id), "RFC 9207");

    let tokens = rp
        .exchange_code(AuthorizationCode::new(q["code"].clone()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .expect("code exchange");
    let id_token = tokens.id_token().expect("an ID token");
    let id_verifier = rp.id_token_verifier();
    let claims: &CoreIdTokenClaims = id_token.claims(&id_verifier, &nonce).expect("the ID token verifies");
    assert_eq!(claims.email().map(|e| e.as_str()), Some("rita@example.com"));
    assert!(claims.auth_time().is_some());
    let expected = AccessTokenHash::from_token(
        tokens.access_token(),
        id_token.signing_alg().unwrap(),
        id_token.signing_key(&id_verifier).unwrap(),
    )
    .unwrap();
    assert_eq!(claims.access_token_hash(), Some(&expected), "at_hash");
    let raw = crate::identity::claims_of(&id_token.to_string());
    assert!(raw["sid"].is_string() && raw["amr"] == json!(["pwd"]), "{raw}");
    // The same token independently of the library: the project's JWKS, another JOSE implementation.
    let set = crate::identity::jwks(&app, s.project.id).await;
    let access = crate::identity::claims_of(tokens.access_token().secret());
    assert_eq!(access["client_id"], id);
    crate::identity::verify_independently(
        &set,
        tokens.access_token().secret(),
        &crate::identity::issuer(&app, s.project.id),
    )
    .unwrap();

    // Userinfo by the access token.
    let info: CoreUserInfoClaims =
        rp.user_info(tokens.access_token().clone(), None).unwrap().request_async(&http).await.expect("userinfo");
    assert_eq!(info.email().map(|e| e.as_str()), Some("rita@example.com"));
    assert_eq!(info.subject().as_str(), claims.subject().as_str());

    // Refresh (offline_access): a new pair; the old refresh token is spent.
    let rt = tokens.refresh_token().expect("a refresh token with offline_access").clone();
    let refreshed = rp.exchange_refresh_token(&rt).unwrap().request_async(&http).await.expect("refresh");
    assert_ne!(refreshed.access_token().secret(), tokens.access_token().secret());
    let info: CoreUserInfoClaims = rp
        .user_info(refreshed.access_token().clone(), None)
        .unwrap()
        .request_async(&http)
        .await
        .expect("userinfo with the refreshed token");
    assert_eq!(info.subject().as_str(), claims.subject().as_str());
    // Another client cannot use this client's refresh token.
    let (other_id, other_secret) = confidential(&app, &s).await;
    let r = app
        .http
        .post(app.url(&format!("/p/{}/oauth2/token", s.project.id)))
        .basic_auth(&other_id, Some(&other_secret))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", refreshed.refresh_token().unwrap().secret())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Revocation: the session ends; userinfo refuses its access token.
    let new_rt = refreshed.refresh_token().unwrap().clone();
    // (The library sends revocations to https endpoints only; this one is plain RFC 7009.)
    let r = app
        .http
        .post(app.url(&format!("/p/{}/oauth2/revoke", s.project.id)))
        .basic_auth(&id, Some(&secret))
        .form(&[("token", new_rt.secret().as_str()), ("token_type_hint", "refresh_token")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .http
        .get(app.url(&format!("/p/{}/oauth2/userinfo", s.project.id)))
        .bearer_auth(refreshed.access_token().secret())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    assert!(rp.exchange_refresh_token(&new_rt).unwrap().request_async(&http).await.is_err());

    // Signed in at the provider: prompt=none gets a code at once (no page).
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (auth_url, _, nonce) = rp
        .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
        .add_prompt(openidconnect::core::CoreAuthPrompt::None)
        .set_pkce_challenge(challenge)
        .url();
    let (st, location, _) = b.get(auth_url.as_str()).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    let q = query_of(&location.unwrap());
    let tokens = rp
        .exchange_code(AuthorizationCode::new(q["code"].clone()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .expect("silent sign-in");
    let id_token = tokens.id_token().unwrap().clone();
    id_token.claims(&rp.id_token_verifier(), &nonce).expect("verifies");
    assert!(tokens.refresh_token().is_none(), "no offline_access, no refresh token");

    // Logout: the provider session ends and the browser returns to the registered URI.
    let end = meta.additional_metadata().end_session_endpoint.clone().expect("end_session_endpoint");
    let logout = openidconnect::LogoutRequest::from(end)
        .set_id_token_hint(&id_token)
        .set_post_logout_redirect_uri(PostLogoutRedirectUrl::new(AFTER_LOGOUT.into()).unwrap())
        .set_state(CsrfToken::new("bye-state".into()))
        .http_get_url();
    let (st, location, _) = b.get(logout.as_str()).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
    assert_eq!(location.unwrap(), format!("{AFTER_LOGOUT}?state=bye-state"));
    assert!(!b.cookies.contains_key("authio_op"));
    let sid = crate::identity::claims_of(&id_token.to_string())["sid"].as_str().unwrap().to_owned();
    let revoked = admin_query_strings(
        &app.shared.admin_url,
        &format!("SELECT revoked_at IS NOT NULL FROM sessions WHERE id = '{sid}'"),
    )
    .await;
    assert_eq!(revoked, vec!["t"]);
    // Now prompt=none has no session to use.
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let (auth_url, _, _) = rp
        .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
        .add_prompt(openidconnect::core::CoreAuthPrompt::None)
        .set_pkce_challenge(challenge)
        .url();
    let (_, location, _) = b.get(auth_url.as_str()).await;
    assert_eq!(query_of(&location.unwrap())["error"], "login_required");
    // An unregistered post-logout URI is refused.
    let (st, _, _) = b
        .get(&app.url(&format!(
            "/p/{}/oauth2/logout?client_id={id}&post_logout_redirect_uri=https://evil.example.com/",
            s.project.id
        )))
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

/// A raw authorization URL.
pub(crate) fn authorize_url(app: &TestApp, s: &Seeded, params: &[(&str, &str)]) -> String {
    format!("{}/p/{}/oauth2/authorize?{}", app.base_url, s.project.id, serde_urlencoded::to_string(params).unwrap())
}

async fn token_call(
    app: &TestApp,
    s: &Seeded,
    auth: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut req = app.http.post(app.url(&format!("/p/{}/oauth2/token", s.project.id))).form(form);
    if let Some((id, secret)) = auth {
        req = req.basic_auth(id, Some(secret));
    }
    let r = req.send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn bad_requests_codes_and_tokens_are_refused() {
    let app =
        spawn_app_with(AppOptions { tune_auth: |a| a.one_time.signin_code_ttl_secs = 2, ..AppOptions::default() })
            .await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    user(&app, &s, "sam@example.com").await;
    let (id, secret) = confidential(&app, &s).await;
    let public = register(
        &app,
        &s,
        json!({"name": "spa", "client_type": "public", "redirect_uris": [CB], "scopes": ["openid", "email"]}),
    )
    .await;
    let public_id = public["client_id"].as_str().unwrap().to_owned();
    assert!(public.get("client_secret").is_none());
    let verifier = "v".repeat(50);
    let challenge = authio_core::crypto::pkce::s256(&verifier);
    let good = |client: &str| -> Vec<(String, String)> {
        [
            ("client_id", client),
            ("redirect_uri", CB),
            ("response_type", "code"),
            ("scope", "openid email"),
            ("state", "st"),
            ("nonce", "n-0S6_WzA2Mj"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    };
    let url_with = |client: &str, change: &[(&str, Option<&str>)]| {
        let mut p = good(client);
        for (k, v) in change {
            p.retain(|(pk, _)| pk != k);
            if let Some(v) = v {
                p.push(((*k).to_owned(), (*v).to_owned()));
            }
        }
        let refs: Vec<(&str, &str)> = p.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        authorize_url(&app, &s, &refs)
    };
    let mut b = Browser::new();

    // An unregistered redirect URI, or an unknown client: a page, never a redirect.
    for url in [
        url_with(&id, &[("redirect_uri", Some("https://evil.example.com/cb"))]),
        url_with("oc_000000000000000000000000", &[]),
    ] {
        let (st, location, body) = b.get(&url).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
        assert!(location.is_none());
    }
    // Other errors go back to the client, with its state.
    for (change, error) in [
        (vec![("scope", Some("openid payroll"))], "invalid_scope"),
        (vec![("response_type", Some("token"))], "unsupported_response_type"),
        (vec![("code_challenge_method", Some("plain"))], "invalid_request"),
        (vec![("prompt", Some("none"))], "login_required"),
    ] {
        let (st, location, _) = b.get(&url_with(&id, &change)).await;
        assert_eq!(st, StatusCode::SEE_OTHER);
        let q = query_of(&location.unwrap());
        assert_eq!((q["error"].as_str(), q["state"].as_str()), (error, "st"), "{change:?}");
    }
    // A public client must use PKCE.
    let (_, location, _) =
        b.get(&url_with(&public_id, &[("code_challenge", None), ("code_challenge_method", None)])).await;
    assert_eq!(query_of(&location.unwrap())["error"], "invalid_request");

    let code_for = |client: String| {
        let url = url_with(&client, &[]);
        let app = &app;
        async move {
            let mut b = Browser::new();
            let back = sign_in_through(app, &mut b, &url, "sam@example.com").await;
            query_of(&back)["code"].clone()
        }
    };
    // A missing or wrong verifier burns the code.
    let code = code_for(id.clone()).await;
    let (st, body) = token_call(
        &app,
        &s,
        Some((&id, &secret)),
        &[("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", CB)],
    )
    .await;
    assert_eq!((st, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")));
    let code = code_for(id.clone()).await;
    let wrong = "w".repeat(50);
    let (st, _) = token_call(
        &app,
        &s,
        Some((&id, &secret)),
        &[("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", CB), ("code_verifier", &wrong)],
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // A code of another client.
    let code = code_for(public_id.clone()).await;
    let (st, body) = token_call(
        &app,
        &s,
        Some((&id, &secret)),
        &[("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", CB), ("code_verifier", &verifier)],
    )
    .await;
    assert_eq!((st, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")));
    // A wrong secret.
    let code = code_for(id.clone()).await;
    let (st, body) = token_call(
        &app,
        &s,
        Some((&id, "ocs_wrong")),
        &[("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", CB), ("code_verifier", &verifier)],
    )
    .await;
    assert_eq!((st, body["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_client")));

    // A public client exchanges with its id and verifier; a replay of the code fails and ends
    // the session the first exchange started.
    let code = code_for(public_id.clone()).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", CB),
        ("code_verifier", verifier.as_str()),
        ("client_id", public_id.as_str()),
    ];
    let (st, first) = token_call(&app, &s, None, &form).await;
    assert_eq!(st, StatusCode::OK, "{first}");
    assert!(first["refresh_token"].is_null(), "no offline_access for this client");
    let info = app
        .http
        .get(app.url(&format!("/p/{}/oauth2/userinfo", s.project.id)))
        .bearer_auth(first["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), StatusCode::OK);
    let (st, body) = token_call(&app, &s, None, &form).await;
    assert_eq!((st, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")));
    let info = app
        .http
        .get(app.url(&format!("/p/{}/oauth2/userinfo", s.project.id)))
        .bearer_auth(first["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), StatusCode::UNAUTHORIZED, "the replay ended the first exchange's session");

    // An expired code.
    let code = code_for(id.clone()).await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (st, _) = token_call(
        &app,
        &s,
        Some((&id, &secret)),
        &[("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", CB), ("code_verifier", &verifier)],
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // A tampered ID token does not verify with the independent library.
    let code = code_for(id.clone()).await;
    let (st, body) = token_call(
        &app,
        &s,
        Some((&id, &secret)),
        &[("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", CB), ("code_verifier", &verifier)],
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let idt = body["id_token"].as_str().unwrap();
    let mut parts: Vec<String> = idt.split('.').map(str::to_owned).collect();
    let mut payload = crate::identity::claims_of(idt);
    payload["sub"] = json!("someone-else");
    use base64::Engine;
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload.to_string());
    let tampered: openidconnect::core::CoreIdToken = serde_json::from_value(json!(parts.join("."))).unwrap();
    let (rp, _, _) = relying_party(&app, &s, &id, &secret).await;
    assert!(tampered.claims(&rp.id_token_verifier(), &Nonce::new("n-0S6_WzA2Mj".into())).is_err());
    let genuine: openidconnect::core::CoreIdToken = serde_json::from_value(json!(idt)).unwrap();
    assert!(genuine.claims(&rp.id_token_verifier(), &Nonce::new("n-0S6_WzA2Mj".into())).is_ok());
    // And an ID token is never taken for an access token.
    let info =
        app.http.get(app.url(&format!("/p/{}/oauth2/userinfo", s.project.id))).bearer_auth(idt).send().await.unwrap();
    assert_eq!(info.status(), StatusCode::UNAUTHORIZED);

    // prompt=login asks again even with a provider session.
    let mut b = Browser::new();
    sign_in_through(&app, &mut b, &url_with(&id, &[]), "sam@example.com").await;
    let (_, location, _) = b.get(&url_with(&id, &[])).await;
    assert!(location.unwrap().starts_with(CB), "signed in: straight back");
    let (_, location, _) = b.get(&url_with(&id, &[("prompt", Some("login"))])).await;
    assert!(location.unwrap().contains("/signin?return_to="), "prompt=login: the sign-in page again");
}

#[tokio::test]
async fn the_same_flow_serves_a_dedicated_tenant_with_its_users_at_home() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "globex", TenantKind::Customer, Plan::Enterprise).await;
    let dedicated = make_dedicated(&app.shared, &s.tenant).await;
    user(&app, &s, "gil@globex.test").await;
    let (id, secret) = confidential(&app, &s).await;
    let (rp, _, http) = relying_party(&app, &s, &id, &secret).await;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (auth_url, _, nonce) = rp
        .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
        .add_scope(Scope::new("email".into()))
        .set_pkce_challenge(challenge)
        .url();
    let mut b = Browser::new();
    let back = sign_in_through(&app, &mut b, auth_url.as_str(), "gil@globex.test").await;
    let tokens = rp
        .exchange_code(AuthorizationCode::new(query_of(&back)["code"].clone()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .expect("code exchange");
    let claims = tokens.id_token().unwrap().claims(&rp.id_token_verifier(), &nonce).expect("verifies");
    assert_eq!(claims.email().map(|e| e.as_str()), Some("gil@globex.test"));
    let info: CoreUserInfoClaims =
        rp.user_info(tokens.access_token().clone(), None).unwrap().request_async(&http).await.unwrap();
    assert_eq!(info.email().map(|e| e.as_str()), Some("gil@globex.test"));
    // Users and sessions at the dedicated home; the client and the codes on shared.
    assert_eq!(admin_query_strings(&dedicated.admin_url, "SELECT count(*) FROM users").await, vec!["1"]);
    assert_eq!(admin_query_strings(&app.shared.admin_url, "SELECT count(*) FROM users").await, vec!["0"]);
    let sid = crate::identity::claims_of(&tokens.id_token().unwrap().to_string())["sid"].as_str().unwrap().to_owned();
    let at_home =
        admin_query_strings(&dedicated.admin_url, &format!("SELECT client_id FROM sessions WHERE id = '{sid}'")).await;
    assert_eq!(at_home, vec![id.clone()]);
    assert_eq!(admin_query_strings(&app.shared.admin_url, "SELECT count(*) FROM oidc_clients").await, vec!["1"]);
    assert_eq!(admin_query_strings(&dedicated.admin_url, "SELECT count(*) FROM signin_codes").await, vec!["0"]);
}

async fn get_json(app: &TestApp, path: &str) -> Value {
    let r = app.http.get(app.url(path)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    r.json().await.unwrap()
}

/// The algorithms of the keys in the project's JWKS, sorted.
async fn jwks_algs(app: &TestApp, s: &Seeded) -> Vec<String> {
    let set = get_json(app, &format!("/p/{}/.well-known/jwks.json", s.project.id)).await;
    let mut algs: Vec<String> =
        set["keys"].as_array().unwrap().iter().map(|k| k["alg"].as_str().unwrap().to_owned()).collect();
    algs.sort();
    algs.dedup();
    algs
}

/// Run the code flow with an independent RP whose algorithm allow-list comes from discovery
/// (as `openidconnect` does); returns the ID token's header `alg`.
async fn id_token_alg_through_rp(app: &TestApp, s: &Seeded, id: &str, secret: &str, email: &str) -> String {
    let (rp, _, http) = relying_party(app, s, id, secret).await;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (auth_url, _, nonce) = rp
        .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
        .set_pkce_challenge(challenge)
        .url();
    let mut b = Browser::new();
    let back = sign_in_through(app, &mut b, auth_url.as_str(), email).await;
    let tokens = rp
        .exchange_code(AuthorizationCode::new(query_of(&back)["code"].clone()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .expect("code exchange");
    let id_token = tokens.id_token().expect("an ID token");
    let verifier = rp.id_token_verifier();
    let claims = id_token.claims(&verifier, &nonce).expect("the ID token verifies against discovery's allow-list");
    let expected = AccessTokenHash::from_token(
        tokens.access_token(),
        id_token.signing_alg().unwrap(),
        id_token.signing_key(&verifier).unwrap(),
    )
    .unwrap();
    assert_eq!(claims.access_token_hash(), Some(&expected), "at_hash in the ID token's own algorithm");
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            id_token.to_string().split('.').next().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    header["alg"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn discovery_advertises_exactly_the_published_algorithms_rs256_among_them_and_rfc_8414_metadata() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    user(&app, &s, "rita@example.com").await;
    let pid = s.project.id;

    // Discovery 1.0 section 3: RS256 MUST be listed; and every listed algorithm has a key in the
    // JWKS (fetched after discovery, which publishes the RS256 key beside the EdDSA one).
    let meta = get_json(&app, &format!("/p/{pid}/.well-known/openid-configuration")).await;
    let advertised: Vec<String> =
        serde_json::from_value(meta["id_token_signing_alg_values_supported"].clone()).unwrap();
    assert!(advertised.contains(&"RS256".to_owned()), "{advertised:?}");
    assert_eq!(advertised, jwks_algs(&app, &s).await);
    assert_eq!(advertised, vec!["EdDSA", "RS256"]);
    // No consent screen exists, so none is advertised.
    assert_eq!(meta["prompt_values_supported"], json!(["none", "login"]));

    // RFC 8414 3.1: the well-known suffix between the host and the issuer's path; the same
    // issuer in the answer (3.3).
    let as_meta = get_json(&app, &format!("/.well-known/oauth-authorization-server/p/{pid}")).await;
    assert_eq!(as_meta["issuer"], format!("{}/p/{pid}", app.base_url));
    assert_eq!(as_meta["token_endpoint"], meta["token_endpoint"]);
    assert_eq!(as_meta["jwks_uri"], meta["jwks_uri"]);
    let r = app.http.get(app.url("/.well-known/oauth-authorization-server/p/not-a-project")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // A client registered for RS256 gets RS256 ID tokens (the project's key is EdDSA); a
    // client without a choice gets the project's.
    let rs = register(
        &app,
        &s,
        json!({"name": "rs", "client_type": "confidential", "redirect_uris": [CB], "id_token_signed_response_alg": "RS256"}),
    )
    .await;
    assert_eq!(rs["id_token_signed_response_alg"], "RS256");
    let (rs_id, rs_secret) = (rs["client_id"].as_str().unwrap(), rs["client_secret"].as_str().unwrap());
    assert_eq!(id_token_alg_through_rp(&app, &s, rs_id, rs_secret, "rita@example.com").await, "RS256");
    let (plain_id, plain_secret) = confidential(&app, &s).await;
    assert_eq!(id_token_alg_through_rp(&app, &s, &plain_id, &plain_secret, "rita@example.com").await, "EdDSA");
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{pid}/oidc-clients")))
        .bearer_auth(&s.api_key.plaintext)
        .json(&json!({"name": "x", "client_type": "confidential", "redirect_uris": [CB], "id_token_signed_response_alg": "HS256"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // Changing the project's algorithm advertises nothing new until a key of it is published,
    // and an RP configured from discovery keeps accepting the tokens it is sent.
    let r = app
        .http
        .patch(app.url(&format!("/v1/projects/{pid}/settings")))
        .bearer_auth(&s.api_key.plaintext)
        .json(&json!({"signing_alg": "ES256"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let meta = get_json(&app, &format!("/p/{pid}/.well-known/openid-configuration")).await;
    assert_eq!(meta["id_token_signing_alg_values_supported"], json!(["EdDSA", "RS256"]));
    assert_eq!(id_token_alg_through_rp(&app, &s, &plain_id, &plain_secret, "rita@example.com").await, "EdDSA");
    // A rotation publishes an ES256 next key (still signing with EdDSA): both advertised.
    // (A rotation by the control plane reaches the node's key cache by NOTIFY: wait for it.)
    let advertised_eventually = |want: Value| {
        let app = &app;
        async move {
            let mut last = Value::Null;
            for _ in 0..100 {
                let meta = get_json(app, &format!("/p/{pid}/.well-known/openid-configuration")).await;
                last = meta["id_token_signing_alg_values_supported"].clone();
                if last == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("advertised {last}, wanted {want}");
        }
    };
    app.control
        .rotate_keys(
            pid,
            Some(authio_core::crypto::keys::Alg::ES256),
            &authio_testkit::test_master_key(),
            chrono::Utc::now(),
            true,
        )
        .await
        .unwrap();
    advertised_eventually(json!(["ES256", "EdDSA", "RS256"])).await;
    assert_eq!(id_token_alg_through_rp(&app, &s, &plain_id, &plain_secret, "rita@example.com").await, "EdDSA");
    // The next rotation makes ES256 current; EdDSA stays advertised while its key is published.
    app.control.rotate_keys(pid, None, &authio_testkit::test_master_key(), chrono::Utc::now(), true).await.unwrap();
    // The algorithms stay the same; wait for the new current key to sign.
    let mut alg = String::new();
    for _ in 0..100 {
        alg = id_token_alg_through_rp(&app, &s, &plain_id, &plain_secret, "rita@example.com").await;
        if alg == "ES256" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(alg, "ES256");
    let meta = get_json(&app, &format!("/p/{pid}/.well-known/openid-configuration")).await;
    assert_eq!(meta["id_token_signing_alg_values_supported"], json!(["ES256", "EdDSA", "RS256"]));
    assert_eq!(meta["id_token_signing_alg_values_supported"], json!(jwks_algs(&app, &s).await));
    assert_eq!(id_token_alg_through_rp(&app, &s, rs_id, rs_secret, "rita@example.com").await, "RS256");
}

#[tokio::test]
async fn token_endpoint_errors_name_what_to_fix_and_failures_count_per_confidential_client() {
    let app =
        spawn_app_with(AppOptions { tune_auth: |a| a.limits.verify_failures_per_ip = 3, ..AppOptions::default() })
            .await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    let token_url = app.url(&format!("/p/{}/oauth2/token", s.project.id));
    let (id, secret) = confidential(&app, &s).await;

    // unsupported_grant_type lists what this endpoint supports, and only that.
    let r = app
        .http
        .post(&token_url)
        .basic_auth(&id, Some(&secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_grant_type");
    let text = body["error_description"].as_str().unwrap();
    assert!(text.contains("authorization_code") && !text.contains("client_credentials"), "{text}");

    // The right secret sent the wrong way: invalid_client naming the registered method.
    let r = app
        .http
        .post(&token_url)
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "x"),
            ("client_id", &id),
            ("client_secret", &secret),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
    assert!(body["error_description"].as_str().unwrap().contains("client_secret_basic"), "{body}");
    // A wrong secret says nothing about the method.
    let r = app
        .http
        .post(&token_url)
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", "x"),
            ("client_id", &id),
            ("client_secret", "ocs_wrong"),
        ])
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert!(!body["error_description"].as_str().unwrap().contains("client_secret"), "{body}");

    // A backend with stale refresh tokens: its failures count against it, not its address.
    let refresh = |who: (&str, &str), rt: &str| {
        let (id, secret) = (who.0.to_owned(), who.1.to_owned());
        let req = app
            .http
            .post(&token_url)
            .basic_auth(id, Some(secret))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", rt)]);
        async move { req.send().await.unwrap() }
    };
    // (Refresh tokens of the client's own project: `rt_<project>_<43 characters>`.)
    let stale = format!("rt_{}_{}", s.project.id.simple(), "s".repeat(43));
    for _ in 0..3 {
        let r = refresh((&id, &secret), &stale).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
    let r = refresh((&id, &secret), &stale).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "RFC 6749's error shape: {body}");
    assert!(body["error_description"].is_string());
    // Another client from the same address is not held back by it.
    let (other_id, other_secret) = confidential(&app, &s).await;
    let r = refresh((&other_id, &other_secret), &stale).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "judged, not throttled");
    // A token of another project counts against the address, not the client: a client gets no
    // guesses of its own at other projects' tokens.
    let foreign = format!("rt_{}_{}", uuid::Uuid::now_v7().simple(), "s".repeat(43));
    for _ in 0..3 {
        assert_eq!(refresh((&other_id, &other_secret), &foreign).await.status(), StatusCode::BAD_REQUEST);
    }
    assert_eq!(refresh((&other_id, &other_secret), &foreign).await.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn rfc_8707_resources_set_the_audience_of_an_openid_clients_access_tokens() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    user(&app, &s, "rita@example.com").await;
    const API: &str = "https://api.rp.example.com/";
    let c = register(
        &app,
        &s,
        json!({"name": "rp", "client_type": "confidential", "redirect_uris": [CB], "resources": [API, "https://api2.rp.example.com/"]}),
    )
    .await;
    assert_eq!(c["resources"], json!([API, "https://api2.rp.example.com/"]));
    let (id, secret) = (c["client_id"].as_str().unwrap().to_owned(), c["client_secret"].as_str().unwrap().to_owned());
    let r = app
        .http
        .post(app.url(&format!("/v1/projects/{}/oidc-clients", s.project.id)))
        .bearer_auth(&s.api_key.plaintext)
        .json(&json!({"name": "x", "client_type": "confidential", "redirect_uris": [CB], "resources": ["https://a.example.com/#f"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "a fragment is not allowed (RFC 8707 2)");

    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let code_for = |resource: &'static str| {
        let challenge = challenge.as_str().to_owned();
        let (app, s, id) = (&app, &s, id.clone());
        async move {
            let mut params = vec![
                ("response_type", "code"),
                ("client_id", id.as_str()),
                ("redirect_uri", CB),
                ("scope", "openid offline_access"),
                ("state", "st"),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
            ];
            if !resource.is_empty() {
                params.push(("resource", resource));
            }
            let url = authorize_url(app, s, &params);
            let mut b = Browser::new();
            sign_in_through(app, &mut b, &url, "rita@example.com").await
        }
    };
    let token = |form: Vec<(&'static str, String)>| {
        let req = app
            .http
            .post(app.url(&format!("/p/{}/oauth2/token", s.project.id)))
            .basic_auth(&id, Some(&secret))
            .form(&form);
        async move {
            let r = req.send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    // An unregistered resource at the authorization endpoint goes back as invalid_target.
    let back = code_for("https://other.example.com/").await;
    assert_eq!(query_of(&back)["error"], "invalid_target", "{back}");
    // The authorized resource is the access token's audience.
    let back = code_for(API).await;
    let code = query_of(&back)["code"].clone();
    let (st, body) = token(vec![
        ("grant_type", "authorization_code".into()),
        ("code", code),
        ("redirect_uri", CB.into()),
        ("code_verifier", verifier.secret().clone()),
    ])
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(crate::identity::claims_of(body["access_token"].as_str().unwrap())["aud"], API);
    let rt = body["refresh_token"].as_str().unwrap().to_owned();
    // A token for the API is not for Authio's own userinfo.
    let r = app
        .http
        .get(app.url(&format!("/p/{}/oauth2/userinfo", s.project.id)))
        .bearer_auth(body["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A refresh may not widen to another resource (nothing is rotated), and by default stays
    // with the one granted.
    for other in ["https://other.example.com/", "https://api2.rp.example.com/"] {
        let (st, body) = token(vec![
            ("grant_type", "refresh_token".into()),
            ("refresh_token", rt.clone()),
            ("resource", other.into()),
        ])
        .await;
        assert_eq!((st, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_target")), "{body}");
    }
    let (st, body) = token(vec![("grant_type", "refresh_token".into()), ("refresh_token", rt)]).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(crate::identity::claims_of(body["access_token"].as_str().unwrap())["aud"], API);
    let back = code_for("").await;
    let (st, body) = token(vec![
        ("grant_type", "authorization_code".into()),
        ("code", query_of(&back)["code"].clone()),
        ("redirect_uri", CB.into()),
        ("code_verifier", verifier.secret().clone()),
    ])
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(crate::identity::claims_of(body["access_token"].as_str().unwrap())["aud"], s.project.id.to_string());
    let rt = body["refresh_token"].as_str().unwrap().to_owned();
    let (st, body) =
        token(vec![("grant_type", "refresh_token".into()), ("refresh_token", rt), ("resource", API.into())]).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(crate::identity::claims_of(body["access_token"].as_str().unwrap())["aud"], API);
    // A code issued for no resource cannot be exchanged for an unregistered one.
    let back = code_for("").await;
    let (st, body) = token(vec![
        ("grant_type", "authorization_code".into()),
        ("code", query_of(&back)["code"].clone()),
        ("redirect_uri", CB.into()),
        ("code_verifier", verifier.secret().clone()),
        ("resource", "https://other.example.com/".into()),
    ])
    .await;
    assert_eq!((st, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_target")), "{body}");
}

#[tokio::test]
async fn scope_organization_puts_the_organization_in_id_and_access_tokens_for_members_only() {
    let app = spawn_app().await;
    let s = seed_tenant(&app.shared, "acme", TenantKind::Customer, Plan::Pro).await;
    user(&app, &s, "rita@example.com").await;
    let manage = |path: &str, body: Value| {
        app.http
            .post(app.url(&format!("/v1/projects/{}{path}", s.project.id)))
            .bearer_auth(&s.api_key.plaintext)
            .json(&body)
            .send()
    };
    assert_eq!(manage("/permissions", json!({"slug": "read:invoices"})).await.unwrap().status(), StatusCode::CREATED);
    let r = manage(
        "/roles",
        json!({"slug": "member", "name": "Member", "permissions": ["read:invoices"], "is_default": true}),
    );
    assert_eq!(r.await.unwrap().status(), StatusCode::CREATED);
    let initech: Value =
        manage("/organizations", json!({"name": "Initech", "slug": "initech"})).await.unwrap().json().await.unwrap();
    let hooli: Value =
        manage("/organizations", json!({"name": "Hooli", "slug": "hooli"})).await.unwrap().json().await.unwrap();
    let rita =
        admin_query_strings(&app.shared.admin_url, "SELECT id::text FROM users WHERE email = 'rita@example.com'").await;
    let r = manage(&format!("/organizations/{}/members", initech["id"].as_str().unwrap()), json!({"user_id": rita[0]}));
    assert_eq!(r.await.unwrap().status(), StatusCode::CREATED);
    let (id, secret) = confidential(&app, &s).await;

    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let flow = |org: &str| {
        authorize_url(
            &app,
            &s,
            &[
                ("response_type", "code"),
                ("client_id", id.as_str()),
                ("redirect_uri", CB),
                ("scope", "openid organization offline_access"),
                ("state", "st"),
                ("nonce", "n-1"),
                ("code_challenge", challenge.as_str()),
                ("code_challenge_method", "S256"),
                ("organization", org),
            ],
        )
    };
    // Not a member of Hooli: access_denied goes back to the client.
    let mut b = Browser::new();
    let back = sign_in_through(&app, &mut b, &flow(hooli["id"].as_str().unwrap()), "rita@example.com").await;
    assert_eq!(query_of(&back)["error"], "access_denied", "{back}");
    // A member of Initech: the ID token names it; the access token carries role and permissions.
    let back = sign_in_through(&app, &mut b, &flow(initech["id"].as_str().unwrap()), "rita@example.com").await;
    let code = query_of(&back)["code"].clone();
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
    let id_claims = crate::identity::claims_of(t["id_token"].as_str().unwrap());
    assert_eq!(id_claims["org_id"], initech["id"]);
    let access = crate::identity::claims_of(t["access_token"].as_str().unwrap());
    assert_eq!((access["org_id"].clone(), access["role"].as_str()), (initech["id"].clone(), Some("member")));
    assert_eq!(access["permissions"], json!(["read:invoices"]));
    crate::identity::verify_independently(
        &crate::identity::jwks(&app, s.project.id).await,
        t["id_token"].as_str().unwrap(),
        &crate::identity::issuer(&app, s.project.id),
    )
    .unwrap();
    // The session stays in it across refreshes.
    let r = app
        .http
        .post(app.url(&format!("/p/{}/oauth2/token", s.project.id)))
        .basic_auth(&id, Some(&secret))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", t["refresh_token"].as_str().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let refreshed: Value = r.json().await.unwrap();
    assert_eq!(crate::identity::claims_of(refreshed["access_token"].as_str().unwrap())["org_id"], initech["id"]);
    // Hooli admits verified addresses at its verified domain: now Rita joins it as she signs in.
    let r = app
        .http
        .patch(app.url(&format!("/v1/projects/{}/organizations/{}", s.project.id, hooli["id"].as_str().unwrap())))
        .bearer_auth(&s.api_key.plaintext)
        .json(&json!({"domain_policy": "auto_join"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let d: Value =
        manage(&format!("/organizations/{}/domains", hooli["id"].as_str().unwrap()), json!({"domain": "example.com"}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    app.dns.publish(d["txt_name"].as_str().unwrap(), d["txt_value"].as_str().unwrap());
    let verify =
        format!("/organizations/{}/domains/{}/verify", hooli["id"].as_str().unwrap(), d["id"].as_str().unwrap());
    assert_eq!(manage(&verify, json!({})).await.unwrap().status(), StatusCode::OK);
    admin_query_strings(
        &app.shared.admin_url,
        "UPDATE users SET email_verified = true WHERE email = 'rita@example.com'",
    )
    .await;
    let back = sign_in_through(&app, &mut b, &flow(hooli["id"].as_str().unwrap()), "rita@example.com").await;
    assert!(query_of(&back).contains_key("code"), "{back}");

    // `organization` without its scope is a bad request.
    let url = authorize_url(
        &app,
        &s,
        &[
            ("response_type", "code"),
            ("client_id", id.as_str()),
            ("redirect_uri", CB),
            ("scope", "openid"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("organization", initech["id"].as_str().unwrap()),
        ],
    );
    let (_, location, _) = b.get(&url).await;
    assert_eq!(query_of(&location.unwrap())["error"], "invalid_request");
}
