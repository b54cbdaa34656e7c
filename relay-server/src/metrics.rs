//! The relay's Prometheus metrics, in a registry of its own.
//!
//! Each relay instance owns one [`Metrics`] (no global recorder), so tests
//! can run several relays in one process and read each one's numbers. Every
//! name starts with `relay_`; `/metrics` on the admin port serves them in
//! the OpenMetrics text format.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A one-label set, `reason="..."`.
type Reason = [(&'static str, &'static str); 1];

/// Why a frame was not forwarded (`relay_frames_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// No link to the target server.
    NoRoute,
    /// The target link's queue was full (a slow server).
    QueueFull,
}

impl DropReason {
    fn label(self) -> &'static str {
        match self {
            DropReason::NoRoute => "no_route",
            DropReason::QueueFull => "queue_full",
        }
    }
}

/// Why a connection was refused (`relay_links_refused_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// Another link protocol version.
    Version,
    /// Wrong secret (the `auth` tag did not verify).
    Auth,
    /// An invalid server id.
    Name,
    /// No `Hello` in time.
    Timeout,
    /// Bytes that are not a frame, or a length over the maximum.
    Malformed,
    /// A frame other than `Hello` during the handshake.
    Protocol,
    /// The relay is at `--max-links`.
    Full,
}

impl RefuseReason {
    /// The metric label, also used in logs.
    pub fn label(self) -> &'static str {
        match self {
            RefuseReason::Version => "version",
            RefuseReason::Auth => "auth",
            RefuseReason::Name => "name",
            RefuseReason::Timeout => "timeout",
            RefuseReason::Malformed => "malformed",
            RefuseReason::Protocol => "protocol",
            RefuseReason::Full => "full",
        }
    }

    const ALL: [RefuseReason; 7] = [
        RefuseReason::Version,
        RefuseReason::Auth,
        RefuseReason::Name,
        RefuseReason::Timeout,
        RefuseReason::Malformed,
        RefuseReason::Protocol,
        RefuseReason::Full,
    ];
}

/// Handles to every metric of one relay. Cheap to clone (all shared).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    links: Gauge,
    frames_forwarded: Counter,
    frames_dropped: Family<Reason, Counter>,
    catch_ups_sent: Counter,
    links_refused: Family<Reason, Counter>,
    purges: Counter,
    sessions_purged: Counter,
    purge_seconds: Histogram,
    redis_errors: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("relay");
        let links = Gauge::default();
        let frames_forwarded = Counter::default();
        let frames_dropped = Family::<Reason, Counter>::default();
        let catch_ups_sent = Counter::default();
        let links_refused = Family::<Reason, Counter>::default();
        let purges = Counter::default();
        let sessions_purged = Counter::default();
        // Purges land near purge-grace after an EOF, near dead-after +
        // purge-grace after a silent death.
        let purge_seconds = Histogram::new([
            0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 20.0, 60.0,
        ]);
        let redis_errors = Counter::default();

        // Known label values exist from the start, so dashboards see zeros.
        for reason in [DropReason::NoRoute, DropReason::QueueFull] {
            drop(frames_dropped.get_or_create(&[("reason", reason.label())]));
        }
        for reason in RefuseReason::ALL {
            drop(links_refused.get_or_create(&[("reason", reason.label())]));
        }

        registry.register("links", "Servers linked to this relay now", links.clone());
        registry.register(
            "frames_forwarded",
            "Frames queued towards their target server",
            frames_forwarded.clone(),
        );
        registry.register(
            "frames_dropped",
            "Frames not forwarded (the message stays in the recipient's inbox)",
            frames_dropped.clone(),
        );
        registry.register(
            "catch_ups_sent",
            "CatchUp frames this relay sent to a server whose full queue dropped pushes of stored messages",
            catch_ups_sent.clone(),
        );
        registry.register(
            "links_refused",
            "Connections refused during the handshake",
            links_refused.clone(),
        );
        registry.register(
            "purges",
            "Purges of a dead server's Redis entries",
            purges.clone(),
        );
        registry.register(
            "sessions_purged",
            "Sessions removed from Redis by purges",
            sessions_purged.clone(),
        );
        registry.register(
            "purge_seconds",
            "Time from the last frame of a server whose link died to the end of its purge",
            purge_seconds.clone(),
        );
        registry.register(
            "redis_errors",
            "Failed Redis calls (each is retried)",
            redis_errors.clone(),
        );

        Metrics {
            registry: Arc::new(registry),
            links,
            frames_forwarded,
            frames_dropped,
            catch_ups_sent,
            links_refused,
            purges,
            sessions_purged,
            purge_seconds,
            redis_errors,
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// A server got a route (not counting a link that replaced another).
    pub(crate) fn link_up(&self) {
        self.links.inc();
    }

    /// A server's route went away.
    pub(crate) fn link_down(&self) {
        self.links.dec();
    }

    pub(crate) fn forwarded(&self, n: u64) {
        if n > 0 {
            self.frames_forwarded.inc_by(n);
        }
    }

    pub(crate) fn dropped(&self, reason: DropReason, n: u64) {
        if n > 0 {
            self.frames_dropped
                .get_or_create(&[("reason", reason.label())])
                .inc_by(n);
        }
    }

    pub(crate) fn catch_ups_sent(&self, n: u64) {
        if n > 0 {
            self.catch_ups_sent.inc_by(n);
        }
    }

    pub(crate) fn refused(&self, reason: RefuseReason) {
        self.links_refused
            .get_or_create(&[("reason", reason.label())])
            .inc();
    }

    pub(crate) fn purged(&self, sessions: u64, since_death: Option<Duration>) {
        self.purges.inc();
        self.sessions_purged.inc_by(sessions);
        if let Some(d) = since_death {
            self.purge_seconds.observe(d.as_secs_f64());
        }
    }

    pub(crate) fn redis_error(&self) {
        self.redis_errors.inc();
    }

    /// Servers linked now.
    pub fn links(&self) -> i64 {
        self.links.get()
    }

    /// Frames forwarded so far.
    pub fn frames_forwarded(&self) -> u64 {
        self.frames_forwarded.get()
    }

    /// Purges done so far.
    pub fn purges(&self) -> u64 {
        self.purges.get()
    }

    /// Sessions purged so far.
    pub fn sessions_purged(&self) -> u64 {
        self.sessions_purged.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_labelled() {
        let m = Metrics::new();
        m.forwarded(3);
        m.dropped(DropReason::QueueFull, 2);
        m.catch_ups_sent(1);
        m.refused(RefuseReason::Auth);
        m.purged(4, Some(Duration::from_millis(1200)));
        let text = m.render();
        for line in [
            "relay_links 0",
            "relay_frames_forwarded_total 3",
            "relay_frames_dropped_total{reason=\"queue_full\"} 2",
            "relay_frames_dropped_total{reason=\"no_route\"} 0",
            "relay_catch_ups_sent_total 1",
            "relay_links_refused_total{reason=\"auth\"} 1",
            "relay_purges_total 1",
            "relay_sessions_purged_total 4",
            "relay_purge_seconds_count 1",
            "relay_redis_errors_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
