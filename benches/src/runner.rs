//! Runs the scenarios against each gateway type on a fresh four-namespace topology per
//! (round, gateway type), alternating types round by round (A B A B) so that the
//! ratios to `kernel` compare measurements taken close together in time.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;

use xdpmesh_netns::topology::SERVER_ADDR;
use xdpmesh_netns::{unique_prefix, GatewayKind, Node, ProcHandle, Topology, TopologyOpts};

use crate::external::{self, ExternalSpec};
use crate::loadgen::{
    ConnRateResult, HoldReady, PingPongResult, CONNRATE_PORT, ECHO_PORT, HOLD_PORT,
    HOLD_READY_MARKER, IPERF_PORT,
};
use crate::probe::{self, SystemCpu};
use crate::report::{BenchReport, GatewayReport, Mtus, RoundReport, SCHEMA};

/// A scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    Throughput,
    Latency,
    ConnRate,
    Concurrency,
    Cpu,
}

impl Scenario {
    pub const ALL: [Scenario; 5] = [
        Scenario::Throughput,
        Scenario::Latency,
        Scenario::ConnRate,
        Scenario::Concurrency,
        Scenario::Cpu,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Throughput => "throughput",
            Scenario::Latency => "latency",
            Scenario::ConnRate => "connrate",
            Scenario::Concurrency => "concurrency",
            Scenario::Cpu => "cpu",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Scenario> {
        Scenario::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .with_context(|| {
                format!("unknown scenario {s:?} (throughput, latency, connrate, concurrency, cpu)")
            })
    }
}

/// A gateway type under test.
#[derive(Clone, Debug, PartialEq)]
pub enum GatewayType {
    /// The gateways' kernels route, on veths with offloads off (the baseline of every
    /// ratio).
    Kernel,
    /// The same kernel routing on veths with their offloads as the kernel sets them
    /// (TSO, GSO, GRO, checksum offload): what the offloads are worth on this path.
    KernelOffload,
    XdpmeshTcp,
    XdpmeshHbone,
    External {
        path: PathBuf,
        spec: Box<ExternalSpec>,
    },
}

impl GatewayType {
    /// Parses `kernel`, `kernel-offload`, `xdpmesh-tcp`, `xdpmesh-hbone` or
    /// `external:FILE` (reads FILE).
    pub fn parse(s: &str) -> anyhow::Result<GatewayType> {
        Ok(match s {
            "kernel" => GatewayType::Kernel,
            "kernel-offload" => GatewayType::KernelOffload,
            "xdpmesh-tcp" => GatewayType::XdpmeshTcp,
            "xdpmesh-hbone" => GatewayType::XdpmeshHbone,
            _ => match external::parse_gateway_arg(s) {
                Some(path) => {
                    let spec = ExternalSpec::load(&path)?;
                    GatewayType::External {
                        path,
                        spec: Box::new(spec),
                    }
                }
                None => bail!(
                    "unknown gateway type {s:?} (kernel, kernel-offload, xdpmesh-tcp, \
                     xdpmesh-hbone, external:FILE)"
                ),
            },
        })
    }

    /// Name in reports.
    pub fn name(&self) -> String {
        match self {
            GatewayType::Kernel => "kernel".into(),
            GatewayType::KernelOffload => "kernel-offload".into(),
            GatewayType::XdpmeshTcp => "xdpmesh-tcp".into(),
            GatewayType::XdpmeshHbone => "xdpmesh-hbone".into(),
            GatewayType::External { spec, .. } => {
                format!("external:{}", spec.name.as_deref().unwrap_or("unnamed"))
            }
        }
    }

    fn is_xdpmesh(&self) -> bool {
        matches!(self, GatewayType::XdpmeshTcp | GatewayType::XdpmeshHbone)
    }

    /// Whether the gateways' kernels route (no gateway process).
    fn is_kernel(&self) -> bool {
        matches!(self, GatewayType::Kernel | GatewayType::KernelOffload)
    }

    /// The topology this gateway type runs on: offloads on for `kernel-offload` only.
    pub fn topology_opts(&self, opts: &RunOptions) -> TopologyOpts {
        TopologyOpts {
            rx_queues: opts.queues,
            pod_mtu: opts.mtu.pod,
            uplink_mtu: opts.mtu.uplink,
            offloads: *self == GatewayType::KernelOffload,
            pod_tx_checksum: opts.pod_tx_checksum,
            ..TopologyOpts::default()
        }
    }
}

/// How long and how hard each scenario runs.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Load {
    /// Seconds of each throughput iperf3 run.
    pub iperf_secs: u32,
    pub latency_warmup_ms: u64,
    pub latency_ms: u64,
    pub latency_max_round_trips: u64,
    pub connrate_count: u64,
    pub connrate_ms: u64,
    pub connrate_threads: usize,
    /// Open-connection counts (the first should be the small reference, 10).
    pub concurrency_levels: Vec<u64>,
    pub side_stream_secs: u32,
    pub cpu_secs: u32,
    /// Offered rate of the fixed-rate CPU measurement.
    pub cpu_rate_mbit: u32,
}

impl Load {
    /// The full suite.
    pub fn full() -> Load {
        Load {
            iperf_secs: 5,
            latency_warmup_ms: 1000,
            latency_ms: 5000,
            latency_max_round_trips: 1_000_000,
            connrate_count: 20_000,
            connrate_ms: 5000,
            connrate_threads: 4,
            concurrency_levels: vec![10, 1000, 10_000],
            side_stream_secs: 4,
            cpu_secs: 5,
            cpu_rate_mbit: 200,
        }
    }

    /// A few seconds per scenario (CI).
    pub fn smoke() -> Load {
        Load {
            iperf_secs: 1,
            latency_warmup_ms: 200,
            latency_ms: 1000,
            latency_max_round_trips: 100_000,
            connrate_count: 2000,
            connrate_ms: 1500,
            connrate_threads: 4,
            concurrency_levels: vec![10, 1000],
            side_stream_secs: 1,
            cpu_secs: 1,
            cpu_rate_mbit: 200,
        }
    }
}

/// Options of one run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub gateways: Vec<GatewayType>,
    pub scenarios: Vec<Scenario>,
    pub rounds: u32,
    pub smoke: bool,
    pub load: Load,
    /// Dataplane workers and veth queues.
    pub queues: u32,
    /// The links' MTUs of every gateway type's topology.
    pub mtu: Mtus,
    pub xdp_mode: String,
    /// Mesh config of `xdpmesh-tcp` (and the template of `xdpmesh-hbone`).
    pub tcp_config: PathBuf,
    /// Mesh config of `xdpmesh-hbone`; default: `tcp_config` with `protocol: HBONE`.
    pub hbone_config: Option<PathBuf>,
    /// Skip the check that the dataplane really speaks HBONE.
    pub assume_hbone: bool,
    /// Extra arguments of both gateways' `xdpmesh-dataplane run` (xdpmesh types), to
    /// measure options such as `--poll busy`.
    pub dataplane_args: Vec<String>,
    /// The pods' veth ends keep checksum offload (`--pod-tx-checksum`); the xdpmesh
    /// gateways then run with `--trust-tcp-checksum pod0`.
    pub pod_tx_checksum: bool,
    /// This executable (run in the pod namespaces for the load generators).
    pub self_exe: PathBuf,
}

impl RunOptions {
    /// Refuses options no topology would be built with (MTUs out of range), before
    /// anything runs.
    pub fn validate(&self) -> anyhow::Result<()> {
        for gw in &self.gateways {
            gw.topology_opts(self)
                .validate()
                .context("--mtu, --pod-mtu or --uplink-mtu")?;
        }
        Ok(())
    }

    /// The options as JSON (for the report).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "gateways": self.gateways.iter().map(|g| match g {
                GatewayType::External { path, .. } => format!("external:{}", path.display()),
                other => other.name(),
            }).collect::<Vec<_>>(),
            "scenarios": self.scenarios.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "rounds": self.rounds,
            "smoke": self.smoke,
            "load": self.load,
            "queues": self.queues,
            "mtu": self.mtu,
            "xdp_mode": self.xdp_mode,
            "tcp_config": self.tcp_config,
            "hbone_config": self.hbone_config,
            "assume_hbone": self.assume_hbone,
            "dataplane_args": self.dataplane_args,
            "pod_tx_checksum": self.pod_tx_checksum,
        })
    }
}

/// Progress output.
pub fn progress(msg: &str) {
    eprintln!("[xdpmesh-bench] {msg}");
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs everything and returns the finished report.
pub fn run(opts: &RunOptions, workspace: &Path) -> BenchReport {
    let mut report = BenchReport {
        schema: SCHEMA.into(),
        started_unix: unix_now(),
        finished_unix: 0,
        machine: probe::Machine::detect(),
        git_commit: probe::git_commit(workspace),
        versions: versions(),
        config: opts.to_json(),
        mtu: opts.mtu,
        gateways: opts
            .gateways
            .iter()
            .map(|g| GatewayReport {
                name: g.name(),
                status: "ok".into(),
                rounds: Vec::new(),
                medians: BTreeMap::new(),
                ratios: BTreeMap::new(),
                not_applicable: BTreeMap::new(),
            })
            .collect(),
        targets: Vec::new(),
    };
    for round in 0..opts.rounds {
        for (i, gw) in opts.gateways.iter().enumerate() {
            if report.gateways[i]
                .rounds
                .iter()
                .any(|r| r.status.starts_with("unsupported"))
            {
                continue; // once is enough to know
            }
            progress(&format!(
                "round {}/{}: {} ...",
                round + 1,
                opts.rounds,
                gw.name()
            ));
            let (rr, na) = run_round(opts, gw, round);
            progress(&format!(
                "round {}/{}: {} done in {:.1}s: {}",
                round + 1,
                opts.rounds,
                gw.name(),
                rr.seconds,
                rr.status
            ));
            report.gateways[i].rounds.push(rr);
            report.gateways[i].not_applicable.extend(na);
        }
    }
    report.finished_unix = unix_now();
    report.finish();
    report
}

fn versions() -> BTreeMap<String, String> {
    let mut v = BTreeMap::new();
    v.insert(
        "xdpmesh-bench".into(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    v.insert(
        "iperf3".into(),
        probe::tool_version("iperf3", &["--version"]),
    );
    v.insert(
        "socat".into(),
        probe::tool_version("socat", &["-V"]).replace(
            "socat by Gerhard Rieger and contributors - see www.dest-unreach.org",
            "socat",
        ),
    );
    for b in ["xdpmesh-dataplane", "xdpmesh-control"] {
        let path = xdpmesh_netns::bin(b);
        let modified = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or("missing".to_string(), |d| {
                format!("built at unix {}", d.as_secs())
            });
        v.insert(b.into(), format!("{} ({modified})", path.display()));
    }
    v
}

/// One topology with servers and gateways running. Dropping it runs the external
/// proxy's stop commands, then the topology kills everything and deletes the namespaces.
struct Bed {
    procs: Vec<ProcHandle>,
    /// The iperf3 server, replaced after a failed run: a test whose client died leaves
    /// the server "busy running a test" and would fail every later iperf3 run too.
    iperf_server: std::cell::RefCell<Option<ProcHandle>>,
    stops: Vec<(Node, Vec<String>)>,
    topo: Topology,
}

impl Drop for Bed {
    fn drop(&mut self) {
        for (node, argv) in std::mem::take(&mut self.stops) {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            if let Err(e) = self.topo.run_timeout(node, &argv, Duration::from_secs(10)) {
                progress(&format!("external stop command on {node:?} failed: {e:#}"));
            }
        }
        self.procs.clear();
    }
}

fn first_line(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    let line = s.lines().next().unwrap_or_default();
    line.chars().take(300).collect()
}

/// Runs the scenarios of one round for one gateway type.
fn run_round(
    opts: &RunOptions,
    gw: &GatewayType,
    round: u32,
) -> (RoundReport, BTreeMap<String, String>) {
    let t0 = Instant::now();
    let mut rr = RoundReport {
        round,
        status: "ok".into(),
        ..Default::default()
    };
    let mut na = BTreeMap::new();
    let bed = match setup(opts, gw) {
        Ok(b) => b,
        Err(e) => {
            rr.status = if *gw == GatewayType::XdpmeshHbone {
                format!("unsupported: gateways did not start: {}", first_line(&e))
            } else {
                format!("error: setup failed: {}", first_line(&e))
            };
            rr.details.insert(
                "setup_error".into(),
                serde_json::Value::String(format!("{e:#}")),
            );
            rr.seconds = t0.elapsed().as_secs_f64();
            return (rr, na);
        }
    };
    let ctx = Ctx {
        opts,
        gw,
        bed: &bed,
    };
    let first = match ctx.probe_traffic() {
        Ok(first) => first,
        Err(e) => {
            rr.status = if *gw == GatewayType::XdpmeshHbone {
                format!("unsupported: {}", first_line(&e))
            } else {
                format!("error: traffic probe failed: {}", first_line(&e))
            };
            rr.details.insert(
                "probe_error".into(),
                serde_json::Value::String(format!("{e:#}\n{}", ctx.gateway_log_tails())),
            );
            rr.seconds = t0.elapsed().as_secs_f64();
            return (rr, na);
        }
    };
    if opts.scenarios.contains(&Scenario::ConnRate) {
        ctx.first_connection(&first, &mut rr);
    }
    for &sc in &opts.scenarios {
        if let GatewayType::External { spec, .. } = gw {
            if let Some(why) = spec.unsupported.get(sc.name()) {
                na.insert(sc.name().to_string(), why.clone());
                continue;
            }
        }
        progress(&format!("  {} {}", gw.name(), sc.name()));
        let mut r = ctx.scenario(sc, &mut rr, &mut na);
        // A gateway process that died (a dataplane panic, say) hands the traffic back to
        // the kernel, and later figures would measure kernel forwarding: that is a
        // failure of the round, never retried.
        let died = |rr: &mut RoundReport| {
            let dead = bed.topo.dead_gateway_processes();
            if dead.is_empty() {
                return false;
            }
            let msg = format!(
                "a gateway process died during {}:\n{}",
                sc.name(),
                dead.join("\n")
            );
            for line in msg.lines() {
                progress(&format!("    {line}"));
            }
            rr.errors.insert(sc.name().to_string(), msg);
            rr.status = "error: a gateway process died".into();
            true
        };
        if died(&mut rr) {
            break;
        }
        if let (Err(e), true) = (&r, opts.smoke) {
            // The smoke must fail CI on a broken path, not on one unlucky run: retry
            // once, and report the first failure (with its evidence) either way.
            progress(&format!(
                "  {} {} failed, retrying once: {e:#}",
                gw.name(),
                sc.name()
            ));
            let diag = ctx.gateway_log_tails();
            for line in diag.lines() {
                progress(&format!("    {line}"));
            }
            let first = format!("{e:#}\n{diag}");
            r = ctx.scenario(sc, &mut rr, &mut na);
            if r.is_ok() {
                progress(&format!(
                    "  {} {} passed on the retry",
                    gw.name(),
                    sc.name()
                ));
                rr.retried.insert(sc.name().to_string(), first);
            }
            if died(&mut rr) {
                break;
            }
        }
        if let Err(e) = r {
            progress(&format!("  {} {} FAILED: {e:#}", gw.name(), sc.name()));
            let diag = ctx.gateway_log_tails();
            // CI keeps only the terminal: the evidence must be there, not only in the JSON.
            for line in diag.lines() {
                progress(&format!("    {line}"));
            }
            rr.errors
                .insert(sc.name().to_string(), format!("{e:#}\n{diag}"));
        }
    }
    drop(bed);
    rr.seconds = t0.elapsed().as_secs_f64();
    (rr, na)
}

/// `config` with every `protocol: TCP` turned into `protocol: HBONE`.
pub fn hbone_config_text(tcp_config: &str) -> String {
    tcp_config
        .lines()
        .map(|l| {
            let trimmed = l.trim_start();
            if trimmed.starts_with("protocol:") && trimmed.contains("TCP") {
                let indent = &l[..l.len() - trimmed.len()];
                let rest = trimmed
                    .split_once('#')
                    .map(|(_, c)| format!("   #{c}"))
                    .unwrap_or_default();
                format!("{indent}protocol: HBONE{rest}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn setup(opts: &RunOptions, gw: &GatewayType) -> anyhow::Result<Bed> {
    let topo = Topology::new(&unique_prefix("bench"), gw.topology_opts(opts))?;
    let mut bed = Bed {
        procs: Vec::new(),
        iperf_server: std::cell::RefCell::new(None),
        stops: Vec::new(),
        topo,
    };
    *bed.iperf_server.get_mut() = Some(bed.topo.start_iperf_server(Node::Server, IPERF_PORT)?);
    let exe = opts.self_exe.to_string_lossy().into_owned();
    let mut server = bed.topo.spawn(
        Node::Server,
        &[
            &exe,
            "serve",
            "--echo-port",
            &ECHO_PORT.to_string(),
            "--connrate-port",
            &CONNRATE_PORT.to_string(),
            "--hold-port",
            &HOLD_PORT.to_string(),
        ],
    )?;
    for port in [ECHO_PORT, CONNRATE_PORT, HOLD_PORT] {
        if let Err(e) = bed
            .topo
            .wait_tcp_listen(Node::Server, port, Duration::from_secs(10))
        {
            let _ = server.try_wait();
            bail!("{e:#}; server log:\n{}", server.log_tail(20));
        }
    }
    bed.procs.push(server);
    let xdp = |queues| GatewayKind::Xdpmesh {
        queues,
        xdp_mode: opts.xdp_mode.clone(),
    };
    let mut dataplane_args: Vec<&str> = opts.dataplane_args.iter().map(String::as_str).collect();
    if opts.pod_tx_checksum {
        // The pods' segments carry partial checksums: verified, all would be dropped.
        dataplane_args.extend(["--trust-tcp-checksum", "pod0"]);
    }
    bed.topo.set_gateway_args(&[], &dataplane_args);
    match gw {
        GatewayType::Kernel | GatewayType::KernelOffload => bed
            .topo
            .start_gateways(GatewayKind::Kernel, &opts.tcp_config)?,
        GatewayType::XdpmeshTcp => bed
            .topo
            .start_gateways(xdp(opts.queues), &opts.tcp_config)?,
        GatewayType::XdpmeshHbone => {
            let path = match &opts.hbone_config {
                Some(p) => p.clone(),
                None => {
                    let text = std::fs::read_to_string(&opts.tcp_config)
                        .with_context(|| format!("reading {}", opts.tcp_config.display()))?;
                    let p = bed.topo.tmp_dir().join("mesh-hbone.yaml");
                    std::fs::write(&p, hbone_config_text(&text))?;
                    p
                }
            };
            bed.topo.start_gateways(xdp(opts.queues), &path)?;
        }
        GatewayType::External { spec, .. } => start_external(&mut bed, spec)?,
    }
    Ok(bed)
}

fn start_external(bed: &mut Bed, spec: &ExternalSpec) -> anyhow::Result<()> {
    let mut started = Vec::new();
    for node in [Node::GatewayA, Node::GatewayB] {
        let env = external::env_for(spec, node, &bed.topo.ns_name(node), bed.topo.tmp_dir());
        let ns = spec.node(node);
        if let Some(stop) = &ns.stop {
            bed.stops.push((node, external::shell_argv(&env, stop)));
        }
        if let Some(start) = &ns.start {
            let argv = external::shell_argv(&env, start);
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            started.push((node, bed.topo.spawn(node, &argv)?));
        }
    }
    for (node, proc_) in &mut started {
        let ns = spec.node(*node);
        let Some(ready) = &ns.ready else { continue };
        let env = external::env_for(spec, *node, &bed.topo.ns_name(*node), bed.topo.tmp_dir());
        let argv = external::shell_argv(&env, ready);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let timeout = Duration::from_secs_f64(ns.ready_timeout_s.unwrap_or(10.0).max(0.1));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = proc_.try_wait()? {
                bail!(
                    "external start command on {node:?} exited ({status}) before it was ready:\n{}",
                    proc_.log_tail(20)
                );
            }
            match bed.topo.run_timeout(*node, &argv, Duration::from_secs(5)) {
                Ok(_) => break,
                Err(e) if Instant::now() >= deadline => bail!(
                    "external proxy on {node:?} not ready after {timeout:?}: {e:#}\nstart log:\n{}",
                    proc_.log_tail(20)
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
    bed.procs.extend(started.into_iter().map(|(_, p)| p));
    Ok(())
}

/// One concurrency level: (open connections, gateway memory (A, B), side Mbit/s).
type LevelRow = (u64, Option<(u64, u64)>, f64);

/// iperf3 summary.
#[derive(Clone, Copy, Debug)]
struct Iperf {
    bits_per_second: f64,
    bytes: u64,
}

/// The first probe through fresh gateways, and how many tries it took.
struct FirstProbe {
    result: PingPongResult,
    attempts: u32,
}

/// One of a dataplane's latency histograms, as `stats.json` has it (cumulative buckets).
#[derive(Clone, Debug, Default, PartialEq)]
struct GwHistogram {
    count: u64,
    sum_us: u64,
    /// `(upper bound as written, cumulative count)`, `"+Inf"` last.
    buckets: Vec<(String, u64)>,
}

impl GwHistogram {
    fn parse(v: &serde_json::Value) -> Option<GwHistogram> {
        let buckets = v["buckets"]
            .as_array()?
            .iter()
            .map(|b| {
                Some((
                    b["le"].to_string().trim_matches('"').to_owned(),
                    b["count"].as_u64()?,
                ))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(GwHistogram {
            count: v["count"].as_u64()?,
            sum_us: v["sum_us"].as_u64()?,
            buckets,
        })
    }

    /// The observations made after `before` (the same histogram, read earlier).
    fn since(&self, before: &GwHistogram) -> GwHistogram {
        let was = |le: &str| {
            before
                .buckets
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0, |b| b.1)
        };
        GwHistogram {
            count: self.count.saturating_sub(before.count),
            sum_us: self.sum_us.saturating_sub(before.sum_us),
            buckets: self
                .buckets
                .iter()
                .map(|(le, n)| (le.clone(), n.saturating_sub(was(le))))
                .collect(),
        }
    }

    fn mean_us(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_us as f64 / self.count as f64
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let buckets: serde_json::Map<_, _> = self
            .buckets
            .iter()
            .map(|(le, n)| (le.clone(), serde_json::json!(n)))
            .collect();
        serde_json::json!({"count": self.count, "mean_us": self.mean_us(), "le": buckets})
    }
}

/// A dataplane's two latency histograms.
#[derive(Clone, Debug, Default, PartialEq)]
struct GatewayLatency {
    tls_handshake: GwHistogram,
    connect: GwHistogram,
}

impl GatewayLatency {
    fn since(&self, before: &GatewayLatency) -> GatewayLatency {
        GatewayLatency {
            tls_handshake: self.tls_handshake.since(&before.tls_handshake),
            connect: self.connect.since(&before.connect),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "tls_handshake": self.tls_handshake.to_json(),
            "connect": self.connect.to_json(),
        })
    }
}

struct Ctx<'a> {
    opts: &'a RunOptions,
    gw: &'a GatewayType,
    bed: &'a Bed,
}

impl Ctx<'_> {
    fn topo(&self) -> &Topology {
        &self.bed.topo
    }

    fn target(&self, service: &str, port: u16) -> SocketAddr {
        let (ip, port) = match self.gw {
            GatewayType::External { spec, .. } => spec.target(service, port),
            _ => (SERVER_ADDR, port),
        };
        SocketAddr::V4(SocketAddrV4::new(ip, port))
    }

    fn gateway_namespaces(&self) -> Vec<String> {
        [Node::GatewayA, Node::GatewayB]
            .iter()
            .map(|n| self.topo().ns_name(*n))
            .collect()
    }

    /// Last lines of the gateways' logs (for error reports).
    fn scenario(
        &self,
        sc: Scenario,
        rr: &mut RoundReport,
        na: &mut BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        match sc {
            Scenario::Throughput => self.throughput(rr),
            Scenario::Latency => self.latency(rr),
            Scenario::ConnRate => self.connrate(rr),
            Scenario::Concurrency => self.concurrency(rr, na),
            Scenario::Cpu => self.cpu(rr, na),
        }
    }

    /// What a failure report needs from the gateways: the dataplane counters that tell a
    /// broken connection from a slow one (resets sent, late segments, live connections
    /// and their states) and the tails of the gateway logs.
    fn gateway_log_tails(&self) -> String {
        let mut s = String::new();
        for node in [Node::GatewayA, Node::GatewayB] {
            let Ok(st) = self.topo().gateway_stats(node) else {
                continue;
            };
            let t = &st["totals"];
            let keys = [
                "live_connections",
                "opened_connections",
                "closed_connections",
                "reset_connections",
                "no_flow_resets",
                "late_segments",
                "upstream_failures",
                "no_route",
                "tx_no_frame",
                "handover_dropped",
                "hbone_refused",
                "hbone_tunnel_failures",
            ];
            let counters: Vec<String> = keys
                .iter()
                .map(|k| format!("{k}={}", t[*k].as_u64().unwrap_or(0)))
                .collect();
            s.push_str(&format!(
                "--- {node:?} dataplane counters ---\n{}\n",
                counters.join(" ")
            ));
            let workers = st["workers"].as_array().cloned().unwrap_or_default();
            let sample: Vec<String> = workers
                .iter()
                .filter_map(|w| w["live_sample"].as_array())
                .flatten()
                .take(10)
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect();
            if !sample.is_empty() {
                s.push_str(&format!("live (sample): {}\n", sample.join("; ")));
            }
        }
        for (node, control, dataplane) in self.topo().gateway_logs() {
            for (what, p) in [("control", control), ("dataplane", dataplane)] {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                s.push_str(&format!(
                    "--- {node:?} {what} log tail ---\n{}\n",
                    xdpmesh_netns::process::tail(&text, 8)
                ));
            }
        }
        s
    }

    /// Runs a load-generator subcommand in the client namespace; parses its last JSON line.
    fn client_json<T: DeserializeOwned>(
        &self,
        args: &[String],
        timeout: Duration,
    ) -> anyhow::Result<T> {
        let exe = self.opts.self_exe.to_string_lossy().into_owned();
        let mut argv: Vec<&str> = vec![&exe];
        argv.extend(args.iter().map(String::as_str));
        let out = self.topo().run_timeout(Node::Client, &argv, timeout)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .with_context(|| format!("{} printed no JSON: {stdout}", args[0]))?;
        serde_json::from_str(line).with_context(|| format!("parsing {line}"))
    }

    fn pingpong(
        &self,
        size: usize,
        warmup_ms: u64,
        ms: u64,
        max: u64,
    ) -> anyhow::Result<PingPongResult> {
        let addr = self.target("echo", ECHO_PORT);
        self.client_json(
            &[
                "pingpong-client".into(),
                "--addr".into(),
                addr.to_string(),
                "--size".into(),
                size.to_string(),
                "--warmup-ms".into(),
                warmup_ms.to_string(),
                "--duration-ms".into(),
                ms.to_string(),
                "--max-round-trips".into(),
                max.to_string(),
            ],
            Duration::from_millis(warmup_ms + ms) + Duration::from_secs(20),
        )
    }

    /// A few round trips through the gateways: is the path there at all? For
    /// `xdpmesh-hbone`, also checks that the dataplane reports HBONE activity.
    /// Returns the first probe that went through: the first connection of the fresh
    /// gateways (for HBONE, the first of its tunnel pool: it waited for the handshake).
    fn probe_traffic(&self) -> anyhow::Result<FirstProbe> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut attempts = 0;
        let first = loop {
            attempts += 1;
            match self.pingpong(64, 0, 500, 20) {
                Ok(r) => {
                    break FirstProbe {
                        result: r,
                        attempts,
                    }
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context("no round trip through the gateways within 10 s"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(300)),
            }
        };
        if *self.gw == GatewayType::XdpmeshHbone && !self.opts.assume_hbone {
            // Until HBONE exists the dataplane carries these workloads as plain TCP;
            // a figure labelled HBONE must not silently measure that.
            std::thread::sleep(Duration::from_millis(300));
            let mut seen = false;
            for node in [Node::GatewayA, Node::GatewayB] {
                if let Ok(v) = self.topo().gateway_stats(node) {
                    seen |= v.to_string().to_ascii_lowercase().contains("hbone");
                }
            }
            if !seen {
                bail!(
                    "traffic flows, but neither dataplane's stats.json mentions HBONE, so \
                     these workloads are carried as plain TCP (HBONE not implemented yet; \
                     --assume-hbone skips this check)"
                );
            }
        }
        Ok(first)
    }

    /// Records what the first connection through the fresh gateways cost: its connect
    /// and first echo as the client saw them, and for xdpmesh the gateways' own view
    /// (gateway A's set-up of it and, for HBONE, the tunnel's TLS handshake, key
    /// exchange and certificate checks included).
    fn first_connection(&self, first: &FirstProbe, rr: &mut RoundReport) {
        let r = &first.result;
        let total = r.connect_us + r.first_round_trip_us;
        let mut detail = serde_json::json!({
            "attempts": first.attempts,
            "connect_us": r.connect_us,
            "first_round_trip_us": r.first_round_trip_us,
        });
        let mut line = format!(
            "    first connection: connect {:.0} µs + first echo {:.0} µs",
            r.connect_us, r.first_round_trip_us
        );
        if first.attempts == 1 {
            rr.figures.insert("connrate_first_us".into(), total);
        } else {
            // A probe that failed first measured a gateway that was not ready, not a
            // first connection.
            line.push_str(&format!(" (attempt {}: not recorded)", first.attempts));
        }
        if self.gw.is_xdpmesh() {
            // stats.json is rewritten every 200 ms.
            std::thread::sleep(Duration::from_millis(400));
        }
        if let Some(a) = self.gateway_latency(Node::GatewayA) {
            if a.connect.count > 0 {
                rr.figures
                    .insert("connrate_first_gw_connect_us".into(), a.connect.mean_us());
                line.push_str(&format!("; gateway A set-up {:.0} µs", a.connect.mean_us()));
            }
            if a.tls_handshake.count > 0 {
                rr.figures
                    .insert("connrate_first_tls_us".into(), a.tls_handshake.mean_us());
                line.push_str(&format!(
                    ", TLS handshake {:.0} µs",
                    a.tls_handshake.mean_us()
                ));
            }
            detail["gateway_a"] = a.to_json();
        }
        progress(&line);
        rr.details.insert("first_connection".into(), detail);
    }

    /// A dataplane's latency histograms (`stats.json`'s `latency`); `None` for
    /// gateways that are not xdpmesh or whose stats cannot be read.
    fn gateway_latency(&self, node: Node) -> Option<GatewayLatency> {
        if !self.gw.is_xdpmesh() {
            return None;
        }
        let v = self.topo().gateway_stats(node).ok()?;
        Some(GatewayLatency {
            tls_handshake: GwHistogram::parse(&v["latency"]["tls_handshake"])?,
            connect: GwHistogram::parse(&v["latency"]["connect"])?,
        })
    }

    /// One iperf3 run; after a failure the server is restarted so that the failure
    /// does not spill into the next run ("the server is busy running a test").
    fn iperf(
        &self,
        streams: u32,
        reverse: bool,
        secs: u32,
        rate_mbit: Option<u32>,
    ) -> anyhow::Result<Iperf> {
        let r = xdpmesh_netns::peers::retry_while_iperf_busy(|| {
            self.iperf_once(streams, reverse, secs, rate_mbit)
        });
        if r.is_err() {
            let mut server = self.bed.iperf_server.borrow_mut();
            *server = None; // dropping the handle kills the process
            match self.topo().start_iperf_server(Node::Server, IPERF_PORT) {
                Ok(p) => *server = Some(p),
                Err(e) => progress(&format!("    restarting the iperf3 server failed: {e:#}")),
            }
        }
        r
    }

    fn iperf_once(
        &self,
        streams: u32,
        reverse: bool,
        secs: u32,
        rate_mbit: Option<u32>,
    ) -> anyhow::Result<Iperf> {
        let addr = self.target("iperf", IPERF_PORT);
        let (ip, port) = (addr.ip().to_string(), addr.port().to_string());
        let (secs_s, streams_s) = (secs.to_string(), streams.to_string());
        let mut argv = vec![
            "iperf3", "-c", &ip, "-p", &port, "-t", &secs_s, "-P", &streams_s, "-J",
        ];
        if reverse {
            argv.push("-R");
        }
        let rate = rate_mbit.map(|r| format!("{r}M"));
        if let Some(r) = &rate {
            argv.extend(["-b", r]);
        }
        let out = self.topo().run_timeout(
            Node::Client,
            &argv,
            Duration::from_secs(u64::from(secs) + 30),
        )?;
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing iperf3 -J output")?;
        if let Some(err) = json["error"].as_str() {
            bail!("iperf3 error: {err}");
        }
        let recv = &json["end"]["sum_received"];
        Ok(Iperf {
            bits_per_second: recv["bits_per_second"]
                .as_f64()
                .context("iperf3: no end.sum_received.bits_per_second")?,
            bytes: recv["bytes"].as_u64().unwrap_or(0),
        })
    }

    fn throughput(&self, rr: &mut RoundReport) -> anyhow::Result<()> {
        let mut first_err = None;
        for (streams, reverse) in [(1, false), (1, true), (8, false), (8, true)] {
            let fig = format!(
                "throughput_{streams}s_{}_mbps",
                if reverse { "rev" } else { "fwd" }
            );
            match self.iperf(streams, reverse, self.opts.load.iperf_secs, None) {
                Ok(r) => {
                    let mbps = r.bits_per_second / 1e6;
                    progress(&format!("    {fig} = {mbps:.0}"));
                    rr.figures.insert(fig, mbps);
                }
                Err(e) => {
                    progress(&format!("    {fig} failed: {e:#}"));
                    first_err.get_or_insert(e.context(fig));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn latency(&self, rr: &mut RoundReport) -> anyhow::Result<()> {
        let l = &self.opts.load;
        for size in [64usize, 1024] {
            let r = self
                .pingpong(
                    size,
                    l.latency_warmup_ms,
                    l.latency_ms,
                    l.latency_max_round_trips,
                )
                .with_context(|| format!("ping-pong {size} B"))?;
            let p = &r.latency;
            progress(&format!(
                "    {size} B: {} round trips, p50 {:.1} µs p99 {:.1} µs max {:.1} µs",
                r.round_trips, p.p50_us, p.p99_us, p.max_us
            ));
            for (q, v) in [
                ("p50", p.p50_us),
                ("p90", p.p90_us),
                ("p99", p.p99_us),
                ("p999", p.p999_us),
                ("max", p.max_us),
            ] {
                rr.figures.insert(format!("latency_{size}_{q}_us"), v);
            }
            rr.latency_cdf.insert(size.to_string(), r.cdf);
        }
        Ok(())
    }

    fn connrate(&self, rr: &mut RoundReport) -> anyhow::Result<()> {
        let l = &self.opts.load;
        let addr = self.target("connrate", CONNRATE_PORT);
        let before = self.gateway_latency(Node::GatewayA);
        let r: ConnRateResult = self.client_json(
            &[
                "connrate-client".into(),
                "--addr".into(),
                addr.to_string(),
                "--threads".into(),
                l.connrate_threads.to_string(),
                "--count".into(),
                l.connrate_count.to_string(),
                "--duration-ms".into(),
                l.connrate_ms.to_string(),
            ],
            Duration::from_millis(l.connrate_ms) + Duration::from_secs(30),
        )?;
        progress(&format!(
            "    {} ok / {} errors in {:.2}s: {:.0} conn/s, p50 {:.0} µs p99 {:.0} µs",
            r.ok, r.errors, r.seconds, r.rate_per_s, r.latency.p50_us, r.latency.p99_us
        ));
        if r.ok > 0 {
            rr.figures.insert("connrate_per_s".into(), r.rate_per_s);
            rr.figures
                .insert("connrate_p50_us".into(), r.latency.p50_us);
            rr.figures
                .insert("connrate_p99_us".into(), r.latency.p99_us);
        }
        rr.figures.insert("connrate_errors".into(), r.errors as f64);
        let mut detail = serde_json::to_value(&r)?;
        // Let stats.json (200 ms) catch up with the last connections.
        let after = before.as_ref().and_then(|_| {
            std::thread::sleep(Duration::from_millis(400));
            self.gateway_latency(Node::GatewayA)
        });
        if let (Some(b), Some(a)) = (&before, &after) {
            let d = a.since(b);
            if d.connect.count > 0 {
                rr.figures
                    .insert("connrate_gw_connect_us".into(), d.connect.mean_us());
            }
            // A warm pool opens no tunnel per connection: this shows it does not.
            rr.figures.insert(
                "connrate_tls_handshakes".into(),
                d.tls_handshake.count as f64,
            );
            progress(&format!(
                "    gateway A: {} set-ups, mean {:.0} µs; {} TLS handshakes",
                d.connect.count,
                d.connect.mean_us(),
                d.tls_handshake.count
            ));
            detail["gateway_a"] = d.to_json();
        }
        rr.details.insert("connrate".into(), detail);
        // A path that drops connections is broken, not slow.
        if r.ok == 0 || r.errors * 100 > r.attempted {
            bail!(
                "{} of {} connections failed: {:?}",
                r.errors,
                r.attempted,
                r.error_samples
            );
        }
        Ok(())
    }

    /// Gateway memory (A, B) in bytes, or why there is none.
    fn gateway_memory(&self) -> Result<(u64, u64), String> {
        match self.gw {
            GatewayType::Kernel | GatewayType::KernelOffload => Err(
                "the kernel gateway runs no process (routing keeps no per-connection state)".into(),
            ),
            GatewayType::XdpmeshTcp | GatewayType::XdpmeshHbone => {
                let rss = |n| {
                    self.topo()
                        .gateway_stats(n)
                        .map_err(|e| format!("{e:#}"))
                        .and_then(|v| {
                            v["rss_bytes"]
                                .as_u64()
                                .ok_or_else(|| "stats.json has no rss_bytes".to_string())
                        })
                };
                Ok((rss(Node::GatewayA)?, rss(Node::GatewayB)?))
            }
            GatewayType::External { .. } => Ok((
                probe::ns_rss_bytes(&self.topo().ns_name(Node::GatewayA)),
                probe::ns_rss_bytes(&self.topo().ns_name(Node::GatewayB)),
            )),
        }
    }

    /// Waits until the dataplanes report at most `max` live connections (10 s at most).
    fn wait_drained(&self, max: u64) {
        if !self.gw.is_xdpmesh() {
            std::thread::sleep(Duration::from_millis(500));
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut live = 0;
        while Instant::now() < deadline {
            live = [Node::GatewayA, Node::GatewayB]
                .iter()
                .filter_map(|n| self.topo().gateway_stats(*n).ok())
                .map(|v| v["totals"]["live_connections"].as_u64().unwrap_or(0))
                .sum();
            if live <= max {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        progress(&format!(
            "    (gateways still report {live} live connections 10 s after both ends closed)"
        ));
    }

    fn concurrency(
        &self,
        rr: &mut RoundReport,
        na: &mut BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        let l = &self.opts.load;
        let addr = self.target("hold", HOLD_PORT);
        let exe = self.opts.self_exe.to_string_lossy().into_owned();
        // (level, memory (A, B), side stream Mbit/s)
        let mut rows: Vec<LevelRow> = Vec::new();
        let mut problems = Vec::new();
        for &n in &l.concurrency_levels {
            let mut holder = self.topo().spawn(
                Node::Client,
                &[
                    &exe,
                    "hold-client",
                    "--addr",
                    &addr.to_string(),
                    "--count",
                    &n.to_string(),
                    "--threads",
                    "8",
                    "--hold-secs",
                    "600",
                ],
            )?;
            let open_timeout = Duration::from_secs(30 + n / 200);
            holder
                .wait_for_log(HOLD_READY_MARKER, open_timeout)
                .with_context(|| format!("opening {n} connections"))?;
            let log = holder.log();
            let line = log
                .lines()
                .rev()
                .find(|l| l.contains(HOLD_READY_MARKER))
                .unwrap_or_default();
            let ready: HoldReady =
                serde_json::from_str(line).with_context(|| format!("parsing {line}"))?;
            progress(&format!(
                "    {n}: {} open, {} errors in {:.1}s",
                ready.open, ready.errors, ready.seconds
            ));
            rr.figures
                .insert(format!("concurrency_{n}_open"), ready.open as f64);
            rr.figures
                .insert(format!("concurrency_{n}_errors"), ready.errors as f64);
            if ready.errors > 0 {
                problems.push(format!(
                    "{n} connections: {} failed to open: {:?}",
                    ready.errors, ready.error_samples
                ));
            }
            // Let stats.json (200 ms) catch up.
            std::thread::sleep(Duration::from_millis(600));
            let mem_before = self.gateway_memory();
            let side = self.iperf(1, false, l.side_stream_secs, None);
            let mem_after = self.gateway_memory();
            let mem = match (mem_before, mem_after) {
                (Ok(a), Ok(b)) => Some((a.0.max(b.0), a.1.max(b.1))),
                (Err(why), _) | (_, Err(why)) => {
                    na.insert(format!("concurrency_{n}_rss_bytes"), why.clone());
                    na.insert(format!("concurrency_{n}_bytes_per_conn"), why);
                    None
                }
            };
            // The holder must still be alive: otherwise the figures were taken with
            // fewer connections open.
            if let Some(status) = holder.try_wait()? {
                problems.push(format!(
                    "the {n}-connection holder exited early ({status}): {}",
                    holder.log_tail(5)
                ));
            }
            drop(holder);
            let side = match side {
                Ok(s) => s.bits_per_second / 1e6,
                Err(e) => {
                    problems.push(format!("side stream with {n} open: {e:#}"));
                    self.wait_drained(4);
                    continue;
                }
            };
            if let Some((a, b)) = mem {
                rr.figures
                    .insert(format!("concurrency_{n}_rss_bytes"), a.max(b) as f64);
                progress(&format!(
                    "    {n}: gateway RSS A {} MiB B {} MiB, side stream {side:.0} Mbit/s",
                    a >> 20,
                    b >> 20
                ));
            } else {
                progress(&format!("    {n}: side stream {side:.0} Mbit/s"));
            }
            rr.figures
                .insert(format!("concurrency_{n}_side_mbps"), side);
            rows.push((n, mem, side));
            self.wait_drained(4);
        }
        if let Some(&(n0, mem0, side0)) = rows.first() {
            for &(n, mem, side) in &rows[1..] {
                if side0 > 0.0 {
                    rr.figures
                        .insert(format!("concurrency_{n}_side_vs_{n0}"), side / side0);
                }
                if let (Some((a0, b0)), Some((a, b))) = (mem0, mem) {
                    let per = |x: u64, x0: u64| x.saturating_sub(x0) as f64 / (n - n0) as f64;
                    rr.figures.insert(
                        format!("concurrency_{n}_bytes_per_conn"),
                        per(a, a0).max(per(b, b0)),
                    );
                }
            }
        }
        if !problems.is_empty() {
            bail!("{}", problems.join("; "));
        }
        Ok(())
    }

    fn cpu(&self, rr: &mut RoundReport, na: &mut BTreeMap<String, String>) -> anyhow::Result<()> {
        let l = &self.opts.load;
        let namespaces = self.gateway_namespaces();
        for (mode, rate) in [("fixed", Some(l.cpu_rate_mbit)), ("sat", None)] {
            let procs0 = probe::ns_cpu_ticks(&namespaces);
            let sys0 = SystemCpu::read();
            let r = self.iperf(1, false, l.cpu_secs, rate)?;
            let procs1 = probe::ns_cpu_ticks(&namespaces);
            let sys1 = SystemCpu::read();
            let gib = r.bytes as f64 / f64::from(1u32 << 30);
            anyhow::ensure!(gib > 0.0, "iperf3 moved no bytes");
            let (softirq, busy) = sys0.seconds_until(&sys1);
            let gw = probe::cpu_seconds_between(&procs0, &procs1);
            rr.figures
                .insert(format!("cpu_{mode}_mbps"), r.bits_per_second / 1e6);
            rr.figures
                .insert(format!("cpu_{mode}_softirq_s_per_gib"), softirq / gib);
            rr.figures
                .insert(format!("cpu_{mode}_busy_s_per_gib"), busy / gib);
            if self.gw.is_kernel() {
                na.insert(
                    format!("cpu_{mode}_gw_s_per_gib"),
                    "the kernel gateway runs no process: its forwarding cost is in softirq \
                     (see the softirq figure, system-wide)"
                        .into(),
                );
            } else {
                rr.figures
                    .insert(format!("cpu_{mode}_gw_s_per_gib"), gw / gib);
            }
            progress(&format!(
                "    {mode}: {:.0} Mbit/s, gateway procs {:.2} CPU-s/GiB, softirq {:.2}, all {:.2}",
                r.bits_per_second / 1e6,
                gw / gib,
                softirq / gib,
                busy / gib
            ));
        }
        Ok(())
    }
}

/// Unused-address guard for the docs: every address the harness uses is in
/// 198.18.0.0/15.
pub fn in_benchmark_range(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 198 && (o[1] & 0xfe) == 18
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(gateways: Vec<GatewayType>) -> RunOptions {
        RunOptions {
            gateways,
            scenarios: vec![Scenario::Throughput],
            rounds: 1,
            smoke: true,
            load: Load::smoke(),
            queues: 2,
            mtu: Mtus {
                pod: 9000,
                uplink: 4000,
            },
            xdp_mode: "auto".into(),
            tcp_config: PathBuf::from("mesh.yaml"),
            hbone_config: None,
            assume_hbone: false,
            dataplane_args: Vec::new(),
            pod_tx_checksum: false,
            self_exe: PathBuf::from("xdpmesh-bench"),
        }
    }

    #[test]
    fn topologies_get_the_mtus_and_only_kernel_offload_keeps_the_offloads() {
        let opts = options(vec![GatewayType::Kernel, GatewayType::KernelOffload]);
        for gw in [
            GatewayType::Kernel,
            GatewayType::XdpmeshTcp,
            GatewayType::XdpmeshHbone,
        ] {
            let t = gw.topology_opts(&opts);
            assert!(!t.offloads, "{gw:?}");
            assert_eq!((t.rx_queues, t.pod_mtu, t.uplink_mtu), (2, 9000, 4000));
        }
        // The same topology as kernel's but for the offloads.
        assert_eq!(
            GatewayType::KernelOffload.topology_opts(&opts),
            TopologyOpts {
                offloads: true,
                ..GatewayType::Kernel.topology_opts(&opts)
            }
        );
        // --pod-tx-checksum reaches every gateway type's topology.
        let pods = RunOptions {
            pod_tx_checksum: true,
            ..opts.clone()
        };
        for gw in [GatewayType::Kernel, GatewayType::XdpmeshTcp] {
            let t = gw.topology_opts(&pods);
            assert!(t.pod_tx_checksum && !t.offloads, "{gw:?}");
        }
        assert!(!GatewayType::Kernel.topology_opts(&opts).pod_tx_checksum);
    }

    #[test]
    fn mtus_out_of_range_are_refused_before_the_run() {
        let mut opts = options(vec![GatewayType::Kernel]);
        opts.validate().unwrap();
        opts.mtu.uplink = 100;
        let e = format!("{:#}", opts.validate().unwrap_err());
        assert!(
            e.contains("uplink_mtu 100") && e.contains("--uplink-mtu"),
            "{e}"
        );
        opts.mtu = Mtus {
            pod: 70_000,
            uplink: 1500,
        };
        assert!(opts.validate().is_err());
    }

    #[test]
    fn hbone_config_from_demo() {
        let demo = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../control/testdata/demo.yaml"),
        )
        .unwrap();
        let h = hbone_config_text(&demo);
        assert_eq!(h.matches("protocol: HBONE").count(), 2, "{h}");
        assert!(!h.contains("protocol: TCP"));
        assert_eq!(h.lines().count(), demo.lines().count());
    }

    #[test]
    fn gateway_histograms_are_read_from_stats_json_and_subtracted() {
        let stats = |count: u64, sum: u64, low: u64| {
            serde_json::json!({"count": count, "sum_us": sum, "buckets": [
                {"le": 0.0001, "count": low}, {"le": 0.00025, "count": count},
                {"le": "+Inf", "count": count}]})
        };
        let before = GwHistogram::parse(&stats(2, 300, 1)).unwrap();
        let after = GwHistogram::parse(&stats(12, 2_300, 5)).unwrap();
        assert_eq!(after.buckets[0], ("0.0001".to_string(), 5));
        assert_eq!(after.buckets[2], ("+Inf".to_string(), 12));
        let d = after.since(&before);
        assert_eq!((d.count, d.sum_us), (10, 2_000));
        assert_eq!(d.mean_us(), 200.0);
        assert_eq!(
            d.to_json(),
            serde_json::json!({"count": 10, "mean_us": 200.0,
                "le": {"0.0001": 4, "0.00025": 10, "+Inf": 10}})
        );
        assert_eq!(GwHistogram::default().mean_us(), 0.0);
        // A dataplane without the histograms (an older build) gives none, not zeros.
        assert_eq!(GwHistogram::parse(&serde_json::json!({"count": 1})), None);
    }

    #[test]
    fn parse_names() {
        assert_eq!(GatewayType::parse("kernel").unwrap(), GatewayType::Kernel);
        let k = GatewayType::parse("kernel-offload").unwrap();
        assert_eq!(k, GatewayType::KernelOffload);
        assert_eq!(k.name(), "kernel-offload");
        assert!(k.is_kernel() && !k.is_xdpmesh());
        assert!(GatewayType::parse("envoy").is_err());
        assert_eq!(Scenario::parse("cpu").unwrap(), Scenario::Cpu);
        assert!(Scenario::parse("nope").is_err());
        let g = GatewayType::parse(&format!(
            "external:{}/external/socat-relay.toml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        assert_eq!(g.name(), "external:socat-relay");
        assert!(in_benchmark_range(SERVER_ADDR));
        assert!(!in_benchmark_range(Ipv4Addr::new(198, 20, 0, 1)));
    }
}
