//! Who is connected where: this server's sessions in Redis (`sb:user:*`,
//! `sb:srvsess:*`) and its registry entry (`sb:srv:*`), plus the list of
//! other servers with room, kept in memory for the 503 at the cap.
//!
//! The registry task refreshes the entry every `registry_interval`. When it
//! finds the entry missing, Redis has lost it (restarted empty, or flushed):
//! the server writes every live session again, so users never stay
//! invisible.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::AsyncCommands;
use serde::Serialize;
use shared::ids::{SessionId, session_location};
use shared::keys;
use tokio_util::sync::CancellationToken;

use crate::db::{Db, DbError, int, text};
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Another server as the registry describes it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServerInfo {
    pub id: String,
    pub ws: String,
    pub tcp: String,
    pub connections: u64,
    pub cap: u64,
}

/// This server's identity in Redis.
#[derive(Clone)]
pub struct Directory {
    db: Db,
    server_id: Arc<str>,
    epoch: u64,
    location: Arc<str>,
    /// Other servers with room, newest first read.
    alternatives: Arc<ArcSwap<Vec<ServerInfo>>>,
}

impl Directory {
    /// A directory for server `server_id` at `epoch`.
    pub fn new(db: Db, server_id: &str, epoch: u64) -> Directory {
        Directory {
            db,
            server_id: server_id.into(),
            epoch,
            location: session_location(server_id, epoch).into(),
            alternatives: Arc::new(ArcSwap::from_pointee(Vec::new())),
        }
    }

    /// Records a session of `user` here.
    pub async fn add_session(&self, user: &str, session: SessionId) -> Result<(), DbError> {
        self.db
            .scripts
            .session_add
            .key(keys::user(user))
            .key(keys::server_sessions(&self.server_id))
            .arg(session.to_string())
            .arg(&*self.location)
            .arg(self.epoch)
            .arg(user)
            .invoke_async::<i64>(&mut self.db.conn())
            .await
            .map_err(|e| self.db.failed(e))?;
        Ok(())
    }

    /// Removes a session, only if the entry is still this epoch's.
    pub async fn remove_session(&self, user: &str, session: SessionId) -> Result<(), DbError> {
        self.db
            .scripts
            .session_del
            .key(keys::user(user))
            .key(keys::server_sessions(&self.server_id))
            .arg(session.to_string())
            .arg(&*self.location)
            .invoke_async::<i64>(&mut self.db.conn())
            .await
            .map_err(|e| self.db.failed(e))?;
        Ok(())
    }

    /// Removes whatever earlier epochs of this server id left (a restart
    /// after a crash). Returns the number of sessions removed.
    pub async fn purge_previous(&self) -> Result<u64, DbError> {
        self.purge("others").await
    }

    /// Removes this epoch's sessions and registry entry (graceful shutdown).
    pub async fn purge_self(&self) -> Result<u64, DbError> {
        self.purge("epoch").await
    }

    /// [`shared::keys::PURGE_SERVER`] for this server and epoch.
    async fn purge(&self, mode: &str) -> Result<u64, DbError> {
        self.db
            .scripts
            .purge_server
            .key(keys::server_sessions(&self.server_id))
            .key(keys::server(&self.server_id))
            .key(keys::SERVERS)
            .arg(&*self.server_id)
            .arg(self.epoch)
            .arg(mode)
            .invoke_async::<u64>(&mut self.db.conn())
            .await
            .map_err(|e| self.db.failed(e))
    }

    /// The servers holding live sessions of each of `users`, in one round
    /// trip (`TELL` looks up its recipient and sender this way). Reads only:
    /// a user without sessions gets an empty list and no key is made.
    pub async fn servers_of(&self, users: &[&str]) -> Result<Vec<Vec<String>>, DbError> {
        let mut pipe = redis::pipe();
        for user in users {
            pipe.hvals(keys::user(user));
        }
        let locations: Vec<Vec<String>> = pipe
            .query_async(&mut self.db.conn())
            .await
            .map_err(|e| self.db.failed(e))?;
        Ok(locations
            .iter()
            .map(|locs| {
                let mut servers: Vec<String> = locs
                    .iter()
                    .filter_map(|l| shared::ids::parse_location(l).map(|(id, _)| id.to_owned()))
                    .collect();
                servers.sort_unstable();
                servers.dedup();
                servers
            })
            .collect())
    }

    /// Live sessions of `user` across the cluster.
    pub async fn who(&self, user: &str) -> Result<u64, DbError> {
        let n: u64 = self
            .db
            .conn()
            .hlen(keys::user(user))
            .await
            .map_err(|e| self.db.failed(e))?;
        Ok(n)
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
        let existed: i64 = self
            .db
            .scripts
            .register
            .key(keys::server(&self.server_id))
            .key(keys::SERVERS)
            .arg(&*self.server_id)
            .arg(self.epoch)
            .arg(ws)
            .arg(tcp)
            .arg(conns)
            .arg(cap)
            .arg(entry::now_ms())
            .arg(ttl.as_secs().max(1))
            .invoke_async(&mut self.db.conn())
            .await
            .map_err(|e| self.db.failed(e))?;
        Ok(existed == 1)
    }

    /// Writes every live session again, in one pipeline.
    pub async fn reassert(&self, sessions: &[(String, SessionId)]) -> Result<(), DbError> {
        if sessions.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (user, session) in sessions {
            pipe.cmd("EVALSHA")
                .arg(self.db.scripts.session_add.get_hash())
                .arg(2)
                .arg(keys::user(user))
                .arg(keys::server_sessions(&self.server_id))
                .arg(session.to_string())
                .arg(&*self.location)
                .arg(self.epoch)
                .arg(user)
                .ignore();
        }
        // EVALSHA may meet a Redis that lost its script cache too: load first.
        let mut conn = self.db.conn();
        self.db
            .scripts
            .session_add
            .load_async(&mut conn)
            .await
            .map_err(|e| self.db.failed(e))?;
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.db.failed(e))?;
        Ok(())
    }

    /// Reads the registry: every other server with room.
    pub async fn read_alternatives(&self) -> Result<Vec<ServerInfo>, DbError> {
        let mut conn = self.db.conn();
        let ids: Vec<String> = conn
            .smembers(keys::SERVERS)
            .await
            .map_err(|e| self.db.failed(e))?;
        let ids: Vec<String> = ids
            .into_iter()
            .filter(|id| *id != *self.server_id)
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL").arg(keys::server(id));
        }
        let hashes: Vec<std::collections::HashMap<String, redis::Value>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| self.db.failed(e))?;
        let mut out = Vec::new();
        for (id, h) in ids.into_iter().zip(hashes) {
            let field = |k: &str| h.get(k);
            let (Some(ws), Some(tcp)) = (field("ws").and_then(text), field("tcp").and_then(text))
            else {
                continue;
            };
            let connections = field("conns").and_then(int).unwrap_or(0);
            let cap = field("cap").and_then(int).unwrap_or(0);
            if connections < cap {
                out.push(ServerInfo {
                    id,
                    ws,
                    tcp,
                    connections,
                    cap,
                });
            }
        }
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
                        }
                        Err(e) => tracing::warn!(error = %e, "could not write sessions again"),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "registry refresh failed");
                continue;
            }
        }
        match dir.read_alternatives().await {
            Ok(list) => dir.alternatives.store(Arc::new(list)),
            Err(e) => tracing::debug!(error = %e, "could not read the registry"),
        }
    }
}
