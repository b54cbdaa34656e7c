//! Who is connected where: this server's sessions in Redis and its registry
//! entry (through [`redis_store`]), plus the list of other servers with
//! room, kept in memory for the 503 at the cap, and the presence cache
//! ([`crate::presence`]) that answers `TELL`'s lookups.
//!
//! The registry task refreshes the entry every `registry_interval`. When it
//! finds the entry missing, Redis has lost it (restarted empty, or flushed):
//! the server writes every live session again, so users never stay
//! invisible.
//!
//! Both the rewrite and a refresh that works again after failing wake every
//! local session to catch up with its inbox ([`Hub::catch_up_all`]): while
//! Redis was away, or empty, live pushes may have been lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use redis_store::scripts::Registration;
use redis_store::sessions::{self, Life};
use redis_store::{PurgeMode, registry};
use serde::Serialize;
use shared::ids::SessionId;
use tokio_util::sync::CancellationToken;

use crate::db::{Db, DbError};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::presence::{Presence, Servers};

/// Another server as the registry describes it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServerInfo {
    pub id: String,
    pub ws: String,
    pub tcp: String,
    pub connections: u64,
    pub cap: u64,
}

/// A login refused because the user holds the most sessions allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManySessions;

/// This server's identity in Redis.
#[derive(Clone)]
pub struct Directory {
    db: Db,
    life: Arc<Life>,
    /// Live sessions one user may hold across the cluster (0: no limit).
    max_sessions_per_user: u64,
    /// Other servers with room, newest first read.
    alternatives: Arc<ArcSwap<Vec<ServerInfo>>>,
    /// Where users recently sent a `TELL` are, besides here.
    presence: Arc<Presence>,
    metrics: Metrics,
}

impl Directory {
    /// A directory for server `server_id` at `epoch`, trusting what it
    /// read of a user's servers for `presence_max_age`.
    pub fn new(
        db: Db,
        server_id: &str,
        epoch: u64,
        max_sessions_per_user: u64,
        presence_max_age: Duration,
        metrics: Metrics,
    ) -> Directory {
        Directory {
            db,
            life: Arc::new(Life::new(server_id, epoch)),
            max_sessions_per_user,
            alternatives: Arc::new(ArcSwap::from_pointee(Vec::new())),
            presence: Arc::new(Presence::new(presence_max_age)),
            metrics,
        }
    }

    /// Records a session of `user` here; `Ok(Err(TooManySessions))` when
    /// the user already holds `--max-sessions-per-user` across the cluster.
    pub async fn add_session(
        &self,
        user: &str,
        session: SessionId,
    ) -> Result<Result<(), TooManySessions>, DbError> {
        let added = sessions::add(
            &self.db.redis,
            &self.life,
            user,
            session,
            self.max_sessions_per_user,
        )
        .await
        .map_err(|e| self.db.failed(e))?;
        Ok(if added { Ok(()) } else { Err(TooManySessions) })
    }

    /// Removes a session, only if the entry is still this epoch's.
    pub async fn remove_session(&self, user: &str, session: SessionId) -> Result<(), DbError> {
        sessions::remove(&self.db.redis, &self.life, user, session)
            .await
            .map_err(|e| self.db.failed(e))?;
        Ok(())
    }

    /// Removes whatever earlier epochs of this server id left (a restart
    /// after a crash). Returns the number of sessions removed.
    pub async fn purge_previous(&self) -> Result<u64, DbError> {
        self.purge(PurgeMode::Others(self.life.epoch)).await
    }

    /// Removes this epoch's sessions and registry entry (graceful shutdown).
    pub async fn purge_self(&self) -> Result<u64, DbError> {
        self.purge(PurgeMode::Epoch(self.life.epoch)).await
    }

    async fn purge(&self, mode: PurgeMode) -> Result<u64, DbError> {
        let removed = redis_store::purge(&self.db.redis, &self.life.server, mode)
            .await
            .map_err(|e| self.db.failed(e))?;
        Ok(removed.unwrap_or(0))
    }

    /// The other servers holding live sessions of each of `users` (`TELL`
    /// looks up its recipient and sender this way; local sessions are the
    /// hub's). From the presence cache ([`crate::presence`]) when it has
    /// the user, else one Redis read per missing user, at the same time
    /// (each user is a slot of its own), which fills the cache. A user
    /// without sessions elsewhere gets an empty list and no key is made.
    pub async fn servers_of<const N: usize>(
        &self,
        users: [&str; N],
    ) -> Result<[Servers; N], DbError> {
        let now = Instant::now();
        let cached = users.map(|user| self.presence.get(user, now));
        if cached.iter().all(Option::is_some) {
            self.metrics.presence_hits.inc_by(N as u64);
            return Ok(cached.map(Option::unwrap_or_default));
        }
        let generation = self.presence.generation();
        let missing = users
            .iter()
            .zip(&cached)
            .filter(|(_, hit)| hit.is_none())
            .map(|(user, _)| sessions::servers(&self.db.redis, user));
        let mut read = futures_util::future::try_join_all(missing)
            .await
            .map_err(|e| self.db.failed(e))?
            .into_iter();
        let mut i = 0;
        Ok(cached.map(|hit| {
            let user = users[i];
            i += 1;
            match hit {
                Some(servers) => {
                    self.metrics.presence_hits.inc();
                    servers
                }
                None => {
                    self.metrics.presence_misses.inc();
                    let servers = read.next().unwrap_or_default();
                    self.presence
                        .fill(user, servers, &self.life.server, generation, now)
                }
            }
        }))
    }

    /// Drops what the presence cache holds for `user`: they just logged in
    /// on another server ([`shared::link::Frame::Presence`]).
    pub fn forget_presence(&self, user: &str) {
        self.metrics.presence_invalidations.inc();
        self.presence.forget(user);
    }

    /// Empties the presence cache: a relay link came up, and invalidations
    /// may have been lost while it was down.
    pub fn clear_presence(&self) {
        self.metrics.presence_invalidations.inc();
        self.presence.clear();
    }

    /// Live sessions of `user` across the cluster.
    pub async fn who(&self, user: &str) -> Result<u64, DbError> {
        sessions::count(&self.db.redis, user)
            .await
            .map_err(|e| self.db.failed(e))
    }

    /// Writes the registry entry; returns whether it already existed.
    pub async fn register(
        &self,
        ws: &str,
        tcp: &str,
        conns: u64,
        cap: u64,
        ttl: Duration,
    ) -> Result<bool, DbError> {
        let r = Registration {
            server: &self.life.server,
            epoch: self.life.epoch,
            ws,
            tcp,
            conns,
            cap,
            now_ms: entry::now_ms(),
            ttl_s: ttl.as_secs(),
        };
        registry::register(&self.db.redis, &r)
            .await
            .map_err(|e| self.db.failed(e))
    }

    /// Writes every live session again.
    pub async fn reassert(&self, live: &[(String, SessionId)]) -> Result<(), DbError> {
        sessions::reassert(&self.db.redis, &self.life, live)
            .await
            .map_err(|e| self.db.failed(e))
    }

    /// Reads the registry: every other server with room.
    pub async fn read_alternatives(&self) -> Result<Vec<ServerInfo>, DbError> {
        let entries = registry::read_all(&self.db.redis)
            .await
            .map_err(|e| self.db.failed(e))?;
        let mut out: Vec<ServerInfo> = entries
            .into_iter()
            .filter(|(id, _)| *id != self.life.server)
            .filter_map(|(id, entry)| {
                let e = entry?;
                let connections = e.conns.unwrap_or(0);
                let cap = e.cap.unwrap_or(0);
                (connections < cap).then_some(ServerInfo {
                    id,
                    ws: e.ws?,
                    tcp: e.tcp?,
                    connections,
                    cap,
                })
            })
            .collect();
        out.sort_by_key(|s| s.connections);
        Ok(out)
    }

    /// Servers with room, as last read.
    pub fn alternatives(&self) -> Arc<Vec<ServerInfo>> {
        self.alternatives.load_full()
    }
}

/// What the registry task needs to describe this server.
pub struct RegistryInfo {
    pub ws: String,
    pub tcp: String,
    pub cap: u64,
}

/// Keeps the registry entry fresh, re-writes sessions when Redis lost them,
/// and refreshes the list of alternatives. Ends at shutdown.
pub async fn registry_task(
    dir: Directory,
    hub: Arc<Hub>,
    metrics: Metrics,
    info: RegistryInfo,
    interval: Duration,
    ttl: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let conns = metrics.connections.get().max(0) as u64;
        let registered = dir
            .register(&info.ws, &info.tcp, conns, info.cap, ttl)
            .await;
        metrics.redis_up.set(i64::from(registered.is_ok()));
        if registered.is_ok() && std::mem::take(&mut failing) {
            let woken = hub.catch_up_all();
            tracing::info!(sessions = woken, "redis answers again: sessions catch up");
        }
        match registered {
            Ok(true) => {}
            Ok(false) => {
                let sessions = hub.sessions();
                if !sessions.is_empty() {
                    tracing::warn!(
                        sessions = sessions.len(),
                        "registry entry was missing: writing live sessions again"
                    );
                    match dir.reassert(&sessions).await {
                        Ok(()) => {
                            metrics.reasserts.inc();
                            hub.catch_up_all();
                        }
                        Err(e) => tracing::warn!(error = %e, "could not write sessions again"),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "registry refresh failed");
                failing = true;
                continue;
            }
        }
        match dir.read_alternatives().await {
            Ok(list) => dir.alternatives.store(Arc::new(list)),
            Err(e) => tracing::debug!(error = %e, "could not read the registry"),
        }
    }
}
