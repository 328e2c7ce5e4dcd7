//! Rust mirrors of `src/bpf/abi.h`, the map ABI shared with the XDP program.
//!
//! Each record is `#[repr(C)]` with the same fields, explicit padding and a
//! compile-time size assertion that matches the `_Static_assert` in the header.
//! Map keys and values cross the syscall boundary as bytes in host order:
//! zerocopy's derives give every record its bytes ([`IntoBytes::as_bytes`])
//! and read it back ([`FromBytes::read_from_bytes`], which refuses a slice of
//! the wrong size), without `unsafe` here. `IntoBytes` only derives for a
//! layout without implicit padding, so no record can hide an unwritten hole
//! (the kernel hashes every key byte).

use std::fmt;
use std::mem::size_of;
use std::net::{IpAddr, Ipv6Addr};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `XM_ABI_VERSION`: bump together with `abi.h` whenever a layout changes.
pub const ABI_VERSION: u32 = 3;
/// `XM_MAX_QUEUES`: rx queues served per port (interface).
pub const MAX_QUEUES: u32 = 64;
/// `XM_MAX_PORTS`: interfaces the program can serve at once (capacity of
/// `ports`). The `xsks` map has `MAX_PORTS * MAX_QUEUES` slots, one per
/// (port, queue), at [`xsk_slot`].
pub const MAX_PORTS: u32 = 8;
/// `XM_MAX_WORKLOADS`: capacity of the `workloads` map.
pub const MAX_WORKLOADS: u32 = 65536;
/// `XM_MAX_NEIGHBORS`: capacity of the LRU `neighbors` map.
pub const MAX_NEIGHBORS: u32 = 4096;
/// `XM_MAX_INBOUND`: capacity of the LRU `inbound` map (connections from outside
/// the mesh to captured workloads).
pub const MAX_INBOUND: u32 = 65536;
/// `XM_MAX_POD_CIDRS`: capacity of the `pod_cidrs` LPM trie.
pub const MAX_POD_CIDRS: u32 = 256;
/// `XM_MAX_UNKNOWN_SOURCES`: capacity of the LRU `unknown_sources` map.
pub const MAX_UNKNOWN_SOURCES: u32 = 1024;
/// `XM_CIDR_DIVERT_UNKNOWN`: a pod range whose unknown sources' SYNs are diverted
/// (`unknown_source` reject or hold) instead of passed.
pub const CIDR_DIVERT_UNKNOWN: u32 = 1;
/// `XM_WL_LOCAL`: the workload is captured and served by this gateway.
pub const WL_LOCAL: u32 = 1;
/// `XM_WL_MESH`: a mesh workload served by another gateway.
///
/// A TCP segment is mesh traffic (diverted) iff `(src & WL_LOCAL && dst &
/// (WL_LOCAL | WL_MESH)) || dst & WL_LOCAL`: inbound traffic to a captured
/// workload and captured-to-mesh traffic. A captured workload's traffic to
/// an address outside the mesh (no flag) goes to the kernel (passthrough).
pub const WL_MESH: u32 = 2;
/// `XM_CFG_ENABLED`: divert mesh traffic; when clear every frame is passed.
pub const CFG_ENABLED: u32 = 1;

/// `struct xm_addr`: an IPv6 address in network byte order; IPv4 addresses
/// are stored v4-mapped (`::ffff:a.b.c.d`, RFC 4291 section 2.5.5.2).
#[repr(C)]
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
)]
pub struct XmAddr {
    /// Address bytes, network order.
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<XmAddr>() == 16);

impl XmAddr {
    /// The address this key stands for; v4-mapped keys come back as IPv4.
    pub fn ip(&self) -> IpAddr {
        Ipv6Addr::from(self.addr).to_canonical()
    }
}

impl From<IpAddr> for XmAddr {
    fn from(ip: IpAddr) -> Self {
        let v6 = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        Self { addr: v6.octets() }
    }
}

/// `struct xm_workload`: value of the `workloads` map.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XmWorkload {
    /// `XM_WL_*` flags.
    pub flags: u32,
    _pad: u32,
}
const _: () = assert!(size_of::<XmWorkload>() == 8);

impl XmWorkload {
    /// A record with the given flags and zeroed padding.
    pub const fn new(flags: u32) -> Self {
        Self { flags, _pad: 0 }
    }
}

/// The `xsks` key of rx queue `queue` on port `port`:
/// `port * MAX_QUEUES + queue`, as the XDP program computes it.
pub const fn xsk_slot(port: u32, queue: u32) -> u32 {
    port * MAX_QUEUES + queue
}

/// `struct xm_port`: value of the `ports` map (key: `u32` ingress ifindex).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XmPort {
    /// The interface's port number, below [`MAX_PORTS`]: its block of
    /// [`MAX_QUEUES`] slots in `xsks`.
    pub slot: u32,
    _pad: u32,
}
const _: () = assert!(size_of::<XmPort>() == 8);

impl XmPort {
    /// A record for port `slot` with zeroed padding.
    pub const fn new(slot: u32) -> Self {
        Self { slot, _pad: 0 }
    }
}

/// `struct xm_config`: the single value of the `config` array.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XmConfig {
    /// `XM_CFG_*` flags.
    pub flags: u32,
    _pad: u32,
}
const _: () = assert!(size_of::<XmConfig>() == 8);

impl XmConfig {
    /// A record with the given flags and zeroed padding.
    pub const fn new(flags: u32) -> Self {
        Self { flags, _pad: 0 }
    }
}

/// `struct xm_counter`: one CPU's slot of the per-CPU `counters` array.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XmCounter {
    /// Frames.
    pub packets: u64,
    /// Bytes of those frames, from the Ethernet header on.
    pub bytes: u64,
}
const _: () = assert!(size_of::<XmCounter>() == 16);

/// `struct xm_inbound_key`: key of the `inbound` map, a connection from outside the
/// mesh to a captured workload (without the remote port).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XmInboundKey {
    /// The remote (outside) address, as in [`XmAddr`].
    pub remote: [u8; 16],
    /// The workload's address, as in [`XmAddr`].
    pub local: [u8; 16],
    /// The workload's port, network byte order.
    pub port: u16,
    _pad: u16,
}
const _: () = assert!(size_of::<XmInboundKey>() == 36);

impl XmInboundKey {
    /// The key of connections from `remote` to `local`:`port`.
    pub fn new(remote: IpAddr, local: IpAddr, port: u16) -> Self {
        Self {
            remote: XmAddr::from(remote).addr,
            local: XmAddr::from(local).addr,
            port: port.to_be(),
            _pad: 0,
        }
    }
}

/// `struct xm_inbound`: value of the `inbound` map.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XmInbound {
    /// CLOCK_MONOTONIC nanoseconds of the SYN that made the entry.
    pub created_ns: u64,
}
const _: () = assert!(size_of::<XmInbound>() == 8);

/// `struct xm_cidr_key`: key of the `pod_cidrs` LPM trie; `prefixlen` counts bits of
/// the 128-bit [`XmAddr`] form (96 + the prefix for IPv4).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XmCidrKey {
    /// Prefix length in bits of [`XmCidrKey::addr`].
    pub prefixlen: u32,
    /// The network address, as in [`XmAddr`].
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<XmCidrKey>() == 20);

impl XmCidrKey {
    /// The key of `addr/prefix` (an IPv4 prefix counts from the v4-mapped form's
    /// 96th bit).
    pub fn new(addr: IpAddr, prefix: u8) -> Self {
        let prefixlen = match addr {
            IpAddr::V4(_) => 96 + u32::from(prefix.min(32)),
            IpAddr::V6(_) => u32::from(prefix.min(128)),
        };
        Self {
            prefixlen,
            addr: XmAddr::from(addr).addr,
        }
    }

    /// The range as (network address, prefix length in its own family).
    pub fn cidr(&self) -> (IpAddr, u8) {
        let ip = XmAddr { addr: self.addr }.ip();
        let prefix = match ip {
            IpAddr::V4(_) => self.prefixlen.saturating_sub(96),
            IpAddr::V6(_) => self.prefixlen,
        };
        (ip, prefix.min(128) as u8)
    }
}

/// `struct xm_cidr`: value of the `pod_cidrs` LPM trie.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XmCidr {
    /// `XM_CIDR_*` flags.
    pub flags: u32,
    _pad: u32,
}
const _: () = assert!(size_of::<XmCidr>() == 8);

impl XmCidr {
    /// The value with `flags`, padding zeroed.
    pub const fn new(flags: u32) -> Self {
        Self { flags, _pad: 0 }
    }
}

/// `struct xm_unknown`: value of the `unknown_sources` map.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XmUnknown {
    /// CLOCK_MONOTONIC nanoseconds of the first SYN seen.
    pub first_ns: u64,
    /// CLOCK_MONOTONIC nanoseconds of the last SYN seen.
    pub last_ns: u64,
    /// SYNs seen (approximate: CPUs race on it).
    pub syns: u64,
}
const _: () = assert!(size_of::<XmUnknown>() == 24);

/// `struct xm_neigh_key`: key of the `neighbors` map.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XmNeighKey {
    /// Interface the ARP/NDP message arrived on (`xdp_md.ingress_ifindex`).
    pub ifindex: u32,
    /// The neighbour's address, as in [`XmAddr`].
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<XmNeighKey>() == 20);

impl XmNeighKey {
    /// The key for `addr` seen on `ifindex`.
    pub fn new(ifindex: u32, addr: IpAddr) -> Self {
        Self {
            ifindex,
            addr: XmAddr::from(addr).addr,
        }
    }
}

/// `struct xm_neigh`: value of the `neighbors` map.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct XmNeigh {
    /// The neighbour's MAC address.
    pub mac: [u8; 6],
    _pad: u16,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when it was last seen.
    pub updated_ns: u64,
}
const _: () = assert!(size_of::<XmNeigh>() == 16);

impl XmNeigh {
    /// A record with zeroed padding.
    pub const fn new(mac: [u8; 6], updated_ns: u64) -> Self {
        Self {
            mac,
            _pad: 0,
            updated_ns,
        }
    }
}

/// Why the XDP program gave a frame its verdict: `enum xm_reason`.
///
/// The discriminants index the `counters` map and are ABI; [`Reason::name`]
/// is the metric label.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Mesh TCP redirected to the queue's AF_XDP socket.
    RedirectMesh = 0,
    /// Mesh TCP passed to the kernel: the ingress interface has no port
    /// (`ports`), or no socket is registered for its (port, rx queue).
    PassNoSocket = 1,
    /// `config` is not enabled: every frame is passed untouched.
    PassDisabled = 2,
    /// 802.1Q / 802.1ad tagged frame.
    PassVlan = 3,
    /// ARP (snooped into `neighbors` first).
    PassArp = 4,
    /// Another non-IP ethertype.
    PassNonIp = 5,
    /// IP but not TCP (ICMP, UDP, ...), mesh or not.
    PassNonTcp = 6,
    /// TCP (or an IPv6 extension-header chain) that is not mesh traffic:
    /// neither to a local workload nor from one to a mesh workload
    /// (see [`WL_MESH`]); this includes a captured workload's passthrough
    /// traffic to destinations outside the mesh.
    PassNotMesh = 7,
    /// ICMPv6 neighbour solicitation or advertisement (snooped into `neighbors`).
    PassNdp = 8,
    /// Frame shorter than an Ethernet header.
    DropTruncatedEth = 9,
    /// Frame too short for the fixed IPv4/IPv6 header.
    DropTruncatedIp = 10,
    /// Bad IP version, IHL or length field.
    DropBadIpHeader = 11,
    /// Mesh IPv4 fragment (the userspace stack does not reassemble).
    DropMeshFragment = 12,
    /// Mesh IPv4 with options.
    DropIpOptions = 13,
    /// Mesh IPv6 with extension headers.
    DropIpv6Ext = 14,
    /// Mesh TCP shorter than the fixed TCP header.
    DropTruncatedTcp = 15,
    /// Mesh TCP with data offset below 5 or beyond the segment.
    DropBadTcpHeader = 16,
    /// A segment of a connection from outside the mesh to a workload served here
    /// (its SYN, or one of an `inbound` connection, either way), redirected.
    RedirectPlaintext = 17,
    /// A segment from an unknown source (in `pod_cidrs`, no workload) to a mesh
    /// workload, passed to the kernel (`unknown_source: pass`, or not a SYN).
    PassUnknownSource = 18,
    /// A SYN from an unknown source, redirected (`unknown_source: reject | hold`).
    RedirectUnknownSource = 19,
}

impl Reason {
    /// `XM_REASON_MAX`: number of reasons (and entries of `counters`).
    pub const COUNT: usize = 20;

    /// Every reason, in discriminant order.
    pub const ALL: [Reason; Reason::COUNT] = [
        Reason::RedirectMesh,
        Reason::PassNoSocket,
        Reason::PassDisabled,
        Reason::PassVlan,
        Reason::PassArp,
        Reason::PassNonIp,
        Reason::PassNonTcp,
        Reason::PassNotMesh,
        Reason::PassNdp,
        Reason::DropTruncatedEth,
        Reason::DropTruncatedIp,
        Reason::DropBadIpHeader,
        Reason::DropMeshFragment,
        Reason::DropIpOptions,
        Reason::DropIpv6Ext,
        Reason::DropTruncatedTcp,
        Reason::DropBadTcpHeader,
        Reason::RedirectPlaintext,
        Reason::PassUnknownSource,
        Reason::RedirectUnknownSource,
    ];

    /// The snake_case name, used as the metric label.
    pub const fn name(&self) -> &'static str {
        match self {
            Reason::RedirectMesh => "redirect_mesh",
            Reason::PassNoSocket => "pass_no_socket",
            Reason::PassDisabled => "pass_disabled",
            Reason::PassVlan => "pass_vlan",
            Reason::PassArp => "pass_arp",
            Reason::PassNonIp => "pass_non_ip",
            Reason::PassNonTcp => "pass_non_tcp",
            Reason::PassNotMesh => "pass_not_mesh",
            Reason::PassNdp => "pass_ndp",
            Reason::DropTruncatedEth => "drop_truncated_eth",
            Reason::DropTruncatedIp => "drop_truncated_ip",
            Reason::DropBadIpHeader => "drop_bad_ip_header",
            Reason::DropMeshFragment => "drop_mesh_fragment",
            Reason::DropIpOptions => "drop_ip_options",
            Reason::DropIpv6Ext => "drop_ipv6_ext",
            Reason::DropTruncatedTcp => "drop_truncated_tcp",
            Reason::DropBadTcpHeader => "drop_bad_tcp_header",
            Reason::RedirectPlaintext => "redirect_plaintext",
            Reason::PassUnknownSource => "pass_unknown_source",
            Reason::RedirectUnknownSource => "redirect_unknown_source",
        }
    }

    /// The reason with discriminant `v`.
    pub fn from_u32(v: u32) -> Option<Reason> {
        Reason::ALL.get(usize::try_from(v).ok()?).copied()
    }

    /// Whether frames with this reason are dropped (as opposed to passed or
    /// redirected).
    pub const fn is_drop(&self) -> bool {
        matches!(
            self,
            Reason::DropTruncatedEth
                | Reason::DropTruncatedIp
                | Reason::DropBadIpHeader
                | Reason::DropMeshFragment
                | Reason::DropIpOptions
                | Reason::DropIpv6Ext
                | Reason::DropTruncatedTcp
                | Reason::DropBadTcpHeader
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;

    #[test]
    fn reasons_are_dense_and_named_uniquely() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert_eq!(Reason::from_u32(i as u32), Some(*r));
        }
        assert_eq!(Reason::from_u32(Reason::COUNT as u32), None);
        let names: BTreeSet<_> = Reason::ALL.iter().map(Reason::name).collect();
        assert_eq!(names.len(), Reason::COUNT);
        for r in Reason::ALL {
            let n = r.name();
            assert!(n.starts_with("pass_") || n.starts_with("drop_") || n.starts_with("redirect_"));
            assert!(n
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()));
            assert_eq!(r.is_drop(), n.starts_with("drop_"), "{n}");
            assert_eq!(r.to_string(), n);
        }
    }

    #[test]
    fn header_enum_matches() {
        // Keep in step with `enum xm_reason` in abi.h: parse the header itself.
        let header = include_str!("bpf/abi.h");
        for r in Reason::ALL {
            let c_name = format!(
                "XM_REASON_{} = {},",
                r.name().to_ascii_uppercase(),
                r as u32
            );
            assert!(header.contains(&c_name), "abi.h lacks `{c_name}`");
        }
        assert!(header.contains(&format!("XM_REASON_MAX = {},", Reason::COUNT)));
        for (name, v) in [
            ("XM_ABI_VERSION", ABI_VERSION.to_string()),
            ("XM_MAX_QUEUES", MAX_QUEUES.to_string()),
            ("XM_MAX_PORTS", MAX_PORTS.to_string()),
            ("XM_MAX_WORKLOADS", MAX_WORKLOADS.to_string()),
            ("XM_MAX_NEIGHBORS", MAX_NEIGHBORS.to_string()),
            ("XM_MAX_INBOUND", MAX_INBOUND.to_string()),
            ("XM_MAX_POD_CIDRS", MAX_POD_CIDRS.to_string()),
            ("XM_MAX_UNKNOWN_SOURCES", MAX_UNKNOWN_SOURCES.to_string()),
            ("XM_CIDR_DIVERT_UNKNOWN", format!("{CIDR_DIVERT_UNKNOWN}u")),
            ("XM_WL_LOCAL", format!("{WL_LOCAL}u")),
            ("XM_WL_MESH", format!("{WL_MESH}u")),
            ("XM_CFG_ENABLED", format!("{CFG_ENABLED}u")),
        ] {
            let line = format!("#define {name} {v}");
            assert!(
                header
                    .lines()
                    .any(|l| l == line || l.starts_with(&format!("{line} "))),
                "abi.h lacks `{line}`"
            );
        }
    }

    #[test]
    fn header_sizes_match() {
        // Every `_Static_assert(sizeof(struct xm_*) == N, ...)` in abi.h against the
        // Rust mirror (whose own `const` assertion pins the same N at compile time).
        let header = include_str!("bpf/abi.h");
        let rust = [
            ("xm_addr", size_of::<XmAddr>()),
            ("xm_workload", size_of::<XmWorkload>()),
            ("xm_port", size_of::<XmPort>()),
            ("xm_config", size_of::<XmConfig>()),
            ("xm_counter", size_of::<XmCounter>()),
            ("xm_neigh_key", size_of::<XmNeighKey>()),
            ("xm_neigh", size_of::<XmNeigh>()),
            ("xm_inbound_key", size_of::<XmInboundKey>()),
            ("xm_inbound", size_of::<XmInbound>()),
            ("xm_cidr_key", size_of::<XmCidrKey>()),
            ("xm_cidr", size_of::<XmCidr>()),
            ("xm_unknown", size_of::<XmUnknown>()),
        ];
        let asserted: Vec<&str> = header
            .lines()
            .filter(|l| l.starts_with("_Static_assert(sizeof(struct "))
            .collect();
        assert_eq!(asserted.len(), rust.len(), "a record without a Rust mirror");
        for (name, size) in rust {
            let line = format!("_Static_assert(sizeof(struct {name}) == {size}, \"{name} ABI\");");
            assert!(asserted.contains(&line.as_str()), "abi.h lacks `{line}`");
            assert!(
                header.contains(&format!("struct {name} {{\n")),
                "abi.h lacks struct {name}"
            );
        }
    }

    #[test]
    fn v4_mapped_round_trip() {
        let v4 = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2));
        let k = XmAddr::from(v4);
        assert_eq!(
            k.addr,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 1, 2]
        );
        assert_eq!(k.ip(), v4);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(XmAddr::from(v6).ip(), v6);
    }

    /// The parts, concatenated.
    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn record_encodings() {
        // Exact host-order bytes, padding zeroed, as the XDP program reads them.
        let w = XmWorkload::new(WL_LOCAL | WL_MESH);
        assert_eq!(w.as_bytes(), cat(&[&3u32.to_ne_bytes(), &[0; 4]]));
        assert_eq!(XmWorkload::read_from_bytes(w.as_bytes()).ok(), Some(w));
        assert!(XmWorkload::read_from_bytes(&[0; 7]).is_err());
        let p = XmPort::new(3);
        assert_eq!(p.as_bytes(), cat(&[&3u32.to_ne_bytes(), &[0; 4]]));
        assert_eq!(XmPort::read_from_bytes(p.as_bytes()).ok(), Some(p));
        assert!(XmPort::read_from_bytes(&[0; 9]).is_err());
        assert_eq!(xsk_slot(0, 5), 5);
        assert_eq!(
            xsk_slot(MAX_PORTS - 1, MAX_QUEUES - 1),
            MAX_PORTS * MAX_QUEUES - 1
        );
        let c = XmConfig::new(CFG_ENABLED);
        assert_eq!(c.as_bytes(), cat(&[&1u32.to_ne_bytes(), &[0; 4]]));
        assert_eq!(XmConfig::read_from_bytes(c.as_bytes()).ok(), Some(c));
        let a = XmAddr::from(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(a.as_bytes(), &a.addr);
        assert_eq!(XmAddr::read_from_bytes(&a.addr).ok(), Some(a));
        let k = XmNeighKey::new(7, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(k.as_bytes(), cat(&[&7u32.to_ne_bytes(), &a.addr]));
        assert_eq!(XmNeighKey::read_from_bytes(k.as_bytes()).ok(), Some(k));
        assert!(XmNeighKey::read_from_bytes(&[0; 16]).is_err());
        let n = XmNeigh::new([0xa5; 6], 42);
        assert_eq!(
            n.as_bytes(),
            cat(&[&[0xa5; 6], &[0; 2], &42u64.to_ne_bytes()])
        );
        let mut v = [0xa5u8; 16];
        v[8..16].copy_from_slice(&42u64.to_ne_bytes());
        let read = XmNeigh::read_from_bytes(&v).unwrap();
        assert_eq!((read.mac, read.updated_ns), ([0xa5; 6], 42));
        let cb = cat(&[&3u64.to_ne_bytes(), &180u64.to_ne_bytes()]);
        let counter = XmCounter {
            packets: 3,
            bytes: 180,
        };
        assert_eq!(counter.as_bytes(), cb);
        assert_eq!(XmCounter::read_from_bytes(&cb).ok(), Some(counter));
        let ik = XmInboundKey::new(
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            80,
        );
        let outside = XmAddr::from(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)));
        assert_eq!(
            ik.as_bytes(),
            cat(&[&outside.addr, &a.addr, &[0, 80], &[0; 2]])
        );
        let ck = XmCidrKey::new(IpAddr::V4(Ipv4Addr::new(198, 18, 1, 0)), 24);
        assert_eq!(ck.prefixlen, 120);
        assert_eq!(ck.cidr(), (IpAddr::V4(Ipv4Addr::new(198, 18, 1, 0)), 24));
        let ck6 = XmCidrKey::new("fd00::".parse().unwrap(), 64);
        assert_eq!(
            ck6.as_bytes(),
            cat(&[
                &64u32.to_ne_bytes(),
                &XmAddr::from("fd00::".parse::<IpAddr>().unwrap()).addr
            ])
        );
        assert_eq!(ck6.cidr(), ("fd00::".parse().unwrap(), 64));
        assert_eq!(
            XmCidr::new(CIDR_DIVERT_UNKNOWN).as_bytes(),
            cat(&[&1u32.to_ne_bytes(), &[0; 4]])
        );
    }
}
