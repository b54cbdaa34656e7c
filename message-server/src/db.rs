//! This server's handle on Redis ([`redis_store::Redis`]: single, cluster
//! or sentinel) with its error counter.
//!
//! Start-up waits until Redis answers (the server cleans its previous life
//! there first); afterwards a command that fails while Redis is away fails
//! fast, and the caller decides to retry or to answer `ERR unavailable`.

use std::time::Duration;

use redis_store::{Redis, RedisArgs, StoreError};
use shared::backoff::Backoff;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Why talking to Redis failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Redis refused, the connection failed, or a reply had the wrong shape.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store answered something the caller did not ask for (a bug).
    #[error("store: {0}")]
    Internal(&'static str),
    /// Shutdown came before Redis did.
    #[error("shut down while waiting for redis")]
    Shutdown,
}

impl From<redis::RedisError> for DbError {
    fn from(e: redis::RedisError) -> DbError {
        DbError::Store(StoreError::Redis(e))
    }
}

/// Redis with the error counter.
#[derive(Clone)]
pub struct Db {
    pub redis: Redis,
    metrics: Metrics,
}

impl Db {
    /// Connects, retrying with backoff until Redis answers or `shutdown`.
    pub async fn connect(
        args: &RedisArgs,
        metrics: Metrics,
        shutdown: &CancellationToken,
    ) -> Result<Db, DbError> {
        let redis = Redis::new(args)?;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            let ping = redis.query::<String>(&redis::cmd("PING")).await;
            match ping {
                Ok(_) => return Ok(Db { redis, metrics }),
                Err(e) => {
                    let delay = backoff.next_delay(rand::random());
                    tracing::warn!(error = %e, redis = %args.describe(), retry_in = ?delay, "redis not usable yet");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Err(DbError::Shutdown),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Counts a failure and passes it on.
    pub fn failed(&self, e: impl Into<DbError>) -> DbError {
        self.metrics.redis_errors.inc();
        e.into()
    }
}
