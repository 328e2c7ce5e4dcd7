//! AF_XDP sockets over xsk-rs: the one room of the dataplane where `unsafe` lives.
//!
//! See <https://docs.kernel.org/networking/af_xdp.html>. Each socket gets its own UMEM;
//! half of its frames circulate RX → fill ring → RX, the other half free list → TX ring →
//! completion ring → free list. xsk-rs hands out `FrameDesc`s that are `Copy` and leaves
//! "never give the same frame to two rings" to its callers; here every descriptor is
//! wrapped in a move-only `Frame` that lives in exactly one place (a ring, the free
//! list or the pending list), and the public API only lends byte slices to closures, so
//! no caller can double-submit or keep a slice past a submission.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

/// Errors opening a socket.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    /// Bad parameters.
    #[error("invalid AF_XDP configuration: {0}")]
    Config(String),
    /// UMEM creation failed.
    #[error("creating the UMEM for {ifname} queue {queue} failed: {reason} (is the memlock rlimit high enough? run as root)")]
    Umem {
        /// Interface.
        ifname: String,
        /// Queue.
        queue: u32,
        /// Cause.
        reason: String,
    },
    /// Socket creation or bind failed.
    #[error("binding an AF_XDP socket to {ifname} queue {queue} failed: {reason} (does the interface have that many RX queues? `ethtool -l {ifname}`; is another program bound to it?)")]
    Bind {
        /// Interface.
        ifname: String,
        /// Queue.
        queue: u32,
        /// Cause.
        reason: String,
    },
}

/// Socket sizing.
#[derive(Debug, Clone, Copy)]
pub struct XskConfig {
    /// Frames per UMEM (half for RX, half for TX). Power of two.
    pub frames: u32,
    /// Bytes per frame: 2048 holds a 1500-byte MTU frame.
    pub frame_size: u32,
    /// Use the need_wakeup protocol (default); off = the kernel is kicked every loop.
    pub need_wakeup: bool,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            frames: 4096,
            frame_size: 2048,
            need_wakeup: true,
        }
    }
}

/// A UMEM frame owned by exactly one ring or list. Deliberately neither `Clone` nor `Copy`.
#[derive(Debug)]
struct Frame(FrameDesc);

/// Whether the socket ended up in zero-copy or copy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    /// Driver-level zero copy.
    ZeroCopy,
    /// Copy mode (veth and drivers without AF_XDP zero-copy support).
    Copy,
}

/// Opens an AF_XDP socket on `ifname`/`queue`: zero-copy where the driver supports it,
/// else copy mode. The XDP program is ours (libxdp's loader is inhibited); the caller
/// registers [`RxPart::fd`] in its XSKMAP.
pub fn open(
    ifname: &str,
    queue: u32,
    cfg: XskConfig,
) -> Result<(RxPart, TxPart, BindMode), XskError> {
    let frames = NonZeroU32::new(cfg.frames).filter(|f| f.get() >= 64 && f.get().is_power_of_two());
    let frames = frames.ok_or_else(|| {
        XskError::Config(format!(
            "frame count {} must be a power of two >= 64",
            cfg.frames
        ))
    })?;
    let ring = QueueSize::new(cfg.frames / 2).map_err(|e| XskError::Config(e.to_string()))?;
    // The fill ring is twice the RX half: the kernel makes consumed RX frames visible
    // (RX submit) before it releases the fill entries it took them from, so a ring
    // exactly the size of the RX half can look full for a moment to a worker on
    // another core that returns frames at once.
    let fill_ring = QueueSize::new(cfg.frames).map_err(|e| XskError::Config(e.to_string()))?;
    let umem_cfg = UmemConfig::builder()
        .frame_size(FrameSize::new(cfg.frame_size).map_err(|e| XskError::Config(e.to_string()))?)
        .fill_queue_size(fill_ring)
        .comp_queue_size(ring)
        .build()
        .map_err(|e| XskError::Config(e.to_string()))?;
    let if_c =
        CString::new(ifname).map_err(|_| XskError::Config(format!("interface name {ifname:?}")))?;
    let mut last_err = String::new();
    for mode in [BindMode::ZeroCopy, BindMode::Copy] {
        let (umem, descs) = Umem::new(umem_cfg, frames, false).map_err(|e| XskError::Umem {
            ifname: ifname.into(),
            queue,
            reason: e.to_string(),
        })?;
        let mut bind = match mode {
            BindMode::ZeroCopy => BindFlags::XDP_ZEROCOPY,
            BindMode::Copy => BindFlags::XDP_COPY,
        };
        if cfg.need_wakeup {
            bind |= BindFlags::XDP_USE_NEED_WAKEUP;
        }
        let sock_cfg = SocketConfig::builder()
            .rx_queue_size(ring)
            .tx_queue_size(ring)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(bind)
            .build();
        // SAFETY: the UMEM was created just above and is not shared with any other
        // socket, so the `(if_name, queue_id)` sharing rule of `Socket::new` does not
        // apply; INHIBIT_PROG_LOAD is set regardless.
        let created = unsafe { Socket::new(sock_cfg, &umem, &Interface::new(if_c.clone()), queue) };
        let (tx, rx, fq_cq) = match created {
            Ok(v) => v,
            Err(e) => {
                last_err = e.to_string();
                continue;
            }
        };
        let Some((mut fill, comp)) = fq_cq else {
            return Err(XskError::Bind {
                ifname: ifname.into(),
                queue,
                reason: "no fill/completion ring returned".into(),
            });
        };
        let mut descs = descs;
        for d in &mut descs {
            // SAFETY: no ring holds any frame yet, so nothing else (kernel included)
            // accesses the UMEM; each frame is touched once, through its own descriptor.
            // Pre-faulting the whole UMEM makes the dataplane's resident memory its
            // steady-state figure from the start (frames are not faulted in under load).
            unsafe { umem.data_mut(d) }.cursor().zero_out();
        }
        let half = descs.len() / 2;
        let (rx_descs, tx_descs) = descs.split_at(half);
        // SAFETY: these descriptors come from this UMEM and have never been handed to
        // any ring; the RX half goes to the fill ring once and is then owned by it.
        let filled = unsafe { fill.produce(rx_descs) };
        if filled != rx_descs.len() {
            return Err(XskError::Bind {
                ifname: ifname.into(),
                queue,
                reason: format!("fill ring took {filled} of {half} frames"),
            });
        }
        let rx_part = RxPart {
            umem: umem.clone(),
            rx,
            fill,
            scratch: vec![FrameDesc::default(); 64],
            refill: Vec::with_capacity(half),
            need_wakeup: cfg.need_wakeup,
        };
        let tx_part = TxPart {
            umem,
            tx,
            comp,
            free: tx_descs.iter().map(|d| Frame(*d)).collect(),
            pending: Vec::with_capacity(half),
            scratch: vec![FrameDesc::default(); half],
            frame_capacity: cfg.frame_size as usize,
            in_flight: 0,
        };
        return Ok((rx_part, tx_part, mode));
    }
    Err(XskError::Bind {
        ifname: ifname.into(),
        queue,
        reason: last_err,
    })
}

/// The receive half: RX ring and fill ring.
#[derive(Debug)]
pub struct RxPart {
    umem: Umem,
    rx: RxQueue,
    fill: FillQueue,
    scratch: Vec<FrameDesc>,
    /// Received frames the fill ring could not take back yet (see [`RxPart::recv`]).
    refill: Vec<FrameDesc>,
    need_wakeup: bool,
}

impl RxPart {
    /// The socket's file descriptor (for the XSKMAP and for poll).
    pub fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }

    /// Receives up to 64 frames, lending each one's bytes to `f`, then gives the frames
    /// back to the fill ring (with any that it could not take back on an earlier call).
    /// Returns the number of frames received.
    pub fn recv(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        // SAFETY: `scratch` descriptors are only overwritten by the ring here; frames
        // consumed from this socket's RX ring belong to this socket's UMEM.
        let n = unsafe { self.rx.consume(&mut self.scratch) };
        for d in &self.scratch[..n] {
            // SAFETY: `d` was just consumed from this UMEM's RX ring, so the kernel no
            // longer writes the frame, and it is not handed back (fill ring, below) until
            // `f` has returned: the slice is valid and unaliased for the duration of `f`.
            let data = unsafe { self.umem.data(d) };
            f(data.contents());
        }
        if n > 0 {
            self.refill.extend_from_slice(&self.scratch[..n]);
        }
        if !self.refill.is_empty() {
            // SAFETY: every frame in `refill` was consumed from this UMEM's RX ring and
            // has not been handed back since (it leaves `refill` only when the fill ring
            // took it), so each returns to the fill ring exactly once. `produce` takes
            // all of them or none; none happens only while the kernel has not yet
            // released the fill entries of frames it just received, and they are kept
            // for the next call instead of being lost.
            let back = unsafe { self.fill.produce(&self.refill) };
            self.refill.drain(..back.min(self.refill.len()));
        }
        if self.need_wakeup && self.fill.needs_wakeup() {
            // Kernel asked to be woken to refill; errors here are transient (EAGAIN).
            let _ = self.fill.wakeup(self.rx.fd_mut(), 0);
        }
        n
    }
}

/// The transmit half: TX ring, completion ring and the free list.
#[derive(Debug)]
pub struct TxPart {
    umem: Umem,
    tx: TxQueue,
    comp: CompQueue,
    free: Vec<Frame>,
    pending: Vec<Frame>,
    scratch: Vec<FrameDesc>,
    frame_capacity: usize,
    in_flight: usize,
}

impl TxPart {
    /// Moves completed frames back to the free list.
    pub fn reclaim(&mut self) {
        if self.in_flight == 0 {
            return;
        }
        // SAFETY: completions on this UMEM's ring are frames this part submitted; after
        // consumption the kernel is done with them and they return to the free list once.
        let n = unsafe { self.comp.consume(&mut self.scratch) };
        self.in_flight -= n;
        self.free
            .extend(self.scratch[..n].iter().map(|d| Frame(*d)));
    }

    /// Whether a frame can be taken now. When the free list is empty this reclaims
    /// completions, and if that is not enough, submits what is pending and reclaims
    /// again (in copy mode the kernel transmits inside the wakeup syscall).
    pub fn has_free(&mut self) -> bool {
        if self.free.is_empty() {
            self.reclaim();
            if self.free.is_empty() && !self.pending.is_empty() {
                self.flush();
                self.reclaim();
            }
        }
        !self.free.is_empty()
    }

    /// Largest frame this part can send.
    pub fn frame_capacity(&self) -> usize {
        self.frame_capacity
    }

    /// Takes a free frame, lets `f` write exactly `len` bytes into it and queues it for
    /// transmission at the next [`TxPart::flush`]. `None` when no frame is free or `len`
    /// does not fit a frame.
    pub fn send<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        if len > self.frame_capacity || !self.has_free() {
            return None;
        }
        let mut frame = self.free.pop()?;
        let r = {
            // SAFETY: `frame` came off the free list, so no ring holds it and the kernel
            // does not access it; it belongs to this UMEM. The mutable view ends with this
            // block, before the frame is queued below.
            let mut data = unsafe { self.umem.data_mut(&mut frame.0) };
            // Sets the frame's length (the bytes are then overwritten by `f`).
            data.cursor().set_pos(len);
            f(&mut data.contents_mut()[..len])
        };
        self.pending.push(frame);
        Some(r)
    }

    /// Submits queued frames to the TX ring and kicks the kernel. Returns how many went out.
    pub fn flush(&mut self) -> usize {
        if self.pending.is_empty() {
            return 0;
        }
        let n = self.pending.len().min(self.scratch.len());
        for (s, f) in self.scratch.iter_mut().zip(&self.pending[..n]) {
            *s = f.0;
        }
        // SAFETY: the descriptors are the pending frames of this UMEM, each held only by
        // `pending`; on success they move to the ring (removed from `pending` below).
        // `produce` is all-or-nothing: if the ring lacks room we retry next flush.
        let sent = unsafe { self.tx.produce(&self.scratch[..n]) };
        if sent > 0 {
            self.pending.drain(..sent);
            self.in_flight += sent;
        }
        if sent > 0 || self.tx.needs_wakeup() {
            // Copy mode transmits inside this syscall; EAGAIN/EBUSY are retried later.
            let _ = self.tx.wakeup();
        }
        sent
    }

    /// Frames queued but not yet on the ring.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// Waits until one of the sockets is readable or `timeout_us` microseconds pass
/// (`ppoll`: the worker sleeps until its next timer to the microsecond instead of
/// spinning through the last millisecond, as `poll`'s millisecond timeout made it).
pub fn wait_readable(parts: &[&RxPart], timeout_us: i64) {
    let mut fds: Vec<libc::pollfd> = parts
        .iter()
        .map(|p| libc::pollfd {
            fd: p.fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let timeout_us = timeout_us.max(0);
    let ts = libc::timespec {
        tv_sec: (timeout_us / 1_000_000) as libc::time_t,
        tv_nsec: ((timeout_us % 1_000_000) * 1000) as libc::c_long,
    };
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfd structs
    // for the duration of the call, `ts` a valid timespec, and a null signal mask means
    // "keep the current one"; the descriptors stay open (owned by `parts`).
    let _ = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
}
