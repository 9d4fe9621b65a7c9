//! The router: which pool serves a scope.
//!
//! | tenant                                   | pool                                   |
//! |------------------------------------------|----------------------------------------|
//! | customer, shared                         | the shared pool                        |
//! | customer, dedicated                      | its own pool (lazy, bounded, LRU/idle) |
//! | platform, any strategy                   | shared; `dedicated` is refused          |
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use futures_util::StreamExt;
use tokio_postgres::types::Type;
use tokio_postgres::AsyncMessage;
use uuid::Uuid;

use crate::pipeline::{make_read_pool_with, PgRow, ReadPool};
use crate::pool::{make_pool_with, parse_url, PoolOptions};
use crate::route_cache::{parse_notification, CachedRoute, DbStrategy, RouteCache};
use crate::tx::{is_not_at_home, Fence, Param, ScopedTx, BIND_AND_ENTER_SQL, BIND_SQL};
use crate::{preresolve, DbError, MasterKey, RouterError, Scope, TenantKind};

#[derive(Clone, Debug)]
pub struct RouterSettings {
    /// Connections per dedicated database, per node.
    pub dedicated_pool_max_size: usize,
    /// Open dedicated pools per node; past it the least recently used is closed.
    pub max_dedicated_pools: usize,
    /// A dedicated pool unused this long is closed.
    pub dedicated_idle_close: Duration,
    /// How often cached epochs are re-read (the fallback when a NOTIFY is missed).
    pub route_reread_interval: Duration,
    /// Listen for `authio_routes` notifications (direct connection, not through pgbouncer).
    pub listen: bool,
    /// A direct URL to the shared database for LISTEN; defaults to the shared URL.
    pub shared_direct_url: Option<String>,
    /// How long a request waits for a connection.
    pub acquire_timeout: Duration,
    /// Keep read statements prepared per connection. Turn off when the shared URL goes
    /// through pgbouncer older than 1.21 (or without `max_prepared_statements`).
    pub statement_cache: bool,
    /// How long a request of a tenant being moved waits for the cutover to finish before it
    /// is answered "moving, retry" (503).
    pub cutover_wait: Duration,
}

impl Default for RouterSettings {
    fn default() -> Self {
        RouterSettings {
            dedicated_pool_max_size: 8,
            max_dedicated_pools: 256,
            dedicated_idle_close: Duration::from_secs(300),
            route_reread_interval: Duration::from_secs(5),
            listen: true,
            shared_direct_url: None,
            acquire_timeout: Duration::from_secs(5),
            statement_cache: true,
            cutover_wait: Duration::from_secs(3),
        }
    }
}

struct DedicatedPool {
    pool: Pool,
    reads: ReadPool,
    last_used: Instant,
}

/// Where a scope's rows live: a pool for transactions and a pool for pipelined reads.
#[derive(Clone)]
struct Target {
    pool: Pool,
    reads: ReadPool,
}

struct Inner {
    shared: Pool,
    shared_reads: ReadPool,
    /// Where the LISTEN connection goes: `shared_direct_url`, else the shared URL.
    listen_config: crate::tls::ConnectConfig,
    master_key: Option<MasterKey>,
    cache: RouteCache,
    dedicated: Mutex<HashMap<Uuid, DedicatedPool>>,
    settings: RouterSettings,
    dedicated_pools_opened: AtomicU64,
    /// Mirrors `dedicated.len()`, so the shared-tenant hot path skips the lock when no
    /// dedicated pool is open.
    dedicated_open: std::sync::atomic::AtomicUsize,
    platform_refusals: AtomicU64,
    listener_connected: std::sync::atomic::AtomicBool,
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    cache_events: tokio::sync::broadcast::Sender<CacheEvent>,
}

/// A change to control-plane rows that nodes cache (clients, keys, project settings),
/// NOTIFYed on `authio_cache` as `kind:key`. `Reset` means notifications may have been missed
/// (the listener reconnected): drop everything cached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheEvent {
    Reset,
    Changed { kind: String, key: String },
}

/// Cheap to clone; background tasks stop when the last clone is dropped or on `shutdown`.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

impl Router {
    /// Build a router over the shared pool. Call [`Router::start`] to run the listener and the
    /// periodic re-read.
    pub fn new(
        shared_url: &str,
        shared_pool_size: usize,
        master_key: Option<MasterKey>,
        settings: RouterSettings,
    ) -> Result<Self, DbError> {
        let opts = PoolOptions {
            max_size: shared_pool_size,
            wait_timeout: settings.acquire_timeout,
            application_name: "authio".into(),
            ..PoolOptions::default()
        };
        // Every URL is parsed here, so a bad one (TLS parameters included) fails at start-up.
        let shared_config = parse_url(shared_url)?;
        let listen_config = match &settings.shared_direct_url {
            Some(direct) => parse_url(direct)?,
            None => shared_config.clone(),
        };
        let shared = make_pool_with(shared_config.clone(), &opts)?;
        let shared_reads = make_read_pool_with(shared_config, &opts, settings.statement_cache)?;
        Ok(Router {
            inner: Arc::new(Inner {
                shared,
                shared_reads,
                listen_config,
                master_key,
                cache: RouteCache::default(),
                dedicated: Mutex::new(HashMap::new()),
                settings,
                dedicated_pools_opened: AtomicU64::new(0),
                dedicated_open: std::sync::atomic::AtomicUsize::new(0),
                platform_refusals: AtomicU64::new(0),
                listener_connected: std::sync::atomic::AtomicBool::new(false),
                background: Mutex::new(Vec::new()),
                cache_events: tokio::sync::broadcast::channel(1024).0,
            }),
        })
    }

    /// Start the background tasks: the NOTIFY listener, the epoch re-read, the idle sweeper.
    pub fn start(&self) {
        let mut tasks = Vec::new();
        let weak = Arc::downgrade(&self.inner);
        if self.inner.settings.listen {
            let config = self.inner.listen_config.clone();
            tasks.push(tokio::spawn(listen_loop(weak.clone(), config)));
        }
        tasks.push(tokio::spawn(reread_loop(weak.clone(), self.inner.settings.route_reread_interval)));
        tasks.push(tokio::spawn(sweep_loop(weak)));
        if let Ok(mut bg) = self.inner.background.lock() {
            bg.extend(tasks);
        }
    }

    /// Stop background tasks and close every pool.
    pub fn shutdown(&self) {
        if let Ok(mut bg) = self.inner.background.lock() {
            for t in bg.drain(..) {
                t.abort();
            }
        }
        if let Ok(mut map) = self.inner.dedicated.lock() {
            for (_, p) in map.drain() {
                p.pool.close();
                p.reads.close();
            }
            self.inner.dedicated_open.store(0, Ordering::Relaxed);
        }
        self.inner.shared.close();
        self.inner.shared_reads.close();
    }

    pub(crate) fn shared(&self) -> &Pool {
        &self.inner.shared
    }

    pub fn cache(&self) -> &RouteCache {
        &self.inner.cache
    }

    /// Dedicated pools open on this node now.
    pub fn open_dedicated_pools(&self) -> usize {
        self.inner.dedicated_open.load(Ordering::Relaxed)
    }

    /// Dedicated pools ever opened by this node.
    pub fn dedicated_pools_opened(&self) -> u64 {
        self.inner.dedicated_pools_opened.load(Ordering::Relaxed)
    }

    /// Times a platform-tenant request met a row saying `dedicated` and was kept on shared.
    pub fn platform_refusals(&self) -> u64 {
        self.inner.platform_refusals.load(Ordering::Relaxed)
    }

    pub fn listener_connected(&self) -> bool {
        self.inner.listener_connected.load(Ordering::Relaxed)
    }

    /// The tenant's route, from the cache or read from the shared database.
    pub async fn route(&self, tenant: Uuid) -> Result<CachedRoute, DbError> {
        if let Some(r) = self.inner.cache.get(&tenant) {
            return Ok(r);
        }
        let generation = self.inner.cache.generation();
        let route = preresolve::tenant_route(self, tenant).await?.ok_or(RouterError::UnknownTenant(tenant))?;
        self.inner.cache.insert_if_current(tenant, route, generation);
        Ok(route)
    }

    /// The pool for a scope. Fail-closed for the platform tenant: a row saying `dedicated`
    /// is refused with [`RouterError::PlatformTenantNoDedicatedPool`].
    pub async fn pool_for(&self, scope: &Scope) -> Result<Pool, DbError> {
        Ok(self.target_for(scope).await?.pool)
    }

    fn shared_target(&self) -> Target {
        Target { pool: self.inner.shared.clone(), reads: self.inner.shared_reads.clone() }
    }

    async fn target_for(&self, scope: &Scope) -> Result<Target, DbError> {
        let route = self.route(scope.tenant_id).await?;
        if scope.tenant_kind == TenantKind::Platform || route.kind == TenantKind::Platform {
            return match route.strategy {
                DbStrategy::Shared => Ok(self.shared_target()),
                DbStrategy::Dedicated => {
                    self.inner.platform_refusals.fetch_add(1, Ordering::Relaxed);
                    Err(RouterError::PlatformTenantNoDedicatedPool.into())
                }
            };
        }
        match route.strategy {
            // A dedicated pool left from before a move back to shared (or warmed for a move
            // about to happen) is closed by the idle sweeper, not here.
            DbStrategy::Shared => Ok(self.shared_target()),
            DbStrategy::Dedicated => self.dedicated_target(scope.tenant_id).await,
        }
    }

    /// The platform rule in one place: a platform tenant whose row says `dedicated` is served
    /// from shared, with the refusal returned beside it for the caller to report.
    async fn target_for_or_err(&self, scope: &Scope) -> Result<(Target, Option<RouterError>), DbError> {
        match self.target_for(scope).await {
            Ok(target) => Ok((target, None)),
            Err(DbError::Router(RouterError::PlatformTenantNoDedicatedPool)) => {
                tracing::error!(tenant = %scope.tenant_id, "platform tenant row says dedicated; serving from shared");
                Ok((self.shared_target(), Some(RouterError::PlatformTenantNoDedicatedPool)))
            }
            Err(e) => Err(e),
        }
    }

    /// Like [`Router::pool_for`], but for the platform tenant it returns the shared pool
    /// together with the refusal, so platform requests keep working while the bad row is
    /// reported. Customer tenants get their pool or the error.
    pub async fn pool_for_or_err(&self, scope: &Scope) -> Result<(Pool, Option<RouterError>), DbError> {
        let (target, refusal) = self.target_for_or_err(scope).await?;
        Ok((target.pool, refusal))
    }

    /// Open a scoped transaction on the scope's home.
    pub async fn begin(&self, scope: &Scope) -> Result<ScopedTx, DbError> {
        self.following_moves(scope, || async move {
            let pool = self.target_for_or_err(scope).await?.0.pool;
            let client = self.checkout(&pool, scope).await?;
            ScopedTx::open(client, *scope, Fence::Check).await
        })
        .await
    }

    /// Run `attempt` at the scope's home; when the database there says "not at home", wait for
    /// the new route (see [`Router::await_new_route`]) and run it again there.
    async fn following_moves<T, Fut>(&self, scope: &Scope, mut attempt: impl FnMut() -> Fut) -> Result<T, DbError>
    where
        Fut: std::future::Future<Output = Result<T, DbError>>,
    {
        let deadline = Instant::now() + self.inner.settings.cutover_wait;
        loop {
            let epoch = self.route(scope.tenant_id).await?.epoch;
            match attempt().await {
                Err(DbError::Router(RouterError::NotAtHome(_))) => self.await_new_route(scope, epoch, deadline).await?,
                other => return other,
            }
        }
    }

    /// After the database said "not at home": the tenant moved (this node's route was stale)
    /// or is being moved (its cutover is under way). Drop the cached route and wait, bounded,
    /// for a route newer than the one used; past the bound, "moving, retry".
    async fn await_new_route(&self, scope: &Scope, used_epoch: i64, deadline: Instant) -> Result<(), DbError> {
        self.inner.cache.invalidate(&scope.tenant_id, None);
        let mut pause = Duration::from_millis(1);
        loop {
            let generation = self.inner.cache.generation();
            if let Some(route) = preresolve::tenant_route(self, scope.tenant_id).await? {
                if route.epoch != used_epoch {
                    self.inner.cache.insert_if_current(scope.tenant_id, route, generation);
                    return Ok(());
                }
            }
            if Instant::now() + pause > deadline {
                return Err(RouterError::MoveInProgress(scope.tenant_id).into());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(8));
        }
    }

    /// A scoped transaction on the shared database for the pinned tables (API keys and the
    /// other rows of the pre-resolution matrix), whatever the tenant's home.
    pub async fn begin_pinned(&self, scope: &Scope) -> Result<ScopedTx, DbError> {
        let client = self.inner.shared.get().await.map_err(|e| RouterError::SharedUnavailable(e.to_string()))?;
        ScopedTx::open(client, *scope, Fence::Skip).await
    }

    /// One scoped read in one round trip: the bind and the query sent with a single Sync,
    /// so they run as one implicit transaction (see [`crate::pipeline`]).
    ///
    /// The home fence is asked only when the read comes back empty: a fenced tenant always
    /// reads nothing, so an empty result is the one case where a stale route could hide, and
    /// asking on every read would cost a function call per request.
    pub async fn read(&self, scope: &Scope, sql: &str, params: &[Param<'_>]) -> Result<Vec<PgRow>, DbError> {
        self.following_moves(scope, || async move {
            let (target, _) = self.target_for_or_err(scope).await?;
            self.read_on(&target.reads, scope, sql, params).await.map_err(|e| self.classify(scope, e))
        })
        .await
    }

    /// Control-plane change notifications for node caches (see [`CacheEvent`]). A receiver
    /// that lags behind gets `RecvError::Lagged` and should treat it as `Reset`.
    pub fn cache_events(&self) -> tokio::sync::broadcast::Receiver<CacheEvent> {
        self.inner.cache_events.subscribe()
    }

    /// An unscoped read on the shared database in one round trip, with the statement kept
    /// prepared. Only for [`crate::preresolve`]: the lookups go through SECURITY DEFINER
    /// functions that take the one key they resolve from.
    pub(crate) async fn read_shared_unscoped(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<PgRow>, DbError> {
        let mut conn = self
            .inner
            .shared_reads
            .get()
            .await
            .map_err(|e| DbError::Router(RouterError::SharedUnavailable(e.to_string())))?;
        conn.pipeline(&[(sql, params)]).await
    }

    /// Scoped writes in one round trip: the bind and the statements with a single Sync, so they
    /// commit together (or not at all) as one implicit transaction. For statements that need no
    /// read-then-write logic between them. The bind enters the tenant's home first (the
    /// cutover gate and the home fence), so nothing runs where the tenant does not live; a
    /// stale route or a cutover under way waits for the new route and tries again there.
    /// Returns the rows of the last statement.
    pub async fn write(&self, scope: &Scope, statements: &[(&str, &[Param<'_>])]) -> Result<Vec<PgRow>, DbError> {
        self.following_moves(scope, || self.write_once(scope, statements)).await
    }

    async fn write_once(&self, scope: &Scope, statements: &[(&str, &[Param<'_>])]) -> Result<Vec<PgRow>, DbError> {
        let (target, _) = self.target_for_or_err(scope).await?;
        let result = async {
            let mut conn = target.reads.get().await.map_err(|e| DbError::Pool(e.to_string()))?;
            let tenant = scope.tenant_id.to_string();
            let project = scope.project_id.map(|p| p.to_string()).unwrap_or_default();
            let bind: [Param<'_>; 2] = [(&tenant, Type::TEXT), (&project, Type::TEXT)];
            let mut all: Vec<(&str, &[Param<'_>])> = Vec::with_capacity(statements.len() + 1);
            all.push((BIND_AND_ENTER_SQL, &bind));
            all.extend_from_slice(statements);
            match conn.pipeline(&all).await {
                Err(e) if is_not_at_home(&e) => Err(RouterError::NotAtHome(scope.tenant_id).into()),
                other => other,
            }
        }
        .await;
        result.map_err(|e| self.classify(scope, e))
    }

    async fn read_on(
        &self,
        reads: &ReadPool,
        scope: &Scope,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<PgRow>, DbError> {
        let mut conn = reads.get().await.map_err(|e| DbError::Pool(e.to_string()))?;
        let tenant = scope.tenant_id.to_string();
        let project = scope.project_id.map(|p| p.to_string()).unwrap_or_default();
        let bind: [Param<'_>; 2] = [(&tenant, Type::TEXT), (&project, Type::TEXT)];
        let rows = conn.pipeline(&[(BIND_SQL, &bind), (sql, params)]).await?;
        if rows.is_empty() {
            let fence =
                conn.pipeline(&[("SELECT authio_tenant_at_home($1)", &[(&scope.tenant_id, Type::UUID)])]).await?;
            let home = fence.first().map(|r| r.try_get::<Option<bool>>(0)).transpose()?.flatten();
            if home != Some(true) {
                return Err(RouterError::NotAtHome(scope.tenant_id).into());
            }
        }
        Ok(rows)
    }

    async fn checkout(&self, pool: &Pool, scope: &Scope) -> Result<deadpool_postgres::Object, DbError> {
        pool.get().await.map_err(|e| self.classify(scope, e.into()))
    }

    /// Turn a pool failure into the router error that names whose database is down.
    fn classify(&self, scope: &Scope, e: DbError) -> DbError {
        let DbError::Pool(reason) = &e else { return e };
        let dedicated = self.open_dedicated_pools() > 0
            && self.inner.dedicated.lock().map(|m| m.contains_key(&scope.tenant_id)).unwrap_or(false);
        if dedicated {
            RouterError::DedicatedUnavailable { tenant: scope.tenant_id, reason: reason.clone() }.into()
        } else {
            RouterError::SharedUnavailable(reason.clone()).into()
        }
    }

    async fn dedicated_target(&self, tenant: Uuid) -> Result<Target, DbError> {
        if let Ok(mut map) = self.inner.dedicated.lock() {
            if let Some(p) = map.get_mut(&tenant) {
                p.last_used = Instant::now();
                return Ok(Target { pool: p.pool.clone(), reads: p.reads.clone() });
            }
        }
        let enc = preresolve::dedicated_app_dsn(self, tenant).await?.ok_or(RouterError::NoDedicatedDatabase(tenant))?;
        let key = self
            .inner
            .master_key
            .as_ref()
            .ok_or_else(|| RouterError::Config("a master key is required to reach dedicated databases".into()))?;
        let dsn = key.decrypt(&enc).map_err(|e| RouterError::Config(format!("dedicated DSN of {tenant}: {e}")))?;
        let opts = PoolOptions {
            max_size: self.inner.settings.dedicated_pool_max_size,
            wait_timeout: self.inner.settings.acquire_timeout,
            application_name: "authio".into(),
            ..PoolOptions::default()
        };
        let config = parse_url(&dsn)?;
        let pool = make_pool_with(config.clone(), &opts)?;
        // Dedicated databases are reached directly.
        let reads = make_read_pool_with(config, &opts, true)?;
        let mut evicted = Vec::new();
        let chosen = {
            let mut map = self.inner.dedicated.lock().map_err(|_| DbError::Pool("router lock poisoned".into()))?;
            let entry = map.entry(tenant).or_insert_with(|| {
                self.inner.dedicated_pools_opened.fetch_add(1, Ordering::Relaxed);
                DedicatedPool { pool: pool.clone(), reads: reads.clone(), last_used: Instant::now() }
            });
            let chosen = Target { pool: entry.pool.clone(), reads: entry.reads.clone() };
            self.inner.dedicated_open.store(map.len(), Ordering::Relaxed);
            while map.len() > self.inner.settings.max_dedicated_pools {
                let oldest =
                    map.iter().filter(|(t, _)| **t != tenant).min_by_key(|(_, p)| p.last_used).map(|(t, _)| *t);
                match oldest.and_then(|t| map.remove(&t)) {
                    Some(p) => evicted.push(p),
                    None => break,
                }
            }
            self.inner.dedicated_open.store(map.len(), Ordering::Relaxed);
            chosen
        };
        for p in evicted {
            p.pool.close();
            p.reads.close();
        }
        Ok(chosen)
    }

    /// Open a tenant's dedicated pools and fill them with connections ahead of a move's
    /// cutover, so the tenant's first requests at the new home do not wait for connections.
    pub async fn prewarm_dedicated(&self, tenant: Uuid) {
        let target = match self.dedicated_target(tenant).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(%tenant, error = %e, "could not warm the dedicated pool");
                return;
            }
        };
        let n = self.inner.settings.dedicated_pool_max_size;
        let reads = futures_util::future::join_all((0..n).map(|_| target.reads.get())).await;
        let txs = futures_util::future::join_all((0..n).map(|_| target.pool.get())).await;
        let opened = reads.iter().filter(|c| c.is_ok()).count() + txs.iter().filter(|c| c.is_ok()).count();
        tracing::info!(%tenant, opened, "dedicated pool warmed for a move");
    }
}

async fn listen_loop(inner: std::sync::Weak<Inner>, config: crate::tls::ConnectConfig) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let router = Router { inner: strong };
        match listen_once(&router, &config).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => tracing::warn!(error = %e, "route listener disconnected"),
        }
        router.inner.listener_connected.store(false, Ordering::Relaxed);
        drop(router);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One LISTEN session. NOTIFYs sent while disconnected are lost, so everything cached is
/// dropped once listening again.
async fn listen_once(router: &Router, config: &crate::tls::ConnectConfig) -> Result<(), DbError> {
    let mut cfg = config.pg.clone();
    cfg.application_name("authio-route-listener");
    cfg.connect_timeout(Duration::from_secs(3));
    let (client, mut conn) = cfg.connect(config.make_tls()).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send((n.channel().to_owned(), n.payload().to_owned())).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client.batch_execute("LISTEN authio_routes; LISTEN authio_cache").await?;
    router.inner.cache.clear();
    let _ = router.inner.cache_events.send(CacheEvent::Reset);
    router.inner.listener_connected.store(true, Ordering::Relaxed);
    while let Some((channel, payload)) = rx.recv().await {
        if channel == "authio_cache" {
            if let Some(tenant) = payload.strip_prefix("prewarm:").and_then(|t| Uuid::parse_str(t).ok()) {
                let r = router.clone();
                tokio::spawn(async move { r.prewarm_dedicated(tenant).await });
            } else if let Some((kind, key)) = payload.split_once(':') {
                let _ = router.inner.cache_events.send(CacheEvent::Changed { kind: kind.into(), key: key.into() });
            }
        } else if let Some((tenant, epoch)) = parse_notification(&payload) {
            tracing::debug!(%tenant, epoch, "route change notified");
            router.inner.cache.invalidate(&tenant, Some(epoch));
        }
    }
    driver.abort();
    Err(DbError::Pool("listener connection ended".into()))
}

async fn reread_loop(inner: std::sync::Weak<Inner>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(strong) = inner.upgrade() else { return };
        let router = Router { inner: strong };
        let cached = router.inner.cache.snapshot();
        if cached.is_empty() {
            continue;
        }
        let ids: Vec<Uuid> = cached.iter().map(|(t, _)| *t).collect();
        match preresolve::route_epochs(&router, &ids).await {
            Ok(current) => {
                let current: HashMap<Uuid, i64> = current.into_iter().collect();
                for (tenant, epoch) in cached {
                    match current.get(&tenant) {
                        Some(e) if *e == epoch => {}
                        Some(e) => router.inner.cache.invalidate(&tenant, Some(*e)),
                        None => router.inner.cache.invalidate(&tenant, None),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "route epoch re-read failed"),
        }
    }
}

async fn sweep_loop(inner: std::sync::Weak<Inner>) {
    loop {
        let idle = match inner.upgrade() {
            Some(i) => i.settings.dedicated_idle_close,
            None => return,
        };
        tokio::time::sleep((idle / 4).max(Duration::from_millis(100))).await;
        let Some(strong) = inner.upgrade() else { return };
        let mut closed = Vec::new();
        if let Ok(mut map) = strong.dedicated.lock() {
            map.retain(|_, p| {
                let keep = p.last_used.elapsed() < idle;
                if !keep {
                    closed.push((p.pool.clone(), p.reads.clone()));
                }
                keep
            });
            strong.dedicated_open.store(map.len(), Ordering::Relaxed);
        }
        for (p, r) in closed {
            p.close();
            r.close();
        }
    }
}
