//! The chaos test (issue 4): 2,100 direct messages between users on three
//! real server processes while a server and then the relay are killed with
//! `kill -9` and restarted mid-stream. Clients behave as a real client
//! should: JSON with a `cid` per message, resend what was not acknowledged
//! after reconnecting, `SYNC` on reconnect and on a `seq` gap, de-duplicate
//! by `seq`. At the end every acknowledged message must be on every device
//! of its recipient and of its sender exactly once, in order.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_tests::RedisServer;
use switchboard_tests::procs::{RelayProc, ServerProc};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

const PER_DEVICE: usize = 300;
const SEND_EVERY: Duration = Duration::from_millis(40);
const WINDOW: usize = 16;

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Msg {
    id: String,
    from: String,
    to: String,
    text: String,
}

#[derive(Default, Debug)]
struct Tally {
    acked: HashMap<String, (String, u64, String)>, // cid -> (msg id, seq in recipient's inbox, recipient)
    history: BTreeMap<u64, Msg>,
    pushed: usize,
    duplicates: usize,
    resent: usize,
    reconnects: usize,
}

struct Device {
    user: String,
    device: String,
    servers: Vec<SocketAddr>,
    peers: Vec<String>,
}

fn contiguous(history: &BTreeMap<u64, Msg>) -> u64 {
    let mut last = 0;
    for seq in history.keys() {
        if *seq == last + 1 {
            last = *seq;
        } else {
            break;
        }
    }
    last
}

/// One device's whole run. Returns its tally after a final gap-filling SYNC.
async fn run_device(d: Device, stop: Arc<AtomicBool>) -> Tally {
    let mut tally = Tally::default();
    let plan: Vec<(String, String, String)> = (0..PER_DEVICE)
        .map(|n| {
            let to = d.peers[n % d.peers.len()].clone();
            (
                format!("{}-{}-{n}", d.user, d.device),
                to,
                format!("{}/{} says {n}", d.user, d.device),
            )
        })
        .collect();
    let mut next = 0usize; // next never-sent message
    let mut pref = 0usize;
    let deadline = Instant::now() + Duration::from_secs(120);
    'connection: loop {
        assert!(
            Instant::now() < deadline,
            "{}/{} never finished",
            d.user,
            d.device
        );
        let addr = d.servers[pref % d.servers.len()];
        let Ok(Ok((mut ws, _))) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
        )
        .await
        else {
            pref += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let login = json!({"op":"login","user":d.user,"device":d.device}).to_string();
        if ws.send(Message::text(login)).await.is_err() {
            continue;
        }
        // Resend everything not acknowledged, in order (same cid: stored once).
        let mut in_flight: Vec<usize> = Vec::new();
        let unacked: Vec<usize> = (0..next)
            .filter(|i| !tally.acked.contains_key(&plan[*i].0))
            .collect();
        let sync = json!({"op":"sync","after":contiguous(&tally.history)}).to_string();
        if ws.send(Message::text(sync)).await.is_err() {
            continue;
        }
        for i in unacked {
            let (cid, to, text) = &plan[i];
            tally.resent += 1;
            let m = json!({"op":"send","to":to,"text":text,"cid":cid}).to_string();
            if ws.send(Message::text(m)).await.is_err() {
                tally.reconnects += 1;
                continue 'connection;
            }
            in_flight.push(i);
        }
        let mut tick = tokio::time::interval(SEND_EVERY);
        let mut final_sync_sent = false;
        loop {
            let all_acked = next == plan.len() && in_flight.is_empty();
            if all_acked && stop.load(Ordering::SeqCst) && !final_sync_sent {
                let sync = json!({"op":"sync","after":contiguous(&tally.history),"cid":"final"})
                    .to_string();
                if ws.send(Message::text(sync)).await.is_err() {
                    tally.reconnects += 1;
                    continue 'connection;
                }
                final_sync_sent = true;
            }
            tokio::select! {
                _ = tick.tick() => {
                    if next < plan.len() && in_flight.len() < WINDOW {
                        let (cid, to, text) = &plan[next];
                        let m = json!({"op":"send","to":to,"text":text,"cid":cid}).to_string();
                        if ws.send(Message::text(m)).await.is_err() {
                            tally.reconnects += 1;
                            next += 1;
                            continue 'connection;
                        }
                        in_flight.push(next);
                        next += 1;
                    }
                }
                frame = tokio::time::timeout(Duration::from_secs(3), ws.next()) => {
                    let text = match frame {
                        Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
                        Ok(Some(Ok(_))) => continue,
                        Err(_) if !in_flight.is_empty() || final_sync_sent => {
                            // Stalled (e.g. storage errors): reconnect and resend.
                            tally.reconnects += 1;
                            continue 'connection;
                        }
                        Err(_) => continue,
                        Ok(_) => {
                            tally.reconnects += 1;
                            pref += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue 'connection;
                        }
                    };
                    let v: Value = serde_json::from_str(&text).expect("server speaks JSON");
                    match v["type"].as_str() {
                        Some("msg") => {
                            let seq = v["seq"].as_u64().expect("seq");
                            let msg = Msg {
                                id: v["id"].as_str().expect("id").to_owned(),
                                from: v["from"].as_str().expect("from").to_owned(),
                                to: v["to"].as_str().expect("to").to_owned(),
                                text: v["text"].as_str().expect("text").to_owned(),
                            };
                            tally.pushed += 1;
                            match tally.history.insert(seq, msg.clone()) {
                                Some(prev) => {
                                    assert_eq!(prev, msg, "seq {seq} of {} has two contents", d.user);
                                    tally.duplicates += 1;
                                }
                                None => {
                                    // A hole below a new seq: ask for what is missing.
                                    let have = contiguous(&tally.history);
                                    if seq > have + 1 {
                                        let sync = json!({"op":"sync","after":have}).to_string();
                                        let _ = ws.send(Message::text(sync)).await;
                                    }
                                }
                            }
                        }
                        Some("sent") => {
                            let cid = v["cid"].as_str().expect("cid").to_owned();
                            let i = plan.iter().position(|p| p.0 == cid).expect("own cid");
                            in_flight.retain(|x| *x != i);
                            let entry = (v["id"].as_str().expect("id").to_owned(), v["seq"].as_u64().expect("seq"), plan[i].1.clone());
                            if let Some(prev) = tally.acked.insert(cid, entry.clone()) {
                                assert_eq!(prev, entry, "a retried cid got another answer");
                            }
                        }
                        Some("synced") => {
                            if v["cid"] == "final" {
                                if contiguous(&tally.history) == tally.history.keys().last().copied().unwrap_or(0) {
                                    return tally;
                                }
                                final_sync_sent = false;
                            }
                        }
                        Some("login") | Some("gap") => {}
                        Some("error") => {
                            // unavailable while Redis or a link recovers: resend later.
                            if v["code"] != "unavailable" {
                                panic!("unexpected error: {v}");
                            }
                            if let Some(cid) = v["cid"].as_str()
                                && let Some(i) = plan.iter().position(|p| p.0 == cid)
                            {
                                in_flight.retain(|x| *x != i);
                                let (cid, to, text) = &plan[i];
                                tally.resent += 1;
                                let m = json!({"op":"send","to":to,"text":text,"cid":cid}).to_string();
                                let _ = ws.send(Message::text(m)).await;
                                in_flight.push(i);
                            }
                        }
                        other => panic!("unexpected reply {other:?}: {v}"),
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_message_is_lost_while_servers_and_the_relay_die() {
    let redis = RedisServer::start();
    let link = free_addr();
    let mut relay = RelayProc::start(&redis.url(), link, &[]);
    let (b_ws, b_tcp) = (free_addr(), free_addr());
    let a = ServerProc::start("a", &redis.url(), link, &[]);
    let b_args = [
        "--ws".to_owned(),
        b_ws.to_string(),
        "--tcp".to_owned(),
        b_tcp.to_string(),
    ];
    let b_extra: Vec<&str> = b_args.iter().map(String::as_str).collect();
    let mut b = ServerProc::start("b", &redis.url(), link, &b_extra);
    let c = ServerProc::start("c", &redis.url(), link, &[]);
    for s in [&a, &b, &c] {
        s.wait_linked(1);
    }
    let placement = [
        ("u0", "phone", a.ws),
        ("u0", "laptop", b.ws),
        ("u1", "main", b.ws),
        ("u2", "main", c.ws),
        ("u3", "main", a.ws),
        ("u4", "main", b.ws),
        ("u5", "main", c.ws),
    ];
    let users: Vec<String> = (0..6).map(|i| format!("u{i}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (user, device, home) in placement {
        let mut servers = vec![home];
        servers.extend([a.ws, b.ws, c.ws].into_iter().filter(|s| *s != home));
        let d = Device {
            user: user.to_owned(),
            device: device.to_owned(),
            servers,
            peers: users.iter().filter(|u| *u != user).cloned().collect(),
        };
        tasks.push(tokio::spawn(run_device(d, Arc::clone(&stop))));
    }
    let faults = Arc::new(Mutex::new(Vec::new()));
    // Mid-stream: kill -9 server b, bring it back; then the relay.
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.proc.kill9();
    faults.lock().await.push("kill -9 server b");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    b = ServerProc::start("b", &redis.url(), link, &b_extra);
    tokio::time::sleep(Duration::from_secs(3)).await;
    relay.proc.kill9();
    faults.lock().await.push("kill -9 relay");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    relay = RelayProc::start(&redis.url(), link, &[]);
    let _keep = (&relay, &b);
    // Sending takes PER_DEVICE * SEND_EVERY; then everyone reconciles.
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::SeqCst);

    let mut tallies = Vec::new();
    for (t, (user, device, _)) in tasks.into_iter().zip(placement) {
        let tally = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("device finished in time")
            .expect("device task");
        tallies.push((user, device, tally));
    }

    // Every acknowledged message: once in the recipient's inbox, and once in
    // the sender's, on every device of each, with dense seqs.
    let mut acknowledged = 0;
    let mut by_user: HashMap<&str, Vec<&Tally>> = HashMap::new();
    for (user, _, t) in &tallies {
        by_user.entry(user).or_default().push(t);
    }
    for (user, device, t) in &tallies {
        let seqs: Vec<u64> = t.history.keys().copied().collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "{user}/{device} has a gap"
        );
        let mut ids = std::collections::HashSet::new();
        for m in t.history.values() {
            assert!(ids.insert(&m.id), "{user}/{device} holds {} twice", m.id);
        }
    }
    for (sender, _, t) in &tallies {
        for (cid, (id, seq, to)) in &t.acked {
            acknowledged += 1;
            for dev in &by_user[to.as_str()] {
                let m = dev
                    .history
                    .get(seq)
                    .unwrap_or_else(|| panic!("{cid} (seq {seq}) missing for {to}"));
                assert_eq!(&m.id, id, "{to}'s seq {seq} is not {cid}");
            }
            for dev in &by_user[sender] {
                assert_eq!(
                    dev.history.values().filter(|m| &m.id == id).count(),
                    1,
                    "{sender} lacks its own {cid}"
                );
            }
        }
    }
    // Per conversation (one sending device to one recipient), messages sit
    // in the order they were sent.
    for (user, device, t) in &tallies {
        let mut last_n: HashMap<(&str, &str), usize> = HashMap::new();
        for m in t.history.values() {
            let (origin, n) = m.text.split_once(" says ").expect("test text");
            let n: usize = n.parse().expect("numbered text");
            if let Some(prev) = last_n.insert((origin, m.to.as_str()), n) {
                assert!(
                    n > prev,
                    "{user}/{device}: {origin} -> {} out of order ({prev} then {n})",
                    m.to
                );
            }
        }
    }
    let sent = tallies.len() * PER_DEVICE;
    let pushed: usize = tallies.iter().map(|t| t.2.pushed).sum();
    let duplicates: usize = tallies.iter().map(|t| t.2.duplicates).sum();
    let resent: usize = tallies.iter().map(|t| t.2.resent).sum();
    let reconnects: usize = tallies.iter().map(|t| t.2.reconnects).sum();
    println!(
        "chaos: faults {:?}; sent {sent}, acknowledged {acknowledged}, pushes received {pushed}, \
         duplicates removed {duplicates}, resent after failures {resent}, reconnects {reconnects}, lost 0",
        faults.lock().await
    );
    assert_eq!(
        acknowledged, sent,
        "every message was eventually acknowledged"
    );
}
