//! A full Redis (`maxmemory` reached, `noeviction`) refuses every write.
//! Each `SEND` then gets `ERR unavailable` and nothing is half-stored; the
//! session lives on; the server's log says why without a line per message
//! (the metrics count them all); and once Redis has room, sends are stored
//! again. Server and relay run as processes, so the test reads their log.

use switchboard_tests::procs::{RelayProc, ServerProc, any_port};
use switchboard_tests::redis_server::RedisServer;
use switchboard_tests::{LineClient, TcpClient, http_get, metric};

fn inbox_len(redis: &RedisServer, user: &str) -> u64 {
    redis
        .cmd(redis::cmd("XLEN").arg(format!("sb:{{u:{user}}}:inbox")))
        .expect("XLEN")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_answers_every_send_with_an_error_and_logs_it_quietly() {
    let redis = RedisServer::start();
    let relay = RelayProc::start(&redis.url(), any_port(), &[]);
    let server = ServerProc::start("a", &redis.url(), relay.link, &["--rate-limit", "0"]);
    server.wait_linked(1);
    let mut carol = TcpClient::login(server.tcp, "carol").await;
    let mut dave = TcpClient::login(server.tcp, "dave").await;
    carol.send("SEND dave before").await;
    carol.expect_prefix("OK SENT ").await;
    assert!(dave.expect_prefix("MSG ").await.ends_with(" before"));

    // Full: any write is over the limit (noeviction is Redis's default).
    redis.config_set("maxmemory", "1");
    let n = 200;
    for i in 0..n {
        carol.send(&format!("SEND dave lost-{i}")).await;
    }
    for i in 0..n {
        let line = carol.recv().await;
        assert!(
            line.starts_with("ERR unavailable message not stored"),
            "send {i} of a full Redis: {line}"
        );
    }
    carol.send("PING").await;
    assert_eq!(carol.recv().await, "PONG", "the session lives on");
    assert_eq!(inbox_len(&redis, "dave"), 1, "nothing half-stored");
    assert_eq!(inbox_len(&redis, "carol"), 1, "nothing half-stored");

    let log = server.proc.output();
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("message not stored"))
        .collect();
    assert!(
        (1..=2).contains(&warned.len()) && warned[0].contains("OOM"),
        "one warning naming the cause (a second if 10 s passed), not one per send: {warned:#?}"
    );
    let (_, page) = http_get(server.ws, "/metrics").await;
    assert_eq!(
        metric(&page, "server_messages_not_stored_total"),
        Some(f64::from(n)),
        "every refused message counted"
    );
    assert!(metric(&page, "server_redis_errors_total").is_some_and(|e| e >= 1.0));

    // Room again: stored and delivered, and none of the refused ones.
    redis.config_set("maxmemory", "0");
    carol.send("SEND dave after").await;
    carol.expect_prefix("OK SENT ").await;
    let next = dave.expect_prefix("MSG ").await;
    assert!(next.ends_with(" after"), "{next}");
    assert_eq!(inbox_len(&redis, "dave"), 2);
}
