//! Rate-limit buckets, budgets and reservations in Redis, shared by every tollgate replica:
//! on one Redis, one Lua script per decision (one round trip: `EVALSHA`) and one per settle;
//! on a Redis Cluster, one per owner the request counts for (see [`cluster`]).
//!
//! # Layout
//!
//! Keys are grouped by whom they count for, in a hash tag (the part between the first `{`
//! and `}`, which places a key on a Redis Cluster shard): `g` (the gateway), `r:<route>`,
//! `m:<model>`, `t:<team id>`, `u:<user id>`, `k:<key id>`.
//!
//! - `{prefix}{<owner>}:rpm` and `:tpm`: a bucket, a hash with `t` (units, a float printed
//!   with 17 significant digits so it reads back bit for bit) and `ts` (Unix ms of the last
//!   update). A missing hash is a full bucket. Every write sets a TTL of the time until the
//!   bucket is full again plus a second, so idle buckets vanish.
//! - `{prefix}{<t|u|k>:<id>}:b:<period_start>`: a budget period, a hash with the floats
//!   `committed` (spend written to the store: seeded from the store's `current_spend`, plus
//!   what is settled), `reserved` (estimates of requests not settled yet) and `settled`
//!   (every cost settled into `committed`, see "Seeds" below). It expires [`PERIOD_GRACE`]
//!   (at least the reservation timeout) after its period ends.
//! - `{prefix}{<g|t|u|k>[:<id>]}:par`: an owner's parallel slots (only for an owner with
//!   `max_parallel`), a sorted set of request ids scored by when their lease ends (Unix ms,
//!   in the admission clock). It expires a second after its newest lease.
//! - `{prefix}r:{<request id>}`: a request's reservation, a hash with `b|<budget key>` →
//!   amount reserved there, `t|<bucket key>` → `<per_minute> <burst> <estimate>` of
//!   each token bucket it was admitted with, and `p|<slot set>` of each slot it holds.
//! - `{prefix}{r}:expiry`: a sorted set of request ids scored by when their reservation
//!   expires (Unix seconds, in the admission clock).
//!
//! # Scripts
//!
//! - take: gives back at most [`EXPIRE_BATCH`] expired reservations (their budget amounts;
//!   token estimates stand); seeds each budget's `committed` when the caller passes the
//!   store's spend (read when this process has not read it within `refresh`; a period hash
//!   without `committed` asks the caller for seeds, e.g. after Redis lost its data); checks
//!   every budget (`committed + reserved < limit` and `committed + reserved + amount <=
//!   limit`), then every slot set (its members whose lease ended dropped, fewer than the
//!   limit besides the request itself), then every bucket (refilled to now, holds at least
//!   the cost); only if all fit, takes from all of them, adds the request to each slot set
//!   and writes the reservation (a previous one of the same request id is given back
//!   first). Answers `ok` or `rate` with each bucket's new state, `budget`, the budget's
//!   index and its used amount, or `parallel`, the slot set's index and its requests. An
//!   expired reservation leaves its slots to their own lease.
//! - settle: gives the reservation's budget amounts back, adds the real cost to each
//!   budget's `committed` (and `settled`), corrects each token bucket by the real count
//!   less the estimate, removes the request from its slot sets, deletes the reservation.
//!   An unknown request changes nothing.
//!
//! # Seeds
//!
//! A record is committed to the store before any replica settles it, so the store's spend
//! read for a seed may lack a cost that is settled before the seed reaches Redis; setting
//! `committed` to the spend read would lose that cost, and the budget would admit it again.
//! So a seed reads the budget's `settled` first, then the store, and the take script sets
//! `committed` to the spend read plus what was settled since (`settled` now less `settled`
//! then). A cost committed before the store read and settled after `settled` was read
//! counts twice until the next seed: refusing early, never overspending. A seed costs one
//! more round trip per budget seeded, and seeds are rare (a budget's first decision here
//! in a period, then one per `cache.key_ttl`).
//!
//! The bucket arithmetic mirrors [`bucket`](crate::limits::bucket) with the same
//! floating-point operations in the same order (Lua numbers are IEEE doubles like `f64`),
//! so both places decide alike; the views are computed here with [`bucket::view`].
//!
//! These scripts name keys they were not given in `KEYS` (expired reservations and the
//! buckets and budgets of a reservation being settled), and one decision's keys span
//! owners: fine on one Redis, which checks nothing. A Redis Cluster needs every key of a
//! script in one slot (and declared, while that slot migrates), so there the reservation is
//! cut by owner and each owner's keys get scripts of their own ([`cluster`]); the bucket and
//! budget keys are the same in both layouts.

use super::counters::{slot_holder, Reservation, Taken};
use crate::backend::{Backend, BackendError};
use crate::budget::memory::secs;
use crate::budget::{read_spent, read_window, Charge};
use crate::config::{Config, Redis};
use crate::domain::Timestamp;
use crate::limits::bucket::{self, State};
use crate::limits::{Buckets, Demand, Outcome, Settlement, Unit};
use crate::redis_pool::{Call, RedisPool};
use crate::store::{SharedStore, SpendKind};
use ::redis::{FromRedisValue, Script, ScriptInvocation};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

pub mod cluster;

/// At most this many expired reservations are given back per decision.
pub const EXPIRE_BATCH: usize = 100;

/// A budget period's hash lives this long after the period ends (at least the reservation
/// timeout), so late settles still find it.
pub const PERIOD_GRACE: i64 = 86_400;

/// The longest TTL set on a budget hash (a budget without an end, refreshed by use).
pub const MAX_TTL: i64 = 400 * 86_400;

/// The longest TTL set on a bucket, in ms (about 35 000 years): keeps `PEXPIRE` in range
/// for absurd shapes. A bucket whose refill takes longer than this is forgotten early.
pub const MAX_BUCKET_TTL_MS: u64 = 1 << 50;

/// Buckets (read refilled, written with their TTL), budgets (seeded) and reservations (given
/// back, with or without a real cost and token count).
const LUA_COMMON: &str = r#"
local function current(key, per_minute, burst, now)
  local h = redis.call('HMGET', key, 't', 'ts')
  local t, ts = tonumber(h[1]), tonumber(h[2])
  if t == nil or ts == nil then
    return burst, now
  end
  local elapsed = math.max(0, now - ts)
  return math.min(t + elapsed * (per_minute / 60000.0), burst), math.max(now, ts)
end
local function store(key, per_minute, burst, t, ts, max_ttl)
  redis.call('HSET', key, 't', string.format('%.17g', t), 'ts', string.format('%.17g', ts))
  local rate = per_minute / 60000.0
  if t >= burst then
    redis.call('PEXPIRE', key, 1000)
  elseif rate <= 0 then
    -- Never refills: forgetting it would refill it.
    redis.call('PERSIST', key)
  else
    local ttl = math.min(math.ceil((burst - t) / rate) + 1000, max_ttl)
    redis.call('PEXPIRE', key, string.format('%d', ttl))
  end
end
-- Sets budget `key`'s committed spend to `spent` (read from the store) plus what was
-- settled into it since its `settled` was `settled` (read just before the store): a cost
-- settled meanwhile may be missing from `spent`.
local function seed(key, spent, settled)
  local since = (tonumber(redis.call('HGET', key, 'settled')) or 0) - tonumber(settled)
  if since > 0 then
    redis.call('HSET', key, 'committed', string.format('%.17g', tonumber(spent) + since))
  else
    redis.call('HSET', key, 'committed', spent)
  end
end
-- Gives back reservation `rkey` of request `rid`: each budget's amount (and `cost` added to
-- `committed` and `settled` when not nil); each token bucket corrected by `tokens` less its
-- estimate when `tokens` is not nil; each parallel slot when `slots` (else the slot ends
-- with its lease).
local function give_back(rkey, rid, cost, tokens, now, max_ttl, slots)
  local r = redis.call('HGETALL', rkey)
  for j = 1, #r, 2 do
    local kind, key, value = string.sub(r[j], 1, 1), string.sub(r[j], 3), r[j + 1]
    if kind == 'p' then
      if slots then
        redis.call('ZREM', key, rid)
      end
    elseif kind == 'b' then
      if redis.call('EXISTS', key) == 1 then
        local left = tonumber(redis.call('HINCRBYFLOAT', key, 'reserved', string.format('%.17g', -tonumber(value))))
        if left < 0 then
          redis.call('HSET', key, 'reserved', '0')
        end
        if cost then
          redis.call('HINCRBYFLOAT', key, 'committed', cost)
          redis.call('HINCRBYFLOAT', key, 'settled', cost)
        end
      end
    elseif kind == 't' and tokens then
      local per_minute, burst, estimate = string.match(value, '^(%S+) (%S+) (%S+)$')
      per_minute, burst = tonumber(per_minute), tonumber(burst)
      local delta = tokens - tonumber(estimate)
      if delta ~= 0 then
        local t, ts = current(key, per_minute, burst, now)
        t = math.max(-burst, math.min(burst, t - delta))
        store(key, per_minute, burst, t, ts, max_ttl)
      end
    end
  end
  redis.call('DEL', rkey)
  return #r > 0
end
-- Seeds each budget KEYS[2 + i] (i = 1..nb; its limit, seed, `settled` when the seed was
-- read, and ttl at ARGV[base + 4(i-1) + 1..4], seed '' for none) and checks that `amount`
-- more fits in every one: nil when it does, else the reply, {'seed'} (a budget not seeded)
-- or {'budget', i, used}.
local function check_budgets(nb, base, amount)
  for i = 1, nb do
    local key, at = KEYS[2 + i], base + 4 * (i - 1)
    if ARGV[at + 2] ~= '' then
      seed(key, ARGV[at + 2], ARGV[at + 3])
    elseif redis.call('HEXISTS', key, 'committed') == 0 then
      return {'seed'}
    end
    redis.call('EXPIRE', key, ARGV[at + 4])
  end
  for i = 1, nb do
    local limit = tonumber(ARGV[base + 4 * (i - 1) + 1])
    local h = redis.call('HMGET', KEYS[2 + i], 'committed', 'reserved')
    local used = (tonumber(h[1]) or 0) + (tonumber(h[2]) or 0)
    if used >= limit or used + tonumber(amount) > limit then
      return {'budget', tostring(i), string.format('%.17g', used)}
    end
  end
  return nil
end
-- Each token bucket KEYS[2 + nb + i] (i = 1..nk; per_minute, burst, cost at ARGV[first +
-- 4(i-1) + 1..3]) refilled to `now`: their {t, ts}, and whether every cost fits.
local function bucket_states(nb, nk, first, now)
  local states = {}
  local fits = true
  for i = 1, nk do
    local at = first + 4 * (i - 1)
    local t, ts = current(KEYS[2 + nb + i], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), now)
    states[i] = {t, ts}
    if not (t >= tonumber(ARGV[at + 3])) then
      fits = false
    end
  end
  return states, fits
end
"#;

/// KEYS: expiry zset, this request's reservation, the budgets (ARGV[10] of them), the
/// buckets, the slot sets (ARGV[11] of them). ARGV: now_ms, now_s, max bucket ttl, amount,
/// expires_at, reservation ttl, request id, reservation key prefix, expire batch, budget
/// count, slot count, slot holder, lease (ms); per budget: limit, seed (the store's spend,
/// '' for none), its `settled` before the store was read, ttl; per bucket: per_minute,
/// burst, cost, unit ('t' or 'r'); per slot set: its limit.
const LUA_TAKE: &str = r#"
local now_ms, now_s, max_ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local amount = ARGV[4]
local nb, ns, holder = tonumber(ARGV[10]), tonumber(ARGV[11]), ARGV[12]
local nk = #KEYS - 2 - nb - ns
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_s, 'LIMIT', 0, tonumber(ARGV[9]))
for _, id in ipairs(expired) do
  give_back(ARGV[8] .. id .. '}', id, nil, nil, now_ms, max_ttl, false)
  redis.call('ZREM', KEYS[1], id)
end
local refused = check_budgets(nb, 13, amount)
if refused then
  return refused
end
local first = 13 + 4 * nb
-- Parallel slots: each set holds its owner's requests in flight, scored by when their
-- lease ends.
local slot_keys, slot_limits = 2 + nb + nk, first + 4 * nk
for i = 1, ns do
  local key = KEYS[slot_keys + i]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
  local n = redis.call('ZCARD', key)
  if redis.call('ZSCORE', key, holder) then
    n = n - 1
  end
  if n >= tonumber(ARGV[slot_limits + i]) then
    return {'parallel', tostring(i), tostring(n)}
  end
end
local states, fits = bucket_states(nb, nk, first, now_ms)
local out = {fits and 'ok' or 'rate'}
for i = 1, nk do
  local at = first + 4 * (i - 1)
  local t, ts = states[i][1], states[i][2]
  if fits then
    t = t - tonumber(ARGV[at + 3])
  end
  store(KEYS[2 + nb + i], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), t, ts, max_ttl)
  out[2 * i] = string.format('%.17g', t)
  out[2 * i + 1] = string.format('%.17g', ts)
end
if not fits then
  return out
end
local held = ARGV[7] ~= ''
if held then
  give_back(KEYS[2], ARGV[7], nil, nil, now_ms, max_ttl, true)
end
local kept = false
local lease = tonumber(ARGV[13])
for i = 1, ns do
  local key = KEYS[slot_keys + i]
  redis.call('ZADD', key, string.format('%d', now_ms + lease), holder)
  redis.call('PEXPIRE', key, string.format('%d', lease + 1000))
  if held then
    redis.call('HSET', KEYS[2], 'p|' .. key, '1')
    kept = true
  end
end
for i = 1, nb do
  redis.call('HINCRBYFLOAT', KEYS[2 + i], 'reserved', amount)
  if held then
    redis.call('HSET', KEYS[2], 'b|' .. KEYS[2 + i], amount)
    kept = true
  end
end
for i = 1, nk do
  local at = first + 4 * (i - 1)
  if held and ARGV[at + 4] == 't' then
    redis.call('HSET', KEYS[2], 't|' .. KEYS[2 + nb + i], ARGV[at + 1] .. ' ' .. ARGV[at + 2] .. ' ' .. ARGV[at + 3])
    kept = true
  end
end
if kept then
  redis.call('EXPIRE', KEYS[2], ARGV[6])
  redis.call('ZADD', KEYS[1], ARGV[5], ARGV[7])
  redis.call('EXPIRE', KEYS[1], ARGV[6])
end
return out
"#;

/// KEYS: expiry zset, the reservation. ARGV: request id, cost, tokens, now_ms, max bucket
/// ttl.
const LUA_SETTLE: &str = r#"
local found = give_back(KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), true)
redis.call('ZREM', KEYS[1], ARGV[1])
if found then
  return 1
end
return 0
"#;

/// KEYS: buckets. ARGV: now_ms, max bucket ttl, then per bucket per_minute, burst, delta.
/// Mirrors bucket::settle after a refill: units - delta, clamped to [-burst, burst].
const LUA_CORRECT: &str = r#"
for i = 1, #KEYS do
  local per_minute = tonumber(ARGV[3 * i])
  local burst = tonumber(ARGV[3 * i + 1])
  local t, ts = current(KEYS[i], per_minute, burst, tonumber(ARGV[1]))
  t = math.max(-burst, math.min(burst, t - tonumber(ARGV[3 * i + 2])))
  store(KEYS[i], per_minute, burst, t, ts, tonumber(ARGV[2]))
end
return 1
"#;

/// What this process knows of a budget's current period.
#[derive(Debug, Clone, Copy)]
struct Period {
    start: i64,
    end: i64,
    seeded_at: Timestamp,
}

/// A budget's committed spend read from the store, and its `settled` in Redis read just
/// before (see "Seeds" in the module docs).
#[derive(Debug, Clone, Copy)]
struct Seed {
    spent: f64,
    settled: f64,
}

impl Seed {
    /// The take scripts' arguments: the spend ('' for no seed), then `settled`.
    fn args(seed: &Option<Seed>) -> (String, String) {
        match seed {
            Some(s) => (s.spent.to_string(), s.settled.to_string()),
            None => (String::new(), String::new()),
        }
    }
}

/// A budget's period and, when it is (re)seeded, its seed.
type Seeded = (Period, Option<Seed>);

pub struct RedisCounters {
    pool: RedisPool,
    key_prefix: String,
    take_script: Script,
    settle_script: Script,
    correct_script: Script,
    /// On a Redis Cluster: the scripts of one owner.
    owner_scripts: cluster::OwnerScripts,
    store: SharedStore,
    /// By `kind:id:`: the period this process last seeded.
    periods: Mutex<HashMap<String, Period>>,
    /// Committed spend is seeded from the store again after this long (seconds).
    refresh: i64,
    reservation_timeout: i64,
    /// `limits.parallel_lease` in ms.
    lease_ms: i64,
    /// Bound on a store read.
    store_timeout: Duration,
}

impl RedisCounters {
    /// Counters in the Redis of `redis`, on connections of their own. Does no I/O:
    /// connections are made on first use.
    pub fn new(
        redis: &Redis,
        store: SharedStore,
        config: &Config,
    ) -> Result<RedisCounters, String> {
        let pool = RedisPool::new(redis, redis.pool_size, redis.timeout)?;
        Ok(Self::with_pool(pool, redis, store, config))
    }

    /// Counters through `pool` (connections to the Redis of `redis`, maybe shared), under
    /// `redis.key_prefix`.
    pub fn with_pool(
        pool: RedisPool,
        redis: &Redis,
        store: SharedStore,
        config: &Config,
    ) -> RedisCounters {
        RedisCounters {
            pool,
            key_prefix: redis.key_prefix.clone(),
            take_script: Script::new(&format!("{LUA_COMMON}{LUA_TAKE}")),
            settle_script: Script::new(&format!("{LUA_COMMON}{LUA_SETTLE}")),
            correct_script: Script::new(&format!("{LUA_COMMON}{LUA_CORRECT}")),
            owner_scripts: cluster::OwnerScripts::new(),
            store,
            periods: Mutex::new(HashMap::new()),
            refresh: secs(config.cache.key_ttl),
            reservation_timeout: secs(config.budgets.reservation_timeout),
            lease_ms: i64::try_from(config.limits.parallel_lease.as_millis())
                .unwrap_or(i64::MAX)
                .max(1),
            store_timeout: config.database.timeout,
        }
    }

    /// The connections (for the health probe).
    pub fn pool(&self) -> &RedisPool {
        &self.pool
    }

    /// The Redis key of a bucket: `{prefix}{<owner>}:<unit>` for a demand key
    /// `<owner>:<unit>` (`k:abc:rpm` → `{prefix}{k:abc}:rpm`).
    pub fn bucket_key(&self, demand_key: &str) -> String {
        let (owner, unit) = demand_key.rsplit_once(':').unwrap_or((demand_key, ""));
        format!("{}{{{owner}}}:{unit}", self.key_prefix)
    }

    /// The Redis key of a budget period: `{prefix}{<t|u|k>:<id>}:b:<period_start>`.
    pub fn budget_key(&self, kind: SpendKind, id: &str, period_start: i64) -> String {
        format!(
            "{}{{{}:{id}}}:b:{period_start}",
            self.key_prefix,
            level(kind)
        )
    }

    /// The Redis key of an owner's parallel slots: `{prefix}{<owner>}:par` (`k:abc` →
    /// `{prefix}{k:abc}:par`, the gateway's `{prefix}{g}:par`).
    pub fn slot_key(&self, owner: &str) -> String {
        format!("{}{{{owner}}}:par", self.key_prefix)
    }

    /// The Redis key of a reservation: `{prefix}r:{<request id>}`.
    pub fn reservation_key(&self, request_id: &str) -> String {
        format!("{}r:{{{request_id}}}", self.key_prefix)
    }

    /// The sorted set of reservations by expiry: `{prefix}{r}:expiry`.
    pub fn expiry_key(&self) -> String {
        format!("{}{{r}}:expiry", self.key_prefix)
    }

    /// The SHA1 of the take script (what `EVALSHA` names).
    pub fn take_script_hash(&self) -> &str {
        self.take_script.get_hash()
    }

    /// The SHA1 of the script of direct bucket corrections.
    pub fn correct_script_hash(&self) -> &str {
        self.correct_script.get_hash()
    }

    fn periods(&self) -> std::sync::MutexGuard<'_, HashMap<String, Period>> {
        self.periods.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// See [`super::counters::Counters::take`]; one round trip, plus one per budget seeded
    /// (see "Seeds" in the module docs), plus the script again if Redis lost a budget. On a
    /// Redis Cluster one per owner and one for the index (see [`cluster`]).
    pub async fn take(
        &self,
        request_id: &str,
        reservation: &Reservation,
        now_ms: i64,
    ) -> Result<Taken, BackendError> {
        if self.pool.is_cluster() {
            return self.take_by_owner(request_id, reservation, now_ms).await;
        }
        let now = now_ms.div_euclid(1000);
        let holder = slot_holder(request_id, &reservation.slots);
        let mut force_seed = false;
        loop {
            let budgets = self
                .periods_of(&reservation.charges, now, force_seed)
                .await?;
            let mut inv = self.take_script.prepare_invoke();
            inv.key(self.expiry_key())
                .key(self.reservation_key(request_id))
                .arg(now_ms)
                .arg(now)
                .arg(MAX_BUCKET_TTL_MS)
                .arg(reservation.amount_usd.to_string())
                .arg(now.saturating_add(self.reservation_timeout))
                .arg(self.reservation_ttl())
                .arg(request_id)
                .arg(self.reservation_key("").trim_end_matches('}'))
                .arg(EXPIRE_BATCH)
                .arg(reservation.charges.len())
                .arg(reservation.slots.len())
                .arg(&holder)
                .arg(self.lease_ms);
            for (charge, (p, seed)) in reservation.charges.iter().zip(&budgets) {
                self.budget_args(&mut inv, charge, p, seed, now);
            }
            for d in &reservation.demands {
                self.bucket_args(&mut inv, d);
            }
            for slot in &reservation.slots {
                inv.key(self.slot_key(&slot.owner)).arg(slot.limit);
            }
            let reply: Vec<String> = self.call(Call::Script(inv)).await?;
            // The script ran: what was seeded is now in Redis.
            {
                let mut periods = self.periods();
                for (charge, (p, seed)) in reservation.charges.iter().zip(&budgets) {
                    if seed.is_some() {
                        periods.insert(period_id(charge.kind, &charge.id), *p);
                    }
                }
            }
            match reply.first().map(String::as_str) {
                Some("ok") => {
                    return Ok(Taken::Admitted(outcome(
                        &reservation.demands,
                        true,
                        &reply,
                    )?))
                }
                Some("rate") => {
                    return Ok(Taken::RateLimited(outcome(
                        &reservation.demands,
                        false,
                        &reply,
                    )?))
                }
                Some("parallel") if reply.len() == 3 => {
                    let i: usize = reply[1].parse().map_err(|_| unexpected())?;
                    let in_flight: u64 = reply[2].parse().map_err(|_| unexpected())?;
                    let slot = reservation
                        .slots
                        .get(i.wrapping_sub(1))
                        .ok_or_else(unexpected)?;
                    return Ok(Taken::InFlight {
                        slot: slot.clone(),
                        in_flight,
                    });
                }
                Some("seed") if !force_seed => force_seed = true,
                Some("budget") if reply.len() == 3 => {
                    let i: usize = reply[1].parse().map_err(|_| unexpected())?;
                    let used_usd: f64 = reply[2].parse().map_err(|_| unexpected())?;
                    let (charge, (p, _)) = reservation
                        .charges
                        .iter()
                        .zip(&budgets)
                        .nth(i.wrapping_sub(1))
                        .ok_or_else(unexpected)?;
                    return Ok(Taken::OverBudget {
                        charge: charge.clone(),
                        used_usd,
                        period_end: p.end,
                    });
                }
                _ => return Err(unexpected()),
            }
        }
    }

    /// Per charge: its period containing `now`, and a seed when it must be (re)seeded: not
    /// seen in this period, not read within `refresh`, or `force`.
    async fn periods_of(
        &self,
        charges: &[Charge],
        now: Timestamp,
        force: bool,
    ) -> Result<Vec<Seeded>, BackendError> {
        let mut budgets = Vec::with_capacity(charges.len());
        for charge in charges {
            let known = self
                .periods()
                .get(&period_id(charge.kind, &charge.id))
                .copied()
                .filter(|p| now < p.end);
            match known {
                Some(p) if !force && now - p.seeded_at < self.refresh => budgets.push((p, None)),
                _ => {
                    let (start, end) = read_window(&self.store, self.store_timeout, charge, now)
                        .await
                        .map_err(BackendError::from)?;
                    // Read before the store: what is settled from here on may be missing
                    // from the spend read next.
                    let mut cmd = ::redis::cmd("HGET");
                    cmd.arg(self.budget_key(charge.kind, &charge.id, start))
                        .arg("settled");
                    let settled: Option<f64> = self.call(Call::Cmd(cmd)).await?;
                    let spent = read_spent(&self.store, self.store_timeout, charge, now)
                        .await
                        .map_err(BackendError::from)?;
                    let p = Period {
                        start,
                        end,
                        seeded_at: now,
                    };
                    let seed = Seed {
                        spent,
                        settled: settled.unwrap_or(0.0),
                    };
                    budgets.push((p, Some(seed)));
                }
            }
        }
        Ok(budgets)
    }

    /// The TTL of a budget period's hash: until the period ends plus [`PERIOD_GRACE`] (at
    /// least the reservation timeout).
    fn budget_ttl(&self, p: &Period, now: Timestamp) -> i64 {
        p.end
            .saturating_sub(now)
            .saturating_add(PERIOD_GRACE.max(self.reservation_timeout))
            .clamp(1, MAX_TTL)
    }

    /// How long a reservation's hash (and the expiry set) live without use: well past the
    /// reservation timeout, so the take script gives it back before it vanishes.
    fn reservation_ttl(&self) -> i64 {
        self.reservation_timeout
            .saturating_mul(2)
            .saturating_add(PERIOD_GRACE)
    }

    /// See [`super::counters::Counters::settle`]. `Ok(false)` when Redis holds no such
    /// reservation.
    pub async fn settle_request(
        &self,
        request_id: &str,
        cost_usd: f64,
        tokens: u64,
        now_ms: i64,
    ) -> Result<bool, BackendError> {
        if self.pool.is_cluster() {
            return self
                .settle_by_owner(request_id, cost_usd, tokens, now_ms)
                .await;
        }
        let mut inv = self.settle_script.prepare_invoke();
        inv.key(self.expiry_key())
            .key(self.reservation_key(request_id))
            .arg(request_id)
            .arg(cost_usd.to_string())
            .arg(tokens)
            .arg(now_ms)
            .arg(MAX_BUCKET_TTL_MS);
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
    ) -> Result<Option<(f64, f64)>, BackendError> {
        let Some(p) = self
            .periods()
            .get(&period_id(kind, id))
            .copied()
            .filter(|p| now < p.end)
        else {
            return Ok(None);
        };
        let mut cmd = ::redis::cmd("HMGET");
        cmd.arg(self.budget_key(kind, id, p.start))
            .arg("committed")
            .arg("reserved");
        let values: Vec<Option<f64>> = self.pool.call(Call::Cmd(cmd)).await?;
        Ok(match values.as_slice() {
            [None, None] => None,
            [c, r] => Some((c.unwrap_or(0.0), r.unwrap_or(0.0))),
            _ => None,
        })
    }

    /// A budget's key and arguments in a take script: limit, seed, `settled` at the seed,
    /// ttl (the same for one Redis and for an owner's script on a cluster).
    fn budget_args(
        &self,
        inv: &mut ScriptInvocation<'_>,
        charge: &Charge,
        p: &Period,
        seed: &Option<Seed>,
        now: Timestamp,
    ) {
        let (spent, settled) = Seed::args(seed);
        inv.key(self.budget_key(charge.kind, &charge.id, p.start))
            .arg(charge.limit_usd.to_string())
            .arg(spent)
            .arg(settled)
            .arg(self.budget_ttl(p, now));
    }

    /// A bucket's key and arguments in a take script: per_minute, burst, cost, unit.
    fn bucket_args(&self, inv: &mut ScriptInvocation<'_>, d: &Demand) {
        inv.key(self.bucket_key(&d.key))
            .arg(d.shape.per_minute)
            .arg(d.shape.burst)
            .arg(d.cost)
            .arg(match d.unit {
                Unit::Tokens => "t",
                Unit::Requests => "r",
            });
    }

    async fn call<T: FromRedisValue>(&self, call: Call<'_>) -> Result<T, BackendError> {
        self.pool.call(call).await
    }
}

/// Buckets alone, without budgets or reservations: the same scripts, so the arithmetic the
/// trait's behaviour suite checks against [`crate::limits::memory`] is the one decisions
/// use. An admission keeps no reservation (no request id); a settlement is a direct
/// correction.
#[async_trait::async_trait]
impl Buckets for RedisCounters {
    async fn admit(&self, demands: &[Demand], now_ms: i64) -> Result<Outcome, BackendError> {
        if demands.is_empty() {
            return Ok(Outcome {
                admitted: true,
                views: vec![],
            });
        }
        let reservation = Reservation {
            demands: demands.to_vec(),
            ..Reservation::default()
        };
        match self.take("", &reservation, now_ms).await {
            Ok(Taken::Admitted(outcome) | Taken::RateLimited(outcome)) => Ok(outcome),
            Ok(Taken::OverBudget { .. } | Taken::InFlight { .. }) => Err(unexpected()),
            Err(e) => Err(e),
        }
    }

    async fn settle(&self, settlements: &[Settlement], now_ms: i64) -> Result<(), BackendError> {
        if settlements.is_empty() {
            return Ok(());
        }
        if self.pool.is_cluster() {
            return self.correct_by_owner(settlements, now_ms).await;
        }
        let mut inv = self.correct_script.prepare_invoke();
        inv.arg(now_ms).arg(MAX_BUCKET_TTL_MS);
        for s in settlements {
            inv.key(self.bucket_key(&s.key))
                .arg(s.shape.per_minute)
                .arg(s.shape.burst)
                .arg(s.delta);
        }
        self.pool.call(Call::Script(inv)).await
    }
}

/// The buckets' views from a take reply (`status`, then `t`, `ts` per bucket).
fn outcome(demands: &[Demand], admitted: bool, reply: &[String]) -> Result<Outcome, BackendError> {
    if reply.len() != 1 + 2 * demands.len() {
        return Err(unexpected());
    }
    let mut views = Vec::with_capacity(demands.len());
    for (d, pair) in demands.iter().zip(reply[1..].chunks(2)) {
        let state = State {
            tokens: parse_f64(&pair[0])?,
            at_ms: parse_f64(&pair[1])? as i64,
        };
        views.push(bucket::view(d.shape, state, d.cost));
    }
    Ok(Outcome { admitted, views })
}

fn parse_f64(s: &str) -> Result<f64, BackendError> {
    s.parse().map_err(|_| unexpected())
}

fn unexpected() -> BackendError {
    BackendError::fault(Backend::Redis, "redis: unexpected script reply")
}

/// The letter of a budget's owner: `o`, `t`, `u` or `k`.
fn level(kind: SpendKind) -> &'static str {
    super::payers::level(kind)
}

fn period_id(kind: SpendKind, id: &str) -> String {
    format!("{}:{id}:", kind.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sql::{ConnectOptions, SqlStore};
    use std::sync::Arc;

    async fn counters(url: &str) -> Result<RedisCounters, String> {
        let dir = tempfile::tempdir().unwrap();
        let store = SqlStore::connect(
            &format!("sqlite://{}", dir.path().join("t.db").display()),
            &ConnectOptions::default(),
        )
        .await
        .unwrap();
        let redis: Redis = serde_yaml::from_str(&format!(
            "{{ url: \"{url}\", timeout: 200ms, key_prefix: \"p:\" }}"
        ))
        .unwrap();
        RedisCounters::new(&redis, Arc::new(store), &Config::default())
    }

    #[tokio::test]
    async fn keys_are_tagged_by_owner_and_construction_hides_the_password() {
        let c = counters("redis://u:secret@127.0.0.1:1/0").await.unwrap();
        assert_eq!(c.bucket_key("k:1:rpm"), "p:{k:1}:rpm");
        assert_eq!(c.bucket_key("g:tpm"), "p:{g}:tpm");
        assert_eq!(
            c.bucket_key("r:/v1/chat/completions:rpm"),
            "p:{r:/v1/chat/completions}:rpm"
        );
        assert_eq!(
            c.budget_key(SpendKind::Team, "t1", 1_700_000_000),
            "p:{t:t1}:b:1700000000"
        );
        assert_eq!(c.reservation_key("req-1"), "p:r:{req-1}");
        assert_eq!(c.slot_key("k:1"), "p:{k:1}:par");
        assert_eq!(c.slot_key("g"), "p:{g}:par");
        assert_eq!(c.expiry_key(), "p:{r}:expiry");
        let err = counters("nonsense://u:secret@x").await.err().unwrap();
        assert!(!err.contains("secret"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_server_fails_within_the_timeout_without_the_password() {
        let c = counters("redis://u:secret@127.0.0.1:1/0").await.unwrap();
        let started = std::time::Instant::now();
        let reservation = Reservation::default();
        let Err(e) = c.take("r", &reservation, 0).await else {
            panic!("a redis failure");
        };
        assert_eq!(e.backend(), Backend::Redis);
        assert!(e.is_transient(), "{e}");
        let reason = e.to_string();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!reason.contains("secret"), "{reason}");
    }
}
