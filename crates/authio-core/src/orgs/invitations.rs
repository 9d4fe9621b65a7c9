//! Invitations: an email address asked to join an organization with a role. The token goes
//! out by email through the outbox and is kept only as its SHA-256 hash; it works once and
//! until it expires, and a resend replaces it. The invitee accepts on the hosted page while
//! signed in with the invited address (signing up first if need be: a pending invitation
//! admits its address whatever the project's sign-up policy); accepting proves the address
//! (the token came to it) and makes an active membership.
//!
//! The invitation is written at the tenant's home and its email to the shared outbox: two
//! databases, so the invitation commits first and the email second. If the email cannot be
//! queued the invitation is revoked again and the call fails; a crash between the two leaves
//! a pending invitation whose email was never sent, which `resend` repairs.
use std::net::IpAddr;

use authio_db::{Row, RowExt, Scope, ScopedTx, Type};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{customer_scope, role_id, role_slug_ok};
use crate::authz::{Authorized, Permission};
use crate::crypto::opaque::{hash as token_hash, new_token};
use crate::error::InvitationState;
use crate::identity::auth::Identity;
use crate::project::mail::{self, MailKind};
use crate::types::{project_of, ClientInfo, Email, Entity, ValidationError};
use crate::{audit, CoreError};

/// How long an invitation works unless the inviter says otherwise, and at most.
pub const DEFAULT_DAYS: i64 = 7;
pub const MAX_DAYS: i64 = 30;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Invitation {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub email: String,
    /// The role's slug.
    pub role: String,
    /// `pending`, `accepted`, `revoked` or `expired`.
    pub status: String,
    pub inviter: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub sent_count: i32,
    pub last_sent_at: DateTime<Utc>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub accepted_by: Option<Uuid>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const INVITATION_SELECT: &str = "SELECT i.id, i.organization_id, i.email, r.slug AS role, i.inviter, i.created_at,
            i.expires_at, i.sent_count, i.last_sent_at, i.accepted_at, i.accepted_by, i.revoked_at
     FROM invitations i JOIN roles r ON r.tenant_id = i.tenant_id AND r.id = i.role_id";

impl Invitation {
    fn from_row(r: &Row, now: DateTime<Utc>) -> Result<Self, CoreError> {
        let accepted_at: Option<DateTime<Utc>> = r.col("accepted_at")?;
        let revoked_at: Option<DateTime<Utc>> = r.col("revoked_at")?;
        let expires_at: DateTime<Utc> = r.col("expires_at")?;
        let status = match (accepted_at, revoked_at) {
            (Some(_), _) => "accepted",
            (_, Some(_)) => "revoked",
            _ if expires_at <= now => "expired",
            _ => "pending",
        };
        Ok(Invitation {
            id: r.col("id")?,
            organization_id: r.col("organization_id")?,
            email: r.col("email")?,
            role: r.col("role")?,
            status: status.to_owned(),
            inviter: r.col("inviter")?,
            created_at: r.col("created_at")?,
            expires_at,
            sent_count: r.col("sent_count")?,
            last_sent_at: r.col("last_sent_at")?,
            accepted_at,
            accepted_by: r.col("accepted_by")?,
            revoked_at,
        })
    }

    fn usable(&self) -> Result<(), CoreError> {
        match self.status.as_str() {
            "accepted" => Err(CoreError::InvitationUnusable(InvitationState::Used)),
            "revoked" => Err(CoreError::InvitationUnusable(InvitationState::Revoked)),
            "expired" => Err(CoreError::InvitationUnusable(InvitationState::Expired)),
            _ => Ok(()),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewInvitation {
    pub email: String,
    /// A role slug (project-wide or this organization's own); absent, the default role.
    pub role: Option<String>,
    /// 1-30; 7 when absent.
    pub expires_in_days: Option<i64>,
}

/// What the hosted page shows before the invitee accepts.
#[derive(Clone, Debug)]
pub struct InvitationView {
    pub organization_name: String,
    pub email: String,
    /// Whether the invited address has an account (else the page offers to create one).
    /// The token holder is the address's owner: this tells nobody else anything.
    pub has_account: bool,
}

/// Who accepts: a signed-in user, or a new account made with this password hash.
enum Acceptor {
    SignedIn(Uuid),
    NewAccount(String),
}

fn bad(field: &'static str) -> CoreError {
    CoreError::Invalid(ValidationError::Field(field))
}

/// The link an invitation's email carries.
pub fn accept_link(public_url: &str, project: Uuid, token: &str) -> String {
    crate::identity::signin::with_query(
        &format!("{}/p/{project}/invitations/accept", public_url.trim_end_matches('/')),
        &[("token", token)],
    )
}

/// A presented token's hash, or `None` for one that cannot be an invitation token (no
/// database round trip for those).
fn presented_hash(token: &str) -> Option<Vec<u8>> {
    (token.starts_with("inv_") && token.len() <= 128 && token.is_ascii()).then(|| token_hash(token).to_vec())
}

async fn org_name(tx: &ScopedTx, org: Uuid) -> Result<String, CoreError> {
    let row = tx
        .query_opt("SELECT name FROM organizations WHERE id = $1 FOR SHARE", &[(&org, Type::UUID)])
        .await?
        .ok_or(CoreError::NotFound(Entity::Organization))?;
    Ok(row.col("name")?)
}

fn inviter_name(auth: &Authorized) -> String {
    let a = auth.actor();
    let who = a.name.clone().or_else(|| a.id.clone()).unwrap_or_default();
    format!("{}:{who}", a.kind.as_str()).chars().take(300).collect()
}

impl Identity {
    /// Invite `new.email` to `org`: the invitation, then its email. Refused when the address
    /// is an active member already, or has a pending invitation there (409).
    #[tracing::instrument(level = "debug", name = "invitations::invite", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
    pub async fn invite(
        &self,
        auth: &Authorized,
        org: Uuid,
        new: &NewInvitation,
        client: &ClientInfo,
    ) -> Result<(Invitation, String), CoreError> {
        let scope = *customer_scope(auth, Permission::UsersManage)?;
        let project = project_of(&scope)?;
        let email = Email::parse(&new.email)?;
        if new.role.as_deref().is_some_and(|r| !role_slug_ok(r)) {
            return Err(bad("role (a role slug)"));
        }
        let days = new.expires_in_days.unwrap_or(DEFAULT_DAYS);
        if !(1..=MAX_DAYS).contains(&days) {
            return Err(bad("expires_in_days (1-30)"));
        }
        let now = crate::clock::now_as_stored(self.inner.clock.as_ref());
        let expires = now + Duration::days(days);
        let (token, hash) = new_token("inv_");
        let id = Uuid::now_v7();
        let tx = self.inner.router.begin(&scope).await?;
        let org_name = org_name(&tx, org).await?;
        let role = role_id(&tx, new.role.as_deref(), Some(org)).await?;
        let member = tx
            .query_opt(
                "SELECT 1 FROM memberships m JOIN users u ON u.tenant_id = m.tenant_id AND u.id = m.user_id
                 WHERE m.organization_id = $1 AND u.email = $2 AND m.status = 'active'",
                &[(&org, Type::UUID), (&email.as_str(), Type::TEXT)],
            )
            .await?;
        if member.is_some() {
            return Err(CoreError::Conflict("this address is an active member of the organization already".into()));
        }
        // A pending invitation that ran out makes way for the new one.
        tx.query(
            "UPDATE invitations SET revoked_at = $3
             WHERE organization_id = $1 AND email = $2 AND accepted_at IS NULL AND revoked_at IS NULL
               AND expires_at <= $3",
            &[(&org, Type::UUID), (&email.as_str(), Type::TEXT), (&now, Type::TIMESTAMPTZ)],
        )
        .await?;
        let inviter = inviter_name(auth);
        tx.query(
            "INSERT INTO invitations (tenant_id, project_id, organization_id, id, email, role_id, token_hash, inviter,
                                      created_at, expires_at, last_sent_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $9)",
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&org, Type::UUID),
                (&id, Type::UUID),
                (&email.as_str(), Type::TEXT),
                (&role, Type::UUID),
                (&hash.to_vec(), Type::BYTEA),
                (&inviter, Type::TEXT),
                (&now, Type::TIMESTAMPTZ),
                (&expires, Type::TIMESTAMPTZ),
            ],
        )
        .await
        .map_err(|e| match e.sqlstate() {
            Some("23505") => CoreError::Conflict("this address has a pending invitation to the organization".into()),
            _ => e.into(),
        })?;
        let invitation = self.invitation_in(&tx, id, now).await?;
        let event = audit::Event {
            action: audit::AuditAction::InvitationSent,
            actor: auth.actor().clone(),
            target: Some(("invitation", id.to_string())),
            client,
            metadata: serde_json::json!({"organization_id": org, "email": email.as_str(), "role": invitation.role,
                                         "expires_at": expires}),
        };
        audit::record_and_commit(tx, &scope, event, now).await?;
        if let Err(e) = self.send_invitation(&scope, &org_name, email.as_str(), &token, days, now).await {
            // Not sent: the invitation is withdrawn rather than left pending without its email,
            // and the log says why.
            let tx = self.inner.router.begin(&scope).await?;
            tx.query(
                "UPDATE invitations SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[(&id, Type::UUID), (&now, Type::TIMESTAMPTZ)],
            )
            .await?;
            let event = audit::Event {
                action: audit::AuditAction::InvitationRevoked,
                actor: audit::Actor { kind: audit::ActorKind::System, id: None, name: None },
                target: Some(("invitation", id.to_string())),
                client,
                metadata: serde_json::json!({"organization_id": org, "email": email.as_str(),
                                             "reason": "email_not_queued"}),
            };
            audit::record_and_commit(tx, &scope, event, now).await?;
            return Err(e);
        }
        Ok((invitation, token))
    }

    async fn invitation_in(&self, tx: &ScopedTx, id: Uuid, now: DateTime<Utc>) -> Result<Invitation, CoreError> {
        let row = tx
            .query_opt(&format!("{INVITATION_SELECT} WHERE i.id = $1"), &[(&id, Type::UUID)])
            .await?
            .ok_or(CoreError::NotFound(Entity::Invitation))?;
        Invitation::from_row(&row, now)
    }

    async fn send_invitation(
        &self,
        scope: &Scope,
        org_name: &str,
        to: &str,
        token: &str,
        days: i64,
        now: DateTime<Utc>,
    ) -> Result<(), CoreError> {
        let project = project_of(scope)?;
        let presentation = self.presentation(project).await?;
        let link = accept_link(&self.inner.settings.public_url, project, token);
        let values = mail::Values {
            project: presentation.title(),
            link: Some(&link),
            code: None,
            minutes: days * 1440,
            organization: Some(org_name),
        };
        let tx = self.inner.router.begin_pinned(scope).await?;
        mail::enqueue(
            &tx,
            scope,
            &self.inner.master_key,
            MailKind::Invitation,
            to,
            presentation.sender(),
            &values,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Send a pending invitation again with a new token (the old one stops working) and a new
    /// expiry of `expires_in_days` (7 when absent).
    pub async fn resend_invitation(
        &self,
        auth: &Authorized,
        org: Uuid,
        id: Uuid,
        expires_in_days: Option<i64>,
        client: &ClientInfo,
    ) -> Result<(Invitation, String), CoreError> {
        let scope = *customer_scope(auth, Permission::UsersManage)?;
        let days = expires_in_days.unwrap_or(DEFAULT_DAYS);
        if !(1..=MAX_DAYS).contains(&days) {
            return Err(bad("expires_in_days (1-30)"));
        }
        let now = crate::clock::now_as_stored(self.inner.clock.as_ref());
        let (token, hash) = new_token("inv_");
        let tx = self.inner.router.begin(&scope).await?;
        let org_name = org_name(&tx, org).await?;
        let row = tx
            .query_opt(
                "SELECT accepted_at, revoked_at FROM invitations WHERE id = $1 AND organization_id = $2 FOR UPDATE",
                &[(&id, Type::UUID), (&org, Type::UUID)],
            )
            .await?
            .ok_or(CoreError::NotFound(Entity::Invitation))?;
        if row.col::<Option<DateTime<Utc>>>("accepted_at")?.is_some() {
            return Err(CoreError::InvitationUnusable(InvitationState::Used));
        }
        if row.col::<Option<DateTime<Utc>>>("revoked_at")?.is_some() {
            return Err(CoreError::InvitationUnusable(InvitationState::Revoked));
        }
        tx.query(
            "UPDATE invitations SET token_hash = $2, expires_at = $3, sent_count = sent_count + 1, last_sent_at = $4
             WHERE id = $1",
            &[
                (&id, Type::UUID),
                (&hash.to_vec(), Type::BYTEA),
                (&(now + Duration::days(days)), Type::TIMESTAMPTZ),
                (&now, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
        let invitation = self.invitation_in(&tx, id, now).await?;
        let event = audit::Event {
            action: audit::AuditAction::InvitationResent,
            actor: auth.actor().clone(),
            target: Some(("invitation", id.to_string())),
            client,
            metadata: serde_json::json!({"organization_id": org, "email": invitation.email,
                                         "expires_at": invitation.expires_at, "sent_count": invitation.sent_count}),
        };
        audit::record_and_commit(tx, &scope, event, now).await?;
        // A failure here leaves the new token unsent and the old one dead: resending again
        // repairs it, and the caller is told.
        self.send_invitation(&scope, &org_name, &invitation.email, &token, days, now).await?;
        Ok((invitation, token))
    }

    /// What the accept page shows for a token of `project` (nothing is used up).
    pub async fn invitation_for_token(
        &self,
        project: Uuid,
        token: &str,
        ip: Option<IpAddr>,
    ) -> Result<InvitationView, CoreError> {
        self.refuse_guesser(ip).await?;
        let result = async {
            let hash = presented_hash(token).ok_or(CoreError::NotFound(Entity::Invitation))?;
            let profile = self.profile(project).await?;
            let scope = crate::identity::auth::scope_of(&profile);
            let now = self.now();
            let tx = self.inner.router.begin(&scope).await?;
            let row = tx
                .query_opt(&format!("{INVITATION_SELECT} WHERE i.token_hash = $1"), &[(&hash, Type::BYTEA)])
                .await?
                .ok_or(CoreError::NotFound(Entity::Invitation))?;
            let inv = Invitation::from_row(&row, now)?;
            let name = org_name(&tx, inv.organization_id).await?;
            let has_account =
                tx.query_opt("SELECT 1 FROM users WHERE email = $1", &[(&inv.email, Type::TEXT)]).await?.is_some();
            tx.commit().await?;
            inv.usable()?;
            Ok(InvitationView { organization_name: name, email: inv.email, has_account })
        }
        .await;
        self.judge(ip, result).await
    }

    /// Accept an invitation as `user` (signed in; their address must be the invited one):
    /// the invitation is used up, the membership made (or re-activated, with the invited
    /// role), and the address counts as verified. Returns the organization.
    pub async fn accept_invitation(
        &self,
        project: Uuid,
        token: &str,
        user: Uuid,
        client: &ClientInfo,
        ip: Option<IpAddr>,
    ) -> Result<Uuid, CoreError> {
        self.refuse_guesser(ip).await?;
        let result = self.accept_unjudged(project, token, Acceptor::SignedIn(user), client).await;
        self.judge(ip, result).await.map(|(_, _, org)| org)
    }

    /// Accept an invitation by creating the invited address's account with a password (the
    /// token proves the address, so the project's sign-up policy does not apply): the account,
    /// its membership and the used invitation in one transaction. The caller signs it in.
    pub async fn accept_invitation_with_new_account(
        &self,
        project: Uuid,
        token: &str,
        password: &str,
        client: &ClientInfo,
        ip: Option<IpAddr>,
    ) -> Result<(Scope, crate::identity::signin::SignedInUser, Uuid), CoreError> {
        let password = crate::identity::passwords::NewPassword::parse(password)?;
        self.presentation(project).await?.require("password")?;
        self.refuse_guesser(ip).await?;
        let l = &self.inner.settings.limits;
        if let Some(ip) = ip {
            self.limit("signup:ip", &crate::throttle::ip_key(ip), l.signup_per_ip, l.signup_ip_window_secs).await?;
        }
        let hash = self.inner.passwords.hash(&password).await?;
        let result = self.accept_unjudged(project, token, Acceptor::NewAccount(hash), client).await;
        self.judge(ip, result).await
    }

    async fn accept_unjudged(
        &self,
        project: Uuid,
        token: &str,
        who: Acceptor,
        client: &ClientInfo,
    ) -> Result<(Scope, crate::identity::signin::SignedInUser, Uuid), CoreError> {
        let hash = presented_hash(token).ok_or(CoreError::NotFound(Entity::Invitation))?;
        let profile = self.profile(project).await?;
        let scope = crate::identity::auth::scope_of(&profile);
        let now = crate::clock::now_as_stored(self.inner.clock.as_ref());
        let tx = self.inner.router.begin(&scope).await?;
        let row = tx
            .query_opt(&format!("{INVITATION_SELECT} WHERE i.token_hash = $1 FOR UPDATE OF i"), &[(&hash, Type::BYTEA)])
            .await?
            .ok_or(CoreError::NotFound(Entity::Invitation))?;
        let inv = Invitation::from_row(&row, now)?;
        inv.usable()?;
        let (user, user_role, created) = match who {
            Acceptor::SignedIn(user) => {
                let u = tx
                    .query_opt(
                        "SELECT email, disabled, role FROM users WHERE id = $1 FOR UPDATE",
                        &[(&user, Type::UUID)],
                    )
                    .await?
                    .ok_or(CoreError::NotFound(Entity::User))?;
                if u.col::<bool>("disabled")? {
                    return Err(CoreError::Forbidden("this account is disabled"));
                }
                if u.col::<String>("email")? != inv.email {
                    return Err(CoreError::InvitationEmailMismatch);
                }
                (user, u.col::<Option<String>>("role")?, false)
            }
            Acceptor::NewAccount(password_hash) => {
                let email = Email::parse(&inv.email)?;
                // An organization that requires single sign-on has its invitees come through
                // its provider (then accept signed in), not with a password it would refuse.
                let required = tx
                    .query_opt(
                        "SELECT 1 FROM organizations WHERE id = $1 AND sso_required",
                        &[(&inv.organization_id, Type::UUID)],
                    )
                    .await?
                    .is_some();
                if required {
                    return Err(CoreError::SsoRequired);
                }
                let u = crate::identity::users::insert(&tx, &scope, &email, Some(&password_hash), now).await?;
                let event = audit::Event {
                    action: audit::AuditAction::UserSignedUp,
                    actor: audit::Actor::user(u.id, Some(email.as_str())),
                    target: Some(("user", u.id.to_string())),
                    client,
                    metadata: serde_json::json!({"method": "password", "hosted": true, "invitation_id": inv.id}),
                };
                let row = audit::EventRow::new(&scope, event, now)?;
                tx.query(audit::INSERT_SQL, &row.params()).await?;
                (u.id, None, true)
            }
        };
        let role = tx
            .query_one("SELECT role_id FROM invitations WHERE id = $1", &[(&inv.id, Type::UUID)])
            .await?
            .col::<Uuid>("role_id")?;
        // A member already (any status) becomes active with the invited role.
        tx.query(
            "INSERT INTO memberships (tenant_id, project_id, organization_id, user_id, role_id, status, created_at,
                                      updated_at)
             VALUES ($1, $2, $3, $4, $5, 'active', $6, $6)
             ON CONFLICT (tenant_id, organization_id, user_id)
             DO UPDATE SET role_id = excluded.role_id, status = 'active', updated_at = excluded.updated_at",
            &[
                (&scope.tenant_id, Type::UUID),
                (&project, Type::UUID),
                (&inv.organization_id, Type::UUID),
                (&user, Type::UUID),
                (&role, Type::UUID),
                (&now, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
        tx.query(
            "UPDATE invitations SET accepted_at = $2, accepted_by = $3 WHERE id = $1",
            &[(&inv.id, Type::UUID), (&now, Type::TIMESTAMPTZ), (&user, Type::UUID)],
        )
        .await?;
        // The token came to this address: it is proved.
        tx.query(
            "UPDATE users SET email_verified = true, updated_at = $2 WHERE id = $1 AND NOT email_verified",
            &[(&user, Type::UUID), (&now, Type::TIMESTAMPTZ)],
        )
        .await?;
        let added = audit::Event {
            action: audit::AuditAction::MembershipAdded,
            actor: audit::Actor::user(user, None),
            target: Some(("user", user.to_string())),
            client,
            metadata: serde_json::json!({"organization_id": inv.organization_id, "role": inv.role,
                                         "by": "invitation", "invitation_id": inv.id}),
        };
        let row = audit::EventRow::new(&scope, added, now)?;
        tx.query(audit::INSERT_SQL, &row.params()).await?;
        let event = audit::Event {
            action: audit::AuditAction::InvitationAccepted,
            actor: audit::Actor::user(user, None),
            target: Some(("invitation", inv.id.to_string())),
            client,
            metadata: serde_json::json!({"organization_id": inv.organization_id, "email": inv.email,
                                         "role": inv.role}),
        };
        audit::record_and_commit(tx, &scope, event, now).await?;
        let signed_in = crate::identity::signin::SignedInUser { user_id: user, role: user_role, created };
        Ok((scope, signed_in, inv.organization_id))
    }

    /// Whether `email` has a pending invitation in the project's scope: it may then sign up
    /// whatever the sign-up policy says (to accept it).
    pub(crate) async fn invited(&self, scope: &Scope, email: &Email) -> Result<bool, CoreError> {
        let rows = self
            .inner
            .router
            .read(
                scope,
                "SELECT 1 FROM invitations
                 WHERE email = $1 AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > $2 LIMIT 1",
                &[(&email.as_str(), Type::TEXT), (&self.now(), Type::TIMESTAMPTZ)],
            )
            .await?;
        Ok(!rows.is_empty())
    }
}

/// An organization's invitations, newest first.
pub async fn list_invitations(
    router: &authio_db::Router,
    clock: &dyn crate::Clock,
    auth: &Authorized,
    org: Uuid,
) -> Result<Vec<Invitation>, CoreError> {
    let scope = auth.require(Permission::UsersRead)?;
    project_of(scope)?;
    let now = clock.now();
    let tx = router.begin(scope).await?;
    tx.query_opt("SELECT 1 FROM organizations WHERE id = $1", &[(&org, Type::UUID)])
        .await?
        .ok_or(CoreError::NotFound(Entity::Organization))?;
    let rows = tx
        .query(
            &format!("{INVITATION_SELECT} WHERE i.organization_id = $1 ORDER BY i.id DESC LIMIT 500"),
            &[(&org, Type::UUID)],
        )
        .await?;
    tx.commit().await?;
    rows.iter().map(|r| Invitation::from_row(r, now)).collect()
}

/// Revoke a pending invitation: its link stops working. Revoking twice is not an error; an
/// accepted invitation cannot be revoked (410 `invitation_used`: remove the member instead).
pub async fn revoke_invitation(
    router: &authio_db::Router,
    clock: &dyn crate::Clock,
    auth: &Authorized,
    org: Uuid,
    id: Uuid,
    client: &ClientInfo,
) -> Result<Invitation, CoreError> {
    let scope = customer_scope(auth, Permission::UsersManage)?;
    project_of(scope)?;
    let now = crate::clock::now_as_stored(clock);
    let tx = router.begin(scope).await?;
    let row = tx
        .query_opt(
            &format!("{INVITATION_SELECT} WHERE i.id = $1 AND i.organization_id = $2 FOR UPDATE OF i"),
            &[(&id, Type::UUID), (&org, Type::UUID)],
        )
        .await?
        .ok_or(CoreError::NotFound(Entity::Invitation))?;
    let inv = Invitation::from_row(&row, now)?;
    if inv.accepted_at.is_some() {
        return Err(CoreError::InvitationUnusable(InvitationState::Used));
    }
    if inv.revoked_at.is_some() {
        tx.commit().await?;
        return Ok(inv);
    }
    tx.query("UPDATE invitations SET revoked_at = $2 WHERE id = $1", &[(&id, Type::UUID), (&now, Type::TIMESTAMPTZ)])
        .await?;
    let row = tx.query_one(&format!("{INVITATION_SELECT} WHERE i.id = $1"), &[(&id, Type::UUID)]).await?;
    let inv = Invitation::from_row(&row, now)?;
    let event = audit::Event {
        action: audit::AuditAction::InvitationRevoked,
        actor: auth.actor().clone(),
        target: Some(("invitation", id.to_string())),
        client,
        metadata: serde_json::json!({"organization_id": org, "email": inv.email}),
    };
    audit::record_and_commit(tx, scope, event, now).await?;
    Ok(inv)
}
