//! The in-process usage queue and writer, and the usage reports over what it wrote: records
//! pushed are written once (idempotent on request id), survive a Postgres outage (the
//! writer retries until the store takes them), and are drained on shutdown; reports group
//! and total them exactly, for admins and for a user's own usage.

mod common;

use common::tollgate::Tollgate;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;
use tollgate::store::{GroupBy, UsageQuery};
use tollgate::usage::{TokenUsage, UsageRecord, UsageSource};

fn record(
    id: &str,
    at: i64,
    user: Option<&str>,
    model: &str,
    input: u64,
    cost: f64,
) -> UsageRecord {
    UsageRecord {
        request_id: id.to_owned(),
        at,
        key_id: None,
        user_id: user.map(str::to_owned),
        team_id: None,
        org_id: None,
        model: Some(model.to_owned()),
        tokens: TokenUsage {
            input_tokens: input,
            output_tokens: input / 2,
            cached_input_tokens: 0,
            reasoning_tokens: 0,
        },
        cost_usd: cost,
        status: 200,
        latency_ms: 12,
        estimated: false,
        source: UsageSource::ExtProc,
    }
}

/// Polls the store until `want` requests are reported, or fails after 10 s.
async fn wait_for_requests(t: &Tollgate, want: u64) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        let report = t
            .app
            .store
            .usage_report(UsageQuery::new(GroupBy::Model))
            .await;
        if let Ok(report) = report {
            last = serde_json::to_value(&report).unwrap();
            if report.total.requests == want {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never saw {want} requests; last report {last}");
}

const T: i64 = 1_795_000_000; // 2026-11-18T11:06:40Z

#[tokio::test]
async fn pushed_records_are_written_once() {
    let t = Tollgate::start("usage: { batch_interval: 20ms, batch_size: 7 }\n").await;
    for i in 0..30 {
        t.app
            .usage
            .push(record(&format!("r{i}"), T, None, "gpt-4o", 100, 0.001))
            .await
            .unwrap();
    }
    // The same request ids again (both ingestion paths, a redelivery): counted once.
    for i in 0..10 {
        t.app
            .usage
            .push(record(&format!("r{i}"), T, None, "gpt-4o", 100, 0.001))
            .await
            .unwrap();
    }
    let report = wait_for_requests(&t, 30).await;
    assert_eq!(report["total"]["input_tokens"], 3000);
    // Let the duplicates be processed, then the metrics account for every push.
    for _ in 0..200 {
        if t.metric("tollgate_usage_records_total{result=\"duplicate\"}")
            .await
            == 10.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        t.metric("tollgate_usage_records_total{result=\"written\"}")
            .await,
        30.0
    );
    assert_eq!(
        t.metric("tollgate_usage_records_total{result=\"duplicate\"}")
            .await,
        10.0
    );
    assert_eq!(t.metric("tollgate_usage_queue_depth").await, 0.0);
    // Tokens and spend count each request once (no model catalogue: the label is `other`).
    assert_eq!(
        t.metric("tollgate_usage_tokens_total{kind=\"input\",model=\"other\"}")
            .await,
        3000.0
    );
    assert_eq!(
        t.metric("tollgate_usage_tokens_total{kind=\"output\",model=\"other\"}")
            .await,
        1500.0
    );
    let spend = t.metric("tollgate_spend_usd_total{model=\"other\"}").await;
    assert!((spend - 0.03).abs() < 1e-9, "{spend}");
    t.stop().await;
}

#[tokio::test]
async fn records_survive_a_database_outage() {
    let common::chaos::ProxiedPostgres {
        proxy,
        url: proxied,
        ..
    } = common::chaos::proxied_postgres().await;
    let t = Tollgate::start(&format!(
        "database: {{ url: \"{proxied}\", timeout: 300ms }}\nusage: {{ batch_interval: 20ms }}\n"
    ))
    .await;
    for i in 0..5 {
        t.app
            .usage
            .push(record(&format!("before{i}"), T, None, "m", 10, 0.0))
            .await
            .unwrap();
    }
    wait_for_requests(&t, 5).await;

    proxy.cut();
    for i in 0..20 {
        t.app
            .usage
            .push(record(&format!("during{i}"), T, None, "m", 10, 0.0))
            .await
            .unwrap();
    }
    // The writer keeps them and retries.
    for _ in 0..100 {
        if t.metric("tollgate_usage_records_total{result=\"retried\"}")
            .await
            > 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        t.metric("tollgate_usage_records_total{result=\"retried\"}")
            .await
            > 0.0
    );
    assert_eq!(t.metric("tollgate_usage_queue_depth").await, 20.0);
    // The oldest record waits as long as the outage lasts.
    let lag = t.metric("tollgate_usage_queue_lag_seconds").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = t.metric("tollgate_usage_queue_lag_seconds").await;
    assert!(later >= lag + 0.5, "the lag grows: {lag} then {later}");

    proxy.restore();
    wait_for_requests(&t, 25).await;
    assert_eq!(t.metric("tollgate_usage_queue_depth").await, 0.0);
    assert_eq!(t.metric("tollgate_usage_queue_lag_seconds").await, 0.0);
    t.stop().await;
}

#[tokio::test]
async fn shutdown_drains_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("u.db").display());
    // A long interval: only the drain at shutdown writes these.
    let yaml = format!("database: {{ url: \"{db}\" }}\nusage: {{ batch_interval: 1h }}\n");
    let t = Tollgate::start(&yaml).await;
    for i in 0..12 {
        t.app
            .usage
            .push(record(&format!("s{i}"), T, None, "m", 1, 0.0))
            .await
            .unwrap();
    }
    let store = t.app.store.clone();
    t.stop().await;
    let report = store
        .usage_report(UsageQuery::new(GroupBy::Model))
        .await
        .unwrap();
    assert_eq!(report.total.requests, 12);
}

#[tokio::test]
async fn reports_group_and_total_exactly_for_admins_and_users() {
    let t = Tollgate::start(
        "auth:\n  session: { secret: 0123456789abcdef0123456789abcdef }\nusage: { batch_interval: 20ms }\n",
    )
    .await;
    let (status, ada) = t
        .admin(
            Method::POST,
            "/admin/users",
            Some(json!({"username": "ada", "email": "ada@example.com", "role": "user", "password": "Correct-Horse-9"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{ada}");
    let ada = ada["id"].as_str().unwrap().to_owned();
    let day = 86_400;
    let rows = [
        record("a1", T, Some(&ada), "gpt-4o", 100, 0.25),
        record("a2", T + 60, Some(&ada), "gpt-4o-mini", 40, 0.125),
        record("a3", T + day, Some(&ada), "gpt-4o", 10, 0.5),
        record("b1", T, None, "gpt-4o", 7, 1.0),
    ];
    for r in rows {
        t.app.usage.push(r).await.unwrap();
    }
    wait_for_requests(&t, 4).await;

    let (status, report) = t
        .admin(Method::GET, "/admin/usage?group_by=model", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        report["data"],
        json!([
            {"group": "gpt-4o", "requests": 3, "input_tokens": 117, "output_tokens": 58, "cost_usd": 1.75},
            {"group": "gpt-4o-mini", "requests": 1, "input_tokens": 40, "output_tokens": 20, "cost_usd": 0.125},
        ])
    );
    assert_eq!(
        report["total"],
        json!({"requests": 4, "input_tokens": 157, "output_tokens": 78, "cost_usd": 1.875})
    );
    let (status, report) = t
        .admin(
            Method::GET,
            &format!("/admin/usage?group_by=user&since={}&until={}", T, T + 60),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["total"]["requests"], 3);
    let (status, body) = t
        .admin(Method::GET, "/admin/usage?group_by=week", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Ada's own reports.
    let (status, tokens) = t
        .call(
            Method::POST,
            "/v1/login",
            None,
            Some(json!({"username": "ada", "password": "Correct-Horse-9"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let (status, own) = t
        .call(Method::GET, "/v1/user/usage", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{own}");
    assert_eq!(own["total"]["requests"], 3, "only ada's records: {own}");
    let (_, daily) = t
        .call(Method::GET, "/v1/user/usage/daily", Some(&token), None)
        .await;
    assert_eq!(
        daily["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["group"].clone())
            .collect::<Vec<_>>(),
        vec![json!("2026-11-18"), json!("2026-11-19")]
    );
    let (_, monthly) = t
        .call(Method::GET, "/v1/user/usage/monthly", Some(&token), None)
        .await;
    assert_eq!(
        monthly["data"],
        json!([{"group": "2026-11", "requests": 3, "input_tokens": 150, "output_tokens": 75, "cost_usd": 0.875}])
    );
    // Users read their own usage, not the admin report.
    let (status, _) = t
        .call(Method::GET, "/admin/usage", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    t.stop().await;
}

#[tokio::test]
async fn the_cli_prints_reports_as_csv_json_and_table() {
    let t = Tollgate::start("usage: { batch_interval: 20ms }\n").await;
    t.app
        .usage
        .push(record("c1", T, None, "gpt-4o", 100, 0.5))
        .await
        .unwrap();
    t.app
        .usage
        .push(record("c2", T, None, "gpt-4o-mini", 10, 0.25))
        .await
        .unwrap();
    wait_for_requests(&t, 2).await;
    let url = format!("http://{}", t.http);
    let cli = |format: &'static str| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
                .args([
                    "usage",
                    "report",
                    "--by",
                    "model",
                    "--since",
                    "2026-11-01",
                    "--format",
                    format,
                ])
                .args(["--url", &url, "--token", common::tollgate::MASTER_KEY])
                .env("TOLLGATE_LOG", "warn")
                .output()
                .expect("the tollgate binary runs");
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap()
        })
    };
    assert_eq!(
        cli("csv").await.unwrap(),
        "group,requests,input_tokens,output_tokens,cost_usd\n\
         gpt-4o,1,100,50,0.5\n\
         gpt-4o-mini,1,10,5,0.25\n\
         TOTAL,2,110,55,0.75\n"
    );
    let json: Value = serde_json::from_str(&cli("json").await.unwrap()).unwrap();
    assert_eq!(json["total"]["cost_usd"], 0.75);
    let table = cli("table").await.unwrap();
    assert!(
        table.lines().next().unwrap().starts_with("GROUP"),
        "{table}"
    );
    assert!(table.contains("TOTAL"), "{table}");
    t.stop().await;
}

/// `usage.retention`: at start, raw records older than it are deleted, and reports still
/// count them, from the daily rollup.
#[tokio::test]
async fn records_past_retention_are_deleted_and_still_reported() {
    use tollgate::store::sql::{ConnectOptions, SqlStore};
    use tollgate::store::{Store, UsageStore};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("retention.db").display());
    let raw = SqlStore::connect(&url, &ConnectOptions::default())
        .await
        .unwrap();
    raw.migrate().await.unwrap();
    let now = chrono::Utc::now().timestamp();
    let records = [
        record("old-1", now - 40 * 86_400, None, "gpt-4o", 100, 0.5),
        record("old-2", now - 31 * 86_400, None, "gpt-4o", 100, 0.25),
        record("recent", now - 3600, None, "gpt-4o", 100, 0.125),
    ];
    assert_eq!(raw.record_usage(&records).await.unwrap(), 3);

    let t = Tollgate::start(&format!(
        "database: {{ url: \"{url}\" }}\nusage: {{ retention: 30d }}\n"
    ))
    .await;
    let mut left = i64::MAX;
    for _ in 0..200 {
        left = sqlx::query_scalar("SELECT COUNT(*) FROM usage_records")
            .fetch_one(raw.pool())
            .await
            .unwrap();
        if left == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 1, "the two records past retention are deleted");
    let report = t
        .app
        .store
        .usage_report(UsageQuery::new(GroupBy::Day))
        .await
        .unwrap();
    assert_eq!(report.data.len(), 3);
    assert_eq!(report.total.requests, 3);
    assert_eq!(report.total.input_tokens, 300);
    assert_eq!(report.total.cost_usd, 0.875);
    t.stop().await;
    raw.close().await;
}
