//! The Redis flags, the same on both binaries (flattened into each one's
//! `Config`).

use std::time::Duration;

use shared::config::parse_duration;

/// How the Redis deployment is reached.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RedisMode {
    /// One Redis (`--redis` is its URL).
    #[default]
    Single,
    /// Redis Cluster (`--redis` gives one or more seed nodes).
    Cluster,
    /// A master watched by Redis Sentinel (`--redis` gives the sentinels,
    /// `--redis-master-name` the master's name).
    Sentinel,
}

/// Where Redis is and how much a write must be replicated before it counts.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct RedisArgs {
    /// Redis URL; given more than once (or comma-separated in `SB_REDIS`)
    /// for cluster seed nodes or sentinels.
    #[arg(
        long = "redis",
        env = "SB_REDIS",
        value_delimiter = ',',
        default_value = "redis://127.0.0.1:6379/"
    )]
    pub urls: Vec<String>,

    /// single, cluster or sentinel.
    #[arg(
        long = "redis-mode",
        env = "SB_REDIS_MODE",
        value_enum,
        default_value_t
    )]
    pub mode: RedisMode,

    /// The master's name in Sentinel mode.
    #[arg(
        long = "redis-master-name",
        env = "SB_REDIS_MASTER_NAME",
        default_value = "switchboard"
    )]
    pub master_name: String,

    /// Replicas that must hold a direct message before its sender gets
    /// `OK SENT` (Redis `WAIT`); 0 does not wait.
    #[arg(
        long = "redis-replica-acks",
        env = "SB_REDIS_REPLICA_ACKS",
        default_value_t = 0
    )]
    pub replica_acks: u32,

    /// Longest wait for those replicas; past it the sender gets `ERR
    /// unavailable` and may retry with the same cid.
    #[arg(long = "redis-replica-timeout", env = "SB_REDIS_REPLICA_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub replica_timeout: Duration,

    /// Use a Redis that may evict keys (a `maxmemory` limit with a
    /// `maxmemory-policy` other than `noeviction`). Refused without this:
    /// eviction deletes stored messages without an error.
    #[arg(long = "redis-allow-eviction", env = "SB_REDIS_ALLOW_EVICTION")]
    pub allow_eviction: bool,
}

impl RedisArgs {
    /// One Redis at `url`, no replica acks.
    pub fn single(url: &str) -> RedisArgs {
        RedisArgs {
            urls: vec![url.to_owned()],
            mode: RedisMode::Single,
            master_name: "switchboard".to_owned(),
            replica_acks: 0,
            replica_timeout: Duration::from_secs(1),
            allow_eviction: false,
        }
    }

    /// The addresses, for logs.
    pub fn describe(&self) -> String {
        format!("{:?} {}", self.mode, self.urls.join(",")).to_lowercase()
    }
}
