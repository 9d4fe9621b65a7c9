//! Configuration: a TOML file (`--config` or `AUTHIO_CONFIG`), then `AUTHIO_*` environment
//! variables, which win.
use std::path::Path;

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
    /// Keep read statements prepared per connection. Set false when `shared_url` is
    /// pgbouncer older than 1.21 (or without `max_prepared_statements`).
    pub statement_cache: bool,
    /// `json` (default for `serve`) or `pretty`.
    pub log_format: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            public_url: "http://127.0.0.1:8080".into(),
            shared_url: "postgres://authio_app@127.0.0.1:5432/authio".into(),
            shared_direct_url: None,
            admin_url: "postgres://postgres@127.0.0.1:5432/authio".into(),
            pool_size: 32,
            master_key: None,
            dedicated_pool_max_size: 8,
            max_dedicated_pools: 256,
            route_reread_interval_ms: 5000,
            statement_cache: true,
            log_format: "json".into(),
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
        Ok(())
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
}
