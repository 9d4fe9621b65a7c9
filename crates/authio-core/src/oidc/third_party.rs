//! Clients the project's administrators did not register, for MCP servers and agents: dynamic
//! registration (RFC 7591, with RFC 7592's read and delete), clients identified by the https URL
//! of their metadata document (Client ID Metadata Documents, fetched without reaching private
//! addresses), the project's protected resources and their scopes, users' consents to
//! third-party clients (at the home), and blocking a client.
use std::net::{IpAddr, SocketAddr};
use std::time::Duration as StdDuration;

use authio_db::{preresolve, RowExt, Scope, Type};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{OidcClient, Provider, SCOPES};
use crate::audit::{self, Actor};
use crate::authz::{Authorized, Permission};
use crate::crypto::opaque::{hash as token_hash, new_token};
use crate::identity::auth::{scope_of, Identity};
use crate::throttle::ip_key;
use crate::types::{project_of, ClientInfo, RedirectUri, ValidationError};
use crate::{Clock, CoreError};

/// How long a fetched metadata document is trusted before it is read again.
pub const DOCUMENT_TTL_SECS: i64 = 300;
/// The largest metadata document read.
const DOCUMENT_MAX_BYTES: usize = 16 * 1024;
/// A dynamic registration no authorization request used within this is removed.
pub const UNUSED_REGISTRATION_SECS: i64 = 24 * 3600;
/// Registrations per address per hour.
const REGISTRATIONS_PER_IP: i32 = 20;

fn metadata_error(m: &'static str) -> CoreError {
    CoreError::InvalidClientMetadata(m)
}

/// An RFC 7591 registration request. Metadata the server does not know is ignored (2).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RegistrationRequest {
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    pub client_name: Option<String>,
    pub client_uri: Option<String>,
    pub logo_uri: Option<String>,
    pub token_endpoint_auth_method: Option<String>,
    pub grant_types: Option<Vec<String>>,
    pub response_types: Option<Vec<String>>,
    pub scope: Option<String>,
}

/// RFC 7591 3.2.1 (and RFC 7592 3): the client as registered.
#[derive(Clone, Debug, Serialize)]
pub struct RegistrationResponse {
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// 0: the secret does not expire (present when a secret was issued).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_expires_at: Option<i64>,
    pub client_id_issued_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registration_access_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registration_client_uri: Option<String>,
    pub redirect_uris: Vec<String>,
    pub client_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logo_uri: Option<String>,
    pub token_endpoint_auth_method: String,
    pub grant_types: Vec<String>,
    pub response_types: Vec<String>,
    pub scope: String,
}

/// Client metadata as checked, from a registration or a metadata document.
struct Metadata {
    redirect_uris: Vec<String>,
    name: String,
    client_uri: Option<String>,
    logo_uri: Option<String>,
    public: bool,
    grant_types: Vec<String>,
}

fn https_url(u: &str) -> bool {
    u.len() <= 2048 && url::Url::parse(u).is_ok_and(|p| p.scheme() == "https" && p.host_str().is_some())
}

fn check_metadata(
    redirect_uris: &[String],
    name: Option<&str>,
    client_uri: Option<&str>,
    logo_uri: Option<&str>,
    method: Option<&str>,
    grant_types: Option<&[String]>,
    confidential_allowed: bool,
) -> Result<Metadata, CoreError> {
    if redirect_uris.is_empty() || redirect_uris.len() > 20 {
        return Err(CoreError::InvalidRedirectUri);
    }
    for u in redirect_uris {
        RedirectUri::parse(u).map_err(|_| CoreError::InvalidRedirectUri)?;
    }
    let name = name.map(str::trim).filter(|n| !n.is_empty());
    if name.is_some_and(|n| n.chars().count() > 200 || n.chars().any(char::is_control)) {
        return Err(metadata_error("client_name is 1-200 characters"));
    }
    if client_uri.is_some_and(|u| !https_url(u)) || logo_uri.is_some_and(|u| !https_url(u)) {
        return Err(metadata_error("client_uri and logo_uri are https URLs"));
    }
    let public = match method {
        None | Some("none") => true,
        Some("client_secret_basic") | Some("client_secret_post") if confidential_allowed => false,
        Some("client_secret_basic") | Some("client_secret_post") => {
            return Err(metadata_error("this project registers public clients only (token_endpoint_auth_method none)"))
        }
        Some(_) => {
            return Err(metadata_error("token_endpoint_auth_method is none, client_secret_basic or client_secret_post"))
        }
    };
    let grant_types =
        grant_types.map(<[String]>::to_vec).unwrap_or_else(|| super::GRANTS.iter().map(|g| (*g).to_owned()).collect());
    if !grant_types.iter().any(|g| g == "authorization_code")
        || grant_types.iter().any(|g| !super::GRANTS.contains(&g.as_str()))
    {
        return Err(metadata_error("grant_types are authorization_code and refresh_token"));
    }
    let host = url::Url::parse(&redirect_uris[0]).ok().and_then(|u| u.host_str().map(str::to_owned));
    Ok(Metadata {
        redirect_uris: redirect_uris.to_vec(),
        name: name
            .map(str::to_owned)
            .or_else(|| host.map(|h| h.chars().take(200).collect()))
            .unwrap_or_else(|| "Unnamed client".into()),
        client_uri: client_uri.map(str::to_owned),
        logo_uri: logo_uri.map(str::to_owned),
        public,
        grant_types,
    })
}

/// Whether an address may be fetched: public unicast only (loopback too when `loopback_ok`).
pub(crate) fn public_address(ip: IpAddr, loopback_ok: bool) -> bool {
    if ip.is_loopback() {
        return loopback_ok;
    }
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return public_address(IpAddr::V4(v4), loopback_ok);
            }
            let s = v6.segments();
            // Only global unicast (2000::/3), less the ranges that embed or tunnel to other
            // addresses: documentation (2001:db8::/32), Teredo (2001::/32), 6to4 (2002::/16).
            // (NAT64's 64:ff9b::/96 is outside 2000::/3.)
            let tunnel_or_documentation = (s[0] == 0x2001 && (s[1] == 0x0db8 || s[1] == 0)) || s[0] == 0x2002;
            (s[0] & 0xe000) == 0x2000 && !tunnel_or_documentation
        }
    }
}

impl OidcClient {
    /// Registered by someone other than the project's administrators: its users are asked
    /// for their consent.
    pub fn third_party(&self) -> bool {
        self.registration != "admin"
    }
}

impl Provider {
    /// A client by id for a project: a registered one (`oc_...`), or one named by its metadata
    /// document's URL as last read (by an authorization request: see
    /// [`Provider::client_for_request`]). `None` for unknown clients and for other projects'.
    pub async fn client_for(&self, project: Uuid, client_id: &str) -> Result<Option<OidcClient>, CoreError> {
        if client_id.starts_with("https://") || client_id.starts_with("http://") {
            if !self.identity.presentation(project).await?.metadata_document_clients {
                return Ok(None);
            }
            return self.oidc_client_in(project, client_id).await;
        }
        Ok(self.oidc_client_in(project, client_id).await?.filter(|c| c.project_id == project))
    }

    /// [`Provider::client_for`] for an authorization request, the one place a metadata document
    /// is fetched (when first seen, or when its cached copy is older than the time-to-live).
    pub(crate) async fn client_for_request(
        &self,
        project: Uuid,
        client_id: &str,
    ) -> Result<Option<OidcClient>, CoreError> {
        if client_id.starts_with("https://") || client_id.starts_with("http://") {
            return self.document_client(project, client_id).await;
        }
        self.client_for(project, client_id).await
    }

    /// A client whose id is its metadata document's URL.
    async fn document_client(&self, project: Uuid, url: &str) -> Result<Option<OidcClient>, CoreError> {
        let presentation = self.identity.presentation(project).await?;
        if !presentation.metadata_document_clients {
            return Ok(None);
        }
        let now = self.identity.now();
        if let Some(c) = self.oidc_client_in(project, url).await? {
            // A blocked client stays blocked whatever its document says now (and is not fetched).
            if c.blocked || c.fetched_at.is_some_and(|t| t > now - Duration::seconds(DOCUMENT_TTL_SECS)) {
                return Ok(Some(c));
            }
        }
        // Loopback (and plain http to it) only where the deployment allows plain-http upstreams
        // (development and tests) and the project is a development one: never a tenant's choice
        // alone, as the deployment's own loopback services would answer.
        let loopback_ok = presentation.development && self.identity.inner.settings.allow_http_upstreams;
        let document = self.fetch_document(url, loopback_ok).await?;
        let meta = document_metadata(url, &document)?;
        self.save_document_client(project, url, &meta, now).await?;
        self.oidc_client_in(project, url).await
    }

    /// Read a metadata document: https (http to loopback in a development project), the host's
    /// addresses checked after resolution and the connection pinned to a checked one, no
    /// redirects, a size cap and a timeout.
    async fn fetch_document(&self, url: &str, loopback_ok: bool) -> Result<serde_json::Value, CoreError> {
        let bad = |m: &'static str| CoreError::InvalidClientMetadata(m);
        let parsed = url::Url::parse(url).map_err(|_| bad("the client_id is not a URL"))?;
        let host = parsed.host_str().ok_or(bad("the client_id URL has no host"))?.to_owned();
        let scheme_ok = parsed.scheme() == "https" || (parsed.scheme() == "http" && loopback_ok);
        // The standard port only: no probing of other services on a public host.
        if !loopback_ok && parsed.port().is_some_and(|p| p != 443) {
            return Err(bad("a metadata document's URL uses the standard https port"));
        }
        if !scheme_ok
            || parsed.fragment().is_some()
            || !parsed.username().is_empty()
            || parsed.password().is_some()
            || parsed.path() == "/"
            || url.len() > 2048
        {
            return Err(bad("a metadata document's URL is https, with a path, without a fragment or credentials"));
        }
        let port = parsed.port_or_known_default().unwrap_or(443);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|_| bad("the metadata document's host does not resolve"))?
            .collect();
        if addrs.is_empty() || addrs.iter().any(|a| !public_address(a.ip(), loopback_ok)) {
            return Err(bad("the metadata document's host is not a public address"));
        }
        if parsed.scheme() == "http" && !addrs.iter().all(|a| a.ip().is_loopback()) {
            return Err(bad("a metadata document over http must be on loopback"));
        }
        // No proxy from the environment: it would resolve the name itself, around the check.
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(StdDuration::from_secs(5))
            .resolve(&host, addrs[0])
            .build()
            .map_err(|e| CoreError::Internal(format!("http client: {e}")))?;
        let mut resp = client
            .get(parsed)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|_| bad("the metadata document could not be fetched"))?;
        if !resp.status().is_success() {
            return Err(bad("the metadata document could not be fetched"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|_| bad("the metadata document could not be read"))? {
            body.extend_from_slice(&chunk);
            if body.len() > DOCUMENT_MAX_BYTES {
                return Err(bad("the metadata document is too large"));
            }
        }
        serde_json::from_slice(&body).map_err(|_| bad("the metadata document is not JSON"))
    }

    async fn save_document_client(
        &self,
        project: Uuid,
        url: &str,
        meta: &Metadata,
        now: DateTime<Utc>,
    ) -> Result<(), CoreError> {
        let profile = self.identity.profile(project).await?;
        let scope = scope_of(&profile);
        let scopes: Vec<String> = SCOPES.iter().map(|s| (*s).to_owned()).collect();
        let tx = self.identity.inner.router.begin_pinned(&scope).await?;
        let row = tx
            .query_one(
                "INSERT INTO oidc_clients (tenant_id, project_id, id, client_id, name, client_type, token_endpoint_auth_method,
                     redirect_uris, scopes, grant_types, created_at, registration, logo_uri, client_uri, fetched_at)
                 VALUES ($1, $2, $3, $4, $5, 'public', 'none', $6, $7, $8, $9, 'metadata_document', $10, $11, $9)
                 ON CONFLICT (project_id, client_id) WHERE registration = 'metadata_document'
                 DO UPDATE SET name = excluded.name, redirect_uris = excluded.redirect_uris, logo_uri = excluded.logo_uri,
                               client_uri = excluded.client_uri, fetched_at = excluded.fetched_at
                 RETURNING (xmax = 0) AS inserted",
                &[
                    (&scope.tenant_id, Type::UUID),
                    (&project, Type::UUID),
                    (&Uuid::now_v7(), Type::UUID),
                    (&url, Type::TEXT),
                    (&meta.name.as_str(), Type::TEXT),
                    (&meta.redirect_uris, Type::TEXT_ARRAY),
                    (&scopes, Type::TEXT_ARRAY),
                    (&meta.grant_types, Type::TEXT_ARRAY),
                    (&now, Type::TIMESTAMPTZ),
                    (&meta.logo_uri, Type::TEXT),
                    (&meta.client_uri, Type::TEXT),
                ],
            )
            .await?;
        if row.col::<bool>("inserted")? {
            let event = audit::Event {
                action: crate::audit::AuditAction::ClientRegistered,
                actor: Actor::anonymous(),
                target: Some(("oidc_client", url.to_owned())),
                client: &ClientInfo::default(),
                metadata: serde_json::json!({"registration": "metadata_document", "name": meta.name,
                                             "redirect_uris": meta.redirect_uris.len()}),
            };
            audit::record_pinned(&tx, &scope, event, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// RFC 7591: register a client for a project that allows it. Public clients only unless
    /// the project allows confidential ones; registrations per address are limited.
    pub async fn register_dynamic(
        &self,
        project: Uuid,
        req: &RegistrationRequest,
        registration_base: &str,
        ip: Option<IpAddr>,
        info: &ClientInfo,
    ) -> Result<RegistrationResponse, CoreError> {
        let presentation = self.identity.presentation(project).await?;
        if !presentation.dynamic_registration {
            return Err(CoreError::Forbidden("this project does not accept dynamic client registration"));
        }
        if let Some(ip) = ip {
            self.identity.limit("register:ip", &ip_key(ip), REGISTRATIONS_PER_IP, 3600).await?;
        }
        if req.response_types.as_ref().is_some_and(|r| r.iter().any(|t| t != "code")) {
            return Err(metadata_error("response_types is code"));
        }
        let meta = check_metadata(
            &req.redirect_uris,
            req.client_name.as_deref(),
            req.client_uri.as_deref(),
            req.logo_uri.as_deref(),
            req.token_endpoint_auth_method.as_deref(),
            req.grant_types.as_deref(),
            presentation.confidential_registration,
        )?;
        let profile = self.identity.profile(project).await?;
        let scope = scope_of(&profile);
        let client_id = format!("oc_{}", crate::crypto::opaque::random_hex::<12>());
        let secret = (!meta.public).then(|| new_token("ocs_").0);
        let secret_hash = secret.as_deref().map(|s| token_hash(s).to_vec());
        let (registration_token, reg_hash) = new_token("rat_");
        let method = if meta.public {
            "none"
        } else if req.token_endpoint_auth_method.as_deref() == Some("client_secret_post") {
            "client_secret_post"
        } else {
            "client_secret_basic"
        };
        let scopes: Vec<String> = SCOPES.iter().map(|s| (*s).to_owned()).collect();
        let now = crate::clock::now_as_stored(self.identity.inner.clock.as_ref());
        let tx = self.identity.inner.router.begin_pinned(&scope).await?;
        tx.query(
            "INSERT INTO oidc_clients (tenant_id, project_id, id, client_id, secret_hash, name, client_type,
                 token_endpoint_auth_method, redirect_uris, scopes, grant_types, created_at, registration, logo_uri,
                 client_uri, registration_token_hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'dynamic', $13, $14, $15)",
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&Uuid::now_v7(), Type::UUID),
                (&client_id, Type::TEXT),
                (&secret_hash, Type::BYTEA),
                (&meta.name.as_str(), Type::TEXT),
                (&if meta.public { "public" } else { "confidential" }, Type::TEXT),
                (&method, Type::TEXT),
                (&meta.redirect_uris, Type::TEXT_ARRAY),
                (&scopes, Type::TEXT_ARRAY),
                (&meta.grant_types, Type::TEXT_ARRAY),
                (&now, Type::TIMESTAMPTZ),
                (&meta.logo_uri, Type::TEXT),
                (&meta.client_uri, Type::TEXT),
                (&reg_hash.to_vec(), Type::BYTEA),
            ],
        )
        .await?;
        let event = audit::Event {
            action: crate::audit::AuditAction::ClientRegistered,
            actor: Actor::anonymous(),
            target: Some(("oidc_client", client_id.clone())),
            client: info,
            metadata: serde_json::json!({"registration": "dynamic", "name": meta.name, "public": meta.public,
                                         "redirect_uris": meta.redirect_uris.len()}),
        };
        audit::record_pinned(&tx, &scope, event, now).await?;
        tx.commit().await?;
        Ok(RegistrationResponse {
            client_secret_expires_at: secret.as_ref().map(|_| 0),
            client_secret: secret,
            client_id_issued_at: now.timestamp(),
            registration_access_token: Some(registration_token),
            registration_client_uri: Some(format!("{registration_base}/{client_id}")),
            redirect_uris: meta.redirect_uris,
            client_name: meta.name,
            client_uri: meta.client_uri,
            logo_uri: meta.logo_uri,
            token_endpoint_auth_method: method.to_owned(),
            grant_types: meta.grant_types,
            response_types: vec!["code".into()],
            scope: scopes.join(" "),
            client_id,
        })
    }

    /// RFC 7592: a dynamic registration, by its registration access token (compared in
    /// constant time; an unknown client and a wrong token answer alike).
    async fn registered(&self, project: Uuid, client_id: &str, token: &str) -> Result<OidcClient, CoreError> {
        let client = self.client_for(project, client_id).await?;
        let presented = token_hash(token);
        let ok = client.as_ref().is_some_and(|c| {
            c.registration == "dynamic"
                && c.registration_token_hash
                    .as_deref()
                    .is_some_and(|h| bool::from(subtle::ConstantTimeEq::ct_eq(&presented[..], h)))
        });
        match client {
            Some(c) if ok => Ok(c),
            _ => Err(CoreError::InvalidToken("the registration access token is not valid for this client")),
        }
    }

    pub async fn read_registration(
        &self,
        project: Uuid,
        client_id: &str,
        token: &str,
        registration_base: &str,
    ) -> Result<RegistrationResponse, CoreError> {
        let c = self.registered(project, client_id, token).await?;
        Ok(RegistrationResponse {
            client_id: c.client_id.clone(),
            client_secret: None,
            client_secret_expires_at: None,
            client_id_issued_at: 0,
            registration_access_token: None,
            registration_client_uri: Some(format!("{registration_base}/{}", c.client_id)),
            redirect_uris: c.redirect_uris,
            client_name: c.name,
            client_uri: c.client_uri,
            logo_uri: c.logo_uri,
            token_endpoint_auth_method: c.auth_method,
            grant_types: c.grant_types,
            response_types: vec!["code".into()],
            scope: c.scopes.join(" "),
        })
    }

    /// RFC 7592 2.3: the client is removed (revoked: its id is never reused, its sessions'
    /// refresh tokens stop working with it).
    pub async fn delete_registration(
        &self,
        project: Uuid,
        client_id: &str,
        token: &str,
        info: &ClientInfo,
    ) -> Result<(), CoreError> {
        let c = self.registered(project, client_id, token).await?;
        let profile = self.identity.profile(project).await?;
        let scope = scope_of(&profile);
        let now = crate::clock::now_as_stored(self.identity.inner.clock.as_ref());
        let tx = self.identity.inner.router.begin_pinned(&scope).await?;
        tx.query(
            "UPDATE oidc_clients SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1",
            &[(&c.id, Type::UUID), (&now, Type::TIMESTAMPTZ)],
        )
        .await?;
        let event = audit::Event {
            action: crate::audit::AuditAction::OidcClientRevoked,
            actor: Actor::anonymous(),
            target: Some(("oidc_client", c.client_id.clone())),
            client: info,
            metadata: serde_json::json!({"by": "registration_access_token"}),
        };
        audit::record_pinned(&tx, &scope, event, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Note the first use of a client (an unused dynamic registration expires).
    pub(crate) async fn mark_used(&self, client: &OidcClient) -> Result<(), CoreError> {
        if client.used_at.is_some() || client.registration != "dynamic" {
            return Ok(());
        }
        let profile = self.identity.profile(client.project_id).await?;
        let scope = scope_of(&profile);
        let now = self.identity.now();
        let tx = self.identity.inner.router.begin_pinned(&scope).await?;
        tx.query(
            "UPDATE oidc_clients SET used_at = $2 WHERE id = $1 AND used_at IS NULL",
            &[(&client.id, Type::UUID), (&now, Type::TIMESTAMPTZ)],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Remove dynamic registrations that no authorization request used within a day.
    pub async fn registration_gc(&self, now: DateTime<Utc>) -> Result<i32, CoreError> {
        Ok(preresolve::dynamic_client_gc(
            &self.identity.inner.router,
            now - Duration::seconds(UNUSED_REGISTRATION_SECS),
        )
        .await?)
    }

    /// The project's protected resources: (uri, scopes).
    pub async fn project_resources(&self, project: Uuid) -> Result<Vec<(String, Vec<String>)>, CoreError> {
        Ok(preresolve::project_resources(&self.identity.inner.router, project).await?)
    }

    /// RFC 8707: the resource a request names, if the client may ask for it (one of its own
    /// registered resources, or one the project declares), with the resource's scopes.
    pub async fn allowed_resource(
        &self,
        client: &OidcClient,
        requested: Option<&str>,
    ) -> Result<Option<(String, Vec<String>)>, CoreError> {
        let Some(r) = requested else { return Ok(None) };
        if client.resources.iter().any(|x| x == r) {
            return Ok(Some((r.to_owned(), Vec::new())));
        }
        let declared = self.project_resources(client.project_id).await?;
        declared
            .into_iter()
            .find(|(uri, _)| uri == r)
            .map(Some)
            .ok_or(CoreError::InvalidTarget("the resource is not one of this project's"))
    }
}

/// A metadata document's client metadata: its `client_id` must be the URL it was read from.
fn document_metadata(url: &str, doc: &serde_json::Value) -> Result<Metadata, CoreError> {
    let text = |k: &str| doc.get(k).and_then(serde_json::Value::as_str);
    if text("client_id") != Some(url) {
        return Err(metadata_error("the metadata document's client_id is not its URL"));
    }
    let list = |k: &str| -> Option<Vec<String>> {
        doc.get(k)?.as_array()?.iter().map(|v| v.as_str().map(str::to_owned)).collect()
    };
    let redirect_uris = list("redirect_uris").ok_or(CoreError::InvalidRedirectUri)?;
    if doc.get("client_secret").is_some() {
        return Err(metadata_error("a metadata document carries no secret"));
    }
    // A document is public for all to read: its client can hold no secret.
    if text("token_endpoint_auth_method").is_some_and(|m| m != "none") {
        return Err(metadata_error("a metadata document's client is public (token_endpoint_auth_method none)"));
    }
    check_metadata(
        &redirect_uris,
        text("client_name"),
        text("client_uri"),
        text("logo_uri"),
        None,
        list("grant_types").as_deref(),
        false,
    )
}

// ---------------------------------------------------------------------------------------
// Consents (at the home)

/// A user's consent to a third-party client, as listed on their connected-apps page.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Consent {
    pub id: Uuid,
    pub client_id: String,
    pub client_name: String,
    /// The resource the client may act at ('' for the project itself).
    pub resource: String,
    pub scopes: Vec<String>,
    pub granted_at: DateTime<Utc>,
}

impl Identity {
    /// Whether the user consented to this client, for this resource, to at least these scopes.
    pub async fn consented(
        &self,
        scope: &Scope,
        user: Uuid,
        client_id: &str,
        resource: &str,
        scopes: &[String],
    ) -> Result<bool, CoreError> {
        let rows = self
            .inner
            .router
            .read(
                scope,
                "SELECT scopes FROM consents WHERE user_id = $1 AND client_id = $2 AND resource = $3",
                &[(&user, Type::UUID), (&client_id, Type::TEXT), (&resource, Type::TEXT)],
            )
            .await?;
        let Some(r) = rows.first() else { return Ok(false) };
        let granted: Vec<String> = r.try_get(0)?;
        Ok(scopes.iter().all(|s| granted.contains(s)))
    }

    /// Record a consent (`consent.granted`); a later consent to more scopes widens it.
    pub async fn grant_consent(
        &self,
        scope: &Scope,
        user: Uuid,
        client: &OidcClient,
        resource: &str,
        scopes: &[String],
        info: &ClientInfo,
    ) -> Result<(), CoreError> {
        let project = project_of(scope)?;
        let now = self.now();
        let tx = self.inner.router.begin(scope).await?;
        tx.query(
            "INSERT INTO consents (tenant_id, project_id, id, user_id, client_id, client_name, resource, scopes, granted_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (tenant_id, user_id, client_id, resource)
             DO UPDATE SET scopes = ARRAY(SELECT DISTINCT unnest(consents.scopes || excluded.scopes)),
                           client_name = excluded.client_name, granted_at = excluded.granted_at",
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&Uuid::now_v7(), Type::UUID),
                (&user, Type::UUID),
                (&client.client_id.as_str(), Type::TEXT),
                (&client.name.as_str(), Type::TEXT),
                (&resource, Type::TEXT),
                (&scopes, Type::TEXT_ARRAY),
                (&now, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
        audit::record_and_commit(
            tx,
            scope,
            audit::Event {
                action: crate::audit::AuditAction::ConsentGranted,
                actor: Actor::user(user, None),
                target: Some(("oidc_client", client.client_id.clone())),
                client: info,
                metadata: serde_json::json!({"resource": resource, "scopes": scopes, "registration": client.registration}),
            },
            now,
        )
        .await
    }

    pub async fn list_consents(&self, scope: &Scope, user: Uuid) -> Result<Vec<Consent>, CoreError> {
        let rows = self
            .inner
            .router
            .read(
                scope,
                "SELECT id, client_id, client_name, resource, scopes, granted_at FROM consents
                 WHERE user_id = $1 ORDER BY granted_at DESC",
                &[(&user, Type::UUID)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Consent {
                    id: r.try_get(0)?,
                    client_id: r.try_get(1)?,
                    client_name: r.try_get(2)?,
                    resource: r.try_get(3)?,
                    scopes: r.try_get(4)?,
                    granted_at: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Revoke a consent (`consent.revoked`): the sessions of that grant end with it, so their
    /// refresh tokens stop working at once.
    pub async fn revoke_consent(
        &self,
        scope: &Scope,
        user: Uuid,
        id: Uuid,
        info: &ClientInfo,
    ) -> Result<(), CoreError> {
        let now = self.now();
        let tx = self.inner.router.begin(scope).await?;
        let gone = tx
            .query_opt(
                "DELETE FROM consents WHERE id = $1 AND user_id = $2 RETURNING client_id, resource",
                &[(&id, Type::UUID), (&user, Type::UUID)],
            )
            .await?
            .ok_or(CoreError::NotFound(crate::types::Entity::Consent))?;
        let (client_id, resource): (String, String) = (gone.col("client_id")?, gone.col("resource")?);
        let ended = tx
            .query(
                "UPDATE sessions SET revoked_at = $4, revoked_reason = 'consent_revoked'
                 WHERE user_id = $1 AND client_id = $2 AND coalesce(resource, '') = $3 AND revoked_at IS NULL
                 RETURNING id",
                &[(&user, Type::UUID), (&client_id, Type::TEXT), (&resource, Type::TEXT), (&now, Type::TIMESTAMPTZ)],
            )
            .await?
            .len();
        audit::record_and_commit(
            tx,
            scope,
            audit::Event {
                action: crate::audit::AuditAction::ConsentRevoked,
                actor: Actor::user(user, None),
                target: Some(("oidc_client", client_id)),
                client: info,
                metadata: serde_json::json!({"resource": resource, "sessions_ended": ended}),
            },
            now,
        )
        .await
    }
}

// ---------------------------------------------------------------------------------------
// The project's administrators: resources and blocking

/// A protected resource as declared.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ProtectedResource {
    pub id: Uuid,
    pub uri: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewResource {
    pub uri: String,
    pub name: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

fn scope_token_ok(s: &str) -> bool {
    // RFC 6749 3.3: NQCHAR, without the space.
    !s.is_empty()
        && s.len() <= 100
        && s.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

pub async fn create_resource(
    router: &authio_db::Router,
    clock: &dyn Clock,
    auth: &Authorized,
    new: &NewResource,
    info: &ClientInfo,
) -> Result<ProtectedResource, CoreError> {
    let scope = auth.require(Permission::ProjectConfigure)?;
    let project = project_of(scope)?;
    if !crate::types::resource_indicator_ok(&new.uri) || new.uri.len() > 512 {
        return Err(CoreError::Invalid(ValidationError::Field("uri (an absolute URI without a fragment, up to 512)")));
    }
    if new.scopes.len() > 50 || !new.scopes.iter().all(|s| scope_token_ok(s)) {
        return Err(CoreError::Invalid(ValidationError::Field("scopes (up to 50 scope tokens)")));
    }
    let name = new.name.clone().unwrap_or_else(|| new.uri.clone());
    let name = crate::types::DisplayName::parse(name.chars().take(200).collect::<String>().as_str())?;
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin_pinned(scope).await?;
    let row = tx
        .query_opt(
            "INSERT INTO protected_resources (tenant_id, project_id, id, uri, name, scopes, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (project_id, uri) DO NOTHING
             RETURNING id, uri, name, scopes, created_at",
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&Uuid::now_v7(), Type::UUID),
                (&new.uri.as_str(), Type::TEXT),
                (&name.as_str(), Type::TEXT),
                (&new.scopes, Type::TEXT_ARRAY),
                (&now, Type::TIMESTAMPTZ),
            ],
        )
        .await?
        .ok_or_else(|| CoreError::Conflict("this resource is declared already".into()))?;
    let event = audit::Event {
        action: crate::audit::AuditAction::ProjectSettingsChanged,
        actor: auth.actor().clone(),
        target: Some(("resource", new.uri.clone())),
        client: info,
        metadata: serde_json::json!({"resource": new.uri, "scopes": new.scopes}),
    };
    audit::record_pinned(&tx, scope, event, now).await?;
    tx.commit().await?;
    Ok(ProtectedResource {
        id: row.col("id")?,
        uri: row.col("uri")?,
        name: row.col("name")?,
        scopes: row.col("scopes")?,
        created_at: row.col("created_at")?,
    })
}

pub async fn list_resources(
    router: &authio_db::Router,
    auth: &Authorized,
) -> Result<Vec<ProtectedResource>, CoreError> {
    let scope = auth.require(Permission::ProjectRead)?;
    project_of(scope)?;
    let tx = router.begin_pinned(scope).await?;
    let rows = tx.query("SELECT id, uri, name, scopes, created_at FROM protected_resources ORDER BY uri", &[]).await?;
    tx.commit().await?;
    rows.iter()
        .map(|r| {
            Ok(ProtectedResource {
                id: r.col("id")?,
                uri: r.col("uri")?,
                name: r.col("name")?,
                scopes: r.col("scopes")?,
                created_at: r.col("created_at")?,
            })
        })
        .collect()
}

pub async fn delete_resource(router: &authio_db::Router, auth: &Authorized, id: Uuid) -> Result<(), CoreError> {
    let scope = auth.require(Permission::ProjectConfigure)?;
    project_of(scope)?;
    let tx = router.begin_pinned(scope).await?;
    let gone = tx.query("DELETE FROM protected_resources WHERE id = $1 RETURNING id", &[(&id, Type::UUID)]).await?;
    tx.commit().await?;
    if gone.is_empty() {
        return Err(CoreError::NotFound(crate::types::Entity::Resource));
    }
    Ok(())
}

/// Block (or unblock) a client: a blocked client's authorization requests, code exchanges and
/// refreshes are refused (`client.blocked`).
pub async fn block_client(
    router: &authio_db::Router,
    clock: &dyn Clock,
    auth: &Authorized,
    id: Uuid,
    blocked: bool,
    info: &ClientInfo,
) -> Result<(), CoreError> {
    let scope = auth.require(Permission::CredentialsManage)?;
    project_of(scope)?;
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin_pinned(scope).await?;
    let row = tx
        .query_opt(
            "UPDATE oidc_clients SET blocked_at = CASE WHEN $2 THEN coalesce(blocked_at, $3) END WHERE id = $1
             RETURNING client_id",
            &[(&id, Type::UUID), (&blocked, Type::BOOL), (&now, Type::TIMESTAMPTZ)],
        )
        .await?
        .ok_or(CoreError::NotFound(crate::types::Entity::Client))?;
    let event = audit::Event {
        action: crate::audit::AuditAction::ClientBlocked,
        actor: auth.actor().clone(),
        target: Some(("oidc_client", row.col::<String>("client_id")?)),
        client: info,
        metadata: serde_json::json!({"blocked": blocked}),
    };
    audit::record_pinned(&tx, scope, event, now).await?;
    tx.commit().await?;
    if blocked {
        // Its sessions end with it (their refresh tokens at once, their access tokens at
        // introspection).
        let client_id: String = row.col("client_id")?;
        let home = router.begin(scope).await?;
        home.query(
            "UPDATE sessions SET revoked_at = $2, revoked_reason = 'client_blocked'
             WHERE client_id = $1 AND revoked_at IS NULL",
            &[(&client_id, Type::TEXT), (&now, Type::TIMESTAMPTZ)],
        )
        .await?;
        home.commit().await?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_public_unicast_addresses_are_fetched() {
        let ok = |s: &str, lo: bool| public_address(s.parse().unwrap(), lo);
        assert!(ok("93.184.216.34", false));
        assert!(ok("2606:2800:220:1:248:1893:25c8:1946", false));
        for private in [
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::",
            "fc00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "224.0.0.1",
        ] {
            assert!(!ok(private, true), "{private}");
        }
        assert!(!ok("127.0.0.1", false) && ok("127.0.0.1", true));
        assert!(!ok("::1", false) && ok("::1", true));
    }

    #[test]
    fn a_document_must_name_its_own_url_and_carry_no_secret() {
        let url = "https://agent.example/client.json";
        let good = serde_json::json!({"client_id": url, "client_name": "Agent", "redirect_uris": ["http://127.0.0.1:3000/cb"]});
        assert_eq!(document_metadata(url, &good).unwrap().name, "Agent");
        let other =
            serde_json::json!({"client_id": "https://evil.example/x.json", "redirect_uris": ["http://127.0.0.1/cb"]});
        assert!(document_metadata(url, &other).is_err());
        let secret =
            serde_json::json!({"client_id": url, "redirect_uris": ["http://127.0.0.1/cb"], "client_secret": "x"});
        assert!(document_metadata(url, &secret).is_err());
        let confidential = serde_json::json!({"client_id": url, "redirect_uris": ["http://127.0.0.1/cb"],
                                              "token_endpoint_auth_method": "client_secret_basic"});
        assert!(document_metadata(url, &confidential).is_err());
        let no_redirects = serde_json::json!({"client_id": url});
        assert!(matches!(document_metadata(url, &no_redirects), Err(CoreError::InvalidRedirectUri)));
    }
}
