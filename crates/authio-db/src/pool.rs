//! Connection pools. Every statement goes out unnamed (`query_typed`), so the same pools work
//! through pgbouncer in transaction-pooling mode, where named prepared statements would leak
//! across clients.
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

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

pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, DbError> {
    url.parse::<tokio_postgres::Config>().map_err(|e| DbError::Pool(format!("invalid database URL: {e}")))
}

pub fn make_pool(url: &str, opts: &PoolOptions) -> Result<Pool, DbError> {
    let mut cfg = parse_url(url)?;
    cfg.application_name(&opts.application_name);
    cfg.connect_timeout(opts.connect_timeout);
    let mgr = Manager::from_config(cfg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
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
    let mut cfg = parse_url(url)?;
    cfg.application_name(application_name);
    cfg.connect_timeout(Duration::from_secs(5));
    let (client, conn) = cfg.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "direct connection closed");
        }
    });
    Ok(client)
}
