//! The OpenAPI document (`/openapi.json`) and a reference page rendered from it on the server
//! (`/docs`): no script, nothing fetched from elsewhere.
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{api_keys, auth, config, manage, oidc, passwordless, users};

#[derive(OpenApi)]
#[openapi(
    info(title = "Authio API", description = "Multi-tenant authentication platform: management and auth API."),
    paths(users::create_user, users::list_users, api_keys::create_api_key, api_keys::list_api_keys, api_keys::revoke_api_key,
          manage::create_client, manage::list_clients, manage::revoke_client, manage::list_sessions, manage::revoke_session,
          manage::get_settings, manage::update_settings, manage::list_audit_events, manage::export_audit_events,
          auth::sign_up, auth::sign_in, auth::token, auth::introspect, auth::revoke, auth::jwks,
          passwordless::request_magic_link, passwordless::verify_magic_link, passwordless::request_email_code,
          passwordless::verify_email_code,
          config::list_redirect_uris, config::add_redirect_uri, config::remove_redirect_uri, config::list_origins,
          config::add_origin, config::remove_origin, config::list_domains, config::add_domain, config::verify_domain,
          config::delete_domain, config::list_connections, config::create_connection, config::delete_connection,
          config::get_presentation, config::update_presentation, config::set_template,
          oidc::discovery, oidc::authorize, oidc::token, oidc::userinfo, oidc::revoke, oidc::introspect, oidc::logout,
          oidc::create_client, oidc::list_clients, oidc::revoke_client,
          crate::routes::health::healthz, crate::routes::health::readyz),
    components(schemas(api_keys::CreateApiKeyRequest, api_keys::ApiKeyResponse, api_keys::CreatedApiKeyResponse, api_keys::ApiKeyList,
                       users::CreateUserRequest, users::UserResponse, users::UserList,
                       manage::CreateClientRequest, manage::ClientResponse, manage::CreatedClientResponse, manage::ClientList,
                       manage::SessionResponse, manage::SessionList, manage::SettingsBody, manage::AuditEventList,
                       auth::PasswordRequest, auth::TokenResponse, auth::SignUpResponse, auth::ClientTokenResponse,
                       passwordless::MagicLinkRequest, passwordless::Accepted, passwordless::MagicLinkVerify,
                       passwordless::EmailCodeRequest, passwordless::EmailCodeChallenge, passwordless::EmailCodeVerify,
                       config::UriBody, config::OriginBody, config::StringList, config::DomainBody, config::DomainResponse,
                       config::DomainList, config::ConnectionList, config::PresentationBody,
                       oidc::OidcTokenResponse, oidc::OidcClientList, oidc::CreatedOidcClient,
                       crate::error::ErrorBody, crate::error::ErrorDetail, crate::error::OAuthErrorBody)),
    modifiers(&ApiKeyAuth),
    tags((name = "auth", description = "Sign-up, sign-in, tokens (RFC 6749), introspection (RFC 7662), revocation (RFC 7009), JWKS"),
         (name = "users", description = "End users of a project"), (name = "sessions", description = "Users' sessions"),
         (name = "m2m", description = "Machine-to-machine clients"), (name = "projects", description = "Project settings"), (name = "audit", description = "The audit log"),
         (name = "api-keys", description = "Project secret API keys"),
         (name = "openid", description = "Each project as an OpenID Provider: discovery, authorize, token, userinfo, revoke, introspect, logout; client registration"),
         (name = "sign-in config", description = "Redirect URIs, allowed origins, custom domains, upstream providers, branding, email templates"), (name = "operations", description = "Health"))
)]
pub struct ApiDoc;

struct ApiKeyAuth;

impl Modify for ApiKeyAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "project_api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("sk_...").build()),
        );
    }
}

pub fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).unwrap_or(serde_json::Value::Null)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Render the document as a readable HTML page.
pub fn reference_page() -> String {
    let doc = document();
    let mut html = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>Authio API reference</title><style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.5}\
         section{border:1px solid #ddd;border-radius:6px;padding:1rem;margin:1rem 0}code,pre{background:#f5f5f5;padding:.1rem .3rem;border-radius:3px}\
         pre{padding:.6rem;overflow:auto}.m{font-weight:bold;text-transform:uppercase;margin-right:.5rem}</style></head><body>\
         <h1>Authio API reference</h1><p>The machine-readable document is at <a href=\"/openapi.json\"><code>/openapi.json</code></a>. \
         Errors are <code>{\"error\": {\"code\", \"message\"}}</code>; branch on <code>code</code>.</p>",
    );
    if let Some(paths) = doc.get("paths").and_then(|p| p.as_object()) {
        for (path, item) in paths {
            let Some(ops) = item.as_object() else { continue };
            for (method, op) in ops {
                let summary = op.get("summary").and_then(|s| s.as_str()).unwrap_or("");
                let description = op.get("description").and_then(|s| s.as_str()).unwrap_or("");
                html.push_str(&format!(
                    "<section><h2><span class=\"m\">{}</span><code>{}</code></h2><p>{}</p><p>{}</p>",
                    esc(method),
                    esc(path),
                    esc(summary),
                    esc(description)
                ));
                if let Some(resps) = op.get("responses").and_then(|r| r.as_object()) {
                    html.push_str("<h3>Responses</h3><ul>");
                    for (status, r) in resps {
                        let d = r.get("description").and_then(|s| s.as_str()).unwrap_or("");
                        html.push_str(&format!("<li><code>{}</code> {}</li>", esc(status), esc(d)));
                    }
                    html.push_str("</ul>");
                }
                html.push_str("</section>");
            }
        }
    }
    if let Some(schemas) = doc.pointer("/components/schemas").and_then(|s| s.as_object()) {
        html.push_str("<h2>Schemas</h2>");
        for (name, schema) in schemas {
            let pretty = serde_json::to_string_pretty(schema).unwrap_or_default();
            html.push_str(&format!("<section><h3>{}</h3><pre>{}</pre></section>", esc(name), esc(&pretty)));
        }
    }
    html.push_str("</body></html>");
    html
}
