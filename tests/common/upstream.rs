//! HTTP helpers for talking to Envoy (or straight to the mock LLM) from tests.
//!
//! Every helper answers `(status, headers, body)` and never fails on a non-2xx status, so
//! a test can assert denials as easily as successes.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::Value;

use super::envoy::Envoy;
use tollgate::mock_llm::MockLlm;

/// Something with an HTTP base URL: Envoy's listener, the mock, or a bare address.
pub trait Target {
    fn base_url(&self) -> String;
}

impl Target for Envoy {
    fn base_url(&self) -> String {
        format!("http://{}", self.listen)
    }
}

impl Target for MockLlm {
    fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Target for SocketAddr {
    fn base_url(&self) -> String {
        format!("http://{self}")
    }
}

/// A client for loopback tests: no proxy from the environment (a CI proxy must not see
/// test traffic), and a timeout so a hung stack fails the test instead of stalling it.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// POSTs `body` as JSON to `path` with extra `headers`; the answer body is parsed as JSON
/// (a non-JSON body comes back as a JSON string, an empty one as `null`).
pub async fn post_json(
    target: &impl Target,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (StatusCode, HeaderMap, Value) {
    let request = client()
        .post(format!("{}{path}", target.base_url()))
        .json(body);
    send(with_headers(request, headers)).await
}

/// GETs `path` with extra `headers`; the answer as in [`post_json`].
pub async fn get_json(
    target: &impl Target,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Value) {
    let request = client().get(format!("{}{path}", target.base_url()));
    send(with_headers(request, headers)).await
}

/// POSTs `body` and reads a server-sent-events answer to the end; returns the `data:`
/// payloads in order (including `[DONE]`). A non-event-stream answer yields its whole body
/// as the single element.
pub async fn post_sse(
    target: &impl Target,
    path: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (StatusCode, HeaderMap, Vec<String>) {
    let request = client()
        .post(format!("{}{path}", target.base_url()))
        .json(body);
    let response = with_headers(request, headers)
        .send()
        .await
        .expect("send request");
    let status = response.status();
    let response_headers = response.headers().clone();
    let text = response.text().await.expect("read body");
    let is_sse = response_headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let events = if is_sse { sse_data(&text) } else { vec![text] };
    (status, response_headers, events)
}

/// The `data:` payloads of a server-sent-events body, one per event.
pub fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

fn with_headers(
    mut request: reqwest::RequestBuilder,
    headers: &[(&str, &str)],
) -> reqwest::RequestBuilder {
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
}

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, HeaderMap, Value) {
    let response = request.send().await.expect("send request");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("read body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, headers, body)
}
