//! Admission: may this request go upstream now, and what does it hold until its usage
//! arrives. Below every edge: Check ([`crate::authz`]) reads a `CheckRequest` into
//! [`Facts`] and renders what [`Admission::admit`] answers; the usage writer
//! ([`crate::usage::settle`]) hands each written record to [`Admission::settle`].
//!
//! The order is DESIGN.md's: route → credential ([`crate::authn`]) → standing, permission
//! and model ([`crate::decision`], pure) → budgets → rate limits. Budgets and rate limits
//! take what the request is expected to use (its estimate) under its request id; the real
//! usage replaces the estimate when the record is written, whichever replica writes it.
//!
//! - [`payers`]: whose limits and budgets a request counts against, derived once.
//! - [`refusal`]: the words of a budget or rate-limit refusal.

pub mod payers;
pub mod refusal;

use crate::authn::{Authenticator, AuthnError};
use crate::budget::{Ledger, Verdict};
use crate::clock::Clock;
use crate::decision::{self, Denial, Grant, Policy};
use crate::domain::Timestamp;
use crate::limits::plan::{self, Quota};
use crate::limits::{Demand, LimitError, Limiter, Settlement, Unit};
use crate::store::StoreError;
use crate::usage::pricing;
use crate::usage::TokenUsage;
use arc_swap::ArcSwap;
use payers::Payers;
use std::sync::Arc;

/// What the edge read from one request, borrowed from it.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The id Envoy gave the request (the upstream sees the same one): the key of what the
    /// request reserves.
    pub request_id: &'a str,
    pub method: &'a str,
    /// Without the query string.
    pub path: &'a str,
    /// The value of whichever header carries a credential.
    pub credential: Option<&'a str>,
    /// The client's address, when known.
    pub source: Option<&'a str>,
    /// The body as far as it reached tollgate.
    pub body: &'a [u8],
    /// Only a prefix of the body arrived.
    pub truncated: bool,
    /// The body's whole size, when the client said.
    pub content_length: Option<u64>,
}

/// Everything a decision needs, shared by all requests. Only reads on the hot path.
pub struct Admission {
    policy: Arc<ArcSwap<Policy>>,
    auth: Arc<Authenticator>,
    limiter: Limiter,
    /// Budget reservations.
    ledger: Ledger,
    /// The token-bucket demands of admitted requests by request id, until their usage
    /// arrives (then [`Admission::settle`] corrects the buckets).
    estimated_tokens: moka::sync::Cache<String, Arc<Vec<Demand>>>,
    /// The time rate limits and budget periods count in.
    clock: Clock,
}

impl Admission {
    pub fn new(
        policy: Arc<ArcSwap<Policy>>,
        auth: Arc<Authenticator>,
        limiter: Limiter,
        ledger: Ledger,
        reservation_timeout: std::time::Duration,
        clock: Clock,
    ) -> Admission {
        Admission {
            policy,
            auth,
            limiter,
            ledger,
            estimated_tokens: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(reservation_timeout)
                .build(),
            clock,
        }
    }

    /// The policy in force (routes, models, rates), shared with the edges.
    pub fn policy(&self) -> &Arc<ArcSwap<Policy>> {
        &self.policy
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Whether the counters of rate limits and budgets are reachable (always, in memory).
    pub fn counters_healthy(&self) -> bool {
        self.limiter.healthy() && self.ledger.healthy()
    }

    /// Decides one request; `now` is Unix seconds (credential expiry and standing). Budgets
    /// and rate limits count in the admission clock. `Err` only when a backend the decision
    /// needs cannot answer.
    pub async fn admit(
        &self,
        facts: &Facts<'_>,
        now: Timestamp,
    ) -> Result<Result<Grant, Denial>, StoreError> {
        let policy = self.policy.load();
        let rule = match decision::route(&policy, facts.method, facts.path) {
            Ok(rule) => rule,
            Err(denial) => return Ok(Err(denial)),
        };
        let principal = match self.auth.resolve(facts.credential, facts.source, now).await {
            Ok(p) => p,
            Err(AuthnError::Denied(denial)) => return Ok(Err(denial)),
            Err(AuthnError::Unavailable(e)) => return Err(e),
        };
        let body = crate::authz::body::read(facts.body, facts.truncated);
        let mut grant = match decision::authorize(&policy, rule, &principal, &body.model, now) {
            Ok(grant) => grant,
            Err(denial) => return Ok(Err(denial)),
        };
        // The rest of a cut body is checked for a second `model` by ext_proc.
        grant.body_cut = facts.truncated;
        let body_bytes = facts.content_length.unwrap_or(facts.body.len() as u64);
        let (input_tokens, output_tokens) =
            policy
                .rates
                .estimate(body_bytes, body.max_output_tokens, grant.model.as_deref());
        let payers = Payers::of(&principal);
        let demands = plan::demands(
            &policy.rates,
            facts.path,
            grant.model.as_deref(),
            &payers,
            input_tokens.saturating_add(output_tokens),
        );
        let charges = payers.charges();
        if charges.is_empty() {
            return Ok(self.count(grant, &demands, facts.request_id).await);
        }
        // Budgets before rate limits (DESIGN.md's order); a reservation is given back when
        // a rate limit then refuses.
        let estimate = pricing::cost_for(
            &policy.priced_models,
            grant.model.as_deref(),
            &TokenUsage {
                input_tokens,
                output_tokens,
                ..Default::default()
            },
        );
        let budget_now = self.clock.now_ms().div_euclid(1000);
        match self
            .ledger
            .reserve(facts.request_id, &charges, estimate, budget_now)
            .await?
        {
            Verdict::Reserved => {}
            Verdict::Refused {
                charge,
                used_usd,
                period_end,
            } => return Ok(Err(refusal::over_budget(&charge, used_usd, period_end))),
        }
        let outcome = self.count(grant, &demands, facts.request_id).await;
        if outcome.is_err() {
            self.ledger.release(facts.request_id);
        }
        Ok(outcome)
    }

    /// Rate limits: the request's buckets are checked and debited in one step; a refused
    /// request takes nothing. Limits that cannot be checked (Redis down, `failure_mode:
    /// closed`) refuse with 503.
    async fn count(
        &self,
        mut grant: Grant,
        demands: &[Demand],
        request_id: &str,
    ) -> Result<Grant, Denial> {
        if demands.is_empty() {
            return Ok(grant);
        }
        let outcome = match self.limiter.admit(demands, self.clock.now_ms()).await {
            Ok(outcome) => outcome,
            Err(LimitError::Unavailable(reason)) => {
                tracing::warn!(%reason, "rate limits cannot be checked; refusing (redis.failure_mode: closed)");
                return Err(refusal::counters_unavailable());
            }
        };
        let quota = Quota::of(demands, &outcome);
        if outcome.admitted {
            grant.quota = Some(quota);
            // Token buckets took an estimate: kept until the real count arrives.
            let tokens: Vec<Demand> = demands
                .iter()
                .filter(|d| d.unit == Unit::Tokens)
                .cloned()
                .collect();
            if !tokens.is_empty() {
                self.estimated_tokens
                    .insert(request_id.to_owned(), Arc::new(tokens));
            }
            return Ok(grant);
        }
        Err(refusal::rate_limited(demands, &outcome, quota))
    }

    /// A request's usage was written: its budget reservation is replaced by the real cost
    /// and its token buckets are corrected with the real token count. A request unknown
    /// here (another replica's, or older than `budgets.reservation_timeout`) changes
    /// nothing.
    pub async fn settle(&self, request_id: &str, cost_usd: f64, tokens: u64) {
        self.ledger.settle(request_id, cost_usd);
        let Some(demands) = self.estimated_tokens.remove(request_id) else {
            return;
        };
        if let Err(e) = self.settle_tokens(&demands, tokens).await {
            tracing::debug!(error = %e, "token buckets not corrected");
        }
    }

    /// Corrects token buckets once a request's real token count is known, given the
    /// demands the request was admitted with.
    async fn settle_tokens(
        &self,
        demands: &[Demand],
        actual_tokens: u64,
    ) -> Result<(), LimitError> {
        let settlements: Vec<Settlement> = demands
            .iter()
            .filter(|d| d.unit == Unit::Tokens)
            .map(|d| Settlement {
                key: d.key.clone(),
                shape: d.shape,
                delta: actual_tokens as i64 - d.cost as i64,
            })
            .filter(|s| s.delta != 0)
            .collect();
        if settlements.is_empty() {
            return Ok(());
        }
        self.limiter.settle(&settlements, self.clock.now_ms()).await
    }
}
