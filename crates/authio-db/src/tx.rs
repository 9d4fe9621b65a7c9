//! Scoped transactions: `BEGIN` then the transaction-local GUCs, pipelined in one round trip.
//! Never a session-level `SET`: behind pgbouncer it would leak to the next client.
use deadpool_postgres::Object;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;

use crate::{DbError, RouterError, Scope};

/// A statement parameter with its declared type (statements are sent unnamed, so types are
/// given rather than asked of the server).
pub type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// Binds the scope (transaction-local GUCs).
pub(crate) const BIND_SQL: &str =
    "SELECT set_config('authio.tenant_id', $1, true), set_config('authio.project_id', $2, true)";

/// Binds the scope and, in the same statement, enters the tenant's home: the cutover gate (a
/// shared lock a move's cutover takes exclusively) and the home fence, read after the gate
/// with a fresh snapshot. Not at home raises SQLSTATE [`NOT_AT_HOME_SQLSTATE`], so a node with
/// a stale route learns it at once, before anything is read or written.
pub(crate) const BIND_AND_ENTER_SQL: &str = "SELECT set_config('authio.tenant_id', $1, true), \
     set_config('authio.project_id', $2, true), authio_enter_home($1::uuid)";

/// Raised by `authio_enter_home` (migration 0008) where the tenant does not live.
pub(crate) const NOT_AT_HOME_SQLSTATE: &str = "AH001";

/// Whether a database error is the gate's "not at home".
pub(crate) fn is_not_at_home(e: &DbError) -> bool {
    e.sqlstate() == Some(NOT_AT_HOME_SQLSTATE)
}

/// Whether opening a transaction asks the home fence.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fence {
    /// Tenant-home tables: refuse at once if the tenant does not live here.
    Check,
    /// The pinned tables on the shared database, whose rows stay there for every tenant (a
    /// dedicated tenant is not "at home" on shared).
    Skip,
}

/// A transaction bound to one scope on the pool where the scope's tenant lives.
/// Dropped without `commit`, it rolls back before its connection goes back to the pool.
pub struct ScopedTx {
    client: Option<Object>,
}

impl ScopedTx {
    pub(crate) async fn open(client: Object, scope: Scope, fence: Fence) -> Result<Self, DbError> {
        let tenant = scope.tenant_id.to_string();
        let project = scope.project_id.map(|p| p.to_string()).unwrap_or_default();
        let tx = ScopedTx { client: Some(client) };
        let c = tx.client_ref()?;
        let bind: [Param<'_>; 2] = [(&tenant, Type::TEXT), (&project, Type::TEXT)];
        let sql = if fence == Fence::Check { BIND_AND_ENTER_SQL } else { BIND_SQL };
        let (begun, bound) = futures_util::join!(c.batch_execute("BEGIN"), c.query_typed(sql, &bind));
        begun?;
        match bound.map_err(DbError::from) {
            Err(e) if is_not_at_home(&e) => Err(RouterError::NotAtHome(scope.tenant_id).into()),
            Err(e) => Err(e),
            Ok(_) => Ok(tx),
        }
    }

    fn client_ref(&self) -> Result<&Object, DbError> {
        self.client.as_ref().ok_or_else(|| DbError::Pool("transaction already finished".into()))
    }

    pub async fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, DbError> {
        Ok(self.client_ref()?.query_typed(sql, params).await?)
    }

    pub async fn query_opt(&self, sql: &str, params: &[Param<'_>]) -> Result<Option<Row>, DbError> {
        let mut rows = self.query(sql, params).await?;
        Ok(if rows.is_empty() { None } else { Some(rows.swap_remove(0)) })
    }

    pub async fn query_one(&self, sql: &str, params: &[Param<'_>]) -> Result<Row, DbError> {
        self.query_opt(sql, params)
            .await?
            .ok_or_else(|| DbError::Pool("query returned no row where one was expected".into()))
    }

    pub async fn commit(mut self) -> Result<(), DbError> {
        let client = self.client.take().ok_or_else(|| DbError::Pool("transaction already finished".into()))?;
        client.batch_execute("COMMIT").await?;
        Ok(())
    }

    /// Run a last statement and commit, in one round trip: locks the statement takes (an
    /// audit chain's head, for one) are held for the commit only, not for a round trip more.
    /// If the statement fails the transaction rolls back (PostgreSQL answers the COMMIT of a
    /// failed transaction with a rollback) and its error is returned.
    pub async fn commit_with(mut self, sql: &str, params: &[Param<'_>]) -> Result<(), DbError> {
        let client = self.client.take().ok_or_else(|| DbError::Pool("transaction already finished".into()))?;
        let (last, commit) = futures_util::join!(client.query_typed(sql, params), client.batch_execute("COMMIT"));
        match (last, commit) {
            (Err(e), _) => {
                // Make sure nothing is left open on the connection before it goes back.
                rollback_in_background(client);
                Err(e.into())
            }
            (Ok(_), Err(e)) => {
                rollback_in_background(client);
                Err(e.into())
            }
            (Ok(_), Ok(())) => Ok(()),
        }
    }
}

impl Drop for ScopedTx {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            rollback_in_background(client);
        }
    }
}

/// Roll back and only then return the connection to the pool; if that fails, detach the
/// connection so a half-open transaction never reaches another request.
pub(crate) fn rollback_in_background(client: Object) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(async move {
                if client.batch_execute("ROLLBACK").await.is_err() {
                    drop(Object::take(client));
                }
            });
        }
        Err(_) => drop(Object::take(client)),
    }
}

/// A control-plane transaction as `authio_owner` (operators' commands, migrations,
/// provisioning). `SET LOCAL ROLE` lasts only this transaction.
pub struct OwnerTx<'a> {
    tx: tokio_postgres::Transaction<'a>,
}

impl<'a> OwnerTx<'a> {
    pub async fn begin(client: &'a mut tokio_postgres::Client) -> Result<Self, DbError> {
        let tx = client.transaction().await?;
        tx.batch_execute("SET LOCAL ROLE authio_owner").await?;
        Ok(OwnerTx { tx })
    }

    /// Bind a tenant scope too (for reaching a tenant's rows as the owner).
    pub async fn bind(&self, scope: &Scope) -> Result<(), DbError> {
        let tenant = scope.tenant_id.to_string();
        let project = scope.project_id.map(|p| p.to_string()).unwrap_or_default();
        self.tx.query_typed(BIND_SQL, &[(&tenant, Type::TEXT), (&project, Type::TEXT)]).await?;
        Ok(())
    }

    pub async fn query(&self, sql: &str, params: &[Param<'_>]) -> Result<Vec<Row>, DbError> {
        Ok(self.tx.query_typed(sql, params).await?)
    }

    pub async fn query_opt(&self, sql: &str, params: &[Param<'_>]) -> Result<Option<Row>, DbError> {
        let mut rows = self.query(sql, params).await?;
        Ok(if rows.is_empty() { None } else { Some(rows.swap_remove(0)) })
    }

    pub async fn batch(&self, sql: &str) -> Result<(), DbError> {
        Ok(self.tx.batch_execute(sql).await?)
    }

    pub async fn commit(self) -> Result<(), DbError> {
        Ok(self.tx.commit().await?)
    }
}
