//! Multi-factor authentication: a user's second factors (TOTP authenticator apps, WebAuthn
//! passkeys and security keys), recovery codes, the policy that requires them (per project,
//! per organization), and the sign-in that waits for its second factor.
//!
//! Every way in (the JSON API, the hosted pages, the OpenID provider) ends in
//! [`Identity::begin_mfa`] before a session or a sign-in code is issued: a user with a factor
//! is challenged, a user whom policy requires to have one and who has none enrols first. The
//! first factor's proof waits in `mfa_pending` (at the home, found by the hash of the token
//! the browser or client holds), used once. Refresh and code exchange check the policy again
//! (a session without `mfa` in its `amr` does not outlive a policy that now requires it).
//!
//! Attempts at a code are counted before the code is judged, per factor and per address; a
//! factor whose failures reach the limit is locked for the rest of the window, right code or
//! not.
use std::net::IpAddr;

use authio_db::{preresolve, RowExt, Scope, Type};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::crypto::opaque;
use crate::identity::auth::{scope_of, Identity};
use crate::identity::signin::{Return, SignedInUser};
use crate::throttle::{ip_key, retry_after};
use crate::types::ClientInfo;
use crate::{audit, CoreError};

pub mod passkeys;
pub mod qr;
pub mod totp;
pub mod webauthn;

/// How long a sign-in may wait for its second factor.
pub const PENDING_TTL_SECS: i64 = 10 * 60;
/// Recovery codes made at a time.
pub const RECOVERY_CODES: usize = 10;

const PENDING_PREFIX: &str = "mfa_";

/// What a user must do before a session: nothing, pass a second factor, or enrol one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MfaNeed {
    None,
    Challenge(Factors),
    Enrol,
}

/// The kinds of second factor a user can answer with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Factors {
    pub totp: bool,
    pub webauthn: bool,
    pub recovery_code: bool,
}

impl Factors {
    /// From the kinds of the user's confirmed factors and whether a recovery code is left
    /// (recovery codes answer only beside a factor).
    fn of(kinds: &[String], recovery_left: bool) -> Self {
        let totp = kinds.iter().any(|k| k == "totp");
        let webauthn = kinds.iter().any(|k| k == "webauthn");
        Factors { totp, webauthn, recovery_code: recovery_left && (totp || webauthn) }
    }

    /// The names of the kinds the user has, for an API answer.
    pub fn names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.totp {
            v.push("totp");
        }
        if self.webauthn {
            v.push("webauthn");
        }
        if self.recovery_code {
            v.push("recovery_code");
        }
        v
    }
}

/// A sign-in waiting for its second factor: the token to present with it.
#[derive(Clone, Debug)]
pub struct PendingMfa {
    pub token: String,
    pub need: MfaNeed,
    pub expires_in: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Challenge,
    Enrol,
    Enrolled,
}

impl Stage {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "challenge" => Some(Stage::Challenge),
            "enrol" => Some(Stage::Enrol),
            "enrolled" => Some(Stage::Enrolled),
            _ => None,
        }
    }
}

/// A waiting sign-in, as read back.
#[derive(Clone, Debug)]
pub struct Pending {
    pub scope: Scope,
    pub token_hash: [u8; 32],
    pub user_id: Uuid,
    pub email: String,
    pub role: Option<String>,
    pub amr: Vec<String>,
    pub stage: Stage,
    pub factor_id: Option<Uuid>,
    pub ret: Option<Return>,
    pub factors: Factors,
}

impl Pending {
    /// A waiting sign-in may enrol a factor only while the user still has none: one enrolled
    /// meanwhile (elsewhere) must be passed, not joined by another.
    pub(crate) fn still_enrolling(&self) -> Result<(), CoreError> {
        if self.stage != Stage::Enrol {
            return Err(CoreError::InvalidGrant("this sign-in is not enrolling a second factor"));
        }
        if self.factors.totp || self.factors.webauthn {
            return Err(CoreError::InvalidGrant("a second factor was enrolled meanwhile: sign in again"));
        }
        Ok(())
    }
}

/// A sign-in whose second factor checked out: start its session (or hand off its code).
#[derive(Clone, Debug)]
pub struct Completed {
    pub scope: Scope,
    pub user: SignedInUser,
    pub email: String,
    pub amr: Vec<String>,
    pub ret: Option<Return>,
}

impl Completed {
    pub fn amr_refs(&self) -> Vec<&str> {
        self.amr.iter().map(String::as_str).collect()
    }
}

/// A signed-in user managing their own factors.
#[derive(Clone, Debug)]
pub struct Me {
    pub scope: Scope,
    pub user: Uuid,
    /// The session's sign-in passed a second factor.
    pub mfa: bool,
}

/// A second factor as listed (never its secret).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FactorInfo {
    pub id: Uuid,
    /// `totp` or `webauthn`.
    pub kind: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// WebAuthn: whether the credential may be synced between devices (a passkey), or is
    /// bound to one authenticator (a security key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub synced: Option<bool>,
}

/// A TOTP enrolment under way: what the authenticator app needs.
#[derive(Clone, Debug, Serialize)]
pub struct TotpEnrolment {
    pub factor_id: Uuid,
    /// Base32, for typing in by hand.
    pub secret: String,
    pub otpauth_uri: String,
    /// The URI as a QR code (inline SVG).
    pub qr_svg: String,
}

/// An answer to a challenge.
#[derive(Clone, Copy, Debug)]
pub enum Answer<'a> {
    Totp(&'a str),
    RecoveryCode(&'a str),
}

const WRONG_CODE: CoreError = CoreError::InvalidGrant("the code is wrong, expired or already used");
const BAD_PENDING: CoreError = CoreError::InvalidGrant("this sign-in has expired or was completed: sign in again");

/// Whether the user has a confirmed factor (of `kind`, if given), read in `tx`.
async fn has_factor_in(tx: &authio_db::ScopedTx, user: Uuid, kind: Option<&str>) -> Result<bool, CoreError> {
    Ok(tx
        .query_opt(
            "SELECT 1 FROM mfa_factors WHERE user_id = $1 AND confirmed_at IS NOT NULL AND ($2::text IS NULL OR kind = $2)
             LIMIT 1",
            &[(&user, Type::UUID), (&kind, Type::TEXT)],
        )
        .await?
        .is_some())
}

/// The amr a second factor adds (RFC 8176): `otp` for a TOTP or recovery code, `hwk` or
/// `swk` for a WebAuthn key, and `mfa`.
pub(crate) fn with_second_factor(amr: &[String], method: &str) -> Vec<String> {
    let mut out: Vec<String> = amr.iter().filter(|a| *a != "mfa").cloned().collect();
    if !out.iter().any(|a| a == method) {
        out.push(method.to_owned());
    }
    out.push("mfa".to_owned());
    out
}

/// `aal2` when a second factor was passed in the sign-in, else `aal1` (NIST SP 800-63B's
/// authenticator assurance levels, the `acr` values the provider advertises).
pub fn acr_of(amr: &[String]) -> &'static str {
    if amr.iter().any(|a| a == "mfa") {
        "aal2"
    } else {
        "aal1"
    }
}

/// The project a pending-sign-in token belongs to, and the hash to find it by.
fn parse_pending(token: &str) -> Option<(Uuid, [u8; 32])> {
    let rest = token.strip_prefix(PENDING_PREFIX)?;
    let (project, secret) = rest.split_once('_')?;
    if project.len() != 32 || secret.len() != 43 {
        return None;
    }
    Some((Uuid::try_parse(project).ok()?, opaque::hash(secret)))
}

/// Recovery codes are typed by people: lower-case letters and digits without look-alikes
/// (no i, l, o or 1), in three groups of four (60 bits), compared without case, spaces or dashes.
fn new_recovery_code() -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghjkmnpqrstuvwxyz023456789";
    let raw = opaque::random_bytes::<12>();
    let chars: String = raw.iter().map(|b| char::from(ALPHABET[usize::from(b & 31)])).collect();
    format!("{}-{}-{}", &chars[0..4], &chars[4..8], &chars[8..12])
}

fn recovery_hash(code: &str) -> Vec<u8> {
    let normal: String = code.chars().filter(|c| !matches!(c, '-' | ' ')).map(|c| c.to_ascii_lowercase()).collect();
    Sha256::digest(normal.as_bytes()).to_vec()
}

impl Identity {
    /// What `user` must do before a session: the project's policy, the policy of any
    /// organization they are an active member of, and the factors they have.
    pub async fn mfa_need(&self, scope: &Scope, user: Uuid) -> Result<MfaNeed, CoreError> {
        let project = crate::types::project_of(scope)?;
        let presentation = self.presentation(project).await?;
        let rows = self
            .inner
            .router
            .read(
                scope,
                "SELECT coalesce(array_agg(DISTINCT f.kind) FILTER (WHERE f.kind IS NOT NULL), '{}') AS kinds,
                        EXISTS (SELECT 1 FROM recovery_codes r WHERE r.user_id = $1 AND r.used_at IS NULL) AS recovery,
                        EXISTS (SELECT 1 FROM memberships m
                                JOIN organizations o ON o.tenant_id = m.tenant_id AND o.id = m.organization_id
                                WHERE m.user_id = $1 AND m.status = 'active' AND o.mfa_required) AS org_required
                 FROM (SELECT 1) one
                 LEFT JOIN mfa_factors f ON f.user_id = $1 AND f.confirmed_at IS NOT NULL",
                &[(&user, Type::UUID)],
            )
            .await?;
        let r = rows.first().ok_or_else(|| CoreError::Internal("mfa lookup returned no row".into()))?;
        let factors = Factors::of(&r.try_get::<Vec<String>>(0)?, r.try_get(1)?);
        let required = presentation.mfa_required || r.try_get::<bool>(2)?;
        Ok(if factors.totp || factors.webauthn {
            MfaNeed::Challenge(factors)
        } else if required {
            MfaNeed::Enrol
        } else {
            MfaNeed::None
        })
    }

    /// The gate every sign-in passes once its first factor checked out: `None` when no second
    /// factor is needed (start the session), else the waiting sign-in's token. `amr` is what
    /// was proved so far; `ret` where the sign-in returns when it is complete.
    pub async fn begin_mfa(
        &self,
        scope: &Scope,
        user: &SignedInUser,
        amr: &[&str],
        ret: Option<&Return>,
    ) -> Result<Option<PendingMfa>, CoreError> {
        self.begin_mfa_for(scope, user, amr, ret, false).await
    }

    /// Step-up on an existing sign-in (the OpenID provider's): as [`Identity::begin_mfa`], and
    /// when `demanded` (the client asked for `acr_values=aal2`) a user without a factor enrols
    /// one now.
    pub async fn begin_step_up(
        &self,
        scope: &Scope,
        user: &SignedInUser,
        amr: &[&str],
        ret: &Return,
        demanded: bool,
    ) -> Result<Option<PendingMfa>, CoreError> {
        self.begin_mfa_for(scope, user, amr, Some(ret), demanded).await
    }

    async fn begin_mfa_for(
        &self,
        scope: &Scope,
        user: &SignedInUser,
        amr: &[&str],
        ret: Option<&Return>,
        demanded: bool,
    ) -> Result<Option<PendingMfa>, CoreError> {
        // A sign-in that already passed a second factor (a passkey with user verification) is done.
        if amr.contains(&"mfa") {
            return Ok(None);
        }
        let need = match self.mfa_need(scope, user.user_id).await? {
            MfaNeed::None if demanded => MfaNeed::Enrol,
            need => need,
        };
        let stage = match need {
            MfaNeed::None => return Ok(None),
            MfaNeed::Challenge(_) => "challenge",
            MfaNeed::Enrol => "enrol",
        };
        let project = crate::types::project_of(scope)?;
        let secret = opaque::random_secret();
        let token = format!("{PENDING_PREFIX}{}_{secret}", project.simple());
        let hash = opaque::hash(&secret).to_vec();
        let now = self.now();
        let expires = now + Duration::seconds(PENDING_TTL_SECS);
        let amr: Vec<String> = amr.iter().map(|a| (*a).to_owned()).collect();
        let (uri, app_state, challenge) = Return::columns(ret);
        self.inner
            .router
            .write(
                scope,
                &[
                    // The user's waiting sign-ins that ran out go as a new one comes.
                    (
                        "DELETE FROM mfa_pending WHERE user_id = $1 AND expires_at < $2",
                        &[(&user.user_id, Type::UUID), (&now, Type::TIMESTAMPTZ)],
                    ),
                    (
                        "INSERT INTO mfa_pending (tenant_id, project_id, token_hash, user_id, amr, stage, redirect_uri,
                                              app_state, code_challenge, created_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                        &[
                            (&scope.tenant_id, Type::UUID),
                            (&project, Type::UUID),
                            (&hash, Type::BYTEA),
                            (&user.user_id, Type::UUID),
                            (&amr, Type::TEXT_ARRAY),
                            (&stage, Type::TEXT),
                            (&uri, Type::TEXT),
                            (&app_state, Type::TEXT),
                            (&challenge, Type::TEXT),
                            (&now, Type::TIMESTAMPTZ),
                            (&expires, Type::TIMESTAMPTZ),
                        ],
                    ),
                ],
            )
            .await?;
        Ok(Some(PendingMfa { token, need, expires_in: PENDING_TTL_SECS }))
    }

    /// A waiting sign-in by its token: live (not expired, not used), with what the user can
    /// answer with now.
    pub async fn pending_mfa(&self, token: &str) -> Result<Pending, CoreError> {
        let (project, hash) = parse_pending(token).ok_or(BAD_PENDING)?;
        let profile = match self.profile(project).await {
            Ok(p) => p,
            Err(CoreError::NotFound(_)) => return Err(BAD_PENDING),
            Err(e) => return Err(e),
        };
        let scope = scope_of(&profile);
        let rows = self
            .inner
            .router
            .read(
                &scope,
                // With the factors the user has now, in the same read.
                "SELECT p.user_id, u.email, u.role, p.amr, p.stage, p.factor_id, p.redirect_uri, p.app_state,
                        p.code_challenge, u.disabled,
                        coalesce((SELECT array_agg(DISTINCT f.kind) FROM mfa_factors f
                                  WHERE f.user_id = p.user_id AND f.confirmed_at IS NOT NULL), '{}') AS kinds,
                        EXISTS (SELECT 1 FROM recovery_codes r WHERE r.user_id = p.user_id AND r.used_at IS NULL)
                            AS recovery
                 FROM mfa_pending p JOIN users u ON u.tenant_id = p.tenant_id AND u.id = p.user_id
                 WHERE p.token_hash = $1 AND p.used_at IS NULL AND p.expires_at > $2",
                &[(&hash.to_vec(), Type::BYTEA), (&self.now(), Type::TIMESTAMPTZ)],
            )
            .await?;
        let r = rows.first().ok_or(BAD_PENDING)?;
        if r.try_get::<bool>(9)? {
            return Err(BAD_PENDING);
        }
        let user_id: Uuid = r.try_get(0)?;
        let stage = Stage::parse(&r.try_get::<String>(4)?).ok_or(BAD_PENDING)?;
        let factors = Factors::of(&r.try_get::<Vec<String>>(10)?, r.try_get(11)?);
        Ok(Pending {
            scope,
            token_hash: hash,
            user_id,
            email: r.try_get(1)?,
            role: r.try_get(2)?,
            amr: r.try_get(3)?,
            stage,
            factor_id: r.try_get(5)?,
            ret: Return::from_columns(r.try_get(6)?, r.try_get(7)?, r.try_get(8)?),
            factors,
        })
    }

    /// Count an attempt at a factor before it is judged, per factor and per address; a factor
    /// over its failures (or an address over its attempts) is refused, right code or not.
    /// Returns the factor's counter key, to reset on success.
    pub(crate) async fn count_mfa_attempt(
        &self,
        user: Uuid,
        factor: &str,
        ip: Option<IpAddr>,
    ) -> Result<String, CoreError> {
        let l = &self.inner.settings.limits;
        let now = self.now();
        let key = format!("{user}:{factor}");
        let (factor_hits, ip_hits) = match ip {
            Some(ip) => {
                let (a, b) = preresolve::rate_hit_both(
                    &self.inner.router,
                    ("mfa:factor", &key, l.mfa_window_secs),
                    ("mfa:ip", &ip_key(ip), l.mfa_ip_window_secs),
                    now,
                )
                .await?;
                (a, Some(b))
            }
            None => (preresolve::rate_hit(&self.inner.router, "mfa:factor", &key, l.mfa_window_secs, now).await?, None),
        };
        if factor_hits.hits > l.mfa_failures {
            return Err(CoreError::FactorLocked { retry_after: retry_after(factor_hits.window_ends, now) });
        }
        if let Some(w) = ip_hits.filter(|w| w.hits > l.mfa_per_ip) {
            return Err(CoreError::RateLimited { retry_after: retry_after(w.window_ends, now) });
        }
        Ok(key)
    }

    pub(crate) async fn mfa_event(
        &self,
        scope: &Scope,
        action: crate::audit::AuditAction,
        user: Uuid,
        client: &ClientInfo,
        metadata: serde_json::Value,
    ) -> Result<(), CoreError> {
        let event = audit::Event {
            action,
            actor: audit::Actor::user(user, None),
            target: Some(("user", user.to_string())),
            client,
            metadata,
        };
        audit::record(&self.inner.router, scope, event, self.now()).await
    }

    /// Answer a waiting sign-in's challenge with a TOTP or recovery code: the sign-in it
    /// completes (used once), or why not. Every attempt is counted first; a failure is
    /// recorded (`mfa.challenge_failed`).
    pub async fn verify_mfa(
        &self,
        token: &str,
        answer: Answer<'_>,
        client: &ClientInfo,
        ip: Option<IpAddr>,
    ) -> Result<Completed, CoreError> {
        // Wrong tokens and codes also count against the address like other one-time secrets.
        self.refuse_guesser(ip).await?;
        let result = self.verify_mfa_unjudged(token, answer, client, ip).await;
        self.judge(ip, result).await
    }

    async fn verify_mfa_unjudged(
        &self,
        token: &str,
        answer: Answer<'_>,
        client: &ClientInfo,
        ip: Option<IpAddr>,
    ) -> Result<Completed, CoreError> {
        let p = self.pending_mfa(token).await?;
        if p.stage != Stage::Challenge {
            return Err(CoreError::InvalidGrant("this sign-in must enrol a second factor first"));
        }
        let kind = match answer {
            Answer::Totp(_) => "totp",
            Answer::RecoveryCode(_) => "recovery_code",
        };
        let counter = self.count_mfa_attempt(p.user_id, kind, ip).await;
        let counter = match counter {
            Ok(c) => c,
            Err(e) => {
                let reason = if matches!(e, CoreError::FactorLocked { .. }) { "locked" } else { "rate_limited" };
                let meta = serde_json::json!({"factor": kind, "reason": reason});
                self.mfa_event(&p.scope, crate::audit::AuditAction::MfaChallengeFailed, p.user_id, client, meta)
                    .await?;
                return Err(e);
            }
        };
        let now = self.now();
        let tx = self.inner.router.begin(&p.scope).await?;
        // The waiting sign-in is used in the same transaction as the factor: one or neither.
        let used = tx
            .query_opt(
                "UPDATE mfa_pending SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2
                 RETURNING user_id",
                &[(&p.token_hash.to_vec(), Type::BYTEA), (&now, Type::TIMESTAMPTZ)],
            )
            .await?;
        if used.is_none() {
            return Err(BAD_PENDING);
        }
        let (ok, factor_id) = match answer {
            Answer::Totp(code) => match self.check_totp_in(&tx, p.user_id, None, code, now).await? {
                Some(id) => (true, Some(id)),
                None => (false, None),
            },
            Answer::RecoveryCode(code) => {
                let hash = recovery_hash(code);
                let hit = code.len() <= 64
                    && tx
                        .query_opt(
                            "UPDATE recovery_codes SET used_at = $3
                             WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL RETURNING user_id",
                            &[(&p.user_id, Type::UUID), (&hash, Type::BYTEA), (&now, Type::TIMESTAMPTZ)],
                        )
                        .await?
                        .is_some();
                (hit, None)
            }
        };
        if !ok {
            drop(tx);
            let meta = serde_json::json!({"factor": kind, "reason": "wrong_code"});
            self.mfa_event(&p.scope, crate::audit::AuditAction::MfaChallengeFailed, p.user_id, client, meta).await?;
            return Err(WRONG_CODE);
        }
        let amr = with_second_factor(&p.amr, "otp");
        let row = audit::EventRow::new(
            &p.scope,
            audit::Event {
                action: crate::audit::AuditAction::MfaChallengeSucceeded,
                actor: audit::Actor::user(p.user_id, Some(&p.email)),
                target: Some(("user", p.user_id.to_string())),
                client,
                metadata: serde_json::json!({"factor": kind, "factor_id": factor_id, "amr": amr}),
            },
            now,
        )?;
        tx.query(audit::INSERT_SQL, &row.params()).await?;
        if kind == "recovery_code" {
            let left = tx
                .query_one(
                    "SELECT count(*)::int AS n FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL",
                    &[(&p.user_id, Type::UUID)],
                )
                .await?
                .col::<i32>("n")?;
            audit::record_and_commit(
                tx,
                &p.scope,
                audit::Event {
                    action: crate::audit::AuditAction::RecoveryCodeUsed,
                    actor: audit::Actor::user(p.user_id, Some(&p.email)),
                    target: Some(("user", p.user_id.to_string())),
                    client,
                    metadata: serde_json::json!({"remaining": left}),
                },
                now,
            )
            .await?;
        } else {
            tx.commit().await?;
        }
        preresolve::rate_reset(&self.inner.router, "mfa:factor", &counter).await?;
        Ok(Completed {
            scope: p.scope,
            user: SignedInUser { user_id: p.user_id, role: p.role, created: false },
            email: p.email,
            amr,
            ret: p.ret,
        })
    }

    /// Check a TOTP code against the user's confirmed authenticator (or the unconfirmed one
    /// being enrolled, `enrolling`) and record its step, in `tx`: the factor's id when it
    /// matched a step after the last one used.
    async fn check_totp_in(
        &self,
        tx: &authio_db::ScopedTx,
        user: Uuid,
        enrolling: Option<Uuid>,
        code: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Uuid>, CoreError> {
        let row = tx
            .query_opt(
                "SELECT id, totp_secret, last_step FROM mfa_factors
                 WHERE user_id = $1 AND kind = 'totp'
                   AND CASE WHEN $2::uuid IS NULL THEN confirmed_at IS NOT NULL ELSE id = $2 END
                 FOR UPDATE",
                &[(&user, Type::UUID), (&enrolling, Type::UUID)],
            )
            .await?;
        let Some(r) = row else { return Ok(None) };
        let id: Uuid = r.col("id")?;
        let sealed: String = r.col("totp_secret")?;
        let secret = self
            .inner
            .master_key
            .decrypt(&sealed)
            .ok()
            .and_then(|s| totp::from_base32(&s))
            .ok_or_else(|| CoreError::Internal("a TOTP secret could not be opened".into()))?;
        let Some(step) = totp::verify(&secret, code, now.timestamp(), r.col("last_step")?) else {
            return Ok(None);
        };
        // The row is locked: no other request can use the same step in between.
        tx.query(
            "UPDATE mfa_factors SET last_step = $2, last_used_at = $3 WHERE id = $1",
            &[(&id, Type::UUID), (&step, Type::INT8), (&now, Type::TIMESTAMPTZ)],
        )
        .await?;
        Ok(Some(id))
    }

    /// Start (or show again) a TOTP enrolment: an unconfirmed factor with a new secret. `label`
    /// is the account name the app shows (the user's address).
    async fn new_totp_factor(&self, scope: &Scope, user: Uuid, label: &str) -> Result<TotpEnrolment, CoreError> {
        let project = crate::types::project_of(scope)?;
        let presentation = self.presentation(project).await?;
        let secret = opaque::random_bytes::<{ totp::SECRET_LEN }>();
        let b32 = totp::base32(&secret);
        let sealed = self
            .inner
            .master_key
            .encrypt(&b32)
            .map_err(|e| CoreError::Internal(format!("sealing a TOTP secret: {e}")))?;
        let id = Uuid::now_v7();
        let now = self.now();
        let name = "Authenticator app";
        // An abandoned enrolment gives way to the new one.
        self.inner
            .router
            .write(
                scope,
                &[
                    (
                        "DELETE FROM mfa_factors WHERE user_id = $1 AND kind = 'totp' AND confirmed_at IS NULL",
                        &[(&user, Type::UUID)],
                    ),
                    (
                        "INSERT INTO mfa_factors (tenant_id, project_id, id, user_id, kind, name, totp_secret, created_at)
                         VALUES ($1, $2, $3, $4, 'totp', $5, $6, $7)",
                        &[
                            (&scope.tenant_id, Type::UUID),
                            (&project, Type::UUID),
                            (&id, Type::UUID),
                            (&user, Type::UUID),
                            (&name, Type::TEXT),
                            (&sealed, Type::TEXT),
                            (&now, Type::TIMESTAMPTZ),
                        ],
                    ),
                ],
            )
            .await?;
        let uri = totp::otpauth_uri(&secret, presentation.title(), label);
        Ok(TotpEnrolment { factor_id: id, qr_svg: qr::svg(&uri)?, secret: b32, otpauth_uri: uri })
    }

    /// The TOTP secret of an unconfirmed factor, shown again (a reloaded enrolment page).
    async fn show_totp_factor(
        &self,
        scope: &Scope,
        user: Uuid,
        id: Uuid,
        label: &str,
    ) -> Result<Option<TotpEnrolment>, CoreError> {
        let rows = self
            .inner
            .router
            .read(
                scope,
                "SELECT totp_secret FROM mfa_factors WHERE id = $1 AND user_id = $2 AND confirmed_at IS NULL",
                &[(&id, Type::UUID), (&user, Type::UUID)],
            )
            .await?;
        let Some(r) = rows.first() else { return Ok(None) };
        let b32 = self
            .inner
            .master_key
            .decrypt(&r.try_get::<String>(0)?)
            .map_err(|e| CoreError::Internal(format!("opening a TOTP secret: {e}")))?;
        let secret = totp::from_base32(&b32).ok_or_else(|| CoreError::Internal("a TOTP secret is malformed".into()))?;
        let presentation = self.presentation(crate::types::project_of(scope)?).await?;
        let uri = totp::otpauth_uri(&secret, presentation.title(), label);
        Ok(Some(TotpEnrolment { factor_id: id, qr_svg: qr::svg(&uri)?, secret: b32, otpauth_uri: uri }))
    }

    /// Confirm an enrolment with a code from the app (counted like a challenge): the factor
    /// counts from now on. Recovery codes are made when the user has none left unused
    /// (returned, to be shown once). Recorded as `mfa.enrolled`.
    async fn confirm_totp_factor(
        &self,
        scope: &Scope,
        user: Uuid,
        factor: Uuid,
        code: &str,
        client: &ClientInfo,
        ip: Option<IpAddr>,
    ) -> Result<Option<Vec<String>>, CoreError> {
        let counter = self.count_mfa_attempt(user, "totp", ip).await?;
        let now = self.now();
        let tx = self.inner.router.begin(scope).await?;
        if has_factor_in(&tx, user, Some("totp")).await? {
            return Err(CoreError::Conflict(
                "an authenticator app is already enrolled: remove it before adding another".into(),
            ));
        }
        if self.check_totp_in(&tx, user, Some(factor), code, now).await?.is_none() {
            drop(tx);
            let meta = serde_json::json!({"factor": "totp", "reason": "wrong_code", "enrolment": true});
            self.mfa_event(scope, crate::audit::AuditAction::MfaChallengeFailed, user, client, meta).await?;
            return Err(WRONG_CODE);
        }
        tx.query(
            "UPDATE mfa_factors SET confirmed_at = $2 WHERE id = $1",
            &[(&factor, Type::UUID), (&now, Type::TIMESTAMPTZ)],
        )
        .await?;
        let codes = self.recovery_codes_if_none_in(&tx, scope, user, now).await?;
        audit::record_and_commit(
            tx,
            scope,
            audit::Event {
                action: crate::audit::AuditAction::MfaEnrolled,
                actor: audit::Actor::user(user, None),
                target: Some(("user", user.to_string())),
                client,
                metadata: serde_json::json!({"factor_id": factor, "kind": "totp", "recovery_codes_issued": codes.is_some()}),
            },
            now,
        )
        .await?;
        preresolve::rate_reset(&self.inner.router, "mfa:factor", &counter).await?;
        Ok(codes)
    }

    /// Ten new recovery codes in `tx` when the user has none unused.
    pub(crate) async fn recovery_codes_if_none_in(
        &self,
        tx: &authio_db::ScopedTx,
        scope: &Scope,
        user: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<String>>, CoreError> {
        let has = tx
            .query_opt(
                "SELECT 1 FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL LIMIT 1",
                &[(&user, Type::UUID)],
            )
            .await?
            .is_some();
        if has {
            return Ok(None);
        }
        Ok(Some(self.write_recovery_codes(tx, scope, user, now).await?))
    }

    /// Replace the user's recovery codes with ten new ones, in `tx`.
    async fn write_recovery_codes(
        &self,
        tx: &authio_db::ScopedTx,
        scope: &Scope,
        user: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>, CoreError> {
        let project = crate::types::project_of(scope)?;
        tx.query("DELETE FROM recovery_codes WHERE user_id = $1", &[(&user, Type::UUID)]).await?;
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| new_recovery_code()).collect();
        let hashes: Vec<Vec<u8>> = codes.iter().map(|c| recovery_hash(c)).collect();
        tx.query(
            "INSERT INTO recovery_codes (tenant_id, project_id, user_id, code_hash, created_at)
             SELECT $1, $2, $3, h, $5 FROM unnest($4::bytea[]) h",
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&user, Type::UUID),
                (&hashes, Type::BYTEA_ARRAY),
                (&now, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
        Ok(codes)
    }

    // -----------------------------------------------------------------------------------
    // Enrolment inside a waiting sign-in (policy requires a factor the user does not have)

    /// The TOTP enrolment of a waiting sign-in that must enrol: made on first call, shown
    /// again after.
    pub async fn pending_totp_enrolment(&self, token: &str) -> Result<TotpEnrolment, CoreError> {
        let p = self.pending_mfa(token).await?;
        p.still_enrolling()?;
        if let Some(id) = p.factor_id {
            if let Some(e) = self.show_totp_factor(&p.scope, p.user_id, id, &p.email).await? {
                return Ok(e);
            }
        }
        let e = self.new_totp_factor(&p.scope, p.user_id, &p.email).await?;
        self.inner
            .router
            .write(
                &p.scope,
                &[(
                    "UPDATE mfa_pending SET factor_id = $2 WHERE token_hash = $1 AND used_at IS NULL",
                    &[(&p.token_hash.to_vec(), Type::BYTEA), (&e.factor_id, Type::UUID)],
                )],
            )
            .await?;
        Ok(e)
    }

    /// Confirm a waiting sign-in's TOTP enrolment with a code: the factor is enrolled and the
    /// sign-in may complete ([`Identity::complete_enrolled`]); returns the recovery codes to
    /// show once.
    pub async fn confirm_pending_totp(
        &self,
        token: &str,
        code: &str,
        client: &ClientInfo,
        ip: Option<IpAddr>,
    ) -> Result<Vec<String>, CoreError> {
        self.refuse_guesser(ip).await?;
        let result = self.confirm_pending_totp_unjudged(token, code, client, ip).await;
        self.judge(ip, result).await
    }

    async fn confirm_pending_totp_unjudged(
        &self,
        token: &str,
        code: &str,
        client: &ClientInfo,
        ip: Option<IpAddr>,
    ) -> Result<Vec<String>, CoreError> {
        let p = self.pending_mfa(token).await?;
        p.still_enrolling()?;
        let Some(factor) = p.factor_id else {
            return Err(CoreError::InvalidGrant("start the enrolment first"));
        };
        let codes = self.confirm_totp_factor(&p.scope, p.user_id, factor, code, client, ip).await?;
        self.inner
            .router
            .write(
                &p.scope,
                &[(
                    "UPDATE mfa_pending SET stage = 'enrolled', amr = $2 WHERE token_hash = $1 AND used_at IS NULL",
                    &[(&p.token_hash.to_vec(), Type::BYTEA), (&with_second_factor(&p.amr, "otp"), Type::TEXT_ARRAY)],
                )],
            )
            .await?;
        Ok(codes.unwrap_or_default())
    }

    /// Complete a waiting sign-in whose user just enrolled (used once).
    pub async fn complete_enrolled(&self, token: &str) -> Result<Completed, CoreError> {
        let p = self.pending_mfa(token).await?;
        if p.stage != Stage::Enrolled {
            return Err(CoreError::InvalidGrant("this sign-in has not enrolled a second factor yet"));
        }
        let now = self.now();
        let used = self
            .inner
            .router
            .write(
                &p.scope,
                &[(
                    "UPDATE mfa_pending SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL RETURNING amr",
                    &[(&p.token_hash.to_vec(), Type::BYTEA), (&now, Type::TIMESTAMPTZ)],
                )],
            )
            .await?;
        let row = used.first().ok_or(BAD_PENDING)?;
        Ok(Completed {
            scope: p.scope,
            user: SignedInUser { user_id: p.user_id, role: p.role, created: false },
            email: p.email,
            amr: row.try_get(0)?,
            ret: p.ret,
        })
    }

    /// Start the session of a completed sign-in (the JSON API's path; the hosted pages hand
    /// off a sign-in code instead).
    pub async fn start_completed_session(
        &self,
        done: &Completed,
        client: &ClientInfo,
    ) -> Result<crate::identity::auth::UserTokens, CoreError> {
        self.start_session(&done.scope, &done.user, &done.amr_refs(), client).await
    }

    // -----------------------------------------------------------------------------------
    // A signed-in user's own factors

    /// The user's confirmed factors and how many recovery codes are left.
    pub async fn list_factors(&self, scope: &Scope, user: Uuid) -> Result<(Vec<FactorInfo>, i32), CoreError> {
        let rows = self
            .inner
            .router
            .read(
                scope,
                "SELECT id, kind, name, created_at, last_used_at, backup_eligible,
                        (SELECT count(*)::int FROM recovery_codes r WHERE r.user_id = $1 AND r.used_at IS NULL) AS left
                 FROM (SELECT 1) one LEFT JOIN mfa_factors f ON f.user_id = $1 AND f.confirmed_at IS NOT NULL
                 ORDER BY f.id",
                &[(&user, Type::UUID)],
            )
            .await?;
        let mut left = 0;
        let mut out = Vec::new();
        for r in &rows {
            left = r.try_get(6)?;
            if let Some(id) = r.try_get::<Option<Uuid>>(0)? {
                out.push(FactorInfo {
                    id,
                    kind: r.try_get(1)?,
                    name: r.try_get(2)?,
                    created_at: r.try_get(3)?,
                    last_used_at: r.try_get(4)?,
                    synced: r.try_get(5)?,
                });
            }
        }
        Ok((out, left))
    }

    /// Start adding an authenticator app for a signed-in user.
    pub async fn start_totp(&self, scope: &Scope, user: Uuid) -> Result<TotpEnrolment, CoreError> {
        let email = self.user_email(scope, user).await?;
        self.new_totp_factor(scope, user, &email).await
    }

    /// An enrolment under way, shown again (after a wrong code).
    pub async fn show_totp(&self, scope: &Scope, user: Uuid, factor: Uuid) -> Result<Option<TotpEnrolment>, CoreError> {
        let email = self.user_email(scope, user).await?;
        self.show_totp_factor(scope, user, factor, &email).await
    }

    /// Confirm it with a code; recovery codes when the user had none.
    pub async fn confirm_totp(
        &self,
        scope: &Scope,
        user: Uuid,
        factor: Uuid,
        code: &str,
        client: &ClientInfo,
        ip: Option<IpAddr>,
    ) -> Result<Option<Vec<String>>, CoreError> {
        self.confirm_totp_factor(scope, user, factor, code, client, ip).await
    }

    pub async fn rename_factor(&self, scope: &Scope, user: Uuid, id: Uuid, name: &str) -> Result<(), CoreError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(CoreError::Invalid(crate::types::ValidationError::Field("name (1-100 characters)")));
        }
        let rows = self
            .inner
            .router
            .write(
                scope,
                &[(
                    "UPDATE mfa_factors SET name = $3 WHERE id = $1 AND user_id = $2 AND confirmed_at IS NOT NULL
                     RETURNING id",
                    &[(&id, Type::UUID), (&user, Type::UUID), (&name, Type::TEXT)],
                )],
            )
            .await?;
        if rows.is_empty() {
            return Err(CoreError::NotFound(crate::types::Entity::Factor));
        }
        Ok(())
    }

    /// Remove a factor (`mfa.removed`). With the last one gone, the recovery codes go too.
    pub async fn remove_factor(
        &self,
        scope: &Scope,
        user: Uuid,
        id: Uuid,
        actor: audit::Actor,
        client: &ClientInfo,
    ) -> Result<(), CoreError> {
        let now = self.now();
        let tx = self.inner.router.begin(scope).await?;
        let gone = tx
            .query_opt(
                "DELETE FROM mfa_factors WHERE id = $1 AND user_id = $2 RETURNING kind",
                &[(&id, Type::UUID), (&user, Type::UUID)],
            )
            .await?
            .ok_or(CoreError::NotFound(crate::types::Entity::Factor))?;
        let kind: String = gone.col("kind")?;
        let last = !has_factor_in(&tx, user, None).await?;
        if last {
            tx.query("DELETE FROM recovery_codes WHERE user_id = $1", &[(&user, Type::UUID)]).await?;
        }
        audit::record_and_commit(
            tx,
            scope,
            audit::Event {
                action: crate::audit::AuditAction::MfaRemoved,
                actor,
                target: Some(("user", user.to_string())),
                client,
                metadata: serde_json::json!({"factor_id": id, "kind": kind, "last": last}),
            },
            now,
        )
        .await
    }

    /// New recovery codes (the old ones stop working); only for a user with a factor.
    pub async fn regenerate_recovery_codes(
        &self,
        scope: &Scope,
        user: Uuid,
        client: &ClientInfo,
    ) -> Result<Vec<String>, CoreError> {
        let now = self.now();
        let tx = self.inner.router.begin(scope).await?;
        if !has_factor_in(&tx, user, None).await? {
            return Err(CoreError::Conflict("recovery codes need a second factor: enrol one first".into()));
        }
        let codes = self.write_recovery_codes(&tx, scope, user, now).await?;
        audit::record_and_commit(
            tx,
            scope,
            audit::Event {
                action: crate::audit::AuditAction::RecoveryCodesRegenerated,
                actor: audit::Actor::user(user, None),
                target: Some(("user", user.to_string())),
                client,
                metadata: serde_json::json!({"count": codes.len()}),
            },
            now,
        )
        .await?;
        Ok(codes)
    }

    /// The user an access token of theirs names, to manage their own factors: a live token of
    /// a user's session (not an M2M token, not an impersonation). `mfa`: its sign-in passed a
    /// second factor.
    pub async fn me(&self, token: &str) -> Result<Me, CoreError> {
        let (claims, profile) = self.verify_access_token(token).await?;
        // Only the user's own session (the sign-in API's, a hosted sign-in's): not an M2M token,
        // not an impersonation, and not a token an OpenID client or agent holds for the user
        // (nor one for another resource), which must not turn into control of their factors.
        let own = claims.sid.is_some()
            && claims.act.is_none()
            && claims.client_id.is_none()
            && claims.aud == profile.project_id.to_string();
        if !own {
            return Err(CoreError::Forbidden("only the user's own session may manage their second factors"));
        }
        if !self.access_token_live(&claims, &profile).await? {
            return Err(CoreError::InvalidToken("revoked"));
        }
        let user = Uuid::parse_str(&claims.sub).map_err(|_| CoreError::InvalidToken("sub"))?;
        let mfa = claims.amr.as_deref().unwrap_or_default().iter().any(|a| a == "mfa");
        Ok(Me { scope: scope_of(&profile), user, mfa })
    }

    /// Changing the factors of a user who has one needs a session that passed one: a stolen
    /// password alone does not replace or remove them.
    pub async fn require_second_factor(&self, me: &Me) -> Result<(), CoreError> {
        if me.mfa {
            return Ok(());
        }
        match self.mfa_need(&me.scope, me.user).await? {
            MfaNeed::Challenge(_) => Err(CoreError::MfaRequired),
            _ => Ok(()),
        }
    }

    pub async fn user_email(&self, scope: &Scope, user: Uuid) -> Result<String, CoreError> {
        let rows = self
            .inner
            .router
            .read(scope, "SELECT email FROM users WHERE id = $1 AND NOT disabled", &[(&user, Type::UUID)])
            .await?;
        Ok(rows.first().ok_or(CoreError::NotFound(crate::types::Entity::User))?.try_get(0)?)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_second_factor_adds_its_method_and_mfa_once() {
        let amr = vec!["pwd".to_owned()];
        assert_eq!(with_second_factor(&amr, "otp"), ["pwd", "otp", "mfa"]);
        let again = with_second_factor(&with_second_factor(&amr, "otp"), "hwk");
        assert_eq!(again, ["pwd", "otp", "hwk", "mfa"]);
        assert_eq!(acr_of(&again), "aal2");
        assert_eq!(acr_of(&amr), "aal1");
    }

    #[test]
    fn pending_tokens_name_their_project() {
        let project = Uuid::now_v7();
        let token = format!("{PENDING_PREFIX}{}_{}", project.simple(), opaque::random_secret());
        assert_eq!(parse_pending(&token).unwrap().0, project);
        assert!(parse_pending("mfa_x_y").is_none());
        assert!(parse_pending(&token.replace("mfa_", "rt_")).is_none());
    }

    #[test]
    fn recovery_codes_compare_without_case_or_dashes() {
        let code = new_recovery_code();
        assert_eq!(code.len(), 14);
        assert_eq!(recovery_hash(&code), recovery_hash(&code.replace('-', " ").to_uppercase()));
        assert_ne!(recovery_hash(&code), recovery_hash(&new_recovery_code()));
    }
}
