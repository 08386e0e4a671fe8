//! Budgets shared by replicas through Redis: two in-process tollgates on one Postgres schema
//! and one Redis (a key prefix of their own per test) see each other's reservations, settle
//! for each other and release expired reservations; while Redis is unreachable
//! `redis.failure_mode` decides.

mod common;

use common::check::answer;
use common::tollgate::Tollgate;
use envoy_types::ext_authz::v3::pb::CheckRequest;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tollgate::clock::Clock;
use tollgate::store::SpendKind;
use tollgate::usage::{TokenUsage, UsageRecord, UsageSource};

/// $1 per million input and output tokens: a request's estimate is (body/4 + max_tokens) µ$,
/// and with a price of $1 per token the estimate is the token estimate in USD.
const MODELS: &str = "models:\n  - { name: gpt-4o, pricing: { input_per_million: 1000000, output_per_million: 1000000 } }\nusage: { batch_interval: 20ms }\n";

fn request(key: &str, request_id: &str, max_tokens: u64) -> (CheckRequest, u64) {
    let body = json!({"model": "gpt-4o", "max_tokens": max_tokens, "messages": []}).to_string();
    let estimate = (body.len() as u64).div_ceil(4) + max_tokens;
    let request = common::check::request(
        &[("x-api-key", key), ("x-request-id", request_id)],
        "/v1/chat/completions",
        &body,
    );
    (request, estimate)
}

/// The estimate of every request these tests send.
fn estimate() -> u64 {
    request("x", "x", 100).1
}

/// (status, error code) of a Check; a backend failure panics.
async fn check(t: &Tollgate, key: &str, request_id: &str) -> (u16, String) {
    let (r, _) = request(key, request_id, 100);
    let a = answer(t.app.gate.check(&r).await.expect("a decision"));
    (a.status, a.code().to_owned())
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

/// Two tollgates sharing a fresh Postgres schema, Redis under a fresh prefix, and `clock`.
/// `failure_mode: closed` makes any Redis failure visible; the 2 s timeout keeps a loaded
/// machine's slow answer from counting as one (these tests are about sharing, not outages).
async fn replicas(extra: &str, clock: &Clock) -> (Arc<Tollgate>, Arc<Tollgate>, String) {
    let (_, db_url) = common::db::fresh_postgres().await;
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let yaml = format!(
        "{MODELS}{extra}database: {{ url: \"{db_url}\" }}\nredis: {{ url: \"redis://127.0.0.1:6379\", failure_mode: closed, timeout: 2s, key_prefix: \"{prefix}\" }}\n"
    );
    let a = Tollgate::start_with_clock(&yaml, clock.clone()).await;
    let b = Tollgate::start_with_clock(&yaml, clock.clone()).await;
    (Arc::new(a), Arc::new(b), prefix)
}

/// A manual clock at the real time (usage records carry the real time).
fn clock() -> Clock {
    Clock::manual(tollgate::domain::now() * 1000)
}

fn now(clock: &Clock) -> i64 {
    clock.now_ms().div_euclid(1000)
}

/// Committed and reserved spend of a key's budget as Redis holds it, seen from `t`.
async fn shared(t: &Tollgate, key_id: &str, clock: &Clock) -> Option<(f64, f64)> {
    t.app
        .admission
        .counters()
        .shared_view(SpendKind::Key, key_id, now(clock))
        .await
        .expect("redis answers")
}

async fn stop(t: Arc<Tollgate>) {
    Arc::try_unwrap(t)
        .ok()
        .expect("no task holds the tollgate")
        .stop()
        .await;
}

#[tokio::test]
async fn replicas_share_reservations_so_exactly_the_budget_is_admitted() {
    let clock = clock();
    let (a, b, prefix) = replicas("", &clock).await;
    let e = estimate();
    let (id, key) = key_with_budget(&a, 10.0 * e as f64).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let t = if i % 2 == 0 { a.clone() } else { b.clone() };
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            check(&t, &key, &format!("req-{i}")).await
        }));
    }
    let (mut admitted, mut refused) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            (200, _) => admitted += 1,
            (429, code) => {
                assert_eq!(code, "insufficient_quota");
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((admitted, refused), (10, 40));
    // Both replicas see the same ten reservations.
    let full = Some((0.0, 10.0 * e as f64));
    assert_eq!(shared(&a, &id, &clock).await, full);
    assert_eq!(shared(&b, &id, &clock).await, full);

    // The layout: one hash per budget period under its owner's hash tag (the key's), one
    // per reservation under its request id's, one expiry set.
    let mut redis = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    keys.sort();
    let budget: Vec<&String> = keys
        .iter()
        .filter(|k| k.starts_with(&format!("{prefix}{{k:{id}}}:b:")))
        .collect();
    assert_eq!(budget.len(), 1, "{keys:?}");
    let reservations = keys
        .iter()
        .filter(|k| k.starts_with(&format!("{prefix}r:{{req-")))
        .count();
    assert_eq!(reservations, 10, "{keys:?}");
    let expiring: u64 = redis::cmd("ZCARD")
        .arg(format!("{prefix}{{r}}:expiry"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(expiring, 10);
    let ttl: i64 = redis::cmd("TTL")
        .arg(budget[0])
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        ttl > 86_400,
        "a budget period's hash expires after its period: {ttl}"
    );
    stop(a).await;
    stop(b).await;
}

#[tokio::test]
async fn settling_through_either_replica_frees_the_difference_for_both() {
    let clock = clock();
    let (a, b, _) = replicas("", &clock).await;
    let e = estimate() as f64;
    let (id, key) = key_with_budget(&a, 2.0 * e).await;
    assert_eq!(check(&a, &key, "r0").await.0, 200);
    assert_eq!(check(&b, &key, "r1").await.0, 200);
    assert_eq!(check(&a, &key, "r2").await.0, 429);
    assert_eq!(check(&b, &key, "r3").await.0, 429);

    // r0 (admitted by a) is written through b, r1 (admitted by b) through a: each really
    // cost a quarter of its estimate.
    let real = e / 4.0;
    b.app.usage.push(record("r0", &id, real)).await.unwrap();
    a.app.usage.push(record("r1", &id, real)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = (shared(&a, &id, &clock).await, shared(&b, &id, &clock).await);
        if seen == (Some((2.0 * real, 0.0)), Some((2.0 * real, 0.0))) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled in time: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Half the budget is free again, for both: one more request fits, the next does not.
    assert_eq!(check(&b, &key, "r4").await.0, 200);
    assert_eq!(check(&a, &key, "r5").await.0, 429);
    assert_eq!(shared(&a, &id, &clock).await, Some((2.0 * real, e)));
    stop(a).await;
    stop(b).await;
}

/// A request admitted by one replica and written by the other: its tpm bucket is corrected
/// with the real token count all the same (the reservation, token demands included, lives
/// in Redis).
#[tokio::test]
async fn token_buckets_are_settled_by_whichever_replica_writes_the_record() {
    let clock = clock();
    let (a, b, prefix) = replicas("", &clock).await;
    let (id, key) = a.create_key(json!({"name": "t", "tpm": 1000})).await;
    let e = estimate();
    let remaining = |t: &Tollgate, request_id: &str| {
        let (r, _) = request(&key, request_id, 100);
        let app = t.app.clone();
        async move {
            let a = answer(app.gate.check(&r).await.expect("a decision"));
            assert_eq!(a.status, 200, "{a:?}");
            a.header("x-ratelimit-remaining-tokens")
                .parse::<u64>()
                .unwrap()
        }
    };
    assert_eq!(remaining(&a, "t0").await, 1000 - e);
    // b writes t0's record: 50 tokens really used.
    let mut written = record("t0", &id, 0.0);
    written.tokens = TokenUsage {
        input_tokens: 30,
        output_tokens: 20,
        ..TokenUsage::default()
    };
    b.app.usage.push(written).await.unwrap();
    let mut redis = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let bucket = format!("{prefix}{{k:{id}}}:tpm");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let t: Option<String> = redis::cmd("HGET")
            .arg(&bucket)
            .arg("t")
            .query_async(&mut redis)
            .await
            .unwrap();
        if t.as_deref() == Some("950") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled in time: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Both replicas see the corrected bucket; the reservation is gone.
    assert_eq!(remaining(&a, "t1").await, 950 - e);
    assert_eq!(remaining(&b, "t2").await, 950 - 2 * e);
    let held: bool = redis::cmd("EXISTS")
        .arg(format!("{prefix}r:{{t0}}"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!held);
    stop(a).await;
    stop(b).await;
}

#[tokio::test]
async fn an_expired_reservation_is_released_for_every_replica() {
    let clock = clock();
    let (a, b, _) = replicas("budgets: { reservation_timeout: 1s }\n", &clock).await;
    let e = estimate() as f64;
    let (id, key) = key_with_budget(&a, e).await;
    assert_eq!(check(&a, &key, "never-reports").await.0, 200);
    assert_eq!(
        check(&b, &key, "second").await,
        (429, "insufficient_quota".into())
    );
    assert_eq!(shared(&b, &id, &clock).await, Some((0.0, e)));

    clock.advance(1000);
    // The reserve script gives the expired reservation back before it decides.
    assert_eq!(check(&b, &key, "third").await.0, 200);
    assert_eq!(shared(&a, &id, &clock).await, Some((0.0, e)));
    assert_eq!(check(&a, &key, "fourth").await.0, 429);
    stop(a).await;
    stop(b).await;
}

#[tokio::test]
async fn spend_in_the_store_is_seeded_into_redis() {
    let clock = clock();
    let (a, b, prefix) = replicas("", &clock).await;
    let (id, key) = key_with_budget(&a, 5.0).await;
    a.app
        .store
        .record_usage(&[record("old", &id, 5.0)])
        .await
        .unwrap();
    assert_eq!(
        check(&b, &key, "new").await,
        (429, "insufficient_quota".into())
    );
    assert_eq!(shared(&b, &id, &clock).await, Some((5.0, 0.0)));

    // Redis loses the budget (a restart without persistence): the next reserve finds no
    // committed spend and seeds it from the store again instead of counting from zero.
    let mut redis = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}{{k:*}}:b:*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let _: () = redis::cmd("DEL")
        .arg(&keys[0])
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        check(&b, &key, "after").await,
        (429, "insufficient_quota".into())
    );
    assert_eq!(shared(&a, &id, &clock).await, None, "a never reserved");
    assert_eq!(shared(&b, &id, &clock).await, Some((5.0, 0.0)));
    stop(a).await;
    stop(b).await;
}

/// What the store sends Postgres to read a budget's committed spend
/// (`current_spend` in src/store/sql/usage.rs).
const SPEND_READ: &str = "SUM(spend_usd)";

/// Committed spend is read from the store again every `cache.key_ttl`; a record another
/// replica writes and settles while that read is on its way (its commit came after the
/// read's snapshot, its settle before the answer) is not lost by the answer: it was not in
/// the spend read, so it stays on top of it. Else the budget would admit that cost again.
#[tokio::test]
async fn a_settle_while_another_replica_reads_committed_spend_again_is_not_lost() {
    let clock = clock();
    let pg = common::chaos::held_postgres().await;
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let yaml = |db: &str| {
        format!(
            "{MODELS}database: {{ url: \"{db}\" }}\nredis: {{ url: \"redis://127.0.0.1:6379\", failure_mode: closed, timeout: 2s, key_prefix: \"{prefix}\" }}\n"
        )
    };
    // a reads the store through the proxy, b directly.
    let a = Arc::new(Tollgate::start_with_clock(&yaml(&pg.url), clock.clone()).await);
    let b = Arc::new(Tollgate::start_with_clock(&yaml(&pg.direct_url), clock.clone()).await);
    let e = estimate() as f64;
    let (id, key) = key_with_budget(&b, 2.0 * e).await;
    assert_eq!(check(&a, &key, "r0").await.0, 200);
    assert_eq!(check(&b, &key, "r1").await.0, 200);
    // The budget is full. A minute on, a's next decision reads committed spend again; its
    // answer is held back while b writes and settles r0.
    clock.advance(60_000);
    pg.proxy.hold_after(SPEND_READ);
    let (a2, key2) = (a.clone(), key.clone());
    let decision = tokio::spawn(async move { check(&a2, &key2, "r2").await });
    pg.proxy.held().await;
    b.app
        .store
        .record_usage(&[record("r0", &id, e)])
        .await
        .unwrap();
    b.app.admission.settle("r0", e, 0).await;
    assert_eq!(shared(&b, &id, &clock).await, Some((e, e)));
    pg.proxy.release();
    assert_eq!(decision.await.unwrap(), (429, "insufficient_quota".into()));
    assert_eq!(shared(&a, &id, &clock).await, Some((e, e)));
    stop(a).await;
    stop(b).await;
}

/// One tollgate whose Redis does not answer (nothing listens on port 1).
async fn unreachable(mode: &str) -> Tollgate {
    let yaml = format!(
        "{MODELS}redis: {{ url: \"redis://u:secret@127.0.0.1:1\", failure_mode: {mode}, timeout: 200ms }}\n"
    );
    Tollgate::start(&yaml).await
}

#[tokio::test]
async fn failure_mode_open_admits_while_redis_is_unreachable() {
    let t = unreachable("open").await;
    let (_, key) = key_with_budget(&t, 2.0 * estimate() as f64).await;
    for i in 0..5 {
        assert_eq!(check(&t, &key, &format!("o{i}")).await.0, 200);
    }
    assert!(!t.app.admission.counters().healthy());
    t.stop().await;
}

#[tokio::test]
async fn failure_mode_closed_refuses_while_redis_is_unreachable() {
    let t = unreachable("closed").await;
    let (_, key) = key_with_budget(&t, 2.0 * estimate() as f64).await;
    for i in 0..3 {
        let (r, _) = request(&key, &format!("c{i}"), 100);
        let started = std::time::Instant::now();
        let a = answer(t.app.gate.check(&r).await.expect("a refusal"));
        assert!(started.elapsed() < Duration::from_secs(2));
        // Like rate limits: 503 `auth_unavailable`, worth retrying in a second.
        assert_eq!((a.status, a.code()), (503, "auth_unavailable"));
        assert_eq!(a.header("retry-after"), "1");
        assert!(!a.body.to_string().contains("secret"), "{a:?}");
    }
    t.stop().await;
}

#[tokio::test]
async fn failure_mode_local_enforces_budgets_in_memory_while_redis_is_unreachable() {
    let t = unreachable("local").await;
    let (id, key) = key_with_budget(&t, 2.0 * estimate() as f64).await;
    assert_eq!(check(&t, &key, "l0").await.0, 200);
    assert_eq!(check(&t, &key, "l1").await.0, 200);
    assert_eq!(
        check(&t, &key, "l2").await,
        (429, "insufficient_quota".into())
    );
    let e = estimate() as f64;
    assert_eq!(
        t.app
            .admission
            .counters()
            .view(SpendKind::Key, &id, tollgate::domain::now()),
        Some((0.0, 2.0 * e))
    );
    // Settling reaches the in-memory reservations.
    t.app.admission.settle("l0", 0.0, 0).await;
    assert_eq!(check(&t, &key, "l3").await.0, 200);
    t.stop().await;
}
