//! A reconnect storm (issue 13, item 6), with real processes: clients of
//! the Rust client crate on two servers (caps raised), `kill -9` of one;
//! its clients reconnect to the other by themselves (backoff with jitter).
//! All are back, the directory in Redis counts exactly the live sessions,
//! and no message sent to them while they were away is lost. The time until
//! all are back is printed. `SB_STORM_CLIENTS` sets the number (default
//! 2,000; the 10,000 run is the same test with the variable set).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use switchboard_client::{Client, Config, Endpoint, Event};
use switchboard_tests::RedisServer;
use switchboard_tests::procs::{RelayProc, ServerProc, any_port};
use tokio::sync::Mutex;

/// The soft limit on open files of this process.
fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024)
}

/// Live sessions in the directory: the sum of every server's session index.
fn directory_count(redis: &RedisServer) -> u64 {
    let mut conn = redis.conn();
    ["a", "b"]
        .iter()
        .map(|s| {
            redis::cmd("HLEN")
                .arg(format!("sb:{{s:{s}}}:sess"))
                .query::<u64>(&mut conn)
                .unwrap_or(0)
        })
        .sum()
}

/// Sessions recorded per user (the other half of the directory).
fn user_sessions(redis: &RedisServer, users: usize) -> u64 {
    let mut conn = redis.conn();
    let mut pipe = redis::pipe();
    for i in 0..users {
        pipe.cmd("HLEN").arg(format!("sb:{{u:u{i}}}:sess"));
    }
    let counts: Vec<u64> = pipe.query(&mut conn).unwrap_or_default();
    counts.iter().sum()
}

struct Tracked {
    /// Logins on server b reported by the client (for a client that was on
    /// a, only its reconnect).
    on_b: AtomicUsize,
    /// Texts of direct messages received.
    got: Mutex<HashSet<String>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_server_all_come_back_on_the_other_and_lose_nothing() {
    let wanted: usize = std::env::var("SB_STORM_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    // Each client is one socket here; leave room for the rest.
    let n = wanted.min(open_files_limit().saturating_sub(256));
    let cap = (n + 100).to_string();
    let flags = [
        "--max-connections",
        cap.as_str(),
        "--max-connections-per-ip",
        cap.as_str(),
        // One user writes to every user of a, as fast as they are stored.
        "--rate-limit",
        "5000",
        "--rate-burst",
        "5000",
    ];
    let redis = RedisServer::start();
    let relay = RelayProc::start(&redis.url(), any_port(), &[]);
    let mut a = ServerProc::start("a", &redis.url(), relay.link, &flags);
    let b = ServerProc::start("b", &redis.url(), relay.link, &flags);
    a.wait_linked(1);
    b.wait_linked(1);
    let (ea, eb) = (Endpoint::ws(a.ws), Endpoint::ws(b.ws));

    // Even users prefer a, odd ones b.
    let started = Instant::now();
    let mut clients = Vec::with_capacity(n);
    let mut tracked = Vec::with_capacity(n);
    for i in 0..n {
        let servers = if i % 2 == 0 {
            vec![ea.clone(), eb.clone()]
        } else {
            vec![eb.clone(), ea.clone()]
        };
        let mut config = Config::new(format!("u{i}"), servers);
        config.backoff_first = Duration::from_millis(100);
        config.backoff_max = Duration::from_secs(2);
        let (client, mut events) = Client::connect(config).await.expect("connect");
        let t = Arc::new(Tracked {
            on_b: AtomicUsize::new(0),
            got: Mutex::new(HashSet::new()),
        });
        let t2 = Arc::clone(&t);
        let b_endpoint = eb.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                match ev {
                    Event::Connected { endpoint, .. } if endpoint == b_endpoint => {
                        t2.on_b.fetch_add(1, Ordering::SeqCst);
                    }
                    Event::Message { msg, .. } => {
                        t2.got.lock().await.insert(msg.text);
                    }
                    _ => {}
                }
            }
        });
        clients.push(client);
        tracked.push(t);
    }
    println!("{n} clients connected in {:?}", started.elapsed());
    let deadline = Instant::now() + Duration::from_secs(30);
    while directory_count(&redis) != n as u64 {
        assert!(
            Instant::now() < deadline,
            "directory never counted {n}: {}",
            directory_count(&redis)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    a.proc.kill9();
    let killed = Instant::now();
    // While they come back, one user on b writes to every user that was on a.
    let on_a: Vec<usize> = (0..n).step_by(2).collect();
    let sender = clients[1].clone();
    let to = on_a.clone();
    let sending = tokio::spawn(async move {
        for i in to {
            sender
                .send(&format!("u{i}"), &format!("while-away-{i}"))
                .await
                .expect("stored");
        }
        killed.elapsed()
    });

    // Every client of a logs in again (on b: a is gone).
    let deadline = killed + Duration::from_secs(60);
    loop {
        let back = on_a
            .iter()
            .filter(|&&i| tracked[i].on_b.load(Ordering::SeqCst) >= 1)
            .count();
        if back == on_a.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{back} of {} clients of the killed server back after 60 s",
            on_a.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_back = killed.elapsed();
    let sent_done = sending.await.expect("sender");

    // Nothing lost: each got the message written while it was away.
    let deadline = Instant::now() + Duration::from_secs(30);
    for &i in &on_a {
        let want = format!("while-away-{i}");
        while !tracked[i].got.lock().await.contains(&want) {
            assert!(Instant::now() < deadline, "u{i} never got {want}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The directory counts exactly the live sessions: a's purged, all on b.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (dir, users) = (directory_count(&redis), user_sessions(&redis, n));
        if dir == n as u64 && users == n as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "directory counts {dir} (index) and {users} (users) for {n} live sessions"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let settled = killed.elapsed();
    println!(
        "storm: {n} clients, kill -9 of a ({} clients): all back on b {all_back:?} after the kill; {} messages to them stored meanwhile ({sent_done:?}), none lost; directory exactly {n} after {settled:?}",
        on_a.len(),
        on_a.len()
    );
    for c in &clients {
        c.close().await;
    }
}
