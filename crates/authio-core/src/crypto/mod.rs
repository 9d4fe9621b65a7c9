//! Cryptography shared by every flow: opaque secrets (generate, hash, compare), PKCE, the
//! projects' signing keys and the JWTs signed with them.
pub mod keys;
pub mod opaque;
pub mod pkce;
pub mod tokens;
