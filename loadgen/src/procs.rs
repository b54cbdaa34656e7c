//! CPU time and memory of the processes under test, read from `/proc`.
//!
//! CPU is `utime + stime` of `/proc/PID/stat` (all threads of the process)
//! plus the CPU of its child processes: those it has reaped (`cutime +
//! cstime`) and those still running (every `/proc/*/stat` whose parent it
//! is). Redis forks a child for each AOF rewrite, which compresses and
//! writes the whole dataset while the parent serves; that work is caused by
//! the data the system under test stores, so it is counted as Redis's
//! (before, it showed only as "other" CPU). Memory is `VmRSS` of
//! `/proc/PID/status`. Results are deltas between two
//! [`Snapshot`]s, so a noisy machine shows up as fewer messages per
//! CPU-second rather than as a silently lower rate.

use std::collections::{BTreeMap, HashMap};
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
    /// User plus system CPU, seconds since the process started, with its
    /// children's (reaped and running).
    pub cpu_s: f64,
    /// Resident set size, bytes.
    pub rss: u64,
    /// Times the main thread went to sleep and was woken (voluntary
    /// context switches): for a one-thread server, its event-loop turns
    /// that found nothing to do.
    pub wakeups: u64,
}

/// Reads one process; `None` when it is gone or unreadable.
pub fn sample(pid: u32) -> Option<Sample> {
    sample_with(pid, &running_children_ticks())
}

/// Reads one process, with `children` from [`running_children_ticks`] (read
/// once for every process of a snapshot).
fn sample_with(pid: u32, children: &HashMap<u32, u64>) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let own = parse_cpu_ticks(&stat)?;
    let running = children.get(&pid).copied().unwrap_or(0);
    Some(Sample {
        cpu_s: (own + running) as f64 / USER_HZ,
        rss: parse_rss_kib(&status)? * 1024,
        wakeups: parse_wakeups(&status).unwrap_or(0),
    })
}

/// The fields of a `/proc/PID/stat` line after the command name (field 2),
/// which is in parentheses and may hold spaces: the first is field 3.
fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace())
}

/// `utime + stime + cutime + cstime` (fields 14 to 17) from a
/// `/proc/PID/stat` line: the process and the children it has reaped.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat_fields(stat)?.skip(11);
    let mut ticks = 0;
    for _ in 0..4 {
        // cutime and cstime are signed in the kernel's format.
        let v: i64 = fields.next()?.parse().ok()?;
        ticks += v.max(0) as u64;
    }
    Some(ticks)
}

/// The parent pid (field 4) and `utime + stime` of a `/proc/PID/stat` line.
fn parse_parent_and_own_ticks(stat: &str) -> Option<(u32, u64)> {
    let mut fields = stat_fields(stat)?.skip(1);
    let ppid = fields.next()?.parse().ok()?;
    let mut fields = fields.skip(9);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// CPU ticks of every running process, summed by parent pid: for a
/// watched process, its children not yet in its `cutime` (a Redis AOF
/// rewrite in progress). A child reaped between this read and its parent's
/// is missed for that one sample.
fn running_children_ticks() -> HashMap<u32, u64> {
    let mut by_parent = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return by_parent;
    };
    let stats = dir
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok());
    for (ppid, ticks) in stats.filter_map(|stat| parse_parent_and_own_ticks(&stat)) {
        *by_parent.entry(ppid).or_insert(0) += ticks;
    }
    by_parent
}

/// `VmRSS:   1234 kB` from `/proc/PID/status`.
fn parse_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `voluntary_ctxt_switches:  42` from `/proc/PID/status` (main thread).
fn parse_wakeups(status: &str) -> Option<u64> {
    let line = status
        .lines()
        .find(|l| l.starts_with("voluntary_ctxt_switches:"))?;
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
        let children = running_children_ticks();
        Snapshot {
            samples: self
                .procs
                .iter()
                .map(|p| (p.name.clone(), sample_with(p.pid, &children)))
                .collect(),
            tool: sample_with(std::process::id(), &children).unwrap_or_default(),
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
    /// Wake-ups of each watched process's main thread in the interval
    /// ([`Sample::wakeups`]).
    #[serde(default)]
    pub wakeups: BTreeMap<String, u64>,
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
                u.wakeups
                    .insert(name.clone(), b.wakeups.saturating_sub(a.wakeups));
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
                    250 75 30 12 20 0 11 0 123 456 789";
        assert_eq!(parse_cpu_ticks(stat), Some(367));
        assert_eq!(parse_parent_and_own_ticks(stat), Some((1, 325)));
    }

    #[test]
    fn a_running_child_counts_for_its_parent() {
        let own = std::process::id();
        // A child that burns CPU until killed.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("sh runs");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut seen = 0;
        while seen < 5 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            seen = running_children_ticks().get(&own).copied().unwrap_or(0);
        }
        child.kill().expect("kill");
        child.wait().expect("reaped");
        assert!(seen >= 5, "the busy child's ticks were not counted: {seen}");
        // Once reaped, the child's time is in this process's own cutime.
        let stat = std::fs::read_to_string("/proc/self/stat").expect("own stat");
        let with_reaped = parse_cpu_ticks(&stat).expect("parses");
        let (_, own_only) = parse_parent_and_own_ticks(&stat).expect("parses");
        assert!(
            with_reaped >= own_only + seen,
            "{with_reaped} < {own_only} + {seen}"
        );
    }

    #[test]
    fn rss_comes_from_vmrss() {
        let status = "Name:\tredis\nVmPeak:\t 9999 kB\nVmRSS:\t    5120 kB\nThreads:\t4\n";
        assert_eq!(parse_rss_kib(status), Some(5120));
    }

    #[test]
    fn wakeups_are_the_voluntary_context_switches() {
        let status =
            "Name:\tredis\nvoluntary_ctxt_switches:\t1234\nnonvoluntary_ctxt_switches:\t56\n";
        assert_eq!(parse_wakeups(status), Some(1234));
        assert_eq!(parse_wakeups("Name:\tx\n"), None);
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
