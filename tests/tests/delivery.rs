//! Durable delivery: stored then routed, per-user sequence numbers, login
//! replay, SYNC, multi-device histories, cid de-duplication, rooms, and
//! Redis durability (issue 4). Real Redis, relay, servers and clients.

use std::collections::BTreeMap;
use std::time::Duration;

use switchboard_tests::{Cluster, LineClient, TcpClient, WsClient};

/// `(seq, from, to, text)` of a `MSG` line.
fn parse_msg(line: &str) -> (u64, String, String, String) {
    let mut it = line.splitn(7, ' ');
    assert_eq!(it.next(), Some("MSG"), "not a MSG line: {line}");
    let seq = it.next().and_then(|s| s.parse().ok()).expect("seq");
    let from = it.next().expect("from").to_owned();
    let to = it.next().expect("to").to_owned();
    let (_id, _ts) = (it.next(), it.next());
    (seq, from, to, it.next().expect("text").to_owned())
}

/// Sends `SYNC <after>` and collects `seq -> "from to text"` until `OK SYNC`.
async fn sync_text(c: &mut WsClient, after: u64) -> (BTreeMap<u64, String>, Vec<String>) {
    c.send(&format!("SYNC {after}")).await;
    let mut got = BTreeMap::new();
    let mut other = Vec::new();
    loop {
        let line = c.recv().await;
        if line.starts_with("OK SYNC ") {
            return (got, other);
        }
        if line.starts_with("MSG ") {
            let (seq, from, to, text) = parse_msg(&line);
            // A live push may have arrived before the replay of the same seq:
            // a client de-duplicates by seq, and the two must agree.
            let entry = format!("{from} {to} {text}");
            if let Some(prev) = got.insert(seq, entry.clone()) {
                assert_eq!(prev, entry, "seq {seq} seen with two contents");
            }
        } else {
            other.push(line);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_user_gets_all_100_messages_in_order_on_another_server() {
    let c = Cluster::start(2).await;
    let bob = TcpClient::login(c.server("b").tcp, "bob").await;
    drop(bob);
    let mut alice = WsClient::login(c.server("a").ws, "alice").await;
    for n in 1..=100 {
        alice.send(&format!("SEND bob message {n}")).await;
    }
    for _ in 1..=100 {
        alice.expect_prefix("OK SENT ").await;
    }
    // bob logs in on the other server: what arrived while away is replayed.
    let mut bob = WsClient::login(c.server("a").ws, "bob").await;
    for n in 1..=100u64 {
        let (seq, from, _, text) = parse_msg(&bob.expect_prefix("MSG ").await);
        assert_eq!(
            (seq, from.as_str(), text),
            (n, "alice", format!("message {n}"))
        );
    }
    // Acknowledged on this device: the next login replays nothing.
    bob.send("ACK 100").await;
    bob.send("PING").await;
    assert_eq!(bob.recv().await, "PONG");
    drop(bob);
    let mut bob = WsClient::login(c.server("b").ws, "bob").await;
    bob.send("PING").await;
    assert_eq!(bob.recv().await, "PONG", "nothing replayed after ACK 100");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_ends_with_the_same_history() {
    let c = Cluster::start(2).await;
    let mut phone = WsClient::login(c.server("a").ws, "alice").await;
    let mut laptop = WsClient::login(c.server("b").ws, "alice").await;
    let mut bob = WsClient::login(c.server("b").ws, "bob").await;
    for n in 0..10 {
        let (sender, text) = match n % 3 {
            0 => (&mut phone, format!("SEND bob p{n}")),
            1 => (&mut laptop, format!("SEND bob l{n}")),
            _ => (&mut bob, format!("SEND alice b{n}")),
        };
        sender.send(&text).await;
        sender.expect_prefix("OK SENT ").await;
    }
    let (phone_hist, _) = sync_text(&mut phone, 0).await;
    let (laptop_hist, _) = sync_text(&mut laptop, 0).await;
    let (bob_hist, _) = sync_text(&mut bob, 0).await;
    assert_eq!(
        phone_hist.len(),
        10,
        "alice's inbox holds all ten: {phone_hist:?}"
    );
    assert_eq!(phone_hist, laptop_hist, "both of alice's devices agree");
    assert_eq!(
        phone_hist.keys().copied().collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>(),
        "dense seqs"
    );
    let alice_texts: Vec<&String> = phone_hist.values().collect();
    let bob_texts: Vec<&String> = bob_hist.values().collect();
    assert_eq!(
        alice_texts, bob_texts,
        "the conversation is in the same order on both sides"
    );
}

/// Group commit (`--store-commit-interval`) holds a batch back only behind
/// a batch of several messages. With the interval at 60 s, a lone sender
/// that waits for each `OK SENT` still gets every answer and bob every
/// message in order: a held-back batch would wait a minute, far past the
/// test's wait for a line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_never_holds_back_a_lone_sender() {
    let c = Cluster::start_with(1, |cfg| {
        cfg.limits.store_commit_interval = Duration::from_secs(60);
    })
    .await;
    let a = c.server("a");
    let mut alice = TcpClient::login(a.tcp, "alice").await;
    let mut bob = TcpClient::login(a.tcp, "bob").await;
    for i in 1..=5 {
        alice.send(&format!("SEND bob one at a time {i}")).await;
        alice.expect_prefix("OK SENT ").await;
    }
    for i in 1..=5 {
        let (seq, from, _, text) = parse_msg(&bob.expect_prefix("MSG ").await);
        assert_eq!(
            (seq, from.as_str(), text),
            (i, "alice", format!("one at a time {i}"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_send_with_the_same_cid_is_stored_once() {
    let c = Cluster::start(2).await;
    let a = c.server("a");
    let mut alice = WsClient::login(a.ws, "alice").await;
    alice
        .send(r#"{"op":"send","to":"bob","text":"only once","cid":"c-42"}"#)
        .await;
    // The connection drops before the client reads its answer.
    drop(alice);
    let mut alice = WsClient::login(c.server("b").ws, "alice").await;
    alice
        .send(r#"{"op":"send","to":"bob","text":"only once","cid":"c-42"}"#)
        .await;
    let first: serde_json::Value =
        serde_json::from_str(&alice.expect_prefix("{\"type\":\"sent\"").await).expect("json");
    alice
        .send(r#"{"op":"send","to":"bob","text":"only once","cid":"c-42"}"#)
        .await;
    let again: serde_json::Value =
        serde_json::from_str(&alice.expect_prefix("{\"type\":\"sent\"").await).expect("json");
    assert_eq!(first["id"], again["id"]);
    assert_eq!(
        (first["seq"].as_u64(), first["cid"].as_str()),
        (Some(1), Some("c-42"))
    );
    assert_eq!(again["seq"], first["seq"]);
    let key = "sb:{u:bob}:inbox";
    let len: u64 = c.redis.cmd_on(key, redis::cmd("XLEN").arg(key));
    assert_eq!(len, 1, "bob's inbox holds the message once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_a_redis_kill_9() {
    let mut c = Cluster::start(2).await;
    let mut alice = WsClient::login(c.server("a").ws, "alice").await;
    for n in 1..=50 {
        alice.send(&format!("SEND bob durable {n}")).await;
        alice.expect_prefix("OK SENT ").await;
    }
    drop(alice);
    c.redis.restart(false);
    let mut bob = switchboard_tests::eventually(Duration::from_secs(10), || async {
        let mut w = WsClient::connect(c.server("b").ws, "/ws").await.ok()?;
        w.send("LOGIN bob").await;
        w.recv().await.starts_with("OK LOGIN").then_some(w)
    })
    .await
    .expect("bob logs in after the restart");
    let mut seen = Vec::new();
    for _ in 0..50 {
        seen.push(parse_msg(&bob.expect_prefix("MSG ").await).0);
    }
    assert_eq!(seen, (1..=50).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_says_so_when_the_inbox_was_lost() {
    let mut c = Cluster::start(1).await;
    let mut alice = WsClient::login(c.server("a").ws, "alice").await;
    let mut bob = WsClient::login(c.server("a").ws, "bob").await;
    alice.send("SEND bob before").await;
    alice.expect_prefix("OK SENT ").await;
    bob.expect_prefix("MSG 1 ").await;
    bob.send("SYNC 1").await;
    let epoch = bob
        .expect_prefix("OK SYNC 1 ")
        .await
        .rsplit(' ')
        .next()
        .expect("epoch")
        .to_owned();
    // Redis comes back empty (no persistence): bob's inbox is gone.
    c.redis.restart(true);
    let mut sent = false;
    for _ in 0..50 {
        alice.send("SEND bob after").await;
        if alice.recv().await.starts_with("OK SENT ") {
            sent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(sent, "sending works again once Redis is back");
    bob.send(&format!("SYNC 1 {epoch}")).await;
    let gap = bob.expect_prefix("ERR gap ").await;
    assert!(gap.starts_with("ERR gap 1 1 "), "{gap}");
    let (seq, _, _, text) = parse_msg(&bob.expect_prefix("MSG ").await);
    assert_eq!((seq, text.as_str()), (1, "after"));
    let ok = bob.expect_prefix("OK SYNC ").await;
    assert!(!ok.ends_with(&epoch), "a new inbox epoch: {ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_reports_messages_trimmed_by_the_inbox_bound() {
    let c = Cluster::start_with(1, |cfg| {
        cfg.limits.inbox_max_len = 10;
        cfg.limits.rate_limit = 0; // 400 sends at once: this test is about the bound
    })
    .await;
    let mut alice = WsClient::login(c.server("a").ws, "alice").await;
    for n in 1..=400 {
        alice.send(&format!("SEND bob n{n}")).await;
    }
    for _ in 1..=400 {
        alice.expect_prefix("OK SENT ").await;
    }
    let mut bob = WsClient::login(c.server("a").ws, "bob").await;
    // The login replay already says what was trimmed.
    let first_line = bob.recv().await;
    assert!(first_line.starts_with("ERR gap 1 "), "{first_line}");
    let (got, other) = sync_text(&mut bob, 0).await;
    let first = *got.keys().next().expect("some kept");
    // `XADD MAXLEN ~ 10` trims whole stream nodes: Redis keeps at least the
    // bound and less than one node (stream-node-max-entries, 100 by default)
    // beyond it.
    assert!(
        (10..110).contains(&got.len()),
        "the bound of 10 trimmed the inbox to {} kept",
        got.len()
    );
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        (first..=400).collect::<Vec<_>>(),
        "what is kept is the newest, without holes"
    );
    let gap = format!("ERR gap 1 {} trimmed by the inbox bound", first - 1);
    assert_eq!(first_line, gap);
    assert_eq!(other.last().map(String::as_str), Some(gap.as_str()));
    assert_eq!(*got.keys().last().expect("last"), 400);
}

/// Writing a line, for either kind of client.
#[allow(async_fn_in_trait)]
trait SendLine: LineClient {
    async fn send_line(&mut self, line: &str);
}

impl SendLine for WsClient {
    async fn send_line(&mut self, line: &str) {
        self.send(line).await;
    }
}

impl SendLine for TcpClient {
    async fn send_line(&mut self, line: &str) {
        self.send(line).await;
    }
}

/// `from` sends `to_user` (on another server) a direct message, read by `to`.
async fn crossed(from: &mut impl SendLine, to: &mut impl LineClient, to_user: &str, text: &str) {
    from.send_line(&format!("SEND {to_user} {text}")).await;
    from.expect_prefix("OK SENT ").await;
    let got = to.expect_prefix("MSG ").await;
    assert!(got.ends_with(text), "{to_user} got {got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_messages_reach_members_everywhere_and_no_server_without_members() {
    let c = Cluster::start(3).await;
    let mut m1 = WsClient::login(c.server("a").ws, "m1").await;
    let mut m2 = TcpClient::login(c.server("b").tcp, "m2").await;
    let mut m3 = WsClient::login(c.server("a").ws, "m3").await;
    let mut outsider = WsClient::login(c.server("c").ws, "outsider").await;
    for client in [&mut m1, &mut m3] {
        client.send("JOIN lobby").await;
        assert_eq!(client.recv().await, "OK JOIN lobby");
    }
    m2.send("JOIN lobby").await;
    assert_eq!(m2.recv().await, "OK JOIN lobby");
    // `OK JOIN` says this server knows; the relay learns it from the link's
    // next frames. A link is one ordered stream: once a direct message that
    // m2 sends after joining has crossed the relay, the relay has read the
    // interest that went before it.
    crossed(&mut m2, &mut m1, "m1", "after join").await;
    let c_before = c.server("c").metrics.frames_from_relay.get();

    m1.send("PUB lobby hello room").await;
    assert!(m1.expect_prefix("OK PUB lobby ").await.len() > 13);
    assert!(
        m2.expect_prefix("ROOM lobby m1 ")
            .await
            .ends_with(" hello room")
    );
    assert!(
        m3.expect_prefix("ROOM lobby m1 ")
            .await
            .ends_with(" hello room")
    );
    // Server c has no member. A direct message that m1 sends after the room
    // message travels the same links behind it: when it reaches the
    // outsider, a room frame for c would have arrived first. It did not.
    crossed(&mut m1, &mut outsider, "outsider", "after pub").await;
    assert_eq!(
        c.server("c").metrics.frames_from_relay.get(),
        c_before + 1,
        "server c got the direct message and no room frame"
    );

    // After m2 leaves, server b stops getting the room.
    m2.send("LEAVE lobby").await;
    assert_eq!(m2.recv().await, "OK LEAVE lobby");
    crossed(&mut m2, &mut m1, "m1", "after leave").await;
    let b_before = c.server("b").metrics.frames_from_relay.get();
    m3.send("PUB lobby second").await;
    m3.expect_prefix("OK PUB lobby ").await;
    assert!(
        m1.expect_prefix("ROOM lobby m3 ")
            .await
            .ends_with(" second")
    );
    crossed(&mut m3, &mut m2, "m2", "after second").await;
    assert_eq!(
        c.server("b").metrics.frames_from_relay.get(),
        b_before + 1,
        "server b got the direct message and no room frame"
    );

    // A broadcast reaches everyone on every server (insecure mode: anyone may).
    outsider.send("ALL maintenance at noon").await;
    outsider.expect_prefix("OK ALL ").await;
    assert!(
        m1.expect_prefix("ALL outsider ")
            .await
            .ends_with("maintenance at noon")
    );
    assert!(
        m2.expect_prefix("ALL outsider ")
            .await
            .ends_with("maintenance at noon")
    );
}

/// Milliseconds since the Unix epoch, the clock the servers stamp messages with.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The `<unix-ms>` stamp of `MSG` number `seq` in `c`'s own inbox (by SYNC).
async fn stamp_of(c: &mut WsClient, seq: u64) -> u64 {
    c.send(&format!("SYNC {}", seq - 1)).await;
    let line = c.expect_prefix(&format!("MSG {seq} ")).await;
    c.expect_prefix("OK SYNC ").await;
    line.split(' ')
        .nth(5)
        .and_then(|t| t.parse().ok())
        .expect("MSG unix-ms")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_older_than_the_age_bound_leave_the_inbox() {
    const AGE: Duration = Duration::from_secs(4);
    let c = Cluster::start_with(1, |cfg| cfg.limits.inbox_max_age = AGE).await;
    let mut alice = WsClient::login(c.server("a").ws, "alice").await;
    async fn send(alice: &mut WsClient, range: std::ops::RangeInclusive<u32>) {
        for n in range {
            alice.send(&format!("SEND bob n{n}")).await;
            alice.expect_prefix("OK SENT ").await;
        }
    }
    // The server's own stamps decide, not this test's sleeps. The store
    // checks the age bound when it appends seq 1, 11, 21, 31, ... (every
    // 10th). Wait until message 20 is half the age old, send 21..=30 (they
    // keep the inbox alive; 21's check finds nothing old yet), then wait
    // until 20 is past the age, and send the 31st, whose append checks the
    // age. 21 is then about half the age old, far from the bound.
    send(&mut alice, 1..=20).await;
    let stamp_20 = stamp_of(&mut alice, 20).await;
    let half = AGE.as_millis() as u64 / 2;
    let age = AGE.as_millis() as u64;
    wait_until_unix_ms(stamp_20 + half).await;
    let before_21 = unix_ms();
    send(&mut alice, 21..=30).await;
    wait_until_unix_ms(stamp_20 + age + 50).await;
    send(&mut alice, 31..=31).await;
    let stamp_21 = stamp_of(&mut alice, 21).await;
    let stamp_31 = stamp_of(&mut alice, 31).await;
    assert!(stamp_21 >= before_21 && stamp_31 > stamp_20 + age);
    assert!(
        stamp_31 < stamp_21 + age,
        "the machine stalled for {} ms: 21 is past the age too; nothing to conclude",
        stamp_31 - stamp_21
    );
    let mut bob = WsClient::login(c.server("a").ws, "bob").await;
    let first = bob.recv().await;
    assert_eq!(first, "ERR gap 1 20 trimmed by the inbox bound");
    let (seq, _, _, text) = parse_msg(&bob.expect_prefix("MSG ").await);
    assert_eq!((seq, text.as_str()), (21, "n21"));
}

/// Sleeps until the wall clock reads `ms` (Unix milliseconds).
async fn wait_until_unix_ms(ms: u64) {
    let now = unix_ms();
    if ms > now {
        tokio::time::sleep(Duration::from_millis(ms - now)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_keeps_a_bounded_history_for_late_joiners() {
    let c = Cluster::start_with(2, |cfg| cfg.limits.room_history = 100).await;
    let mut m1 = WsClient::login(c.server("a").ws, "m1").await;
    m1.send("JOIN lobby").await;
    m1.expect_prefix("OK JOIN").await;
    for n in 1..=150 {
        m1.send(&format!("PUB lobby n{n}")).await;
    }
    for _ in 1..=150 {
        m1.expect_prefix("OK PUB ").await;
    }
    // A user on the other server arriving later reads what it missed.
    let mut late = TcpClient::login(c.server("b").tcp, "late").await;
    late.send("HISTORY lobby 3").await;
    for n in 148..=150 {
        assert!(late.recv().await.ends_with(&format!(" n{n}")));
    }
    assert_eq!(late.recv().await, "OK HISTORY lobby 3");
    // Asking for more than the bound gets about the bound (Redis trims in blocks).
    late.send(r#"{"op":"history","room":"lobby","count":1000,"cid":"h"}"#)
        .await;
    let mut rooms = 0;
    let done = loop {
        let line = late.recv().await;
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        if v["type"] == "room" {
            rooms += 1;
        } else {
            break v;
        }
    };
    assert_eq!(
        (
            done["type"].as_str(),
            done["count"].as_u64(),
            done["cid"].as_str()
        ),
        (Some("history"), Some(rooms), Some("h"))
    );
    assert!((100..150).contains(&rooms), "{rooms} kept");
}

/// Logs `user` in as `device` (JSON) on `addr`; returns the client and the
/// seqs of its login replay (read up to the answer of a ping sent after it).
async fn device_login(
    addr: std::net::SocketAddr,
    user: &str,
    device: &str,
) -> (WsClient, Vec<u64>) {
    let mut c = WsClient::connect(addr, "/ws").await.expect("ws connect");
    c.send(&serde_json::json!({"op":"login","user":user,"device":device}).to_string())
        .await;
    c.expect_prefix(r#"{"type":"login""#).await;
    let replay = json_seqs_until_pong(&mut c).await;
    (c, replay)
}

/// Sends a ping; the seqs of the `msg` objects read before its `pong`.
async fn json_seqs_until_pong(c: &mut WsClient) -> Vec<u64> {
    c.send(r#"{"op":"ping"}"#).await;
    let mut seqs = Vec::new();
    loop {
        let v: serde_json::Value = serde_json::from_str(&c.recv().await).expect("json");
        match v["type"].as_str() {
            Some("pong") => return seqs,
            Some("msg") => seqs.push(v["seq"].as_u64().expect("seq")),
            other => panic!("unexpected {other:?}: {v}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_device_has_its_own_ack_cursor_that_never_moves_back() {
    let c = Cluster::start(2).await;
    let (a, b) = (c.server("a").ws, c.server("b").ws);
    let (mut phone, replay) = device_login(a, "alice", "phone").await;
    assert!(replay.is_empty());
    let (mut laptop, replay) = device_login(b, "alice", "laptop").await;
    assert!(replay.is_empty());
    let mut bob = WsClient::login(b, "bob").await;
    for n in 1..=5 {
        bob.send(&format!("SEND alice n{n}")).await;
        bob.expect_prefix("OK SENT ").await;
    }
    // Both devices got all five live; each acknowledges its own way.
    let mut live = Vec::new();
    while live.len() < 5 {
        let v: serde_json::Value =
            serde_json::from_str(&phone.expect_prefix(r#"{"type":"msg""#).await).expect("json");
        live.push(v["seq"].as_u64().expect("seq"));
    }
    assert_eq!(live, [1, 2, 3, 4, 5]);
    phone.send(r#"{"op":"ack","seq":3}"#).await;
    phone.send(r#"{"op":"ack","seq":1}"#).await; // backwards: ignored
    assert_eq!(json_seqs_until_pong(&mut phone).await, Vec::<u64>::new());
    laptop.send("ACK 5").await;
    laptop.send("ACK 2").await; // backwards: ignored
    laptop.send("PING").await;
    let mut laptop_lines = Vec::new();
    loop {
        let l = laptop.recv().await;
        if l == "PONG" {
            break;
        }
        laptop_lines.push(l);
    }
    assert!(
        laptop_lines
            .iter()
            .all(|l| l.starts_with("{\"type\":\"msg\"")),
        "ACK has no answer: {laptop_lines:?}"
    );
    drop((phone, laptop));

    // Each device's next login replays exactly what it did not acknowledge,
    // on whichever server it comes back to.
    let (_phone, replay) = device_login(b, "alice", "phone").await;
    assert_eq!(replay, [4, 5], "the phone acknowledged 3 (then 1: ignored)");
    let (_laptop, replay) = device_login(a, "alice", "laptop").await;
    assert_eq!(replay, Vec::<u64>::new(), "the laptop acknowledged 5");
    // A device that never acknowledged anything gets everything.
    let (_tablet, replay) = device_login(a, "alice", "tablet").await;
    assert_eq!(replay, [1, 2, 3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cid_is_remembered_for_cid_ttl_and_then_forgotten() {
    let c = Cluster::start_with(1, |cfg| cfg.limits.cid_ttl = Duration::from_secs(1)).await;
    let mut alice = WsClient::login(c.server("a").ws, "alice").await;
    let send = r#"{"op":"send","to":"bob","text":"again","cid":"c-1"}"#;
    alice.send(send).await;
    let first: serde_json::Value =
        serde_json::from_str(&alice.expect_prefix(r#"{"type":"sent""#).await).expect("json");
    // Within the TTL a retry is the same message; once it has passed, the
    // same cid is a new message (the TTL bounds what Redis remembers; with
    // the default of a day this loop would never end).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let second = loop {
        alice.send(send).await;
        let v: serde_json::Value =
            serde_json::from_str(&alice.expect_prefix(r#"{"type":"sent""#).await).expect("json");
        // The message id comes from sender and cid, so only the seq tells
        // a new copy from the first one.
        if v["seq"] != first["seq"] {
            break v;
        }
        assert_eq!(v["id"], first["id"], "a retry within the TTL: {v}");
        assert!(
            std::time::Instant::now() < deadline,
            "the cid was never forgotten"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (first["seq"].as_u64(), second["seq"].as_u64()),
        (Some(1), Some(2))
    );
    let mut bob = WsClient::login(c.server("a").ws, "bob").await;
    bob.send("PING").await;
    let mut texts = 0;
    loop {
        let l = bob.recv().await;
        if l == "PONG" {
            break;
        }
        texts += usize::from(l.ends_with(" again"));
    }
    assert_eq!(texts, 2, "stored once within the TTL, once after");
}
