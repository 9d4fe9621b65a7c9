//! End users and the flows that sign them in: users, passwords, sessions and refresh tokens,
//! password and passwordless sign-in, the hosted flow's hand-off, M2M clients, introspection
//! and revocation, second factors (`mfa`). [`auth::Identity`] is the service the other flows build on.
pub mod auth;
pub mod impersonation;
pub mod m2m;
pub mod mfa;
pub mod passwords;
pub mod sessions;
pub mod signin;
pub mod sso_policy;
pub mod users;
