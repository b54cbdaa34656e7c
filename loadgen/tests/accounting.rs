//! The tool's account of every message, checked against a small stand-in
//! server that misbehaves on purpose: it skips some live pushes (which the
//! tool must recover with `sync`) and, in the second case, also forgets some
//! acknowledged messages (which the tool must report as lost). The real
//! servers are driven by `tests/tests/load_smoke.rs` in the workspace; this
//! stand-in only exists to make the failure paths happen on demand.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use loadgen::target::{ServerSpec, Target, loopback_sources};
use loadgen::{System, scenario};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// How the stand-in misbehaves, by recipient sequence number.
#[derive(Clone, Copy)]
struct Faults {
    /// Every n-th message is stored but not pushed live.
    skip_push: u64,
    /// Every n-th message is acknowledged but neither pushed nor stored.
    forget: u64,
}

#[derive(Default)]
struct Inbox {
    next: u64,
    stored: Vec<(u64, String)>,
    live: Option<mpsc::Sender<String>>,
}

type Users = Arc<Mutex<HashMap<String, Inbox>>>;

async fn stand_in(faults: Faults) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let users = Users::default();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(session(tcp, users.clone(), faults));
        }
    });
    addr
}

fn msg(seq: u64, to: &str, text: &str) -> String {
    json!({"type": "msg", "seq": seq, "from": "x", "to": to, "id": "m", "ts": 0, "text": text})
        .to_string()
}

async fn session(tcp: tokio::net::TcpStream, users: Users, faults: Faults) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    // Bounded like every queue; a smoke run never has 4096 pushes in flight.
    let (push_tx, mut push_rx) = mpsc::channel::<String>(4096);
    let mut me = String::new();
    loop {
        let frame = tokio::select! {
            f = ws.next() => f,
            Some(p) = push_rx.recv() => {
                if ws.send(Message::text(p)).await.is_err() { return; }
                continue;
            }
        };
        let Some(Ok(Message::Text(t))) = frame else {
            return;
        };
        let v: Value = serde_json::from_str(&t).expect("json command");
        let mut replies = Vec::new();
        match v["op"].as_str() {
            Some("login") => {
                me = v["user"].as_str().expect("user").to_owned();
                users
                    .lock()
                    .expect("lock")
                    .entry(me.clone())
                    .or_default()
                    .live = Some(push_tx.clone());
                replies.push(json!({"type": "login", "user": me, "session": "01"}).to_string());
            }
            Some("send") => {
                let to = v["to"].as_str().expect("to").to_owned();
                let text = v["text"].as_str().expect("text").to_owned();
                let mut all = users.lock().expect("lock");
                let inbox = all.entry(to.clone()).or_default();
                inbox.next += 1;
                let seq = inbox.next;
                let forgotten = seq.is_multiple_of(faults.forget);
                if !forgotten {
                    inbox.stored.push((seq, text.clone()));
                    if !seq.is_multiple_of(faults.skip_push)
                        && let Some(live) = &inbox.live
                    {
                        let _ = live.try_send(msg(seq, &to, &text));
                    }
                }
                replies.push(
                    json!({"type": "sent", "cid": v["cid"], "id": "m", "seq": seq}).to_string(),
                );
            }
            Some("sync") => {
                let after = v["after"].as_u64().unwrap_or(0);
                let all = users.lock().expect("lock");
                let inbox = all.get(&me);
                let mut last = after;
                for (seq, text) in inbox.map(|i| i.stored.as_slice()).unwrap_or(&[]) {
                    if *seq > after {
                        replies.push(msg(*seq, &me, text));
                        last = *seq;
                    }
                }
                replies.push(json!({"type": "synced", "last": last, "epoch": "e"}).to_string());
            }
            _ => replies
                .push(json!({"type": "error", "code": "unknown", "message": "?"}).to_string()),
        }
        for r in replies {
            if ws.send(Message::text(r)).await.is_err() {
                return;
            }
        }
    }
}

fn target(addr: SocketAddr) -> Target {
    let spec = ServerSpec { addr, pid: None };
    Target::new(
        System::Switchboard,
        vec![spec.clone(), spec],
        loopback_sources(2),
        Vec::new(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_missed_live_are_recovered_by_sync() {
    let addr = stand_in(Faults {
        skip_push: 5,
        forget: u64::MAX,
    })
    .await;
    let r = scenario::smoke(&target(addr), 200, 4).await.expect("run");
    assert_eq!((r.sent, r.acked), (200, 200));
    assert_eq!(
        r.recovered, 40,
        "every 5th of each receiver's 50: {}",
        r.verdict
    );
    assert_eq!(r.delivered, 160);
    assert_eq!(r.lost, 0);
    assert_eq!(
        r.latency.count, 200,
        "recovered messages count in the latency too"
    );
    // They arrived only after the drain gave up on them: a tail that fails
    // the latency bound, not a hidden one.
    assert!(r.latency.max_us >= 5_000_000, "{:?}", r.latency);
    assert!(!r.passed && r.verdict.contains("p99"), "{}", r.verdict);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_that_vanish_are_reported_lost() {
    let addr = stand_in(Faults {
        skip_push: u64::MAX,
        forget: 10,
    })
    .await;
    let r = scenario::smoke(&target(addr), 200, 4).await.expect("run");
    assert_eq!(r.acked, 200);
    assert_eq!(
        r.lost, 20,
        "every 10th of each receiver's 50: {}",
        r.verdict
    );
    assert_eq!(r.lost_acked, 20);
    assert_eq!(r.delivered + r.recovered + r.lost, 200);
    assert!(!r.passed && r.verdict.contains("20 lost"), "{}", r.verdict);
}
