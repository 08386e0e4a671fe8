//! Budget alerts end to end, on an in-process tollgate: thresholds raised once per period,
//! delivered to a webhook (a receiver in this test) signed with HMAC-SHA256, retried with
//! backoff, given up after the last attempt, and listed by `GET /admin/alerts`.
//!
//! The usage writer does not call the alerts yet, so the tests write usage with
//! `record_usage` and drive [`Alerts::on_written`] and [`Alerts::deliver_due`] themselves,
//! with explicit times: no sleeping, periods and backoff moved by hand.

mod common;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use common::tollgate::Tollgate;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate::clock::Clock;
use tollgate::secret::Secret;
use tollgate::store::{Alert, AlertFilter, AlertState, SpendKind};
use tollgate::usage::alerts::{retry_delay, Alerts, MAX_ATTEMPTS};
use tollgate::usage::{TokenUsage, UsageRecord, UsageSource};

const SECRET: &str = "whsec-test-0123456789";
/// A token in the webhook's URL, which must never show up in an alert's `last_error`.
const URL_TOKEN: &str = "url-token-s3cret";
const DAY: i64 = 86_400;

// ---- the webhook receiver ----------------------------------------------------------------

#[derive(Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the alert body is JSON")
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }
}

#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<Received>>>,
    /// Calls answered 500 before the receiver starts answering 200.
    fail_first: Arc<AtomicUsize>,
}

struct Webhook {
    addr: SocketAddr,
    state: Receiver,
}

impl Webhook {
    /// A receiver on 127.0.0.1:0 that answers 500 to the first `fail_first` calls, then 200.
    async fn start(fail_first: usize) -> Webhook {
        let state = Receiver::default();
        state.fail_first.store(fail_first, Ordering::SeqCst);
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Webhook { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}/hook?token={URL_TOKEN}", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }
}

async fn receive(State(state): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut received = state.received.lock().unwrap();
    received.push(Received { headers, body });
    if received.len() <= state.fail_first.load(Ordering::SeqCst) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

// ---- helpers -------------------------------------------------------------------------------

/// Unix seconds of an RFC 3339 time.
fn ts(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .timestamp()
}

fn rfc3339(t: i64) -> String {
    tollgate::domain::rfc3339::format(t)
}

/// HMAC-SHA256 after RFC 2104, written out here so the test does not trust the crate's.
fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut k = if key.len() > 64 {
        Sha256::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(64, 0);
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .to_vec()
}

fn record(request_id: &str, at: i64, cost_usd: f64) -> UsageRecord {
    UsageRecord {
        request_id: request_id.to_string(),
        at,
        key_id: None,
        user_id: None,
        team_id: None,
        org_id: None,
        model: Some("gpt-4o".to_string()),
        tokens: TokenUsage {
            input_tokens: 100,
            output_tokens: 10,
            ..TokenUsage::default()
        },
        cost_usd,
        status: 200,
        latency_ms: 50,
        estimated: false,
        source: UsageSource::ExtProc,
    }
}

fn of_key(key: &str, request_id: &str, at: i64, cost_usd: f64) -> UsageRecord {
    UsageRecord {
        key_id: Some(key.to_string()),
        ..record(request_id, at, cost_usd)
    }
}

fn alerts_for(tg: &Tollgate, webhook: Option<String>) -> Alerts {
    Alerts::new(
        tg.app.store.clone(),
        &[50, 75, 90, 100],
        webhook,
        Some(Secret::new(SECRET)),
        tg.app.metrics.clone(),
    )
}

/// Writes the records, then lets the alerts see them at `now`; answers how many are new.
async fn write(tg: &Tollgate, alerts: &Alerts, records: &[UsageRecord], now: i64) -> u64 {
    tg.app.store.record_usage(records).await.unwrap();
    alerts.on_written(records, now).await
}

/// Every alert, as (kind, id, threshold, period start), sorted.
async fn fired(tg: &Tollgate) -> Vec<(SpendKind, String, u32, i64)> {
    let mut all: Vec<_> = all_alerts(tg)
        .await
        .into_iter()
        .map(|a| (a.entity_kind, a.entity_id, a.threshold, a.period_start))
        .collect();
    all.sort();
    all
}

async fn all_alerts(tg: &Tollgate) -> Vec<Alert> {
    tg.app
        .store
        .list_alerts(AlertFilter::default())
        .await
        .unwrap()
}

/// The one alert there is.
async fn only_alert(tg: &Tollgate) -> Alert {
    let mut all = all_alerts(tg).await;
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

/// A key with a daily budget of `budget` USD; its id.
async fn key_with_budget(tg: &Tollgate, name: &str, budget: Option<f64>) -> String {
    tg.create_key(json!({"name": name, "max_budget": budget, "budget_duration": "1d"}))
        .await
        .0
}

// ---- raising -------------------------------------------------------------------------------

#[tokio::test]
async fn thresholds_fire_once_per_entity_and_period() {
    let tg = Tollgate::start("").await;
    let alerts = alerts_for(&tg, None);
    let a = key_with_budget(&tg, "a", Some(10.0)).await;
    let b = key_with_budget(&tg, "b", Some(10.0)).await;
    let unbudgeted = key_with_budget(&tg, "free", None).await;
    let day1 = ts("2031-03-10T00:00:00Z");
    let day2 = day1 + DAY;
    let t = day1 + 3600;
    let key = SpendKind::Key;

    // Crossing 50 % fires exactly one alert.
    assert_eq!(write(&tg, &alerts, &[of_key(&a, "a1", t, 5.0)], t).await, 1);
    assert_eq!(fired(&tg).await, [(key, a.clone(), 50, day1)]);

    // The same spend again (the batch replayed, a cost-free record) fires nothing.
    assert_eq!(
        write(&tg, &alerts, &[of_key(&a, "a1", t, 5.0)], t + 1).await,
        0
    );
    assert_eq!(
        write(&tg, &alerts, &[of_key(&a, "a0", t, 0.0)], t + 1).await,
        0
    );
    assert_eq!(
        alerts.on_written(&[of_key(&a, "a1", t, 5.0)], t + 2).await,
        0
    );

    // Crossing 50 and 75 at once fires both; a key without a budget fires nothing.
    let batch = [
        of_key(&b, "b1", t, 3.0),
        of_key(&b, "b2", t + 5, 4.6),
        of_key(&unbudgeted, "f1", t, 1000.0),
    ];
    assert_eq!(write(&tg, &alerts, &batch, t + 10).await, 2);
    assert_eq!(
        fired(&tg).await,
        [
            (key, a.clone(), 50, day1),
            (key, b.clone(), 50, day1),
            (key, b.clone(), 75, day1),
        ]
    );
    let b75 = all_alerts(&tg)
        .await
        .into_iter()
        .find(|x| x.entity_id == b && x.threshold == 75)
        .unwrap();
    assert_eq!((b75.spend_usd, b75.budget_usd), (7.6, 10.0));
    assert_eq!((b75.period_start, b75.period_end), (day1, day2));
    assert_eq!(b75.created_at, t + 10);
    assert_eq!(b75.state, AlertState::Pending);

    // Past 100 %: the rest of a's thresholds, once.
    assert_eq!(
        write(&tg, &alerts, &[of_key(&a, "a2", t + 60, 6.0)], t + 60).await,
        3
    );
    assert_eq!(
        write(&tg, &alerts, &[of_key(&a, "a3", t + 70, 6.0)], t + 70).await,
        0
    );

    // A new period (1d budgets reset at midnight UTC) fires again.
    let t2 = day2 + 60;
    assert_eq!(
        write(&tg, &alerts, &[of_key(&a, "a4", t2, 5.5)], t2).await,
        1
    );
    let day2_alerts: Vec<_> = fired(&tg)
        .await
        .into_iter()
        .filter(|f| f.3 == day2)
        .collect();
    assert_eq!(day2_alerts, [(key, a.clone(), 50, day2)]);

    // A record that arrives late, for yesterday, counts in yesterday's period.
    assert_eq!(
        write(&tg, &alerts, &[of_key(&b, "b3", t + 99, 2.0)], t2 + 5).await,
        1
    );
    assert!(fired(&tg).await.contains(&(key, b.clone(), 90, day1)));
    assert_eq!(all_alerts(&tg).await.len(), 8);
    tg.stop().await;
}

#[tokio::test]
async fn users_and_teams_have_alerts_too() {
    let tg = Tollgate::start("").await;
    let alerts = alerts_for(&tg, None);
    let (status, team) = tg
        .admin(
            Method::POST,
            "/admin/teams",
            Some(json!({"name": "research", "max_budget": 100.0})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{team}");
    let team = team["id"].as_str().unwrap().to_string();
    let user = tg.create_user("ada", "user").await;
    let (status, body) = tg
        .admin(
            Method::PATCH,
            &format!("/admin/users/{user}"),
            Some(json!({"max_budget": 4.0, "budget_duration": "7d"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Tuesday 2031-03-11; 7d periods start on Mondays, the team's (no duration) on the 1st.
    let t = ts("2031-03-11T12:00:00Z");
    let monday = ts("2031-03-10T00:00:00Z");
    let march = ts("2031-03-01T00:00:00Z");
    let r = UsageRecord {
        user_id: Some(user.clone()),
        team_id: Some(team.clone()),
        ..record("u1", t, 3.0)
    };
    // The user is at 75 % (50 and 75), the team at 3 % (nothing).
    assert_eq!(write(&tg, &alerts, &[r], t).await, 2);
    assert_eq!(
        fired(&tg).await,
        [
            (SpendKind::User, user.clone(), 50, monday),
            (SpendKind::User, user.clone(), 75, monday),
        ]
    );
    let r = UsageRecord {
        team_id: Some(team.clone()),
        ..record("t1", t, 88.0)
    };
    assert_eq!(write(&tg, &alerts, &[r], t).await, 3);
    let team_alerts = tg
        .app
        .store
        .list_alerts(AlertFilter {
            entity_kind: Some(SpendKind::Team),
            ..AlertFilter::default()
        })
        .await
        .unwrap();
    let mut thresholds: Vec<u32> = team_alerts.iter().map(|a| a.threshold).collect();
    thresholds.sort();
    assert_eq!(thresholds, [50, 75, 90]);
    assert!(team_alerts.iter().all(|a| a.period_start == march));
    assert!(team_alerts
        .iter()
        .all(|a| a.period_end == ts("2031-04-01T00:00:00Z")));
    tg.stop().await;
}

// ---- delivering ----------------------------------------------------------------------------

#[tokio::test]
async fn delivery_is_signed_and_retried_with_backoff() {
    let tg = Tollgate::start("").await;
    let hook = Webhook::start(3).await;
    let alerts = alerts_for(&tg, Some(hook.url()));
    let key = key_with_budget(&tg, "a", Some(10.0)).await;
    let day = ts("2031-03-10T00:00:00Z");
    let t = day + 3600;
    assert_eq!(
        write(&tg, &alerts, &[of_key(&key, "r1", t, 5.0)], t).await,
        1
    );

    // Attempt 1 at t fails (500): due again 1 s later.
    assert_eq!(alerts.deliver_due(t).await, 0);
    assert_eq!(hook.received().len(), 1);
    let alert = only_alert(&tg).await;
    assert_eq!(alert.state, AlertState::Pending);
    assert_eq!(alert.attempts, 1);
    assert_eq!(alert.next_attempt_at, Some(t + 1));
    let error = alert.last_error.clone().unwrap();
    assert!(error.contains("500"), "{error}");
    assert!(!error.contains(URL_TOKEN), "{error}");
    // Not due before then.
    assert_eq!(alerts.deliver_due(t).await, 0);
    assert_eq!(hook.received().len(), 1);
    // Attempt 2 at t+1 fails: due 2 s later; attempt 3 at t+3 fails: due 4 s later.
    assert_eq!(alerts.deliver_due(t + 1).await, 0);
    assert_eq!(only_alert(&tg).await.next_attempt_at, Some(t + 3));
    assert_eq!(alerts.deliver_due(t + 2).await, 0);
    assert_eq!(hook.received().len(), 2);
    assert_eq!(alerts.deliver_due(t + 3).await, 0);
    assert_eq!(only_alert(&tg).await.next_attempt_at, Some(t + 7));
    assert_eq!(alerts.deliver_due(t + 6).await, 0);
    assert_eq!(hook.received().len(), 3);
    // Attempt 4 at t+7: the webhook answers 200.
    assert_eq!(alerts.deliver_due(t + 7).await, 1);
    assert_eq!(hook.received().len(), 4);
    assert_eq!(alerts.deliver_due(t + 1000).await, 0);
    assert_eq!(
        hook.received().len(),
        4,
        "a delivered alert is not sent again"
    );

    // Every request: the same alert, signed over the exact body.
    let alert = only_alert(&tg).await;
    for request in hook.received() {
        let expected = format!(
            "sha256={}",
            hex::encode(hmac(SECRET.as_bytes(), &request.body))
        );
        assert_eq!(request.header("x-tollgate-signature"), expected);
        let forged = format!("sha256={}", hex::encode(hmac(b"other", &request.body)));
        assert_ne!(request.header("x-tollgate-signature"), forged);
        assert_eq!(request.header("x-tollgate-alert-id"), alert.id);
        assert!(request
            .header("content-type")
            .starts_with("application/json"));
        assert_eq!(
            request.json(),
            json!({
                "id": alert.id,
                "entity": {"kind": "key", "id": key},
                "threshold": 50,
                "spend_usd": 5.0,
                "budget_usd": 10.0,
                "period": {"start": rfc3339(day), "end": rfc3339(day + DAY)},
                "created_at": rfc3339(t),
            })
        );
    }

    // The API shows the delivery.
    let (status, body) = tg.admin(Method::GET, "/admin/alerts", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    let shown = &data[0];
    assert_eq!(shown["id"], alert.id.as_str());
    assert_eq!(shown["state"], "delivered");
    assert_eq!(shown["attempts"], 4);
    assert_eq!(shown["delivered_at"], rfc3339(t + 7).as_str());
    assert_eq!(shown["next_attempt_at"], Value::Null);
    assert!(shown["last_error"].as_str().unwrap().contains("500"));
    assert_eq!(shown["entity_kind"], "key");
    assert_eq!(shown["entity_id"], key.as_str());
    assert_eq!(shown["threshold"], 50);
    assert_eq!(shown["period_start"], rfc3339(day).as_str());
    // Raised once, three attempts failed and retried, the fourth delivered.
    for (result, want) in [
        ("raised", 1.0),
        ("retried", 3.0),
        ("delivered", 1.0),
        ("failed", 0.0),
    ] {
        let series = format!("tollgate_budget_alerts_total{{result=\"{result}\"}}");
        assert_eq!(tg.metric(&series).await, want, "{series}");
    }
    tg.stop().await;
}

#[tokio::test]
async fn permanent_failure_ends_failed() {
    let tg = Tollgate::start("").await;
    let hook = Webhook::start(usize::MAX).await;
    let alerts = alerts_for(&tg, Some(hook.url()));
    let key = key_with_budget(&tg, "a", Some(10.0)).await;
    let t = ts("2031-03-10T08:00:00Z");
    assert_eq!(
        write(&tg, &alerts, &[of_key(&key, "r1", t, 10.0)], t).await,
        4
    );

    let mut now = t;
    for attempt in 1..=MAX_ATTEMPTS {
        assert_eq!(alerts.deliver_due(now).await, 0);
        assert_eq!(hook.received().len() as u32, 4 * attempt);
        for alert in all_alerts(&tg).await {
            assert_eq!(alert.attempts, attempt);
            if attempt < MAX_ATTEMPTS {
                assert_eq!(alert.state, AlertState::Pending);
                assert_eq!(alert.next_attempt_at, Some(now + retry_delay(attempt)));
            } else {
                assert_eq!(alert.state, AlertState::Failed);
                assert_eq!(alert.next_attempt_at, None);
            }
        }
        // A moment before it is due again, nothing is sent.
        if attempt < MAX_ATTEMPTS {
            assert_eq!(alerts.deliver_due(now + retry_delay(attempt) - 1).await, 0);
            assert_eq!(hook.received().len() as u32, 4 * attempt);
        }
        now += retry_delay(attempt);
    }
    assert_eq!(alerts.deliver_due(now + 30 * DAY).await, 0);
    assert_eq!(hook.received().len() as u32, 4 * MAX_ATTEMPTS);

    let (status, body) = tg
        .admin(Method::GET, "/admin/alerts?state=failed", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 4);
    for shown in data {
        assert_eq!(shown["state"], "failed");
        assert_eq!(shown["attempts"], MAX_ATTEMPTS);
        let error = shown["last_error"].as_str().unwrap();
        assert!(error.contains("500"), "{error}");
        assert!(!error.contains(URL_TOKEN), "{error}");
        assert_eq!(shown["delivered_at"], Value::Null);
    }
    // Four alerts, each retried until its last attempt failed.
    let retried = 4.0 * f64::from(MAX_ATTEMPTS - 1);
    for (result, want) in [
        ("raised", 4.0),
        ("retried", retried),
        ("delivered", 0.0),
        ("failed", 4.0),
    ] {
        let series = format!("tollgate_budget_alerts_total{{result=\"{result}\"}}");
        assert_eq!(tg.metric(&series).await, want, "{series}");
    }
    let (_, pending) = tg
        .admin(Method::GET, "/admin/alerts?state=pending", None)
        .await;
    assert_eq!(pending["data"], json!([]));
    tg.stop().await;
}

#[tokio::test]
async fn unreachable_webhook_is_retried_without_leaking_the_url() {
    let tg = Tollgate::start("").await;
    // A port nobody listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let url = format!("http://{closed}/hook?token={URL_TOKEN}");
    let alerts = alerts_for(&tg, Some(url));
    let key = key_with_budget(&tg, "a", Some(1.0)).await;
    let t = ts("2031-03-10T08:00:00Z");
    assert_eq!(
        write(&tg, &alerts, &[of_key(&key, "r1", t, 0.5)], t).await,
        1
    );
    assert_eq!(alerts.deliver_due(t).await, 0);
    let alert = only_alert(&tg).await;
    assert_eq!(alert.state, AlertState::Pending);
    assert_eq!(alert.attempts, 1);
    let error = alert.last_error.unwrap();
    assert!(error.contains("connect"), "{error}");
    assert!(!error.contains(URL_TOKEN), "{error}");
    assert!(!error.contains(&closed.port().to_string()), "{error}");
    assert!(
        tg.metric("tollgate_backend_errors_total{backend=\"alert_webhook\"}")
            .await
            >= 1.0
    );
    tg.stop().await;
}

#[tokio::test]
async fn without_a_webhook_alerts_wait() {
    let tg = Tollgate::start("").await;
    let alerts = alerts_for(&tg, Some("   ".to_string()));
    let key = key_with_budget(&tg, "a", Some(1.0)).await;
    let t = ts("2031-03-10T08:00:00Z");
    assert_eq!(
        write(&tg, &alerts, &[of_key(&key, "r1", t, 0.5)], t).await,
        1
    );
    assert_eq!(alerts.deliver_due(t + DAY).await, 0);
    let alert = only_alert(&tg).await;
    assert_eq!((alert.state, alert.attempts), (AlertState::Pending, 0));
    tg.stop().await;
}

#[tokio::test]
async fn spawned_loop_delivers_and_stops() {
    let tg = Tollgate::start("").await;
    let hook = Webhook::start(0).await;
    // The loop reads the clock it is given: a manual one, years ahead of the system's.
    let now = ts("2031-03-10T08:00:00Z");
    let clock = Clock::manual(now * 1000);
    let alerts = Arc::new(alerts_for(&tg, Some(hook.url())).with_clock(clock.clone()));
    assert_eq!(alerts.now(), now);
    let key = key_with_budget(&tg, "a", Some(1.0)).await;
    assert_eq!(
        write(&tg, &alerts, &[of_key(&key, "r1", now, 0.5)], now).await,
        1
    );
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = alerts.clone().spawn(stop_rx);
    tokio::time::timeout(Duration::from_secs(10), async {
        while only_alert(&tg).await.state != AlertState::Delivered {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the loop delivers within seconds");
    assert_eq!(hook.received().len(), 1);
    assert_eq!(only_alert(&tg).await.delivered_at, Some(now));
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the loop stops when told")
        .unwrap();
    tg.stop().await;
}

// ---- the API -------------------------------------------------------------------------------

#[tokio::test]
async fn alerts_api_filters_and_access() {
    let tg = Tollgate::start("").await;
    let alerts = alerts_for(&tg, None);
    let a = key_with_budget(&tg, "a", Some(10.0)).await;
    let b = key_with_budget(&tg, "b", Some(10.0)).await;
    let t = ts("2031-03-10T08:00:00Z");
    write(&tg, &alerts, &[of_key(&a, "a1", t, 5.0)], t).await;
    write(&tg, &alerts, &[of_key(&b, "b1", t, 8.0)], t + 1).await;

    let get = |query: &'static str| {
        let tg = &tg;
        async move {
            tg.admin(Method::GET, &format!("/admin/alerts{query}"), None)
                .await
        }
    };
    let (status, body) = get("").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let thresholds: Vec<(String, u64)> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["entity_id"].as_str().unwrap().to_string(),
                x["threshold"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(thresholds.len(), 3);
    assert_eq!(
        thresholds[2],
        (a.clone(), 50),
        "newest first: {thresholds:?}"
    );

    let (status, body) = tg
        .admin(
            Method::GET,
            &format!("/admin/alerts?entity_kind=key&entity_id={a}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    let (_, body) = get("?state=pending&limit=2").await;
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    let (_, body) = get("?entity_kind=team").await;
    assert_eq!(body["data"], json!([]));
    let (_, body) = get("?entity_kind=org").await;
    assert_eq!(body["data"], json!([]));

    for bad in [
        "?state=sent",
        "?entity_kind=tenant",
        "?limit=0",
        "?colour=red",
    ] {
        let (status, body) = get(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{bad}: {body}");
    }

    // Readers only: no credential is 401, a key without `admin` is 403.
    let (status, _) = tg.call(Method::GET, "/admin/alerts", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, plain) = tg.create_key(json!({"name": "caller"})).await;
    let (status, body) = tg
        .call(Method::GET, "/admin/alerts", Some(&plain), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    tg.stop().await;
}
