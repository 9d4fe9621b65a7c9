//! Every project as an OpenID Provider: registered clients, the authorization request, the
//! browser's sign-in at the provider (a signed cookie), authorization codes exchanged for ID,
//! access and refresh tokens, userinfo, and RP-initiated logout.
//!
//! Clients are pinned to the shared database (the token endpoint resolves the project from the
//! client id); codes are one-time tokens on shared (`signin_codes`, with the request's client,
//! scope, nonce and authentication time); sessions, users and the audit log are at the home.
use std::net::IpAddr;

use authio_db::{preresolve, PgRow, Router, RowExt, TenantKind, Type};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::audit::{self, Actor};
use crate::authz::{Authorized, Permission};
use crate::crypto::keys::Alg;
use crate::crypto::opaque::{hash as token_hash, new_token};
use crate::crypto::pkce::pkce_matches;
use crate::identity::auth::{scope_of, ClientGrant, Identity, UserTokens};
use crate::identity::signin::Guesser;
use crate::identity::signin::{with_query, SignedInUser};
use crate::throttle::ip_key;
use crate::types::ClientInfo;
use crate::types::{project_of, DisplayName, RedirectUri, ValidationError};
use crate::{Clock, CoreError};

pub mod third_party;

/// The scopes a project's provider knows.
pub const SCOPES: [&str; 5] = ["openid", "profile", "email", "offline_access", "organization"];
pub const GRANTS: [&str; 2] = ["authorization_code", "refresh_token"];

/// A token request's code exchange: the code and what must match it.
#[derive(Clone, Copy, Debug)]
pub struct CodeExchange<'a> {
    pub code: &'a str,
    pub redirect_uri: &'a str,
    /// The PKCE verifier (RFC 7636).
    pub verifier: Option<&'a str>,
    /// The client that authenticated (`None`: a hosted sign-in's code, for no client).
    pub client: Option<&'a OidcClient>,
    /// RFC 8707 `resource` of the token request.
    pub resource: Option<&'a str>,
}

/// The same, as checked (and, for the console, of one project only).
struct CodeRequest<'a> {
    code: &'a str,
    redirect_uri: &'a str,
    verifier: Option<&'a str>,
    /// The client that authenticated (`None`: a hosted sign-in's code, for no client).
    client: Option<&'a OidcClient>,
    /// RFC 8707 `resource` of the token request.
    resource: Option<&'a str>,
    /// The project the code must be of (the console's platform project).
    only_project: Option<Uuid>,
}

/// Whom a failed refresh counts against: the confidential client that authenticated, when the
/// refresh token names the client's own project (a backend with many users' stale tokens
/// throttles itself, not its address); the address otherwise, so that a client of one
/// project gets no guesses of its own at another project's tokens.
pub fn refresh_guesser(client: &OidcClient, presented: &str, ip: Option<IpAddr>) -> Guesser {
    let own = crate::identity::sessions::parse_refresh_token(presented).is_some_and(|(p, _)| p == client.project_id);
    if own && !client.public {
        Guesser::Client(client.client_id.clone())
    } else {
        Guesser::Address(ip)
    }
}

/// A registered client as resolved by its id.
#[derive(Clone, Debug)]
pub struct OidcClient {
    pub client_id: String,
    pub tenant_id: Uuid,
    pub project_id: Uuid,
    pub tenant_kind: TenantKind,
    secret_hash: Option<Vec<u8>>,
    pub public: bool,
    pub auth_method: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    pub grant_types: Vec<String>,
    pub name: String,
    /// `id_token_signed_response_alg` (RS256), or `None` for the project's current key.
    pub id_token_alg: Option<Alg>,
    /// The resource servers (RFC 8707) it may ask access tokens for.
    pub resources: Vec<String>,
    /// `admin` (first party), `dynamic` (RFC 7591) or `metadata_document`.
    pub registration: String,
    pub logo_uri: Option<String>,
    pub client_uri: Option<String>,
    /// Blocked by the project's administrators: refused everywhere.
    pub blocked: bool,
    pub fetched_at: Option<DateTime<Utc>>,
    pub used_at: Option<DateTime<Utc>>,
    registration_token_hash: Option<Vec<u8>>,
    pub id: Uuid,
}

impl OidcClient {
    fn from_row(client_id: &str, r: &PgRow) -> Result<Self, CoreError> {
        let kind: String = r.try_get(2)?;
        Ok(OidcClient {
            client_id: client_id.to_owned(),
            tenant_id: r.try_get(0)?,
            project_id: r.try_get(1)?,
            tenant_kind: TenantKind::parse(&kind).ok_or_else(|| CoreError::Internal(format!("tenant kind {kind}")))?,
            secret_hash: r.try_get(3)?,
            public: r.try_get::<String>(4)? == "public",
            auth_method: r.try_get(5)?,
            redirect_uris: r.try_get(6)?,
            post_logout_redirect_uris: r.try_get(7)?,
            scopes: r.try_get(8)?,
            grant_types: r.try_get(9)?,
            name: r.try_get(10)?,
            id_token_alg: r.try_get::<Option<String>>(11)?.as_deref().and_then(Alg::parse),
            resources: r.try_get(12)?,
            registration: r.try_get(13)?,
            logo_uri: r.try_get(14)?,
            client_uri: r.try_get(15)?,
            blocked: r.try_get::<Option<DateTime<Utc>>>(16)?.is_some(),
            fetched_at: r.try_get(17)?,
            used_at: r.try_get(18)?,
            registration_token_hash: r.try_get(19)?,
            id: r.try_get(20)?,
        })
    }

    pub fn allows_grant(&self, grant: &str) -> bool {
        self.grant_types.iter().any(|g| g == grant)
    }

    /// RFC 8707: the resource a token request names, if this client registered it.
    pub fn resource(&self, requested: Option<&str>) -> Result<Option<String>, CoreError> {
        match requested {
            None => Ok(None),
            Some(r) if self.resources.iter().any(|x| x == r) => Ok(Some(r.to_owned())),
            Some(_) => Err(CoreError::InvalidTarget("the resource is not registered for this client")),
        }
    }
}

/// A client to register.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOidcClient {
    pub name: String,
    /// `confidential` (a secret, `client_secret_basic` or `client_secret_post`) or `public`
    /// (no secret, PKCE required).
    pub client_type: String,
    pub redirect_uris: Vec<String>,
    #[serde(default)]
    pub post_logout_redirect_uris: Vec<String>,
    pub token_endpoint_auth_method: Option<String>,
    /// Default: all of `openid profile email offline_access`.
    pub scopes: Option<Vec<String>>,
    /// Default: `authorization_code` and `refresh_token`.
    pub grant_types: Option<Vec<String>>,
    /// `RS256` for ID tokens in RS256 whatever the project's key; absent: the project's key.
    pub id_token_signed_response_alg: Option<String>,
    /// RFC 8707: the resource servers (absolute URIs, up to 10) it may ask access tokens for;
    /// such a token's `aud` is the resource. Default: none (tokens for the project).
    #[serde(default)]
    pub resources: Vec<String>,
}

/// A registered client as listed (never its secret).
#[derive(Clone, Debug, Serialize)]
pub struct OidcClientInfo {
    pub id: Uuid,
    pub client_id: String,
    pub name: String,
    pub client_type: String,
    pub token_endpoint_auth_method: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    pub grant_types: Vec<String>,
    pub id_token_signed_response_alg: Option<String>,
    pub resources: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// `admin` (first party), `dynamic` (RFC 7591) or `metadata_document`.
    pub registration: String,
    pub logo_uri: Option<String>,
    pub client_uri: Option<String>,
    pub blocked_at: Option<DateTime<Utc>>,
}

const COLS: &str = "id, client_id, name, client_type, token_endpoint_auth_method, redirect_uris, \
                    post_logout_redirect_uris, scopes, grant_types, id_token_signed_response_alg, resources, created_at, revoked_at, \
                    registration, logo_uri, client_uri, blocked_at";

impl OidcClientInfo {
    /// A row of [`COLS`].
    fn from_row(r: &authio_db::Row) -> Result<Self, CoreError> {
        Ok(OidcClientInfo {
            id: r.col("id")?,
            client_id: r.col("client_id")?,
            name: r.col("name")?,
            client_type: r.col("client_type")?,
            token_endpoint_auth_method: r.col("token_endpoint_auth_method")?,
            redirect_uris: r.col("redirect_uris")?,
            post_logout_redirect_uris: r.col("post_logout_redirect_uris")?,
            scopes: r.col("scopes")?,
            grant_types: r.col("grant_types")?,
            id_token_signed_response_alg: r.col("id_token_signed_response_alg")?,
            resources: r.col("resources")?,
            created_at: r.col("created_at")?,
            revoked_at: r.col("revoked_at")?,
            registration: r.col("registration")?,
            logo_uri: r.col("logo_uri")?,
            client_uri: r.col("client_uri")?,
            blocked_at: r.col("blocked_at")?,
        })
    }
}

fn bad(field: &'static str) -> CoreError {
    CoreError::Invalid(ValidationError::Field(field))
}

/// Register a client for the scope's project: its secret (confidential clients) is shown once.
#[tracing::instrument(level = "debug", name = "oidc::create_client", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn create_client(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    new: &NewOidcClient,
    info: &ClientInfo,
) -> Result<(OidcClientInfo, Option<String>), CoreError> {
    let scope = auth.require(Permission::CredentialsManage)?;
    let actor = auth.actor();
    let project = project_of(scope)?;
    let name = DisplayName::parse(&new.name)?;
    let public = match new.client_type.as_str() {
        "public" => true,
        "confidential" => false,
        _ => return Err(bad("client_type (confidential or public)")),
    };
    let method = match (public, new.token_endpoint_auth_method.as_deref()) {
        (true, None | Some("none")) => "none",
        (false, None | Some("client_secret_basic")) => "client_secret_basic",
        (false, Some("client_secret_post")) => "client_secret_post",
        _ => {
            return Err(bad(
                "token_endpoint_auth_method (client_secret_basic or client_secret_post; none for public clients)",
            ))
        }
    };
    if new.redirect_uris.is_empty() || new.redirect_uris.len() > 20 || new.post_logout_redirect_uris.len() > 20 {
        return Err(bad("redirect_uris (1-20)"));
    }
    for u in new.redirect_uris.iter().chain(&new.post_logout_redirect_uris) {
        RedirectUri::parse(u)?;
    }
    let scopes = new.scopes.clone().unwrap_or_else(|| SCOPES.iter().map(|s| (*s).to_owned()).collect());
    if !scopes.iter().any(|s| s == "openid") || scopes.iter().any(|s| !SCOPES.contains(&s.as_str())) {
        return Err(bad("scopes (openid, and any of profile, email, offline_access, organization)"));
    }
    let grants = new.grant_types.clone().unwrap_or_else(|| GRANTS.iter().map(|s| (*s).to_owned()).collect());
    if !grants.iter().any(|g| g == "authorization_code") || grants.iter().any(|g| !GRANTS.contains(&g.as_str())) {
        return Err(bad("grant_types (authorization_code, and refresh_token)"));
    }
    // RS256 is always available (a companion key); other algorithms follow the project's key.
    let id_alg = match new.id_token_signed_response_alg.as_deref() {
        None => None,
        Some("RS256") => Some("RS256"),
        Some(_) => return Err(bad("id_token_signed_response_alg (RS256, or absent for the project's key)")),
    };
    if new.resources.len() > 10 || !new.resources.iter().all(|r| crate::types::resource_indicator_ok(r)) {
        return Err(bad("resources (up to 10 absolute URIs without a fragment)"));
    }
    let client_id = format!("oc_{}", crate::crypto::opaque::random_hex::<12>());
    let secret = (!public).then(|| new_token("ocs_").0);
    let hash = secret.as_deref().map(|s| crate::crypto::opaque::hash(s).to_vec());
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin_pinned(scope).await?;
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO oidc_clients (tenant_id, project_id, id, client_id, secret_hash, name, client_type,
                     token_endpoint_auth_method, redirect_uris, post_logout_redirect_uris, scopes, grant_types, created_at,
                     id_token_signed_response_alg, resources)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING {COLS}"
            ),
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&Uuid::now_v7(), Type::UUID),
                (&client_id, Type::TEXT),
                (&hash, Type::BYTEA),
                (&name.as_str(), Type::TEXT),
                (&new.client_type.as_str(), Type::TEXT),
                (&method, Type::TEXT),
                (&new.redirect_uris, Type::TEXT_ARRAY),
                (&new.post_logout_redirect_uris, Type::TEXT_ARRAY),
                (&scopes, Type::TEXT_ARRAY),
                (&grants, Type::TEXT_ARRAY),
                (&now, Type::TIMESTAMPTZ),
                (&id_alg, Type::TEXT),
                (&new.resources, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    let event = audit::Event {
        action: crate::audit::AuditAction::OidcClientCreated,
        actor: actor.clone(),
        target: Some(("oidc_client", client_id.clone())),
        client: info,
        metadata: serde_json::json!({"name": name.as_str(), "client_type": new.client_type, "redirect_uris": new.redirect_uris}),
    };
    audit::record_pinned(&tx, scope, event, now).await?;
    tx.commit().await?;
    Ok((OidcClientInfo::from_row(&row)?, secret))
}

#[tracing::instrument(level = "debug", name = "oidc::list_clients", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn list_clients(router: &Router, auth: &Authorized) -> Result<Vec<OidcClientInfo>, CoreError> {
    let scope = auth.require(Permission::ProjectRead)?;
    project_of(scope)?;
    let tx = router.begin_pinned(scope).await?;
    let rows = tx.query(&format!("SELECT {COLS} FROM oidc_clients ORDER BY id"), &[]).await?;
    tx.commit().await?;
    rows.iter().map(OidcClientInfo::from_row).collect()
}

#[tracing::instrument(level = "debug", name = "oidc::revoke_client", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn revoke_client(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    id: Uuid,
    info: &ClientInfo,
) -> Result<OidcClientInfo, CoreError> {
    let scope = auth.require(Permission::CredentialsManage)?;
    let actor = auth.actor();
    project_of(scope)?;
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin_pinned(scope).await?;
    let row = tx
        .query_opt(
            &format!("UPDATE oidc_clients SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1 RETURNING {COLS}"),
            &[(&id, Type::UUID), (&now, Type::TIMESTAMPTZ)],
        )
        .await?
        .ok_or(CoreError::NotFound(crate::types::Entity::Client))?;
    let c = OidcClientInfo::from_row(&row)?;
    if c.revoked_at == Some(now) {
        let event = audit::Event {
            action: crate::audit::AuditAction::OidcClientRevoked,
            actor: actor.clone(),
            target: Some(("oidc_client", c.client_id.clone())),
            client: info,
            metadata: serde_json::json!({}),
        };
        audit::record_pinned(&tx, scope, event, now).await?;
    }
    tx.commit().await?;
    Ok(c)
}

/// An authorization request's parameters as received.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct AuthorizeParams {
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub response_type: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub prompt: Option<String>,
    pub max_age: Option<String>,
    pub login_hint: Option<String>,
    pub response_mode: Option<String>,
    /// RFC 8707: one of the client's registered resources.
    pub resource: Option<String>,
    /// With scope `organization`: the organization the session is to act for (its user must be
    /// an active member).
    pub organization: Option<String>,
    /// OIDC Core 3.1.2.1: space-separated, in order of preference; `aal2` asks for a second
    /// factor in this sign-in (step-up on an existing session).
    pub acr_values: Option<String>,
}

/// A request that checked out.
#[derive(Clone, Debug)]
pub struct AuthzRequest {
    pub client: OidcClient,
    pub redirect_uri: String,
    pub scope: Vec<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub prompt_login: bool,
    pub prompt_none: bool,
    /// `prompt=consent`: a third-party client's consent page is shown even if the user
    /// consented before (first-party clients' registration is the consent).
    pub prompt_consent: bool,
    pub max_age: Option<i64>,
    pub login_hint: Option<String>,
    pub resource: Option<String>,
    pub organization: Option<Uuid>,
    /// `acr_values` asked for `aal2`: the sign-in must have passed a second factor.
    pub require_mfa: bool,
}

/// The `acr` values the provider knows: NIST SP 800-63B's assurance levels. `aal2` is a sign-in
/// with a second factor.
pub const ACR_VALUES: [&str; 2] = ["aal1", "aal2"];

/// Whether `acr_values` asks for a second factor. Values the provider does not know are
/// ignored (OIDC Core 3.1.2.1: acr_values is a voluntary request unless asked as an essential
/// claim, which this provider does not support).
pub fn acr_demands_mfa(acr_values: Option<&str>) -> bool {
    acr_values.unwrap_or("").split(' ').any(|v| v == "aal2")
}

/// Why a request cannot go on: shown on a page when the redirect URI cannot be trusted
/// (unknown client, unregistered URI), else returned to the client (RFC 6749 4.1.2.1).
#[derive(Debug)]
pub enum AuthzError {
    Page(&'static str),
    Redirect { redirect_uri: String, error: &'static str, description: &'static str, state: Option<String> },
}

impl AuthzError {
    /// The redirect's location, with `error`, `error_description`, `state` and `iss`
    /// (RFC 9207).
    pub fn location(&self, issuer: &str) -> Option<String> {
        match self {
            AuthzError::Page(_) => None,
            AuthzError::Redirect { redirect_uri, error, description, state } => {
                let mut p = vec![("error", *error), ("error_description", *description)];
                if let Some(s) = state {
                    p.push(("state", s.as_str()));
                }
                p.push(("iss", issuer));
                Some(with_query(redirect_uri, &p))
            }
        }
    }
}

/// The browser's sign-in at a project's provider: a cookie signed with a key derived from
/// the master key, naming the user and when and how they authenticated.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpSession {
    pub project_id: Uuid,
    pub user_id: Uuid,
    pub auth_time: i64,
    pub amr: Vec<String>,
    pub expires: i64,
}

/// Tokens from the token endpoint.
#[derive(Debug)]
pub struct OidcTokens {
    pub tokens: UserTokens,
    pub id_token: Option<String>,
    pub scope: String,
    /// Whether the refresh token is handed out (`offline_access`).
    pub offline: bool,
}

#[derive(Serialize)]
struct IdClaims<'a> {
    iss: &'a str,
    sub: String,
    aud: &'a str,
    azp: &'a str,
    exp: i64,
    iat: i64,
    auth_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    at_hash: String,
    amr: &'a [String],
    /// `aal2` when the sign-in passed a second factor, else `aal1`.
    acr: &'static str,
    sid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email_verified: Option<bool>,
    /// With scope `organization`: the organization the session acts for.
    #[serde(skip_serializing_if = "Option::is_none")]
    org_id: Option<String>,
}

/// OIDC Core 3.1.3.6: the left half of the hash of the access token, with the hash of the
/// ID token's algorithm (SHA-512 for Ed25519).
fn at_hash(alg: Alg, access_token: &str) -> String {
    let digest: Vec<u8> = match alg {
        Alg::EdDSA => Sha512::digest(access_token.as_bytes()).to_vec(),
        Alg::ES256 | Alg::RS256 => Sha256::digest(access_token.as_bytes()).to_vec(),
    };
    URL_SAFE_NO_PAD.encode(&digest[..digest.len() / 2])
}

const BAD_CODE: CoreError = CoreError::InvalidGrant("the code is invalid, used, expired or not for this request");

/// The project's OpenID Provider, built on the identity service (its sessions, keys and
/// profiles): clients, authorization requests, codes, userinfo, logout.
#[derive(Clone)]
pub struct Provider {
    identity: Identity,
}

impl Provider {
    pub fn new(identity: Identity) -> Self {
        Provider { identity }
    }

    /// Resolve a client by id for a project (a pre-resolution lookup on shared): a registered
    /// client (`oc_...`, of any project: the caller checks), or the project's row of a
    /// metadata-document client.
    pub(crate) async fn oidc_client_in(&self, project: Uuid, client_id: &str) -> Result<Option<OidcClient>, CoreError> {
        let shaped = (client_id.len() == 27 && client_id.starts_with("oc_"))
            || ((client_id.starts_with("https://") || client_id.starts_with("http://")) && client_id.len() <= 2048);
        if !shaped {
            return Ok(None);
        }
        let row = preresolve::resolve_oidc_client(&self.identity.inner.router, project, client_id).await?;
        row.map(|r| OidcClient::from_row(client_id, &r)).transpose()
    }

    /// Authenticate a client at the token, revocation or introspection endpoint: by its
    /// registered method (a secret compared in constant time), public clients by id alone.
    /// Failures count against the address like other client failures.
    pub async fn authenticate_oidc_client(
        &self,
        project: Uuid,
        client_id: &str,
        secret: Option<&str>,
        method: &str,
        ip: Option<IpAddr>,
    ) -> Result<OidcClient, CoreError> {
        let now = self.identity.now();
        let key = ip.map(ip_key);
        self.identity.refuse_if_blocked(key.as_deref(), now)?;
        // Another project's client, and one its administrators blocked, do not authenticate here.
        let client = match self.client_for(project, client_id).await {
            Ok(c) => c.filter(|c| !c.blocked),
            Err(CoreError::InvalidClientMetadata(_)) => None,
            Err(e) => return Err(e),
        };
        // (authenticated, presented in another way than registered)
        let (ok, wrong_method) = match (&client, secret) {
            (Some(c), None) => (c.public && method == "none", !c.public),
            (Some(c), Some(s)) => {
                let presented = crate::crypto::opaque::hash(s);
                let expected = c.secret_hash.as_deref().unwrap_or(&[0u8; 32]);
                let right = bool::from(presented.ct_eq(expected)) && c.secret_hash.is_some();
                (right && c.auth_method == method, c.public || (right && c.auth_method != method))
            }
            (None, _) => {
                // Same work for unknown clients.
                let _ = secret.map(crate::crypto::opaque::hash);
                (false, false)
            }
        };
        match client {
            Some(c) if ok => Ok(c),
            other => {
                self.identity.count_credential_failure("oidc_client:ip", key, now).await?;
                // The registered method is no secret: naming it tells a developer what to fix.
                let registered = other.filter(|_| wrong_method).map(|c| match c.auth_method.as_str() {
                    "client_secret_post" => "client_secret_post",
                    "none" => "none (a public client: send client_id and no secret)",
                    _ => "client_secret_basic",
                });
                Err(registered.map_or(CoreError::InvalidClient, CoreError::WrongClientAuthMethod))
            }
        }
    }

    /// The algorithms ID tokens may be signed in: those of the keys the JWKS publishes, RS256
    /// always among them (its key made and published here if the project has none).
    pub async fn id_token_algs(&self, project: Uuid) -> Result<Vec<&'static str>, CoreError> {
        let profile = self.identity.profile(project).await?;
        let keys = self.identity.inner.keys.keyset_with_rs256(&profile).await?;
        Ok(keys.published_algs().iter().map(|a| a.as_str()).collect())
    }

    /// Check an authorization request (OIDC Core 3.1.2.1, RFC 7636).
    #[tracing::instrument(level = "debug", name = "oidc::authorization_request", skip_all, fields(project = %project))]
    pub async fn authorization_request(&self, project: Uuid, p: &AuthorizeParams) -> Result<AuthzRequest, AuthzError> {
        const NO_CLIENT: AuthzError = AuthzError::Page("unknown client");
        let client_id = p.client_id.as_deref().ok_or(AuthzError::Page("client_id is missing"))?;
        let client = match self.client_for_request(project, client_id).await {
            Ok(Some(c)) if c.blocked => return Err(AuthzError::Page("this client is blocked by the project")),
            Ok(Some(c)) => c,
            Ok(None) => return Err(NO_CLIENT),
            Err(CoreError::InvalidClientMetadata(m)) | Err(CoreError::Forbidden(m)) => return Err(AuthzError::Page(m)),
            Err(CoreError::InvalidRedirectUri) => {
                return Err(AuthzError::Page("the client's metadata document has no valid redirect_uris"))
            }
            Err(e) => {
                tracing::warn!(error = %e, "authorization request: client lookup failed");
                return Err(AuthzError::Page("the request cannot be served right now"));
            }
        };
        let redirect_uri = p.redirect_uri.clone().ok_or(AuthzError::Page("redirect_uri is missing"))?;
        if !client.redirect_uris.iter().any(|r| r == &redirect_uri) {
            return Err(AuthzError::Page("the redirect_uri is not registered for this client"));
        }
        let state = p.state.clone();
        let fail = |error, description| AuthzError::Redirect {
            redirect_uri: redirect_uri.clone(),
            error,
            description,
            state: state.clone(),
        };
        if state.as_deref().is_some_and(|s| s.len() > 512) || p.nonce.as_deref().is_some_and(|n| n.len() > 512) {
            return Err(fail("invalid_request", "state and nonce are at most 512 characters"));
        }
        // RFC 8707: the client's own resource, or one the project declares; its scopes may be
        // asked for with it.
        let (resource, resource_scopes) = match self.allowed_resource(&client, p.resource.as_deref()).await {
            Ok(Some((uri, scopes))) => (Some(uri), scopes),
            Ok(None) => (None, Vec::new()),
            Err(CoreError::InvalidTarget(_)) => {
                return Err(fail("invalid_target", "the resource is not one of this project's or this client's"))
            }
            Err(e) => {
                tracing::warn!(error = %e, "authorization request: resources not read");
                return Err(fail("temporarily_unavailable", "try again shortly"));
            }
        };
        let organization = match p.organization.as_deref() {
            None => None,
            Some(o) => Some(Uuid::parse_str(o).map_err(|_| fail("invalid_request", "organization must be an id"))?),
        };
        if p.response_type.as_deref() != Some("code") {
            return Err(fail("unsupported_response_type", "only response_type=code is supported"));
        }
        if p.response_mode.as_deref().is_some_and(|m| m != "query") {
            return Err(fail("invalid_request", "only response_mode=query is supported"));
        }
        let scope: Vec<String> =
            p.scope.as_deref().unwrap_or("").split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect();
        // OpenID Connect, or an OAuth 2.1 request for a resource (an MCP client's): no ID token
        // without `openid`.
        if !scope.iter().any(|s| s == "openid") && resource.is_none() {
            return Err(fail("invalid_scope", "the openid scope is required (or a resource)"));
        }
        if scope.iter().any(|s| !client.scopes.contains(s) && !resource_scopes.contains(s)) {
            return Err(fail("invalid_scope", "a requested scope is unknown or not allowed for this client"));
        }
        if organization.is_some() && !scope.iter().any(|s| s == "organization") {
            return Err(fail("invalid_request", "organization needs the organization scope"));
        }
        let code_challenge = match (p.code_challenge.as_deref(), p.code_challenge_method.as_deref()) {
            (None, _) if client.public => {
                return Err(fail("invalid_request", "PKCE (code_challenge with S256) is required for public clients"))
            }
            (None, _) => None,
            (Some(c), m) => {
                if crate::crypto::pkce::check_challenge(c, m).is_err() {
                    return Err(fail(
                        "invalid_request",
                        "code_challenge_method must be S256 with a 43-character challenge",
                    ));
                }
                Some(c.to_owned())
            }
        };
        // A client registered by the project's own administrators is first party: their
        // registration is the consent, so `prompt=consent` asks nothing more of its users; a
        // third-party client's users see the consent page again. `select_account` shows the sign-in page, where another account can sign
        // in (there is one account per browser session), as `login` does.
        let prompts: Vec<&str> = p.prompt.as_deref().unwrap_or("").split(' ').filter(|s| !s.is_empty()).collect();
        if prompts.iter().any(|x| !["none", "login", "consent", "select_account"].contains(x))
            || (prompts.contains(&"none") && prompts.len() > 1)
        {
            return Err(fail("invalid_request", "prompt is none, or any of login, consent, select_account"));
        }
        let max_age = match p.max_age.as_deref() {
            None => None,
            Some(m) => Some(
                m.parse::<i64>()
                    .ok()
                    .filter(|v| *v >= 0)
                    .ok_or_else(|| fail("invalid_request", "max_age is a number of seconds"))?,
            ),
        };
        if let Err(e) = self.mark_used(&client).await {
            tracing::warn!(error = %e, "authorization request: the client's first use not noted");
        }
        Ok(AuthzRequest {
            client,
            redirect_uri,
            scope,
            state,
            nonce: p.nonce.clone(),
            code_challenge,
            prompt_login: prompts.contains(&"login") || prompts.contains(&"select_account"),
            prompt_none: prompts.contains(&"none"),
            prompt_consent: prompts.contains(&"consent"),
            max_age,
            login_hint: p.login_hint.clone(),
            resource,
            organization,
            require_mfa: acr_demands_mfa(p.acr_values.as_deref()),
        })
    }

    /// Whether a browser's provider session may answer this request without a new sign-in.
    pub async fn usable_op_session(
        &self,
        req: &AuthzRequest,
        session: Option<&OpSession>,
    ) -> Result<Option<OpSession>, CoreError> {
        let Some(s) = session else { return Ok(None) };
        let now = self.identity.now().timestamp();
        if req.prompt_login || req.max_age.is_some_and(|m| s.auth_time + m < now) {
            return Ok(None);
        }
        self.signed_in(req.client.project_id, Some(s)).await
    }

    /// The browser's provider session for `project`, if it still stands: not expired, its
    /// sign-in method still offered, its user still enabled.
    pub async fn signed_in(&self, project: Uuid, session: Option<&OpSession>) -> Result<Option<OpSession>, CoreError> {
        let Some(s) = session else { return Ok(None) };
        let now = self.identity.now().timestamp();
        if s.project_id != project || s.expires <= now {
            return Ok(None);
        }
        // A browser signed in by a method the project has since turned off signs in again.
        let presentation = self.identity.presentation(s.project_id).await?;
        if !crate::identity::sessions::amr_still_offered(&s.amr, &|m| presentation.offers(m)) {
            return Ok(None);
        }
        // The user must still be allowed in.
        let profile = self.identity.profile(s.project_id).await?;
        let rows = self
            .identity
            .inner
            .router
            .read(&scope_of(&profile), "SELECT disabled FROM users WHERE id = $1", &[(&s.user_id, Type::UUID)])
            .await?;
        match rows.first() {
            Some(r) if !r.try_get::<bool>(0)? => Ok(Some(s.clone())),
            _ => Ok(None),
        }
    }

    /// The signed cookie value of a provider session for a user who just signed in.
    pub fn op_session_cookie(&self, project: Uuid, user: &SignedInUser, amr: &[&str], lifetime_secs: i64) -> String {
        let now = self.identity.now().timestamp();
        let s = OpSession {
            project_id: project,
            user_id: user.user_id,
            auth_time: now,
            amr: amr.iter().map(|a| (*a).to_owned()).collect(),
            expires: now + lifetime_secs,
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&s).unwrap_or_default());
        let mac = URL_SAFE_NO_PAD.encode(self.identity.inner.master_key.mac("op_session", payload.as_bytes()));
        format!("{payload}.{mac}")
    }

    /// Read a provider session cookie: its signature checked in constant time.
    pub fn read_op_session(&self, cookie: &str) -> Option<OpSession> {
        let (payload, mac) = cookie.split_once('.')?;
        let expected = URL_SAFE_NO_PAD.encode(self.identity.inner.master_key.mac("op_session", payload.as_bytes()));
        if !bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) {
            return None;
        }
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }

    /// Issue a code for a checked request and a signed-in browser: the redirect back to the
    /// client with `code`, `state` and `iss`.
    // The tenant and project are known only once the presented token or code is resolved.
    #[tracing::instrument(level = "debug", name = "oidc::issue_authorization_code", skip_all)]
    pub async fn issue_authorization_code(&self, req: &AuthzRequest, session: &OpSession) -> Result<String, CoreError> {
        let profile = self.identity.profile(req.client.project_id).await?;
        let scope = scope_of(&profile);
        let (code, hash) = new_token("ac_");
        let now = self.identity.now();
        let expires = now + Duration::seconds(self.identity.inner.settings.one_time.signin_code_ttl_secs);
        let auth_time = DateTime::from_timestamp(session.auth_time, 0).unwrap_or(now);
        let scope_text = req.scope.join(" ");
        if let Some(org) = req.organization {
            let router = &self.identity.inner.router;
            let member = crate::orgs::active_membership(router, &scope, org, session.user_id).await?.is_some()
                || crate::orgs::join_by_domain(router, &scope, org, session.user_id, now).await?;
            if !member {
                return Err(CoreError::NotAMember);
            }
        }
        let tx = self.identity.inner.router.begin_pinned(&scope).await?;
        tx.query(
            "INSERT INTO signin_codes (tenant_id, project_id, code_hash, user_id, amr, redirect_uri, code_challenge,
                                       created_at, expires_at, client_id, scope, nonce, auth_time, resource,
                                       organization_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            &[
                (&scope.tenant_id, Type::UUID),
                (&req.client.project_id, Type::UUID),
                (&hash.to_vec(), Type::BYTEA),
                (&session.user_id, Type::UUID),
                (&session.amr, Type::TEXT_ARRAY),
                (&req.redirect_uri, Type::TEXT),
                (&req.code_challenge, Type::TEXT),
                (&now, Type::TIMESTAMPTZ),
                (&expires, Type::TIMESTAMPTZ),
                (&req.client.client_id, Type::TEXT),
                (&scope_text, Type::TEXT),
                (&req.nonce, Type::TEXT),
                (&auth_time, Type::TIMESTAMPTZ),
                (&req.resource, Type::TEXT),
                (&req.organization, Type::UUID),
            ],
        )
        .await?;
        tx.commit().await?;
        let iss = self.identity.issuer(req.client.project_id);
        let mut p = vec![("code", code.as_str())];
        if let Some(s) = &req.state {
            p.push(("state", s.as_str()));
        }
        p.push(("iss", iss.as_str()));
        Ok(with_query(&req.redirect_uri, &p))
    }

    /// Exchange a code: once, by the client it was issued to (none for a hosted sign-in's
    /// code), with the same redirect URI and the PKCE verifier when a challenge was sent. A
    /// code presented again ends the session its first exchange started.
    // The tenant and project are known only once the presented token or code is resolved.
    #[tracing::instrument(level = "debug", name = "oidc::exchange_code", skip_all)]
    pub async fn exchange_code(
        &self,
        req: CodeExchange<'_>,
        info: &ClientInfo,
        ip: Option<IpAddr>,
    ) -> Result<OidcTokens, CoreError> {
        // Codes name no project until they are looked up: failures count against the address.
        let who = Guesser::Address(ip);
        self.identity.refuse_guesser_as(&who).await?;
        let CodeExchange { code, redirect_uri, verifier, client, resource } = req;
        let req = CodeRequest { code, redirect_uri, verifier, client, resource, only_project: None };
        let result = self.exchange_code_unjudged(req, info).await;
        self.identity.judge_as(&who, result).await
    }

    /// [`Provider::exchange_code`] for a hosted sign-in's code that must be of `project` (the
    /// console accepts codes of the platform project only): another project's code is used
    /// up and refused before any session starts.
    pub async fn exchange_code_of(
        &self,
        project: Uuid,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
        info: &ClientInfo,
        ip: Option<IpAddr>,
    ) -> Result<OidcTokens, CoreError> {
        self.identity.refuse_guesser(ip).await?;
        let req = CodeRequest {
            code,
            redirect_uri,
            verifier: Some(verifier),
            client: None,
            resource: None,
            only_project: Some(project),
        };
        let result = self.exchange_code_unjudged(req, info).await;
        self.identity.judge(ip, result).await
    }

    async fn exchange_code_unjudged(&self, req: CodeRequest<'_>, info: &ClientInfo) -> Result<OidcTokens, CoreError> {
        let CodeRequest { code, redirect_uri, verifier, client, resource, only_project } = req;
        let hash = token_hash(code);
        let row = preresolve::authorization_code_use(&self.identity.inner.router, &hash, self.identity.now())
            .await?
            .ok_or(BAD_CODE)?;
        let first_use: bool = row.try_get(0)?;
        let project: Uuid = row.try_get(2)?;
        if only_project.is_some_and(|p| p != project) {
            return Err(BAD_CODE);
        }
        let profile = self.identity.profile(project).await?;
        let scope = scope_of(&profile);
        if !first_use {
            // RFC 6749 4.1.2: a replayed code revokes what it granted.
            if let Some(sid) = row.try_get::<Option<Uuid>>(11)? {
                let _ = crate::identity::sessions::revoke(
                    &self.identity.inner.router,
                    self.identity.inner.clock.as_ref(),
                    &scope,
                    sid,
                    Actor::anonymous(),
                    info,
                )
                .await;
            }
            return Err(BAD_CODE);
        }
        let user_id: Uuid = row.try_get(3)?;
        let amr: Vec<String> = row.try_get(4)?;
        let stored_uri: String = row.try_get(5)?;
        let challenge: Option<String> = row.try_get(6)?;
        let code_client: Option<String> = row.try_get(7)?;
        let scope_text: Option<String> = row.try_get(8)?;
        let nonce: Option<String> = row.try_get(9)?;
        let auth_time: Option<DateTime<Utc>> = row.try_get(10)?;
        if code_client.as_deref() != client.map(|c| c.client_id.as_str()) || stored_uri != redirect_uri {
            return Err(BAD_CODE);
        }
        let pkce_ok = match (challenge.as_deref(), verifier) {
            (Some(c), Some(v)) => pkce_matches(c, v),
            (None, None) => client.is_some_and(|c| !c.public),
            _ => false,
        };
        if !pkce_ok {
            return Err(BAD_CODE);
        }
        let rows = self
            .identity
            .inner
            .router
            .read(
                &scope,
                // With it: whether an organization of the user requires a second factor.
                "SELECT u.disabled, u.role, u.email, u.email_verified,
                        EXISTS (SELECT 1 FROM memberships m
                                JOIN organizations o ON o.tenant_id = m.tenant_id AND o.id = m.organization_id
                                WHERE m.user_id = u.id AND m.status = 'active' AND o.mfa_required)
                 FROM users u WHERE u.id = $1",
                &[(&user_id, Type::UUID)],
            )
            .await?;
        let u = rows.first().ok_or(BAD_CODE)?;
        if u.try_get::<bool>(0)? {
            return Err(BAD_CODE);
        }
        let user = SignedInUser { user_id, role: u.try_get(1)?, created: false };
        // A code made before its sign-in method was turned off starts no session.
        let presentation = self.identity.presentation(project).await?;
        if !crate::identity::sessions::amr_still_offered(&amr, &|m| presentation.offers(m)) {
            return Err(CoreError::InvalidGrant("the code's sign-in method is no longer enabled for the project"));
        }
        // A code made without a second factor starts no session for a user whom policy now
        // requires one of (the sign-in that made it predates the policy).
        let policy_requires_mfa = presentation.mfa_required || u.try_get::<bool>(4)?;
        if !amr.iter().any(|a| a == "mfa") && policy_requires_mfa {
            return Err(CoreError::InvalidGrant("a second factor is required: sign in again"));
        }
        let amr_refs: Vec<&str> = amr.iter().map(String::as_str).collect();
        let scopes: Vec<&str> = scope_text.as_deref().unwrap_or("").split(' ').filter(|s| !s.is_empty()).collect();
        // RFC 8707 2.2: the token request may name the resource the authorization request
        // named (or, if that named none, one the client registered); by default the one the
        // authorization request named, else the project.
        let authorized: Option<String> = row.try_get(12)?;
        let resource = match (resource, authorized, client) {
            (None, authorized, _) => authorized,
            (Some(r), Some(a), _) if r == a => Some(a),
            // A third-party client's consent was for what its authorization request named.
            (Some(_), None, Some(c)) if c.third_party() => {
                return Err(CoreError::InvalidTarget("the resource is not the one the user consented to"))
            }
            (Some(r), None, Some(c)) => self.allowed_resource(c, Some(r)).await?.map(|(uri, _)| uri),
            _ => return Err(CoreError::InvalidTarget("the resource is not the one this code was issued for")),
        };
        // The organization the authorization request named: still an active membership now.
        let org = match row.try_get::<Option<Uuid>>(13)? {
            Some(o) => Some(
                crate::orgs::active_membership(&self.identity.inner.router, &scope, o, user_id)
                    .await?
                    .ok_or(CoreError::InvalidGrant("the user is no longer a member of the code's organization"))?,
            ),
            None => None,
        };
        let Some(client) = client else {
            // A hosted sign-in's hand-off: the app's own tokens, no ID token.
            let tokens = self.identity.start_session(&scope, &user, &amr_refs, info).await?;
            preresolve::authorization_code_started(&self.identity.inner.router, &hash, tokens.session_id).await?;
            return Ok(OidcTokens { tokens, id_token: None, scope: String::new(), offline: true });
        };
        let scope_claim = scope_text.clone().unwrap_or_default();
        // Keys first: no session starts unless its ID token can be signed in the client's
        // algorithm.
        let keys = match client.id_token_alg {
            Some(Alg::RS256) => self.identity.inner.keys.keyset_with_rs256(&profile).await?,
            _ => self.identity.inner.keys.keyset(&profile).await?,
        };
        let id_alg = client.id_token_alg.or(keys.alg()).unwrap_or(Alg::EdDSA);
        let tokens = self
            .identity
            .start_session_for(
                &scope,
                &user,
                &amr_refs,
                info,
                Some(ClientGrant { client_id: &client.client_id, scope: &scope_claim, resource: resource.as_deref() }),
                org.as_ref(),
            )
            .await?;
        preresolve::authorization_code_started(&self.identity.inner.router, &hash, tokens.session_id).await?;
        let iss = self.identity.issuer(project);
        let now = self.identity.now().timestamp();
        let email_scope = scopes.contains(&"email");
        let id = IdClaims {
            iss: &iss,
            sub: user_id.to_string(),
            aud: &client.client_id,
            azp: &client.client_id,
            exp: now + i64::from(profile.access_token_ttl_secs),
            iat: now,
            auth_time: auth_time.map(|t| t.timestamp()).unwrap_or(now),
            nonce: nonce.as_deref(),
            // OIDC Core 3.1.3.6: the hash of the ID token's own algorithm.
            at_hash: at_hash(id_alg, &tokens.access_token),
            amr: &amr,
            acr: crate::identity::mfa::acr_of(&amr),
            sid: tokens.session_id.to_string(),
            email: email_scope.then(|| u.try_get(2)).transpose()?,
            email_verified: email_scope.then(|| u.try_get(3)).transpose()?,
            org_id: org.as_ref().map(|o| o.id.to_string()),
        };
        // An OAuth 2.1 request for a resource without `openid` gets no ID token.
        let id_token =
            if scopes.contains(&"openid") { Some(keys.sign_id_token_as(&id, client.id_token_alg)?) } else { None };
        Ok(OidcTokens {
            tokens,
            id_token,
            scope: scope_claim,
            // OpenID Connect hands a refresh token out for `offline_access`; a plain OAuth 2.1
            // request (no `openid`, an MCP client's) gets one as OAuth does.
            offline: scopes.contains(&"offline_access") || !scopes.contains(&"openid"),
        })
    }

    /// OIDC Core 5.3: the claims the access token's scopes allow.
    #[tracing::instrument(level = "debug", name = "oidc::userinfo", skip_all, fields(project = %project))]
    pub async fn userinfo(&self, project: Uuid, access_token: &str) -> Result<serde_json::Value, CoreError> {
        let (claims, profile) = self.identity.verify_access_token(access_token).await?;
        if profile.project_id != project {
            return Err(CoreError::InvalidToken("another project's token"));
        }
        let scopes: Vec<&str> = claims.scope.as_deref().unwrap_or("").split(' ').collect();
        if claims.client_id.is_none() || claims.sid.is_none() || !scopes.contains(&"openid") {
            return Err(CoreError::InvalidToken("not an OpenID Connect access token"));
        }
        // A token for another resource server (RFC 8707) is not for this one.
        if claims.aud != profile.project_id.to_string() {
            return Err(CoreError::InvalidToken("a token for another resource"));
        }
        if !self.identity.access_token_live(&claims, &profile).await? {
            return Err(CoreError::InvalidToken("revoked"));
        }
        let user = Uuid::parse_str(&claims.sub).map_err(|_| CoreError::InvalidToken("sub"))?;
        let rows = self
            .identity
            .inner
            .router
            .read(
                &scope_of(&profile),
                "SELECT email, email_verified, updated_at FROM users WHERE id = $1 AND NOT disabled",
                &[(&user, Type::UUID)],
            )
            .await?;
        let r = rows.first().ok_or(CoreError::InvalidToken("the user is gone"))?;
        let mut out = serde_json::json!({"sub": claims.sub});
        if scopes.contains(&"email") {
            out["email"] = serde_json::Value::String(r.try_get(0)?);
            out["email_verified"] = serde_json::Value::Bool(r.try_get(1)?);
        }
        if scopes.contains(&"profile") {
            out["updated_at"] = serde_json::json!(r.try_get::<DateTime<Utc>>(2)?.timestamp());
        }
        Ok(out)
    }

    /// RP-initiated logout: the session named by the ID token ends. The hint may be expired
    /// but must be signed by this project. Returns the client it was issued to.
    #[tracing::instrument(level = "debug", name = "oidc::end_session", skip_all, fields(project = %project))]
    pub async fn end_session(
        &self,
        project: Uuid,
        id_token_hint: &str,
        info: &ClientInfo,
    ) -> Result<String, CoreError> {
        let profile = self.identity.profile(project).await?;
        let keys = self.identity.inner.keys.keyset(&profile).await?;
        let claims = crate::crypto::tokens::verify_id_token_hint(&keys, id_token_hint, &self.identity.issuer(project))?;
        if let Some(sid) = claims.sid.as_deref().and_then(|s| Uuid::parse_str(s).ok()) {
            let _ = crate::identity::sessions::revoke(
                &self.identity.inner.router,
                self.identity.inner.clock.as_ref(),
                &scope_of(&profile),
                sid,
                Actor::anonymous(),
                info,
            )
            .await;
        }
        Ok(claims.aud)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_hash_is_the_left_half_of_the_algs_hash() {
        // OIDC Core A.3's example token and at_hash (RS256).
        let token = "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y";
        assert_eq!(at_hash(Alg::RS256, token), "77QmUPtjPfzWtF2AnpK9RQ");
        assert_eq!(at_hash(Alg::EdDSA, token).len(), 43);
    }
}
