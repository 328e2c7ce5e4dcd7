//! `xdpmesh-control`: validates the mesh config, publishes the gateway's tables to the
//! dataplane workers through shared memory and keeps the XDP divert set in sync.
//! SIGHUP reloads the config; a bad file is rejected with its line and reason and the
//! tables in force stay in force.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Parser, Subcommand};
use tracing::{error, info, warn};
use xdpmesh_control::config::MeshConfig;
use xdpmesh_control::tables::{self, KernelRoutes};
use xdpmesh_shm::{ShmWriter, Tables};
use xdpmesh_xdp::PinnedMaps;

#[derive(Parser)]
#[command(name = "xdpmesh-control", version, about = "xdpmesh control process")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Publish the tables for one gateway and keep them in force until SIGTERM.
    Run {
        /// Mesh config (YAML); the embedded demo config when omitted.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The node whose gateway this is.
        #[arg(long)]
        node: String,
        /// Instance name (shared with the dataplane).
        #[arg(long)]
        instance: String,
        /// BPF pin directory (default /sys/fs/bpf/xdpmesh/<instance>).
        #[arg(long)]
        pin_root: Option<PathBuf>,
        /// Table file (default /dev/shm/xdpmesh-<instance>).
        #[arg(long)]
        shm: Option<PathBuf>,
        /// Size of each table area in bytes.
        #[arg(long, default_value_t = 4 << 20)]
        shm_area_size: usize,
    },
    /// Validate a config file and print a summary.
    Check {
        /// Mesh config (YAML).
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let r = match Cli::parse().cmd {
        Cmd::Check { config } => check(&config),
        Cmd::Run {
            config,
            node,
            instance,
            pin_root,
            shm,
            shm_area_size,
        } => run(
            config,
            &node,
            &pin_root.unwrap_or_else(|| PathBuf::from(format!("/sys/fs/bpf/xdpmesh/{instance}"))),
            &shm.unwrap_or_else(|| xdpmesh_shm::default_path(&instance)),
            shm_area_size,
        ),
    };
    if let Err(e) = r {
        eprintln!("xdpmesh-control: error: {e:#}");
        std::process::exit(1);
    }
}

fn load(path: Option<&Path>) -> Result<MeshConfig> {
    Ok(match path {
        Some(p) => MeshConfig::from_path(p)?,
        None => MeshConfig::embedded_default(),
    })
}

fn check(path: &Path) -> Result<()> {
    let cfg = load(Some(path))?;
    println!(
        "{}: ok: trust domain {}, {} nodes, {} workloads, {} addresses",
        path.display(),
        cfg.trust_domain.as_str(),
        cfg.nodes.len(),
        cfg.workloads.len(),
        cfg.workloads
            .iter()
            .map(|w| w.addresses.len())
            .sum::<usize>()
    );
    Ok(())
}

/// Keeps the XDP divert set equal to the tables in force (idempotent; also repairs
/// the map after a dataplane restart that recreated it).
fn sync_xdp(pin_dir: &Path, t: &Tables, quiet: bool) -> Result<bool> {
    let maps = match PinnedMaps::open(pin_dir) {
        Ok(m) => m,
        Err(_) => return Ok(false),
    };
    let s = maps.sync_workloads(&tables::divert_set(t))?;
    if !quiet || s.inserted + s.updated + s.deleted > 0 {
        info!(
            inserted = s.inserted,
            updated = s.updated,
            deleted = s.deleted,
            unchanged = s.unchanged,
            "XDP divert set synced"
        );
    }
    Ok(true)
}

fn run(config: Option<PathBuf>, node: &str, pin_dir: &Path, shm: &Path, area: usize) -> Result<()> {
    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, term.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, term.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;

    let cfg = load(config.as_deref())?;
    let mut tables = tables::build(&cfg, node, &mut KernelRoutes::default())?;
    let mut writer = ShmWriter::open_or_create(shm, area)?;
    let generation = writer.publish(&tables, Duration::from_secs(5))?;
    info!(generation, shm = %shm.display(), workloads = tables.workloads.len(), "tables published");

    // The dataplane creates the pinned maps when it loads the XDP program; until it
    // does, the tables wait in shared memory and nothing is diverted.
    let mut announced = false;
    let mut last_sync = Instant::now() - Duration::from_secs(10);
    while !term.load(Ordering::Relaxed) {
        if hup.swap(false, Ordering::Relaxed) {
            match load(config.as_deref())
                .and_then(|c| Ok(tables::build(&c, node, &mut KernelRoutes::default())?))
            {
                Ok(t) => match writer.publish(&t, Duration::from_secs(5)) {
                    Ok(g) => {
                        info!(generation = g, "config reloaded and published");
                        tables = t;
                        last_sync = Instant::now() - Duration::from_secs(10);
                    }
                    Err(e) => error!(
                        "publishing the reloaded config failed, generation {} stays in force: {e}",
                        writer.generation()
                    ),
                },
                Err(e) => error!(
                    "rejected config: {e:#}; generation {} stays in force",
                    writer.generation()
                ),
            }
        }
        if last_sync.elapsed() >= Duration::from_secs(1) {
            last_sync = Instant::now();
            match sync_xdp(pin_dir, &tables, announced) {
                Ok(true) if !announced => {
                    announced = true;
                    eprintln!(
                        "xdpmesh-control published generation {}",
                        writer.generation()
                    );
                }
                Ok(_) => {}
                Err(e) => warn!("syncing the XDP divert set: {e:#}"),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    info!("stopping; the tables and divert set stay in force for the running dataplane");
    Ok(())
}
