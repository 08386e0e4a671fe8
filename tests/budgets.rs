//! Budgets in Check: reserve the estimated cost, refuse with 429 `insufficient_quota` when a
//! budget has no room, settle with the real cost when usage is written, and hold the bound
//! of the reservation design under concurrency.

mod common;

use common::check::answer;
use common::tollgate::Tollgate;
use envoy_types::ext_authz::v3::pb::CheckRequest;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tollgate::store::{SpendKind, UsageStore};
use tollgate::usage::{TokenUsage, UsageRecord, UsageSource};

/// $1 per million input and output tokens: a request's estimate is (body/4 + max_tokens) µ$.
const CONFIG: &str = "models:\n  - { name: gpt-4o, pricing: { input_per_million: 1000000, output_per_million: 1000000 } }\nusage: { batch_interval: 20ms }\n";

fn request(key: &str, request_id: &str, max_tokens: u64) -> (CheckRequest, u64) {
    let body = json!({"model": "gpt-4o", "max_tokens": max_tokens, "messages": []}).to_string();
    // With the price above, one token costs $1: the estimate is the token estimate in USD.
    let estimate = (body.len() as u64).div_ceil(4) + max_tokens;
    let request = common::check::request(
        &[("x-api-key", key), ("x-request-id", request_id)],
        "/v1/chat/completions",
        &body,
    );
    (request, estimate)
}

/// (status, error code, headers) of a Check.
async fn check(t: &Tollgate, request: &CheckRequest) -> (u16, String, HashMap<String, String>) {
    let a = answer(t.app.gate.check(request).await.expect("a decision"));
    (a.status, a.code().to_owned(), a.headers)
}

async fn key_with_budget(t: &Tollgate, budget: f64) -> (String, String) {
    t.create_key(json!({"name": "b", "max_budget": budget, "budget_duration": "1mo"}))
        .await
}

fn record(request_id: &str, key_id: &str, cost: f64) -> UsageRecord {
    UsageRecord {
        request_id: request_id.to_owned(),
        at: tollgate::domain::now(),
        key_id: Some(key_id.to_owned()),
        user_id: None,
        team_id: None,
        org_id: None,
        model: Some("gpt-4o".into()),
        tokens: TokenUsage::default(),
        cost_usd: cost,
        status: 200,
        latency_ms: 1,
        estimated: false,
        source: UsageSource::ExtProc,
    }
}

#[tokio::test]
async fn concurrent_requests_cannot_overspend_past_the_reservations() {
    let t = Arc::new(Tollgate::start(CONFIG).await);
    let (_, estimate) = request("x", "x", 100);
    // A budget worth exactly 10 estimates.
    let (_, key) = key_with_budget(&t, 10.0 * estimate as f64).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let t = t.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let (r, _) = request(&key, &format!("req-{i}"), 100);
            check(&t, &r).await
        }));
    }
    let mut admitted = 0;
    let mut refused = 0;
    for task in tasks {
        let (status, code, headers) = task.await.unwrap();
        match status {
            200 => admitted += 1,
            429 => {
                assert_eq!(code, "insufficient_quota");
                // Waiting for the period to end is no retry: SDKs are told not to.
                assert!(!headers.contains_key("retry-after"), "{headers:?}");
                assert_eq!(headers["x-should-retry"], "false");
                assert!(headers.contains_key("x-tollgate-budget-reset"));
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    // No usage has arrived: the reservations alone bound what is admitted.
    assert_eq!(admitted, 10);
    assert_eq!(refused, 40);
}

#[tokio::test]
async fn settling_with_the_real_cost_frees_the_difference() {
    let t = Tollgate::start(CONFIG).await;
    let (_, estimate) = request("x", "x", 100);
    let (id, key) = key_with_budget(&t, 2.0 * estimate as f64).await;
    for i in 0..2 {
        let (r, _) = request(&key, &format!("r{i}"), 100);
        assert_eq!(check(&t, &r).await.0, 200);
    }
    let (r, _) = request(&key, "r2", 100);
    assert_eq!(check(&t, &r).await.0, 429);
    let (committed, reserved) = t
        .app
        .admission
        .counters()
        .view(SpendKind::Key, &id, tollgate::domain::now())
        .unwrap();
    assert_eq!((committed, reserved), (0.0, 2.0 * estimate as f64));

    // Both requests really cost a quarter of their estimate.
    let real = estimate as f64 / 4.0;
    for i in 0..2 {
        t.app
            .usage
            .push(record(&format!("r{i}"), &id, real))
            .await
            .unwrap();
    }
    let mut settled = None;
    for _ in 0..200 {
        settled = t
            .app
            .admission
            .counters()
            .view(SpendKind::Key, &id, tollgate::domain::now());
        if settled == Some((2.0 * real, 0.0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(settled, Some((2.0 * real, 0.0)));
    // Half the budget is free again: one more request fits, the next does not.
    let (r, _) = request(&key, "r3", 100);
    assert_eq!(check(&t, &r).await.0, 200);
    let (r, _) = request(&key, "r4", 100);
    assert_eq!(check(&t, &r).await.0, 429);
    t.stop().await;
}

#[tokio::test]
async fn spend_already_in_the_store_is_counted_and_a_spent_budget_refuses() {
    let t = Tollgate::start(CONFIG).await;
    let (id, key) = key_with_budget(&t, 5.0).await;
    // Spend recorded before this process saw the key (another replica, an earlier run).
    t.app
        .store
        .record_usage(&[record("old", &id, 5.0)])
        .await
        .unwrap();
    let (r, _) = request(&key, "new", 1);
    let (status, code, headers) = check(&t, &r).await;
    assert_eq!((status, code.as_str()), (429, "insufficient_quota"));
    assert!(!headers.contains_key("retry-after"), "{headers:?}");
    assert_eq!(headers["x-should-retry"], "false");
    let reset = tollgate::domain::rfc3339::parse(&headers["x-tollgate-budget-reset"]).unwrap();
    let wait = reset - tollgate::domain::now();
    assert!(wait > 0 && wait <= 31 * 86_400, "{wait}");
    // The API shows the key's current-period spend, alone and in lists.
    let (status, shown) = t
        .admin(Method::GET, &format!("/admin/keys/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown["spend"], 5.0);
    let (_, listed) = t.admin(Method::GET, "/admin/keys", None).await;
    assert_eq!(listed["data"][0]["spend"], 5.0, "{listed}");
    t.stop().await;
}

#[tokio::test]
async fn team_and_user_budgets_apply_to_their_keys_and_a_rate_limit_refusal_gives_the_reservation_back(
) {
    let t = Tollgate::start(CONFIG).await;
    let (_, estimate) = request("x", "x", 10);
    let (status, team) = t
        .admin(
            Method::POST,
            "/admin/teams",
            Some(json!({"name": "Eng", "max_budget": estimate as f64})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{team}");
    let team = team["id"].as_str().unwrap().to_owned();
    let (status, created) = t
        .admin(
            Method::POST,
            "/admin/keys",
            Some(json!({"name": "a", "team_id": team, "rpm": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let limited = created["key"].as_str().unwrap().to_owned();
    let (_, other) = {
        let (status, created) = t
            .admin(
                Method::POST,
                "/admin/keys",
                Some(json!({"name": "b", "team_id": team})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        ((), created["key"].as_str().unwrap().to_owned())
    };
    // The first request takes the team's whole budget...
    let (r, _) = request(&limited, "t1", 10);
    assert_eq!(check(&t, &r).await.0, 200);
    // ...so the team's other key is refused.
    let (r, _) = request(&other, "t2", 10);
    let (status, code, _) = check(&t, &r).await;
    assert_eq!((status, code.as_str()), (429, "insufficient_quota"));
    // Release the first reservation by settling it at no cost, then exhaust the rate limit:
    // the refused request must not keep a reservation.
    t.app.admission.settle("t1", 0.0, 0).await;
    let (r, _) = request(&limited, "t3", 10);
    let (status, code, _) = check(&t, &r).await;
    assert_eq!((status, code.as_str()), (429, "rate_limit_exceeded"));
    let (r, _) = request(&other, "t4", 10);
    assert_eq!(
        check(&t, &r).await.0,
        200,
        "the rate-limited request gave its reservation back"
    );
    t.stop().await;
}

#[tokio::test]
async fn a_new_period_starts_with_an_empty_budget() {
    // 2027-01-15T08:00:00Z, in the gate's clock.
    let start = 1_800_000_000i64;
    let clock = tollgate::clock::Clock::manual(start * 1000);
    let t = Tollgate::start_with_clock(CONFIG, clock.clone()).await;
    let (status, created) = t
        .admin(
            Method::POST,
            "/admin/keys",
            Some(json!({"name": "daily", "max_budget": 100.0, "budget_duration": "1d"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let key = created["key"].as_str().unwrap().to_owned();
    let mut spent = record("earlier-today", &id, 100.0);
    spent.at = start;
    t.app.store.record_usage(&[spent]).await.unwrap();

    let (r, _) = request(&key, "today-1", 1);
    let (status, code, headers) = check(&t, &r).await;
    assert_eq!((status, code.as_str()), (429, "insufficient_quota"));
    // The day ends at midnight UTC: 16 hours from 08:00. That is when to come back, not a
    // retry.
    let until_midnight = 86_400 - start.rem_euclid(86_400);
    assert_eq!(headers["x-tollgate-budget-reset"], "2027-01-16T00:00:00Z");
    assert_eq!(headers["x-should-retry"], "false");
    assert!(!headers.contains_key("retry-after"), "{headers:?}");

    clock.advance(until_midnight * 1000);
    let (r, _) = request(&key, "tomorrow-1", 1);
    assert_eq!(check(&t, &r).await.0, 200, "a new day, a new budget");
    t.stop().await;
}

#[tokio::test]
async fn written_usage_raises_budget_alerts() {
    let t = Tollgate::start(CONFIG).await;
    let (id, _) = key_with_budget(&t, 10.0).await;
    // 60 % of the budget: the 50 % threshold, once.
    t.app.usage.push(record("a1", &id, 6.0)).await.unwrap();
    t.app.usage.push(record("a1", &id, 6.0)).await.unwrap();
    let mut alerts = Value::Null;
    for _ in 0..200 {
        let (status, body) = t.admin(Method::GET, "/admin/alerts", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        alerts = body;
        if !alerts["data"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let list = alerts["data"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{alerts}");
    assert_eq!(list[0]["threshold"], 50, "{alerts}");
    assert_eq!(list[0]["entity_kind"], "key", "{alerts}");
    assert_eq!(list[0]["entity_id"], id.as_str(), "{alerts}");
    // No webhook configured: raised and kept pending.
    assert_eq!(list[0]["state"], "pending", "{alerts}");
    t.stop().await;
}

#[tokio::test]
async fn reservations_of_requests_that_never_report_expire() {
    let start = 1_800_000_000i64;
    let clock = tollgate::clock::Clock::manual(start * 1000);
    let t = Tollgate::start_with_clock(
        &format!("{CONFIG}budgets: {{ reservation_timeout: 30s }}\n"),
        clock.clone(),
    )
    .await;
    let (_, estimate) = request("x", "x", 100);
    let (_, key) = key_with_budget(&t, estimate as f64).await;
    let (r, _) = request(&key, "never-reports", 100);
    assert_eq!(check(&t, &r).await.0, 200);
    let (r, _) = request(&key, "waits", 100);
    assert_eq!(check(&t, &r).await.0, 429, "the budget is reserved");
    clock.advance(29_000);
    assert_eq!(
        check(&t, &r).await.0,
        429,
        "still within the reservation timeout"
    );
    clock.advance(1_000);
    assert_eq!(
        check(&t, &r).await.0,
        200,
        "the silent request's reservation expired"
    );
    t.stop().await;
}

/// What the store sends Postgres to read a budget's committed spend
/// (`current_spend` in src/store/sql/usage.rs).
const SPEND_READ: &str = "SUM(spend_usd)";

/// Committed spend is read from the store again every `cache.key_ttl`; a record this
/// process settles while that read is on its way (its commit came after the read's
/// snapshot, its settle before the answer) is not lost by the answer: it was not in the
/// spend read, so the ledger keeps it on top. Else the budget would admit that cost again.
#[tokio::test]
async fn a_settle_while_committed_spend_is_read_again_is_not_lost() {
    let pg = common::chaos::held_postgres().await;
    let start = tollgate::domain::now();
    let clock = tollgate::clock::Clock::manual(start * 1000);
    let yaml = format!("{CONFIG}database: {{ url: \"{}\" }}\n", pg.url);
    let t = Arc::new(Tollgate::start_with_clock(&yaml, clock.clone()).await);
    let (_, estimate) = request("x", "x", 100);
    let e = estimate as f64;
    let (id, key) = key_with_budget(&t, 2.0 * e).await;
    for i in 0..2 {
        let (r, _) = request(&key, &format!("r{i}"), 100);
        assert_eq!(check(&t, &r).await.0, 200);
    }
    // The budget is full. A minute on, the next decision reads committed spend again; the
    // answer is held back while r0 is written (through another connection) and settled.
    clock.advance(60_000);
    pg.proxy.hold_after(SPEND_READ);
    let (t2, r) = (t.clone(), request(&key, "r2", 100).0);
    let decision = tokio::spawn(async move { check(&t2, &r).await });
    pg.proxy.held().await;
    pg.direct
        .record_usage(&[record("r0", &id, e)])
        .await
        .unwrap();
    t.app.admission.settle("r0", e, 0).await;
    pg.proxy.release();
    let (status, code, _) = decision.await.unwrap();
    assert_eq!((status, code.as_str()), (429, "insufficient_quota"));
    let now = clock.now_ms() / 1000;
    assert_eq!(
        t.app.admission.counters().view(SpendKind::Key, &id, now),
        Some((e, e))
    );
}
