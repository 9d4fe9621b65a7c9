//! The shared audit outbox as the relay reads and clears it, over connections of its own role
//! (`authio_relay`, migration 0009): the app role may add events to the outbox but not read
//! other tenants' pending events nor delete them.
use std::time::Duration;

use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::pipeline::{make_read_pool, PgRow, ReadPool};
use crate::pool::PoolOptions;
use crate::{DbError, RouterError};

#[derive(Clone)]
pub struct OutboxReader {
    reads: ReadPool,
}

impl OutboxReader {
    /// `url`: the shared database as `authio_relay`.
    pub fn new(url: &str) -> Result<Self, DbError> {
        let opts = PoolOptions {
            max_size: 2,
            wait_timeout: Duration::from_secs(5),
            application_name: "authio-audit-relay".into(),
            ..PoolOptions::default()
        };
        Ok(OutboxReader { reads: make_read_pool(url, &opts, true)? })
    }

    /// The oldest events waiting, as `(tenant, project, id, occurred_at, action, actor_type,
    /// actor_id, actor_name, target_type, target_id, ip, user_agent, request_id, metadata)`.
    /// Events in `skip` (recently failed to deliver) are passed over.
    pub async fn take(&self, limit: i32, skip: &[Uuid]) -> Result<Vec<PgRow>, DbError> {
        let skip = skip.to_vec();
        let mut conn = self.conn().await?;
        conn.pipeline(&[(
            "SELECT tenant_id, project_id, id, occurred_at, action, actor_type, actor_id, actor_name, target_type, \
             target_id, ip, user_agent, request_id, metadata FROM authio_audit_outbox_take_skipping($1, $2)",
            &[(&limit, Type::INT4), (&skip, Type::UUID_ARRAY)],
        )])
        .await
    }

    /// An event is in its home log now.
    pub async fn done(&self, id: Uuid) -> Result<(), DbError> {
        let mut conn = self.conn().await?;
        conn.pipeline(&[("SELECT authio_audit_outbox_done($1)", &[(&id, Type::UUID)])]).await?;
        Ok(())
    }

    async fn conn(&self) -> Result<deadpool::managed::Object<crate::pipeline::PgConnManager>, DbError> {
        self.reads.get().await.map_err(|e| DbError::Router(RouterError::SharedUnavailable(e.to_string())))
    }

    pub fn close(&self) {
        self.reads.close();
    }
}
