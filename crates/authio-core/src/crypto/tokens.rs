//! Access tokens: the claims of DESIGN.md (the same for shared and dedicated tenants), the
//! issuer URL of a project, and verification against a project's key set.
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::crypto::keys::KeySet;
use crate::CoreError;

/// The JWS `typ` of access tokens (RFC 9068), so an access token is never taken for another
/// kind of JWT.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// Leeway for `nbf`, for clocks a little apart between nodes.
const NBF_LEEWAY_SECS: i64 = 30;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    /// The session; absent on M2M tokens, which have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    pub tid: String,
    pub pid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amr: Option<Vec<String>>,
    /// The sign-in's assurance level: `aal2` with a second factor, else `aal1` (user tokens only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// M2M: the granted scopes, space-separated (RFC 9068).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// M2M: the client (RFC 9068).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The organization the session acts for; `role` is then the member's role in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    /// The permissions of that role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
    /// RFC 8693 4.1: who acts as `sub` (an impersonation session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<ActClaim>,
}

/// The `act` claim (RFC 8693 4.1): the acting party's `sub`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActClaim {
    pub sub: String,
}

/// A project's issuer: `{public_url}/p/{project_id}`. The JWKS is at
/// `{issuer}/.well-known/jwks.json`.
pub fn issuer(public_url: &str, project: Uuid) -> String {
    format!("{}/p/{}", public_url.trim_end_matches('/'), project)
}

/// The project an issuer URL names, if it is one of this deployment's issuers.
pub fn project_of_issuer(public_url: &str, iss: &str) -> Option<Uuid> {
    let prefix = format!("{}/p/", public_url.trim_end_matches('/'));
    let rest = iss.strip_prefix(&prefix)?;
    let id = Uuid::parse_str(rest).ok()?;
    // Only the canonical spelling: the issuer must compare equal when verified.
    (issuer(public_url, id) == iss).then_some(id)
}

/// The `iss` of a token, read without verifying anything: only to choose which project's
/// keys to verify it with.
pub fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Iss {
        iss: String,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Iss>(&bytes).ok().map(|i| i.iss)
}

/// Verify a token against a project's key set: a known `kid`, the algorithm that key was made
/// for (never the header's choice alone, never `none`), the signature, `typ`, the issuer,
/// `exp` and `nbf` against `now`.
pub fn verify(set: &KeySet, token: &str, expected_iss: &str, now: DateTime<Utc>) -> Result<AccessClaims, CoreError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| CoreError::InvalidToken("malformed"))?;
    let kid = header.kid.as_deref().ok_or(CoreError::InvalidToken("no key id"))?;
    let verifier = set.verifier(kid).ok_or(CoreError::InvalidToken("unknown signing key"))?;
    if header.alg != verifier.alg.jsonwebtoken() {
        return Err(CoreError::InvalidToken("algorithm does not match the key"));
    }
    if header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
        return Err(CoreError::InvalidToken("not an access token"));
    }
    let mut validation = jsonwebtoken::Validation::new(verifier.alg.jsonwebtoken());
    // Time is checked below against the injected clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    validation.set_issuer(&[expected_iss]);
    let data = jsonwebtoken::decode::<AccessClaims>(token, &verifier.key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::InvalidIssuer => CoreError::InvalidToken("wrong issuer"),
            ErrorKind::InvalidSignature => CoreError::InvalidToken("bad signature"),
            _ => CoreError::InvalidToken("malformed"),
        }
    })?;
    let claims = data.claims;
    let now = now.timestamp();
    if now >= claims.exp {
        return Err(CoreError::InvalidToken("expired"));
    }
    if now + NBF_LEEWAY_SECS < claims.nbf {
        return Err(CoreError::InvalidToken("not yet valid"));
    }
    Ok(claims)
}

/// What logout needs from an ID token it is handed as a hint.
#[derive(Debug, Deserialize)]
pub struct IdTokenHint {
    pub aud: String,
    pub sub: String,
    pub sid: Option<String>,
}

/// Verify an `id_token_hint` (OIDC RP-Initiated Logout 1.0): signed by the project's key for
/// its algorithm, typed `JWT`, from this issuer. It may have expired: it names, it does not
/// authorise.
pub fn verify_id_token_hint(set: &KeySet, token: &str, expected_iss: &str) -> Result<IdTokenHint, CoreError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| CoreError::InvalidToken("malformed"))?;
    let kid = header.kid.as_deref().ok_or(CoreError::InvalidToken("no key id"))?;
    let verifier = set.verifier(kid).ok_or(CoreError::InvalidToken("unknown signing key"))?;
    if header.alg != verifier.alg.jsonwebtoken() || header.typ.as_deref() != Some("JWT") {
        return Err(CoreError::InvalidToken("not an ID token of this provider"));
    }
    let mut validation = jsonwebtoken::Validation::new(verifier.alg.jsonwebtoken());
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    validation.set_issuer(&[expected_iss]);
    jsonwebtoken::decode::<IdTokenHint>(token, &verifier.key, &validation)
        .map(|d| d.claims)
        .map_err(|_| CoreError::InvalidToken("the ID token does not verify"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn issuers_round_trip_and_only_canonically() {
        let p = Uuid::now_v7();
        let iss = issuer("http://localhost:8080/", p);
        assert_eq!(iss, format!("http://localhost:8080/p/{p}"));
        assert_eq!(project_of_issuer("http://localhost:8080", &iss), Some(p));
        assert_eq!(project_of_issuer("http://other:8080", &iss), None);
        let upper = format!("http://localhost:8080/p/{}", p.to_string().to_uppercase());
        assert_eq!(project_of_issuer("http://localhost:8080", &upper), None);
    }

    #[test]
    fn unverified_issuer_reads_only_the_payload() {
        let payload = URL_SAFE_NO_PAD.encode(r#"{"iss":"https://a/p/x"}"#);
        assert_eq!(unverified_issuer(&format!("e30.{payload}.sig")).as_deref(), Some("https://a/p/x"));
        assert_eq!(unverified_issuer("garbage"), None);
    }
}
