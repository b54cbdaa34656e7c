//! The scenarios built from traffic runs: the throughput ladder (step the
//! rate up until p99 passes the bound or a message is lost), a latency run
//! at one rate, and the smoke run the test suite uses.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::target::Target;
use crate::traffic::{self, RunError, TrafficConfig, TrafficResult};

/// A prefix for user names that no earlier run on the same Redis used
/// (inboxes outlive runs), shorter than the 64-byte name limit.
pub fn unique_prefix(tag: &str) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!(
        "{tag}{}-{}-",
        ms % 10_000_000_000,
        std::process::id() % 100_000
    )
}

/// A warm-up before measuring: JIT compilers, allocators and connection
/// pools reach their steady state. Its result is kept but never judged.
#[derive(Debug, Clone, Copy)]
pub struct Warmup {
    /// Rate, messages per second.
    pub rate: u64,
    /// Length.
    pub duration: Duration,
}

/// Runs the warm-up, if any.
pub async fn warm_up(
    target: &Target,
    template: &TrafficConfig,
    warmup: Option<Warmup>,
) -> Result<Option<TrafficResult>, RunError> {
    let Some(w) = warmup.filter(|w| w.rate > 0 && !w.duration.is_zero()) else {
        return Ok(None);
    };
    let mut cfg = template.clone();
    cfg.rate = w.rate;
    cfg.duration = w.duration;
    cfg.prefix = unique_prefix("w");
    cfg.label = format!("{} warm-up", template.label);
    let r = traffic::run(target, &cfg).await?;
    if template.progress {
        eprintln!("[{}] warm-up {}/s: {}", template.label, w.rate, r.verdict);
    }
    Ok(Some(r))
}

/// What the throughput ladder found.
#[derive(Debug, Clone, Default)]
pub struct Ladder {
    /// The warm-up run, if any.
    pub warmup: Option<TrafficResult>,
    /// Every step run, in order.
    pub steps: Vec<TrafficResult>,
    /// The highest rate that passed with every lower step passing too.
    pub max_sustained_rate: Option<u64>,
}

/// Runs `rates` in order with `template`'s shape; stops after the first
/// failing step unless `keep_going`.
pub async fn throughput(
    target: &Target,
    template: &TrafficConfig,
    rates: &[u64],
    warmup: Option<Warmup>,
    keep_going: bool,
) -> Result<Ladder, RunError> {
    let mut ladder = Ladder {
        warmup: warm_up(target, template, warmup).await?,
        ..Ladder::default()
    };
    let mut failed = false;
    for &rate in rates {
        settle().await;
        let mut cfg = template.clone();
        cfg.rate = rate;
        cfg.prefix = unique_prefix("t");
        let r = traffic::run(target, &cfg).await?;
        if template.progress {
            eprintln!("[{}] step {rate}/s: {}", template.label, r.verdict);
        }
        if r.passed && !failed {
            ladder.max_sustained_rate = Some(rate);
        }
        failed |= !r.passed;
        ladder.steps.push(r);
        if failed && !keep_going {
            break;
        }
    }
    Ok(ladder)
}

/// One measured run at `template.rate`, after the warm-up.
pub async fn latency(
    target: &Target,
    template: &TrafficConfig,
    warmup: Option<Warmup>,
) -> Result<(Option<TrafficResult>, TrafficResult), RunError> {
    let w = warm_up(target, template, warmup).await?;
    settle().await;
    let mut cfg = template.clone();
    cfg.prefix = unique_prefix("l");
    let r = traffic::run(target, &cfg).await?;
    if template.progress {
        eprintln!("[{}] {}/s: {}", template.label, cfg.rate, r.verdict);
    }
    Ok((w, r))
}

/// A small run for the test suite: `messages` messages over `pairs` pairs
/// at 500 per second, with a generous latency bound (a smoke run checks
/// that every message is accounted for, not speed).
pub async fn smoke(
    target: &Target,
    messages: u64,
    pairs: usize,
) -> Result<TrafficResult, RunError> {
    let rate = 500;
    let duration = Duration::from_secs_f64((messages as f64 / rate as f64).max(0.01));
    let mut cfg = TrafficConfig::new(rate, duration, pairs, unique_prefix("s"));
    cfg.p99_bound = Duration::from_secs(5);
    cfg.drain = Duration::from_secs(10);
    traffic::run(target, &cfg).await
}

/// A short pause between runs, so one run's tail does not land in the next.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(1)).await;
}
