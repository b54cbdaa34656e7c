//! Abuse limits that are not a plain size: a per-session command rate
//! (token bucket) and a per-address connection count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

/// What the rate limiter says about one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Allow,
    /// Refuse this command with `ERR rate`; the session lives on.
    Refuse,
    /// The client keeps flooding: close it (1008).
    Close,
}

/// A token bucket: `rate` commands per second on average, `burst` at once.
/// A client refused more than `burst` times without a command getting
/// through in between is flooding and gets closed.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    refused_in_a_row: u32,
}

impl RateLimiter {
    /// `rate` per second (0 disables the limit), `burst` at once.
    pub fn new(rate: u32, burst: u32) -> RateLimiter {
        let burst = f64::from(burst.max(1));
        RateLimiter {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: Instant::now(),
            refused_in_a_row: 0,
        }
    }

    /// Takes one token for a command arriving now.
    pub fn check(&mut self) -> Verdict {
        self.check_at(Instant::now())
    }

    fn check_at(&mut self, now: Instant) -> Verdict {
        if self.rate <= 0.0 {
            return Verdict::Allow;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            Verdict::Allow
        } else {
            self.refused_in_a_row += 1;
            if f64::from(self.refused_in_a_row) > self.burst {
                Verdict::Close
            } else {
                Verdict::Refuse
            }
        }
    }
}

/// Connections per client address on this server.
#[derive(Debug, Default)]
pub struct PerAddress {
    counts: Mutex<HashMap<IpAddr, u32>>,
}

/// Holds one connection's place in its address's count; dropping it frees it.
#[derive(Debug)]
pub struct AddressSlot {
    owner: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    /// Takes a place for `ip` unless it already holds `max` (0: no limit).
    pub fn take(self: &Arc<Self>, ip: IpAddr, max: u32) -> Option<AddressSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            owner: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_bucket_allows_a_burst_then_refuses_then_closes() {
        let mut r = RateLimiter::new(10, 3);
        let t = Instant::now();
        assert_eq!(
            [r.check_at(t), r.check_at(t), r.check_at(t)],
            [Verdict::Allow; 3]
        );
        assert_eq!(r.check_at(t), Verdict::Refuse);
        assert_eq!(r.check_at(t), Verdict::Refuse);
        assert_eq!(r.check_at(t), Verdict::Refuse);
        assert_eq!(r.check_at(t), Verdict::Close);
        // After a pause, tokens are back.
        let mut r = RateLimiter::new(10, 3);
        for _ in 0..3 {
            r.check_at(t);
        }
        assert_eq!(r.check_at(t + Duration::from_millis(150)), Verdict::Allow);
    }

    #[test]
    fn a_zero_rate_means_no_limit() {
        let mut r = RateLimiter::new(0, 1);
        let t = Instant::now();
        assert!((0..1000).all(|_| r.check_at(t) == Verdict::Allow));
    }

    #[test]
    fn address_slots_are_counted_and_freed() {
        let p = Arc::new(PerAddress::default());
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let a = p.take(ip, 2).expect("first");
        let _b = p.take(ip, 2).expect("second");
        assert!(p.take(ip, 2).is_none());
        drop(a);
        assert!(p.take(ip, 2).is_some());
        assert!(p.take("10.0.0.2".parse().expect("ip"), 2).is_some());
    }
}
