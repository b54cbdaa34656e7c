//! The one accept loop step both binaries use (client ports, the relay's
//! link port, the admin port): the next connection, or `None` at shutdown.
//!
//! A failing `accept` (out of file descriptors, say) is logged and retried
//! after a [`Backoff`] step that shutdown interrupts; the loop around it
//! never ends on an error. Handshakes (TLS, HTTP, link) belong in the
//! connection's own task, never here.

use std::net::SocketAddr;
use std::time::Duration;

use shared::backoff::Backoff;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A listener with its retry schedule.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    backoff: Backoff,
    /// For the log line of a failed accept.
    what: &'static str,
}

impl Acceptor {
    /// Accepts on `listener`; `what` names it in logs (`"ws"`, `"link"`).
    pub fn new(listener: TcpListener, what: &'static str) -> Acceptor {
        Acceptor {
            listener,
            backoff: Backoff::new(Duration::from_millis(10), Duration::from_secs(1)),
            what,
        }
    }

    /// The next connection, or `None` once `shutdown` is cancelled.
    pub async fn next(&mut self, shutdown: &CancellationToken) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return None,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok(pair) => {
                    self.backoff.reset();
                    return Some(pair);
                }
                Err(error) => {
                    let wait = self.backoff.next_plain();
                    tracing::warn!(listener = self.what, %error, retry_in = ?wait, "accept failed; backing off");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_ends_a_waiting_accept() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut acceptor = Acceptor::new(listener, "test");
        let shutdown = CancellationToken::new();
        let client = TcpStream::connect(addr).await.expect("connect");
        let (_, peer) = acceptor.next(&shutdown).await.expect("a connection");
        assert_eq!(peer, client.local_addr().expect("addr"));
        shutdown.cancel();
        assert!(acceptor.next(&shutdown).await.is_none());
    }
}
