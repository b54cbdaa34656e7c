//! The telnet listener: one line per command, `ERR full try <addr>` at the
//! cap. With `--tls-cert`, the same port speaks TLS (e.g. `openssl s_client`).

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::future::Either;
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
    super::accept_loop(listener, "tcp", state, tls, tracker, serve).await;
}

/// The connection's future: its session, or the refusal at the cap. A plain
/// function, so the long-lived session future is spawned as it is, with
/// nothing of this step around it.
fn serve(stream: ClientIo, peer: SocketAddr, state: Arc<State>) -> impl Future<Output = ()> + Send {
    match state.admit(peer.ip()) {
        Ok(admission) => {
            let conn = LineConn::new(stream, state.limits.max_message);
            let session = session::run(conn, state, peer, None, admission);
            tracing::trace!(bytes = std::mem::size_of_val(&session), "session future");
            Either::Left(session)
        }
        Err(refusal) => Either::Right(refuse(stream, refusal, state)),
    }
}

/// Tells a client it was not admitted, and why, then closes.
async fn refuse(mut stream: ClientIo, refusal: Refusal, state: Arc<State>) {
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
}
