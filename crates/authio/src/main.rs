//! The `authio` binary: run a development stack, serve, migrate, and manage tenants.
mod config;
mod dev;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use authio_core::tenancy::control::ControlPlane;
use authio_core::tenancy::dedicated::ProvisionTarget;
use authio_core::tenancy::moves::{Direction, MoveRun, Progress, TableCheck as MoveCheck};
use authio_core::types::{DisplayName, Plan, Slug};
use authio_core::SystemClock;
use authio_db::{MasterKey, Router, RouterSettings, TenantKind};
use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Parser)]
#[command(name = "authio", version, about = "Authio: self-hostable, multi-tenant authentication", long_about = None)]
struct Cli {
    /// Configuration file (TOML). `AUTHIO_*` environment variables override it.
    #[arg(long, global = true, env = "AUTHIO_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a complete local stack: two private PostgreSQL clusters under ./.authio (a shared
    /// host and a dedicated host, wal_level = logical), migrations, demo data, and the server
    /// on http://127.0.0.1:8080. Prints URLs and credentials. Ctrl-C stops everything.
    Dev(dev::DevArgs),
    /// Serve the API against configured databases (see `--config` and AUTHIO_* variables).
    Serve,
    /// Apply pending migrations to the shared database and every recorded dedicated database.
    Migrate,
    /// Manage tenants (customers and the one platform tenant).
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Make a user of the platform tenant an operator (the management API accepts their
    /// platform-kind tokens for every project).
    GrantOperator {
        /// The user's email (a user of the platform tenant).
        #[arg(long)]
        email: String,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Servers that hold dedicated databases.
    DedicatedHost {
        #[command(subcommand)]
        command: DedicatedHostCommand,
    },
    /// Manage a project's signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute a tenant's audit chains at its home (shared or dedicated) and name the first
    /// broken link of each project. Exits non-zero if any chain is broken.
    Verify {
        /// The tenant's slug.
        #[arg(long)]
        tenant: String,
    },
    /// Delete audit events past their retention (the tenant's own setting, else its plan's:
    /// free 30 days, pro 90, enterprise 365), leaving a sealed checkpoint so what remains still
    /// verifies. Runs as authio_audit_retention at each tenant's home.
    Purge {
        /// One tenant's slug (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Seal each audit chain's head into an anchor on the shared database (with the master
    /// key), so a chain later rewritten at the tenant's home, head included, fails `verify`.
    /// `serve` does this every `audit_anchor_interval_mins`.
    Anchor {
        /// One tenant's slug (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Set a tenant's own audit retention in days, or `--plan-default` to follow its plan.
    Retention {
        #[arg(long)]
        tenant: String,
        #[arg(long, conflicts_with = "plan_default", required_unless_present = "plan_default")]
        days: Option<i32>,
        #[arg(long)]
        plan_default: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Retire the current key (still published until the tokens it signed expire), make the
    /// next key (already published) current, and publish a new next key.
    Rotate {
        /// The project's id.
        #[arg(long)]
        project: uuid::Uuid,
        /// Algorithm of the new next key: EdDSA (default), ES256 or RS256. It signs from the
        /// rotation after this one, once every verifier has seen it.
        #[arg(long)]
        alg: Option<String>,
        /// Rotate even if the next key was published less than 7 minutes ago (verifiers that
        /// cached the key set before may then refuse new tokens for a while).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant with a default project, and print a project API key (shown once).
    Create {
        /// Lowercase letters, digits and inner hyphens, at most 63.
        #[arg(long)]
        slug: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// free, pro or enterprise.
        #[arg(long, default_value = "free")]
        plan: String,
        /// customer (default) or platform (only one platform tenant may exist).
        #[arg(long, default_value = "customer")]
        kind: String,
    },
    /// List tenants with kind, plan, database strategy and route epoch.
    List,
    /// Let a platform user (by email) manage a customer tenant in the dashboard, as owner,
    /// admin or viewer (run again to change the role).
    AddMember {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        email: String,
        /// owner, admin or viewer.
        #[arg(long, default_value = "admin")]
        role: String,
    },
    /// Take a platform user's dashboard access to a customer tenant away.
    RemoveMember {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        email: String,
    },
    /// Show one tenant, its projects and its moves.
    Show {
        /// The tenant's slug.
        slug: String,
    },
    /// Create the tenant's dedicated database (on a registered host, or adopt an existing
    /// empty database), migrate it, and record it. Enterprise plan only; never the platform
    /// tenant. The tenant keeps living where it is until `tenant move --to dedicated`.
    ProvisionDedicated {
        #[arg(long)]
        tenant: String,
        /// A host registered with `authio dedicated-host add`.
        #[arg(long, conflicts_with = "dsn", required_unless_present = "dsn")]
        host: Option<String>,
        /// Admin URL of an existing empty database to adopt.
        #[arg(long)]
        dsn: Option<String>,
        /// With --dsn: the URL the app connects with (default: the admin URL as authio_app).
        #[arg(long, requires = "dsn")]
        app_dsn: Option<String>,
    },
    /// Move a tenant's data online to its dedicated database or back to shared, with logical
    /// replication; its users keep signing in. Prints the measured write pause at the end.
    Move {
        #[arg(long)]
        tenant: String,
        /// dedicated or shared.
        #[arg(long, required_unless_present_any = ["resume", "abort"])]
        to: Option<String>,
        /// Finish an unfinished move from the phase it reached.
        #[arg(long, conflicts_with_all = ["abort", "to"])]
        resume: bool,
        /// Roll an unfinished move back (refused once the target is home).
        #[arg(long, conflicts_with = "to")]
        abort: bool,
        /// How long the cutover waits for the tenant's writes in flight, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        gate_timeout_ms: u64,
    },
    /// Compare the tenant's rows at its home with the copy at its previous home, per table
    /// (row counts and checksums). Exits non-zero when they differ.
    Verify {
        #[arg(long)]
        tenant: String,
    },
    /// Delete the copy a finished move left at the tenant's previous home, after the rollback
    /// window. Refused while a move is unfinished.
    PurgeSource {
        #[arg(long)]
        tenant: String,
        /// Hours after a move during which its old copy is kept.
        #[arg(long, default_value_t = 24)]
        rollback_window_hours: u64,
        /// Purge now, inside the rollback window.
        #[arg(long)]
        now: bool,
    },
}

#[derive(Subcommand)]
enum DedicatedHostCommand {
    /// Register a PostgreSQL server that can hold dedicated databases.
    Add {
        /// A name for the host (lowercase letters, digits, hyphens).
        #[arg(long)]
        name: String,
        /// A superuser URL on that server (stored encrypted with the master key).
        #[arg(long)]
        admin_dsn: String,
        /// The password of the cluster-wide role authio_app if it already has one there.
        #[arg(long, env = "AUTHIO_DEDICATED_APP_PASSWORD")]
        app_password: Option<String>,
    },
    /// List registered hosts and how many dedicated databases each holds.
    List,
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AUTHIO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "pretty" {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::Serve => {
            let cfg = Config::load(cli.config.as_deref())?;
            init_logging(&cfg.log_format);
            serve(cfg).await
        }
        Command::Migrate => {
            let cfg = Config::load(cli.config.as_deref())?;
            migrate_all(&cfg).await
        }
        Command::Tenant { command } => {
            let cfg = Config::load(cli.config.as_deref())?;
            tenant(&cfg, command).await
        }
        Command::DedicatedHost { command } => {
            let cfg = Config::load(cli.config.as_deref())?;
            dedicated_host(&cfg, command).await
        }
        Command::Audit { command: AuditCommand::Verify { tenant } } => {
            let cfg = Config::load(cli.config.as_deref())?;
            let cp = ControlPlane::new(cfg.admin_url.clone());
            let Some(t) = cp.tenant_by_slug(&tenant).await? else { bail!("no tenant with slug {tenant:?}") };
            let reports = cp.verify_audit(&t, master_key(&cfg)?.as_ref()).await?;
            let mut broken = 0;
            for r in &reports {
                match &r.first_broken {
                    None => println!("project {}  {} events  chain intact", r.project_id, r.events),
                    Some((seq, why)) => {
                        broken += 1;
                        println!("project {}  {} events  BROKEN at event {seq}: {why}", r.project_id, r.events);
                    }
                }
            }
            if reports.is_empty() {
                println!("no audit events for {tenant}");
            }
            let pending = cp.pending_audit_events(t.id).await?;
            if pending > 0 {
                println!("{pending} event(s) recorded but not yet relayed to the tenant's home (checked once there)");
            }
            if broken > 0 {
                bail!("{broken} broken chain(s)");
            }
            Ok(())
        }
        Command::Audit { command: AuditCommand::Purge { tenant } } => {
            let cfg = Config::load(cli.config.as_deref())?;
            let key =
                master_key(&cfg)?.context("a master key is required (AUTHIO_MASTER_KEY): it seals checkpoints")?;
            let deleted = purge_audit(&cfg, &key, tenant.as_deref()).await?;
            println!("{deleted} audit event(s) past retention deleted");
            Ok(())
        }
        Command::Audit { command: AuditCommand::Anchor { tenant } } => {
            let cfg = Config::load(cli.config.as_deref())?;
            let key = require_master_key(&cfg)?;
            let written = anchor_audit(&cfg, &key, tenant.as_deref()).await?;
            println!("{written} anchor(s) sealed");
            Ok(())
        }
        Command::Audit { command: AuditCommand::Retention { tenant, days, plan_default: _ } } => {
            let cfg = Config::load(cli.config.as_deref())?;
            let cp = ControlPlane::new(cfg.admin_url.clone());
            let Some(t) = cp.tenant_by_slug(&tenant).await? else { bail!("no tenant with slug {tenant:?}") };
            cp.set_audit_retention(t.id, days).await?;
            match days {
                Some(d) => println!("{tenant}: audit events kept {d} days"),
                None => println!("{tenant}: audit retention follows the plan ({})", t.plan.as_str()),
            }
            Ok(())
        }
        Command::GrantOperator { email } => {
            let cfg = Config::load(cli.config.as_deref())?;
            let email = authio_core::types::Email::parse(&email)?;
            match ControlPlane::new(cfg.admin_url.clone()).grant_operator(&email).await {
                Ok(()) => {}
                Err(authio_core::CoreError::NotFound(_)) => bail!("no platform-tenant user {email}"),
                Err(e) => return Err(e.into()),
            }
            println!("{email} is an operator; tokens issued from now on carry role=operator");
            Ok(())
        }
        Command::Keys { command: KeysCommand::Rotate { project, alg, force } } => {
            let cfg = Config::load(cli.config.as_deref())?;
            let alg = alg
                .map(|a| authio_core::crypto::keys::Alg::parse(&a).context("--alg must be EdDSA, ES256 or RS256"))
                .transpose()?;
            let key = master_key(&cfg)?
                .context("a master key is required (AUTHIO_MASTER_KEY): keys are encrypted with it")?;
            let r = ControlPlane::new(cfg.admin_url.clone())
                .rotate_keys(project, alg, &key, chrono::Utc::now(), force)
                .await?;
            println!(
                "current  {}
next     {} ({})",
                r.current_kid, r.next_kid, r.next_alg
            );
            if let (Some(kid), Some(until)) = (r.retired_kid, r.retired_published_until) {
                println!("retired  {kid} (published until {until})");
            }
            println!("nodes pick the change up within their cache time (cache_ttl_ms)");
            Ok(())
        }
    }
}

fn master_key(cfg: &Config) -> Result<Option<MasterKey>> {
    cfg.master_key.as_deref().map(|k| MasterKey::from_base64(k).context("AUTHIO_MASTER_KEY / master_key")).transpose()
}

pub(crate) fn build_router(cfg: &Config) -> Result<Router> {
    let settings = RouterSettings {
        dedicated_pool_max_size: cfg.dedicated_pool_max_size,
        max_dedicated_pools: cfg.max_dedicated_pools,
        route_reread_interval: Duration::from_millis(cfg.route_reread_interval_ms.max(100)),
        cutover_wait: Duration::from_millis(cfg.cutover_wait_ms.clamp(100, 30_000)),
        shared_direct_url: cfg.shared_direct_url.clone(),
        statement_cache: cfg.statement_cache,
        ..RouterSettings::default()
    };
    let router = Router::new(&cfg.shared_url, cfg.pool_size, master_key(cfg)?, settings)?;
    router.start();
    Ok(router)
}

/// SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled, so a signal that arrives right after start-up is not lost.
pub(crate) fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

pub(crate) async fn bind(listen: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))
}

pub(crate) async fn serve_with(
    cfg: &Config,
    router: Router,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let state = app_state(cfg, &router, None)?;
    if cfg.audit_purge_interval_mins > 0 {
        spawn_audit_purge(cfg.clone());
    }
    if cfg.audit_anchor_interval_mins > 0 {
        spawn_audit_anchor(cfg.clone());
    }
    serve_state(state, authio_db::OutboxReader::new(&cfg.relay_url()?)?, cfg, listener, shutdown).await
}

/// The periodic audit purge (an operator's job, with the admin connection; off unless
/// `audit_purge_interval_mins` is set).
fn spawn_audit_purge(cfg: Config) {
    tokio::spawn(async move {
        let Ok(Some(key)) = master_key(&cfg) else { return };
        let mut tick = tokio::time::interval(Duration::from_secs(cfg.audit_purge_interval_mins * 60));
        loop {
            tick.tick().await;
            match purge_audit(&cfg, &key, None).await {
                Ok(n) => tracing::info!(deleted = n, "audit purge"),
                Err(e) => tracing::warn!(error = %e, "audit purge failed"),
            }
        }
    });
}

pub(crate) fn app_state(
    cfg: &Config,
    router: &Router,
    mailbox: Option<authio_server::mailcatcher::MailCatcher>,
) -> Result<authio_server::AppState> {
    let key =
        master_key(cfg)?.context("a master key is required to serve (AUTHIO_MASTER_KEY): it encrypts signing keys")?;
    let mut auth = cfg.auth_settings(key);
    auth.mailbox = mailbox;
    Ok(authio_server::AppState::new(router.clone(), Arc::new(SystemClock), auth)?)
}

pub(crate) async fn serve_state(
    state: authio_server::AppState,
    outbox: authio_db::OutboxReader,
    cfg: &Config,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let router = state.router.clone();
    let identity = state.identity.clone();
    spawn_housekeeping(router.clone(), identity.clone());
    spawn_tenant_sweeps(cfg.admin_url.clone(), router.clone(), identity.clone());
    let mailer = match cfg.mail_settings() {
        Some(settings) => {
            let key = master_key(cfg)?.context("a master key is required to send mail")?;
            Some(authio_core::project::mail::Mailer::new(router.clone(), key, settings)?.spawn(state.clock.clone()))
        }
        None => {
            tracing::warn!("smtp_url is not set: emails wait in the outbox until it is");
            None
        }
    };
    let relay = authio_server::spawn_audit_relay(router.clone(), outbox, Duration::from_millis(500));
    let webhooks = match master_key(cfg)? {
        Some(key) => Some(
            authio_core::events::webhooks::Sender::new(
                router.clone(),
                state.clock.clone(),
                key,
                authio_core::events::webhooks::WebhookSettings::default(),
            )?
            .spawn(Duration::from_millis(250)),
        ),
        None => None,
    };
    let edge = state.edge;
    let app = authio_server::build_app(state);
    tracing::info!(listen = %listener.local_addr()?, "serving");
    authio_server::serve_with(listener, app, shutdown, edge).await?;
    // Token issuance events gathered since the last flush.
    let written = identity.flush_issuance_events().await;
    tracing::info!(written, "token issuance events flushed");
    relay.abort();
    if let Some(w) = webhooks {
        w.abort();
    }
    if let Some(m) = mailer {
        m.abort();
    }
    router.shutdown();
    Ok(())
}

async fn serve(cfg: Config) -> Result<()> {
    let shutdown = shutdown_signal()?;
    let router = build_router(&cfg)?;
    let listener = bind(&cfg.listen).await?;
    serve_with(&cfg, router, listener, shutdown).await
}

/// Purge audit events past retention for one tenant or all; returns the events deleted.
async fn anchor_audit(cfg: &Config, key: &MasterKey, only: Option<&str>) -> Result<usize> {
    let cp = ControlPlane::new(cfg.admin_url.clone());
    let tenants = match only {
        Some(slug) => vec![tenant_or_bail(&cp, slug).await?],
        None => cp.list_tenants().await?,
    };
    let mut written = 0;
    let mut failed = Vec::new();
    for t in &tenants {
        // One tenant's database being down does not stop the others' anchors.
        match cp.anchor_audit(t, key).await {
            Ok(n) => written += n,
            Err(e) => {
                tracing::warn!(tenant = %t.slug, error = %e, "audit anchor failed");
                failed.push(t.slug.clone());
            }
        }
    }
    if !failed.is_empty() {
        bail!("{written} anchor(s) sealed; failed for {}", failed.join(", "));
    }
    Ok(written)
}

fn spawn_audit_anchor(cfg: Config) {
    tokio::spawn(async move {
        let Ok(Some(key)) = master_key(&cfg) else { return };
        let mut tick = tokio::time::interval(Duration::from_secs(cfg.audit_anchor_interval_mins * 60));
        loop {
            tick.tick().await;
            match anchor_audit(&cfg, &key, None).await {
                Ok(n) => tracing::info!(sealed = n, "audit anchors"),
                Err(e) => tracing::warn!(error = %e, "audit anchoring failed"),
            }
        }
    });
}

async fn purge_audit(cfg: &Config, key: &MasterKey, only: Option<&str>) -> Result<u64> {
    let cp = ControlPlane::new(cfg.admin_url.clone());
    let tenants = match only {
        Some(slug) => vec![cp.tenant_by_slug(slug).await?.with_context(|| format!("no tenant with slug {slug:?}"))?],
        None => cp.list_tenants().await?,
    };
    let mut deleted = 0;
    let mut failed = Vec::new();
    for t in &tenants {
        // One tenant's database being down does not stop the others' purge.
        match cp.purge_audit(t, key).await {
            Ok(n) => deleted += n,
            Err(e) => {
                tracing::warn!(tenant = %t.slug, error = %e, "audit purge failed");
                eprintln!("purging {}: {e}", t.slug);
                failed.push(t.slug.clone());
            }
        }
    }
    if !failed.is_empty() {
        bail!("{deleted} deleted; the purge failed for {}", failed.join(", "));
    }
    Ok(deleted)
}

/// Per-tenant sweeps at each tenant's home: every minute, the end of each impersonation that
/// ran out goes into its tenant's audit log; every hour, events past their 30 days go.
fn spawn_tenant_sweeps(admin_url: String, router: Router, identity: authio_core::identity::auth::Identity) {
    tokio::spawn(async move {
        let control = ControlPlane::new(admin_url);
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        let mut minutes = 0u32;
        loop {
            tick.tick().await;
            minutes = minutes.wrapping_add(1);
            let tenants = match control.list_tenants().await {
                Ok(t) => t.into_iter().map(|t| (t.id, t.kind)).collect::<Vec<_>>(),
                Err(e) => {
                    tracing::warn!(error = %e, "impersonation expiry: tenants not listed");
                    continue;
                }
            };
            let n = identity.end_expired_impersonations(&tenants, chrono::Utc::now()).await;
            if n > 0 {
                tracing::info!(ended = n, "expired impersonations recorded");
            }
            if minutes % 60 == 1 {
                let n = authio_core::events::purge(&router, &tenants, chrono::Utc::now()).await;
                if n > 0 {
                    tracing::info!(removed = n, "events past their retention removed");
                }
            }
        }
    });
}

/// Periodic clean-up: rate-limit windows and one-time tokens that ended a day ago, dynamic
/// client registrations never used.
fn spawn_housekeeping(router: Router, identity: authio_core::identity::auth::Identity) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            match authio_db::preresolve::rate_gc(&router, chrono::Utc::now()).await {
                Ok(n) if n > 0 => tracing::info!(removed = n, "old rate-limit windows removed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "rate-limit clean-up failed"),
            }
            match identity.one_time_gc(chrono::Utc::now()).await {
                Ok(n) if n > 0 => tracing::info!(removed = n, "spent one-time tokens removed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "one-time token clean-up failed"),
            }
            let provider = authio_core::oidc::Provider::new(identity.clone());
            match provider.registration_gc(chrono::Utc::now()).await {
                Ok(n) if n > 0 => tracing::info!(removed = n, "unused dynamic client registrations removed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "dynamic registration clean-up failed"),
            }
        }
    });
}

async fn migrate_all(cfg: &Config) -> Result<()> {
    let applied = authio_db::migrate::migrate(&cfg.admin_url).await.context("migrating the shared database")?;
    println!("shared database: {} migration(s) applied", applied.len());
    if let Some(key) = master_key(cfg)? {
        for (tenant, dsn) in ControlPlane::new(cfg.admin_url.clone()).dedicated_admin_dsns(&key).await? {
            let applied = authio_db::migrate::migrate(&dsn)
                .await
                .with_context(|| format!("migrating the dedicated database of {tenant}"))?;
            println!("dedicated database of {tenant}: {} migration(s) applied", applied.len());
        }
    } else {
        println!("no master key configured: dedicated databases (if any) were not migrated");
    }
    Ok(())
}

async fn tenant(cfg: &Config, command: TenantCommand) -> Result<()> {
    let cp = ControlPlane::new(cfg.admin_url.clone());
    match command {
        TenantCommand::Create { slug, name, plan, kind } => {
            let slug = Slug::parse(&slug)?;
            let name = DisplayName::parse(&name)?;
            let plan = Plan::parse(&plan)?;
            let Some(kind) = TenantKind::parse(&kind) else { bail!("--kind must be customer or platform") };
            let t = cp.create_tenant(&slug, &name, kind, plan).await?;
            let project = cp.create_project(t.id, &Slug::parse("default")?, &DisplayName::parse("Default")?).await?;
            let key =
                cp.create_api_key(t.id, project.id, &DisplayName::parse("created by authio tenant create")?).await?;
            println!(
                "tenant   {} ({})\nid       {}\nplan     {}\nproject  {} ({})",
                t.slug,
                t.kind,
                t.id,
                t.plan.as_str(),
                project.slug,
                project.id
            );
            println!("api key  {}\n         (shown once: store it now)", key.plaintext);
        }
        TenantCommand::List => {
            println!("{:<24} {:<9} {:<11} {:<10} {:>6}  ID", "SLUG", "KIND", "PLAN", "DB", "EPOCH");
            for t in cp.list_tenants().await? {
                println!(
                    "{:<24} {:<9} {:<11} {:<10} {:>6}  {}",
                    t.slug,
                    t.kind,
                    t.plan.as_str(),
                    t.db_strategy,
                    t.route_epoch,
                    t.id
                );
            }
        }
        TenantCommand::AddMember { tenant, email, role } => {
            let email = authio_core::types::Email::parse(&email)?;
            let role = authio_core::tenancy::console::MemberRole::parse(&role)?;
            cp.add_member(&tenant, &email, role).await.map_err(explain)?;
            println!(
                "{email} is now {} of {tenant}; they sign in at {}/console (by email link or code, or a password set with \"forgot password\")",
                role.as_str(),
                cfg.public_url
            );
        }
        TenantCommand::RemoveMember { tenant, email } => {
            let email = authio_core::types::Email::parse(&email)?;
            cp.remove_member(&tenant, &email).await.map_err(explain)?;
            println!("{email} is no longer a member of {tenant}");
        }
        TenantCommand::Show { slug } => {
            let Some(t) = cp.tenant_by_slug(&slug).await? else { bail!("no tenant with slug {slug:?}") };
            println!("{}", describe_tenant(&t));
            for p in cp.projects(t.id).await? {
                println!("project  {:<20} {}", p.slug, p.id);
            }
            for m in cp.moves(t.id).await? {
                println!(
                    "move     {} {:<12} {:<8} pause {} ms{}",
                    m.id,
                    m.direction.as_str(),
                    m.phase,
                    m.pause_ms.map(|p| format!("{p:.1}")).unwrap_or_else(|| "-".into()),
                    m.error.map(|e| format!("  last error: {e}")).unwrap_or_default()
                );
            }
        }
        TenantCommand::ProvisionDedicated { tenant, host, dsn, app_dsn } => {
            let t = tenant_or_bail(&cp, &tenant).await?;
            let key = require_master_key(cfg)?;
            let target = match (&host, &dsn) {
                (Some(h), _) => ProvisionTarget::Host(h),
                (None, Some(d)) => ProvisionTarget::Dsn { admin: d, app: app_dsn.as_deref() },
                (None, None) => bail!("pass --host NAME or --dsn URL"),
            };
            let p = cp.provision_dedicated(&t, target, &key).await.map_err(explain)?;
            println!(
                "{}: dedicated database {} ready{} (migrations applied now: {:?})\nnext: authio tenant move --tenant {} --to dedicated",
                t.slug,
                p.database_name,
                p.host.map(|h| format!(" on host {h}")).unwrap_or_default(),
                p.migrations_applied,
                t.slug
            );
        }
        TenantCommand::Move { tenant, to, resume, abort, gate_timeout_ms } => {
            let t = tenant_or_bail(&cp, &tenant).await?;
            let key = require_master_key(cfg)?;
            if abort {
                let m = cp.abort_move(&t, &key).await.map_err(explain)?;
                println!("move {} aborted: {} lives on its {} database, as before", m.id, t.slug, t.db_strategy);
                return Ok(());
            }
            let kill_at = std::env::var("AUTHIO_FAULT_KILL_AT").ok();
            let progress = |p: &Progress| {
                let pct = if p.rows_total > 0 { p.rows_copied * 100 / p.rows_total } else { 100 };
                let filled = usize::try_from(pct / 5).unwrap_or(0).min(20);
                eprintln!(
                    "[{:<8}] [{}{}] {:>3}%  {} / {} rows  tables {}/{}  lag {} kB",
                    p.phase,
                    "#".repeat(filled),
                    ".".repeat(20 - filled),
                    pct,
                    p.rows_copied,
                    p.rows_total,
                    p.tables_ready,
                    p.tables,
                    p.lag_bytes / 1024
                );
            };
            let run = MoveRun {
                progress: &progress,
                kill_at: kill_at.as_deref(),
                gate_timeout: Duration::from_millis(gate_timeout_ms),
            };
            let outcome = if resume {
                cp.resume_move(&t, &key, &run).await
            } else {
                let direction = match to.as_deref() {
                    Some("dedicated") => Direction::ToDedicated,
                    Some("shared") => Direction::ToShared,
                    _ => bail!("--to must be dedicated or shared"),
                };
                cp.start_move(&t, direction, &key, &run).await
            }
            .map_err(explain)?;
            print_checks(&outcome.checks);
            println!(
                "move {} done: {} now lives on its {} database",
                outcome.record.id,
                t.slug,
                match outcome.record.direction {
                    Direction::ToDedicated => "dedicated",
                    Direction::ToShared => "shared",
                }
            );
            match outcome.pause_ms {
                Some(p) => println!("write pause: {p:.1} ms (from holding the tenant's writes back to the route flip)"),
                None => println!("write pause: taken by an earlier run of this move"),
            }
            if outcome.record.verified == Some(false) {
                bail!(
                    "the copy differs from the source as of the cutover: see runbooks/dedicated-db-operations.md (the old copy is kept)"
                );
            }
        }
        TenantCommand::Verify { tenant } => {
            let t = tenant_or_bail(&cp, &tenant).await?;
            let key = require_master_key(cfg)?;
            let checks = cp.verify_tenant(&t, &key).await.map_err(explain)?;
            print_checks(&checks);
            if checks.iter().any(|c| c.source_rows.is_some() && !c.matches()) {
                bail!("the home and the previous copy differ (expected once the tenant has written since the move)");
            }
            if checks.iter().all(|c| c.source_rows.is_none()) {
                println!("(no previous copy: only the home's figures are shown)");
            }
        }
        TenantCommand::PurgeSource { tenant, rollback_window_hours, now } => {
            let t = tenant_or_bail(&cp, &tenant).await?;
            let key = require_master_key(cfg)?;
            let window = Duration::from_secs(rollback_window_hours.saturating_mul(3600));
            let deleted = cp.purge_source(&t, &key, window, now).await.map_err(explain)?;
            println!("{}: old copy purged ({deleted} rows)", t.slug);
        }
    }
    Ok(())
}

async fn dedicated_host(cfg: &Config, command: DedicatedHostCommand) -> Result<()> {
    let cp = ControlPlane::new(cfg.admin_url.clone());
    match command {
        DedicatedHostCommand::Add { name, admin_dsn, app_password } => {
            let key = require_master_key(cfg)?;
            let h = cp.add_dedicated_host(&Slug::parse(&name)?, &admin_dsn, app_password.as_deref(), &key).await?;
            println!("dedicated host {} registered ({})", h.name, h.id);
        }
        DedicatedHostCommand::List => {
            println!("{:<24} {:>9}  {:<25} ID", "NAME", "DATABASES", "ADDED");
            for h in cp.list_dedicated_hosts().await? {
                println!("{:<24} {:>9}  {:<25} {}", h.name, h.databases, h.created_at.to_rfc3339(), h.id);
            }
        }
    }
    Ok(())
}

async fn tenant_or_bail(cp: &ControlPlane, slug: &str) -> Result<authio_core::tenancy::control::Tenant> {
    cp.tenant_by_slug(slug).await?.with_context(|| format!("no tenant with slug {slug:?}"))
}

fn require_master_key(cfg: &Config) -> Result<MasterKey> {
    master_key(cfg)?.context("a master key is required (AUTHIO_MASTER_KEY): dedicated credentials are sealed with it")
}

/// Operator-facing wording for refusals that name the rule.
fn explain(e: authio_core::CoreError) -> anyhow::Error {
    match e {
        authio_core::CoreError::Db(authio_db::DbError::Router(
            authio_db::RouterError::PlatformTenantNoDedicatedPool,
        )) => {
            anyhow::anyhow!(
                "the platform tenant always lives on the shared database: it cannot be provisioned or moved"
            )
        }
        other => other.into(),
    }
}

fn print_checks(checks: &[MoveCheck]) {
    if checks.is_empty() {
        return;
    }
    println!("{:<24} {:>12} {:>12}  RESULT", "TABLE", "OLD COPY", "HOME");
    for c in checks {
        let result = match c.source_rows {
            None => "-",
            Some(_) if c.matches() => "match",
            Some(_) => "DIFFERS",
        };
        println!(
            "{:<24} {:>12} {:>12}  {}",
            c.table,
            c.source_rows.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            c.target_rows,
            result
        );
    }
}

fn describe_tenant(t: &authio_core::tenancy::control::Tenant) -> String {
    format!(
        "slug         {}\nname         {}\nid           {}\nkind         {}\nplan         {}\ndb_strategy  {}\nroute_epoch  {}\ncreated_at   {}",
        t.slug, t.name, t.id, t.kind, t.plan.as_str(), t.db_strategy, t.route_epoch, t.created_at
    )
}
