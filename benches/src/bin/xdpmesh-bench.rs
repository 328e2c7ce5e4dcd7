//! `xdpmesh-bench`: the end-to-end benchmark harness (see `benches/README.md`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use xdpmesh_benches::report::{BenchReport, Mtus};
use xdpmesh_benches::runner::{self, GatewayType, Load, RunOptions, Scenario};
use xdpmesh_benches::{compare, loadgen, plot};

/// Benchmarks xdpmesh against the kernel (and other proxies) on a veth/netns topology.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the benchmarks (the default command).
    Run(Box<RunArgs>),
    /// Compare NEW against BASELINE on ratio-to-kernel figures; exit 1 on a regression,
    /// 2 when the files cannot be compared (unreadable, or taken at different MTUs).
    Compare {
        baseline: PathBuf,
        new: PathBuf,
        /// Relative change that counts as a regression.
        #[arg(long, default_value_t = 0.10)]
        threshold: f64,
    },
    /// Draw the plots of an existing result file.
    Plot {
        result: PathBuf,
        #[arg(long, default_value = "bench-out")]
        dir: PathBuf,
    },
    #[command(hide = true)]
    Serve {
        #[arg(long, default_value_t = loadgen::ECHO_PORT)]
        echo_port: u16,
        #[arg(long, default_value_t = loadgen::CONNRATE_PORT)]
        connrate_port: u16,
        #[arg(long, default_value_t = loadgen::HOLD_PORT)]
        hold_port: u16,
    },
    #[command(hide = true)]
    PingpongClient {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 1000)]
        warmup_ms: u64,
        #[arg(long, default_value_t = 5000)]
        duration_ms: u64,
        #[arg(long, default_value_t = u64::MAX)]
        max_round_trips: u64,
    },
    #[command(hide = true)]
    ConnrateClient {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 4)]
        threads: usize,
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        #[arg(long, default_value_t = 5000)]
        duration_ms: u64,
    },
    #[command(hide = true)]
    HoldClient {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 8)]
        threads: usize,
        #[arg(long, default_value_t = 600)]
        hold_secs: u64,
    },
}

#[derive(Args, Clone)]
struct RunArgs {
    /// Gateway types, comma-separated: kernel, kernel-offload (kernel routing with the
    /// veths' offloads on; ratios stay relative to kernel), xdpmesh-tcp, xdpmesh-hbone,
    /// external:FILE.
    #[arg(long, default_value = "kernel,xdpmesh-tcp,xdpmesh-hbone")]
    gateways: String,
    /// Scenarios, comma-separated: throughput, latency, connrate, concurrency, cpu.
    #[arg(long, default_value = "throughput,latency,connrate,concurrency,cpu")]
    scenarios: String,
    /// Rounds; gateway types alternate within each round (A B A B).
    #[arg(long)]
    rounds: Option<u32>,
    /// CI mode: a few seconds per scenario, 1 round; fails only when a scenario errors.
    #[arg(long)]
    smoke: bool,
    /// Result file.
    #[arg(long, default_value = "bench-out/result.json")]
    out: PathBuf,
    /// Directory for the PNG plots (default: the result file's directory).
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Skip the plots.
    #[arg(long)]
    no_plots: bool,
    /// veth queues and dataplane workers.
    #[arg(long, default_value_t = 1)]
    queues: u32,
    /// MTU of every link (pod links and the uplink between the gateways), 576-65535;
    /// default 1500.
    #[arg(long, value_name = "N")]
    mtu: Option<u32>,
    /// MTU of the two pod links (client-gateway A, gateway B-server); overrides --mtu.
    #[arg(long, value_name = "N")]
    pod_mtu: Option<u32>,
    /// MTU of the uplink between the gateways; overrides --mtu.
    #[arg(long, value_name = "N")]
    uplink_mtu: Option<u32>,
    /// Dataplane --xdp-mode.
    #[arg(long, default_value = "auto")]
    xdp_mode: String,
    /// Mesh config of xdpmesh-tcp (default: control/testdata/demo.yaml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Mesh config of xdpmesh-hbone (default: --config with every `protocol: HBONE`).
    #[arg(long)]
    hbone_config: Option<PathBuf>,
    /// Do not check that the dataplane reports HBONE activity for xdpmesh-hbone.
    #[arg(long)]
    assume_hbone: bool,
    /// Extra arguments of both gateways' `xdpmesh-dataplane run`, space-separated
    /// (e.g. "--poll busy"), for the xdpmesh gateway types.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    dataplane_args: Option<String>,
    /// The pods' veth ends keep checksum offload (tx-checksumming, the kernel's default;
    /// every other offload stays off); the xdpmesh gateways get --trust-tcp-checksum pod0.
    #[arg(long)]
    pod_tx_checksum: bool,
    /// Seconds per throughput run (default 5, smoke 1).
    #[arg(long)]
    iperf_secs: Option<u32>,
    /// Open-connection levels of the concurrency scenario (default 10,1000,10000; smoke 10,1000).
    #[arg(long)]
    concurrency: Option<String>,
    /// Offered rate of the fixed-rate CPU measurement, Mbit/s.
    #[arg(long)]
    cpu_rate_mbit: Option<u32>,
}

fn workspace_root() -> PathBuf {
    // benches/ is one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty())
}

fn run_cmd(a: RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "xdpmesh-bench needs root (network namespaces, XDP)"
    );
    let root = workspace_root();
    let gateways = list(&a.gateways)
        .map(GatewayType::parse)
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!gateways.is_empty(), "no gateway type given");
    let mut scenarios = list(&a.scenarios)
        .map(Scenario::parse)
        .collect::<anyhow::Result<Vec<_>>>()?;
    scenarios.dedup();
    let mut load = if a.smoke { Load::smoke() } else { Load::full() };
    if let Some(s) = a.iperf_secs {
        load.iperf_secs = s;
    }
    if let Some(c) = &a.concurrency {
        load.concurrency_levels = list(c)
            .map(|x| x.parse().with_context(|| format!("bad level {x:?}")))
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(r) = a.cpu_rate_mbit {
        load.cpu_rate_mbit = r;
    }
    let opts = RunOptions {
        gateways,
        scenarios,
        rounds: a.rounds.unwrap_or(if a.smoke { 1 } else { 2 }).max(1),
        smoke: a.smoke,
        load,
        queues: a.queues,
        mtu: Mtus::from_flags(a.mtu, a.pod_mtu, a.uplink_mtu),
        xdp_mode: a.xdp_mode.clone(),
        tcp_config: a
            .config
            .clone()
            .unwrap_or_else(|| root.join("control/testdata/demo.yaml")),
        hbone_config: a.hbone_config.clone(),
        assume_hbone: a.assume_hbone,
        dataplane_args: a
            .dataplane_args
            .as_deref()
            .map(|s| s.split_whitespace().map(String::from).collect())
            .unwrap_or_default(),
        pod_tx_checksum: a.pod_tx_checksum,
        self_exe: std::env::current_exe().context("locating this executable")?,
    };
    opts.validate()?;
    let t0 = std::time::Instant::now();
    let report = runner::run(&opts, &root);
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&a.out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!();
    print!("{}", report.table());
    println!(
        "result: {} ({:.0}s)",
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    if !a.no_plots {
        let dir = a.plots.clone().unwrap_or_else(|| {
            a.out
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        });
        match plot::write_all(&report, &dir) {
            Ok(files) => {
                for f in files {
                    println!("plot: {}", f.display());
                }
            }
            Err(e) => eprintln!("plots failed: {e:#}"),
        }
    }
    let errors = report.scenario_errors();
    if errors.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "xdpmesh-bench: {} scenario error(s): a benchmark path is broken (details in {})",
            errors.len(),
            a.out.display()
        );
        Ok(ExitCode::from(2))
    }
}

fn load(path: &Path) -> anyhow::Result<BenchReport> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<ExitCode> {
    println!("{}", serde_json::to_string(v)?);
    Ok(ExitCode::SUCCESS)
}

fn real_main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.cmd {
        None => run_cmd(cli.run),
        Some(Cmd::Run(a)) => run_cmd(*a),
        Some(Cmd::Compare {
            baseline,
            new,
            threshold,
        }) => {
            let (b, n) = (load(&baseline)?, load(&new)?);
            let c = compare::compare(&b, &n, threshold)?;
            print!("{}", c.render(threshold));
            Ok(if c.regressions.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Some(Cmd::Plot { result, dir }) => {
            for f in plot::write_all(&load(&result)?, &dir)? {
                println!("plot: {}", f.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::Serve {
            echo_port,
            connrate_port,
            hold_port,
        }) => {
            loadgen::serve(echo_port, connrate_port, hold_port)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::PingpongClient {
            addr,
            size,
            warmup_ms,
            duration_ms,
            max_round_trips,
        }) => print_json(&loadgen::pingpong_client(
            addr,
            size,
            Duration::from_millis(warmup_ms),
            Duration::from_millis(duration_ms),
            max_round_trips,
        )?),
        Some(Cmd::ConnrateClient {
            addr,
            threads,
            count,
            duration_ms,
        }) => print_json(&loadgen::connrate_client(
            addr,
            threads,
            count,
            Duration::from_millis(duration_ms),
        )?),
        Some(Cmd::HoldClient {
            addr,
            count,
            threads,
            hold_secs,
        }) => {
            loadgen::hold_client(addr, count, threads, Duration::from_secs(hold_secs))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    match real_main() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("xdpmesh-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}
