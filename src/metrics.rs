//! Prometheus metrics: every name in one place, registered once, no per-key labels.

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

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

/// The process's metrics. Cheap to clone (the collectors are reference-counted).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `decision` = allow | deny | error; `code` = the denial code, `ok`, or `unavailable`.
    pub check_total: IntCounterVec,
    pub check_duration: Histogram,
    /// `cache` = key | user | identity; `result` = hit | miss | negative_hit.
    pub cache_requests: IntCounterVec,
    /// `backend` = database | redis | oidc.
    pub backend_errors: IntCounterVec,
    pub usage_queue_depth: IntGauge,
    /// 1 while Redis answers, 0 while rate limiting runs in its failure mode. Exported only
    /// once [`Metrics::track_redis`] is called (Redis is configured): without Redis there
    /// is nothing to be up, and a 0 would read as an outage.
    pub redis_up: IntGauge,
    /// `result` = written | duplicate | retried.
    pub usage_records: IntCounterVec,
    /// Tokens of newly written usage records; `model` = a configured model name or
    /// `other` (no per-key labels, bounded cardinality); `kind` = input | output |
    /// cached_input | reasoning.
    pub usage_tokens: IntCounterVec,
    /// USD of newly written usage records, by `model` as above.
    pub spend_usd: CounterVec,
    /// From an admin write on one replica to its invalidation applied on another.
    pub invalidation_lag: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let check_total = IntCounterVec::new(
            Opts::new(CHECK_TOTAL, "ext_authz Check decisions"),
            &["decision", "code"],
        )
        .expect("valid metric");
        let check_duration = Histogram::with_opts(
            HistogramOpts::new(CHECK_DURATION, "Time to answer one Check").buckets(vec![
                0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
        )
        .expect("valid metric");
        let cache_requests = IntCounterVec::new(
            Opts::new(CACHE_REQUESTS, "Cache look-ups on the decision path"),
            &["cache", "result"],
        )
        .expect("valid metric");
        let backend_errors = IntCounterVec::new(
            Opts::new(
                BACKEND_ERRORS,
                "Failed calls to a backend (database, redis)",
            ),
            &["backend"],
        )
        .expect("valid metric");
        let usage_queue_depth =
            IntGauge::new(USAGE_QUEUE_DEPTH, "Usage records waiting to be written")
                .expect("valid metric");
        let redis_up = IntGauge::new(
            REDIS_UP,
            "1 while Redis answers, 0 while rate limits follow redis.failure_mode",
        )
        .expect("valid metric");
        let usage_records = IntCounterVec::new(
            Opts::new(
                USAGE_RECORDS,
                "Usage records by what the writer did with them",
            ),
            &["result"],
        )
        .expect("valid metric");
        let usage_tokens = IntCounterVec::new(
            Opts::new(USAGE_TOKENS, "Tokens of written usage records"),
            &["model", "kind"],
        )
        .expect("valid metric");
        let spend_usd = CounterVec::new(
            Opts::new(SPEND_USD, "USD of written usage records"),
            &["model"],
        )
        .expect("valid metric");
        let invalidation_lag = Histogram::with_opts(
            HistogramOpts::new(
                INVALIDATION_LAG,
                "From an admin write on another replica to its invalidation applied here",
            )
            .buckets(vec![
                0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("valid metric");
        for collector in [
            Box::new(check_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(invalidation_lag.clone()),
            Box::new(check_duration.clone()),
            Box::new(cache_requests.clone()),
            Box::new(backend_errors.clone()),
            Box::new(usage_queue_depth.clone()),
            Box::new(usage_records.clone()),
            Box::new(usage_tokens.clone()),
            Box::new(spend_usd.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Metrics {
            registry,
            check_total,
            check_duration,
            cache_requests,
            backend_errors,
            usage_queue_depth,
            redis_up,
            usage_records,
            usage_tokens,
            spend_usd,
            invalidation_lag,
        }
    }

    /// Exports `tollgate_redis_up` (idempotent) and answers the gauge, for the one that
    /// tracks Redis's health.
    pub fn track_redis(&self) -> IntGauge {
        match self.registry.register(Box::new(self.redis_up.clone())) {
            Ok(()) | Err(prometheus::Error::AlreadyReg) => {}
            Err(e) => panic!("{REDIS_UP} cannot be registered: {e}"),
        }
        self.redis_up.clone()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_contract_names() {
        let m = Metrics::new();
        m.check_total.with_label_values(&["allow", "ok"]).inc();
        m.cache_requests.with_label_values(&["key", "hit"]).inc();
        m.backend_errors.with_label_values(&["database"]).inc();
        m.check_duration.observe(0.0001);
        m.usage_records.with_label_values(&["written"]).inc();
        m.usage_tokens.with_label_values(&["gpt-4o", "input"]).inc();
        m.spend_usd.with_label_values(&["gpt-4o"]).inc_by(0.5);
        assert!(!m.render().contains(REDIS_UP), "no redis, no gauge");
        m.track_redis();
        m.track_redis();
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
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.contains("tollgate_check_total{code=\"ok\",decision=\"allow\"} 1"));
        assert_eq!(text.matches("# TYPE tollgate_redis_up gauge").count(), 1);
    }
}
