//! Socket options every client connection gets.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// TCP keepalive: the kernel notices a peer that vanished without a FIN
/// (cable pulled, machine gone) even when the session is quiet.
pub fn keepalive(stream: &TcpStream, idle: Duration) {
    let ka = TcpKeepalive::new()
        .with_time(idle)
        .with_interval((idle / 3).max(Duration::from_secs(1)));
    if let Err(e) = SockRef::from(stream).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "could not set TCP keepalive");
    }
}
