//! Reading rows by column name.
use tokio_postgres::types::FromSql;
use tokio_postgres::Row;

use crate::DbError;

/// Reads a column by name; a missing column or a type mismatch is an error, never a panic.
pub trait RowExt {
    /// The value of column `name`, converted to `T`.
    fn col<'a, T: FromSql<'a>>(&'a self, name: &str) -> Result<T, DbError>;
}

impl RowExt for Row {
    fn col<'a, T: FromSql<'a>>(&'a self, name: &str) -> Result<T, DbError> {
        self.try_get(name).map_err(DbError::from)
    }
}
