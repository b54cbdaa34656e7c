//! The Switchboard message server, as a library: [`bind`] then
//! [`Bound::run`] (or [`run`] for both), so tests start it in-process on
//! port 0 and `main.rs` stays thin.
//!
//! The parts:
//! - [`config`]: flags, environment variables, limits;
//! - [`listen`]: the WebSocket/HTTP port and the telnet port, the cap;
//! - [`conn`]: one client connection as text in / text out, close codes;
//!   [`coalesce`]: the socket wrapper under it that holds no buffer while
//!   idle and gathers a batch of writes into one;
//! - [`session`]: one task per connection (its lifecycle), with its
//!   [`session::replay`] (login replay, `SYNC`) and commands;
//! - [`hub`]: local sessions by user and room, bounded pushes into each
//!   session's [`outbox`];
//! - [`router`]: the ordered store-then-route pipeline;
//! - [`store`]: inboxes, sequence numbers, cursors, room history (Redis);
//! - [`directory`]: sessions and the server registry in Redis;
//! - [`presence`]: the cache of where users are that keeps `TELL` off Redis;
//! - [`db`]: the shared Redis connection and scripts;
//! - [`relay_link`]: the links to the relay(s), reconnecting, reading and
//!   writing side by side; it never makes a sender wait;
//! - [`auth`]: signed tokens; [`limits`]: rate and per-address limits;
//!   [`metrics`]: Prometheus counters; [`quiet`]: warnings raised per
//!   message or session, at most one per place every 10 s;
//! - [`cli`]: the command-line entry point;
//! - [`state`]: what every task shares; [`socket`]: socket options;
//! - [`web`]: the chat page at `/`, the JS client, `GET /servers` for browsers.

pub mod auth;
pub mod cli;
pub mod coalesce;
pub mod config;
pub mod conn;
pub mod db;
pub mod directory;
pub mod hub;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod outbox;
pub mod presence;
pub mod quiet;
pub mod relay_link;
pub mod router;
pub mod session;
pub mod socket;
pub mod state;
pub mod store;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;

use shared::link::ServerAddrs;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
use directory::{Directory, RegistryInfo};
use entry::now_ms;
use metrics::Metrics;
use relay_link::{LinkContext, Links};
use state::{Ids, Login, State};
use store::{Store, StoreLimits};

/// Why a server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Neither a token secret nor `--insecure-login` was given.
    #[error(
        "no way to authenticate users: give --token-secret-file FILE (production) \
         or --insecure-login (demos and tests only)"
    )]
    NoAuth,
    /// The server id is not a valid name.
    #[error("invalid --id {0:?}: {1}")]
    BadId(String, shared::ids::NameError),
    /// A secret file could not be used.
    #[error(transparent)]
    Secret(#[from] auth::AuthError),
    /// The link secret file could not be used.
    #[error("link secret: {0}")]
    LinkSecret(#[source] entry::secret::SecretError),
    /// TLS files could not be used.
    #[error(transparent)]
    Tls(#[from] tls_config::TlsError),
    /// A listener could not be bound.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// Redis never came (only at shutdown).
    #[error(transparent)]
    Db(#[from] db::DbError),
}

/// A server whose listeners are bound, not yet serving.
pub struct Bound {
    config: Config,
    ws: TcpListener,
    tcp: TcpListener,
    ws_addr: SocketAddr,
    tcp_addr: SocketAddr,
    login: Login,
    link_secret: Vec<u8>,
    tls: Option<tls_config::TlsAcceptor>,
    relay_tls: Option<tls_config::TlsConnector>,
    metrics: Metrics,
    epoch: u64,
}

/// Checks the configuration and binds both listeners.
pub async fn bind(config: Config) -> Result<Bound, ServerError> {
    shared::ids::check_name(&config.id).map_err(|e| ServerError::BadId(config.id.clone(), e))?;
    let login = match (&config.token_secret_file, config.insecure_login) {
        (Some(path), _) => Login::Token(Arc::new(auth::TokenAuth::from_secret(
            &auth::load_secret(path)?,
        ))),
        (None, true) => {
            tracing::warn!(
                "--insecure-login: anyone can log in as anyone; for demos and tests only"
            );
            Login::Insecure
        }
        (None, false) => return Err(ServerError::NoAuth),
    };
    let link_secret = match &config.link_secret_file {
        Some(path) => entry::secret::read_secret(path).map_err(ServerError::LinkSecret)?,
        None => Vec::new(),
    };
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls_config::TlsAcceptor::from(tls_config::server_config(
            cert, key,
        )?)),
        _ => None,
    };
    let relay_tls = match &config.relay_ca {
        Some(ca) => Some(tls_config::TlsConnector::from(tls_config::client_config(
            ca,
        )?)),
        None => None,
    };
    let ws = TcpListener::bind(config.ws)
        .await
        .map_err(|e| ServerError::Bind(config.ws, e))?;
    let tcp = TcpListener::bind(config.tcp)
        .await
        .map_err(|e| ServerError::Bind(config.tcp, e))?;
    let ws_addr = ws
        .local_addr()
        .map_err(|e| ServerError::Bind(config.ws, e))?;
    let tcp_addr = tcp
        .local_addr()
        .map_err(|e| ServerError::Bind(config.tcp, e))?;
    tracing::info!(server = %config.id, tls = tls.is_some(), "listening ws={ws_addr} tcp={tcp_addr}");
    Ok(Bound {
        config,
        ws,
        tcp,
        ws_addr,
        tcp_addr,
        login,
        link_secret,
        tls,
        relay_tls,
        metrics: Metrics::default(),
        epoch: now_ms(),
    })
}

/// Binds and runs until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServerError> {
    bind(config).await?.run(shutdown).await
}

impl Bound {
    /// The bound WebSocket/HTTP address.
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// The bound telnet address.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// This server's metrics (the same numbers `/metrics` shows).
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// This start's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Serves until `shutdown`, then closes every session (1001 / `BYE`),
    /// removes this server from Redis, says `Bye` to the relay and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let Bound {
            config,
            ws,
            tcp,
            ws_addr,
            tcp_addr,
            login,
            link_secret,
            tls,
            relay_tls,
            metrics,
            epoch,
        } = self;
        let limits = config.limits.clone();
        let db = db::Db::connect(&config.redis, metrics.clone(), &shutdown).await?;
        let directory = Directory::new(
            db.clone(),
            &config.id,
            epoch,
            limits.max_sessions_per_user,
            limits.presence_max_age,
            metrics.clone(),
        );
        match directory.purge_previous().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                sessions = n,
                "removed what an earlier start of this server left"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not clean up an earlier start; the relay's sweep will")
            }
        }
        let store = Store::new(
            db.clone(),
            StoreLimits {
                inbox_max_len: limits.inbox_max_len,
                inbox_max_age: limits.inbox_max_age,
                cid_ttl: limits.cid_ttl,
                room_history: limits.room_history,
            },
        );
        let hub = Arc::new(hub::Hub::new(metrics.clone()));
        let links = Arc::new(Links::new(config.relay.len(), metrics.clone()));
        let (router_tx, router_rx) = mpsc::channel(limits.store_inflight.max(1));
        let tracker = TaskTracker::new();
        let state = Arc::new(State {
            identity: state::Identity {
                server_id: config.id.clone(),
                epoch,
                relays: config.relay.len(),
            },
            limits: limits.clone(),
            login,
            cap: state::Cap {
                permits: Arc::new(Semaphore::new(config.max_connections)),
                max_connections: config.max_connections,
                per_address: Arc::default(),
            },
            http: state::HttpSettings {
                echo: config.echo,
                allowed_origins: config.allowed_origins.clone(),
            },
            hub: Arc::clone(&hub),
            directory: directory.clone(),
            store: store.clone(),
            router: router_tx,
            links: Arc::clone(&links),
            metrics: metrics.clone(),
            ids: Ids::new(epoch),
            shutdown: shutdown.clone(),
        });

        // The router outlives the sessions (it answers their last sends).
        let max_inflight = store.pipelines_in_flight();
        let router = tokio::spawn(
            router::Router {
                server_id: config.id.clone(),
                store,
                hub: Arc::clone(&hub),
                links: Arc::clone(&links),
                metrics: metrics.clone(),
                max_inflight,
                commit_interval: limits.store_commit_interval,
            }
            .run(router_rx),
        );
        let background = TaskTracker::new();
        background.spawn(directory::registry_task(
            directory.clone(),
            Arc::clone(&hub),
            metrics.clone(),
            RegistryInfo {
                ws: ws_addr.to_string(),
                tcp: tcp_addr.to_string(),
                cap: config.max_connections as u64,
            },
            limits.registry_interval,
            limits.registry_ttl,
            shutdown.clone(),
        ));
        let link_ctx = LinkContext {
            server_id: config.id.clone(),
            epoch,
            addrs: ServerAddrs {
                ws: ws_addr.to_string(),
                tcp: tcp_addr.to_string(),
            },
            secret: Arc::new(link_secret),
            hub: Arc::clone(&hub),
            directory: directory.clone(),
            links: Arc::clone(&links),
            metrics: metrics.clone(),
            heartbeat: limits.link_heartbeat,
            dead_after: limits.link_dead_after,
            queue: limits.link_queue,
            max_frame: shared::codec::DEFAULT_MAX_FRAME,
            tls: relay_tls,
            tls_name: config.relay_tls_name.clone(),
        };
        for (slot, addr) in config.relay.iter().enumerate() {
            background.spawn(relay_link::link_task(
                addr.clone(),
                slot,
                link_ctx.clone(),
                shutdown.clone(),
            ));
        }
        tracker.spawn(listen::ws::accept_loop(
            ws,
            Arc::clone(&state),
            tls.clone(),
            tracker.clone(),
        ));
        tracker.spawn(listen::tcp::accept_loop(
            tcp,
            Arc::clone(&state),
            tls,
            tracker.clone(),
        ));
        tracing::info!(server = %config.id, epoch, relays = config.relay.len(), "serving");

        shutdown.cancelled().await;
        tracing::info!("shutting down: closing sessions");
        tracker.close();
        if tokio::time::timeout(limits.shutdown_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some sessions did not close in time");
        }
        drop(state);
        let _ = tokio::time::timeout(limits.shutdown_timeout, router).await;
        match directory.purge_self().await {
            Ok(n) => tracing::info!(left_over = n, "removed this server from redis"),
            Err(e) => {
                tracing::warn!(error = %e, "could not remove this server from redis; the relay will")
            }
        }
        background.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), background.wait()).await;
        tracing::info!("stopped");
        Ok(())
    }
}
