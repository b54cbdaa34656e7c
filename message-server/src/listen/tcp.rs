//! The telnet listener: one line per command, `ERR full try <addr>` at the
//! cap. With `--tls-cert`, the same port speaks TLS (e.g. `openssl s_client`).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use super::ClientIo;
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
    super::accept_loop(listener, "tcp", state, tls, tracker, |io, peer, state| {
        Box::pin(serve(io, peer, state))
    })
    .await;
}

async fn serve(mut stream: ClientIo, peer: SocketAddr, state: Arc<State>) {
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
