//! The gRPC edge: Envoy's ext_authz `Check`.
//!
//! [`Gate::check`] reads the `CheckRequest` into plain facts, resolves the credential
//! ([`crate::authn`]), runs the pure [`crate::decision`] pipeline, and renders the verdict
//! ([`response`]). A backend failure is answered with gRPC `UNAVAILABLE`, never with a
//! status Envoy could take for "allow": the operator's `failure_mode_allow` decides.

pub mod body;
pub mod response;

use crate::authn::{credential, Authenticator, AuthnError};
use crate::budget::{Charge, Ledger, Verdict};
use crate::clock::Clock;
use crate::config::ApiFamily;
use crate::decision::{self, Denial, DenyReason, Grant, Policy, Principal};
use crate::limits::plan::{self, Owners, Quota};
use crate::limits::{Demand, LimitError, Limiter, Settlement, Unit};
use crate::metrics::Metrics;
use crate::store::SpendKind;
use arc_swap::ArcSwap;
use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest, CheckResponse};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

/// Envoy sets this when `allow_partial_message` cut the body at `max_request_bytes`.
const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";

/// Everything a decision needs, shared by all requests. Only reads on the hot path.
pub struct Gate {
    pub policy: ArcSwap<Policy>,
    pub auth: Arc<Authenticator>,
    pub limiter: Arc<Limiter>,
    /// Budget reservations.
    pub ledger: Arc<Ledger>,
    /// The token-bucket demands of admitted requests by request id, until their usage
    /// arrives (then [`Gate::settle_request_tokens`] corrects the buckets).
    pub estimated_tokens: moka::sync::Cache<String, Arc<Vec<Demand>>>,
    /// The time rate limits count in.
    pub clock: Clock,
    pub metrics: Metrics,
}

impl Gate {
    /// Answers one Check. `Err` only for a backend failure (mapped to `UNAVAILABLE`).
    pub async fn check(&self, request: &CheckRequest) -> Result<CheckResponse, Status> {
        let started = Instant::now();
        let http = http_attributes(request);
        // The id Envoy gave the request (the upstream sees the same one): the key of the
        // request's reservations, and the id a refusal carries back to the client.
        let request_id = http
            .and_then(|h| h.headers.get("x-request-id"))
            .filter(|id| !id.is_empty())
            .cloned()
            .unwrap_or_else(crate::domain::new_id);
        let outcome = self.decide(request, &request_id).await;
        let (decision, code) = match &outcome {
            Ok(Ok(_)) => ("allow", "ok"),
            Ok(Err(denial)) => ("deny", denial.reason.code()),
            Err(_) => ("error", "unavailable"),
        };
        self.metrics
            .check_total
            .with_label_values(&[decision, code])
            .inc();
        self.metrics
            .check_duration
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(Ok(grant)) => Ok(response::allowed(&grant)),
            Ok(Err(mut denial)) => {
                // Whichever step refused, the refusal reads as the route's provider writes it.
                denial.api = http.map_or(ApiFamily::OpenAi, |h| {
                    self.policy.load().family(request_path(h))
                });
                tracing::debug!(
                    authz.decision = "deny",
                    authz.code = denial.reason.code(),
                    request_id = %request_id,
                    "request denied: {}",
                    denial.message
                );
                Ok(response::denied(&denial, &request_id))
            }
            Err(e) => {
                tracing::warn!(authz.decision = "error", error = %e, "cannot decide: backend unavailable");
                Err(Status::unavailable(
                    "tollgate: a backend needed for the decision is unavailable",
                ))
            }
        }
    }

    async fn decide(
        &self,
        request: &CheckRequest,
        request_id: &str,
    ) -> Result<Result<decision::Grant, Denial>, crate::store::StoreError> {
        let Some(http) = http_attributes(request) else {
            return Ok(Err(Denial::new(
                DenyReason::InvalidRequest,
                "The check request carries no HTTP attributes",
            )));
        };
        let path = request_path(http);
        let policy = self.policy.load();
        let rule = match decision::route(&policy, &http.method, path) {
            Ok(rule) => rule,
            Err(denial) => return Ok(Err(denial)),
        };
        let presented = credential::extract(|name| http.headers.get(name).map(String::as_str));
        let source = request
            .attributes
            .as_ref()
            .and_then(|a| a.source.as_ref())
            .and_then(|peer| peer.address.as_ref())
            .and_then(|address| match &address.address {
                Some(
                    envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s),
                ) => Some(s.address.as_str()),
                _ => None,
            });
        let now = crate::domain::now();
        let principal = match self.auth.resolve(presented, source, now).await {
            Ok(p) => p,
            Err(AuthnError::Denied(denial)) => return Ok(Err(denial)),
            Err(AuthnError::Unavailable(e)) => return Err(e),
        };
        let body: &[u8] = if http.raw_body.is_empty() {
            http.body.as_bytes()
        } else {
            &http.raw_body
        };
        // The body's real size: Envoy forwards at most its limit, the header tells the rest.
        let content_length = http
            .headers
            .get("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        // Cut when Envoy says so, or when less arrived than the client sent (Envoy forwards
        // exactly its limit with the header still `false`).
        let truncated = http
            .headers
            .get(PARTIAL_BODY_HEADER)
            .is_some_and(|v| v == "true")
            || content_length.is_some_and(|length| length > body.len() as u64);
        let facts = body::read(body, truncated);
        let mut grant = match decision::authorize(&policy, rule, &principal, &facts.model, now) {
            Ok(grant) => grant,
            Err(denial) => return Ok(Err(denial)),
        };
        // The rest of a cut body is checked for a second `model` by ext_proc.
        grant.body_cut = truncated;
        let body_bytes = content_length.unwrap_or(body.len() as u64);
        let (input_tokens, output_tokens) =
            policy
                .rates
                .estimate(body_bytes, facts.max_output_tokens, grant.model.as_deref());
        let owners = owners(&principal);
        let demands = plan::demands(
            &policy.rates,
            path,
            grant.model.as_deref(),
            owners,
            input_tokens.saturating_add(output_tokens),
        );
        let charges = charges(&owners);
        if charges.is_empty() {
            return Ok(self.count(grant, &demands, request_id).await);
        }
        // Budgets before rate limits (DESIGN.md's order); a reservation is given back when
        // a rate limit then refuses.
        let estimate = crate::usage::pricing::cost_for(
            &policy.priced_models,
            grant.model.as_deref(),
            &crate::usage::TokenUsage {
                input_tokens,
                output_tokens,
                ..Default::default()
            },
        );
        // Budget periods count in the gate's clock, like rate limits.
        let budget_now = self.clock.now_ms().div_euclid(1000);
        match self
            .ledger
            .reserve(request_id, &charges, estimate, budget_now)
            .await?
        {
            Verdict::Reserved => {}
            Verdict::Refused {
                charge,
                used_usd,
                period_end,
            } => {
                let mut denial = Denial::new(
                    DenyReason::InsufficientQuota,
                    format!(
                        "Budget exceeded for {}: ${used_usd:.4} of ${:.4} used this period (resets at {})",
                        match charge.kind {
                            SpendKind::Key => "this API key",
                            SpendKind::User => "your user",
                            SpendKind::Team => "your team",
                        },
                        charge.limit_usd,
                        crate::domain::rfc3339::format(period_end)
                    ),
                );
                // Waiting helps only when the period ends, which is too long for a client's
                // retry loop: no `retry-after`, the end in its own header.
                denial.budget_reset = Some(period_end);
                return Ok(Err(denial));
            }
        }
        let outcome = self.count(grant, &demands, request_id).await;
        if outcome.is_err() {
            self.ledger.release(request_id);
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
                // The probe retries Redis every half second: a second's wait can succeed.
                return Err(Denial::new(
                    DenyReason::AuthUnavailable,
                    "Rate limits cannot be checked right now; try again shortly",
                )
                .with_retry_after(1));
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
                let retry_ms = Quota::retry_after_ms(&outcome);
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
        Err(denial)
    }

    /// Corrects the token buckets of a request admitted here with its real token count
    /// (the usage writer calls this; a request of another replica, or one older than
    /// `budgets.reservation_timeout`, is not known here and changes nothing).
    pub async fn settle_request_tokens(&self, request_id: &str, actual_tokens: u64) {
        let Some(demands) = self.estimated_tokens.remove(request_id) else {
            return;
        };
        if let Err(e) = self.settle_tokens(&demands, actual_tokens).await {
            tracing::debug!(error = %e, "token buckets not corrected");
        }
    }

    /// Corrects token buckets once a request's real token count is known, given the
    /// demands the request was admitted with.
    pub async fn settle_tokens(
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

/// The budgets a request is charged against: the `max_budget` of each owner whose limits
/// apply (its key, user and team; a person's own user), where set.
fn charges(owners: &Owners<'_>) -> Vec<Charge> {
    [
        (SpendKind::Key, owners.key),
        (SpendKind::User, owners.user),
        (SpendKind::Team, owners.team),
    ]
    .into_iter()
    .filter_map(|(kind, owner)| owner.and_then(|(id, limits)| Charge::of(kind, id, limits)))
    .collect()
}

/// Whose limits apply: the key's, its user's and team's; a person's own.
fn owners(principal: &Principal) -> Owners<'_> {
    match principal {
        Principal::Master => Owners::default(),
        Principal::Key(lookup) => Owners {
            key: Some((lookup.key.id.as_str(), &lookup.key.limits)),
            user: lookup.user.as_ref().map(|u| (u.id.as_str(), &u.limits)),
            team: lookup.team.as_ref().map(|t| (t.id.as_str(), &t.limits)),
        },
        Principal::User(user) => Owners {
            user: Some((user.id.as_str(), &user.limits)),
            ..Owners::default()
        },
    }
}

/// The HTTP request a Check asks about (absent only from a malformed Check).
fn http_attributes(request: &CheckRequest) -> Option<&HttpRequest> {
    request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
}

/// The request's path without its query string.
fn request_path(http: &HttpRequest) -> &str {
    http.path.split('?').next().unwrap_or_default()
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
        "t" => "your team".to_owned(),
        "u" => "your user".to_owned(),
        _ => "this API key".to_owned(),
    }
}

/// The tonic service wrapping a [`Gate`].
#[derive(Clone)]
pub struct AuthorizationService {
    gate: Arc<Gate>,
}

impl AuthorizationService {
    pub fn new(gate: Arc<Gate>) -> Self {
        AuthorizationService { gate }
    }
}

#[tonic::async_trait]
impl Authorization for AuthorizationService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        self.gate.check(request.get_ref()).await.map(Response::new)
    }
}
