//! A project's token and session settings, changed through the management API. Projects are
//! control-plane rows on the shared database; `authio_app` may update only these columns.
use authio_db::{Router, Row, RowExt, Type};
use serde::{Deserialize, Serialize};

use crate::authz::{Authorized, Permission};
use crate::crypto::keys::Alg;
use crate::types::{project_of, ValidationError};
use crate::CoreError;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ProjectSettings {
    pub signing_alg: String,
    pub access_token_ttl_secs: i32,
    pub session_idle_timeout_secs: i32,
    pub session_absolute_timeout_secs: i32,
    pub refresh_grace_secs: i32,
}

/// A partial change; absent fields stay as they are.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    pub signing_alg: Option<String>,
    pub access_token_ttl_secs: Option<i32>,
    pub session_idle_timeout_secs: Option<i32>,
    pub session_absolute_timeout_secs: Option<i32>,
    pub refresh_grace_secs: Option<i32>,
}

const COLS: &str = "signing_alg, access_token_ttl_secs, session_idle_timeout_secs, session_absolute_timeout_secs, \
     refresh_grace_secs";

/// A row of [`COLS`].
fn from_row(r: &Row) -> Result<ProjectSettings, CoreError> {
    Ok(ProjectSettings {
        signing_alg: r.col("signing_alg")?,
        access_token_ttl_secs: r.col("access_token_ttl_secs")?,
        session_idle_timeout_secs: r.col("session_idle_timeout_secs")?,
        session_absolute_timeout_secs: r.col("session_absolute_timeout_secs")?,
        refresh_grace_secs: r.col("refresh_grace_secs")?,
    })
}

fn check(v: Option<i32>, lo: i32, hi: i32, what: &'static str) -> Result<(), ValidationError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) => Err(ValidationError::Field(what)),
        _ => Ok(()),
    }
}

impl SettingsPatch {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(a) = &self.signing_alg {
            Alg::parse(a).ok_or(ValidationError::Field("signing_alg: EdDSA, ES256 or RS256"))?;
        }
        check(self.access_token_ttl_secs, 60, 86400, "access_token_ttl_secs: 60 to 86400")?;
        check(self.session_idle_timeout_secs, 300, 31_536_000, "session_idle_timeout_secs: 300 to 31536000")?;
        check(self.session_absolute_timeout_secs, 300, 31_536_000, "session_absolute_timeout_secs: 300 to 31536000")?;
        check(self.refresh_grace_secs, 0, 120, "refresh_grace_secs: 0 to 120")?;
        Ok(())
    }
}

#[tracing::instrument(level = "debug", name = "project::settings", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn settings(router: &Router, auth: &Authorized) -> Result<ProjectSettings, CoreError> {
    let scope = auth.require(Permission::ProjectRead)?;
    let project = project_of(scope)?;
    let tx = router.begin_pinned(scope).await?;
    let row = tx
        .query_opt(&format!("SELECT {COLS} FROM projects WHERE id = $1"), &[(&project, Type::UUID)])
        .await?
        .ok_or(CoreError::NotFound(crate::types::Entity::Project))?;
    tx.commit().await?;
    from_row(&row)
}

/// Apply a change. A new `signing_alg` applies to the next key made (see `authio keys rotate`).
/// Nodes see the change within their profile cache time.
#[tracing::instrument(level = "debug", name = "project::update_settings", skip_all, fields(tenant = %auth.tenant_id(), project = ?auth.project_id()))]
pub async fn update_settings(
    router: &Router,
    clock: &dyn crate::Clock,
    auth: &Authorized,
    patch: &SettingsPatch,
    client: &crate::types::ClientInfo,
) -> Result<ProjectSettings, CoreError> {
    let scope = auth.require(Permission::ProjectConfigure)?;
    let actor = auth.actor();
    patch.validate()?;
    let project = project_of(scope)?;
    let tx = router.begin_pinned(scope).await?;
    let row = tx
        .query_opt(
            &format!(
                "UPDATE projects SET signing_alg = coalesce($2, signing_alg),
                        access_token_ttl_secs = coalesce($3, access_token_ttl_secs),
                        session_idle_timeout_secs = coalesce($4, session_idle_timeout_secs),
                        session_absolute_timeout_secs = coalesce($5, session_absolute_timeout_secs),
                        refresh_grace_secs = coalesce($6, refresh_grace_secs)
                 WHERE id = $1 RETURNING {COLS}"
            ),
            &[
                (&project, Type::UUID),
                (&patch.signing_alg, Type::TEXT),
                (&patch.access_token_ttl_secs, Type::INT4),
                (&patch.session_idle_timeout_secs, Type::INT4),
                (&patch.session_absolute_timeout_secs, Type::INT4),
                (&patch.refresh_grace_secs, Type::INT4),
            ],
        )
        .await?
        .ok_or(CoreError::NotFound(crate::types::Entity::Project))?;
    let event = crate::audit::Event {
        action: crate::audit::AuditAction::ProjectSettingsChanged,
        actor: actor.clone(),
        target: Some(("project", project.to_string())),
        client,
        metadata: serde_json::json!({
            "signing_alg": patch.signing_alg,
            "access_token_ttl_secs": patch.access_token_ttl_secs,
            "session_idle_timeout_secs": patch.session_idle_timeout_secs,
            "session_absolute_timeout_secs": patch.session_absolute_timeout_secs,
            "refresh_grace_secs": patch.refresh_grace_secs,
        }),
    };
    crate::audit::record_pinned(&tx, scope, event, clock.now()).await?;
    tx.commit().await?;
    from_row(&row)
}
