//! The progress line: once a second, on stderr, what a traffic run did in
//! the last second (rate, latency percentiles, CPU of the system under test
//! and of the tool), kept as a timeline for the results file.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::procs::Watch;
use crate::stats::{Counters, Meter};

/// One second of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    /// Seconds since the first send.
    pub t_s: f64,
    /// Messages sent in this second, per second.
    pub sent_per_s: f64,
    /// Messages delivered in this second, per second.
    pub delivered_per_s: f64,
    /// Median latency of the messages delivered in this second, µs.
    pub p50_us: u64,
    /// 99th percentile of the same, µs.
    pub p99_us: u64,
    /// Largest of the same, µs.
    pub max_us: u64,
    /// CPU of the system under test, percent of one core.
    pub cpu_pct: f64,
    /// CPU of the tool, percent of one core.
    pub tool_cpu_pct: f64,
    /// CPU of everything else on the machine, percent of one core.
    #[serde(default)]
    pub other_cpu_pct: f64,
}

/// A running progress reporter.
pub struct Progress {
    stop: CancellationToken,
    task: JoinHandle<Vec<Tick>>,
}

impl Progress {
    /// Starts sampling every second; prints a line when `label` is given.
    pub fn spawn(watch: Watch, meter: Arc<Meter>, label: Option<String>, durable: bool) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(sample_loop(watch, meter, label, durable, stop.clone()));
        Progress { stop, task }
    }

    /// Stops it and returns the timeline.
    pub async fn finish(self) -> Vec<Tick> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

async fn sample_loop(
    watch: Watch,
    meter: Arc<Meter>,
    label: Option<String>,
    durable: bool,
    stop: CancellationToken,
) -> Vec<Tick> {
    let start = Instant::now();
    let mut ticks = Vec::new();
    let mut last_snap = watch.snapshot();
    let mut last_at = start;
    let (mut last_sent, mut last_delivered) = (0, 0);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let now = Instant::now();
        let dt = now.duration_since(last_at).as_secs_f64().max(1e-6);
        let snap = watch.snapshot();
        let usage = last_snap.usage_until(&snap);
        let c = &meter.counters;
        let sent = Counters::get(&c.sent);
        let delivered = Counters::get(&c.delivered);
        let window = meter.recorder.take_window();
        let tick = Tick {
            t_s: now.duration_since(start).as_secs_f64(),
            sent_per_s: (sent - last_sent) as f64 / dt,
            delivered_per_s: (delivered - last_delivered) as f64 / dt,
            p50_us: window.value_at_quantile(0.5),
            p99_us: window.value_at_quantile(0.99),
            max_us: window.max(),
            cpu_pct: usage.cpu_total_s * 100.0 / dt,
            tool_cpu_pct: usage.tool_cpu_s * 100.0 / dt,
            other_cpu_pct: usage.other_cpu_s * 100.0 / dt,
        };
        if let Some(label) = &label {
            let mut line = format!(
                "[{label}] {:>4.0}s sent {sent} {}recv {delivered} | {:>6.0}/s p50 {:.2} ms p99 {:.2} ms max {:.1} ms | cpu {:.0}% (",
                tick.t_s,
                if durable {
                    format!("acked {} ", Counters::get(&c.acked))
                } else {
                    String::new()
                },
                tick.delivered_per_s,
                tick.p50_us as f64 / 1000.0,
                tick.p99_us as f64 / 1000.0,
                tick.max_us as f64 / 1000.0,
                tick.cpu_pct,
            );
            for (i, (name, cpu)) in usage.cpu_s.iter().enumerate() {
                let _ = write!(
                    line,
                    "{}{name} {:.0}%",
                    if i > 0 { " " } else { "" },
                    cpu * 100.0 / dt
                );
            }
            let _ = write!(
                line,
                ") tool {:.0}% other {:.0}%",
                tick.tool_cpu_pct, tick.other_cpu_pct
            );
            eprintln!("{line}");
        }
        ticks.push(tick);
        last_snap = snap;
        last_at = now;
        last_sent = sent;
        last_delivered = delivered;
    }
    ticks
}
