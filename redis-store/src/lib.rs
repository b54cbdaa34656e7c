//! Switchboard's Redis side, shared by the message server and the relay.
//!
//! - [`args`]: the `--redis*` flags, the same on both binaries;
//! - [`conn`]: the one Redis handle ([`Redis`]) for single, cluster and
//!   sentinel deployments, and the replica wait;
//! - [`eviction`]: refusing a Redis that may evict keys;
//! - [`scripts`]: one typed call per Lua script of [`shared::keys`];
//! - [`sessions`]: who is connected where;
//! - [`registry`]: the server registry;
//! - [`mod@purge`]: removing what a server left, user by user, resumable.
//!
//! Every call touches one Redis Cluster slot (keys are hash-tagged by owner,
//! see [`shared::keys`]); callers never see key names or script arguments.

pub mod args;
pub mod conn;
pub mod eviction;
pub mod purge;
pub mod registry;
pub mod scripts;
pub mod sessions;

pub use args::{RedisArgs, RedisMode};
pub use conn::Redis;
pub use purge::{PurgeMode, purge};

use redis::Value;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis refused, or the connection failed (the call may or may not
    /// have run: every write here is idempotent or compare-and-set).
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A reply did not have the shape the script returns.
    #[error("unexpected redis reply: {0}")]
    Shape(&'static str),
    /// Fewer replicas than `--redis-replica-acks` confirmed the write in time.
    #[error("redis write reached {acked} replicas of {wanted} in time")]
    NotReplicated { wanted: u32, acked: u32 },
    /// An earlier step failed; the message says which.
    #[error("{0}")]
    Unavailable(String),
    /// The flags do not describe a usable Redis.
    #[error("redis configuration: {0}")]
    Config(String),
}

/// Reads an integer from a reply.
pub fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// Reads a string from a reply.
pub fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_and_strings_are_read_leniently() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(int(&Value::Int(5)), Some(5));
        assert_eq!(int(&bulk("17")), Some(17));
        assert_eq!(int(&bulk("x")), None);
        assert_eq!(int(&Value::Int(-1)), None);
        assert_eq!(text(&bulk("hi")).as_deref(), Some("hi"));
        let verbatim = Value::VerbatimString {
            format: redis::VerbatimFormat::Text,
            text: "hi".to_owned(),
        };
        assert_eq!(text(&verbatim).as_deref(), Some("hi"));
    }
}
