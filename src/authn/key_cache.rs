//! Virtual keys and users resolved through moka caches in front of the store.
//!
//! A hit answers from memory: the warm decision path does no I/O. A miss reads the store
//! once (with a timeout) and remembers the answer: a found record for `key_ttl`, "no such
//! record" for the shorter `negative_ttl`, so a flood of made-up keys that pass the checksum
//! costs one read per key per `negative_ttl`.
//!
//! A found key is kept as a [`CachedKey`]: what a decision reads and nothing more, its
//! owners and its permission and model lists shared with the other cached keys that have
//! the same ones ([`Shared`]), so a hundred thousand keys take tens of MiB, not hundreds.
//!
//! Admin writes invalidate at once in this process ([`KeyResolver::invalidate`],
//! [`UserResolver::invalidate`]). A generation counter, bumped under the same lock as the
//! invalidation, stops a read that started before the write from putting its stale answer
//! back after it.

use super::api_key::KeyHash;
use crate::domain::{
    BudgetDuration, CachedKey, KeyLookup, KeyOwnerOrg, KeyOwnerTeam, KeyOwnerUser, Limits, Names,
    User,
};
use crate::metrics::{CacheCounters, CacheResult, Metrics};
use crate::store::{SharedStore, StoreError};
use moka::sync::Cache;
use std::collections::{HashMap, HashSet};
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
    Org(String),
    /// A custom role's permissions changed: the users holding it, and their keys.
    Role(String),
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

    /// How many answers (found or not) are cached, once pending inserts are counted.
    pub(crate) fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
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
    cache: StoreCache<KeyHash, CachedKey>,
    shared: Mutex<Shared>,
}

/// One copy of what many cached keys have in common: their owners, and their permission
/// and model lists. A key read from the store takes the copy held for its owner (or list)
/// only when it is equal to what the store answered for this key, else its own becomes the
/// one held: sharing never changes what a key says, and each key's owner is as fresh as the
/// read that cached it. Copies that no cached key holds any more are dropped once the pool
/// has doubled since it was last swept.
#[derive(Default)]
struct Shared {
    users: HashMap<Box<str>, Arc<KeyOwnerUser>>,
    teams: HashMap<Box<str>, Arc<KeyOwnerTeam>>,
    orgs: HashMap<Box<str>, Arc<KeyOwnerOrg>>,
    names: HashSet<Names>,
    /// By their exact value (`max_budget` by its bits).
    limits: HashMap<LimitsKey, Arc<Limits>>,
    /// The pool's size after its last sweep.
    swept_at: usize,
}

type LimitsKey = (
    Option<i64>,
    Option<i64>,
    Option<u64>,
    Option<BudgetDuration>,
    Option<i64>,
);

/// The pool is not swept before it holds this many copies.
const SWEEP_FLOOR: usize = 1024;

impl Shared {
    fn key(&mut self, lookup: KeyLookup) -> CachedKey {
        let KeyLookup {
            key,
            via_previous,
            user,
            team,
            org,
        } = lookup;
        let cached = CachedKey {
            id: key.id.into_boxed_str(),
            permissions: self.names(key.permissions),
            models: self.names(key.models),
            limits: self.limits(key.limits),
            expires_at: key.expires_at,
            previous_expires_at: key.previous_expires_at,
            revoked: key.revoked_at.is_some(),
            blocked: key.blocked,
            via_previous,
            user: user.map(|u| share(&mut self.users, u.id.clone(), u)),
            team: team.map(|t| share(&mut self.teams, t.id.clone(), t)),
            org: org.map(|o| share(&mut self.orgs, o.id.clone(), o)),
        };
        self.sweep();
        cached
    }

    fn names(&mut self, list: Vec<String>) -> Names {
        let list: Box<[Box<str>]> = list.into_iter().map(String::into_boxed_str).collect();
        if let Some(held) = self.names.get(&*list) {
            return held.clone();
        }
        let names: Names = Arc::from(list);
        self.names.insert(names.clone());
        names
    }

    fn limits(&mut self, limits: Limits) -> Arc<Limits> {
        let key = (
            limits.rpm,
            limits.tpm,
            limits.max_budget.map(f64::to_bits),
            limits.budget_duration,
            limits.max_parallel,
        );
        self.limits
            .entry(key)
            .or_insert_with(|| Arc::new(limits))
            .clone()
    }

    fn len(&self) -> usize {
        self.users.len() + self.teams.len() + self.orgs.len() + self.names.len() + self.limits.len()
    }

    /// Drops the copies only the pool holds, when it has doubled since the last sweep.
    fn sweep(&mut self) {
        if self.len() < (2 * self.swept_at).max(SWEEP_FLOOR) {
            return;
        }
        self.users.retain(|_, held| Arc::strong_count(held) > 1);
        self.teams.retain(|_, held| Arc::strong_count(held) > 1);
        self.orgs.retain(|_, held| Arc::strong_count(held) > 1);
        self.names.retain(|held| Arc::strong_count(held) > 1);
        self.limits.retain(|_, held| Arc::strong_count(held) > 1);
        self.swept_at = self.len();
    }
}

/// The copy of `owner` held under `id` when it is equal, else `owner`, now held.
fn share<T: PartialEq>(held: &mut HashMap<Box<str>, Arc<T>>, id: String, owner: T) -> Arc<T> {
    match held.get(id.as_str()) {
        Some(copy) if **copy == owner => copy.clone(),
        _ => {
            let owner = Arc::new(owner);
            held.insert(id.into_boxed_str(), owner.clone());
            owner
        }
    }
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
            shared: Mutex::new(Shared::default()),
        }
    }

    /// The key whose current or previous secret hashes to `hash`, or `None`.
    pub async fn resolve(&self, hash: &KeyHash) -> Result<Option<Arc<CachedKey>>, StoreError> {
        self.cache
            .get_or_load(hash, || async {
                let found = self.store.lookup_key(&hash.to_hex()).await?;
                Ok(found.map(|lookup| {
                    let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
                    shared.key(lookup)
                }))
            })
            .await
    }

    /// Drops cached keys made stale by an admin write, at once.
    pub fn invalidate(&self, what: Invalidation) {
        let stale: Stale<KeyHash, CachedKey> = match what {
            Invalidation::All => return self.cache.invalidate(None),
            Invalidation::Key(id) => Box::new(move |_, k| *k.id == *id),
            Invalidation::User(id) => {
                Box::new(move |_, k| k.user.as_ref().is_some_and(|u| u.id == id))
            }
            Invalidation::Team(id) => {
                Box::new(move |_, k| k.team.as_ref().is_some_and(|t| t.id == id))
            }
            Invalidation::Org(id) => {
                Box::new(move |_, k| k.org.as_ref().is_some_and(|o| o.id == id))
            }
            Invalidation::Role(name) => {
                Box::new(move |_, k| k.user.as_ref().is_some_and(|u| u.role.as_str() == name))
            }
        };
        self.cache.invalidate(Some(stale));
    }

    /// How many keys (and unknown secrets) are cached.
    pub fn cached(&self) -> u64 {
        self.cache.len()
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
    /// not change a user record; a custom role's permissions are part of its holders'.
    pub fn invalidate(&self, what: Invalidation) {
        match what {
            Invalidation::All => self.cache.invalidate(None),
            Invalidation::User(id) => self.cache.forget(&id),
            Invalidation::Role(name) => self
                .cache
                .invalidate(Some(Box::new(move |_, u| u.role.as_str() == name))),
            Invalidation::Key(_) | Invalidation::Team(_) | Invalidation::Org(_) => {}
        }
    }
}

/// Orgs by id, as the budgets and limits of people signed in with a login token need them
/// (a key's org comes with the key). Cached like users; an org write drops its entry.
pub struct OrgResolver {
    store: SharedStore,
    cache: StoreCache<String, KeyOwnerOrg>,
}

impl OrgResolver {
    pub fn new(
        store: SharedStore,
        config: &crate::config::Cache,
        timeout: Duration,
        metrics: Metrics,
    ) -> OrgResolver {
        OrgResolver {
            store,
            cache: StoreCache::new("org", config, timeout, metrics),
        }
    }

    /// The live org with this id, or `None` (unknown or deleted).
    pub async fn resolve(&self, id: &str) -> Result<Option<Arc<KeyOwnerOrg>>, StoreError> {
        let id = id.to_owned();
        self.cache
            .get_or_load(&id, || async {
                Ok(self
                    .store
                    .get_org(&id)
                    .await?
                    .as_ref()
                    .map(KeyOwnerOrg::from))
            })
            .await
    }

    /// Drops a cached org made stale by an admin write, at once.
    pub fn invalidate(&self, what: Invalidation) {
        match what {
            Invalidation::All => self.cache.invalidate(None),
            Invalidation::Org(id) => self.cache.forget(&id),
            Invalidation::Key(_)
            | Invalidation::User(_)
            | Invalidation::Team(_)
            | Invalidation::Role(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ApiKey, Limits, Role};

    fn lookup(id: &str, user: Option<(&str, bool)>, models: &[&str]) -> KeyLookup {
        KeyLookup {
            key: ApiKey {
                id: id.into(),
                name: format!("name of {id}"),
                key_hint: "sk-tg-abcd…wxyz".into(),
                user_id: user.map(|(u, _)| u.into()),
                team_id: Some("t1".into()),
                permissions: vec!["chat".into()],
                models: models.iter().map(|m| m.to_string()).collect(),
                limits: Limits::default(),
                expires_at: Some(1_900_000_000),
                blocked: false,
                metadata: serde_json::json!({"env": "prod"}),
                created_at: 1_800_000_000,
                updated_at: 1_800_000_000,
                revoked_at: None,
                previous_expires_at: None,
            },
            via_previous: false,
            user: user.map(|(id, blocked)| KeyOwnerUser {
                id: id.into(),
                role: Role::User,
                blocked,
                limits: Limits::default(),
            }),
            team: Some(KeyOwnerTeam {
                id: "t1".into(),
                models: vec!["gpt-4o*".into()],
                blocked: false,
                limits: Limits::default(),
            }),
            org: None,
        }
    }

    #[test]
    fn keys_share_equal_owners_and_lists_and_say_what_their_own_read_said() {
        let mut shared = Shared::default();
        let a = shared.key(lookup("k1", Some(("u1", false)), &["gpt-4o"]));
        let b = shared.key(lookup("k2", Some(("u1", false)), &["gpt-4o"]));
        assert_eq!(
            a,
            CachedKey::from(lookup("k1", Some(("u1", false)), &["gpt-4o"]))
        );
        assert!(Arc::ptr_eq(
            a.user.as_ref().unwrap(),
            b.user.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(
            a.team.as_ref().unwrap(),
            b.team.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(&a.models, &b.models));
        assert!(Arc::ptr_eq(&a.permissions, &b.permissions));
        assert!(Arc::ptr_eq(&a.limits, &b.limits));

        // Read after its user was blocked, a key says so; one read before keeps its read.
        let c = shared.key(lookup("k3", Some(("u1", true)), &["gpt-4o-mini"]));
        assert!(c.user.as_ref().unwrap().blocked);
        assert!(!a.user.as_ref().unwrap().blocked);
        assert_eq!(&*c.models, [Box::from("gpt-4o-mini")]);
        assert_eq!(&*a.models, [Box::from("gpt-4o")]);
        // The next read shares the newest copy.
        let d = shared.key(lookup("k4", Some(("u1", true)), &[]));
        assert!(Arc::ptr_eq(
            c.user.as_ref().unwrap(),
            d.user.as_ref().unwrap()
        ));
        assert!(d.models.is_empty());
    }

    #[test]
    fn only_equal_limits_are_shared() {
        let mut shared = Shared::default();
        let with = |rpm: Option<i64>, budget: Option<f64>| {
            let mut lookup = lookup("k", None, &[]);
            lookup.key.limits = Limits {
                rpm,
                max_budget: budget,
                ..Limits::default()
            };
            lookup
        };
        let a = shared.key(with(Some(60), Some(5.0)));
        let b = shared.key(with(Some(60), Some(5.0)));
        let c = shared.key(with(Some(60), Some(5.5)));
        let d = shared.key(with(None, None));
        assert!(Arc::ptr_eq(&a.limits, &b.limits));
        assert_eq!(c.limits.max_budget, Some(5.5));
        assert_eq!(*d.limits, Limits::default());
        assert_eq!(c, CachedKey::from(with(Some(60), Some(5.5))));
    }

    #[test]
    fn copies_no_cached_key_holds_are_swept() {
        let mut shared = Shared::default();
        let kept = shared.key(lookup("kept", Some(("u-kept", false)), &["kept"]));
        let mut most = 0;
        for i in 0..10 * SWEEP_FLOOR {
            let user = format!("u{i}");
            let model = format!("m{i}");
            drop(shared.key(lookup("k", Some((&user, false)), &[&model])));
            most = most.max(shared.len());
        }
        assert!(
            most <= 2 * SWEEP_FLOOR + 3,
            "the pool stays bounded: {most}"
        );
        assert!(Arc::ptr_eq(
            &shared.users["u-kept"],
            kept.user.as_ref().unwrap()
        ));
        assert!(shared.names.contains(&*kept.models));
    }
}
