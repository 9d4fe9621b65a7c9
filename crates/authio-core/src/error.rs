//! The core layer's error: domain failures with a stable machine-readable code, and the
//! data layer's failures passed through. HTTP status codes are chosen at the edge.
use authio_db::{DbError, RouterError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CoreError {
    #[error("{0}")]
    Invalid(#[from] crate::domain::ValidationError),
    #[error("a user with this email already exists in this project")]
    EmailTaken,
    #[error("a tenant with this slug already exists")]
    SlugTaken,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("the API key is invalid or revoked")]
    InvalidApiKey,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<RouterError> for CoreError {
    fn from(e: RouterError) -> Self {
        CoreError::Db(DbError::Router(e))
    }
}
