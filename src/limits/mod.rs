//! Rate limits: token buckets for requests and tokens per minute, at the global, route,
//! model, team, user and key levels.
//!
//! - [`bucket`]: the arithmetic, pure (takes `now`).
//! - [`plan`]: which buckets a request touches and what it costs, pure.
//! - [`memory`]: buckets in this process (the embedded default).
//! - [`parallel`]: slots of requests in flight (`max_parallel`).
//!
//! Buckets in Redis, and the choice between the two with `redis.failure_mode`, are
//! [`crate::admission::counters`]'s: Redis takes buckets and budgets in one script.
//!
//! A request is admitted only if every bucket it touches has room, and then all of them are
//! debited: one atomic step in either store. A refused request takes nothing.

pub mod bucket;
pub mod memory;
pub mod parallel;
pub mod plan;

use crate::backend::BackendError;
use async_trait::async_trait;
use bucket::{Shape, View};

/// What a bucket counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Requests,
    Tokens,
}

impl Unit {
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Requests => "rpm",
            Unit::Tokens => "tpm",
        }
    }
}

/// One bucket a request touches: its stable name (`k:<key id>:rpm`, `g:tpm`, …), its shape
/// (from the limits in force now, so a changed limit applies at once), and what the request
/// takes from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    pub key: String,
    pub unit: Unit,
    pub shape: Shape,
    pub cost: u64,
}

/// The decision over a request's buckets, with each bucket's view in the order of the
/// demands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub admitted: bool,
    pub views: Vec<View>,
}

/// A correction of a bucket once the real count is known: `delta` more units taken
/// (negative: given back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub key: String,
    pub shape: Shape,
    pub delta: i64,
}

/// A place buckets live. Keys in one call are distinct.
#[async_trait]
pub trait Buckets: Send + Sync {
    /// Checks every demand and, only if all fit, debits all of them, atomically.
    async fn admit(&self, demands: &[Demand], now_ms: i64) -> Result<Outcome, BackendError>;
    /// Applies corrections (each bucket refilled to `now_ms` first).
    async fn settle(&self, settlements: &[Settlement], now_ms: i64) -> Result<(), BackendError>;
}
