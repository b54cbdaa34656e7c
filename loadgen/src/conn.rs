//! Opening one client connection: a TCP socket bound to one of several
//! 127.0.0.x source addresses (one address pair has only ~28,000 ports, and
//! spreading sources keeps tens of thousands of connections possible), the
//! WebSocket handshake with small client buffers (or, for Switchboard's
//! telnet port, newline-delimited lines), and the login (Switchboard) or
//! namespace connect (Socket.IO).
//!
//! Switchboard connections are the client crate's raw connection
//! ([`switchboard_client::Conn`], over the socket bound here); Socket.IO's
//! is a WebSocket spoken here. Either way a [`Conn`] is a stream of text
//! frames in and a sink of text frames out; over TCP, Switchboard is spoken
//! in the same JSON, one object per line (its grammar answers in the
//! encoding it is spoken to).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use switchboard_client::Endpoint;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use crate::proto::{self, Incoming, System};

/// How clients reach the servers.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// WebSocket (both systems).
    #[default]
    Ws,
    /// Plain TCP, one line per frame (Switchboard's telnet port only).
    Tcp,
}

/// A logged-in client connection: text frames in, text frames out.
pub enum Conn {
    /// Switchboard (WebSocket or lines), through the client crate.
    Switchboard(Box<switchboard_client::Conn>),
    /// Socket.IO's WebSocket transport.
    Socketio(Box<WebSocketStream<TcpStream>>),
}

/// One text frame (WebSocket) or line (TCP) that was read.
pub enum Text {
    /// A WebSocket text frame, not copied.
    Frame(Utf8Bytes),
    /// A line or frame from a Switchboard connection.
    Line(String),
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Text::Frame(t) => t.as_str(),
            Text::Line(l) => l,
        }
    }
}

/// Why a connection failed after it was opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The WebSocket failed.
    #[error(transparent)]
    Ws(#[from] tungstenite::Error),
    /// The Switchboard connection failed.
    #[error(transparent)]
    Switchboard(#[from] switchboard_client::conn::WriteError),
}

impl Stream for Conn {
    type Item = Result<Text, ConnError>;

    /// Text frames; WebSocket pings, pongs and binary frames are skipped
    /// (the library answers pings), and a close ends the stream.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut() {
            Conn::Socketio(ws) => loop {
                return Poll::Ready(match ready!(ws.poll_next_unpin(cx)) {
                    Some(Ok(Message::Text(t))) => Some(Ok(Text::Frame(t))),
                    Some(Ok(Message::Close(_))) | None => None,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => Some(Err(e.into())),
                });
            },
            Conn::Switchboard(c) => c.poll_next_unpin(cx).map(|o| o.map(|l| Ok(Text::Line(l)))),
        }
    }
}

impl Sink<String> for Conn {
    type Error = ConnError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        match self.get_mut() {
            Conn::Socketio(ws) => ws.poll_ready_unpin(cx).map_err(Into::into),
            Conn::Switchboard(c) => {
                Sink::<String>::poll_ready(Pin::new(&mut **c), cx).map_err(Into::into)
            }
        }
    }

    fn start_send(self: Pin<&mut Self>, item: String) -> Result<(), ConnError> {
        match self.get_mut() {
            Conn::Socketio(ws) => ws.start_send_unpin(Message::text(item)).map_err(Into::into),
            Conn::Switchboard(c) => Pin::new(&mut **c).start_send(item).map_err(Into::into),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        match self.get_mut() {
            Conn::Socketio(ws) => ws.poll_flush_unpin(cx).map_err(Into::into),
            Conn::Switchboard(c) => {
                Sink::<String>::poll_flush(Pin::new(&mut **c), cx).map_err(Into::into)
            }
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        match self.get_mut() {
            Conn::Socketio(ws) => ws.poll_close_unpin(cx).map_err(Into::into),
            Conn::Switchboard(c) => {
                Sink::<String>::poll_close(Pin::new(&mut **c), cx).map_err(Into::into)
            }
        }
    }
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connect (or the bind to the source address) failed.
    #[error("tcp connect to {server} from {from}: {error}")]
    Tcp {
        /// The server.
        server: SocketAddr,
        /// The source address.
        from: IpAddr,
        /// The cause.
        #[source]
        error: io::Error,
    },
    /// The Socket.IO WebSocket handshake failed.
    #[error("websocket handshake with {server}: {error}")]
    Handshake {
        /// The server.
        server: SocketAddr,
        /// The cause.
        #[source]
        error: Box<tungstenite::Error>,
    },
    /// The Switchboard handshake failed (a 503 at the server's cap lands here).
    #[error(transparent)]
    Switchboard(#[from] switchboard_client::ConnectError),
    /// The server refused the login or the namespace connect.
    #[error("login of {user} refused: {reply}")]
    Refused {
        /// The user.
        user: String,
        /// What the server said.
        reply: String,
    },
    /// The connection closed or broke during the login.
    #[error("login of {user}: connection closed")]
    Closed {
        /// The user.
        user: String,
    },
    /// No answer in time.
    #[error("login of {user}: no answer within {limit:?}")]
    Timeout {
        /// The user.
        user: String,
        /// How long the tool waited.
        limit: Duration,
    },
}

/// Opens connections of one system from a set of source addresses.
#[derive(Debug, Clone)]
pub struct Dialer {
    system: System,
    transport: Transport,
    sources: Vec<IpAddr>,
    config: WebSocketConfig,
    timeout: Duration,
}

impl Dialer {
    /// A dialer for `system` that binds connection `i` to
    /// `sources[i % sources.len()]` (127.0.0.1 when empty) and, over
    /// WebSocket, reads with a `read_buffer` byte buffer. The write buffer
    /// grows on demand (frames are fed in batches and flushed once), so an
    /// idle client costs little.
    pub fn new(
        system: System,
        transport: Transport,
        sources: Vec<IpAddr>,
        read_buffer: usize,
    ) -> Self {
        let sources = if sources.is_empty() {
            vec![IpAddr::from([127, 0, 0, 1])]
        } else {
            sources
        };
        Dialer {
            system,
            transport,
            sources,
            config: WebSocketConfig::default()
                .read_buffer_size(read_buffer)
                .write_buffer_size(64 * 1024),
            timeout: Duration::from_secs(20),
        }
    }

    /// The system spoken.
    pub fn system(&self) -> System {
        self.system
    }

    /// Opens connection number `index` to `server` and logs in as `user`.
    pub async fn open(
        &self,
        server: SocketAddr,
        index: usize,
        user: &str,
    ) -> Result<Conn, ConnectError> {
        let from = self.sources[index % self.sources.len()];
        let tcp = connect_from(from, server)
            .await
            .map_err(|error| ConnectError::Tcp {
                server,
                from,
                error,
            })?;
        let mut conn = match (self.system, self.transport) {
            (System::Switchboard | System::SwitchboardTell, transport) => {
                let host = server.to_string();
                let endpoint = match transport {
                    Transport::Ws => Endpoint::Ws {
                        host,
                        path: self.system.path(user),
                    },
                    Transport::Tcp => Endpoint::Tcp { host },
                };
                let conn =
                    switchboard_client::Conn::over(Box::new(tcp), &endpoint, false, self.config)
                        .await?;
                Conn::Switchboard(Box::new(conn))
            }
            (System::Socketio, _) => {
                let url = format!("ws://{server}{}", self.system.path(user));
                let (ws, _) =
                    tokio_tungstenite::client_async_with_config(url, tcp, Some(self.config))
                        .await
                        .map_err(|error| ConnectError::Handshake {
                            server,
                            error: Box::new(error),
                        })?;
                Conn::Socketio(Box::new(ws))
            }
        };
        match tokio::time::timeout(self.timeout, login(self.system, &mut conn, user)).await {
            Ok(Ok(())) => Ok(conn),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ConnectError::Timeout {
                user: user.to_owned(),
                limit: self.timeout,
            }),
        }
    }
}

async fn connect_from(from: IpAddr, server: SocketAddr) -> io::Result<TcpStream> {
    let socket = match server {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if from.is_ipv4() == server.is_ipv4() {
        socket.bind(SocketAddr::new(from, 0))?;
    }
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Switchboard: `{"op":"login"}` until `{"type":"login"}`. Socket.IO: wait
/// for the open packet, send `40`, wait for `40{...}`.
async fn login(system: System, conn: &mut Conn, user: &str) -> Result<(), ConnectError> {
    let closed = || ConnectError::Closed {
        user: user.to_owned(),
    };
    if system.is_switchboard() {
        conn.send(proto::login_frame(user))
            .await
            .map_err(|_| closed())?;
    }
    loop {
        let frame = match conn.next().await {
            Some(Ok(t)) => t,
            Some(Err(_)) | None => return Err(closed()),
        };
        match proto::parse(system, &frame) {
            Incoming::LoggedIn | Incoming::SioConnected => return Ok(()),
            Incoming::SioOpen => conn
                .send(proto::SIO_CONNECT.to_owned())
                .await
                .map_err(|_| closed())?,
            Incoming::SioPing => conn
                .send(proto::SIO_PONG.to_owned())
                .await
                .map_err(|_| closed())?,
            Incoming::Error { message, .. } => {
                return Err(ConnectError::Refused {
                    user: user.to_owned(),
                    reply: message,
                });
            }
            _ => {}
        }
    }
}
