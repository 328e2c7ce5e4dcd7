//! Loads `xdpmesh_divert` through the real kernel verifier and checks every
//! verdict with `BPF_PROG_TEST_RUN`: the XDP action and the exact counter
//! deltas. Needs root (CAP_BPF, CAP_NET_ADMIN) and a bpffs at /sys/fs/bpf;
//! without root each test says loudly that it skipped (or fails, with
//! `XDPMESH_REQUIRE_ROOT=1`, as in CI).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use xdpmesh_xdp::abi::{CIDR_DIVERT_UNKNOWN, WL_LOCAL, WL_MESH};
use xdpmesh_xdp::{
    action, remove_pins, PinnedMaps, Reason, ReasonCount, SyncStats, TestRunCtx, XdpError, XdpMode,
    XdpProgram, MAP_NAMES, MAP_PORTS,
};

// ---------------------------------------------------------------- harness

/// Skips (loudly, on the real stderr) without root, or fails when CI's
/// `XDPMESH_REQUIRE_ROOT=1` is set: the workspace's one root gate
/// ([`xdpmesh_netns::require_root`]), named after the calling test.
macro_rules! require_root {
    ($test:literal) => {
        if !xdpmesh_netns::require_root(concat!("verifier::", $test)) {
            return;
        }
    };
}

/// A unique pin directory on bpffs, removed (pins and all) on drop, also
/// when the test panics.
struct PinDir(PathBuf);

impl PinDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Self(PathBuf::from(format!(
            "/sys/fs/bpf/xdpmesh-test-{}-{n}",
            std::process::id()
        )))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = remove_pins(&self.0) {
            eprintln!("cleanup of {}: {e}", self.0.display());
        }
    }
}

/// A veth pair or ifb device with a unique name, deleted on drop.
struct TestLink(String);

impl TestLink {
    fn new(kind: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        // IFNAMSIZ is 16: "xmt" + pid (<= 7 digits) + kind + n.
        let name = format!("xmt{}{}{n}", std::process::id() % 10_000_000, &kind[..1]);
        let mut args = vec!["link", "add", name.as_str(), "type", kind];
        let peer = format!("{name}p");
        if kind == "veth" {
            args.extend(["peer", "name", peer.as_str()]);
        }
        run_ip(&args);
        Self(name)
    }

    fn name(&self) -> &str {
        &self.0
    }

    /// `ip -d link show` of the device.
    fn show(&self) -> String {
        let out = Command::new("ip")
            .args(["-d", "link", "show", "dev", &self.0])
            .output()
            .expect("run ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TestLink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

fn run_ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

/// Captured by this gateway (XM_WL_LOCAL).
const LOCAL4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// A mesh workload behind another gateway (XM_WL_MESH).
const REMOTE4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
/// In `workloads` without any flag: outside the mesh, like an unknown address.
const FOREIGN4: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 3);
/// Not in `workloads` at all: outside the mesh.
const OUTSIDE4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
const LOCAL6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const REMOTE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 2);
const OUTSIDE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5);

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

/// A loaded program with the standard workloads, enabled.
struct Fixture {
    prog: XdpProgram,
    pins: PinDir,
}

impl Fixture {
    fn new() -> Self {
        let pins = PinDir::new();
        let prog = XdpProgram::load(pins.path()).expect("load through the verifier");
        let maps = PinnedMaps::open(pins.path()).expect("open pins");
        let want = BTreeMap::from([
            (IpAddr::V4(LOCAL4), WL_LOCAL),
            (IpAddr::V6(LOCAL6), WL_LOCAL),
            (IpAddr::V4(REMOTE4), WL_MESH),
            (IpAddr::V6(REMOTE6), WL_MESH),
            (IpAddr::V4(FOREIGN4), 0),
        ]);
        maps.sync_workloads(&want).expect("sync");
        prog.set_enabled(true).unwrap();
        Self { prog, pins }
    }

    /// Runs `frame` and asserts the action and that exactly `reason` counted
    /// one frame of `frame.len()` bytes, nothing else.
    fn expect(&self, what: &str, frame: &[u8], want_action: u32, reason: Reason) {
        self.expect_ctx(what, frame, None, want_action, reason);
    }

    fn expect_ctx(
        &self,
        what: &str,
        frame: &[u8],
        ctx: Option<TestRunCtx>,
        want_action: u32,
        reason: Reason,
    ) {
        self.expect_run(what, frame, None, ctx, want_action, reason);
    }

    /// [`Fixture::expect_ctx`] for a multi-buffer frame: the first `linear` bytes in
    /// the linear part, the rest in fragments.
    fn expect_multi_buffer(
        &self,
        what: &str,
        frame: &[u8],
        linear: usize,
        want_action: u32,
        reason: Reason,
    ) {
        self.expect_run(what, frame, Some(linear), None, want_action, reason);
    }

    fn expect_run(
        &self,
        what: &str,
        frame: &[u8],
        linear: Option<usize>,
        ctx: Option<TestRunCtx>,
        want_action: u32,
        reason: Reason,
    ) {
        let before = self.prog.counters().unwrap();
        let got = match linear {
            None => self.prog.test_run(frame, ctx),
            Some(l) => self.prog.test_run_multi_buffer(frame, l, ctx),
        }
        .unwrap();
        let delta = self.prog.counters().unwrap().since(&before);
        assert_eq!(got, want_action, "{what}: action");
        for (r, c) in delta.iter() {
            let want = if r == reason {
                ReasonCount {
                    packets: 1,
                    bytes: frame.len() as u64,
                }
            } else {
                ReasonCount::default()
            };
            assert_eq!(c, want, "{what}: counter {r}");
        }
    }
}

// ---------------------------------------------------------------- frames

const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A SYN with data offset field `doff` and `options_len` zero bytes after
/// the 20-byte fixed header (the two need not agree: that is the point).
fn tcp(doff: u8, options_len: usize) -> Vec<u8> {
    let mut t = vec![0u8; 20 + options_len];
    t[0..2].copy_from_slice(&40000u16.to_be_bytes());
    t[2..4].copy_from_slice(&15008u16.to_be_bytes());
    t[4..8].copy_from_slice(&1u32.to_be_bytes());
    t[12] = doff << 4;
    t[13] = 0x02; // SYN
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    t
}

struct V4 {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ihl: u8,
    version: u8,
    frag_off: u16,
    tot_len: Option<u16>,
}

impl V4 {
    fn tcp(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Self {
            src,
            dst,
            proto: 6,
            ihl: 5,
            version: 4,
            frag_off: 0x4000, // DF
            tot_len: None,
        }
    }

    /// The IPv4 packet (header with zeroed options, then `payload`).
    fn build(&self, payload: &[u8]) -> Vec<u8> {
        let hlen = usize::from(self.ihl.max(5)) * 4;
        let mut p = vec![0u8; hlen];
        p[0] = (self.version << 4) | self.ihl;
        let tot = self.tot_len.unwrap_or((hlen + payload.len()) as u16);
        p[2..4].copy_from_slice(&tot.to_be_bytes());
        p[6..8].copy_from_slice(&self.frag_off.to_be_bytes());
        p[8] = 64;
        p[9] = self.proto;
        p[12..16].copy_from_slice(&self.src.octets());
        p[16..20].copy_from_slice(&self.dst.octets());
        p.extend_from_slice(payload);
        p
    }

    fn frame(&self, payload: &[u8]) -> Vec<u8> {
        eth(ETH_P_IP, &self.build(payload))
    }
}

fn v6(src: Ipv6Addr, dst: Ipv6Addr, nexthdr: u8, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    p[6] = nexthdr;
    p[7] = hop_limit;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    eth(ETH_P_IPV6, &p)
}

fn arp(oper: u16, sha: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = Vec::with_capacity(28);
    a.extend_from_slice(&1u16.to_be_bytes());
    a.extend_from_slice(&ETH_P_IP.to_be_bytes());
    a.extend_from_slice(&[6, 4]);
    a.extend_from_slice(&oper.to_be_bytes());
    a.extend_from_slice(&sha);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&tpa.octets());
    eth(ETH_P_ARP, &a)
}

fn lo_ifindex() -> u32 {
    nix::net::if_::if_nametoindex("lo").expect("lo exists")
}

// ---------------------------------------------------------------- tests

#[test]
fn l2_verdicts_and_arp_snooping() {
    require_root!("l2_verdicts_and_arp_snooping");
    let f = Fixture::new();
    let lo = lo_ifindex();

    // Without a ctx, BPF_PROG_TEST_RUN presents the frame as received on the
    // loopback device (net/bpf/test_run.c): ingress_ifindex is lo's.
    let req = arp(1, MAC_A, Ipv4Addr::new(198, 18, 1, 9), LOCAL4);
    f.expect("ARP request", &req, action::PASS, Reason::PassArp);
    assert_eq!(
        f.prog
            .lookup_neighbor(lo, Ipv4Addr::new(198, 18, 1, 9).into())
            .unwrap(),
        Some(MAC_A)
    );
    // An explicit ingress ifindex and queue, and a reply.
    let ctx = TestRunCtx {
        ingress_ifindex: lo,
        rx_queue_index: 0,
    };
    let reply = arp(2, MAC_B, Ipv4Addr::new(198, 18, 1, 10), LOCAL4);
    f.expect_ctx(
        "ARP reply",
        &reply,
        Some(ctx),
        action::PASS,
        Reason::PassArp,
    );
    assert_eq!(
        f.prog
            .lookup_neighbor(lo, Ipv4Addr::new(198, 18, 1, 10).into())
            .unwrap(),
        Some(MAC_B)
    );
    // Keyed by interface: nothing learned for another ifindex.
    assert_eq!(
        f.prog
            .lookup_neighbor(lo + 1000, Ipv4Addr::new(198, 18, 1, 10).into())
            .unwrap(),
        None
    );
    // ARP probes (sender 0.0.0.0) are passed but teach nothing.
    let probe = arp(1, MAC_B, Ipv4Addr::UNSPECIFIED, LOCAL4);
    f.expect("ARP probe", &probe, action::PASS, Reason::PassArp);
    let neigh = f.prog.neighbors().unwrap();
    assert_eq!(neigh.len(), 2, "{neigh:?}");
    assert!(neigh.iter().all(|n| n.ifindex == lo && n.updated_ns > 0));
    // Truncated ARP: passed, not learned.
    let short = &reply[..30];
    f.expect("truncated ARP", short, action::PASS, Reason::PassArp);
    assert_eq!(f.prog.neighbors().unwrap().len(), 2);

    f.expect(
        "LLDP",
        &eth(0x88cc, &[0u8; 46]),
        action::PASS,
        Reason::PassNonIp,
    );
    f.expect(
        "10-byte frame",
        &[0xffu8; 10],
        action::DROP,
        Reason::DropTruncatedEth,
    );
    let mut vlan = eth(0x8100, &[0, 10]);
    vlan.extend_from_slice(&V4::tcp(LOCAL4, REMOTE4).build(&tcp(5, 0))[..]);
    f.expect("802.1Q", &vlan, action::PASS, Reason::PassVlan);
    f.expect(
        "802.1ad",
        &eth(0x88a8, &[0u8; 46]),
        action::PASS,
        Reason::PassVlan,
    );
}

#[test]
fn ipv4_verdicts() {
    require_root!("ipv4_verdicts");
    let f = Fixture::new();
    let seg = tcp(5, 0);

    // Header validation happens before the mesh lookup, for all traffic.
    let mut trunc = V4::tcp(REMOTE4, REMOTE4).frame(&seg);
    trunc.truncate(14 + 19);
    f.expect(
        "19-byte IPv4",
        &trunc,
        action::DROP,
        Reason::DropTruncatedIp,
    );
    let mut bad = V4::tcp(LOCAL4, REMOTE4);
    bad.ihl = 4;
    f.expect(
        "ihl 4",
        &bad.frame(&seg),
        action::DROP,
        Reason::DropBadIpHeader,
    );
    let mut bad = V4::tcp(REMOTE4, REMOTE4);
    bad.version = 6;
    f.expect(
        "version 6",
        &bad.frame(&seg),
        action::DROP,
        Reason::DropBadIpHeader,
    );
    let mut bad = V4::tcp(LOCAL4, REMOTE4);
    bad.tot_len = Some(41); // one byte more than the frame holds
    f.expect(
        "tot_len > frame",
        &bad.frame(&seg),
        action::DROP,
        Reason::DropBadIpHeader,
    );
    let mut bad = V4::tcp(REMOTE4, REMOTE4);
    bad.ihl = 6;
    bad.tot_len = Some(20);
    f.expect(
        "tot_len < ihl*4",
        &bad.frame(&seg),
        action::DROP,
        Reason::DropBadIpHeader,
    );

    // Fragments and options: dropped for mesh, passed otherwise.
    let mut frag = V4::tcp(LOCAL4, REMOTE4);
    frag.frag_off = 0x2000; // MF
    f.expect(
        "mesh MF",
        &frag.frame(&seg),
        action::DROP,
        Reason::DropMeshFragment,
    );
    frag.frag_off = 0x0010; // offset 128 bytes
    frag.src = REMOTE4;
    frag.dst = LOCAL4;
    f.expect(
        "mesh offset",
        &frag.frame(&seg),
        action::DROP,
        Reason::DropMeshFragment,
    );
    frag.dst = REMOTE4;
    f.expect(
        "non-mesh fragment",
        &frag.frame(&seg),
        action::PASS,
        Reason::PassNotMesh,
    );
    // A captured workload's fragment to the outside is passthrough; a fragment to
    // it from outside the mesh is dropped: the dataplane cannot take it, and the
    // kernel would deliver it around the workload's policies.
    frag.src = LOCAL4;
    frag.dst = OUTSIDE4;
    f.expect(
        "passthrough fragment",
        &frag.frame(&seg),
        action::PASS,
        Reason::PassNotMesh,
    );
    frag.src = OUTSIDE4;
    frag.dst = LOCAL4;
    f.expect(
        "inbound fragment from outside the mesh",
        &frag.frame(&seg),
        action::DROP,
        Reason::DropMeshFragment,
    );
    frag.src = REMOTE4;
    f.expect(
        "inbound mesh fragment",
        &frag.frame(&seg),
        action::DROP,
        Reason::DropMeshFragment,
    );
    let mut opts = V4::tcp(LOCAL4, REMOTE4);
    opts.ihl = 6;
    f.expect(
        "mesh options",
        &opts.frame(&seg),
        action::DROP,
        Reason::DropIpOptions,
    );
    opts.src = REMOTE4;
    f.expect(
        "non-mesh options",
        &opts.frame(&seg),
        action::PASS,
        Reason::PassNotMesh,
    );
    opts.src = LOCAL4;
    opts.dst = OUTSIDE4;
    f.expect(
        "passthrough options",
        &opts.frame(&seg),
        action::PASS,
        Reason::PassNotMesh,
    );
    (opts.src, opts.dst) = (OUTSIDE4, LOCAL4);
    f.expect(
        "options from outside the mesh to a local workload",
        &opts.frame(&seg),
        action::DROP,
        Reason::DropIpOptions,
    );

    // TCP header checks (mesh only).
    let ip = V4::tcp(LOCAL4, REMOTE4);
    f.expect(
        "doff 4",
        &ip.frame(&tcp(4, 0)),
        action::DROP,
        Reason::DropBadTcpHeader,
    );
    f.expect(
        "doff 6, 20-byte segment",
        &ip.frame(&tcp(6, 0)),
        action::DROP,
        Reason::DropBadTcpHeader,
    );
    f.expect(
        "doff 6 with options",
        &ip.frame(&tcp(6, 4)),
        action::PASS,
        Reason::PassNoSocket,
    );
    f.expect(
        "10-byte TCP",
        &ip.frame(&seg[..10]),
        action::DROP,
        Reason::DropTruncatedTcp,
    );
    // tot_len bounds the segment, not the frame: Ethernet padding after a
    // short tot_len must not count as TCP header.
    let mut padded = V4::tcp(LOCAL4, REMOTE4);
    padded.tot_len = Some(30);
    f.expect(
        "TCP cut by tot_len",
        &padded.frame(&seg),
        action::DROP,
        Reason::DropTruncatedTcp,
    );

    // Good mesh TCP, either direction: no AF_XDP socket is registered, so
    // bpf_redirect_map falls back to XDP_PASS.
    f.expect(
        "mesh TCP out",
        &ip.frame(&seg),
        action::PASS,
        Reason::PassNoSocket,
    );
    f.expect(
        "mesh TCP in",
        &V4::tcp(REMOTE4, LOCAL4).frame(&seg),
        action::PASS,
        Reason::PassNoSocket,
    );
    let mut min = V4::tcp(LOCAL4, REMOTE4).frame(&seg);
    min.resize(60, 0); // 54-byte SYN padded to the Ethernet minimum
    f.expect("padded mesh TCP", &min, action::PASS, Reason::PassNoSocket);

    f.expect(
        "non-mesh TCP",
        &V4::tcp(REMOTE4, Ipv4Addr::new(198, 18, 2, 3)).frame(&seg),
        action::PASS,
        Reason::PassNotMesh,
    );
    f.expect(
        "TCP to a non-local workload",
        &V4::tcp(REMOTE4, FOREIGN4).frame(&seg),
        action::PASS,
        Reason::PassNotMesh,
    );
    let mut icmp = V4::tcp(REMOTE4, LOCAL4);
    icmp.proto = 1;
    f.expect(
        "ICMP to a workload",
        &icmp.frame(&[8, 0, 0, 0, 0, 1, 0, 1]),
        action::PASS,
        Reason::PassNonTcp,
    );
    icmp.frag_off = 0x2000;
    f.expect(
        "mesh ICMP fragment",
        &icmp.frame(&[8, 0, 0, 0]),
        action::PASS,
        Reason::PassNonTcp,
    );
    let mut udp = V4::tcp(LOCAL4, REMOTE4);
    udp.proto = 17;
    f.expect(
        "mesh UDP",
        &udp.frame(&[0u8; 8]),
        action::PASS,
        Reason::PassNonTcp,
    );
}

/// Jumbo frames arrive as multi-buffer frames (the program is `xdp.frags`): the
/// headers are in the linear part, the IP length is checked against the whole frame,
/// and the counters count every byte.
#[test]
fn multi_buffer_frames() {
    require_root!("multi_buffer_frames");
    let f = Fixture::new();
    let mut seg = tcp(5, 0);
    seg.resize(9000 - 20, 0x5a);
    let v4 = V4::tcp(LOCAL4, REMOTE4).frame(&seg);
    assert_eq!(v4.len(), 9014);
    for linear in [3000, 54] {
        f.expect_multi_buffer(
            &format!("9014-byte mesh TCP, {linear} linear"),
            &v4,
            linear,
            action::PASS,
            Reason::PassNoSocket,
        );
    }
    let mut big = tcp(5, 0);
    big.resize(65535 - 20, 0x5a);
    f.expect_multi_buffer(
        "65549-byte mesh TCP",
        &V4::tcp(REMOTE4, LOCAL4).frame(&big),
        3500,
        action::PASS,
        Reason::PassNoSocket,
    );
    let mut long = V4::tcp(LOCAL4, REMOTE4);
    long.tot_len = Some(9001);
    f.expect_multi_buffer(
        "tot_len one past the frame",
        &long.frame(&seg),
        3000,
        action::DROP,
        Reason::DropBadIpHeader,
    );
    let mut seg6 = tcp(5, 0);
    seg6.resize(9000 - 40, 0x5a);
    f.expect_multi_buffer(
        "9014-byte mesh TCP over IPv6",
        &v6(LOCAL6, REMOTE6, 6, 64, &seg6),
        3000,
        action::PASS,
        Reason::PassNoSocket,
    );
    f.expect_multi_buffer(
        "9014-byte non-mesh TCP",
        &V4::tcp(FOREIGN4, FOREIGN4).frame(&seg),
        3000,
        action::PASS,
        Reason::PassNotMesh,
    );
}

#[test]
fn ipv6_verdicts_and_ndp_snooping() {
    require_root!("ipv6_verdicts_and_ndp_snooping");
    let f = Fixture::new();
    let seg = tcp(5, 0);

    f.expect(
        "mesh TCP",
        &v6(LOCAL6, REMOTE6, 6, 64, &seg),
        action::PASS,
        Reason::PassNoSocket,
    );
    f.expect(
        "mesh TCP in",
        &v6(REMOTE6, LOCAL6, 6, 64, &seg),
        action::PASS,
        Reason::PassNoSocket,
    );
    f.expect(
        "non-mesh TCP",
        &v6(REMOTE6, REMOTE6, 6, 64, &seg),
        action::PASS,
        Reason::PassNotMesh,
    );
    // v4-mapped IPv6 addresses share the IPv4 keys.
    f.expect(
        "v4-mapped mesh TCP",
        &v6(LOCAL4.to_ipv6_mapped(), REMOTE6, 6, 64, &seg),
        action::PASS,
        Reason::PassNoSocket,
    );
    f.expect(
        "mesh doff 4",
        &v6(LOCAL6, REMOTE6, 6, 64, &tcp(4, 0)),
        action::DROP,
        Reason::DropBadTcpHeader,
    );
    f.expect(
        "mesh 12-byte TCP",
        &v6(LOCAL6, REMOTE6, 6, 64, &seg[..12]),
        action::DROP,
        Reason::DropTruncatedTcp,
    );

    // Hop-by-hop options header (8 bytes) in front of TCP.
    let mut hbh = vec![6u8, 0, 1, 4, 0, 0, 0, 0];
    hbh.extend_from_slice(&seg);
    f.expect(
        "mesh ext header",
        &v6(LOCAL6, REMOTE6, 0, 64, &hbh),
        action::DROP,
        Reason::DropIpv6Ext,
    );
    f.expect(
        "mesh fragment header",
        &v6(REMOTE6, LOCAL6, 44, 64, &hbh),
        action::DROP,
        Reason::DropIpv6Ext,
    );
    f.expect(
        "non-mesh ext header",
        &v6(REMOTE6, REMOTE6, 0, 64, &hbh),
        action::PASS,
        Reason::PassNotMesh,
    );
    f.expect(
        "passthrough ext header",
        &v6(LOCAL6, OUTSIDE6, 0, 64, &hbh),
        action::PASS,
        Reason::PassNotMesh,
    );
    f.expect(
        "inbound ext header from outside the mesh",
        &v6(OUTSIDE6, LOCAL6, 0, 64, &hbh),
        action::DROP,
        Reason::DropIpv6Ext,
    );
    f.expect(
        "inbound mesh ext header",
        &v6(REMOTE6, LOCAL6, 0, 64, &hbh),
        action::DROP,
        Reason::DropIpv6Ext,
    );
    f.expect(
        "mesh UDP",
        &v6(LOCAL6, REMOTE6, 17, 64, &[0u8; 8]),
        action::PASS,
        Reason::PassNonTcp,
    );
    let echo = [128u8, 0, 0, 0, 0, 1, 0, 1];
    f.expect(
        "ICMPv6 echo to a workload",
        &v6(REMOTE6, LOCAL6, 58, 64, &echo),
        action::PASS,
        Reason::PassNonTcp,
    );

    let mut trunc = v6(LOCAL6, REMOTE6, 6, 64, &seg);
    trunc.truncate(14 + 39);
    f.expect(
        "39-byte IPv6",
        &trunc,
        action::DROP,
        Reason::DropTruncatedIp,
    );
    let mut long = v6(LOCAL6, REMOTE6, 6, 64, &seg);
    long[14 + 4..14 + 6].copy_from_slice(&21u16.to_be_bytes());
    f.expect(
        "payload_len > frame",
        &long,
        action::DROP,
        Reason::DropBadIpHeader,
    );
    let mut ver = v6(LOCAL6, REMOTE6, 6, 64, &seg);
    ver[14] = 0x40;
    f.expect(
        "version 4 in IPv6",
        &ver,
        action::DROP,
        Reason::DropBadIpHeader,
    );

    // Neighbour advertisement with a target link-layer address option.
    let lo = lo_ifindex();
    let target = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x77);
    let mut na = vec![136u8, 0, 0, 0, 0x60, 0, 0, 0];
    na.extend_from_slice(&target.octets());
    na.extend_from_slice(&[2, 1]);
    na.extend_from_slice(&MAC_B);
    f.expect(
        "NA",
        &v6(target, LOCAL6, 58, 255, &na),
        action::PASS,
        Reason::PassNdp,
    );
    assert_eq!(
        f.prog.lookup_neighbor(lo, target.into()).unwrap(),
        Some(MAC_B)
    );
    // Neighbour solicitation: a nonce option first, then the source link-layer address.
    let sender = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x78);
    let mut ns = vec![135u8, 0, 0, 0, 0, 0, 0, 0];
    ns.extend_from_slice(&LOCAL6.octets());
    ns.extend_from_slice(&[14, 1, 1, 2, 3, 4, 5, 6]);
    ns.extend_from_slice(&[1, 1]);
    ns.extend_from_slice(&MAC_A);
    f.expect(
        "NS",
        &v6(sender, LOCAL6, 58, 255, &ns),
        action::PASS,
        Reason::PassNdp,
    );
    assert_eq!(
        f.prog.lookup_neighbor(lo, sender.into()).unwrap(),
        Some(MAC_A)
    );
    // Hop limit below 255 may come from off-link: not learned (RFC 4861 7.1).
    let other = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x79);
    let mut na2 = na.clone();
    na2[8..24].copy_from_slice(&other.octets());
    f.expect(
        "NA hop limit 64",
        &v6(other, LOCAL6, 58, 64, &na2),
        action::PASS,
        Reason::PassNdp,
    );
    assert_eq!(f.prog.lookup_neighbor(lo, other.into()).unwrap(), None);
}

/// The mesh rule, `(src LOCAL && dst LOCAL|MESH) || dst LOCAL`, for every
/// combination of address kinds, IPv4 and IPv6 alike. "mesh" ends in
/// `pass_no_socket` here: no interface has a port, let alone a socket.
#[test]
fn mesh_rule() {
    require_root!("mesh_rule");
    let f = Fixture::new();
    let seg = tcp(5, 0);
    let mesh = Reason::PassNoSocket;
    let not = Reason::PassNotMesh;
    let cases4 = [
        ("local -> local", LOCAL4, LOCAL4, mesh),
        ("local -> mesh", LOCAL4, REMOTE4, mesh),
        ("local -> unknown (passthrough)", LOCAL4, OUTSIDE4, not),
        ("local -> flagless workload", LOCAL4, FOREIGN4, not),
        ("mesh -> local", REMOTE4, LOCAL4, mesh),
        ("unknown -> local", OUTSIDE4, LOCAL4, mesh),
        ("flagless workload -> local", FOREIGN4, LOCAL4, mesh),
        ("unknown -> mesh", OUTSIDE4, REMOTE4, not),
        ("mesh -> mesh", REMOTE4, REMOTE4, not),
        ("mesh -> unknown", REMOTE4, OUTSIDE4, not),
        ("unknown -> unknown", OUTSIDE4, OUTSIDE4, not),
    ];
    for (what, src, dst, reason) in cases4 {
        f.expect(
            &format!("IPv4 {what}"),
            &V4::tcp(src, dst).frame(&seg),
            action::PASS,
            reason,
        );
    }
    // From outside the mesh, every SYN to a local workload is diverted (so none
    // reaches it around its peer authentication and policies) and remembered in
    // `inbound`; other segments only when they belong to such a connection. The
    // rest (here: a reply from port 80 to the workload's own passthrough
    // connection) stays with the kernel. Known sources are mesh on any port.
    let mut http = seg.clone();
    http[2..4].copy_from_slice(&80u16.to_be_bytes());
    let mut http_ack = http.clone();
    http_ack[13] = 0x10; // ACK
    let mut http_synack = http.clone();
    http_synack[13] = 0x12; // SYN+ACK
    let plain = Reason::PassNoSocket; // diverted, no socket here
    for (what, src, segment, reason) in [
        (
            "unknown -> local:80 ACK, no connection",
            OUTSIDE4,
            &http_ack,
            not,
        ),
        (
            "unknown -> local:80 SYN-ACK (passthrough reply)",
            OUTSIDE4,
            &http_synack,
            not,
        ),
        ("unknown -> local:80 SYN", OUTSIDE4, &http, plain),
        (
            "unknown -> local:80 ACK of that connection",
            OUTSIDE4,
            &http_ack,
            plain,
        ),
        (
            "flagless workload -> local:80 ACK",
            FOREIGN4,
            &http_ack,
            not,
        ),
        ("flagless workload -> local:80 SYN", FOREIGN4, &http, plain),
        ("mesh -> local:80 ACK", REMOTE4, &http_ack, mesh),
        ("local -> local:80 ACK", LOCAL4, &http_ack, mesh),
    ] {
        f.expect(
            &format!("IPv4 {what}"),
            &V4::tcp(src, LOCAL4).frame(segment),
            action::PASS,
            reason,
        );
    }
    let maps = f.prog.maps();
    assert!(maps
        .inbound_contains(OUTSIDE4.into(), LOCAL4.into(), 80)
        .unwrap());
    assert!(!maps
        .inbound_contains(OUTSIDE4.into(), LOCAL4.into(), 81)
        .unwrap());
    // The workload's side of that connection, from port 80 to any port of the
    // client (the dataplane's leg uses one of its own), is diverted too; from
    // another port it is passthrough.
    let mut reply = http_ack.clone();
    reply[0..2].copy_from_slice(&80u16.to_be_bytes());
    reply[2..4].copy_from_slice(&45123u16.to_be_bytes());
    f.expect(
        "IPv4 local:80 -> unknown, reply of an inbound connection",
        &V4::tcp(LOCAL4, OUTSIDE4).frame(&reply),
        action::PASS,
        plain,
    );
    reply[0..2].copy_from_slice(&81u16.to_be_bytes());
    f.expect(
        "IPv4 local:81 -> unknown, passthrough",
        &V4::tcp(LOCAL4, OUTSIDE4).frame(&reply),
        action::PASS,
        not,
    );
    let mut doff4 = http.clone();
    doff4[12] = 4 << 4;
    f.expect(
        "IPv4 malformed TCP from outside to local:80 is dropped",
        &V4::tcp(OUTSIDE4, LOCAL4).frame(&doff4),
        action::DROP,
        Reason::DropBadTcpHeader,
    );
    f.expect(
        "IPv4 truncated TCP from outside to local:80 is dropped",
        &V4::tcp(OUTSIDE4, LOCAL4).frame(&http[..12]),
        action::DROP,
        Reason::DropTruncatedTcp,
    );
    let cases6 = [
        ("local -> local", LOCAL6, LOCAL6, mesh),
        ("local -> mesh", LOCAL6, REMOTE6, mesh),
        ("local -> unknown (passthrough)", LOCAL6, OUTSIDE6, not),
        ("mesh -> local", REMOTE6, LOCAL6, mesh),
        ("unknown -> local", OUTSIDE6, LOCAL6, mesh),
        ("unknown -> mesh", OUTSIDE6, REMOTE6, not),
        ("mesh -> mesh", REMOTE6, REMOTE6, not),
        ("mesh -> unknown", REMOTE6, OUTSIDE6, not),
        // v4-mapped addresses share the IPv4 keys and flags.
        (
            "v4-mapped local -> v4-mapped mesh",
            LOCAL4.to_ipv6_mapped(),
            REMOTE4.to_ipv6_mapped(),
            mesh,
        ),
        (
            "v4-mapped local -> v4-mapped unknown",
            LOCAL4.to_ipv6_mapped(),
            OUTSIDE4.to_ipv6_mapped(),
            not,
        ),
        (
            "v4-mapped unknown -> v4-mapped mesh",
            OUTSIDE4.to_ipv6_mapped(),
            REMOTE4.to_ipv6_mapped(),
            not,
        ),
    ];
    for (what, src, dst, reason) in cases6 {
        f.expect(
            &format!("IPv6 {what}"),
            &v6(src, dst, 6, 64, &seg),
            action::PASS,
            reason,
        );
    }

    // An address flagged both ways counts as local.
    let both: IpAddr = Ipv4Addr::new(198, 18, 1, 99).into();
    let maps = f.prog.maps();
    let mut want = maps.workloads().unwrap();
    want.insert(both, WL_LOCAL | WL_MESH);
    maps.sync_workloads(&want).unwrap();
    f.expect(
        "unknown -> local|mesh",
        &V4::tcp(OUTSIDE4, Ipv4Addr::new(198, 18, 1, 99)).frame(&seg),
        action::PASS,
        mesh,
    );

    // Non-TCP stays ahead of the mesh test, whatever the addresses.
    let mut udp = V4::tcp(LOCAL4, OUTSIDE4);
    udp.proto = 17;
    f.expect(
        "passthrough UDP",
        &udp.frame(&[0u8; 8]),
        action::PASS,
        Reason::PassNonTcp,
    );
}

/// Unknown sources: an address inside `pod_cidrs` that no workload claims. To a
/// mesh workload of another node, its SYNs are recorded in `unknown_sources` and
/// passed, or diverted when the range says so (`unknown_source: reject | hold`);
/// its other segments are the kernel's. Outside every range, or a workload, it is
/// not unknown.
#[test]
fn unknown_sources_rule() {
    require_root!("unknown_sources_rule");
    let f = Fixture::new();
    let maps = f.prog.maps();
    let unknown4 = Ipv4Addr::new(198, 18, 1, 50);
    let unknown6: Ipv6Addr = "fd00::99".parse().unwrap();
    let ranges = |flags: u32| {
        BTreeMap::from([
            ((IpAddr::V4(Ipv4Addr::new(198, 18, 1, 0)), 24), flags),
            ((IpAddr::V6("fd00::".parse().unwrap()), 64), flags),
        ])
    };
    let s = maps.sync_pod_cidrs(&ranges(0)).unwrap();
    assert_eq!((s.inserted, s.deleted), (2, 0));
    assert_eq!(maps.pod_cidrs().unwrap(), ranges(0));
    let mut syn = tcp(5, 0);
    syn[2..4].copy_from_slice(&80u16.to_be_bytes());
    let mut ack = syn.clone();
    ack[13] = 0x10;
    let unknown = Reason::PassUnknownSource;
    for (what, src, dst, segment, reason) in [
        ("unknown -> mesh SYN", unknown4, REMOTE4, &syn, unknown),
        (
            "unknown -> mesh SYN again",
            unknown4,
            REMOTE4,
            &syn,
            unknown,
        ),
        ("unknown -> mesh ACK", unknown4, REMOTE4, &ack, unknown),
        (
            "outside every range -> mesh SYN",
            OUTSIDE4,
            REMOTE4,
            &syn,
            Reason::PassNotMesh,
        ),
        (
            "local workload in the range -> mesh SYN",
            LOCAL4,
            REMOTE4,
            &syn,
            Reason::PassNoSocket,
        ),
        (
            "unknown -> outside SYN",
            unknown4,
            OUTSIDE4,
            &syn,
            Reason::PassNotMesh,
        ),
        (
            "unknown -> local SYN",
            unknown4,
            LOCAL4,
            &syn,
            Reason::PassNoSocket,
        ),
    ] {
        f.expect(
            &format!("IPv4 {what}"),
            &V4::tcp(src, dst).frame(segment),
            action::PASS,
            reason,
        );
    }
    f.expect(
        "IPv6 unknown -> mesh SYN",
        &v6(unknown6, REMOTE6, 6, 64, &syn),
        action::PASS,
        unknown,
    );
    let mut seen = maps.unknown_sources().unwrap();
    seen.sort_by_key(|u| u.addr);
    let got: Vec<(IpAddr, u64)> = seen.iter().map(|u| (u.addr, u.syns)).collect();
    assert_eq!(
        got,
        vec![(IpAddr::V4(unknown4), 2), (IpAddr::V6(unknown6), 1)],
        "only SYNs to mesh workloads are recorded"
    );
    assert!(seen[0].first_ns > 0 && seen[0].last_ns >= seen[0].first_ns);

    // Diverted: the SYN goes to the dataplane (no socket here), the rest stays the
    // kernel's; a malformed segment of an unknown source is the kernel's too.
    let s = maps.sync_pod_cidrs(&ranges(CIDR_DIVERT_UNKNOWN)).unwrap();
    assert_eq!((s.updated, s.inserted), (2, 0));
    for (what, segment, reason) in [
        ("SYN", &syn, Reason::PassNoSocket),
        ("ACK", &ack, unknown),
        ("doff 4", &tcp(4, 0), unknown),
    ] {
        f.expect(
            &format!("IPv4 unknown -> mesh {what}, diverting range"),
            &V4::tcp(unknown4, REMOTE4).frame(segment),
            action::PASS,
            reason,
        );
    }
    let s = maps.sync_pod_cidrs(&BTreeMap::new()).unwrap();
    assert_eq!(s.deleted, 2);
    f.expect(
        "IPv4 former unknown -> mesh SYN, no ranges",
        &V4::tcp(unknown4, REMOTE4).frame(&syn),
        action::PASS,
        Reason::PassNotMesh,
    );
}

/// Mesh traffic goes to the socket block of the ingress interface's port;
/// an interface without a port is passed. (A real redirect needs a bound
/// AF_XDP socket, which the dataplane's namespace tests cover.)
#[test]
fn ports_and_socket_slots() {
    require_root!("ports_and_socket_slots");
    let f = Fixture::new();
    let lo = lo_ifindex();
    let ctx = Some(TestRunCtx {
        ingress_ifindex: lo,
        rx_queue_index: 0,
    });
    let frame = V4::tcp(LOCAL4, REMOTE4).frame(&tcp(5, 0));
    assert!(f.prog.maps().ports().unwrap().is_empty());
    f.expect_ctx(
        "mesh TCP on an interface without a port",
        &frame,
        ctx,
        action::PASS,
        Reason::PassNoSocket,
    );
    f.prog.set_port(lo, 2).unwrap();
    f.expect_ctx(
        "mesh TCP on a port without a socket",
        &frame,
        ctx,
        action::PASS,
        Reason::PassNoSocket,
    );
    f.expect_ctx(
        "passthrough on a port",
        &V4::tcp(LOCAL4, OUTSIDE4).frame(&tcp(5, 0)),
        ctx,
        action::PASS,
        Reason::PassNotMesh,
    );

    // Range checks, with the operator's wording.
    let err = f.prog.register_xsk(8, 0, 3).unwrap_err();
    assert!(
        matches!(err, XdpError::PortOutOfRange { port: 8, max: 8 }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "port 8 is out of range: the XDP program serves at most 8 interfaces (ports 0..8)"
    );
    let err = f.prog.register_xsk(0, 64, 3).unwrap_err();
    assert!(
        matches!(err, XdpError::QueueOutOfRange { queue: 64, max: 64 }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "rx queue 64 is out of range: the XDP program serves queues 0..64"
    );
    let err = f.prog.set_port(lo, 8).unwrap_err();
    assert!(
        matches!(err, XdpError::PortOutOfRange { port: 8, max: 8 }),
        "{err}"
    );
    let err = f.prog.register_xsk(7, 63, -1).unwrap_err();
    assert!(matches!(err, XdpError::BadSocketFd { fd: -1 }), "{err}");
    // The last slot exists, but fd 0 is no AF_XDP socket: the kernel refuses it.
    let err = f.prog.register_xsk(7, 63, 0).unwrap_err();
    assert!(matches!(err, XdpError::Map { .. }), "{err}");
    // Unregistering is best effort: empty or out-of-range slots are no-ops.
    f.prog.unregister_xsk(7, 63);
    f.prog.unregister_xsk(8, 0);
    f.prog.unregister_xsk(0, 64);

    // Ports are shared through the pins, both ways.
    let other = PinnedMaps::open(f.pins.path()).unwrap();
    assert_eq!(other.ports().unwrap(), BTreeMap::from([(lo, 2)]));
    other.set_port(lo + 1000, 7).unwrap();
    other.set_port(lo, 0).unwrap();
    assert_eq!(
        f.prog.maps().ports().unwrap(),
        BTreeMap::from([(lo, 0), (lo + 1000, 7)])
    );
    f.prog.clear_port(lo);
    assert_eq!(other.ports().unwrap(), BTreeMap::from([(lo + 1000, 7)]));
    other.clear_port(lo + 1000);
    other.clear_port(lo + 1000); // already gone: a no-op
    assert!(f.prog.maps().ports().unwrap().is_empty());
    let again = PinnedMaps::open(f.pins.path()).unwrap();
    assert!(again.ports().unwrap().is_empty());
    assert!(f.pins.path().join(MAP_PORTS).exists());
    f.expect_ctx(
        "mesh TCP after clear_port",
        &frame,
        ctx,
        action::PASS,
        Reason::PassNoSocket,
    );
}

#[test]
fn disabled_passes_everything() {
    require_root!("disabled_passes_everything");
    let f = Fixture::new();
    f.prog.set_enabled(false).unwrap();
    assert!(!f.prog.maps().enabled().unwrap());
    let seg = tcp(5, 0);
    f.expect(
        "mesh TCP",
        &V4::tcp(LOCAL4, REMOTE4).frame(&seg),
        action::PASS,
        Reason::PassDisabled,
    );
    f.expect(
        "mesh doff 4",
        &V4::tcp(LOCAL4, REMOTE4).frame(&tcp(4, 0)),
        action::PASS,
        Reason::PassDisabled,
    );
    f.expect(
        "10-byte frame",
        &[0u8; 10],
        action::PASS,
        Reason::PassDisabled,
    );
    f.expect(
        "ARP",
        &arp(1, MAC_A, REMOTE4, LOCAL4),
        action::PASS,
        Reason::PassDisabled,
    );
    assert!(f.prog.neighbors().unwrap().is_empty());
    f.prog.set_enabled(true).unwrap();
    f.expect(
        "mesh TCP again",
        &V4::tcp(LOCAL4, REMOTE4).frame(&seg),
        action::PASS,
        Reason::PassNoSocket,
    );
}

#[test]
fn fresh_maps_start_disabled() {
    require_root!("fresh_maps_start_disabled");
    let pins = PinDir::new();
    let prog = XdpProgram::load(pins.path()).unwrap();
    let frame = V4::tcp(LOCAL4, REMOTE4).frame(&tcp(5, 0));
    assert_eq!(prog.test_run(&frame, None).unwrap(), action::PASS);
    assert_eq!(
        prog.counters().unwrap().get(Reason::PassDisabled).packets,
        1
    );
    assert_eq!(prog.counters().unwrap().total_packets(), 1);
}

#[test]
fn pinned_maps_are_shared_and_synced() {
    require_root!("pinned_maps_are_shared_and_synced");
    let pins = PinDir::new();

    let err = PinnedMaps::open(pins.path()).unwrap_err();
    assert!(matches!(err, XdpError::NotPinned { .. }), "{err}");
    assert!(
        err.to_string().contains("start xdpmesh-dataplane first"),
        "{err}"
    );

    let prog = XdpProgram::load(pins.path()).unwrap();
    for name in MAP_NAMES {
        assert!(pins.path().join(name).exists(), "{name} pinned");
    }
    let maps = PinnedMaps::open(pins.path()).unwrap();

    let a: IpAddr = LOCAL4.into();
    let b: IpAddr = LOCAL6.into();
    let c: IpAddr = REMOTE4.into();
    let want = BTreeMap::from([(a, WL_LOCAL), (b, WL_LOCAL), (c, 0)]);
    assert_eq!(
        maps.sync_workloads(&want).unwrap(),
        SyncStats {
            inserted: 3,
            updated: 0,
            deleted: 0,
            unchanged: 0
        }
    );
    assert_eq!(prog.maps().workloads().unwrap(), want);
    assert_eq!(
        maps.sync_workloads(&want).unwrap(),
        SyncStats {
            inserted: 0,
            updated: 0,
            deleted: 0,
            unchanged: 3
        }
    );
    // c becomes local, b goes away, d arrives (given v4-mapped: stored as IPv4).
    let d4 = Ipv4Addr::new(198, 18, 1, 7);
    let want2 = BTreeMap::from([
        (a, WL_LOCAL),
        (c, WL_LOCAL),
        (IpAddr::V6(d4.to_ipv6_mapped()), WL_LOCAL),
    ]);
    assert_eq!(
        maps.sync_workloads(&want2).unwrap(),
        SyncStats {
            inserted: 1,
            updated: 1,
            deleted: 1,
            unchanged: 1
        }
    );
    assert_eq!(
        prog.maps().workloads().unwrap(),
        BTreeMap::from([(a, WL_LOCAL), (c, WL_LOCAL), (IpAddr::V4(d4), WL_LOCAL)])
    );
    let conflict = BTreeMap::from([
        (IpAddr::V4(d4), WL_LOCAL),
        (IpAddr::V6(d4.to_ipv6_mapped()), 0),
    ]);
    assert!(matches!(
        maps.sync_workloads(&conflict),
        Err(XdpError::ConflictingWorkload { .. })
    ));

    // The loader's program sees what the other handle wrote, and the other
    // handle sees the loader's counters.
    maps.set_enabled(true).unwrap();
    let frame = V4::tcp(d4, REMOTE4).frame(&tcp(5, 0));
    assert_eq!(prog.test_run(&frame, None).unwrap(), action::PASS);
    let counted = maps.counters().unwrap().get(Reason::PassNoSocket);
    assert_eq!(
        counted,
        ReasonCount {
            packets: 1,
            bytes: frame.len() as u64
        }
    );

    // A second load (a restarted dataplane) reuses the pinned maps.
    drop(prog);
    let again = XdpProgram::load(pins.path()).unwrap();
    assert_eq!(again.counters().unwrap().get(Reason::PassNoSocket), counted);
    assert_eq!(again.maps().workloads().unwrap().len(), 3);

    assert!(maps.sync_workloads(&BTreeMap::new()).unwrap().deleted == 3);
    assert!(again.maps().workloads().unwrap().is_empty());

    let q = again.register_xsk(0, 64, 3).unwrap_err();
    assert!(
        matches!(q, XdpError::QueueOutOfRange { queue: 64, max: 64 }),
        "{q}"
    );
    // fd 0 is no AF_XDP socket: the kernel refuses it.
    assert!(again.register_xsk(0, 0, 0).is_err());
    again.maps().unregister_xsk(0, 0);
}

#[test]
fn load_refuses_pin_dir_off_bpffs() {
    require_root!("load_refuses_pin_dir_off_bpffs");
    let dir = std::env::temp_dir().join(format!("xdpmesh-test-notbpf-{}", std::process::id()));
    let err = XdpProgram::load(&dir).unwrap_err();
    assert!(matches!(err, XdpError::NotBpffs { .. }), "{err}");
    assert!(
        err.to_string().contains("mount -t bpf bpf /sys/fs/bpf"),
        "{err}"
    );
}

#[test]
fn attach_modes_replace_and_detach() {
    require_root!("attach_modes_replace_and_detach");
    let pins = PinDir::new();
    let prog = XdpProgram::load(pins.path()).unwrap();

    let err = prog.attach("xmt-no-such-if", XdpMode::Auto).unwrap_err();
    assert_eq!(
        err.to_string(),
        "interface xmt-no-such-if not found in this network namespace; check `ip link`"
    );

    // ifb has no native XDP: native fails with advice, auto falls back.
    let ifb = TestLink::new("ifb");
    let err = prog.attach(ifb.name(), XdpMode::Native).unwrap_err();
    assert!(matches!(err, XdpError::NativeUnsupported { .. }), "{err}");
    assert!(
        err.to_string().contains("use --xdp-mode generic or auto"),
        "{err}"
    );
    let id = prog.id().unwrap();
    let att = prog.attach(ifb.name(), XdpMode::Auto).unwrap();
    assert_eq!(att.mode, XdpMode::Generic);
    assert_eq!(att.mode(), XdpMode::Generic);
    assert!(ifb.show().contains("xdpgeneric"), "{}", ifb.show());
    assert!(ifb.show().contains(&format!("id {id}")), "{}", ifb.show());

    // A restarted dataplane replaces the program left attached; the stale
    // attachment's drop must then leave the new program alone.
    let prog2 = XdpProgram::load(pins.path()).unwrap();
    let id2 = prog2.id().unwrap();
    assert_ne!(id, id2);
    let att2 = prog2.attach(ifb.name(), XdpMode::Generic).unwrap();
    assert!(ifb.show().contains(&format!("id {id2}")), "{}", ifb.show());
    drop(att);
    assert!(ifb.show().contains(&format!("id {id2}")), "{}", ifb.show());
    att2.detach().unwrap();
    assert!(!ifb.show().contains("prog/xdp"), "{}", ifb.show());

    // veth runs native XDP; a leftover generic xdpmesh program is cleared first.
    let veth = TestLink::new("veth");
    let g = prog.attach(veth.name(), XdpMode::Generic).unwrap();
    std::mem::forget(g); // simulate a crash: nothing detaches it
    let n = prog2.attach(veth.name(), XdpMode::Native).unwrap();
    assert_eq!(n.mode, XdpMode::Native);
    let shown = veth.show();
    assert!(
        shown.contains(&format!("id {id2}")) && !shown.contains("xdpgeneric"),
        "{shown}"
    );
    drop(n);
    assert!(!veth.show().contains("prog/xdp"), "{}", veth.show());

    // Someone else's program is never replaced.
    let foreign = TestLink::new("veth");
    // Loaded and attached with libbpf directly: `ip link set ... obj` would
    // leave iproute2's directories on the shared bpffs.
    let obj_path = foreign_object();
    let foreign_obj = libbpf_rs::ObjectBuilder::default()
        .open_file(&obj_path)
        .and_then(|o| o.load())
        .expect("load foreign program");
    let _ = std::fs::remove_file(&obj_path);
    let foreign_prog = foreign_obj.progs().next().expect("one program");
    let ifindex = nix::net::if_::if_nametoindex(foreign.name()).unwrap();
    libbpf_rs::Xdp::new(foreign_prog.as_fd())
        .attach(ifindex as i32, libbpf_rs::XdpFlags::SKB_MODE)
        .expect("attach foreign program");
    let err = prog.attach(foreign.name(), XdpMode::Auto).unwrap_err();
    assert!(
        matches!(&err, XdpError::ForeignProgram { name, mode: XdpMode::Generic, .. } if name == "other_prog"),
        "{err}"
    );
    assert!(err.to_string().contains("xdp off"), "{err}");
    assert!(foreign.show().contains("xdpgeneric"), "{}", foreign.show());
}

/// A minimal XDP object that is not xdpmesh's, built with the same clang.
fn foreign_object() -> PathBuf {
    let dir = std::env::temp_dir();
    let src = dir.join(format!("xdpmesh-test-foreign-{}.c", std::process::id()));
    let obj = src.with_extension("o");
    std::fs::write(
        &src,
        "__attribute__((section(\"xdp\"), used)) int other_prog(void *ctx) { return 2; }\n\
         char _license[] __attribute__((section(\"license\"), used)) = \"GPL\";\n",
    )
    .unwrap();
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let st = Command::new(clang)
        .args(["-O2", "-target", "bpf", "-c"])
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .status()
        .expect("run clang");
    let _ = std::fs::remove_file(&src);
    assert!(st.success(), "clang failed");
    obj
}
