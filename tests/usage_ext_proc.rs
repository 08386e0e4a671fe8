//! Usage from responses, end to end: client → Envoy (envoy/envoy.yaml: ext_authz, then
//! ext_proc) → the mock LLM, with tollgate's ExternalProcessor reading each response and
//! queueing one usage record, visible in the store.

mod common;

use std::time::{Duration, Instant};

use common::envoy::{free_port, Envoy};
use common::tollgate::Tollgate;
use common::upstream::{client, post_json, post_sse};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::{processing_request, ProcessingRequest};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::sqlite::SqlitePool;
use sqlx::Row;
use tollgate::mock_llm::{MockLlm, STREAM_DELAY_HEADER};
use tollgate::store::{GroupBy, UsageQuery};
use tollgate::usage::ext_proc::http_headers;

/// How long a record may take from the end of a response to the store (the writer batches
/// every 50 ms here).
const DEADLINE: Duration = Duration::from_secs(10);

struct Stack {
    tollgate: Tollgate,
    mock: MockLlm,
    envoy: Envoy,
    db: SqlitePool,
    key: String,
    key_id: String,
    user_id: String,
    _dir: tempfile::TempDir,
}

async fn stack() -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("usage.db");
    let yaml = format!(
        r#"
database: {{ url: "sqlite://{}" }}
models:
  - name: gpt-4o
    pricing: {{ input_per_million: 2.5, output_per_million: 10 }}
  - name: claude-3-5-sonnet-latest
    pricing: {{ input_per_million: 3, output_per_million: 15 }}
usage: {{ batch_interval: 50ms }}
"#,
        path.display()
    );
    let tollgate = Tollgate::start(&yaml).await;
    let mock = MockLlm::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let envoy = Envoy::start("envoy/envoy.yaml", tollgate.grpc, mock.addr).await;
    let user_id = tollgate.create_user("ada", "user").await;
    let (key_id, key) = tollgate
        .create_key(json!({"name": "k", "user_id": user_id}))
        .await;
    let db = SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    Stack {
        tollgate,
        mock,
        envoy,
        db,
        key,
        key_id,
        user_id,
        _dir: dir,
    }
}

/// One row of `usage_records`.
#[derive(Debug, Clone, PartialEq)]
struct Stored {
    request_id: String,
    key_id: Option<String>,
    user_id: Option<String>,
    team_id: Option<String>,
    model: Option<String>,
    input_tokens: i64,
    output_tokens: i64,
    cost_usd: f64,
    status: i64,
    estimated: bool,
    source: String,
}

async fn stored(db: &SqlitePool) -> Vec<Stored> {
    sqlx::query(
        "SELECT request_id, key_id, user_id, team_id, model, input_tokens, output_tokens, \
         cost_usd, status, estimated, source FROM usage_records ORDER BY at, request_id",
    )
    .fetch_all(db)
    .await
    .unwrap()
    .into_iter()
    .map(|row| Stored {
        request_id: row.get(0),
        key_id: row.get(1),
        user_id: row.get(2),
        team_id: row.get(3),
        model: row.get(4),
        input_tokens: row.get(5),
        output_tokens: row.get(6),
        cost_usd: row.get(7),
        status: row.get(8),
        estimated: row.get::<i64, _>(9) == 1,
        source: row.get(10),
    })
    .collect()
}

/// Polls the store until it holds `n` records (failing after [`DEADLINE`]) and returns them.
async fn wait_records(s: &Stack, n: usize) -> Vec<Stored> {
    let start = Instant::now();
    loop {
        let rows = stored(&s.db).await;
        if rows.len() >= n {
            assert_eq!(rows.len(), n, "more records than requests: {rows:#?}");
            return rows;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{} of {n} records after {DEADLINE:?}: {rows:#?}\n--- Envoy log ---\n{}",
            rows.len(),
            s.envoy.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Pricing rounds to the nano-dollar.
fn usd(micro_usd_per_million: f64) -> f64 {
    (micro_usd_per_million / 1_000_000.0 * 1e9).round() / 1e9
}

fn request_id(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .expect("the mock echoes Envoy's x-request-id")
        .to_str()
        .unwrap()
        .to_owned()
}

impl Stack {
    fn expected(&self, request_id: &str, model: &str, input: i64, output: i64) -> Stored {
        let cost = match model {
            "gpt-4o" => usd(input as f64 * 2.5 + output as f64 * 10.0),
            _ => usd(input as f64 * 3.0 + output as f64 * 15.0),
        };
        Stored {
            request_id: request_id.to_owned(),
            key_id: Some(self.key_id.clone()),
            user_id: Some(self.user_id.clone()),
            team_id: None,
            model: Some(model.to_owned()),
            input_tokens: input,
            output_tokens: output,
            cost_usd: cost,
            status: 200,
            estimated: false,
            source: "ext_proc".to_owned(),
        }
    }
}

#[tokio::test]
async fn a_chat_completion_is_recorded_once_with_the_upstreams_counts_and_cost() {
    let s = stack().await;
    // Denied by ext_authz: never reaches ext_proc, no record.
    let (status, _, _) = post_json(
        &s.envoy,
        "/v1/chat/completions",
        &[("x-api-key", "sk-tg-nope")],
        &json!({"model": "gpt-4o", "messages": []}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let body = json!({
        "model": "gpt-4o",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "one two three four"}],
    });
    let (status, headers, answer) = post_json(
        &s.envoy,
        "/v1/chat/completions",
        &[("x-api-key", &s.key)],
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["usage"]["prompt_tokens"], 4);
    assert_eq!(answer["usage"]["completion_tokens"], 5);
    // Not a stream: the body reaches the upstream untouched.
    let seen = s.mock.last_request().unwrap();
    assert_eq!(seen.json().unwrap(), body);
    assert_eq!(s.mock.requests().len(), 1);

    let id = request_id(&headers);
    let rows = wait_records(&s, 1).await;
    assert_eq!(rows, vec![s.expected(&id, "gpt-4o", 4, 5)]);
    assert_eq!(rows[0].cost_usd, 0.00006);

    // And through the store's report, as the API serves it.
    let report = s
        .tollgate
        .app
        .store
        .usage_report(UsageQuery::new(GroupBy::Key))
        .await
        .unwrap();
    assert_eq!(report.total.requests, 1);
    assert_eq!(report.total.input_tokens, 4);
    assert_eq!(report.total.output_tokens, 5);
    assert_eq!(report.total.cost_usd, 0.00006);
    assert_eq!(report.data[0].group, s.key_id);
    s.tollgate.stop().await;
}

/// What Envoy has sent to tollgate's ExternalProcessor so far, in messages.
async fn ext_proc_messages(envoy: &Envoy) -> u64 {
    envoy
        .stats()
        .await
        .iter()
        .filter(|(name, _)| name.ends_with("ext_proc.stream_msgs_sent"))
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test]
async fn a_json_answer_costs_envoy_three_messages_and_reaches_the_client_as_sent() {
    let s = stack().await;
    let body = json!({
        "model": "gpt-4o",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "one two three four"}],
    });
    let before = ext_proc_messages(&s.envoy).await;
    let (status, headers, answer) = post_json(
        &s.envoy,
        "/v1/chat/completions",
        &[("x-api-key", &s.key)],
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // Request headers (the request body, with nothing to add, is not sent), response
    // headers, and the whole answer in one message.
    assert_eq!(ext_proc_messages(&s.envoy).await - before, 3);
    assert_eq!(s.mock.last_request().unwrap().json().unwrap(), body);
    assert_eq!(answer["usage"]["completion_tokens"], 5);
    assert!(
        headers.get("content-length").is_some(),
        "the answer keeps its length: {headers:?}"
    );
    let rows = wait_records(&s, 1).await;
    assert_eq!(
        rows,
        vec![s.expected(&request_id(&headers), "gpt-4o", 4, 5)]
    );
    s.tollgate.stop().await;
}

#[tokio::test]
async fn a_stream_gets_include_usage_and_is_recorded_with_the_final_chunks_counts() {
    let s = stack().await;
    let body = json!({
        "model": "gpt-4o",
        "stream": true,
        "max_tokens": 7,
        "messages": [{"role": "user", "content": "count these five words please"}],
    });
    let (status, headers, events) = post_sse(
        &s.envoy,
        "/v1/chat/completions",
        &[("x-api-key", &s.key)],
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{events:?}");

    // The upstream was asked for usage, in valid JSON with a matching content-length.
    let seen = s.mock.last_request().unwrap();
    let mut expected_upstream = body.clone();
    expected_upstream["stream_options"] = json!({"include_usage": true});
    assert_eq!(seen.json().unwrap(), expected_upstream);
    assert_eq!(
        seen.header("content-length"),
        Some(seen.body.len().to_string().as_str())
    );
    assert_eq!(seen.header("transfer-encoding"), None);
    // The client sees the stream it asked for: no usage chunk, no `usage` member (the
    // upstream's counts are read before they are taken out).
    assert_eq!(events.last().unwrap(), "[DONE]");
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(event).unwrap();
        assert!(chunk.get("usage").is_none(), "{chunk}");
        assert!(!chunk["choices"].as_array().unwrap().is_empty(), "{chunk}");
    }

    let rows = wait_records(&s, 1).await;
    assert_eq!(
        rows,
        vec![s.expected(&request_id(&headers), "gpt-4o", 5, 7)]
    );
    assert_eq!(rows[0].cost_usd, 0.0000825);

    // A stream that asked for usage itself is forwarded as it was.
    let mut asked = body.clone();
    asked["stream_options"] = json!({"include_usage": true});
    asked["max_tokens"] = json!(3);
    let (status, headers, _) = post_sse(
        &s.envoy,
        "/v1/chat/completions",
        &[("x-api-key", &s.key)],
        &asked,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.mock.last_request().unwrap().json().unwrap(), asked);
    let rows = wait_records(&s, 2).await;
    let second = rows
        .iter()
        .find(|r| r.request_id == request_id(&headers))
        .unwrap();
    assert_eq!(second, &s.expected(&request_id(&headers), "gpt-4o", 5, 3));
    s.tollgate.stop().await;
}

#[tokio::test]
async fn a_stream_too_large_to_buffer_passes_whole_and_is_recorded_as_an_estimate() {
    let s = stack().await;
    // 6 MB, far over Envoy's buffer limit: ext_proc sees only a prefix, which it leaves
    // alone, so the stream carries no usage.
    let filler = "word ".repeat(1_200_000);
    let sent = format!(
        r#"{{"model":"gpt-4o","stream":true,"max_tokens":2,"messages":[{{"role":"user","content":"{filler}"}}]}}"#
    )
    .into_bytes();
    let response = client()
        .post(s.envoy.url("/v1/chat/completions"))
        .header("x-api-key", &s.key)
        .header("content-type", "application/json")
        .body(sent.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let id = request_id(response.headers());
    let text = response.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let seen = s.mock.last_request().unwrap();
    assert_eq!(seen.body, sent, "forwarded whole and unchanged");
    assert_eq!(
        seen.header("content-length"),
        Some(sent.len().to_string().as_str())
    );

    let rows = wait_records(&s, 1).await;
    // Input: request bytes / 4; output: "The quick" streamed, 9 characters / 4, rounded up.
    let mut expected = s.expected(&id, "gpt-4o", sent.len().div_ceil(4) as i64, 3);
    expected.estimated = true;
    assert_eq!(rows, vec![expected]);
    s.tollgate.stop().await;
}

#[tokio::test]
async fn anthropic_messages_are_recorded_streamed_or_not() {
    let s = stack().await;
    let body = json!({
        "model": "claude-3-5-sonnet-latest",
        "max_tokens": 6,
        "system": "be brief",
        "messages": [{"role": "user", "content": "hello there"}],
    });
    let (status, headers, answer) =
        post_json(&s.envoy, "/v1/messages", &[("x-api-key", &s.key)], &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let first = request_id(&headers);
    let rows = wait_records(&s, 1).await;
    assert_eq!(
        rows,
        vec![s.expected(&first, "claude-3-5-sonnet-latest", 4, 6)]
    );

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (status, headers, events) = post_sse(
        &s.envoy,
        "/v1/messages",
        &[("x-api-key", &s.key)],
        &streamed,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(events.len() > 5, "{events:?}");
    // Anthropic streams always carry usage: the body is not touched.
    assert_eq!(s.mock.last_request().unwrap().json().unwrap(), streamed);
    let second = request_id(&headers);
    let rows = wait_records(&s, 2).await;
    let row = rows.iter().find(|r| r.request_id == second).unwrap();
    assert_eq!(row, &s.expected(&second, "claude-3-5-sonnet-latest", 4, 6));
    assert_eq!(row.cost_usd, 0.000102);
    s.tollgate.stop().await;
}

/// Reads the response until `events` SSE events have arrived; answers the text read.
async fn read_events(response: &mut reqwest::Response, events: usize) -> String {
    let mut text = String::new();
    while text.matches("\n\n").count() < events {
        let chunk = response
            .chunk()
            .await
            .unwrap()
            .expect("the stream ended early");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_still_yields_one_estimated_record() {
    let s = stack().await;
    let body = json!({
        "model": "gpt-4o",
        "stream": true,
        "max_tokens": 40,
        "messages": [{"role": "user", "content": "tell me a long story"}],
    });
    let sent = serde_json::to_vec(&body).unwrap();
    let mut response = client()
        .post(s.envoy.url("/v1/chat/completions"))
        .header("x-api-key", &s.key)
        .header("content-type", "application/json")
        .header(STREAM_DELAY_HEADER, "500")
        .body(sent.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let id = request_id(response.headers());
    // The role chunk, "The", " quick": then the client goes away, 500 ms before the next.
    let text = read_events(&mut response, 3).await;
    assert!(text.contains("quick") && !text.contains("brown"), "{text}");
    drop(response);

    let rows = wait_records(&s, 1).await;
    // No usage chunk was seen: input from the request body (bytes / 4, rounded up), output
    // from the 9 characters of text streamed (/ 4, rounded up).
    let input = sent.len().div_ceil(4) as i64;
    let mut expected = s.expected(&id, "gpt-4o", input, 3);
    expected.estimated = true;
    assert_eq!(rows, vec![expected]);
    s.tollgate.stop().await;
}

#[tokio::test]
async fn a_stream_reaches_the_client_chunk_by_chunk() {
    let s = stack().await;
    let body = json!({
        "model": "gpt-4o",
        "stream": true,
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "hi"}],
    });
    let started = Instant::now();
    let mut response = client()
        .post(s.envoy.url("/v1/chat/completions"))
        .header("x-api-key", &s.key)
        .header(STREAM_DELAY_HEADER, "300")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let first = read_events(&mut response, 1).await;
    let first_at = started.elapsed();
    assert!(!first.contains("[DONE]"), "{first}");
    let mut rest = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    let done_at = started.elapsed();
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
    // role + 4 words + finish + usage + [DONE]: 7 pauses of 300 ms after the first event. A
    // buffered stream would arrive all at once; the bound leaves 1.2 s of slack for a slow,
    // busy machine delaying the first chunk.
    assert!(
        done_at - first_at >= Duration::from_millis(900),
        "the first chunk came at {first_at:?}, the last at {done_at:?}: buffered?"
    );
    let rows = wait_records(&s, 1).await;
    assert_eq!(rows, vec![s.expected(&request_id_of(&s), "gpt-4o", 1, 4)]);
    s.tollgate.stop().await;
}

fn request_id_of(s: &Stack) -> String {
    s.mock
        .last_request()
        .unwrap()
        .header("x-request-id")
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn request_ids_are_envoys_and_a_request_id_counts_once() {
    let s = stack().await;
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "a b"}]});
    // Two requests claiming the same id: Envoy replaces it, so both count.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, headers, _) = post_json(
            &s.envoy,
            "/v1/chat/completions",
            &[("x-api-key", &s.key), ("x-request-id", "chosen-by-client")],
            &body,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        ids.push(request_id(&headers));
    }
    assert_ne!(ids[0], ids[1]);
    assert!(!ids.contains(&"chosen-by-client".to_owned()));
    let rows = wait_records(&s, 2).await;
    let mut stored_ids: Vec<_> = rows.iter().map(|r| r.request_id.clone()).collect();
    stored_ids.sort();
    ids.sort();
    assert_eq!(stored_ids, ids);

    // The same request id reported twice (two ext_proc streams for it, as a retried or
    // replayed report would make) is stored and charged once.
    let mut grpc = ExternalProcessorClient::connect(format!("http://{}", s.tollgate.grpc))
        .await
        .unwrap();
    for _ in 0..2 {
        let headers = http_headers(
            &[
                (":path", "/v1/chat/completions"),
                ("x-request-id", &ids[0]),
                ("x-tollgate-key-id", &s.key_id),
                ("x-tollgate-model", "gpt-4o"),
            ],
            true,
        );
        let response_headers = http_headers(
            &[(":status", "200"), ("content-type", "application/json")],
            false,
        );
        let body = envoy_types::pb::envoy::service::ext_proc::v3::HttpBody {
            body: br#"{"usage":{"prompt_tokens":100,"completion_tokens":100}}"#.to_vec(),
            end_of_stream: true,
            ..Default::default()
        };
        let messages = vec![
            processing_request::Request::RequestHeaders(headers),
            processing_request::Request::ResponseHeaders(response_headers),
            processing_request::Request::ResponseBody(body),
        ]
        .into_iter()
        .map(|request| ProcessingRequest {
            request: Some(request),
            ..Default::default()
        });
        let mut replies = grpc
            .process(tokio_stream::iter(messages))
            .await
            .unwrap()
            .into_inner();
        let mut n = 0;
        while replies.message().await.unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 3, "one answer per message");
    }
    let wait = Instant::now();
    while s
        .tollgate
        .metric("tollgate_usage_records_total{result=\"duplicate\"}")
        .await
        < 2.0
    {
        assert!(wait.elapsed() < DEADLINE, "the replays were not written");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(stored(&s.db).await, rows, "the replays changed nothing");
    let report = s
        .tollgate
        .app
        .store
        .usage_report(UsageQuery::new(GroupBy::Key))
        .await
        .unwrap();
    assert_eq!(report.total.requests, 2);
    assert_eq!(report.total.input_tokens, 4);
    s.tollgate.stop().await;
}

#[tokio::test]
async fn an_upstream_error_is_recorded_with_its_status_and_no_tokens() {
    let s = stack().await;
    let (status, headers, _) = post_json(
        &s.envoy,
        "/v1/chat/completions",
        &[("x-api-key", &s.key), ("x-mock-status", "500")],
        &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "a b"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let rows = wait_records(&s, 1).await;
    let mut expected = s.expected(&request_id(&headers), "gpt-4o", 0, 0);
    expected.status = 500;
    assert_eq!(rows, vec![expected]);
    s.tollgate.stop().await;
}

#[tokio::test]
async fn envoys_own_answer_and_a_client_gone_before_the_answer_are_recorded() {
    let s = stack().await;
    // The client gives up before the upstream answers: no status, input estimated from the
    // request body.
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "a b c"}]});
    let sent = serde_json::to_vec(&body).unwrap();
    let gone = client()
        .post(s.envoy.url("/v1/chat/completions"))
        .header("x-api-key", &s.key)
        .header("content-type", "application/json")
        .header(tollgate::mock_llm::DELAY_HEADER, "3000")
        .timeout(Duration::from_millis(300))
        .body(sent.clone())
        .send()
        .await;
    assert!(gone.unwrap_err().is_timeout());
    let rows = wait_records(&s, 1).await;
    let mut expected = s.expected(
        &request_id_of(&s),
        "gpt-4o",
        sent.len().div_ceil(4) as i64,
        0,
    );
    expected.status = 0;
    expected.estimated = true;
    let first = expected.request_id.clone();
    assert_eq!(rows, vec![expected]);

    // An Envoy in front of an upstream that is not there answers 503 itself: recorded with
    // that status and no tokens.
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let envoy = Envoy::start("envoy/envoy.yaml", s.tollgate.grpc, dead).await;
    let (status, headers, _) = post_json(
        &envoy,
        "/v1/chat/completions",
        &[("x-api-key", &s.key)],
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let id = headers
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let rows = wait_records(&s, 2).await;
    let row = rows.iter().find(|r| r.request_id != first).unwrap();
    if let Some(id) = id {
        assert_eq!(row.request_id, id);
    }
    let mut expected = s.expected(&row.request_id, "gpt-4o", 0, 0);
    expected.status = 503;
    assert_eq!(row, &expected);
    s.tollgate.stop().await;
}
