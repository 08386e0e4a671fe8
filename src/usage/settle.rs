//! Committing a batch of usage records, whichever queue it came from, and what follows:
//! each request's budget reservation is replaced by its real cost, its token buckets are
//! corrected with its real token count, and budget alerts are raised for the spend. The
//! queues decide when to retry; the accounting of every attempt is here.

use super::alerts::Alerts;
use super::UsageRecord;
use crate::admission::Admission;
use crate::metrics::Metrics;
use crate::store::{SharedStore, StoreError};
use std::collections::HashSet;
use std::sync::Arc;

pub struct Settler {
    store: SharedStore,
    admission: Arc<Admission>,
    alerts: Arc<Alerts>,
    metrics: Metrics,
    /// Model names that label the token and spend metrics; others count as `other`.
    models: HashSet<String>,
}

impl Settler {
    pub fn new(
        store: SharedStore,
        admission: Arc<Admission>,
        alerts: Arc<Alerts>,
        metrics: Metrics,
        models: &[crate::config::Model],
    ) -> Settler {
        Settler {
            store,
            admission,
            alerts,
            metrics,
            models: models.iter().map(|m| m.name.clone()).collect(),
        }
    }

    /// Writes a batch (records and spend, one transaction) and, once committed, settles it.
    /// Counts `tollgate_usage_records_total` `written` and `duplicate` on success, `retried`
    /// on failure (plus a database backend error unless the store refused the batch as
    /// invalid); retrying is the caller's.
    pub async fn commit(&self, batch: &[UsageRecord]) -> Result<(), StoreError> {
        // Each record is charged to its team's (else its user's) org too.
        let mut batch = batch.to_vec();
        if let Err(e) = self.store.assign_orgs(&mut batch).await {
            self.count("retried", batch.len() as u64);
            self.metrics.backend_error("database");
            return Err(e);
        }
        let batch = batch.as_slice();
        match self.store.record_new_usage(batch).await {
            Ok(fresh) => {
                let new = fresh.len() as u64;
                self.count("written", new);
                self.count("duplicate", (batch.len() as u64).saturating_sub(new));
                self.committed(batch, &fresh).await;
                Ok(())
            }
            Err(e) => {
                self.count("retried", batch.len() as u64);
                if !matches!(e, StoreError::Invalid(_)) {
                    self.metrics.backend_error("database");
                }
                Err(e)
            }
        }
    }

    fn count(&self, result: &'static str, n: u64) {
        if n > 0 {
            self.metrics.usage_records(result, n);
        }
    }

    /// Called once a batch is committed, with the positions of the records that were new:
    /// only those count in `tollgate_usage_tokens_total` and `tollgate_spend_usd_total`.
    /// Settling covers all (settling an unknown request changes nothing, alerts are
    /// idempotent).
    async fn committed(&self, batch: &[UsageRecord], new: &[usize]) {
        for record in new.iter().filter_map(|&i| batch.get(i)) {
            let model = record
                .model
                .as_deref()
                .filter(|m| self.models.contains(*m))
                .unwrap_or("other");
            let t = &record.tokens;
            for (kind, n) in [
                ("input", t.input_tokens),
                ("output", t.output_tokens),
                ("cached_input", t.cached_input_tokens),
                ("reasoning", t.reasoning_tokens),
            ] {
                if n > 0 {
                    self.metrics.usage_tokens(model, kind, n);
                }
            }
            if record.cost_usd > 0.0 {
                self.metrics.spend_usd(model, record.cost_usd);
            }
        }
        for record in batch {
            let tokens = record.tokens.input_tokens + record.tokens.output_tokens;
            self.admission
                .settle(&record.request_id, record.cost_usd, tokens)
                .await;
        }
        self.alerts.on_written(batch, self.alerts.now()).await;
    }
}
