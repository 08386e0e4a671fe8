//! Budget reservations in Redis, shared by every tollgate replica: one Lua script per
//! reserve (one round trip), settle or release.
//!
//! # Layout
//!
//! Every key starts with `{key_prefix}{bg}:`. Redis Cluster places a key by the part
//! between its first `{` and `}`, so all budget keys share one slot and a script touching
//! several budgets (and reservations) stays legal and atomic on a cluster.
//!
//! - `{prefix}{bg}:b:{kind}:{id}:{period_start}`: a hash per budget period with the floats
//!   `committed` (spend written to the store: seeded from the store's `current_spend`,
//!   plus what is settled) and `reserved` (estimates of requests not settled yet), changed
//!   with `HINCRBYFLOAT`. It expires [`PERIOD_GRACE`] (at least the reservation timeout)
//!   after its period ends; every reserve sets that TTL again.
//! - `{prefix}{bg}:r:{request_id}`: a hash per reservation, budget hash key → amount
//!   reserved there.
//! - `{prefix}{bg}:expiry`: a sorted set of request ids scored by when their reservation
//!   expires (Unix seconds, in the gate's clock).
//!
//! # Scripts
//!
//! - reserve: first gives back at most [`EXPIRE_BATCH`] expired reservations; then, for
//!   each budget, sets `committed` to the seed the caller passes (the store's spend, read
//!   when this process has not read it within `refresh`; a period hash without `committed`
//!   asks the caller for seeds, e.g. after Redis lost its data); then checks every budget
//!   (`committed + reserved < limit` and `committed + reserved + amount <= limit`); only if
//!   all fit, adds the amount to each `reserved` and records the reservation (a previous
//!   one of the same request id is given back first). Answers `ok`, or `refused`, the
//!   budget's index and its used amount.
//! - settle / release: gives the reservation back (`reserved -= amount`, never below 0),
//!   adds the cost to `committed` (settle only) and deletes the reservation. An unknown
//!   request changes nothing.
//!
//! The reserve script names the expired reservations' hashes itself (they are not in
//! `KEYS`); they share the `{bg}` slot, so this works on a cluster too.
//!
//! # Redis unreachable
//!
//! Like rate limits (see [`crate::limits::limiter`]): the first failed call (error or
//! `redis.timeout`) marks Redis down and starts a probe that PINGs it every
//! [`PROBE_INTERVAL`](crate::redis_pool::PROBE_INTERVAL); until it answers, calls do not touch Redis and `redis.failure_mode`
//! answers: `open` reserves nothing and admits, `closed` is
//! [`StoreError::Unavailable`] (Check answers `UNAVAILABLE`), `local` uses the in-process
//! ledger. Settles and releases always also go to the in-process ledger (where a
//! reservation made during an outage lives).

use super::memory::{secs, MemoryLedger};
use super::{read_period, Charge, Verdict};
use crate::config::{FailureMode, Redis};
use crate::domain::Timestamp;
use crate::metrics::Metrics;
use crate::redis_pool::{Call, Health, RedisPool};
use crate::store::{SharedStore, SpendKind, StoreError};
use ::redis::{FromRedisValue, Script};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The hash tag of every budget key (see the module docs).
pub const HASH_TAG: &str = "{bg}";

/// At most this many expired reservations are given back per reserve.
pub const EXPIRE_BATCH: usize = 100;

/// A budget period's hash lives this long after the period ends (at least the reservation
/// timeout), so late settles still find it.
pub const PERIOD_GRACE: i64 = 86_400;

/// The longest TTL set on a budget hash (a budget without an end, refreshed by use).
pub const MAX_TTL: i64 = 400 * 86_400;

/// Gives back reservation hash `rkey` (budget key → amount); `cost` is added to each
/// budget's `committed` when not nil.
const LUA_COMMON: &str = r#"
local function give_back(rkey, cost)
  local r = redis.call('HGETALL', rkey)
  for j = 1, #r, 2 do
    local b = r[j]
    if redis.call('EXISTS', b) == 1 then
      local left = tonumber(redis.call('HINCRBYFLOAT', b, 'reserved', string.format('%.17g', -tonumber(r[j + 1]))))
      if left < 0 then
        redis.call('HSET', b, 'reserved', '0')
      end
      if cost then
        redis.call('HINCRBYFLOAT', b, 'committed', cost)
      end
    end
  end
  redis.call('DEL', rkey)
  return #r > 0
end
"#;

/// KEYS: expiry zset, this request's reservation hash, then the budget hashes.
/// ARGV: now, amount, expires_at, reservation ttl, request id, reservation key prefix,
/// expire batch, then per budget: limit, seed ('' for none), ttl.
const LUA_RESERVE: &str = r#"
local now = tonumber(ARGV[1])
local amount = tonumber(ARGV[2])
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[7]))
for _, id in ipairs(expired) do
  give_back(ARGV[6] .. id, nil)
  redis.call('ZREM', KEYS[1], id)
end
local n = #KEYS - 2
for i = 1, n do
  local key = KEYS[i + 2]
  local seed = ARGV[7 + 3 * (i - 1) + 2]
  if seed ~= '' then
    redis.call('HSET', key, 'committed', seed)
  elseif redis.call('HEXISTS', key, 'committed') == 0 then
    return {'seed'}
  end
  redis.call('EXPIRE', key, ARGV[7 + 3 * (i - 1) + 3])
end
for i = 1, n do
  local limit = tonumber(ARGV[7 + 3 * (i - 1) + 1])
  local h = redis.call('HMGET', KEYS[i + 2], 'committed', 'reserved')
  local used = (tonumber(h[1]) or 0) + (tonumber(h[2]) or 0)
  if used >= limit or used + amount > limit then
    return {'refused', tostring(i), string.format('%.17g', used)}
  end
end
give_back(KEYS[2], nil)
for i = 1, n do
  redis.call('HINCRBYFLOAT', KEYS[i + 2], 'reserved', ARGV[2])
  redis.call('HSET', KEYS[2], KEYS[i + 2], ARGV[2])
end
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {'ok'}
"#;

/// KEYS: expiry zset, the reservation hash. ARGV: request id, cost ('' for a release).
const LUA_SETTLE: &str = r#"
local cost = nil
if ARGV[2] ~= '' then
  cost = ARGV[2]
end
local found = give_back(KEYS[2], cost)
redis.call('ZREM', KEYS[1], ARGV[1])
if found then
  return 1
end
return 0
"#;

/// What this process knows of a budget's current period.
#[derive(Debug, Clone, Copy)]
struct Period {
    start: i64,
    end: i64,
    seeded_at: Timestamp,
}

pub struct RedisLedger {
    pool: RedisPool,
    key_prefix: String,
    reserve_script: Script,
    settle_script: Script,
    mode: FailureMode,
    /// The ledger of `failure_mode: local`.
    pub(super) local: MemoryLedger,
    store: SharedStore,
    /// By `kind:id:`: the period this process last seeded.
    periods: Mutex<HashMap<String, Period>>,
    refresh: i64,
    reservation_timeout: i64,
    /// Bound on a store read.
    store_timeout: Duration,
    health: Arc<Health>,
}

impl RedisLedger {
    /// A ledger in the Redis of `config`. Does no I/O: connections are made on first use.
    pub fn new(
        config: &Redis,
        store: SharedStore,
        refresh: Duration,
        reservation_timeout: Duration,
        store_timeout: Duration,
        metrics: Metrics,
    ) -> Result<RedisLedger, StoreError> {
        let pool = RedisPool::new(config, config.pool_size, config.timeout)
            .map_err(StoreError::Invalid)?;
        Ok(RedisLedger {
            pool,
            key_prefix: config.key_prefix.clone(),
            reserve_script: Script::new(&format!("{LUA_COMMON}{LUA_RESERVE}")),
            settle_script: Script::new(&format!("{LUA_COMMON}{LUA_SETTLE}")),
            mode: config.failure_mode,
            local: MemoryLedger::new(store.clone(), refresh, reservation_timeout, store_timeout),
            store,
            periods: Mutex::new(HashMap::new()),
            refresh: secs(refresh),
            reservation_timeout: secs(reservation_timeout),
            store_timeout,
            health: Health::new("budgets", config.failure_mode, metrics, None),
        })
    }

    /// The Redis key of a budget period: `{prefix}{bg}:b:{kind}:{id}:{period_start}`.
    pub fn budget_key(&self, kind: SpendKind, id: &str, period_start: i64) -> String {
        format!(
            "{}{HASH_TAG}:b:{}:{id}:{period_start}",
            self.key_prefix,
            kind.as_str()
        )
    }

    /// The Redis key of a reservation: `{prefix}{bg}:r:{request_id}`.
    pub fn reservation_key(&self, request_id: &str) -> String {
        format!("{}{HASH_TAG}:r:{request_id}", self.key_prefix)
    }

    /// The sorted set of reservations by expiry: `{prefix}{bg}:expiry`.
    pub fn expiry_key(&self) -> String {
        format!("{}{HASH_TAG}:expiry", self.key_prefix)
    }

    pub fn healthy(&self) -> bool {
        self.health.is_up()
    }

    fn periods(&self) -> std::sync::MutexGuard<'_, HashMap<String, Period>> {
        self.periods.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub async fn reserve(
        self: &Arc<Self>,
        request_id: &str,
        charges: &[Charge],
        amount_usd: f64,
        now: Timestamp,
    ) -> Result<Verdict, StoreError> {
        if charges.is_empty() {
            return Ok(Verdict::Reserved);
        }
        if self.healthy() {
            match self
                .reserve_shared(request_id, charges, amount_usd, now)
                .await
            {
                Ok(verdict) => return Ok(verdict),
                Err(Failure::Store(e)) => return Err(e),
                Err(Failure::Redis(reason)) => self.failed(&reason),
            }
        }
        match self.mode {
            FailureMode::Open => Ok(Verdict::Reserved),
            FailureMode::Closed => Err(StoreError::Unavailable(
                "redis is unreachable (failure_mode: closed): budgets cannot be checked".to_owned(),
            )),
            FailureMode::Local => {
                self.local
                    .reserve(request_id, charges, amount_usd, now)
                    .await
            }
        }
    }

    async fn reserve_shared(
        &self,
        request_id: &str,
        charges: &[Charge],
        amount_usd: f64,
        now: Timestamp,
    ) -> Result<Verdict, Failure> {
        let mut force_seed = false;
        loop {
            // Per charge: its period, and the store's spend when it must be (re)seeded.
            let mut budgets = Vec::with_capacity(charges.len());
            for charge in charges {
                let known = self
                    .periods()
                    .get(&prefix(charge))
                    .copied()
                    .filter(|p| now < p.end);
                match known {
                    Some(p) if !force_seed && now - p.seeded_at < self.refresh => {
                        budgets.push((p, None));
                    }
                    _ => {
                        let (start, end, spent) =
                            read_period(&self.store, self.store_timeout, charge, now)
                                .await
                                .map_err(Failure::Store)?;
                        let p = Period {
                            start,
                            end,
                            seeded_at: now,
                        };
                        budgets.push((p, Some(spent)));
                    }
                }
            }
            let mut inv = self.reserve_script.prepare_invoke();
            inv.key(self.expiry_key())
                .key(self.reservation_key(request_id))
                .arg(now)
                .arg(amount_usd.to_string())
                .arg(now.saturating_add(self.reservation_timeout))
                .arg(self.reservation_ttl())
                .arg(request_id)
                .arg(self.reservation_key(""))
                .arg(EXPIRE_BATCH);
            for (charge, (p, seed)) in charges.iter().zip(&budgets) {
                let ttl = p
                    .end
                    .saturating_sub(now)
                    .saturating_add(PERIOD_GRACE.max(self.reservation_timeout))
                    .clamp(1, MAX_TTL);
                inv.key(self.budget_key(charge.kind, &charge.id, p.start))
                    .arg(charge.limit_usd.to_string())
                    .arg(seed.map(|s| s.to_string()).unwrap_or_default())
                    .arg(ttl);
            }
            let reply: Vec<String> = self.call(Call::Script(inv)).await?;
            // The script ran: what was seeded is now in Redis.
            {
                let mut periods = self.periods();
                for (charge, (p, seed)) in charges.iter().zip(&budgets) {
                    if seed.is_some() {
                        periods.insert(prefix(charge), *p);
                    }
                }
            }
            match reply.first().map(String::as_str) {
                Some("ok") => return Ok(Verdict::Reserved),
                Some("seed") if !force_seed => force_seed = true,
                Some("refused") if reply.len() == 3 => {
                    let i: usize = reply[1].parse().map_err(|_| unexpected())?;
                    let used_usd: f64 = reply[2].parse().map_err(|_| unexpected())?;
                    let (charge, (p, _)) = charges
                        .iter()
                        .zip(&budgets)
                        .nth(i.wrapping_sub(1))
                        .ok_or_else(unexpected)?;
                    return Ok(Verdict::Refused {
                        charge: charge.clone(),
                        used_usd,
                        period_end: p.end,
                    });
                }
                _ => return Err(unexpected()),
            }
        }
    }

    /// How long a reservation's hash (and the expiry set) live without use: well past the
    /// reservation timeout, so the reserve script gives it back before it vanishes.
    fn reservation_ttl(&self) -> i64 {
        self.reservation_timeout
            .saturating_mul(2)
            .saturating_add(PERIOD_GRACE)
    }

    /// Settles (`cost` given) or releases a reservation, in the background. The in-process
    /// ledger is told too (a reservation made there while Redis was down).
    pub fn settle(self: &Arc<Self>, request_id: &str, cost: Option<f64>) {
        match cost {
            Some(cost) => self.local.settle(request_id, cost),
            None => self.local.release(request_id),
        }
        if !self.healthy() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = self.clone();
        let request_id = request_id.to_owned();
        runtime.spawn(async move {
            if let Err(Failure::Redis(reason)) = this.settle_shared(&request_id, cost).await {
                this.failed(&reason);
            }
        });
    }

    /// Settles or releases in Redis now. `Ok(false)` when Redis holds no such reservation.
    pub async fn settle_shared(
        &self,
        request_id: &str,
        cost: Option<f64>,
    ) -> Result<bool, Failure> {
        let mut inv = self.settle_script.prepare_invoke();
        inv.key(self.expiry_key())
            .key(self.reservation_key(request_id))
            .arg(request_id)
            .arg(cost.map(|c| c.to_string()).unwrap_or_default());
        let found: i64 = self.call(Call::Script(inv)).await?;
        Ok(found == 1)
    }

    /// Committed and reserved spend of the budget's period containing `now`, from Redis
    /// (`None` when this process has not reserved against it in that period).
    pub async fn view(
        &self,
        kind: SpendKind,
        id: &str,
        now: Timestamp,
    ) -> Result<Option<(f64, f64)>, StoreError> {
        let Some(p) = self
            .periods()
            .get(&format!("{}:{id}:", kind.as_str()))
            .copied()
            .filter(|p| now < p.end)
        else {
            return Ok(None);
        };
        let mut cmd = ::redis::cmd("HMGET");
        cmd.arg(self.budget_key(kind, id, p.start))
            .arg("committed")
            .arg("reserved");
        let values: Vec<Option<f64>> = self
            .call(Call::Cmd(cmd))
            .await
            .map_err(Failure::into_store)?;
        Ok(match values.as_slice() {
            [None, None] => None,
            [c, r] => Some((c.unwrap_or(0.0), r.unwrap_or(0.0))),
            _ => None,
        })
    }

    /// A PING, bounded by the timeout: whether Redis answers.
    pub async fn ping(&self) -> Result<(), Failure> {
        self.pool.ping().await.map_err(Failure::Redis)
    }

    async fn call<T: FromRedisValue>(&self, call: Call<'_>) -> Result<T, Failure> {
        self.pool.call(call).await.map_err(Failure::Redis)
    }

    /// A call to Redis failed: mark it down and make sure a probe runs.
    fn failed(&self, reason: &str) {
        self.health.failed(&self.pool, reason);
    }
}

/// Why a shared operation failed.
#[derive(Debug)]
pub enum Failure {
    /// Redis did not answer or answered an error (a short reason, never the URL).
    Redis(String),
    /// The store could not be read for a seed.
    Store(StoreError),
}

impl Failure {
    pub fn into_store(self) -> StoreError {
        match self {
            Failure::Redis(reason) => StoreError::Unavailable(reason),
            Failure::Store(e) => e,
        }
    }
}

fn unexpected() -> Failure {
    Failure::Redis("redis: unexpected script reply".to_owned())
}

fn prefix(charge: &Charge) -> String {
    format!("{}:{}:", charge.kind.as_str(), charge.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::{ConnectOptions, SqlStore};

    async fn ledger(url: &str, mode: &str) -> Result<RedisLedger, StoreError> {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlStore::connect(
            &format!("sqlite://{}", dir.path().join("t.db").display()),
            &ConnectOptions::default(),
        )
        .await
        .unwrap();
        let config: Redis = serde_yaml::from_str(&format!(
            "{{ url: \"{url}\", failure_mode: {mode}, timeout: 200ms, key_prefix: \"p:\" }}"
        ))
        .unwrap();
        RedisLedger::new(
            &config,
            Arc::new(store),
            Duration::from_secs(60),
            Duration::from_secs(600),
            Duration::from_secs(1),
            Metrics::new(),
        )
    }

    #[tokio::test]
    async fn keys_share_one_hash_tag_and_construction_hides_the_password() {
        let l = ledger("redis://u:secret@127.0.0.1:1/0", "closed")
            .await
            .unwrap();
        assert_eq!(
            l.budget_key(SpendKind::Team, "t1", 1_700_000_000),
            "p:{bg}:b:team:t1:1700000000"
        );
        assert_eq!(l.reservation_key("req-1"), "p:{bg}:r:req-1");
        assert_eq!(l.expiry_key(), "p:{bg}:expiry");
        let err = ledger("nonsense://u:secret@x", "closed")
            .await
            .err()
            .unwrap();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_server_fails_within_the_timeout_without_the_password() {
        let l = ledger("redis://u:secret@127.0.0.1:1/0", "closed")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let Failure::Redis(reason) = l.ping().await.unwrap_err() else {
            panic!("a redis failure");
        };
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!reason.contains("secret"), "{reason}");
    }
}
