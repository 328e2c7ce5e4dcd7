//! smoltcp over UMEM frames, and the TCP splice.
//!
//! smoltcp runs in `Medium::Ip` with `any_ip`, so one `Interface` per worker answers as
//! whatever address a diverted segment was sent to (transparent termination); layer 2 is
//! ours: [`LegDevice`] strips nothing on receive (the worker hands smoltcp the IP packet
//! inside the RX frame, no copy) and on transmit lets smoltcp write the IP packet straight
//! into a TX frame of the leg's egress socket behind an Ethernet header for the leg's
//! next hop.
//!
//! # Flat per-packet cost
//!
//! smoltcp finds a packet's socket by scanning its `SocketSet`. Every connection leg
//! here has a `SocketSet` of exactly one socket, and the worker finds the leg with one
//! hash probe on the packet's 4-tuple before calling `poll_ingress_single`; egress and
//! timers are per leg too. So the cost per packet does not grow with the number of
//! connections: smoltcp never scans more than one socket.
//!
//! # The splice
//!
//! A connection is two legs: leg 0 is the one a peer opened to us (we answer as its
//! destination), leg 1 the one we opened to the destination (from the original client's
//! address). Bytes move from one leg's receive buffer straight into the other leg's send
//! buffer, only as much as fits, so a slow reader closes the writer's window: memory per
//! connection is bounded by the four socket buffers. FIN is propagated as a half-close
//! once the receive side is drained; a reset (or a failed connect) on one leg aborts the
//! other.

use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;

use crate::wire::{self, FlowKey, Mac};
use crate::xsk::TxPart;

/// MTU of the IP packets smoltcp emits (Ethernet payload).
pub const IP_MTU: usize = 1500;

/// A device that receives at most one IP packet (the one being dispatched) and sends
/// into one AF_XDP socket's TX frames.
pub struct LegDevice<'a> {
    /// The IP packet to hand to smoltcp, if any.
    pub rx: Option<&'a [u8]>,
    /// Egress socket.
    pub tx: &'a mut TxPart,
    /// Our MAC on the egress interface.
    pub src_mac: Mac,
    /// Next hop's MAC.
    pub dst_mac: Mac,
    /// Frames written (for counters).
    pub sent: &'a mut u64,
    /// Packets smoltcp emitted while no TX frame was free (lost; TCP retransmits).
    pub no_frame: &'a mut u64,
}

/// Receive token: the packet bytes.
pub struct RxToken<'a>(&'a [u8]);

/// Transmit token: writes one frame.
pub struct TxToken<'a> {
    tx: &'a mut TxPart,
    src_mac: Mac,
    dst_mac: Mac,
    sent: &'a mut u64,
    no_frame: &'a mut u64,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let (src, dst) = (self.src_mac, self.dst_mac);
        let mut f = Some(f);
        let sent = self.tx.send(wire::ETH_HEADER_LEN + len, |frame| {
            let (eth, ip) = frame.split_at_mut(wire::ETH_HEADER_LEN);
            let r = (f.take().expect("called once"))(ip);
            wire::write_eth_header(eth, dst, src, ip.first().is_some_and(|b| b >> 4 == 6));
            r
        });
        match sent {
            Some(r) => {
                *self.sent += 1;
                r
            }
            None => {
                // `transmit()` only hands out tokens while a frame is free, but the
                // token from `receive()` (for an immediate reply) may find none: the
                // packet is built into scratch space and lost, and TCP retransmits it.
                *self.no_frame += 1;
                let mut scratch = [0u8; IP_MTU];
                (f.take().expect("not yet called"))(&mut scratch[..len.min(IP_MTU)])
            }
        }
    }
}

impl phy::Device for LegDevice<'_> {
    type RxToken<'b>
        = RxToken<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxToken<'b>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let pkt = self.rx.take()?;
        Some((
            RxToken(pkt),
            TxToken {
                tx: self.tx,
                src_mac: self.src_mac,
                dst_mac: self.dst_mac,
                sent: self.sent,
                no_frame: self.no_frame,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if !self.tx.has_free() {
            return None;
        }
        Some(TxToken {
            tx: self.tx,
            src_mac: self.src_mac,
            dst_mac: self.dst_mac,
            sent: self.sent,
            no_frame: self.no_frame,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = IP_MTU;
        caps.max_burst_size = None;
        // Received checksums are verified (and drops counted) in `wire` before smoltcp
        // sees the packet; outgoing ones are computed by smoltcp.
        let mut ck = ChecksumCapabilities::default();
        ck.ipv4 = Checksum::Tx;
        ck.tcp = Checksum::Tx;
        caps.checksum = ck;
        caps
    }
}

/// Builds the worker's interface: `Medium::Ip`, any-IP, a default route so that smoltcp
/// considers every destination reachable (routing is the worker's job).
pub fn new_interface(now: Instant) -> Interface {
    use smoltcp::iface::Config;
    use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, Ipv4Address, Ipv6Address};

    struct Null;
    impl phy::Device for Null {
        type RxToken<'a> = RxToken<'a>;
        type TxToken<'a> = NullTx;
        fn receive(&mut self, _: Instant) -> Option<(RxToken<'_>, NullTx)> {
            None
        }
        fn transmit(&mut self, _: Instant) -> Option<NullTx> {
            None
        }
        fn capabilities(&self) -> DeviceCapabilities {
            let mut c = DeviceCapabilities::default();
            c.medium = Medium::Ip;
            c.max_transmission_unit = IP_MTU;
            c
        }
    }
    struct NullTx;
    impl phy::TxToken for NullTx {
        fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
            f(&mut vec![0; len])
        }
    }

    let mut cfg = Config::new(HardwareAddress::Ip);
    cfg.random_seed = u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15;
    let mut iface = Interface::new(cfg, &mut Null, now);
    // Placeholder own addresses (never used as sources: every socket binds explicitly).
    let v4 = Ipv4Address::new(198, 19, 255, 254);
    let v6 = Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(IpAddress::Ipv4(v4), 32));
        let _ = a.push(IpCidr::new(IpAddress::Ipv6(v6), 128));
    });
    let _ = iface.routes_mut().add_default_ipv4_route(v4);
    let _ = iface.routes_mut().add_default_ipv6_route(v6);
    iface.set_any_ip(true);
    iface
}

/// Socket buffer sizes.
#[derive(Debug, Clone, Copy)]
pub struct Buffers {
    /// Receive buffer per leg (the advertised window).
    pub rx: usize,
    /// Send buffer per leg.
    pub tx: usize,
}

impl Default for Buffers {
    fn default() -> Self {
        Buffers {
            rx: 64 * 1024,
            tx: 64 * 1024,
        }
    }
}

/// One side of a spliced connection.
pub struct Leg {
    /// A set holding exactly this leg's socket (see the module docs).
    pub sockets: SocketSet<'static>,
    /// The socket.
    pub handle: SocketHandle,
    /// Egress port index.
    pub port: usize,
    /// Next hop; `None` while it is being resolved.
    pub dst_mac: Option<Mac>,
    /// Key of the packets that arrive for this leg.
    pub key: FlowKey,
    /// We sent our FIN (or aborted) on this leg.
    pub closed_by_us: bool,
    /// We sent our FIN on this leg (a half-close, see [`pump`]).
    fin_sent: bool,
    /// The peer's FIN was seen on this leg.
    peer_fin_seen: bool,
    /// A reset of this leg was already passed on to the other leg.
    reset_seen: bool,
}

impl Leg {
    /// Creates a leg with a fresh socket.
    pub fn new(buffers: Buffers, port: usize, dst_mac: Option<Mac>, key: FlowKey) -> Leg {
        let rx = tcp::SocketBuffer::new(vec![0; buffers.rx]);
        let tx = tcp::SocketBuffer::new(vec![0; buffers.tx]);
        let mut s = tcp::Socket::new(rx, tx);
        s.set_nagle_enabled(false);
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(s);
        Leg {
            sockets,
            handle,
            port,
            dst_mac,
            key,
            closed_by_us: false,
            fin_sent: false,
            peer_fin_seen: false,
            reset_seen: false,
        }
    }

    /// The socket.
    pub fn socket(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(self.handle)
    }

    /// The socket's state.
    pub fn state(&self) -> tcp::State {
        self.sockets.get::<tcp::Socket>(self.handle).state()
    }
}

/// Outcome of a splice step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pumped {
    /// Bytes moved leg 0 → leg 1.
    pub down_to_up: usize,
    /// Bytes moved leg 1 → leg 0.
    pub up_to_down: usize,
    /// A leg was reset/failed and the other was aborted.
    pub reset: bool,
}

fn move_bytes(from: &mut tcp::Socket<'static>, to: &mut tcp::Socket<'static>) -> usize {
    let mut moved = 0;
    while from.can_recv() && to.can_send() {
        let n = from
            .recv(|buf| {
                let n = to.send_slice(buf).unwrap_or(0);
                (n, n)
            })
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        moved += n;
    }
    moved
}

/// Whether the peer of `s` has sent its FIN (no more data will arrive).
fn peer_finished(s: &tcp::Socket<'static>) -> bool {
    use tcp::State::*;
    matches!(s.state(), CloseWait | LastAck | Closing | TimeWait)
}

/// Moves bytes both ways, propagates half-closes and resets.
pub fn pump(legs: &mut [Leg; 2]) -> Pumped {
    let mut out = Pumped::default();
    let [l0, l1] = legs;
    let (h0, h1) = (l0.handle, l1.handle);
    {
        let s0 = l0.sockets.get_mut::<tcp::Socket>(h0);
        let s1 = l1.sockets.get_mut::<tcp::Socket>(h1);
        out.down_to_up = move_bytes(s0, s1);
        out.up_to_down = move_bytes(s1, s0);
    }
    for l in [&mut *l0, &mut *l1] {
        if peer_finished(l.sockets.get::<tcp::Socket>(l.handle)) {
            l.peer_fin_seen = true;
        }
    }
    // A leg that closed without us closing it was reset or timed out (a failed connect
    // included): abort the other one so the application sees the reset.
    out.reset = propagate_reset(l0, l1) || propagate_reset(l1, l0);
    if !out.reset {
        // Half-close: once a leg's peer finished and everything it sent was forwarded,
        // send our FIN on the other leg (as soon as that leg can carry one).
        propagate_fin(l0, l1);
        propagate_fin(l1, l0);
    }
    out
}

/// Passes a reset of leg `a` on to leg `b`. `a` was reset when it is CLOSED and we did
/// not close it, or when we had only half-closed it (our FIN sent, the peer's not seen):
/// a CLOSED leg then means its peer answered with a reset, and `b`'s peer, still
/// waiting for our FIN or for data, must learn of it now rather than after the
/// half-dead limit.
fn propagate_reset(a: &mut Leg, b: &mut Leg) -> bool {
    if a.reset_seen || a.state() != tcp::State::Closed {
        return false;
    }
    let half_closed_by_us = a.fin_sent && !a.peer_fin_seen;
    if a.closed_by_us && !half_closed_by_us {
        return false;
    }
    a.reset_seen = true;
    a.closed_by_us = true;
    // Also when we already sent our FIN on `b`: the half-closed direction is still open
    // until `b` finishes, and its peer must learn of the reset.
    if !leg_done(b) {
        b.socket().abort();
        b.closed_by_us = true;
        // Our abort, not a reset from `b`'s peer: nothing to pass back.
        b.reset_seen = true;
    }
    true
}

/// Whether a leg has nothing left to send: TIME-WAIT (the ACK of the peer's FIN left
/// in the same poll, see [`close`]), or CLOSED once smoltcp has forgotten the peer.
/// An aborted socket keeps its peer until its one RST has been transmitted; with the
/// TX ring full that waits for the next poll, and freeing the leg earlier lost the
/// RST: the peer kept a connection the gateway had already forgotten. A leg with no
/// next hop can send nothing, so it is done as soon as it is CLOSED.
pub fn leg_done(l: &Leg) -> bool {
    let s = l.sockets.get::<tcp::Socket>(l.handle);
    match s.state() {
        tcp::State::TimeWait => true,
        tcp::State::Closed => s.remote_endpoint().is_none() || l.dst_mac.is_none(),
        _ => false,
    }
}

fn propagate_fin(a: &mut Leg, b: &mut Leg) {
    let a_done = {
        let s = a.sockets.get::<tcp::Socket>(a.handle);
        peer_finished(s) && s.recv_queue() == 0
    };
    if a_done && !b.closed_by_us && b.socket().may_send() {
        close(b.socket());
        b.closed_by_us = true;
        b.fin_sent = true;
    }
}

/// Sends our FIN on `s`. Also turns off delayed ACKs for the rest of its life: a leg
/// is freed as soon as it reaches TIME-WAIT (see [`finished`]), so the ACK of the
/// peer's FIN must leave in the same poll, not 10 ms later from a socket that no
/// longer exists. Without this the peer retransmitted its FIN until the key's linger
/// expired and was then reset.
pub fn close(s: &mut tcp::Socket<'static>) {
    s.set_ack_delay(None);
    s.close();
}

/// Whether both legs are finished (closed or in TIME-WAIT) so the connection can be
/// freed. TIME-WAIT is not kept: both FINs were exchanged and acknowledged by us; a
/// retransmitted FIN from the peer after this gets a reset, which its kernel ignores
/// for a socket already closed.
pub fn finished(legs: &[Leg; 2]) -> bool {
    legs.iter().all(leg_done)
}

/// Whether exactly one leg is finished: the connection is half-dead and lives only
/// until the other leg's peer closes (bounded by the worker, see `HALF_DEAD_US`).
pub fn half_finished(legs: &[Leg; 2]) -> bool {
    leg_done(&legs[0]) != leg_done(&legs[1])
}

/// Aborts every leg that is not finished yet.
pub fn abort(legs: &mut [Leg; 2]) {
    for l in legs {
        if !leg_done(l) {
            l.socket().abort();
            l.closed_by_us = true;
            l.reset_seen = true;
        }
    }
}
