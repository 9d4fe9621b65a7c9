//! A project's sign-in configuration over the management API: redirect URIs, allowed
//! origins, custom domains, upstream providers, presentation and email templates.
use authio_core::authz::Permission;
use authio_core::federation::upstream::{ConnectionInfo, NewConnection};
use authio_core::project::config::{self as config, DomainInfo, PresentationPatch, PresentationSettings};
use authio_core::project::mail::{MailKind, Template};
use authio_core::types::{DomainName, RedirectUri, WebOrigin};
use authio_core::CoreError;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::extract::json_body;
use crate::routes::auth::client_info;
use crate::{ApiError, AppState, RequestContext};

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UriBody {
    pub uri: String,
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OriginBody {
    pub origin: String,
}

#[derive(Serialize, ToSchema)]
pub struct StringList {
    pub data: Vec<String>,
}

fn invalid(e: authio_core::types::ValidationError) -> ApiError {
    CoreError::from(e).into()
}

/// The project's redirect URIs (exact match; no wildcards).
#[utoipa::path(get, path = "/v1/projects/{project_id}/redirect-uris", tag = "sign-in config",
    params(("project_id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 200, body = StringList)))]
pub async fn list_redirect_uris(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
) -> Result<Json<StringList>, ApiError> {
    let auth = ctx.authorize(Permission::ProjectRead)?;
    Ok(Json(StringList { data: config::list_redirect_uris(&state.router, &auth).await? }))
}

/// Register a redirect URI: absolute https (http only on localhost), no fragment, no `*`.
#[utoipa::path(post, path = "/v1/projects/{project_id}/redirect-uris", tag = "sign-in config",
    params(("project_id" = Uuid, Path)), request_body = UriBody, security(("project_api_key" = [])),
    responses((status = 201, body = UriBody), (status = 409, description = "`conflict`"), (status = 422, description = "`invalid_request`")))]
pub async fn add_redirect_uri(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<UriBody>), ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let req: UriBody = json_body(&headers, &body)?;
    let uri = RedirectUri::parse(&req.uri).map_err(invalid)?;
    let client = client_info(&headers, None);
    config::add_redirect_uri(&state.router, state.clock.as_ref(), &auth, &uri, &client).await?;
    Ok((StatusCode::CREATED, Json(req)))
}

#[derive(Deserialize)]
pub struct UriQuery {
    uri: Option<String>,
    origin: Option<String>,
}

/// Remove a redirect URI (`?uri=`).
#[utoipa::path(delete, path = "/v1/projects/{project_id}/redirect-uris", tag = "sign-in config",
    params(("project_id" = Uuid, Path), ("uri" = String, Query)), security(("project_api_key" = [])),
    responses((status = 204), (status = 404, description = "`redirect_uri_not_found`")))]
pub async fn remove_redirect_uri(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    Query(q): Query<UriQuery>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let uri = q.uri.ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", "uri is required"))?;
    let client = client_info(&headers, None);
    config::remove_redirect_uri(&state.router, state.clock.as_ref(), &auth, &uri, &client).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The origins whose browser code may call the project's sign-in endpoints (CORS).
#[utoipa::path(get, path = "/v1/projects/{project_id}/allowed-origins", tag = "sign-in config",
    params(("project_id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 200, body = StringList)))]
pub async fn list_origins(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
) -> Result<Json<StringList>, ApiError> {
    let auth = ctx.authorize(Permission::ProjectRead)?;
    Ok(Json(StringList { data: config::list_origins(&state.router, &auth).await? }))
}

/// Allow an origin (`https://app.example.com`; http only on localhost).
#[utoipa::path(post, path = "/v1/projects/{project_id}/allowed-origins", tag = "sign-in config",
    params(("project_id" = Uuid, Path)), request_body = OriginBody, security(("project_api_key" = [])),
    responses((status = 201, body = OriginBody), (status = 409, description = "`conflict`"), (status = 422, description = "`invalid_request`")))]
pub async fn add_origin(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<OriginBody>), ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let req: OriginBody = json_body(&headers, &body)?;
    let origin = WebOrigin::parse(&req.origin).map_err(invalid)?;
    let client = client_info(&headers, None);
    config::add_origin(&state.router, state.clock.as_ref(), &auth, &origin, &client).await?;
    Ok((StatusCode::CREATED, Json(req)))
}

/// Remove an allowed origin (`?origin=`).
#[utoipa::path(delete, path = "/v1/projects/{project_id}/allowed-origins", tag = "sign-in config",
    params(("project_id" = Uuid, Path), ("origin" = String, Query)), security(("project_api_key" = [])),
    responses((status = 204), (status = 404, description = "`origin_not_found`")))]
pub async fn remove_origin(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    Query(q): Query<UriQuery>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let origin =
        q.origin.ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", "origin is required"))?;
    let client = client_info(&headers, None);
    config::remove_origin(&state.router, state.clock.as_ref(), &auth, &origin, &client).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DomainBody {
    pub host: String,
}

#[derive(Serialize, ToSchema)]
pub struct DomainResponse {
    pub id: Uuid,
    pub host: String,
    /// Live: requests for this host reach the project.
    pub verified: bool,
    pub verified_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Publish a TXT record here, with `txt_value`, then call verify.
    pub txt_name: String,
    pub txt_value: String,
}

impl From<DomainInfo> for DomainResponse {
    fn from(d: DomainInfo) -> Self {
        DomainResponse {
            id: d.id,
            host: d.host,
            verified: d.verified,
            verified_at: d.verified_at,
            txt_name: d.txt_name,
            txt_value: d.txt_value,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DomainList {
    pub data: Vec<DomainResponse>,
}

/// The project's custom domains and their verification state.
#[utoipa::path(get, path = "/v1/projects/{project_id}/domains", tag = "sign-in config",
    params(("project_id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 200, body = DomainList)))]
pub async fn list_domains(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
) -> Result<Json<DomainList>, ApiError> {
    let auth = ctx.authorize(Permission::ProjectRead)?;
    let list = config::list_domains(&state.router, &auth).await?;
    Ok(Json(DomainList { data: list.into_iter().map(Into::into).collect() }))
}

/// Add a custom domain: it answers once its TXT record is verified.
#[utoipa::path(post, path = "/v1/projects/{project_id}/domains", tag = "sign-in config",
    params(("project_id" = Uuid, Path)), request_body = DomainBody, security(("project_api_key" = [])),
    responses((status = 201, body = DomainResponse), (status = 409, description = "`conflict`: registered already")))]
pub async fn add_domain(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<DomainResponse>), ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let req: DomainBody = json_body(&headers, &body)?;
    let host = DomainName::parse(&req.host).map_err(invalid)?;
    let client = client_info(&headers, None);
    let d = config::add_domain(&state.router, state.clock.as_ref(), &auth, &host, &client).await?;
    Ok((StatusCode::CREATED, Json(d.into())))
}

fn path_uuid(raw: &str, code: &'static str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(code, &format!("{what} not found")))
}

/// Look for the domain's TXT record now.
#[utoipa::path(post, path = "/v1/projects/{project_id}/domains/{id}/verify", tag = "sign-in config",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 200, body = DomainResponse), (status = 409, description = "`domain_not_verified`: the record is not there (yet)")))]
pub async fn verify_domain(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<DomainResponse>, ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let id = path_uuid(&id, "domain_not_found", "domain")?;
    let client = client_info(&headers, None);
    let d = config::verify_domain(&state.router, state.clock.as_ref(), &auth, id, state.dns.as_ref(), &client).await?;
    Ok(Json(d.into()))
}

/// Remove a custom domain (it stops answering at once).
#[utoipa::path(delete, path = "/v1/projects/{project_id}/domains/{id}", tag = "sign-in config",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 204), (status = 404, description = "`domain_not_found`")))]
pub async fn delete_domain(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let id = path_uuid(&id, "domain_not_found", "domain")?;
    let client = client_info(&headers, None);
    config::delete_domain(&state.router, state.clock.as_ref(), &auth, id, &client).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct ConnectionList {
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<ConnectionInfo>,
}

/// The project's upstream providers (never their secrets).
#[utoipa::path(get, path = "/v1/projects/{project_id}/oauth-connections", tag = "sign-in config",
    params(("project_id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 200, body = ConnectionList)))]
pub async fn list_connections(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
) -> Result<Json<ConnectionList>, ApiError> {
    let auth = ctx.authorize(Permission::ProjectRead)?;
    Ok(Json(ConnectionList { data: state.upstream.list_connections(&auth).await? }))
}

/// Add an upstream provider: `{"slug", "kind": "oidc|google|microsoft|github", "client_id",
/// "client_secret", "issuer"?, "scopes"?, "display_name"?, "organization_id"?, "group_roles"?}`.
/// OIDC endpoints come from discovery. The provider's redirect URI is `{base}/oauth/callback`.
/// With `organization_id`, it is that organization's single sign-on (reached by the domains it
/// verified; its users join it, with the role `group_roles` maps their `groups` claim to).
#[utoipa::path(post, path = "/v1/projects/{project_id}/oauth-connections", tag = "sign-in config",
    params(("project_id" = Uuid, Path)), security(("project_api_key" = [])),
    request_body(content = Object),
    responses((status = 201, body = Object), (status = 409, description = "`conflict`: slug taken"), (status = 502, description = "`upstream_error`: discovery failed")))]
pub async fn create_connection(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<ConnectionInfo>), ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let req: NewConnection = json_body(&headers, &body)?;
    let client = client_info(&headers, None);
    let c = state.upstream.create_connection(&auth, &req, &client).await?;
    Ok((StatusCode::CREATED, Json(c)))
}

/// Remove an upstream provider.
#[utoipa::path(delete, path = "/v1/projects/{project_id}/oauth-connections/{id}", tag = "sign-in config",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 204), (status = 404, description = "`connection_not_found`"),
        (status = 409, description = "`conflict`: the last connection of an organization that requires single sign-on")))]
pub async fn delete_connection(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let id = path_uuid(&id, "connection_not_found", "connection")?;
    let client = client_info(&headers, None);
    state.upstream.delete_connection(&auth, id, &client).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Add an organization's SAML 2.0 identity provider: `{"slug", "organization_id", and exactly
/// one of "idp_metadata_xml" | "idp_metadata_url" | ("idp_entity_id", "idp_sso_url",
/// "idp_certificates": [PEM or base64 DER, one or two]), "display_name"?, "group_roles"?,
/// "idp_initiated"? (default false), "attribute_preset"? ("generic" | "okta" | "entra" |
/// "google"), "attribute_map"? ({"email", "given_name", "family_name", "groups"}: lists of
/// attribute names)}`. The answer's `saml` gives what the identity provider is configured
/// with: `sp_entity_id` (also our metadata's URL), `acs_url` and `sp_certificate`.
#[utoipa::path(post, path = "/v1/projects/{project_id}/saml-connections", tag = "sign-in config",
    params(("project_id" = Uuid, Path)), security(("project_api_key" = [])),
    request_body(content = Object),
    responses((status = 201, body = Object), (status = 404, description = "`organization_not_found`, `role_not_found`"),
        (status = 409, description = "`conflict`: slug taken"),
        (status = 502, description = "`upstream_error`: the metadata URL could not be read")))]
pub async fn create_saml_connection(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<ConnectionInfo>), ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let req: authio_core::federation::sso::NewSamlConnection = json_body(&headers, &body)?;
    let client = client_info(&headers, None);
    let c = state.upstream.create_saml_connection(&auth, &req, &state.public_url, &client).await?;
    Ok((StatusCode::CREATED, Json(c)))
}

/// One connection (never its secret or private key).
#[utoipa::path(get, path = "/v1/projects/{project_id}/oauth-connections/{id}", tag = "sign-in config",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 200, body = Object), (status = 404, description = "`connection_not_found`")))]
pub async fn get_connection(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
) -> Result<Json<ConnectionInfo>, ApiError> {
    let auth = ctx.authorize(Permission::ProjectRead)?;
    let id = path_uuid(&id, "connection_not_found", "connection")?;
    Ok(Json(state.upstream.get_connection(&auth, id).await?))
}

/// Change a connection: `{"enabled"?, "display_name"?, "group_roles"?}` for any kind; for SAML
/// also `"idp_certificates"?` (list the old and the new certificate during a rollover, then the
/// new one), `"idp_metadata_xml"?` or `"idp_metadata_url"?` (read again: certificates and SSO
/// URL), `"idp_initiated"?`, `"attribute_map"?`.
#[utoipa::path(patch, path = "/v1/projects/{project_id}/oauth-connections/{id}", tag = "sign-in config",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    request_body(content = Object),
    responses((status = 200, body = Object), (status = 404, description = "`connection_not_found`, `role_not_found`"),
        (status = 409, description = "`conflict`: turning off the last connection of an organization that requires single sign-on"),
        (status = 502, description = "`upstream_error`: the metadata URL could not be read")))]
pub async fn update_connection(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ConnectionInfo>, ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let id = path_uuid(&id, "connection_not_found", "connection")?;
    let req: authio_core::federation::sso::ConnectionUpdate = json_body(&headers, &body)?;
    let client = client_info(&headers, None);
    Ok(Json(state.upstream.update_connection(&auth, id, &req, &client).await?))
}

#[derive(Serialize, ToSchema)]
pub struct PresentationBody {
    pub environment: String,
    pub display_name: Option<String>,
    pub logo_url: Option<String>,
    pub brand_color: String,
    pub email_sender_name: Option<String>,
    pub signin_methods: Vec<String>,
    /// `open`, `invite_only` or `domains`.
    pub signup_policy: String,
    pub signup_domains: Vec<String>,
    /// `optional` or `required` (every user signs in with a second factor).
    pub mfa_policy: String,
    /// RFC 7591 dynamic registration at `{issuer}/oauth2/register`.
    pub dynamic_registration: bool,
    /// Clients named by their Client ID Metadata Document's URL.
    pub metadata_document_clients: bool,
    /// Dynamic registrations may be confidential (a secret); off: public clients only.
    pub confidential_registration: bool,
}

impl From<PresentationSettings> for PresentationBody {
    fn from(p: PresentationSettings) -> Self {
        PresentationBody {
            environment: p.environment,
            display_name: p.display_name,
            logo_url: p.logo_url,
            brand_color: p.brand_color,
            email_sender_name: p.email_sender_name,
            signin_methods: p.signin_methods,
            signup_policy: p.signup_policy,
            signup_domains: p.signup_domains,
            mfa_policy: p.mfa_policy,
            dynamic_registration: p.dynamic_registration,
            metadata_document_clients: p.metadata_document_clients,
            confidential_registration: p.confidential_registration,
        }
    }
}

/// How the project's hosted pages and emails look, and which sign-in methods it offers.
#[utoipa::path(get, path = "/v1/projects/{project_id}/presentation", tag = "sign-in config",
    params(("project_id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 200, body = PresentationBody)))]
pub async fn get_presentation(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
) -> Result<Json<PresentationBody>, ApiError> {
    let auth = ctx.authorize(Permission::ProjectRead)?;
    Ok(Json(config::presentation(&state.router, &auth).await?.into()))
}

/// Change it: `environment` (production|development), `display_name`, `logo_url` (https),
/// `brand_color` (#rrggbb), `email_sender_name`, `signin_methods`, `signup_policy` (open,
/// invite_only, domains), `signup_domains` (with the `domains` policy), `mfa_policy`
/// (optional, required), and `dynamic_registration`, `metadata_document_clients`,
/// `confidential_registration` (clients nobody registered in advance: MCP clients, agents).
#[utoipa::path(patch, path = "/v1/projects/{project_id}/presentation", tag = "sign-in config",
    params(("project_id" = Uuid, Path)), security(("project_api_key" = [])), request_body(content = Object),
    responses((status = 200, body = PresentationBody), (status = 422, description = "`invalid_request`")))]
pub async fn update_presentation(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<PresentationBody>, ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let patch: PresentationPatch = json_body(&headers, &body)?;
    let client = client_info(&headers, None);
    let p = config::update_presentation(&state.router, state.clock.as_ref(), &auth, &patch, &client).await?;
    if let Some(project) = auth.scope()?.project_id {
        state.identity.forget_profile(project);
    }
    Ok(Json(p.into()))
}

/// Replace an email template (`magic_link`, `email_code`, `password_reset`,
/// `email_verification`): `{"subject", "text", "html"?}` with `{{project}}`, `{{link}}` or
/// `{{code}}`, `{{minutes}}`.
#[utoipa::path(put, path = "/v1/projects/{project_id}/email-templates/{kind}", tag = "sign-in config",
    params(("project_id" = Uuid, Path), ("kind" = String, Path)), security(("project_api_key" = [])),
    request_body(content = Object),
    responses((status = 204), (status = 422, description = "`invalid_request`")))]
pub async fn set_template(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, kind)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let kind = MailKind::parse(&kind).ok_or_else(|| ApiError::not_found("template_not_found", "no such template"))?;
    let template: Template = json_body(&headers, &body)?;
    let client = client_info(&headers, None);
    config::set_template(&state.router, state.clock.as_ref(), &auth, kind, &template, &client).await?;
    Ok(StatusCode::NO_CONTENT)
}
