//! Push after a fault (issue 13), with real processes: a message stored
//! while a live session could not be pushed to reaches that session without
//! the client asking (no `SYNC`), within 5 s of the fault's end; a relay
//! that loses only its own link to a server that another relay still holds
//! purges nothing; and Redis paused in the middle of a stream answers every
//! send within a bound and loses nothing it acknowledged. Pushes dropped at
//! a full queue (the relay's towards the recipient's server, or the
//! sender's server's own link queue) or for want of any link on the
//! sender's side are caught up (`CatchUp`) once the queue drained or the
//! link is back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchboard_tests::clients::Seen;
use switchboard_tests::procs::{RelayProc, ServerProc, any_port};
use switchboard_tests::proxy::{Mode, Proxy};
use switchboard_tests::{LineClient, RedisServer, WsClient, eventually, http_get, metric};

/// The message id in `OK SENT <id> <seq>`.
fn sent_id(line: &str) -> String {
    line.split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no id in {line:?}"))
        .to_owned()
}

/// Sends until one message gets through from `from` to `to` (links may
/// still be coming up), then reads `to` until it is quiet, so that later
/// reads see only what comes after.
async fn warm_up(from: &mut WsClient, to: &mut WsClient, to_user: &str) {
    let start = Instant::now();
    let mut n = 0;
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no delivery to {to_user} within 20 s"
        );
        n += 1;
        from.send(&format!("SEND {to_user} warm-up {n}")).await;
        from.expect_prefix("OK SENT ").await;
        if let Seen::Line(l) = to.next_within(Duration::from_millis(500)).await
            && l.starts_with("MSG ")
        {
            break;
        }
    }
    quiet(to).await;
    quiet(from).await;
}

/// Servers a and b on `redis` with `a_flags`/`b_flags` (linked to `relay`
/// unless a flag says `--relay`), alice logged in on a and bob on b, and
/// one message from alice pushed to bob, so both links carry traffic.
async fn alice_on_a_bob_on_b(
    redis: &RedisServer,
    relay: SocketAddr,
    a_flags: &[&str],
    b_flags: &[&str],
) -> (ServerProc, ServerProc, WsClient, WsClient) {
    let a = ServerProc::start("a", &redis.url(), relay, a_flags);
    let b = ServerProc::start("b", &redis.url(), relay, b_flags);
    a.wait_linked(1);
    b.wait_linked(1);
    let mut alice = WsClient::login(a.ws, "alice").await;
    let mut bob = WsClient::login(b.ws, "bob").await;
    warm_up(&mut alice, &mut bob, "bob").await;
    (a, b, alice, bob)
}

/// Reads `c` until nothing comes for half a second.
async fn quiet(c: &mut WsClient) {
    while let Seen::Line(_) = c.next_within(Duration::from_millis(500)).await {}
}

/// Waits for a `MSG` line carrying message `id` on `c`, without sending
/// anything; the line, or a panic naming what came instead.
async fn pushed(c: &mut WsClient, id: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next_within(left).await {
            Seen::Line(l) if l.starts_with("MSG ") && l.split_whitespace().nth(4) == Some(id) => {
                return l;
            }
            Seen::Line(l) => seen.push(l),
            other => panic!("message {id} not pushed within {limit:?}: {other:?}; saw {seen:?}"),
        }
    }
}

/// Waits until `server`'s `/healthz` says it has no relay link.
async fn unlinked(server: &ServerProc) {
    let degraded = eventually(Duration::from_secs(10), || async {
        let (status, body) = http_get(server.ws, "/healthz").await;
        (status == 503 && body.contains("degraded")).then_some(())
    })
    .await;
    assert!(
        degraded.is_some(),
        "{} never lost its relay link",
        server.id
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stored_while_the_relay_was_away_is_pushed_when_a_new_relay_starts() {
    let redis = RedisServer::start();
    let mut relay = RelayProc::start(&redis.url(), any_port(), &[]);
    let (a, b, mut alice, mut bob) = alice_on_a_bob_on_b(&redis, relay.link, &[], &[]).await;

    let link = relay.link;
    relay.proc.kill9();
    unlinked(&a).await;
    unlinked(&b).await;
    alice.send("SEND bob stored while no relay ran").await;
    let sent = alice.expect_prefix("OK SENT ").await;
    let id = sent_id(&sent);
    // Not pushed while no relay runs (there is no way to b).
    assert!(
        matches!(bob.next_within(Duration::from_secs(1)).await, Seen::Timeout),
        "nothing can reach bob without a relay"
    );

    let _relay = RelayProc::start(&redis.url(), link, &[]);
    let started = Instant::now();
    let line = pushed(&mut bob, &id, Duration::from_secs(5)).await;
    let lag = started.elapsed();
    assert!(line.contains("stored while no relay ran"), "{line}");
    let seq: u64 = sent
        .split_whitespace()
        .nth(3)
        .and_then(|s| s.parse().ok())
        .expect("seq");
    assert!(line.starts_with(&format!("MSG {seq} alice bob ")), "{line}");
    println!(
        "relay restarted -> stored message pushed to bob, unasked: {lag:?} after the new relay started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_lost_with_a_broken_link_is_pushed_after_the_relink() {
    let redis = RedisServer::start();
    let relay = RelayProc::start(&redis.url(), any_port(), &[]);
    let proxy = Proxy::start(relay.link).await;
    let b_relay = proxy.addr().to_string();
    let (_a, _b, mut alice, mut bob) =
        alice_on_a_bob_on_b(&redis, relay.link, &[], &["--relay", &b_relay]).await;

    // The relay writes the frame for bob into a link that passes nothing;
    // then the link is cut, and what it held is gone.
    proxy.set(Mode::Blackhole);
    alice.send("SEND bob lost on the wire").await;
    let id = sent_id(&alice.expect_prefix("OK SENT ").await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();
    proxy.set(Mode::Forward);
    let cut = Instant::now();
    let line = pushed(&mut bob, &id, Duration::from_secs(5)).await;
    let lag = cut.elapsed();
    assert!(line.contains("lost on the wire"), "{line}");
    println!("link frame lost -> pushed to bob, unasked: {lag:?} after the cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stored_after_redis_restarted_empty_is_pushed_to_a_live_session() {
    let mut redis = RedisServer::start();
    let relay = RelayProc::start(&redis.url(), any_port(), &[]);
    let (_a, _b, mut alice, mut bob) = alice_on_a_bob_on_b(&redis, relay.link, &[], &[]).await;

    // Redis comes back with nothing: no sessions (so a does not know where
    // bob is) and a new inbox whose seqs start at 1 again.
    redis.restart(true);
    let restarted = Instant::now();
    let id = loop {
        assert!(
            restarted.elapsed() < Duration::from_secs(15),
            "no send stored within 15 s of the Redis restart"
        );
        alice.send("SEND bob after the restart").await;
        let answer = loop {
            let l = alice.recv().await;
            if l.starts_with("OK SENT ") || l.starts_with("ERR ") {
                break l;
            }
        };
        if answer.starts_with("OK SENT ") {
            break sent_id(&answer);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stored = Instant::now();
    let line = pushed(&mut bob, &id, Duration::from_secs(5)).await;
    let lag = stored.elapsed();
    assert!(line.starts_with("MSG 1 alice bob "), "{line}");
    println!(
        "redis restarted empty -> message pushed to bob, unasked: {lag:?} after OK SENT ({:?} after the restart)",
        restarted.elapsed()
    );
}

/// Sessions of `user` in Redis, as `WHO` answers it on `c`.
async fn who(c: &mut WsClient, user: &str) -> String {
    c.send(&format!("WHO {user}")).await;
    c.expect_prefix("O").await
}

fn purges(page: &str) -> f64 {
    metric(page, "relay_purge_seconds_count").unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_cut_off_from_a_live_server_does_not_purge_it() {
    let redis = RedisServer::start();
    let relay1 = RelayProc::start(&redis.url(), any_port(), &["--relay-id", "r1"]);
    let relay2 = RelayProc::start(&redis.url(), any_port(), &["--relay-id", "r2"]);
    let p1 = Proxy::start(relay1.link).await;
    let p2 = Proxy::start(relay2.link).await;
    let (p1a, p2a) = (p1.addr().to_string(), p2.addr().to_string());
    let a = ServerProc::start(
        "a",
        &redis.url(),
        relay1.link,
        &["--relay", &p1a, "--relay", &p2a],
    );
    let (r1, r2) = (relay1.link.to_string(), relay2.link.to_string());
    let b = ServerProc::start(
        "b",
        &redis.url(),
        relay1.link,
        &["--relay", &r1, "--relay", &r2],
    );
    a.wait_linked(2);
    b.wait_linked(2);
    let mut alice = WsClient::login(a.ws, "alice").await;
    let mut bob = WsClient::login(b.ws, "bob").await;
    warm_up(&mut bob, &mut alice, "alice").await;

    // Only relay 1's link to a is cut (a partition, a is alive).
    p1.set(Mode::Blackhole);
    let down = eventually(Duration::from_secs(10), || async {
        let (_, servers) = http_get(relay1.admin, "/servers").await;
        let v: serde_json::Value = serde_json::from_str(&servers).ok()?;
        let linked = v
            .as_array()?
            .iter()
            .any(|s| s["id"] == "a" && s["link"] == "up");
        (!linked).then_some(())
    })
    .await;
    assert!(down.is_some(), "relay 1 never saw its link to a die");
    // Well past the purge grace (1 s) and three heartbeats.
    let mut last_seq = 0;
    let watch_until = Instant::now() + Duration::from_secs(5);
    let mut n = 0;
    while Instant::now() < watch_until {
        assert_eq!(who(&mut bob, "alice").await, "ONLINE alice 1");
        n += 1;
        bob.send(&format!("SEND alice during the partition {n}"))
            .await;
        let sent = bob.expect_prefix("OK SENT ").await;
        let id = sent_id(&sent);
        let line = pushed(&mut alice, &id, Duration::from_secs(5)).await;
        let seq: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("seq");
        if last_seq > 0 {
            assert_eq!(seq, last_seq + 1, "a gap in alice's pushes: {line}");
        }
        last_seq = seq;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, page1) = http_get(relay1.admin, "/metrics").await;
    let (_, page2) = http_get(relay2.admin, "/metrics").await;
    assert_eq!(
        purges(&page1) + purges(&page2),
        0.0,
        "a live server was purged"
    );
    let mut probe = WsClient::login(a.ws, "probe").await;
    assert_eq!(who(&mut probe, "alice").await, "ONLINE alice 1");

    // Both links cut: no relay holds a; it is purged in the usual time.
    p2.set(Mode::Blackhole);
    let cut = Instant::now();
    let purged = eventually(Duration::from_secs(15), || async {
        let (_, page1) = http_get(relay1.admin, "/metrics").await;
        let (_, page2) = http_get(relay2.admin, "/metrics").await;
        (purges(&page1) + purges(&page2) >= 1.0).then_some(())
    })
    .await;
    assert!(purged.is_some(), "a was not purged with both links cut");
    println!(
        "one relay cut off: {n} messages pushed with no gap, no purge; both cut: purged {:?} after the cut",
        cut.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_mid_stream_answers_every_send_and_loses_nothing_acknowledged() {
    /// The bound every send is answered within (the store's response
    /// timeout is 5 s; what waited behind it goes out when Redis answers).
    const BOUND: Duration = Duration::from_secs(12);
    let redis = RedisServer::start();
    let relay = RelayProc::start(&redis.url(), any_port(), &[]);
    let a = ServerProc::start("a", &redis.url(), relay.link, &[]);
    a.wait_linked(1);
    let mut alice = WsClient::login(a.ws, "alice").await;
    let pid = redis.pid().expect("redis pid");

    let mut sent_at = std::collections::VecDeque::new();
    let mut acked = Vec::new();
    let mut errors = 0;
    let mut worst = Duration::ZERO;
    let start = Instant::now();
    let mut paused = false;
    let mut resumed = false;
    let mut n = 0;
    let mut next_send = Instant::now();
    while !(resumed && sent_at.is_empty() && start.elapsed() > Duration::from_secs(9)) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "stream did not end"
        );
        if !paused && start.elapsed() > Duration::from_secs(1) {
            assert!(
                std::process::Command::new("kill")
                    .args(["-STOP", &pid.to_string()])
                    .status()
                    .expect("kill")
                    .success()
            );
            paused = true;
        }
        if paused && !resumed && start.elapsed() > Duration::from_secs(6) {
            assert!(
                std::process::Command::new("kill")
                    .args(["-CONT", &pid.to_string()])
                    .status()
                    .expect("kill")
                    .success()
            );
            resumed = true;
        }
        if start.elapsed() < Duration::from_secs(8) && Instant::now() >= next_send {
            n += 1;
            alice
                .send(&format!(
                    r#"{{"op":"SEND","to":"bob","text":"m{n}","cid":"c{n}"}}"#
                ))
                .await;
            sent_at.push_back((n, Instant::now()));
            next_send += Duration::from_millis(50);
        }
        if let Seen::Line(l) = alice.next_within(Duration::from_millis(10)).await {
            let v: serde_json::Value = serde_json::from_str(&l).expect("json answer");
            let Some((k, at)) = sent_at.pop_front() else {
                panic!("an answer to nothing: {l}")
            };
            worst = worst.max(at.elapsed());
            assert!(
                at.elapsed() <= BOUND,
                "send {k} answered after {:?}: {l}",
                at.elapsed()
            );
            assert_eq!(v["cid"], format!("c{k}"), "answers in order: {l}");
            if v["type"] == "sent" {
                acked.push(k);
            } else {
                errors += 1;
                assert!(l.contains("unavailable"), "{l}");
            }
        }
        if let Some((k, at)) = sent_at.front() {
            assert!(
                at.elapsed() <= BOUND,
                "send {k} unanswered after {:?}",
                at.elapsed()
            );
        }
    }
    // Everything acknowledged is in bob's inbox.
    let mut bob = WsClient::login(a.ws, "bob").await;
    let mut inbox = std::collections::HashSet::new();
    bob.send("SYNC 0").await;
    loop {
        let l = bob.recv().await;
        if l.starts_with("OK SYNC") {
            break;
        }
        if let Some(text) = l.split_whitespace().nth(6) {
            inbox.insert(text.to_owned());
        }
    }
    let lost: Vec<_> = acked
        .iter()
        .filter(|k| !inbox.contains(&format!("m{k}")))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert!(!acked.is_empty());
    println!(
        "redis paused 5 s: {n} sends, {} acknowledged, {errors} ERR unavailable, worst answer {worst:?} (bound {BOUND:?}), 0 lost",
        acked.len()
    );
}

/// The seq in `OK SENT <id> <seq>` or in `MSG <seq> ...`.
fn seq_of(line: &str) -> u64 {
    let field = if line.starts_with("OK SENT ") { 3 } else { 1 };
    line.split_whitespace()
        .nth(field)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no seq in {}", &line[..line.len().min(80)]))
}

/// Sends big messages from alice to bob until `page` of `metrics_at` shows
/// `series` above zero (a full queue dropped a push), then three more.
/// Returns the first seq sent, the last `OK SENT` line and when it came.
async fn send_until_dropped(
    alice: &mut WsClient,
    metrics_at: SocketAddr,
    series: &str,
) -> (u64, String, Instant) {
    // Big frames fill the socket buffers of the held link quickly.
    let text = "y".repeat(60_000);
    let mut first = None;
    let mut n = 0;
    let mut extra = None;
    loop {
        n += 1;
        assert!(n < 1000, "no {series} after {n} messages");
        alice.send(&format!("SEND bob {n} {text}")).await;
        let sent = alice.expect_prefix("OK SENT ").await;
        first.get_or_insert(seq_of(&sent));
        match &mut extra {
            Some(0) => {
                let first = first.unwrap_or_default();
                return (first, sent, Instant::now());
            }
            Some(k) => *k -= 1,
            None if n % 4 == 0 => {
                let (_, page) = http_get(metrics_at, "/metrics").await;
                if metric(&page, series).unwrap_or(0.0) > 0.0 {
                    extra = Some(2);
                }
            }
            None => {}
        }
    }
}

/// Reads bob's pushes until seq `last`, without sending anything; checks
/// that every seq from `first` came, once and in order. Returns when the
/// last one came.
async fn pushed_through(bob: &mut WsClient, first: u64, last: u64, limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    let mut next = first;
    while next <= last {
        let left = deadline.saturating_duration_since(Instant::now());
        match bob.next_within(left).await {
            Seen::Line(l) if l.starts_with("MSG ") => {
                assert_eq!(seq_of(&l), next, "pushes out of order or with a hole");
                next += 1;
            }
            Seen::Line(_) => {}
            other => panic!(
                "bob got seqs {first}..{} of {first}..={last} within {limit:?}, then {other:?}",
                next.saturating_sub(1)
            ),
        }
    }
    Instant::now()
}

/// Which queue fills and drops in [`dropped_pushes_are_caught_up`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum FullQueue {
    /// The relay's queue towards b (the recipient's server).
    Relay,
    /// Server a's own link queue towards the relay (the sender's server).
    Sender,
}

/// alice on a sends bob on b big messages while the proxy holds one link
/// (b's for [`FullQueue::Relay`], a's for [`FullQueue::Sender`]) until the
/// queue in front of it, 4 frames, drops; the link passes again after
/// 0.3 s, and bob must get every message up to the last, in order and
/// unasked, within 5 s. No link is declared dead meanwhile (`--dead-after`
/// 60 s): a relink would wake every session anyway, and this is the case
/// where nothing but the catch-up does.
async fn dropped_pushes_are_caught_up(full: FullQueue) {
    let redis = RedisServer::start();
    let mut relay_flags = vec!["--dead-after", "60s"];
    if full == FullQueue::Relay {
        relay_flags.extend(["--link-queue", "4"]);
    }
    let relay = RelayProc::start(&redis.url(), any_port(), &relay_flags);
    let proxy = Proxy::start(relay.link).await;
    let via_proxy = proxy.addr().to_string();
    let mut a_flags = vec!["--link-dead-after", "60s"];
    let mut b_flags = vec!["--link-dead-after", "60s"];
    match full {
        FullQueue::Relay => b_flags.extend(["--relay", via_proxy.as_str()]),
        FullQueue::Sender => a_flags.extend(["--relay", via_proxy.as_str(), "--link-queue", "4"]),
    }
    let (a, _b, mut alice, mut bob) =
        alice_on_a_bob_on_b(&redis, relay.link, &a_flags, &b_flags).await;

    // The held link's writer piles up in the socket buffers, then in the
    // queue in front of it, which then drops.
    proxy.set(Mode::Blackhole);
    let (metrics_at, dropped, caught_up) = match full {
        FullQueue::Relay => (
            relay.admin,
            "relay_frames_dropped_total{reason=\"queue_full\"}",
            "relay_catch_ups_sent_total",
        ),
        FullQueue::Sender => (
            a.ws,
            "server_dropped_link_full_total",
            "server_catch_ups_sent_total",
        ),
    };
    let (first, sent, sent_at) = send_until_dropped(&mut alice, metrics_at, dropped).await;
    let last = seq_of(&sent);
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.set(Mode::Forward);
    let healed = Instant::now();
    let done = pushed_through(&mut bob, first, last, Duration::from_secs(5)).await;
    let (_, page) = http_get(metrics_at, "/metrics").await;
    assert!(
        metric(&page, caught_up).unwrap_or(0.0) >= 1.0,
        "{caught_up}"
    );
    let queue = match full {
        FullQueue::Relay => "the relay's queue to b",
        FullQueue::Sender => "server a's own link queue",
    };
    println!(
        "pushes dropped at {queue} ({} messages): all pushed to bob, unasked, {:?} after the link passed again ({:?} after the last OK SENT)",
        last - first + 1,
        done - healed,
        done - sent_at
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_the_relay_dropped_at_a_full_queue_are_caught_up_once_it_drained() {
    dropped_pushes_are_caught_up(FullQueue::Relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_a_server_dropped_at_its_own_full_link_queue_are_caught_up_once_it_drained() {
    dropped_pushes_are_caught_up(FullQueue::Sender).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_while_only_the_senders_link_was_down_is_pushed_after_its_relink() {
    let redis = RedisServer::start();
    let relay = RelayProc::start(&redis.url(), any_port(), &[]);
    let proxy = Proxy::start(relay.link).await;
    let a_relay = proxy.addr().to_string();
    let (a, _b, mut alice, mut bob) =
        alice_on_a_bob_on_b(&redis, relay.link, &["--relay", &a_relay], &[]).await;

    // Only a is cut off; b keeps its link, so nothing wakes b's sessions.
    proxy.set(Mode::Blackhole);
    unlinked(&a).await;
    alice.send("SEND bob sent while a had no link").await;
    let id = sent_id(&alice.expect_prefix("OK SENT ").await);
    assert!(
        matches!(bob.next_within(Duration::from_secs(1)).await, Seen::Timeout),
        "nothing can reach bob while a has no link"
    );

    proxy.cut();
    proxy.set(Mode::Forward);
    let healed = Instant::now();
    // Within 5 s of a's relink (its reconnect backoff comes first).
    tokio::task::block_in_place(|| a.wait_linked(2));
    let line = pushed(&mut bob, &id, Duration::from_secs(5)).await;
    assert!(line.contains("sent while a had no link"), "{line}");
    println!(
        "sender's link down, message stored -> pushed to bob, unasked: {:?} after the partition healed",
        healed.elapsed()
    );
}
