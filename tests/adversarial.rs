//! What an attacker (or a confused client) sends, end to end: a client → Envoy from the
//! shipped configs → the mock LLM, with tollgate deciding and metering.
//!
//! - One model: a body with a second `model` member is refused, whether Envoy forwarded it
//!   whole to Check or cut it at 1 MiB (then ext_proc follows the rest), and the upstream
//!   never serves it.
//! - One path: a path that means something else to the upstream never gets past tollgate's
//!   route decision.
//! - Bodies and headers that parsers disagree on are refused or decided as the upstream
//!   reads them; nothing reaches the upstream that tollgate did not decide.
//! - Streams: a stream to which tollgate added `include_usage` reaches the client exactly as
//!   the upstream sends it without, and is still metered exactly.
//!
//! JWT attacks are in tests/login_tokens.rs, role escalation in tests/roles.rs, OIDC linking
//! in tests/oidc.rs.

mod common;

use std::time::{Duration, Instant};

use common::check::{answer, request};
use common::envoy::Envoy;
use common::tollgate::Tollgate;
use common::upstream::{client, post_json, post_sse};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tollgate::mock_llm::MockLlm;
use tollgate::store::{GroupBy, UsageQuery};

struct Stack {
    tollgate: Tollgate,
    mock: MockLlm,
    envoy: Envoy,
    /// Allowed only `gpt-4o-mini`.
    mini_key: String,
    /// Only `models:read`.
    models_key: String,
    _dir: tempfile::TempDir,
}

async fn stack(envoy_config: &str) -> Stack {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
database: {{ url: "sqlite://{}" }}
models:
  - name: gpt-4o
    pricing: {{ input_per_million: 2.5, output_per_million: 10 }}
  - name: gpt-4o-mini
    pricing: {{ input_per_million: 0.15, output_per_million: 0.6 }}
usage: {{ batch_interval: 50ms }}
"#,
        dir.path().join("t.db").display()
    );
    let tollgate = Tollgate::start(&yaml).await;
    let mock = MockLlm::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let envoy = Envoy::start(envoy_config, tollgate.grpc, mock.addr).await;
    let user = tollgate.create_user("ada", "user").await;
    let (_, mini_key) = tollgate
        .create_key(json!({"name": "mini", "user_id": user, "models": ["gpt-4o-mini"]}))
        .await;
    let (_, models_key) = tollgate
        .create_key(json!({"name": "lister", "user_id": user, "permissions": ["models:read"]}))
        .await;
    Stack {
        tollgate,
        mock,
        envoy,
        mini_key,
        models_key,
        _dir: dir,
    }
}

/// `{"model":"gpt-4o-mini","messages":[…],"model":"gpt-4o"}` with `filler` bytes of prompt.
fn smuggling_body(filler: usize) -> Vec<u8> {
    format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}],"model":"gpt-4o"}}"#,
        "a".repeat(filler)
    )
    .into_bytes()
}

async fn post_raw(s: &Stack, path: &str, key: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let response = client()
        .post(s.envoy.url(path))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn a_second_model_member_is_refused_whole_or_cut_and_never_served() {
    let s = stack("envoy/envoy.yaml").await;
    // Whole (Check sees all of it), in the first MiB of a cut body (Check sees both), and
    // past the first MiB (only ext_proc, following the rest of the body, sees the second).
    for filler in [100, 900_000, 1_100_000, 3_000_000] {
        let (status, body) = post_raw(
            &s,
            "/v1/chat/completions",
            &s.mini_key,
            smuggling_body(filler),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "filler {filler}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "filler {filler}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("more than one `model`"),
            "{body}"
        );
    }
    // The same shapes in another case, or escaped, are the same member to some parser.
    for second in [r#""Model":"gpt-4o""#, r#""mod\u0065l":"gpt-4o""#] {
        let body = format!(
            r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}],{second}}}"#,
            "b".repeat(1_200_000)
        );
        let (status, answer) =
            post_raw(&s, "/v1/chat/completions", &s.mini_key, body.into_bytes()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{second}: {answer}");
    }
    assert!(
        s.mock.requests().is_empty(),
        "the upstream served a smuggled model: {:?}",
        s.mock
            .requests()
            .iter()
            .map(|r| r.body.len())
            .collect::<Vec<_>>()
    );

    // A long prompt with one model still passes, whole, to the upstream.
    let honest = format!(
        r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "c".repeat(3_000_000)
    )
    .into_bytes();
    let (status, body) = post_raw(&s, "/v1/chat/completions", &s.mini_key, honest.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(s.mock.last_request().unwrap().body, honest);
    // Nothing is metered for the refused ones: one record, the honest request's.
    wait_for_records(&s, 1).await;
    s.tollgate.stop().await;
}

#[tokio::test]
async fn without_ext_proc_the_whole_body_goes_to_check() {
    // envoy-als.yaml has no ext_proc to follow a cut body, so it never cuts one.
    let s = stack("envoy/envoy-als.yaml").await;
    let (status, body) = post_raw(
        &s,
        "/v1/chat/completions",
        &s.mini_key,
        smuggling_body(2_000_000),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "invalid_request");
    let (status, _) = post_raw(
        &s,
        "/v1/chat/completions",
        &s.mini_key,
        smuggling_body(9_000_000),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "over the forwarding limit"
    );
    assert!(s.mock.requests().is_empty());
    s.tollgate.stop().await;
}

#[tokio::test]
async fn a_path_that_means_another_route_upstream_is_never_served() {
    let s = stack("envoy/envoy.yaml").await;
    let chat = json!({"model": "gpt-4o-mini", "messages": []});
    for path in [
        "/v1/models/../chat/completions",
        "/v1/models/%2e%2e/chat/completions",
        "/v1/models/%2E%2E/chat/completions",
        "/v1/models/..%2Fchat/completions",
        "/v1/models/..%2fchat%2fcompletions",
        "/v1/models/x%5C..%5Cchat",
        "//../../v1/chat/completions",
        "/v1/models//../chat/completions",
        "/v1/models/./../chat/completions",
    ] {
        let (status, _, body) = post_json(
            &s.envoy,
            path,
            &[("authorization", &format!("Bearer {}", s.models_key))],
            &chat,
        )
        .await;
        assert_ne!(status, StatusCode::OK, "{path}: {body}");
    }
    // Whatever reached the upstream is a path the key may use, as the upstream reads it
    // (`/v1/models//../chat` normalises to `/v1/models/chat`, a model lookup).
    let served: Vec<String> = s.mock.requests().iter().map(|r| r.path.clone()).collect();
    assert!(
        served.iter().all(|p| p.starts_with("/v1/models/")),
        "the upstream served {served:?}"
    );
    // What the key may do still works.
    let (status, _, _) = common::upstream::get_json(
        &s.envoy,
        "/v1/models",
        &[("authorization", &format!("Bearer {}", s.models_key))],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    s.tollgate.stop().await;
}

#[tokio::test]
async fn check_refuses_dot_segments_and_encoded_slashes_itself() {
    // Behind an Envoy that does not normalise, tollgate's own rule still holds.
    let tollgate = Tollgate::start("{}").await;
    let auth = format!("Bearer {}", common::tollgate::MASTER_KEY);
    for path in [
        "/v1/models/../chat/completions",
        "/v1/models/%2e%2e/chat/completions",
        "/v1/models/..%2Fchat/completions",
        "/v1/models/x%5cy",
        "/v1/./models",
    ] {
        let reply = tollgate
            .app
            .gate
            .check(&request(&[("authorization", &auth)], path, "{}"))
            .await
            .unwrap();
        let a = answer(reply);
        assert_eq!(a.status, 400, "{path}: {a:?}");
        assert_eq!(a.code(), "invalid_request", "{path}");
    }
    tollgate.stop().await;
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_is_read_as_cut() {
    // Envoy can forward exactly its limit without saying the body was cut: what arrived is
    // then a prefix, and a prefix that names its model first is allowed, not a 400.
    let tollgate = Tollgate::start("{}").await;
    let auth = format!("Bearer {}", common::tollgate::MASTER_KEY);
    let prefix = format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{}"#,
        "x".repeat(1000)
    );
    let reply = tollgate
        .app
        .gate
        .check(&request(
            &[
                ("authorization", &auth),
                ("content-length", "2000000"),
                ("x-envoy-auth-partial-body", "false"),
            ],
            "/v1/chat/completions",
            &prefix,
        ))
        .await
        .unwrap();
    let a = answer(reply);
    assert_eq!(a.status, 200, "{a:?}");
    tollgate.stop().await;
}

#[tokio::test]
async fn a_chunked_upload_with_a_late_second_model_is_refused() {
    // No content-length: Envoy cuts the body for Check without knowing its size; the rest is
    // still followed.
    let s = stack("envoy/envoy.yaml").await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = smuggling_body(2_500_000);
    let mut wire = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: llm\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        s.mini_key
    )
    .into_bytes();
    for piece in body.chunks(64 * 1024) {
        wire.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        wire.extend_from_slice(piece);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(s.envoy.listen)
        .await
        .unwrap();
    // Envoy may answer (and close) before it has read everything.
    let _ = stream.write_all(&wire).await;
    let mut head = vec![0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 400", "{}", String::from_utf8_lossy(&head));
    assert!(s.mock.requests().is_empty());
    s.tollgate.stop().await;
}

#[tokio::test]
async fn bodies_parsers_disagree_on_are_refused_before_the_upstream() {
    let s = stack("envoy/envoy.yaml").await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "byte order mark",
            b"\xef\xbb\xbf{\"model\":\"gpt-4o-mini\",\"messages\":[]}".to_vec(),
        ),
        (
            "comment",
            b"{\"model\":\"gpt-4o-mini\", /* x */ \"messages\":[]}".to_vec(),
        ),
        (
            "trailing comma",
            b"{\"model\":\"gpt-4o-mini\",\"messages\":[],}".to_vec(),
        ),
        (
            "single quotes",
            b"{'model':'gpt-4o','model2':1,\"model\":\"gpt-4o-mini\"}".to_vec(),
        ),
        (
            "two objects",
            b"{\"model\":\"gpt-4o-mini\"}{\"model\":\"gpt-4o\"}".to_vec(),
        ),
        (
            "NaN",
            b"{\"model\":\"gpt-4o-mini\",\"temperature\":NaN}".to_vec(),
        ),
        (
            "invalid UTF-8",
            b"{\"model\":\"gpt-4o-mini\",\"messages\":\"\xff\xfe\"}".to_vec(),
        ),
        (
            "model as a list",
            b"{\"model\":[\"gpt-4o\"],\"messages\":[]}".to_vec(),
        ),
        (
            "model as an object",
            b"{\"model\":{\"name\":\"gpt-4o\"}}".to_vec(),
        ),
        ("not an object", b"[\"gpt-4o-mini\"]".to_vec()),
    ];
    for (what, body) in cases {
        let (status, answer) = post_raw(&s, "/v1/chat/completions", &s.mini_key, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {answer}");
        assert_eq!(
            answer["error"]["code"], "invalid_request",
            "{what}: {answer}"
        );
    }
    // Names that only look allowed are other models, refused as such.
    for model in [
        "gpt-4o-mini ",
        "GPT-4O-MINI",
        "gpt\u{2011}4o\u{2011}mini",
        "gpt-4o-mini\u{0}",
        "gpt-4o-mini' OR '1'='1",
        "gpt-4o",
    ] {
        let body = serde_json::to_vec(&json!({"model": model, "messages": []})).unwrap();
        let (status, answer) = post_raw(&s, "/v1/chat/completions", &s.mini_key, body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{model:?}: {answer}");
        assert_eq!(answer["error"]["code"], "model_not_allowed", "{model:?}");
    }
    assert!(s.mock.requests().is_empty());
    s.tollgate.stop().await;
}

#[tokio::test]
async fn headers_cannot_pick_an_identity_a_request_id_or_a_cut() {
    let s = stack("envoy/envoy.yaml").await;
    let (_, other_key) = s
        .tollgate
        .create_key(json!({"name": "other", "models": ["gpt-4o"]}))
        .await;
    let chat = |model: &str| json!({"model": model, "messages": []});
    let mini = format!("Bearer {}", s.mini_key);
    // Two credentials: the first that counts decides; the other is not a fallback.
    let (status, _, _) = post_json(
        &s.envoy,
        "/v1/chat/completions",
        &[("authorization", &mini), ("x-api-key", &other_key)],
        &chat("gpt-4o"),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "x-api-key must not widen the bearer key"
    );
    // Two bearer headers are one ambiguous credential, never either key.
    let response = client()
        .post(s.envoy.url("/v1/chat/completions"))
        .header("authorization", &mini)
        .header("authorization", format!("Bearer {other_key}"))
        .json(&chat("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // Identity, request id and Envoy's own headers sent by the client do not survive.
    let (status, headers, _) = post_json(
        &s.envoy,
        "/v1/chat/completions",
        &[
            ("authorization", &mini),
            ("x-tollgate-key-id", "someone-else"),
            ("x-tollgate-team-id", "team-of-admins"),
            ("x-tollgate-model", "gpt-4o"),
            ("x-request-id", "chosen-by-client"),
            ("x-envoy-auth-partial-body", "true"),
        ],
        &chat("gpt-4o-mini"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = s.mock.last_request().unwrap();
    assert_ne!(seen.header("x-tollgate-key-id"), Some("someone-else"));
    assert_eq!(seen.header("x-tollgate-team-id"), None);
    assert_eq!(seen.header("x-tollgate-model"), Some("gpt-4o-mini"));
    assert_ne!(seen.header("x-request-id"), Some("chosen-by-client"));
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("x-api-key"), None);
    assert_ne!(
        headers.get("x-request-id").and_then(|v| v.to_str().ok()),
        Some("chosen-by-client")
    );
    // A header block too large for Envoy never reaches tollgate or the upstream.
    let huge = "a".repeat(100 * 1024);
    let answer = client()
        .post(s.envoy.url("/v1/chat/completions"))
        .header("authorization", &mini)
        .header("x-filler", huge)
        .json(&chat("gpt-4o-mini"))
        .send()
        .await;
    // Envoy answers 431, or closes the connection before reading the rest.
    if let Ok(response) = answer {
        assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }
    assert_eq!(s.mock.requests().len(), 1);
    s.tollgate.stop().await;
}

/// Events with the parts that differ per response (id, created) blanked.
fn normalised(events: &[String]) -> Vec<Value> {
    events
        .iter()
        .map(|e| match serde_json::from_str::<Value>(e) {
            Ok(mut v) => {
                for field in ["id", "created", "system_fingerprint"] {
                    if v.get(field).is_some() {
                        v[field] = Value::Null;
                    }
                }
                v
            }
            Err(_) => Value::String(e.clone()),
        })
        .collect()
}

#[tokio::test]
async fn a_stream_reaches_the_client_as_the_upstream_sends_it_and_is_metered() {
    let s = stack("envoy/envoy.yaml").await;
    let base = json!({
        "model": "gpt-4o-mini",
        "stream": true,
        "max_tokens": 6,
        "messages": [{"role": "user", "content": "five words in this prompt"}],
    });
    let mut declined = base.clone();
    declined["stream_options"] = json!({"include_usage": false});
    let mut asked = base.clone();
    asked["stream_options"] = json!({"include_usage": true});
    let auth = format!("Bearer {}", s.mini_key);
    for (body, wants_usage) in [(&base, false), (&declined, false), (&asked, true)] {
        let (status, headers, through) = post_sse(
            &s.envoy,
            "/v1/chat/completions",
            &[("authorization", &auth)],
            body,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers.get("content-length").is_none());
        // The same request straight to the upstream, as the client would send it alone.
        let (_, _, direct) = post_sse(&s.mock, "/v1/chat/completions", &[], body).await;
        assert_eq!(
            normalised(&through),
            normalised(&direct),
            "the client's stream differs from the upstream's for {body}"
        );
        let chunks: Vec<Value> = through[..through.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let usage_chunks = chunks.iter().filter(|c| c.get("usage").is_some()).count();
        if wants_usage {
            assert_eq!(
                usage_chunks,
                chunks.len(),
                "every chunk has `usage` when asked"
            );
            assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 6);
        } else {
            assert_eq!(usage_chunks, 0, "{chunks:?}");
            assert!(chunks
                .iter()
                .all(|c| !c["choices"].as_array().unwrap().is_empty()));
        }
    }
    // Each of the three metered with the upstream's exact counts.
    wait_for_records(&s, 3).await;
    let report = s
        .tollgate
        .app
        .store
        .usage_report(UsageQuery::new(GroupBy::Model))
        .await
        .unwrap();
    assert_eq!(report.total.requests, 3);
    assert_eq!(report.total.input_tokens, 3 * 5);
    assert_eq!(report.total.output_tokens, 3 * 6);
    s.tollgate.stop().await;
}

async fn wait_for_records(s: &Stack, n: u64) {
    let start = Instant::now();
    loop {
        let report = s
            .tollgate
            .app
            .store
            .usage_report(UsageQuery::new(GroupBy::Model))
            .await
            .unwrap();
        if report.total.requests >= n {
            assert_eq!(
                report.total.requests, n,
                "more records than served requests"
            );
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} of {n} records",
            report.total.requests
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
