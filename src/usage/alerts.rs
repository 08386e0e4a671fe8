//! Budget alerts: when a key's, user's or team's spend reaches a threshold of its
//! `max_budget` (`budgets.alert_thresholds`, default 50, 75, 90 and 100 %), one alert per
//! entity, budget period and threshold is posted to `budgets.alert_webhook`.
//!
//! Alerts go through an outbox (the `alerts` table), in two steps that fail independently:
//!
//! - **Raise** ([`Alerts::on_written`], called by the usage writer after a batch commits):
//!   for each entity with a budget that the batch charged, the spend of the period the
//!   records fall in is read and every threshold it has reached is raised. The store keeps
//!   one alert per (entity, period start, threshold), so raising again is a no-op: alerts
//!   fire once per period per threshold whatever the number of batches, retries or
//!   replicas. Evaluation looks at the level of spend, not at what a batch added, so a raise
//!   that failed (database down) is made good by the entity's next batch in that period.
//! - **Deliver** ([`Alerts::deliver_due`], every second from [`Alerts::spawn`]) on each
//!   configured channel, the webhook and email (`budgets.alert_email`), each with its own
//!   state, attempts and backoff in the alert's row: each channel delivers an alert once (at
//!   least once) and a channel failing never makes the other send again. Webhook: due alerts
//!   are claimed and POSTed as JSON to the webhook, signed with HMAC-SHA256
//!   (`x-tollgate-signature: sha256=<hex>` over the exact body) when a signing secret is
//!   configured, and named by `x-tollgate-alert-id` (receivers deduplicate on it: delivery is
//!   at least once). A 2xx answer delivers; anything else (another status, a timeout, a
//!   refused connection) is retried after 1 s, doubling up to 10 min, and after
//!   [`MAX_ATTEMPTS`] attempts the alert is `failed`. Without a webhook nothing is posted and
//!   alerts stay `pending` (they are still listed by `GET /admin/alerts`). Email: a
//!   plain-text mail ([`mail_text`]) naming the entity (kind, name and id), threshold, spend,
//!   budget and period, through [`crate::mail::Mailer`]; the server taking the message
//!   delivers, anything else is retried and given up like the webhook's attempts.
//!
//! Nothing here reads the clock: callers pass `now` (Unix seconds), so tests drive periods
//! and backoff by hand.

use super::{period, UsageRecord};
use crate::clock::Clock;
use crate::config::AlertEmail;
use crate::domain::{rfc3339, Timestamp};
use crate::mail::Mailer;
use crate::metrics::{AlertResult, Metrics};
use crate::secret::Secret;
use crate::store::{
    Alert, AlertChannel, AlertCrossing, AlertOutcome, SharedStore, SpendKind, StoreError,
};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Attempts before an alert is given up as `failed`. With the backoff below the last one is
/// made about 27 minutes after the first.
pub const MAX_ATTEMPTS: u32 = 12;

/// Wait before the first retry; it doubles after each failure up to [`RETRY_MAX_SECS`].
pub const RETRY_FIRST_SECS: i64 = 1;
pub const RETRY_MAX_SECS: i64 = 600;

/// Alerts claimed per store round trip, and posted concurrently at most.
const BATCH: i64 = 100;
const CONCURRENCY: usize = 8;

/// One POST to the webhook may take this long (well below the store's claim on the alert,
/// [`crate::store::ALERT_CLAIM_SECS`]).
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
const WEBHOOK_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often [`Alerts::spawn`] looks for due alerts.
const TICK: Duration = Duration::from_secs(1);

/// The header carrying the body's signature, `sha256=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "x-tollgate-signature";
/// The header carrying the alert's id (the same as the body's `id`).
pub const ALERT_ID_HEADER: &str = "x-tollgate-alert-id";

/// Raises and delivers budget alerts. Share it as `Arc<Alerts>`.
pub struct Alerts {
    store: SharedStore,
    /// Sorted, distinct, above 0.
    thresholds: Vec<u32>,
    /// The webhook, or why it cannot be used (kept as each failed attempt's error).
    webhook: Option<Result<reqwest::Url, String>>,
    signing_secret: Option<Secret>,
    /// The mailer of `budgets.alert_email`, or why it cannot be used.
    email: Option<Result<Mailer, String>>,
    http: reqwest::Client,
    metrics: Metrics,
    /// The time [`Alerts::spawn`] delivers at.
    clock: Clock,
}

impl Alerts {
    /// `thresholds` are whole percents (`budgets.alert_thresholds`; 0 and repeats are
    /// ignored); `webhook` is `budgets.alert_webhook` (None or empty: alerts are raised but
    /// not posted); with a `signing_secret` every request carries `x-tollgate-signature`.
    pub fn new(
        store: SharedStore,
        thresholds: &[u8],
        webhook: Option<String>,
        signing_secret: Option<Secret>,
        metrics: Metrics,
    ) -> Alerts {
        let thresholds: BTreeSet<u32> = thresholds
            .iter()
            .filter(|t| **t > 0)
            .map(|t| u32::from(*t))
            .collect();
        let webhook = webhook
            .map(|url| url.trim().to_string())
            .filter(|url| !url.is_empty())
            .map(|url| parse_webhook(&url));
        if let Some(Err(e)) = &webhook {
            tracing::error!(error = %e, "budgets.alert_webhook is unusable; alerts will fail");
        }
        let http = reqwest::Client::builder()
            .timeout(WEBHOOK_TIMEOUT)
            .connect_timeout(WEBHOOK_CONNECT_TIMEOUT)
            // A redirect is a failure: the signed body goes only where it was configured to.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with rustls builds");
        Alerts {
            store,
            thresholds: thresholds.into_iter().collect(),
            webhook,
            signing_secret: signing_secret.filter(|s| !s.is_empty()),
            email: None,
            http,
            metrics,
            clock: Clock::System,
        }
    }

    /// The clock [`Alerts::spawn`] reads `now` from (default: the system clock). Give it the
    /// clock the writer passes to [`Alerts::on_written`], so alerts raised in a test's manual
    /// time fall due in the same time.
    pub fn with_clock(mut self, clock: Clock) -> Alerts {
        self.clock = clock;
        self
    }

    /// Mails alerts too, as `budgets.alert_email` says (None: no mail). A mailer that cannot
    /// be set up (its CA file gone since the configuration was checked) is logged, and every
    /// attempt fails with that reason until the alerts are given up, as for a bad webhook.
    pub fn with_email(mut self, email: Option<&AlertEmail>) -> Alerts {
        self.email = email.map(Mailer::new);
        if let Some(Err(e)) = &self.email {
            tracing::error!(error = %e, "budgets.alert_email is unusable; alert mail will fail");
        }
        self
    }

    /// `now` in Unix seconds, from the clock of [`Alerts::with_clock`].
    pub fn now(&self) -> Timestamp {
        self.clock.now_ms().div_euclid(1000)
    }

    /// The thresholds in force, ascending.
    pub fn thresholds(&self) -> &[u32] {
        &self.thresholds
    }

    /// Raises the alerts that a written batch of usage records may have triggered, seen at
    /// `now`: for each key, user and team the records charged (a non-zero cost) that has a
    /// `max_budget`, the spend of each budget period the records fall in is compared with
    /// the thresholds. Answers how many alerts are new. Never fails: a store error is logged
    /// and counted (`tollgate_backend_errors_total{backend="database"}`), and the entity's
    /// next batch evaluates it again.
    pub async fn on_written(&self, records: &[UsageRecord], now: Timestamp) -> u64 {
        if self.thresholds.is_empty() {
            return 0;
        }
        // (kind, id) → moments of its records, deduplicated.
        let mut touched: BTreeMap<(SpendKind, &str), BTreeSet<Timestamp>> = BTreeMap::new();
        for record in records.iter().filter(|r| r.cost_usd > 0.0) {
            for (kind, id) in crate::admission::payers::of_record(record) {
                touched.entry((kind, id)).or_default().insert(record.at);
            }
        }
        // The budgets of every entity, then the spend of every period of theirs that the
        // batch touched (one spend read per period, whatever the number of records in it):
        // a few queries per batch, not a few per entity.
        let entities: Vec<(SpendKind, &str)> = touched.keys().copied().collect();
        let budgets = match self.store.budgets(&entities).await {
            Ok(budgets) => budgets,
            Err(e) => {
                self.store_failed(&e, "cannot read budgets for budget alerts");
                return 0;
            }
        };
        let mut periods = Vec::new();
        let mut measured = Vec::new();
        for (((kind, id), moments), budget) in touched.iter().zip(budgets) {
            let Some(budget) = budget else { continue };
            let mut starts: BTreeMap<Timestamp, Timestamp> = BTreeMap::new();
            for &at in moments {
                let (start, end) =
                    period::window(period::effective(budget.duration), at, budget.anchor);
                starts.entry(start).or_insert(end);
            }
            for (start, end) in starts {
                periods.push((*kind, *id, start, end));
                measured.push(budget.budget_usd);
            }
        }
        if periods.is_empty() {
            return 0;
        }
        let spends = match self.store.spends(&periods).await {
            Ok(spends) => spends,
            Err(e) => {
                self.store_failed(&e, "cannot read spend for budget alerts");
                return 0;
            }
        };
        let mut crossings = Vec::new();
        for (((kind, id, start, end), budget_usd), spend) in
            periods.into_iter().zip(measured).zip(spends)
        {
            for threshold in crossed(&self.thresholds, spend, budget_usd) {
                crossings.push(AlertCrossing {
                    entity_kind: kind,
                    entity_id: id.to_string(),
                    period_start: start,
                    period_end: end,
                    threshold,
                    spend_usd: spend,
                    budget_usd,
                    created_at: now,
                });
            }
        }
        if crossings.is_empty() {
            return 0;
        }
        match self.store.raise_alerts(&crossings).await {
            Ok(new) => {
                self.metrics.budget_alerts(AlertResult::Raised, new);
                if new > 0 {
                    tracing::info!(alerts = new, "budget alerts raised");
                }
                new
            }
            Err(e) => {
                self.store_failed(&e, "cannot raise budget alerts");
                0
            }
        }
    }

    /// Delivers the alerts due at `now` on each configured channel (the webhook, email) and
    /// records each outcome on its channel; answers how many deliveries succeeded (an alert
    /// delivered on both channels counts twice). Without a channel, does nothing.
    pub async fn deliver_due(&self, now: Timestamp) -> usize {
        let (webhook, email) =
            futures::future::join(self.deliver_webhook(now), self.deliver_email(now)).await;
        webhook + email
    }

    async fn deliver_webhook(&self, now: Timestamp) -> usize {
        let Some(webhook) = &self.webhook else {
            return 0;
        };
        let Some(due) = self.due(AlertChannel::Webhook, now).await else {
            return 0;
        };
        futures::stream::iter(due)
            .map(|alert| self.webhook_one(webhook, alert, now))
            .buffer_unordered(CONCURRENCY)
            .filter(|delivered| futures::future::ready(*delivered))
            .count()
            .await
    }

    async fn deliver_email(&self, now: Timestamp) -> usize {
        let Some(mailer) = &self.email else {
            return 0;
        };
        let Some(due) = self.due(AlertChannel::Email, now).await else {
            return 0;
        };
        if due.is_empty() {
            return 0;
        }
        // The entities' names, one query per kind for the whole batch. Without them no mail
        // is sent: the claims run out and the alerts are tried again.
        let entities: Vec<(SpendKind, &str)> = due
            .iter()
            .map(|a| (a.entity_kind, a.entity_id.as_str()))
            .collect();
        let names = match self.store.names(&entities).await {
            Ok(names) => names,
            Err(e) => {
                self.store_failed(&e, "cannot read the names for budget alert mail");
                return 0;
            }
        };
        futures::stream::iter(due)
            .map(|alert| self.email_one(mailer, &names, alert, now))
            .buffer_unordered(CONCURRENCY)
            .filter(|delivered| futures::future::ready(*delivered))
            .count()
            .await
    }

    /// One attempt at one alert on the webhook; true when delivered.
    async fn webhook_one(
        &self,
        webhook: &Result<reqwest::Url, String>,
        alert: Alert,
        now: Timestamp,
    ) -> bool {
        let result = match webhook {
            Ok(url) => self.post(url, &alert).await,
            Err(e) => Err(e.clone()),
        };
        self.settle(AlertChannel::Webhook, &alert, result, now)
            .await
    }

    /// One attempt at one alert by email; true when delivered.
    async fn email_one(
        &self,
        mailer: &Result<Mailer, String>,
        names: &HashMap<(SpendKind, String), String>,
        alert: Alert,
        now: Timestamp,
    ) -> bool {
        let result = match mailer {
            Ok(mailer) => {
                let name = names.get(&(alert.entity_kind, alert.entity_id.clone()));
                let (subject, body) = mail_text(&alert, name.map(String::as_str));
                mailer.send(&message_id(&alert), &subject, body).await
            }
            Err(e) => Err(e.clone()),
        };
        self.settle(AlertChannel::Email, &alert, result, now).await
    }

    /// The alerts due on `channel`, claimed; None when the store cannot say.
    async fn due(&self, channel: AlertChannel, now: Timestamp) -> Option<Vec<Alert>> {
        match self.store.due_deliveries(channel, now, BATCH).await {
            Ok(due) => Some(due),
            Err(e) => {
                self.store_failed(&e, "cannot read due budget alerts");
                None
            }
        }
    }

    /// Records the result of one attempt at one alert on `channel`; true when delivered.
    async fn settle(
        &self,
        channel: AlertChannel,
        alert: &Alert,
        result: Result<(), String>,
        now: Timestamp,
    ) -> bool {
        let attempts = match channel {
            AlertChannel::Webhook => alert.attempts,
            AlertChannel::Email => alert.email.attempts,
        };
        let attempt = attempts.saturating_add(1);
        let outcome = match &result {
            Ok(()) => {
                self.metrics.alert_delivery(channel, AlertResult::Delivered);
                AlertOutcome::Delivered { at: now }
            }
            Err(error) => {
                self.metrics.backend_error(match channel {
                    AlertChannel::Webhook => "alert_webhook",
                    AlertChannel::Email => "alert_email",
                });
                if attempt >= MAX_ATTEMPTS {
                    self.metrics.alert_delivery(channel, AlertResult::Failed);
                    tracing::error!(
                        alert.id = %alert.id, %channel, attempts = attempt, %error,
                        "budget alert not delivered; giving up"
                    );
                    AlertOutcome::Failed {
                        error: error.clone(),
                    }
                } else {
                    self.metrics.alert_delivery(channel, AlertResult::Retried);
                    if attempt == 1 {
                        tracing::warn!(
                            alert.id = %alert.id, %channel, %error,
                            "cannot deliver a budget alert; retrying with backoff"
                        );
                    }
                    AlertOutcome::Retry {
                        error: error.clone(),
                        next_attempt_at: now.saturating_add(retry_delay(attempt)),
                    }
                }
            }
        };
        if let Err(e) = self.store.mark_delivery(channel, &alert.id, outcome).await {
            // The claim runs out and the alert is tried again (the receiver may see it twice).
            self.store_failed(&e, "cannot record a budget alert's delivery");
        }
        result.is_ok()
    }

    /// POSTs one alert; the error says what went wrong, without the URL (it may carry a
    /// token) or the secret.
    async fn post(&self, url: &reqwest::Url, alert: &Alert) -> Result<(), String> {
        let body = payload(alert).to_string();
        let mut request = self
            .http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(ALERT_ID_HEADER, &alert.id);
        if let Some(secret) = &self.signing_secret {
            request = request.header(
                SIGNATURE_HEADER,
                signature(secret.expose().as_bytes(), body.as_bytes()),
            );
        }
        match request.body(body).send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("the webhook answered HTTP {}", response.status())),
            Err(e) => Err(describe_send_error(e)),
        }
    }

    /// Delivers due alerts every second, at [`Alerts::now`], until `stop` turns true (or its
    /// sender is gone). Without a webhook and without email the task ends at once.
    pub fn spawn(self: Arc<Self>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(async move {
            if self.webhook.is_none() && self.email.is_none() {
                return;
            }
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|stop| *stop) => return,
                }
                tokio::select! {
                    _ = self.deliver_due(self.now()) => {}
                    // An attempt cut short is retried once its claim runs out.
                    _ = stop.wait_for(|stop| *stop) => return,
                }
            }
        })
    }

    fn store_failed(&self, error: &StoreError, what: &'static str) {
        self.metrics.backend_error("database");
        tracing::warn!(%error, "{what}");
    }
}

/// Relative slack in [`crossed`], so that spend summed from float costs that lands a hair
/// below a threshold (0.1 + 0.2 + … ) still counts as reaching it.
const SLACK: f64 = 1e-9;

/// The thresholds (ascending, whole percents) that `spend_usd` has reached of `budget_usd`:
/// those with `spend >= threshold % of budget`. Nothing while nothing is spent (so a zero
/// budget alerts at its first cent, every threshold at once); nothing for a negative or
/// non-finite amount.
pub fn crossed(thresholds: &[u32], spend_usd: f64, budget_usd: f64) -> Vec<u32> {
    if !(spend_usd.is_finite() && budget_usd.is_finite()) || spend_usd <= 0.0 || budget_usd < 0.0 {
        return Vec::new();
    }
    thresholds
        .iter()
        .copied()
        .filter(|&t| t > 0 && spend_usd * 100.0 >= budget_usd * f64::from(t) * (1.0 - SLACK))
        .collect()
}

/// The wait before the attempt after failed attempt number `attempt` (1-based): 1 s, 2 s,
/// 4 s, … up to 10 min.
pub fn retry_delay(attempt: u32) -> i64 {
    let doublings = attempt.saturating_sub(1).min(30);
    RETRY_FIRST_SECS
        .saturating_mul(1i64 << doublings)
        .min(RETRY_MAX_SECS)
}

/// The JSON body posted for an alert:
/// `{"id","entity":{"kind","id"},"threshold","spend_usd","budget_usd",
/// "period":{"start","end"},"created_at"}` (times RFC 3339).
pub fn payload(alert: &Alert) -> serde_json::Value {
    serde_json::json!({
        "id": alert.id,
        "entity": { "kind": alert.entity_kind, "id": alert.entity_id },
        "threshold": alert.threshold,
        "spend_usd": alert.spend_usd,
        "budget_usd": alert.budget_usd,
        "period": {
            "start": rfc3339::format(alert.period_start),
            "end": rfc3339::format(alert.period_end),
        },
        "created_at": rfc3339::format(alert.created_at),
    })
}

/// The `Message-ID` of an alert's mail (without angle brackets): the same on every attempt,
/// so a mail sent twice (delivery is at least once) can be told apart from a new alert.
pub fn message_id(alert: &Alert) -> String {
    format!("{}.budget-alert@tollgate", alert.id)
}

/// The subject and plain-text body of an alert's mail; `name` is the entity's (a key's,
/// user's or team's name), None when it has none or is gone.
pub fn mail_text(alert: &Alert, name: Option<&str>) -> (String, String) {
    let kind = alert.entity_kind.as_str();
    let id = &alert.entity_id;
    let named = match name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(name) => format!("{kind} \"{name}\" ({id})"),
        None => format!("{kind} {id} (no name)"),
    };
    let subject = format!(
        "[tollgate] Budget alert: {named} reached {}% of its budget",
        alert.threshold
    );
    let percent = if alert.budget_usd > 0.0 {
        format!(
            " ({:.1}% of the budget)",
            alert.spend_usd / alert.budget_usd * 100.0
        )
    } else {
        String::new()
    };
    let body = format!(
        "The spend of {named} has reached {threshold}% of its budget.\n\
         \n\
         Entity:    {kind}\n\
         Name:      {name}\n\
         Id:        {id}\n\
         Threshold: {threshold}%\n\
         Spend:     {spend} USD{percent}\n\
         Budget:    {budget} USD\n\
         Period:    {start} to {end}\n\
         Raised at: {created}\n\
         Alert id:  {alert_id}\n",
        threshold = alert.threshold,
        name = name
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .unwrap_or("(none)"),
        spend = usd(alert.spend_usd),
        budget = usd(alert.budget_usd),
        start = rfc3339::format(alert.period_start),
        end = rfc3339::format(alert.period_end),
        created = rfc3339::format(alert.created_at),
        alert_id = alert.id,
    );
    (subject, body)
}

/// An amount in USD with cents, and more digits when it has them (0.0042 stays 0.0042).
fn usd(amount: f64) -> String {
    let cents = format!("{amount:.2}");
    let precise = format!("{amount:.6}");
    let precise = precise.trim_end_matches('0');
    if precise.len() > cents.len() {
        precise.to_string()
    } else {
        cents
    }
}

/// The `x-tollgate-signature` value of a body: `sha256=` and the lowercase hex
/// HMAC-SHA256 of the exact body bytes with the secret.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_sha256(secret, body)))
}

/// HMAC-SHA256 (RFC 2104 with SHA-256: 64-byte blocks; longer keys are hashed first).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block_key = [0u8; BLOCK];
    if key.len() > BLOCK {
        block_key[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block_key[..key.len()].copy_from_slice(key);
    }
    let mut inner_pad = [0x36u8; BLOCK];
    let mut outer_pad = [0x5cu8; BLOCK];
    for i in 0..BLOCK {
        inner_pad[i] ^= block_key[i];
        outer_pad[i] ^= block_key[i];
    }
    let inner = Sha256::new()
        .chain_update(inner_pad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(outer_pad)
        .chain_update(inner)
        .finalize()
        .into()
}

fn parse_webhook(url: &str) -> Result<reqwest::Url, String> {
    match reqwest::Url::parse(url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(url),
        Ok(url) => Err(format!(
            "budgets.alert_webhook must be an http or https URL, not `{}:`",
            url.scheme()
        )),
        Err(e) => Err(format!("budgets.alert_webhook is not a URL: {e}")),
    }
}

/// A send error as `last_error`: its kind and cause, never the URL.
fn describe_send_error(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "the webhook did not answer in time"
    } else if e.is_connect() {
        "cannot connect to the webhook"
    } else {
        "the request to the webhook failed"
    };
    let e = e.without_url();
    // The innermost cause says most (e.g. "Connection refused (os error 111)").
    let mut root: Option<&dyn std::error::Error> = None;
    let mut next = std::error::Error::source(&e);
    while let Some(cause) = next {
        root = Some(cause);
        next = cause.source();
    }
    match root {
        Some(cause) => format!("{kind}: {cause}"),
        None => kind.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: [u32; 4] = [50, 75, 90, 100];

    #[test]
    fn thresholds_reached_by_spend() {
        assert_eq!(crossed(&DEFAULT, 0.0, 10.0), Vec::<u32>::new());
        assert_eq!(crossed(&DEFAULT, 4.99, 10.0), Vec::<u32>::new());
        assert_eq!(crossed(&DEFAULT, 5.0, 10.0), vec![50]);
        assert_eq!(crossed(&DEFAULT, 7.5, 10.0), vec![50, 75]);
        assert_eq!(crossed(&DEFAULT, 9.99, 10.0), vec![50, 75, 90]);
        assert_eq!(crossed(&DEFAULT, 10.0, 10.0), vec![50, 75, 90, 100]);
        assert_eq!(crossed(&DEFAULT, 25.0, 10.0), vec![50, 75, 90, 100]);
        assert_eq!(crossed(&[100, 150], 12.0, 10.0), vec![100]);
        assert_eq!(crossed(&[100, 150], 15.0, 10.0), vec![100, 150]);
        assert_eq!(crossed(&[], 15.0, 10.0), Vec::<u32>::new());
    }

    #[test]
    fn float_sums_a_hair_below_still_reach() {
        // 0.1 + 0.2 + 0.2 sums to 0.5000000000000001 and 0.7 - 0.2 to 0.49999999999999994.
        let below = 0.7 - 0.2;
        assert!(below < 0.5);
        assert_eq!(crossed(&DEFAULT, below, 1.0), vec![50]);
        assert_eq!(crossed(&DEFAULT, 0.1 + 0.2 + 0.2, 1.0), vec![50]);
        // …but a real shortfall does not.
        assert_eq!(crossed(&DEFAULT, 0.4999, 1.0), Vec::<u32>::new());
    }

    #[test]
    fn zero_and_odd_budgets() {
        assert_eq!(crossed(&DEFAULT, 0.0, 0.0), Vec::<u32>::new());
        assert_eq!(crossed(&DEFAULT, 0.01, 0.0), vec![50, 75, 90, 100]);
        assert_eq!(crossed(&DEFAULT, 1.0, -1.0), Vec::<u32>::new());
        assert_eq!(crossed(&DEFAULT, f64::NAN, 1.0), Vec::<u32>::new());
        assert_eq!(crossed(&DEFAULT, 1.0, f64::INFINITY), Vec::<u32>::new());
        assert_eq!(crossed(&DEFAULT, -1.0, 1.0), Vec::<u32>::new());
    }

    #[test]
    fn backoff_doubles_to_ten_minutes() {
        let delays: Vec<i64> = (1..=12).map(retry_delay).collect();
        assert_eq!(
            delays,
            vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]
        );
        assert_eq!(retry_delay(0), 1);
        assert_eq!(retry_delay(u32::MAX), 600);
    }

    fn unhex(text: &str) -> Vec<u8> {
        hex::decode(text).unwrap()
    }

    /// RFC 4231, test cases 1–4, 6 and 7 (5 truncates the output).
    #[test]
    fn hmac_sha256_rfc_4231() {
        let cases: [(Vec<u8>, Vec<u8>, &str); 6] = [
            (
                vec![0x0b; 20],
                b"Hi There".to_vec(),
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                vec![0xaa; 20],
                vec![0xdd; 50],
                "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            ),
            (
                unhex("0102030405060708090a0b0c0d0e0f10111213141516171819"),
                vec![0xcd; 50],
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            ),
            (
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                vec![0xaa; 131],
                b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.".to_vec(),
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (key, data, expected) in cases {
            assert_eq!(hex::encode(hmac_sha256(&key, &data)), expected);
        }
        // A key of exactly one block is used as it is.
        assert_eq!(hmac_sha256(&[7; 64], b"x").len(), 32);
    }

    #[test]
    fn signature_header_value() {
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn payload_shape() {
        let alert = Alert {
            id: "a-1".into(),
            entity_kind: SpendKind::Team,
            entity_id: "team-1".into(),
            period_start: 1_780_000_000 - 1_780_000_000 % 86_400,
            period_end: 1_780_000_000 - 1_780_000_000 % 86_400 + 86_400,
            threshold: 75,
            spend_usd: 7.5,
            budget_usd: 10.0,
            created_at: 1_780_000_000,
            state: crate::store::AlertState::Pending,
            attempts: 3,
            next_attempt_at: Some(1_780_000_100),
            last_error: Some("boom".into()),
            delivered_at: None,
            email: crate::store::AlertDelivery {
                state: crate::store::AlertState::Pending,
                attempts: 0,
                next_attempt_at: Some(1_780_000_000),
                last_error: None,
                delivered_at: None,
            },
        };
        assert_eq!(
            payload(&alert),
            serde_json::json!({
                "id": "a-1",
                "entity": {"kind": "team", "id": "team-1"},
                "threshold": 75,
                "spend_usd": 7.5,
                "budget_usd": 10.0,
                "period": {"start": "2026-05-28T00:00:00Z", "end": "2026-05-29T00:00:00Z"},
                "created_at": "2026-05-28T20:26:40Z",
            })
        );
    }

    #[test]
    fn mail_names_the_entity_threshold_spend_budget_and_period() {
        let day = 1_780_000_000 - 1_780_000_000 % 86_400;
        let alert = Alert {
            id: "a-1".into(),
            entity_kind: SpendKind::Team,
            entity_id: "team-1".into(),
            period_start: day,
            period_end: day + 86_400,
            threshold: 75,
            spend_usd: 7.5,
            budget_usd: 10.0,
            created_at: 1_780_000_000,
            state: crate::store::AlertState::Pending,
            attempts: 0,
            next_attempt_at: None,
            last_error: None,
            delivered_at: None,
            email: crate::store::AlertDelivery {
                state: crate::store::AlertState::Pending,
                attempts: 0,
                next_attempt_at: None,
                last_error: None,
                delivered_at: None,
            },
        };
        let (subject, body) = mail_text(&alert, Some("research"));
        assert_eq!(
            subject,
            "[tollgate] Budget alert: team \"research\" (team-1) reached 75% of its budget"
        );
        assert_eq!(
            body,
            "The spend of team \"research\" (team-1) has reached 75% of its budget.\n\
             \n\
             Entity:    team\n\
             Name:      research\n\
             Id:        team-1\n\
             Threshold: 75%\n\
             Spend:     7.50 USD (75.0% of the budget)\n\
             Budget:    10.00 USD\n\
             Period:    2026-05-28T00:00:00Z to 2026-05-29T00:00:00Z\n\
             Raised at: 2026-05-28T20:26:40Z\n\
             Alert id:  a-1\n"
        );
        let (subject, body) = mail_text(&alert, None);
        assert!(
            subject.contains("team team-1 (no name) reached 75%"),
            "{subject}"
        );
        assert!(body.contains("Name:      (none)\n"), "{body}");
        // A zero budget has no percent; small amounts keep their digits.
        let tiny = Alert {
            spend_usd: 0.0042,
            budget_usd: 0.0,
            ..alert
        };
        let (_, body) = mail_text(&tiny, Some(" "));
        assert!(body.contains("Spend:     0.0042 USD\n"), "{body}");
        assert!(body.contains("Budget:    0.00 USD\n"), "{body}");
        assert!(body.contains("Name:      (none)\n"), "{body}");
        assert_eq!(message_id(&tiny), "a-1.budget-alert@tollgate");
    }

    #[test]
    fn webhook_urls() {
        assert!(parse_webhook("https://hooks.example.com/x?token=1").is_ok());
        assert!(parse_webhook("http://127.0.0.1:9/alerts").is_ok());
        assert!(parse_webhook("ftp://example.com")
            .unwrap_err()
            .contains("http or https"));
        assert!(parse_webhook("not a url").is_err());
    }
}
