//! `authio dev`: a complete local stack with demo data.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use authio_core::identity::m2m::{self, NewClient};
use authio_core::tenancy::console::MemberRole;
use authio_core::tenancy::control::ControlPlane;
use authio_core::types::ClientInfo;
use authio_core::types::{DisplayName, Email, Plan, Slug};
use authio_core::SystemClock;
use authio_db::cluster::{find_pg_binaries, ClusterOptions, LocalCluster};
use authio_db::{MasterKey, Scope, TenantKind};

use crate::config::Config;

#[derive(clap::Args)]
pub struct DevArgs {
    /// Where the clusters, the master key and the demo credentials live.
    #[arg(long, default_value = ".authio")]
    dir: PathBuf,
    /// Address the server listens on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Port of the shared PostgreSQL cluster (the dedicated one uses the next port).
    #[arg(long, default_value_t = 54330)]
    pg_port: u16,
}

pub async fn run(args: DevArgs) -> Result<()> {
    // Fail early and clearly when PostgreSQL is missing.
    find_pg_binaries()?;
    let shutdown = crate::shutdown_signal()?;
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir)?;
    crate::init_logging("pretty");

    println!("starting PostgreSQL clusters under {} ...", dir.display());
    let opts = ClusterOptions { throwaway: false };
    let shared = LocalCluster::init(&dir.join("pg-shared"), args.pg_port, &opts)?;
    shared.start()?;
    let dedicated = LocalCluster::init(&dir.join("pg-dedicated"), args.pg_port + 1, &opts)?;
    dedicated.start()?;

    ensure_database(&shared, "authio").await?;
    ensure_database(&dedicated, "postgres").await?;
    // A local mail catcher: every email the flows send shows on /dev/mailbox.
    let catcher = authio_server::mailcatcher::MailCatcher::default();
    let smtp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let smtp_url = format!("smtp://{}", smtp.local_addr()?);
    let _catching = catcher.serve(smtp);
    let cfg = Config {
        listen: args.listen.clone(),
        public_url: format!("http://{}", args.listen),
        shared_url: shared.url("authio_app", "authio"),
        admin_url: shared.admin_url("authio"),
        master_key: Some(master_key(&dir)?),
        pool_size: 16,
        log_format: "pretty".into(),
        smtp_url: Some(smtp_url),
        mail_from: "no-reply@authio.localhost".into(),
        allow_http_upstreams: true,
        ..Config::default()
    };
    authio_db::migrate::migrate(&cfg.admin_url).await.context("migrating the shared database")?;

    let creds_path = dir.join("credentials.txt");
    let router = crate::build_router(&cfg)?;
    let state = crate::app_state(&cfg, &router, Some(catcher))?;
    if !creds_path.exists() {
        let creds = seed(&cfg, &state, &dedicated, &dir).await?;
        write_private(&creds_path, &creds)?;
    }
    let creds = std::fs::read_to_string(&creds_path)?;
    let listener = crate::bind(&cfg.listen).await?;
    println!(
        "\nAuthio is running at {url}\n\n  API reference   {url}/docs\n  OpenAPI         {url}/openapi.json\n  health          {url}/healthz  {url}/readyz\n  metrics         {url}/metrics\n  mailbox         {url}/dev/mailbox  (every email sent)\n\n\
         shared Postgres     {}\ndedicated Postgres  {}\n\n{creds}\nCtrl-C stops the server and both clusters.\n",
        shared.admin_url("authio"),
        dedicated.admin_url("postgres"),
        url = cfg.public_url,
    );
    let outbox = authio_db::OutboxReader::new(&shared.url("authio_relay", "authio"))?;
    let served = crate::serve_state(state, outbox, &cfg, listener, shutdown).await;
    tracing::info!("stopping PostgreSQL clusters");
    drop(shared);
    drop(dedicated);
    served
}

async fn ensure_database(cluster: &LocalCluster, name: &str) -> Result<()> {
    let c = authio_db::pool::connect(&cluster.admin_url("postgres"), "authio-dev").await?;
    let exists = c.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name]).await?.is_some();
    if !exists {
        c.batch_execute(&format!("CREATE DATABASE {name}")).await?;
    }
    Ok(())
}

fn master_key(dir: &Path) -> Result<String> {
    let path = dir.join("master.key");
    if let Ok(k) = std::fs::read_to_string(&path) {
        return Ok(k.trim().to_owned());
    }
    let k = MasterKey::generate_base64();
    write_private(&path, &k)?;
    Ok(k)
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(path)?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// The platform tenant with an operator, an Enterprise demo tenant on the shared database,
/// and an Enterprise demo tenant on its own dedicated database; each with a user who has a
/// password, and the customer ones with an M2M client.
async fn seed(cfg: &Config, state: &authio_server::AppState, dedicated: &LocalCluster, dir: &Path) -> Result<String> {
    let cp = ControlPlane::new(cfg.admin_url.clone());
    let key = MasterKey::from_base64(cfg.master_key.as_deref().unwrap_or_default())?;
    let mut out = String::from("Demo credentials (also in .authio/credentials.txt):\n");
    // The dedicated cluster as a registered host, so the dedicated-tier commands work here
    // (trust authentication on loopback: the app role's password is never asked for).
    cp.add_dedicated_host(&Slug::parse("dev-dedicated")?, &dedicated.admin_url("postgres"), Some("dev"), &key).await?;
    let demos = [
        ("authio", "Authio", TenantKind::Platform, "console", "operator@authio.local", false),
        ("acme", "Acme Corp", TenantKind::Customer, "production", "alice@acme.test", false),
        ("globex", "Globex (dedicated DB)", TenantKind::Customer, "production", "hank@globex.test", true),
    ];
    let url = &cfg.public_url;
    let mut console_project = None;
    for (slug, name, kind, project_slug, email, on_dedicated) in demos {
        let t = cp.create_tenant(&Slug::parse(slug)?, &DisplayName::parse(name)?, kind, Plan::Enterprise).await?;
        let p = cp.create_project(t.id, &Slug::parse(project_slug)?, &DisplayName::parse(project_slug)?).await?;
        if on_dedicated {
            let db = format!("authio_{slug}");
            ensure_database(dedicated, &db).await?;
            cp.attach_empty_dedicated(&t, &db, &dedicated.url("authio_app", &db), &dedicated.admin_url(&db), &key)
                .await?;
        }
        let k = cp.create_api_key(t.id, p.id, &DisplayName::parse("dev")?).await?;
        let password = demo_password();
        if kind == TenantKind::Platform {
            // Sign-up is closed on the platform tenant: operators are made, not self-served.
            state.identity.create_user_with_password(p.id, email, &password).await?;
            cp.grant_operator(&Email::parse(email)?).await?;
            console_project = Some(p.id);
        } else {
            state.identity.sign_up(p.id, email, &password, &ClientInfo::default(), None).await?;
        }
        out.push_str(&format!(
            "\n  {name} [{kind_s}, enterprise, {home}]\n    project  {project_slug}  id {pid}\n    issuer   {iss}\n    user     {email}  password {password}{op}\n    API key  {key}\n    try      curl -H 'Authorization: Bearer {key}' {url}/v1/projects/{pid}/users\n             curl -H 'Content-Type: application/json' -d '{{\"project_id\":\"{pid}\",\"email\":\"{email}\",\"password\":\"{password}\"}}' {url}/v1/auth/signin\n",
            kind_s = kind.as_str(),
            home = if on_dedicated { "dedicated database" } else { "shared database" },
            pid = p.id,
            iss = state.identity.issuer(p.id),
            key = k.plaintext,
            op = if kind == TenantKind::Platform { " (operator)" } else { "" },
        ));
        if kind == TenantKind::Customer {
            let scope = Scope::project(t.id, p.id, kind);
            let new = NewClient {
                name: DisplayName::parse("demo backend")?,
                scopes: vec!["read:users".into(), "write:users".into()],
                audience: None,
                token_ttl_secs: None,
            };
            let auth =
                authio_core::authz::as_tool("authio dev", authio_core::authz::Permission::CredentialsManage, &scope)?;
            let c = m2m::create(
                &state.router,
                &SystemClock,
                &auth,
                &state.identity.issuer(p.id),
                &new,
                &ClientInfo::default(),
            )
            .await?;
            out.push_str(&format!(
                "    hosted   {url}/p/{pid}/signin  (sign-in page; emails on {url}/dev/mailbox)\n",
                pid = p.id
            ));
            // An OpenID client for trying the provider with any OIDC library on localhost.
            let rp = authio_core::oidc::NewOidcClient {
                name: "demo web app".into(),
                client_type: "confidential".into(),
                redirect_uris: vec!["http://localhost:3000/callback".into()],
                post_logout_redirect_uris: vec!["http://localhost:3000/".into()],
                token_endpoint_auth_method: None,
                scopes: None,
                grant_types: None,
                id_token_signed_response_alg: None,
                resources: Vec::new(),
            };
            let (rp, rp_secret) =
                authio_core::oidc::create_client(&state.router, &SystemClock, &auth, &rp, &ClientInfo::default())
                    .await?;
            out.push_str(&format!(
                "    OpenID   issuer {iss}  client {cid}  secret {cs}  redirect http://localhost:3000/callback\n",
                iss = state.identity.issuer(p.id),
                cid = rp.client_id,
                cs = rp_secret.unwrap_or_default(),
            ));
            out.push_str(&format!(
                "    M2M      client {id}  secret {secret}\n    try      curl -u {id}:{secret} -d grant_type=client_credentials {url}/v1/auth/token\n",
                id = c.info.client_id,
                secret = c.client_secret,
            ));
        }
    }
    // Dashboard users of Acme: platform identities who are members of the customer tenant.
    if let Some(console) = console_project {
        out.push_str(&format!("\n  Console      {url}/console  (operator above: every tenant)\n"));
        for (email, role) in [("admin@acme.test", MemberRole::Admin), ("viewer@acme.test", MemberRole::Viewer)] {
            let password = demo_password();
            state.identity.create_user_with_password(console, email, &password).await?;
            cp.add_member("acme", &Email::parse(email)?, role).await?;
            out.push_str(&format!(
                "    dashboard  {email}  password {password}  ({} of Acme: {url}/dashboard, {url}/billing)\n",
                role.as_str()
            ));
        }
    }
    out.push_str(&format!(
        "\n  Move Acme online to a dedicated database (and back with --to shared):\n    \
         export AUTHIO_ADMIN_URL={admin} AUTHIO_MASTER_KEY=$(cat {dir}/master.key)\n    \
         authio tenant provision-dedicated --tenant acme --host dev-dedicated\n    \
         authio tenant move --tenant acme --to dedicated\n",
        admin = cfg.admin_url,
        dir = dir.display(),
    ));
    Ok(out)
}

/// A readable random password for the demo users.
fn demo_password() -> String {
    use rand::RngCore;
    let mut b = [0u8; 9];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("demo-{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}
