//! Authio's domain and stores: tenants, projects, users and project API keys. No HTTP here;
//! every store reaches tenant data through a scoped transaction from `authio-db`.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod api_keys;
pub mod clock;
pub mod control;
pub mod domain;
mod error;
pub mod users;

pub use clock::{Clock, FixedClock, SystemClock};
pub use error::CoreError;
