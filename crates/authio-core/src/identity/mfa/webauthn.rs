//! WebAuthn relying party: the registration and sign-in ceremonies of passkeys and security keys,
//! over the pure-Rust `webauthn_rp` crate, with the server state and stored credentials as plain
//! bytes the caller keeps in PostgreSQL.
//!
//! Flow: `start_*` returns the options for the page (WebAuthn Level 3 JSON, base64url strings) and
//! an opaque state the caller stores for one use (it carries the challenge and its expiry, five
//! minutes); `finish_*` takes that state and the browser's `PublicKeyCredential.toJSON()`.
//! Origins are compared exactly (scheme, host and port), so `http://localhost:8080` works for
//! tests and `https://login.example.com` in production.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;
use webauthn_rp::bin::{Decode as _, Encode as _};
use webauthn_rp::request::auth::{
    AllowedCredentials, AuthenticationVerificationOptions, AuthenticatorAttachmentEnforcement,
    DiscoverableCredentialRequestOptions, NonDiscoverableCredentialRequestOptions, SignatureCounterEnforcement,
};
use webauthn_rp::request::register::{
    CredProtect, Nickname, PublicKeyCredentialCreationOptions, PublicKeyCredentialUserEntity,
    RegistrationVerificationOptions, UserHandle16, Username,
};
use webauthn_rp::request::{
    AsciiDomain, BackupReq, Credentials as _, ExtensionInfo, ExtensionReq, PublicKeyCredentialDescriptor, RpId,
    UserVerificationRequirement,
};
use webauthn_rp::response::auth::error::AuthCeremonyErr;
use webauthn_rp::response::register::error::RegCeremonyErr;
use webauthn_rp::response::register::{CompressedPubKey, DynamicState, StaticState};
use webauthn_rp::response::{AuthTransports, AuthenticatorAttachment, Backup, CredentialId};
use webauthn_rp::{
    AuthenticatedCredential, DiscoverableAuthentication16, DiscoverableAuthenticationServerState,
    NonDiscoverableAuthentication16, NonDiscoverableAuthenticationServerState, Registration, RegistrationServerState,
};

/// The relying party of one request: the project's hosted domain (or verified custom domain) and
/// the exact origin its pages are served from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rp {
    /// The RP ID, a domain such as `localhost` or `login.example.com`.
    pub id: String,
    /// The exact origin, e.g. `http://localhost:8080` or `https://login.example.com`.
    pub origin: String,
    /// The name shown by the authenticator.
    pub name: String,
}

/// Why a ceremony could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum WebauthnError {
    /// The client's JSON is malformed, or the RP is misconfigured.
    #[error("bad WebAuthn request: {0}")]
    BadRequest(&'static str),
    /// The ceremony failed (origin, RP ID hash, challenge, user verification, signature, ...).
    #[error("WebAuthn ceremony refused: {0}")]
    Refused(&'static str),
    /// The stored state's five minutes are up: start again.
    #[error("WebAuthn ceremony expired")]
    Expired,
    /// The signature counter did not increase: a cloned authenticator is likely.
    #[error("WebAuthn signature counter did not increase")]
    CounterRegressed,
    /// A bug, or stored bytes that this module did not write.
    #[error("WebAuthn internal error: {0}")]
    Internal(String),
}

/// A credential that finished registration; the caller stores it (and must refuse an `id` that is
/// already registered, to anyone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCredential {
    /// The credential ID.
    pub id: Vec<u8>,
    /// The public key and what verification needs of it; opaque to the caller.
    pub public_key: Vec<u8>,
    /// The authenticator's signature counter (0 if it keeps none).
    pub sign_count: u32,
    /// BE flag: a synced passkey (`swk`) rather than a device-bound key (`hwk`).
    pub backup_eligible: bool,
}

/// The stored credential an authentication response names (see [`credential_of`]).
#[derive(Clone, Copy, Debug)]
pub struct StoredCredential<'a> {
    /// The credential ID.
    pub id: &'a [u8],
    /// The user handle the credential was registered under.
    pub user_handle: &'a [u8; 16],
    /// [`NewCredential::public_key`] as stored.
    pub public_key: &'a [u8],
    /// The last signature counter stored.
    pub sign_count: u32,
}

/// A successful assertion; the caller stores `sign_count` as the credential's new counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Asserted {
    /// The authenticator's new signature counter.
    pub sign_count: u32,
    /// BS flag: the credential is backed up (synced) now.
    pub backed_up: bool,
}

/// First byte of each server state, so a state is never finished by the wrong ceremony.
const STATE_REGISTRATION: u8 = 1;
const STATE_DISCOVERABLE: u8 = 2;
const STATE_ALLOW_LIST: u8 = 3;
/// First byte of [`NewCredential::public_key`], so the layout can change later.
const KEY_V1: u8 = 1;

/// The key type `StaticState::decode` yields: Ed25519, P-256, P-384, RSA.
type StoredKey = CompressedPubKey<[u8; 32], [u8; 32], [u8; 48], Vec<u8>>;

/// Options for `navigator.credentials.create` and the server state to keep until
/// [`finish_registration`].
///
/// A discoverable credential (residentKey "required"), user verification required, five minutes,
/// attestation "none". `exclude` lists the user's registered credential IDs, so an authenticator
/// that already holds one does not create a second.
///
/// # Errors
///
/// `BadRequest` if the RP is misconfigured or `user_name` is not a valid user name (RFC 8265:
/// no spaces, 1 to 1023 bytes).
pub fn start_registration(
    rp: &Rp,
    user_handle: &[u8; 16],
    user_name: &str,
    display_name: &str,
    exclude: &[Vec<u8>],
) -> Result<(Value, Vec<u8>), WebauthnError> {
    let rp_id = rp_id(rp)?;
    let handle = user_handle_of(user_handle);
    let name =
        Username::try_from(user_name).map_err(|_e| WebauthnError::BadRequest("user name is not valid for WebAuthn"))?;
    // The display name is cosmetic: one the crate refuses (RFC 8266) is left out, not fatal.
    let display = Nickname::try_from(display_name).ok();
    let exclude = exclude
        .iter()
        .map(|id| {
            Ok(PublicKeyCredentialDescriptor {
                id: CredentialId::<Vec<u8>>::decode(id.clone())
                    .map_err(|_e| internal("stored credential id has an invalid length"))?,
                transports: no_transports()?,
            })
        })
        .collect::<Result<Vec<_>, WebauthnError>>()?;
    let user = PublicKeyCredentialUserEntity { name, id: &handle, display_name: display };
    let mut options = PublicKeyCredentialCreationOptions::passkey(&rp_id, user, exclude);
    // Ask for credProtect but do not make the browser fail on authenticators without it: every
    // ceremony here requires user verification anyway.
    options.extensions.cred_protect = CredProtect::UserVerificationRequired(ExtensionInfo::AllowDontEnforceValue);
    // credProps lets the crate refuse a credential the browser reports as not discoverable.
    options.extensions.cred_props = Some(ExtensionReq::Allow);
    let (server, client) = options.start_ceremony().map_err(|e| internal(format!("creation options: {e}")))?;
    let mut json = serde_json::to_value(&client).map_err(|e| internal(format!("creation options JSON: {e}")))?;
    // The crate names the RP by its ID; show the project's name instead.
    if !rp.name.is_empty() {
        if let Some(rp_entity) = json.get_mut("rp").and_then(Value::as_object_mut) {
            rp_entity.insert("name".to_owned(), Value::String(rp.name.clone()));
        }
    }
    let state = tagged(STATE_REGISTRATION, server.encode().map_err(|e| internal(format!("registration state: {e}")))?);
    Ok((json, state))
}

/// Verifies the browser's `RegistrationResponseJSON` (`credential.toJSON()`) against the state
/// from [`start_registration`].
///
/// # Errors
///
/// `BadRequest` for malformed JSON, `Refused` for a failed ceremony, `Expired` after five minutes,
/// `Internal` for a state this module did not write.
pub fn finish_registration(rp: &Rp, state: &[u8], response_json: &str) -> Result<NewCredential, WebauthnError> {
    let rp_id = rp_id(rp)?;
    let server = RegistrationServerState::<16>::decode(state_body(state, STATE_REGISTRATION)?)
        .map_err(|e| internal(format!("registration state: {e}")))?;
    let registration = Registration::from_json_relaxed(response_json.as_bytes())
        .map_err(|_e| WebauthnError::BadRequest("malformed registration response"))?;
    let origins = [rp.origin.as_str()];
    let options = RegistrationVerificationOptions::<&str, &str> {
        allowed_origins: &origins,
        allowed_top_origins: None,
        backup_requirement: BackupReq::None,
        // Password managers add client extension outputs nobody asked for; they are harmless.
        error_on_unsolicited_extensions: false,
        require_authenticator_attachment: false,
        client_data_json_relaxed: true,
    };
    let credential = server.verify(&rp_id, &registration, &options).map_err(registration_error)?;
    let (id, _transports, _user, static_state, dynamic_state, _metadata) = credential.into_parts();
    let backup_eligible = !matches!(dynamic_state.backup, Backup::NotEligible);
    let key = static_state.encode().unwrap_or_else(|never| match never {});
    let mut public_key = Vec::with_capacity(2 + key.len());
    public_key.push(KEY_V1);
    public_key.push(u8::from(backup_eligible));
    public_key.extend_from_slice(&key);
    Ok(NewCredential { id: id.as_ref().to_vec(), public_key, sign_count: dynamic_state.sign_count, backup_eligible })
}

/// Options for `navigator.credentials.get` and the server state to keep until
/// [`finish_authentication`].
///
/// `allow = None`: a discoverable (passkey, usernameless) sign-in; `Some(ids)`: the user's own
/// credentials (a second factor). User verification is required in both cases.
///
/// # Errors
///
/// `BadRequest` if the RP is misconfigured or `allow` is empty.
pub fn start_authentication(rp: &Rp, allow: Option<&[Vec<u8>]>) -> Result<(Value, Vec<u8>), WebauthnError> {
    let rp_id = rp_id(rp)?;
    match allow {
        None => {
            let (server, client) = DiscoverableCredentialRequestOptions::passkey(&rp_id)
                .start_ceremony()
                .map_err(|e| internal(format!("request options: {e}")))?;
            let json = serde_json::to_value(&client).map_err(|e| internal(format!("request options JSON: {e}")))?;
            let state = server.encode().map_err(|e| internal(format!("authentication state: {e}")))?;
            Ok((json, tagged(STATE_DISCOVERABLE, state)))
        }
        Some(ids) => {
            let mut creds = AllowedCredentials::with_capacity(ids.len());
            for id in ids {
                let id = CredentialId::<Vec<u8>>::decode(id.clone())
                    .map_err(|_e| internal("stored credential id has an invalid length"))?;
                // `push` refuses a duplicate, which is fine to drop.
                creds.push(PublicKeyCredentialDescriptor { id, transports: no_transports()? }.into());
            }
            let mut options = NonDiscoverableCredentialRequestOptions::second_factor(&rp_id, creds)
                .map_err(|_e| WebauthnError::BadRequest("no credentials to allow"))?;
            // The crate's second-factor default discourages UV; this module requires it.
            options.options().user_verification = UserVerificationRequirement::Required;
            let (server, client) = options.start_ceremony().map_err(|e| internal(format!("request options: {e}")))?;
            let json = serde_json::to_value(&client).map_err(|e| internal(format!("request options JSON: {e}")))?;
            let state = server.encode().map_err(|e| internal(format!("authentication state: {e}")))?;
            Ok((json, tagged(STATE_ALLOW_LIST, state)))
        }
    }
}

/// The credential ID and user handle an authentication response names, read before verification
/// so the caller can look the credential up. Nothing here is verified yet.
///
/// # Errors
///
/// `BadRequest` if the JSON lacks a base64url `rawId` (or `id`) or has a malformed `userHandle`.
pub fn credential_of(response_json: &str) -> Result<(Vec<u8>, Option<Vec<u8>>), WebauthnError> {
    let json: Value = serde_json::from_str(response_json)
        .map_err(|_e| WebauthnError::BadRequest("authentication response is not JSON"))?;
    let id = json
        .get("rawId")
        .or_else(|| json.get("id"))
        .and_then(Value::as_str)
        .ok_or(WebauthnError::BadRequest("authentication response has no rawId"))?;
    let id = b64url_decode(id).ok_or(WebauthnError::BadRequest("rawId is not base64url"))?;
    let user_handle = match json.get("response").and_then(|r| r.get("userHandle")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => {
            Some(b64url_decode(s).ok_or(WebauthnError::BadRequest("userHandle is not base64url"))?)
        }
        Some(_) => return Err(WebauthnError::BadRequest("userHandle is not a string")),
    };
    Ok((id, user_handle))
}

/// Verifies the browser's `AuthenticationResponseJSON` (`credential.toJSON()`) against the state
/// from [`start_authentication`] and the credential the caller looked up.
///
/// # Errors
///
/// `BadRequest` for malformed JSON, `Refused` for a failed ceremony (including a credential not
/// in the allow list or a user handle not the stored one), `CounterRegressed` for a counter that
/// did not increase, `Expired` after five minutes, `Internal` for stored bytes this module did
/// not write.
pub fn finish_authentication(
    rp: &Rp,
    state: &[u8],
    response_json: &str,
    stored: &StoredCredential<'_>,
) -> Result<Asserted, WebauthnError> {
    let rp_id = rp_id(rp)?;
    let (backup_eligible, static_state) = decode_public_key(stored.public_key)?;
    let id = CredentialId::<&[u8]>::decode(stored.id)
        .map_err(|_e| internal("stored credential id has an invalid length"))?;
    let user = user_handle_of(stored.user_handle);
    let dynamic_state = DynamicState {
        // Registration required UV, so every stored credential was user-verified.
        user_verified: true,
        backup: if backup_eligible { Backup::Eligible } else { Backup::NotEligible },
        sign_count: stored.sign_count,
        authenticator_attachment: AuthenticatorAttachment::None,
    };
    let mut credential = AuthenticatedCredential::new(id, &user, static_state, dynamic_state)
        .map_err(|e| internal(format!("stored credential: {e}")))?;
    let origins = [rp.origin.as_str()];
    let options = AuthenticationVerificationOptions::<&str, &str> {
        allowed_origins: &origins,
        allowed_top_origins: None,
        // BE is fixed for the life of a credential (WebAuthn L3 §7.2 step 19).
        backup_requirement: Some(if backup_eligible { BackupReq::Eligible } else { BackupReq::NotEligible }),
        error_on_unsolicited_extensions: false,
        auth_attachment_enforcement: AuthenticatorAttachmentEnforcement::Ignore(false),
        update_uv: false,
        sig_counter_enforcement: SignatureCounterEnforcement::Fail,
        client_data_json_relaxed: true,
    };
    let Some((&tag, body)) = state.split_first() else {
        return Err(internal("empty authentication state"));
    };
    match tag {
        STATE_DISCOVERABLE => {
            let server = DiscoverableAuthenticationServerState::decode(body)
                .map_err(|e| internal(format!("authentication state: {e}")))?;
            let response = DiscoverableAuthentication16::from_json_relaxed(response_json.as_bytes())
                .map_err(|_e| WebauthnError::BadRequest("malformed authentication response"))?;
            server.verify(&rp_id, &response, &mut credential, &options).map_err(authentication_error)?;
        }
        STATE_ALLOW_LIST => {
            let server = NonDiscoverableAuthenticationServerState::decode(body)
                .map_err(|e| internal(format!("authentication state: {e}")))?;
            let response = NonDiscoverableAuthentication16::from_json_relaxed(response_json.as_bytes())
                .map_err(|_e| WebauthnError::BadRequest("malformed authentication response"))?;
            server.verify(&rp_id, &response, &mut credential, &options).map_err(authentication_error)?;
        }
        _ => return Err(internal("not an authentication state")),
    }
    let after = credential.dynamic_state();
    // WebAuthn L2 §7.2 step 21, enforced here too so it does not rest on a crate option alone:
    // if either count is nonzero, the new one must be greater than the stored one.
    if (after.sign_count != 0 || stored.sign_count != 0) && after.sign_count <= stored.sign_count {
        return Err(WebauthnError::CounterRegressed);
    }
    Ok(Asserted { sign_count: after.sign_count, backed_up: matches!(after.backup, Backup::Exists) })
}

/// The RP ID, after checking that the origin is one of its own (a misconfiguration otherwise,
/// which no browser would accept either).
fn rp_id(rp: &Rp) -> Result<RpId, WebauthnError> {
    let id = rp.id.as_str();
    if id.is_empty()
        || id.starts_with('.')
        || id.ends_with('.')
        || !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(WebauthnError::BadRequest("RP ID is not a lowercase domain"));
    }
    let (scheme, rest) = rp.origin.split_once("://").ok_or(WebauthnError::BadRequest("origin has no scheme"))?;
    let host = match rest.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        Some(_) => return Err(WebauthnError::BadRequest("origin has a bad port")),
        None => rest,
    };
    let under_id = host == id || host.strip_suffix(id).is_some_and(|h| h.ends_with('.'));
    // Browsers allow plain http only for localhost, which they treat as a secure context.
    let secure = scheme == "https" || (scheme == "http" && (host == "localhost" || host.ends_with(".localhost")));
    if !under_id || !secure {
        return Err(WebauthnError::BadRequest("origin does not belong to the RP ID"));
    }
    AsciiDomain::try_from(rp.id.clone())
        .map(RpId::Domain)
        .map_err(|_e| WebauthnError::BadRequest("RP ID is not a domain"))
}

/// Transports are only hints; none are stored, so the browser offers every way in.
fn no_transports() -> Result<AuthTransports, WebauthnError> {
    AuthTransports::decode(0).map_err(|e| internal(format!("transports: {e}")))
}

fn user_handle_of(handle: &[u8; 16]) -> UserHandle16 {
    UserHandle16::decode(*handle).unwrap_or_else(|never| match never {})
}

fn tagged(tag: u8, body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + body.len());
    out.push(tag);
    out.extend_from_slice(&body);
    out
}

fn state_body(state: &[u8], tag: u8) -> Result<&[u8], WebauthnError> {
    match state.split_first() {
        Some((&t, body)) if t == tag => Ok(body),
        _ => Err(internal("server state is for another ceremony")),
    }
}

fn decode_public_key(blob: &[u8]) -> Result<(bool, StaticState<StoredKey>), WebauthnError> {
    match blob {
        [KEY_V1, be @ (0 | 1), key @ ..] => StaticState::<StoredKey>::decode(key)
            .map(|state| (*be == 1, state))
            .map_err(|e| internal(format!("stored public key: {e}"))),
        _ => Err(internal("stored public key has an unknown layout")),
    }
}

fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    // toJSON() emits unpadded base64url; tolerate padding from hand-rolled clients.
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

fn internal(msg: impl Into<String>) -> WebauthnError {
    WebauthnError::Internal(msg.into())
}

fn registration_error(e: RegCeremonyErr) -> WebauthnError {
    use RegCeremonyErr as E;
    match e {
        E::Timeout => WebauthnError::Expired,
        E::CollectedClientData(_) | E::CollectedClientDataRelaxed(_) => {
            WebauthnError::BadRequest("malformed clientDataJSON")
        }
        E::AttestationObject(_) => WebauthnError::Refused("attestation object rejected"),
        E::PubKey(_) => WebauthnError::Refused("invalid public key"),
        E::AttestationSignature => WebauthnError::Refused("bad attestation signature"),
        E::OriginMismatch => WebauthnError::Refused("origin mismatch"),
        E::CrossOrigin | E::TopOriginMismatch => WebauthnError::Refused("cross-origin ceremony"),
        E::ChallengeMismatch => WebauthnError::Refused("challenge mismatch"),
        E::RpIdHashMismatch => WebauthnError::Refused("RP ID hash mismatch"),
        E::UserNotPresent => WebauthnError::Refused("user not present"),
        E::UserNotVerified => WebauthnError::Refused("user not verified"),
        E::PublicKeyAlgorithmMismatch => WebauthnError::Refused("unsupported key algorithm"),
        E::Extension(_) => WebauthnError::Refused("extension outputs rejected"),
        E::Credential(_) => WebauthnError::Refused("credential is not a user-verified passkey"),
        _ => WebauthnError::Refused("registration refused"),
    }
}

fn authentication_error(e: AuthCeremonyErr) -> WebauthnError {
    use AuthCeremonyErr as E;
    match e {
        E::Timeout => WebauthnError::Expired,
        E::CollectedClientData(_) | E::CollectedClientDataRelaxed(_) => {
            WebauthnError::BadRequest("malformed clientDataJSON")
        }
        E::AuthenticatorData(_) => WebauthnError::Refused("authenticator data rejected"),
        E::PubKey(_) => WebauthnError::Refused("invalid stored public key"),
        E::AssertionSignature => WebauthnError::Refused("bad signature"),
        E::OriginMismatch => WebauthnError::Refused("origin mismatch"),
        E::CrossOrigin | E::TopOriginMismatch => WebauthnError::Refused("cross-origin ceremony"),
        E::ChallengeMismatch => WebauthnError::Refused("challenge mismatch"),
        E::RpIdHashMismatch => WebauthnError::Refused("RP ID hash mismatch"),
        E::UserNotVerified => WebauthnError::Refused("user not verified"),
        E::BackupEligible | E::BackupNotEligible | E::BackupDoesNotExist => {
            WebauthnError::Refused("backup eligibility changed")
        }
        E::SignatureCounter => WebauthnError::CounterRegressed,
        E::UserHandleMismatch | E::MissingUserHandle => WebauthnError::Refused("user handle mismatch"),
        E::CredentialIdMismatch => WebauthnError::Refused("credential id mismatch"),
        E::NoMatchingAllowedCredential => WebauthnError::Refused("credential not allowed"),
        E::Extension(_) => WebauthnError::Refused("extension outputs rejected"),
        _ => WebauthnError::Refused("authentication refused"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! A software authenticator (P-256, ES256) built by hand: authenticatorData, CBOR, and the
    //! JSON a browser's `toJSON()` would send.
    use super::*;
    use p256::ecdsa::signature::Signer as _;
    use p256::ecdsa::{Signature, SigningKey};
    use serde_json::json;
    use sha2::{Digest as _, Sha256};

    const UP: u8 = 0x01;
    const UV: u8 = 0x04;
    const BE: u8 = 0x08;
    const BS: u8 = 0x10;
    const AT: u8 = 0x40;

    fn rp() -> Rp {
        Rp { id: "localhost".into(), origin: "http://localhost:8080".into(), name: "Authio Test".into() }
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    struct Authenticator {
        key: SigningKey,
        cred_id: Vec<u8>,
        user: [u8; 16],
    }

    impl Authenticator {
        fn new(seed: u8) -> Self {
            Self {
                key: SigningKey::from_slice(&[seed; 32]).unwrap(),
                cred_id: (0..32).map(|i| i ^ seed).collect(),
                user: [seed; 16],
            }
        }

        fn xy(&self) -> (Vec<u8>, Vec<u8>) {
            let point = self.key.verifying_key().to_encoded_point(false);
            (point.x().unwrap().to_vec(), point.y().unwrap().to_vec())
        }

        /// COSE_Key {1: 2 (EC2), 3: -7 (ES256), -1: 1 (P-256), -2: x, -3: y}, canonical order.
        fn cose_key(&self) -> Vec<u8> {
            let (x, y) = self.xy();
            let mut out = vec![0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20];
            out.extend_from_slice(&x);
            out.extend_from_slice(&[0x22, 0x58, 0x20]);
            out.extend_from_slice(&y);
            out
        }

        /// DER SubjectPublicKeyInfo of the key, as `response.publicKey` in toJSON().
        fn spki(&self) -> Vec<u8> {
            let (x, y) = self.xy();
            let mut out = vec![
                0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
                0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
            ];
            out.extend_from_slice(&x);
            out.extend_from_slice(&y);
            out
        }

        fn register(&self, options: &Value, origin: &str, rp_id: &str, flags: u8, count: u32) -> String {
            let challenge = options["challenge"].as_str().unwrap();
            let client_data = format!(
                r#"{{"type":"webauthn.create","challenge":"{challenge}","origin":"{origin}","crossOrigin":false}}"#
            );
            let mut auth_data = Sha256::digest(rp_id.as_bytes()).to_vec();
            auth_data.push(flags | AT);
            auth_data.extend_from_slice(&count.to_be_bytes());
            auth_data.extend_from_slice(&[0; 16]); // AAGUID
            auth_data.extend_from_slice(&u16::try_from(self.cred_id.len()).unwrap().to_be_bytes());
            auth_data.extend_from_slice(&self.cred_id);
            auth_data.extend_from_slice(&self.cose_key());
            // {"fmt": "none", "attStmt": {}, "authData": bytes}, canonical key order.
            let mut att_obj = vec![0xa3, 0x63];
            att_obj.extend_from_slice(b"fmt");
            att_obj.push(0x64);
            att_obj.extend_from_slice(b"none");
            att_obj.push(0x67);
            att_obj.extend_from_slice(b"attStmt");
            att_obj.extend_from_slice(&[0xa0, 0x68]);
            att_obj.extend_from_slice(b"authData");
            att_obj.extend_from_slice(&[0x58, u8::try_from(auth_data.len()).unwrap()]);
            att_obj.extend_from_slice(&auth_data);
            json!({
                "id": b64(&self.cred_id),
                "rawId": b64(&self.cred_id),
                "type": "public-key",
                "authenticatorAttachment": "platform",
                "clientExtensionResults": {"credProps": {"rk": true}},
                "response": {
                    "clientDataJSON": b64(client_data.as_bytes()),
                    "attestationObject": b64(&att_obj),
                    "authenticatorData": b64(&auth_data),
                    "publicKey": b64(&self.spki()),
                    "publicKeyAlgorithm": -7,
                    "transports": ["hybrid", "internal"],
                },
            })
            .to_string()
        }

        fn assert(&self, options: &Value, origin: &str, rp_id: &str, flags: u8, count: u32) -> String {
            let challenge = options["challenge"].as_str().unwrap();
            let client_data = format!(
                r#"{{"type":"webauthn.get","challenge":"{challenge}","origin":"{origin}","crossOrigin":false}}"#
            );
            let mut auth_data = Sha256::digest(rp_id.as_bytes()).to_vec();
            auth_data.push(flags);
            auth_data.extend_from_slice(&count.to_be_bytes());
            let mut signed = auth_data.clone();
            signed.extend_from_slice(&Sha256::digest(client_data.as_bytes()));
            let signature: Signature = self.key.sign(&signed);
            json!({
                "id": b64(&self.cred_id),
                "rawId": b64(&self.cred_id),
                "type": "public-key",
                "authenticatorAttachment": "platform",
                "clientExtensionResults": {},
                "response": {
                    "clientDataJSON": b64(client_data.as_bytes()),
                    "authenticatorData": b64(&auth_data),
                    "signature": b64(signature.to_der().as_bytes()),
                    "userHandle": b64(&self.user),
                },
            })
            .to_string()
        }
    }

    /// Registers `a` with flags UP|UV|BE and count `count`.
    fn registered(a: &Authenticator, count: u32) -> NewCredential {
        let (options, state) = start_registration(&rp(), &a.user, "ada@example.com", "Ada", &[]).unwrap();
        let response = a.register(&options, "http://localhost:8080", "localhost", UP | UV | BE, count);
        finish_registration(&rp(), &state, &response).unwrap()
    }

    fn stored<'a>(a: &'a Authenticator, cred: &'a NewCredential, count: u32) -> StoredCredential<'a> {
        StoredCredential { id: &cred.id, user_handle: &a.user, public_key: &cred.public_key, sign_count: count }
    }

    #[test]
    fn creation_options_have_the_level3_json_shape() {
        let a = Authenticator::new(1);
        let excluded = vec![vec![9u8; 16]];
        let (options, state) =
            start_registration(&rp(), &a.user, "ada@example.com", "Ada Lovelace", &excluded).unwrap();
        assert_eq!(options["rp"], json!({"name": "Authio Test", "id": "localhost"}));
        assert_eq!(options["user"]["id"], b64(&a.user));
        assert_eq!(options["user"]["name"], "ada@example.com");
        assert_eq!(options["user"]["displayName"], "Ada Lovelace");
        assert_eq!(options["challenge"].as_str().unwrap().len(), 22);
        assert!(options["pubKeyCredParams"].as_array().unwrap().contains(&json!({"type": "public-key", "alg": -7})));
        assert_eq!(options["timeout"], 300_000);
        assert_eq!(options["authenticatorSelection"]["residentKey"], "required");
        assert_eq!(options["authenticatorSelection"]["userVerification"], "required");
        assert_eq!(options["attestation"], "none");
        assert_eq!(options["excludeCredentials"][0]["id"], b64(&[9u8; 16]));
        assert_eq!(options["excludeCredentials"][0]["type"], "public-key");
        assert_eq!(state[0], STATE_REGISTRATION);

        let (get, _) = start_authentication(&rp(), None).unwrap();
        assert_eq!(get["rpId"], "localhost");
        assert_eq!(get["userVerification"], "required");
        assert_eq!(get["allowCredentials"], json!([]));
        let (get, _) = start_authentication(&rp(), Some(std::slice::from_ref(&a.cred_id))).unwrap();
        assert_eq!(get["userVerification"], "required");
        assert_eq!(get["allowCredentials"][0]["id"], b64(&a.cred_id));
    }

    #[test]
    fn registration_then_passkey_and_second_factor_sign_in() {
        let a = Authenticator::new(2);
        let cred = registered(&a, 1);
        assert_eq!(cred.id, a.cred_id);
        assert_eq!(cred.sign_count, 1);
        assert!(cred.backup_eligible);

        let (options, state) = start_authentication(&rp(), None).unwrap();
        let response = a.assert(&options, "http://localhost:8080", "localhost", UP | UV | BE | BS, 2);
        assert_eq!(credential_of(&response).unwrap(), (a.cred_id.clone(), Some(a.user.to_vec())));
        let asserted = finish_authentication(&rp(), &state, &response, &stored(&a, &cred, 1)).unwrap();
        assert_eq!(asserted, Asserted { sign_count: 2, backed_up: true });

        let (options, state) = start_authentication(&rp(), Some(std::slice::from_ref(&a.cred_id))).unwrap();
        let response = a.assert(&options, "http://localhost:8080", "localhost", UP | UV | BE, 3);
        let asserted = finish_authentication(&rp(), &state, &response, &stored(&a, &cred, 2)).unwrap();
        assert_eq!(asserted, Asserted { sign_count: 3, backed_up: false });
    }

    #[test]
    fn device_bound_key_without_counter() {
        let a = Authenticator::new(3);
        let (options, state) = start_registration(&rp(), &a.user, "bob", "", &[]).unwrap();
        let response = a.register(&options, "http://localhost:8080", "localhost", UP | UV, 0);
        let cred = finish_registration(&rp(), &state, &response).unwrap();
        assert!(!cred.backup_eligible);
        // Both counts 0: allowed (authenticators without a counter).
        let (options, state) = start_authentication(&rp(), None).unwrap();
        let response = a.assert(&options, "http://localhost:8080", "localhost", UP | UV, 0);
        let asserted = finish_authentication(&rp(), &state, &response, &stored(&a, &cred, 0)).unwrap();
        assert_eq!(asserted.sign_count, 0);
        // A device-bound key that turns up backup-eligible is refused.
        let (options, state) = start_authentication(&rp(), None).unwrap();
        let response = a.assert(&options, "http://localhost:8080", "localhost", UP | UV | BE, 0);
        let err = finish_authentication(&rp(), &state, &response, &stored(&a, &cred, 0)).unwrap_err();
        assert!(matches!(err, WebauthnError::Refused(_)), "{err:?}");
    }

    #[test]
    fn wrong_origin_is_refused() {
        let a = Authenticator::new(4);
        let (options, state) = start_registration(&rp(), &a.user, "ada", "Ada", &[]).unwrap();
        let response = a.register(&options, "http://evil.localhost:8080", "localhost", UP | UV, 0);
        let err = finish_registration(&rp(), &state, &response).unwrap_err();
        assert!(matches!(err, WebauthnError::Refused("origin mismatch")), "{err:?}");

        let cred = registered(&a, 1);
        for origin in ["http://localhost:9090", "https://localhost:8080", "http://localhost"] {
            let (options, state) = start_authentication(&rp(), None).unwrap();
            let response = a.assert(&options, origin, "localhost", UP | UV | BE, 2);
            let err = finish_authentication(&rp(), &state, &response, &stored(&a, &cred, 1)).unwrap_err();
            assert!(matches!(err, WebauthnError::Refused("origin mismatch")), "{origin}: {err:?}");
        }
    }

    #[test]
    fn wrong_rp_id_hash_is_refused() {
        let a = Authenticator::new(5);
        let (options, state) = start_registration(&rp(), &a.user, "ada", "Ada", &[]).unwrap();
        let response = a.register(&options, "http://localhost:8080", "example.com", UP | UV, 0);
        let err = finish_registration(&rp(), &state, &response).unwrap_err();
        assert!(matches!(err, WebauthnError::Refused("RP ID hash mismatch")), "{err:?}");

        let cred = registered(&a, 1);
        let (options, state) = start_authentication(&rp(), None).unwrap();
        let response = a.assert(&options, "http://localhost:8080", "example.com", UP | UV | BE, 2);
        let err = finish_authentication(&rp(), &state, &response, &stored(&a, &cred, 1)).unwrap_err();
        assert!(matches!(err, WebauthnError::Refused("RP ID hash mismatch")), "{err:?}");
    }

    #[test]
    fn missing_user_verification_is_refused() {
        let a = Authenticator::new(6);
        let (options, state) = start_registration(&rp(), &a.user, "ada", "Ada", &[]).unwrap();
        let response = a.register(&options, "http://localhost:8080", "localhost", UP | BE, 0);
        let err = finish_registration(&rp(), &state, &response).unwrap_err();
        assert!(matches!(err, WebauthnError::Refused("user not verified")), "{err:?}");

        let cred = registered(&a, 1);
        for allow in [None, Some(vec![a.cred_id.clone()])] {
            let (options, state) = start_authentication(&rp(), allow.as_deref()).unwrap();
            let response = a.assert(&options, "http://localhost:8080", "localhost", UP | BE, 2);
            let err = finish_authentication(&rp(), &state, &response, &stored(&a, &cred, 1)).unwrap_err();
            assert!(matches!(err, WebauthnError::Refused("user not verified")), "{err:?}");
        }
    }

    #[test]
    fn counter_that_does_not_increase_is_refused() {
        let a = Authenticator::new(7);
        let cred = registered(&a, 5);
        for count in [5, 4, 0] {
            let (options, state) = start_authentication(&rp(), None).unwrap();
            let response = a.assert(&options, "http://localhost:8080", "localhost", UP | UV | BE, count);
            let err = finish_authentication(&rp(), &state, &response, &stored(&a, &cred, 5)).unwrap_err();
            assert!(matches!(err, WebauthnError::CounterRegressed), "{count}: {err:?}");
        }
        // Stored 0, new nonzero: fine (the counter started).
        let (options, state) = start_authentication(&rp(), None).unwrap();
        let response = a.assert(&options, "http://localhost:8080", "localhost", UP | UV | BE, 1);
        let asserted = finish_authentication(&rp(), &state, &response, &stored(&a, &cred, 0)).unwrap();
        assert_eq!(asserted.sign_count, 1);
    }

    #[test]
    fn response_to_another_challenge_is_refused() {
        let a = Authenticator::new(8);
        let (options_a, _state_a) = start_registration(&rp(), &a.user, "ada", "Ada", &[]).unwrap();
        let (_options_b, state_b) = start_registration(&rp(), &a.user, "ada", "Ada", &[]).unwrap();
        let response = a.register(&options_a, "http://localhost:8080", "localhost", UP | UV, 0);
        let err = finish_registration(&rp(), &state_b, &response).unwrap_err();
        assert!(matches!(err, WebauthnError::Refused("challenge mismatch")), "{err:?}");

        let cred = registered(&a, 1);
        let (options_a, _state_a) = start_authentication(&rp(), None).unwrap();
        let (_options_b, state_b) = start_authentication(&rp(), None).unwrap();
        let response = a.assert(&options_a, "http://localhost:8080", "localhost", UP | UV | BE, 2);
        let err = finish_authentication(&rp(), &state_b, &response, &stored(&a, &cred, 1)).unwrap_err();
        assert!(matches!(err, WebauthnError::Refused("challenge mismatch")), "{err:?}");
        // A registration state cannot finish a sign-in, nor the reverse.
        let (_, reg_state) = start_registration(&rp(), &a.user, "ada", "Ada", &[]).unwrap();
        let err = finish_authentication(&rp(), &reg_state, &response, &stored(&a, &cred, 1)).unwrap_err();
        assert!(matches!(err, WebauthnError::Internal(_)), "{err:?}");
    }

    #[test]
    fn state_carries_a_five_minute_expiry() {
        let a = Authenticator::new(12);
        let cred = registered(&a, 1);
        let (options, mut state) = start_authentication(&rp(), None).unwrap();
        // A discoverable state ends with its expiry: u64 seconds and u32 nanoseconds since the epoch.
        let at = state.len() - 12;
        let secs = u64::from_le_bytes(state[at..at + 8].try_into().unwrap());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert!((now + 298..=now + 301).contains(&secs), "{secs} vs {now}");
        // The same ceremony, started six minutes ago.
        state[at..at + 8].copy_from_slice(&(secs - 360).to_le_bytes());
        let response = a.assert(&options, "http://localhost:8080", "localhost", UP | UV | BE, 2);
        let err = finish_authentication(&rp(), &state, &response, &stored(&a, &cred, 1)).unwrap_err();
        assert!(matches!(err, WebauthnError::Expired), "{err:?}");
    }

    #[test]
    fn bad_signature_is_refused() {
        let a = Authenticator::new(9);
        let cred = registered(&a, 1);
        let impostor = Authenticator { key: SigningKey::from_slice(&[42; 32]).unwrap(), ..Authenticator::new(9) };
        let (options, state) = start_authentication(&rp(), None).unwrap();
        let response = impostor.assert(&options, "http://localhost:8080", "localhost", UP | UV | BE, 2);
        let err = finish_authentication(&rp(), &state, &response, &stored(&a, &cred, 1)).unwrap_err();
        assert!(matches!(err, WebauthnError::Refused("bad signature")), "{err:?}");
    }

    #[test]
    fn credential_outside_allow_list_or_other_user_is_refused() {
        let a = Authenticator::new(10);
        let cred = registered(&a, 1);
        let (options, state) = start_authentication(&rp(), Some(&[vec![0xee; 16]])).unwrap();
        let response = a.assert(&options, "http://localhost:8080", "localhost", UP | UV | BE, 2);
        let err = finish_authentication(&rp(), &state, &response, &stored(&a, &cred, 1)).unwrap_err();
        assert!(matches!(err, WebauthnError::Refused("credential not allowed")), "{err:?}");

        let other_user = [0x77; 16];
        for allow in [None, Some(vec![a.cred_id.clone()])] {
            let (options, state) = start_authentication(&rp(), allow.as_deref()).unwrap();
            let response = a.assert(&options, "http://localhost:8080", "localhost", UP | UV | BE, 2);
            let wrong = StoredCredential { user_handle: &other_user, ..stored(&a, &cred, 1) };
            let err = finish_authentication(&rp(), &state, &response, &wrong).unwrap_err();
            assert!(matches!(err, WebauthnError::Refused("user handle mismatch")), "{err:?}");
        }
    }

    #[test]
    fn malformed_input_and_misconfigured_rp_are_bad_requests() {
        let a = Authenticator::new(11);
        let (_, state) = start_registration(&rp(), &a.user, "ada", "Ada", &[]).unwrap();
        assert!(matches!(finish_registration(&rp(), &state, "{\"response\":1}"), Err(WebauthnError::BadRequest(_))));
        assert!(matches!(credential_of("[]"), Err(WebauthnError::BadRequest(_))));
        assert_eq!(credential_of(r#"{"rawId":"AAEC","response":{"userHandle":null}}"#).unwrap(), (vec![0, 1, 2], None));
        for (id, origin) in [
            ("localhost", "http://example.com:8080"),
            ("example.com", "http://example.com"),
            ("example.com", "https://notexample.com"),
            ("Example.com", "https://example.com"),
        ] {
            let bad = Rp { id: id.into(), origin: origin.into(), name: String::new() };
            assert!(matches!(start_authentication(&bad, None), Err(WebauthnError::BadRequest(_))), "{id} {origin}");
        }
        let custom = Rp { id: "example.com".into(), origin: "https://login.example.com".into(), name: String::new() };
        assert!(start_authentication(&custom, None).is_ok());
    }
}
