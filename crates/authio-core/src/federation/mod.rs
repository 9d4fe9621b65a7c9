//! Sign-in through upstream identity providers: OAuth 2.0 / OpenID Connect today, with room for
//! SAML beside it.
pub mod upstream;
