//! Rate limits, budgets and the usage queue on a real Redis Cluster (three masters on
//! loopback, started by each test): two in-process tollgates on one Postgres schema admit
//! exactly the limit and the budget between them and settle for each other; an owner's keys
//! share one slot while owners spread over the shards; a slot moved to another master while
//! requests keep coming changes no count and fails no request; records pushed through one
//! replica are written; an admin write on one replica reaches the other over the cluster.

mod common;

use common::check::answer;
use common::redis_cluster::RedisCluster;
use common::tollgate::Tollgate;
use envoy_types::ext_authz::v3::pb::CheckRequest;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate::clock::Clock;
use tollgate::store::{GroupBy, SpendKind, UsageQuery};
use tollgate::usage::{TokenUsage, UsageRecord, UsageSource};

/// $1 per token in and out: a request's estimate in USD is its token estimate.
const MODELS: &str = "models:\n  - { name: gpt-4o, pricing: { input_per_million: 1000000, output_per_million: 1000000 } }\nusage: { batch_interval: 20ms }\n";

/// How long a test polls for a condition.
const DEADLINE: Duration = Duration::from_secs(20);

fn request(key: &str, request_id: &str) -> (CheckRequest, u64) {
    let max_tokens = 100;
    let body = json!({"model": "gpt-4o", "max_tokens": max_tokens, "messages": []}).to_string();
    let estimate = (body.len() as u64).div_ceil(4) + max_tokens;
    let request = common::check::request(
        &[("x-api-key", key), ("x-request-id", request_id)],
        "/v1/chat/completions",
        &body,
    );
    (request, estimate)
}

/// The estimate of every request these tests send (in tokens, and in USD).
fn estimate() -> u64 {
    request("x", "x").1
}

/// (status, error code) of a Check; a failed decision is status 0 with its error.
async fn check(t: &Tollgate, key: &str, request_id: &str) -> (u16, String) {
    let (r, _) = request(key, request_id);
    match t.app.gate.check(&r).await {
        Ok(response) => {
            let a = answer(response);
            (a.status, a.code().to_owned())
        }
        Err(status) => (0, status.to_string()),
    }
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

/// A manual clock at the real time: no bucket refills while a test runs.
fn clock() -> Clock {
    Clock::manual(tollgate::domain::now() * 1000)
}

/// Two tollgates on `cluster` under a fresh key prefix, sharing a fresh Postgres schema and
/// `clock`; Redis failures answer 503 (`failure_mode: closed`), so none goes unnoticed.
async fn replicas(cluster: &RedisCluster, clock: &Clock) -> (Arc<Tollgate>, Arc<Tollgate>, String) {
    let (_, db_url) = common::db::fresh_postgres().await;
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let yaml = format!(
        "{MODELS}database: {{ url: \"{db_url}\" }}\nredis: {{ cluster: {}, failure_mode: closed, timeout: 2s, key_prefix: \"{prefix}\" }}\n",
        cluster.yaml_nodes()
    );
    let a = Tollgate::start_with_clock(&yaml, clock.clone()).await;
    let b = Tollgate::start_with_clock(&yaml, clock.clone()).await;
    (Arc::new(a), Arc::new(b), prefix)
}

/// Committed and reserved spend of a key's budget as the cluster holds it, seen from `t`.
async fn shared(t: &Tollgate, key_id: &str, clock: &Clock) -> Option<(f64, f64)> {
    t.app
        .admission
        .counters()
        .shared_view(SpendKind::Key, key_id, clock.now_ms().div_euclid(1000))
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

/// Sends `n` Checks of `key` at once, alternating replicas; the answers.
async fn burst(
    a: &Arc<Tollgate>,
    b: &Arc<Tollgate>,
    key: &str,
    tag: &str,
    n: usize,
) -> Vec<(u16, String)> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let t = if i % 2 == 0 { a.clone() } else { b.clone() };
            let (key, id) = (key.to_owned(), format!("{tag}-{i}"));
            tokio::spawn(async move { check(&t, &key, &id).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

/// How many answers were 200, and every refusal's (status, code) once.
fn tally(answers: &[(u16, String)]) -> (usize, BTreeSet<(u16, String)>) {
    let admitted = answers.iter().filter(|(s, _)| *s == 200).count();
    let refusals = answers.iter().filter(|(s, _)| *s != 200).cloned().collect();
    (admitted, refusals)
}

fn refused(code: &str) -> BTreeSet<(u16, String)> {
    BTreeSet::from([(429, code.to_owned())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_and_budgets_are_exact_across_replicas_and_either_settles() {
    let cluster = RedisCluster::start().await;
    let clock = clock();
    let (a, b, _) = replicas(&cluster, &clock).await;
    let e = estimate() as f64;

    let (id, key) = a
        .create_key(json!({"name": "budget", "max_budget": 10.0 * e, "budget_duration": "1mo"}))
        .await;
    let (settle_id, settle_key) = a
        .create_key(json!({"name": "settle", "max_budget": 2.0 * e, "budget_duration": "1mo"}))
        .await;
    let (_, rate_key) = a.create_key(json!({"name": "rate", "rpm": 10})).await;

    // A rate limit: exactly 10 of 40 concurrent requests through both replicas.
    let answers = burst(&a, &b, &rate_key, "rate", 40).await;
    assert_eq!(tally(&answers), (10, refused("rate_limit_exceeded")));

    // A budget of ten estimates: exactly 10 of 50.
    let answers = burst(&a, &b, &key, "budget", 50).await;
    assert_eq!(tally(&answers), (10, refused("insufficient_quota")));
    assert_eq!(shared(&a, &id, &clock).await, Some((0.0, 10.0 * e)));
    assert_eq!(shared(&b, &id, &clock).await, Some((0.0, 10.0 * e)));

    // Requests admitted by one replica, written through the other: each really cost a
    // quarter of its estimate, and the difference is free for both.
    let (id, key) = (settle_id, settle_key);
    assert_eq!(check(&a, &key, "s0").await.0, 200);
    assert_eq!(check(&b, &key, "s1").await.0, 200);
    assert_eq!(check(&a, &key, "s2").await.0, 429);
    let real = e / 4.0;
    b.app.usage.push(record("s0", &id, real)).await.unwrap();
    a.app.usage.push(record("s1", &id, real)).await.unwrap();
    let started = std::time::Instant::now();
    loop {
        let seen = (shared(&a, &id, &clock).await, shared(&b, &id, &clock).await);
        if seen == (Some((2.0 * real, 0.0)), Some((2.0 * real, 0.0))) {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "not settled in time: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(check(&b, &key, "s3").await.0, 200);
    assert_eq!(check(&a, &key, "s4").await.0, 429);
    stop(a).await;
    stop(b).await;
}

/// A settle by one replica while the other reads committed spend from the store again
/// (its commit after the read's snapshot, its settle before the seed reaches the cluster)
/// is not lost by the seed, as on one Redis (tests/budgets_redis.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_settle_while_another_replica_reads_committed_spend_again_is_not_lost() {
    let cluster = RedisCluster::start().await;
    let clock = clock();
    let pg = common::chaos::held_postgres().await;
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let yaml = |db: &str| {
        format!(
            "{MODELS}database: {{ url: \"{db}\" }}\nredis: {{ cluster: {}, failure_mode: closed, timeout: 2s, key_prefix: \"{prefix}\" }}\n",
            cluster.yaml_nodes()
        )
    };
    // a reads the store through the proxy, b directly.
    let a = Arc::new(Tollgate::start_with_clock(&yaml(&pg.url), clock.clone()).await);
    let b = Arc::new(Tollgate::start_with_clock(&yaml(&pg.direct_url), clock.clone()).await);
    let e = estimate() as f64;
    let (id, key) = b
        .create_key(json!({"name": "b", "max_budget": 2.0 * e, "budget_duration": "1mo"}))
        .await;
    assert_eq!(check(&a, &key, "r0").await.0, 200);
    assert_eq!(check(&b, &key, "r1").await.0, 200);
    // The budget is full. A minute on, a's next decision reads committed spend again; its
    // answer is held back while b writes and settles r0.
    clock.advance(60_000);
    pg.proxy.hold_after("SUM(spend_usd)");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn owners_spread_over_the_shards_and_each_keeps_to_one_slot() {
    let cluster = RedisCluster::start().await;
    let clock = clock();
    let (a, b, prefix) = replicas(&cluster, &clock).await;
    let (status, team) = a
        .admin(
            Method::POST,
            "/admin/teams",
            Some(json!({"name": "Eng", "max_budget": 1_000_000.0})),
        )
        .await;
    assert_eq!(status, 201, "{team}");
    let team = team["id"].as_str().unwrap().to_owned();
    let mut keys = Vec::new();
    for i in 0..12 {
        let (id, key) = a
            .create_key(json!({"name": format!("k{i}"), "team_id": team, "rpm": 100, "tpm": 100000, "max_budget": 10_000.0, "budget_duration": "1mo"}))
            .await;
        let t = if i % 2 == 0 { &a } else { &b };
        assert_eq!(check(t, &key, &format!("req-{i}")).await.0, 200);
        keys.push(id);
    }

    // Every key of the test, by the node that holds it.
    let mut on: Vec<Vec<String>> = Vec::new();
    for i in 0..3 {
        on.push(cluster.keys_on(i, &format!("{prefix}*")).await);
    }
    let holders = on.iter().filter(|keys| !keys.is_empty()).count();
    assert!(holders >= 2, "every key on one master: {on:?}");

    // An owner's buckets, budget and reservations are on one node, in one slot.
    let mut slots = BTreeSet::new();
    for owner in keys
        .iter()
        .map(|id| format!("k:{id}"))
        .chain([format!("t:{team}")])
    {
        let base = format!("{prefix}{{{owner}}}:");
        let node = (0..3)
            .find(|&i| on[i].iter().any(|k| k.starts_with(&base)))
            .unwrap_or_else(|| panic!("no key of {owner}: {on:?}"));
        let mine: Vec<&String> = on[node].iter().filter(|k| k.starts_with(&base)).collect();
        let suffixes: BTreeSet<&str> = mine
            .iter()
            .map(|k| {
                let s = &k[base.len()..];
                if s.starts_with("b:") {
                    "b:"
                } else {
                    s
                }
            })
            .collect();
        let want: &[&str] = if owner.starts_with("k:") {
            &["b:", "expiry", "held", "rpm", "tpm"]
        } else {
            &["b:", "expiry", "held"]
        };
        assert_eq!(
            suffixes,
            want.iter().copied().collect(),
            "{owner}: {mine:?}"
        );
        for (i, keys) in on.iter().enumerate() {
            assert!(
                i == node || !keys.iter().any(|k| k.starts_with(&base)),
                "{owner} split over nodes: {on:?}"
            );
        }
        let mut owner_slots = BTreeSet::new();
        for k in &mine {
            owner_slots.insert(cluster.keyslot(k).await);
        }
        assert_eq!(owner_slots.len(), 1, "{owner}: {mine:?}");
        slots.extend(owner_slots);
    }
    assert!(slots.len() > 1, "every owner in one slot");

    // The index of a request names its owners, in the request id's own slot.
    let index_key = format!("{prefix}r:{{req-0}}:owners");
    let node = cluster.owner_of(cluster.keyslot(&index_key).await).await;
    let index: String = redis::cmd("GET")
        .arg(&index_key)
        .query_async(&mut cluster.node(node).await.unwrap())
        .await
        .unwrap();
    let index: Value = serde_json::from_str(&index).unwrap();
    let owners: BTreeSet<&str> = index
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o[0].as_str().unwrap())
        .collect();
    assert_eq!(
        owners,
        BTreeSet::from([
            format!("k:{}", keys[0]).as_str(),
            format!("t:{team}").as_str()
        ])
    );
    stop(a).await;
    stop(b).await;
}

/// Requests through both replicas, one after the other per worker, until `stop`.
fn load(
    a: &Arc<Tollgate>,
    b: &Arc<Tollgate>,
    key: &str,
    tag: &str,
    stop: &Arc<AtomicBool>,
    answers: &Arc<Mutex<Vec<(u16, String)>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|w| {
            let t = if w % 2 == 0 { a.clone() } else { b.clone() };
            let (key, tag) = (key.to_owned(), tag.to_owned());
            let (stop, answers) = (stop.clone(), answers.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let answer = check(&t, &key, &format!("{tag}-{w}-{i}")).await;
                    answers.lock().unwrap().push(answer);
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slots_moved_to_another_master_under_load_keep_every_count_exact() {
    let cluster = RedisCluster::start().await;
    let clock = clock();
    let (a, b, prefix) = replicas(&cluster, &clock).await;
    let e = estimate() as f64;
    let (budget_id, budget_key) = a
        .create_key(json!({"name": "budget", "max_budget": 40.0 * e, "budget_duration": "1mo"}))
        .await;
    let (rate_id, rate_key) = a.create_key(json!({"name": "rate", "rpm": 40})).await;
    let stop_load = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let mut workers = load(&a, &b, &rate_key, "rate", &stop_load, &answers);
    let budget_answers = Arc::new(Mutex::new(Vec::new()));
    workers.extend(load(
        &a,
        &b,
        &budget_key,
        "budget",
        &stop_load,
        &budget_answers,
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Each key's slot moves to the next master, one key at a time, while requests go on.
    for id in [&rate_id, &budget_id] {
        let tag = format!("{prefix}{{k:{id}}}");
        let slot = cluster.keyslot(&tag).await;
        let from = cluster.owner_of(slot).await;
        let to = (from + 1) % 3;
        assert!(!cluster.keys_on(from, &format!("{tag}*")).await.is_empty());
        let moved = cluster
            .move_slot(slot, from, to, Duration::from_millis(100))
            .await;
        assert!(moved >= 1, "the slot of {tag} held no key");
        assert_eq!(cluster.owner_of(slot).await, to);
        assert!(cluster.keys_on(from, &format!("{tag}*")).await.is_empty());
        assert!(!cluster.keys_on(to, &format!("{tag}*")).await.is_empty());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop_load.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let during = answers.lock().unwrap().clone();
    let budget_during = budget_answers.lock().unwrap().clone();

    // Then whatever is left of the limit and the budget, through the moved slots.
    let after = burst(&a, &b, &rate_key, "rate-after", 60).await;
    let budget_after = burst(&a, &b, &budget_key, "budget-after", 60).await;
    let (rate_admitted, rate_refusals) = tally(&[during.clone(), after].concat());
    let (budget_admitted, budget_refusals) = tally(&[budget_during.clone(), budget_after].concat());
    assert!(
        rate_refusals.is_subset(&refused("rate_limit_exceeded")),
        "{rate_refusals:?}"
    );
    assert!(
        budget_refusals.is_subset(&refused("insufficient_quota")),
        "{budget_refusals:?}"
    );
    assert_eq!(rate_admitted, 40, "{} during the moves", during.len());
    assert_eq!(
        budget_admitted,
        40,
        "{} during the moves",
        budget_during.len()
    );
    assert_eq!(shared(&b, &budget_id, &clock).await, Some((0.0, 40.0 * e)));

    // The clients met the moves (a redirection, and a slot half moved), and no script
    // failed midway: every failed EVALSHA was a NOSCRIPT (the new master did not know it).
    let (mut moved, mut half_moved) = (0, 0);
    for i in 0..3 {
        let errors = cluster.info_counts(i, "errorstats").await;
        let count = |name: &str| {
            errors
                .get(&format!("errorstat_{name}:count"))
                .copied()
                .unwrap_or(0)
        };
        moved += count("MOVED");
        half_moved += count("ASK") + count("TRYAGAIN");
        let commands = cluster.info_counts(i, "commandstats").await;
        let failed = commands
            .get("cmdstat_evalsha:failed_calls")
            .copied()
            .unwrap_or(0);
        assert_eq!(failed, count("NOSCRIPT"), "node {i}: {errors:?}");
    }
    assert!(
        moved > 0 && half_moved > 0,
        "MOVED {moved}, ASK or TRYAGAIN {half_moved}"
    );
    stop(a).await;
    stop(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_usage_queue_works_on_a_cluster() {
    let cluster = RedisCluster::start().await;
    let clock = clock();
    let (a, b, prefix) = replicas(&cluster, &clock).await;
    assert!(a.app.usage.is_redis());
    for i in 0..20 {
        a.app
            .usage
            .push(record(&format!("u{i}"), "k", 0.5))
            .await
            .unwrap();
    }
    let store = a.app.store.clone();
    let started = std::time::Instant::now();
    loop {
        let written = store
            .usage_report(UsageQuery::new(GroupBy::Model))
            .await
            .ok()
            .map(|r| r.total.requests);
        if written == Some(20) {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "written: {written:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The stream is one key on one master, and every entry was acked.
    let stream = tollgate::usage::redis_queue::stream_key(&prefix);
    let node = cluster.owner_of(cluster.keyslot(&stream).await).await;
    let mut conn = cluster.node(node).await.unwrap();
    let len: i64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 20);
    let started = std::time::Instant::now();
    loop {
        let reply: redis::Value = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(tollgate::usage::redis_queue::GROUP)
            .query_async(&mut conn)
            .await
            .unwrap();
        let pending = match &reply {
            redis::Value::Array(items) => match items.first() {
                Some(redis::Value::Int(n)) => *n,
                _ => panic!("XPENDING: {reply:?}"),
            },
            _ => panic!("XPENDING: {reply:?}"),
        };
        if pending == 0 {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "{pending} pending");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop(a).await;
    stop(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_write_on_one_replica_reaches_the_other_through_the_cluster() {
    let cluster = RedisCluster::start().await;
    let clock = clock();
    let (a, b, _) = replicas(&cluster, &clock).await;
    assert_eq!(a.app.invalidator.channel(), "redis");
    let (id, key) = a.create_key(json!({"name": "revoked"})).await;
    // b has the key cached: only the published change can make it refuse within a second.
    assert_eq!(check(&b, &key, "i0").await.0, 200);
    assert_eq!(check(&b, &key, "i1").await.0, 200);
    let (status, body) = a
        .admin(Method::DELETE, &format!("/admin/keys/{id}"), None)
        .await;
    assert!(status.is_success(), "{status} {body}");
    let started = std::time::Instant::now();
    let mut n = 2;
    while check(&b, &key, &format!("i{n}")).await.0 == 200 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "b still admits the revoked key"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        n += 1;
    }
    stop(a).await;
    stop(b).await;
}

/// Parallel limits on a cluster (docs/DESIGN.md, "Parallel limits"): exactly `max_parallel`
/// of a burst through both replicas, a slot freed by a record either replica writes, and a
/// slot taken on the key's shard given back when a later owner (the team's rpm) refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_limits_are_exact_on_a_cluster_and_given_back_on_a_later_refusal() {
    let cluster = RedisCluster::start().await;
    let clock = clock();
    let (a, b, prefix) = replicas(&cluster, &clock).await;

    let (id, key) = a
        .create_key(json!({"name": "parallel", "max_parallel": 5}))
        .await;
    let answers = burst(&a, &b, &key, "par", 20).await;
    assert_eq!(tally(&answers), (5, refused("rate_limit_exceeded")));
    let admitted: Vec<usize> = (0..20).filter(|&i| answers[i].0 == 200).collect();
    // The slots live with the key's other keys, in its hash tag.
    assert_eq!(zcard(&cluster, &format!("{prefix}{{k:{id}}}:par")).await, 5);

    // One of them written through the replica that did not admit it.
    let first = admitted[0];
    let writer = if first.is_multiple_of(2) { &b } else { &a };
    writer
        .app
        .usage
        .push(record(&format!("par-{first}"), &id, 0.0))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    while check(&a, &key, "par-next").await.0 != 200 {
        assert!(started.elapsed() < DEADLINE, "the slot was not freed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(check(&b, &key, "par-more").await.0, 429);

    // The key's slot is taken first (most specific owner), then its team's rpm refuses:
    // the slot is given back.
    let (status, team) = a
        .admin(
            Method::POST,
            "/admin/teams",
            Some(json!({"name": "ops", "rpm": 1})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{team}");
    let (one_id, one) = a
        .create_key(json!({"name": "one", "max_parallel": 1, "team_id": team["id"]}))
        .await;
    assert_eq!(check(&a, &one, "one-1").await.0, 200);
    b.app
        .usage
        .push(record("one-1", &one_id, 0.0))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        let answer = check(&b, &one, "one-2").await;
        if answer == (429, "rate_limit_exceeded".to_owned()) {
            let slots = zcard(&cluster, &format!("{prefix}{{k:{one_id}}}:par")).await;
            // Refused by parallel limit (slot held by one-1) or by the team's rpm (slot
            // given back): once the slot set is empty it was the rpm.
            if slots == 0 {
                break;
            }
        }
        assert!(started.elapsed() < DEADLINE, "one-1 was not settled");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    clock.advance(60_000);
    assert_eq!(check(&a, &one, "one-3").await.0, 200);
    stop(a).await;
    stop(b).await;
}

/// The members of sorted set `key`, asked of the master that holds it.
async fn zcard(cluster: &RedisCluster, key: &str) -> u64 {
    let master = cluster.owner_of(cluster.keyslot(key).await).await;
    let mut node = cluster.node(master).await.unwrap();
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(&mut node)
        .await
        .unwrap()
}
