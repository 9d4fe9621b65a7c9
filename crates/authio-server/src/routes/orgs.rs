//! `/v1/projects/{project_id}/organizations`, `/roles` and `/permissions`: a project's
//! organizations, their members, and the roles and permissions it defines (project API key).
use authio_core::authz::Permission;
use authio_core::orgs;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::extract::json_body;
use crate::routes::auth::client_info;
use crate::{ApiError, AppState, RequestContext};

fn path_uuid(raw: &str, code: &'static str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(code, &format!("{what} not found")))
}

fn org_id(raw: &str) -> Result<Uuid, ApiError> {
    path_uuid(raw, "organization_not_found", "organization")
}

/// An organization (the project's own customer).
#[derive(Serialize, ToSchema)]
pub struct OrganizationBody {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub external_id: Option<String>,
    /// `invite_only`, or `auto_join`: a user with a verified email at one of its verified
    /// domains joins (with the default role) when a session switches into it.
    pub domain_policy: String,
    /// Its members, and addresses at its verified domains, sign in only through its single
    /// sign-on connection (password, email links and codes, and other providers are refused
    /// with `sso_required`).
    pub sso_required: bool,
    /// Its active members sign in with a second factor (enrolling one first if they have none).
    pub mfa_required: bool,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<orgs::Organization> for OrganizationBody {
    fn from(o: orgs::Organization) -> Self {
        OrganizationBody {
            id: o.id,
            slug: o.slug,
            name: o.name,
            external_id: o.external_id,
            domain_policy: o.domain_policy,
            sso_required: o.sso_required,
            mfa_required: o.mfa_required,
            metadata: o.metadata,
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}

/// `POST .../organizations`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewOrganizationBody {
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    /// Unique in the project.
    #[schema(pattern = "^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")]
    slug: String,
    /// Your own id for it; unique in the project.
    #[schema(min_length = 1, max_length = 200)]
    external_id: Option<String>,
    /// A JSON object of at most 16 KiB.
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Value>,
    #[schema(pattern = "^(invite_only|auto_join)$")]
    domain_policy: Option<String>,
    /// Needs an enabled single sign-on connection of the organization to turn on.
    sso_required: Option<bool>,
    /// Its active members must sign in with a second factor.
    mfa_required: Option<bool>,
}

/// `PATCH .../organizations/{id}`: absent fields stay; `external_id: null` clears it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct OrganizationPatchBody {
    #[schema(min_length = 1, max_length = 200)]
    name: Option<String>,
    #[schema(pattern = "^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")]
    slug: Option<String>,
    #[schema(min_length = 1, max_length = 200)]
    external_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Value>,
    #[schema(pattern = "^(invite_only|auto_join)$")]
    domain_policy: Option<String>,
    /// Needs an enabled single sign-on connection of the organization to turn on.
    sso_required: Option<bool>,
    /// Its active members must sign in with a second factor.
    mfa_required: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct OrganizationList {
    pub data: Vec<OrganizationBody>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_cursor: Option<Uuid>,
}

/// Create an organization.
#[utoipa::path(post, path = "/v1/projects/{project_id}/organizations", tag = "organizations",
    params(("project_id" = Uuid, Path)), security(("project_api_key" = [])), request_body = NewOrganizationBody,
    responses((status = 201, body = OrganizationBody),
              (status = 409, description = "the slug or external id is taken (`conflict`)", body = crate::error::ErrorBody)))]
pub async fn create_organization(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<OrganizationBody>), ApiError> {
    let auth = ctx.authorize(Permission::UsersManage)?;
    let new: orgs::NewOrganization = json_body(&headers, &body)?;
    let client = client_info(&headers, None);
    let org = orgs::create_organization(&state.router, state.clock.as_ref(), &auth, &new, &client).await?;
    Ok((StatusCode::CREATED, Json(org.into())))
}

/// List organizations in creation order, with cursor pagination and a name filter.
#[utoipa::path(get, path = "/v1/projects/{project_id}/organizations", tag = "organizations",
    params(("project_id" = Uuid, Path),
        ("limit" = Option<i64>, Query, description = "1-200, default 50", minimum = 1, maximum = 200),
        ("after" = Option<Uuid>, Query, description = "cursor from the previous page"),
        ("name" = Option<String>, Query, description = "a part of the name (case-insensitive)", max_length = 200),
        ("domain" = Option<String>, Query, description = "the organization that claimed this domain", max_length = 253)),
    security(("project_api_key" = [])),
    responses((status = 200, body = OrganizationList),
              (status = 400, description = "bad query (`invalid_query`)", body = crate::error::ErrorBody)))]
pub async fn list_organizations(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<OrganizationList>, ApiError> {
    let auth = ctx.authorize(Permission::UsersRead)?;
    let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", m);
    let (mut limit, mut after, mut name, mut domain) = (50i64, None, None, None);
    for (k, v) in url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "limit" => limit = v.parse().map_err(|_| bad("limit must be an integer"))?,
            "after" => after = Some(Uuid::parse_str(&v).map_err(|_| bad("after must be an organization id"))?),
            "name" if v.chars().count() <= 200 => name = Some(v.into_owned()),
            "name" => return Err(bad("name is at most 200 characters")),
            "domain" => {
                let d = authio_core::types::DomainName::parse(&v).map_err(|_| bad("domain must be a domain name"))?;
                domain = Some(d.as_str().to_owned());
            }
            _ => return Err(bad("unknown query parameter")),
        }
    }
    if !(1..=200).contains(&limit) {
        return Err(bad("limit must be between 1 and 200"));
    }
    let page = orgs::list_organizations(&state.router, &auth, limit, after, name.as_deref(), domain.as_deref()).await?;
    let next_cursor = if page.len() as i64 == limit { page.last().map(|o| o.id) } else { None };
    Ok(Json(OrganizationList { data: page.into_iter().map(Into::into).collect(), next_cursor }))
}

#[utoipa::path(get, path = "/v1/projects/{project_id}/organizations/{id}", tag = "organizations",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 200, body = OrganizationBody)))]
pub async fn get_organization(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
) -> Result<Json<OrganizationBody>, ApiError> {
    let auth = ctx.authorize(Permission::UsersRead)?;
    Ok(Json(orgs::get_organization(&state.router, &auth, org_id(&id)?).await?.into()))
}

/// Change an organization: `name`, `slug`, `external_id` (`null` clears it), `metadata`.
#[utoipa::path(patch, path = "/v1/projects/{project_id}/organizations/{id}", tag = "organizations",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    request_body = OrganizationPatchBody,
    responses((status = 200, body = OrganizationBody),
              (status = 409, description = "the slug or external id is taken, or `sso_required` without an enabled single sign-on connection (`conflict`)", body = crate::error::ErrorBody)))]
pub async fn update_organization(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<OrganizationBody>, ApiError> {
    let auth = ctx.authorize(Permission::UsersManage)?;
    let id = org_id(&id)?;
    let patch: orgs::OrganizationPatch = json_body(&headers, &body)?;
    let client = client_info(&headers, None);
    Ok(Json(orgs::update_organization(&state.router, state.clock.as_ref(), &auth, id, &patch, &client).await?.into()))
}

/// Delete an organization and its memberships.
#[utoipa::path(delete, path = "/v1/projects/{project_id}/organizations/{id}", tag = "organizations",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 204)))]
pub async fn delete_organization(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let auth = ctx.authorize(Permission::UsersManage)?;
    let id = org_id(&id)?;
    let client = client_info(&headers, None);
    orgs::delete_organization(&state.router, state.clock.as_ref(), &auth, id, &client).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A user's membership of an organization.
#[derive(Serialize, ToSchema)]
pub struct MembershipBody {
    pub organization_id: Uuid,
    pub user_id: Uuid,
    /// The role's slug.
    pub role: String,
    /// `active`, `invited` or `deactivated`.
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<orgs::Membership> for MembershipBody {
    fn from(m: orgs::Membership) -> Self {
        MembershipBody {
            organization_id: m.organization_id,
            user_id: m.user_id,
            role: m.role,
            status: m.status,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct MembershipList {
    pub data: Vec<MembershipBody>,
}

/// `POST .../members`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewMemberBody {
    user_id: Uuid,
    /// A role slug; absent, the project's default role.
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    role: Option<String>,
}

/// `PATCH .../members/{user_id}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MemberPatchBody {
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    role: Option<String>,
    #[schema(pattern = "^(active|deactivated)$")]
    status: Option<String>,
}

/// Add a user to an organization, with a role (or the default role).
#[utoipa::path(post, path = "/v1/projects/{project_id}/organizations/{id}/members", tag = "organizations",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    request_body = NewMemberBody,
    responses((status = 201, body = MembershipBody),
              (status = 409, description = "already a member (`conflict`)", body = crate::error::ErrorBody)))]
pub async fn add_member(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<MembershipBody>), ApiError> {
    let auth = ctx.authorize(Permission::UsersManage)?;
    let id = org_id(&id)?;
    let new: orgs::NewMember = json_body(&headers, &body)?;
    let client = client_info(&headers, None);
    let m = orgs::add_member(&state.router, state.clock.as_ref(), &auth, id, &new, &client).await?;
    Ok((StatusCode::CREATED, Json(m.into())))
}

#[utoipa::path(get, path = "/v1/projects/{project_id}/organizations/{id}/members", tag = "organizations",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 200, body = MembershipList)))]
pub async fn list_members(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
) -> Result<Json<MembershipList>, ApiError> {
    let auth = ctx.authorize(Permission::UsersRead)?;
    let page = orgs::list_members(&state.router, &auth, org_id(&id)?).await?;
    Ok(Json(MembershipList { data: page.into_iter().map(Into::into).collect() }))
}

/// Change a member's role or status; sessions see it at their next refresh.
#[utoipa::path(patch, path = "/v1/projects/{project_id}/organizations/{id}/members/{user_id}", tag = "organizations",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path), ("user_id" = Uuid, Path)),
    security(("project_api_key" = [])), request_body = MemberPatchBody,
    responses((status = 200, body = MembershipBody)))]
pub async fn update_member(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id, user)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<MembershipBody>, ApiError> {
    let auth = ctx.authorize(Permission::UsersManage)?;
    let (id, user) = (org_id(&id)?, path_uuid(&user, "membership_not_found", "membership")?);
    let patch: orgs::MemberPatch = json_body(&headers, &body)?;
    let client = client_info(&headers, None);
    Ok(Json(orgs::update_member(&state.router, state.clock.as_ref(), &auth, id, user, &patch, &client).await?.into()))
}

#[utoipa::path(delete, path = "/v1/projects/{project_id}/organizations/{id}/members/{user_id}", tag = "organizations",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path), ("user_id" = Uuid, Path)),
    security(("project_api_key" = [])), responses((status = 204)))]
pub async fn remove_member(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id, user)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let auth = ctx.authorize(Permission::UsersManage)?;
    let (id, user) = (org_id(&id)?, path_uuid(&user, "membership_not_found", "membership")?);
    let client = client_info(&headers, None);
    orgs::remove_member(&state.router, state.clock.as_ref(), &auth, id, user, &client).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A role the project defines.
#[derive(Serialize, ToSchema)]
pub struct RoleBody {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub permissions: Vec<String>,
    pub is_default: bool,
    /// Set for an organization's own role (assignable there only).
    pub organization_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<orgs::Role> for RoleBody {
    fn from(r: orgs::Role) -> Self {
        RoleBody {
            id: r.id,
            slug: r.slug,
            name: r.name,
            permissions: r.permissions,
            is_default: r.is_default,
            organization_id: r.organization_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct RoleList {
    pub data: Vec<RoleBody>,
}

/// `POST .../roles`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewRoleBody {
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    slug: String,
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// Defined permission slugs (up to 200).
    permissions: Option<Vec<String>>,
    /// The role new members get when none is named (one per project).
    is_default: Option<bool>,
    /// Make it this organization's own role: assignable only there, never the default.
    organization_id: Option<Uuid>,
}

/// `PATCH .../roles/{id}`: absent fields stay.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct RolePatchBody {
    #[schema(min_length = 1, max_length = 100)]
    name: Option<String>,
    permissions: Option<Vec<String>>,
    is_default: Option<bool>,
}

#[utoipa::path(post, path = "/v1/projects/{project_id}/roles", tag = "organizations",
    params(("project_id" = Uuid, Path)), security(("project_api_key" = [])), request_body = NewRoleBody,
    responses((status = 201, body = RoleBody),
              (status = 409, description = "the slug is taken (`conflict`)", body = crate::error::ErrorBody),
              (status = 422, description = "a field, or a permission not defined (`undefined_permission`)", body = crate::error::ErrorBody)))]
pub async fn create_role(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<RoleBody>), ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let new: orgs::NewRole = json_body(&headers, &body)?;
    let client = client_info(&headers, None);
    let role = orgs::create_role(&state.router, state.clock.as_ref(), &auth, &new, &client).await?;
    Ok((StatusCode::CREATED, Json(role.into())))
}

/// The project's roles; with `organization_id`, the ones assignable in that organization
/// (project-wide roles and its own).
#[utoipa::path(get, path = "/v1/projects/{project_id}/roles", tag = "organizations",
    params(("project_id" = Uuid, Path),
        ("organization_id" = Option<Uuid>, Query, description = "only roles assignable in this organization")),
    security(("project_api_key" = [])),
    responses((status = 200, body = RoleList),
              (status = 400, description = "bad query (`invalid_query`)", body = crate::error::ErrorBody)))]
pub async fn list_roles(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<RoleList>, ApiError> {
    let auth = ctx.authorize(Permission::ProjectRead)?;
    let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", m);
    let mut org = None;
    for (k, v) in url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "organization_id" => {
                org = Some(Uuid::parse_str(&v).map_err(|_| bad("organization_id must be an organization id"))?)
            }
            _ => return Err(bad("unknown query parameter")),
        }
    }
    let roles = orgs::list_roles(&state.router, &auth, org).await?;
    Ok(Json(RoleList { data: roles.into_iter().map(Into::into).collect() }))
}

/// Change a role's `name`, `permissions` or `is_default`; members see it at their next refresh.
#[utoipa::path(patch, path = "/v1/projects/{project_id}/roles/{id}", tag = "organizations",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    request_body = RolePatchBody,
    responses((status = 200, body = RoleBody),
              (status = 422, description = "a field, or a permission not defined (`undefined_permission`)", body = crate::error::ErrorBody)))]
pub async fn update_role(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RoleBody>, ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let id = path_uuid(&id, "role_not_found", "role")?;
    let patch: orgs::RolePatch = json_body(&headers, &body)?;
    let client = client_info(&headers, None);
    Ok(Json(orgs::update_role(&state.router, state.clock.as_ref(), &auth, id, &patch, &client).await?.into()))
}

/// Delete a role: refused while members have it.
#[utoipa::path(delete, path = "/v1/projects/{project_id}/roles/{id}", tag = "organizations",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 204), (status = 409, description = "members have it (`role_in_use`)", body = crate::error::ErrorBody)))]
pub async fn delete_role(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let id = path_uuid(&id, "role_not_found", "role")?;
    let client = client_info(&headers, None);
    orgs::delete_role(&state.router, state.clock.as_ref(), &auth, id, &client).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A permission the project defines.
#[derive(Serialize, ToSchema)]
pub struct PermissionBody {
    pub slug: String,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct PermissionList {
    pub data: Vec<PermissionBody>,
}

/// `POST .../permissions`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewPermissionBody {
    #[schema(pattern = "^[a-z0-9][a-z0-9:._-]{0,62}$")]
    slug: String,
    #[schema(min_length = 1, max_length = 500)]
    description: Option<String>,
}

#[utoipa::path(post, path = "/v1/projects/{project_id}/permissions", tag = "organizations",
    params(("project_id" = Uuid, Path)), security(("project_api_key" = [])), request_body = NewPermissionBody,
    responses((status = 201, body = PermissionBody),
              (status = 409, description = "defined already (`conflict`)", body = crate::error::ErrorBody)))]
pub async fn define_permission(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<PermissionBody>), ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    let new: orgs::NewPermission = json_body(&headers, &body)?;
    let client = client_info(&headers, None);
    let p = orgs::define_permission(&state.router, state.clock.as_ref(), &auth, &new, &client).await?;
    Ok((
        StatusCode::CREATED,
        Json(PermissionBody { slug: p.slug, description: p.description, created_at: p.created_at }),
    ))
}

#[utoipa::path(get, path = "/v1/projects/{project_id}/permissions", tag = "organizations",
    params(("project_id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 200, body = PermissionList)))]
pub async fn list_permissions(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path(_project_id): Path<String>,
) -> Result<Json<PermissionList>, ApiError> {
    let auth = ctx.authorize(Permission::ProjectRead)?;
    let list = orgs::list_permissions(&state.router, &auth).await?;
    let data = list
        .into_iter()
        .map(|p| PermissionBody { slug: p.slug, description: p.description, created_at: p.created_at })
        .collect();
    Ok(Json(PermissionList { data }))
}

/// Delete a permission: refused while a role grants it.
#[utoipa::path(delete, path = "/v1/projects/{project_id}/permissions/{slug}", tag = "organizations",
    params(("project_id" = Uuid, Path), ("slug" = String, Path)), security(("project_api_key" = [])),
    responses((status = 204), (status = 409, description = "a role grants it (`conflict`)", body = crate::error::ErrorBody)))]
pub async fn delete_permission(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, slug)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let auth = ctx.authorize(Permission::ProjectConfigure)?;
    if !orgs::permission_slug_ok(&slug) {
        return Err(ApiError::not_found("permission_not_found", "permission not found"));
    }
    let client = client_info(&headers, None);
    orgs::delete_permission(&state.router, state.clock.as_ref(), &auth, &slug, &client).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An organization's email domain, and the TXT record that proves it.
#[derive(Serialize, ToSchema)]
pub struct OrgDomainBody {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub domain: String,
    pub verified: bool,
    pub verified_at: Option<DateTime<Utc>>,
    /// Publish a TXT record at this name ...
    pub txt_name: String,
    /// ... with this value, then ask for verification.
    pub txt_value: String,
    pub created_at: DateTime<Utc>,
}

impl From<orgs::OrgDomain> for OrgDomainBody {
    fn from(d: orgs::OrgDomain) -> Self {
        OrgDomainBody {
            id: d.id,
            organization_id: d.organization_id,
            domain: d.domain,
            verified: d.verified,
            verified_at: d.verified_at,
            txt_name: d.txt_name,
            txt_value: d.txt_value,
            created_at: d.created_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct OrgDomainList {
    pub data: Vec<OrgDomainBody>,
}

/// `POST .../domains`.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrgDomainBody {
    /// A host name such as `initech.com`.
    #[schema(min_length = 3, max_length = 253)]
    domain: String,
}

/// Claim an email domain for the organization (one organization per domain in a project).
#[utoipa::path(post, path = "/v1/projects/{project_id}/organizations/{id}/domains", tag = "organizations",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    request_body = NewOrgDomainBody,
    responses((status = 201, body = OrgDomainBody),
              (status = 409, description = "another organization of the project has it (`conflict`)", body = crate::error::ErrorBody)))]
pub async fn add_domain(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<OrgDomainBody>), ApiError> {
    let auth = ctx.authorize(Permission::UsersManage)?;
    let id = org_id(&id)?;
    let new: NewOrgDomainBody = json_body(&headers, &body)?;
    let domain = authio_core::types::DomainName::parse(&new.domain).map_err(authio_core::CoreError::from)?;
    let client = client_info(&headers, None);
    let d = orgs::add_domain(&state.router, state.clock.as_ref(), &auth, id, &domain, &client).await?;
    Ok((StatusCode::CREATED, Json(d.into())))
}

#[utoipa::path(get, path = "/v1/projects/{project_id}/organizations/{id}/domains", tag = "organizations",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 200, body = OrgDomainList)))]
pub async fn list_domains(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
) -> Result<Json<OrgDomainList>, ApiError> {
    let auth = ctx.authorize(Permission::UsersRead)?;
    let list = orgs::list_domains(&state.router, &auth, org_id(&id)?).await?;
    Ok(Json(OrgDomainList { data: list.into_iter().map(Into::into).collect() }))
}

/// Look for the domain's TXT record now.
#[utoipa::path(post, path = "/v1/projects/{project_id}/organizations/{id}/domains/{domain_id}/verify", tag = "organizations",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path), ("domain_id" = Uuid, Path)),
    security(("project_api_key" = [])),
    responses((status = 200, body = OrgDomainBody),
              (status = 409, description = "the record is not there (yet) (`domain_not_verified`)", body = crate::error::ErrorBody),
              (status = 502, description = "DNS could not be asked (`upstream_error`)", body = crate::error::ErrorBody)))]
pub async fn verify_domain(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id, domain_id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<OrgDomainBody>, ApiError> {
    let auth = ctx.authorize(Permission::UsersManage)?;
    let (id, domain_id) = (org_id(&id)?, path_uuid(&domain_id, "domain_not_found", "domain")?);
    let client = client_info(&headers, None);
    let d = orgs::verify_domain(&state.router, state.clock.as_ref(), &auth, id, domain_id, state.dns.as_ref(), &client)
        .await?;
    Ok(Json(d.into()))
}

#[utoipa::path(delete, path = "/v1/projects/{project_id}/organizations/{id}/domains/{domain_id}", tag = "organizations",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path), ("domain_id" = Uuid, Path)),
    security(("project_api_key" = [])), responses((status = 204)))]
pub async fn delete_domain(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id, domain_id)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let auth = ctx.authorize(Permission::UsersManage)?;
    let (id, domain_id) = (org_id(&id)?, path_uuid(&domain_id, "domain_not_found", "domain")?);
    let client = client_info(&headers, None);
    orgs::delete_domain(&state.router, state.clock.as_ref(), &auth, id, domain_id, &client).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An invitation to an organization.
#[derive(Serialize, ToSchema)]
pub struct InvitationBody {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub email: String,
    /// The role's slug.
    pub role: String,
    /// `pending`, `accepted`, `revoked` or `expired`.
    pub status: String,
    /// Who invited (`kind:id`).
    pub inviter: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// How many times its email was sent (resends included).
    pub sent_count: i32,
    pub last_sent_at: DateTime<Utc>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub accepted_by: Option<Uuid>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<orgs::invitations::Invitation> for InvitationBody {
    fn from(i: orgs::invitations::Invitation) -> Self {
        InvitationBody {
            id: i.id,
            organization_id: i.organization_id,
            email: i.email,
            role: i.role,
            status: i.status,
            inviter: i.inviter,
            created_at: i.created_at,
            expires_at: i.expires_at,
            sent_count: i.sent_count,
            last_sent_at: i.last_sent_at,
            accepted_at: i.accepted_at,
            accepted_by: i.accepted_by,
            revoked_at: i.revoked_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct InvitationList {
    pub data: Vec<InvitationBody>,
}

/// `POST .../invitations`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewInvitationBody {
    #[schema(format = "email", min_length = 3, max_length = 254)]
    email: String,
    /// A role slug (project-wide or the organization's own); absent, the default role.
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    role: Option<String>,
    /// How long the link works: 1-30 days, 7 by default.
    #[schema(minimum = 1, maximum = 30)]
    expires_in_days: Option<i64>,
}

/// `POST .../invitations/{invitation_id}/resend`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResendBody {
    /// 1-30 days from now, 7 by default.
    #[schema(minimum = 1, maximum = 30)]
    pub expires_in_days: Option<i64>,
}

fn invitation_id(raw: &str) -> Result<Uuid, ApiError> {
    path_uuid(raw, "invitation_not_found", "invitation")
}

/// Invite an email address to an organization: the invitation email goes out through the
/// outbox with a single-use link to the hosted accept page.
#[utoipa::path(post, path = "/v1/projects/{project_id}/organizations/{id}/invitations", tag = "organizations",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    request_body = NewInvitationBody,
    responses((status = 201, body = InvitationBody),
              (status = 409, description = "an active member already, or a pending invitation exists (`conflict`)", body = crate::error::ErrorBody)))]
pub async fn create_invitation(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<InvitationBody>), ApiError> {
    let auth = ctx.authorize(Permission::UsersManage)?;
    let id = org_id(&id)?;
    let new: orgs::invitations::NewInvitation = json_body(&headers, &body)?;
    let client = client_info(&headers, None);
    let (inv, _token) = state.identity.invite(&auth, id, &new, &client).await?;
    Ok((StatusCode::CREATED, Json(inv.into())))
}

/// An organization's invitations, newest first (at most 500).
#[utoipa::path(get, path = "/v1/projects/{project_id}/organizations/{id}/invitations", tag = "organizations",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path)), security(("project_api_key" = [])),
    responses((status = 200, body = InvitationList)))]
pub async fn list_invitations(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id)): Path<(String, String)>,
) -> Result<Json<InvitationList>, ApiError> {
    let auth = ctx.authorize(Permission::UsersRead)?;
    let list = orgs::invitations::list_invitations(&state.router, state.clock.as_ref(), &auth, org_id(&id)?).await?;
    Ok(Json(InvitationList { data: list.into_iter().map(Into::into).collect() }))
}

/// Send a pending (or expired) invitation again: a new link, a new expiry; the old link stops
/// working.
#[utoipa::path(post, path = "/v1/projects/{project_id}/organizations/{id}/invitations/{invitation_id}/resend", tag = "organizations",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path), ("invitation_id" = Uuid, Path)),
    security(("project_api_key" = [])), request_body = ResendBody,
    responses((status = 200, body = InvitationBody),
              (status = 410, description = "accepted or revoked already (`invitation_used`, `invitation_revoked`)", body = crate::error::ErrorBody)))]
pub async fn resend_invitation(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id, inv)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<InvitationBody>, ApiError> {
    let auth = ctx.authorize(Permission::UsersManage)?;
    let (id, inv) = (org_id(&id)?, invitation_id(&inv)?);
    // Every field is optional: no body at all is an empty one.
    let resend: ResendBody =
        if body.is_empty() { ResendBody { expires_in_days: None } } else { json_body(&headers, &body)? };
    let client = client_info(&headers, None);
    let (inv, _token) = state.identity.resend_invitation(&auth, id, inv, resend.expires_in_days, &client).await?;
    Ok(Json(inv.into()))
}

/// Revoke an invitation: its link stops working (revoking twice is not an error).
#[utoipa::path(delete, path = "/v1/projects/{project_id}/organizations/{id}/invitations/{invitation_id}", tag = "organizations",
    params(("project_id" = Uuid, Path), ("id" = Uuid, Path), ("invitation_id" = Uuid, Path)),
    security(("project_api_key" = [])),
    responses((status = 200, body = InvitationBody),
              (status = 410, description = "accepted already (`invitation_used`): remove the member instead", body = crate::error::ErrorBody)))]
pub async fn revoke_invitation(
    State(state): State<AppState>,
    ctx: RequestContext,
    Path((_project_id, id, inv)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<InvitationBody>, ApiError> {
    let auth = ctx.authorize(Permission::UsersManage)?;
    let (id, inv) = (org_id(&id)?, invitation_id(&inv)?);
    let client = client_info(&headers, None);
    let inv =
        orgs::invitations::revoke_invitation(&state.router, state.clock.as_ref(), &auth, id, inv, &client).await?;
    Ok(Json(inv.into()))
}
