//! A smoke run of the load tool (issue 6): Redis, a relay and two message
//! servers in-process, a few hundred direct messages between users on
//! different servers through `loadgen`'s library entry point, over
//! WebSocket and then over the telnet port, and every message accounted
//! for. Benchmarks are not timed assertions: this checks the tool and the
//! delivery path agree, not speed.

use std::net::SocketAddr;

use loadgen::conn::Transport;
use loadgen::target::{ServerSpec, Target, loopback_sources};
use loadgen::{System, scenario};
use switchboard_tests::Cluster;

fn target(addrs: impl Iterator<Item = SocketAddr>, transport: Transport) -> Target {
    let servers = addrs.map(|addr| ServerSpec { addr, pid: None }).collect();
    let mut t = Target::new(
        System::Switchboard,
        servers,
        loopback_sources(2),
        Vec::new(),
    );
    t.transport = transport;
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_tool_accounts_for_every_message() {
    let c = Cluster::start(2).await;
    let ws = target(c.servers.iter().map(|s| s.ws), Transport::Ws);
    let tcp = target(c.servers.iter().map(|s| s.tcp), Transport::Tcp);

    for (name, target) in [("websocket", ws), ("telnet port", tcp)] {
        let r = scenario::smoke(&target, 400, 4).await.expect("smoke run");

        assert_eq!(r.servers, 2);
        assert_eq!(
            r.sent, 400,
            "{name}: the whole schedule went out: {}",
            r.verdict
        );
        assert_eq!(
            r.acked, 400,
            "{name}: every send acknowledged as stored: {}",
            r.verdict
        );
        assert_eq!(r.errors, 0, "{name}: first error: {:?}", r.first_error);
        assert_eq!(r.lost, 0, "{name}: {}", r.verdict);
        assert_eq!(r.delivered + r.recovered, 400, "{name}: {}", r.verdict);
        assert_eq!(r.duplicates, 0, "{name}");
        assert_eq!(r.broken, 0, "{name}");
        assert_eq!(r.latency.count, 400, "{name}: one latency per message");
    }
}
