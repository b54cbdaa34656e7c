//! A whole cluster in the test process: a private Redis, the real relay and
//! real message servers started through their libraries' `bind` / `run` on
//! port 0, each with its own shutdown token.

use std::net::SocketAddr;
use std::time::Duration;

use message_server::metrics::Metrics as ServerMetrics;
use relay_server::Metrics as RelayMetrics;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::eventually;
use crate::redis_server::{RedisKind, TestRedis};

/// One in-process message server.
pub struct Server {
    pub id: String,
    pub ws: SocketAddr,
    pub tcp: SocketAddr,
    pub metrics: ServerMetrics,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<Result<(), message_server::ServerError>>>,
}

impl Server {
    /// Starts a server with `config` and waits until it is registered in
    /// Redis and, if it has a relay, linked.
    pub async fn start(config: message_server::Config) -> Server {
        let id = config.id.clone();
        let has_relay = !config.relay.is_empty();
        let bound = message_server::bind(config).await.expect("server binds");
        let (ws, tcp, metrics) = (bound.ws_addr(), bound.tcp_addr(), bound.metrics());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(bound.run(shutdown.clone()));
        let server = Server {
            id,
            ws,
            tcp,
            metrics,
            shutdown,
            task: Some(task),
        };
        if has_relay {
            server.wait_linked().await;
        }
        eventually(Duration::from_secs(10), || async {
            (server.metrics.redis_up.get() == 1).then_some(())
        })
        .await
        .expect("server registered in redis");
        server
    }

    /// Waits until at least one relay link is up.
    pub async fn wait_linked(&self) {
        eventually(Duration::from_secs(10), || async {
            (self.metrics.links_up.get() > 0).then_some(())
        })
        .await
        .expect("server linked to the relay");
    }

    /// Graceful shutdown; waits for `run` to return.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let r = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server stops in time");
            r.expect("server task").expect("server run ok");
        }
    }
}

/// One in-process relay.
pub struct Relay {
    pub link: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: RelayMetrics,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<Result<(), relay_server::RelayError>>>,
}

impl Relay {
    /// Starts a relay on free ports with `config` (its addresses are overridden).
    pub async fn start(mut config: relay_server::Config) -> Relay {
        config.listen = "127.0.0.1:0".parse().expect("addr");
        config.admin = "127.0.0.1:0".parse().expect("addr");
        let bound = relay_server::bind(config).await.expect("relay binds");
        let (link, admin, metrics) = (bound.link_addr(), bound.admin_addr(), bound.metrics());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(bound.run(shutdown.clone()));
        Relay {
            link,
            admin,
            metrics,
            shutdown,
            task: Some(task),
        }
    }

    /// A relay with default settings on `redis`.
    pub async fn start_default(redis: &str) -> Relay {
        let config = relay_server::Config {
            redis: redis_store::RedisArgs::single(redis),
            ..relay_server::Config::default()
        };
        Relay::start(config).await
    }

    /// GETs an admin path; returns status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        crate::http_get(self.admin, path).await
    }

    /// Graceful shutdown.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

/// Redis (one, or a Redis Cluster), a relay and servers named `a`, `b`, `c`, ...
pub struct Cluster {
    pub redis: TestRedis,
    pub relay: Relay,
    pub servers: Vec<Server>,
}

impl Cluster {
    /// Starts Redis, a relay and `n` servers with default settings.
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, |_| {}).await
    }

    /// Like [`Cluster::start`], letting the caller adjust each server's
    /// config. Over one Redis, or a Redis Cluster with `SB_TEST_REDIS=cluster`.
    pub async fn start_with(n: usize, adjust: impl Fn(&mut message_server::Config)) -> Cluster {
        Cluster::start_over(RedisKind::from_env(), n, adjust).await
    }

    /// Like [`Cluster::start_with`] over a Redis of `kind` (one, or a
    /// 3-master Redis Cluster).
    pub async fn start_over(
        kind: RedisKind,
        n: usize,
        adjust: impl Fn(&mut message_server::Config),
    ) -> Cluster {
        let redis = tokio::task::spawn_blocking(move || TestRedis::start(kind))
            .await
            .expect("redis starts");
        let relay = Relay::start(relay_server::Config {
            redis: redis.args(),
            ..relay_server::Config::default()
        })
        .await;
        let mut cluster = Cluster {
            redis,
            relay,
            servers: Vec::new(),
        };
        for i in 0..n {
            let id = ((b'a' + i as u8) as char).to_string();
            cluster.add_server_with(&id, &adjust).await;
        }
        cluster
    }

    /// Adds one more server to the running cluster.
    pub async fn add_server_with(
        &mut self,
        id: &str,
        adjust: impl Fn(&mut message_server::Config),
    ) -> &Server {
        let mut config =
            message_server::Config::local(id, "redis://unused/", Some(self.relay.link));
        config.redis = self.redis.args();
        adjust(&mut config);
        let server = Server::start(config).await;
        self.servers.push(server);
        self.servers.last().expect("just pushed")
    }

    /// The server with this id.
    pub fn server(&self, id: &str) -> &Server {
        self.servers
            .iter()
            .find(|s| s.id == id)
            .expect("known server")
    }
}
