//! A fault-injection TCP proxy: one listener in front of one target, so a
//! test can forward, delay or black-hole a single link (a server's link to
//! one relay, say) without root or network namespaces.
//!
//! - [`Mode::Forward`]: bytes pass as they arrive.
//! - [`Mode::Delay`]: every chunk is held for the given time, in order, in
//!   both directions (a slow network, not a slow reader).
//! - [`Mode::Blackhole`]: nothing is read or written in either direction and
//!   nothing is closed, as in a network partition: the peers see silence,
//!   their writes pile up in the kernel's buffers, and when the mode goes
//!   back to forwarding the held bytes flow on, as after a healed partition.
//!
//! [`Proxy::cut`] closes every current connection (new ones are accepted
//! as before), as a reset middlebox would.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the proxy does with the bytes of its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pass bytes on as they arrive.
    Forward,
    /// Hold every chunk this long before passing it on.
    Delay(Duration),
    /// Neither read nor write, and close nothing.
    Blackhole,
}

/// A running proxy; dropping it stops the proxy and closes its connections.
pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    /// Cancelled (and replaced) by [`Proxy::cut`]; every connection watches
    /// the token current when it was accepted.
    conns: std::sync::Arc<std::sync::Mutex<CancellationToken>>,
    shutdown: CancellationToken,
}

impl Proxy {
    /// Listens on a free loopback port and forwards each connection to
    /// `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, mode_rx) = watch::channel(Mode::Forward);
        let shutdown = CancellationToken::new();
        let conns = std::sync::Arc::new(std::sync::Mutex::new(shutdown.child_token()));
        let (stop, current) = (shutdown.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    },
                };
                let token = current.lock().expect("proxy lock").clone();
                tokio::spawn(connection(client, target, mode_rx.clone(), token));
            }
        });
        Proxy {
            addr,
            mode,
            conns,
            shutdown,
        }
    }

    /// The address clients connect to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches every connection, current and future, to `mode`.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Closes every current connection; later ones are proxied as before.
    pub fn cut(&self) {
        let mut current = self.conns.lock().expect("proxy lock");
        current.cancel();
        *current = self.shutdown.child_token();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One proxied connection: a delay line each way, until either side closes
/// or the connection is cut.
async fn connection(
    client: TcpStream,
    target: SocketAddr,
    mode: watch::Receiver<Mode>,
    stop: CancellationToken,
) {
    let Ok(upstream) = TcpStream::connect(target).await else {
        return; // the client sees its connection close, as with a refused one
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_r, client_w) = client.into_split();
    let (up_r, up_w) = upstream.into_split();
    let both = async {
        tokio::join!(
            direction(client_r, up_w, mode.clone()),
            direction(up_r, client_w, mode)
        )
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = both => {}
    }
}

/// Bytes from `from` to `to`, held back as the mode says. Ends when `from`
/// closes (after passing on what it sent) or `to` fails.
async fn direction(from: OwnedReadHalf, mut to: OwnedWriteHalf, mode: watch::Receiver<Mode>) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let reader = read_side(from, tx, mode.clone());
    let writer = async {
        let mut mode = mode;
        while let Some((release_at, chunk)) = rx.recv().await {
            if !wait_open(&mut mode).await {
                return;
            }
            tokio::time::sleep_until(release_at).await;
            if !wait_open(&mut mode).await || to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// Reads chunks while the mode lets it and queues each with its release
/// time; dropping `tx` at end of stream ends the writer.
async fn read_side(
    mut from: OwnedReadHalf,
    tx: mpsc::Sender<(Instant, Vec<u8>)>,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !wait_open(&mut mode).await {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // A switch to black-hole stops reading at once.
            _ = mode.changed() => continue,
        };
        let delay = match *mode.borrow() {
            Mode::Delay(d) => d,
            Mode::Forward | Mode::Blackhole => Duration::ZERO,
        };
        if tx
            .send((Instant::now() + delay, buf[..n].to_vec()))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Waits while the mode is [`Mode::Blackhole`]; `false` if the proxy is gone.
async fn wait_open(mode: &mut watch::Receiver<Mode>) -> bool {
    while *mode.borrow_and_update() == Mode::Blackhole {
        if mode.changed().await.is_err() {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that echoes every byte back.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn read_exact(s: &mut TcpStream, n: usize, limit: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; n];
        tokio::time::timeout(limit, s.read_exact(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(buf)
    }

    #[tokio::test]
    async fn forwards_both_ways() {
        let proxy = Proxy::start(echo_server().await).await;
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        s.write_all(b"hello").await.expect("write");
        let got = read_exact(&mut s, 5, Duration::from_secs(5)).await;
        assert_eq!(got.as_deref(), Some(&b"hello"[..]));
    }

    #[tokio::test]
    async fn blackhole_holds_bytes_without_closing_then_heals() {
        let proxy = Proxy::start(echo_server().await).await;
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        s.write_all(b"a").await.expect("write");
        assert!(
            read_exact(&mut s, 1, Duration::from_secs(5))
                .await
                .is_some()
        );

        proxy.set(Mode::Blackhole);
        s.write_all(b"held")
            .await
            .expect("write into the partition");
        // Silence, not a close: a read neither returns data nor EOF.
        assert!(
            read_exact(&mut s, 4, Duration::from_millis(300))
                .await
                .is_none()
        );

        proxy.set(Mode::Forward);
        let got = read_exact(&mut s, 4, Duration::from_secs(5)).await;
        assert_eq!(
            got.as_deref(),
            Some(&b"held"[..]),
            "held bytes flow on after healing"
        );
    }

    #[tokio::test]
    async fn delay_holds_each_chunk() {
        let proxy = Proxy::start(echo_server().await).await;
        proxy.set(Mode::Delay(Duration::from_millis(150)));
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        let start = Instant::now();
        s.write_all(b"x").await.expect("write");
        assert!(
            read_exact(&mut s, 1, Duration::from_secs(5))
                .await
                .is_some()
        );
        // Held once on the way in and once on the way back.
        assert!(start.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn cut_closes_current_connections_only() {
        let proxy = Proxy::start(echo_server().await).await;
        let mut old = TcpStream::connect(proxy.addr()).await.expect("connect");
        old.write_all(b"1").await.expect("write");
        assert!(
            read_exact(&mut old, 1, Duration::from_secs(5))
                .await
                .is_some()
        );
        proxy.cut();
        let mut buf = [0u8; 1];
        let eof = tokio::time::timeout(Duration::from_secs(5), old.read(&mut buf)).await;
        assert!(
            matches!(eof, Ok(Ok(0)) | Ok(Err(_))),
            "cut closes the old connection"
        );

        let mut new = TcpStream::connect(proxy.addr()).await.expect("connect");
        new.write_all(b"2").await.expect("write");
        let got = read_exact(&mut new, 1, Duration::from_secs(5)).await;
        assert_eq!(got.as_deref(), Some(&b"2"[..]));
    }
}
