//! Connection pools. Every statement goes out unnamed (`query_typed`), so the same pools work
//! through pgbouncer in transaction-pooling mode, where named prepared statements would leak
//! across clients.
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

use crate::tls::ConnectConfig;
use crate::DbError;

#[derive(Clone, Debug)]
pub struct PoolOptions {
    pub max_size: usize,
    /// How long a request waits for a free connection before failing.
    pub wait_timeout: Duration,
    /// How long opening a new connection may take.
    pub connect_timeout: Duration,
    pub application_name: String,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            max_size: 16,
            wait_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            application_name: "authio".into(),
        }
    }
}

/// The same server and options with another database and/or user (the password goes with the
/// user: `None` drops it).
pub fn with_database_and_user(
    url: &str,
    database: Option<&str>,
    user: Option<(&str, Option<&str>)>,
) -> Result<String, DbError> {
    let bad = || DbError::Pool("not a postgres:// URL with a host".into());
    let mut u = url::Url::parse(url).map_err(|_| bad())?;
    if !matches!(u.scheme(), "postgres" | "postgresql") || u.host_str().is_none() {
        return Err(bad());
    }
    if let Some(db) = database {
        u.set_path(&format!("/{db}"));
    }
    if let Some((name, password)) = user {
        u.set_username(name).map_err(|_| bad())?;
        u.set_password(password).map_err(|_| bad())?;
    }
    Ok(u.to_string())
}

/// Parse a database URL, TLS parameters included (see [`crate::tls`]).
pub fn parse_url(url: &str) -> Result<ConnectConfig, DbError> {
    crate::tls::parse_url(url)
}

pub fn make_pool(url: &str, opts: &PoolOptions) -> Result<Pool, DbError> {
    make_pool_with(parse_url(url)?, opts)
}

pub fn make_pool_with(cfg: ConnectConfig, opts: &PoolOptions) -> Result<Pool, DbError> {
    let tls = cfg.make_tls();
    let mut pg = cfg.pg;
    pg.application_name(&opts.application_name);
    pg.connect_timeout(opts.connect_timeout);
    let mgr = Manager::from_config(pg, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(mgr)
        .max_size(opts.max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(opts.wait_timeout))
        .create_timeout(Some(opts.connect_timeout))
        .recycle_timeout(Some(opts.connect_timeout))
        .build()
        .map_err(|e| DbError::Pool(e.to_string()))
}

/// One direct connection (migrations, the LISTEN connection, operator commands).
pub async fn connect(url: &str, application_name: &str) -> Result<tokio_postgres::Client, DbError> {
    connect_with(&parse_url(url)?, application_name).await
}

pub async fn connect_with(cfg: &ConnectConfig, application_name: &str) -> Result<tokio_postgres::Client, DbError> {
    let mut pg = cfg.pg.clone();
    pg.application_name(application_name);
    pg.connect_timeout(Duration::from_secs(5));
    let (client, conn) = pg.connect(cfg.make_tls()).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "direct connection closed");
        }
    });
    Ok(client)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_another_database_and_user() {
        let d =
            with_database_and_user("postgres://admin:pw@db.example:5433/postgres?sslmode=require", Some("t_1"), None)
                .unwrap();
        assert_eq!(d, "postgres://admin:pw@db.example:5433/t_1?sslmode=require");
        let a = with_database_and_user(
            "postgres://admin@db.example/postgres",
            Some("x"),
            Some(("authio_app", Some("s3cr/t"))),
        )
        .unwrap();
        assert_eq!(a, "postgres://authio_app:s3cr%2Ft@db.example/x");
        let r =
            with_database_and_user("postgres://authio_app:pw@h/authio", None, Some(("authio_relay", None))).unwrap();
        assert_eq!(r, "postgres://authio_relay@h/authio");
        assert!(with_database_and_user("mysql://h/db", None, None).is_err());
        assert!(with_database_and_user("not a url", None, None).is_err());
    }
}
