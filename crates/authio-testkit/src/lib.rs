//! Test kit: throwaway PostgreSQL clusters (a "shared" and a "dedicated" one, plus pgbouncer
//! on demand), a fresh migrated database per test, and `spawn_app()` on port 0.
//!
//! Clusters start once per test process and die with it. To use servers you run yourself,
//! set `AUTHIO_TEST_SHARED_ADMIN_URL` and `AUTHIO_TEST_DEDICATED_ADMIN_URL` to superuser URLs
//! (the database part is ignored).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use authio_core::tenancy::control::{ControlPlane, CreatedApiKey, Project, Tenant};
use authio_core::types::{DisplayName, Plan, Slug};
use authio_core::SystemClock;
use authio_db::cluster::{free_port, ClusterOptions, LocalCluster, LocalPgBouncer, ServerTls};
use authio_db::{MasterKey, Router, RouterSettings, TenantKind};
use uuid::Uuid;

/// A PostgreSQL server the tests may create databases on.
pub struct Server {
    host: String,
    port: u16,
    superuser: String,
    _local: Option<LocalCluster>,
}

impl Server {
    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@{}:{}/{db}", self.host, self.port)
    }

    pub fn admin_url(&self, db: &str) -> String {
        self.url(&self.superuser, db)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn local(&self) -> Option<&LocalCluster> {
        self._local.as_ref()
    }
}

pub struct Clusters {
    pub shared: Server,
    pub dedicated: Server,
    root: PathBuf,
    pgbouncer: OnceLock<LocalPgBouncer>,
    tls: tokio::sync::OnceCell<TlsCluster>,
}

static CLUSTERS: OnceLock<Clusters> = OnceLock::new();

fn server_from_env(var: &str) -> Option<Server> {
    let url = std::env::var(var).ok()?;
    let cfg: tokio_postgres::Config = url.parse().ok()?;
    let host = match cfg.get_hosts().first()? {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)]
        _ => return None,
    };
    Some(Server {
        host,
        port: cfg.get_ports().first().copied().unwrap_or(5432),
        superuser: cfg.get_user().unwrap_or("postgres").to_owned(),
        _local: None,
    })
}

fn start_local(root: &std::path::Path, name: &str) -> Server {
    let port = free_port().expect("free port");
    let cluster = LocalCluster::init(&root.join(name), port, &ClusterOptions { throwaway: true })
        .unwrap_or_else(|e| panic!("test kit: cannot create the {name} cluster: {e}"));
    cluster.start().unwrap_or_else(|e| panic!("test kit: cannot start the {name} cluster: {e}"));
    Server { host: "127.0.0.1".into(), port, superuser: "postgres".into(), _local: Some(cluster) }
}

/// The clusters of this test process, started on first use.
pub fn clusters() -> &'static Clusters {
    CLUSTERS.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("authio-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("test dir");
        sweep_stale_dirs();
        let shared = server_from_env("AUTHIO_TEST_SHARED_ADMIN_URL").unwrap_or_else(|| start_local(&root, "shared"));
        let dedicated =
            server_from_env("AUTHIO_TEST_DEDICATED_ADMIN_URL").unwrap_or_else(|| start_local(&root, "dedicated"));
        Clusters { shared, dedicated, root, pgbouncer: OnceLock::new(), tls: tokio::sync::OnceCell::new() }
    })
}

/// Remove directories of earlier test processes that are gone.
fn sweep_stale_dirs() {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("authio-test-").and_then(|p| p.parse::<u32>().ok()) {
            if !PathBuf::from(format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

impl Clusters {
    /// pgbouncer (transaction pooling) in front of the shared cluster, started on first use.
    /// Fails the test when pgbouncer is not installed: `.ci/run` installs it.
    pub fn pgbouncer(&self) -> &LocalPgBouncer {
        self.pgbouncer.get_or_init(|| {
            let port = free_port().expect("free port");
            LocalPgBouncer::start(&self.root.join("pgbouncer"), port, self.shared.port)
                .unwrap_or_else(|e| panic!("test kit: cannot start pgbouncer: {e}"))
        })
    }
}

/// A throwaway certificate authority.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    cert_pem: String,
}

impl TestCa {
    pub fn new(common_name: &str) -> Self {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let cert_pem = params.self_signed(&key).expect("CA certificate").pem();
        TestCa { issuer: rcgen::Issuer::new(params, key), cert_pem }
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Write the CA certificate (PEM) to `path`, for `sslrootcert`.
    pub fn write_pem(&self, path: &std::path::Path) -> PathBuf {
        std::fs::write(path, &self.cert_pem).expect("write CA certificate");
        path.to_path_buf()
    }

    /// A server certificate for `names` (DNS names or IP addresses) and its key, both PEM.
    pub fn issue_server(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("server key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, names.first().copied().unwrap_or("server"));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("server certificate");
        (cert.pem(), key.serialize_pem())
    }
}

/// A cluster with TLS on, for the TLS tests: its certificate is issued by `ca` for the name
/// `localhost` only (so `127.0.0.1` passes `verify-ca` but not `verify-full`). The role
/// [`TlsCluster::ROLE`] logs in by SCRAM-SHA-256 over TLS only (`hostssl`; plaintext is
/// rejected); the superuser keeps initdb's trust rules.
pub struct TlsCluster {
    pub server: Server,
    pub ca: TestCa,
    /// The CA certificate as a file, for `sslrootcert`.
    pub ca_file: PathBuf,
    pub password: String,
}

impl TlsCluster {
    pub const ROLE: &'static str = "authio_tls";

    /// A URL of [`TlsCluster::ROLE`] with `password`, through `host`, with the query `params`.
    pub fn url_with_password(&self, host: &str, password: &str, params: &str) -> String {
        format!("postgres://{}:{password}@{host}:{}/postgres?{params}", Self::ROLE, self.server.port)
    }

    /// A URL of [`TlsCluster::ROLE`] with its password, through `host`, with `params`.
    pub fn url(&self, host: &str, params: &str) -> String {
        self.url_with_password(host, &self.password, params)
    }
}

impl Clusters {
    /// The TLS cluster of this test process, started on first use (always a local cluster).
    pub async fn tls(&self) -> &TlsCluster {
        self.tls.get_or_init(|| start_tls_cluster(&self.root)).await
    }
}

async fn start_tls_cluster(root: &std::path::Path) -> TlsCluster {
    let dir = root.join("tls");
    let ca = TestCa::new("authio test CA");
    let (cert_pem, key_pem) = ca.issue_server(&["localhost"]);
    let role = TlsCluster::ROLE;
    let hba_rules = vec![
        format!("hostssl all {role} 127.0.0.1/32 scram-sha-256"),
        format!("hostssl all {role} ::1/128 scram-sha-256"),
        format!("hostnossl all {role} all reject"),
    ];
    let port = free_port().expect("free port");
    let cluster = LocalCluster::init(&dir, port, &ClusterOptions { throwaway: true })
        .unwrap_or_else(|e| panic!("test kit: cannot create the TLS cluster: {e}"));
    cluster
        .enable_tls(&ServerTls { cert_pem, key_pem, hba_rules })
        .unwrap_or_else(|e| panic!("test kit: cannot turn TLS on: {e}"));
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.start().map(|()| cluster).unwrap_or_else(|e| panic!("test kit: cannot start the TLS cluster: {e}"))
    })
    .await
    .expect("start the TLS cluster");
    let server = Server { host: "127.0.0.1".into(), port, superuser: "postgres".into(), _local: Some(cluster) };
    let password = format!("pw-{}", Uuid::new_v4().simple());
    let admin = authio_db::pool::connect(&server.admin_url("postgres"), "authio-testkit").await.expect("connect admin");
    admin
        .batch_execute(&format!(
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE {role} LOGIN PASSWORD '{password}'"
        ))
        .await
        .expect("create the TLS role");
    let ca_file = ca.write_pem(&root.join("tls-ca.pem"));
    TlsCluster { server, ca, ca_file, password }
}

/// A fresh, migrated database.
#[derive(Clone, Debug)]
pub struct TestDb {
    pub name: String,
    pub admin_url: String,
    pub app_url: String,
    pub port: u16,
}

pub async fn fresh_db(server: &Server) -> TestDb {
    let name = format!("t_{}", Uuid::new_v4().simple());
    let admin = authio_db::pool::connect(&server.admin_url("postgres"), "authio-testkit").await.expect("connect admin");
    admin.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create database");
    let db = TestDb {
        admin_url: server.admin_url(&name),
        app_url: server.url("authio_app", &name),
        name,
        port: server.port,
    };
    authio_db::migrate::migrate(&db.admin_url).await.expect("migrate");
    db
}

pub async fn fresh_shared_db() -> TestDb {
    fresh_db(&clusters().shared).await
}

pub async fn fresh_dedicated_db() -> TestDb {
    fresh_db(&clusters().dedicated).await
}

/// The same database reached through pgbouncer (transaction pooling).
pub fn via_pgbouncer(db: &TestDb) -> String {
    clusters().pgbouncer().url("authio_app", &db.name)
}

/// The master key of this test process, base64 (for running the binary with it).
pub fn test_master_key_base64() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(MasterKey::generate_base64)
}

pub fn test_master_key() -> MasterKey {
    MasterKey::from_base64(test_master_key_base64()).expect("key")
}

/// Test-friendly router settings: fast re-read, small pools.
pub fn router_settings() -> RouterSettings {
    RouterSettings {
        route_reread_interval: Duration::from_millis(300),
        dedicated_pool_max_size: 4,
        acquire_timeout: Duration::from_secs(3),
        ..RouterSettings::default()
    }
}

pub fn router_for(db: &TestDb, app_url: &str, settings: RouterSettings) -> Router {
    let settings = RouterSettings { shared_direct_url: Some(db.app_url.clone()), ..settings };
    let router = Router::new(app_url, 8, Some(test_master_key()), settings).expect("router");
    router.start();
    router
}

/// A seeded tenant with one project and one API key.
pub struct Seeded {
    pub tenant: Tenant,
    pub project: Project,
    pub api_key: CreatedApiKey,
}

pub async fn seed_tenant(shared: &TestDb, slug: &str, kind: TenantKind, plan: Plan) -> Seeded {
    let cp = ControlPlane::new(shared.admin_url.clone());
    let tenant = cp
        .create_tenant(&Slug::parse(slug).unwrap(), &DisplayName::parse(slug).unwrap(), kind, plan)
        .await
        .expect("create tenant");
    let project = cp
        .create_project(tenant.id, &Slug::parse("main").unwrap(), &DisplayName::parse("Main").unwrap())
        .await
        .expect("create project");
    let api_key =
        cp.create_api_key(tenant.id, project.id, &DisplayName::parse("test").unwrap()).await.expect("api key");
    Seeded { tenant, project, api_key }
}

/// Give a (new, empty) tenant its own database on the dedicated cluster.
pub async fn make_dedicated(shared: &TestDb, tenant: &Tenant) -> TestDb {
    let db = fresh_dedicated_db().await;
    ControlPlane::new(shared.admin_url.clone())
        .attach_empty_dedicated(tenant, &db.name, &db.app_url, &db.admin_url, &test_master_key())
        .await
        .expect("attach dedicated");
    db
}

/// Register the test kit's dedicated cluster as a host of this shared database and provision
/// the tenant's dedicated database there (empty, migrated, not yet home). Returns its admin URL.
pub async fn provision_dedicated(shared: &TestDb, tenant: &Tenant) -> String {
    let cp = ControlPlane::new(shared.admin_url.clone());
    let host = Slug::parse("test-dedicated").unwrap();
    if cp.list_dedicated_hosts().await.unwrap().iter().all(|h| h.name != host.as_str()) {
        // Trust authentication: the password is recorded but never asked for.
        cp.add_dedicated_host(&host, &clusters().dedicated.admin_url("postgres"), Some("unused"), &test_master_key())
            .await
            .expect("add host");
    }
    let p = cp
        .provision_dedicated(
            tenant,
            authio_core::tenancy::dedicated::ProvisionTarget::Host("test-dedicated"),
            &test_master_key(),
        )
        .await
        .expect("provision");
    clusters().dedicated.admin_url(&p.database_name)
}

/// The audit outbox of a shared test database, as the relay's role reads it.
pub fn relay_outbox(shared: &TestDb) -> authio_db::OutboxReader {
    let url =
        authio_db::pool::with_database_and_user(&shared.app_url, None, Some(("authio_relay", None))).expect("url");
    authio_db::OutboxReader::new(&url).expect("outbox reader")
}

/// A move run with no progress output and no fault injection.
pub fn quiet_move() -> authio_core::tenancy::moves::MoveRun<'static> {
    authio_core::tenancy::moves::MoveRun { progress: &|_| {}, kill_at: None, gate_timeout: Duration::from_secs(5) }
}

pub struct AppOptions {
    /// Share a database with another app instance (defaults to a fresh one).
    pub shared: Option<TestDb>,
    /// Reach the shared database through pgbouncer (LISTEN still goes direct).
    pub via_pgbouncer: bool,
    pub router: RouterSettings,
    /// Adjust the identity settings (limits, cache times) before the app starts.
    pub tune_auth: fn(&mut authio_server::AuthSettings),
    /// Serve the mail catcher's messages on `/dev/mailbox`, as `authio dev` does.
    pub mailbox_page: bool,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions {
            shared: None,
            via_pgbouncer: false,
            router: router_settings(),
            tune_auth: |_| {},
            mailbox_page: false,
        }
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// The SMTP receiver this app's mail is delivered to.
    pub mail: authio_server::mailcatcher::MailCatcher,
    /// TXT records the app's custom-domain checks see.
    pub dns: Arc<authio_core::project::config::StaticTxt>,
    pub base_url: String,
    pub http: reqwest::Client,
    pub router: Router,
    pub shared: TestDb,
    pub control: ControlPlane,
    /// The app's identity service (to drop cached keys after a rotation, for instance).
    pub identity: authio_core::identity::auth::Identity,
    server: tokio::task::JoinHandle<()>,
    relay: tokio::task::JoinHandle<()>,
    mailer: tokio::task::JoinHandle<()>,
    webhooks: tokio::task::JoinHandle<()>,
    smtp: tokio::task::JoinHandle<()>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
        self.relay.abort();
        self.mailer.abort();
        self.webhooks.abort();
        self.smtp.abort();
        self.router.shutdown();
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

pub async fn spawn_app_with(opts: AppOptions) -> TestApp {
    // `AUTHIO_TEST_LOG=debug` shows the app's logs (once per test process).
    if let Ok(filter) = std::env::var("AUTHIO_TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
    let shared = match opts.shared {
        Some(db) => db,
        None => fresh_shared_db().await,
    };
    let app_url = if opts.via_pgbouncer { via_pgbouncer(&shared) } else { shared.app_url.clone() };
    let settings = RouterSettings { statement_cache: !opts.via_pgbouncer, ..opts.router };
    let router = router_for(&shared, &app_url, settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut auth = authio_server::AuthSettings::new(format!("http://{addr}"), test_master_key());
    let dns = Arc::new(authio_core::project::config::StaticTxt::default());
    auth.dns = Some(dns.clone());
    auth.allow_http_upstreams = true;
    // The console acts on the control plane, as in `authio serve`.
    auth.admin_url = Some(shared.admin_url.clone());
    (opts.tune_auth)(&mut auth);
    // A real SMTP receiver on loopback, and the mail sender delivering to it.
    let mail = authio_server::mailcatcher::MailCatcher::default();
    let smtp_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind smtp");
    let smtp_url = format!("smtp://{}", smtp_listener.local_addr().expect("smtp addr"));
    let smtp = mail.serve(smtp_listener);
    if opts.mailbox_page {
        auth.mailbox = Some(mail.clone());
    }
    let mut mail_settings = authio_core::project::mail::MailSettings::new(smtp_url, "no-reply@authio.test");
    mail_settings.poll_every = Duration::from_millis(50);
    let mailer = authio_core::project::mail::Mailer::new(router.clone(), test_master_key(), mail_settings)
        .expect("mailer")
        .spawn(Arc::new(SystemClock));
    // Quick retries and a short timeout, so tests watch them happen.
    let webhook_settings = authio_core::events::webhooks::WebhookSettings {
        timeout: Duration::from_secs(2),
        idle_recheck: Duration::from_millis(100),
        first_retry: Duration::from_secs(1),
    };
    let webhooks = authio_core::events::webhooks::Sender::new(
        router.clone(),
        Arc::new(SystemClock),
        test_master_key(),
        webhook_settings,
    )
    .expect("webhook sender")
    .spawn(Duration::from_millis(50));
    let state = authio_server::AppState::new(router.clone(), Arc::new(SystemClock), auth).expect("app state");
    let identity = state.identity.clone();
    let edge = state.edge;
    let app = authio_server::build_app(state);
    let relay = authio_server::spawn_audit_relay(router.clone(), relay_outbox(&shared), Duration::from_millis(100));
    let server = tokio::spawn(async move {
        let _ = authio_server::serve_with(listener, app, std::future::pending(), edge).await;
    });
    TestApp {
        addr,
        mail,
        dns,
        mailer,
        webhooks,
        smtp,
        base_url: format!("http://{addr}"),
        http: reqwest::Client::new(),
        router,
        control: ControlPlane::new(shared.admin_url.clone()),
        identity,
        shared,
        server,
        relay,
    }
}

/// Run one SQL statement as the superuser on a database and return the first column of each
/// row as text (for checking where rows physically landed).
pub async fn admin_query_strings(admin_url: &str, sql: &str) -> Vec<String> {
    let c = authio_db::pool::connect(admin_url, "authio-testkit").await.expect("connect");
    c.simple_query(sql)
        .await
        .expect("query")
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}
