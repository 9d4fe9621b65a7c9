//! Who must sign in through single sign-on: the people of an organization that requires it.
//! Read here (by SQL on the organization tables) so that every sign-in path of this module can
//! ask without depending on `orgs`, which builds on it.
use authio_db::{ScopedTx, Type};
use uuid::Uuid;

use crate::CoreError;

/// Whether this person must sign in through single sign-on: an active member of an
/// organization that requires it, or an address at a verified domain of one. Read in the
/// project's scope at its home (`tx`).
pub(crate) async fn sso_required_for(tx: &ScopedTx, user: Option<Uuid>, email: &str) -> Result<bool, CoreError> {
    let domain = email.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default();
    let row = tx
        .query_one(
            "SELECT EXISTS (
                 SELECT 1 FROM organizations o
                  WHERE o.sso_required
                    AND (EXISTS (SELECT 1 FROM memberships m
                                  WHERE m.organization_id = o.id AND m.user_id = $1 AND m.status = 'active')
                         OR EXISTS (SELECT 1 FROM organization_domains d
                                     WHERE d.organization_id = o.id AND d.domain = $2 AND d.verified_at IS NOT NULL)))",
            &[(&user, Type::UUID), (&domain, Type::TEXT)],
        )
        .await?;
    Ok(row.try_get(0)?)
}
