//! The result file (`result.json`), its figures, the terminal table and the targets.
//!
//! Every measurement is a named *figure* (`throughput_1s_fwd_mbps`, `latency_64_p99_us`,
//! ...) with one value per round. A gateway's medians over rounds are compared with the
//! `kernel` gateway's medians of the same run: `ratios[figure] = median / kernel median`.
//! [`figure_meta`] says which way is better and whether `compare` looks at the ratio or
//! at the absolute median (figures the kernel has no value for, such as memory per
//! connection).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::probe::Machine;
use crate::stats;

/// `schema` of the files this version writes.
pub const SCHEMA: &str = "xdpmesh-bench/1";

/// Name of the baseline gateway type that ratios are computed against.
pub const KERNEL: &str = "kernel";

/// A whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub schema: String,
    pub started_unix: u64,
    pub finished_unix: u64,
    pub machine: Machine,
    /// `git rev-parse HEAD` of the workspace (`+dirty` when it had changes).
    pub git_commit: String,
    /// Versions of the harness and the tools it drives.
    pub versions: BTreeMap<String, String>,
    /// The options of the run.
    pub config: serde_json::Value,
    /// The links' MTUs of every gateway type's topology. Files written before this field
    /// existed have none and read as 1500 both: the harness then always used 1500.
    #[serde(default)]
    pub mtu: Mtus,
    pub gateways: Vec<GatewayReport>,
    pub targets: Vec<TargetCheck>,
}

/// The MTUs of the topology's links.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mtus {
    /// Client ↔ gateway A and gateway B ↔ server (`TopologyOpts::pod_mtu`).
    pub pod: u32,
    /// Gateway A ↔ gateway B (`TopologyOpts::uplink_mtu`).
    pub uplink: u32,
}

impl Default for Mtus {
    fn default() -> Self {
        Mtus {
            pod: xdpmesh_netns::topology::DEFAULT_MTU,
            uplink: xdpmesh_netns::topology::DEFAULT_MTU,
        }
    }
}

impl Mtus {
    /// From `--mtu` (both links), `--pod-mtu` and `--uplink-mtu` (each overrides
    /// `--mtu` for its link); 1500 where none is given.
    pub fn from_flags(mtu: Option<u32>, pod: Option<u32>, uplink: Option<u32>) -> Mtus {
        let d = Mtus::default();
        Mtus {
            pod: pod.or(mtu).unwrap_or(d.pod),
            uplink: uplink.or(mtu).unwrap_or(d.uplink),
        }
    }
}

impl std::fmt::Display for Mtus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pod MTU {}, uplink MTU {}", self.pod, self.uplink)
    }
}

/// One gateway type over all rounds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GatewayReport {
    /// `kernel`, `kernel-offload`, `xdpmesh-tcp`, `xdpmesh-hbone`, `external:<name>`.
    pub name: String,
    /// `ok`, `unsupported: <reason>` or `error: <first error>` (worst of its rounds).
    pub status: String,
    pub rounds: Vec<RoundReport>,
    /// Median per figure over the rounds that measured it.
    pub medians: BTreeMap<String, f64>,
    /// `medians[f] / kernel.medians[f]` (only when the run measured `kernel` too).
    pub ratios: BTreeMap<String, f64>,
    /// Figures that have no value for this gateway type, with the reason.
    pub not_applicable: BTreeMap<String, String>,
}

/// One gateway type in one round.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundReport {
    pub round: u32,
    /// `ok`, `unsupported: <reason>`, or `error: <reason>` (the gateways or the traffic
    /// probe failed, so no scenario ran).
    pub status: String,
    pub figures: BTreeMap<String, f64>,
    /// Scenario → error, for scenarios that failed in this round.
    pub errors: BTreeMap<String, String>,
    /// Scenario → error of a first attempt that failed while the retry passed (smoke
    /// mode retries a failed scenario once). Reported, never silently dropped: a
    /// scenario that shows up here again and again is a bug to chase.
    #[serde(default)]
    pub retried: BTreeMap<String, String>,
    /// Message size → `[latency_us, quantile]` CDF points of the ping-pong.
    pub latency_cdf: BTreeMap<String, Vec<[f64; 2]>>,
    /// Everything else worth keeping (error samples of the load generators, ...).
    pub details: BTreeMap<String, serde_json::Value>,
    /// Wall-clock seconds of the round.
    pub seconds: f64,
}

/// One target line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetCheck {
    pub gateway: String,
    pub name: String,
    /// `PASS`, `MISS` or `N/A`.
    pub verdict: String,
    pub value: Option<f64>,
    pub limit: Option<f64>,
    pub detail: String,
}

/// Which way a figure is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
    /// Informational: never a regression.
    Neither,
}

/// What `compare` looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    /// The ratio to the kernel of the same run.
    Ratio,
    /// The absolute median (figures the kernel has no value for).
    Absolute,
}

/// Label, unit, direction and comparison basis of a figure.
#[derive(Clone, Debug, PartialEq)]
pub struct FigureMeta {
    pub label: String,
    pub unit: &'static str,
    pub better: Better,
    pub basis: Basis,
}

/// Describes `name` (unknown names are informational).
pub fn figure_meta(name: &str) -> FigureMeta {
    let meta = |label: String, unit, better, basis| FigureMeta {
        label,
        unit,
        better,
        basis,
    };
    let parts: Vec<&str> = name.split('_').collect();
    match parts.as_slice() {
        ["throughput", streams, dir, "mbps"] => meta(
            format!(
                "throughput {} stream{} {}",
                streams.trim_end_matches('s'),
                if *streams == "1s" { "" } else { "s" },
                if *dir == "fwd" {
                    "client→server"
                } else {
                    "server→client (-R)"
                }
            ),
            "Mbit/s",
            Better::Higher,
            Basis::Ratio,
        ),
        ["throughput", streams, dir, "retransmits"] => meta(
            format!("retransmits {streams} {dir}"),
            "",
            Better::Neither,
            Basis::Ratio,
        ),
        ["latency", size, q, "us"] => {
            let better = if matches!(*q, "p50" | "p99") {
                Better::Lower
            } else {
                Better::Neither
            };
            let q = match *q {
                "p999" => "p99.9",
                other => other,
            };
            meta(format!("RTT {size} B {q}"), "µs", better, Basis::Ratio)
        }
        ["connrate", "per", "s"] => meta(
            "new conn + echo rate".into(),
            "conn/s",
            Better::Higher,
            Basis::Ratio,
        ),
        ["connrate", "first", "us"] => meta(
            "first conn + echo (fresh gateways)".into(),
            "µs",
            Better::Neither,
            Basis::Ratio,
        ),
        ["connrate", "first", "gw", "connect", "us"] => meta(
            "first conn: gateway A set-up".into(),
            "µs",
            Better::Neither,
            Basis::Absolute,
        ),
        ["connrate", "first", "tls", "us"] => meta(
            "first conn: tunnel TLS handshake".into(),
            "µs",
            Better::Neither,
            Basis::Absolute,
        ),
        ["connrate", "gw", "connect", "us"] => meta(
            "gateway A set-up mean (SYN → accepted)".into(),
            "µs",
            Better::Neither,
            Basis::Absolute,
        ),
        ["connrate", "tls", "handshakes"] => meta(
            "TLS handshakes during connrate".into(),
            "",
            Better::Neither,
            Basis::Absolute,
        ),
        ["connrate", q, "us"] => meta(
            format!("new conn + echo {q}"),
            "µs",
            if matches!(*q, "p50" | "p99") {
                Better::Lower
            } else {
                Better::Neither
            },
            Basis::Ratio,
        ),
        ["connrate", "errors"] => meta(
            "new conn errors".into(),
            "",
            Better::Neither,
            Basis::Absolute,
        ),
        ["concurrency", n, rest @ ..] => {
            let (what, unit, better, basis) = match rest {
                ["side", "mbps"] => ("side stream", "Mbit/s", Better::Higher, Basis::Ratio),
                ["side", "vs", "10"] => (
                    "side stream vs 10 open",
                    "x",
                    Better::Higher,
                    Basis::Absolute,
                ),
                ["bytes", "per", "conn"] => {
                    ("gateway mem per conn", "B", Better::Lower, Basis::Absolute)
                }
                ["rss", "bytes"] => (
                    "gateway RSS (max A/B)",
                    "B",
                    Better::Neither,
                    Basis::Absolute,
                ),
                ["open"] => ("connections open", "", Better::Neither, Basis::Absolute),
                ["errors"] => ("connection errors", "", Better::Neither, Basis::Absolute),
                _ => ("?", "", Better::Neither, Basis::Absolute),
            };
            meta(format!("{n} open: {what}"), unit, better, basis)
        }
        ["cpu", mode, rest @ ..] => {
            let mode = if *mode == "fixed" {
                "fixed rate"
            } else {
                "saturated"
            };
            let (what, unit, better, basis) = match rest {
                ["gw", "s", "per", "gib"] => (
                    "gateway procs CPU",
                    "CPU-s/GiB",
                    Better::Lower,
                    Basis::Absolute,
                ),
                ["softirq", "s", "per", "gib"] => {
                    ("softirq CPU", "CPU-s/GiB", Better::Neither, Basis::Ratio)
                }
                ["busy", "s", "per", "gib"] => {
                    ("all CPU", "CPU-s/GiB", Better::Lower, Basis::Ratio)
                }
                ["mbps"] => ("throughput", "Mbit/s", Better::Neither, Basis::Ratio),
                _ => ("?", "", Better::Neither, Basis::Ratio),
            };
            meta(format!("CPU {mode}: {what}"), unit, better, basis)
        }
        _ => meta(name.into(), "", Better::Neither, Basis::Absolute),
    }
}

/// Sort key that keeps scenarios together in a readable order.
fn figure_order(name: &str) -> (u8, u64, String) {
    let scenario = match name.split('_').next() {
        Some("throughput") => 0,
        Some("latency") => 1,
        Some("connrate") => 2,
        Some("concurrency") => 3,
        Some("cpu") => 4,
        _ => 5,
    };
    let num: u64 = name
        .split('_')
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let rank = |s: &str| {
        [
            "p50",
            "p90",
            "p99_",
            "p999",
            "max",
            "open",
            "errors",
            "side_mbps",
            "side_vs",
            "rss",
            "bytes_per",
        ]
        .iter()
        .position(|k| s.contains(k))
        .map_or(99, |p| p as u8)
    };
    (scenario, num, format!("{:02}{}", rank(name), name))
}

impl GatewayReport {
    /// Fills [`Self::medians`] from the rounds.
    pub fn compute_medians(&mut self) {
        let mut all: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for r in &self.rounds {
            for (k, v) in &r.figures {
                all.entry(k).or_default().push(*v);
            }
        }
        self.medians = all
            .into_iter()
            .filter_map(|(k, v)| stats::median(&v).map(|m| (k.to_string(), m)))
            .collect();
    }

    /// Status summarised over rounds: the first non-`ok` one, else `ok`.
    pub fn summarise_status(&mut self) {
        self.status = self
            .rounds
            .iter()
            .map(|r| r.status.clone())
            .find(|s| s != "ok")
            .unwrap_or_else(|| "ok".into());
    }

    /// Whether this gateway type is reported as not supported (not a failure).
    pub fn unsupported(&self) -> bool {
        self.status.starts_with("unsupported")
    }
}

impl BenchReport {
    /// Medians, ratios to the kernel and targets, from the rounds.
    pub fn finish(&mut self) {
        for g in &mut self.gateways {
            g.compute_medians();
            g.summarise_status();
        }
        let kernel = self
            .gateways
            .iter()
            .find(|g| g.name == KERNEL)
            .map(|g| g.medians.clone());
        for g in &mut self.gateways {
            g.ratios.clear();
            if let Some(k) = &kernel {
                for (f, v) in &g.medians {
                    if let Some(kv) = k.get(f) {
                        if *kv > 0.0 && v.is_finite() {
                            g.ratios.insert(f.clone(), v / kv);
                        }
                    }
                }
            }
        }
        self.targets = evaluate_targets(&self.gateways, self.mtu.pod > 1500);
    }

    /// Gateway by name.
    pub fn gateway(&self, name: &str) -> Option<&GatewayReport> {
        self.gateways.iter().find(|g| g.name == name)
    }

    /// Every scenario error of gateways that are not `unsupported`: (gateway, round,
    /// scenario, error).
    pub fn scenario_errors(&self) -> Vec<(String, u32, String, String)> {
        let mut out = Vec::new();
        for g in &self.gateways {
            if g.unsupported() {
                continue;
            }
            for r in &g.rounds {
                if r.status.starts_with("error") {
                    out.push((g.name.clone(), r.round, "setup".into(), r.status.clone()));
                }
                for (s, e) in &r.errors {
                    out.push((g.name.clone(), r.round, s.clone(), e.clone()));
                }
            }
        }
        out
    }

    /// The terminal table: a header line with the links' MTUs, then one row per figure,
    /// one column per gateway type with the median and the ratio to kernel; then the
    /// targets.
    pub fn table(&self) -> String {
        let mut figures: Vec<&String> = self
            .gateways
            .iter()
            .flat_map(|g| g.medians.keys())
            .collect();
        figures.sort_by_key(|f| figure_order(f));
        figures.dedup();
        let w0 = figures
            .iter()
            .map(|f| {
                let m = figure_meta(f);
                m.label.chars().count() + m.unit.chars().count() + 3
            })
            .max()
            .unwrap_or(10)
            .max(12);
        let wc = self
            .gateways
            .iter()
            .map(|g| g.name.chars().count())
            .max()
            .unwrap_or(0)
            .max(20);
        let mut s = String::new();
        let _ = writeln!(s, "links: {}", self.mtu);
        let _ = write!(s, "{:<w0$}", "figure (median; ratio to kernel)");
        for g in &self.gateways {
            let _ = write!(s, "  {:>wc$}", g.name);
        }
        s.push('\n');
        let _ = write!(s, "{:<w0$}", "status");
        for g in &self.gateways {
            let st: String = g.status.chars().take(wc).collect();
            let _ = write!(s, "  {st:>wc$}");
        }
        s.push('\n');
        for f in figures {
            let m = figure_meta(f);
            let label = if m.unit.is_empty() {
                m.label.clone()
            } else {
                format!("{} [{}]", m.label, m.unit)
            };
            let _ = write!(s, "{label:<w0$}");
            for g in &self.gateways {
                let cell = match g.medians.get(f) {
                    Some(v) => match g.ratios.get(f) {
                        Some(r) if g.name != KERNEL => format!("{} ({r:.2}x)", fmt_value(*v)),
                        _ => fmt_value(*v),
                    },
                    None if g.not_applicable.contains_key(f) => "N/A".into(),
                    None => "-".into(),
                };
                let _ = write!(s, "  {cell:>wc$}");
            }
            s.push('\n');
        }
        let na: Vec<String> = self
            .gateways
            .iter()
            .flat_map(|g| {
                g.not_applicable
                    .iter()
                    .map(move |(f, why)| format!("  N/A {} {f}: {why}", g.name))
            })
            .collect();
        if !na.is_empty() {
            s.push_str("not applicable:\n");
            let mut seen = std::collections::BTreeSet::new();
            for l in na {
                if seen.insert(l.clone()) {
                    s.push_str(&l);
                    s.push('\n');
                }
            }
        }
        if !self.targets.is_empty() {
            s.push_str("targets:\n");
            for t in &self.targets {
                let _ = writeln!(
                    s,
                    "  {:<4} {:<14} {}: {}",
                    t.verdict, t.gateway, t.name, t.detail
                );
            }
        }
        let mut retried = Vec::new();
        for g in &self.gateways {
            for r in &g.rounds {
                for (sc, e) in &r.retried {
                    let first = e.lines().next().unwrap_or_default();
                    retried.push(format!("  {} round {} {sc}: {first}", g.name, r.round));
                }
            }
        }
        if !retried.is_empty() {
            s.push_str("failed once, passed on the retry:\n");
            for l in retried {
                s.push_str(&l);
                s.push('\n');
            }
        }
        let errors = self.scenario_errors();
        if !errors.is_empty() {
            s.push_str("scenario errors:\n");
            for (g, r, sc, e) in errors {
                let first = e.lines().next().unwrap_or_default();
                let _ = writeln!(s, "  {g} round {r} {sc}: {first}");
            }
        }
        s
    }
}

/// A number with a precision that suits its size.
pub fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The performance issue's targets, evaluated for every `xdpmesh-*` gateway type of the
/// run (`jumbo`: the pod links' MTU is above 1500, which sets the CPU target). The
/// jumbo throughput target is against `kernel-offload` at MTU 1500, another run: it is
/// not evaluated here (benches/README.md, "Latest results").
pub fn evaluate_targets(gateways: &[GatewayReport], jumbo: bool) -> Vec<TargetCheck> {
    let kernel = gateways.iter().find(|g| g.name == KERNEL);
    let mut out = Vec::new();
    for g in gateways.iter().filter(|g| g.name.starts_with("xdpmesh-")) {
        if g.unsupported() {
            out.push(TargetCheck {
                gateway: g.name.clone(),
                name: "all targets".into(),
                verdict: "N/A".into(),
                value: None,
                limit: None,
                detail: format!("gateway {}", g.status),
            });
            continue;
        }
        let check =
            |name: &str, value: Option<f64>, limit: Option<f64>, higher_ok: bool, what: String| {
                let (verdict, detail) = {
                    match (value, limit) {
                        (Some(v), Some(l)) => {
                            let pass = if higher_ok { v >= l } else { v <= l };
                            (
                                if pass { "PASS" } else { "MISS" },
                                format!(
                                    "{} {} {} ({what})",
                                    fmt_value(v),
                                    if higher_ok { ">=" } else { "<=" },
                                    fmt_value(l)
                                ),
                            )
                        }
                        _ => ("N/A", format!("not measured ({what})")),
                    }
                };
                TargetCheck {
                    gateway: g.name.clone(),
                    name: name.into(),
                    verdict: verdict.into(),
                    value,
                    limit,
                    detail,
                }
            };
        let k = |f: &str| kernel.and_then(|k| k.medians.get(f).copied());
        let m = |f: &str| g.medians.get(f).copied();
        let ratio = |f: &str| g.ratios.get(f).copied();
        let (tput_name, tput) = if g.name == "xdpmesh-tcp" {
            ("single-stream throughput >= 0.9x kernel", 0.9)
        } else {
            ("single-stream throughput >= 0.6x kernel", 0.6)
        };
        out.push(check(
            tput_name,
            ratio("throughput_1s_fwd_mbps"),
            Some(tput),
            true,
            "ratio to kernel, 1 stream client→server".into(),
        ));
        let (cpu_name, cpu) = if jumbo {
            (
                "gateway CPU at a fixed rate <= 1.2 CPU-s/GiB (jumbo links)",
                1.2,
            )
        } else {
            ("gateway CPU at a fixed rate <= 2.4 CPU-s/GiB", 2.4)
        };
        out.push(check(
            cpu_name,
            m("cpu_fixed_gw_s_per_gib"),
            Some(cpu),
            false,
            "CPU-s/GiB, both gateways' processes".into(),
        ));
        out.push(check(
            "64 B RTT p50 <= kernel p50 + 30 µs",
            m("latency_64_p50_us"),
            k("latency_64_p50_us").map(|v| v + 30.0),
            false,
            "µs".into(),
        ));
        out.push(check(
            "64 B RTT p99 <= kernel p99 + 60 µs",
            m("latency_64_p99_us"),
            k("latency_64_p99_us").map(|v| v + 60.0),
            false,
            "µs".into(),
        ));
        out.push(check(
            "new connection + echo rate >= 0.35x kernel",
            ratio("connrate_per_s"),
            Some(0.35),
            true,
            "ratio to kernel".into(),
        ));
        out.push(check(
            "10k open: <= 4 KiB gateway memory per connection",
            m("concurrency_10000_bytes_per_conn"),
            Some(4096.0),
            false,
            "bytes per connection, worse of the two gateways".into(),
        ));
        out.push(check(
            "10k open: side stream >= 0.8x its figure with 10 open",
            m("concurrency_10000_side_vs_10"),
            Some(0.8),
            true,
            "ratio".into(),
        ));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn gw(name: &str, figs: &[(&str, f64)]) -> GatewayReport {
        GatewayReport {
            name: name.into(),
            status: String::new(),
            rounds: vec![RoundReport {
                round: 0,
                status: "ok".into(),
                figures: figs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                ..Default::default()
            }],
            medians: BTreeMap::new(),
            ratios: BTreeMap::new(),
            not_applicable: BTreeMap::new(),
        }
    }

    pub(crate) fn sample_report() -> BenchReport {
        let mut r = BenchReport {
            schema: SCHEMA.into(),
            started_unix: 1,
            finished_unix: 2,
            machine: Machine::default(),
            git_commit: "abc".into(),
            versions: BTreeMap::from([("iperf3".into(), "iperf 3.12".into())]),
            config: serde_json::json!({"rounds": 1}),
            mtu: Mtus::default(),
            gateways: vec![
                gw(
                    KERNEL,
                    &[
                        ("throughput_1s_fwd_mbps", 10000.0),
                        ("latency_64_p50_us", 20.0),
                        ("latency_64_p99_us", 40.0),
                        ("connrate_per_s", 5000.0),
                    ],
                ),
                gw(
                    "xdpmesh-tcp",
                    &[
                        ("throughput_1s_fwd_mbps", 6000.0),
                        ("latency_64_p50_us", 50.0),
                        ("latency_64_p99_us", 200.0),
                        ("connrate_per_s", 4000.0),
                        ("concurrency_10000_bytes_per_conn", 9000.0),
                    ],
                ),
            ],
            targets: Vec::new(),
        };
        r.gateways[1].rounds[0]
            .latency_cdf
            .insert("64".into(), vec![[20.0, 0.5], [200.0, 0.99]]);
        r.finish();
        r
    }

    #[test]
    fn ratios_and_targets() {
        let r = sample_report();
        let x = r.gateway("xdpmesh-tcp").unwrap();
        assert_eq!(x.ratios["throughput_1s_fwd_mbps"], 0.6);
        assert_eq!(x.ratios["connrate_per_s"], 0.8);
        assert!(!x.ratios.contains_key("concurrency_10000_bytes_per_conn"));
        let v: BTreeMap<&str, &str> = r
            .targets
            .iter()
            .map(|t| (t.name.as_str(), t.verdict.as_str()))
            .collect();
        // 6000 against 10000: 0.6x, below xdpmesh-tcp's 0.9x.
        assert_eq!(v["single-stream throughput >= 0.9x kernel"], "MISS");
        assert_eq!(
            v["gateway CPU at a fixed rate <= 2.4 CPU-s/GiB"], "N/A",
            "not measured in the sample"
        );
        // 50 <= 20 + 30; 200 > 40 + 60.
        assert_eq!(v["64 B RTT p50 <= kernel p50 + 30 µs"], "PASS");
        assert_eq!(v["64 B RTT p99 <= kernel p99 + 60 µs"], "MISS");
        assert_eq!(v["new connection + echo rate >= 0.35x kernel"], "PASS");
        // 9000 bytes per connection.
        assert_eq!(
            v["10k open: <= 4 KiB gateway memory per connection"],
            "MISS"
        );
        assert_eq!(
            v["10k open: side stream >= 0.8x its figure with 10 open"],
            "N/A"
        );
        let jumbo = evaluate_targets(&r.gateways, true);
        assert!(
            jumbo
                .iter()
                .any(|t| t.name == "gateway CPU at a fixed rate <= 1.2 CPU-s/GiB (jumbo links)"),
            "{jumbo:?}"
        );
        let t = r.table();
        assert!(
            t.starts_with("links: pod MTU 1500, uplink MTU 1500\n"),
            "{t}"
        );
        assert!(t.contains("6000 (0.60x)"), "{t}");
        assert!(t.contains("MISS"), "{t}");
    }

    #[test]
    fn json_round_trip() {
        let r = sample_report();
        let text = serde_json::to_string_pretty(&r).unwrap();
        let back: BenchReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        // The schema's field names are the contract with `compare` and CI.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(
            v["gateways"][1]["ratios"]["throughput_1s_fwd_mbps"].as_f64(),
            Some(0.6)
        );
        assert_eq!(
            v["gateways"][1]["rounds"][0]["latency_cdf"]["64"][1][0].as_f64(),
            Some(200.0)
        );
    }

    #[test]
    fn mtus_are_recorded_and_old_files_read_as_1500() {
        let mut r = sample_report();
        r.mtu = Mtus {
            pod: 9000,
            uplink: 1400,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["mtu"], serde_json::json!({"pod": 9000, "uplink": 1400}));
        assert_eq!(serde_json::from_value::<BenchReport>(v).unwrap(), r);
        assert!(r
            .table()
            .starts_with("links: pod MTU 9000, uplink MTU 1400\n"));
        // A file from before the field existed.
        let mut v = serde_json::to_value(sample_report()).unwrap();
        v.as_object_mut().unwrap().remove("mtu");
        let old: BenchReport = serde_json::from_value(v).unwrap();
        assert_eq!(old.mtu, Mtus::default());
    }

    #[test]
    fn the_stored_baseline_parses() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("baseline.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let b: BenchReport = serde_json::from_str(&text).unwrap();
        assert_eq!(b.schema, SCHEMA);
        assert_eq!(
            b.mtu,
            Mtus {
                pod: 1500,
                uplink: 1500
            }
        );
        let k = b.gateway(KERNEL).expect("the baseline measured kernel");
        assert!(k.medians["throughput_1s_fwd_mbps"] > 0.0);
        assert!(b.gateway("xdpmesh-tcp").unwrap().ratios["throughput_1s_fwd_mbps"] > 0.0);
    }

    #[test]
    fn mtu_flags() {
        let m = |a, b, c| {
            let x = Mtus::from_flags(a, b, c);
            (x.pod, x.uplink)
        };
        assert_eq!(m(None, None, None), (1500, 1500));
        assert_eq!(m(Some(9000), None, None), (9000, 9000));
        assert_eq!(m(Some(9000), Some(1400), None), (1400, 9000));
        assert_eq!(m(None, None, Some(4000)), (1500, 4000));
        assert_eq!(m(Some(2000), Some(3000), Some(4000)), (3000, 4000));
    }

    #[test]
    fn metadata() {
        let m = figure_meta("throughput_8s_rev_mbps");
        assert_eq!((m.better, m.basis), (Better::Higher, Basis::Ratio));
        assert!(m.label.contains("8 streams"));
        assert_eq!(figure_meta("latency_64_p99_us").better, Better::Lower);
        assert_eq!(figure_meta("latency_64_max_us").better, Better::Neither);
        let m = figure_meta("concurrency_10000_bytes_per_conn");
        assert_eq!((m.better, m.basis), (Better::Lower, Basis::Absolute));
        assert_eq!(figure_meta("whatever").better, Better::Neither);
    }
}
