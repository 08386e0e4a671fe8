//! The gRPC edge: Envoy's ext_authz `Check`.
//!
//! [`Gate::answer`] reads a Check (as [`wire::Check`], only the fields it uses) into
//! [`Facts`], asks [`Admission`] and renders the verdict ([`response`]). A backend failure is answered with gRPC `UNAVAILABLE`, never with a
//! status Envoy could take for "allow": the operator's `failure_mode_allow` decides.

pub mod body;
pub mod response;
pub mod wire;

use crate::admission::{Admission, Facts};
use crate::authn::credential;
use crate::config::ApiFamily;
use crate::decision::{Denial, DenyReason};
use crate::metrics::{Decided, Metrics};
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse};
use std::sync::Arc;
use std::time::Instant;
use tonic::Status;
use wire::{Check, Http};

/// Envoy sets this when `allow_partial_message` cut the body at `max_request_bytes`.
const PARTIAL_BODY_HEADER: &str = "x-envoy-auth-partial-body";

/// The gRPC edge over [`Admission`]: reads a Check, counts it, renders the answer.
pub struct Gate {
    admission: Arc<Admission>,
    metrics: Metrics,
}

impl Gate {
    pub fn new(admission: Arc<Admission>, metrics: Metrics) -> Gate {
        Gate { admission, metrics }
    }

    /// Answers one Check built in process (tests, benchmarks): [`Gate::answer`] of it as
    /// read off the wire. `Err` only for a backend failure (mapped by
    /// [`crate::backend::BackendError::grpc_status`]). Boxed: nesting the future of
    /// [`Gate::answer`] once more overflowed rustc's query depth in some callers.
    pub async fn check(&self, request: &CheckRequest) -> Result<CheckResponse, Status> {
        let check = Check::from(request);
        Box::pin(self.answer(&check)).await
    }

    /// [`Gate::check`] of a Check as read off the wire ([`wire::CheckServer`]).
    pub async fn answer(&self, request: &Check) -> Result<CheckResponse, Status> {
        let started = Instant::now();
        let http = request.http();
        // The id Envoy gave the request (the upstream sees the same one): the key of the
        // request's reservations, and the id a refusal carries back to the client.
        let request_id = http
            .and_then(|h| h.header("x-request-id"))
            .filter(|id| !id.is_empty())
            .map_or_else(crate::domain::new_id, str::to_owned);
        let outcome = match http {
            Some(http) => {
                let facts = facts(request, http, &request_id);
                self.admission.admit(&facts, crate::domain::now()).await
            }
            None => Ok(Err(Denial::new(
                DenyReason::InvalidRequest,
                "The check request carries no HTTP attributes",
            ))),
        };
        let decided = match &outcome {
            Ok(Ok(_)) => Decided::Allow,
            Ok(Err(denial)) => Decided::Deny(denial.reason),
            Err(e) => Decided::Error {
                transient: e.is_transient(),
            },
        };
        self.metrics.check(decided, started.elapsed().as_secs_f64());
        match outcome {
            Ok(Ok(grant)) => Ok(response::allowed(&grant)),
            Ok(Err(mut denial)) => {
                // Whichever step refused, the refusal reads as the route's provider writes it.
                denial.api = http.map_or(ApiFamily::OpenAi, |h| {
                    self.admission.policy().load().family(request_path(h))
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
            Err(e) => Err(e.grpc_status()),
        }
    }
}

/// What admission needs to know of a Check, borrowed from it.
fn facts<'a>(request: &'a Check, http: &'a Http, request_id: &'a str) -> Facts<'a> {
    let body = http.body();
    // The body's real size: Envoy forwards at most its limit, the header tells the rest.
    let content_length = http
        .header("content-length")
        .and_then(|v| v.trim().parse::<u64>().ok());
    // Cut when Envoy says so, or when less arrived than the client sent (Envoy forwards
    // exactly its limit with the header still `false`).
    let truncated = http
        .header(PARTIAL_BODY_HEADER)
        .is_some_and(|v| v == "true")
        || content_length.is_some_and(|length| length > body.len() as u64);
    Facts {
        request_id,
        method: http.method(),
        path: request_path(http),
        credential: credential::extract(|name| http.header(name)),
        source: request.source(),
        body,
        truncated,
        content_length,
    }
}

/// The request's path without its query string.
fn request_path(http: &Http) -> &str {
    http.path().split('?').next().unwrap_or_default()
}
