//! Usage: what each request cost, from the response's token counts to spend on keys, users
//! and teams.
//!
//! This module holds the records shared by the ingestion paths (ext_proc, access logs), the
//! queue, the store and the reports.

pub mod alerts;
pub mod als;
pub mod ext_proc;
pub mod parse;
pub mod period;
pub mod pricing;
pub mod queue;
pub mod redis_queue;
pub mod retention;
pub mod settle;
pub mod sse;
pub mod unasked;

use serde::{Deserialize, Serialize};

/// Token counts of one response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Prompt tokens, cached ones included.
    pub input_tokens: u64,
    /// Completion tokens, reasoning ones included.
    pub output_tokens: u64,
    /// Of `input_tokens`, those served from the provider's prompt cache.
    pub cached_input_tokens: u64,
    /// Of `output_tokens`, those spent on reasoning.
    pub reasoning_tokens: u64,
}

/// Which path reported a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    ExtProc,
    AccessLog,
}

/// One request's usage: the unit the queue carries and the store keeps, idempotent on
/// `request_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Envoy's `x-request-id`.
    pub request_id: String,
    /// Unix seconds when the request was decided.
    pub at: i64,
    pub key_id: Option<String>,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    /// The org charged: its team's org, else its user's, filled in before the record is
    /// written ([`crate::store::UsageStore::owner_orgs`]); absent from records queued by
    /// earlier versions.
    #[serde(default)]
    pub org_id: Option<String>,
    pub model: Option<String>,
    #[serde(flatten)]
    pub tokens: TokenUsage,
    /// USD, from the model's pricing (0 when the model has none).
    pub cost_usd: f64,
    /// The upstream's HTTP status.
    pub status: u16,
    pub latency_ms: u64,
    /// The counts are what was seen of a response that ended early, not the provider's.
    pub estimated: bool,
    pub source: UsageSource,
}
