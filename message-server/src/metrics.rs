//! Prometheus metrics of one message server, in a registry of its own (so
//! several servers in one test process keep separate counts).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Every metric a message server keeps. Cheap to clone (handles).
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    /// Open client connections (WebSocket and TCP).
    pub connections: Gauge,
    /// Logged-in sessions.
    pub sessions: Gauge,
    /// Connections refused at the cap.
    pub refused_full: Counter,
    /// Direct messages stored in Redis.
    pub stored: Counter,
    /// Direct and room messages refused (`ERR unavailable`) because Redis
    /// failed to store them.
    pub not_stored: Counter,
    /// Sends answered from the `cid` record (retries stored once).
    pub deduplicated: Counter,
    /// Events pushed to sessions on this server.
    pub pushed_local: Counter,
    /// Frames sent to a relay.
    pub frames_to_relay: Counter,
    /// Frames received from a relay.
    pub frames_from_relay: Counter,
    /// Frames not sent because no relay link was up (the inbox still has them).
    pub dropped_no_link: Counter,
    /// Frames not sent because the live link's queue was full (a relay slow
    /// to read); stored messages reach their recipients by replay.
    pub dropped_link_full: Counter,
    /// Sessions closed because they did not read their pushes.
    pub slow_consumers: Counter,
    /// Redis commands that failed.
    pub redis_errors: Counter,
    /// Relay links up (0 means degraded).
    pub links_up: Gauge,
    /// 1 while the last Redis round trip of the registry task worked.
    pub redis_up: Gauge,
    /// Times this server wrote its sessions again because Redis had lost them.
    pub reasserts: Counter,
    /// Times sessions (every one, or those a `CatchUp` named) were woken to
    /// catch up after a fault.
    pub catch_ups: Counter,
    /// Inbox messages a catch-up wrote that no push had brought.
    pub caught_up: Counter,
    /// `CatchUp` frames sent to a relay for pushes a full (or absent) link
    /// dropped.
    pub catch_ups_sent: Counter,
    /// `TELL` lookups the presence cache answered.
    pub presence_hits: Counter,
    /// `TELL` lookups that read Redis (not cached, or too old).
    pub presence_misses: Counter,
    /// Presence cache entries dropped by a login elsewhere, or the whole
    /// cache by a relay link that came up.
    pub presence_invalidations: Counter,
}

impl Metrics {
    fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("server");
        r.register(
            "connections",
            "Open client connections",
            self.connections.clone(),
        );
        r.register("sessions", "Logged-in sessions", self.sessions.clone());
        r.register(
            "refused_full",
            "Connections refused at the cap",
            self.refused_full.clone(),
        );
        r.register(
            "messages_stored",
            "Direct messages stored",
            self.stored.clone(),
        );
        r.register(
            "messages_not_stored",
            "Direct and room messages refused because Redis failed to store them",
            self.not_stored.clone(),
        );
        r.register(
            "messages_deduplicated",
            "Retried sends answered from the cid record",
            self.deduplicated.clone(),
        );
        r.register(
            "pushed_local",
            "Events pushed to local sessions",
            self.pushed_local.clone(),
        );
        r.register(
            "frames_to_relay",
            "Frames sent to a relay",
            self.frames_to_relay.clone(),
        );
        r.register(
            "frames_from_relay",
            "Frames received from a relay",
            self.frames_from_relay.clone(),
        );
        r.register(
            "dropped_no_link",
            "Frames not sent: no relay link up",
            self.dropped_no_link.clone(),
        );
        r.register(
            "dropped_link_full",
            "Frames not sent: the relay link's queue was full",
            self.dropped_link_full.clone(),
        );
        r.register(
            "slow_consumers",
            "Sessions closed for not reading",
            self.slow_consumers.clone(),
        );
        r.register(
            "redis_errors",
            "Failed Redis commands",
            self.redis_errors.clone(),
        );
        r.register("links_up", "Relay links up", self.links_up.clone());
        r.register(
            "redis_up",
            "Redis reachable at the last registry refresh",
            self.redis_up.clone(),
        );
        r.register(
            "reasserts",
            "Sessions rewritten after Redis lost them",
            self.reasserts.clone(),
        );
        r.register(
            "catch_ups",
            "Times sessions were woken to catch up after a fault",
            self.catch_ups.clone(),
        );
        r.register(
            "caught_up",
            "Inbox messages written by a catch-up that no push had brought",
            self.caught_up.clone(),
        );
        r.register(
            "catch_ups_sent",
            "CatchUp frames sent to a relay for pushes a full or absent link dropped",
            self.catch_ups_sent.clone(),
        );
        r.register(
            "presence_hits",
            "TELL lookups answered by the presence cache",
            self.presence_hits.clone(),
        );
        r.register(
            "presence_misses",
            "TELL lookups that read Redis",
            self.presence_misses.clone(),
        );
        r.register(
            "presence_invalidations",
            "Presence cache entries dropped by a login elsewhere, or the whole cache by a relay link up",
            self.presence_invalidations.clone(),
        );
        r
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry());
        out
    }
}
