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
    /// Bytes per UMEM frame (chunk), 2048 or 4096. The kernel keeps
    /// `XDP_PACKET_HEADROOM` (256) of each for itself, so a 2048-byte frame holds 1792
    /// bytes of packet: a 1500-byte MTU frame.
    pub frame_size: u32,
    /// Use the need_wakeup protocol (default); off = the kernel is kicked every loop.
    pub need_wakeup: bool,
    /// Largest Ethernet frame the socket must carry (the link MTU + 14). Above one
    /// UMEM frame's room the socket is bound with `XDP_USE_SG` (multi-buffer, Linux
    /// 6.6+): a packet then spans several UMEM frames, chained with `XDP_PKT_CONTD`.
    pub max_frame: usize,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            frames: 4096,
            frame_size: 2048,
            need_wakeup: true,
            max_frame: 1514,
        }
    }
}

impl XskConfig {
    /// The sizing for a link of IP MTU `mtu`: 2048-byte frames while one holds a whole
    /// Ethernet frame, else 4096-byte frames (fewer per jumbo packet: a 64 KiB packet
    /// takes 17, the most a copy-mode transmit accepts) and multi-buffer.
    pub fn for_mtu(frames: u32, mtu: usize) -> XskConfig {
        let max_frame = mtu + ETH_HEADER_LEN;
        let frame_size = if max_frame <= 2048 - XDP_PACKET_HEADROOM {
            2048
        } else {
            4096
        };
        XskConfig {
            frames,
            frame_size,
            max_frame,
            ..Default::default()
        }
    }

    /// Packet bytes one UMEM frame holds.
    pub fn frame_room(&self) -> usize {
        (self.frame_size as usize).saturating_sub(XDP_PACKET_HEADROOM)
    }

    /// Whether packets can span several UMEM frames.
    pub fn multi_buffer(&self) -> bool {
        self.max_frame > self.frame_room()
    }
}

/// The kernel's headroom in every UMEM frame (`XDP_PACKET_HEADROOM`).
const XDP_PACKET_HEADROOM: usize = 256;
const ETH_HEADER_LEN: usize = 14;
/// `XDP_PKT_CONTD` (include/uapi/linux/if_xdp.h): the packet continues in the next
/// descriptor. xsk-rs reads it (`FrameDesc::has_more_frames`) but does not export the
/// flag, which a transmitted chain has to set.
const XDP_PKT_CONTD: u32 = 1;
/// The most descriptors one transmitted packet may take in copy mode: the kernel
/// builds an skb of at most `MAX_SKB_FRAGS` parts (17 unless the kernel was built with
/// more) and counts a longer chain as an invalid descriptor.
pub const MAX_TX_FRAGS: usize = 17;
/// The longest packet reassembled on receive (a 64 KiB IP packet and its Ethernet
/// header); longer chains are dropped and counted.
const MAX_RX_PACKET: usize = 65_535 + ETH_HEADER_LEN;

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
        if cfg.multi_buffer() {
            bind |= BindFlags::XDP_USE_SG;
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
        let room = cfg.frame_room();
        let max_frame = if cfg.multi_buffer() {
            cfg.max_frame.min(room * MAX_TX_FRAGS)
        } else {
            cfg.max_frame.min(room)
        };
        let rx_part = RxPart {
            umem: umem.clone(),
            rx,
            fill,
            scratch: vec![FrameDesc::default(); RX_BATCH],
            refill: Vec::with_capacity(half),
            need_wakeup: cfg.need_wakeup,
            assembly: Assembly::default(),
        };
        let tx_budget = raise_tx_budget(&tx, half);
        let tx_part = TxPart {
            umem,
            tx,
            comp,
            tx_budget,
            free: tx_descs.iter().map(|d| Frame(*d)).collect(),
            pending: Vec::with_capacity(half),
            scratch: vec![FrameDesc::default(); half],
            room,
            max_frame,
            frames_per_max: max_frame.div_ceil(room).max(1),
            spill: Vec::new(),
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

/// Descriptors taken from the RX ring per call.
const RX_BATCH: usize = 64;

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
    assembly: Assembly,
}

/// A multi-buffer packet being put together from its frames (they may arrive in two
/// batches), copied so the engine sees one contiguous frame.
#[derive(Debug, Default)]
struct Assembly {
    bytes: Vec<u8>,
    /// A frame of the packet is being collected (the last one had `XDP_PKT_CONTD`).
    open: bool,
    /// The packet grew past [`MAX_RX_PACKET`]: the rest of its frames are skipped.
    oversized: bool,
    /// Packets dropped for that.
    dropped: u64,
}

impl RxPart {
    /// Received frames the fill ring could not take back yet: how far the fill ring
    /// is from full, in frames, beyond what the kernel holds.
    pub fn refill_backlog(&self) -> usize {
        self.refill.len()
    }

    /// The socket's file descriptor (for the XSKMAP and for poll).
    pub fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }

    /// Receives up to 64 frames, lending each packet's bytes to `f`, then gives the
    /// frames back to the fill ring (with any that it could not take back on an earlier
    /// call). A packet in one frame is lent in place; one that spans several
    /// (multi-buffer) is copied together first. Returns the number of frames received.
    pub fn recv(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        // SAFETY: `scratch` descriptors are only overwritten by the ring here; frames
        // consumed from this socket's RX ring belong to this socket's UMEM.
        let n = unsafe { self.rx.consume(&mut self.scratch) };
        let asm = &mut self.assembly;
        for d in &self.scratch[..n] {
            // SAFETY: `d` was just consumed from this UMEM's RX ring, so the kernel no
            // longer writes the frame, and it is not handed back (fill ring, below) until
            // `f` has returned: the slice is valid and unaliased for the duration of `f`.
            let data = unsafe { self.umem.data(d) };
            let bytes = data.contents();
            let more = d.has_more_frames();
            if !asm.open && !more {
                f(bytes);
                continue;
            }
            asm.open = more;
            if asm.bytes.len() + bytes.len() > MAX_RX_PACKET {
                asm.oversized = true;
            }
            if !asm.oversized {
                asm.bytes.extend_from_slice(bytes);
            }
            if !more {
                if asm.oversized {
                    asm.dropped += 1;
                } else {
                    f(&asm.bytes);
                }
                asm.bytes.clear();
                asm.oversized = false;
            }
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

/// The kernel's and this module's drop counters of one socket (`XDP_STATISTICS`, see
/// the kernel's AF_XDP documentation): frames lost between the XDP program's redirect
/// and the worker, which no other counter sees.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SocketDrops {
    /// Dropped by the kernel for another reason than the two below (a frame too long
    /// for a socket without multi-buffer, among others).
    pub rx_dropped: u64,
    /// Dropped because the RX ring was full (the worker fell behind).
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty.
    pub fill_ring_empty: u64,
    /// Invalid RX descriptors.
    pub rx_invalid: u64,
    /// TX descriptors the kernel refused (for instance a chain longer than it takes).
    pub tx_invalid: u64,
    /// Multi-buffer packets longer than 64 KiB, dropped here.
    pub rx_oversized: u64,
}

impl SocketDrops {
    /// Adds `o`.
    pub fn add(&mut self, o: SocketDrops) {
        self.rx_dropped += o.rx_dropped;
        self.rx_ring_full += o.rx_ring_full;
        self.fill_ring_empty += o.fill_ring_empty;
        self.rx_invalid += o.rx_invalid;
        self.tx_invalid += o.tx_invalid;
        self.rx_oversized += o.rx_oversized;
    }
}

impl RxPart {
    /// The socket's drop counters (one `getsockopt`; the worker reads them when it
    /// publishes its counters, not per packet).
    pub fn drops(&self) -> SocketDrops {
        let k = self.rx.fd().xdp_statistics().unwrap_or_default();
        SocketDrops {
            rx_dropped: k.rx_dropped(),
            rx_ring_full: k.rx_ring_full(),
            fill_ring_empty: k.rx_fill_ring_empty_descs(),
            rx_invalid: k.rx_invalid_descs(),
            tx_invalid: k.tx_invalid_descs(),
            rx_oversized: self.assembly.dropped,
        }
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
    /// Packet bytes per UMEM frame.
    room: usize,
    /// Longest frame [`TxPart::send`] takes.
    max_frame: usize,
    /// UMEM frames a frame of `max_frame` bytes takes.
    frames_per_max: usize,
    /// Where a multi-buffer packet is written before it is split into UMEM frames.
    spill: Vec<u8>,
    in_flight: usize,
    /// Frames one `sendto` transmits at most in copy mode ([`raise_tx_budget`]).
    tx_budget: usize,
}

/// `XDP_MAX_TX_SKB_BUDGET` (`linux/if_xdp.h`, Linux 6.17+): the socket option that sets
/// how many TX descriptors one `sendto` hands to the driver in copy mode.
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
/// The copy-mode budget without it (`TX_BATCH_SIZE` in `net/xdp/xsk.c`).
const DEFAULT_TX_BUDGET: usize = 32;

/// Raises the socket's copy-mode TX budget to its whole TX ring (`entries`), so that
/// one `sendto` transmits everything a loop iteration queued. Without it the kernel
/// stops after 32 frames and the rest wait in the ring for the next kick, which may be
/// a whole sleep away. Returns the budget in force: `entries`, or 32 on a kernel
/// without the option ([`TxPart::flush`] then kicks once per 32 frames).
fn raise_tx_budget(tx: &TxQueue, entries: usize) -> usize {
    let budget = entries as libc::c_uint;
    // SAFETY: the descriptor is the bound AF_XDP socket `tx` owns (open for the call);
    // the option value is a valid `c_uint` of the size passed, read by the kernel only
    // during the call.
    let rc = unsafe {
        libc::setsockopt(
            tx.fd().as_raw_fd(),
            libc::SOL_XDP,
            XDP_MAX_TX_SKB_BUDGET,
            (&budget as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        entries
    } else {
        DEFAULT_TX_BUDGET
    }
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

    /// Whether `frames` UMEM frames are free. When they are not, this reclaims
    /// completions, and if that is not enough, submits what is pending and reclaims
    /// again (in copy mode the kernel transmits inside the wakeup syscall).
    fn ensure_free(&mut self, frames: usize) -> bool {
        if self.free.len() < frames {
            self.reclaim();
            if self.free.len() < frames && !self.pending.is_empty() {
                self.flush();
                self.reclaim();
            }
        }
        self.free.len() >= frames
    }

    /// Whether a frame of the largest size ([`TxPart::max_frame`]) can be taken now.
    pub fn has_free(&mut self) -> bool {
        self.ensure_free(self.frames_per_max)
    }

    /// Largest frame this part can send: one UMEM frame's room, or with multi-buffer
    /// the link's frame size up to [`MAX_TX_FRAGS`] UMEM frames.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Takes free frames, lets `f` write exactly `len` bytes into them and queues them
    /// for transmission at the next [`TxPart::flush`]. `None` when not enough frames
    /// are free or `len` is above [`TxPart::max_frame`]. A frame that fits one UMEM
    /// frame is written in place; a longer one is written into a spill buffer and
    /// copied out into a chain of UMEM frames.
    pub fn send<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        if len > self.max_frame {
            return None;
        }
        if len > self.room {
            return self.send_chained(len, f);
        }
        if !self.ensure_free(1) {
            return None;
        }
        let mut frame = self.free.pop()?;
        frame.0.set_options(0);
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

    /// [`TxPart::send`] for a multi-buffer packet: every frame but the last carries
    /// `XDP_PKT_CONTD`. The frames are queued together, and [`TxPart::flush`] submits
    /// all pending frames in one `produce` (the scratch array holds the whole TX half),
    /// so a chain is never split between two submissions.
    fn send_chained<R>(&mut self, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        let frames = len.div_ceil(self.room);
        if !self.ensure_free(frames) {
            return None;
        }
        if self.spill.len() < len {
            self.spill.resize(len, 0);
        }
        let r = f(&mut self.spill[..len]);
        let chunks = self.spill[..len].chunks(self.room);
        let last = frames - 1;
        for (i, chunk) in chunks.enumerate() {
            let mut frame = self.free.pop()?;
            frame
                .0
                .set_options(if i == last { 0 } else { XDP_PKT_CONTD });
            {
                // SAFETY: as in `send`: a free frame of this UMEM that no ring holds; the
                // view ends before the frame is queued.
                let mut data = unsafe { self.umem.data_mut(&mut frame.0) };
                data.cursor().set_pos(chunk.len());
                data.contents_mut()[..chunk.len()].copy_from_slice(chunk);
            }
            self.pending.push(frame);
        }
        Some(r)
    }

    /// Submits queued frames to the TX ring and kicks the kernel. Returns how many went out.
    pub fn flush(&mut self) -> usize {
        if self.pending.is_empty() {
            return 0;
        }
        // `scratch` has room for every TX frame of the UMEM, so this is all of them.
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
            // Copy mode transmits inside this syscall, at most `tx_budget` frames per
            // call; EAGAIN/EBUSY are retried at the next flush.
            for _ in 0..sent.div_ceil(self.tx_budget).max(1) {
                let _ = self.tx.wakeup();
            }
        }
        sent
    }

    /// Frames one kick transmits at most (the copy-mode TX budget).
    pub fn tx_budget(&self) -> usize {
        self.tx_budget
    }

    /// Frames queued but not yet on the ring.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Frames handed to the kernel (TX ring) whose completion was not reclaimed yet:
    /// the TX side's ring occupancy.
    pub fn in_flight(&self) -> usize {
        self.in_flight
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
