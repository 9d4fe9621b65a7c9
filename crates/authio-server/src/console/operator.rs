//! Operators' pages: every tenant (kind, plan, strategy, home, route epoch, move state, size),
//! a tenant's detail and plan, dedicated hosts, dedicated-database requests (approve, decline,
//! start the move) and a move watched live, and the audit log across tenants.
use std::sync::Arc;
use std::time::Duration;

use authio_core::audit::Actor;
use authio_core::authz::{self, Permission, Target};
use authio_core::tenancy::console::{DbRequest, TenantOverview};
use authio_core::tenancy::control::Tenant;
use authio_core::tenancy::moves::{MoveRun, Progress};
use authio_core::types::Plan;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Form;
use serde::Deserialize;
use uuid::Uuid;

use super::{check_csrf, console_of, core_error_page, error_page, Console, ConsoleUser, Flash, SignedIn};
use super::{Block, Cell, Field, FormView, Live, LiveView, PageView};
use crate::AppState;

pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/console/tenants", get(tenants))
        .route("/console/tenants/{slug}", get(tenant_detail))
        .route("/console/tenants/{slug}/plan", post(change_plan))
        .route("/console/hosts", get(hosts))
        .route("/console/requests", get(requests))
        .route("/console/requests/{id}/approve", post(approve))
        .route("/console/requests/{id}/decline", post(decline))
        .route("/console/requests/{id}/move", post(start_move))
        .route("/console/moves/{slug}", get(move_page))
        .route("/console/moves/{slug}/live", get(move_live))
        .route("/console/audit", get(audit))
}

/// The operator's console, or 403 for anyone else (customers included): the seam's
/// `PlatformOperate` on the platform.
fn operator<'a>(state: &'a AppState, user: &ConsoleUser) -> Result<&'a Arc<Console>, Box<Response>> {
    let console = console_of(state)?;
    if authz::authorize(&user.principal, Permission::PlatformOperate, &Target::Platform).is_err() {
        return Err(Box::new(error_page(
            StatusCode::FORBIDDEN,
            "The operator console is for Authio's operators.",
            Some(user),
        )));
    }
    Ok(console)
}

/// The operator as the audit log names them (the authorized principal).
fn actor(user: &ConsoleUser) -> Actor {
    user.principal.actor()
}

fn size_text(t: &TenantOverview) -> String {
    match t.size {
        Some(s) => format!("{} users · {} sessions · {} audit events", s.users, s.sessions, s.audit_events),
        None => "unreachable".into(),
    }
}

fn request_badge(r: &DbRequest) -> Cell {
    let kind = match r.state.as_str() {
        "failed" => "bad",
        "done" => "ok",
        _ => "warn",
    };
    Cell::Badge(kind, format!("{} {}", r.direction.replace('_', " "), r.state))
}

async fn tenants(State(state): State<AppState>, SignedIn(user): SignedIn) -> Response {
    let console = page_try!(operator(&state, &user));
    let all = core_try!(console.control.tenant_overview(&console.key).await, &user);
    let rows = all
        .iter()
        .map(|t| {
            vec![
                Cell::Link(format!("/console/tenants/{}", t.tenant.slug), t.tenant.slug.clone()),
                Cell::Text(t.tenant.kind.as_str().to_owned()),
                Cell::Text(t.tenant.plan.as_str().to_owned()),
                Cell::Text(t.tenant.db_strategy.as_str().to_owned()),
                Cell::Code(t.home.clone()),
                Cell::Text(t.tenant.route_epoch.to_string()),
                match (&t.move_phase, &t.request) {
                    (_, Some(r)) if r.state == "moving" => Cell::Link(
                        format!("/console/moves/{}", t.tenant.slug),
                        format!("moving ({})", t.move_phase.as_deref().unwrap_or("starting")),
                    ),
                    (Some(p), _) => Cell::Text(format!("last move {p}")),
                    (None, _) => Cell::Text("never moved".into()),
                },
                Cell::Text(size_text(t)),
                t.request.as_ref().map(request_badge).unwrap_or(Cell::Text(String::new())),
            ]
        })
        .collect();
    PageView::new("Tenants", Some(&user))
        .at("/console/tenants")
        .block(Block::table(
            "Every tenant, at its home",
            vec!["Tenant", "Kind", "Plan", "db_strategy", "Home database", "Route epoch", "Move", "Size", "Request"],
            rows,
            "No tenants yet.",
        ))
        .ok()
}

async fn tenant_by_slug(console: &Console, slug: &str, user: &ConsoleUser) -> Result<Tenant, Box<Response>> {
    match console.control.tenant_by_slug(slug).await {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(Box::new(error_page(StatusCode::NOT_FOUND, "No such tenant.", Some(user)))),
        Err(e) => Err(Box::new(core_error_page(e, Some(user)))),
    }
}

/// What `?done=` says on the operator's pages.
const DONE: &[(&str, &str)] = &[
    ("plan", "Plan changed."),
    ("approved", "Approved. Provisioning runs in the background; start the move once it is provisioned."),
    ("declined", "Request declined."),
];

async fn tenant_detail(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    Path(slug): Path<String>,
    Query(f): Query<Flash>,
) -> Response {
    let console = page_try!(operator(&state, &user));
    let t = page_try!(tenant_by_slug(console, &slug, &user).await);
    let (projects, moves, request, members) = core_try!(
        tokio::try_join!(
            console.control.projects(t.id),
            console.control.moves(t.id),
            console.control.latest_request(t.id),
            console.control.members(t.id)
        ),
        &user
    );
    let facts = vec![
        ("Name".into(), t.name.clone()),
        ("Kind".into(), t.kind.as_str().to_owned()),
        ("Plan".into(), t.plan.as_str().to_owned()),
        ("db_strategy".into(), t.db_strategy.as_str().to_owned()),
        ("Route epoch".into(), t.route_epoch.to_string()),
        ("Created".into(), t.created_at.format("%Y-%m-%d %H:%M UTC").to_string()),
        ("Id".into(), t.id.to_string()),
    ];
    let plans = ["free", "pro", "enterprise"].iter().map(|p| ((*p).to_owned(), (*p).to_owned())).collect();
    let mut page = PageView::new(format!("Tenant {}", t.slug), Some(&user)).at("/console/tenants");
    page = f.onto(page, DONE);
    page = page.block(Block::Facts(facts)).block(Block::heading("Plan")).block(Block::Form(
        FormView::post(format!("/console/tenants/{}/plan", t.slug), "Change plan").field(Field::select(
            "plan",
            "Plan",
            plans,
            t.plan.as_str(),
        )),
    ));
    if let Some(r) = request.filter(DbRequest::is_open) {
        page = page
            .block(Block::heading("Dedicated database request"))
            .block(Block::Para(format!(
                "{} requested by {}: {}.",
                r.direction.replace('_', " "),
                r.requested_by,
                r.state
            )))
            .block(Block::Para("Decide it on the requests page; watch a move on the move page.".into()));
    }
    // Live impersonations in the tenant's projects: who acts as whom, why, until when.
    // Read at the tenant's home: while it moves (or its database is down) the rest of the page
    // still serves, with a notice instead of the table.
    let mut impersonations = Vec::new();
    let mut unread = None;
    if t.kind == authio_db::TenantKind::Customer {
        for p in &projects {
            let target = Target::Project { tenant_id: t.id, project_id: p.id, tenant_kind: t.kind };
            let read = match authz::authorize(&user.principal, Permission::UsersRead, &target) {
                Ok(auth) => {
                    authio_core::identity::sessions::live_impersonations(&state.router, &auth, state.clock.now()).await
                }
                Err(e) => Err(e),
            };
            match read {
                Ok(live) => impersonations.extend(live.into_iter().map(|s| (p.slug.clone(), s))),
                Err(e) => unread = Some(e.to_string()),
            }
        }
    }
    if let Some(e) = unread {
        page = page.block(Block::notice("warn", format!("Live impersonations could not be read now: {e}")));
    }
    page.block(Block::table(
        "Live impersonations",
        vec!["Project", "User", "Impersonator", "Reason", "Ends"],
        impersonations
            .into_iter()
            .map(|(project, s)| {
                vec![
                    Cell::Text(project),
                    Cell::Code(s.user_id.to_string()),
                    Cell::Badge("warn", s.impersonator.unwrap_or_default()),
                    Cell::Text(s.impersonation_reason.unwrap_or_default()),
                    Cell::Text(s.absolute_expires_at.format("%Y-%m-%d %H:%M UTC").to_string()),
                ]
            })
            .collect(),
        "No one is being impersonated.",
    ))
    .block(Block::table(
        "Projects",
        vec!["Project", "Slug", "Id"],
        projects
            .iter()
            .map(|p| vec![Cell::Text(p.name.clone()), Cell::Text(p.slug.clone()), Cell::Code(p.id.to_string())])
            .collect(),
        "No projects.",
    ))
    .block(Block::table(
        "Dashboard members",
        vec!["Email", "Role"],
        members.into_iter().map(|(email, role)| vec![Cell::Text(email), Cell::Text(role.as_str().into())]).collect(),
        "No members: add one with `authio tenant add-member`.",
    ))
    .block(Block::table(
        "Moves",
        vec!["Started", "Direction", "Phase", "Write pause", "Verified", "Error"],
        moves
            .iter()
            .map(|m| {
                vec![
                    Cell::Link(
                        format!("/console/moves/{}", t.slug),
                        m.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    ),
                    Cell::Text(m.direction.as_str().replace('_', " ")),
                    Cell::Text(m.phase.clone()),
                    Cell::Text(m.pause_ms.map(|p| format!("{p:.1} ms")).unwrap_or_default()),
                    Cell::Text(m.verified.map(|v| if v { "yes" } else { "no" }.to_owned()).unwrap_or_default()),
                    Cell::Text(m.error.clone().unwrap_or_default()),
                ]
            })
            .collect(),
        "This tenant has never moved.",
    ))
    .ok()
}

#[derive(Deserialize)]
struct PlanForm {
    csrf: Option<String>,
    plan: String,
}

async fn change_plan(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    Path(slug): Path<String>,
    Form(f): Form<PlanForm>,
) -> Response {
    page_try!(check_csrf(&user, f.csrf.as_deref()));
    let console = page_try!(operator(&state, &user));
    let t = page_try!(tenant_by_slug(console, &slug, &user).await);
    let plan = match Plan::parse(&f.plan) {
        Ok(p) => p,
        Err(e) => return core_error_page(e.into(), Some(&user)),
    };
    match console.control.set_plan(t.id, plan, actor(&user)).await {
        Ok(_) => Redirect::to(&format!("/console/tenants/{slug}?done=plan")).into_response(),
        Err(e) => core_error_page(e, Some(&user)),
    }
}

async fn hosts(State(state): State<AppState>, SignedIn(user): SignedIn) -> Response {
    let console = page_try!(operator(&state, &user));
    let hosts = core_try!(console.control.list_dedicated_hosts().await, &user);
    PageView::new("Dedicated hosts", Some(&user))
        .at("/console/hosts")
        .block(Block::table(
            "Registered PostgreSQL servers for dedicated databases",
            vec!["Host", "Databases", "Registered"],
            hosts
                .iter()
                .map(|h| {
                    vec![
                        Cell::Text(h.name.clone()),
                        Cell::Text(h.databases.to_string()),
                        Cell::Text(h.created_at.format("%Y-%m-%d").to_string()),
                    ]
                })
                .collect(),
            "No hosts yet: add one with `authio dedicated-host add`.",
        ))
        .ok()
}

async fn requests(State(state): State<AppState>, SignedIn(user): SignedIn, Query(f): Query<Flash>) -> Response {
    let console = page_try!(operator(&state, &user));
    let (all, hosts) =
        core_try!(tokio::try_join!(console.control.db_requests(false), console.control.list_dedicated_hosts()), &user);
    let host_options: Vec<(String, String)> = hosts.iter().map(|h| (h.name.clone(), h.name.clone())).collect();
    let first_host = host_options.first().map(|h| h.0.clone()).unwrap_or_default();
    let rows = all
        .iter()
        .map(|r| {
            let mut actions = Vec::new();
            let base = format!("/console/requests/{}", r.id);
            let provisioned_here = r.direction == "to_shared";
            let here = console.running.lock().map(|s| s.contains(&r.id)).unwrap_or(false);
            if matches!(r.state.as_str(), "requested" | "failed") || (r.state == "provisioning" && !here) {
                // A provisioning that no task of this node runs may have died with its node:
                // approving again retries it (another node still at it keeps the lock).
                let label = if r.state == "provisioning" { "Retry provisioning" } else { "Approve" };
                let mut approve = FormView::post(format!("{base}/approve"), label).inline();
                if !provisioned_here {
                    approve = approve.field(Field::select("host", "on host", host_options.clone(), &first_host));
                }
                actions.push(Cell::Action(approve));
                if r.state != "provisioning" {
                    actions.push(Cell::Action(FormView::button(format!("{base}/decline"), "Decline", true)));
                }
            }
            if matches!(r.state.as_str(), "provisioned" | "failed") {
                actions.push(Cell::Action(FormView::button(format!("{base}/move"), "Start move", false)));
            }
            if r.state == "moving" {
                if !here {
                    // No task runs it in this node (a restart): resuming finishes the move.
                    actions.push(Cell::Action(FormView::button(format!("{base}/move"), "Resume move", false)));
                }
                actions.push(Cell::Link(format!("/console/moves/{}", r.tenant_slug), "Watch".into()));
            }
            let mut row = vec![
                Cell::Link(format!("/console/tenants/{}", r.tenant_slug), r.tenant_slug.clone()),
                request_badge(r),
                Cell::Text(r.requested_by.clone()),
                Cell::Text(r.created_at.format("%Y-%m-%d %H:%M").to_string()),
                Cell::Text(r.decided_by.clone().unwrap_or_default()),
                Cell::Text(r.error.clone().unwrap_or_default()),
            ];
            row.extend(actions);
            row
        })
        .collect();
    let mut page = PageView::new("Dedicated DB requests", Some(&user)).at("/console/requests");
    page = f.onto(page, DONE);
    page.block(Block::table(
        "Requests from customers' billing pages, newest first",
        vec!["Tenant", "Request", "Requested by", "Filed", "Decided by", "Error", "Actions"],
        rows,
        "No requests.",
    ))
    .ok()
}

#[derive(Deserialize)]
struct ApproveForm {
    csrf: Option<String>,
    host: Option<String>,
}

async fn approve(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    Path(id): Path<Uuid>,
    Form(f): Form<ApproveForm>,
) -> Response {
    page_try!(check_csrf(&user, f.csrf.as_deref()));
    let console = page_try!(operator(&state, &user)).clone();
    // Check the host before anything changes: a refused approval writes nothing.
    let wanted = core_try!(console.control.request(id).await, &user);
    let host = f.host.filter(|h| !h.is_empty());
    if wanted.direction == "to_dedicated" {
        let known = match console.control.list_dedicated_hosts().await {
            Ok(hosts) => hosts.iter().any(|h| Some(&h.name) == host.as_ref()),
            Err(e) => return core_error_page(e, Some(&user)),
        };
        if !known {
            return error_page(StatusCode::UNPROCESSABLE_ENTITY, "Choose a registered dedicated host.", Some(&user));
        }
    }
    let r = core_try!(console.control.approve_request(id, actor(&user)).await, &user);
    if let (true, Some(host)) = (r.state == "provisioning", host) {
        let task_console = console.clone();
        let started = spawn_tracked(console.clone(), id, async move {
            if let Err(e) = task_console.control.provision_for_request(id, &host, &task_console.key).await {
                tracing::error!(request = %id, error = %e, "provisioning for a request failed");
            }
        });
        if !started {
            return error_page(StatusCode::CONFLICT, "This request is already being provisioned here.", Some(&user));
        }
    }
    Redirect::to("/console/requests?done=approved").into_response()
}

async fn decline(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    Path(id): Path<Uuid>,
    Form(f): Form<super::CsrfOnly>,
) -> Response {
    page_try!(check_csrf(&user, f.csrf.as_deref()));
    let console = page_try!(operator(&state, &user));
    match console.control.decline_request(id, actor(&user)).await {
        Ok(_) => Redirect::to("/console/requests?done=declined").into_response(),
        Err(e) => core_error_page(e, Some(&user)),
    }
}

/// Start (or resume) the request's move in the background; its page shows the phases live.
async fn start_move(
    State(state): State<AppState>,
    SignedIn(user): SignedIn,
    Path(id): Path<Uuid>,
    Form(f): Form<super::CsrfOnly>,
) -> Response {
    page_try!(check_csrf(&user, f.csrf.as_deref()));
    let console = page_try!(operator(&state, &user)).clone();
    // Claimed here, in one step (two quick clicks start one task); released by the task.
    if !console.running.lock().map(|mut s| s.insert(id)).unwrap_or(false) {
        return error_page(StatusCode::CONFLICT, "This request's move is already running.", Some(&user));
    }
    let release = |console: &Console| {
        if let Ok(mut s) = console.running.lock() {
            s.remove(&id);
        }
    };
    let r = match console.control.request(id).await {
        // Moving already: resume it (a node died with its task).
        Ok(r) if r.state == "moving" => r,
        _ => match console.control.begin_request_move(id, actor(&user)).await {
            Ok(r) => r,
            Err(e) => {
                release(&console);
                return core_error_page(e, Some(&user));
            }
        },
    };
    let tenant = r.tenant_id;
    let slug = r.tenant_slug.clone();
    spawn_claimed(console.clone(), id, async move {
        let reporter = console.clone();
        let progress = move |p: &Progress| {
            if let Ok(mut m) = reporter.progress.lock() {
                m.insert(tenant, p.clone());
            }
        };
        let run = MoveRun { progress: &progress, kill_at: None, gate_timeout: Duration::from_secs(5) };
        if let Err(e) = console.control.move_for_request(id, &console.key, &run).await {
            tracing::error!(request = %id, error = %e, "a requested move failed");
        }
        if let Ok(mut m) = console.progress.lock() {
            m.remove(&tenant);
        }
    });
    Redirect::to(&format!("/console/moves/{slug}")).into_response()
}

/// Run a request's task in the background, remembered as running in this node meanwhile
/// (refused, returning false, when it already runs here).
fn spawn_tracked(
    console: Arc<Console>,
    id: Uuid,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) -> bool {
    if !console.running.lock().map(|mut r| r.insert(id)).unwrap_or(false) {
        return false;
    }
    spawn_claimed(console, id, task);
    true
}

/// Run a task already claimed in `running`; the claim ends with it.
fn spawn_claimed(console: Arc<Console>, id: Uuid, task: impl std::future::Future<Output = ()> + Send + 'static) {
    tokio::spawn(async move {
        task.await;
        if let Ok(mut r) = console.running.lock() {
            r.remove(&id);
        }
    });
}

/// What a tenant's move looks like now: the request's state, the move's phase (from the
/// control plane, whichever node runs it) and the copy's progress (reported to this node).
async fn move_view(console: &Console, t: &Tenant) -> Result<LiveView, authio_core::CoreError> {
    let (request, moves) = tokio::try_join!(console.control.latest_request(t.id), console.control.moves(t.id))?;
    let newest = moves.first();
    let progress = console.progress.lock().ok().and_then(|m| m.get(&t.id).cloned());
    let mut lines = Vec::new();
    let mut percent = None;
    if let Some(p) = &progress {
        percent = Some(if p.rows_total > 0 { (p.rows_copied * 100 / p.rows_total).clamp(0, 100) } else { 100 });
        lines.push(format!(
            "{} of {} rows copied · tables ready {}/{} · replication lag {} kB",
            p.rows_copied,
            p.rows_total,
            p.tables_ready,
            p.tables,
            p.lag_bytes / 1024
        ));
    }
    let request_state = request.as_ref().map(|r| r.state.clone());
    let running = matches!(request_state.as_deref(), Some("moving" | "provisioning"));
    let state = match (newest, request_state.as_deref()) {
        (_, Some("provisioning")) => "provisioning the dedicated database".to_owned(),
        (Some(m), Some("moving")) if m.finished_at.is_none() => {
            format!("{} ({})", m.phase, m.direction.as_str().replace('_', " "))
        }
        (_, Some("moving")) => "starting".to_owned(),
        (Some(m), _) => {
            percent = percent.or(Some(100).filter(|_| m.phase == "done"));
            format!("{} ({})", m.phase, m.direction.as_str().replace('_', " "))
        }
        (None, _) => "no move yet".to_owned(),
    };
    if let Some(m) = newest {
        if let Some(p) = m.pause_ms {
            lines.push(format!("write pause {p:.1} ms"));
        }
        if let Some(e) = &m.error {
            lines.push(format!("error: {e}"));
        }
    }
    if let Some(r) = &request {
        lines.push(format!("request: {} {}", r.direction.replace('_', " "), r.state));
        if let Some(e) = &r.error {
            lines.push(format!("request error: {e}"));
        }
    }
    lines.push(format!("tenant lives on: {} database (route epoch {})", t.db_strategy, t.route_epoch));
    Ok(LiveView { title: format!("Move of {}", t.slug), state, percent, lines, finished: !running })
}

async fn move_page(State(state): State<AppState>, SignedIn(user): SignedIn, Path(slug): Path<String>) -> Response {
    let console = page_try!(operator(&state, &user));
    let t = page_try!(tenant_by_slug(console, &slug, &user).await);
    let view = core_try!(move_view(console, &t).await, &user);
    PageView::new(format!("Move of {slug}"), Some(&user))
        .at("/console/requests")
        .block(Block::Para(
            "Phases: copying (the tenant's rows replicate to the new home while it keeps serving), cutover (its writes pause while the last ones arrive and the route flips), cleanup, done.".into(),
        ))
        .block(Block::Live(Live { url: format!("/console/moves/{slug}/live"), view }))
        .ok()
}

async fn move_live(State(state): State<AppState>, SignedIn(user): SignedIn, Path(slug): Path<String>) -> Response {
    let console = page_try!(operator(&state, &user));
    let t = page_try!(tenant_by_slug(console, &slug, &user).await);
    match move_view(console, &t).await {
        Ok(v) => v.fragment(),
        Err(e) => core_error_page(e, Some(&user)),
    }
}

#[derive(Deserialize)]
struct AuditQuery {
    tenant: Option<String>,
    action: Option<String>,
}

async fn audit(State(state): State<AppState>, SignedIn(user): SignedIn, Query(q): Query<AuditQuery>) -> Response {
    let console = page_try!(operator(&state, &user));
    let tenant = q.tenant.filter(|s| !s.is_empty());
    let action = q.action.filter(|s| !s.is_empty());
    let (events, unreachable) =
        core_try!(console.control.audit_across(&console.key, tenant.as_deref(), action.as_deref(), 200).await, &user);
    let mut page = PageView::new("Audit log across tenants", Some(&user)).at("/console/audit");
    if !unreachable.is_empty() {
        page = page.block(Block::notice(
            "error",
            format!("Not included (their dedicated databases could not be read): {}", unreachable.join(", ")),
        ));
    }
    page.block(Block::Form(
        FormView::get("/console/audit", "Filter")
            .field(Field::text("text", "tenant", "Tenant slug", tenant.as_deref().unwrap_or_default()))
            .field(
                Field::text("text", "action", "Action", action.as_deref().unwrap_or_default())
                    .placeholder("user.signed_in"),
            ),
    ))
    .block(Block::table(
        "The newest 200 events, each read at its tenant's home",
        vec!["When", "Tenant", "Action", "Actor", "Target", "Project"],
        events
            .iter()
            .map(|e| {
                vec![
                    Cell::Text(e.occurred_at.format("%Y-%m-%d %H:%M:%S").to_string()),
                    Cell::Text(e.tenant_slug.clone()),
                    Cell::Code(e.action.clone()),
                    Cell::Text(format!(
                        "{} {}",
                        e.actor_type,
                        e.actor_name.clone().or_else(|| e.actor_id.clone()).unwrap_or_default()
                    )),
                    Cell::Text(e.target.clone().unwrap_or_default()),
                    Cell::Code(e.project_id.to_string()),
                ]
            })
            .collect(),
        "No events match.",
    ))
    .ok()
}
