//! Budgets at Check: reserve, then settle.
//!
//! A request's estimated cost is reserved against every budget that applies to it (its
//! key's, its user's, its team's `max_budget`) in one step under one lock: admitted only if
//! each budget's committed spend plus what is reserved plus this request fits. When the
//! request's usage is written, its reservation is replaced by the real cost
//! ([`Ledger::settle`]). Reservations of requests that never report expire after
//! `budgets.reservation_timeout`. So concurrent requests cannot push spend past a budget by
//! more than the error of their estimates, unlike check-then-charge.
//!
//! Committed spend comes from the store (the `spend` table): it is read the first time a
//! budget is seen in a period and again every `refresh` (`cache.key_ttl`), which is how
//! spend written by other replicas is learnt. Between reads this process adds what it
//! settles itself. A budget is keyed by its period's start, so a new period starts empty and
//! old reservations settle against the period they were made in.
//!
//! This ledger lives in one process: replicas share committed spend through the store (up
//! to `refresh` late) but not each other's reservations.

use crate::domain::{BudgetDuration, Limits, Timestamp};
use crate::store::{SharedStore, SpendKind, StoreError};
use crate::usage::period;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// One budget a request is charged against.
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    pub kind: SpendKind,
    pub id: String,
    pub limit_usd: f64,
    pub duration: Option<BudgetDuration>,
}

impl Charge {
    /// The charge for an entity's limits, when it has a `max_budget`.
    pub fn of(kind: SpendKind, id: &str, limits: &Limits) -> Option<Charge> {
        limits.max_budget.map(|limit_usd| Charge {
            kind,
            id: id.to_owned(),
            limit_usd,
            duration: limits.budget_duration,
        })
    }
}

/// What a reservation found.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Reserved,
    /// This budget has no room: `used_usd` is committed plus reserved.
    Refused {
        charge: Charge,
        used_usd: f64,
        /// When its period ends (Unix seconds).
        period_end: Timestamp,
    },
}

#[derive(Debug, Clone, Copy)]
struct Budget {
    committed: f64,
    reserved: f64,
    period_end: Timestamp,
    seeded_at: Timestamp,
}

struct Reservation {
    budgets: Vec<(String, f64)>,
    expires_at: Timestamp,
}

#[derive(Default)]
struct State {
    /// By `kind:id:period_start`.
    budgets: HashMap<String, Budget>,
    /// `kind:id:` → the key of its latest period in `budgets`.
    current: HashMap<String, String>,
    reservations: HashMap<String, Reservation>,
}

pub struct Ledger {
    store: SharedStore,
    state: Mutex<State>,
    /// Committed spend is read again from the store after this long.
    refresh: i64,
    reservation_timeout: i64,
    timeout: Duration,
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX).max(1)
}

impl Ledger {
    pub fn new(
        store: SharedStore,
        refresh: Duration,
        reservation_timeout: Duration,
        timeout: Duration,
    ) -> Ledger {
        Ledger {
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

    /// The budget's period containing `now` and its committed spend, from the store.
    async fn seed(&self, charge: &Charge, now: Timestamp) -> Result<(i64, i64, f64), StoreError> {
        let read = async {
            let anchor = match charge.duration {
                Some(BudgetDuration::ThirtyDays) => self.created_at(charge).await?,
                _ => 0,
            };
            let (start, end) = period::window(period::effective(charge.duration), now, anchor);
            let spent = self
                .store
                .current_spend(charge.kind, &charge.id, now)
                .await?;
            Ok::<_, StoreError>((start, end, spent))
        };
        match tokio::time::timeout(self.timeout, read).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "reading spend took longer than {:?}",
                self.timeout
            ))),
        }
    }

    async fn created_at(&self, charge: &Charge) -> Result<Timestamp, StoreError> {
        Ok(match charge.kind {
            SpendKind::Key => self.store.get_key(&charge.id).await?.map(|k| k.created_at),
            SpendKind::User => self.store.get_user(&charge.id).await?.map(|u| u.created_at),
            SpendKind::Team => self.store.get_team(&charge.id).await?.map(|t| t.created_at),
        }
        .unwrap_or(0))
    }

    /// Reserves `amount_usd` for request `request_id` against every charge, all or nothing.
    /// Reads the store only for budgets not seen in this period or not read for `refresh`.
    pub async fn reserve(
        &self,
        request_id: &str,
        charges: &[Charge],
        amount_usd: f64,
        now: Timestamp,
    ) -> Result<Verdict, StoreError> {
        if charges.is_empty() {
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
                    let (start, end, spent) = self.seed(charge, now).await?;
                    let key = format!("{prefix}{start}");
                    let mut state = self.lock();
                    state.current.insert(prefix, key.clone());
                    let budget = state.budgets.entry(key.clone()).or_insert(Budget {
                        committed: 0.0,
                        reserved: 0.0,
                        period_end: end,
                        seeded_at: now,
                    });
                    budget.committed = spent;
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
        if let Some(previous) = state.reservations.remove(request_id) {
            release(&mut state, &previous);
        }
        for key in &keys {
            if let Some(b) = state.budgets.get_mut(key) {
                b.reserved += amount_usd;
            }
        }
        state.reservations.insert(
            request_id.to_owned(),
            Reservation {
                budgets: keys.into_iter().map(|k| (k, amount_usd)).collect(),
                expires_at: now.saturating_add(self.reservation_timeout),
            },
        );
        Ok(Verdict::Reserved)
    }

    /// Replaces a request's reservation by its real cost. A request this process did not
    /// reserve (another replica's, or expired) changes nothing here: its cost reaches this
    /// ledger through the store at the next refresh.
    pub fn settle(&self, request_id: &str, cost_usd: f64) {
        let mut state = self.lock();
        if let Some(reservation) = state.reservations.remove(request_id) {
            release(&mut state, &reservation);
            for (key, _) in &reservation.budgets {
                if let Some(b) = state.budgets.get_mut(key) {
                    b.committed += cost_usd;
                }
            }
        }
    }

    /// Gives a reservation back without a cost (a later step refused the request).
    pub fn release(&self, request_id: &str) {
        let mut state = self.lock();
        if let Some(reservation) = state.reservations.remove(request_id) {
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

    fn expire(&self, state: &mut State, now: Timestamp) {
        let expired: Vec<String> = state
            .reservations
            .iter()
            .filter(|(_, r)| r.expires_at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(r) = state.reservations.remove(&id) {
                release(state, &r);
            }
        }
        // Budgets of ended periods with nothing reserved are forgotten.
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
