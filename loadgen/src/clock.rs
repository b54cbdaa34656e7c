//! The tool's clock: microseconds since one [`Instant`] taken when a run
//! starts. Senders write the intended send time in this unit into each
//! message's text, and receivers (in the same process) subtract it from
//! their own reading, so no wall clock and no clock sync is involved.

use std::time::{Duration, Instant};

/// Microseconds since a base instant.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    /// A clock whose zero is now.
    pub fn new() -> Self {
        Clock {
            base: Instant::now(),
        }
    }

    /// Microseconds since the base.
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// The instant `us` microseconds after the base.
    pub fn instant(&self, us: u64) -> Instant {
        self.base + Duration::from_micros(us)
    }
}
