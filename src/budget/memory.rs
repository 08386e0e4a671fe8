//! The in-process ledger: reservations in this process, committed spend read from the store
//! every `refresh`. Used when `redis` is not configured, and as `failure_mode: local` while
//! Redis is unreachable.

use super::{read_spent, read_window, Charge, Verdict};
use crate::domain::Timestamp;
use crate::limits::Demand;
use crate::store::{SharedStore, SpendKind, StoreError};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
struct Budget {
    committed: f64,
    reserved: f64,
    /// Every cost settled into `committed` (a read of committed spend adds back those
    /// settled while it was on its way).
    settled: f64,
    period_end: Timestamp,
    seeded_at: Timestamp,
}

/// What one request holds until its usage arrives: an amount on each of its budgets, and
/// the token-bucket demands it was admitted with (corrected when the real count is known).
struct Reservation {
    budgets: Vec<(String, f64)>,
    tokens: Vec<Demand>,
    expires_at: Timestamp,
}

#[derive(Default)]
struct State {
    /// By `kind:id:period_start`.
    budgets: HashMap<String, Budget>,
    /// `kind:id:` → the key of its latest period in `budgets`.
    current: HashMap<String, String>,
    reservations: HashMap<String, Reservation>,
    /// `(expires_at, request id)` of every reservation, soonest first, so expiring them
    /// looks only at those due.
    expiries: BTreeSet<(Timestamp, String)>,
    /// When budgets of ended periods were last swept out.
    swept_at: Timestamp,
}

impl State {
    /// Removes a reservation (and its expiry entry) without giving its amounts back.
    fn take(&mut self, request_id: &str) -> Option<Reservation> {
        let reservation = self.reservations.remove(request_id)?;
        self.expiries
            .remove(&(reservation.expires_at, request_id.to_owned()));
        Some(reservation)
    }
}

pub struct MemoryLedger {
    store: SharedStore,
    state: Mutex<State>,
    /// Committed spend is read again from the store after this long.
    refresh: i64,
    reservation_timeout: i64,
    timeout: Duration,
}

pub(crate) fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX).max(1)
}

impl MemoryLedger {
    pub fn new(
        store: SharedStore,
        refresh: Duration,
        reservation_timeout: Duration,
        timeout: Duration,
    ) -> MemoryLedger {
        MemoryLedger {
            store,
            state: Mutex::new(State::default()),
            refresh: secs(refresh),
            reservation_timeout: secs(reservation_timeout),
            timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves `amount_usd` for request `request_id` against every charge, all or nothing,
    /// and keeps the request's token demands with it. Reads the store only for budgets not
    /// seen in this period or not read for `refresh`.
    pub async fn reserve(
        &self,
        request_id: &str,
        charges: &[Charge],
        amount_usd: f64,
        tokens: Vec<Demand>,
        now: Timestamp,
    ) -> Result<Verdict, StoreError> {
        if charges.is_empty() && tokens.is_empty() {
            return Ok(Verdict::Reserved);
        }
        let mut keys = Vec::with_capacity(charges.len());
        for charge in charges {
            let prefix = prefix(charge);
            let current = {
                let state = self.lock();
                state
                    .current
                    .get(&prefix)
                    .and_then(|k| state.budgets.get(k).map(|b| (k.clone(), *b)))
                    .filter(|(_, b)| now < b.period_end)
            };
            let key = match current {
                Some((key, budget)) if now - budget.seeded_at < self.refresh => key,
                _ => {
                    let (start, end) = read_window(&self.store, self.timeout, charge, now).await?;
                    let key = format!("{prefix}{start}");
                    // What is settled from here on may be missing from the spend read next.
                    let settled = self.lock().budgets.get(&key).map_or(0.0, |b| b.settled);
                    let spent = read_spent(&self.store, self.timeout, charge, now).await?;
                    let mut state = self.lock();
                    state.current.insert(prefix, key.clone());
                    let budget = state.budgets.entry(key.clone()).or_insert(Budget {
                        committed: 0.0,
                        reserved: 0.0,
                        settled: 0.0,
                        period_end: end,
                        seeded_at: now,
                    });
                    budget.committed = spent + (budget.settled - settled).max(0.0);
                    budget.seeded_at = now;
                    key
                }
            };
            keys.push(key);
        }

        let mut state = self.lock();
        self.expire(&mut state, now);
        for (charge, key) in charges.iter().zip(&keys) {
            let budget = state.budgets[key];
            let used = budget.committed + budget.reserved;
            if used >= charge.limit_usd || used + amount_usd > charge.limit_usd {
                return Ok(Verdict::Refused {
                    charge: charge.clone(),
                    used_usd: used,
                    period_end: budget.period_end,
                });
            }
        }
        if let Some(previous) = state.take(request_id) {
            release(&mut state, &previous);
        }
        for key in &keys {
            if let Some(b) = state.budgets.get_mut(key) {
                b.reserved += amount_usd;
            }
        }
        let expires_at = now.saturating_add(self.reservation_timeout);
        state.expiries.insert((expires_at, request_id.to_owned()));
        state.reservations.insert(
            request_id.to_owned(),
            Reservation {
                budgets: keys.into_iter().map(|k| (k, amount_usd)).collect(),
                tokens,
                expires_at,
            },
        );
        Ok(Verdict::Reserved)
    }

    /// Replaces a request's reservation by its real cost, and answers the token demands it
    /// was admitted with (for the buckets' correction). A request this process did not
    /// reserve (another replica's, or expired) changes nothing here: its cost reaches this
    /// ledger through the store at the next refresh.
    pub fn settle(&self, request_id: &str, cost_usd: f64) -> Vec<Demand> {
        let mut state = self.lock();
        let Some(reservation) = state.take(request_id) else {
            return Vec::new();
        };
        release(&mut state, &reservation);
        for (key, _) in &reservation.budgets {
            if let Some(b) = state.budgets.get_mut(key) {
                b.committed += cost_usd;
                b.settled += cost_usd;
            }
        }
        reservation.tokens
    }

    /// Gives a reservation back without a cost (a later step refused the request).
    pub fn release(&self, request_id: &str) {
        let mut state = self.lock();
        if let Some(reservation) = state.take(request_id) {
            release(&mut state, &reservation);
        }
    }

    /// Committed and reserved spend of a budget in the period containing `now`, as this
    /// ledger sees it (for tests and the API).
    pub fn view(&self, kind: SpendKind, id: &str, now: Timestamp) -> Option<(f64, f64)> {
        let state = self.lock();
        let key = state.current.get(&format!("{}:{id}:", kind.as_str()))?;
        state
            .budgets
            .get(key)
            .filter(|b| now < b.period_end)
            .map(|b| (b.committed, b.reserved))
    }

    /// Reservations held and not due by `now` (an expired one is given back by the next
    /// reservation; it no longer counts here).
    pub fn open(&self, now: Timestamp) -> u64 {
        let state = self.lock();
        let due = state
            .expiries
            .range(..(now.saturating_add(1), String::new()))
            .count();
        state.reservations.len().saturating_sub(due) as u64
    }

    /// Gives back the reservations due by `now` (only those: the expiry index is ordered),
    /// and at most once per `refresh` forgets budgets of ended periods with nothing
    /// reserved (a forgotten one is never consulted again: lookups skip ended periods).
    fn expire(&self, state: &mut State, now: Timestamp) {
        while let Some((at, id)) = state.expiries.first().cloned() {
            if at > now {
                break;
            }
            if let Some(r) = state.take(&id) {
                release(state, &r);
            }
        }
        if now - state.swept_at < self.refresh {
            return;
        }
        state.swept_at = now;
        state
            .budgets
            .retain(|_, b| now < b.period_end || b.reserved > 0.0);
        let State {
            budgets, current, ..
        } = state;
        current.retain(|_, key| budgets.contains_key(key));
    }
}

fn prefix(charge: &Charge) -> String {
    format!("{}:{}:", charge.kind.as_str(), charge.id)
}

fn release(state: &mut State, reservation: &Reservation) {
    for (key, amount) in &reservation.budgets {
        if let Some(b) = state.budgets.get_mut(key) {
            b.reserved = (b.reserved - amount).max(0.0);
        }
    }
}
