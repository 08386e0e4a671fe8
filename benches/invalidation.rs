//! How long an admin write on one replica takes to reach another: two tollgates share one
//! Postgres (`TOLLGATE_TEST_POSTGRES`, default the local `test` database, a schema of its
//! own) and, for the Redis channel, the Redis on 127.0.0.1:6379. Each trial creates a key,
//! warms it in replica B's cache, revokes it through replica A's HTTP API and polls B's
//! Check until it refuses; the time from the revoke's answer to B's refusal is the lag
//! (polling every 200 µs adds at most that much). Prints p50, p99 and max per channel,
//! side by side. Run with `cargo bench --bench invalidation` (`TRIALS`, default 200).

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use sqlx::Executor;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::app::{App, Running};
use tollgate::config::Config;
use tollgate::secret::Secret;

const MASTER: &str = "bench-master-key-0123456789";

fn check_request(key: &str) -> CheckRequest {
    let headers = [
        ("x-api-key".to_owned(), key.to_owned()),
        ("content-type".to_owned(), "application/json".to_owned()),
    ]
    .into_iter()
    .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: "/v1/chat/completions".into(),
                    headers,
                    raw_body: br#"{"model":"gpt-4o-mini","messages":[]}"#.to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

async fn allowed(app: &App, key: &str) -> bool {
    let answer = app
        .gate
        .check(&check_request(key))
        .await
        .expect("a decision");
    answer.status.is_some_and(|s| s.code == 0)
}

async fn start(yaml: &str) -> (Arc<App>, Running) {
    let mut config = Config::parse_str("bench.yaml", yaml, &|_| None)
        .expect("bench config")
        .config;
    config.listen.grpc = "127.0.0.1:0".parse().unwrap();
    config.listen.http = "127.0.0.1:0".parse().unwrap();
    let app = App::build(config, &Secret::new(MASTER))
        .await
        .expect("build");
    let running = app.start().await.expect("start");
    (app, running)
}

/// Lags of `trials` revocations made through `a`, seen by `b`.
async fn lags(a: &Running, b: &App, trials: usize) -> Vec<Duration> {
    let http = reqwest::Client::new();
    let admin = format!("http://{}/admin/keys", a.http_addr);
    let mut lags = Vec::with_capacity(trials);
    for i in 0..trials {
        let created: serde_json::Value = http
            .post(&admin)
            .bearer_auth(MASTER)
            .json(&serde_json::json!({"name": format!("lag-{i}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let key = created["key"].as_str().unwrap().to_owned();
        let id = created["id"].as_str().unwrap().to_owned();
        assert!(allowed(b, &key).await, "a new key is allowed");
        let revoked = http
            .delete(format!("{admin}/{id}"))
            .bearer_auth(MASTER)
            .send()
            .await
            .unwrap();
        assert!(revoked.status().is_success());
        let started = Instant::now();
        while allowed(b, &key).await {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the revoke never arrived"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        lags.push(started.elapsed());
    }
    lags.sort();
    lags
}

fn summary(name: &str, lags: &[Duration]) -> String {
    let at = |q: f64| lags[((lags.len() as f64 * q) as usize).min(lags.len() - 1)];
    format!(
        "{name:<10} p50 {:>9.3?}  p99 {:>9.3?}  max {:>9.3?}  ({} trials)",
        at(0.5),
        at(0.99),
        lags[lags.len() - 1],
        lags.len()
    )
}

async fn fresh_schema() -> String {
    let base = std::env::var("TOLLGATE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("tg_bench_{}", std::process::id());
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
        .await
        .expect("the Postgres of TOLLGATE_TEST_POSTGRES");
    admin
        .execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}").as_str())
        .await
        .unwrap();
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}options=-c%20search_path%3D{schema}")
}

fn main() {
    let trials: usize = std::env::var("TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = fresh_schema().await;
        let mut lines = Vec::new();
        for (name, extra) in [
            ("postgres", String::new()),
            (
                "redis",
                format!(
                    "redis: {{ url: \"redis://127.0.0.1:6379\", key_prefix: \"bench:{}:\" }}\n",
                    std::process::id()
                ),
            ),
        ] {
            let yaml =
                format!("database: {{ url: \"{url}\" }}\ncache: {{ key_ttl: 300s }}\n{extra}");
            let (_a_app, a) = start(&yaml).await;
            let (b_app, b) = start(&yaml).await;
            assert_eq!(b_app.invalidator.channel(), name);
            lines.push(summary(name, &lags(&a, &b_app, trials).await));
            a.shutdown().await.unwrap();
            b.shutdown().await.unwrap();
        }
        println!("invalidation lag, revoke on A until B refuses:");
        for line in lines {
            println!("  {line}");
        }
    });
}
