//! The Redis connections shared by rate-limit buckets and budget reservations: a bounded
//! pool of multiplexed connections, every call (checkout included) bounded by one timeout,
//! and errors as short reasons that never carry the URL (it may hold a password).
//!
//! A pooled connection is handed out without a check, so a call is exactly one round trip;
//! a connection idle for longer than [`IDLE_CHECK_AFTER`] is PINGed before reuse. A
//! connection that fails is dropped along with every idle one (they most likely point at the
//! same dead server), and the next call connects afresh.

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, ErrorKind, FromRedisValue, RedisError};
use deadpool::managed;
use std::time::Duration;
use tokio::time::{timeout_at, Instant};

/// A pooled connection idle for longer than this is PINGed before it is handed out (a
/// server `timeout` or a middlebox may have closed it); busier ones are trusted.
pub const IDLE_CHECK_AFTER: Duration = Duration::from_secs(30);

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

pub struct RedisPool {
    pool: managed::Pool<Manager>,
    timeout: Duration,
}

impl RedisPool {
    /// A pool for the Redis at `url` (`redis://[user:password@]host:port[/db]`), at most
    /// `size` connections, every call bounded by `timeout`. Does no I/O.
    pub fn new(url: &str, size: usize, timeout: Duration) -> Result<RedisPool, String> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let inner = deadpool_redis::Manager::new_with_config(url, config)
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

/// A short reason for a failed call: the error's category and, for server errors, its code
/// and message. Never the URL.
pub fn reason(e: &RedisError) -> String {
    let what = if e.is_timeout() {
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
