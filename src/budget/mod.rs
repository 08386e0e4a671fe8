//! Budgets at Check: reserve, then settle.
//!
//! A request's estimated cost is reserved against every budget that applies to it (its
//! key's, its user's, its team's `max_budget`) in one atomic step: admitted only if each
//! budget's committed spend plus what is reserved plus this request fits. When the
//! request's usage is written, its reservation is replaced by the real cost
//! ([`Ledger::settle`]). Reservations of requests that never report expire after
//! `budgets.reservation_timeout`. So concurrent requests cannot push spend past a budget by
//! more than the error of their estimates, unlike check-then-charge.
//!
//! Committed spend comes from the store (the `spend` table): it is read the first time a
//! budget is seen in a period and again every `refresh` (`cache.key_ttl`), which is how
//! spend written by other replicas is learnt. Between reads the ledger adds what is
//! settled. A budget is keyed by its period's start, so a new period starts empty and old
//! reservations settle against the period they were made in.
//!
//! Two ledgers:
//!
//! - [`memory`]: reservations in this process (no `redis` configured). Replicas share
//!   committed spend through the store (up to `refresh` late) but not each other's
//!   reservations.
//! - [`redis`]: reservations and committed spend in Redis, shared by every replica, one Lua
//!   script per reserve, settle or release. While Redis is unreachable `redis.failure_mode`
//!   applies, like for rate limits.

pub mod memory;
pub mod redis;

use crate::config::Config;
use crate::domain::{BudgetDuration, Limits, Timestamp};
use crate::metrics::Metrics;
use crate::store::{SharedStore, SpendKind, StoreError};
use crate::usage::period;
use memory::MemoryLedger;
use redis::RedisLedger;
use std::sync::Arc;
use std::time::Duration;

/// One budget a request is charged against.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    pub kind: SpendKind,
    pub id: String,
    pub limit_usd: f64,
    pub duration: Option<BudgetDuration>,
}

impl Charge {
    /// The charge for an entity's limits, when it has a `max_budget`.
    pub fn of(kind: SpendKind, id: &str, limits: &Limits) -> Option<Charge> {
        limits.max_budget.map(|limit_usd| Charge {
            kind,
            id: id.to_owned(),
            limit_usd,
            duration: limits.budget_duration,
        })
    }
}

/// What a reservation found.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Reserved,
    /// This budget has no room: `used_usd` is committed plus reserved.
    Refused {
        charge: Charge,
        used_usd: f64,
        /// When its period ends (Unix seconds).
        period_end: Timestamp,
    },
}

/// The ledger in force: in this process, or in Redis when `redis` is configured.
pub struct Ledger {
    inner: Inner,
}

enum Inner {
    Memory(Box<MemoryLedger>),
    Redis(Arc<RedisLedger>),
}

impl Ledger {
    /// An in-process ledger.
    pub fn new(
        store: SharedStore,
        refresh: Duration,
        reservation_timeout: Duration,
        timeout: Duration,
    ) -> Ledger {
        Ledger {
            inner: Inner::Memory(Box::new(MemoryLedger::new(
                store,
                refresh,
                reservation_timeout,
                timeout,
            ))),
        }
    }

    /// The ledger for `config`: in Redis when `redis` is configured (committed spend read
    /// again every `cache.key_ttl`, reservations expiring after
    /// `budgets.reservation_timeout`, store reads bounded by `database.timeout`), else in
    /// this process. Does no I/O; fails only on an invalid `redis.url` (the reason never
    /// carries the URL).
    pub fn from_config(
        store: SharedStore,
        config: &Config,
        metrics: Metrics,
    ) -> Result<Ledger, StoreError> {
        let refresh = config.cache.key_ttl;
        let reservation_timeout = config.budgets.reservation_timeout;
        let timeout = config.database.timeout;
        Ok(match &config.redis {
            None => Ledger::new(store, refresh, reservation_timeout, timeout),
            Some(redis) => Ledger {
                inner: Inner::Redis(Arc::new(RedisLedger::new(
                    redis,
                    store,
                    refresh,
                    reservation_timeout,
                    timeout,
                    metrics,
                )?)),
            },
        })
    }

    /// Reserves `amount_usd` for request `request_id` against every charge, all or nothing.
    /// Reads the store only for budgets not seen in this period or not read for `refresh`.
    /// `Err` when the store cannot be read, or Redis is unreachable with `failure_mode:
    /// closed`.
    pub async fn reserve(
        &self,
        request_id: &str,
        charges: &[Charge],
        amount_usd: f64,
        now: Timestamp,
    ) -> Result<Verdict, StoreError> {
        match &self.inner {
            Inner::Memory(m) => m.reserve(request_id, charges, amount_usd, now).await,
            Inner::Redis(r) => r.reserve(request_id, charges, amount_usd, now).await,
        }
    }

    /// Replaces a request's reservation by its real cost. A request with no reservation
    /// (expired, or made by another replica of an in-process ledger) changes nothing: its
    /// cost is learnt from the store at the next refresh. In Redis the update runs in the
    /// background (it does not wait for Redis).
    pub fn settle(&self, request_id: &str, cost_usd: f64) {
        match &self.inner {
            Inner::Memory(m) => m.settle(request_id, cost_usd),
            Inner::Redis(r) => r.settle(request_id, Some(cost_usd)),
        }
    }

    /// Gives a reservation back without a cost (a later step refused the request). In Redis
    /// the update runs in the background.
    pub fn release(&self, request_id: &str) {
        match &self.inner {
            Inner::Memory(m) => m.release(request_id),
            Inner::Redis(r) => r.settle(request_id, None),
        }
    }

    /// Committed and reserved spend of a budget in the period containing `now`, as this
    /// process's memory sees it (for tests and the API). With Redis this is the
    /// `failure_mode: local` ledger; see [`Ledger::shared_view`].
    pub fn view(&self, kind: SpendKind, id: &str, now: Timestamp) -> Option<(f64, f64)> {
        match &self.inner {
            Inner::Memory(m) => m.view(kind, id, now),
            Inner::Redis(r) => r.local.view(kind, id, now),
        }
    }

    /// Committed and reserved spend of a budget in the period containing `now` as every
    /// replica sees it: read from Redis when configured (only for a budget this process has
    /// reserved against in that period), else [`Ledger::view`].
    pub async fn shared_view(
        &self,
        kind: SpendKind,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<(f64, f64)>, StoreError> {
        match &self.inner {
            Inner::Memory(m) => Ok(m.view(kind, id, now)),
            Inner::Redis(r) => r.view(kind, id, now).await,
        }
    }

    /// Whether the shared ledger is reachable (always true in memory).
    pub fn healthy(&self) -> bool {
        match &self.inner {
            Inner::Memory(_) => true,
            Inner::Redis(r) => r.healthy(),
        }
    }
}

/// The budget's period containing `now` (`start`, `end`) and its committed spend, read from
/// the store within `timeout`.
pub(crate) async fn read_period(
    store: &SharedStore,
    timeout: Duration,
    charge: &Charge,
    now: Timestamp,
) -> Result<(i64, i64, f64), StoreError> {
    let read = async {
        let anchor = match charge.duration {
            Some(BudgetDuration::ThirtyDays) => created_at(store, charge).await?,
            _ => 0,
        };
        let (start, end) = period::window(period::effective(charge.duration), now, anchor);
        let spent = store.current_spend(charge.kind, &charge.id, now).await?;
        Ok::<_, StoreError>((start, end, spent))
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unavailable(format!(
            "reading spend took longer than {timeout:?}"
        ))),
    }
}

async fn created_at(store: &SharedStore, charge: &Charge) -> Result<Timestamp, StoreError> {
    Ok(match charge.kind {
        SpendKind::Key => store.get_key(&charge.id).await?.map(|k| k.created_at),
        SpendKind::User => store.get_user(&charge.id).await?.map(|u| u.created_at),
        SpendKind::Team => store.get_team(&charge.id).await?.map(|t| t.created_at),
    }
    .unwrap_or(0))
}
