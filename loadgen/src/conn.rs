//! Opening one client connection: a TCP socket bound to one of several
//! 127.0.0.x source addresses (one address pair has only ~28,000 ports, and
//! spreading sources keeps tens of thousands of connections possible), the
//! WebSocket handshake with small client buffers, and the login (Switchboard)
//! or namespace connect (Socket.IO).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::proto::{self, Incoming, System};

/// A logged-in client connection.
pub type Ws = WebSocketStream<TcpStream>;

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
    /// The WebSocket handshake failed (a 503 at the server's cap lands here).
    #[error("websocket handshake with {server}: {error}")]
    Handshake {
        /// The server.
        server: SocketAddr,
        /// The cause.
        #[source]
        error: Box<tungstenite::Error>,
    },
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
    sources: Vec<IpAddr>,
    config: WebSocketConfig,
    timeout: Duration,
}

impl Dialer {
    /// A dialer for `system` that binds connection `i` to
    /// `sources[i % sources.len()]` (127.0.0.1 when empty) and reads with a
    /// `read_buffer` byte buffer. The write buffer is left to grow on demand
    /// (frames are fed in batches and flushed once), so an idle client costs
    /// little.
    pub fn new(system: System, sources: Vec<IpAddr>, read_buffer: usize) -> Self {
        let sources = if sources.is_empty() {
            vec![IpAddr::from([127, 0, 0, 1])]
        } else {
            sources
        };
        Dialer {
            system,
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
    ) -> Result<Ws, ConnectError> {
        let from = self.sources[index % self.sources.len()];
        let tcp = connect_from(from, server)
            .await
            .map_err(|error| ConnectError::Tcp {
                server,
                from,
                error,
            })?;
        let url = format!("ws://{server}{}", self.system.path(user));
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(self.config))
            .await
            .map_err(|error| ConnectError::Handshake {
                server,
                error: Box::new(error),
            })?;
        match tokio::time::timeout(self.timeout, login(self.system, &mut ws, user)).await {
            Ok(Ok(())) => Ok(ws),
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
async fn login(system: System, ws: &mut Ws, user: &str) -> Result<(), ConnectError> {
    let closed = || ConnectError::Closed {
        user: user.to_owned(),
    };
    if system == System::Switchboard {
        ws.send(Message::text(proto::login_frame(user)))
            .await
            .map_err(|_| closed())?;
    }
    loop {
        let frame = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Err(closed()),
            Some(Ok(_)) => continue,
        };
        match proto::parse(system, &frame) {
            Incoming::LoggedIn | Incoming::SioConnected => return Ok(()),
            Incoming::SioOpen => ws
                .send(Message::text(proto::SIO_CONNECT))
                .await
                .map_err(|_| closed())?,
            Incoming::SioPing => ws
                .send(Message::text(proto::SIO_PONG))
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
