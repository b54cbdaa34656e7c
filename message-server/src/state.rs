//! What every task of one server shares: identity, limits, handles on the
//! hub, Redis, the router and the relay links, and the id generators.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use shared::ids::SessionId;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::directory::Directory;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::relay_link::Links;
use crate::router::Job;
use crate::store::Store;

/// How users prove who they are.
#[derive(Clone)]
pub enum Login {
    /// `--insecure-login`: any `LOGIN <user>` is accepted (and may broadcast).
    Insecure,
    /// Tokens signed with this secret are required.
    Token(Arc<crate::auth::TokenAuth>),
}

/// Shared state of one server, grouped by what uses it.
pub struct State {
    /// Who this server is.
    pub identity: Identity,
    pub limits: Limits,
    /// How users log in.
    pub login: Login,
    /// The connection cap and the per-address cap.
    pub cap: Cap,
    /// Settings only the HTTP side of the WebSocket port reads.
    pub http: HttpSettings,
    pub hub: Arc<Hub>,
    pub directory: Directory,
    pub store: Store,
    pub router: mpsc::Sender<Job>,
    pub links: Arc<Links>,
    pub metrics: Metrics,
    pub ids: Ids,
    pub shutdown: CancellationToken,
}

/// This server's identity, as `/healthz` and the logs show it.
pub struct Identity {
    /// `--id`.
    pub server_id: String,
    /// This start's epoch (unix ms at start).
    pub epoch: u64,
    /// Relays configured (`--relay`, any number).
    pub relays: usize,
}

/// Admission limits: how many connections, and how many per address.
pub struct Cap {
    /// One permit per client connection: `--max-connections`.
    pub permits: Arc<Semaphore>,
    /// The number of permits, for `/healthz` and the 503 body.
    pub max_connections: usize,
    /// Connections per client address.
    pub per_address: Arc<crate::limits::PerAddress>,
}

/// What only the HTTP side of the WebSocket port needs.
pub struct HttpSettings {
    /// Serve `/echo` (conformance testing).
    pub echo: bool,
    /// Browser origins allowed (empty: any).
    pub allowed_origins: Vec<String>,
}

/// A connection's admission: its place under the server cap and under its
/// address's cap, both given back when it is dropped.
#[derive(Debug)]
pub struct Admission {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _slot: crate::limits::AddressSlot,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server is at `--max-connections`.
    Full,
    /// The client's address is at `--max-connections-per-ip`.
    TooManyFromAddress,
}

impl State {
    /// Admits a connection from `ip`, or says why not.
    pub fn admit(&self, ip: std::net::IpAddr) -> Result<Admission, Refusal> {
        let slot = self
            .cap
            .per_address
            .take(ip, self.limits.max_connections_per_ip)
            .ok_or(Refusal::TooManyFromAddress)?;
        let permit = Arc::clone(&self.cap.permits)
            .try_acquire_owned()
            .map_err(|_| Refusal::Full)?;
        Ok(Admission {
            _permit: permit,
            _slot: slot,
        })
    }
}

/// Makes session and message ids unique across the cluster: a per-start
/// random prefix, and a counter.
pub struct Ids {
    prefix: String,
    base: u64,
    next: AtomicU64,
}

impl Ids {
    pub fn new(epoch: u64) -> Ids {
        let salt: u16 = rand::random();
        Ids {
            prefix: format!("{epoch:x}{salt:04x}"),
            base: rand::random::<u64>() & !0xffff_ffff,
            next: AtomicU64::new(1),
        }
    }

    /// A new session id.
    pub fn session(&self) -> SessionId {
        SessionId(self.base | (self.next.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff))
    }

    /// A new message id.
    pub fn message(&self) -> String {
        format!(
            "{}-{:x}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_do_not_repeat() {
        let ids = Ids::new(1_700_000_000_000);
        let a = ids.message();
        let b = ids.message();
        assert_ne!(a, b);
        assert_ne!(ids.session(), ids.session());
        shared::ids::check_name(&a).expect("message ids are valid names");
    }
}
