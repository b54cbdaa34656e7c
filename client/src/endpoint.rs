//! Where a client connects: a WebSocket URL (`ws://host:port/ws`) or a
//! line-protocol address (`tcp://host:port`, the telnet port).

use std::fmt;
use std::net::SocketAddr;

/// One server address, in one of the two transports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A WebSocket: `host:port` and the request path (with any query).
    Ws {
        /// `host:port`.
        host: String,
        /// The path, `/ws` for a Switchboard server.
        path: String,
    },
    /// The line protocol: one command per line over plain TCP.
    Tcp {
        /// `host:port`.
        host: String,
    },
}

/// An endpoint that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an endpoint (ws://host:port/path or tcp://host:port): {0:?}")]
pub struct BadEndpoint(pub String);

impl Endpoint {
    /// `ws://{addr}/ws`.
    pub fn ws(addr: SocketAddr) -> Endpoint {
        Endpoint::Ws {
            host: addr.to_string(),
            path: "/ws".to_owned(),
        }
    }

    /// `tcp://{addr}`.
    pub fn tcp(addr: SocketAddr) -> Endpoint {
        Endpoint::Tcp {
            host: addr.to_string(),
        }
    }

    /// The same transport (and path) on another server's `host:port`s, as
    /// a full server names them: `ws` for a WebSocket, `tcp` for lines.
    pub fn moved_to(&self, ws: &str, tcp: &str) -> Endpoint {
        match self {
            Endpoint::Ws { path, .. } => Endpoint::Ws {
                host: ws.to_owned(),
                path: path.clone(),
            },
            Endpoint::Tcp { .. } => Endpoint::Tcp {
                host: tcp.to_owned(),
            },
        }
    }

    /// `host:port`.
    pub fn host(&self) -> &str {
        match self {
            Endpoint::Ws { host, .. } | Endpoint::Tcp { host } => host,
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = BadEndpoint;

    fn from_str(s: &str) -> Result<Endpoint, BadEndpoint> {
        let bad = || BadEndpoint(s.to_owned());
        if let Some(rest) = s.strip_prefix("ws://") {
            let (host, path) = match rest.find(['/', '?']) {
                Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_owned()),
                Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
                None => (rest, "/ws".to_owned()),
            };
            if host.is_empty() {
                return Err(bad());
            }
            Ok(Endpoint::Ws {
                host: host.to_owned(),
                path,
            })
        } else if let Some(host) = s.strip_prefix("tcp://") {
            let host = host.trim_end_matches('/');
            if host.is_empty() || host.contains('/') {
                return Err(bad());
            }
            Ok(Endpoint::Tcp {
                host: host.to_owned(),
            })
        } else {
            Err(bad())
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Ws { host, path } => write!(f, "ws://{host}{path}"),
            Endpoint::Tcp { host } => write!(f, "tcp://{host}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_print() {
        let e: Endpoint = "ws://127.0.0.1:9001/ws?user=al".parse().expect("ws");
        assert_eq!(e.to_string(), "ws://127.0.0.1:9001/ws?user=al");
        let e: Endpoint = "ws://localhost:9001".parse().expect("ws");
        assert_eq!(e.to_string(), "ws://localhost:9001/ws");
        let e: Endpoint = "tcp://127.0.0.1:9101".parse().expect("tcp");
        assert_eq!(e.host(), "127.0.0.1:9101");
        assert!("http://x".parse::<Endpoint>().is_err());
        assert!("ws://".parse::<Endpoint>().is_err());
        assert!("tcp://a/b".parse::<Endpoint>().is_err());
    }

    #[test]
    fn a_full_server_moves_the_same_transport() {
        let ws: Endpoint = "ws://a:1/ws".parse().expect("ws");
        assert_eq!(ws.moved_to("b:2", "b:3").to_string(), "ws://b:2/ws");
        let tcp: Endpoint = "tcp://a:1".parse().expect("tcp");
        assert_eq!(tcp.moved_to("b:2", "b:3").to_string(), "tcp://b:3");
    }
}
