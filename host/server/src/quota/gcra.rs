//! GCRA, the generic cell rate algorithm: one number per limit (the theoretical arrival time,
//! "TAT") gives an exact rate with a burst. A limit of `amount` per `period` lets `amount` units
//! through at once and then one every `period / amount`; it is a token bucket of size `amount`
//! refilled continuously, stored as a single timestamp.
//!
//! This is the reference implementation; the Redis script in [`super::redis`] mirrors it line
//! for line, and the tests run the same scenarios against both stores.

/// Tolerance for float rounding, in seconds (and in units for `remaining`).
pub const EPSILON: f64 = 1e-6;

/// The answer for one limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// Units still available after this decision (whole units, rounded down).
    pub remaining: f64,
    /// Seconds until the limit is wholly available again.
    pub reset: f64,
    /// Seconds until the refused cost would be allowed (0 when allowed).
    pub retry_after: f64,
}

/// Decides whether `cost` units may pass at `now`, given the stored `tat` (0 when unseen).
/// Returns the decision and the TAT to store if the cost is charged.
pub fn decide(tat: f64, now: f64, cost: f64, amount: f64, period: f64) -> (Decision, f64) {
    let interval = period / amount;
    let base = tat.max(now);
    let new_tat = base + cost * interval;
    if new_tat - now <= period + EPSILON {
        let decision = Decision {
            allowed: true,
            remaining: ((period - (new_tat - now)) / interval + EPSILON)
                .floor()
                .max(0.0),
            reset: new_tat - now,
            retry_after: 0.0,
        };
        (decision, new_tat)
    } else {
        let decision = Decision {
            allowed: false,
            remaining: ((period - (base - now)) / interval + EPSILON)
                .floor()
                .max(0.0),
            reset: base - now,
            retry_after: (new_tat - period - now).max(0.0),
        };
        (decision, base)
    }
}

/// The TAT after charging `cost` unconditionally (for costs known only afterwards: tokens,
/// compute time). It may run past `now + period`: the debt then blocks until it is paid.
pub fn debit(tat: f64, now: f64, cost: f64, amount: f64, period: f64) -> f64 {
    tat.max(now) + cost * (period / amount)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_exactly_amount_through_then_one_per_interval() {
        // 5 per 2 s: a burst of 5, then one every 0.4 s.
        let (mut tat, now) = (0.0, 1000.0);
        for left in (0..5).rev() {
            let (d, t) = decide(tat, now, 1.0, 5.0, 2.0);
            assert!(d.allowed);
            assert_eq!(d.remaining, left as f64);
            tat = t;
        }
        let (d, t) = decide(tat, now, 1.0, 5.0, 2.0);
        assert!(!d.allowed);
        assert_eq!(t, tat, "a refusal charges nothing");
        assert!((d.retry_after - 0.4).abs() < 1e-9);
        assert!((d.reset - 2.0).abs() < 1e-9);
        // Just before the retry time: still refused; at it: allowed, with nothing left.
        assert!(!decide(tat, now + 0.399, 1.0, 5.0, 2.0).0.allowed);
        let (d, _) = decide(tat, now + 0.4, 1.0, 5.0, 2.0);
        assert!(d.allowed && d.remaining == 0.0);
        // After the reset the whole burst is back.
        let (d, _) = decide(tat, now + 2.0, 1.0, 5.0, 2.0);
        assert!(d.allowed && d.remaining == 4.0);
    }

    #[test]
    fn stays_exact_over_many_windows_with_awkward_rates() {
        // 7 per minute, one attempt per second for 10 minutes: the n-th pass needs
        // n * 60/7 <= t + 60, so by t = 599 exactly floor(659 * 7 / 60) = 76 have passed.
        let mut tat = 0.0;
        let mut passed = 0;
        for second in 0..600 {
            let (d, t) = decide(tat, 5000.0 + second as f64, 1.0, 7.0, 60.0);
            if d.allowed {
                passed += 1;
                tat = t;
            }
        }
        assert_eq!(passed, 76);
    }

    #[test]
    fn a_debt_blocks_until_paid() {
        // 100 tokens per 10 s; a request reports 250 tokens.
        let tat = debit(0.0, 0.0, 250.0, 100.0, 10.0);
        assert_eq!(tat, 25.0);
        // Peeking one token: refused until 15 s (when 10 s of room is back).
        assert!(!decide(tat, 14.9, 1.0, 100.0, 10.0).0.allowed);
        assert!(decide(tat, 15.1, 1.0, 100.0, 10.0).0.allowed);
        let (d, _) = decide(tat, 0.0, 1.0, 100.0, 10.0);
        assert!((d.retry_after - 15.1).abs() < 1e-9);
    }
}
