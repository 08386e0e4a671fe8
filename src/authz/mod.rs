//! The gRPC edge: Envoy's ext_authz `Check`.
//!
//! [`Gate::check`] reads the `CheckRequest` into [`Facts`], asks [`Admission`] and renders
//! the verdict ([`response`]). A backend failure is answered with gRPC `UNAVAILABLE`, never with a
//! status Envoy could take for "allow": the operator's `failure_mode_allow` decides.

pub mod body;
pub mod response;

use crate::admission::{Admission, Facts};
use crate::authn::credential;
use crate::config::ApiFamily;
use crate::decision::{Denial, DenyReason};
use crate::metrics::{Decided, Metrics};
use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest, CheckResponse};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

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

    /// Answers one Check. `Err` only for a backend failure (mapped by
    /// [`crate::backend::BackendError::grpc_status`]).
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
fn facts<'a>(request: &'a CheckRequest, http: &'a HttpRequest, request_id: &'a str) -> Facts<'a> {
    let source = request
        .attributes
        .as_ref()
        .and_then(|a| a.source.as_ref())
        .and_then(|peer| peer.address.as_ref())
        .and_then(|address| match &address.address {
            Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s)) => {
                Some(s.address.as_str())
            }
            _ => None,
        });
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
    Facts {
        request_id,
        method: &http.method,
        path: request_path(http),
        credential: credential::extract(|name| http.headers.get(name).map(String::as_str)),
        source,
        body,
        truncated,
        content_length,
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
