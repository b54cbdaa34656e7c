//! `sb-load`: flags, then one scenario of the `loadgen` library.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use loadgen::compare;
use loadgen::conn::Transport;
use loadgen::idle::{self, IdleConfig};
use loadgen::procs::Proc;
use loadgen::report::Report;
use loadgen::scenario::{self, Warmup};
use loadgen::svg::{self, Series};
use loadgen::target::{self, ServerSpec, Target};
use loadgen::{System, TrafficConfig, TrafficResult};

/// Load tool for Switchboard and its Socket.IO peer: idle connections,
/// throughput ladder, latency at a fixed rate, smoke run; JSON results and
/// SVG plots; CPU and memory of the servers from /proc.
#[derive(Parser)]
#[command(name = "sb-load", version)]
struct Cli {
    /// Tokio worker threads (default: one per CPU).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open many logged-in connections and report server memory per connection.
    Idle {
        #[command(flatten)]
        target: TargetArgs,
        /// Connections to open (spread over the servers).
        #[arg(long, default_value_t = 15_000)]
        connections: usize,
        /// Handshakes in flight at once.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Seconds to wait after the last login before reading memory.
        #[arg(long, default_value = "3", value_parser = secs)]
        settle: Duration,
        /// Seconds to hold the connections afterwards (counting breakage).
        #[arg(long, default_value = "5", value_parser = secs)]
        hold: Duration,
    },
    /// Step the rate up until p99 passes the bound or a message is lost.
    Throughput {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        traffic: TrafficArgs,
        /// Rates to try in order, messages per second.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "5000,10000,15000,20000,25000,30000,40000,50000,60000,80000"
        )]
        rates: Vec<u64>,
        /// Seconds per step.
        #[arg(long, default_value = "10", value_parser = secs)]
        duration: Duration,
        /// Run a failed step again this many times before the ladder stops.
        #[arg(long, default_value_t = 1)]
        retries: u32,
        /// Run every rate even after one failed.
        #[arg(long)]
        keep_going: bool,
    },
    /// One run at a fixed rate, for its latency distribution.
    Latency {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        traffic: TrafficArgs,
        /// Messages per second.
        #[arg(long)]
        rate: u64,
        /// Seconds.
        #[arg(long, default_value = "30", value_parser = secs)]
        duration: Duration,
    },
    /// A few hundred messages; fails unless every one is accounted for.
    Smoke {
        #[command(flatten)]
        target: TargetArgs,
        /// Messages in all.
        #[arg(long, default_value_t = 400)]
        messages: u64,
        /// Sender/receiver pairs.
        #[arg(long, default_value_t = 4)]
        pairs: usize,
    },
    /// Side-by-side table and plots from a directory of results files.
    Compare {
        /// Directory holding {sio,sb}-{idle,throughput,latency}.json and sb-scale-{2,4}.json.
        #[arg(long)]
        dir: PathBuf,
        /// Write the Markdown tables here (default: print them).
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Write latency.svg and throughput.svg into this directory.
        #[arg(long)]
        plots: Option<PathBuf>,
    },
}

/// What to drive and where results go.
#[derive(Args)]
struct TargetArgs {
    /// Which system the servers are.
    #[arg(long, value_enum, default_value = "switchboard")]
    system: System,
    /// How to connect: WebSocket, or lines over Switchboard's telnet port
    /// (give the servers' TCP addresses then).
    #[arg(long, value_enum, default_value = "ws")]
    transport: Transport,
    /// A server: HOST:PORT, or HOST:PORT@PID to measure its CPU and memory. Repeat per server.
    #[arg(long = "server", required = true)]
    servers: Vec<ServerSpec>,
    /// Another process of the system to measure, NAME=PID (relay, Redis, ...). Repeat.
    #[arg(long = "proc")]
    procs: Vec<Proc>,
    /// Connect from this many loopback source addresses (127.0.0.1, .2, ...).
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// Name in progress lines, tables and plots (default: the system's name).
    #[arg(long)]
    label: Option<String>,
    /// Write the results here as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Draw this run's plot here (SVG).
    #[arg(long)]
    svg: Option<PathBuf>,
    /// No progress line on stderr.
    #[arg(long)]
    quiet: bool,
}

impl TargetArgs {
    fn target(&self) -> anyhow::Result<Target> {
        if self.transport == Transport::Tcp && !self.system.is_switchboard() {
            bail!("--transport tcp is for Switchboard's telnet port only");
        }
        let sources: Vec<IpAddr> = target::loopback_sources(self.sources);
        let mut t = Target::new(
            self.system,
            self.servers.clone(),
            sources,
            self.procs.clone(),
        );
        t.transport = self.transport;
        Ok(t)
    }

    fn label(&self) -> String {
        self.label
            .clone()
            .unwrap_or_else(|| self.system.label().to_owned())
    }
}

/// The shape of traffic runs.
#[derive(Args)]
struct TrafficArgs {
    /// Sender/receiver user pairs (senders and receivers on different servers).
    #[arg(long, default_value_t = 200)]
    pairs: usize,
    /// Bytes of message text.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// A step passes when p99 is at most this many milliseconds.
    #[arg(long, default_value_t = 50)]
    p99_bound_ms: u64,
    /// Seconds to wait for the tail after the last send.
    #[arg(long, default_value = "5", value_parser = secs)]
    drain: Duration,
    /// Warm-up rate before measuring, msg/s (0: none).
    #[arg(long, default_value_t = 0)]
    warmup_rate: u64,
    /// Warm-up length, seconds.
    #[arg(long, default_value = "5", value_parser = secs)]
    warmup: Duration,
}

impl TrafficArgs {
    fn config(&self, rate: u64, duration: Duration, t: &TargetArgs) -> TrafficConfig {
        let mut c = TrafficConfig::new(rate, duration, self.pairs, String::new());
        c.size = self.size;
        c.p99_bound = Duration::from_millis(self.p99_bound_ms);
        c.drain = self.drain;
        c.progress = !t.quiet;
        c.label = t.label();
        c
    }

    fn warmup(&self) -> Option<Warmup> {
        Some(Warmup {
            rate: self.warmup_rate,
            duration: self.warmup,
        })
    }
}

fn secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("not a number of seconds: {s:?}"))?;
    Duration::try_from_secs_f64(v).map_err(|e| e.to_string())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build().context("tokio runtime")?;
    rt.block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Idle {
            target: t,
            connections,
            concurrency,
            settle,
            hold,
        } => {
            let target = t.target()?;
            let cfg = IdleConfig {
                connections,
                concurrency,
                settle,
                hold,
                prefix: scenario::unique_prefix("i"),
                progress: !t.quiet,
                label: t.label(),
            };
            let r = idle::run(&target, &cfg).await?;
            println!(
                "{}: {} of {} connections open ({} failed{}) at {:.0}/s; server RSS per connection: {}",
                t.label(),
                r.opened,
                r.connections,
                r.failed,
                r.first_error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default(),
                r.connect_rate,
                if r.servers.is_empty() {
                    "no server pid given".to_owned()
                } else {
                    r.servers
                        .iter()
                        .map(|s| format!("{} {:.0} B", s.name, s.bytes_per_conn))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            );
            let mut report = Report::new(&target, &t.label(), "idle");
            report.idle = Some(r);
            finish(&t, &report)
        }
        Command::Throughput {
            target: t,
            traffic,
            rates,
            duration,
            retries,
            keep_going,
        } => {
            let target = t.target()?;
            let cfg = traffic.config(0, duration, &t);
            let ladder =
                scenario::throughput(&target, &cfg, &rates, traffic.warmup(), retries, keep_going)
                    .await?;
            for s in &ladder.steps {
                print_step(&t.label(), s);
            }
            println!(
                "{}: highest sustained rate {}",
                t.label(),
                ladder
                    .max_sustained_rate
                    .map_or("none".to_owned(), |r| format!("{r} msg/s"))
            );
            let mut report = Report::new(&target, &t.label(), "throughput");
            report.warmup = ladder.warmup;
            report.steps = ladder.steps;
            report.max_sustained_rate = ladder.max_sustained_rate;
            finish(&t, &report)
        }
        Command::Latency {
            target: t,
            traffic,
            rate,
            duration,
        } => {
            let target = t.target()?;
            let cfg = traffic.config(rate, duration, &t);
            let (warmup, r) = scenario::latency(&target, &cfg, traffic.warmup()).await?;
            print_step(&t.label(), &r);
            let mut report = Report::new(&target, &t.label(), "latency");
            report.warmup = warmup;
            report.steps = vec![r];
            finish(&t, &report)
        }
        Command::Smoke {
            target: t,
            messages,
            pairs,
        } => {
            let target = t.target()?;
            let r = scenario::smoke(&target, messages, pairs).await?;
            print_step(&t.label(), &r);
            let mut report = Report::new(&target, &t.label(), "smoke");
            report.steps = vec![r.clone()];
            finish(&t, &report)?;
            if r.lost > 0 || r.delivered + r.recovered + r.errors != r.sent || r.sent != r.scheduled
            {
                bail!("smoke run did not account for every message: {}", r.verdict);
            }
            Ok(())
        }
        Command::Compare {
            dir,
            markdown,
            plots,
        } => {
            let c = compare::compare(&dir);
            match markdown {
                Some(p) => write(&p, &c.markdown)?,
                None => print!("{}", c.markdown),
            }
            if let Some(d) = plots {
                std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
                for (name, svg) in &c.plots {
                    write(&d.join(name), svg)?;
                }
            }
            Ok(())
        }
    }
}

fn print_step(label: &str, s: &TrafficResult) {
    println!(
        "{label} {} msg/s x {:.0} s, {} pairs over {} servers: sent {} acked {} delivered {} recovered {} lost {} | p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.1} ms | cpu {:.2} s ({:.0} msg per cpu-s), tool {:.2} s | {}",
        s.rate,
        s.duration_s,
        s.pairs,
        s.servers,
        s.sent,
        s.acked,
        s.delivered,
        s.recovered,
        s.lost,
        s.latency.p50_us as f64 / 1000.0,
        s.latency.p99_us as f64 / 1000.0,
        s.latency.p999_us as f64 / 1000.0,
        s.latency.max_us as f64 / 1000.0,
        s.usage.cpu_total_s,
        s.msgs_per_cpu_s,
        s.usage.tool_cpu_s,
        s.verdict
    );
}

/// Writes the JSON and the plot this run asked for.
fn finish(t: &TargetArgs, report: &Report) -> anyhow::Result<()> {
    if let Some(p) = &t.out {
        report
            .write(p)
            .with_context(|| format!("write {}", p.display()))?;
    }
    if let Some(p) = &t.svg {
        let title = format!("{} {}", report.label, report.scenario);
        let plot = if report.scenario == "throughput" {
            let (d, l) = compare::throughput_series(&[report]);
            svg::throughput_curve(&title, &d, &l, 50.0)
        } else {
            let series: Vec<Series> = report
                .steps
                .iter()
                .map(|s| Series {
                    label: format!("{} msg/s", s.rate),
                    points: s
                        .distribution
                        .iter()
                        .map(|&(p, us)| (p, us as f64 / 1000.0))
                        .collect(),
                    passed: Vec::new(),
                })
                .collect();
            svg::latency_distribution(&title, &series)
        };
        write(p, &plot)?;
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}
