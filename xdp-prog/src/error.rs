//! Errors of the XDP loader and map wrappers, worded for the operator.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::XdpMode;

/// Everything that can go wrong loading, attaching or talking to the XDP
/// program's maps. Each message says what to check or do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XdpError {
    /// The pin directory is not on a BPF filesystem.
    #[error(
        "{path} is not on a BPF filesystem: mount one with `mount -t bpf bpf /sys/fs/bpf` \
         (and start processes with `nsenter --net=...`, not `ip netns exec`, which hides it)"
    )]
    NotBpffs {
        /// The directory (or its nearest existing parent) that was checked.
        path: PathBuf,
    },
    /// The pin directory could not be inspected or created.
    #[error("cannot create the BPF pin directory {path}: {source}")]
    PinDir {
        /// The pin directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// libbpf could not open, verify or load the object, or could not reuse
    /// the maps pinned by an earlier run.
    #[error(
        "loading the XDP program failed: {source} (run as root: loading needs CAP_BPF and \
         CAP_NET_ADMIN; the verifier log, if any, is on stderr above; if the maps pinned \
         under {pin_dir} were left by another xdpmesh version, stop it and remove them with \
         `rm -r {pin_dir}`)"
    )]
    Load {
        /// Where the maps are pinned.
        pin_dir: PathBuf,
        /// The libbpf error.
        source: libbpf_rs::Error,
    },
    /// [`PinnedMaps::open`](crate::PinnedMaps::open) found no pinned map.
    #[error(
        "no xdpmesh map `{map}` is pinned under {pin_dir}: start xdpmesh-dataplane first \
         (it loads the XDP program and pins its maps), and give both processes the same \
         --pin-root"
    )]
    NotPinned {
        /// The pin directory.
        pin_dir: PathBuf,
        /// The missing map.
        map: &'static str,
    },
    /// A pinned map exists but could not be opened.
    #[error("cannot open the pinned map {path}: {source} (run as root)")]
    OpenPinned {
        /// The pin path.
        path: PathBuf,
        /// The libbpf error.
        source: libbpf_rs::Error,
    },
    /// A pinned map has another layout than this build expects.
    #[error(
        "the map `{map}` pinned under {pin_dir} does not match this build ({detail}): it was \
         pinned by another xdpmesh version; stop that version and remove the pins with \
         `rm -r {pin_dir}`"
    )]
    AbiMismatch {
        /// The pin directory.
        pin_dir: PathBuf,
        /// The map.
        map: &'static str,
        /// What differs.
        detail: String,
    },
    /// The interface does not exist in the caller's network namespace.
    #[error("interface {ifname} not found in this network namespace; check `ip link`")]
    InterfaceNotFound {
        /// The interface name.
        ifname: String,
    },
    /// The driver has no native XDP support.
    #[error(
        "interface {ifname} (driver {driver}) cannot run XDP in native mode: \
         use --xdp-mode generic or auto"
    )]
    NativeUnsupported {
        /// The interface name.
        ifname: String,
        /// The driver, as far as it could be found out.
        driver: String,
    },
    /// Another (non-xdpmesh) XDP program is attached and would be replaced.
    #[error(
        "interface {ifname} already runs the XDP program {name:?} (id {id}) in {mode} mode, \
         which is not xdpmesh's: detach it with `ip link set dev {ifname} xdp off` if it is \
         not needed, or use another interface"
    )]
    ForeignProgram {
        /// The interface name.
        ifname: String,
        /// The attached program's name.
        name: String,
        /// The attached program's id (`bpftool prog show id N`).
        id: u32,
        /// The mode it is attached in.
        mode: XdpMode,
    },
    /// Attaching was refused for lack of privileges.
    #[error("attaching XDP to {ifname} needs CAP_NET_ADMIN and CAP_BPF: run as root")]
    AttachPermission {
        /// The interface name.
        ifname: String,
    },
    /// Any other attach failure.
    #[error(
        "attaching XDP to {ifname} in {mode} mode failed: {source} (the kernel's reason, if \
         any, is on stderr above){hint}"
    )]
    Attach {
        /// The interface name.
        ifname: String,
        /// The mode tried.
        mode: XdpMode,
        /// The libbpf error.
        source: libbpf_rs::Error,
        /// Extra advice for the common causes, starting with "; " (or empty).
        hint: &'static str,
    },
    /// A map lookup, update or delete failed.
    #[error("{op} on the XDP map `{map}` failed: {source}")]
    Map {
        /// The map.
        map: &'static str,
        /// What was attempted.
        op: &'static str,
        /// The libbpf error.
        source: libbpf_rs::Error,
    },
    /// A map returned a value of unexpected size.
    #[error("the XDP map `{map}` returned a malformed value of {len} bytes")]
    BadValue {
        /// The map.
        map: &'static str,
        /// The value's length.
        len: usize,
    },
    /// An rx queue index beyond the `xsks` map.
    #[error("rx queue {queue} is out of range: the XDP program serves queues 0..{max}")]
    QueueOutOfRange {
        /// The queue.
        queue: u32,
        /// The number of `xsks` slots.
        max: u32,
    },
    /// A port (interface slot) beyond the `ports`/`xsks` maps.
    #[error(
        "port {port} is out of range: the XDP program serves at most {max} interfaces \
         (ports 0..{max})"
    )]
    PortOutOfRange {
        /// The port.
        port: u32,
        /// The number of ports.
        max: u32,
    },
    /// A negative file descriptor was given for an AF_XDP socket.
    #[error("invalid AF_XDP socket fd {fd}")]
    BadSocketFd {
        /// The fd.
        fd: i32,
    },
    /// More pod ranges than the `pod_cidrs` trie holds.
    #[error("{count} pod ranges requested but the XDP pod_cidrs map holds at most {max}")]
    TooManyPodCidrs {
        /// Requested.
        count: usize,
        /// Capacity.
        max: u32,
    },
    /// More workloads than the `workloads` map holds.
    #[error("{count} workload addresses requested but the XDP workloads map holds at most {max}")]
    TooManyWorkloads {
        /// Requested.
        count: usize,
        /// Capacity.
        max: u32,
    },
    /// The same address was given twice (IPv4 and v4-mapped IPv6) with different flags.
    #[error(
        "workload {addr} is listed twice, as IPv4 and as v4-mapped IPv6, with different flags"
    )]
    ConflictingWorkload {
        /// The address (IPv4 form).
        addr: IpAddr,
    },
    /// An unknown `--xdp-mode` string.
    #[error("invalid XDP mode {0:?}: expected auto, native or generic")]
    InvalidMode(String),
    /// `BPF_PROG_TEST_RUN` failed.
    #[error("BPF_PROG_TEST_RUN failed: {source} (a given ingress ifindex must exist in this network namespace and the rx queue must be below its queue count)")]
    TestRun {
        /// The libbpf error.
        source: libbpf_rs::Error,
    },
}
