//! The usage queue and its batch writer: in process (the embedded default, described here),
//! or on a Redis Stream when `redis` is configured (see [`redis_queue`](super::redis_queue),
//! which falls back to this in-process queue while Redis is unreachable).
//!
//! Ingestion (ext_proc, access logs) pushes records; a bounded channel holds them; one
//! writer task takes up to `usage.batch_size` records (or what arrived within
//! `usage.batch_interval`) and commits them with their spend in one store transaction.
//!
//! Nothing is dropped: a full queue makes `push` wait (backpressure on ingestion), a failed
//! write is retried with backoff until it commits (the batch stays in memory meanwhile), and
//! on shutdown the writer drains the queue before it stops. Records are idempotent on
//! `request_id` in the store, so a retried batch that had in fact committed counts once.

use super::redis_queue::{RedisQueue, RedisWriter};
use super::settle::Settler;
use super::UsageRecord;
use crate::config;
use crate::metrics::{Metrics, Oldest};
use crate::redis_pool::RedisPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The queue has stopped (tollgate is shutting down).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the usage queue is closed")]
pub struct QueueClosed;

/// A record in the in-process queue, with when it was pushed (Unix ms).
struct Queued {
    enqueued_ms: i64,
    record: UsageRecord,
}

/// Where ingestion puts records. Cheap to clone.
#[derive(Clone)]
pub struct UsageQueue {
    tx: mpsc::Sender<Queued>,
    metrics: Metrics,
    /// The Redis Stream, when `redis` is configured; `tx` is then the fallback while Redis
    /// is unreachable.
    redis: Option<Arc<RedisQueue>>,
}

impl UsageQueue {
    /// A queue and the writer that empties it through `settler` (into its store); run the
    /// writer with [`Writer::run`].
    pub fn new(
        config: &config::Usage,
        settler: Arc<Settler>,
        metrics: Metrics,
        stop: watch::Receiver<bool>,
    ) -> (UsageQueue, Writer) {
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let queue = UsageQueue {
            tx,
            metrics: metrics.clone(),
            redis: None,
        };
        let writer = Writer {
            memory: MemoryWriter {
                rx,
                settler,
                batch_size: config.batch_size,
                batch_interval: config.batch_interval,
                oldest: metrics.usage_queue(),
                metrics,
                stop,
            },
            redis: None,
        };
        (queue, writer)
    }

    /// [`UsageQueue::new`], on a Redis Stream when `redis` is given (see
    /// [`redis_queue`](super::redis_queue)), with the in-process queue as its fallback while
    /// Redis is unreachable. Does no I/O; fails only on an invalid `redis.url` or
    /// `redis.cluster` (the reason never carries the URL).
    pub fn with_redis(
        config: &config::Usage,
        redis: Option<&config::Redis>,
        settler: Arc<Settler>,
        metrics: Metrics,
        stop: watch::Receiver<bool>,
    ) -> Result<(UsageQueue, Writer), String> {
        let pool = match redis {
            Some(redis) => Some((
                RedisPool::new(redis, redis.pool_size, redis.timeout)?,
                redis.key_prefix.as_str(),
            )),
            None => None,
        };
        Ok(Self::with_redis_pool(config, pool, settler, metrics, stop))
    }

    /// [`UsageQueue::with_redis`] through connections already made (shared with rate limits
    /// and budgets), under a key prefix.
    pub fn with_redis_pool(
        config: &config::Usage,
        redis: Option<(RedisPool, &str)>,
        settler: Arc<Settler>,
        metrics: Metrics,
        stop: watch::Receiver<bool>,
    ) -> (UsageQueue, Writer) {
        let Some((pool, key_prefix)) = redis else {
            return Self::new(config, settler, metrics, stop);
        };
        let (redis_queue, redis_writer) = RedisQueue::with_pool(
            pool,
            key_prefix,
            config,
            settler.clone(),
            metrics.clone(),
            stop.clone(),
        );
        let (mut queue, mut writer) = Self::new(config, settler, metrics, stop);
        queue.redis = Some(Arc::new(redis_queue));
        writer.redis = Some(redis_writer);
        (queue, writer)
    }

    /// Queues a record, waiting while the queue is full. On Redis, waits for the stream to
    /// take it, or (Redis unreachable after a few attempts) queues it in process.
    pub async fn push(&self, record: UsageRecord) -> Result<(), QueueClosed> {
        let enqueued_ms = chrono::Utc::now().timestamp_millis();
        let record = match &self.redis {
            Some(redis) => match redis.push(record).await {
                Ok(()) => return Ok(()),
                Err(record) => record,
            },
            None => record,
        };
        self.metrics.usage_queue_depth().increment(1.0);
        let queued = Queued {
            enqueued_ms,
            record,
        };
        self.tx.send(queued).await.map_err(|_| {
            self.metrics.usage_queue_depth().decrement(1.0);
            QueueClosed
        })
    }

    /// On Redis: how often acked entries are trimmed off the stream (default
    /// [`TRIM_EVERY`](super::redis_queue::TRIM_EVERY)). Nothing without Redis.
    pub fn set_trim_every(&self, every: Duration) {
        if let Some(redis) = &self.redis {
            redis.set_trim_every(every);
        }
    }

    /// Whether records go to a Redis Stream.
    pub fn is_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// On Redis: how long an entry stays pending with a reader before another writer claims
    /// it (default [`CLAIM_IDLE`](super::redis_queue::CLAIM_IDLE)); tests shorten it.
    /// Nothing without Redis.
    pub fn set_claim_idle(&self, idle: Duration) {
        if let Some(redis) = &self.redis {
            redis.set_claim_idle(idle);
        }
    }
}

/// Commits queued records in batches: the in-process queue, and the Redis Stream when
/// configured.
pub struct Writer {
    memory: MemoryWriter,
    redis: Option<RedisWriter>,
}

impl Writer {
    /// Writes batches until told to stop, then writes out what is queued (in process, and
    /// on Redis what is unread in the stream) and returns. Stop it only once nothing is
    /// pushed any more: a push after it returned finds the queue closed.
    pub async fn run(self) {
        match self.redis {
            None => self.memory.run().await,
            Some(redis) => {
                tokio::join!(self.memory.run(), redis.run());
            }
        }
    }
}

/// Commits records queued in process in batches.
struct MemoryWriter {
    rx: mpsc::Receiver<Queued>,
    /// Budget reservations, replaced by the real cost once a record is written.
    settler: Arc<Settler>,
    batch_size: usize,
    batch_interval: Duration,
    /// When the oldest record not yet written was pushed: the first of the batch in hand
    /// (the queue is first in, first out), none between batches.
    oldest: Oldest,
    metrics: Metrics,
    stop: watch::Receiver<bool>,
}

/// Backoff between attempts to write a batch the store refused: doubling, capped.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl MemoryWriter {
    /// Writes batches until told to stop, then drains what is queued and returns.
    async fn run(mut self) {
        let mut stopping = *self.stop.borrow();
        loop {
            let first = if stopping {
                match self.rx.try_recv() {
                    Ok(record) => record,
                    Err(_) => return,
                }
            } else {
                tokio::select! {
                    record = self.rx.recv() => match record {
                        Some(record) => record,
                        None => return,
                    },
                    _ = self.stop.wait_for(|stop| *stop) => {
                        stopping = true;
                        continue;
                    }
                }
            };
            self.oldest.set(Some(first.enqueued_ms));
            let mut batch = vec![first.record];
            let deadline = tokio::time::Instant::now() + self.batch_interval;
            while batch.len() < self.batch_size {
                if stopping {
                    match self.rx.try_recv() {
                        Ok(queued) => batch.push(queued.record),
                        Err(_) => break,
                    }
                    continue;
                }
                // A stop ends the wait for more: what is queued is taken at once instead.
                tokio::select! {
                    more = tokio::time::timeout_at(deadline, self.rx.recv()) => match more {
                        Ok(Some(queued)) => batch.push(queued.record),
                        Ok(None) | Err(_) => break,
                    },
                    _ = self.stop.wait_for(|stop| *stop) => stopping = true,
                }
            }
            self.write(batch).await;
            self.oldest.set(None);
        }
    }

    /// Writes one batch, retrying until the store takes it.
    async fn write(&self, batch: Vec<UsageRecord>) {
        let mut delay = RETRY_FIRST;
        let mut failing = false;
        loop {
            match self.settler.commit(&batch).await {
                Ok(()) => {
                    self.metrics
                        .usage_queue_depth()
                        .decrement(batch.len() as f64);
                    if failing {
                        tracing::info!(records = batch.len(), "usage records written again");
                    }
                    return;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, records = batch.len(), "cannot write usage records; retrying until the store takes them");
                        failing = true;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    }
}
