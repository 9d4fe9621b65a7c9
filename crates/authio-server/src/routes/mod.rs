//! The route table.
pub mod api_keys;
pub mod auth;
pub mod config;
pub mod events;
pub mod health;
pub mod hosted;
pub mod manage;
pub mod mfa;
pub mod oidc;
pub mod orgs;
pub mod passwordless;
pub mod registration;
pub mod scim;
pub mod users;
pub mod webhooks;

use axum::http::StatusCode;
use axum::routing::{get, post};

use crate::{context, ApiError, AppState};

pub fn router(state: AppState) -> axum::Router {
    let api = axum::Router::new()
        .route("/v1/projects/{project_id}/users", get(users::list_users).post(users::create_user))
        .route("/v1/projects/{project_id}/api-keys", get(api_keys::list_api_keys).post(api_keys::create_api_key))
        .route("/v1/projects/{project_id}/api-keys/{id}", axum::routing::delete(api_keys::revoke_api_key))
        .route("/v1/projects/{project_id}/m2m-clients", get(manage::list_clients).post(manage::create_client))
        .route("/v1/projects/{project_id}/m2m-clients/{id}", axum::routing::delete(manage::revoke_client))
        .route("/v1/projects/{project_id}/users/{user_id}/sessions", get(manage::list_sessions))
        .route("/v1/projects/{project_id}/sessions/{session_id}", axum::routing::delete(manage::revoke_session))
        .route("/v1/projects/{project_id}/organizations", get(orgs::list_organizations).post(orgs::create_organization))
        .route(
            "/v1/projects/{project_id}/organizations/{id}",
            get(orgs::get_organization).patch(orgs::update_organization).delete(orgs::delete_organization),
        )
        .route("/v1/projects/{project_id}/organizations/{id}/members", get(orgs::list_members).post(orgs::add_member))
        .route(
            "/v1/projects/{project_id}/organizations/{org_id}/directories",
            get(scim::list_directories).post(scim::create_directory),
        )
        .route(
            "/v1/projects/{project_id}/organizations/{org_id}/directories/{id}",
            axum::routing::patch(scim::update_directory).delete(scim::delete_directory),
        )
        .route(
            "/v1/projects/{project_id}/organizations/{org_id}/directories/{id}/token",
            post(scim::rotate_token).delete(scim::revoke_token),
        )
        .route(
            "/v1/projects/{project_id}/organizations/{id}/members/{user_id}",
            axum::routing::patch(orgs::update_member).delete(orgs::remove_member),
        )
        .route("/v1/projects/{project_id}/organizations/{id}/domains", get(orgs::list_domains).post(orgs::add_domain))
        .route(
            "/v1/projects/{project_id}/organizations/{id}/domains/{domain_id}",
            axum::routing::delete(orgs::delete_domain),
        )
        .route("/v1/projects/{project_id}/organizations/{id}/domains/{domain_id}/verify", post(orgs::verify_domain))
        .route(
            "/v1/projects/{project_id}/organizations/{id}/invitations",
            get(orgs::list_invitations).post(orgs::create_invitation),
        )
        .route(
            "/v1/projects/{project_id}/organizations/{id}/invitations/{invitation_id}",
            axum::routing::delete(orgs::revoke_invitation),
        )
        .route(
            "/v1/projects/{project_id}/organizations/{id}/invitations/{invitation_id}/resend",
            post(orgs::resend_invitation),
        )
        .route("/v1/projects/{project_id}/users/{user_id}/impersonate", post(users::impersonate))
        .route("/v1/projects/{project_id}/users/{user_id}/mfa-factors", get(mfa::user_factors))
        .route(
            "/v1/projects/{project_id}/users/{user_id}/mfa-factors/{id}",
            axum::routing::delete(mfa::remove_user_factor),
        )
        .route("/v1/projects/{project_id}/events", get(events::list_events))
        .route("/v1/projects/{project_id}/webhooks", get(webhooks::list_endpoints).post(webhooks::create_endpoint))
        .route(
            "/v1/projects/{project_id}/webhooks/{id}",
            axum::routing::patch(webhooks::update_endpoint).delete(webhooks::delete_endpoint),
        )
        .route("/v1/projects/{project_id}/webhooks/{id}/rotate-secret", post(webhooks::rotate_secret))
        .route("/v1/projects/{project_id}/webhooks/{id}/replay", post(webhooks::replay))
        .route("/v1/projects/{project_id}/webhooks/{id}/deliveries", get(webhooks::list_deliveries))
        .route("/v1/projects/{project_id}/roles", get(orgs::list_roles).post(orgs::create_role))
        .route(
            "/v1/projects/{project_id}/roles/{id}",
            axum::routing::patch(orgs::update_role).delete(orgs::delete_role),
        )
        .route("/v1/projects/{project_id}/permissions", get(orgs::list_permissions).post(orgs::define_permission))
        .route("/v1/projects/{project_id}/permissions/{slug}", axum::routing::delete(orgs::delete_permission))
        .route("/v1/projects/{project_id}/settings", get(manage::get_settings).patch(manage::update_settings))
        .route("/v1/projects/{project_id}/audit-events", get(manage::list_audit_events))
        .route("/v1/projects/{project_id}/audit-events/export", get(manage::export_audit_events))
        .route(
            "/v1/projects/{project_id}/redirect-uris",
            get(config::list_redirect_uris).post(config::add_redirect_uri).delete(config::remove_redirect_uri),
        )
        .route(
            "/v1/projects/{project_id}/allowed-origins",
            get(config::list_origins).post(config::add_origin).delete(config::remove_origin),
        )
        .route("/v1/projects/{project_id}/domains", get(config::list_domains).post(config::add_domain))
        .route("/v1/projects/{project_id}/domains/{id}", axum::routing::delete(config::delete_domain))
        .route("/v1/projects/{project_id}/domains/{id}/verify", post(config::verify_domain))
        .route(
            "/v1/projects/{project_id}/oauth-connections",
            get(config::list_connections).post(config::create_connection),
        )
        .route(
            "/v1/projects/{project_id}/oauth-connections/{id}",
            get(config::get_connection).patch(config::update_connection).delete(config::delete_connection),
        )
        .route("/v1/projects/{project_id}/saml-connections", post(config::create_saml_connection))
        .route(
            "/v1/projects/{project_id}/presentation",
            get(config::get_presentation).patch(config::update_presentation),
        )
        .route("/v1/projects/{project_id}/email-templates/{kind}", axum::routing::put(config::set_template))
        .route("/v1/projects/{project_id}/oidc-clients", get(oidc::list_clients).post(oidc::create_client))
        .route("/v1/projects/{project_id}/oidc-clients/{id}", axum::routing::delete(oidc::revoke_client))
        .route(
            "/v1/projects/{project_id}/oidc-clients/{id}/block",
            post(registration::block_client).delete(registration::unblock_client),
        )
        .route(
            "/v1/projects/{project_id}/resources",
            get(registration::list_resources).post(registration::create_resource),
        )
        .route("/v1/projects/{project_id}/resources/{id}", axum::routing::delete(registration::delete_resource))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), context::require_management));
    let auth = axum::Router::new()
        .route("/v1/auth/signup", post(auth::sign_up))
        .route("/v1/auth/signin", post(auth::sign_in))
        .route("/v1/auth/token", post(auth::token))
        .route("/v1/auth/introspect", post(auth::introspect))
        .route("/v1/auth/revoke", post(auth::revoke))
        .route("/v1/auth/magic-link", post(passwordless::request_magic_link))
        .route("/v1/auth/magic-link/verify", post(passwordless::verify_magic_link))
        .route("/v1/auth/email-code", post(passwordless::request_email_code))
        .route("/v1/auth/email-code/verify", post(passwordless::verify_email_code))
        .route("/v1/auth/mfa/verify", post(mfa::verify))
        .route("/v1/auth/mfa/totp/enrol", post(mfa::enrol_totp))
        .route("/v1/auth/mfa/totp/confirm", post(mfa::confirm_totp))
        .route("/v1/me/mfa", get(mfa::my_factors))
        .route("/v1/me/mfa/totp", post(mfa::start_my_totp))
        .route("/v1/me/mfa/totp/{id}/confirm", post(mfa::confirm_my_totp))
        .route("/v1/me/mfa/factors/{id}", axum::routing::patch(mfa::rename_my_factor).delete(mfa::remove_my_factor))
        .route("/v1/me/mfa/recovery-codes", post(mfa::regenerate_my_codes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), passwordless::cors))
        .route("/p/{project_id}/.well-known/jwks.json", get(auth::jwks));
    let hosted = axum::Router::new()
        .route("/p/{project_id}/signin", get(hosted::signin_page).post(hosted::password_post))
        .route("/p/{project_id}/signup", get(hosted::signin_page).post(hosted::password_post))
        .route("/p/{project_id}/mfa", get(hosted::mfa::challenge_page).post(hosted::mfa::challenge_post))
        .route("/p/{project_id}/mfa/enrol", get(hosted::mfa::enrol_page).post(hosted::mfa::enrol_post))
        .route("/p/{project_id}/mfa/continue", post(hosted::mfa::continue_post))
        .route("/p/{project_id}/mfa/webauthn/options", post(hosted::mfa::webauthn_options))
        .route("/p/{project_id}/mfa/webauthn", post(hosted::mfa::webauthn_post))
        .route("/p/{project_id}/passkey/options", post(hosted::mfa::passkey_options))
        .route("/p/{project_id}/passkey", post(hosted::mfa::passkey_post))
        .route("/p/{project_id}/account/security", get(hosted::mfa::security_page))
        .route("/p/{project_id}/account/security/done", post(hosted::mfa::security_done))
        .route(
            "/p/{project_id}/account/security/totp",
            get(hosted::mfa::security_totp_page).post(hosted::mfa::security_totp_post),
        )
        .route("/p/{project_id}/account/security/recovery-codes", post(hosted::mfa::security_codes_post))
        .route("/p/{project_id}/account/security/factors/{id}/{act}", post(hosted::mfa::security_factor_post))
        .route("/p/{project_id}/account/security/webauthn/options", post(hosted::mfa::security_webauthn_options))
        .route("/p/{project_id}/account/security/webauthn", post(hosted::mfa::security_webauthn_post))
        .route("/p/{project_id}/magic-link", post(hosted::magic_link_post))
        .route("/p/{project_id}/magic", get(hosted::magic_page).post(hosted::magic_post))
        .route("/p/{project_id}/code", post(hosted::code_post))
        .route("/p/{project_id}/code/verify", post(hosted::code_verify_post))
        .route("/p/{project_id}/oauth/{slug}", get(hosted::oauth_start))
        .route("/p/{project_id}/sso", post(hosted::sso_post))
        .route("/p/{project_id}/saml/{connection_id}/metadata", get(hosted::saml_metadata))
        .route("/p/{project_id}/saml/{connection_id}/acs", post(hosted::saml_acs))
        .route("/p/{project_id}/saml/{connection_id}/confirm", post(hosted::saml_confirm))
        .route("/p/{project_id}/reset", get(hosted::reset_page).post(hosted::reset_post))
        .route("/p/{project_id}/reset/confirm", get(hosted::reset_confirm_page).post(hosted::reset_confirm_post))
        .route("/p/{project_id}/verify-email", get(hosted::verify_email_page).post(hosted::verify_email_post))
        .route("/p/{project_id}/invitations/accept", get(hosted::invitation_page).post(hosted::invitation_post))
        .route(
            "/p/{project_id}/organizations/select",
            get(hosted::organization_picker).post(hosted::organization_picked),
        )
        .route("/oauth/callback", get(hosted::oauth_callback))
        .route("/dev/mailbox", get(hosted::dev_mailbox))
        .route("/p/{project_id}/.well-known/openid-configuration", get(oidc::discovery))
        .route("/.well-known/oauth-authorization-server/p/{project_id}", get(oidc::authorization_server_metadata))
        .route("/p/{project_id}/oauth2/authorize", get(oidc::authorize))
        .route("/p/{project_id}/oauth2/token", post(oidc::token))
        .route("/p/{project_id}/oauth2/register", post(registration::register))
        .route(
            "/p/{project_id}/oauth2/register/{client_id}",
            get(registration::read_registration).delete(registration::delete_registration),
        )
        .route("/p/{project_id}/consent", get(hosted::consent::consent_page).post(hosted::consent::consent_post))
        .route("/p/{project_id}/account/apps", get(hosted::consent::apps_page))
        .route("/p/{project_id}/account/apps/{id}/revoke", post(hosted::consent::revoke_post))
        .route("/p/{project_id}/oauth2/userinfo", get(oidc::userinfo).post(oidc::userinfo_post))
        .route("/p/{project_id}/oauth2/revoke", post(oidc::revoke))
        .route("/p/{project_id}/oauth2/introspect", post(oidc::introspect))
        .route("/p/{project_id}/oauth2/logout", get(oidc::logout));
    // SCIM answers in its own shapes only, including for paths and methods it does not have.
    let scim_routes = axum::Router::new()
        .route("/ServiceProviderConfig", get(scim::service_provider_config))
        .route("/ResourceTypes", get(scim::resource_types))
        .route("/ResourceTypes/{id}", get(scim::resource_type))
        .route("/Schemas", get(scim::schemas))
        .route("/Schemas/{id}", get(scim::schema))
        .route("/Users", get(scim::list_users).post(scim::create_user))
        .route(
            "/Users/{id}",
            get(scim::get_user).put(scim::replace_user).patch(scim::patch_user).delete(scim::delete_user),
        )
        .route("/Groups", get(scim::list_groups).post(scim::create_group))
        .route(
            "/Groups/{id}",
            get(scim::get_group).put(scim::replace_group).patch(scim::patch_group).delete(scim::delete_group),
        )
        .route("/.search", post(scim::search_not_implemented))
        .route("/Users/.search", post(scim::search_not_implemented))
        .route("/Groups/.search", post(scim::search_not_implemented))
        .fallback(scim::not_found)
        .method_not_allowed_fallback(scim::not_allowed);
    axum::Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(health::openapi_json))
        .route("/docs", get(health::docs))
        .merge(api)
        .merge(auth)
        .merge(hosted)
        .nest("/scim/v2/{directory}", scim_routes)
        .merge(crate::console::routes(state.clone()))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(state)
}
