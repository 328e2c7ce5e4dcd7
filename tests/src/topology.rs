//! The four-namespace topology of `docs/INTERFACES.md`:
//!
//! ```text
//!  <p>-client          <p>-gwa                        <p>-gwb               <p>-server
//!  eth0 198.18.1.2 ── pod0 198.18.1.1   up0 198.18.0.1 ══ up0 198.18.0.2   pod0 198.18.2.1 ── eth0 198.18.2.2
//! ```
//!
//! With [`TopologyOpts::families`] the links also (or only) carry IPv6 addresses from
//! the benchmarking range 2001:2::/48 (RFC 5180), a /64 per link, in the same places:
//!
//! ```text
//!  eth0 2001:2:0:1::2 ── pod0 2001:2:0:1::1   up0 2001:2::1 ══ up0 2001:2::2   pod0 2001:2:0:2::1 ── eth0 2001:2:0:2::2
//! ```
//!
//! Veths are created directly inside the namespaces (`ip -n`), so interface names never
//! clash between topologies and nothing touches the host's network namespace.

use std::ffi::OsStr;
use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::gateway::GatewayProcs;
use crate::process::{ProcHandle, Registry};

/// Default timeout of [`Topology::run`].
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// One of the four namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    Client,
    GatewayA,
    GatewayB,
    Server,
}

impl Node {
    pub const ALL: [Node; 4] = [Node::Client, Node::GatewayA, Node::GatewayB, Node::Server];

    /// Suffix of the namespace name (`<prefix>-<suffix>`).
    pub fn suffix(self) -> &'static str {
        match self {
            Node::Client => "client",
            Node::GatewayA => "gwa",
            Node::GatewayB => "gwb",
            Node::Server => "server",
        }
    }

    /// The node's pod-facing address: the pod's own address for client/server, the
    /// gateway's `pod0` address for the gateways.
    pub fn addr(self) -> Ipv4Addr {
        match self {
            Node::Client => CLIENT_ADDR,
            Node::GatewayA => GWA_POD_ADDR,
            Node::GatewayB => GWB_POD_ADDR,
            Node::Server => SERVER_ADDR,
        }
    }
}

pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const GWA_POD_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const GWA_UP_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const GWB_UP_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const GWB_POD_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);

/// The IPv6 addresses, in the same places as the IPv4 ones above.
pub const CLIENT_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 2);
pub const GWA_POD_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 1);
pub const GWA_UP_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);
pub const GWB_UP_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);
pub const GWB_POD_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 1);
pub const SERVER_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 2);

/// Which IP families the links carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Families {
    /// IPv4 only; IPv6 is disabled in every namespace, so no router solicitation or
    /// MLD report adds packets that tests counting XDP verdicts would have to allow for.
    #[default]
    V4,
    /// IPv6 only: the namespaces have no IPv4 address but loopback.
    V6,
    /// Both: every interface has its IPv4 and its IPv6 address.
    Dual,
}

impl Families {
    /// Whether the links carry IPv4.
    pub fn v4(self) -> bool {
        self != Families::V6
    }

    /// Whether the links carry IPv6.
    pub fn v6(self) -> bool {
        self != Families::V4
    }
}

impl Node {
    /// The node's pod-facing IPv6 address (see [`Node::addr`]).
    pub fn addr6(self) -> Ipv6Addr {
        match self {
            Node::Client => CLIENT_ADDR6,
            Node::GatewayA => GWA_POD_ADDR6,
            Node::GatewayB => GWB_POD_ADDR6,
            Node::Server => SERVER_ADDR6,
        }
    }
}

/// Smallest and largest MTU [`Topology::new`] accepts: 576 is the smallest datagram
/// every IPv4 host must take, 65535 the largest MTU a veth or bridge takes.
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=65535;

/// Default MTU of every link.
pub const DEFAULT_MTU: u32 = 1500;

/// Knobs for [`Topology::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologyOpts {
    /// `numrxqueues` and `numtxqueues` of every veth (both ends); 0 leaves them out,
    /// as `ip link add` is usually called (the kernel then allocates one queue per CPU
    /// and uses one).
    pub rx_queues: u32,
    /// MTU of the two pod links, both ends: client `eth0` ↔ gateway A `pod0`, gateway B
    /// `pod0` ↔ server `eth0`.
    pub pod_mtu: u32,
    /// MTU of the uplink between the gateways, both ends (`up0` ↔ `up0`), and, with
    /// [`Self::wire_tap`], of the wire namespace's veth ends and bridge.
    pub uplink_mtu: u32,
    /// Leave every veth's offloads (checksum, TSO, GSO, GRO) as the kernel sets them.
    /// Off by default: the topology then turns them off on every interface
    /// (`ethtool -K <if> tx off tso off gso off gro off`), which AF_XDP copy mode needs.
    pub offloads: bool,
    /// The pods' own veth ends (`eth0` of client and server) keep checksum offload
    /// (`tx-checksumming`, the kernel's default) when the other offloads are turned off:
    /// their TCP segments then reach the gateways with only a partial checksum, which
    /// xdpmesh gateways take only with `--trust-tcp-checksum pod0`.
    pub pod_tx_checksum: bool,
    /// Put a bridge in a fifth namespace (`<prefix>-wire`) between the gateways'
    /// uplinks, so the gateway-to-gateway traffic can be captured there
    /// ([`Topology::wire_ns`]). On the gateways themselves it cannot: frames that XDP
    /// redirects, and frames sent from AF_XDP, bypass the kernel's packet taps.
    pub wire_tap: bool,
    /// The IP families of the links' addresses and routes.
    pub families: Families,
}

impl Default for TopologyOpts {
    fn default() -> Self {
        TopologyOpts {
            rx_queues: 1,
            pod_mtu: DEFAULT_MTU,
            uplink_mtu: DEFAULT_MTU,
            offloads: false,
            pod_tx_checksum: false,
            wire_tap: false,
            families: Families::V4,
        }
    }
}

impl TopologyOpts {
    /// The defaults with `mtu` on every link (pod links and uplink).
    pub fn with_mtu(mtu: u32) -> TopologyOpts {
        TopologyOpts {
            pod_mtu: mtu,
            uplink_mtu: mtu,
            ..TopologyOpts::default()
        }
    }

    /// Checks the options [`Topology::new`] would refuse: MTUs outside [`MTU_RANGE`].
    pub fn validate(&self) -> anyhow::Result<()> {
        for (what, mtu) in [("pod_mtu", self.pod_mtu), ("uplink_mtu", self.uplink_mtu)] {
            anyhow::ensure!(
                MTU_RANGE.contains(&mtu),
                "{what} {mtu} is out of range: an MTU must be {} to {}",
                MTU_RANGE.start(),
                MTU_RANGE.end()
            );
        }
        Ok(())
    }
}

/// A short prefix unique among live processes: `xm` + pid (base 36) + a per-process
/// counter (base 36) + `tag` (truncated so the prefix stays at most 14 characters and
/// the longest namespace name, `<prefix>-server`, under 22).
pub fn unique_prefix(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut prefix = format!("xm{}{}", base36(std::process::id()), base36(n));
    let room = 14usize.saturating_sub(prefix.len() + 1);
    let tag: String = tag
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(room)
        .collect();
    if !tag.is_empty() {
        prefix.push('x');
        prefix.push_str(&tag.to_ascii_lowercase());
    }
    prefix
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii digits")
}

/// A built topology. Dropping it kills every process started through it and every
/// process left in its namespaces, deletes the namespaces (which destroys the veths) and
/// removes the gateways' pins, shared memory and run dirs.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    opts: TopologyOpts,
    tmp: PathBuf,
    registry: Registry,
    spawned: AtomicU32,
    pub(crate) gateways: GatewayProcs,
    keep: bool,
}

impl Topology {
    /// Builds the topology. Namespaces left over from an earlier run with the same prefix
    /// (a killed test, `xdpmesh-demo --keep`) are deleted first.
    pub fn new(prefix: &str, opts: TopologyOpts) -> anyhow::Result<Topology> {
        anyhow::ensure!(
            !prefix.is_empty()
                && prefix.len() <= 32
                && prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "bad topology prefix {prefix:?}"
        );
        opts.validate()?;
        let tmp = std::env::temp_dir().join(format!("xdpmesh-{prefix}"));
        // Built before anything exists, so that Drop cleans up after a failure half-way.
        let topo = Topology {
            prefix: prefix.to_string(),
            opts,
            tmp,
            registry: Registry::default(),
            spawned: AtomicU32::new(0),
            gateways: GatewayProcs::default(),
            keep: false,
        };
        topo.cleanup_namespaces();
        let _ = std::fs::remove_dir_all(&topo.tmp);
        std::fs::create_dir_all(&topo.tmp)
            .with_context(|| format!("creating {}", topo.tmp.display()))?;
        topo.build()
            .with_context(|| format!("building topology {prefix}"))?;
        Ok(topo)
    }

    fn build(&self) -> anyhow::Result<()> {
        for node in Node::ALL {
            ip(&["netns", "add", &self.ns_name(node)])?;
        }
        // Sysctls first: `default` applies to the interfaces created below.
        let families = self.opts.families;
        for node in Node::ALL {
            let mut keys = vec![
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ];
            if families.v6() {
                // No duplicate address detection: the addresses are usable at once
                // (tentative ones are not), and this topology makes every address.
                keys.extend([
                    "net.ipv6.conf.all.disable_ipv6=0",
                    "net.ipv6.conf.default.disable_ipv6=0",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ]);
            } else {
                // No IPv6: router solicitations and MLD reports would add packets that
                // XDP counters in tests would have to account for.
                keys.extend([
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ]);
            }
            if matches!(node, Node::GatewayA | Node::GatewayB) {
                keys.push("net.ipv4.ip_forward=1");
                if families.v6() {
                    keys.push("net.ipv6.conf.all.forwarding=1");
                }
            }
            let mut args = vec!["sysctl", "-q", "-w"];
            args.extend(keys);
            self.run(node, &args)?;
        }
        let ns = |n: Node| self.ns_name(n);
        let (pod, up) = (self.opts.pod_mtu, self.opts.uplink_mtu);
        let veth = |a_ns: &str, a_if: &str, b_ns: &str, b_if: &str, mtu: u32| {
            let args = veth_args(a_ns, a_if, b_ns, b_if, mtu, self.opts.rx_queues);
            ip(&args.iter().map(String::as_str).collect::<Vec<_>>())
        };
        veth(&ns(Node::GatewayA), "pod0", &ns(Node::Client), "eth0", pod)?;
        if self.opts.wire_tap {
            let wire = self.wire_name();
            ip(&["netns", "add", &wire])?;
            // Veth ends created in the gateways with their peers in the wire namespace.
            for (gw, end) in [(Node::GatewayA, "to-gwa"), (Node::GatewayB, "to-gwb")] {
                veth(&ns(gw), "up0", &wire, end, up)?;
            }
            let up = up.to_string();
            ip(&[
                "-n", &wire, "link", "add", "br0", "mtu", &up, "type", "bridge",
            ])?;
            for dev in ["to-gwa", "to-gwb"] {
                ip(&["-n", &wire, "link", "set", "dev", dev, "master", "br0"])?;
                ip(&["-n", &wire, "link", "set", "dev", dev, "up"])?;
            }
            ip(&["-n", &wire, "link", "set", "br0", "up"])?;
            ip(&["-n", &wire, "link", "set", "lo", "up"])?;
        } else {
            veth(&ns(Node::GatewayA), "up0", &ns(Node::GatewayB), "up0", up)?;
        }
        veth(&ns(Node::GatewayB), "pod0", &ns(Node::Server), "eth0", pod)?;

        let addrs: [(Node, &str, &str, &str); 6] = [
            (Node::Client, "eth0", "198.18.1.2/24", "2001:2:0:1::2/64"),
            (Node::GatewayA, "pod0", "198.18.1.1/24", "2001:2:0:1::1/64"),
            (Node::GatewayA, "up0", "198.18.0.1/24", "2001:2::1/64"),
            (Node::GatewayB, "up0", "198.18.0.2/24", "2001:2::2/64"),
            (Node::GatewayB, "pod0", "198.18.2.1/24", "2001:2:0:2::1/64"),
            (Node::Server, "eth0", "198.18.2.2/24", "2001:2:0:2::2/64"),
        ];
        for node in Node::ALL {
            ip(&["-n", &self.ns_name(node), "link", "set", "lo", "up"])?;
        }
        for (node, iface, addr, addr6) in addrs {
            let ns = self.ns_name(node);
            if families.v4() {
                ip(&["-n", &ns, "addr", "add", addr, "dev", iface])?;
            }
            if families.v6() {
                ip(&["-n", &ns, "addr", "add", addr6, "dev", iface, "nodad"])?;
            }
            if let Some(argv) = offloads_argv(&self.opts, iface) {
                self.run(node, &argv)
                    .with_context(|| format!("disabling offloads on {ns}/{iface}"))?;
            }
            let rp = format!("net.ipv4.conf.{iface}.rp_filter=0");
            self.run(node, &["sysctl", "-q", "-w", &rp])?;
            ip(&["-n", &ns, "link", "set", iface, "up"])?;
        }
        let routes: [(Node, &[&str]); 4] = [
            (
                Node::Client,
                &["default", "via", "198.18.1.1", "dev", "eth0"],
            ),
            (
                Node::GatewayA,
                &["198.18.2.0/24", "via", "198.18.0.2", "dev", "up0"],
            ),
            (
                Node::GatewayB,
                &["198.18.1.0/24", "via", "198.18.0.1", "dev", "up0"],
            ),
            (
                Node::Server,
                &["default", "via", "198.18.2.1", "dev", "eth0"],
            ),
        ];
        let routes6: [(Node, &[&str]); 4] = [
            (
                Node::Client,
                &["default", "via", "2001:2:0:1::1", "dev", "eth0"],
            ),
            (
                Node::GatewayA,
                &["2001:2:0:2::/64", "via", "2001:2::2", "dev", "up0"],
            ),
            (
                Node::GatewayB,
                &["2001:2:0:1::/64", "via", "2001:2::1", "dev", "up0"],
            ),
            (
                Node::Server,
                &["default", "via", "2001:2:0:2::1", "dev", "eth0"],
            ),
        ];
        let wanted = [(families.v4(), &routes), (families.v6(), &routes6)];
        for (node, route) in wanted
            .into_iter()
            .filter(|(on, _)| *on)
            .flat_map(|(_, r)| r)
        {
            let ns = self.ns_name(*node);
            let mut args = vec!["-n", ns.as_str(), "route", "add"];
            args.extend_from_slice(route);
            ip(&args)?;
        }
        Ok(())
    }

    /// A fresh number for scratch file names.
    pub(crate) fn next_file_id(&self) -> u32 {
        self.spawned.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn registry_ref(&self) -> &Registry {
        &self.registry
    }

    /// The prefix given to [`Topology::new`].
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The options given to [`Topology::new`].
    pub fn opts(&self) -> &TopologyOpts {
        &self.opts
    }

    /// Namespace name of `node`: `<prefix>-client|gwa|gwb|server`.
    pub fn ns_name(&self, node: Node) -> String {
        format!("{}-{}", self.prefix, node.suffix())
    }

    /// The capture namespace between the gateways, when built with `wire_tap`; its
    /// bridge `br0` sees every frame between them.
    pub fn wire_ns(&self) -> Option<String> {
        self.opts.wire_tap.then(|| self.wire_name())
    }

    fn wire_name(&self) -> String {
        format!("{}-wire", self.prefix)
    }

    /// xdpmesh instance name of a gateway node (same as its namespace name).
    pub fn instance(&self, node: Node) -> String {
        self.ns_name(node)
    }

    /// Per-topology scratch directory (`$TMPDIR/xdpmesh-<prefix>/`): logs, peer scripts,
    /// upload blobs. Removed on drop unless the test panicked (logs are kept then).
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Leaves namespaces, gateway processes and files in place when the topology is dropped
    /// (`xdpmesh-demo --keep`). Other handles still kill their processes when dropped
    /// (`std::mem::forget` them to keep those too).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// A command that runs `program args...` inside `node`'s network namespace
    /// (`nsenter --net=/run/netns/<ns> --`; the mount namespace stays the host's, so
    /// /sys/fs/bpf and /run are the host's, unlike `ip netns exec`).
    pub fn cmd<P, I, S>(&self, node: Node, program: P, args: I) -> Command
    where
        P: AsRef<OsStr>,
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns_name(node)))
            .arg("--")
            .arg(program)
            .args(args);
        cmd
    }

    /// Runs `argv` in `node` with [`RUN_TIMEOUT`]; fails (with stderr) on a non-zero exit.
    pub fn run(&self, node: Node, argv: &[&str]) -> anyhow::Result<Output> {
        self.run_timeout(node, argv, RUN_TIMEOUT)
    }

    /// Runs `argv` in `node`, killing it (its process group) after `timeout`; fails with
    /// stdout/stderr in the error on timeout or a non-zero exit.
    pub fn run_timeout(
        &self,
        node: Node,
        argv: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<Output> {
        let (program, args) = argv.split_first().context("empty argv")?;
        let mut cmd = self.cmd(node, program, args);
        let what = format!("{} in {}", argv.join(" "), self.ns_name(node));
        let output = run_with_timeout(&mut cmd, &self.registry, timeout)
            .with_context(|| format!("running {what}"))?;
        if !output.status.success() {
            bail!(
                "{what} failed ({}):\nstderr: {}\nstdout: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim_end(),
                crate::process::tail(&String::from_utf8_lossy(&output.stdout), 20)
            );
        }
        Ok(output)
    }

    /// Starts `argv` in `node` in the background, stdout and stderr appended to a log file
    /// under [`Self::tmp_dir`]. The handle kills the process group when dropped; the
    /// topology kills it too if it is dropped first.
    pub fn spawn(&self, node: Node, argv: &[&str]) -> anyhow::Result<ProcHandle> {
        self.spawn_env(node, argv, &[])
    }

    /// [`Topology::spawn`] with extra environment variables.
    pub fn spawn_env(
        &self,
        node: Node,
        argv: &[&str],
        env: &[(String, String)],
    ) -> anyhow::Result<ProcHandle> {
        let (program, args) = argv.split_first().context("empty argv")?;
        let n = self.spawned.fetch_add(1, Ordering::Relaxed);
        let base = Path::new(program)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "proc".into());
        let log = self
            .tmp
            .join(format!("{n:02}-{}-{base}.log", node.suffix()));
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = self.cmd(node, program, args);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {} in {}", argv.join(" "), self.ns_name(node)))?;
        Ok(ProcHandle::new(
            format!("{}:{base}", self.ns_name(node)),
            child,
            log,
            self.registry.clone(),
        ))
    }

    /// Waits until something in `node` listens on TCP `port` (checked with `ss`).
    pub fn wait_tcp_listen(&self, node: Node, port: u16, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let filter = format!("sport = :{port}");
        loop {
            let out = self.run(node, &["ss", "-Hltn", &filter])?;
            if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "nothing listens on TCP port {port} in {} after {timeout:?}",
                    self.ns_name(node)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills every process in the namespaces and deletes them (idempotent).
    fn cleanup_namespaces(&self) {
        let all = Node::ALL
            .iter()
            .map(|&n| self.ns_name(n))
            .chain(std::iter::once(self.wire_name()));
        for ns in all {
            if !Path::new("/run/netns").join(&ns).exists() {
                continue;
            }
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
            }
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if self.keep {
            self.gateways.leak();
            return;
        }
        self.gateways.kill_all();
        self.registry.kill_all();
        self.cleanup_namespaces();
        self.gateways.remove_state();
        if std::thread::panicking() || std::env::var_os("XDPMESH_KEEP_LOGS").is_some() {
            eprintln!(
                "xdpmesh-netns: logs of topology {} kept in {}",
                self.prefix,
                self.tmp.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// `ip` arguments that create veth `a_if` in namespace `a_ns` with its peer `b_if` in
/// `b_ns`, both ends with `mtu` and (unless `queues` is 0) `queues` rx and tx queues.
fn veth_args(a_ns: &str, a_if: &str, b_ns: &str, b_if: &str, mtu: u32, queues: u32) -> Vec<String> {
    let mtu = mtu.to_string();
    let q = queues.to_string();
    let queues: &[&str] = if queues == 0 {
        &[]
    } else {
        &["numtxqueues", &q, "numrxqueues", &q]
    };
    let mut args = vec!["-n", a_ns, "link", "add", a_if, "mtu", &mtu];
    args.extend(queues);
    args.extend(["type", "veth", "peer", "name", b_if, "mtu", &mtu]);
    args.extend(queues);
    args.extend(["netns", b_ns]);
    args.into_iter().map(String::from).collect()
}

/// The command that turns `iface`'s offloads off, or `None` when `opts` keeps them
/// ([`TopologyOpts::offloads`]). AF_XDP copy mode sees CHECKSUM_PARTIAL packets unless
/// offloads are off; a pod's `eth0` keeps checksum offload with
/// [`TopologyOpts::pod_tx_checksum`].
fn offloads_argv<'a>(opts: &TopologyOpts, iface: &'a str) -> Option<Vec<&'a str>> {
    if opts.offloads {
        return None;
    }
    let mut argv = vec!["ethtool", "-K", iface];
    if !(opts.pod_tx_checksum && iface == "eth0") {
        argv.extend(["tx", "off"]);
    }
    argv.extend(["tso", "off", "gso", "off", "gro", "off"]);
    Some(argv)
}

/// `ip <args>` in the host namespace (all calls here use `-n` or `netns`).
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(())
}

/// Runs `cmd` to completion with captured output, SIGKILLing its process group after
/// `timeout`.
pub(crate) fn run_with_timeout(
    cmd: &mut Command,
    registry: &Registry,
    timeout: Duration,
) -> anyhow::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(cmd, 0);
    let child = cmd.spawn()?;
    let pgid = child.id() as i32;
    registry.add(pgid);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let result = match rx.recv_timeout(timeout) {
        Ok(r) => r.map_err(anyhow::Error::from),
        Err(_) => {
            // Still unreaped (the waiter holds it), so the group id is still ours.
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            let partial = rx.recv().ok().and_then(|r| r.ok());
            let stderr = partial
                .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                .unwrap_or_default();
            Err(anyhow::anyhow!(
                "timed out after {timeout:?}; stderr: {}",
                stderr.trim_end()
            ))
        }
    };
    registry.remove(pgid);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtus_default_to_1500_and_with_mtu_sets_both() {
        let d = TopologyOpts::default();
        assert_eq!((d.pod_mtu, d.uplink_mtu, d.offloads), (1500, 1500, false));
        let o = TopologyOpts::with_mtu(9000);
        assert_eq!((o.pod_mtu, o.uplink_mtu), (9000, 9000));
        assert_eq!(
            TopologyOpts {
                pod_mtu: 1500,
                uplink_mtu: 1500,
                ..o
            },
            d
        );
    }

    #[test]
    fn mtus_outside_576_to_65535_are_refused() {
        for mtu in [576, 1500, 9000, 65535] {
            TopologyOpts::with_mtu(mtu).validate().unwrap();
        }
        let low = TopologyOpts {
            pod_mtu: 575,
            ..TopologyOpts::default()
        };
        let e = low.validate().unwrap_err().to_string();
        assert!(
            e.contains("pod_mtu 575") && e.contains("576 to 65535"),
            "{e}"
        );
        let high = TopologyOpts {
            uplink_mtu: 65536,
            ..TopologyOpts::default()
        };
        let e = high.validate().unwrap_err().to_string();
        assert!(e.contains("uplink_mtu 65536"), "{e}");
        assert!(TopologyOpts::with_mtu(0).validate().is_err());
    }

    #[test]
    fn veth_args_put_the_mtu_and_queues_on_both_ends() {
        let a = veth_args("p-gwa", "up0", "p-gwb", "up0", 9000, 2).join(" ");
        assert_eq!(
            a,
            "-n p-gwa link add up0 mtu 9000 numtxqueues 2 numrxqueues 2 \
             type veth peer name up0 mtu 9000 numtxqueues 2 numrxqueues 2 netns p-gwb"
        );
        let a = veth_args("p-gwa", "pod0", "p-client", "eth0", 1400, 0).join(" ");
        assert_eq!(
            a,
            "-n p-gwa link add pod0 mtu 1400 type veth peer name eth0 mtu 1400 netns p-client"
        );
    }

    #[test]
    fn offloads_are_turned_off_unless_kept() {
        let off = offloads_argv(&TopologyOpts::default(), "eth0").unwrap();
        assert_eq!(
            off.join(" "),
            "ethtool -K eth0 tx off tso off gso off gro off"
        );
        let keep = TopologyOpts {
            offloads: true,
            ..TopologyOpts::default()
        };
        assert_eq!(offloads_argv(&keep, "eth0"), None);
        let pods = TopologyOpts {
            pod_tx_checksum: true,
            ..TopologyOpts::default()
        };
        assert_eq!(
            offloads_argv(&pods, "eth0").unwrap().join(" "),
            "ethtool -K eth0 tso off gso off gro off"
        );
        assert_eq!(
            offloads_argv(&pods, "pod0").unwrap().join(" "),
            "ethtool -K pod0 tx off tso off gso off gro off"
        );
    }
}
