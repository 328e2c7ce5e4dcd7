//! `xdpmesh-control`: validates the mesh config, publishes the gateway's tables to the
//! dataplane workers through shared memory and keeps the XDP divert set in sync.
//! SIGHUP, or a change of the config file (inotify), reloads the config; a bad file is rejected with its line and reason and the
//! tables in force stay in force. With every publication it also writes the local
//! workloads' certificates to the identity directory (see `xdpmesh_control::certs`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use tracing::{error, info, warn};
use xdpmesh_control::certs::{self, IdentitySource, SourceKind};
use xdpmesh_control::config::MeshConfig;
use xdpmesh_control::drain::{Drain, Ended};
use xdpmesh_control::tables::{self, KernelRoutes};
use xdpmesh_control::watch::ConfigWatch;
use xdpmesh_hbone::{SpiffeId, Validity};
use xdpmesh_shm::lock::Role;
use xdpmesh_shm::{InstanceLock, Opened, ShmWriter, Tables};
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
        /// Size of each table area in bytes. A table file that a running dataplane
        /// uses keeps its own size (a warning says so) until the dataplane is stopped.
        #[arg(long, default_value_t = 4 << 20)]
        shm_area_size: usize,
        /// Run directory of the instance, where this process holds `control.lock`
        /// (default /run/xdpmesh/<instance>; the dataplane's --run-dir).
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// How long a removed workload's or service's address stays diverted at most
        /// while connections opened before its removal drain (`30s`, `2m`; 0 ends
        /// them at once). New connections follow the new tables either way.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
        drain_timeout: Duration,
        #[command(flatten)]
        identity: IdentityArgs,
        /// Identity directory written for the dataplane (default
        /// /run/xdpmesh/<instance>/identity).
        #[arg(long)]
        identity_out: Option<PathBuf>,
    },
    /// Validate a config file and print a summary.
    Check {
        /// Mesh config (YAML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Manage the local mesh CA.
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// Issue one workload certificate (for tests and operators).
    Issue {
        /// The workload's SPIFFE ID, spiffe://<td>/ns/<namespace>/sa/<service-account>.
        #[arg(long)]
        spiffe: String,
        /// Where to write the certificate chain (PEM, mode 0644).
        #[arg(long)]
        out_cert: PathBuf,
        /// Where to write the private key (PKCS#8 PEM, mode 0600).
        #[arg(long)]
        out_key: PathBuf,
        #[command(flatten)]
        ca: CaArgs,
        /// Certificate lifetime in hours.
        #[arg(long, default_value_t = 24)]
        validity_hours: u64,
        /// Issue an already expired certificate (valid from 2 h ago to 1 h ago).
        #[arg(long, conflicts_with = "validity_hours")]
        not_after_past: bool,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// Create the local CA for a trust domain unless it exists (idempotent).
    Init {
        /// The mesh's trust domain.
        #[arg(long)]
        trust_domain: String,
        /// CA directory (ca.crt, ca.key).
        #[arg(long, default_value = certs::DEFAULT_CA_DIR)]
        ca_dir: PathBuf,
    },
}

/// Which CA issues certificates.
#[derive(Args)]
struct CaArgs {
    /// Local CA directory (ca.crt, ca.key), created on first use [default:
    /// /var/lib/xdpmesh/ca].
    #[arg(long, conflicts_with_all = ["ca_cert", "ca_key"])]
    ca_dir: Option<PathBuf>,
    /// An existing mesh CA's certificate (PEM); needs --ca-key.
    #[arg(long, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// An existing mesh CA's private key (PKCS#8 PEM); needs --ca-cert.
    #[arg(long, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
}

/// Where the workloads' certificates come from.
#[derive(Args)]
struct IdentityArgs {
    #[command(flatten)]
    ca: CaArgs,
    /// Ready-made certificates instead of a CA: DIR/roots.pem and
    /// DIR/<namespace>/<service-account>.crt and .key.
    #[arg(long, conflicts_with_all = ["ca_dir", "ca_cert", "ca_key"])]
    identity_dir: Option<PathBuf>,
    /// Lifetime of issued workload certificates in hours.
    #[arg(long, default_value_t = 24)]
    cert_validity_hours: u64,
    /// Also trust the roots in this PEM file (repeat): for a CA rollover, trust the
    /// new root everywhere first, then switch the issuing CA, then drop the old root.
    #[arg(long = "trust-roots")]
    trust_roots: Vec<PathBuf>,
    /// Lifetime of issued workload certificates as a duration (`10s`, `30m`, `24h`);
    /// overrides --cert-validity-hours. Certificates are renewed at half their
    /// lifetime.
    #[arg(long, value_parser = humantime::parse_duration)]
    cert_ttl: Option<Duration>,
}

impl CaArgs {
    fn kind(&self) -> SourceKind {
        match (&self.ca_cert, &self.ca_key) {
            (Some(cert), Some(key)) => SourceKind::MeshCa {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => SourceKind::LocalCa {
                dir: self
                    .ca_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(certs::DEFAULT_CA_DIR)),
            },
        }
    }
}

impl IdentityArgs {
    fn source(&self) -> Result<IdentitySource> {
        let kind = match &self.identity_dir {
            Some(dir) => SourceKind::ReadyMade { dir: dir.clone() },
            None => self.ca.kind(),
        };
        let validity = match self.cert_ttl {
            Some(ttl) if ttl < MIN_CERT_TTL || ttl > MAX_CERT_TTL => anyhow::bail!(
                "--cert-ttl {} is out of range: use {} to {} (certificates are renewed at half their lifetime)",
                humantime::format_duration(ttl),
                humantime::format_duration(MIN_CERT_TTL),
                humantime::format_duration(MAX_CERT_TTL)
            ),
            Some(ttl) => ttl,
            None => hours(self.cert_validity_hours)?,
        };
        Ok(IdentitySource::new(kind, validity).with_extra_roots(self.trust_roots.clone()))
    }
}

/// The shortest `--cert-ttl`: renewal at half of it, checked every loop iteration.
const MIN_CERT_TTL: Duration = Duration::from_secs(2);
/// The longest `--cert-ttl` (as --cert-validity-hours): ten years.
const MAX_CERT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// After a failed renewal, the next try comes this much later.
const RENEWAL_RETRY: Duration = Duration::from_secs(5);

fn hours(h: u64) -> Result<Duration> {
    if h == 0 || h > 10 * 365 * 24 {
        anyhow::bail!("certificate validity must be 1 to 87600 hours, not {h}");
    }
    Ok(Duration::from_secs(h * 3600))
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files and journald get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let r = match Cli::parse().cmd {
        Cmd::Check { config } => check(&config),
        Cmd::Ca {
            cmd: CaCmd::Init {
                trust_domain,
                ca_dir,
            },
        } => ca_init(&trust_domain, &ca_dir),
        Cmd::Issue {
            spiffe,
            out_cert,
            out_key,
            ca,
            validity_hours,
            not_after_past,
        } => issue(
            &spiffe,
            &out_cert,
            &out_key,
            &ca,
            validity_hours,
            not_after_past,
        ),
        Cmd::Run {
            config,
            node,
            instance,
            pin_root,
            shm,
            shm_area_size,
            run_dir,
            drain_timeout,
            identity,
            identity_out,
        } => {
            let run_dir = run_dir.unwrap_or_else(|| xdpmesh_shm::lock::default_run_dir(&instance));
            // One control per instance, held for this process's whole life (until `run`
            // returns, then exit): taken before the table file, the identity directory
            // or the divert set is touched.
            InstanceLock::acquire(&run_dir, &instance, Role::Control)
                .map_err(anyhow::Error::from)
                .and_then(|_lock| {
                    let source = identity.source()?;
                    run(
                        Gateway {
                            config,
                            node: &node,
                            pin_dir: &pin_root.unwrap_or_else(|| {
                                PathBuf::from(format!("/sys/fs/bpf/xdpmesh/{instance}"))
                            }),
                            shm: &shm.unwrap_or_else(|| xdpmesh_shm::default_path(&instance)),
                            area: shm_area_size,
                            identity_out: &identity_out
                                .unwrap_or_else(|| certs::default_identity_out(&instance)),
                        },
                        Drain::new(drain_timeout),
                        source,
                    )
                })
        }
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

fn ca_init(trust_domain: &str, dir: &Path) -> Result<()> {
    let td = xdpmesh_control::config::TrustDomain::new(trust_domain)?;
    let (_, created) = certs::load_or_create_ca(dir, td.as_str())?;
    println!(
        "{}: CA for trust domain {} {}",
        dir.display(),
        td.as_str(),
        if created { "created" } else { "exists" }
    );
    Ok(())
}

fn issue(
    spiffe: &str,
    out_cert: &Path,
    out_key: &Path,
    ca: &CaArgs,
    validity_hours: u64,
    not_after_past: bool,
) -> Result<()> {
    let id: SpiffeId = spiffe.parse()?;
    let validity = if not_after_past {
        certs::expired_validity()
    } else {
        Validity::for_duration(hours(validity_hours)?)
    };
    let ca = match ca.kind() {
        SourceKind::MeshCa { cert, key } => certs::load_ca_files(&cert, &key)?,
        // An existing CA issues for any trust domain (verifiers police it); a missing
        // one is created for the ID's trust domain.
        SourceKind::LocalCa { dir } => match certs::load_ca_dir(&dir)? {
            Some(ca) => ca,
            None => certs::load_or_create_ca(&dir, &id.trust_domain)?.0,
        },
        SourceKind::ReadyMade { .. } => unreachable!("issue has no --identity-dir"),
    };
    certs::issue_to_files(&ca, &id, validity, out_cert, out_key)?;
    println!(
        "issued {id}: certificate {}, key {}",
        out_cert.display(),
        out_key.display()
    );
    Ok(())
}

/// Publishes the identities for `generation`, logging the count (never key material).
fn publish_identities(
    source: &mut IdentitySource,
    cfg: &MeshConfig,
    node: &str,
    out: &Path,
    generation: u64,
) -> Result<()> {
    let p = certs::publish_identities(source, cfg, node, out, generation)?;
    info!(
        generation = p.generation,
        identities = p.identities,
        issued = p.issued,
        reused = p.reused,
        dir = %out.display(),
        "identities written"
    );
    Ok(())
}

/// Keeps the XDP divert set equal to the tables in force and the addresses draining
/// (idempotent; also repairs the map after a dataplane restart that recreated it).
fn sync_xdp(pin_dir: &Path, t: &Tables, drain: &Drain, quiet: bool) -> Result<bool> {
    let maps = match PinnedMaps::open(pin_dir) {
        Ok(m) => m,
        Err(_) => return Ok(false),
    };
    let s = maps.sync_workloads(&drain.divert_set(&tables::divert_set(t)))?;
    if !quiet || s.inserted + s.updated + s.deleted > 0 {
        info!(
            inserted = s.inserted,
            updated = s.updated,
            deleted = s.deleted,
            unchanged = s.unchanged,
            "XDP divert set synced"
        );
    }
    let c = maps.sync_pod_cidrs(&tables::pod_cidr_set(t))?;
    if c.inserted + c.updated + c.deleted > 0 {
        info!(
            inserted = c.inserted,
            updated = c.updated,
            deleted = c.deleted,
            unchanged = c.unchanged,
            "XDP pod ranges synced"
        );
    }
    Ok(true)
}

/// Before a new generation is published: makes the XDP maps divert what either
/// generation diverts (the new flags win for an address in both), so that the
/// workers never see a packet of a workload the new tables name go around them to
/// the kernel (a held SYN's connection, say, whose ACK would otherwise meet the old
/// maps). What only the old generation diverts is removed by the sync after the
/// publication.
fn sync_xdp_before(pin_dir: &Path, old: &Tables, new: &Tables, drain: &Drain) -> Result<()> {
    let Ok(maps) = PinnedMaps::open(pin_dir) else {
        return Ok(());
    };
    let mut divert = drain.divert_set(&tables::divert_set(old));
    divert.extend(tables::divert_set(new));
    let mut cidrs = tables::pod_cidr_set(old);
    cidrs.extend(tables::pod_cidr_set(new));
    maps.sync_workloads(&divert)?;
    maps.sync_pod_cidrs(&cidrs)?;
    Ok(())
}

/// What `run` serves: the gateway of one node, and where its state lives.
struct Gateway<'a> {
    config: Option<PathBuf>,
    node: &'a str,
    pin_dir: &'a Path,
    shm: &'a Path,
    area: usize,
    identity_out: &'a Path,
}

fn run(gw: Gateway<'_>, mut drain: Drain, mut identities: IdentitySource) -> Result<()> {
    let Gateway {
        config,
        node,
        pin_dir,
        shm,
        area,
        identity_out,
    } = gw;
    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, term.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, term.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;

    let mut cfg = load(config.as_deref())?;
    let mut tables = tables::build(&cfg, node, &mut KernelRoutes::default())?;
    let (mut writer, opened) = ShmWriter::open_or_create(shm, area)?;
    match opened {
        Opened::Created => {
            info!(shm = %shm.display(), area_size = writer.area_size(), "table file created")
        }
        Opened::Reused => {
            info!(shm = %shm.display(), generation = writer.generation(), "table file reused")
        }
        Opened::Resized { from, to } => info!(
            shm = %shm.display(),
            "table file recreated: areas of {from} bytes resized to {to} (no dataplane used it)"
        ),
        Opened::KeptAreaSize {
            requested,
            kept,
            workers,
        } => warn!(
            shm = %shm.display(),
            "--shm-area-size {requested} ignored: {workers} running dataplane worker(s) use the table file with areas of {kept} bytes; the new size applies once the dataplane is stopped and control restarted"
        ),
    }
    let generation = writer.publish(&tables, Duration::from_secs(5))?;
    info!(generation, shm = %shm.display(), workloads = tables.workloads.len(), "tables published");
    // A restart whose config no longer names an address that the running dataplane
    // diverts: it drains like a removal by this generation.
    if let Ok(diverted) = PinnedMaps::open(pin_dir).and_then(|m| m.workloads()) {
        drain.published(
            &diverted,
            &tables::divert_set(&tables),
            generation,
            Instant::now(),
        );
        if !drain.is_empty() {
            info!(
                addresses = drain.len(),
                "addresses the dataplane diverts that the config no longer names: draining"
            );
        }
    }
    publish_identities(&mut identities, &cfg, node, identity_out, generation)?;

    // The dataplane creates the pinned maps when it loads the XDP program; until it
    // does, the tables wait in shared memory and nothing is diverted.
    let mut announced = false;
    let mut last_sync = Instant::now() - Duration::from_secs(10);
    let mut renewals = 0u64;
    let mut renew_after: Option<Instant> = None;
    // The config file is watched as well as SIGHUP: a file replaced by rename or
    // rewritten in place is reloaded within one loop iteration (50 ms).
    let mut watch = match config.as_deref().map(ConfigWatch::new).transpose() {
        Ok(w) => w,
        Err(e) => {
            warn!("not watching the config file ({e}); reload it with SIGHUP");
            None
        }
    };
    while !term.load(Ordering::Relaxed) {
        let hupped = hup.swap(false, Ordering::Relaxed);
        let edited = watch.as_mut().is_some_and(ConfigWatch::changed);
        if hupped || edited {
            if hupped {
                if let Some(w) = watch.as_mut() {
                    w.mark_seen();
                }
            }
            let why = if hupped { "SIGHUP" } else { "the file changed" };
            info!("reloading the config: {why}");
            match load(config.as_deref()).and_then(|c| {
                let t = tables::build(&c, node, &mut KernelRoutes::default())?;
                Ok((c, t))
            }) {
                Ok((c, t)) => match sync_xdp_before(pin_dir, &tables, &t, &drain)
                    .and_then(|()| Ok(writer.publish(&t, Duration::from_secs(5))?))
                {
                    Ok(g) => {
                        info!(generation = g, "config reloaded and published");
                        let before = drain.len();
                        drain.published(
                            &tables::divert_set(&tables),
                            &tables::divert_set(&t),
                            g,
                            Instant::now(),
                        );
                        if drain.len() > before {
                            info!(
                                generation = g,
                                draining = drain.len(),
                                "removed addresses stay diverted while their connections drain"
                            );
                        }
                        tables = t;
                        cfg = c;
                        last_sync = Instant::now() - Duration::from_secs(10);
                        if let Err(e) =
                            publish_identities(&mut identities, &cfg, node, identity_out, g)
                        {
                            error!(
                                "identities for generation {g} not written, the identity directory keeps the previous ones: {e:#}"
                            );
                        }
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
        // Certificates are renewed at half their lifetime; the dataplane picks the new
        // identity directory up for new handshakes, established tunnels go on.
        let due = identities
            .next_renewal()
            .is_some_and(|t| std::time::SystemTime::now() >= t);
        if due && renew_after.is_none_or(|t| Instant::now() >= t) {
            match publish_identities(
                &mut identities,
                &cfg,
                node,
                identity_out,
                writer.generation(),
            ) {
                Ok(()) => {
                    renewals += 1;
                    renew_after = None;
                    info!(
                        renewals,
                        ttl = %humantime::format_duration(identities.validity()),
                        "workload certificates renewed at half their lifetime"
                    );
                }
                Err(e) => {
                    renew_after = Some(Instant::now() + RENEWAL_RETRY);
                    error!(
                        "renewing workload certificates failed, retrying in {}s; the identities in force stay: {e:#}",
                        RENEWAL_RETRY.as_secs()
                    );
                }
            }
        }
        if last_sync.elapsed() >= Duration::from_secs(1) {
            last_sync = Instant::now();
            // Readers tell a live control process from a dead one by this.
            writer.heartbeat();
            for (addr, why, took) in drain.expire(writer.oldest_in_use(), Instant::now()) {
                match why {
                    Ended::Drained => {
                        info!(%addr, after = ?took, "removed address drained: its connections ended; no longer diverted")
                    }
                    Ended::TimedOut => {
                        warn!(%addr, after = ?took, "removed address still had connections at the drain timeout; no longer diverted, they break")
                    }
                }
            }
            match sync_xdp(pin_dir, &tables, &drain, announced) {
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
