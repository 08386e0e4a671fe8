//! The usage queue on a Redis Stream (real Redis at 127.0.0.1:6379, a unique key prefix per
//! test): records are written once, acked and then trimmed off the stream; they survive a
//! restart of tollgate while the database is down (the next tollgate claims them); poison
//! entries go to the dead letters without blocking the others; duplicates count once; and
//! while Redis is unreachable records go to the in-process queue and are still written.

mod common;

use common::tollgate::Tollgate;
use redis::aio::MultiplexedConnection;
use redis::Value;
use std::time::Duration;
use tollgate::store::{GroupBy, SharedStore, UsageQuery};
use tollgate::usage::redis_queue::{dead_key, stream_key, GROUP, RECORD_FIELD};
use tollgate::usage::{TokenUsage, UsageRecord, UsageSource};

const REDIS: &str = "redis://127.0.0.1:6379";
const T: i64 = 1_795_000_000;
/// How long a test polls for a condition.
const DEADLINE: Duration = Duration::from_secs(20);

fn record(id: &str, cost: f64) -> UsageRecord {
    UsageRecord {
        request_id: id.to_owned(),
        at: T,
        key_id: None,
        user_id: None,
        team_id: None,
        org_id: None,
        model: Some("gpt-4o".to_owned()),
        tokens: TokenUsage {
            input_tokens: 10,
            output_tokens: 5,
            cached_input_tokens: 0,
            reasoning_tokens: 0,
        },
        cost_usd: cost,
        status: 200,
        latency_ms: 3,
        estimated: false,
        source: UsageSource::ExtProc,
    }
}

fn prefix() -> String {
    format!("test:{}:", uuid::Uuid::new_v4().simple())
}

/// A tollgate on Redis with keys under `prefix`, batches every `interval`, and `extra` YAML.
fn yaml(prefix: &str, interval: &str, extra: &str) -> String {
    format!(
        "redis: {{ url: \"{REDIS}\", key_prefix: \"{prefix}\" }}\nusage: {{ batch_interval: {interval} }}\n{extra}"
    )
}

async fn redis() -> MultiplexedConnection {
    redis::Client::open(REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis at 127.0.0.1:6379 (start it with: redis-server --daemonize yes)")
}

/// Deletes the test's keys.
async fn cleanup(conn: &mut MultiplexedConnection, prefix: &str) {
    let _: () = redis::cmd("DEL")
        .arg(stream_key(prefix))
        .arg(dead_key(prefix))
        .query_async(conn)
        .await
        .unwrap();
}

async fn xlen(conn: &mut MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("XLEN").arg(key).query_async(conn).await.unwrap()
}

/// Entries of the group read and not acked.
async fn pending(conn: &mut MultiplexedConnection, prefix: &str) -> i64 {
    let reply: Value = redis::cmd("XPENDING")
        .arg(stream_key(prefix))
        .arg(GROUP)
        .query_async(conn)
        .await
        .unwrap();
    match reply {
        Value::Array(items) => match items.first() {
            Some(Value::Int(n)) => *n,
            other => panic!("XPENDING count: {other:?}"),
        },
        other => panic!("XPENDING: {other:?}"),
    }
}

/// The dead letters as (field → value) maps.
async fn dead_letters(
    conn: &mut MultiplexedConnection,
    prefix: &str,
) -> Vec<std::collections::HashMap<String, String>> {
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(dead_key(prefix))
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    entries.into_iter().map(|(_, fields)| fields).collect()
}

async fn requests(store: &SharedStore) -> Option<u64> {
    store
        .usage_report(UsageQuery::new(GroupBy::Model))
        .await
        .ok()
        .map(|r| r.total.requests)
}

/// Polls until `check` holds, or fails with `what` after [`DEADLINE`].
macro_rules! eventually {
    ($what:expr, $check:expr) => {{
        let started = std::time::Instant::now();
        loop {
            if $check {
                break;
            }
            if started.elapsed() > DEADLINE {
                panic!("never: {}", $what);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }};
}

#[tokio::test]
async fn pushed_records_are_written_once_and_acked() {
    let mut conn = redis().await;
    let prefix = prefix();
    let t = Tollgate::start(&yaml(&prefix, "20ms", "")).await;
    assert!(t.app.usage.is_redis());
    for i in 0..25 {
        t.app
            .usage
            .push(record(&format!("w{i}"), 0.5))
            .await
            .unwrap();
    }
    // Every push is an entry of the stream (nothing went to the in-process fallback).
    assert_eq!(xlen(&mut conn, &stream_key(&prefix)).await, 25);
    let store = t.app.store.clone();
    eventually!(
        "25 records in the store",
        requests(&store).await == Some(25)
    );
    eventually!("every entry acked", pending(&mut conn, &prefix).await == 0);
    eventually!(
        "the queue depth back at 0",
        t.metric("tollgate_usage_queue_depth").await == 0.0
    );
    assert_eq!(xlen(&mut conn, &stream_key(&prefix)).await, 25);
    assert_eq!(xlen(&mut conn, &dead_key(&prefix)).await, 0);
    assert_eq!(
        t.metric("tollgate_usage_records_total{result=\"written\"}")
            .await,
        25.0
    );
    assert_eq!(
        t.metric("tollgate_usage_records_total{result=\"duplicate\"}")
            .await,
        0.0
    );
    let report = store
        .usage_report(UsageQuery::new(GroupBy::Model))
        .await
        .unwrap();
    assert_eq!(report.total.input_tokens, 250);
    assert_eq!(report.total.cost_usd, 12.5);

    // Acked entries are trimmed off the stream; the queue goes on afterwards.
    t.app.usage.set_trim_every(Duration::from_millis(50));
    eventually!(
        "the acked entries trimmed",
        xlen(&mut conn, &stream_key(&prefix)).await == 0
    );
    for i in 25..28 {
        t.app
            .usage
            .push(record(&format!("w{i}"), 0.5))
            .await
            .unwrap();
    }
    eventually!(
        "28 records in the store",
        requests(&store).await == Some(28)
    );
    eventually!(
        "every entry acked and trimmed",
        pending(&mut conn, &prefix).await == 0 && xlen(&mut conn, &stream_key(&prefix)).await == 0
    );
    assert_eq!(requests(&store).await, Some(28));
    assert_eq!(
        t.metric("tollgate_usage_records_total{result=\"written\"}")
            .await,
        28.0
    );
    t.stop().await;
    cleanup(&mut conn, &prefix).await;
}

#[tokio::test]
async fn duplicates_count_once() {
    let mut conn = redis().await;
    let prefix = prefix();
    let t = Tollgate::start(&yaml(&prefix, "20ms", "")).await;
    for i in 0..10 {
        t.app
            .usage
            .push(record(&format!("d{i}"), 0.25))
            .await
            .unwrap();
    }
    // The same request ids again (both ingestion paths, a redelivery).
    for i in 0..4 {
        t.app
            .usage
            .push(record(&format!("d{i}"), 0.25))
            .await
            .unwrap();
    }
    let store = t.app.store.clone();
    eventually!(
        "the duplicates processed",
        t.metric("tollgate_usage_records_total{result=\"duplicate\"}")
            .await
            == 4.0
    );
    eventually!("every entry acked", pending(&mut conn, &prefix).await == 0);
    assert_eq!(requests(&store).await, Some(10));
    assert_eq!(
        t.metric("tollgate_usage_records_total{result=\"written\"}")
            .await,
        10.0
    );
    let report = store
        .usage_report(UsageQuery::new(GroupBy::Model))
        .await
        .unwrap();
    assert_eq!(report.total.cost_usd, 2.5);
    assert_eq!(xlen(&mut conn, &stream_key(&prefix)).await, 14);
    t.stop().await;
    cleanup(&mut conn, &prefix).await;
}

#[tokio::test]
async fn poison_entries_go_to_the_dead_letters_without_blocking_the_others() {
    let mut conn = redis().await;
    let prefix = prefix();
    let stream = stream_key(&prefix);
    // Garbage before tollgate starts (the group is created from the start of the stream).
    let garbage_id: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg(RECORD_FIELD)
        .arg("not json {")
        .query_async(&mut conn)
        .await
        .unwrap();
    let t = Tollgate::start(&yaml(&prefix, "200ms", "")).await;
    for i in 0..3 {
        t.app
            .usage
            .push(record(&format!("p{i}"), 0.5))
            .await
            .unwrap();
    }
    // An entry without the record field, and a record the store refuses (negative cost),
    // in the same batch as good ones: the batch is split until the bad one is alone.
    let fieldless_id: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("something")
        .arg("else")
        .query_async(&mut conn)
        .await
        .unwrap();
    t.app.usage.push(record("negative", -1.0)).await.unwrap();
    for i in 3..6 {
        t.app
            .usage
            .push(record(&format!("p{i}"), 0.5))
            .await
            .unwrap();
    }
    let store = t.app.store.clone();
    eventually!("6 records in the store", requests(&store).await == Some(6));
    eventually!(
        "3 dead letters",
        xlen(&mut conn, &dead_key(&prefix)).await == 3
    );
    eventually!("every entry acked", pending(&mut conn, &prefix).await == 0);
    assert_eq!(requests(&store).await, Some(6));
    let dead = dead_letters(&mut conn, &prefix).await;
    let by_id = |id: &str| {
        dead.iter()
            .find(|d| d.get("id").map(String::as_str) == Some(id))
            .unwrap_or_else(|| panic!("no dead letter for {id}: {dead:?}"))
            .clone()
    };
    let garbage = by_id(&garbage_id);
    assert_eq!(garbage["payload"], "not json {");
    assert!(
        garbage["reason"].starts_with("not a usage record"),
        "{garbage:?}"
    );
    let fieldless = by_id(&fieldless_id);
    assert_eq!(fieldless["reason"], "no record field");
    assert_eq!(fieldless["payload"], r#"{"something":"else"}"#);
    let negative = dead
        .iter()
        .find(|d| d["payload"].contains("\"negative\""))
        .unwrap_or_else(|| panic!("no dead letter for the negative cost: {dead:?}"));
    assert!(negative["reason"].contains("cost_usd"), "{negative:?}");
    let parsed: UsageRecord = serde_json::from_str(&negative["payload"]).unwrap();
    assert_eq!(parsed, record("negative", -1.0));
    assert_eq!(
        t.metric("tollgate_usage_records_total{result=\"dead_letter\"}")
            .await,
        3.0
    );
    assert_eq!(
        t.metric("tollgate_usage_records_total{result=\"written\"}")
            .await,
        6.0
    );
    t.stop().await;
    cleanup(&mut conn, &prefix).await;
}

#[tokio::test]
async fn no_record_is_lost_across_a_restart_mid_load() {
    let mut conn = redis().await;
    let prefix = prefix();
    let common::chaos::ProxiedPostgres {
        proxy,
        url: proxied,
        direct_url: pg,
        direct,
    } = common::chaos::proxied_postgres().await;
    let direct: SharedStore = std::sync::Arc::new(direct);

    // Tollgate A writes a few, then loses its database and keeps records it cannot commit.
    let a = Tollgate::start(&yaml(
        &prefix,
        "20ms",
        &format!("database: {{ url: \"{proxied}\", timeout: 300ms }}\n"),
    ))
    .await;
    for i in 0..5 {
        a.app
            .usage
            .push(record(&format!("before{i}"), 0.0))
            .await
            .unwrap();
    }
    eventually!("5 records written by A", requests(&direct).await == Some(5));
    proxy.cut();
    const N: usize = 40;
    for i in 0..N {
        a.app
            .usage
            .push(record(&format!("during{i}"), 0.0))
            .await
            .unwrap();
    }
    eventually!(
        "A retrying a batch",
        a.metric("tollgate_usage_records_total{result=\"retried\"}")
            .await
            > 0.0
    );
    // The batch in hand waits as long as the outage lasts.
    let lag = a.metric("tollgate_usage_queue_lag_seconds").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = a.metric("tollgate_usage_queue_lag_seconds").await;
    assert!(later >= lag + 0.5, "the lag grows: {lag} then {later}");
    // Stopped while the batch is in hand: it stays pending with A's consumer.
    a.stop().await;
    let left_pending = pending(&mut conn, &prefix).await;
    assert!(left_pending > 0, "A left nothing pending");
    assert_eq!(xlen(&mut conn, &stream_key(&prefix)).await, 5 + N as i64);
    assert_eq!(requests(&direct).await, Some(5));

    // Tollgate B on the same database and Redis claims A's entries and reads the rest.
    let b = Tollgate::start(&yaml(
        &prefix,
        "20ms",
        &format!("database: {{ url: \"{pg}\" }}\n"),
    ))
    .await;
    b.app.usage.set_claim_idle(Duration::from_millis(200));
    eventually!(
        "every record written",
        requests(&direct).await == Some(5 + N as u64)
    );
    eventually!("every entry acked", pending(&mut conn, &prefix).await == 0);
    eventually!(
        "nothing waits",
        b.metric("tollgate_usage_queue_lag_seconds").await == 0.0
    );
    assert_eq!(requests(&direct).await, Some(5 + N as u64));
    assert_eq!(
        b.metric("tollgate_usage_records_total{result=\"written\"}")
            .await,
        N as f64
    );
    assert_eq!(
        b.metric("tollgate_usage_records_total{result=\"duplicate\"}")
            .await,
        0.0
    );
    assert_eq!(xlen(&mut conn, &dead_key(&prefix)).await, 0);
    b.stop().await;
    cleanup(&mut conn, &prefix).await;
}

#[tokio::test]
async fn records_go_to_the_in_process_queue_while_redis_is_unreachable() {
    // Nothing listens on port 1: every push fails after its retries and is queued in
    // process, and is still written.
    let t = Tollgate::start(
        "redis: { url: \"redis://127.0.0.1:1\", timeout: 100ms }\nusage: { batch_interval: 20ms }\n",
    )
    .await;
    assert!(t.app.usage.is_redis());
    for i in 0..3 {
        t.app
            .usage
            .push(record(&format!("f{i}"), 0.5))
            .await
            .unwrap();
    }
    let store = t.app.store.clone();
    eventually!("3 records in the store", requests(&store).await == Some(3));
    assert_eq!(
        t.metric("tollgate_usage_records_total{result=\"written\"}")
            .await,
        3.0
    );
    eventually!(
        "the queue depth back at 0",
        t.metric("tollgate_usage_queue_depth").await == 0.0
    );
    t.stop().await;
}
