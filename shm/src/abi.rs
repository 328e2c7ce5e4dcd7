//! The on-disk (on-`/dev/shm`) layout. One source of truth for the writer (control) and
//! the readers (dataplane workers).
//!
//! ```text
//! offset 0                 Header (4096 bytes, see `Header`)
//! offset AREA_OFFSET[0]    area 0: TableHeader | NodeRecord[] | WorkloadRecord[] | AddressRecord[]
//!                          | PolicyRecord[] | PolicySourceRecord[] | PolicyPortRecord[]
//!                          | CidrRecord[] | ServiceRecord[] | VipRecord[]
//!                          | ServicePortRecord[] | EndpointRecord[] | strings
//! offset AREA_OFFSET[1]    area 1: same shape
//! ```
//!
//! Every record is `#[repr(C)]`, little-endian (the file never leaves the host), has
//! explicit padding and a compile-time size assertion. Bump [`ABI_VERSION`] on any change.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `b"XDPMESH\0"` as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"XDPMESH\0");
/// Layout version; readers refuse any other.
pub const ABI_VERSION: u32 = 4;
/// Worker acknowledgement slots in the header.
pub const MAX_WORKERS: usize = 128;
/// Size reserved for the header; areas start page-aligned after it.
pub const HEADER_SIZE: usize = 4096;

/// Header field offsets. The atomics are accessed through these offsets only (never
/// through a `&[u8]` of the header), see `crate::map`.
pub mod header {
    /// u64 magic.
    pub const MAGIC: usize = 0;
    /// u32 ABI version.
    pub const ABI_VERSION: usize = 8;
    /// u32 number of worker slots.
    pub const MAX_WORKERS: usize = 12;
    /// u64 size in bytes of each of the two areas.
    pub const AREA_SIZE: usize = 16;
    /// AtomicU64: generation currently published (0 = nothing yet). Area = generation % 2.
    pub const GENERATION: usize = 24;
    /// AtomicU64: pid of the writer that published last.
    pub const WRITER_PID: usize = 32;
    /// AtomicU64: wall-clock time (Unix milliseconds) of the last publication (ABI 3).
    pub const PUBLISHED_MS: usize = 40;
    /// AtomicU64: wall-clock time (Unix milliseconds) of the writer's last heartbeat:
    /// a live control process refreshes it every second (ABI 3).
    pub const HEARTBEAT_MS: usize = 48;
    /// Start of the worker slots: `MAX_WORKERS` × (AtomicU64 owner, AtomicU64 acked generation).
    pub const SLOTS: usize = 64;
    /// Bytes per worker slot.
    pub const SLOT_SIZE: usize = 16;
    /// Start of `MAX_WORKERS` × AtomicU64, one per slot (ABI 4): the oldest table
    /// generation the slot's worker still has a connection of (its acked generation
    /// when it has none; 0 until it first says). Control keeps the divert entries of a
    /// removed address until no worker has a connection older than the removal.
    pub const IN_USE: usize = SLOTS + super::MAX_WORKERS * SLOT_SIZE;
}
const _: () = assert!(header::IN_USE + MAX_WORKERS * 8 <= HEADER_SIZE);

/// Offset of area `i` (0 or 1) for a file whose areas are `area_size` bytes.
pub const fn area_offset(i: usize, area_size: usize) -> usize {
    HEADER_SIZE + i * area_size
}

/// A string in the area's string pool.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct StrRef {
    /// Byte offset from the start of the string pool.
    pub offset: u32,
    /// Length in bytes (UTF-8).
    pub len: u32,
}
const _: () = assert!(size_of::<StrRef>() == 8);

/// Start of every table area.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TableHeader {
    /// Generation this area holds; must equal the published generation it was read for.
    pub generation: u64,
    /// Number of [`NodeRecord`]s.
    pub node_count: u32,
    /// Number of [`WorkloadRecord`]s.
    pub workload_count: u32,
    /// Number of [`AddressRecord`]s.
    pub address_count: u32,
    /// Bytes in the string pool.
    pub string_bytes: u32,
    /// SPIFFE trust domain.
    pub trust_domain: StrRef,
    /// Index of the node this gateway serves, `u32::MAX` if none.
    pub local_node: u32,
    /// [`UNKNOWN_SOURCE_PASS`], [`UNKNOWN_SOURCE_REJECT`] or [`UNKNOWN_SOURCE_HOLD`].
    pub unknown_source: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
    /// Number of [`PolicyRecord`]s (ABI 2).
    pub policy_count: u32,
    /// Number of [`PolicySourceRecord`]s (ABI 2).
    pub policy_source_count: u32,
    /// Number of [`PolicyPortRecord`]s (ABI 2).
    pub policy_port_count: u32,
    /// Number of [`CidrRecord`]s: the pod ranges (ABI 3).
    pub pod_cidr_count: u32,
    /// How long a SYN from an unknown source is held, in milliseconds (ABI 3; used
    /// with [`UNKNOWN_SOURCE_HOLD`]).
    pub unknown_source_hold_ms: u32,
    /// Explicit padding.
    pub _pad2: [u8; 4],
    /// The cluster's name, for HBONE `baggage` (ABI 3).
    pub cluster_name: StrRef,
    /// Number of [`ServiceRecord`]s (ABI 3).
    pub service_count: u32,
    /// Number of [`VipRecord`]s (ABI 3).
    pub vip_count: u32,
    /// Number of [`ServicePortRecord`]s (ABI 3).
    pub service_port_count: u32,
    /// Number of [`EndpointRecord`]s (ABI 3).
    pub endpoint_count: u32,
    /// Reserved for later fields; written as zero (two arrays: `Default` is derived
    /// for arrays of at most 32).
    pub _reserved: [u8; 16],
    /// See [`TableHeader::_reserved`].
    pub _reserved2: [u8; 24],
}
const _: () = assert!(size_of::<TableHeader>() == 128);

/// Traffic from an unknown pod address is passed to the kernel.
pub const UNKNOWN_SOURCE_PASS: u8 = 0;
/// Traffic from an unknown pod address is refused.
pub const UNKNOWN_SOURCE_REJECT: u8 = 1;
/// A SYN from an unknown pod address is held until its workload appears, then
/// accepted, or refused when the hold time is up.
pub const UNKNOWN_SOURCE_HOLD: u8 = 2;

/// Peer authentication: plaintext from sources without an identity is accepted.
pub const PEER_AUTH_PERMISSIVE: u8 = 0;
/// Peer authentication: only HBONE (mutual TLS) is accepted.
pub const PEER_AUTH_STRICT: u8 = 1;

/// Address family tags.
pub const FAMILY_V4: u8 = 4;
/// Address family tags.
pub const FAMILY_V6: u8 = 6;

/// A node of the mesh.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct NodeRecord {
    /// Node name.
    pub name: StrRef,
    /// Reserved flags, zero.
    pub flags: u32,
    /// Family of `gateway`: [`FAMILY_V4`] or [`FAMILY_V6`].
    pub gateway_family: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
    /// The node gateway's first address (IPv4 in the first 4 bytes).
    pub gateway: [u8; 16],
}
const _: () = assert!(size_of::<NodeRecord>() == 32);

/// Workload protocol: plain TCP second leg.
pub const PROTOCOL_TCP: u8 = 0;
/// Workload protocol: HBONE tunnel.
pub const PROTOCOL_HBONE: u8 = 1;

/// A workload (pod).
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct WorkloadRecord {
    /// Workload name.
    pub name: StrRef,
    /// Kubernetes namespace.
    pub namespace: StrRef,
    /// Service account.
    pub service_account: StrRef,
    /// Index into the node records.
    pub node: u32,
    /// [`PROTOCOL_TCP`] or [`PROTOCOL_HBONE`].
    pub protocol: u8,
    /// [`PEER_AUTH_PERMISSIVE`] or [`PEER_AUTH_STRICT`] (ABI 3).
    pub peer_auth: u8,
    /// Explicit padding.
    pub _pad: [u8; 2],
    /// Reserved, zero.
    pub _reserved: [u8; 32],
}
const _: () = assert!(size_of::<WorkloadRecord>() == 64);

/// One address of a workload, with the route the gateway uses to reach it.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct AddressRecord {
    /// The address (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
    /// Index into the workload records.
    pub workload: u32,
    /// Interface index the gateway reaches this address through; 0 = unknown.
    pub route_ifindex: u32,
    /// Family of `route_via`, 0 when the address is on-link.
    pub route_via_family: u8,
    /// Explicit padding.
    pub _pad2: [u8; 3],
    /// Next hop when not on-link.
    pub route_via: [u8; 16],
}
const _: () = assert!(size_of::<AddressRecord>() == 48);

/// Authorization policy action: allow what matches (and, once a workload has an ALLOW
/// policy, deny what no ALLOW policy matches).
pub const POLICY_ALLOW: u8 = 0;
/// Authorization policy action: deny what matches (evaluated before every ALLOW).
pub const POLICY_DENY: u8 = 1;

/// An authorization policy (Istio's L4 `AuthorizationPolicy`, reduced to what a
/// dataplane can check on a connection: the peer's identity and the destination port).
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PolicyRecord {
    /// Policy name (for logs).
    pub name: StrRef,
    /// Namespace the policy applies to.
    pub namespace: StrRef,
    /// Workload name it is limited to; empty = every workload of the namespace.
    pub workload: StrRef,
    /// [`POLICY_ALLOW`] or [`POLICY_DENY`].
    pub action: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
    /// First of this policy's [`PolicySourceRecord`]s.
    pub first_source: u32,
    /// Number of sources; 0 = any source.
    pub source_count: u32,
    /// First of this policy's [`PolicyPortRecord`]s.
    pub first_port: u32,
    /// Number of ports; 0 = any port.
    pub port_count: u32,
    /// Reserved, zero.
    pub _reserved: [u8; 20],
}
const _: () = assert!(size_of::<PolicyRecord>() == 64);

/// A source matched by the peer's SPIFFE identity, without `spiffe://`
/// (`<td>/ns/<ns>/sa/<sa>`, Istio's principal form).
pub const SOURCE_PRINCIPAL: u8 = 1;
/// A source matched by the namespace of the peer's identity.
pub const SOURCE_NAMESPACE: u8 = 2;

/// One source of a policy.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PolicySourceRecord {
    /// [`SOURCE_PRINCIPAL`] or [`SOURCE_NAMESPACE`].
    pub kind: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
    /// The principal or namespace.
    pub value: StrRef,
    /// Reserved, zero.
    pub _reserved: [u8; 4],
}
const _: () = assert!(size_of::<PolicySourceRecord>() == 16);

/// One destination port of a policy.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PolicyPortRecord {
    /// The port, never 0.
    pub port: u16,
    /// Explicit padding.
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<PolicyPortRecord>() == 4);

/// One pod range (ABI 3): a source address inside one that no workload claims is an
/// unknown source.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct CidrRecord {
    /// The network address (IPv4 in the first 4 bytes), host bits zero.
    pub addr: [u8; 16],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Prefix length: at most 32 for IPv4, 128 for IPv6.
    pub prefix: u8,
    /// Explicit padding.
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<CidrRecord>() == 20);

/// A service (ABI 3): virtual addresses, ports and endpoints, as ranges of the arrays
/// that follow.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ServiceRecord {
    /// Service name.
    pub name: StrRef,
    /// Namespace.
    pub namespace: StrRef,
    /// DNS name.
    pub hostname: StrRef,
    /// First of its [`VipRecord`]s.
    pub first_vip: u32,
    /// Number of virtual addresses (at least one).
    pub vip_count: u32,
    /// First of its [`ServicePortRecord`]s.
    pub first_port: u32,
    /// Number of ports (at least one).
    pub port_count: u32,
    /// First of its [`EndpointRecord`]s.
    pub first_endpoint: u32,
    /// Number of endpoints (0: the service refuses connections).
    pub endpoint_count: u32,
}
const _: () = assert!(size_of::<ServiceRecord>() == 48);

/// A virtual address of a service.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VipRecord {
    /// The address (IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<VipRecord>() == 20);

/// A port of a service and the endpoints' port it maps to.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ServicePortRecord {
    /// The port on the virtual address.
    pub port: u16,
    /// The port on the endpoint.
    pub target_port: u16,
}
const _: () = assert!(size_of::<ServicePortRecord>() == 4);

/// An endpoint of a service: a workload.
#[derive(Debug, Clone, Copy, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct EndpointRecord {
    /// Index into the workload records.
    pub workload: u32,
}
const _: () = assert!(size_of::<EndpointRecord>() == 4);
