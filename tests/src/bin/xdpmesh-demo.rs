//! End-to-end demo: builds the four-namespace topology (prefix `xmdemo`), starts the
//! gateways, runs download / upload / iperf3 / echo between the client and server pods,
//! prints a table and the gateways' counters, tears everything down.
//! Exits non-zero if any check failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use nix::sys::signal::Signal;
use xdpmesh_netns::topology::SERVER_ADDR;
use xdpmesh_netns::{
    blob_sha256, require_root, DemoReport, GatewayKind, Node, ReportRow, Topology, TopologyOpts,
    ECHO_PORT, FILESERVER_PORT, IPERF_PORT,
};

/// The embedded default: both workloads on HBONE (`--protocol tcp` for plain TCP legs).
const HBONE_CONFIG: &str = include_str!("../../../control/testdata/demo-hbone.yaml");
const TCP_CONFIG: &str = include_str!("../../../control/testdata/demo.yaml");

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Protocol {
    Hbone,
    Tcp,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Gateway {
    Kernel,
    Xdpmesh,
}

#[derive(Parser, Debug)]
#[command(version, about = "xdpmesh end-to-end demo over network namespaces")]
struct Args {
    /// What carries traffic between the gateways.
    #[arg(long, value_enum, default_value_t = Gateway::Xdpmesh)]
    gateway: Gateway,
    /// Mesh config (default: the embedded control/testdata/demo-hbone.yaml, or demo.yaml
    /// with `--protocol tcp`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Workload protocol of the embedded config.
    #[arg(long, value_enum, default_value_t = Protocol::Hbone)]
    protocol: Protocol,
    /// Size of the download and of the upload, MiB.
    #[arg(long, default_value_t = 64)]
    size_mib: u64,
    /// RX/TX queues per veth and dataplane workers.
    #[arg(long, default_value_t = 1)]
    queues: u32,
    /// XDP attach mode for the dataplane.
    #[arg(long, default_value = "auto")]
    xdp_mode: String,
    /// Leave namespaces and processes running afterwards (delete with `ip netns del`).
    #[arg(long)]
    keep: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !require_root("xdpmesh-demo") {
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("xdpmesh-demo: some checks FAILED");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("xdpmesh-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Records a failed check and prints it.
fn check(failures: &mut Vec<String>, ok: bool, what: String) {
    if !ok {
        eprintln!("CHECK FAILED: {what}");
        failures.push(what);
    }
}

fn run(args: &Args) -> anyhow::Result<bool> {
    let opts = TopologyOpts {
        rx_queues: args.queues,
        ..TopologyOpts::default()
    };
    let mut topo = Topology::new("xmdemo", opts)?;
    if args.keep {
        topo.keep();
    }
    eprintln!(
        "topology {} up (namespaces {}, logs in {})",
        topo.prefix(),
        xdpmesh_netns::Node::ALL
            .iter()
            .map(|n| topo.ns_name(*n))
            .collect::<Vec<_>>()
            .join(" "),
        topo.tmp_dir().display()
    );
    let config = match &args.config {
        Some(path) => path.clone(),
        None => {
            let path = topo.tmp_dir().join("demo.yaml");
            let text = match args.protocol {
                Protocol::Hbone => HBONE_CONFIG,
                Protocol::Tcp => TCP_CONFIG,
            };
            std::fs::write(&path, text)?;
            path
        }
    };
    let kind = match args.gateway {
        Gateway::Kernel => GatewayKind::Kernel,
        Gateway::Xdpmesh => GatewayKind::Xdpmesh {
            queues: args.queues,
            xdp_mode: args.xdp_mode.clone(),
        },
    };
    topo.start_gateways(kind.clone(), &config)
        .context("starting gateways")?;
    eprintln!("gateways ({kind:?}) ready");

    let fileserver = topo.start_fileserver(Node::Server, FILESERVER_PORT)?;
    let echo = topo.start_echo_server(Node::Server, ECHO_PORT)?;
    let iperf = topo.start_iperf_server(Node::Server, IPERF_PORT)?;

    let mut report = DemoReport::default();
    let mut failures = Vec::new();
    let size = args.size_mib * 1024 * 1024;
    let base = format!("http://{SERVER_ADDR}:{FILESERVER_PORT}");

    // Download.
    let seed = 1;
    match topo.http_download(
        Node::Client,
        &format!("{base}/blob?size={size}&seed={seed}"),
    ) {
        Ok(t) => {
            let ok = t.bytes == size && t.sha256 == blob_sha256(size, seed);
            check(
                &mut failures,
                ok,
                format!("download: {} bytes, sha256 {}", t.bytes, t.sha256),
            );
            report.push(ReportRow::new("download", t.bytes, t.seconds, 1, Some(ok)));
        }
        Err(e) => {
            check(&mut failures, false, format!("download: {e:#}"));
            report.push(ReportRow::new("download", 0, 0.0, 1, Some(false)));
        }
    }

    // Upload.
    match topo.http_upload(Node::Client, &format!("{base}/upload"), size, 2) {
        Ok(u) => {
            check(
                &mut failures,
                u.ok(),
                format!(
                    "upload: server read {} bytes with sha256 {}, sent {} with {}",
                    u.length, u.sha256, u.bytes, u.expected_sha256
                ),
            );
            report.push(ReportRow::new(
                "upload",
                u.bytes,
                u.seconds,
                1,
                Some(u.ok()),
            ));
        }
        Err(e) => {
            check(&mut failures, false, format!("upload: {e:#}"));
            report.push(ReportRow::new("upload", 0, 0.0, 1, Some(false)));
        }
    }

    // iperf3.
    match topo.run_iperf(Node::Client, SERVER_ADDR, IPERF_PORT, 5) {
        Ok(r) => {
            check(
                &mut failures,
                r.bits_per_second > 0.0,
                format!("iperf3: {} bits/s", r.bits_per_second),
            );
            report.push(ReportRow::new("iperf3", r.bytes, r.seconds, 1, None));
        }
        Err(e) => {
            check(&mut failures, false, format!("iperf3: {e:#}"));
            report.push(ReportRow::new("iperf3", 0, 0.0, 1, None));
        }
    }

    // Echo.
    let conns = 200;
    match topo.run_echo_client(Node::Client, SERVER_ADDR, ECHO_PORT, conns, 64 * 1024) {
        Ok(r) => {
            let ok = r.failed == 0 && r.ok == u64::from(conns);
            check(
                &mut failures,
                ok,
                format!("echo: {} ok, {} failed: {:?}", r.ok, r.failed, r.errors),
            );
            // Bytes moved both ways.
            report.push(ReportRow::new(
                "echo",
                2 * r.bytes,
                r.seconds,
                r.connections,
                Some(ok),
            ));
        }
        Err(e) => {
            check(&mut failures, false, format!("echo: {e:#}"));
            report.push(ReportRow::new(
                "echo",
                0,
                0.0,
                u64::from(conns),
                Some(false),
            ));
        }
    }

    println!();
    println!("xdpmesh-demo, gateway {:?}", args.gateway);
    report.print_table();

    if matches!(kind, GatewayKind::Xdpmesh { .. }) {
        // Let the 200 ms stats writer catch up with the last connections.
        std::thread::sleep(Duration::from_millis(400));
        println!();
        for node in [Node::GatewayA, Node::GatewayB] {
            match topo.gateway_stats(node) {
                Ok(stats) => print_stats(node, &stats),
                Err(e) => check(&mut failures, false, format!("{node:?} stats: {e:#}")),
            }
        }
        if !args.keep {
            for (name, status, graceful) in topo.stop_gateways(Signal::SIGTERM)? {
                check(
                    &mut failures,
                    graceful && status.success(),
                    format!("{name} on SIGTERM: {status} (exited in time: {graceful})"),
                );
            }
        }
    }
    if args.keep {
        println!(
            "\n--keep: namespaces {p}-*, gateways and peers left running; \
             remove with: for n in client gwa gwb server; do ip netns del {p}-$n; done \
             (or run xdpmesh-demo again)",
            p = topo.prefix()
        );
        std::mem::forget(fileserver);
        std::mem::forget(echo);
        std::mem::forget(iperf);
    }
    Ok(failures.is_empty())
}

fn print_stats(node: Node, stats: &serde_json::Value) {
    let totals = &stats["totals"];
    let n = |k: &str| totals[k].as_u64().unwrap_or(0);
    println!(
        "{node:?}: generation {}, live connections {}, opened {}, closed {}, handovers out/in {}/{}, rx {} tx {} packets, rss {} bytes",
        stats["generation"].as_u64().unwrap_or(0),
        n("live_connections"),
        n("opened_connections"),
        n("closed_connections"),
        n("handover_out"),
        n("handover_in"),
        n("rx_packets"),
        n("tx_packets"),
        stats["rss_bytes"].as_u64().unwrap_or(0),
    );
    println!(
        "  hbone: tunnels opened {} accepted {} closed {}, streams {}, refused {}, tunnel failures {}",
        n("hbone_tunnels_opened"),
        n("hbone_tunnels_accepted"),
        n("hbone_tunnels_closed"),
        n("hbone_streams"),
        n("hbone_refused"),
        n("hbone_tunnel_failures"),
    );
    if let Some(xdp) = stats["xdp"].as_object() {
        let parts: Vec<String> = xdp
            .iter()
            .filter(|(_, v)| v["packets"].as_u64().unwrap_or(0) > 0)
            .map(|(reason, v)| {
                format!(
                    "{reason}={} pkts/{} B",
                    v["packets"].as_u64().unwrap_or(0),
                    v["bytes"].as_u64().unwrap_or(0)
                )
            })
            .collect();
        println!("  xdp: {}", parts.join(", "));
    }
}
