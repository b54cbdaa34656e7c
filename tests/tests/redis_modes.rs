//! The same behaviours over one Redis and over a 3-master Redis Cluster
//! (each test runs for both kinds), with users whose keys fall on every
//! master; plus what only the store's design promises: a send retried with
//! its cid after a crash at either point is stored once per inbox, the
//! per-user session cap holds across servers, and a dead server's purge
//! leaves nothing on any master.

use std::collections::BTreeMap;
use std::time::Duration;

use shared::keys;
use switchboard_tests::procs::{RelayProc, ServerProc};
use switchboard_tests::{
    Cluster, LineClient, RedisKind, TcpClient, TestRedis, WsClient, eventually,
};

/// `MSG <seq> <from> <to> <id> <ts> <text>` -> (seq, from, to, id, text).
fn parse_msg(line: &str) -> (u64, String, String, String, String) {
    let mut it = line.splitn(7, ' ');
    assert_eq!(it.next(), Some("MSG"), "not a MSG line: {line}");
    let seq = it.next().and_then(|s| s.parse().ok()).expect("seq");
    let from = it.next().expect("from").to_owned();
    let to = it.next().expect("to").to_owned();
    let id = it.next().expect("id").to_owned();
    let _ts = it.next();
    (seq, from, to, id, it.next().expect("text").to_owned())
}

/// Two users per master (on a cluster; any six on one Redis).
fn users_on_every_master(redis: &TestRedis) -> Vec<String> {
    let TestRedis::Cluster(c) = redis else {
        return (0..6).map(|i| format!("user{i}")).collect();
    };
    let mut per_master: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for i in 0..200 {
        let user = format!("user{i}");
        let m = c.master_of(&keys::user_sessions(&user));
        let list = per_master.entry(m).or_default();
        if list.len() < 2 {
            list.push(user);
        }
        if per_master.len() == 3 && per_master.values().all(|l| l.len() == 2) {
            break;
        }
    }
    assert_eq!(per_master.len(), 3, "users on all three masters");
    per_master.into_values().flatten().collect()
}

async fn direct_messages_reach_everyone(kind: RedisKind) {
    let c = Cluster::start_over(kind, 2, |_| {}).await;
    let users = users_on_every_master(&c.redis);
    let servers = ["a", "b"];
    let mut clients = Vec::new();
    for (i, u) in users.iter().enumerate() {
        clients.push(WsClient::login(c.server(servers[i % 2]).ws, u).await);
    }
    // Everyone sends to everyone else (pushes that arrive meanwhile are kept).
    let mut pushed: Vec<Vec<String>> = vec![Vec::new(); users.len()];
    for (i, from) in users.iter().enumerate() {
        for to in users.iter().filter(|u| *u != from) {
            clients[i].send(&format!("SEND {to} from {from}")).await;
            loop {
                let line = clients[i].recv().await;
                if line.starts_with("OK SENT ") {
                    break;
                }
                if line.starts_with("MSG ") {
                    pushed[i].push(line);
                }
            }
        }
    }
    // Every recipient is pushed one message from each other user; then
    // each inbox holds 10 (5 sent, 5 received), seqs 1..=10, no duplicate.
    for (i, me) in users.iter().enumerate() {
        let mut senders = Vec::new();
        while pushed[i].len() < users.len() - 1 {
            pushed[i].push(clients[i].expect_prefix("MSG ").await);
        }
        for line in &pushed[i] {
            let (_, from, to, _, text) = parse_msg(line);
            assert_eq!((to.as_str(), text), (me.as_str(), format!("from {from}")));
            senders.push(from);
        }
        senders.sort();
        senders.dedup();
        assert_eq!(senders.len(), 5, "one message from each other user");
        clients[i].send("SYNC 0").await;
        let mut seqs = Vec::new();
        let (mut sent, mut got) = (0, 0);
        loop {
            let line = clients[i].recv().await;
            if line.starts_with("OK SYNC 10 ") {
                break;
            }
            let (seq, from, to, _, _) = parse_msg(&line);
            seqs.push(seq);
            if from == *me {
                sent += 1;
            }
            if to == *me {
                got += 1;
            }
        }
        assert_eq!(
            seqs,
            (1..=10).collect::<Vec<_>>(),
            "{me}'s inbox is dense and in order"
        );
        assert_eq!((sent, got), (5, 5));
        clients[i].send("ACK 10").await;
        clients[i].send("PING").await;
        clients[i].expect_prefix("PONG").await;
    }
    // An offline user gets what came while away, on the other server, in order.
    let away = users[0].clone();
    drop(clients.remove(0));
    eventually(Duration::from_secs(10), || async {
        c.redis
            .keys(&keys::user_sessions(&away))
            .is_empty()
            .then_some(())
    })
    .await
    .expect("the session leaves the directory");
    for n in 1..=3 {
        clients[0].send(&format!("SEND {away} later {n}")).await;
        clients[0].expect_prefix("OK SENT ").await;
    }
    // Its device acknowledged up to 10: the login replays just the new ones.
    let mut back = WsClient::login(c.server("b").ws, &away).await;
    for n in 1..=3u64 {
        let (seq, _, _, _, text) = parse_msg(&back.expect_prefix("MSG ").await);
        assert_eq!((seq, text), (10 + n, format!("later {n}")));
    }
    back.send("SYNC 10").await;
    for n in 1..=3u64 {
        let (seq, _, _, _, text) = parse_msg(&back.expect_prefix("MSG ").await);
        assert_eq!((seq, text), (10 + n, format!("later {n}")));
    }
    back.expect_prefix("OK SYNC 13 ").await;
    back.send(&format!("WHO {}", users[3])).await;
    assert_eq!(
        back.expect_prefix("ONLINE ").await,
        format!("ONLINE {} 1", users[3])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_reach_everyone_over_one_redis() {
    direct_messages_reach_everyone(RedisKind::Single).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_reach_everyone_over_a_redis_cluster() {
    direct_messages_reach_everyone(RedisKind::Cluster).await;
}

/// A dead server's sessions leave every master (the relay's purge, user by
/// user); the live server's stay.
fn purge_of_a_dead_server(kind: RedisKind) {
    let redis = TestRedis::start(kind);
    let users = users_on_every_master(&redis);
    let (url, mode) = redis.flags();
    let relay = RelayProc::start(&url, "127.0.0.1:0".parse().expect("addr"), &mode);
    let mut a = ServerProc::start("a", &url, relay.link, &mode);
    let b = ServerProc::start("b", &url, relay.link, &mode);
    a.wait_linked(1);
    b.wait_linked(1);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _clients: Vec<TcpClient> = rt.block_on(async {
        let mut v = Vec::new();
        for u in &users {
            v.push(TcpClient::login(a.tcp, u).await);
        }
        v.push(TcpClient::login(b.tcp, "survivor").await);
        v
    });
    assert_eq!(redis.keys("sb:{u:*}:sess").len(), users.len() + 1);
    a.proc.kill9();
    let purged = rt.block_on(eventually(Duration::from_secs(30), || async {
        (redis.keys("sb:{u:*}:sess") == [keys::user_sessions("survivor")]
            && redis.keys("sb:{s:a}:*").is_empty())
        .then_some(())
    }));
    assert!(
        purged.is_some(),
        "left after the purge: {:?} {:?}",
        redis.keys("sb:{u:*}:sess"),
        redis.keys("sb:{s:a}:*")
    );
}

#[test]
fn the_purge_of_a_dead_server_leaves_no_session_over_one_redis() {
    purge_of_a_dead_server(RedisKind::Single);
}

#[test]
fn the_purge_of_a_dead_server_leaves_no_session_on_any_master() {
    purge_of_a_dead_server(RedisKind::Cluster);
}

/// Server `a` aborts at `point` while storing alice's send; alice retries
/// the same cid on `b`: one copy in each inbox, the same id and seq.
fn cid_retry_after_a_crash(kind: RedisKind, point: &str) {
    let redis = TestRedis::start(kind);
    let (url, mode) = redis.flags();
    let relay = RelayProc::start(&url, "127.0.0.1:0".parse().expect("addr"), &mode);
    let a = ServerProc::start_env("a", &url, relay.link, &mode, &[("SB_TEST_CRASH", point)]);
    let b = ServerProc::start("b", &url, relay.link, &mode);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut bob = TcpClient::login(b.tcp, "bob").await;
        let send = r#"{"op":"send","to":"bob","text":"exactly once","cid":"k-1"}"#;
        let mut alice = WsClient::login(a.ws, "alice").await;
        alice.send(send).await;
        assert!(alice.expect_close().await.is_none_or(|code| code != 1000));
        let mut alice = WsClient::login(b.ws, "alice").await;
        alice.send(send).await;
        let sent: serde_json::Value =
            serde_json::from_str(&alice.expect_prefix("{\"type\":\"sent\"").await).expect("json");
        assert_eq!(
            sent["seq"].as_u64(),
            Some(1),
            "the first and only seq in bob's inbox"
        );
        alice.send(send).await;
        let again: serde_json::Value =
            serde_json::from_str(&alice.expect_prefix("{\"type\":\"sent\"").await).expect("json");
        assert_eq!((&again["id"], &again["seq"]), (&sent["id"], &sent["seq"]));
        // bob's inbox holds it once, under that id.
        bob.send("SYNC 0").await;
        let (seq, from, _, id, text) = parse_msg(&bob.expect_prefix("MSG ").await);
        assert_eq!(
            (seq, from.as_str(), text.as_str()),
            (1, "alice", "exactly once")
        );
        assert_eq!(Some(id.as_str()), sent["id"].as_str());
        assert_eq!(
            bob.expect_prefix("OK SYNC").await,
            format!("{}", bob_sync_line(&redis))
        );
    });
    for user in ["alice", "bob"] {
        let key = keys::inbox(user);
        let len: u64 = redis.cmd_on(&key, redis::cmd("XLEN").arg(&key));
        assert_eq!(len, 1, "{user}'s inbox holds the message once");
    }
    drop(a);
}

/// `OK SYNC 1 <epoch>` for bob's inbox as Redis holds it.
fn bob_sync_line(redis: &TestRedis) -> String {
    let key = keys::epoch("bob");
    let epoch: String = redis.cmd_on(&key, redis::cmd("GET").arg(&key));
    format!("OK SYNC 1 {epoch}")
}

#[test]
fn a_cid_retry_after_a_crash_between_the_halves_stores_once() {
    cid_retry_after_a_crash(RedisKind::Single, "between-halves");
}

#[test]
fn a_cid_retry_after_a_crash_after_the_store_stores_once() {
    cid_retry_after_a_crash(RedisKind::Single, "after-store");
}

#[test]
fn a_cid_retry_after_a_crash_between_the_halves_stores_once_on_a_cluster() {
    cid_retry_after_a_crash(RedisKind::Cluster, "between-halves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cid_deduplication_survives_a_redis_restart() {
    let mut c = Cluster::start(1).await;
    let mut alice = WsClient::login(c.server("a").ws, "alice").await;
    let send = r#"{"op":"send","to":"bob","text":"kept","cid":"r-1"}"#;
    alice.send(send).await;
    let first: serde_json::Value =
        serde_json::from_str(&alice.expect_prefix("{\"type\":\"sent\"").await).expect("json");
    c.redis.restart(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let again = loop {
        alice.send(send).await;
        let line = alice.recv().await;
        if line.starts_with("{\"type\":\"sent\"") {
            break line;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the retry is answered once Redis is back; last: {line}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let again: serde_json::Value = serde_json::from_str(&again).expect("json");
    assert_eq!((&again["id"], &again["seq"]), (&first["id"], &first["seq"]));
    let len: u64 = c
        .redis
        .cmd(redis::cmd("XLEN").arg(keys::inbox("bob")))
        .expect("XLEN");
    assert_eq!(len, 1);
}

async fn the_session_cap_holds_across_servers(kind: RedisKind) {
    let c = Cluster::start_over(kind, 2, |cfg| cfg.limits.max_sessions_per_user = 2).await;
    let mut one = WsClient::login(c.server("a").ws, "alice").await;
    let mut two = TcpClient::login(c.server("b").tcp, "alice").await;
    let mut three = TcpClient::connect(c.server("a").tcp).await;
    three.send("LOGIN alice").await;
    assert_eq!(three.recv().await, "ERR limit too many sessions for alice");
    three.expect_closed().await;
    // The others are unaffected, and the count is what WHO says.
    one.send("WHO alice").await;
    assert_eq!(one.expect_prefix("ONLINE ").await, "ONLINE alice 2");
    let mut bob = WsClient::login(c.server("b").ws, "bob").await;
    bob.send("SEND alice still here").await;
    bob.expect_prefix("OK SENT ").await;
    assert!(one.expect_prefix("MSG ").await.ends_with("still here"));
    assert!(two.expect_prefix("MSG ").await.ends_with("still here"));
    // One leaves: a new login fits again.
    two.send("QUIT").await;
    drop(two);
    let relogged = eventually(Duration::from_secs(10), || async {
        let mut t = TcpClient::connect(c.server("b").tcp).await;
        t.send("LOGIN alice").await;
        t.recv().await.starts_with("OK LOGIN alice").then_some(t)
    })
    .await;
    assert!(relogged.is_some(), "a session frees a place");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cap_holds_across_servers_over_one_redis() {
    the_session_cap_holds_across_servers(RedisKind::Single).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cap_holds_across_servers_over_a_redis_cluster() {
    the_session_cap_holds_across_servers(RedisKind::Cluster).await;
}

/// Sends `n` messages from `from` to `to`, each with its own cid, retrying
/// a message (same cid) until it is acknowledged. Calls `mid` once after
/// the `at`-th acknowledgement. Returns each message's (id, seq) and the
/// longest time between a failed attempt and the next success.
async fn send_through(
    client: &mut WsClient,
    to: &str,
    n: usize,
    at: usize,
    mut mid: impl FnMut(),
) -> (Vec<(String, u64)>, Duration) {
    let mut acked = Vec::new();
    let mut worst = Duration::ZERO;
    for k in 1..=n {
        let line = format!(r#"{{"op":"send","to":"{to}","text":"m{k}","cid":"k{k}"}}"#);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut failed_at: Option<tokio::time::Instant> = None;
        loop {
            client.send(&line).await;
            // The answer, past any push: after a fault the server catches
            // this session up with its own inbox (messages a failed attempt
            // stored), unasked.
            let (reply, v) = loop {
                let reply = client.expect_prefix("{\"type\":\"").await;
                let v: serde_json::Value = serde_json::from_str(&reply).expect("json");
                if v["type"] != "msg" {
                    break (reply, v);
                }
            };
            if v["type"] == "sent" {
                let id = v["id"].as_str().expect("id").to_owned();
                acked.push((id, v["seq"].as_u64().expect("seq")));
                if let Some(t) = failed_at {
                    worst = worst.max(t.elapsed());
                }
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "message {k} never acknowledged: {reply}"
            );
            failed_at.get_or_insert_with(tokio::time::Instant::now);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if k == at {
            mid();
        }
    }
    (acked, worst)
}

/// Reads `user`'s whole inbox from a new device (its login replays from
/// cursor 0): (seq, text) in order.
async fn inbox_of(addr: std::net::SocketAddr, user: &str) -> Vec<(u64, String)> {
    let mut client = WsClient::login(addr, user).await;
    client.send("PING").await;
    let mut out = Vec::new();
    loop {
        let line = client.recv().await;
        if line == "PONG" {
            return out;
        }
        if line.starts_with("MSG ") {
            let (seq, _, _, _, text) = parse_msg(&line);
            out.push((seq, text));
        }
    }
}

/// Each acknowledged message once, seqs dense from 1, in send order.
fn assert_dense_once(inbox: &[(u64, String)], n: usize, who: &str) {
    let seqs: Vec<u64> = inbox.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=n as u64).collect::<Vec<_>>(),
        "{who}'s inbox seqs"
    );
    let texts: Vec<String> = inbox.iter().map(|(_, t)| t.clone()).collect();
    let want: Vec<String> = (1..=n).map(|k| format!("m{k}")).collect();
    assert_eq!(
        texts, want,
        "{who}'s inbox holds every message once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_killed_mid_stream_loses_no_acknowledged_message() {
    let mut c = Cluster::start_over(RedisKind::Cluster, 2, |cfg| {
        cfg.redis.replica_acks = 1;
        cfg.redis.replica_timeout = Duration::from_millis(500);
    })
    .await;
    let TestRedis::Cluster(cluster) = &mut c.redis else {
        unreachable!("started over a cluster")
    };
    let victim = cluster.master_of(&keys::inbox("bob"));
    let victim_port = cluster.nodes[victim].port();
    let mut alice = WsClient::login(c.server("a").ws, "alice").await;
    let mut bob = WsClient::login(c.server("b").ws, "bob").await;
    let killed_at = std::sync::Mutex::new(None);
    let (acked, worst) = send_through(&mut alice, "bob", 60, 20, || {
        let TestRedis::Cluster(cluster) = &mut c.redis else {
            return;
        };
        cluster.nodes[victim].kill();
        *killed_at.lock().expect("lock") = Some(std::time::Instant::now());
        // Its replica takes over; the old master comes back as a replica,
        // so that writes there can be acknowledged by one replica again.
        cluster.wait_ok(Duration::from_secs(30));
        cluster.nodes[victim].restart(false);
    })
    .await;
    eprintln!(
        "cluster failover: master :{victim_port} killed; longest send outage {worst:?} (includes waiting for the failover in the test)"
    );
    assert_eq!(acked.len(), 60);
    let seqs: Vec<u64> = acked.iter().map(|(_, s)| *s).collect();
    assert_eq!(
        seqs,
        (1..=60).collect::<Vec<_>>(),
        "acknowledged seqs are dense"
    );
    assert_dense_once(&inbox_of(c.server("a").ws, "bob").await, 60, "bob");
    assert_dense_once(&inbox_of(c.server("b").ws, "alice").await, 60, "alice");
    // bob's live device was pushed every message (a retry pushes what its
    // first attempt stored but could not acknowledge).
    let mut live = Vec::new();
    while live.len() < 60 {
        live.push(parse_msg(&bob.expect_prefix("MSG ").await).0);
    }
    live.sort();
    live.dedup();
    assert_eq!(live.len(), 60, "every message pushed live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sentinel_failover_servers_and_relay_find_the_new_master() {
    use switchboard_tests::{RedisSentinel, Relay, Server};
    let mut setup = tokio::task::spawn_blocking(RedisSentinel::start)
        .await
        .expect("sentinel setup");
    let old_port = setup.master.port();
    let relay = Relay::start(relay_server::Config {
        redis: setup.args(),
        ..relay_server::Config::default()
    })
    .await;
    let mut servers = Vec::new();
    for id in ["a", "b"] {
        let mut cfg = message_server::Config::local(id, "redis://unused/", Some(relay.link));
        cfg.redis = setup.args();
        cfg.redis.replica_acks = 1;
        cfg.redis.replica_timeout = Duration::from_millis(500);
        servers.push(Server::start(cfg).await);
    }
    let mut alice = WsClient::login(servers[0].ws, "alice").await;
    let mut bob = WsClient::login(servers[1].ws, "bob").await;
    let mut killed_at = None;
    let (acked, worst) = send_through(&mut alice, "bob", 40, 15, || {
        setup.master.kill();
        killed_at = Some(std::time::Instant::now());
        // Sentinel promotes the replica; the old master comes back (from
        // its append-only file) and Sentinel makes it the new one's replica.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while setup.master_port() == Some(old_port) {
            assert!(
                std::time::Instant::now() < deadline,
                "sentinel did not fail over"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "sentinel failover: new master named {:?} after kill",
            killed_at.map(|t| t.elapsed())
        );
        setup.master.restart(false);
    })
    .await;
    eprintln!("sentinel failover: longest send outage {worst:?}");
    // The failover itself was checked above (a new master named within
    // 30 s). Which node is master now is not: on a loaded machine Sentinel
    // (down-after 1 s) may fail over once more, back to the restarted node,
    // and the servers must follow that too.
    assert!(killed_at.is_some(), "the master was killed mid-stream");
    let seqs: Vec<u64> = acked.iter().map(|(_, s)| *s).collect();
    assert_eq!(
        seqs,
        (1..=40).collect::<Vec<_>>(),
        "acknowledged seqs are dense"
    );
    assert_dense_once(&inbox_of(servers[0].ws, "bob").await, 40, "bob");
    assert_dense_once(&inbox_of(servers[1].ws, "alice").await, 40, "alice");
    let mut live = Vec::new();
    while live.len() < 40 {
        live.push(parse_msg(&bob.expect_prefix("MSG ").await).0);
    }
    live.sort();
    live.dedup();
    assert_eq!(live.len(), 40, "every message pushed live");
    // The relay reaches the new master too: its health says Redis is up.
    let up = eventually(Duration::from_secs(20), || async {
        let (status, body) = relay.get("/healthz").await;
        (status == 200 && body.contains("\"redis\":\"up\"")).then_some(())
    })
    .await;
    assert!(up.is_some(), "the relay follows the failover");
}

/// A relay killed in the middle of purging a dead server leaves the rest to
/// the next relay's sweep: in the end nothing of that server is left on any
/// master.
#[test]
fn a_purge_cut_short_by_kill_9_of_the_relay_is_finished_by_the_next_relay() {
    use redis_store::scripts::Registration;
    use redis_store::sessions::Life;
    const SESSIONS: u64 = 20_000;
    let redis = TestRedis::start(RedisKind::Cluster);
    let args = redis.args();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // A server "ghost" that recorded many sessions as a server does, then
    // stopped refreshing its registry entry a minute ago.
    rt.block_on(async {
        let store = redis_store::Redis::new(&args).expect("redis");
        let life = Life::new("ghost", 7);
        let ids: Vec<u64> = (0..SESSIONS).collect();
        for chunk in ids.chunks(500) {
            let adds = chunk.iter().map(|i| {
                let user = format!("u{i}");
                let (store, life) = (&store, &life);
                async move {
                    redis_store::sessions::add(store, life, &user, shared::ids::SessionId(*i), 0)
                        .await
                        .expect("session added")
                }
            });
            futures_util::future::join_all(adds).await;
        }
        let r = Registration {
            server: "ghost",
            epoch: 7,
            ws: "127.0.0.1:1",
            tcp: "127.0.0.1:2",
            conns: 0,
            cap: 10,
            now_ms: shared_now_ms() - 60_000,
            ttl_s: 600,
        };
        redis_store::registry::register(&store, &r)
            .await
            .expect("registered");
    });
    let left = || redis.keys("sb:{u:*}:sess").len();
    assert_eq!(left(), SESSIONS as usize);
    let (url, mode) = redis.flags();
    let mut flags = mode.clone();
    flags.extend(["--stale-after", "1s", "--sweep-interval", "200ms"]);
    let mut first = RelayProc::start(&url, "127.0.0.1:0".parse().expect("addr"), &flags);
    // Kill it once the purge is under way.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while left() == SESSIONS as usize {
        assert!(
            std::time::Instant::now() < deadline,
            "the purge never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.proc.kill9();
    let at_kill = left();
    assert!(
        at_kill > 0,
        "the purge finished before the relay was killed; make it longer"
    );
    eprintln!("relay killed with {at_kill} of {SESSIONS} sessions still to purge");
    let _second = RelayProc::start(&url, "127.0.0.1:0".parse().expect("addr"), &flags);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let servers: Vec<String> =
            redis.cmd_on(keys::SERVERS, redis::cmd("SMEMBERS").arg(keys::SERVERS));
        if left() == 0 && redis.keys("sb:{s:ghost}:*").is_empty() && servers.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the next relay did not finish: {} sessions, {:?}, {servers:?}",
            left(),
            redis.keys("sb:{s:ghost}:*")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn shared_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
