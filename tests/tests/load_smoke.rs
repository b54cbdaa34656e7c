//! A smoke run of the load tool (issue 6): Redis, a relay and two message
//! servers in-process, a few hundred direct messages between users on
//! different servers through `loadgen`'s library entry point, over
//! WebSocket and then over the telnet port, and every message accounted
//! for; then the same with transient `TELL`s. Benchmarks are not timed assertions: this checks the tool and the
//! delivery path agree, not speed.

use std::net::SocketAddr;

use loadgen::conn::Transport;
use loadgen::target::{ServerSpec, Target, loopback_sources};
use loadgen::{System, scenario};
use switchboard_tests::Cluster;

fn target(system: System, addrs: impl Iterator<Item = SocketAddr>, transport: Transport) -> Target {
    let servers = addrs.map(|addr| ServerSpec { addr, pid: None }).collect();
    let mut t = Target::new(system, servers, loopback_sources(2), Vec::new());
    t.transport = transport;
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_tool_accounts_for_every_message() {
    let c = Cluster::start(2).await;
    let ws = target(
        System::Switchboard,
        c.servers.iter().map(|s| s.ws),
        Transport::Ws,
    );
    let tcp = target(
        System::Switchboard,
        c.servers.iter().map(|s| s.tcp),
        Transport::Tcp,
    );

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_tool_accounts_for_every_tell() {
    let c = Cluster::start(2).await;
    let ws = target(
        System::SwitchboardTell,
        c.servers.iter().map(|s| s.ws),
        Transport::Ws,
    );
    let r = scenario::smoke(&ws, 400, 4).await.expect("smoke run");
    assert_eq!(r.sent, 400, "the whole schedule went out: {}", r.verdict);
    assert_eq!(r.acked, 0, "a tell is never acknowledged");
    assert_eq!(r.errors, 0, "first error: {:?}", r.first_error);
    // Nothing failed, so nothing was lost, though nothing could be replayed.
    assert_eq!(r.lost, 0, "{}", r.verdict);
    assert_eq!(r.recovered, 0);
    assert_eq!(r.delivered, 400, "{}", r.verdict);
    assert_eq!(r.duplicates, 0);
    assert_eq!(r.broken, 0);
}

/// TELL from plain clients (text protocol, telnet and WebSocket): a few
/// hundred transient messages from users on one server to users on the
/// other; with nothing failing, every one arrives, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tell_is_accounted_for_when_nothing_fails() {
    use switchboard_tests::{LineClient, TcpClient, WsClient};

    const PAIRS: usize = 4;
    const TELLS: usize = 100;
    let c = Cluster::start(2).await;
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for p in 0..PAIRS {
        receivers.push(TcpClient::login(c.server("b").tcp, &format!("rcv{p}")).await);
        senders.push(WsClient::login(c.server("a").ws, &format!("snd{p}")).await);
    }
    for n in 0..TELLS {
        for (p, s) in senders.iter_mut().enumerate() {
            s.send(&format!("TELL rcv{p} tick {n}")).await;
        }
    }
    // No answer on success: each sender's next line is its PONG.
    for s in &mut senders {
        s.send("PING").await;
        assert_eq!(s.recv().await, "PONG", "a TELL was answered or refused");
    }
    for (p, r) in receivers.iter_mut().enumerate() {
        for n in 0..TELLS {
            let line = r.expect_prefix("MSG ").await;
            let prefix = format!("MSG - snd{p} rcv{p} ");
            assert!(line.starts_with(&prefix), "{line}");
            assert!(
                line.ends_with(&format!(" tick {n}")),
                "tell {n} of snd{p} out of order or lost: {line}"
            );
        }
        // And nothing more (no duplicates).
        r.send("PING").await;
        assert_eq!(r.recv().await, "PONG", "rcv{p} got more than {TELLS}");
    }
}
