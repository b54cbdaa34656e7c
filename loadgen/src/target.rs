//! What a run drives: one system, its servers, the source addresses to
//! connect from, and the processes whose CPU and memory are measured.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::conn::Transport;
use crate::procs::{Proc, Watch};
use crate::proto::System;

/// One server to connect to: its address and, when known, its process id
/// (to measure its CPU and its memory per connection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSpec {
    /// WebSocket address (`host:port`).
    pub addr: SocketAddr,
    /// Process id, if the tool should read `/proc` for it.
    pub pid: Option<u32>,
}

impl FromStr for ServerSpec {
    type Err = String;

    /// `ADDR` or `ADDR@PID`, e.g. `127.0.0.1:9001@4242`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, pid) = match s.split_once('@') {
            Some((a, p)) => (a, Some(p.parse().map_err(|_| format!("bad pid in {s:?}"))?)),
            None => (s, None),
        };
        let addr = addr
            .trim_start_matches("ws://")
            .trim_end_matches('/')
            .parse()
            .map_err(|_| format!("bad address in {s:?} (want HOST:PORT[@PID])"))?;
        Ok(ServerSpec { addr, pid })
    }
}

/// The system under test, as the tool sees it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Which protocol to speak.
    pub system: System,
    /// WebSocket, or (Switchboard only) lines over the telnet port.
    pub transport: Transport,
    /// Servers, in the order connections are spread over them.
    pub servers: Vec<ServerSpec>,
    /// Source addresses; connection `i` binds `sources[i % len]`.
    pub sources: Vec<IpAddr>,
    /// Every process of the system (servers, relay, Redis, Node...).
    pub watch: Watch,
}

impl Target {
    /// A target whose watched processes are the servers with a pid (named
    /// `server-0`, `server-1`, ...) followed by `others` (relay, Redis).
    pub fn new(
        system: System,
        servers: Vec<ServerSpec>,
        sources: Vec<IpAddr>,
        others: Vec<Proc>,
    ) -> Self {
        let mut procs: Vec<Proc> = servers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.pid.map(|pid| Proc {
                    name: server_name(i),
                    pid,
                })
            })
            .collect();
        procs.extend(others);
        Target {
            system,
            transport: Transport::Ws,
            servers,
            sources,
            watch: Watch::new(procs),
        }
    }

    /// The server addresses.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.servers.iter().map(|s| s.addr).collect()
    }
}

/// The process name of server `i` in reports.
pub fn server_name(i: usize) -> String {
    format!("server-{i}")
}

/// `count` loopback source addresses: 127.0.0.1, 127.0.0.2, ...
pub fn loopback_sources(count: u8) -> Vec<IpAddr> {
    (1..=count.max(1))
        .map(|i| IpAddr::from([127, 0, 0, i]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_specs_parse_with_and_without_pid() {
        let s: ServerSpec = "127.0.0.1:9001@42".parse().expect("parses");
        assert_eq!(s.pid, Some(42));
        let s: ServerSpec = "ws://127.0.0.1:9001/".parse().expect("parses");
        assert_eq!(s.addr.port(), 9001);
        assert_eq!(s.pid, None);
        assert!("nonsense".parse::<ServerSpec>().is_err());
    }

    #[test]
    fn servers_with_pids_are_watched_first() {
        let t = Target::new(
            System::Switchboard,
            vec![
                "127.0.0.1:1@10".parse().expect("parses"),
                "127.0.0.1:2".parse().expect("parses"),
            ],
            loopback_sources(3),
            vec!["redis=11".parse().expect("parses")],
        );
        let names: Vec<_> = t.watch.procs().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["server-0", "redis"]);
        assert_eq!(t.sources.len(), 3);
    }
}
