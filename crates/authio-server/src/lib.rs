//! The Authio HTTP application: scope middleware, the `/v1` API, health, metrics, OpenAPI.
//!
//! Handlers are thin: parse and authorise, call `authio-core`, map the result. Status codes
//! are chosen in one place, [`error::ApiError`].
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod console;
pub mod context;
pub mod edge;
pub mod error;
mod extract;
pub mod mailcatcher;
pub mod metrics;
mod openapi;
mod routes;

use std::sync::Arc;

use std::time::Duration;

use authio_core::crypto::keys::KeyService;
use authio_core::identity::auth::{Identity, IdentitySettings};
use authio_core::identity::passwords::{PasswordParams, Passwords};
use authio_core::throttle::Limits;
use authio_core::{Clock, CoreError};
use authio_db::{MasterKey, Router};
use axum::http::{HeaderName, Request};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use context::{db_pool_from_context, RequestContext};
pub use error::ApiError;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub router: Router,
    pub clock: Arc<dyn Clock>,
    pub identity: Identity,
    /// Each project's OpenID Provider.
    pub oidc: authio_core::oidc::Provider,
    /// Sign-in through upstream providers.
    pub upstream: authio_core::federation::upstream::Upstream,
    /// Directory sync (SCIM).
    pub dsync: authio_core::dsync::DirectorySync,
    pub metrics: Arc<metrics::Metrics>,
    /// Proxies whose `X-Forwarded-For` is believed (see [`routes::auth::client_ip`]).
    pub trusted_proxies: Arc<Vec<ipnet::IpNet>>,
    /// The deployment's public base URL (no trailing slash), its scheme, host and origin.
    pub public_url: Arc<str>,
    pub public_scheme: &'static str,
    pub public_host: Arc<str>,
    pub public_origin: Arc<str>,
    /// Looks up the TXT records that prove custom domains.
    pub dns: Arc<dyn authio_core::project::config::TxtLookup>,
    /// `authio dev`'s mail catcher, shown on `/dev/mailbox` (absent otherwise).
    pub mailbox: Option<mailcatcher::MailCatcher>,
    /// The web console (absent when no administrative connection is configured).
    pub console: Option<Arc<console::Console>>,
    /// How requests must arrive (body size, read timeouts).
    pub edge: edge::EdgeLimits,
}

/// How the identity side is set up.
pub struct AuthSettings {
    /// The deployment's public base URL: issuers are `{public_url}/p/{project_id}`.
    pub public_url: String,
    /// Encrypts signing keys at rest.
    pub master_key: MasterKey,
    pub password_params: PasswordParams,
    /// Password-hashing threads (each holds `m_kib` KiB of Argon2 memory).
    pub hash_concurrency: usize,
    pub limits: Limits,
    /// How long a node keeps a project's key set, profile and M2M clients before re-reading
    /// them (changes are also NOTIFYed).
    pub cache_ttl: Duration,
    /// Cache M2M client and API-key records in the node, NOTIFY-invalidated (default on).
    pub credential_cache: bool,
    /// Address ranges of the proxies in front of Authio: only from them is `X-Forwarded-For`
    /// read (empty: the peer address is the client, the header is ignored).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Lifetimes and attempts of one-time tokens (links, codes, states).
    pub one_time: authio_core::identity::signin::OneTimeSettings,
    /// Reach upstream providers over plain http (development and tests only).
    pub allow_http_upstreams: bool,
    /// Custom-domain TXT lookups (default: the system resolver).
    pub dns: Option<Arc<dyn authio_core::project::config::TxtLookup>>,
    /// Serve this mail catcher's messages on `/dev/mailbox` (development only).
    pub mailbox: Option<mailcatcher::MailCatcher>,
    /// The control plane's administrative URL (as `authio_owner`): enables the web console.
    pub admin_url: Option<String>,
    /// How requests must arrive (body size, read timeouts).
    pub edge: edge::EdgeLimits,
    /// SCIM requests per directory on this node.
    pub directory_limit: authio_core::dsync::DirectoryLimit,
}

impl AuthSettings {
    pub fn new(public_url: impl Into<String>, master_key: MasterKey) -> Self {
        AuthSettings {
            public_url: public_url.into(),
            master_key,
            password_params: PasswordParams::default(),
            hash_concurrency: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            limits: Limits::default(),
            cache_ttl: Duration::from_secs(30),
            credential_cache: true,
            trusted_proxies: Vec::new(),
            one_time: Default::default(),
            allow_http_upstreams: false,
            dns: None,
            mailbox: None,
            admin_url: None,
            edge: edge::EdgeLimits::default(),
            directory_limit: Default::default(),
        }
    }
}

impl AppState {
    pub fn new(router: Router, clock: Arc<dyn Clock>, auth: AuthSettings) -> Result<Self, CoreError> {
        let trusted_proxies = auth.trusted_proxies.clone();
        let public_url = auth.public_url.trim_end_matches('/').to_owned();
        let parsed = url::Url::parse(&public_url).map_err(|e| CoreError::Config(format!("public_url: {e}")))?;
        let public_scheme = if parsed.scheme() == "https" { "https" } else { "http" };
        let public_host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
        let public_origin = parsed.origin().ascii_serialization();
        let dns: Arc<dyn authio_core::project::config::TxtLookup> = match auth.dns.clone() {
            Some(d) => d,
            None => Arc::new(authio_core::project::config::SystemDns::new()?),
        };
        let mailbox = auth.mailbox.clone();
        let console = auth
            .admin_url
            .as_ref()
            .map(|url| Arc::new(console::Console::new(url.clone(), auth.master_key.clone(), clock.clone())));
        let passwords = Passwords::new(auth.password_params, auth.hash_concurrency)?;
        let keys = KeyService::new(router.clone(), auth.master_key.clone(), clock.clone(), auth.cache_ttl);
        let settings = IdentitySettings {
            public_url: auth.public_url.clone(),
            limits: auth.limits,
            profile_ttl: auth.cache_ttl,
            credential_cache: auth.credential_cache,
            one_time: auth.one_time,
            allow_http_upstreams: auth.allow_http_upstreams,
        };
        let identity = Identity::new(router.clone(), clock.clone(), passwords, keys, auth.master_key, settings)?;
        Ok(AppState {
            router,
            clock,
            oidc: authio_core::oidc::Provider::new(identity.clone()),
            upstream: authio_core::federation::upstream::Upstream::new(identity.clone()),
            dsync: authio_core::dsync::DirectorySync::new(identity.clone(), auth.directory_limit),
            identity,
            metrics: Arc::new(metrics::Metrics::default()),
            trusted_proxies: Arc::new(trusted_proxies),
            public_url: public_url.into(),
            public_scheme,
            public_host: public_host.into(),
            public_origin: public_origin.into(),
            dns,
            mailbox,
            console,
            edge: auth.edge,
        })
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole application, ready to serve.
pub fn build_app(state: AppState) -> axum::Router {
    let trace = TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
        let request_id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
        tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %request_id)
    });
    let routed =
        routes::router(state.clone()).layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track));
    // Custom domains rewrite the path, so they run before the routes are matched.
    axum::Router::new()
        .fallback_service(routed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), routes::hosted::custom_domains))
        .layer(axum::middleware::from_fn_with_state(state.edge, edge::guard))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(trace)
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// Deliver audit events about pinned rows from the shared outbox to each tenant's home log,
/// every `every`, until the task is aborted.
pub fn spawn_audit_relay(
    router: Router,
    outbox: authio_db::OutboxReader,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Events that failed recently, passed over until the list is cleared (every minute).
        let mut failed: Vec<uuid::Uuid> = Vec::new();
        let mut cleared = std::time::Instant::now();
        loop {
            tick.tick().await;
            if cleared.elapsed() > Duration::from_secs(60) {
                failed.clear();
                cleared = std::time::Instant::now();
            }
            // Drain in batches; an error is logged and retried on the next tick.
            loop {
                match authio_core::audit::relay(&router, &outbox, 200, &mut failed).await {
                    Ok(n) if n > 0 => continue,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "audit relay failed");
                        break;
                    }
                }
            }
        }
    })
}

/// Serve until `shutdown` resolves, letting in-flight requests finish, with the default
/// [`edge::EdgeLimits`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, app, shutdown, edge::EdgeLimits::default()).await
}

/// Serve until `shutdown` resolves: HTTP/1.1, the peer's address in
/// `ConnectInfo`, and a client that has not sent its headers within `limits.header_read`
/// disconnected (axum's own `serve` has no such bound).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    limits: edge::EdgeLimits,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little and go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // The peer's address for `ConnectInfo`, put on each request (no per-connection router).
        let svc = tower::ServiceExt::map_request(app.clone(), move |mut req: axum::http::Request<_>| {
            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            req
        });
        let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
