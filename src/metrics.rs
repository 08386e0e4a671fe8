//! Prometheus metrics: every name in one place, registered once, no per-key labels.
//!
//! Recorded through the `metrics` facade into a `metrics-exporter-prometheus` recorder. No
//! global recorder is installed: each [`Metrics`] (one per [`crate::app::App`]) builds a
//! `PrometheusRecorder` of its own and registers handles on it, so that several tollgates
//! in one process (tests) keep their own numbers. The label combinations of the hot path
//! (Check decisions by code, cache results) are registered up front: a Check finds its
//! counters by index and does no label lookup for its metrics. Counters that alerts read
//! with `increase()` are registered at start too, so their first increment is seen.
//!
//! A few values are sampled when `/metrics` is rendered rather than kept current on every
//! change: the usage queue's lag (from the enqueue time of the oldest record waiting, see
//! [`Oldest`]) and the open reservations (counted by their owners, see
//! [`Metrics::count_reservations`]).
//!
//! Histograms are recorded lock-free and folded into their buckets when rendered or by
//! [`Metrics::upkeep`] (run every [`UPKEEP_EVERY`] by [`Metrics::spawn_upkeep`]).

use crate::config::FailureMode;
use crate::decision::DenyReason;
use crate::store::AlertChannel;
use ::metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::PrometheusRecorder;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

pub const CHECK_TOTAL: &str = "tollgate_check_total";
pub const CHECK_DURATION: &str = "tollgate_check_duration_seconds";
pub const CACHE_REQUESTS: &str = "tollgate_cache_requests_total";
pub const BACKEND_ERRORS: &str = "tollgate_backend_errors_total";
pub const USAGE_QUEUE_DEPTH: &str = "tollgate_usage_queue_depth";
pub const USAGE_QUEUE_LAG: &str = "tollgate_usage_queue_lag_seconds";
pub const REDIS_UP: &str = "tollgate_redis_up";
pub const FAILURE_MODE: &str = "tollgate_failure_mode_total";
pub const RESERVATIONS_OPEN: &str = "tollgate_reservations_open";
pub const USAGE_RECORDS: &str = "tollgate_usage_records_total";
pub const USAGE_TOKENS: &str = "tollgate_usage_tokens_total";
pub const SPEND_USD: &str = "tollgate_spend_usd_total";
pub const BUDGET_ALERTS: &str = "tollgate_budget_alerts_total";
pub const BUDGET_ALERT_EMAILS: &str = "tollgate_budget_alert_emails_total";
pub const INVALIDATION_LAG: &str = "tollgate_invalidation_lag_seconds";

/// Check latency buckets: a cached decision takes microseconds, one through Redis or the
/// database milliseconds, a timeout up to a second.
const CHECK_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Invalidation lag buckets: milliseconds within a data centre, the contract's 1 s above.
const INVALIDATION_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// How often [`Metrics::spawn_upkeep`] folds recorded histogram samples into buckets, so
/// that their memory stays bounded when nothing scrapes.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The `backend` label values of `tollgate_backend_errors_total`.
const BACKENDS: [&str; 5] = ["database", "redis", "oidc", "alert_webhook", "alert_email"];
/// The `result` label values of `tollgate_usage_records_total`.
const USAGE_RESULTS: [&str; 4] = ["written", "duplicate", "retried", "dead_letter"];

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

/// The `result` of a cache look-up (`tollgate_cache_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    /// A remembered "not found".
    NegativeHit,
}

/// The counters of one cache, by result, registered once.
#[derive(Clone)]
pub struct CacheCounters {
    hit: Counter,
    miss: Counter,
    negative_hit: Counter,
}

impl CacheCounters {
    pub fn count(&self, result: CacheResult) {
        match result {
            CacheResult::Hit => &self.hit,
            CacheResult::Miss => &self.miss,
            CacheResult::NegativeHit => &self.negative_hit,
        }
        .increment(1);
    }
}

/// How a Check ended, for `tollgate_check_total{decision,code}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    /// `allow`, `ok`.
    Allow,
    /// `deny`, the denial's code.
    Deny(DenyReason),
    /// `error`, `unavailable` (a transient backend failure) or `internal`.
    Error { transient: bool },
}

/// `tollgate_check_total`, one handle per (decision, code).
struct CheckCounters {
    allow: Counter,
    /// By [`DenyReason::index`].
    deny: [Counter; DenyReason::ALL.len()],
    unavailable: Counter,
    internal: Counter,
}

/// Budget alerts, by what became of them (`tollgate_budget_alerts_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertResult {
    /// Newly raised (a threshold reached for the first time in a period).
    Raised,
    /// The webhook took it (2xx).
    Delivered,
    /// An attempt failed; it will be tried again.
    Retried,
    /// The last attempt failed: given up.
    Failed,
}

/// The enqueue time of the oldest record a usage queue holds (Unix ms), kept by the queue's
/// writer and read when `/metrics` is rendered: `tollgate_usage_queue_lag_seconds` is the
/// age of the oldest of all queues' records, so it grows while a writer is stuck.
#[derive(Clone, Default)]
pub struct Oldest(Arc<AtomicI64>);

impl Oldest {
    /// `None`: the queue holds nothing.
    pub fn set(&self, enqueued_ms: Option<i64>) {
        self.0
            .store(enqueued_ms.unwrap_or(0).max(0), Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<i64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|&ms| ms > 0)
    }
}

/// Counts open reservations when `/metrics` is rendered.
type ReservationCount = Box<dyn Fn() -> u64 + Send + Sync>;

struct Inner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    check: CheckCounters,
    check_duration: Histogram,
    /// By [`BACKENDS`].
    backend_errors: [Counter; BACKENDS.len()],
    usage_queue_depth: Gauge,
    usage_queue_lag: Gauge,
    /// By [`USAGE_RESULTS`].
    usage_records: [Counter; USAGE_RESULTS.len()],
    budget_alerts: [Counter; 4],
    /// Email deliveries by [`AlertResult`] index less one (delivered, retried, failed).
    budget_alert_emails: [Counter; 3],
    reservations_open: Gauge,
    invalidation_lag: Histogram,
    queues: Mutex<Vec<Oldest>>,
    reservations: Mutex<Vec<ReservationCount>>,
}

/// The process's metrics. Cheap to clone (one reference-counted registry).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|(k, v)| Label::new(*k, (*v).to_owned()))
            .collect::<Vec<_>>(),
    )
}

impl Metrics {
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(CHECK_DURATION.into()), CHECK_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(INVALIDATION_LAG.into()),
                    INVALIDATION_BUCKETS,
                )
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        for (name, help) in [
            (CHECK_TOTAL, "ext_authz Check decisions"),
            (CACHE_REQUESTS, "Cache look-ups on the decision path"),
            (
                BACKEND_ERRORS,
                "Failed calls to a backend (database, redis, oidc, alert_webhook, alert_email)",
            ),
            (
                FAILURE_MODE,
                "Decisions taken by a failure mode while a backend was unreachable",
            ),
            (
                USAGE_RECORDS,
                "Usage records by what the writer did with them",
            ),
            (USAGE_TOKENS, "Tokens of written usage records"),
            (BUDGET_ALERTS, "Budget alerts by what became of them"),
            (
                BUDGET_ALERT_EMAILS,
                "Budget alert mail deliveries by what became of them",
            ),
        ] {
            recorder.describe_counter(name.into(), None, help.into());
        }
        for (name, help) in [
            (USAGE_QUEUE_DEPTH, "Usage records waiting to be written"),
            (
                USAGE_QUEUE_LAG,
                "Age of the oldest usage record waiting to be written (0 when none waits)",
            ),
            (
                REDIS_UP,
                "1 while Redis answers, 0 while rate limits follow redis.failure_mode",
            ),
            (
                RESERVATIONS_OPEN,
                "Reservations held for admitted requests whose usage has not settled them yet",
            ),
            // A counter in meaning (see `render`): the facade's counters are integers.
            (SPEND_USD, "USD of written usage records"),
        ] {
            recorder.describe_gauge(name.into(), None, help.into());
        }
        recorder.describe_histogram(
            CHECK_DURATION.into(),
            Some(Unit::Seconds),
            "Time to answer one Check".into(),
        );
        recorder.describe_histogram(
            INVALIDATION_LAG.into(),
            Some(Unit::Seconds),
            "From an admin write on another replica to its invalidation applied here".into(),
        );

        // Labels in alphabetical order, as the exposition always showed them.
        let check = |decision: &str, code: &str| {
            recorder.register_counter(
                &key(CHECK_TOTAL, &[("code", code), ("decision", decision)]),
                &METADATA,
            )
        };
        let check = CheckCounters {
            allow: check("allow", "ok"),
            deny: DenyReason::ALL.map(|reason| check("deny", reason.code())),
            unavailable: check("error", "unavailable"),
            internal: check("error", "internal"),
        };
        let counter = |name: &'static str, label: &'static str, value: &str| {
            recorder.register_counter(&key(name, &[(label, value)]), &METADATA)
        };
        let inner = Inner {
            check,
            check_duration: recorder.register_histogram(&Key::from_name(CHECK_DURATION), &METADATA),
            backend_errors: BACKENDS.map(|b| counter(BACKEND_ERRORS, "backend", b)),
            usage_queue_depth: recorder
                .register_gauge(&Key::from_name(USAGE_QUEUE_DEPTH), &METADATA),
            usage_queue_lag: recorder.register_gauge(&Key::from_name(USAGE_QUEUE_LAG), &METADATA),
            usage_records: USAGE_RESULTS.map(|r| counter(USAGE_RECORDS, "result", r)),
            budget_alerts: ["raised", "delivered", "retried", "failed"]
                .map(|r| counter(BUDGET_ALERTS, "result", r)),
            budget_alert_emails: ["delivered", "retried", "failed"]
                .map(|r| counter(BUDGET_ALERT_EMAILS, "result", r)),
            reservations_open: recorder
                .register_gauge(&Key::from_name(RESERVATIONS_OPEN), &METADATA),
            invalidation_lag: recorder
                .register_histogram(&Key::from_name(INVALIDATION_LAG), &METADATA),
            queues: Mutex::new(Vec::new()),
            reservations: Mutex::new(Vec::new()),
            handle,
            recorder,
        };
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// Counts one Check and its duration (seconds).
    pub fn check(&self, decided: Decided, seconds: f64) {
        let c = &self.inner.check;
        match decided {
            Decided::Allow => &c.allow,
            Decided::Deny(reason) => &c.deny[reason.index()],
            Decided::Error { transient: true } => &c.unavailable,
            Decided::Error { transient: false } => &c.internal,
        }
        .increment(1);
        self.inner.check_duration.record(seconds);
    }

    /// The counters of the cache labelled `cache` (key | user | identity).
    pub fn cache(&self, cache: &'static str) -> CacheCounters {
        let counter = |result: &str| {
            self.inner.recorder.register_counter(
                &key(CACHE_REQUESTS, &[("cache", cache), ("result", result)]),
                &METADATA,
            )
        };
        CacheCounters {
            hit: counter("hit"),
            miss: counter("miss"),
            negative_hit: counter("negative_hit"),
        }
    }

    /// Counts a failed call to `backend` (database | redis | oidc | alert_webhook | alert_email).
    pub fn backend_error(&self, backend: &'static str) {
        match BACKENDS.iter().position(|b| *b == backend) {
            Some(i) => self.inner.backend_errors[i].increment(1),
            None => self
                .inner
                .recorder
                .register_counter(&key(BACKEND_ERRORS, &[("backend", backend)]), &METADATA)
                .increment(1),
        }
    }

    /// The counter of decisions taken by `mode` while `backend` was unreachable; registered
    /// (at 0) by the first call, so take it where the failure mode is configured.
    pub fn failure_mode(&self, backend: &'static str, mode: FailureMode) -> Counter {
        let mode = match mode {
            FailureMode::Open => "open",
            FailureMode::Closed => "closed",
            FailureMode::Local => "local",
        };
        self.inner.recorder.register_counter(
            &key(FAILURE_MODE, &[("backend", backend), ("mode", mode)]),
            &METADATA,
        )
    }

    /// `tollgate_usage_queue_depth`.
    pub fn usage_queue_depth(&self) -> &Gauge {
        &self.inner.usage_queue_depth
    }

    /// A slot for one usage queue's oldest record, read into
    /// `tollgate_usage_queue_lag_seconds` at every render.
    pub fn usage_queue(&self) -> Oldest {
        let oldest = Oldest::default();
        self.inner
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(oldest.clone());
        oldest
    }

    /// Adds `count` to the sources of `tollgate_reservations_open`, called at every render.
    /// It should hold its subject weakly (answering 0 once it is gone): it lives as long as
    /// these metrics.
    pub fn count_reservations(&self, count: impl Fn() -> u64 + Send + Sync + 'static) {
        self.inner
            .reservations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(count));
    }

    /// Counts usage records by `result` (written | duplicate | retried | dead_letter).
    pub fn usage_records(&self, result: &'static str, n: u64) {
        match USAGE_RESULTS.iter().position(|r| *r == result) {
            Some(i) => self.inner.usage_records[i].increment(n),
            None => self
                .inner
                .recorder
                .register_counter(&key(USAGE_RECORDS, &[("result", result)]), &METADATA)
                .increment(n),
        }
    }

    /// Tokens of a newly written record, by model (a configured name or `other`) and kind
    /// (input | output | cached_input | reasoning).
    pub fn usage_tokens(&self, model: &str, kind: &'static str, n: u64) {
        self.inner
            .recorder
            .register_counter(
                &key(USAGE_TOKENS, &[("kind", kind), ("model", model)]),
                &METADATA,
            )
            .increment(n);
    }

    /// USD of a newly written record, by model as above. Only grows: a negative or
    /// non-finite cost is not added.
    pub fn spend_usd(&self, model: &str, usd: f64) {
        if usd.is_finite() && usd > 0.0 {
            self.inner
                .recorder
                .register_gauge(&key(SPEND_USD, &[("model", model)]), &METADATA)
                .increment(usd);
        }
    }

    /// Counts budget alerts by what became of them.
    pub fn budget_alerts(&self, result: AlertResult, n: u64) {
        self.inner.budget_alerts[result as usize].increment(n);
    }

    /// Counts one delivery attempt's result on `channel`: the webhook's in
    /// `tollgate_budget_alerts_total{result}`, email's in
    /// `tollgate_budget_alert_emails_total{result}` (`Raised` is not a delivery: not counted).
    pub fn alert_delivery(&self, channel: AlertChannel, result: AlertResult) {
        match channel {
            AlertChannel::Webhook => self.budget_alerts(result, 1),
            AlertChannel::Email => {
                if let Some(i) = (result as usize).checked_sub(1) {
                    self.inner.budget_alert_emails[i].increment(1);
                }
            }
        }
    }

    /// Records one invalidation's lag (seconds).
    pub fn invalidation_lag(&self, seconds: f64) {
        self.inner.invalidation_lag.record(seconds);
    }

    /// Exports `tollgate_redis_up` (idempotent) and answers the gauge, for the one that
    /// tracks Redis's health. Not exported until then: without Redis there is nothing to be
    /// up, and a 0 would read as an outage.
    pub fn track_redis(&self) -> Gauge {
        self.inner
            .recorder
            .register_gauge(&Key::from_name(REDIS_UP), &METADATA)
    }

    /// Folds recorded histogram samples into their buckets (rendering does it too).
    pub fn upkeep(&self) {
        self.inner.handle.run_upkeep();
    }

    /// Runs [`Metrics::upkeep`] every [`UPKEEP_EVERY`] until aborted.
    pub fn spawn_upkeep(&self) -> JoinHandle<()> {
        let metrics = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                metrics.upkeep();
            }
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.sample();
        let text = self.inner.handle.render();
        // `tollgate_spend_usd_total` is recorded in a gauge (the facade's counters count
        // whole numbers) that only grows: exported as the counter it always was.
        text.replacen(
            &format!("# TYPE {SPEND_USD} gauge\n"),
            &format!("# TYPE {SPEND_USD} counter\n"),
            1,
        )
    }

    /// Sets the gauges read at render time.
    fn sample(&self) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let oldest = self
            .inner
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Oldest::get)
            .min();
        let lag = oldest.map_or(0.0, |at| (now_ms - at).max(0) as f64 / 1000.0);
        self.inner.usage_queue_lag.set(lag);
        let open: u64 = self
            .inner
            .reservations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|count| count())
            .sum();
        self.inner.reservations_open.set(open as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_contract_names() {
        let m = Metrics::new();
        m.check(Decided::Allow, 0.0001);
        m.cache("key").count(CacheResult::Hit);
        m.backend_error("database");
        m.usage_records("written", 1);
        m.usage_tokens("gpt-4o", "input", 1);
        m.spend_usd("gpt-4o", 0.5);
        assert!(!m.render().contains(REDIS_UP), "no redis, no gauge");
        let _ = m.track_redis();
        let _ = m.track_redis();
        let text = m.render();
        for name in [
            CHECK_TOTAL,
            CHECK_DURATION,
            CACHE_REQUESTS,
            BACKEND_ERRORS,
            USAGE_QUEUE_DEPTH,
            USAGE_QUEUE_LAG,
            REDIS_UP,
            RESERVATIONS_OPEN,
            USAGE_RECORDS,
            USAGE_TOKENS,
            SPEND_USD,
            BUDGET_ALERTS,
            INVALIDATION_LAG,
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.contains("tollgate_check_total{code=\"ok\",decision=\"allow\"} 1"));
        assert_eq!(text.matches("# TYPE tollgate_redis_up gauge").count(), 1);
    }

    #[test]
    fn histograms_export_buckets_and_spend_is_a_counter() {
        let m = Metrics::new();
        m.check(Decided::Deny(DenyReason::RateLimitExceeded), 0.0003);
        m.spend_usd("gpt-4o", 0.25);
        m.spend_usd("gpt-4o", 0.5);
        m.spend_usd("gpt-4o", -1.0);
        let text = m.render();
        assert!(
            text.contains("tollgate_check_duration_seconds_bucket{le=\"0.0005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tollgate_check_duration_seconds_bucket{le=\"0.00025\"} 0"),
            "{text}"
        );
        assert!(text.contains("# TYPE tollgate_check_duration_seconds histogram"));
        assert!(text.contains("# TYPE tollgate_invalidation_lag_seconds histogram"));
        assert!(
            text.contains("# TYPE tollgate_spend_usd_total counter"),
            "{text}"
        );
        assert!(text.contains("tollgate_spend_usd_total{model=\"gpt-4o\"} 0.75"));
        assert!(
            text.contains("tollgate_check_total{code=\"rate_limit_exceeded\",decision=\"deny\"} 1")
        );
        // Registered up front, so the first error is an increase from 0.
        assert!(text.contains("tollgate_check_total{code=\"unavailable\",decision=\"error\"} 0"));
    }

    #[test]
    fn lag_and_reservations_are_sampled_at_render() {
        let m = Metrics::new();
        let a = m.usage_queue();
        let b = m.usage_queue();
        assert!(m
            .render()
            .contains("\ntollgate_usage_queue_lag_seconds 0\n"));
        let now = chrono::Utc::now().timestamp_millis();
        a.set(Some(now - 5_000));
        b.set(Some(now - 60_000));
        let lag = |text: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix("tollgate_usage_queue_lag_seconds "))
                .unwrap()
                .parse()
                .unwrap()
        };
        let seen = lag(&m.render());
        assert!((60.0..61.0).contains(&seen), "{seen}");
        b.set(None);
        let seen = lag(&m.render());
        assert!((5.0..6.0).contains(&seen), "{seen}");

        m.count_reservations(|| 3);
        m.count_reservations(|| 4);
        assert!(m.render().contains("\ntollgate_reservations_open 7\n"));
    }
}
