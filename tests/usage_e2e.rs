//! Money, end to end through a real Envoy (ext_authz + ext_proc) and the mock LLM: spend
//! shows in the API soon after the responses, a budget runs out into 429
//! `insufficient_quota` with no more overspend than the reservations allow, and no usage is
//! lost while Postgres is away.

mod common;

use common::envoy::Envoy;
use common::tollgate::Tollgate;
use common::upstream::post_json;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tollgate::mock_llm::MockLlm;
use tollgate::store::{GroupBy, UsageQuery};

const PRICED: &str = "models:\n  - { name: gpt-4o, pricing: { input_per_million: 1000, output_per_million: 1000 } }\nusage: { batch_interval: 20ms }\n";

fn chat() -> Value {
    json!({"model": "gpt-4o", "max_tokens": 20, "messages": [{"role": "user", "content": "hello there"}]})
}

async fn key(t: &Tollgate, mut body: Value) -> (String, String) {
    body["name"] = json!("k");
    t.create_key(body).await
}

async fn requests_recorded(t: &Tollgate) -> u64 {
    t.app
        .store
        .usage_report(UsageQuery::new(GroupBy::Model))
        .await
        .map(|r| r.total.requests)
        .unwrap_or(0)
}

#[tokio::test]
async fn spend_shows_in_the_api_and_a_spent_budget_answers_insufficient_quota() {
    let t = Tollgate::start(PRICED).await;
    let mock = MockLlm::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let envoy = Envoy::start("envoy/envoy.yaml", t.grpc, mock.addr).await;
    // $1000 per million tokens: a request is a few cents; the budget a few requests.
    let (id, key) = key(&t, json!({"max_budget": 0.5})).await;
    let auth = format!("Bearer {key}");

    let (status, _, body) = post_json(
        &envoy,
        "/v1/chat/completions",
        &[("authorization", &auth)],
        &chat(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cost = {
        let usage = &body["usage"];
        let tokens =
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap();
        tokens as f64 * 1000.0 / 1_000_000.0
    };
    // Spend is visible through the API within 2 s of the response.
    let started = Instant::now();
    let mut spend = 0.0;
    while started.elapsed() < Duration::from_secs(2) {
        let (_, shown) = t
            .admin(Method::GET, &format!("/admin/keys/{id}"), None)
            .await;
        spend = shown["spend"].as_f64().unwrap_or(0.0);
        if spend > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!((spend - cost).abs() < 1e-9, "spend {spend}, cost {cost}");

    // Spend the budget down, one request at a time, until Check refuses.
    let mut refused = None;
    for _ in 0..100 {
        let (status, headers, body) = post_json(
            &envoy,
            "/v1/chat/completions",
            &[("authorization", &auth)],
            &chat(),
        )
        .await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some((headers, body));
            break;
        }
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (headers, body) = refused.expect("the budget ran out");
    assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
    assert_eq!(body["error"]["type"], "insufficient_quota", "{body}");
    // Spent until the period ends: the client is told when, and not to retry meanwhile.
    assert!(!headers.contains_key("retry-after"), "{headers:?}");
    assert_eq!(headers["x-should-retry"], "false");
    let reset = headers["x-tollgate-budget-reset"].to_str().unwrap();
    assert!(tollgate::domain::rfc3339::parse(reset).unwrap() > tollgate::domain::now());
    assert!(headers.contains_key("x-request-id"));
    // What was admitted costs at most the budget plus what one estimate can be off by.
    let served = mock.requests().len() as f64;
    assert!(
        served * cost <= 0.5 + cost,
        "served {served} requests of ${cost}"
    );
    t.stop().await;
}

#[tokio::test]
async fn no_usage_is_lost_while_postgres_is_away() {
    let common::chaos::ProxiedPostgres {
        proxy,
        url: proxied,
        ..
    } = common::chaos::proxied_postgres().await;
    let t = Tollgate::start(&format!(
        "database: {{ url: \"{proxied}\", timeout: 300ms }}\n{PRICED}"
    ))
    .await;
    let mock = MockLlm::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let envoy = Envoy::start("envoy/envoy.yaml", t.grpc, mock.addr).await;
    let (_, key) = key(&t, json!({})).await;
    let auth = format!("Bearer {key}");
    // A first request warms the key cache: Check needs no database after that.
    let (status, _, _) = post_json(
        &envoy,
        "/v1/chat/completions",
        &[("authorization", &auth)],
        &chat(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    proxy.cut();
    for _ in 0..15 {
        let (status, _, body) = post_json(
            &envoy,
            "/v1/chat/completions",
            &[("authorization", &auth)],
            &chat(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    proxy.restore();

    let answered = mock.requests().len() as u64;
    assert_eq!(answered, 16);
    let started = Instant::now();
    let mut recorded = 0;
    while started.elapsed() < Duration::from_secs(20) {
        recorded = requests_recorded(&t).await;
        if recorded == answered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(recorded, answered, "every answered request has its record");
    t.stop().await;
}

#[tokio::test]
async fn concurrent_requests_through_envoy_stay_within_the_budget() {
    let t = Tollgate::start(PRICED).await;
    let mock = MockLlm::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let envoy = std::sync::Arc::new(Envoy::start("envoy/envoy.yaml", t.grpc, mock.addr).await);
    // Each request is estimated at (body bytes / 4 + 20) tokens at $0.001 a token, more than
    // the mock's real counts: a budget worth 10 estimates.
    let body = chat().to_string();
    let estimate = ((body.len() as f64 / 4.0).ceil() + 20.0) * 0.001;
    let budget = 10.0 * estimate;
    let (id, key) = key(&t, json!({"max_budget": budget})).await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let envoy = envoy.clone();
        let auth = format!("Bearer {key}");
        tasks.push(tokio::spawn(async move {
            let (status, _, body) = post_json(
                envoy.as_ref(),
                "/v1/chat/completions",
                &[("authorization", &auth)],
                &chat(),
            )
            .await;
            if status == StatusCode::TOO_MANY_REQUESTS {
                assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
            }
            status
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        let status = task.await.unwrap();
        assert!(
            status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS,
            "{status}"
        );
        if status == StatusCode::OK {
            admitted += 1;
        }
    }
    // At least the 10 that fit on estimates; more only as real (smaller) costs settle.
    assert!(admitted >= 10, "admitted {admitted}");
    let started = Instant::now();
    let mut recorded = 0;
    while started.elapsed() < Duration::from_secs(10) {
        recorded = requests_recorded(&t).await;
        if recorded == admitted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(recorded, admitted);
    // The bound of the reservation design: what was spent never passes the budget, since
    // every admitted request had room for its estimate and cost no more than it.
    let (_, shown) = t
        .admin(Method::GET, &format!("/admin/keys/{id}"), None)
        .await;
    let spent = shown["spend"].as_f64().unwrap();
    assert!(spent <= budget + 1e-9, "spent {spent} of {budget}");
    t.stop().await;
}
