//! Loading the object, pinning its maps, and attaching it to interfaces.

use std::fmt;
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use libbpf_rs::query::ProgInfoIter;
use libbpf_rs::{
    ErrorKind, MapCore, MapHandle, Object, ObjectBuilder, Program, ProgramInput, Xdp, XdpFlags,
};
use nix::sys::statfs::{statfs, BPF_FS_MAGIC};

use crate::maps::{PinnedMaps, MAP_NAMES};
use crate::{Counters, Neighbor, XdpError};

/// The compiled object, built by `build.rs` from `src/bpf/divert.bpf.c`.
///
/// Loaded with `ObjectBuilder::open_memory` rather than through a
/// libbpf-cargo skeleton, because generated skeletons contain `unsafe` code
/// and this workspace denies it.
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/divert.bpf.o"));

/// The program's name in the object (and in `bpftool prog`).
pub const PROGRAM_NAME: &str = "xdpmesh_divert";

/// How to attach the program (`--xdp-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum XdpMode {
    /// Native if the driver supports it, generic otherwise.
    #[default]
    Auto,
    /// In the driver (`XDP_FLAGS_DRV_MODE`); needed for zero-copy AF_XDP.
    Native,
    /// In the core network stack after SKB allocation (`XDP_FLAGS_SKB_MODE`):
    /// works everywhere, slower, copy mode only.
    Generic,
}

impl XdpMode {
    fn flags(self) -> XdpFlags {
        match self {
            XdpMode::Auto => XdpFlags::NONE,
            XdpMode::Native => XdpFlags::DRV_MODE,
            XdpMode::Generic => XdpFlags::SKB_MODE,
        }
    }
}

impl FromStr for XdpMode {
    type Err = XdpError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(XdpMode::Auto),
            "native" => Ok(XdpMode::Native),
            "generic" => Ok(XdpMode::Generic),
            _ => Err(XdpError::InvalidMode(s.to_owned())),
        }
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        })
    }
}

/// The `struct xdp_md` fields that `BPF_PROG_TEST_RUN` lets a caller set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestRunCtx {
    /// Interface the frame pretends to arrive on (must exist in the
    /// caller's network namespace; 0 = the kernel's default, loopback).
    pub ingress_ifindex: u32,
    /// Receive queue (must be below the interface's queue count; must be 0
    /// when `ingress_ifindex` is 0).
    pub rx_queue_index: u32,
}

/// The loaded XDP program with its maps pinned under a directory.
///
/// Dropping it closes this process's references; attachments
/// ([`XdpAttachment`]) and pins keep the kernel objects alive.
#[derive(Debug)]
pub struct XdpProgram {
    obj: Object,
    maps: PinnedMaps,
}

impl XdpProgram {
    /// Loads the object through the verifier, pinning its maps under
    /// `pin_dir`, or reusing the maps already pinned there by an earlier run
    /// (`LIBBPF_PIN_BY_NAME`), so workloads and counters survive a restart.
    ///
    /// `pin_dir` is created if needed; it must be on a bpffs.
    pub fn load(pin_dir: &Path) -> Result<Self, XdpError> {
        ensure_pin_dir(pin_dir)?;
        let load_err = |source| XdpError::Load {
            pin_dir: pin_dir.to_path_buf(),
            source,
        };
        let mut builder = ObjectBuilder::default();
        builder.pin_root_path(pin_dir).map_err(load_err)?;
        let obj = builder
            .open_memory(OBJECT)
            .and_then(|open| open.load())
            .map_err(load_err)?;

        let handle = |name: &'static str| -> Result<MapHandle, XdpError> {
            let map = obj
                .maps()
                .find(|m| m.name() == name)
                .ok_or_else(|| XdpError::Load {
                    pin_dir: pin_dir.to_path_buf(),
                    source: libbpf_rs::Error::from(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("map {name} missing from the object"),
                    )),
                })?;
            MapHandle::try_from(&map).map_err(load_err)
        };
        let mut handles = Vec::with_capacity(MAP_NAMES.len());
        for name in MAP_NAMES {
            handles.push(handle(name)?);
        }
        let handles: [MapHandle; MAP_NAMES.len()] = handles
            .try_into()
            .unwrap_or_else(|_| unreachable!("one handle per map name"));
        let maps = PinnedMaps::from_handles(pin_dir, handles)?;
        let prog = Self { obj, maps };
        // Fail here, not at attach time, if the object lacks the program.
        prog.program()?;
        Ok(prog)
    }

    fn program(&self) -> Result<Program<'_>, XdpError> {
        self.obj
            .progs()
            .find(|p| p.name() == PROGRAM_NAME)
            .ok_or_else(|| self.missing_program())
    }

    fn missing_program(&self) -> XdpError {
        XdpError::Load {
            pin_dir: self.maps.pin_dir().to_path_buf(),
            source: libbpf_rs::Error::from(io::Error::new(
                io::ErrorKind::NotFound,
                format!("program {PROGRAM_NAME} missing from the object"),
            )),
        }
    }

    /// The maps, for the operations that [`PinnedMaps`] offers.
    pub fn maps(&self) -> &PinnedMaps {
        &self.maps
    }

    /// The kernel's id of the loaded program (`bpftool prog show id N`).
    pub fn id(&self) -> Result<u32, XdpError> {
        let prog = self.program()?;
        Program::id_from_fd(prog.as_fd()).map_err(|source| XdpError::Load {
            pin_dir: self.maps.pin_dir().to_path_buf(),
            source,
        })
    }

    /// Attaches the program to `ifname` through netlink.
    ///
    /// [`XdpMode::Auto`] tries native first, then generic; the returned
    /// attachment says which mode is in effect. A program left attached by
    /// an earlier xdpmesh run (recognised by its name) is replaced; any
    /// other XDP program is left alone and reported as
    /// [`XdpError::ForeignProgram`]. Dropping the attachment detaches.
    pub fn attach(&self, ifname: &str, mode: XdpMode) -> Result<XdpAttachment, XdpError> {
        let ifindex =
            nix::net::if_::if_nametoindex(ifname).map_err(|_| XdpError::InterfaceNotFound {
                ifname: ifname.to_owned(),
            })?;
        let prog = self.program()?;
        let prog_id = self.id()?;
        let fd = prog
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| XdpError::Attach {
                ifname: ifname.to_owned(),
                mode,
                source: e.into(),
                hint: "",
            })?;
        let mut att = XdpAttachment {
            ifindex,
            ifname: ifname.to_owned(),
            mode,
            prog_fd: fd,
            prog_id,
            attached: false,
        };
        match mode {
            XdpMode::Native | XdpMode::Generic => att.attach_in(mode)?,
            XdpMode::Auto => {
                if let Err(native) = att.attach_in(XdpMode::Native) {
                    match native {
                        XdpError::ForeignProgram { .. }
                        | XdpError::AttachPermission { .. }
                        | XdpError::InterfaceNotFound { .. } => return Err(native),
                        _ => att.attach_in(XdpMode::Generic)?,
                    }
                }
            }
        }
        Ok(att)
    }

    /// See [`PinnedMaps::register_xsk`].
    pub fn register_xsk(&self, port: u32, queue: u32, fd: RawFd) -> Result<(), XdpError> {
        self.maps.register_xsk(port, queue, fd)
    }

    /// See [`PinnedMaps::unregister_xsk`].
    pub fn unregister_xsk(&self, port: u32, queue: u32) {
        self.maps.unregister_xsk(port, queue)
    }

    /// See [`PinnedMaps::set_port`].
    pub fn set_port(&self, ifindex: u32, port: u32) -> Result<(), XdpError> {
        self.maps.set_port(ifindex, port)
    }

    /// See [`PinnedMaps::clear_port`].
    pub fn clear_port(&self, ifindex: u32) {
        self.maps.clear_port(ifindex)
    }

    /// See [`PinnedMaps::set_enabled`].
    pub fn set_enabled(&self, on: bool) -> Result<(), XdpError> {
        self.maps.set_enabled(on)
    }

    /// See [`PinnedMaps::counters`].
    pub fn counters(&self) -> Result<Counters, XdpError> {
        self.maps.counters()
    }

    /// See [`PinnedMaps::lookup_neighbor`].
    pub fn lookup_neighbor(
        &self,
        ifindex: u32,
        addr: std::net::IpAddr,
    ) -> Result<Option<[u8; 6]>, XdpError> {
        self.maps.lookup_neighbor(ifindex, addr)
    }

    /// See [`PinnedMaps::neighbors`].
    pub fn neighbors(&self) -> Result<Vec<Neighbor>, XdpError> {
        self.maps.neighbors()
    }

    /// Runs the program once on `frame` with `BPF_PROG_TEST_RUN`, against
    /// the live maps (counters and neighbours are updated as for a real
    /// frame), and returns its XDP action (see [`crate::action`]). Without
    /// `ctx` the kernel pretends the frame came in on the loopback device's
    /// queue 0. For tests and self-checks.
    pub fn test_run(&self, frame: &[u8], ctx: Option<TestRunCtx>) -> Result<u32, XdpError> {
        // The kernel refuses test input shorter than an Ethernet header
        // (net/bpf/test_run.c, bpf_prog_test_run_xdp), but since Linux 6.18
        // accepts a linear part (`xdp_md.data_end`) shorter than the input,
        // the rest becoming a fragment the program cannot read. A short
        // frame is sent padded to ETH_HLEN with data_end at its real length,
        // so the program sees exactly `frame`; older kernels reject this
        // with EINVAL.
        let mut data = frame.to_vec();
        let short = data.len() < ETH_HLEN;
        if short {
            data.resize(ETH_HLEN, 0);
        }
        let ctx = match (ctx, short) {
            (None, false) => None,
            (c, _) => Some((frame.len(), c.unwrap_or_default())),
        };
        self.run(&data, ctx)
    }

    /// Runs the program on a multi-buffer frame: the first `linear_len` bytes of
    /// `frame` in the linear part, the rest in fragments (as a jumbo frame arrives on
    /// a veth or a driver that builds multi-buffer frames).
    pub fn test_run_multi_buffer(
        &self,
        frame: &[u8],
        linear_len: usize,
        ctx: Option<TestRunCtx>,
    ) -> Result<u32, XdpError> {
        self.run(
            frame,
            Some((linear_len.min(frame.len()), ctx.unwrap_or_default())),
        )
    }

    fn run(&self, data: &[u8], ctx: Option<(usize, TestRunCtx)>) -> Result<u32, XdpError> {
        // `test_run` is only offered on the mutable program view; it does not
        // change the program.
        let prog = self
            .obj
            .progs_mut()
            .find(|p| p.name() == PROGRAM_NAME)
            .ok_or_else(|| self.missing_program())?;
        let mut ctx_bytes = ctx.map(|(linear, c)| xdp_md_bytes(linear, c));
        let input = ProgramInput {
            data_in: Some(data),
            context_in: ctx_bytes.as_mut().map(|b| b.as_mut_slice()),
            ..ProgramInput::default()
        };
        let out = prog
            .test_run(input)
            .map_err(|source| XdpError::TestRun { source })?;
        Ok(out.return_value)
    }
}

const ETH_HLEN: usize = 14;

/// `struct xdp_md` for `BPF_PROG_TEST_RUN` (include/uapi/linux/bpf.h): data,
/// data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex, as
/// offsets into the test input: no metadata, `linear_len` bytes of packet in
/// the linear part.
fn xdp_md_bytes(linear_len: usize, ctx: TestRunCtx) -> [u8; 24] {
    let fields = [
        0,
        u32::try_from(linear_len).unwrap_or(u32::MAX),
        0,
        ctx.ingress_ifindex,
        ctx.rx_queue_index,
        0,
    ];
    let mut b = [0u8; 24];
    for (chunk, v) in b.chunks_exact_mut(4).zip(fields) {
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    b
}

/// The program attached to one interface. Dropping it detaches the program,
/// but only while it is still the one attached: a newer run that replaced it
/// keeps its own.
#[derive(Debug)]
pub struct XdpAttachment {
    /// The interface's index.
    pub ifindex: u32,
    /// The interface's name.
    pub ifname: String,
    /// The mode actually in effect: [`XdpMode::Native`] or [`XdpMode::Generic`].
    pub mode: XdpMode,
    /// Keeps the program alive for detaching and identifies it.
    prog_fd: OwnedFd,
    prog_id: u32,
    attached: bool,
}

impl XdpAttachment {
    /// The mode actually in effect: [`XdpMode::Native`] or
    /// [`XdpMode::Generic`] (same as the `mode` field).
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    fn xdp(&self) -> Xdp<'_> {
        Xdp::new(self.prog_fd.as_fd())
    }

    /// The ids attached in native and generic mode (0 = none).
    fn attached_ids(&self) -> Result<(u32, u32), libbpf_rs::Error> {
        let q = self.xdp().query(self.ifindex as i32, XdpFlags::NONE)?;
        Ok((q.drv_prog_id, q.skb_prog_id))
    }

    /// Attaches in `mode` (native or generic), first clearing an earlier
    /// xdpmesh program in either mode: the kernel allows only one of the
    /// two modes at a time, and replaces a program in the same mode in place.
    ///
    /// There is a window between the query and the attach in which another
    /// tool could attach its program; netlink has no "replace only if
    /// absent or ours" for a different program, so this is best effort.
    fn attach_in(&mut self, mode: XdpMode) -> Result<(), XdpError> {
        let ifname = self.ifname.clone();
        let attach_err = |source: libbpf_rs::Error, mode: XdpMode| XdpError::Attach {
            ifname: ifname.clone(),
            mode,
            source,
            hint: "",
        };
        let (drv, skb) = self
            .attached_ids()
            .map_err(|e| attach_err(e, XdpMode::Auto))?;
        for (id, in_mode) in [(drv, XdpMode::Native), (skb, XdpMode::Generic)] {
            if id == 0 || id == self.prog_id {
                continue;
            }
            let name = program_name(id);
            if name.as_deref() != Some(PROGRAM_NAME) {
                return Err(XdpError::ForeignProgram {
                    ifname,
                    name: name.unwrap_or_else(|| "?".to_owned()),
                    id,
                    mode: in_mode,
                });
            }
            if in_mode != mode {
                self.xdp()
                    .detach(self.ifindex as i32, in_mode.flags())
                    .map_err(|e| attach_err(e, in_mode))?;
            }
        }
        let res = self.xdp().attach(self.ifindex as i32, mode.flags());
        if let Err(source) = res {
            return Err(match (source.kind(), mode) {
                (ErrorKind::PermissionDenied, _) => XdpError::AttachPermission { ifname },
                (ErrorKind::Unsupported, XdpMode::Native) => XdpError::NativeUnsupported {
                    driver: driver_name(&ifname, self.ifindex),
                    ifname,
                },
                (ErrorKind::InvalidInput, XdpMode::Native) => XdpError::Attach {
                    ifname,
                    mode,
                    source,
                    hint: "; native XDP often needs a smaller MTU (for veth: at most about \
                           3500 bytes, and the peer must be up) or fewer channels, or use \
                           --xdp-mode generic",
                },
                (ErrorKind::AlreadyExists, _) | (ErrorKind::Other, _) => XdpError::Attach {
                    ifname,
                    mode,
                    source,
                    hint: "; another XDP program may be attached in the other mode: check \
                           `ip link show` and detach it with `ip link set dev IF xdp off`",
                },
                _ => XdpError::Attach {
                    ifname,
                    mode,
                    source,
                    hint: "",
                },
            });
        }
        self.mode = mode;
        self.attached = true;
        Ok(())
    }

    /// Detaches now, reporting failure (dropping does the same silently).
    /// Does nothing if another program has replaced this one since.
    pub fn detach(mut self) -> Result<(), XdpError> {
        self.detach_inner()
    }

    fn detach_inner(&mut self) -> Result<(), XdpError> {
        if !std::mem::take(&mut self.attached) {
            return Ok(());
        }
        let err = |source| XdpError::Attach {
            ifname: self.ifname.clone(),
            mode: self.mode,
            source,
            hint: "",
        };
        let current = self
            .xdp()
            .query_id(self.ifindex as i32, self.mode.flags())
            .map_err(err)?;
        if current != self.prog_id {
            return Ok(());
        }
        self.xdp()
            .detach(self.ifindex as i32, self.mode.flags())
            .map_err(err)
    }
}

impl Drop for XdpAttachment {
    fn drop(&mut self) {
        // Nothing useful to do with an error here: the interface may be gone
        // already (which detaches everything), and callers who care use
        // `detach`.
        let _ = self.detach_inner();
    }
}

/// Name of the loaded program `id`, if it can be read.
fn program_name(id: u32) -> Option<String> {
    ProgInfoIter::default()
        .find(|p| p.id == id)
        .map(|p| p.name.to_string_lossy().into_owned())
}

/// Best-effort driver name for error messages. sysfs may show another
/// network namespace than the caller's (`nsenter --net` keeps the mount), so
/// the ifindex is cross-checked.
fn driver_name(ifname: &str, ifindex: u32) -> String {
    let base = Path::new("/sys/class/net").join(ifname);
    let same_dev = fs::read_to_string(base.join("ifindex"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        == Some(ifindex);
    if !same_dev {
        return "unknown".to_owned();
    }
    match fs::read_link(base.join("device/driver")) {
        Ok(p) => p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unknown".to_owned()),
        Err(_) => "virtual device".to_owned(),
    }
}

/// Checks that `pin_dir` is (or would be created) on a bpffs, then creates it.
fn ensure_pin_dir(pin_dir: &Path) -> Result<(), XdpError> {
    let mut probe: PathBuf = pin_dir.to_path_buf();
    while !probe.exists() {
        match probe.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe = p.to_path_buf(),
            _ => {
                probe = PathBuf::from(".");
                break;
            }
        }
    }
    let fs = statfs(&probe).map_err(|e| XdpError::PinDir {
        path: probe.clone(),
        source: io::Error::from(e),
    })?;
    if fs.filesystem_type() != BPF_FS_MAGIC {
        return Err(XdpError::NotBpffs { path: probe });
    }
    fs::create_dir_all(pin_dir).map_err(|source| XdpError::PinDir {
        path: pin_dir.to_path_buf(),
        source,
    })
}

/// Removes the map pins under `pin_dir` and the directory itself, if empty
/// then. Missing pins are not an error. The maps disappear once no program
/// or process holds them any more.
pub fn remove_pins(pin_dir: &Path) -> io::Result<()> {
    for name in MAP_NAMES {
        match fs::remove_file(pin_dir.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    match fs::remove_dir(pin_dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_parse_and_display() {
        for m in [XdpMode::Auto, XdpMode::Native, XdpMode::Generic] {
            assert_eq!(m.to_string().parse::<XdpMode>().unwrap(), m);
        }
        let err = "drv".parse::<XdpMode>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid XDP mode \"drv\": expected auto, native or generic"
        );
    }

    #[test]
    fn xdp_md_layout() {
        let b = xdp_md_bytes(
            60,
            TestRunCtx {
                ingress_ifindex: 7,
                rx_queue_index: 3,
            },
        );
        assert_eq!(&b[0..4], &0u32.to_ne_bytes());
        assert_eq!(&b[4..8], &60u32.to_ne_bytes());
        assert_eq!(&b[12..16], &7u32.to_ne_bytes());
        assert_eq!(&b[16..20], &3u32.to_ne_bytes());
        assert_eq!(&b[20..24], &0u32.to_ne_bytes());
    }

    #[test]
    fn object_is_embedded_elf() {
        assert_eq!(&OBJECT[..4], b"\x7fELF");
    }

    #[test]
    fn pin_dir_must_be_on_bpffs() {
        let dir = std::env::temp_dir().join(format!("xdpmesh-notbpf-{}", std::process::id()));
        let err = ensure_pin_dir(&dir.join("pins")).unwrap_err();
        assert!(
            err.to_string().contains("mount -t bpf bpf /sys/fs/bpf"),
            "{err}"
        );
        assert!(!dir.exists(), "nothing may be created off bpffs");
    }
}
