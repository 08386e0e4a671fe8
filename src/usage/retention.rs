//! Retention of raw usage records (`usage.retention`): a background task deletes the
//! records older than it, in bounded batches, about every ten minutes. The daily rollup
//! (`usage_daily`) keeps their sums, so reports over those days still answer, per whole day
//! (see [`UsageStore::prune_usage`](crate::store::UsageStore::prune_usage)).

use crate::domain::{self, Timestamp};
use crate::metrics::Metrics;
use crate::store::{SharedStore, StoreResult};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Most records deleted by one statement (one short transaction).
pub const PRUNE_BATCH: u64 = 10_000;

/// How often the task looks for records past retention.
pub const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// The pause between two batches of one round, so that pruning a backlog leaves the
/// database to the usage writer in between.
const PAUSE: Duration = Duration::from_millis(100);

/// Deletes every raw usage record older than `keep` before `now` (from the start of that
/// UTC day), [`PRUNE_BATCH`] at a time. Answers how many were deleted.
pub async fn prune(store: &SharedStore, keep: Duration, now: Timestamp) -> StoreResult<u64> {
    let keep = i64::try_from(keep.as_secs()).unwrap_or(i64::MAX);
    let before = now.saturating_sub(keep);
    let mut deleted = 0;
    loop {
        let n = store.prune_usage(before, PRUNE_BATCH).await?;
        deleted += n;
        if n < PRUNE_BATCH {
            return Ok(deleted);
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// Prunes at start and then every [`PRUNE_EVERY`] until `stop` turns true (or its sender is
/// gone). A round the database fails is logged and counted, and tried again next time.
pub fn spawn(
    store: SharedStore,
    keep: Duration,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                result = prune(&store, keep, domain::now()) => match result {
                    Ok(0) => {}
                    Ok(deleted) => tracing::info!(
                        usage.deleted = deleted,
                        "deleted usage records older than usage.retention (their daily sums are kept)"
                    ),
                    Err(error) => {
                        metrics.backend_error("database");
                        tracing::warn!(%error, "cannot delete usage records older than usage.retention; trying again later");
                    }
                },
                _ = stop.wait_for(|stop| *stop) => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(PRUNE_EVERY) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    })
}
