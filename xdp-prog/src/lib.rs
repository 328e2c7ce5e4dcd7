//! xdpmesh's XDP program and safe, typed access to its maps.
//!
//! # The program
//!
//! `src/bpf/divert.bpf.c` holds one XDP program, `xdpmesh_divert`. For every
//! frame it decides, bounds-checking each header against `data_end`:
//!
//! 1. diversion disabled (`config`) → `XDP_PASS` (`pass_disabled`), nothing
//!    else is looked at;
//! 2. Ethernet: truncated → drop; VLAN-tagged → pass; ARP → learn the sender
//!    into `neighbors`, pass; other non-IP → pass;
//! 3. IPv4/IPv6 fixed header: truncated or inconsistent (version, IHL, length
//!    fields) → drop; ICMPv6 neighbour discovery → learn, pass;
//! 4. not TCP (ICMP, UDP, ...) → pass, mesh or not;
//! 5. not mesh traffic → pass (`pass_not_mesh`). With the `workloads` flags
//!    [`abi::WL_LOCAL`] (captured, served by this gateway) and
//!    [`abi::WL_MESH`] (a mesh workload served by another gateway), a segment
//!    is mesh iff `(src LOCAL && dst LOCAL|MESH) || dst LOCAL`: inbound
//!    traffic to a captured workload and captured-to-mesh traffic are
//!    diverted, while a captured workload's traffic to a destination outside
//!    the mesh is left to the kernel to route (passthrough). One map lookup
//!    per address at most;
//! 6. mesh traffic the userspace stack cannot take (IPv4 fragments or
//!    options, IPv6 extension headers, bad TCP data offset) → drop;
//! 7. otherwise the ingress interface's port (`ports`) selects its block of
//!    `xsks` and `bpf_redirect_map(&xsks, port * 64 + rx_queue_index,
//!    XDP_PASS)` redirects into the AF_XDP socket of that (interface, queue);
//!    an interface without a port, or an empty slot, means pass
//!    (`pass_no_socket`, fail open).
//!
//! Checksums are verified in userspace, not here. Every frame increments
//! exactly one [`Reason`] counter (frames and bytes), which become the
//! `xdp` section of the dataplane's stats and metric labels.
//!
//! # The map ABI
//!
//! `src/bpf/abi.h` is the single definition of every map layout; [`abi`]
//! mirrors it with `#[repr(C)]` records and compile-time size assertions
//! (and a test that reads the header's reason enum). All maps are pinned by
//! name (`LIBBPF_PIN_BY_NAME`) under one directory on a bpffs, by default
//! `/sys/fs/bpf/xdpmesh/<instance>`:
//!
//! | map | type | key → value |
//! | --- | --- | --- |
//! | `xsks` | XSKMAP, 8 × 64 | [`abi::xsk_slot`]`(port, rx queue)` → AF_XDP socket fd |
//! | `ports` | HASH, 8 | `u32` ingress ifindex → [`abi::XmPort`] |
//! | `workloads` | HASH, 65536 | [`abi::XmAddr`] (IPv4 v4-mapped) → [`abi::XmWorkload`] |
//! | `config` | ARRAY, 1 | 0 → [`abi::XmConfig`] |
//! | `counters` | PERCPU_ARRAY, [`Reason::COUNT`] | [`Reason`] → [`abi::XmCounter`] per CPU |
//! | `neighbors` | LRU_HASH, 4096 | [`abi::XmNeighKey`] → [`abi::XmNeigh`] |
//!
//! # Who uses what
//!
//! The dataplane loads the program with [`XdpProgram::load`] (a restart
//! reuses the pinned maps), attaches it per interface with
//! [`XdpProgram::attach`], numbers the interfaces as ports
//! ([`XdpProgram::set_port`]) and registers one AF_XDP socket per
//! (port, queue) ([`XdpProgram::register_xsk`]). The
//! control process opens the same maps with [`PinnedMaps::open`] and keeps
//! `workloads` in step with its configuration through
//! [`PinnedMaps::sync_workloads`].
//!
//! # No `unsafe`
//!
//! `build.rs` compiles only the BPF object (no libbpf-cargo skeleton, whose
//! generated code is `unsafe`); the library embeds it and loads it with the
//! safe `libbpf_rs::ObjectBuilder::open_memory`.

pub mod abi;
mod error;
mod maps;
mod program;

pub use abi::Reason;
pub use error::XdpError;
pub use maps::{
    Counters, Neighbor, PinnedMaps, ReasonCount, SyncStats, MAP_CONFIG, MAP_COUNTERS, MAP_NAMES,
    MAP_NEIGHBORS, MAP_PORTS, MAP_WORKLOADS, MAP_XSKS,
};
pub use program::{remove_pins, TestRunCtx, XdpAttachment, XdpMode, XdpProgram, PROGRAM_NAME};

/// XDP action codes (`enum xdp_action`, include/uapi/linux/bpf.h).
pub mod action {
    /// `XDP_ABORTED`.
    pub const ABORTED: u32 = 0;
    /// `XDP_DROP`.
    pub const DROP: u32 = 1;
    /// `XDP_PASS`.
    pub const PASS: u32 = 2;
    /// `XDP_TX`.
    pub const TX: u32 = 3;
    /// `XDP_REDIRECT`.
    pub const REDIRECT: u32 = 4;
}
