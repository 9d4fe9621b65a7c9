//! A project's configuration: token and session settings, sign-in configuration pinned to the
//! shared database (redirect URIs, origins, domains, presentation, templates), secret API keys
//! and the mail it sends.
pub mod api_keys;
pub mod config;
pub mod mail;
pub mod settings;
