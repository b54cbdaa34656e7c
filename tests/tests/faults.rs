//! Liveness and faults with real processes (issue 3): `kill -9` of a server
//! and of the relay, a server started before its relay, Redis restarted
//! empty, idle clients, SIGTERM (also with sends and pushes in flight), a
//! server added at run time, a relay gone silent, Redis down, the registry
//! TTL, and a server that refuses to start without a way to authenticate.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use switchboard_tests::clients::Seen;
use switchboard_tests::procs::{RelayProc, ServerProc};
use switchboard_tests::{
    Cluster, LineClient, RedisServer, TcpClient, WsClient, eventually, http_get, metric,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener as AsyncListener;
use tokio_tungstenite::tungstenite::Message;

/// Port 0: the process picks a free port and logs it.
/// Port 0: the process picks one and reports it.
fn port_zero() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

async fn who(c: &mut WsClient, user: &str) -> String {
    c.send(&format!("WHO {user}")).await;
    c.expect_prefix("O").await
}

/// Sends one probe from `from` to `to_user`, once, and asserts that `to`
/// gets it pushed exactly once; returns how long that took. Callers wait
/// for the links it needs first: a push that is lost fails here.
async fn one_probe_arrives_once(
    from: &mut WsClient,
    to: &mut WsClient,
    to_user: &str,
    label: &str,
) -> Duration {
    let start = Instant::now();
    let text = format!("probe {label}");
    from.send(&format!("SEND {to_user} {text}")).await;
    from.expect_prefix("OK SENT ").await;
    let got = to.expect_prefix("MSG ").await;
    assert!(got.ends_with(&format!(" {text}")), "{to_user} got {got}");
    let took = start.elapsed();
    // Nothing more: the push came once.
    to.send("PING").await;
    loop {
        let line = to.recv().await;
        if line == "PONG" {
            break;
        }
        assert!(!line.ends_with(&format!(" {text}")), "pushed twice: {line}");
    }
    took
}

/// Reads `server_links_up` from a server process's `/metrics`.
async fn links_up(server: &ServerProc) -> f64 {
    let (_, page) = http_get(server.ws, "/metrics").await;
    metric(&page, "server_links_up").unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_purged_within_5_seconds() {
    let redis = RedisServer::start();
    let relay = RelayProc::start(&redis.url(), port_zero(), &[]);
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
    let mut relay = RelayProc::start(&redis.url(), port_zero(), &[]);
    let a = ServerProc::start("a", &redis.url(), relay.link, &[]);
    let b = ServerProc::start("b", &redis.url(), relay.link, &[]);
    a.wait_linked(1);
    b.wait_linked(1);
    let mut alice = WsClient::login(a.ws, "alice").await;
    let mut bob = WsClient::login(b.ws, "bob").await;
    one_probe_arrives_once(&mut alice, &mut bob, "bob", "1").await;

    let link = relay.link;
    relay.proc.kill9();
    // While the relay is away, local traffic still works and health says degraded.
    let mut bob2 = WsClient::login(b.ws, "bob2").await;
    one_probe_arrives_once(&mut bob, &mut bob2, "bob2", "local").await;
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
    // The message stored while no relay ran is pushed to bob unasked once
    // b links to the new relay (issue 13: push after a fault).
    let pushed = bob.expect_prefix("MSG ").await;
    assert!(
        pushed.ends_with(" while the relay is down"),
        "bob got {pushed}"
    );
    one_probe_arrives_once(&mut alice, &mut bob, "bob", "2").await;
    println!(
        "relay restart -> both linked, a probe pushed across: {:?}",
        restarted.elapsed()
    );
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
    // The relay's address is held by this test until the relay starts, so
    // nothing else takes it; the servers' first tries reach it and fail.
    let holder = AsyncListener::bind("127.0.0.1:0").await.expect("bind");
    let link = holder.local_addr().expect("addr");
    let a = ServerProc::start("a", &redis.url(), link, &[]);
    let b = ServerProc::start("b", &redis.url(), link, &[]);
    // Both servers have tried to link (and got no relay) before it exists.
    for _ in 0..2 {
        let (conn, _) = tokio::time::timeout(Duration::from_secs(20), holder.accept())
            .await
            .expect("a server tried to link in time")
            .expect("accept");
        drop(conn);
    }
    drop(holder);
    let _relay = RelayProc::start(&redis.url(), link, &[]);
    a.wait_linked(1);
    b.wait_linked(1);
    let mut alice = WsClient::login(a.ws, "alice").await;
    let mut bob = WsClient::login(b.ws, "bob").await;
    one_probe_arrives_once(&mut alice, &mut bob, "bob", "1").await;
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
    let relay = RelayProc::start(&redis.url(), port_zero(), &[]);
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
    one_probe_arrives_once(&mut alice, &mut carol, "carol", "1").await;
    one_probe_arrives_once(&mut carol, &mut bob, "bob", "2").await;
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
    // No relay anywhere: nobody but the server itself can clean up. The
    // relay address is held (and never answers) so no other relay takes it.
    let holder = TcpListener::bind("127.0.0.1:0").expect("bind");
    let nowhere = holder.local_addr().expect("addr");
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
    let mut r1 = RelayProc::start(&redis.url(), port_zero(), &["--relay-id", "r1"]);
    let r2 = RelayProc::start(&redis.url(), port_zero(), &["--relay-id", "r2"]);
    let relays = format!("{},{}", r1.link, r2.link);
    let a = ServerProc::start("a", &redis.url(), r1.link, &["--relay", &relays]);
    let b = ServerProc::start("b", &redis.url(), r1.link, &["--relay", &relays]);
    // Each server links to both relays, which name themselves.
    a.wait_linked(2);
    b.wait_linked(2);
    for relay_id in ["r1", "r2"] {
        a.proc
            .wait_line(&format!("relay_id={relay_id}"), Duration::from_secs(5));
    }
    let mut alice = WsClient::login(a.ws, "alice").await;
    let mut bob = WsClient::login(b.ws, "bob").await;
    one_probe_arrives_once(&mut alice, &mut bob, "bob", "1").await;

    r1.proc.kill9();
    let killed = Instant::now();
    // Each server sees its link to r1 close and keeps the one to r2: no
    // relink, and a probe sent once, each way, arrives once.
    for s in [&a, &b] {
        let one = eventually(Duration::from_secs(10), || async {
            (links_up(s).await == 1.0).then_some(())
        })
        .await;
        assert!(one.is_some(), "server {} still counts two links", s.id);
    }
    let noticed = killed.elapsed();
    one_probe_arrives_once(&mut alice, &mut bob, "bob", "2").await;
    one_probe_arrives_once(&mut bob, &mut alice, "alice", "3").await;
    assert_eq!(
        a.proc.output().matches("relay link up").count(),
        2,
        "server a did not relink"
    );
    println!("one of two relays killed -> both servers noticed after {noticed:?}");
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

#[test]
fn a_server_without_a_token_secret_or_insecure_login_refuses_to_start() {
    use switchboard_tests::procs::{MESSAGE_SERVER, Proc};
    let redis = RedisServer::start();
    let base: Vec<String> = [
        "--id",
        "a",
        "--ws",
        "127.0.0.1:0",
        "--tcp",
        "127.0.0.1:0",
        "--relay",
        "127.0.0.1:1",
        "--redis",
        &redis.url(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut refused = Proc::spawn("server-a", MESSAGE_SERVER, &base);
    let status = refused
        .wait_exit(Duration::from_secs(20))
        .expect("exits by itself");
    assert!(!status.success(), "exit status {status:?}");
    // Its output is read by other threads: wait for the line, not the exit.
    let error = refused.wait_line("no way to authenticate users", Duration::from_secs(10));
    assert!(
        error.contains("--token-secret-file") && error.contains("--insecure-login"),
        "the error says what is missing: {error}"
    );
    let out = refused.output();
    assert!(!out.contains("listening ws="), "it never listened:\n{out}");

    // The same flags with a token secret: it starts, and wants tokens.
    let dir = tempfile::tempdir().expect("dir");
    let secret = dir.path().join("token.secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").expect("write");
    let mut args = base.clone();
    args.extend([
        "--token-secret-file".to_owned(),
        secret.display().to_string(),
    ]);
    let started = Proc::spawn("server-a", MESSAGE_SERVER, &args);
    let line = started.wait_line("listening ws=", Duration::from_secs(20));
    let tcp = switchboard_tests::procs::addr_in(&line, "tcp");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut t = TcpClient::connect(tcp).await;
        t.send("LOGIN alice").await;
        let reply = t.recv().await;
        assert!(reply.starts_with("ERR auth a token is required"), "{reply}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_goes_silent_without_closing_is_noticed_within_link_dead_after() {
    let redis = RedisServer::start();
    let relay = RelayProc::start(&redis.url(), port_zero(), &[]);
    let dead_after = Duration::from_millis(1500);
    let a = ServerProc::start(
        "a",
        &redis.url(),
        relay.link,
        &["--link-heartbeat", "300ms", "--link-dead-after", "1500ms"],
    );
    a.wait_linked(1);
    assert_eq!(links_up(&a).await, 1.0);
    // SIGSTOP: the relay's sockets stay open, it just says nothing more.
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &relay.proc.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    let stopped = Instant::now();
    let noticed = eventually(Duration::from_secs(20), || async {
        a.proc
            .output()
            .contains("relay link down")
            .then(|| stopped.elapsed())
    })
    .await;
    signal("-CONT");
    let noticed = noticed.expect("the server never noticed the silent relay");
    let out = a.proc.output();
    assert!(
        out.contains("relay silent for"),
        "it was the silence that ended the link:\n{out}"
    );
    println!(
        "relay stopped -> server noticed after {noticed:?} (--link-dead-after {dead_after:?})"
    );
    // The last heartbeat came at most one interval before the stop.
    assert!(
        noticed + Duration::from_millis(300) >= dead_after,
        "noticed after {noticed:?}, before --link-dead-after"
    );
    assert_eq!(links_up(&a).await, 0.0);
    // Once the relay speaks again, the server links again by itself.
    a.wait_linked(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_servers_registry_entry_expires_by_its_ttl() {
    let redis = RedisServer::start();
    // No relay (its address held, silent): only the TTL can remove the entry.
    let holder = TcpListener::bind("127.0.0.1:0").expect("bind");
    let nowhere = holder.local_addr().expect("addr");
    let mut a = ServerProc::start(
        "a",
        &redis.url(),
        nowhere,
        &["--registry-ttl", "2s", "--registry-interval", "300ms"],
    );
    let pttl = || -> i64 {
        redis::cmd("PTTL")
            .arg(shared::keys::server("a"))
            .query(&mut redis.conn())
            .expect("pttl")
    };
    let first = eventually(Duration::from_secs(10), || async {
        let t = pttl();
        (t > 0).then_some(t)
    })
    .await
    .expect("registered with a TTL");
    assert!(first <= 2000, "TTL {first} ms, over --registry-ttl");
    // While the server lives it refreshes the entry (every 300 ms): the TTL
    // goes down, then back up.
    let mut low = first;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = pttl();
        assert!(t > 0, "the entry of a live server expired");
        if t > low + 150 {
            break;
        }
        low = low.min(t);
        assert!(Instant::now() < deadline, "the TTL was never refreshed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    a.proc.kill9();
    let killed = Instant::now();
    let expired = eventually(Duration::from_secs(15), || async {
        redis
            .keys(&shared::keys::server("*"))
            .is_empty()
            .then(|| killed.elapsed())
    })
    .await;
    let expired = expired.expect("the registry entry of a dead server never expired");
    println!("kill -9 with no relay -> registry entry expired after {expired:?} (TTL 2 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_a_send_gets_an_error_never_ok_sent() {
    let mut c = Cluster::start(2).await;
    let mut alice = WsClient::login(c.server("a").ws, "alice").await;
    let mut bob = WsClient::login(c.server("b").ws, "bob").await;
    alice.send("SEND bob before").await;
    alice.expect_prefix("OK SENT ").await;
    bob.expect_prefix("MSG ").await;

    c.redis.kill();
    for n in 0..3 {
        alice.send(&format!("SEND bob lost {n}")).await;
        let reply = alice.recv().await;
        assert!(
            reply.starts_with("ERR unavailable "),
            "a send with Redis down got {reply:?}"
        );
        alice
            .send(&format!(
                r#"{{"op":"send","to":"bob","text":"lost j{n}","cid":"j{n}"}}"#
            ))
            .await;
        let v: serde_json::Value = serde_json::from_str(&alice.recv().await).expect("json");
        assert_eq!(
            (v["type"].as_str(), v["cid"].as_str()),
            (Some("error"), Some(format!("j{n}").as_str())),
            "{v}"
        );
    }
    alice.send("PING").await;
    assert_eq!(alice.recv().await, "PONG", "the session lives on");

    c.redis.restart(false);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        alice.send("SEND bob after").await;
        let reply = alice.recv().await;
        if reply.starts_with("OK SENT ") {
            break;
        }
        assert!(reply.starts_with("ERR unavailable "), "{reply}");
        assert!(
            Instant::now() < deadline,
            "sending works again once Redis is back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing refused was stored: bob's inbox holds the first and the last,
    // as seqs 1 and 2. (Server b may answer its first SYNC after the outage
    // with ERR unavailable, as a client is told to expect: it asks again.)
    let deadline = Instant::now() + Duration::from_secs(15);
    let texts = 'sync: loop {
        bob.send("SYNC 0").await;
        let mut texts = std::collections::BTreeMap::new();
        loop {
            let line = bob.recv().await;
            if line.starts_with("OK SYNC ") {
                break 'sync texts;
            }
            if line.starts_with("ERR unavailable ") {
                assert!(Instant::now() < deadline, "SYNC never worked again");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'sync;
            }
            if line.starts_with("MSG ") {
                let mut parts = line.splitn(7, ' ');
                let seq: u64 = parts.nth(1).and_then(|s| s.parse().ok()).expect("seq");
                texts.insert(seq, parts.nth(4).unwrap_or_default().to_owned());
            }
        }
    };
    assert_eq!(
        texts.into_iter().collect::<Vec<_>>(),
        [(1, "before".to_owned()), (2, "after".to_owned())],
        "only the acknowledged sends are stored"
    );
}

/// Reads JSON replies on a sender until the server closes; returns the
/// cids answered `sent` (with their seq) and the close code.
async fn answers_until_close(c: &mut WsClient) -> (HashMap<String, u64>, Option<u16>) {
    let mut sent = HashMap::new();
    loop {
        match c.next_within(Duration::from_secs(20)).await {
            Seen::Line(l) => {
                let v: serde_json::Value = serde_json::from_str(&l).expect("json");
                match v["type"].as_str() {
                    Some("sent") => {
                        let cid = v["cid"].as_str().expect("cid").to_owned();
                        let seq = v["seq"].as_u64().expect("seq");
                        assert!(sent.insert(cid, seq).is_none(), "answered twice: {v}");
                    }
                    // Refused while shutting down: not stored, sent again later.
                    Some("error") => {}
                    _ => panic!("unexpected reply {v}"),
                }
            }
            Seen::Closed(code) => return (sent, code),
            Seen::Timeout => panic!("the server neither answered nor closed"),
        }
    }
}

/// `SYNC 0` on a fresh session of `user`: `text -> times seen`.
async fn inbox_texts(addr: SocketAddr, user: &str) -> HashMap<String, usize> {
    let mut c = WsClient::login(addr, user).await;
    c.send("PING").await;
    c.expect_prefix("PONG").await;
    c.send("SYNC 0").await;
    let mut seen: BTreeMap<u64, String> = BTreeMap::new();
    loop {
        let line = c.recv().await;
        if line.starts_with("OK SYNC ") {
            break;
        }
        if line.starts_with("MSG ") {
            let mut parts = line.splitn(7, ' ');
            let seq: u64 = parts.nth(1).and_then(|s| s.parse().ok()).expect("seq");
            seen.insert(seq, parts.nth(4).unwrap_or_default().to_owned());
        }
    }
    let mut counts = HashMap::new();
    for text in seen.into_values() {
        *counts.entry(text).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_sends_and_pushes_in_flight_loses_nothing() {
    const N: usize = 400;
    let redis = RedisServer::start();
    let relay = RelayProc::start(&redis.url(), port_zero(), &[]);
    let mut a = ServerProc::start("a", &redis.url(), relay.link, &["--rate-limit", "0"]);
    let b = ServerProc::start("b", &redis.url(), relay.link, &["--rate-limit", "0"]);
    a.wait_linked(1);
    b.wait_linked(1);
    let mut far = WsClient::login(b.ws, "far").await;
    let mut near = WsClient::login(a.ws, "near").await;
    let mut sender = WsClient::login(a.ws, "sender").await;
    let plan: Vec<(String, &str, String)> = (0..N)
        .map(|i| {
            let to = if i % 2 == 0 { "far" } else { "near" };
            (format!("c{i}"), to, format!("m{i}"))
        })
        .collect();
    let frame = |(cid, to, text): &(String, &str, String)| {
        serde_json::json!({"op":"send","to":to,"text":text,"cid":cid}).to_string()
    };
    // Half the sends; SIGTERM once the first answers are back (the rest are
    // in flight); then the other half into the closing session.
    for p in &plan[..N / 2] {
        sender.send(&frame(p)).await;
    }
    let mut answered = HashMap::new();
    while answered.len() < 10 {
        let v: serde_json::Value = serde_json::from_str(&sender.recv().await).expect("json");
        assert_eq!(v["type"], "sent", "{v}");
        answered.insert(v["cid"].as_str().expect("cid").to_owned(), 0);
    }
    a.proc.term();
    for p in &plan[N / 2..] {
        let _ = sender.send_message(Message::text(frame(p))).await;
    }
    let (more, code) = answers_until_close(&mut sender).await;
    for cid in more.into_keys() {
        assert!(answered.insert(cid, 0).is_none(), "answered twice");
    }
    assert_eq!(
        code,
        Some(1001),
        "the sender is told the server is going away"
    );
    let mut near_got = Vec::new();
    loop {
        match near.next_within(Duration::from_secs(20)).await {
            Seen::Line(l) if l.starts_with("MSG ") => near_got.push(l),
            Seen::Line(_) => {}
            Seen::Closed(code) => {
                assert_eq!(code, Some(1001), "near is told the server is going away");
                break;
            }
            Seen::Timeout => panic!("near was never closed"),
        }
    }
    let status = a.proc.wait_exit(Duration::from_secs(20)).expect("a exits");
    assert!(status.success(), "exit status {status:?}");

    // Every send acknowledged before the close was pushed to far (on the
    // server that stays) exactly once, by the relay.
    let far_acked: Vec<&str> = plan
        .iter()
        .filter(|(cid, to, _)| *to == "far" && answered.contains_key(cid))
        .map(|(_, _, text)| text.as_str())
        .collect();
    let mut far_got: HashMap<String, usize> = HashMap::new();
    while far_acked.iter().any(|t| !far_got.contains_key(*t)) {
        match far.next_within(Duration::from_secs(20)).await {
            Seen::Line(l) if l.starts_with("MSG ") => {
                let text = l.splitn(7, ' ').nth(6).unwrap_or_default().to_owned();
                *far_got.entry(text).or_insert(0) += 1;
            }
            Seen::Line(_) => {}
            other => panic!(
                "far lacks {} acknowledged pushes ({other:?})",
                far_acked
                    .iter()
                    .filter(|t| !far_got.contains_key(**t))
                    .count()
            ),
        }
    }
    assert!(far_got.values().all(|n| *n == 1), "a push came twice");
    // What near was pushed before its close are real messages to it.
    for l in &near_got {
        let to = l.split(' ').nth(3).unwrap_or_default();
        assert_eq!(to, "near", "{l}");
    }

    // The client sends again, with the same cids, whatever was not answered.
    let mut retry = WsClient::login(b.ws, "sender").await;
    let unanswered: Vec<_> = plan
        .iter()
        .filter(|(cid, _, _)| !answered.contains_key(cid))
        .collect();
    for p in &unanswered {
        retry.send(&frame(p)).await;
        retry.expect_prefix(r#"{"type":"sent""#).await;
    }
    // Each of the N messages is now in its recipient's inbox exactly once.
    for user in ["far", "near"] {
        let inbox = inbox_texts(b.ws, user).await;
        for (_, to, text) in plan.iter().filter(|(_, to, _)| *to == user) {
            assert_eq!(
                inbox.get(text.as_str()).copied(),
                Some(1),
                "{text} to {to}: stored once"
            );
        }
        assert_eq!(inbox.len(), N / 2, "{user}'s inbox holds nothing else");
    }
    println!(
        "SIGTERM mid-stream: {} of {N} sends answered before the close, {} pushed to far, \
         {} to near before its close, {} sent again after",
        answered.len(),
        far_got.len(),
        near_got.len(),
        unanswered.len()
    );
}

const WAIT_LOG: Duration = Duration::from_secs(5);

/// The time of day, in seconds, at the start of a log line
/// (`2026-01-01T12:34:56.789012Z  INFO ...`).
fn log_time(line: &str) -> f64 {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    let time = stamp
        .split_once('T')
        .map(|(_, t)| t.trim_end_matches('Z'))
        .unwrap_or_default();
    let parts: Vec<f64> = time.split(':').filter_map(|p| p.parse().ok()).collect();
    assert_eq!(parts.len(), 3, "no time in log line {line:?}");
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
}

/// Bytes waiting in the send queue of the socket from local port `local`
/// to remote port `remote`, from /proc/net/tcp.
fn send_queue(local: u16, remote: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = |field: &str| u16::from_str_radix(field.rsplit(':').next()?, 16).ok();
        if port(f.get(1)?)? != local || port(f.get(2)?)? != remote {
            return None;
        }
        u64::from_str_radix(f.get(4)?.split(':').next()?, 16).ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_on_a_stuck_session_after_shutdown_timeout() {
    let redis = RedisServer::start();
    let relay = RelayProc::start(&redis.url(), port_zero(), &[]);
    // Writes to a client may block for a minute; shutdown waits 1 s.
    let mut a = ServerProc::start(
        "a",
        &redis.url(),
        relay.link,
        &[
            "--shutdown-timeout",
            "1s",
            "--write-timeout",
            "60s",
            "--session-queue",
            "10000",
            "--rate-limit",
            "0",
        ],
    );
    a.wait_linked(1);
    // A client with a tiny receive window that never reads.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut sloth = socket.connect(a.tcp).await.expect("connect");
    let sloth_port = sloth.local_addr().expect("addr").port();
    sloth.write_all(b"LOGIN sloth\r\n").await.expect("login");
    let mut pusher = TcpClient::login(a.tcp, "pusher").await;
    let body = "w".repeat(60 * 1024);
    // Until the server's socket to the sloth holds unsent bytes: its writes
    // to the sloth are stuck.
    let deadline = Instant::now() + Duration::from_secs(60);
    let stuck = loop {
        pusher.send(&format!("SEND sloth {body}")).await;
        pusher.expect_prefix("OK SENT ").await;
        if send_queue(a.tcp.port(), sloth_port).is_some_and(|q| q > 0) {
            break Some(());
        }
        if Instant::now() > deadline {
            break None;
        }
    };
    assert!(
        stuck.is_some(),
        "the server's writes to the sloth never backed up"
    );
    // Well past the socket buffers, so the session is inside a write.
    for _ in 0..100 {
        pusher.send(&format!("SEND sloth {body}")).await;
        pusher.expect_prefix("OK SENT ").await;
    }

    let termed = Instant::now();
    a.proc.term();
    let status = a
        .proc
        .wait_exit(Duration::from_secs(30))
        .expect("exits well before the 60 s write timeout");
    println!(
        "SIGTERM with a stuck session -> exit after {:?}",
        termed.elapsed()
    );
    assert!(status.success(), "exit status {status:?}");
    // The server's own log says when it began to wait and when it gave up:
    // after --shutdown-timeout (1 s), not the default 5 s.
    let began = log_time(
        &a.proc
            .wait_line("shutting down: closing sessions", WAIT_LOG),
    );
    let gave_up = log_time(
        &a.proc
            .wait_line("some sessions did not close in time", WAIT_LOG),
    );
    let waited = gave_up - began;
    assert!(
        (0.9..4.5).contains(&waited),
        "shutdown waited {waited:.2} s for the stuck session, --shutdown-timeout is 1 s"
    );
    drop(sloth);
}
