//! Helpers shared by the integration tests: a private `redis-server` on a
//! free port, and small real clients (WebSocket and telnet-style TCP) that
//! read with timeouts so a broken server fails a test instead of hanging it,
//! and a fault-injection TCP proxy ([`proxy`]) that can delay or black-hole
//! one link.
//!
//! Nothing here fakes a part of the system: Redis is the real server binary,
//! the relay and message servers are the real libraries (or binaries), and
//! the clients speak over real sockets.

pub mod clients;
pub mod redis_server;

pub use clients::{LineClient, TcpClient, WsClient};
pub use redis_server::{RedisCluster, RedisKind, RedisSentinel, RedisServer, TestRedis};

/// How long a test waits for an expected line before failing.
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Polls `check` every 50 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: std::time::Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub mod cluster;
pub mod procs;
pub mod proxy;
pub use cluster::{Cluster, Relay, Server};

/// A plain HTTP/1.1 GET over a fresh connection; returns status and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("http connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("http write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("http response in time")
        .expect("http read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Reads one counter or gauge from a Prometheus text page (`None` if absent).
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == name).then(|| v.parse().ok())?
    })
}
