//! Buckets in this process's memory: the embedded default, and the fallback of
//! `redis.failure_mode: local`.
//!
//! One mutex guards the whole table, so a request's buckets are checked and debited in one
//! step; the critical section is a few hash lookups and float operations. Buckets that have
//! refilled to full are forgotten now and then (a forgotten bucket starts full, so forgetting
//! a full one changes nothing).

use super::bucket::{self, Shape, State, Step};
use super::{Buckets, Demand, Outcome, Settlement};
use crate::backend::BackendError;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;

/// Every this many calls, full buckets are swept out of the table.
const SWEEP_EVERY: u64 = 4096;

#[derive(Default)]
pub struct MemoryBuckets {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    buckets: HashMap<String, (Shape, State)>,
    calls: u64,
}

impl Table {
    fn current(&self, key: &str, shape: Shape, now_ms: i64) -> State {
        match self.buckets.get(key) {
            Some((_, state)) => shape.refilled(*state, now_ms),
            None => shape.fresh(now_ms),
        }
    }

    fn sweep(&mut self, now_ms: i64) {
        self.calls += 1;
        if self.calls.is_multiple_of(SWEEP_EVERY) {
            self.buckets.retain(|_, (shape, state)| {
                shape.refilled(*state, now_ms).tokens < shape.burst as f64
            });
        }
    }
}

impl MemoryBuckets {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many buckets are held (for tests of the sweep).
    pub fn len(&self) -> usize {
        self.lock().buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`Buckets::admit`] without the async wrapper.
    pub fn admit_now(&self, demands: &[Demand], now_ms: i64) -> Outcome {
        let mut table = self.lock();
        let steps: Vec<Step> = demands
            .iter()
            .map(|d| Step {
                shape: d.shape,
                state: table.current(&d.key, d.shape, now_ms),
                cost: d.cost,
            })
            .collect();
        let (admitted, states) = bucket::admit(&steps);
        let mut views = Vec::with_capacity(demands.len());
        for ((demand, state), step) in demands.iter().zip(states).zip(&steps) {
            table
                .buckets
                .insert(demand.key.clone(), (demand.shape, state));
            views.push(bucket::view(demand.shape, state, step.cost));
        }
        table.sweep(now_ms);
        Outcome { admitted, views }
    }

    /// [`Buckets::settle`] without the async wrapper.
    pub fn settle_now(&self, settlements: &[Settlement], now_ms: i64) {
        let mut table = self.lock();
        for s in settlements {
            let state = table.current(&s.key, s.shape, now_ms);
            let settled = bucket::settle(s.shape, state, s.delta);
            table.buckets.insert(s.key.clone(), (s.shape, settled));
        }
    }
}

#[async_trait]
impl Buckets for MemoryBuckets {
    async fn admit(&self, demands: &[Demand], now_ms: i64) -> Result<Outcome, BackendError> {
        Ok(self.admit_now(demands, now_ms))
    }

    async fn settle(&self, settlements: &[Settlement], now_ms: i64) -> Result<(), BackendError> {
        self.settle_now(settlements, now_ms);
        Ok(())
    }
}
