//! What follows a committed batch of usage records, whichever queue wrote it: each
//! request's budget reservation is replaced by its real cost, its token buckets are
//! corrected with its real token count, and budget alerts are raised for the spend.

use super::alerts::Alerts;
use super::UsageRecord;
use crate::authz::Gate;
use std::sync::Arc;

pub struct Settler {
    gate: Arc<Gate>,
    alerts: Arc<Alerts>,
}

impl Settler {
    pub fn new(gate: Arc<Gate>, alerts: Arc<Alerts>) -> Settler {
        Settler { gate, alerts }
    }

    /// Called once a batch is committed (records new or already stored alike: settling an
    /// unknown request changes nothing, alerts are idempotent).
    pub async fn committed(&self, batch: &[UsageRecord]) {
        for record in batch {
            self.gate.ledger.settle(&record.request_id, record.cost_usd);
            let tokens = record.tokens.input_tokens + record.tokens.output_tokens;
            self.gate
                .settle_request_tokens(&record.request_id, tokens)
                .await;
        }
        self.alerts.on_written(batch, self.alerts.now()).await;
    }
}
