//! Login attempt limits: per account and per client address, in fixed one-minute windows,
//! in this process's memory.
//!
//! Memory is bounded: when a table grows past [`MAX_ENTRIES`], entries of past windows are
//! dropped, and if that is not enough the table starts over (an attacker spraying addresses
//! can reset the counts, but cannot grow the process). Other replicas keep their own counts;
//! the lockout, which is in the store, is what holds across replicas.

use crate::domain::Timestamp;
use std::collections::HashMap;
use std::sync::Mutex;

/// Most keys one table keeps.
pub const MAX_ENTRIES: usize = 100_000;
const WINDOW_SECS: i64 = 60;

/// Per-minute attempt counters.
#[derive(Debug)]
pub struct LoginGuard {
    per_account: u32,
    per_address: u32,
    accounts: Mutex<Windows>,
    addresses: Mutex<Windows>,
}

#[derive(Debug, Default)]
struct Windows(HashMap<String, (i64, u32)>);

impl Windows {
    /// Counts one attempt for `key`; `Err(seconds until the window ends)` when the limit
    /// was already reached in this window.
    fn hit(&mut self, key: &str, limit: u32, now: Timestamp) -> Result<(), u64> {
        let window = now.div_euclid(WINDOW_SECS);
        if self.0.len() >= MAX_ENTRIES && !self.0.contains_key(key) {
            self.0.retain(|_, (w, _)| *w == window);
            if self.0.len() >= MAX_ENTRIES {
                self.0.clear();
            }
        }
        let entry = self.0.entry(key.to_owned()).or_insert((window, 0));
        if entry.0 != window {
            *entry = (window, 0);
        }
        if entry.1 >= limit {
            let retry = WINDOW_SECS - now.rem_euclid(WINDOW_SECS);
            return Err(retry.max(1) as u64);
        }
        entry.1 += 1;
        Ok(())
    }
}

impl LoginGuard {
    /// Limits of 0 turn the corresponding check off.
    pub fn new(per_account_per_minute: u32, per_address_per_minute: u32) -> LoginGuard {
        LoginGuard {
            per_account: per_account_per_minute,
            per_address: per_address_per_minute,
            accounts: Mutex::new(Windows::default()),
            addresses: Mutex::new(Windows::default()),
        }
    }

    /// Counts an attempt from `address`; `Err(retry_after_seconds)` when over the limit.
    pub fn address(&self, address: &str, now: Timestamp) -> Result<(), u64> {
        if self.per_address == 0 {
            return Ok(());
        }
        lock(&self.addresses).hit(address, self.per_address, now)
    }

    /// Counts an attempt on `account` (a user id, or the name tried when no user has it).
    pub fn account(&self, account: &str, now: Timestamp) -> Result<(), u64> {
        if self.per_account == 0 {
            return Ok(());
        }
        lock(&self.accounts).hit(account, self.per_account, now)
    }
}

fn lock(m: &Mutex<Windows>) -> std::sync::MutexGuard<'_, Windows> {
    // A panic while holding the lock leaves plain counters behind; they are still usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_window() {
        let guard = LoginGuard::new(2, 3);
        assert!(guard.account("u", 120).is_ok());
        assert!(guard.account("u", 121).is_ok());
        assert_eq!(guard.account("u", 130), Err(50));
        assert!(guard.account("v", 130).is_ok());
        // The next minute starts afresh.
        assert!(guard.account("u", 180).is_ok());
        for _ in 0..3 {
            assert!(guard.address("10.0.0.1", 200).is_ok());
        }
        assert!(guard.address("10.0.0.1", 200).is_err());
        assert!(LoginGuard::new(0, 0).address("x", 0).is_ok());
    }

    #[test]
    fn memory_is_bounded() {
        let guard = LoginGuard::new(5, 5);
        for i in 0..(MAX_ENTRIES + 10) {
            guard.address(&format!("10.{i}"), 60).unwrap();
        }
        assert!(lock(&guard.addresses).0.len() <= MAX_ENTRIES);
    }
}
