//! One behaviour suite over both bucket stores: every `async fn name(b: Arc<dyn Buckets>)`
//! runs on [`MemoryBuckets`] and on [`RedisCounters`]' buckets (the Redis named by
//! `TOLLGATE_TEST_REDIS`, default `redis://127.0.0.1:6379`, with a key prefix of its own).
//!
//! Time is passed explicitly: nothing sleeps. Rates are slow (60/min: one per second;
//! 600/min: one per 100 ms) so that a Redis key's TTL (the wall-clock time until the bucket
//! would be full, plus a second) is seconds or more: a slow test run cannot see a key
//! vanish between two calls.

mod common;

use common::redis_cluster;
use std::sync::Arc;
use tollgate::admission::redis::RedisCounters;
use tollgate::config::{Config, Redis};
use tollgate::limits::bucket::{Shape, View};
use tollgate::limits::memory::MemoryBuckets;
use tollgate::limits::{Buckets, Demand, Settlement, Unit};

const T0: i64 = 1_700_000_000_000;

fn redis_url() -> String {
    std::env::var("TOLLGATE_TEST_REDIS")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned())
}

fn unique_prefix() -> String {
    format!("test:{}:", uuid::Uuid::new_v4().simple())
}

/// Buckets in the Redis at `url` under `prefix` (no budget is ever charged: the store is
/// an empty one of their own).
async fn redis_counters(url: &str, prefix: &str) -> RedisCounters {
    let redis: Redis = serde_yaml::from_str(&format!(
        "{{ url: \"{url}\", pool_size: 8, timeout: 5s, key_prefix: \"{prefix}\" }}"
    ))
    .unwrap();
    let store = tollgate::store::sql::SqlStore::connect(
        "sqlite::memory:",
        &tollgate::store::sql::ConnectOptions::default(),
    )
    .await
    .expect("an in-memory store");
    RedisCounters::new(&redis, Arc::new(store), &Config::default()).expect("redis counters")
}

async fn redis_buckets(prefix: &str) -> RedisCounters {
    redis_counters(&redis_url(), prefix).await
}

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Redis at {} is unreachable ({e}); start redis-server",
                redis_url()
            )
        })
}

/// Runs an `async fn name(b: Arc<dyn Buckets>)` on memory and on Redis, as the tests
/// `name::memory` and `name::redis`; and makes `every_behaviour`, which runs them all in turn
/// on buckets made afresh for each (on a Redis Cluster, started once for them all).
macro_rules! bucket_suite {
    ($($name:ident),+ $(,)?) => {
        async fn every_behaviour<F, Fut>(make: F)
        where
            F: Fn() -> Fut,
            Fut: std::future::Future<Output = Arc<dyn Buckets>>,
        {
            $(
                eprintln!("{}", stringify!($name));
                $name(make().await).await;
            )+
        }

        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn memory() {
                    super::$name(::std::sync::Arc::new(
                        tollgate::limits::memory::MemoryBuckets::new(),
                    ))
                    .await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn redis() {
                    let prefix = super::unique_prefix();
                    super::$name(::std::sync::Arc::new(super::redis_buckets(&prefix).await)).await;
                }
            }
        )+
    };
}

bucket_suite!(
    a_fresh_bucket_admits_its_burst_then_refuses,
    refill_after_exact_ms_admits_exactly_the_refilled_count,
    admission_is_all_or_nothing,
    a_refusal_by_the_widest_owner_takes_nothing_from_the_others,
    token_costs_and_a_cost_above_the_burst,
    burst_differs_from_the_rate,
    a_changed_limit_applies_at_once,
    settle_positive_delays_by_the_debt,
    settle_negative_refunds_up_to_the_burst,
    a_clock_going_backwards_refills_nothing,
    concurrent_admits_on_one_bucket_admit_exactly_the_burst,
    empty_demands_are_admitted,
);

fn shape(per_minute: u64, burst: u64) -> Shape {
    Shape { per_minute, burst }
}

fn demand(key: &str, shape: Shape, cost: u64) -> Demand {
    Demand {
        key: key.to_owned(),
        unit: if cost == 1 {
            Unit::Requests
        } else {
            Unit::Tokens
        },
        shape,
        cost,
    }
}

fn view(limit: u64, remaining: u64, reset_ms: u64, retry_after_ms: u64) -> View {
    View {
        limit,
        remaining,
        reset_ms,
        retry_after_ms,
    }
}

async fn admit1(b: &Arc<dyn Buckets>, d: &Demand, now: i64) -> (bool, View) {
    let o = b.admit(std::slice::from_ref(d), now).await.unwrap();
    assert_eq!(o.views.len(), 1);
    (o.admitted, o.views[0])
}

async fn a_fresh_bucket_admits_its_burst_then_refuses(b: Arc<dyn Buckets>) {
    // 60/min: one per second.
    let d = demand("k:1:rpm", shape(60, 5), 1);
    for i in 1..=5u64 {
        let (ok, v) = admit1(&b, &d, T0).await;
        assert!(ok, "request {i}");
        let retry = if i == 5 { 1_000 } else { 0 };
        assert_eq!(v, view(60, 5 - i, i * 1_000, retry), "request {i}");
    }
    for _ in 0..3 {
        let (ok, v) = admit1(&b, &d, T0).await;
        assert!(!ok);
        assert_eq!(v, view(60, 0, 5_000, 1_000));
    }
}

async fn refill_after_exact_ms_admits_exactly_the_refilled_count(b: Arc<dyn Buckets>) {
    let d = demand("k:2:rpm", shape(60, 10), 1);
    for _ in 0..10 {
        assert!(admit1(&b, &d, T0).await.0);
    }
    assert!(!admit1(&b, &d, T0).await.0);
    // 4 s later: 4 units.
    let at = T0 + 4_000;
    for i in 0..4u64 {
        let (ok, v) = admit1(&b, &d, at).await;
        assert!(ok);
        assert_eq!(v.remaining, 3 - i);
    }
    let (ok, v) = admit1(&b, &d, at).await;
    assert!(!ok);
    assert_eq!(v, view(60, 0, 10_000, 1_000));
    // 1.5 s later: one admitted, half a unit left.
    let at = at + 1_500;
    let (ok, v) = admit1(&b, &d, at).await;
    assert!(ok);
    assert_eq!(v, view(60, 0, 9_500, 500));
    assert!(!admit1(&b, &d, at).await.0);
    assert!(!admit1(&b, &d, at + 499).await.0);
    assert!(admit1(&b, &d, at + 500).await.0);
    // Long idle: full again, never more than the burst.
    let (ok, v) = admit1(&b, &d, at + 3_600_000).await;
    assert!(ok);
    assert_eq!(v, view(60, 9, 1_000, 0));
}

async fn admission_is_all_or_nothing(b: Arc<dyn Buckets>) {
    let wide = demand("g:rpm", shape(60, 5), 1);
    let narrow = demand("k:3:rpm", shape(60, 1), 1);
    let tpm = demand("k:3:tpm", shape(600, 1_000), 100);
    let both = [wide.clone(), narrow.clone(), tpm.clone()];
    let first = vec![
        view(60, 4, 1_000, 0),
        view(60, 0, 1_000, 1_000),
        view(600, 900, 10_000, 0),
    ];
    let o = b.admit(&both, T0).await.unwrap();
    assert!(o.admitted);
    assert_eq!(o.views, first);
    // The narrow bucket is empty: refused, and nothing is taken from the others.
    for _ in 0..3 {
        let o = b.admit(&both, T0).await.unwrap();
        assert!(!o.admitted);
        assert_eq!(o.views, first);
    }
    // The others alone still hold what the first request left.
    let o = b.admit(&[wide.clone(), tpm.clone()], T0).await.unwrap();
    assert!(o.admitted);
    assert_eq!(
        o.views,
        vec![view(60, 3, 2_000, 0), view(600, 800, 20_000, 0)]
    );
}

/// The gateway's bucket (checked last on a Redis Cluster, where each owner is one script)
/// refuses: what the key's buckets would have given stays theirs, exactly.
async fn a_refusal_by_the_widest_owner_takes_nothing_from_the_others(b: Arc<dyn Buckets>) {
    let global = demand("g:rpm", shape(60, 1), 1);
    let key = demand("k:4:rpm", shape(60, 5), 1);
    let tpm = demand("k:4:tpm", shape(600, 1_000), 100);
    let all = [global.clone(), key.clone(), tpm.clone()];
    let o = b.admit(&all, T0).await.unwrap();
    assert!(o.admitted);
    let refused = vec![
        view(60, 0, 1_000, 1_000),
        view(60, 4, 1_000, 0),
        view(600, 900, 10_000, 0),
    ];
    assert_eq!(o.views, refused);
    for _ in 0..3 {
        let o = b.admit(&all, T0).await.unwrap();
        assert!(!o.admitted);
        assert_eq!(o.views, refused);
    }
    let o = b.admit(&[key.clone(), tpm.clone()], T0).await.unwrap();
    assert!(o.admitted);
    assert_eq!(
        o.views,
        vec![view(60, 3, 2_000, 0), view(600, 800, 20_000, 0)]
    );
}

async fn token_costs_and_a_cost_above_the_burst(b: Arc<dyn Buckets>) {
    // 600/min: one token per 100 ms, burst 1 000.
    let tpm = shape(600, 1_000);
    let (ok, v) = admit1(&b, &demand("k:4:tpm", tpm, 400), T0).await;
    assert!(ok);
    assert_eq!(v, view(600, 600, 40_000, 0));
    // 700 does not fit in 600: 100 tokens to wait for, nothing taken.
    let (ok, v) = admit1(&b, &demand("k:4:tpm", tpm, 700), T0).await;
    assert!(!ok);
    assert_eq!(v, view(600, 600, 40_000, 10_000));
    // More than the bucket ever holds: refused, retry after at least a minute.
    let (ok, v) = admit1(&b, &demand("k:4:tpm", tpm, 1_500), T0).await;
    assert!(!ok);
    assert_eq!(v, view(600, 600, 40_000, 60_000));
    // Exactly what is left.
    let (ok, v) = admit1(&b, &demand("k:4:tpm", tpm, 600), T0).await;
    assert!(ok);
    assert_eq!(v, view(600, 0, 100_000, 60_000));
    // A zero limit never admits (any cost is above its burst of 0).
    let zero = shape(0, 0);
    let (ok, v) = admit1(&b, &demand("k:4:zero", zero, 1), T0).await;
    assert!(!ok);
    assert_eq!(v, view(0, 0, 0, 60_000));
    // A bucket that never refills: what it holds is all there is, and the wait is forever.
    let never = demand("k:4:never", shape(0, 2), 1);
    assert!(admit1(&b, &never, T0).await.0);
    assert!(admit1(&b, &never, T0).await.0);
    let (ok, v) = admit1(&b, &never, T0 + 3_600_000).await;
    assert!(!ok);
    assert_eq!(v, view(0, 0, u64::MAX, u64::MAX));
}

async fn burst_differs_from_the_rate(b: Arc<dyn Buckets>) {
    // 60/min, but at most 10 at once.
    let small = demand("k:5:small", shape(60, 10), 1);
    for _ in 0..10 {
        assert!(admit1(&b, &small, T0).await.0);
    }
    let (ok, v) = admit1(&b, &small, T0).await;
    assert!(!ok);
    assert_eq!(v, view(60, 0, 10_000, 1_000));
    let at = T0 + 3_000;
    for _ in 0..3 {
        assert!(admit1(&b, &small, at).await.0);
    }
    assert!(!admit1(&b, &small, at).await.0);

    // 60/min with a burst of 100: a hundred at once, then one a second.
    let big = demand("k:5:big", shape(60, 100), 1);
    for _ in 0..100 {
        assert!(admit1(&b, &big, T0).await.0);
    }
    let (ok, v) = admit1(&b, &big, T0).await;
    assert!(!ok);
    assert_eq!(v, view(60, 0, 100_000, 1_000));
    assert!(admit1(&b, &big, T0 + 1_000).await.0);
    assert!(!admit1(&b, &big, T0 + 1_000).await.0);
}

async fn a_changed_limit_applies_at_once(b: Arc<dyn Buckets>) {
    let key = "k:6:rpm";
    let before = demand(key, shape(60, 10), 1);
    assert!(admit1(&b, &before, T0).await.0);
    assert!(admit1(&b, &before, T0).await.0);
    // 8 left; the limit drops to 5: capped at 5, this one takes 1.
    let lower = demand(key, shape(30, 5), 1);
    let (ok, v) = admit1(&b, &lower, T0).await;
    assert!(ok);
    assert_eq!(v, view(30, 4, 2_000, 0));
    // Raised to 20: the 4 left stay 4 (a raise refills nothing at once) and refill at the
    // new rate (120/min: one per 500 ms).
    let higher = demand(key, shape(120, 20), 1);
    let (ok, v) = admit1(&b, &higher, T0).await;
    assert!(ok);
    assert_eq!(v, view(120, 3, 8_500, 0));
    let (ok, v) = admit1(&b, &higher, T0 + 500).await;
    assert!(ok);
    assert_eq!(v, view(120, 3, 8_500, 0));
}

fn settlement(key: &str, shape: Shape, delta: i64) -> Settlement {
    Settlement {
        key: key.to_owned(),
        shape,
        delta,
    }
}

async fn settle_positive_delays_by_the_debt(b: Arc<dyn Buckets>) {
    // One token per 100 ms, burst 1 000.
    let tpm = shape(600, 1_000);
    let d = demand("k:7:tpm", tpm, 100);
    let (ok, v) = admit1(&b, &d, T0).await;
    assert!(ok);
    assert_eq!(v.remaining, 900);
    // The request used 1 300 tokens, not 100: 1 200 more, 300 in debt.
    b.settle(&[settlement(&d.key, tpm, 1_200)], T0)
        .await
        .unwrap();
    let (ok, v) = admit1(&b, &d, T0).await;
    assert!(!ok);
    // 300 of debt plus the 100 wanted: 400 tokens, 40 s.
    assert_eq!(v, view(600, 0, 130_000, 40_000));
    assert!(!admit1(&b, &d, T0 + 39_999).await.0);
    let (ok, v) = admit1(&b, &d, T0 + 40_000).await;
    assert!(ok);
    assert_eq!(v, view(600, 0, 100_000, 10_000));

    // Debt is bounded by the burst: at most a full bucket's refill.
    b.settle(&[settlement("k:7:other", tpm, 1_000_000)], T0)
        .await
        .unwrap();
    let (ok, v) = admit1(&b, &demand("k:7:other", tpm, 1), T0).await;
    assert!(!ok);
    assert_eq!(v, view(600, 0, 200_000, 100_100));
}

async fn settle_negative_refunds_up_to_the_burst(b: Arc<dyn Buckets>) {
    let tpm = shape(600, 1_000);
    let d = demand("k:8:tpm", tpm, 600);
    assert!(admit1(&b, &d, T0).await.0);
    // Used 200 of the 600 estimated: 400 back.
    b.settle(&[settlement(&d.key, tpm, -400)], T0)
        .await
        .unwrap();
    let (ok, v) = admit1(&b, &demand(&d.key, tpm, 1), T0).await;
    assert!(ok);
    assert_eq!(v, view(600, 799, 20_100, 0));
    // A refund never lifts a bucket above its burst.
    b.settle(&[settlement(&d.key, tpm, -10_000)], T0)
        .await
        .unwrap();
    let (ok, v) = admit1(&b, &demand(&d.key, tpm, 1), T0).await;
    assert!(ok);
    assert_eq!(v, view(600, 999, 100, 0));
    // Settling a bucket never seen: it starts full. Several in one call.
    b.settle(
        &[
            settlement("k:8:new", tpm, 300),
            settlement("k:8:new2", tpm, -5),
        ],
        T0,
    )
    .await
    .unwrap();
    let (_, v) = admit1(&b, &demand("k:8:new", tpm, 1), T0).await;
    assert_eq!(v, view(600, 699, 30_100, 0));
    let (_, v) = admit1(&b, &demand("k:8:new2", tpm, 1), T0).await;
    assert_eq!(v, view(600, 999, 100, 0));
}

async fn a_clock_going_backwards_refills_nothing(b: Arc<dyn Buckets>) {
    let d = demand("k:9:rpm", shape(60, 2), 1);
    assert!(admit1(&b, &d, T0).await.0);
    assert!(admit1(&b, &d, T0).await.0);
    // Five seconds earlier (another replica's clock): nothing refilled, and the bucket's
    // time stays at T0.
    let (ok, v) = admit1(&b, &d, T0 - 5_000).await;
    assert!(!ok);
    assert_eq!(v, view(60, 0, 2_000, 1_000));
    // One second after T0 (not after the earlier time): one unit.
    assert!(admit1(&b, &d, T0 + 1_000).await.0);
    assert!(!admit1(&b, &d, T0 + 1_000).await.0);
    assert!(!admit1(&b, &d, T0 + 500).await.0);
}

async fn concurrent_admits_on_one_bucket_admit_exactly_the_burst(b: Arc<dyn Buckets>) {
    let d = demand("k:10:rpm", shape(60, 50), 1);
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let b = b.clone();
            let d = d.clone();
            tokio::spawn(async move { b.admit(&[d], T0).await.unwrap().admitted })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        if t.await.unwrap() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 50);
}

async fn empty_demands_are_admitted(b: Arc<dyn Buckets>) {
    let o = b.admit(&[], T0).await.unwrap();
    assert!(o.admitted);
    assert!(o.views.is_empty());
    b.settle(&[], T0).await.unwrap();
}

/// The whole suite on a Redis Cluster of three masters (the buckets of one owner share a
/// slot; admissions across owners take one script per owner and give back on refusal).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_behaviour_on_a_redis_cluster() {
    let cluster = redis_cluster::RedisCluster::start().await;
    let urls = cluster.yaml_nodes();
    every_behaviour(|| {
        let urls = urls.clone();
        async move {
            let redis: Redis = serde_yaml::from_str(&format!(
                "{{ cluster: {urls}, pool_size: 8, timeout: 5s, key_prefix: \"{}\" }}",
                unique_prefix()
            ))
            .unwrap();
            let store = tollgate::store::sql::SqlStore::connect(
                "sqlite::memory:",
                &tollgate::store::sql::ConnectOptions::default(),
            )
            .await
            .expect("an in-memory store");
            let counters = RedisCounters::new(&redis, Arc::new(store), &Config::default())
                .expect("redis counters");
            Arc::new(counters) as Arc<dyn Buckets>
        }
    })
    .await;
}

// Redis only.

async fn script_flush(conn: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(conn)
        .await
        .unwrap();
}

async fn scripts_loaded(
    conn: &mut redis::aio::MultiplexedConnection,
    b: &RedisCounters,
) -> Vec<bool> {
    redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(b.take_script_hash())
        .arg(b.correct_script_hash())
        .query_async(conn)
        .await
        .unwrap()
}

/// On a server of its own: flushing the shared one's scripts would disturb other tests.
#[tokio::test]
async fn redis_works_after_script_flush() {
    let server = common::private_redis::PrivateRedis::start().await;
    let b = redis_counters(&server.url, "t:").await;
    let mut conn = server.conn().await.unwrap();
    let d = demand("k:11:rpm", shape(60, 3), 1);
    let tpm = shape(600, 1_000);
    assert_eq!(scripts_loaded(&mut conn, &b).await, vec![false, false]);
    assert!(
        b.admit(std::slice::from_ref(&d), T0)
            .await
            .unwrap()
            .admitted
    );
    assert_eq!(scripts_loaded(&mut conn, &b).await, vec![true, false]);
    script_flush(&mut conn).await;
    let o = b.admit(std::slice::from_ref(&d), T0).await.unwrap();
    assert!(o.admitted);
    assert_eq!(o.views[0].remaining, 1, "the state survives the flush");
    script_flush(&mut conn).await;
    b.settle(&[settlement("k:11:tpm", tpm, 10)], T0)
        .await
        .unwrap();
    assert_eq!(scripts_loaded(&mut conn, &b).await, vec![false, true]);
    let o = b
        .admit(&[d.clone(), demand("k:11:tpm", tpm, 1)], T0)
        .await
        .unwrap();
    assert!(o.admitted);
    assert_eq!(o.views[1].remaining, 989, "the settle was applied");
    assert_eq!(scripts_loaded(&mut conn, &b).await, vec![true, true]);
}

#[tokio::test]
async fn redis_keys_carry_the_prefix_and_hash_tag_and_expire() {
    let prefix = unique_prefix();
    let b = redis_buckets(&prefix).await;
    let now = chrono::Utc::now().timestamp_millis();
    let o = b
        .admit(
            &[
                demand("k:12:rpm", shape(60, 5), 1),
                demand("k:12:tpm", shape(60_000, 1_000), 1_000),
            ],
            now,
        )
        .await
        .unwrap();
    assert!(o.admitted);
    let mut conn = redis_conn().await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            format!("{prefix}{{k:12}}:rpm"),
            format!("{prefix}{{k:12}}:tpm")
        ]
    );
    assert_eq!(b.bucket_key("k:12:rpm"), keys[0]);
    let (t, ts): (String, String) = redis::cmd("HMGET")
        .arg(&keys[0])
        .arg("t")
        .arg("ts")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(t.parse::<f64>().unwrap(), 4.0);
    assert_eq!(ts.parse::<i64>().unwrap(), now);
    // Until full plus a second: 1 s + 1 s for rpm, 1 000 ms + 1 s for tpm.
    for key in &keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= 2_000, "{key}: ttl {ttl}");
    }
    // Both keys hash to their owner's cluster slot: Redis Cluster hashes only the part
    // between the first `{` and the next `}`, here the key's `k:12`.
    for key in &keys {
        assert_eq!(hash_tag(key), Some("k:12"), "{key}");
    }
    // A bucket that never refills keeps its key (forgetting it would refill it).
    let never = demand("k:12:never", shape(0, 2), 1);
    assert!(b.admit(&[never], now).await.unwrap().admitted);
    let ttl: i64 = redis::cmd("PTTL")
        .arg(b.bucket_key("k:12:never"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(ttl, -1);
    let _: () = redis::cmd("DEL")
        .arg(b.bucket_key("k:12:never"))
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// The part of a key Redis Cluster hashes, when it has a tag.
fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let len = key[open + 1..].find('}')?;
    (len > 0).then(|| &key[open + 1..open + 1 + len])
}

/// Redis mirrors the memory arithmetic bit for bit: the same awkward sequence (rates that
/// are not exact in binary, irregular times, settles both ways, a clock going back, shape
/// changes) gives identical outcomes on both stores.
#[tokio::test]
async fn redis_mirrors_memory_exactly() {
    let memory = MemoryBuckets::new();
    let redis = redis_buckets(&unique_prefix()).await;
    let shapes = [
        shape(7, 13),
        shape(1_000, 3),
        shape(90_000, 2_500),
        shape(7, 5),
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut now = T0;
    for step in 0..400 {
        now += next(900) as i64 - 100;
        let count = 1 + next(3) as usize;
        let mut keys: Vec<u64> = (0..4).collect();
        keys.rotate_left(next(4) as usize);
        if next(5) == 0 {
            let settlements: Vec<Settlement> = keys[..count]
                .iter()
                .map(|k| Settlement {
                    key: format!("b{k}"),
                    shape: shapes[(*k as usize + step / 100) % 4],
                    delta: next(3_000) as i64 - 1_500,
                })
                .collect();
            memory.settle(&settlements, now).await.unwrap();
            redis.settle(&settlements, now).await.unwrap();
        } else {
            let demands: Vec<Demand> = keys[..count]
                .iter()
                .map(|k| {
                    let s = shapes[(*k as usize + step / 100) % 4];
                    demand(&format!("b{k}"), s, 1 + next(s.burst.min(600)))
                })
                .collect();
            let m = memory.admit(&demands, now).await.unwrap();
            let r = redis.admit(&demands, now).await.unwrap();
            assert_eq!(m, r, "step {step} at {now}: {demands:?}");
        }
    }
}
