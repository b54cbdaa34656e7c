//! Hostile input, table-driven (issue 5): forged and expired tokens, other
//! users' tokens, broadcast without the role, oversized and invalid frames,
//! protocol violations, malformed handshakes, floods, a client that never
//! reads, and garbage on the relay link. Each case asserts the exact reply
//! or close code; after each, two bystanders on two servers must still talk
//! and nothing they sent may be lost.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use shared::codec::LinkCodec;
use shared::link::{Frame, LINK_VERSION, ServerAddrs, auth_tag};
use switchboard_tests::clients::{RawWs, Seen};
use switchboard_tests::{
    LineClient, RedisServer, Relay, Server, TcpClient, WsClient, http_get, metric,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::codec::Framed;

const SECRET: &str = "test-secret-0123456789abcdefghij";
const LINK_SECRET: &str = "link-secret-abcdefghij0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A JWT with any header and claims, signed HS256 with `secret`.
fn jwt(header: &str, claims: &str, secret: &str) -> String {
    let signing_input = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(signing_input.as_bytes());
    format!(
        "{signing_input}.{}",
        B64.encode(mac.finalize().into_bytes())
    )
}

fn token(user: &str) -> String {
    jwt(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &format!(r#"{{"sub":"{user}","exp":{}}}"#, now() + 3600),
        SECRET,
    )
}

fn admin_token(user: &str) -> String {
    jwt(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &format!(r#"{{"sub":"{user}","exp":{},"admin":true}}"#, now() + 3600),
        SECRET,
    )
}

struct Ctx {
    _redis: RedisServer,
    relay: Relay,
    a: Server,
    b: Server,
    b1: WsClient,
    b2: TcpClient,
    checks: u32,
}

impl Ctx {
    /// The bystanders still talk across servers, and b2 has every check so far.
    async fn bystanders_fine(&mut self, case: &str) {
        self.checks += 1;
        // The bystanders live under the same rate limit: back off on ERR rate.
        let ok = loop {
            self.b1
                .send(&format!("SEND b2 check {}", self.checks))
                .await;
            let reply = self.b1.recv().await;
            if reply.starts_with("OK SENT ") {
                break reply;
            }
            assert!(
                reply.starts_with("ERR rate ") || reply.starts_with("ALL "),
                "case {case}: b1 got {reply}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(ok.starts_with("OK SENT "), "case {case}: {ok}");
        let got = self.b2.expect_prefix("MSG ").await;
        assert!(
            got.ends_with(&format!("check {}", self.checks)),
            "case {case}: b2 got {got}"
        );
    }
}

/// The seqs of the `MSG` lines read before a line starting with `end`.
async fn seqs_until(c: &mut WsClient, end: &str) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        let l = c.recv().await;
        if l.starts_with(end) {
            return seqs;
        }
        if let Some(rest) = l.strip_prefix("MSG ") {
            seqs.push(
                rest.split(' ')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("MSG seq"),
            );
        }
    }
}

async fn telnet_login(addr: std::net::SocketAddr, user: &str) -> TcpClient {
    let mut t = TcpClient::connect(addr).await;
    t.send(&format!("LOGIN {user} {}", token(user))).await;
    t.expect_prefix(&format!("OK LOGIN {user} ")).await;
    t
}

async fn ws_login(addr: std::net::SocketAddr, user: &str) -> WsClient {
    WsClient::connect(addr, &format!("/ws?user={user}&token={}", token(user)))
        .await
        .map(|mut c| {
            let _ = &mut c;
            c
        })
        .expect("ws connect")
}

async fn expect_login_error(addr: std::net::SocketAddr, line: &str, want: &str) {
    let mut t = TcpClient::connect(addr).await;
    t.send(line).await;
    let got = t.recv().await;
    assert!(
        got.starts_with(want),
        "{line:?}: got {got:?}, want {want:?}"
    );
    t.send("PING").await;
    assert_eq!(
        t.recv().await,
        "PONG",
        "the session lives on after a refused login"
    );
}

async fn raw_ws_close(ctx: &Ctx, bytes: Vec<u8>) -> (Option<u16>, Vec<String>) {
    let mut raw = RawWs::connect(
        ctx.a.ws,
        &format!("/ws?user=raw&token={}", token("raw")),
        &[],
    )
    .await;
    assert_eq!(raw.status, 101);
    raw.send(&bytes).await;
    let mut texts = Vec::new();
    let code = raw.close_code(&mut texts).await;
    (code, texts)
}

async fn link_handshake(ctx: &Ctx, secret: &str, version: u16) -> Framed<TcpStream, LinkCodec> {
    let stream = TcpStream::connect(ctx.relay.link)
        .await
        .expect("link connect");
    let mut framed = Framed::new(stream, LinkCodec::default());
    let Some(Ok(Frame::Challenge { nonce, .. })) = framed.next().await else {
        panic!("no challenge from the relay");
    };
    let hello = Frame::Hello {
        version,
        server_id: "intruder".into(),
        epoch: 1,
        addrs: ServerAddrs::default(),
        auth: auth_tag(secret.as_bytes(), &nonce, "intruder", 1),
    };
    framed.send(hello).await.expect("hello");
    framed
}

async fn link_closed(mut framed: Framed<TcpStream, LinkCodec>) -> Option<Frame> {
    let mut refused = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(8), framed.next()).await {
            Ok(Some(Ok(f @ Frame::Refused { .. }))) => refused = Some(f),
            Ok(Some(Ok(Frame::Challenge { .. }))) => {}
            Ok(Some(Ok(other))) => panic!("relay sent {other:?} to an unauthenticated peer"),
            Ok(Some(Err(_))) | Ok(None) => return refused,
            Err(_) => panic!("relay kept an unauthenticated link open"),
        }
    }
}

async fn raw_link(ctx: &Ctx, bytes: &[u8]) {
    let mut s = TcpStream::connect(ctx.relay.link)
        .await
        .expect("link connect");
    let _ = s.write_all(bytes).await;
    let mut buf = [0u8; 1024];
    let end = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "relay kept a garbage link open");
}

async fn setup() -> Ctx {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("dir");
    let (secret_file, link_file) = (dir.path().join("token.key"), dir.path().join("link.key"));
    std::fs::write(&secret_file, SECRET).expect("write secret");
    std::fs::write(&link_file, LINK_SECRET).expect("write link secret");
    let relay = Relay::start(relay_server::Config {
        redis: redis_store::RedisArgs::single(&redis.url()),
        link_secret_file: Some(link_file.clone()),
        handshake_timeout: Duration::from_secs(2),
        ..relay_server::Config::default()
    })
    .await;
    let server = |id: &str| {
        let mut cfg = message_server::Config::local(id, &redis.url(), Some(relay.link));
        cfg.insecure_login = false;
        cfg.token_secret_file = Some(secret_file.clone());
        cfg.link_secret_file = Some(link_file.clone());
        cfg.allowed_origins = vec!["https://chat.example".into()];
        cfg.limits.rate_limit = 20;
        cfg.limits.rate_burst = 10;
        cfg.limits.login_timeout = Duration::from_secs(1);
        cfg.limits.handshake_timeout = Duration::from_secs(1);
        cfg.limits.write_timeout = Duration::from_secs(1);
        cfg.limits.session_queue = 16;
        cfg
    };
    let a = Server::start(server("a")).await;
    let b = Server::start(server("b")).await;
    std::mem::forget(dir); // the servers read the files at start; keep them for the test's life
    let b1 = ws_login(a.ws, "b1").await;
    let mut b1 = b1;
    b1.expect_prefix("OK LOGIN b1 ").await;
    let b2 = telnet_login(b.tcp, "b2").await;
    Ctx {
        _redis: redis,
        relay,
        a,
        b,
        b1,
        b2,
        checks: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_refused_precisely_and_harms_nobody() {
    let mut ctx = setup().await;
    let mut cases = 0;
    let a_tcp = ctx.a.tcp;
    let forged = jwt(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &format!(r#"{{"sub":"alice","exp":{}}}"#, now() + 3600),
        "some-other-secret-xxxxxxxxxxxxxx",
    );
    let expired = jwt(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &format!(r#"{{"sub":"alice","exp":{}}}"#, now() - 3600),
        SECRET,
    );
    let none_alg = format!(
        "{}.{}.",
        B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        B64.encode(format!(r#"{{"sub":"alice","exp":{}}}"#, now() + 3600))
    );
    let tampered = {
        let good = token("bob");
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        parts[1] = B64.encode(format!(r#"{{"sub":"alice","exp":{}}}"#, now() + 3600));
        parts.join(".")
    };
    let table: Vec<(&str, String, &str)> = vec![
        (
            "login without a token",
            "LOGIN alice".into(),
            "ERR auth a token is required",
        ),
        (
            "forged token",
            format!("LOGIN alice {forged}"),
            "ERR auth token signature is invalid",
        ),
        (
            "expired token",
            format!("LOGIN alice {expired}"),
            "ERR auth token expired",
        ),
        (
            "another user's token",
            format!("LOGIN alice {}", token("bob")),
            "ERR auth token was issued to another user",
        ),
        (
            "tampered payload",
            format!("LOGIN alice {tampered}"),
            "ERR auth token signature is invalid",
        ),
        (
            "alg none",
            format!("LOGIN alice {none_alg}"),
            "ERR auth token algorithm",
        ),
        (
            "garbage token",
            "LOGIN alice not.a.jwt".into(),
            "ERR auth malformed token",
        ),
        (
            "huge token",
            format!("LOGIN alice {}", "A".repeat(5000)),
            "ERR auth",
        ),
        ("send before login", "SEND bob hi".into(), "ERR login "),
        ("join before login", "JOIN lobby".into(), "ERR login "),
    ];
    for (name, line, want) in &table {
        expect_login_error(a_tcp, line, want).await;
        ctx.bystanders_fine(name).await;
        cases += 1;
    }

    // WebSocket logins at the handshake: refused with ERR auth, then close 1008.
    for (name, query) in [
        ("ws forged token", format!("/ws?user=alice&token={forged}")),
        (
            "ws expired token",
            format!("/ws?user=alice&token={expired}"),
        ),
        ("ws no token", "/ws?user=alice".to_owned()),
        (
            "ws other user's token",
            format!("/ws?user=alice&token={}", token("bob")),
        ),
    ] {
        let mut w = WsClient::connect(ctx.a.ws, &query).await.expect("upgrade");
        let line = w.recv().await;
        assert!(line.starts_with("ERR auth "), "{name}: {line}");
        assert_eq!(w.expect_close().await, Some(1008), "{name}");
        ctx.bystanders_fine(name).await;
        cases += 1;
    }

    // A user can only send as itself; broadcast needs the admin role.
    {
        let mut alice = telnet_login(a_tcp, "alice").await;
        alice
            .send(r#"{"op":"send","to":"b2","text":"spoof","from":"b1"}"#)
            .await;
        let v: serde_json::Value = serde_json::from_str(&alice.recv().await).expect("json");
        assert_eq!(v["code"], "json", "an unknown 'from' field is refused");
        alice.send("ALL everyone listen").await;
        assert!(alice.recv().await.starts_with("ERR forbidden "));
        alice.send("SEND b2 signed by alice").await;
        alice.expect_prefix("OK SENT ").await;
        assert!(
            ctx.b2.expect_prefix("MSG ").await.contains(" alice b2 "),
            "the sender is the session's user"
        );
        ctx.bystanders_fine("send as another user").await;
        let mut admin = TcpClient::connect(a_tcp).await;
        admin
            .send(&format!("LOGIN root {}", admin_token("root")))
            .await;
        admin.expect_prefix("OK LOGIN root ").await;
        admin.send("ALL maintenance soon").await;
        admin.expect_prefix("OK ALL ").await;
        assert!(
            ctx.b2
                .expect_prefix("ALL root ")
                .await
                .ends_with("maintenance soon")
        );
        assert!(
            ctx.b1
                .expect_prefix("ALL root ")
                .await
                .ends_with("maintenance soon")
        );
        cases += 3;
    }

    // Sizes.
    {
        let mut w = ws_login(ctx.a.ws, "big").await;
        w.expect_prefix("OK LOGIN").await;
        let ok = format!("SEND b2 {}", "y".repeat(60 * 1024));
        w.send(&ok).await;
        w.expect_prefix("OK SENT ").await;
        ctx.b2.expect_prefix("MSG ").await;
        let _ = w
            .send_message(Message::text(format!("SEND b2 {}", "x".repeat(65 * 1024))))
            .await;
        assert_eq!(w.expect_close().await, Some(1009), "just over 64 KiB");
        ctx.bystanders_fine("message over the limit").await;
        let mut t = telnet_login(a_tcp, "bigline").await;
        t.send(&format!("SEND b2 {}", "z".repeat(70 * 1024))).await;
        assert!(t.recv().await.starts_with("ERR toolong "));
        t.send("PING").await;
        assert_eq!(t.recv().await, "PONG");
        ctx.bystanders_fine("line over the limit").await;
        cases += 3;
    }

    // Frames a browser or library would never send.
    let text_frame = |payload: &[u8]| RawWs::frame(true, 0, 1, payload, false);
    let frames: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "invalid UTF-8 text",
            text_frame(b"SEND b2 \xff\xfe\xfd"),
            1007,
        ),
        (
            "binary frame",
            RawWs::frame(true, 0, 2, b"\x00\x01", false),
            1003,
        ),
        (
            "unmasked client frame",
            RawWs::frame(true, 0, 1, b"PING", true),
            1002,
        ),
        (
            "reserved opcode 3",
            RawWs::frame(true, 0, 3, b"", false),
            1002,
        ),
        (
            "reserved opcode 11",
            RawWs::frame(true, 0, 11, b"", false),
            1002,
        ),
        (
            "RSV1 without an extension",
            RawWs::frame(true, 4, 1, b"PING", false),
            1002,
        ),
        (
            "fragmented ping",
            RawWs::frame(false, 0, 9, b"x", false),
            1002,
        ),
        (
            "ping over 125 bytes",
            RawWs::frame(true, 0, 9, &[b'p'; 126], false),
            1002,
        ),
        (
            "continuation without a start",
            RawWs::frame(true, 0, 0, b"PING", false),
            1002,
        ),
        (
            "new message inside a fragmented one",
            [
                RawWs::frame(false, 0, 1, b"PI", false),
                RawWs::frame(true, 0, 1, b"NG", false),
            ]
            .concat(),
            1002,
        ),
        (
            "64-bit length over the limit",
            {
                let mut f = vec![0x81u8, 0x80 | 127];
                f.extend_from_slice(&(1u64 << 40).to_be_bytes());
                f.extend_from_slice(&[0, 0, 0, 0]);
                f
            },
            1009,
        ),
    ];
    for (name, bytes, want) in frames {
        let (code, _) = raw_ws_close(&ctx, bytes).await;
        assert_eq!(code, Some(want), "{name}");
        ctx.bystanders_fine(name).await;
        cases += 1;
    }

    // Handshakes.
    for (name, path, headers, want) in [
        (
            "origin not allowed",
            "/ws",
            vec!["Origin: https://evil.example"],
            403,
        ),
        (
            "origin allowed",
            "/ws",
            vec!["Origin: https://chat.example"],
            101,
        ),
        ("wrong websocket version", "/ws", vec![], 0),
    ] {
        if want == 0 {
            let mut s = TcpStream::connect(ctx.a.ws).await.expect("connect");
            s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n").await.expect("write");
            let mut buf = vec![0u8; 512];
            let n = s.read(&mut buf).await.expect("read");
            assert!(
                String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 426"),
                "{name}"
            );
        } else {
            let raw = RawWs::connect(ctx.a.ws, path, &headers).await;
            assert_eq!(raw.status, want, "{name}");
        }
        ctx.bystanders_fine(name).await;
        cases += 1;
    }
    for (name, path, want) in [
        ("not an upgrade", "/ws", 400),
        ("unknown path", "/nope", 404),
    ] {
        let (status, _) = http_get(ctx.a.ws, path).await;
        assert_eq!(status, want, "{name}");
        ctx.bystanders_fine(name).await;
        cases += 1;
    }
    {
        // Slowloris: half a request head, then nothing; closed after the handshake timeout.
        let mut s = TcpStream::connect(ctx.a.ws).await.expect("connect");
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgr")
            .await
            .expect("write");
        let mut buf = [0u8; 256];
        let r = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(r.is_ok(), "slowloris handshake was not cut off");
        ctx.bystanders_fine("slowloris handshake").await;
        // A telnet client that never logs in.
        let mut t = TcpClient::connect(a_tcp).await;
        assert_eq!(t.recv().await, "ERR limit no login in time");
        t.expect_closed().await;
        ctx.bystanders_fine("no login").await;
        cases += 2;
    }

    // JSON oddities.
    {
        let mut t = telnet_login(a_tcp, "jason").await;
        for (line, code) in [
            ("{\"op\":\"send\"", "json"),
            (r#"{"op":"ack","seq":1e400}"#, "json"),
            (r#"{"op":"ack","seq":"7"}"#, "json"),
            (
                &format!("{}{}", "[".repeat(200), "]".repeat(200)),
                "unknown",
            ),
            (
                &format!(
                    "{{\"op\":\"ping\",\"x\":{}1{}}}",
                    "[".repeat(300),
                    "]".repeat(300)
                ),
                "json",
            ),
            (r#"{"op":"teleport"}"#, "unknown"),
            (r#"{"op":"send","to":"b 2","text":"x"}"#, "syntax"),
        ] {
            t.send(line).await;
            let reply = t.recv().await;
            let want = format!("\"code\":\"{code}\"");
            let want_text = format!("ERR {code} ");
            assert!(
                reply.contains(&want) || reply.starts_with(&want_text),
                "{line:.40}: {reply}"
            );
            cases += 1;
        }
        ctx.bystanders_fine("json oddities").await;
    }

    // Floods: over the rate gets ERR rate and lives; flooding on gets closed.
    {
        let mut t = telnet_login(a_tcp, "hasty").await;
        t.send_raw("PING\r\n".repeat(15).as_bytes()).await;
        let mut pongs = 0;
        let mut rate = 0;
        for _ in 0..15 {
            let l = t.recv().await;
            if l == "PONG" {
                pongs += 1;
            } else if l.starts_with("ERR rate ") {
                rate += 1;
            }
        }
        // The burst is 10 and LOGIN took one token.
        assert_eq!(pongs + rate, 15, "every PING answered once");
        assert!(pongs >= 9 && rate >= 1, "{pongs} pongs, {rate} refusals");
        tokio::time::sleep(Duration::from_millis(600)).await;
        t.send("PING").await;
        assert_eq!(
            t.expect_prefix("PONG").await,
            "PONG",
            "the session lives on after slowing down"
        );
        ctx.bystanders_fine("over the rate").await;
        let mut f = telnet_login(a_tcp, "flood").await;
        f.send_raw("PING\r\n".repeat(200).as_bytes()).await;
        let mut last = String::new();
        loop {
            match f.next_within(Duration::from_secs(5)).await {
                Seen::Line(l) => last = l,
                Seen::Closed(_) => break,
                Seen::Timeout => panic!("a flooding telnet client was not closed"),
            }
        }
        assert!(last.starts_with("ERR rate "), "last line {last}");
        let mut w = ws_login(ctx.a.ws, "wflood").await;
        w.expect_prefix("OK LOGIN").await;
        for _ in 0..100 {
            let _ = w.send_message(Message::text("PING")).await;
        }
        assert_eq!(w.expect_close().await, Some(1008));
        ctx.bystanders_fine("flood").await;
        cases += 3;
    }

    // A client that never reads: closed, nobody else slowed, its messages kept.
    {
        // A small receive window, as a stalled phone would have.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("rcvbuf");
        let mut sloth = socket.connect(a_tcp).await.expect("connect");
        sloth
            .write_all(format!("LOGIN sloth {}\r\n", token("sloth")).as_bytes())
            .await
            .expect("login");
        let mut sender = telnet_login(ctx.b.tcp, "pusher").await;
        let body = "w".repeat(60 * 1024);
        let mut acked = 0;
        for _ in 0..60 {
            sender.send(&format!("SEND sloth {body}")).await;
            loop {
                let l = sender.recv().await;
                if l.starts_with("OK SENT ") {
                    acked += 1;
                    break;
                }
                assert!(l.starts_with("ERR rate "), "{l:.60}");
                tokio::time::sleep(Duration::from_millis(60)).await;
                sender.send(&format!("SEND sloth {body}")).await;
            }
        }
        assert_eq!(acked, 60);
        let gone = switchboard_tests::eventually(Duration::from_secs(10), || async {
            let mut c = ws_login(ctx.a.ws, "watcher").await;
            c.expect_prefix("OK LOGIN").await;
            c.send("WHO sloth").await;
            (c.expect_prefix("O").await == "OFFLINE sloth").then_some(())
        })
        .await;
        assert!(gone.is_some(), "the non-reading client was closed");
        let mut back = ws_login(ctx.a.ws, "sloth").await;
        back.expect_prefix("OK LOGIN").await;
        // The login replay (sloth never acknowledged anything) comes before
        // the answer to a PING; then SYNC 0 replays the inbox again. Each
        // must hold all 60, once each, in order.
        back.send("PING").await;
        let replay = seqs_until(&mut back, "PONG").await;
        assert_eq!(
            replay,
            (1..=60).collect::<Vec<_>>(),
            "the login replay holds all 60 messages kept for the slow client"
        );
        back.send("SYNC 0").await;
        let synced = seqs_until(&mut back, "OK SYNC ").await;
        assert_eq!(
            synced,
            (1..=60).collect::<Vec<_>>(),
            "SYNC 0 holds all 60 messages kept for the slow client"
        );
        ctx.bystanders_fine("client that never reads").await;
        cases += 1;
    }

    // The relay link port.
    {
        let refused = link_closed(
            link_handshake(&ctx, "wrong-secret-xxxxxxxxxxxxxxxxxxx", LINK_VERSION).await,
        )
        .await;
        assert!(
            matches!(refused, Some(Frame::Refused { .. })),
            "wrong secret refused: {refused:?}"
        );
        ctx.bystanders_fine("link hello with a wrong secret").await;
        let refused = link_closed(link_handshake(&ctx, LINK_SECRET, LINK_VERSION + 7).await).await;
        assert!(
            matches!(refused, Some(Frame::Refused { .. })),
            "wrong version refused: {refused:?}"
        );
        ctx.bystanders_fine("link hello with a wrong version").await;
        raw_link(&ctx, b"GET / HTTP/1.1\r\n\r\ngarbage garbage garbage").await;
        ctx.bystanders_fine("garbage on the link port").await;
        raw_link(&ctx, &[0, 0, 0, 100, 1, 2, 3]).await;
        ctx.bystanders_fine("truncated link frame").await;
        raw_link(&ctx, &[0x7f, 0xff, 0xff, 0xff]).await;
        ctx.bystanders_fine("oversized link frame").await;
        raw_link(&ctx, &[0, 0, 0, 3, 0xff, 0xff, 0xff]).await;
        ctx.bystanders_fine("undecodable link frame").await;
        {
            let stream = TcpStream::connect(ctx.relay.link).await.expect("link");
            let mut framed = Framed::new(stream, LinkCodec::default());
            let _ = framed.next().await;
            let _ = framed.send(Frame::Bye).await;
            // Closed (with or without a Refused first); never accepted.
            let _ = link_closed(framed).await;
        }
        ctx.bystanders_fine("link frame before hello").await;
        {
            // Connects and says nothing: cut off after the handshake timeout.
            raw_link(&ctx, b"").await;
        }
        ctx.bystanders_fine("silent link").await;
        let (_, page) = ctx.relay.get("/metrics").await;
        assert!(
            metric(&page, "relay_links_refused_total{reason=\"auth\"}").unwrap_or(0.0) >= 1.0,
            "{page}"
        );
        assert!(
            metric(&page, "relay_links_refused_total{reason=\"version\"}").unwrap_or(0.0) >= 1.0,
            "{page}"
        );
        cases += 8;
    }

    println!(
        "hostile input: {cases} cases, {} bystander checks, nothing lost",
        ctx.checks
    );
    assert!(cases >= 40);
    // Every check reached b2's inbox exactly once, in order.
    ctx.b2.send("SYNC 0").await;
    let mut checks = Vec::new();
    loop {
        let l = ctx.b2.recv().await;
        if l.starts_with("OK SYNC ") {
            break;
        }
        if let Some(n) = l
            .rsplit_once("check ")
            .and_then(|(_, n)| n.parse::<u32>().ok())
        {
            checks.push(n);
        }
    }
    assert_eq!(checks, (1..=ctx.checks).collect::<Vec<_>>());
}
