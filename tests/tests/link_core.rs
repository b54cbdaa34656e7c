//! The link between a server and a relay, end to end: a relay that stops
//! reading cannot stall the server, and the link secret file is read the
//! same way by both binaries (issue 9, parts 3 and 4).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use shared::codec::{DEFAULT_MAX_FRAME, LinkCodec};
use shared::link::Frame;
use shared::link::handshake::Challenger;
use switchboard_tests::cluster::{Relay, Server};
use switchboard_tests::{LineClient, RedisServer, TcpClient, WsClient, eventually};
use tokio::net::TcpSocket;
use tokio_util::codec::Framed;

/// A relay that accepts one link, does the handshake (any secret) and then
/// never reads again, with a tiny receive buffer: whatever the server sends
/// soon has nowhere to go. Returns its address.
async fn relay_that_stops_reading() -> std::net::SocketAddr {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(8).expect("listen");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            let mut framed = Framed::new(stream, LinkCodec::new(DEFAULT_MAX_FRAME));
            let (challenger, challenge) = Challenger::new([9; shared::link::NONCE_LEN]);
            if framed.send(challenge).await.is_err() {
                continue;
            }
            // Any well-formed hello will do: this relay only wants to stall.
            let Some(Ok(hello @ Frame::Hello { .. })) = framed.next().await else {
                continue;
            };
            drop((challenger, hello));
            let welcome = Frame::Welcome {
                relay_id: "stalled".into(),
            };
            if framed.send(welcome).await.is_ok() {
                // Held open, never read.
                held.push(framed);
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_stops_reading_does_not_stall_local_traffic() {
    let redis = RedisServer::start();
    let relay = relay_that_stops_reading().await;
    let mut config = message_server::Config::local("a", &redis.url(), Some(relay));
    config.limits.rate_limit = 0;
    config.limits.link_queue = 16;
    // The link stays "up" while it is stuck, for the whole test.
    config.limits.link_dead_after = Duration::from_secs(120);
    let server = Server::start(config).await;

    // A publisher fills the link: every room message goes to the relay.
    let mut publisher = TcpClient::login(server.tcp, "publisher").await;
    let text = "x".repeat(60_000);
    // Socket buffers on loopback grow to a few MB; 2000 x 60 kB is far more.
    let mut filled = false;
    for n in 1..=2000 {
        publisher.send(&format!("PUB lobby {n} {text}")).await;
        publisher.expect_prefix("OK PUB lobby ").await;
        if server.metrics.dropped_link_full.get() > 0 {
            filled = true;
            break;
        }
    }
    assert!(
        filled,
        "the link queue never filled: the test relay is being read"
    );
    eprintln!(
        "link queue full after {published} room messages of 60 kB",
        published = server.metrics.frames_to_relay.get()
    );
    assert_eq!(server.metrics.links_up.get(), 1, "the link is still up");

    // Other sessions are served as if nothing happened.
    let within = Duration::from_secs(1);
    let mut bob = tokio::time::timeout(within, TcpClient::login(server.tcp, "bob"))
        .await
        .expect("bob logs in within a second");
    let mut alice = tokio::time::timeout(within, WsClient::login(server.ws, "alice"))
        .await
        .expect("alice logs in within a second");
    for n in 1..=3 {
        let asked = std::time::Instant::now();
        alice.send(&format!("SEND bob hello {n}")).await;
        let sent = tokio::time::timeout(within, alice.expect_prefix("OK SENT "))
            .await
            .expect("OK SENT within a second while the relay does not read");
        assert!(sent.starts_with("OK SENT "), "{sent}");
        eprintln!("OK SENT after {:?} with the link stuck", asked.elapsed());
        let msg = tokio::time::timeout(within, bob.expect_prefix("MSG "))
            .await
            .expect("the local recipient gets it within a second");
        assert!(msg.ends_with(&format!(" hello {n}")), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_secret_ending_in_a_space_links_a_real_relay_and_server() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("link-secret");
    std::fs::write(&secret, "correct horse battery staple \n").expect("write");
    let relay = Relay::start(relay_server::Config {
        redis: redis_store::RedisArgs::single(&redis.url()),
        link_secret_file: Some(secret.clone()),
        ..relay_server::Config::default()
    })
    .await;

    // The same file on both sides: linked (Server::start waits for it).
    let mut config = message_server::Config::local("a", &redis.url(), Some(relay.link));
    config.link_secret_file = Some(secret);
    let a = Server::start(config).await;
    assert_eq!(a.metrics.links_up.get(), 1);

    // Without the space it is another secret: refused, never linked.
    let other = dir.path().join("other-secret");
    std::fs::write(&other, "correct horse battery staple\n").expect("write");
    let mut config = message_server::Config::local("b", &redis.url(), Some(relay.link));
    config.link_secret_file = Some(other);
    let bound = message_server::bind(config).await.expect("binds");
    let metrics = bound.metrics();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(bound.run(shutdown.clone()));
    let refused = eventually(Duration::from_secs(10), || async {
        let (_, page) = relay.get("/metrics").await;
        page.lines()
            .any(|l| {
                l.starts_with("relay_links_refused_total{reason=\"auth\"}") && !l.ends_with(" 0")
            })
            .then_some(())
    })
    .await;
    assert!(refused.is_some(), "the relay refused the other secret");
    assert_eq!(metrics.links_up.get(), 0, "b never linked");
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}
