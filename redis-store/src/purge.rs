//! Removing what a server left in Redis, user by user.
//!
//! A server's session index (`sb:{s:<id>}:sess`) names every session it
//! recorded. The purge walks it: for each session of the purged epoch(s) it
//! removes the user's entry by compare-and-delete on `server:epoch` (the
//! user's slot), then the index entry (the server's slot), and at the end
//! the registry entry and the id. Each step touches one slot and is
//! idempotent, and the index entry goes only after the user's, so a purge
//! cut short (the relay killed) leaves index entries that the next purge or
//! sweep finishes; nothing it leaves is ever missed.

use crate::{Redis, StoreError, registry, scripts, sessions};

/// Which sessions of a server to remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeMode {
    /// Exactly this epoch's, and the registry entry if it still names that
    /// epoch (a dead server, or one shutting down).
    Epoch(u64),
    /// Every epoch's but this one (a server starting again cleans its
    /// previous life).
    Others(u64),
    /// Every epoch's, but only when the registry entry is gone (its TTL
    /// ran out: the server died while no relay watched it).
    Gone,
}

/// Sessions removed in flight at once.
const CONCURRENCY: usize = 64;

/// Purges `server` in `mode`. Returns the number of user sessions removed,
/// or `None` in [`PurgeMode::Gone`] when the entry exists after all.
pub async fn purge(
    redis: &Redis,
    server: &str,
    mode: PurgeMode,
) -> Result<Option<u64>, StoreError> {
    if mode == PurgeMode::Gone && registry::exists(redis, server).await? {
        return Ok(None);
    }
    let index = sessions::index(redis, server).await?;
    // Checked again after reading the index: a server that registered in
    // between keeps what it has.
    if mode == PurgeMode::Gone && registry::exists(redis, server).await? {
        return Ok(None);
    }
    let doomed: Vec<(String, Option<(u64, String)>)> = index
        .into_iter()
        .filter(|(_, held)| match (held, mode) {
            (None, _) => true,
            (Some((e, _)), PurgeMode::Epoch(epoch)) => *e == epoch,
            (Some((e, _)), PurgeMode::Others(epoch)) => *e != epoch,
            (Some(_), PurgeMode::Gone) => true,
        })
        .collect();
    let mut removed = 0;
    for chunk in doomed.chunks(CONCURRENCY) {
        let steps = chunk
            .iter()
            .map(|(session, held)| remove_one(redis, server, session, held.as_ref()));
        for r in futures_util::future::join_all(steps).await {
            removed += u64::from(r?);
        }
    }
    match mode {
        PurgeMode::Gone => registry::forget(redis, server).await?,
        PurgeMode::Epoch(epoch) => {
            registry::unregister(redis, server, epoch).await?;
        }
        PurgeMode::Others(_) => {}
    }
    Ok(Some(removed))
}

/// One session: the user's entry (if still this life's), then the index's.
async fn remove_one(
    redis: &Redis,
    server: &str,
    session: &str,
    held: Option<&(u64, String)>,
) -> Result<bool, StoreError> {
    let mut removed = false;
    if let Some((epoch, user)) = held {
        let location = shared::ids::session_location(server, *epoch);
        let n: i64 = redis
            .invoke(&scripts::session_del(user, session, &location))
            .await?;
        removed = n == 1;
    }
    let mut unindex = redis::cmd("HDEL");
    unindex
        .arg(shared::keys::server_sessions(server))
        .arg(session);
    redis.query::<redis::Value>(&unindex).await?;
    Ok(removed)
}
