//! Warnings that a failing dependency raises once per message or per
//! session, logged at most once per [`INTERVAL`] at each place.
//!
//! With Redis down or full every `SEND`, login and catch-up fails, and a
//! warning per failure would write thousands of identical lines a second,
//! exactly when an operator needs to read the log (and it can fill the
//! disk). [`warn_limited!`](crate::warn_limited) logs the first failure at
//! once, counts the ones after it, and logs the next one after the
//! interval with `suppressed`: how many like it were not logged in between.
//! The metrics still count every failure: `server_messages_not_stored_total`
//! each refused message, `server_redis_errors_total` each failed call.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Least time between two logged warnings from one place.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// The state of one place that warns.
#[derive(Debug, Default)]
pub struct Limit {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<Instant>,
    suppressed: u64,
}

impl Limit {
    /// A place that has not warned yet.
    pub const fn new() -> Limit {
        Limit {
            state: Mutex::new(State {
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// Whether to log a warning at `now`: `Some(n)` with the number of
    /// warnings not logged since the last one, `None` to count this one and
    /// stay quiet.
    pub fn check(&self, now: Instant) -> Option<u64> {
        // A panic elsewhere while the lock was held leaves plain counters;
        // they are still good.
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match s.last {
            Some(last) if now.saturating_duration_since(last) < INTERVAL => {
                s.suppressed += 1;
                None
            }
            _ => {
                s.last = Some(now);
                Some(std::mem::take(&mut s.suppressed))
            }
        }
    }
}

/// `tracing::warn!` at most once per [`INTERVAL`] from this place, with a
/// `suppressed` field: the warnings from here not logged since the last.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::quiet::Limit = $crate::quiet::Limit::new();
        if let Some(suppressed) = LIMIT.check(::std::time::Instant::now()) {
            ::tracing::warn!(suppressed, $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_warning_is_logged_and_the_next_ones_are_counted_until_the_interval() {
        let limit = Limit::new();
        let t0 = Instant::now();
        assert_eq!(limit.check(t0), Some(0));
        for k in 1..=5 {
            assert_eq!(limit.check(t0 + Duration::from_millis(k)), None);
        }
        assert_eq!(limit.check(t0 + INTERVAL - Duration::from_millis(1)), None);
        // After the interval: logged, with the six that were not.
        assert_eq!(limit.check(t0 + INTERVAL), Some(6));
        assert_eq!(limit.check(t0 + INTERVAL + Duration::from_millis(1)), None);
        assert_eq!(limit.check(t0 + INTERVAL * 3), Some(1));
    }

    #[test]
    fn places_are_limited_apart() {
        let (a, b) = (Limit::new(), Limit::new());
        let t0 = Instant::now();
        assert_eq!(a.check(t0), Some(0));
        assert_eq!(b.check(t0), Some(0));
        assert_eq!(a.check(t0), None);
        assert_eq!(b.check(t0), None);
    }
}
