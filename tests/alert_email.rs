//! Budget alerts by email, against a real SMTP server (aiosmtpd, tests/common/smtp.rs):
//! plain, STARTTLS and implicit TLS (smtps) with certificates from a test CA, a login, a
//! server that is down and comes back (retries deliver, once), each threshold mailed once,
//! and the webhook and email channels delivering independently.
//!
//! As in tests/alerts.rs, the tests write usage with `record_usage` and drive
//! [`Alerts::on_written`] and [`Alerts::deliver_due`] with explicit times; one test lets a
//! tollgate configured with `budgets.alert_email` deliver by itself.

mod common;

use common::pki::Pki;
use common::smtp::{Mode, Received, Smtp};
use common::tollgate::Tollgate;
use serde_json::json;
use std::time::{Duration, Instant};
use tollgate::config::AlertEmail;
use tollgate::store::{Alert, AlertFilter, AlertState};
use tollgate::usage::alerts::{Alerts, MAX_ATTEMPTS};
use tollgate::usage::{TokenUsage, UsageRecord, UsageSource};

const DAY: i64 = 86_400;
const FROM: &str = "Budget Alerts <alerts@tollgate.test>";
const TO: [&str; 2] = ["owner@example.com", "finance@example.com"];
const PASSWORD: &str = "smtp-s3cret-pw";

fn ts(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .timestamp()
}

fn rfc3339(t: i64) -> String {
    tollgate::domain::rfc3339::format(t)
}

fn of_key(key: &str, request_id: &str, at: i64, cost_usd: f64) -> UsageRecord {
    UsageRecord {
        request_id: request_id.to_string(),
        at,
        key_id: Some(key.to_string()),
        user_id: None,
        team_id: None,
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

fn email(smtp_url: String, ca_file: Option<String>) -> AlertEmail {
    AlertEmail {
        smtp_url,
        from: FROM.to_owned(),
        to: TO.iter().map(|t| t.to_string()).collect(),
        ca_file: ca_file.map(Into::into),
    }
}

/// Alerts mailed as `config` says (and posted to `webhook` when given).
fn alerts_for(tg: &Tollgate, webhook: Option<String>, config: &AlertEmail) -> Alerts {
    Alerts::new(
        tg.app.store.clone(),
        &[50, 75, 90, 100],
        webhook,
        None,
        tg.app.metrics.clone(),
    )
    .with_email(Some(config))
}

async fn write(tg: &Tollgate, alerts: &Alerts, records: &[UsageRecord], now: i64) -> u64 {
    tg.app.store.record_usage(records).await.unwrap();
    alerts.on_written(records, now).await
}

async fn all_alerts(tg: &Tollgate) -> Vec<Alert> {
    let mut all = tg
        .app
        .store
        .list_alerts(AlertFilter::default())
        .await
        .unwrap();
    all.sort_by_key(|a| a.threshold);
    all
}

/// A key named `name` with a daily budget of 10 USD; its id.
async fn key(tg: &Tollgate, name: &str) -> String {
    tg.create_key(json!({"name": name, "max_budget": 10.0, "budget_duration": "1d"}))
        .await
        .0
}

/// Raises the 50 % alert of a new key `name` at `t`; the key's id.
async fn one_alert(tg: &Tollgate, alerts: &Alerts, name: &str, t: i64) -> String {
    let key = key(tg, name).await;
    assert_eq!(
        write(tg, alerts, &[of_key(&key, &format!("{name}-1"), t, 5.0)], t).await,
        1
    );
    key
}

fn assert_is_alert_mail(mail: &Received, name: &str, key: &str, threshold: u32) {
    assert_eq!(mail.mail_from, "alerts@tollgate.test");
    assert_eq!(mail.rcpt_tos, TO);
    let subject = mail.header("Subject").expect("a subject");
    assert_eq!(
        subject,
        format!(
            "[tollgate] Budget alert: key \"{name}\" ({key}) reached {threshold}% of its budget"
        )
    );
    assert!(mail
        .header("From")
        .unwrap()
        .contains("alerts@tollgate.test"));
    assert!(mail.header("To").unwrap().contains("finance@example.com"));
    assert!(mail
        .header("Content-Type")
        .unwrap()
        .starts_with("text/plain"));
    let body = mail.body();
    for expected in [
        format!("Name:      {name}\n"),
        format!("Id:        {key}\n"),
        format!("Threshold: {threshold}%\n"),
        "Entity:    key\n".to_owned(),
        "Budget:    10.00 USD\n".to_owned(),
    ] {
        assert!(body.contains(&expected), "no {expected:?} in\n{body}");
    }
}

// ---- the channel and its rules ---------------------------------------------------------------

#[tokio::test]
async fn each_threshold_is_mailed_once_over_plain_smtp() {
    let tg = Tollgate::start("").await;
    let smtp = Smtp::start(Mode::Plain, None);
    let config = email(format!("smtp://127.0.0.1:{}", smtp.port), None);
    let alerts = alerts_for(&tg, None, &config);
    let key = key(&tg, "research").await;
    let day = ts("2031-03-10T00:00:00Z");
    let t = day + 3600;

    // 50 % and 75 % at once: two alerts, two mails.
    assert_eq!(
        write(&tg, &alerts, &[of_key(&key, "r1", t, 7.6)], t).await,
        2
    );
    assert_eq!(alerts.deliver_due(t).await, 2);
    let mails = smtp.received();
    assert_eq!(mails.len(), 2, "{mails:?}");
    let mut by_threshold: Vec<(u32, &Received)> = mails
        .iter()
        .map(|m| {
            let subject = m.header("Subject").unwrap();
            let t = if subject.contains("reached 50%") {
                50
            } else {
                75
            };
            (t, m)
        })
        .collect();
    by_threshold.sort_by_key(|(t, _)| *t);
    assert_eq!(
        by_threshold.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        [50, 75]
    );
    for (threshold, mail) in &by_threshold {
        assert_is_alert_mail(mail, "research", &key, *threshold);
        assert!(!mail.tls, "a plain server offers no STARTTLS");
        assert_eq!(mail.login, None);
        let body = mail.body();
        assert!(
            body.contains("Spend:     7.60 USD (76.0% of the budget)\n"),
            "{body}"
        );
        assert!(
            body.contains(&format!(
                "Period:    {} to {}\n",
                rfc3339(day),
                rfc3339(day + DAY)
            )),
            "{body}"
        );
    }

    // The same spend again, later batches, later rounds: no mail more.
    assert_eq!(
        write(&tg, &alerts, &[of_key(&key, "r1", t, 7.6)], t + 5).await,
        0
    );
    assert_eq!(alerts.deliver_due(t + 10).await, 0);
    assert_eq!(alerts.deliver_due(t + 3600).await, 0);
    assert_eq!(smtp.received().len(), 2);

    // 90 % is a new threshold: one more mail, naming it.
    assert_eq!(
        write(&tg, &alerts, &[of_key(&key, "r2", t + 60, 1.5)], t + 60).await,
        1
    );
    assert_eq!(alerts.deliver_due(t + 61).await, 1);
    let mails = smtp.received();
    assert_eq!(mails.len(), 3);
    assert_is_alert_mail(&mails[2], "research", &key, 90);

    // Each mail has its alert's Message-ID; the email channel is delivered, the webhook's
    // (none configured) still pending.
    let alerts_now = all_alerts(&tg).await;
    assert_eq!(alerts_now.len(), 3);
    for alert in &alerts_now {
        assert_eq!(alert.email.state, AlertState::Delivered, "{alert:?}");
        assert_eq!(alert.email.attempts, 1);
        assert_eq!(alert.email.next_attempt_at, None);
        assert_eq!(alert.state, AlertState::Pending);
        let id = format!("<{}.budget-alert@tollgate>", alert.id);
        assert_eq!(
            mails
                .iter()
                .filter(|m| m.header("Message-ID").as_deref() == Some(id.as_str()))
                .count(),
            1,
            "{id}"
        );
    }
    assert_eq!(
        tg.metric("tollgate_budget_alert_emails_total{result=\"delivered\"}")
            .await,
        3.0
    );
    tg.stop().await;
}

#[tokio::test]
async fn starttls_is_used_when_offered_with_a_verified_certificate_and_a_login() {
    let pki = Pki::new();
    let tg = Tollgate::start("").await;
    let smtp = Smtp::with_login(Mode::StartTls, Some(&pki), "alerts@corp", PASSWORD, false);
    let t = ts("2031-03-10T08:00:00Z");

    // The test CA trusted: STARTTLS, then the login (user and password percent-encoded).
    let url = format!("smtp://alerts%40corp:{PASSWORD}@localhost:{}", smtp.port);
    let alerts = alerts_for(&tg, None, &email(url, Some(pki.ca())));
    let key = one_alert(&tg, &alerts, "tls-key", t).await;
    assert_eq!(
        alerts.deliver_due(t).await,
        1,
        "{:?}",
        all_alerts(&tg).await[0].email
    );
    let mails = smtp.received();
    assert_eq!(mails.len(), 1);
    assert!(mails[0].tls, "STARTTLS was offered and must be used");
    assert_eq!(mails[0].login.as_deref(), Some("alerts@corp"));
    assert_is_alert_mail(&mails[0], "tls-key", &key, 50);
    tg.stop().await;
}

#[tokio::test]
async fn certificates_are_verified() {
    let pki = Pki::new();
    let tg = Tollgate::start("").await;
    let starttls = Smtp::start(Mode::StartTls, Some(&pki));
    let smtps = Smtp::start(Mode::Implicit, Some(&pki));
    let elsewhere = Smtp::start_on(Mode::Implicit, Some(&pki), "127.0.0.2");
    let t = ts("2031-03-10T08:00:00Z");
    let cases = [
        // The public roots do not know the test CA…
        (format!("smtp://localhost:{}", starttls.port), None),
        (format!("smtps://localhost:{}", smtps.port), None),
        // …nor does another CA…
        (
            format!("smtp://localhost:{}", starttls.port),
            Some(pki.other_ca()),
        ),
        // …and the certificate is for localhost and 127.0.0.1, not 127.0.0.2.
        (
            format!("smtps://127.0.0.2:{}", elsewhere.port),
            Some(pki.ca()),
        ),
    ];
    for (i, (url, ca)) in cases.into_iter().enumerate() {
        let alerts = alerts_for(&tg, None, &email(url.clone(), ca.clone()));
        one_alert(&tg, &alerts, &format!("k{i}"), t).await;
        assert_eq!(alerts.deliver_due(t).await, 0, "{url} {ca:?}");
        let failed: Vec<Alert> = all_alerts(&tg)
            .await
            .into_iter()
            .filter(|a| a.email.attempts > 0 && a.email.state == AlertState::Pending)
            .collect();
        assert_eq!(failed.len(), 1, "{url}: {failed:?}");
        let error = failed[0].email.last_error.clone().unwrap();
        assert!(
            error.contains("certificate") || error.contains("Certificate"),
            "{url} {ca:?}: {error}"
        );
        // Settle it, so the next case sees only its own alert.
        tg.app
            .store
            .mark_delivery(
                tollgate::store::AlertChannel::Email,
                &failed[0].id,
                tollgate::store::AlertOutcome::Failed {
                    error: "done".into(),
                },
            )
            .await
            .unwrap();
    }
    assert!(starttls.received().is_empty());
    assert!(smtps.received().is_empty());
    assert!(elsewhere.received().is_empty());
    tg.stop().await;
}

#[tokio::test]
async fn smtps_speaks_tls_from_the_start() {
    let pki = Pki::new();
    let tg = Tollgate::start("").await;
    let smtp = Smtp::with_login(Mode::Implicit, Some(&pki), "u", PASSWORD, false);
    let url = format!("smtps://u:{PASSWORD}@127.0.0.1:{}", smtp.port);
    let alerts = alerts_for(&tg, None, &email(url, Some(pki.ca())));
    let t = ts("2031-03-10T08:00:00Z");
    let key = one_alert(&tg, &alerts, "implicit", t).await;
    assert_eq!(
        alerts.deliver_due(t).await,
        1,
        "{:?}",
        all_alerts(&tg).await[0].email
    );
    let mails = smtp.received();
    assert_eq!(mails.len(), 1);
    assert!(mails[0].tls);
    assert_eq!(mails[0].login.as_deref(), Some("u"));
    assert_is_alert_mail(&mails[0], "implicit", &key, 50);
    tg.stop().await;
}

#[tokio::test]
async fn no_password_over_a_plain_connection_and_tls_required_means_it() {
    let tg = Tollgate::start("").await;
    // A server without STARTTLS that would take a login in the clear.
    let smtp = Smtp::with_login(Mode::Plain, None, "u", PASSWORD, true);
    let t = ts("2031-03-10T08:00:00Z");
    let cases = [
        (
            format!("smtp://u:{PASSWORD}@127.0.0.1:{}", smtp.port),
            "password is not sent over a plain connection",
        ),
        (
            format!("smtp://127.0.0.1:{}?tls=required", smtp.port),
            "does not offer STARTTLS",
        ),
    ];
    for (i, (url, expected)) in cases.into_iter().enumerate() {
        let alerts = alerts_for(&tg, None, &email(url, None));
        let key = one_alert(&tg, &alerts, &format!("k{i}"), t).await;
        assert_eq!(alerts.deliver_due(t).await, 0);
        let alert = all_alerts(&tg)
            .await
            .into_iter()
            .find(|a| a.entity_id == key)
            .unwrap();
        let error = alert.email.last_error.unwrap();
        assert!(error.contains(expected), "{error}");
        assert!(!error.contains(PASSWORD), "{error}");
        assert_eq!(alert.email.attempts, 1);
    }
    assert!(smtp.received().is_empty());
    tg.stop().await;
}

// ---- retries and independence ---------------------------------------------------------------

#[tokio::test]
async fn a_server_down_then_up_gets_the_mail_once() {
    let tg = Tollgate::start("").await;
    let mut smtp = Smtp::start(Mode::Plain, None);
    let config = email(format!("smtp://127.0.0.1:{}", smtp.port), None);
    let alerts = alerts_for(&tg, None, &config);
    let t = ts("2031-03-10T08:00:00Z");
    let key = one_alert(&tg, &alerts, "down", t).await;
    smtp.stop();

    // Refused: retried after 1 s, then 2 s.
    assert_eq!(alerts.deliver_due(t).await, 0);
    let alert = all_alerts(&tg).await.remove(0);
    assert_eq!(alert.email.state, AlertState::Pending);
    assert_eq!(alert.email.attempts, 1);
    assert_eq!(alert.email.next_attempt_at, Some(t + 1));
    let error = alert.email.last_error.clone().unwrap();
    assert!(error.contains("cannot connect"), "{error}");
    assert_eq!(
        alerts.deliver_due(t).await,
        0,
        "not due again before its time"
    );
    assert_eq!(alerts.deliver_due(t + 1).await, 0);
    assert_eq!(all_alerts(&tg).await[0].email.next_attempt_at, Some(t + 3));

    // Back up: the next attempt delivers, once.
    smtp.restart();
    assert_eq!(alerts.deliver_due(t + 2).await, 0, "not due yet");
    assert_eq!(alerts.deliver_due(t + 3).await, 1);
    for later in [t + 4, t + 100, t + DAY] {
        assert_eq!(alerts.deliver_due(later).await, 0);
    }
    let mails = smtp.received();
    assert_eq!(mails.len(), 1);
    assert_is_alert_mail(&mails[0], "down", &key, 50);
    let alert = all_alerts(&tg).await.remove(0);
    assert_eq!(alert.email.state, AlertState::Delivered);
    assert_eq!(alert.email.attempts, 3);
    assert_eq!(alert.email.delivered_at, Some(t + 3));
    for (result, want) in [("retried", 2.0), ("delivered", 1.0), ("failed", 0.0)] {
        let series = format!("tollgate_budget_alert_emails_total{{result=\"{result}\"}}");
        assert_eq!(tg.metric(&series).await, want, "{series}");
    }
    assert_eq!(
        tg.metric("tollgate_backend_errors_total{backend=\"alert_email\"}")
            .await,
        2.0
    );
    tg.stop().await;
}

#[tokio::test]
async fn a_server_that_never_answers_ends_failed() {
    let tg = Tollgate::start("").await;
    let mut smtp = Smtp::start(Mode::Plain, None);
    let config = email(format!("smtp://127.0.0.1:{}", smtp.port), None);
    smtp.stop();
    let alerts = alerts_for(&tg, None, &config);
    let mut now = ts("2031-03-10T08:00:00Z");
    one_alert(&tg, &alerts, "never", now).await;
    for _ in 0..MAX_ATTEMPTS {
        assert_eq!(alerts.deliver_due(now).await, 0);
        now += 600;
    }
    let alert = all_alerts(&tg).await.remove(0);
    assert_eq!(alert.email.state, AlertState::Failed);
    assert_eq!(alert.email.attempts, MAX_ATTEMPTS);
    assert_eq!(alert.email.next_attempt_at, None);
    // Given up: the server coming back gets nothing.
    smtp.restart();
    assert_eq!(alerts.deliver_due(now + DAY).await, 0);
    assert!(smtp.received().is_empty());
    assert_eq!(
        tg.metric("tollgate_budget_alert_emails_total{result=\"failed\"}")
            .await,
        1.0
    );
    tg.stop().await;
}

#[tokio::test]
async fn a_failing_webhook_does_not_resend_the_mail() {
    let tg = Tollgate::start("").await;
    let smtp = Smtp::start(Mode::Plain, None);
    let config = email(format!("smtp://127.0.0.1:{}", smtp.port), None);
    // A webhook nobody listens on.
    let dead_hook = format!("http://127.0.0.1:{}/hook", common::envoy::free_port());
    let alerts = alerts_for(&tg, Some(dead_hook), &config);
    let t = ts("2031-03-10T08:00:00Z");
    one_alert(&tg, &alerts, "both", t).await;

    // The mail goes out, the webhook fails; its retries send no mail.
    assert_eq!(alerts.deliver_due(t).await, 1);
    for later in [t + 1, t + 3, t + 7, t + 15] {
        assert_eq!(alerts.deliver_due(later).await, 0);
    }
    assert_eq!(smtp.received().len(), 1);
    let alert = all_alerts(&tg).await.remove(0);
    assert_eq!(alert.email.state, AlertState::Delivered);
    assert_eq!(alert.email.attempts, 1);
    assert_eq!(alert.state, AlertState::Pending);
    assert_eq!(alert.attempts, 5);
    tg.stop().await;
}

#[tokio::test]
async fn a_failing_mail_does_not_resend_the_webhook() {
    let tg = Tollgate::start("").await;
    let mut smtp = Smtp::start(Mode::Plain, None);
    let config = email(format!("smtp://127.0.0.1:{}", smtp.port), None);
    // A webhook receiver that counts what it takes.
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    smtp.stop();
    let alerts = alerts_for(&tg, Some(hook), &config);
    let t2 = ts("2031-03-12T08:00:00Z");
    one_alert(&tg, &alerts, "both-2", t2).await;
    assert_eq!(alerts.deliver_due(t2).await, 1, "the webhook delivers");
    for later in [t2 + 1, t2 + 3, t2 + 7] {
        assert_eq!(alerts.deliver_due(later).await, 0);
    }
    assert_eq!(received.load(std::sync::atomic::Ordering::SeqCst), 1);
    let second = all_alerts(&tg).await.remove(0);
    assert_eq!(second.state, AlertState::Delivered);
    assert_eq!(second.attempts, 1);
    assert_eq!(second.email.state, AlertState::Pending);
    assert_eq!(second.email.attempts, 4);
    tg.stop().await;
}

// ---- configured, end to end -------------------------------------------------------------------

#[tokio::test]
async fn a_tollgate_configured_with_alert_email_mails_by_itself() {
    let pki = Pki::new();
    let smtp = Smtp::start(Mode::StartTls, Some(&pki));
    let yaml = format!(
        "budgets:\n  alert_email:\n    smtp_url: smtp://localhost:{}\n    from: \"{FROM}\"\n    to: [{}]\n    ca_file: {}\n",
        smtp.port,
        TO.join(", "),
        pki.ca()
    );
    let tg = Tollgate::start(&yaml).await;
    let key = key(&tg, "configured").await;
    let now = tg.app.alerts.now();
    let records = [of_key(&key, "c1", now, 5.0)];
    tg.app.store.record_usage(&records).await.unwrap();
    assert_eq!(tg.app.alerts.on_written(&records, now).await, 1);
    // The delivery loop runs every second.
    let deadline = Instant::now() + Duration::from_secs(15);
    while smtp.received().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mails = smtp.received();
    assert_eq!(mails.len(), 1, "the loop mailed the alert");
    assert!(mails[0].tls);
    assert_is_alert_mail(&mails[0], "configured", &key, 50);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(smtp.received().len(), 1, "and only once");
    tg.stop().await;
}
