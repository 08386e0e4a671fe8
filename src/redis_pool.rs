//! The Redis connections shared by rate-limit buckets and budget reservations: a bounded
//! pool of multiplexed connections, every call (checkout included) bounded by one timeout,
//! and errors as short reasons that never carry the URL (it may hold a password).
//!
//! A pooled connection is handed out without a check, so a call is exactly one round trip;
//! a connection idle for longer than [`IDLE_CHECK_AFTER`] is PINGed before reuse. A
//! connection that fails is dropped along with every idle one (they most likely point at the
//! same dead server), and the next call connects afresh.
//!
//! A `rediss://` URL connects over TLS and verifies the server's certificate against
//! `redis.tls.ca_file` when it is set, else against the built-in public roots
//! ([`RedisTarget`]); [`check_tls`] connects once at start so that a certificate that fails
//! verification stops `serve` instead of looking like an outage.
//!
//! [`Health`] is what their users know of Redis: the first failed call marks it down (one
//! `warn!`, `tollgate_backend_errors_total{backend="redis"}`) and starts one probe that
//! PINGs every [`PROBE_INTERVAL`] until it answers (one `info!`); meanwhile users answer by
//! `redis.failure_mode` without touching Redis, so no request waits for a Redis timeout.

use crate::backend_tls::{self, Misconfigured};
use crate::config::{self, FailureMode};
use crate::metrics::Metrics;
use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, ErrorKind, FromRedisValue, RedisError};
use deadpool::managed;
use prometheus::IntGauge;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::{timeout_at, Instant};

/// A pooled connection idle for longer than this is PINGed before it is handed out (a
/// server `timeout` or a middlebox may have closed it); busier ones are trusted.
pub const IDLE_CHECK_AFTER: Duration = Duration::from_secs(30);

/// Which Redis to connect to, and for `rediss://` which CAs to trust.
#[derive(Clone)]
pub struct RedisTarget {
    url: String,
    /// `redis.tls.ca_file`: trusted instead of the built-in public roots.
    ca_file: Option<PathBuf>,
}

impl RedisTarget {
    /// A client for the target (no I/O but reading the CA file). Errors never carry the URL.
    pub fn client(&self) -> Result<Client, String> {
        let Some(ca_file) = &self.ca_file else {
            return Client::open(self.url.as_str())
                .map_err(|e| format!("invalid redis URL: {}", reason(&e)));
        };
        let ca =
            backend_tls::read_ca_bundle(ca_file).map_err(|e| format!("redis.tls.ca_file: {e}"))?;
        let certificates = ::redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca),
        };
        Client::build_with_tls(self.url.as_str(), certificates)
            .map_err(|e| format!("invalid redis URL or CA: {}", reason(&e)))
    }

    /// The URL with its password hidden.
    pub fn redacted(&self) -> String {
        config::redact_url(&self.url)
    }

    /// Which CAs a TLS connection trusts, for messages.
    fn trusted(&self) -> String {
        match &self.ca_file {
            Some(path) => format!("redis.tls.ca_file `{}`", path.display()),
            None => {
                "the built-in public roots (redis.tls.ca_file can name a private CA)".to_owned()
            }
        }
    }
}

impl From<&config::Redis> for RedisTarget {
    fn from(redis: &config::Redis) -> RedisTarget {
        RedisTarget {
            url: redis.url.clone(),
            ca_file: redis.tls.as_ref().map(|tls| tls.ca_file.clone()),
        }
    }
}

/// A URL alone: `rediss://` trusts the built-in public roots.
impl From<&str> for RedisTarget {
    fn from(url: &str) -> RedisTarget {
        RedisTarget {
            url: url.to_owned(),
            ca_file: None,
        }
    }
}

impl From<&String> for RedisTarget {
    fn from(url: &String) -> RedisTarget {
        RedisTarget::from(url.as_str())
    }
}

/// How long the start-up check waits for Redis at least: a TLS handshake across a network
/// takes longer than the per-call `redis.timeout` is usually set to.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// For a `rediss://` Redis, connects once (and PINGs): a certificate that fails
/// verification, or a handshake that fails, is [`Misconfigured`]. Redis down or slow only
/// warns: outages are what `redis.failure_mode` is for. Plain `redis://` is not checked.
pub async fn check_tls(redis: &config::Redis) -> Result<(), Misconfigured> {
    if !redis.url.starts_with("rediss://") {
        return Ok(());
    }
    let target = RedisTarget::from(redis);
    let refuse = |reason: String| Misconfigured {
        backend: "redis",
        reason,
    };
    let client = target.client().map_err(refuse)?;
    let bound = redis.timeout.max(CHECK_TIMEOUT);
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(bound))
        .set_response_timeout(Some(bound));
    let started = Instant::now();
    let attempt = async {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        ::redis::cmd("PING").query_async::<()>(&mut conn).await
    };
    let outcome = match tokio::time::timeout(bound, attempt).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(redis.url = %target.redacted(), "redis does not answer at start (timed out after {bound:?}); its TLS is verified on first use, and until it answers limits and budgets follow redis.failure_mode");
            return Ok(());
        }
    };
    match outcome {
        Ok(()) => {
            tracing::info!(
                redis.url = %target.redacted(),
                duration_ms = started.elapsed().as_millis() as u64,
                "redis: TLS connection verified"
            );
            Ok(())
        }
        Err(e) => match backend_tls::failure(&e, &target.trusted()) {
            Some(why) => Err(refuse(format!(
                "cannot connect to `{}` over TLS: {why}",
                target.redacted()
            ))),
            None => {
                tracing::warn!(redis.url = %target.redacted(), error = %reason(&e), "redis is unreachable at start; its TLS is verified on first use, and until it answers limits and budgets follow redis.failure_mode");
                Ok(())
            }
        },
    }
}

/// Creates multiplexed connections; hands pooled ones out without a round trip unless they
/// have been idle for a while.
struct Manager {
    inner: deadpool_redis::Manager,
}

impl managed::Manager for Manager {
    type Type = MultiplexedConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<MultiplexedConnection, RedisError> {
        managed::Manager::create(&self.inner).await
    }

    async fn recycle(
        &self,
        conn: &mut MultiplexedConnection,
        metrics: &managed::Metrics,
    ) -> managed::RecycleResult<RedisError> {
        if metrics.last_used() > IDLE_CHECK_AFTER {
            let _: () = ::redis::cmd("PING").query_async(conn).await?;
        }
        Ok(())
    }
}

/// What one call sends.
pub enum Call<'s> {
    Cmd(::redis::Cmd),
    Script(::redis::ScriptInvocation<'s>),
}

/// How often a Redis marked down is PINGed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Cheap to clone: clones share the connections.
#[derive(Clone)]
pub struct RedisPool {
    pool: managed::Pool<Manager>,
    timeout: Duration,
}

impl RedisPool {
    /// A pool for the Redis at `target` (a [`config::Redis`], or a URL alone:
    /// `redis://[user:password@]host:port[/db]`, `rediss://…` for TLS), at most `size`
    /// connections, every call (a TLS handshake included) bounded by `timeout`. Does no
    /// I/O but reading `redis.tls.ca_file`.
    pub fn new(
        target: impl Into<RedisTarget>,
        size: usize,
        timeout: Duration,
    ) -> Result<RedisPool, String> {
        let client = target.into().client()?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let inner =
            deadpool_redis::Manager::new_with_config(client.get_connection_info().clone(), config)
                .map_err(|e| format!("invalid redis URL: {}", reason(&e)))?;
        let pool = managed::Pool::builder(Manager { inner })
            .max_size(size.max(1))
            .runtime(deadpool::Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| format!("redis pool: {e}"))?;
        Ok(RedisPool { pool, timeout })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A PING: whether Redis answers within the timeout.
    pub async fn ping(&self) -> Result<(), String> {
        self.call(Call::Cmd(::redis::cmd("PING"))).await
    }

    /// Runs one call on a pooled connection, the whole (checkout included) bounded by the
    /// timeout. A connection that failed is dropped with every idle one.
    pub async fn call<T: FromRedisValue>(&self, call: Call<'_>) -> Result<T, String> {
        let deadline = Instant::now() + self.timeout;
        let mut conn = match timeout_at(deadline, self.pool.get()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                self.drop_idle();
                return Err(pool_reason(&e));
            }
            Err(_) => {
                self.drop_idle();
                return Err("redis: timed out connecting".to_owned());
            }
        };
        let result = timeout_at(deadline, async {
            match &call {
                Call::Cmd(cmd) => cmd.query_async(&mut *conn).await,
                Call::Script(inv) => inv.invoke_async(&mut *conn).await,
            }
        })
        .await;
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if !matches!(e.kind(), ErrorKind::Server(_)) {
                    let _ = managed::Object::take(conn);
                    self.drop_idle();
                }
                Err(reason(&e))
            }
            Err(_) => {
                // The reply may still arrive on this connection: do not reuse it.
                let _ = managed::Object::take(conn);
                Err("redis: timed out".to_owned())
            }
        }
    }

    fn drop_idle(&self) {
        self.pool.retain(|_, _| false);
    }
}

/// Whether Redis is up for one of its users (rate limits, budgets).
pub struct Health {
    healthy: AtomicBool,
    probing: AtomicBool,
    /// What follows `failure_mode` while Redis is down, for the log lines.
    subject: &'static str,
    mode: FailureMode,
    metrics: Metrics,
    /// Set to 1 while up and 0 while down, when given.
    gauge: Option<IntGauge>,
}

impl Health {
    /// Up until a call fails.
    pub fn new(
        subject: &'static str,
        mode: FailureMode,
        metrics: Metrics,
        gauge: Option<IntGauge>,
    ) -> Arc<Health> {
        if let Some(gauge) = &gauge {
            gauge.set(1);
        }
        Arc::new(Health {
            healthy: AtomicBool::new(true),
            probing: AtomicBool::new(false),
            subject,
            mode,
            metrics,
            gauge,
        })
    }

    pub fn is_up(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// A call through `pool` failed: mark Redis down (logged once) and make sure one probe
    /// runs. The probe ends when Redis answers, or when this `Health` is dropped.
    pub fn failed(self: &Arc<Self>, pool: &RedisPool, reason: &str) {
        self.metrics
            .backend_errors
            .with_label_values(&["redis"])
            .inc();
        if self.healthy.swap(false, Ordering::AcqRel) {
            if let Some(gauge) = &self.gauge {
                gauge.set(0);
            }
            tracing::warn!(
                failure_mode = ?self.mode,
                error = %reason,
                "redis is unreachable: {} follow failure_mode until it answers again",
                self.subject
            );
        }
        if !self.probing.swap(true, Ordering::AcqRel) {
            tokio::spawn(probe(Arc::downgrade(self), pool.clone()));
        }
    }
}

/// PINGs Redis every [`PROBE_INTERVAL`] until it answers, then marks it up.
async fn probe(health: Weak<Health>, pool: RedisPool) {
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        let Some(health) = health.upgrade() else {
            return;
        };
        if pool.ping().await.is_ok() {
            // Stop probing before marking up, so a failure right after starts a new probe.
            health.probing.store(false, Ordering::Release);
            if !health.healthy.swap(true, Ordering::AcqRel) {
                if let Some(gauge) = &health.gauge {
                    gauge.set(1);
                }
                tracing::info!("redis answers again: {} are back in redis", health.subject);
            }
            return;
        }
    }
}

/// A short reason for a failed call: what failed in TLS, else the error's category and, for
/// server errors, its code and message. Never the URL.
pub fn reason(e: &RedisError) -> String {
    let what = if let Some(why) = backend_tls::failure(e, "the trusted ones") {
        why
    } else if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connection_refusal() {
        "connection refused".to_owned()
    } else if e.is_connection_dropped() {
        "connection dropped".to_owned()
    } else {
        // A server's error (known to the client or not, like BUSYGROUP): its code first,
        // which is what callers match on.
        match (e.code(), e.detail()) {
            (Some(code), Some(detail)) => {
                let detail: String = detail.chars().take(160).collect();
                format!("{code} {detail}")
            }
            (Some(code), None) => code.to_owned(),
            _ => e.category().to_owned(),
        }
    };
    format!("redis: {what}")
}

fn pool_reason(e: &managed::PoolError<RedisError>) -> String {
    match e {
        managed::PoolError::Backend(e) => reason(e),
        managed::PoolError::Timeout(_) => "redis timed out connecting".to_owned(),
        other => format!("redis pool: {other}"),
    }
}
