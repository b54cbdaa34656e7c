//! TLS with rustls (issue 5): `wss://` on the message server with a
//! certificate made at test time; a plain client on the TLS port gets
//! nowhere; a TLS client talks to users on a plain server through the relay.

use std::path::Path;

use futures_util::{SinkExt, StreamExt};
use switchboard_tests::{Cluster, LineClient, WsClient};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn write_self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).expect("write cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write key");
    (cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_clients_talk_to_plain_clients_on_another_server() {
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key) = write_self_signed(dir.path());
    let mut c = Cluster::start(1).await;
    let (cert2, key2) = (cert.clone(), key.clone());
    c.add_server_with("secure", move |cfg| {
        cfg.tls_cert = Some(cert2.clone());
        cfg.tls_key = Some(key2.clone());
    })
    .await;
    let secure = c.server("secure").ws;

    // TLS handshake trusting exactly our certificate, then WebSocket over it.
    let connector =
        tls_config::TlsConnector::from(tls_config::client_config(&cert).expect("client config"));
    let tcp = TcpStream::connect(secure).await.expect("connect");
    let tls = connector
        .connect(tls_config::server_name("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let (mut wss, resp) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/ws", secure.port()), tls)
            .await
            .expect("websocket over TLS");
    assert_eq!(resp.status().as_u16(), 101);
    wss.send(Message::text("LOGIN tess")).await.expect("send");
    let line = wss.next().await.expect("reply").expect("frame");
    assert!(line.to_text().expect("text").starts_with("OK LOGIN tess "));

    let mut plain = WsClient::login(c.server("a").ws, "paul").await;
    wss.send(Message::text("SEND paul over tls"))
        .await
        .expect("send");
    assert!(plain.expect_prefix("MSG ").await.ends_with("over tls"));
    plain.send("SEND tess back in clear").await;
    loop {
        let m = wss.next().await.expect("frame").expect("ok");
        let t = m.to_text().expect("text").to_owned();
        if t.starts_with("MSG ") {
            assert!(t.ends_with("back in clear"));
            break;
        }
    }

    // A plain WebSocket client on the TLS port does not get in.
    assert!(WsClient::connect(secure, "/ws").await.is_err());
    // A TLS client that trusts another certificate refuses the server.
    let other = tempfile::tempdir().expect("dir");
    let (other_cert, _) = write_self_signed(other.path());
    let wrong =
        tls_config::TlsConnector::from(tls_config::client_config(&other_cert).expect("config"));
    let tcp = TcpStream::connect(secure).await.expect("connect");
    assert!(
        wrong
            .connect(tls_config::server_name("localhost").expect("name"), tcp)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_line_port_speaks_tls_too() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key) = write_self_signed(dir.path());
    let mut c = Cluster::start(0).await;
    c.add_server_with("secure", move |cfg| {
        cfg.tls_cert = Some(cert.clone());
        cfg.tls_key = Some(key.clone());
    })
    .await;
    let connector = tls_config::TlsConnector::from(
        tls_config::client_config(&dir.path().join("cert.pem")).expect("client config"),
    );
    let tcp = TcpStream::connect(c.server("secure").tcp)
        .await
        .expect("connect");
    let tls = connector
        .connect(tls_config::server_name("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let mut lines = BufReader::new(tls);
    lines
        .get_mut()
        .write_all(b"LOGIN tina\r\n")
        .await
        .expect("write");
    let mut line = String::new();
    lines.read_line(&mut line).await.expect("read");
    assert!(line.starts_with("OK LOGIN tina "), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_link_runs_over_tls() {
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key) = write_self_signed(dir.path());
    let redis = switchboard_tests::RedisServer::start();
    let relay = switchboard_tests::Relay::start(relay_server::Config {
        redis: redis_store::RedisArgs::single(&redis.url()),
        tls_cert: Some(cert.clone()),
        tls_key: Some(key),
        handshake_timeout: std::time::Duration::from_secs(1),
        ..relay_server::Config::default()
    })
    .await;
    let server = |id: &str| {
        let mut cfg = message_server::Config::local(id, &redis.url(), Some(relay.link));
        cfg.relay_ca = Some(cert.clone());
        cfg.relay_tls_name = Some("localhost".to_owned());
        cfg
    };
    let a = switchboard_tests::Server::start(server("a")).await;
    let b = switchboard_tests::Server::start(server("b")).await;
    let mut alice = WsClient::login(a.ws, "alice").await;
    let mut bob = WsClient::login(b.ws, "bob").await;
    alice.send("SEND bob through a TLS link").await;
    alice.expect_prefix("OK SENT ").await;
    assert!(
        bob.expect_prefix("MSG ")
            .await
            .ends_with("through a TLS link")
    );

    // A server that speaks plain TCP to the TLS link port never links.
    let plain = message_server::Config::local("c", &redis.url(), Some(relay.link));
    let bound = message_server::bind(plain).await.expect("bind");
    let metrics = bound.metrics();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(bound.run(stop.clone()));
    // The relay waits for a TLS ClientHello, the plain server for a
    // Challenge: the relay refuses it at its handshake timeout, and the
    // server tries again. Two refusals, and the server is still unlinked.
    let refused = || async {
        let (_, page) = relay.get("/metrics").await;
        ["timeout", "protocol"]
            .iter()
            .filter_map(|r| {
                switchboard_tests::metric(
                    &page,
                    &format!("relay_links_refused_total{{reason=\"{r}\"}}"),
                )
            })
            .sum::<f64>()
    };
    let twice = switchboard_tests::eventually(std::time::Duration::from_secs(20), || async {
        (refused().await >= 2.0).then_some(())
    })
    .await;
    assert!(twice.is_some(), "the relay never refused the plain link");
    assert_eq!(
        metrics.links_up.get(),
        0,
        "a plain link was accepted by a TLS relay"
    );
    stop.cancel();
    let _ = task.await;
}
