//! The counters a decision takes from, and the one reservation a request holds until its
//! usage arrives: rate-limit buckets and budgets, in this process or in Redis.
//!
//! [`Counters::take`] checks a request's budgets (its estimated cost against each
//! `max_budget`) and then its buckets (1 from each rpm bucket, its estimated tokens from
//! each tpm bucket), and only if everything fits takes all of it, keeping one
//! [`Reservation`] under the request id: the amount on each budget and the token demands.
//! [`Counters::settle`] replaces the reservation by the real cost and token count.
//! A request also takes a slot of each parallel limit it counts for
//! ([`crate::limits::parallel`]) with the rest, all or nothing; settling gives the slots
//! back, and a slot whose usage never comes ends with its lease (`limits.parallel_lease`).
//!
//! - In this process ([`Local`]): the embedded default. Replicas share committed spend
//!   through the store (up to `cache.key_ttl` late) but not each other's buckets or
//!   reservations.
//! - In Redis ([`super::redis`]): one script per decision and one per settle (on a Redis
//!   Cluster one per owner the request counts for), shared by every replica, so whichever
//!   replica writes a request's usage record settles it. While
//!   Redis is unreachable `redis.failure_mode` answers: `open` admits without counting,
//!   `closed` refuses with 503, `local` counts in this process, each rate limit divided by
//!   `redis.replicas` and budgets whole. The first failed call (error or `redis.timeout`)
//!   marks Redis down and starts a probe ([`Health`]); until it answers no call waits for
//!   Redis.

use super::redis::RedisCounters;
use crate::backend::{Backend, BackendError};
use crate::budget::memory::MemoryLedger;
use crate::budget::{Charge, Verdict};
use crate::config::{Config, FailureMode};
use crate::domain::Timestamp;
use crate::limits::bucket::Shape;
use crate::limits::memory::MemoryBuckets;
use crate::limits::parallel::{MemorySlots, Slot};
use crate::limits::{Demand, Outcome, Settlement, Unit};
use crate::metrics::Metrics;
use crate::redis_pool::{Call, Health, RedisPool};
use crate::store::{SharedStore, SpendKind};
use metrics::Counter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What a request asks of the counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reservation {
    /// Its buckets, in the order of [`crate::limits::plan::demands`].
    pub demands: Vec<Demand>,
    /// Its budgets.
    pub charges: Vec<Charge>,
    /// Its estimated cost, reserved on each budget.
    pub amount_usd: f64,
    /// Its parallel limits, in the order of [`crate::limits::parallel::slots`].
    pub slots: Vec<Slot>,
}

impl Reservation {
    pub fn is_empty(&self) -> bool {
        self.demands.is_empty() && self.charges.is_empty() && self.slots.is_empty()
    }

    /// The token buckets' demands: what settling corrects.
    pub fn token_demands(&self) -> Vec<Demand> {
        self.demands
            .iter()
            .filter(|d| d.unit == Unit::Tokens)
            .cloned()
            .collect()
    }
}

/// What [`Counters::take`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Taken {
    /// Everything fit and was taken. The views are the buckets after it, in the order of the
    /// demands (none when no bucket was consulted: `failure_mode: open`).
    Admitted(Outcome),
    /// A budget has no room; nothing was taken.
    OverBudget {
        charge: Charge,
        /// Committed plus reserved.
        used_usd: f64,
        /// When its period ends (Unix seconds).
        period_end: Timestamp,
    },
    /// A bucket has no room; nothing was taken.
    RateLimited(Outcome),
    /// A parallel limit has no free slot; nothing was taken.
    InFlight {
        slot: Slot,
        /// The owner's requests in flight.
        in_flight: u64,
    },
}

/// Why the counters could not answer.
#[derive(Debug, thiserror::Error)]
pub enum CountError {
    /// Redis is unreachable and `failure_mode` is `closed`: answered as a refusal.
    #[error("redis is unreachable (failure_mode: closed)")]
    Closed,
    /// The store could not be read for a budget's committed spend.
    #[error(transparent)]
    Backend(BackendError),
}

/// The counters in force.
pub struct Counters {
    inner: Inner,
}

enum Inner {
    Local(Box<Local>),
    Redis(Box<Shared>),
}

struct Shared {
    redis: Arc<RedisCounters>,
    mode: FailureMode,
    replicas: u64,
    /// The counters of `failure_mode: local`, and of reservations made while Redis was
    /// down.
    local: Local,
    health: Arc<Health>,
    /// Reservations open in Redis as last counted ([`Counters::count_open`]); on a Redis
    /// Cluster none are counted.
    open_in_redis: AtomicU64,
    /// `tollgate_failure_mode_total{backend="redis",mode}` of the configured mode.
    failure_mode: Counter,
}

impl Counters {
    /// In Redis when `redis` is configured, else in this process. Does no I/O: Redis is
    /// assumed up (`tollgate_redis_up` 1) until a call fails. Fails only on an invalid
    /// `redis.url` or `redis.cluster` (the reason never carries the URL).
    pub fn from_config(
        store: SharedStore,
        config: &Config,
        metrics: Metrics,
    ) -> Result<Counters, String> {
        let pool = match &config.redis {
            Some(redis) => Some(RedisPool::new(redis, redis.pool_size, redis.timeout)?),
            None => None,
        };
        Ok(Self::with_redis_pool(store, config, metrics, pool))
    }

    /// [`Counters::from_config`] through connections already made to the configured Redis
    /// (`pool`, shared with the usage queue); in this process when there is none.
    pub fn with_redis_pool(
        store: SharedStore,
        config: &Config,
        metrics: Metrics,
        pool: Option<RedisPool>,
    ) -> Counters {
        let local = Local::new(store.clone(), config);
        let (Some(redis), Some(pool)) = (&config.redis, pool) else {
            return Counters {
                inner: Inner::Local(Box::new(local)),
            };
        };
        let counters = RedisCounters::with_pool(pool, redis, store, config);
        let gauge = Some(metrics.track_redis());
        let failure_mode = metrics.failure_mode("redis", redis.failure_mode);
        Counters {
            inner: Inner::Redis(Box::new(Shared {
                redis: Arc::new(counters),
                mode: redis.failure_mode,
                replicas: redis.replicas.max(1),
                local,
                health: Health::new(
                    "rate limits and budgets",
                    redis.failure_mode,
                    metrics,
                    gauge,
                ),
                failure_mode,
                open_in_redis: AtomicU64::new(0),
            })),
        }
    }

    /// Checks and, only if everything fits, takes what `reservation` asks, keeping it under
    /// `request_id` (a previous reservation of the same id is given back first). `now_ms`
    /// is Unix milliseconds in the admission clock.
    pub async fn take(
        &self,
        request_id: &str,
        reservation: &Reservation,
        now_ms: i64,
    ) -> Result<Taken, CountError> {
        let shared = match &self.inner {
            Inner::Local(local) => return local.take(request_id, reservation, now_ms).await,
            Inner::Redis(shared) => shared,
        };
        if shared.health.is_up() {
            match shared.redis.take(request_id, reservation, now_ms).await {
                Ok(taken) => return Ok(taken),
                Err(e) if e.backend() == Backend::Redis => shared.failed(&e),
                Err(e) => return Err(CountError::Backend(e)),
            }
        }
        shared.failure_mode.increment(1);
        match shared.mode {
            FailureMode::Open => Ok(Taken::Admitted(Outcome {
                admitted: true,
                views: vec![],
            })),
            FailureMode::Closed => Err(CountError::Closed),
            FailureMode::Local => {
                let share = Reservation {
                    demands: reservation
                        .demands
                        .iter()
                        .map(|d| Demand {
                            shape: local_shape(d.shape, shared.replicas),
                            ..d.clone()
                        })
                        .collect(),
                    slots: reservation
                        .slots
                        .iter()
                        .map(|s| Slot {
                            limit: local_share(s.limit, shared.replicas),
                            ..s.clone()
                        })
                        .collect(),
                    ..reservation.clone()
                };
                shared.local.take(request_id, &share, now_ms).await
            }
        }
    }

    /// Replaces a request's reservation by its real cost and token count: the amount
    /// reserved on each budget becomes `cost_usd` committed, each token bucket gets back its
    /// estimate and gives `tokens`. A request with no reservation (expired, or made by
    /// another replica of in-process counters) changes nothing: its cost is learnt from the
    /// store at the next refresh.
    pub async fn settle(&self, request_id: &str, cost_usd: f64, tokens: u64, now_ms: i64) {
        let shared = match &self.inner {
            Inner::Local(local) => return local.settle(request_id, cost_usd, tokens, now_ms),
            Inner::Redis(shared) => shared,
        };
        // A reservation made while Redis was down lives here.
        shared.local.settle(request_id, cost_usd, tokens, now_ms);
        if shared.health.is_up() {
            match shared
                .redis
                .settle_request(request_id, cost_usd, tokens, now_ms)
                .await
            {
                Err(e) if e.backend() == Backend::Redis => shared.failed(&e),
                _ => {}
            }
        }
    }

    /// Reservations held for admitted requests and not yet settled, given back or due by
    /// `now` (Unix seconds, admission clock): those of this process, plus with one Redis
    /// every replica's as last counted by [`Counters::count_open`].
    pub fn open_reservations(&self, now: Timestamp) -> u64 {
        match &self.inner {
            Inner::Local(local) => local.ledger.open(now),
            Inner::Redis(shared) => {
                shared.local.ledger.open(now) + shared.open_in_redis.load(Ordering::Relaxed)
            }
        }
    }

    /// With one Redis: counts the reservations not due by `now` in Redis (one `ZCOUNT` of
    /// the expiry set), for [`Counters::open_reservations`]. Nothing while Redis is down
    /// (the last count stands), in this process, or on a Redis Cluster (reservations are
    /// cut by owner over the shards there: no one cheap call counts them).
    pub async fn count_open(&self, now: Timestamp) {
        let Inner::Redis(shared) = &self.inner else {
            return;
        };
        if !shared.health.is_up() || shared.redis.pool().is_cluster() {
            return;
        }
        let mut cmd = ::redis::cmd("ZCOUNT");
        cmd.arg(shared.redis.expiry_key())
            .arg(format!("({now}"))
            .arg("+inf");
        if let Ok(open) = shared.redis.pool().call::<u64>(Call::Cmd(cmd)).await {
            shared.open_in_redis.store(open, Ordering::Relaxed);
        }
    }

    /// Whether the counters are shared through Redis (else they live in this process).
    pub fn is_shared(&self) -> bool {
        matches!(self.inner, Inner::Redis(_))
    }

    /// Whether Redis is reachable (always true in this process).
    pub fn healthy(&self) -> bool {
        match &self.inner {
            Inner::Local(_) => true,
            Inner::Redis(shared) => shared.health.is_up(),
        }
    }

    /// Pings Redis when configured (nothing to ask without it), within `redis.timeout`.
    /// Only tells: a failed ping does not mark Redis down for decisions (a probe must not
    /// send them to `failure_mode`; failed calls do).
    pub async fn ping(&self) -> Result<(), BackendError> {
        match &self.inner {
            Inner::Local(_) => Ok(()),
            Inner::Redis(shared) => shared.redis.pool().ping().await,
        }
    }

    /// Committed and reserved spend of a budget in the period containing `now` (Unix
    /// seconds) as this process's memory holds it: the in-process counters, or with Redis
    /// those of `failure_mode: local`. See [`Counters::shared_view`].
    pub fn view(&self, kind: SpendKind, id: &str, now: Timestamp) -> Option<(f64, f64)> {
        match &self.inner {
            Inner::Local(local) => local.ledger.view(kind, id, now),
            Inner::Redis(shared) => shared.local.ledger.view(kind, id, now),
        }
    }

    /// Committed and reserved spend of a budget in the period containing `now` as every
    /// replica sees it: from Redis when configured (only for a budget this process has
    /// reserved against in that period), else [`Counters::view`].
    pub async fn shared_view(
        &self,
        kind: SpendKind,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<(f64, f64)>, BackendError> {
        match &self.inner {
            Inner::Local(local) => Ok(local.ledger.view(kind, id, now)),
            Inner::Redis(shared) => shared.redis.view(kind, id, now).await,
        }
    }
}

impl Shared {
    /// A call to Redis failed: mark it down and make sure a probe runs.
    fn failed(&self, e: &BackendError) {
        self.health.failed(self.redis.pool(), e.detail());
    }
}

/// Counters in this process: buckets, parallel slots and a ledger of budgets and
/// reservations.
pub struct Local {
    buckets: MemoryBuckets,
    slots: MemorySlots,
    ledger: Arc<MemoryLedger>,
    /// `limits.parallel_lease` in ms.
    lease_ms: i64,
}

impl Local {
    /// Committed spend read again every `cache.key_ttl`, reservations expiring after
    /// `budgets.reservation_timeout`, store reads bounded by `database.timeout`.
    pub fn new(store: SharedStore, config: &Config) -> Local {
        Local {
            buckets: MemoryBuckets::new(),
            slots: MemorySlots::new(),
            lease_ms: lease_ms(config),
            ledger: Arc::new(MemoryLedger::new(
                store,
                config.cache.key_ttl,
                config.budgets.reservation_timeout,
                config.database.timeout,
            )),
        }
    }

    async fn take(
        &self,
        request_id: &str,
        reservation: &Reservation,
        now_ms: i64,
    ) -> Result<Taken, CountError> {
        // Without a request id nothing can settle the tokens later: none are kept.
        let tokens = if request_id.is_empty() {
            Vec::new()
        } else {
            reservation.token_demands()
        };
        let verdict = self
            .ledger
            .reserve(
                request_id,
                &reservation.charges,
                reservation.amount_usd,
                tokens,
                now_ms.div_euclid(1000),
            )
            .await
            .map_err(|e| CountError::Backend(e.into()))?;
        if let Verdict::Refused {
            charge,
            used_usd,
            period_end,
        } = verdict
        {
            return Ok(Taken::OverBudget {
                charge,
                used_usd,
                period_end,
            });
        }
        // Slots before buckets: a refused take gives slots back exactly, bucket units not.
        let holder = slot_holder(request_id, &reservation.slots);
        if !reservation.slots.is_empty() {
            let until_ms = now_ms.saturating_add(self.lease_ms);
            if let Err(full) = self
                .slots
                .take(&holder, &reservation.slots, now_ms, until_ms)
            {
                self.ledger.release(request_id);
                return Ok(Taken::InFlight {
                    slot: reservation.slots[full.index].clone(),
                    in_flight: full.in_flight,
                });
            }
        }
        let outcome = self.buckets.admit_now(&reservation.demands, now_ms);
        if outcome.admitted {
            Ok(Taken::Admitted(outcome))
        } else {
            self.ledger.release(request_id);
            if !reservation.slots.is_empty() {
                self.slots.release(&holder);
            }
            Ok(Taken::RateLimited(outcome))
        }
    }

    fn settle(&self, request_id: &str, cost_usd: f64, tokens: u64, now_ms: i64) {
        self.slots.release(request_id);
        let demands = self.ledger.settle(request_id, cost_usd);
        let settlements = settlements(&demands, tokens);
        if !settlements.is_empty() {
            self.buckets.settle_now(&settlements, now_ms);
        }
    }
}

/// `limits.parallel_lease` in ms.
fn lease_ms(config: &Config) -> i64 {
    i64::try_from(config.limits.parallel_lease.as_millis())
        .unwrap_or(i64::MAX)
        .max(1)
}

/// Whom a request's slots are held under: its request id, or for a request without one
/// (which no usage record can name) a name of its own, so its slots end with their lease.
pub fn slot_holder(request_id: &str, slots: &[Slot]) -> String {
    if request_id.is_empty() && !slots.is_empty() {
        format!("-{}", uuid::Uuid::new_v4().simple())
    } else {
        request_id.to_owned()
    }
}

/// The corrections of token buckets admitted with `demands` once `actual` tokens are known.
pub fn settlements(demands: &[Demand], actual: u64) -> Vec<Settlement> {
    demands
        .iter()
        .filter(|d| d.unit == Unit::Tokens)
        .map(|d| Settlement {
            key: d.key.clone(),
            shape: d.shape,
            delta: actual as i64 - d.cost as i64,
        })
        .filter(|s| s.delta != 0)
        .collect()
}

/// A replica's share of a limit in `failure_mode: local`: `value / replicas` (replicas at
/// least 1), but at least 1 when the limit is not 0, so a small limit shared by many
/// replicas does not become a block.
pub fn local_share(value: u64, replicas: u64) -> u64 {
    if value == 0 {
        0
    } else {
        (value / replicas.max(1)).max(1)
    }
}

fn local_shape(shape: Shape, replicas: u64) -> Shape {
    Shape {
        per_minute: local_share(shape.per_minute, replicas),
        burst: local_share(shape.burst, replicas),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_shares_divide_but_never_reach_zero() {
        assert_eq!(local_share(10, 2), 5);
        assert_eq!(local_share(10, 0), 10);
        assert_eq!(local_share(1, 3), 1);
        assert_eq!(local_share(0, 3), 0);
    }

    #[test]
    fn settling_corrects_only_token_buckets_that_were_off() {
        let shape = Shape {
            per_minute: 100,
            burst: 100,
        };
        let demand = |key: &str, unit, cost| Demand {
            key: key.into(),
            unit,
            shape,
            cost,
        };
        let demands = [
            demand("k:1:rpm", Unit::Requests, 1),
            demand("k:1:tpm", Unit::Tokens, 40),
            demand("g:tpm", Unit::Tokens, 40),
        ];
        let s = settlements(&demands, 25);
        assert_eq!(s.len(), 2);
        assert!(s.iter().all(|s| s.delta == -15));
        assert!(settlements(&demands, 40).is_empty());
    }
}
