//! The gRPC edge: Envoy's ext_authz `Check`.
//!
//! [`Gate::check`] reads the `CheckRequest` into plain facts, resolves the credential
//! ([`crate::authn`]), runs the pure [`crate::decision`] pipeline, and renders the verdict
//! ([`response`]). A backend failure is answered with gRPC `UNAVAILABLE`, never with a
//! status Envoy could take for "allow": the operator's `failure_mode_allow` decides.

pub mod body;
pub mod response;

use crate::authn::{credential, Authenticator, AuthnError};
use crate::decision::{self, Denial, DenyReason, Policy};
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest, CheckResponse};
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

/// Envoy sets this when `allow_partial_message` cut the body at `max_request_bytes`.
const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";

/// Everything a decision needs, shared by all requests. Only reads on the hot path.
pub struct Gate {
    pub policy: ArcSwap<Policy>,
    pub auth: Arc<Authenticator>,
    pub metrics: Metrics,
}

impl Gate {
    /// Answers one Check. `Err` only for a backend failure (mapped to `UNAVAILABLE`).
    pub async fn check(&self, request: &CheckRequest) -> Result<CheckResponse, Status> {
        let started = Instant::now();
        let outcome = self.decide(request).await;
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
            Ok(Err(denial)) => {
                tracing::debug!(
                    authz.decision = "deny",
                    authz.code = denial.reason.code(),
                    "request denied: {}",
                    denial.message
                );
                Ok(response::denied(&denial))
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
    ) -> Result<Result<decision::Grant, Denial>, crate::store::StoreError> {
        let Some(http) = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
        else {
            return Ok(Err(Denial::new(
                DenyReason::InvalidRequest,
                "The check request carries no HTTP attributes",
            )));
        };
        let path = http.path.split('?').next().unwrap_or_default();
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
        let truncated = http
            .headers
            .get(PARTIAL_BODY_HEADER)
            .is_some_and(|v| v == "true");
        let model = body::model_field(body, truncated);
        Ok(decision::authorize(&policy, rule, &principal, &model, now))
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
