//! Real clients for the tests: a WebSocket client (tokio-tungstenite, the
//! same library a Rust SDK would use) and a telnet-like TCP line client.
//! Every read has a deadline ([`crate::WAIT`]).

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

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

/// A WebSocket client.
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Connects to `ws://addr{path}` (path like `/ws` or `/ws?user=alice`).
    pub async fn connect(
        addr: SocketAddr,
        path: &str,
    ) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}")).await?;
        Ok(WsClient { ws })
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
        self.ws.send(Message::text(text)).await.expect("ws send");
    }

    /// Sends any frame (binary, raw, ...); errors are returned, not panicked on.
    pub async fn send_message(
        &mut self,
        msg: Message,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(msg).await
    }

    /// The next text frame, a close, or a timeout after `limit`.
    pub async fn next_within(&mut self, limit: Duration) -> Seen {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next()).await;
            match next {
                Err(_) => return Seen::Timeout,
                Ok(None) => return Seen::Closed(None),
                Ok(Some(Err(_))) => return Seen::Closed(None),
                Ok(Some(Ok(Message::Text(t)))) => return Seen::Line(t.to_string()),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Seen::Closed(frame.map(|f: CloseFrame| u16::from(f.code)));
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The next text frame; panics on close or timeout.
    pub async fn recv(&mut self) -> String {
        match self.next_within(WAIT).await {
            Seen::Line(l) => l,
            other => panic!("expected a line, saw {other:?}"),
        }
    }

    /// Reads until a line starting with `prefix`; panics if none comes.
    pub async fn expect_prefix(&mut self, prefix: &str) -> String {
        loop {
            let line = self.recv().await;
            if line.starts_with(prefix) {
                return line;
            }
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
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl TcpClient {
    /// Connects.
    pub async fn connect(addr: SocketAddr) -> TcpClient {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        let (r, w) = stream.into_split();
        TcpClient {
            reader: BufReader::new(r),
            writer: w,
        }
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
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
    }

    /// Writes raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.writer.write_all(bytes).await;
    }

    /// The next line, end of stream, or a timeout after `limit`.
    pub async fn next_within(&mut self, limit: Duration) -> Seen {
        let mut line = String::new();
        match tokio::time::timeout(limit, self.reader.read_line(&mut line)).await {
            Err(_) => Seen::Timeout,
            Ok(Ok(0)) | Ok(Err(_)) => Seen::Closed(None),
            Ok(Ok(_)) => Seen::Line(line.trim_end_matches(['\r', '\n']).to_owned()),
        }
    }

    /// The next line; panics on close or timeout.
    pub async fn recv(&mut self) -> String {
        match self.next_within(WAIT).await {
            Seen::Line(l) => l,
            other => panic!("expected a line, saw {other:?}"),
        }
    }

    /// Reads until a line starting with `prefix`.
    pub async fn expect_prefix(&mut self, prefix: &str) -> String {
        loop {
            let line = self.recv().await;
            if line.starts_with(prefix) {
                return line;
            }
        }
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
