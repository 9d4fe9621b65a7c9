//! The data layer's errors.
use thiserror::Error;
use uuid::Uuid;

/// Why the router could not give a pool for a scope.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RouterError {
    /// The platform tenant always lives on the shared database; a row that says otherwise is
    /// refused rather than followed.
    #[error("the platform tenant has no dedicated pool (its row says db_strategy = dedicated)")]
    PlatformTenantNoDedicatedPool,
    #[error("unknown tenant {0}")]
    UnknownTenant(Uuid),
    #[error("tenant {0} is dedicated but has no ready dedicated database recorded")]
    NoDedicatedDatabase(Uuid),
    #[error("the dedicated database of tenant {tenant} is unavailable: {reason}")]
    DedicatedUnavailable { tenant: Uuid, reason: String },
    #[error("tenant {0} is being moved; retry shortly")]
    MoveInProgress(Uuid),
    /// The database this node routed to says the tenant does not live there (the node's
    /// route was stale; it has been dropped, so a retry goes to the new home).
    #[error("tenant {0} is not at home in the database this node routed to; retry")]
    NotAtHome(Uuid),
    #[error("the shared database is unavailable: {0}")]
    SharedUnavailable(String),
    #[error("configuration error: {0}")]
    Config(String),
}

#[derive(Debug, Error)]
pub enum DbError {
    #[error(transparent)]
    Router(#[from] RouterError),
    #[error("database error: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("connection pool error: {0}")]
    Pool(String),
    /// A database URL that cannot be used as written (see [`crate::tls`]).
    #[error("database configuration error: {0}")]
    Config(String),
    #[error("migration error: {0}")]
    Migration(String),
    /// An error reported by the server on the pipelined read path.
    #[error("database error {code}: {message}")]
    Server { code: String, message: String },
    #[error("decoding a value: {0}")]
    Decode(String),
}

impl DbError {
    /// The SQLSTATE of a database error, when there is one (unique violations and the like are
    /// mapped to domain errors by the stores).
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            DbError::Postgres(e) => e.code().map(|c| c.code()),
            DbError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The constraint a database error names, if any.
    pub fn constraint(&self) -> Option<&str> {
        match self {
            DbError::Postgres(e) => e.as_db_error().and_then(|d| d.constraint()),
            _ => None,
        }
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => {
                DbError::Pool(format!("opening a connection failed: {}", describe(&e)))
            }
            other => DbError::Pool(other.to_string()),
        }
    }
}

/// tokio-postgres shows a server error as "db error" and keeps the reason for any other
/// (a refused certificate, say) in its source: say what the server or the cause said.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(d) = e.as_db_error() {
        return format!("{} ({}): {}", d.severity(), d.code().code(), d.message());
    }
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
