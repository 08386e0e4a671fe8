//! The mock LLM upstream on its own, and the Envoy harness in front of it: the shipped
//! `envoy/envoy-noauth.yaml` with the mock, and the shipped `envoy/envoy.yaml` with a stub
//! ext_authz server, which pins down what Envoy does with an authorization answer's header
//! mutations (the behaviour tollgate's Check relies on).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::envoy::{free_port, Envoy};
use common::upstream::{get_json, post_json, post_sse};
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpStatusCode,
};
use envoy_types::ext_authz::v3::{
    CheckRequestExt, CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
};
use envoy_types::pb::google::protobuf::BoolValue;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tollgate::mock_llm::{MockLlm, DEFAULT_COMPLETION_TOKENS};

async fn mock() -> MockLlm {
    MockLlm::start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("start mock LLM")
}

fn chat(words: &str) -> Value {
    json!({ "model": "gpt-4o", "messages": [{ "role": "user", "content": words }] })
}

#[tokio::test]
async fn chat_completion_usage_is_predictable() {
    let mock = mock().await;

    let (status, _, body) = post_json(
        &mock,
        "/v1/chat/completions",
        &[],
        &chat("one two three four"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(body["usage"]["prompt_tokens"], 4);
    assert_eq!(
        body["usage"]["completion_tokens"],
        DEFAULT_COMPLETION_TOKENS
    );
    assert_eq!(body["usage"]["total_tokens"], 4 + DEFAULT_COMPLETION_TOKENS);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(
        text.split_whitespace().count() as u64,
        DEFAULT_COMPLETION_TOKENS
    );

    let mut request = json!({
        "model": "gpt-4o-mini",
        "max_tokens": 5,
        "messages": [
            { "role": "system", "content": "be brief" },
            { "role": "user", "content": [{ "type": "text", "text": "a b c" }] },
        ],
    });
    let (_, _, body) = post_json(&mock, "/v1/chat/completions", &[], &request).await;
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["usage"]["prompt_tokens"], 5);
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert_eq!(body["choices"][0]["finish_reason"], "length");

    request["max_tokens"] = Value::Null;
    request["max_completion_tokens"] = json!(3);
    let (_, _, body) = post_json(&mock, "/v1/chat/completions", &[], &request).await;
    assert_eq!(body["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn streamed_chat_ends_with_usage_chunk_then_done() {
    let mock = mock().await;
    let mut request = chat("hello streaming world");
    request["stream"] = json!(true);
    request["max_tokens"] = json!(4);
    request["stream_options"] = json!({ "include_usage": true });

    let (status, headers, events) = post_sse(&mock, "/v1/chat/completions", &[], &request).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    // role chunk + one chunk per token + finish chunk + usage chunk
    assert_eq!(chunks.len(), 1 + 4 + 1 + 1);
    for chunk in &chunks[..chunks.len() - 1] {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "gpt-4o");
        assert!(chunk["usage"].is_null());
        assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
    }
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text.split_whitespace().count(), 4);
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "length"
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], 3, "usage chunk: {last}");
    assert_eq!(last["usage"]["completion_tokens"], 4);
    assert_eq!(last["usage"]["total_tokens"], 7);

    // Without include_usage there is no usage anywhere, as with OpenAI.
    request["stream_options"] = Value::Null;
    let (_, _, events) = post_sse(&mock, "/v1/chat/completions", &[], &request).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(events.len(), 1 + 4 + 1 + 1);
    assert!(events.iter().all(|e| !e.contains("\"usage\"")));
}

#[tokio::test]
async fn stream_delay_paces_events() {
    let mock = mock().await;
    let mut request = chat("x");
    request["stream"] = json!(true);
    request["max_tokens"] = json!(3);
    let started = Instant::now();
    let (_, _, events) = post_sse(
        &mock,
        "/v1/chat/completions",
        &[("x-mock-stream-delay-ms", "30")],
        &request,
    )
    .await;
    // 6 events (role, 3 tokens, finish, [DONE]) with a pause before all but the first.
    assert_eq!(events.len(), 6);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn completions_embeddings_responses_and_models() {
    let mock = mock().await;

    let (_, _, body) = post_json(
        &mock,
        "/v1/completions",
        &[],
        &json!({ "model": "gpt-3.5-turbo-instruct", "prompt": "say this is a test", "max_tokens": 7 }),
    )
    .await;
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["usage"]["prompt_tokens"], 5);
    assert_eq!(body["usage"]["completion_tokens"], 7);

    let (_, _, body) = post_json(
        &mock,
        "/v1/embeddings",
        &[],
        &json!({ "model": "text-embedding-3-small", "input": ["the cat", "sat on the mat"], "dimensions": 4 }),
    )
    .await;
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][1]["embedding"].as_array().unwrap().len(), 4);
    assert_eq!(
        body["usage"],
        json!({ "prompt_tokens": 6, "total_tokens": 6 })
    );

    let (_, _, body) = post_json(
        &mock,
        "/v1/responses",
        &[],
        &json!({ "model": "gpt-4o", "instructions": "be nice", "input": "tell me a joke", "max_output_tokens": 9 }),
    )
    .await;
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["usage"]["input_tokens"], 6);
    assert_eq!(body["usage"]["output_tokens"], 9);
    assert_eq!(body["usage"]["total_tokens"], 15);

    let (_, _, events) = post_sse(
        &mock,
        "/v1/responses",
        &[],
        &json!({ "model": "gpt-4o", "input": "hi", "stream": true }),
    )
    .await;
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["type"], "response.completed");
    assert_eq!(last["response"]["usage"]["input_tokens"], 1);
    assert_eq!(
        last["response"]["usage"]["output_tokens"],
        DEFAULT_COMPLETION_TOKENS
    );

    let (status, _, body) = get_json(&mock, "/v1/models", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["object"], "list");
    assert!(body["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "gpt-4o"));
}

#[tokio::test]
async fn anthropic_messages_shape() {
    let mock = mock().await;
    let request = json!({
        "model": "claude-3-5-sonnet-latest",
        "max_tokens": 6,
        "system": "you are terse",
        "messages": [{ "role": "user", "content": "what is up" }],
    });
    let (status, _, body) = post_json(&mock, "/v1/messages", &[], &request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "claude-3-5-sonnet-latest");
    assert_eq!(body["content"][0]["type"], "text");
    assert_eq!(body["stop_reason"], "max_tokens");
    assert_eq!(body["usage"]["input_tokens"], 6);
    assert_eq!(body["usage"]["output_tokens"], 6);
    assert!(body["usage"].get("prompt_tokens").is_none());

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    let (_, _, events) = post_sse(&mock, "/v1/messages", &[], &streamed).await;
    let events: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(events[0]["type"], "message_start");
    assert_eq!(events[0]["message"]["usage"]["input_tokens"], 6);
    let delta = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .unwrap();
    assert_eq!(delta["usage"]["output_tokens"], 6);
    assert_eq!(events.last().unwrap()["type"], "message_stop");
}

#[tokio::test]
async fn records_every_request() {
    let mock = mock().await;
    assert!(mock.last_request().is_none());
    let request = chat("record me");
    post_json(
        &mock,
        "/v1/chat/completions",
        &[
            ("Authorization", "Bearer sk-test"),
            ("X-Custom", "a"),
            ("x-custom", "b"),
        ],
        &request,
    )
    .await;
    post_json(&mock, "/v1/nope?x=1", &[], &json!({})).await;

    let seen = mock.requests();
    assert_eq!(seen.len(), 2);
    let first = &seen[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/v1/chat/completions");
    assert_eq!(first.headers["authorization"], "Bearer sk-test");
    assert_eq!(first.header("X-CUSTOM"), Some("a, b"));
    assert_eq!(first.json().unwrap(), request);
    assert_eq!(first.body, serde_json::to_vec(&request).unwrap());

    let last = mock.last_request().unwrap();
    assert_eq!(last.path, "/v1/nope");
    assert_eq!(last.query.as_deref(), Some("x=1"));

    mock.clear();
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn error_answers() {
    let mock = mock().await;

    let (status, headers, body) = post_json(
        &mock,
        "/v1/chat/completions",
        &[("x-mock-status", "500")],
        &chat("x"),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body["error"]["type"], "server_error");
    assert!(body["error"]["message"].is_string());
    assert_eq!(
        mock.requests().len(),
        1,
        "a forced failure is still recorded"
    );

    let (status, headers, body) = post_json(
        &mock,
        "/v1/chat/completions",
        &[("x-mock-status", "429")],
        &chat("x"),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");

    let (status, _, body) = post_json(
        &mock,
        "/v1/messages",
        &[("x-mock-status", "529")],
        &json!({ "model": "claude" }),
    )
    .await;
    assert_eq!(status.as_u16(), 529);
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "overloaded_error");

    let (status, _, body) = post_json(
        &mock,
        "/v1/chat/completions",
        &[],
        &json!({ "messages": [] }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let (status, _, body) = get_json(&mock, "/v1/unknown", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "unknown_url");
}

/// The harness runs the shipped no-auth config and Envoy forwards to the mock; the
/// connection manager settings shared with envoy.yaml do what its comments say.
#[tokio::test]
async fn chat_completion_through_envoy_noauth() {
    let mock = mock().await;
    let unused = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let envoy = Envoy::start("envoy/envoy-noauth.yaml", unused, mock.addr).await;

    let (status, headers, body) = post_json(
        &envoy,
        "/v1/chat/completions",
        &[
            ("x-request-id", "client-chosen"),
            ("x-tollgate-key-id", "spoofed"),
            ("x-envoy-upstream-rq-timeout-ms", "1"),
        ],
        &chat("through the proxy"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", envoy.log_tail(30));
    assert_eq!(body["usage"]["prompt_tokens"], 3);

    let seen = mock.last_request().expect("the mock saw the request");
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.json().unwrap(), chat("through the proxy"));
    let request_id = seen
        .header("x-request-id")
        .expect("Envoy sets x-request-id");
    assert_ne!(
        request_id, "client-chosen",
        "a client cannot pick the request id"
    );
    assert_eq!(headers["x-request-id"], request_id);
    assert!(seen.header("x-tollgate-key-id").is_none());
    assert!(seen.header("x-envoy-upstream-rq-timeout-ms").is_none());

    // Streams pass through, ending with the usage chunk and [DONE].
    let mut request = chat("stream me");
    request["stream"] = json!(true);
    request["stream_options"] = json!({ "include_usage": true });
    let (status, _, events) = post_sse(&envoy, "/v1/chat/completions", &[], &request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["prompt_tokens"], 2);
}

/// A stand-in for tollgate's Check: `Bearer good` is allowed with the header mutations
/// DESIGN.md describes; anything else is denied with an OpenAI-shaped 401.
#[derive(Clone, Default)]
struct StubAuthz {
    checks: Arc<Mutex<Vec<CheckRequest>>>,
}

#[async_trait::async_trait]
impl Authorization for StubAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let request = request.into_inner();
        let headers = request.get_client_headers().cloned().unwrap_or_default();
        self.checks.lock().unwrap().push(request);
        let mut response = CheckResponse::with_status(tonic::Status::ok(""));
        if headers.get("authorization").map(String::as_str) == Some("Bearer good") {
            let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
            let mut ok = OkHttpResponseBuilder::new();
            ok.add_header("authorization", "Bearer sk-provider", overwrite, false)
                .add_header("x-tollgate-key-id", "key-1", overwrite, false)
                // Envoy ignores append_action here: even "add if absent" overwrites.
                .add_header(
                    "x-add-if-absent",
                    "from-authz",
                    Some(HeaderAppendAction::AddIfAbsent),
                    false,
                )
                .remove_header("x-api-key")
                .remove_header("api-key")
                .remove_header("host")
                .add_response_header("x-ratelimit-limit-requests", "100", overwrite, false);
            let mut ok = ok.build();
            // Only the deprecated `append: true` appends to the client's value.
            #[allow(deprecated)]
            ok.headers.push(HeaderValueOption {
                header: Some(HeaderValue {
                    key: "x-appended".into(),
                    value: "from-authz".into(),
                    raw_value: Vec::new(),
                }),
                append: Some(BoolValue { value: true }),
                ..HeaderValueOption::default()
            });
            response.set_http_response(ok);
        } else {
            response.set_status(tonic::Status::unauthenticated("invalid api key"));
            let mut denied = DeniedHttpResponseBuilder::new();
            denied
                .set_http_status(HttpStatusCode::Unauthorized)
                .add_header("content-type", "application/json", None, false)
                .add_header("www-authenticate", "Bearer", None, false)
                .set_body(
                    json!({ "error": {
                        "message": "Incorrect API key provided.",
                        "type": "invalid_request_error",
                        "param": null,
                        "code": "invalid_api_key",
                    }})
                    .to_string(),
                );
            response.set_http_response(denied);
        }
        Ok(tonic::Response::new(response))
    }
}

async fn start_stub_authz() -> (StubAuthz, SocketAddr) {
    let stub = StubAuthz::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = AuthorizationServer::new(stub.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    (stub, addr)
}

/// What the shipped envoy.yaml does with an authorization answer: no extra config is
/// needed for the authz server to replace `authorization`, remove credential headers, add
/// identity headers upstream and rate-limit headers to the client, and the body reaches
/// the Check as raw bytes.
#[tokio::test]
async fn envoy_yaml_applies_authz_header_mutations() {
    let mock = mock().await;
    let (stub, authz) = start_stub_authz().await;
    let envoy = Envoy::start("envoy/envoy.yaml", authz, mock.addr).await;
    let request = chat("allowed request");

    let (status, headers, body) = post_json(
        &envoy,
        "/v1/chat/completions",
        &[
            ("authorization", "Bearer good"),
            ("x-api-key", "sk-client"),
            ("api-key", "sk-client"),
            ("x-add-if-absent", "from-client"),
            ("x-appended", "from-client"),
        ],
        &request,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", envoy.log_tail(30));
    assert_eq!(headers["x-ratelimit-limit-requests"], "100");

    let seen = mock
        .last_request()
        .expect("allowed request reached the mock");
    assert_eq!(seen.header("authorization"), Some("Bearer sk-provider"));
    assert_eq!(seen.header("x-tollgate-key-id"), Some("key-1"));
    assert_eq!(seen.header("x-api-key"), None);
    assert_eq!(seen.header("api-key"), None);
    assert!(seen.header("host").is_some(), "host cannot be removed");
    // Envoy 1.40 ignores HeaderValueOption.append_action in an OkHttpResponse: a header
    // is set (replacing the client's) unless the deprecated `append` is true.
    assert_eq!(seen.header("x-add-if-absent"), Some("from-authz"));
    assert_eq!(seen.header("x-appended"), Some("from-client,from-authz"));
    assert_eq!(seen.json().unwrap(), request);

    let check = stub.checks.lock().unwrap().last().cloned().unwrap();
    let http = check.attributes.unwrap().request.unwrap().http.unwrap();
    assert_eq!(http.path, "/v1/chat/completions");
    assert!(
        http.body.is_empty(),
        "pack_as_bytes leaves the string body empty"
    );
    assert_eq!(http.raw_body, serde_json::to_vec(&request).unwrap());
    assert_eq!(
        http.headers.get("x-request-id").map(String::as_str),
        seen.header("x-request-id"),
        "the Check and the upstream see the same request id"
    );

    mock.clear();
    let (status, headers, body) = post_json(
        &envoy,
        "/v1/chat/completions",
        &[("authorization", "Bearer bad")],
        &request,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert!(
        mock.requests().is_empty(),
        "a denied request never goes upstream"
    );
}

/// With tollgate unreachable the shipped config fails closed with 503.
#[tokio::test]
async fn envoy_yaml_fails_closed_when_authz_is_down() {
    let mock = mock().await;
    let nobody = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let envoy = Envoy::start("envoy/envoy.yaml", nobody, mock.addr).await;
    let (status, _, _) = post_json(
        &envoy,
        "/v1/chat/completions",
        &[("authorization", "Bearer good")],
        &chat("x"),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(mock.requests().is_empty());
}
