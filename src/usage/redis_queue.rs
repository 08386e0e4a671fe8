//! The usage queue on a Redis Stream (when `redis` is configured): records survive a
//! restart of tollgate, and every replica's writer shares the work through one consumer
//! group.
//!
//! # Layout
//!
//! - `{key_prefix}usage`: the stream. [`UsageQueue::push`](super::queue::UsageQueue::push)
//!   `XADD`s one entry per record with a single field, [`RECORD_FIELD`], holding the
//!   record as JSON. No `MAXLEN`: nothing is dropped. Entries the group has acked are
//!   trimmed off (`XTRIM MINID`) by the writers every [`TRIM_EVERY`], so the stream holds
//!   about what is pending or unread (see `RedisWriter::maybe_trim`).
//! - Consumer group [`GROUP`] on it, created (with `MKSTREAM`, from id `0`, so entries added
//!   before any writer ran are read too) when a writer starts or finds it missing. Each
//!   writer is one consumer named `hostname-pid-random`.
//! - `{key_prefix}usage:dead`: the dead-letter stream. A poison entry (not a usage record,
//!   or one the store refuses as invalid) is added there with the fields `id` (the original
//!   entry id), `reason` and `payload` (the original record field, or every field of the
//!   entry as JSON when it has none), and then acked on the main stream.
//!
//! On a Redis Cluster (`redis.cluster`) each stream is one key, so one slot: the queue lives
//! on one shard, and every command names one key.
//!
//! # Writer
//!
//! Pushes go through the Redis connections rate limits and budgets use; the writer reads on
//! a connection of its own (a blocking read would hold up every call on a shared one).
//!
//! `XREADGROUP ... COUNT batch_size BLOCK ...` until a first entry arrives, then more until
//! the batch is full or `usage.batch_interval` has passed since the first; the batch is
//! committed with `store.record_usage` (retried with backoff while the store fails), the
//! budgets, token buckets and alerts are settled ([`Settler`]), and exactly the committed entries are `XACK`ed. A batch the store
//! calls invalid is split in halves until the bad record(s) are alone; those go to the
//! dead-letter stream. Entries pending for longer than the claim idle time (a dead
//! replica's, or this writer's own whose ack failed) are taken over with `XAUTOCLAIM` and
//! processed the same way. Records are idempotent on request id, so an entry written twice
//! (claimed while its first reader was still retrying, or acked after a crash) counts once.
//!
//! On shutdown (after the listeners have stopped and every ext_proc stream has queued its
//! record) the writer finishes the batch in hand, then reads, writes and acks what is still
//! unread in the stream until a read comes back empty, and returns. A batch the store
//! refuses meanwhile stays pending, and what is left unread stays in the stream: the next
//! writer to start claims and reads them.
//!
//! # Redis unreachable
//!
//! A push that cannot reach Redis is retried ([`PUSH_ATTEMPTS`] attempts with backoff, each
//! bounded by `redis.timeout`); then the record goes to the in-process queue instead, so it
//! is still written (but lost if this process dies before). This is logged once per outage.
//! The writer keeps retrying Redis with backoff meanwhile.
//!
//! # Queue depth
//!
//! `tollgate_usage_queue_depth` shows the group's `pending` (read, not yet acked) plus its
//! `lag` (not yet read) from `XINFO GROUPS`, as last seen by this writer (refreshed after
//! each batch and about once a second), plus the records in the in-process fallback queue.
//! Every replica reports the same shared backlog.

use super::settle::Settler;
use super::UsageRecord;
use crate::backend::{Backend, BackendError};
use crate::config;
use crate::metrics::{Metrics, Oldest};
use crate::redis_pool::{failure, Call, Connection, Connector, RedisPool};
use crate::store::StoreError;
use ::redis::{Cmd, ErrorKind, FromRedisValue, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;

/// The consumer group every writer joins.
pub const GROUP: &str = "tollgate-writers";
/// The one field of a stream entry: the record as JSON.
pub const RECORD_FIELD: &str = "record";
/// How long an entry stays pending with its reader before another writer claims it.
pub const CLAIM_IDLE: Duration = Duration::from_secs(30);
/// How often a writer trims acked entries off the stream.
pub const TRIM_EVERY: Duration = Duration::from_secs(60);
/// Attempts of one push before the record goes to the in-process queue.
pub const PUSH_ATTEMPTS: u32 = 4;
/// Backoff after the first failed push attempt (doubled after each).
const PUSH_RETRY_FIRST: Duration = Duration::from_millis(25);
/// Longest one blocking read waits, so the writer notices shutdown and claims on time.
const READ_BLOCK_MAX: Duration = Duration::from_millis(500);
/// Backoff between attempts while Redis or the store fails: doubling, capped.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often the queue depth gauge is refreshed when no batch is written.
const DEPTH_EVERY: Duration = Duration::from_secs(1);

/// The stream's key for `key_prefix`.
pub fn stream_key(key_prefix: &str) -> String {
    format!("{key_prefix}usage")
}

/// The dead-letter stream's key for `key_prefix`.
pub fn dead_key(key_prefix: &str) -> String {
    format!("{key_prefix}usage:dead")
}

/// One connection to Redis (to a Redis Cluster: one cluster connection) of the writer's
/// own, made on first use and again after a failure. Every call is bounded by the
/// configured timeout (plus the blocking time it asks for).
struct Link {
    connector: Connector,
    conn: Mutex<Option<Connection>>,
    timeout: Duration,
}

impl Link {
    /// Replies are bounded here (per call, blocking time included), not by `connector`.
    fn new(connector: Connector, timeout: Duration) -> Link {
        Link {
            connector,
            conn: Mutex::new(None),
            timeout,
        }
    }

    async fn connection(&self) -> Result<Connection, BackendError> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = tokio::time::timeout(self.timeout, self.connector.connect())
            .await
            .map_err(|_| BackendError::unavailable(Backend::Redis, "redis: timed out connecting"))?
            .map_err(|e| failure(&e))?;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn forget(&self) {
        *self.conn.lock().await = None;
    }

    /// Runs `cmd`, bounded by the timeout plus `blocking`.
    async fn query<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        blocking: Duration,
    ) -> Result<T, BackendError> {
        let mut conn = self.connection().await?;
        match tokio::time::timeout(self.timeout + blocking, cmd.query_async(&mut conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                if !matches!(e.kind(), ErrorKind::Server(_) | ErrorKind::Extension) {
                    self.forget().await;
                }
                Err(failure(&e))
            }
            Err(_) => {
                // The reply may still arrive on this connection: do not reuse it.
                self.forget().await;
                Err(BackendError::unavailable(
                    Backend::Redis,
                    "redis: timed out",
                ))
            }
        }
    }
}

/// Settings shared by the queue and its writer.
struct Shared {
    stream: String,
    dead: String,
    /// [`CLAIM_IDLE`] unless changed with [`RedisQueue::set_claim_idle`], in ms.
    claim_idle_ms: AtomicU64,
    /// [`TRIM_EVERY`] unless changed with [`RedisQueue::set_trim_every`], in ms.
    trim_every_ms: AtomicU64,
}

/// The pushing side: `XADD`s records.
pub struct RedisQueue {
    shared: Arc<Shared>,
    /// The connections shared with rate limits and budgets.
    pool: RedisPool,
    /// Pushes are going to the in-process queue (logged once per outage).
    falling_back: AtomicBool,
}

impl RedisQueue {
    /// The queue under `key_prefix`, pushing through `pool`; its writer reads on a
    /// connection of its own from the same Redis (its blocking reads would hold up the
    /// pool's callers).
    pub fn with_pool(
        pool: RedisPool,
        key_prefix: &str,
        usage: &config::Usage,
        settler: Arc<Settler>,
        metrics: Metrics,
        stop: watch::Receiver<bool>,
    ) -> (RedisQueue, RedisWriter) {
        let shared = Arc::new(Shared {
            stream: stream_key(key_prefix),
            dead: dead_key(key_prefix),
            claim_idle_ms: AtomicU64::new(CLAIM_IDLE.as_millis() as u64),
            trim_every_ms: AtomicU64::new(TRIM_EVERY.as_millis() as u64),
        });
        let writer = RedisWriter {
            link: Link::new(pool.connector().clone(), pool.timeout()),
            shared: shared.clone(),
            consumer: consumer_name(),
            settler,
            metrics: metrics.clone(),
            batch_size: usage.batch_size.max(1),
            batch_interval: usage.batch_interval,
            stop,
            reported_depth: 0,
            oldest: metrics.usage_queue(),
            depth_at: None,
            trimmed_at: Instant::now(),
            failing_redis: false,
        };
        let queue = RedisQueue {
            shared,
            pool,
            falling_back: AtomicBool::new(false),
        };
        (queue, writer)
    }

    /// How long an entry stays pending before a writer claims it (default [`CLAIM_IDLE`]).
    /// Takes effect at the writer's next claim pass.
    pub fn set_claim_idle(&self, idle: Duration) {
        self.shared
            .claim_idle_ms
            .store(idle.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    /// How often the writer trims acked entries off the stream (default [`TRIM_EVERY`]).
    pub fn set_trim_every(&self, every: Duration) {
        self.shared
            .trim_every_ms
            .store(every.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    /// Adds `record` to the stream, retrying a little; gives the record back when Redis
    /// cannot take it (the caller queues it in process instead).
    pub async fn push(&self, record: UsageRecord) -> Result<(), UsageRecord> {
        let json = match serde_json::to_string(&record) {
            Ok(json) => json,
            Err(e) => {
                tracing::warn!(error = %e, request_id = %record.request_id, "cannot encode a usage record for redis; queueing it in process");
                return Err(record);
            }
        };
        let mut cmd = ::redis::cmd("XADD");
        cmd.arg(&self.shared.stream)
            .arg("*")
            .arg(RECORD_FIELD)
            .arg(&json);
        let mut delay = PUSH_RETRY_FIRST;
        let mut last = None;
        for attempt in 0..PUSH_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            match self.pool.call::<Value>(Call::Cmd(cmd.clone())).await {
                Ok(_) => {
                    if self.falling_back.swap(false, Ordering::Relaxed) {
                        tracing::info!("usage records go to the redis stream again");
                    }
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        if !self.falling_back.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = ?last.map(|e| e.to_string()), "cannot add usage records to the redis stream; queueing them in process until redis answers (they are lost if this process dies first)");
        }
        Err(record)
    }
}

/// `hostname-pid-random`.
fn consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tollgate".to_owned());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &random[..8])
}

/// One stream entry as read.
struct Entry {
    id: String,
    fields: Vec<(String, Vec<u8>)>,
}

/// An entry that holds a record.
struct Parsed {
    id: String,
    payload: Vec<u8>,
    record: UsageRecord,
}

/// What became of a write.
enum Written {
    Committed,
    /// The store refuses the batch as invalid (no retry helps).
    Invalid(String),
    /// Shutdown came while the store was failing: the batch stays pending.
    Stopped,
}

/// The reading side: commits the stream's entries in batches (see the module docs).
pub struct RedisWriter {
    shared: Arc<Shared>,
    /// The writer's own connection: blocking reads would hold up pushes on a shared one.
    link: Link,
    consumer: String,
    settler: Arc<Settler>,
    metrics: Metrics,
    batch_size: usize,
    batch_interval: Duration,
    stop: watch::Receiver<bool>,
    /// What this writer last added to the depth gauge.
    reported_depth: i64,
    /// When the oldest entry not yet acked by the group was added (Unix ms, from its id),
    /// as last seen: kept while Redis cannot be read.
    oldest: Oldest,
    depth_at: Option<Instant>,
    /// When acked entries were last trimmed (the first trim is one interval after start).
    trimmed_at: Instant,
    /// Redis is failing (logged once per outage).
    failing_redis: bool,
}

impl RedisWriter {
    /// This writer's consumer name in the group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps `delay`, or less if shutdown comes; returns whether it is shutting down.
    async fn pause(&mut self, delay: Duration) -> bool {
        if self.stopping() {
            return true;
        }
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|stop| *stop) => {}
        }
        self.stopping()
    }

    fn redis_failed(&mut self, what: &str, error: &BackendError) {
        self.metrics.backend_error("redis");
        if !self.failing_redis {
            tracing::warn!(%error, "{what}; retrying until redis answers");
            self.failing_redis = true;
        }
    }

    fn redis_ok(&mut self) {
        if self.failing_redis {
            tracing::info!("the usage writer reaches redis again");
            self.failing_redis = false;
        }
    }

    /// Reads, claims and writes batches until told to stop.
    pub async fn run(mut self) {
        tracing::debug!(consumer = %self.consumer, stream = %self.shared.stream, "usage writer on redis");
        let mut delay = RETRY_FIRST;
        let mut group_ready = false;
        // When the last claim pass ran (none yet: claim at once). Passes run every quarter
        // of the claim idle time, read afresh each round so a change takes effect at once.
        let mut claimed_at: Option<Instant> = None;
        // Stopped between batches, with Redis and the store answering: then what is unread
        // is written out before returning. Stopped while either failed: left for the next
        // writer, unread (a flush would only move a batch to pending with this consumer).
        let mut between_batches = false;
        loop {
            if self.stopping() {
                between_batches = group_ready;
                break;
            }
            if !group_ready {
                match self.create_group().await {
                    Ok(()) => {
                        group_ready = true;
                        delay = RETRY_FIRST;
                        self.redis_ok();
                    }
                    Err(e) => {
                        self.redis_failed("cannot create the usage consumer group", &e);
                        if self.pause(delay).await {
                            break;
                        }
                        delay = (delay * 2).min(RETRY_MAX);
                        continue;
                    }
                }
            }
            let every =
                (self.claim_idle() / 4).clamp(Duration::from_millis(20), Duration::from_secs(10));
            let next_claim = claimed_at.map_or_else(Instant::now, |at| at + every);
            if Instant::now() >= next_claim {
                match self.claim_pass().await {
                    Ok(false) => claimed_at = Some(Instant::now()),
                    Ok(true) => break,
                    Err(e) => {
                        if e.detail().contains("NOGROUP") {
                            group_ready = false;
                        }
                        self.redis_failed("cannot claim pending usage records", &e);
                        if self.pause(delay).await {
                            break;
                        }
                        delay = (delay * 2).min(RETRY_MAX);
                        continue;
                    }
                }
            }
            // The first entries of a batch: wait for them (a bounded block at a time).
            let wait = READ_BLOCK_MAX.min(every);
            let mut batch = match self.read(self.batch_size, wait).await {
                Ok(batch) => batch,
                Err(e) => {
                    if e.detail().contains("NOGROUP") {
                        group_ready = false;
                    }
                    self.redis_failed("cannot read usage records from redis", &e);
                    if self.pause(delay).await {
                        break;
                    }
                    delay = (delay * 2).min(RETRY_MAX);
                    continue;
                }
            };
            delay = RETRY_FIRST;
            self.redis_ok();
            if batch.is_empty() {
                self.refresh_depth(false).await;
                self.maybe_trim().await;
                continue;
            }
            // Then fill it until full or the interval has passed.
            let deadline = Instant::now() + self.batch_interval;
            while batch.len() < self.batch_size && !self.stopping() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                match self
                    .read(self.batch_size - batch.len(), left.min(READ_BLOCK_MAX))
                    .await
                {
                    Ok(more) => batch.extend(more),
                    // Write what is in hand; the read is retried on the next round.
                    Err(_) => break,
                }
            }
            if self.process(batch).await {
                break;
            }
            self.refresh_depth(true).await;
            self.maybe_trim().await;
        }
        if between_batches {
            self.flush().await;
        }
        self.metrics
            .usage_queue_depth()
            .decrement(self.reported_depth as f64);
        self.reported_depth = 0;
        self.oldest.set(None);
    }

    /// On shutdown: writes and acks what is still unread in the stream, so that what this
    /// replica queued is in the store when it exits (the writers of other replicas share
    /// the work). Ends at the first empty read, or when Redis or the store fails: what is
    /// left stays in the stream, unread or pending, for the next writer.
    async fn flush(&mut self) {
        let mut written = 0;
        loop {
            let batch = match self.read(self.batch_size, Duration::ZERO).await {
                Ok(batch) if batch.is_empty() => break,
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the usage stream at shutdown; unread records stay there for the next writer");
                    break;
                }
            };
            let records = batch.len();
            if self.process(batch).await {
                break;
            }
            written += records;
        }
        if written > 0 {
            tracing::info!(
                records = written,
                "usage records read from redis and written at shutdown"
            );
        }
    }

    fn claim_idle(&self) -> Duration {
        Duration::from_millis(self.shared.claim_idle_ms.load(Ordering::Relaxed))
    }

    async fn create_group(&self) -> Result<(), BackendError> {
        let mut cmd = ::redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(&self.shared.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM");
        match self.link.query::<Value>(&cmd, Duration::ZERO).await {
            Ok(_) => Ok(()),
            Err(e) if e.detail().contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `XREADGROUP` of up to `count` new entries, blocking up to `block` (at least 1 ms).
    async fn read(&self, count: usize, block: Duration) -> Result<Vec<Entry>, BackendError> {
        let block = block.max(Duration::from_millis(1));
        let mut cmd = ::redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.shared.stream)
            .arg(">");
        let reply: Value = self.link.query(&cmd, block).await?;
        // [[stream, [entries]]] or nil on timeout.
        let mut entries = Vec::new();
        for stream in items(reply) {
            let mut parts = items(stream).into_iter();
            let _name = parts.next();
            if let Some(list) = parts.next() {
                entries.extend(items(list).into_iter().filter_map(entry));
            }
        }
        Ok(entries)
    }

    /// Claims and processes every entry pending for longer than the claim idle time.
    /// Returns whether shutdown interrupted it.
    async fn claim_pass(&mut self) -> Result<bool, BackendError> {
        let idle = self.claim_idle();
        let mut cursor = "0-0".to_owned();
        loop {
            let mut cmd = ::redis::cmd("XAUTOCLAIM");
            cmd.arg(&self.shared.stream)
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(idle.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(self.batch_size);
            let reply: Value = self.link.query(&cmd, Duration::ZERO).await?;
            let mut parts = items(reply).into_iter();
            let next = parts
                .next()
                .and_then(text)
                .unwrap_or_else(|| "0-0".to_owned());
            let claimed: Vec<Entry> = parts
                .next()
                .map(items)
                .unwrap_or_default()
                .into_iter()
                .filter_map(entry)
                .collect();
            if !claimed.is_empty() {
                tracing::info!(records = claimed.len(), consumer = %self.consumer, "claimed usage records left pending by another writer");
                if self.process(claimed).await {
                    return Ok(true);
                }
                self.refresh_depth(true).await;
            }
            if next == "0-0" {
                return Ok(false);
            }
            cursor = next;
        }
    }

    /// Writes a batch of entries: poison ones to the dead letters, the rest to the store,
    /// then acks them. Returns whether shutdown interrupted it (the rest stays pending).
    async fn process(&mut self, entries: Vec<Entry>) -> bool {
        // The batch in hand waits until written: the oldest unacked entry is at least as
        // old as its first (read in id order), even before the next refresh says so.
        let first = entries.iter().filter_map(|e| id_ms(&e.id)).min();
        if let Some(first) = first {
            if self.oldest.get().is_none_or(|known| first < known) {
                self.oldest.set(Some(first));
            }
        }
        let mut good = Vec::with_capacity(entries.len());
        for e in entries {
            let payload = e
                .fields
                .iter()
                .find(|(k, _)| k == RECORD_FIELD)
                .map(|(_, v)| v.clone());
            let parsed = match payload {
                None => Err(("no record field".to_owned(), fields_json(&e.fields))),
                Some(payload) => match serde_json::from_slice::<UsageRecord>(&payload) {
                    Ok(record) => Ok(Parsed {
                        id: e.id.clone(),
                        payload,
                        record,
                    }),
                    Err(err) => Err((format!("not a usage record: {err}"), payload)),
                },
            };
            match parsed {
                Ok(p) => good.push(p),
                Err((why, payload)) => {
                    if self.dead_letter(&e.id, &why, &payload).await {
                        return true;
                    }
                }
            }
        }
        // Batches to write; an invalid one is split until the bad records are alone.
        let mut work = vec![good];
        while let Some(mut batch) = work.pop() {
            if batch.is_empty() {
                continue;
            }
            match self.write(&batch).await {
                Written::Committed => {
                    let ids: Vec<&str> = batch.iter().map(|p| p.id.as_str()).collect();
                    if self.ack(&ids).await {
                        return true;
                    }
                }
                Written::Invalid(why) if batch.len() == 1 => {
                    let p = &batch[0];
                    let (id, payload) = (p.id.clone(), p.payload.clone());
                    if self.dead_letter(&id, &why, &payload).await {
                        return true;
                    }
                }
                Written::Invalid(_) => {
                    let right = batch.split_off(batch.len() / 2);
                    work.push(right);
                    work.push(batch);
                }
                Written::Stopped => return true,
            }
        }
        false
    }

    /// Commits one batch, retrying while the store fails (until shutdown).
    async fn write(&mut self, batch: &[Parsed]) -> Written {
        let records: Vec<UsageRecord> = batch.iter().map(|p| p.record.clone()).collect();
        let mut delay = RETRY_FIRST;
        let mut failing = false;
        loop {
            match self.settler.commit(&records).await {
                Ok(()) => {
                    if failing {
                        tracing::info!(records = records.len(), "usage records written again");
                    }
                    return Written::Committed;
                }
                Err(StoreError::Invalid(why)) => return Written::Invalid(why),
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, records = records.len(), "cannot write usage records; retrying until the store takes them (they stay pending in redis)");
                        failing = true;
                    }
                    if self.pause(delay).await {
                        tracing::info!(records = records.len(), "shutting down with usage records not yet written; they stay pending in redis for the next writer");
                        return Written::Stopped;
                    }
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// `XACK`s `ids`, retrying while Redis fails (until shutdown: then they stay pending,
    /// to be claimed and written again, which counts once).
    async fn ack(&mut self, ids: &[&str]) -> bool {
        let mut cmd = ::redis::cmd("XACK");
        cmd.arg(&self.shared.stream).arg(GROUP);
        for id in ids {
            cmd.arg(*id);
        }
        let mut delay = RETRY_FIRST;
        loop {
            match self.link.query::<Value>(&cmd, Duration::ZERO).await {
                Ok(_) => {
                    self.redis_ok();
                    return false;
                }
                Err(e) => {
                    self.redis_failed("cannot ack written usage records", &e);
                    if self.pause(delay).await {
                        return true;
                    }
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Moves a poison entry to the dead-letter stream and acks it. Returns whether shutdown
    /// interrupted it.
    async fn dead_letter(&mut self, id: &str, why: &str, payload: &[u8]) -> bool {
        tracing::error!(entry = %id, reason = %why, dead_letters = %self.shared.dead, "a usage entry cannot be written; moved to the dead letters");
        let mut cmd = ::redis::cmd("XADD");
        cmd.arg(&self.shared.dead)
            .arg("*")
            .arg("id")
            .arg(id)
            .arg("reason")
            .arg(why)
            .arg("payload")
            .arg(payload);
        let mut delay = RETRY_FIRST;
        loop {
            match self.link.query::<Value>(&cmd, Duration::ZERO).await {
                Ok(_) => break,
                Err(e) => {
                    self.redis_failed("cannot add to the usage dead letters", &e);
                    if self.pause(delay).await {
                        return true;
                    }
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
        self.count("dead_letter", 1);
        self.ack(&[id]).await
    }

    /// Trims the entries every group member has acked, once per trim interval: `XTRIM
    /// MINID` to the oldest pending entry, or past the last delivered one when none is
    /// pending. Safe against concurrent writers: deliveries only add pending entries after
    /// the last delivered id, and acks only move the oldest pending one forward, so the
    /// bound read here can only be too low (trimming less), never too high. Skipped when
    /// the stream has other consumer groups than [`GROUP`] (their progress is not known).
    async fn maybe_trim(&mut self) {
        let every = Duration::from_millis(self.shared.trim_every_ms.load(Ordering::Relaxed));
        if self.trimmed_at.elapsed() < every {
            return;
        }
        self.trimmed_at = Instant::now();
        if let Err(e) = self.trim().await {
            tracing::debug!(error = %e, "cannot trim the usage stream; trying again later");
        }
    }

    async fn trim(&self) -> Result<(), BackendError> {
        let mut cmd = ::redis::cmd("XINFO");
        cmd.arg("GROUPS").arg(&self.shared.stream);
        let groups: Vec<Vec<(String, Value)>> = items(self.link.query(&cmd, Duration::ZERO).await?)
            .into_iter()
            .map(pairs)
            .collect();
        let [group] = groups.as_slice() else {
            return Ok(());
        };
        let field = |name: &str| {
            group
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        if field("name").and_then(text).as_deref() != Some(GROUP) {
            return Ok(());
        }
        let Some(last) = field("last-delivered-id").and_then(text) else {
            return Ok(());
        };
        // XPENDING's summary: [count, oldest id, newest id, consumers].
        let mut cmd = ::redis::cmd("XPENDING");
        cmd.arg(&self.shared.stream).arg(GROUP);
        let summary = items(self.link.query(&cmd, Duration::ZERO).await?);
        let oldest_pending = summary.get(1).cloned().and_then(text);
        let Some(min_id) = oldest_pending.or_else(|| next_id(&last)) else {
            return Ok(());
        };
        let mut cmd = ::redis::cmd("XTRIM");
        cmd.arg(&self.shared.stream).arg("MINID").arg(&min_id);
        let trimmed: i64 = self.link.query(&cmd, Duration::ZERO).await?;
        if trimmed > 0 {
            tracing::debug!(entries = trimmed, "trimmed acked usage entries");
        }
        Ok(())
    }

    /// Sets the depth gauge from `XINFO GROUPS` (pending + lag), when `now` or not done
    /// within [`DEPTH_EVERY`].
    async fn refresh_depth(&mut self, now: bool) {
        if !now && self.depth_at.is_some_and(|at| at.elapsed() < DEPTH_EVERY) {
            return;
        }
        self.depth_at = Some(Instant::now());
        let mut cmd = ::redis::cmd("XINFO");
        cmd.arg("GROUPS").arg(&self.shared.stream);
        let Ok(reply) = self.link.query::<Value>(&cmd, Duration::ZERO).await else {
            return;
        };
        for group in items(reply) {
            let info = pairs(group);
            let field = |name: &str| info.iter().find(|(k, _)| k == name).map(|(_, v)| v);
            if field("name").cloned().and_then(text).as_deref() != Some(GROUP) {
                continue;
            }
            let pending = field("pending").and_then(int).unwrap_or(0);
            // Nil when Redis cannot tell (entries deleted in the middle): count none.
            let lag = field("lag").and_then(int).unwrap_or(0);
            let depth = pending + lag;
            self.metrics
                .usage_queue_depth()
                .increment((depth - self.reported_depth) as f64);
            self.reported_depth = depth;
            let last_delivered = field("last-delivered-id").cloned().and_then(text);
            let unread = field("lag").and_then(int);
            if let Ok(oldest) = self.oldest_unacked(pending, unread, last_delivered).await {
                self.oldest.set(oldest.as_deref().and_then(id_ms));
            }
            return;
        }
    }

    /// The id of the oldest entry the group has not acked: the oldest pending one, else
    /// the first unread (after the last delivered one), else none.
    async fn oldest_unacked(
        &self,
        pending: i64,
        unread: Option<i64>,
        last_delivered: Option<String>,
    ) -> Result<Option<String>, BackendError> {
        if pending > 0 {
            // XPENDING's summary: [count, oldest id, newest id, consumers].
            let mut cmd = ::redis::cmd("XPENDING");
            cmd.arg(&self.shared.stream).arg(GROUP);
            let summary = items(self.link.query(&cmd, Duration::ZERO).await?);
            return Ok(summary.get(1).cloned().and_then(text));
        }
        let Some(from) = last_delivered.as_deref().and_then(next_id) else {
            return Ok(None);
        };
        // Unread: none, or (nil: Redis cannot tell) maybe some.
        if unread == Some(0) {
            return Ok(None);
        }
        let mut cmd = ::redis::cmd("XRANGE");
        cmd.arg(&self.shared.stream)
            .arg(from)
            .arg("+")
            .arg("COUNT")
            .arg(1);
        let first = items(self.link.query(&cmd, Duration::ZERO).await?);
        Ok(first.into_iter().next().and_then(entry).map(|e| e.id))
    }

    fn count(&self, result: &'static str, n: u64) {
        if n > 0 {
            self.metrics.usage_records(result, n);
        }
    }
}

/// The time in an entry id (`ms-seq`): Unix ms of the Redis that added it.
fn id_ms(id: &str) -> Option<i64> {
    id.split_once('-')?.0.parse().ok()
}

/// The stream id right after `id` (`ms-seq`).
fn next_id(id: &str) -> Option<String> {
    let (ms, seq) = id.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    Some(match seq.checked_add(1) {
        Some(seq) => format!("{ms}-{seq}"),
        None => format!("{}-0", ms.checked_add(1)?),
    })
}

/// The items of an array reply (none for nil or anything else).
fn items(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// A flat `[k, v, k, v]` reply (or a map) as pairs with text keys.
fn pairs(value: Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut it = items(value).into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if let Some(k) = text(k) {
            out.push((k, v));
        }
    }
    out
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// `[id, [field, value, ...]]`; an entry deleted from the stream (nil fields) has none.
fn entry(value: Value) -> Option<Entry> {
    let mut parts = items(value).into_iter();
    let id = text(parts.next()?)?;
    let fields = match parts.next() {
        Some(fields @ (Value::Array(_) | Value::Map(_))) => {
            let mut out = Vec::new();
            let mut it = items(fields).into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                let k = text(k).unwrap_or_default();
                let v = match v {
                    Value::BulkString(bytes) => bytes,
                    other => text(other).unwrap_or_default().into_bytes(),
                };
                out.push((k, v));
            }
            out
        }
        _ => Vec::new(),
    };
    Some(Entry { id, fields })
}

/// Every field of an entry as a JSON object (for the dead letters).
fn fields_json(fields: &[(String, Vec<u8>)]) -> Vec<u8> {
    let map: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
            )
        })
        .collect();
    serde_json::Value::Object(map).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_consumer_names() {
        assert_eq!(stream_key("p:"), "p:usage");
        assert_eq!(dead_key("p:"), "p:usage:dead");
        let a = consumer_name();
        let b = consumer_name();
        assert_ne!(a, b);
        assert!(a.contains(&format!("-{}-", std::process::id())), "{a}");
    }

    #[test]
    fn next_ids() {
        assert_eq!(next_id("5-0").as_deref(), Some("5-1"));
        assert_eq!(next_id("5-18446744073709551615").as_deref(), Some("6-0"));
        assert_eq!(next_id("0-0").as_deref(), Some("0-1"));
        assert_eq!(next_id("nonsense"), None);
    }

    #[test]
    fn entries_parse_from_replies() {
        let reply = Value::Array(vec![
            Value::BulkString(b"1-0".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"record".to_vec()),
                Value::BulkString(b"{}".to_vec()),
            ]),
        ]);
        let e = entry(reply).unwrap();
        assert_eq!(e.id, "1-0");
        assert_eq!(e.fields, vec![("record".to_owned(), b"{}".to_vec())]);
        let deleted = entry(Value::Array(vec![
            Value::BulkString(b"2-0".to_vec()),
            Value::Nil,
        ]))
        .unwrap();
        assert!(deleted.fields.is_empty());
    }
}
