//! The scope every access to tenant data is bound to.
use uuid::Uuid;

/// Which kind of tenant a scope belongs to. The platform tenant never leaves the shared database.
/// Serialized (and stored) as `platform` or `customer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantKind {
    Platform,
    Customer,
}

impl TenantKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantKind::Platform => "platform",
            TenantKind::Customer => "customer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "platform" => Some(TenantKind::Platform),
            "customer" => Some(TenantKind::Customer),
            _ => None,
        }
    }
}

impl std::fmt::Display for TenantKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// `{tenant_id, project_id, tenant_kind}` resolved from a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scope {
    pub tenant_id: Uuid,
    /// `None` for tenant-level access (for example the dashboard listing projects).
    pub project_id: Option<Uuid>,
    pub tenant_kind: TenantKind,
}

impl Scope {
    pub fn project(tenant_id: Uuid, project_id: Uuid, tenant_kind: TenantKind) -> Self {
        Scope { tenant_id, project_id: Some(project_id), tenant_kind }
    }

    pub fn tenant(tenant_id: Uuid, tenant_kind: TenantKind) -> Self {
        Scope { tenant_id, project_id: None, tenant_kind }
    }
}
