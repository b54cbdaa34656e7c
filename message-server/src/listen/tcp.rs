//! The telnet listener: one line per command, `ERR full try <addr>` at the
//! cap. With `--tls-cert`, the same port speaks TLS (e.g. `openssl s_client`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::conn::LineConn;
use crate::session;
use crate::state::{Refusal, State};

/// Accepts telnet clients until shutdown.
pub async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<tls_config::TlsAcceptor>,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let state = Arc::clone(&state);
                let tls = tls.clone();
                tracker.spawn(async move {
                    let _ = stream.set_nodelay(true);
                    crate::socket::keepalive(&stream);
                    match tls {
                        None => serve(stream, peer, state).await,
                        Some(acceptor) => {
                            let handshake = acceptor.accept(stream);
                            match tokio::time::timeout(Duration::from_secs(10), handshake).await {
                                Ok(Ok(tls_stream)) => serve(tls_stream, peer, state).await,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed")
                                }
                                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                            }
                        }
                    }
                });
            }
            Err(e) => super::accept_backoff(&e).await,
        }
    }
}

async fn serve<S>(mut stream: S, peer: SocketAddr, state: Arc<State>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let admission = match state.admit(peer.ip()) {
        Ok(a) => a,
        Err(refusal) => {
            let line = match refusal {
                Refusal::Full => {
                    state.metrics.refused_full.inc();
                    match state.directory.alternatives().first() {
                        Some(s) => format!("ERR full try {}\r\n", s.tcp),
                        None => "ERR full try later: no server has room\r\n".to_owned(),
                    }
                }
                Refusal::TooManyFromAddress => {
                    "ERR limit too many connections from your address\r\n".to_owned()
                }
            };
            let _ = stream.write_all(line.as_bytes()).await;
            let _ = stream.shutdown().await;
            return;
        }
    };
    let conn = LineConn::new(stream, state.limits.max_message);
    session::run(conn, state, peer, None, admission).await;
}
