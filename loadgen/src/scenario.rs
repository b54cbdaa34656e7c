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

/// Runs `rates` in order with `template`'s shape. A failing step is run
/// again up to `retries` times (a single stall on a shared machine should
/// not end the ladder; saturation fails every attempt); the ladder stops at
/// the first step that fails every attempt, unless `keep_going`. Every
/// attempt is kept in [`Ladder::steps`].
pub async fn throughput(
    target: &Target,
    template: &TrafficConfig,
    rates: &[u64],
    warmup: Option<Warmup>,
    retries: u32,
    keep_going: bool,
) -> Result<Ladder, RunError> {
    let mut ladder = Ladder {
        warmup: warm_up(target, template, warmup).await?,
        ..Ladder::default()
    };
    let mut failed = false;
    for &rate in rates {
        let mut passed = false;
        for attempt in 0..=retries {
            settle(target, &template.label, template.progress).await;
            let mut cfg = template.clone();
            cfg.rate = rate;
            cfg.prefix = unique_prefix("t");
            let mut r = traffic::run(target, &cfg).await?;
            r.attempt = attempt + 1;
            if template.progress {
                eprintln!(
                    "[{}] step {rate}/s, attempt {}: {}",
                    template.label, r.attempt, r.verdict
                );
            }
            passed = r.passed;
            ladder.steps.push(r);
            if passed {
                break;
            }
        }
        if passed && !failed {
            ladder.max_sustained_rate = Some(rate);
        }
        failed |= !passed;
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
    settle(target, &template.label, template.progress).await;
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

/// Other work on the machine (percent of one core) above which a run waits
/// before it starts.
const BUSY_PCT: f64 = 25.0;
/// How long a run waits at most for the machine to quiet down.
const QUIET_WAIT: Duration = Duration::from_secs(30);

/// A pause between runs, so one run's tail does not land in the next; it
/// lasts until other work on the machine (builds, tests) uses less than
/// [`BUSY_PCT`] of a core, for at most [`QUIET_WAIT`]. A run that starts
/// on a busy machine anyway records how busy it was (`other_cpu_s`).
async fn settle(target: &Target, label: &str, progress: bool) {
    let deadline = tokio::time::Instant::now() + QUIET_WAIT;
    loop {
        let before = target.watch.snapshot();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let other_pct = before.usage_until(&target.watch.snapshot()).other_cpu_s * 100.0;
        if other_pct < BUSY_PCT {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            if progress {
                eprintln!(
                    "[{label}] the machine is still busy (other work {other_pct:.0}% of a core); going on"
                );
            }
            return;
        }
        if progress {
            eprintln!(
                "[{label}] waiting for the machine to quiet down (other work {other_pct:.0}% of a core)"
            );
        }
    }
}
