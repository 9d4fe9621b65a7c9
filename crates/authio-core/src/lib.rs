//! Authio's domain and stores, cut by domain (see `docs/architecture.md` for the map). No HTTP
//! here; every store reaches tenant data through a scoped transaction from `authio-db`, and
//! every act on tenant data is authorized first by [`authz::authorize`].
//!
//! Modules import downward (the leaves `types`, `crypto`, `cache`, `throttle`, `clock`,
//! `error`, then `audit` and `authz`) or from their parent, never from a sibling flow; a test
//! (`module_graph_has_no_cycles`) fails on a cycle between top-level modules.
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod audit;
pub mod authz;
pub mod cache;
pub mod clock;
pub mod crypto;
pub mod dsync;
mod error;
pub mod events;
pub mod federation;
pub mod identity;
#[cfg(test)]
mod layering;
pub mod oidc;
pub mod orgs;
pub mod project;
pub mod tenancy;
pub mod throttle;
pub mod types;

pub use clock::{Clock, FixedClock, SystemClock};
pub use error::CoreError;
