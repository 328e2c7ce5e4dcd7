//! `xdpmesh-dataplane doctor`: inspects a gateway and says, per finding, what it saw,
//! what that breaks and the fix.
//!
//! The checks come from the field reports this project grew from: a `rp_filter=2` that
//! systemd-sysctl puts on every new interface dropping a node proxy's probes as
//! martians, Calico's raw-table `rpfilter --invert … DROP` rule dropping its packets,
//! an init container's traffic from a source no workload claims, and the kernel
//! settings an AF_XDP dataplane depends on (bpffs, XDP attach mode, offloads, queues,
//! MTU). Traffic xdpmesh diverts is immune to the first two (XDP runs before the
//! kernel's routing and netfilter), but everything the XDP program passes to the
//! kernel is not; doctor says which is which.
//!
//! Each check is a pure function from what the system showed (file contents, command
//! output) to findings, so the tests feed them exact text; [`gather`] does the reading.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// As it should be.
    Ok,
    /// Worth knowing; breaks nothing.
    Info,
    /// Breaks something outside the dataplane's own path, or will.
    Warn,
    /// Breaks the dataplane.
    Fail,
}

impl Level {
    fn tag(self) -> &'static str {
        match self {
            Level::Ok => "  ok",
            Level::Info => "info",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Which check (`rp_filter`, `raw-rpfilter`, `xdp`, …).
    pub check: &'static str,
    /// How bad it is.
    pub level: Level,
    /// What doctor saw.
    pub saw: String,
    /// What it breaks (empty for `Ok`).
    pub breaks: String,
    /// What to do (empty for `Ok`).
    pub fix: String,
}

impl Finding {
    fn ok(check: &'static str, saw: impl Into<String>) -> Finding {
        Finding {
            check,
            level: Level::Ok,
            saw: saw.into(),
            breaks: String::new(),
            fix: String::new(),
        }
    }

    fn new(
        check: &'static str,
        level: Level,
        saw: impl Into<String>,
        breaks: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            check,
            level,
            saw: saw.into(),
            breaks: breaks.into(),
            fix: fix.into(),
        }
    }
}

/// Renders findings for a terminal: one block per finding, worst first within the
/// order of the checks.
pub fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        let _ = writeln!(out, "[{}] {}: {}", f.level.tag(), f.check, f.saw);
        if !f.breaks.is_empty() {
            let _ = writeln!(out, "       breaks: {}", f.breaks);
        }
        if !f.fix.is_empty() {
            let _ = writeln!(out, "       fix: {}", f.fix);
        }
    }
    let worst = findings.iter().map(|f| f.level).max().unwrap_or(Level::Ok);
    let count = |l| findings.iter().filter(|f| f.level == l).count();
    let _ = writeln!(
        out,
        "doctor: {} failing, {} warnings, {} notes, {} ok{}",
        count(Level::Fail),
        count(Level::Warn),
        count(Level::Info),
        count(Level::Ok),
        if worst >= Level::Warn {
            ""
        } else {
            ": nothing wrong"
        }
    );
    out
}

/// The findings as JSON (`--json`).
pub fn to_json(findings: &[Finding]) -> Value {
    Value::Array(
        findings
            .iter()
            .map(|f| {
                json!({
                    "check": f.check,
                    "level": format!("{:?}", f.level).to_lowercase(),
                    "saw": f.saw,
                    "breaks": f.breaks,
                    "fix": f.fix,
                })
            })
            .collect(),
    )
}

/// The exit status for `findings`: 0 when nothing is wrong, 1 with a warning or a
/// failure.
pub fn exit_code(findings: &[Finding]) -> i32 {
    i32::from(findings.iter().any(|f| f.level >= Level::Warn))
}

// ---------------------------------------------------------------------------
// rp_filter.

fn rp_mode(v: u8) -> &'static str {
    match v {
        0 => "off",
        1 => "strict",
        _ => "loose",
    }
}

/// `rp_filter` of `all`, `default` and each interface (`values`: name → value). The
/// kernel applies max(all, interface) to an interface; `default` is what new
/// interfaces get.
pub fn rp_filter(all: u8, default: u8, values: &[(String, u8)]) -> Vec<Finding> {
    let mut out = Vec::new();
    for (iface, v) in values {
        let effective = all.max(*v);
        let saw = format!(
            "{iface}: rp_filter {effective} ({}), from net.ipv4.conf.all.rp_filter = {all} and net.ipv4.conf.{iface}.rp_filter = {v}",
            rp_mode(effective)
        );
        if effective == 0 {
            out.push(Finding::ok("rp_filter", saw));
            continue;
        }
        out.push(Finding::new(
            "rp_filter",
            Level::Warn,
            saw,
            format!(
                "the kernel path: packets arriving on {iface} whose source the kernel would not route back {} are dropped as martians (a node proxy's health probes, replies to sources of another interface). Traffic xdpmesh diverts is immune (XDP runs before routing); traffic it passes to the kernel is not",
                if effective == 1 { format!("through {iface}") } else { "at all".to_owned() }
            ),
            format!("sysctl -w net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.{iface}.rp_filter=0"),
        ));
    }
    let saw = format!(
        "net.ipv4.conf.default.rp_filter = {default} ({}): what new interfaces get",
        rp_mode(default)
    );
    if default == 0 {
        out.push(Finding::ok("rp_filter", saw));
    } else {
        out.push(Finding::new(
            "rp_filter",
            Level::Warn,
            saw,
            "every interface created from now on (a new pod's veth) filters by reverse path until someone turns it off",
            "sysctl -w net.ipv4.conf.default.rp_filter=0, and remove the sysctl.d line that sets it",
        ));
    }
    out
}

/// sysctl.d files (path, text) that set `rp_filter` to non-zero: systemd-sysctl applies
/// them at boot and, for `default`/wildcard keys, to every new interface.
pub fn sysctl_d(files: &[(PathBuf, String)]) -> Vec<Finding> {
    let mut out = Vec::new();
    for (path, text) in files {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let key = key.trim().trim_start_matches('-').replace('/', ".");
            let value = value.trim();
            if key.starts_with("net.ipv4.conf.") && key.ends_with(".rp_filter") && value != "0" {
                out.push(Finding::new(
                    "sysctl.d",
                    Level::Warn,
                    format!("{}:{}: {key} = {value}", path.display(), n + 1),
                    "systemd-sysctl sets it at boot and on every interface it matches as it appears: new pod interfaces come up filtering by reverse path, and their probes are dropped as martians (Cilium lxc* interfaces hit exactly this)",
                    format!(
                        "override it with a later file, e.g. /etc/sysctl.d/99-xdpmesh.conf: `{key} = 0` (or `net.ipv4.conf.*.rp_filter = 0`)"
                    ),
                ));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Netfilter.

/// Raw-table rules that drop by reverse path, in `iptables-save -t raw` output
/// (Calico's `-m rpfilter --invert … -j DROP`).
pub fn iptables_raw(save: &str) -> Vec<Finding> {
    save.lines()
        .filter(|l| l.starts_with("-A ") && l.contains("-m rpfilter") && l.contains("--invert"))
        .filter(|l| l.contains("-j DROP"))
        .map(|rule| {
            Finding::new(
                "raw-rpfilter",
                Level::Warn,
                format!("iptables -t raw: {rule}"),
                "the kernel path: packets whose source does not route back through their interface are dropped before conntrack (a node proxy's transparently sourced packets, as Calico's rule dropped ztunnel's). Traffic xdpmesh diverts never reaches netfilter",
                "exempt the mesh's interfaces ahead of it (iptables -t raw -I PREROUTING -i <iface> -j RETURN) or remove it",
            )
        })
        .collect()
}

/// nftables rules that drop by reverse path (`fib saddr . iif oif missing drop`), in
/// `nft list ruleset` output.
pub fn nft_rpfilter(ruleset: &str) -> Vec<Finding> {
    ruleset
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("fib saddr") && l.contains("oif") && l.contains("drop"))
        .map(|rule| {
            Finding::new(
                "nft-rpfilter",
                Level::Warn,
                format!("nft: {rule}"),
                "the kernel path: packets whose source does not route back through their interface are dropped. Traffic xdpmesh diverts never reaches netfilter",
                "exempt the mesh's interfaces (iifname \"<iface>\" accept ahead of it) or remove it",
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// XDP, offloads, queues, MTU.

/// One interface as `ip -json -details link show` and ethtool describe it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Iface {
    /// Name.
    pub name: String,
    /// Kernel driver (`veth`, `mlx5_core`, …) if known.
    pub driver: String,
    /// XDP attach mode as iproute2 reports it (1 native, 2 generic, 3 offload), with
    /// the program's name; `None` when no program is attached.
    pub xdp: Option<(u8, String)>,
    /// Offloads that are on among tx-checksumming, TSO, GSO and GRO.
    pub offloads_on: Vec<String>,
    /// RX queues in use (`/sys/class/net/<if>/queues/rx-*`).
    pub rx_queues: u32,
    /// IP MTU.
    pub mtu: u32,
}

/// The program's name as the kernel keeps it (16 bytes, truncated).
const PROGRAM: &str = "xdpmesh_divert";
/// Largest MTU whose frames fit one 2048-byte UMEM frame on veth (beyond it, AF_XDP
/// needs multi-buffer, Linux 6.6+).
const SINGLE_FRAME_MTU: u32 = 1792 - 14;

/// The XDP, offload, queue and MTU findings of one interface. `workers`: the running
/// dataplane's worker count, if known; `kernel`: (major, minor).
pub fn iface(i: &Iface, workers: Option<u32>, kernel: (u32, u32)) -> Vec<Finding> {
    let mut out = Vec::new();
    match &i.xdp {
        None => out.push(Finding::new(
            "xdp",
            Level::Fail,
            format!("{}: no XDP program attached", i.name),
            format!(
                "nothing arriving on {} is diverted: the mesh's traffic takes the kernel path",
                i.name
            ),
            format!("xdpmesh-dataplane run --iface {} …", i.name),
        )),
        Some((_, prog)) if prog != PROGRAM => out.push(Finding::new(
            "xdp",
            Level::Fail,
            format!("{}: XDP program {prog:?} attached, not {PROGRAM}", i.name),
            "another program owns the interface's XDP hook: xdpmesh cannot attach",
            format!(
                "detach it (ip link set dev {} xdp off) if it is not needed",
                i.name
            ),
        )),
        Some((mode, _)) => {
            let mode_name = match mode {
                1 => "native",
                2 => "generic",
                3 => "offload",
                _ => "unknown",
            };
            let native_capable = matches!(
                i.driver.as_str(),
                "veth"
                    | "mlx5_core"
                    | "mlx4_en"
                    | "i40e"
                    | "ice"
                    | "ixgbe"
                    | "igb"
                    | "igc"
                    | "virtio_net"
                    | "bnxt_en"
                    | "ena"
                    | "nfp"
                    | "qede"
                    | "tun"
            );
            if *mode == 2 && native_capable {
                out.push(Finding::new(
                    "xdp",
                    Level::Warn,
                    format!("{}: {PROGRAM} attached in generic mode; driver {} can run it natively", i.name, i.driver),
                    "generic XDP runs after the kernel builds an skb: the dataplane pays the kernel's per-packet cost on top of its own",
                    "restart the dataplane with --xdp-mode native",
                ));
            } else {
                out.push(Finding::ok(
                    "xdp",
                    format!(
                        "{}: {PROGRAM} attached in {mode_name} mode (driver {})",
                        i.name, i.driver
                    ),
                ));
            }
            out.push(Finding::new(
                "xdp",
                Level::Info,
                format!(
                    "{}: AF_XDP in copy mode{}",
                    i.name,
                    if i.driver == "veth" {
                        " (veth has no zero-copy)"
                    } else {
                        ""
                    }
                ),
                "",
                "",
            ));
        }
    }
    if i.offloads_on.is_empty() {
        out.push(Finding::ok(
            "offloads",
            format!("{}: checksum, TSO, GSO and GRO off", i.name),
        ));
    } else {
        out.push(Finding::new(
            "offloads",
            Level::Fail,
            format!("{}: {} on", i.name, i.offloads_on.join(", ")),
            "copy-mode AF_XDP is handed partial checksums and super-frames: the dataplane drops them as bad checksums or oversized",
            format!("ethtool -K {} tx off tso off gso off gro off", i.name),
        ));
    }
    if let Some(w) = workers {
        if i.rx_queues > w {
            out.push(Finding::new(
                "queues",
                Level::Warn,
                format!("{}: {} RX queues in use, {w} dataplane workers", i.name, i.rx_queues),
                format!(
                    "queues {}..{} have no socket: their mesh traffic is passed to the kernel (pass_no_socket)",
                    w,
                    i.rx_queues - 1
                ),
                format!("restart the dataplane with --queues {}", i.rx_queues),
            ));
        } else {
            out.push(Finding::ok(
                "queues",
                format!("{}: {} RX queues, {w} workers", i.name, i.rx_queues),
            ));
        }
    }
    if i.mtu > SINGLE_FRAME_MTU {
        if kernel < (6, 6) {
            out.push(Finding::new(
                "mtu",
                Level::Fail,
                format!("{}: MTU {} on Linux {}.{}", i.name, i.mtu, kernel.0, kernel.1),
                "frames above one UMEM frame need multi-buffer AF_XDP (Linux 6.6+): the program cannot attach or jumbo frames are dropped",
                format!("ip link set dev {} mtu {SINGLE_FRAME_MTU}, or a 6.6+ kernel", i.name),
            ));
        } else {
            out.push(Finding::new(
                "mtu",
                Level::Info,
                format!(
                    "{}: MTU {}: jumbo frames arrive as multi-buffer AF_XDP chains (Linux {}.{})",
                    i.name, i.mtu, kernel.0, kernel.1
                ),
                "",
                "",
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The dataplane's own state.

/// bpffs and kernel version findings.
pub fn system(mounts: &str, kernel: (u32, u32)) -> Vec<Finding> {
    let mut out = Vec::new();
    if mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 3 && f[1] == "/sys/fs/bpf" && f[2] == "bpf"
    }) {
        out.push(Finding::ok("bpffs", "bpffs mounted at /sys/fs/bpf"));
    } else {
        out.push(Finding::new(
            "bpffs",
            Level::Fail,
            "no bpffs at /sys/fs/bpf",
            "the XDP program's maps cannot be pinned: control and dataplane cannot share them",
            "mount -t bpf bpf /sys/fs/bpf (and avoid `ip netns exec`, which remounts /sys: use nsenter --net)",
        ));
    }
    let saw = format!("Linux {}.{}", kernel.0, kernel.1);
    if kernel < (6, 6) {
        out.push(Finding::new(
            "kernel",
            Level::Warn,
            saw,
            "no multi-buffer AF_XDP: links above about 1.8 KB MTU cannot be served",
            "Linux 6.6 or later for jumbo links",
        ));
    } else {
        out.push(Finding::ok(
            "kernel",
            format!("{saw}: multi-buffer AF_XDP, memcg-accounted BPF memory (no memlock limit)"),
        ));
    }
    out
}

/// The table file's and the control process's state (`status`: `stats.json`'s
/// `tables` object, or `None` when there is no stats file).
pub fn tables(shm_exists: bool, shm: &Path, status: Option<&Value>) -> Vec<Finding> {
    let mut out = Vec::new();
    if !shm_exists {
        out.push(Finding::new(
            "tables",
            Level::Fail,
            format!("no table file at {}", shm.display()),
            "no workload tables: the dataplane cannot start, or runs on nothing",
            "start xdpmesh-control run for this instance",
        ));
        return out;
    }
    let Some(t) = status else {
        out.push(Finding::new(
            "tables",
            Level::Warn,
            format!("table file {} present, no dataplane stats", shm.display()),
            "no dataplane is running for this instance (or it never wrote stats)",
            "start xdpmesh-dataplane run for this instance",
        ));
        return out;
    };
    let n = |k: &str| t[k].as_u64().unwrap_or(0);
    let saw = format!(
        "generation {} in force (published {}), {} s old",
        n("in_force"),
        n("published"),
        n("age_ms") / 1000
    );
    if t["control_alive"] == false {
        out.push(Finding::new(
            "control",
            Level::Warn,
            format!(
                "{saw}; control pid {} silent for {} s",
                n("control_pid"),
                n("control_heartbeat_age_ms") / 1000
            ),
            "the dataplane forwards on the tables in force, but config changes and certificate renewals are not published: certificates expire",
            "restart xdpmesh-control run for this instance (it takes the tables over)",
        ));
    } else {
        out.push(Finding::ok(
            "tables",
            format!("{saw}; control pid {} alive", n("control_pid")),
        ));
    }
    out
}

/// Certificates in the identity directory: (SPIFFE ID, seconds until expiry, lifetime
/// in seconds).
pub fn certificates(certs: &[(String, i64, u64)]) -> Vec<Finding> {
    let mut out = Vec::new();
    for (id, left, total) in certs {
        if *left <= 0 {
            out.push(Finding::new(
                "certificates",
                Level::Fail,
                format!("{id}: expired {} s ago", -left),
                "HBONE handshakes with this identity fail: its workload's mesh connections are refused",
                "check that xdpmesh-control runs and can reach its CA (it renews at half the lifetime)",
            ));
        } else if (*left as u64) < total / 2 {
            out.push(Finding::new(
                "certificates",
                Level::Warn,
                format!(
                    "{id}: {left} s left of {total} s: its renewal at half the lifetime is overdue"
                ),
                "the certificate will expire unless it is renewed",
                "check that xdpmesh-control runs (its log says why a renewal failed)",
            ));
        } else {
            out.push(Finding::ok(
                "certificates",
                format!("{id}: {left} s left of {total} s"),
            ));
        }
    }
    out
}

/// Unknown sources the XDP program saw (`stats.json`'s `unknown_sources`).
pub fn unknown_sources(seen: Option<&Value>) -> Vec<Finding> {
    let Some(map) = seen.and_then(Value::as_object) else {
        return Vec::new();
    };
    if map.is_empty() {
        return vec![Finding::ok(
            "unknown-sources",
            "no SYN from an unknown source",
        )];
    }
    let list: Vec<String> = map
        .iter()
        .map(|(a, n)| format!("{a} ({} SYNs)", n.as_u64().unwrap_or(0)))
        .collect();
    vec![Finding::new(
        "unknown-sources",
        Level::Warn,
        format!("SYNs to mesh workloads from pod addresses no workload claims: {}", list.join(", ")),
        "these pods' connections bypass the mesh or are refused, per unknown_source (an init container before its pod's workload is published, Istio issue 48854)",
        "add their workloads to the config, or set unknown_source: hold to let them wait for it",
    )]
}

// ---------------------------------------------------------------------------
// Gathering.

/// Where one instance keeps its state.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Interfaces to inspect (empty: those with an XDP program, else every non-loopback one).
    pub ifaces: Vec<String>,
    /// Run directory (stats.json).
    pub run_dir: PathBuf,
    /// Table file.
    pub shm: PathBuf,
    /// Identity directory.
    pub identity_dir: PathBuf,
}

fn read(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn sysctl_u8(key: &str) -> u8 {
    read(format!("/proc/sys/{}", key.replace('.', "/")))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn kernel_version() -> (u32, u32) {
    let release = read("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut it = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok());
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

fn link(name: &str) -> Option<(Iface, bool)> {
    let text = output("ip", &["-json", "-details", "link", "show", "dev", name])?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let l = v.get(0)?;
    let xdp = l.get("xdp").and_then(|x| {
        let mode = x.get("mode")?.as_u64()? as u8;
        let prog = x
            .get("prog")
            .and_then(|p| p.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        Some((mode, prog))
    });
    let driver = l
        .get("linkinfo")
        .and_then(|i| i.get("info_kind"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| {
            std::fs::read_link(format!("/sys/class/net/{name}/device/driver"))
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        })
        .unwrap_or_default();
    let mut offloads_on = Vec::new();
    if let Some(k) = output("ethtool", &["-k", name]) {
        for (key, label) in [
            ("tx-checksumming", "tx-checksumming"),
            ("tcp-segmentation-offload", "TSO"),
            ("generic-segmentation-offload", "GSO"),
            ("generic-receive-offload", "GRO"),
        ] {
            if k.lines()
                .any(|l| l.trim_start().starts_with(&format!("{key}: on")))
            {
                offloads_on.push(label.to_owned());
            }
        }
    }
    let rx_queues = std::fs::read_dir(format!("/sys/class/net/{name}/queues"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .unwrap_or(1);
    let mtu = l.get("mtu").and_then(Value::as_u64).unwrap_or(0) as u32;
    let loopback = l
        .get("link_type")
        .and_then(Value::as_str)
        .is_some_and(|t| t == "loopback");
    Some((
        Iface {
            name: name.to_owned(),
            driver,
            xdp,
            offloads_on,
            rx_queues,
            mtu,
        },
        loopback,
    ))
}

fn all_links() -> Vec<String> {
    output("ip", &["-json", "link", "show"])
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|l| l.get("ifname").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

fn certs_of(dir: &Path) -> Vec<(String, i64, u64)> {
    let Some(text) = read(dir.join(xdpmesh_hbone::MANIFEST_FILE)) else {
        return Vec::new();
    };
    let Ok(m) = xdpmesh_hbone::Manifest::from_json(text.as_bytes()) else {
        return Vec::new();
    };
    let now = std::time::SystemTime::now();
    m.identities
        .iter()
        .filter_map(|i| {
            let chain = read(dir.join(&i.cert))?;
            let key = read(dir.join(&i.key))?;
            let wc = xdpmesh_hbone::WorkloadCert::from_pem(&chain, &key).ok()?;
            let left = match wc.validity.not_after.duration_since(now) {
                Ok(d) => d.as_secs() as i64,
                Err(e) => -(e.duration().as_secs() as i64),
            };
            let total = wc
                .validity
                .not_after
                .duration_since(wc.validity.not_before)
                .map_or(0, |d| d.as_secs());
            Some((i.spiffe.clone(), left, total))
        })
        .collect()
}

/// Runs every check against this machine (the current network namespace).
pub fn gather(p: &Paths) -> Vec<Finding> {
    let kernel = kernel_version();
    let mut out = system(&read("/proc/mounts").unwrap_or_default(), kernel);
    let stats: Option<Value> =
        read(p.run_dir.join("stats.json")).and_then(|t| serde_json::from_str(&t).ok());
    let workers = stats
        .as_ref()
        .and_then(|s| s["workers"].as_array())
        .map(|w| w.len() as u32);
    let mut links: Vec<Iface> = Vec::new();
    let names = if p.ifaces.is_empty() {
        all_links()
    } else {
        p.ifaces.clone()
    };
    for name in &names {
        match link(name) {
            Some((l, loopback)) if !(loopback && p.ifaces.is_empty()) => links.push(l),
            Some(_) => {}
            None if !p.ifaces.is_empty() => out.push(Finding::new(
                "iface",
                Level::Fail,
                format!("{name}: no such interface in this network namespace"),
                "nothing to divert from",
                "check the name (ip link), and run doctor in the gateway's namespace (nsenter --net=/run/netns/<ns>)",
            )),
            None => {}
        }
    }
    if p.ifaces.is_empty() && links.iter().any(|l| l.xdp.is_some()) {
        links.retain(|l| l.xdp.is_some());
    }
    let rp: Vec<(String, u8)> = links
        .iter()
        .map(|l| {
            (
                l.name.clone(),
                sysctl_u8(&format!("net.ipv4.conf.{}.rp_filter", l.name)),
            )
        })
        .collect();
    out.extend(rp_filter(
        sysctl_u8("net.ipv4.conf.all.rp_filter"),
        sysctl_u8("net.ipv4.conf.default.rp_filter"),
        &rp,
    ));
    let mut files = Vec::new();
    for dir in [
        "/etc/sysctl.d",
        "/run/sysctl.d",
        "/usr/local/lib/sysctl.d",
        "/usr/lib/sysctl.d",
        "/lib/sysctl.d",
    ] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            paths.sort();
            for path in paths
                .into_iter()
                .filter(|p| p.extension().is_some_and(|e| e == "conf"))
            {
                if let Some(text) = read(&path) {
                    files.push((path, text));
                }
            }
        }
    }
    if let Some(text) = read("/etc/sysctl.conf") {
        files.push((PathBuf::from("/etc/sysctl.conf"), text));
    }
    out.extend(sysctl_d(&files));
    match output("iptables-save", &["-t", "raw"]) {
        Some(save) => {
            let found = iptables_raw(&save);
            if found.is_empty() {
                out.push(Finding::ok(
                    "raw-rpfilter",
                    "no raw-table rule drops by reverse path (iptables)",
                ));
            }
            out.extend(found);
        }
        None => out.push(Finding::new(
            "raw-rpfilter",
            Level::Info,
            "iptables-save not available: raw-table rules not checked",
            "",
            "",
        )),
    }
    if let Some(ruleset) = output("nft", &["list", "ruleset"]) {
        let found = nft_rpfilter(&ruleset);
        if found.is_empty() {
            out.push(Finding::ok(
                "nft-rpfilter",
                "no nftables rule drops by reverse path",
            ));
        }
        out.extend(found);
    }
    for l in &links {
        out.extend(iface(l, workers, kernel));
    }
    out.extend(tables(
        p.shm.exists(),
        &p.shm,
        stats.as_ref().map(|s| &s["tables"]),
    ));
    out.extend(certificates(&certs_of(&p.identity_dir)));
    out.extend(unknown_sources(
        stats.as_ref().map(|s| &s["unknown_sources"]),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rp_filter_takes_the_max_of_all_and_the_interface() {
        let f = rp_filter(2, 2, &[("pod0".into(), 0), ("up0".into(), 1)]);
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].level, Level::Warn);
        assert_eq!(
            f[0].saw,
            "pod0: rp_filter 2 (loose), from net.ipv4.conf.all.rp_filter = 2 and net.ipv4.conf.pod0.rp_filter = 0"
        );
        assert!(
            f[0].breaks.contains("would not route back at all"),
            "{}",
            f[0].breaks
        );
        assert_eq!(
            f[0].fix,
            "sysctl -w net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.pod0.rp_filter=0"
        );
        assert_eq!(
            f[2].saw,
            "net.ipv4.conf.default.rp_filter = 2 (loose): what new interfaces get"
        );
        let f = rp_filter(0, 0, &[("pod0".into(), 1)]);
        assert_eq!(f[0].saw, "pod0: rp_filter 1 (strict), from net.ipv4.conf.all.rp_filter = 0 and net.ipv4.conf.pod0.rp_filter = 1");
        assert!(f[0].breaks.contains("would not route back through pod0"));
        assert_eq!((f[1].level, f.len()), (Level::Ok, 2));
        assert!(rp_filter(0, 0, &[("pod0".into(), 0)])
            .iter()
            .all(|f| f.level == Level::Ok));
    }

    #[test]
    fn sysctl_d_lines_that_turn_rp_filter_on_are_named_with_file_and_line() {
        let files = vec![(
            PathBuf::from("/usr/lib/sysctl.d/50-default.conf"),
            "# comment\nkernel.sysrq = 16\nnet.ipv4.conf.default.rp_filter = 2\n-net.ipv4.conf.all.rp_filter = 2\nnet.ipv4.conf.lo.rp_filter = 0\nnet/ipv4/conf/*/rp_filter=1\n".to_owned(),
        )];
        let f = sysctl_d(&files);
        let saw: Vec<&str> = f.iter().map(|f| f.saw.as_str()).collect();
        assert_eq!(
            saw,
            [
                "/usr/lib/sysctl.d/50-default.conf:3: net.ipv4.conf.default.rp_filter = 2",
                "/usr/lib/sysctl.d/50-default.conf:4: net.ipv4.conf.all.rp_filter = 2",
                "/usr/lib/sysctl.d/50-default.conf:6: net.ipv4.conf.*.rp_filter = 1",
            ]
        );
        assert!(f[0].breaks.contains("Cilium lxc*"));
    }

    #[test]
    fn calicos_raw_rpfilter_rule_and_its_nft_form_are_found() {
        let save = "*raw\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m rpfilter --invert -j DROP\n-A PREROUTING -m rpfilter -j ACCEPT\n-A cali-PREROUTING -m mark --mark 0x40000/0x40000 -m rpfilter --validmark --invert -j DROP\nCOMMIT\n";
        let f = iptables_raw(save);
        let saw: Vec<&str> = f.iter().map(|f| f.saw.as_str()).collect();
        assert_eq!(
            saw,
            [
                "iptables -t raw: -A PREROUTING -m rpfilter --invert -j DROP",
                "iptables -t raw: -A cali-PREROUTING -m mark --mark 0x40000/0x40000 -m rpfilter --validmark --invert -j DROP",
            ]
        );
        let nft = "table ip filter {\n\tchain pre {\n\t\ttype filter hook prerouting priority raw;\n\t\tfib saddr . iif oif missing drop\n\t}\n}\n";
        assert_eq!(
            nft_rpfilter(nft)[0].saw,
            "nft: fib saddr . iif oif missing drop"
        );
        assert!(iptables_raw("*raw\nCOMMIT\n").is_empty());
    }

    #[test]
    fn interfaces_xdp_offloads_queues_and_mtu() {
        let veth = Iface {
            name: "pod0".into(),
            driver: "veth".into(),
            xdp: Some((2, PROGRAM.into())),
            offloads_on: vec!["GRO".into()],
            rx_queues: 2,
            mtu: 9000,
        };
        let f = iface(&veth, Some(1), (6, 18));
        let got: Vec<(&str, Level)> = f.iter().map(|f| (f.check, f.level)).collect();
        assert_eq!(
            got,
            [
                ("xdp", Level::Warn),
                ("xdp", Level::Info),
                ("offloads", Level::Fail),
                ("queues", Level::Warn),
                ("mtu", Level::Info),
            ]
        );
        assert_eq!(f[2].saw, "pod0: GRO on");
        assert_eq!(f[2].fix, "ethtool -K pod0 tx off tso off gso off gro off");
        assert_eq!(f[3].breaks, "queues 1..1 have no socket: their mesh traffic is passed to the kernel (pass_no_socket)");
        let bare = Iface {
            xdp: None,
            mtu: 9000,
            ..veth.clone()
        };
        let f = iface(&bare, None, (6, 1));
        assert_eq!((f[0].check, f[0].level), ("xdp", Level::Fail));
        assert_eq!(
            f.last().map(|f| (f.check, f.level)),
            Some(("mtu", Level::Fail))
        );
    }

    #[test]
    fn tables_certificates_unknown_sources_and_exit_code() {
        let gone = json!({"published": 3, "in_force": 3, "age_ms": 12_000, "control_pid": 42, "control_heartbeat_age_ms": 9000, "control_alive": false});
        let f = tables(true, Path::new("/dev/shm/xdpmesh-a"), Some(&gone));
        assert_eq!(f[0].level, Level::Warn);
        assert_eq!(
            f[0].saw,
            "generation 3 in force (published 3), 12 s old; control pid 42 silent for 9 s"
        );
        assert_eq!(
            tables(false, Path::new("/dev/shm/x"), None)[0].saw,
            "no table file at /dev/shm/x"
        );
        let c = certificates(&[
            ("spiffe://td/ns/a/sa/b".into(), -5, 10),
            ("spiffe://td/ns/a/sa/c".into(), 2, 10),
            ("spiffe://td/ns/a/sa/d".into(), 8, 10),
        ]);
        let levels: Vec<Level> = c.iter().map(|f| f.level).collect();
        assert_eq!(levels, [Level::Fail, Level::Warn, Level::Ok]);
        assert_eq!(c[0].saw, "spiffe://td/ns/a/sa/b: expired 5 s ago");
        let u = unknown_sources(Some(&json!({"198.18.1.79": 2})));
        assert_eq!(
            u[0].saw,
            "SYNs to mesh workloads from pod addresses no workload claims: 198.18.1.79 (2 SYNs)"
        );
        assert_eq!(exit_code(&u), 1);
        assert_eq!(exit_code(&[Finding::ok("x", "y")]), 0);
        let text = render(&u);
        assert!(text.starts_with("[WARN] unknown-sources: SYNs"), "{text}");
        assert!(
            text.ends_with("doctor: 0 failing, 1 warnings, 0 notes, 0 ok\n"),
            "{text}"
        );
        assert_eq!(to_json(&u)[0]["level"], "warn");
    }
}
