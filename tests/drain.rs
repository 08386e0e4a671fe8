//! Stopping under metered load, with real processes: the `tollgate serve` binary behind a
//! real Envoy (envoy/envoy.yaml: ext_authz + ext_proc) in front of the mock LLM, clients
//! sending chat completions (streamed and not) through Envoy, and SIGTERM in the middle.
//!
//! What must hold (docs/DESIGN.md, "Live, ready, drain"): `/readyz` answers 503 right after
//! the signal while Check still admits requests; the process exits 0 within
//! `server.drain_timeout` and a margin; and every request the upstream answered has its
//! usage record in the database, with the in-process queue and with the Redis Stream.

mod common;

use common::envoy::Envoy;
use common::serve::{Database, Serve};
use reqwest::StatusCode;
use serde_json::json;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::mock_llm::{MockLlm, STREAM_DELAY_HEADER};

const REDIS: &str = "redis://127.0.0.1:6379";
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Clients sending at once.
const CLIENTS: usize = 4;
/// How long after the signal the clients keep coming, as a load balancer that takes a
/// while to notice the 503.
const NOTICED_AFTER: Duration = Duration::from_secs(2);
/// The models and usage writer of every tollgate here (SQLite in its own directory).
const CONFIG: &str =
    "models:\n  - { name: gpt-4o, pricing: { input_per_million: 1, output_per_million: 2 } }\n\
                      usage: { batch_interval: 200ms, batch_size: 50 }\n";

/// Starts `serve` on free ports with a SQLite database in a temporary directory; `extra`
/// is appended to the config file.
async fn start(extra: &str) -> Serve {
    Serve::start(Database::Sqlite, &format!("{CONFIG}{extra}")).await
}

/// A key for gpt-4o, made through the admin API.
async fn key(serve: &Serve) -> String {
    serve.create_key(json!({"name": "load"})).await.1
}

/// The request ids of the usage records in the database.
async fn recorded(serve: &Serve) -> BTreeSet<String> {
    recorded_in(&serve.sqlite_path()).await
}

async fn recorded_in(db: &Path) -> BTreeSet<String> {
    let url = format!("sqlite://{}", db.display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let ids: Vec<String> = sqlx::query_scalar("SELECT request_id FROM usage_records")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    ids.into_iter().collect()
}

fn client() -> reqwest::Client {
    common::upstream::client()
}

/// One request sent through Envoy: when it left, and what came back.
struct Sent {
    at: Instant,
    status: Option<StatusCode>,
}

/// Clients sending chat completions through Envoy until `stop` (every other one a stream of
/// about half a second, so that streams are in flight whenever the signal comes).
fn load(
    envoy: &Envoy,
    key: &str,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Sent>>> {
    (0..CLIENTS)
        .map(|n| {
            let url = envoy.url("/v1/chat/completions");
            let auth = format!("Bearer {key}");
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = client();
                let mut sent = Vec::new();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let stream = (n + i).is_multiple_of(2);
                    let body = json!({
                        "model": "gpt-4o",
                        "max_tokens": 8,
                        "stream": stream,
                        "messages": [{"role": "user", "content": "hello there"}],
                    });
                    let at = Instant::now();
                    let result = client
                        .post(&url)
                        .header("authorization", &auth)
                        .header(STREAM_DELAY_HEADER, "50")
                        .json(&body)
                        .send()
                        .await;
                    let status = match result {
                        Ok(response) => {
                            let status = response.status();
                            let _ = response.bytes().await;
                            Some(status)
                        }
                        Err(_) => None,
                    };
                    if status != Some(StatusCode::OK) {
                        // Refused (tollgate stopped): do not spin.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    sent.push(Sent { at, status });
                }
                sent
            })
        })
        .collect()
}

/// The request ids the upstream answered.
fn answered(mock: &MockLlm) -> BTreeSet<String> {
    mock.requests()
        .iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .map(|r| {
            r.header("x-request-id")
                .expect("Envoy sets x-request-id")
                .to_owned()
        })
        .collect()
}

/// How the clients stop coming after the signal.
#[derive(Clone, Copy, PartialEq)]
enum Traffic {
    /// [`NOTICED_AFTER`] after the signal, as behind a load balancer.
    StopsAfterNotice,
    /// Never: the drain must end at `server.drain_timeout`.
    NeverStops,
}

/// Runs the scenario on a tollgate (with the usage queue on Redis under `redis_prefix`
/// when given), and checks everything.
async fn sigterm_under_load(redis_prefix: Option<&str>, drain_timeout: Duration, traffic: Traffic) {
    // One at a time: the timings asserted here are the drain's, not those of a machine
    // running several Envoys under load at once.
    let _serial = SERIAL.lock().await;
    let mut extra = format!(
        "server: {{ drain_timeout: {}ms }}\n",
        drain_timeout.as_millis()
    );
    if let Some(prefix) = redis_prefix {
        extra.push_str(&format!(
            "redis: {{ url: \"{REDIS}\", key_prefix: \"{prefix}\" }}\n"
        ));
    }
    let mut serve = start(&extra).await;
    let mock = MockLlm::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let envoy = Envoy::start("envoy/envoy.yaml", serve.grpc, mock.addr).await;
    let key = key(&serve).await;
    let (status, ready) = serve.readyz().await.expect("readyz answers");
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["status"], "ready", "{ready}");

    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(&envoy, &key, stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let signalled = Instant::now();
    serve.sigterm();
    // Readiness turns at once (the signal is handled asynchronously: allow a moment).
    let draining_after = loop {
        if let Some((status, body)) = serve.readyz().await {
            if status == StatusCode::SERVICE_UNAVAILABLE {
                assert_eq!(body["status"], "draining", "{body}");
                assert_eq!(body["backends"]["database"], "up", "{body}");
                break signalled.elapsed();
            }
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(1),
            "readyz did not turn 503 after SIGTERM:\n{}",
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    if traffic == Traffic::StopsAfterNotice {
        tokio::time::sleep(NOTICED_AFTER.saturating_sub(signalled.elapsed())).await;
        stop.store(true, Ordering::Relaxed);
    }
    let limit = drain_timeout + Duration::from_secs(10);
    let status = serve.exited(limit).await;
    let stopped_after = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    for client in clients {
        sent.extend(client.await.unwrap());
    }
    let status = status.unwrap_or_else(|| {
        panic!(
            "tollgate did not exit within {limit:?} of SIGTERM:\n{}",
            serve.log()
        )
    });
    assert!(status.success(), "exit {status}:\n{}", serve.log());

    // Check still admitted requests while draining: everything sent between readiness
    // turning and the load balancer noticing (or the drain timeout) got through.
    let admitting = signalled + draining_after..signalled + NOTICED_AFTER.min(drain_timeout);
    let during: Vec<&Sent> = sent
        .iter()
        .filter(|s| admitting.contains(&s.at) && s.at + Duration::from_millis(500) < admitting.end)
        .collect();
    assert!(
        during.len() >= CLIENTS,
        "only {} requests while draining",
        during.len()
    );
    let refused = during
        .iter()
        .filter(|s| s.status != Some(StatusCode::OK))
        .count();
    assert_eq!(
        refused,
        0,
        "requests refused while draining:\n{}",
        serve.log()
    );

    let answered = answered(&mock);
    let recorded = recorded(&serve).await;
    let ok = sent
        .iter()
        .filter(|s| s.status == Some(StatusCode::OK))
        .count();
    println!(
        "readyz 503 after {draining_after:?}; exited after {stopped_after:?}; {} sent, {ok} answered 200 to clients, {} answered by the upstream, {} recorded",
        sent.len(),
        answered.len(),
        recorded.len()
    );
    let missing: Vec<_> = answered.difference(&recorded).collect();
    let unknown: Vec<_> = recorded.difference(&answered).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "{} answered by the upstream, {} recorded; missing {missing:?}, not answered {unknown:?}\n{}",
        answered.len(),
        recorded.len(),
        serve.log()
    );
    assert!(answered.len() > 20, "too little load: {}", answered.len());
    assert!(
        stopped_after < drain_timeout + Duration::from_secs(8),
        "took {stopped_after:?}"
    );
    if let Some(prefix) = redis_prefix {
        // Written and acked: nothing left pending or unread in the stream.
        let mut redis = redis::Client::open(REDIS)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("Redis at 127.0.0.1:6379");
        let stream = tollgate::usage::redis_queue::stream_key(prefix);
        let group = tollgate::usage::redis_queue::GROUP;
        let pending: Vec<redis::Value> = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(group)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(pending.first(), Some(&redis::Value::Int(0)), "{pending:?}");
        let groups: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(
            groups[0].get("lag"),
            Some(&redis::Value::Int(0)),
            "{groups:?}"
        );
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut redis)
            .await
            .unwrap();
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    drop(envoy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_usage() {
    sigterm_under_load(None, Duration::from_secs(10), Traffic::StopsAfterNotice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_times_out_under_load_loses_no_usage() {
    sigterm_under_load(None, Duration::from_secs(3), Traffic::NeverStops).await;
}

fn unique_prefix() -> String {
    format!("tg-drain-{}:", uuid::Uuid::new_v4().simple())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_usage_with_the_redis_queue() {
    let prefix = unique_prefix();
    sigterm_under_load(
        Some(&prefix),
        Duration::from_secs(10),
        Traffic::StopsAfterNotice,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_times_out_under_load_loses_no_usage_with_the_redis_queue() {
    let prefix = unique_prefix();
    sigterm_under_load(Some(&prefix), Duration::from_secs(3), Traffic::NeverStops).await;
}

/// Not a stop under load: an idle tollgate stops about a second after SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tollgate_stops_a_second_after_sigterm() {
    let mut serve = start("").await;
    let signalled = Instant::now();
    serve.sigterm();
    let status = serve
        .exited(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("no exit:\n{}", serve.log()));
    let took = signalled.elapsed();
    assert!(status.success(), "{status}\n{}", serve.log());
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(4), "{took:?}\n{}", serve.log());
}
