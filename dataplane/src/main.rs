//! `xdpmesh-dataplane`: attach the XDP program, run one worker per RX queue, publish
//! counters; `stats` prints them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use crossbeam::queue::ArrayQueue;
use serde_json::json;
use tracing::{error, info, warn};
use xdpmesh_dataplane::access::Histogram;
use xdpmesh_dataplane::identity::IdentityStore;
use xdpmesh_dataplane::metrics::{Local, Shared};
use xdpmesh_dataplane::stack::Buffers;
use xdpmesh_dataplane::worker::{self, HboneLimits, PortSpec, WorkerSetup, HANDOVER_QUEUE};
use xdpmesh_dataplane::{host, ops, xsk};
use xdpmesh_shm::lock::Role;
use xdpmesh_shm::{InstanceLock, ShmReader};
use xdpmesh_xdp::{PinnedMaps, XdpMode, XdpProgram};

/// jemalloc with background purge threads: connection buffers freed by a worker go
/// back to the OS after jemalloc's decay time (10 s) even when the worker then sits
/// idle (an allocator that purges only during allocation activity keeps them).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "xdpmesh-dataplane",
    version,
    about = "AF_XDP mesh dataplane workers"
)]
struct Cli {
    /// Log format on stderr: `plain` (ztunnel's style: `src.addr=… src.workload="…"`)
    /// or `json` (one object per line, fields at the top level).
    #[arg(long, value_enum, default_value = "plain", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// An endpoint's listen address, or `off`.
fn parse_listen(s: &str) -> Result<Option<std::net::SocketAddr>, String> {
    if s == "off" {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|e| format!("{s:?}: {e} (want ADDRESS:PORT or off)"))
}

#[derive(Clone, Copy, ValueEnum)]
enum PollMode {
    /// Sleep in poll() when idle (need_wakeup rings).
    Wakeup,
    /// Spin: lowest latency, one full core per worker.
    Busy,
}

// Parsed once at start: the size of `Run`'s options does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Attach to interfaces and run the workers until SIGINT/SIGTERM.
    Run {
        /// Instance name (names the pin directory, table file and run directory).
        #[arg(long)]
        instance: String,
        /// Interface to divert from (repeat: pod side and uplink).
        #[arg(long = "iface", required = true)]
        ifaces: Vec<String>,
        /// Workers = RX queues used on every interface (default: the first interface's RX queue count).
        #[arg(long)]
        queues: Option<u32>,
        /// XDP attach mode: auto (native, else generic), native or generic.
        #[arg(long, default_value = "auto")]
        xdp_mode: XdpMode,
        /// Idle strategy.
        #[arg(long, value_enum, default_value = "wakeup")]
        poll: PollMode,
        /// Receive buffer per connection leg, bytes (default: 64 KiB, or four segments
        /// of the largest interface MTU if that is more).
        #[arg(long)]
        rx_buffer: Option<usize>,
        /// Send buffer per connection leg, bytes (default: as --rx-buffer).
        #[arg(long)]
        tx_buffer: Option<usize>,
        /// Delayed-ACK time of the connection legs, milliseconds: a leg ACKs at the
        /// latest this long after data arrives, and at once for every second full-sized
        /// segment (smoltcp's rule, as Linux's); 0 ACKs every segment at once.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=500))]
        ack_delay_ms: u64,
        /// Interface (repeat; one of --iface) whose received TCP checksums are taken
        /// as good unverified: a link to local pods only, so that the pods' veth ends can
        /// keep their checksum offload (`tx-checksumming`), whose frames carry only a
        /// partial checksum. Uplinks always verify.
        #[arg(long = "trust-tcp-checksum", value_name = "IFACE")]
        trust_tcp_checksum: Vec<String>,
        /// UMEM frames per socket (power of two; half RX, half TX).
        #[arg(long, default_value_t = 4096)]
        frames: u32,
        /// BPF pin directory (default /sys/fs/bpf/xdpmesh/<instance>).
        #[arg(long)]
        pin_root: Option<PathBuf>,
        /// Table file written by xdpmesh-control (default /dev/shm/xdpmesh-<instance>).
        #[arg(long)]
        shm: Option<PathBuf>,
        /// Run directory for stats.json and dataplane.lock (default
        /// /run/xdpmesh/<instance>).
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// How long to wait for the control process's table file at start.
        #[arg(long, default_value_t = 30)]
        wait_tables_secs: u64,
        /// Identity directory written by xdpmesh-control (default /run/xdpmesh/<instance>/identity).
        #[arg(long)]
        identity_dir: Option<PathBuf>,
        /// HBONE: streams per pooled connection.
        #[arg(long, default_value_t = 100)]
        hbone_stream_cap: usize,
        /// HBONE: idle pooled connections are closed after this many seconds.
        #[arg(long, default_value_t = 300)]
        hbone_idle_secs: u64,
        /// HBONE: every tunnel sends an HTTP/2 PING this long after it is up and after
        /// each answer (ztunnel: 10 s).
        #[arg(long, default_value_t = 10_000)]
        hbone_keepalive_interval_ms: u64,
        /// HBONE: a tunnel whose PING has had no answer for this long is closed and its
        /// streams reset (ztunnel: 20 s).
        #[arg(long, default_value_t = 20_000)]
        hbone_keepalive_timeout_ms: u64,
        /// Metrics endpoint (`/stats/prometheus`, `/metrics`), or `off`.
        #[arg(long, default_value = "0.0.0.0:15020", value_parser = parse_listen)]
        // Not `Option<…>`, which clap would read as "optional": `off` is the None.
        metrics_addr: ::std::option::Option<std::net::SocketAddr>,
        /// Readiness endpoint (`/healthz/ready`), or `off`.
        #[arg(long, default_value = "0.0.0.0:15021", value_parser = parse_listen)]
        readiness_addr: ::std::option::Option<std::net::SocketAddr>,
        /// Admin endpoint (`/config_dump`, `/logging`, `/quitquitquit`), or `off`. Keep
        /// it on a loopback address: it can stop the process and change its logging.
        #[arg(long, default_value = "127.0.0.1:15000", value_parser = parse_listen)]
        admin_addr: ::std::option::Option<std::net::SocketAddr>,
    },
    /// Inspect this gateway (run it in the gateway's network namespace): per finding,
    /// what it saw, what that breaks and the fix. Exit status 0: nothing wrong; 1: a
    /// warning or a failure.
    Doctor {
        /// Instance name.
        #[arg(long)]
        instance: String,
        /// Interfaces to inspect (repeat; default: those with an XDP program attached,
        /// else every interface).
        #[arg(long = "iface")]
        ifaces: Vec<String>,
        /// Run directory (default /run/xdpmesh/<instance>).
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// Table file (default /dev/shm/xdpmesh-<instance>).
        #[arg(long)]
        shm: Option<PathBuf>,
        /// Identity directory (default /run/xdpmesh/<instance>/identity).
        #[arg(long)]
        identity_dir: Option<PathBuf>,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Capture what the dataplane diverts and sends on interfaces into a pcapng file
    /// (the kernel's taps never see those frames); with --inner, also the HBONE
    /// streams' plaintext as synthetic TCP packets.
    Capture {
        /// Instance name.
        #[arg(long)]
        instance: String,
        /// Interface (repeat); one of the dataplane's --iface.
        #[arg(long = "iface", required = true)]
        ifaces: Vec<String>,
        /// Only frames and streams to or from this address.
        #[arg(long)]
        host: Option<std::net::IpAddr>,
        /// Only TCP to or from this port.
        #[arg(long)]
        port: Option<u16>,
        /// Also the decrypted byte streams of HBONE tunnels (interface `hbone-inner`).
        #[arg(long)]
        inner: bool,
        /// Stop after this many packets.
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// The pcapng file to write.
        #[arg(long, short = 'w')]
        write: PathBuf,
        /// Run directory (default /run/xdpmesh/<instance>).
        #[arg(long)]
        run_dir: Option<PathBuf>,
    },
    /// Print the last stats snapshot of a running (or stopped) instance.
    Stats {
        /// Instance name.
        #[arg(long)]
        instance: String,
        /// Run directory (default /run/xdpmesh/<instance>).
        #[arg(long)]
        run_dir: Option<PathBuf>,
        /// A live per-worker view (packets, bytes, drops, connections, tunnels, ring
        /// full), refreshed like `top` until interrupted.
        #[arg(long)]
        watch: bool,
        /// Seconds between refreshes of --watch.
        #[arg(long, default_value_t = 1.0, requires = "watch")]
        interval: f64,
        /// Stop --watch after this many screens (default: run until interrupted).
        #[arg(long, requires = "watch")]
        count: Option<u64>,
    },
}

/// Sets up logging (format, and a filter `/logging` can change at run time: a
/// tracing-subscriber reload handle). Returns the filter in force and how to change it.
fn init_logging(format: LogFormat) -> (String, ops::LogControl) {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, reload, EnvFilter};
    let default = "info,access=info";
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|d| EnvFilter::try_new(d).is_ok())
        .unwrap_or_else(|| default.to_owned());
    let (filter, handle) = reload::Layer::new(EnvFilter::new(&directives));
    let layer = fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files and journald get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Plain => registry.with(layer).init(),
        LogFormat::Json => registry
            .with(layer.json().flatten_event(true).with_ansi(false))
            .init(),
    }
    let control: ops::LogControl = Box::new(move |d: &str| {
        let f = EnvFilter::try_new(d).map_err(|e| format!("{d:?}: {e}"))?;
        handle
            .reload(f)
            .map_err(|e| format!("the log filter could not be replaced: {e}"))
    });
    (directives, control)
}

fn main() {
    let cli = Cli::parse();
    let (log_filter, log_control) = init_logging(cli.log_format);
    let r = match cli.cmd {
        Cmd::Run {
            instance,
            ifaces,
            queues,
            xdp_mode,
            poll,
            rx_buffer,
            tx_buffer,
            ack_delay_ms,
            trust_tcp_checksum,
            frames,
            pin_root,
            shm,
            run_dir,
            wait_tables_secs,
            identity_dir,
            hbone_stream_cap,
            hbone_idle_secs,
            hbone_keepalive_interval_ms,
            hbone_keepalive_timeout_ms,
            metrics_addr,
            readiness_addr,
            admin_addr,
        } => run(RunArgs {
            listen: ops::Listen {
                metrics: metrics_addr,
                readiness: readiness_addr,
                admin: admin_addr,
            },
            log: (log_filter, log_control),
            identity_dir: identity_dir
                .unwrap_or_else(|| default_run_dir(&instance).join("identity")),
            hbone: HboneLimits {
                stream_cap: hbone_stream_cap.max(1),
                idle_timeout_us: hbone_idle_secs as i64 * 1_000_000,
                keepalive_interval_us: hbone_keepalive_interval_ms.max(1) as i64 * 1000,
                keepalive_timeout_us: hbone_keepalive_timeout_ms.max(1) as i64 * 1000,
            },
            pin_dir: pin_root
                .unwrap_or_else(|| PathBuf::from(format!("/sys/fs/bpf/xdpmesh/{instance}"))),
            shm: shm.unwrap_or_else(|| xdpmesh_shm::default_path(&instance)),
            run_dir: run_dir.unwrap_or_else(|| default_run_dir(&instance)),
            instance,
            ifaces,
            queues,
            xdp_mode,
            busy: matches!(poll, PollMode::Busy),
            buffers: (rx_buffer, tx_buffer),
            ack_delay: (ack_delay_ms > 0)
                .then(|| smoltcp::time::Duration::from_millis(ack_delay_ms)),
            trust_tcp_checksum,
            frames,
            wait_tables: Duration::from_secs(wait_tables_secs),
        }),
        Cmd::Doctor {
            instance,
            ifaces,
            run_dir,
            shm,
            identity_dir,
            json,
        } => {
            let paths = xdpmesh_dataplane::doctor::Paths {
                ifaces,
                run_dir: run_dir.unwrap_or_else(|| default_run_dir(&instance)),
                shm: shm.unwrap_or_else(|| xdpmesh_shm::default_path(&instance)),
                identity_dir: identity_dir
                    .unwrap_or_else(|| default_run_dir(&instance).join("identity")),
            };
            let findings = xdpmesh_dataplane::doctor::gather(&paths);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&xdpmesh_dataplane::doctor::to_json(&findings))
                        .unwrap_or_default()
                );
            } else {
                print!("{}", xdpmesh_dataplane::doctor::render(&findings));
            }
            std::process::exit(xdpmesh_dataplane::doctor::exit_code(&findings));
        }
        Cmd::Capture {
            instance,
            ifaces,
            host,
            port,
            inner,
            count,
            duration,
            write,
            run_dir,
        } => {
            let req = xdpmesh_dataplane::capture::Request {
                ifaces,
                host,
                port,
                inner,
                packets: count,
                seconds: duration,
            };
            let dir = run_dir.unwrap_or_else(|| default_run_dir(&instance));
            std::fs::File::create(&write)
                .with_context(|| format!("creating {}", write.display()))
                .and_then(|f| {
                    xdpmesh_dataplane::capture::run_client(&dir, &req, std::io::BufWriter::new(f))
                })
                .map(|n| {
                    eprintln!(
                        "xdpmesh-dataplane capture: {n} packets written to {}",
                        write.display()
                    )
                })
        }
        Cmd::Stats {
            instance,
            run_dir,
            watch: true,
            interval,
            count,
        } => {
            let path = run_dir
                .unwrap_or_else(|| default_run_dir(&instance))
                .join("stats.json");
            watch_stats(&instance, &path, interval, count)
        }
        Cmd::Stats {
            instance, run_dir, ..
        } => {
            let path = run_dir
                .unwrap_or_else(|| default_run_dir(&instance))
                .join("stats.json");
            std::fs::read_to_string(&path)
                .with_context(|| {
                    format!(
                        "reading {} (is the dataplane instance {instance} running?)",
                        path.display()
                    )
                })
                .map(|s| println!("{s}"))
        }
    };
    if let Err(e) = r {
        eprintln!("xdpmesh-dataplane: error: {e:#}");
        std::process::exit(1);
    }
}

/// `stats --watch`: redraws the per-worker view every `interval` seconds (the screen
/// is cleared on a terminal; elsewhere each view follows the last).
fn watch_stats(instance: &str, path: &Path, interval: f64, count: Option<u64>) -> Result<()> {
    anyhow::ensure!(
        (0.2..=3600.0).contains(&interval),
        "--interval {interval} is out of range: 0.2 to 3600 seconds"
    );
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut before: Option<serde_json::Value> = None;
    let mut shown = 0u64;
    loop {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading {} (is the dataplane instance {instance} running?)",
                path.display()
            )
        })?;
        let now: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let screen = xdpmesh_dataplane::top::render(instance, before.as_ref(), &now);
        if tty {
            print!("\x1b[H\x1b[2J{screen}");
        } else {
            println!("{screen}");
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        before = Some(now);
        shown += 1;
        if count.is_some_and(|c| shown >= c) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs_f64(interval));
    }
}

fn default_run_dir(instance: &str) -> PathBuf {
    xdpmesh_shm::lock::default_run_dir(instance)
}

struct RunArgs {
    instance: String,
    ifaces: Vec<String>,
    queues: Option<u32>,
    xdp_mode: XdpMode,
    busy: bool,
    /// --rx-buffer and --tx-buffer; the defaults depend on the interfaces' MTU.
    buffers: (Option<usize>, Option<usize>),
    /// --ack-delay-ms (None: 0, off).
    ack_delay: Option<smoltcp::time::Duration>,
    /// --trust-tcp-checksum: interfaces whose received TCP checksums are not verified.
    trust_tcp_checksum: Vec<String>,
    frames: u32,
    pin_dir: PathBuf,
    shm: PathBuf,
    run_dir: PathBuf,
    wait_tables: Duration,
    identity_dir: PathBuf,
    hbone: HboneLimits,
    /// Where the operator's endpoints listen.
    listen: ops::Listen,
    /// The log filter in force and how to change it (`/logging`).
    log: (String, ops::LogControl),
}

fn open_tables(path: &Path, wait: Duration) -> Result<ShmReader> {
    let deadline = Instant::now() + wait;
    loop {
        match ShmReader::open(path) {
            Ok(r) => return Ok(r),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| {
                    format!("no workload tables at {} after {wait:?}: start `xdpmesh-control run` for this instance", path.display())
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn run(a: RunArgs) -> Result<()> {
    // One dataplane per instance, held for this process's whole life: taken before the
    // XDP program is loaded or attached, the pins or the table slots are touched, or
    // stats.json is written. It creates the run directory.
    let _lock = InstanceLock::acquire(&a.run_dir, &a.instance, Role::Dataplane)?;
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        warn!(%e, "jemalloc background purging unavailable: freed memory returns to the OS only under load");
    }
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    // The endpoints first: readiness says what is missing while the rest starts.
    let (log_filter, log_control) = a.log;
    let ops_state = Arc::new(ops::OpsState::new(stop.clone(), log_filter, log_control));
    ops::serve(ops_state.clone(), a.listen)?;

    if let Some(n) = a.trust_tcp_checksum.iter().find(|n| !a.ifaces.contains(n)) {
        bail!(
            "--trust-tcp-checksum {n}: not one of the dataplane's interfaces (--iface {})",
            a.ifaces.join(" --iface ")
        );
    }
    let mut ports: Vec<PortSpec> = Vec::new();
    let mut queues_avail = u32::MAX;
    for name in &a.ifaces {
        let (mut spec, q) = host::describe(name)?;
        if a.trust_tcp_checksum.contains(name) {
            spec.tcp_checksum = xdpmesh_dataplane::wire::TcpChecksum::Trust;
            info!(iface = %name, "received TCP checksums trusted (a link to local pods)");
        }
        queues_avail = queues_avail.min(q);
        ports.push(spec);
    }
    let max_mtu = ports.iter().map(|p| p.mtu).max().unwrap_or(0);
    let auto = Buffers::for_mtu(max_mtu);
    let buffers = Buffers {
        rx: a.buffers.0.unwrap_or(auto.rx),
        tx: a.buffers.1.unwrap_or(auto.tx),
    };
    let queues = a.queues.unwrap_or(queues_avail);
    if queues == 0 || queues > queues_avail {
        bail!("--queues {queues}: the interfaces have {queues_avail} RX queue(s); use at most that many workers");
    }
    // Order: program and sockets, attach with diversion off (everything passes), wait
    // for the tables, start the workers, then divert. Interface and XDP-mode errors
    // therefore show at once, and no frame is diverted before a worker can take it.
    let prog = XdpProgram::load(&a.pin_dir)?;
    prog.set_enabled(false)?;
    // Sockets first, then attach: no diverted frame ever finds an empty XSKMAP slot
    // that it could have used (and until then the kernel keeps the traffic).
    let mut sockets = Vec::new();
    for q in 0..queues {
        let mut per_port = Vec::new();
        for (pi, p) in ports.iter().enumerate() {
            let cfg = xsk::XskConfig::for_mtu(a.frames, p.mtu);
            let (rx, tx, mode) = xsk::open(&p.name, q, cfg)?;
            prog.register_xsk(pi as u32, q, rx.fd())?;
            info!(
                iface = %p.name,
                queue = q,
                ?mode,
                mtu = p.mtu,
                frame_size = cfg.frame_size,
                multi_buffer = cfg.multi_buffer(),
                tx_budget = tx.tx_budget(),
                "AF_XDP socket bound"
            );
            per_port.push((p.clone(), rx, tx));
        }
        sockets.push(per_port);
    }
    let mut attachments = Vec::new();
    for (pi, p) in ports.iter().enumerate() {
        let att = prog.attach(&p.name, a.xdp_mode)?;
        prog.set_port(p.ifindex, pi as u32)?;
        info!(iface = %p.name, ifindex = p.ifindex, mode = %att.mode(), "XDP program attached");
        attachments.push(att);
    }
    let tables = open_tables(&a.shm, a.wait_tables)?;

    let log_limiter = Arc::new(xdpmesh_dataplane::engine::admission::LogLimiter::default());
    let tap = Arc::new(xdpmesh_dataplane::capture::Tap::default());
    let inboxes: Vec<_> = (0..queues)
        .map(|_| Arc::new(ArrayQueue::new(HANDOVER_QUEUE)))
        .collect();
    let shared: Vec<Arc<Shared>> = (0..queues).map(|_| Arc::new(Shared::default())).collect();
    if let Ok(mut w) = ops_state.workers.lock() {
        *w = shared.clone();
    }
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut identity_txs = Vec::new();
    let mut handles = Vec::new();
    for (q, per_port) in sockets.into_iter().enumerate() {
        let maps = PinnedMaps::open(&a.pin_dir)?;
        let names: Vec<(u32, String)> = ports.iter().map(|p| (p.ifindex, p.name.clone())).collect();
        let resolver: worker::Resolver = Box::new(move |ifindex, ip| {
            if let Ok(Some(mac)) = maps.lookup_neighbor(ifindex, ip) {
                return Some(mac);
            }
            let name = &names.iter().find(|(i, _)| *i == ifindex)?.1;
            host::kernel_arp(name, ip)
        });
        let setup = WorkerSetup {
            id: q as u32,
            workers: queues,
            ports: per_port,
            buffers,
            ack_delay: a.ack_delay,
            busy_poll: a.busy,
            shm: tables.register(q as u32)?,
            inboxes: inboxes.clone(),
            resolver,
            shared: shared[q].clone(),
            stop: stop.clone(),
            identities: {
                let (tx, rx) = crossbeam::channel::unbounded();
                identity_txs.push(tx);
                rx
            },
            hbone: a.hbone,
            log_limiter: log_limiter.clone(),
            tap: tap.clone(),
        };
        let core = (!cores.is_empty()).then(|| cores[q % cores.len()]);
        handles.push(
            std::thread::Builder::new()
                .name(format!("xdpmesh-w{q}"))
                .spawn(move || {
                    if let Some(c) = core {
                        core_affinity::set_for_current(c);
                    }
                    worker::run(setup)
                })?,
        );
    }
    // Identities before diversion: an HBONE connection diverted before the workers
    // have certificates would be refused. The control process writes them right after
    // the tables; wait a little for them (plain-TCP meshes work without).
    let mut identities = IdentityWatch::new(a.identity_dir.clone());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(store) = identities.poll() {
            let store = Arc::new(store);
            identities.store = Some(store.clone());
            info!(
                identities = store.len(),
                generation = store.generation,
                "HBONE identities loaded"
            );
            for tx in &identity_txs {
                let _ = tx.send(store.clone());
            }
            break;
        }
        if Instant::now() >= deadline {
            warn!(dir = %a.identity_dir.display(), "no HBONE identities yet; HBONE connections are refused until xdpmesh-control publishes them");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    {
        let (dir, names, tap, stop) = (
            a.run_dir.clone(),
            a.ifaces.clone(),
            tap.clone(),
            stop.clone(),
        );
        std::thread::Builder::new()
            .name("xdpmesh-capture".into())
            .spawn(move || xdpmesh_dataplane::capture::serve(&dir, names, tap, stop))?;
    }
    // Diversion only once every worker's loop runs: each first seeds its TLS random
    // number generator (tens of ms), and a connection diverted before would wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !shared.iter().all(|s| s.running.load(Ordering::Relaxed)) {
        if handles.iter().any(|h| h.is_finished()) {
            bail!("a worker exited while starting (see the log above)");
        }
        if Instant::now() >= deadline {
            bail!("the workers were not running 10 s after they were started");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    prog.set_enabled(true)?;
    info!(instance = %a.instance, workers = queues, interfaces = ?a.ifaces, rx_buffer = buffers.rx, tx_buffer = buffers.tx, ack_delay_ms = a.ack_delay.map_or(0, |d| d.total_millis()), "running");
    eprintln!("xdpmesh-dataplane ready");

    let stats_path = a.run_dir.join("stats.json");
    let started = Instant::now();
    let mut unknown = UnknownWatch::default();
    let mut control = ControlWatch::default();
    while !stop.load(Ordering::Relaxed) {
        unknown.poll(&prog, &log_limiter, started);
        control.poll(&tables);
        if let Some(store) = identities.poll() {
            let store = Arc::new(store);
            identities.store = Some(store.clone());
            info!(
                identities = store.len(),
                generation = store.generation,
                "HBONE identities loaded"
            );
            for tx in &identity_txs {
                let _ = tx.send(store.clone());
            }
        }
        if let Err(e) = write_stats(
            &stats_path,
            &prog,
            &shared,
            started,
            &unknown,
            identities.loads,
            &control,
        ) {
            warn!(%e, "writing stats");
        }
        update_ops(&ops_state, &prog, &control, &identities, &handles);
        if handles.iter().any(|h| h.is_finished()) {
            error!("a worker exited unexpectedly; stopping");
            stop.store(true, Ordering::Relaxed);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Ok(mut s) = ops_state.status.lock() {
        s.xdp_attached = false;
    }
    info!("stopping: detaching XDP first so the kernel takes the traffic back");
    for att in attachments {
        if let Err(e) = att.detach() {
            warn!(%e, "detaching XDP");
        }
    }
    for h in handles {
        let _ = h.join();
    }
    write_stats(
        &stats_path,
        &prog,
        &shared,
        started,
        &unknown,
        identities.loads,
        &control,
    )?;
    info!("stopped");
    Ok(())
}

/// Reloads the identity directory when its manifest changes (checked every 200 ms,
/// off the fast path). A broken directory is reported once and the identities in force
/// stay in force.
struct IdentityWatch {
    dir: PathBuf,
    seen: Option<std::time::SystemTime>,
    reported: bool,
    /// Identity sets loaded so far: the first, then one per renewal or reload
    /// (`identity_loads` in stats).
    loads: u64,
    /// The identities in force (for the endpoints).
    store: Option<Arc<IdentityStore>>,
}

impl IdentityWatch {
    fn new(dir: PathBuf) -> Self {
        IdentityWatch {
            dir,
            seen: None,
            reported: false,
            loads: 0,
            store: None,
        }
    }

    fn poll(&mut self) -> Option<IdentityStore> {
        let mtime = std::fs::metadata(self.dir.join(xdpmesh_hbone::MANIFEST_FILE))
            .and_then(|m| m.modified())
            .ok()?;
        if self.seen == Some(mtime) {
            return None;
        }
        match IdentityStore::load(&self.dir) {
            Ok(s) => {
                self.seen = Some(mtime);
                self.reported = false;
                self.loads += 1;
                Some(s)
            }
            Err(e) => {
                if !self.reported {
                    warn!(%e, "identity directory unusable; HBONE keeps the identities in force");
                    self.reported = true;
                }
                None
            }
        }
    }
}

/// How long the control process may miss its heartbeat (it beats every second) before
/// the dataplane reports it gone.
const CONTROL_GONE_MS: u64 = 5_000;

/// The control process as the table file's header shows it: its last publication and
/// heartbeat. When the heartbeat stops the workers keep forwarding on the tables in
/// force; this logs it once (and once when a control process is back) and `stats`
/// shows the tables' age.
#[derive(Default)]
struct ControlWatch {
    status: Option<xdpmesh_shm::WriterStatus>,
    gone: bool,
}

impl ControlWatch {
    fn poll(&mut self, tables: &ShmReader) {
        let s = tables.writer_status();
        self.status = Some(s);
        let silent = xdpmesh_shm::WriterStatus::age_ms(s.heartbeat_unix_ms);
        let gone = silent.is_some_and(|ms| ms > CONTROL_GONE_MS);
        let age = xdpmesh_shm::WriterStatus::age_ms(s.published_unix_ms).unwrap_or(0);
        if gone && !self.gone {
            warn!(
                control_pid = s.writer_pid,
                silent_ms = silent.unwrap_or(0),
                generation = s.generation,
                tables_age_ms = age,
                "the control process is gone (no heartbeat): forwarding on the tables in force"
            );
        } else if !gone && self.gone {
            info!(
                control_pid = s.writer_pid,
                generation = s.generation,
                "a control process is back"
            );
        }
        self.gone = gone;
    }

    /// The endpoints' view (readiness, metrics).
    fn ops_status(&self) -> Option<ops::ControlStatus> {
        let s = self.status?;
        let age = |ms| xdpmesh_shm::WriterStatus::age_ms(ms).unwrap_or(0);
        Some(ops::ControlStatus {
            published: s.generation,
            age_ms: age(s.published_unix_ms),
            heartbeat_age_ms: age(s.heartbeat_unix_ms),
            alive: !self.gone,
            gone_after_ms: CONTROL_GONE_MS,
        })
    }

    /// `stats`' view: the generation published and the one every worker runs, when it
    /// was published, and the control process's liveness.
    fn to_json(&self, in_force: u64) -> serde_json::Value {
        let Some(s) = self.status else {
            return json!({});
        };
        let age = |ms| xdpmesh_shm::WriterStatus::age_ms(ms).unwrap_or(0);
        json!({
            "published": s.generation,
            "in_force": if in_force == u64::MAX { 0 } else { in_force },
            "published_unix_ms": s.published_unix_ms,
            "age_ms": age(s.published_unix_ms),
            "control_pid": s.writer_pid,
            "control_heartbeat_age_ms": age(s.heartbeat_unix_ms),
            "control_alive": !self.gone,
        })
    }
}

/// Logs the unknown sources the XDP program saw sending SYNs to mesh workloads of
/// other nodes (under `unknown_source: pass` it hands them to the kernel, so no
/// worker sees them): each source once a minute, from the `unknown_sources` map,
/// read once a second off the packet path.
#[derive(Default)]
struct UnknownWatch {
    syns: std::collections::HashMap<std::net::IpAddr, u64>,
    last_poll: Option<Instant>,
}

impl UnknownWatch {
    fn poll(
        &mut self,
        prog: &XdpProgram,
        limiter: &xdpmesh_dataplane::engine::admission::LogLimiter,
        started: Instant,
    ) {
        if self
            .last_poll
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last_poll = Some(Instant::now());
        let Ok(seen) = prog.maps().unknown_sources() else {
            return;
        };
        let now = started.elapsed().as_micros() as i64;
        for u in seen {
            let before = self.syns.insert(u.addr, u.syns).unwrap_or(0);
            if u.syns > before && limiter.allow(u.addr, "xdp-unknown", now) {
                info!(target: "access", src = %u.addr, syns = u.syns, "unknown source: SYNs to mesh workloads from an address inside a pod range that no workload claims (see unknown_source)");
            }
        }
    }

    /// The sources seen, for `stats`: address -> SYNs.
    fn to_json(&self) -> serde_json::Value {
        let mut v: Vec<_> = self.syns.iter().collect();
        v.sort();
        v.into_iter()
            .map(|(a, n)| (a.to_string(), json!(n)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// Brings the endpoints' view up to date (every 200 ms, with stats.json).
fn update_ops(
    state: &ops::OpsState,
    prog: &XdpProgram,
    control: &ControlWatch,
    identities: &IdentityWatch,
    handles: &[std::thread::JoinHandle<()>],
) {
    let xdp = prog
        .counters()
        .map(|c| {
            c.iter()
                .map(|(r, v)| (r.name(), v.packets, v.bytes))
                .collect()
        })
        .unwrap_or_default();
    if let Ok(mut s) = state.status.lock() {
        s.xdp_attached = true;
        s.control = control.ops_status();
        s.identities = identities.store.clone();
        s.identity_loads = identities.loads;
        s.xdp = xdp;
        s.worker_exited = handles.iter().any(|h| h.is_finished());
    }
}

/// Bytes the heap has handed out and not had back (jemalloc's `stats.allocated`, fresh
/// after an epoch advance): what the process's objects hold, without the freed pages
/// jemalloc keeps for up to its decay time. 0 if jemalloc cannot say.
fn heap_allocated_bytes() -> u64 {
    let _ = tikv_jemalloc_ctl::epoch::advance();
    tikv_jemalloc_ctl::stats::allocated::read().map_or(0, |b| b as u64)
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

fn write_stats(
    path: &Path,
    prog: &XdpProgram,
    shared: &[Arc<Shared>],
    started: Instant,
    unknown: &UnknownWatch,
    identity_loads: u64,
    control: &ControlWatch,
) -> Result<()> {
    let mut total = Local::default();
    let mut min_generation = u64::MAX;
    let (mut handshake, mut connect) = (Histogram::default(), Histogram::default());
    let workers: Vec<_> = shared
        .iter()
        .enumerate()
        .map(|(q, s)| {
            let l = s.snapshot();
            total.add(&l);
            if let Ok(ops) = s.ops.lock() {
                handshake.add(&ops.tls_handshake);
                connect.add(&ops.connect);
            }
            min_generation = min_generation.min(l.table_generation);
            let mut j = l.to_json();
            j["queue"] = json!(q);
            if let Ok(sample) = s.live_sample.lock() {
                j["live_sample"] = json!(*sample);
            }
            j
        })
        .collect();
    let xdp: serde_json::Map<String, serde_json::Value> = match prog.counters() {
        Ok(c) => c
            .iter()
            .map(|(r, v)| {
                (
                    r.name().to_string(),
                    json!({"packets": v.packets, "bytes": v.bytes}),
                )
            })
            .collect(),
        Err(_) => Default::default(),
    };
    let v = json!({
        "generation": min_generation,
        "uptime_ms": started.elapsed().as_millis() as u64,
        "workers": workers,
        "totals": total.to_json(),
        // All workers' histograms (as `xdpmesh_tls_handshake_seconds` and
        // `xdpmesh_connect_seconds`), for the benchmark harness and scripts.
        "latency": {"tls_handshake": handshake.to_json(), "connect": connect.to_json()},
        "xdp": xdp,
        "unknown_sources": unknown.to_json(),
        "identity_loads": identity_loads,
        "tables": control.to_json(min_generation),
        "rss_bytes": rss_bytes(),
        "heap_allocated_bytes": heap_allocated_bytes(),
    });
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&v)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
