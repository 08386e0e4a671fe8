//! Virtual keys resolved through a moka cache in front of the store.
//!
//! A hit answers from memory: the warm decision path does no I/O. A miss reads the store
//! once (with a timeout) and remembers the answer: a found key for `key_ttl`, "no such key"
//! for the shorter `negative_ttl`, so a flood of made-up keys that pass the checksum costs
//! one read per key per `negative_ttl`.
//!
//! Admin writes invalidate at once in this process ([`KeyResolver::invalidate`]). A
//! generation counter, bumped under the same lock as the invalidation, stops a read that
//! started before the write from putting its stale answer back after it.

use super::api_key::KeyHash;
use crate::domain::KeyLookup;
use crate::metrics::Metrics;
use crate::store::{SharedStore, StoreError};
use moka::sync::Cache;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Entry = Option<Arc<KeyLookup>>;

/// Which cached keys an admin write makes stale.
#[derive(Debug, Clone)]
pub enum Invalidation {
    Key(String),
    User(String),
    Team(String),
    All,
}

pub struct KeyResolver {
    store: SharedStore,
    cache: Cache<KeyHash, Entry>,
    generation: AtomicU64,
    /// Serialises "insert if no invalidation happened" against invalidations.
    write_lock: Mutex<()>,
    timeout: Duration,
    metrics: Metrics,
}

struct TtlByAnswer {
    found: Duration,
    missing: Duration,
}

impl moka::Expiry<KeyHash, Entry> for TtlByAnswer {
    fn expire_after_create(&self, _: &KeyHash, value: &Entry, _: Instant) -> Option<Duration> {
        Some(if value.is_some() {
            self.found
        } else {
            self.missing
        })
    }
}

impl KeyResolver {
    pub fn new(
        store: SharedStore,
        config: &crate::config::Cache,
        timeout: Duration,
        metrics: Metrics,
    ) -> KeyResolver {
        let cache = Cache::builder()
            .max_capacity(config.max_entries)
            .expire_after(TtlByAnswer {
                found: config.key_ttl,
                missing: config.negative_ttl,
            })
            .support_invalidation_closures()
            .build();
        KeyResolver {
            store,
            cache,
            generation: AtomicU64::new(0),
            write_lock: Mutex::new(()),
            timeout,
            metrics,
        }
    }

    /// The key whose current or previous secret hashes to `hash`, or `None`.
    pub async fn resolve(&self, hash: &KeyHash) -> Result<Entry, StoreError> {
        if let Some(entry) = self.cache.get(hash) {
            let result = if entry.is_some() {
                "hit"
            } else {
                "negative_hit"
            };
            self.count(result);
            return Ok(entry);
        }
        self.count("miss");
        let generation = self.generation.load(Ordering::Acquire);
        let read = tokio::time::timeout(self.timeout, self.store.lookup_key(&hash.to_hex())).await;
        let entry = match read {
            Ok(Ok(found)) => found.map(Arc::new),
            Ok(Err(e)) => return Err(self.backend_error(e)),
            Err(_) => {
                return Err(self.backend_error(StoreError::Unavailable(format!(
                    "key lookup took longer than {:?}",
                    self.timeout
                ))))
            }
        };
        let _guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::Acquire) == generation {
            self.cache.insert(*hash, entry.clone());
        }
        Ok(entry)
    }

    /// Drops cached keys made stale by an admin write, at once.
    pub fn invalidate(&self, what: Invalidation) {
        let _guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Invalidation::All = what {
            self.cache.invalidate_all();
            return;
        }
        let outcome = self.cache.invalidate_entries_if(move |_, entry| {
            let Some(lookup) = entry else { return false };
            match &what {
                Invalidation::Key(id) => &lookup.key.id == id,
                Invalidation::User(id) => lookup.user.as_ref().is_some_and(|u| &u.id == id),
                Invalidation::Team(id) => lookup.team.as_ref().is_some_and(|t| &t.id == id),
                Invalidation::All => true,
            }
        });
        if outcome.is_err() {
            // Cannot happen (closures are enabled at build); fall back to the safe answer.
            self.cache.invalidate_all();
        }
    }

    /// Forgets a negative answer for a hash (a key just created may have been looked up
    /// before it existed).
    pub fn forget(&self, hash: &KeyHash) {
        let _guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate(hash);
    }

    fn count(&self, result: &str) {
        self.metrics
            .cache_requests
            .with_label_values(&["key", result])
            .inc();
    }

    fn backend_error(&self, e: StoreError) -> StoreError {
        self.metrics
            .backend_errors
            .with_label_values(&["database"])
            .inc();
        e
    }
}
