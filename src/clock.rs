//! The time rate limits are counted in: the system clock, or a clock a test moves by hand
//! (so bucket arithmetic through a whole tollgate is exact and needs no sleeping).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    System,
    /// Unix milliseconds, shared by every clone.
    Manual(Arc<AtomicI64>),
}

impl Clock {
    pub fn manual(start_ms: i64) -> Clock {
        Clock::Manual(Arc::new(AtomicI64::new(start_ms)))
    }

    /// Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => chrono::Utc::now().timestamp_millis(),
            Clock::Manual(ms) => ms.load(Ordering::Acquire),
        }
    }

    /// Moves a manual clock forward (the system clock ignores it).
    pub fn advance(&self, ms: i64) {
        if let Clock::Manual(now) = self {
            now.fetch_add(ms, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Clock;

    #[test]
    fn manual_clocks_move_only_when_told_and_are_shared() {
        let c = Clock::manual(1_000);
        let shared = c.clone();
        assert_eq!(c.now_ms(), 1_000);
        shared.advance(250);
        assert_eq!(c.now_ms(), 1_250);
        assert!(Clock::System.now_ms() > 1_700_000_000_000);
    }
}
