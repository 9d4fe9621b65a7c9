//! Sign-in through upstream identity providers: OAuth 2.0 / OpenID Connect and SAML 2.0
//! connections, a project's own or an organization's (its single sign-on).
pub mod saml;
pub mod sso;
pub mod upstream;
