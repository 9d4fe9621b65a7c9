//! The per-node route cache: tenant -> (kind, db_strategy, route_epoch).
//!
//! Invalidated by `NOTIFY authio_routes` (a hint: lost while the listener is disconnected, so
//! a reconnect clears everything) and by a periodic re-read of the epochs. Correctness never
//! rests on this cache: the home fence in the database refuses a stale node.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use uuid::Uuid;

use crate::TenantKind;

/// Where a tenant lives. Serialized (and stored) as `shared` or `dedicated`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DbStrategy {
    Shared,
    Dedicated,
}

impl DbStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            DbStrategy::Shared => "shared",
            DbStrategy::Dedicated => "dedicated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "shared" => Some(DbStrategy::Shared),
            "dedicated" => Some(DbStrategy::Dedicated),
            _ => None,
        }
    }
}

impl std::fmt::Display for DbStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedRoute {
    pub kind: TenantKind,
    pub strategy: DbStrategy,
    pub epoch: i64,
}

#[derive(Default)]
pub struct RouteCache {
    entries: RwLock<HashMap<Uuid, CachedRoute>>,
    /// Bumped on every invalidation, so a lookup that raced an invalidation does not insert
    /// the stale answer it read.
    generation: AtomicU64,
    invalidations: AtomicU64,
}

impl RouteCache {
    pub fn get(&self, tenant: &Uuid) -> Option<CachedRoute> {
        self.entries.read().ok().and_then(|m| m.get(tenant).copied())
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Insert a freshly read route unless an invalidation happened since `generation` was read.
    pub fn insert_if_current(&self, tenant: Uuid, route: CachedRoute, generation: u64) {
        if let Ok(mut m) = self.entries.write() {
            if self.generation.load(Ordering::Acquire) == generation {
                m.insert(tenant, route);
            }
        }
    }

    /// Drop a tenant's entry if it is older than `epoch` (or unconditionally with `None`).
    pub fn invalidate(&self, tenant: &Uuid, epoch: Option<i64>) {
        if let Ok(mut m) = self.entries.write() {
            self.generation.fetch_add(1, Ordering::AcqRel);
            let stale = match (m.get(tenant), epoch) {
                (Some(cached), Some(e)) => cached.epoch < e,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if stale {
                m.remove(tenant);
                self.invalidations.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn clear(&self) {
        if let Ok(mut m) = self.entries.write() {
            self.generation.fetch_add(1, Ordering::AcqRel);
            let n = m.len() as u64;
            m.clear();
            self.invalidations.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> Vec<(Uuid, i64)> {
        self.entries.read().map(|m| m.iter().map(|(k, v)| (*k, v.epoch)).collect()).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.entries.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn invalidations(&self) -> u64 {
        self.invalidations.load(Ordering::Relaxed)
    }
}

/// Parse a NOTIFY payload `tenant_uuid:epoch`.
pub(crate) fn parse_notification(payload: &str) -> Option<(Uuid, i64)> {
    let (t, e) = payload.split_once(':')?;
    Some((Uuid::parse_str(t).ok()?, e.parse().ok()?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn route(epoch: i64) -> CachedRoute {
        CachedRoute { kind: TenantKind::Customer, strategy: DbStrategy::Shared, epoch }
    }

    #[test]
    fn invalidation_drops_only_older_epochs() {
        let c = RouteCache::default();
        let t = Uuid::now_v7();
        c.insert_if_current(t, route(3), c.generation());
        c.invalidate(&t, Some(3));
        assert_eq!(c.get(&t), Some(route(3)), "same epoch is not stale");
        c.invalidate(&t, Some(4));
        assert_eq!(c.get(&t), None);
    }

    #[test]
    fn a_lookup_racing_an_invalidation_is_not_cached() {
        let c = RouteCache::default();
        let t = Uuid::now_v7();
        let gen = c.generation();
        c.invalidate(&Uuid::now_v7(), None);
        c.insert_if_current(t, route(1), gen);
        assert_eq!(c.get(&t), None);
    }

    #[test]
    fn parses_payloads() {
        let t = Uuid::now_v7();
        assert_eq!(parse_notification(&format!("{t}:7")), Some((t, 7)));
        assert_eq!(parse_notification("garbage"), None);
        assert_eq!(parse_notification(&format!("{t}:x")), None);
    }
}
