//! Real clients for the tests: a WebSocket client and a telnet-like TCP
//! line client, both thin wrappers over the client crate's raw connection
//! ([`switchboard_client::Conn`], tokio-tungstenite underneath), plus
//! [`RawWs`] for bytes no library would send. Every read has a deadline
//! ([`crate::WAIT`]).

use std::net::SocketAddr;
use std::time::Duration;

use switchboard_client::conn::{ConnectError, WriteError};
use switchboard_client::{Conn, Endpoint, Incoming};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::WAIT;

/// What a read from a client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A text line or text frame.
    Line(String),
    /// The server closed (WebSocket: with this close code, if any).
    Closed(Option<u16>),
    /// Nothing arrived in time.
    Timeout,
}

/// What the tests do with either kind of client: read lines with a deadline.
/// (Only ever awaited on the test's own task, so no `Send` bound is needed.)
#[allow(async_fn_in_trait)]
pub trait LineClient {
    /// The next line (or text frame), a close, or a timeout after `limit`.
    fn next_within(&mut self, limit: Duration) -> impl std::future::Future<Output = Seen>;

    /// The next line; panics on close or timeout.
    async fn recv(&mut self) -> String {
        match self.next_within(WAIT).await {
            Seen::Line(l) => l,
            other => panic!("expected a line, saw {other:?}"),
        }
    }

    /// Reads until a line starting with `prefix`; panics if none comes.
    async fn expect_prefix(&mut self, prefix: &str) -> String {
        loop {
            let line = self.recv().await;
            if line.starts_with(prefix) {
                return line;
            }
        }
    }
}

impl LineClient for WsClient {
    fn next_within(&mut self, limit: Duration) -> impl std::future::Future<Output = Seen> {
        next_seen(&mut self.conn, limit)
    }
}

impl LineClient for TcpClient {
    fn next_within(&mut self, limit: Duration) -> impl std::future::Future<Output = Seen> {
        next_seen(&mut self.conn, limit)
    }
}

/// The next line, a close, or a timeout (reads are cancel-safe).
async fn next_seen(conn: &mut Conn, limit: Duration) -> Seen {
    match tokio::time::timeout(limit, conn.next()).await {
        Err(_) => Seen::Timeout,
        Ok(Incoming::Line(l)) => Seen::Line(l),
        Ok(Incoming::Closed(code)) => Seen::Closed(code),
    }
}

/// A WebSocket client.
pub struct WsClient {
    conn: Conn,
}

impl WsClient {
    /// Connects to `ws://addr{path}` (path like `/ws` or `/ws?user=alice`).
    /// A refusal is tungstenite's error, as a WebSocket library reports it
    /// (a 503 at the cap is `Error::Http` with the JSON body).
    pub async fn connect(addr: SocketAddr, path: &str) -> Result<WsClient, tungstenite::Error> {
        let endpoint = Endpoint::Ws {
            host: addr.to_string(),
            path: path.to_owned(),
        };
        match Conn::connect(&endpoint).await {
            Ok(conn) => Ok(WsClient { conn }),
            Err(ConnectError::Full { full, .. }) => {
                let resp = tungstenite::http::Response::builder()
                    .status(503)
                    .body(Some(full.body.into_bytes()))
                    .map_err(tungstenite::Error::HttpFormat)?;
                Err(tungstenite::Error::Http(Box::new(resp)))
            }
            Err(ConnectError::Handshake { source, .. }) => Err(*source),
            Err(ConnectError::Io { source, .. }) => Err(tungstenite::Error::Io(source)),
        }
    }

    /// Connects and logs in with `LOGIN <user>`, returning the client after `OK LOGIN`.
    pub async fn login(addr: SocketAddr, user: &str) -> WsClient {
        let mut c = WsClient::connect(addr, "/ws").await.expect("ws connect");
        c.send(&format!("LOGIN {user}")).await;
        c.expect_prefix(&format!("OK LOGIN {user} ")).await;
        c
    }

    /// Sends one text frame.
    pub async fn send(&mut self, text: &str) {
        self.conn.send_line(text).await.expect("ws send");
    }

    /// Sends any frame (binary, raw, ...); errors are returned, not panicked on.
    pub async fn send_message(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        match self.conn.send_ws(msg).await {
            Ok(()) => Ok(()),
            Err(WriteError::Ws(e)) => Err(*e),
            Err(WriteError::Io(e)) => Err(tungstenite::Error::Io(e)),
            Err(WriteError::WrongTransport) => Err(tungstenite::Error::ConnectionClosed),
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.next_within(WAIT).await {
                Seen::Closed(code) => return code,
                Seen::Line(_) => continue,
                Seen::Timeout => panic!("expected a close, got nothing"),
            }
        }
    }
}

/// A telnet-like client: lines in, lines out.
pub struct TcpClient {
    conn: Conn,
}

impl TcpClient {
    /// Connects.
    pub async fn connect(addr: SocketAddr) -> TcpClient {
        let conn = Conn::connect(&Endpoint::tcp(addr))
            .await
            .expect("tcp connect");
        TcpClient { conn }
    }

    /// Connects and logs in.
    pub async fn login(addr: SocketAddr, user: &str) -> TcpClient {
        let mut c = TcpClient::connect(addr).await;
        c.send(&format!("LOGIN {user}")).await;
        c.expect_prefix(&format!("OK LOGIN {user} ")).await;
        c
    }

    /// Writes one line (a newline is added).
    pub async fn send(&mut self, line: &str) {
        let _ = self.conn.send_line(line).await;
    }

    /// Writes raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.conn.send_raw(bytes).await;
    }

    /// Reads until the server closes the connection.
    pub async fn expect_closed(&mut self) {
        loop {
            match self.next_within(WAIT).await {
                Seen::Closed(_) => return,
                Seen::Line(_) => continue,
                Seen::Timeout => panic!("expected the server to close"),
            }
        }
    }
}

/// A WebSocket spoken byte by byte, to send what a well-behaved library
/// never would (unmasked frames, bad opcodes, invalid UTF-8).
pub struct RawWs {
    stream: TcpStream,
    /// The HTTP status of the handshake answer.
    pub status: u16,
    buf: Vec<u8>,
}

impl RawWs {
    /// Sends a handshake for `path` with `extra` header lines; reads the answer's head.
    pub async fn connect(addr: SocketAddr, path: &str, extra: &[&str]) -> RawWs {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        for h in extra {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        stream
            .write_all(req.as_bytes())
            .await
            .expect("write handshake");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n =
                tokio::time::timeout(WAIT, tokio::io::AsyncReadExt::read(&mut stream, &mut chunk))
                    .await
                    .expect("handshake answer in time")
                    .expect("read");
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        RawWs {
            stream,
            status,
            buf: buf[head_end..].to_vec(),
        }
    }

    /// A client frame: FIN bit, opcode, payload, masked unless `unmasked`.
    pub fn frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], unmasked: bool) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | ((rsv & 7) << 4) | (opcode & 0x0f)];
        let mask_bit = if unmasked { 0 } else { 0x80 };
        match payload.len() {
            n if n < 126 => f.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                f.push(mask_bit | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(mask_bit | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if unmasked {
            f.extend_from_slice(payload);
        } else {
            let key = [0x37u8, 0xfa, 0x21, 0x3d];
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        f
    }

    /// Writes raw bytes (errors ignored: the server may already have closed).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Reads server frames until a close frame (its code) or end of stream
    /// (`None`); text frames are collected into `texts`.
    pub async fn close_code(&mut self, texts: &mut Vec<String>) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut chunk = [0u8; 8192];
        loop {
            // Parse whole frames from the buffer.
            while self.buf.len() >= 2 {
                let opcode = self.buf[0] & 0x0f;
                let len7 = (self.buf[1] & 0x7f) as usize;
                let (len, hdr) = match len7 {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(b) as usize, 10)
                    }
                    126 | 127 => break,
                    n => (n, 2),
                };
                if self.buf.len() < hdr + len {
                    break;
                }
                let payload: Vec<u8> = self.buf[hdr..hdr + len].to_vec();
                self.buf.drain(..hdr + len);
                match opcode {
                    8 => {
                        return (payload.len() >= 2)
                            .then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    }
                    1 => texts.push(String::from_utf8_lossy(&payload).into_owned()),
                    _ => {}
                }
            }
            let read = tokio::time::timeout_at(
                deadline,
                tokio::io::AsyncReadExt::read(&mut self.stream, &mut chunk),
            )
            .await;
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("no close from the server in time; texts so far: {texts:?}"),
            }
        }
    }
}
