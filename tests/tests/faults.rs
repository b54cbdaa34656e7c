//! Liveness and faults with real processes (issue 3): `kill -9` of a server
//! and of the relay, a server started before its relay, Redis restarted
//! empty, idle clients, SIGTERM, and a server added at run time.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use switchboard_tests::procs::{RelayProc, ServerProc};
use switchboard_tests::{
    Cluster, LineClient, RedisServer, TcpClient, WsClient, eventually, http_get, metric,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

async fn who(c: &mut WsClient, user: &str) -> String {
    c.send(&format!("WHO {user}")).await;
    c.expect_prefix("O").await
}

/// Sends until one message gets through from `from` to `to` (links may still
/// be coming up); returns how long it took.
async fn delivery_works(
    from: &mut WsClient,
    to: &mut WsClient,
    to_user: &str,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < limit {
        n += 1;
        from.send(&format!("SEND {to_user} probe {n}")).await;
        from.expect_prefix("OK SENT ").await;
        match to.next_within(Duration::from_millis(300)).await {
            switchboard_tests::clients::Seen::Line(l) if l.starts_with("MSG ") => {
                return start.elapsed();
            }
            _ => {}
        }
    }
    panic!("no delivery from {to_user}'s peer within {limit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_purged_within_5_seconds() {
    let redis = RedisServer::start();
    let relay = RelayProc::start(&redis.url(), free_addr(), &[]);
    let mut a = ServerProc::start("a", &redis.url(), relay.link, &[]);
    let b = ServerProc::start("b", &redis.url(), relay.link, &[]);
    a.wait_linked(1);
    b.wait_linked(1);
    let _bob = WsClient::login(a.ws, "bob").await;
    let _carol = TcpClient::login(a.tcp, "carol").await;
    let mut alice = WsClient::login(b.ws, "alice").await;
    assert_eq!(who(&mut alice, "bob").await, "ONLINE bob 1");

    a.proc.kill9();
    let killed = Instant::now();
    let offline = eventually(Duration::from_secs(5), || async {
        let mut probe = WsClient::login(b.ws, "probe").await;
        (who(&mut probe, "bob").await == "OFFLINE bob").then_some(())
    })
    .await;
    let purge_time = killed.elapsed();
    assert!(
        offline.is_some(),
        "bob still online 5 s after kill -9 of his server"
    );
    assert_eq!(who(&mut alice, "carol").await, "OFFLINE carol");
    assert!(
        redis
            .keys("sb:{u:*}:sess")
            .iter()
            .all(|k| k == "sb:{u:alice}:sess" || k == "sb:{u:probe}:sess"),
        "{:?}",
        redis.keys("sb:{u:*}:sess")
    );
    assert!(
        redis.keys("sb:{s:a}:srv").is_empty(),
        "registry entry of a is gone"
    );
    let mut conn = redis.conn();
    let held: u64 = redis::cmd("HLEN")
        .arg("sb:{s:a}:sess")
        .query(&mut conn)
        .expect("hlen");
    assert_eq!(held, 0);
    let (_, servers) = http_get(relay.admin, "/servers").await;
    let servers: serde_json::Value = serde_json::from_str(&servers).expect("servers json");
    assert!(
        servers
            .as_array()
            .expect("array")
            .iter()
            .all(|s| s["id"] != "a"),
        "{servers}"
    );
    let (_, page) = http_get(relay.admin, "/metrics").await;
    assert!(
        metric(&page, "relay_purge_seconds_count").unwrap_or(0.0) >= 1.0,
        "purge time recorded:\n{page}"
    );
    println!("kill -9 of a server -> its users offline elsewhere: {purge_time:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_relink_to_a_restarted_relay_by_themselves() {
    let redis = RedisServer::start();
    let mut relay = RelayProc::start(&redis.url(), free_addr(), &[]);
    let a = ServerProc::start("a", &redis.url(), relay.link, &[]);
    let b = ServerProc::start("b", &redis.url(), relay.link, &[]);
    a.wait_linked(1);
    b.wait_linked(1);
    let mut alice = WsClient::login(a.ws, "alice").await;
    let mut bob = WsClient::login(b.ws, "bob").await;
    delivery_works(&mut alice, &mut bob, "bob", Duration::from_secs(5)).await;

    let link = relay.link;
    relay.proc.kill9();
    // While the relay is away, local traffic still works and health says degraded.
    let mut bob2 = WsClient::login(b.ws, "bob2").await;
    delivery_works(&mut bob, &mut bob2, "bob2", Duration::from_secs(5)).await;
    let degraded = eventually(Duration::from_secs(6), || async {
        let (status, body) = http_get(a.ws, "/healthz").await;
        (status == 503 && body.contains("degraded")).then_some(())
    })
    .await;
    assert!(
        degraded.is_some(),
        "server a reports degraded without a relay"
    );
    // Cross-server sends are still stored and acknowledged.
    alice.send("SEND bob while the relay is down").await;
    alice.expect_prefix("OK SENT ").await;

    let restarted = Instant::now();
    let _relay2 = RelayProc::start(&redis.url(), link, &[]);
    a.wait_linked(2);
    b.wait_linked(2);
    let took = delivery_works(&mut alice, &mut bob, "bob", Duration::from_secs(10)).await;
    println!(
        "relay restart -> cross-server delivery works again: {:?}",
        restarted.elapsed()
    );
    assert!(took < Duration::from_secs(10));
    // The message sent while the relay was down is in bob's inbox.
    bob.send("SYNC 0").await;
    let mut found = false;
    loop {
        let line = bob.recv().await;
        if line.starts_with("OK SYNC") {
            break;
        }
        found |= line.ends_with("while the relay is down");
    }
    assert!(
        found,
        "the message stored while the relay was down is recovered by SYNC"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_before_the_relay_links_when_it_appears() {
    let redis = RedisServer::start();
    let link = free_addr();
    let a = ServerProc::start("a", &redis.url(), link, &[]);
    let b = ServerProc::start("b", &redis.url(), link, &[]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let _relay = RelayProc::start(&redis.url(), link, &[]);
    a.wait_linked(1);
    b.wait_linked(1);
    let mut alice = WsClient::login(a.ws, "alice").await;
    let mut bob = WsClient::login(b.ws, "bob").await;
    delivery_works(&mut alice, &mut bob, "bob", Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_visible_again_after_redis_restarts_empty() {
    let mut c = Cluster::start(2).await;
    let mut alice = WsClient::login(c.server("a").ws, "alice").await;
    let mut bob = TcpClient::login(c.server("b").tcp, "bob").await;
    c.redis.restart(true);
    assert!(c.redis.keys("sb:{u:*}:sess").is_empty());
    let back = eventually(Duration::from_secs(8), || async {
        (c.redis.keys("sb:{u:*}:sess") == ["sb:{u:alice}:sess", "sb:{u:bob}:sess"]).then_some(())
    })
    .await;
    assert!(
        back.is_some(),
        "sessions written again: {:?}",
        c.redis.keys("sb:{u:*}:sess")
    );
    alice.send("WHO bob").await;
    assert_eq!(alice.expect_prefix("O").await, "ONLINE bob 1");
    alice.send("SEND bob after the flush").await;
    alice.expect_prefix("OK SENT ").await;
    assert!(bob.expect_prefix("MSG ").await.ends_with("after the flush"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_closed_after_the_idle_timeout() {
    let c = Cluster::start_with(1, |cfg| {
        cfg.limits.ping_interval = Duration::from_millis(200);
        cfg.limits.idle_timeout = Duration::from_millis(1200);
    })
    .await;
    let a = c.server("a");
    // A WebSocket client that logs in at the handshake, then never reads or answers pings.
    let mut raw = tokio::net::TcpStream::connect(a.ws).await.expect("connect");
    raw.write_all(
        format!(
            "GET /ws?user=ghost HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            a.ws
        )
        .as_bytes(),
    )
    .await
    .expect("handshake");
    let mut telnet = TcpClient::login(a.tcp, "quiet").await;
    eventually(Duration::from_secs(3), || async {
        (!c.redis.keys("sb:{u:ghost}:sess").is_empty()).then_some(())
    })
    .await
    .expect("ghost logged in");
    let start = Instant::now();
    assert_eq!(telnet.recv().await, "ERR limit idle timeout");
    telnet.expect_closed().await;
    // The WebSocket side: read everything until EOF; the last frame is a close with 1001.
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut bytes))
        .await
        .expect("closed in time")
        .expect("read");
    let closed_after = start.elapsed();
    let close_at = bytes
        .windows(2)
        .rposition(|w| w[0] == 0x88)
        .expect("a close frame");
    let code = u16::from_be_bytes([bytes[close_at + 2], bytes[close_at + 3]]);
    assert_eq!(code, 1001);
    assert!(
        bytes.windows(1).any(|w| w[0] == 0x89),
        "the server pinged the silent client"
    );
    assert!(closed_after < Duration::from_secs(4));
    let gone = eventually(Duration::from_secs(3), || async {
        (c.redis.keys("sb:{u:*}:sess").is_empty()).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "idle sessions removed from Redis: {:?}",
        c.redis.keys("sb:{u:*}:sess")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_sessions_cleans_redis_and_exits_0() {
    let redis = RedisServer::start();
    let relay = RelayProc::start(&redis.url(), free_addr(), &[]);
    let mut a = ServerProc::start("a", &redis.url(), relay.link, &[]);
    a.wait_linked(1);
    let mut ws = WsClient::login(a.ws, "alice").await;
    let mut telnet = TcpClient::login(a.tcp, "bob").await;
    assert!(!redis.keys("sb:{u:*}:sess").is_empty());
    a.proc.term();
    assert_eq!(ws.expect_close().await, Some(1001));
    assert_eq!(telnet.recv().await, "BYE");
    let status = a
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("exits in time");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        redis.keys("sb:{u:*}:sess").is_empty(),
        "{:?}",
        redis.keys("sb:{u:*}:sess")
    );
    assert!(
        redis.keys("sb:{s:*}:srv").is_empty(),
        "{:?}",
        redis.keys("sb:{s:*}:srv")
    );
    let mut conn = redis.conn();
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg("sb:servers")
        .query(&mut conn)
        .expect("smembers");
    assert!(members.is_empty(), "{members:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_server_joins_a_running_cluster() {
    let mut c = Cluster::start(2).await;
    let mut alice = WsClient::login(c.server("a").ws, "alice").await;
    let mut bob = WsClient::login(c.server("b").ws, "bob").await;
    c.add_server_with("c", |_| {}).await;
    let mut carol = WsClient::login(c.server("c").ws, "carol").await;
    delivery_works(&mut alice, &mut carol, "carol", Duration::from_secs(5)).await;
    delivery_works(&mut carol, &mut bob, "bob", Duration::from_secs(5)).await;
    let (_, servers) = c.relay.get("/servers").await;
    let servers: serde_json::Value = serde_json::from_str(&servers).expect("json");
    let ids: Vec<&str> = servers
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert!(ids.contains(&"c"), "{servers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_removes_what_its_previous_life_left() {
    let redis = RedisServer::start();
    // No relay anywhere: nobody but the server itself can clean up.
    let nowhere = free_addr();
    let mut a = ServerProc::start("a", &redis.url(), nowhere, &[]);
    let _bob = WsClient::login(a.ws, "bob").await;
    let epoch = |conn: &mut redis::Connection| -> Option<String> {
        redis::cmd("HGET")
            .arg("sb:{s:a}:srv")
            .arg("epoch")
            .query(conn)
            .expect("hget")
    };
    let first = eventually(Duration::from_secs(5), || async {
        epoch(&mut redis.conn())
    })
    .await
    .expect("registered");
    a.proc.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        redis.keys("sb:{u:*}:sess"),
        ["sb:{u:bob}:sess"],
        "the crash left bob behind"
    );

    let a2 = ServerProc::start("a", &redis.url(), nowhere, &[]);
    let cleaned = eventually(Duration::from_secs(5), || async {
        redis.keys("sb:{u:*}:sess").is_empty().then_some(())
    })
    .await;
    assert!(
        cleaned.is_some(),
        "the new start removed the old sessions: {:?}",
        redis.keys("sb:{u:*}:sess")
    );
    let second = eventually(Duration::from_secs(5), || async {
        epoch(&mut redis.conn()).filter(|e| *e != first)
    })
    .await;
    assert!(second.is_some(), "a new epoch is registered");
    let mut carol = WsClient::login(a2.ws, "carol").await;
    carol.send("WHO bob").await;
    assert_eq!(carol.recv().await, "OFFLINE bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_relays_delivery_survives_the_loss_of_one() {
    let redis = RedisServer::start();
    let mut r1 = RelayProc::start(&redis.url(), free_addr(), &["--relay-id", "r1"]);
    let r2 = RelayProc::start(&redis.url(), free_addr(), &["--relay-id", "r2"]);
    let relays = format!("{},{}", r1.link, r2.link);
    let a = ServerProc::start("a", &redis.url(), r1.link, &["--relay", &relays]);
    let b = ServerProc::start("b", &redis.url(), r1.link, &["--relay", &relays]);
    // Each server links to both relays.
    a.wait_linked(2);
    b.wait_linked(2);
    let mut alice = WsClient::login(a.ws, "alice").await;
    let mut bob = WsClient::login(b.ws, "bob").await;
    delivery_works(&mut alice, &mut bob, "bob", Duration::from_secs(5)).await;

    r1.proc.kill9();
    // The other relay carries on at once: no relink, no lost push.
    let took = delivery_works(&mut alice, &mut bob, "bob", Duration::from_secs(5)).await;
    delivery_works(&mut bob, &mut alice, "alice", Duration::from_secs(5)).await;
    println!("one of two relays killed -> delivery through the other after {took:?}");
    let (_, servers) = http_get(r2.admin, "/servers").await;
    let servers: serde_json::Value = serde_json::from_str(&servers).expect("json");
    let up = servers
        .as_array()
        .expect("array")
        .iter()
        .filter(|s| s["link"] == "up")
        .count();
    assert_eq!(up, 2, "both servers still linked to r2: {servers}");
}
