//! Customers' dashboard: a member's tenants and projects; per project its users (search, view,
//! disable, delete, sessions), credentials (M2M clients and API keys: created with the secret
//! shown once, revoked), redirect URIs, allowed origins and custom domains, sign-in methods
//! and branding, signing keys (rotate), webhook endpoints (secret shown once, delivery log,
//! replay, a notice for one disabled after failing), and the audit log (filters, export); and
//! billing, with
//! the Enterprise plan's "Request dedicated DB" switch.
//!
//! Every change goes through the same core functions as the management API, under the
//! project's scope (row-level security as always); members act as themselves in the audit log.
use authio_core::authz::{self, Authorized, Permission, Principal, Target};
use authio_core::identity::{m2m, sessions, users};
use authio_core::project::{api_keys, config as project_config};
use authio_core::tenancy::console::{DedicatedState, MemberRole, Membership};
use authio_core::tenancy::control::{Project, Tenant};
use authio_core::types::{DisplayName, DomainName, Plan, RedirectUri, WebOrigin};
use authio_core::CoreError;
use authio_db::{DbStrategy, RowExt, Scope, TenantKind};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Form;
use serde::Deserialize;
use uuid::Uuid;

use super::{check_csrf, console_of, core_error_page, error_page, memberships, ConsoleUser, Flash, SignedIn};
use super::{Block, Cell, Field, FormView, Live, LiveView, PageView, PlanView};
use crate::AppState;

pub fn routes() -> axum::Router<AppState> {
    let p = "/dashboard/{slug}/p/{pid}";
    axum::Router::new()
        .route("/dashboard", get(tenants))
        .route("/billing", get(billing_home))
        .route("/dashboard/{slug}", get(projects).post(create_project))
        .route("/dashboard/{slug}/billing", get(billing))
        .route("/dashboard/{slug}/billing/live", get(billing_live))
        .route("/dashboard/{slug}/billing/dedicated", post(toggle_dedicated))
        .route(p, get(project_home))
        .route(&format!("{p}/users"), get(users_page))
        .route(&format!("{p}/users/{{uid}}"), get(user_page))
        .route(&format!("{p}/users/{{uid}}/{{act}}"), post(user_action))
        .route(&format!("{p}/organizations"), get(organizations_page).post(create_organization))
        .route(&format!("{p}/organizations/{{oid}}"), get(organization_page))
        .route(&format!("{p}/organizations/{{oid}}/{{act}}"), post(organization_action))
        .route(&format!("{p}/webhooks"), get(webhooks_page).post(create_webhook))
        .route(&format!("{p}/webhooks/{{wid}}"), get(webhook_page))
        .route(&format!("{p}/webhooks/{{wid}}/{{act}}"), post(webhook_action))
        .route(&format!("{p}/credentials"), get(credentials))
        .route(&format!("{p}/credentials/{{kind}}"), post(create_credential))
        .route(&format!("{p}/credentials/{{kind}}/{{id}}/revoke"), post(revoke_credential))
        .route(&format!("{p}/urls"), get(urls))
        .route(&format!("{p}/urls/{{act}}"), post(url_action))
        .route(&format!("{p}/signin"), get(signin_page).post(signin_save))
        .route(&format!("{p}/keys"), get(keys_page))
        .route(&format!("{p}/keys/rotate"), post(rotate_keys))
        .route(&format!("{p}/audit"), get(audit_page))
        .route(&format!("{p}/audit/export"), get(audit_export))
}

/// A member acting in one of its tenants.
struct Member {
    user: ConsoleUser,
    tenant: Tenant,
    role: MemberRole,
    principal: Principal,
}

impl Member {
    /// The member's permission on `target` (a project of its tenant, or the tenant), as the
    /// one authorization seam decides it; refusals as pages.
    fn authorize(&self, permission: Permission, target: &Target) -> Result<Authorized, Box<Response>> {
        authz::authorize(&self.principal, permission, target).map_err(|e| self.refusal(e))
    }

    /// Another permission on the target `auth` was given for.
    fn also(&self, auth: &Authorized, permission: Permission) -> Result<Authorized, Box<Response>> {
        auth.also(&self.principal, permission).map_err(|e| self.refusal(e))
    }

    /// Whether the pages show their forms disabled: the seam's answer for a change to the
    /// tenant (the server refuses such posts all the same).
    fn read_only(&self) -> bool {
        let target = Target::Tenant { tenant_id: self.tenant.id, tenant_kind: TenantKind::Customer };
        authz::authorize(&self.principal, Permission::TenantManage, &target).is_err()
    }

    /// A permission on the member's tenant itself.
    fn on_tenant(&self, permission: Permission) -> Result<Authorized, Box<Response>> {
        let target = Target::Tenant { tenant_id: self.tenant.id, tenant_kind: TenantKind::Customer };
        self.authorize(permission, &target)
    }

    fn refusal(&self, e: CoreError) -> Box<Response> {
        match e {
            CoreError::Forbidden(_) => Box::new(error_page(
                StatusCode::FORBIDDEN,
                "Viewers can look but not change anything. Ask an owner or admin of this tenant.",
                Some(&self.user),
            )),
            e => Box::new(core_error_page(e, Some(&self.user))),
        }
    }

    fn page(&self, title: impl Into<String>) -> PageView {
        PageView::new(title, Some(&self.user)).at("/dashboard")
    }
}

/// The member behind `slug`: the same 404 for a tenant that does not exist and one the user
/// is not a member of (tenants are not enumerable from the dashboard).
async fn member(state: &AppState, user: ConsoleUser, slug: &str) -> Result<Member, Box<Response>> {
    let all = memberships(state, &user).await?;
    match all.into_iter().find(|m| m.tenant.slug == slug) {
        Some(Membership { tenant, role }) => {
            let principal =
                Principal::Member { tenant_id: tenant.id, user_id: user.id, email: user.email.clone(), role };
            let m = Member { user, tenant, role, principal };
            // Every dashboard page looks at the tenant first.
            m.on_tenant(Permission::TenantRead)?;
            Ok(m)
        }
        None => Err(Box::new(error_page(StatusCode::NOT_FOUND, "No such tenant.", Some(&user)))),
    }
}

/// A project of the member's tenant, as an authorization target.
/// Read on the shared database as the app role, under the tenant's scope: row-level security
/// hides any other tenant's project, so an id from elsewhere is simply not found.
async fn project(state: &AppState, m: &Member, pid: &str) -> Result<(Project, Target), Box<Response>> {
    let not_found = || Box::new(error_page(StatusCode::NOT_FOUND, "No such project.", Some(&m.user)));
    let pid = Uuid::parse_str(pid).map_err(|_| not_found())?;
    let scope = Scope::project(m.tenant.id, pid, TenantKind::Customer);
    let read = async {
        let tx = state.router.begin_pinned(&scope).await?;
        let row =
            tx.query_opt("SELECT slug, name FROM projects WHERE id = $1", &[(&pid, authio_db::Type::UUID)]).await?;
        let names = match row {
            Some(r) => Some((r.col("slug")?, r.col("name")?)),
            None => None,
        };
        tx.commit().await?;
        Ok::<_, authio_db::DbError>(names)
    };
    match read.await {
        Ok(Some((slug, name))) => Ok((
            Project { id: pid, tenant_id: m.tenant.id, slug, name },
            Target::Project { tenant_id: m.tenant.id, project_id: pid, tenant_kind: TenantKind::Customer },
        )),
        Ok(None) => Err(not_found()),
        Err(e) => Err(Box::new(core_error_page(e.into(), Some(&m.user)))),
    }
}

/// The project's pages, for its sub-navigation.
fn project_page(m: &Member, p: &Project, title: &str, current: &str) -> PageView {
    let base = format!("/dashboard/{}/p/{}", m.tenant.slug, p.id);
    let items = vec![
        (format!("{base}/users"), "Users"),
        (format!("{base}/organizations"), "Organizations"),
        (format!("{base}/webhooks"), "Webhooks"),
        (format!("{base}/credentials"), "M2M clients & API keys"),
        (format!("{base}/urls"), "Redirect URIs, origins & domains"),
        (format!("{base}/signin"), "Sign-in & branding"),
        (format!("{base}/keys"), "Signing keys"),
        (format!("{base}/audit"), "Audit log"),
    ];
    let mut page = m.page(format!("{title} · {}", p.name)).subnav("Project", items, &format!("{base}/{current}"));
    if m.read_only() {
        page = page.block(Block::notice("info", "You are a viewer of this tenant: you can look, not change."));
    }
    page
}

fn base(m: &Member, p: &Project) -> String {
    format!("/dashboard/{}/p/{}", m.tenant.slug, p.id)
}

/// What `?done=` says on the dashboard's pages.
const DONE: &[(&str, &str)] = &[
    ("disabled", "User disabled; their sessions have ended."),
    ("enabled", "User enabled."),
    ("deleted", "User deleted."),
    ("revoked", "Revoked."),
    ("saved", "Saved."),
    ("removed", "Removed."),
    ("verified", "Domain verified."),
    ("rotated", "Keys rotated: the next key is now current, and a new next key is published."),
    ("requested", "Request filed. An operator will review it; this page shows its progress."),
    ("withdrawn", "Request withdrawn."),
    ("invited", "Invitation sent."),
    ("resent", "Invitation sent again with a new link."),
    ("replaying", "Replay queued: the delivery log shows it once sent."),
    ("deleted-endpoint", "Endpoint deleted."),
];

fn flash(page: PageView, f: &Flash) -> PageView {
    f.onto(page, DONE)
}

fn client_info(headers: &axum::http::HeaderMap) -> authio_core::types::ClientInfo {
    crate::routes::auth::client_info(headers, None)
}

async fn tenants(State(state): State<AppState>, SignedIn(user): SignedIn) -> Response {
    let all = page_try!(memberships(&state, &user).await);
    if let [only] = all.as_slice() {
        return Redirect::to(&format!("/dashboard/{}", only.tenant.slug)).into_response();
    }
    PageView::new("Your tenants", Some(&user))
        .at("/dashboard")
        .block(Block::table(
            "Tenants you are a member of",
            vec!["Tenant", "Plan", "Your role"],
            all.iter()
                .map(|m| {
                    vec![
                        Cell::Link(format!("/dashboard/{}", m.tenant.slug), m.tenant.name.clone()),
                        Cell::Text(m.tenant.plan.as_str().to_owned()),
                        Cell::Text(m.role.as_str().into()),
                    ]
                })
                .collect(),
            "You are not a member of any tenant yet.",
        ))
        .ok()
}

async fn projects(State(state): State<AppState>, SignedIn(user): SignedIn, Path(slug): Path<String>) -> Response {
    let m = page_try!(member(&state, user, &slug).await);
    let console = page_try!(console_of(&state));
    let all = core_try!(console.control.projects(m.tenant.id).await, &m.user);
    m.page(m.tenant.name.clone())
        .block(Block::Facts(vec![
            ("Plan".into(), m.tenant.plan.as_str().to_owned()),
            ("Database".into(), m.tenant.db_strategy.as_str().to_owned()),
            ("Your role".into(), m.role.as_str().into()),
        ]))
        .block(Block::table(
            "Projects",
            vec!["Project", "Slug", "Issuer"],
            all.iter()
                .map(|p| {
                    vec![
                        Cell::Link(format!("/dashboard/{}/p/{}/users", slug, p.id), p.name.clone()),
                        Cell::Text(p.slug.clone()),
                        Cell::Code(state.identity.issuer(p.id)),
                    ]
                })
                .collect(),
            "No projects yet.",
        ))
        .block(Block::Form(
            FormView::post(format!("/dashboard/{slug}"), "Create project")
                .field(Field::text("text", "name", "Name", "").required())
                .field(Field::text("text", "slug", "Slug", "").required().placeholder("staging"))
                .disabled_if(m.read_only()),
        ))
        .block(Block::Para(format!("Plan and dedicated database: see /dashboard/{slug}/billing.")))
        .ok()
}

#[derive(Deserialize)]
struct ProjectForm {
    csrf: Option<String>,
    name: String,
    slug: String,
}

/// A new project in the member's tenant (its own issuer, keys, users and settings).
async fn create_project(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    Path(slug): Path<String>,
    Form(f): Form<ProjectForm>,
) -> Response {
    page_try!(check_csrf(&user, f.csrf.as_deref()));
    let m = page_try!(member(&state, user, &slug).await);
    let auth = page_try!(m.on_tenant(Permission::TenantManage));
    let console = page_try!(console_of(&state));
    let parsed = authio_core::types::Slug::parse(f.slug.trim())
        .and_then(|s| DisplayName::parse(&f.name).map(|n| (s, n)))
        .map_err(CoreError::from);
    let created = match parsed {
        Ok((s, n)) => console.control.create_project_by(m.tenant.id, &s, &n, auth.actor().clone()).await,
        Err(e) => Err(e),
    };
    let p = core_try!(created, &m.user);
    Redirect::to(&format!("/dashboard/{slug}/p/{}/users", p.id)).into_response()
}

async fn project_home(Path((slug, pid)): Path<(String, String)>) -> Response {
    Redirect::to(&format!("/dashboard/{slug}/p/{pid}/users")).into_response()
}

#[derive(Deserialize)]
struct UsersQuery {
    q: Option<String>,
    done: Option<String>,
}

async fn users_page(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    Path((slug, pid)): Path<(String, String)>,
    Query(q): Query<UsersQuery>,
) -> Response {
    let m = page_try!(member(&state, user, &slug).await);
    let (p, target) = page_try!(project(&state, &m, &pid).await);
    let auth = page_try!(m.authorize(Permission::UsersRead, &target));
    let query = q.q.unwrap_or_default();
    let found = if query.trim().is_empty() {
        users::list(&state.router, &auth, 100, None).await
    } else {
        users::search(&state.router, &auth, query.trim(), 100).await
    };
    let found = core_try!(found, &m.user);
    let b = base(&m, &p);
    let page = flash(project_page(&m, &p, "Users", "users"), &Flash { done: q.done });
    page.block(Block::Form(FormView::get(format!("{b}/users"), "Search").field(Field::text(
        "search",
        "q",
        "Email contains",
        &query,
    ))))
    .block(Block::table(
        if query.is_empty() { "Users (first 100)".to_owned() } else { format!("Users matching \"{query}\"") },
        vec!["Email", "Verified", "Status", "Created"],
        found
            .iter()
            .map(|u| {
                vec![
                    Cell::Link(format!("{b}/users/{}", u.id), u.email.clone()),
                    Cell::Text(if u.email_verified { "yes" } else { "no" }.into()),
                    if u.disabled { Cell::Badge("bad", "disabled".into()) } else { Cell::Badge("ok", "active".into()) },
                    Cell::Text(u.created_at.format("%Y-%m-%d").to_string()),
                ]
            })
            .collect(),
        "No users.",
    ))
    .ok()
}

async fn user_page(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    Path((slug, pid, uid)): Path<(String, String, Uuid)>,
    Query(f): Query<Flash>,
) -> Response {
    let m = page_try!(member(&state, user, &slug).await);
    let (p, target) = page_try!(project(&state, &m, &pid).await);
    let auth = page_try!(m.authorize(Permission::UsersRead, &target));
    let (u, list) = core_try!(
        tokio::try_join!(users::get(&state.router, &auth, uid), sessions::list_for_user(&state.router, &auth, uid)),
        &m.user
    );
    let b = format!("{}/users/{uid}", base(&m, &p));
    let read_only = m.read_only();
    let may_impersonate = m.authorize(Permission::UsersImpersonate, &target).is_ok();
    let toggle = if u.disabled { ("enable", "Enable user", false) } else { ("disable", "Disable user", true) };
    let now = state.clock.now();
    flash(project_page(&m, &p, &u.email, "users"), &f)
        .block(Block::Facts(vec![
            ("Email".into(), u.email.clone()),
            ("Verified".into(), if u.email_verified { "yes" } else { "no" }.into()),
            ("Status".into(), if u.disabled { "disabled" } else { "active" }.into()),
            ("Created".into(), u.created_at.format("%Y-%m-%d %H:%M UTC").to_string()),
            ("Id".into(), u.id.to_string()),
        ]))
        .block(Block::Form(FormView::button(format!("{b}/{}", toggle.0), toggle.1, toggle.2).disabled_if(read_only)))
        .block(Block::Form(FormView::button(format!("{b}/delete"), "Delete user", true).disabled_if(read_only)))
        .block(Block::Form(
            FormView::post(format!("{b}/impersonate"), "Impersonate")
                .field(Field::text("text", "reason", "Reason for impersonating (kept in the audit log)", "").required())
                .field(Field::text("text", "minutes", "Minutes (1-60)", "15"))
                .disabled_if(!may_impersonate),
        ))
        .block(Block::table(
            "Sessions",
            vec!["Started", "Last active", "From", "State", ""],
            list.iter()
                .map(|s| {
                    let live = s.revoked_at.is_none() && s.absolute_expires_at > now && s.idle_expires_at > now;
                    vec![
                        Cell::Text(s.created_at.format("%Y-%m-%d %H:%M").to_string()),
                        Cell::Text(s.last_active_at.format("%Y-%m-%d %H:%M").to_string()),
                        Cell::Text(format!(
                            "{} {}",
                            s.ip.clone().unwrap_or_default(),
                            s.user_agent.clone().unwrap_or_default()
                        )),
                        match (&s.impersonator, live) {
                            (Some(who), true) => Cell::Badge("warn", format!("live, impersonated by {who}")),
                            (Some(who), false) => Cell::Badge("", format!("ended, impersonated by {who}")),
                            (None, true) => Cell::Badge("ok", "live".into()),
                            (None, false) => Cell::Badge("", "ended".into()),
                        },
                        if live {
                            Cell::Action(
                                FormView::button(format!("{b}/revoke"), "Revoke", true)
                                    .field(Field::hidden("session", &s.id.to_string()))
                                    .disabled_if(read_only),
                            )
                        } else {
                            Cell::Text(String::new())
                        },
                    ]
                })
                .collect(),
            "No sessions.",
        ))
        .ok()
}

#[derive(Deserialize)]
struct UserActionForm {
    csrf: Option<String>,
    session: Option<Uuid>,
    reason: Option<String>,
    minutes: Option<String>,
}

async fn user_action(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    headers: axum::http::HeaderMap,
    Path((slug, pid, uid, act)): Path<(String, String, Uuid, String)>,
    Form(f): Form<UserActionForm>,
) -> Response {
    page_try!(check_csrf(&user, f.csrf.as_deref()));
    let m = page_try!(member(&state, user, &slug).await);
    let (p, target) = page_try!(project(&state, &m, &pid).await);
    if act == "impersonate" {
        let auth = page_try!(m.authorize(Permission::UsersImpersonate, &target));
        let minutes = match f.minutes.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
            None => None,
            Some(v) => match v.parse::<i64>() {
                Ok(n) => Some(n),
                Err(_) => return error_page(StatusCode::UNPROCESSABLE_ENTITY, "Minutes: 1 to 60.", Some(&m.user)),
            },
        };
        let new = authio_core::identity::impersonation::NewImpersonation {
            reason: f.reason.clone().unwrap_or_default(),
            minutes,
        };
        let i = core_try!(state.identity.impersonate(&auth, uid, &new, &client_info(&headers)).await, &m.user);
        return project_page(&m, &p, "Impersonation", "users")
            .block(Block::notice(
                "warn",
                format!(
                    "Impersonation started: tokens as this user, carrying act = {}, until {}. Shown once.",
                    i.impersonator,
                    i.ends_at.format("%Y-%m-%d %H:%M UTC")
                ),
            ))
            .block(Block::Secret(super::Secret { label: "Access token".into(), value: i.tokens.access_token }))
            .block(Block::Secret(super::Secret { label: "Refresh token".into(), value: i.tokens.refresh_token }))
            .block(Block::Form(
                FormView::button(format!("{}/users/{uid}/revoke", base(&m, &p)), "End the impersonation", true)
                    .field(Field::hidden("session", &i.session_id.to_string())),
            ))
            .ok();
    }
    let auth = page_try!(m.authorize(Permission::UsersManage, &target));
    let (router, clock, info) = (&state.router, state.clock.as_ref(), client_info(&headers));
    let b = base(&m, &p);
    let result = match act.as_str() {
        "disable" | "enable" => users::set_disabled(router, clock, &auth, uid, act == "disable", &info)
            .await
            .map(|_| format!("{b}/users/{uid}?done={act}d")),
        "delete" => users::delete(router, clock, &auth, uid, &info).await.map(|_| format!("{b}/users?done=deleted")),
        "revoke" => {
            let Some(sid) = f.session else {
                return error_page(StatusCode::UNPROCESSABLE_ENTITY, "Which session?", Some(&m.user));
            };
            // The session must be this user's (the list it came from), not any of the project.
            match sessions::list_for_user(router, &page_try!(m.also(&auth, Permission::UsersRead)), uid).await {
                Ok(list) if list.iter().any(|s| s.id == sid) => {
                    sessions::revoke_managed(router, clock, &auth, sid, &info)
                        .await
                        .map(|_| format!("{b}/users/{uid}?done=revoked"))
                }
                Ok(_) => Err(CoreError::NotFound(authio_core::types::Entity::Session)),
                Err(e) => Err(e),
            }
        }
        _ => return error_page(StatusCode::NOT_FOUND, "No such action.", Some(&m.user)),
    };
    match result {
        Ok(to) => Redirect::to(&to).into_response(),
        Err(e) => core_error_page(e, Some(&m.user)),
    }
}

async fn credentials_page(
    state: &AppState,
    m: &Member,
    p: &Project,
    auth: &Authorized,
    secret: Option<Block>,
    f: &Flash,
) -> Response {
    let (clients, keys, oidc_clients) = core_try!(
        tokio::try_join!(
            m2m::list(&state.router, auth),
            api_keys::list(&state.router, auth),
            authio_core::oidc::list_clients(&state.router, auth)
        ),
        &m.user
    );
    let b = format!("{}/credentials", base(m, p));
    let read_only = m.read_only();
    // A credential's state and, while it is live, its revoke button.
    let state_cells = |revoked: bool, revoke_url: String| {
        if revoked {
            [Cell::Badge("bad", "revoked".into()), Cell::Text(String::new())]
        } else {
            [
                Cell::Badge("ok", "active".into()),
                Cell::Action(FormView::button(revoke_url, "Revoke", true).disabled_if(read_only)),
            ]
        }
    };
    let mut page = flash(project_page(m, p, "M2M clients & API keys", "credentials"), f);
    if let Some(s) = secret {
        page = page.block(s);
    }
    page.block(Block::heading("M2M clients"))
        .block(Block::Para("Services get tokens with these at POST /v1/auth/token (client credentials).".into()))
        .block(Block::Form(
            FormView::post(format!("{b}/m2m"), "Create M2M client")
                .field(Field::text("text", "name", "Name", "").required())
                .field(Field::text("text", "scopes", "Scopes (space-separated)", "").placeholder("read:users"))
                .disabled_if(read_only),
        ))
        .block(Block::table(
            "M2M clients",
            vec!["Name", "Client id", "Scopes", "Created", "State", ""],
            clients
                .iter()
                .map(|c| {
                    let mut row = vec![
                        Cell::Text(c.name.clone()),
                        Cell::Code(c.client_id.clone()),
                        Cell::Text(c.scopes.join(" ")),
                        Cell::Text(c.created_at.format("%Y-%m-%d").to_string()),
                    ];
                    row.extend(state_cells(c.revoked_at.is_some(), format!("{b}/m2m/{}/revoke", c.id)));
                    row
                })
                .collect(),
            "No M2M clients yet.",
        ))
        .block(Block::heading("Third-party applications"))
        .block(Block::Para(
            "MCP clients and agents that registered themselves or came by their metadata document's URL; \
             their names are their own. A blocked one can no longer sign anyone in nor refresh."
                .into(),
        ))
        .block(Block::table(
            "Third-party applications",
            vec!["Name", "Client id", "Registration", "Created", "State", ""],
            oidc_clients
                .iter()
                .filter(|c| c.registration != "admin" && c.revoked_at.is_none())
                .map(|c| {
                    let blocked = c.blocked_at.is_some();
                    let (act, label) = if blocked { ("client-unblock", "Unblock") } else { ("client-block", "Block") };
                    vec![
                        Cell::Text(c.name.clone()),
                        Cell::Code(c.client_id.clone()),
                        Cell::Text(c.registration.replace('_', " ")),
                        Cell::Text(c.created_at.format("%Y-%m-%d").to_string()),
                        if blocked { Cell::Badge("bad", "blocked".into()) } else { Cell::Badge("ok", "active".into()) },
                        Cell::Action(
                            FormView::button(format!("{b}/{act}/{}/revoke", c.id), label, !blocked)
                                .disabled_if(read_only),
                        ),
                    ]
                })
                .collect(),
            "No third-party application has registered.",
        ))
        .block(Block::heading("API keys"))
        .block(Block::Para("Secret keys for the management API of this project (Authorization: Bearer sk_...).".into()))
        .block(Block::Form(
            FormView::post(format!("{b}/api-key"), "Create API key")
                .field(Field::text("text", "name", "Name", "").required())
                .disabled_if(read_only),
        ))
        .block(Block::table(
            "API keys",
            vec!["Name", "Key id", "Created", "State", ""],
            keys.iter()
                .map(|k| {
                    let mut row = vec![
                        Cell::Text(k.name.clone()),
                        Cell::Code(k.key_id.clone()),
                        Cell::Text(k.created_at.format("%Y-%m-%d").to_string()),
                    ];
                    row.extend(state_cells(k.revoked_at.is_some(), format!("{b}/api-key/{}/revoke", k.id)));
                    row
                })
                .collect(),
            "No API keys yet.",
        ))
        .ok()
}

async fn credentials(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    Path((slug, pid)): Path<(String, String)>,
    Query(f): Query<Flash>,
) -> Response {
    let m = page_try!(member(&state, user, &slug).await);
    let (p, target) = page_try!(project(&state, &m, &pid).await);
    let auth = page_try!(m.authorize(Permission::ProjectRead, &target));
    credentials_page(&state, &m, &p, &auth, None, &f).await
}

#[derive(Deserialize)]
struct CredentialForm {
    csrf: Option<String>,
    name: String,
    #[serde(default)]
    scopes: String,
}

/// Create an M2M client or an API key; the page that answers shows its secret, once.
async fn create_credential(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    headers: axum::http::HeaderMap,
    Path((slug, pid, kind)): Path<(String, String, String)>,
    Form(f): Form<CredentialForm>,
) -> Response {
    page_try!(check_csrf(&user, f.csrf.as_deref()));
    let m = page_try!(member(&state, user, &slug).await);
    let (p, target) = page_try!(project(&state, &m, &pid).await);
    let auth = page_try!(m.authorize(Permission::CredentialsManage, &target));
    let name = match DisplayName::parse(&f.name) {
        Ok(n) => n,
        Err(e) => return core_error_page(e.into(), Some(&m.user)),
    };
    let (router, clock, info) = (&state.router, state.clock.as_ref(), client_info(&headers));
    let secret = match kind.as_str() {
        "m2m" => {
            let new = m2m::NewClient {
                name,
                scopes: f.scopes.split_whitespace().map(str::to_owned).collect(),
                audience: None,
                token_ttl_secs: None,
            };
            m2m::create(router, clock, &auth, &state.identity.issuer(p.id), &new, &info).await.map(|c| {
                let label = format!("Client secret of {} (client id {})", c.info.name, c.info.client_id);
                Block::Secret(super::Secret { label, value: c.client_secret })
            })
        }
        "api-key" => api_keys::create(router, clock, &auth, &name, &info)
            .await
            .map(|k| Block::Secret(super::Secret { label: format!("API key {}", k.info.name), value: k.plaintext })),
        _ => return error_page(StatusCode::NOT_FOUND, "No such kind of credential.", Some(&m.user)),
    };
    match secret {
        Ok(s) => {
            credentials_page(
                &state,
                &m,
                &p,
                &page_try!(m.also(&auth, Permission::ProjectRead)),
                Some(s),
                &Flash::default(),
            )
            .await
        }
        Err(e) => core_error_page(e, Some(&m.user)),
    }
}

async fn revoke_credential(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    headers: axum::http::HeaderMap,
    Path((slug, pid, kind, id)): Path<(String, String, String, Uuid)>,
    Form(f): Form<super::CsrfOnly>,
) -> Response {
    page_try!(check_csrf(&user, f.csrf.as_deref()));
    let m = page_try!(member(&state, user, &slug).await);
    let (p, target) = page_try!(project(&state, &m, &pid).await);
    let auth = page_try!(m.authorize(Permission::CredentialsManage, &target));
    let (router, clock, info) = (&state.router, state.clock.as_ref(), client_info(&headers));
    let result = match kind.as_str() {
        "m2m" => m2m::revoke(router, clock, &auth, id, &info)
            .await
            .map(|c| state.identity.forget_credential("client", &c.client_id)),
        "api-key" => api_keys::revoke(router, clock, &auth, id, &info)
            .await
            .map(|k| state.identity.forget_credential("apikey", &k.key_id)),
        "client-block" | "client-unblock" => {
            authio_core::oidc::third_party::block_client(router, clock, &auth, id, kind == "client-block", &info).await
        }
        _ => return error_page(StatusCode::NOT_FOUND, "No such kind of credential.", Some(&m.user)),
    };
    match result {
        Ok(()) if kind.starts_with("client-") => {
            Redirect::to(&format!("{}/credentials?done=saved", base(&m, &p))).into_response()
        }
        Ok(()) => Redirect::to(&format!("{}/credentials?done=revoked", base(&m, &p))).into_response(),
        Err(e) => core_error_page(e, Some(&m.user)),
    }
}

async fn urls(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    Path((slug, pid)): Path<(String, String)>,
    Query(f): Query<Flash>,
) -> Response {
    let m = page_try!(member(&state, user, &slug).await);
    let (p, target) = page_try!(project(&state, &m, &pid).await);
    let auth = page_try!(m.authorize(Permission::ProjectRead, &target));
    let (uris, origins, domains) = core_try!(
        tokio::try_join!(
            project_config::list_redirect_uris(&state.router, &auth),
            project_config::list_origins(&state.router, &auth),
            project_config::list_domains(&state.router, &auth)
        ),
        &m.user
    );
    let b = format!("{}/urls", base(&m, &p));
    let read_only = m.read_only();
    let list = |caption: &str, values: &[String], act: &str, empty: &str| {
        Block::table(
            caption,
            vec!["Value", ""],
            values
                .iter()
                .map(|v| {
                    vec![
                        Cell::Code(v.clone()),
                        Cell::Action(
                            FormView::button(format!("{b}/{act}"), "Remove", true)
                                .field(Field::hidden("value", v))
                                .disabled_if(read_only),
                        ),
                    ]
                })
                .collect(),
            empty,
        )
    };
    flash(project_page(&m, &p, "Redirect URIs, origins & domains", "urls"), &f)
        .block(Block::heading("Redirect URIs"))
        .block(Block::Para("Hosted sign-in and the OpenID provider return only to these, matched exactly.".into()))
        .block(Block::Form(
            FormView::post(format!("{b}/add-redirect-uri"), "Add")
                .field(
                    Field::text("url", "value", "Redirect URI", "")
                        .required()
                        .placeholder("https://app.example.com/callback"),
                )
                .disabled_if(read_only),
        ))
        .block(list("Redirect URIs", &uris, "remove-redirect-uri", "None yet."))
        .block(Block::heading("Allowed origins"))
        .block(Block::Para("Browsers on these origins may call the sign-in API directly (CORS).".into()))
        .block(Block::Form(
            FormView::post(format!("{b}/add-origin"), "Add")
                .field(Field::text("url", "value", "Origin", "").required().placeholder("https://app.example.com"))
                .disabled_if(read_only),
        ))
        .block(list("Allowed origins", &origins, "remove-origin", "None yet."))
        .block(Block::heading("Custom domains"))
        .block(Block::Form(
            FormView::post(format!("{b}/add-domain"), "Add domain")
                .field(Field::text("text", "value", "Host", "").required().placeholder("login.example.com"))
                .disabled_if(read_only),
        ))
        .block(Block::table(
            "Custom domains",
            vec!["Host", "Verification", "TXT record to publish", "", ""],
            domains
                .iter()
                .map(|d| {
                    vec![
                        Cell::Text(d.host.clone()),
                        if d.verified {
                            Cell::Badge("ok", "verified".into())
                        } else {
                            Cell::Badge("warn", "pending".into())
                        },
                        Cell::Code(format!("{} TXT \"{}\"", d.txt_name, d.txt_value)),
                        if d.verified {
                            Cell::Text(String::new())
                        } else {
                            Cell::Action(
                                FormView::button(format!("{b}/verify-domain"), "Verify now", false)
                                    .field(Field::hidden("value", &d.id.to_string()))
                                    .disabled_if(read_only),
                            )
                        },
                        Cell::Action(
                            FormView::button(format!("{b}/delete-domain"), "Delete", true)
                                .field(Field::hidden("value", &d.id.to_string()))
                                .disabled_if(read_only),
                        ),
                    ]
                })
                .collect(),
            "No custom domains.",
        ))
        .ok()
}

#[derive(Deserialize)]
struct ValueForm {
    csrf: Option<String>,
    value: String,
}

async fn url_action(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    headers: axum::http::HeaderMap,
    Path((slug, pid, act)): Path<(String, String, String)>,
    Form(f): Form<ValueForm>,
) -> Response {
    page_try!(check_csrf(&user, f.csrf.as_deref()));
    let m = page_try!(member(&state, user, &slug).await);
    let (p, target) = page_try!(project(&state, &m, &pid).await);
    let auth = page_try!(m.authorize(Permission::ProjectConfigure, &target));
    let (router, clock, info) = (&state.router, state.clock.as_ref(), client_info(&headers));
    let value = f.value.trim();
    let id = || Uuid::parse_str(value).map_err(|_| CoreError::NotFound(authio_core::types::Entity::Domain));
    let result: Result<&str, CoreError> = async {
        match act.as_str() {
            "add-redirect-uri" => {
                project_config::add_redirect_uri(router, clock, &auth, &RedirectUri::parse(value)?, &info).await?;
                Ok("saved")
            }
            "remove-redirect-uri" => {
                project_config::remove_redirect_uri(router, clock, &auth, value, &info).await?;
                Ok("removed")
            }
            "add-origin" => {
                project_config::add_origin(router, clock, &auth, &WebOrigin::parse(value)?, &info).await?;
                Ok("saved")
            }
            "remove-origin" => {
                project_config::remove_origin(router, clock, &auth, value, &info).await?;
                Ok("removed")
            }
            "add-domain" => {
                project_config::add_domain(router, clock, &auth, &DomainName::parse(value)?, &info).await?;
                Ok("saved")
            }
            "verify-domain" => {
                project_config::verify_domain(router, clock, &auth, id()?, state.dns.as_ref(), &info).await?;
                Ok("verified")
            }
            "delete-domain" => {
                project_config::delete_domain(router, clock, &auth, id()?, &info).await?;
                Ok("removed")
            }
            _ => Err(CoreError::NotFound(authio_core::types::Entity::Action)),
        }
    }
    .await;
    match result {
        Ok(done) => Redirect::to(&format!("{}/urls?done={done}", base(&m, &p))).into_response(),
        Err(e) => core_error_page(e, Some(&m.user)),
    }
}

async fn signin_page(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    Path((slug, pid)): Path<(String, String)>,
    Query(f): Query<Flash>,
) -> Response {
    let m = page_try!(member(&state, user, &slug).await);
    let (p, target) = page_try!(project(&state, &m, &pid).await);
    let auth = page_try!(m.authorize(Permission::ProjectRead, &target));
    let s = core_try!(project_config::presentation(&state.router, &auth).await, &m.user);
    let mut form = FormView::post(format!("{}/signin", base(&m, &p)), "Save").disabled_if(m.read_only());
    for method in project_config::METHODS {
        let label = match method {
            "password" => "Password",
            "magic_link" => "Magic link",
            "email_code" => "Email code",
            "passkey" => "Passkey",
            _ => "Upstream providers (OAuth / OpenID Connect)",
        };
        form = form.field(Field::check("method", label, method, s.signin_methods.iter().any(|x| x == method)));
    }
    form = form
        .field(Field::text("text", "display_name", "Display name", s.display_name.as_deref().unwrap_or_default()))
        .field(Field::text("url", "logo_url", "Logo URL (https)", s.logo_url.as_deref().unwrap_or_default()))
        .field(Field::text("text", "brand_color", "Brand colour (#rrggbb)", &s.brand_color))
        .field(Field::text(
            "text",
            "email_sender_name",
            "Email sender name",
            s.email_sender_name.as_deref().unwrap_or_default(),
        ))
        .field(Field::select(
            "signup_policy",
            "Who may sign up",
            vec![
                ("open".into(), "Anyone".into()),
                ("invite_only".into(), "Nobody by themselves (invite only)".into()),
                ("domains".into(), "Addresses at these domains".into()),
            ],
            &s.signup_policy,
        ))
        .field(Field::text("text", "signup_domains", "Sign-up domains (comma-separated)", &s.signup_domains.join(", ")))
        .field(Field::select(
            "mfa_policy",
            "Multi-factor authentication",
            vec![
                ("optional".into(), "Optional: users may add a second factor".into()),
                ("required".into(), "Required: every user signs in with a second factor".into()),
            ],
            &s.mfa_policy,
        ));
    form = form
        .field(Field::check(
            "registration",
            "Let MCP clients and agents register themselves (RFC 7591 dynamic registration)",
            "dynamic",
            s.dynamic_registration,
        ))
        .field(Field::check(
            "registration",
            "Accept clients identified by their metadata document's URL (Client ID Metadata Documents)",
            "metadata_document",
            s.metadata_document_clients,
        ));
    flash(project_page(&m, &p, "Sign-in & branding", "signin"), &f)
        .block(Block::Para(format!("Hosted sign-in page: {}/p/{}/signin", state.public_url, p.id)))
        .block(Block::Form(form))
        .ok()
}

/// The sign-in form: several `method` values, so it is parsed by hand (serde_urlencoded
/// keeps only one value per name).
async fn signin_save(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    headers: axum::http::HeaderMap,
    Path((slug, pid)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.trim().to_owned());
    page_try!(check_csrf(&user, get("csrf").as_deref()));
    let m = page_try!(member(&state, user, &slug).await);
    let (p, target) = page_try!(project(&state, &m, &pid).await);
    let auth = page_try!(m.authorize(Permission::ProjectConfigure, &target));
    let optional = |k: &str| Some(get(k).filter(|v| !v.is_empty()));
    let patch = project_config::PresentationPatch {
        environment: None,
        display_name: optional("display_name"),
        logo_url: optional("logo_url"),
        brand_color: get("brand_color").filter(|v| !v.is_empty()),
        email_sender_name: optional("email_sender_name"),
        signin_methods: Some(pairs.iter().filter(|(n, _)| n == "method").map(|(_, v)| v.clone()).collect()),
        signup_policy: get("signup_policy").filter(|v| !v.is_empty()),
        // The list is kept unless the policy uses it (an empty field with another policy is fine).
        signup_domains: match get("signup_domains").as_deref().map(str::trim) {
            Some(list) if !list.is_empty() => {
                Some(list.split(',').map(|d| d.trim().to_ascii_lowercase()).filter(|d| !d.is_empty()).collect())
            }
            _ => None,
        },
        mfa_policy: get("mfa_policy").filter(|v| !v.is_empty()),
        dynamic_registration: Some(pairs.iter().any(|(n, v)| n == "registration" && v == "dynamic")),
        metadata_document_clients: Some(pairs.iter().any(|(n, v)| n == "registration" && v == "metadata_document")),
        confidential_registration: None,
    };
    let info = client_info(&headers);
    match project_config::update_presentation(&state.router, state.clock.as_ref(), &auth, &patch, &info).await {
        Ok(_) => {
            state.identity.forget_profile(p.id);
            Redirect::to(&format!("{}/signin?done=saved", base(&m, &p))).into_response()
        }
        Err(e) => core_error_page(e, Some(&m.user)),
    }
}

async fn keys_page(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    Path((slug, pid)): Path<(String, String)>,
    Query(f): Query<Flash>,
) -> Response {
    let m = page_try!(member(&state, user, &slug).await);
    let (p, target) = page_try!(project(&state, &m, &pid).await);
    let _auth = page_try!(m.authorize(Permission::ProjectRead, &target));
    let console = page_try!(console_of(&state));
    let keys = core_try!(console.control.signing_keys(p.id).await, &m.user);
    flash(project_page(&m, &p, "Signing keys", "keys"), &f)
        .block(Block::Para(format!(
            "Published at {}/p/{}/.well-known/jwks.json. Rotating makes the next key current (verifiers already know it) and publishes a new next key; the old key stays published until tokens it signed have expired.",
            state.public_url, p.id
        )))
        .block(Block::table(
            "Keys",
            vec!["Key id", "Algorithm", "State", "Created", "Published until"],
            keys.iter()
                .map(|k| {
                    vec![
                        Cell::Code(k.kid.clone()),
                        Cell::Text(k.alg.clone()),
                        Cell::Badge(if k.state == "current" { "ok" } else { "" }, k.state.clone()),
                        Cell::Text(k.created_at.format("%Y-%m-%d %H:%M").to_string()),
                        Cell::Text(k.publish_until.map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_default()),
                    ]
                })
                .collect(),
            "No keys yet: the first token signed creates them.",
        ))
        .block(Block::Form(
            FormView::post(format!("{}/keys/rotate", base(&m, &p)), "Rotate keys").disabled_if(m.read_only()),
        ))
        .ok()
}

async fn rotate_keys(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    Path((slug, pid)): Path<(String, String)>,
    Form(f): Form<super::CsrfOnly>,
) -> Response {
    page_try!(check_csrf(&user, f.csrf.as_deref()));
    let m = page_try!(member(&state, user, &slug).await);
    let (p, target) = page_try!(project(&state, &m, &pid).await);
    let auth = page_try!(m.authorize(Permission::KeysRotate, &target));
    let console = page_try!(console_of(&state));
    match console.control.rotate_keys_by(p.id, None, &console.key, state.clock.now(), false, auth.actor().clone()).await
    {
        Ok(_) => {
            state.identity.forget_profile(p.id);
            Redirect::to(&format!("{}/keys?done=rotated", base(&m, &p))).into_response()
        }
        Err(e) => core_error_page(e, Some(&m.user)),
    }
}

#[derive(Deserialize, Default)]
struct AuditQuery {
    action: Option<String>,
    actor_id: Option<String>,
    target_id: Option<String>,
    format: Option<String>,
}

impl AuditQuery {
    fn filter(&self) -> authio_core::audit::Filter {
        let some = |v: &Option<String>| v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
        authio_core::audit::Filter {
            action: some(&self.action),
            actor_id: some(&self.actor_id),
            target_id: some(&self.target_id),
            since: None,
            until: None,
        }
    }
}

async fn audit_page(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    Path((slug, pid)): Path<(String, String)>,
    Query(q): Query<AuditQuery>,
) -> Response {
    let m = page_try!(member(&state, user, &slug).await);
    let (p, target) = page_try!(project(&state, &m, &pid).await);
    let auth = page_try!(m.authorize(Permission::AuditRead, &target));
    let filter = q.filter();
    let events = core_try!(authio_core::audit::list(&state.router, &auth, &filter, 200, None).await, &m.user);
    let b = format!("{}/audit", base(&m, &p));
    let export_query = serde_urlencoded::to_string([
        ("action", filter.action.clone().unwrap_or_default()),
        ("actor_id", filter.actor_id.clone().unwrap_or_default()),
        ("target_id", filter.target_id.clone().unwrap_or_default()),
    ])
    .unwrap_or_default();
    project_page(&m, &p, "Audit log", "audit")
        .block(Block::Form(
            FormView::get(&b, "Filter")
                .field(
                    Field::text("text", "action", "Action", filter.action.as_deref().unwrap_or_default())
                        .placeholder("user.signed_in"),
                )
                .field(Field::text("text", "actor_id", "Actor id", filter.actor_id.as_deref().unwrap_or_default()))
                .field(Field::text("text", "target_id", "Target id", filter.target_id.as_deref().unwrap_or_default())),
        ))
        .block(Block::table(
            "Export",
            vec!["Format", "Download (all matching events)"],
            vec![
                vec![
                    Cell::Text("CSV".into()),
                    Cell::Link(format!("{b}/export?format=csv&{export_query}"), "audit-events.csv".into()),
                ],
                vec![
                    Cell::Text("NDJSON".into()),
                    Cell::Link(format!("{b}/export?format=ndjson&{export_query}"), "audit-events.ndjson".into()),
                ],
            ],
            "",
        ))
        .block(Block::table(
            "The newest 200 matching events",
            vec!["#", "When", "Action", "Actor", "Target", "IP"],
            events
                .iter()
                .map(|e| {
                    vec![
                        Cell::Text(e.seq.to_string()),
                        Cell::Text(e.occurred_at.format("%Y-%m-%d %H:%M:%S").to_string()),
                        Cell::Code(e.action.clone()),
                        Cell::Text(format!(
                            "{} {}",
                            e.actor.kind,
                            e.actor.name.clone().or_else(|| e.actor.id.clone()).unwrap_or_default()
                        )),
                        Cell::Text(
                            e.target
                                .as_ref()
                                .map(|t| format!("{} {}", t.kind, t.id.clone().unwrap_or_default()))
                                .unwrap_or_default(),
                        ),
                        Cell::Text(e.context.ip.clone().unwrap_or_default()),
                    ]
                })
                .collect(),
            "No events match.",
        ))
        .ok()
}

async fn audit_export(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    Path((slug, pid)): Path<(String, String)>,
    Query(q): Query<AuditQuery>,
) -> Response {
    let m = page_try!(member(&state, user, &slug).await);
    let (_, target) = page_try!(project(&state, &m, &pid).await);
    let auth = page_try!(m.authorize(Permission::AuditRead, &target));
    let csv = match q.format.as_deref() {
        Some("csv") => true,
        None | Some("ndjson") => false,
        Some(_) => return error_page(StatusCode::BAD_REQUEST, "format: csv or ndjson", Some(&m.user)),
    };
    crate::routes::manage::audit_export(state.clone(), auth, q.filter(), csv)
}

/// What each plan includes (docs/concepts/pricing-tiers.md says the same).
const PLANS: [(&str, &str, [&str; 4]); 3] = [
    (
        "free",
        "Free",
        [
            "Shared database, isolated by row-level security",
            "Every sign-in method, hosted pages, OpenID provider, custom domains",
            "Audit log kept 30 days",
            "Community support",
        ],
    ),
    ("pro", "Pro", ["Everything in Free", "Audit log kept 90 days", "Email support", "Move to Enterprise at any time"]),
    (
        "enterprise",
        "Enterprise",
        [
            "Everything in Pro",
            "Dedicated database: your data in its own PostgreSQL, moved there online",
            "Audit log kept 365 days",
            "Priority support and SLA",
        ],
    ),
];

fn plans_block(current: &str) -> Block {
    Block::Plans(
        PLANS
            .iter()
            .map(|(id, name, includes)| PlanView { name, current: *id == current, includes: includes.to_vec() })
            .collect(),
    )
}

/// `/billing`: the member's tenant's billing (the list of tenants when there are several).
async fn billing_home(State(state): State<AppState>, SignedIn(user): SignedIn) -> Response {
    let all = page_try!(memberships(&state, &user).await);
    match all.as_slice() {
        [] => error_page(StatusCode::FORBIDDEN, "This account is not a member of any tenant.", Some(&user)),
        [only] => Redirect::to(&format!("/dashboard/{}/billing", only.tenant.slug)).into_response(),
        several => PageView::new("Billing", Some(&user))
            .at("/billing")
            .block(Block::table(
                "Choose a tenant",
                vec!["Tenant", "Plan"],
                several
                    .iter()
                    .map(|m| {
                        vec![
                            Cell::Link(format!("/dashboard/{}/billing", m.tenant.slug), m.tenant.name.clone()),
                            Cell::Text(m.tenant.plan.as_str().to_owned()),
                        ]
                    })
                    .collect(),
                "",
            ))
            .ok(),
    }
}

async fn dedicated_view(state: &AppState, m: &Member) -> Result<(LiveView, DedicatedState), Box<Response>> {
    let console = console_of(state)?;
    let fail = |e: CoreError| Box::new(core_error_page(e, Some(&m.user)));
    // Re-read the tenant: its strategy changes under the page.
    let tenant = console
        .control
        .tenant(m.tenant.id)
        .await
        .map_err(fail)?
        .ok_or_else(|| fail(CoreError::NotFound(authio_core::types::Entity::Tenant)))?;
    let request = console.control.latest_request(tenant.id).await.map_err(fail)?;
    let st = DedicatedState::of(&tenant, request.as_ref());
    let mut lines = vec![format!("Your data lives on the {} database.", tenant.db_strategy.as_str())];
    if let Some(r) = request.as_ref().filter(|r| r.is_open()) {
        lines.push(format!("Requested by {} on {}.", r.requested_by, r.created_at.format("%Y-%m-%d %H:%M UTC")));
    }
    let open = request.as_ref().is_some_and(|r| r.is_open());
    let view = LiveView {
        title: "Dedicated database".into(),
        state: st.label().into(),
        percent: None,
        lines,
        finished: !open,
    };
    Ok((view, st))
}

async fn billing(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    Path(slug): Path<String>,
    Query(f): Query<Flash>,
) -> Response {
    let m = page_try!(member(&state, user, &slug).await);
    let (view, st) = page_try!(dedicated_view(&state, &m).await);
    let mut page = flash(PageView::new(format!("Billing · {}", m.tenant.name), Some(&m.user)).at("/billing"), &f)
        .block(Block::Facts(vec![
            ("Your plan".into(), m.tenant.plan.as_str().to_owned()),
            ("Your role".into(), m.role.as_str().into()),
        ]))
        .block(plans_block(m.tenant.plan.as_str()))
        .block(Block::heading("Dedicated database"));
    if m.tenant.plan == Plan::Enterprise || m.tenant.db_strategy == DbStrategy::Dedicated {
        let mut form = FormView::post(format!("/dashboard/{slug}/billing/dedicated"), "Save")
            .field(Field::switch("dedicated", "Request dedicated DB", st.toggle_on()))
            .disabled_if(m.read_only());
        form.autosubmit = true;
        page = page
            .block(Block::Para(
                "Turn this on to ask for your own PostgreSQL database. An operator approves it, provisions it and moves your data there online: sign-ins and tokens keep working throughout. Turn it off on a dedicated database to move back to the shared one.".into(),
            ))
            .block(Block::Form(form))
            .block(Block::Live(Live { url: format!("/dashboard/{slug}/billing/live"), view }));
    } else {
        page = page.block(Block::Para(
            "Upgrade to Enterprise to get a dedicated database: your tenant's data in its own PostgreSQL, moved there online with nothing lost, on the same code path as everyone else. Contact us to upgrade.".into(),
        ));
    }
    page.ok()
}

async fn billing_live(State(state): State<AppState>, SignedIn(user): SignedIn, Path(slug): Path<String>) -> Response {
    let m = page_try!(member(&state, user, &slug).await);
    let (view, _) = page_try!(dedicated_view(&state, &m).await);
    view.fragment()
}

#[derive(Deserialize)]
struct ToggleForm {
    csrf: Option<String>,
    dedicated: Option<String>,
}

async fn toggle_dedicated(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    Path(slug): Path<String>,
    Form(f): Form<ToggleForm>,
) -> Response {
    page_try!(check_csrf(&user, f.csrf.as_deref()));
    let m = page_try!(member(&state, user, &slug).await);
    let auth = page_try!(m.on_tenant(Permission::TenantManage));
    let console = page_try!(console_of(&state));
    let on = f.dedicated.as_deref() == Some("on");
    match console.control.toggle_dedicated(m.tenant.id, on, auth.actor().clone()).await {
        Ok(r) => {
            let done = match r {
                Some(r) if r.state == "withdrawn" => "withdrawn",
                Some(_) => "requested",
                None => "saved",
            };
            Redirect::to(&format!("/dashboard/{slug}/billing?done={done}")).into_response()
        }
        Err(e) => core_error_page(e, Some(&m.user)),
    }
}

// ---------------------------------------------------------------------------------------
// Organizations

#[derive(Deserialize)]
struct OrgForm {
    csrf: Option<String>,
    name: Option<String>,
    slug: Option<String>,
    email: Option<String>,
    role: Option<String>,
    invitation: Option<Uuid>,
    connection: Option<Uuid>,
    directory: Option<Uuid>,
    metadata_url: Option<String>,
    metadata_xml: Option<String>,
    preset: Option<String>,
}

async fn organizations_page(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    Path((slug, pid)): Path<(String, String)>,
    Query(q): Query<UsersQuery>,
) -> Response {
    let m = page_try!(member(&state, user, &slug).await);
    let (p, target) = page_try!(project(&state, &m, &pid).await);
    let auth = page_try!(m.authorize(Permission::UsersRead, &target));
    let name = q.q.clone().filter(|v| !v.trim().is_empty());
    let list = core_try!(
        authio_core::orgs::list_organizations(&state.router, &auth, 200, None, name.as_deref(), None).await,
        &m.user
    );
    let b = base(&m, &p);
    flash(project_page(&m, &p, "Organizations", "organizations"), &Flash { done: q.done })
        .block(Block::Form(FormView::get(format!("{b}/organizations"), "Search").field(Field::text(
            "search",
            "q",
            "Name contains",
            name.as_deref().unwrap_or(""),
        ))))
        .block(Block::table(
            "Organizations",
            vec!["Name", "Slug", "Domain policy", "Created"],
            list.iter()
                .map(|o| {
                    vec![
                        Cell::Link(format!("{b}/organizations/{}", o.id), o.name.clone()),
                        Cell::Code(o.slug.clone()),
                        Cell::Text(o.domain_policy.clone()),
                        Cell::Text(o.created_at.format("%Y-%m-%d").to_string()),
                    ]
                })
                .collect(),
            "No organizations.",
        ))
        .block(Block::Form(
            FormView::post(format!("{b}/organizations"), "Create organization")
                .field(Field::text("text", "name", "Name", "").required())
                .field(Field::text("text", "slug", "Slug (a-z, 0-9, -)", "").required())
                .disabled_if(m.read_only()),
        ))
        .ok()
}

async fn create_organization(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    headers: axum::http::HeaderMap,
    Path((slug, pid)): Path<(String, String)>,
    Form(f): Form<OrgForm>,
) -> Response {
    page_try!(check_csrf(&user, f.csrf.as_deref()));
    let m = page_try!(member(&state, user, &slug).await);
    let (p, target) = page_try!(project(&state, &m, &pid).await);
    let auth = page_try!(m.authorize(Permission::UsersManage, &target));
    let new = authio_core::orgs::NewOrganization {
        name: f.name.unwrap_or_default().trim().to_owned(),
        slug: f.slug.unwrap_or_default().trim().to_owned(),
        external_id: None,
        metadata: None,
        domain_policy: None,
    };
    let o = core_try!(
        authio_core::orgs::create_organization(
            &state.router,
            state.clock.as_ref(),
            &auth,
            &new,
            &client_info(&headers)
        )
        .await,
        &m.user
    );
    Redirect::to(&format!("{}/organizations/{}", base(&m, &p), o.id)).into_response()
}

async fn organization_page(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    Path((slug, pid, oid)): Path<(String, String, Uuid)>,
    Query(f): Query<Flash>,
) -> Response {
    let m = page_try!(member(&state, user, &slug).await);
    let (p, target) = page_try!(project(&state, &m, &pid).await);
    organization_view(&state, &m, &p, &target, oid, &f, None).await
}

/// An organization's page; `secret`: a directory token to show this once.
async fn organization_view(
    state: &AppState,
    m: &Member,
    p: &Project,
    target: &Target,
    oid: Uuid,
    f: &Flash,
    secret: Option<Block>,
) -> Response {
    let auth = page_try!(m.authorize(Permission::UsersRead, target));
    let read = page_try!(m.also(&auth, Permission::ProjectRead));
    let (o, members, invitations, roles, connections, directories) = core_try!(
        tokio::try_join!(
            authio_core::orgs::get_organization(&state.router, &auth, oid),
            authio_core::orgs::list_members(&state.router, &auth, oid),
            authio_core::orgs::invitations::list_invitations(&state.router, state.clock.as_ref(), &auth, oid),
            authio_core::orgs::list_roles(&state.router, &read, Some(oid)),
            state.upstream.list_connections(&read),
            state.dsync.list_directories(&read, oid),
        ),
        &m.user
    );
    let connections: Vec<_> = connections.into_iter().filter(|c| c.organization_id == Some(oid)).collect();
    let b = format!("{}/organizations/{oid}", base(m, p));
    let read_only = m.read_only();
    let role_options: Vec<(String, String)> = std::iter::once((String::new(), "Default role".to_owned()))
        .chain(roles.iter().map(|r| (r.slug.clone(), r.name.clone())))
        .collect();
    flash(project_page(m, p, &o.name, "organizations"), f)
        .block(Block::Facts(vec![
            ("Name".into(), o.name.clone()),
            ("Slug".into(), o.slug.clone()),
            ("Domain policy".into(), o.domain_policy.clone()),
            ("Single sign-on".into(), if o.sso_required { "required".into() } else { "optional".into() }),
            ("Second factor".into(), if o.mfa_required { "required".into() } else { "optional".into() }),
            ("Id".into(), o.id.to_string()),
        ]))
        .block(Block::table(
            "Single sign-on connections",
            vec!["Connection", "Issuer", "Groups mapped", "State", "Kind", "", ""],
            connections
                .iter()
                .map(|c| {
                    let button = |act: &str, label: &str, danger: bool| {
                        Cell::Action(
                            FormView::button(format!("{b}/{act}"), label, danger)
                                .field(Field::hidden("connection", &c.id.to_string()))
                                .disabled_if(read_only),
                        )
                    };
                    vec![
                        Cell::Text(format!("{} ({})", c.display_name, c.slug)),
                        Cell::Code(c.issuer.clone().unwrap_or_default()),
                        Cell::Text(c.group_roles.as_object().map(|g| g.len()).unwrap_or(0).to_string()),
                        if c.enabled {
                            Cell::Badge("ok", "enabled".into())
                        } else {
                            Cell::Badge("", "disabled".into())
                        },
                        Cell::Text(c.kind.as_str().to_uppercase()),
                        if c.enabled {
                            button("connection-disable", "Disable", false)
                        } else {
                            button("connection-enable", "Enable", false)
                        },
                        button("connection-delete", "Delete", true),
                    ]
                })
                .collect(),
            "No single sign-on connection: add a SAML one below, or an OpenID one with POST \
             /v1/projects/{id}/oauth-connections and organization_id.",
        ))
        .blocks(connections.iter().filter_map(|c| c.saml.as_ref().map(|s| (c, s))).map(|(c, s)| {
            // What the organization's administrator types into their identity provider.
            Block::Facts(vec![
                (format!("{}: Single sign-on URL (ACS)", c.display_name), s.acs_url.clone()),
                ("Audience / SP entity id (our metadata)".into(), s.sp_entity_id.clone()),
                ("IdP entity id".into(), s.idp_entity_id.clone()),
                (
                    "IdP certificates (SHA-256)".into(),
                    s.idp_certificates.iter().map(|c| c.sha256.clone()).collect::<Vec<_>>().join(", "),
                ),
                (
                    "Sign-in started at the IdP".into(),
                    if s.idp_initiated { "accepted (confirmed)".into() } else { "refused".into() },
                ),
            ])
        }))
        .block(Block::Form(
            FormView::post(format!("{b}/saml-add"), "Add SAML connection")
                .field(Field::text("text", "slug", "Slug", "").required().placeholder("initech-okta"))
                .field(Field::text("text", "name", "Display name", ""))
                .field(Field::text("url", "metadata_url", "IdP metadata URL", ""))
                .field(Field::text("text", "metadata_xml", "or IdP metadata XML", ""))
                .field(Field::select(
                    "preset",
                    "Attribute names",
                    ["generic", "okta", "entra", "google"].iter().map(|p| ((*p).to_owned(), (*p).to_owned())).collect(),
                    "generic",
                ))
                .disabled_if(read_only),
        ))
        .block(Block::Form(
            if o.sso_required {
                FormView::button(format!("{b}/allow-other-sign-in"), "Stop requiring single sign-on", false)
            } else {
                FormView::button(format!("{b}/require-sso"), "Require single sign-on", true)
            }
            .disabled_if(read_only || (!o.sso_required && !connections.iter().any(|c| c.enabled))),
        ))
        .block(Block::Form(
            if o.mfa_required {
                FormView::button(format!("{b}/mfa-optional"), "Stop requiring a second factor", false)
            } else {
                FormView::button(format!("{b}/require-mfa"), "Require a second factor (MFA)", true)
            }
            .disabled_if(read_only),
        ))
        .blocks(secret)
        .block(Block::table(
            "Directory sync (SCIM)",
            vec!["Directory", "SCIM base URL", "Token", "", "", ""],
            directories
                .iter()
                .map(|d| {
                    let button = |act: &str, label: &str, danger: bool| {
                        Cell::Action(
                            FormView::button(format!("{b}/{act}"), label, danger)
                                .field(Field::hidden("directory", &d.id.to_string()))
                                .disabled_if(read_only),
                        )
                    };
                    vec![
                        Cell::Text(d.name.clone()),
                        Cell::Code(d.scim_base_url.clone()),
                        if d.has_token { Cell::Badge("ok", "set".into()) } else { Cell::Badge("", "revoked".into()) },
                        button("directory-rotate", "New token", false),
                        button("directory-revoke", "Revoke token", true),
                        button("directory-delete", "Delete", true),
                    ]
                })
                .collect(),
            "No directory: add one to let the organization's identity provider push its people (SCIM 2.0).",
        ))
        .block(Block::Form(
            FormView::post(format!("{b}/directory-add"), "Add directory")
                .field(Field::text("text", "name", "Directory name", "").required().placeholder("Okta"))
                .disabled_if(read_only),
        ))
        .block(Block::table(
            "Members",
            vec!["User", "Role", "Status", "Since"],
            members
                .iter()
                .map(|mm| {
                    vec![
                        Cell::Link(format!("{}/users/{}", base(m, p), mm.user_id), mm.user_id.to_string()),
                        Cell::Text(mm.role.clone()),
                        Cell::Badge(if mm.status == "active" { "ok" } else { "" }, mm.status.clone()),
                        Cell::Text(mm.created_at.format("%Y-%m-%d").to_string()),
                    ]
                })
                .collect(),
            "No members.",
        ))
        .block(Block::table(
            "Invitations",
            vec!["Email", "Role", "Status", "Expires", "", ""],
            invitations
                .iter()
                .map(|i| {
                    let pending = i.status == "pending" || i.status == "expired";
                    let button = |act: &str, label: &str, danger: bool| {
                        if pending {
                            Cell::Action(
                                FormView::button(format!("{b}/{act}"), label, danger)
                                    .field(Field::hidden("invitation", &i.id.to_string()))
                                    .disabled_if(read_only),
                            )
                        } else {
                            Cell::Text(String::new())
                        }
                    };
                    vec![
                        Cell::Text(i.email.clone()),
                        Cell::Text(i.role.clone()),
                        Cell::Badge(if i.status == "pending" { "ok" } else { "" }, i.status.clone()),
                        Cell::Text(i.expires_at.format("%Y-%m-%d %H:%M").to_string()),
                        button("resend", "Resend", false),
                        button("revoke", "Revoke", true),
                    ]
                })
                .collect(),
            "No invitations.",
        ))
        .block(Block::Form(
            FormView::post(format!("{b}/invite"), "Send invitation")
                .field(Field::text("email", "email", "Email", "").required())
                .field(Field::select("role", "Role", role_options, ""))
                .disabled_if(read_only),
        ))
        .ok()
}

async fn organization_action(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    headers: axum::http::HeaderMap,
    Path((slug, pid, oid, act)): Path<(String, String, Uuid, String)>,
    Form(f): Form<OrgForm>,
) -> Response {
    page_try!(check_csrf(&user, f.csrf.as_deref()));
    let m = page_try!(member(&state, user, &slug).await);
    let (p, target) = page_try!(project(&state, &m, &pid).await);
    let auth = page_try!(m.authorize(Permission::UsersManage, &target));
    let info = client_info(&headers);
    let back = format!("{}/organizations/{oid}", base(&m, &p));
    let invitation = || f.invitation.ok_or(CoreError::NotFound(authio_core::types::Entity::Invitation));
    let connection = || f.connection.ok_or(CoreError::NotFound(authio_core::types::Entity::Connection));
    let directory = || f.directory.ok_or(CoreError::NotFound(authio_core::types::Entity::Directory));
    // Connections are the project's configuration: a stronger permission than members.
    let configure = || m.authorize(Permission::ProjectConfigure, &target);
    let result = match act.as_str() {
        "saml-add" => match configure() {
            Ok(config) => {
                let blank = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty());
                let preset = serde_json::from_value(serde_json::Value::String(f.preset.clone().unwrap_or_default()))
                    .map_err(|_| CoreError::Invalid(authio_core::types::ValidationError::Field("preset")));
                match preset {
                    Ok(preset) => {
                        let new = authio_core::federation::sso::NewSamlConnection {
                            slug: f.slug.clone().unwrap_or_default(),
                            display_name: blank(&f.name),
                            organization_id: oid,
                            idp_metadata_url: blank(&f.metadata_url),
                            idp_metadata_xml: blank(&f.metadata_xml),
                            attribute_preset: Some(preset),
                            ..Default::default()
                        };
                        state
                            .upstream
                            .create_saml_connection(&config, &new, &state.public_url, &info)
                            .await
                            .map(|_| format!("{back}?done=saved"))
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => return *e,
        },
        "directory-add" | "directory-rotate" => {
            let config = match configure() {
                Ok(c) => c,
                Err(e) => return *e,
            };
            let made = if act == "directory-add" {
                let new =
                    authio_core::dsync::NewDirectory { name: f.name.clone().unwrap_or_default(), group_roles: None };
                state.dsync.create_directory(&config, oid, &new, &info).await.map(|(d, token)| (d.name, token))
            } else {
                match directory() {
                    Ok(id) => {
                        state.dsync.rotate_token(&config, oid, id, &info).await.map(|t| ("the directory".to_owned(), t))
                    }
                    Err(e) => Err(e),
                }
            };
            return match made {
                // The token is shown on this answer, once (it is kept only as a hash).
                Ok((name, token)) => {
                    let shown = Block::Secret(super::Secret { label: format!("Bearer token of {name}"), value: token });
                    organization_view(&state, &m, &p, &target, oid, &Flash::default(), Some(shown)).await
                }
                Err(e) => core_error_page(e, Some(&m.user)),
            };
        }
        "directory-revoke" | "directory-delete" => match (configure(), directory()) {
            (Ok(config), Ok(id)) => {
                if act == "directory-revoke" {
                    state.dsync.revoke_token(&config, oid, id, &info).await.map(|_| format!("{back}?done=saved"))
                } else {
                    state.dsync.delete_directory(&config, oid, id, &info).await.map(|_| format!("{back}?done=deleted"))
                }
            }
            (Err(e), _) => return *e,
            (_, Err(e)) => Err(e),
        },
        "connection-enable" | "connection-disable" | "connection-delete" => match (configure(), connection()) {
            (Ok(config), Ok(id)) => {
                if act == "connection-delete" {
                    state.upstream.delete_connection(&config, id, &info).await.map(|_| format!("{back}?done=deleted"))
                } else {
                    let upd = authio_core::federation::sso::ConnectionUpdate {
                        enabled: Some(act == "connection-enable"),
                        ..Default::default()
                    };
                    state
                        .upstream
                        .update_connection(&config, id, &upd, &info)
                        .await
                        .map(|_| format!("{back}?done=saved"))
                }
            }
            (Err(e), _) => return *e,
            (_, Err(e)) => Err(e),
        },
        "invite" => {
            let new = authio_core::orgs::invitations::NewInvitation {
                email: f.email.clone().unwrap_or_default(),
                role: f.role.clone().filter(|r| !r.is_empty()),
                expires_in_days: None,
            };
            state.identity.invite(&auth, oid, &new, &info).await.map(|_| format!("{back}?done=invited"))
        }
        "resend" => match invitation() {
            Ok(id) => state
                .identity
                .resend_invitation(&auth, oid, id, None, &info)
                .await
                .map(|_| format!("{back}?done=resent")),
            Err(e) => Err(e),
        },
        "require-mfa" | "mfa-optional" => {
            let patch =
                authio_core::orgs::OrganizationPatch { mfa_required: Some(act == "require-mfa"), ..Default::default() };
            authio_core::orgs::update_organization(&state.router, state.clock.as_ref(), &auth, oid, &patch, &info)
                .await
                .map(|_| format!("{back}?done=saved"))
        }
        "require-sso" | "allow-other-sign-in" => {
            let patch =
                authio_core::orgs::OrganizationPatch { sso_required: Some(act == "require-sso"), ..Default::default() };
            authio_core::orgs::update_organization(&state.router, state.clock.as_ref(), &auth, oid, &patch, &info)
                .await
                .map(|_| format!("{back}?done=saved"))
        }
        "revoke" => match invitation() {
            Ok(id) => authio_core::orgs::invitations::revoke_invitation(
                &state.router,
                state.clock.as_ref(),
                &auth,
                oid,
                id,
                &info,
            )
            .await
            .map(|_| format!("{back}?done=revoked")),
            Err(e) => Err(e),
        },
        _ => return error_page(StatusCode::NOT_FOUND, "No such action.", Some(&m.user)),
    };
    match result {
        Ok(to) => Redirect::to(&to).into_response(),
        Err(e) => core_error_page(e, Some(&m.user)),
    }
}

// Webhook endpoints: the same core functions as `/v1/projects/{id}/webhooks`.

#[derive(Deserialize)]
struct WebhookForm {
    csrf: Option<String>,
    url: Option<String>,
    /// Space-separated event types; empty: every type.
    types: Option<String>,
    event_id: Option<String>,
    /// `datetime-local` (taken as UTC).
    since: Option<String>,
}

fn event_types_of(raw: Option<&str>) -> Vec<String> {
    raw.unwrap_or("").split_whitespace().map(str::to_owned).collect()
}

/// The list, with a notice for every endpoint the delivery loop disabled.
async fn webhooks_list_page(
    state: &AppState,
    m: &Member,
    p: &Project,
    auth: &Authorized,
    secret: Option<Block>,
    f: &Flash,
) -> Response {
    use authio_core::events::webhooks;
    let list = core_try!(webhooks::list(&state.router, auth).await, &m.user);
    let b = format!("{}/webhooks", base(m, p));
    let read_only = m.read_only();
    let mut page = flash(project_page(m, p, "Webhooks", "webhooks"), f);
    for e in list.iter().filter(|e| !e.enabled && e.disabled_reason.as_deref() == Some("failing for 3 days")) {
        page = page.block(Block::notice(
            "warn",
            format!(
                "{} was disabled after failing for 3 days (last error: {}). Fix the receiver, then enable it: \
                 delivery resumes where it stopped.",
                e.url,
                e.last_error.as_deref().unwrap_or("none recorded")
            ),
        ));
    }
    if let Some(s) = secret {
        page = page.block(s);
    }
    page.block(Block::Para(
        "Endpoints receive this project's events as signed POSTs (Standard Webhooks: webhook-id, \
         webhook-timestamp, webhook-signature). Retried with backoff for up to 3 days."
            .into(),
    ))
    .block(Block::Form(
        FormView::post(b.clone(), "Add endpoint")
            .field(Field::text("url", "url", "URL (https)", "").required())
            .field(
                Field::text("text", "types", "Event types (space-separated; empty: all)", "")
                    .placeholder("user.created"),
            )
            .disabled_if(read_only),
    ))
    .block(Block::table(
        "Endpoints",
        vec!["URL", "Event types", "State", "Last error", "", ""],
        list.iter()
            .map(|e| {
                let state_cell = match (e.enabled, e.failing_since) {
                    (false, _) => Cell::Badge("bad", "disabled".into()),
                    (true, Some(since)) => {
                        Cell::Badge("warn", format!("failing since {}", since.format("%Y-%m-%d %H:%M")))
                    }
                    (true, None) => Cell::Badge("ok", "active".into()),
                };
                let toggle = if e.enabled { ("disable", "Disable", true) } else { ("enable", "Enable", false) };
                vec![
                    Cell::Link(format!("{b}/{}", e.id), e.url.clone()),
                    Cell::Text(if e.event_types.is_empty() { "all".into() } else { e.event_types.join(" ") }),
                    state_cell,
                    Cell::Text(e.last_error.clone().unwrap_or_default()),
                    Cell::Action(
                        FormView::button(format!("{b}/{}/{}", e.id, toggle.0), toggle.1, toggle.2)
                            .disabled_if(read_only),
                    ),
                    Cell::Action(
                        FormView::button(format!("{b}/{}/delete", e.id), "Delete", true).disabled_if(read_only),
                    ),
                ]
            })
            .collect(),
        "No webhook endpoints yet.",
    ))
    .ok()
}

async fn webhooks_page(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    Path((slug, pid)): Path<(String, String)>,
    Query(f): Query<Flash>,
) -> Response {
    let m = page_try!(member(&state, user, &slug).await);
    let (p, target) = page_try!(project(&state, &m, &pid).await);
    let auth = page_try!(m.authorize(Permission::ProjectRead, &target));
    webhooks_list_page(&state, &m, &p, &auth, None, &f).await
}

/// Add an endpoint; the page that answers shows its signing secret, once.
async fn create_webhook(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    headers: axum::http::HeaderMap,
    Path((slug, pid)): Path<(String, String)>,
    Form(f): Form<WebhookForm>,
) -> Response {
    use authio_core::events::webhooks;
    page_try!(check_csrf(&user, f.csrf.as_deref()));
    let m = page_try!(member(&state, user, &slug).await);
    let (p, target) = page_try!(project(&state, &m, &pid).await);
    let auth = page_try!(m.authorize(Permission::CredentialsManage, &target));
    let new = webhooks::NewEndpoint {
        url: f.url.clone().unwrap_or_default().trim().to_owned(),
        event_types: event_types_of(f.types.as_deref()),
    };
    let (e, secret) = core_try!(
        webhooks::create(
            &state.router,
            state.clock.as_ref(),
            state.identity.master_key(),
            &auth,
            &new,
            &client_info(&headers)
        )
        .await,
        &m.user
    );
    let shown = Block::Secret(super::Secret { label: format!("Signing secret of {}", e.url), value: secret });
    let read = page_try!(m.also(&auth, Permission::ProjectRead));
    webhooks_list_page(&state, &m, &p, &read, Some(shown), &Flash::default()).await
}

/// One endpoint: its facts, its delivery log (newest first) with a replay button per event,
/// and a replay of everything since a time.
async fn webhook_page(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    Path((slug, pid, wid)): Path<(String, String, Uuid)>,
    Query(f): Query<Flash>,
) -> Response {
    use authio_core::events::webhooks;
    let m = page_try!(member(&state, user, &slug).await);
    let (p, target) = page_try!(project(&state, &m, &pid).await);
    let auth = page_try!(m.authorize(Permission::ProjectRead, &target));
    let (list, log) = core_try!(
        tokio::try_join!(webhooks::list(&state.router, &auth), webhooks::deliveries(&state.router, &auth, wid, 200)),
        &m.user
    );
    let Some(e) = list.into_iter().find(|e| e.id == wid) else {
        return core_error_page(CoreError::NotFound(authio_core::types::Entity::WebhookEndpoint), Some(&m.user));
    };
    let b = format!("{}/webhooks/{wid}", base(&m, &p));
    let read_only = m.read_only();
    let mut page = flash(project_page(&m, &p, "Webhook endpoint", "webhooks"), &f);
    if !e.enabled {
        let why = e.disabled_reason.clone().unwrap_or_else(|| "disabled".into());
        page = page.block(Block::notice("warn", format!("This endpoint is disabled ({why}): nothing is sent to it.")));
    }
    page.block(Block::Facts(vec![
        ("URL".into(), e.url.clone()),
        ("Event types".into(), if e.event_types.is_empty() { "all".into() } else { e.event_types.join(" ") }),
        ("Delivered up to position".into(), e.position.to_string()),
        ("Failed attempts in a row".into(), e.attempts.to_string()),
        ("Id".into(), e.id.to_string()),
    ]))
    .block(Block::Form(FormView::button(format!("{b}/rotate"), "Rotate signing secret", false).disabled_if(read_only)))
    .block(Block::Form(
        FormView::post(format!("{b}/replay-since"), "Replay since")
            .field(Field::text("datetime-local", "since", "Every event since (UTC)", "").required())
            .disabled_if(read_only || !e.enabled),
    ))
    .block(Block::table(
        "Delivery log",
        vec!["When", "Event", "Attempt", "Status", "Latency", "Response or error", ""],
        log.iter()
            .map(|d| {
                let status = match d.status {
                    Some(s) if (200..300).contains(&s) => Cell::Badge("ok", s.to_string()),
                    Some(s) => Cell::Badge("bad", s.to_string()),
                    None => Cell::Badge("bad", "no answer".into()),
                };
                let attempt = if d.replay { "replay".to_owned() } else { d.attempt.to_string() };
                vec![
                    Cell::Text(d.created_at.format("%Y-%m-%d %H:%M:%S").to_string()),
                    Cell::Text(format!("{} ({})", d.event_type, d.event_id)),
                    Cell::Text(attempt),
                    status,
                    Cell::Text(format!("{} ms", d.latency_ms)),
                    Cell::Text(d.error.clone().or_else(|| d.response_excerpt.clone()).unwrap_or_default()),
                    Cell::Action(
                        FormView::button(format!("{b}/replay-event"), "Replay", false)
                            .field(Field::hidden("event_id", &d.event_id.to_string()))
                            .disabled_if(read_only || !e.enabled),
                    ),
                ]
            })
            .collect(),
        "Nothing delivered yet.",
    ))
    .ok()
}

async fn webhook_action(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    headers: axum::http::HeaderMap,
    Path((slug, pid, wid, act)): Path<(String, String, Uuid, String)>,
    Form(f): Form<WebhookForm>,
) -> Response {
    use authio_core::events::webhooks;
    page_try!(check_csrf(&user, f.csrf.as_deref()));
    let m = page_try!(member(&state, user, &slug).await);
    let (p, target) = page_try!(project(&state, &m, &pid).await);
    let auth = page_try!(m.authorize(Permission::CredentialsManage, &target));
    let (router, clock, info) = (&state.router, state.clock.as_ref(), client_info(&headers));
    let list = format!("{}/webhooks", base(&m, &p));
    let back = format!("{list}/{wid}");
    let bad = |field: &'static str| CoreError::Invalid(authio_core::types::ValidationError::Field(field));
    let result = match act.as_str() {
        "enable" | "disable" => {
            let patch = webhooks::EndpointPatch { enabled: Some(act == "enable"), ..Default::default() };
            webhooks::update(router, clock, &auth, wid, &patch, &info).await.map(|_| format!("{list}?done=saved"))
        }
        "delete" => {
            webhooks::delete(router, clock, &auth, wid, &info).await.map(|_| format!("{list}?done=deleted-endpoint"))
        }
        "rotate" => {
            let secret = core_try!(
                webhooks::rotate_secret(router, clock, state.identity.master_key(), &auth, wid, &info).await,
                &m.user
            );
            let label = "New signing secret (the previous one keeps signing beside it for 24 hours)".to_owned();
            let shown = Block::Secret(super::Secret { label, value: secret });
            let read = page_try!(m.also(&auth, Permission::ProjectRead));
            return webhooks_list_page(&state, &m, &p, &read, Some(shown), &Flash::default()).await;
        }
        "replay-event" => match f.event_id.as_deref().map(str::trim).map(Uuid::parse_str) {
            Some(Ok(event)) => webhooks::replay_event(router, clock, &auth, wid, event, &info)
                .await
                .map(|_| format!("{back}?done=replaying")),
            _ => Err(bad("event_id")),
        },
        "replay-since" => {
            let since = f.since.as_deref().map(str::trim).and_then(|v| {
                chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M")
                    .or_else(|_| chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S"))
                    .ok()
            });
            match since {
                Some(t) => webhooks::replay_since(router, clock, &auth, wid, t.and_utc(), &info)
                    .await
                    .map(|_| format!("{back}?done=replaying")),
                None => Err(bad("since (a date and time)")),
            }
        }
        _ => return error_page(StatusCode::NOT_FOUND, "No such action.", Some(&m.user)),
    };
    match result {
        Ok(to) => Redirect::to(&to).into_response(),
        Err(e) => core_error_page(e, Some(&m.user)),
    }
}
