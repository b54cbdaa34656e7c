//! The server registry as the relay reads it, and the relay's Redis handle.
//!
//! Servers write their own entry (`sb:{s:<id>}:srv`: `epoch ws tcp conns cap
//! seen`, with a TTL) and add their id to `sb:servers`; the relay only reads
//! it (for `/servers` and the sweep) and removes entries of dead servers
//! through the purge ([`redis_store::purge`]). Every read here has a
//! deadline so a hung Redis delays a purge or an admin answer, never a
//! shutdown. The entry's fields are parsed by [`shared::registry::Entry`].

use std::time::Duration;

use redis_store::{Redis, RedisArgs, StoreError};

pub use shared::registry::Entry;

/// Longest wait for one Redis call (or one read of the registry).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A handle that connects on first use and reconnects by itself; it never
/// blocks start-up, so the relay routes frames while Redis is away.
pub fn connect_lazy(args: &RedisArgs) -> Result<Redis, StoreError> {
    Redis::new(args)
}

/// Runs one Redis future with [`CALL_TIMEOUT`].
pub async fn call<T>(fut: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Redis(redis::RedisError::from(
            std::io::Error::new(std::io::ErrorKind::TimedOut, "redis call timed out"),
        ))),
    }
}

/// `PING`, within the deadline.
pub async fn ping(redis: &Redis) -> Result<(), StoreError> {
    call(async {
        redis.query::<String>(&redis::cmd("PING")).await?;
        Ok(())
    })
    .await
}

/// Every id in `sb:servers` with its entry (`None` when the hash is gone,
/// typically expired), sorted by id; within the deadline.
pub async fn read_all(redis: &Redis) -> Result<Vec<(String, Option<Entry>)>, StoreError> {
    call(redis_store::registry::read_all(redis)).await
}
