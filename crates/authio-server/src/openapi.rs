//! The OpenAPI document (`/openapi.json`) and a reference page rendered from it on the server
//! (`/docs`): no script, nothing fetched from elsewhere.
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    api_keys, auth, config, events, manage, mfa, oidc, orgs, passwordless, registration, scim, users, webhooks,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Authio API", description = "Multi-tenant authentication platform: management and auth API."),
    paths(users::create_user, users::list_users, api_keys::create_api_key, api_keys::list_api_keys, api_keys::revoke_api_key,
          manage::create_client, manage::list_clients, manage::revoke_client, manage::list_sessions, manage::revoke_session,
          manage::get_settings, manage::update_settings, manage::list_audit_events, manage::export_audit_events,
          auth::sign_up, auth::sign_in, auth::token, auth::introspect, auth::revoke, auth::jwks,
          passwordless::request_magic_link, passwordless::verify_magic_link, passwordless::request_email_code,
          passwordless::verify_email_code,
          mfa::verify, mfa::enrol_totp, mfa::confirm_totp, mfa::my_factors, mfa::start_my_totp, mfa::confirm_my_totp,
          mfa::rename_my_factor, mfa::remove_my_factor, mfa::regenerate_my_codes, mfa::user_factors,
          mfa::remove_user_factor,
          config::list_redirect_uris, config::add_redirect_uri, config::remove_redirect_uri, config::list_origins,
          config::add_origin, config::remove_origin, config::list_domains, config::add_domain, config::verify_domain,
          config::delete_domain, config::list_connections, config::create_connection, config::delete_connection,
          config::get_connection, config::update_connection, config::create_saml_connection,
          scim::create_directory, scim::list_directories, scim::update_directory, scim::delete_directory,
          scim::rotate_token, scim::revoke_token,
          config::get_presentation, config::update_presentation, config::set_template,
          oidc::discovery, oidc::authorization_server_metadata, oidc::authorize, oidc::token, oidc::userinfo, oidc::userinfo_post, oidc::revoke, oidc::introspect, oidc::logout,
          oidc::create_client, oidc::list_clients, oidc::revoke_client,
          registration::register, registration::read_registration, registration::delete_registration,
          registration::create_resource, registration::list_resources, registration::delete_resource,
          registration::block_client, registration::unblock_client,
          orgs::create_organization, orgs::list_organizations, orgs::get_organization, orgs::update_organization,
          orgs::delete_organization, orgs::add_member, orgs::list_members, orgs::update_member, orgs::remove_member,
          orgs::create_role, orgs::list_roles, orgs::update_role, orgs::delete_role, orgs::define_permission,
          orgs::list_permissions, orgs::delete_permission, orgs::add_domain, orgs::list_domains, orgs::verify_domain,
          orgs::delete_domain, orgs::create_invitation, orgs::list_invitations, orgs::resend_invitation,
          orgs::revoke_invitation, users::impersonate, events::list_events,
          webhooks::create_endpoint, webhooks::list_endpoints, webhooks::update_endpoint, webhooks::delete_endpoint,
          webhooks::rotate_secret, webhooks::replay, webhooks::list_deliveries,
          crate::routes::health::healthz, crate::routes::health::readyz),
    components(schemas(api_keys::CreateApiKeyRequest, api_keys::ApiKeyResponse, api_keys::CreatedApiKeyResponse, api_keys::ApiKeyList,
                       users::CreateUserRequest, users::UserResponse, users::UserList,
                       manage::CreateClientRequest, manage::ClientResponse, manage::CreatedClientResponse, manage::ClientList,
                       manage::SessionResponse, manage::SessionList, manage::SettingsBody, manage::AuditEventList,
                       auth::PasswordRequest, auth::TokenResponse, auth::SignUpResponse, auth::ClientTokenResponse,
                       passwordless::MagicLinkRequest, passwordless::Accepted, passwordless::MagicLinkVerify,
                       passwordless::EmailCodeRequest, passwordless::EmailCodeChallenge, passwordless::EmailCodeVerify,
                       mfa::MfaRequiredBody, mfa::MfaVerifyRequest, mfa::MfaTokenRequest, mfa::TotpEnrolmentBody,
                       mfa::MfaConfirmRequest, mfa::EnrolledSignIn, mfa::FactorBody, mfa::FactorList, mfa::CodeBody,
                       mfa::RecoveryCodes, mfa::RenameBody, mfa::NewRecoveryCodes,
                       registration::RegistrationBody, registration::ResourceBody, registration::ResourceList,
                       registration::NewResourceBody,
                       config::UriBody, config::OriginBody, config::StringList, config::DomainBody, config::DomainResponse,
                       config::DomainList, config::ConnectionList, config::PresentationBody,
                       oidc::OidcTokenResponse, oidc::OidcTokenForm, auth::TokenForm, auth::TokenHintForm, oidc::OidcClientList, oidc::CreatedOidcClient,
                       orgs::OrganizationBody, orgs::NewOrganizationBody, orgs::OrganizationPatchBody, orgs::OrganizationList,
                       orgs::MembershipBody, orgs::MembershipList, orgs::NewMemberBody, orgs::MemberPatchBody,
                       orgs::RoleBody, orgs::RoleList, orgs::NewRoleBody, orgs::RolePatchBody,
                       orgs::PermissionBody, orgs::PermissionList, orgs::NewPermissionBody,
                       orgs::OrgDomainBody, orgs::OrgDomainList, orgs::NewOrgDomainBody,
                       orgs::InvitationBody, orgs::InvitationList, orgs::NewInvitationBody, orgs::ResendBody,
                       users::ImpersonateBody, users::ImpersonationResponse,
                       events::EventBody, events::EventList, events::EventData, events::UserEventData,
                       events::SessionEventData, events::AuthenticationFailedEventData,
                       events::EmailVerificationEventData, events::TenantMovedEventData,
                       events::OrganizationEventData, events::MembershipEventData,
                       webhooks::WebhookEndpointBody, webhooks::CreatedWebhookEndpoint, webhooks::WebhookEndpointList,
                       webhooks::NewWebhookEndpointBody, webhooks::WebhookEndpointPatchBody, webhooks::RotatedSecret,
                       webhooks::ReplayBody, webhooks::DeliveryBody, webhooks::DeliveryList,
                       crate::error::ErrorBody, crate::error::ErrorDetail, crate::error::OAuthErrorBody)),
    modifiers(&ApiKeyAuth, &CommonResponses),
    tags((name = "auth", description = "Sign-up, sign-in, tokens (RFC 6749), introspection (RFC 7662), revocation (RFC 7009), JWKS"),
         (name = "mfa", description = "Second factors: finishing a sign-in that waits for one, a user's own factors (TOTP apps, passkeys and security keys, recovery codes), and a project's view of them"),
         (name = "users", description = "End users of a project"), (name = "sessions", description = "Users' sessions"),
         (name = "m2m", description = "Machine-to-machine clients"), (name = "projects", description = "Project settings"), (name = "audit", description = "The audit log"),
         (name = "api-keys", description = "Project secret API keys"),
         (name = "events", description = "The project's event stream (`user.created`, `session.revoked`, ...), in order, with a cursor; kept 30 days; webhook endpoints that receive it, signed per Standard Webhooks"),
         (name = "organizations", description = "Organizations (a project's own customers), their members, and the project's roles and permissions"),
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
        components.add_security_scheme(
            "user_access_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// The answers every operation of a kind can give, added where an operation does not list
/// them itself: the edge's refusals (a NUL character, a body that is too large or not of the
/// declared type), authentication, unknown ids in the path, validation, throttling on
/// credential-guessing surfaces, and an unavailable database. One place, so no operation
/// can miss one.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::HttpMethod;
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        for (path, item) in openapi.paths.paths.iter_mut() {
            let oauth = [
                "/oauth2/token",
                "/oauth2/introspect",
                "/oauth2/revoke",
                "/v1/auth/token",
                "/v1/auth/introspect",
                "/v1/auth/revoke",
            ]
            .iter()
            .any(|p| path.ends_with(p));
            // Pages for browsers answer their refusals as pages, not JSON bodies.
            let page = path.ends_with("/oauth2/authorize") || path.ends_with("/oauth2/logout");
            let guessable = path.starts_with("/v1/auth/") || oauth || path.ends_with("/oauth2/authorize");
            let body_schema = if oauth { "OAuthErrorBody" } else { "ErrorBody" };
            for method in [HttpMethod::Get, HttpMethod::Post, HttpMethod::Put, HttpMethod::Patch, HttpMethod::Delete] {
                let op = match method {
                    HttpMethod::Get => item.get.as_mut(),
                    HttpMethod::Post => item.post.as_mut(),
                    HttpMethod::Put => item.put.as_mut(),
                    HttpMethod::Patch => item.patch.as_mut(),
                    HttpMethod::Delete => item.delete.as_mut(),
                    _ => None,
                };
                let Some(op) = op else { continue };
                let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
                let has_body = op.request_body.is_some();
                let json_body = op
                    .request_body
                    .as_ref()
                    .is_some_and(|b| b.content.keys().any(|k| k.starts_with("application/json")));
                let path_ids = path.contains('{');
                let mut wanted: Vec<(&str, &str)> = vec![(
                    "400",
                    "malformed request: a NUL character in the path, query or body, a malformed body or query \
                     (`invalid_request`, `malformed_json`, `invalid_query`)",
                )];
                if secured {
                    wanted.push(("401", "missing, malformed or revoked credentials (`invalid_api_key`)"));
                    wanted.push(("403", "the credentials may not do this (`forbidden`)"));
                } else if oauth {
                    wanted.push(("401", "client authentication failed (`invalid_client`, with `WWW-Authenticate`)"));
                }
                // The sign-in API names its project in the body.
                if path_ids || (json_body && path.starts_with("/v1/auth/")) {
                    wanted.push(("404", "no such project or object (`*_not_found`)"));
                }
                if has_body {
                    wanted.push(("413", "the body is over 1 MiB (`payload_too_large`)"));
                }
                // (A form endpoint answers a body of another type with RFC 6749's 400.)
                if json_body {
                    wanted.push(("415", "the body is not of the declared content type (`unsupported_media_type`)"));
                }
                if json_body {
                    wanted.push((
                        "422",
                        "a field is missing or out of its documented range (`invalid_request`, `invalid_email`, ...)",
                    ));
                }
                if guessable {
                    wanted.push(("429", "too many attempts from this address or client; see `Retry-After` (`rate_limited`, `temporarily_unavailable`)"));
                }
                if !path.starts_with("/healthz") {
                    wanted.push(("503", "a database is unavailable or busy; see `Retry-After`"));
                }
                for (status, description) in wanted {
                    if op.responses.responses.contains_key(status) {
                        continue;
                    }
                    let mut r = ResponseBuilder::new().description(description);
                    if !page {
                        r = r.content(
                            "application/json",
                            ContentBuilder::new().schema(Some(Ref::from_schema_name(body_schema))).build(),
                        );
                    }
                    op.responses.responses.insert(status.to_owned(), r.build().into());
                }
            }
        }
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
