//! One traffic run: user pairs exchanging direct messages at a fixed rate
//! across servers, then an account of every message.
//!
//! Pair `i` is a sender on server `i % n` and a receiver on server
//! `(i + 1) % n`, so with two or more servers every message crosses servers
//! (and, for Switchboard, the relay). Roles are one-way so that a receiver's
//! inbox holds only its sender's messages and its sequence numbers are
//! dense: the highest gap-free sequence it saw live is where its `sync`
//! starts.
//!
//! Sending is open-loop: message `g` (over all senders) is due at
//! `t0 + g / rate`, whatever happened to earlier ones; a sender that falls
//! behind sends what is overdue at once, stamped with the times it was due.
//!
//! After the last send the run drains (waits until every message is acked
//! and delivered, or a limit passes), then, for Switchboard, each receiver
//! that missed something asks the server to replay it (`sync`). Every
//! message ends up in exactly one of: refused, delivered live, recovered by
//! sync, or lost.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::conn::{Conn, ConnectError, Dialer};
use crate::procs::Usage;
use crate::progress::{Progress, Tick};
use crate::proto::{self, Incoming, Stamp, System};
use crate::stats::{self, Counters, Meter, Summary};
use crate::target::Target;

/// How a traffic run is shaped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrafficConfig {
    /// Messages per second, all senders together.
    pub rate: u64,
    /// How long the schedule runs.
    pub duration: Duration,
    /// Sender/receiver pairs.
    pub pairs: usize,
    /// Bytes of message text.
    pub size: usize,
    /// How long to wait for acks and deliveries after the last send.
    pub drain: Duration,
    /// A run passes when its p99 latency is at most this (and nothing is lost).
    pub p99_bound: Duration,
    /// User-name prefix; unique per run so inboxes start empty.
    pub prefix: String,
    /// Print a progress line every second on stderr.
    pub progress: bool,
    /// Shown at the start of the progress line.
    pub label: String,
}

impl TrafficConfig {
    /// A config with the usual drain (5 s) and bound (50 ms).
    pub fn new(rate: u64, duration: Duration, pairs: usize, prefix: impl Into<String>) -> Self {
        TrafficConfig {
            rate,
            duration,
            pairs,
            size: 64,
            drain: Duration::from_secs(5),
            p99_bound: Duration::from_millis(50),
            prefix: prefix.into(),
            progress: false,
            label: String::new(),
        }
    }

    /// Messages the schedule calls for.
    pub fn scheduled(&self) -> u64 {
        (self.rate as f64 * self.duration.as_secs_f64()).round() as u64
    }
}

/// What a traffic run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrafficResult {
    /// Offered rate, messages per second.
    pub rate: u64,
    /// Length of the schedule, seconds.
    pub duration_s: f64,
    /// Sender/receiver pairs.
    pub pairs: usize,
    /// Servers the pairs were spread over.
    pub servers: usize,
    /// Bytes of message text.
    pub size: usize,
    /// Messages the schedule called for.
    pub scheduled: u64,
    /// Messages written.
    pub sent: u64,
    /// Messages acknowledged as stored (Switchboard; 0 for Socket.IO).
    pub acked: u64,
    /// Sends refused with an error.
    pub errors: u64,
    /// Distinct messages received live.
    pub delivered: u64,
    /// Messages not received live but replayed by `sync`.
    pub recovered: u64,
    /// Messages neither delivered, recovered nor refused.
    pub lost: u64,
    /// Of the lost, those that had been acknowledged as stored.
    pub lost_acked: u64,
    /// Messages received twice or more.
    pub duplicates: u64,
    /// Connections that broke during the run.
    pub broken: u64,
    /// Delivered messages per second, from the first send to the last live
    /// delivery: below the offered rate when the system falls behind.
    pub achieved_rate: f64,
    /// Latency from the intended send time (the figure that counts).
    pub latency: Summary,
    /// Latency from the actual send time (tells tool lag from server lag).
    pub service: Summary,
    /// Percentile distribution of `latency`: `(percentile, µs)`.
    pub distribution: Vec<(f64, u64)>,
    /// CPU and memory of the watched processes from the first send to the
    /// end of the drain.
    pub usage: Usage,
    /// Delivered messages per CPU-second of the system under test.
    pub msgs_per_cpu_s: f64,
    /// CPU microseconds of the system under test per delivered message.
    pub cpu_us_per_msg: f64,
    /// One sample per second.
    pub timeline: Vec<Tick>,
    /// Which attempt at this rate this was (1 = first; the ladder retries a
    /// failed step).
    #[serde(default)]
    pub attempt: u32,
    /// The latency bound the run was judged against, ms.
    #[serde(default)]
    pub p99_bound_ms: u64,
    /// Whether the run met its bound with nothing lost.
    pub passed: bool,
    /// Why it passed or not, in words.
    pub verdict: String,
    /// The first error the server answered, if any.
    pub first_error: Option<String>,
}

/// Why a traffic run could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No servers to connect to.
    #[error("no servers given")]
    NoServers,
    /// A connection could not be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A task of the tool panicked.
    #[error("a load task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// State shared by all tasks of one run.
struct Shared {
    system: System,
    clock: Clock,
    meter: Arc<Meter>,
}

/// What a receiver saw live.
#[derive(Default)]
struct Received {
    /// `got[n]`: message `n` of the paired sender arrived.
    got: Vec<bool>,
    /// `seqs[s]`: inbox sequence number `s` arrived (Switchboard).
    seqs: Vec<bool>,
}

impl Received {
    fn mark(v: &mut Vec<bool>, i: usize) -> bool {
        if v.len() <= i {
            v.resize(i + 1, false);
        }
        !std::mem::replace(&mut v[i], true)
    }

    /// Highest sequence number such that all from 1 arrived.
    fn contiguous_seq(&self) -> u64 {
        self.seqs.iter().skip(1).take_while(|&&b| b).count() as u64
    }

    fn has(&self, n: u64) -> bool {
        self.got.get(n as usize).copied().unwrap_or(false)
    }
}

/// What a sender's reader saw.
#[derive(Default)]
struct Acks {
    /// `seq[n]`: inbox sequence number of message `n`, 0 when not acked.
    seq: Vec<u64>,
    /// `refused[n]`: message `n` was answered with an error.
    refused: Vec<bool>,
    first_error: Option<String>,
}

/// Runs one traffic run against `target`.
pub async fn run(target: &Target, cfg: &TrafficConfig) -> Result<TrafficResult, RunError> {
    let servers = target.addrs();
    if servers.is_empty() {
        return Err(RunError::NoServers);
    }
    let system = target.system;
    let dialer = Dialer::new(system, target.transport, target.sources.clone(), 4096);
    let n = servers.len();
    let pairs = cfg.pairs.max(1);

    // Receivers first, so every recipient is online before the first send.
    let receivers = connect_all(&dialer, pairs, |i| {
        (
            servers[(i + 1) % n],
            2 * i + 1,
            format!("{}r{i}", cfg.prefix),
        )
    })
    .await?;
    let senders = connect_all(&dialer, pairs, |i| {
        (servers[i % n], 2 * i, format!("{}s{i}", cfg.prefix))
    })
    .await?;

    let shared = Arc::new(Shared {
        system,
        clock: Clock::new(),
        meter: Arc::new(Meter::default()),
    });
    let stop = CancellationToken::new();

    let recv_tasks: Vec<_> = receivers
        .into_iter()
        .map(|ws| tokio::spawn(receive(ws, shared.clone(), stop.clone())))
        .collect();

    let total = cfg.scheduled();
    let start_us = shared.clock.now_us() + 100_000;
    let end_us = start_us + cfg.duration.as_micros() as u64;
    let hard_end_us = end_us + cfg.drain.as_micros() as u64;
    let mut send_tasks = Vec::with_capacity(pairs);
    let mut ack_tasks = Vec::with_capacity(pairs);
    for (i, ws) in senders.into_iter().enumerate() {
        let (sink, stream) = ws.split();
        let (pong_tx, pong_rx) = mpsc::channel(4);
        let plan = Plan {
            index: i as u64,
            pairs: pairs as u64,
            total,
            rate: cfg.rate.max(1),
            start_us,
            hard_end_us,
            to: format!("{}r{i}", cfg.prefix),
            size: cfg.size,
        };
        send_tasks.push(tokio::spawn(send(
            sink,
            plan,
            pong_rx,
            shared.clone(),
            stop.clone(),
        )));
        ack_tasks.push(tokio::spawn(read_acks(
            stream,
            pong_tx,
            shared.clone(),
            stop.clone(),
        )));
    }

    tokio::time::sleep_until(shared.clock.instant(start_us).into()).await;
    let before = target.watch.snapshot();
    let progress = Progress::spawn(
        target.watch.clone(),
        shared.meter.clone(),
        cfg.progress
            .then(|| format!("{} {}/s", cfg.label, cfg.rate)),
        system.durable(),
    );

    let mut sent_by = Vec::with_capacity(pairs);
    for t in send_tasks {
        // Senders end by themselves at the hard end at the latest.
        let w = t.await?;
        sent_by.push(w);
    }
    // Drain: wait for the tail of acks and deliveries.
    let drain_end = shared.clock.instant(hard_end_us.max(shared.clock.now_us()));
    loop {
        let c = &shared.meter.counters;
        let sent = Counters::get(&c.sent);
        let errors = Counters::get(&c.errors);
        let delivered = Counters::get(&c.delivered);
        let acked_all = !system.durable() || Counters::get(&c.acked) + errors >= sent;
        if acked_all && delivered + errors >= sent {
            break;
        }
        if tokio::time::Instant::now() >= drain_end.into() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = target.watch.snapshot();
    let timeline = progress.finish().await;
    stop.cancel();

    let mut acks = Vec::with_capacity(pairs);
    for t in ack_tasks {
        acks.push(t.await?);
    }
    let mut received = Vec::with_capacity(pairs);
    for t in recv_tasks {
        received.push(t.await?);
    }

    // Account for every message; replay what a receiver missed.
    let mut recovery = Vec::with_capacity(pairs);
    for ((sent, ack), (ws, got)) in sent_by.iter().zip(&acks).zip(received) {
        let missing = (0..*sent).any(|n| !got.has(n) && !refused(ack, n));
        match ws {
            Some(ws) if missing && system.durable() => {
                recovery.push(tokio::spawn(recover(ws, got, shared.clone())));
            }
            _ => recovery.push(tokio::spawn(async move { (got, 0) })),
        }
    }
    let mut res = TrafficResult::default();
    let mut recovered = 0;
    let mut finals = Vec::with_capacity(pairs);
    for t in recovery {
        let (got, r) = t.await?;
        recovered += r;
        finals.push(got);
    }
    for ((sent, ack), got) in sent_by.iter().zip(&acks).zip(&finals) {
        for n in 0..*sent {
            if refused(ack, n) || got.has(n) {
                continue;
            }
            res.lost += 1;
            if ack.seq.get(n as usize).copied().unwrap_or(0) != 0 {
                res.lost_acked += 1;
            }
        }
    }

    let c = &shared.meter.counters;
    let (total_h, service_h) = shared.meter.recorder.totals();
    res.rate = cfg.rate;
    res.duration_s = cfg.duration.as_secs_f64();
    res.pairs = pairs;
    res.servers = n;
    res.size = cfg.size;
    res.scheduled = total;
    res.sent = Counters::get(&c.sent);
    res.acked = Counters::get(&c.acked);
    res.errors = Counters::get(&c.errors);
    res.delivered = Counters::get(&c.delivered);
    res.recovered = recovered;
    res.duplicates = Counters::get(&c.duplicates);
    res.broken = Counters::get(&c.broken);
    let last_us = Counters::get(&c.last_delivery_us).saturating_sub(start_us);
    let span_s = cfg
        .duration
        .as_secs_f64()
        .max(last_us as f64 / 1e6)
        .max(1e-9);
    res.achieved_rate = res.delivered as f64 / span_s;
    res.latency = stats::summarize(&total_h);
    res.service = stats::summarize(&service_h);
    res.distribution = stats::distribution(&total_h);
    res.usage = before.usage_until(&after);
    if res.usage.cpu_total_s > 0.0 {
        res.msgs_per_cpu_s = res.delivered as f64 / res.usage.cpu_total_s;
        res.cpu_us_per_msg = res.usage.cpu_total_s * 1e6 / res.delivered.max(1) as f64;
    }
    res.timeline = timeline;
    res.first_error = acks.iter().find_map(|a| a.first_error.clone());
    res.p99_bound_ms = cfg.p99_bound.as_millis() as u64;
    res.attempt = 1;
    judge(&mut res, cfg.p99_bound);
    Ok(res)
}

fn refused(ack: &Acks, n: u64) -> bool {
    ack.refused.get(n as usize).copied().unwrap_or(false)
}

/// Sets `passed` and `verdict`.
fn judge(res: &mut TrafficResult, bound: Duration) {
    let bound_us = bound.as_micros() as u64;
    let mut why = Vec::new();
    if res.sent < res.scheduled {
        why.push(format!("only {} of {} sent", res.sent, res.scheduled));
    }
    if res.lost > 0 {
        why.push(format!("{} lost", res.lost));
    }
    if res.errors > 0 {
        why.push(format!("{} refused", res.errors));
    }
    if res.broken > 0 {
        why.push(format!("{} connections broke", res.broken));
    }
    if res.latency.p99_us > bound_us {
        why.push(format!(
            "p99 {:.1} ms over {:.0} ms",
            res.latency.p99_us as f64 / 1000.0,
            bound_us as f64 / 1000.0
        ));
    }
    res.passed = why.is_empty();
    res.verdict = if res.passed {
        format!(
            "ok: p99 {:.2} ms, all {} accounted for",
            res.latency.p99_us as f64 / 1000.0,
            res.sent
        )
    } else {
        why.join(", ")
    };
}

/// Opens `count` connections, at most 64 handshakes at a time;
/// `spec(i)` gives server, source index and user of connection `i`.
async fn connect_all<F>(dialer: &Dialer, count: usize, spec: F) -> Result<Vec<Conn>, ConnectError>
where
    F: Fn(usize) -> (std::net::SocketAddr, usize, String),
{
    let opened: Vec<(usize, Result<Conn, ConnectError>)> = futures_util::stream::iter(0..count)
        .map(|i| {
            let (server, index, user) = spec(i);
            async move { (i, dialer.open(server, index, &user).await) }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut slots: Vec<Option<Conn>> = (0..count).map(|_| None).collect();
    for (i, r) in opened {
        slots[i] = Some(r?);
    }
    Ok(slots.into_iter().flatten().collect())
}

/// The schedule of one sender.
struct Plan {
    /// This sender's index: it sends messages `g = index + k * pairs`.
    index: u64,
    pairs: u64,
    /// Messages over all senders.
    total: u64,
    rate: u64,
    start_us: u64,
    /// Past this, give up on what is still unsent.
    hard_end_us: u64,
    to: String,
    size: usize,
}

impl Plan {
    /// When this sender's `k`th message is due.
    fn due_us(&self, k: u64) -> u64 {
        let g = self.index + k * self.pairs;
        self.start_us + g * 1_000_000 / self.rate
    }

    /// How many messages this sender sends.
    fn count(&self) -> u64 {
        if self.index >= self.total {
            0
        } else {
            (self.total - self.index).div_ceil(self.pairs)
        }
    }
}

/// The open-loop writer: sleeps until the next message is due, then feeds
/// every message due by now and flushes once. Returns how many it sent.
async fn send(
    mut sink: SplitSink<Conn, String>,
    plan: Plan,
    mut pongs: mpsc::Receiver<&'static str>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> u64 {
    let count = plan.count();
    let clock = shared.clock;
    let mut k = 0;
    let mut text = String::with_capacity(plan.size + 32);
    // One `cancelled` future for the whole loop: making one per iteration
    // takes a lock each time.
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    'run: while k < count {
        let due = clock.instant(plan.due_us(k));
        tokio::select! {
            biased;
            _ = &mut cancelled => break,
            Some(p) = pongs.recv() => {
                if sink.send(p.to_owned()).await.is_err() {
                    break;
                }
                continue;
            }
            _ = tokio::time::sleep_until(due.into()) => {}
        }
        let now = clock.now_us();
        if now > plan.hard_end_us {
            break;
        }
        let mut batch = 0;
        while k < count && plan.due_us(k) <= now {
            text.clear();
            proto::write_text(
                &mut text,
                Stamp {
                    n: k,
                    intended_us: plan.due_us(k),
                    actual_us: clock.now_us(),
                },
                plan.size,
            );
            let mut frame = String::with_capacity(text.len() + plan.to.len() + 48);
            shared.system.write_send(&mut frame, &plan.to, k, &text);
            if sink.feed(frame).await.is_err() {
                Counters::add(&shared.meter.counters.sent, batch);
                break 'run;
            }
            k += 1;
            batch += 1;
        }
        Counters::add(&shared.meter.counters.sent, batch);
        if sink.flush().await.is_err() {
            break;
        }
    }
    k
}

/// A sender's reader: acks and refusals (Switchboard), pings (Socket.IO).
async fn read_acks(
    mut stream: SplitStream<Conn>,
    pongs: mpsc::Sender<&'static str>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Acks {
    let mut acks = Acks::default();
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    loop {
        let frame = tokio::select! {
            biased;
            _ = &mut cancelled => break,
            f = stream.next() => f,
        };
        let text = match frame {
            Some(Ok(t)) => t,
            Some(Err(_)) | None => {
                Counters::add(&shared.meter.counters.broken, 1);
                break;
            }
        };
        match proto::parse(shared.system, &text) {
            Incoming::Sent { n, seq } => {
                let n = n as usize;
                if acks.seq.len() <= n {
                    acks.seq.resize(n + 1, 0);
                }
                if acks.seq[n] == 0 {
                    Counters::add(&shared.meter.counters.acked, 1);
                }
                acks.seq[n] = seq.max(1);
            }
            Incoming::Error { n, message } => {
                if let Some(n) = n
                    && Received::mark(&mut acks.refused, n as usize)
                {
                    Counters::add(&shared.meter.counters.errors, 1);
                }
                acks.first_error.get_or_insert(message);
            }
            Incoming::SioPing => {
                let _ = pongs.try_send(proto::SIO_PONG);
            }
            _ => {}
        }
    }
    acks
}

/// A receiver: records each message's latency until told to stop, then
/// hands back its connection (for `sync`) unless it broke.
async fn receive(
    mut ws: Conn,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> (Option<Conn>, Received) {
    let mut got = Received::default();
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    loop {
        let frame = tokio::select! {
            biased;
            _ = &mut cancelled => break,
            f = ws.next() => f,
        };
        let text = match frame {
            Some(Ok(t)) => t,
            Some(Err(_)) | None => {
                Counters::add(&shared.meter.counters.broken, 1);
                return (None, got);
            }
        };
        match proto::parse(shared.system, &text) {
            Incoming::Msg { seq, text } => {
                if let Some(s) = seq {
                    Received::mark(&mut got.seqs, s as usize);
                }
                if let Some(stamp) = proto::parse_text(&text)
                    && take(&shared, &mut got, stamp)
                {
                    let c = &shared.meter.counters;
                    Counters::add(&c.delivered, 1);
                    c.last_delivery_us
                        .fetch_max(shared.clock.now_us(), std::sync::atomic::Ordering::Relaxed);
                }
            }
            Incoming::SioPing => {
                let pong = ws.send(proto::SIO_PONG.to_owned()).await;
                if pong.is_err() {
                    Counters::add(&shared.meter.counters.broken, 1);
                    return (None, got);
                }
            }
            _ => {}
        }
    }
    (Some(ws), got)
}

/// Marks a message seen and records its latency; false when it was seen
/// before (a duplicate).
fn take(shared: &Shared, got: &mut Received, stamp: Stamp) -> bool {
    if !Received::mark(&mut got.got, stamp.n as usize) {
        Counters::add(&shared.meter.counters.duplicates, 1);
        return false;
    }
    let now = shared.clock.now_us();
    shared.meter.recorder.record(
        now.saturating_sub(stamp.intended_us),
        now.saturating_sub(stamp.actual_us),
    );
    true
}

/// Asks the server to replay everything after the last gap-free sequence
/// number, and counts what was missing. Recovered messages are recorded
/// with the latency they finally had.
async fn recover(mut ws: Conn, mut got: Received, shared: Arc<Shared>) -> (Received, u64) {
    let after = got.contiguous_seq();
    let mut recovered = 0;
    if ws.send(proto::sync_frame(after)).await.is_err() {
        return (got, 0);
    }
    loop {
        let frame = match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(t))) => t,
            Ok(Some(Err(_)) | None) | Err(_) => break,
        };
        match proto::parse(shared.system, &frame) {
            Incoming::Msg { text, .. } => {
                if let Some(stamp) = proto::parse_text(&text)
                    && take(&shared, &mut got, stamp)
                {
                    recovered += 1;
                }
            }
            Incoming::Synced { .. } | Incoming::Gap | Incoming::Error { .. } => break,
            _ => {}
        }
    }
    (got, recovered)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(index: u64, pairs: u64, total: u64) -> Plan {
        Plan {
            index,
            pairs,
            total,
            rate: 1000,
            start_us: 0,
            hard_end_us: u64::MAX,
            to: "r".into(),
            size: 16,
        }
    }

    #[test]
    fn the_schedule_covers_every_message_once() {
        let pairs = 7;
        let total = 100;
        let counts: u64 = (0..pairs).map(|i| plan(i, pairs, total).count()).sum();
        assert_eq!(counts, total);
        let mut due: Vec<u64> = (0..pairs)
            .flat_map(|i| {
                let p = plan(i, pairs, total);
                (0..p.count()).map(move |k| p.due_us(k))
            })
            .collect();
        due.sort_unstable();
        // 1000 msg/s: one every millisecond, evenly.
        assert!(due.iter().enumerate().all(|(g, &t)| t == g as u64 * 1000));
        assert_eq!(plan(9, 10, 5).count(), 0);
    }

    #[test]
    fn contiguous_seq_stops_at_the_first_gap() {
        let mut r = Received::default();
        assert_eq!(r.contiguous_seq(), 0);
        for s in [1, 2, 3, 5] {
            Received::mark(&mut r.seqs, s);
        }
        assert_eq!(r.contiguous_seq(), 3);
        assert!(Received::mark(&mut r.got, 4));
        assert!(!Received::mark(&mut r.got, 4));
        assert!(r.has(4) && !r.has(3) && !r.has(99));
    }

    #[test]
    fn a_run_fails_on_loss_or_latency() {
        let mut r = TrafficResult {
            scheduled: 10,
            sent: 10,
            ..Default::default()
        };
        r.latency.p99_us = 1000;
        judge(&mut r, Duration::from_millis(50));
        assert!(r.passed, "{}", r.verdict);
        r.lost = 1;
        judge(&mut r, Duration::from_millis(50));
        assert!(!r.passed);
        r.lost = 0;
        r.latency.p99_us = 60_000;
        judge(&mut r, Duration::from_millis(50));
        assert!(!r.passed && r.verdict.contains("p99"), "{}", r.verdict);
    }
}
