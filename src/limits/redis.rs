//! Buckets in Redis: one Lua script per decision, so a request's buckets are checked and
//! debited in one atomic step shared by every tollgate replica.
//!
//! # Layout
//!
//! A bucket is a hash at `{key_prefix}{rl}:{demand key}` with two fields: `t`, the tokens as
//! a float printed with 17 significant digits (so it reads back bit for bit), and `ts`, the
//! Unix milliseconds of the last update. A missing hash is a fresh (full) bucket. Every write
//! sets a TTL of the milliseconds until the bucket is full again plus one second, so idle
//! buckets vanish (a vanished bucket reads as full, which is what it had become anyway).
//!
//! # Arithmetic
//!
//! The scripts mirror [`bucket`](super::bucket) with the same floating-point operations in
//! the same order (Lua numbers are IEEE doubles like `f64`), so both stores decide alike.
//! Only the state lives in Lua: the scripts return each bucket's new state and the views
//! are computed here with [`bucket::view`], not duplicated in Lua.
//!
//! # Connections
//!
//! [`RedisPool`]: a decision is exactly one round trip (one `EVALSHA`), bounded by the
//! configured timeout; any failure is [`LimitError::Unavailable`] with a short reason that
//! never carries the URL.

use super::bucket::{self, Shape, State};
use super::{Buckets, Demand, LimitError, Outcome, Settlement};
use crate::redis_pool::{Call, RedisPool, RedisTarget};
use ::redis::{FromRedisValue, Script};
use async_trait::async_trait;
use std::time::Duration;

/// The hash tag of every bucket key. Redis Cluster places a key by the part between its
/// first `{` and `}`, so every bucket lands in one slot: a script touching several buckets
/// is legal on a cluster and stays atomic (one script on one node). The cost: all limit
/// keys live on one node. A `key_prefix` containing braces would move the tag to the
/// prefix (still one slot per prefix).
pub const HASH_TAG: &str = "{rl}";

/// The longest TTL set on a bucket, in ms (about 35 000 years): keeps `PEXPIRE` in range for
/// absurd shapes. A bucket whose refill takes longer than this is forgotten early.
pub const MAX_TTL_MS: u64 = 1 << 50;

/// Shared by both scripts: reads bucket `i` refilled to `now` (bucket::Shape::refilled, or
/// Shape::fresh when missing), and writes a state with its TTL.
const LUA_COMMON: &str = r#"
local now = tonumber(ARGV[1])
local function current(key, per_minute, burst)
  local h = redis.call('HMGET', key, 't', 'ts')
  local t, ts = tonumber(h[1]), tonumber(h[2])
  if t == nil or ts == nil then
    return burst, now
  end
  local elapsed = math.max(0, now - ts)
  return math.min(t + elapsed * (per_minute / 60000.0), burst), math.max(now, ts)
end
local function store(key, per_minute, burst, t, ts)
  redis.call('HSET', key, 't', string.format('%.17g', t), 'ts', string.format('%.17g', ts))
  local rate = per_minute / 60000.0
  if t >= burst then
    redis.call('PEXPIRE', key, 1000)
  elseif rate <= 0 then
    -- Never refills: forgetting it would refill it.
    redis.call('PERSIST', key)
  else
    local ttl = math.min(math.ceil((burst - t) / rate) + 1000, tonumber(ARGV[2]))
    redis.call('PEXPIRE', key, string.format('%d', ttl))
  end
end
"#;

/// KEYS: the buckets. ARGV: now_ms, max_ttl_ms, then per bucket per_minute, burst, cost.
/// Returns `admitted` ("1"/"0") then per bucket its new `t` and `ts` as strings.
const LUA_ADMIT: &str = r#"
local n = #KEYS
local shapes, states = {}, {}
local fits = true
for i = 1, n do
  local per_minute = tonumber(ARGV[3 * i])
  local burst = tonumber(ARGV[3 * i + 1])
  local cost = tonumber(ARGV[3 * i + 2])
  local t, ts = current(KEYS[i], per_minute, burst)
  shapes[i] = {per_minute, burst, cost}
  states[i] = {t, ts}
  if not (t >= cost) then
    fits = false
  end
end
local out = {fits and '1' or '0'}
for i = 1, n do
  local t, ts = states[i][1], states[i][2]
  if fits then
    t = t - shapes[i][3]
  end
  store(KEYS[i], shapes[i][1], shapes[i][2], t, ts)
  out[2 * i] = string.format('%.17g', t)
  out[2 * i + 1] = string.format('%.17g', ts)
end
return out
"#;

/// KEYS: the buckets. ARGV: now_ms, max_ttl_ms, then per bucket per_minute, burst, delta.
/// Mirrors bucket::settle after a refill: tokens - delta, clamped to [-burst, burst].
const LUA_SETTLE: &str = r#"
for i = 1, #KEYS do
  local per_minute = tonumber(ARGV[3 * i])
  local burst = tonumber(ARGV[3 * i + 1])
  local delta = tonumber(ARGV[3 * i + 2])
  local t, ts = current(KEYS[i], per_minute, burst)
  t = math.max(-burst, math.min(burst, t - delta))
  store(KEYS[i], per_minute, burst, t, ts)
end
return 1
"#;

/// Token buckets in Redis.
pub struct RedisBuckets {
    pool: RedisPool,
    key_prefix: String,
    admit_script: Script,
    settle_script: Script,
}

impl RedisBuckets {
    /// A store for the Redis at `redis` (its config, or a URL alone), at most
    /// `pool_size` connections, every call bounded by `timeout`. Does no I/O: connections
    /// are made on first use.
    pub fn new(
        redis: impl Into<RedisTarget>,
        pool_size: usize,
        timeout: Duration,
        key_prefix: &str,
    ) -> Result<RedisBuckets, LimitError> {
        let pool = RedisPool::new(redis, pool_size, timeout).map_err(LimitError::Unavailable)?;
        Ok(RedisBuckets {
            pool,
            key_prefix: key_prefix.to_owned(),
            admit_script: Script::new(&format!("{LUA_COMMON}{LUA_ADMIT}")),
            settle_script: Script::new(&format!("{LUA_COMMON}{LUA_SETTLE}")),
        })
    }

    /// The Redis key of a bucket: `{key_prefix}{rl}:{key}` (see [`HASH_TAG`]).
    pub fn redis_key(&self, key: &str) -> String {
        format!("{}{HASH_TAG}:{key}", self.key_prefix)
    }

    /// The SHA1 of the admit script (what `EVALSHA` names).
    pub fn admit_script_hash(&self) -> &str {
        self.admit_script.get_hash()
    }

    /// The SHA1 of the settle script.
    pub fn settle_script_hash(&self) -> &str {
        self.settle_script.get_hash()
    }

    /// The connections (for a health probe).
    pub fn pool(&self) -> &RedisPool {
        &self.pool
    }

    /// A PING through the pool, bounded by the timeout: whether Redis answers.
    pub async fn ping(&self) -> Result<(), LimitError> {
        self.pool.ping().await.map_err(LimitError::Unavailable)
    }

    async fn call<T: FromRedisValue>(&self, call: Call<'_>) -> Result<T, LimitError> {
        self.pool.call(call).await.map_err(LimitError::Unavailable)
    }

    /// The script's arguments: now, the TTL cap, then (per_minute, burst, n) per bucket.
    fn invocation<'s>(
        &self,
        script: &'s Script,
        now_ms: i64,
        buckets: impl Iterator<Item = (&'s str, Shape, String)>,
    ) -> ::redis::ScriptInvocation<'s> {
        let mut inv = script.prepare_invoke();
        inv.arg(now_ms).arg(MAX_TTL_MS);
        for (key, shape, n) in buckets {
            inv.key(self.redis_key(key))
                .arg(shape.per_minute)
                .arg(shape.burst)
                .arg(n);
        }
        inv
    }
}

fn parse_f64(s: &str) -> Result<f64, LimitError> {
    s.parse()
        .map_err(|_| LimitError::Unavailable("redis: unexpected script reply".to_owned()))
}

#[async_trait]
impl Buckets for RedisBuckets {
    async fn admit(&self, demands: &[Demand], now_ms: i64) -> Result<Outcome, LimitError> {
        if demands.is_empty() {
            return Ok(Outcome {
                admitted: true,
                views: vec![],
            });
        }
        let inv = self.invocation(
            &self.admit_script,
            now_ms,
            demands
                .iter()
                .map(|d| (d.key.as_str(), d.shape, d.cost.to_string())),
        );
        let reply: Vec<String> = self.call(Call::Script(inv)).await?;
        if reply.len() != 1 + 2 * demands.len() {
            return Err(LimitError::Unavailable(
                "redis: unexpected script reply".to_owned(),
            ));
        }
        let mut views = Vec::with_capacity(demands.len());
        for (d, pair) in demands.iter().zip(reply[1..].chunks(2)) {
            let state = State {
                tokens: parse_f64(&pair[0])?,
                at_ms: parse_f64(&pair[1])? as i64,
            };
            views.push(bucket::view(d.shape, state, d.cost));
        }
        Ok(Outcome {
            admitted: reply[0] == "1",
            views,
        })
    }

    async fn settle(&self, settlements: &[Settlement], now_ms: i64) -> Result<(), LimitError> {
        if settlements.is_empty() {
            return Ok(());
        }
        let inv = self.invocation(
            &self.settle_script,
            now_ms,
            settlements
                .iter()
                .map(|s| (s.key.as_str(), s.shape, s.delta.to_string())),
        );
        self.call(Call::Script(inv)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn construction_does_no_io_and_hides_the_password() {
        let b = RedisBuckets::new(
            "redis://u:secret@127.0.0.1:1/0",
            4,
            Duration::from_millis(50),
            "p:",
        )
        .unwrap();
        assert_eq!(b.redis_key("k:1:rpm"), "p:{rl}:k:1:rpm");
        let err = RedisBuckets::new("nonsense://u:secret@x", 4, Duration::from_millis(50), "")
            .err()
            .unwrap();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_unavailable_within_the_timeout() {
        let b = RedisBuckets::new(
            "redis://u:secret@127.0.0.1:1/0",
            4,
            Duration::from_millis(200),
            "p:",
        )
        .unwrap();
        let started = std::time::Instant::now();
        let err = b.ping().await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}
