//! The Rust client crate (`switchboard-client`) against a real cluster:
//! sends answered once stored and delivered across servers, rooms, a
//! `kill -9` of the client's server with nothing lost or doubled, `SYNC` on
//! a gap, a full server's alternative, and a refused token.

use std::collections::BTreeSet;
use std::time::Duration;

use switchboard_client::{Client, Config, Endpoint, Error, Event};
use switchboard_tests::procs::{RelayProc, ServerProc, any_port};
use switchboard_tests::{Cluster, RedisServer, WsClient, eventually, http_get};
use tokio::sync::mpsc;

/// How long a test waits for an event it expects.
const WAIT: Duration = Duration::from_secs(20);

fn config(user: &str, servers: Vec<Endpoint>) -> Config {
    let mut c = Config::new(user, servers);
    c.backoff_first = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(500);
    c.request_timeout = Duration::from_secs(30);
    c
}

/// The next event matching `want`, skipping others; panics after [`WAIT`].
async fn next_matching<T>(
    events: &mut mpsc::Receiver<Event>,
    mut want: impl FnMut(Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev)) => {
                let shown = format!("{ev:?}");
                match want(ev) {
                    Some(t) => return t,
                    None => eprintln!("(skipped {shown})"),
                }
            }
            Ok(None) => panic!("event stream ended"),
            Err(_) => panic!("no matching event within {WAIT:?}"),
        }
    }
}

/// The next direct message: `(seq, from, text)`.
async fn next_message(events: &mut mpsc::Receiver<Event>) -> (Option<u64>, String, String) {
    next_matching(events, |ev| match ev {
        Event::Message { seq, msg } => Some((seq, msg.from, msg.text)),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_are_stored_then_delivered_across_servers_in_both_transports() {
    let c = Cluster::start(2).await;
    let (alice, mut alice_ev) =
        Client::connect(config("alice", vec![Endpoint::ws(c.server("a").ws)]))
            .await
            .expect("alice connects");
    let (bob, mut bob_ev) = Client::connect(config("bob", vec![Endpoint::tcp(c.server("b").tcp)]))
        .await
        .expect("bob connects over the line protocol");
    assert_eq!(alice.who("bob").await.expect("who"), 1);
    assert_eq!(alice.who("nobody").await.expect("who"), 0);

    let sent = alice.send("bob", "hello  bob").await.expect("stored");
    assert_eq!(sent.seq, 1, "bob's first inbox message");
    let (seq, from, text) = next_message(&mut bob_ev).await;
    assert_eq!(
        (seq, from.as_str(), text.as_str()),
        (Some(1), "alice", "hello  bob")
    );

    let reply = bob
        .send("alice", "hi alice\nsecond line")
        .await
        .expect("stored");
    // Alice's inbox: her own message to bob (1), then bob's reply (2).
    assert_eq!(reply.seq, 2);
    let (seq, from, text) = next_message(&mut alice_ev).await;
    assert_eq!(seq, Some(2));
    assert_eq!(from, "bob");
    // Over the line protocol a newline travels as `\n`; both ends agree.
    assert_eq!(text, "hi alice\nsecond line");

    // Rooms: live fan-out across servers, and the history.
    alice.join("lobby").await.expect("join");
    bob.join("lobby").await.expect("join");
    let id = bob.publish("lobby", "room hello").await.expect("published");
    let room = next_matching(&mut alice_ev, |ev| match ev {
        Event::Room(m) => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(
        (room.id, room.from.as_str(), room.text.as_str()),
        (id, "bob", "room hello")
    );
    let history = alice.history("lobby", Some(10)).await.expect("history");
    assert_eq!(
        history.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["room hello"]
    );

    // A refused command is a typed error, and the client lives on.
    match alice.send("no body", "x").await {
        Err(Error::Server(e)) => assert_eq!(e.code, shared::client::ErrCode::Syntax),
        other => panic!("expected a syntax refusal, got {other:?}"),
    }
    alice.ping().await.expect("still alive");
    alice.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_of_its_server_the_client_resumes_with_nothing_lost_or_doubled() {
    const N: usize = 60;
    let redis = RedisServer::start();
    let relay = RelayProc::start(&redis.url(), any_port(), &[]);
    let mut a = ServerProc::start("a", &redis.url(), relay.link, &[]);
    let b = ServerProc::start("b", &redis.url(), relay.link, &[]);
    a.wait_linked(1);
    b.wait_linked(1);

    // Rita is on a (b is her second choice); Sam on b keeps sending to her.
    let (rita, mut rita_ev) =
        Client::connect(config("rita", vec![Endpoint::ws(a.ws), Endpoint::ws(b.ws)]))
            .await
            .expect("rita connects");
    let (sam, mut sam_ev) = Client::connect(config("sam", vec![Endpoint::ws(b.ws)]))
        .await
        .expect("sam connects");
    let sender = tokio::spawn(async move {
        for n in 1..=N {
            sam.send("rita", &format!("m{n}"))
                .await
                .expect("sam's send stored");
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        sam
    });

    let mut got = Vec::new();
    let mut seqs = Vec::new();
    while got.len() < N / 3 {
        let (seq, from, text) = next_message(&mut rita_ev).await;
        assert_eq!(from, "sam");
        seqs.push(seq.expect("a stored message"));
        got.push(text);
    }
    a.proc.kill9();
    // Rita's own sends while her server is gone: answered after the
    // reconnect, each stored once.
    let replies = {
        let rita = rita.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for k in 1..=5 {
                ids.push(
                    rita.send("sam", &format!("r{k}"))
                        .await
                        .expect("rita's send stored")
                        .msg_id,
                );
            }
            ids
        })
    };
    let mut reconnected = None;
    while got.len() < N {
        let ev = tokio::time::timeout(WAIT, rita_ev.recv())
            .await
            .expect("events keep coming")
            .expect("stream open");
        match ev {
            Event::Message { seq, msg } => {
                assert_eq!(msg.from, "sam", "only sam writes to rita");
                seqs.push(seq.expect("a stored message"));
                got.push(msg.text);
            }
            Event::Connected { endpoint, .. } => reconnected = Some(endpoint),
            Event::Lost { from, to } => panic!("rita lost {from}..={to}"),
            _ => {}
        }
    }
    assert_eq!(reconnected, Some(Endpoint::ws(b.ws)), "rita moved to b");
    let expected: Vec<String> = (1..=N).map(|n| format!("m{n}")).collect();
    assert_eq!(got, expected, "every message once, in order");
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs increase: {seqs:?}"
    );
    let sam = sender.await.expect("sender");

    // Sam gets each of rita's outage-time messages exactly once.
    let ids = replies.await.expect("replies");
    let mut seen = Vec::new();
    while seen.len() < ids.len() {
        let (_, from, text) = next_message(&mut sam_ev).await;
        assert_eq!(from, "rita");
        seen.push(text);
    }
    assert_eq!(seen, ["r1", "r2", "r3", "r4", "r5"]);
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 5);
    // Nothing more arrives (no second copy of a re-sent message).
    sam.ping().await.expect("ping");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), async {
            next_message(&mut sam_ev).await
        })
        .await
        .is_err(),
        "a message arrived twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_dropped_while_the_relay_is_down_is_recovered_by_sync_on_the_gap() {
    let redis = RedisServer::start();
    let link = any_port();
    let mut relay = RelayProc::start(&redis.url(), link, &[]);
    let a = ServerProc::start("a", &redis.url(), link, &[]);
    let b = ServerProc::start("b", &redis.url(), link, &[]);
    a.wait_linked(1);
    b.wait_linked(1);
    let (alice, _alice_ev) = Client::connect(config("alice", vec![Endpoint::ws(a.ws)]))
        .await
        .expect("alice");
    let (_bob, mut bob_ev) = Client::connect(config("bob", vec![Endpoint::ws(b.ws)]))
        .await
        .expect("bob");
    alice.send("bob", "one").await.expect("stored");
    assert_eq!(next_message(&mut bob_ev).await.2, "one");

    relay.proc.kill9();
    // Server a knows its link is gone (its health says degraded).
    eventually(WAIT, || async {
        let (status, body) = http_get(a.ws, "/healthz").await;
        (status == 503 && body.contains("degraded")).then_some(())
    })
    .await
    .expect("server a notices the relay is gone");
    // Stored, but its push has no way to b.
    assert_eq!(alice.send("bob", "two").await.expect("stored").seq, 2);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), next_message(&mut bob_ev))
            .await
            .is_err(),
        "nothing can reach bob while the relay is down"
    );

    let _relay2 = RelayProc::start(&redis.url(), link, &[]);
    a.wait_linked(2);
    b.wait_linked(2);
    // The push of "three" reaches bob: seq 3, after the hole at 2.
    let three = alice.send("bob", "three").await.expect("stored");
    assert_eq!(three.seq, 3);
    // Bob's client saw 3 after 1, synced, and delivers 2 then 3.
    assert_eq!(
        next_message(&mut bob_ev).await,
        (Some(2), "alice".into(), "two".into())
    );
    assert_eq!(
        next_message(&mut bob_ev).await,
        (Some(3), "alice".into(), "three".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_left_by_its_own_sends_is_synced_and_not_reported_as_news() {
    let c = Cluster::start(1).await;
    let a = c.server("a");
    let (alice, _alice_ev) = Client::connect(config("alice", vec![Endpoint::ws(a.ws)]))
        .await
        .expect("alice");
    let (bob, mut bob_ev) = Client::connect(config("bob", vec![Endpoint::ws(a.ws)]))
        .await
        .expect("bob");
    // Bob's own sends take seqs 1..=3 in his inbox, which the server does
    // not push back to the session that sent them.
    for n in 1..=3 {
        bob.send("alice", &format!("b{n}")).await.expect("stored");
    }
    assert_eq!(alice.send("bob", "a1").await.expect("stored").seq, 4);
    // Bob's client sees 4 after 0: a gap, a SYNC, and only alice's message.
    assert_eq!(
        next_message(&mut bob_ev).await,
        (Some(4), "alice".into(), "a1".into())
    );
    assert_eq!(bob.position().await.expect("position").seq, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_sends_the_client_to_an_alternative() {
    let mut c = Cluster::start_with(1, |cfg| cfg.max_connections = 1).await;
    c.add_server_with("b", |_| {}).await;
    let (a, b) = (c.server("a"), c.server("b"));
    let _occupant = WsClient::login(a.ws, "occupant").await;
    for (endpoint, alternative) in [
        (Endpoint::ws(a.ws), Endpoint::ws(b.ws)),
        (Endpoint::tcp(a.tcp), Endpoint::tcp(b.tcp)),
    ] {
        // Server a learns of b through the registry (refreshed every 2 s).
        let (client, mut events) = eventually(WAIT, || async {
            Client::connect(config("mover", vec![endpoint.clone()]))
                .await
                .ok()
        })
        .await
        .expect("connected through the alternative");
        let on = next_matching(&mut events, |ev| match ev {
            Event::Connected { endpoint, .. } => Some(endpoint),
            _ => None,
        })
        .await;
        assert_eq!(on, alternative);
        client.close().await;
    }
    // With nowhere else to go, the refusal is typed.
    let only_a = Cluster::start_with(1, |cfg| cfg.max_connections = 1).await;
    let _occupant = WsClient::login(only_a.server("a").ws, "occupant").await;
    match Client::connect(config("mover", vec![Endpoint::ws(only_a.server("a").ws)])).await {
        Err(Error::Full(_)) => {}
        other => panic!("expected Error::Full, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_a_typed_error_and_a_good_one_logs_in() {
    let dir = tempfile::tempdir().expect("dir");
    let secret = dir.path().join("token.key");
    std::fs::write(&secret, "client-test-secret-0123456789abcdef").expect("secret");
    let c = Cluster::start_with(1, |cfg| {
        cfg.insecure_login = false;
        cfg.token_secret_file = Some(secret.clone());
    })
    .await;
    let auth = message_server::auth::TokenAuth::from_secret(b"client-test-secret-0123456789abcdef");
    let ws = Endpoint::ws(c.server("a").ws);

    let mut forged = config("alice", vec![ws.clone()]);
    forged.token = Some(
        auth.mint("mallory", Duration::from_secs(60), false)
            .expect("mint"),
    );
    match Client::connect(forged).await {
        Err(Error::Auth(e)) => assert_eq!(e.code, shared::client::ErrCode::Auth),
        other => panic!("expected Error::Auth, got {:?}", other.map(|_| ())),
    }
    let missing = config("alice", vec![Endpoint::tcp(c.server("a").tcp)]);
    assert!(matches!(
        Client::connect(missing).await,
        Err(Error::Auth(_))
    ));

    let mut good = config("alice", vec![ws]);
    good.token = Some(
        auth.mint("alice", Duration::from_secs(60), false)
            .expect("mint"),
    );
    let (alice, _events) = Client::connect(good).await.expect("a valid token logs in");
    alice.ping().await.expect("ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumed_from_a_saved_position_gets_only_what_came_after() {
    let c = Cluster::start(2).await;
    let (alice, _alice_ev) = Client::connect(config("alice", vec![Endpoint::ws(c.server("a").ws)]))
        .await
        .expect("alice");
    // Bob reads without acknowledging: a later login replays all of it.
    let mut bob_config = config("bob", vec![Endpoint::tcp(c.server("b").tcp)]);
    bob_config.auto_ack = false;
    let (bob, mut bob_ev) = Client::connect(bob_config.clone()).await.expect("bob");
    for n in 1..=3 {
        alice.send("bob", &format!("m{n}")).await.expect("stored");
    }
    for n in 1..=3 {
        assert_eq!(next_message(&mut bob_ev).await.2, format!("m{n}"));
    }
    let saved = bob.position().await.expect("position");
    assert_eq!(saved.seq, 3);
    bob.close().await;
    next_matching(&mut bob_ev, |ev| {
        matches!(ev, Event::Stopped { .. }).then_some(())
    })
    .await;

    for n in 4..=5 {
        alice.send("bob", &format!("m{n}")).await.expect("stored");
    }
    bob_config.resume = Some(saved);
    let (_bob, mut bob_ev) = Client::connect(bob_config).await.expect("bob again");
    assert_eq!(
        next_message(&mut bob_ev).await,
        (Some(4), "alice".into(), "m4".into())
    );
    assert_eq!(
        next_message(&mut bob_ev).await,
        (Some(5), "alice".into(), "m5".into())
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), next_message(&mut bob_ev))
            .await
            .is_err(),
        "nothing before the saved position comes again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_lost_with_redis_is_reported_and_the_new_one_delivered() {
    let mut c = Cluster::start(2).await;
    let (alice, _alice_ev) = Client::connect(config("alice", vec![Endpoint::ws(c.server("a").ws)]))
        .await
        .expect("alice");
    let (_bob, mut bob_ev) = Client::connect(config("bob", vec![Endpoint::ws(c.server("b").ws)]))
        .await
        .expect("bob");
    for n in 1..=3 {
        alice.send("bob", &format!("old{n}")).await.expect("stored");
        assert_eq!(next_message(&mut bob_ev).await.2, format!("old{n}"));
    }
    // Redis comes back empty: bob's inbox is gone, and its seqs start over.
    c.redis.restart(true);
    eventually(WAIT, || async {
        (alice.who("bob").await.ok()? == 1).then_some(())
    })
    .await
    .expect("bob's session written again");
    // Two messages: the server does not push the first live (its seq 1 is
    // at or below what bob's session has replayed, and the server's check
    // does not look at the epoch); the second one is pushed.
    for n in 1..=2 {
        let new = alice.send("bob", &format!("new{n}")).await.expect("stored");
        assert_eq!(new.seq, n, "a new inbox");
    }
    // Bob's client sees a seq it has delivered, with another id: it syncs,
    // hears that 1..=3 are gone, and delivers the new inbox.
    let lost = next_matching(&mut bob_ev, |ev| match ev {
        Event::Lost { from, to } => Some((from, to)),
        Event::Message { msg, .. } => panic!("{msg:?} before the loss was reported"),
        _ => None,
    })
    .await;
    assert_eq!(lost, (1, 3));
    assert_eq!(
        next_message(&mut bob_ev).await,
        (Some(1), "alice".into(), "new1".into())
    );
    assert_eq!(
        next_message(&mut bob_ev).await,
        (Some(2), "alice".into(), "new2".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_both_transports_reach_plain_users_on_another_server() {
    let dir = tempfile::tempdir().expect("dir");
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
    let mut c = Cluster::start(1).await;
    c.add_server_with("secure", |cfg| {
        cfg.tls_cert = Some(cert.clone());
        cfg.tls_key = Some(key.clone());
    })
    .await;
    let secure = c.server("secure");
    let tls = switchboard_client::Tls {
        connector: tls_config::TlsConnector::from(
            tls_config::client_config(&cert).expect("client config"),
        ),
        server_name: tls_config::server_name("localhost").expect("name"),
    };
    let (plain, mut plain_ev) =
        Client::connect(config("paul", vec![Endpoint::ws(c.server("a").ws)]))
            .await
            .expect("paul");
    for (user, endpoint) in [
        ("tess", Endpoint::ws(secure.ws)),
        ("tina", Endpoint::tcp(secure.tcp)),
    ] {
        let mut cfg = config(user, vec![endpoint.clone()]);
        cfg.tls = Some(tls.clone());
        let (client, mut events) = Client::connect(cfg).await.expect("login over TLS");
        client.send("paul", "over tls").await.expect("stored");
        let (_, from, text) = next_message(&mut plain_ev).await;
        assert_eq!((from.as_str(), text.as_str()), (user, "over tls"));
        plain.send(user, "back").await.expect("stored");
        assert_eq!(next_message(&mut events).await.2, "back");
        // Without TLS, the same endpoint gets nowhere.
        assert!(Client::connect(config(user, vec![endpoint])).await.is_err());
    }
}
