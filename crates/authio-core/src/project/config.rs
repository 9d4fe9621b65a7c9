//! A project's sign-in configuration, pinned to the shared database: redirect URIs, allowed
//! origins, custom domains (live once a DNS TXT record proves ownership), presentation
//! (branding, sign-in methods, environment) and email templates. Edited in scoped
//! transactions on shared, each change audited through the outbox.
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::RwLock;

use authio_db::{Router, RowExt, Scope, Type};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::audit::{self, Actor};
use crate::authz::{Authorized, Permission};
use crate::project::mail::{MailKind, Template};
use crate::types::ClientInfo;
use crate::types::{project_of, DomainName, RedirectUri, ValidationError, WebOrigin};
use crate::{Clock, CoreError};

/// One audited change on shared: run `sql` (which must return the rows it changed) with
/// `params` in a pinned transaction, record the event if it changed a row, commit; returns
/// the rows.
async fn change(
    router: &Router,
    clock: &dyn Clock,
    scope: &Scope,
    sql: &str,
    params: &[authio_db::Param<'_>],
    event: (crate::audit::AuditAction, &Actor, &ClientInfo, (&'static str, String), serde_json::Value),
) -> Result<Vec<authio_db::Row>, CoreError> {
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin_pinned(scope).await?;
    let rows = tx.query(sql, params).await?;
    // Every statement given here returns the rows it changed: none changed, nothing to record.
    if !rows.is_empty() {
        let (action, actor, client, target, metadata) = event;
        let e = audit::Event { action, actor: actor.clone(), target: Some(target), client, metadata };
        audit::record_pinned(&tx, scope, e, now).await?;
    }
    tx.commit().await?;
    Ok(rows)
}

/// A project's list of strings on shared: redirect URIs or allowed origins (same shape, same
/// rules: unique per project, audited on change).
#[derive(Clone, Copy)]
struct List {
    table: &'static str,
    column: &'static str,
    added: crate::audit::AuditAction,
    removed: crate::audit::AuditAction,
    /// For `NotFound` and `Conflict`.
    what: crate::types::Entity,
}

const REDIRECT_URIS: List = List {
    table: "redirect_uris",
    column: "uri",
    added: crate::audit::AuditAction::ProjectRedirectUriAdded,
    removed: crate::audit::AuditAction::ProjectRedirectUriRemoved,
    what: crate::types::Entity::RedirectUri,
};

const ORIGINS: List = List {
    table: "allowed_origins",
    column: "origin",
    added: crate::audit::AuditAction::ProjectOriginAdded,
    removed: crate::audit::AuditAction::ProjectOriginRemoved,
    what: crate::types::Entity::Origin,
};

impl List {
    async fn entries(self, router: &Router, auth: &Authorized) -> Result<Vec<String>, CoreError> {
        let scope = auth.require(Permission::ProjectRead)?;
        project_of(scope)?;
        let tx = router.begin_pinned(scope).await?;
        let rows = tx.query(&format!("SELECT {c} FROM {t} ORDER BY {c}", c = self.column, t = self.table), &[]).await?;
        tx.commit().await?;
        rows.iter().map(|r| Ok(r.col(self.column)?)).collect()
    }

    async fn add(
        self,
        router: &Router,
        clock: &dyn Clock,
        auth: &Authorized,
        value: &str,
        client: &ClientInfo,
    ) -> Result<(), CoreError> {
        let (scope, actor) = (auth.require(Permission::ProjectConfigure)?, auth.actor());
        let project = project_of(scope)?;
        let now = clock.now();
        let sql = format!(
            "INSERT INTO {t} (tenant_id, project_id, {c}, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING RETURNING {c}",
            t = self.table,
            c = self.column
        );
        let rows = change(
            router,
            clock,
            scope,
            &sql,
            &[(&scope.tenant_id, Type::UUID), (&project, Type::UUID), (&value, Type::TEXT), (&now, Type::TIMESTAMPTZ)],
            (self.added, actor, client, ("project", project.to_string()), serde_json::json!({ self.column: value })),
        )
        .await?;
        if rows.is_empty() {
            return Err(CoreError::Conflict(format!("this {} is registered already", self.what)));
        }
        Ok(())
    }

    async fn remove(
        self,
        router: &Router,
        clock: &dyn Clock,
        auth: &Authorized,
        value: &str,
        client: &ClientInfo,
    ) -> Result<(), CoreError> {
        let (scope, actor) = (auth.require(Permission::ProjectConfigure)?, auth.actor());
        let project = project_of(scope)?;
        let sql = format!("DELETE FROM {t} WHERE {c} = $1 RETURNING {c}", t = self.table, c = self.column);
        let rows = change(
            router,
            clock,
            scope,
            &sql,
            &[(&value, Type::TEXT)],
            (self.removed, actor, client, ("project", project.to_string()), serde_json::json!({ self.column: value })),
        )
        .await?;
        if rows.is_empty() {
            return Err(CoreError::NotFound(self.what));
        }
        Ok(())
    }
}

#[tracing::instrument(level = "debug", name = "project::list_redirect_uris", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn list_redirect_uris(router: &Router, auth: &Authorized) -> Result<Vec<String>, CoreError> {
    REDIRECT_URIS.entries(router, auth).await
}

#[tracing::instrument(level = "debug", name = "project::add_redirect_uri", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn add_redirect_uri(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    uri: &RedirectUri,
    client: &ClientInfo,
) -> Result<(), CoreError> {
    REDIRECT_URIS.add(router, clock, auth, uri.as_str(), client).await
}

#[tracing::instrument(level = "debug", name = "project::remove_redirect_uri", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn remove_redirect_uri(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    uri: &str,
    client: &ClientInfo,
) -> Result<(), CoreError> {
    REDIRECT_URIS.remove(router, clock, auth, uri, client).await
}

#[tracing::instrument(level = "debug", name = "project::list_origins", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn list_origins(router: &Router, auth: &Authorized) -> Result<Vec<String>, CoreError> {
    ORIGINS.entries(router, auth).await
}

#[tracing::instrument(level = "debug", name = "project::add_origin", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn add_origin(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    origin: &WebOrigin,
    client: &ClientInfo,
) -> Result<(), CoreError> {
    ORIGINS.add(router, clock, auth, origin.as_str(), client).await
}

#[tracing::instrument(level = "debug", name = "project::remove_origin", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn remove_origin(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    origin: &str,
    client: &ClientInfo,
) -> Result<(), CoreError> {
    ORIGINS.remove(router, clock, auth, origin, client).await
}

/// Looks up DNS TXT records. The system resolver in production; tests and `authio dev`
/// drive [`StaticTxt`].
pub trait TxtLookup: Send + Sync {
    fn txt<'a>(&'a self, name: &'a str) -> Pin<Box<dyn Future<Output = Result<Vec<String>, String>> + Send + 'a>>;
}

/// Whether `name` has a TXT record of exactly `value` (quotes and spaces around it ignored):
/// the proof of a custom domain and of an organization's domain.
pub async fn txt_record_present(dns: &dyn TxtLookup, name: &str, value: &str) -> Result<bool, CoreError> {
    let records = dns.txt(name).await.map_err(|e| CoreError::Upstream(format!("DNS: {e}")))?;
    Ok(records.iter().any(|r| r.trim().trim_matches('"') == value))
}

/// The system's resolver (`/etc/resolv.conf`).
pub struct SystemDns(hickory_resolver::TokioResolver);

impl SystemDns {
    pub fn new() -> Result<Self, CoreError> {
        let r = hickory_resolver::TokioResolver::builder_tokio()
            .map_err(|e| CoreError::Config(format!("dns resolver: {e}")))?
            .build()
            .map_err(|e| CoreError::Config(format!("dns resolver: {e}")))?;
        Ok(SystemDns(r))
    }
}

impl TxtLookup for SystemDns {
    fn txt<'a>(&'a self, name: &'a str) -> Pin<Box<dyn Future<Output = Result<Vec<String>, String>> + Send + 'a>> {
        Box::pin(async move {
            match self.0.txt_lookup(name).await {
                Ok(answer) => Ok(answer
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        hickory_resolver::proto::rr::RData::TXT(t) => Some(t.to_string()),
                        _ => None,
                    })
                    .collect()),
                Err(e) if e.is_no_records_found() => Ok(Vec::new()),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

/// TXT records held in memory: what tests (and `authio dev`) publish.
#[derive(Default)]
pub struct StaticTxt(RwLock<HashMap<String, Vec<String>>>);

impl StaticTxt {
    pub fn publish(&self, name: &str, value: &str) {
        if let Ok(mut m) = self.0.write() {
            m.entry(name.to_ascii_lowercase()).or_default().push(value.to_owned());
        }
    }
}

impl TxtLookup for StaticTxt {
    fn txt<'a>(&'a self, name: &'a str) -> Pin<Box<dyn Future<Output = Result<Vec<String>, String>> + Send + 'a>> {
        let found = match self.0.read() {
            Ok(m) => Ok(m.get(&name.to_ascii_lowercase()).cloned().unwrap_or_default()),
            Err(_) => Err("poisoned".to_owned()),
        };
        Box::pin(async move { found })
    }
}

/// A custom domain and how to prove it.
#[derive(Clone, Debug, Serialize)]
pub struct DomainInfo {
    pub id: Uuid,
    pub host: String,
    pub verified: bool,
    pub verified_at: Option<DateTime<Utc>>,
    pub last_checked_at: Option<DateTime<Utc>>,
    /// Publish a TXT record at this name ...
    pub txt_name: String,
    /// ... with this value, then ask for verification.
    pub txt_value: String,
    pub created_at: DateTime<Utc>,
    /// When an unverified claim lapses (`null` once verified).
    pub expires_at: Option<DateTime<Utc>>,
}

/// How long a claim may wait for its proof. Until it is proved, a claim is private to its
/// tenant and blocks nobody else; a lapsed claim can be added again (with a new token).
pub const PENDING_CLAIM_DAYS: i64 = 7;

const DOMAIN_COLS: &str = "id, host, verification_token, verified_at, last_checked_at, created_at";

impl DomainInfo {
    /// A row of [`DOMAIN_COLS`].
    fn from_row(r: &authio_db::Row) -> Result<Self, CoreError> {
        let host: String = r.col("host")?;
        let token: String = r.col("verification_token")?;
        let verified_at: Option<DateTime<Utc>> = r.col("verified_at")?;
        let created_at: DateTime<Utc> = r.col("created_at")?;
        Ok(DomainInfo {
            expires_at: verified_at.is_none().then(|| created_at + chrono::Duration::days(PENDING_CLAIM_DAYS)),
            id: r.col("id")?,
            txt_name: format!("_authio-challenge.{host}"),
            txt_value: format!("authio-verification={token}"),
            host,
            verified: verified_at.is_some(),
            verified_at,
            last_checked_at: r.col("last_checked_at")?,
            created_at,
        })
    }
}

#[tracing::instrument(level = "debug", name = "project::add_domain", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn add_domain(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    host: &DomainName,
    client: &ClientInfo,
) -> Result<DomainInfo, CoreError> {
    let scope = auth.require(Permission::ProjectConfigure)?;
    let actor = auth.actor();
    let project = project_of(scope)?;
    let token = crate::crypto::opaque::random_hex::<16>();
    let now = crate::clock::now_as_stored(clock);
    let lapsed = now - chrono::Duration::days(PENDING_CLAIM_DAYS);
    // Only this tenant's own claim can conflict (other tenants' pending claims are private,
    // and a pending row never meets the unique index of verified hosts). A lapsed claim of
    // this project starts again with a new token.
    let rows = change(
        router,
        clock,
        scope,
        &format!(
            "INSERT INTO custom_domains (tenant_id, project_id, id, host, verification_token, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (tenant_id, host) DO UPDATE
                SET verification_token = EXCLUDED.verification_token, created_at = EXCLUDED.created_at
                WHERE custom_domains.verified_at IS NULL AND custom_domains.created_at < $7
                  AND custom_domains.project_id = EXCLUDED.project_id
             RETURNING {DOMAIN_COLS}"
        ),
        &[
            (&scope.tenant_id, Type::UUID),
            (&project, Type::UUID),
            (&Uuid::now_v7(), Type::UUID),
            (&host.as_str(), Type::TEXT),
            (&token, Type::TEXT),
            (&now, Type::TIMESTAMPTZ),
            (&lapsed, Type::TIMESTAMPTZ),
        ],
        (
            crate::audit::AuditAction::ProjectDomainAdded,
            actor,
            client,
            ("domain", host.as_str().to_owned()),
            serde_json::json!({}),
        ),
    )
    .await?;
    let row = rows.first().ok_or_else(|| CoreError::Conflict("this tenant has claimed this domain already".into()))?;
    DomainInfo::from_row(row)
}

#[tracing::instrument(level = "debug", name = "project::list_domains", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn list_domains(router: &Router, auth: &Authorized) -> Result<Vec<DomainInfo>, CoreError> {
    let scope = auth.require(Permission::ProjectRead)?;
    project_of(scope)?;
    let tx = router.begin_pinned(scope).await?;
    let rows = tx.query(&format!("SELECT {DOMAIN_COLS} FROM custom_domains ORDER BY host"), &[]).await?;
    tx.commit().await?;
    rows.iter().map(DomainInfo::from_row).collect()
}

/// Look for the domain's TXT record; the domain goes live when it is there.
#[tracing::instrument(level = "debug", name = "project::verify_domain", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn verify_domain(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    id: Uuid,
    dns: &dyn TxtLookup,
    client: &ClientInfo,
) -> Result<DomainInfo, CoreError> {
    let scope = auth.require(Permission::ProjectConfigure)?;
    let actor = auth.actor();
    project_of(scope)?;
    let tx = router.begin_pinned(scope).await?;
    let row = tx
        .query_opt(&format!("SELECT {DOMAIN_COLS} FROM custom_domains WHERE id = $1"), &[(&id, Type::UUID)])
        .await?
        .ok_or(CoreError::NotFound(crate::types::Entity::Domain))?;
    tx.commit().await?;
    let info = DomainInfo::from_row(&row)?;
    if info.verified {
        return Ok(info);
    }
    let now = crate::clock::now_as_stored(clock);
    if info.expires_at.is_some_and(|at| at <= now) {
        return Err(CoreError::Conflict("this claim lapsed unverified: add the domain again for a new token".into()));
    }
    let found = txt_record_present(dns, &info.txt_name, &info.txt_value).await?;
    let rows = if found {
        // The proof takes the host: other tenants' pending claims on it are dropped (they
        // cannot be seen from here, so a definer function does it), unless one is verified.
        let tx = router.begin_pinned(scope).await?;
        let proved = tx
            .query_one(
                "SELECT status, dropped FROM authio_domain_prove($1, $2, $3)",
                &[(&scope.tenant_id, Type::UUID), (&id, Type::UUID), (&now, Type::TIMESTAMPTZ)],
            )
            .await?;
        let status: String = proved.col("status")?;
        match status.as_str() {
            "verified" => {}
            "taken" => {
                return Err(CoreError::Conflict(
                    "another project has verified this domain; it must remove it before this one can".into(),
                ))
            }
            _ => return Err(CoreError::NotFound(crate::types::Entity::Domain)),
        }
        let dropped: i32 = proved.col("dropped")?;
        let e = audit::Event {
            action: crate::audit::AuditAction::ProjectDomainVerified,
            actor: actor.clone(),
            target: Some(("domain", info.host.clone())),
            client,
            metadata: serde_json::json!({"pending_claims_dropped": dropped}),
        };
        audit::record_pinned(&tx, scope, e, now).await?;
        let rows =
            tx.query(&format!("SELECT {DOMAIN_COLS} FROM custom_domains WHERE id = $1"), &[(&id, Type::UUID)]).await?;
        tx.commit().await?;
        rows
    } else {
        let tx = router.begin_pinned(scope).await?;
        let rows = tx
            .query(
                &format!("UPDATE custom_domains SET last_checked_at = $2 WHERE id = $1 RETURNING {DOMAIN_COLS}"),
                &[(&id, Type::UUID), (&now, Type::TIMESTAMPTZ)],
            )
            .await?;
        tx.commit().await?;
        rows
    };
    let info =
        rows.first().map(DomainInfo::from_row).transpose()?.ok_or(CoreError::NotFound(crate::types::Entity::Domain))?;
    if !info.verified {
        return Err(CoreError::DomainNotVerified(info.txt_name.clone(), info.txt_value.clone()));
    }
    Ok(info)
}

#[tracing::instrument(level = "debug", name = "project::delete_domain", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn delete_domain(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    id: Uuid,
    client: &ClientInfo,
) -> Result<(), CoreError> {
    let scope = auth.require(Permission::ProjectConfigure)?;
    let actor = auth.actor();
    project_of(scope)?;
    let now = clock.now();
    let tx = router.begin_pinned(scope).await?;
    let row = tx
        .query_opt("DELETE FROM custom_domains WHERE id = $1 RETURNING host", &[(&id, Type::UUID)])
        .await?
        .ok_or(CoreError::NotFound(crate::types::Entity::Domain))?;
    let host: String = row.col("host")?;
    let e = audit::Event {
        action: crate::audit::AuditAction::ProjectDomainRemoved,
        actor: actor.clone(),
        target: Some(("domain", host)),
        client,
        metadata: serde_json::json!({}),
    };
    audit::record_pinned(&tx, scope, e, now).await?;
    tx.commit().await?;
    Ok(())
}

/// Who may create an account in a project by themselves: anyone (`open`), nobody
/// (`invite_only`: administrators create users, who then sign in), or addresses at the listed
/// domains (`domains`, exact domain match: `example.com` does not admit `sub.example.com`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignupPolicy {
    Open,
    InviteOnly,
    Domains(Vec<String>),
}

impl SignupPolicy {
    /// From the stored columns (the database's check keeps them to these values; an unknown
    /// one admits nobody rather than everybody).
    pub fn from_columns(policy: &str, domains: Vec<String>) -> Self {
        match policy {
            "open" => SignupPolicy::Open,
            "domains" => SignupPolicy::Domains(domains),
            _ => SignupPolicy::InviteOnly,
        }
    }

    pub fn admits(&self, email: &crate::types::Email) -> bool {
        match self {
            SignupPolicy::Open => true,
            SignupPolicy::InviteOnly => false,
            SignupPolicy::Domains(list) => list.iter().any(|d| d == email.domain()),
        }
    }
}

pub const SIGNUP_POLICIES: [&str; 3] = ["open", "invite_only", "domains"];

/// How a project looks, which sign-in methods it offers, and who may sign up.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct PresentationSettings {
    pub environment: String,
    pub display_name: Option<String>,
    pub logo_url: Option<String>,
    pub brand_color: String,
    pub email_sender_name: Option<String>,
    pub signin_methods: Vec<String>,
    pub signup_policy: String,
    pub signup_domains: Vec<String>,
    /// `optional` (users may enrol a second factor) or `required` (every user signs in with
    /// one, enrolling first if they have none).
    pub mfa_policy: String,
    /// Accept RFC 7591 dynamic client registration (public clients, and confidential ones
    /// with `confidential_registration`) and clients named by their metadata document's URL.
    pub dynamic_registration: bool,
    pub metadata_document_clients: bool,
    pub confidential_registration: bool,
}

/// A change to it: absent fields stay; `null` clears an optional one.
#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PresentationPatch {
    pub environment: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    pub display_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    pub logo_url: Option<Option<String>>,
    pub brand_color: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    pub email_sender_name: Option<Option<String>>,
    pub signin_methods: Option<Vec<String>>,
    pub signup_policy: Option<String>,
    /// Domains admitted by the `domains` policy, in their ASCII form (up to 50).
    pub signup_domains: Option<Vec<String>>,
    /// `optional` or `required`.
    pub mfa_policy: Option<String>,
    pub dynamic_registration: Option<bool>,
    pub metadata_document_clients: Option<bool>,
    pub confidential_registration: Option<bool>,
}

fn double_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::<String>::deserialize(d)?))
}

pub const METHODS: [&str; 5] = ["password", "magic_link", "email_code", "oauth", "passkey"];

impl PresentationPatch {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(e) = &self.environment {
            if e != "production" && e != "development" {
                return Err(ValidationError::Field("environment (production or development)"));
            }
        }
        let text = |v: &Option<Option<String>>, field| match v {
            Some(Some(s)) if s.trim().is_empty() || s.chars().count() > 100 || s.chars().any(char::is_control) => {
                Err(ValidationError::Field(field))
            }
            _ => Ok(()),
        };
        text(&self.display_name, "display_name (1-100 characters)")?;
        text(&self.email_sender_name, "email_sender_name (1-100 characters)")?;
        if let Some(Some(u)) = &self.logo_url {
            let ok = u.len() <= 2048
                && url::Url::parse(u).is_ok_and(|p| p.scheme() == "https")
                && !u.contains(['"', '<', '>']);
            if !ok {
                return Err(ValidationError::Field("logo_url (an https URL)"));
            }
        }
        if let Some(c) = &self.brand_color {
            let ok = c.len() == 7
                && c.starts_with('#')
                && c[1..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !ok {
                return Err(ValidationError::Field("brand_color (#rrggbb, lower case)"));
            }
        }
        if let Some(m) = &self.signin_methods {
            if m.is_empty() || m.iter().any(|x| !METHODS.contains(&x.as_str())) {
                return Err(ValidationError::Field(
                    "signin_methods (password, magic_link, email_code, oauth, passkey)",
                ));
            }
        }
        if let Some(p) = &self.mfa_policy {
            if p != "optional" && p != "required" {
                return Err(ValidationError::Field("mfa_policy (optional or required)"));
            }
        }
        if let Some(p) = &self.signup_policy {
            if !SIGNUP_POLICIES.contains(&p.as_str()) {
                return Err(ValidationError::Field("signup_policy (open, invite_only or domains)"));
            }
        }
        if let Some(list) = &self.signup_domains {
            let shaped =
                list.len() <= 50 && list.iter().all(|d| DomainName::parse(d).is_ok_and(|n| n.as_str() == d.as_str()));
            if !shaped {
                return Err(ValidationError::Field("signup_domains (up to 50 lower-case ASCII domain names)"));
            }
        }
        // The `domains` policy with no domain would admit nobody: say so rather than store it.
        let domains_policy = self.signup_policy.as_deref() == Some("domains");
        let emptied = self.signup_domains.as_ref().is_some_and(Vec::is_empty);
        if (domains_policy && (self.signup_domains.is_none() || emptied)) || (emptied && self.signup_policy.is_none()) {
            return Err(ValidationError::Field(
                "signup_domains (at least one domain with signup_policy domains; send both together)",
            ));
        }
        Ok(())
    }
}

const PRESENTATION_COLS: &str =
    "environment, display_name, logo_url, brand_color, email_sender_name, signin_methods, signup_policy, signup_domains, mfa_policy, \
     dynamic_registration, metadata_document_clients, confidential_registration";

fn presentation_from(r: &authio_db::Row) -> Result<PresentationSettings, CoreError> {
    Ok(PresentationSettings {
        environment: r.col("environment")?,
        display_name: r.col("display_name")?,
        logo_url: r.col("logo_url")?,
        brand_color: r.col("brand_color")?,
        email_sender_name: r.col("email_sender_name")?,
        signin_methods: r.col("signin_methods")?,
        signup_policy: r.col("signup_policy")?,
        signup_domains: r.col("signup_domains")?,
        mfa_policy: r.col("mfa_policy")?,
        dynamic_registration: r.col("dynamic_registration")?,
        metadata_document_clients: r.col("metadata_document_clients")?,
        confidential_registration: r.col("confidential_registration")?,
    })
}

pub async fn presentation(router: &Router, auth: &Authorized) -> Result<PresentationSettings, CoreError> {
    let scope = auth.require(Permission::ProjectRead)?;
    let project = project_of(scope)?;
    let tx = router.begin_pinned(scope).await?;
    let row = tx
        .query_opt(&format!("SELECT {PRESENTATION_COLS} FROM projects WHERE id = $1"), &[(&project, Type::UUID)])
        .await?
        .ok_or(CoreError::NotFound(crate::types::Entity::Project))?;
    tx.commit().await?;
    presentation_from(&row)
}

#[tracing::instrument(level = "debug", name = "project::update_presentation", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn update_presentation(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    patch: &PresentationPatch,
    client: &ClientInfo,
) -> Result<PresentationSettings, CoreError> {
    let scope = auth.require(Permission::ProjectConfigure)?;
    let actor = auth.actor();
    patch.validate()?;
    let project = project_of(scope)?;
    let set = |v: &Option<Option<String>>| v.is_some();
    let rows = change(
        router,
        clock,
        scope,
        &format!(
            "UPDATE projects SET
                environment = coalesce($2, environment),
                display_name = CASE WHEN $3 THEN $4 ELSE display_name END,
                logo_url = CASE WHEN $5 THEN $6 ELSE logo_url END,
                brand_color = coalesce($7, brand_color),
                email_sender_name = CASE WHEN $8 THEN $9 ELSE email_sender_name END,
                signin_methods = coalesce($10, signin_methods),
                signup_policy = coalesce($11, signup_policy),
                signup_domains = coalesce($12, signup_domains),
                mfa_policy = coalesce($13, mfa_policy),
                dynamic_registration = coalesce($14, dynamic_registration),
                metadata_document_clients = coalesce($15, metadata_document_clients),
                confidential_registration = coalesce($16, confidential_registration)
             WHERE id = $1 RETURNING {PRESENTATION_COLS}"
        ),
        &[
            (&project, Type::UUID),
            (&patch.environment, Type::TEXT),
            (&set(&patch.display_name), Type::BOOL),
            (&patch.display_name.clone().flatten(), Type::TEXT),
            (&set(&patch.logo_url), Type::BOOL),
            (&patch.logo_url.clone().flatten(), Type::TEXT),
            (&patch.brand_color, Type::TEXT),
            (&set(&patch.email_sender_name), Type::BOOL),
            (&patch.email_sender_name.clone().flatten(), Type::TEXT),
            (&patch.signin_methods, Type::TEXT_ARRAY),
            (&patch.signup_policy, Type::TEXT),
            (&patch.signup_domains, Type::TEXT_ARRAY),
            (&patch.mfa_policy, Type::TEXT),
            (&patch.dynamic_registration, Type::BOOL),
            (&patch.metadata_document_clients, Type::BOOL),
            (&patch.confidential_registration, Type::BOOL),
        ],
        (
            crate::audit::AuditAction::ProjectPresentationChanged,
            actor,
            client,
            ("project", project.to_string()),
            serde_json::json!({
                "environment": patch.environment,
                "signin_methods": patch.signin_methods,
                "signup_policy": patch.signup_policy,
                "signup_domains": patch.signup_domains,
                "mfa_policy": patch.mfa_policy,
                "dynamic_registration": patch.dynamic_registration,
                "metadata_document_clients": patch.metadata_document_clients,
                "confidential_registration": patch.confidential_registration,
            }),
        ),
    )
    .await?;
    rows.first().map(presentation_from).transpose()?.ok_or(CoreError::NotFound(crate::types::Entity::Project))
}

#[tracing::instrument(level = "debug", name = "project::set_template", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn set_template(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    kind: MailKind,
    template: &Template,
    client: &ClientInfo,
) -> Result<(), CoreError> {
    let scope = auth.require(Permission::ProjectConfigure)?;
    let actor = auth.actor();
    template.validate(kind)?;
    let project = project_of(scope)?;
    let now = clock.now();
    change(
        router,
        clock,
        scope,
        "INSERT INTO email_templates (tenant_id, project_id, kind, subject, text_body, html_body, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (tenant_id, project_id, kind) DO UPDATE
            SET subject = EXCLUDED.subject, text_body = EXCLUDED.text_body, html_body = EXCLUDED.html_body,
                updated_at = EXCLUDED.updated_at
         RETURNING kind",
        &[
            (&scope.tenant_id, Type::UUID),
            (&project, Type::UUID),
            (&kind.as_str(), Type::TEXT),
            (&template.subject, Type::TEXT),
            (&template.text, Type::TEXT),
            (&template.html, Type::TEXT),
            (&now, Type::TIMESTAMPTZ),
        ],
        (
            crate::audit::AuditAction::ProjectEmailTemplateSet,
            actor,
            client,
            ("project", project.to_string()),
            serde_json::json!({"kind": kind.as_str()}),
        ),
    )
    .await?;
    Ok(())
}
