//! Authio's domain and stores: tenants, projects, users, passwords, sessions, signing keys,
//! tokens, M2M clients and project API keys. No HTTP here; every store reaches tenant data
//! through a scoped transaction from `authio-db`.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod clock;
pub mod console;
pub mod control;
pub mod dedicated;
pub mod domain;
mod error;
pub mod issuance_log;
pub mod keys;
pub mod m2m;
pub mod mail;
pub mod moves;
pub mod oidc;
pub mod passwords;
pub mod project_config;
pub mod projects;
pub mod sessions;
pub mod signin;
pub mod tokens;
pub mod upstream;
pub mod users;

pub use clock::{Clock, FixedClock, SystemClock};
pub use error::CoreError;
