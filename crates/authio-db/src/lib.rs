//! Data access for Authio: the pool router, scoped transactions (GUC binding), the route
//! cache, the pre-resolution lookups, migrations, and local PostgreSQL clusters.
//!
//! The one rule: tenant data is reached only through a [`ScopedTx`] opened by
//! [`Router::begin`] for a [`Scope`]. The only code allowed to use the shared pool without a
//! scope is [`preresolve`].
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod cluster;
mod error;
pub mod migrate;
pub mod outbox;
pub mod pipeline;
pub mod pool;
pub mod preresolve;
mod route_cache;
mod router;
mod row;
mod scope;
mod secret_box;
pub mod tls;
mod tx;

pub use deadpool_postgres::Pool;
pub use error::{DbError, RouterError};
pub use outbox::OutboxReader;
pub use pipeline::PgRow;
pub use route_cache::{CachedRoute, DbStrategy, RouteCache};
pub use router::{CacheEvent, Router, RouterSettings};
pub use row::RowExt;
pub use scope::{Scope, TenantKind};
pub use secret_box::{MasterKey, SecretBoxError};
pub use tokio_postgres::types::Type;
pub use tokio_postgres::Row;
pub use tx::{OwnerTx, Param, ScopedTx};
