//! The Redis connection shared by every task of a server, and the Lua
//! scripts it runs.
//!
//! One multiplexed connection ([`ConnectionManager`]) carries every command:
//! many requests in flight share each fsync (with `appendfsync always`,
//! Redis writes and syncs its append-only file once per event-loop turn,
//! so commands that arrive together cost one fsync between them), and
//! the manager reconnects by itself when Redis goes away. A command that
//! fails while Redis is away fails fast; the caller decides to retry or to
//! answer `ERR unavailable`.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use shared::backoff::Backoff;
use shared::keys;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Why talking to Redis failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Redis refused or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The whole pipeline failed (connection lost); this command may or
    /// may not have run.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// A reply did not have the shape our script returns.
    #[error("unexpected redis reply: {0}")]
    Shape(&'static str),
    /// Shutdown came before Redis did.
    #[error("shut down while waiting for redis")]
    Shutdown,
}

/// The scripts, hashed once.
pub struct Scripts {
    pub session_add: Script,
    pub session_del: Script,
    pub purge_server: Script,
    pub register: Script,
    pub send: Script,
    pub ack: Script,
}

impl Scripts {
    fn all(&self) -> [&Script; 6] {
        [
            &self.session_add,
            &self.session_del,
            &self.purge_server,
            &self.register,
            &self.send,
            &self.ack,
        ]
    }

    fn new() -> Scripts {
        Scripts {
            session_add: Script::new(keys::SESSION_ADD),
            session_del: Script::new(keys::SESSION_DEL),
            purge_server: Script::new(keys::PURGE_SERVER),
            register: Script::new(keys::REGISTER),
            send: Script::new(keys::SEND),
            ack: Script::new(keys::ACK),
        }
    }
}

/// A connection to Redis with the scripts and the error counter.
#[derive(Clone)]
pub struct Db {
    conn: ConnectionManager,
    pub scripts: std::sync::Arc<Scripts>,
    metrics: Metrics,
}

impl Db {
    /// Connects, retrying with backoff until Redis answers or `shutdown`.
    pub async fn connect(
        url: &str,
        metrics: Metrics,
        shutdown: &CancellationToken,
    ) -> Result<Db, DbError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                Ok(mut conn) => {
                    let scripts = Scripts::new();
                    // Loaded up front so that the first messages never meet
                    // NOSCRIPT (which would make them go round again).
                    for script in scripts.all() {
                        if let Err(e) = script.load_async(&mut conn).await {
                            tracing::warn!(error = %e, "could not load a script yet");
                        }
                    }
                    return Ok(Db {
                        conn,
                        scripts: std::sync::Arc::new(scripts),
                        metrics,
                    });
                }
                Err(e) => {
                    let delay = backoff.next_delay(rand::random());
                    tracing::warn!(error = %e, retry_in = ?delay, "redis not reachable yet");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Err(DbError::Shutdown),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// A handle on the shared connection (cheap).
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Counts a failure and passes it on.
    pub fn failed(&self, e: redis::RedisError) -> DbError {
        self.metrics.redis_errors.inc();
        DbError::Redis(e)
    }
}

/// Reads an integer from a script or command reply.
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
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The distinct server ids in an `HGETALL sb:user:{user}` reply
/// (`session -> server:epoch` pairs), entries that do not parse skipped.
pub fn servers_of(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let pairs: Vec<(&Value, &Value)> = match v {
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|c| Some((c.first()?, c.get(1)?)))
            .collect(),
        Value::Map(items) => items.iter().map(|(k, v)| (k, v)).collect(),
        _ => return out,
    };
    for (_, loc) in pairs {
        let Some(loc) = text(loc) else { continue };
        if let Some((server, _)) = shared::ids::parse_location(&loc)
            && !out.iter().any(|s| s == server)
        {
            out.push(server.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn servers_are_read_from_session_hashes() {
        let v = Value::Array(vec![
            bulk("s1"),
            bulk("a:1"),
            bulk("s2"),
            bulk("b:7"),
            bulk("s3"),
            bulk("a:1"),
            bulk("s4"),
            bulk("garbage"),
        ]);
        assert_eq!(servers_of(&v), vec!["a".to_owned(), "b".to_owned()]);
        assert!(servers_of(&Value::Nil).is_empty());
    }

    #[test]
    fn integers_and_strings_are_read_leniently() {
        assert_eq!(int(&Value::Int(5)), Some(5));
        assert_eq!(int(&bulk("17")), Some(17));
        assert_eq!(int(&bulk("x")), None);
        assert_eq!(int(&Value::Int(-1)), None);
        assert_eq!(text(&bulk("hi")).as_deref(), Some("hi"));
    }
}
