//! Rate limits in Check: every level (global, route, model, team, user, key), rpm and tpm,
//! all-or-nothing admission, the `x-ratelimit-*` headers and 429s, settling token buckets,
//! limits changed through the API, and the Redis failure modes as Check sees them. Time is a
//! manual clock, so bucket arithmetic is exact and nothing sleeps.

mod common;

use common::check::{answer, Answer};
use common::tollgate::{Tollgate, MASTER_KEY};
use envoy_types::ext_authz::v3::pb::CheckRequest;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tollgate::clock::Clock;

const T0: i64 = 1_800_000_000_000;

fn request(key: &str, path: &str, body: &str) -> CheckRequest {
    common::check::request(&[("x-api-key", key)], path, body)
}

fn chat_body(model: &str, max_tokens: u64) -> String {
    json!({"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
}

async fn check(t: &Tollgate, key: &str, path: &str, body: &str) -> Answer {
    answer(
        t.app
            .gate
            .check(&request(key, path, body))
            .await
            .expect("a decision"),
    )
}

async fn chat(t: &Tollgate, key: &str) -> Answer {
    check(t, key, "/v1/chat/completions", &chat_body("gpt-4o", 16)).await
}

/// A key created by the master key with `body` (name added).
/// A key created by the master key with `body` (name added).
async fn key(t: &Tollgate, mut body: Value) -> (String, String) {
    body["name"] = json!("k");
    t.create_key(body).await
}

fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.header(name)
}

async fn metrics_text(t: &Tollgate) -> String {
    let (status, text) = t.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    text.as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn redis_up_is_exported_only_when_redis_is_configured() {
    let t = Tollgate::start_with_clock("", Clock::manual(T0)).await;
    let text = metrics_text(&t).await;
    assert!(text.contains("tollgate_usage_queue_depth"), "{text}");
    assert!(!text.contains("tollgate_redis_up"), "{text}");
    t.stop().await;

    let prefix = format!("tg-test-{}:", tollgate::domain::new_id());
    let t = Tollgate::start_with_clock(
        &format!("redis: {{ url: \"redis://127.0.0.1:6379\", key_prefix: \"{prefix}\" }}\n"),
        Clock::manual(T0),
    )
    .await;
    assert!(
        metrics_text(&t).await.contains("\ntollgate_redis_up 1\n"),
        "Redis answers"
    );
    t.stop().await;
}

#[tokio::test]
async fn a_key_s_rpm_admits_its_burst_then_refuses_until_refilled() {
    let clock = Clock::manual(T0);
    let t = Tollgate::start_with_clock("", clock.clone()).await;
    let (_, k) = key(&t, json!({"rpm": 3})).await;
    for remaining in ["2", "1", "0"] {
        let a = chat(&t, &k).await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(header(&a, "x-ratelimit-limit-requests"), "3");
        assert_eq!(header(&a, "x-ratelimit-remaining-requests"), remaining);
    }
    let a = chat(&t, &k).await;
    assert_eq!(a.status, 429, "{a:?}");
    assert_eq!(a.body["error"]["code"], "rate_limit_exceeded");
    assert_eq!(a.body["error"]["type"], "rate_limit_error");
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("this API key: 3 requests per minute"),
        "{message}"
    );
    // 3 per minute = one every 20 s: worth waiting for.
    assert_eq!(header(&a, "retry-after"), "20");
    assert_eq!(header(&a, "x-should-retry"), "true");
    assert_eq!(header(&a, "x-ratelimit-remaining-requests"), "0");
    assert_eq!(header(&a, "x-ratelimit-reset-requests"), "1m0s");

    clock.advance(19_999);
    assert_eq!(chat(&t, &k).await.status, 429);
    clock.advance(1);
    let a = chat(&t, &k).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(header(&a, "x-ratelimit-remaining-requests"), "0");
    t.stop().await;
}

#[tokio::test]
async fn a_refused_request_takes_nothing_from_any_bucket() {
    let clock = Clock::manual(T0);
    let t = Tollgate::start_with_clock("limits:\n  global: { rpm: 10 }\n", clock).await;
    let (_, tight) = key(&t, json!({"rpm": 1})).await;
    let (_, free) = key(&t, json!({})).await;
    assert_eq!(chat(&t, &tight).await.status, 200);
    for _ in 0..5 {
        assert_eq!(chat(&t, &tight).await.status, 429);
    }
    // Only the one admitted request came out of the global bucket.
    let a = chat(&t, &free).await;
    assert_eq!(a.status, 200);
    assert_eq!(header(&a, "x-ratelimit-limit-requests"), "10");
    assert_eq!(header(&a, "x-ratelimit-remaining-requests"), "8");
    t.stop().await;
}

#[tokio::test]
async fn global_route_and_model_limits_come_from_the_config() {
    let clock = Clock::manual(T0);
    let t = Tollgate::start_with_clock(
        "limits:\n  global: { rpm: 100 }\n  routes: { /v1/embeddings: { rpm: 2 } }\nmodels:\n  - { name: gpt-4o, rpm: 3 }\n  - { name: gpt-4o-mini }\n",
        clock,
    )
    .await;
    let (_, k) = key(&t, json!({})).await;
    let embed = json!({"model": "gpt-4o-mini", "input": "x"}).to_string();
    for _ in 0..2 {
        assert_eq!(check(&t, &k, "/v1/embeddings", &embed).await.status, 200);
    }
    let a = check(&t, &k, "/v1/embeddings", &embed).await;
    assert_eq!(a.status, 429);
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("the route /v1/embeddings"));

    for _ in 0..3 {
        assert_eq!(chat(&t, &k).await.status, 200);
    }
    let a = chat(&t, &k).await;
    assert_eq!(a.status, 429);
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("the model gpt-4o"));
    // Another model is not held back by gpt-4o's bucket.
    let mini = chat_body("gpt-4o-mini", 16);
    let a = check(&t, &k, "/v1/chat/completions", &mini).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(header(&a, "x-ratelimit-limit-requests"), "100");
    t.stop().await;
}

#[tokio::test]
async fn team_and_user_limits_are_shared_by_their_keys() {
    let clock = Clock::manual(T0);
    let t = Tollgate::start_with_clock("", clock).await;
    let (status, team) = t
        .admin(
            Method::POST,
            "/admin/teams",
            Some(json!({"name": "Eng", "rpm": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{team}");
    let team = team["id"].as_str().unwrap().to_owned();
    let (_, a) = key(&t, json!({"team_id": team})).await;
    let (_, b) = key(&t, json!({"team_id": team})).await;
    assert_eq!(chat(&t, &a).await.status, 200);
    assert_eq!(chat(&t, &b).await.status, 200);
    let refused = chat(&t, &a).await;
    assert_eq!(refused.status, 429);
    assert!(refused.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("your team"));

    let (status, user) = t
        .admin(
            Method::POST,
            "/admin/users",
            Some(
                json!({"username": "ada", "email": "ada@example.com", "role": "user", "tpm": 100}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    let user = user["id"].as_str().unwrap().to_owned();
    let (_, c) = key(&t, json!({"user_id": user})).await;
    let (_, d) = key(&t, json!({"user_id": user})).await;
    // Each request is estimated at body/4 + max_tokens ≈ 16 + 40.
    let body = chat_body("gpt-4o", 40);
    let first = check(&t, &c, "/v1/chat/completions", &body).await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(header(&first, "x-ratelimit-limit-tokens"), "100");
    let left: u64 = header(&first, "x-ratelimit-remaining-tokens")
        .parse()
        .unwrap();
    let estimate = 100 - left;
    assert_eq!(estimate, (body.len() as u64).div_ceil(4) + 40);
    let second = check(&t, &d, "/v1/chat/completions", &body).await;
    assert_eq!(second.status, 429, "{second:?}");
    assert!(second.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("your user: 100 tokens per minute"));
    t.stop().await;
}

#[tokio::test]
async fn a_request_bigger_than_the_token_limit_is_told_so() {
    let t = Tollgate::start_with_clock("", Clock::manual(T0)).await;
    let (_, k) = key(&t, json!({"tpm": 500})).await;
    let a = check(&t, &k, "/v1/chat/completions", &chat_body("gpt-4o", 4_000)).await;
    assert_eq!(a.status, 429, "{a:?}");
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("more than the 500 tokens per minute"),
        "{message}"
    );
    assert!(message.contains("waiting will not admit it"), "{message}");
    // No wait admits it: SDKs are told not to retry, and no time is promised.
    assert_eq!(header(&a, "x-should-retry"), "false");
    assert!(!a.headers.contains_key("retry-after"), "{a:?}");
    // A burst below the request is named as such.
    let t2 = Tollgate::start_with_clock(
        "limits:\n  global: { tpm: 100000, tpm_burst: 1000 }\n",
        Clock::manual(T0),
    )
    .await;
    let (_, k2) = key(&t2, json!({})).await;
    let a = check(
        &t2,
        &k2,
        "/v1/chat/completions",
        &chat_body("gpt-4o", 4_000),
    )
    .await;
    assert_eq!(a.status, 429, "{a:?}");
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(
            "more than the 1000 tokens at once (100000 per minute) allowed for this gateway"
        ),
        "{message}"
    );
    assert_eq!(header(&a, "x-should-retry"), "false");
    assert!(!a.headers.contains_key("retry-after"), "{a:?}");
    t2.stop().await;
    t.stop().await;
}

#[tokio::test]
async fn limits_changed_through_the_api_apply_at_once() {
    let t = Tollgate::start_with_clock("", Clock::manual(T0)).await;
    let (id, k) = key(&t, json!({"rpm": 1})).await;
    assert_eq!(chat(&t, &k).await.status, 200);
    assert_eq!(chat(&t, &k).await.status, 429);
    let (status, body) = t
        .admin(
            Method::PATCH,
            &format!("/admin/keys/{id}"),
            Some(json!({"rpm": 5})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The bucket keeps what was taken (0 left of the old 1); the new limit refills it at
    // 5 per minute, but the limit in the headers is the new one at once.
    let a = chat(&t, &k).await;
    assert_eq!(a.status, 429);
    assert_eq!(header(&a, "x-ratelimit-limit-requests"), "5");
    let (status, body) = t
        .admin(
            Method::PATCH,
            &format!("/admin/keys/{id}"),
            Some(json!({"rpm": null})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let a = chat(&t, &k).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        !a.headers.contains_key("x-ratelimit-limit-requests"),
        "{a:?}"
    );
    t.stop().await;
}

#[tokio::test]
async fn token_buckets_are_settled_with_the_real_count() {
    let clock = Clock::manual(T0);
    let t = Tollgate::start_with_clock("", clock).await;
    let (_, k) = key(&t, json!({"tpm": 1000})).await;
    let body = chat_body("gpt-4o", 600);
    let first = common::check::request(
        &[("x-api-key", k.as_str()), ("x-request-id", "req-settled")],
        "/v1/chat/completions",
        &body,
    );
    let a = answer(t.app.gate.check(&first).await.expect("a decision"));
    assert_eq!(a.status, 200);
    let estimate = 1000
        - header(&a, "x-ratelimit-remaining-tokens")
            .parse::<u64>()
            .unwrap();
    assert!(estimate > 600, "{estimate}");
    // A second such request does not fit...
    assert_eq!(
        check(&t, &k, "/v1/chat/completions", &body).await.status,
        429
    );
    // ...until the first is settled at the 50 tokens it really used (what the usage
    // writer does with its record, by request id).
    t.app.admission.settle("req-settled", 0.0, 50).await;
    let a = check(&t, &k, "/v1/chat/completions", &body).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        header(&a, "x-ratelimit-remaining-tokens")
            .parse::<u64>()
            .unwrap(),
        1000 - 50 - estimate
    );
    t.stop().await;
}

#[tokio::test]
async fn the_master_key_is_held_to_gateway_limits_only() {
    let t = Tollgate::start_with_clock("limits:\n  global: { rpm: 1 }\n", Clock::manual(T0)).await;
    assert_eq!(chat(&t, MASTER_KEY).await.status, 200);
    assert_eq!(chat(&t, MASTER_KEY).await.status, 429);
    t.stop().await;
}

#[tokio::test]
async fn an_unreachable_redis_follows_the_failure_mode() {
    let port = common::envoy::free_port();
    for (mode, first, second) in [
        ("open", 200, 200),
        ("closed", 503, 503),
        ("local", 200, 429),
    ] {
        let t = Tollgate::start_with_clock(
            &format!(
                "redis: {{ url: \"redis://127.0.0.1:{port}\", failure_mode: {mode}, timeout: 200ms, replicas: 2 }}\n"
            ),
            Clock::manual(T0),
        )
        .await;
        // rpm 2 over 2 replicas: 1 each while Redis is away (local).
        let (_, k) = key(&t, json!({"rpm": 2})).await;
        let a = chat(&t, &k).await;
        assert_eq!(a.status, first, "{mode}: {a:?}");
        let b = chat(&t, &k).await;
        assert_eq!(b.status, second, "{mode}: {b:?}");
        if mode == "closed" {
            assert_eq!(b.body["error"]["code"], "auth_unavailable", "{b:?}");
            // Redis is probed every 500 ms: a second's wait can succeed.
            assert_eq!(header(&b, "retry-after"), "1");
            assert_eq!(header(&b, "x-should-retry"), "true");
        }
        if mode == "open" {
            assert!(
                !a.headers.contains_key("x-ratelimit-limit-requests"),
                "{a:?}"
            );
        }
        assert!(
            metrics_text(&t).await.contains("\ntollgate_redis_up 0\n"),
            "{mode}"
        );
        // Both decisions were taken by the failure mode, and counted under it only.
        for counted in ["open", "closed", "local"] {
            let want = if counted == mode { 2.0 } else { 0.0 };
            let series =
                format!("tollgate_failure_mode_total{{backend=\"redis\",mode=\"{counted}\"}}");
            assert_eq!(t.metric(&series).await, want, "{mode}: {series}");
        }
        t.stop().await;
    }
}

#[tokio::test]
async fn written_usage_corrects_the_token_buckets_of_its_request() {
    let t =
        Tollgate::start_with_clock("usage: { batch_interval: 20ms }\n", Clock::manual(T0)).await;
    let (id, k) = key(&t, json!({"tpm": 1000})).await;
    let body = chat_body("gpt-4o", 600);
    let first = common::check::request(
        &[("x-api-key", &k), ("x-request-id", "usage-1")],
        "/v1/chat/completions",
        &body,
    );
    let a = answer(t.app.gate.check(&first).await.unwrap());
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        check(&t, &k, "/v1/chat/completions", &body).await.status,
        429
    );
    // The request really used 40 + 10 tokens; its record goes through the queue.
    t.app
        .usage
        .push(tollgate::usage::UsageRecord {
            request_id: "usage-1".into(),
            at: tollgate::domain::now(),
            key_id: Some(id),
            user_id: None,
            team_id: None,
            org_id: None,
            model: Some("gpt-4o".into()),
            tokens: tollgate::usage::TokenUsage {
                input_tokens: 40,
                output_tokens: 10,
                ..Default::default()
            },
            cost_usd: 0.0,
            status: 200,
            latency_ms: 1,
            estimated: false,
            source: tollgate::usage::UsageSource::ExtProc,
        })
        .await
        .unwrap();
    let mut admitted = false;
    for _ in 0..200 {
        if check(&t, &k, "/v1/chat/completions", &body).await.status == 200 {
            admitted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(
        admitted,
        "the bucket was corrected once the usage was written"
    );
    t.stop().await;
}

/// `tollgate_reservations_open`: a request admitted with a tpm limit holds its estimate
/// until its usage record settles it; in this process, and in Redis (counted there about
/// once a second, the same on every replica).
#[tokio::test]
async fn open_reservations_are_counted_until_their_usage_settles_them() {
    let prefix = format!("tg-test-{}:", tollgate::domain::new_id());
    for redis in [
        String::new(),
        format!("redis: {{ url: \"redis://127.0.0.1:6379\", key_prefix: \"{prefix}\" }}\n"),
    ] {
        let t = Tollgate::start_with_clock(
            &format!("{redis}usage: {{ batch_interval: 20ms }}\n"),
            Clock::manual(T0),
        )
        .await;
        let open = || t.metric("tollgate_reservations_open");
        assert_eq!(open().await, 0.0, "{redis}");
        let (id, k) = key(&t, json!({"tpm": 100000})).await;
        for request_id in ["held-1", "held-2"] {
            let request = common::check::request(
                &[("x-api-key", &k), ("x-request-id", request_id)],
                "/v1/chat/completions",
                &chat_body("gpt-4o", 100),
            );
            assert_eq!(
                answer(t.app.gate.check(&request).await.unwrap()).status,
                200
            );
        }
        eventually(|| async { open().await == 2.0 }, "two reservations open").await;
        t.app
            .usage
            .push(tollgate::usage::UsageRecord {
                request_id: "held-1".into(),
                at: tollgate::domain::now(),
                key_id: Some(id),
                user_id: None,
                team_id: None,
                org_id: None,
                model: Some("gpt-4o".into()),
                tokens: tollgate::usage::TokenUsage {
                    input_tokens: 40,
                    output_tokens: 10,
                    ..Default::default()
                },
                cost_usd: 0.0,
                status: 200,
                latency_ms: 1,
                estimated: false,
                source: tollgate::usage::UsageSource::ExtProc,
            })
            .await
            .unwrap();
        eventually(|| async { open().await == 1.0 }, "one settled").await;
        t.stop().await;
    }
}

/// Polls `done` every 25 ms for up to 10 s.
async fn eventually<F, Fut>(done: F, what: &str)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if done().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("{what}: not within 10 s");
}
