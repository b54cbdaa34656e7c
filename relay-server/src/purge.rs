//! Removing what dead servers left in Redis: after a link dies, and by a
//! periodic sweep of the registry.
//!
//! - **After a death** (a link ended without `Bye`): wait `--purge-grace`;
//!   if the server has not linked again with the same epoch, and no other
//!   relay holds a live link to it ([`crate::holders`]: only this relay's
//!   link may be cut, the server may be alive), purge that
//!   epoch ([`PurgeMode::Epoch`]), retrying on Redis errors. The
//!   time from the server's last frame to the end of the purge goes into
//!   `relay_purge_seconds`.
//! - **The sweep** (at start-up and every `--sweep-interval`) catches
//!   servers that died while no relay watched them: an id in `sb:servers`
//!   whose entry expired is purged in [`PurgeMode::Gone`] (every epoch);
//!   an entry whose `seen` is older than `--stale-after`, for a server not
//!   linked here, in [`PurgeMode::Epoch`].
//!
//! The purge ([`redis_store::purge`]) goes user by user, each step
//! idempotent and compare-and-delete by epoch, so several relays
//! purging the same server, or a purge racing the server's own restart,
//! remove nothing that is alive. (A live server whose entry was purged by
//! mistake finds its entry missing at its next refresh and writes its
//! sessions again.) A purge cut short (this relay killed) leaves the
//! server's id and index entries behind, and the next sweep finishes it.

use std::sync::Arc;
use std::time::Duration;

use redis_store::{PurgeMode, StoreError};
use shared::backoff::Backoff;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::Ctx;
use crate::registry::{self, Entry};

/// Schedules the purge of `server`/`epoch`, whose link just died; `last_heard`
/// is when its last frame arrived.
pub(crate) fn schedule(ctx: &Arc<Ctx>, server: String, epoch: u64, last_heard: Instant) {
    let span = info_span!("purge", server = %server, epoch);
    let ctx2 = ctx.clone();
    ctx.tracker
        .spawn(after_death(ctx2, server, epoch, last_heard).instrument(span));
}

async fn after_death(ctx: Arc<Ctx>, server: String, epoch: u64, last_heard: Instant) {
    // Leaving a pending purge at shutdown is safe: the sweep of the next
    // relay finds the entry once it is stale.
    tokio::select! {
        _ = ctx.shutdown.cancelled() => {
            info!("shutting down before the purge grace ended; leaving it to the sweep");
            return;
        }
        _ = tokio::time::sleep(ctx.config.purge_grace) => {}
    }
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut waited = false;
    loop {
        if ctx.routes.has_epoch(&server, epoch) {
            info!("server linked again with the same epoch; nothing to purge");
            return;
        }
        if crate::holders::held_elsewhere(&ctx, &server, epoch).await {
            if !waited {
                info!("another relay holds a live link to the server; not purging while it does");
                waited = true;
            }
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                _ = tokio::time::sleep(crate::holders::recheck(&ctx)) => {}
            }
            continue;
        }
        let result = tokio::select! {
            result = purge_epoch(&ctx, &server, epoch) => result,
            _ = ctx.shutdown.cancelled() => {
                info!("shutting down during the purge; leaving it to the sweep");
                return;
            }
        };
        match result {
            Ok(sessions) => {
                let since = last_heard.elapsed();
                ctx.metrics.purged(sessions, Some(since));
                ctx.purge_log
                    .record(&server, Some(epoch), sessions, Some(since));
                info!(
                    sessions,
                    since_last_frame_ms = since.as_millis() as u64,
                    "purged dead server"
                );
                return;
            }
            Err(error) => {
                ctx.metrics.redis_error();
                warn!(%error, "purge failed; retrying");
            }
        }
        tokio::select! {
            _ = ctx.shutdown.cancelled() => {
                info!("shutting down with the purge undone; leaving it to the sweep");
                return;
            }
            _ = tokio::time::sleep(backoff.next_delay(rand::random())) => {}
        }
    }
}

/// Purges one epoch of `server`; the number of sessions removed.
async fn purge_epoch(ctx: &Ctx, server: &str, epoch: u64) -> Result<u64, StoreError> {
    let removed = redis_store::purge(&ctx.redis, server, PurgeMode::Epoch(epoch)).await?;
    Ok(removed.unwrap_or(0))
}

/// Purges every epoch of `server` whose entry expired; `None` when the
/// entry exists after all.
async fn purge_gone(ctx: &Ctx, server: &str) -> Result<Option<u64>, StoreError> {
    redis_store::purge(&ctx.redis, server, PurgeMode::Gone).await
}

/// Waits until Redis answers (logging once while it does not), then sweeps
/// now and every `--sweep-interval` until shutdown.
pub(crate) async fn sweep_loop(ctx: Arc<Ctx>) {
    // Shutdown interrupts a Redis call in flight: both scripts are
    // idempotent, so one cut short is simply done again by the next sweep.
    let ready = tokio::select! {
        ready = wait_for_redis(&ctx) => ready,
        _ = ctx.shutdown.cancelled() => false,
    };
    if !ready {
        return;
    }
    loop {
        let result = tokio::select! {
            result = sweep(&ctx) => result,
            _ = ctx.shutdown.cancelled() => return,
        };
        if let Err(error) = result {
            ctx.metrics.redis_error();
            warn!(%error, "registry sweep failed; trying again next interval");
        }
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tokio::time::sleep(ctx.config.sweep_interval) => {}
        }
    }
}

/// Pings Redis with backoff until it answers (`true`) or shutdown (`false`).
async fn wait_for_redis(ctx: &Ctx) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut failed = false;
    loop {
        match registry::ping(&ctx.redis).await {
            Ok(()) => {
                if failed {
                    info!("redis reachable");
                }
                return true;
            }
            Err(error) => {
                ctx.metrics.redis_error();
                if !failed {
                    warn!(%error, redis = %ctx.config.redis.describe(), "redis unreachable; retrying (links are served meanwhile)");
                    failed = true;
                }
            }
        }
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return false,
            _ = tokio::time::sleep(backoff.next_delay(rand::random())) => {}
        }
    }
}

/// One pass over the registry.
async fn sweep(ctx: &Ctx) -> Result<(), StoreError> {
    let entries = registry::read_all(&ctx.redis).await?;
    let now = entry::now_ms();
    let stale_ms = u64::try_from(ctx.config.stale_after.as_millis()).unwrap_or(u64::MAX);
    for (server, entry) in entries {
        if ctx.shutdown.is_cancelled() {
            break;
        }
        if shared::ids::check_name(&server).is_err() || ctx.routes.is_up(&server) {
            continue;
        }
        match entry {
            None => {
                if let Some(sessions) = purge_gone(ctx, &server).await? {
                    ctx.metrics.purged(sessions, None);
                    ctx.purge_log.record(&server, None, sessions, None);
                    info!(%server, sessions, "swept a server whose registry entry expired");
                }
            }
            Some(Entry {
                epoch: Some(epoch),
                seen: Some(seen),
                ..
            }) => {
                let age = now.saturating_sub(seen);
                if age < stale_ms {
                    continue;
                }
                let sessions = purge_epoch(ctx, &server, epoch).await?;
                ctx.metrics.purged(sessions, None);
                ctx.purge_log.record(&server, Some(epoch), sessions, None);
                info!(%server, epoch, seen_ms_ago = age, sessions, "swept a stale server");
            }
            // An entry without epoch or seen was not written by a server;
            // its TTL will remove it.
            Some(_) => debug!(%server, "registry entry without epoch or seen; left alone"),
        }
    }
    Ok(())
}
