//! Side by side: reads the results files of one bench run (Switchboard and
//! the Socket.IO peer), computes the ratios the targets are stated in, and
//! renders the Markdown table and the comparison plots.
//!
//! File names in the results directory (written by `scripts/bench`):
//! `{sio,sb}-idle.json` and `sb-idle-tcp.json` (idle telnet-port
//! connections); `sio-throughput.json` (the redis-adapter pair),
//! `sio-streams-throughput.json` (the redis-streams-adapter peer),
//! `sb-tell-throughput.json` (transient DMs) and `sb-throughput.json`
//! (durable DMs); `sio-latency.json`, `sb-tell-latency.json` and
//! `sb-latency.json` at half the pair's highest rate; `sb-scale-2.json` and
//! `sb-scale-4.json`. A missing file leaves its rows as "–" or out.

use std::fmt::Write as _;
use std::path::Path;

use crate::report::Report;
use crate::svg::{self, Series};
use crate::traffic::TrafficResult;

/// Idle memory per connection at most this (bytes).
const IDLE_MAX_BYTES: f64 = 4.0 * 1024.0;
/// Ours at least this many times lighter per idle connection.
const IDLE_RATIO: f64 = 3.0;
/// Transient DMs: ours sustains at least this many times the pair's rate...
const TELL_RATE_RATIO: f64 = 2.0;
/// ... and delivers at least this many times more per CPU-second.
const TELL_CPU_RATIO: f64 = 3.0;
/// Durable DMs: at least the pair's rate (which stores nothing) ...
const DURABLE_RATE_RATIO_PAIR: f64 = 1.0;
/// ... at least this many times the streams-adapter peer's rate ...
const DURABLE_RATE_RATIO_STREAMS: f64 = 2.0;
/// ... and this many times its messages per CPU-second.
const DURABLE_CPU_RATIO_STREAMS: f64 = 2.0;
/// Transient p99 at half the pair's highest rate, ms.
const LATENCY_P99_MS: f64 = 5.0;
/// "Roughly flat": CPU per message with 4 servers at most this times that with 2.
const SCALE_FLAT: f64 = 1.25;

/// The outcome: Markdown and plots.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    /// The summary table, then the per-run tables.
    pub markdown: String,
    /// `(file name, SVG)`.
    pub plots: Vec<(String, String)>,
}

struct Runs {
    sio_idle: Option<Report>,
    sb_idle: Option<Report>,
    sb_idle_tcp: Option<Report>,
    sio_tp: Option<Report>,
    sio_streams_tp: Option<Report>,
    sb_tp: Option<Report>,
    sb_tell_tp: Option<Report>,
    sio_lat: Option<Report>,
    sb_lat: Option<Report>,
    sb_tell_lat: Option<Report>,
    scale2: Option<Report>,
    scale4: Option<Report>,
}

fn load(dir: &Path, name: &str) -> Option<Report> {
    Report::read(&dir.join(name)).ok()
}

/// Builds the comparison from the files in `dir`.
pub fn compare(dir: &Path) -> Comparison {
    let runs = Runs {
        sio_idle: load(dir, "sio-idle.json"),
        sb_idle: load(dir, "sb-idle.json"),
        sb_idle_tcp: load(dir, "sb-idle-tcp.json"),
        sio_tp: load(dir, "sio-throughput.json"),
        sio_streams_tp: load(dir, "sio-streams-throughput.json"),
        sb_tp: load(dir, "sb-throughput.json"),
        sb_tell_tp: load(dir, "sb-tell-throughput.json"),
        sio_lat: load(dir, "sio-latency.json"),
        sb_lat: load(dir, "sb-latency.json"),
        sb_tell_lat: load(dir, "sb-tell-latency.json"),
        scale2: load(dir, "sb-scale-2.json"),
        scale4: load(dir, "sb-scale-4.json"),
    };
    let mut md = String::new();
    summary_table(&mut md, &runs);
    details(&mut md, &runs);
    Comparison {
        markdown: md,
        plots: plots(&runs),
    }
}

/// `20,000`.
pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn ms(us: u64) -> String {
    let v = us as f64 / 1000.0;
    if v < 10.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.0} ms")
    }
}

fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

/// How `ours` compares with `peer` where less is better: "3.1x lower" or
/// "2.0x higher" (with `less`/`more` as the words).
fn better_when_lower(peer: f64, ours: f64, less: &str, more: &str) -> String {
    if ours <= 0.0 || peer <= 0.0 {
        "–".to_owned()
    } else if ours <= peer {
        format!("{:.1}x {less}", peer / ours)
    } else {
        format!("{:.1}x {more}", ours / peer)
    }
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "–",
    }
}

fn dash<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "–".to_owned())
}

/// The highest sustained rate of a ladder, or which step it failed at.
fn sustained(r: Option<&Report>) -> String {
    let Some(r) = r else {
        return "–".to_owned();
    };
    match r.max_sustained_rate {
        Some(rate) => thousands(rate as f64),
        None => match r.steps.last() {
            Some(s) => format!("none ({} failed: {})", thousands(s.rate as f64), s.verdict),
            None => "none".to_owned(),
        },
    }
}

/// The run of a ladder at `rate`: its passing attempt, else its last one.
fn step_at(r: Option<&Report>, rate: u64) -> Option<&TrafficResult> {
    let at = || {
        r.into_iter()
            .flat_map(|r| r.steps.iter())
            .filter(|s| s.rate == rate)
    };
    at().find(|s| s.passed).or_else(|| at().next_back())
}

fn summary_table(md: &mut String, runs: &Runs) {
    md.push_str(
        "| measure | peer | Switchboard | ratio | target | |\n|---|---:|---:|---:|---|---|\n",
    );
    let pair = "Socket.IO redis-adapter pair";
    let streams = "Socket.IO redis-streams-adapter (fsync always)";

    // Idle memory.
    idle_row(
        md,
        "WebSocket",
        runs.sio_idle.as_ref(),
        runs.sb_idle.as_ref(),
        true,
    );
    idle_row(
        md,
        "telnet",
        runs.sio_idle.as_ref(),
        runs.sb_idle_tcp.as_ref(),
        false,
    );

    // Transient direct messages (TELL) against the pair, which stores nothing either.
    rate_row(
        md,
        &format!("transient DMs (`TELL`): highest sustained rate, msg/s; peer: {pair}"),
        runs.sio_tp.as_ref(),
        runs.sb_tell_tp.as_ref(),
        TELL_RATE_RATIO,
    );
    cpu_row(
        md,
        &format!("transient DMs: messages per CPU-second of the system; peer: {pair}"),
        runs.sio_tp.as_ref(),
        runs.sb_tell_tp.as_ref(),
        Some(TELL_CPU_RATIO),
    );
    latency_rows(
        md,
        "transient DMs",
        runs.sio_lat.as_ref(),
        runs.sb_tell_lat.as_ref(),
        true,
    );

    // Durable direct messages (every one stored, fsync always).
    rate_row(
        md,
        &format!(
            "durable DMs (`SEND`, fsync always): highest sustained rate, msg/s; peer: {pair} (stores nothing)"
        ),
        runs.sio_tp.as_ref(),
        runs.sb_tp.as_ref(),
        DURABLE_RATE_RATIO_PAIR,
    );
    rate_row(
        md,
        &format!("durable DMs: highest sustained rate, msg/s; peer: {streams}"),
        runs.sio_streams_tp.as_ref(),
        runs.sb_tp.as_ref(),
        DURABLE_RATE_RATIO_STREAMS,
    );
    cpu_row(
        md,
        &format!("durable DMs: messages per CPU-second of the system; peer: {streams}"),
        runs.sio_streams_tp.as_ref(),
        runs.sb_tp.as_ref(),
        Some(DURABLE_CPU_RATIO_STREAMS),
    );
    cpu_row(
        md,
        &format!("durable DMs: messages per CPU-second of the system; peer: {pair}"),
        runs.sio_tp.as_ref(),
        runs.sb_tp.as_ref(),
        None,
    );
    latency_rows(
        md,
        "durable DMs",
        runs.sio_lat.as_ref(),
        runs.sb_lat.as_ref(),
        false,
    );

    // Scaling from 2 to 4 servers.
    let s2 = runs.scale2.as_ref().and_then(|r| r.steps.first());
    let s4 = runs.scale4.as_ref().and_then(|r| r.steps.first());
    if s2.is_some() || s4.is_some() {
        let ratio = match (s2, s4) {
            (Some(a), Some(b)) if a.cpu_us_per_msg > 0.0 => {
                Some(b.cpu_us_per_msg / a.cpu_us_per_msg)
            }
            _ => None,
        };
        let _ = writeln!(
            md,
            "| Switchboard CPU per durable DM, 2 → 4 servers at {} msg/s | – | {} → {} | {} | roughly flat (≤ {SCALE_FLAT}x) | {} |",
            dash(s2.or(s4).map(|s| s.rate), |r| thousands(r as f64)),
            dash(s2, |s| format!("{:.1} µs", s.cpu_us_per_msg)),
            dash(s4, |s| format!("{:.1} µs", s.cpu_us_per_msg)),
            dash(ratio, |r| format!("{r:.2}x")),
            verdict(ratio.map(|r| r <= SCALE_FLAT))
        );
    }
}

/// Server RSS per idle connection against the peer's; `ratio_target` says
/// whether the "times lighter" part of the target applies to this row.
fn idle_row(
    md: &mut String,
    what: &str,
    peer: Option<&Report>,
    ours: Option<&Report>,
    ratio_target: bool,
) {
    let peer = peer.and_then(|r| r.idle.as_ref());
    let ours = ours.and_then(|r| r.idle.as_ref());
    let conns = ours.or(peer).map(|i| i.opened).unwrap_or(0);
    let ratio = match (peer, ours) {
        (Some(p), Some(o)) if o.bytes_per_conn > 0.0 => Some(p.bytes_per_conn / o.bytes_per_conn),
        _ => None,
    };
    let ok = ours.map(|o| {
        o.bytes_per_conn <= IDLE_MAX_BYTES
            && (!ratio_target || ratio.is_some_and(|r| r >= IDLE_RATIO))
    });
    let target = if ratio_target {
        format!(
            "≤ {:.0} KiB and ≥ {IDLE_RATIO:.0}x lighter",
            IDLE_MAX_BYTES / 1024.0
        )
    } else {
        format!("≤ {:.0} KiB", IDLE_MAX_BYTES / 1024.0)
    };
    let _ = writeln!(
        md,
        "| server RSS per idle {what} connection ({} on one process); peer: Socket.IO (WebSocket) | {} | {} | {} | {target} | {} |",
        thousands(conns as f64),
        dash(peer, |p| kib(p.bytes_per_conn)),
        dash(ours, |o| kib(o.bytes_per_conn)),
        match (peer, ours) {
            (Some(p), Some(o)) =>
                better_when_lower(p.bytes_per_conn, o.bytes_per_conn, "lighter", "heavier"),
            _ => "–".to_owned(),
        },
        verdict(ok)
    );
}

/// Highest sustained rate of two ladders; ours at least `min` times the peer's.
fn rate_row(
    md: &mut String,
    measure: &str,
    peer: Option<&Report>,
    ours: Option<&Report>,
    min: f64,
) {
    let peer_max = peer.and_then(|r| r.max_sustained_rate);
    let ours_max = ours.and_then(|r| r.max_sustained_rate);
    let ratio = match (peer_max, ours_max) {
        (Some(p), Some(o)) if p > 0 => Some(o as f64 / p as f64),
        (Some(_), None) if ours.is_some() => Some(0.0),
        _ => None,
    };
    let bound_ms = ours
        .into_iter()
        .chain(peer)
        .flat_map(|r| r.steps.first())
        .map(|s| s.p99_bound_ms)
        .find(|&b| b > 0)
        .unwrap_or(50);
    let _ = writeln!(
        md,
        "| {measure} (p99 ≤ {bound_ms} ms, none lost) | {} | {} | {} | ≥ {min}x | {} |",
        sustained(peer),
        sustained(ours),
        dash(ratio, |r| format!("{r:.2}x")),
        verdict(ratio.map(|r| r >= min))
    );
}

/// Messages per CPU-second at the same offered rate: the highest rate both
/// ladders ran, at most the peer's highest sustained one; then each at its
/// own highest sustained rate.
fn cpu_row(
    md: &mut String,
    measure: &str,
    peer: Option<&Report>,
    ours: Option<&Report>,
    min: Option<f64>,
) {
    let peer_max = peer.and_then(|r| r.max_sustained_rate);
    let ours_max = ours.and_then(|r| r.max_sustained_rate);
    let common = peer.zip(ours).and_then(|(p, o)| {
        let ran = |r: &Report, rate: u64| r.steps.iter().any(|s| s.rate == rate);
        let limit = peer_max.unwrap_or(u64::MAX);
        p.steps
            .iter()
            .map(|s| s.rate)
            .filter(|&rate| rate <= limit && ran(o, rate))
            .max()
    });
    let ratio_of = |p: Option<&TrafficResult>, o: Option<&TrafficResult>| match (p, o) {
        (Some(p), Some(o)) if p.msgs_per_cpu_s > 0.0 => Some(o.msgs_per_cpu_s / p.msgs_per_cpu_s),
        _ => None,
    };
    if let Some(rate) = common {
        let p = step_at(peer, rate);
        let o = step_at(ours, rate);
        let ratio = ratio_of(p, o);
        let _ = writeln!(
            md,
            "| {measure} at {} msg/s | {} | {} | {} | {} | {} |",
            thousands(rate as f64),
            dash(p, |s| thousands(s.msgs_per_cpu_s)),
            dash(o, |s| thousands(s.msgs_per_cpu_s)),
            dash(ratio, |r| format!("{r:.2}x")),
            min.map_or("(information)".to_owned(), |m| format!("≥ {m}x")),
            min.map_or("", |m| verdict(ratio.map(|r| r >= m)))
        );
    }
    let p = peer_max.and_then(|r| step_at(peer, r));
    let o = ours_max.and_then(|r| step_at(ours, r));
    if p.is_some() || o.is_some() {
        let at = |s: &TrafficResult| {
            format!(
                "{} (at {})",
                thousands(s.msgs_per_cpu_s),
                thousands(s.rate as f64)
            )
        };
        let _ = writeln!(
            md,
            "| {measure}, each at its own highest sustained rate | {} | {} | {} | (information) | |",
            dash(p, at),
            dash(o, at),
            dash(ratio_of(p, o), |r| format!("{r:.2}x"))
        );
    }
}

/// p50, p99 and p99.9 of two latency runs; with `p99_target`, ours must be
/// under [`LATENCY_P99_MS`] with nothing lost.
fn latency_rows(
    md: &mut String,
    what: &str,
    peer: Option<&Report>,
    ours: Option<&Report>,
    p99_target: bool,
) {
    let p = peer.and_then(|r| r.steps.first());
    let o = ours.and_then(|r| r.steps.first());
    if p.is_none() && o.is_none() {
        return;
    }
    let rate = o.or(p).map(|s| s.rate);
    let row = |md: &mut String,
               name: &str,
               f: fn(&TrafficResult) -> u64,
               target: Option<(bool, &str)>| {
        let _ = writeln!(
            md,
            "| {what}: {name} latency at {} msg/s (from intended send time); peer: Socket.IO redis-adapter pair | {} | {} | {} | {} | {} |",
            dash(rate, |r| thousands(r as f64)),
            dash(p, |s| ms(f(s))),
            dash(o, |s| ms(f(s))),
            match (p, o) {
                (Some(p), Some(o)) =>
                    better_when_lower(f(p) as f64, f(o) as f64, "lower", "higher"),
                _ => "–".to_owned(),
            },
            target.map_or("(information)", |t| t.1),
            target.map_or("", |t| verdict(Some(t.0)))
        );
    };
    row(md, "p50", |s| s.latency.p50_us, None);
    let p99_ok = o
        .filter(|_| p99_target)
        .map(|o| (o.latency.p99_us as f64) < LATENCY_P99_MS * 1000.0 && o.lost == 0);
    row(
        md,
        "p99",
        |s| s.latency.p99_us,
        p99_ok.map(|ok| (ok, "< 5 ms at half the pair's highest rate")),
    );
    row(md, "p99.9", |s| s.latency.p999_us, None);
}

fn details(md: &mut String, runs: &Runs) {
    md.push_str("\n### Every run\n\n");
    md.push_str("| system | scenario | servers | offered msg/s | sent | acked | delivered | recovered | lost | p50 | p99 | p99.9 | max | CPU s (system) | CPU s (tool) | msg per CPU-s | verdict |\n");
    md.push_str(
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in [
        &runs.sio_tp,
        &runs.sio_streams_tp,
        &runs.sb_tell_tp,
        &runs.sb_tp,
        &runs.sio_lat,
        &runs.sb_tell_lat,
        &runs.sb_lat,
        &runs.scale2,
        &runs.scale4,
    ]
    .into_iter()
    .flatten()
    {
        for s in &r.steps {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {} | {} |",
                r.label,
                if s.attempt > 1 {
                    format!("{} (attempt {})", r.scenario, s.attempt)
                } else {
                    r.scenario.clone()
                },
                s.servers,
                thousands(s.rate as f64),
                thousands(s.sent as f64),
                if r.system.durable() {
                    thousands(s.acked as f64)
                } else {
                    "–".into()
                },
                thousands(s.delivered as f64),
                thousands(s.recovered as f64),
                thousands(s.lost as f64),
                ms(s.latency.p50_us),
                ms(s.latency.p99_us),
                ms(s.latency.p999_us),
                ms(s.latency.max_us),
                s.usage.cpu_total_s,
                s.usage.tool_cpu_s,
                thousands(s.msgs_per_cpu_s),
                s.verdict
            );
        }
    }
    md.push_str("\n### Idle connections\n\n| system | connections | failed | still open after hold | connect rate /s | process | RSS before | RSS after | per connection |\n|---|---:|---:|---:|---:|---|---:|---:|---:|\n");
    for r in [&runs.sio_idle, &runs.sb_idle, &runs.sb_idle_tcp]
        .into_iter()
        .flatten()
    {
        let Some(i) = &r.idle else { continue };
        for s in &i.servers {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {:.0} MiB | {:.0} MiB | {} |",
                r.label,
                thousands(i.opened as f64),
                thousands(i.failed as f64),
                thousands(i.still_open as f64),
                thousands(i.connect_rate),
                s.name,
                s.rss_before as f64 / 1048576.0,
                s.rss_after as f64 / 1048576.0,
                kib(s.bytes_per_conn)
            );
        }
    }
}

fn plots(runs: &Runs) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let lat: Vec<Series> = [&runs.sio_lat, &runs.sb_tell_lat, &runs.sb_lat]
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let s = r.steps.first()?;
            Some(Series {
                label: format!("{} ({} msg/s)", r.label, thousands(s.rate as f64)),
                points: s
                    .distribution
                    .iter()
                    .map(|&(p, us)| (p, us as f64 / 1000.0))
                    .collect(),
                passed: Vec::new(),
            })
        })
        .collect();
    if !lat.is_empty() {
        out.push((
            "latency.svg".to_owned(),
            svg::latency_distribution("Latency distribution, cross-server direct messages", &lat),
        ));
    }
    let ladders: Vec<&Report> = [
        &runs.sio_tp,
        &runs.sio_streams_tp,
        &runs.sb_tell_tp,
        &runs.sb_tp,
    ]
    .into_iter()
    .flatten()
    .collect();
    if !ladders.is_empty() {
        let (d, p) = throughput_series(&ladders);
        out.push((
            "throughput.svg".to_owned(),
            svg::throughput_curve("Throughput, cross-server direct messages", &d, &p, 50.0),
        ));
    }
    out
}

/// The delivered-rate and p99 series of throughput reports.
pub fn throughput_series(reports: &[&Report]) -> (Vec<Series>, Vec<Series>) {
    let mut delivered = Vec::new();
    let mut p99 = Vec::new();
    for r in reports {
        // One point per rate: its passing attempt, else its last.
        let mut rates: Vec<u64> = r.steps.iter().map(|s| s.rate).collect();
        rates.dedup();
        let steps: Vec<&TrafficResult> = rates
            .iter()
            .filter_map(|&rate| step_at(Some(r), rate))
            .collect();
        let passed: Vec<bool> = steps.iter().map(|s| s.passed).collect();
        delivered.push(Series {
            label: r.label.clone(),
            points: steps
                .iter()
                .map(|s| (s.rate as f64, s.achieved_rate))
                .collect(),
            passed: passed.clone(),
        });
        p99.push(Series {
            label: r.label.clone(),
            points: steps
                .iter()
                .map(|s| (s.rate as f64, s.latency.p99_us as f64 / 1000.0))
                .collect(),
            passed,
        });
    }
    (delivered, p99)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(20000.0), "20,000");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(ms(2345), "2.35 ms");
        assert_eq!(ms(123_456), "123 ms");
    }

    #[test]
    fn ratios_say_which_way() {
        assert_eq!(
            better_when_lower(14.0, 7.0, "lighter", "heavier"),
            "2.0x lighter"
        );
        assert_eq!(
            better_when_lower(5.0, 10.0, "lower", "higher"),
            "2.0x higher"
        );
        assert_eq!(better_when_lower(5.0, 0.0, "lower", "higher"), "–");
    }

    #[test]
    fn an_empty_directory_gives_dashes_not_a_panic() {
        let c = compare(Path::new("/nonexistent"));
        assert!(c.markdown.contains("| – |"));
        assert!(c.plots.is_empty());
    }
}
