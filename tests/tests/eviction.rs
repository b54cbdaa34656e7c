//! A Redis that may evict keys (a `maxmemory` limit with a policy other
//! than `noeviction`) would delete stored messages when it fills up, without
//! an error. Servers and relays refuse it (unless `--redis-allow-eviction`)
//! and use it as soon as it is fixed, without a restart; on a cluster every
//! node is checked.

use std::time::Duration;

use redis_store::conn::EVICTION_RECHECK;
use redis_store::{Redis, RedisArgs};
use switchboard_tests::clients::Seen;
use switchboard_tests::redis_server::{RedisCluster, RedisServer};
use switchboard_tests::{LineClient, TcpClient, eventually};

async fn refusal(args: &RedisArgs) -> Option<String> {
    let handle = Redis::new(args).expect("valid flags");
    handle.conn().await.err().map(|e| e.to_string())
}

#[tokio::test]
async fn a_redis_that_may_evict_is_refused_until_it_may_not() {
    let redis =
        RedisServer::start_with(&["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]);
    let args = RedisArgs::single(&redis.url());
    let handle = Redis::new(&args).expect("valid flags");
    let why = handle.conn().await.err().expect("refused").to_string();
    assert!(
        why.contains(&format!(
            "{} (maxmemory 67108864, maxmemory-policy allkeys-lru)",
            redis.url()
        )) && why.contains("--redis-allow-eviction"),
        "the error says what is wrong and what to do: {why}"
    );

    let mut allowing = args.clone();
    allowing.allow_eviction = true;
    assert_eq!(refusal(&allowing).await, None, "--redis-allow-eviction");

    // The volatile policies take inboxes too: they carry a TTL.
    redis.config_set("maxmemory-policy", "volatile-lru");
    assert!(refusal(&args).await.is_some(), "volatile-lru is refused");

    // No limit: Redis never evicts, whatever the policy.
    redis.config_set("maxmemory", "0");
    assert_eq!(refusal(&args).await, None, "no maxmemory");

    // The first handle checks again once EVICTION_RECHECK has passed.
    redis.config_set("maxmemory", "64mb");
    redis.config_set("maxmemory-policy", "noeviction");
    tokio::time::sleep(EVICTION_RECHECK).await;
    assert!(handle.conn().await.is_ok(), "fixed Redis used again");
}

#[tokio::test]
async fn a_server_on_a_redis_that_may_evict_serves_no_one_until_it_is_fixed() {
    let redis =
        RedisServer::start_with(&["--maxmemory", "64mb", "--maxmemory-policy", "volatile-ttl"]);
    let config = message_server::Config::local("a", &redis.url(), None);
    let bound = message_server::bind(config).await.expect("server binds");
    let (tcp, metrics) = (bound.tcp_addr(), bound.metrics());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(bound.run(shutdown.clone()));

    // As with a Redis it cannot reach: the server waits for a usable one.
    let mut alice = TcpClient::connect(tcp).await;
    alice.send("LOGIN alice").await;
    assert!(
        matches!(
            alice.next_within(Duration::from_secs(2)).await,
            Seen::Timeout
        ),
        "no login on a Redis that may evict"
    );
    assert_eq!(metrics.redis_up.get(), 0, "redis_up says so");

    redis.config_set("maxmemory-policy", "noeviction");
    alice.expect_prefix("OK LOGIN alice ").await;
    let up = eventually(Duration::from_secs(10), || async {
        (metrics.redis_up.get() == 1).then_some(())
    })
    .await;
    assert!(up.is_some(), "registered once Redis may not evict");
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_one_node_that_may_evict_is_named_and_refused() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .expect("cluster starts");
    let args = cluster.args();
    assert_eq!(refusal(&args).await, None, "a cluster that may not evict");
    let node = &cluster.nodes[cluster.masters()[1]];
    node.config_set("maxmemory", "64mb");
    node.config_set("maxmemory-policy", "allkeys-random");
    let why = refusal(&args).await.expect("refused");
    assert!(
        why.contains(&format!(
            ":{} (maxmemory 67108864, maxmemory-policy allkeys-random)",
            node.port()
        )),
        "names the node: {why}"
    );
}
