//! Liveness of one link, for both ends: when the peer was last heard from,
//! whether what we write to it is being taken, the heartbeat counter, and
//! the verdict.
//!
//! Both sides ping every heartbeat, and any frame counts as a sign of life,
//! so a busy link needs no extra traffic. A link is dead when nothing was
//! received for `dead_after`, or when frames have waited in the socket for
//! `dead_after` without it taking a byte (a server that stopped reading).
//! A link task (the relay's per-link task, the server's relay link) asks
//! [`Liveness::deadline`] when to look again and [`Liveness::verdict`] what
//! it sees then. No clock here: every instant is passed in, of any type
//! that behaves like one ([`std::time::Instant`], `tokio::time::Instant`).

use std::ops::Add;
use std::time::Duration;

use super::Frame;

/// Why a link was declared dead by its health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Death {
    /// Nothing received for `dead_after`.
    Silent,
    /// Nothing we wrote was taken for `dead_after`.
    Stalled,
}

/// The health state of one link; `I` is the instant type of the caller's clock.
#[derive(Debug)]
pub struct Liveness<I> {
    dead_after: Duration,
    last_heard: I,
    /// Since when written frames have waited without progress; `None` when
    /// everything is flushed.
    stuck_since: Option<I>,
    pings: u64,
}

impl<I: Copy + Ord + Add<Duration, Output = I>> Liveness<I> {
    /// A link that was just heard from (its `Hello`).
    pub fn new(dead_after: Duration, now: I) -> Liveness<I> {
        Liveness {
            dead_after,
            last_heard: now,
            stuck_since: None,
            pings: 0,
        }
    }

    /// A frame arrived.
    pub fn heard(&mut self, now: I) {
        self.last_heard = now;
    }

    /// When the last frame arrived.
    pub fn last_heard(&self) -> I {
        self.last_heard
    }

    /// Data is waiting to be written (the clock starts if it was not running).
    pub fn writing(&mut self, now: I) {
        self.stuck_since.get_or_insert(now);
    }

    /// The socket took data: the clock stops (and starts again with the
    /// next write).
    pub fn flushed(&mut self) {
        self.stuck_since = None;
    }

    /// The next heartbeat frame.
    pub fn next_ping(&mut self) -> Frame {
        self.pings = self.pings.wrapping_add(1);
        Frame::Ping(self.pings)
    }

    /// The earliest instant the link could be dead.
    pub fn deadline(&self) -> I {
        let heard = self.last_heard + self.dead_after;
        match self.stuck_since {
            Some(since) => heard.min(since + self.dead_after),
            None => heard,
        }
    }

    /// Whether the link is dead at `now`.
    pub fn verdict(&self, now: I) -> Option<Death> {
        if now >= self.last_heard + self.dead_after {
            return Some(Death::Silent);
        }
        match self.stuck_since {
            Some(since) if now >= since + self.dead_after => Some(Death::Stalled),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    const DEAD: Duration = Duration::from_secs(3);

    #[test]
    fn silence_kills_and_any_frame_revives() {
        let t0 = Instant::now();
        let mut l = Liveness::new(DEAD, t0);
        assert_eq!(l.deadline(), t0 + DEAD);
        assert_eq!(l.verdict(t0 + Duration::from_secs(2)), None);
        l.heard(t0 + Duration::from_secs(2));
        assert_eq!(l.verdict(t0 + Duration::from_secs(4)), None);
        assert_eq!(l.verdict(t0 + Duration::from_secs(5)), Some(Death::Silent));
    }

    #[test]
    fn a_peer_that_stops_reading_is_dead_too() {
        let t0 = Instant::now();
        let mut l = Liveness::new(DEAD, t0);
        l.writing(t0 + Duration::from_secs(1));
        // Still sending to us, but never reading.
        l.heard(t0 + Duration::from_secs(3));
        l.writing(t0 + Duration::from_secs(3));
        assert_eq!(l.deadline(), t0 + Duration::from_secs(4));
        assert_eq!(l.verdict(t0 + Duration::from_secs(4)), Some(Death::Stalled));
        l.flushed();
        assert_eq!(l.verdict(t0 + Duration::from_secs(4)), None);
        // A new write starts a new clock.
        l.heard(t0 + Duration::from_secs(5));
        l.writing(t0 + Duration::from_secs(5));
        assert_eq!(l.verdict(t0 + Duration::from_secs(6)), None);
        assert_eq!(l.verdict(t0 + Duration::from_secs(8)), Some(Death::Silent));
    }

    #[test]
    fn pings_count_up() {
        let mut l = Liveness::new(DEAD, Instant::now());
        assert_eq!(l.next_ping(), Frame::Ping(1));
        assert_eq!(l.next_ping(), Frame::Ping(2));
    }
}
