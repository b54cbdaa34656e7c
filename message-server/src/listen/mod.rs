//! The client-facing listeners: [`ws`] (WebSocket plus the HTTP endpoints
//! on the same port) and [`tcp`] (telnet lines). Both take a connection
//! permit first: at the cap a client is refused with a pointer to servers
//! that have room, and sessions already connected are not touched.
//!
//! Accept loops never end on an error: [`entry::accept::Acceptor`] (the one
//! accept step both binaries use) logs it, backs off (shutdown interrupts
//! the wait) and goes on. Handshakes (TLS, HTTP) happen in the connection's
//! own task, a short one: the session that follows is spawned as a task of
//! its own, sized for the session alone.

pub mod http;
pub mod tcp;
pub mod ws;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::either::Either;
use tokio_util::task::TaskTracker;

use crate::state::State;

/// A client's byte stream: plain TCP, or TLS over it (boxed: a TLS state
/// is about a kilobyte, and every plain connection would carry its size).
pub type ClientIo = Either<TcpStream, Box<tls_config::server::TlsStream<TcpStream>>>;

/// Time a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts on `listener` until shutdown. Each connection gets its own task:
/// socket options, then `serve`; with TLS, a short task does the handshake
/// first and then spawns `serve` as a task of its own, so the connection's
/// long-lived future does not carry the handshake's space.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    state: Arc<State>,
    tls: Option<tls_config::TlsAcceptor>,
    tracker: TaskTracker,
    serve: F,
) where
    F: Fn(ClientIo, SocketAddr, Arc<State>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    let mut acceptor = entry::accept::Acceptor::new(listener, what);
    let shutdown = state.shutdown.clone();
    while let Some((stream, peer)) = acceptor.next(&shutdown).await {
        let _ = stream.set_nodelay(true);
        crate::socket::keepalive(&stream, state.limits.tcp_keepalive);
        let state = Arc::clone(&state);
        let Some(acceptor) = tls.clone() else {
            tracker.spawn(serve(Either::Left(stream), peer, state));
            continue;
        };
        let (serve, sessions) = (Arc::clone(&serve), tracker.clone());
        tracker.spawn(async move {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => {
                    sessions.spawn(serve(Either::Right(Box::new(tls_stream)), peer, state));
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}
