//! Admin writes reach every replica's caches within a second.
//!
//! An admin write that changes a decision (a key revoked, blocked, rotated, deleted, its
//! limits changed; a user blocked, deleted, given another role; a team's members, limits or
//! budget changed; a custom role's permissions changed) drops the stale cache entries in this process at once and publishes the
//! same [`Change`] to every other replica:
//!
//! - over Redis pub/sub (channel `{key_prefix}invalidate`) when `redis` is configured (on a
//!   Redis Cluster through any node, each connection to the next: the cluster forwards a
//!   message published on one node to the subscribers of every node);
//! - else over Postgres `LISTEN/NOTIFY` when the store is Postgres: channel
//!   `tollgate_invalidate` in the schema `public`, `tollgate_invalidate:<md5 of the schema,
//!   24 hex digits>` in any other (a channel is per database: deployments in two schemas of
//!   one database must not hear each other);
//! - else (SQLite: one process) nowhere.
//!
//! Each replica listens and applies what others published through the same cache calls
//! as a local write, so the caches' generation counter (see [`crate::authn::key_cache`])
//! keeps a lookup that was in flight from putting back a record read before the write.
//! Messages are at most once: while the listener is disconnected, `cache.key_ttl` bounds
//! how stale an entry gets, and every (re)connection flushes the caches, so what was missed
//! meanwhile is read again. `tollgate_invalidation_lag_seconds` is the time from the write
//! (the publisher's clock) to its application here.

use crate::authn::api_key::KeyHash;
use crate::authn::{Authenticator, Invalidation};
use crate::metrics::Metrics;
use crate::redis_pool::RedisTarget;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The Postgres channel of the connection's schema (`current_schema()`, as the URL's
/// `search_path` makes it), as an SQL expression.
const PG_CHANNEL: &str = "CASE WHEN coalesce(current_schema(), 'public') = 'public' \
     THEN 'tollgate_invalidate' \
     ELSE 'tollgate_invalidate:' || left(md5(current_schema()), 24) END";

/// How long start-up waits for the listener's first connection.
pub const FIRST_CONNECT: Duration = Duration::from_secs(2);

/// How long a listener waits before connecting again after losing its channel.
pub const RECONNECT_AFTER: Duration = Duration::from_millis(500);

/// What an admin write made stale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Records of a key, a user, a team, an org, or all.
    Key(String),
    User(String),
    Team(String),
    Org(String),
    /// A custom role's permissions changed (by name).
    Role(String),
    All,
    /// A key secret that was unknown may exist now (a key created or rotated): forget
    /// the "no such key" answer for this hash (hex).
    NewSecret(String),
    /// A user was created: OIDC identities refused as "no account" may have one now.
    UserCreated,
}

impl Change {
    pub fn new_secret(hash: &KeyHash) -> Change {
        Change::NewSecret(hash.to_hex())
    }
}

impl From<Invalidation> for Change {
    fn from(what: Invalidation) -> Change {
        match what {
            Invalidation::Key(id) => Change::Key(id),
            Invalidation::User(id) => Change::User(id),
            Invalidation::Team(id) => Change::Team(id),
            Invalidation::Org(id) => Change::Org(id),
            Invalidation::Role(name) => Change::Role(name),
            Invalidation::All => Change::All,
        }
    }
}

/// One published change.
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    /// The publishing process (its own messages are not applied twice).
    origin: String,
    /// Unix milliseconds at the publisher.
    sent_ms: i64,
    change: Change,
}

/// Where changes are published.
enum Channel {
    None,
    Redis { target: RedisTarget, name: String },
    Postgres { url: String, pool: sqlx::PgPool },
}

/// Applies changes here and publishes them to the other replicas.
pub struct Invalidator {
    auth: Arc<Authenticator>,
    origin: String,
    channel: Channel,
    /// A publishing connection, made on first use.
    publisher: tokio::sync::Mutex<Option<::redis::aio::MultiplexedConnection>>,
    /// Redis connections made so far: on a Redis Cluster each goes to the next node.
    connections: AtomicUsize,
    metrics: Metrics,
}

impl Invalidator {
    /// No channel: changes apply in this process only.
    pub fn local(auth: Arc<Authenticator>, metrics: Metrics) -> Invalidator {
        Invalidator {
            auth,
            origin: crate::domain::new_id(),
            channel: Channel::None,
            publisher: tokio::sync::Mutex::new(None),
            connections: AtomicUsize::new(0),
            metrics,
        }
    }

    /// Over Redis pub/sub, channel `{key_prefix}invalidate`.
    pub fn redis(
        auth: Arc<Authenticator>,
        redis: &crate::config::Redis,
        metrics: Metrics,
    ) -> Invalidator {
        Invalidator {
            channel: Channel::Redis {
                target: RedisTarget::from(redis),
                name: format!("{}invalidate", redis.key_prefix),
            },
            ..Invalidator::local(auth, metrics)
        }
    }

    /// Over Postgres `LISTEN/NOTIFY` in the database at `url` (as sqlx reads it: see
    /// [`crate::backend_tls::postgres_url`]). Does no I/O: the notifying connection (one,
    /// bounded by `timeout`) and the listener's are made on first use.
    pub fn postgres(
        auth: Arc<Authenticator>,
        url: String,
        timeout: Duration,
        metrics: Metrics,
    ) -> Result<Invalidator, String> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(timeout)
            .connect_lazy(&url)
            .map_err(|e| format!("database: {e}"))?;
        Ok(Invalidator {
            channel: Channel::Postgres { url, pool },
            ..Invalidator::local(auth, metrics)
        })
    }

    /// Which channel carries changes: `redis`, `postgres` or `none`.
    pub fn channel(&self) -> &'static str {
        match self.channel {
            Channel::None => "none",
            Channel::Redis { .. } => "redis",
            Channel::Postgres { .. } => "postgres",
        }
    }

    /// Applies `change` here at once, then publishes it. A failed publication is logged and
    /// counted: the other replicas learn the change at the latest after `cache.key_ttl`.
    pub async fn send(&self, change: impl Into<Change>) {
        let change = change.into();
        self.apply(&change);
        if matches!(self.channel, Channel::None) {
            return;
        }
        let message = Message {
            origin: self.origin.clone(),
            sent_ms: chrono::Utc::now().timestamp_millis(),
            change,
        };
        let text = serde_json::to_string(&message).expect("a change serialises");
        if let Err((backend, reason)) = self.publish(&text).await {
            self.metrics.backend_error(backend);
            tracing::warn!(%reason, "cannot publish an invalidation; other replicas apply it within cache.key_ttl");
        }
    }

    async fn publish(&self, text: &str) -> Result<(), (&'static str, String)> {
        match &self.channel {
            Channel::None => Ok(()),
            Channel::Redis { target, name } => {
                let mut publisher = self.publisher.lock().await;
                for attempt in 0..2 {
                    if publisher.is_none() {
                        let client = target
                            .node_client(self.connections.fetch_add(1, Ordering::Relaxed))
                            .map_err(|e| ("redis", e))?;
                        let conn = tokio::time::timeout(
                            Duration::from_secs(2),
                            client.get_multiplexed_async_connection(),
                        )
                        .await
                        .map_err(|_| ("redis", "redis: timed out connecting".to_owned()))?
                        .map_err(|e| ("redis", crate::redis_pool::reason(&e)))?;
                        *publisher = Some(conn);
                    }
                    let conn = publisher.as_mut().expect("connected above");
                    let sent: Result<i64, _> = tokio::time::timeout(
                        Duration::from_secs(2),
                        ::redis::cmd("PUBLISH")
                            .arg(name)
                            .arg(text)
                            .query_async(conn),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(::redis::RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "timed out",
                        )))
                    });
                    match sent {
                        Ok(_) => return Ok(()),
                        // A connection that failed is made again once.
                        Err(e) if attempt == 0 => {
                            tracing::debug!(error = %crate::redis_pool::reason(&e), "publishing again on a new connection");
                            *publisher = None;
                        }
                        Err(e) => {
                            *publisher = None;
                            return Err(("redis", crate::redis_pool::reason(&e)));
                        }
                    }
                }
                Ok(())
            }
            Channel::Postgres { pool, .. } => {
                sqlx::query(&format!("SELECT pg_notify({PG_CHANNEL}, $1)"))
                    .bind(text)
                    .execute(pool)
                    .await
                    .map(|_| ())
                    .map_err(|e| ("database", format!("NOTIFY failed: {e}")))
            }
        }
    }

    /// Drops what `change` made stale in this process.
    pub fn apply(&self, change: &Change) {
        match change {
            Change::Key(id) => self.auth.invalidate(Invalidation::Key(id.clone())),
            Change::User(id) => self.auth.invalidate(Invalidation::User(id.clone())),
            Change::Team(id) => self.auth.invalidate(Invalidation::Team(id.clone())),
            Change::Org(id) => self.auth.invalidate(Invalidation::Org(id.clone())),
            Change::Role(name) => self.auth.invalidate(Invalidation::Role(name.clone())),
            Change::All => self.flush(),
            Change::NewSecret(hex) => match decode_hash(hex) {
                Some(hash) => self.auth.keys.forget(&hash),
                None => self.flush(),
            },
            Change::UserCreated => self.auth.user_created(),
        }
    }

    /// Everything cached may be stale (a listener connected after missing messages).
    fn flush(&self) {
        self.auth.invalidate(Invalidation::All);
        self.auth.user_created();
    }

    /// Applies one received message; answers whether it was another replica's.
    fn receive(&self, payload: &str) -> bool {
        let message: Message = match serde_json::from_str(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "an unreadable invalidation; flushing the caches");
                self.flush();
                return true;
            }
        };
        if message.origin == self.origin {
            return false;
        }
        self.apply(&message.change);
        let lag_ms = (chrono::Utc::now().timestamp_millis() - message.sent_ms).max(0);
        self.metrics.invalidation_lag(lag_ms as f64 / 1000.0);
        true
    }

    /// Listens to the channel until `stop`, connecting again after a loss (each connection
    /// after the first flushes the caches). Returns once the first connection is listening
    /// or has failed (at most `FIRST_CONNECT`), so a replica serves with its channel live.
    /// `None` without a channel.
    pub async fn start_listener(
        self: &Arc<Self>,
        stop: watch::Receiver<bool>,
    ) -> Option<JoinHandle<()>> {
        if matches!(self.channel, Channel::None) {
            return None;
        }
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let this = self.clone();
        let task = tokio::spawn(async move { this.listen(stop, ready_tx).await });
        if tokio::time::timeout(FIRST_CONNECT, ready_rx).await.is_err() {
            tracing::warn!(
                channel = self.channel(),
                "the invalidation channel is not listening yet; serving anyway"
            );
        }
        Some(task)
    }

    async fn listen(
        self: Arc<Self>,
        mut stop: watch::Receiver<bool>,
        ready: tokio::sync::oneshot::Sender<()>,
    ) {
        let mut connected_before = false;
        let mut ready = Some(ready);
        loop {
            let outcome = tokio::select! {
                outcome = self.listen_once(&mut connected_before, &mut ready) => outcome,
                _ = stop.wait_for(|stop| *stop) => return,
            };
            // A first connection that failed does not hold the start up either.
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            }
            if let Err(reason) = outcome {
                tracing::warn!(channel = self.channel(), %reason, "invalidation channel lost; caches expire within cache.key_ttl until it is back");
            }
            tokio::select! {
                _ = tokio::time::sleep(RECONNECT_AFTER) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// One connection: subscribe, flush, apply messages until the connection ends.
    async fn listen_once(
        &self,
        connected_before: &mut bool,
        ready: &mut Option<tokio::sync::oneshot::Sender<()>>,
    ) -> Result<(), String> {
        match &self.channel {
            Channel::None => Ok(()),
            Channel::Redis { target, name } => {
                let client =
                    target.node_client(self.connections.fetch_add(1, Ordering::Relaxed))?;
                let mut pubsub =
                    tokio::time::timeout(Duration::from_secs(5), client.get_async_pubsub())
                        .await
                        .map_err(|_| "redis: timed out connecting".to_owned())?
                        .map_err(|e| crate::redis_pool::reason(&e))?;
                pubsub
                    .subscribe(name)
                    .await
                    .map_err(|e| crate::redis_pool::reason(&e))?;
                self.connected(connected_before, ready);
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    match message.get_payload::<String>() {
                        Ok(payload) => {
                            self.receive(&payload);
                        }
                        Err(e) => {
                            tracing::warn!(error = %crate::redis_pool::reason(&e), "an invalidation that is not text")
                        }
                    }
                }
                Err("redis: the subscription ended".to_owned())
            }
            Channel::Postgres { url, .. } => {
                let mut listener = sqlx::postgres::PgListener::connect(url)
                    .await
                    .map_err(|e| format!("database: {e}"))?;
                let channel: String = sqlx::query_scalar(&format!("SELECT {PG_CHANNEL}"))
                    .fetch_one(&mut listener)
                    .await
                    .map_err(|e| format!("database: {e}"))?;
                listener
                    .listen(&channel)
                    .await
                    .map_err(|e| format!("database: {e}"))?;
                self.connected(connected_before, ready);
                loop {
                    // `None`: the connection was lost (the next call would reconnect, but
                    // what was sent meanwhile is gone: start over with a flush).
                    match listener.try_recv().await {
                        Ok(Some(notification)) => {
                            self.receive(notification.payload());
                        }
                        Ok(None) => {
                            return Err("database: the LISTEN connection was lost".to_owned())
                        }
                        Err(e) => return Err(format!("database: {e}")),
                    }
                }
            }
        }
    }

    fn connected(
        &self,
        connected_before: &mut bool,
        ready: &mut Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        if *connected_before {
            // What was published while no listener was connected is lost: read everything
            // again.
            self.flush();
            tracing::info!(
                channel = self.channel(),
                "invalidation channel back; caches flushed"
            );
        } else if let Some(ready) = ready.take() {
            // Before the first connection nothing was served: nothing to flush.
            tracing::debug!(channel = self.channel(), "listening for invalidations");
            let _ = ready.send(());
        } else {
            // The first connection came after start-up gave up waiting: requests were
            // decided meanwhile.
            self.flush();
        }
        *connected_before = true;
    }
}

fn decode_hash(hex_text: &str) -> Option<KeyHash> {
    let bytes = hex::decode(hex_text).ok()?;
    Some(KeyHash(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_travel_as_small_json() {
        let message = Message {
            origin: "o".into(),
            sent_ms: 1,
            change: Change::Key("k1".into()),
        };
        assert_eq!(
            serde_json::to_string(&message).unwrap(),
            r#"{"origin":"o","sent_ms":1,"change":{"key":"k1"}}"#
        );
        let back: Message =
            serde_json::from_str(r#"{"origin":"o","sent_ms":1,"change":"user_created"}"#).unwrap();
        assert_eq!(back.change, Change::UserCreated);
        let hash = KeyHash([7; 32]);
        let Change::NewSecret(hex) = Change::new_secret(&hash) else {
            panic!()
        };
        assert_eq!(decode_hash(&hex).map(|h| h.0), Some([7; 32]));
        assert!(decode_hash("zz").is_none());
    }
}
