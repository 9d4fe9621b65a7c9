//! Configuration: a TOML file (`--config` or `AUTHIO_CONFIG`), then `AUTHIO_*` environment
//! variables, which win.
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: String,
    /// The URL users reach this deployment at (issuer URLs derive from it).
    pub public_url: String,
    /// The shared database as `authio_app` (may point at pgbouncer, transaction pooling).
    pub shared_url: String,
    /// A direct connection to the shared database for LISTEN (defaults to `shared_url`; set it
    /// when `shared_url` goes through pgbouncer).
    pub shared_direct_url: Option<String>,
    /// The shared database as `authio_relay`, for the audit outbox relay.
    pub relay_url: Option<String>,
    /// An administrative connection (superuser, or CREATEROLE and member of authio_owner) for
    /// migrations and operator commands. Never used to serve requests.
    pub admin_url: String,
    /// Connections to the shared database per node.
    pub pool_size: usize,
    /// Base64 of 32 random bytes; encrypts dedicated-database credentials and signing keys.
    pub master_key: Option<String>,
    pub dedicated_pool_max_size: usize,
    pub max_dedicated_pools: usize,
    pub route_reread_interval_ms: u64,
    /// How long a request of a tenant in a move's cutover waits before a 503.
    pub cutover_wait_ms: u64,
    /// Keep read statements prepared per connection. Set false when `shared_url` is
    /// pgbouncer older than 1.21 (or without `max_prepared_statements`).
    pub statement_cache: bool,
    /// `json` (default for `serve`) or `pretty`.
    pub log_format: String,
    /// Argon2id memory in KiB (at least 19456), passes (at least 2), lanes (at least 1).
    pub password_m_kib: u32,
    pub password_t: u32,
    pub password_p: u32,
    /// Password hashes running at once (0: one per core). Bounds memory to this many times
    /// `password_m_kib`.
    pub password_hash_concurrency: usize,
    /// Sign-in attempts per IP per minute.
    pub signin_per_ip_per_minute: i32,
    /// Failed sign-ins per account per 15 minutes before the account is locked for the rest
    /// of the window.
    pub signin_account_failures: i32,
    /// How long a node keeps a project's keys and settings before re-reading them (100 ms to
    /// 60 s; changes are also NOTIFYed).
    pub cache_ttl_ms: u64,
    /// Run `authio audit purge` from `serve` every this many minutes (0: off; the job uses
    /// `admin_url` and the master key, like the command).
    pub audit_purge_interval_mins: u64,
    /// How often `serve` seals anchors of the audit chains (0: never).
    pub audit_anchor_interval_mins: u64,
    /// Address ranges (CIDR) of the proxies in front of Authio, whose `X-Forwarded-For` is read.
    pub trusted_proxies: Vec<String>,
    /// Where email goes: `smtp://host:25` (plain, local relays), `smtp://user:pass@host:587?tls=required`
    /// (STARTTLS), `smtps://user:pass@host:465` (TLS). Unset: mail waits in the outbox.
    pub smtp_url: Option<String>,
    /// The `From` address of every email (the display name is the project's sender name).
    pub mail_from: String,
    /// Let upstream OAuth/OIDC providers be plain http (development only).
    pub allow_http_upstreams: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            public_url: "http://127.0.0.1:8080".into(),
            shared_url: "postgres://authio_app@127.0.0.1:5432/authio".into(),
            shared_direct_url: None,
            relay_url: None,
            admin_url: "postgres://postgres@127.0.0.1:5432/authio".into(),
            pool_size: 32,
            master_key: None,
            dedicated_pool_max_size: 8,
            max_dedicated_pools: 256,
            route_reread_interval_ms: 5000,
            cutover_wait_ms: 3000,
            statement_cache: true,
            log_format: "json".into(),
            password_m_kib: 19456,
            password_t: 2,
            password_p: 1,
            password_hash_concurrency: 0,
            signin_per_ip_per_minute: 60,
            signin_account_failures: 10,
            cache_ttl_ms: 30_000,
            audit_purge_interval_mins: 0,
            audit_anchor_interval_mins: 15,
            trusted_proxies: Vec::new(),
            smtp_url: None,
            mail_from: "no-reply@localhost".into(),
            allow_http_upstreams: false,
        }
    }
}

impl Config {
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
            }
            None => Config::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        cfg.proxy_ranges()?;
        cfg.check_database_urls()?;
        Ok(cfg)
    }

    fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        let num = |k: &str, v: String| -> Result<u64> { v.parse().with_context(|| format!("{k} must be a number")) };
        if let Some(v) = get("AUTHIO_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = get("AUTHIO_PUBLIC_URL") {
            self.public_url = v;
        }
        if let Some(v) = get("AUTHIO_SHARED_URL") {
            self.shared_url = v;
        }
        if let Some(v) = get("AUTHIO_SHARED_DIRECT_URL") {
            self.shared_direct_url = Some(v);
        }
        if let Some(v) = get("AUTHIO_RELAY_URL") {
            self.relay_url = Some(v);
        }
        if let Some(v) = get("AUTHIO_ADMIN_URL") {
            self.admin_url = v;
        }
        if let Some(v) = get("AUTHIO_MASTER_KEY") {
            self.master_key = Some(v);
        }
        if let Some(v) = get("AUTHIO_LOG_FORMAT") {
            self.log_format = v;
        }
        if let Some(v) = get("AUTHIO_POOL_SIZE") {
            self.pool_size = num("AUTHIO_POOL_SIZE", v)? as usize;
        }
        if let Some(v) = get("AUTHIO_DEDICATED_POOL_MAX_SIZE") {
            self.dedicated_pool_max_size = num("AUTHIO_DEDICATED_POOL_MAX_SIZE", v)? as usize;
        }
        if let Some(v) = get("AUTHIO_MAX_DEDICATED_POOLS") {
            self.max_dedicated_pools = num("AUTHIO_MAX_DEDICATED_POOLS", v)? as usize;
        }
        if let Some(v) = get("AUTHIO_STATEMENT_CACHE") {
            self.statement_cache = matches!(v.as_str(), "1" | "true" | "yes" | "on");
        }
        if let Some(v) = get("AUTHIO_ROUTE_REREAD_INTERVAL_MS") {
            self.route_reread_interval_ms = num("AUTHIO_ROUTE_REREAD_INTERVAL_MS", v)?;
        }
        if let Some(v) = get("AUTHIO_CUTOVER_WAIT_MS") {
            self.cutover_wait_ms = num("AUTHIO_CUTOVER_WAIT_MS", v)?;
        }
        if let Some(v) = get("AUTHIO_PASSWORD_HASH_CONCURRENCY") {
            self.password_hash_concurrency = num("AUTHIO_PASSWORD_HASH_CONCURRENCY", v)? as usize;
        }
        if let Some(v) = get("AUTHIO_SIGNIN_PER_IP_PER_MINUTE") {
            self.signin_per_ip_per_minute = i32::try_from(num("AUTHIO_SIGNIN_PER_IP_PER_MINUTE", v)?)?;
        }
        if let Some(v) = get("AUTHIO_SIGNIN_ACCOUNT_FAILURES") {
            self.signin_account_failures = i32::try_from(num("AUTHIO_SIGNIN_ACCOUNT_FAILURES", v)?)?;
        }
        if let Some(v) = get("AUTHIO_AUDIT_PURGE_INTERVAL_MINS") {
            self.audit_purge_interval_mins = num("AUTHIO_AUDIT_PURGE_INTERVAL_MINS", v)?;
        }
        if let Some(v) = get("AUTHIO_TRUSTED_PROXIES") {
            self.trusted_proxies = v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
        }
        if let Some(v) = get("AUTHIO_AUDIT_ANCHOR_INTERVAL_MINS") {
            self.audit_anchor_interval_mins = num("AUTHIO_AUDIT_ANCHOR_INTERVAL_MINS", v)?;
        }
        if let Some(v) = get("AUTHIO_SMTP_URL") {
            self.smtp_url = Some(v);
        }
        if let Some(v) = get("AUTHIO_MAIL_FROM") {
            self.mail_from = v;
        }
        if let Some(v) = get("AUTHIO_ALLOW_HTTP_UPSTREAMS") {
            self.allow_http_upstreams = matches!(v.as_str(), "1" | "true" | "yes" | "on");
        }
        if let Some(v) = get("AUTHIO_CACHE_TTL_MS") {
            self.cache_ttl_ms = num("AUTHIO_CACHE_TTL_MS", v)?;
        }
        Ok(())
    }
}

impl Config {
    /// Parse every database URL now (TLS parameters and the rule that a remote host names an
    /// `sslmode` included), so a bad one stops start-up and names its key.
    pub fn check_database_urls(&self) -> Result<()> {
        let mut urls = vec![("shared_url (AUTHIO_SHARED_URL)", &self.shared_url)];
        if let Some(u) = &self.shared_direct_url {
            urls.push(("shared_direct_url (AUTHIO_SHARED_DIRECT_URL)", u));
        }
        if let Some(u) = &self.relay_url {
            urls.push(("relay_url (AUTHIO_RELAY_URL)", u));
        }
        urls.push(("admin_url (AUTHIO_ADMIN_URL)", &self.admin_url));
        for (key, url) in urls {
            authio_db::tls::parse_url(url).with_context(|| key.to_owned())?;
        }
        Ok(())
    }

    /// Where the audit relay connects: `relay_url`, else the direct shared URL with the user
    /// `authio_relay` and no password (enough with trust or peer authentication; set
    /// `relay_url` with a password in production).
    pub fn relay_url(&self) -> Result<String> {
        if let Some(u) = &self.relay_url {
            return Ok(u.clone());
        }
        let base = self.shared_direct_url.as_deref().unwrap_or(&self.shared_url);
        Ok(authio_db::pool::with_database_and_user(base, None, Some(("authio_relay", None)))?)
    }

    /// The identity side's settings (needs the master key: signing keys are encrypted with it).
    /// `trusted_proxies` parsed (a single address is a /32 or /128).
    pub fn proxy_ranges(&self) -> Result<Vec<ipnet::IpNet>> {
        self.trusted_proxies
            .iter()
            .map(|r| {
                r.parse::<ipnet::IpNet>()
                    .or_else(|_| r.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .with_context(|| format!("trusted_proxies: {r:?} is not an address or a CIDR range"))
            })
            .collect()
    }

    pub fn auth_settings(&self, master_key: authio_db::MasterKey) -> authio_server::AuthSettings {
        let mut auth = authio_server::AuthSettings::new(self.public_url.clone(), master_key);
        auth.password_params = authio_core::identity::passwords::PasswordParams {
            m_kib: self.password_m_kib,
            t: self.password_t,
            p: self.password_p,
        };
        if self.password_hash_concurrency > 0 {
            auth.hash_concurrency = self.password_hash_concurrency;
        }
        auth.limits.signin_per_ip = self.signin_per_ip_per_minute;
        auth.limits.account_failures = self.signin_account_failures;
        // At most 60 s: key rotation's margins assume it (see `MIN_NEXT_KEY_AGE_SECS`).
        auth.cache_ttl = Duration::from_millis(self.cache_ttl_ms.clamp(100, 60_000));
        // Checked when the configuration was loaded.
        auth.trusted_proxies = self.proxy_ranges().unwrap_or_default();
        auth.allow_http_upstreams = self.allow_http_upstreams;
        // The console's operator pages and billing act on the control plane.
        auth.admin_url = Some(self.admin_url.clone());
        auth
    }

    /// How mail leaves, when `smtp_url` is set.
    pub fn mail_settings(&self) -> Option<authio_core::project::mail::MailSettings> {
        self.smtp_url.as_ref().map(|u| authio_core::project::mail::MailSettings::new(u.clone(), self.mail_from.clone()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_file_values() {
        let mut cfg: Config = toml::from_str("listen = \"0.0.0.0:9000\"\npool_size = 4\n").unwrap();
        assert_eq!(cfg.listen, "0.0.0.0:9000");
        cfg.apply_env(|k| (k == "AUTHIO_POOL_SIZE").then(|| "12".to_string())).unwrap();
        assert_eq!(cfg.pool_size, 12);
        assert_eq!(cfg.listen, "0.0.0.0:9000");
        assert!(cfg.apply_env(|k| (k == "AUTHIO_POOL_SIZE").then(|| "many".to_string())).is_err());
        assert!(toml::from_str::<Config>("unknown_key = 1").is_err());
    }

    #[test]
    fn database_urls_are_checked_at_load_with_their_key() {
        let mut cfg = Config::default();
        cfg.check_database_urls().unwrap();
        cfg.apply_env(|k| (k == "AUTHIO_SHARED_URL").then(|| "postgres://authio_app@db.example.com/authio".into()))
            .unwrap();
        let e = format!("{:#}", cfg.check_database_urls().unwrap_err());
        assert!(e.starts_with("shared_url (AUTHIO_SHARED_URL)"), "{e}");
        assert!(e.contains("add sslmode=require"), "{e}");
        cfg.shared_url.push_str("?sslmode=disable");
        cfg.check_database_urls().unwrap();
        cfg.relay_url = Some("postgres://authio_relay@db.example.com/authio?sslmode=verify-full".into());
        let e = format!("{:#}", cfg.check_database_urls().unwrap_err());
        assert!(e.starts_with("relay_url (AUTHIO_RELAY_URL)") && e.contains("needs sslrootcert"), "{e}");
    }

    #[test]
    fn trusted_proxies_are_ranges_or_addresses_and_checked() {
        let mut cfg = Config::default();
        cfg.apply_env(|k| (k == "AUTHIO_TRUSTED_PROXIES").then(|| "10.0.0.0/8, 192.0.2.1,".to_string())).unwrap();
        let ranges = cfg.proxy_ranges().unwrap();
        assert_eq!(ranges.len(), 2);
        assert!(ranges[1].contains(&"192.0.2.1".parse::<std::net::IpAddr>().unwrap()));
        assert!(!ranges[1].contains(&"192.0.2.2".parse::<std::net::IpAddr>().unwrap()));
        cfg.trusted_proxies = vec!["not-a-range".into()];
        assert!(cfg.proxy_ranges().is_err());
        let from_file: Config = toml::from_str("trusted_proxies = [\"fd00::/8\"]").unwrap();
        assert_eq!(from_file.proxy_ranges().unwrap().len(), 1);
    }
}
