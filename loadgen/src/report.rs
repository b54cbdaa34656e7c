//! The results file: one JSON document per scenario run, with enough about
//! the machine and the target to read it later on its own.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::conn::Transport;
use crate::idle::IdleResult;
use crate::procs::Proc;
use crate::proto::System;
use crate::target::{ServerSpec, Target};
use crate::traffic::TrafficResult;

/// The machine a run was on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPUs this process may use.
    pub cpus: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// Memory, GiB.
    pub mem_gib: f64,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// Reads this machine.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default(),
            mem_gib: meminfo
                .lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
                .map_or(0.0, |kib| kib / (1024.0 * 1024.0)),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
        }
    }
}

/// One results file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// `sb-load <version>`.
    pub tool: String,
    /// The system driven.
    pub system: System,
    /// Its name in tables and plots.
    pub label: String,
    /// `idle`, `throughput`, `latency` or `smoke`.
    pub scenario: String,
    /// When the run started, seconds since the Unix epoch.
    pub started_unix: u64,
    /// Where it ran.
    pub machine: Machine,
    /// How clients connected.
    #[serde(default)]
    pub transport: Transport,
    /// Servers connected to.
    pub servers: Vec<ServerSpec>,
    /// Every process measured.
    pub procs: Vec<Proc>,
    /// Source addresses connected from.
    pub sources: usize,
    /// Idle scenario result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleResult>,
    /// Warm-up run (not judged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<TrafficResult>,
    /// Traffic runs, in order (one for latency and smoke).
    #[serde(default)]
    pub steps: Vec<TrafficResult>,
    /// Throughput: the highest rate that passed, every lower one passing too.
    #[serde(default)]
    pub max_sustained_rate: Option<u64>,
}

impl Report {
    /// An empty report of `scenario` against `target`.
    pub fn new(target: &Target, label: &str, scenario: &str) -> Self {
        Report {
            tool: format!("sb-load {}", env!("CARGO_PKG_VERSION")),
            system: target.system,
            label: label.to_owned(),
            scenario: scenario.to_owned(),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            machine: Machine::detect(),
            transport: target.transport,
            servers: target.servers.clone(),
            procs: target.watch.procs().to_vec(),
            sources: target.sources.len(),
            idle: None,
            warmup: None,
            steps: Vec::new(),
            max_sustained_rate: None,
        }
    }

    /// Writes it as pretty JSON.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, json + "\n")
    }

    /// Reads one.
    pub fn read(path: &Path) -> std::io::Result<Report> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }
}
