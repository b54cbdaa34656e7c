//! Which relays hold a live link to which server, shared through Redis, so
//! that a relay purges a server only when it is dead, not when only this
//! relay's link to it is (a partition between two machines).
//!
//! Every relay writes, for each server linked to it, one field of
//! `sb:{s:<id>}:links` (see [`shared::keys::server_links`]): its instance
//! (`--relay-id` and a random number drawn at start) mapped to `"<epoch>
//! <until-ms>"`, refreshed every `--heartbeat` with `until` three heartbeats
//! ahead. A link that ends removes its field at once; a relay killed with
//! `kill -9` leaves fields that stop counting when `until` passes.
//!
//! The rule ([`held_elsewhere`]): after a link's death and `--purge-grace`,
//! the relay purges that epoch only when no other relay holds a live link to
//! it. While one does, it checks again every heartbeat; the server is
//! purged as soon as the last link to it is gone (or it linked here again:
//! nothing to purge). Redis unreachable counts as "not held elsewhere": the
//! purge itself needs Redis and retries anyway.

use std::sync::Arc;
use std::time::Duration;

use redis_store::StoreError;
use tracing::debug;

use crate::Ctx;
use crate::registry::call;

/// How many heartbeats a written field stays valid.
const VALID_FOR: u32 = 3;

/// This relay's name in the holders' hashes.
pub(crate) fn instance(relay_id: &str) -> String {
    format!("{relay_id}:{:016x}", rand::random::<u64>())
}

fn until(ctx: &Ctx) -> u64 {
    let ahead = ctx.config.heartbeat * VALID_FOR;
    entry::now_ms() + u64::try_from(ahead.as_millis()).unwrap_or(u64::MAX)
}

/// Writes this relay's field for every server linked here, every heartbeat,
/// until shutdown.
pub(crate) async fn refresh_loop(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(ctx.config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let routes = ctx.routes.snapshot();
        if routes.is_empty() {
            continue;
        }
        let until = until(&ctx);
        let ttl =
            u64::try_from((ctx.config.heartbeat * VALID_FOR * 2).as_millis()).unwrap_or(60_000);
        let ctx = &ctx;
        let writes = routes.iter().map(|(server, route)| {
            let key = shared::keys::server_links(server);
            let mut pipe = redis::pipe();
            pipe.cmd("HSET")
                .arg(&key)
                .arg(&ctx.instance)
                .arg(format!("{} {until}", route.epoch))
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(ttl)
                .ignore();
            async move { ctx.redis.query_pipe::<()>(&pipe).await }
        });
        let result = tokio::select! {
            r = call(async { futures_util::future::try_join_all(writes).await.map_err(StoreError::from) }) => r,
            _ = ctx.shutdown.cancelled() => return,
        };
        if let Err(error) = result {
            ctx.metrics.redis_error();
            debug!(%error, "link holders not written");
        }
    }
}

/// Removes this relay's field for `server` (its link just ended).
pub(crate) async fn release(ctx: &Ctx, server: &str) {
    let cmd = redis::cmd("HDEL")
        .arg(shared::keys::server_links(server))
        .arg(&ctx.instance)
        .clone();
    let result = call(async { Ok(ctx.redis.query::<i64>(&cmd).await?) }).await;
    if let Err(error) = result {
        debug!(%error, %server, "link holder not removed; it expires");
    }
}

/// Whether a relay other than this one holds a live link to `server` at
/// `epoch` right now.
pub(crate) async fn held_elsewhere(ctx: &Ctx, server: &str, epoch: u64) -> bool {
    let cmd = redis::cmd("HGETALL")
        .arg(shared::keys::server_links(server))
        .clone();
    let fields: Vec<(String, String)> = match call(async { Ok(ctx.redis.query(&cmd).await?) }).await
    {
        Ok(f) => f,
        Err(error) => {
            debug!(%error, %server, "link holders not read");
            return false;
        }
    };
    let now = entry::now_ms();
    fields
        .iter()
        .filter(|(relay, _)| *relay != ctx.instance)
        .any(|(_, value)| live_at(value, epoch, now))
}

/// Whether a field's value `"<epoch> <until-ms>"` is a live link to `epoch`.
fn live_at(value: &str, epoch: u64, now: u64) -> bool {
    let mut parts = value.split(' ');
    let e = parts.next().and_then(|p| p.parse::<u64>().ok());
    let until = parts.next().and_then(|p| p.parse::<u64>().ok());
    matches!((e, until), (Some(e), Some(u)) if e == epoch && u > now)
}

/// How long to wait between checks while another relay holds the link.
pub(crate) fn recheck(ctx: &Ctx) -> Duration {
    ctx.config.heartbeat
}

#[cfg(test)]
mod tests {
    use super::live_at;

    #[test]
    fn a_field_counts_for_its_epoch_until_it_runs_out() {
        assert!(live_at("7 1000", 7, 999));
        assert!(!live_at("7 1000", 7, 1000));
        assert!(!live_at("7 1000", 8, 10));
        assert!(!live_at("garbage", 7, 10));
        assert!(!live_at("7", 7, 10));
    }
}
