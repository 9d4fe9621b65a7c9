//! The one node cache: a node's copy of rows by key, dropped on NOTIFY (a change bumps the
//! generation), after a TTL, and wholesale past a size bound. Only a cache: correctness never
//! rests on it.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Past this many entries a cache starts over (a bound on memory, not an LRU).
const MAX_CACHED: usize = 100_000;

pub struct NodeCache<V> {
    entries: RwLock<HashMap<String, (Instant, Arc<V>)>>,
    /// Bumped on every change notified; a lookup that raced one is not cached.
    generation: AtomicU64,
}

impl<V> Default for NodeCache<V> {
    fn default() -> Self {
        NodeCache { entries: RwLock::new(HashMap::new()), generation: AtomicU64::new(0) }
    }
}

impl<V> NodeCache<V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &str, ttl: Duration) -> Option<Arc<V>> {
        let entries = self.entries.read().ok()?;
        entries.get(key).filter(|(at, _)| at.elapsed() < ttl).map(|(_, v)| v.clone())
    }

    /// Read before the lookup whose result is `put`.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Keep `value` unless a change was notified since `generation` was read. The check and
    /// the insert happen under the lock that `forget` takes to bump the generation.
    pub fn put(&self, key: &str, value: Arc<V>, generation: u64) {
        if let Ok(mut e) = self.entries.write() {
            if self.generation() != generation {
                return;
            }
            if e.len() >= MAX_CACHED {
                e.clear();
            }
            e.insert(key.to_owned(), (Instant::now(), value));
        }
    }

    /// Drop one key (or everything) and bump the generation.
    pub fn forget(&self, key: Option<&str>) {
        if let Ok(mut e) = self.entries.write() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            match key {
                Some(k) => {
                    e.remove(k);
                }
                None => e.clear(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_that_raced_a_change_is_not_kept() {
        let c: NodeCache<u32> = NodeCache::new();
        let g = c.generation();
        c.forget(Some("a"));
        c.put("a", Arc::new(1), g);
        assert!(c.get("a", Duration::from_secs(60)).is_none());
        let g = c.generation();
        c.put("a", Arc::new(2), g);
        assert_eq!(c.get("a", Duration::from_secs(60)).as_deref(), Some(&2));
        assert!(c.get("a", Duration::ZERO).is_none());
        c.forget(None);
        assert!(c.get("a", Duration::from_secs(60)).is_none());
    }
}
