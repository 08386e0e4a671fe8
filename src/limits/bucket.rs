//! Token-bucket arithmetic, pure: no clock, no I/O. Both bucket stores (memory and the Redis
//! script, which mirrors these formulas in Lua) use it, and the tests drive it with explicit
//! times.
//!
//! A bucket for "N per minute" holds at most `burst` units (N unless configured) and refills
//! continuously at N / 60 000 units per millisecond. A demand of `cost` units is met when the
//! bucket holds at least `cost`. A bucket may go below zero only through [`settle`] (a
//! request used more tokens than estimated): the debt is repaid by refill before the next
//! request fits.

/// The stored state of one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct State {
    /// Units available at `at_ms` (may be negative after a settle).
    pub tokens: f64,
    /// Unix milliseconds of the last update.
    pub at_ms: i64,
}

/// The shape of one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Units per minute.
    pub per_minute: u64,
    /// Most units the bucket holds.
    pub burst: u64,
}

impl Shape {
    /// Refill per millisecond.
    pub fn rate(&self) -> f64 {
        self.per_minute as f64 / 60_000.0
    }

    /// A bucket seen for the first time starts full.
    pub fn fresh(&self, now_ms: i64) -> State {
        State {
            tokens: self.burst as f64,
            at_ms: now_ms,
        }
    }

    /// The state refilled up to `now_ms` (a clock that went backwards refills nothing).
    pub fn refilled(&self, state: State, now_ms: i64) -> State {
        let elapsed = (now_ms - state.at_ms).max(0) as f64;
        State {
            tokens: (state.tokens + elapsed * self.rate()).min(self.burst as f64),
            at_ms: now_ms.max(state.at_ms),
        }
    }

    /// Milliseconds until the bucket holds `wanted` units, from `tokens` (0 when it already
    /// does). A bucket with a zero rate never refills: `u64::MAX`.
    pub fn ms_until(&self, tokens: f64, wanted: f64) -> u64 {
        if tokens >= wanted {
            return 0;
        }
        let rate = self.rate();
        if rate <= 0.0 {
            return u64::MAX;
        }
        ((wanted - tokens) / rate).ceil() as u64
    }
}

/// What a bucket looks like after a decision, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub limit: u64,
    /// Whole units left (0 when in debt).
    pub remaining: u64,
    /// Milliseconds until the bucket is full again.
    pub reset_ms: u64,
    /// Milliseconds until this demand would fit (0 when it fits now).
    pub retry_after_ms: u64,
}

/// The view of a refilled `state` for a demand of `cost`.
pub fn view(shape: Shape, state: State, cost: u64) -> View {
    View {
        limit: shape.per_minute,
        remaining: state.tokens.max(0.0).floor() as u64,
        reset_ms: shape.ms_until(state.tokens, shape.burst as f64),
        retry_after_ms: if cost > shape.burst {
            // More than the bucket can ever hold: wait for a full bucket, which still will
            // not be enough; the caller's message says so.
            shape.ms_until(state.tokens, shape.burst as f64).max(60_000)
        } else {
            shape.ms_until(state.tokens, cost as f64)
        },
    }
}

/// One bucket of a decision: its shape, its refilled state, and what the request takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub shape: Shape,
    pub state: State,
    pub cost: u64,
}

/// The all-or-nothing decision over a request's buckets (states already refilled to now):
/// admitted only if every bucket has room, and then every bucket is debited. Answers whether
/// it was admitted, and the states to store (unchanged when refused, apart from the refill).
pub fn admit(steps: &[Step]) -> (bool, Vec<State>) {
    let fits = steps.iter().all(|s| s.state.tokens >= s.cost as f64);
    let states = steps
        .iter()
        .map(|s| State {
            tokens: if fits {
                s.state.tokens - s.cost as f64
            } else {
                s.state.tokens
            },
            at_ms: s.state.at_ms,
        })
        .collect();
    (fits, states)
}

/// A correction after the fact: `delta` more units taken (negative: given back), bounded by
/// the burst above and not below `-burst` (a single misestimate cannot lock a bucket for
/// more than a minute's refill).
pub fn settle(shape: Shape, state: State, delta: i64) -> State {
    let burst = shape.burst as f64;
    State {
        tokens: (state.tokens - delta as f64).clamp(-burst, burst),
        at_ms: state.at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RPM_60: Shape = Shape {
        per_minute: 60,
        burst: 60,
    };

    #[test]
    fn a_fresh_bucket_is_full_and_refills_steadily() {
        let s = RPM_60.fresh(1_000);
        assert_eq!(s.tokens, 60.0);
        let empty = State {
            tokens: 0.0,
            at_ms: 1_000,
        };
        // 60 per minute = one per second.
        assert_eq!(RPM_60.refilled(empty, 1_500).tokens, 0.5);
        assert_eq!(RPM_60.refilled(empty, 2_000).tokens, 1.0);
        // Never above the burst.
        assert_eq!(RPM_60.refilled(empty, 1_000_000).tokens, 60.0);
        // A clock that goes backwards refills nothing and keeps the later time.
        let back = RPM_60.refilled(empty, 500);
        assert_eq!((back.tokens, back.at_ms), (0.0, 1_000));
    }

    #[test]
    fn admission_is_all_or_nothing() {
        let full = RPM_60.fresh(0);
        let low = State {
            tokens: 0.4,
            at_ms: 0,
        };
        let (ok, states) = admit(&[
            Step {
                shape: RPM_60,
                state: full,
                cost: 1,
            },
            Step {
                shape: RPM_60,
                state: low,
                cost: 1,
            },
        ]);
        assert!(!ok);
        assert_eq!(states, vec![full, low], "a refused request takes nothing");

        let (ok, states) = admit(&[Step {
            shape: RPM_60,
            state: full,
            cost: 1,
        }]);
        assert!(ok);
        assert_eq!(states[0].tokens, 59.0);
    }

    #[test]
    fn views_tell_remaining_reset_and_retry() {
        let v = view(
            RPM_60,
            State {
                tokens: 0.25,
                at_ms: 0,
            },
            1,
        );
        assert_eq!(v.limit, 60);
        assert_eq!(v.remaining, 0);
        assert_eq!(v.retry_after_ms, 750);
        assert_eq!(v.reset_ms, 59_750);
        let v = view(RPM_60, RPM_60.fresh(0), 1);
        assert_eq!((v.remaining, v.reset_ms, v.retry_after_ms), (60, 0, 0));
        // A demand larger than the bucket can hold.
        let v = view(RPM_60, RPM_60.fresh(0), 61);
        assert!(v.retry_after_ms >= 60_000);
    }

    #[test]
    fn settling_corrects_both_ways_within_bounds() {
        let s = State {
            tokens: 10.0,
            at_ms: 0,
        };
        assert_eq!(settle(RPM_60, s, 15).tokens, -5.0);
        assert_eq!(settle(RPM_60, s, -100).tokens, 60.0);
        assert_eq!(settle(RPM_60, s, 1_000).tokens, -60.0);
        // Debt is repaid by refill before anything fits again.
        let debt = settle(RPM_60, s, 15);
        assert_eq!(RPM_60.ms_until(debt.tokens, 1.0), 6_000);
    }

    #[test]
    fn a_bucket_with_a_zero_limit_never_admits() {
        let zero = Shape {
            per_minute: 0,
            burst: 0,
        };
        let s = zero.fresh(0);
        assert!(
            !admit(&[Step {
                shape: zero,
                state: s,
                cost: 1
            }])
            .0
        );
        assert_eq!(zero.ms_until(0.0, 1.0), u64::MAX);
    }
}
