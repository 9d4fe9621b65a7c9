//! TLS to PostgreSQL against a cluster with TLS on (`authio_testkit::TlsCluster`: certificate
//! for `localhost` only, issued by a throwaway CA; the test role logs in by SCRAM-SHA-256 over
//! `hostssl` only), through both client kinds: a deadpool pool of tokio-postgres connections,
//! and the pipelined read client.
use std::path::PathBuf;
use std::time::Duration;

use authio_core::types::Plan;
use authio_db::pipeline::{make_read_pool, PgConn};
use authio_db::pool::{make_pool, parse_url, PoolOptions};
use authio_db::{DbError, Router, RouterSettings, Scope, TenantKind};
use authio_testkit::{clusters, fresh_db, seed_tenant, TestCa, TlsCluster};

const SSL_SQL: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

fn opts() -> PoolOptions {
    PoolOptions {
        max_size: 2,
        wait_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        ..PoolOptions::default()
    }
}

/// Whether a session opened through a deadpool pool is encrypted, by the server's account.
async fn ssl_via_pool(url: &str) -> Result<bool, DbError> {
    let pool = make_pool(url, &opts())?;
    let client = pool.get().await?;
    Ok(client.query_one(SSL_SQL, &[]).await?.get(0))
}

/// The same through the pipelined read client, from its pool.
async fn ssl_via_pipeline(url: &str) -> Result<bool, DbError> {
    let pool = make_read_pool(url, &opts(), true)?;
    let mut conn = pool.get().await.map_err(|e| DbError::Pool(e.to_string()))?;
    let rows = conn.pipeline(&[(SSL_SQL, &[])]).await?;
    rows.first().ok_or_else(|| DbError::Decode("no row".into()))?.try_get::<bool>(0)
}

/// Both clients connect, and both sessions are encrypted.
async fn assert_encrypted(url: &str) {
    assert!(ssl_via_pool(url).await.unwrap_or_else(|e| panic!("pool: {e}")), "pool session not encrypted");
    assert!(ssl_via_pipeline(url).await.unwrap_or_else(|e| panic!("pipeline: {e}")), "pipeline session not encrypted");
}

/// Both clients are refused, each with an error containing `why`.
async fn assert_refused(url: &str, why: &str) {
    let pool = ssl_via_pool(url).await;
    let pipeline = ssl_via_pipeline(url).await;
    for (client, result) in [("pool", pool), ("pipeline", pipeline)] {
        match result {
            Ok(ssl) => panic!("{client}: connected (ssl = {ssl}), expected a refusal: {why}"),
            Err(e) => assert!(e.to_string().contains(why), "{client}: expected {why:?} in: {e}"),
        }
    }
}

/// A CA certificate file removed on drop.
struct CaFile(PathBuf);

impl CaFile {
    fn of(ca: &TestCa) -> Self {
        let path = std::env::temp_dir().join(format!("authio-other-ca-{}.pem", uuid::Uuid::new_v4().simple()));
        CaFile(ca.write_pem(&path))
    }
}

impl Drop for CaFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn root(path: &std::path::Path) -> String {
    format!("sslrootcert={}", path.display())
}

#[tokio::test]
async fn tls_verify_full_with_the_right_ca_connects_both_clients() {
    let tls = clusters().tls().await;
    let url = tls.url("localhost", &format!("sslmode=verify-full&{}", root(&tls.ca_file)));
    assert_encrypted(&url).await;
    // One direct pipelined connection too, outside any pool.
    let mut conn = PgConn::connect(&parse_url(&url).unwrap(), "tls-test").await.unwrap();
    let rows = conn.pipeline(&[(SSL_SQL, &[])]).await.unwrap();
    assert!(rows[0].try_get::<bool>(0).unwrap());
}

#[tokio::test]
async fn tls_a_certificate_from_another_ca_is_refused_by_both_clients() {
    let tls = clusters().tls().await;
    let other = CaFile::of(&TestCa::new("some other CA"));
    for mode in ["verify-full", "verify-ca", "require"] {
        // `require` with a root certificate checks the chain, as libpq does.
        let url = tls.url("localhost", &format!("sslmode={mode}&{}", root(&other.0)));
        assert_refused(&url, "invalid peer certificate").await;
    }
    // Without a root certificate `require` encrypts and checks nothing.
    assert_encrypted(&tls.url("localhost", "sslmode=require")).await;
}

#[tokio::test]
async fn tls_verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let tls = clusters().tls().await;
    // The certificate names `localhost` only.
    let full = tls.url("127.0.0.1", &format!("sslmode=verify-full&{}", root(&tls.ca_file)));
    assert_refused(&full, "not valid for name").await;
    let ca_only = tls.url("127.0.0.1", &format!("sslmode=verify-ca&{}", root(&tls.ca_file)));
    assert_encrypted(&ca_only).await;
}

#[tokio::test]
async fn tls_scram_over_hostssl_and_a_wrong_password_fails() {
    let tls = clusters().tls().await;
    let params = format!("sslmode=verify-full&{}", root(&tls.ca_file));
    // The role's only way in is hostssl + scram-sha-256: logging in at all proves SCRAM ran
    // over TLS, and the server reports the session encrypted.
    assert_encrypted(&tls.url("localhost", &params)).await;
    assert_refused(
        &tls.url_with_password("localhost", "not-the-password", &params),
        "password authentication failed for user \"authio_tls\"",
    )
    .await;
    // Without a password the server's SCRAM request cannot be answered.
    let no_password = format!("postgres://{}@localhost:{}/postgres?{params}", TlsCluster::ROLE, tls.server.port());
    assert!(ssl_via_pool(&no_password).await.is_err());
    assert!(ssl_via_pipeline(&no_password).await.unwrap_err().to_string().contains("a password is required"));
    // In plaintext the role is turned away before authentication.
    assert_refused(&tls.url("localhost", "sslmode=disable"), "no encryption").await;
}

#[tokio::test]
async fn tls_prefer_encrypts_when_the_server_offers_it_and_disable_does_not() {
    let tls = clusters().tls().await;
    // The superuser keeps initdb's trust rules, so it can log in either way.
    let admin = |params: &str| format!("{}?{params}", tls.server.admin_url("postgres"));
    assert!(ssl_via_pool(&admin("sslmode=prefer")).await.unwrap());
    assert!(ssl_via_pipeline(&admin("sslmode=prefer")).await.unwrap());
    assert!(!ssl_via_pool(&admin("sslmode=disable")).await.unwrap());
    assert!(!ssl_via_pipeline(&admin("sslmode=disable")).await.unwrap());
    // No sslmode on a loopback URL: plaintext, as before.
    assert!(!ssl_via_pipeline(&tls.server.admin_url("postgres")).await.unwrap());
}

#[tokio::test]
async fn tls_the_router_reaches_the_shared_database_over_verify_full() {
    let tls = clusters().tls().await;
    let db = fresh_db(&tls.server).await;
    let seeded = seed_tenant(&db, "tls-tenant", TenantKind::Customer, Plan::Free).await;
    let url =
        format!("postgres://authio_app@localhost:{}/{}?sslmode=verify-full&{}", db.port, db.name, root(&tls.ca_file));
    let settings = RouterSettings {
        shared_direct_url: Some(url.clone()),
        acquire_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let router = Router::new(&url, 2, None, settings).unwrap();
    router.start();
    let scope = Scope::project(seeded.tenant.id, seeded.project.id, seeded.tenant.tenant_kind());
    // The pipelined reads (route lookup and the scoped read) and a scoped transaction.
    let rows = router.read(&scope, SSL_SQL, &[]).await.unwrap();
    assert!(rows[0].try_get::<bool>(0).unwrap());
    let tx = router.begin(&scope).await.unwrap();
    assert!(tx.query_one(SSL_SQL, &[]).await.unwrap().get::<_, bool>(0));
    tx.commit().await.unwrap();
    // The LISTEN connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !router.listener_connected() {
        assert!(std::time::Instant::now() < deadline, "the listener did not connect over TLS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    router.shutdown();
}
