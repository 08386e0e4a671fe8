//! Rate limits through real Envoys: the `x-ratelimit-*` headers and the 429 body a client
//! sees, and exactness across replicas — two tollgates sharing Redis (and Postgres), an Envoy
//! in front of each, many concurrent clients, one key with rpm N: exactly N admitted.
//! Both tollgates count in one manual clock, so no refill happens during the test.

mod common;

use common::envoy::Envoy;
use common::tollgate::Tollgate;
use common::upstream::post_json;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::Arc;
use tollgate::clock::Clock;
use tollgate::mock_llm::MockLlm;

const T0: i64 = 1_800_000_000_000;

fn chat() -> Value {
    json!({"model": "gpt-4o", "max_tokens": 8, "messages": [{"role": "user", "content": "hello"}]})
}

async fn create_key(t: &Tollgate, mut body: Value) -> String {
    body["name"] = json!("limited");
    t.create_key(body).await.1
}

#[tokio::test]
async fn clients_see_openai_rate_limit_headers_and_429s() {
    let t = Tollgate::start_with_clock("", Clock::manual(T0)).await;
    let mock = MockLlm::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let envoy = Envoy::start("envoy/envoy.yaml", t.grpc, mock.addr).await;
    let key = create_key(&t, json!({"rpm": 2, "tpm": 10000})).await;
    let auth = format!("Bearer {key}");

    let (status, headers, body) = post_json(
        &envoy,
        "/v1/chat/completions",
        &[("authorization", &auth)],
        &chat(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-ratelimit-limit-requests"], "2");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "1");
    assert_eq!(headers["x-ratelimit-reset-requests"], "30s");
    assert_eq!(headers["x-ratelimit-limit-tokens"], "10000");
    let remaining: u64 = headers["x-ratelimit-remaining-tokens"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining < 10000 && remaining > 9900, "{remaining}");
    assert!(headers.contains_key("x-ratelimit-reset-tokens"));

    let (status, _, _) = post_json(
        &envoy,
        "/v1/chat/completions",
        &[("authorization", &auth)],
        &chat(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let served = mock.requests().len();

    let (status, headers, body) = post_json(
        &envoy,
        "/v1/chat/completions",
        &[("authorization", &auth)],
        &chat(),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(body["error"]["param"].is_null());
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["retry-after"], "30");
    assert_eq!(headers["x-ratelimit-limit-requests"], "2");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    assert_eq!(headers["x-ratelimit-reset-requests"], "1m0s");
    assert_eq!(
        mock.requests().len(),
        served,
        "a refused request never reaches the upstream"
    );
    t.stop().await;
}

#[tokio::test]
async fn two_replicas_sharing_redis_admit_exactly_the_limit() {
    const LIMIT: usize = 37;
    const CLIENTS: usize = 24;
    const PER_CLIENT: usize = 5;

    let (_, db_url) = common::db::fresh_postgres().await;
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let yaml = format!(
        "database: {{ url: \"{db_url}\" }}\nredis: {{ url: \"redis://127.0.0.1:6379\", failure_mode: closed, timeout: 2s, key_prefix: \"{prefix}\" }}\n"
    );
    let clock = Clock::manual(T0);
    let a = Tollgate::start_with_clock(&yaml, clock.clone()).await;
    let b = Tollgate::start_with_clock(&yaml, clock).await;
    let mock = MockLlm::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let envoy_a = Arc::new(Envoy::start("envoy/envoy.yaml", a.grpc, mock.addr).await);
    let envoy_b = Arc::new(Envoy::start("envoy/envoy.yaml", b.grpc, mock.addr).await);
    let key = create_key(&a, json!({"rpm": LIMIT})).await;

    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let envoy = if client % 2 == 0 {
            envoy_a.clone()
        } else {
            envoy_b.clone()
        };
        let auth = format!("Bearer {key}");
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..PER_CLIENT {
                let (status, _, body) = post_json(
                    envoy.as_ref(),
                    "/v1/chat/completions",
                    &[("authorization", &auth)],
                    &chat(),
                )
                .await;
                if status == StatusCode::TOO_MANY_REQUESTS {
                    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
                }
                statuses.push(status);
            }
            statuses
        }));
    }
    let mut ok = 0;
    let mut limited = 0;
    for task in tasks {
        for status in task.await.unwrap() {
            match status {
                StatusCode::OK => ok += 1,
                StatusCode::TOO_MANY_REQUESTS => limited += 1,
                other => panic!("unexpected status {other}"),
            }
        }
    }
    assert_eq!(ok, LIMIT, "admitted across both replicas");
    assert_eq!(limited, CLIENTS * PER_CLIENT - LIMIT);
    assert_eq!(
        mock.requests().len(),
        LIMIT,
        "the upstream saw only admitted requests"
    );
    a.stop().await;
    b.stop().await;
}
