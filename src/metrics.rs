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
//! Histograms are recorded lock-free and folded into their buckets when rendered or by
//! [`Metrics::upkeep`] (run every [`UPKEEP_EVERY`] by [`Metrics::spawn_upkeep`]).

use crate::decision::DenyReason;
use ::metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::PrometheusRecorder;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

pub const CHECK_TOTAL: &str = "tollgate_check_total";
pub const CHECK_DURATION: &str = "tollgate_check_duration_seconds";
pub const CACHE_REQUESTS: &str = "tollgate_cache_requests_total";
pub const BACKEND_ERRORS: &str = "tollgate_backend_errors_total";
pub const USAGE_QUEUE_DEPTH: &str = "tollgate_usage_queue_depth";
pub const REDIS_UP: &str = "tollgate_redis_up";
pub const USAGE_RECORDS: &str = "tollgate_usage_records_total";
pub const USAGE_TOKENS: &str = "tollgate_usage_tokens_total";
pub const SPEND_USD: &str = "tollgate_spend_usd_total";
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
const BACKENDS: [&str; 4] = ["database", "redis", "oidc", "alert_webhook"];
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

struct Inner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    check: CheckCounters,
    check_duration: Histogram,
    /// By [`BACKENDS`].
    backend_errors: [Counter; BACKENDS.len()],
    usage_queue_depth: Gauge,
    /// By [`USAGE_RESULTS`].
    usage_records: [Counter; USAGE_RESULTS.len()],
    invalidation_lag: Histogram,
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
                "Failed calls to a backend (database, redis, oidc, alert_webhook)",
            ),
            (
                USAGE_RECORDS,
                "Usage records by what the writer did with them",
            ),
            (USAGE_TOKENS, "Tokens of written usage records"),
        ] {
            recorder.describe_counter(name.into(), None, help.into());
        }
        for (name, help) in [
            (USAGE_QUEUE_DEPTH, "Usage records waiting to be written"),
            (
                REDIS_UP,
                "1 while Redis answers, 0 while rate limits follow redis.failure_mode",
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
            usage_records: USAGE_RESULTS.map(|r| counter(USAGE_RECORDS, "result", r)),
            invalidation_lag: recorder
                .register_histogram(&Key::from_name(INVALIDATION_LAG), &METADATA),
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

    /// Counts a failed call to `backend` (database | redis | oidc | alert_webhook).
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

    pub fn usage_queue_depth(&self) -> &Gauge {
        &self.inner.usage_queue_depth
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
        let text = self.inner.handle.render();
        // `tollgate_spend_usd_total` is recorded in a gauge (the facade's counters count
        // whole numbers) that only grows: exported as the counter it always was.
        text.replacen(
            &format!("# TYPE {SPEND_USD} gauge\n"),
            &format!("# TYPE {SPEND_USD} counter\n"),
            1,
        )
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
            REDIS_UP,
            USAGE_RECORDS,
            USAGE_TOKENS,
            SPEND_USD,
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
}
