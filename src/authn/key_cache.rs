//! Virtual keys and users resolved through moka caches in front of the store.
//!
//! A hit answers from memory: the warm decision path does no I/O. A miss reads the store
//! once (with a timeout) and remembers the answer: a found record for `key_ttl`, "no such
//! record" for the shorter `negative_ttl`, so a flood of made-up keys that pass the checksum
//! costs one read per key per `negative_ttl`.
//!
//! Admin writes invalidate at once in this process ([`KeyResolver::invalidate`],
//! [`UserResolver::invalidate`]). A generation counter, bumped under the same lock as the
//! invalidation, stops a read that started before the write from putting its stale answer
//! back after it.

use super::api_key::KeyHash;
use crate::domain::{KeyLookup, User};
use crate::metrics::{CacheCounters, CacheResult, Metrics};
use crate::store::{SharedStore, StoreError};
use moka::sync::Cache;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Which cached records an admin write makes stale.
#[derive(Debug, Clone)]
pub enum Invalidation {
    Key(String),
    User(String),
    Team(String),
    All,
}

/// Picks the cached entries an invalidation drops.
pub(crate) type Stale<K, V> = Box<dyn Fn(&K, &V) -> bool + Send + Sync>;

/// A store read remembered by key, with the generation guard described above.
pub(crate) struct StoreCache<K, V> {
    /// The `cache` label of `tollgate_cache_requests_total`.
    label: &'static str,
    cache: Cache<K, Option<Arc<V>>>,
    generation: AtomicU64,
    /// Serialises "insert if no invalidation happened" against invalidations.
    write_lock: Mutex<()>,
    timeout: Duration,
    /// `tollgate_cache_requests_total` of this cache.
    counted: CacheCounters,
    metrics: Metrics,
}

struct TtlByAnswer {
    found: Duration,
    missing: Duration,
}

impl<K, V> moka::Expiry<K, Option<Arc<V>>> for TtlByAnswer {
    fn expire_after_create(&self, _: &K, value: &Option<Arc<V>>, _: Instant) -> Option<Duration> {
        Some(if value.is_some() {
            self.found
        } else {
            self.missing
        })
    }
}

impl<K, V> StoreCache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    pub(crate) fn new(
        label: &'static str,
        config: &crate::config::Cache,
        timeout: Duration,
        metrics: Metrics,
    ) -> Self {
        let cache = Cache::builder()
            .max_capacity(config.max_entries)
            .expire_after(TtlByAnswer {
                found: config.key_ttl,
                missing: config.negative_ttl,
            })
            .support_invalidation_closures()
            .build();
        StoreCache {
            label,
            cache,
            generation: AtomicU64::new(0),
            write_lock: Mutex::new(()),
            timeout,
            counted: metrics.cache(label),
            metrics,
        }
    }

    /// The cached answer for `key`, or `load`'s (bounded by the timeout), remembered.
    pub(crate) async fn get_or_load<F, Fut>(
        &self,
        key: &K,
        load: F,
    ) -> Result<Option<Arc<V>>, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, StoreError>>,
    {
        if let Some(entry) = self.cache.get(key) {
            self.counted.count(if entry.is_some() {
                CacheResult::Hit
            } else {
                CacheResult::NegativeHit
            });
            return Ok(entry);
        }
        self.counted.count(CacheResult::Miss);
        let generation = self.generation.load(Ordering::Acquire);
        let entry = match tokio::time::timeout(self.timeout, load()).await {
            Ok(Ok(found)) => found.map(Arc::new),
            Ok(Err(e)) => return Err(self.backend_error(e)),
            Err(_) => {
                return Err(self.backend_error(StoreError::unavailable(format!(
                    "{} lookup took longer than {:?}",
                    self.label, self.timeout
                ))))
            }
        };
        let _guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::Acquire) == generation {
            self.cache.insert(key.clone(), entry.clone());
        }
        Ok(entry)
    }

    /// Drops the found entries `stale` picks (`None`: all entries), at once.
    pub(crate) fn invalidate(&self, stale: Option<Stale<K, V>>) {
        let _guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        let Some(stale) = stale else {
            self.cache.invalidate_all();
            return;
        };
        let outcome = self
            .cache
            .invalidate_entries_if(move |k, entry| entry.as_ref().is_some_and(|v| stale(k, v)));
        if outcome.is_err() {
            // Cannot happen (closures are enabled at build); fall back to the safe answer.
            self.cache.invalidate_all();
        }
    }

    /// Forgets every "not found" answer (something may exist now).
    pub(crate) fn forget_missing(&self) {
        let _guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        if self
            .cache
            .invalidate_entries_if(|_, entry| entry.is_none())
            .is_err()
        {
            self.cache.invalidate_all();
        }
    }

    /// Forgets one entry, found or not.
    pub(crate) fn forget(&self, key: &K) {
        let _guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate(key);
    }

    fn backend_error(&self, e: StoreError) -> StoreError {
        self.metrics.backend_error("database");
        e
    }
}

/// Virtual keys by the SHA-256 of their secret (current or previous).
pub struct KeyResolver {
    store: SharedStore,
    cache: StoreCache<KeyHash, KeyLookup>,
}

impl KeyResolver {
    pub fn new(
        store: SharedStore,
        config: &crate::config::Cache,
        timeout: Duration,
        metrics: Metrics,
    ) -> KeyResolver {
        KeyResolver {
            store,
            cache: StoreCache::new("key", config, timeout, metrics),
        }
    }

    /// The key whose current or previous secret hashes to `hash`, or `None`.
    pub async fn resolve(&self, hash: &KeyHash) -> Result<Option<Arc<KeyLookup>>, StoreError> {
        let hex = hash.to_hex();
        self.cache
            .get_or_load(hash, || self.store.lookup_key(&hex))
            .await
    }

    /// Drops cached keys made stale by an admin write, at once.
    pub fn invalidate(&self, what: Invalidation) {
        let stale: Stale<KeyHash, KeyLookup> = match what {
            Invalidation::All => return self.cache.invalidate(None),
            Invalidation::Key(id) => Box::new(move |_, l| l.key.id == id),
            Invalidation::User(id) => {
                Box::new(move |_, l| l.user.as_ref().is_some_and(|u| u.id == id))
            }
            Invalidation::Team(id) => {
                Box::new(move |_, l| l.team.as_ref().is_some_and(|t| t.id == id))
            }
        };
        self.cache.invalidate(Some(stale));
    }

    /// Forgets a negative answer for a hash (a key just created may have been looked up
    /// before it existed).
    pub fn forget(&self, hash: &KeyHash) {
        self.cache.forget(hash);
    }
}

/// Users by id, for callers who present a login token (session or OIDC) rather than a key:
/// the token says who they are, the record says whether they are still live, blocked, and
/// which role they have now.
pub struct UserResolver {
    store: SharedStore,
    cache: StoreCache<String, User>,
}

impl UserResolver {
    pub fn new(
        store: SharedStore,
        config: &crate::config::Cache,
        timeout: Duration,
        metrics: Metrics,
    ) -> UserResolver {
        UserResolver {
            store,
            cache: StoreCache::new("user", config, timeout, metrics),
        }
    }

    /// The live user with this id, or `None` (unknown or deleted).
    pub async fn resolve(&self, id: &str) -> Result<Option<Arc<User>>, StoreError> {
        let id = id.to_owned();
        self.cache
            .get_or_load(&id, || self.store.get_user(&id))
            .await
    }

    /// Drops cached users made stale by an admin write, at once. Key and team writes do
    /// not change a user record.
    pub fn invalidate(&self, what: Invalidation) {
        match what {
            Invalidation::All => self.cache.invalidate(None),
            Invalidation::User(id) => self.cache.forget(&id),
            Invalidation::Key(_) | Invalidation::Team(_) => {}
        }
    }
}
