//! The soak run (issue 13, item 7): not part of `cargo test` (ignored);
//! `scripts/soak` runs it on release binaries.
//!
//! Redis (append-only, fsync always), a relay and two servers as processes;
//! clients of the Rust client crate (reconnect with backoff and jitter,
//! unanswered sends written again with their `cid`) send direct messages at
//! a steady rate for the whole run, while every `kill_every` a server or
//! the relay (in turn: a, relay, b, relay, ...) is killed with `kill -9`
//! and started again on the same ports. Every second it records the RSS,
//! open file descriptors and CPU of every process; at the end it writes
//! them as CSV and an SVG plot, and counts messages acknowledged but never
//! delivered (lost: must be 0) and delivered more than once (duplicated).
//!
//! Settings (environment): `SB_SOAK_SECS` (1200), `SB_SOAK_RATE` messages
//! per second (7500: more than half the highest durable rate in
//! BENCHMARKS.md, 10,000/s),
//! `SB_SOAK_KILL_EVERY` seconds (180), `SB_SOAK_USERS` (100),
//! `SB_SOAK_OUT` directory (`.run/soak`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchboard_client::{Client, Config, Endpoint, Event};
use switchboard_tests::RedisServer;
use switchboard_tests::procs::{RelayProc, ServerProc, any_port};
use tokio::sync::Mutex;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// One process as the run keeps it.
enum Node {
    Relay(RelayProc),
    Server(ServerProc),
}

impl Node {
    fn pid(&self) -> u32 {
        match self {
            Node::Relay(r) => r.proc.pid(),
            Node::Server(s) => s.proc.pid(),
        }
    }
}

/// One row of the record.
struct Row {
    t: f64,
    name: &'static str,
    rss_mib: f64,
    fds: usize,
    cpu_pct: f64,
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a soak run of 20 minutes: scripts/soak"]
async fn soak() {
    let secs: u64 = env("SB_SOAK_SECS", 1200);
    let rate: u64 = env("SB_SOAK_RATE", 7500);
    let kill_every: u64 = env("SB_SOAK_KILL_EVERY", 180);
    let users: usize = env("SB_SOAK_USERS", 100);
    let out = PathBuf::from(env("SB_SOAK_OUT", ".run/soak".to_owned()));
    std::fs::create_dir_all(&out).expect("output directory");

    let redis = RedisServer::start();
    let link = any_port();
    let (a_ws, a_tcp, b_ws, b_tcp) = (any_port(), any_port(), any_port(), any_port());
    let relay_link = link.to_string();
    let start_server = |id: &str, ws: SocketAddr, tcp: SocketAddr| {
        let (ws, tcp) = (ws.to_string(), tcp.to_string());
        ServerProc::start(
            id,
            &redis.url(),
            link,
            &[
                "--ws",
                &ws,
                "--tcp",
                &tcp,
                "--relay",
                &relay_link,
                "--rate-limit",
                "100000",
                "--rate-burst",
                "100000",
                "--max-connections",
                "20000",
            ],
        )
    };
    let mut nodes: Vec<(&'static str, Node)> = vec![
        (
            "relay",
            Node::Relay(RelayProc::start(&redis.url(), link, &[])),
        ),
        ("server-a", Node::Server(start_server("a", a_ws, a_tcp))),
        ("server-b", Node::Server(start_server("b", b_ws, b_tcp))),
    ];
    let redis_pid = redis.pid().expect("redis pid");

    // Clients: even users prefer a, odd ones b.
    let (ea, eb) = (Endpoint::ws(a_ws), Endpoint::ws(b_ws));
    let delivered: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let mut clients = Vec::new();
    for i in 0..users {
        let servers = if i % 2 == 0 {
            vec![ea.clone(), eb.clone()]
        } else {
            vec![eb.clone(), ea.clone()]
        };
        let mut config = Config::new(format!("s{i}"), servers);
        config.backoff_max = Duration::from_secs(2);
        config.event_queue = 65_536;
        let (client, mut events) = Client::connect(config).await.expect("connect");
        let delivered = Arc::clone(&delivered);
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let Event::Message { seq: Some(_), msg } = ev
                    && msg.to != msg.from
                    && msg.to == format!("s{i}")
                {
                    *delivered.lock().await.entry(msg.text).or_default() += 1;
                }
            }
        });
        clients.push(client);
    }

    // Senders: `rate` a second in all, spread over the users.
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let run_for = Duration::from_secs(secs);
    let sender = {
        let clients = clients.clone();
        let (acked, failed) = (Arc::clone(&acked), Arc::clone(&failed));
        tokio::spawn(async move {
            let mut k: u64 = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut inflight = tokio::task::JoinSet::new();
            while started.elapsed() < run_for {
                tick.tick().await;
                let due = started.elapsed().as_millis() as u64 * rate / 1000;
                while k < due {
                    k += 1;
                    let from = (k as usize) % users;
                    let to = (from + 1 + (k as usize / users) % (users - 1)) % users;
                    let client = clients[from].clone();
                    let (acked, failed) = (Arc::clone(&acked), Arc::clone(&failed));
                    inflight.spawn(async move {
                        let text = format!("m{k}");
                        match client.send(&format!("s{to}"), &text).await {
                            Ok(_) => acked.lock().await.push(text),
                            Err(_) => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
                while inflight.try_join_next().is_some() {}
            }
            while inflight.join_next().await.is_some() {}
            k
        })
    };

    // Faults and the record, once a second.
    let mut rows = Vec::new();
    let mut last_cpu: HashMap<&'static str, (u32, f64)> = HashMap::new();
    let mut next_kill = Duration::from_secs(kill_every);
    let order = ["server-a", "relay", "server-b", "relay"];
    let mut kills = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while started.elapsed() < run_for {
        tick.tick().await;
        let t = started.elapsed().as_secs_f64();
        let mut pids: Vec<(&'static str, u32)> = vec![("redis", redis_pid)];
        pids.extend(nodes.iter().map(|(n, node)| (*n, node.pid())));
        for (name, pid) in pids {
            let Some(s) = loadgen::procs::sample(pid) else {
                continue;
            };
            let cpu_pct = match last_cpu.get(name) {
                Some((p, c)) if *p == pid => (s.cpu_s - c) * 100.0,
                _ => 0.0,
            };
            last_cpu.insert(name, (pid, s.cpu_s));
            rows.push(Row {
                t,
                name,
                rss_mib: s.rss as f64 / (1024.0 * 1024.0),
                fds: open_fds(pid),
                cpu_pct,
            });
        }
        if started.elapsed() >= next_kill && started.elapsed() + Duration::from_secs(10) < run_for {
            let victim = order[kills % order.len()];
            kills += 1;
            next_kill += Duration::from_secs(kill_every);
            let entry = nodes.iter_mut().find(|(n, _)| *n == victim).expect("node");
            println!("{t:.0} s: kill -9 {victim}");
            entry.1 = match &mut entry.1 {
                Node::Relay(r) => {
                    r.proc.kill9();
                    Node::Relay(RelayProc::start(&redis.url(), link, &[]))
                }
                Node::Server(s) => {
                    s.proc.kill9();
                    let (ws, tcp) = if s.id == "a" {
                        (a_ws, a_tcp)
                    } else {
                        (b_ws, b_tcp)
                    };
                    let id = s.id.clone();
                    Node::Server(start_server(&id, ws, tcp))
                }
            };
        }
    }
    let sent = sender.await.expect("sender");

    // Let the last ones arrive, then count.
    let acked = acked.lock().await.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let lost = loop {
        let got = delivered.lock().await;
        let lost: Vec<&String> = acked.iter().filter(|t| !got.contains_key(*t)).collect();
        if lost.is_empty() || Instant::now() > deadline {
            break lost.into_iter().cloned().collect::<Vec<_>>();
        }
        drop(got);
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let duplicated = delivered.lock().await.values().filter(|&&n| n > 1).count();

    write_record(&out, &rows);
    let mut summary = format!(
        "soak: {secs} s at {rate} msg/s, {kills} kill -9 (every {kill_every} s), {users} users: {sent} sent, {} acknowledged, {} not answered (timeouts), {} lost, {duplicated} duplicated\n",
        acked.len(),
        failed.load(Ordering::Relaxed),
        lost.len()
    );
    for name in ["redis", "relay", "server-a", "server-b"] {
        let of: Vec<&Row> = rows.iter().filter(|r| r.name == name).collect();
        let max_rss = of.iter().map(|r| r.rss_mib).fold(0.0, f64::max);
        let last_rss = of.last().map_or(0.0, |r| r.rss_mib);
        let max_fds = of.iter().map(|r| r.fds).max().unwrap_or(0);
        let last_fds = of.last().map_or(0, |r| r.fds);
        let cpu = of.iter().map(|r| r.cpu_pct).sum::<f64>() / of.len().max(1) as f64;
        let _ = writeln!(
            summary,
            "  {name:9} RSS max {max_rss:.0} MiB (end {last_rss:.0}), fds max {max_fds} (end {last_fds}), CPU mean {cpu:.0}%"
        );
    }
    print!("{summary}");
    std::fs::write(out.join("summary.txt"), &summary).expect("summary");
    println!("record: {}", out.join("soak.svg").display());
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}

/// One measure of a row, for a panel of the plot.
type Measure = fn(&Row) -> f64;

/// `soak.csv` and `soak.svg` (three panels over time: RSS, fds, CPU).
fn write_record(out: &std::path::Path, rows: &[Row]) {
    let mut csv = String::from("t_s,process,rss_mib,fds,cpu_pct\n");
    for r in rows {
        let _ = writeln!(
            csv,
            "{:.1},{},{:.1},{},{:.1}",
            r.t, r.name, r.rss_mib, r.fds, r.cpu_pct
        );
    }
    std::fs::write(out.join("soak.csv"), csv).expect("csv");

    const COLORS: [(&str, &str); 4] = [
        ("redis", "#d62728"),
        ("relay", "#2ca02c"),
        ("server-a", "#1f77b4"),
        ("server-b", "#9467bd"),
    ];
    let (w, ph, left) = (900.0, 200.0, 60.0);
    let max_t = rows.iter().map(|r| r.t).fold(1.0, f64::max);
    let panels: [(&str, Measure); 3] = [
        ("RSS, MiB", |r| r.rss_mib),
        ("open fds", |r| r.fds as f64),
        ("CPU, % of one core", |r| r.cpu_pct),
    ];
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{}" font-family="sans-serif" font-size="12">"##,
        ph * 3.0 + 80.0
    );
    for (i, (title, value)) in panels.iter().enumerate() {
        let top = 30.0 + i as f64 * (ph + 20.0);
        let max_v = rows.iter().map(value).fold(1.0, f64::max) * 1.1;
        let _ = write!(
            svg,
            r##"<rect x="{left}" y="{top}" width="{}" height="{}" fill="none" stroke="#999"/><text x="{left}" y="{}">{title} (max {max_v:.0})</text>"##,
            w - left - 20.0,
            ph - 30.0,
            top - 4.0
        );
        for (name, color) in COLORS {
            let pts: Vec<String> = rows
                .iter()
                .filter(|r| r.name == name)
                .map(|r| {
                    let x = left + r.t / max_t * (w - left - 20.0);
                    let y = top + (ph - 30.0) * (1.0 - value(r) / max_v);
                    format!("{x:.1},{y:.1}")
                })
                .collect();
            let _ = write!(
                svg,
                r##"<polyline fill="none" stroke="{color}" points="{}"/>"##,
                pts.join(" ")
            );
        }
    }
    let y = ph * 3.0 + 60.0;
    for (k, (name, color)) in COLORS.iter().enumerate() {
        let x = left + k as f64 * 120.0;
        let _ = write!(
            svg,
            r##"<rect x="{x}" y="{}" width="10" height="10" fill="{color}"/><text x="{}" y="{y}">{name}</text>"##,
            y - 10.0,
            x + 14.0
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{}" y="{}">time, s (0 to {max_t:.0})</text></svg>"##,
        w / 2.0,
        y + 16.0
    );
    std::fs::write(out.join("soak.svg"), svg).expect("svg");
}
