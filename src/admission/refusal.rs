//! The words of a budget or rate-limit refusal, and what waiting can do about it.

use crate::budget::Charge;
use crate::decision::{Denial, DenyReason};
use crate::domain::Timestamp;
use crate::limits::parallel::Slot;
use crate::limits::plan::{self, Quota};
use crate::limits::{Demand, Outcome, Unit};

/// A budget with no room for the request's estimate.
pub fn over_budget(charge: &Charge, used_usd: f64, period_end: Timestamp) -> Denial {
    let mut denial = Denial::new(
        DenyReason::InsufficientQuota,
        format!(
            "Budget exceeded for {}: ${used_usd:.4} of ${:.4} used this period (resets at {})",
            super::payers::whose(charge.kind),
            charge.limit_usd,
            crate::domain::rfc3339::format(period_end)
        ),
    );
    // Waiting helps only when the period ends, which is too long for a client's retry
    // loop: no `retry-after`, the end in its own header.
    denial.budget_reset = Some(period_end);
    denial
}

/// Rate limits or budgets cannot be counted (Redis down, `failure_mode: closed`).
pub fn counters_unavailable() -> Denial {
    // The probe retries Redis every half second: a second's wait can succeed.
    Denial::new(
        DenyReason::AuthUnavailable,
        "Rate limits cannot be checked right now; try again shortly",
    )
    .with_retry_after(1)
}

/// A parallel limit with every slot held: 429, and a second's wait (a request in flight
/// may finish any moment; nothing says when).
pub fn in_flight(slot: &Slot, in_flight: u64) -> Denial {
    Denial::new(
        DenyReason::RateLimitExceeded,
        format!(
            "Rate limit reached for {}: too many requests in flight ({in_flight} of {} allowed at once). Please try again in 1s.",
            slot.kind.map_or("this gateway", super::payers::whose),
            slot.limit
        ),
    )
    .with_retry_after(1)
}

/// A bucket without room: 429 with the buckets as they stand, and a `retry-after` unless
/// the request is larger than a bucket can ever hold.
pub fn rate_limited(demands: &[Demand], outcome: &Outcome, quota: Quota) -> Denial {
    let unit_name = |demand: &Demand| match demand.unit {
        Unit::Requests => "requests",
        Unit::Tokens => "tokens",
    };
    let never = demands
        .iter()
        .zip(&outcome.views)
        .find(|(d, _)| d.cost > d.shape.burst);
    let mut denial = match never {
        // More than a bucket can ever hold: no wait admits it, so no `retry-after`.
        Some((demand, view)) => {
            let unit = unit_name(demand);
            let most = if demand.shape.burst == view.limit {
                format!("the {} {unit} per minute", view.limit)
            } else {
                format!(
                    "the {} {unit} at once ({} per minute)",
                    demand.shape.burst, view.limit
                )
            };
            Denial::new(
                DenyReason::RateLimitExceeded,
                format!(
                    "This request needs about {} {unit}, more than {most} allowed for {}, so waiting will not admit it; send less input or lower max_tokens",
                    demand.cost,
                    level_name(&demand.key)
                ),
            )
        }
        None => {
            let retry_ms = Quota::retry_after_ms(outcome);
            let (demand, view) = demands
                .iter()
                .zip(&outcome.views)
                .max_by_key(|(_, v)| v.retry_after_ms)
                .expect("a refused request has at least one bucket");
            Denial::new(
                DenyReason::RateLimitExceeded,
                format!(
                    "Rate limit reached for {}: {} {} per minute. Please try again in {}.",
                    level_name(&demand.key),
                    view.limit,
                    unit_name(demand),
                    plan::duration_text(retry_ms)
                ),
            )
            .with_retry_after(plan::retry_after_secs(retry_ms))
        }
    };
    denial.quota = Some(Box::new(quota));
    denial
}

/// Who a bucket belongs to, for a 429's message.
fn level_name(bucket: &str) -> String {
    let mut parts = bucket.splitn(2, ':');
    let level = parts.next().unwrap_or_default();
    let rest = parts.next().unwrap_or_default();
    let name = rest.rsplit_once(':').map_or(rest, |(name, _)| name);
    match level {
        "g" => "this gateway".to_owned(),
        "r" => format!("the route {name}"),
        "m" => format!("the model {name}"),
        "o" => "your organization".to_owned(),
        "t" => "your team".to_owned(),
        "u" => "your user".to_owned(),
        _ => "this API key".to_owned(),
    }
}
