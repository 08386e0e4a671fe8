//! Parallel limits (`max_parallel`, docs/DESIGN.md "Parallel limits"): requests in flight
//! from Check until their usage record, or until `limits.parallel_lease`; in this process
//! and in Redis (also two replicas sharing it), through Check and end to end through a real
//! Envoy with slow upstream requests. The admission clock is manual, so a lease ends only
//! when a test moves it.

mod common;

use common::check::{answer, Answer};
use common::envoy::Envoy;
use common::tollgate::Tollgate;
use common::upstream::post_json;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tollgate::clock::Clock;
use tollgate::mock_llm::{MockLlm, DELAY_HEADER};
use tollgate::usage::{TokenUsage, UsageRecord, UsageSource};

const T0: i64 = 1_800_000_000_000;
const REDIS: &str = "redis://127.0.0.1:6379";

fn chat_body() -> String {
    json!({"model": "gpt-4o", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]})
        .to_string()
}

/// Check of a small chat with `key` under `request_id`.
async fn check(t: &Tollgate, key: &str, request_id: &str) -> Answer {
    let request = common::check::request(
        &[("x-api-key", key), ("x-request-id", request_id)],
        "/v1/chat/completions",
        &chat_body(),
    );
    answer(t.app.gate.check(&request).await.expect("a decision"))
}

async fn key(t: &Tollgate, mut body: Value) -> (String, String) {
    body["name"] = json!("k");
    t.create_key(body).await
}

/// The usage record of `request_id` (key `key_id`), through the usage queue as the edges
/// write it.
async fn record(t: &Tollgate, request_id: &str, key_id: &str) {
    t.app
        .usage
        .push(UsageRecord {
            request_id: request_id.into(),
            at: tollgate::domain::now(),
            key_id: Some(key_id.into()),
            user_id: None,
            team_id: None,
            org_id: None,
            model: Some("gpt-4o".into()),
            tokens: TokenUsage {
                input_tokens: 4,
                output_tokens: 4,
                ..Default::default()
            },
            cost_usd: 0.0,
            status: 200,
            latency_ms: 1,
            estimated: false,
            source: UsageSource::ExtProc,
        })
        .await
        .unwrap();
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
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: not within 10 s");
}

fn assert_in_flight_refusal(a: &Answer, who: &str, of: &str) {
    assert_eq!(a.status, 429, "{a:?}");
    assert_eq!(a.body["error"]["code"], "rate_limit_exceeded", "{a:?}");
    assert_eq!(a.body["error"]["type"], "rate_limit_error", "{a:?}");
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "Rate limit reached for {who}: too many requests in flight ({of} allowed at once)"
        )),
        "{message}"
    );
    assert_eq!(a.header("retry-after"), "1", "{a:?}");
}

/// The two places counters live: in this process, and Redis under a fresh prefix.
fn backends() -> [(String, Option<String>); 2] {
    let prefix = format!("tg-par-{}:", uuid::Uuid::new_v4().simple());
    [
        (String::new(), None),
        (
            format!(
                "redis: {{ url: \"{REDIS}\", key_prefix: \"{prefix}\", failure_mode: closed }}\n"
            ),
            Some(prefix),
        ),
    ]
}

async fn redis_keys(prefix: &str) -> Vec<String> {
    let mut redis = redis::Client::open(REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis at 127.0.0.1:6379");
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    keys.sort();
    keys
}

#[tokio::test]
async fn a_key_s_slots_are_held_until_usage_or_the_lease() {
    for (redis, _) in backends() {
        let clock = Clock::manual(T0);
        let t = Tollgate::start_with_clock(
            &format!(
                "{redis}usage: {{ batch_interval: 20ms }}\nlimits: {{ parallel_lease: 30s }}\n"
            ),
            clock.clone(),
        )
        .await;
        let (id, k) = key(&t, json!({"max_parallel": 2})).await;
        assert_eq!(check(&t, &k, "r1").await.status, 200, "{redis}");
        assert_eq!(check(&t, &k, "r2").await.status, 200, "{redis}");
        let refused = check(&t, &k, "r3").await;
        assert_in_flight_refusal(&refused, "this API key", "2 of 2");
        // Check again of a request in flight (the same id) holds still one slot.
        assert_eq!(check(&t, &k, "r1").await.status, 200, "{redis}");
        assert_eq!(check(&t, &k, "r3").await.status, 429, "{redis}");

        // r1's usage record frees its slot.
        record(&t, "r1", &id).await;
        eventually(
            || async { check(&t, &k, "r3").await.status == 200 },
            "a slot freed by a usage record",
        )
        .await;
        assert_eq!(check(&t, &k, "r4").await.status, 429, "{redis}");

        // No record comes for r2 and r3: their slots end with the lease (30 s after their
        // Checks; r3's last Check was just now).
        clock.advance(29_999);
        assert_eq!(check(&t, &k, "r4").await.status, 429, "{redis}");
        clock.advance(1);
        assert_eq!(check(&t, &k, "r4").await.status, 200, "{redis}");
        assert_eq!(check(&t, &k, "r5").await.status, 200, "{redis}");
        assert_eq!(check(&t, &k, "r6").await.status, 429, "{redis}");
        t.stop().await;
    }
}

#[tokio::test]
async fn a_later_refusal_leaves_no_slot_taken() {
    for (redis, _) in backends() {
        let clock = Clock::manual(T0);
        let t = Tollgate::start_with_clock(
            &format!("{redis}usage: {{ batch_interval: 20ms }}\n"),
            clock.clone(),
        )
        .await;
        let (id, k) = key(&t, json!({"max_parallel": 1, "rpm": 1})).await;
        assert_eq!(check(&t, &k, "a1").await.status, 200, "{redis}");
        record(&t, "a1", &id).await;
        // Once a1 is settled its slot is free; a2 then finds the rpm bucket empty.
        eventually(
            || async {
                let a = check(&t, &k, "a2").await;
                a.status == 429
                    && a.body["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains("1 requests per minute")
            },
            "a rate refusal (the slot is free)",
        )
        .await;
        // A minute later the bucket has room; had a2 kept its slot, a3 would be refused
        // for it (the lease is 10 minutes).
        clock.advance(60_000);
        assert_eq!(check(&t, &k, "a3").await.status, 200, "{redis}");
        t.stop().await;
    }
}

#[tokio::test]
async fn users_teams_and_the_gateway_share_their_slots_among_keys() {
    for (redis, prefix) in backends() {
        let t = Tollgate::start_with_clock(
            &format!("{redis}limits: {{ global: {{ max_parallel: 5 }} }}\n"),
            Clock::manual(T0),
        )
        .await;
        let (status, user) = t
            .admin(
                Method::POST,
                "/admin/users",
                Some(json!({"username": "ann", "email": "ann@example.com", "max_parallel": 2})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{user}");
        assert_eq!(user["max_parallel"], 2);
        let (status, team) = t
            .admin(
                Method::POST,
                "/admin/teams",
                Some(json!({"name": "ops", "max_parallel": 1})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{team}");
        let user_id = user["id"].as_str().unwrap();
        let team_id = team["id"].as_str().unwrap();
        let (_, ann1) = key(&t, json!({"user_id": user_id})).await;
        let (_, ann2) = key(&t, json!({"user_id": user_id})).await;
        assert_eq!(check(&t, &ann1, "u1").await.status, 200);
        assert_eq!(check(&t, &ann2, "u2").await.status, 200);
        assert_in_flight_refusal(&check(&t, &ann1, "u3").await, "your user", "2 of 2");

        let (_, ops1) = key(&t, json!({"team_id": team_id})).await;
        let (_, ops2) = key(&t, json!({"team_id": team_id})).await;
        assert_eq!(check(&t, &ops1, "t1").await.status, 200);
        assert_in_flight_refusal(&check(&t, &ops2, "t2").await, "your team", "1 of 1");

        // Three requests in flight; two more fill the gateway.
        let (_, free) = key(&t, json!({})).await;
        assert_eq!(check(&t, &free, "g1").await.status, 200);
        assert_eq!(check(&t, &free, "g2").await.status, 200);
        assert_in_flight_refusal(&check(&t, &free, "g3").await, "this gateway", "5 of 5");
        if let Some(prefix) = prefix {
            let keys = redis_keys(&prefix).await;
            for owner in [
                "{g}",
                &format!("{{u:{user_id}}}"),
                &format!("{{t:{team_id}}}"),
            ] {
                assert!(
                    keys.contains(&format!("{prefix}{owner}:par")),
                    "{owner} in {keys:?}"
                );
            }
        }
        t.stop().await;
    }
}

/// An org's `max_parallel` is shared by the keys of all its teams and users, and the
/// usage record of one of their requests frees the org's slot.
#[tokio::test]
async fn an_org_s_slots_are_shared_by_its_teams_and_users() {
    for (redis, prefix) in backends() {
        let t = Tollgate::start_with_clock(&redis, Clock::manual(T0)).await;
        let (status, org) = t
            .admin(
                Method::POST,
                "/admin/orgs",
                Some(json!({"name": "Acme", "max_parallel": 2})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{org}");
        assert_eq!(org["max_parallel"], 2);
        let org_id = org["id"].as_str().unwrap();
        let (_, team) = t
            .admin(
                Method::POST,
                "/admin/teams",
                Some(json!({"name": "ops", "org_id": org_id})),
            )
            .await;
        let (_, user) = t
            .admin(
                Method::POST,
                "/admin/users",
                Some(json!({"username": "ann", "email": "ann@example.com", "org_id": org_id})),
            )
            .await;
        let (ops_id, ops) = key(&t, json!({"team_id": team["id"]})).await;
        let (_, ann) = key(&t, json!({"user_id": user["id"]})).await;
        let (_, outsider) = key(&t, json!({})).await;
        assert_eq!(check(&t, &ops, "o1").await.status, 200);
        assert_eq!(check(&t, &ann, "o2").await.status, 200);
        assert_in_flight_refusal(&check(&t, &ann, "o3").await, "your organization", "2 of 2");
        assert_in_flight_refusal(&check(&t, &ops, "o4").await, "your organization", "2 of 2");
        // Outside the org nothing is held.
        assert_eq!(check(&t, &outsider, "x1").await.status, 200);
        if let Some(prefix) = &prefix {
            let keys = redis_keys(prefix).await;
            let owner = format!("{prefix}{{o:{org_id}}}:par");
            assert!(keys.contains(&owner), "{owner} in {keys:?}");
        }

        record(&t, "o1", &ops_id).await;
        eventually(
            || async { check(&t, &ann, "o5").await.status == 200 },
            "the org's slot is freed by the usage record",
        )
        .await;
        t.stop().await;
    }
}

#[tokio::test]
async fn a_changed_limit_applies_at_the_next_check_and_no_limit_costs_no_key() {
    for (redis, prefix) in backends() {
        let t = Tollgate::start_with_clock(&redis, Clock::manual(T0)).await;
        let (id, k) = key(&t, json!({"rpm": 100})).await;
        assert_eq!(check(&t, &k, "c1").await.status, 200);
        if let Some(prefix) = &prefix {
            let keys = redis_keys(prefix).await;
            assert!(
                keys.iter().all(|k| !k.ends_with(":par")),
                "no slot set without max_parallel: {keys:?}"
            );
        }
        let (status, body) = t
            .admin(
                Method::PATCH,
                &format!("/admin/keys/{id}"),
                Some(json!({"max_parallel": 1})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["max_parallel"], 1);
        assert_eq!(check(&t, &k, "c2").await.status, 200);
        assert_eq!(check(&t, &k, "c3").await.status, 429);
        let (status, body) = t
            .admin(
                Method::PATCH,
                &format!("/admin/keys/{id}"),
                Some(json!({"max_parallel": null})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["max_parallel"].is_null(), "{body}");
        assert_eq!(check(&t, &k, "c3").await.status, 200);
        for bad in [json!(0), json!(-1), json!(1.5), json!("2")] {
            let (status, body) = t
                .admin(
                    Method::PATCH,
                    &format!("/admin/keys/{id}"),
                    Some(json!({ "max_parallel": bad })),
                )
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("max_parallel"),
                "{body}"
            );
        }
        t.stop().await;
    }
}

/// Two replicas sharing Redis (and Postgres): the slots are one set; a record written by
/// the replica that did not admit the request frees its slot for both.
#[tokio::test]
async fn replicas_sharing_redis_share_the_slots() {
    let (_, db_url) = common::db::fresh_postgres().await;
    let prefix = format!("tg-par-{}:", uuid::Uuid::new_v4().simple());
    let yaml = format!(
        "database: {{ url: \"{db_url}\" }}\nredis: {{ url: \"{REDIS}\", key_prefix: \"{prefix}\", failure_mode: closed, timeout: 2s }}\nusage: {{ batch_interval: 20ms }}\n"
    );
    let clock = Clock::manual(T0);
    let a = Tollgate::start_with_clock(&yaml, clock.clone()).await;
    let b = Tollgate::start_with_clock(&yaml, clock).await;
    let (id, k) = key(&a, json!({"max_parallel": 3})).await;
    assert_eq!(check(&a, &k, "x1").await.status, 200);
    assert_eq!(check(&b, &k, "x2").await.status, 200);
    assert_eq!(check(&a, &k, "x3").await.status, 200);
    assert_in_flight_refusal(&check(&b, &k, "x4").await, "this API key", "3 of 3");
    assert_in_flight_refusal(&check(&a, &k, "x4").await, "this API key", "3 of 3");
    // x1 was admitted by a; b writes its record.
    record(&b, "x1", &id).await;
    eventually(
        || async { check(&a, &k, "x4").await.status == 200 },
        "a slot freed through the other replica",
    )
    .await;
    assert_eq!(check(&b, &k, "x5").await.status, 429);
    a.stop().await;
    b.stop().await;
}

/// Through a real Envoy: N slow requests in flight, the next is refused with
/// `retry-after: 1` and never reaches the upstream; once one finishes and its usage is
/// recorded a new one passes; slots whose usage never comes end with the lease.
#[tokio::test]
async fn through_envoy_slow_requests_hold_their_slots() {
    const N: usize = 3;
    let clock = Clock::manual(T0);
    let t = Tollgate::start_with_clock(
        "usage: { batch_interval: 20ms }\nlimits: { parallel_lease: 1m }\n",
        clock.clone(),
    )
    .await;
    let mock = MockLlm::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let envoy = Arc::new(Envoy::start("envoy/envoy.yaml", t.grpc, mock.addr).await);
    let (_, k) = key(&t, json!({"max_parallel": N})).await;
    let auth = format!("Bearer {k}");
    let body = json!({"model": "gpt-4o", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});

    let slow: Vec<_> = (0..N)
        .map(|_| {
            let envoy = envoy.clone();
            let auth = auth.clone();
            let body = body.clone();
            tokio::spawn(async move {
                post_json(
                    envoy.as_ref(),
                    "/v1/chat/completions",
                    &[("authorization", &auth), (DELAY_HEADER, "2500")],
                    &body,
                )
                .await
            })
        })
        .collect();
    // Every slow request is past Check once the mock has them all.
    eventually(
        || async { mock.requests().len() == N },
        "the slow requests reach the upstream",
    )
    .await;
    let (status, headers, refused) = post_json(
        envoy.as_ref(),
        "/v1/chat/completions",
        &[("authorization", &auth)],
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
    assert_eq!(refused["error"]["code"], "rate_limit_exceeded");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("too many requests in flight"),
        "{refused}"
    );
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(mock.requests().len(), N, "a refused request reaches nobody");

    for task in slow {
        let (status, _, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Their usage records (written by ext_proc) free the slots; the clock has not moved,
    // so no lease ended.
    eventually(
        || async {
            let (status, _, _) = post_json(
                envoy.as_ref(),
                "/v1/chat/completions",
                &[("authorization", &auth)],
                &body,
            )
            .await;
            status == StatusCode::OK
        },
        "a request passes once usage is recorded",
    )
    .await;

    // Requests whose usage never comes: Checks with no upstream call behind them.
    for i in 0..N {
        let request_id = format!("lost-{i}");
        eventually(
            || async { check(&t, &k, &request_id).await.status == 200 },
            "the last request's usage recorded",
        )
        .await;
    }
    let (status, _, _) = post_json(
        envoy.as_ref(),
        "/v1/chat/completions",
        &[("authorization", &auth)],
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    clock.advance(60_000);
    let (status, _, body) = post_json(
        envoy.as_ref(),
        "/v1/chat/completions",
        &[("authorization", &auth)],
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the lease ended: {body}");
    t.stop().await;
}

/// While Redis cannot be reached, `failure_mode: local` counts slots in this process, each
/// limit divided by `redis.replicas`, and their usage records still free them.
#[tokio::test]
async fn failure_mode_local_counts_a_replica_s_share_of_the_slots() {
    let clock = Clock::manual(T0);
    let t = Tollgate::start_with_clock(
        "redis: { url: \"redis://127.0.0.1:1\", failure_mode: local, replicas: 2, timeout: 200ms }\nusage: { batch_interval: 20ms }\n",
        clock,
    )
    .await;
    let (id, k) = key(&t, json!({"max_parallel": 4})).await;
    assert_eq!(check(&t, &k, "l1").await.status, 200);
    assert_eq!(check(&t, &k, "l2").await.status, 200);
    assert_in_flight_refusal(&check(&t, &k, "l3").await, "this API key", "2 of 2");
    record(&t, "l1", &id).await;
    eventually(
        || async { check(&t, &k, "l3").await.status == 200 },
        "a local slot freed by a usage record",
    )
    .await;
    t.stop().await;
}
