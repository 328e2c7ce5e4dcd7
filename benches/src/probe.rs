//! What the harness reads from the host: CPU time of processes (`/proc/<pid>/stat`),
//! the system's softirq and busy time (`/proc/stat`), resident memory
//! (`/proc/<pid>/status`), the processes of a namespace (`ip netns pids`), and the
//! machine description of the report.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

/// Clock ticks per second of `/proc` CPU times (`getconf CLK_TCK`, 100 if unknown).
pub fn clk_tck() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Pids of the processes in network namespace `ns`.
pub fn ns_pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// utime + stime + cutime + cstime of `pid`, in ticks (children's times count once
/// they are reaped, so a forking proxy's short-lived children are included).
pub fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu_ticks(&text)
}

/// The CPU fields of a `/proc/<pid>/stat` line (the command name may hold spaces and
/// parentheses, so fields are counted after the last `)`).
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14 → index 11.
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(get(11)? + get(12)? + get(13)? + get(14)?)
}

/// CPU ticks per pid of every process in `namespaces`.
pub fn ns_cpu_ticks(namespaces: &[String]) -> BTreeMap<u32, u64> {
    let mut m = BTreeMap::new();
    for ns in namespaces {
        for pid in ns_pids(ns) {
            if let Some(t) = proc_cpu_ticks(pid) {
                m.insert(pid, t);
            }
        }
    }
    m
}

/// CPU seconds spent between two [`ns_cpu_ticks`] samples (a pid new in `after` counts
/// whole).
pub fn cpu_seconds_between(before: &BTreeMap<u32, u64>, after: &BTreeMap<u32, u64>) -> f64 {
    let ticks: u64 = after
        .iter()
        .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum();
    ticks as f64 / clk_tck()
}

/// System-wide CPU time from the first line of `/proc/stat`, in ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SystemCpu {
    /// Time in softirq (where veth delivery, kernel forwarding and XDP run).
    pub softirq: u64,
    /// Everything but idle and iowait.
    pub busy: u64,
}

impl SystemCpu {
    /// Reads `/proc/stat`.
    pub fn read() -> SystemCpu {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| Self::parse(&t))
            .unwrap_or_default()
    }

    /// Parses the aggregate `cpu` line.
    pub fn parse(text: &str) -> Option<SystemCpu> {
        let line = text.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
        // already inside user/nice.
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
        Some(SystemCpu {
            softirq: *v.get(6)?,
            busy: total.saturating_sub(idle),
        })
    }

    /// (softirq, busy) seconds from `self` to `later`.
    pub fn seconds_until(&self, later: &SystemCpu) -> (f64, f64) {
        (
            later.softirq.saturating_sub(self.softirq) as f64 / clk_tck(),
            later.busy.saturating_sub(self.busy) as f64 / clk_tck(),
        )
    }
}

/// `VmRSS` of `pid`, bytes.
pub fn vm_rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Sum of `VmRSS` of every process in `ns`.
pub fn ns_rss_bytes(ns: &str) -> u64 {
    ns_pids(ns).into_iter().filter_map(vm_rss_bytes).sum()
}

/// The machine a report was measured on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_bytes: u64,
    /// `uname -r`.
    pub kernel: String,
}

impl Machine {
    /// Reads `/proc`.
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total_bytes = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            mem_total_bytes,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

/// Git commit of the checkout holding `dir` (`+dirty` appended when the tree has
/// changes), or `unknown`.
pub fn git_commit(dir: &Path) -> String {
    let run = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "HEAD"]) {
        Some(c) => {
            let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{c}+dirty")
            } else {
                c
            }
        }
        None => "unknown".into(),
    }
}

/// First line of `program args` (a version banner), or `unavailable`.
pub fn tool_version(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unavailable".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_odd_comm() {
        let line = "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    70 30 5 2 20 0 1 0 100 1000 10";
        assert_eq!(parse_stat_cpu_ticks(line), Some(107));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn proc_stat_cpu_line() {
        let t = "cpu  100 5 50 1000 20 3 40 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        let s = SystemCpu::parse(t).unwrap();
        assert_eq!(s.softirq, 40);
        assert_eq!(s.busy, 100 + 5 + 50 + 3 + 40);
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(proc_cpu_ticks(pid).is_some());
        assert!(vm_rss_bytes(pid).unwrap() > 0);
    }
}
