//! Parallel limits: how many of an owner's requests may be in flight at once.
//!
//! An owner with `max_parallel` (the gateway's `limits.global.max_parallel`, a team's, a
//! user's, a key's) has a set of slots. Check takes one slot of each owner a request counts
//! for, under its request id, together with its budgets and buckets (all or nothing); the
//! request's usage record gives them back, whichever replica writes it; a slot whose usage
//! never comes is given back when its lease (`limits.parallel_lease`) ends.
//!
//! - [`slots`]: which slots a request takes (pure).
//! - [`MemorySlots`]: slots in this process. In Redis they are a sorted set per owner,
//!   taken in the counters' script ([`crate::admission::redis`]).

use crate::admission::payers::{self, Payers};
use crate::store::SpendKind;
use std::collections::HashMap;
use std::sync::Mutex;

use super::plan::Rates;

/// One slot a request takes: its owner (`g`, `t:<team id>`, `u:<user id>`, `k:<key id>`,
/// the names buckets use) and how many of the owner's requests may be in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub owner: String,
    pub limit: u64,
    /// The payer's kind; `None` for the gateway.
    pub kind: Option<SpendKind>,
}

/// The slots of one request: the gateway's, then each payer's with a `max_parallel`, in
/// the payers' order. Empty (and nothing to pay on the hot path) when no limit applies.
pub fn slots(rates: &Rates, payers: &Payers<'_>) -> Vec<Slot> {
    let global = rates.global_parallel().map(|limit| Slot {
        owner: "g".to_owned(),
        limit,
        kind: None,
    });
    let of_payers = payers.iter().filter_map(|p| {
        p.limits.max_parallel.map(|n| Slot {
            owner: format!("{}:{}", payers::level(p.kind), p.id),
            // The API refuses less than 1; a stored 0 or less would refuse everything.
            limit: n.max(0) as u64,
            kind: Some(p.kind),
        })
    });
    global.into_iter().chain(of_payers).collect()
}

/// A slot that was full: its index in the request's slots and how many requests held it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    pub index: usize,
    pub in_flight: u64,
}

/// Slots in this process: the embedded default and `redis.failure_mode: local`. One mutex
/// over the table; a take looks only at the slots of the request's owners (at most their
/// limit each).
#[derive(Default)]
pub struct MemorySlots {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    /// Owner → request id → when its slot's lease ends (Unix ms).
    owners: HashMap<String, HashMap<String, i64>>,
    /// Request id → the owners it holds a slot of.
    held: HashMap<String, Vec<String>>,
}

impl Table {
    /// The owner's requests in flight at `now_ms`, after forgetting those whose lease ended.
    fn in_flight(&mut self, owner: &str, now_ms: i64) -> Option<&HashMap<String, i64>> {
        let Table { owners, held } = self;
        let requests = owners.get_mut(owner)?;
        requests.retain(|id, until| {
            let live = *until > now_ms;
            if !live {
                forget(held, id, owner);
            }
            live
        });
        if requests.is_empty() {
            owners.remove(owner);
            return None;
        }
        owners.get(owner)
    }

    fn release(&mut self, request_id: &str) {
        for owner in self.held.remove(request_id).unwrap_or_default() {
            if let Some(requests) = self.owners.get_mut(&owner) {
                requests.remove(request_id);
                if requests.is_empty() {
                    self.owners.remove(&owner);
                }
            }
        }
    }
}

/// Drops `owner` from what `request_id` holds.
fn forget(held: &mut HashMap<String, Vec<String>>, request_id: &str, owner: &str) {
    if let Some(list) = held.get_mut(request_id) {
        list.retain(|o| o != owner);
        if list.is_empty() {
            held.remove(request_id);
        }
    }
}

impl MemorySlots {
    pub fn new() -> MemorySlots {
        MemorySlots::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one slot of every owner in `slots` for `request_id` until `until_ms`, only if
    /// each has one free at `now_ms`; else takes nothing and answers the first full one. A
    /// request taking again (a retried Check) keeps one slot per owner, with a new lease.
    pub fn take(
        &self,
        request_id: &str,
        slots: &[Slot],
        now_ms: i64,
        until_ms: i64,
    ) -> Result<(), Full> {
        let mut table = self.lock();
        for (index, slot) in slots.iter().enumerate() {
            let in_flight = table.in_flight(&slot.owner, now_ms).map_or(0, |requests| {
                requests.len() - usize::from(requests.contains_key(request_id))
            }) as u64;
            if in_flight >= slot.limit {
                return Err(Full { index, in_flight });
            }
        }
        table.release(request_id);
        for slot in slots {
            table
                .owners
                .entry(slot.owner.clone())
                .or_default()
                .insert(request_id.to_owned(), until_ms);
        }
        table.held.insert(
            request_id.to_owned(),
            slots.iter().map(|s| s.owner.clone()).collect(),
        );
        Ok(())
    }

    /// Gives back the slots `request_id` holds (its usage arrived, or a later step refused
    /// it). Unknown ids change nothing.
    pub fn release(&self, request_id: &str) {
        self.lock().release(request_id);
    }

    /// Requests holding a slot of `owner` at `now_ms`.
    pub fn in_flight(&self, owner: &str, now_ms: i64) -> u64 {
        self.lock()
            .in_flight(owner, now_ms)
            .map_or(0, |r| r.len() as u64)
    }

    /// Request ids holding a slot (for tests of forgetting).
    pub fn requests_held(&self) -> usize {
        self.lock().held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::payers::Payer;
    use crate::config::Config;
    use crate::domain::Limits;

    fn slot(owner: &str, limit: u64) -> Slot {
        let kind = match owner.split(':').next() {
            Some("o") => Some(SpendKind::Org),
            Some("t") => Some(SpendKind::Team),
            Some("u") => Some(SpendKind::User),
            Some("k") => Some(SpendKind::Key),
            _ => None,
        };
        Slot {
            owner: owner.to_owned(),
            limit,
            kind,
        }
    }

    #[test]
    fn only_owners_with_a_limit_have_slots() {
        let rates = Rates::from_config(
            &Config::parse_str("t", "limits: { global: { max_parallel: 50 } }", &|_| None)
                .unwrap()
                .config,
        );
        let capped = Limits {
            max_parallel: Some(2),
            ..Limits::default()
        };
        let free = Limits::default();
        let payers = Payers {
            org: Some(Payer {
                kind: SpendKind::Org,
                id: "o1",
                limits: &capped,
            }),
            team: Some(Payer {
                kind: SpendKind::Team,
                id: "t1",
                limits: &capped,
            }),
            user: Some(Payer {
                kind: SpendKind::User,
                id: "u1",
                limits: &free,
            }),
            key: Some(Payer {
                kind: SpendKind::Key,
                id: "k1",
                limits: &capped,
            }),
        };
        assert_eq!(
            slots(&rates, &payers),
            [
                slot("g", 50),
                slot("o:o1", 2),
                slot("t:t1", 2),
                slot("k:k1", 2)
            ]
        );
        assert!(slots(&Rates::default(), &Payers::default()).is_empty());
    }

    #[test]
    fn a_full_owner_refuses_and_nothing_is_taken() {
        let s = MemorySlots::new();
        let both = [slot("g", 3), slot("k:1", 1)];
        assert_eq!(s.take("a", &both, 0, 1_000), Ok(()));
        assert_eq!(
            s.take("b", &both, 0, 1_000),
            Err(Full {
                index: 1,
                in_flight: 1
            })
        );
        // The refused request took no slot of the gateway.
        assert_eq!(s.in_flight("g", 0), 1);
        // Another key shares only the gateway's slots.
        assert_eq!(
            s.take("c", &[slot("g", 3), slot("k:2", 1)], 0, 1_000),
            Ok(())
        );
        assert_eq!(s.in_flight("g", 0), 2);
    }

    #[test]
    fn usage_frees_a_slot_and_a_retry_keeps_one() {
        let s = MemorySlots::new();
        let one = [slot("u:1", 1)];
        assert_eq!(s.take("a", &one, 0, 1_000), Ok(()));
        // The same request checked again holds still one slot.
        assert_eq!(s.take("a", &one, 10, 1_010), Ok(()));
        assert_eq!(s.in_flight("u:1", 10), 1);
        assert!(s.take("b", &one, 10, 1_010).is_err());
        s.release("a");
        assert_eq!(s.in_flight("u:1", 10), 0);
        assert_eq!(s.take("b", &one, 10, 1_010), Ok(()));
        s.release("b");
        s.release("unknown");
        assert_eq!(s.requests_held(), 0);
    }

    #[test]
    fn a_lease_ends_by_itself() {
        let s = MemorySlots::new();
        let one = [slot("t:1", 1)];
        assert_eq!(s.take("a", &one, 0, 1_000), Ok(()));
        assert!(s.take("b", &one, 999, 1_999).is_err());
        assert_eq!(s.take("b", &one, 1_000, 2_000), Ok(()));
        // The expired request no longer counts as holding anything.
        assert_eq!(s.requests_held(), 1);
        s.release("a");
        assert_eq!(s.in_flight("t:1", 1_000), 1);
    }
}
