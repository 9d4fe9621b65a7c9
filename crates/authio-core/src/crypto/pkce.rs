//! PKCE (RFC 7636), S256 only: what a client sends in an authorization request, and the check
//! of its verifier when the code is exchanged.
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::types::ValidationError;
use crate::CoreError;

/// The S256 challenge of a verifier (RFC 7636 4.2).
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Whether `verifier` is a valid RFC 7636 verifier whose S256 challenge is `challenge`
/// (compared in constant time).
pub fn pkce_matches(challenge: &str, verifier: &str) -> bool {
    let shaped = (43..=128).contains(&verifier.len())
        && verifier.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    shaped && bool::from(s256(verifier).as_bytes().ct_eq(challenge.as_bytes()))
}

/// A PKCE challenge as given: S256 only (`plain` is refused), 43 base64url characters.
pub fn check_challenge(challenge: &str, method: Option<&str>) -> Result<(), CoreError> {
    if method != Some("S256") {
        return Err(CoreError::Invalid(ValidationError::Field("code_challenge_method (S256 is required)")));
    }
    let ok = challenge.len() == 43 && challenge.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(CoreError::Invalid(ValidationError::Field("code_challenge")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(s256(verifier), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        assert!(pkce_matches("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", verifier));
        assert!(!pkce_matches("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", "short"));
        assert!(check_challenge("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", Some("plain")).is_err());
        assert!(check_challenge("E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", Some("S256")).is_ok());
        assert!(check_challenge("too-short", Some("S256")).is_err());
    }
}
