//! Refusals as a client sees them through a real Envoy (envoy/envoy.yaml): the status, the
//! body in its provider's shape, the request id Envoy gave the request (the one the upstream
//! gets for an allowed request), and whether and when to retry.
//!
//! Envoy talks to tollgate's own Check service through a recorder that keeps the
//! `x-request-id` of each Check, so a test can compare what the client got with the id Envoy
//! generated for the request (tests/mock_llm.rs shows the Check and the upstream see the
//! same one).

mod common;

use common::envoy::Envoy;
use common::tollgate::Tollgate;
use common::upstream::post_json;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse,
};
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tollgate::authz::Gate;
use tollgate::clock::Clock;
use tollgate::mock_llm::MockLlm;

const T0: i64 = 1_800_000_000_000;

/// tollgate's Check service, keeping the `x-request-id` of every Check it answers.
#[derive(Clone)]
struct Recorder {
    gate: Arc<Gate>,
    ids: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl Authorization for Recorder {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let id = request
            .get_ref()
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .and_then(|h| h.headers.get("x-request-id"))
            .cloned()
            .unwrap_or_default();
        self.ids.lock().unwrap().push(id);
        self.gate
            .check(request.get_ref())
            .await
            .map(tonic::Response::new)
    }
}

struct Stack {
    tollgate: Tollgate,
    mock: MockLlm,
    envoy: Envoy,
    ids: Arc<Mutex<Vec<String>>>,
}

impl Stack {
    async fn start(yaml: &str) -> Stack {
        let tollgate = Tollgate::start_with_clock(yaml, Clock::manual(T0)).await;
        let ids = Arc::new(Mutex::new(Vec::new()));
        let recorder = Recorder {
            gate: tollgate.app.gate.clone(),
            ids: ids.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(AuthorizationServer::new(recorder))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        let mock = MockLlm::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let envoy = Envoy::start("envoy/envoy.yaml", grpc, mock.addr).await;
        Stack {
            tollgate,
            mock,
            envoy,
            ids,
        }
    }

    /// The request id of the last Check.
    fn last_id(&self) -> String {
        self.ids.lock().unwrap().last().cloned().expect("a Check")
    }

    async fn post(
        &self,
        path: &str,
        key: Option<&str>,
        body: &Value,
    ) -> (StatusCode, HeaderMap, Value) {
        let headers: Vec<(&str, &str)> = key.map(|k| ("x-api-key", k)).into_iter().collect();
        post_json(&self.envoy, path, &headers, body).await
    }
}

fn message(max_tokens: u64) -> Value {
    json!({"model": "claude-sonnet-4", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hello"}]})
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {headers:?}"))
        .to_str()
        .unwrap()
}

/// Asserts the request id a refusal carries is the single one Envoy gave the request, and
/// that Anthropic's clients find it under their own name too.
fn assert_request_id(s: &Stack, headers: &HeaderMap, anthropic: bool) {
    let id = s.last_id();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "Envoy's id: {id}");
    assert_eq!(
        headers.get_all("x-request-id").iter().count(),
        1,
        "{headers:?}"
    );
    assert_eq!(header(headers, "x-request-id"), id);
    if anthropic {
        assert_eq!(header(headers, "request-id"), id);
    } else {
        assert!(headers.get("request-id").is_none(), "{headers:?}");
    }
}

#[tokio::test]
async fn anthropic_clients_get_anthropic_refusals_with_envoys_request_id() {
    let s = Stack::start("").await;
    let (_, key) = s
        .tollgate
        .create_key(json!({"name": "k", "rpm": 1, "tpm": 1000}))
        .await;

    // No key: Anthropic's 401, not to be retried.
    let (status, headers, body) = s.post("/v1/messages", None, &message(16)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "authentication_error", "{body}");
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    assert_eq!(header(&headers, "content-type"), "application/json");
    assert_eq!(header(&headers, "x-should-retry"), "false");
    assert!(headers.get("retry-after").is_none(), "{headers:?}");
    assert_request_id(&s, &headers, true);

    // Allowed: the upstream gets the id the Check saw, and its answer passes unchanged.
    let (status, headers, body) = s.post("/v1/messages", Some(&key), &message(16)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = s.mock.last_request().expect("the upstream saw it");
    assert_eq!(seen.header("x-request-id"), Some(s.last_id().as_str()));
    assert_eq!(header(&headers, "x-request-id"), s.last_id());
    assert!(headers.get("x-should-retry").is_none(), "{headers:?}");

    // rpm 1 spent: a minute's wait admits the next one.
    let (status, headers, body) = s.post("/v1/messages", Some(&key), &message(16)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert_eq!(header(&headers, "retry-after"), "60");
    assert_eq!(header(&headers, "x-should-retry"), "true");
    assert_request_id(&s, &headers, true);

    // An unknown path under /v1/messages: Anthropic's 404.
    let (status, headers, body) = s
        .post("/v1/messages/batches", Some(&key), &message(16))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["type"], "not_found_error", "{body}");
    assert_eq!(header(&headers, "x-should-retry"), "false");
    assert_request_id(&s, &headers, true);
    assert_eq!(
        s.mock.requests().len(),
        1,
        "refusals never reach the upstream"
    );
    s.tollgate.stop().await;
}

#[tokio::test]
async fn refusals_that_waiting_cannot_fix_say_so() {
    // $1 per token: a budget of $100 is spent by one request.
    let s = Stack::start(
        "models:\n  - { name: claude-sonnet-4, pricing: { input_per_million: 1000000, output_per_million: 1000000 } }\n  - { name: gpt-4o }\n",
    )
    .await;
    let (_, small) = s
        .tollgate
        .create_key(json!({"name": "small", "tpm": 100}))
        .await;
    let (_, budget) = s
        .tollgate
        .create_key(json!({"name": "budget", "max_budget": 100.0, "budget_duration": "1d"}))
        .await;

    // More tokens than the key's bucket holds: no wait helps.
    let (status, headers, body) = s.post("/v1/messages", Some(&small), &message(4_000)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    let text = body["error"]["message"].as_str().unwrap();
    assert!(text.contains("waiting will not admit it"), "{text}");
    assert_eq!(header(&headers, "x-should-retry"), "false");
    assert!(headers.get("retry-after").is_none(), "{headers:?}");
    assert_request_id(&s, &headers, true);

    // A spent budget on an OpenAI route: OpenAI's shape, the end of the period, no retry.
    let chat = json!({"model": "claude-sonnet-4", "max_tokens": 200, "messages": [{"role": "user", "content": "hello"}]});
    let (status, headers, body) = s.post("/v1/chat/completions", Some(&budget), &chat).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["type"], "insufficient_quota", "{body}");
    assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
    assert!(
        body["error"].get("param").is_some_and(Value::is_null),
        "{body}"
    );
    assert_eq!(header(&headers, "x-should-retry"), "false");
    assert!(headers.get("retry-after").is_none(), "{headers:?}");
    // The gate's clock stands at 2027-01-15T08:00:00Z: the day ends at midnight UTC.
    assert_eq!(
        header(&headers, "x-tollgate-budget-reset"),
        "2027-01-16T00:00:00Z"
    );
    assert_request_id(&s, &headers, false);
    assert!(s.mock.requests().is_empty());
    s.tollgate.stop().await;
}
