//! The idle scenario: open many logged-in connections, hold them, and
//! report what each costs the server in resident memory.
//!
//! Memory per connection is the RSS growth of a server process from before
//! the first connection to after the last one settled, divided by the
//! connections it holds. Each connection has one small task on the tool's
//! side that keeps reading (so pings are answered) and counts breakage.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::conn::{Conn, Dialer};
use crate::procs::Usage;
use crate::proto::{self, Incoming};
use crate::target::{Target, server_name};
use crate::traffic::RunError;

/// How the idle scenario is shaped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleConfig {
    /// Connections to open, spread over the servers.
    pub connections: usize,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// Wait after the last connection before reading memory.
    pub settle: Duration,
    /// Then hold this long and count connections that broke.
    pub hold: Duration,
    /// User-name prefix, unique per run.
    pub prefix: String,
    /// Print a progress line every second.
    pub progress: bool,
    /// Shown at the start of the progress line.
    pub label: String,
}

/// One server's share.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdleServer {
    /// Process name in reports.
    pub name: String,
    /// Connections open to it.
    pub connections: u64,
    /// RSS before the first connection, bytes.
    pub rss_before: u64,
    /// RSS after the last connection settled, bytes.
    pub rss_after: u64,
    /// `(rss_after - rss_before) / connections`.
    pub bytes_per_conn: f64,
}

/// What the idle scenario measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdleResult {
    /// Connections asked for.
    pub connections: usize,
    /// Connections opened and logged in.
    pub opened: u64,
    /// Connections that could not be opened.
    pub failed: u64,
    /// Why the first failure failed.
    pub first_error: Option<String>,
    /// Seconds from the first handshake to the last login.
    pub connect_s: f64,
    /// Logins per second while connecting.
    pub connect_rate: f64,
    /// Connections still open at the end of the hold.
    pub still_open: u64,
    /// Per server process with a known pid.
    pub servers: Vec<IdleServer>,
    /// The largest `bytes_per_conn` among the servers (the figure that counts).
    pub bytes_per_conn: f64,
    /// CPU and memory of every watched process over connect and settle.
    pub usage: Usage,
}

/// Runs the idle scenario.
pub async fn run(target: &Target, cfg: &IdleConfig) -> Result<IdleResult, RunError> {
    let servers = target.addrs();
    if servers.is_empty() {
        return Err(RunError::NoServers);
    }
    let system = target.system;
    // Small client buffers: the tool holds as many connections as the server.
    let dialer = Dialer::new(system, target.transport, target.sources.clone(), 4096);
    let before = target.watch.snapshot();
    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let broken = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let mut per_server = vec![0u64; servers.len()];

    let reporter = cfg.progress.then(|| {
        let (opened, failed, label, total) = (
            opened.clone(),
            failed.clone(),
            cfg.label.clone(),
            cfg.connections,
        );
        let watch = target.watch.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                let snap = watch.snapshot();
                let rss: Vec<String> = watch
                    .procs()
                    .iter()
                    .filter_map(|p| {
                        snap.rss(&p.name)
                            .map(|r| format!("{} {} MiB", p.name, r >> 20))
                    })
                    .collect();
                eprintln!(
                    "[{label} idle] {:>4.0}s open {}/{total} failed {} | rss {}",
                    start.elapsed().as_secs_f64(),
                    opened.load(Ordering::Relaxed),
                    failed.load(Ordering::Relaxed),
                    rss.join(", ")
                );
            }
        })
    });

    let start = Instant::now();
    let mut first_error = None;
    let mut holders = Vec::with_capacity(cfg.connections);
    let servers = &servers;
    let mut attempts = futures_util::stream::iter(0..cfg.connections)
        .map(|i| {
            let server = servers[i % servers.len()];
            let user = format!("{}{i}", cfg.prefix);
            let dialer = &dialer;
            async move { (i % servers.len(), dialer.open(server, i, &user).await) }
        })
        .buffer_unordered(cfg.concurrency.max(1));
    while let Some((s, r)) = attempts.next().await {
        match r {
            Ok(ws) => {
                opened.fetch_add(1, Ordering::Relaxed);
                per_server[s] += 1;
                holders.push(tokio::spawn(hold(ws, system, broken.clone(), stop.clone())));
            }
            Err(e) => {
                failed.fetch_add(1, Ordering::Relaxed);
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    drop(attempts);
    let connect_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(cfg.settle).await;
    let after = target.watch.snapshot();
    tokio::time::sleep(cfg.hold).await;
    let still_open = opened.load(Ordering::Relaxed) - broken.load(Ordering::Relaxed);
    stop.cancel();
    if let Some(r) = reporter {
        let _ = r.await;
    }

    // Close politely, many at a time, without waiting long for any one.
    let mut conns = Vec::with_capacity(holders.len());
    for h in holders {
        if let Ok(Some(ws)) = h.await {
            conns.push(ws);
        }
    }
    futures_util::stream::iter(conns)
        .for_each_concurrent(512, |mut ws| async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close()).await;
        })
        .await;

    let mut res = IdleResult {
        connections: cfg.connections,
        opened: opened.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        first_error,
        connect_s,
        still_open,
        usage: before.usage_until(&after),
        ..Default::default()
    };
    res.connect_rate = res.opened as f64 / connect_s.max(1e-9);
    for (i, spec) in target.servers.iter().enumerate() {
        if spec.pid.is_none() {
            continue;
        }
        let name = server_name(i);
        let (Some(b), Some(a)) = (before.rss(&name), after.rss(&name)) else {
            continue;
        };
        let conns = per_server[i];
        let per = (a as f64 - b as f64) / conns.max(1) as f64;
        res.bytes_per_conn = res.bytes_per_conn.max(per);
        res.servers.push(IdleServer {
            name,
            connections: conns,
            rss_before: b,
            rss_after: a,
            bytes_per_conn: per,
        });
    }
    Ok(res)
}

/// Keeps one connection open: reads (so WebSocket pings are answered by
/// the library and Socket.IO pings by hand) until told to stop.
async fn hold(
    mut ws: Conn,
    system: proto::System,
    broken: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Option<Conn> {
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    loop {
        let frame = tokio::select! {
            _ = &mut cancelled => return Some(ws),
            f = ws.next() => f,
        };
        match frame {
            Some(Ok(t)) => {
                if proto::parse(system, &t) == Incoming::SioPing
                    && ws.send(proto::SIO_PONG.to_owned()).await.is_err()
                {
                    break;
                }
            }
            Some(Err(_)) | None => break,
        }
    }
    broken.fetch_add(1, Ordering::Relaxed);
    None
}
