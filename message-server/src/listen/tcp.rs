//! The telnet listener: one line per command, `ERR full try <addr>` at the cap.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::conn::LineConn;
use crate::session;
use crate::state::{Refusal, State};

/// Accepts telnet clients until shutdown.
pub async fn accept_loop(listener: TcpListener, state: Arc<State>, tracker: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            _ = state.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let state = Arc::clone(&state);
                tracker.spawn(async move { serve(stream, peer, state).await });
            }
            Err(e) => super::accept_backoff(&e).await,
        }
    }
}

async fn serve(mut stream: TcpStream, peer: std::net::SocketAddr, state: Arc<State>) {
    let _ = stream.set_nodelay(true);
    crate::socket::keepalive(&stream);
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
