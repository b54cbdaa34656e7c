//! CPU time and memory of the processes under test, read from `/proc`.
//!
//! CPU is `utime + stime` of `/proc/PID/stat` (all threads of the process),
//! memory is `VmRSS` of `/proc/PID/status`. Results are deltas between two
//! [`Snapshot`]s, so a noisy machine shows up as fewer messages per
//! CPU-second rather than as a silently lower rate.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Clock ticks per second of `/proc/PID/stat` (`USER_HZ`). The kernel
/// reports in this unit whatever its internal tick rate; it is 100 on every
/// architecture this tool runs on (read without `sysconf`, since the
/// workspace forbids `unsafe`).
const USER_HZ: f64 = 100.0;

/// One process to watch, named for the reports (`server-a`, `relay`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proc {
    /// Name shown in tables and JSON.
    pub name: String,
    /// Process id.
    pub pid: u32,
}

impl fmt::Display for Proc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.pid)
    }
}

impl FromStr for Proc {
    type Err = String;

    /// `NAME=PID`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, pid) = s
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=PID, got {s:?}"))?;
        let pid = pid.parse().map_err(|_| format!("bad pid in {s:?}"))?;
        if name.is_empty() {
            return Err(format!("empty name in {s:?}"));
        }
        Ok(Proc {
            name: name.to_owned(),
            pid,
        })
    }
}

/// What one read of a process shows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// User plus system CPU, seconds since the process started.
    pub cpu_s: f64,
    /// Resident set size, bytes.
    pub rss: u64,
}

/// Reads one process; `None` when it is gone or unreadable.
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Sample {
        cpu_s: parse_cpu_ticks(&stat)? as f64 / USER_HZ,
        rss: parse_rss_kib(&status)? * 1024,
    })
}

/// `utime + stime` from a `/proc/PID/stat` line. The command name (field 2)
/// is in parentheses and may hold spaces, so fields are counted after the
/// last `)`: state is field 3, utime 14, stime 15.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS:   1234 kB` from `/proc/PID/status`.
fn parse_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Busy CPU seconds of the whole machine (all cores) since boot, from the
/// first line of `/proc/stat`: user, nice, system, irq, softirq and steal
/// (idle and iowait left out).
pub fn machine_busy_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_busy(stat.lines().next()?)
}

fn parse_machine_busy(line: &str) -> Option<f64> {
    let f: Vec<u64> = line
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    Some(busy as f64 / USER_HZ)
}

/// The watched processes plus the tool itself, read at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    samples: Vec<(String, Option<Sample>)>,
    tool: Sample,
    machine_busy_s: f64,
}

/// Every watched process plus this one.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    procs: Vec<Proc>,
}

impl Watch {
    /// Watches these processes.
    pub fn new(procs: Vec<Proc>) -> Self {
        Watch { procs }
    }

    /// The watched processes.
    pub fn procs(&self) -> &[Proc] {
        &self.procs
    }

    /// Reads them all now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            samples: self
                .procs
                .iter()
                .map(|p| (p.name.clone(), sample(p.pid)))
                .collect(),
            tool: sample(std::process::id()).unwrap_or_default(),
            machine_busy_s: machine_busy_s().unwrap_or(0.0),
        }
    }
}

/// CPU and memory between two snapshots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU seconds used by each watched process in the interval.
    pub cpu_s: BTreeMap<String, f64>,
    /// Sum of `cpu_s`: the system under test.
    pub cpu_total_s: f64,
    /// CPU seconds of the load tool itself (it shares the cores).
    pub tool_cpu_s: f64,
    /// CPU seconds used by everything else on the machine meanwhile (other
    /// builds, other tests): the noise. Large values make a run suspect.
    #[serde(default)]
    pub other_cpu_s: f64,
    /// RSS of each watched process at the end, bytes.
    pub rss_end: BTreeMap<String, u64>,
    /// RSS growth of each watched process over the interval, bytes.
    pub rss_growth: BTreeMap<String, i64>,
}

impl Snapshot {
    /// What happened from `self` to `later`.
    pub fn usage_until(&self, later: &Snapshot) -> Usage {
        let mut u = Usage::default();
        for ((name, a), (_, b)) in self.samples.iter().zip(&later.samples) {
            if let (Some(a), Some(b)) = (a, b) {
                let cpu = (b.cpu_s - a.cpu_s).max(0.0);
                u.cpu_s.insert(name.clone(), cpu);
                u.cpu_total_s += cpu;
                u.rss_end.insert(name.clone(), b.rss);
                u.rss_growth
                    .insert(name.clone(), b.rss as i64 - a.rss as i64);
            }
        }
        u.tool_cpu_s = (later.tool.cpu_s - self.tool.cpu_s).max(0.0);
        u.other_cpu_s =
            (later.machine_busy_s - self.machine_busy_s - u.cpu_total_s - u.tool_cpu_s).max(0.0);
        u
    }

    /// RSS of the named process, bytes.
    pub fn rss(&self, name: &str) -> Option<u64> {
        self.samples
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, s)| s.map(|s| s.rss))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (node server (x)) S 1 4242 4242 0 -1 4194560 1 0 0 0 \
                    250 75 0 0 20 0 11 0 123 456 789";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
    }

    #[test]
    fn rss_comes_from_vmrss() {
        let status = "Name:\tredis\nVmPeak:\t 9999 kB\nVmRSS:\t    5120 kB\nThreads:\t4\n";
        assert_eq!(parse_rss_kib(status), Some(5120));
    }

    #[test]
    fn machine_busy_time_leaves_out_idle_and_iowait() {
        let line = "cpu  100 5 50 9000 40 3 2 0 0 0";
        assert_eq!(parse_machine_busy(line), Some(1.6));
        assert!(machine_busy_s().is_some_and(|s| s > 0.0));
    }

    #[test]
    fn this_process_can_be_read() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss > 0);
    }

    #[test]
    fn procs_parse_from_name_equals_pid() {
        let p: Proc = "relay=77".parse().expect("parses");
        assert_eq!(
            p,
            Proc {
                name: "relay".into(),
                pid: 77
            }
        );
        assert!("relay".parse::<Proc>().is_err());
        assert!("=3".parse::<Proc>().is_err());
    }
}
