//! Budgets: what a request is charged against, and the in-process ledger.
//!
//! A request's estimated cost is reserved against every budget that applies to it (its
//! key's, its user's, its team's `max_budget`) in one atomic step: admitted only if each
//! budget's committed spend plus what is reserved plus this request fits. When the
//! request's usage is written, its reservation is replaced by the real cost. Reservations
//! of requests that never report expire after `budgets.reservation_timeout`. So concurrent
//! requests cannot push spend past a budget by more than the error of their estimates,
//! unlike check-then-charge.
//!
//! Committed spend comes from the store (the `spend` table): it is read the first time a
//! budget is seen in a period and again every `refresh` (`cache.key_ttl`), which is how
//! spend written by other replicas is learnt. Between reads the ledger adds what is
//! settled. A record is committed to the store before it is settled, so a cost settled
//! while a read is on its way may be missing from what the read returns: each budget also
//! sums what was settled into it, and a read replaces committed spend by its answer plus
//! what was settled since just before it. Nothing settled is lost (a lost cost would be
//! admitted again); a cost committed before the read and settled after it counts twice
//! until the next read (refusing early, never overspending). A budget is keyed by its
//! period's start, so a new period starts empty and old reservations settle against the
//! period they were made in.
//!
//! [`memory`] is the ledger in this process; the Redis one, shared by every replica, is
//! part of [`crate::admission::redis`], which takes budgets and rate limits in one script.

pub mod memory;

use crate::domain::{BudgetDuration, Limits, Timestamp};
use crate::store::{SharedStore, SpendKind, StoreError};
use crate::usage::period;
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

/// The budget's period containing `now` (`start`, `end`); reads the store (within
/// `timeout`) only for a rolling `30d` budget, whose periods start at its owner's creation.
pub(crate) async fn read_window(
    store: &SharedStore,
    timeout: Duration,
    charge: &Charge,
    now: Timestamp,
) -> Result<(i64, i64), StoreError> {
    let anchor = match charge.duration {
        Some(BudgetDuration::ThirtyDays) => within(timeout, created_at(store, charge)).await?,
        _ => 0,
    };
    Ok(period::window(
        period::effective(charge.duration),
        now,
        anchor,
    ))
}

/// The budget's committed spend in its period containing `now`, read from the store within
/// `timeout`. A cost settled while this read is on its way may or may not be in it: a
/// ledger that replaces its committed spend by this adds back what it settled meanwhile
/// (see [`memory`] and [`crate::admission::redis`]).
pub(crate) async fn read_spent(
    store: &SharedStore,
    timeout: Duration,
    charge: &Charge,
    now: Timestamp,
) -> Result<f64, StoreError> {
    within(timeout, store.current_spend(charge.kind, &charge.id, now)).await
}

async fn within<T>(
    timeout: Duration,
    read: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, read).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::unavailable(format!(
            "reading spend took longer than {timeout:?}"
        ))),
    }
}

async fn created_at(store: &SharedStore, charge: &Charge) -> Result<Timestamp, StoreError> {
    Ok(match charge.kind {
        SpendKind::Key => store.get_key(&charge.id).await?.map(|k| k.created_at),
        SpendKind::User => store.get_user(&charge.id).await?.map(|u| u.created_at),
        SpendKind::Team => store.get_team(&charge.id).await?.map(|t| t.created_at),
        SpendKind::Org => store.get_org(&charge.id).await?.map(|o| o.created_at),
    }
    .unwrap_or(0))
}
