//! Authorization: the one seam. [`authorize`] decides whether a [`Principal`] may do a
//! [`Permission`] to a [`Target`], and on success returns [`Authorized`]: the scope (and the
//! audit actor) that the management stores require. Its fields are private, so a handler
//! that did not ask cannot call a store.
//!
//! Refusals: a target outside the principal's reach answers [`CoreError::NotFound`] (an API
//! key never learns whether another project exists); a target within reach but a permission
//! the principal lacks answers [`CoreError::Forbidden`].
use authio_db::{Scope, TenantKind};
use uuid::Uuid;

use crate::types::{Actor, ActorKind, Entity, ValidationError};
use crate::CoreError;

/// A dashboard member's role in a tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberRole {
    Owner,
    Admin,
    Viewer,
}

impl MemberRole {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        match raw {
            "owner" => Ok(MemberRole::Owner),
            "admin" => Ok(MemberRole::Admin),
            "viewer" => Ok(MemberRole::Viewer),
            _ => Err(ValidationError::Field("role: owner, admin or viewer")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Owner => "owner",
            MemberRole::Admin => "admin",
            MemberRole::Viewer => "viewer",
        }
    }

    /// Viewers look; owners and admins change things.
    pub fn may_change(self) -> bool {
        !matches!(self, MemberRole::Viewer)
    }
}

/// Who is acting.
#[derive(Clone, Debug)]
pub enum Principal {
    /// A project's secret API key: its own project only.
    ApiKey { tenant_id: Uuid, project_id: Uuid, tenant_kind: TenantKind, key_id: String },
    /// A platform operator (a platform-kind token with the operator role, or the console).
    Operator { user_id: String, name: Option<String> },
    /// A dashboard member of a customer tenant (a platform identity with a role there).
    Member { tenant_id: Uuid, user_id: Uuid, email: String, role: MemberRole },
    /// A signed-in end user of a project.
    EndUser { tenant_id: Uuid, project_id: Uuid, user_id: Uuid },
    /// An M2M client of a project.
    M2mClient { tenant_id: Uuid, project_id: Uuid, client_id: String },
    /// An operator's tool run with the deployment's own credentials (the CLI, `authio dev`'s
    /// seeding, benchmarks): recorded as an operator, named after the tool.
    Tool { name: &'static str },
    /// The deployment itself acting on its own behalf (the console registering its callback,
    /// background work). Named for the audit log.
    System { name: &'static str },
}

/// What a principal wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Read a project's settings and sign-in configuration.
    ProjectRead,
    /// Change a project's settings, sign-in configuration, templates, upstream connections.
    ProjectConfigure,
    /// Read its users and their sessions.
    UsersRead,
    /// Create, disable, enable and delete users; revoke their sessions.
    UsersManage,
    /// Create and revoke M2M clients, OpenID clients and API keys.
    CredentialsManage,
    /// Rotate the project's signing keys.
    KeysRotate,
    /// Read (and export) the audit log.
    AuditRead,
    /// See a tenant: its projects, plan and dedicated-database state.
    TenantRead,
    /// Change a tenant: create projects, ask for (or withdraw) a dedicated database.
    TenantManage,
    /// Run the platform: every tenant, plans, dedicated hosts, requests and moves.
    PlatformOperate,
    /// Start a session as one of a project's users (impersonation): operators and tenant
    /// owners, people only (an API key cannot).
    UsersImpersonate,
}

impl Permission {
    pub const ALL: [Permission; 11] = [
        Permission::ProjectRead,
        Permission::ProjectConfigure,
        Permission::UsersRead,
        Permission::UsersManage,
        Permission::CredentialsManage,
        Permission::KeysRotate,
        Permission::AuditRead,
        Permission::TenantRead,
        Permission::TenantManage,
        Permission::PlatformOperate,
        Permission::UsersImpersonate,
    ];

    /// Reading changes nothing: what a viewer may do.
    pub fn is_read(self) -> bool {
        matches!(self, Permission::ProjectRead | Permission::UsersRead | Permission::AuditRead | Permission::TenantRead)
    }
}

/// What the act is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Project { tenant_id: Uuid, project_id: Uuid, tenant_kind: TenantKind },
    Tenant { tenant_id: Uuid, tenant_kind: TenantKind },
    Platform,
}

impl Target {
    pub fn project(scope: &Scope) -> Result<Self, CoreError> {
        let project_id = scope.project_id.ok_or(CoreError::NotFound(Entity::Project))?;
        Ok(Target::Project { tenant_id: scope.tenant_id, project_id, tenant_kind: scope.tenant_kind })
    }

    fn tenant(&self) -> Option<Uuid> {
        match self {
            Target::Project { tenant_id, .. } | Target::Tenant { tenant_id, .. } => Some(*tenant_id),
            Target::Platform => None,
        }
    }

    fn scope(&self) -> Option<Scope> {
        match *self {
            Target::Project { tenant_id, project_id, tenant_kind } => {
                Some(Scope::project(tenant_id, project_id, tenant_kind))
            }
            Target::Tenant { tenant_id, tenant_kind } => Some(Scope::tenant(tenant_id, tenant_kind)),
            Target::Platform => None,
        }
    }
}

/// Proof that a principal may do one permission to one target: what the stores take.
#[derive(Clone, Debug)]
pub struct Authorized {
    scope: Option<Scope>,
    actor: Actor,
    permission: Permission,
}

impl Authorized {
    /// The scope to open transactions with (tenant and, for a project target, project).
    pub fn scope(&self) -> Result<&Scope, CoreError> {
        self.scope.as_ref().ok_or(CoreError::NotFound(Entity::Project))
    }

    /// The acting principal as the audit log records it.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// The scope, for a store that needs `permission`: an authorization for another
    /// permission does not stand in for it.
    pub fn require(&self, permission: Permission) -> Result<&Scope, CoreError> {
        if self.permission != permission {
            return Err(CoreError::Forbidden("not authorized for this"));
        }
        self.scope()
    }

    /// The tenant acted on (nil for the platform target), for spans and logs.
    pub fn tenant_id(&self) -> Uuid {
        self.scope.map(|s| s.tenant_id).unwrap_or_default()
    }

    /// The project acted on, if the target is one.
    pub fn project_id(&self) -> Option<Uuid> {
        self.scope.and_then(|s| s.project_id)
    }

    /// The same principal and target, for a second permission it also holds (for example a
    /// page that reads before it changes). Fails as [`authorize`] would.
    pub fn also(&self, principal: &Principal, permission: Permission) -> Result<Authorized, CoreError> {
        let target = match self.scope {
            Some(s) => match s.project_id {
                Some(project_id) => Target::Project { tenant_id: s.tenant_id, project_id, tenant_kind: s.tenant_kind },
                None => Target::Tenant { tenant_id: s.tenant_id, tenant_kind: s.tenant_kind },
            },
            None => Target::Platform,
        };
        authorize(principal, permission, &target)
    }
}

impl Principal {
    /// How the audit log names this principal.
    pub fn actor(&self) -> Actor {
        match self {
            Principal::ApiKey { key_id, .. } => Actor::api_key(key_id),
            Principal::Operator { user_id, name } => {
                Actor { kind: ActorKind::Operator, id: Some(user_id.clone()), name: name.clone() }
            }
            Principal::Member { user_id, email, .. } => Actor {
                kind: ActorKind::User,
                id: Some(user_id.to_string()),
                name: Some(format!("{email} (dashboard)")),
            },
            Principal::EndUser { user_id, .. } => Actor::user(*user_id, None),
            Principal::M2mClient { client_id, .. } => {
                Actor { kind: ActorKind::M2mClient, id: Some(client_id.clone()), name: None }
            }
            Principal::Tool { name } => Actor { kind: ActorKind::Operator, id: None, name: Some((*name).to_owned()) },
            Principal::System { name } => Actor { kind: ActorKind::System, id: None, name: Some((*name).to_owned()) },
        }
    }

    /// The one rule table. Everything not granted here is refused.
    fn may(&self, permission: Permission, target: &Target) -> Decision {
        use Decision::*;
        match self {
            Principal::Operator { .. } | Principal::Tool { .. } | Principal::System { .. } => Allow,
            Principal::ApiKey { project_id, tenant_id, .. } => match target {
                Target::Project { project_id: p, tenant_id: t, .. } if p == project_id && t == tenant_id => {
                    match permission {
                        Permission::TenantRead
                        | Permission::TenantManage
                        | Permission::PlatformOperate
                        | Permission::UsersImpersonate => Deny,
                        _ => Allow,
                    }
                }
                Target::Platform => Deny,
                _ => Hidden,
            },
            Principal::Member { tenant_id, role, .. } => {
                if target.tenant() != Some(*tenant_id) {
                    return if matches!(target, Target::Platform) { Deny } else { Hidden };
                }
                match permission {
                    Permission::PlatformOperate => Deny,
                    Permission::UsersImpersonate if *role == MemberRole::Owner => Allow,
                    Permission::UsersImpersonate => Deny,
                    p if p.is_read() => Allow,
                    _ if role.may_change() => Allow,
                    _ => Deny,
                }
            }
            // End users and M2M clients act on their own account or their own APIs, through
            // the token endpoints; none of the management permissions is theirs.
            Principal::EndUser { tenant_id, .. } | Principal::M2mClient { tenant_id, .. } => {
                if target.tenant() == Some(*tenant_id) || matches!(target, Target::Platform) {
                    Deny
                } else {
                    Hidden
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    Allow,
    /// Within reach, but not allowed: 403.
    Deny,
    /// Out of reach: answered as not found, so existence is not revealed.
    Hidden,
}

/// The only way to the scope the management stores require.
pub fn authorize(principal: &Principal, permission: Permission, target: &Target) -> Result<Authorized, CoreError> {
    match principal.may(permission, target) {
        Decision::Allow => Ok(Authorized { scope: target.scope(), actor: principal.actor(), permission }),
        Decision::Deny => Err(CoreError::Forbidden(refusal(principal, permission))),
        Decision::Hidden => Err(CoreError::NotFound(match target {
            Target::Tenant { .. } => Entity::Tenant,
            _ => Entity::Project,
        })),
    }
}

/// The deployment itself acting on a project ([`Principal::System`]). For the server's own
/// housekeeping only: a handler acting for a caller authorizes the caller's principal.
pub fn as_system(name: &'static str, permission: Permission, scope: &Scope) -> Result<Authorized, CoreError> {
    authorize(&Principal::System { name }, permission, &Target::project(scope)?)
}

/// An operator's tool acting on a project ([`Principal::Tool`]): the CLI, seeding, benchmarks.
pub fn as_tool(name: &'static str, permission: Permission, scope: &Scope) -> Result<Authorized, CoreError> {
    authorize(&Principal::Tool { name }, permission, &Target::project(scope)?)
}

fn refusal(principal: &Principal, permission: Permission) -> &'static str {
    match (principal, permission) {
        (Principal::Member { role: MemberRole::Viewer, .. }, _) => {
            "viewers can look but not change anything; ask an owner or admin of this tenant"
        }
        (_, Permission::PlatformOperate) => "only operators may do this",
        _ => "this principal may not do this",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
