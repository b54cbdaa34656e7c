//! The core topology, end to end: real Redis, the real relay and message
//! servers, real WebSocket and telnet clients (issue 2).

use std::time::Duration;

use switchboard_tests::clients::Seen;
use switchboard_tests::{Cluster, LineClient, TcpClient, WsClient, metric};
use tokio_tungstenite::tungstenite::Message;

/// Parses `MSG <seq> <from> <to> <msg-id> <unix-ms> <text...>`.
fn msg_parts(line: &str) -> (u64, String, String, String) {
    let mut it = line.splitn(7, ' ');
    assert_eq!(it.next(), Some("MSG"), "not a MSG line: {line}");
    let seq = it.next().and_then(|s| s.parse().ok()).expect("seq");
    let from = it.next().expect("from").to_owned();
    let to = it.next().expect("to").to_owned();
    let _id = it.next().expect("id");
    let _ts = it.next().expect("ts");
    let text = it.next().expect("text").to_owned();
    (seq, from, to, text)
}

async fn relay_forwarded(c: &Cluster) -> f64 {
    let (_, page) = c.relay.get("/metrics").await;
    metric(&page, "relay_frames_forwarded_total").unwrap_or(0.0)
}

/// The relay's forwarded count once it has not moved for 300 ms.
async fn settled_relay_forwarded(c: &Cluster) -> f64 {
    let mut last = relay_forwarded(c).await;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = relay_forwarded(c).await;
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the relay's forwarded count never settled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_telnet_users_on_two_servers_talk_both_ways() {
    let c = Cluster::start(2).await;
    let mut alice = WsClient::login(c.server("a").ws, "alice").await;
    let mut bob = TcpClient::login(c.server("b").tcp, "bob").await;

    alice.send("SEND bob hello from the web").await;
    let ok = alice.expect_prefix("OK SENT ").await;
    let line = bob.expect_prefix("MSG ").await;
    let (seq, from, to, text) = msg_parts(&line);
    assert_eq!(
        (from.as_str(), to.as_str(), text.as_str()),
        ("alice", "bob", "hello from the web")
    );
    assert_eq!(
        ok.split(' ').nth(3).and_then(|s| s.parse::<u64>().ok()),
        Some(seq),
        "OK SENT names the recipient's seq"
    );

    bob.send("SEND alice hi from telnet").await;
    bob.expect_prefix("OK SENT ").await;
    let (_, from, _, text) = msg_parts(&alice.expect_prefix("MSG ").await);
    assert_eq!((from.as_str(), text.as_str()), ("bob", "hi from telnet"));
    assert!(
        relay_forwarded(&c).await >= 2.0,
        "both messages crossed the relay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_between_users_on_one_server_does_not_cross_the_relay() {
    let c = Cluster::start(2).await;
    let a = c.server("a");
    let mut alice = WsClient::login(a.ws, "alice").await;
    let mut carol = TcpClient::login(a.tcp, "carol").await;
    // The logins' `Presence` frames pass through the relay on their own
    // time: let them settle, so that what is counted below is the message.
    let before_relay = settled_relay_forwarded(&c).await;
    let before_link = a.metrics.frames_to_relay.get();

    alice.send("SEND carol same server").await;
    alice.expect_prefix("OK SENT ").await;
    let (_, from, _, text) = msg_parts(&carol.expect_prefix("MSG ").await);
    assert_eq!((from.as_str(), text.as_str()), ("alice", "same server"));

    assert_eq!(
        a.metrics.frames_to_relay.get(),
        before_link,
        "no frame left server a"
    );
    assert_eq!(
        relay_forwarded(&c).await,
        before_relay,
        "the relay forwarded nothing"
    );
    assert!(a.metrics.pushed_local.get() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_between_every_pair_of_three_servers_arrive() {
    let c = Cluster::start(3).await;
    let ids = ["a", "b", "c"];
    let mut users = Vec::new();
    for id in ids {
        users.push(WsClient::login(c.server(id).ws, &format!("u{id}")).await);
    }
    for (i, from) in ids.iter().enumerate() {
        for (j, to) in ids.iter().enumerate() {
            if i == j {
                continue;
            }
            users[i]
                .send(&format!("SEND u{to} from {from} to {to}"))
                .await;
            users[i].expect_prefix("OK SENT ").await;
            let (_, f, t, text) = msg_parts(&users[j].expect_prefix("MSG ").await);
            assert_eq!((f, t), (format!("u{from}"), format!("u{to}")));
            assert_eq!(text, format!("from {from} to {to}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_with_devices_on_two_servers_gets_every_message_on_both() {
    let c = Cluster::start(3).await;
    let mut phone = WsClient::login(c.server("a").ws, "dana").await;
    let mut laptop = TcpClient::login(c.server("b").tcp, "dana").await;
    let mut erin = WsClient::login(c.server("c").ws, "erin").await;

    for n in 0..5 {
        erin.send(&format!("SEND dana note {n}")).await;
        erin.expect_prefix("OK SENT ").await;
    }
    for n in 0..5 {
        let (_, _, _, t1) = msg_parts(&phone.expect_prefix("MSG ").await);
        let (_, _, _, t2) = msg_parts(&laptop.expect_prefix("MSG ").await);
        assert_eq!(
            (t1.as_str(), t2.as_str()),
            (format!("note {n}").as_str(), format!("note {n}").as_str())
        );
    }
    // What dana sends from her phone shows on her laptop too (not on the phone).
    phone.send("SEND erin reply from phone").await;
    phone.expect_prefix("OK SENT ").await;
    let (_, from, to, text) = msg_parts(&laptop.expect_prefix("MSG ").await);
    assert_eq!(
        (from.as_str(), to.as_str(), text.as_str()),
        ("dana", "erin", "reply from phone")
    );
    let (_, from, _, _) = msg_parts(&erin.expect_prefix("MSG ").await);
    assert_eq!(from, "dana");
    phone.send("PING").await;
    assert_eq!(
        phone.recv().await,
        "PONG",
        "the sending device got no copy of its own message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_tracks_presence_and_closed_sessions_leave_nothing_in_redis() {
    let c = Cluster::start(2).await;
    let mut alice = WsClient::login(c.server("a").ws, "alice").await;
    alice.send("WHO bob").await;
    assert_eq!(alice.recv().await, "OFFLINE bob");

    let mut bob1 = TcpClient::login(c.server("b").tcp, "bob").await;
    let bob2 = WsClient::login(c.server("a").ws, "bob").await;
    alice.send("WHO bob").await;
    assert_eq!(alice.recv().await, "ONLINE bob 2");
    alice.send(r#"{"op":"who","user":"bob","cid":"w1"}"#).await;
    let v: serde_json::Value = serde_json::from_str(&alice.recv().await).expect("json");
    assert_eq!(
        (
            v["online"].as_bool(),
            v["sessions"].as_u64(),
            v["cid"].as_str()
        ),
        (Some(true), Some(2), Some("w1"))
    );

    bob1.send("QUIT").await;
    assert_eq!(bob1.recv().await, "BYE");
    assert_eq!(
        bob1.next_within(Duration::from_secs(5)).await,
        Seen::Closed(None),
        "one BYE, then the end"
    );
    drop(bob2);
    let gone = switchboard_tests::eventually(Duration::from_secs(5), || async {
        c.redis.keys("sb:{u:bob}:sess").is_empty().then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "bob's sessions left Redis: {:?}",
        c.redis.keys("sb:{u:*}:sess")
    );
    alice.send("WHO bob").await;
    assert_eq!(alice.recv().await, "OFFLINE bob");
    for id in ["a", "b"] {
        let key = format!("sb:{{s:{id}}}:sess");
        let held: std::collections::HashMap<String, String> =
            c.redis.cmd_on(&key, redis::cmd("HGETALL").arg(&key));
        assert!(
            held.values().all(|v| !v.ends_with(" bob")),
            "server {id} still lists bob: {held:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_new_clients_are_refused_with_alternatives_and_others_keep_working() {
    let mut c = Cluster::start_with(1, |cfg| cfg.max_connections = 3).await;
    c.add_server_with("b", |_| {}).await;
    let a = c.server("a");
    let b_ws = c.server("b").ws.to_string();
    let mut u1 = WsClient::login(a.ws, "u1").await;
    let mut u2 = WsClient::login(a.ws, "u2").await;
    let mut u3 = TcpClient::login(a.tcp, "u3").await;

    // The 4th WebSocket handshake: HTTP 503 with servers that have room.
    // Server a reads the registry every --registry-interval: wait until its
    // answer names b (each try is refused, none gets in).
    let body = switchboard_tests::eventually(Duration::from_secs(15), || async {
        let err = WsClient::connect(a.ws, "/ws").await.err().expect("refused");
        let tokio_tungstenite::tungstenite::Error::Http(resp) = err else {
            panic!("expected HTTP 503, got {err:?}");
        };
        assert_eq!(resp.status().as_u16(), 503);
        let body: serde_json::Value =
            serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).expect("json body");
        assert_eq!(body["error"], "full");
        let servers = body["servers"].as_array().expect("servers list");
        servers
            .iter()
            .any(|s| s["id"] == "b" && s["ws"] == b_ws)
            .then_some(body)
    })
    .await;
    assert!(body.is_some(), "server a never named b as having room");
    // The 4th telnet client: ERR full naming another server.
    let mut t4 = TcpClient::connect(a.tcp).await;
    assert_eq!(
        t4.recv().await,
        format!("ERR full try {}", c.server("b").tcp)
    );
    t4.expect_closed().await;

    // The three sessions keep working.
    u1.send("SEND u3 still here").await;
    u1.expect_prefix("OK SENT ").await;
    assert!(u3.expect_prefix("MSG ").await.ends_with("still here"));
    u3.send("SEND u2 me too").await;
    assert!(u2.expect_prefix("MSG ").await.ends_with("me too"));
    assert!(a.metrics.refused_full.get() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_an_error_and_everyone_keeps_being_served() {
    let c = Cluster::start(1).await;
    let a = c.server("a");
    let mut bystander = WsClient::login(a.ws, "bystander").await;

    // Before login.
    let mut t = TcpClient::connect(a.tcp).await;
    t.send("SEND bob hi").await;
    assert!(t.recv().await.starts_with("ERR login "));
    t.send("LOGIN mallory").await;
    t.expect_prefix("OK LOGIN mallory ").await;
    // Malformed commands: ERR with a code, session lives on.
    for (line, code) in [
        ("SEND bob", "ERR syntax "),
        ("SEND", "ERR syntax "),
        ("FROBNICATE now", "ERR unknown "),
        ("{\"op\":", "{\"type\":\"error\""),
        ("LOGIN again", "ERR login "),
        ("ACK minus-one", "ERR syntax "),
    ] {
        t.send(line).await;
        let reply = t.recv().await;
        assert!(reply.starts_with(code), "{line:?} got {reply:?}");
    }
    // A 10 MB line: ERR toolong, the rest of the line is skipped, the session lives on.
    let big = vec![b'x'; 10 * 1024 * 1024];
    t.send_raw(b"SEND bystander ").await;
    t.send_raw(&big).await;
    t.send_raw(b"\r\n").await;
    assert!(t.recv().await.starts_with("ERR toolong "));
    t.send("PING").await;
    assert_eq!(t.recv().await, "PONG");
    // Invalid UTF-8 on telnet: ERR, session lives on.
    t.send_raw(b"SEND bystander \xff\xfe\r\n").await;
    assert!(t.recv().await.starts_with("ERR syntax "));

    // WebSocket: invalid JSON gets a JSON error; a 10 MB message closes with 1009.
    let mut w = WsClient::login(a.ws, "wendy").await;
    w.send("{\"op\":\"send\",\"to\":").await;
    let v: serde_json::Value = serde_json::from_str(&w.recv().await).expect("json error");
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("json"))
    );
    w.send(r#"{"op":"send","to":"bystander"}"#).await;
    let v: serde_json::Value = serde_json::from_str(&w.recv().await).expect("json error");
    assert_eq!(v["code"], "syntax");
    let _ = w
        .send_message(Message::text("x".repeat(10 * 1024 * 1024)))
        .await;
    assert_eq!(w.expect_close().await, Some(1009));
    // A binary frame on the chat endpoint: 1003.
    let mut b = WsClient::login(a.ws, "binny").await;
    let _ = b.send_message(Message::binary(vec![1u8, 2, 3])).await;
    assert_eq!(b.expect_close().await, Some(1003));

    // Everyone else is still served.
    t.send("SEND bystander still fine").await;
    t.expect_prefix("OK SENT ").await;
    assert!(
        bystander
            .expect_prefix("MSG ")
            .await
            .ends_with("still fine")
    );
    bystander.send("PING").await;
    assert!(
        matches!(bystander.next_within(Duration::from_secs(5)).await, Seen::Line(l) if l == "PONG")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_answers_what_is_being_stored_and_closes_cleanly() {
    let c = Cluster::start(1).await;
    let a = c.server("a");
    let mut t = TcpClient::connect(a.tcp).await;
    t.send_raw(b"LOGIN quitter\r\nSEND nobody last words\r\nQUIT\r\n")
        .await;
    t.expect_prefix("OK LOGIN quitter ").await;
    assert!(
        t.recv().await.starts_with("OK SENT "),
        "the send is answered before BYE"
    );
    assert_eq!(t.recv().await, "BYE");
    assert_eq!(
        t.next_within(Duration::from_secs(5)).await,
        Seen::Closed(None)
    );

    // A WebSocket client that closes gets the server's close frame back.
    let mut w = WsClient::login(a.ws, "closer").await;
    w.send_message(Message::Close(Some(
        tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 1000u16.into(),
            reason: "done".into(),
        },
    )))
    .await
    .expect("send close");
    assert_eq!(w.expect_close().await, Some(1000));
    let mut w = WsClient::login(a.ws, "quitter2").await;
    w.send("QUIT").await;
    assert_eq!(w.recv().await, "BYE");
    assert_eq!(w.expect_close().await, Some(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pipelining_many_sends_gets_every_answer() {
    let c = Cluster::start_with(1, |cfg| {
        cfg.limits.session_queue = 16;
        cfg.limits.rate_limit = 0;
    })
    .await;
    let mut t = TcpClient::login(c.server("a").tcp, "piper").await;
    // 1,000 sends in one write, far more than the session's queue holds:
    // the server stops reading until answers are out, instead of dropping.
    let burst: String = (0..1000).map(|n| format!("SEND sink n{n}\r\n")).collect();
    t.send_raw(burst.as_bytes()).await;
    for n in 1..=1000u64 {
        let line = t.recv().await;
        assert!(
            line.starts_with("OK SENT ") && line.ends_with(&format!(" {n}")),
            "answer {n}: {line}"
        );
    }
    assert_eq!(c.server("a").metrics.slow_consumers.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_server_is_full_the_refusal_says_try_later() {
    let c = Cluster::start_with(2, |cfg| cfg.max_connections = 1).await;
    let (a, b) = (c.server("a"), c.server("b"));
    let mut u1 = TcpClient::login(a.tcp, "u1").await;
    let mut u2 = WsClient::login(b.ws, "u2").await;
    // Server a learns that b is full from the registry (refreshed every
    // --registry-interval); until then it may still name b.
    let later = switchboard_tests::eventually(Duration::from_secs(15), || async {
        let mut t = TcpClient::connect(a.tcp).await;
        let line = t.recv().await;
        assert!(line.starts_with("ERR full try "), "{line}");
        t.expect_closed().await;
        (line == "ERR full try later: no server has room").then_some(())
    })
    .await;
    assert!(
        later.is_some(),
        "server a never said that no server has room"
    );
    // The WebSocket refusal names no server either.
    let err = WsClient::connect(a.ws, "/ws").await.err().expect("refused");
    let tokio_tungstenite::tungstenite::Error::Http(resp) = err else {
        panic!("expected HTTP 503, got {err:?}");
    };
    assert_eq!(resp.status().as_u16(), 503);
    let body: serde_json::Value =
        serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).expect("json body");
    assert_eq!(body["servers"], serde_json::json!([]), "{body}");
    // The two sessions are not affected.
    u1.send("SEND u2 still here").await;
    u1.expect_prefix("OK SENT ").await;
    assert!(u2.expect_prefix("MSG ").await.ends_with("still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_may_hold_at_most_max_connections_per_ip() {
    let c = Cluster::start_with(1, |cfg| cfg.limits.max_connections_per_ip = 2).await;
    let a = c.server("a");
    let first = WsClient::login(a.ws, "first").await;
    let mut second = TcpClient::login(a.tcp, "second").await;
    // The third from 127.0.0.1: refused on either port, with a reason.
    let mut t = TcpClient::connect(a.tcp).await;
    assert_eq!(
        t.recv().await,
        "ERR limit too many connections from your address"
    );
    t.expect_closed().await;
    let err = WsClient::connect(a.ws, "/ws").await.err().expect("refused");
    let tokio_tungstenite::tungstenite::Error::Http(resp) = err else {
        panic!("expected HTTP 429, got {err:?}");
    };
    assert_eq!(resp.status().as_u16(), 429);
    // It is a per-address cap, not the server cap.
    assert_eq!(a.metrics.refused_full.get(), 0);
    // Once one leaves, its place is given back.
    drop(first);
    let third = switchboard_tests::eventually(Duration::from_secs(10), || async {
        let mut w = WsClient::connect(a.ws, "/ws").await.ok()?;
        w.send("LOGIN third").await;
        w.expect_prefix("OK LOGIN third ").await;
        Some(w)
    })
    .await;
    assert!(third.is_some(), "the address got its place back");
    second.send("WHO third").await;
    assert_eq!(second.recv().await, "ONLINE third 1");
}

/// The kernel's timer on the server's end of a connection from local port
/// `client_port` to `server_port`: `(timer kind, seconds left)` from
/// /proc/net/tcp (kind 2 is the keepalive timer).
fn server_side_timer(server_port: u16, client_port: u16) -> Option<(u8, f64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = |field: &str| u16::from_str_radix(field.rsplit(':').next()?, 16).ok();
        if port(f.get(1)?)? != server_port || port(f.get(2)?)? != client_port {
            return None;
        }
        let (kind, when) = f.get(5)?.split_once(':')?;
        // Clock ticks, USER_HZ: 100 on Linux.
        let ticks = u64::from_str_radix(when, 16).ok()?;
        Some((u8::from_str_radix(kind, 16).ok()?, ticks as f64 / 100.0))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_sockets_get_tcp_keepalive_after_tcp_keepalive() {
    let c = Cluster::start_with(1, |cfg| {
        cfg.limits.tcp_keepalive = Duration::from_secs(7);
    })
    .await;
    let a = c.server("a");
    for (port, name) in [(a.tcp, "telnet"), (a.ws, "websocket")] {
        let stream = tokio::net::TcpStream::connect(port).await.expect("connect");
        let me = stream.local_addr().expect("local addr").port();
        // Once the connection is idle the kernel runs the keepalive timer
        // on the server's socket, set to --tcp-keepalive.
        let timer = switchboard_tests::eventually(Duration::from_secs(10), || async {
            server_side_timer(port.port(), me).filter(|(kind, _)| *kind == 2)
        })
        .await;
        let (_, left) =
            timer.unwrap_or_else(|| panic!("{name}: no keepalive timer on the server's socket"));
        assert!(
            left > 0.0 && left <= 7.0,
            "{name}: keepalive fires in {left} s, --tcp-keepalive is 7 s"
        );
        drop(stream);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_lists_every_command_of_the_readme_and_the_session_lives_on() {
    let c = Cluster::start(1).await;
    let mut t = TcpClient::connect(c.server("a").tcp).await;
    // HELP works before login too; its lines are followed by PING's PONG.
    t.send("HELP").await;
    t.send("PING").await;
    let mut help = Vec::new();
    loop {
        let line = t.recv().await;
        if line == "PONG" {
            break;
        }
        help.push(line);
    }
    let verbs: Vec<&str> = help
        .iter()
        .flat_map(|l| l.split([' ', '|']))
        .filter(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_uppercase()))
        .collect();
    for verb in [
        "LOGIN", "SEND", "JOIN", "LEAVE", "PUB", "ALL", "HISTORY", "ACK", "SYNC", "WHO", "PING",
        "HELP", "QUIT",
    ] {
        assert!(verbs.contains(&verb), "HELP lacks {verb}: {help:?}");
    }
    // JSON asks get the same lines in one object.
    t.send(r#"{"op":"help","cid":"h"}"#).await;
    let v: serde_json::Value = serde_json::from_str(&t.recv().await).expect("json");
    assert_eq!(
        (v["type"].as_str(), v["cid"].as_str()),
        (Some("help"), Some("h"))
    );
    let lines: Vec<&str> = v["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    assert_eq!(lines, help);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_blocked_for_write_timeout_closes_the_session() {
    // The queue bound is out of the way (10,000 pushes): only a write that
    // stays blocked for --write-timeout (1 s; the default is 10 s) can
    // close the sloth.
    let c = Cluster::start_with(1, |cfg| {
        cfg.limits.write_timeout = Duration::from_secs(1);
        cfg.limits.session_queue = 10_000;
        cfg.limits.rate_limit = 0;
    })
    .await;
    let a = c.server("a");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut sloth = socket.connect(a.tcp).await.expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut sloth, b"LOGIN sloth\r\n")
        .await
        .expect("login");
    let mut pusher = TcpClient::login(a.tcp, "pusher").await;
    let body = "w".repeat(60 * 1024);
    let start = std::time::Instant::now();
    let mut pushed = 0;
    let closed = loop {
        // More than the socket buffers hold, a little at a time.
        pusher.send(&format!("SEND sloth {body}")).await;
        pusher.expect_prefix("OK SENT ").await;
        pushed += 1;
        pusher.send("WHO sloth").await;
        if pusher.expect_prefix("O").await == "OFFLINE sloth" {
            break Some(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(8) {
            break None;
        }
    };
    let closed = closed.expect("the sloth was not closed within 8 s; --write-timeout is 1 s");
    println!("a client that never reads: closed after {pushed} pushes, {closed:?}");
    assert_eq!(
        a.metrics.slow_consumers.get(),
        0,
        "closed by the write timeout, not by the queue bound"
    );
    drop(sloth);
}
