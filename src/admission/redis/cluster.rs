//! The counters on a Redis Cluster: one script per owner instead of one per decision, so
//! that each script's keys share one hash slot and owners spread over the shards.
//!
//! # Layout
//!
//! Buckets and budget periods keep their keys (`{prefix}{<owner>}:rpm`,
//! `{prefix}{<owner>}:b:<period_start>`). A reservation is cut by owner:
//!
//! - `{prefix}{<owner>}:held`: a hash, request id → the request's part on this owner, lines
//!   `b <suffix> <amount>` (a budget), `t <suffix> <per_minute> <burst> <estimate>` (a
//!   token bucket) and `p par` (its slot of the owner's parallel limit, the sorted set
//!   `{prefix}{<owner>}:par`), each naming the key `{prefix}{<owner>}:<suffix>`.
//! - `{prefix}{<owner>}:expiry`: a sorted set of the request ids held there, scored by when
//!   their part expires (Unix seconds, in the admission clock).
//! - `{prefix}r:{<request id>}:owners`: the index, in the request id's own slot, a string:
//!   JSON `[[owner, [suffix, …]], …]` naming the owners that hold a part and the keys each
//!   part names, so that any replica settles by request id and declares every key it
//!   touches.
//!
//! # Take
//!
//! A reservation's buckets and budgets are grouped by owner and the groups taken one after
//! the other, most specific first (`k`, `u`, `t`, `m`, `r`, `g`): the narrowest limits refuse
//! most often, so a refusal comes early, and the gateway's bucket, shared by every request,
//! is taken last. Each group is one script call (`LUA_OWNER_TAKE`) that does for its owner
//! what the single script does for all (give back expired parts, seed, check budgets then
//! buckets, take all or nothing, write the part). When every group fits, the index is
//! written (`SET … GET`: a retry's earlier index comes back, and parts it held on owners
//! the retry no longer touches are given back). When a group refuses, the groups already
//! taken are given back (`LUA_OWNER_REFUND`: a bucket nobody touched since is put back
//! exactly as it was), and the groups after it are only checked ("peek"), so the answer is
//! the one the single script gives: a budget refusal first (the first budget in the
//! reservation's order), else a rate refusal with every bucket's view.
//!
//! Nothing is ever overspent: a group takes only what fits in it. But between a group's
//! take and its refund a concurrent request can see those units as taken and be refused
//! for it: the price of not holding every owner in one slot.
//!
//! # Resharding
//!
//! An owner's keys move together (one slot). While its slot migrates, Redis answers a script
//! whose keys are not all on one side `TRYAGAIN` and the client retries; after it, `MOVED`,
//! which the client follows. A script must not touch a key it does not declare, nor one it
//! emptied, while its slot migrates (Redis would refuse it midway): the scripts touch only
//! declared keys (a part naming a budget of an earlier period is not given back there: that
//! period is over) and remove fields and members once, last.

use super::*;
use futures::future::join_all;

/// Parts: read from `held`, given back.
const LUA_OWNER_COMMON: &str = r#"
local function declared()
  local set = {}
  for _, key in ipairs(KEYS) do
    set[key] = true
  end
  return set
end
-- Gives back request `rid`'s part: each budget's amount (and `cost` added to `committed` and
-- `settled` when not nil), each token bucket corrected by `tokens` less its estimate when
-- `tokens` is not nil, its parallel slot when `slots` (else the slot ends with its lease).
-- Keys not in `known` are left alone.
local function give_back_part(part, rid, base, known, cost, tokens, now, max_ttl, slots)
  for line in string.gmatch(part, '[^\n]+') do
    local f = {}
    for word in string.gmatch(line, '%S+') do
      f[#f + 1] = word
    end
    local key = base .. f[2]
    if known[key] then
      if f[1] == 'p' then
        if slots then
          redis.call('ZREM', key, rid)
        end
      elseif f[1] == 'b' then
        if redis.call('EXISTS', key) == 1 then
          local left = tonumber(redis.call('HINCRBYFLOAT', key, 'reserved', string.format('%.17g', -tonumber(f[3]))))
          if left < 0 then
            redis.call('HSET', key, 'reserved', '0')
          end
          if cost then
            redis.call('HINCRBYFLOAT', key, 'committed', cost)
            redis.call('HINCRBYFLOAT', key, 'settled', cost)
          end
        end
      elseif f[1] == 't' and tokens then
        local per_minute, burst = tonumber(f[3]), tonumber(f[4])
        local delta = tokens - tonumber(f[5])
        if delta ~= 0 then
          local t, ts = current(key, per_minute, burst, now)
          t = math.max(-burst, math.min(burst, t - delta))
          store(key, per_minute, burst, t, ts, max_ttl)
        end
      end
    end
  end
end
"#;

/// KEYS: the owner's expiry zset, its held hash, its budgets (ARGV[10] of them), its
/// buckets, its slot set (ARGV[12]: 0 or 1). ARGV: now_ms, now_s, max bucket ttl, amount,
/// expires_at, ttl of held and expiry, request id ('' holds nothing), the owner's key base,
/// expire batch, budget count, `take` or `peek` (check only), slot count, slot holder,
/// lease (ms); per budget: limit, seed (the store's spend, '' for none), its `settled`
/// before the store was read, ttl; per bucket: per_minute, burst, cost, unit ('t' or 'r');
/// per slot set: its limit. Answers `seed`; `budget`, the budget's index and its used
/// amount; `parallel` and the requests in flight; or `ok` (taken), `fits` (peek) or `rate`,
/// then whether a part is held, then per bucket its units after, their time and its units
/// before.
const LUA_OWNER_TAKE: &str = r#"
local now_ms, now_s, max_ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local amount, id, base = ARGV[4], ARGV[7], ARGV[8]
local nb, ns, holder = tonumber(ARGV[10]), tonumber(ARGV[12]), ARGV[13]
local nk = #KEYS - 2 - nb - ns
local known = declared()
-- Request ids whose part goes: removed once, at the end.
local gone, seen = {}, {}
local function finish(reply)
  if #gone > 0 then
    redis.call('HDEL', KEYS[2], unpack(gone))
    redis.call('ZREM', KEYS[1], unpack(gone))
  end
  return reply
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_s, 'LIMIT', 0, tonumber(ARGV[9]))
for _, rid in ipairs(expired) do
  local part = redis.call('HGET', KEYS[2], rid)
  if part then
    give_back_part(part, rid, base, known, nil, nil, now_ms, max_ttl, false)
  end
  gone[#gone + 1] = rid
  seen[rid] = true
end
local refused = check_budgets(nb, 14, amount)
if refused then
  return finish(refused)
end
local first = 14 + 4 * nb
local slot_keys, slot_limits = 2 + nb + nk, first + 4 * nk
for i = 1, ns do
  local key = KEYS[slot_keys + i]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
  local n = redis.call('ZCARD', key)
  if redis.call('ZSCORE', key, holder) then
    n = n - 1
  end
  if n >= tonumber(ARGV[slot_limits + i]) then
    return finish({'parallel', tostring(n)})
  end
end
local states, fits = bucket_states(nb, nk, first, now_ms)
local take = fits and ARGV[11] == 'take'
local out = {take and 'ok' or (fits and 'fits' or 'rate'), '0'}
for i = 1, nk do
  local at = first + 4 * (i - 1)
  local before, ts = states[i][1], states[i][2]
  local t = before
  if take then
    t = t - tonumber(ARGV[at + 3])
  end
  store(KEYS[2 + nb + i], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), t, ts, max_ttl)
  out[3 * i] = string.format('%.17g', t)
  out[3 * i + 1] = string.format('%.17g', ts)
  out[3 * i + 2] = string.format('%.17g', before)
end
if not take then
  return finish(out)
end
if id ~= '' and not seen[id] then
  -- A retry of the request: its earlier part is given back before the new one replaces it.
  local previous = redis.call('HGET', KEYS[2], id)
  if previous then
    give_back_part(previous, id, base, known, nil, nil, now_ms, max_ttl, true)
    gone[#gone + 1] = id
  end
end
local lines = {}
for i = 1, nb do
  redis.call('HINCRBYFLOAT', KEYS[2 + i], 'reserved', amount)
  lines[#lines + 1] = 'b ' .. string.sub(KEYS[2 + i], #base + 1) .. ' ' .. amount
end
for i = 1, nk do
  local at = first + 4 * (i - 1)
  if ARGV[at + 4] == 't' then
    lines[#lines + 1] = 't ' .. string.sub(KEYS[2 + nb + i], #base + 1) .. ' ' .. ARGV[at + 1] .. ' ' .. ARGV[at + 2] .. ' ' .. ARGV[at + 3]
  end
end
for i = 1, ns do
  local key, lease = KEYS[slot_keys + i], tonumber(ARGV[14])
  redis.call('ZADD', key, string.format('%d', now_ms + lease), holder)
  redis.call('PEXPIRE', key, string.format('%d', lease + 1000))
  lines[#lines + 1] = 'p ' .. string.sub(key, #base + 1)
end
if id ~= '' and #lines > 0 then
  -- The new part is written, not removed.
  local keep = {}
  for _, rid in ipairs(gone) do
    if rid ~= id then
      keep[#keep + 1] = rid
    end
  end
  gone = keep
  redis.call('HSET', KEYS[2], id, table.concat(lines, '\n'))
  redis.call('EXPIRE', KEYS[2], ARGV[6])
  redis.call('ZADD', KEYS[1], ARGV[5], id)
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  out[2] = '1'
end
return finish(out)
"#;

/// KEYS: the owner's expiry zset, its held hash, then every key the part names. ARGV:
/// request id, cost ('' for none), tokens ('' for none), now_ms, max bucket ttl, the owner's
/// key base. Answers 1 when the request held a part there.
const LUA_OWNER_SETTLE: &str = r#"
local part = redis.call('HGET', KEYS[2], ARGV[1])
if not part then
  return 0
end
local cost = nil
if ARGV[2] ~= '' then
  cost = ARGV[2]
end
give_back_part(part, ARGV[1], ARGV[6], declared(), cost, tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), true)
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"#;

/// Gives back what a take of one owner took, when a later owner refused. KEYS: the owner's
/// expiry zset, its held hash, its budgets (ARGV[3] of them), its buckets, its slot set
/// (ARGV[6]: 0 or 1). ARGV: request id ('' for none), amount, budget count, now_ms, max
/// bucket ttl, slot count, slot holder; per bucket: per_minute, burst, cost, then its units
/// after the take, their time and its units before, as the take answered them.
const LUA_OWNER_REFUND: &str = r#"
local now, max_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local nb, ns = tonumber(ARGV[3]), tonumber(ARGV[6])
for i = #KEYS - ns + 1, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[7])
end
for i = 1, nb do
  local key = KEYS[2 + i]
  if redis.call('EXISTS', key) == 1 then
    local left = tonumber(redis.call('HINCRBYFLOAT', key, 'reserved', string.format('%.17g', -tonumber(ARGV[2]))))
    if left < 0 then
      redis.call('HSET', key, 'reserved', '0')
    end
  end
end
for i = 1, #KEYS - 2 - nb - ns do
  local key, at = KEYS[2 + nb + i], 7 + 6 * (i - 1)
  local per_minute, burst, cost = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local h = redis.call('HMGET', key, 't', 'ts')
  if h[1] == ARGV[at + 4] and h[2] == ARGV[at + 5] then
    -- Untouched since the take: as if it had never been.
    store(key, per_minute, burst, tonumber(ARGV[at + 6]), tonumber(ARGV[at + 5]), max_ttl)
  else
    local t, ts = current(key, per_minute, burst, now)
    store(key, per_minute, burst, math.min(burst, t + cost), ts, max_ttl)
  end
end
if ARGV[1] ~= '' then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 1
"#;

/// The scripts of a cluster's counters.
pub(super) struct OwnerScripts {
    take: Script,
    settle: Script,
    refund: Script,
}

impl OwnerScripts {
    pub(super) fn new() -> OwnerScripts {
        let script = |body: &str| Script::new(&format!("{LUA_COMMON}{LUA_OWNER_COMMON}{body}"));
        OwnerScripts {
            take: script(LUA_OWNER_TAKE),
            settle: script(LUA_OWNER_SETTLE),
            refund: script(LUA_OWNER_REFUND),
        }
    }
}

/// What a reservation asks of one owner: indices into its charges and demands.
#[derive(Debug, Clone, PartialEq)]
struct Group {
    owner: String,
    charges: Vec<usize>,
    demands: Vec<usize>,
    /// Its parallel limit (at most one: an owner has one slot set).
    slots: Vec<usize>,
}

/// The owner of a demand key `<owner>:<unit>`.
fn demand_owner(key: &str) -> &str {
    key.rsplit_once(':').map_or(key, |(owner, _)| owner)
}

fn charge_owner(charge: &Charge) -> String {
    format!("{}:{}", level(charge.kind), charge.id)
}

/// Most specific first: keys, users, teams, models, routes, the gateway.
fn rank(owner: &str) -> usize {
    let kind = owner.split(':').next().unwrap_or(owner);
    ["k", "u", "t", "m", "r", "g"]
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(6)
}

/// A reservation's buckets and budgets by owner, in the order they are taken.
fn groups(reservation: &Reservation) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    let mut group = |owner: String| -> usize {
        match groups.iter().position(|g| g.owner == owner) {
            Some(i) => i,
            None => {
                groups.push(Group {
                    owner,
                    charges: Vec::new(),
                    demands: Vec::new(),
                    slots: Vec::new(),
                });
                groups.len() - 1
            }
        }
    };
    let charges: Vec<usize> = reservation
        .charges
        .iter()
        .map(|c| group(charge_owner(c)))
        .collect();
    let demands: Vec<usize> = reservation
        .demands
        .iter()
        .map(|d| group(demand_owner(&d.key).to_owned()))
        .collect();
    let slots: Vec<usize> = reservation
        .slots
        .iter()
        .map(|s| group(s.owner.clone()))
        .collect();
    for (i, g) in charges.into_iter().enumerate() {
        groups[g].charges.push(i);
    }
    for (i, g) in slots.into_iter().enumerate() {
        groups[g].slots.push(i);
    }
    for (i, g) in demands.into_iter().enumerate() {
        groups[g].demands.push(i);
    }
    groups.sort_by_key(|g| rank(&g.owner));
    groups
}

/// A bucket as a take script answered it (numbers as Redis printed them, so that a refund
/// can tell whether the bucket was touched since).
#[derive(Debug, Clone)]
struct Answered {
    after: String,
    at: String,
    before: String,
}

/// What one owner's take answered.
#[derive(Debug)]
enum Reply {
    /// Everything fit; `taken` unless only checked; `kept` when a part is held.
    Fit {
        taken: bool,
        kept: bool,
        buckets: Vec<Answered>,
    },
    Rate {
        buckets: Vec<Answered>,
    },
    /// The group's budget at this index (0-based) has no room.
    Budget {
        index: usize,
        used_usd: f64,
    },
    /// The group's parallel limit has no free slot.
    Parallel {
        in_flight: u64,
    },
    /// A budget hash lacks its committed spend: seed it.
    Seed,
}

/// The index of a request's parts: per owner, the suffixes of the keys its part names.
type Index = Vec<(String, Vec<String>)>;

impl RedisCounters {
    /// `{prefix}{<owner>}:`: what every key of the owner starts with.
    fn owner_base(&self, owner: &str) -> String {
        format!("{}{{{owner}}}:", self.key_prefix)
    }

    /// The index of a request's parts: `{prefix}r:{<request id>}:owners`.
    pub fn owners_key(&self, request_id: &str) -> String {
        format!("{}:owners", self.reservation_key(request_id))
    }

    /// [`RedisCounters::take`] on a Redis Cluster: one script per owner (see the module
    /// docs), then the index.
    pub(super) async fn take_by_owner(
        &self,
        request_id: &str,
        reservation: &Reservation,
        now_ms: i64,
    ) -> Result<Taken, BackendError> {
        let now = now_ms.div_euclid(1000);
        let groups = groups(reservation);
        let holder = &slot_holder(request_id, &reservation.slots);
        // The first parallel refusal: the slot's index and the requests in flight.
        let mut full: Option<(usize, u64)> = None;
        let mut budgets = self.periods_of(&reservation.charges, now, false).await?;
        let mut replies: Vec<Option<Reply>> = Vec::with_capacity(groups.len());
        // The first refusal: a budget's charge index, or None for a rate refusal.
        let mut refusal: Option<Option<usize>> = None;
        for g in &groups {
            let mode = match refusal {
                None => Some(true),
                // After a rate refusal every owner is checked (for its views and budgets),
                // after a budget refusal only those with a budget earlier in the order.
                Some(None) => Some(false),
                Some(Some(first)) if g.charges.iter().any(|&c| c < first) => Some(false),
                Some(Some(_)) => None,
            };
            let Some(take) = mode else {
                replies.push(None);
                continue;
            };
            let reply = match self
                .take_owner(
                    g,
                    request_id,
                    holder,
                    reservation,
                    &mut budgets,
                    now_ms,
                    take,
                )
                .await
            {
                Ok(reply) => reply,
                Err(e) => {
                    let _ = self
                        .refund(
                            &groups,
                            &replies,
                            request_id,
                            holder,
                            reservation,
                            &budgets,
                            now_ms,
                        )
                        .await;
                    return Err(e);
                }
            };
            match &reply {
                Reply::Fit { .. } => {}
                Reply::Rate { .. } => {
                    refusal.get_or_insert(None);
                }
                Reply::Parallel { in_flight } => {
                    refusal.get_or_insert(None);
                    let slot = *g.slots.first().ok_or_else(unexpected)?;
                    if full.is_none_or(|(first, _)| slot < first) {
                        full = Some((slot, *in_flight));
                    }
                }
                Reply::Budget { index, .. } => {
                    let charge = g.charges[*index];
                    refusal = Some(Some(match refusal {
                        Some(Some(first)) => first.min(charge),
                        _ => charge,
                    }));
                }
                Reply::Seed => return Err(unexpected()),
            }
            replies.push(Some(reply));
        }
        if refusal.is_none() {
            return self
                .admitted(
                    &groups,
                    &replies,
                    request_id,
                    holder,
                    reservation,
                    &budgets,
                    now_ms,
                )
                .await;
        }
        self.refund(
            &groups,
            &replies,
            request_id,
            holder,
            reservation,
            &budgets,
            now_ms,
        )
        .await?;
        // A budget refusal first, the first budget in the reservation's order.
        let over = groups
            .iter()
            .zip(&replies)
            .filter_map(|(g, r)| match r {
                Some(Reply::Budget { index, used_usd }) => Some((g.charges[*index], *used_usd)),
                _ => None,
            })
            .min_by_key(|(charge, _)| *charge);
        if let Some((i, used_usd)) = over {
            return Ok(Taken::OverBudget {
                charge: reservation.charges[i].clone(),
                used_usd,
                period_end: budgets[i].0.end,
            });
        }
        // Then a parallel refusal (the single script checks slots before buckets).
        if let Some((i, in_flight)) = full {
            return Ok(Taken::InFlight {
                slot: reservation.slots[i].clone(),
                in_flight,
            });
        }
        // Every bucket as it is left: taken ones given back, the others untouched.
        let mut states = vec![None; reservation.demands.len()];
        for (g, reply) in groups.iter().zip(&replies) {
            let buckets = match reply {
                Some(Reply::Fit { buckets, .. } | Reply::Rate { buckets }) => buckets,
                _ => return Err(unexpected()),
            };
            for (&d, b) in g.demands.iter().zip(buckets) {
                states[d] = Some((parse_f64(&b.before)?, parse_f64(&b.at)?));
            }
        }
        Ok(Taken::RateLimited(views(reservation, states, false)?))
    }

    /// One owner's take (`take`) or check, seeding its budgets again once when Redis lost
    /// them.
    #[allow(clippy::too_many_arguments)]
    async fn take_owner(
        &self,
        g: &Group,
        request_id: &str,
        holder: &str,
        reservation: &Reservation,
        budgets: &mut Vec<Seeded>,
        now_ms: i64,
        take: bool,
    ) -> Result<Reply, BackendError> {
        let now = now_ms.div_euclid(1000);
        let base = self.owner_base(&g.owner);
        let mut forced = false;
        loop {
            let mut inv = self.owner_scripts.take.prepare_invoke();
            inv.key(format!("{base}expiry"))
                .key(format!("{base}held"))
                .arg(now_ms)
                .arg(now)
                .arg(MAX_BUCKET_TTL_MS)
                .arg(reservation.amount_usd.to_string())
                .arg(now.saturating_add(self.reservation_timeout))
                .arg(self.reservation_ttl())
                .arg(request_id)
                .arg(&base)
                .arg(EXPIRE_BATCH)
                .arg(g.charges.len())
                .arg(if take { "take" } else { "peek" })
                .arg(g.slots.len())
                .arg(holder)
                .arg(self.lease_ms);
            for &i in &g.charges {
                let charge = &reservation.charges[i];
                let (p, seed) = &budgets[i];
                self.budget_args(&mut inv, charge, p, seed, now);
            }
            for &i in &g.demands {
                self.bucket_args(&mut inv, &reservation.demands[i]);
            }
            for &i in &g.slots {
                let slot = &reservation.slots[i];
                inv.key(self.slot_key(&slot.owner)).arg(slot.limit);
            }
            let reply: Vec<String> = self.call(Call::Script(inv)).await?;
            {
                let mut periods = self.periods();
                for &i in &g.charges {
                    if let (p, Some(_)) = &budgets[i] {
                        periods.insert(
                            period_id(reservation.charges[i].kind, &reservation.charges[i].id),
                            *p,
                        );
                    }
                }
            }
            match parse_reply(&reply, g.demands.len())? {
                Reply::Seed if !forced => {
                    forced = true;
                    *budgets = self.periods_of(&reservation.charges, now, true).await?;
                }
                Reply::Seed => return Err(unexpected()),
                other => return Ok(other),
            }
        }
    }

    /// Every owner fit and was taken: writes the index (giving back what an earlier take of
    /// the same request id holds on owners this one does not touch) and answers the views.
    #[allow(clippy::too_many_arguments)]
    async fn admitted(
        &self,
        groups: &[Group],
        replies: &[Option<Reply>],
        request_id: &str,
        holder: &str,
        reservation: &Reservation,
        budgets: &[Seeded],
        now_ms: i64,
    ) -> Result<Taken, BackendError> {
        let mut states = vec![None; reservation.demands.len()];
        let mut index: Index = Vec::new();
        for (g, reply) in groups.iter().zip(replies) {
            let Some(Reply::Fit {
                taken: true,
                kept,
                buckets,
            }) = reply
            else {
                return Err(unexpected());
            };
            for (&d, b) in g.demands.iter().zip(buckets) {
                states[d] = Some((parse_f64(&b.after)?, parse_f64(&b.at)?));
            }
            if *kept {
                index.push((g.owner.clone(), part_suffixes(g, reservation, budgets)));
            }
        }
        if !index.is_empty() {
            let json = serde_json::to_string(&index).map_err(|_| unexpected())?;
            let mut cmd = ::redis::cmd("SET");
            cmd.arg(self.owners_key(request_id))
                .arg(json)
                .arg("EX")
                .arg(self.reservation_ttl())
                .arg("GET");
            let previous: Option<String> = match self.call(Call::Cmd(cmd)).await {
                Ok(previous) => previous,
                Err(e) => {
                    let _ = self
                        .refund(
                            groups,
                            replies,
                            request_id,
                            holder,
                            reservation,
                            budgets,
                            now_ms,
                        )
                        .await;
                    return Err(e);
                }
            };
            let previous: Index = previous
                .and_then(|p| serde_json::from_str(&p).ok())
                .unwrap_or_default();
            let left: Vec<_> = previous
                .iter()
                .filter(|(owner, _)| !index.iter().any(|(o, _)| o == owner))
                .map(|(owner, suffixes)| {
                    self.settle_owner(request_id, owner, suffixes, None, now_ms)
                })
                .collect();
            for result in join_all(left).await {
                result?;
            }
        }
        Ok(Taken::Admitted(views(reservation, states, true)?))
    }

    /// Gives back what the owners taken so far took (all of them, even when one fails: the
    /// first failure is answered).
    #[allow(clippy::too_many_arguments)]
    async fn refund(
        &self,
        groups: &[Group],
        replies: &[Option<Reply>],
        request_id: &str,
        holder: &str,
        reservation: &Reservation,
        budgets: &[Seeded],
        now_ms: i64,
    ) -> Result<(), BackendError> {
        let mut calls = Vec::new();
        for (g, reply) in groups.iter().zip(replies) {
            let Some(Reply::Fit {
                taken: true,
                buckets,
                ..
            }) = reply
            else {
                continue;
            };
            let base = self.owner_base(&g.owner);
            let mut inv = self.owner_scripts.refund.prepare_invoke();
            inv.key(format!("{base}expiry"))
                .key(format!("{base}held"))
                .arg(request_id)
                .arg(reservation.amount_usd.to_string())
                .arg(g.charges.len())
                .arg(now_ms)
                .arg(MAX_BUCKET_TTL_MS)
                .arg(g.slots.len())
                .arg(holder);
            for &i in &g.charges {
                let charge = &reservation.charges[i];
                inv.key(self.budget_key(charge.kind, &charge.id, budgets[i].0.start));
            }
            for (&i, b) in g.demands.iter().zip(buckets) {
                let d = &reservation.demands[i];
                inv.key(self.bucket_key(&d.key))
                    .arg(d.shape.per_minute)
                    .arg(d.shape.burst)
                    .arg(d.cost)
                    .arg(&b.after)
                    .arg(&b.at)
                    .arg(&b.before);
            }
            for &i in &g.slots {
                inv.key(self.slot_key(&reservation.slots[i].owner));
            }
            calls.push(inv);
        }
        let results = join_all(
            calls
                .into_iter()
                .map(|inv| self.call::<i64>(Call::Script(inv))),
        )
        .await;
        results.into_iter().try_for_each(|r| r.map(|_| ()))
    }

    /// [`RedisCounters::settle_request`] on a Redis Cluster: takes the index, then settles
    /// every owner's part at once.
    pub(super) async fn settle_by_owner(
        &self,
        request_id: &str,
        cost_usd: f64,
        tokens: u64,
        now_ms: i64,
    ) -> Result<bool, BackendError> {
        let mut cmd = ::redis::cmd("GETDEL");
        cmd.arg(self.owners_key(request_id));
        let index: Option<String> = self.call(Call::Cmd(cmd)).await?;
        let Some(index) = index else {
            return Ok(false);
        };
        let index: Index = serde_json::from_str(&index).map_err(|_| unexpected())?;
        let settles = index.iter().map(|(owner, suffixes)| {
            self.settle_owner(
                request_id,
                owner,
                suffixes,
                Some((cost_usd, tokens)),
                now_ms,
            )
        });
        let mut found = false;
        for result in join_all(settles).await {
            found |= result?;
        }
        Ok(found)
    }

    /// Settles (with the real cost and token count) or only gives back (`None`) a request's
    /// part on one owner.
    async fn settle_owner(
        &self,
        request_id: &str,
        owner: &str,
        suffixes: &[String],
        real: Option<(f64, u64)>,
        now_ms: i64,
    ) -> Result<bool, BackendError> {
        let base = self.owner_base(owner);
        let mut inv = self.owner_scripts.settle.prepare_invoke();
        inv.key(format!("{base}expiry")).key(format!("{base}held"));
        for suffix in suffixes {
            inv.key(format!("{base}{suffix}"));
        }
        inv.arg(request_id)
            .arg(real.map(|(cost, _)| cost.to_string()).unwrap_or_default())
            .arg(
                real.map(|(_, tokens)| tokens.to_string())
                    .unwrap_or_default(),
            )
            .arg(now_ms)
            .arg(MAX_BUCKET_TTL_MS)
            .arg(&base);
        let found: i64 = self.call(Call::Script(inv)).await?;
        Ok(found == 1)
    }

    /// [`Buckets::settle`] on a Redis Cluster: one correction script per owner, at once.
    pub(super) async fn correct_by_owner(
        &self,
        settlements: &[Settlement],
        now_ms: i64,
    ) -> Result<(), BackendError> {
        let mut owners: Vec<(&str, Vec<&Settlement>)> = Vec::new();
        for s in settlements {
            let owner = demand_owner(&s.key);
            match owners.iter_mut().find(|(o, _)| *o == owner) {
                Some((_, list)) => list.push(s),
                None => owners.push((owner, vec![s])),
            }
        }
        let calls: Vec<_> = owners
            .iter()
            .map(|(_, list)| {
                let mut inv = self.correct_script.prepare_invoke();
                inv.arg(now_ms).arg(MAX_BUCKET_TTL_MS);
                for s in list {
                    inv.key(self.bucket_key(&s.key))
                        .arg(s.shape.per_minute)
                        .arg(s.shape.burst)
                        .arg(s.delta);
                }
                inv
            })
            .collect();
        let results = join_all(
            calls
                .into_iter()
                .map(|inv| self.pool.call::<()>(Call::Script(inv))),
        )
        .await;
        results.into_iter().collect()
    }
}

/// The suffixes of the keys a group's part names: its budgets and its token buckets.
fn part_suffixes(g: &Group, reservation: &Reservation, budgets: &[Seeded]) -> Vec<String> {
    let budgets = g
        .charges
        .iter()
        .map(|&i| format!("b:{}", budgets[i].0.start));
    let tokens = g
        .demands
        .iter()
        .map(|&i| &reservation.demands[i])
        .filter(|d| d.unit == Unit::Tokens)
        .map(|d| {
            d.key
                .rsplit_once(':')
                .map_or("", |(_, unit)| unit)
                .to_owned()
        });
    let slots = g.slots.iter().map(|_| "par".to_owned());
    budgets.chain(tokens).chain(slots).collect()
}

/// Parses a take reply for a group of `buckets` buckets.
fn parse_reply(reply: &[String], buckets: usize) -> Result<Reply, BackendError> {
    match reply.first().map(String::as_str) {
        Some("seed") => Ok(Reply::Seed),
        Some("parallel") if reply.len() == 2 => Ok(Reply::Parallel {
            in_flight: reply[1].parse().map_err(|_| unexpected())?,
        }),
        Some("budget") if reply.len() == 3 => {
            let i: usize = reply[1].parse().map_err(|_| unexpected())?;
            Ok(Reply::Budget {
                index: i.checked_sub(1).ok_or_else(unexpected)?,
                used_usd: parse_f64(&reply[2])?,
            })
        }
        Some(status @ ("ok" | "fits" | "rate")) if reply.len() == 2 + 3 * buckets => {
            let answered = reply[2..]
                .chunks(3)
                .map(|c| Answered {
                    after: c[0].clone(),
                    at: c[1].clone(),
                    before: c[2].clone(),
                })
                .collect();
            Ok(match status {
                "rate" => Reply::Rate { buckets: answered },
                _ => Reply::Fit {
                    taken: status == "ok",
                    kept: reply[1] == "1",
                    buckets: answered,
                },
            })
        }
        _ => Err(unexpected()),
    }
}

/// The views of every demand from its bucket's units and time.
fn views(
    reservation: &Reservation,
    states: Vec<Option<(f64, f64)>>,
    admitted: bool,
) -> Result<Outcome, BackendError> {
    let mut views = Vec::with_capacity(states.len());
    for (d, state) in reservation.demands.iter().zip(states) {
        let (tokens, at) = state.ok_or_else(unexpected)?;
        let state = State {
            tokens,
            at_ms: at as i64,
        };
        views.push(bucket::view(d.shape, state, d.cost));
    }
    Ok(Outcome { admitted, views })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::bucket::Shape;
    use crate::limits::parallel::Slot;

    fn demand(key: &str) -> Demand {
        Demand {
            key: key.to_owned(),
            unit: if key.ends_with("tpm") {
                Unit::Tokens
            } else {
                Unit::Requests
            },
            shape: Shape {
                per_minute: 10,
                burst: 10,
            },
            cost: 1,
        }
    }

    fn charge(kind: SpendKind, id: &str) -> Charge {
        Charge {
            kind,
            id: id.to_owned(),
            limit_usd: 1.0,
            duration: None,
        }
    }

    #[test]
    fn owners_are_grouped_most_specific_first() {
        let reservation = Reservation {
            demands: [
                "g:rpm",
                "g:tpm",
                "m:gpt-4o:rpm",
                "t:t1:tpm",
                "k:k1:rpm",
                "k:k1:tpm",
            ]
            .map(demand)
            .to_vec(),
            charges: vec![
                charge(SpendKind::Team, "t1"),
                charge(SpendKind::User, "u1"),
                charge(SpendKind::Key, "k1"),
            ],
            amount_usd: 0.5,
            slots: vec![
                Slot {
                    owner: "g".to_owned(),
                    limit: 2,
                    kind: None,
                },
                Slot {
                    owner: "u:u1".to_owned(),
                    limit: 2,
                    kind: Some(SpendKind::User),
                },
            ],
        };
        let got: Vec<_> = groups(&reservation)
            .into_iter()
            .map(|g| (g.owner, g.charges, g.demands, g.slots))
            .collect();
        let want = [
            ("k:k1", vec![2], vec![4, 5], vec![]),
            ("u:u1", vec![1], vec![], vec![1]),
            ("t:t1", vec![0], vec![3], vec![]),
            ("m:gpt-4o", vec![], vec![2], vec![]),
            ("g", vec![], vec![0, 1], vec![0]),
        ]
        .map(|(o, c, d, s)| (o.to_owned(), c, d, s));
        assert_eq!(got, want);
    }

    #[test]
    fn replies_parse() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches!(
            parse_reply(&s(&["ok", "1", "9", "5", "10"]), 1),
            Ok(Reply::Fit {
                taken: true,
                kept: true,
                ..
            })
        ));
        assert!(matches!(
            parse_reply(&s(&["fits", "0", "10", "5", "10"]), 1),
            Ok(Reply::Fit { taken: false, .. })
        ));
        assert!(matches!(
            parse_reply(&s(&["budget", "2", "1.5"]), 0),
            Ok(Reply::Budget { index: 1, .. })
        ));
        assert!(parse_reply(&s(&["ok", "1", "9"]), 1).is_err());
        assert!(parse_reply(&s(&["budget", "0", "1"]), 0).is_err());
    }
}
