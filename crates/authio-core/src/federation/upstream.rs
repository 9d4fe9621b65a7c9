//! Upstream OAuth 2.0 / OpenID Connect providers a project's users sign in with: generic OIDC
//! (by discovery) and the Google, Microsoft and GitHub presets. Authorization-code flow with
//! PKCE S256, `state` and `nonce` kept on the shared database (single use, bound to the
//! browser that started), id_tokens checked against the provider's JWKS, and accounts linked
//! by verified email only, each decision in the audit log. A connection may belong to one
//! organization (its single sign-on): reached by the domain a person types, it makes them
//! members with roles from their groups, and the organization may require it.
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use authio_db::{preresolve, RowExt, Scope, Type};
use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::authz::{Authorized, Permission};
use crate::crypto::opaque::{hash as token_hash, new_token};
use crate::crypto::pkce::s256;
use crate::identity::auth::{scope_of, Identity};
use crate::identity::signin::{with_query, Return, SignedInUser};
use crate::types::ClientInfo;
use crate::types::{project_of, Email, ValidationError};
use crate::{audit, CoreError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Oidc,
    Google,
    Microsoft,
    Github,
    /// SAML 2.0 (made through `create_saml_connection`).
    Saml,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Oidc => "oidc",
            ProviderKind::Google => "google",
            ProviderKind::Microsoft => "microsoft",
            ProviderKind::Github => "github",
            ProviderKind::Saml => "saml",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [ProviderKind::Oidc, ProviderKind::Google, ProviderKind::Microsoft, ProviderKind::Github, ProviderKind::Saml]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// How a provider's answer comes back to us, which decides the browser cookie's SameSite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerComes {
    /// OpenID/OAuth: a top-level redirect to our callback (SameSite=Lax is sent).
    TopLevelRedirect,
    /// SAML HTTP-POST binding: a cross-site POST to the ACS (only SameSite=None is sent).
    CrossSitePost,
}

/// A connection to create.
#[derive(Clone, Debug, Deserialize)]
pub struct NewConnection {
    /// In URLs: `/p/{project}/oauth/{slug}`.
    pub slug: String,
    pub kind: ProviderKind,
    pub display_name: Option<String>,
    pub client_id: String,
    pub client_secret: String,
    /// Generic OIDC: the issuer (discovery at `{issuer}/.well-known/openid-configuration`).
    /// Microsoft: `https://login.microsoftonline.com/{tenant id}/v2.0`. Google: implied.
    pub issuer: Option<String>,
    /// Default `openid email profile` (GitHub: `read:user user:email`).
    pub scopes: Option<Vec<String>>,
    /// Single sign-on for this organization of the project: its people sign in here (by the
    /// domain they type on the hosted page), and each sign-in makes them members.
    pub organization_id: Option<Uuid>,
    /// The role a member gets for the provider's `groups` claim: the first group (in the
    /// order the provider sends them) that has one; else the default role.
    pub group_roles: Option<std::collections::BTreeMap<String, String>>,
}

/// A connection as listed (never its secret).
#[derive(Clone, Debug, Serialize)]
pub struct ConnectionInfo {
    pub id: Uuid,
    pub slug: String,
    pub kind: ProviderKind,
    pub display_name: String,
    pub client_id: String,
    pub issuer: Option<String>,
    pub authorization_endpoint: String,
    /// Absent for SAML (nothing is redeemed).
    pub token_endpoint: Option<String>,
    pub userinfo_endpoint: Option<String>,
    pub jwks_uri: Option<String>,
    pub scopes: Vec<String>,
    pub enabled: bool,
    pub organization_id: Option<Uuid>,
    pub group_roles: serde_json::Value,
    pub created_at: DateTime<Utc>,
    /// A SAML connection's two sides.
    pub saml: Option<crate::federation::sso::SamlInfo>,
}

pub(crate) const COLS: &str =
    "id, slug, kind, display_name, client_id, issuer, authorization_endpoint, token_endpoint, \
                    userinfo_endpoint, jwks_uri, scopes, enabled, organization_id, group_roles, created_at, \
                    acs_url, sp_certificate, idp_certificates, idp_initiated, attribute_map";

impl ConnectionInfo {
    pub(crate) fn from_row(r: &authio_db::Row) -> Result<Self, CoreError> {
        let kind: String = r.col("kind")?;
        let saml = crate::federation::sso::SamlInfo::from_row(r)?;
        Ok(ConnectionInfo {
            saml,
            id: r.col("id")?,
            slug: r.col("slug")?,
            kind: ProviderKind::parse(&kind).ok_or_else(|| CoreError::Internal(format!("provider kind {kind}")))?,
            display_name: r.col("display_name")?,
            client_id: r.col("client_id")?,
            issuer: r.col("issuer")?,
            authorization_endpoint: r.col("authorization_endpoint")?,
            token_endpoint: r.col("token_endpoint")?,
            userinfo_endpoint: r.col("userinfo_endpoint")?,
            jwks_uri: r.col("jwks_uri")?,
            scopes: r.col("scopes")?,
            enabled: r.col("enabled")?,
            organization_id: r.col("organization_id")?,
            group_roles: r.col("group_roles")?,
            created_at: r.col("created_at")?,
        })
    }
}

/// A provider's endpoints, from its preset or its discovery document.
struct Endpoints {
    issuer: Option<String>,
    authorization: String,
    token: String,
    userinfo: Option<String>,
    jwks: Option<String>,
    default_scopes: &'static [&'static str],
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    userinfo_endpoint: Option<String>,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    id_token: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct IdClaims {
    sub: String,
    nonce: Option<String>,
    email: Option<String>,
    #[serde(default)]
    email_verified: EmailVerified,
    azp: Option<String>,
    aud: serde_json::Value,
    /// Entra ID, Okta and others send the user's groups here (a list, or one string).
    #[serde(default)]
    groups: serde_json::Value,
    given_name: Option<String>,
    family_name: Option<String>,
}

/// Providers send `email_verified` as a boolean, some as the string "true".
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum EmailVerified {
    Bool(bool),
    Text(String),
    #[default]
    Absent,
}

impl EmailVerified {
    fn is_true(&self) -> bool {
        matches!(self, EmailVerified::Bool(true)) || matches!(self, EmailVerified::Text(s) if s == "true")
    }
}

/// What the provider said about the user.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct UpstreamUser {
    pub(crate) subject: String,
    pub(crate) email: Option<String>,
    pub(crate) email_verified: bool,
    pub(crate) groups: Vec<String>,
    /// The person's names, as the provider has them now (kept on the user at each sign-in).
    #[serde(default)]
    pub(crate) given_name: Option<String>,
    #[serde(default)]
    pub(crate) family_name: Option<String>,
}

const JWKS_TTL: StdDuration = StdDuration::from_secs(300);
/// A key id not in the cached set triggers a refetch, at most this often.
const JWKS_REFETCH_AFTER: StdDuration = StdDuration::from_secs(10);

pub(crate) fn bad(field: &'static str) -> CoreError {
    CoreError::Invalid(ValidationError::Field(field))
}

fn upstream_err(what: impl std::fmt::Display) -> CoreError {
    CoreError::Upstream(what.to_string())
}

/// Sign-in through upstream providers, built on the identity service (its sessions, caches
/// and HTTP client): connections, the authorization-code flow, account linking.
#[derive(Clone)]
pub struct Upstream {
    pub(crate) identity: Identity,
}

impl Upstream {
    pub fn new(identity: Identity) -> Self {
        Upstream { identity }
    }

    pub(crate) fn check_upstream_url(&self, raw: &str, field: &'static str) -> Result<(), CoreError> {
        let url = url::Url::parse(raw).map_err(|_| bad(field))?;
        let ok =
            url.scheme() == "https" || (url.scheme() == "http" && self.identity.inner.settings.allow_http_upstreams);
        if !ok || url.host_str().is_none() || raw.len() > 2048 || raw.chars().any(char::is_control) {
            return Err(bad(field));
        }
        Ok(())
    }

    /// Register an upstream provider for the scope's project (discovering an OIDC
    /// provider's endpoints now; its secret sealed with the master key).
    #[tracing::instrument(level = "debug", name = "upstream::create_connection", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
    pub async fn create_connection(
        &self,
        auth: &Authorized,
        new: &NewConnection,
        client: &ClientInfo,
    ) -> Result<ConnectionInfo, CoreError> {
        let scope = auth.require(Permission::ProjectConfigure)?;
        let actor = auth.actor();
        let project = project_of(scope)?;
        let slug = crate::types::Slug::parse(&new.slug)?;
        if slug.as_str().len() > 32 {
            return Err(bad("slug (at most 32 characters)"));
        }
        if new.client_id.is_empty() || new.client_id.len() > 512 || new.client_secret.is_empty() {
            return Err(bad("client_id and client_secret"));
        }
        let display_name = new.display_name.clone().unwrap_or_else(|| match new.kind {
            ProviderKind::Google => "Google".into(),
            ProviderKind::Microsoft => "Microsoft".into(),
            ProviderKind::Github => "GitHub".into(),
            ProviderKind::Oidc | ProviderKind::Saml => new.slug.clone(),
        });
        if display_name.is_empty() || display_name.chars().count() > 100 {
            return Err(bad("display_name (1-100 characters)"));
        }
        let e = match new.kind {
            ProviderKind::Github => Endpoints {
                issuer: None,
                authorization: "https://github.com/login/oauth/authorize".into(),
                token: "https://github.com/login/oauth/access_token".into(),
                userinfo: Some("https://api.github.com/user".into()),
                jwks: None,
                default_scopes: &["read:user", "user:email"],
            },
            kind => {
                let issuer = match (kind, new.issuer.as_deref()) {
                    (ProviderKind::Google, None) => "https://accounts.google.com".to_owned(),
                    (ProviderKind::Microsoft, Some(i)) if !i.starts_with("https://login.microsoftonline.com/") => {
                        return Err(bad("issuer (https://login.microsoftonline.com/{tenant id}/v2.0)"))
                    }
                    (_, Some(i)) => i.to_owned(),
                    (_, None) => return Err(bad("issuer")),
                };
                self.check_upstream_url(&issuer, "issuer")?;
                let d = self.discover(&issuer).await?;
                Endpoints {
                    issuer: Some(issuer),
                    authorization: d.authorization_endpoint,
                    token: d.token_endpoint,
                    userinfo: d.userinfo_endpoint,
                    jwks: Some(d.jwks_uri),
                    default_scopes: &["openid", "email", "profile"],
                }
            }
        };
        let Endpoints { issuer, authorization: authz, token, userinfo, jwks, default_scopes } = e;
        for (u, f) in [(&authz, "authorization_endpoint"), (&token, "token_endpoint")] {
            self.check_upstream_url(u, f)?;
        }
        if let Some(j) = &jwks {
            self.check_upstream_url(j, "jwks_uri")?;
        }
        let scopes = new.scopes.clone().unwrap_or_else(|| default_scopes.iter().map(|s| (*s).to_owned()).collect());
        if new.kind != ProviderKind::Github && !scopes.iter().any(|s| s == "openid") {
            return Err(bad("scopes (must include openid)"));
        }
        let group_roles = self.check_organization(scope, new.organization_id, new.group_roles.as_ref()).await?;
        let sealed = self
            .identity
            .inner
            .master_key
            .encrypt(&new.client_secret)
            .map_err(|e| CoreError::Internal(e.to_string()))?;
        let now = crate::clock::now_as_stored(self.identity.inner.clock.as_ref());
        let tx = self.identity.inner.router.begin_pinned(scope).await?;
        let row = tx
            .query_opt(
                &format!(
                    "INSERT INTO oauth_connections (tenant_id, project_id, id, slug, kind, display_name, client_id,
                         client_secret_enc, issuer, authorization_endpoint, token_endpoint, userinfo_endpoint, jwks_uri,
                         scopes, created_at, organization_id, group_roles)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
                     ON CONFLICT (project_id, slug) DO NOTHING RETURNING {COLS}"
                ),
                &[
                    (&scope.tenant_id, Type::UUID),
                    (&project, Type::UUID),
                    (&Uuid::now_v7(), Type::UUID),
                    (&slug.as_str(), Type::TEXT),
                    (&new.kind.as_str(), Type::TEXT),
                    (&display_name, Type::TEXT),
                    (&new.client_id, Type::TEXT),
                    (&sealed, Type::TEXT),
                    (&issuer, Type::TEXT),
                    (&authz, Type::TEXT),
                    (&token, Type::TEXT),
                    (&userinfo, Type::TEXT),
                    (&jwks, Type::TEXT),
                    (&scopes, Type::TEXT_ARRAY),
                    (&now, Type::TIMESTAMPTZ),
                    (&new.organization_id, Type::UUID),
                    (&group_roles, Type::JSONB),
                ],
            )
            .await?
            .ok_or_else(|| CoreError::Conflict("a connection with this slug exists".into()))?;
        let info = ConnectionInfo::from_row(&row)?;
        let event = audit::Event {
            action: crate::audit::AuditAction::ConnectionCreated,
            actor: actor.clone(),
            target: Some(("connection", info.id.to_string())),
            client,
            metadata: serde_json::json!({
                "slug": info.slug, "kind": info.kind, "issuer": info.issuer, "organization_id": info.organization_id,
            }),
        };
        audit::record_pinned(&tx, scope, event, now).await?;
        tx.commit().await?;
        Ok(info)
    }

    /// A connection for an organization: the organization is one of the project's (read at
    /// the tenant's home), and every mapped role exists for it. Returns the group map to store.
    pub(crate) async fn check_organization(
        &self,
        scope: &Scope,
        organization_id: Option<Uuid>,
        group_roles: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Result<serde_json::Value, CoreError> {
        let map = group_roles.cloned().unwrap_or_default();
        let Some(org) = organization_id else {
            if !map.is_empty() {
                return Err(bad("group_roles (only for an organization's connection)"));
            }
            return Ok(serde_json::json!({}));
        };
        let bad_text = |t: &str, max: usize| t.is_empty() || t.len() > max || t.chars().any(char::is_control);
        if map.len() > 100 || map.iter().any(|(g, r)| bad_text(g, 256) || bad_text(r, 64)) {
            return Err(bad("group_roles (at most 100 groups of 1-256 characters, to role slugs)"));
        }
        let roles: Vec<String> = map.values().cloned().collect();
        let tx = self.identity.inner.router.begin(scope).await?;
        tx.query_opt("SELECT 1 FROM organizations WHERE id = $1", &[(&org, Type::UUID)])
            .await?
            .ok_or(CoreError::NotFound(crate::types::Entity::Organization))?;
        let known = tx
            .query(
                "SELECT slug FROM roles WHERE slug = ANY ($1) AND (organization_id IS NULL OR organization_id = $2)",
                &[(&roles, Type::TEXT_ARRAY), (&org, Type::UUID)],
            )
            .await?;
        tx.commit().await?;
        let known: Vec<String> = known.iter().map(|r| r.col("slug")).collect::<Result<_, _>>()?;
        if roles.iter().any(|r| !known.contains(r)) {
            return Err(CoreError::NotFound(crate::types::Entity::Role));
        }
        serde_json::to_value(&map).map_err(|e| CoreError::Internal(e.to_string()))
    }

    /// The single sign-on connection for the address a person typed on the hosted page: the
    /// enabled connection of the organization that verified its domain. Returns its slug.
    pub async fn sso_connection_for(&self, project: Uuid, email: &str) -> Result<Option<String>, CoreError> {
        let profile = self.identity.profile(project).await?;
        let scope = scope_of(&profile);
        let Some(org) = crate::orgs::organization_for_email(&self.identity.inner.router, &scope, email).await? else {
            return Ok(None);
        };
        let tx = self.identity.inner.router.begin_pinned(&scope).await?;
        let row = tx
            .query_opt(
                "SELECT slug FROM oauth_connections WHERE organization_id = $1 AND enabled ORDER BY created_at LIMIT 1",
                &[(&org, Type::UUID)],
            )
            .await?;
        tx.commit().await?;
        Ok(row.map(|r| r.col("slug")).transpose()?)
    }

    #[tracing::instrument(level = "debug", name = "upstream::list_connections", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
    pub async fn list_connections(&self, auth: &Authorized) -> Result<Vec<ConnectionInfo>, CoreError> {
        self.connections(auth.require(Permission::ProjectRead)?).await
    }

    async fn connections(&self, scope: &Scope) -> Result<Vec<ConnectionInfo>, CoreError> {
        let tx = self.identity.inner.router.begin_pinned(scope).await?;
        let rows = tx.query(&format!("SELECT {COLS} FROM oauth_connections ORDER BY slug"), &[]).await?;
        tx.commit().await?;
        rows.iter().map(ConnectionInfo::from_row).collect()
    }

    #[tracing::instrument(level = "debug", name = "upstream::delete_connection", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
    pub async fn delete_connection(&self, auth: &Authorized, id: Uuid, client: &ClientInfo) -> Result<(), CoreError> {
        let scope = auth.require(Permission::ProjectConfigure)?;
        let actor = auth.actor();
        let now = self.identity.now();
        // An organization that requires single sign-on keeps a way in: its last enabled
        // connection goes only once the requirement is off. (The requirement is read at the
        // tenant's home first; then, on the shared database, the organization's connections
        // are locked and counted in the deleting transaction, so two deletes at once cannot
        // both take "the other one".)
        let tx = self.identity.inner.router.begin_pinned(scope).await?;
        let org: Option<Uuid> = tx
            .query_opt("SELECT organization_id FROM oauth_connections WHERE id = $1", &[(&id, Type::UUID)])
            .await?
            .ok_or(CoreError::NotFound(crate::types::Entity::Connection))?
            .col("organization_id")?;
        tx.commit().await?;
        let required = self.sso_required(scope, org).await?;
        let tx = self.identity.inner.router.begin_pinned(scope).await?;
        if let (Some(org), true) = (org, required) {
            crate::federation::sso::last_connection_guard(&tx, org, id).await?;
        }
        let gone = tx
            .query_opt("DELETE FROM oauth_connections WHERE id = $1 RETURNING slug", &[(&id, Type::UUID)])
            .await?
            .ok_or(CoreError::NotFound(crate::types::Entity::Connection))?;
        let slug: String = gone.col("slug")?;
        let event = audit::Event {
            action: crate::audit::AuditAction::ConnectionDeleted,
            actor: actor.clone(),
            target: Some(("connection", id.to_string())),
            client,
            metadata: serde_json::json!({"slug": slug}),
        };
        audit::record_pinned(&tx, scope, event, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn discover(&self, issuer: &str) -> Result<Discovery, CoreError> {
        let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let d: Discovery = self
            .identity
            .inner
            .http
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(upstream_err)?
            .json()
            .await
            .map_err(upstream_err)?;
        // OIDC Discovery 4.3: the document's issuer must be the one asked for.
        if d.issuer != issuer {
            return Err(upstream_err(format!("discovery issuer {:?} is not {issuer:?}", d.issuer)));
        }
        Ok(d)
    }

    pub(crate) async fn connection_by(
        &self,
        scope: &Scope,
        sql: &str,
        key: &(dyn tokio_postgres::types::ToSql + Sync),
        ty: Type,
    ) -> Result<(ConnectionInfo, String), CoreError> {
        let tx = self.identity.inner.router.begin_pinned(scope).await?;
        let row = tx
            .query_opt(&format!("SELECT {COLS}, client_secret_enc FROM oauth_connections WHERE {sql}"), &[(key, ty)])
            .await?
            .ok_or(CoreError::NotFound(crate::types::Entity::Connection))?;
        tx.commit().await?;
        let info = ConnectionInfo::from_row(&row)?;
        let secret = self
            .identity
            .inner
            .master_key
            .decrypt(row.col::<&str>("client_secret_enc")?)
            .map_err(|e| CoreError::Internal(format!("connection secret: {e}")))?;
        Ok((info, secret))
    }

    /// The enabled connections a project's hosted page offers.
    #[tracing::instrument(level = "debug", name = "upstream::sign_in_buttons", skip_all, fields(project = %project))]
    /// Also whether any organization has its own provider (single sign-on by address).
    pub async fn sign_in_buttons(&self, project: Uuid) -> Result<(Vec<(String, String)>, bool), CoreError> {
        let profile = self.identity.profile(project).await?;
        let list = self.connections(&scope_of(&profile)).await?;
        let sso = list.iter().any(|c| c.enabled && c.organization_id.is_some());
        // An organization's own provider is reached through its domain, not offered to all.
        let buttons = list
            .into_iter()
            .filter(|c| c.enabled && c.organization_id.is_none())
            .map(|c| (c.slug, c.display_name))
            .collect();
        Ok((buttons, sso))
    }

    /// Start an upstream sign-in: the provider's authorization URL, and a verifier the
    /// browser keeps (in a cookie) and presents at the callback.
    #[tracing::instrument(level = "debug", name = "upstream::upstream_start", skip_all, fields(project = %project))]
    pub async fn upstream_start(
        &self,
        project: Uuid,
        slug: &str,
        ret: Option<&Return>,
        callback_url: &str,
        ip: Option<IpAddr>,
    ) -> Result<(String, String, AnswerComes), CoreError> {
        self.identity.limit_attempts(ip).await?;
        let presentation = self.identity.presentation(project).await?;
        presentation.require("oauth")?;
        let profile = self.identity.profile(project).await?;
        let scope = scope_of(&profile);
        let (conn, _) = self.connection_by(&scope, "slug = $1", &slug, Type::TEXT).await?;
        if !conn.enabled {
            return Err(CoreError::NotFound(crate::types::Entity::Connection));
        }
        if conn.kind == ProviderKind::Saml {
            let (location, browser) = self.saml_start(&scope, &conn, ret).await?;
            return Ok((location, browser, AnswerComes::CrossSitePost));
        }
        let (state, state_hash) = new_token("");
        let (nonce, _) = new_token("");
        let (pkce_verifier, _) = new_token("");
        let (browser, browser_hash) = new_token("");
        let sealed =
            self.identity.inner.master_key.encrypt(&pkce_verifier).map_err(|e| CoreError::Internal(e.to_string()))?;
        self.keep_state(&scope, &state_hash, conn.id, (&nonce, &sealed), &browser_hash, ret).await?;
        let scope_param = conn.scopes.join(" ");
        let challenge = s256(&pkce_verifier);
        let mut params: Vec<(&str, &str)> = vec![
            ("response_type", "code"),
            ("client_id", &conn.client_id),
            ("redirect_uri", callback_url),
            ("scope", &scope_param),
            ("state", &state),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ];
        if conn.kind != ProviderKind::Github {
            params.push(("nonce", &nonce));
        }
        Ok((with_query(&conn.authorization_endpoint, &params), browser, AnswerComes::TopLevelRedirect))
    }

    /// Keep a sign-in request on the shared database until its answer uses it, once: by the
    /// hash of its `state` (or SAML request id), with the OpenID nonce and sealed PKCE verifier,
    /// the hash of the browser's binding, and where to return.
    pub(crate) async fn keep_state(
        &self,
        scope: &Scope,
        state_hash: &[u8; 32],
        connection: Uuid,
        (nonce, pkce_sealed): (&str, &str),
        browser_hash: &[u8; 32],
        ret: Option<&Return>,
    ) -> Result<(), CoreError> {
        let (ret_uri, ret_state, ret_challenge) = Return::columns(ret);
        let now = self.identity.now();
        let expires = now + Duration::seconds(self.identity.inner.settings.one_time.oauth_state_ttl_secs);
        let tx = self.identity.inner.router.begin_pinned(scope).await?;
        tx.query(
            "INSERT INTO oauth_states (tenant_id, project_id, state_hash, connection_id, nonce, pkce_verifier_enc,
                                       browser_binding, redirect_uri, app_state, code_challenge, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                (&scope.tenant_id, Type::UUID),
                (&project_of(scope)?, Type::UUID),
                (&state_hash.to_vec(), Type::BYTEA),
                (&connection, Type::UUID),
                (&nonce, Type::TEXT),
                (&pkce_sealed, Type::TEXT),
                (&browser_hash.to_vec(), Type::BYTEA),
                (&ret_uri, Type::TEXT),
                (&ret_state, Type::TEXT),
                (&ret_challenge, Type::TEXT),
                (&now, Type::TIMESTAMPTZ),
                (&expires, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Finish an upstream sign-in at the callback: the state used once and by the browser
    /// that started, the code exchanged with the PKCE verifier, the id_token checked
    /// (signature by the provider's JWKS, issuer, audience, expiry, nonce), then the user
    /// found by this identity, linked by verified email, or created.
    // The tenant and project are known only once the presented token or code is resolved.
    #[tracing::instrument(level = "debug", name = "upstream::upstream_finish", skip_all)]
    pub async fn upstream_finish(
        &self,
        state: &str,
        code: &str,
        browser_verifier: Option<&str>,
        callback_url: &str,
        client: &ClientInfo,
        ip: Option<IpAddr>,
    ) -> Result<(Scope, SignedInUser, Option<Return>), CoreError> {
        self.identity.refuse_guesser(ip).await?;
        let result: Result<(Scope, SignedInUser, Option<Return>), CoreError> = async {
            let now = self.identity.now();
            let row = preresolve::oauth_state_use(&self.identity.inner.router, &token_hash(state), now)
                .await?
                .ok_or(CoreError::UpstreamRefused("the sign-in request is unknown, used or expired (state)"))?;
            let binding: Vec<u8> = row.try_get(5)?;
            let presented = browser_verifier.map(token_hash);
            let same_browser =
                presented.is_some_and(|p| bool::from(subtle::ConstantTimeEq::ct_eq(&p[..], &binding[..])));
            if !same_browser {
                return Err(CoreError::UpstreamRefused("the sign-in was started in another browser (state)"));
            }
            let project: Uuid = row.try_get(1)?;
            let connection_id: Uuid = row.try_get(2)?;
            let nonce: String = row.try_get(3)?;
            let verifier = self
                .identity
                .inner
                .master_key
                .decrypt(&row.try_get::<String>(4)?)
                .map_err(|e| CoreError::Internal(format!("pkce verifier: {e}")))?;
            let ret = Return::from_columns(row.try_get(6)?, row.try_get(7)?, row.try_get(8)?);
            let profile = self.identity.profile(project).await?;
            let scope = scope_of(&profile);
            let (conn, secret) = self.connection_by(&scope, "id = $1", &connection_id, Type::UUID).await?;
            let signed_in = async {
                let tokens = self.redeem(&conn, &secret, code, &verifier, callback_url).await?;
                let who = match conn.kind {
                    ProviderKind::Github => self.github_user(tokens.access_token.as_deref()).await?,
                    _ => {
                        let id_token =
                            tokens.id_token.ok_or(CoreError::UpstreamRefused("the provider sent no id_token"))?;
                        self.check_id_token(&conn, &id_token, &nonce).await?
                    }
                };
                self.link_upstream(&scope, &conn, &who, client).await
            }
            .await;
            if let (Err(e), Some(org)) = (&signed_in, conn.organization_id) {
                // An organization's single sign-on that did not sign anyone in: why, in its log.
                let event = audit::Event {
                    action: crate::audit::AuditAction::SsoRefused,
                    actor: audit::Actor::anonymous(),
                    target: Some(("connection", conn.id.to_string())),
                    client,
                    metadata: serde_json::json!({
                        "connection": conn.slug, "organization_id": org, "reason": refusal_reason(e),
                    }),
                };
                // The refusal is what the caller hears; a log that could not be written is ours.
                if let Err(audit_err) =
                    audit::record(&self.identity.inner.router, &scope, event, self.identity.now()).await
                {
                    tracing::warn!(error = %audit_err, "sso.refused not recorded");
                }
            }
            Ok((scope, signed_in?, ret))
        }
        .await;
        self.identity.judge(ip, result).await
    }

    async fn redeem(
        &self,
        conn: &ConnectionInfo,
        secret: &str,
        code: &str,
        verifier: &str,
        callback_url: &str,
    ) -> Result<TokenResponse, CoreError> {
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", callback_url),
            ("code_verifier", verifier),
        ];
        let resp = self
            .identity
            .inner
            .http
            .post(conn.token_endpoint.as_deref().unwrap_or_default())
            .basic_auth(form_encode(&conn.client_id), Some(form_encode(secret)))
            .header("accept", "application/json")
            .form(&form)
            .send()
            .await
            .map_err(upstream_err)?;
        let status = resp.status();
        let body: TokenResponse = resp.json().await.map_err(upstream_err)?;
        if !status.is_success() || body.error.is_some() {
            tracing::info!(status = %status, error = ?body.error, "upstream token exchange refused");
            return Err(CoreError::UpstreamRefused("the provider refused the code"));
        }
        Ok(body)
    }

    async fn jwks(&self, uri: &str, refresh: bool) -> Result<Arc<JwkSet>, CoreError> {
        let ttl = if refresh { JWKS_REFETCH_AFTER } else { JWKS_TTL };
        if let Some(set) = self.identity.inner.upstream_keys.get(uri, ttl) {
            return Ok(set);
        }
        let generation = self.identity.inner.upstream_keys.generation();
        let set: JwkSet = self
            .identity
            .inner
            .http
            .get(uri)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(upstream_err)?
            .json()
            .await
            .map_err(upstream_err)?;
        let set = Arc::new(set);
        self.identity.inner.upstream_keys.put(uri, set.clone(), generation);
        Ok(set)
    }

    async fn check_id_token(
        &self,
        conn: &ConnectionInfo,
        id_token: &str,
        nonce: &str,
    ) -> Result<UpstreamUser, CoreError> {
        const BAD: CoreError = CoreError::UpstreamRefused("the provider's id_token does not verify");
        let header = jsonwebtoken::decode_header(id_token).map_err(|_| BAD)?;
        let allowed = [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ];
        if !allowed.contains(&header.alg) {
            return Err(BAD);
        }
        let jwks_uri = conn.jwks_uri.as_deref().ok_or(BAD)?;
        let find = |set: &JwkSet| -> Option<Jwk> {
            match &header.kid {
                Some(kid) => set.find(kid).cloned(),
                None if set.keys.len() == 1 => set.keys.first().cloned(),
                None => None,
            }
        };
        let mut jwk = find(&*self.jwks(jwks_uri, false).await?);
        if jwk.is_none() {
            // A rotated key: fetch the set again (bounded by JWKS_REFETCH_AFTER).
            jwk = find(&*self.jwks(jwks_uri, true).await?);
        }
        let key = DecodingKey::from_jwk(&jwk.ok_or(BAD)?).map_err(|_| BAD)?;
        let issuer = conn.issuer.as_deref().ok_or(BAD)?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[issuer]);
        v.set_audience(&[&conn.client_id]);
        v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        v.leeway = 60;
        let claims = jsonwebtoken::decode::<IdClaims>(id_token, &key, &v).map_err(|e| {
            tracing::info!(error = %e, connection = %conn.id, "upstream id_token refused");
            BAD
        })?;
        let c = claims.claims;
        // OIDC Core 3.1.3.7: with several audiences, azp must be us.
        if c.aud.is_array() && c.azp.as_deref() != Some(conn.client_id.as_str()) {
            return Err(BAD);
        }
        let nonce_ok = c
            .nonce
            .as_deref()
            .is_some_and(|n| bool::from(subtle::ConstantTimeEq::ct_eq(n.as_bytes(), nonce.as_bytes())));
        if !nonce_ok {
            return Err(CoreError::UpstreamRefused("the id_token's nonce is not this sign-in's"));
        }
        let groups = match c.groups {
            serde_json::Value::String(g) => vec![g],
            serde_json::Value::Array(a) => a.into_iter().filter_map(|g| g.as_str().map(str::to_owned)).collect(),
            _ => Vec::new(),
        };
        Ok(UpstreamUser {
            subject: c.sub,
            email: c.email,
            email_verified: c.email_verified.is_true(),
            groups,
            given_name: c.given_name,
            family_name: c.family_name,
        })
    }

    /// GitHub is OAuth 2.0 without OIDC: the user and its primary verified email from its API.
    async fn github_user(&self, access_token: Option<&str>) -> Result<UpstreamUser, CoreError> {
        #[derive(Deserialize)]
        struct GhUser {
            id: i64,
        }
        #[derive(Deserialize)]
        struct GhEmail {
            email: String,
            primary: bool,
            verified: bool,
        }
        let token = access_token.ok_or(CoreError::UpstreamRefused("the provider sent no access token"))?;
        let get = |url: &'static str| {
            self.identity
                .inner
                .http
                .get(url)
                .bearer_auth(token)
                .header("accept", "application/vnd.github+json")
                .header("user-agent", "authio")
                .send()
        };
        let user: GhUser = get("https://api.github.com/user")
            .await
            .and_then(|r| r.error_for_status())
            .map_err(upstream_err)?
            .json()
            .await
            .map_err(upstream_err)?;
        let emails: Vec<GhEmail> = get("https://api.github.com/user/emails")
            .await
            .and_then(|r| r.error_for_status())
            .map_err(upstream_err)?
            .json()
            .await
            .map_err(upstream_err)?;
        let primary = emails.into_iter().find(|e| e.primary);
        Ok(UpstreamUser {
            subject: user.id.to_string(),
            email_verified: primary.as_ref().is_some_and(|e| e.verified),
            email: primary.map(|e| e.email),
            groups: Vec::new(),
            given_name: None,
            family_name: None,
        })
    }

    /// The user an upstream identity signs in as, in one transaction at the home: the one
    /// already linked; else the account with the same email if the provider verified it
    /// (linked now); else a new account (verified email only). Every decision is audited.
    ///
    /// Through an organization's own provider (single sign-on), an address at one of the
    /// organization's verified domains counts as verified, the project's sign-up policy gives
    /// way (the organization vouches for its people), and the user becomes or stays a member
    /// with the role its groups map to. Through any other provider, a person whose
    /// organization requires single sign-on is refused.
    pub(crate) async fn link_upstream(
        &self,
        scope: &Scope,
        conn: &ConnectionInfo,
        who: &UpstreamUser,
        client: &ClientInfo,
    ) -> Result<SignedInUser, CoreError> {
        let now = self.identity.now();
        let project = project_of(scope)?;
        // Turned off between the start and the callback: no sign-in.
        let presentation = self.identity.presentation(project).await?;
        presentation.require("oauth")?;
        let signup = &presentation.signup;
        let org = conn.organization_id;
        let tx = self.identity.inner.router.begin(scope).await?;
        let email = who.email.as_deref().map(Email::parse).transpose().ok().flatten();
        let at_org_domain = match (org, &email) {
            (Some(o), Some(e)) => {
                let domain = e.as_str().rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
                tx.query_opt(
                    "SELECT 1 FROM organization_domains WHERE organization_id = $1 AND domain = $2
                        AND verified_at IS NOT NULL",
                    &[(&o, Type::UUID), (&domain, Type::TEXT)],
                )
                .await?
                .is_some()
            }
            _ => false,
        };
        let linked = tx
            .query_opt(
                "UPDATE user_identities i SET last_used_at = $3 FROM users u
                 WHERE i.connection_id = $1 AND i.subject = $2 AND u.tenant_id = i.tenant_id AND u.id = i.user_id
                 RETURNING u.id, u.disabled, u.role, u.email",
                &[(&conn.id, Type::UUID), (&who.subject, Type::TEXT), (&now, Type::TIMESTAMPTZ)],
            )
            .await?;
        let mut pending: Vec<audit::EventRow> = Vec::new();
        let (user, user_email) = match linked {
            Some(r) => {
                if r.col::<bool>("disabled")? {
                    return Err(CoreError::Forbidden("this account is disabled"));
                }
                let user = SignedInUser { user_id: r.col("id")?, role: r.col("role")?, created: false };
                (user, r.col::<String>("email")?)
            }
            None => {
                let refuse = |reason: &'static str| {
                    let event = audit::Event {
                        action: crate::audit::AuditAction::UserIdentityLinkRefused,
                        actor: audit::Actor::anonymous(),
                        target: Some(("connection", conn.id.to_string())),
                        client,
                        metadata: serde_json::json!({"connection": conn.slug, "subject": who.subject, "reason": reason}),
                    };
                    audit::EventRow::new(scope, event, now)
                };
                // An organization's provider is run by the organization: its word counts for the
                // addresses at the organization's own verified domains, and for no other (its
                // `email_verified` cannot vouch for somebody else's address).
                // (Or an address the provider verified that belongs to one of the organization's
                // own active members: people it admitted from elsewhere sign in through it too.)
                let member_elsewhere = match (org, &email) {
                    (Some(o), Some(e)) if !at_org_domain && who.email_verified => tx
                        .query_opt(
                            "SELECT 1 FROM users u JOIN memberships m ON m.tenant_id = u.tenant_id AND m.user_id = u.id
                              WHERE u.email = $1 AND m.organization_id = $2 AND m.status = 'active'",
                            &[(&e.as_str(), Type::TEXT), (&o, Type::UUID)],
                        )
                        .await?
                        .is_some(),
                    _ => false,
                };
                let trusted = if org.is_some() { at_org_domain || member_elsewhere } else { who.email_verified };
                let Some(email) = email.filter(|_| trusted) else {
                    let (reason, refusal) = if org.is_some() {
                        (
                            "not_at_organization_domain",
                            "the address is not at one of the organization's verified domains",
                        )
                    } else {
                        ("email_not_verified", "the provider did not verify this account's email")
                    };
                    let row = refuse(reason)?;
                    tx.query(audit::INSERT_SQL, &row.params()).await?;
                    tx.commit().await?;
                    return Err(CoreError::UpstreamRefused(refusal));
                };
                let existing = tx
                    .query_opt(
                        "SELECT id, disabled, role, email_verified FROM users WHERE email = $1 FOR UPDATE",
                        &[(&email.as_str(), Type::TEXT)],
                    )
                    .await?
                    .map(|r| {
                        Ok::<_, CoreError>((
                            r.col::<Uuid>("id")?,
                            r.col::<bool>("disabled")?,
                            r.col::<Option<String>>("role")?,
                            r.col::<bool>("email_verified")?,
                        ))
                    })
                    .transpose()?;
                let mut sessions_ended = None;
                let (user, action) = match existing {
                    Some((_, true, _, _)) => return Err(CoreError::Forbidden("this account is disabled")),
                    Some((user_id, false, role, verified)) => {
                        if !verified {
                            // Whoever made this account never proved the address, and the
                            // provider just did: what they set up (a password, live sessions)
                            // is not the owner's, and goes.
                            tx.query(
                                "UPDATE users SET password_hash = NULL, email_verified = true, updated_at = $2
                                  WHERE id = $1",
                                &[(&user_id, Type::UUID), (&now, Type::TIMESTAMPTZ)],
                            )
                            .await?;
                            let ended = tx
                                .query(
                                    "UPDATE sessions SET revoked_at = $2, revoked_reason = 'unverified_account_linked'
                                      WHERE user_id = $1 AND revoked_at IS NULL RETURNING id",
                                    &[(&user_id, Type::UUID), (&now, Type::TIMESTAMPTZ)],
                                )
                                .await?;
                            sessions_ended = Some(ended.len());
                        }
                        (SignedInUser { user_id, role, created: false }, crate::audit::AuditAction::UserIdentityLinked)
                    }
                    None if scope.tenant_kind == authio_db::TenantKind::Platform => {
                        return Err(CoreError::Forbidden("sign-up is closed on the platform tenant"))
                    }
                    None if org.is_none() && !signup.admits(&email) => return Err(CoreError::SignupNotAllowed),
                    None => {
                        let u = crate::identity::users::insert(&tx, scope, &email, None, now).await?;
                        tx.query("UPDATE users SET email_verified = true WHERE id = $1", &[(&u.id, Type::UUID)])
                            .await?;
                        (
                            SignedInUser { user_id: u.id, role: None, created: true },
                            crate::audit::AuditAction::UserSignedUp,
                        )
                    }
                };
                tx.query(
                    "INSERT INTO user_identities (tenant_id, project_id, id, user_id, connection_id, subject, email,
                                                  created_at, last_used_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
                    &[
                        (&scope.tenant_id, Type::UUID),
                        (&project, Type::UUID),
                        (&Uuid::now_v7(), Type::UUID),
                        (&user.user_id, Type::UUID),
                        (&conn.id, Type::UUID),
                        (&who.subject, Type::TEXT),
                        (&email.as_str(), Type::TEXT),
                        (&now, Type::TIMESTAMPTZ),
                    ],
                )
                .await?;
                let decision = match (user.created, org.is_some()) {
                    (true, false) => "created_with_verified_email",
                    (true, true) => "created_at_organization_domain",
                    (false, false) => "linked_by_verified_email",
                    (false, true) => "linked_at_organization_domain",
                };
                let event = audit::Event {
                    action,
                    actor: audit::Actor::user(user.user_id, Some(email.as_str())),
                    target: Some(("user", user.user_id.to_string())),
                    client,
                    metadata: serde_json::json!({
                        "method": "oauth", "connection": conn.slug, "subject": who.subject, "decision": decision,
                        // Set when an account nobody had proved was taken over by its owner:
                        // its password was removed and this many sessions ended.
                        "unverified_account_sessions_ended": sessions_ended,
                    }),
                };
                pending.push(audit::EventRow::new(scope, event, now)?);
                (user, email.as_str().to_owned())
            }
        };
        // The profile follows the provider: what it says now replaces what it said before.
        fn name(n: &Option<String>) -> Option<&str> {
            n.as_deref().map(str::trim).filter(|n| !n.is_empty() && n.chars().count() <= 200 && !n.contains('\0'))
        }
        let (given, family) = (name(&who.given_name), name(&who.family_name));
        if given.is_some() || family.is_some() {
            tx.query(
                "UPDATE users SET given_name = coalesce($2, given_name), family_name = coalesce($3, family_name)
                  WHERE id = $1 AND (given_name IS DISTINCT FROM coalesce($2, given_name)
                                     OR family_name IS DISTINCT FROM coalesce($3, family_name))",
                &[(&user.user_id, Type::UUID), (&given, Type::TEXT), (&family, Type::TEXT)],
            )
            .await?;
        }
        let Some(org) = org else {
            if crate::identity::sso_policy::sso_required_for(&tx, Some(user.user_id), &user_email).await? {
                // Nothing of this attempt is kept (a new link is rolled back with it).
                return Err(CoreError::SsoRequired);
            }
            for row in &pending {
                tx.query(audit::INSERT_SQL, &row.params()).await?;
            }
            tx.commit().await?;
            return Ok(user);
        };
        // This organization's provider satisfies this organization, not another one that
        // requires its own (a member of it, or an address at its domains).
        if crate::identity::sso_policy::sso_required_except(&tx, Some(user.user_id), &user_email, Some(org)).await? {
            return Err(CoreError::SsoRequired);
        }
        // Single sign-on: the membership, with the role the provider's groups map to.
        let mapped = who.groups.iter().find_map(|g| conn.group_roles.get(g).and_then(|r| r.as_str()));
        let m = crate::orgs::provision_sso_member(&tx, scope, org, user.user_id, mapped, now).await?;
        let actor = audit::Actor::user(user.user_id, Some(&user_email));
        if let Some(action) = m.change {
            let event = audit::Event {
                action,
                actor: actor.clone(),
                target: Some(("user", user.user_id.to_string())),
                client,
                metadata: serde_json::json!({
                    "organization_id": org, "role": m.role, "status": "active", "via": "sso", "connection": conn.slug,
                }),
            };
            pending.push(audit::EventRow::new(scope, event, now)?);
        }
        for row in &pending {
            tx.query(audit::INSERT_SQL, &row.params()).await?;
        }
        let event = audit::Event {
            action: crate::audit::AuditAction::SsoSignedIn,
            actor,
            target: Some(("user", user.user_id.to_string())),
            client,
            metadata: serde_json::json!({
                "connection": conn.slug, "organization_id": org, "subject": who.subject, "role": m.role,
                "groups": who.groups.iter().take(50).collect::<Vec<_>>(),
            }),
        };
        audit::record_and_commit(tx, scope, event, now).await?;
        Ok(user)
    }
}

/// Why a single sign-on was refused, as the audit log keeps it: the refusal's own words for
/// what the provider or the organization decided; never the text of an internal failure.
pub(crate) fn refusal_reason(e: &CoreError) -> String {
    match e {
        CoreError::UpstreamRefused(why) | CoreError::Forbidden(why) => (*why).to_owned(),
        CoreError::SsoRequired => "another organization requires its own single sign-on".to_owned(),
        CoreError::SignupNotAllowed => "sign-up not allowed".to_owned(),
        CoreError::NotFound(what) => format!("{} not found", what.noun()),
        CoreError::Upstream(_) => "the provider could not be reached or answered badly".to_owned(),
        _ => "internal error".to_owned(),
    }
}

/// RFC 6749 2.3.1: client id and secret are form-encoded before HTTP Basic.
fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
