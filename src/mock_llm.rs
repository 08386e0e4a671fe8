//! An OpenAI-shaped LLM upstream that the project owns, for end-to-end tests, the load
//! script and the demo.
//!
//! It speaks just enough of the provider APIs for tollgate's usage accounting to be tested
//! against real bytes: OpenAI chat/completions, completions, embeddings and responses,
//! Anthropic messages, and the model list, each with a `usage` object, and server-sent
//! events for `stream: true`.
//!
//! Everything it answers is deterministic so that tests can predict it:
//!
//! - **input tokens** ([`prompt_tokens`]): the number of whitespace-separated words in every
//!   `content` and `text` string found under the request's `messages`, `prompt`, `input`,
//!   `system` and `instructions` fields (a bare string there counts too, and a number in
//!   an array counts as one token, as a token id would);
//! - **output tokens** ([`completion_tokens`]): `max_tokens`, `max_completion_tokens` or
//!   `max_output_tokens` if the request sets one, else [`DEFAULT_COMPLETION_TOKENS`]; the
//!   answer text has exactly that many words;
//! - the model is echoed from the request.
//!
//! Every request is recorded (method, path, lowercase headers, body) before anything else
//! happens, so a test can assert what Envoy forwarded upstream. A few request headers steer
//! the mock for failure tests: [`STATUS_HEADER`] forces an error status with a
//! provider-shaped error body, [`DELAY_HEADER`] delays the answer, and
//! [`STREAM_DELAY_HEADER`] overrides the pause between stream events.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Output tokens when the request sets no `max_tokens` (or its aliases).
pub const DEFAULT_COMPLETION_TOKENS: u64 = 12;

/// Request header that makes the mock answer this status with a provider-shaped error body,
/// e.g. `x-mock-status: 500`. A 2xx value is ignored.
pub const STATUS_HEADER: &str = "x-mock-status";

/// Request header that delays the whole answer by this many milliseconds (for timeouts).
pub const DELAY_HEADER: &str = "x-mock-delay-ms";

/// Request header that sets the pause between stream events, in milliseconds, overriding
/// [`MockOptions::stream_delay`] for this request.
pub const STREAM_DELAY_HEADER: &str = "x-mock-stream-delay-ms";

/// Bodies larger than this are refused; well above what Envoy buffers for ext_authz, so
/// tests of large bodies see Envoy's behaviour, not the mock's.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The words the mock answers with, cycled to the requested length.
const WORDS: [&str; 8] = [
    "The", "quick", "brown", "fox", "jumps", "over", "the", "dog.",
];

/// One request as the mock received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// The raw query string, if there was one.
    pub query: Option<String>,
    /// Lowercase header names; repeated headers are joined with `", "`.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl SeenRequest {
    /// The value of a header, by name in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// How the mock behaves; the default is what tests want (no delays).
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Pause before each stream event after the first.
    pub stream_delay: Duration,
    /// The request log keeps this many most recent requests, so a long load run does not
    /// grow memory without bound.
    pub max_recorded: usize,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self {
            stream_delay: Duration::ZERO,
            max_recorded: 10_000,
        }
    }
}

/// Shared state of a mock: its options, the request log and an id counter. Cheap to clone.
#[derive(Clone, Default)]
pub struct MockState {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    options: MockOptions,
    log: Mutex<VecDeque<SeenRequest>>,
    next_id: AtomicU64,
}

impl MockState {
    pub fn new(options: MockOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                options,
                ..Inner::default()
            }),
        }
    }

    /// Every recorded request, oldest first.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.log().iter().cloned().collect()
    }

    pub fn last_request(&self) -> Option<SeenRequest> {
        self.log().back().cloned()
    }

    pub fn clear(&self) {
        self.log().clear();
    }

    fn record(&self, seen: SeenRequest) {
        let max = self.inner.options.max_recorded;
        let mut log = self.log();
        if max == 0 {
            return;
        }
        while log.len() >= max {
            log.pop_front();
        }
        log.push_back(seen);
    }

    fn log(&self) -> std::sync::MutexGuard<'_, VecDeque<SeenRequest>> {
        // A panicking test thread must not hide the log from the assertions that follow.
        self.inner.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// The mock's routes, for embedding in another server or driving with `oneshot`.
pub fn router(state: MockState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/responses", post(responses))
        .route("/v1/messages", post(messages))
        .route("/v1/models", get(models))
        .fallback(unknown_url)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// A running mock on a local port; stops when dropped.
pub struct MockLlm {
    pub addr: SocketAddr,
    state: MockState,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl MockLlm {
    /// Binds `addr` (`127.0.0.1:0` for an ephemeral port) and serves with default options.
    pub async fn start(addr: SocketAddr) -> std::io::Result<MockLlm> {
        Self::start_with(addr, MockOptions::default()).await
    }

    pub async fn start_with(addr: SocketAddr, options: MockOptions) -> std::io::Result<MockLlm> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = MockState::new(options);
        let app = router(state.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            if let Err(error) = serve.await {
                tracing::error!(%error, "mock LLM server stopped");
            }
        });
        Ok(MockLlm {
            addr,
            state,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`, for building URLs.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn state(&self) -> &MockState {
        &self.state
    }

    pub fn requests(&self) -> Vec<SeenRequest> {
        self.state.requests()
    }

    pub fn last_request(&self) -> Option<SeenRequest> {
        self.state.last_request()
    }

    pub fn clear(&self) {
        self.state.clear()
    }

    /// Stops accepting connections and waits for in-flight answers to finish.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MockLlm {
    fn drop(&mut self) {
        // Dropping cannot wait, and a graceful stop would keep slow streams alive past the
        // test that started them: abort instead.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Input tokens the mock charges for a request body (see the module docs for the rule).
pub fn prompt_tokens(body: &Value) -> u64 {
    ["messages", "prompt", "input", "system", "instructions"]
        .iter()
        .filter_map(|field| body.get(field))
        .map(count_words)
        .sum()
}

/// Output tokens the mock produces for a request body.
pub fn completion_tokens(body: &Value) -> u64 {
    max_tokens(body).unwrap_or(DEFAULT_COMPLETION_TOKENS)
}

fn max_tokens(body: &Value) -> Option<u64> {
    ["max_tokens", "max_completion_tokens", "max_output_tokens"]
        .iter()
        .find_map(|field| body.get(field).and_then(Value::as_u64))
}

fn count_words(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.split_whitespace().count() as u64,
        Value::Number(_) => 1,
        Value::Array(items) => items.iter().map(count_words).sum(),
        // Only the text of a message or content part counts, not its role or type.
        Value::Object(map) => ["content", "text"]
            .iter()
            .filter_map(|field| map.get(*field))
            .map(count_words)
            .sum(),
        Value::Null | Value::Bool(_) => 0,
    }
}

fn answer_words(n: u64) -> Vec<&'static str> {
    WORDS.iter().copied().cycle().take(n as usize).collect()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Records the request, then applies the steering headers, then runs the route.
async fn observe(State(state): State<MockState>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return openai_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body too large.",
                "invalid_request_error",
                None,
            )
        }
    };
    let mut headers = BTreeMap::<String, String>::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let request_id = parts.headers.get("x-request-id").cloned();
    let seen = SeenRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers,
        body: bytes.to_vec(),
    };
    tracing::info!(
        method = %seen.method,
        path = %seen.path,
        body_bytes = seen.body.len(),
        request_id = seen.header("x-request-id").unwrap_or("-"),
        "mock LLM request"
    );
    let path = seen.path.clone();
    state.record(seen);

    if let Some(ms) = header_u64(&parts.headers, DELAY_HEADER) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let forced = header_u64(&parts.headers, STATUS_HEADER)
        .and_then(|code| u16::try_from(code).ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .filter(|status| !status.is_success());
    let mut response = match forced {
        Some(status) => forced_error(status, &path),
        None => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    };
    // Providers answer with their own request id; echoing Envoy's lets a test line up the
    // client's view with the upstream's.
    if let Some(id) = request_id {
        response.headers_mut().entry("x-request-id").or_insert(id);
    }
    response
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn forced_error(status: StatusCode, path: &str) -> Response {
    if path == "/v1/messages" {
        let kind = match status.as_u16() {
            400 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            529 => "overloaded_error",
            _ => "api_error",
        };
        let body = json!({
            "type": "error",
            "error": { "type": kind, "message": format!("mock upstream answered {status}") },
        });
        return (status, Json(body)).into_response();
    }
    let (kind, code) = match status.as_u16() {
        400 => ("invalid_request_error", None),
        401 => ("invalid_request_error", Some("invalid_api_key")),
        403 => ("invalid_request_error", Some("permission_denied")),
        404 => ("invalid_request_error", Some("not_found")),
        429 => ("requests", Some("rate_limit_exceeded")),
        _ => ("server_error", None),
    };
    let mut response = openai_error(
        status,
        &format!("mock upstream answered {status}"),
        kind,
        code,
    );
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
    }
    response
}

fn openai_error(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response {
    let body = json!({
        "error": { "message": message, "type": kind, "param": null, "code": code },
    });
    (status, Json(body)).into_response()
}

async fn unknown_url(request: Request) -> Response {
    let message = format!(
        "Unknown request URL: {} {}.",
        request.method(),
        request.uri().path()
    );
    openai_error(
        StatusCode::NOT_FOUND,
        &message,
        "invalid_request_error",
        Some("unknown_url"),
    )
}

/// The request's JSON object and model, or the message of the 400 a provider would answer.
fn parse_request(body: &Bytes) -> Result<(Value, String), String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("We could not parse the JSON body of your request: {e}"))?;
    let model = value
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| "you must provide a model parameter".to_owned())?;
    Ok((value, model))
}

/// What every generating endpoint derives from its body: the request, its model, token
/// counts, the answer's words and a fresh sequence number for ids.
struct Generation {
    request: Value,
    model: String,
    prompt: u64,
    completion: u64,
    words: Vec<&'static str>,
    n: u64,
}

impl Generation {
    /// `Err` carries the message of the 400 to answer.
    fn read(state: &MockState, body: &Bytes) -> Result<Generation, String> {
        let (request, model) = parse_request(body)?;
        let prompt = prompt_tokens(&request);
        let completion = completion_tokens(&request);
        Ok(Generation {
            words: answer_words(completion),
            n: state.next_id(),
            request,
            model,
            prompt,
            completion,
        })
    }
}

fn bad_request(message: &str) -> Response {
    openai_error(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        None,
    )
}

fn wants_stream(body: &Value) -> bool {
    body.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

fn include_usage(body: &Value) -> bool {
    body.pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn finish_reason(body: &Value) -> &'static str {
    if max_tokens(body).is_some() {
        "length"
    } else {
        "stop"
    }
}

/// The pause between stream events for this request.
fn stream_delay(state: &MockState, headers: &HeaderMap) -> Duration {
    header_u64(headers, STREAM_DELAY_HEADER)
        .map(Duration::from_millis)
        .unwrap_or(state.inner.options.stream_delay)
}

/// Server-sent events, paced by `delay` (no pause before the first event).
fn sse(events: Vec<Event>, delay: Duration) -> Response {
    let paced: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> =
        if delay.is_zero() {
            Box::pin(stream::iter(events.into_iter().map(Ok)))
        } else {
            Box::pin(stream::iter(events.into_iter().enumerate()).then(
                move |(i, event)| async move {
                    if i > 0 {
                        tokio::time::sleep(delay).await;
                    }
                    Ok(event)
                },
            ))
        };
    Sse::new(paced).into_response()
}

fn json_event(value: &Value) -> Event {
    Event::default().data(value.to_string())
}

fn openai_usage(prompt: u64, completion: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": { "cached_tokens": 0 },
        "completion_tokens_details": { "reasoning_tokens": 0 },
    })
}

async fn chat_completions(
    State(state): State<MockState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Generation {
        request,
        model,
        prompt,
        completion,
        words,
        n,
    } = match Generation::read(&state, &body) {
        Ok(g) => g,
        Err(message) => return bad_request(&message),
    };
    let id = format!("chatcmpl-mock{n}");
    let created = now_secs();
    let finish = finish_reason(&request);
    let usage = openai_usage(prompt, completion);

    if !wants_stream(&request) {
        return Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": words.join(" "), "refusal": null },
                "logprobs": null,
                "finish_reason": finish,
            }],
            "usage": usage,
        }))
        .into_response();
    }

    let with_usage = include_usage(&request);
    let chunk = |delta: Value, finish: Option<&str>| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
        });
        // OpenAI puts `usage: null` on every chunk but the last when usage was asked for.
        if with_usage {
            chunk["usage"] = Value::Null;
        }
        json_event(&chunk)
    };
    let mut events = vec![chunk(json!({ "role": "assistant", "content": "" }), None)];
    for (i, word) in words.iter().enumerate() {
        let text = if i == 0 {
            (*word).to_owned()
        } else {
            format!(" {word}")
        };
        events.push(chunk(json!({ "content": text }), None));
    }
    events.push(chunk(json!({}), Some(finish)));
    if with_usage {
        events.push(json_event(&json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [],
            "usage": usage,
        })));
    }
    events.push(Event::default().data("[DONE]"));
    sse(events, stream_delay(&state, &headers))
}

async fn completions(State(state): State<MockState>, headers: HeaderMap, body: Bytes) -> Response {
    let Generation {
        request,
        model,
        prompt,
        completion,
        words,
        n,
    } = match Generation::read(&state, &body) {
        Ok(g) => g,
        Err(message) => return bad_request(&message),
    };
    let id = format!("cmpl-mock{n}");
    let created = now_secs();
    let finish = finish_reason(&request);
    let usage = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    });

    if !wants_stream(&request) {
        return Json(json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{
                "text": words.join(" "),
                "index": 0,
                "logprobs": null,
                "finish_reason": finish,
            }],
            "usage": usage,
        }))
        .into_response();
    }

    let with_usage = include_usage(&request);
    let chunk = |text: String, finish: Option<&str>, choices: bool, usage: Value| {
        let choices = if choices {
            json!([{ "text": text, "index": 0, "logprobs": null, "finish_reason": finish }])
        } else {
            json!([])
        };
        let mut chunk = json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": choices,
        });
        if with_usage {
            chunk["usage"] = usage;
        }
        json_event(&chunk)
    };
    let mut events = Vec::new();
    for (i, word) in words.iter().enumerate() {
        let text = if i == 0 {
            (*word).to_owned()
        } else {
            format!(" {word}")
        };
        events.push(chunk(text, None, true, Value::Null));
    }
    events.push(chunk(String::new(), Some(finish), true, Value::Null));
    if with_usage {
        events.push(chunk(String::new(), None, false, usage));
    }
    events.push(Event::default().data("[DONE]"));
    sse(events, stream_delay(&state, &headers))
}

async fn embeddings(body: Bytes) -> Response {
    let (request, model) = match parse_request(&body) {
        Ok(parsed) => parsed,
        Err(message) => return bad_request(&message),
    };
    let prompt = prompt_tokens(&request);
    // One embedding per input: a string, or each element of an array of strings or of
    // token-id arrays. An array of numbers alone is a single tokenized input.
    let inputs = match request.get("input") {
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => 1,
        Some(Value::Array(items)) => items.len(),
        Some(_) => 1,
        None => 0,
    };
    let dims = request
        .get("dimensions")
        .and_then(Value::as_u64)
        .unwrap_or(8)
        .clamp(1, 4096) as usize;
    let data: Vec<Value> = (0..inputs)
        .map(|index| {
            let vector: Vec<f64> = (0..dims)
                .map(|d| ((index * dims + d) % 100) as f64 / 100.0)
                .collect();
            json!({ "object": "embedding", "index": index, "embedding": vector })
        })
        .collect();
    Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": { "prompt_tokens": prompt, "total_tokens": prompt },
    }))
    .into_response()
}

async fn responses(State(state): State<MockState>, headers: HeaderMap, body: Bytes) -> Response {
    let Generation {
        request,
        model,
        prompt: input,
        completion: output,
        words,
        n,
    } = match Generation::read(&state, &body) {
        Ok(g) => g,
        Err(message) => return bad_request(&message),
    };

    let id = format!("resp_mock{n}");
    let item_id = format!("msg_mock{n}");
    let created = now_secs();
    let completed = json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": "completed",
        "model": model,
        "output": [{
            "type": "message",
            "id": item_id,
            "status": "completed",
            "role": "assistant",
            "content": [{ "type": "output_text", "text": words.join(" "), "annotations": [] }],
        }],
        "usage": {
            "input_tokens": input,
            "input_tokens_details": { "cached_tokens": 0 },
            "output_tokens": output,
            "output_tokens_details": { "reasoning_tokens": 0 },
            "total_tokens": input + output,
        },
    });

    if !wants_stream(&request) {
        return Json(completed).into_response();
    }

    let mut seq = 0u64;
    let mut event = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        seq += 1;
        Event::default().event(kind).data(data.to_string())
    };
    let mut in_progress = completed.clone();
    in_progress["status"] = json!("in_progress");
    in_progress["output"] = json!([]);
    in_progress["usage"] = Value::Null;
    let mut events = vec![event(
        "response.created",
        json!({ "response": in_progress }),
    )];
    for (i, word) in words.iter().enumerate() {
        let delta = if i == 0 {
            (*word).to_owned()
        } else {
            format!(" {word}")
        };
        events.push(event(
            "response.output_text.delta",
            json!({ "item_id": item_id, "output_index": 0, "content_index": 0, "delta": delta }),
        ));
    }
    events.push(event(
        "response.completed",
        json!({ "response": completed }),
    ));
    sse(events, stream_delay(&state, &headers))
}

async fn messages(State(state): State<MockState>, headers: HeaderMap, body: Bytes) -> Response {
    let Generation {
        request,
        model,
        prompt: input,
        completion: output,
        words,
        n,
    } = match Generation::read(&state, &body) {
        Ok(g) => g,
        Err(message) => return bad_request(&message),
    };
    let id = format!("msg_mock{n}");
    let stop_reason = if max_tokens(&request).is_some() {
        "max_tokens"
    } else {
        "end_turn"
    };

    if !wants_stream(&request) {
        return Json(json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{ "type": "text", "text": words.join(" ") }],
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": {
                "input_tokens": input,
                "output_tokens": output,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }))
        .into_response();
    }

    // Anthropic's stream: input tokens arrive in `message_start`, the output count in the
    // final `message_delta`.
    let event = |kind: &str, data: Value| Event::default().event(kind).data(data.to_string());
    let mut events = vec![
        event(
            "message_start",
            json!({
                "type": "message_start",
                "message": {
                    "id": id, "type": "message", "role": "assistant", "model": model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {
                        "input_tokens": input, "output_tokens": 1,
                        "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                    },
                },
            }),
        ),
        event(
            "content_block_start",
            json!({
                "type": "content_block_start", "index": 0,
                "content_block": { "type": "text", "text": "" },
            }),
        ),
        event("ping", json!({ "type": "ping" })),
    ];
    for (i, word) in words.iter().enumerate() {
        let text = if i == 0 {
            (*word).to_owned()
        } else {
            format!(" {word}")
        };
        events.push(event(
            "content_block_delta",
            json!({
                "type": "content_block_delta", "index": 0,
                "delta": { "type": "text_delta", "text": text },
            }),
        ));
    }
    events.push(event(
        "content_block_stop",
        json!({ "type": "content_block_stop", "index": 0 }),
    ));
    events.push(event(
        "message_delta",
        json!({
            "type": "message_delta",
            "delta": { "stop_reason": stop_reason, "stop_sequence": null },
            "usage": { "output_tokens": output },
        }),
    ));
    events.push(event("message_stop", json!({ "type": "message_stop" })));
    sse(events, stream_delay(&state, &headers))
}

async fn models() -> Response {
    let created = 1_700_000_000u64;
    let data: Vec<Value> = [
        ("gpt-4o", "openai"),
        ("gpt-4o-mini", "openai"),
        ("text-embedding-3-small", "openai"),
        ("claude-3-5-sonnet-latest", "anthropic"),
    ]
    .iter()
    .map(
        |(id, owner)| json!({ "id": id, "object": "model", "created": created, "owned_by": owner }),
    )
    .collect();
    Json(json!({ "object": "list", "data": data })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words_in_text_fields_only() {
        let body = json!({
            "model": "gpt-4o",
            "messages": [
                { "role": "system", "content": "be brief" },
                { "role": "user", "content": [
                    { "type": "text", "text": "hello there world" },
                    { "type": "image_url", "image_url": { "url": "http://x/y z" } },
                ]},
            ],
        });
        assert_eq!(prompt_tokens(&body), 5);
        assert_eq!(prompt_tokens(&json!({ "prompt": [1, 2, 3] })), 3);
        assert_eq!(
            prompt_tokens(&json!({ "system": "a b", "messages": [{"role":"user","content":"c"}] })),
            3
        );
    }

    #[test]
    fn completion_tokens_follow_max_tokens() {
        assert_eq!(completion_tokens(&json!({})), DEFAULT_COMPLETION_TOKENS);
        assert_eq!(completion_tokens(&json!({ "max_tokens": 5 })), 5);
        assert_eq!(completion_tokens(&json!({ "max_completion_tokens": 7 })), 7);
        assert_eq!(completion_tokens(&json!({ "max_output_tokens": 9 })), 9);
        assert_eq!(answer_words(10).len(), 10);
    }

    #[test]
    fn log_keeps_the_most_recent_requests() {
        let state = MockState::new(MockOptions {
            max_recorded: 2,
            ..MockOptions::default()
        });
        for path in ["/a", "/b", "/c"] {
            state.record(SeenRequest {
                method: "GET".into(),
                path: path.into(),
                query: None,
                headers: BTreeMap::new(),
                body: Vec::new(),
            });
        }
        let paths: Vec<_> = state.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/b", "/c"]);
    }
}
