//! Exponential backoff between attempts of one call.

use std::time::Duration;

use rand::Rng;

/// Doubles from `min` to `max`; each delay is drawn from the upper half of
/// the current step, so clients that failed together do not retry together.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    step: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        assert!(!min.is_zero(), "a zero backoff would spin");
        assert!(min <= max, "backoff min {min:?} above max {max:?}");
        Self { step: min, max }
    }

    /// The next pause, within `[min / 2, max]`.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = step.saturating_mul(2).min(self.max);
        let half = step / 2;
        let jitter = rand::rng().random_range(Duration::ZERO..=step - half);
        half + jitter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_never_leave_the_bounds() {
        let (min, max) = (Duration::from_millis(10), Duration::from_millis(500));
        let mut b = Backoff::new(min, max);
        // Phase: every delay stays within [min/2, max] over many draws.
        let delays: Vec<Duration> = (0..200).map(|_| b.next_delay()).collect();
        for d in &delays {
            assert!(*d >= min / 2, "{d:?} below {:?}", min / 2);
            assert!(*d <= max, "{d:?} above {max:?}");
        }
        // Phase: the first is at most min; after seven doublings (10 ms → 640 ms,
        // capped) every delay is at least max / 2.
        assert!(delays[0] <= min);
        assert!(delays[7..].iter().all(|d| *d >= max / 2));
    }

    #[test]
    fn the_sum_of_delays_to_reach_the_cap_is_bounded() {
        // Why it matters: a call with a 30 s deadline makes dozens of
        // attempts, not thousands, once nodes stay down.
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(500));
        let total: Duration = (0..60).map(|_| b.next_delay()).sum();
        assert!(total >= Duration::from_secs(12), "{total:?}");
        assert!(total <= Duration::from_secs(31), "{total:?}");
    }
}
