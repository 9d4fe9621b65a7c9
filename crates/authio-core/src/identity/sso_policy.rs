//! Who must sign in through single sign-on: the people of an organization that requires it.
//! Read here (by SQL on the organization tables) so that every sign-in path of this module can
//! ask without depending on `orgs`, which builds on it.
use authio_db::{ScopedTx, Type};
use uuid::Uuid;

use crate::CoreError;

/// The SQL condition "this person must sign in through single sign-on": `user` and `domain`
/// are SQL expressions for the user's id (or NULL) and the address's domain (lower case);
/// `except` one for an organization not to count (or NULL). Organizations that require it
/// are found by a partial index.
pub(crate) fn sso_required_sql(user: &str, domain: &str, except: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM organizations o
                  WHERE o.sso_required AND o.id IS DISTINCT FROM {except}
                    AND (EXISTS (SELECT 1 FROM memberships m
                                  WHERE m.organization_id = o.id AND m.user_id = {user} AND m.status = 'active')
                         OR EXISTS (SELECT 1 FROM organization_domains d
                                     WHERE d.organization_id = o.id AND d.domain = {domain}
                                       AND d.verified_at IS NOT NULL)))"
    )
}

/// The domain of an address, as organizations' domains are kept.
pub(crate) fn domain_of(email: &str) -> String {
    email.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default()
}

/// Whether this person must sign in through single sign-on: an active member of an
/// organization that requires it, or an address at a verified domain of one. Read in the
/// project's scope at its home (`tx`).
pub(crate) async fn sso_required_for(tx: &ScopedTx, user: Option<Uuid>, email: &str) -> Result<bool, CoreError> {
    sso_required_except(tx, user, email, None).await
}

/// [`sso_required_for`], not counting organization `except` (a sign-in through its own
/// provider satisfies it, but not another organization's requirement).
pub(crate) async fn sso_required_except(
    tx: &ScopedTx,
    user: Option<Uuid>,
    email: &str,
    except: Option<Uuid>,
) -> Result<bool, CoreError> {
    let row = tx
        .query_one(
            &format!("SELECT {}", sso_required_sql("$1", "$2", "$3::uuid")),
            &[(&user, Type::UUID), (&domain_of(email), Type::TEXT), (&except, Type::UUID)],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// A new account with a password is not for an address whose organization requires single
/// sign-on (its person signs in through the organization's provider, which creates it).
pub(crate) async fn refuse_password_account(tx: &ScopedTx, email: &str) -> Result<(), CoreError> {
    if sso_required_for(tx, None, email).await? {
        return Err(CoreError::SsoRequired);
    }
    Ok(())
}
