//! Usage over Envoy's gRPC access log (ALS, `src/usage/als.rs`): entries with identity
//! (ext_authz metadata) and token counts (`tollgate.usage` or Envoy's typed
//! `envoy.ai.token_usage`) become usage records, once per request id; entries without
//! counts become nothing. Then end to end through a real Envoy started from
//! `envoy/envoy-als.yaml`: the AI Protocol Manager filter counts the mock's tokens and the
//! access logger streams the entry to tollgate.

mod common;

use common::envoy::Envoy;
use common::tollgate::Tollgate;
use common::upstream::{post_json, post_sse};
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, AccessLogType, HttpAccessLogEntry, HttpRequestProperties,
    HttpResponseProperties,
};
use envoy_types::pb::envoy::data::ai::v3 as ai;
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::{
    HttpAccessLogEntries, Identifier, LogEntries,
};
use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use envoy_types::pb::google::protobuf::{
    value::Kind, Any, Duration as PbDuration, Struct, Timestamp, UInt32Value, UInt64Value, Value,
};
use prost::Message;
use reqwest::StatusCode;
use serde_json::{json, Value as Json};
use std::time::Duration;
use tollgate::mock_llm::{completion_tokens, prompt_tokens, MockLlm};
use tollgate::store::{GroupBy, UsageQuery, UsageReport};
use tollgate::usage::als::AccessLogIngest;

const MODELS: &str = "usage: { batch_interval: 20ms }
models:
  - name: gpt-4o
    pricing: { input_per_million: 2.5, output_per_million: 10, cached_input_per_million: 1.25 }
  - name: gpt-4o-mini
    pricing: { input_per_million: 0.15, output_per_million: 0.6 }
";

const T: i64 = 1_795_000_000; // 2026-11-18T11:06:40Z

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

fn number(n: u64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n as f64)),
    }
}

fn fields<'a>(pairs: impl IntoIterator<Item = (&'a str, Value)>) -> Struct {
    Struct {
        fields: pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    }
}

/// What Check's OkHttpResponse puts in the ext_authz namespace.
fn identity(key: &str, user: &str, team: Option<&str>, model: &str) -> Struct {
    let mut pairs = vec![
        ("key_id", string(key)),
        ("user_id", string(user)),
        ("model", string(model)),
    ];
    if let Some(team) = team {
        pairs.push(("team_id", string(team)));
    }
    fields(pairs)
}

fn tollgate_usage(input: u64, output: u64, cached: u64, reasoning: u64) -> Struct {
    fields([
        ("input_tokens", number(input)),
        ("output_tokens", number(output)),
        ("cached_input_tokens", number(cached)),
        ("reasoning_tokens", number(reasoning)),
    ])
}

fn envoy_usage(input: u64, output: u64, cached: u64) -> Any {
    let wrap = |value| Some(UInt64Value { value });
    let usage = ai::TokenUsage {
        model: "gpt-4o-mini-2024-07-18".to_owned(),
        input_tokens: wrap(input),
        output_tokens: wrap(output),
        total_tokens: wrap(input + output),
        input_token_details: Some(ai::InputTokenDetails {
            cached_tokens: wrap(cached),
            ..Default::default()
        }),
        extraction_status: ai::token_usage::ExtractionStatus::Complete as i32,
        ..Default::default()
    };
    Any {
        type_url: "type.googleapis.com/envoy.data.ai.v3.TokenUsage".to_owned(),
        value: usage.encode_to_vec(),
    }
}

struct Entry {
    request_id: String,
    authz: Option<Struct>,
    usage: Option<Struct>,
    typed: Option<Any>,
    kind: AccessLogType,
}

impl Entry {
    fn new(request_id: &str) -> Self {
        Entry {
            request_id: request_id.to_owned(),
            authz: None,
            usage: None,
            typed: None,
            kind: AccessLogType::DownstreamEnd,
        }
    }

    fn build(self) -> HttpAccessLogEntry {
        let mut metadata = Metadata::default();
        if let Some(authz) = self.authz {
            metadata
                .filter_metadata
                .insert("envoy.filters.http.ext_authz".to_owned(), authz);
        }
        if let Some(usage) = self.usage {
            metadata
                .filter_metadata
                .insert("tollgate.usage".to_owned(), usage);
        }
        if let Some(typed) = self.typed {
            metadata
                .typed_filter_metadata
                .insert("envoy.ai.token_usage".to_owned(), typed);
        }
        HttpAccessLogEntry {
            common_properties: Some(AccessLogCommon {
                start_time: Some(Timestamp {
                    seconds: T,
                    nanos: 0,
                }),
                time_to_last_downstream_tx_byte: Some(PbDuration {
                    seconds: 1,
                    nanos: 250_000_000,
                }),
                metadata: Some(metadata),
                access_log_type: self.kind as i32,
                ..Default::default()
            }),
            request: Some(HttpRequestProperties {
                request_id: self.request_id,
                path: "/v1/chat/completions".to_owned(),
                ..Default::default()
            }),
            response: Some(HttpResponseProperties {
                response_code: Some(UInt32Value { value: 200 }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn message(entries: Vec<Entry>) -> StreamAccessLogsMessage {
    StreamAccessLogsMessage {
        identifier: Some(Identifier {
            node: None,
            log_name: "tollgate".to_owned(),
        }),
        log_entries: Some(LogEntries::HttpLogs(HttpAccessLogEntries {
            log_entry: entries.into_iter().map(Entry::build).collect(),
        })),
    }
}

async fn report(t: &Tollgate, group_by: GroupBy) -> UsageReport {
    t.app
        .store
        .usage_report(UsageQuery::new(group_by))
        .await
        .expect("usage report")
}

/// Polls the store until `want` requests are reported, or fails after 15 s.
async fn wait_for_requests(t: &Tollgate, want: u64) -> UsageReport {
    wait_for(t, want, None).await
}

/// [`wait_for_requests`], with Envoy's log in the failure message.
async fn wait_for(t: &Tollgate, want: u64, envoy: Option<&Envoy>) -> UsageReport {
    let mut last = UsageReport::default();
    for _ in 0..300 {
        last = report(t, GroupBy::Key).await;
        if last.total.requests >= want {
            assert_eq!(last.total.requests, want, "{last:?}");
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = envoy.map(|e| e.log_tail(40)).unwrap_or_default();
    panic!("never saw {want} requests; last report {last:?}\n{log}");
}

fn row<'a>(report: &'a UsageReport, group: &str) -> &'a tollgate::store::UsageRow {
    report
        .data
        .iter()
        .find(|r| r.group == group)
        .unwrap_or_else(|| panic!("no row {group} in {report:?}"))
}

#[tokio::test]
async fn entries_with_usage_become_records_once() {
    let t = Tollgate::start(MODELS).await;
    let ingest = AccessLogIngest::new(t.app.usage.clone(), t.app.config.models.clone());

    let queued = ingest
        .ingest(message(vec![
            // tollgate's own namespace, with cached and reasoning tokens.
            Entry {
                authz: Some(identity("k1", "u1", Some("t1"), "gpt-4o")),
                usage: Some(tollgate_usage(1117, 946, 1024, 704)),
                ..Entry::new("req-1")
            },
            // Envoy's typed TokenUsage (AI Protocol Manager); the model and its price come
            // from ext_authz (what was asked and checked), not the response's snapshot name.
            Entry {
                authz: Some(identity("k2", "u1", None, "gpt-4o-mini")),
                typed: Some(envoy_usage(1000, 100, 0)),
                ..Entry::new("req-2")
            },
            // An allowed request whose response had no usage: nothing.
            Entry {
                authz: Some(identity("k1", "u1", Some("t1"), "gpt-4o")),
                ..Entry::new("req-3")
            },
            // A denied request (no identity, no usage): nothing.
            Entry::new("req-4"),
            // A periodic entry of a long stream: its counts are not final.
            Entry {
                authz: Some(identity("k1", "u1", Some("t1"), "gpt-4o")),
                usage: Some(tollgate_usage(5, 5, 0, 0)),
                kind: AccessLogType::DownstreamPeriodic,
                ..Entry::new("req-5")
            },
            // No request id: cannot be idempotent, so not recorded.
            Entry {
                authz: Some(identity("k1", "u1", Some("t1"), "gpt-4o")),
                usage: Some(tollgate_usage(5, 5, 0, 0)),
                ..Entry::new("")
            },
        ]))
        .await
        .unwrap();
    assert_eq!(queued, 2);

    let by_key = wait_for_requests(&t, 2).await;
    let k1 = row(&by_key, "k1");
    assert_eq!(
        (k1.requests, k1.input_tokens, k1.output_tokens),
        (1, 1117, 946)
    );
    // 93 × 2.5 + 1024 × 1.25 + 946 × 10 micro-dollars.
    assert_eq!(k1.cost_usd, 0.0109725);
    let k2 = row(&by_key, "k2");
    assert_eq!(
        (k2.requests, k2.input_tokens, k2.output_tokens),
        (1, 1000, 100)
    );
    // 1000 × 0.15 + 100 × 0.6 micro-dollars.
    assert_eq!(k2.cost_usd, 0.00021);
    let by_team = report(&t, GroupBy::Team).await;
    assert_eq!(row(&by_team, "t1").requests, 1);
    let by_model = report(&t, GroupBy::Model).await;
    assert_eq!(row(&by_model, "gpt-4o-mini").requests, 1);
    let by_day = report(&t, GroupBy::Day).await;
    assert_eq!(row(&by_day, "2026-11-18").requests, 2);

    // The same request again (Envoy re-sent it, or the ext_proc path reported it first):
    // queued, but counted once, with the first counts.
    let queued = ingest
        .ingest(message(vec![Entry {
            authz: Some(identity("k1", "u1", Some("t1"), "gpt-4o")),
            usage: Some(tollgate_usage(9, 9, 0, 0)),
            ..Entry::new("req-1")
        }]))
        .await
        .unwrap();
    assert_eq!(queued, 1);
    // A later record proves the duplicate has been through the writer.
    ingest
        .ingest(message(vec![Entry {
            authz: Some(identity("k3", "u2", None, "gpt-4o")),
            usage: Some(tollgate_usage(10, 0, 0, 0)),
            ..Entry::new("req-6")
        }]))
        .await
        .unwrap();
    let by_key = wait_for_requests(&t, 3).await;
    let k1 = row(&by_key, "k1");
    assert_eq!(
        (k1.requests, k1.input_tokens, k1.output_tokens),
        (1, 1117, 946)
    );
    assert_eq!(by_key.total.input_tokens, 1117 + 1000 + 10);
    t.stop().await;
}

#[tokio::test]
async fn tcp_and_empty_messages_are_ignored() {
    let t = Tollgate::start(MODELS).await;
    let ingest = AccessLogIngest::new(t.app.usage.clone(), t.app.config.models.clone());
    let tcp = StreamAccessLogsMessage {
        identifier: None,
        log_entries: Some(LogEntries::TcpLogs(Default::default())),
    };
    assert_eq!(ingest.ingest(tcp).await.unwrap(), 0);
    assert_eq!(
        ingest
            .ingest(StreamAccessLogsMessage::default())
            .await
            .unwrap(),
        0
    );
    t.stop().await;
}

fn chat(model: &str, content: &str) -> Json {
    json!({"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 7})
}

/// Through a real Envoy: Check allows, the mock answers, Envoy's AI Protocol Manager counts
/// the tokens, and the access log entry (request id, ext_authz identity, counts) reaches
/// tollgate's AccessLogService, which writes one record per request.
#[tokio::test]
async fn through_envoy_the_access_log_records_usage() {
    let t = Tollgate::start(MODELS).await;
    let mock = MockLlm::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let envoy = Envoy::start("envoy/envoy-als.yaml", t.grpc, mock.addr).await;
    let user = t.create_user("alice", "user").await;
    let (key_id, key) = t.create_key(json!({"name": "als", "user_id": user})).await;
    let auth = format!("Bearer {key}");

    // A JSON answer.
    let body = chat("gpt-4o", "count these five words please");
    let (status, _, answer) = post_json(
        &envoy,
        "/v1/chat/completions",
        &[("authorization", &auth)],
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let first_id = mock
        .last_request()
        .and_then(|r| r.header("x-request-id").map(str::to_owned))
        .expect("Envoy sent an x-request-id upstream");
    let (input, output) = (prompt_tokens(&body), completion_tokens(&body));
    assert_eq!((input, output), (5, 7));

    let by_key = wait_for(&t, 1, Some(&envoy)).await;
    let row_key = row(&by_key, &key_id);
    assert_eq!(
        (
            row_key.requests,
            row_key.input_tokens,
            row_key.output_tokens
        ),
        (1, input, output)
    );
    // 5 × 2.5 + 7 × 10 = 82.5 micro-dollars.
    assert_eq!(row_key.cost_usd, 0.0000825);
    // The identity came from the ext_authz metadata of the entry.
    assert_eq!(row(&report(&t, GroupBy::User).await, &user).requests, 1);
    assert_eq!(row(&report(&t, GroupBy::Model).await, "gpt-4o").requests, 1);

    // An event stream that asked for usage.
    let mut body = chat("gpt-4o-mini", "a stream of six words here");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (status, _, events) = post_sse(
        &envoy,
        "/v1/chat/completions",
        &[("authorization", &auth)],
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{events:?}");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let by_key = wait_for(&t, 2, Some(&envoy)).await;
    assert_eq!(row(&by_key, &key_id).input_tokens, input + 6);
    assert_eq!(row(&by_key, &key_id).output_tokens, output + 7);
    let by_model = report(&t, GroupBy::Model).await;
    // 6 × 0.15 + 7 × 0.6 = 5.1 micro-dollars.
    assert_eq!(row(&by_model, "gpt-4o-mini").cost_usd, 0.0000051);

    // A denied request reaches the access log too, with no identity and no usage: nothing.
    let (status, _, _) = post_json(
        &envoy,
        "/v1/chat/completions",
        &[("authorization", "Bearer sk-tg-nope")],
        &chat("gpt-4o", "hi"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The record carries Envoy's request id: the same id through the ALS handler is a
    // duplicate, not a new request.
    let ingest = AccessLogIngest::new(t.app.usage.clone(), t.app.config.models.clone());
    ingest
        .ingest(message(vec![
            Entry {
                authz: Some(identity(&key_id, &user, None, "gpt-4o")),
                usage: Some(tollgate_usage(1000, 1000, 0, 0)),
                ..Entry::new(&first_id)
            },
            Entry {
                authz: Some(identity("other", "other", None, "gpt-4o")),
                usage: Some(tollgate_usage(1, 1, 0, 0)),
                ..Entry::new("after")
            },
        ]))
        .await
        .unwrap();
    let by_key = wait_for_requests(&t, 3).await;
    let row_key = row(&by_key, &key_id);
    assert_eq!(
        (row_key.requests, row_key.input_tokens),
        (2, input + 6),
        "the access log record of {first_id} was not written under Envoy's request id"
    );
    // Envoy sent an entry for each of the three requests (the denied one included), and
    // the denied one was skipped: still exactly three records.
    let mut written = 0;
    for _ in 0..100 {
        written = envoy
            .stats()
            .await
            .get("access_logs.grpc_access_log.logs_written")
            .copied()
            .unwrap_or(0);
        if written >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(written, 3, "{:?}", envoy.stats().await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(report(&t, GroupBy::Key).await.total.requests, 3);
    // Envoy holds its access log stream open; tollgate still stops promptly.
    tokio::time::timeout(Duration::from_secs(10), t.stop())
        .await
        .expect("tollgate stops while Envoy keeps its access log stream open");
    drop(envoy);
}
