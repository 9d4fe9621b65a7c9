//! Webhooks: a project's endpoints receive its event stream, in order, signed per Standard
//! Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<HMAC-SHA256>`, `whsec_`
//! secrets). Each endpoint keeps its place in the stream (`position`) at the tenant's home;
//! any node takes due endpoints from the shared schedule (FOR UPDATE SKIP LOCKED, a lease),
//! sends what follows their place one event at a time, and moves the place on after each
//! success: delivery is at least once, in order per endpoint, with the same `webhook-id` on
//! every attempt. Failures back off exponentially; an endpoint failing for three days is
//! disabled.
//!
//! Targets: https only, and never a private, loopback or link-local address, checked on the
//! addresses a name resolves to at connection time (the resolver below), so a name that
//! re-points after it was registered still cannot reach inside. A project in the `development`
//! environment may use plain http and private addresses (a receiver on the developer's own
//! machine). Responses get a timeout and at most 1 KiB of them is read.
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use authio_db::{preresolve, MasterKey, Router, Row, RowExt, Scope, TenantKind, Type};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use crate::authz::{Authorized, Permission};
use crate::types::{project_of, ClientInfo, Entity, ValidationError};
use crate::{audit, Clock, CoreError};

/// Failing this long disables an endpoint.
pub const GIVE_UP_AFTER_DAYS: i64 = 3;
/// How long the secret before a rotation keeps signing beside the new one.
pub const ROTATION_OVERLAP_HOURS: i64 = 24;
const EXCERPT_BYTES: usize = 1024;
const BATCH: i64 = 100;
/// Single-event replays that may wait for one endpoint at once.
const MAX_PENDING_REPLAYS: i32 = 100;

#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// A response must come within this.
    pub timeout: StdDuration,
    /// How often an endpoint with nothing new looks again.
    pub idle_recheck: StdDuration,
    /// The first retry's wait (doubling after, up to an hour).
    pub first_retry: StdDuration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            timeout: StdDuration::from_secs(10),
            idle_recheck: StdDuration::from_secs(1),
            first_retry: StdDuration::from_secs(5),
        }
    }
}

fn chrono_of(d: StdDuration) -> Duration {
    Duration::from_std(d).unwrap_or_else(|_| Duration::seconds(1))
}

fn bad(field: &'static str) -> CoreError {
    CoreError::Invalid(ValidationError::Field(field))
}

/// Whether a connection may go to `ip`: global addresses only, unless the project is in
/// development.
pub fn address_allowed(ip: IpAddr, development: bool) -> bool {
    if development {
        return true;
    }
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return address_allowed(IpAddr::V4(v4), false);
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

/// A URL an endpoint may have: https (or http in development), no user info, a host, at most
/// 2048 characters; an address literal must pass [`address_allowed`].
pub fn check_url(raw: &str, development: bool) -> Result<url::Url, CoreError> {
    let bad_url = || bad("url (https, at most 2048 characters, no user info, a public host)");
    if raw.len() > 2048 || raw.chars().any(char::is_control) {
        return Err(bad_url());
    }
    let u = url::Url::parse(raw).map_err(|_| bad_url())?;
    // Normalizing may lengthen it (a trailing `/`, percent-encoding, punycode): the stored
    // form is the one held to the limit.
    if u.as_str().len() > 2048 {
        return Err(bad_url());
    }
    let scheme_ok = u.scheme() == "https" || (development && u.scheme() == "http");
    if !scheme_ok || !u.username().is_empty() || u.password().is_some() || u.fragment().is_some() {
        return Err(bad_url());
    }
    match u.host() {
        None => return Err(bad_url()),
        Some(url::Host::Ipv4(ip)) if !address_allowed(IpAddr::V4(ip), development) => return Err(bad_url()),
        Some(url::Host::Ipv6(ip)) if !address_allowed(IpAddr::V6(ip), development) => return Err(bad_url()),
        _ => {}
    }
    Ok(u)
}

/// A new signing secret: `whsec_` and 32 random bytes in base64 (the Standard Webhooks form).
pub fn new_secret() -> String {
    format!("whsec_{}", STANDARD.encode(crate::crypto::opaque::random_bytes::<32>()))
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` under a `whsec_` secret.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &str) -> Result<String, CoreError> {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .map_err(|_| CoreError::Internal("a webhook secret is not base64".into()))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| CoreError::Internal(e.to_string()))?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Ok(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    /// The event types it receives (all when empty).
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    /// The last event position delivered.
    pub position: i64,
    pub attempts: i32,
    pub failing_since: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const ENDPOINT_COLS: &str = "id, url, event_types, enabled, disabled_reason, position, attempts, failing_since, \
     last_error, created_at, updated_at";

impl Endpoint {
    fn from_row(r: &Row) -> Result<Self, CoreError> {
        Ok(Endpoint {
            id: r.col("id")?,
            url: r.col("url")?,
            event_types: r.col("event_types")?,
            enabled: r.col("enabled")?,
            disabled_reason: r.col("disabled_reason")?,
            position: r.col("position")?,
            attempts: r.col("attempts")?,
            failing_since: r.col("failing_since")?,
            last_error: r.col("last_error")?,
            created_at: r.col("created_at")?,
            updated_at: r.col("updated_at")?,
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    pub url: String,
    #[serde(default)]
    pub event_types: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    /// Enabling again starts afresh: no failures counted, due at once.
    pub enabled: Option<bool>,
}

fn check_types(types: &[String]) -> Result<Vec<String>, CoreError> {
    if types.len() > 50 || types.iter().any(|t| !super::TYPES.contains(&t.as_str())) {
        return Err(bad("event_types (known event types, at most 50)"));
    }
    let mut t = types.to_vec();
    t.sort();
    t.dedup();
    Ok(t)
}

async fn development(router: &Router, project: Uuid) -> Result<bool, CoreError> {
    let row = preresolve::project_presentation(router, project).await?.ok_or(CoreError::NotFound(Entity::Project))?;
    Ok(row.try_get::<String>(7)? == "development")
}

async fn record(
    tx: authio_db::ScopedTx,
    auth: &Authorized,
    action: audit::AuditAction,
    id: Uuid,
    client: &ClientInfo,
    metadata: serde_json::Value,
    now: DateTime<Utc>,
) -> Result<(), CoreError> {
    let event = audit::Event {
        action,
        actor: auth.actor().clone(),
        target: Some(("webhook_endpoint", id.to_string())),
        client,
        metadata,
    };
    audit::record_and_commit(tx, auth.scope()?, event, now).await
}

/// Register an endpoint: it receives the events that follow (not the past ones; replay sends
/// those). Returns it with its signing secret, shown this once.
pub async fn create(
    router: &Router,
    clock: &dyn Clock,
    key: &MasterKey,
    auth: &Authorized,
    new: &NewEndpoint,
    client: &ClientInfo,
) -> Result<(Endpoint, String), CoreError> {
    let scope = *auth.require(Permission::CredentialsManage)?;
    let project = project_of(&scope)?;
    let url = check_url(&new.url, development(router, project).await?)?;
    let types = check_types(&new.event_types)?;
    let secret = new_secret();
    let sealed = key.encrypt(&secret).map_err(|e| CoreError::Internal(e.to_string()))?;
    let now = crate::clock::now_as_stored(clock);
    let id = Uuid::now_v7();
    let tx = router.begin(&scope).await?;
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO webhook_endpoints (tenant_id, project_id, id, url, event_types, secret_enc, position,
                                                created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, (SELECT coalesce(max(position), -1) FROM events), $7, $7)
                 RETURNING {ENDPOINT_COLS}"
            ),
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&id, Type::UUID),
                (&url.as_str(), Type::TEXT),
                (&types, Type::TEXT_ARRAY),
                (&sealed, Type::TEXT),
                (&now, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    let endpoint = Endpoint::from_row(&row)?;
    let meta = serde_json::json!({"url": endpoint.url, "event_types": endpoint.event_types});
    record(tx, auth, audit::AuditAction::WebhookEndpointCreated, id, client, meta, now).await?;
    // The schedule is on the shared database: written second, and the endpoint withdrawn if it
    // cannot be (no endpoint that nothing will ever serve).
    let scheduled = async {
        let tx = router.begin_pinned(&scope).await?;
        tx.query(
            "INSERT INTO webhook_schedule (tenant_id, project_id, endpoint_id, due_at) VALUES ($1, $2, $3, $4)",
            &[(&scope.tenant_id, Type::UUID), (&project, Type::UUID), (&id, Type::UUID), (&now, Type::TIMESTAMPTZ)],
        )
        .await?;
        tx.commit().await?;
        Ok::<(), CoreError>(())
    }
    .await;
    if let Err(e) = scheduled {
        let tx = router.begin(&scope).await?;
        tx.query("DELETE FROM webhook_endpoints WHERE id = $1", &[(&id, Type::UUID)]).await?;
        tx.commit().await?;
        return Err(e);
    }
    Ok((endpoint, secret))
}

pub async fn list(router: &Router, auth: &Authorized) -> Result<Vec<Endpoint>, CoreError> {
    let scope = auth.require(Permission::ProjectRead)?;
    project_of(scope)?;
    let tx = router.begin(scope).await?;
    let rows = tx.query(&format!("SELECT {ENDPOINT_COLS} FROM webhook_endpoints ORDER BY id"), &[]).await?;
    tx.commit().await?;
    rows.iter().map(Endpoint::from_row).collect()
}

/// Change an endpoint's URL, types or state.
pub async fn update(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    id: Uuid,
    patch: &EndpointPatch,
    client: &ClientInfo,
) -> Result<Endpoint, CoreError> {
    let scope = *auth.require(Permission::CredentialsManage)?;
    let project = project_of(&scope)?;
    let url = match &patch.url {
        Some(u) => Some(check_url(u, development(router, project).await?)?.to_string()),
        None => None,
    };
    let types = patch.event_types.as_deref().map(check_types).transpose()?;
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin(&scope).await?;
    let row = tx
        .query_opt(
            &format!(
                "UPDATE webhook_endpoints SET url = coalesce($2, url), event_types = coalesce($3, event_types),
                        enabled = coalesce($4, enabled),
                        disabled_reason = CASE WHEN $4 THEN NULL ELSE disabled_reason END,
                        attempts = CASE WHEN $4 THEN 0 ELSE attempts END,
                        failing_since = CASE WHEN $4 THEN NULL ELSE failing_since END,
                        updated_at = $5
                  WHERE id = $1 RETURNING {ENDPOINT_COLS}"
            ),
            &[
                (&id, Type::UUID),
                (&url, Type::TEXT),
                (&types, Type::TEXT_ARRAY),
                (&patch.enabled, Type::BOOL),
                (&now, Type::TIMESTAMPTZ),
            ],
        )
        .await?
        .ok_or(CoreError::NotFound(Entity::WebhookEndpoint))?;
    let endpoint = Endpoint::from_row(&row)?;
    let meta = serde_json::json!({"url": url, "event_types": types, "enabled": patch.enabled});
    record(tx, auth, audit::AuditAction::WebhookEndpointUpdated, id, client, meta, now).await?;
    if patch.enabled == Some(true) {
        preresolve::webhook_nudge(router, scope.tenant_id, id, now).await?;
    }
    Ok(endpoint)
}

/// Remove an endpoint (its delivery log goes with it).
pub async fn delete(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    id: Uuid,
    client: &ClientInfo,
) -> Result<(), CoreError> {
    let scope = *auth.require(Permission::CredentialsManage)?;
    project_of(&scope)?;
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin(&scope).await?;
    let row = tx
        .query_opt("DELETE FROM webhook_endpoints WHERE id = $1 RETURNING url", &[(&id, Type::UUID)])
        .await?
        .ok_or(CoreError::NotFound(Entity::WebhookEndpoint))?;
    let meta = serde_json::json!({"url": row.col::<String>("url")?});
    record(tx, auth, audit::AuditAction::WebhookEndpointDeleted, id, client, meta, now).await?;
    // The schedule row serves nothing now; a leftover one (a crash here) finds no endpoint
    // and is dropped by the sender.
    let tx = router.begin_pinned(&scope).await?;
    tx.query("DELETE FROM webhook_schedule WHERE endpoint_id = $1", &[(&id, Type::UUID)]).await?;
    tx.commit().await?;
    Ok(())
}

/// A new signing secret; the old one keeps signing beside it for 24 hours (receivers accept
/// either while they switch). Returns the new secret, shown this once.
pub async fn rotate_secret(
    router: &Router,
    clock: &dyn Clock,
    key: &MasterKey,
    auth: &Authorized,
    id: Uuid,
    client: &ClientInfo,
) -> Result<String, CoreError> {
    let scope = *auth.require(Permission::CredentialsManage)?;
    project_of(&scope)?;
    let secret = new_secret();
    let sealed = key.encrypt(&secret).map_err(|e| CoreError::Internal(e.to_string()))?;
    let now = crate::clock::now_as_stored(clock);
    let until = now + Duration::hours(ROTATION_OVERLAP_HOURS);
    let tx = router.begin(&scope).await?;
    tx.query_opt(
        "UPDATE webhook_endpoints SET previous_secret_enc = secret_enc, previous_until = $3, secret_enc = $2,
                updated_at = $4
          WHERE id = $1 RETURNING id",
        &[(&id, Type::UUID), (&sealed, Type::TEXT), (&until, Type::TIMESTAMPTZ), (&now, Type::TIMESTAMPTZ)],
    )
    .await?
    .ok_or(CoreError::NotFound(Entity::WebhookEndpoint))?;
    let meta = serde_json::json!({"previous_until": until});
    record(tx, auth, audit::AuditAction::WebhookSecretRotated, id, client, meta, now).await?;
    Ok(secret)
}

/// Send again every event since `since` (the endpoint's place in the stream moves back; what
/// follows is delivered again, in order).
pub async fn replay_since(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    id: Uuid,
    since: DateTime<Utc>,
    client: &ClientInfo,
) -> Result<Endpoint, CoreError> {
    let scope = *auth.require(Permission::CredentialsManage)?;
    project_of(&scope)?;
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin(&scope).await?;
    let row = tx
        .query_opt(
            &format!(
                "UPDATE webhook_endpoints
                    SET position = (SELECT coalesce(max(e.position), -1) FROM events e WHERE e.occurred_at < $2),
                        updated_at = $3
                  WHERE id = $1 RETURNING {ENDPOINT_COLS}"
            ),
            &[(&id, Type::UUID), (&since, Type::TIMESTAMPTZ), (&now, Type::TIMESTAMPTZ)],
        )
        .await?
        .ok_or(CoreError::NotFound(Entity::WebhookEndpoint))?;
    let endpoint = Endpoint::from_row(&row)?;
    let meta = serde_json::json!({"since": since});
    record(tx, auth, audit::AuditAction::WebhookReplayed, id, client, meta, now).await?;
    preresolve::webhook_nudge(router, scope.tenant_id, id, now).await?;
    Ok(endpoint)
}

/// Send one event again, out of the stream's order: the delivery loop sends it once (logged as
/// a replay) before it goes on. The endpoint must be enabled and subscribed to the event's type.
pub async fn replay_event(
    router: &Router,
    clock: &dyn Clock,
    auth: &Authorized,
    id: Uuid,
    event_id: Uuid,
    client: &ClientInfo,
) -> Result<Endpoint, CoreError> {
    let scope = *auth.require(Permission::CredentialsManage)?;
    project_of(&scope)?;
    let now = crate::clock::now_as_stored(clock);
    let since = now - Duration::days(super::RETENTION_DAYS);
    let tx = router.begin(&scope).await?;
    let ep = tx
        .query_opt(
            "SELECT enabled, event_types, cardinality(pending_replays) AS pending FROM webhook_endpoints
              WHERE id = $1 FOR UPDATE",
            &[(&id, Type::UUID)],
        )
        .await?
        .ok_or(CoreError::NotFound(Entity::WebhookEndpoint))?;
    let event = tx
        .query_opt(
            "SELECT position, type FROM events WHERE id = $1 AND occurred_at >= $2",
            &[(&event_id, Type::UUID), (&since, Type::TIMESTAMPTZ)],
        )
        .await?
        .ok_or(CoreError::NotFound(Entity::Event))?;
    if !ep.col::<bool>("enabled")? {
        return Err(CoreError::Conflict("the endpoint is disabled; enable it first".into()));
    }
    let types: Vec<String> = ep.col("event_types")?;
    let kind: String = event.col("type")?;
    if !types.is_empty() && !types.contains(&kind) {
        return Err(CoreError::Conflict(format!("the endpoint does not receive {kind} events")));
    }
    if ep.col::<i32>("pending")? >= MAX_PENDING_REPLAYS {
        return Err(CoreError::TooSoon(format!(
            "{MAX_PENDING_REPLAYS} replays are already waiting for this endpoint; retry once they are sent"
        )));
    }
    let position: i64 = event.col("position")?;
    let row = tx
        .query_one(
            &format!(
                "UPDATE webhook_endpoints
                    SET pending_replays = CASE WHEN $2 = ANY (pending_replays) THEN pending_replays
                                               ELSE pending_replays || $2 END,
                        updated_at = $3
                  WHERE id = $1 RETURNING {ENDPOINT_COLS}"
            ),
            &[(&id, Type::UUID), (&position, Type::INT8), (&now, Type::TIMESTAMPTZ)],
        )
        .await?;
    let endpoint = Endpoint::from_row(&row)?;
    let meta = serde_json::json!({"event_id": event_id, "type": kind});
    record(tx, auth, audit::AuditAction::WebhookReplayed, id, client, meta, now).await?;
    preresolve::webhook_nudge(router, scope.tenant_id, id, now).await?;
    Ok(endpoint)
}

/// One delivery attempt, as the log keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Delivery {
    pub id: Uuid,
    pub event_id: Uuid,
    pub event_type: String,
    pub position: i64,
    pub attempt: i32,
    pub status: Option<i32>,
    pub error: Option<String>,
    pub latency_ms: i32,
    pub response_excerpt: Option<String>,
    /// Sent by a replay of this one event.
    pub replay: bool,
    pub created_at: DateTime<Utc>,
}

/// An endpoint's delivery log, newest first.
pub async fn deliveries(router: &Router, auth: &Authorized, id: Uuid, limit: i64) -> Result<Vec<Delivery>, CoreError> {
    let scope = auth.require(Permission::ProjectRead)?;
    project_of(scope)?;
    let tx = router.begin(scope).await?;
    tx.query_opt("SELECT 1 FROM webhook_endpoints WHERE id = $1", &[(&id, Type::UUID)])
        .await?
        .ok_or(CoreError::NotFound(Entity::WebhookEndpoint))?;
    let rows = tx
        .query(
            "SELECT id, event_id, event_type, position, attempt, status, error, latency_ms, response_excerpt, replay,
                    created_at
               FROM webhook_deliveries WHERE endpoint_id = $1 ORDER BY id DESC LIMIT $2",
            &[(&id, Type::UUID), (&limit, Type::INT8)],
        )
        .await?;
    tx.commit().await?;
    rows.iter()
        .map(|r| {
            Ok(Delivery {
                id: r.col("id")?,
                event_id: r.col("event_id")?,
                event_type: r.col("event_type")?,
                position: r.col("position")?,
                attempt: r.col("attempt")?,
                status: r.col("status")?,
                error: r.col("error")?,
                latency_ms: r.col("latency_ms")?,
                response_excerpt: r.col("response_excerpt")?,
                replay: r.col("replay")?,
                created_at: r.col("created_at")?,
            })
        })
        .collect()
}

/// Resolves names for webhook connections and keeps only the addresses a project may reach:
/// the check happens on the addresses the connection then uses.
struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let development = DEVELOPMENT.try_with(|d| *d).unwrap_or(false);
            let allowed: Vec<SocketAddr> = found.into_iter().filter(|a| address_allowed(a.ip(), development)).collect();
            if allowed.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

tokio::task_local! {
    /// Whether the delivery under way is a development project's (it may reach private
    /// addresses): read by the resolver, which reqwest calls inside the sending task.
    static DEVELOPMENT: bool;
}

/// How long a node holds an endpoint it took: at least a minute, and room for the work window,
/// one more request and the writes after it.
fn lease_for(timeout: StdDuration) -> StdDuration {
    (timeout * 2 + StdDuration::from_secs(20)).max(StdDuration::from_secs(60))
}

/// How long after taking an endpoint a node may start a request to it (then it gives the
/// endpoint back, due at once): no request starts so late that it could outlive the lease, so
/// two nodes never serve one endpoint at the same time and its order holds.
fn work_window_for(timeout: StdDuration) -> StdDuration {
    lease_for(timeout).saturating_sub(timeout + StdDuration::from_secs(10))
}

/// An endpoint a node took, with the lease it holds it by.
#[derive(Clone, Copy)]
struct Taken {
    tenant: Uuid,
    project: Uuid,
    endpoint: Uuid,
    lease: DateTime<Utc>,
}

/// The delivery loop's worker: takes due endpoints and serves them.
#[derive(Clone)]
pub struct Sender {
    router: Router,
    clock: Arc<dyn Clock>,
    key: MasterKey,
    settings: WebhookSettings,
    http: reqwest::Client,
}

enum Outcome {
    Delivered { status: u16, latency_ms: i32, excerpt: String },
    Failed { status: Option<u16>, latency_ms: i32, excerpt: Option<String>, error: String },
}

impl Sender {
    pub fn new(
        router: Router,
        clock: Arc<dyn Clock>,
        key: MasterKey,
        settings: WebhookSettings,
    ) -> Result<Self, CoreError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy from the environment would resolve the target itself, past the address
            // check below.
            .no_proxy()
            .timeout(settings.timeout)
            .dns_resolver(Arc::new(GuardedResolver))
            .build()
            .map_err(|e| CoreError::Config(format!("webhook client: {e}")))?;
        Ok(Sender { router, clock, key, settings, http })
    }

    /// Run the delivery loop until the task is aborted: due endpoints are served as soon as
    /// there are some; otherwise it looks again every `poll_every`.
    pub fn spawn(self, poll_every: StdDuration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match self.run_once(16).await {
                    Ok(n) if n > 0 => continue,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "webhook delivery loop"),
                }
                tokio::time::sleep(poll_every).await;
            }
        })
    }

    /// Serve up to `limit` due endpoints (concurrently); returns how many events were delivered.
    pub async fn run_once(&self, limit: i32) -> Result<usize, CoreError> {
        let now = self.clock.now();
        let lease = i32::try_from(self.lease().as_secs()).unwrap_or(i32::MAX);
        let taken = preresolve::webhook_take(&self.router, limit, now, lease).await?;
        let mut jobs = Vec::new();
        for r in &taken {
            let (tenant, project, endpoint): (Uuid, Uuid, Uuid) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            let lease: DateTime<Utc> = r.try_get(3)?;
            let me = self.clone();
            jobs.push(tokio::spawn(async move {
                let taken = Taken { tenant, project, endpoint, lease };
                match me.serve(&taken).await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(tenant = %tenant, endpoint = %endpoint, error = %e, "webhook endpoint not served");
                        // Looked at again shortly.
                        let again = me.clock.now() + chrono_of(me.settings.first_retry);
                        let _ = me.give_back(&taken, again).await;
                        0
                    }
                }
            }));
        }
        let mut delivered = 0;
        for j in jobs {
            delivered += j.await.unwrap_or(0);
        }
        Ok(delivered)
    }

    /// Give a taken endpoint back, next due at `due` (or sooner, if nudged meanwhile).
    async fn give_back(&self, t: &Taken, due: DateTime<Utc>) -> Result<(), CoreError> {
        Ok(preresolve::webhook_give_back(&self.router, t.tenant, t.endpoint, t.lease, due).await?)
    }

    async fn serve(&self, taken: &Taken) -> Result<usize, CoreError> {
        let Taken { tenant, project, endpoint, .. } = *taken;
        let deadline = self.work_deadline(std::time::Instant::now());
        let scope = Scope::project(tenant, project, TenantKind::Customer);
        let now = self.clock.now();
        let tx = self.router.begin(&scope).await?;
        let ep = tx
            .query_opt(
                "SELECT url, event_types, secret_enc, previous_secret_enc, previous_until, enabled, position, attempts,
                        failing_since, pending_replays
                   FROM webhook_endpoints WHERE id = $1",
                &[(&endpoint, Type::UUID)],
            )
            .await?;
        let Some(ep) = ep else {
            tx.commit().await?;
            // Deleted: nothing to serve, ever.
            let tx = self.router.begin_pinned(&scope).await?;
            tx.query("DELETE FROM webhook_schedule WHERE endpoint_id = $1", &[(&endpoint, Type::UUID)]).await?;
            tx.commit().await?;
            return Ok(0);
        };
        if !ep.col::<bool>("enabled")? {
            tx.commit().await?;
            self.give_back(taken, now + Duration::days(1)).await?;
            return Ok(0);
        }
        let position: i64 = ep.col("position")?;
        let types: Vec<String> = ep.col("event_types")?;
        let since = now - Duration::days(super::RETENTION_DAYS);
        let events = tx
            .query(
                "SELECT id, type, position, occurred_at, data FROM events
                  WHERE position > $1 AND occurred_at >= $2 AND (cardinality($3::text[]) = 0 OR type = ANY ($3))
                  ORDER BY position LIMIT $4",
                &[
                    (&position, Type::INT8),
                    (&since, Type::TIMESTAMPTZ),
                    (&types, Type::TEXT_ARRAY),
                    (&BATCH, Type::INT8),
                ],
            )
            .await?;
        tx.commit().await?;
        let pending: Vec<i64> = ep.col("pending_replays")?;
        if events.is_empty() && pending.is_empty() {
            self.give_back(taken, now + chrono_of(self.settings.idle_recheck)).await?;
            return Ok(0);
        }
        let url: String = ep.col("url")?;
        let mut secrets = vec![self.unseal(&ep.col::<String>("secret_enc")?)?];
        if let (Some(prev), Some(until)) =
            (ep.col::<Option<String>>("previous_secret_enc")?, ep.col::<Option<DateTime<Utc>>>("previous_until")?)
        {
            if until > now {
                secrets.push(self.unseal(&prev)?);
            }
        }
        let development = development(&self.router, project).await?;
        let replayed = if pending.is_empty() {
            0
        } else {
            self.send_replays(&scope, endpoint, &pending, (&url, &secrets, development), now, deadline).await?
        };
        if events.is_empty() {
            self.give_back(taken, now + chrono_of(self.settings.idle_recheck)).await?;
            return Ok(replayed);
        }
        // The attempt number each delivery is logged with: the failures so far, plus one.
        let mut attempts: i32 = ep.col("attempts")?;
        let (mut last_ok, mut log, mut failure, mut cut_short) = (position, Vec::new(), None, false);
        for e in &events {
            if std::time::Instant::now() >= deadline {
                cut_short = true;
                break;
            }
            let event = super::Event::from_row(e)?;
            let outcome = DEVELOPMENT.scope(development, self.deliver(&url, &secrets, &event, development)).await?;
            let delivered = matches!(outcome, Outcome::Delivered { .. });
            let position = event.position;
            log.push((event, attempts + 1, outcome));
            if delivered {
                last_ok = position;
                attempts = 0;
            } else {
                failure = Some(());
                break;
            }
        }
        let last_error = log.last().and_then(|l| match &l.2 {
            Outcome::Failed { error, .. } => Some(error.chars().take(500).collect::<String>()),
            Outcome::Delivered { .. } => None,
        });
        let tx = self.router.begin(&scope).await?;
        for (event, attempt, outcome) in &log {
            self.log_delivery(&tx, &scope, endpoint, event, *attempt, outcome, false, now).await?;
        }
        // Failures are counted on the row as it is now (not as read before sending: another
        // change may have come meanwhile); any success in this batch starts the count afresh.
        let delivered_any = log.iter().any(|l| matches!(l.2, Outcome::Delivered { .. }));
        let failed = failure.is_some();
        let row = tx
            .query_one(
                // A range replay that moved the place back while this batch was out wins: the
                // place moves on only from where this batch started.
                "UPDATE webhook_endpoints SET position = CASE WHEN position = $7 THEN greatest(position, $2)
                                                               ELSE position END,
                        attempts = CASE WHEN NOT $3 THEN 0 WHEN $4 THEN 1 ELSE attempts + 1 END,
                        failing_since = CASE WHEN NOT $3 THEN NULL WHEN $4 THEN $6 ELSE coalesce(failing_since, $6) END,
                        last_error = coalesce($5, last_error)
                  WHERE id = $1 RETURNING attempts, failing_since",
                &[
                    (&endpoint, Type::UUID),
                    (&last_ok, Type::INT8),
                    (&failed, Type::BOOL),
                    (&delivered_any, Type::BOOL),
                    (&last_error, Type::TEXT),
                    (&now, Type::TIMESTAMPTZ),
                    (&position, Type::INT8),
                ],
            )
            .await?;
        let attempts: i32 = row.col("attempts")?;
        let failing_since: Option<DateTime<Utc>> = row.col("failing_since")?;
        let give_up = failing_since.is_some_and(|f| now - f >= Duration::days(GIVE_UP_AFTER_DAYS));
        if give_up {
            tx.query(
                "UPDATE webhook_endpoints SET enabled = false, disabled_reason = 'failing for 3 days' WHERE id = $1",
                &[(&endpoint, Type::UUID)],
            )
            .await?;
        }
        if give_up {
            let event = audit::Event {
                action: audit::AuditAction::WebhookEndpointDisabled,
                actor: audit::Actor { kind: audit::ActorKind::System, id: None, name: Some("webhook delivery".into()) },
                target: Some(("webhook_endpoint", endpoint.to_string())),
                client: &ClientInfo::default(),
                metadata: serde_json::json!({"reason": "failing for 3 days", "failing_since": failing_since}),
            };
            audit::record_in(&tx, &scope, event, now).await?;
        }
        tx.commit().await?;
        let due = match failure {
            Some(()) => now + self.backoff(attempts),
            None if cut_short || events.len() as i64 == BATCH => now,
            None => now + chrono_of(self.settings.idle_recheck),
        };
        self.give_back(taken, due).await?;
        Ok(replayed + log.iter().filter(|l| matches!(l.2, Outcome::Delivered { .. })).count())
    }

    /// Send the single events asked for again (`replay_event`), once each, whatever the
    /// outcome (the log shows it; the stream's own delivery and its failure count are not
    /// touched), then take them off the endpoint.
    async fn send_replays(
        &self,
        scope: &Scope,
        endpoint: Uuid,
        pending: &[i64],
        (url, secrets, development): (&str, &[String], bool),
        now: DateTime<Utc>,
        deadline: std::time::Instant,
    ) -> Result<usize, CoreError> {
        let pending = pending.to_vec();
        let tx = self.router.begin(scope).await?;
        let rows = tx
            .query(
                "SELECT id, type, position, occurred_at, data FROM events WHERE position = ANY ($1) ORDER BY position",
                &[(&pending, Type::INT8_ARRAY)],
            )
            .await?;
        tx.commit().await?;
        // Done with: those sent, and those no longer in the stream (purged); the rest wait for
        // the next turn if the work window closes first.
        let found: Vec<i64> = rows.iter().map(|r| r.col("position")).collect::<Result<_, _>>()?;
        let mut done: Vec<i64> = pending.iter().copied().filter(|p| !found.contains(p)).collect();
        let mut sent = Vec::new();
        for e in &rows {
            if std::time::Instant::now() >= deadline {
                break;
            }
            let event = super::Event::from_row(e)?;
            let outcome = DEVELOPMENT.scope(development, self.deliver(url, secrets, &event, development)).await?;
            done.push(event.position);
            sent.push((event, outcome));
        }
        let tx = self.router.begin(scope).await?;
        for (event, outcome) in &sent {
            self.log_delivery(&tx, scope, endpoint, event, 1, outcome, true, now).await?;
        }
        tx.query(
            "UPDATE webhook_endpoints
                SET pending_replays = ARRAY(SELECT p FROM unnest(pending_replays) p WHERE p <> ALL ($2))
              WHERE id = $1",
            &[(&endpoint, Type::UUID), (&done, Type::INT8_ARRAY)],
        )
        .await?;
        tx.commit().await?;
        Ok(sent.iter().filter(|(_, o)| matches!(o, Outcome::Delivered { .. })).count())
    }

    /// One row of the delivery log.
    #[allow(clippy::too_many_arguments)]
    async fn log_delivery(
        &self,
        tx: &authio_db::ScopedTx,
        scope: &Scope,
        endpoint: Uuid,
        event: &super::Event,
        attempt: i32,
        outcome: &Outcome,
        replay: bool,
        now: DateTime<Utc>,
    ) -> Result<(), CoreError> {
        let (status, latency, excerpt, error) = match outcome {
            Outcome::Delivered { status, latency_ms, excerpt } => {
                (Some(i32::from(*status)), *latency_ms, Some(excerpt.clone()), None)
            }
            Outcome::Failed { status, latency_ms, excerpt, error } => {
                (status.map(i32::from), *latency_ms, excerpt.clone(), Some(error.chars().take(500).collect::<String>()))
            }
        };
        let project = project_of(scope)?;
        tx.query(
            "INSERT INTO webhook_deliveries (tenant_id, project_id, id, endpoint_id, event_id, event_type, position,
                                             attempt, status, error, latency_ms, response_excerpt, replay, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&Uuid::now_v7(), Type::UUID),
                (&endpoint, Type::UUID),
                (&event.id, Type::UUID),
                (&event.kind, Type::TEXT),
                (&event.position, Type::INT8),
                (&attempt, Type::INT4),
                (&status, Type::INT4),
                (&error, Type::TEXT),
                (&latency, Type::INT4),
                (&excerpt, Type::TEXT),
                (&replay, Type::BOOL),
                (&now, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
        Ok(())
    }

    fn lease(&self) -> StdDuration {
        lease_for(self.settings.timeout)
    }

    fn work_deadline(&self, taken_at: std::time::Instant) -> std::time::Instant {
        taken_at + work_window_for(self.settings.timeout)
    }

    fn unseal(&self, sealed: &str) -> Result<String, CoreError> {
        self.key.decrypt(sealed).map_err(|e| CoreError::Internal(e.to_string()))
    }

    /// 5 s, 10 s, 20 s, ... up to an hour between attempts.
    fn backoff(&self, attempts: i32) -> Duration {
        let exp = u32::try_from(attempts.clamp(1, 20) - 1).unwrap_or(0);
        let first = i64::try_from(self.settings.first_retry.as_secs()).unwrap_or(5).max(1);
        let secs = first.saturating_mul(1i64 << exp.min(12));
        Duration::seconds(secs.min(3600))
    }

    async fn deliver(
        &self,
        url: &str,
        secrets: &[String],
        e: &super::Event,
        development: bool,
    ) -> Result<Outcome, CoreError> {
        let started = std::time::Instant::now();
        let elapsed = || i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
        // The URL was checked when registered; a literal address is checked again here (it
        // does not pass through the resolver).
        if let Err(e) = check_url(url, development) {
            return Ok(Outcome::Failed { status: None, latency_ms: 0, excerpt: None, error: e.to_string() });
        }
        let timestamp = self.clock.now().timestamp();
        let body = serde_json::json!({
            "type": e.kind,
            "timestamp": e.occurred_at,
            "data": e.data,
            "position": e.position,
        })
        .to_string();
        let msg_id = format!("evt_{}", e.id.simple());
        let signatures =
            secrets.iter().map(|s| sign(s, &msg_id, timestamp, &body)).collect::<Result<Vec<_>, _>>()?.join(" ");
        let sent = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signatures)
            .body(body)
            .send()
            .await;
        let mut resp = match sent {
            Ok(r) => r,
            Err(err) => {
                let error = if err.is_timeout() {
                    "timed out".to_owned()
                } else {
                    // The cause (a refused address, a refused connection) is deeper in the chain.
                    let mut text = err.to_string();
                    let mut source = std::error::Error::source(&err);
                    while let Some(s) = source {
                        text = format!("{text}: {s}");
                        source = s.source();
                    }
                    text
                };
                return Ok(Outcome::Failed { status: None, latency_ms: elapsed(), excerpt: None, error });
            }
        };
        let status = resp.status().as_u16();
        let mut excerpt = Vec::new();
        while excerpt.len() < EXCERPT_BYTES {
            match resp.chunk().await {
                Ok(Some(c)) => excerpt.extend_from_slice(&c[..c.len().min(EXCERPT_BYTES - excerpt.len())]),
                _ => break,
            }
        }
        let excerpt = String::from_utf8_lossy(&excerpt).into_owned();
        if resp.status().is_success() {
            Ok(Outcome::Delivered { status, latency_ms: elapsed(), excerpt })
        } else {
            Ok(Outcome::Failed {
                status: Some(status),
                latency_ms: elapsed(),
                excerpt: Some(excerpt),
                error: format!("status {status}"),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_unless_in_development() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
            assert!(!address_allowed(ip, false), "{ip}");
            assert!(address_allowed(ip, true), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111"] {
            let ip: IpAddr = ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
            assert!(address_allowed(ip, false), "{ip}");
        }
    }

    #[test]
    fn urls_are_https_without_user_info_or_private_literals() {
        assert!(check_url("https://hooks.example.com/in", false).is_ok());
        for bad in [
            "http://hooks.example.com/in",
            "https://u:p@hooks.example.com/",
            "https://10.0.0.1/x",
            "https://[::1]/x",
            "ftp://x.example/",
            "https://x.example/#f",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
        }
        assert!(check_url("http://127.0.0.1:9/x", true).is_ok());
        // 2048 characters as written, 2049 once normalized (the trailing `/`).
        let long = format!("https://{}co", "a.".repeat(1019));
        assert_eq!(long.len(), 2048);
        assert!(check_url(&long, false).is_err());
        assert!(check_url(&format!("https://{}co", "a.".repeat(1018)), false).is_ok());
    }

    #[test]
    fn no_request_starts_so_late_that_it_outlives_the_lease() {
        for secs in [1, 2, 10, 30, 60, 300] {
            let timeout = StdDuration::from_secs(secs);
            let (lease, window) = (lease_for(timeout), work_window_for(timeout));
            assert!(lease >= StdDuration::from_secs(60), "{secs}");
            assert!(window >= StdDuration::from_secs(10), "{secs}: some work gets done");
            // The last request may start at the window's end and run its whole timeout; the
            // writes after it get 10 s.
            assert!(window + timeout + StdDuration::from_secs(10) <= lease, "{secs}");
        }
    }

    #[test]
    fn signatures_follow_the_standard_webhooks_form() {
        // The specification's example: secret, id, timestamp and body, and its signature.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = r#"{"test": 2432232314}"#;
        let sig = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap_or_default();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
