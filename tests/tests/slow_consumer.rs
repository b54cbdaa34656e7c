//! A slow consumer (issue 13, item 5), with real processes: a client that
//! never reads while 1,000 messages a second flow to it is closed when its
//! queue limit is hit, and later gets every acknowledged message by `SYNC`.
//! The server's RSS and the other users' p99 (with the same flow going to a
//! client that reads, then to the one that does not) are measured and
//! printed, not asserted (no timed assertions in tests).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchboard_tests::clients::Seen;
use switchboard_tests::procs::{RelayProc, ServerProc, any_port};
use switchboard_tests::{LineClient, RedisServer, WsClient, http_get, metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn p99(mut v: Vec<Duration>) -> Duration {
    assert!(!v.is_empty(), "no latency samples");
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// Carol writes to dave every 10 ms until `stop`; the time from each send
/// to dave's `MSG`.
async fn probe(addr: SocketAddr, tag: &str, stop: CancellationToken) -> Vec<Duration> {
    let mut carol = WsClient::login(addr, &format!("carol-{tag}")).await;
    let mut dave = WsClient::login(addr, &format!("dave-{tag}")).await;
    let origin = Instant::now();
    let reader_stop = stop.clone();
    let reader = tokio::spawn(async move {
        let mut samples = Vec::new();
        loop {
            match dave.next_within(Duration::from_millis(200)).await {
                Seen::Line(l) if l.starts_with("MSG ") => {
                    let sent_us: Option<u64> = l
                        .split_whitespace()
                        .nth(6)
                        .and_then(|t| t.strip_prefix('t'))
                        .and_then(|t| t.parse().ok());
                    if let Some(us) = sent_us {
                        let now = origin.elapsed();
                        samples.push(now.saturating_sub(Duration::from_micros(us)));
                    }
                }
                Seen::Line(_) => {}
                Seen::Timeout if reader_stop.is_cancelled() => return samples,
                Seen::Timeout => {}
                Seen::Closed(c) => panic!("dave closed: {c:?}"),
            }
        }
    });
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.is_cancelled() {
        tick.tick().await;
        let us = origin.elapsed().as_micros();
        carol.send(&format!("SEND dave-{tag} t{us}")).await;
        while let Seen::Line(_) = carol.next_within(Duration::from_millis(1)).await {}
    }
    reader.await.expect("reader")
}

/// Sends 1,000 messages a second of `size` bytes to `to` from `from` until
/// `stop`; the ids acknowledged.
async fn flood(addr: SocketAddr, to: String, size: usize, stop: CancellationToken) -> Vec<String> {
    let mut from = WsClient::login(addr, &format!("flood-{to}")).await;
    let text = "x".repeat(size);
    let mut acked = Vec::new();
    let mut sent = 0u64;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.is_cancelled() {
        tick.tick().await;
        // 10 every 10 ms: 1,000 a second.
        let due = (start.elapsed().as_millis() as u64) + 10;
        while sent < due {
            sent += 1;
            from.send(&format!("SEND {to} {sent} {text}")).await;
        }
        while let Seen::Line(l) = from.next_within(Duration::from_millis(1)).await {
            if let Some(id) = l
                .strip_prefix("OK SENT ")
                .and_then(|r| r.split_whitespace().next())
            {
                acked.push(id.to_owned());
            } else {
                panic!("flood to {to}: {l}");
            }
        }
    }
    // The answers still on their way.
    while let Seen::Line(l) = from.next_within(Duration::from_secs(2)).await {
        if let Some(id) = l
            .strip_prefix("OK SENT ")
            .and_then(|r| r.split_whitespace().next())
        {
            acked.push(id.to_owned());
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_and_gets_everything_by_sync() {
    const SIZE: usize = 4096;
    let redis = RedisServer::start();
    let relay = RelayProc::start(&redis.url(), any_port(), &[]);
    let a = ServerProc::start(
        "a",
        &redis.url(),
        relay.link,
        &["--rate-limit", "5000", "--rate-burst", "5000"],
    );
    a.wait_linked(1);
    let pid = a.proc.pid();
    let rss_idle = rss_kib(pid);

    // Baseline: the same flow to a client that reads everything.
    let mut fast = WsClient::login(a.ws, "fast").await;
    let stop = CancellationToken::new();
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            match fast.next_within(Duration::from_secs(3)).await {
                Seen::Line(_) => n += 1,
                _ => return n,
            }
        }
    });
    let probe_base = tokio::spawn(probe(a.ws, "base", stop.clone()));
    let flood_base = tokio::spawn(flood(a.ws, "fast".into(), SIZE, stop.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let base = probe_base.await.expect("probe");
    let base_acked = flood_base.await.expect("flood").len();
    let fast_got = reader.await.expect("reader");
    let rss_base = rss_kib(pid);

    // The slow consumer: logs in over TCP and never reads again.
    let mut slow = tokio::net::TcpStream::connect(a.tcp)
        .await
        .expect("connect");
    slow.write_all(b"LOGIN slow\n").await.expect("login");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stop = CancellationToken::new();
    let probe_slow = tokio::spawn(probe(a.ws, "slow", stop.clone()));
    let flood_slow = tokio::spawn(flood(a.ws, "slow".into(), SIZE, stop.clone()));
    let start = Instant::now();
    let mut rss_max = 0;
    let mut kicked_after = None;
    while start.elapsed() < Duration::from_secs(20) {
        rss_max = rss_max.max(rss_kib(pid));
        let (_, page) = http_get(a.ws, "/metrics").await;
        if metric(&page, "server_slow_consumers_total").unwrap_or(0.0) >= 1.0
            && kicked_after.is_none()
        {
            kicked_after = Some(start.elapsed());
        }
        // Keep the flow on for a second after the kick: the inbox goes on.
        if kicked_after.is_some_and(|k| start.elapsed() > k + Duration::from_secs(1)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let during = probe_slow.await.expect("probe");
    let acked = flood_slow.await.expect("flood");
    let Some(kicked_after) = kicked_after else {
        let (_, page) = http_get(a.ws, "/metrics").await;
        panic!(
            "the slow consumer was not closed within 20 s; {} sends acknowledged; server:\n{page}\n{}",
            acked.len(),
            a.proc.output()
        );
    };

    // Its connection was closed: what the kernel held drains, then EOF.
    let drained = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    })
    .await
    .expect("the slow consumer's connection was never closed");

    // Later, it gets every acknowledged message by SYNC.
    let mut back = WsClient::login(a.ws, "slow").await;
    while let Seen::Line(_) = back.next_within(Duration::from_millis(700)).await {}
    back.send("SYNC 0").await;
    let mut ids = HashSet::new();
    loop {
        let l = back.recv().await;
        if l.starts_with("OK SYNC") {
            break;
        }
        assert!(l.starts_with("MSG "), "{l}");
        if let Some(id) = l.split_whitespace().nth(4) {
            ids.insert(id.to_owned());
        }
    }
    let missing = acked.iter().filter(|id| !ids.contains(*id)).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged messages missing from SYNC",
        acked.len()
    );
    assert!(
        acked.len() > 256,
        "the flow was too short to fill a queue: {}",
        acked.len()
    );

    println!(
        "slow consumer: closed {kicked_after:?} into a 1,000/s flow of {SIZE} B; {} acknowledged, all {} back by SYNC; {drained} B were left in its socket",
        acked.len(),
        ids.len()
    );
    println!(
        "server RSS: {} MiB idle, {} MiB after the 3 s flow to a reader, {} MiB max with the slow consumer",
        rss_idle / 1024,
        rss_base / 1024,
        rss_max / 1024
    );
    println!(
        "others' p99 (carol -> dave, send to MSG): {:?} with the flow to a reader ({} samples; {base_acked} sent, {fast_got} read), {:?} with the slow consumer ({} samples)",
        p99(base.clone()),
        base.len(),
        p99(during.clone()),
        during.len()
    );
}
