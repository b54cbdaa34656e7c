//! A smoke run of the load tool (issue 6): Redis, a relay and two message
//! servers in-process, a few hundred direct messages between users on
//! different servers through `loadgen`'s library entry point, and every
//! message accounted for. Benchmarks are not timed assertions: this checks
//! the tool and the delivery path agree, not speed.

use loadgen::target::{ServerSpec, Target, loopback_sources};
use loadgen::{System, scenario};
use switchboard_tests::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_tool_accounts_for_every_message() {
    let c = Cluster::start(2).await;
    let servers = c
        .servers
        .iter()
        .map(|s| ServerSpec {
            addr: s.ws,
            pid: None,
        })
        .collect();
    let target = Target::new(
        System::Switchboard,
        servers,
        loopback_sources(2),
        Vec::new(),
    );

    let r = scenario::smoke(&target, 400, 4).await.expect("smoke run");

    assert_eq!(r.servers, 2);
    assert_eq!(r.sent, 400, "the whole schedule went out: {}", r.verdict);
    assert_eq!(
        r.acked, 400,
        "every send was acknowledged as stored: {}",
        r.verdict
    );
    assert_eq!(r.errors, 0, "first error: {:?}", r.first_error);
    assert_eq!(r.lost, 0, "{}", r.verdict);
    assert_eq!(r.delivered + r.recovered, 400, "{}", r.verdict);
    assert_eq!(r.duplicates, 0);
    assert_eq!(r.broken, 0);
    assert_eq!(r.latency.count, 400, "one latency per message");
}
