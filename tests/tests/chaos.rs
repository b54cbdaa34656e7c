//! The chaos test (issue 4): direct messages between users on three real
//! server processes while a server and then the relay are killed with
//! `kill -9` and restarted mid-stream. Clients behave as a real client
//! should: JSON with a `cid` per message, resend what was not acknowledged
//! after reconnecting, `SYNC` on reconnect and at the end, de-duplicate by
//! `seq`. (It does not `SYNC` on every `seq` gap: its own sends leave gaps
//! in its own inbox, and a SYNC there would hide a push that never came.) At the end every acknowledged message must be on
//! every device of its recipient and of its sender exactly once, in order;
//! and outside the fault windows every acknowledged message must have
//! reached every online device of its recipient by push (not by `SYNC`)
//! within [`PUSH_BOUND`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_tests::procs::{RelayProc, ServerProc};
use switchboard_tests::{RedisServer, eventually};
use tokio_tungstenite::tungstenite::Message;

/// Most messages one device may send; it stops earlier, when told to.
const PLAN: usize = 2000;
const SEND_EVERY: Duration = Duration::from_millis(40);
const WINDOW: usize = 16;
/// Time without faults before, between and after the faults.
const QUIET: Duration = Duration::from_secs(5);
/// A live push must arrive within this of the sender's `OK`.
const PUSH_BOUND: Duration = Duration::from_secs(3);
/// After a restarted process is linked again, time for clients to settle.
const SETTLE: Duration = Duration::from_secs(1);

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
    /// cid -> when it was first sent, and when it was first acknowledged.
    sent_at: HashMap<String, Instant>,
    acked_at: HashMap<String, Instant>,
    /// cids sent more than once (after a failure).
    resent_cids: HashSet<String>,
    history: BTreeMap<u64, Msg>,
    /// seq -> when it first arrived by push (no SYNC or login replay running).
    pushed_at: HashMap<u64, Instant>,
    /// When this device's sessions were live: from the end of the login's
    /// replay to the disconnect.
    live: Vec<(Instant, Instant)>,
    sent: usize,
    pushed: usize,
    duplicates: usize,
    resent: usize,
    reconnects: usize,
}

/// The end of a run, shared by every device: `stop` says stop sending;
/// once every device has all its sends acknowledged, each reconciles with
/// a final SYNC (so none reconciles before another's last message is stored).
#[derive(Default)]
struct Ending {
    stop: AtomicBool,
    done_sending: AtomicUsize,
    devices: usize,
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

/// One device's whole run: sends until `stop`, then reconciles. Returns its
/// tally after a final gap-filling SYNC.
async fn run_device(d: Device, end: Arc<Ending>) -> Tally {
    let mut tally = Tally::default();
    let plan: Vec<(String, String, String)> = (0..PLAN)
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
    let mut sync_n = 0u64;
    let mut counted_done = false;
    let deadline = Instant::now() + Duration::from_secs(180);
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
        // SYNCs (and the login replay) not yet answered: what arrives
        // meanwhile may be a replay, not a push.
        let mut syncing: HashSet<String> = HashSet::new();
        let mut live_since: Option<Instant> = None;
        macro_rules! disconnected {
            () => {{
                tally.reconnects += 1;
                if let Some(since) = live_since.take() {
                    tally.live.push((since, Instant::now()));
                }
                continue 'connection;
            }};
        }
        let login = json!({"op":"login","user":d.user,"device":d.device}).to_string();
        if ws.send(Message::text(login)).await.is_err() {
            continue;
        }
        // Resend everything not acknowledged, in order (same cid: stored once).
        let mut in_flight: Vec<usize> = Vec::new();
        let unacked: Vec<usize> = (0..next)
            .filter(|i| !tally.acked.contains_key(&plan[*i].0))
            .collect();
        sync_n += 1;
        let cid = format!("s{sync_n}");
        let sync = json!({"op":"sync","after":contiguous(&tally.history),"cid":cid}).to_string();
        syncing.insert(cid);
        if ws.send(Message::text(sync)).await.is_err() {
            continue;
        }
        for i in unacked {
            let (cid, to, text) = &plan[i];
            tally.resent += 1;
            tally.resent_cids.insert(cid.clone());
            let m = json!({"op":"send","to":to,"text":text,"cid":cid}).to_string();
            if ws.send(Message::text(m)).await.is_err() {
                disconnected!();
            }
            in_flight.push(i);
        }
        let mut tick = tokio::time::interval(SEND_EVERY);
        let mut final_sync_sent = false;
        loop {
            let stopping = end.stop.load(Ordering::SeqCst);
            if stopping && in_flight.is_empty() && !counted_done {
                counted_done = true;
                end.done_sending.fetch_add(1, Ordering::SeqCst);
            }
            let all_done = end.done_sending.load(Ordering::SeqCst) == end.devices;
            if all_done && !final_sync_sent {
                let sync = json!({"op":"sync","after":contiguous(&tally.history),"cid":"final"})
                    .to_string();
                if ws.send(Message::text(sync)).await.is_err() {
                    disconnected!();
                }
                syncing.insert("final".to_owned());
                final_sync_sent = true;
            }
            tokio::select! {
                _ = tick.tick() => {
                    if !stopping && next < plan.len() && in_flight.len() < WINDOW {
                        let (cid, to, text) = &plan[next];
                        let m = json!({"op":"send","to":to,"text":text,"cid":cid}).to_string();
                        tally.sent_at.insert(cid.clone(), Instant::now());
                        in_flight.push(next);
                        next += 1;
                        tally.sent = next;
                        if ws.send(Message::text(m)).await.is_err() {
                            disconnected!();
                        }
                    }
                }
                frame = tokio::time::timeout(Duration::from_secs(3), ws.next()) => {
                    let text = match frame {
                        Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
                        Ok(Some(Ok(_))) => continue,
                        Err(_) if !in_flight.is_empty() || !syncing.is_empty() => {
                            // Stalled (e.g. storage errors): reconnect and resend.
                            disconnected!();
                        }
                        Err(_) => continue,
                        Ok(_) => {
                            pref += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            disconnected!();
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
                            if syncing.is_empty() {
                                tally.pushed_at.entry(seq).or_insert_with(Instant::now);
                            }
                            if let Some(prev) = tally.history.insert(seq, msg.clone()) {
                                assert_eq!(prev, msg, "seq {seq} of {} has two contents", d.user);
                                tally.duplicates += 1;
                            }
                        }
                        Some("sent") => {
                            let cid = v["cid"].as_str().expect("cid").to_owned();
                            let i = plan.iter().position(|p| p.0 == cid).expect("own cid");
                            in_flight.retain(|x| *x != i);
                            let entry = (v["id"].as_str().expect("id").to_owned(), v["seq"].as_u64().expect("seq"), plan[i].1.clone());
                            tally.acked_at.entry(cid.clone()).or_insert_with(Instant::now);
                            if let Some(prev) = tally.acked.insert(cid, entry.clone()) {
                                assert_eq!(prev, entry, "a retried cid got another answer");
                            }
                        }
                        Some("synced") => {
                            let cid = v["cid"].as_str().unwrap_or_default().to_owned();
                            syncing.remove(&cid);
                            if live_since.is_none() && syncing.is_empty() {
                                live_since = Some(Instant::now());
                            }
                            if cid == "final" {
                                if contiguous(&tally.history) == tally.history.keys().last().copied().unwrap_or(0) {
                                    if let Some(since) = live_since.take() {
                                        tally.live.push((since, Instant::now()));
                                    }
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
                            if let Some(cid) = v["cid"].as_str() {
                                if syncing.remove(cid) {
                                    // A SYNC that failed: the connection
                                    // starts over (login, SYNC, resend).
                                    disconnected!();
                                }
                                if let Some(i) = plan.iter().position(|p| p.0 == cid) {
                                    in_flight.retain(|x| *x != i);
                                    let (cid, to, text) = &plan[i];
                                    tally.resent += 1;
                                    tally.resent_cids.insert(cid.clone());
                                    let m = json!({"op":"send","to":to,"text":text,"cid":cid}).to_string();
                                    let _ = ws.send(Message::text(m)).await;
                                    in_flight.push(i);
                                }
                            }
                        }
                        other => panic!("unexpected reply {other:?}: {v}"),
                    }
                }
            }
        }
    }
}

/// Waits (without blocking the runtime) until `server` has logged its
/// relay link up `times` times.
async fn linked(server: &ServerProc, times: usize) {
    eventually(Duration::from_secs(30), || async {
        (server.proc.output().matches("relay link up").count() >= times).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("server {} did not link", server.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_message_is_lost_while_servers_and_the_relay_die() {
    let redis = RedisServer::start();
    let mut relay = RelayProc::start(&redis.url(), "127.0.0.1:0".parse().expect("addr"), &[]);
    // Restarted processes come back on the addresses they first picked.
    let link = relay.link;
    let a = ServerProc::start("a", &redis.url(), link, &[]);
    let mut b = ServerProc::start("b", &redis.url(), link, &[]);
    let c = ServerProc::start("c", &redis.url(), link, &[]);
    let b_args = [
        "--ws".to_owned(),
        b.ws.to_string(),
        "--tcp".to_owned(),
        b.tcp.to_string(),
    ];
    let b_extra: Vec<&str> = b_args.iter().map(String::as_str).collect();
    for s in [&a, &b, &c] {
        linked(s, 1).await;
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
    let end = Arc::new(Ending {
        devices: placement.len(),
        ..Ending::default()
    });
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
        tasks.push(tokio::spawn(run_device(d, Arc::clone(&end))));
    }
    // Mid-stream: kill -9 server b, bring it back; then the relay. A fault
    // window lasts from the kill until every server is linked again, plus
    // SETTLE; QUIET time without faults comes before, between and after.
    let began = Instant::now();
    let mut windows: Vec<(&str, Instant, Instant)> = Vec::new();
    tokio::time::sleep(QUIET).await;
    let start = Instant::now();
    b.proc.kill9();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    b = ServerProc::start("b", &redis.url(), link, &b_extra);
    linked(&b, 1).await;
    windows.push(("kill -9 server b", start, Instant::now() + SETTLE));
    tokio::time::sleep(SETTLE + QUIET).await;
    let start = Instant::now();
    relay.proc.kill9();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    relay = RelayProc::start(&redis.url(), link, &[]);
    for s in [&a, &b, &c] {
        linked(s, 2).await;
    }
    windows.push(("kill -9 relay", start, Instant::now() + SETTLE));
    tokio::time::sleep(SETTLE + QUIET).await;
    let _keep = (&relay, &b);
    let stopped_at = Instant::now();
    end.stop.store(true, Ordering::SeqCst);

    let mut tallies = Vec::new();
    for (t, (user, device, _)) in tasks.into_iter().zip(placement) {
        let tally = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("device finished in time")
            .expect("device task");
        tallies.push((user, device, tally));
    }

    // Outside the fault windows, every acknowledged message reached every
    // live device of its recipient by push within PUSH_BOUND of its OK.
    let mut checked = 0usize;
    let (mut in_faults, mut offline, mut at_the_end) = (0usize, 0usize, 0usize);
    let mut slowest = Duration::ZERO;
    let mut missed: Vec<String> = Vec::new();
    for (_, _, t) in &tallies {
        for (cid, (_, seq, to)) in &t.acked {
            let sent_at = t.sent_at[cid];
            let due = t.acked_at[cid] + PUSH_BOUND;
            let in_a_window = windows.iter().any(|(_, s, e)| sent_at < *e && due > *s);
            if in_a_window || t.resent_cids.contains(cid) {
                in_faults += 1;
                continue;
            }
            if due > stopped_at {
                at_the_end += 1;
                continue;
            }
            for (_, rdev, rt) in tallies.iter().filter(|(u, _, _)| u == to) {
                if !rt.live.iter().any(|(s, e)| *s <= sent_at && due <= *e) {
                    offline += 1;
                    continue;
                }
                checked += 1;
                match rt.pushed_at.get(seq) {
                    Some(at) if *at <= due => {
                        slowest = slowest.max(at.saturating_duration_since(sent_at));
                    }
                    Some(at) => missed.push(format!(
                        "{cid} -> {to}/{rdev} (seq {seq}): pushed {:?} after it was sent",
                        at.saturating_duration_since(sent_at)
                    )),
                    None => missed.push(format!(
                        "{cid} -> {to}/{rdev} (seq {seq}): never pushed (SYNC filled it in)"
                    )),
                }
            }
        }
    }
    let at = |i: Instant| i.saturating_duration_since(began);
    let window_text: Vec<String> = windows
        .iter()
        .map(|(name, s, e)| format!("{name} {:.1?}..{:.1?}", at(*s), at(*e)))
        .collect();
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
    let mut lost = 0usize;
    for (sender, _, t) in &tallies {
        for (cid, (id, seq, to)) in &t.acked {
            acknowledged += 1;
            for dev in &by_user[to.as_str()] {
                match dev.history.get(seq) {
                    Some(m) => assert_eq!(&m.id, id, "{to}'s seq {seq} is not {cid}"),
                    None => {
                        eprintln!("{cid} (seq {seq}) missing for {to}");
                        lost += 1;
                    }
                }
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
    assert_eq!(
        lost, 0,
        "acknowledged messages missing on a recipient's device"
    );
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
    let sum = |f: fn(&Tally) -> usize| tallies.iter().map(|t| f(&t.2)).sum::<usize>();
    let sent = sum(|t| t.sent);
    println!(
        "chaos: faults {window_text:?}; sent {sent}, acknowledged {acknowledged}, lost {lost}; \
         pushes checked outside the faults {checked}, missed {}, slowest {slowest:?} from send \
         (skipped: {in_faults} messages in fault windows or resent, {at_the_end} at the end, \
         {offline} to devices offline); messages received {}, duplicates removed {}, \
         resent after failures {}, reconnects {}",
        missed.len(),
        sum(|t| t.pushed),
        sum(|t| t.duplicates),
        sum(|t| t.resent),
        sum(|t| t.reconnects),
    );
    assert_eq!(
        acknowledged, sent,
        "every message was eventually acknowledged"
    );
    assert!(
        missed.is_empty(),
        "{} of {checked} pushes outside the fault windows ({window_text:?}) missed: {:?}",
        missed.len(),
        &missed[..missed.len().min(20)]
    );
    // The quiet periods hold thousands of (message, device) pairs; a check
    // over a few would prove nothing.
    assert!(
        checked >= 500,
        "only {checked} pushes fell outside the fault windows"
    );
}
