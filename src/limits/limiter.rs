//! The bucket store in force: in-process buckets, or Redis with `redis.failure_mode` while
//! Redis is unreachable.
//!
//! While Redis is healthy every call goes to it. The first call that fails (error or
//! timeout) marks it down ([`Health`], which also keeps `tollgate_redis_up`) and is
//! answered by the failure mode; until the probe sees Redis answer, calls do not touch
//! Redis at all: they are answered by the failure mode at once.
//!
//! - `open`: admitted, with no views (no bucket was consulted, so no rate-limit headers).
//! - `closed`: [`LimitError::Unavailable`].
//! - `local`: in-process buckets, each replica enforcing its share of every limit (see
//!   [`local_share`]).

use super::bucket::Shape;
use super::memory::MemoryBuckets;
use super::redis::RedisBuckets;
use super::{Buckets, Demand, LimitError, Outcome, Settlement};
use crate::config::{FailureMode, Redis};
use crate::metrics::Metrics;
use crate::redis_pool::Health;
use std::sync::Arc;

pub struct Limiter {
    store: Store,
}

enum Store {
    Memory(MemoryBuckets),
    Redis(Arc<Shared>),
}

struct Shared {
    buckets: RedisBuckets,
    mode: FailureMode,
    replicas: u64,
    /// The buckets of `failure_mode: local`.
    local: MemoryBuckets,
    health: Arc<Health>,
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

impl Limiter {
    /// In-process buckets (no redis configured).
    pub fn memory() -> Limiter {
        Limiter {
            store: Store::Memory(MemoryBuckets::new()),
        }
    }

    /// Redis buckets with `redis.failure_mode`. Does no I/O: Redis is assumed up
    /// (`tollgate_redis_up` 1) until a call fails, which starts the background probe.
    pub fn redis(config: &Redis, metrics: Metrics) -> Result<Limiter, LimitError> {
        let buckets =
            RedisBuckets::new(config, config.pool_size, config.timeout, &config.key_prefix)?;
        let gauge = Some(metrics.track_redis());
        Ok(Limiter {
            store: Store::Redis(Arc::new(Shared {
                buckets,
                mode: config.failure_mode,
                replicas: config.replicas.max(1),
                local: MemoryBuckets::new(),
                health: Health::new("rate limits", config.failure_mode, metrics, gauge),
            })),
        })
    }

    /// Checks every demand and, only if all fit, debits all of them (see [`Buckets::admit`]),
    /// or answers by the failure mode while Redis is down.
    pub async fn admit(&self, demands: &[Demand], now_ms: i64) -> Result<Outcome, LimitError> {
        let shared = match &self.store {
            Store::Memory(buckets) => return Ok(buckets.admit_now(demands, now_ms)),
            Store::Redis(shared) => shared,
        };
        if shared.health.is_up() {
            match shared.buckets.admit(demands, now_ms).await {
                Ok(outcome) => return Ok(outcome),
                Err(e) => shared.failed(&e),
            }
        }
        match shared.mode {
            FailureMode::Open => Ok(Outcome {
                admitted: true,
                views: vec![],
            }),
            FailureMode::Closed => Err(LimitError::Unavailable(
                "redis is unreachable (failure_mode: closed)".to_owned(),
            )),
            FailureMode::Local => {
                let local: Vec<Demand> = demands
                    .iter()
                    .map(|d| Demand {
                        shape: local_shape(d.shape, shared.replicas),
                        ..d.clone()
                    })
                    .collect();
                Ok(shared.local.admit_now(&local, now_ms))
            }
        }
    }

    /// Applies corrections (see [`Buckets::settle`]). While Redis is down they go to the
    /// local buckets in `failure_mode: local` and are dropped otherwise.
    pub async fn settle(&self, settlements: &[Settlement], now_ms: i64) -> Result<(), LimitError> {
        let shared = match &self.store {
            Store::Memory(buckets) => {
                buckets.settle_now(settlements, now_ms);
                return Ok(());
            }
            Store::Redis(shared) => shared,
        };
        if shared.health.is_up() {
            match shared.buckets.settle(settlements, now_ms).await {
                Ok(()) => return Ok(()),
                Err(e) => shared.failed(&e),
            }
        }
        match shared.mode {
            FailureMode::Local => {
                let local: Vec<Settlement> = settlements
                    .iter()
                    .map(|s| Settlement {
                        shape: local_shape(s.shape, shared.replicas),
                        ..s.clone()
                    })
                    .collect();
                shared.local.settle_now(&local, now_ms);
            }
            FailureMode::Open | FailureMode::Closed => {
                tracing::debug!(
                    count = settlements.len(),
                    "redis is unreachable: rate-limit corrections dropped"
                );
            }
        }
        Ok(())
    }

    /// Whether Redis is currently considered up (true for memory).
    pub fn healthy(&self) -> bool {
        match &self.store {
            Store::Memory(_) => true,
            Store::Redis(shared) => shared.health.is_up(),
        }
    }
}

impl Shared {
    /// A call to Redis failed: mark it down and make sure a probe runs.
    fn failed(&self, error: &LimitError) {
        self.health.failed(self.buckets.pool(), &error.to_string());
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

    #[tokio::test]
    async fn memory_is_always_healthy() {
        let limiter = Limiter::memory();
        assert!(limiter.healthy());
        let demand = Demand {
            key: "k".into(),
            unit: super::super::Unit::Requests,
            shape: Shape {
                per_minute: 1,
                burst: 1,
            },
            cost: 1,
        };
        let demands = [demand];
        assert!(limiter.admit(&demands, 0).await.unwrap().admitted);
        assert!(!limiter.admit(&demands, 0).await.unwrap().admitted);
    }
}
