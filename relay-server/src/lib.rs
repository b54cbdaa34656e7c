//! Switchboard's relay: message servers link to it, it routes frames between
//! them, watches their heartbeats and purges the Redis entries of servers
//! that die.
//!
//! The map:
//!
//! - [`config`]: flags and their defaults ([`Config`]);
//! - `accept`: the accept loop and the link handshake (challenge, `Hello`,
//!   secret check, `Welcome` or `Refused`), moving the frames of the shared
//!   handshake core ([`shared::link::handshake`]);
//! - `routes`: the routing table, server id -> link queue, and room
//!   interests;
//! - `link`: one task per link, reading, forwarding, writing in batches,
//!   its health judged by the shared [`shared::link::liveness`];
//! - `purge`: purging a dead server after its grace period, and the registry
//!   sweep for servers that died unwatched;
//! - `registry`: reading the server registry, the Redis connection;
//! - `purge_log`: the last purges, for `/purges` and the dashboard;
//! - `admin`: the dashboard at `/`, `/healthz`, `/servers`, `/purges`,
//!   `/metrics` over HTTP;
//! - `metrics`: the Prometheus registry of one relay ([`Metrics`]).
//!
//! Use: [`bind`] the listeners, then [`Bound::run`] until a
//! [`CancellationToken`] is cancelled; or [`run`] for both. The relay keeps
//! no durable state: restarting it loses nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

mod accept;
mod admin;
pub mod cli;
pub mod config;
mod holders;
mod link;
mod metrics;
mod purge;
mod purge_log;
mod registry;
mod routes;

pub use config::Config;
pub use metrics::Metrics;

/// Longest wait for the relay's tasks after shutdown was asked for; every
/// task has its own shorter bound, this is the backstop.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A flag value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A listener could not be bound.
    #[error("cannot listen on {what} address {addr}: {source}")]
    Bind {
        /// Which listener (`link` or `admin`).
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The link secret file could not be used (unreadable, or empty: which
    /// would silently mean "no secret").
    #[error("link secret: {0}")]
    Secret(#[from] entry::secret::SecretError),
    /// The Redis flags do not describe a usable Redis.
    #[error("{0}")]
    Redis(#[source] redis_store::StoreError),
}

/// State shared by every task of one running relay.
pub(crate) struct Ctx {
    pub(crate) config: Config,
    /// The link secret; empty when none is configured.
    pub(crate) secret: Vec<u8>,
    pub(crate) routes: routes::Routes,
    pub(crate) metrics: Metrics,
    pub(crate) redis: redis_store::Redis,
    /// The last purges, for the dashboard.
    pub(crate) purge_log: purge_log::PurgeLog,
    /// Cancelled when the relay stops.
    pub(crate) shutdown: CancellationToken,
    /// Every task of this relay, to wait for at shutdown.
    pub(crate) tracker: TaskTracker,
    /// TLS on the link port, when configured.
    pub(crate) tls: Option<tls_config::TlsAcceptor>,
    /// This relay's name among the holders of server links ([`holders`]).
    pub(crate) instance: String,
}

/// A relay with its listeners bound, ready to [`run`](Bound::run).
pub struct Bound {
    config: Config,
    secret: Vec<u8>,
    link: TcpListener,
    admin: TcpListener,
    link_addr: SocketAddr,
    admin_addr: SocketAddr,
    redis: redis_store::Redis,
    metrics: Metrics,
    tls: Option<tls_config::TlsAcceptor>,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("link_addr", &self.link_addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

async fn listen(
    what: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), RelayError> {
    let bind_err = |source| RelayError::Bind { what, addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    Ok((listener, local))
}

/// Checks the configuration, reads the link secret, binds the link and
/// admin listeners and prepares the Redis connection (made on first use and
/// retried in the background: the relay routes frames without Redis).
pub async fn bind(config: Config) -> Result<Bound, RelayError> {
    config.validate().map_err(RelayError::Config)?;
    let secret = match &config.link_secret_file {
        Some(path) => entry::secret::read_secret(path)?,
        None => {
            warn!("no --link-secret-file: accepting only servers without a link secret");
            Vec::new()
        }
    };
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls_config::TlsAcceptor::from(
            tls_config::server_config(cert, key).map_err(|e| RelayError::Config(e.to_string()))?,
        )),
        _ => None,
    };
    let redis = registry::connect_lazy(&config.redis).map_err(RelayError::Redis)?;
    let (link, link_addr) = listen("link", config.listen).await?;
    let (admin, admin_addr) = listen("admin", config.admin).await?;
    Ok(Bound {
        config,
        secret,
        link,
        admin,
        link_addr,
        admin_addr,
        redis,
        metrics: Metrics::new(),
        tls,
    })
}

impl Bound {
    /// Where message servers link to.
    pub fn link_addr(&self) -> SocketAddr {
        self.link_addr
    }

    /// Where the admin HTTP endpoint listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// This relay's metrics (the same numbers `/metrics` serves).
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Serves until `shutdown` is cancelled, then says `Bye` on every link,
    /// stops the admin endpoint and returns once the tasks are done.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RelayError> {
        let instance = holders::instance(&self.config.relay_id);
        let ctx = Arc::new(Ctx {
            config: self.config,
            secret: self.secret,
            routes: routes::Routes::new(),
            metrics: self.metrics,
            redis: self.redis,
            purge_log: purge_log::PurgeLog::default(),
            shutdown: shutdown.child_token(),
            tracker: TaskTracker::new(),
            instance,
            tls: self.tls,
        });
        info!(
            relay_id = %ctx.config.relay_id,
            "listening link={} admin={}",
            self.link_addr,
            self.admin_addr
        );
        ctx.tracker
            .spawn(accept::accept_loop(ctx.clone(), self.link));
        ctx.tracker.spawn(admin::serve(ctx.clone(), self.admin));
        ctx.tracker.spawn(purge::sweep_loop(ctx.clone()));
        ctx.tracker.spawn(holders::refresh_loop(ctx.clone()));

        ctx.shutdown.cancelled().await;
        info!("shutting down");
        ctx.tracker.close();
        if tokio::time::timeout(SHUTDOWN_LIMIT, ctx.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                tasks = ctx.tracker.len(),
                "tasks still running after the shutdown limit; leaving them"
            );
        }
        info!("stopped");
        Ok(())
    }
}

/// [`bind`], then [`Bound::run`].
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RelayError> {
    bind(config).await?.run(shutdown).await
}
