//! The Redis connections shared by rate-limit buckets, budget reservations and the usage
//! queue: to one Redis, a bounded pool of multiplexed connections; to a Redis Cluster
//! (`redis.cluster`), one cluster connection that routes each command by its first key's
//! hash slot and follows `MOVED`/`ASK` redirections (a resharding) by itself. Every call
//! (checkout or connecting included) is bounded by one timeout, and errors are short
//! reasons that never carry the URL (it may hold a password).
//!
//! A pooled connection is handed out without a check, so a call is exactly one round trip;
//! a connection idle for longer than [`IDLE_CHECK_AFTER`] is PINGed before reuse. A
//! connection that fails is dropped along with every idle one (they most likely point at the
//! same dead server), and the next call connects afresh; so is a cluster connection.
//!
//! A `rediss://` URL connects over TLS (every node of a cluster alike) and verifies the
//! server's certificate against `redis.tls.ca_file` when it is set, else against the
//! built-in public roots ([`RedisTarget`]); [`check_tls`] connects once at start so that a
//! certificate that fails verification stops `serve` instead of looking like an outage.
//!
//! [`Health`] is what their users know of Redis: the first failed call marks it down (one
//! `warn!`, `tollgate_backend_errors_total{backend="redis"}`) and starts one probe that
//! PINGs (every master of a cluster) every [`PROBE_INTERVAL`] until it answers (one `info!`);
//! meanwhile users answer by `redis.failure_mode` without touching Redis, so no request
//! waits for a Redis timeout.

use crate::backend::{Backend, BackendError};
use crate::backend_tls::{self, Misconfigured};
use crate::config::{self, FailureMode};
use crate::metrics::Metrics;
use ::redis::aio::{ConnectionLike, MultiplexedConnection};
use ::redis::cluster::{ClusterClient, ClusterClientBuilder};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, FromRedisValue, Pipeline, RedisError,
    RedisFuture, Value,
};
use deadpool::managed;
use metrics::Gauge;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::time::{timeout_at, Instant};

/// A pooled connection idle for longer than this is PINGed before it is handed out (a
/// server `timeout` or a middlebox may have closed it); busier ones are trusted.
pub const IDLE_CHECK_AFTER: Duration = Duration::from_secs(30);

/// Which Redis to connect to (one server, or the nodes of a Redis Cluster), and for
/// `rediss://` which CAs to trust.
#[derive(Clone)]
pub struct RedisTarget {
    /// One URL, or the cluster's node URLs (all with the same scheme and credentials).
    urls: Vec<String>,
    cluster: bool,
    /// `redis.tls.ca_file`: trusted instead of the built-in public roots.
    ca_file: Option<PathBuf>,
}

impl RedisTarget {
    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// Whether the connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.urls
            .first()
            .is_some_and(|u| u.starts_with("rediss://"))
    }

    /// A client for one Redis (no I/O but reading the CA file). Errors never carry the URL;
    /// a cluster has no single client (see [`RedisTarget::connector`]).
    pub fn client(&self) -> Result<Client, String> {
        if self.cluster {
            return Err("redis.cluster: connect with a cluster client".to_owned());
        }
        let url = self.urls.first().map(String::as_str).unwrap_or_default();
        let Some(certificates) = self.certificates()? else {
            return Client::open(url).map_err(|e| format!("invalid redis URL: {}", reason(&e)));
        };
        Client::build_with_tls(url, certificates)
            .map_err(|e| format!("invalid redis URL or CA: {}", reason(&e)))
    }

    /// A client for one server: the Redis, or on a cluster its node `turn` (modulo their
    /// number: a caller that counts its attempts goes round the nodes, so one node down does
    /// not stop it). Enough for what names no key: pub/sub, which a cluster carries to
    /// every node.
    pub fn node_client(&self, turn: usize) -> Result<Client, String> {
        self.node(turn).client()
    }

    /// The Redis, or on a cluster its node `turn` (modulo their number), as one server.
    fn node(&self, turn: usize) -> RedisTarget {
        if !self.cluster {
            return self.clone();
        }
        RedisTarget {
            urls: vec![self.urls[turn % self.urls.len().max(1)].clone()],
            cluster: false,
            ca_file: self.ca_file.clone(),
        }
    }

    /// Makes connections to the target: connecting bounded by `timeout`, each reply by
    /// `response` (`None`: unbounded, the caller bounds each call). No I/O but reading the CA
    /// file.
    ///
    /// A cluster client follows `MOVED` and `ASK` redirections at once and retries
    /// `TRYAGAIN` (a multi-key call while its slot is being migrated) after a few
    /// milliseconds, all within the bound of the call.
    pub fn connector(
        &self,
        timeout: Duration,
        response: Option<Duration>,
    ) -> Result<Connector, String> {
        if !self.cluster {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(response);
            return Ok(Connector(ConnectorKind::Single(self.client()?, config)));
        }
        let mut builder = ClusterClientBuilder::new(self.urls.iter().map(String::as_str))
            .connection_timeout(timeout)
            .retries(CLUSTER_RETRIES)
            .min_retry_wait(1)
            .max_retry_wait(CLUSTER_RETRY_WAIT_MAX.as_millis() as u64)
            .retry_wait_formula(2, 2);
        if let Some(response) = response {
            builder = builder.response_timeout(response);
        }
        if let Some(certificates) = self.certificates()? {
            builder = builder.certs(certificates);
        }
        let client = builder
            .build()
            .map_err(|e| format!("invalid redis.cluster: {}", reason(&e)))?;
        Ok(Connector(ConnectorKind::Cluster(client)))
    }

    fn certificates(&self) -> Result<Option<::redis::TlsCertificates>, String> {
        let Some(ca_file) = &self.ca_file else {
            return Ok(None);
        };
        let ca =
            backend_tls::read_ca_bundle(ca_file).map_err(|e| format!("redis.tls.ca_file: {e}"))?;
        Ok(Some(::redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca),
        }))
    }

    /// The URL (each node's, for a cluster) with its password hidden.
    pub fn redacted(&self) -> String {
        let urls: Vec<String> = self.urls.iter().map(|u| config::redact_url(u)).collect();
        urls.join(", ")
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
            urls: redis.urls().into_iter().map(str::to_owned).collect(),
            cluster: redis.is_cluster(),
            ca_file: redis.tls.as_ref().map(|tls| tls.ca_file.clone()),
        }
    }
}

/// A URL alone: `rediss://` trusts the built-in public roots.
impl From<&str> for RedisTarget {
    fn from(url: &str) -> RedisTarget {
        RedisTarget {
            urls: vec![url.to_owned()],
            cluster: false,
            ca_file: None,
        }
    }
}

impl From<&String> for RedisTarget {
    fn from(url: &String) -> RedisTarget {
        RedisTarget::from(url.as_str())
    }
}

/// Attempts of one cluster call (redirections and `TRYAGAIN` included), within its bound.
const CLUSTER_RETRIES: u32 = 16;

/// Longest wait before retrying a cluster call that met `TRYAGAIN` or a cluster that is
/// down (the wait doubles from 1 ms up to this).
const CLUSTER_RETRY_WAIT_MAX: Duration = Duration::from_millis(50);

/// Makes connections to one Redis or to a Redis Cluster ([`RedisTarget::connector`]).
#[derive(Clone)]
pub struct Connector(ConnectorKind);

#[derive(Clone)]
enum ConnectorKind {
    Single(Client, AsyncConnectionConfig),
    Cluster(ClusterClient),
}

impl Connector {
    /// A new connection: multiplexed to one Redis, or to every master of the cluster.
    pub async fn connect(&self) -> Result<Connection, RedisError> {
        match &self.0 {
            ConnectorKind::Single(client, config) => client
                .get_multiplexed_async_connection_with_config(config)
                .await
                .map(Connection::Single),
            ConnectorKind::Cluster(client) => {
                client.get_async_connection().await.map(Connection::Cluster)
            }
        }
    }
}

/// A multiplexed connection to one Redis, or a cluster connection (which routes each
/// command by its first key's slot and follows redirections). Cheap to clone: clones share
/// the connection.
#[derive(Clone)]
pub enum Connection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(conn) => conn.req_packed_command(cmd),
            Connection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(conn) => conn.get_db(),
            Connection::Cluster(conn) => conn.get_db(),
        }
    }
}

/// How long the start-up check waits for Redis at least: a TLS handshake across a network
/// takes longer than the per-call `redis.timeout` is usually set to.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// For a `rediss://` Redis, connects once (and PINGs): a certificate that fails
/// verification, or a handshake that fails, is [`Misconfigured`]. Redis down or slow only
/// warns: outages are what `redis.failure_mode` is for. Plain `redis://` is not checked. On
/// a Redis Cluster every node `redis.cluster` lists is checked on a connection of its own
/// (a cluster connection reports a failed handshake as text, without its cause).
pub async fn check_tls(redis: &config::Redis) -> Result<(), Misconfigured> {
    if !redis.is_tls() {
        return Ok(());
    }
    let target = RedisTarget::from(redis);
    for turn in 0..target.urls.len() {
        check_node_tls(&target.node(turn), redis.timeout).await?;
    }
    Ok(())
}

async fn check_node_tls(target: &RedisTarget, timeout: Duration) -> Result<(), Misconfigured> {
    let refuse = |reason: String| Misconfigured {
        backend: "redis",
        reason,
    };
    let bound = timeout.max(CHECK_TIMEOUT);
    let connector = target.connector(bound, Some(bound)).map_err(refuse)?;
    let started = Instant::now();
    let attempt = async {
        let mut conn = connector.connect().await?;
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

/// The connections to one Redis or to a Redis Cluster, shared by rate limits, budgets and
/// the usage queue. Cheap to clone: clones share the connections.
#[derive(Clone)]
pub struct RedisPool {
    conns: Conns,
    timeout: Duration,
    /// Makes connections of their own, with no reply bound (see [`RedisPool::connector`]).
    dedicated: Connector,
}

#[derive(Clone)]
enum Conns {
    /// A bounded pool of multiplexed connections to one Redis.
    Single(managed::Pool<Manager>),
    /// One cluster connection (itself multiplexed, one connection per node), made on first
    /// use and again after a failure.
    Cluster(Arc<ClusterLink>),
}

struct ClusterLink {
    connector: Connector,
    conn: std::sync::Mutex<Option<Connection>>,
    /// Held while connecting, so concurrent calls wait for one connection.
    connecting: tokio::sync::Mutex<()>,
}

impl ClusterLink {
    fn current(&self) -> Option<Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn connection(&self) -> Result<Connection, BackendError> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let conn = self.connector.connect().await.map_err(|e| failure(&e))?;
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    fn forget(&self) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl RedisPool {
    /// Connections to the Redis at `target` (a [`config::Redis`], or a URL alone:
    /// `redis://[user:password@]host:port[/db]`, `rediss://…` for TLS): at most `size`
    /// pooled connections to one Redis, or one cluster connection to a Redis Cluster; every
    /// call (a TLS handshake included) bounded by `timeout`. Does no I/O but reading
    /// `redis.tls.ca_file`.
    pub fn new(
        target: impl Into<RedisTarget>,
        size: usize,
        timeout: Duration,
    ) -> Result<RedisPool, String> {
        let target = target.into();
        let dedicated = target.connector(timeout, None)?;
        if target.is_cluster() {
            let link = ClusterLink {
                connector: target.connector(timeout, Some(timeout))?,
                conn: std::sync::Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            };
            return Ok(RedisPool {
                conns: Conns::Cluster(Arc::new(link)),
                timeout,
                dedicated,
            });
        }
        let client = target.client()?;
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
        Ok(RedisPool {
            conns: Conns::Single(pool),
            timeout,
            dedicated,
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether this is a Redis Cluster: a script's keys must then share one hash slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self.conns, Conns::Cluster(_))
    }

    /// Makes connections of their own to the same Redis, connecting bounded by the timeout
    /// and replies unbounded (their user bounds each call): for blocking reads, which would
    /// hold up every other call on a shared connection.
    pub fn connector(&self) -> &Connector {
        &self.dedicated
    }

    /// A PING (on a cluster, of every master): whether Redis answers within the timeout.
    pub async fn ping(&self) -> Result<(), BackendError> {
        self.call(Call::Cmd(::redis::cmd("PING"))).await
    }

    /// Runs one call, the whole (checkout or connecting included) bounded by the timeout.
    /// A connection that failed is dropped (with every idle one of the pool) and the next
    /// call connects afresh; a server's error (a script's, a refused command's) keeps it.
    pub async fn call<T: FromRedisValue>(&self, call: Call<'_>) -> Result<T, BackendError> {
        match &self.conns {
            Conns::Single(pool) => self.call_pooled(pool, call).await,
            Conns::Cluster(link) => self.call_cluster(link, call).await,
        }
    }

    async fn call_pooled<T: FromRedisValue>(
        &self,
        pool: &managed::Pool<Manager>,
        call: Call<'_>,
    ) -> Result<T, BackendError> {
        let deadline = Instant::now() + self.timeout;
        let mut conn = match timeout_at(deadline, pool.get()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                drop_idle(pool);
                return Err(pool_failure(&e));
            }
            Err(_) => {
                drop_idle(pool);
                return Err(timed_out("redis: timed out connecting"));
            }
        };
        let result = timeout_at(deadline, run(&mut *conn, &call)).await;
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if !matches!(e.kind(), ErrorKind::Server(_)) {
                    let _ = managed::Object::take(conn);
                    drop_idle(pool);
                }
                Err(failure(&e))
            }
            Err(_) => {
                // The reply may still arrive on this connection: do not reuse it.
                let _ = managed::Object::take(conn);
                Err(timed_out("redis: timed out"))
            }
        }
    }

    async fn call_cluster<T: FromRedisValue>(
        &self,
        link: &ClusterLink,
        call: Call<'_>,
    ) -> Result<T, BackendError> {
        let deadline = Instant::now() + self.timeout;
        let mut conn = match timeout_at(deadline, link.connection()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(timed_out("redis: timed out connecting")),
        };
        match timeout_at(deadline, run(&mut conn, &call)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if !matches!(e.kind(), ErrorKind::Server(_)) {
                    link.forget();
                }
                Err(failure(&e))
            }
            Err(_) => {
                link.forget();
                Err(timed_out("redis: timed out"))
            }
        }
    }
}

/// Sends `call` on `conn`: a command, or a script by `EVALSHA` (loaded with `SCRIPT LOAD`,
/// on a cluster into every node, when Redis answers `NOSCRIPT`).
async fn run<T: FromRedisValue>(
    conn: &mut impl ConnectionLike,
    call: &Call<'_>,
) -> Result<T, RedisError> {
    match call {
        Call::Cmd(cmd) => cmd.query_async(conn).await,
        Call::Script(inv) => inv.invoke_async(conn).await,
    }
}

fn drop_idle(pool: &managed::Pool<Manager>) {
    pool.retain(|_, _| false);
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
    gauge: Option<Gauge>,
}

impl Health {
    /// Up until a call fails.
    pub fn new(
        subject: &'static str,
        mode: FailureMode,
        metrics: Metrics,
        gauge: Option<Gauge>,
    ) -> Arc<Health> {
        if let Some(gauge) = &gauge {
            gauge.set(1.0);
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
        self.metrics.backend_error("redis");
        if self.healthy.swap(false, Ordering::AcqRel) {
            if let Some(gauge) = &self.gauge {
                gauge.set(0.0);
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
                    gauge.set(1.0);
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

fn pool_failure(e: &managed::PoolError<RedisError>) -> BackendError {
    match e {
        managed::PoolError::Backend(e) => failure(e),
        managed::PoolError::Timeout(_) => timed_out("redis timed out connecting"),
        other => BackendError::unavailable(Backend::Redis, format!("redis pool: {other}")),
    }
}

fn timed_out(what: &str) -> BackendError {
    BackendError::unavailable(Backend::Redis, what)
}

/// A failed call as a [`BackendError`] with its [`reason`]: transient when Redis could not
/// be reached or answered that it cannot serve now (loading, failing over, a slot moving,
/// busy with a script), a fault when it refused the call itself (a script's error, a type
/// mismatch, a refused command or credentials) and the same call would fail again.
pub fn failure(e: &RedisError) -> BackendError {
    use ::redis::ServerErrorKind as S;
    let transient = match e.kind() {
        ErrorKind::Server(
            S::BusyLoading
            | S::Moved
            | S::Ask
            | S::TryAgain
            | S::ClusterDown
            | S::MasterDown
            | S::ReadOnly,
        ) => true,
        ErrorKind::Server(_)
        | ErrorKind::Parse
        | ErrorKind::UnexpectedReturnType
        | ErrorKind::InvalidClientConfig
        | ErrorKind::AuthenticationFailed
        | ErrorKind::Client
        | ErrorKind::RESP3NotSupported => false,
        ErrorKind::Extension => e.code() == Some("BUSY"),
        _ => true,
    };
    if transient {
        BackendError::unavailable(Backend::Redis, reason(e))
    } else {
        BackendError::fault(Backend::Redis, reason(e))
    }
}
