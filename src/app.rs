//! Wiring: configuration → store → decision state → listeners.
//!
//! [`App::build`] does everything that can fail for a configuration reason (store
//! connection, migrations) before [`App::start`] binds a port. Tests start a whole tollgate
//! in-process with listeners on `127.0.0.1:0` and read the bound addresses from [`Running`].

use crate::admission::counters::Counters;
use crate::admission::Admission;
use crate::authn::login::Sessions;
use crate::authn::{Authenticator, MasterKey};
use crate::authz::wire::{CheckServer, SERVICE_NAME as AUTHORIZATION};
use crate::authz::Gate;
use crate::backend_tls::Misconfigured;
use crate::clock::Clock;
use crate::config::Config;
use crate::decision::Policy;
use crate::domain::Role;
use crate::invalidation::Invalidator;
use crate::lifecycle::{Drained, Lifecycle};
use crate::metrics::Metrics;
use crate::redis_pool::RedisPool;
use crate::secret::Secret;
use crate::store::sql::{ConnectOptions, SqlStore};
use crate::store::{Actor, NewUser};
use crate::store::{SharedStore, StoreError};
use crate::usage::alerts::Alerts;
use crate::usage::ext_proc::UsageProcessor;
use crate::usage::queue::{UsageQueue, Writer};
use crate::usage::settle::Settler;
use anyhow::Context;
use arc_swap::ArcSwap;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tonic_health::ServingStatus;

/// Where the master key came from, so `serve` can tell the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeySource {
    Config,
    Environment,
    /// Generated at start: shown once, then only its hash is kept.
    Generated(Secret),
}

/// The master key in force: `master_key` from the file, else `TOLLGATE_MASTER_KEY`, else a
/// new random one.
pub fn resolve_master_key(config: &Config, env: Option<String>) -> (Secret, MasterKeySource) {
    if !config.master_key.is_empty() {
        return (config.master_key.clone(), MasterKeySource::Config);
    }
    if let Some(value) = env.filter(|v| !v.trim().is_empty()) {
        return (Secret::new(value.trim()), MasterKeySource::Environment);
    }
    let generated = MasterKey::generate();
    (generated.clone(), MasterKeySource::Generated(generated))
}

/// Opens the configured store (no migrations). A database that cannot be used as
/// configured (its TLS fails verification) is [`Misconfigured`].
pub async fn open_store(config: &Config) -> anyhow::Result<SqlStore> {
    let options = ConnectOptions {
        max_connections: config.database.max_connections,
        acquire_timeout: config.database.timeout,
    };
    match SqlStore::connect(&config.database.url, &options).await {
        Ok(store) => Ok(store),
        Err(StoreError::Invalid(reason)) => Err(Misconfigured {
            backend: "database",
            reason,
        }
        .into()),
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "cannot open the database at {}",
            crate::config::redact_url(&config.database.url)
        ))),
    }
}

/// Creates `auth.bootstrap_admin` when no admin user exists yet (audit actor
/// `bootstrap`). Once any admin exists, the entry is ignored, so it can stay in the config.
pub async fn bootstrap_admin(
    store: &SharedStore,
    admin: &crate::config::BootstrapAdmin,
) -> anyhow::Result<bool> {
    let users = store.list_users().await?;
    if users.iter().any(|u| u.role == Role::Admin) {
        return Ok(false);
    }
    let hash = crate::authn::login::hash_blocking(admin.password.expose())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let user = store
        .create_user(
            &Actor::new("bootstrap", None),
            NewUser {
                username: admin.username.clone(),
                email: admin.email.clone(),
                role: Some(Role::Admin),
                password_hash: Some(hash),
                ..NewUser::default()
            },
        )
        .await?;
    tracing::info!(user.id = %user.id, user.name = %user.username, "created the bootstrap admin");
    Ok(true)
}

/// The channel admin writes travel to other replicas on: Redis pub/sub when `redis` is
/// configured, else Postgres `LISTEN/NOTIFY` when the store is Postgres, else none.
fn invalidator(
    config: &Config,
    auth: Arc<Authenticator>,
    metrics: Metrics,
) -> anyhow::Result<Invalidator> {
    if let Some(redis) = &config.redis {
        return Ok(Invalidator::redis(auth, redis, metrics));
    }
    let url = &config.database.url;
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let url = crate::backend_tls::postgres_url(url).map_err(|e| anyhow::anyhow!("{e}"))?;
        return Invalidator::postgres(auth, url, config.database.timeout, metrics)
            .map_err(|e| anyhow::anyhow!("{e}"));
    }
    Ok(Invalidator::local(auth, metrics))
}

/// Shared state of a built tollgate: what the gRPC edge and the HTTP API both use.
pub struct App {
    pub config: Arc<Config>,
    pub store: SharedStore,
    /// Who a credential is: Check and the HTTP API share it.
    pub auth: Arc<Authenticator>,
    /// May a request pass: the decision below every edge.
    pub admission: Arc<Admission>,
    /// The ext_authz edge.
    pub gate: Arc<Gate>,
    /// Applies admin writes to the caches here and publishes them to the other replicas.
    pub invalidator: Arc<Invalidator>,
    pub metrics: Metrics,
    /// tollgate's own login sessions; `None` when `auth.session` is not configured.
    pub sessions: Option<Arc<Sessions>>,
    /// Where ingestion puts usage records.
    pub usage: UsageQueue,
    /// Budget alerts: raised after writes, delivered by a loop [`App::start`] runs.
    pub alerts: Arc<Alerts>,
    /// The writer that empties `usage`, until [`App::start`] runs it.
    writer: Mutex<Option<Writer>>,
    /// Tells the listeners and the writer to stop.
    stop: watch::Sender<bool>,
}

impl App {
    /// Connects and migrates the store and builds the decision state. Binds nothing.
    pub async fn build(config: Config, master_key: &Secret) -> anyhow::Result<Arc<App>> {
        Self::build_with_clock(config, master_key, Clock::System).await
    }

    /// [`App::build`] with rate limits counted in `clock` (tests move a manual clock).
    ///
    /// A backend whose TLS fails verification is [`Misconfigured`]: the database is
    /// connected here anyway, and a `rediss://` Redis is connected once to find out (Redis
    /// down only warns: outages are `redis.failure_mode`'s business).
    pub async fn build_with_clock(
        config: Config,
        master_key: &Secret,
        clock: Clock,
    ) -> anyhow::Result<Arc<App>> {
        if let Some(redis) = &config.redis {
            crate::redis_pool::check_tls(redis).await?;
        }
        let store = open_store(&config).await?;
        crate::store::Store::migrate(&store)
            .await
            .context("cannot apply database migrations")?;
        let store: SharedStore = Arc::new(store);
        if let Some(admin) = &config.auth.bootstrap_admin {
            bootstrap_admin(&store, admin)
                .await
                .context("cannot create auth.bootstrap_admin")?;
        }
        Self::with_parts(config, master_key, store, clock)
    }

    /// Builds the decision state over an already opened store.
    pub fn with_store(config: Config, master_key: &Secret, store: SharedStore) -> Arc<App> {
        Self::with_parts(config, master_key, store, Clock::System)
            .expect("a configuration without redis builds")
    }

    /// Builds the decision state over an already opened store, counting rate limits in
    /// `clock`. Fails only when `redis` is configured wrong.
    pub fn with_parts(
        mut config: Config,
        master_key: &Secret,
        store: SharedStore,
        clock: Clock,
    ) -> anyhow::Result<Arc<App>> {
        // Only the master key's hash is kept (in the gate); the plaintext leaves the config,
        // and so does the bootstrap admin's password (used once, by `build`).
        config.master_key = Secret::default();
        config.auth.bootstrap_admin = None;
        let metrics = Metrics::new();
        let sessions = Sessions::from_config(&config.auth, store.clone()).map(Arc::new);
        let auth = Authenticator::new(
            &config,
            MasterKey::from_secret(master_key),
            store.clone(),
            sessions.clone(),
            metrics.clone(),
        );
        // One set of Redis connections for limits, budgets and the usage queue.
        let redis = match &config.redis {
            Some(redis) => Some(
                RedisPool::new(redis, redis.pool_size, redis.timeout)
                    .map_err(|e| anyhow::anyhow!("redis: {e}"))?,
            ),
            None => None,
        };
        let counters =
            Counters::with_redis_pool(store.clone(), &config, metrics.clone(), redis.clone());
        let auth = Arc::new(auth);
        let admission = Arc::new(Admission::new(
            Arc::new(ArcSwap::from_pointee(Policy::from_config(&config))),
            auth.clone(),
            counters,
            clock,
        ));
        let held = Arc::downgrade(&admission);
        metrics.count_reservations(move || {
            held.upgrade().map_or(0, |admission| {
                let now = admission.clock().now_ms().div_euclid(1000);
                admission.counters().open_reservations(now)
            })
        });
        let gate = Arc::new(Gate::new(admission.clone(), metrics.clone()));
        let invalidator = Arc::new(invalidator(&config, auth.clone(), metrics.clone())?);
        let (stop, stop_rx) = watch::channel(false);
        let alerts = Arc::new(
            Alerts::new(
                store.clone(),
                &config.budgets.alert_thresholds,
                Some(config.budgets.alert_webhook.clone()),
                Some(config.budgets.alert_secret.clone()),
                metrics.clone(),
            )
            .with_email(config.budgets.alert_email.as_ref())
            .with_clock(admission.clock().clone()),
        );
        let settler = Arc::new(Settler::new(
            store.clone(),
            admission.clone(),
            alerts.clone(),
            metrics.clone(),
            &config.models,
        ));
        let key_prefix = config.redis.as_ref().map(|r| r.key_prefix.as_str());
        let (usage, writer) = UsageQueue::with_redis_pool(
            &config.usage,
            redis.zip(key_prefix),
            settler,
            metrics.clone(),
            stop_rx,
        );
        Ok(Arc::new(App {
            config: Arc::new(config),
            store,
            auth,
            admission,
            gate,
            invalidator,
            metrics,
            sessions,
            usage,
            alerts,
            writer: Mutex::new(Some(writer)),
            stop,
        }))
    }

    /// Binds the gRPC and HTTP listeners and serves until [`Running::drain`] or
    /// [`Running::shutdown`].
    pub async fn start(self: &Arc<Self>) -> anyhow::Result<Running> {
        let grpc = TcpListener::bind(self.config.listen.grpc)
            .await
            .with_context(|| format!("cannot listen on listen.grpc {}", self.config.listen.grpc))?;
        let http = TcpListener::bind(self.config.listen.http)
            .await
            .with_context(|| format!("cannot listen on listen.http {}", self.config.listen.http))?;
        let mut background = Vec::new();
        if let Some((verifier, _)) = &self.auth.oidc {
            // Keys are read before the first request, so the first tokens need no fetch; an
            // issuer that is down now is retried by the refresher and on demand.
            for (issuer, reason) in verifier.refresh_all().await {
                tracing::warn!(%issuer, %reason, "cannot read the keys of an OIDC issuer at start; its tokens are refused with 503 until it answers");
            }
            background.push(verifier.spawn_refresher());
        }
        background.push(self.metrics.spawn_upkeep());
        if self.admission.counters().is_shared() {
            background.push(count_reservations(self.admission.clone()));
        }
        background.push(self.alerts.clone().spawn(self.stop.subscribe()));
        if let Some(keep) = self.config.usage.retention {
            background.push(crate::usage::retention::spawn(
                self.store.clone(),
                keep,
                self.metrics.clone(),
                self.stop.subscribe(),
            ));
        }
        background.extend(self.invalidator.start_listener(self.stop.subscribe()).await);
        let lifecycle = Lifecycle::new();
        background.push(lifecycle.clone().spawn_probe(
            self.store.clone(),
            self.config.database.timeout,
            self.admission.clone(),
        ));
        let grpc_addr = grpc.local_addr()?;
        let http_addr = http.local_addr()?;
        // The listeners stop on `close`; ext_proc streams still open are ended on `cut`;
        // the usage writer and the alert loop stop on `self.stop`, last (Running::shutdown).
        let (close, close_rx) = watch::channel(false);
        let (cut, cut_rx) = watch::channel(false);
        let streams = TaskTracker::new();

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_service_status(AUTHORIZATION, ServingStatus::Serving)
            .await;
        let authz = CheckServer::new(self.gate.clone(), lifecycle.clone());
        let usage = ExternalProcessorServer::with_interceptor(
            UsageProcessor::new(
                self.usage.clone(),
                self.config.clone(),
                self.admission.policy().load_full(),
            )
            .stopping(streams.clone(), cut_rx),
            crate::lifecycle::stream_interceptor(lifecycle.clone()),
        );
        let access_logs = crate::usage::als::service(
            self.usage.clone(),
            self.config.models.clone(),
            close_rx.clone(),
        );
        let mut grpc_stop = close_rx.clone();
        let grpc_task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(authz)
                .add_service(access_logs)
                .add_service(usage)
                .serve_with_incoming_shutdown(
                    // Without TCP_NODELAY a response written in two pieces waits for the
                    // peer's delayed ACK (~40 ms) before its second piece goes out.
                    tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true)),
                    async move {
                        let _ = grpc_stop.wait_for(|stop| *stop).await;
                    },
                )
                .await
                .context("gRPC server failed")
        });

        let api = Arc::new(crate::admin::Api {
            config: self.config.clone(),
            store: self.store.clone(),
            auth: self.auth.clone(),
            admission: self.admission.clone(),
            invalidator: self.invalidator.clone(),
            metrics: self.metrics.clone(),
            sessions: self.sessions.clone(),
        });
        // The web UI is served by the same listener, over the same state.
        let router = crate::admin::router(api.clone())
            .merge(crate::ui::router(api))
            .layer(axum::middleware::from_fn_with_state(
                lifecycle.clone(),
                crate::lifecycle::http_arrivals,
            ))
            .layer(axum::Extension(lifecycle.clone()));
        let mut http_stop = close_rx;
        let http_task = tokio::spawn(async move {
            axum::serve(
                http,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|stop| *stop).await;
            })
            .await
            .context("HTTP server failed")
        });

        let writer = self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .map(|writer| tokio::spawn(writer.run()));
        Ok(Running {
            grpc_addr,
            http_addr,
            lifecycle,
            drain_timeout: self.config.server.drain_timeout,
            health: health_reporter,
            close,
            cut,
            streams,
            stop: self.stop.clone(),
            tasks: vec![grpc_task, http_task],
            background,
            writer,
        })
    }
}

/// How often the reservations open in Redis are counted for `tollgate_reservations_open`.
const COUNT_RESERVATIONS_EVERY: Duration = Duration::from_secs(1);

/// Counts the reservations open in Redis every [`COUNT_RESERVATIONS_EVERY`].
fn count_reservations(admission: Arc<Admission>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let now = admission.clock().now_ms().div_euclid(1000);
            admission.counters().count_open(now).await;
            tokio::time::sleep(COUNT_RESERVATIONS_EVERY).await;
        }
    })
}

/// A started tollgate.
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    lifecycle: Arc<Lifecycle>,
    drain_timeout: Duration,
    /// gRPC health: NOT_SERVING once draining.
    health: tonic_health::server::HealthReporter,
    /// Stops the listeners: no new connections; open ones finish what is in flight.
    close: watch::Sender<bool>,
    /// Ends the ext_proc streams still open after the time they were given.
    cut: watch::Sender<bool>,
    /// The ext_proc streams' tasks: each queues its record as it ends.
    streams: TaskTracker,
    /// Stops the usage writer (after it has written what is queued) and the alert loop.
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    /// Loops that run until shutdown (OIDC key refresh, the backends' probe); aborted when
    /// stopping.
    background: Vec<JoinHandle<()>>,
    /// The usage writer: writes the queue out after the listeners and the streams stop.
    writer: Option<JoinHandle<()>>,
}

/// The least time in-flight ext_proc streams get once the listeners close, even when the
/// drain used all of `server.drain_timeout`.
const STREAM_GRACE: Duration = Duration::from_secs(5);
/// How long ended streams and stopped listeners may take to wind down.
const WIND_DOWN: Duration = Duration::from_secs(2);
/// How long shutdown waits for the usage writer to write the queue out.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
    }
}

impl Running {
    /// Waits until a stop is asked (Ok) or a listener fails.
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        if self.tasks.is_empty() {
            self.lifecycle.drain_asked().await;
            return Ok(());
        }
        let lifecycle = self.lifecycle.clone();
        let ended = tokio::select! {
            () = lifecycle.drain_asked() => None,
            (result, index, _) = futures::future::select_all(self.tasks.iter_mut()) => {
                Some((result, index))
            }
        };
        match ended {
            None => Ok(()),
            Some((result, index)) => {
                self.tasks.remove(index);
                result.context("server task panicked")?
            }
        }
    }

    /// The lifecycle the listeners share. [`Lifecycle::drain`] on it (signal handling)
    /// turns `/readyz` 503 at once and makes [`Running::wait`] return.
    pub fn lifecycle(&self) -> Arc<Lifecycle> {
        self.lifecycle.clone()
    }

    /// Stops as on SIGTERM: `/readyz` 503 at once, Check and ext_proc served while requests
    /// keep arriving (until none has for a second, or `server.drain_timeout`), then
    /// [`Running::shutdown`].
    pub async fn drain(self) -> anyhow::Result<()> {
        self.lifecycle.drain();
        self.health
            .set_service_status(AUTHORIZATION, ServingStatus::NotServing)
            .await;
        tracing::info!(
            drain_timeout = ?self.drain_timeout,
            "draining: /readyz answers 503; serving while requests keep arriving"
        );
        match self.lifecycle.drained(self.drain_timeout).await {
            Drained::Quiet => tracing::info!("no request for 1s: stopping"),
            Drained::Timeout => tracing::warn!(
                drain_timeout = ?self.drain_timeout,
                "requests still arriving after server.drain_timeout: stopping anyway"
            ),
        }
        self.shutdown().await
    }

    /// Stops now: Checks are refused (once the requests already admitted have opened their
    /// ext_proc streams), the listeners close, in-flight streams finish (within the rest of
    /// `server.drain_timeout`, at least [`STREAM_GRACE`]; then they are ended and their
    /// usage recorded as seen), and the usage queue is written out.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.lifecycle.drain();
        let since = self.lifecycle.draining_since().unwrap_or_else(Instant::now);
        self.lifecycle.close_door().await;
        let _ = self.close.send(true);

        let deadline = (since + self.drain_timeout).max(Instant::now() + STREAM_GRACE);
        let mut results = Vec::new();
        let mut listeners = Box::pin(futures::future::join_all(self.tasks.iter_mut()));
        match tokio::time::timeout_at(deadline, &mut listeners).await {
            Ok(done) => results = done,
            Err(_) => {
                tracing::warn!(
                    "ext_proc streams still open: ending them (their usage is recorded as seen, marked estimated)"
                );
                let _ = self.cut.send(true);
                match tokio::time::timeout(WIND_DOWN, &mut listeners).await {
                    Ok(done) => results = done,
                    Err(_) => tracing::error!(
                        "the listeners did not stop after their streams were ended; leaving them"
                    ),
                }
            }
        }
        drop(listeners);
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.streams.close();
        if tokio::time::timeout(WIND_DOWN, self.streams.wait())
            .await
            .is_err()
        {
            tracing::error!("ext_proc streams did not queue their usage in time");
        }

        let _ = self.stop.send(true);
        if let Some(writer) = self.writer.take() {
            if tokio::time::timeout(FLUSH_TIMEOUT, writer).await.is_err() {
                tracing::error!(
                    "usage records still queued after {FLUSH_TIMEOUT:?} (the database refuses them); they are lost with this process"
                );
            }
        }
        tracing::info!(
            after = ?since.elapsed(),
            "listeners closed, streams ended and usage written"
        );
        for result in results {
            result.context("server task panicked")??;
        }
        Ok(())
    }
}
