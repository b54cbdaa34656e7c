//! Plots as hand-written SVG: the latency percentile distribution (the
//! tail stretched out, as HdrHistogram plots do) and the throughput curve
//! (delivered rate and p99 latency against the offered rate). No plotting
//! library: a few axes, polylines and labels.

use std::fmt::Write as _;

const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
];
const FONT: &str = r#"font-family="sans-serif" font-size="12""#;

/// One line on a plot.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// `(x, y)` in data units.
    pub points: Vec<(f64, f64)>,
    /// Per point: drawn filled (passed) or hollow (failed). Empty: all filled.
    pub passed: Vec<bool>,
}

/// A linear or logarithmic axis mapped onto a pixel range.
#[derive(Debug, Clone, Copy)]
struct Axis {
    min: f64,
    max: f64,
    log: bool,
    from_px: f64,
    to_px: f64,
}

impl Axis {
    fn new(min: f64, max: f64, log: bool, from_px: f64, to_px: f64) -> Self {
        let (min, max) = if log {
            let lo = 10f64.powf(min.max(1e-9).log10().floor());
            let hi = 10f64.powf(max.max(lo * 10.0).log10().ceil());
            (lo, if hi <= lo { lo * 10.0 } else { hi })
        } else {
            let hi = nice_ceiling(max.max(min + 1e-9));
            (min, hi)
        };
        Axis {
            min,
            max,
            log,
            from_px,
            to_px,
        }
    }

    fn px(&self, v: f64) -> f64 {
        let t = if self.log {
            (v.max(self.min).log10() - self.min.log10()) / (self.max.log10() - self.min.log10())
        } else {
            (v - self.min) / (self.max - self.min)
        };
        self.from_px + t.clamp(0.0, 1.0) * (self.to_px - self.from_px)
    }

    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let mut t = Vec::new();
            let mut v = self.min;
            while v <= self.max * 1.0001 {
                t.push(v);
                v *= 10.0;
            }
            t
        } else {
            let step = nice_step((self.max - self.min) / 5.0);
            let mut t = Vec::new();
            let mut v = self.min;
            while v <= self.max + step * 1e-6 {
                t.push(v);
                v += step;
            }
            t
        }
    }
}

fn nice_step(raw: f64) -> f64 {
    let mag = 10f64.powf(raw.max(1e-9).log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 2.5 {
        2.5
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn nice_ceiling(v: f64) -> f64 {
    let step = nice_step(v / 5.0);
    (v / step).ceil() * step
}

/// A number as a short label: 0.1, 2, 15k, 1.5M.
fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A plot panel: frame, grid and tick labels; returns the SVG and its axes.
struct Panel {
    x: Axis,
    y: Axis,
    x_labels: Vec<(f64, String)>,
}

impl Panel {
    fn draw(&self, out: &mut String, title: &str, x_title: &str, y_title: &str) {
        let (l, r) = (self.x.from_px, self.x.to_px);
        let (b, t) = (self.y.from_px, self.y.to_px);
        let _ = write!(
            out,
            r##"<rect x="{l}" y="{t}" width="{}" height="{}" fill="none" stroke="#444"/>"##,
            r - l,
            b - t
        );
        for v in self.y.ticks() {
            let y = self.y.px(v);
            let _ = write!(
                out,
                r##"<line x1="{l}" y1="{y:.1}" x2="{r}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end" {FONT}>{}</text>"##,
                l - 6.0,
                y + 4.0,
                short(v)
            );
        }
        for (v, label) in &self.x_labels {
            let x = self.x.px(*v);
            let _ = write!(
                out,
                r##"<line x1="{x:.1}" y1="{t}" x2="{x:.1}" y2="{b}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle" {FONT}>{}</text>"##,
                b + 16.0,
                escape(label)
            );
        }
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle" font-family="sans-serif" font-size="14" font-weight="bold">{}</text>"#,
            (l + r) / 2.0,
            t - 10.0,
            escape(title)
        );
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{}" text-anchor="middle" {FONT}>{}</text>"#,
            (l + r) / 2.0,
            b + 34.0,
            escape(x_title)
        );
        let _ = write!(
            out,
            r#"<text transform="translate({},{:.1}) rotate(-90)" text-anchor="middle" {FONT}>{}</text>"#,
            l - 44.0,
            (t + b) / 2.0,
            escape(y_title)
        );
    }

    fn line(&self, out: &mut String, s: &Series, color: &str, markers: bool) {
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", self.x.px(x), self.y.px(y)))
            .collect();
        let _ = write!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            pts.join(" ")
        );
        if markers {
            for (i, &(x, y)) in s.points.iter().enumerate() {
                let ok = s.passed.get(i).copied().unwrap_or(true);
                let _ = write!(
                    out,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{}" stroke="{color}" stroke-width="2"/>"#,
                    self.x.px(x),
                    self.y.px(y),
                    if ok { color } else { "white" }
                );
            }
        }
    }
}

fn legend(out: &mut String, series: &[Series], x: f64, y: f64) {
    for (i, s) in series.iter().enumerate() {
        let yy = y + i as f64 * 18.0;
        let _ = write!(
            out,
            r#"<line x1="{x}" y1="{yy}" x2="{}" y2="{yy}" stroke="{}" stroke-width="3"/><text x="{}" y="{}" {FONT}>{}</text>"#,
            x + 22.0,
            COLORS[i % COLORS.len()],
            x + 28.0,
            yy + 4.0,
            escape(&s.label)
        );
    }
}

fn header(width: u32, height: u32) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}"><rect width="100%" height="100%" fill="white"/>"#
    )
}

/// Percentile positions on the stretched x axis: `-log10(1 - p)`.
const NINES: &[(f64, &str)] = &[
    (0.0, "0%"),
    (1.0, "90%"),
    (2.0, "99%"),
    (3.0, "99.9%"),
    (4.0, "99.99%"),
    (5.0, "99.999%"),
];

/// The latency percentile distribution: each series' points are
/// `(percentile 0..=100, latency ms)`.
pub fn latency_distribution(title: &str, series: &[Series]) -> String {
    let stretched: Vec<Series> = series
        .iter()
        .map(|s| Series {
            label: s.label.clone(),
            points: s
                .points
                .iter()
                .map(|&(p, ms)| {
                    let rest = (1.0 - p / 100.0).max(1e-5);
                    ((-rest.log10()).min(5.0), ms)
                })
                .collect(),
            passed: Vec::new(),
        })
        .collect();
    let all = stretched.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (lo, hi) = all.fold((f64::MAX, 0f64), |(lo, hi), v| {
        (lo.min(v.max(0.001)), hi.max(v))
    });
    let (lo, hi) = if lo > hi { (0.1, 10.0) } else { (lo, hi) };
    let panel = Panel {
        x: Axis::new(0.0, 5.0, false, 80.0, 620.0),
        y: Axis::new(lo, hi, true, 380.0, 50.0),
        x_labels: NINES.iter().map(|&(v, l)| (v, l.to_owned())).collect(),
    };
    let mut out = header(940, 430);
    panel.draw(&mut out, title, "percentile", "latency (ms, log scale)");
    for (i, s) in stretched.iter().enumerate() {
        panel.line(&mut out, s, COLORS[i % COLORS.len()], false);
    }
    legend(&mut out, series, 632.0, 60.0);
    out.push_str("</svg>\n");
    out
}

/// The throughput curve: for each series, points are
/// `(offered msg/s, delivered msg/s)` in `delivered` and
/// `(offered msg/s, p99 ms)` in `p99`; hollow markers are failed steps.
pub fn throughput_curve(
    title: &str,
    delivered: &[Series],
    p99: &[Series],
    bound_ms: f64,
) -> String {
    let max_x = delivered
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let max_y = delivered
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(max_x, f64::max);
    let ticks = |axis: &Axis| -> Vec<(f64, String)> {
        axis.ticks().into_iter().map(|v| (v, short(v))).collect()
    };
    let x1 = Axis::new(0.0, max_x, false, 80.0, 460.0);
    let left = Panel {
        x: x1,
        y: Axis::new(0.0, max_y, false, 380.0, 60.0),
        x_labels: ticks(&x1),
    };
    let (lo, hi) = p99
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold((bound_ms, bound_ms), |(lo, hi), v| {
            (lo.min(v.max(0.01)), hi.max(v))
        });
    let x2 = Axis::new(0.0, max_x, false, 580.0, 960.0);
    let right = Panel {
        x: x2,
        y: Axis::new(lo, hi, true, 380.0, 60.0),
        x_labels: ticks(&x2),
    };
    let mut out = header(1180, 430);
    let _ = write!(
        out,
        r#"<text x="560" y="22" text-anchor="middle" font-family="sans-serif" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    left.draw(
        &mut out,
        "delivered vs offered",
        "offered (msg/s)",
        "delivered (msg/s)",
    );
    // The ideal: everything offered is delivered.
    let _ = write!(
        out,
        r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="4 4"/>"##,
        left.x.px(0.0),
        left.y.px(0.0),
        left.x.px(left.x.max.min(left.y.max)),
        left.y.px(left.x.max.min(left.y.max))
    );
    for (i, s) in delivered.iter().enumerate() {
        left.line(&mut out, s, COLORS[i % COLORS.len()], true);
    }
    right.draw(
        &mut out,
        "p99 latency vs offered",
        "offered (msg/s)",
        "p99 (ms, log scale)",
    );
    let by = right.y.px(bound_ms);
    let _ = write!(
        out,
        r##"<line x1="{}" y1="{by:.1}" x2="{}" y2="{by:.1}" stroke="#999" stroke-dasharray="6 3"/><text x="{}" y="{:.1}" text-anchor="end" {FONT} fill="#666">bound {} ms</text>"##,
        right.x.from_px,
        right.x.to_px,
        right.x.to_px - 4.0,
        by - 4.0,
        trim(bound_ms)
    );
    for (i, s) in p99.iter().enumerate() {
        right.line(&mut out, s, COLORS[i % COLORS.len()], true);
    }
    legend(&mut out, delivered, 975.0, 70.0);
    let _ = write!(
        out,
        r##"<text x="975" y="{}" {FONT} fill="#666">hollow: step failed</text>"##,
        70.0 + delivered.len() as f64 * 18.0 + 10.0
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(label: &str, points: &[(f64, f64)]) -> Series {
        Series {
            label: label.into(),
            points: points.to_vec(),
            passed: vec![true, false],
        }
    }

    #[test]
    fn plots_are_well_formed_svg() {
        let a = series(
            "Switchboard <fast>",
            &[(50.0, 1.0), (99.0, 3.0), (100.0, 9.0)],
        );
        let b = series("Socket.IO", &[(50.0, 2.0), (99.9, 30.0), (100.0, 200.0)]);
        let svg = latency_distribution("latency", &[a, b]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("&lt;fast&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 2);

        let d = series("Switchboard", &[(10_000.0, 9_990.0), (20_000.0, 15_000.0)]);
        let p = series("Switchboard", &[(10_000.0, 2.0), (20_000.0, 80.0)]);
        let svg = throughput_curve("throughput", &[d], &[p], 50.0);
        assert!(svg.contains("bound 50 ms"));
        assert!(
            svg.contains(r##"fill="white" stroke="#1f77b4""##),
            "a hollow marker for the failed step"
        );
    }

    #[test]
    fn axes_are_nice() {
        let a = Axis::new(0.0, 43_000.0, false, 0.0, 100.0);
        assert_eq!(a.max, 50_000.0);
        assert_eq!(
            a.ticks(),
            vec![0.0, 10_000.0, 20_000.0, 30_000.0, 40_000.0, 50_000.0]
        );
        let l = Axis::new(0.3, 240.0, true, 0.0, 100.0);
        assert_eq!((l.min, l.max), (0.1, 1000.0));
        assert_eq!(l.ticks().len(), 5);
        assert_eq!(short(15_000.0), "15k");
        assert_eq!(short(0.25), "0.25");
    }
}
