//! Latency histograms and counters shared by the tasks of one run.
//!
//! Every receiver records into one [`Recorder`] (a mutex taken once per
//! message: uncontended on a handful of threads, and far cheaper than the
//! JSON parse beside it). Latency is measured from the *intended* send time
//! of the open-loop schedule, so a stall of the server (or of the tool)
//! shows as latency of every message that should have gone out meanwhile,
//! instead of silently lowering the rate (coordinated omission). The
//! *service* histogram, measured from the moment the frame was actually
//! written, is kept beside it to tell the two apart.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency a histogram holds, µs (larger values are clamped).
pub const MAX_US: u64 = 300_000_000;

fn histogram() -> Histogram<u64> {
    // 3 significant digits from 1 µs to MAX_US: fixed bounds, so record never fails.
    Histogram::new_with_bounds(1, MAX_US, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

struct Hists {
    total: Histogram<u64>,
    service: Histogram<u64>,
    window: Histogram<u64>,
}

/// Where receivers record latencies.
pub struct Recorder {
    inner: Mutex<Hists>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// Empty histograms.
    pub fn new() -> Self {
        Recorder {
            inner: Mutex::new(Hists {
                total: histogram(),
                service: histogram(),
                window: histogram(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hists> {
        // A panic while recording leaves plain counts behind: still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One delivered message: latency from the intended and from the actual
    /// send time.
    pub fn record(&self, latency_us: u64, service_us: u64) {
        let mut h = self.lock();
        h.total.saturating_record(latency_us);
        h.window.saturating_record(latency_us);
        h.service.saturating_record(service_us);
    }

    /// The latencies recorded since the last call (for the progress line).
    pub fn take_window(&self) -> Histogram<u64> {
        let mut h = self.lock();
        std::mem::replace(&mut h.window, histogram())
    }

    /// Everything so far: (from intended, from actual send time).
    pub fn totals(&self) -> (Histogram<u64>, Histogram<u64>) {
        let h = self.lock();
        (h.total.clone(), h.service.clone())
    }
}

/// Counters of one run, updated by every task.
#[derive(Debug, Default)]
pub struct Counters {
    /// Send frames written.
    pub sent: AtomicU64,
    /// Sends acknowledged as stored (Switchboard).
    pub acked: AtomicU64,
    /// Sends refused with an error.
    pub errors: AtomicU64,
    /// Distinct messages received live by their recipient.
    pub delivered: AtomicU64,
    /// Messages received live more than once.
    pub duplicates: AtomicU64,
    /// Connections lost before the run ended.
    pub broken: AtomicU64,
    /// When the latest live delivery happened, clock µs.
    pub last_delivery_us: AtomicU64,
}

impl Counters {
    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// The counters and histograms of one run, shared by its tasks.
#[derive(Default)]
pub struct Meter {
    /// What happened to messages and connections.
    pub counters: Counters,
    /// Latencies.
    pub recorder: Recorder,
}

/// Percentiles of one histogram, microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// 99.99th percentile.
    pub p9999_us: u64,
    /// Largest value.
    pub max_us: u64,
}

/// Summarizes `h`.
pub fn summarize(h: &Histogram<u64>) -> Summary {
    if h.is_empty() {
        return Summary::default();
    }
    Summary {
        count: h.len(),
        mean_us: h.mean(),
        p50_us: h.value_at_quantile(0.50),
        p90_us: h.value_at_quantile(0.90),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        p9999_us: h.value_at_quantile(0.9999),
        max_us: h.max(),
    }
}

/// The percentile distribution of `h` as `(percentile, µs)` points, dense
/// towards the tail (what the latency plot draws).
pub fn distribution(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut points: Vec<(f64, u64)> = h
        .iter_quantiles(4)
        .map(|v| (v.quantile_iterated_to() * 100.0, v.value_iterated_to()))
        .filter(|(p, _)| *p < 100.0)
        .collect();
    points.push((100.0, h.max()));
    points.dedup_by(|a, b| a.0 == b.0);
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_the_recorded_values() {
        let r = Recorder::new();
        for us in 1..=1000 {
            r.record(us, us / 2);
        }
        let (total, service) = r.totals();
        let s = summarize(&total);
        assert_eq!(s.count, 1000);
        assert!((495..=505).contains(&s.p50_us), "{s:?}");
        assert!((985..=995).contains(&s.p99_us), "{s:?}");
        assert_eq!(s.max_us, 1000);
        assert!(summarize(&service).p50_us < s.p50_us);
        assert_eq!(r.take_window().len(), 1000);
        assert_eq!(r.take_window().len(), 0);
    }

    #[test]
    fn distribution_ends_at_the_maximum() {
        let r = Recorder::new();
        for us in [10, 20, 30, 5000] {
            r.record(us, us);
        }
        let d = distribution(&r.totals().0);
        // The maximum to the histogram's precision (3 significant digits).
        assert!(
            d.last().is_some_and(|p| (5000..=5005).contains(&p.1)),
            "{d:?}"
        );
        assert!(d.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(distribution(&histogram()).is_empty());
    }

    #[test]
    fn huge_values_are_clamped_not_lost() {
        let r = Recorder::new();
        r.record(u64::MAX, u64::MAX);
        assert_eq!(r.totals().0.len(), 1);
    }
}
