//! The server registry as Redis holds it, and the relay's Redis connection.
//!
//! Servers write their own entry (`sb:srv:{id}`: `epoch ws tcp conns cap
//! seen`, with a TTL) and add their id to `sb:servers`; the relay only reads
//! it (for `/servers` and the sweep) and removes entries of dead servers
//! through the purge scripts. Every call here has a deadline so a hung Redis
//! delays a purge or an admin answer, never a shutdown.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RedisResult};
use shared::keys;

/// Longest wait for one Redis call (or one pipeline).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// HGETALLs per pipeline when reading the registry.
const PIPELINE_CHUNK: usize = 256;

/// A connection manager that connects on first use and reconnects by itself;
/// it never blocks start-up, so the relay routes frames while Redis is away.
pub fn connect_lazy(url: &str) -> RedisResult<ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(CALL_TIMEOUT))
        // Our callers retry with their own backoff; keep each attempt short.
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
}

/// Runs one Redis future with [`CALL_TIMEOUT`].
pub async fn call<T>(fut: impl Future<Output = RedisResult<T>>) -> RedisResult<T> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(result) => result,
        Err(_) => Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "redis call timed out",
        ))),
    }
}

/// `PING`, within the deadline.
pub async fn ping(conn: &mut ConnectionManager) -> RedisResult<()> {
    call(redis::cmd("PING").query_async::<String>(conn))
        .await
        .map(|_| ())
}

/// One registry entry, parsed leniently: a field that is missing or not a
/// number is `None`, never an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entry {
    /// `epoch`, the server's current life.
    pub epoch: Option<u64>,
    /// `ws`, WebSocket/HTTP address.
    pub ws: Option<String>,
    /// `tcp`, line-protocol address.
    pub tcp: Option<String>,
    /// `conns`, client connections now.
    pub conns: Option<u64>,
    /// `cap`, most client connections.
    pub cap: Option<u64>,
    /// `seen`, unix ms of the server's last refresh.
    pub seen: Option<u64>,
}

impl Entry {
    /// Parses an `HGETALL` answer; `None` for an empty one (no such key).
    pub fn parse(fields: &HashMap<String, String>) -> Option<Entry> {
        if fields.is_empty() {
            return None;
        }
        let num = |k: &str| fields.get(k).and_then(|v| v.trim().parse::<u64>().ok());
        let text = |k: &str| fields.get(k).filter(|v| !v.is_empty()).cloned();
        Some(Entry {
            epoch: num("epoch"),
            ws: text("ws"),
            tcp: text("tcp"),
            conns: num("conns"),
            cap: num("cap"),
            seen: num("seen"),
        })
    }

    /// Milliseconds since `seen`, by this host's clock (0 if `seen` is in
    /// the future).
    pub fn seen_ms_ago(&self, now_ms: u64) -> Option<u64> {
        self.seen.map(|s| now_ms.saturating_sub(s))
    }
}

/// Every id in `sb:servers` with its entry (`None` when the hash is gone,
/// typically expired), sorted by id.
pub async fn read_all(conn: &mut ConnectionManager) -> RedisResult<Vec<(String, Option<Entry>)>> {
    let mut ids: Vec<String> =
        call(redis::cmd("SMEMBERS").arg(keys::SERVERS).query_async(conn)).await?;
    ids.sort();
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(PIPELINE_CHUNK) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.cmd("HGETALL").arg(keys::server(id));
        }
        let hashes: Vec<HashMap<String, String>> = call(pipe.query_async(conn)).await?;
        out.extend(chunk.iter().cloned().zip(hashes.iter().map(Entry::parse)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_leniently() {
        let mut h = HashMap::new();
        assert_eq!(Entry::parse(&h), None);
        h.insert("epoch".to_string(), "17".to_string());
        h.insert("ws".to_string(), "127.0.0.1:9001".to_string());
        h.insert("conns".to_string(), "nope".to_string());
        h.insert("seen".to_string(), "1000".to_string());
        let e = Entry::parse(&h).expect("entry");
        assert_eq!(e.epoch, Some(17));
        assert_eq!(e.ws.as_deref(), Some("127.0.0.1:9001"));
        assert_eq!(e.tcp, None);
        assert_eq!(e.conns, None);
        assert_eq!(e.seen_ms_ago(1500), Some(500));
        assert_eq!(e.seen_ms_ago(500), Some(0));
    }
}
