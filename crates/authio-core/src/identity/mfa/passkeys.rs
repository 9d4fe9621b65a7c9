//! WebAuthn keys as stored factors: registering a passkey or security key for a user (signed
//! in, or enrolling inside a waiting sign-in), using one as the second factor of a waiting
//! sign-in, and the passwordless passkey sign-in (a discoverable credential with user
//! verification, which is two factors by itself: `amr` `hwk` or `swk`, and `mfa`).
//!
//! A ceremony's state waits in `webauthn_ceremonies` at the home for one use; the protocol is
//! [`super::webauthn`]'s. The relying party is the host the pages are served on: the
//! deployment's, or the project's verified custom domain.
use std::net::IpAddr;

use authio_db::{RowExt, Scope, Type};
use chrono::Duration;
use uuid::Uuid;

use super::webauthn::{self, Rp, WebauthnError};
use super::{with_second_factor, Completed, Stage};
use crate::identity::auth::{scope_of, Identity};
use crate::identity::signin::SignedInUser;
use crate::types::ClientInfo;
use crate::{audit, CoreError};

/// How long a ceremony's state is kept (the library's own limit is the same).
const CEREMONY_TTL_SECS: i64 = 300;

impl From<WebauthnError> for CoreError {
    fn from(e: WebauthnError) -> Self {
        match e {
            WebauthnError::BadRequest(m) => CoreError::Invalid(crate::types::ValidationError::Field(m)),
            WebauthnError::Refused(m) => CoreError::InvalidGrant(m),
            WebauthnError::Expired => CoreError::InvalidGrant("the passkey request expired: try again"),
            WebauthnError::CounterRegressed => {
                CoreError::InvalidGrant("this security key's signature counter went backwards: it may be a copy")
            }
            WebauthnError::Internal(m) => CoreError::Internal(format!("webauthn: {m}")),
        }
    }
}

/// `hwk` for a key bound to one authenticator, `swk` for a passkey that may be synced
/// (RFC 8176).
fn amr_of_key(backup_eligible: bool) -> &'static str {
    if backup_eligible {
        "swk"
    } else {
        "hwk"
    }
}

/// A stored credential, as the ceremony needs it.
struct Key {
    factor: Uuid,
    user: Uuid,
    public_key: Vec<u8>,
    sign_count: u32,
    backup_eligible: bool,
}

impl Identity {
    async fn save_ceremony(
        &self,
        scope: &Scope,
        user: Option<Uuid>,
        purpose: &str,
        state: &[u8],
    ) -> Result<Uuid, CoreError> {
        let project = crate::types::project_of(scope)?;
        let id = Uuid::now_v7();
        let now = self.now();
        let expires = now + Duration::seconds(CEREMONY_TTL_SECS);
        self.inner
            .router
            .write(
                scope,
                &[
                    // Old ceremonies go as new ones come.
                    ("DELETE FROM webauthn_ceremonies WHERE expires_at < $1", &[(&now, Type::TIMESTAMPTZ)]),
                    (
                        "INSERT INTO webauthn_ceremonies (tenant_id, project_id, id, user_id, purpose, state, created_at,
                                                          expires_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        &[
                            (&scope.tenant_id, Type::UUID),
                            (&project, Type::UUID),
                            (&id, Type::UUID),
                            (&user, Type::UUID),
                            (&purpose, Type::TEXT),
                            (&state.to_vec(), Type::BYTEA),
                            (&now, Type::TIMESTAMPTZ),
                            (&expires, Type::TIMESTAMPTZ),
                        ],
                    ),
                ],
            )
            .await?;
        Ok(id)
    }

    /// Take a ceremony's state (once): it must be of this purpose and user, and live.
    async fn take_ceremony(
        &self,
        scope: &Scope,
        id: Uuid,
        user: Option<Uuid>,
        purpose: &str,
    ) -> Result<Vec<u8>, CoreError> {
        let rows = self
            .inner
            .router
            .write(
                scope,
                &[(
                    "DELETE FROM webauthn_ceremonies
                     WHERE id = $1 AND purpose = $2 AND user_id IS NOT DISTINCT FROM $3 AND expires_at > $4
                     RETURNING state",
                    &[(&id, Type::UUID), (&purpose, Type::TEXT), (&user, Type::UUID), (&self.now(), Type::TIMESTAMPTZ)],
                )],
            )
            .await?;
        let r = rows.first().ok_or(CoreError::InvalidGrant("the passkey request expired or was used: try again"))?;
        Ok(r.try_get(0)?)
    }

    async fn key_ids(&self, scope: &Scope, user: Uuid) -> Result<Vec<Vec<u8>>, CoreError> {
        let rows = self
            .inner
            .router
            .read(
                scope,
                "SELECT credential_id FROM mfa_factors WHERE user_id = $1 AND kind = 'webauthn' ORDER BY id",
                &[(&user, Type::UUID)],
            )
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    async fn key_by_id(&self, scope: &Scope, credential: &[u8]) -> Result<Option<Key>, CoreError> {
        let rows = self
            .inner
            .router
            .read(
                scope,
                "SELECT f.id, f.user_id, f.public_key, f.sign_count, coalesce(f.backup_eligible, false)
                 FROM mfa_factors f JOIN users u ON u.tenant_id = f.tenant_id AND u.id = f.user_id
                 WHERE f.credential_id = $1 AND f.kind = 'webauthn' AND NOT u.disabled",
                &[(&credential.to_vec(), Type::BYTEA)],
            )
            .await?;
        rows.first()
            .map(|r| {
                Ok(Key {
                    factor: r.try_get(0)?,
                    user: r.try_get(1)?,
                    public_key: r.try_get(2)?,
                    sign_count: u32::try_from(r.try_get::<i64>(3)?).unwrap_or(u32::MAX),
                    backup_eligible: r.try_get(4)?,
                })
            })
            .transpose()
    }

    /// Verify an assertion against its stored key and record the new count, in one
    /// transaction with the row locked: two uses of one count cannot both pass.
    async fn assert_key(
        &self,
        scope: &Scope,
        rp: &Rp,
        state: &[u8],
        response: &str,
        key: &Key,
        credential: &[u8],
    ) -> Result<(), CoreError> {
        let now = self.now();
        let tx = self.inner.router.begin(scope).await?;
        let locked = tx
            .query_opt("SELECT sign_count FROM mfa_factors WHERE id = $1 FOR UPDATE", &[(&key.factor, Type::UUID)])
            .await?
            .ok_or(CoreError::InvalidGrant("this passkey was removed"))?;
        let count = u32::try_from(locked.col::<i64>("sign_count")?).unwrap_or(u32::MAX);
        let handle = *key.user.as_bytes();
        let stored = webauthn::StoredCredential {
            id: credential,
            user_handle: &handle,
            public_key: &key.public_key,
            sign_count: count.max(key.sign_count),
        };
        let asserted = webauthn::finish_authentication(rp, state, response, &stored)?;
        tx.query(
            "UPDATE mfa_factors SET sign_count = $2, last_used_at = $3 WHERE id = $1",
            &[(&key.factor, Type::UUID), (&i64::from(asserted.sign_count), Type::INT8), (&now, Type::TIMESTAMPTZ)],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Store a registered key as a confirmed factor (`mfa.enrolled`), with recovery codes when
    /// the user has none. A credential id registered already (to anyone) is refused.
    async fn save_key(
        &self,
        scope: &Scope,
        user: Uuid,
        key: webauthn::NewCredential,
        client: &ClientInfo,
    ) -> Result<(Uuid, Option<Vec<String>>), CoreError> {
        let project = crate::types::project_of(scope)?;
        let now = self.now();
        let id = Uuid::now_v7();
        let name = if key.backup_eligible { "Passkey" } else { "Security key" };
        let tx = self.inner.router.begin(scope).await?;
        let inserted = tx
            .query_opt(
                "INSERT INTO mfa_factors (tenant_id, project_id, id, user_id, kind, name, credential_id, public_key,
                                          sign_count, backup_eligible, confirmed_at, created_at)
                 VALUES ($1, $2, $3, $4, 'webauthn', $5, $6, $7, $8, $9, $10, $10)
                 ON CONFLICT (tenant_id, project_id, credential_id) WHERE credential_id IS NOT NULL DO NOTHING
                 RETURNING id",
                &[
                    (&scope.tenant_id, Type::UUID),
                    (&project, Type::UUID),
                    (&id, Type::UUID),
                    (&user, Type::UUID),
                    (&name, Type::TEXT),
                    (&key.id, Type::BYTEA),
                    (&key.public_key, Type::BYTEA),
                    (&i64::from(key.sign_count), Type::INT8),
                    (&key.backup_eligible, Type::BOOL),
                    (&now, Type::TIMESTAMPTZ),
                ],
            )
            .await?;
        if inserted.is_none() {
            return Err(CoreError::Conflict("this passkey is registered already".into()));
        }
        let codes = self.recovery_codes_if_none_in(&tx, scope, user, now).await?;
        audit::record_and_commit(
            tx,
            scope,
            audit::Event {
                action: crate::audit::AuditAction::MfaEnrolled,
                actor: audit::Actor::user(user, None),
                target: Some(("user", user.to_string())),
                client,
                metadata: serde_json::json!({
                    "factor_id": id, "kind": "webauthn", "synced": key.backup_eligible,
                    "recovery_codes_issued": codes.is_some(),
                }),
            },
            now,
        )
        .await?;
        Ok((id, codes))
    }

    async fn registration_options(
        &self,
        scope: &Scope,
        user: Uuid,
        email: &str,
        rp: &Rp,
    ) -> Result<(Uuid, serde_json::Value), CoreError> {
        let exclude = self.key_ids(scope, user).await?;
        let (options, state) = webauthn::start_registration(rp, user.as_bytes(), email, email, &exclude)?;
        let ceremony = self.save_ceremony(scope, Some(user), "register", &state).await?;
        Ok((ceremony, options))
    }

    /// Options to register a key for a signed-in user, and the ceremony to finish it with.
    pub async fn start_key_registration(
        &self,
        scope: &Scope,
        user: Uuid,
        rp: &Rp,
    ) -> Result<(Uuid, serde_json::Value), CoreError> {
        let email = self.user_email(scope, user).await?;
        self.registration_options(scope, user, &email, rp).await
    }

    /// Finish it: the new factor, and recovery codes when the user had none.
    pub async fn finish_key_registration(
        &self,
        scope: &Scope,
        user: Uuid,
        ceremony: Uuid,
        response: &str,
        rp: &Rp,
        client: &ClientInfo,
    ) -> Result<(Uuid, Option<Vec<String>>), CoreError> {
        let state = self.take_ceremony(scope, ceremony, Some(user), "register").await?;
        let key = webauthn::finish_registration(rp, &state, response)?;
        self.save_key(scope, user, key, client).await
    }

    /// Registration options for a waiting sign-in that must enrol.
    pub async fn start_pending_key_registration(
        &self,
        token: &str,
        rp: &Rp,
    ) -> Result<(Uuid, serde_json::Value), CoreError> {
        let p = self.pending_mfa(token).await?;
        p.still_enrolling()?;
        self.registration_options(&p.scope, p.user_id, &p.email, rp).await
    }

    /// Finish a waiting sign-in's key enrolment: the sign-in may complete
    /// ([`Identity::complete_enrolled`]); returns the recovery codes to show once.
    pub async fn finish_pending_key_registration(
        &self,
        token: &str,
        ceremony: Uuid,
        response: &str,
        rp: &Rp,
        client: &ClientInfo,
    ) -> Result<Vec<String>, CoreError> {
        let p = self.pending_mfa(token).await?;
        p.still_enrolling()?;
        let state = self.take_ceremony(&p.scope, ceremony, Some(p.user_id), "register").await?;
        let key = webauthn::finish_registration(rp, &state, response)?;
        let method = amr_of_key(key.backup_eligible);
        let (_, codes) = self.save_key(&p.scope, p.user_id, key, client).await?;
        self.inner
            .router
            .write(
                &p.scope,
                &[(
                    "UPDATE mfa_pending SET stage = 'enrolled', amr = $2 WHERE token_hash = $1 AND used_at IS NULL",
                    &[(&p.token_hash.to_vec(), Type::BYTEA), (&with_second_factor(&p.amr, method), Type::TEXT_ARRAY)],
                )],
            )
            .await?;
        Ok(codes.unwrap_or_default())
    }

    /// Options to answer a waiting sign-in's challenge with one of the user's keys.
    pub async fn start_key_challenge(&self, token: &str, rp: &Rp) -> Result<(Uuid, serde_json::Value), CoreError> {
        let p = self.pending_mfa(token).await?;
        if p.stage != Stage::Challenge || !p.factors.webauthn {
            return Err(CoreError::InvalidGrant("this sign-in has no passkey or security key to use"));
        }
        let ids = self.key_ids(&p.scope, p.user_id).await?;
        let (options, state) = webauthn::start_authentication(rp, Some(&ids))?;
        let ceremony = self.save_ceremony(&p.scope, Some(p.user_id), "second_factor", &state).await?;
        Ok((ceremony, options))
    }

    /// Answer the challenge with a key's assertion: the sign-in it completes (used once).
    /// Counted like a code; a failure is recorded (`mfa.challenge_failed`).
    pub async fn finish_key_challenge(
        &self,
        token: &str,
        ceremony: Uuid,
        response: &str,
        rp: &Rp,
        client: &ClientInfo,
        ip: Option<IpAddr>,
    ) -> Result<Completed, CoreError> {
        self.refuse_guesser(ip).await?;
        let result = self.finish_key_challenge_unjudged(token, ceremony, response, rp, client, ip).await;
        self.judge(ip, result).await
    }

    async fn finish_key_challenge_unjudged(
        &self,
        token: &str,
        ceremony: Uuid,
        response: &str,
        rp: &Rp,
        client: &ClientInfo,
        ip: Option<IpAddr>,
    ) -> Result<Completed, CoreError> {
        let p = self.pending_mfa(token).await?;
        if p.stage != Stage::Challenge {
            return Err(CoreError::InvalidGrant("this sign-in must enrol a second factor first"));
        }
        let counter = self.count_mfa_attempt(p.user_id, "webauthn", ip).await?;
        let result: Result<(Key, Vec<u8>), CoreError> = async {
            let state = self.take_ceremony(&p.scope, ceremony, Some(p.user_id), "second_factor").await?;
            let (credential, _) = webauthn::credential_of(response)?;
            let key = self
                .key_by_id(&p.scope, &credential)
                .await?
                .filter(|k| k.user == p.user_id)
                .ok_or(CoreError::InvalidGrant("this passkey is not registered for this account"))?;
            self.assert_key(&p.scope, rp, &state, response, &key, &credential).await?;
            Ok((key, credential))
        }
        .await;
        let key = match result {
            Ok((k, _)) => k,
            Err(e) => {
                let meta = serde_json::json!({"factor": "webauthn", "reason": e.to_string()});
                self.mfa_event(&p.scope, crate::audit::AuditAction::MfaChallengeFailed, p.user_id, client, meta)
                    .await?;
                return Err(e);
            }
        };
        let amr = with_second_factor(&p.amr, amr_of_key(key.backup_eligible));
        self.use_pending(&p, &amr, key.factor, client).await?;
        authio_db::preresolve::rate_reset(&self.inner.router, "mfa:factor", &counter).await?;
        Ok(Completed {
            scope: p.scope,
            user: SignedInUser { user_id: p.user_id, role: p.role, created: false },
            email: p.email,
            amr,
            ret: p.ret,
        })
    }

    /// Mark a waiting sign-in used with its `mfa.challenge_succeeded` event.
    async fn use_pending(
        &self,
        p: &super::Pending,
        amr: &[String],
        factor: Uuid,
        client: &ClientInfo,
    ) -> Result<(), CoreError> {
        let now = self.now();
        let tx = self.inner.router.begin(&p.scope).await?;
        let used = tx
            .query_opt(
                "UPDATE mfa_pending SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2
                 RETURNING user_id",
                &[(&p.token_hash.to_vec(), Type::BYTEA), (&now, Type::TIMESTAMPTZ)],
            )
            .await?;
        if used.is_none() {
            return Err(CoreError::InvalidGrant("this sign-in has expired or was completed: sign in again"));
        }
        audit::record_and_commit(
            tx,
            &p.scope,
            audit::Event {
                action: crate::audit::AuditAction::MfaChallengeSucceeded,
                actor: audit::Actor::user(p.user_id, Some(&p.email)),
                target: Some(("user", p.user_id.to_string())),
                client,
                metadata: serde_json::json!({"factor": "webauthn", "factor_id": factor, "amr": amr}),
            },
            now,
        )
        .await
    }

    /// Options for a passwordless passkey sign-in on a project's hosted page (the
    /// authenticator offers the user's discoverable credentials).
    pub async fn start_passkey_signin(
        &self,
        project: Uuid,
        rp: &Rp,
        ip: Option<IpAddr>,
    ) -> Result<(Uuid, serde_json::Value), CoreError> {
        self.presentation(project).await?.require("passkey")?;
        // Each ceremony is a row: anyone may start one, but not without end.
        self.limit_attempts(ip).await?;
        let profile = self.profile(project).await?;
        let (options, state) = webauthn::start_authentication(rp, None)?;
        let ceremony = self.save_ceremony(&scope_of(&profile), None, "passkey", &state).await?;
        Ok((ceremony, options))
    }

    /// Finish it: the user the key belongs to, signed in with `hwk` or `swk` and `mfa` (a
    /// discoverable credential with user verification is something held and something known
    /// or are). Failures count against the address like other one-time secrets.
    pub async fn finish_passkey_signin(
        &self,
        project: Uuid,
        ceremony: Uuid,
        response: &str,
        rp: &Rp,
        client: &ClientInfo,
        ip: Option<IpAddr>,
    ) -> Result<(Scope, SignedInUser, Vec<String>), CoreError> {
        self.refuse_guesser(ip).await?;
        let result: Result<(Scope, SignedInUser, Vec<String>), CoreError> = async {
            self.presentation(project).await?.require("passkey")?;
            let profile = self.profile(project).await?;
            let scope = scope_of(&profile);
            let state = self.take_ceremony(&scope, ceremony, None, "passkey").await?;
            let (credential, handle) = webauthn::credential_of(response)?;
            let key = self
                .key_by_id(&scope, &credential)
                .await?
                .ok_or(CoreError::InvalidGrant("this passkey is not registered here"))?;
            if handle.as_deref().is_some_and(|h| h != key.user.as_bytes()) {
                return Err(CoreError::InvalidGrant("this passkey is not registered here"));
            }
            if let Err(e) = self.assert_key(&scope, rp, &state, response, &key, &credential).await {
                let meta = serde_json::json!({"factor": "webauthn", "reason": e.to_string(), "passkey_signin": true});
                self.mfa_event(&scope, crate::audit::AuditAction::MfaChallengeFailed, key.user, client, meta).await?;
                return Err(e);
            }
            let tx = self.inner.router.begin(&scope).await?;
            let user = tx.query_one("SELECT role, email FROM users WHERE id = $1", &[(&key.user, Type::UUID)]).await?;
            let (role, email): (Option<String>, String) = (user.col("role")?, user.col("email")?);
            // An organization whose people sign in only through its identity provider holds here
            // too.
            if crate::identity::sso_policy::sso_required_for(&tx, Some(key.user), &email).await? {
                return Err(CoreError::SsoRequired);
            }
            tx.commit().await?;
            let amr = vec![amr_of_key(key.backup_eligible).to_owned(), "mfa".to_owned()];
            Ok((scope, SignedInUser { user_id: key.user, role, created: false }, amr))
        }
        .await;
        self.judge(ip, result).await
    }
}
