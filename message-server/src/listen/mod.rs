//! The client-facing listeners: [`ws`] (WebSocket plus the HTTP endpoints
//! on the same port) and [`tcp`] (telnet lines). Both take a connection
//! permit first: at the cap a client is refused with a pointer to servers
//! that have room, and sessions already connected are not touched.
//!
//! Accept loops never end on an error: they log it, back off briefly and
//! go on. Handshakes (TLS, HTTP) happen in the connection's own task.

pub mod http;
pub mod tcp;
pub mod ws;

use std::time::Duration;

/// Backs off after an accept error (e.g. out of file descriptors).
async fn accept_backoff(e: &std::io::Error) {
    tracing::warn!(error = %e, "accept failed; backing off");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
