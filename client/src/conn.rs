//! The raw layer: one connection to one server, over WebSocket or the line
//! protocol. Write a line (or a [`Command`]), read the next line or frame,
//! parse it with `shared`'s grammar. No login, no retries: [`crate::Client`]
//! builds those on top, and tests use this layer to say exactly what they
//! mean (including what a well-behaved client never would).
//!
//! With [`Tls`] the same two transports run over TLS (`wss://`, and the
//! line port's TLS), trusting what the given rustls config trusts.
//!
//! Reads are cancel-safe ([`Conn::next`] may be raced in a `select!` or
//! under a timeout without losing a line); every line and frame is bounded
//! by [`MAX_LINE`].

use std::io;

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::{SinkExt, StreamExt};
use shared::client::{Command, Encoding, ServerLine, ServerLineError, parse_server_line};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::codec::{FramedRead, LinesCodec};

use crate::endpoint::Endpoint;

/// Longest line or frame read from a server (a `HELP` text or a long message).
pub const MAX_LINE: usize = 1 << 20;

/// A byte stream: plain TCP or TLS over it.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

/// TCP or TLS, boxed (one type for both; a client's speed is not in it).
pub type Stream = Box<dyn ByteStream>;

/// A WebSocket as this crate opens it.
pub type WsStream = WebSocketStream<Stream>;

/// TLS for a client: whom to trust and the name the servers' certificates
/// carry. Build the connector with `tls_config::client_config(ca_file)`.
#[derive(Clone)]
pub struct Tls {
    /// The rustls connector (its config holds the trusted roots).
    pub connector: tls_config::TlsConnector,
    /// The server name checked against the certificates (`localhost`, ...).
    pub server_name: tls_config::ServerName<'static>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// What a read saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A text line (without its line end) or a text frame.
    Line(String),
    /// The server closed, or the connection broke. A WebSocket close frame
    /// gives its code; end of stream and errors give `None`.
    Closed(Option<u16>),
}

/// A server at its connection cap, and where it says there is room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Full {
    /// What the server said.
    pub message: String,
    /// Servers with room: `(ws host:port, tcp host:port)`; empty when none.
    pub alternatives: Vec<(String, String)>,
    /// The HTTP body as received (WebSocket only).
    pub body: String,
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connection failed (refused, unreachable, ...).
    #[error("cannot connect to {endpoint}: {source}")]
    Io {
        /// Where.
        endpoint: Endpoint,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The WebSocket handshake failed (other than a 503 at the cap).
    #[error("websocket handshake with {endpoint} failed: {source}")]
    Handshake {
        /// Where.
        endpoint: Endpoint,
        /// Why.
        #[source]
        source: Box<tungstenite::Error>,
    },
    /// The server is at its cap (HTTP 503 with alternatives).
    #[error("{endpoint} is full: {}", .full.message)]
    Full {
        /// Where.
        endpoint: Endpoint,
        /// The refusal.
        full: Full,
    },
}

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The connection is gone.
    #[error("write failed: {0}")]
    Io(#[from] io::Error),
    /// The WebSocket is gone.
    #[error("write failed: {0}")]
    Ws(#[from] Box<tungstenite::Error>),
    /// A raw WebSocket frame on a line connection, or raw bytes on a WebSocket.
    #[error("this transport cannot write that")]
    WrongTransport,
}

enum Io {
    Ws(Box<WsStream>),
    Lines {
        read: FramedRead<ReadHalf<Stream>, LinesCodec>,
        write: WriteHalf<Stream>,
        /// Lines fed and not yet written (see the `Sink` impl).
        out: Vec<u8>,
    },
}

/// One open connection to a server.
pub struct Conn {
    io: Io,
    endpoint: Endpoint,
}

impl Conn {
    /// Opens `endpoint`: a TCP connection, and for a WebSocket the handshake.
    pub async fn connect(endpoint: &Endpoint) -> Result<Conn, ConnectError> {
        Conn::connect_with(endpoint, None).await
    }

    /// Opens `endpoint`, over TLS when `tls` is given.
    pub async fn connect_with(
        endpoint: &Endpoint,
        tls: Option<&Tls>,
    ) -> Result<Conn, ConnectError> {
        let io_error = |source| ConnectError::Io {
            endpoint: endpoint.clone(),
            source,
        };
        let tcp = TcpStream::connect(endpoint.host())
            .await
            .map_err(io_error)?;
        let _ = tcp.set_nodelay(true);
        let stream: Stream = match tls {
            Some(t) => Box::new(
                t.connector
                    .connect(t.server_name.clone(), tcp)
                    .await
                    .map_err(io_error)?,
            ),
            None => Box::new(tcp),
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_LINE))
            .max_frame_size(Some(MAX_LINE));
        Conn::over(stream, endpoint, tls.is_some(), config).await
    }

    /// Speaks `endpoint`'s transport over a stream already connected (and,
    /// when `tls`, already secured): for a WebSocket the handshake with
    /// `config`. For callers that open their sockets themselves (a load
    /// tool binding source addresses, say).
    pub async fn over(
        stream: Stream,
        endpoint: &Endpoint,
        tls: bool,
        config: WebSocketConfig,
    ) -> Result<Conn, ConnectError> {
        let io = match endpoint {
            Endpoint::Ws { host, path } => {
                let scheme = if tls { "wss" } else { "ws" };
                let url = format!("{scheme}://{host}{path}");
                match tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await {
                    Ok((ws, _)) => Io::Ws(Box::new(ws)),
                    Err(e) => return Err(handshake_error(endpoint, e)),
                }
            }
            Endpoint::Tcp { .. } => {
                let (r, w) = tokio::io::split(stream);
                Io::Lines {
                    read: FramedRead::new(r, LinesCodec::new_with_max_length(MAX_LINE)),
                    write: w,
                    out: Vec::new(),
                }
            }
        };
        Ok(Conn {
            io,
            endpoint: endpoint.clone(),
        })
    }

    /// Where this connection goes.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Writes one line (a text frame over WebSocket, `line\r\n` over TCP).
    pub async fn send_line(&mut self, line: &str) -> Result<(), WriteError> {
        SinkExt::send(self, line.to_owned()).await
    }

    /// Writes a command in `enc`, with `cid` when it is JSON.
    pub async fn send_command(
        &mut self,
        cmd: &Command,
        enc: Encoding,
        cid: Option<&str>,
    ) -> Result<(), WriteError> {
        self.send_line(&cmd.render(enc, cid)).await
    }

    /// Writes any WebSocket message (binary, ping, close, ...).
    pub async fn send_ws(&mut self, msg: Message) -> Result<(), WriteError> {
        match &mut self.io {
            Io::Ws(ws) => SinkExt::send(ws, msg)
                .await
                .map_err(|e| WriteError::Ws(Box::new(e))),
            Io::Lines { .. } => Err(WriteError::WrongTransport),
        }
    }

    /// Writes raw bytes on a line connection (half lines, bad UTF-8, ...).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        match &mut self.io {
            Io::Lines { out, .. } => out.extend_from_slice(bytes),
            Io::Ws(_) => return Err(WriteError::WrongTransport),
        }
        SinkExt::<String>::flush(self).await
    }

    /// The next line or text frame, or the end. WebSocket pings are
    /// answered by the library; pongs and binary frames are skipped.
    /// Cancel-safe.
    pub async fn next(&mut self) -> Incoming {
        std::future::poll_fn(|cx| self.poll_incoming(cx)).await
    }

    fn poll_incoming(&mut self, cx: &mut Context<'_>) -> Poll<Incoming> {
        match &mut self.io {
            Io::Ws(ws) => loop {
                return Poll::Ready(match ready!(ws.poll_next_unpin(cx)) {
                    Some(Ok(Message::Text(t))) => Incoming::Line(t.to_string()),
                    Some(Ok(Message::Close(frame))) => {
                        Incoming::Closed(frame.map(|f| u16::from(f.code)))
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => Incoming::Closed(None),
                });
            },
            Io::Lines { read, .. } => Poll::Ready(match ready!(read.poll_next_unpin(cx)) {
                Some(Ok(line)) => Incoming::Line(line.trim_end_matches('\r').to_owned()),
                Some(Err(_)) | None => Incoming::Closed(None),
            }),
        }
    }

    /// The next line, parsed; `Ok(None)` at the end.
    pub async fn next_parsed(&mut self) -> Result<Option<ServerLine>, ServerLineError> {
        match self.next().await {
            Incoming::Line(l) => parse_server_line(&l).map(Some),
            Incoming::Closed(_) => Ok(None),
        }
    }

    /// Closes politely (a WebSocket close frame, a TCP shutdown).
    pub async fn close(&mut self) {
        let _ = SinkExt::<String>::close(self).await;
    }
}

/// Lines and text frames; the stream ends when the connection does.
impl futures_util::Stream for Conn {
    type Item = String;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<String>> {
        self.get_mut().poll_incoming(cx).map(|i| match i {
            Incoming::Line(l) => Some(l),
            Incoming::Closed(_) => None,
        })
    }
}

/// Most bytes of fed lines held before they are written.
const OUT_BATCH: usize = 64 * 1024;

/// Writes what `out` holds.
fn poll_write_out(
    write: &mut WriteHalf<Stream>,
    out: &mut Vec<u8>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), WriteError>> {
    while !out.is_empty() {
        let n = ready!(Pin::new(&mut *write).poll_write(cx, out))?;
        if n == 0 {
            return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into()));
        }
        out.drain(..n);
    }
    Poll::Ready(Ok(()))
}

/// Lines (text frames) out: `feed` many, `flush` once.
impl futures_util::Sink<String> for Conn {
    type Error = WriteError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        match &mut self.get_mut().io {
            Io::Ws(ws) => ws
                .poll_ready_unpin(cx)
                .map_err(|e| WriteError::Ws(Box::new(e))),
            Io::Lines { write, out, .. } if out.len() >= OUT_BATCH => {
                poll_write_out(write, out, cx)
            }
            Io::Lines { .. } => Poll::Ready(Ok(())),
        }
    }

    fn start_send(self: Pin<&mut Self>, line: String) -> Result<(), WriteError> {
        match &mut self.get_mut().io {
            Io::Ws(ws) => ws
                .start_send_unpin(Message::text(line))
                .map_err(|e| WriteError::Ws(Box::new(e))),
            Io::Lines { out, .. } => {
                out.extend_from_slice(line.as_bytes());
                out.extend_from_slice(b"\r\n");
                Ok(())
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        match &mut self.get_mut().io {
            Io::Ws(ws) => ws
                .poll_flush_unpin(cx)
                .map_err(|e| WriteError::Ws(Box::new(e))),
            Io::Lines { write, out, .. } => {
                ready!(poll_write_out(write, out, cx))?;
                Pin::new(write).poll_flush(cx).map_err(WriteError::from)
            }
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        match &mut self.get_mut().io {
            Io::Ws(ws) => ws
                .poll_close_unpin(cx)
                .map_err(|e| WriteError::Ws(Box::new(e))),
            Io::Lines { write, out, .. } => {
                ready!(poll_write_out(write, out, cx))?;
                Pin::new(write).poll_shutdown(cx).map_err(WriteError::from)
            }
        }
    }
}

/// A 503 with a JSON body becomes [`ConnectError::Full`]; anything else
/// stays the handshake error it is.
fn handshake_error(endpoint: &Endpoint, e: tungstenite::Error) -> ConnectError {
    match e {
        tungstenite::Error::Http(resp) if resp.status().as_u16() == 503 => {
            let body = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            ConnectError::Full {
                endpoint: endpoint.clone(),
                full: parse_full_body(&body),
            }
        }
        tungstenite::Error::Io(source) => ConnectError::Io {
            endpoint: endpoint.clone(),
            source,
        },
        e => ConnectError::Handshake {
            endpoint: endpoint.clone(),
            source: Box::new(e),
        },
    }
}

/// Reads `{"error":"full","message":..,"servers":[{"ws":..,"tcp":..}]}`.
pub fn parse_full_body(body: &str) -> Full {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let alternatives = v["servers"]
        .as_array()
        .map(|servers| {
            servers
                .iter()
                .filter_map(|s| Some((s["ws"].as_str()?.to_owned(), s["tcp"].as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    Full {
        message: v["message"].as_str().unwrap_or("server is full").to_owned(),
        alternatives,
        body: body.to_owned(),
    }
}

/// Reads a telnet refusal `ERR full try <host:port>` (`None` for
/// `try later`, when no server has room).
pub fn telnet_alternative(message: &str) -> Option<String> {
    let rest = message.strip_prefix("try ")?;
    let addr = rest.split_whitespace().next()?;
    (!addr.ends_with(':') && addr.contains(':')).then(|| addr.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_body_names_alternatives() {
        let f = parse_full_body(
            r#"{"error":"full","message":"server a is at its cap","servers":[{"id":"b","ws":"h:2","tcp":"h:3","connections":1}]}"#,
        );
        assert_eq!(f.alternatives, vec![("h:2".to_owned(), "h:3".to_owned())]);
        assert_eq!(f.message, "server a is at its cap");
        assert!(parse_full_body("not json").alternatives.is_empty());
    }

    #[test]
    fn a_telnet_refusal_names_one() {
        assert_eq!(
            telnet_alternative("try 127.0.0.1:9102").as_deref(),
            Some("127.0.0.1:9102")
        );
        assert_eq!(telnet_alternative("try later: no server has room"), None);
    }
}
