//! Exponential backoff with jitter: the one retry schedule every reconnect
//! and retry loop uses (relay link, Redis, accept loops, purge, clients).
//!
//! Pure arithmetic: the caller passes the randomness in (a number in
//! `[0, 1]`), so this crate stays free of I/O and randomness and the
//! schedule is testable. Each step waits a delay drawn from
//! `[step / 2, step]` ("equal jitter": never zero, so a storm of clients
//! spreads out but none spins), then the step doubles up to `max`.

use std::time::Duration;

/// An exponential backoff schedule between `first` and `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// A schedule starting at `first` and doubling up to `max`
    /// (`max` below `first` is taken as `first`).
    pub fn new(first: Duration, max: Duration) -> Backoff {
        let max = max.max(first);
        Backoff {
            first,
            max,
            step: first,
        }
    }

    /// The next delay, with `jitter` in `[0, 1]` choosing where in
    /// `[step / 2, step]` it falls (values outside are clamped; NaN is 1).
    /// Then the step doubles, capped at `max`.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let jitter = if jitter.is_nan() {
            1.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        let half = self.step / 2;
        let delay = half + (self.step - half).mul_f64(jitter);
        self.step = self.step.saturating_mul(2).min(self.max);
        delay
    }

    /// The next delay without jitter (the full step); for loops where only
    /// one process retries, such as an accept loop.
    pub fn next_plain(&mut self) -> Duration {
        self.next_delay(1.0)
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.step = self.first;
    }

    /// The step the next delay is drawn from.
    pub fn step(&self) -> Duration {
        self.step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_max_and_resets() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        let steps: Vec<_> = (0..6).map(|_| b.next_plain()).collect();
        assert_eq!(
            steps,
            [100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]
        );
        b.reset();
        assert_eq!(b.next_plain(), 100 * MS);
    }

    #[test]
    fn jitter_stays_within_half_and_full_step() {
        let mut b = Backoff::new(100 * MS, 100 * MS);
        assert_eq!(b.next_delay(0.0), 50 * MS);
        assert_eq!(b.next_delay(1.0), 100 * MS);
        assert_eq!(b.next_delay(0.5), 75 * MS);
        assert_eq!(b.next_delay(-3.0), 50 * MS);
        assert_eq!(b.next_delay(7.0), 100 * MS);
        assert_eq!(b.next_delay(f64::NAN), 100 * MS);
    }

    #[test]
    fn max_below_first_is_first() {
        let mut b = Backoff::new(100 * MS, 10 * MS);
        assert_eq!(b.next_plain(), 100 * MS);
        assert_eq!(b.next_plain(), 100 * MS);
    }

    #[test]
    fn never_overflows() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::MAX);
        for _ in 0..200 {
            b.next_delay(0.3);
        }
        assert_eq!(b.step(), Duration::MAX);
    }
}
