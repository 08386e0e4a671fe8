//! Admission: may this request go upstream now, and what does it hold until its usage
//! arrives. Below every edge: Check ([`crate::authz`]) reads a `CheckRequest` into
//! [`Facts`] and renders what [`Admission::admit`] answers; the usage writer
//! ([`crate::usage::settle`]) hands each written record to [`Admission::settle`].
//!
//! The order is DESIGN.md's: route → credential ([`crate::authn`]) → standing, permission
//! and model ([`crate::decision`], pure) → budgets → parallel limits → rate limits. Budgets and rate limits
//! take what the request is expected to use (its estimate) under its request id, and
//! parallel limits a slot each; the real usage replaces the estimate and gives the slots
//! back when the record is written, whichever replica writes it.
//!
//! - [`payers`]: whose limits and budgets a request counts against, derived once.
//! - [`counters`]: rate-limit buckets, budgets and the one reservation per request id, in
//!   this process or in Redis ([`redis`]: one script per decision).
//! - [`refusal`]: the words of a budget or rate-limit refusal.

pub mod counters;
pub mod payers;
pub mod redis;
pub mod refusal;

use crate::authn::{Authenticator, AuthnError};
use crate::backend::BackendError;
use crate::clock::Clock;
use crate::decision::{self, Denial, Grant, Policy, Principal};
use crate::domain::Timestamp;
use crate::limits::plan::{self, Quota};
use crate::usage::pricing;
use crate::usage::TokenUsage;
use arc_swap::ArcSwap;
use counters::{CountError, Counters, Reservation, Taken};
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
    /// Rate-limit buckets, budgets and each admitted request's reservation.
    counters: Counters,
    /// The time rate limits and budget periods count in.
    clock: Clock,
}

impl Admission {
    pub fn new(
        policy: Arc<ArcSwap<Policy>>,
        auth: Arc<Authenticator>,
        counters: Counters,
        clock: Clock,
    ) -> Admission {
        Admission {
            policy,
            auth,
            counters,
            clock,
        }
    }

    /// The policy in force (routes, models, rates), shared with the edges.
    pub fn policy(&self) -> &Arc<ArcSwap<Policy>> {
        &self.policy
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Decides one request; `now` is Unix seconds (credential expiry and standing). Budgets
    /// and rate limits count in the admission clock. `Err` only when a backend the decision
    /// needs cannot answer.
    pub async fn admit(
        &self,
        facts: &Facts<'_>,
        now: Timestamp,
    ) -> Result<Result<Grant, Denial>, BackendError> {
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
        grant.adds_include_usage =
            body.lacks_include_usage && crate::usage::parse::include_usage_applies(facts.path);
        let body_bytes = facts.content_length.unwrap_or(facts.body.len() as u64);
        let (input_tokens, output_tokens) =
            policy
                .rates
                .estimate(body_bytes, body.max_output_tokens, grant.model.as_deref());
        // A key carries its org; a person's org is read (cached) by its id.
        let user_org = match &principal {
            Principal::User(user) => match user.org_id.as_deref() {
                Some(id) => self
                    .auth
                    .orgs
                    .resolve(id)
                    .await
                    .map_err(BackendError::from)?,
                None => None,
            },
            _ => None,
        };
        let payers = Payers::of(&principal, user_org.as_deref());
        let charges = payers.charges();
        let reservation = Reservation {
            demands: plan::demands(
                &policy.rates,
                facts.path,
                grant.model.as_deref(),
                &payers,
                input_tokens.saturating_add(output_tokens),
            ),
            // The estimate is priced only when a budget applies.
            amount_usd: if charges.is_empty() {
                0.0
            } else {
                pricing::cost_for(
                    &policy.priced_models,
                    grant.model.as_deref(),
                    &TokenUsage {
                        input_tokens,
                        output_tokens,
                        ..Default::default()
                    },
                )
            },
            charges,
            slots: crate::limits::parallel::slots(&policy.rates, &payers),
        };
        if reservation.is_empty() {
            return Ok(Ok(grant));
        }
        let taken = self
            .counters
            .take(facts.request_id, &reservation, self.clock.now_ms())
            .await;
        let demands = &reservation.demands;
        match taken {
            Ok(Taken::Admitted(outcome)) => {
                if !demands.is_empty() {
                    grant.quota = Some(Quota::of(demands, &outcome));
                }
                Ok(Ok(grant))
            }
            Ok(Taken::OverBudget {
                charge,
                used_usd,
                period_end,
            }) => Ok(Err(refusal::over_budget(&charge, used_usd, period_end))),
            Ok(Taken::RateLimited(outcome)) => {
                let quota = Quota::of(demands, &outcome);
                Ok(Err(refusal::rate_limited(demands, &outcome, quota)))
            }
            Ok(Taken::InFlight { slot, in_flight }) => {
                Ok(Err(refusal::in_flight(&slot, in_flight)))
            }
            Err(CountError::Closed) => {
                tracing::warn!("rate limits and budgets cannot be checked; refusing (redis.failure_mode: closed)");
                Ok(Err(refusal::counters_unavailable()))
            }
            Err(CountError::Backend(e)) => Err(e),
        }
    }

    /// A request's usage was written: its reservation is replaced by the real cost and
    /// token count (see [`Counters::settle`]).
    pub async fn settle(&self, request_id: &str, cost_usd: f64, tokens: u64) {
        self.counters
            .settle(request_id, cost_usd, tokens, self.clock.now_ms())
            .await;
    }
}
