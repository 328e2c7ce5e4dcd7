//! Typed access to the XDP program's maps, by handle: shared by the loader
//! ([`XdpProgram`](crate::XdpProgram)) and by other processes that open the
//! pins ([`PinnedMaps::open`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use libbpf_rs::{ErrorKind, MapCore, MapFlags, MapHandle, MapType};
use zerocopy::{FromBytes, IntoBytes};

use crate::abi::{
    xsk_slot, XmAddr, XmCidr, XmCidrKey, XmConfig, XmCounter, XmInbound, XmInboundKey, XmNeigh,
    XmNeighKey, XmPort, XmUnknown, XmWorkload, CFG_ENABLED, MAX_INBOUND, MAX_NEIGHBORS,
    MAX_POD_CIDRS, MAX_PORTS, MAX_QUEUES, MAX_UNKNOWN_SOURCES, MAX_WORKLOADS,
};
use crate::{Reason, XdpError};

/// Name of the AF_XDP socket map (`(port, rx queue) -> socket`).
pub const MAP_XSKS: &str = "xsks";
/// Name of the interface map (`ingress ifindex -> port`).
pub const MAP_PORTS: &str = "ports";
/// Name of the workload address map.
pub const MAP_WORKLOADS: &str = "workloads";
/// Name of the configuration array.
pub const MAP_CONFIG: &str = "config";
/// Name of the per-CPU counter array.
pub const MAP_COUNTERS: &str = "counters";
/// Name of the snooped neighbour map.
pub const MAP_NEIGHBORS: &str = "neighbors";
/// Name of the map of connections from outside the mesh to captured workloads.
pub const MAP_INBOUND: &str = "inbound";
/// Name of the pod-range LPM trie.
pub const MAP_POD_CIDRS: &str = "pod_cidrs";
/// Name of the map of unknown sources' SYNs.
pub const MAP_UNKNOWN_SOURCES: &str = "unknown_sources";
/// How many maps the program has.
pub const MAP_COUNT: usize = 9;
/// Every map, i.e. every pin the program leaves under its pin directory.
pub const MAP_NAMES: [&str; MAP_COUNT] = [
    MAP_XSKS,
    MAP_PORTS,
    MAP_WORKLOADS,
    MAP_CONFIG,
    MAP_COUNTERS,
    MAP_NEIGHBORS,
    MAP_INBOUND,
    MAP_POD_CIDRS,
    MAP_UNKNOWN_SOURCES,
];

/// The size of a key or value type, as the kernel reports it.
const fn size<T>() -> u32 {
    size_of::<T>() as u32
}

/// What each map must look like: (name, type, key size, value size, max entries).
const EXPECTED: [(&str, MapType, u32, u32, u32); MAP_COUNT] = [
    (
        MAP_XSKS,
        MapType::Xskmap,
        size::<u32>(),
        size::<u32>(),
        MAX_PORTS * MAX_QUEUES,
    ),
    (
        MAP_PORTS,
        MapType::Hash,
        size::<u32>(),
        size::<XmPort>(),
        MAX_PORTS,
    ),
    (
        MAP_WORKLOADS,
        MapType::Hash,
        size::<XmAddr>(),
        size::<XmWorkload>(),
        MAX_WORKLOADS,
    ),
    (
        MAP_CONFIG,
        MapType::Array,
        size::<u32>(),
        size::<XmConfig>(),
        1,
    ),
    (
        MAP_COUNTERS,
        MapType::PercpuArray,
        size::<u32>(),
        size::<XmCounter>(),
        Reason::COUNT as u32,
    ),
    (
        MAP_NEIGHBORS,
        MapType::LruHash,
        size::<XmNeighKey>(),
        size::<XmNeigh>(),
        MAX_NEIGHBORS,
    ),
    (
        MAP_INBOUND,
        MapType::LruHash,
        size::<XmInboundKey>(),
        size::<XmInbound>(),
        MAX_INBOUND,
    ),
    (
        MAP_POD_CIDRS,
        MapType::LpmTrie,
        size::<XmCidrKey>(),
        size::<XmCidr>(),
        MAX_POD_CIDRS,
    ),
    (
        MAP_UNKNOWN_SOURCES,
        MapType::LruHash,
        size::<XmAddr>(),
        size::<XmUnknown>(),
        MAX_UNKNOWN_SOURCES,
    ),
];

/// Frames and bytes counted for one [`Reason`], summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReasonCount {
    /// Frames.
    pub packets: u64,
    /// Bytes of those frames, Ethernet header included.
    pub bytes: u64,
}

/// A snapshot of the program's counters, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    per_reason: [ReasonCount; Reason::COUNT],
}

impl Counters {
    /// The count for one reason.
    pub fn get(&self, reason: Reason) -> ReasonCount {
        self.per_reason[reason as usize]
    }

    /// Every reason with its count, in [`Reason::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Reason, ReasonCount)> + '_ {
        Reason::ALL.iter().map(|r| (*r, self.get(*r)))
    }

    /// Frames over all reasons.
    pub fn total_packets(&self) -> u64 {
        self.per_reason.iter().map(|c| c.packets).sum()
    }

    /// What was counted since `earlier` (saturating, so a reloaded map with
    /// reset counters yields zeros rather than wrapping).
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut out = Counters::default();
        for (i, slot) in out.per_reason.iter_mut().enumerate() {
            slot.packets = self.per_reason[i]
                .packets
                .saturating_sub(earlier.per_reason[i].packets);
            slot.bytes = self.per_reason[i]
                .bytes
                .saturating_sub(earlier.per_reason[i].bytes);
        }
        out
    }
}

/// What [`PinnedMaps::sync_workloads`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Addresses added.
    pub inserted: usize,
    /// Addresses whose flags changed.
    pub updated: usize,
    /// Stale addresses removed.
    pub deleted: usize,
    /// Addresses already as wanted.
    pub unchanged: usize,
}

/// One entry of the snooped neighbour table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbor {
    /// Interface the ARP/NDP message arrived on.
    pub ifindex: u32,
    /// The neighbour's address (IPv4 for v4-mapped keys).
    pub addr: IpAddr,
    /// Its MAC address.
    pub mac: [u8; 6],
    /// CLOCK_MONOTONIC nanoseconds when it was last seen.
    pub updated_ns: u64,
}

/// SYNs of one unknown source, as the XDP program counted them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownSighting {
    /// The source address.
    pub addr: IpAddr,
    /// CLOCK_MONOTONIC nanoseconds of its first and last SYN.
    pub first_ns: u64,
    /// See [`UnknownSighting::first_ns`].
    pub last_ns: u64,
    /// SYNs seen (approximate: CPUs race on the count).
    pub syns: u64,
}

/// Handles on the program's maps, opened either by the loader or, in another
/// process, from the pins. All operations are single map syscalls: safe to
/// use while the program runs.
#[derive(Debug)]
pub struct PinnedMaps {
    pin_dir: PathBuf,
    xsks: MapHandle,
    ports: MapHandle,
    workloads: MapHandle,
    config: MapHandle,
    counters: MapHandle,
    neighbors: MapHandle,
    inbound: MapHandle,
    pod_cidrs: MapHandle,
    unknown_sources: MapHandle,
}

fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(libbpf_rs::Error) -> XdpError {
    move |source| XdpError::Map { map, op, source }
}

/// Reads a key or value of `map` as a `T`; [`XdpError::BadValue`] when the
/// kernel handed back a slice of another size.
fn decode<T: FromBytes>(map: &'static str, bytes: &[u8]) -> Result<T, XdpError> {
    T::read_from_bytes(bytes).map_err(|_| XdpError::BadValue {
        map,
        len: bytes.len(),
    })
}

impl PinnedMaps {
    /// Opens the maps pinned under `pin_dir` by a running (or earlier) loader,
    /// without loading the program. Fails with [`XdpError::NotPinned`] when
    /// nothing is pinned there yet, and with [`XdpError::AbiMismatch`] when the
    /// pins come from an incompatible build.
    pub fn open(pin_dir: &Path) -> Result<Self, XdpError> {
        let open = |map: &'static str| -> Result<MapHandle, XdpError> {
            let path = pin_dir.join(map);
            if !path.exists() {
                return Err(XdpError::NotPinned {
                    pin_dir: pin_dir.to_path_buf(),
                    map,
                });
            }
            MapHandle::from_pinned_path(&path)
                .map_err(|source| XdpError::OpenPinned { path, source })
        };
        Self::from_handles(
            pin_dir,
            [
                open(MAP_XSKS)?,
                open(MAP_PORTS)?,
                open(MAP_WORKLOADS)?,
                open(MAP_CONFIG)?,
                open(MAP_COUNTERS)?,
                open(MAP_NEIGHBORS)?,
                open(MAP_INBOUND)?,
                open(MAP_POD_CIDRS)?,
                open(MAP_UNKNOWN_SOURCES)?,
            ],
        )
    }

    /// Builds the set from handles in [`MAP_NAMES`] order, checking each
    /// map's layout against this build's ABI.
    pub(crate) fn from_handles(
        pin_dir: &Path,
        handles: [MapHandle; MAP_COUNT],
    ) -> Result<Self, XdpError> {
        for (h, (name, ty, key, value, max)) in handles.iter().zip(EXPECTED) {
            let info = h.info().map_err(map_err(name, "reading map info"))?;
            let got = (
                h.map_type(),
                h.key_size(),
                h.value_size(),
                info.info.max_entries,
            );
            if got != (ty, key, value, max) {
                return Err(XdpError::AbiMismatch {
                    pin_dir: pin_dir.to_path_buf(),
                    map: name,
                    detail: format!(
                        "expected {ty:?} key {key} value {value} max {max}, \
                         found {:?} key {} value {} max {}",
                        got.0, got.1, got.2, got.3
                    ),
                });
            }
        }
        let [xsks, ports, workloads, config, counters, neighbors, inbound, pod_cidrs, unknown_sources] =
            handles;
        Ok(Self {
            pin_dir: pin_dir.to_path_buf(),
            xsks,
            ports,
            workloads,
            config,
            counters,
            neighbors,
            inbound,
            pod_cidrs,
            unknown_sources,
        })
    }

    /// The directory the maps are pinned in.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Makes the XDP program redirect mesh traffic arriving on rx queue
    /// `queue` of port `port` (the interface given that port with
    /// [`set_port`](Self::set_port)) to the AF_XDP socket `fd`: an `XSKMAP`
    /// update of slot `port * MAX_QUEUES + queue`; the kernel takes its own
    /// reference on the socket and drops the entry when the socket closes
    /// (Documentation/bpf/map_xskmap.rst). The socket must be bound to that
    /// interface and queue, or the kernel drops what is redirected to it.
    pub fn register_xsk(&self, port: u32, queue: u32, fd: RawFd) -> Result<(), XdpError> {
        check_port(port)?;
        check_queue(queue)?;
        let fd = u32::try_from(fd).map_err(|_| XdpError::BadSocketFd { fd })?;
        self.xsks
            .update(
                &xsk_slot(port, queue).to_ne_bytes(),
                &fd.to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(map_err(MAP_XSKS, "registering an AF_XDP socket"))
    }

    /// Removes the socket of (`port`, `queue`): its mesh traffic goes to the
    /// kernel again (`pass_no_socket`). Best effort, for teardown: an empty
    /// slot or an out-of-range port or queue is a no-op, and so (silently)
    /// is a failed delete; closing the socket clears the slot anyway.
    pub fn unregister_xsk(&self, port: u32, queue: u32) {
        if check_port(port).is_ok() && check_queue(queue).is_ok() {
            let _ = self.xsks.delete(&xsk_slot(port, queue).to_ne_bytes());
        }
    }

    /// Declares that the interface `ifindex` is port `port` (below
    /// [`MAX_PORTS`](crate::abi::MAX_PORTS)): mesh traffic arriving on it
    /// goes to the sockets registered with
    /// [`register_xsk`](Self::register_xsk) for `port`. Until an interface
    /// has a port, its mesh traffic is passed (`pass_no_socket`). Replaces
    /// an earlier port of the same interface.
    pub fn set_port(&self, ifindex: u32, port: u32) -> Result<(), XdpError> {
        check_port(port)?;
        self.ports
            .update(
                &ifindex.to_ne_bytes(),
                XmPort::new(port).as_bytes(),
                MapFlags::ANY,
            )
            .map_err(map_err(MAP_PORTS, "assigning a port"))
    }

    /// Forgets the port of interface `ifindex`: its mesh traffic is passed
    /// to the kernel again (`pass_no_socket`). Best effort, for teardown: an
    /// interface without a port is a no-op, and so (silently) is a failed
    /// delete.
    pub fn clear_port(&self, ifindex: u32) {
        let _ = self.ports.delete(&ifindex.to_ne_bytes());
    }

    /// Every interface with a port: ifindex -> port.
    pub fn ports(&self) -> Result<BTreeMap<u32, u32>, XdpError> {
        let mut out = BTreeMap::new();
        for key in self.ports.keys() {
            let Some(v) = self
                .ports
                .lookup(&key, MapFlags::ANY)
                .map_err(map_err(MAP_PORTS, "reading ports"))?
            else {
                continue;
            };
            let ifindex: u32 = decode(MAP_PORTS, &key)?;
            let port: XmPort = decode(MAP_PORTS, &v)?;
            out.insert(ifindex, port.slot);
        }
        Ok(out)
    }

    /// Turns diversion on or off. Off makes the program a counted no-op
    /// (`pass_disabled`).
    pub fn set_enabled(&self, on: bool) -> Result<(), XdpError> {
        let cfg = XmConfig::new(if on { CFG_ENABLED } else { 0 });
        self.config
            .update(&0u32.to_ne_bytes(), cfg.as_bytes(), MapFlags::ANY)
            .map_err(map_err(MAP_CONFIG, "writing the configuration"))
    }

    /// Whether diversion is on.
    pub fn enabled(&self) -> Result<bool, XdpError> {
        let v = self
            .config
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err(MAP_CONFIG, "reading the configuration"))?;
        Ok(match v {
            Some(b) => decode::<XmConfig>(MAP_CONFIG, &b)?.flags & CFG_ENABLED != 0,
            None => false,
        })
    }

    /// Reads the counters, summed over all CPUs.
    pub fn counters(&self) -> Result<Counters, XdpError> {
        let mut out = Counters::default();
        for r in Reason::ALL {
            let per_cpu = self
                .counters
                .lookup_percpu(&(r as u32).to_ne_bytes(), MapFlags::ANY)
                .map_err(map_err(MAP_COUNTERS, "reading counters"))?
                .unwrap_or_default();
            let slot = &mut out.per_reason[r as usize];
            for v in per_cpu {
                let c: XmCounter = decode(MAP_COUNTERS, &v)?;
                slot.packets = slot.packets.wrapping_add(c.packets);
                slot.bytes = slot.bytes.wrapping_add(c.bytes);
            }
        }
        Ok(out)
    }

    /// The workload addresses currently in the map, with their flags.
    pub fn workloads(&self) -> Result<BTreeMap<IpAddr, u32>, XdpError> {
        let mut out = BTreeMap::new();
        for key in self.workloads.keys() {
            // An entry deleted between listing and lookup is simply gone.
            let Some(v) = self
                .workloads
                .lookup(&key, MapFlags::ANY)
                .map_err(map_err(MAP_WORKLOADS, "reading workloads"))?
            else {
                continue;
            };
            let addr: XmAddr = decode(MAP_WORKLOADS, &key)?;
            let wl: XmWorkload = decode(MAP_WORKLOADS, &v)?;
            out.insert(addr.ip(), wl.flags);
        }
        Ok(out)
    }

    /// Makes the `workloads` map hold exactly `want` (address -> `XM_WL_*`
    /// flags): stale addresses are deleted first, so the map never needs
    /// more than its capacity, then new and changed ones are written. Each
    /// step is atomic per entry; the program may see a mix of old and new
    /// entries while this runs. An IPv4 address and its v4-mapped IPv6 form
    /// are the same key.
    pub fn sync_workloads(&self, want: &BTreeMap<IpAddr, u32>) -> Result<SyncStats, XdpError> {
        let mut wanted: BTreeMap<IpAddr, u32> = BTreeMap::new();
        for (ip, flags) in want {
            let ip = XmAddr::from(*ip).ip();
            if let Some(old) = wanted.insert(ip, *flags) {
                if old != *flags {
                    return Err(XdpError::ConflictingWorkload { addr: ip });
                }
            }
        }
        if wanted.len() > MAX_WORKLOADS as usize {
            return Err(XdpError::TooManyWorkloads {
                count: wanted.len(),
                max: MAX_WORKLOADS,
            });
        }

        let have = self.workloads()?;
        let mut stats = SyncStats::default();
        for ip in have.keys().filter(|ip| !wanted.contains_key(ip)) {
            match self.workloads.delete(XmAddr::from(*ip).as_bytes()) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(map_err(MAP_WORKLOADS, "deleting a stale workload")(e));
                }
                _ => stats.deleted += 1,
            }
        }
        for (ip, flags) in &wanted {
            match have.get(ip) {
                Some(f) if f == flags => {
                    stats.unchanged += 1;
                    continue;
                }
                Some(_) => stats.updated += 1,
                None => stats.inserted += 1,
            }
            self.workloads
                .update(
                    XmAddr::from(*ip).as_bytes(),
                    XmWorkload::new(*flags).as_bytes(),
                    MapFlags::ANY,
                )
                .map_err(map_err(MAP_WORKLOADS, "writing a workload"))?;
        }
        Ok(stats)
    }

    /// The MAC address last snooped for `addr` on interface `ifindex`.
    pub fn lookup_neighbor(&self, ifindex: u32, addr: IpAddr) -> Result<Option<[u8; 6]>, XdpError> {
        let key = XmNeighKey::new(ifindex, addr);
        let v = self
            .neighbors
            .lookup(key.as_bytes(), MapFlags::ANY)
            .map_err(map_err(MAP_NEIGHBORS, "looking up a neighbour"))?;
        v.map(|b| decode::<XmNeigh>(MAP_NEIGHBORS, &b).map(|n| n.mac))
            .transpose()
    }

    /// Every snooped neighbour (for `doctor` and debugging; not for the
    /// packet path).
    pub fn neighbors(&self) -> Result<Vec<Neighbor>, XdpError> {
        let mut out = Vec::new();
        for key in self.neighbors.keys() {
            let Some(v) = self
                .neighbors
                .lookup(&key, MapFlags::ANY)
                .map_err(map_err(MAP_NEIGHBORS, "reading neighbours"))?
            else {
                continue;
            };
            let k: XmNeighKey = decode(MAP_NEIGHBORS, &key)?;
            let n: XmNeigh = decode(MAP_NEIGHBORS, &v)?;
            out.push(Neighbor {
                ifindex: k.ifindex,
                addr: XmAddr { addr: k.addr }.ip(),
                mac: n.mac,
                updated_ns: n.updated_ns,
            });
        }
        Ok(out)
    }
}

impl PinnedMaps {
    /// The pod ranges in the `pod_cidrs` trie: (network, prefix length) -> `XM_CIDR_*`
    /// flags.
    pub fn pod_cidrs(&self) -> Result<BTreeMap<(IpAddr, u8), u32>, XdpError> {
        let mut out = BTreeMap::new();
        for key in self.pod_cidrs.keys() {
            let Some(v) = self
                .pod_cidrs
                .lookup(&key, MapFlags::ANY)
                .map_err(map_err(MAP_POD_CIDRS, "reading pod ranges"))?
            else {
                continue;
            };
            let k: XmCidrKey = decode(MAP_POD_CIDRS, &key)?;
            let c: XmCidr = decode(MAP_POD_CIDRS, &v)?;
            out.insert(k.cidr(), c.flags);
        }
        Ok(out)
    }

    /// Makes the `pod_cidrs` trie hold exactly `want` ((network, prefix) -> flags):
    /// stale ranges are deleted first, then new and changed ones written; each step
    /// is atomic per entry.
    pub fn sync_pod_cidrs(
        &self,
        want: &BTreeMap<(IpAddr, u8), u32>,
    ) -> Result<SyncStats, XdpError> {
        if want.len() > MAX_POD_CIDRS as usize {
            return Err(XdpError::TooManyPodCidrs {
                count: want.len(),
                max: MAX_POD_CIDRS,
            });
        }
        let have = self.pod_cidrs()?;
        let mut stats = SyncStats::default();
        for (ip, prefix) in have.keys().filter(|k| !want.contains_key(k)) {
            match self
                .pod_cidrs
                .delete(XmCidrKey::new(*ip, *prefix).as_bytes())
            {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(map_err(MAP_POD_CIDRS, "deleting a stale pod range")(e));
                }
                _ => stats.deleted += 1,
            }
        }
        for (&(ip, prefix), flags) in want {
            match have.get(&(ip, prefix)) {
                Some(f) if f == flags => {
                    stats.unchanged += 1;
                    continue;
                }
                Some(_) => stats.updated += 1,
                None => stats.inserted += 1,
            }
            self.pod_cidrs
                .update(
                    XmCidrKey::new(ip, prefix).as_bytes(),
                    XmCidr::new(*flags).as_bytes(),
                    MapFlags::ANY,
                )
                .map_err(map_err(MAP_POD_CIDRS, "writing a pod range"))?;
        }
        Ok(stats)
    }

    /// The unknown sources whose SYNs the program saw (for logs and `doctor`).
    pub fn unknown_sources(&self) -> Result<Vec<UnknownSighting>, XdpError> {
        let mut out = Vec::new();
        for key in self.unknown_sources.keys() {
            let Some(v) = self
                .unknown_sources
                .lookup(&key, MapFlags::ANY)
                .map_err(map_err(MAP_UNKNOWN_SOURCES, "reading unknown sources"))?
            else {
                continue;
            };
            let a: XmAddr = decode(MAP_UNKNOWN_SOURCES, &key)?;
            let u: XmUnknown = decode(MAP_UNKNOWN_SOURCES, &v)?;
            out.push(UnknownSighting {
                addr: a.ip(),
                first_ns: u.first_ns,
                last_ns: u.last_ns,
                syns: u.syns,
            });
        }
        Ok(out)
    }

    /// Whether the `inbound` map holds connections from `remote` to `local`:`port`.
    pub fn inbound_contains(
        &self,
        remote: IpAddr,
        local: IpAddr,
        port: u16,
    ) -> Result<bool, XdpError> {
        let key = XmInboundKey::new(remote, local, port);
        Ok(self
            .inbound
            .lookup(key.as_bytes(), MapFlags::ANY)
            .map_err(map_err(MAP_INBOUND, "looking up an inbound connection"))?
            .is_some())
    }

    /// Entries of the `inbound` map (for `stats` and `doctor`).
    pub fn inbound_len(&self) -> usize {
        self.inbound.keys().count()
    }
}

fn check_port(port: u32) -> Result<(), XdpError> {
    if port >= MAX_PORTS {
        return Err(XdpError::PortOutOfRange {
            port,
            max: MAX_PORTS,
        });
    }
    Ok(())
}

fn check_queue(queue: u32) -> Result<(), XdpError> {
    if queue >= MAX_QUEUES {
        return Err(XdpError::QueueOutOfRange {
            queue,
            max: MAX_QUEUES,
        });
    }
    Ok(())
}
