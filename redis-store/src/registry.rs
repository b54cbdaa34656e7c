//! The server registry: each server's entry (`sb:{s:<id>}:srv`, with a TTL)
//! and the set of ids (`sb:servers`). Servers write their own; the relay
//! reads them for `/servers` and the sweep; servers read the others' to name
//! alternatives at the cap. The fields are parsed by
//! [`shared::registry::Entry`].

use std::collections::HashMap;

use redis::Value;
use shared::keys;
use shared::registry::Entry;

use crate::scripts::{self, Registration};
use crate::{Redis, StoreError};

/// Writes `r`'s entry and puts its id in the set; returns whether the
/// entry already existed (false: Redis lost it, write the sessions again).
pub async fn register(redis: &Redis, r: &Registration<'_>) -> Result<bool, StoreError> {
    let existed: i64 = redis.invoke(&scripts::register(r)).await?;
    let mut add = redis::cmd("SADD");
    add.arg(keys::SERVERS).arg(r.server);
    redis.query::<Value>(&add).await?;
    Ok(existed == 1)
}

/// Removes `server`'s entry if it still names `epoch`, and then its id.
/// Returns whether the entry was removed.
pub async fn unregister(redis: &Redis, server: &str, epoch: u64) -> Result<bool, StoreError> {
    let deleted: i64 = redis.invoke(&scripts::unregister(server, epoch)).await?;
    if deleted == 1 {
        forget(redis, server).await?;
    }
    Ok(deleted == 1)
}

/// Takes `server` out of the set of ids.
pub(crate) async fn forget(redis: &Redis, server: &str) -> Result<(), StoreError> {
    let mut rem = redis::cmd("SREM");
    rem.arg(keys::SERVERS).arg(server);
    redis.query::<Value>(&rem).await?;
    Ok(())
}

/// Whether `server` has an entry.
pub async fn exists(redis: &Redis, server: &str) -> Result<bool, StoreError> {
    let mut cmd = redis::cmd("EXISTS");
    cmd.arg(keys::server(server));
    let n: i64 = redis.query(&cmd).await?;
    Ok(n == 1)
}

/// Every id in `sb:servers` with its entry (`None` when the hash is gone,
/// typically expired), sorted by id. One call per entry, concurrent (each
/// entry is in its own slot).
pub async fn read_all(redis: &Redis) -> Result<Vec<(String, Option<Entry>)>, StoreError> {
    let mut cmd = redis::cmd("SMEMBERS");
    cmd.arg(keys::SERVERS);
    let mut ids: Vec<String> = redis.query(&cmd).await?;
    ids.sort();
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(256) {
        let reads = chunk.iter().map(|id| async move {
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(keys::server(id));
            redis.query::<HashMap<String, String>>(&cmd).await
        });
        let hashes = futures_util::future::join_all(reads).await;
        for (id, h) in chunk.iter().zip(hashes) {
            out.push((id.clone(), Entry::parse(&h?)));
        }
    }
    Ok(out)
}
