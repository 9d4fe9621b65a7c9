//! SAML 2.0 connections of an organization, the stored half: making one (from the identity
//! provider's metadata, by URL or XML, or from its three facts), changing one (certificate
//! rollover, enabling, sign-ins started at the identity provider), the request sent and the
//! Response received at the assertion consumer service, with the replay cache and the
//! confirmation step of an unsolicited sign-in. The protocol itself is in `saml`.
use std::collections::BTreeMap;
use std::net::IpAddr;

use authio_db::{preresolve, RowExt, Scope, Type};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::saml::{self, AttributeMap, AttributePreset, Refusal};
use super::upstream::{bad, ConnectionInfo, ProviderKind, Upstream, UpstreamUser};
use crate::authz::{Authorized, Permission};
use crate::crypto::opaque::{hash as token_hash, new_token};
use crate::identity::auth::scope_of;
use crate::identity::signin::{Return, SignedInUser};
use crate::types::{project_of, ClientInfo, Email};
use crate::{audit, CoreError};

/// The cookie that binds an SP-initiated SAML sign-in to the browser that started it.
pub const SAML_REQUEST_COOKIE: &str = "authio_saml_request";

/// How long the page asking "continue as ...?" after an unsolicited sign-in stays usable.
const CONFIRM_TTL: Duration = Duration::minutes(5);

/// A SAML connection's two sides, as listed.
#[derive(Clone, Debug, Serialize)]
pub struct SamlInfo {
    /// Ours: the entity id the identity provider knows us by (also where our metadata is).
    pub sp_entity_id: String,
    /// Ours: where the identity provider posts its Response (HTTP-POST binding).
    pub acs_url: String,
    /// Ours: the certificate assertions may be encrypted to (base64 DER).
    pub sp_certificate: String,
    pub idp_entity_id: String,
    /// The identity provider's single sign-on service (HTTP-Redirect binding).
    pub idp_sso_url: String,
    /// Its signing certificates (one, or two during a rollover).
    pub idp_certificates: Vec<CertificateInfo>,
    /// Sign-ins started at the identity provider are accepted (after a confirmation page).
    pub idp_initiated: bool,
    pub attribute_map: AttributeMap,
}

#[derive(Clone, Debug, Serialize)]
pub struct CertificateInfo {
    /// SHA-256 of the DER certificate, hex.
    pub sha256: String,
    /// The certificate, base64 DER.
    pub der: String,
}

impl SamlInfo {
    pub(crate) fn from_row(r: &authio_db::Row) -> Result<Option<Self>, CoreError> {
        if r.col::<String>("kind")? != "saml" {
            return Ok(None);
        }
        let certs: Vec<Vec<u8>> = r.col("idp_certificates")?;
        let map: serde_json::Value = r.col("attribute_map")?;
        Ok(Some(SamlInfo {
            sp_entity_id: r.col("client_id")?,
            acs_url: r.col("acs_url")?,
            sp_certificate: STANDARD.encode(r.col::<Vec<u8>>("sp_certificate")?),
            idp_entity_id: r.col::<Option<String>>("issuer")?.unwrap_or_default(),
            idp_sso_url: r.col("authorization_endpoint")?,
            idp_certificates: certs
                .iter()
                .map(|d| CertificateInfo { sha256: hex(&Sha256::digest(d)), der: STANDARD.encode(d) })
                .collect(),
            idp_initiated: r.col("idp_initiated")?,
            attribute_map: serde_json::from_value(map).map_err(|e| CoreError::Internal(e.to_string()))?,
        }))
    }

    fn certificates_der(&self) -> Vec<Vec<u8>> {
        self.idp_certificates.iter().filter_map(|c| STANDARD.decode(&c.der).ok()).collect()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A SAML connection to make. The identity provider is described by exactly one of: its
/// metadata XML, its metadata URL (read once, now), or entity id + SSO URL + certificates.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct NewSamlConnection {
    pub slug: String,
    pub display_name: Option<String>,
    /// The organization whose single sign-on this is (required: a SAML connection is always
    /// an organization's).
    pub organization_id: Uuid,
    pub group_roles: Option<BTreeMap<String, String>>,
    pub idp_metadata_xml: Option<String>,
    pub idp_metadata_url: Option<String>,
    pub idp_entity_id: Option<String>,
    pub idp_sso_url: Option<String>,
    /// PEM or base64 DER; one, or two during a rollover.
    pub idp_certificates: Option<Vec<String>>,
    /// Default false.
    pub idp_initiated: Option<bool>,
    /// Default `generic` (the attribute names Okta, Entra ID and Google Workspace use, and
    /// the LDAP OIDs).
    pub attribute_preset: Option<AttributePreset>,
    /// Overrides the preset.
    pub attribute_map: Option<AttributeMap>,
}

/// A change to a connection (any kind; the SAML fields only for SAML). Absent fields stay.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ConnectionUpdate {
    pub enabled: Option<bool>,
    pub display_name: Option<String>,
    pub group_roles: Option<BTreeMap<String, String>>,
    /// Re-read the identity provider's metadata (its certificates and SSO URL; the entity id
    /// must stay the same).
    pub idp_metadata_xml: Option<String>,
    pub idp_metadata_url: Option<String>,
    /// Replace the signing certificates: list the old and the new one during a rollover,
    /// then only the new one.
    pub idp_certificates: Option<Vec<String>>,
    pub idp_initiated: Option<bool>,
    pub attribute_map: Option<AttributeMap>,
}

/// The outcome of a Response at the assertion consumer service.
pub enum AcsOutcome {
    /// Signed in (a request we sent was answered).
    SignedIn { scope: Scope, user: SignedInUser, ret: Option<Return> },
    /// An unsolicited sign-in, held until the person confirms it on a page: the sealed
    /// confirmation, the value the browser keeps in a cookie, and whom it signs in.
    Confirm { token: String, browser: String, email: Option<String>, connection: String },
}

/// An unsolicited sign-in waiting for its confirmation (sealed with the master key).
#[derive(Serialize, Deserialize)]
struct Pending {
    project: Uuid,
    connection: Uuid,
    who: UpstreamUser,
    expires: DateTime<Utc>,
    /// SHA-256 of the browser's cookie value, hex.
    browser: String,
    /// Single use: kept in the replay cache once used.
    nonce: String,
    /// Where the sign-in returns (an SP-initiated one whose browser could not be told apart).
    #[serde(default)]
    ret: (Option<String>, Option<String>, Option<String>),
    /// An answer to our request (else started at the identity provider).
    #[serde(default)]
    solicited: bool,
}

impl Upstream {
    async fn idp_from(
        &self,
        xml: Option<&str>,
        url: Option<&str>,
        facts: (Option<&str>, Option<&str>, Option<&[String]>),
    ) -> Result<saml::IdpMetadata, CoreError> {
        let from_xml = |x: &str| saml::parse_idp_metadata(x).map_err(bad);
        let m = match (xml, url, facts) {
            (Some(x), None, (None, None, None)) => from_xml(x)?,
            (None, Some(u), (None, None, None)) => {
                self.check_upstream_url(u, "idp_metadata_url")?;
                let resp = self
                    .identity
                    .inner
                    .http
                    .get(u)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| CoreError::Upstream(format!("identity provider metadata: {e}")))?;
                // Read up to the limit, not whatever the server sends.
                let mut resp = resp;
                let mut body: Vec<u8> = Vec::new();
                while let Some(chunk) = resp.chunk().await.map_err(|e| CoreError::Upstream(format!("metadata: {e}")))? {
                    if body.len() + chunk.len() > saml::MAX_METADATA_LEN {
                        return Err(bad("idp_metadata_url (metadata over 1 MiB)"));
                    }
                    body.extend_from_slice(&chunk);
                }
                from_xml(std::str::from_utf8(&body).map_err(|_| bad("idp_metadata_url (not UTF-8 XML)"))?)?
            }
            (None, None, (Some(entity), Some(sso), Some(certs))) => saml::IdpMetadata {
                entity_id: entity.to_owned(),
                sso_url: sso.to_owned(),
                certificates: certificates(certs)?,
            },
            _ => return Err(bad(
                "idp_metadata_xml, idp_metadata_url, or idp_entity_id with idp_sso_url and idp_certificates (exactly \
                     one of the three)",
            )),
        };
        if m.entity_id.is_empty() || m.entity_id.len() > 1024 || m.entity_id.chars().any(char::is_control) {
            return Err(bad("idp_entity_id (1-1024 characters)"));
        }
        self.check_upstream_url(&m.sso_url, "idp_sso_url")?;
        for c in &m.certificates {
            saml::check_certificate(c).map_err(bad)?;
        }
        Ok(m)
    }

    /// Make a SAML connection for one of the project's organizations: its own key pair and
    /// certificate are made now; `base_url` is where this deployment is reached (our entity
    /// id and assertion consumer service are fixed from it, as the identity provider will be
    /// configured with them).
    #[tracing::instrument(level = "debug", name = "sso::create_saml_connection", skip_all, fields(tenant = %auth.tenant_id()))]
    pub async fn create_saml_connection(
        &self,
        auth: &Authorized,
        new: &NewSamlConnection,
        base_url: &str,
        client: &ClientInfo,
    ) -> Result<ConnectionInfo, CoreError> {
        let scope = auth.require(Permission::ProjectConfigure)?;
        let actor = auth.actor();
        let project = project_of(scope)?;
        let slug = crate::types::Slug::parse(&new.slug)?;
        if slug.as_str().len() > 32 {
            return Err(bad("slug (at most 32 characters)"));
        }
        let display_name = new.display_name.clone().unwrap_or_else(|| new.slug.clone());
        if display_name.is_empty() || display_name.chars().count() > 100 || display_name.contains('\0') {
            return Err(bad("display_name (1-100 characters)"));
        }
        let map =
            new.attribute_map.clone().unwrap_or_else(|| new.attribute_preset.unwrap_or(AttributePreset::Generic).map());
        map.check().map_err(bad)?;
        let idp = self
            .idp_from(
                new.idp_metadata_xml.as_deref(),
                new.idp_metadata_url.as_deref(),
                (new.idp_entity_id.as_deref(), new.idp_sso_url.as_deref(), new.idp_certificates.as_deref()),
            )
            .await?;
        let group_roles = self.check_organization(scope, Some(new.organization_id), new.group_roles.as_ref()).await?;
        let id = Uuid::now_v7();
        let base = format!("{}/p/{project}/saml/{id}", base_url.trim_end_matches('/'));
        let (sp_entity_id, acs_url) = (format!("{base}/metadata"), format!("{base}/acs"));
        let now = crate::clock::now_as_stored(self.identity.inner.clock.as_ref());
        let (key_pem, sp_cert) = tokio::task::spawn_blocking({
            let cn = format!("Authio SAML {}", slug.as_str());
            move || saml::new_sp_keypair(&cn, now)
        })
        .await
        .map_err(|e| CoreError::Internal(e.to_string()))?
        .map_err(CoreError::Internal)?;
        let sealed =
            self.identity.inner.master_key.encrypt(&key_pem).map_err(|e| CoreError::Internal(e.to_string()))?;
        let map_json = serde_json::to_value(&map).map_err(|e| CoreError::Internal(e.to_string()))?;
        let empty: Vec<String> = Vec::new();
        let tx = self.identity.inner.router.begin_pinned(scope).await?;
        let row = tx
            .query_opt(
                &format!(
                    "INSERT INTO oauth_connections (tenant_id, project_id, id, slug, kind, display_name, client_id,
                         client_secret_enc, issuer, authorization_endpoint, scopes, created_at, organization_id,
                         group_roles, acs_url, sp_certificate, idp_certificates, idp_initiated, attribute_map)
                     VALUES ($1, $2, $3, $4, 'saml', $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
                     ON CONFLICT (project_id, slug) DO NOTHING RETURNING {}",
                    super::upstream::COLS
                ),
                &[
                    (&scope.tenant_id, Type::UUID),
                    (&project, Type::UUID),
                    (&id, Type::UUID),
                    (&slug.as_str(), Type::TEXT),
                    (&display_name, Type::TEXT),
                    (&sp_entity_id, Type::TEXT),
                    (&sealed, Type::TEXT),
                    (&idp.entity_id, Type::TEXT),
                    (&idp.sso_url, Type::TEXT),
                    (&empty, Type::TEXT_ARRAY),
                    (&now, Type::TIMESTAMPTZ),
                    (&new.organization_id, Type::UUID),
                    (&group_roles, Type::JSONB),
                    (&acs_url, Type::TEXT),
                    (&sp_cert, Type::BYTEA),
                    (&idp.certificates, Type::BYTEA_ARRAY),
                    (&new.idp_initiated.unwrap_or(false), Type::BOOL),
                    (&map_json, Type::JSONB),
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
                "slug": info.slug, "kind": "saml", "issuer": idp.entity_id, "organization_id": new.organization_id,
                "idp_certificates": info.saml.as_ref().map(|s| s.idp_certificates.iter().map(|c| c.sha256.clone()).collect::<Vec<_>>()),
            }),
        };
        audit::record_pinned(&tx, scope, event, now).await?;
        tx.commit().await?;
        Ok(info)
    }

    #[tracing::instrument(level = "debug", name = "sso::get_connection", skip_all, fields(tenant = %auth.tenant_id()))]
    pub async fn get_connection(&self, auth: &Authorized, id: Uuid) -> Result<ConnectionInfo, CoreError> {
        let scope = auth.require(Permission::ProjectRead)?;
        self.connection(scope, id).await
    }

    /// A connection as listed (its secret or key not even unsealed).
    async fn connection(&self, scope: &Scope, id: Uuid) -> Result<ConnectionInfo, CoreError> {
        let tx = self.identity.inner.router.begin_pinned(scope).await?;
        let row = tx
            .query_opt(
                &format!("SELECT {} FROM oauth_connections WHERE id = $1", super::upstream::COLS),
                &[(&id, Type::UUID)],
            )
            .await?
            .ok_or(CoreError::NotFound(crate::types::Entity::Connection))?;
        tx.commit().await?;
        ConnectionInfo::from_row(&row)
    }

    /// Change a connection. Turning off the last enabled connection of an organization that
    /// requires single sign-on is refused, as deleting it is.
    #[tracing::instrument(level = "debug", name = "sso::update_connection", skip_all, fields(tenant = %auth.tenant_id()))]
    pub async fn update_connection(
        &self,
        auth: &Authorized,
        id: Uuid,
        upd: &ConnectionUpdate,
        client: &ClientInfo,
    ) -> Result<ConnectionInfo, CoreError> {
        let scope = auth.require(Permission::ProjectConfigure)?;
        let actor = auth.actor();
        let current = self.connection(scope, id).await?;
        let is_saml = current.kind == ProviderKind::Saml;
        let saml_fields = upd.idp_metadata_xml.is_some()
            || upd.idp_metadata_url.is_some()
            || upd.idp_certificates.is_some()
            || upd.idp_initiated.is_some()
            || upd.attribute_map.is_some();
        if saml_fields && !is_saml {
            return Err(bad("idp_* and attribute_map (only for a SAML connection)"));
        }
        if let Some(d) = &upd.display_name {
            if d.is_empty() || d.chars().count() > 100 || d.contains('\0') {
                return Err(bad("display_name (1-100 characters)"));
            }
        }
        if let Some(m) = &upd.attribute_map {
            m.check().map_err(bad)?;
        }
        let group_roles = match &upd.group_roles {
            Some(g) => Some(self.check_organization(scope, current.organization_id, Some(g)).await?),
            None => None,
        };
        let (certs, sso_url) = if is_saml && (upd.idp_metadata_xml.is_some() || upd.idp_metadata_url.is_some()) {
            let m = self
                .idp_from(upd.idp_metadata_xml.as_deref(), upd.idp_metadata_url.as_deref(), (None, None, None))
                .await?;
            let same = current.saml.as_ref().is_some_and(|s| s.idp_entity_id == m.entity_id);
            if !same || upd.idp_certificates.is_some() {
                return Err(bad("idp_metadata (the same entity id as the connection's; not with idp_certificates)"));
            }
            (Some(m.certificates), Some(m.sso_url))
        } else {
            (upd.idp_certificates.as_deref().map(certificates).transpose()?, None)
        };
        let required =
            if upd.enabled == Some(false) { self.sso_required(scope, current.organization_id).await? } else { false };
        let now = self.identity.now();
        let tx = self.identity.inner.router.begin_pinned(scope).await?;
        if let (true, Some(org)) = (required, current.organization_id) {
            last_connection_guard(&tx, org, id).await?;
        }
        let map_json = upd
            .attribute_map
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .map_err(|e| CoreError::Internal(e.to_string()))?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE oauth_connections SET enabled = coalesce($2, enabled), display_name = coalesce($3, display_name),
                         group_roles = coalesce($4, group_roles), idp_certificates = coalesce($5, idp_certificates),
                         authorization_endpoint = coalesce($6, authorization_endpoint),
                         idp_initiated = coalesce($7, idp_initiated), attribute_map = coalesce($8, attribute_map)
                      WHERE id = $1 RETURNING {}",
                    super::upstream::COLS
                ),
                &[
                    (&id, Type::UUID),
                    (&upd.enabled, Type::BOOL),
                    (&upd.display_name, Type::TEXT),
                    (&group_roles, Type::JSONB),
                    (&certs, Type::BYTEA_ARRAY),
                    (&sso_url, Type::TEXT),
                    (&upd.idp_initiated, Type::BOOL),
                    (&map_json, Type::JSONB),
                ],
            )
            .await?
            .ok_or(CoreError::NotFound(crate::types::Entity::Connection))?;
        let info = ConnectionInfo::from_row(&row)?;
        let mut changed = serde_json::Map::new();
        if let Some(e) = upd.enabled {
            changed.insert("enabled".into(), e.into());
        }
        if let Some(d) = &upd.display_name {
            changed.insert("display_name".into(), d.clone().into());
        }
        if upd.group_roles.is_some() {
            changed.insert("group_roles".into(), info.group_roles.clone());
        }
        if let (Some(_), Some(s)) = (&certs, &info.saml) {
            let prints: Vec<String> = s.idp_certificates.iter().map(|c| c.sha256.clone()).collect();
            changed.insert("idp_certificates".into(), prints.into());
        }
        if let Some(u) = &sso_url {
            changed.insert("idp_sso_url".into(), u.clone().into());
        }
        if let Some(i) = upd.idp_initiated {
            changed.insert("idp_initiated".into(), i.into());
        }
        if upd.attribute_map.is_some() {
            changed.insert("attribute_map".into(), true.into());
        }
        let event = audit::Event {
            action: crate::audit::AuditAction::ConnectionUpdated,
            actor: actor.clone(),
            target: Some(("connection", id.to_string())),
            client,
            metadata: serde_json::json!({"slug": info.slug, "kind": info.kind, "changed": changed}),
        };
        audit::record_pinned(&tx, scope, event, now).await?;
        tx.commit().await?;
        Ok(info)
    }

    /// Whether the organization requires single sign-on (read at the tenant's home).
    pub(crate) async fn sso_required(&self, scope: &Scope, org: Option<Uuid>) -> Result<bool, CoreError> {
        let Some(org) = org else { return Ok(false) };
        let tx = self.identity.inner.router.begin(scope).await?;
        let required = tx
            .query_opt("SELECT 1 FROM organizations WHERE id = $1 AND sso_required", &[(&org, Type::UUID)])
            .await?
            .is_some();
        tx.commit().await?;
        Ok(required)
    }

    /// Our metadata for one SAML connection (public: identity providers import it).
    pub async fn saml_metadata(&self, project: Uuid, connection: Uuid) -> Result<String, CoreError> {
        let profile = self.identity.profile(project).await?;
        let conn = self.connection(&scope_of(&profile), connection).await?;
        let s = conn.saml.ok_or(CoreError::NotFound(crate::types::Entity::Connection))?;
        let cert = STANDARD.decode(&s.sp_certificate).map_err(|e| CoreError::Internal(e.to_string()))?;
        Ok(saml::sp_metadata(&s.sp_entity_id, &s.acs_url, &cert))
    }

    /// The identity provider's URL for a new SP-initiated sign-in, and the value the browser
    /// keeps in a cookie (see [`SAML_REQUEST_COOKIE`]); the request is kept (by the hash of its
    /// id, single use, on the shared database) with where to return.
    pub(crate) async fn saml_start(
        &self,
        scope: &Scope,
        conn: &ConnectionInfo,
        ret: Option<&Return>,
    ) -> Result<(String, String), CoreError> {
        let s = conn.saml.as_ref().ok_or(CoreError::NotFound(crate::types::Entity::Connection))?;
        let request_id = saml::new_request_id();
        // The answer must come back to the browser that asked (no login CSRF): it keeps a
        // value whose hash the request holds. The HTTP-POST binding is a cross-site POST, so
        // that cookie is SameSite=None (Secure); where a browser does not send it, the person
        // confirms on a page instead. (The nonce and verifier columns are the OpenID flow's.)
        let (browser, binding) = new_token("");
        self.keep_state(scope, &token_hash(&request_id), conn.id, ("", ""), &binding, ret).await?;
        let now = self.identity.now();
        Ok((saml::authn_request_url(&s.idp_sso_url, &s.sp_entity_id, &s.acs_url, &request_id, now), browser))
    }

    /// A Response posted to a connection's assertion consumer service. Everything refused is
    /// in the organization's audit log as `sso.refused` with its reason; nothing is created.
    #[tracing::instrument(level = "debug", name = "sso::saml_acs", skip_all, fields(project = %project))]
    pub async fn saml_acs(
        &self,
        project: Uuid,
        connection: Uuid,
        saml_response: &str,
        browser: Option<&str>,
        client: &ClientInfo,
        ip: Option<IpAddr>,
    ) -> Result<AcsOutcome, CoreError> {
        self.identity.refuse_guesser(ip).await?;
        let result = async {
            let profile = self.identity.profile(project).await?;
            let scope = scope_of(&profile);
            let (conn, key_sealed) = self.connection_by(&scope, "id = $1", &connection, Type::UUID).await?;
            if conn.saml.is_none() || !conn.enabled {
                return Err(CoreError::NotFound(crate::types::Entity::Connection));
            }
            let outcome = self.accept_response(&scope, &conn, &key_sealed, saml_response, browser, client).await;
            if let Err(e) = &outcome {
                self.record_refusal(&scope, &conn, e, client).await;
            }
            outcome
        }
        .await;
        self.identity.judge(ip, result).await
    }

    async fn accept_response(
        &self,
        scope: &Scope,
        conn: &ConnectionInfo,
        key_pem: &str,
        saml_response: &str,
        browser: Option<&str>,
        client: &ClientInfo,
    ) -> Result<AcsOutcome, CoreError> {
        let s = conn.saml.as_ref().ok_or(CoreError::NotFound(crate::types::Entity::Connection))?;
        let now = self.identity.now();
        let certs = s.certificates_der();
        let (idp, sp, acs) = (s.idp_entity_id.clone(), s.sp_entity_id.clone(), s.acs_url.clone());
        let (response, key) = (saml_response.to_owned(), key_pem.to_owned());
        // Parsing, signatures and decryption are CPU work: off the request threads.
        let asserted = tokio::task::spawn_blocking(move || {
            let expect = saml::Expect {
                idp_entity_id: &idp,
                sp_entity_id: &sp,
                acs_url: &acs,
                idp_certificates: &certs,
                sp_key_pem: &key,
                now,
            };
            saml::validate_response(&response, &expect)
        })
        .await
        .map_err(|e| CoreError::Internal(format!("SAML validation: {e}")))?
        .map_err(refused)?;
        // Unsolicited answers are refused before anything is kept for them.
        if asserted.in_response_to.is_none() && !s.idp_initiated {
            return Err(refused(Refusal::Unsolicited));
        }
        self.first_use(scope, conn.id, &format!("assertion:{}", asserted.assertion_id), asserted.not_on_or_after)
            .await?;
        // (ret columns, whether this browser is the one that asked)
        let (ret, same_browser) = match &asserted.in_response_to {
            Some(request) => {
                let row = preresolve::oauth_state_use(&self.identity.inner.router, &token_hash(request), now)
                    .await?
                    .ok_or(refused(Refusal::InResponseTo))?;
                let (p, c): (Uuid, Uuid) = (row.try_get(1)?, row.try_get(2)?);
                if Some(p) != scope.project_id || c != conn.id {
                    return Err(refused(Refusal::InResponseTo));
                }
                let binding: Vec<u8> = row.try_get(5)?;
                let same = browser
                    .map(token_hash)
                    .is_some_and(|h| bool::from(subtle::ConstantTimeEq::ct_eq(&h[..], &binding[..])));
                ((row.try_get(6)?, row.try_get(7)?, row.try_get(8)?), same)
            }
            None => ((None, None, None), false),
        };
        let who = upstream_user(&asserted, &s.attribute_map);
        if !same_browser {
            // Started at the identity provider, or in a browser that cannot be told to be the
            // one that asked: the person confirms on a page (a response posted to someone
            // else's browser stops there).
            let (browser, browser_hash) = new_token("");
            let (nonce, _) = new_token("");
            let email = who.email.clone();
            let pending = Pending {
                project: project_of(scope)?,
                connection: conn.id,
                who,
                expires: now + CONFIRM_TTL,
                browser: hex(&browser_hash),
                nonce,
                ret: ret.clone(),
                solicited: asserted.in_response_to.is_some(),
            };
            let json = serde_json::to_string(&pending).map_err(|e| CoreError::Internal(e.to_string()))?;
            let token =
                self.identity.inner.master_key.encrypt(&json).map_err(|e| CoreError::Internal(e.to_string()))?;
            return Ok(AcsOutcome::Confirm { token, browser, email, connection: conn.display_name.clone() });
        }
        let user = self.link_upstream(scope, conn, &who, client).await?;
        Ok(AcsOutcome::SignedIn { scope: *scope, user, ret: Return::from_columns(ret.0, ret.1, ret.2) })
    }

    /// Finish an unsolicited sign-in the person confirmed, in the browser the page was
    /// shown to, once.
    #[tracing::instrument(level = "debug", name = "sso::saml_confirm", skip_all, fields(project = %project))]
    pub async fn saml_confirm(
        &self,
        project: Uuid,
        connection: Uuid,
        token: &str,
        browser: Option<&str>,
        client: &ClientInfo,
        ip: Option<IpAddr>,
    ) -> Result<(Scope, SignedInUser, Option<Return>), CoreError> {
        self.identity.refuse_guesser(ip).await?;
        let result = async {
            const GONE: CoreError = CoreError::InvalidGrant("this sign-in is invalid, used or expired");
            let json = self.identity.inner.master_key.decrypt(token).map_err(|_| GONE)?;
            let pending: Pending = serde_json::from_str(&json).map_err(|_| GONE)?;
            let now = self.identity.now();
            let presented = browser.map(|b| hex(&token_hash(b)));
            let same_browser = presented
                .is_some_and(|p| bool::from(subtle::ConstantTimeEq::ct_eq(p.as_bytes(), pending.browser.as_bytes())));
            if pending.project != project || pending.connection != connection || now >= pending.expires || !same_browser
            {
                return Err(GONE);
            }
            let profile = self.identity.profile(project).await?;
            let scope = scope_of(&profile);
            let conn = self.connection(&scope, connection).await?;
            if !conn.enabled || conn.saml.as_ref().is_none_or(|s| !s.idp_initiated && !pending.solicited) {
                return Err(GONE);
            }
            self.first_use(&scope, conn.id, &format!("confirm:{}", pending.nonce), pending.expires)
                .await
                .map_err(|_| GONE)?;
            let user = self.link_upstream(&scope, &conn, &pending.who, client).await;
            if let Err(e) = &user {
                self.record_refusal(&scope, &conn, e, client).await;
            }
            let (u, st, ch) = pending.ret;
            Ok((scope, user?, Return::from_columns(u, st, ch)))
        }
        .await;
        self.identity.judge(ip, result).await
    }

    /// Keep `key` in the connection's replay cache until `until`; refused if it is there.
    async fn first_use(
        &self,
        scope: &Scope,
        connection: Uuid,
        key: &str,
        until: DateTime<Utc>,
    ) -> Result<(), CoreError> {
        let now = self.identity.now();
        let hash = Sha256::digest(key.as_bytes()).to_vec();
        // At least as long as the skew lets the assertion pass, and never forever.
        let until = (until + saml::CLOCK_SKEW).min(now + Duration::days(1));
        let tx = self.identity.inner.router.begin_pinned(scope).await?;
        tx.query(
            "DELETE FROM saml_assertions_seen WHERE tenant_id = $1 AND project_id = $2 AND expires_at < $3",
            &[(&scope.tenant_id, Type::UUID), (&project_of(scope)?, Type::UUID), (&now, Type::TIMESTAMPTZ)],
        )
        .await?;
        let fresh = tx
            .query_opt(
                "INSERT INTO saml_assertions_seen (tenant_id, project_id, connection_id, assertion_hash, expires_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1",
                &[
                    (&scope.tenant_id, Type::UUID),
                    (&project_of(scope)?, Type::UUID),
                    (&connection, Type::UUID),
                    (&hash, Type::BYTEA),
                    (&until, Type::TIMESTAMPTZ),
                ],
            )
            .await?
            .is_some();
        tx.commit().await?;
        if !fresh {
            return Err(refused(Refusal::Replayed));
        }
        Ok(())
    }

    async fn record_refusal(&self, scope: &Scope, conn: &ConnectionInfo, e: &CoreError, client: &ClientInfo) {
        let event = audit::Event {
            action: crate::audit::AuditAction::SsoRefused,
            actor: audit::Actor::anonymous(),
            target: Some(("connection", conn.id.to_string())),
            client,
            metadata: serde_json::json!({
                "connection": conn.slug, "organization_id": conn.organization_id, "kind": "saml",
                "reason": super::upstream::refusal_reason(e), "code": refusal_code(e),
            }),
        };
        if let Err(audit_err) = audit::record(&self.identity.inner.router, scope, event, self.identity.now()).await {
            tracing::warn!(error = %audit_err, "sso.refused not recorded");
        }
    }
}

fn refused(r: Refusal) -> CoreError {
    CoreError::UpstreamRefused(r.message())
}

/// The fixed code of a SAML refusal, for the audit log.
fn refusal_code(e: &CoreError) -> &'static str {
    const ALL: [Refusal; 19] = [
        Refusal::Malformed,
        Refusal::Doctype,
        Refusal::NotSuccess,
        Refusal::Unsigned,
        Refusal::BadSignature,
        Refusal::Wrapping,
        Refusal::Issuer,
        Refusal::Destination,
        Refusal::Recipient,
        Refusal::Audience,
        Refusal::Expired,
        Refusal::NotYetValid,
        Refusal::InResponseTo,
        Refusal::Unsolicited,
        Refusal::Replayed,
        Refusal::CommentInIdentity,
        Refusal::Decryption,
        Refusal::NoSubject,
        Refusal::TooLong,
    ];
    match e {
        CoreError::UpstreamRefused(m) => ALL.iter().find(|r| r.message() == *m).map(|r| r.code()).unwrap_or("refused"),
        CoreError::SsoRequired => "sso_required_elsewhere",
        CoreError::SignupNotAllowed => "signup_not_allowed",
        CoreError::Forbidden(_) => "forbidden",
        _ => "error",
    }
}

fn certificates(list: &[String]) -> Result<Vec<Vec<u8>>, CoreError> {
    if list.is_empty() || list.len() > saml::MAX_IDP_CERTIFICATES {
        return Err(bad("idp_certificates (one or two)"));
    }
    let mut out: Vec<Vec<u8>> = Vec::new();
    for c in list {
        if c.len() > 16 * 1024 {
            return Err(bad("idp_certificates (at most 16 KiB each)"));
        }
        let der = saml::certificate_der(c).map_err(bad)?;
        if !out.contains(&der) {
            out.push(der);
        }
    }
    Ok(out)
}

/// Who the assertion names: the NameID is the stable subject; the email comes from the
/// mapped attribute, else from a NameID that is an address. SAML has no `email_verified`:
/// an organization's identity provider vouches only for its verified domains (see
/// `link_upstream`).
fn upstream_user(a: &saml::Asserted, map: &AttributeMap) -> UpstreamUser {
    let email =
        a.first(&map.email).map(str::to_owned).or_else(|| Email::parse(&a.name_id).ok().map(|e| e.as_str().to_owned()));
    UpstreamUser {
        subject: a.name_id.clone(),
        email,
        email_verified: false,
        groups: a.all(&map.groups).into_iter().filter(|g| !g.is_empty() && !g.contains('\0')).take(200).collect(),
        given_name: a.first(&map.given_name).map(str::to_owned),
        family_name: a.first(&map.family_name).map(str::to_owned),
    }
}

/// Refuse to take away an SSO-required organization's last enabled connection (`id`). The
/// organization's connections are locked for the rest of the transaction.
pub(crate) async fn last_connection_guard(tx: &authio_db::ScopedTx, org: Uuid, id: Uuid) -> Result<(), CoreError> {
    let others = tx
        .query("SELECT id, enabled FROM oauth_connections WHERE organization_id = $1 FOR UPDATE", &[(&org, Type::UUID)])
        .await?
        .iter()
        .filter(|r| r.col::<Uuid>("id").ok() != Some(id) && r.col::<bool>("enabled").unwrap_or(false))
        .count();
    if others == 0 {
        return Err(CoreError::Conflict(
            "the organization requires single sign-on and this is its last connection: turn sso_required off first"
                .into(),
        ));
    }
    Ok(())
}
