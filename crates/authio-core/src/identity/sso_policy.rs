//! Who must sign in through single sign-on: the people of an organization that requires it.
//! Read here (by SQL on the organization tables) so that every sign-in path of this module can
//! ask without depending on `orgs`, which builds on it.
use authio_db::{ScopedTx, Type};
use uuid::Uuid;

use crate::CoreError;

/// The SQL condition "this person must sign in through single sign-on": `user` and `domain`
/// are SQL expressions for the user's id (or NULL) and the address's domain (lower case).
/// Organizations that require it are found by a partial index.
pub(crate) fn sso_required_sql(user: &str, domain: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM organizations o
                  WHERE o.sso_required
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
    let row = tx
        .query_one(
            &format!("SELECT {}", sso_required_sql("$1", "$2")),
            &[(&user, Type::UUID), (&domain_of(email), Type::TEXT)],
        )
        .await?;
    Ok(row.try_get(0)?)
}
